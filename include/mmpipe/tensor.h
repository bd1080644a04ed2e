/* mmpipe/tensor.h - n-dimensional tensors, views and the op API.
 *
 * A tensor is a reference-counted view (dtype, shape, strides, offset) onto
 * a reference-counted storage that lives on one backend (CPU or CUDA).
 * Ops are eager: each returns a new tensor (transfer full) or NULL with the
 * error message set. A NULL input makes an op return NULL without touching
 * the message, so a chain can be checked once at its end. Views (reshape,
 * permute, slice, broadcast) share storage and keep it alive.
 *
 *   mmp_backend_t *cpu = mmp_backend_get("cpu");
 *   int64_t shape[2] = {2, 3};
 *   mmp_tensor_t *a = mmp_tensor_new(cpu, MMP_F32, 2, shape);
 *   mmp_tensor_t *b = mmp_silu(a);          // new tensor
 *   mmp_tensor_unref(a);
 *   mmp_tensor_unref(b);
 *
 * Memory: storages of ops come from the backend's caching pool, so a
 * repeated forward pass of the same shapes allocates nothing from the OS
 * after the first. Weights may be memory-mapped (see safetensors.h).
 */
#ifndef MMPIPE_TENSOR_H
#define MMPIPE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MMP_MAX_DIMS 5

typedef enum mmp_dtype {
  MMP_F32 = 0,
  MMP_F16 = 1,
  MMP_BF16 = 2,
  MMP_I64 = 3,
  MMP_I32 = 4,
  MMP_U8 = 5,
  MMP_BOOL = 6,
  MMP_F64 = 7, /* host-side only: accepted at I/O boundaries, converted */
  MMP_DTYPE_COUNT
} mmp_dtype_t;

typedef struct mmp_backend mmp_backend_t;
typedef struct mmp_storage mmp_storage_t;

/* The tensor header is public so that kernels and plugins can read shapes
 * without calls; fields are read-only outside the core. */
typedef struct mmp_tensor {
  mmp_dtype_t dtype;
  int ndim;                       /* 0..MMP_MAX_DIMS; 0 is a scalar */
  int64_t shape[MMP_MAX_DIMS];
  int64_t stride[MMP_MAX_DIMS];   /* in elements; 0 for broadcast dims */
  int64_t offset;                 /* in elements, into storage */
  mmp_storage_t *storage;
  int refcount;
  uint32_t flags;                 /* core-private */
  uint64_t tape_id;               /* core-private: the tape tracking it (autograd.h) */
} mmp_tensor_t;

/* ---- dtypes ---- */
size_t mmp_dtype_size(mmp_dtype_t dt);
/* "f32", "f16", ... (transfer none). */
const char *mmp_dtype_name(mmp_dtype_t dt);
/* Parse "f32"/"float32"/"F32" etc.; returns MMP_ENOENT if unknown. */
int mmp_dtype_parse(const char *s, mmp_dtype_t *out);

/* ---- backends ---- */
/* "cpu", "cuda" or "auto" (cuda when usable, else cpu with one warning).
 * Backends are process-wide singletons. (transfer none) NULL + message if
 * unavailable. */
mmp_backend_t *mmp_backend_get(const char *name);
const char *mmp_backend_name(const mmp_backend_t *be);
mmp_backend_t *mmp_tensor_backend(const mmp_tensor_t *t);

/* Threads of the core pool (and of OpenBLAS, set to the same number).
 * 0 = MMPIPE_THREADS or the number of online cores. */
void mmp_threads_set(int n);
int mmp_threads_get(void);

/* ---- creation and lifetime ---- */
/* Uninitialised tensor. (transfer full) */
mmp_tensor_t *mmp_tensor_new(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                             const int64_t *shape);
mmp_tensor_t *mmp_tensor_zeros(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                               const int64_t *shape);
mmp_tensor_t *mmp_tensor_full(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                              const int64_t *shape, double value);
/* torch.linspace(@start, @end, @steps) in float32 as torch 1.13 computes it
 * on an x86 CPU with AVX2 (its dispatch on today's machines), into host
 * @out[@steps]: step = (float)(end - start) / (steps - 1); blocks of 8 from
 * the front, two per pass, as start + step * i (i < steps / 2) or end -
 * step * (steps - i - 1) at the block's first index, then + k * step; the
 * tail one at a time with those formulas fused (fma). Model code that
 * builds per-layer rates from a linspace (stochastic depth) uses it so the
 * rates match PyTorch's to the bit. MMP_EINVAL for @steps < 0 or NULL @out. */
