/* tests/test_core_kernels.c - CPU kernels against naive double-precision references. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include "core/cpu/gemm.h"
#include "core/cpu/kernels.h"
#include "mmpipe/error.h"
#include "mmpipe/tensor.h"
#include "tap.h"

/* Every kernel runs on every code path this machine has (the AVX-512
 * kernels when the CPU has them, the portable C kernels always, and
 * OpenBLAS for sgemm when built with it) and is compared element by element
 * with a double-precision loop written here. Tolerances (fp32 inputs in
 * [-1, 1]):
 *   sgemm/conv2d/attention  |err| <= 1e-5 * sum_k |a_k b_k| + 1e-6 * |beta c|
 *                           (forward error bound of a K-term fp32 dot product,
 *                           with room for blocked summation order)
 *   norms, softmax          |err| <= 1e-5 * max(1, |ref|)
 *   activations             |err| <= 2e-6 * |ref| + 1e-7 (see the GELU note)
 */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
/* 64-byte aligned, as tensors from the backend pool are (kernels have
 * aligned fast paths, e.g. attention's streamed output panels) */
static float *rand_buf(int64_t n) {
  size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
  float *p = aligned_alloc(64, bytes);
  for (int64_t i = 0; i < n; ++i) p[i] = frand();
  return p;
}

static const char *path_name = "";

/* ------------------------------------------------------------- sgemm */

static int check_sgemm(int64_t batch, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                       float alpha, float beta, int64_t pad, bool bcast_a, bool bcast_b) {
  int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  int64_t rows_a = ta ? K : M, rows_b = tb ? N : K;
  int64_t sa = bcast_a ? 0 : rows_a * lda, sb = bcast_b ? 0 : rows_b * ldb, sc = M * ldc;
  float *A = rand_buf((bcast_a ? 1 : batch) * rows_a * lda);
  float *B = rand_buf((bcast_b ? 1 : batch) * rows_b * ldb);
  float *C = rand_buf(batch * sc);
  float *C0 = malloc((size_t)(batch * sc > 0 ? batch * sc : 1) * sizeof(float));
  memcpy(C0, C, (size_t)(batch * sc) * sizeof(float));
  if (beta == 0.0f) /* beta = 0 must not read C: plant NaNs */
    for (int64_t i = 0; i < batch * sc; ++i) C[i] = NAN;
  int rc = mmp_cpu_sgemm(batch, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc);
  int bad = rc != 0;
  double worst = 0.0;
  for (int64_t b = 0; b < batch && !bad; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0.0, mag = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          double a = ta ? A[b * sa + k * lda + i] : A[b * sa + i * lda + k];
          double bb = tb ? B[b * sb + j * ldb + k] : B[b * sb + k * ldb + j];
          acc += a * bb;
          mag += fabs(a * bb);
        }
        double c0 = C0[b * sc + i * ldc + j];
        double ref = alpha * acc + (beta != 0.0f ? beta * c0 : 0.0);
        double tol = 1e-5 * fabs(alpha) * mag + 1e-6 * fabs(beta * c0) + 1e-30;
        double err = fabs(C[b * sc + i * ldc + j] - ref);
        if (!(err <= tol)) {
          if (!bad)
            diag("  [%lld,%lld,%lld] got %.9g want %.9g", (long long)b, (long long)i,
                 (long long)j, C[b * sc + i * ldc + j], ref);
          bad = 1;
        }
        if (err / (tol > 0 ? tol : 1) > worst) worst = err / tol;
      }
  /* padding columns of C are left alone */
  for (int64_t b = 0; b < batch && !bad && beta != 0.0f; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = N; j < ldc; ++j)
        if (C[b * sc + i * ldc + j] != C0[b * sc + i * ldc + j]) bad = 1;
  ok(!bad, "%s sgemm batch %lld %c%c M %lld N %lld K %lld alpha %g beta %g pad %lld%s%s", path_name,
     (long long)batch, ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)M, (long long)N, (long long)K,
     alpha, beta, (long long)pad, bcast_a ? " bcastA" : "", bcast_b ? " bcastB" : "");
  free(A);
  free(B);
  free(C);
  free(C0);
  return !bad;
}

static void test_sgemm(void) {
  static const int64_t sizes[][3] = {{1, 1, 1},    {3, 17, 5},    {17, 33, 65},   {65, 3, 17},
                                     {14, 32, 16}, {15, 31, 300}, {200, 70, 257}, {33, 129, 1},
                                     {170, 65, 33}};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s)
    for (int t = 0; t < 4; ++t)
      check_sgemm(1, t & 1, t & 2, sizes[s][0], sizes[s][1], sizes[s][2], 1.0f, 0.0f, 0, false,
                  false);
  check_sgemm(1, false, true, 37, 45, 29, 0.5f, 1.0f, 3, false, false);
  check_sgemm(1, true, false, 37, 45, 29, -1.5f, -0.7f, 5, false, false);
  check_sgemm(1, true, true, 64, 64, 64, 2.0f, 0.25f, 1, false, false);
  check_sgemm(3, false, false, 19, 23, 31, 1.0f, 0.0f, 0, false, false);
  check_sgemm(3, false, true, 19, 23, 31, 1.0f, 1.0f, 2, true, false);
  check_sgemm(4, true, false, 7, 40, 18, 0.75f, 0.0f, 0, false, true);
  check_sgemm(2, false, false, 5, 6, 0, 1.0f, 0.5f, 0, false, false);  /* K = 0: C = beta C */
  check_sgemm(2, false, false, 5, 6, 7, 0.0f, 0.0f, 0, false, false);  /* alpha = 0 */
  check_sgemm(1, false, true, 300, 200, 100, 1.0f, 0.0f, 0, false, false); /* threads */
  /* several K blocks: deep ones (K 1700 over 200 columns -> 3 blocks of 567)
   * and narrow ones (K 600 over 100 columns -> 3 of 200), with beta */
  check_sgemm(1, false, false, 45, 200, 1700, 1.0f, 0.5f, 0, false, false);
  check_sgemm(1, true, true, 30, 100, 600, 1.0f, 1.0f, 0, false, false);
}

/* ------------------------------------------------------------ conv2d */

