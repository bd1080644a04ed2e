/* tests/test_core_dropout.c - mmp_dropout bit-exact against torch's F.dropout on the CPU (fixtures by
 * tests/gen_dropout.py): outputs, the stream across calls, the backward on a tape, checkpoint replay;
 * mmp_drop_path against timm's two drop_path recipes and mmp_linspace_f32 against torch.linspace
 * (tests/gen_drop_path.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/autograd.h>
#include <mmpipe/error.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static mmp_backend_t *cpu;
static mmp_safetensors_t *st;

static mmp_tensor_t *get(const char *fmt, int k) {
  char name[64];
  snprintf(name, sizeof name, fmt, k);
  return mmp_safetensors_get(st, name, cpu, MMP_DTYPE_COUNT);
}

/* Bitwise equality of two f32 tensors of one shape (any layout). */
static bool same(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || !mmp_tensor_same_shape(a, b)) return false;
  mmp_tensor_t *ca = mmp_contiguous((mmp_tensor_t *)a), *cb = mmp_contiguous((mmp_tensor_t *)b);
  bool eq = ca && cb && !memcmp(mmp_tensor_data(ca), mmp_tensor_data(cb), mmp_tensor_nbytes(ca));
  mmp_tensor_unref(ca);
  mmp_tensor_unref(cb);
  return eq;
}

static double scalar(mmp_tensor_t *t) {
  int64_t z[1] = {0};
  double v = t ? mmp_tensor_get(t, z) : -1;
  mmp_tensor_unref(t);
  return v;
}

/* One generator fixture's cases in order, each on a tape: case<k>.x (a
 * transposed view when case<k>.t), y = @op(x) against case<k>.y bit for
 * bit, and x's gradient for the upstream case<k>.g against case<k>.gx.
 * @op names the case in @what. Returns the number of cases. */
typedef mmp_tensor_t *(*case_op_t)(mmp_rng_t *g, mmp_tensor_t *x, int k, char *what, size_t cap);

static int run_cases(mmp_rng_t *g, case_op_t op) {
  int k;
  for (k = 0;; k++) {
    mmp_tensor_t *x = get("case%d.x", k);
    if (!x) break;
    bool t = scalar(get("case%d.t", k)) != 0;
    mmp_tensor_t *y_want = get("case%d.y", k), *gy = get("case%d.g", k), *gx_want = get("case%d.gx", k);
    mmp_tape_t *tape = mmp_tape_new();
    mmp_tape_watch(tape, "x", x);
    mmp_tape_t *prev = mmp_tape_set_current(tape);
    mmp_tensor_t *xv = t ? mmp_transpose(x, 0, 1) : mmp_tensor_ref(x);
    char what[128];
    mmp_tensor_t *y = op(g, xv, k, what, sizeof what);
    mmp_tape_set_current(prev);
    if (!ok(same(y, y_want), "case %d: %s%s [%lld...]: bit for bit", k, what, t ? " of a transposed view" : "",
            (long long)x->shape[0]))
      diag("%s", y ? "values differ" : mmp_error_last());
    mmp_tensormap_t *grads = mmp_tensormap_new();
    int rc = y ? mmp_tape_backward(tape, y, gy, grads) : -1;
    mmp_tensor_t *gx = mmp_tensormap_get(grads, "x");
    if (!ok(rc == 0 && same(gx, gx_want), "case %d: the gradient of x is torch's", k))
      diag("%s", rc ? mmp_error_last() : "values differ");
    mmp_tensormap_free(grads);
    mmp_tape_free(tape);
    mmp_tensor_unref(xv);
    mmp_tensor_unref(y);
    mmp_tensor_unref(x);
    mmp_tensor_unref(y_want);
    mmp_tensor_unref(gy);
    mmp_tensor_unref(gx_want);
  }
  return k;
}

/* After the cases the generator continues where torch's did ("after"). */
static void check_after(mmp_rng_t *g, mmp_safetensors_t *file, const char *what) {
  int64_t four = 4;
  mmp_tensor_t *after = mmp_rng_rand(g, cpu, 1, &four), *want = mmp_safetensors_get(file, "after", cpu, MMP_DTYPE_COUNT);
  ok(same(after, want), "the stream continues after the %s cases exactly where torch's does", what);
  mmp_tensor_unref(after);
  mmp_tensor_unref(want);
}

static mmp_tensor_t *dropout_op(mmp_rng_t *g, mmp_tensor_t *x, int k, char *what, size_t cap) {
  double p = scalar(get("case%d.p", k));
  snprintf(what, cap, "F.dropout(x, p = %g)", p);
  return mmp_dropout(g, x, p);
}

