/* core/tensor_ops.c - the op front-end: checks, broadcasting, output allocation, backend dispatch. */
#include <math.h>
#include <string.h>
#include <stdlib.h>

#include "core/tensor_impl.h"

/* All operands on one backend, or MMP_EDEVICE naming both. NULL entries
 * (optional operands) are skipped. Returns the backend or NULL. */
static mmp_backend_t *common_backend(const char *op, int n, const mmp_tensor_t *const *ts) {
  mmp_backend_t *be = NULL;
  int first = -1;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    mmp_backend_t *b = ts[i]->storage->be;
    if (!be) {
      be = b;
      first = i;
    } else if (b != be) {
      mmp_error_set(MMP_EDEVICE, "%s: operand %d %s is on %s but operand %d %s is on %s (move it with mmp_to_backend)",
                    op, i, mmp__desc(ts[i]), mmp_backend_name(b), first, mmp__desc(ts[first]),
                    mmp_backend_name(be));
      return NULL;
    }
  }
  return be;
}

static bool need_f32(const char *op, const char *what, const mmp_tensor_t *t) {
  if (!t || t->dtype == MMP_F32) return true;
  mmp_error_set(MMP_EDTYPE, "%s: %s is %s but the op computes in f32 (convert it with mmp_convert)", op, what,
                mmp__desc(t));
  return false;
}

/* The weight of linear/conv2d: f32, or f16/bf16 storage (half the memory;
 * the CPU converts while packing, fp32 arithmetic). */
static bool need_weight(const char *op, const mmp_tensor_t *w) {
  if (w->dtype == MMP_F32 || w->dtype == MMP_F16 || w->dtype == MMP_BF16) return true;
  mmp_error_set(MMP_EDTYPE, "%s: weight is %s but must be f32, f16 or bf16", op, mmp__desc(w));
  return false;
}

/* A backend that cannot take a half-precision weight beside f32 operands
 * (cuBLAS wants one dtype) gets an f32 copy of it for this call. Returns
 * @wc itself (a new reference on success), or the copy, or NULL. */
static mmp_tensor_t *weight_for(mmp_backend_t *be, mmp_op_t op, const mmp_tensor_t **srcs, int n,
                                mmp_tensor_t *dst, mmp_tensor_t *wc) {
  if (wc->dtype == MMP_F32 || mmp_backend_supports(be, op, srcs, n, dst)) return mmp_tensor_ref(wc);
  return mmp_convert(wc, MMP_F32);
}

/* Compute into a fresh dst; frees dst on failure. */
static mmp_tensor_t *run(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *srcs,
                         int n, mmp_tensor_t *dst) {
  if (!dst) return NULL;
  if (mmp_backend_compute(be, op, p, srcs, n, dst) < 0) {
    mmp_tensor_unref(dst);
    return NULL;
  }
  return dst;
}

/* ------------------------------------------------------------ elementwise */

static mmp_tensor_t *binary(mmp_op_t op, const mmp_tensor_t *a, const mmp_tensor_t *b, double alpha, double beta,
                            bool broadcast) {
  if (!a || !b) return NULL;
  const char *name = mmp_op_name(op);
  const mmp_tensor_t *ts[2] = {a, b};
  mmp_backend_t *be = common_backend(name, 2, ts);
  if (!be || !need_f32(name, "a", a) || !need_f32(name, "b", b)) return NULL;
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  int64_t shape[MMP_MAX_DIMS];
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
    int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      mmp_error_set(MMP_ESHAPE, "%s: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)", name, mmp__desc(a),
                    mmp__desc(b), i, (long long)sa, (long long)sb);
      return NULL;
    }
    if (!broadcast && sa != sb) {
      mmp_error_set(MMP_ESHAPE, "%s: %s and %s must have the same shape", name, mmp__desc(a), mmp__desc(b));
      return NULL;
    }
    shape[i] = sa == 1 ? sb : sa;
  }
  if (!broadcast && a->ndim != b->ndim) {
    mmp_error_set(MMP_ESHAPE, "%s: %s and %s must have the same shape", name, mmp__desc(a), mmp__desc(b));
    return NULL;
  }
  mmp_tensor_t *va = mmp_broadcast_to((mmp_tensor_t *)a, nd, shape);
  mmp_tensor_t *vb = va ? mmp_broadcast_to((mmp_tensor_t *)b, nd, shape) : NULL;
  mmp_tensor_t *r = NULL;
  if (vb) {
    mmp_op_params_t p = {{alpha, beta}, {0}};
    const mmp_tensor_t *srcs[2] = {va, vb};
    r = run(be, op, &p, srcs, 2, mmp_tensor_new(be, MMP_F32, nd, shape));
  }
  mmp_tensor_unref(va);
  mmp_tensor_unref(vb);
  return r;
}

static mmp_tensor_t *add_impl(const mmp_tensor_t *a, const mmp_tensor_t *b) { return binary(MMP_OP_ADD, a, b, 0, 0, true); }
static mmp_tensor_t *sub_impl(const mmp_tensor_t *a, const mmp_tensor_t *b) { return binary(MMP_OP_SUB, a, b, 0, 0, true); }
static mmp_tensor_t *mul_impl(const mmp_tensor_t *a, const mmp_tensor_t *b) { return binary(MMP_OP_MUL, a, b, 0, 0, true); }
static mmp_tensor_t *div_impl(const mmp_tensor_t *a, const mmp_tensor_t *b) { return binary(MMP_OP_DIV, a, b, 0, 0, true); }

static mmp_tensor_t *axpby_impl(double alpha, const mmp_tensor_t *a, double beta, const mmp_tensor_t *b) {
  return binary(MMP_OP_AXPBY, a, b, alpha, beta, false);
}

static mmp_tensor_t *unary(mmp_op_t op, const mmp_tensor_t *a, double f0, double f1) {
  if (!a) return NULL;
  const char *name = mmp_op_name(op);
  if (!need_f32(name, "input", a)) return NULL;
  mmp_backend_t *be = a->storage->be;
  mmp_op_params_t p = {{f0, f1}, {0}};
  const mmp_tensor_t *srcs[1] = {a};
  return run(be, op, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, a->ndim, a->shape));
}

