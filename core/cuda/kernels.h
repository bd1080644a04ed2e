/* core/cuda/kernels.h - C entry points of the CUDA kernels (core/cuda/ *.cu) for core/backend_cuda.c (internal).
 *
 * Every launcher enqueues its kernel(s) on @stream and returns the
 * cudaError_t of the launch as an int (0 = cudaSuccess); errors of the
 * kernel's execution surface at the next synchronising call. Pointers are
 * device pointers to element 0 of each operand; strides and offsets are in
 * elements. dtype codes are mmp_dtype_t values. The launchers know nothing
 * of mmp_tensor_t: the backend checks shapes and dtypes first.
 */
#ifndef MMPIPE_CUDA_KERNELS_H
#define MMPIPE_CUDA_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MMPK_MAX_DIMS 5 /* = MMP_MAX_DIMS */
#define MMPK_MAX_OPS 3

/* Up to three operands of one shape (dst first), dims already coalesced by
 * the host (size-1 dims dropped, contiguous runs merged); nd >= 1. */
typedef struct mmpk_iter {
  int nd;
  int64_t numel;
  int64_t shape[MMPK_MAX_DIMS];
  int64_t stride[MMPK_MAX_OPS][MMPK_MAX_DIMS];
} mmpk_iter_t;

/* Op codes of the elementwise kernels (the backend maps mmp_op_t to these). */
enum {
  MMPK_ADD = 0, MMPK_SUB, MMPK_MUL, MMPK_DIV, MMPK_AXPBY,
  MMPK_SCALE, MMPK_CLAMP, MMPK_SQRT, MMPK_EXP, MMPK_ABS, MMPK_SILU, MMPK_GELU,
  MMPK_GELU_TANH, MMPK_QUICK_GELU, MMPK_SIGMOID, MMPK_TANH, MMPK_RELU
};
enum { MMPK_RED_SUM = 0, MMPK_RED_MEAN, MMPK_RED_MAX, MMPK_RED_ARGMAX };
enum { MMPK_RNG_UNIFORM = 0, MMPK_RNG_NORMAL = 1, MMPK_RNG_RANDINT = 2 };

/* ---- elementwise.cu ---- */
/* dst (operand 0, dtype ddt) <- src (operand 1, dtype sdt), converted. */
int mmpk_copy(cudaStream_t s, const mmpk_iter_t *it, void *dst, int ddt, const void *src, int sdt);
/* operand 0 <- the @esize-byte pattern @bits. */
int mmpk_fill(cudaStream_t s, const mmpk_iter_t *it, void *dst, int esize, uint64_t bits);
/* f32: d = a (op) b; AXPBY: d = alpha*a + beta*b. */
int mmpk_binary(cudaStream_t s, int op, const mmpk_iter_t *it, float *d, const float *a, const float *b,
                float alpha, float beta);
/* f32: d = op(a); SCALE: alpha*a + beta; CLAMP: [alpha, beta]. Operands 0, 1. */
int mmpk_unary(cudaStream_t s, int op, const mmpk_iter_t *it, float *d, const float *a, float alpha, float beta);
/* x[rows, 2D] contiguous -> y[rows, D] = x[:, :D] * gelu(x[:, D:]). */
int mmpk_geglu(cudaStream_t s, const float *x, float *y, int64_t rows, int64_t D);

/* ---- reduce.cu ---- */
/* Reduce x (shape/stride over nd dims) over @dim into contiguous y (f32, or
 * i64 for ARGMAX), one output per position of the other dims. */
int mmpk_reduce(cudaStream_t s, int op, int nd, const int64_t *shape, const int64_t *xstride, int dim,
                const float *x, void *y);
/* softmax over @dim of x (any strides) into contiguous y of the same shape. */
int mmpk_softmax(cudaStream_t s, int nd, const int64_t *shape, const int64_t *xstride, int dim, const float *x,
                 float *y);

/* ---- norm.cu ---- (f32 statistics; gamma/beta nullable) */
int mmpk_group_norm(cudaStream_t s, const float *x, int64_t N, int64_t C, int64_t S, int groups,
                    const float *gamma, const float *beta, float eps, float *y);
int mmpk_layer_norm(cudaStream_t s, const float *x, int64_t rows, int64_t D, const float *gamma,
                    const float *beta, float eps, float *y);

/* ---- conv.cu ---- */
/* x[C, H, W] (one sample; dtype f32/f16/bf16 via @esize 4 or 2) -> col
 * [C*KH*KW, p1-p0] for output pixels p0 <= p < p1 (p = oh*OW + ow). */
int mmpk_im2col(cudaStream_t s, const void *x, int esize, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW,
                int sh, int sw, int ph, int pw, int dh, int dw, int64_t OW, int64_t p0, int64_t p1, void *col);
/* y[n, o, p] = bias[o] for a [N, O, P] tensor of dtype @dt (f32/f16/bf16). */
int mmpk_bias_fill(cudaStream_t s, void *y, int dt, const float *bias, int64_t N, int64_t O, int64_t P);
/* y[rows, O] = bias[o] (dtype @dt). */
int mmpk_bias_rows(cudaStream_t s, void *y, int dt, const float *bias, int64_t rows, int64_t O);

/* ---- attention.cu ----
 * q[B,H,Lq,D], k[B,H,Lk,D], v[B,H,Lk,Dv] contiguous, dtype @dt (f32, f16,
 * bf16), out[B,H,Lq,Dv] of dtype @odt (f32 or @dt). key_mask nullable u8
 * [B, Lk], nonzero = masked; causal masks key j > query i. Rows with every
 * key masked give 0. D, Dv <= 256 (mmpk_attention_max_dim). */
int mmpk_attention_max_dim(void);
int mmpk_attention(cudaStream_t s, int dt, int odt, const void *q, const void *k, const void *v,
                   const uint8_t *key_mask, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                   bool causal, float scale, void *out);

/* ---- misc.cu ---- (f32, contiguous) */
int mmpk_upsample_nearest2x(cudaStream_t s, const float *x, float *y, int64_t planes, int64_t H, int64_t W);
int mmpk_pool2d(cudaStream_t s, bool is_max, bool exclude_pad, const float *x, float *y, int64_t planes, int64_t H,
                int64_t W, int64_t OH, int64_t OW, int k, int stride, int pad);
int mmpk_resize_bilinear(cudaStream_t s, const float *x, float *y, int64_t planes, int64_t H, int64_t W, int64_t OH,
                         int64_t OW, bool align_corners);
/* ids i64 (@ids64) or i32; bad ids leave rows zero and atomically record the
 * smallest bad position in *bad (initialise it to UINT64_MAX). */
int mmpk_embedding(cudaStream_t s, const float *table, int64_t V, int64_t D, const void *ids, bool ids64,
                   int64_t n, float *y, unsigned long long *bad);
/* t[N] (dtype @tdt, element stride @tstride) -> y[N, dim]. */
int mmpk_timestep_embedding(cudaStream_t s, const void *t, int tdt, int64_t tstride, int64_t N, int64_t dim,
                            bool flip, float shift, float scale, double max_period, float *y);
/* Philox4x32-10, the counter layout of core/rng.c: draw i of a stream uses
 * counter (offset + i) as a 64-bit value in words 0-1 (words 2-3 zero) and
 * the seed as the key. UNIFORM/NORMAL fill f32, RANDINT fills i64 in
 * [low, low + range). */
int mmpk_philox(cudaStream_t s, int dist, uint64_t seed, uint64_t offset, int64_t n, void *y, int64_t low,
                uint64_t range);

#ifdef __cplusplus
}
#endif
#endif
