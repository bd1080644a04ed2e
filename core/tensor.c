/* core/tensor.c - tensor creation, reference counting, views, copies and conversions. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/tensor_impl.h"
#include "core/util.h"

/* ------------------------------------------------------------------ dtypes */

static const struct {
  const char *name;
  size_t size;
} dtype_info[MMP_DTYPE_COUNT] = {
    [MMP_F32] = {"f32", 4}, [MMP_F16] = {"f16", 2},  [MMP_BF16] = {"bf16", 2},
    [MMP_I64] = {"i64", 8}, [MMP_I32] = {"i32", 4},  [MMP_U8] = {"u8", 1},
    [MMP_BOOL] = {"bool", 1}, [MMP_F64] = {"f64", 8},
};

size_t mmp_dtype_size(mmp_dtype_t dt) {
  if ((unsigned)dt >= MMP_DTYPE_COUNT) return 0;
  return dtype_info[dt].size;
}

const char *mmp_dtype_name(mmp_dtype_t dt) {
  if ((unsigned)dt >= MMP_DTYPE_COUNT) return "invalid";
  return dtype_info[dt].name;
}

int mmp_dtype_parse(const char *s, mmp_dtype_t *out) {
  static const struct {
    const char *name;
    mmp_dtype_t dt;
  } aliases[] = {
      {"f32", MMP_F32},     {"float32", MMP_F32}, {"float", MMP_F32},
      {"f16", MMP_F16},     {"float16", MMP_F16}, {"half", MMP_F16},
      {"bf16", MMP_BF16},   {"bfloat16", MMP_BF16}, {"i64", MMP_I64},
      {"int64", MMP_I64},   {"long", MMP_I64},    {"i32", MMP_I32},
      {"int32", MMP_I32},   {"int", MMP_I32},     {"u8", MMP_U8},
      {"uint8", MMP_U8},    {"bool", MMP_BOOL},   {"f64", MMP_F64},
      {"float64", MMP_F64}, {"double", MMP_F64},
  };
  if (!s) return mmp_error_set(MMP_EINVAL, "dtype: NULL name");
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (strcasecmp(s, aliases[i].name) == 0) {
      if (out) *out = aliases[i].dt;
      return 0;
    }
  return mmp_error_set(MMP_ENOENT, "unknown dtype \"%s\" (known: f32, f16, bf16, i64, i32, u8, bool, f64)", s);
}

/* ------------------------------------------------ header and storage cache */

/* Tensor headers and storage records are kept on free lists so that a
 * steady-state forward pass makes no malloc at all (see doc/tensor.md). */
typedef union hdr_block {
  mmp_tensor_t t;
  struct mmp_storage s;
  union hdr_block *next;
} hdr_block_t;

#define HDR_CACHE_MAX 65536
static pthread_mutex_t hdr_lock = PTHREAD_MUTEX_INITIALIZER;
static hdr_block_t *hdr_free;
static size_t hdr_nfree;
static uint64_t hdr_os_allocs, hdr_requests;

static void *block_alloc(void) {
  hdr_block_t *b = NULL;
  pthread_mutex_lock(&hdr_lock);
  hdr_requests++;
  if (hdr_free) {
    b = hdr_free;
    hdr_free = b->next;
    hdr_nfree--;
  } else {
    hdr_os_allocs++;
  }
  pthread_mutex_unlock(&hdr_lock);
  if (!b) b = malloc(sizeof *b);
  if (!b) {
    mmp_error_set(MMP_ENOMEM, "out of memory allocating a tensor header");
    return NULL;
  }
  memset(b, 0, sizeof *b);
  return b;
}

static void block_free(void *p) {
  hdr_block_t *b = p;
  if (!b) return;
  pthread_mutex_lock(&hdr_lock);
  if (hdr_nfree < HDR_CACHE_MAX) {
    b->next = hdr_free;
    hdr_free = b;
    hdr_nfree++;
    b = NULL;
  }
  pthread_mutex_unlock(&hdr_lock);
  free(b);
}

/* Free the cached blocks at exit so that leak checkers stay quiet. */
__attribute__((destructor)) static void hdr_cache_drain(void) {
  pthread_mutex_lock(&hdr_lock);
  while (hdr_free) {
    hdr_block_t *n = hdr_free->next;
    free(hdr_free);
    hdr_free = n;
  }
  hdr_nfree = 0;
  pthread_mutex_unlock(&hdr_lock);
}

void mmp_tensor_header_stats(uint64_t *os_allocs, uint64_t *requests) {
  pthread_mutex_lock(&hdr_lock);
  if (os_allocs) *os_allocs = hdr_os_allocs;
  if (requests) *requests = hdr_requests;
  pthread_mutex_unlock(&hdr_lock);
}

mmp_tensor_t *mmp__header_alloc(void) { return block_alloc(); }
void mmp__header_free(mmp_tensor_t *t) { block_free(t); }

static mmp_storage_t *storage_new(mmp_backend_t *be, size_t nbytes) {
  mmp_storage_t *s = block_alloc();
  if (!s) return NULL;
  s->refcount = 1;
  s->be = be;
  s->nbytes = nbytes;
  if (be->ops->alloc(be, nbytes, &s->data) < 0) {
    block_free(s);
    return NULL;
  }
  return s;
}

static void storage_unref(mmp_storage_t *s) {
  if (!s) return;
  if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (s->wrapped) {
    if (s->release) s->release(s->user);
  } else {
    s->be->ops->free(s->be, s->data, s->nbytes);
  }
  block_free(s);
}