static mmp_tensor_t *scale_impl(const mmp_tensor_t *a, double alpha, double beta) {
  return unary(MMP_OP_SCALE, a, alpha, beta);
}
static mmp_tensor_t *clamp_impl(const mmp_tensor_t *a, double lo, double hi) {
  if (a && lo > hi) {
    mmp_error_set(MMP_EINVAL, "clamp: lo %g > hi %g", lo, hi);
    return NULL;
  }
  return unary(MMP_OP_CLAMP, a, lo, hi);
}
static mmp_tensor_t *sqrt_impl(const mmp_tensor_t *a) { return unary(MMP_OP_SQRT, a, 0, 0); }
static mmp_tensor_t *exp_impl(const mmp_tensor_t *a) { return unary(MMP_OP_EXP, a, 0, 0); }
static mmp_tensor_t *abs_impl(const mmp_tensor_t *a) { return unary(MMP_OP_ABS, a, 0, 0); }
static mmp_tensor_t *silu_impl(const mmp_tensor_t *a) { return unary(MMP_OP_SILU, a, 0, 0); }
static mmp_tensor_t *gelu_impl(const mmp_tensor_t *a) { return unary(MMP_OP_GELU, a, 0, 0); }
static mmp_tensor_t *gelu_tanh_impl(const mmp_tensor_t *a) { return unary(MMP_OP_GELU_TANH, a, 0, 0); }
static mmp_tensor_t *quick_gelu_impl(const mmp_tensor_t *a) { return unary(MMP_OP_QUICK_GELU, a, 0, 0); }
static mmp_tensor_t *sigmoid_impl(const mmp_tensor_t *a) { return unary(MMP_OP_SIGMOID, a, 0, 0); }
static mmp_tensor_t *tanh_impl(const mmp_tensor_t *a) { return unary(MMP_OP_TANH, a, 0, 0); }
static mmp_tensor_t *relu_impl(const mmp_tensor_t *a) { return unary(MMP_OP_RELU, a, 0, 0); }

static mmp_tensor_t *geglu_impl(const mmp_tensor_t *a) {
  if (!a) return NULL;
  if (!need_f32("geglu", "input", a)) return NULL;
  if (a->ndim < 1 || a->shape[a->ndim - 1] % 2) {
    mmp_error_set(MMP_ESHAPE, "geglu: last dim of %s must be even", mmp__desc(a));
    return NULL;
  }
  mmp_tensor_t *c = mmp_contiguous((mmp_tensor_t *)a);
  if (!c) return NULL;
  int64_t shape[MMP_MAX_DIMS];
  memcpy(shape, a->shape, sizeof shape);
  shape[a->ndim - 1] /= 2;
  const mmp_tensor_t *srcs[1] = {c};
  mmp_tensor_t *r = run(c->storage->be, MMP_OP_GEGLU, NULL, srcs, 1, mmp_tensor_new(c->storage->be, MMP_F32, a->ndim, shape));
  mmp_tensor_unref(c);
  return r;
}

/* ------------------------------------------------------------- reductions */

static mmp_tensor_t *reduce(mmp_op_t op, const mmp_tensor_t *a, int dim, bool keepdim) {
  if (!a) return NULL;
  const char *name = mmp_op_name(op);
  if (!need_f32(name, "input", a)) return NULL;
  int d = dim < 0 ? dim + a->ndim : dim;
  if (d < 0 || d >= a->ndim) {
    mmp_error_set(MMP_EINVAL, "%s: dim %d out of range for %s", name, dim, mmp__desc(a));
    return NULL;
  }
  if (a->shape[d] == 0 && op == MMP_OP_MAX) {
    mmp_error_set(MMP_ESHAPE, "max: dim %d of %s is empty", d, mmp__desc(a));
    return NULL;
  }
  int64_t shape[MMP_MAX_DIMS];
  memcpy(shape, a->shape, sizeof shape);
  shape[d] = 1;
  mmp_backend_t *be = a->storage->be;
  mmp_op_params_t p = {{0}, {d}};
  const mmp_tensor_t *srcs[1] = {a};
  mmp_tensor_t *r = run(be, op, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, a->ndim, shape));
  if (!r || keepdim) return r;
  mmp_tensor_t *s = mmp_squeeze(r, d);
  mmp_tensor_unref(r);
  return s;
}

static mmp_tensor_t *sum_impl(const mmp_tensor_t *a, int dim, bool keepdim) { return reduce(MMP_OP_SUM, a, dim, keepdim); }
static mmp_tensor_t *mean_impl(const mmp_tensor_t *a, int dim, bool keepdim) { return reduce(MMP_OP_MEAN, a, dim, keepdim); }
static mmp_tensor_t *max_impl(const mmp_tensor_t *a, int dim, bool keepdim) { return reduce(MMP_OP_MAX, a, dim, keepdim); }

mmp_tensor_t *mmp_argmax(const mmp_tensor_t *a) {
  if (!a) return NULL;
  if (!need_f32("argmax", "input", a)) return NULL;
  if (a->ndim < 1 || a->shape[a->ndim - 1] == 0) {
    mmp_error_set(MMP_ESHAPE, "argmax: %s has no last dim to search", mmp__desc(a));
    return NULL;
  }
  mmp_backend_t *be = a->storage->be;
  const mmp_tensor_t *srcs[1] = {a};
  return run(be, MMP_OP_ARGMAX, NULL, srcs, 1, mmp_tensor_new(be, MMP_I64, a->ndim - 1, a->shape));
}

/* ------------------------------------------------------------------ matmul */