int mmp_linspace_f32(double start, double end, int64_t steps, float *out);
/* Copy @nbytes of host data laid out contiguously. (transfer full) */
mmp_tensor_t *mmp_tensor_from_data(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                                   const int64_t *shape, const void *data);
/* Wrap host memory without copying; @release(@user) runs when the last
 * reference goes (may be NULL). CPU only. (transfer full) */
mmp_tensor_t *mmp_tensor_wrap(mmp_dtype_t dt, int ndim, const int64_t *shape,
                              void *data, void (*release)(void *user),
                              void *user);
mmp_tensor_t *mmp_tensor_ref(mmp_tensor_t *t); /* returns t */
void mmp_tensor_unref(mmp_tensor_t *t);        /* NULL is a no-op */

/* ---- inspection ---- */
int64_t mmp_tensor_numel(const mmp_tensor_t *t);
size_t mmp_tensor_nbytes(const mmp_tensor_t *t);
bool mmp_tensor_is_contiguous(const mmp_tensor_t *t);
bool mmp_tensor_same_shape(const mmp_tensor_t *a, const mmp_tensor_t *b);
/* Pointer to element 0 on the tensor's device. (transfer none) */
void *mmp_tensor_data(const mmp_tensor_t *t);
/* "f32[2, 4, 64, 64]" into @buf; returns @buf. */
char *mmp_tensor_describe(const mmp_tensor_t *t, char *buf, size_t len);
/* Copy contents to contiguous host memory of @nbytes (device->host as needed). */
int mmp_tensor_to_host(const mmp_tensor_t *t, void *dst, size_t nbytes);
/* Read one element as double (slow; for tests and small tensors). */
double mmp_tensor_get(const mmp_tensor_t *t, const int64_t *index);

/* ---- compute dtype (of a layer's weight) ----
 * What the products of mmp_linear / mmp_conv2d with the weight @t are
 * computed in: MMP_F32 (the default: fp32 products and sums, whatever the
 * weight's storage) or MMP_BF16 (the layer's input and the weight rounded to
 * bf16, nearest even; the products summed in fp32: the AVX-512-BF16 dot
 * products where the CPU has them, the same roundings elsewhere). The CPU
 * backend honours it; CUDA computes in fp32 (doc/tensor.md). Views taken
 * from @t afterwards carry the setting; copies and conversions do not.
 * Weight loaders set it from a component's `compute_dtype`. Returns 0, or
 * MMP_EDTYPE for another dtype (or a NULL / non-float @t). */
int mmp_tensor_set_compute_dtype(mmp_tensor_t *t, mmp_dtype_t cdt);
mmp_dtype_t mmp_tensor_compute_dtype(const mmp_tensor_t *t); /* MMP_F32 for NULL */

/* ---- views (no copy; transfer full of a new header sharing storage) ---- */
mmp_tensor_t *mmp_reshape(mmp_tensor_t *t, int ndim, const int64_t *shape); /* -1 infers one dim; copies if not viewable */
mmp_tensor_t *mmp_permute(mmp_tensor_t *t, const int *perm);
mmp_tensor_t *mmp_transpose(mmp_tensor_t *t, int d0, int d1);
mmp_tensor_t *mmp_slice(mmp_tensor_t *t, int dim, int64_t start, int64_t end, int64_t step);
mmp_tensor_t *mmp_broadcast_to(mmp_tensor_t *t, int ndim, const int64_t *shape);
mmp_tensor_t *mmp_unsqueeze(mmp_tensor_t *t, int dim);
mmp_tensor_t *mmp_squeeze(mmp_tensor_t *t, int dim);
/* Split @dim into @n equal views written to @out[0..n-1]. */
int mmp_chunk(mmp_tensor_t *t, int n, int dim, mmp_tensor_t **out);
/* Split @dim into pieces of @sizes[0..n-1]. */
int mmp_split(mmp_tensor_t *t, int n, const int64_t *sizes, int dim, mmp_tensor_t **out);

