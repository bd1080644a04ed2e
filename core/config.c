/* core/config.c - the layered configuration tree: libconfig parsing, @include
 * layering, -s overrides, provenance and typed getters. */
#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/config.h>
#include <mmpipe/error.h>

#include "core/util.h"

struct mmp_config {
  char *name; /* NULL for the root and list items */
  mmp_type_t type;
  union {
    int64_t i;
    double f;
    bool b;
    char *s;
  } v;
  char *text; /* for overrides: the literal as typed (a string getter may use it) */
  mmp_config_t **kids;
  size_t n, cap;
  mmp_config_t *parent;
  mmp_layer_t layer;
  char *file; /* origin file, NULL for defaults and overrides */
  int line;
  char *base_dir; /* root only: directory of the task file */
};

#define MAX_INCLUDE_DEPTH 16

const char *mmp_type_name(mmp_type_t t) {
  switch (t) {
  case MMP_TYPE_INT: return "int";
  case MMP_TYPE_FLOAT: return "float";
  case MMP_TYPE_BOOL: return "bool";
  case MMP_TYPE_STRING: return "string";
  case MMP_TYPE_LIST: return "list";
  case MMP_TYPE_GROUP: return "group";
  case MMP_TYPE_COMPONENT: return "component";
  default: return "none";
  }
}

const char *mmp_layer_name(mmp_layer_t l) {
  switch (l) {
  case MMP_LAYER_DEFAULT: return "default";
  case MMP_LAYER_INCLUDE: return "include";
  case MMP_LAYER_FILE: return "file";
  case MMP_LAYER_OVERRIDE: return "override";
  }
  return "?";
}

/* ---- nodes ---- */

static mmp_config_t *node_new(const char *name, mmp_type_t type) {
  mmp_config_t *n = mmp_xcalloc(1, sizeof *n);
  if (!n) return NULL;
  n->type = type;
  if (name && !(n->name = mmp_xstrdup(name))) {
    free(n);
    return NULL;
  }
  return n;
}

static void node_clear_value(mmp_config_t *n) {
  for (size_t i = 0; i < n->n; i++) mmp_config_free(n->kids[i]);
  free(n->kids);
  n->kids = NULL;
  n->n = n->cap = 0;
  if (n->type == MMP_TYPE_STRING) free(n->v.s);
  n->v.s = NULL;
  free(n->text);
  n->text = NULL;
}

void mmp_config_free(mmp_config_t *n) {
  if (!n) return;
  node_clear_value(n);
  free(n->name);
  free(n->file);
  free(n->base_dir);
  free(n);
}

static int node_add(mmp_config_t *parent, mmp_config_t *kid) {
  if (parent->n == parent->cap) {
    size_t cap = parent->cap ? parent->cap * 2 : 8;
    mmp_config_t **k = realloc(parent->kids, cap * sizeof *k);
    if (!k) return mmp_error_set(MMP_ENOMEM, "out of memory building the configuration");
    parent->kids = k;
    parent->cap = cap;
  }
  parent->kids[parent->n++] = kid;
  kid->parent = parent;
  return 0;
}

static mmp_config_t *group_find(const mmp_config_t *g, const char *name, size_t len) {
  if (!g || g->type != MMP_TYPE_GROUP) return NULL;
  for (size_t i = 0; i < g->n; i++)
    if (g->kids[i]->name && strlen(g->kids[i]->name) == len &&
        strncmp(g->kids[i]->name, name, len) == 0)
      return g->kids[i];
  return NULL;
}

static void set_origin(mmp_config_t *n, mmp_layer_t layer, const char *file, int line) {
  n->layer = layer;
  free(n->file);
  n->file = file ? mmp_xstrdup(file) : NULL;
  n->line = line;
}

static void set_origin_deep(mmp_config_t *n, mmp_layer_t layer, const char *file, int line) {
  set_origin(n, layer, file, line);
  for (size_t i = 0; i < n->n; i++) set_origin_deep(n->kids[i], layer, file, line);
}