static mmp_tensor_t *matmul_impl(const mmp_tensor_t *a, const mmp_tensor_t *b, bool trans_a, bool trans_b) {
  if (!a || !b) return NULL;
  const mmp_tensor_t *ts[2] = {a, b};
  mmp_backend_t *be = common_backend("matmul", 2, ts);
  if (!be || !need_f32("matmul", "a", a) || !need_f32("matmul", "b", b)) return NULL;
  if (a->ndim < 2 || b->ndim < 2) {
    mmp_error_set(MMP_ESHAPE, "matmul: operands need at least 2 dims, got %s and %s", mmp__desc(a), mmp__desc(b));
    return NULL;
  }
  mmp_tensor_t *va = trans_a ? mmp_transpose((mmp_tensor_t *)a, -1, -2) : mmp_tensor_ref((mmp_tensor_t *)a);
  mmp_tensor_t *vb = trans_b ? mmp_transpose((mmp_tensor_t *)b, -1, -2) : mmp_tensor_ref((mmp_tensor_t *)b);
  mmp_tensor_t *ba = NULL, *bb = NULL, *r = NULL;
  if (!va || !vb) goto out;
  int64_t M = va->shape[va->ndim - 2], K = va->shape[va->ndim - 1];
  int64_t K2 = vb->shape[vb->ndim - 2], N = vb->shape[vb->ndim - 1];
  if (K != K2) {
    mmp_error_set(MMP_ESHAPE, "matmul: %s%s @ %s%s: inner sizes %lld and %lld differ", mmp__desc(a),
                  trans_a ? "^T" : "", mmp__desc(b), trans_b ? "^T" : "", (long long)K, (long long)K2);
    goto out;
  }
  int nba = va->ndim - 2, nbb = vb->ndim - 2, nb = nba > nbb ? nba : nbb;
  int64_t sa[MMP_MAX_DIMS], sb[MMP_MAX_DIMS], so[MMP_MAX_DIMS];
  for (int i = 0; i < nb; i++) {
    int ia = i - (nb - nba), ib = i - (nb - nbb);
    int64_t x = ia >= 0 ? va->shape[ia] : 1, y = ib >= 0 ? vb->shape[ib] : 1;
    if (x != y && x != 1 && y != 1) {
      mmp_error_set(MMP_ESHAPE, "matmul: batch dims of %s and %s do not broadcast", mmp__desc(a), mmp__desc(b));
      goto out;
    }
    so[i] = sa[i] = sb[i] = x == 1 ? y : x;
  }
  sa[nb] = M;
  sa[nb + 1] = K;
  sb[nb] = K;
  sb[nb + 1] = N;
  so[nb] = M;
  so[nb + 1] = N;
  ba = mmp_broadcast_to(va, nb + 2, sa);
  bb = ba ? mmp_broadcast_to(vb, nb + 2, sb) : NULL;
  if (!bb) goto out;
  const mmp_tensor_t *srcs[2] = {ba, bb};
  r = run(be, MMP_OP_MATMUL, NULL, srcs, 2, mmp_tensor_new(be, MMP_F32, nb + 2, so));
out:
  mmp_tensor_unref(va);
  mmp_tensor_unref(vb);
  mmp_tensor_unref(ba);
  mmp_tensor_unref(bb);
  return r;
}

static mmp_tensor_t *linear_impl(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias) {
  if (!x || !w) return NULL;
  const mmp_tensor_t *ts[3] = {x, w, bias};
  mmp_backend_t *be = common_backend("linear", 3, ts);
  if (!be || !need_f32("linear", "x", x) || !need_weight("linear", w) || !need_f32("linear", "bias", bias))
    return NULL;
  if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1] ||
      (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))) {
    mmp_error_set(MMP_ESHAPE, "linear: x %s, weight %s (want [out, %lld]), bias %s (want [%lld]) do not fit",
                  mmp__desc(x), mmp__desc(w), (long long)(x->ndim ? x->shape[x->ndim - 1] : 0), mmp__desc(bias),
                  (long long)(w->ndim == 2 ? w->shape[0] : 0));
    return NULL;
  }
  int64_t in = w->shape[1], out = w->shape[0];
  int64_t rows = in ? mmp_tensor_numel(x) / in : mmp__numel(x->ndim - 1, x->shape);
  int64_t s2[2] = {rows, in};
  mmp_tensor_t *x2 = mmp_reshape((mmp_tensor_t *)x, 2, s2);
  mmp_tensor_t *xc = mmp_contiguous(x2);
  mmp_tensor_t *wc = mmp_contiguous((mmp_tensor_t *)w);
  mmp_tensor_t *bc = bias ? mmp_contiguous((mmp_tensor_t *)bias) : NULL;
  mmp_tensor_t *r = NULL;
  if (xc && wc && (!bias || bc)) {
    int64_t so[2] = {rows, out};
    const mmp_tensor_t *srcs[3] = {xc, wc, bc};
    mmp_tensor_t *y = mmp_tensor_new(be, MMP_F32, 2, so), *wu = y ? weight_for(be, MMP_OP_LINEAR, srcs, bias ? 3 : 2, y, wc) : NULL;
    srcs[1] = wu;
    if (!wu) {
      mmp_tensor_unref(y);
      y = NULL;
    } else {
      mmp_op_params_t p = {{0}, {mmp_tensor_compute_dtype(w)}};
      y = run(be, MMP_OP_LINEAR, &p, srcs, bias ? 3 : 2, y);
    }
    mmp_tensor_unref(wu);
    if (y) {
      int64_t shape[MMP_MAX_DIMS];
      memcpy(shape, x->shape, sizeof shape);
      shape[x->ndim - 1] = out;
      r = mmp_reshape(y, x->ndim, shape);
      mmp_tensor_unref(y);
    }
  }
  mmp_tensor_unref(x2);
  mmp_tensor_unref(xc);
  mmp_tensor_unref(wc);
  mmp_tensor_unref(bc);
  return r;
}

/* --------------------------------------------------------------- nn ops */