static void check_conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                       int64_t KW, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                       bool with_bias) {
  int64_t OH = (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1;
  int64_t OW = (W + 2 * pw - dw * (KW - 1) - 1) / sw + 1;
  int64_t Cg = C / groups, Og = O / groups;
  float *x = rand_buf(N * C * H * W), *w = rand_buf(O * Cg * KH * KW);
  float *bias = with_bias ? rand_buf(O) : NULL;
  float *y = rand_buf(N * O * OH * OW);
  int rc = mmp_cpu_conv2d(x, N, C, H, W, w, O, KH, KW, bias, sh, sw, ph, pw, dh, dw, groups, y);
  int bad = rc != 0;
  for (int64_t n = 0; n < N && !bad; ++n)
    for (int64_t o = 0; o < O && !bad; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          int64_t g = o / Og;
          double acc = bias ? bias[o] : 0.0, mag = fabs(acc);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KW; ++kw) {
                int64_t ih = oh * sh - ph + kh * dh, iw = ow * sw - pw + kw * dw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                double p = (double)x[((n * C + g * Cg + c) * H + ih) * W + iw] *
                           w[((o * Cg + c) * KH + kh) * KW + kw];
                acc += p;
                mag += fabs(p);
              }
          double got = y[((n * O + o) * OH + oh) * OW + ow];
          if (!(fabs(got - acc) <= 1e-5 * mag + 1e-30)) {
            diag("  [%lld,%lld,%lld,%lld] got %.9g want %.9g", (long long)n, (long long)o,
                 (long long)oh, (long long)ow, got, acc);
            bad = 1;
            break;
          }
        }
  ok(!bad,
     "%s conv2d N%lld C%lld %lldx%lld O%lld k%lldx%lld s%d,%d p%d,%d d%d,%d g%d%s", path_name,
     (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)KH,
     (long long)KW, sh, sw, ph, pw, dh, dw, groups, with_bias ? " bias" : "");
  free(x);
  free(w);
  free(bias);
  free(y);
}

static void test_conv2d(void) {
  check_conv(2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, true);
  check_conv(1, 4, 8, 8, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, true);
  check_conv(2, 5, 11, 10, 7, 3, 3, 1, 1, 2, 2, 2, 2, 1, false);
  check_conv(1, 6, 9, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1, 3, true);
  check_conv(2, 17, 6, 5, 33, 1, 1, 1, 1, 0, 0, 1, 1, 1, true);  /* pointwise, columns span images */
  check_conv(2, 16, 24, 24, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, true); /* pointwise, per image */
  check_conv(3, 24, 5, 7, 20, 3, 3, 1, 1, 1, 1, 1, 1, 2, true);  /* spanning tiles cross images */
  check_conv(1, 8, 9, 9, 4, 1, 1, 2, 2, 0, 0, 1, 1, 1, true);    /* 1x1 strided */
  check_conv(1, 3, 10, 12, 4, 5, 3, 2, 1, 2, 0, 1, 2, 1, true);  /* asymmetric */
  check_conv(1, 40, 6, 7, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, true);  /* K = 360 > one K block */
  check_conv(2, 8, 33, 17, 16, 3, 3, 1, 1, 1, 1, 1, 1, 4, true); /* many pixel panels */
  check_conv(1, 2, 1, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1, false);  /* 1x1 image */
  check_conv(1, 2, 3, 3, 2, 3, 3, 1, 1, 0, 0, 1, 1, 2, true);   /* one output pixel */
  check_conv(2, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, true); /* threaded */
  /* small images, many output channels: the im2col matrix is built once and
   * shared by the row-block tasks (columns span images, K > one K block) */
  check_conv(2, 40, 8, 8, 130, 3, 3, 1, 1, 1, 1, 1, 1, 1, true);
  check_conv(3, 30, 7, 5, 100, 3, 3, 2, 1, 1, 1, 1, 1, 1, false); /* strided, odd columns */
  /* Inception's 17x17 shapes: 1x7 and 7x1 runs of 17 across images, a 1x1
   * spanning images with K over one K block and a dilation it ignores */
  check_conv(3, 12, 17, 17, 16, 1, 7, 1, 1, 0, 3, 1, 1, 1, true);
  check_conv(3, 12, 17, 17, 16, 7, 1, 1, 1, 3, 0, 1, 1, 1, true);
  check_conv(3, 300, 8, 8, 24, 1, 1, 1, 1, 0, 0, 2, 2, 1, true);
}

/* ------------------------------------------- half-precision operands */

/* Half-precision weights (f16/bf16 storage, converted while packing) give
 * the fp32 result of the converted values: the same tolerance as sgemm,
 * against a reference over the exact values. The values are multiples of
 * 2^-10 (f16) or 2^-7 (bf16) in [-1, 1], so they are exactly representable
 * and encoded here without rounding. */
static float *half_buf(int64_t n, int dt, uint16_t **bits) {
  float *v = rand_buf(n);
  uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
  const float q = dt == MMP_BF16 ? 128.0f : 1024.0f;
  for (int64_t i = 0; i < n; ++i) {
    float f = roundf(v[i] * q) / q;
    uint32_t u;
    memcpy(&u, &f, 4);
    v[i] = f;
    if (dt == MMP_BF16)
      h[i] = (uint16_t)(u >> 16);
    else if (f == 0.0f)
      h[i] = (uint16_t)((u >> 16) & 0x8000u);
    else /* normal in f16: rebias the exponent, keep 10 mantissa bits */
      h[i] = (uint16_t)(((u >> 16) & 0x8000u) | ((((u >> 23) & 0xffu) - 112u) << 10) | ((u >> 13) & 0x3ffu));
  }
  *bits = h;
  return v;
}

/* x rounded to bf16 (nearest even) and back: the bf16 compute dtype's
 * rounding of both operands, for the double references (no denormals or
 * NaN among the test values) */
static double bf16r(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  x = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
  memcpy(&f, &x, 4);
  return f;
}

/* An f16 bit pattern decoded here, independently of the library */
static float f16_ref(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  if (e == 31) return m ? NAN : (h & 0x8000u) ? -INFINITY : INFINITY;
  double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
  return (float)((h & 0x8000u) ? -v : v);
}

static float half_ref(uint16_t h, int dt) {
  if (dt == MMP_F16) return f16_ref(h);
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* same bits, or both NaN */
static bool same_float(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, 4) == 0; }

/* mmp_cpu_half_to_f32 on every path this CPU has: all 65536 patterns of
 * each dtype (zeros, subnormals, infinities, NaNs), then every length 0..40
 * at unaligned starts, with sentinels after the run. */
