/* tests/test_core_autograd.c - the tape: compositions of ops against grad.h called directly and finite differences. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/optim.h>

#include "tap.h"

static mmp_backend_t *cpu;
static uint64_t lcg = 0x9e3779b97f4a7c15ull;

static double urand(void) { /* [-1, 1) */
  lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(lcg >> 11) / (double)(1ull << 52) - 1.0;
}

static mmp_tensor_t *rnd(int ndim, const int64_t *shape, double scale) {
  mmp_tensor_t *t = mmp_tensor_new(cpu, MMP_F32, ndim, shape);
  float *p = mmp_tensor_data(t);
  for (int64_t i = 0; i < mmp_tensor_numel(t); i++) p[i] = (float)(scale * urand());
  return t;
}

static mmp_tensor_t *signs(const mmp_tensor_t *like) {
  mmp_tensor_t *t = mmp_tensor_new(cpu, MMP_F32, like->ndim, like->shape);
  float *p = mmp_tensor_data(t);
  for (int64_t i = 0; i < mmp_tensor_numel(t); i++) p[i] = urand() < 0 ? -1.0f : 1.0f;
  return t;
}

static double dot(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  mmp_tensor_t *ca = mmp_contiguous((mmp_tensor_t *)a), *cb = mmp_contiguous((mmp_tensor_t *)b);
  const float *x = mmp_tensor_data(ca), *y = mmp_tensor_data(cb);
  double s = 0;
  for (int64_t i = 0; i < mmp_tensor_numel(a); i++) s += (double)x[i] * y[i];
  mmp_tensor_unref(ca);
  mmp_tensor_unref(cb);
  return s;
}

/* A forward: leaves (and fixed data in @user) -> an output y. The loss is
 * L = sum(y * T) for a fixed random T: the tape's seed is T, and the finite
 * differences sum y * T in double on the host (f32 outputs, no rounding of
 * one f32 loss value). */
typedef mmp_tensor_t *(*fwd_fn)(void *user, mmp_tensor_t **leaves);

typedef struct fcase {
  const char *name;
  fwd_fn f;
  void *user;
  int nleaves;
  mmp_tensor_t **leaves;
  const char **names;
  mmp_tensor_t *seed; /* T, set by check_fd */
} fcase_t;

/* (L(x + h d) - L(x - h d)) / 2h for leaf @k, without a tape. */
static double central(const fcase_t *c, int k, const mmp_tensor_t *d, double h) {
  mmp_tensor_t *save = c->leaves[k];
  mmp_tensor_t *xp = mmp_axpby(1.0, save, h, d), *xm = mmp_axpby(1.0, save, -h, d);
  c->leaves[k] = xp;
  mmp_tensor_t *lp = c->f(c->user, c->leaves);
  c->leaves[k] = xm;
  mmp_tensor_t *lm = c->f(c->user, c->leaves);
  c->leaves[k] = save;
  double r = (dot(lp, c->seed) - dot(lm, c->seed)) / (2 * h);
  mmp_tensor_unref(lp);
  mmp_tensor_unref(lm);
  mmp_tensor_unref(xp);
  mmp_tensor_unref(xm);
  return r;
}

/* Tape gradients of every leaf vs finite differences along a ±1 direction:
 * <grad, d> must match the central differences at h = 4e-2 and 2e-2
 * combined by Richardson's rule (which cancels their h^2 error) within
 * 2e-3 relative (floor 1e-3: directions whose terms cancel). */