/* @act: 0, or MMP_OP_RELU fused as the epilogue (params i[7] / 256) */
static mmp_tensor_t *conv2d_impl(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias, int stride_h,
                                 int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int act) {
  if (!x || !w) return NULL;
  const mmp_tensor_t *ts[3] = {x, w, bias};
  mmp_backend_t *be = common_backend("conv2d", 3, ts);
  if (!be || !need_f32("conv2d", "x", x) || !need_weight("conv2d", w) || !need_f32("conv2d", "bias", bias))
    return NULL;
  if (stride_h < 1 || stride_w < 1 || dil_h < 1 || dil_w < 1 || pad_h < 0 || pad_w < 0 || groups < 1) {
    mmp_error_set(MMP_EINVAL, "conv2d: stride %dx%d, padding %dx%d, dilation %dx%d, groups %d out of range",
                  stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups);
    return NULL;
  }
  if (x->ndim != 4 || w->ndim != 4 || x->shape[1] % groups || w->shape[0] % groups ||
      w->shape[1] * groups != x->shape[1] || (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0]))) {
    mmp_error_set(MMP_ESHAPE, "conv2d: x %s, weight %s, bias %s, groups %d do not fit (want x [N, C, H, W], "
                  "weight [O, C/groups, kh, kw], bias [O])",
                  mmp__desc(x), mmp__desc(w), mmp__desc(bias), groups);
    return NULL;
  }
  int64_t OH = (x->shape[2] + 2 * pad_h - (int64_t)dil_h * (w->shape[2] - 1) - 1) / stride_h + 1;
  int64_t OW = (x->shape[3] + 2 * pad_w - (int64_t)dil_w * (w->shape[3] - 1) - 1) / stride_w + 1;
  if (x->shape[2] + 2 * pad_h < (int64_t)dil_h * (w->shape[2] - 1) + 1 ||
      x->shape[3] + 2 * pad_w < (int64_t)dil_w * (w->shape[3] - 1) + 1) {
    mmp_error_set(MMP_ESHAPE, "conv2d: kernel %s larger than the padded input %s", mmp__desc(w), mmp__desc(x));
    return NULL;
  }
  mmp_tensor_t *xc = mmp_contiguous((mmp_tensor_t *)x), *wc = mmp_contiguous((mmp_tensor_t *)w);
  mmp_tensor_t *bc = bias ? mmp_contiguous((mmp_tensor_t *)bias) : NULL, *r = NULL;
  if (xc && wc && (!bias || bc)) {
    int64_t so[4] = {x->shape[0], w->shape[0], OH, OW};
    mmp_op_params_t p = {{0}, {stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                               (int64_t)mmp_tensor_compute_dtype(w) + 256 * (int64_t)act}};
    const mmp_tensor_t *srcs[3] = {xc, wc, bc};
    mmp_tensor_t *y = mmp_tensor_new(be, MMP_F32, 4, so), *wu = y ? weight_for(be, MMP_OP_CONV2D, srcs, bias ? 3 : 2, y, wc) : NULL;
    srcs[1] = wu;
    if (!wu)
      mmp_tensor_unref(y);
    else
      r = run(be, MMP_OP_CONV2D, &p, srcs, bias ? 3 : 2, y);
    mmp_tensor_unref(wu);
  }
  mmp_tensor_unref(xc);
  mmp_tensor_unref(wc);
  mmp_tensor_unref(bc);
  return r;
}

static mmp_tensor_t *norm_op(mmp_op_t op, const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,
                             const mmp_tensor_t *bias, double eps) {
  const char *name = mmp_op_name(op);
  const mmp_tensor_t *ts[3] = {x, weight, bias};
  mmp_backend_t *be = common_backend(name, 3, ts);
  if (!be || !need_f32(name, "x", x) || !need_f32(name, "weight", weight) || !need_f32(name, "bias", bias))
    return NULL;
  int64_t C;
  if (op != MMP_OP_LAYER_NORM) {
    if (x->ndim < 2 || groups < 1 || x->shape[1] % groups) {
      mmp_error_set(MMP_ESHAPE, "%s: x %s needs [N, C, ...] with C divisible by %d groups", name, mmp__desc(x),
                    groups);
      return NULL;
    }
    C = x->shape[1];
  } else {
    if (x->ndim < 1) {
      mmp_error_set(MMP_ESHAPE, "layer_norm: x is a scalar");
      return NULL;
    }
    C = x->shape[x->ndim - 1];
  }
  for (int k = 0; k < 2; k++) {
    const mmp_tensor_t *t = k ? bias : weight;
    if (t && (t->ndim != 1 || t->shape[0] != C)) {
      mmp_error_set(MMP_ESHAPE, "%s: %s %s does not match x %s (want [%lld])", name, k ? "bias" : "weight",
                    mmp__desc(t), mmp__desc(x), (long long)C);
      return NULL;
    }
  }
  mmp_tensor_t *xc = mmp_contiguous((mmp_tensor_t *)x);
  mmp_tensor_t *wc = weight ? mmp_contiguous((mmp_tensor_t *)weight) : NULL;
  mmp_tensor_t *bc = bias ? mmp_contiguous((mmp_tensor_t *)bias) : NULL, *r = NULL;
  if (xc && (!weight || wc) && (!bias || bc)) {
    mmp_op_params_t p = {{eps}, {groups}};
    const mmp_tensor_t *srcs[3] = {xc, wc, bc};
    r = run(be, op, &p, srcs, 3, mmp_tensor_new(be, MMP_F32, x->ndim, x->shape));
  }
  mmp_tensor_unref(xc);
  mmp_tensor_unref(wc);
  mmp_tensor_unref(bc);
  return r;
}

static mmp_tensor_t *group_norm_impl(const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,
                             const mmp_tensor_t *bias, double eps) {
  if (!x) return NULL;
  return norm_op(MMP_OP_GROUP_NORM, x, groups, weight, bias, eps);
}

static mmp_tensor_t *group_norm_silu_impl(const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,
                                  const mmp_tensor_t *bias, double eps) {
  if (!x) return NULL;
  return norm_op(MMP_OP_GROUP_NORM_SILU, x, groups, weight, bias, eps);
}

static mmp_tensor_t *layer_norm_impl(const mmp_tensor_t *x, const mmp_tensor_t *weight, const mmp_tensor_t *bias,
                             double eps) {
  if (!x) return NULL;
  return norm_op(MMP_OP_LAYER_NORM, x, 1, weight, bias, eps);
}

static mmp_tensor_t *softmax_impl(const mmp_tensor_t *x, int dim) {
  if (!x) return NULL;
  if (!need_f32("softmax", "x", x)) return NULL;
  int d = dim < 0 ? dim + x->ndim : dim;
  if (d < 0 || d >= x->ndim) {
    mmp_error_set(MMP_EINVAL, "softmax: dim %d out of range for %s", dim, mmp__desc(x));
    return NULL;
  }
  mmp_backend_t *be = x->storage->be;
  mmp_op_params_t p = {{0}, {d}};
  const mmp_tensor_t *srcs[1] = {x};
  return run(be, MMP_OP_SOFTMAX, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, x->ndim, x->shape));
}

