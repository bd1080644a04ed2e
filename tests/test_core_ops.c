/* tests/test_core_ops.c - every op against PyTorch fixtures (tests/gen_ops.py), and the pool in steady state.
 *
 * Tolerances (also in doc/tensor.md): max |got - expected| <= 1e-5 * max |expected|
 * for fp32 ops, except:
 *   - timestep_embedding: 3e-4 absolute. The phase t * freq reaches ~1e3, where
 *     one float ulp of the frequency (torch's vectorised expf and libm's may
 *     differ by one) moves the phase by ~6e-5; sin/cos inherit that.
 *   - exact (0) for data movement and selection: convert (bit patterns), concat,
 *     embedding, upsample, max_pool2d, argmax, relu, abs, clamp.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "mmpipe/rng.h"
#include "tap.h"

static mmp_backend_t *cpu;

/* "key=value" from a case description; @def when absent. */
static double param(const char *desc, const char *key, double def) {
  char pat[64];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(desc, pat);
  return p ? strtod(p + strlen(pat), NULL) : def;
}

static void param2(const char *desc, const char *key, int *a, int *b) {
  char pat[64];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(desc, pat);
  *a = *b = 0;
  if (p) sscanf(p + strlen(pat), "%d,%d", a, b);
}

static mmp_tensor_t *input(mmp_safetensors_t *st, const char *cname, const char *desc, int i) {
  char name[256], flag[16];
  snprintf(name, sizeof name, "%s/%c", cname, "abcdefgh"[i]);
  mmp_dtype_t dt;
  if (mmp_safetensors_info(st, name, &dt, NULL, NULL) < 0) return NULL;
  mmp_tensor_t *t = mmp_safetensors_get(st, name, cpu, MMP_DTYPE_COUNT);
  snprintf(flag, sizeof flag, "T%d", i);
  if (t && param(desc, flag, 0) != 0) { /* stored transposed: view it back */
    mmp_tensor_t *v = mmp_transpose(t, -1, -2);
    mmp_tensor_unref(t);
    t = v;
  }
  return t;
}

typedef enum { TOL_REL, TOL_ABS, TOL_EXACT } tol_kind_t;

static void tolerance(const char *op, tol_kind_t *kind, double *tol) {
  static const char *const exact[] = {"convert", "concat", "embedding", "upsample_nearest2x", "max_pool2d",
                                      "argmax", "relu", "abs", "clamp", NULL};
  *kind = TOL_REL;
  *tol = 1e-5;
  for (int i = 0; exact[i]; i++)
    if (strcmp(op, exact[i]) == 0) *kind = TOL_EXACT, *tol = 0;
  if (strcmp(op, "timestep_embedding") == 0) *kind = TOL_ABS, *tol = 3e-4;
}