static void check_fd(fcase_t *c) {
  mmp_tape_t *tape = mmp_tape_new();
  for (int k = 0; k < c->nleaves; k++) mmp_tape_watch(tape, c->names[k], c->leaves[k]);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *y = c->f(c->user, c->leaves);
  mmp_tape_set_current(prev);
  ok(y != NULL, "%s: forward under the tape (%zu nodes)", c->name, mmp_tape_size(tape));
  c->seed = rnd(y->ndim, y->shape, 1.0);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  int rc = mmp_tape_backward(tape, y, c->seed, grads);
  if (!ok(rc == 0, "%s: backward", c->name)) diag("%s", mmp_error_last());
  ok(mmp_tape_size(tape) == 0, "%s: the tape is empty after backward", c->name);
  const double h = 4e-2;
  for (int k = 0; k < c->nleaves; k++) {
    mmp_tensor_t *g = mmp_tensormap_get(grads, c->names[k]);
    if (!ok(g && mmp_tensor_same_shape(g, c->leaves[k]), "%s: gradient of %s has its shape", c->name, c->names[k]))
      continue;
    mmp_tensor_t *d = signs(c->leaves[k]);
    double want = dot(g, d);
    double fd = (4 * central(c, k, d, h / 2) - central(c, k, d, h)) / 3;
    double err = fabs(fd - want) / fmax(fabs(want), 1e-3);
    if (!ok(err <= 2e-3, "%s: d%s by finite differences (rel %.2g)", c->name, c->names[k], err))
      diag("  tape %.8g, finite differences %.8g", want, fd);
    mmp_tensor_unref(d);
  }
  mmp_tensor_unref(y);
  mmp_tensor_unref(c->seed);
  c->seed = NULL;
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
}

/* ------------------------------------------------------------------ cases */

/* residual reuse and broadcasting: silu(x * w + x) + x, w [C] over [N, L, C] */
static mmp_tensor_t *f_residual(void *user, mmp_tensor_t **l) {
  mmp_tensor_t *x = l[0], *w = l[1], *b = l[2];
  mmp_tensor_t *xw = mmp_mul(x, w), *h = mmp_add(xw, x), *hb = mmp_sub(h, b), *s = mmp_silu(hb);
  (void)user;
  mmp_tensor_t *y = mmp_add(s, x);
  mmp_tensor_unref(xw);
  mmp_tensor_unref(h);
  mmp_tensor_unref(hb);
  mmp_tensor_unref(s);
  return y;
}

/* views: permute, reshape (a copy), strided slice, concat, unsqueeze/squeeze, broadcast_to, transpose */
static mmp_tensor_t *f_views(void *user, mmp_tensor_t **l) {
  mmp_tensor_t *x = l[0]; /* [2, 3, 4] */
  int perm[3] = {2, 0, 1};
  int64_t s2[2] = {4, 6};
  mmp_tensor_t *p = mmp_permute(x, perm), *r = mmp_reshape(p, 2, s2), *sl = mmp_slice(r, 1, 1, 6, 2); /* [4, 3] */
  mmp_tensor_t *t = mmp_transpose(sl, 0, 1);                                                          /* [3, 4] */
  mmp_tensor_t *u = mmp_unsqueeze(t, 0);                                                              /* [1, 3, 4] */
  int64_t bs[3] = {2, 3, 4};
  mmp_tensor_t *b = mmp_broadcast_to(u, 3, bs);
  mmp_tensor_t *parts[2] = {b, x};
  mmp_tensor_t *c = mmp_concat(parts, 2, 2); /* [2, 3, 8] */
  (void)user;
  mmp_tensor_t *y = mmp_mul(c, c);
  mmp_tensor_t *all[] = {p, r, sl, t, u, b, c};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  return y;
}

/* multi-head attention with a key mask (and causal): q/k/v/o projections */
typedef struct attn_data {
  mmp_tensor_t *mask;
  bool causal;
} attn_data_t;

static mmp_tensor_t *heads(mmp_tensor_t *x, int H) { /* [B, L, H*D] -> [B, H, L, D] */
  int64_t s[4] = {x->shape[0], x->shape[1], H, x->shape[2] / H};
  int perm[4] = {0, 2, 1, 3};
  mmp_tensor_t *r = mmp_reshape(x, 4, s), *p = mmp_permute(r, perm);
  mmp_tensor_unref(r);
  return p;
}

static mmp_tensor_t *f_attention(void *user, mmp_tensor_t **l) {
  attn_data_t *ad = user;
  mmp_tensor_t *x = l[0], *wq = l[1], *wk = l[2], *wv = l[3], *wo = l[4], *bo = l[5];
  mmp_tensor_t *q = mmp_linear(x, wq, NULL), *k = mmp_linear(x, wk, NULL), *v = mmp_linear(x, wv, NULL);
  mmp_tensor_t *qh = heads(q, 2), *kh = heads(k, 2), *vh = heads(v, 2);
  mmp_tensor_t *a = mmp_attention(qh, kh, vh, ad->mask, ad->causal, 0);
  int perm[4] = {0, 2, 1, 3};
  int64_t s3[3] = {x->shape[0], x->shape[1], -1};
  mmp_tensor_t *ap = mmp_permute(a, perm), *ar = mmp_reshape(ap, 3, s3);
  mmp_tensor_t *o = mmp_linear(ar, wo, bo), *y = mmp_add(o, x);
  mmp_tensor_t *all[] = {q, k, v, qh, kh, vh, a, ap, ar, o};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  return y;
}