static void test_half_convert(void) {
  uint16_t *h = malloc((65536 + 64) * sizeof *h);
  float *d = malloc((65536 + 64) * sizeof *d);
  for (int64_t i = 0; i < 65536 + 64; ++i) h[i] = (uint16_t)(i * 40503u);
  for (int path = MMP_CPU_HALF_SCALAR; path <= MMP_CPU_HALF_AVX512; ++path) {
    if (mmp_cpu_half_to_f32(h, MMP_F16, 1, d, path) != path) {
      diag("half_to_f32 path %d: not on this CPU", path);
      continue;
    }
    for (int dt = MMP_F16; dt <= MMP_BF16; ++dt) {
      const char *dn = dt == MMP_BF16 ? "bf16" : "f16";
      uint16_t *all = malloc(65536 * sizeof *all);
      for (int i = 0; i < 65536; ++i) all[i] = (uint16_t)i;
      int64_t bad = 0;
      is_int(mmp_cpu_half_to_f32(all, dt, 65536, d, path), path, "half_to_f32 path %d %s: 65536 values", path, dn);
      for (int i = 0; i < 65536; ++i) bad += !same_float(d[i], half_ref((uint16_t)i, dt));
      ok(bad == 0, "  every value exact (%lld wrong)", (long long)bad);
      free(all);
      bad = 0;
      for (int off = 0; off < 4; ++off)
        for (int64_t n = 0; n <= 40; ++n) {
          for (int64_t i = 0; i < n + 20; ++i) d[i] = -7777.0f;
          mmp_cpu_half_to_f32(h + off, dt, n, d, path);
          for (int64_t i = 0; i < n; ++i) bad += !same_float(d[i], half_ref(h[off + i], dt));
          for (int64_t i = n; i < n + 20; ++i) bad += d[i] != -7777.0f;
        }
      ok(bad == 0, "  runs of 0..40 at unaligned starts, nothing written past them (%lld wrong)", (long long)bad);
    }
  }
  is_int(mmp_cpu_half_to_f32(h, MMP_F32, 1, d, MMP_CPU_HALF_BEST), MMP_EDTYPE, "half_to_f32 rejects f32");
  is_int(mmp_cpu_half_to_f32(h, MMP_F16, 1, d, 7), MMP_EINVAL, "half_to_f32 rejects an unknown path");
  free(h);
  free(d);
}

/* which: 0 = A half, 1 = B half, 2 = both. cdt: the compute dtype; with
 * MMP_BF16 the reference rounds both operands to bf16 and only the fp32
 * summation may differ from it (1e-5 of sum |a b|, as for fp32) */
static void check_half_gemm(int dt, int which, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float beta,
                            int cdt) {
  int64_t lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
  uint16_t *ha = NULL, *hb = NULL;
  float *A = which != 1 ? half_buf(M * K, dt, &ha) : rand_buf(M * K);
  float *B = which != 0 ? half_buf(K * N, dt, &hb) : rand_buf(K * N);
  float *C = rand_buf(M * N), *C0 = malloc((size_t)(M * N > 0 ? M * N : 1) * sizeof(float));
  memcpy(C0, C, (size_t)(M * N) * sizeof(float));
  int rc = mmp_cpu_gemm(1, ta, tb, M, N, K, 1.0f, ha ? (const void *)ha : A, ha ? dt : MMP_F32, lda, 0,
                        hb ? (const void *)hb : B, hb ? dt : MMP_F32, ldb, 0, beta, C, ldc, 0, cdt);
  int bad = rc != 0;
  const bool r16 = cdt == MMP_BF16;
  for (int64_t i = 0; i < M && !bad; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0, mag = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        float a = ta ? A[k * lda + i] : A[i * lda + k], b = tb ? B[j * ldb + k] : B[k * ldb + j];
        double p = r16 ? bf16r(a) * bf16r(b) : (double)a * b;
        acc += p;
        mag += fabs(p);
      }
      double ref = acc + beta * (double)C0[i * ldc + j];
      if (!(fabs(C[i * ldc + j] - ref) <= 1e-5 * mag + 1e-6 * fabs(beta * C0[i * ldc + j]) + 1e-30)) {
        diag("  [%lld,%lld] got %.9g want %.9g", (long long)i, (long long)j, C[i * ldc + j], ref);
        bad = 1;
        break;
      }
    }
  ok(!bad, "%s gemm %s %s %c%c M %lld N %lld K %lld beta %g compute %s", path_name, dt == MMP_BF16 ? "bf16" : "f16",
     which == 0 ? "A" : which == 1 ? "B" : "A+B", ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)M, (long long)N,
     (long long)K, beta, r16 ? "bf16" : "f32");
  free(A);
  free(B);
  free(C);
  free(C0);
  free(ha);
  free(hb);
}

/* conv2d with half weights: compute f32 must equal the f32 weights' result;
 * compute bf16 must be the double result of x and w rounded to bf16 up to
 * the fp32 summation (1e-5 of sum |x w|) */
static void check_half_conv(int dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int pad,
                            int groups, int cdt) {
  int64_t OH = H + 2 * pad - KH + 1, OW = W + 2 * pad - KH + 1, Cg = C / groups, Og = O / groups;
  uint16_t *hw = NULL;
  float *x = rand_buf(N * C * H * W), *w = half_buf(O * Cg * KH * KH, dt, &hw), *bias = rand_buf(O);
  float *y = rand_buf(N * O * OH * OW), *y32 = rand_buf(N * O * OH * OW);
  int rc = mmp_cpu_conv2d_w(x, N, C, H, W, hw, dt, O, KH, KH, bias, 1, 1, pad, pad, 1, 1, groups, y, cdt);
  int rc2 = mmp_cpu_conv2d(x, N, C, H, W, w, O, KH, KH, bias, 1, 1, pad, pad, 1, 1, groups, y32);
  int bad = rc != 0 || rc2 != 0;
  const bool r16 = cdt == MMP_BF16;
  for (int64_t i = 0; i < N * O * OH * OW && !bad && !r16; ++i)
    if (y[i] != y32[i]) {
      diag("  [%lld] got %.9g, f32 weights give %.9g", (long long)i, y[i], y32[i]);
      bad = 1;
    }
  for (int64_t n = 0; n < N && !bad && r16; ++n)
    for (int64_t o = 0; o < O && !bad; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          int64_t g = o / Og;
          double acc = bias[o], mag = fabs(acc);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KH; ++kw) {
                int64_t ih = oh - pad + kh, iw = ow - pad + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                double pr = bf16r(x[((n * C + g * Cg + c) * H + ih) * W + iw]) * bf16r(w[((o * Cg + c) * KH + kh) * KH + kw]);
                acc += pr;
                mag += fabs(pr);
              }
          double got = y[((n * O + o) * OH + oh) * OW + ow];
          if (!(fabs(got - acc) <= 1e-5 * mag + 1e-30)) {
            diag("  [%lld,%lld,%lld,%lld] got %.9g want %.9g", (long long)n, (long long)o, (long long)oh,
                 (long long)ow, got, acc);
            bad = 1;
            break;
          }
        }
  ok(!bad, r16 ? "%s conv2d %s weights N%lld C%lld %lldx%lld O%lld k%lld p%d g%d, compute bf16: the bf16-rounded "
                 "operands' result"
               : "%s conv2d %s weights N%lld C%lld %lldx%lld O%lld k%lld p%d g%d: equal to the f32 weights' result",
     path_name, dt == MMP_BF16 ? "bf16" : "f16", (long long)N, (long long)C, (long long)H, (long long)W,
     (long long)O, (long long)KH, pad, groups);
  free(x);
  free(w);
  free(hw);
  free(bias);
  free(y);
  free(y32);
}