static mmp_tensor_t *attention_impl(const mmp_tensor_t *q, const mmp_tensor_t *k, const mmp_tensor_t *v,
                            const mmp_tensor_t *key_mask, bool causal, double scale) {
  if (!q || !k || !v) return NULL;
  const mmp_tensor_t *ts[4] = {q, k, v, key_mask};
  mmp_backend_t *be = common_backend("attention", 4, ts);
  if (!be || !need_f32("attention", "q", q) || !need_f32("attention", "k", k) || !need_f32("attention", "v", v))
    return NULL;
  if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4 || k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] ||
      k->shape[1] != q->shape[1] || v->shape[1] != q->shape[1] || k->shape[3] != q->shape[3] ||
      v->shape[2] != k->shape[2]) {
    mmp_error_set(MMP_ESHAPE, "attention: q %s, k %s, v %s do not fit (want q [B,H,Lq,D], k [B,H,Lk,D], v [B,H,Lk,Dv])",
                  mmp__desc(q), mmp__desc(k), mmp__desc(v));
    return NULL;
  }
  if (key_mask && (key_mask->ndim != 2 || key_mask->shape[0] != q->shape[0] || key_mask->shape[1] != k->shape[2] ||
                   (key_mask->dtype != MMP_BOOL && key_mask->dtype != MMP_U8))) {
    mmp_error_set(MMP_ESHAPE, "attention: key_mask %s must be bool/u8 [%lld, %lld]", mmp__desc(key_mask),
                  (long long)q->shape[0], (long long)k->shape[2]);
    return NULL;
  }
  if (scale <= 0) scale = q->shape[3] ? 1.0 / sqrt((double)q->shape[3]) : 1.0;
  mmp_tensor_t *qc = mmp_contiguous((mmp_tensor_t *)q), *kc = mmp_contiguous((mmp_tensor_t *)k);
  mmp_tensor_t *vc = mmp_contiguous((mmp_tensor_t *)v);
  mmp_tensor_t *mc = key_mask ? mmp_contiguous((mmp_tensor_t *)key_mask) : NULL, *r = NULL;
  if (qc && kc && vc && (!key_mask || mc)) {
    int64_t so[4] = {q->shape[0], q->shape[1], q->shape[2], v->shape[3]};
    mmp_op_params_t p = {{scale}, {causal ? 1 : 0}};
    const mmp_tensor_t *srcs[4] = {qc, kc, vc, mc};
    r = run(be, MMP_OP_ATTENTION, &p, srcs, key_mask ? 4 : 3, mmp_tensor_new(be, MMP_F32, 4, so));
  }
  mmp_tensor_unref(qc);
  mmp_tensor_unref(kc);
  mmp_tensor_unref(vc);
  mmp_tensor_unref(mc);
  return r;
}

static mmp_tensor_t *spatial_op(mmp_op_t op, const mmp_tensor_t *x, int kernel, int stride, int pad,
                                bool exclude_pad) {
  if (!x) return NULL;
  const char *name = mmp_op_name(op);
  if (!need_f32(name, "x", x)) return NULL;
  if (x->ndim != 4) {
    mmp_error_set(MMP_ESHAPE, "%s: x %s must be [N, C, H, W]", name, mmp__desc(x));
    return NULL;
  }
  int64_t so[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
  if (op != MMP_OP_UPSAMPLE_NEAREST2X) {
    if (kernel < 1 || stride < 1 || pad < 0 || pad > kernel / 2) {
      mmp_error_set(MMP_EINVAL, "%s: kernel %d, stride %d, padding %d out of range (padding at most kernel/2)", name,
                    kernel, stride, pad);
      return NULL;
    }
    if (x->shape[2] + 2 * pad < kernel || x->shape[3] + 2 * pad < kernel) {
      mmp_error_set(MMP_ESHAPE, "%s: kernel %d larger than the padded input %s", name, kernel, mmp__desc(x));
      return NULL;
    }
    so[2] = (x->shape[2] + 2 * pad - kernel) / stride + 1;
    so[3] = (x->shape[3] + 2 * pad - kernel) / stride + 1;
  }
  mmp_tensor_t *xc = mmp_contiguous((mmp_tensor_t *)x);
  if (!xc) return NULL;
  mmp_backend_t *be = x->storage->be;
  mmp_op_params_t p = {{0}, {kernel, stride, pad, exclude_pad ? 1 : 0}};
  const mmp_tensor_t *srcs[1] = {xc};
  mmp_tensor_t *r = run(be, op, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, 4, so));
  mmp_tensor_unref(xc);
  return r;
}

static mmp_tensor_t *upsample_nearest2x_impl(const mmp_tensor_t *x) {
  return spatial_op(MMP_OP_UPSAMPLE_NEAREST2X, x, 0, 0, 0, false);
}
static mmp_tensor_t *avg_pool2d_impl(const mmp_tensor_t *x, int kernel, int stride, int pad) {
  return spatial_op(MMP_OP_AVG_POOL2D, x, kernel, stride, pad, false);
}
static mmp_tensor_t *avg_pool2d_ex_impl(const mmp_tensor_t *x, int kernel, int stride, int pad, bool count_include_pad) {
  return spatial_op(MMP_OP_AVG_POOL2D, x, kernel, stride, pad, !count_include_pad);
}
static mmp_tensor_t *max_pool2d_impl(const mmp_tensor_t *x, int kernel, int stride, int pad) {
  return spatial_op(MMP_OP_MAX_POOL2D, x, kernel, stride, pad, false);
}