/* Deep copy of a node (parent unset). */
static mmp_config_t *node_copy(const mmp_config_t *src) {
  mmp_config_t *d = node_new(src->name, src->type);
  if (!d) return NULL;
  d->v = src->v;
  if (src->type == MMP_TYPE_STRING) d->v.s = mmp_xstrdup(src->v.s);
  if (src->text) d->text = mmp_xstrdup(src->text);
  d->layer = src->layer;
  d->file = src->file ? mmp_xstrdup(src->file) : NULL;
  d->line = src->line;
  for (size_t i = 0; i < src->n; i++) {
    mmp_config_t *k = node_copy(src->kids[i]);
    if (!k || node_add(d, k) < 0) {
      mmp_config_free(k);
      mmp_config_free(d);
      return NULL;
    }
  }
  return d;
}

/* Replace the value of @dst by that of @src (which is consumed). */
static void node_take_value(mmp_config_t *dst, mmp_config_t *src) {
  node_clear_value(dst);
  dst->type = src->type;
  dst->v = src->v;
  dst->text = src->text;
  dst->kids = src->kids;
  dst->n = src->n;
  dst->cap = src->cap;
  for (size_t i = 0; i < dst->n; i++) dst->kids[i]->parent = dst;
  dst->layer = src->layer;
  free(dst->file);
  dst->file = src->file;
  dst->line = src->line;
  src->v.s = NULL;
  src->text = NULL;
  src->kids = NULL;
  src->n = src->cap = 0;
  src->file = NULL;
  mmp_config_free(src);
}

/* Merge group @src into group @dst: groups merge recursively, anything
 * else replaces. @src is left untouched. */
static int group_merge(mmp_config_t *dst, const mmp_config_t *src) {
  for (size_t i = 0; i < src->n; i++) {
    const mmp_config_t *s = src->kids[i];
    mmp_config_t *d = group_find(dst, s->name, strlen(s->name));
    if (d && d->type == MMP_TYPE_GROUP && s->type == MMP_TYPE_GROUP) {
      int rc = group_merge(d, s);
      if (rc < 0) return rc;
      /* the group now holds values of the later layer too: it belongs to it */
      d->layer = s->layer;
      free(d->file);
      d->file = s->file ? mmp_xstrdup(s->file) : NULL;
      d->line = s->line;
      continue;
    }
    mmp_config_t *c = node_copy(s);
    if (!c) return MMP_ENOMEM;
    if (d) {
      node_take_value(d, c);
    } else if (node_add(dst, c) < 0) {
      mmp_config_free(c);
      return MMP_ENOMEM;
    }
  }
  return 0;
}

mmp_config_t *mmp_config_new(void) {
  mmp_config_t *r = node_new(NULL, MMP_TYPE_GROUP);
  if (r && !(r->base_dir = mmp_xstrdup("."))) {
    mmp_config_free(r);
    return NULL;
  }
  return r;
}

/* ---- libconfig conversion ---- */