/* conv -> group norm + silu -> stride-2 conv -> upsample -> group norm, residual */
static mmp_tensor_t *f_conv(void *user, mmp_tensor_t **l) {
  mmp_tensor_t *x = l[0], *w1 = l[1], *b1 = l[2], *gw = l[3], *gb = l[4], *w2 = l[5];
  mmp_tensor_t *h = mmp_conv2d(x, w1, b1, 1, 1, 1, 1, 1, 1, 1);
  mmp_tensor_t *n = mmp_group_norm_silu(h, 2, gw, gb, 1e-5);
  mmp_tensor_t *d = mmp_conv2d(n, w2, NULL, 2, 2, 1, 1, 1, 1, 1);
  mmp_tensor_t *u = mmp_upsample_nearest2x(d);
  mmp_tensor_t *g = mmp_group_norm(u, 2, gw, NULL, 1e-5);
  (void)user;
  mmp_tensor_t *y = mmp_add(g, x);
  mmp_tensor_t *all[] = {h, n, d, u, g};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  return y;
}

/* embedding (a repeated id) -> layer norm -> linear -> gelu -> softmax, scaled */
typedef struct emb_data {
  mmp_tensor_t *ids;
} emb_data_t;

static mmp_tensor_t *f_embed(void *user, mmp_tensor_t **l) {
  emb_data_t *ed = user;
  mmp_tensor_t *tab = l[0], *lw = l[1], *lb = l[2], *w = l[3], *b = l[4];
  mmp_tensor_t *e = mmp_embedding(tab, ed->ids), *n = mmp_layer_norm(e, lw, lb, 1e-5);
  mmp_tensor_t *y = mmp_linear(n, w, b), *g = mmp_gelu(y), *s = mmp_softmax(g, -1), *sc = mmp_scale(s, 3.0, 0.1);
  mmp_tensor_t *m = mmp_mean(sc, 1, false), *t = mmp_tanh(m);
  mmp_tensor_t *all[] = {e, n, y, g, s, sc, m};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  return t;
}

static void free_leaves(int n, mmp_tensor_t **l) {
  for (int i = 0; i < n; i++) mmp_tensor_unref(l[i]);
}