static void test_half(void) {
  static const int64_t sizes[][3] = {{1, 1, 1}, {3, 17, 5}, {17, 33, 65}, {15, 31, 300}, {200, 70, 257}, {45, 200, 1700}};
  for (int cdt = MMP_F32; cdt <= MMP_BF16; cdt += MMP_BF16 - MMP_F32)
    for (int dt = MMP_F16; dt <= MMP_BF16; ++dt) {
      for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s)
        for (int t = 0; t < 4; ++t)
          for (int which = 0; which < 3; ++which)
            check_half_gemm(dt, which, t & 1, t & 2, sizes[s][0], sizes[s][1], sizes[s][2], (t & 1) ? 1.0f : 0.0f,
                            cdt);
      check_half_gemm(dt, 1, false, true, 300, 200, 100, 0.0f, cdt); /* linear's layout, threaded */
      check_half_conv(dt, 2, 3, 7, 9, 5, 3, 1, 1, cdt);
      check_half_conv(dt, 1, 6, 9, 7, 9, 3, 1, 3, cdt);
      check_half_conv(dt, 2, 17, 6, 5, 33, 1, 0, 1, cdt);   /* pointwise, spanning */
      check_half_conv(dt, 1, 16, 24, 24, 8, 1, 0, 1, cdt);  /* pointwise, per image */
      check_half_conv(dt, 2, 40, 8, 8, 130, 3, 1, 1, cdt);  /* shared im2col matrix */
      check_half_conv(dt, 1, 40, 20, 20, 20, 3, 1, 1, cdt); /* K = 360, two K blocks */
    }
  /* compute bf16 with f32 operands: both rounded as well */
  {
    float *A = rand_buf(17 * 65), *B = rand_buf(65 * 33), *C = rand_buf(17 * 33);
    int rc = mmp_cpu_gemm(1, false, false, 17, 33, 65, 1.0f, A, MMP_F32, 65, 0, B, MMP_F32, 33, 0, 0.0f, C, 33, 0,
                          MMP_BF16);
    int bad = rc != 0;
    for (int64_t i = 0; i < 17 && !bad; ++i)
      for (int64_t j = 0; j < 33 && !bad; ++j) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < 65; ++k) {
          double p = bf16r(A[i * 65 + k]) * bf16r(B[k * 33 + j]);
          acc += p;
          mag += fabs(p);
        }
        bad = !(fabs(C[i * 33 + j] - acc) <= 1e-5 * mag);
      }
    ok(!bad, "%s gemm f32 x f32, compute bf16: the bf16-rounded operands' result", path_name);
    free(A);
    free(B);
    free(C);
  }
  uint16_t h = 0;
  float c = 0;
  ok(mmp_cpu_gemm(1, false, false, 1, 1, 1, 1.0f, &h, MMP_I32, 1, 0, &h, MMP_F16, 1, 0, 0.0f, &c, 1, 0, MMP_F32) ==
         MMP_EDTYPE,
     "%s gemm: an integer operand is MMP_EDTYPE", path_name);
  ok(mmp_cpu_gemm(1, false, false, 1, 1, 1, 1.0f, &h, MMP_F16, 1, 0, &h, MMP_F16, 1, 0, 0.0f, &c, 1, 0, MMP_F16) ==
         MMP_EDTYPE,
     "%s gemm: compute dtype f16 is MMP_EDTYPE", path_name);
}

/* The vdpbf16ps kernel and the AVX-512 fp32 kernel with the rounding
 * squeeze: the same roundings, the same order of fp32 additions, the same
 * blocking: bit-identical results (gemm and conv2d, edge tiles, odd K). */
static void test_bf16_paths_agree(void) {
  static const int64_t sizes[][3] = {{1, 1, 1}, {3, 17, 5}, {17, 33, 65}, {29, 70, 801}, {200, 70, 257}};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
    int64_t M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
    uint16_t *hb = NULL;
    float *A = rand_buf(M * K), *B = half_buf(K * N, MMP_BF16, &hb), *C0 = rand_buf(M * N);
    float *C1 = malloc((size_t)(M * N) * sizeof(float)), *C2 = malloc((size_t)(M * N) * sizeof(float));
    for (int beta = 0; beta < 2; ++beta) {
      memcpy(C1, C0, (size_t)(M * N) * sizeof(float));
      memcpy(C2, C0, (size_t)(M * N) * sizeof(float));
      mmp_cpu_set_isa(MMP_CPU_ISA_AVX512_BF16);
      int rc = mmp_cpu_gemm(1, false, true, M, N, K, 1.0f, A, MMP_F32, K, 0, hb, MMP_BF16, K, 0, (float)beta, C1, N, 0,
                            MMP_BF16);
      mmp_cpu_set_isa(MMP_CPU_ISA_AVX512);
      int rc2 = mmp_cpu_gemm(1, false, true, M, N, K, 1.0f, A, MMP_F32, K, 0, hb, MMP_BF16, K, 0, (float)beta, C2, N,
                             0, MMP_BF16);
      ok(rc == 0 && rc2 == 0 && memcmp(C1, C2, (size_t)(M * N) * sizeof(float)) == 0,
         "compute bf16: vdpbf16ps and the rounding AVX-512 kernel agree bit for bit (linear M %lld N %lld K %lld beta "
         "%d)",
         (long long)M, (long long)N, (long long)K, beta);
    }
    free(A);
    free(B);
    free(hb);
    free(C0);
    free(C1);
    free(C2);
  }
  static const int64_t convs[][7] = {/* N C H W O k pad */
                                     {2, 3, 7, 9, 5, 3, 1}, {2, 17, 6, 5, 33, 1, 0}, {1, 16, 24, 24, 8, 1, 0},
                                     {2, 40, 8, 8, 130, 3, 1}, {1, 40, 20, 20, 20, 3, 1}};
  for (size_t s = 0; s < sizeof convs / sizeof convs[0]; ++s) {
    const int64_t *v = convs[s];
    int64_t OH = v[2] + 2 * v[6] - v[5] + 1, OW = v[3] + 2 * v[6] - v[5] + 1, ny = v[0] * v[4] * OH * OW;
    uint16_t *hw = NULL;
    float *x = rand_buf(v[0] * v[1] * v[2] * v[3]), *w = half_buf(v[4] * v[1] * v[5] * v[5], MMP_BF16, &hw);
    float *bias = rand_buf(v[4]), *y1 = rand_buf(ny), *y2 = rand_buf(ny);
    mmp_cpu_set_isa(MMP_CPU_ISA_AVX512_BF16);
    int rc = mmp_cpu_conv2d_w(x, v[0], v[1], v[2], v[3], hw, MMP_BF16, v[4], v[5], v[5], bias, 1, 1, (int)v[6],
                              (int)v[6], 1, 1, 1, y1, MMP_BF16);
    mmp_cpu_set_isa(MMP_CPU_ISA_AVX512);
    int rc2 = mmp_cpu_conv2d_w(x, v[0], v[1], v[2], v[3], hw, MMP_BF16, v[4], v[5], v[5], bias, 1, 1, (int)v[6],
                               (int)v[6], 1, 1, 1, y2, MMP_BF16);
    ok(rc == 0 && rc2 == 0 && memcmp(y1, y2, (size_t)ny * sizeof(float)) == 0,
       "compute bf16: vdpbf16ps and the rounding AVX-512 kernel agree bit for bit (conv2d N%lld C%lld %lldx%lld "
       "O%lld k%lld)",
       (long long)v[0], (long long)v[1], (long long)v[2], (long long)v[3], (long long)v[4], (long long)v[5]);
    free(x);
    free(w);
    free(hw);
    free(bias);
    free(y1);
    free(y2);
  }
}