/* ------------------------------------------------------------ shape utils */

int64_t mmp__numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

int64_t mmp__shape_extent(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    int64_t d = shape[i] > 1 ? shape[i] : 1;
    /* INT64_MAX / 16: room for the element size in bytes */
    if (shape[i] < 0 || mmp_mul_overflow_i64(n, d, &n) || n > INT64_MAX / 16) return -1;
  }
  return n;
}

void mmp__contig_strides(int ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i] > 1 ? shape[i] : 1;
  }
}

int mmp__coalesce_dims(int nop, const mmp_tensor_t *const *ts, int64_t *shape, int64_t *stride,
                       int ld) {
  const mmp_tensor_t *t0 = ts[0];
  int nd = 0;
  for (int d = 0; d < t0->ndim; d++) {
    if (t0->shape[d] == 1) continue;
    shape[nd] = t0->shape[d];
    for (int k = 0; k < nop; k++) stride[k * ld + nd] = ts[k]->stride[d];
    nd++;
  }
  if (nd == 0) {
    shape[0] = 1;
    for (int k = 0; k < nop; k++) stride[k * ld] = 1;
    nd = 1;
  }
  int w = nd - 1;
  for (int d = nd - 2; d >= 0; d--) {
    bool merge = true;
    for (int k = 0; k < nop; k++)
      if (stride[k * ld + d] != stride[k * ld + w] * shape[w]) merge = false;
    if (merge) {
      shape[w] *= shape[d];
      continue;
    }
    w--;
    shape[w] = shape[d];
    for (int k = 0; k < nop; k++) stride[k * ld + w] = stride[k * ld + d];
  }
  /* shift to start at 0 */
  int n = nd - w;
  for (int d = 0; d < n; d++) {
    shape[d] = shape[d + w];
    for (int k = 0; k < nop; k++) stride[k * ld + d] = stride[k * ld + d + w];
  }
  return n;
}

/* Layout of a matrix view [R, C] (strides sr, sc) as BLAS sees it. */
static bool mat_layout(int64_t R, int64_t C, int64_t sr, int64_t sc, bool *trans, int64_t *ld) {
  if ((C == 1 || sc == 1) && (R == 1 || sr >= C)) {
    *trans = false;
    *ld = R == 1 ? (C > 0 ? C : 1) : sr;
    return *ld >= 1;
  }
  if ((R == 1 || sr == 1) && (C == 1 || sc >= R)) {
    *trans = true;
    *ld = C == 1 ? (R > 0 ? R : 1) : sc;
    return *ld >= 1;
  }
  return false;
}

/* One stride for all batch dims of @t (dims 0..nb-1), or false. */
static bool batch_stride(const mmp_tensor_t *t, int nb, int64_t *out) {
  int last = -1;
  int64_t s = 0;
  for (int d = nb - 1; d >= 0; d--) {
    if (t->shape[d] == 1) continue;
    if (last < 0) {
      s = t->stride[d];
    } else if (t->stride[d] != t->stride[last] * t->shape[last]) {
      return false;
    }
    last = d;
  }
  *out = s;
  return s >= 0;
}

int mmp__gemm_operands(const mmp_tensor_t *a, const mmp_tensor_t *b, int nb, int64_t batch,
                       mmp_tensor_t *(*contig)(mmp_backend_t *be, const mmp_tensor_t *t),
                       mmp_backend_t *be, mmp__gemm_operand_t o[2]) {
  const mmp_tensor_t *ts[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    const mmp_tensor_t *t = ts[k];
    int nd = t->ndim;
    int64_t R = t->shape[nd - 2], C = t->shape[nd - 1];
    o[k] = (mmp__gemm_operand_t){t, NULL, false, 0, 0};
    if (mat_layout(R, C, t->stride[nd - 2], t->stride[nd - 1], &o[k].trans, &o[k].ld) &&
        batch_stride(t, nb, &o[k].bstride))
      continue;
    o[k].copy = contig(be, t);
    if (!o[k].copy) {
      if (k) mmp_tensor_unref(o[0].copy);
      return mmp_error_code();
    }
    o[k].t = o[k].copy;
    o[k].trans = false;
    o[k].ld = C;
    o[k].bstride = batch > 1 ? R * C : 0;
  }
  return 0;
}

void mmp__gemm_operands_free(mmp__gemm_operand_t o[2]) {
  mmp_tensor_unref(o[0].copy);
  mmp_tensor_unref(o[1].copy);
}

const char *mmp__shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
  size_t o = 0;
  if (len == 0) return buf;
  o += (size_t)snprintf(buf + o, len - o, "[");
  for (int i = 0; i < ndim && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (o < len) snprintf(buf + o, len - o, "]");
  return buf;
}

char *mmp_tensor_describe(const mmp_tensor_t *t, char *buf, size_t len) {
  char sh[160];
  if (!buf || len == 0) return buf;
  if (!t) {
    snprintf(buf, len, "(null)");
    return buf;
  }
  snprintf(buf, len, "%s%s", mmp_dtype_name(t->dtype), mmp__shape_str(t->ndim, t->shape, sh, sizeof sh));
  return buf;
}

const char *mmp__desc(const mmp_tensor_t *t) {
  static _Thread_local char ring[4][192];
  static _Thread_local int k;
  char *b = ring[k++ & 3];
  return mmp_tensor_describe(t, b, sizeof ring[0]);
}

