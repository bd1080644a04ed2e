/* mmpipe/backend.h - the compute backend interface (CPU, later CUDA).
 *
 * A backend is an object {ops, ctx}: a vtable of storage and compute entry
 * points plus the backend's private state. The tensor front-end
 * (core/tensor_ops.c) checks shapes, dtypes and devices, allocates the
 * output tensor on the inputs' backend and then calls
 * ops->compute(be, op, params, srcs, nsrc, dst). CPU is the guaranteed
 * fallback: it implements every op. Other backends answer supports_op()
 * and may refuse an op with MMP_EUNSUPPORTED; the front-end never copies
 * between devices behind the caller's back (mixing devices is MMP_EDEVICE).
 *
 *   mmp_backend_t *be = mmp_backend_get("auto");     // cuda, else cpu
 *   mmp_pool_stats_t st;
 *   mmp_backend_pool_stats(be, &st);                 // allocator counters
 *
 * Vtable rules (as for plugins): struct_size comes first and the struct only
 * grows at its end; the core reads a member only if struct_size covers it.
 * Members marked REQUIRED must be non-NULL; OPTIONAL ones may be NULL and
 * then get the default written next to them.
 */
#ifndef MMPIPE_BACKEND_H
#define MMPIPE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device kinds a tensor can live on. */
typedef enum mmp_device {
  MMP_DEVICE_CPU = 0,
  MMP_DEVICE_CUDA = 1
} mmp_device_t;

/* The ops a backend computes. srcs/dst conventions for each op are given
 * here; the front-end guarantees them before compute() is called:
 * dst is always freshly allocated and contiguous unless noted; srcs may be
 * strided views (broadcast strides 0) unless "contiguous" is written. Unless
 * noted, float ops take and produce f32. New ops are only appended. */
