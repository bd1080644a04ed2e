/* mmpipe/grad.h - backward (gradient) ops: the vector-Jacobian product of each forward op.
 *
 * For a forward op y = f(x, w, ...) and the gradient g = dL/dy of a scalar
 * loss L, the backward op returns dL/dx, dL/dw, ... with the shapes of x,
 * w, .... They are eager ops like those of tensor.h, take the forward's
 * inputs (never state hidden inside a forward call) and recompute what the
 * forward computed internally (norm statistics, attention scores), so a
 * forward pass keeps nothing extra for them. A training loop, a tape
 * (doc/training.md) or a model's hand-written backward calls them; none of
 * them knows about optimizers.
 *
 *   mmp_tensor_t *y = mmp_linear(x, w, b);
 *   mmp_tensor_t *loss = mmp_mse_loss(y, target);     // 0-dim
 *   mmp_tensor_t *gy = NULL, *gx = NULL, *gw = NULL, *gb = NULL;
 *   mmp_mse_loss_backward(1.0, y, target, &gy, NULL);
 *   mmp_linear_backward(gy, x, w, &gx, &gw, &gb);       // gb: sum of gy rows
 *
 * Conventions: every output pointer may be NULL (that gradient is not
 * computed). On success the requested outputs are new tensors (transfer
 * full) on the operands' backend and 0 is returned; on failure every output
 * is NULL and a negative MMP_E* code is returned with the message set. A
 * NULL required input returns MMP_EINVAL without touching the message (as
 * the forward ops do, so a chain can be checked once). Single-output
 * backward ops return the tensor or NULL. Gradients are f32; operands may be
 * strided (they are made contiguous where a kernel needs it).
 */
#ifndef MMPIPE_GRAD_H
#define MMPIPE_GRAD_H

#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- broadcasting and views ---- */
/* Sum @g over the dims that numpy broadcasting expanded from @shape (and
 * over leading dims @shape lacks): the backward of any broadcast. Returns a
 * contiguous tensor of @shape. (transfer full) */
mmp_tensor_t *mmp_sum_to_shape(const mmp_tensor_t *g, int ndim, const int64_t *shape);
/* y = a + b / a - b / a * b (broadcasting). */
int mmp_add_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b,
                     mmp_tensor_t **ga, mmp_tensor_t **gb);
int mmp_sub_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b,
                     mmp_tensor_t **ga, mmp_tensor_t **gb);
int mmp_mul_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b,
                     mmp_tensor_t **ga, mmp_tensor_t **gb);
/* y = alpha * a + beta: ga = alpha * g. (transfer full) */
mmp_tensor_t *mmp_scale_backward(const mmp_tensor_t *g, double alpha);
/* y = reshape/view of x (any view op that keeps the element order): g
 * reshaped to @ndim/@shape (x's). (transfer full) */
mmp_tensor_t *mmp_reshape_backward(const mmp_tensor_t *g, int ndim, const int64_t *shape);
/* y = permute(x, perm): g permuted back (a view). (transfer full) */
mmp_tensor_t *mmp_permute_backward(const mmp_tensor_t *g, const int *perm);
/* y = slice(x, dim, start, end, step) of x with @ndim/@shape: zeros of x's
 * shape with g written into the slice. (transfer full) */
mmp_tensor_t *mmp_slice_backward(const mmp_tensor_t *g, int ndim, const int64_t *shape, int dim,
                                 int64_t start, int64_t end, int64_t step);
/* y = concat(x[0..n), dim) with sizes[i] = x[i]'s size along @dim: out[i]
 * = the matching slice of g (contiguous copies). */
int mmp_concat_backward(const mmp_tensor_t *g, int n, const int64_t *sizes, int dim,
                        mmp_tensor_t **out);

/* ---- linear algebra ---- */
/* y = matmul(a, b, trans_a, trans_b) with batch broadcasting: ga/gb have
 * a's/b's shapes (broadcast batch dims summed). */
int mmp_matmul_backward(const mmp_tensor_t *g, const mmp_tensor_t *a, const mmp_tensor_t *b,
                        bool trans_a, bool trans_b, mmp_tensor_t **ga, mmp_tensor_t **gb);
