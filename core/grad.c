/* core/grad.c - the backward ops' front-end: checks, then kernels (backend ops) or compositions of forward ops. */
#include <math.h>
#include <string.h>

#include "core/tensor_impl.h"
#pragma GCC visibility push(default)
#include <mmpipe/grad.h>
#pragma GCC visibility pop

/* ------------------------------------------------------------------ helpers */

#define UNREF(t) (mmp_tensor_unref(t), (t) = NULL)

static void outs_clear(mmp_tensor_t **a, mmp_tensor_t **b, mmp_tensor_t **c) {
  if (a) *a = NULL;
  if (b) *b = NULL;
  if (c) *c = NULL;
}

static int outs_fail(mmp_tensor_t **a, mmp_tensor_t **b, mmp_tensor_t **c) {
  if (a) UNREF(*a);
  if (b) UNREF(*b);
  if (c) UNREF(*c);
  int code = mmp_error_code();
  return code < 0 ? code : MMP_EINVAL;
}

static bool same_backend(const char *op, int n, const mmp_tensor_t *const *ts) {
  mmp_backend_t *be = NULL;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (!be) be = ts[i]->storage->be;
    else if (ts[i]->storage->be != be) {
      mmp_error_set(MMP_EDEVICE, "%s: operands %s and %s are on different backends (move with mmp_to_backend)", op,
                    mmp__desc(ts[0]), mmp__desc(ts[i]));
      return false;
    }
  }
  return true;
}

static bool f32s(const char *op, int n, const mmp_tensor_t *const *ts) {
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->dtype != MMP_F32) {
      mmp_error_set(MMP_EDTYPE, "%s: operand %s is not f32 (convert it with mmp_convert)", op, mmp__desc(ts[i]));
      return false;
    }
  return true;
}

static bool shape_is(const char *op, const char *what, const mmp_tensor_t *t, int ndim, const int64_t *shape) {
  if (t->ndim == ndim && (ndim == 0 || memcmp(t->shape, shape, (size_t)ndim * sizeof *shape) == 0)) return true;
  char buf[96];
  mmp_error_set(MMP_ESHAPE, "%s: %s is %s but should have shape %s", op, what, mmp__desc(t),
                mmp__shape_str(ndim, shape, buf, sizeof buf));
  return false;
}

/* Run @op into a new f32 tensor of @shape on @be over contiguous copies of
 * the sources (NULL sources stay NULL). */
static mmp_tensor_t *run_contig(mmp_op_t op, const mmp_op_params_t *p, int n, const mmp_tensor_t *const *srcs,
                                int ndim, const int64_t *shape) {
  mmp_tensor_t *c[8] = {0};
  mmp_tensor_t *dst = NULL;
  mmp_backend_t *be = NULL;
  bool okc = true;
  for (int i = 0; i < n; i++) {
    if (!srcs[i]) continue;
    be = srcs[i]->storage->be;
    if (!(c[i] = mmp_contiguous((mmp_tensor_t *)srcs[i]))) okc = false;
  }
  if (okc && be) {
    dst = mmp_tensor_new(be, MMP_F32, ndim, shape);
    if (dst && mmp_backend_compute(be, op, p, (const mmp_tensor_t *const *)c, n, dst) < 0) UNREF(dst);
  }
  for (int i = 0; i < n; i++) mmp_tensor_unref(c[i]);
  return dst;
}

/* --------------------------------------------------------- broadcast / views */

