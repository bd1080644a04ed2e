/* tests/test_plugin_image_resize.c - processor image_resize against torchvision/PIL (fixtures of tests/gen_datasets.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tap.h"

/* The uint8 resampling is PIL's own fixed-point arithmetic and the float
 * steps are torchvision's float32 operations in the same order, so outputs
 * agree to 1e-6 (the issue allows 1/255). */
#define TOL 1e-6

static mmp_safetensors_t *st;

static mmp_registry_t *new_registry(void) {
  mmp_registry_t *reg = mmp_registry_new();
  const char *b = getenv("MMP_TEST_BUILDDIR");
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/plugins/processors/.libs", b ? b : ".");
  mmp_registry_add_dir(reg, dir);
  return reg;
}

static double max_diff(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  mmp_tensor_t *x = mmp_convert(a, MMP_F32), *y = mmp_convert(b, MMP_F32);
  mmp_tensor_t *xc = mmp_contiguous(x), *yc = mmp_contiguous(y);
  double worst = 0;
  const float *p = mmp_tensor_data(xc), *q = mmp_tensor_data(yc);
  for (int64_t i = 0; i < mmp_tensor_numel(xc); i++) {
    double d = fabs((double)p[i] - q[i]);
    if (d > worst) worst = d;
  }
  mmp_tensor_unref(x);
  mmp_tensor_unref(y);
  mmp_tensor_unref(xc);
  mmp_tensor_unref(yc);
  return worst;
}

/* Run the processor configured by @keys on image @img; compare with @want
 * (its shape without the batch dim; HWC u8 when @hwc_u8). */
static void run_case(const char *img, const char *keys, const char *want, bool batch) {
  char text[2048], key[128];
  snprintf(text, sizeof text, "processor = { name = \"image_resize\"; %s };", keys);
  mmp_registry_t *reg = new_registry();
  mmp_config_t *cfg = mmp_config_parse(text, "test.cfg");
  mmp_context_t *ctx = mmp_context_new(reg, cfg);
  mmp_component_t *c = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "processor");
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  snprintf(key, sizeof key, "%s/input", img);
  mmp_tensor_t *x = mmp_safetensors_get(st, key, mmp_backend_get("cpu"), MMP_DTYPE_COUNT);
  snprintf(key, sizeof key, "%s/%s", img, want);
  mmp_tensor_t *w = mmp_safetensors_get(st, key, mmp_backend_get("cpu"), MMP_DTYPE_COUNT);
  if (w && w->dtype == MMP_U8) { /* HWC expectation -> CHW */
    int perm[3] = {2, 0, 1};
    mmp_tensor_t *p = mmp_permute(w, perm);
    mmp_tensor_unref(w);
    w = p;
  }
  if (!ok(c && x && w, "%s %s: setup", img, want)) {
    diag("%s", mmp_error_last());
    goto out;
  }
  if (batch) {
    /* two copies as [2, H, W, 3] */
    mmp_tensor_t *u = mmp_unsqueeze(x, 0);
    mmp_tensor_t *pair[2] = {u, u};
    mmp_tensor_t *b = mmp_concat(pair, 2, 0);
    mmp_tensor_unref(u);
    mmp_tensormap_set(in, "images", b);
  } else {
    mmp_tensormap_set(in, "images", mmp_tensor_ref(x));
  }
  const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)c->plugin;
  int rc = ops->forward(c->self, NULL, in, out);
  mmp_tensor_t *y = mmp_tensormap_get(out, "images");
  if (!ok(rc == 0 && y, "%s %s: forward", img, want)) {
    diag("%s", mmp_error_last());
    goto out;
  }
  int n = batch ? 2 : 1;
  bool shape = y->ndim == 4 && y->shape[0] == n && y->shape[1] == w->shape[0] &&
               y->shape[2] == w->shape[1] && y->shape[3] == w->shape[2];
  char d[64];
  ok(shape, "%s %s: shape %s", img, want, mmp_tensor_describe(y, d, sizeof d));
  for (int i = 0; shape && i < n; i++) {
    mmp_tensor_t *yi = mmp_slice(y, 0, i, i + 1, 1);
    mmp_tensor_t *ys = mmp_squeeze(yi, 0);
    double dd = max_diff(ys, w);
    if (!ok(dd <= TOL, "%s %s: item %d equals torchvision", img, want, i)) diag("max |diff| %g", dd);
    mmp_tensor_unref(yi);
    mmp_tensor_unref(ys);
  }
out:
  mmp_tensor_unref(x);
  mmp_tensor_unref(w);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
}

static void bad_config(const char *keys, const char *sub) {
  char text[1024];
  snprintf(text, sizeof text, "processor = { name = \"image_resize\"; %s };", keys);
  mmp_registry_t *reg = new_registry();
  mmp_config_t *cfg = mmp_config_parse(text, "bad.cfg");
  mmp_context_t *ctx = mmp_context_new(reg, cfg);
  mmp_component_t *c = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "processor");
  ok(c == NULL, "rejects: %s", keys);
  like(mmp_error_last(), sub, "message: %s", sub);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
}

int main(void) {
  {
    mmp_registry_t *reg = new_registry();
    if (!mmp_registry_find(reg, MMP_KIND_PROCESSOR, "image_resize"))
      skip_all("image_resize not built (needs libpng)");
    mmp_registry_free(reg);
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/tests/fixtures/datasets/expected_image_resize.safetensors", tap_srcdir());
  st = mmp_safetensors_open(path);
  if (!ok(st != NULL, "fixture opens")) {
    diag("%s", mmp_error_last());
    return done_testing();
  }
  static const char *const imgs[] = {"noise", "rings"};
  for (int i = 0; i < 2; i++) {
    run_case(imgs[i], "size = [24, 32];", "bilinear_32x24_unit", false);
    run_case(imgs[i], "size = 40; interpolation = \"bicubic\"; center_crop = 40; "
                      "mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711];",
             "bicubic_short40_center_blip", true);
    run_case(imgs[i], "size = [56, 64]; to_float = \"signed\";", "bilinear_64x56_signed", true);
    run_case(imgs[i], "center_crop = 50; to_float = \"none\";", "center_crop_50_u8", false);
  }
  bad_config("interpolation = \"nearest\";", "interpolation");
  bad_config("to_float = \"half\";", "to_float");
  bad_config("size = [1, 2, 3];", "size");
  bad_config("center_crop = 8; random_crop = 8;", "random_crop");
  bad_config("mean = [0.5, 0.5];  std = [0.5, 0.5];", "mean");
  mmp_safetensors_close(st);
  return done_testing();
}
