/* tests/test_plugin_png_encode.c - PNG writing (libimagecommon): the fast run-length encoder read back by libpng and zlib. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <mmpipe/error.h>

#include "plugins/processors/deflaterle.h"
#include "plugins/processors/imagecommon.h"
#include "tap.h"

static uint32_t rng = 12345;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}

enum kind { NOISE, PHOTO, FLAT, RUNS, STRIPES };
static const char *const KIND[] = {"noise", "photo-like", "flat", "runs of 1-300", "stripes"};

static void fill(mmp_image_t *im, enum kind k) {
  size_t n = (size_t)im->w * im->h * 3;
  for (size_t i = 0; i < n;) {
    size_t x = (i / 3) % (size_t)im->w, y = i / 3 / (size_t)im->w;
    switch (k) {
    case NOISE: im->data[i++] = (uint8_t)next(); break;
    case PHOTO: im->data[i] = (uint8_t)(x * (i % 3 + 1) + y + next() % 30); i++; break;
    case FLAT: im->data[i++] = 77; break;
    case RUNS: {
      size_t run = 1 + next() % 300;
      uint8_t v = (uint8_t)(next() % 4);
      for (; run > 0 && i < n; run--) im->data[i++] = v;
      break;
    }
    case STRIPES: im->data[i] = (uint8_t)((x / (1 + y % 4)) % 2 ? 200 : 10); i++; break;
    }
  }
}

/* The zlib stream of a PNG written by the fast path: IHDR, one IDAT, IEND. */
static int idat_rows_sub(const uint8_t *png, size_t n, int w, int h) {
  if (n < 33 + 12 || memcmp(png + 37, "IDAT", 4) != 0) return 0;
  uLong zn = (uLong)png[33] << 24 | (uLong)png[34] << 16 | (uLong)png[35] << 8 | png[36];
  uLongf raw = (uLongf)h * (uLongf)(3 * w + 1);
  uint8_t *f = malloc(raw + 1);
  uLongf got = raw + 1;
  int good = f && uncompress(f, &got, png + 41, zn) == Z_OK && got == raw;
  for (int y = 0; good && y < h; y++) good = f[(size_t)y * (3 * (size_t)w + 1)] == 1;
  free(f);
  return good;
}

static void check(int w, int h, enum kind k, bool swap_rb) {
  mmp_image_t im = {0}, back = {0}, ref = {0};
  if (mmp_image_alloc(&im, w, h, 3) < 0) {
    ok(0, "alloc %dx%d", w, h);
    return;
  }
  fill(&im, k);
  uint8_t *fast = NULL, *slow = NULL;
  size_t nfast = 0, nslow = 0;
  int rc = mmp_image_png_encode(&im, swap_rb, -1, &fast, &nfast);
  int rc2 = mmp_image_png_encode(&im, swap_rb, 1, &slow, &nslow); /* libpng + zlib, OpenCV's settings */
  ok(rc == 0 && rc2 == 0, "%dx%d %s%s: encoded (%zu bytes; libpng and zlib: %zu)", w, h, KIND[k],
     swap_rb ? " as BGR" : "", nfast, nslow);
  ok(rc == 0 && mmp_image_png_decode(fast, nfast, swap_rb, &back) == 0 && back.w == w && back.h == h &&
         memcmp(back.data, im.data, (size_t)w * h * 3) == 0,
     "  libpng decodes the same pixels");
  ok(rc2 == 0 && mmp_image_png_decode(slow, nslow, swap_rb, &ref) == 0 && memcmp(ref.data, im.data, (size_t)w * h * 3) == 0,
     "  and those of the libpng path");
  ok(rc == 0 && idat_rows_sub(fast, nfast, w, h), "  one zlib stream, every row Sub-filtered as OpenCV's");
  ok(rc == 0 && rc2 == 0 && nfast <= nslow + nslow / 20 + 64, "  compressed about as well as zlib's Z_RLE (%zu vs %zu)",
     nfast, nslow);
  free(fast);
  free(slow);
  mmp_image_clear(&im);
  mmp_image_clear(&back);
  mmp_image_clear(&ref);
}