mmp_tensor_t *mmp_sum_to_shape(const mmp_tensor_t *g, int ndim, const int64_t *shape) {
  if (!g) return NULL;
  if (ndim < 0 || ndim > g->ndim) {
    mmp_error_set(MMP_ESHAPE, "sum_to_shape: %s cannot be reduced to %d dims", mmp__desc(g), ndim);
    return NULL;
  }
  const int lead = g->ndim - ndim;
  for (int i = 0; i < ndim; i++)
    if (shape[i] != g->shape[lead + i] && shape[i] != 1) {
      char buf[96];
      mmp_error_set(MMP_ESHAPE, "sum_to_shape: %s does not broadcast from %s", mmp__desc(g),
                    mmp__shape_str(ndim, shape, buf, sizeof buf));
      return NULL;
    }
  mmp_tensor_t *r = mmp_tensor_ref((mmp_tensor_t *)g);
  for (int d = 0; d < g->ndim && r; d++) {
    bool reduce = d < lead || (shape[d - lead] == 1 && g->shape[d] != 1);
    if (!reduce) continue;
    mmp_tensor_t *s = mmp_sum(r, d, true);
    mmp_tensor_unref(r);
    r = s;
  }
  if (!r) return NULL;
  mmp_tensor_t *out = mmp_reshape(r, ndim, shape);
  mmp_tensor_unref(r);
  if (out && !mmp_tensor_is_contiguous(out)) {
    mmp_tensor_t *c = mmp_contiguous(out);
    mmp_tensor_unref(out);
    out = c;
  }
  return out;
}

static int binary_backward(const char *op, int kind, const mmp_tensor_t *g, const mmp_tensor_t *a,
                           const mmp_tensor_t *b, mmp_tensor_t **ga, mmp_tensor_t **gb) {
  outs_clear(ga, gb, NULL);
  if (!g || !a || !b) return MMP_EINVAL;
  const mmp_tensor_t *ts[3] = {g, a, b};
  if (!same_backend(op, 3, ts) || !f32s(op, 3, ts)) return mmp_error_code();
  if (ga) {
    mmp_tensor_t *t = kind == 2 ? mmp_mul(g, b) : mmp_tensor_ref((mmp_tensor_t *)g);
    *ga = mmp_sum_to_shape(t, a->ndim, a->shape);
    mmp_tensor_unref(t);
    if (!*ga) return outs_fail(ga, gb, NULL);
  }
  if (gb) {
    mmp_tensor_t *t = kind == 2 ? mmp_mul(g, a) : kind == 1 ? mmp_scale(g, -1.0, 0.0) : mmp_tensor_ref((mmp_tensor_t *)g);
    *gb = mmp_sum_to_shape(t, b->ndim, b->shape);
    mmp_tensor_unref(t);
    if (!*gb) return outs_fail(ga, gb, NULL);
  }
  return 0;
}

int mmp_add_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b, mmp_tensor_t **ga,
                     mmp_tensor_t **gb) {
  return binary_backward("add_backward", 0, g, a, b, ga, gb);
}
int mmp_sub_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b, mmp_tensor_t **ga,
                     mmp_tensor_t **gb) {
  return binary_backward("sub_backward", 1, g, a, b, ga, gb);
}
int mmp_mul_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b, mmp_tensor_t **ga,
                     mmp_tensor_t **gb) {
  return binary_backward("mul_backward", 2, g, a, b, ga, gb);
}

mmp_tensor_t *mmp_scale_backward(const mmp_tensor_t *g, double alpha) { return mmp_scale(g, alpha, 0.0); }

mmp_tensor_t *mmp_reshape_backward(const mmp_tensor_t *g, int ndim, const int64_t *shape) {
  if (!g) return NULL;
  if (mmp__numel(ndim, shape) != mmp_tensor_numel(g)) {
    char buf[96];
    mmp_error_set(MMP_ESHAPE, "reshape_backward: %s does not have the elements of %s", mmp__desc(g),
                  mmp__shape_str(ndim, shape, buf, sizeof buf));
    return NULL;
  }
  return mmp_reshape((mmp_tensor_t *)g, ndim, shape);
}

mmp_tensor_t *mmp_permute_backward(const mmp_tensor_t *g, const int *perm) {
  if (!g) return NULL;
  int inv[MMP_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++) {
    if (perm[i] < 0 || perm[i] >= g->ndim) {
      mmp_error_set(MMP_EINVAL, "permute_backward: bad permutation for %s", mmp__desc(g));
      return NULL;
    }
    inv[perm[i]] = i;
  }
  return mmp_permute((mmp_tensor_t *)g, inv);
}