static mmp_config_t *from_setting(const config_setting_t *s, mmp_layer_t layer,
                                  const char *file) {
  const char *name = config_setting_name(s);
  mmp_config_t *n = NULL;
  switch (config_setting_type(s)) {
  case CONFIG_TYPE_INT:
  case CONFIG_TYPE_INT64:
    n = node_new(name, MMP_TYPE_INT);
    if (n) n->v.i = config_setting_get_int64(s);
    break;
  case CONFIG_TYPE_FLOAT:
    n = node_new(name, MMP_TYPE_FLOAT);
    if (n) n->v.f = config_setting_get_float(s);
    break;
  case CONFIG_TYPE_BOOL:
    n = node_new(name, MMP_TYPE_BOOL);
    if (n) n->v.b = config_setting_get_bool(s) != 0;
    break;
  case CONFIG_TYPE_STRING:
    n = node_new(name, MMP_TYPE_STRING);
    if (n && !(n->v.s = mmp_xstrdup(config_setting_get_string(s)))) {
      mmp_config_free(n);
      n = NULL;
    }
    break;
  case CONFIG_TYPE_ARRAY:
  case CONFIG_TYPE_LIST:
  case CONFIG_TYPE_GROUP: {
    int t = config_setting_type(s);
    n = node_new(name, t == CONFIG_TYPE_GROUP ? MMP_TYPE_GROUP : MMP_TYPE_LIST);
    if (!n) break;
    int len = config_setting_length(s);
    for (int i = 0; i < len; i++) {
      mmp_config_t *k = from_setting(config_setting_get_elem(s, (unsigned)i), layer, file);
      if (!k || node_add(n, k) < 0) {
        mmp_config_free(k);
        mmp_config_free(n);
        return NULL;
      }
      if (t != CONFIG_TYPE_GROUP) {
        free(k->name);
        k->name = NULL;
      }
    }
    break;
  }
  default:
    mmp_error_set(MMP_ECONFIG, "%s:%d: unsupported value type", file ? file : "(text)",
                  config_setting_source_line(s));
    return NULL;
  }
  if (n) {
    n->layer = layer;
    n->file = file ? mmp_xstrdup(file) : NULL;
    n->line = (int)config_setting_source_line(s);
  }
  return n;
}

/* Parse libconfig text into a group of the given layer. */
static mmp_config_t *parse_text(const char *text, const char *file, mmp_layer_t layer) {
  config_t cf;
  config_init(&cf);
  if (config_read_string(&cf, text) != CONFIG_TRUE) {
    mmp_error_set(MMP_ECONFIG, "%s:%d: %s", file ? file : "(text)", config_error_line(&cf),
                  config_error_text(&cf));
    config_destroy(&cf);
    return NULL;
  }
  mmp_config_t *g = from_setting(config_root_setting(&cf), layer, file);
  config_destroy(&cf);
  if (g) {
    free(g->name);
    g->name = NULL;
    g->line = 0;
  }
  return g;
}

static char *read_file(const char *path, size_t *len_out) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    mmp_error_set(MMP_EIO, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  mmp_strbuf_t b = {0};
  char chunk[8192];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
    mmp_strbuf_append(&b, "%.*s", (int)got, chunk);
  int err = ferror(f);
  fclose(f);
  if (err) {
    mmp_strbuf_free(&b);
    mmp_error_set(MMP_EIO, "%s: read error", path);
    return NULL;
  }
  if (!b.data) b.data = mmp_xstrdup("");
  if (len_out) *len_out = b.len;
  return b.data;
}

static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return mmp_xstrdup(".");
  if (slash == path) return mmp_xstrdup("/");
  char *d = mmp_xcalloc(1, (size_t)(slash - path) + 1);
  if (d) memcpy(d, path, (size_t)(slash - path));
  return d;
}

/* Load one file: its @include lines (relative to the including file) are
 * read first, each as layer INCLUDE, then the file's own settings are merged
 * over them. The @include lines are blanked so line numbers stay right. */