int main(void) {
  /* bare streams: empty, one byte, runs across the 64 KiB blocks */
  size_t sizes[] = {0, 1, 2, 3, 65535, 65536, 200000};
  for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
    size_t n = sizes[s], cap = deflate_rle_bound(n);
    uint8_t *in = malloc(n + 1), *z = malloc(cap), *back = malloc(n + 1);
    for (size_t i = 0; i < n; i++) in[i] = (uint8_t)(i % 1000 < 500 ? 9 : next() % 3);
    size_t zn = deflate_rle_zlib(in, n, z, cap);
    uLongf got = (uLongf)n + 1;
    ok(zn > 0 && uncompress(back, &got, z, (uLong)zn) == Z_OK && got == n && memcmp(in, back, n) == 0,
       "deflate_rle_zlib of %zu bytes inflates back (%zu bytes)", n, zn);
    ok(deflate_rle_zlib(in, n, z, cap - 1) == 0, "  a buffer below the bound is refused");
    free(in);
    free(z);
    free(back);
  }
  /* the run finder's 16-byte steps and the bit writer's flushes: every
   * length to 40, runs starting at each offset of a step, at the end of the
   * input (3 left, 2 left), and runs that a block boundary (16384 symbols)
   * cuts, in blocks stored (noise) and coded */
  int good = 1, tried = 0;
  for (size_t n = 1; n <= 40; n++)
    for (size_t at = 0; at < n; at++)
      for (int len = 1; len <= 5 && at + (size_t)len <= n; len += 2) {
        uint8_t in[40], z[256], back[41];
        for (size_t i = 0; i < n; i++) in[i] = (uint8_t)(7 + i * 13);
        memset(in + at, in[at], (size_t)len); /* len equal bytes: a match from at + 1 when len >= 4 */
        size_t zn = deflate_rle_zlib(in, n, z, deflate_rle_bound(n));
        uLongf got = sizeof back;
        good &= zn > 0 && uncompress(back, &got, z, (uLong)zn) == Z_OK && got == n && memcmp(in, back, n) == 0;
        tried++;
      }
  ok(good, "deflate_rle_zlib: %d short inputs with runs at every offset inflate back", tried);
  {
    /* 16383 literals then runs: the block boundary falls on a run; then
     * noise (a stored block) and a run of 1000 across the next boundary */
    size_t n = 16383 + 3 * 300 + 70000 + 1000 + 5, cap = deflate_rle_bound(n), i = 0;
    uint8_t *in = malloc(n), *z = malloc(cap), *back = malloc(n + 1);
    for (; i < 16383; i++) in[i] = (uint8_t)(i % 251 + (i / 251) % 2);
    for (int r = 0; r < 300; r++, i += 3) memset(in + i, r % 5, 3); /* runs of 2-3 after a literal */
    for (size_t k = 0; k < 70000; k++, i++) in[i] = (uint8_t)next();
    memset(in + i, 42, 1000);
    i += 1000;
    for (; i < n; i++) in[i] = 42;
    size_t zn = deflate_rle_zlib(in, n, z, cap);
    uLongf got = (uLongf)n + 1;
    ok(zn > 0 && uncompress(back, &got, z, (uLong)zn) == Z_OK && got == n && memcmp(in, back, n) == 0,
       "deflate_rle_zlib: runs on block boundaries, stored and coded blocks, a long run at the end (%zu -> %zu bytes)", n, zn);
    free(in);
    free(z);
    free(back);
  }
  /* the row filter's 16-byte steps and 8-pixel swaps: every width to 20 */
  for (int w = 1; w <= 20; w++) {
    check(w, 2, PHOTO, w % 2 == 0);
    check(w, 3, NOISE, w % 2 == 1);
  }
  check(1, 1, NOISE, true);
  check(3, 2, NOISE, false);
  check(128, 640, NOISE, true);     /* a FlintstonesSV strip */
  check(500, 375, PHOTO, true);     /* a VIST photo */
  check(700, 200, FLAT, false);     /* runs of 258 over several blocks */
  check(257, 129, RUNS, true);
  check(97, 61, STRIPES, false);
  return done_testing();
}