/* ---- data movement ---- */
mmp_tensor_t *mmp_contiguous(mmp_tensor_t *t); /* ref of t if already contiguous */
mmp_tensor_t *mmp_clone(const mmp_tensor_t *t);
mmp_tensor_t *mmp_to_backend(const mmp_tensor_t *t, mmp_backend_t *be);
mmp_tensor_t *mmp_convert(const mmp_tensor_t *t, mmp_dtype_t dt);
/* dst <- src (same shape, any strides, dtype converted). */
int mmp_copy_into(mmp_tensor_t *dst, const mmp_tensor_t *src);
mmp_tensor_t *mmp_concat(mmp_tensor_t *const *ts, int n, int dim);

/* ---- elementwise (numpy broadcasting) ---- */
mmp_tensor_t *mmp_add(const mmp_tensor_t *a, const mmp_tensor_t *b);
mmp_tensor_t *mmp_sub(const mmp_tensor_t *a, const mmp_tensor_t *b);
mmp_tensor_t *mmp_mul(const mmp_tensor_t *a, const mmp_tensor_t *b);
mmp_tensor_t *mmp_div(const mmp_tensor_t *a, const mmp_tensor_t *b);
/* alpha * a + beta (no broadcasting). */
mmp_tensor_t *mmp_scale(const mmp_tensor_t *a, double alpha, double beta);
/* alpha * a + beta * b, same shapes: the scheduler workhorse. */
mmp_tensor_t *mmp_axpby(double alpha, const mmp_tensor_t *a, double beta,
                        const mmp_tensor_t *b);
mmp_tensor_t *mmp_clamp(const mmp_tensor_t *a, double lo, double hi);
mmp_tensor_t *mmp_sqrt(const mmp_tensor_t *a);
mmp_tensor_t *mmp_exp(const mmp_tensor_t *a);
mmp_tensor_t *mmp_abs(const mmp_tensor_t *a);
mmp_tensor_t *mmp_silu(const mmp_tensor_t *a);
mmp_tensor_t *mmp_gelu(const mmp_tensor_t *a);       /* erf form */
mmp_tensor_t *mmp_gelu_tanh(const mmp_tensor_t *a);  /* tanh approximation */
mmp_tensor_t *mmp_quick_gelu(const mmp_tensor_t *a); /* x*sigmoid(1.702x) */
mmp_tensor_t *mmp_sigmoid(const mmp_tensor_t *a);
mmp_tensor_t *mmp_tanh(const mmp_tensor_t *a);
mmp_tensor_t *mmp_relu(const mmp_tensor_t *a);
/* GEGLU: split last dim in halves (h, g), return h * gelu(g). */
mmp_tensor_t *mmp_geglu(const mmp_tensor_t *a);

/* ---- reductions ---- */
/* Sum/mean/max over one dim (keepdim). */
mmp_tensor_t *mmp_sum(const mmp_tensor_t *a, int dim, bool keepdim);
mmp_tensor_t *mmp_mean(const mmp_tensor_t *a, int dim, bool keepdim);
mmp_tensor_t *mmp_max(const mmp_tensor_t *a, int dim, bool keepdim);
/* Index of the max over the last dim (i64). */
mmp_tensor_t *mmp_argmax(const mmp_tensor_t *a);

/* ---- neural-network ops ---- */
/* a @ b over the last two dims, batch dims broadcast; optional transposes. */
mmp_tensor_t *mmp_matmul(const mmp_tensor_t *a, const mmp_tensor_t *b,
                         bool trans_a, bool trans_b);
/* x[..., in] @ w[out, in]^T + bias[out] (bias nullable). */
mmp_tensor_t *mmp_linear(const mmp_tensor_t *x, const mmp_tensor_t *w,
                         const mmp_tensor_t *bias);
/* x[N,C,H,W], w[O,C/groups,kh,kw], bias nullable. */
mmp_tensor_t *mmp_conv2d(const mmp_tensor_t *x, const mmp_tensor_t *w,
                         const mmp_tensor_t *bias, int stride_h, int stride_w,
                         int pad_h, int pad_w, int dil_h, int dil_w, int groups);