static mmp_config_t *load_layered(const char *path, mmp_layer_t layer, int depth) {
  if (depth > MAX_INCLUDE_DEPTH) {
    mmp_error_set(MMP_ECONFIG, "%s: @include nested more than %d deep (a cycle?)", path,
                  MAX_INCLUDE_DEPTH);
    return NULL;
  }
  char *text = read_file(path, NULL);
  if (!text) return NULL;
  char *dir = dir_of(path);
  mmp_config_t *acc = node_new(NULL, MMP_TYPE_GROUP);
  int lineno = 1;
  int failed = !dir || !acc;
  for (char *line = text; !failed && *line;) {
    char *eol = strchr(line, '\n');
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (strncmp(p, "@include", 8) == 0) {
      char *q1 = strchr(p, '"');
      char *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
      if (!q1 || !q2 || (eol && q2 > eol)) {
        mmp_error_set(MMP_ECONFIG, "%s:%d: malformed @include (expected @include \"file\")",
                      path, lineno);
        failed = 1;
        break;
      }
      char inc[PATH_MAX];
      int len = (int)(q2 - q1 - 1);
      if (q1[1] == '/')
        snprintf(inc, sizeof inc, "%.*s", len, q1 + 1);
      else
        snprintf(inc, sizeof inc, "%s/%.*s", dir, len, q1 + 1);
      mmp_config_t *sub = load_layered(inc, MMP_LAYER_INCLUDE, depth + 1);
      if (!sub) {
        mmp_error_prefix("%s:%d: in @include: ", path, lineno);
        failed = 1;
        break;
      }
      int rc = group_merge(acc, sub);
      mmp_config_free(sub);
      if (rc < 0) {
        failed = 1;
        break;
      }
      for (char *c = line; c < (eol ? eol : line + strlen(line)); c++) *c = ' ';
    }
    if (!eol) break;
    line = eol + 1;
    lineno++;
  }
  mmp_config_t *own = failed ? NULL : parse_text(text, path, layer);
  if (!own) failed = 1;
  if (!failed && group_merge(acc, own) < 0) failed = 1;
  mmp_config_free(own);
  free(text);
  free(dir);
  if (failed) {
    mmp_config_free(acc);
    return NULL;
  }
  return acc;
}

mmp_config_t *mmp_config_load(const char *path) {
  mmp_config_t *root = load_layered(path, MMP_LAYER_FILE, 0);
  if (!root) return NULL;
  root->layer = MMP_LAYER_FILE;
  root->file = mmp_xstrdup(path);
  root->base_dir = dir_of(path);
  return root;
}

mmp_config_t *mmp_config_parse(const char *text, const char *name) {
  mmp_config_t *root = parse_text(text, name, MMP_LAYER_FILE);
  if (root && !(root->base_dir = mmp_xstrdup("."))) {
    mmp_config_free(root);
    return NULL;
  }
  return root;
}

/* ---- setting values by path ---- */

static int valid_key(const char *s, size_t len) {
  if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == '*')) return 0;
  for (size_t i = 0; i < len; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '*')) return 0;
  return 1;
}

/* Find or create the group that holds the last component of @path. */
static mmp_config_t *ensure_parent(mmp_config_t *root, const char *path, const char **leaf,
                                   mmp_layer_t layer, const char *file, int line) {
  mmp_config_t *g = root;
  const char *p = path;
  for (;;) {
    const char *dot = strchr(p, '.');
    if (!dot) break;
    size_t len = (size_t)(dot - p);
    if (!valid_key(p, len)) {
      mmp_error_set(MMP_ECONFIG, "'%s': '%.*s' is not a valid key name", path, (int)len, p);
      return NULL;
    }
    mmp_config_t *k = group_find(g, p, len);
    if (!k) {
      char name[256];
      snprintf(name, sizeof name, "%.*s", (int)len, p);
      k = node_new(name, MMP_TYPE_GROUP);
      if (!k || node_add(g, k) < 0) {
        mmp_config_free(k);
        return NULL;
      }
      set_origin(k, layer, file, line);
    } else if (k->type != MMP_TYPE_GROUP) {
      mmp_error_set(MMP_ECONFIG, "'%s': '%.*s' is a %s, not a group", path, (int)len, p,
                    mmp_type_name(k->type));
      return NULL;
    }
    g = k;
    p = dot + 1;
  }
  if (!valid_key(p, strlen(p))) {
    mmp_error_set(MMP_ECONFIG, "'%s': '%s' is not a valid key name", path, p);
    return NULL;
  }
  *leaf = p;
  return g;
}