static void test_compositions(void) {
  {
    int64_t sx[3] = {2, 3, 4}, sw[1] = {4}, sb[2] = {3, 1};
    mmp_tensor_t *l[3] = {rnd(3, sx, 1.0), rnd(1, sw, 1.0), rnd(2, sb, 1.0)};
    const char *names[3] = {"x", "w", "b"};
    fcase_t c = {"residual+broadcast", f_residual, NULL, 3, l, names, NULL};
    check_fd(&c);
    free_leaves(3, l);
  }
  {
    int64_t sx[3] = {2, 3, 4};
    mmp_tensor_t *l[1] = {rnd(3, sx, 1.0)};
    const char *names[1] = {"x"};
    fcase_t c = {"views", f_views, NULL, 1, l, names, NULL};
    check_fd(&c);
    free_leaves(1, l);
  }
  for (int causal = 0; causal < 2; causal++) {
    int64_t sx[3] = {2, 5, 8}, sw[2] = {8, 8}, sb[1] = {8}, sm[2] = {2, 5};
    mmp_tensor_t *l[6] = {rnd(3, sx, 1.0), rnd(2, sw, 1.0), rnd(2, sw, 1.0), rnd(2, sw, 0.5), rnd(2, sw, 0.5),
                          rnd(1, sb, 0.5)};
    const char *names[6] = {"x", "wq", "wk", "wv", "wo", "bo"};
    uint8_t mask[10] = {0, 0, 1, 0, 1, 0, 0, 0, 0, 1};
    attn_data_t ad = {mmp_tensor_from_data(cpu, MMP_U8, 2, sm, mask), causal != 0};
    fcase_t c = {causal ? "attention (key mask, causal)" : "attention (key mask)", f_attention, &ad, 6, l, names, NULL};
    check_fd(&c);
    mmp_tensor_unref(ad.mask);
    free_leaves(6, l);
  }
  {
    int64_t sx[4] = {2, 4, 6, 6}, sw1[4] = {4, 4, 3, 3}, s4[1] = {4};
    mmp_tensor_t *l[6] = {rnd(4, sx, 1.0), rnd(4, sw1, 0.3), rnd(1, s4, 0.3), rnd(1, s4, 1.0), rnd(1, s4, 0.5),
                          rnd(4, sw1, 0.3)};
    const char *names[6] = {"x", "conv1.weight", "conv1.bias", "norm.weight", "norm.bias", "conv2.weight"};
    fcase_t c = {"conv+group_norm_silu", f_conv, NULL, 6, l, names, NULL};
    check_fd(&c);
    free_leaves(6, l);
  }
  {
    int64_t st[2] = {7, 6}, s6[1] = {6}, sw[2] = {5, 6}, s5[1] = {5}, si[2] = {2, 4};
    int64_t ids[8] = {1, 3, 3, 0, 6, 2, 3, 5};
    mmp_tensor_t *l[5] = {rnd(2, st, 1.0), rnd(1, s6, 1.0), rnd(1, s6, 0.5), rnd(2, sw, 0.5), rnd(1, s5, 0.5)};
    const char *names[5] = {"tok.weight", "ln.weight", "ln.bias", "fc.weight", "fc.bias"};
    emb_data_t ed = {mmp_tensor_from_data(cpu, MMP_I64, 2, si, ids)};
    fcase_t c = {"embedding+layer_norm+linear+gelu+softmax", f_embed, &ed, 5, l, names, NULL};
    check_fd(&c);
    mmp_tensor_unref(ed.ids);
    free_leaves(5, l);
  }
}

static bool equal(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || !mmp_tensor_same_shape(a, b)) return false;
  mmp_tensor_t *ca = mmp_contiguous((mmp_tensor_t *)a), *cb = mmp_contiguous((mmp_tensor_t *)b);
  bool r = memcmp(mmp_tensor_data(ca), mmp_tensor_data(cb), mmp_tensor_nbytes(a)) == 0;
  mmp_tensor_unref(ca);
  mmp_tensor_unref(cb);
  return r;
}

/* The tape calls exactly the grad.h functions a hand-written backward
 * would: the same bits. A weight used twice (x @ w, then (.) @ w) sums. */
static void test_vs_grad_h(void) {
  int64_t sx[2] = {3, 4}, sw[2] = {4, 4}, sb[1] = {4};
  mmp_tensor_t *x = rnd(2, sx, 1.0), *w = rnd(2, sw, 0.5), *b = rnd(1, sb, 0.5), *t = rnd(2, sx, 0.5);
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tape_watch(tape, "w", w);
  mmp_tape_watch(tape, "b", b);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *y1 = mmp_linear(x, w, b), *a = mmp_gelu(y1), *y2 = mmp_linear(a, w, NULL);
  mmp_tensor_t *loss = mmp_mse_loss(y2, t);
  mmp_tape_set_current(prev);
  is_int(mmp_tape_size(tape), 4, "4 nodes: linear, gelu, linear, mse_loss");
  mmp_tensormap_t *grads = mmp_tensormap_new();
  ok(mmp_tape_backward(tape, loss, NULL, grads) == 0, "backward of a shared weight");
  /* by hand */
  mmp_tensor_t *g2 = NULL, *ga = NULL, *gw2 = NULL, *gy1 = NULL, *gw1 = NULL, *gb = NULL;
  mmp_mse_loss_backward(1.0, y2, t, &g2, NULL);
  mmp_linear_backward(g2, a, w, &ga, &gw2, NULL);
  mmp_tensor_t *gg = mmp_gelu_backward(ga, y1);
  mmp_linear_backward(gg, x, w, &gy1, &gw1, &gb);
  mmp_tensor_t *gw = mmp_add(gw2, gw1);
  ok(equal(mmp_tensormap_get(grads, "w"), gw), "dw = the two uses summed, bit-identical to grad.h by hand");
  ok(equal(mmp_tensormap_get(grads, "b"), gb), "db bit-identical to grad.h by hand");
  ok(mmp_tensormap_get(grads, "x") == NULL, "x was not watched: no gradient");
  mmp_tensor_t *all[] = {y1, a, y2, loss, g2, ga, gw2, gy1, gw1, gb, gg, gw};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  mmp_tensor_unref(x);
  mmp_tensor_unref(w);
  mmp_tensor_unref(b);
  mmp_tensor_unref(t);
}