/* relu(conv2d(x, ...)) in one pass: the ReLU is applied to each output tile
 * as the convolution finishes it (the Inception / VGG pattern); the same
 * numbers as mmp_relu(mmp_conv2d(...)) without the second sweep. */
mmp_tensor_t *mmp_conv2d_relu(const mmp_tensor_t *x, const mmp_tensor_t *w,
                              const mmp_tensor_t *bias, int stride_h, int stride_w,
                              int pad_h, int pad_w, int dil_h, int dil_w, int groups);
/* x[N,C,...]; weight/bias [C] nullable. */
mmp_tensor_t *mmp_group_norm(const mmp_tensor_t *x, int groups,
                             const mmp_tensor_t *weight,
                             const mmp_tensor_t *bias, double eps);
/* silu(group_norm(x)) in one pass, without the intermediate tensor (the
 * ResnetBlock2D / decoder-output pattern); the same numbers as the two ops
 * one after the other. */
mmp_tensor_t *mmp_group_norm_silu(const mmp_tensor_t *x, int groups,
                                  const mmp_tensor_t *weight,
                                  const mmp_tensor_t *bias, double eps);
/* Normalise over the last dim; weight/bias nullable. */
mmp_tensor_t *mmp_layer_norm(const mmp_tensor_t *x, const mmp_tensor_t *weight,
                             const mmp_tensor_t *bias, double eps);
mmp_tensor_t *mmp_softmax(const mmp_tensor_t *x, int dim);
/* Scaled-dot-product attention. q[B,H,Lq,D], k[B,H,Lk,D], v[B,H,Lk,Dv].
 * key_mask: nullable bool/u8 [B,Lk], nonzero = do not attend.
 * scale <= 0 means 1/sqrt(D). Never materialises all scores at once. */
mmp_tensor_t *mmp_attention(const mmp_tensor_t *q, const mmp_tensor_t *k,
                            const mmp_tensor_t *v, const mmp_tensor_t *key_mask,
                            bool causal, double scale);
mmp_tensor_t *mmp_upsample_nearest2x(const mmp_tensor_t *x);
/* Bicubic resize of x[N, C, H, W] (f32) to [N, C, oh, ow], as torch's
 * interpolate(mode="bicubic", align_corners=False) with a target size:
 * cubic convolution with A = -0.75, source index (o + 0.5) * H / oh - 0.5,
 * border taps clamped. Computed on the host in double precision, for
 * load-time work on small tensors (ViT position grids); the result lives on
 * x's backend. (transfer full) NULL + MMP_ESHAPE/MMP_EINVAL/MMP_ENOMEM. */
mmp_tensor_t *mmp_resize_bicubic(const mmp_tensor_t *x, int64_t oh, int64_t ow);
mmp_tensor_t *mmp_avg_pool2d(const mmp_tensor_t *x, int kernel, int stride, int pad);
mmp_tensor_t *mmp_max_pool2d(const mmp_tensor_t *x, int kernel, int stride, int pad);
/* avg_pool2d with torch's count_include_pad: false divides each window by
 * the number of its positions inside the image (TensorFlow's average pool,
 * the FID Inception's). */
mmp_tensor_t *mmp_avg_pool2d_ex(const mmp_tensor_t *x, int kernel, int stride, int pad,
                                bool count_include_pad);
/* torch F.interpolate(x, size=(out_h, out_w), mode="bilinear",
 * align_corners) of x[N, C, H, W]: no antialiasing when shrinking. */
mmp_tensor_t *mmp_resize_bilinear(const mmp_tensor_t *x, int64_t out_h, int64_t out_w,
                                  bool align_corners);
/* ids (i64/i32, any shape) into table[V, D] -> [..., D]. */
mmp_tensor_t *mmp_embedding(const mmp_tensor_t *table, const mmp_tensor_t *ids);
/* diffusers get_timestep_embedding: t[N] -> [N, dim]. */
mmp_tensor_t *mmp_timestep_embedding(const mmp_tensor_t *t, int dim,
                                     bool flip_sin_to_cos,
                                     double downscale_freq_shift,
                                     double scale, double max_period);

#ifdef __cplusplus
}
#endif
#endif