static mmp_tensor_t *resize_bilinear_impl(const mmp_tensor_t *x, int64_t out_h, int64_t out_w, bool align_corners) {
  if (!x) return NULL;
  if (!need_f32("resize_bilinear", "x", x)) return NULL;
  if (x->ndim != 4) {
    mmp_error_set(MMP_ESHAPE, "resize_bilinear: x %s must be [N, C, H, W]", mmp__desc(x));
    return NULL;
  }
  if (out_h < 1 || out_w < 1 || out_h > (1 << 16) || out_w > (1 << 16) || (x->shape[2] == 0 || x->shape[3] == 0)) {
    mmp_error_set(MMP_EINVAL, "resize_bilinear: output size %lldx%lld of %s out of range (1..65536, non-empty input)",
                  (long long)out_h, (long long)out_w, mmp__desc(x));
    return NULL;
  }
  mmp_tensor_t *xc = mmp_contiguous((mmp_tensor_t *)x);
  if (!xc) return NULL;
  mmp_backend_t *be = x->storage->be;
  int64_t so[4] = {x->shape[0], x->shape[1], out_h, out_w};
  mmp_op_params_t p = {{0}, {align_corners ? 1 : 0}};
  const mmp_tensor_t *srcs[1] = {xc};
  mmp_tensor_t *r = run(be, MMP_OP_RESIZE_BILINEAR, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, 4, so));
  mmp_tensor_unref(xc);
  return r;
}

static mmp_tensor_t *embedding_impl(const mmp_tensor_t *table, const mmp_tensor_t *ids) {
  if (!table || !ids) return NULL;
  const mmp_tensor_t *ts[2] = {table, ids};
  mmp_backend_t *be = common_backend("embedding", 2, ts);
  /* a half-precision table (weights_dtype) is gathered row by row into f32 */
  const bool half = table->dtype == MMP_F16 || table->dtype == MMP_BF16;
  if (!be || (!half && !need_f32("embedding", "table", table))) return NULL;
  if (table->ndim != 2) {
    mmp_error_set(MMP_ESHAPE, "embedding: table %s must be [V, D]", mmp__desc(table));
    return NULL;
  }
  if (ids->dtype != MMP_I64 && ids->dtype != MMP_I32) {
    mmp_error_set(MMP_EDTYPE, "embedding: ids %s must be i64 or i32", mmp__desc(ids));
    return NULL;
  }
  if (ids->ndim >= MMP_MAX_DIMS) {
    mmp_error_set(MMP_ESHAPE, "embedding: ids %s have too many dims", mmp__desc(ids));
    return NULL;
  }
  mmp_tensor_t *tc = mmp_contiguous((mmp_tensor_t *)table), *ic = mmp_contiguous((mmp_tensor_t *)ids), *r = NULL;
  if (tc && ic) {
    int64_t so[2] = {mmp_tensor_numel(ids), table->shape[1]};
    mmp_tensor_t *y = mmp_tensor_new(be, MMP_F32, 2, so);
    const mmp_tensor_t *srcs[2] = {tc, ic};
    /* a backend without half tables (CUDA) gathers from an f32 copy */
    if (y && half && !mmp_backend_supports(be, MMP_OP_EMBEDDING, srcs, 2, y)) {
      mmp_tensor_t *f = mmp_convert(tc, MMP_F32);
      mmp_tensor_unref(tc);
      srcs[0] = tc = f;
    }
    if (tc) {
      y = run(be, MMP_OP_EMBEDDING, NULL, srcs, 2, y);
    } else {
      mmp_tensor_unref(y);
      y = NULL;
    }
    if (y) {
      int64_t shape[MMP_MAX_DIMS];
      memcpy(shape, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
      shape[ids->ndim] = table->shape[1];
      r = mmp_reshape(y, ids->ndim + 1, shape);
      mmp_tensor_unref(y);
    }
  }
  mmp_tensor_unref(tc);
  mmp_tensor_unref(ic);
  return r;
}

static mmp_tensor_t *timestep_embedding_impl(const mmp_tensor_t *t, int dim, bool flip_sin_to_cos,
                                     double downscale_freq_shift, double scale, double max_period) {
  if (!t) return NULL;
  if (t->ndim != 1) {
    mmp_error_set(MMP_ESHAPE, "timestep_embedding: timesteps %s must be 1-D", mmp__desc(t));
    return NULL;
  }
  if (dim < 1 || max_period <= 0 || (dim / 2) - downscale_freq_shift == 0) {
    mmp_error_set(MMP_EINVAL, "timestep_embedding: dim %d, max_period %g, downscale_freq_shift %g out of range", dim,
                  max_period, downscale_freq_shift);
    return NULL;
  }
  if (t->dtype == MMP_BOOL) {
    mmp_error_set(MMP_EDTYPE, "timestep_embedding: timesteps %s must be numeric", mmp__desc(t));
    return NULL;
  }
  mmp_backend_t *be = t->storage->be;
  int64_t so[2] = {t->shape[0], dim};
  mmp_op_params_t p = {{downscale_freq_shift, scale, max_period}, {flip_sin_to_cos ? 1 : 0}};
  const mmp_tensor_t *srcs[1] = {t};
  return run(be, MMP_OP_TIMESTEP_EMBEDDING, &p, srcs, 1, mmp_tensor_new(be, MMP_F32, 2, so));
}

/* ------------------------------------------------------------ host resize */

/* torch's cubic convolution weights (A = -0.75) of the taps -1..2 around a
 * source position with fractional part @t. */
static void cubic_weights(double t, double w[4]) {
  const double A = -0.75;
#define CC1(x) (((A + 2) * (x) - (A + 3)) * (x) * (x) + 1)
#define CC2(x) ((((A * (x) - 5 * A) * (x) + 8 * A) * (x)) - 4 * A)
  w[0] = CC2(t + 1);
  w[1] = CC1(t);
  w[2] = CC1(1 - t);
  w[3] = CC2(2 - t);
#undef CC1
#undef CC2
}

/* Per output index: the first tap (unclamped) and the four weights. */
static void cubic_axis(int64_t in, int64_t out, int64_t *first, double *w) {
  double scale = (double)in / (double)out;
  for (int64_t o = 0; o < out; o++) {
    double src = scale * ((double)o + 0.5) - 0.5;
    double f = floor(src);
    first[o] = (int64_t)f - 1;
    cubic_weights(src - f, w + 4 * o);
  }
}

static int64_t clampi(int64_t v, int64_t n) { return v < 0 ? 0 : v >= n ? n - 1 : v; }

static mmp_tensor_t *resize_bicubic_impl(const mmp_tensor_t *x, int64_t oh, int64_t ow) {
  if (!x) return NULL;
  if (!need_f32("resize_bicubic", "x", x)) return NULL;
  if (x->ndim != 4) {
    mmp_error_set(MMP_ESHAPE, "resize_bicubic: x %s must be [N, C, H, W]", mmp__desc(x));
    return NULL;
  }
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  /* A bound that keeps every size product below 2^40 elements. */
  if (oh < 1 || ow < 1 || oh > 65536 || ow > 65536 || H < 1 || W < 1 || N * C > (1 << 20)) {
    mmp_error_set(MMP_EINVAL, "resize_bicubic: %s to %lldx%lld is out of range", mmp__desc(x), (long long)oh,
                  (long long)ow);
    return NULL;
  }
  size_t nin = (size_t)(N * C * H * W), nout = (size_t)(N * C * oh * ow);
  float *src = malloc(nin * sizeof *src), *dst = malloc(nout * sizeof *dst);
  int64_t *fy = malloc((size_t)(oh + ow) * sizeof *fy);
  double *wy = malloc((size_t)(oh + ow) * 4 * sizeof *wy);
  mmp_tensor_t *r = NULL;
  if (!src || !dst || !fy || !wy) {
    mmp_error_set(MMP_ENOMEM, "resize_bicubic: out of memory");
  } else if (mmp_tensor_to_host(x, src, nin * sizeof *src) == 0) {
    int64_t *fx = fy + oh;
    double *wx = wy + 4 * oh;
    cubic_axis(H, oh, fy, wy);
    cubic_axis(W, ow, fx, wx);
    for (int64_t p = 0; p < N * C; p++) {
      const float *s = src + p * H * W;
      float *d = dst + p * oh * ow;
      for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) {
          double acc = 0;
          for (int i = 0; i < 4; i++) {
            const float *row = s + clampi(fy[oy] + i, H) * W;
            double v = 0;
            for (int j = 0; j < 4; j++) v += wx[4 * ox + j] * row[clampi(fx[ox] + j, W)];
            acc += wy[4 * oy + i] * v;
          }
          d[oy * ow + ox] = (float)acc;
        }
    }
    int64_t so[4] = {N, C, oh, ow};
    r = mmp_tensor_from_data(x->storage->be, MMP_F32, 4, so, dst);
  }
  free(src);
  free(dst);
  free(fy);
  free(wy);
  return r;
}

