/* tests/tokfixture.h - shared by the tokenizer tests: reading the JSON
 * fixtures of tests/gen_tokenizers.py and running a processor plugin from a
 * config text. Header-only (each test includes it once). */
#ifndef MMPIPE_TESTS_TOKFIXTURE_H
#define MMPIPE_TESTS_TOKFIXTURE_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/plugin.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static inline json_t *tokfx_load(const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/%s", tap_srcdir(), name);
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root) {
    printf("Bail out! cannot read %s: %s\n", path, err.text);
    exit(1);
  }
  return root;
}

static inline int tokfx_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Compare a row-major i64 [n, L] buffer with a JSON list of lists. */
static inline int tokfx_rows_equal(const int64_t *got, size_t n, size_t L, json_t *want,
                                   const char *what, const char *casename, json_t *texts) {
  int ok_all = 1;
  for (size_t i = 0; i < n; i++) {
    json_t *row = json_array_get(want, i);
    int same = json_array_size(row) == L;
    for (size_t j = 0; same && j < L; j++)
      same = got[i * L + j] == json_integer_value(json_array_get(row, j));
    if (!same) {
      ok_all = 0;
      diag("%s %s text %zu (%s) differs", casename, what, i,
           json_string_value(json_array_get(texts, i)));
      char buf[4096];
      size_t k = 0;
      for (size_t j = 0; j < L && k < sizeof buf - 32; j++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%lld ", (long long)got[i * L + j]);
      diag("  got  %s", buf);
      k = 0;
      for (size_t j = 0; j < json_array_size(row) && k < sizeof buf - 32; j++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%lld ",
                              (long long)json_integer_value(json_array_get(row, j)));
      diag("  want %s", buf);
    }
  }
  return ok_all;
}

/* A processor component from a config text: { processor = { ... }; } */
typedef struct tokfx_comp {
  mmp_registry_t *reg;
  mmp_config_t *cfg;
  mmp_context_t *ctx;
  mmp_component_t *comp;
} tokfx_comp_t;

static inline void tokfx_comp_free(tokfx_comp_t *c) {
  mmp_component_free(c->comp);
  mmp_context_free(c->ctx);
  mmp_config_free(c->cfg);
  mmp_registry_free(c->reg);
  memset(c, 0, sizeof(*c));
}

static inline int tokfx_comp_new(tokfx_comp_t *c, const char *cfgtext) {
  memset(c, 0, sizeof(*c));
  char dir[4096];
  const char *b = getenv("MMP_TEST_BUILDDIR");
  snprintf(dir, sizeof dir, "%s/plugins/processors/.libs", b ? b : ".");
  c->reg = mmp_registry_new();
  if (!c->reg || mmp_registry_add_dir(c->reg, dir) < 0) return -1;
  c->cfg = mmp_config_parse(cfgtext, "test.cfg");
  if (!c->cfg) return -1;
  c->ctx = mmp_context_new(c->reg, c->cfg);
  if (!c->ctx) return -1;
  c->comp = mmp_component_create(c->ctx, MMP_KIND_PROCESSOR, "processor");
  return c->comp ? 0 : -1;
}

static inline int tokfx_encode(tokfx_comp_t *c, const char *const *texts, size_t n,
                               mmp_tensormap_t *out) {
  const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)c->comp->plugin;
  return ops->encode_text(c->comp->self, texts, n, out);
}

/* Contents of an i64 tensor as a malloc'ed host buffer, or NULL. */
static inline int64_t *tokfx_host_i64(const mmp_tensor_t *t) {
  if (!t || t->dtype != MMP_I64) return NULL;
  size_t nb = mmp_tensor_nbytes(t);
  int64_t *h = malloc(nb ? nb : 8);
  if (h && mmp_tensor_to_host(t, h, nb) < 0) {
    free(h);
    return NULL;
  }
  return h;
}


/* One fixture case through the plugin: the case's "config" object becomes a
 * processor group (keys rendered by @special when it returns nonzero, else by
 * their JSON type), the component encodes the case's texts, and input_ids,
 * attention_mask and forward("vocab_size") must equal the recorded ones.
 * @special(key, value, out, outlen) writes the line for keys that name files. */
typedef int (*tokfx_key_fn)(const char *key, json_t *value, json_t *cfg, char *out, size_t outlen);