mmp_tensor_t *mmp_slice_backward(const mmp_tensor_t *g, int ndim, const int64_t *shape, int dim, int64_t start,
                                 int64_t end, int64_t step) {
  if (!g) return NULL;
  if (ndim != g->ndim) {
    mmp_error_set(MMP_ESHAPE, "slice_backward: %s and an input of %d dims", mmp__desc(g), ndim);
    return NULL;
  }
  mmp_tensor_t *z = mmp_tensor_zeros(g->storage->be, MMP_F32, ndim, shape);
  mmp_tensor_t *v = mmp_slice(z, dim, start, end, step);
  if (!v || !shape_is("slice_backward", "the gradient", g, v->ndim, v->shape) || mmp_copy_into(v, g) < 0)
    UNREF(z);
  mmp_tensor_unref(v);
  return z;
}

int mmp_concat_backward(const mmp_tensor_t *g, int n, const int64_t *sizes, int dim, mmp_tensor_t **out) {
  if (!g || n <= 0 || !out) return MMP_EINVAL;
  for (int i = 0; i < n; i++) out[i] = NULL;
  int d = dim < 0 ? dim + g->ndim : dim;
  if (d < 0 || d >= g->ndim) return mmp_error_set(MMP_EINVAL, "concat_backward: dim %d out of range for %s", dim, mmp__desc(g));
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    mmp_tensor_t *v = sizes[i] >= 0 ? mmp_slice((mmp_tensor_t *)g, d, start, start + sizes[i], 1) : NULL;
    out[i] = v ? mmp_contiguous(v) : NULL;
    mmp_tensor_unref(v);
    if (!out[i] || out[i]->shape[d] != sizes[i]) {
      if (out[i]) mmp_error_set(MMP_ESHAPE, "concat_backward: sizes exceed dim %d of %s", d, mmp__desc(g));
      int code = mmp_error_code();
      for (int k = 0; k <= i; k++) UNREF(out[k]);
      return code < 0 ? code : MMP_EINVAL;
    }
    start += sizes[i];
  }
  if (start != g->shape[d]) {
    for (int k = 0; k < n; k++) UNREF(out[k]);
    return mmp_error_set(MMP_ESHAPE, "concat_backward: sizes sum to %lld, dim %d of %s", (long long)start, d,
                         mmp__desc(g));
  }
  return 0;
}

/* ------------------------------------------------------------ linear algebra */

int mmp_matmul_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b, bool trans_a,
                        bool trans_b, mmp_tensor_t **ga, mmp_tensor_t **gb) {
  outs_clear(ga, gb, NULL);
  if (!g || !a || !b) return MMP_EINVAL;
  /* C = op(A) op(B): d op(A) = G op(B)^T, d op(B) = op(A)^T G */
  if (ga) {
    mmp_tensor_t *t = trans_a ? mmp_matmul(b, g, trans_b, true) : mmp_matmul(g, b, false, !trans_b);
    *ga = mmp_sum_to_shape(t, a->ndim, a->shape);
    mmp_tensor_unref(t);
    if (!*ga) return outs_fail(ga, gb, NULL);
  }
  if (gb) {
    mmp_tensor_t *t = trans_b ? mmp_matmul(g, a, true, trans_a) : mmp_matmul(a, g, !trans_a, false);
    *gb = mmp_sum_to_shape(t, b->ndim, b->shape);
    mmp_tensor_unref(t);
    if (!*gb) return outs_fail(ga, gb, NULL);
  }
  return 0;
}