/* Parse a literal ("42", "\"x\"", "[1,2]", "{a=1;}", or bare text). */
static mmp_config_t *parse_literal(const char *literal, int bare_is_string) {
  size_t len = strlen(literal);
  char *text = mmp_xmalloc(len + 16);
  if (!text) return NULL;
  snprintf(text, len + 16, "v = %s;", literal);
  config_t cf;
  config_init(&cf);
  mmp_config_t *n = NULL;
  if (config_read_string(&cf, text) == CONFIG_TRUE) {
    config_setting_t *s = config_lookup(&cf, "v");
    if (s) n = from_setting(s, MMP_LAYER_OVERRIDE, NULL);
  } else if (bare_is_string) {
    n = node_new("v", MMP_TYPE_STRING);
    if (n && !(n->v.s = mmp_xstrdup(literal))) {
      mmp_config_free(n);
      n = NULL;
    }
  } else {
    mmp_error_set(MMP_ECONFIG, "'%s' is not a valid value: %s", literal, config_error_text(&cf));
  }
  config_destroy(&cf);
  free(text);
  return n;
}

int mmp_config_set_literal(mmp_config_t *root, const char *path, const char *literal,
                           mmp_layer_t layer, const char *file, int line) {
  const char *leaf;
  mmp_config_t *g = ensure_parent(root, path, &leaf, layer, file, line);
  if (!g) return MMP_ECONFIG;
  mmp_config_t *val = parse_literal(literal, layer == MMP_LAYER_OVERRIDE);
  if (!val) return mmp_error_code() ? mmp_error_code() : MMP_ECONFIG;
  set_origin_deep(val, layer, file, line);
  if (layer == MMP_LAYER_OVERRIDE) val->text = mmp_xstrdup(literal);
  mmp_config_t *cur = group_find(g, leaf, strlen(leaf));
  if (cur) {
    if (cur->type == MMP_TYPE_GROUP && val->type == MMP_TYPE_GROUP) {
      int rc = group_merge(cur, val);
      mmp_config_free(val);
      return rc;
    }
    node_take_value(cur, val);
    return 0;
  }
  free(val->name);
  val->name = mmp_xstrdup(leaf);
  if (!val->name || node_add(g, val) < 0) {
    mmp_config_free(val);
    return MMP_ENOMEM;
  }
  return 0;
}

int mmp_config_override(mmp_config_t *root, const char *assignment) {
  const char *eq = strchr(assignment, '=');
  if (!eq || eq == assignment)
    return mmp_error_set(MMP_ECONFIG, "-s '%s': expected KEY.PATH=VALUE", assignment);
  char path[512];
  size_t len = (size_t)(eq - assignment);
  if (len >= sizeof path) return mmp_error_set(MMP_ECONFIG, "-s '%s': key too long", assignment);
  memcpy(path, assignment, len);
  path[len] = '\0';
  while (len > 0 && path[len - 1] == ' ') path[--len] = '\0';
  const char *val = eq + 1;
  while (*val == ' ') val++;
  int rc = mmp_config_set_literal(root, path, val, MMP_LAYER_OVERRIDE, NULL, 0);
  if (rc < 0) mmp_error_prefix("-s %s: ", assignment);
  return rc;
}

/* ---- navigation ---- */

const mmp_config_t *mmp_config_lookup(const mmp_config_t *node, const char *path) {
  if (!node || !path) return NULL;
  const mmp_config_t *g = node;
  const char *p = path;
  while (g) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    g = group_find(g, p, len);
    if (!dot) return g;
    p = dot + 1;
  }
  return NULL;
}

mmp_type_t mmp_config_type(const mmp_config_t *n) { return n ? n->type : MMP_TYPE_NONE; }
const char *mmp_config_name(const mmp_config_t *n) { return (n && n->name) ? n->name : ""; }
size_t mmp_config_count(const mmp_config_t *n) { return n ? n->n : 0; }
const mmp_config_t *mmp_config_child(const mmp_config_t *n, size_t i) {
  return (n && i < n->n) ? n->kids[i] : NULL;
}
const mmp_config_t *mmp_config_parent(const mmp_config_t *n) { return n ? n->parent : NULL; }
const char *mmp_config_file(const mmp_config_t *n) { return n ? n->file : NULL; }
int mmp_config_line(const mmp_config_t *n) { return n ? n->line : 0; }
mmp_layer_t mmp_config_layer(const mmp_config_t *n) { return n ? n->layer : MMP_LAYER_DEFAULT; }