static int check_shape(int ndim, const int64_t *shape, const char *what) {
  if (ndim < 0 || ndim > MMP_MAX_DIMS)
    return mmp_error_set(MMP_ESHAPE, "%s: %d dimensions (at most %d)", what, ndim, MMP_MAX_DIMS);
  if (ndim > 0 && !shape) return mmp_error_set(MMP_EINVAL, "%s: NULL shape", what);
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0)
      return mmp_error_set(MMP_ESHAPE, "%s: negative size %lld in dim %d", what, (long long)shape[i], i);
  /* the strides are products of the sizes other than 0 (a [0, 2^40, 2^40]
   * tensor is empty, but its first stride would be 2^80) */
  if (mmp__shape_extent(ndim, shape) < 0) {
    char b[160];
    return mmp_error_set(MMP_ESHAPE, "%s: shape %s too large", what, mmp__shape_str(ndim, shape, b, sizeof b));
  }
  return 0;
}

/* ---------------------------------------------------- creation / lifetime */

mmp_tensor_t *mmp__tensor_view(const mmp_tensor_t *base, int ndim,
                               const int64_t *shape, const int64_t *stride,
                               int64_t offset) {
  mmp_tensor_t *t = block_alloc();
  if (!t) return NULL;
  t->dtype = base->dtype;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->stride[i] = stride[i];
  }
  t->offset = offset;
  t->storage = base->storage;
  __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
  t->refcount = 1;
  t->flags = base->flags;
  return t;
}

mmp_tensor_t *mmp_tensor_new(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                             const int64_t *shape) {
  if (!be) {
    mmp_error_set(MMP_EINVAL, "mmp_tensor_new: NULL backend");
    return NULL;
  }
  if ((unsigned)dt >= MMP_DTYPE_COUNT) {
    mmp_error_set(MMP_EDTYPE, "mmp_tensor_new: invalid dtype %d", (int)dt);
    return NULL;
  }
  if (check_shape(ndim, shape, "mmp_tensor_new") < 0) return NULL;
  mmp_tensor_t *t = block_alloc();
  if (!t) return NULL;
  int64_t n = mmp__numel(ndim, shape);
  t->storage = storage_new(be, (size_t)n * mmp_dtype_size(dt));
  if (!t->storage) {
    block_free(t);
    return NULL;
  }
  t->dtype = dt;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  mmp__contig_strides(ndim, shape, t->stride);
  t->refcount = 1;
  return t;
}

static int fill(mmp_tensor_t *t, double v) {
  mmp_op_params_t p = {{v}, {0}};
  return mmp_backend_compute(t->storage->be, MMP_OP_FILL, &p, NULL, 0, t);
}

mmp_tensor_t *mmp_tensor_zeros(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                               const int64_t *shape) {
  return mmp_tensor_full(be, dt, ndim, shape, 0.0);
}

int mmp_linspace_f32(double start, double end, int64_t steps, float *out) {
  if (steps < 0 || (steps && !out)) return mmp_error_set(MMP_EINVAL, "linspace: %lld steps", (long long)steps);
  if (steps == 0) return 0;
  const float s = (float)start, e = (float)end;
  if (steps == 1) {
    out[0] = s;
    return 0;
  }
  const float step = (e - s) / (float)(steps - 1);
  const int64_t half = steps / 2, V = 8;
  int64_t i = 0;
  for (; i + 2 * V <= steps; i += V) { /* Vectorized<float>::arange(base, step) */
    float base = i < half ? s + step * (float)i : e - step * (float)(steps - i - 1);
    for (int64_t k = 0; k < V; k++) out[i + k] = base + (float)k * step;
  }
  /* (the pass takes two blocks: one block is left over only when fewer
   * than 2 V remain, and the loop above then stops) */
  for (; i < steps; i++) out[i] = i < half ? fmaf(step, (float)i, s) : fmaf(-step, (float)(steps - i - 1), e);
  return 0;
}

mmp_tensor_t *mmp_tensor_full(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                              const int64_t *shape, double value) {
  mmp_tensor_t *t = mmp_tensor_new(be, dt, ndim, shape);
  if (t && fill(t, value) < 0) {
    mmp_tensor_unref(t);
    return NULL;
  }
  return t;
}

mmp_tensor_t *mmp_tensor_from_data(mmp_backend_t *be, mmp_dtype_t dt, int ndim,
                                   const int64_t *shape, const void *data) {
  mmp_tensor_t *t = mmp_tensor_new(be, dt, ndim, shape);
  if (!t) return NULL;
  size_t nb = mmp_tensor_nbytes(t);
  if (nb && !data) {
    mmp_tensor_unref(t);
    mmp_error_set(MMP_EINVAL, "mmp_tensor_from_data: NULL data");
    return NULL;
  }
  if (nb && be->ops->copy_from_host(be, t->storage->data, data, nb) < 0) {
    mmp_tensor_unref(t);
    return NULL;
  }
  return t;
}

mmp_tensor_t *mmp_tensor_wrap(mmp_dtype_t dt, int ndim, const int64_t *shape,
                              void *data, void (*release)(void *user),
                              void *user) {
  if ((unsigned)dt >= MMP_DTYPE_COUNT) {
    mmp_error_set(MMP_EDTYPE, "mmp_tensor_wrap: invalid dtype %d", (int)dt);
    return NULL;
  }
  if (check_shape(ndim, shape, "mmp_tensor_wrap") < 0) return NULL;
  mmp_tensor_t *t = block_alloc();
  mmp_storage_t *s = t ? block_alloc() : NULL;
  if (!s) {
    block_free(t);
    return NULL;
  }
  s->refcount = 1;
  s->wrapped = true;
  s->be = mmp__backend_cpu();
  s->data = data;
  s->nbytes = (size_t)mmp__numel(ndim, shape) * mmp_dtype_size(dt);
  s->release = release;
  s->user = user;
  t->storage = s;
  t->dtype = dt;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  mmp__contig_strides(ndim, shape, t->stride);
  t->refcount = 1;
  return t;
}