int mmp_linear_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *w, mmp_tensor_t **gx,
                        mmp_tensor_t **gw, mmp_tensor_t **gbias) {
  outs_clear(gx, gw, gbias);
  if (!g || !x || !w) return MMP_EINVAL;
  const mmp_tensor_t *ts[3] = {g, x, w};
  if (!same_backend("linear_backward", 3, ts) || !f32s("linear_backward", 3, ts)) return mmp_error_code();
  if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1] || g->ndim != x->ndim ||
      g->shape[g->ndim - 1] != w->shape[0] || memcmp(g->shape, x->shape, (size_t)(x->ndim - 1) * sizeof(int64_t)))
    return mmp_error_set(MMP_ESHAPE, "linear_backward: g %s, x %s, w %s do not fit (g [..., out], x [..., in], w [out, in])",
                         mmp__desc(g), mmp__desc(x), mmp__desc(w));
  const int64_t in = w->shape[1], out = w->shape[0], rows = in ? mmp_tensor_numel(x) / in : 0;
  int64_t s2[2] = {rows, out}, x2s[2] = {rows, in};
  mmp_tensor_t *g2 = mmp_reshape((mmp_tensor_t *)g, 2, s2);
  if (!g2) return outs_fail(gx, gw, gbias);
  if (gx) {
    mmp_tensor_t *t = mmp_matmul(g2, w, false, false);
    *gx = t ? mmp_reshape(t, x->ndim, x->shape) : NULL;
    mmp_tensor_unref(t);
  }
  if (gw && (!gx || *gx)) {
    mmp_tensor_t *x2 = mmp_reshape((mmp_tensor_t *)x, 2, x2s);
    *gw = mmp_matmul(g2, x2, true, false);
    mmp_tensor_unref(x2);
  }
  if (gbias && (!gx || *gx) && (!gw || *gw)) *gbias = mmp_sum(g2, 0, false);
  mmp_tensor_unref(g2);
  if ((gx && !*gx) || (gw && !*gw) || (gbias && !*gbias)) return outs_fail(gx, gw, gbias);
  return 0;
}

/* Sum of g[N, O, ...] over every dim but 1: the gradient of a per-channel bias. */
static mmp_tensor_t *channel_sum(const mmp_tensor_t *g) {
  int64_t s3[3] = {g->shape[0], g->shape[1], -1};
  if (g->shape[0] * g->shape[1] == 0) return mmp_tensor_zeros(g->storage->be, MMP_F32, 1, g->shape + 1);
  mmp_tensor_t *r = mmp_reshape((mmp_tensor_t *)g, 3, s3);
  mmp_tensor_t *a = mmp_sum(r, 2, false);
  mmp_tensor_t *b = mmp_sum(a, 0, false);
  mmp_tensor_unref(r);
  mmp_tensor_unref(a);
  return b;
}

int mmp_conv2d_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *w, int sh, int sw, int ph,
                        int pw, int dh, int dw, int groups, mmp_tensor_t **gx, mmp_tensor_t **gw,
                        mmp_tensor_t **gbias) {
  outs_clear(gx, gw, gbias);
  if (!g || !x || !w) return MMP_EINVAL;
  const mmp_tensor_t *ts[3] = {g, x, w};
  if (!same_backend("conv2d_backward", 3, ts) || !f32s("conv2d_backward", 3, ts)) return mmp_error_code();
  if (sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 || groups <= 0)
    return mmp_error_set(MMP_EINVAL, "conv2d_backward: stride %d,%d padding %d,%d dilation %d,%d groups %d", sh, sw,
                         ph, pw, dh, dw, groups);
  if (x->ndim != 4 || w->ndim != 4 || g->ndim != 4 || x->shape[1] % groups || w->shape[0] % groups ||
      w->shape[1] * groups != x->shape[1])
    return mmp_error_set(MMP_ESHAPE, "conv2d_backward: x %s, w %s, groups %d do not fit", mmp__desc(x), mmp__desc(w),
                         groups);
  int64_t oh = (x->shape[2] + 2 * ph - dh * (w->shape[2] - 1) - 1) / sh + 1;
  int64_t ow = (x->shape[3] + 2 * pw - dw * (w->shape[3] - 1) - 1) / sw + 1;
  int64_t gs[4] = {x->shape[0], w->shape[0], oh, ow};
  if (!shape_is("conv2d_backward", "the gradient", g, 4, gs)) return MMP_ESHAPE;
  mmp_op_params_t p = {{0}, {sh, sw, ph, pw, dh, dw, groups}};
  if (gx) {
    const mmp_tensor_t *s[2] = {g, w};
    if (!(*gx = run_contig(MMP_OP_CONV2D_BACKWARD_INPUT, &p, 2, s, 4, x->shape))) return outs_fail(gx, gw, gbias);
  }
  if (gw) {
    const mmp_tensor_t *s[2] = {x, g};
    if (!(*gw = run_contig(MMP_OP_CONV2D_BACKWARD_WEIGHT, &p, 2, s, 4, w->shape))) return outs_fail(gx, gw, gbias);
  }
  if (gbias && !(*gbias = channel_sum(g))) return outs_fail(gx, gw, gbias);
  return 0;
}