/* Accumulation into the map, untracked ops, errors. */
static void test_rules(void) {
  int64_t sx[2] = {2, 3};
  mmp_tensor_t *x = rnd(2, sx, 1.0), *c = rnd(2, sx, 1.0), *t = rnd(2, sx, 1.0);
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *u = mmp_silu(c);
  mmp_tape_set_current(prev);
  is_int(mmp_tape_size(tape), 0, "ops on untracked tensors record nothing");
  ok(!mmp_tape_tracks(tape, u), "their results are untracked");
  mmp_tensor_unref(u);

  mmp_tensormap_t *grads = mmp_tensormap_new();
  mmp_tensor_t *first = NULL;
  for (int round = 0; round < 2; round++) {
    ok(mmp_tape_watch(tape, "x", x) == 0, "watch x (round %d)", round);
    ok(mmp_tape_watch(tape, "x2", x) == MMP_EINVAL, "watching one tensor twice is refused");
    prev = mmp_tape_set_current(tape);
    mmp_tensor_t *y = mmp_mul(x, c), *loss = mmp_mse_loss(y, t);
    mmp_tape_set_current(prev);
    ok(mmp_tape_backward(tape, loss, NULL, grads) == 0, "backward (round %d)", round);
    if (round == 0) first = mmp_clone(mmp_tensormap_get(grads, "x"));
    mmp_tensor_unref(y);
    mmp_tensor_unref(loss);
  }
  mmp_tensor_t *twice = mmp_scale(first, 2.0, 0.0);
  ok(equal(mmp_tensormap_get(grads, "x"), twice), "a second backward adds to the map's gradient");
  mmp_tensor_unref(twice);
  mmp_tensor_unref(first);

  /* a gradient through an op without a backward */
  mmp_tape_watch(tape, "x", x);
  prev = mmp_tape_set_current(tape);
  mmp_tensor_t *cl = mmp_clamp(x, -0.5, 0.5), *l2 = mmp_mse_loss(cl, t);
  mmp_tensor_t *dst = mmp_tensor_zeros(cpu, MMP_F32, 2, sx);
  int rc = mmp_copy_into(dst, x);
  ok(rc == MMP_EUNSUPPORTED, "copy_into from a tracked tensor is refused: %s", mmp_error_last());
  mmp_tape_set_current(prev);
  ok(mmp_copy_into(dst, x) == 0, "and allowed with no tape current");
  rc = mmp_tape_backward(tape, l2, NULL, grads);
  ok(rc == MMP_EUNSUPPORTED && strstr(mmp_error_last(), "clamp"), "backward through clamp: %s", mmp_error_last());
  ok(mmp_tape_backward(tape, l2, NULL, grads) == MMP_EINVAL, "a replayed tape no longer tracks its output");
  mmp_tensor_unref(cl);
  mmp_tensor_unref(l2);
  mmp_tensor_unref(dst);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  ok(mmp_tape_current() == NULL, "no tape current at the end");
  mmp_tensor_unref(x);
  mmp_tensor_unref(c);
  mmp_tensor_unref(t);
}

/* The grad-ready hook: each leaf told once, as soon as its gradient is
 * final (a leaf read only late in the forward is told first), with what a
 * backward without the hook delivers; an error from the hook stops it. */
typedef struct ready_log {
  int n, fail_at;
  char names[8][8];
  mmp_tensormap_t *got; /* clones of what the hook saw */
} ready_log_t;

static int on_ready(void *user, const char *name, mmp_tensor_t *g) {
  ready_log_t *r = user;
  if (r->n < 8) snprintf(r->names[r->n], sizeof r->names[r->n], "%s", name);
  r->n++;
  if (r->fail_at && r->n == r->fail_at) return mmp_error_set(MMP_ECANCELED, "stop here");
  return mmp_tensormap_set(r->got, name, mmp_clone(g));
}