static mmp_tensor_t *run_op(const char *op, const char *desc, mmp_tensor_t **in, int nin) {
  mmp_tensor_t *a = in[0], *b = nin > 1 ? in[1] : NULL, *c = nin > 2 ? in[2] : NULL, *d = nin > 3 ? in[3] : NULL;
  if (!strcmp(op, "add")) return mmp_add(a, b);
  if (!strcmp(op, "sub")) return mmp_sub(a, b);
  if (!strcmp(op, "mul")) return mmp_mul(a, b);
  if (!strcmp(op, "div")) return mmp_div(a, b);
  if (!strcmp(op, "axpby")) return mmp_axpby(param(desc, "alpha", 1), a, param(desc, "beta", 1), b);
  if (!strcmp(op, "scale")) return mmp_scale(a, param(desc, "alpha", 1), param(desc, "beta", 0));
  if (!strcmp(op, "clamp")) return mmp_clamp(a, param(desc, "lo", 0), param(desc, "hi", 0));
  if (!strcmp(op, "sqrt")) return mmp_sqrt(a);
  if (!strcmp(op, "exp")) return mmp_exp(a);
  if (!strcmp(op, "abs")) return mmp_abs(a);
  if (!strcmp(op, "silu")) return mmp_silu(a);
  if (!strcmp(op, "gelu")) return mmp_gelu(a);
  if (!strcmp(op, "gelu_tanh")) return mmp_gelu_tanh(a);
  if (!strcmp(op, "quick_gelu")) return mmp_quick_gelu(a);
  if (!strcmp(op, "sigmoid")) return mmp_sigmoid(a);
  if (!strcmp(op, "tanh")) return mmp_tanh(a);
  if (!strcmp(op, "relu")) return mmp_relu(a);
  if (!strcmp(op, "geglu")) return mmp_geglu(a);
  int dim = (int)param(desc, "dim", 0);
  bool keep = param(desc, "keepdim", 0) != 0;
  if (!strcmp(op, "sum")) return mmp_sum(a, dim, keep);
  if (!strcmp(op, "mean")) return mmp_mean(a, dim, keep);
  if (!strcmp(op, "max")) return mmp_max(a, dim, keep);
  if (!strcmp(op, "argmax")) return mmp_argmax(a);
  if (!strcmp(op, "matmul")) return mmp_matmul(a, b, param(desc, "trans_a", 0) != 0, param(desc, "trans_b", 0) != 0);
  if (!strcmp(op, "linear")) return mmp_linear(a, b, c);
  if (!strcmp(op, "conv2d") || !strcmp(op, "conv2d_relu")) {
    int sh, sw, ph, pw, dh, dw;
    param2(desc, "stride", &sh, &sw);
    param2(desc, "pad", &ph, &pw);
    param2(desc, "dil", &dh, &dw);
    if (!strcmp(op, "conv2d_relu")) return mmp_conv2d_relu(a, b, c, sh, sw, ph, pw, dh, dw, (int)param(desc, "groups", 1));
    return mmp_conv2d(a, b, c, sh, sw, ph, pw, dh, dw, (int)param(desc, "groups", 1));
  }
  if (!strcmp(op, "group_norm")) return mmp_group_norm(a, (int)param(desc, "groups", 1), b, c, param(desc, "eps", 1e-5));
  if (!strcmp(op, "layer_norm")) return mmp_layer_norm(a, b, c, param(desc, "eps", 1e-5));
  if (!strcmp(op, "softmax")) return mmp_softmax(a, dim);
  if (!strcmp(op, "attention")) return mmp_attention(a, b, c, d, param(desc, "causal", 0) != 0, param(desc, "scale", 0));
  if (!strcmp(op, "upsample_nearest2x")) return mmp_upsample_nearest2x(a);
  if (!strcmp(op, "resize_bicubic")) return mmp_resize_bicubic(a, (int64_t)param(desc, "oh", 1), (int64_t)param(desc, "ow", 1));
  int k = (int)param(desc, "kernel", 1), s = (int)param(desc, "stride", 1), p = (int)param(desc, "pad", 0);
  if (!strcmp(op, "avg_pool2d")) return mmp_avg_pool2d_ex(a, k, s, p, param(desc, "exclude_pad", 0) == 0);
  if (!strcmp(op, "resize_bilinear")) {
    int oh, ow;
    param2(desc, "size", &oh, &ow);
    return mmp_resize_bilinear(a, oh, ow, param(desc, "align_corners", 0) != 0);
  }
  if (!strcmp(op, "max_pool2d")) return mmp_max_pool2d(a, k, s, p);
  if (!strcmp(op, "embedding")) return mmp_embedding(a, b);
  if (!strcmp(op, "timestep_embedding"))
    return mmp_timestep_embedding(a, dim, param(desc, "flip", 0) != 0, param(desc, "shift", 1), param(desc, "scale", 1),
                                  param(desc, "max_period", 10000));
  if (!strcmp(op, "concat")) return mmp_concat(in, nin, dim);
  if (!strcmp(op, "convert")) {
    const char *q = strstr(desc, " dtype=");
    char dn[16] = "";
    mmp_dtype_t dt = MMP_F32;
    if (q) sscanf(q + 7, "%15s", dn);
    mmp_dtype_parse(dn, &dt);
    return mmp_convert(a, dt);
  }
  mmp_error_set(MMP_ENOENT, "test: unknown op %s", op);
  return NULL;
}

/* Compare @got with @want (any dtypes, same shape); returns the max abs error
 * (or bit mismatches for TOL_EXACT on 16-bit types). */