/* -------------------------------------------------------------- activations */

static mmp_tensor_t *act_backward(mmp_op_t fwd, const mmp_tensor_t *g, const mmp_tensor_t *x) {
  if (!g || !x) return NULL;
  const mmp_tensor_t *ts[2] = {x, g};
  const char *name = mmp_op_name(fwd);
  if (!same_backend(name, 2, ts) || !f32s(name, 2, ts) || !shape_is(name, "the gradient", g, x->ndim, x->shape))
    return NULL;
  mmp_op_params_t p = {{0}, {fwd}};
  return run_contig(MMP_OP_ACT_BACKWARD, &p, 2, ts, x->ndim, x->shape);
}

mmp_tensor_t *mmp_silu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) { return act_backward(MMP_OP_SILU, g, x); }
mmp_tensor_t *mmp_gelu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) { return act_backward(MMP_OP_GELU, g, x); }
mmp_tensor_t *mmp_gelu_tanh_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) {
  return act_backward(MMP_OP_GELU_TANH, g, x);
}
mmp_tensor_t *mmp_quick_gelu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) {
  return act_backward(MMP_OP_QUICK_GELU, g, x);
}
mmp_tensor_t *mmp_sigmoid_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) {
  return act_backward(MMP_OP_SIGMOID, g, x);
}
mmp_tensor_t *mmp_tanh_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) { return act_backward(MMP_OP_TANH, g, x); }
mmp_tensor_t *mmp_relu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) { return act_backward(MMP_OP_RELU, g, x); }

mmp_tensor_t *mmp_geglu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x) {
  if (!g || !x) return NULL;
  const mmp_tensor_t *ts[2] = {x, g};
  if (!same_backend("geglu_backward", 2, ts) || !f32s("geglu_backward", 2, ts)) return NULL;
  if (x->ndim < 1 || x->shape[x->ndim - 1] % 2) {
    mmp_error_set(MMP_ESHAPE, "geglu_backward: last dim of %s must be even", mmp__desc(x));
    return NULL;
  }
  int64_t gs[MMP_MAX_DIMS];
  memcpy(gs, x->shape, sizeof gs);
  gs[x->ndim - 1] /= 2;
  if (!shape_is("geglu_backward", "the gradient", g, x->ndim, gs)) return NULL;
  return run_contig(MMP_OP_GEGLU_BACKWARD, NULL, 2, ts, x->ndim, x->shape);
}

mmp_tensor_t *mmp_softmax_backward(const mmp_tensor_t *g, const mmp_tensor_t *y, int dim) {
  if (!g || !y) return NULL;
  if (!shape_is("softmax_backward", "the gradient", g, y->ndim, y->shape)) return NULL;
  mmp_tensor_t *gy = mmp_mul(g, y);
  mmp_tensor_t *s = mmp_sum(gy, dim, true);
  mmp_tensor_t *d = mmp_sub(g, s);
  mmp_tensor_t *r = mmp_mul(d, y);
  mmp_tensor_unref(gy);
  mmp_tensor_unref(s);
  mmp_tensor_unref(d);
  return r;
}

/* ------------------------------------------------------------ normalisation */