static void ready_graph(mmp_tape_t *tape, mmp_tensor_t *const *v, mmp_tensormap_t *grads, int *rc) {
  static const char *const names[4] = {"x", "w1", "b", "w2"};
  for (int i = 0; i < 4; i++) mmp_tape_watch(tape, names[i], v[i]);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  /* x, w1, b first read by node 0; w2 by node 2; w1 again by node 3 */
  mmp_tensor_t *y1 = mmp_linear(v[0], v[1], v[2]), *a = mmp_gelu(y1), *y2 = mmp_linear(a, v[3], NULL);
  mmp_tensor_t *y3 = mmp_linear(y2, v[1], NULL), *loss = mmp_mse_loss(y3, v[4]);
  mmp_tape_set_current(prev);
  *rc = mmp_tape_backward(tape, loss, NULL, grads);
  mmp_tensor_t *all[] = {y1, a, y2, y3, loss};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
}

static void test_grad_ready(void) {
  int64_t sx[2] = {3, 4}, sw[2] = {4, 4}, sb[1] = {4};
  mmp_tensor_t *v[5] = {rnd(2, sx, 1.0), rnd(2, sw, 0.5), rnd(1, sb, 0.5), rnd(2, sw, 0.5), rnd(2, sx, 0.5)};
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tensormap_t *want = mmp_tensormap_new(), *grads = mmp_tensormap_new();
  int rc;
  ready_graph(tape, v, want, &rc);
  ready_log_t r = {0, 0, {{0}}, mmp_tensormap_new()};
  mmp_tape_on_grad_ready(tape, on_ready, &r);
  ready_graph(tape, v, grads, &rc);
  ok(rc == 0 && r.n == 4, "backward with the hook: 4 leaves told (%d)", r.n);
  ok(!strcmp(r.names[0], "w2") && !strcmp(r.names[1], "x") && !strcmp(r.names[2], "w1") && !strcmp(r.names[3], "b"),
     "in the order they became final: w2 (first read by the 3rd op) before x, w1, b (%s %s %s %s)", r.names[0],
     r.names[1], r.names[2], r.names[3]);
  int same = 0;
  for (size_t i = 0; i < mmp_tensormap_size(want); i++) {
    const char *nm = mmp_tensormap_name(want, i);
    same += equal(mmp_tensormap_get(r.got, nm), mmp_tensormap_at(want, i)) &&
            equal(mmp_tensormap_get(grads, nm), mmp_tensormap_at(want, i));
  }
  ok(same == 4 && mmp_tensormap_size(grads) == 4, "the hook saw, and the map holds, the hook-less gradients bit for bit");
  mmp_tensormap_free(r.got);

  /* a leaf read twice by one op is told once; an error of the hook stops the backward */
  mmp_tensor_t *x = v[0];
  for (int fail = 0; fail < 2; fail++) {
    ready_log_t q = {0, fail, {{0}}, mmp_tensormap_new()};
    mmp_tape_on_grad_ready(tape, on_ready, &q);
    mmp_tape_watch(tape, "x", x);
    mmp_tape_t *prev = mmp_tape_set_current(tape);
    mmp_tensor_t *y = mmp_mul(x, x), *loss = mmp_mse_loss(y, v[4]);
    mmp_tape_set_current(prev);
    mmp_tensormap_t *g = mmp_tensormap_new();
    rc = mmp_tape_backward(tape, loss, NULL, g);
    if (!fail)
      ok(rc == 0 && q.n == 1, "x * x: x told once (%d)", q.n);
    else
      ok(rc == MMP_ECANCELED && strstr(mmp_error_last(), "grad-ready hook for x: stop here"),
         "the hook's error stops the backward: %s", mmp_error_last());
    mmp_tensor_unref(y);
    mmp_tensor_unref(loss);
    mmp_tensormap_free(g);
    mmp_tensormap_free(q.got);
  }
  mmp_tape_on_grad_ready(tape, NULL, NULL);
  mmp_tensormap_free(want);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  for (int i = 0; i < 5; i++) mmp_tensor_unref(v[i]);
}

