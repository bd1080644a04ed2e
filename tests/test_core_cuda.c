/* tests/test_core_cuda.c - every op on the CUDA backend against the CPU backend on the same random inputs.
 *
 * Each case builds its inputs on the host, runs the op through the public
 * API once on CPU tensors and once on CUDA tensors, and compares elementwise:
 * |gpu - cpu| <= atol + rtol * |cpu|, with tolerances per op family and
 * dtype (stated at each case; see doc/cuda.md). The CPU result is the
 * reference: no expected number is written by hand. f16/bf16 GEMM-type ops
 * are reached through mmp_backend_compute (the front-end computes in f32);
 * their CPU reference runs in f32 on the same rounded inputs.
 * Without a device: "1..0 # SKIP no CUDA device".
 */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/rng.h>
#include <mmpipe/tensor.h>
#ifdef HAVE_CUDA
#include <mmpipe/cuda.h>
#endif

#include "tap.h"

#ifndef HAVE_CUDA
int main(void) {
  skip_all("no CUDA device: this build has no CUDA backend");
  return 0;
}
#else

static mmp_backend_t *cpu, *gpu;

/* ------------------------------------------------------------ inputs */

static uint64_t rs = 0x9e3779b97f4a7c15ULL;
static double urand(void) { /* xorshift64*: test inputs only */
  rs ^= rs >> 12;
  rs ^= rs << 25;
  rs ^= rs >> 27;
  return (double)((rs * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}

/* CPU f32 tensor, uniform in [lo, hi). */
static mmp_tensor_t *rnd(int nd, const int64_t *shape, double lo, double hi) {
  mmp_tensor_t *t = mmp_tensor_new(cpu, MMP_F32, nd, shape);
  float *d = mmp_tensor_data(t);
  for (int64_t i = 0; i < mmp_tensor_numel(t); i++) d[i] = (float)(lo + (hi - lo) * urand());
  return t;
}
#define RND(lo, hi, ...) rnd(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__}, lo, hi)

/* Intermediate results inside a case expression: released after the case. */
static mmp_tensor_t *tmps[64];
static int ntmp;
static mmp_tensor_t *T(mmp_tensor_t *t) {
  if (ntmp < 64) tmps[ntmp++] = t;
  return t;
}
static void release_tmps(void) {
  while (ntmp > 0) mmp_tensor_unref(tmps[--ntmp]);
}

static mmp_tensor_t *on_gpu(const mmp_tensor_t *t) { return t ? mmp_to_backend(t, gpu) : NULL; }

/* Host f64 copy of any tensor. (caller frees) */
static double *host_values(const mmp_tensor_t *t) {
  mmp_tensor_t *h = mmp_to_backend(t, cpu);
  mmp_tensor_t *f = h ? mmp_convert(h, MMP_F64) : NULL;
  double *d = NULL;
  if (f) {
    d = malloc(mmp_tensor_nbytes(f) + 8);
    if (mmp_tensor_to_host(f, d, mmp_tensor_nbytes(f)) < 0) {
      free(d);
      d = NULL;
    }
  }
  mmp_tensor_unref(h);
  mmp_tensor_unref(f);
  return d;
}

/* Compare a GPU result with the CPU reference; consumes both. */
static void check(const char *what, mmp_tensor_t *ref, mmp_tensor_t *got, double atol, double rtol) {
  if (!ref || !got) {
    ok(0, "%s: %s", what, mmp_error_last());
    mmp_tensor_unref(ref);
    mmp_tensor_unref(got);
    return;
  }
  if (!mmp_tensor_same_shape(ref, got) || mmp_tensor_backend(got) != gpu) {
    char a[96], b[96];
    ok(0, "%s: shapes/devices differ: cpu %s, gpu %s on %s", what, mmp_tensor_describe(ref, a, sizeof a),
       mmp_tensor_describe(got, b, sizeof b), mmp_backend_name(mmp_tensor_backend(got)));
    mmp_tensor_unref(ref);
    mmp_tensor_unref(got);
    return;
  }
  double *r = host_values(ref), *g = host_values(got);
  int64_t n = mmp_tensor_numel(ref), bad = -1;
  double worst = 0;
  for (int64_t i = 0; r && g && i < n; i++) {
    double e = fabs(g[i] - r[i]);
    bool both_nan = isnan(g[i]) && isnan(r[i]);
    bool same_inf = isinf(g[i]) && g[i] == r[i];
    if (both_nan || same_inf) continue;
    if (!(e <= atol + rtol * fabs(r[i]))) {
      if (bad < 0) bad = i;
    }
    if (e > worst || isnan(e)) worst = e;
  }
  if (!ok(r && g && bad < 0, "%s (%lld values, max |diff| %.3g)", what, (long long)n, worst) && r && g)
    diag("  first mismatch at %lld: gpu %.9g, cpu %.9g (atol %.2g, rtol %.2g)", (long long)bad, g[bad], r[bad], atol,
         rtol);
  free(r);
  free(g);
  mmp_tensor_unref(ref);
  mmp_tensor_unref(got);
}

/* Run @expr once with CPU inputs and once with GPU copies of them. The
 * expression reads its inputs from in[0..]; the GPU run sees on_gpu()
 * copies under the same names. */
#define NIN 4
#define BOTH(what, tol, expr, ...)                                                                              \
  do {                                                                                                                 \
    mmp_tensor_t *cin_[NIN] = {__VA_ARGS__}, *gin_[NIN] = {0};                                                         \
    for (int i_ = 0; i_ < NIN; i_++) gin_[i_] = on_gpu(cin_[i_]);                                                      \
    mmp_tensor_t **in = cin_;                                                                                          \
    mmp_tensor_t *r_ = (expr);                                                                                         \
    in = gin_;                                                                                                         \
    mmp_tensor_t *g_ = (expr);                                                                                         \
    check(what, r_, g_, tol);                                                                                          \
    release_tmps();                                                                                                    \
    for (int i_ = 0; i_ < NIN; i_++) {                                                                                 \
      mmp_tensor_unref(cin_[i_]);                                                                                      \
      mmp_tensor_unref(gin_[i_]);                                                                                      \
    }                                                                                                                  \
  } while (0)

/* Tolerances. Elementwise f32 ops: CUDA's expf/erff/tanhf are within 2 ulp
 * of glibc. Reductions and GEMMs: different summation orders. */
#define TOL(atol, rtol) atol, rtol
#define EXACT 0.0, 0.0
#define ELEM 1e-6, 1e-5
#define REDUCE 1e-5, 1e-5
#define GEMM32 1e-4, 1e-4
#define NORM 1e-4, 1e-4
#define ATTN 2e-5, 1e-4

/* ------------------------------------------------------------ cases */

static mmp_tensor_t *view_t(mmp_tensor_t *t, int a, int b) { return T(mmp_transpose(t, a, b)); }

static void test_copies(void) {
  BOTH("convert f32->f16->f32 (bit exact)", EXACT, mmp_convert(T(mmp_convert(in[0], MMP_F16)), MMP_F32),
       RND(-70000, 70000, 3, 257));
  BOTH("convert f32->bf16->f32 (bit exact)", EXACT, mmp_convert(T(mmp_convert(in[0], MMP_BF16)), MMP_F32),
       RND(-1e30, 1e30, 3, 257));
  BOTH("convert f32->i32 and f32->u8", EXACT, mmp_convert(T(mmp_convert(in[0], MMP_I32)), MMP_U8),
       RND(0, 250, 1000));
  BOTH("convert f32->i64->f64", EXACT, mmp_convert(T(mmp_convert(in[0], MMP_I64)), MMP_F64), RND(-1e9, 1e9, 1000));
  BOTH("strided copy (transposed view, contiguous)", EXACT, mmp_contiguous(view_t(in[0], 1, 3)), RND(-1, 1, 2, 3, 5, 7));
  BOTH("strided copy with conversion (f16 of a permuted view)", EXACT,
       mmp_convert(T(mmp_convert(view_t(in[0], 0, 2), MMP_F16)), MMP_F32), RND(-3, 3, 4, 5, 6));
  BOTH("slice with step, contiguous", EXACT, mmp_contiguous(T(mmp_slice(in[0], 1, 1, 9, 3))), RND(-1, 1, 4, 10, 3));
  int64_t sh[3] = {3, 4, 5};
  check("fill f32", mmp_tensor_full(cpu, MMP_F32, 3, sh, -2.5), mmp_tensor_full(gpu, MMP_F32, 3, sh, -2.5), EXACT);
  check("fill f16", mmp_convert(T(mmp_tensor_full(cpu, MMP_F16, 3, sh, 1.0 / 3)), MMP_F32),
        mmp_convert(T(mmp_tensor_full(gpu, MMP_F16, 3, sh, 1.0 / 3)), MMP_F32), EXACT);
  release_tmps();
  check("zeros i64", mmp_tensor_zeros(cpu, MMP_I64, 3, sh), mmp_tensor_zeros(gpu, MMP_I64, 3, sh), EXACT);
  BOTH("concat dim 1", EXACT, mmp_concat(in, 2, 1), RND(-1, 1, 2, 3, 4), RND(-1, 1, 2, 5, 4));
}

static void test_elementwise(void) {
  BOTH("add broadcast [2,3,4,5] + [3,1,5]", ELEM, mmp_add(in[0], in[1]), RND(-2, 2, 2, 3, 4, 5), RND(-2, 2, 3, 1, 5));
  BOTH("sub broadcast [4,1] - [5]", ELEM, mmp_sub(in[0], in[1]), RND(-2, 2, 4, 1), RND(-2, 2, 5));
  BOTH("mul of a transposed view", ELEM, mmp_mul(view_t(in[0], 0, 1), in[1]), RND(-2, 2, 6, 7), RND(-2, 2, 7, 6));
  BOTH("div", ELEM, mmp_div(in[0], in[1]), RND(-2, 2, 1000), RND(0.5, 2, 1000));
  BOTH("axpby", ELEM, mmp_axpby(0.7, in[0], -1.3, in[1]), RND(-2, 2, 3, 333), RND(-2, 2, 3, 333));
  BOTH("scale", ELEM, mmp_scale(in[0], 0.18215, 0.5), RND(-5, 5, 4, 64));
  BOTH("clamp", ELEM, mmp_clamp(in[0], -1, 0.5), RND(-5, 5, 4, 64));
  BOTH("sqrt", ELEM, mmp_sqrt(in[0]), RND(0, 9, 4, 64));
  BOTH("exp", ELEM, mmp_exp(in[0]), RND(-20, 20, 4, 64));
  BOTH("abs", ELEM, mmp_abs(in[0]), RND(-5, 5, 4, 64));
  BOTH("silu", ELEM, mmp_silu(in[0]), RND(-12, 12, 4, 513));
  BOTH("gelu (erf)", ELEM, mmp_gelu(in[0]), RND(-8, 8, 4, 513));
  BOTH("gelu (tanh)", ELEM, mmp_gelu_tanh(in[0]), RND(-8, 8, 4, 513));
  BOTH("quick_gelu", ELEM, mmp_quick_gelu(in[0]), RND(-8, 8, 4, 513));
  BOTH("sigmoid", ELEM, mmp_sigmoid(in[0]), RND(-12, 12, 4, 513));
  BOTH("tanh", ELEM, mmp_tanh(in[0]), RND(-6, 6, 4, 513));
  BOTH("relu", ELEM, mmp_relu(in[0]), RND(-6, 6, 4, 513));
  BOTH("silu of a permuted view", ELEM, mmp_silu(view_t(in[0], 0, 2)), RND(-6, 6, 3, 4, 5));
  BOTH("geglu", ELEM, mmp_geglu(in[0]), RND(-4, 4, 2, 7, 2 * 40));
}

static void test_reductions(void) {
  for (int d = 0; d < 3; d++) {
    char name[64];
    snprintf(name, sizeof name, "sum over dim %d", d);
    BOTH(name, REDUCE, mmp_sum(in[0], d, true), RND(-1, 1, 5, 67, 9));
    snprintf(name, sizeof name, "mean over dim %d", d);
    BOTH(name, REDUCE, mmp_mean(in[0], d, false), RND(-1, 1, 5, 67, 9));
    snprintf(name, sizeof name, "max over dim %d", d);
    BOTH(name, EXACT, mmp_max(in[0], d, true), RND(-1, 1, 5, 67, 9));
  }
  BOTH("sum over a long row (4097)", REDUCE, mmp_sum(in[0], 1, true), RND(-1, 1, 3, 4097));
  BOTH("sum over dim 1 of a transposed view", REDUCE, mmp_sum(view_t(in[0], 0, 1), 1, true), RND(-1, 1, 33, 17));
  BOTH("argmax", EXACT, mmp_argmax(in[0]), RND(-1, 1, 7, 1000));
  BOTH("argmax of a transposed view", EXACT, mmp_argmax(view_t(in[0], 0, 1)), RND(-1, 1, 300, 7));
  for (int d = 0; d < 4; d++) {
    char name[64];
    snprintf(name, sizeof name, "softmax over dim %d", d);
    BOTH(name, TOL(1e-6, 1e-5), mmp_softmax(in[0], d), RND(-8, 8, 2, 3, 77, 5));
  }
  BOTH("softmax over a transposed view", TOL(1e-6, 1e-5), mmp_softmax(view_t(in[0], 0, 1), 1), RND(-8, 8, 40, 9));
}

static void test_gemm(void) {
  BOTH("matmul [2,3,33,65] @ [65,17]", GEMM32, mmp_matmul(in[0], in[1], false, false), RND(-1, 1, 2, 3, 33, 65),
       RND(-1, 1, 65, 17));
  BOTH("matmul trans_a, trans_b", GEMM32, mmp_matmul(in[0], in[1], true, true), RND(-1, 1, 4, 65, 33),
       RND(-1, 1, 4, 17, 65));
  BOTH("matmul batch broadcast [1,9,31] @ [4,31,12]", GEMM32, mmp_matmul(in[0], in[1], false, false),
       RND(-1, 1, 1, 9, 31), RND(-1, 1, 4, 31, 12));
  BOTH("matmul of a permuted view (row stride 24)", GEMM32, mmp_matmul(T(mmp_permute(in[0], (int[]){1, 0, 2})), in[1], false, false),
       RND(-1, 1, 5, 3, 8), RND(-1, 1, 3, 8, 6));
  BOTH("matmul of a column-strided view (copied first)", GEMM32,
       mmp_matmul(T(mmp_slice(in[0], 2, 0, 16, 2)), in[1], false, false), RND(-1, 1, 2, 5, 16), RND(-1, 1, 2, 8, 3));
  BOTH("matmul vector x matrix [1,300] @ [300,1]", GEMM32, mmp_matmul(in[0], in[1], false, false), RND(-1, 1, 1, 300),
       RND(-1, 1, 300, 1));
  BOTH("linear with bias [2,77,320] x [640,320]", GEMM32, mmp_linear(in[0], in[1], in[2]), RND(-1, 1, 2, 77, 320),
       RND(-0.1, 0.1, 640, 320), RND(-1, 1, 640));
  BOTH("linear without bias", GEMM32, mmp_linear(in[0], in[1], NULL), RND(-1, 1, 5, 64), RND(-0.2, 0.2, 3, 64));
  BOTH("conv2d 3x3 pad 1 + bias", GEMM32, mmp_conv2d(in[0], in[1], in[2], 1, 1, 1, 1, 1, 1, 1), RND(-1, 1, 2, 8, 19, 17),
       RND(-0.3, 0.3, 16, 8, 3, 3), RND(-1, 1, 16));
  BOTH("conv2d stride 2, no bias", GEMM32, mmp_conv2d(in[0], in[1], NULL, 2, 2, 1, 1, 1, 1, 1), RND(-1, 1, 1, 4, 16, 16),
       RND(-0.3, 0.3, 6, 4, 3, 3));
  BOTH("conv2d groups 2, dilation 2, asymmetric", GEMM32, mmp_conv2d(in[0], in[1], in[2], 1, 2, 2, 1, 2, 1, 2),
       RND(-1, 1, 2, 6, 11, 13), RND(-0.3, 0.3, 4, 3, 3, 2), RND(-1, 1, 4));
  BOTH("conv2d 1x1 + bias", GEMM32, mmp_conv2d(in[0], in[1], in[2], 1, 1, 0, 0, 1, 1, 1), RND(-1, 1, 2, 32, 8, 8),
       RND(-0.3, 0.3, 48, 32, 1, 1), RND(-1, 1, 48));
  BOTH("conv2d 1x1 groups 4", GEMM32, mmp_conv2d(in[0], in[1], NULL, 1, 1, 0, 0, 1, 1, 4), RND(-1, 1, 2, 8, 5, 5),
       RND(-0.3, 0.3, 12, 2, 1, 1));
  BOTH("conv2d 3x3 C=4 -> 320 at 32x32", GEMM32, mmp_conv2d(in[0], in[1], in[2], 1, 1, 1, 1, 1, 1, 1),
       RND(-1, 1, 2, 4, 32, 32), RND(-0.3, 0.3, 320, 4, 3, 3), RND(-1, 1, 320));
}

static void test_nn(void) {
  BOTH("group_norm 32 groups [2,64,9,7]", NORM, mmp_group_norm(in[0], 32, in[1], in[2], 1e-5), RND(-3, 5, 2, 64, 9, 7),
       RND(0.5, 1.5, 64), RND(-1, 1, 64));
  BOTH("group_norm, no affine, 3-D input", NORM, mmp_group_norm(in[0], 4, NULL, NULL, 1e-6), RND(-3, 5, 3, 8, 100));
  BOTH("group_norm, a large group (64x64 spatial)", NORM, mmp_group_norm(in[0], 2, in[1], in[2], 1e-5),
       RND(-3, 5, 1, 8, 64, 64), RND(0.5, 1.5, 8), RND(-1, 1, 8));
  BOTH("layer_norm [2,77,768]", NORM, mmp_layer_norm(in[0], in[1], in[2], 1e-5), RND(-3, 5, 2, 77, 768),
       RND(0.5, 1.5, 768), RND(-1, 1, 768));
  BOTH("layer_norm, no affine, odd width", NORM, mmp_layer_norm(in[0], NULL, NULL, 1e-6), RND(-3, 5, 9, 37));
  BOTH("upsample_nearest2x", EXACT, mmp_upsample_nearest2x(in[0]), RND(-1, 1, 2, 3, 5, 7));
  BOTH("avg_pool2d k2 s2", ELEM, mmp_avg_pool2d(in[0], 2, 2, 0), RND(-1, 1, 2, 3, 8, 10));
  BOTH("avg_pool2d k3 s2 pad 1", ELEM, mmp_avg_pool2d(in[0], 3, 2, 1), RND(-1, 1, 2, 3, 9, 9));
  BOTH("max_pool2d k3 s1 pad 1", EXACT, mmp_max_pool2d(in[0], 3, 1, 1), RND(-1, 1, 2, 3, 9, 8));
  BOTH("avg_pool2d k3 s1 pad 1 without padding", ELEM, mmp_avg_pool2d_ex(in[0], 3, 1, 1, false), RND(-1, 1, 2, 3, 9, 8));
  BOTH("resize_bilinear 9x8 -> 299x299", ELEM, mmp_resize_bilinear(in[0], 299, 299, false), RND(-1, 1, 2, 3, 9, 8));
  BOTH("resize_bilinear 40x36 -> 13x17 align_corners", ELEM, mmp_resize_bilinear(in[0], 13, 17, true),
       RND(-1, 1, 1, 2, 40, 36));
  BOTH("timestep_embedding (flip, shift 1)", TOL(2e-6, 1e-5),
       mmp_timestep_embedding(in[0], 320, true, 1.0, 1.0, 10000.0), RND(0, 1000, 5));
  BOTH("timestep_embedding (no flip, shift 0, odd dim, scale 2)", TOL(2e-6, 1e-5),
       mmp_timestep_embedding(in[0], 33, false, 0.0, 2.0, 10000.0), RND(0, 1000, 3));

  /* embedding: ids made on the host */
  int64_t ids64[6] = {0, 5, 48, 2, 2, 31};
  int32_t ids32[6] = {3, 1, 4, 1, 5, 9};
  int64_t ish[2] = {2, 3};
  mmp_tensor_t *tab = RND(-1, 1, 49, 16);
  mmp_tensor_t *i64c = mmp_tensor_from_data(cpu, MMP_I64, 2, ish, ids64);
  mmp_tensor_t *i32c = mmp_tensor_from_data(cpu, MMP_I32, 2, ish, ids32);
  mmp_tensor_t *tabg = on_gpu(tab), *i64g = on_gpu(i64c), *i32g = on_gpu(i32c);
  check("embedding i64 ids", mmp_embedding(tab, i64c), mmp_embedding(tabg, i64g), EXACT);
  check("embedding i32 ids", mmp_embedding(tab, i32c), mmp_embedding(tabg, i32g), EXACT);
  ids64[4] = 49;
  mmp_tensor_t *badg = mmp_tensor_from_data(gpu, MMP_I64, 2, ish, ids64);
  mmp_tensor_t *e = mmp_embedding(tabg, badg);
  ok(e == NULL && mmp_error_code() == MMP_EINVAL, "embedding: an id outside the table is MMP_EINVAL");
  like(mmp_error_last(), "id 49 at position 4", "  the message names the id and its position");
  mmp_tensor_unref(e);
  mmp_tensor_unref(badg);
  mmp_tensor_unref(tab);
  mmp_tensor_unref(i64c);
  mmp_tensor_unref(i32c);
  mmp_tensor_unref(tabg);
  mmp_tensor_unref(i64g);
  mmp_tensor_unref(i32g);
}

/* u8 key mask [B, Lk] with about a third masked, and one batch row fully masked if @all_row. */
static mmp_tensor_t *key_mask(int64_t B, int64_t Lk, bool all_row) {
  int64_t sh[2] = {B, Lk};
  mmp_tensor_t *m = mmp_tensor_new(cpu, MMP_U8, 2, sh);
  uint8_t *d = mmp_tensor_data(m);
  for (int64_t i = 0; i < B * Lk; i++) d[i] = urand() < 0.33;
  if (all_row)
    for (int64_t j = 0; j < Lk; j++) d[j] = 1;
  return m;
}

static void test_attention(void) {
  BOTH("attention D=40, self 77, no mask", ATTN, mmp_attention(in[0], in[1], in[2], NULL, false, 0),
       RND(-1, 1, 2, 8, 77, 40), RND(-1, 1, 2, 8, 77, 40), RND(-1, 1, 2, 8, 77, 40));
  BOTH("attention D=64, cross 300 -> 77, key mask", ATTN, mmp_attention(in[0], in[1], in[2], in[3], false, 0),
       RND(-1, 1, 2, 2, 300, 64), RND(-1, 1, 2, 2, 77, 64), RND(-1, 1, 2, 2, 77, 64), key_mask(2, 77, false));
  BOTH("attention causal, D=64, L=129", ATTN, mmp_attention(in[0], in[1], in[2], NULL, true, 0.1),
       RND(-2, 2, 1, 3, 129, 64), RND(-2, 2, 1, 3, 129, 64), RND(-1, 1, 1, 3, 129, 64));
  BOTH("attention causal + mask, one batch fully masked (zeros)", ATTN,
       mmp_attention(in[0], in[1], in[2], in[3], true, 0), RND(-1, 1, 2, 2, 50, 32), RND(-1, 1, 2, 2, 50, 32),
       RND(-1, 1, 2, 2, 50, 32), key_mask(2, 50, true));
  BOTH("attention D=160 (SD 1.5 deepest level), Dv=160", ATTN,
       mmp_attention(in[0], in[1], in[2], NULL, false, 0), RND(-1, 1, 1, 2, 64, 160), RND(-1, 1, 1, 2, 64, 160),
       RND(-1, 1, 1, 2, 64, 160));
  BOTH("attention D=72, Dv=24, large scores", TOL(1e-4, 1e-4), mmp_attention(in[0], in[1], in[2], NULL, false, 1.0),
       RND(-3, 3, 1, 1, 33, 72), RND(-3, 3, 1, 1, 45, 72), RND(-1, 1, 1, 1, 45, 24));
  BOTH("attention 1024 tokens (32x32 latent), D=40", ATTN, mmp_attention(in[0], in[1], in[2], NULL, false, 0),
       RND(-1, 1, 1, 8, 1024, 40), RND(-1, 1, 1, 8, 1024, 40), RND(-1, 1, 1, 8, 1024, 40));
}

/* f16/bf16 inputs through mmp_backend_compute; the reference is the CPU op in
 * f32 on the same rounded values. */
static mmp_tensor_t *lowp_run(mmp_op_t op, const mmp_op_params_t *p, mmp_tensor_t *const *cin, int n,
                              mmp_dtype_t dt, mmp_dtype_t out_dt, int ond, const int64_t *oshape) {
  const mmp_tensor_t *srcs[4] = {0};
  mmp_tensor_t *tmp[4] = {0};
  for (int i = 0; i < n; i++) {
    mmp_tensor_t *g = on_gpu(cin[i]);
    tmp[i] = (i == 3) ? g : mmp_convert(g, dt); /* slot 3 is the attention mask */
    if (i != 3) mmp_tensor_unref(g);
    srcs[i] = tmp[i];
  }
  mmp_tensor_t *dst = mmp_tensor_new(gpu, out_dt, ond, oshape);
  if (dst && mmp_backend_compute(gpu, op, p, srcs, n, dst) < 0) {
    mmp_tensor_unref(dst);
    dst = NULL;
  }
  for (int i = 0; i < n; i++) mmp_tensor_unref(tmp[i]);
  if (dst && out_dt != MMP_F32) {
    mmp_tensor_t *f = mmp_convert(dst, MMP_F32);
    mmp_tensor_unref(dst);
    dst = f;
  }
  return dst;
}

/* A CPU f32 tensor holding @t's values rounded to @dt. */
static mmp_tensor_t *rounded(mmp_tensor_t *t, mmp_dtype_t dt) {
  mmp_tensor_t *a = mmp_convert(t, dt), *b = mmp_convert(a, MMP_F32);
  mmp_tensor_unref(a);
  return b;
}

static void test_lowp(void) {
  mmp_dtype_t dts[2] = {MMP_F16, MMP_BF16};
  for (int k = 0; k < 2; k++) {
    mmp_dtype_t dt = dts[k];
    const char *dn = mmp_dtype_name(dt);
    /* accumulations in f32 on both sides: only the order differs, but an
     * f16/bf16 output is rounded once more */
    double rt = dt == MMP_F16 ? 2e-3 : 1e-2;
    char name[128];
    for (int outk = 0; outk < 2; outk++) {
      mmp_dtype_t odt = outk ? dt : MMP_F32;
      double tol = outk ? rt : 2e-4;
      mmp_tensor_t *a = RND(-1, 1, 3, 70, 96), *b = RND(-1, 1, 3, 96, 50);
      mmp_tensor_t *ar = rounded(a, dt), *br = rounded(b, dt);
      mmp_tensor_t *ref = mmp_matmul(ar, br, false, false);
      mmp_tensor_t *in2[2] = {a, b};
      snprintf(name, sizeof name, "matmul %s inputs -> %s (tensor cores, f32 accumulation)", dn, mmp_dtype_name(odt));
      check(name, ref, lowp_run(MMP_OP_MATMUL, NULL, in2, 2, dt, odt, 3, ref->shape), tol, tol);
      mmp_tensor_unref(a);
      mmp_tensor_unref(b);
      mmp_tensor_unref(ar);
      mmp_tensor_unref(br);
    }
    {
      mmp_tensor_t *x = RND(-1, 1, 40, 320), *w = RND(-0.1, 0.1, 128, 320), *bias = RND(-1, 1, 128);
      mmp_tensor_t *xr = rounded(x, dt), *wr = rounded(w, dt), *brr = rounded(bias, dt);
      mmp_tensor_t *ref = mmp_linear(xr, wr, brr);
      mmp_tensor_t *in3[3] = {x, w, bias};
      snprintf(name, sizeof name, "linear %s inputs + bias -> f32", dn);
      check(name, ref, lowp_run(MMP_OP_LINEAR, NULL, in3, 3, dt, MMP_F32, 2, ref->shape), 2e-4, 2e-4);
      mmp_tensor_unref(x);
      mmp_tensor_unref(w);
      mmp_tensor_unref(bias);
      mmp_tensor_unref(xr);
      mmp_tensor_unref(wr);
      mmp_tensor_unref(brr);
    }
    {
      mmp_tensor_t *x = RND(-1, 1, 2, 16, 12, 12), *w = RND(-0.3, 0.3, 32, 16, 3, 3), *bias = RND(-1, 1, 32);
      mmp_tensor_t *xr = rounded(x, dt), *wr = rounded(w, dt), *brr = rounded(bias, dt);
      mmp_tensor_t *ref = mmp_conv2d(xr, wr, brr, 1, 1, 1, 1, 1, 1, 1);
      mmp_tensor_t *in3[3] = {x, w, bias};
      mmp_op_params_t p = {{0}, {1, 1, 1, 1, 1, 1, 1}};
      snprintf(name, sizeof name, "conv2d 3x3 %s inputs -> %s", dn, dn);
      check(name, ref, lowp_run(MMP_OP_CONV2D, &p, in3, 3, dt, dt, 4, ref->shape), rt, rt);
      mmp_tensor_unref(x);
      mmp_tensor_unref(w);
      mmp_tensor_unref(bias);
      mmp_tensor_unref(xr);
      mmp_tensor_unref(wr);
      mmp_tensor_unref(brr);
    }
    {
      mmp_tensor_t *q = RND(-1, 1, 2, 4, 70, 80), *kk = RND(-1, 1, 2, 4, 77, 80), *v = RND(-1, 1, 2, 4, 77, 80);
      mmp_tensor_t *m = key_mask(2, 77, false);
      mmp_tensor_t *qr = rounded(q, dt), *kr = rounded(kk, dt), *vr = rounded(v, dt);
      double scale = 1.0 / sqrt(80.0);
      mmp_tensor_t *ref = mmp_attention(qr, kr, vr, m, false, scale);
      mmp_tensor_t *in4[4] = {q, kk, v, m};
      mmp_op_params_t p = {{scale}, {0}};
      snprintf(name, sizeof name, "attention %s inputs, key mask -> %s", dn, dn);
      check(name, ref, lowp_run(MMP_OP_ATTENTION, &p, in4, 4, dt, dt, 4, ref->shape), rt, rt);
      mmp_tensor_unref(q);
      mmp_tensor_unref(kk);
      mmp_tensor_unref(v);
      mmp_tensor_unref(m);
      mmp_tensor_unref(qr);
      mmp_tensor_unref(kr);
      mmp_tensor_unref(vr);
    }
  }
}

static void test_rng(void) {
  int64_t sh[2] = {3, 1001};
  struct {
    mmp_cuda_dist_t dist;
    const char *name;
  } cases[3] = {{MMP_CUDA_UNIFORM, "uniform"}, {MMP_CUDA_NORMAL, "normal"}, {MMP_CUDA_RANDINT, "randint [-5, 1000)"}};
  for (int k = 0; k < 3; k++) {
    mmp_rng_t *g = mmp_rng_new(1234, MMP_RNG_PHILOX);
    mmp_tensor_t *skip = mmp_rng_rand(g, cpu, 1, (int64_t[]){17}); /* advance the stream: offset 17 */
    mmp_tensor_t *ref = cases[k].dist == MMP_CUDA_UNIFORM  ? mmp_rng_rand(g, cpu, 2, sh)
                        : cases[k].dist == MMP_CUDA_NORMAL ? mmp_rng_randn(g, cpu, 2, sh)
                                                           : mmp_rng_randint(g, cpu, -5, 1000, 2, sh);
    mmp_tensor_t *got = mmp_tensor_new(gpu, cases[k].dist == MMP_CUDA_RANDINT ? MMP_I64 : MMP_F32, 2, sh);
    int rc = mmp_cuda_philox_fill(got, 1234, 17, cases[k].dist, -5, 1000);
    char name[96];
    snprintf(name, sizeof name, "philox %s on the GPU equals the CPU generator (draws 17..)", cases[k].name);
    if (rc < 0) {
      mmp_tensor_unref(got);
      got = NULL;
    }
    /* normal: Box-Muller in double on both; CUDA's log/cos are within 2 ulp
     * of glibc's in double, which moves the f32 result by at most 1 ulp */
    if (cases[k].dist == MMP_CUDA_NORMAL)
      check(name, ref, got, 1e-6, 2e-7);
    else
      check(name, ref, got, EXACT);
    mmp_tensor_unref(skip);
    mmp_rng_free(g);
  }
}

static void test_memory(void) {
  /* steady state: the same sequence of shapes twice reaches cudaMalloc only the first time */
  mmp_tensor_t *x = on_gpu(RND(-1, 1, 2, 4, 16, 16)), *w = on_gpu(RND(-1, 1, 8, 4, 3, 3));
  mmp_pool_stats_t a, b;
  for (int round = 0; round < 2; round++) {
    mmp_tensor_t *y = mmp_conv2d(x, w, NULL, 1, 1, 1, 1, 1, 1, 1);
    mmp_tensor_t *z = mmp_silu(y), *s = mmp_softmax(z, 3), *t = mmp_sum(s, 1, true);
    mmp_tensor_unref(y);
    mmp_tensor_unref(z);
    mmp_tensor_unref(s);
    mmp_tensor_unref(t);
    mmp_backend_pool_stats(gpu, round ? &b : &a);
  }
  ok(b.os_allocs == a.os_allocs && b.requests > a.requests, "arena: a repeated pass makes no new cudaMalloc (%llu, %llu)",
     (unsigned long long)a.os_allocs, (unsigned long long)b.os_allocs);
  ok(b.pool_hits > a.pool_hits, "arena: the second pass is served from the cache");
  mmp_tensor_unref(x);
  mmp_tensor_unref(w);

  /* out of memory: a clear MMP_ENOMEM naming the size and the free memory */
  int64_t huge[2] = {1LL << 20, 1LL << 28}; /* 2^48 f32 = 1 PiB */
  mmp_tensor_t *h = mmp_tensor_new(gpu, MMP_F32, 2, huge);
  ok(h == NULL && mmp_error_code() == MMP_ENOMEM, "a 1 PiB tensor fails with MMP_ENOMEM");
  like(mmp_error_last(), "out of device memory allocating 1125899906842624 bytes", "  the message says how much");
  like(mmp_error_last(), "MiB free of", "  and how much is free");
  mmp_tensor_unref(h);
  mmp_tensor_t *after = mmp_tensor_zeros(gpu, MMP_F32, 2, (int64_t[]){4, 4});
  ok(after != NULL, "the backend works after an out-of-memory error");
  mmp_tensor_unref(after);

  mmp_backend_pool_trim(gpu);
  mmp_backend_pool_stats(gpu, &b);
  ok(b.bytes_cached == 0, "pool_trim returns the cache to the driver");

  mmp_cuda_info_t info;
  ok(mmp_cuda_info(gpu, &info) == 0 && info.sm_count > 0 && info.total_mem > 0, "device info: %s, cc %d.%d, %d SMs",
     info.name, info.cc_major, info.cc_minor, info.sm_count);
  ok(mmp_cuda_info(cpu, &info) == MMP_EINVAL, "device info of the CPU backend is MMP_EINVAL");

  /* mixing devices stays an error (no silent copies) */
  mmp_tensor_t *c1 = RND(-1, 1, 4), *g1 = on_gpu(c1);
  mmp_tensor_t *mix = mmp_add(c1, g1);
  ok(mix == NULL && mmp_error_code() == MMP_EDEVICE, "cpu + cuda operands: MMP_EDEVICE");
  mmp_tensor_unref(mix);
  mmp_tensor_unref(c1);
  mmp_tensor_unref(g1);
}

int main(void) {
  cpu = mmp_backend_get("cpu");
  gpu = mmp_backend_get("cuda");
  if (!gpu) {
    printf("1..0 # SKIP %s\n", mmp_error_last()); /* "no CUDA device: <why>" */
    return 0;
  }
#ifdef MMP_TEST_SANITIZED
  if (!getenv("MMP_TEST_CUDA_UNDER_ASAN"))
    skip_all("CUDA tests are not run under ASan (the CUDA runtime's mappings collide with its shadow memory); "
             "run them in the plain build and under compute-sanitizer, or set MMP_TEST_CUDA_UNDER_ASAN=1 "
             "with ASAN_OPTIONS=protect_shadow_gap=0");
#endif
  ok(mmp_backend_device(gpu) == MMP_DEVICE_CUDA && strcmp(mmp_backend_name(gpu), "cuda") == 0,
     "mmp_backend_get(\"cuda\") is the CUDA backend");
  ok(mmp_backend_get("auto") == gpu, "\"auto\" picks CUDA when a device exists");
  test_copies();
  test_elementwise();
  test_reductions();
  test_gemm();
  test_nn();
  test_attention();
  test_lowp();
  test_rng();
  test_memory();
  return done_testing();
}
#endif