/* The fused ReLU epilogue gives exactly relu(conv) on every task layout. */
static void check_conv_relu(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int pad) {
  int64_t OH = H + 2 * pad - KH + 1, OW = W + 2 * pad - KH + 1, n = N * O * OH * OW;
  float *x = rand_buf(N * C * H * W), *w = rand_buf(O * C * KH * KH), *bias = rand_buf(O);
  float *y = rand_buf(n), *y0 = rand_buf(n);
  int rc = mmp_cpu_conv2d_act(x, N, C, H, W, w, MMP_F32, O, KH, KH, bias, 1, 1, pad, pad, 1, 1, 1, MMP_CPU_ACT_RELU, y, MMP_F32);
  int rc0 = mmp_cpu_conv2d(x, N, C, H, W, w, O, KH, KH, bias, 1, 1, pad, pad, 1, 1, 1, y0);
  int bad = rc != 0 || rc0 != 0, neg = 0;
  for (int64_t i = 0; i < n && !bad; ++i) {
    float r = y0[i] > 0.0f ? y0[i] : 0.0f;
    neg += y0[i] < 0.0f;
    if (y[i] != r) {
      diag("  [%lld] got %.9g, relu(conv) %.9g", (long long)i, y[i], r);
      bad = 1;
    }
  }
  ok(!bad && neg > 0, "%s conv2d + relu epilogue N %lld C %lld %lldx%lld O %lld k %lld: exactly relu(conv2d)",
     path_name, (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)KH);
  free(x);
  free(w);
  free(bias);
  free(y);
  free(y0);
}

static void test_conv_relu(void) {
  check_conv_relu(1, 5, 24, 24, 7, 3, 1);  /* per image */
  check_conv_relu(2, 3, 7, 9, 5, 3, 1);    /* columns across images */
  check_conv_relu(2, 40, 8, 8, 130, 3, 1); /* shared im2col matrix */
  check_conv_relu(1, 16, 24, 24, 8, 1, 0); /* pointwise */
  float a[4] = {0}, b[4] = {0}, c[4];
  is_int(mmp_cpu_conv2d_act(a, 1, 1, 2, 2, b, MMP_F32, 1, 1, 1, NULL, 1, 1, 0, 0, 1, 1, 1, MMP_CPU_ACT_SILU, c, MMP_F32),
         MMP_EINVAL, "%s conv2d: an activation other than relu is MMP_EINVAL", path_name);
}

/* --------------------------------------------------------- attention */

static void check_attention(int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                            int mask_kind, bool causal) {
  float *q = rand_buf(B * H * Lq * D), *k = rand_buf(B * H * Lk * D), *v = rand_buf(B * H * Lk * Dv);
  /* make the softmax peaky enough to matter */
  for (int64_t i = 0; i < B * H * Lq * D; ++i) q[i] *= 3.0f;
  float *out = rand_buf(B * H * Lq * Dv);
  uint8_t *mask = NULL;
  if (mask_kind) {
    mask = malloc((size_t)(B * Lk > 0 ? B * Lk : 1));
    for (int64_t i = 0; i < B * Lk; ++i) mask[i] = frand() < -0.4f;
    if (mask_kind == 2) memset(mask, 1, (size_t)Lk); /* batch 0 fully masked */
  }
  float scale = 1.0f / sqrtf((float)D);
  int rc = mmp_cpu_attention(q, k, v, B, H, Lq, Lk, D, Dv, mask, causal, scale, out);
  int bad = rc != 0;
  double *s = malloc((size_t)(Lk > 0 ? Lk : 1) * sizeof(double));
  for (int64_t b = 0; b < B && !bad; ++b)
    for (int64_t h = 0; h < H && !bad; ++h)
      for (int64_t i = 0; i < Lq && !bad; ++i) {
        const float *qi = q + ((b * H + h) * Lq + i) * D;
        double mx = -INFINITY;
        for (int64_t jj = 0; jj < Lk; ++jj) {
          bool masked = (mask && mask[b * Lk + jj]) || (causal && jj > i);
          if (masked) {
            s[jj] = -INFINITY;
            continue;
          }
          const float *kj = k + ((b * H + h) * Lk + jj) * D;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += (double)qi[d] * kj[d];
          s[jj] = acc * scale;
          if (s[jj] > mx) mx = s[jj];
        }
        double den = 0;
        for (int64_t jj = 0; jj < Lk; ++jj) {
          s[jj] = s[jj] == -INFINITY ? 0.0 : exp(s[jj] - mx);
          den += s[jj];
        }
        for (int64_t d = 0; d < Dv; ++d) {
          double acc = 0, mag = 0;
          for (int64_t jj = 0; jj < Lk; ++jj) {
            double p = s[jj] * v[((b * H + h) * Lk + jj) * Dv + d];
            acc += p;
            mag += fabs(p);
          }
          double ref = den > 0 ? acc / den : 0.0;
          double tol = den > 0 ? 2e-5 * mag / den + 1e-6 : 0.0;
          double got = out[((b * H + h) * Lq + i) * Dv + d];
          if (!(fabs(got - ref) <= tol)) {
            diag("  [%lld,%lld,%lld,%lld] got %.9g want %.9g", (long long)b, (long long)h,
                 (long long)i, (long long)d, got, ref);
            bad = 1;
            break;
          }
        }
      }
  ok(!bad, "%s attention B%lld H%lld Lq %lld Lk %lld D %lld Dv %lld%s%s", path_name, (long long)B,
     (long long)H, (long long)Lq, (long long)Lk, (long long)D, (long long)Dv,
     mask_kind == 1 ? " key mask" : mask_kind == 2 ? " key mask (a batch fully masked)" : "",
     causal ? " causal" : "");
  free(q);
  free(k);
  free(v);
  free(out);
  free(mask);
  free(s);
}

