/* core/component.c - key checking, defaults and building configured components. */
#include <stdlib.h>
#include <string.h>

#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>

#include "core/context.h"
#include "core/util.h"

/* Is a value of @have acceptable for a key declared @want? */
static int type_fits(mmp_type_t want, const mmp_config_t *n) {
  mmp_type_t have = mmp_config_type(n);
  switch (want) {
  case MMP_TYPE_INT: return have == MMP_TYPE_INT;
  case MMP_TYPE_FLOAT: return have == MMP_TYPE_INT || have == MMP_TYPE_FLOAT;
  case MMP_TYPE_BOOL: return have == MMP_TYPE_BOOL;
  case MMP_TYPE_STRING: return mmp_config_string(n) != NULL;
  case MMP_TYPE_LIST: return have != MMP_TYPE_GROUP; /* a scalar is a one-item list */
  case MMP_TYPE_GROUP: return have == MMP_TYPE_GROUP;
  default: return 0;
  }
}

static void where(const mmp_config_t *n, char *buf, size_t len) {
  if (mmp_config_layer(n) == MMP_LAYER_OVERRIDE)
    snprintf(buf, len, "command line (-s)");
  else if (mmp_config_layer(n) == MMP_LAYER_DEFAULT)
    snprintf(buf, len, "built-in default");
  else if (mmp_config_file(n))
    snprintf(buf, len, "%s:%d", mmp_config_file(n), mmp_config_line(n));
  else
    snprintf(buf, len, "config");
}

