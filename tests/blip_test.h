/* tests/blip_test.h - helpers of the vit, bert and blip tests: run an
 * encoder component built from libconfig text against tests/fixtures/blip. */
#ifndef MMPIPE_TESTS_BLIP_TEST_H
#define MMPIPE_TESTS_BLIP_TEST_H

#include "sd_test.h"

static inline mmp_tensormap_t *bt_load(const char *name) {
  char p[4200];
  snprintf(p, sizeof p, "%s/tests/fixtures/blip/%s", tap_srcdir(), name);
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) < 0) {
    diag("%s: %s", p, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

/* Build the "encoder" group of @fmt (%s = tests/fixtures/blip, up to four
 * times) and run @method on @in. Returns the outputs (empty on failure,
 * with a failed test line); @err (nullable) receives the create/forward
 * error message. (transfer full) */
static inline mmp_tensormap_t *bt_run(const char *fmt, const char *method, const mmp_tensormap_t *in,
                                      const char *what, char *err, size_t errlen) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/blip", tap_srcdir());
  snprintf(text, sizeof text, fmt, fx, fx, fx, fx);
  sd_env_t e;
  mmp_component_t *c = NULL;
  if (sd_env_open(&e, text) == 0) c = mmp_component_create(e.ctx, MMP_KIND_ENCODER, "encoder");
  mmp_tensormap_t *out = mmp_tensormap_new();
  int rc = c ? sd_forward(c, method, in, out) : -1;
  if (err) snprintf(err, errlen, "%s", rc ? mmp_error_last() : "");
  if (what && !ok(rc == 0, "%s: create and run", what)) diag("%s", mmp_error_last());
  mmp_component_free(c);
  sd_env_close(&e);
  return out;
}

/* sd_check() that also prints the measured error (the report's figures). */
static inline void bt_check(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  double r = sd_relerr(got, want);
  if (!ok(r >= 0 && r <= SD_TOL, "%s within %.0e relative (%.2g)", what, SD_TOL, r))
    diag("  relative error %.3g%s", r, r < 0 ? " (missing or shape mismatch)" : "");
}

#endif
