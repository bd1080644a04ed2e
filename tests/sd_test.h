/* tests/sd_test.h - helpers of the latent-diffusion tests: build a component
 * from libconfig text, run it, compare with fixtures by normalised error. */
#ifndef MMPIPE_TESTS_SD_TEST_H
#define MMPIPE_TESTS_SD_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/autograd.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tap.h"

/* Relative tolerance of every component comparison (issue 5): max abs error
 * over max abs expected. */
#define SD_TOL 1e-4

typedef struct sd_env {
  mmp_registry_t *reg;
  mmp_config_t *cfg;
  mmp_context_t *ctx;
  char fx[4096]; /* tests/fixtures/sd */
} sd_env_t;

static inline void sd_env_add_dirs(mmp_registry_t *reg) {
  const char *b = getenv("MMP_TEST_BUILDDIR");
  char d[4200];
  static const char *const kinds[] = {"models", "encoders", "tasks", "processors", "schedulers"};
  for (int i = 0; i < 5; i++) {
    snprintf(d, sizeof d, "%s/plugins/%s/.libs", b ? b : ".", kinds[i]);
    mmp_registry_add_dir(reg, d);
  }
}

/* Parse @text (printf format; %1$s = fixture dir) into a fresh context. */
static inline int sd_env_open(sd_env_t *e, const char *text) {
  memset(e, 0, sizeof *e);
  snprintf(e->fx, sizeof e->fx, "%s/tests/fixtures/sd", tap_srcdir());
  e->reg = mmp_registry_new();
  sd_env_add_dirs(e->reg);
  e->cfg = mmp_config_parse(text, "test");
  if (!e->cfg) return -1;
  e->ctx = mmp_context_new(e->reg, e->cfg);
  return e->ctx ? 0 : -1;
}

static inline void sd_env_close(sd_env_t *e) {
  mmp_context_free(e->ctx);
  mmp_config_free(e->cfg);
  mmp_registry_free(e->reg);
  memset(e, 0, sizeof *e);
}

/* Run the task of the configuration @text (@label names it in parse errors) with the build
 * tree's plugins, plus @extra_dir's when not NULL, progress off. The task's return code;
 * a failure's message goes to a diag line (and stays in mmp_error_last()). */
static inline int sd_run_task(const char *text, const char *label, const char *extra_dir) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  if (extra_dir) mmp_registry_add_dir(reg, extra_dir);
  mmp_config_t *cfg = mmp_config_parse(text, label);
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  if (ctx) mmp_context_set_progress(ctx, false);
  int rc = ctx ? mmp_context_run_task(ctx) : -1;
  if (rc < 0) diag("  %s", mmp_error_last());
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return rc;
}

/* Build the component of group @group in a config made of @fmt with the
 * fixture directory substituted for every %s. (transfer full) */
static inline mmp_component_t *sd_component(sd_env_t *e, mmp_kind_t kind, const char *group,
                                            const char *fmt) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  /* up to four substitutions of the fixture directory */
  snprintf(text, sizeof text, fmt, fx, fx, fx, fx);
  if (sd_env_open(e, text) < 0) return NULL;
  return mmp_component_create(e->ctx, kind, group);
}

static inline int sd_forward(mmp_component_t *c, const char *method, const mmp_tensormap_t *in,
                             mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  return ops->forward(c->self, method, in, out);
}

static inline mmp_tensormap_t *sd_load(const char *name) {
  char p[4200];
  snprintf(p, sizeof p, "%s/tests/fixtures/sd/%s", tap_srcdir(), name);
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) < 0) {
    diag("%s: %s", p, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

/* A parameters() callback that watches each trainable tensor on @tape, counting them in @n. */
typedef struct sd_watch {
  mmp_tape_t *tape;
  int n;
} sd_watch_t;

static inline int sd_watch_cb(void *user, const char *name, mmp_tensor_t *p) {
  sd_watch_t *w = user;
  w->n++;
  return mmp_tape_watch(w->tape, name, p);
}

/* max|a - b| / max|b| (a, b any float dtype, same shape); -1 on mismatch. */
static inline double sd_relerr(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || a->ndim != b->ndim) return -1;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return -1;
  int64_t n = mmp_tensor_numel(a);
  mmp_tensor_t *fa = mmp_convert(a, MMP_F32), *fb = mmp_convert(b, MMP_F32);
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  double r = -1;
  if (fa && fb && x && y && mmp_tensor_to_host(fa, x, (size_t)n * 4) == 0 &&
      mmp_tensor_to_host(fb, y, (size_t)n * 4) == 0) {
    double me = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
      double d = fabs((double)x[i] - y[i]);
      if (d > me || d != d) me = d != d ? INFINITY : d;
      if (fabs(y[i]) > mx) mx = fabs(y[i]);
    }
    r = mx > 0 ? me / mx : me;
  }
  free(x);
  free(y);
  mmp_tensor_unref(fa);
  mmp_tensor_unref(fb);
  return r;
}

