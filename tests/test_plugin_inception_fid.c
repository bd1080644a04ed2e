/* tests/test_plugin_inception_fid.c - the FID Inception encoder against pytorch-fid (tests/gen_fid.py): features of
 * both protocols, block-by-block outputs, weight errors. */
#include "sd_test.h"

#include "plugins/processors/imagecommon.h"

static char fx[4096];

static mmp_component_t *make(sd_env_t *e, const char *extra, const char *weights) {
  char text[9000];
  snprintf(text, sizeof text, "encoder = { name = \"inception_fid\"; weights = \"%s\"; %s };", weights, extra);
  if (sd_env_open(e, text) < 0) return NULL;
  return mmp_component_create(e->ctx, MMP_KIND_ENCODER, "encoder");
}

static mmp_image_t load_png(const char *path) {
  mmp_image_t im = {0};
  FILE *f = fopen(path, "rb");
  if (!f) return im;
  uint8_t buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  mmp_image_png_decode(buf, n, false, &im);
  return im;
}

int main(void) {
  snprintf(fx, sizeof fx, "%s/tests/fixtures/fid", tap_srcdir());
  char p[4200], wpath[4200];
  snprintf(p, sizeof p, "%s/fid.safetensors", fx);
  snprintf(wpath, sizeof wpath, "%s/inception_w16.safetensors", fx);
  mmp_tensormap_t *io = mmp_tensormap_new();
  if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), false, io) < 0) skip_all("fixtures missing");

  sd_env_t e;
  mmp_component_t *c = make(&e, "blocks = [0, 1, 2, 3];", wpath);
  if (!ok(c != NULL, "create with blocks 0..3")) diag("%s", mmp_error_last());

  /* standard protocol: the PNG files at full resolution, ToTensor */
  int N = 4, H = 0, W = 0;
  float *pix = NULL;
  for (int i = 0; i < N; i++) {
    snprintf(p, sizeof p, "%s/images/%03d.png", fx, i);
    mmp_image_t im = load_png(p);
    if (!im.data) break;
    if (!pix) {
      H = im.h, W = im.w;
      pix = malloc((size_t)N * 3 * H * W * sizeof *pix);
    }
    mmp_image_to_float(&im, NULL, NULL, pix + (size_t)i * 3 * H * W);
    mmp_image_clear(&im);
  }
  int64_t s4[4] = {N, 3, H, W};
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 4, s4, pix));
  int rc = c ? sd_forward(c, NULL, in, out) : -1;
  if (!ok(rc == 0, "standard: encode %d images of %dx%d", N, W, H)) diag("%s", mmp_error_last());
  sd_check(mmp_tensormap_get(out, "features"), mmp_tensormap_get(io, "standard/features"), "standard: features");
  diag("  standard features: relative error %.3g",
       sd_relerr(mmp_tensormap_get(out, "features"), mmp_tensormap_get(io, "standard/features")));
  for (int b = 0; b < 4; b++) {
    char name[64];
    snprintf(name, sizeof name, "block%d", b);
    mmp_tensor_t *got = mmp_tensormap_get(out, name), *first = NULL, *sl = NULL;
    if (got) {
      mmp_tensor_t *one = mmp_slice(got, 0, 0, 1, 1);
      first = mmp_squeeze(one, 0);
      mmp_tensor_unref(one);
      if (b == 0) sl = mmp_slice(first, 0, 0, 2, 1);
      else sl = mmp_tensor_ref(first);
    }
    snprintf(name, sizeof name, "standard/block%d", b);
    mmp_tensor_t *want = mmp_tensormap_get(io, name);
    char what[64];
    snprintf(what, sizeof what, "standard: block %d of image 0", b);
    sd_check(sl, want, what);
    diag("  %s: relative error %.3g", what, sd_relerr(sl, want));
    mmp_tensor_unref(first);
    mmp_tensor_unref(sl);
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  free(pix);
  mmp_component_free(c);
  sd_env_close(&e);

  /* arldm protocol: PIL Resize([64, 64]) -> ToTensor -> Normalize(0.5) -> (x+1)/2 */
  c = make(&e, "", wpath);
  int NF = 5;
  pix = malloc((size_t)NF * 3 * 64 * 64 * sizeof *pix);
  static const float half[3] = {0.5f, 0.5f, 0.5f};
  bool frames_ok = true;
  for (int i = 0; i < NF; i++) {
    char name[64];
    snprintf(name, sizeof name, "arldm/frame%d", i);
    mmp_tensor_t *t = mmp_tensormap_get(io, name);
    if (!t || t->ndim != 3) {
      frames_ok = false;
      break;
    }
    mmp_image_t im = {0}, sm = {0};
    mmp_image_alloc(&im, (int)t->shape[1], (int)t->shape[0], 3);
    mmp_tensor_to_host(t, im.data, (size_t)(im.w * im.h * 3));
    mmp_image_resize(&im, 64, 64, MMP_RESAMPLE_BILINEAR, &sm);
    float *dst = pix + (size_t)i * 3 * 64 * 64;
    mmp_image_to_float(&sm, half, half, dst);
    for (int k = 0; k < 3 * 64 * 64; k++) dst[k] = (dst[k] + 1.0f) / 2.0f;
    mmp_image_clear(&im);
    mmp_image_clear(&sm);
  }
  ok(frames_ok, "arldm: %d frames of assorted sizes", NF);
  int64_t a4[4] = {NF, 3, 64, 64};
  in = mmp_tensormap_new();
  out = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 4, a4, pix));
  rc = c ? sd_forward(c, NULL, in, out) : -1;
  if (!ok(rc == 0, "arldm: encode (default block 3)")) diag("%s", mmp_error_last());
  sd_check(mmp_tensormap_get(out, "features"), mmp_tensormap_get(io, "arldm/features"), "arldm: features");
  diag("  arldm features: relative error %.3g",
       sd_relerr(mmp_tensormap_get(out, "features"), mmp_tensormap_get(io, "arldm/features")));
  ok(mmp_tensormap_get(out, "block3") != NULL && mmp_tensormap_get(out, "block2") == NULL,
     "only the requested block is returned");
  /* a wrong input */
  mmp_tensormap_t *bad = mmp_tensormap_new(), *o2 = mmp_tensormap_new();
  int64_t b3[3] = {3, 64, 64};
  mmp_tensormap_set(bad, "sample", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_F32, 3, b3));
  rc = c ? sd_forward(c, NULL, bad, o2) : 0;
  ok(rc == MMP_ESHAPE && strstr(mmp_error_last(), "[N, 3, H, W]"), "a 3-d sample is MMP_ESHAPE: %s", mmp_error_last());
  mmp_tensormap_free(bad);
  mmp_tensormap_free(o2);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  free(pix);
  mmp_component_free(c);
  sd_env_close(&e);

  /* weights with one tensor missing: the error names it */
  {
    mmp_tensormap_t *w = mmp_tensormap_new(), *w2 = mmp_tensormap_new();
    mmp_safetensors_load_map(wpath, mmp_backend_get("cpu"), false, w);
    for (size_t i = 0; i < mmp_tensormap_size(w); i++)
      if (strcmp(mmp_tensormap_name(w, i), "Mixed_6c.branch7x7dbl_3.bn.running_var") != 0)
        mmp_tensormap_set(w2, mmp_tensormap_name(w, i), mmp_tensor_ref(mmp_tensormap_at(w, i)));
    const char *tmp = getenv("TMPDIR");
    char miss[4200];
    snprintf(miss, sizeof miss, "%s/fid_missing_%d.safetensors", tmp ? tmp : "/tmp", (int)getpid());
    mmp_safetensors_save_map(miss, w2, NULL);
    c = make(&e, "", miss);
    ok(c == NULL && strstr(mmp_error_last(), "Mixed_6c.branch7x7dbl_3.bn.running_var") != NULL,
       "a missing weight is named: %s", mmp_error_last());
    mmp_component_free(c);
    sd_env_close(&e);
    unlink(miss);
    mmp_tensormap_free(w);
    mmp_tensormap_free(w2);
  }
  c = make(&e, "blocks = [4];", wpath);
  ok(c == NULL && strstr(mmp_error_last(), "blocks") != NULL, "blocks = [4] is a config error: %s", mmp_error_last());
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(io);
  return done_testing();
}