/* The optimizer step inside the backward (doc/training.md): each parameter
 * updated from the grad-ready hook with mmp_adamw_step_one and its gradient
 * dropped at once equals mmp_adamw_step after the backward, bit for bit.
 * The graph reads parameters again after their first use: w2 inside a
 * checkpoint region (whose replay reads it in the backward) and again by a
 * later op, w1 outside and inside the region, w3 through a view. Were a
 * parameter updated before the walk had passed every op that reads it, the
 * region's replay or a later op's backward would see the new weight. */
typedef struct sib_params {
  mmp_tensor_t *w[4]; /* w1, b, w2, w3 */
} sib_params_t;

static mmp_tensor_t *sib_region(void *user, int nin, mmp_tensor_t *const *in) {
  (void)nin;
  const sib_params_t *p = user;
  mmp_tensor_t *a = mmp_linear(in[0], p->w[2], NULL), *g = mmp_gelu(a), *c = mmp_linear(in[0], p->w[0], NULL);
  mmp_tensor_t *r = mmp_add(g, c);
  mmp_tensor_unref(a);
  mmp_tensor_unref(g);
  mmp_tensor_unref(c);
  return r;
}

typedef struct sib_hook {
  mmp_adamw_t *opt;
  mmp_tensormap_t *grads;
  int calls;
  size_t most; /* the most gradients the map held at once */
} sib_hook_t;

static int sib_ready(void *user, const char *name, mmp_tensor_t *g) {
  sib_hook_t *h = user;
  h->calls++;
  if (mmp_tensormap_size(h->grads) > h->most) h->most = mmp_tensormap_size(h->grads);
  int rc = mmp_adamw_step_one(h->opt, name, g);
  return mmp_tensormap_remove(h->grads, name) == 1 ? rc : mmp_error_set(MMP_EINVAL, "%s not in the map", name);
}

static int sib_step(sib_params_t *p, mmp_adamw_t *opt, const mmp_tensor_t *x, const mmp_tensor_t *target, bool in_bw,
                    sib_hook_t *h) {
  static const char *const names[4] = {"w1", "b", "w2", "w3"};
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tensormap_t *grads = mmp_tensormap_new();
  for (int i = 0; i < 4; i++) mmp_tape_watch(tape, names[i], p->w[i]);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  int64_t flat = 16, sq[2] = {4, 4};
  mmp_tensor_t *h1 = mmp_linear(x, p->w[0], p->w[1]);
  mmp_tensor_t *in[1] = {h1};
  mmp_tensor_t *h2 = mmp_tape_checkpoint(sib_region, p, sizeof *p, 1, in, NULL);
  mmp_tensor_t *v1 = mmp_reshape(p->w[3], 1, &flat), *v2 = mmp_reshape(v1, 2, sq);
  mmp_tensor_t *y = mmp_linear(h2, v2, NULL), *z = mmp_linear(y, p->w[2], NULL), *loss = mmp_mse_loss(z, target);
  mmp_tape_set_current(prev);
  if (in_bw) {
    h->grads = grads;
    mmp_tape_on_grad_ready(tape, sib_ready, h);
  }
  int rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (rc == 0 && !in_bw) rc = mmp_adamw_step(opt, grads);
  if (rc == 0 && in_bw && mmp_tensormap_size(grads) != 0) rc = -1;
  mmp_tensor_t *all[] = {h1, h2, v1, v2, y, z, loss};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) mmp_tensor_unref(all[i]);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  return rc;
}