static void test_attention(void) {
  check_attention(1, 1, 1, 1, 1, 1, 0, false);
  check_attention(2, 3, 17, 33, 8, 8, 0, false);
  check_attention(1, 2, 37, 53, 17, 23, 1, false);
  check_attention(2, 2, 65, 65, 40, 40, 0, true);
  check_attention(2, 1, 130, 300, 40, 40, 2, false); /* several key and query blocks */
  check_attention(1, 2, 70, 200, 16, 24, 1, true);   /* causal with Lq != Lk */
  check_attention(2, 3, 33, 77, 40, 40, 1, false);   /* cross-attention shape */
  check_attention(2, 2, 96, 77, 40, 40, 0, false);   /* whole aligned panels: streamed stores */
  check_attention(1, 3, 64, 50, 24, 20, 1, false);   /* streamed, Dv not a multiple of 16 */
  check_attention(1, 1, 5, 3, 4, 65, 0, false);      /* Dv > D */
}

/* ------------------------------------------------------------- norms */

static void test_group_norm(void) {
  static const int64_t cases[][4] = {{2, 6, 17, 3}, {1, 32, 1, 32}, {3, 8, 65, 1}, {2, 64, 1000, 32}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
    for (int variant = 0; variant < 3; ++variant) {
      int64_t N = cases[c][0], C = cases[c][1], S = cases[c][2];
      int G = (int)cases[c][3];
      float *x = rand_buf(N * C * S), *gm = rand_buf(C), *bt = rand_buf(C), *y = rand_buf(N * C * S);
      float off = variant == 2 ? 300.0f : 0.0f; /* a large mean must not cost accuracy */
      for (int64_t i = 0; i < N * C * S; ++i) x[i] = x[i] * 2.0f + off;
      bool aff = variant != 1;
      int rc = mmp_cpu_group_norm(x, N, C, S, G, aff ? gm : NULL, aff ? bt : NULL, 1e-5f, y);
      int bad = rc != 0;
      int64_t cg = C / G;
      for (int64_t n = 0; n < N && !bad; ++n)
        for (int64_t g = 0; g < G && !bad; ++g) {
          const float *xs = x + (n * C + g * cg) * S;
          double mean = 0, var = 0;
          for (int64_t i = 0; i < cg * S; ++i) mean += xs[i];
          mean /= (double)(cg * S);
          for (int64_t i = 0; i < cg * S; ++i) var += (xs[i] - mean) * (xs[i] - mean);
          var /= (double)(cg * S);
          for (int64_t i = 0; i < cg * S; ++i) {
            int64_t ch = g * cg + i / S;
            double ref = (xs[i] - mean) / sqrt(var + 1e-5);
            if (aff) ref = ref * gm[ch] + bt[ch];
            double got = y[(n * C + g * cg) * S + i];
            if (!(fabs(got - ref) <= 1e-5 * fmax(1.0, fabs(ref)))) {
              diag("  got %.9g want %.9g", got, ref);
              bad = 1;
              break;
            }
          }
        }
      ok(!bad, "%s group_norm N%lld C%lld S%lld G%d%s", path_name, (long long)N, (long long)C,
         (long long)S, G, variant == 1 ? " no affine" : variant == 2 ? " mean 300" : "");
      free(x);
      free(gm);
      free(bt);
      free(y);
    }
  }
}

static void test_layer_norm(void) {
  static const int64_t cases[][2] = {{1, 1}, {5, 33}, {7, 320}, {300, 768}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c)
    for (int variant = 0; variant < 3; ++variant) {
      int64_t R = cases[c][0], D = cases[c][1];
      float *x = rand_buf(R * D), *gm = rand_buf(D), *bt = rand_buf(D), *y = rand_buf(R * D);
      if (variant == 2)
        for (int64_t i = 0; i < R * D; ++i) x[i] += 100.0f;
      bool aff = variant != 1;
      int rc = mmp_cpu_layer_norm(x, R, D, aff ? gm : NULL, aff ? bt : NULL, 1e-5f, y);
      int bad = rc != 0;
      for (int64_t r = 0; r < R && !bad; ++r) {
        const float *xs = x + r * D;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < D; ++i) mean += xs[i];
        mean /= (double)D;
        for (int64_t i = 0; i < D; ++i) var += (xs[i] - mean) * (xs[i] - mean);
        var /= (double)D;
        for (int64_t i = 0; i < D; ++i) {
          double ref = (xs[i] - mean) / sqrt(var + 1e-5);
          if (aff) ref = ref * gm[i] + bt[i];
          double got = y[r * D + i];
          if (!(fabs(got - ref) <= 1e-5 * fmax(1.0, fabs(ref)))) {
            diag("  row %lld col %lld got %.9g want %.9g", (long long)r, (long long)i, got, ref);
            bad = 1;
            break;
          }
        }
      }
      ok(!bad, "%s layer_norm rows %lld D %lld%s", path_name, (long long)R, (long long)D,
         variant == 1 ? " no affine" : variant == 2 ? " mean 100" : "");
      free(x);
      free(gm);
      free(bt);
      free(y);
    }
}