/* ok() that the relative error of @got vs @want is within SD_TOL. */
static inline void sd_check(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  double r = sd_relerr(got, want);
  if (!ok(r >= 0 && r <= SD_TOL, "%s within %.0e relative", what, SD_TOL))
    diag("  relative error %.3g%s", r, r < 0 ? " (missing or shape mismatch)" : "");
}

/* Every fixture tensor "grad.NAME" of @fx against @grads' NAME, by @check
 * (sd_check when NULL). Returns how many were compared. */
static inline int sd_check_fixture_grads(const mmp_tensormap_t *grads, const mmp_tensormap_t *fx,
                                         void (*check)(const mmp_tensor_t *, const mmp_tensor_t *, const char *)) {
  int n = 0;
  for (size_t i = 0; i < mmp_tensormap_size(fx); i++) {
    const char *name = mmp_tensormap_name(fx, i);
    if (strncmp(name, "grad.", 5) != 0) continue;
    char what[256];
    snprintf(what, sizeof what, "d loss / d %s", name + 5);
    (check ? check : sd_check)(mmp_tensormap_get(grads, name + 5), mmp_tensormap_at(fx, i), what);
    n++;
  }
  return n;
}

/* Copy the named tensors of @src into a new map under new names
 * ("from=to" pairs or plain names). (transfer full) */
static inline mmp_tensormap_t *sd_pick(const mmp_tensormap_t *src, const char *const *names) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  for (int i = 0; names[i]; i++) {
    char from[128], to[128];
    const char *eq = strchr(names[i], '=');
    if (eq) {
      snprintf(from, sizeof from, "%.*s", (int)(eq - names[i]), names[i]);
      snprintf(to, sizeof to, "%s", eq + 1);
    } else {
      snprintf(from, sizeof from, "%s", names[i]);
      snprintf(to, sizeof to, "%s", names[i]);
    }
    mmp_tensor_t *t = mmp_tensormap_get(src, from);
    if (t) mmp_tensormap_set(m, to, mmp_tensor_ref(t));
  }
  return m;
}

/* Write a copy of the fixture config @src (under tests/fixtures/sd) with
 * the value of @key replaced by the JSON text @value, to @out (a path
 * under the build directory). Returns 0, or -1 when @key is absent. */
static inline int sd_config_variant(const char *src, const char *key, const char *value, char *out,
                                    size_t outlen) {
  char p[4200], k[160];
  snprintf(p, sizeof p, "%s/tests/fixtures/sd/%s", tap_srcdir(), src);
  FILE *f = fopen(p, "rb");
  if (!f) return -1;
  char buf[65536];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  snprintf(k, sizeof k, "\"%s\":", key);
  char *a = strstr(buf, k);
  if (!a) return -1;
  a += strlen(k);
  while (*a == ' ') a++;
  char *b = a;
  if (*b == '[') {
    while (*b && *b != ']') b++;
    if (*b) b++;
  } else {
    while (*b && *b != ',' && *b != '\n' && *b != '}') b++;
  }
  const char *base = getenv("MMP_TEST_BUILDDIR");
  snprintf(out, outlen, "%s/sd-variant-%s-%d.json", base ? base : "/tmp", key, (int)getpid());
  f = fopen(out, "wb");
  if (!f) return -1;
  fprintf(f, "%.*s%s%s", (int)(a - buf), buf, value, b);
  fclose(f);
  return 0;
}

/* ok() that building the component of @kind/@group from @fmt (printf
 * format: %s = fixture dir, the config path) fails with an error that
 * contains @want; the message is shown. */
static inline void sd_refused(mmp_kind_t kind, const char *group, const char *fmt, const char *path,
                              const char *want, const char *what) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  snprintf(text, sizeof text, fmt, path, fx);
  sd_env_t e;
  mmp_component_t *c = NULL;
  if (sd_env_open(&e, text) == 0) c = mmp_component_create(e.ctx, kind, group);
  const char *msg = mmp_error_last();
  ok(c == NULL && msg && strstr(msg, want) != NULL, "%s", what);
  diag("  %s", msg ? msg : "(no message)");
  mmp_component_free(c);
  sd_env_close(&e);
}

#endif