int mmp_layer_norm_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *weight, double eps,
                            mmp_tensor_t **gx, mmp_tensor_t **gweight, mmp_tensor_t **gbias) {
  outs_clear(gx, gweight, gbias);
  if (!g || !x) return MMP_EINVAL;
  const mmp_tensor_t *ts[3] = {x, g, weight};
  if (!same_backend("layer_norm_backward", 3, ts) || !f32s("layer_norm_backward", 3, ts)) return mmp_error_code();
  if (x->ndim < 1) return mmp_error_set(MMP_ESHAPE, "layer_norm_backward: x is a scalar");
  if (!shape_is("layer_norm_backward", "the gradient", g, x->ndim, x->shape)) return MMP_ESHAPE;
  const int64_t D = x->shape[x->ndim - 1];
  if (weight && !shape_is("layer_norm_backward", "the weight", weight, 1, &D)) return MMP_ESHAPE;
  mmp_op_params_t p = {{eps}, {0}};
  if (gx && !(*gx = run_contig(MMP_OP_LAYER_NORM_BACKWARD, &p, 3, ts, x->ndim, x->shape)))
    return outs_fail(gx, gweight, gbias);
  int64_t s2[2] = {-1, D};
  if (gweight) {
    mmp_tensor_t *xh = mmp_layer_norm(x, NULL, NULL, eps);
    mmp_tensor_t *t = mmp_mul(g, xh);
    mmp_tensor_t *t2 = t ? mmp_reshape(t, 2, s2) : NULL;
    *gweight = mmp_sum(t2, 0, false);
    mmp_tensor_unref(xh);
    mmp_tensor_unref(t);
    mmp_tensor_unref(t2);
    if (!*gweight) return outs_fail(gx, gweight, gbias);
  }
  if (gbias) {
    mmp_tensor_t *g2 = mmp_reshape((mmp_tensor_t *)g, 2, s2);
    *gbias = mmp_sum(g2, 0, false);
    mmp_tensor_unref(g2);
    if (!*gbias) return outs_fail(gx, gweight, gbias);
  }
  return 0;
}

int mmp_group_norm_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,
                            double eps, mmp_tensor_t **gx, mmp_tensor_t **gweight, mmp_tensor_t **gbias) {
  outs_clear(gx, gweight, gbias);
  if (!g || !x) return MMP_EINVAL;
  const mmp_tensor_t *ts[3] = {x, g, weight};
  if (!same_backend("group_norm_backward", 3, ts) || !f32s("group_norm_backward", 3, ts)) return mmp_error_code();
  if (x->ndim < 2 || groups <= 0 || x->shape[1] % groups)
    return mmp_error_set(MMP_ESHAPE, "group_norm_backward: %s with %d groups (want [N, C, ...], groups dividing C)",
                         mmp__desc(x), groups);
  if (!shape_is("group_norm_backward", "the gradient", g, x->ndim, x->shape)) return MMP_ESHAPE;
  if (weight && !shape_is("group_norm_backward", "the weight", weight, 1, x->shape + 1)) return MMP_ESHAPE;
  mmp_op_params_t p = {{eps}, {groups}};
  if (gx && !(*gx = run_contig(MMP_OP_GROUP_NORM_BACKWARD, &p, 3, ts, x->ndim, x->shape)))
    return outs_fail(gx, gweight, gbias);
  if (gweight) {
    mmp_tensor_t *xh = mmp_group_norm(x, groups, NULL, NULL, eps);
    mmp_tensor_t *t = mmp_mul(g, xh);
    *gweight = t ? channel_sum(t) : NULL;
    mmp_tensor_unref(xh);
    mmp_tensor_unref(t);
    if (!*gweight) return outs_fail(gx, gweight, gbias);
  }
  if (gbias && !(*gbias = channel_sum(g))) return outs_fail(gx, gweight, gbias);
  return 0;
}

int mmp_group_norm_silu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,
                                 const mmp_tensor_t *bias, double eps, mmp_tensor_t **gx, mmp_tensor_t **gweight,
                                 mmp_tensor_t **gbias) {
  outs_clear(gx, gweight, gbias);
  if (!g || !x) return MMP_EINVAL;
  mmp_tensor_t *y0 = mmp_group_norm(x, groups, weight, bias, eps); /* the SiLU's input, recomputed */
  mmp_tensor_t *g0 = mmp_silu_backward(g, y0);
  mmp_tensor_unref(y0);
  if (!g0) return outs_fail(gx, gweight, gbias);
  int rc = mmp_group_norm_backward(g0, x, groups, weight, eps, gx, gweight, gbias);
  mmp_tensor_unref(g0);
  return rc;
}

/* ------------------------------------------------------ lookups, resampling */