/* tests/gen_dropout.py's cases on one generator seeded as
 * torch.manual_seed(11): the noise (upstream times the saved mask) and the
 * stream after them are torch's. */
static void test_fixture(void) {
  mmp_rng_t *g = mmp_rng_new(11, MMP_RNG_TORCH);
  int k = run_cases(g, dropout_op);
  ok(k >= 8, "%d cases read", k);
  check_after(g, st, "dropout");
  mmp_rng_free(g);
}

/* mmp_rng_dropout_mask draws the noise of mmp_dropout (one uniform per element). */
static void test_mask(void) {
  mmp_rng_t *a = mmp_rng_new(7, MMP_RNG_TORCH), *b = mmp_rng_new(7, MMP_RNG_TORCH);
  int64_t shape[2] = {3, 11};
  mmp_tensor_t *ones = mmp_tensor_full(cpu, MMP_F32, 2, shape, 1.0);
  mmp_tensor_t *m = mmp_rng_dropout_mask(a, cpu, 0.25, 2, shape), *y = mmp_dropout(b, ones, 0.25);
  ok(same(m, y), "the mask is dropout of ones");
  bool vals = m != NULL;
  const float *d = m ? mmp_tensor_data(m) : NULL;
  for (int64_t i = 0; vals && i < 33; i++) vals = d[i] == 0.0f || d[i] == 1.0f / 0.75f;
  ok(vals, "the mask holds 0 or 1 / (1 - p)");
  ok(mmp_rng_uniform(a) == mmp_rng_uniform(b), "both streams advanced by the same count");
  mmp_tensor_unref(m);
  mmp_tensor_unref(y);
  mmp_tensor_unref(ones);
  mmp_rng_free(a);
  mmp_rng_free(b);
}

static void test_errors(void) {
  mmp_rng_t *g = mmp_rng_new(1, MMP_RNG_TORCH);
  int64_t s[1] = {4};
  mmp_tensor_t *x = mmp_tensor_full(cpu, MMP_F32, 1, s, 2.0), *xi = mmp_tensor_zeros(cpu, MMP_I64, 1, s);
  mmp_tensor_t *r;
  ok(!(r = mmp_dropout(g, x, 1.5)) && mmp_error_code() == MMP_EINVAL, "p > 1 refused: %s", mmp_error_last());
  ok(!(r = mmp_dropout(g, x, -0.1)) && mmp_error_code() == MMP_EINVAL, "p < 0 refused");
  ok(!(r = mmp_dropout(NULL, x, 0.1)) && mmp_error_code() == MMP_EINVAL, "NULL generator refused");
  ok(!(r = mmp_dropout(g, xi, 0.1)) && mmp_error_code() == MMP_EINVAL, "an i64 tensor refused: %s", mmp_error_last());
  ok(!(r = mmp_rng_dropout_mask(g, cpu, 0.0, 1, s)) && mmp_error_code() == MMP_EINVAL, "a mask with p = 0 refused");
  r = mmp_dropout(g, x, 0.0);
  ok(r == x, "p = 0 gives x itself");
  mmp_tensor_unref(r);
  mmp_tensor_unref(x);
  mmp_tensor_unref(xi);
  mmp_rng_free(g);
}

/* A checkpoint region that drops out: the replay draws the same noise, so
 * the gradient equals the plain tape's and the caller's stream is untouched. */
static mmp_tensor_t *region(void *user, int nin, mmp_tensor_t *const *in) {
  (void)nin;
  mmp_rng_t *g = *(mmp_rng_t **)user;
  mmp_tensor_t *h = mmp_dropout(g, in[0], 0.4);
  mmp_tensor_t *y = h ? mmp_mul(h, in[0]) : NULL;
  mmp_tensor_unref(h);
  return y;
}

static mmp_tensor_t *grad_of(mmp_rng_t *g, mmp_tensor_t *x, bool ckpt, double *next) {
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tape_watch(tape, "x", x);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *in[1] = {x};
  mmp_tensor_t *y = ckpt ? mmp_tape_checkpoint(region, &g, sizeof g, 1, in, g) : region(&g, 1, in);
  mmp_tape_set_current(prev);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  mmp_tensor_t *gy = y ? mmp_tensor_full(cpu, MMP_F32, x->ndim, x->shape, 1.0) : NULL;
  mmp_tensor_t *gx = NULL;
  if (y && mmp_tape_backward(tape, y, gy, grads) == 0) gx = mmp_tensor_ref(mmp_tensormap_get(grads, "x"));
  *next = mmp_rng_uniform(g);
  mmp_tensor_unref(gy);
  mmp_tensor_unref(y);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  return gx;
}