const char *mmp_config_path(const mmp_config_t *n, char *buf, size_t len) {
  const char *parts[32];
  int np = 0;
  for (const mmp_config_t *c = n; c && c->parent && np < 32; c = c->parent)
    parts[np++] = c->name ? c->name : "[]";
  size_t off = 0;
  if (len) buf[0] = '\0';
  for (int i = np - 1; i >= 0 && off < len; i--)
    off += (size_t)snprintf(buf + off, len - off, "%s%s", i == np - 1 ? "" : ".", parts[i]);
  return buf;
}

static const mmp_config_t *root_of(const mmp_config_t *n) {
  while (n && n->parent) n = n->parent;
  return n;
}

const char *mmp_config_base_dir(const mmp_config_t *n) {
  const mmp_config_t *r = root_of(n);
  return (r && r->base_dir) ? r->base_dir : ".";
}

/* "file:line: " or "-s override: " or "default: " for messages. */
static const char *where(const mmp_config_t *n, char *buf, size_t len) {
  if (!n) {
    snprintf(buf, len, "config: ");
  } else if (n->layer == MMP_LAYER_OVERRIDE) {
    snprintf(buf, len, "command line (-s): ");
  } else if (n->layer == MMP_LAYER_DEFAULT) {
    snprintf(buf, len, "built-in default: ");
  } else if (n->file) {
    snprintf(buf, len, "%s:%d: ", n->file, n->line);
  } else {
    snprintf(buf, len, "config: ");
  }
  return buf;
}

static int type_error(const mmp_config_t *n, const char *want) {
  char w[600], p[256];
  return mmp_error_set(MMP_ECONFIG, "%s'%s' must be %s, found %s", where(n, w, sizeof w),
                       mmp_config_path(n, p, sizeof p), want, mmp_type_name(n->type));
}

int mmp_config_int(const mmp_config_t *n, int64_t *out) {
  if (!n) return mmp_error_set(MMP_ENOENT, "no such key");
  if (n->type != MMP_TYPE_INT) return type_error(n, "an int");
  *out = n->v.i;
  return 0;
}

int mmp_config_float(const mmp_config_t *n, double *out) {
  if (!n) return mmp_error_set(MMP_ENOENT, "no such key");
  if (n->type == MMP_TYPE_FLOAT)
    *out = n->v.f;
  else if (n->type == MMP_TYPE_INT)
    *out = (double)n->v.i;
  else
    return type_error(n, "a number");
  return 0;
}

int mmp_config_bool(const mmp_config_t *n, bool *out) {
  if (!n) return mmp_error_set(MMP_ENOENT, "no such key");
  if (n->type != MMP_TYPE_BOOL) return type_error(n, "a bool (true or false)");
  *out = n->v.b;
  return 0;
}

const char *mmp_config_string(const mmp_config_t *n) {
  if (!n) return NULL;
  if (n->type == MMP_TYPE_STRING) return n->v.s;
  /* -s name=123 typed a number where a string was meant: use the text */
  if (n->layer == MMP_LAYER_OVERRIDE && n->text && n->type != MMP_TYPE_GROUP &&
      n->type != MMP_TYPE_LIST)
    return n->text;
  return NULL;
}

static const mmp_config_t *get_key(const mmp_config_t *g, const char *key) {
  if (!g || !key) return NULL;
  if (g->type != MMP_TYPE_GROUP) return NULL;
  return group_find(g, key, strlen(key));
}