typedef enum mmp_op {
  MMP_OP_COPY = 0,   /* dst <- src0, same shape; any strides on both sides,
                        any dtypes (converted); dst may be a view */
  MMP_OP_FILL,       /* dst <- f[0], any dtype */
  MMP_OP_ADD,        /* dst = src0 + src1; srcs already broadcast to dst */
  MMP_OP_SUB,
  MMP_OP_MUL,
  MMP_OP_DIV,
  MMP_OP_SCALE,      /* dst = f[0] * src0 + f[1] */
  MMP_OP_AXPBY,      /* dst = f[0] * src0 + f[1] * src1 (same shapes) */
  MMP_OP_CLAMP,      /* dst = min(max(src0, f[0]), f[1]) */
  MMP_OP_SQRT,
  MMP_OP_EXP,
  MMP_OP_ABS,
  MMP_OP_SILU,
  MMP_OP_GELU,       /* erf form */
  MMP_OP_GELU_TANH,
  MMP_OP_QUICK_GELU,
  MMP_OP_SIGMOID,
  MMP_OP_TANH,
  MMP_OP_RELU,
  MMP_OP_GEGLU,      /* src0 contiguous [rows, 2D] -> dst [rows, D] */
  MMP_OP_SUM,        /* reduce src0 over dim i[0] into dst (keepdim shape) */
  MMP_OP_MEAN,
  MMP_OP_MAX,
  MMP_OP_ARGMAX,     /* over the last dim; dst i64 */
  MMP_OP_MATMUL,     /* src0 [..., M, K] @ src1 [..., K, N]: transposes
                        are already applied as views and batch dims already
                        broadcast to dst's; any strides (a transposed view
                        is read without copying) */
  MMP_OP_LINEAR,     /* src0 contiguous [rows, in], src1 contiguous [out, in],
                        src2 (nullable) contiguous [out] -> dst [rows, out];
                        i[0] = compute dtype (MMP_F32, or MMP_BF16: see
                        mmp_tensor_set_compute_dtype; a backend may compute
                        in fp32 instead) */
  MMP_OP_CONV2D,     /* src0 x, src1 w, src2 bias (nullable), all contiguous;
                        i[0..6] = sh, sw, ph, pw, dh, dw, groups; i[7] =
                        compute dtype (as for MMP_OP_LINEAR) + 256 x the
                        fused activation: 0 none, or MMP_OP_RELU (relu(y)) */
  MMP_OP_GROUP_NORM, /* src0 contiguous [N, C, ...]; src1/src2 (nullable)
                        [C]; i[0] = groups; f[0] = eps */
  MMP_OP_LAYER_NORM, /* over the last dim; src1/src2 nullable; f[0] = eps */
  MMP_OP_SOFTMAX,    /* over dim i[0]; src0 any strides */
  MMP_OP_ATTENTION,  /* q, k, v contiguous, mask (nullable) contiguous u8
                        [B, Lk]; i[0] = causal; f[0] = scale */
  MMP_OP_UPSAMPLE_NEAREST2X, /* [N, C, H, W] -> [N, C, 2H, 2W] */
  MMP_OP_AVG_POOL2D, /* i[0] = kernel, i[1] = stride, i[2] = pad;
                        i[3] = 0: count_include_pad (torch's default,
                        divisor k*k), 1: divide by the in-image count */
  MMP_OP_MAX_POOL2D,
  MMP_OP_EMBEDDING,  /* src0 table [V, D], src1 ids i64/i32 (any strides)
                        -> dst [numel(ids), D]; out-of-range ids: MMP_EINVAL */
  MMP_OP_TIMESTEP_EMBEDDING, /* src0 t [N] (any numeric dtype) -> dst [N, dim];
                        i[0] = flip_sin_to_cos; f[0] = downscale_freq_shift,
                        f[1] = scale, f[2] = max_period */
  MMP_OP_GROUP_NORM_SILU, /* GROUP_NORM, then SiLU on its output (one pass,
                        no intermediate tensor); same operands and params */
  MMP_OP_RESIZE_BILINEAR, /* src0 contiguous [N, C, H, W] -> dst [N, C, OH, OW];
                        i[0] = align_corners (torch F.interpolate bilinear,
                        no antialiasing) */
  /* ---- backward ops (training; doc/training.md). Inputs are the forward
   * op's inputs and the gradient g of its output; dst is one input's
   * gradient. */
  MMP_OP_ACT_BACKWARD, /* src0 x (the forward input), src1 g, same shape,
                        contiguous -> dst dx; i[0] = the forward op:
                        MMP_OP_SILU/GELU/GELU_TANH/QUICK_GELU/SIGMOID/TANH/RELU */
  MMP_OP_GEGLU_BACKWARD, /* src0 x [rows, 2D], src1 g [rows, D], contiguous
                        -> dst [rows, 2D] */
  MMP_OP_LAYER_NORM_BACKWARD, /* src0 x, src1 g, src2 gamma (nullable), all
                        contiguous -> dst dx; f[0] = eps */
  MMP_OP_GROUP_NORM_BACKWARD, /* src0 x [N, C, ...], src1 g, src2 gamma
                        (nullable), contiguous -> dst dx; i[0] = groups, f[0] = eps */
  MMP_OP_EMBEDDING_BACKWARD, /* src0 ids i64/i32 contiguous, src1 g
                        [numel(ids), D] contiguous -> dst [V, D];
                        i[0] = padding_idx (-1: none); ids out of range: MMP_EINVAL */
  MMP_OP_CONV2D_BACKWARD_INPUT, /* src0 g [N, O, OH, OW], src1 w, contiguous
                        -> dst dx [N, C, H, W] (its shape gives H, W); i[] as CONV2D */
  MMP_OP_CONV2D_BACKWARD_WEIGHT, /* src0 x, src1 g, contiguous -> dst dw
                        [O, C/groups, KH, KW]; i[] as CONV2D */
  MMP_OP_ATTENTION_BACKWARD, /* srcs q, k, v, out, gout, mask (nullable u8
                        [B, Lk]), dk, dv; all contiguous; dst = dq. srcs 6 and 7
                        are OUTPUTS (freshly allocated, written by compute).
                        i[0] = causal, f[0] = scale. Score blocks are
                        recomputed: never Lq x Lk per head held */
  MMP_OP_ADAMW,      /* IN PLACE: dst = the parameter, src0 grad, src1 exp_avg,
                        src2 exp_avg_sq (updated too), same shape, contiguous.
                        f[0] = 1 - lr * weight_decay, f[1] = step size
                        lr / (1 - beta1^t), f[2] = sqrt(1 - beta2^t), f[3] = eps;
                        i[0], i[1] = the IEEE-754 bits of the doubles beta1, beta2 */
  MMP_OP_COUNT
} mmp_op_t;

/* Scalar parameters of an op (meaning per op above; unused slots are 0). */
typedef struct mmp_op_params {
  double f[4];
  int64_t i[8];
} mmp_op_params_t;

/* Allocator counters. os_allocs counts allocations that reached the OS
 * (malloc/cudaMalloc); pool_hits counts requests served from the cache. */