static void test_checkpoint(void) {
  int64_t s[2] = {6, 10};
  mmp_rng_t *data = mmp_rng_new(3, MMP_RNG_TORCH), *g1 = mmp_rng_new(9, MMP_RNG_TORCH), *g2 = mmp_rng_new(9, MMP_RNG_TORCH);
  mmp_tensor_t *x = mmp_rng_randn(data, cpu, 2, s);
  double n1, n2;
  mmp_tensor_t *a = grad_of(g1, x, false, &n1), *b = grad_of(g2, x, true, &n2);
  if (!ok(a && b && same(a, b), "a checkpointed dropout replays its draws: the same gradient")) diag("%s", mmp_error_last());
  ok(n1 == n2, "the caller's stream after the backward is the plain run's");
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_tensor_unref(x);
  mmp_rng_free(data);
  mmp_rng_free(g1);
  mmp_rng_free(g2);
}

/* drop_path.safetensors: the cases in order on one generator seeded as
 * torch.manual_seed(13), timm >= 0.5 and 0.4.12 interleaved, each on a
 * tape: output and gradient bit for bit, the stream after them. */
static int drop_path_recipes; /* bit 1 << draws of each case seen */

static mmp_tensor_t *drop_path_op(mmp_rng_t *g, mmp_tensor_t *x, int k, char *what, size_t cap) {
  double p = scalar(get("case%d.p", k));
  int draws = (int)scalar(get("case%d.draws", k));
  drop_path_recipes |= 1 << draws;
  snprintf(what, cap, "drop_path (%s, p = %g)", draws ? "timm 0.4.12" : "timm >= 0.5", p);
  return mmp_drop_path(g, x, p, (mmp_drop_path_draws_t)draws);
}

static void test_drop_path(mmp_safetensors_t *dp) {
  mmp_rng_t *g = mmp_rng_new(13, MMP_RNG_TORCH);
  mmp_safetensors_t *keep = st;
  st = dp;
  int k = run_cases(g, drop_path_op);
  ok(k >= 11 && drop_path_recipes == 3, "%d drop_path cases read, both recipes", k);
  check_after(g, dp, "drop_path");
  /* errors */
  int64_t s1[1] = {3};
  mmp_tensor_t *x = mmp_tensor_full(cpu, MMP_F32, 1, s1, 1.0), *x0 = mmp_tensor_full(cpu, MMP_F32, 0, NULL, 1.0);
  ok(!mmp_drop_path(g, x, 1.0, MMP_DROP_PATH_BERNOULLI) && mmp_error_code() == MMP_EINVAL, "drop_path p = 1 refused: %s",
     mmp_error_last());
  ok(!mmp_drop_path(g, x, -0.5, MMP_DROP_PATH_RAND) && mmp_error_code() == MMP_EINVAL, "drop_path p < 0 refused");
  ok(!mmp_drop_path(g, x0, 0.5, MMP_DROP_PATH_RAND) && mmp_error_code() == MMP_EINVAL, "drop_path of a 0-d tensor refused");
  ok(!mmp_drop_path(g, x, 0.5, (mmp_drop_path_draws_t)7) && mmp_error_code() == MMP_EINVAL, "unknown draws refused");
  ok(!mmp_drop_path(NULL, x, 0.5, MMP_DROP_PATH_RAND) && mmp_error_code() == MMP_EINVAL, "NULL generator refused");
  mmp_rng_t *n = mmp_rng_new(1, MMP_RNG_NUMPY);
  ok(!mmp_drop_path(n, x, 0.5, MMP_DROP_PATH_RAND) && mmp_error_code() == MMP_EUNSUPPORTED,
     "timm 0.4.12's torch.rand is refused on a numpy-mode generator");
  mmp_rng_free(n);
  mmp_tensor_unref(x);
  mmp_tensor_unref(x0);
  mmp_rng_free(g);
  /* torch.linspace(0, rate, depth): the per-block rates of a ViT */
  static const struct { int n; const char *rate; double r; } ls[] = {
      {24, "0.1", 0.1}, {12, "0.1", 0.1}, {2, "0.5", 0.5}, {1, "0.1", 0.1}, {40, "0.3", 0.3}};
  for (size_t i = 0; i < sizeof ls / sizeof *ls; i++) {
    char name[64];
    snprintf(name, sizeof name, "dpr.%d.%s", ls[i].n, ls[i].rate);
    mmp_tensor_t *w = mmp_safetensors_get(dp, name, cpu, MMP_DTYPE_COUNT);
    float got[64];
    int rc = mmp_linspace_f32(0.0, ls[i].r, ls[i].n, got);
    int bad = -1;
    for (int j = 0; w && rc == 0 && j < ls[i].n && bad < 0; j++) {
      int64_t z[1] = {j};
      if ((double)got[j] != mmp_tensor_get(w, z)) bad = j;
    }
    if (!ok(w && rc == 0 && w->shape[0] == ls[i].n && bad < 0, "mmp_linspace_f32(0, %s, %d) is torch.linspace's, bit for bit",
            ls[i].rate, ls[i].n))
      diag("first difference at %d", bad);
    mmp_tensor_unref(w);
  }
  ok(mmp_linspace_f32(0, 1, -1, NULL) == MMP_EINVAL, "linspace: negative steps refused");
  st = keep;
}