static int absent(const mmp_config_t *g, const char *key) {
  char p[256];
  mmp_config_path(g, p, sizeof p);
  return mmp_error_set(MMP_ENOENT, "key '%s%s%s' is not set", p, *p ? "." : "", key);
}

int mmp_config_get_int(const mmp_config_t *g, const char *key, int64_t *out) {
  const mmp_config_t *n = get_key(g, key);
  return n ? mmp_config_int(n, out) : absent(g, key);
}

int mmp_config_get_float(const mmp_config_t *g, const char *key, double *out) {
  const mmp_config_t *n = get_key(g, key);
  return n ? mmp_config_float(n, out) : absent(g, key);
}

int mmp_config_get_bool(const mmp_config_t *g, const char *key, bool *out) {
  const mmp_config_t *n = get_key(g, key);
  return n ? mmp_config_bool(n, out) : absent(g, key);
}

int mmp_config_get_string(const mmp_config_t *g, const char *key, const char **out) {
  const mmp_config_t *n = get_key(g, key);
  if (!n) return absent(g, key);
  const char *s = mmp_config_string(n);
  if (!s) return type_error(n, "a string");
  *out = s;
  return 0;
}

int mmp_config_get_path(const mmp_config_t *g, const char *key, char *buf, size_t len) {
  const mmp_config_t *n = get_key(g, key);
  const char *s;
  int rc = mmp_config_get_string(g, key, &s);
  if (rc < 0) return rc;
  int w;
  if (s[0] == '/' || s[0] == '\0' || n->layer == MMP_LAYER_OVERRIDE) {
    w = snprintf(buf, len, "%s", s); /* absolute, or typed in the shell: as is */
  } else if (n->file) {
    char *d = dir_of(n->file);
    w = snprintf(buf, len, "%s/%s", d ? d : ".", s);
    free(d);
  } else {
    w = snprintf(buf, len, "%s/%s", mmp_config_base_dir(g), s);
  }
  if (w < 0 || (size_t)w >= len) return mmp_error_set(MMP_ECONFIG, "path of '%s' is too long", key);
  return 0;
}

/* A list node, or a scalar acting as a one-item list. */
static int list_item(const mmp_config_t *g, const char *key, size_t i, const mmp_config_t **out) {
  const mmp_config_t *n = get_key(g, key);
  if (!n) return absent(g, key);
  if (n->type == MMP_TYPE_LIST) {
    if (i >= n->n)
      return mmp_error_set(MMP_EINVAL, "'%s': index %zu out of range (%zu items)", key, i, n->n);
    *out = n->kids[i];
    return 0;
  }
  if (n->type == MMP_TYPE_GROUP) return type_error(n, "a list");
  if (i != 0) return mmp_error_set(MMP_EINVAL, "'%s': index %zu out of range (1 item)", key, i);
  *out = n;
  return 0;
}

int mmp_config_get_list_size(const mmp_config_t *g, const char *key, size_t *n) {
  const mmp_config_t *node = get_key(g, key);
  if (!node) return absent(g, key);
  if (node->type == MMP_TYPE_GROUP) return type_error(node, "a list");
  *n = node->type == MMP_TYPE_LIST ? node->n : 1;
  return 0;
}

int mmp_config_get_list_int(const mmp_config_t *g, const char *key, size_t i, int64_t *out) {
  const mmp_config_t *it;
  int rc = list_item(g, key, i, &it);
  return rc < 0 ? rc : mmp_config_int(it, out);
}

int mmp_config_get_list_float(const mmp_config_t *g, const char *key, size_t i, double *out) {
  const mmp_config_t *it;
  int rc = list_item(g, key, i, &it);
  return rc < 0 ? rc : mmp_config_float(it, out);
}

int mmp_config_get_list_string(const mmp_config_t *g, const char *key, size_t i,
                               const char **out) {
  const mmp_config_t *it;
  int rc = list_item(g, key, i, &it);
  if (rc < 0) return rc;
  const char *s = mmp_config_string(it);
  if (!s) return type_error(it, "a string");
  *out = s;
  return 0;
}

