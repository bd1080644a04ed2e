/* core/tensor_impl.h - internals shared by the tensor runtime files (not installed). */
#ifndef MMPIPE_CORE_TENSOR_IMPL_H
#define MMPIPE_CORE_TENSOR_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The public API of these headers is what libmmpipe exports: give their
 * declarations default visibility even if the library is built with
 * -fvisibility=hidden (the internal mmp__ helpers below are not exported
 * either way: the export regex is '^mmp_[a-z]'). */
#pragma GCC visibility push(default)
#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>
#pragma GCC visibility pop

/* ---- autograd.c: the hook of the op front-end (doc/training.md) ----
 * Every public op that computes opens with mmp__tape_enter(), which is one
 * thread-local load when no tape is current and otherwise suspends the tape
 * (so the ops the op calls inside record nothing), and closes with
 * mmp__tape_leave(), which restores the tape and records one node when an
 * input is tracked. */
typedef struct mmp_tape mmp_tape_t;
extern _Thread_local mmp_tape_t *mmp__tape_tls;
typedef enum mmp__tk {
  MMP__TK_NONE = 0, /* no backward: fails if a gradient reaches it */
  MMP__TK_ADD, MMP__TK_SUB, MMP__TK_MUL, MMP__TK_DIV, MMP__TK_SCALE, MMP__TK_AXPBY,
  MMP__TK_SQRT, MMP__TK_EXP,
  MMP__TK_SILU, MMP__TK_GELU, MMP__TK_GELU_TANH, MMP__TK_QUICK_GELU, MMP__TK_SIGMOID, MMP__TK_TANH,
  MMP__TK_RELU, MMP__TK_GEGLU, MMP__TK_SOFTMAX,
  MMP__TK_SUM, MMP__TK_MEAN,
  MMP__TK_MATMUL, MMP__TK_LINEAR, MMP__TK_CONV2D,
  MMP__TK_GROUP_NORM, MMP__TK_GROUP_NORM_SILU, MMP__TK_LAYER_NORM,
  MMP__TK_ATTENTION, MMP__TK_UPSAMPLE, MMP__TK_EMBEDDING,
  MMP__TK_VIEW,      /* reshape/squeeze/unsqueeze/contiguous/clone/convert: same elements, same order */
  MMP__TK_PERMUTE, MMP__TK_SLICE, MMP__TK_BROADCAST, MMP__TK_CONCAT, MMP__TK_MSE,
  MMP__TK_COUNT
} mmp__tk_t;
/* What one op hands the tape: its kind, name (for messages), operands (NULL
 * entries allowed: optional operands) and scalar parameters. */
typedef struct mmp__tape_rec {
  mmp__tk_t kind;
  const char *name;
  int nin;
  const mmp_tensor_t *const *in;
  double f[3];
  int64_t i[8];
} mmp__tape_rec_t;
static inline mmp_tape_t *mmp__tape_enter(void) {
  mmp_tape_t *t = mmp__tape_tls;
  if (__builtin_expect(t != NULL, 0)) mmp__tape_tls = NULL;
  return t;
}
/* Restore @t as current and record @rec with output @r (NULL: failed op,
 * nothing recorded). Returns @r, or NULL (and @r released) when the node
 * could not be recorded. */
mmp_tensor_t *mmp__tape_leave(mmp_tape_t *t, mmp_tensor_t *r, const mmp__tape_rec_t *rec);
/* Whether @x is tracked by the tape current on this thread or suspended as
 * @t (mmp_copy_into refuses such writes). */
bool mmp__tape_tracked(const mmp_tape_t *t, const mmp_tensor_t *x);

/* Reference-counted device memory. Either from the backend's allocator
 * (release == NULL) or wrapped host memory (release called with user). */
struct mmp_storage {
  int refcount;
  bool wrapped;
  mmp_backend_t *be;
  void *data;
  size_t nbytes;
  void (*release)(void *user);
  void *user;
};

/* Tensor flags (core-private). */
#define MMP_TF_READONLY 0x1u /* storage is a read-only mapping */
#define MMP_TF_COMPUTE_BF16 0x2u /* linear/conv2d weight: products in bf16 (mmp_tensor_set_compute_dtype) */

/* ---- tensor.c ---- */
/* A new header on @st (takes a reference to @st). shape/stride copied. */
mmp_tensor_t *mmp__tensor_view(const mmp_tensor_t *base, int ndim,
                               const int64_t *shape, const int64_t *stride,
                               int64_t offset);