/* Shards: each of three generators in one state runs its rows of a
 * [7, 3, 5] batch (rows 0-1, 2-6 and an empty shard at 7); their outputs
 * put together are the whole batch's, and every generator ends where the
 * whole batch's does. For dropout, both drop path recipes. */
static void test_rows(void) {
  int64_t s[3] = {7, 3, 5};
  mmp_rng_t *data = mmp_rng_new(21, MMP_RNG_TORCH);
  mmp_tensor_t *x = mmp_rng_randn(data, cpu, 3, s);
  static const char *const what[3] = {"dropout", "drop_path (timm >= 0.5)", "drop_path (timm 0.4.12)"};
  for (int kind = 0; kind < 3; kind++) {
    mmp_rng_t *whole = mmp_rng_new(5, MMP_RNG_TORCH);
    mmp_tensor_t *want = kind == 0 ? mmp_dropout(whole, x, 0.4) : mmp_drop_path(whole, x, 0.4, (mmp_drop_path_draws_t)(kind - 1));
    static const int64_t cut[4][2] = {{0, 2}, {2, 7}, {7, 7}, {0, 7}};
    mmp_tensor_t *part[4] = {NULL};
    bool streams = true;
    double next = mmp_rng_uniform(whole);
    for (int c = 0; c < 4; c++) {
      mmp_rng_t *g = mmp_rng_new(5, MMP_RNG_TORCH);
      mmp_tensor_t *xs = mmp_slice(x, 0, cut[c][0], cut[c][1], 1);
      part[c] = kind == 0 ? mmp_dropout_rows(g, xs, 0.4, 7, cut[c][0])
                          : mmp_drop_path_rows(g, xs, 0.4, (mmp_drop_path_draws_t)(kind - 1), 7, cut[c][0]);
      streams = streams && part[c] && mmp_rng_uniform(g) == next;
      mmp_rng_free(g);
      mmp_tensor_unref(xs);
    }
    mmp_tensor_t *joined = part[0] && part[1] ? mmp_concat(part, 2, 0) : NULL;
    ok(same(joined, want), "%s: two shards put together are the whole batch's", what[kind]);
    ok(part[2] && part[2]->shape[0] == 0 && same(part[3], want), "%s: an empty shard, and one shard of all rows", what[kind]);
    ok(streams, "%s: every shard's generator ends where the whole batch's does", what[kind]);
    for (int c = 0; c < 4; c++) mmp_tensor_unref(part[c]);
    mmp_tensor_unref(joined);
    mmp_tensor_unref(want);
    mmp_rng_free(whole);
  }
  mmp_rng_t *g = mmp_rng_new(5, MMP_RNG_TORCH);
  ok(!mmp_dropout_rows(g, x, 0.4, 6, 0) && mmp_error_code() == MMP_EINVAL, "rows past the batch refused: %s", mmp_error_last());
  ok(!mmp_drop_path_rows(g, x, 0.4, MMP_DROP_PATH_RAND, 9, -1) && mmp_error_code() == MMP_EINVAL, "a negative offset refused");
  mmp_rng_free(g);
  mmp_tensor_unref(x);
  mmp_rng_free(data);
}

int main(void) {
  cpu = mmp_backend_get("cpu");
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/rng/dropout.safetensors", tap_srcdir());
  if (!(st = mmp_safetensors_open(path))) {
    ok(0, "open %s: %s", path, mmp_error_last());
    return done_testing();
  }
  test_fixture();
  test_mask();
  test_errors();
  test_checkpoint();
  test_rows();
  snprintf(path, sizeof path, "%s/tests/fixtures/rng/drop_path.safetensors", tap_srcdir());
  mmp_safetensors_t *dp = mmp_safetensors_open(path);
  if (ok(dp != NULL, "open %s", path)) test_drop_path(dp);
  else diag("%s", mmp_error_last());
  mmp_safetensors_close(dp);
  mmp_safetensors_close(st);
  return done_testing();
}