mmp_tensor_t *mmp_embedding_backward(const mmp_tensor_t *g, const mmp_tensor_t *ids, int64_t num_embeddings,
                                     int64_t padding_idx) {
  if (!g || !ids) return NULL;
  const mmp_tensor_t *ts[2] = {ids, g};
  if (!same_backend("embedding_backward", 2, ts) || !f32s("embedding_backward", 1, ts + 1)) return NULL;
  if (ids->dtype != MMP_I64 && ids->dtype != MMP_I32) {
    mmp_error_set(MMP_EDTYPE, "embedding_backward: ids %s must be i64 or i32", mmp__desc(ids));
    return NULL;
  }
  if (num_embeddings <= 0 || padding_idx < -1 || padding_idx >= num_embeddings || g->ndim != ids->ndim + 1 ||
      memcmp(g->shape, ids->shape, (size_t)ids->ndim * sizeof(int64_t))) {
    mmp_error_set(MMP_ESHAPE, "embedding_backward: g %s for ids %s (want [..ids.., D]), %lld rows, padding_idx %lld",
                  mmp__desc(g), mmp__desc(ids), (long long)num_embeddings, (long long)padding_idx);
    return NULL;
  }
  const int64_t D = g->shape[g->ndim - 1], n = mmp_tensor_numel(ids);
  if (mmp__shape_extent(2, (int64_t[2]){num_embeddings, D}) < 0) {
    mmp_error_set(MMP_ESHAPE, "embedding_backward: table [%lld, %lld] too large", (long long)num_embeddings,
                  (long long)D);
    return NULL;
  }
  int64_t gs[2] = {n, D}, ts2[2] = {num_embeddings, D};
  mmp_tensor_t *g2 = mmp_reshape((mmp_tensor_t *)g, 2, gs);
  mmp_op_params_t p = {{0}, {padding_idx}};
  const mmp_tensor_t *s[2] = {ids, g2};
  mmp_tensor_t *r = g2 ? run_contig(MMP_OP_EMBEDDING_BACKWARD, &p, 2, s, 2, ts2) : NULL;
  mmp_tensor_unref(g2);
  return r;
}

mmp_tensor_t *mmp_upsample_nearest2x_backward(const mmp_tensor_t *g) {
  if (!g) return NULL;
  if (g->ndim != 4 || g->shape[2] % 2 || g->shape[3] % 2) {
    mmp_error_set(MMP_ESHAPE, "upsample_nearest2x_backward: %s is not [N, C, 2H, 2W]", mmp__desc(g));
    return NULL;
  }
  /* the mean of each 2x2 block times 4: both factors are powers of two, so
   * this is exactly the block's sum */
  mmp_tensor_t *m = mmp_avg_pool2d(g, 2, 2, 0);
  mmp_tensor_t *r = mmp_scale(m, 4.0, 0.0);
  mmp_tensor_unref(m);
  return r;
}

/* ---------------------------------------------------------------- attention */