static void test_step_in_backward(void) {
  int64_t sx[2] = {3, 4}, sw[2] = {4, 4}, sb[1] = {4};
  mmp_tensor_t *x = rnd(2, sx, 1.0), *target = rnd(2, sx, 0.5);
  sib_params_t a, b, c;
  a.w[0] = rnd(2, sw, 0.5);
  a.w[1] = rnd(1, sb, 0.5);
  a.w[2] = rnd(2, sw, 0.5);
  a.w[3] = rnd(2, sw, 0.5);
  for (int i = 0; i < 4; i++) {
    b.w[i] = mmp_clone(a.w[i]);
    c.w[i] = mmp_clone(a.w[i]);
  }
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 0.05; /* large steps: a weight read after its update would show */
  mmp_adamw_t *oa = mmp_adamw_new(&hp), *ob = mmp_adamw_new(&hp), *oc = mmp_adamw_new(&hp);
  static const char *const names[4] = {"w1", "b", "w2", "w3"};
  for (int i = 0; i < 4; i++) {
    mmp_adamw_add_param(oa, names[i], a.w[i]);
    mmp_adamw_add_param(ob, names[i], b.w[i]);
    mmp_adamw_add_param(oc, names[i], c.w[i]);
  }
  sib_hook_t h = {ob, NULL, 0, 0}, hc = {oc, NULL, 0, 0};
  /* c: in the backward too, its moments moved to a file after the first step */
  char dir[64] = "/tmp/mmp-adamw-XXXXXX";
  const char *tmp = getenv("TMPDIR");
  if (tmp && *tmp && strlen(tmp) < 40) snprintf(dir, sizeof dir, "%s/mmp-adamw-XXXXXX", tmp);
  int rc = mkdtemp(dir) ? 0 : -1, rcf = 0;
  for (int step = 0; step < 3 && rc == 0; step++) {
    rc = sib_step(&a, oa, x, target, false, NULL);
    if (rc == 0) rc = sib_step(&b, ob, x, target, true, &h);
    if (rc == 0 && step == 1 && (rcf = mmp_adamw_moments_to_file(oc, dir)) < 0) diag("%s", mmp_error_last());
    if (rc == 0) rc = sib_step(&c, oc, x, target, true, &hc);
  }
  ok(rcf == 0, "the moments moved to a file after a step");
  ok(rc == 0 && h.calls == 12, "3 steps each way; the hook updated 4 parameters a step (%d)", h.calls);
  ok(h.most == 1, "the map never held more than the gradient being used (%zu)", h.most);
  int same = 0;
  for (size_t i = 0; i < 4; i++) {
    mmp_tensor_t *ma, *va, *mb, *vb;
    int64_t sa, sb2;
    mmp_adamw_state(oa, i, NULL, NULL, &ma, &va, &sa);
    mmp_adamw_state(ob, i, NULL, NULL, &mb, &vb, &sb2);
    same += equal(a.w[i], b.w[i]) && equal(ma, mb) && equal(va, vb) && sa == 3 && sb2 == 3;
  }
  ok(same == 4, "parameters, moments and step counts bit-identical to mmp_adamw_step after the backward (%d of 4)",
     same);
  same = 0;
  for (size_t i = 0; i < 4; i++) {
    mmp_tensor_t *ma, *va, *mc, *vc;
    mmp_adamw_state(oa, i, NULL, NULL, &ma, &va, NULL);
    mmp_adamw_state(oc, i, NULL, NULL, &mc, &vc, NULL);
    same += equal(a.w[i], c.w[i]) && equal(ma, mc) && equal(va, vc);
  }
  ok(same == 4 && mmp_adamw_release_moments(oc) == 0,
     "with the moments in a file (read back through the mapping): the same bits (%d of 4)", same);
  ok(mmp_adamw_add_param(oc, "late", x) == MMP_EINVAL, "no parameter added after the moments went to a file: %s",
     mmp_error_last());
  ok(rmdir(dir) == 0, "the moments' file was unlinked at once (%s is empty)", dir);
  /* one parameter's update: the errors leave everything as it was */
  mmp_tensor_t *w0 = mmp_clone(b.w[0]);
  rc = mmp_adamw_step_one(ob, "nope", x);
  ok(rc == MMP_ENOENT, "step_one of an unknown name: %s", mmp_error_last());
  rc = mmp_adamw_step_one(ob, "w1", x);
  ok(rc == MMP_ESHAPE && equal(w0, b.w[0]), "step_one with a gradient of another shape changes nothing: %s",
     mmp_error_last());
  mmp_tensor_unref(w0);
  mmp_adamw_free(oa);
  mmp_adamw_free(ob);
  mmp_adamw_free(oc);
  for (int i = 0; i < 4; i++) {
    mmp_tensor_unref(a.w[i]);
    mmp_tensor_unref(b.w[i]);
    mmp_tensor_unref(c.w[i]);
  }
  mmp_tensor_unref(x);
  mmp_tensor_unref(target);
}

int main(void) {
  cpu = mmp_backend_get("cpu");
  test_compositions();
  test_vs_grad_h();
  test_rules();
  test_grad_ready();
  test_step_in_backward();
  return done_testing();
}