/* Contiguous strides for @shape. */
void mmp__contig_strides(int ndim, const int64_t *shape, int64_t *stride);
int64_t mmp__numel(int ndim, const int64_t *shape);
/* Product of the sizes with 0 counted as 1 (what the contiguous strides
 * reach), or -1 when a size is negative or the product exceeds
 * INT64_MAX / 16. Every shape taken from outside goes through it. */
int64_t mmp__shape_extent(int ndim, const int64_t *shape);
/* The iteration space of @nop operands of ts[0]'s shape (elementwise ops,
 * in backends): size-1 dims dropped, then dims merged from the inside out
 * where every operand is contiguous across them. Writes shape[0..n) and the
 * strides (in elements) of operand k at stride[k * ld + d]; returns n >= 1
 * (a scalar or all-size-1 shape is one dim of 1). */
int mmp__coalesce_dims(int nop, const mmp_tensor_t *const *ts, int64_t *shape, int64_t *stride,
                       int ld);
/* One operand of a batched matmul [..., R, C] as BLAS takes it: a
 * (transposed or not) matrix with leading dimension ld, and one stride
 * between the batch's matrices (0: not batched). */
typedef struct mmp__gemm_operand {
  const mmp_tensor_t *t; /* the tensor to read: the operand or its copy */
  mmp_tensor_t *copy;    /* (nullable) a contiguous copy, when the strides fit no BLAS layout */
  bool trans;
  int64_t ld, bstride;
} mmp__gemm_operand_t;
/* The BLAS view of both operands of a matmul with @nb batch dims and @batch
 * products. Operands whose strides fit no BLAS layout are copied with
 * @contig(@be, t) (a contiguous tensor of t's shape and dtype). Returns 0, or
 * the error code (nothing left to free); release with mmp__gemm_operands_free. */
int mmp__gemm_operands(const mmp_tensor_t *a, const mmp_tensor_t *b, int nb, int64_t batch,
                       mmp_tensor_t *(*contig)(mmp_backend_t *be, const mmp_tensor_t *t),
                       mmp_backend_t *be, mmp__gemm_operand_t o[2]);
void mmp__gemm_operands_free(mmp__gemm_operand_t o[2]);
/* Byte pointer of element 0 (storage data + offset). */
static inline void *mmp__ptr(const mmp_tensor_t *t) {
  return (char *)t->storage->data + t->offset * (int64_t)mmp_dtype_size(t->dtype);
}
/* Format a shape "[2, 3]" into buf. */
const char *mmp__shape_str(int ndim, const int64_t *shape, char *buf, size_t len);
/* Like mmp_tensor_describe, into a static thread-local ring of buffers
 * (for error messages with several tensors). */
const char *mmp__desc(const mmp_tensor_t *t);

/* fp16/bf16 conversions (round to nearest even; NaN stays NaN). */

static inline float mmp__half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while (!(man & 0x400u));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t mmp__float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* inf or nan (keep nan quiet) */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
  if (ax < 0x38800000u) { /* subnormal or zero in half */
    if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to 0 */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)e; /* value / 2^-24 = m * 2^(e-126); 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ax - 0x38000000u; /* rebias exponent 127 -> 15 */
  uint32_t h = r >> 13, rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

static inline float mmp__bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t mmp__float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u; /* nan, as torch */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}


/* ---- backend.c ---- */
/* The layout contract of backend.h that every backend's compute() checks
 * first: @op is known, its operands are contiguous where the op says so,
 * and the destination is contiguous (except for a copy, and a fill when
 * @strided_fill). Messages start with @who ("cpu", "cuda"). */
int mmp__backend_check(const char *who, mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                       const mmp_tensor_t *dst, bool strided_fill);
/* The core-private CPU backend singleton (backend_cpu.c). */
mmp_backend_t *mmp__backend_cpu(void);
/* Counters of header allocations (tensor headers and storages are cached
 * too, so that steady state makes no malloc at all). */
void mmp__header_stats(uint64_t *os_allocs, uint64_t *requests);

/* Small caches for tensor headers and storages (tensor.c). */
mmp_tensor_t *mmp__header_alloc(void);
void mmp__header_free(mmp_tensor_t *t);

/* ---- backend_cpu_grad.c: the CPU backend's backward ops (MMP_OP_ACT_BACKWARD..) ---- */
bool mmp__cpu_supports_backward(mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                                const mmp_tensor_t *dst);
int mmp__cpu_compute_backward(mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *srcs,
                              int nsrc, mmp_tensor_t *dst);

#endif