int mmp_attention_backward(const mmp_tensor_t *g, const mmp_tensor_t *q, const mmp_tensor_t *k, const mmp_tensor_t *v,
                           const mmp_tensor_t *out, const mmp_tensor_t *key_mask, bool causal, double scale,
                           mmp_tensor_t **gq, mmp_tensor_t **gk, mmp_tensor_t **gv) {
  outs_clear(gq, gk, gv);
  if (!g || !q || !k || !v || !out) return MMP_EINVAL;
  const mmp_tensor_t *ts[6] = {q, k, v, out, g, key_mask};
  if (!same_backend("attention_backward", 6, ts) || !f32s("attention_backward", 5, ts)) return mmp_error_code();
  if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] ||
      k->shape[1] != q->shape[1] || v->shape[1] != q->shape[1] || k->shape[3] != q->shape[3] ||
      v->shape[2] != k->shape[2])
    return mmp_error_set(MMP_ESHAPE, "attention_backward: q %s, k %s, v %s do not fit (want q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv])",
                         mmp__desc(q), mmp__desc(k), mmp__desc(v));
  int64_t os[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
  if (!shape_is("attention_backward", "the output", out, 4, os) ||
      !shape_is("attention_backward", "the gradient", g, 4, os))
    return MMP_ESHAPE;
  if (key_mask && (key_mask->ndim != 2 || key_mask->shape[0] != q->shape[0] || key_mask->shape[1] != k->shape[2] ||
                   (key_mask->dtype != MMP_BOOL && key_mask->dtype != MMP_U8)))
    return mmp_error_set(MMP_ESHAPE, "attention_backward: key_mask %s must be bool/u8 [%lld, %lld]",
                         mmp__desc(key_mask), (long long)q->shape[0], (long long)k->shape[2]);
  if (scale <= 0) scale = q->shape[3] ? 1.0 / sqrt((double)q->shape[3]) : 1.0;
  mmp_backend_t *be = q->storage->be;
  mmp_tensor_t *c[6] = {0}, *dk = mmp_tensor_new(be, MMP_F32, 4, k->shape), *dv = mmp_tensor_new(be, MMP_F32, 4, v->shape);
  mmp_tensor_t *dq = mmp_tensor_new(be, MMP_F32, 4, q->shape);
  bool okc = dk && dv && dq;
  for (int i = 0; i < 6 && okc; i++)
    if (ts[i] && !(c[i] = mmp_contiguous((mmp_tensor_t *)ts[i]))) okc = false;
  if (okc) {
    mmp_op_params_t p = {{scale}, {causal ? 1 : 0}};
    const mmp_tensor_t *s[8] = {c[0], c[1], c[2], c[3], c[4], c[5], dk, dv};
    if (mmp_backend_compute(be, MMP_OP_ATTENTION_BACKWARD, &p, s, 8, dq) < 0) okc = false;
  }
  for (int i = 0; i < 6; i++) mmp_tensor_unref(c[i]);
  if (!okc) {
    mmp_tensor_unref(dq);
    mmp_tensor_unref(dk);
    mmp_tensor_unref(dv);
    int code = mmp_error_code();
    return code < 0 ? code : MMP_ENOMEM;
  }
  if (gq) *gq = dq; else mmp_tensor_unref(dq);
  if (gk) *gk = dk; else mmp_tensor_unref(dk);
  if (gv) *gv = dv; else mmp_tensor_unref(dv);
  return 0;
}

/* ------------------------------------------------------------------- losses */

static mmp_tensor_t *mse_loss_impl(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b) return NULL;
  if (!shape_is("mse_loss", "the target", b, a->ndim, a->shape)) return NULL;
  int64_t n = -1;
  mmp_tensor_t *d = mmp_sub(a, b);
  mmp_tensor_t *d2 = mmp_mul(d, d);
  mmp_tensor_t *f = d2 ? mmp_reshape(d2, 1, &n) : NULL;
  mmp_tensor_t *m = mmp_mean(f, 0, false);
  mmp_tensor_unref(d);
  mmp_tensor_unref(d2);
  mmp_tensor_unref(f);
  return m;
}

/* Recorded as one node (torch's formula), not as its sub/mul/mean. */
mmp_tensor_t *mmp_mse_loss(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = mse_loss_impl(a, b);
  if (!tp) return r;
  const mmp_tensor_t *in[2] = {a, b};
  mmp__tape_rec_t rc = {.kind = MMP__TK_MSE, .name = "mse_loss", .nin = 2, .in = in};
  return mmp__tape_leave(tp, r, &rc);
}

int mmp_mse_loss_backward(double g, const mmp_tensor_t *a, const mmp_tensor_t *b, mmp_tensor_t **ga,
                          mmp_tensor_t **gb) {
  outs_clear(ga, gb, NULL);
  if (!a || !b) return MMP_EINVAL;
  if (!shape_is("mse_loss_backward", "the target", b, a->ndim, a->shape)) return MMP_ESHAPE;
  const int64_t n = mmp_tensor_numel(a);
  mmp_tensor_t *d = mmp_sub(a, b);
  /* torch: (2 / n) * (a - b) * g, the factor formed first in the scalar type */
  double norm = n ? 2.0 / (double)n : 0.0;
  mmp_tensor_t *s = mmp_scale(d, (double)(float)norm * g, 0.0);
  mmp_tensor_unref(d);
  if (!s) return outs_fail(ga, gb, NULL);
  if (gb && !(*gb = mmp_scale(s, -1.0, 0.0))) {
    mmp_tensor_unref(s);
    return outs_fail(ga, gb, NULL);
  }
  if (ga) *ga = s; else mmp_tensor_unref(s);
  return 0;
}
