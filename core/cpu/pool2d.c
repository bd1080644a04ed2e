/* core/cpu/pool2d.c - separable average and max pooling over [H, W] planes. */
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/cpu/dispatch.h"
#include "core/cpu/kernels.h"

/* A k x k window is reduced in two passes: every input row over the
 * window's columns (rows[h][ow]), then every output pixel over the window's
 * rows. Each input element is read k times instead of k*k, the inner loops
 * run over contiguous output columns and vectorise, and the padding is
 * settled per row and per column instead of per element. Max is exact (NaN
 * propagates as in torch); the average sums each window row first, so its
 * rounding differs from a row-major running sum by at most fp32 rounding. */

#define BODY static inline MMP_ALWAYS_INLINE

/* NaN-propagating max: once a NaN is taken it stays */
BODY float pmax(float a, float v) {
  float m = v > a ? v : a; /* two selects (no branch) so the blocks vectorise */
  return v != v ? v : m;
}

/* rows of one input row @xr over the window columns, output columns
 * [lo, hi) whose windows lie inside the row; @s is a literal at the call
 * sites so the gathers of stride 1 and 2 are vectorised */
BODY void row_inner_body(const float *xr, float *hr, int64_t lo, int64_t hi, int k, int s, int p, bool is_max) {
  int64_t ow = lo;
  for (; ow + 16 <= hi; ow += 16) {
    const float *b = xr + ow * s - p;
    float acc[16];
    for (int t = 0; t < 16; ++t) acc[t] = b[t * s];
    for (int j = 1; j < k; ++j)
      if (is_max)
        for (int t = 0; t < 16; ++t) acc[t] = pmax(acc[t], b[t * s + j]);
      else
        for (int t = 0; t < 16; ++t) acc[t] += b[t * s + j];
    for (int t = 0; t < 16; ++t) hr[ow + t] = acc[t];
  }
  for (; ow < hi; ++ow) {
    const float *b = xr + ow * s - p;
    float a = b[0];
    for (int j = 1; j < k; ++j) a = is_max ? pmax(a, b[j]) : a + b[j];
    hr[ow] = a;
  }
}

/* Strided windows: every window start of stride 1 over the span the
 * strided ones cover (vectorised), then every s-th of them into @hr
 * (gathers of stride 2 do not vectorise). @tmp holds W floats. */
BODY void row_inner_s_body(const float *xr, float *hr, int64_t lo, int64_t hi, int k, int s, int p, bool is_max,
                           float *tmp) {
  if (lo >= hi) return;
  if (s == 1) {
    if (k == 3)
      row_inner_body(xr, hr, lo, hi, 3, 1, p, is_max);
    else
      row_inner_body(xr, hr, lo, hi, k, 1, p, is_max);
    return;
  }
  int64_t base = lo * s - p, n = (hi - 1 - lo) * s + 1;
  if (k == 3)
    row_inner_body(xr + base, tmp, 0, n, 3, 1, 0, is_max);
  else
    row_inner_body(xr + base, tmp, 0, n, k, 1, 0, is_max);
  for (int64_t ow = lo; ow < hi; ++ow) hr[ow] = tmp[(ow - lo) * s];
}
MMP_VARIANTS_VOID(row_inner_s,
                  (const float *xr, float *hr, int64_t lo, int64_t hi, int k, int s, int p, bool is_max, float *tmp),
                  (xr, hr, lo, hi, k, s, p, is_max, tmp))

/* y[ow] = reduce over @nr rows r of hr[r][ow] (rows @OW apart), then the
 * average's divisor: k*k, or the in-image count nr * cols[ow] */
BODY void col_pass_body(const float *hr, int nr, int64_t OW, float *y, const float *cols, float kk, bool is_max,
                        bool exclude_pad) {
  int64_t ow = 0;
  for (; ow + 16 <= OW; ow += 16) {
    float acc[16];
    for (int t = 0; t < 16; ++t) acc[t] = hr[ow + t];
    for (int r = 1; r < nr; ++r)
      if (is_max)
        for (int t = 0; t < 16; ++t) acc[t] = pmax(acc[t], hr[r * OW + ow + t]);
      else
        for (int t = 0; t < 16; ++t) acc[t] += hr[r * OW + ow + t];
    if (is_max)
      for (int t = 0; t < 16; ++t) y[ow + t] = acc[t];
    else if (exclude_pad)
      for (int t = 0; t < 16; ++t) y[ow + t] = acc[t] / ((float)nr * cols[ow + t]);
    else
      for (int t = 0; t < 16; ++t) y[ow + t] = acc[t] / kk;
  }
  for (; ow < OW; ++ow) {
    float a = hr[ow];
    for (int r = 1; r < nr; ++r) a = is_max ? pmax(a, hr[r * OW + ow]) : a + hr[r * OW + ow];
    y[ow] = is_max ? a : a / (exclude_pad ? (float)nr * cols[ow] : kk);
  }
}
MMP_VARIANTS_VOID(col_pass, (const float *hr, int nr, int64_t OW, float *y, const float *cols, float kk, bool is_max,
                             bool exclude_pad),
                  (hr, nr, OW, y, cols, kk, is_max, exclude_pad))

int64_t mmp_cpu_pool2d_scratch(int64_t H, int64_t W, int64_t OW) { return H * OW + OW + W; }

void mmp_cpu_pool2d(const float *x, float *y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int k,
                    int s, int p, bool is_max, bool exclude_pad, float *scratch) {
  float *rows = scratch, *cols = scratch + H * OW, *tmp = cols + OW;
  /* output columns whose window lies inside the row: [lo, hi) */
  int64_t lo = (p + s - 1) / s, hi = W - k + p >= 0 ? (W - k + p) / s + 1 : 0;
  if (hi > OW) hi = OW;
  if (lo > hi) lo = hi;
  for (int64_t ow = 0; ow < OW; ++ow) {
    int64_t w0 = ow * s - p, w1 = w0 + k;
    cols[ow] = (float)((w1 < W ? w1 : W) - (w0 > 0 ? w0 : 0));
  }
  for (int64_t pl = 0; pl < planes; ++pl) {
    const float *xp = x + pl * H * W;
    float *yp = y + pl * OH * OW;
    for (int64_t h = 0; h < H; ++h) {
      const float *xr = xp + h * W;
      float *hr = rows + h * OW;
      for (int64_t ow = 0; ow < OW; ++ow) {
        if (ow == lo) {
          row_inner_s(xr, hr, lo, hi, k, s, p, is_max, tmp);
          ow = hi;
          if (ow >= OW) break;
        }
        int64_t w0 = ow * s - p, w1 = w0 + k;
        if (w0 < 0) w0 = 0;
        if (w1 > W) w1 = W;
        float a = xr[w0];
        for (int64_t w = w0 + 1; w < w1; ++w) a = is_max ? pmax(a, xr[w]) : a + xr[w];
        hr[ow] = a;
      }
    }
    for (int64_t oh = 0; oh < OH; ++oh) {
      int64_t h0 = oh * s - p, h1 = h0 + k;
      if (h0 < 0) h0 = 0;
      if (h1 > H) h1 = H;
      col_pass(rows + h0 * OW, (int)(h1 - h0), OW, yp + oh * OW, cols, (float)k * (float)k, is_max, exclude_pad);
    }
  }
}