/* ------------------------------------------------------------ the tape hook */

/* The public ops: each runs its implementation with the tape (if any)
 * suspended, then hands the tape the node (doc/training.md). With no tape
 * current this costs one thread-local load. */
static mmp_tensor_t *rec(mmp_tape_t *tp, mmp_tensor_t *r, mmp__tk_t kind, const char *name, int nin,
                         const mmp_tensor_t *a, const mmp_tensor_t *b, const mmp_tensor_t *c,
                         const mmp_tensor_t *d, double f0, double f1, int niv, const int64_t *iv) {
  const mmp_tensor_t *in[4] = {a, b, c, d};
  mmp__tape_rec_t rc = {.kind = kind, .name = name, .nin = nin, .in = in, .f = {f0, f1, 0}};
  for (int k = 0; k < niv && k < 8; k++) rc.i[k] = iv[k];
  return mmp__tape_leave(tp, r, &rc);
}

#define REC1(kind, name, a) rec(tp, r, kind, name, 1, a, NULL, NULL, NULL, 0, 0, 0, NULL)
#define REC2(kind, name, a, b) rec(tp, r, kind, name, 2, a, b, NULL, NULL, 0, 0, 0, NULL)

#define BINARY_OP(fn, kind)                                                   \
  mmp_tensor_t *mmp_##fn(const mmp_tensor_t *a, const mmp_tensor_t *b) {      \
    mmp_tape_t *tp = mmp__tape_enter();                                       \
    mmp_tensor_t *r = fn##_impl(a, b);                                        \
    return tp ? REC2(kind, #fn, a, b) : r;                                    \
  }
BINARY_OP(add, MMP__TK_ADD)
BINARY_OP(sub, MMP__TK_SUB)
BINARY_OP(mul, MMP__TK_MUL)
BINARY_OP(div, MMP__TK_DIV)

mmp_tensor_t *mmp_axpby(double alpha, const mmp_tensor_t *a, double beta, const mmp_tensor_t *b) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = axpby_impl(alpha, a, beta, b);
  return tp ? rec(tp, r, MMP__TK_AXPBY, "axpby", 2, a, b, NULL, NULL, alpha, beta, 0, NULL) : r;
}

mmp_tensor_t *mmp_scale(const mmp_tensor_t *a, double alpha, double beta) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = scale_impl(a, alpha, beta);
  return tp ? rec(tp, r, MMP__TK_SCALE, "scale", 1, a, NULL, NULL, NULL, alpha, beta, 0, NULL) : r;
}

mmp_tensor_t *mmp_clamp(const mmp_tensor_t *a, double lo, double hi) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = clamp_impl(a, lo, hi);
  return tp ? REC1(MMP__TK_NONE, "clamp", a) : r;
}

#define UNARY_OP(fn, kind)                                                    \
  mmp_tensor_t *mmp_##fn(const mmp_tensor_t *a) {                             \
    mmp_tape_t *tp = mmp__tape_enter();                                       \
    mmp_tensor_t *r = fn##_impl(a);                                           \
    return tp ? REC1(kind, #fn, a) : r;                                       \
  }
UNARY_OP(sqrt, MMP__TK_SQRT)
UNARY_OP(exp, MMP__TK_EXP)
UNARY_OP(abs, MMP__TK_NONE)
UNARY_OP(silu, MMP__TK_SILU)
UNARY_OP(gelu, MMP__TK_GELU)
UNARY_OP(gelu_tanh, MMP__TK_GELU_TANH)
UNARY_OP(quick_gelu, MMP__TK_QUICK_GELU)
UNARY_OP(sigmoid, MMP__TK_SIGMOID)
UNARY_OP(tanh, MMP__TK_TANH)
UNARY_OP(relu, MMP__TK_RELU)
UNARY_OP(geglu, MMP__TK_GEGLU)
UNARY_OP(upsample_nearest2x, MMP__TK_UPSAMPLE)