static bool compare(const char *cname, const mmp_tensor_t *got, const mmp_tensor_t *want, tol_kind_t kind, double tol) {
  char g1[128], g2[128];
  if (!got) {
    ok(0, "%s: op failed: %s", cname, mmp_error_last());
    return false;
  }
  if (!mmp_tensor_same_shape(got, want) || got->dtype != want->dtype) {
    ok(0, "%s: got %s, want %s", cname, mmp_tensor_describe(got, g1, sizeof g1),
       mmp_tensor_describe(want, g2, sizeof g2));
    return false;
  }
  int64_t n = mmp_tensor_numel(want);
  size_t nb = mmp_tensor_nbytes(want);
  unsigned char *gb = malloc(nb + 1), *wb = malloc(nb + 1);
  mmp_tensor_to_host(got, gb, nb);
  mmp_tensor_to_host(want, wb, nb);
  bool res;
  if (kind == TOL_EXACT && got->dtype != MMP_F32) {
    res = memcmp(gb, wb, nb) == 0;
    ok(res, "%s: %s identical", cname, mmp_tensor_describe(want, g2, sizeof g2));
  } else {
    mmp_tensor_t *gf = mmp_convert(got, MMP_F32), *wf = mmp_convert(want, MMP_F32);
    float *gv = malloc((size_t)n * 4 + 4), *wv = malloc((size_t)n * 4 + 4);
    mmp_tensor_to_host(gf, gv, (size_t)n * 4);
    mmp_tensor_to_host(wf, wv, (size_t)n * 4);
    double maxerr = 0, maxexp = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
      double e = gv[i] == wv[i] ? 0.0 : fabs((double)gv[i] - wv[i]);
      if (isnan(gv[i]) != isnan(wv[i])) e = INFINITY;
      if (isnan(gv[i]) && isnan(wv[i])) e = 0;
      if (e > maxerr || isnan(e)) maxerr = e, worst = i;
      if (fabs(wv[i]) > maxexp) maxexp = fabs(wv[i]);
    }
    double lim = kind == TOL_REL ? tol * maxexp : tol;
    res = maxerr <= lim;
    ok(res, "%s: %s max abs err %.3g <= %.3g", cname, mmp_tensor_describe(want, g2, sizeof g2), maxerr, lim);
    if (!res) diag("  worst at %lld: got %.9g want %.9g", (long long)worst, gv[worst], wv[worst]);
    free(gv);
    free(wv);
    mmp_tensor_unref(gf);
    mmp_tensor_unref(wf);
  }
  free(gb);
  free(wb);
  return res;
}

/* One pass over every case; with @check false nothing is reported (warm-up
 * and steady-state passes for the pool test). Returns the failures. */
static int run_all(mmp_safetensors_t *st, mmp_backend_t *be, bool check) {
  int fails = 0;
  for (size_t ci = 0; ci < mmp_safetensors_metadata_count(st); ci++) {
    const char *cname = mmp_safetensors_metadata_key(st, ci);
    const char *desc = mmp_safetensors_metadata(st, cname);
    char op[64];
    sscanf(desc, "%63s", op);
    mmp_tensor_t *in[8] = {NULL};
    int nin = 0;
    /* inputs are named a, b, c, ... ; a missing one (an optional bias) is NULL */
    for (int i = 0; i < 8; i++) {
      in[i] = input(st, cname, desc, i);
      if (in[i] && be != cpu) { /* the same case on another backend */
        mmp_tensor_t *moved = mmp_to_backend(in[i], be);
        mmp_tensor_unref(in[i]);
        in[i] = moved;
      }
      if (in[i]) nin = i + 1;
    }
    char oname[256];
    snprintf(oname, sizeof oname, "%s/out", cname);
    mmp_tensor_t *want = mmp_safetensors_get(st, oname, cpu, MMP_DTYPE_COUNT);
    mmp_tensor_t *got = run_op(op, desc, in, nin);
    if (got && be != cpu) {
      mmp_tensor_t *back = mmp_to_backend(got, cpu);
      mmp_tensor_unref(got);
      got = back;
    }
    if (check) {
      tol_kind_t kind;
      double tol;
      tolerance(op, &kind, &tol);
      if (!compare(cname, got, want, kind, tol)) fails++;
    } else if (!got) {
      fails++;
    }
    mmp_tensor_unref(got);
    mmp_tensor_unref(want);
    for (int i = 0; i < 8; i++) mmp_tensor_unref(in[i]);
  }
  return fails;
}