/* y = linear(x[..., in], w[out, in], bias): gx [..., in], gw [out, in],
 * gbias [out] (the sum of g over every leading dim). */
int mmp_linear_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *w,
                        mmp_tensor_t **gx, mmp_tensor_t **gw, mmp_tensor_t **gbias);
/* y = conv2d(x, w, bias, ...) with the same geometry arguments. */
int mmp_conv2d_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *w,
                        int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w,
                        int groups, mmp_tensor_t **gx, mmp_tensor_t **gw, mmp_tensor_t **gbias);

/* ---- activations (x = the forward's input) (transfer full) ---- */
mmp_tensor_t *mmp_silu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_gelu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_gelu_tanh_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_quick_gelu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_sigmoid_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_tanh_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
mmp_tensor_t *mmp_relu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
/* x[..., 2D] -> g[..., D]: dx[..., 2D] (halves: dh = g * gelu(gate),
 * dgate = g * h * gelu'(gate)). */
mmp_tensor_t *mmp_geglu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x);
/* y = softmax(x, dim) (y = the forward's OUTPUT): dx = y * (g - sum(g * y)). */
mmp_tensor_t *mmp_softmax_backward(const mmp_tensor_t *g, const mmp_tensor_t *y, int dim);

/* ---- normalisation (weight/bias as in the forward, nullable) ---- */
int mmp_layer_norm_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, const mmp_tensor_t *weight,
                            double eps, mmp_tensor_t **gx, mmp_tensor_t **gweight,
                            mmp_tensor_t **gbias);
int mmp_group_norm_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, int groups,
                            const mmp_tensor_t *weight, double eps, mmp_tensor_t **gx,
                            mmp_tensor_t **gweight, mmp_tensor_t **gbias);
/* y = silu(group_norm(x)) (mmp_group_norm_silu): the normalised values are
 * recomputed, so the bias is needed too. */
int mmp_group_norm_silu_backward(const mmp_tensor_t *g, const mmp_tensor_t *x, int groups,
                                 const mmp_tensor_t *weight, const mmp_tensor_t *bias, double eps,
                                 mmp_tensor_t **gx, mmp_tensor_t **gweight, mmp_tensor_t **gbias);

/* ---- lookups and resampling ---- */
/* y = embedding(table[V, D], ids): the table's gradient [V, D], rows
 * summed per id in the ids' order; the row of @padding_idx (>= 0; -1 for
 * none) stays 0 like torch's padding_idx. (transfer full) */
mmp_tensor_t *mmp_embedding_backward(const mmp_tensor_t *g, const mmp_tensor_t *ids, int64_t num_embeddings,
                                     int64_t padding_idx);
/* y = upsample_nearest2x(x): each 2x2 block of g summed. (transfer full) */
mmp_tensor_t *mmp_upsample_nearest2x_backward(const mmp_tensor_t *g);

/* ---- attention ---- */
/* y = attention(q, k, v, key_mask, causal, scale) and @out = that y (the
 * forward output; recompute it if it was not kept). Score blocks are
 * recomputed, as in the forward: memory O(block) per thread, never
 * Lq x Lk per head. Rows whose every key is masked get zero gradients (their
 * forward output is 0). */
int mmp_attention_backward(const mmp_tensor_t *g, const mmp_tensor_t *q, const mmp_tensor_t *k,
                           const mmp_tensor_t *v, const mmp_tensor_t *out,
                           const mmp_tensor_t *key_mask, bool causal, double scale,
                           mmp_tensor_t **gq, mmp_tensor_t **gk, mmp_tensor_t **gv);

/* ---- losses ---- */
/* mean((a - b)^2) over all elements as a 0-dim tensor (F.mse_loss). (transfer full) */
mmp_tensor_t *mmp_mse_loss(const mmp_tensor_t *a, const mmp_tensor_t *b);
/* Gradients of mmp_mse_loss scaled by @g (dL/dloss; 1 for the loss itself):
 * ga = 2 g (a - b) / n, gb = -ga. */
int mmp_mse_loss_backward(double g, const mmp_tensor_t *a, const mmp_tensor_t *b, mmp_tensor_t **ga,
                          mmp_tensor_t **gb);

#ifdef __cplusplus
}
#endif
#endif