typedef struct mmp_pool_stats {
  uint64_t os_allocs;
  uint64_t os_frees;
  uint64_t pool_hits;
  uint64_t requests;
  size_t bytes_in_use;   /* handed out and not yet returned */
  size_t bytes_cached;   /* returned and kept for reuse */
} mmp_pool_stats_t;

typedef struct mmp_backend_ops {
  size_t struct_size; /* REQUIRED: sizeof(mmp_backend_ops_t) of the builder */
  const char *name;   /* REQUIRED: "cpu", "cuda" */
  mmp_device_t device;
  /* REQUIRED. Device memory of at least @nbytes (>= 0; 0 may return any
   * non-NULL pointer), aligned to 64 bytes. Backends are expected to cache:
   * a repeated sequence of alloc/free of the same sizes must not reach the
   * OS after its first run. Returns 0 or MMP_ENOMEM with a message. */
  int (*alloc)(mmp_backend_t *be, size_t nbytes, void **out);
  /* REQUIRED. Give back memory from alloc() (@nbytes as asked). */
  void (*free)(mmp_backend_t *be, void *ptr, size_t nbytes);
  /* REQUIRED. Byte copies between host memory and device memory of this
   * backend (for CPU both are plain memcpy). */
  int (*copy_to_host)(mmp_backend_t *be, void *host_dst, const void *dev_src,
                      size_t nbytes);
  int (*copy_from_host)(mmp_backend_t *be, void *dev_dst,
                        const void *host_src, size_t nbytes);
  /* OPTIONAL (default: every op supported). Whether compute() would accept
   * @op on these operands (dtypes, strides, sizes). */
  bool (*supports_op)(mmp_backend_t *be, mmp_op_t op,
                      const mmp_tensor_t *const *srcs, int nsrc,
                      const mmp_tensor_t *dst);
  /* REQUIRED. Compute @op into @dst (see mmp_op_t for conventions). Returns
   * 0 or a negative MMP_E* code with the message set. */
  int (*compute)(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p,
                 const mmp_tensor_t *const *srcs, int nsrc, mmp_tensor_t *dst);
  /* OPTIONAL (default: nothing to wait for). Wait until queued work ends. */
  int (*synchronize)(mmp_backend_t *be);
  /* OPTIONAL (default: zeros). Allocator counters. */
  void (*pool_stats)(mmp_backend_t *be, mmp_pool_stats_t *out);
  /* OPTIONAL (default: no-op). Return cached memory to the OS. */
  void (*pool_trim)(mmp_backend_t *be);
  /* OPTIONAL (default: no-op). Worker threads for this backend's host side. */
  void (*set_threads)(mmp_backend_t *be, int n);
} mmp_backend_ops_t;

/* A backend object. Process-wide singletons; never freed by callers. */
struct mmp_backend {
  const mmp_backend_ops_t *ops;
  void *ctx; /* backend-private */
};

/* Register a backend under ops->name so that mmp_backend_get() finds it
 * (the CUDA backend calls this at start-up). Validates the REQUIRED members:
 * MMP_EINVAL naming the first missing one; MMP_EEXIST if the name is taken.
 * @be must outlive the process. */
int mmp_backend_register(mmp_backend_t *be);

mmp_device_t mmp_backend_device(const mmp_backend_t *be);
/* Counters of @be's allocator (zeros when it keeps none). */
void mmp_backend_pool_stats(mmp_backend_t *be, mmp_pool_stats_t *out);
/* Release @be's cached memory to the OS. */
void mmp_backend_pool_trim(mmp_backend_t *be);
/* Whether @be computes @op on these operands. */
bool mmp_backend_supports(mmp_backend_t *be, mmp_op_t op,
                          const mmp_tensor_t *const *srcs, int nsrc,
                          const mmp_tensor_t *dst);
/* Call @be's compute for @op; the front-end's entry (checks nothing beyond
 * supports_op). Returns 0 or a negative MMP_E* code. */
int mmp_backend_compute(mmp_backend_t *be, mmp_op_t op,
                        const mmp_op_params_t *p,
                        const mmp_tensor_t *const *srcs, int nsrc,
                        mmp_tensor_t *dst);
/* Counters of the tensor-header cache (tensor and storage records are
 * recycled like device memory): records that came from malloc, and all
 * requests. Either pointer may be NULL. */
void mmp_tensor_header_stats(uint64_t *os_allocs, uint64_t *requests);
/* Name of an op ("conv2d"). (transfer none) */
const char *mmp_op_name(mmp_op_t op);

#ifdef __cplusplus
}
#endif
#endif