static void test_errors(void) {
  int64_t s4[4] = {1, 3, 5, 5}, w4[4] = {2, 4, 3, 3}, s2[2] = {3, 4}, s3[2] = {5, 6};
  mmp_tensor_t *x = mmp_tensor_zeros(cpu, MMP_F32, 4, s4), *w = mmp_tensor_zeros(cpu, MMP_F32, 4, w4);
  ok(mmp_conv2d(x, w, NULL, 1, 1, 1, 1, 1, 1, 1) == NULL, "conv2d channel mismatch refused");
  like(mmp_error_last(), "f32[2, 4, 3, 3]", "message names the weight shape");
  mmp_tensor_t *a = mmp_tensor_zeros(cpu, MMP_F32, 2, s2), *b = mmp_tensor_zeros(cpu, MMP_F32, 2, s3);
  ok(mmp_matmul(a, b, false, false) == NULL, "matmul inner mismatch refused");
  like(mmp_error_last(), "f32[3, 4]", "message names a");
  like(mmp_error_last(), "f32[5, 6]", "message names b");
  ok(mmp_linear(a, b, NULL) == NULL, "linear mismatch refused");
  is_int(mmp_error_code(), MMP_ESHAPE, "ESHAPE");
  ok(mmp_group_norm(x, 2, NULL, NULL, 1e-5) == NULL, "group_norm with 3 channels in 2 groups refused");
  ok(mmp_softmax(a, 2) == NULL, "softmax dim out of range");
  int64_t s5[2] = {2, 5};
  mmp_tensor_t *odd = mmp_tensor_zeros(cpu, MMP_F32, 2, s5);
  ok(mmp_geglu(odd) == NULL, "geglu of an odd last dim refused");
  mmp_tensor_unref(odd);
  int64_t ids_s[1] = {2};
  int64_t idv[2] = {1, 7};
  mmp_tensor_t *ids = mmp_tensor_from_data(cpu, MMP_I64, 1, ids_s, idv);
  ok(mmp_embedding(a, ids) == NULL, "embedding id out of range");
  like(mmp_error_last(), "id 7", "message names the id");
  mmp_tensor_t *q = mmp_tensor_zeros(cpu, MMP_F32, 4, s4);
  ok(mmp_attention(q, w, w, NULL, false, 0) == NULL, "attention shape mismatch refused");
  ok(mmp_silu(NULL) == NULL, "NULL input propagates");
  mmp_tensor_t *all[] = {x, w, a, b, ids, q};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mmp_tensor_unref(all[i]);
}

/* The fused group_norm + SiLU gives exactly silu(group_norm(x)), both of
 * which the fixtures check against PyTorch. */
static void test_group_norm_silu(mmp_backend_t *be) {
  static const int64_t shapes[][4] = {{2, 6, 5, 7}, {1, 4, 33, 1}, {2, 320, 8, 8}};
  static const int groups[] = {3, 2, 32};
  mmp_rng_t *g = mmp_rng_new(7, MMP_RNG_PHILOX);
  for (int c = 0; c < 3; c++) {
    int64_t C = shapes[c][1], cs[1] = {C};
    mmp_tensor_t *x = mmp_rng_randn(g, be, 4, shapes[c]);
    mmp_tensor_t *w = c == 1 ? NULL : mmp_rng_randn(g, be, 1, cs);
    mmp_tensor_t *b = c == 1 ? NULL : mmp_rng_randn(g, be, 1, cs);
    mmp_tensor_t *xs = mmp_scale(x, 3.0, 1.5); /* a mean and a spread to normalise away */
    mmp_tensor_unref(x);
    x = xs;
    mmp_tensor_t *gn = mmp_group_norm(x, groups[c], w, b, 1e-6);
    mmp_tensor_t *want = mmp_silu(gn), *got = mmp_group_norm_silu(x, groups[c], w, b, 1e-6);
    int64_t n = want ? mmp_tensor_numel(want) : 0;
    float *gv = malloc((size_t)n * 4 + 4), *wv = malloc((size_t)n * 4 + 4);
    bool same = got && want && mmp_tensor_same_shape(got, want) &&
                mmp_tensor_to_host(got, gv, (size_t)n * 4) == 0 &&
                mmp_tensor_to_host(want, wv, (size_t)n * 4) == 0 && memcmp(gv, wv, (size_t)n * 4) == 0;
    ok(same, "%s: group_norm_silu [%lld, %lld, %lld, %lld] / %d groups%s = silu(group_norm)",
       mmp_backend_name(be), (long long)shapes[c][0], (long long)C, (long long)shapes[c][2],
       (long long)shapes[c][3], groups[c], w ? "" : " (no affine)");
    if (!same && !got) diag("%s", mmp_error_last());
    free(gv);
    free(wv);
    mmp_tensor_unref(x);
    mmp_tensor_unref(w);
    mmp_tensor_unref(b);
    mmp_tensor_unref(gn);
    mmp_tensor_unref(want);
    mmp_tensor_unref(got);
  }
  int64_t s4[4] = {1, 3, 2, 2};
  mmp_tensor_t *x3 = mmp_tensor_zeros(be, MMP_F32, 4, s4);
  ok(mmp_group_norm_silu(x3, 2, NULL, NULL, 1e-5) == NULL, "group_norm_silu with 3 channels in 2 groups refused");
  like(mmp_error_last(), "group_norm_silu", "message names the op");
  mmp_tensor_unref(x3);
  mmp_rng_free(g);
}