/* ---- writing ---- */

static void write_escaped(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    switch (*s) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\t': fputs("\\t", f); break;
    default: fputc(*s, f);
    }
  }
  fputc('"', f);
}

static void write_scalar(FILE *f, const mmp_config_t *n) {
  switch (n->type) {
  case MMP_TYPE_INT: fprintf(f, "%lld", (long long)n->v.i); break;
  case MMP_TYPE_FLOAT: {
    char b[64];
    snprintf(b, sizeof b, "%.17g", n->v.f);
    if (!strpbrk(b, ".eEn")) strcat(b, ".0");
    fputs(b, f);
    break;
  }
  case MMP_TYPE_BOOL: fputs(n->v.b ? "true" : "false", f); break;
  case MMP_TYPE_STRING: write_escaped(f, n->v.s); break;
  default: break;
  }
}

static void write_origin(FILE *f, const mmp_config_t *n) {
  switch (n->layer) {
  case MMP_LAYER_DEFAULT: fputs("  # default", f); break;
  case MMP_LAYER_OVERRIDE: fputs("  # override (-s)", f); break;
  case MMP_LAYER_INCLUDE: fprintf(f, "  # include %s:%d", n->file ? n->file : "?", n->line); break;
  case MMP_LAYER_FILE: fprintf(f, "  # file %s:%d", n->file ? n->file : "?", n->line); break;
  }
}

static void write_node(FILE *f, const mmp_config_t *n, int indent, bool annotate) {
  for (size_t i = 0; i < n->n; i++) {
    const mmp_config_t *k = n->kids[i];
    fprintf(f, "%*s", indent, "");
    if (k->name) fprintf(f, "%s = ", k->name);
    if (k->type == MMP_TYPE_GROUP) {
      fputs("{\n", f);
      write_node(f, k, indent + 2, annotate);
      fprintf(f, "%*s}", indent, "");
    } else if (k->type == MMP_TYPE_LIST) {
      bool scalars = true;
      for (size_t j = 0; j < k->n; j++)
        if (k->kids[j]->type == MMP_TYPE_GROUP || k->kids[j]->type == MMP_TYPE_LIST) scalars = false;
      if (scalars) {
        /* libconfig arrays must be homogeneous; mixed scalars become a list */
        bool homo = true;
        for (size_t j = 1; j < k->n; j++)
          if (k->kids[j]->type != k->kids[0]->type) homo = false;
        fputs(homo ? "[" : "(", f);
        for (size_t j = 0; j < k->n; j++) {
          if (j) fputs(", ", f);
          write_scalar(f, k->kids[j]);
        }
        fputs(homo ? "]" : ")", f);
      } else {
        fputs("(\n", f);
        for (size_t j = 0; j < k->n; j++) {
          const mmp_config_t *it = k->kids[j];
          fprintf(f, "%*s", indent + 2, "");
          if (it->type == MMP_TYPE_GROUP) {
            fputs("{\n", f);
            write_node(f, it, indent + 4, annotate);
            fprintf(f, "%*s}", indent + 2, "");
          } else {
            write_scalar(f, it);
          }
          fputs(j + 1 < k->n ? ",\n" : "\n", f);
        }
        fprintf(f, "%*s)", indent, "");
      }
    } else {
      write_scalar(f, k);
    }
    fputs(k->name ? ";" : "", f);
    if (annotate && k->type != MMP_TYPE_GROUP) write_origin(f, k);
    fputc('\n', f);
  }
}

int mmp_config_write(const mmp_config_t *root, FILE *f, bool annotate) {
  if (!root || !f) return mmp_error_set(MMP_EINVAL, "mmp_config_write: NULL argument");
  write_node(f, root, 0, annotate);
  return ferror(f) ? mmp_error_set(MMP_EIO, "write error") : 0;
}
