/* core/backend_cpu_grad.c - the CPU backend's dispatch of the backward ops and the AdamW update. */
#include "config.h"

#include <string.h>

#include "core/cpu/kernels.h"
#include "core/tensor_impl.h"

static int act_of(int64_t fwd) {
  switch (fwd) {
  case MMP_OP_SILU: return MMP_CPU_ACT_SILU;
  case MMP_OP_GELU: return MMP_CPU_ACT_GELU;
  case MMP_OP_GELU_TANH: return MMP_CPU_ACT_GELU_TANH;
  case MMP_OP_QUICK_GELU: return MMP_CPU_ACT_QUICK_GELU;
  case MMP_OP_SIGMOID: return MMP_CPU_ACT_SIGMOID;
  case MMP_OP_TANH: return MMP_CPU_ACT_TANH;
  case MMP_OP_RELU: return MMP_CPU_ACT_RELU;
  default: return -1;
  }
}

static double bits_double(int64_t bits) {
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}

bool mmp__cpu_supports_backward(mmp_op_t op, const mmp_tensor_t *const *s, int nsrc, const mmp_tensor_t *dst) {
  if (dst->dtype != MMP_F32) return false;
  for (int i = 0; i < nsrc; i++) {
    if (!s[i]) continue;
    bool ids = op == MMP_OP_EMBEDDING_BACKWARD && i == 0, mask = op == MMP_OP_ATTENTION_BACKWARD && i == 5;
    if (ids && s[i]->dtype != MMP_I64 && s[i]->dtype != MMP_I32) return false;
    if (mask && s[i]->dtype != MMP_U8 && s[i]->dtype != MMP_BOOL) return false;
    if (!ids && !mask && s[i]->dtype != MMP_F32) return false;
  }
  return true;
}

int mmp__cpu_compute_backward(mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *s, int nsrc,
                              mmp_tensor_t *dst) {
  const int64_t n = mmp_tensor_numel(dst);
  switch (op) {
  case MMP_OP_ACT_BACKWARD: {
    int act = act_of(p->i[0]);
    if (act < 0) return mmp_error_set(MMP_EINVAL, "act_backward: op %s has no activation gradient", mmp_op_name((mmp_op_t)p->i[0]));
    return n ? mmp_cpu_act_backward(act, mmp__ptr(s[0]), mmp__ptr(s[1]), mmp__ptr(dst), n) : 0;
  }
  case MMP_OP_GEGLU_BACKWARD: {
    int64_t D = s[1]->shape[s[1]->ndim - 1], rows = D ? mmp_tensor_numel(s[1]) / D : 0;
    if (rows) mmp_cpu_geglu_backward(mmp__ptr(s[0]), mmp__ptr(s[1]), mmp__ptr(dst), rows, D);
    return 0;
  }
  case MMP_OP_LAYER_NORM_BACKWARD: {
    int64_t D = dst->shape[dst->ndim - 1], rows = D ? n / D : 0;
    if (!rows) return 0;
    return mmp_cpu_layer_norm_backward(mmp__ptr(s[0]), mmp__ptr(s[1]), nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL,
                                       rows, D, (float)p->f[0], mmp__ptr(dst));
  }
  case MMP_OP_GROUP_NORM_BACKWARD: {
    int64_t N = dst->shape[0], C = dst->shape[1], S = (N * C) != 0 ? n / (N * C) : 0;
    if (!n) return 0;
    return mmp_cpu_group_norm_backward(mmp__ptr(s[0]), mmp__ptr(s[1]), nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL, N,
                                       C, S, (int)p->i[0], (float)p->f[0], mmp__ptr(dst));
  }
  case MMP_OP_EMBEDDING_BACKWARD:
    return mmp_cpu_embedding_backward(mmp__ptr(s[0]), s[0]->dtype == MMP_I64, mmp_tensor_numel(s[0]),
                                      mmp__ptr(s[1]), dst->shape[0], dst->shape[1], p->i[0], mmp__ptr(dst));
  case MMP_OP_CONV2D_BACKWARD_INPUT: {
    const mmp_tensor_t *w = s[1];
    if (!n) return 0;
    return mmp_cpu_conv2d_backward_input(mmp__ptr(s[0]), mmp__ptr(w), dst->shape[0], dst->shape[1], dst->shape[2],
                                         dst->shape[3], w->shape[0], w->shape[2], w->shape[3], (int)p->i[0],
                                         (int)p->i[1], (int)p->i[2], (int)p->i[3], (int)p->i[4], (int)p->i[5],
                                         (int)p->i[6], mmp__ptr(dst));
  }
  case MMP_OP_CONV2D_BACKWARD_WEIGHT: {
    const mmp_tensor_t *x = s[0];
    if (!n) return 0;
    if (!mmp_tensor_numel(x)) {
      memset(mmp__ptr(dst), 0, (size_t)n * sizeof(float));
      return 0;
    }
    return mmp_cpu_conv2d_backward_weight(mmp__ptr(x), mmp__ptr(s[1]), x->shape[0], x->shape[1], x->shape[2],
                                          x->shape[3], dst->shape[0], dst->shape[2], dst->shape[3], (int)p->i[0],
                                          (int)p->i[1], (int)p->i[2], (int)p->i[3], (int)p->i[4], (int)p->i[5],
                                          (int)p->i[6], mmp__ptr(dst));
  }
  case MMP_OP_ATTENTION_BACKWARD: {
    const mmp_tensor_t *q = s[0], *k = s[1], *v = s[2], *m = s[5];
    if (nsrc < 8 || !s[6] || !s[7])
      return mmp_error_set(MMP_EINVAL, "attention_backward: the dk and dv outputs are missing");
    if (!n && !mmp_tensor_numel(s[6])) return 0;
    return mmp_cpu_attention_backward(mmp__ptr(q), mmp__ptr(k), mmp__ptr(v), mmp__ptr(s[3]), mmp__ptr(s[4]),
                                      q->shape[0], q->shape[1], q->shape[2], k->shape[2], q->shape[3], v->shape[3],
                                      m ? mmp__ptr(m) : NULL, p->i[0] != 0, (float)p->f[0], mmp__ptr(dst),
                                      mmp__ptr(s[6]), mmp__ptr(s[7]));
  }
  case MMP_OP_ADAMW:
    if (n)
      mmp_cpu_adamw(mmp__ptr(dst), mmp__ptr(s[0]), mmp__ptr(s[1]), mmp__ptr(s[2]), n, (float)p->f[0],
                    bits_double(p->i[0]), bits_double(p->i[1]), (float)p->f[1], (float)p->f[2],
                    (float)p->f[3]);
    return 0;
  default: return mmp_error_set(MMP_EUNSUPPORTED, "cpu: op %s not implemented", mmp_op_name(op));
  }
}