int mmp_config_check_keys(const mmp_config_t *group, const mmp_key_t *keys, const char *what,
                          char **errors) {
  mmp_strbuf_t b = {0};
  int nerr = 0;
  size_t nkeys = 0;
  for (const mmp_key_t *k = keys; k && k->name; k++) nkeys++;
  const char **names = malloc((nkeys + 1) * sizeof *names);
  size_t nn = 0;
  for (const mmp_key_t *k = keys; names && k && k->name; k++)
    if (k->type != MMP_TYPE_COMPONENT) names[nn++] = k->name;
  for (size_t i = 0; i < mmp_config_count(group); i++) {
    const mmp_config_t *c = mmp_config_child(group, i);
    const char *cn = mmp_config_name(c);
    char loc[600];
    where(c, loc, sizeof loc);
    if (strcmp(cn, "name") == 0) {
      if (!mmp_config_string(c)) {
        mmp_strbuf_append(&b, "%s: %s: 'name' must be a string\n", loc, what);
        nerr++;
      }
      continue;
    }
    const mmp_key_t *k = NULL;
    for (const mmp_key_t *q = keys; !k && q && q->name; q++)
      if (q->type != MMP_TYPE_COMPONENT && strcmp(q->name, cn) == 0) k = q;
    if (!k) {
      const char *near = names ? mmp_nearest(cn, names, nn) : NULL;
      mmp_strbuf_append(&b, "%s: %s has no key '%s'%s%s%s\n", loc, what, cn,
                        near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
      nerr++;
    } else if (!type_fits(k->type, c)) {
      mmp_strbuf_append(&b, "%s: %s key '%s' must be %s, found %s\n", loc, what, cn,
                        mmp_type_name(k->type), mmp_type_name(mmp_config_type(c)));
      nerr++;
    } else if (k->flags & MMP_KEY_IGNORED) {
      MMP_INFO("config", "%s: %s ignores key '%s' (it is used by other implementations)", loc,
               what, cn);
    }
  }
  for (const mmp_key_t *k = keys; k && k->name; k++) {
    if (k->type == MMP_TYPE_COMPONENT || !(k->flags & MMP_KEY_REQUIRED)) continue;
    if (!mmp_config_lookup(group, k->name)) {
      char loc[600];
      where(group, loc, sizeof loc);
      mmp_strbuf_append(&b, "%s: %s needs key '%s' (%s)\n", loc, what, k->name, k->doc);
      nerr++;
    }
  }
  free(names);
  if (errors)
    *errors = b.data;
  else
    mmp_strbuf_free(&b);
  return nerr;
}

int mmp_config_merge_defaults(mmp_config_t *group, const mmp_key_t *keys) {
  for (const mmp_key_t *k = keys; k && k->name; k++) {
    if (k->type == MMP_TYPE_COMPONENT || !k->default_value || (k->flags & MMP_KEY_IGNORED)) continue;
    if (mmp_config_lookup(group, k->name)) continue;
    /* set relative to the group: build the full path */
    char path[512], key[600];
    mmp_config_path(group, path, sizeof path);
    snprintf(key, sizeof key, "%s%s%s", path, *path ? "." : "", k->name);
    mmp_config_t *root = group;
    while (mmp_config_parent(root)) root = (mmp_config_t *)mmp_config_parent(root);
    int rc = mmp_config_set_literal(root, key, k->default_value, MMP_LAYER_DEFAULT, NULL, 0);
    if (rc < 0) return mmp_error_prefix("default of key '%s': ", k->name);
  }
  return 0;
}

/* Validate the group at @path for an implementation of @kind, recursing into
 * the component slots its keys declare. Problems go to @b. */
static void validate_group(mmp_context_t *ctx, mmp_kind_t kind, const char *path,
                           const char *default_name, mmp_strbuf_t *b, int *nerr, int depth) {
  mmp_config_t *cfg = ctx->cfg;
  const mmp_config_t *g = mmp_config_lookup(cfg, path);
  if (!g && default_name) {
    char lit[300];
    snprintf(lit, sizeof lit, "{ name = \"%s\"; }", default_name);
    if (mmp_config_set_literal(cfg, path, lit, MMP_LAYER_DEFAULT, NULL, 0) == 0)
      g = mmp_config_lookup(cfg, path);
  }
  if (!g) {
    mmp_strbuf_append(b, "%s: the configuration needs a group '%s' naming a %s, e.g. %s = { name = \"...\"; };\n",
                      mmp_config_file(cfg) ? mmp_config_file(cfg) : "config", path,
                      mmp_kind_name(kind), path);
    (*nerr)++;
    return;
  }
  char loc[600];
  where(g, loc, sizeof loc);
  if (mmp_config_type(g) != MMP_TYPE_GROUP) {
    mmp_strbuf_append(b, "%s: '%s' must be a group { name = \"...\"; ... }\n", loc, path);
    (*nerr)++;
    return;
  }
  const char *name = NULL;
  if (mmp_config_get_string(g, "name", &name) < 0) {
    mmp_strbuf_append(b, "%s: group '%s' needs name = \"<%s implementation>\";\n", loc, path,
                      mmp_kind_name(kind));
    (*nerr)++;
    return;
  }
  const mmp_plugin_t *p = mmp_registry_find(ctx->reg, kind, name);
  if (!p) {
    const mmp_config_t *nn = mmp_config_lookup(g, "name");
    where(nn, loc, sizeof loc);
    mmp_strbuf_append(b, "%s: %s\n", loc, mmp_error_last());
    (*nerr)++;
    return;
  }
  char what[400], *errs = NULL;
  snprintf(what, sizeof what, "%s '%s' (group '%s')", mmp_kind_name(kind), name, path);
  int n = mmp_config_check_keys(g, p->keys, what, &errs);
  if (n > 0) {
    mmp_strbuf_append(b, "%s", errs);
    *nerr += n;
  } else if (mmp_config_merge_defaults((mmp_config_t *)g, p->keys) < 0) {
    mmp_strbuf_append(b, "%s: %s\n", loc, mmp_error_last());
    (*nerr)++;
  }
  free(errs);
  if (depth > 8) return;
  for (const mmp_key_t *k = p->keys; k->name; k++) {
    if (k->type != MMP_TYPE_COMPONENT) continue;
    if (!mmp_config_lookup(cfg, k->name) && !k->default_value && !(k->flags & MMP_KEY_REQUIRED))
      continue;
    if (context_mark_slot(ctx, k->name)) continue; /* already validated */
    const char *def = k->default_value;
    char unq[256];
    if (def) { /* defaults of component keys are literals: strip quotes */
      snprintf(unq, sizeof unq, "%s", def[0] == '"' ? def + 1 : def);
      size_t l = strlen(unq);
      if (l && unq[l - 1] == '"') unq[l - 1] = '\0';
      def = unq;
    }
    validate_group(ctx, k->component_kind, k->name, def, b, nerr, depth + 1);
  }
}

int context_validate_component(mmp_context_t *ctx, mmp_kind_t kind, const char *path,
                               char **errors) {
  mmp_strbuf_t b = {0};
  int nerr = 0;
  context_mark_slot(ctx, path);
  validate_group(ctx, kind, path, NULL, &b, &nerr, 0);
  if (errors)
    *errors = b.data;
  else
    mmp_strbuf_free(&b);
  return nerr;
}

mmp_component_t *mmp_component_create(mmp_context_t *ctx, mmp_kind_t kind, const char *path) {
  if (!ctx || !path) {
    mmp_error_set(MMP_EINVAL, "mmp_component_create: NULL argument");
    return NULL;
  }
  char *errs = NULL;
  int n = context_validate_component(ctx, kind, path, &errs);
  if (n > 0) {
    mmp_error_set(MMP_ECONFIG, "%d configuration error%s:\n%s", n, n == 1 ? "" : "s",
                  errs ? errs : "");
    free(errs);
    return NULL;
  }
  free(errs);
  const mmp_config_t *g = mmp_config_lookup(ctx->cfg, path);
  const char *name = NULL;
  mmp_config_get_string(g, "name", &name);
  const mmp_plugin_t *p = mmp_registry_find(ctx->reg, kind, name);
  if (!p) return NULL;
  mmp_component_t *c = mmp_xcalloc(1, sizeof *c);
  if (!c) return NULL;
  c->plugin = p;
  mmp_error_clear();
  int rc = p->create(p, g, ctx, &c->self);
  if (rc < 0) {
    if (mmp_error_code() == MMP_OK) mmp_error_set(rc, "%s", mmp_strerror(rc));
    mmp_error_prefix("%s '%s' (group '%s'): ", mmp_kind_name(kind), name, path);
    free(c);
    return NULL;
  }
  return c;
}

void mmp_component_free(mmp_component_t *c) {
  if (!c) return;
  if (c->self) c->plugin->destroy(c->self);
  free(c);
}