#define REDUCE_OP(fn, kind)                                                          \
  mmp_tensor_t *mmp_##fn(const mmp_tensor_t *a, int dim, bool keepdim) {             \
    mmp_tape_t *tp = mmp__tape_enter();                                              \
    mmp_tensor_t *r = fn##_impl(a, dim, keepdim);                                    \
    if (!tp) return r;                                                               \
    int64_t iv[2] = {r && dim < 0 ? dim + a->ndim : dim, keepdim};                   \
    return rec(tp, r, kind, #fn, 1, a, NULL, NULL, NULL, 0, 0, 2, iv);               \
  }
REDUCE_OP(sum, MMP__TK_SUM)
REDUCE_OP(mean, MMP__TK_MEAN)
REDUCE_OP(max, MMP__TK_NONE)

mmp_tensor_t *mmp_matmul(const mmp_tensor_t *a, const mmp_tensor_t *b, bool trans_a, bool trans_b) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = matmul_impl(a, b, trans_a, trans_b);
  if (!tp) return r;
  int64_t iv[2] = {trans_a, trans_b};
  return rec(tp, r, MMP__TK_MATMUL, "matmul", 2, a, b, NULL, NULL, 0, 0, 2, iv);
}

mmp_tensor_t *mmp_linear(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = linear_impl(x, w, bias);
  return tp ? rec(tp, r, MMP__TK_LINEAR, "linear", 3, x, w, bias, NULL, 0, 0, 0, NULL) : r;
}

mmp_tensor_t *mmp_conv2d(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias, int stride_h,
                         int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = conv2d_impl(x, w, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, 0);
  if (!tp) return r;
  int64_t iv[7] = {stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups};
  return rec(tp, r, MMP__TK_CONV2D, "conv2d", 3, x, w, bias, NULL, 0, 0, 7, iv);
}

mmp_tensor_t *mmp_conv2d_relu(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias, int stride_h,
                              int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups) {
  if (__builtin_expect(mmp__tape_tls != NULL, 0)) { /* recorded as the two ops, which have backwards */
    mmp_tensor_t *c = mmp_conv2d(x, w, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups);
    mmp_tensor_t *r = c ? mmp_relu(c) : NULL;
    mmp_tensor_unref(c);
    return r;
  }
  return conv2d_impl(x, w, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, MMP_OP_RELU);
}

#define NORM_OP(fn, kind)                                                                              \
  mmp_tensor_t *mmp_##fn(const mmp_tensor_t *x, int groups, const mmp_tensor_t *weight,                \
                         const mmp_tensor_t *bias, double eps) {                                       \
    mmp_tape_t *tp = mmp__tape_enter();                                                                \
    mmp_tensor_t *r = fn##_impl(x, groups, weight, bias, eps);                                         \
    if (!tp) return r;                                                                                 \
    int64_t iv[1] = {groups};                                                                          \
    return rec(tp, r, kind, #fn, 3, x, weight, bias, NULL, eps, 0, 1, iv);                             \
  }
NORM_OP(group_norm, MMP__TK_GROUP_NORM)
NORM_OP(group_norm_silu, MMP__TK_GROUP_NORM_SILU)

mmp_tensor_t *mmp_layer_norm(const mmp_tensor_t *x, const mmp_tensor_t *weight, const mmp_tensor_t *bias,
                             double eps) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = layer_norm_impl(x, weight, bias, eps);
  return tp ? rec(tp, r, MMP__TK_LAYER_NORM, "layer_norm", 3, x, weight, bias, NULL, eps, 0, 0, NULL) : r;
}

mmp_tensor_t *mmp_softmax(const mmp_tensor_t *x, int dim) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = softmax_impl(x, dim);
  if (!tp) return r;
  int64_t iv[1] = {r && dim < 0 ? dim + x->ndim : dim};
  return rec(tp, r, MMP__TK_SOFTMAX, "softmax", 1, x, NULL, NULL, NULL, 0, 0, 1, iv);
}

mmp_tensor_t *mmp_attention(const mmp_tensor_t *q, const mmp_tensor_t *k, const mmp_tensor_t *v,
                            const mmp_tensor_t *key_mask, bool causal, double scale) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = attention_impl(q, k, v, key_mask, causal, scale);
  if (!tp) return r;
  int64_t iv[1] = {causal};
  return rec(tp, r, MMP__TK_ATTENTION, "attention", 4, q, k, v, key_mask, scale, 0, 1, iv);
}

#define POOL_OP(fn, ...)                                                                   \
  {                                                                                        \
    mmp_tape_t *tp = mmp__tape_enter();                                                    \
    mmp_tensor_t *r = fn##_impl(__VA_ARGS__);                                              \
    return tp ? REC1(MMP__TK_NONE, #fn, x) : r;                                            \
  }
mmp_tensor_t *mmp_avg_pool2d(const mmp_tensor_t *x, int kernel, int stride, int pad)
    POOL_OP(avg_pool2d, x, kernel, stride, pad)
mmp_tensor_t *mmp_avg_pool2d_ex(const mmp_tensor_t *x, int kernel, int stride, int pad, bool count_include_pad)
    POOL_OP(avg_pool2d_ex, x, kernel, stride, pad, count_include_pad)
mmp_tensor_t *mmp_max_pool2d(const mmp_tensor_t *x, int kernel, int stride, int pad)
    POOL_OP(max_pool2d, x, kernel, stride, pad)
mmp_tensor_t *mmp_resize_bilinear(const mmp_tensor_t *x, int64_t out_h, int64_t out_w, bool align_corners)
    POOL_OP(resize_bilinear, x, out_h, out_w, align_corners)
mmp_tensor_t *mmp_resize_bicubic(const mmp_tensor_t *x, int64_t oh, int64_t ow)
    POOL_OP(resize_bicubic, x, oh, ow)

mmp_tensor_t *mmp_embedding(const mmp_tensor_t *table, const mmp_tensor_t *ids) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = embedding_impl(table, ids);
  return tp ? REC2(MMP__TK_EMBEDDING, "embedding", table, ids) : r;
}

mmp_tensor_t *mmp_timestep_embedding(const mmp_tensor_t *t, int dim, bool flip_sin_to_cos,
                                     double downscale_freq_shift, double scale, double max_period) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = timestep_embedding_impl(t, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period);
  return tp ? REC1(MMP__TK_NONE, "timestep_embedding", t) : r;
}