static void test_softmax(void) {
  static const int64_t cases[][2] = {{1, 1}, {3, 17}, {4, 100}, {1000, 77}, {2, 4096}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
    int64_t R = cases[c][0], D = cases[c][1];
    float *x = rand_buf(R * D), *y = rand_buf(R * D);
    for (int64_t i = 0; i < R * D; ++i) x[i] *= 20.0f;
    if (D > 3) x[2] = -INFINITY; /* masked logits */
    int rc = mmp_cpu_softmax(x, R, D, y);
    int bad = rc != 0;
    for (int64_t r = 0; r < R && !bad; ++r) {
      double mx = -INFINITY, den = 0;
      for (int64_t i = 0; i < D; ++i) mx = fmax(mx, x[r * D + i]);
      for (int64_t i = 0; i < D; ++i) den += exp(x[r * D + i] - mx);
      for (int64_t i = 0; i < D; ++i) {
        double ref = exp(x[r * D + i] - mx) / den;
        double got = y[r * D + i];
        if (!(fabs(got - ref) <= 1e-5 * fmax(1e-3, ref))) {
          diag("  row %lld col %lld got %.9g want %.9g", (long long)r, (long long)i, got, ref);
          bad = 1;
          break;
        }
      }
    }
    ok(!bad, "%s softmax rows %lld D %lld", path_name, (long long)R, (long long)D);
    free(x);
    free(y);
  }
  /* in place */
  float x[5] = {1, 2, 3, 4, 5};
  mmp_cpu_softmax(x, 1, 5, x);
  is_close(x[4], exp(4.0) / (1 + exp(1.0) + exp(2.0) + exp(3.0) + exp(4.0)), 1e-7,
           "%s softmax in place", path_name);
}

/* ------------------------------------------------------- activations */