static inline void tokfx_plugin_case(json_t *c, const char *plugin, tokfx_key_fn special) {
  const char *name = json_string_value(json_object_get(c, "name"));
  json_t *cfg = json_object_get(c, "config"), *texts = json_object_get(c, "texts");
  char text[8192];
  size_t k = 0;
  k += (size_t)snprintf(text + k, sizeof text - k, "processor = { name = \"%s\";\n", plugin);
  const char *key;
  json_t *v;
  json_object_foreach(cfg, key, v) {
    char line[2048];
    if (special(key, v, cfg, line, sizeof line)) {
      k += (size_t)snprintf(text + k, sizeof text - k, "%s", line);
      continue;
    }
    if (json_is_string(v))
      k += (size_t)snprintf(text + k, sizeof text - k, "  %s = \"%s\";\n", key, json_string_value(v));
    else if (json_is_boolean(v))
      k += (size_t)snprintf(text + k, sizeof text - k, "  %s = %s;\n", key,
                            json_is_true(v) ? "true" : "false");
    else if (json_is_integer(v))
      k += (size_t)snprintf(text + k, sizeof text - k, "  %s = %lld;\n", key,
                            (long long)json_integer_value(v));
    else if (json_is_array(v) && json_array_size(v) > 0) {
      k += (size_t)snprintf(text + k, sizeof text - k, "  %s = [", key);
      for (size_t i = 0; i < json_array_size(v); i++)
        k += (size_t)snprintf(text + k, sizeof text - k, "%s\"%s\"", i ? ", " : "",
                              json_string_value(json_array_get(v, i)));
      k += (size_t)snprintf(text + k, sizeof text - k, "];\n");
    }
  }
  snprintf(text + k, sizeof text - k, "};\n");
  tokfx_comp_t comp;
  if (!ok(tokfx_comp_new(&comp, text) == 0, "%s: plugin instance", name)) {
    diag("%s", mmp_error_last());
    tokfx_comp_free(&comp);
    return;
  }
  size_t n = json_array_size(texts);
  const char **tv = calloc(n, sizeof(char *));
  for (size_t i = 0; i < n; i++) tv[i] = json_string_value(json_array_get(texts, i));
  mmp_tensormap_t *out = mmp_tensormap_new();
  int rc = tokfx_encode(&comp, tv, n, out);
  if (!ok(rc == 0, "%s: encode_text", name)) diag("%s", mmp_error_last());
  int64_t L = json_integer_value(json_object_get(cfg, "max_length"));
  mmp_tensor_t *ti = mmp_tensormap_get(out, "input_ids"), *tm = mmp_tensormap_get(out, "attention_mask");
  ok(ti && tm && ti->ndim == 2 && ti->shape[0] == (int64_t)n && ti->shape[1] == L &&
         ti->dtype == MMP_I64 && tm->dtype == MMP_I64 && mmp_tensor_same_shape(ti, tm),
     "%s: i64 [%zu, %lld] input_ids and attention_mask", name, n, (long long)L);
  int64_t *hi = tokfx_host_i64(ti), *hm = tokfx_host_i64(tm);
  ok(hi && tokfx_rows_equal(hi, n, (size_t)L, json_object_get(c, "input_ids"), "input_ids", name,
                            texts),
     "%s: plugin input_ids identical", name);
  ok(hm && tokfx_rows_equal(hm, n, (size_t)L, json_object_get(c, "attention_mask"),
                            "attention_mask", name, texts),
     "%s: plugin attention_mask identical", name);
  free(hi);
  free(hm);
  /* the vocabulary size through forward(method = "vocab_size") */
  mmp_tensormap_t *vs = mmp_tensormap_new();
  const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)comp.comp->plugin;
  rc = ops->forward(comp.comp->self, "vocab_size", NULL, vs);
  mmp_tensor_t *tv1 = mmp_tensormap_get(vs, "vocab_size");
  int64_t *h = tokfx_host_i64(tv1);
  ok(rc == 0 && h && tv1->ndim == 1 && tv1->shape[0] == 1 &&
         h[0] == json_integer_value(json_object_get(c, "vocab_size")),
     "%s: forward vocab_size = %lld", name,
     (long long)json_integer_value(json_object_get(c, "vocab_size")));
  free(h);
  mmp_tensormap_free(vs);
  mmp_tensormap_free(out);
  free(tv);
  tokfx_comp_free(&comp);
}

#endif