mmp_tensor_t *mmp_tensor_ref(mmp_tensor_t *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

void mmp_tensor_unref(mmp_tensor_t *t) {
  if (!t) return;
  if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  storage_unref(t->storage);
  block_free(t);
}

/* -------------------------------------------------------------- inspection */

int64_t mmp_tensor_numel(const mmp_tensor_t *t) { return t ? mmp__numel(t->ndim, t->shape) : 0; }

size_t mmp_tensor_nbytes(const mmp_tensor_t *t) {
  return t ? (size_t)mmp_tensor_numel(t) * mmp_dtype_size(t->dtype) : 0;
}

bool mmp_tensor_is_contiguous(const mmp_tensor_t *t) {
  if (!t) return false;
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue; /* any stride is fine for size-1 dims */
    if (t->stride[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

int mmp_tensor_set_compute_dtype(mmp_tensor_t *t, mmp_dtype_t cdt) {
  if (!t || (t->dtype != MMP_F32 && t->dtype != MMP_F16 && t->dtype != MMP_BF16))
    return mmp_error_set(MMP_EDTYPE, "compute dtype: %s is not a floating-point weight", mmp__desc(t));
  if (cdt != MMP_F32 && cdt != MMP_BF16)
    return mmp_error_set(MMP_EDTYPE, "compute dtype: %s is not one of f32, bf16", mmp_dtype_name(cdt));
  if (cdt == MMP_BF16)
    t->flags |= MMP_TF_COMPUTE_BF16;
  else
    t->flags &= ~MMP_TF_COMPUTE_BF16;
  return 0;
}

mmp_dtype_t mmp_tensor_compute_dtype(const mmp_tensor_t *t) {
  return t && (t->flags & MMP_TF_COMPUTE_BF16) ? MMP_BF16 : MMP_F32;
}

bool mmp_tensor_same_shape(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || a->ndim != b->ndim) return false;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

void *mmp_tensor_data(const mmp_tensor_t *t) { return t ? mmp__ptr(t) : NULL; }

mmp_backend_t *mmp_tensor_backend(const mmp_tensor_t *t) {
  return t ? t->storage->be : NULL;
}

int mmp_tensor_to_host(const mmp_tensor_t *t, void *dst, size_t nbytes) {
  if (!t || (!dst && nbytes)) return mmp_error_set(MMP_EINVAL, "mmp_tensor_to_host: NULL argument");
  size_t need = mmp_tensor_nbytes(t);
  if (nbytes != need)
    return mmp_error_set(MMP_EINVAL, "mmp_tensor_to_host: %s needs %zu bytes, buffer has %zu",
                         mmp__desc(t), need, nbytes);
  if (need == 0) return 0;
  mmp_backend_t *be = t->storage->be;
  if (mmp_tensor_is_contiguous(t)) return be->ops->copy_to_host(be, dst, mmp__ptr(t), need);
  if (be->ops->device == MMP_DEVICE_CPU) {
    /* strided copy straight into the caller's buffer */
    mmp_tensor_t *w = mmp_tensor_wrap(t->dtype, t->ndim, t->shape, dst, NULL, NULL);
    if (!w) return mmp_error_code();
    int rc = mmp_copy_into(w, t);
    mmp_tensor_unref(w);
    return rc;
  }
  mmp_tensor_t *c = mmp_contiguous((mmp_tensor_t *)t);
  if (!c) return mmp_error_code();
  int rc = be->ops->copy_to_host(be, dst, mmp__ptr(c), need);
  mmp_tensor_unref(c);
  return rc;
}

static double load_as_double(mmp_dtype_t dt, const void *p) {
  switch (dt) {
  case MMP_F32: return *(const float *)p;
  case MMP_F16: return mmp__half_to_float(*(const uint16_t *)p);
  case MMP_BF16: return mmp__bf16_to_float(*(const uint16_t *)p);
  case MMP_I64: return (double)*(const int64_t *)p;
  case MMP_I32: return *(const int32_t *)p;
  case MMP_U8: return *(const uint8_t *)p;
  case MMP_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
  case MMP_F64: return *(const double *)p;
  default: return NAN;
  }
}

double mmp_tensor_get(const mmp_tensor_t *t, const int64_t *index) {
  if (!t) return NAN;
  int64_t off = t->offset;
  for (int i = 0; i < t->ndim; i++) {
    if (!index || index[i] < 0 || index[i] >= t->shape[i]) {
      mmp_error_set(MMP_EINVAL, "mmp_tensor_get: index out of range for %s", mmp__desc(t));
      return NAN;
    }
    off += index[i] * t->stride[i];
  }
  unsigned char buf[8];
  size_t es = mmp_dtype_size(t->dtype);
  mmp_backend_t *be = t->storage->be;
  if (be->ops->copy_to_host(be, buf, (char *)t->storage->data + off * (int64_t)es, es) < 0) return NAN;
  return load_as_double(t->dtype, buf);
}

/* ------------------------------------------------------------------- views */

static int norm_dim(int dim, int ndim, const char *what, const mmp_tensor_t *t) {
  int d = dim < 0 ? dim + ndim : dim;
  if (d < 0 || d >= ndim)
    return mmp_error_set(MMP_EINVAL, "%s: dim %d out of range for %s", what, dim, mmp__desc(t));
  return d;
}

/* torch's computeStride: strides for viewing (oldshape, oldstride) as
 * newshape without copying, or false if impossible. */
static bool view_strides(int on, const int64_t *os, const int64_t *ost, int nn,
                         const int64_t *ns, int64_t *nst) {
  if (on == 0) {
    for (int i = 0; i < nn; i++) nst[i] = 1;
    return true;
  }
  if (mmp__numel(on, os) == 0) {
    mmp__contig_strides(nn, ns, nst);
    return true;
  }
  int vd = nn - 1;
  int64_t chunk = ost[on - 1], tnumel = 1, vnumel = 1;
  for (int td = on - 1; td >= 0; td--) {
    tnumel *= os[td];
    if (td == 0 || (os[td - 1] != 1 && ost[td - 1] != tnumel * chunk)) {
      while (vd >= 0 && (vnumel < tnumel || ns[vd] == 1)) {
        nst[vd] = vnumel * chunk;
        vnumel *= ns[vd];
        vd--;
      }
      if (vnumel != tnumel) return false;
      if (td > 0) {
        chunk = ost[td - 1];
        tnumel = 1;
        vnumel = 1;
      }
    }
  }
  return vd == -1;
}

static mmp_tensor_t *reshape_impl(mmp_tensor_t *t, int ndim, const int64_t *shape) {
  if (!t) return NULL;
  if (ndim < 0 || ndim > MMP_MAX_DIMS || (ndim && !shape)) {
    mmp_error_set(MMP_ESHAPE, "reshape: bad target rank %d", ndim);
    return NULL;
  }
  int64_t ns[MMP_MAX_DIMS], nst[MMP_MAX_DIMS], known = 1, n = mmp_tensor_numel(t);
  int infer = -1;
  char b1[160];
  for (int i = 0; i < ndim; i++) {
    ns[i] = shape[i];
    if (shape[i] == -1) {
      if (infer >= 0) {
        mmp_error_set(MMP_ESHAPE, "reshape %s to %s: only one dim may be -1", mmp__desc(t),
                      mmp__shape_str(ndim, shape, b1, sizeof b1));
        return NULL;
      }
      infer = i;
    } else if (shape[i] < 0) {
      mmp_error_set(MMP_ESHAPE, "reshape %s to %s: negative size", mmp__desc(t),
                    mmp__shape_str(ndim, shape, b1, sizeof b1));
      return NULL;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || n % known != 0) {
      mmp_error_set(MMP_ESHAPE, "reshape %s to %s: cannot infer the -1 dim", mmp__desc(t),
                    mmp__shape_str(ndim, shape, b1, sizeof b1));
      return NULL;
    }
    ns[infer] = n / known;
    known *= ns[infer];
  }
  if (known != n) {
    mmp_error_set(MMP_ESHAPE, "reshape %s to %s: %lld elements cannot become %lld", mmp__desc(t),
                  mmp__shape_str(ndim, shape, b1, sizeof b1), (long long)n, (long long)known);
    return NULL;
  }
  if (view_strides(t->ndim, t->shape, t->stride, ndim, ns, nst))
    return mmp__tensor_view(t, ndim, ns, nst, t->offset);
  mmp_tensor_t *c = mmp_contiguous(t);
  if (!c) return NULL;
  mmp__contig_strides(ndim, ns, nst);
  mmp_tensor_t *r = mmp__tensor_view(c, ndim, ns, nst, c->offset);
  mmp_tensor_unref(c);
  return r;
}

static mmp_tensor_t *permute_impl(mmp_tensor_t *t, const int *perm) {
  if (!t) return NULL;
  int64_t ns[MMP_MAX_DIMS] = {0}, nst[MMP_MAX_DIMS] = {0};
  bool seen[MMP_MAX_DIMS] = {false};
  if (t->ndim && !perm) {
    mmp_error_set(MMP_EINVAL, "permute: NULL perm");
    return NULL;
  }
  for (int i = 0; i < t->ndim; i++) {
    int p = perm[i] < 0 ? perm[i] + t->ndim : perm[i];
    if (p < 0 || p >= t->ndim || seen[p]) {
      mmp_error_set(MMP_EINVAL, "permute of %s: perm[%d] = %d is out of range or repeated", mmp__desc(t), i, perm[i]);
      return NULL;
    }
    seen[p] = true;
    ns[i] = t->shape[p];
    nst[i] = t->stride[p];
  }
  return mmp__tensor_view(t, t->ndim, ns, nst, t->offset);
}

mmp_tensor_t *mmp_transpose(mmp_tensor_t *t, int d0, int d1) {
  if (!t) return NULL;
  int a = norm_dim(d0, t->ndim, "transpose", t), b = a < 0 ? a : norm_dim(d1, t->ndim, "transpose", t);
  if (a < 0 || b < 0) return NULL;
  int perm[MMP_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  return mmp_permute(t, perm);
}

static mmp_tensor_t *slice_impl(mmp_tensor_t *t, int dim, int64_t start, int64_t end, int64_t step, int64_t *norm) {
  if (!t) return NULL;
  int d = norm_dim(dim, t->ndim, "slice", t);
  if (d < 0) return NULL;
  if (step < 1) {
    mmp_error_set(MMP_EINVAL, "slice of %s: step %lld must be >= 1", mmp__desc(t), (long long)step);
    return NULL;
  }
  int64_t n = t->shape[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  if (start < 0) start = 0;
  if (start > n) start = n;
  if (end > n) end = n;
  if (end < start) end = start;
  int64_t ns[MMP_MAX_DIMS], nst[MMP_MAX_DIMS];
  memcpy(ns, t->shape, sizeof ns);
  memcpy(nst, t->stride, sizeof nst);
  ns[d] = (end - start + step - 1) / step;
  nst[d] = t->stride[d] * step;
  norm[0] = d;
  norm[1] = start;
  norm[2] = end;
  return mmp__tensor_view(t, t->ndim, ns, nst, t->offset + start * t->stride[d]);
}

static mmp_tensor_t *broadcast_to_impl(mmp_tensor_t *t, int ndim, const int64_t *shape) {
  if (!t) return NULL;
  char b1[160];
  if (ndim < t->ndim || ndim > MMP_MAX_DIMS) {
    mmp_error_set(MMP_ESHAPE, "cannot broadcast %s to rank %d", mmp__desc(t), ndim);
    return NULL;
  }
  int64_t ns[MMP_MAX_DIMS], nst[MMP_MAX_DIMS];
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    ns[i] = shape[i];
    if (i < lead) {
      nst[i] = 0;
      continue;
    }
    int64_t s = t->shape[i - lead];
    if (s == shape[i]) {
      nst[i] = t->stride[i - lead];
    } else if (s == 1) {
      nst[i] = 0;
    } else {
      mmp_error_set(MMP_ESHAPE, "cannot broadcast %s to %s (dim %d: %lld vs %lld)", mmp__desc(t),
                    mmp__shape_str(ndim, shape, b1, sizeof b1), i, (long long)s, (long long)shape[i]);
      return NULL;
    }
  }
  return mmp__tensor_view(t, ndim, ns, nst, t->offset);
}

static mmp_tensor_t *unsqueeze_impl(mmp_tensor_t *t, int dim) {
  if (!t) return NULL;
  if (t->ndim >= MMP_MAX_DIMS) {
    mmp_error_set(MMP_ESHAPE, "unsqueeze of %s: already %d dims", mmp__desc(t), MMP_MAX_DIMS);
    return NULL;
  }
  int d = dim < 0 ? dim + t->ndim + 1 : dim;
  if (d < 0 || d > t->ndim) {
    mmp_error_set(MMP_EINVAL, "unsqueeze: dim %d out of range for %s", dim, mmp__desc(t));
    return NULL;
  }
  int64_t ns[MMP_MAX_DIMS], nst[MMP_MAX_DIMS];
  for (int i = 0, j = 0; i <= t->ndim; i++) {
    if (i == d) {
      ns[i] = 1;
      nst[i] = (d < t->ndim) ? t->stride[d] * t->shape[d] : 1;
      continue;
    }
    ns[i] = t->shape[j];
    nst[i] = t->stride[j];
    j++;
  }
  return mmp__tensor_view(t, t->ndim + 1, ns, nst, t->offset);
}

static mmp_tensor_t *squeeze_impl(mmp_tensor_t *t, int dim) {
  if (!t) return NULL;
  int d = norm_dim(dim, t->ndim, "squeeze", t);
  if (d < 0) return NULL;
  if (t->shape[d] != 1) return mmp__tensor_view(t, t->ndim, t->shape, t->stride, t->offset);
  int64_t ns[MMP_MAX_DIMS], nst[MMP_MAX_DIMS];
  for (int i = 0, j = 0; i < t->ndim; i++) {
    if (i == d) continue;
    ns[j] = t->shape[i];
    nst[j] = t->stride[i];
    j++;
  }
  return mmp__tensor_view(t, t->ndim - 1, ns, nst, t->offset);
}

int mmp_split(mmp_tensor_t *t, int n, const int64_t *sizes, int dim, mmp_tensor_t **out) {
  if (!t || !out || n < 1 || !sizes) return mmp_error_set(MMP_EINVAL, "split: bad arguments");
  int d = norm_dim(dim, t->ndim, "split", t);
  if (d < 0) return d;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    if (sizes[i] < 0) return mmp_error_set(MMP_ESHAPE, "split of %s: negative size", mmp__desc(t));
    total += sizes[i];
  }
  if (total != t->shape[d])
    return mmp_error_set(MMP_ESHAPE, "split of %s along dim %d: sizes sum to %lld, not %lld", mmp__desc(t),
                         d, (long long)total, (long long)t->shape[d]);
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    out[i] = mmp_slice(t, d, start, start + sizes[i], 1);
    if (!out[i]) {
      for (int j = 0; j < i; j++) {
        mmp_tensor_unref(out[j]);
        out[j] = NULL;
      }
      return mmp_error_code();
    }
    start += sizes[i];
  }
  return 0;
}

int mmp_chunk(mmp_tensor_t *t, int n, int dim, mmp_tensor_t **out) {
  if (!t || !out || n < 1) return mmp_error_set(MMP_EINVAL, "chunk: bad arguments");
  int d = norm_dim(dim, t->ndim, "chunk", t);
  if (d < 0) return d;
  if (t->shape[d] % n != 0)
    return mmp_error_set(MMP_ESHAPE, "chunk of %s into %d along dim %d: %lld is not divisible by %d",
                         mmp__desc(t), n, d, (long long)t->shape[d], n);
  int64_t sizes[64];
  if (n > 64) return mmp_error_set(MMP_EINVAL, "chunk: at most 64 pieces");
  for (int i = 0; i < n; i++) sizes[i] = t->shape[d] / n;
  return mmp_split(t, n, sizes, d, out);
}

/* ----------------------------------------------------------- data movement */

int mmp_copy_into(mmp_tensor_t *dst, const mmp_tensor_t *src) {
  if (!dst || !src) return mmp_error_set(MMP_EINVAL, "copy: NULL tensor");
  if (!mmp_tensor_same_shape(dst, src))
    return mmp_error_set(MMP_ESHAPE, "copy: destination %s and source %s differ in shape", mmp__desc(dst),
                         mmp__desc(src));
  if (dst->flags & MMP_TF_READONLY)
    return mmp_error_set(MMP_EINVAL, "copy: destination %s is read-only (a mapped weight)", mmp__desc(dst));
  /* an in-place write cannot be undone by the tape (ops copying inside run
   * with it suspended, so this sees only the caller's own copies) */
  if (mmp__tape_tls && (mmp__tape_tracked(mmp__tape_tls, dst) || mmp__tape_tracked(mmp__tape_tls, src)))
    return mmp_error_set(MMP_EUNSUPPORTED, "copy: %s into %s while a tape tracks them: in-place writes are not "
                         "differentiable (build the result with mmp_concat instead)", mmp__desc(src), mmp__desc(dst));
  if (dst->storage->be != src->storage->be)
    return mmp_error_set(MMP_EDEVICE, "copy: destination on %s, source on %s (use mmp_to_backend)",
                         mmp_backend_name(dst->storage->be), mmp_backend_name(src->storage->be));
  const mmp_tensor_t *srcs[1] = {src};
  return mmp_backend_compute(dst->storage->be, MMP_OP_COPY, NULL, srcs, 1, dst);
}

static mmp_tensor_t *copy_as(const mmp_tensor_t *t, mmp_dtype_t dt) {
  mmp_tensor_t *r = mmp_tensor_new(t->storage->be, dt, t->ndim, t->shape);
  if (!r) return NULL;
  if (mmp_tensor_numel(t) && mmp_copy_into(r, t) < 0) {
    mmp_tensor_unref(r);
    return NULL;
  }
  return r;
}

static mmp_tensor_t *contiguous_impl(mmp_tensor_t *t) {
  if (!t) return NULL;
  if (mmp_tensor_is_contiguous(t)) return mmp_tensor_ref(t);
  return copy_as(t, t->dtype);
}

static mmp_tensor_t *clone_impl(const mmp_tensor_t *t) {
  if (!t) return NULL;
  return copy_as(t, t->dtype);
}

static mmp_tensor_t *convert_impl(const mmp_tensor_t *t, mmp_dtype_t dt) {
  if (!t) return NULL;
  if ((unsigned)dt >= MMP_DTYPE_COUNT) {
    mmp_error_set(MMP_EDTYPE, "convert: invalid dtype %d", (int)dt);
    return NULL;
  }
  if (dt == t->dtype && mmp_tensor_is_contiguous(t)) return mmp_tensor_ref((mmp_tensor_t *)t);
  return copy_as(t, dt);
}

static mmp_tensor_t *to_backend_impl(const mmp_tensor_t *t, mmp_backend_t *be) {
  if (!t) return NULL;
  if (!be) {
    mmp_error_set(MMP_EINVAL, "to_backend: NULL backend");
    return NULL;
  }
  mmp_backend_t *from = t->storage->be;
  if (from == be) return mmp_contiguous((mmp_tensor_t *)t);
  mmp_tensor_t *c = mmp_contiguous((mmp_tensor_t *)t);
  if (!c) return NULL;
  mmp_tensor_t *r = mmp_tensor_new(be, t->dtype, t->ndim, t->shape);
  size_t nb = mmp_tensor_nbytes(t);
  int rc = r ? 0 : mmp_error_code();
  if (r && nb) {
    if (from->ops->device == MMP_DEVICE_CPU) {
      rc = be->ops->copy_from_host(be, mmp__ptr(r), mmp__ptr(c), nb);
    } else if (be->ops->device == MMP_DEVICE_CPU) {
      rc = from->ops->copy_to_host(from, mmp__ptr(r), mmp__ptr(c), nb);
    } else { /* device to device through a host buffer */
      void *tmp = malloc(nb);
      rc = tmp ? from->ops->copy_to_host(from, tmp, mmp__ptr(c), nb) : mmp_error_set(MMP_ENOMEM, "to_backend: out of memory");
      if (rc == 0) rc = be->ops->copy_from_host(be, mmp__ptr(r), tmp, nb);
      free(tmp);
    }
  }
  mmp_tensor_unref(c);
  if (rc < 0) {
    mmp_tensor_unref(r);
    return NULL;
  }
  return r;
}

static mmp_tensor_t *concat_impl(mmp_tensor_t *const *ts, int n, int dim) {
  if (!ts || n < 1) {
    mmp_error_set(MMP_EINVAL, "concat: no tensors");
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (!ts[i]) return NULL;
  const mmp_tensor_t *a = ts[0];
  int d = norm_dim(dim, a->ndim, "concat", a);
  if (d < 0) return NULL;
  int64_t shape[MMP_MAX_DIMS];
  memcpy(shape, a->shape, sizeof shape);
  shape[d] = 0;
  for (int i = 0; i < n; i++) {
    const mmp_tensor_t *b = ts[i];
    if (b->storage->be != a->storage->be) {
      mmp_error_set(MMP_EDEVICE, "concat: tensor %d is on %s, tensor 0 on %s", i,
                    mmp_backend_name(b->storage->be), mmp_backend_name(a->storage->be));
      return NULL;
    }
    if (b->dtype != a->dtype) {
      mmp_error_set(MMP_EDTYPE, "concat: tensor %d is %s, tensor 0 is %s", i, mmp__desc(b), mmp__desc(a));
      return NULL;
    }
    bool okshape = b->ndim == a->ndim;
    for (int j = 0; okshape && j < a->ndim; j++)
      if (j != d && b->shape[j] != a->shape[j]) okshape = false;
    if (!okshape) {
      mmp_error_set(MMP_ESHAPE, "concat along dim %d: tensor %d %s does not fit tensor 0 %s", d, i,
                    mmp__desc(b), mmp__desc(a));
      return NULL;
    }
    shape[d] += b->shape[d];
  }
  mmp_tensor_t *r = mmp_tensor_new(a->storage->be, a->dtype, a->ndim, shape);
  if (!r) return NULL;
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    if (ts[i]->shape[d] == 0) continue;
    mmp_tensor_t *v = mmp_slice(r, d, start, start + ts[i]->shape[d], 1);
    int rc = v ? mmp_copy_into(v, ts[i]) : -1;
    mmp_tensor_unref(v);
    if (rc < 0) {
      mmp_tensor_unref(r);
      return NULL;
    }
    start += ts[i]->shape[d];
  }
  return r;
}

/* ------------------------------------------------------------ the tape hook */

/* The views and copies, recorded like the ops of tensor_ops.c: each keeps
 * the elements in order (VIEW), permutes, slices, broadcasts or
 * concatenates them. mmp_transpose, mmp_split and mmp_chunk are made of
 * these and need no hook of their own. */
static mmp_tensor_t *rec1(mmp_tape_t *tp, mmp_tensor_t *r, mmp__tk_t kind, const char *name, const mmp_tensor_t *a,
                          int niv, const int64_t *iv) {
  const mmp_tensor_t *in[1] = {a};
  mmp__tape_rec_t rc = {.kind = kind, .name = name, .nin = 1, .in = in};
  for (int k = 0; k < niv && k < 8; k++) rc.i[k] = iv[k];
  return mmp__tape_leave(tp, r, &rc);
}

#define VIEW_HOOK(name, call) \
  mmp_tape_t *tp = mmp__tape_enter(); \
  mmp_tensor_t *r = call; \
  return tp ? rec1(tp, r, MMP__TK_VIEW, name, t, 0, NULL) : r

mmp_tensor_t *mmp_reshape(mmp_tensor_t *t, int ndim, const int64_t *shape) {
  VIEW_HOOK("reshape", reshape_impl(t, ndim, shape));
}
mmp_tensor_t *mmp_unsqueeze(mmp_tensor_t *t, int dim) { VIEW_HOOK("unsqueeze", unsqueeze_impl(t, dim)); }
mmp_tensor_t *mmp_squeeze(mmp_tensor_t *t, int dim) { VIEW_HOOK("squeeze", squeeze_impl(t, dim)); }
mmp_tensor_t *mmp_contiguous(mmp_tensor_t *t) { VIEW_HOOK("contiguous", contiguous_impl(t)); }
mmp_tensor_t *mmp_clone(const mmp_tensor_t *t) { VIEW_HOOK("clone", clone_impl(t)); }
mmp_tensor_t *mmp_convert(const mmp_tensor_t *t, mmp_dtype_t dt) { VIEW_HOOK("convert", convert_impl(t, dt)); }

mmp_tensor_t *mmp_to_backend(const mmp_tensor_t *t, mmp_backend_t *be) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = to_backend_impl(t, be);
  if (!tp) return r;
  /* the gradient would have to travel back: not supported across backends */
  return rec1(tp, r, r && r->storage->be == t->storage->be ? MMP__TK_VIEW : MMP__TK_NONE, "to_backend", t, 0, NULL);
}

mmp_tensor_t *mmp_permute(mmp_tensor_t *t, const int *perm) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = permute_impl(t, perm);
  if (!tp) return r;
  int64_t iv[MMP_MAX_DIMS] = {0};
  for (int i = 0; r && i < t->ndim; i++) iv[i] = perm[i] < 0 ? perm[i] + t->ndim : perm[i];
  return rec1(tp, r, MMP__TK_PERMUTE, "permute", t, MMP_MAX_DIMS, iv);
}

mmp_tensor_t *mmp_slice(mmp_tensor_t *t, int dim, int64_t start, int64_t end, int64_t step) {
  mmp_tape_t *tp = mmp__tape_enter();
  int64_t iv[4] = {0, 0, 0, step};
  mmp_tensor_t *r = slice_impl(t, dim, start, end, step, iv);
  return tp ? rec1(tp, r, MMP__TK_SLICE, "slice", t, 4, iv) : r;
}

mmp_tensor_t *mmp_broadcast_to(mmp_tensor_t *t, int ndim, const int64_t *shape) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = broadcast_to_impl(t, ndim, shape);
  return tp ? rec1(tp, r, MMP__TK_BROADCAST, "broadcast_to", t, 0, NULL) : r;
}

mmp_tensor_t *mmp_concat(mmp_tensor_t *const *ts, int n, int dim) {
  mmp_tape_t *tp = mmp__tape_enter();
  mmp_tensor_t *r = concat_impl(ts, n, dim);
  if (!tp) return r;
  if (!r) return mmp__tape_leave(tp, r, NULL);
  int64_t d = dim < 0 ? dim + r->ndim : dim;
  mmp__tape_rec_t rc = {.kind = MMP__TK_CONCAT, .name = "concat", .nin = n, .in = (const mmp_tensor_t *const *)ts,
                        .i = {d}};
  return mmp__tape_leave(tp, r, &rc);
}
