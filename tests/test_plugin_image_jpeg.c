/* tests/test_plugin_image_jpeg.c - JPEG decoding (libimagecommon) against PIL's Image.open(f).convert('RGB') (tests/gen_fid_jpeg.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "plugins/processors/imagecommon.h"
#include "tap.h"

static uint8_t *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = len > 0 ? malloc((size_t)len) : NULL;
  if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *n = (size_t)len;
  return b;
}

static const char *const kinds[] = {"baseline420_q90",    "baseline422_q75", "baseline444_q95",
                                    "progressive_q80",    "progressive444_q60", "optimized_q20",
                                    "grey_q85",           "grey_progressive", "tiny_1x1"};

int main(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/fixtures/fid/jpeg.safetensors", tap_srcdir());
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) skip_all("fixtures missing");
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
    char key[128];
    snprintf(path, sizeof path, "%s/tests/fixtures/fid/jpeg/%s.jpg", tap_srcdir(), kinds[k]);
    snprintf(key, sizeof key, "decoded/%s", kinds[k]);
    size_t n = 0;
    uint8_t *buf = slurp(path, &n);
    mmp_tensor_t *want = mmp_safetensors_get(st, key, cpu, MMP_DTYPE_COUNT);
    if (!ok(buf && want && want->ndim == 3, "%s: fixture", kinds[k])) continue;
    mmp_image_t im = {0};
    int rc = mmp_image_jpeg_decode(buf, n, &im);
    if (!ok(rc == 0 && im.h == want->shape[0] && im.w == want->shape[1] && im.c == 3, "%s: decoded %dx%d", kinds[k],
            im.w, im.h))
      diag("%s", mmp_error_last());
    else {
      const uint8_t *w = mmp_tensor_data(want);
      size_t m = (size_t)im.w * im.h * 3, diff = 0;
      for (size_t i = 0; i < m; i++) diff += im.data[i] != w[i];
      ok(diff == 0, "%s: every byte equals PIL's (%zu of %zu differ)", kinds[k], diff, m);
      /* through the signature dispatch too */
      mmp_image_t im2 = {0};
      ok(mmp_image_decode(buf, n, &im2) == 0 && memcmp(im2.data, im.data, m) == 0, "%s: mmp_image_decode", kinds[k]);
      mmp_image_clear(&im2);
      /* cut inside the scan data: an error, as PIL's "image file is truncated" */
      mmp_image_t im3 = {0};
      rc = mmp_image_jpeg_decode(buf, n / 2, &im3);
      ok(rc == MMP_EDATA && im3.data == NULL, "%s: cut in half: %s", kinds[k], mmp_error_last());
    }
    mmp_image_clear(&im);
    mmp_tensor_unref(want);
    free(buf);
  }
  mmp_safetensors_close(st);

  /* malformed inputs */
  mmp_image_t im = {0};
  static const uint8_t notjpeg[] = {0x89, 'P', 'N', 'G', 0, 0, 0, 0};
  ok(mmp_image_jpeg_decode(notjpeg, sizeof notjpeg, &im) == MMP_EDATA, "a PNG signature is not a JPEG: %s",
     mmp_error_last());
  static const uint8_t soi_only[] = {0xFF, 0xD8, 0xFF, 0xD9};
  ok(mmp_image_jpeg_decode(soi_only, sizeof soi_only, &im) == MMP_EDATA, "SOI then EOI: %s", mmp_error_last());
  /* a header claiming 30000 x 30000 pixels in a few hundred bytes */
  snprintf(path, sizeof path, "%s/tests/fixtures/fid/jpeg/baseline420_q90.jpg", tap_srcdir());
  size_t n = 0;
  uint8_t *buf = slurp(path, &n);
  size_t sof = 0;
  for (size_t i = 2; buf && i + 9 < n; i++)
    if (buf[i] == 0xFF && buf[i + 1] == 0xC0) {
      sof = i;
      break;
    }
  if (ok(sof > 0, "SOF0 marker found")) {
    buf[sof + 5] = 30000 >> 8;
    buf[sof + 6] = 30000 & 255;
    buf[sof + 7] = 30000 >> 8;
    buf[sof + 8] = 30000 & 255;
    int rc = mmp_image_jpeg_decode(buf, n, &im);
    ok(rc == MMP_EDATA && strstr(mmp_error_last(), "cannot fit") != NULL, "a huge header in a small file: %s",
       mmp_error_last());
  }
  free(buf);
  return done_testing();
}