/* A half-precision table (weights_dtype): its rows widened to f32 are the
 * rows of the table converted to f32, on every backend (CUDA gathers from
 * an f32 copy). */
static void test_embedding_half(mmp_backend_t *be) {
  mmp_rng_t *g = mmp_rng_new(5, MMP_RNG_PHILOX);
  int64_t ts[2] = {37, 24}, is[2] = {2, 3}, idv[6] = {0, 36, 5, 5, 17, 2};
  mmp_tensor_t *tab = mmp_rng_randn(g, be, 2, ts);
  mmp_tensor_t *ids_c = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 2, is, idv);
  mmp_tensor_t *ids = mmp_to_backend(ids_c, be);
  static const mmp_dtype_t dts[2] = {MMP_BF16, MMP_F16};
  for (int i = 0; i < 2; i++) {
    mmp_tensor_t *h = mmp_convert(tab, dts[i]), *hf = h ? mmp_convert(h, MMP_F32) : NULL;
    mmp_tensor_t *got = mmp_embedding(h, ids), *want = mmp_embedding(hf, ids);
    ok(got && want && got->dtype == MMP_F32 && got->ndim == 3 && got->shape[2] == 24,
       "embedding of a %s table on %s: f32 [2, 3, 24]", mmp_dtype_name(dts[i]), mmp_backend_name(be));
    mmp_tensor_t *gc = got ? mmp_to_backend(got, mmp_backend_get("cpu")) : NULL;
    mmp_tensor_t *wc = want ? mmp_to_backend(want, mmp_backend_get("cpu")) : NULL;
    ok(gc && wc && memcmp(mmp_tensor_data(gc), mmp_tensor_data(wc), 6 * 24 * sizeof(float)) == 0,
       "  equal to the rows of the table converted to f32");
    mmp_tensor_unref(gc);
    mmp_tensor_unref(wc);
    mmp_tensor_unref(got);
    mmp_tensor_unref(want);
    mmp_tensor_unref(h);
    mmp_tensor_unref(hf);
  }
  mmp_tensor_unref(tab);
  mmp_tensor_unref(ids);
  mmp_tensor_unref(ids_c);
  mmp_rng_free(g);
}

int main(void) {
  char path[1024];
  mmp_log_set_level(MMP_LOG_ERROR);
  cpu = mmp_backend_get("cpu");
  snprintf(path, sizeof path, "%s/tests/fixtures/ops/ops.safetensors", tap_srcdir());
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) {
    printf("Bail out! cannot open %s: %s\n", path, mmp_error_last());
    return 1;
  }
  diag("%zu cases, %d threads", mmp_safetensors_metadata_count(st), mmp_threads_get());
  run_all(st, cpu, true);

  /* steady state: the second pass over every op makes no OS allocation */
  mmp_pool_stats_t s1, s2;
  uint64_t h1, h2;
  mmp_backend_pool_stats(cpu, &s1);
  mmp_tensor_header_stats(&h1, NULL);
  is_int(run_all(st, cpu, false), 0, "second pass runs");
  mmp_backend_pool_stats(cpu, &s2);
  mmp_tensor_header_stats(&h2, NULL);
  is_int(s2.os_allocs - s1.os_allocs, 0, "second pass over all ops: no OS allocation (%llu pool requests)",
         (unsigned long long)(s2.requests - s1.requests));
  is_int(h2 - h1, 0, "second pass: no tensor-header malloc");

  /* every other backend runs the same cases against the same fixtures (the
   * CUDA backend, when built and a GPU is present) */
  mmp_backend_t *cuda = mmp_backend_get("cuda");
  if (cuda) {
    diag("running every case on the %s backend", mmp_backend_name(cuda));
    run_all(st, cuda, true);
  } else {
    diag("no CUDA backend: the cross-backend pass is skipped (%s)", mmp_error_last());
  }
  mmp_safetensors_close(st);

  test_group_norm_silu(cpu);
  if (cuda) test_group_norm_silu(cuda);
  test_embedding_half(cpu);
  if (cuda) test_embedding_half(cuda);
  test_errors();
  return done_testing();
}