static double ref_act(int which, double x) {
  switch (which) {
    case 0: return x / (1.0 + exp(-x));
    case 1: return 0.5 * x * erfc(-x / sqrt(2.0));
    case 2: /* 0.5 x (1 + tanh u) written without the cancellation */
      return x / (1.0 + exp(-2.0 * sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    default: return x / (1.0 + exp(-1.702 * x));
  }
}

static void test_activations(void) {
  static const char *names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu"};
  void (*fns[])(const float *, float *, int64_t) = {mmp_cpu_silu, mmp_cpu_gelu, mmp_cpu_gelu_tanh,
                                                    mmp_cpu_quick_gelu};
  int64_t n = 200003; /* odd, and above the parallel threshold */
  float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
  for (int64_t i = 0; i < n; ++i) x[i] = (float)(-12.0 + 24.0 * (double)i / (double)(n - 1));
  x[0] = 0.0f;
  x[1] = -0.0f;
  x[2] = 1e-20f;
  x[3] = -90.0f;
  x[4] = 90.0f;
  for (int a = 0; a < 4; ++a) {
    fns[a](x, y, n);
    int bad = 0;
    /* The GELU tails for x < -4 are below 1e-5 and their fp32 evaluation
     * loses relative accuracy through the fp32 rounding of the argument of
     * erfc / exp (x/sqrt 2, or u ~ x^3); the absolute 1e-7 covers it.
     * PyTorch's own 1 + erf / 1 + tanh forms are far worse there. */
    for (int64_t i = 0; i < n && !bad; ++i) {
      double ref = ref_act(a, x[i]);
      double tol = 2e-6 * fabs(ref) + (a == 1 || a == 2 ? 1e-7 : 1e-30);
      if (!(fabs(y[i] - ref) <= tol)) {
        diag("  %s(%.9g) = %.9g, want %.9g", names[a], x[i], y[i], ref);
        bad = 1;
      }
    }
    ok(!bad, "%s %s over [-12, 12] and edge values", path_name, names[a]);
    /* in place */
    float z[3] = {-1.0f, 0.5f, 2.0f}, w[3];
    fns[a](z, w, 3);
    fns[a](z, z, 3);
    ok(memcmp(z, w, sizeof z) == 0, "%s %s in place", path_name, names[a]);
  }
  /* GEGLU */
  int64_t R = 7, D = 33;
  float *gx = rand_buf(R * 2 * D), *gy = rand_buf(R * D);
  for (int64_t i = 0; i < R * 2 * D; ++i) gx[i] *= 4.0f;
  mmp_cpu_geglu(gx, gy, R, D);
  int bad = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < D; ++i) {
      double ref = gx[r * 2 * D + i] * ref_act(1, gx[r * 2 * D + D + i]);
      if (!(fabs(gy[r * D + i] - ref) <= 2e-6 * fabs(ref) + 1e-7)) bad = 1;
    }
  ok(!bad, "%s geglu rows 7 D 33", path_name);
  free(gx);
  free(gy);
  free(x);
  free(y);
}

/* ------------------------------------------------------- thread pool */

static atomic_int hits[1000];
static atomic_int nested_ok;

static void count_fn(int64_t i, void *user) {
  (void)user;
  atomic_fetch_add(&hits[i], 1);
}
static void inner_fn(int64_t i, void *user) { atomic_fetch_add((atomic_int *)user, (int)i + 1); }
static void nested_fn(int64_t i, void *user) {
  (void)user;
  atomic_int sum;
  atomic_init(&sum, 0);
  mmp_cpu_parallel_for(10, inner_fn, &sum); /* runs serially, completes before return */
  if (atomic_load(&sum) == 55) atomic_fetch_add(&nested_ok, 1);
  atomic_fetch_add(&hits[i], 1);
}

static void test_pool(void) {
  int th[] = {1, 2, 3};
  for (size_t t = 0; t < 3; ++t) {
    mmp_cpu_set_threads(th[t]);
    is_int(mmp_cpu_threads(), th[t], "set_threads(%d)", th[t]);
    for (int i = 0; i < 1000; ++i) atomic_store(&hits[i], 0);
    mmp_cpu_parallel_for(1000, count_fn, NULL);
    int bad = 0;
    for (int i = 0; i < 1000; ++i) bad |= atomic_load(&hits[i]) != 1;
    ok(!bad, "parallel_for with %d threads runs each index once", th[t]);
    for (int i = 0; i < 100; ++i) atomic_store(&hits[i], 0);
    atomic_store(&nested_ok, 0);
    mmp_cpu_parallel_for(100, nested_fn, NULL);
    bad = 0;
    for (int i = 0; i < 100; ++i) bad |= atomic_load(&hits[i]) != 1;
    ok(!bad && atomic_load(&nested_ok) == 100, "nested parallel_for with %d threads", th[t]);
  }
  mmp_cpu_set_threads(0); /* back to MMPIPE_THREADS / cores */
  ok(mmp_cpu_threads() >= 1, "default thread count %d", mmp_cpu_threads());
}

/* ------------------------------------------------------------ errors */

static void test_errors(void) {
  float a[4] = {0}, b[4] = {0}, c[4] = {0};
  is_int(mmp_cpu_sgemm(1, false, false, 2, 2, 2, 1, a, 1, 0, b, 2, 0, 0, c, 2, 0), MMP_EINVAL,
         "sgemm rejects lda < K");
  like(mmp_error_last(), "leading dimension", "  with a message");
  is_int(mmp_cpu_sgemm(-1, false, false, 2, 2, 2, 1, a, 2, 0, b, 2, 0, 0, c, 2, 0), MMP_EINVAL,
         "sgemm rejects a negative batch");
  is_int(mmp_cpu_sgemm(2, false, false, 2, 2, 2, 1, a, 2, 0, b, 2, 0, 0, c, 2, 0), MMP_EINVAL,
         "sgemm rejects a broadcast output");
  is_int(mmp_cpu_conv2d(a, 1, 3, 2, 2, b, 2, 1, 1, NULL, 1, 1, 0, 0, 1, 1, 2, c), MMP_EINVAL,
         "conv2d rejects groups that do not divide C");
  is_int(mmp_cpu_conv2d(a, 1, 1, 2, 2, b, 1, 3, 3, NULL, 1, 1, 0, 0, 1, 1, 1, c), MMP_EINVAL,
         "conv2d rejects a kernel larger than the input");
  is_int(mmp_cpu_conv2d(a, 1, 1, 2, 2, b, 1, 1, 1, NULL, 0, 1, 0, 0, 1, 1, 1, c), MMP_EINVAL,
         "conv2d rejects stride 0");
  is_int(mmp_cpu_group_norm(a, 1, 4, 1, 3, NULL, NULL, 1e-5f, c), MMP_EINVAL,
         "group_norm rejects groups that do not divide C");
  is_int(mmp_cpu_attention(a, b, c, 1, 1, 1, 1, 0, 1, NULL, false, 1.0f, c), MMP_EINVAL,
         "attention rejects D = 0");
  float o[3] = {7, 7, 7};
  is_int(mmp_cpu_attention(a, NULL, NULL, 1, 1, 3, 0, 2, 1, NULL, false, 1.0f, o), 0,
         "attention with no keys");
  ok(o[0] == 0 && o[1] == 0 && o[2] == 0, "  gives zeros");
}

static void run_all(void) {
  test_sgemm();
  test_half();
  test_conv2d();
  test_conv_relu();
  test_attention();
  test_group_norm();
  test_layer_norm();
  test_softmax();
  test_activations();
}

/* ------------------------------------------------- per-thread scratch */

static void *scratch_thread(void *arg) {
  float *mine = mmp_cpu_scratch(MMP_SCRATCH_A, 100);
  if (mine) mine[99] = 1.0f;
  *(float **)arg = mine;
  return NULL; /* the thread's buffers are freed at its exit (LeakSanitizer checks) */
}

static void test_scratch(void) {
  float *a = mmp_cpu_scratch(MMP_SCRATCH_A, 100);
  ok(a && ((uintptr_t)a & 63) == 0, "scratch: 64-byte aligned buffer");
  float *b = mmp_cpu_scratch(MMP_SCRATCH_A, 50);
  ok(a == b, "scratch: a smaller request reuses the slot's buffer");
  float *c = mmp_cpu_scratch(MMP_SCRATCH_B, 100);
  ok(c && c != a, "scratch: slots are distinct buffers");
  float *d = mmp_cpu_scratch(MMP_SCRATCH_A, 5000);
  ok(d != NULL, "scratch: grows on demand");
  if (d) d[4999] = 2.0f; /* AddressSanitizer checks the size */
  float *e = mmp_cpu_scratch(MMP_SCRATCH_A, 5000);
  ok(d == e, "scratch: the grown buffer is kept");
  mmp_cpu_scratch_done(MMP_SCRATCH_A);
  ok(mmp_cpu_scratch(MMP_SCRATCH_A, 5000) == d, "scratch: done keeps a buffer under the cache bound");
  float *big = mmp_cpu_scratch(MMP_SCRATCH_CALLER0, (int64_t)9 << 20); /* 36 MiB */
  ok(big != NULL, "scratch: a large buffer");
  if (big) big[((int64_t)9 << 20) - 1] = 3.0f;
  mmp_cpu_scratch_done(MMP_SCRATCH_CALLER0); /* over the bound: freed (ASan/LSan would see misuse) */
  ok(mmp_cpu_scratch(-1, 10) == NULL && mmp_cpu_scratch(MMP_SCRATCH_SLOTS, 10) == NULL,
     "scratch: bad slot gives NULL");
  float *other = NULL;
  pthread_t th;
  if (pthread_create(&th, NULL, scratch_thread, &other) == 0) {
    pthread_join(th, NULL);
    ok(other != NULL && other != d, "scratch: each thread has its own buffers");
  } else {
    ok(0, "scratch: pthread_create");
  }
}

int main(void) {
  test_pool();
  test_scratch();
  mmp_cpu_set_threads(2); /* exercise the pool whatever the machine */
  test_errors();

  if (mmp_cpu_set_isa(MMP_CPU_ISA_AVX512_BF16) == MMP_CPU_ISA_AVX512_BF16) {
    mmp_cpu_set_openblas(0);
    path_name = "[avx512bf16]";
    test_half();
    test_sgemm(); /* f32 products keep the fp32 kernel */
    test_conv2d();
    test_bf16_paths_agree();
  } else {
    diag("no AVX512_BF16 on this CPU: the bf16 dot-product kernel is not tested");
  }
  if (mmp_cpu_set_isa(MMP_CPU_ISA_AVX512) == MMP_CPU_ISA_AVX512) {
    mmp_cpu_set_openblas(0);
    path_name = "[avx512]";
    run_all();
  } else {
    diag("no AVX-512 on this CPU: only the portable kernels are tested");
  }
  is_int(mmp_cpu_set_isa(MMP_CPU_ISA_GENERIC), MMP_CPU_ISA_GENERIC, "portable path can be forced");
  is_int(mmp_cpu_isa(), MMP_CPU_ISA_GENERIC, "  and stays");
  mmp_cpu_set_openblas(0);
  path_name = "[generic]";
  run_all();
  /* the portable packers' conversions, each path this CPU has */
  test_half_convert();
  static const char *const half_paths[] = {"[generic, scalar half]", "[generic, F16C half]", "[generic, AVX-512 half]"};
  for (int p = MMP_CPU_HALF_SCALAR; p <= MMP_CPU_HALF_AVX512; ++p)
    if (mmp_cpu_set_half_path(p) == p) {
      path_name = half_paths[p];
      test_half();
    }
  mmp_cpu_set_half_path(MMP_CPU_HALF_BEST);
  if (mmp_cpu_set_openblas(1) == 1) {
    path_name = "[openblas]";
    test_sgemm();
  }
  mmp_cpu_set_openblas(-1);
  mmp_cpu_set_isa(MMP_CPU_ISA_AUTO);
  return done_testing();
}
