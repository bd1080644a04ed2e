/* core/backend_cuda.c - the CUDA backend: device memory pool (core/pool.c), copies, op dispatch to core/cuda kernels and cuBLAS. */
#include "config.h"

#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "core/backend_cuda.h"
#include "core/cuda/kernels.h"
#include "core/pool.h"
#include "core/tensor_impl.h"

#pragma GCC visibility push(default)
#include <mmpipe/cuda.h>
#pragma GCC visibility pop

/* ============================================================ cuBLAS, loaded on demand
 * libcublas pulls in libcublasLt (over 500 MB): linked directly, it costs
 * every program that links libmmpipe about two seconds at start-up, GPU or
 * not. So libmmpipe links only the small CUDA runtime and opens cuBLAS with
 * dlopen when the backend starts on a machine that has a device. */

#define MMP_STR2(x) #x
#define MMP_STR(x) MMP_STR2(x)

static struct {
  void *lib;
  __typeof__(&cublasCreate_v2) create;
  __typeof__(&cublasSetStream_v2) set_stream;
  __typeof__(&cublasGemmStridedBatchedEx) gemm_sb;
  __typeof__(&cublasGetStatusString) status_string;
} blas;

static const char *blas_status(cublasStatus_t s) {
  return blas.status_string ? blas.status_string(s) : "unknown cuBLAS status";
}

/* Open cuBLAS (its soname for the toolkit we were built with, then the
 * unversioned name). Returns NULL or the reason. */
static const char *blas_load(void) {
  static const char *const names[] = {"libcublas.so." MMP_STR(CUBLAS_VER_MAJOR), "libcublas.so"};
  const char *err = "not found";
  for (size_t i = 0; i < sizeof names / sizeof names[0] && !blas.lib; i++) {
    blas.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!blas.lib) err = dlerror();
  }
  if (!blas.lib) return err;
  void *sym[4];
  static const char *const syms[4] = {"cublasCreate_v2", "cublasSetStream_v2", "cublasGemmStridedBatchedEx",
                                      "cublasGetStatusString"};
  for (int i = 0; i < 4; i++)
    if (!(sym[i] = dlsym(blas.lib, syms[i]))) return syms[i];
  memcpy(&blas.create, &sym[0], sizeof sym[0]);
  memcpy(&blas.set_stream, &sym[1], sizeof sym[1]);
  memcpy(&blas.gemm_sb, &sym[2], sizeof sym[2]);
  memcpy(&blas.status_string, &sym[3], sizeof sym[3]);
  return NULL;
}

/* ============================================================ errors
 * Every CUDA/cuBLAS call goes through these: the message names the call,
 * where it was made and the library's own words, and the function returns
 * MMP_ENOMEM (out of memory) or MMP_EDEVICE. Nothing aborts. */

static int cu_fail(int err, const char *call, const char *file, int line) {
  cudaError_t e = (cudaError_t)err;
  (void)cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
  return mmp_error_set(e == cudaErrorMemoryAllocation ? MMP_ENOMEM : MMP_EDEVICE, "cuda: %s failed at %s:%d: %s (%s)",
                       call, file, line, cudaGetErrorString(e), cudaGetErrorName(e));
}

static int blas_fail(cublasStatus_t s, const char *call, const char *file, int line) {
  return mmp_error_set(s == CUBLAS_STATUS_ALLOC_FAILED ? MMP_ENOMEM : MMP_EDEVICE, "cublas: %s failed at %s:%d: %s",
                       call, file, line, blas_status(s));
}

/* cudaError_t (or an int from a core/cuda launcher) */
#define CU_TRY(call)                                                                                                   \
  do {                                                                                                                 \
    int e_ = (int)(call);                                                                                              \
    if (e_ != 0) return cu_fail(e_, #call, __FILE__, __LINE__);                                                        \
  } while (0)
#define BLAS_TRY(call)                                                                                                 \
  do {                                                                                                                 \
    cublasStatus_t s_ = (call);                                                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) return blas_fail(s_, #call, __FILE__, __LINE__);                                  \
  } while (0)
/* for code that must clean up: set rc and jump */
#define CU_GO(call)                                                                                                    \
  do {                                                                                                                 \
    int e_ = (int)(call);                                                                                              \
    if (e_ != 0) {                                                                                                     \
      rc = cu_fail(e_, #call, __FILE__, __LINE__);                                                                     \
      goto out;                                                                                                        \
    }                                                                                                                  \
  } while (0)

/* ============================================================ state */

typedef struct cuda_ctx {
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  bool sync_each, tf32;
  mmp_cuda_info_t info;
  pthread_mutex_t op_lock; /* serialises compute (one stream, one cuBLAS handle) */
  mmp_pool_t *pool;
} cuda_ctx_t;

static cuda_ctx_t g_ctx = {.op_lock = PTHREAD_MUTEX_INITIALIZER};

static cuda_ctx_t *ctx_of(mmp_backend_t *be) { return (cuda_ctx_t *)be->ctx; }

/* Device memory is per host thread's current device: set it when not 0. */
static int use_device(cuda_ctx_t *c) {
  if (c->device != 0) CU_TRY(cudaSetDevice(c->device));
  return 0;
}

/* ============================================================ the arena
 * The coalescing pool of core/pool.c, as for the CPU backend, over chunks
 * from cudaMalloc (CUDA_CHUNK_BYTES, or the request's size when larger):
 * blocks are cut best-fit and merged again when freed, the descriptors live
 * on the host, and a repeated forward pass makes no cudaMalloc/cudaFree
 * after its first run. All work runs on one stream, so a block freed while
 * kernels that use it are still queued can only be reused by work queued
 * after them; a chunk is only given back with cudaFree, which waits for the
 * device. When cudaMalloc fails the pool releases its entirely free chunks
 * and asks once more; then MMP_ENOMEM says how much was asked and how much
 * is free. The cache is bounded by MMPIPE_POOL_MAX_MB (default: unbounded). */

#define CUDA_CHUNK_BYTES ((size_t)64 << 20)

/* The error of this thread's last cudaMalloc for the pool (the pool calls
 * back on the allocating thread), for the out-of-memory message. */
static __thread cudaError_t chunk_err;

static int cuda_chunk_alloc(void *user, size_t nbytes, void **out) {
  cuda_ctx_t *c = user;
  int rc = use_device(c);
  if (rc) return rc;
  chunk_err = cudaMalloc(out, nbytes);
  if (chunk_err != cudaSuccess) {
    (void)cudaGetLastError();
    return chunk_err == cudaErrorMemoryAllocation ? MMP_ENOMEM : MMP_EDEVICE;
  }
  return 0;
}

static void cuda_chunk_release(void *user, void *ptr, size_t nbytes) {
  (void)nbytes;
  use_device(user);
  cudaFree(ptr); /* synchronises the device: no queued kernel still uses it */
  (void)cudaGetLastError();
}

/* Thread-local note of what the backend itself is allocating (workspaces),
 * for the out-of-memory message. */
static __thread const char *alloc_what;

static int cuda_alloc(mmp_backend_t *be, size_t nbytes, void **out) {
  cuda_ctx_t *c = ctx_of(be);
  chunk_err = cudaSuccess;
  int rc = mmp__pool_alloc(c->pool, nbytes, out);
  if (rc == 0) return 0;
  if (chunk_err != cudaSuccess || rc == MMP_ENOMEM) {
    cudaError_t e = chunk_err != cudaSuccess ? chunk_err : cudaErrorMemoryAllocation;
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    (void)cudaGetLastError();
    mmp_pool_stats_t st;
    mmp__pool_stats(c->pool, &st);
    const double MiB = 1024.0 * 1024.0;
    rc = mmp_error_set(rc, "cuda: out of device memory allocating %zu bytes (%.1f MiB)%s%s: cudaMalloc: %s; "
                       "%.1f MiB free of %.1f MiB on device %d, %.1f MiB in use by mmpipe tensors",
                       nbytes, (double)nbytes / MiB, alloc_what ? " for " : "", alloc_what ? alloc_what : "",
                       cudaGetErrorString(e), (double)fr / MiB, (double)tot / MiB, c->device,
                       (double)st.bytes_in_use / MiB);
  }
  return rc;
}

static void cuda_free(mmp_backend_t *be, void *ptr, size_t nbytes) {
  (void)nbytes;
  if (ptr) mmp__pool_free(ctx_of(be)->pool, ptr);
}

static void cuda_pool_trim(mmp_backend_t *be) { mmp__pool_trim(ctx_of(be)->pool); }

static void cuda_pool_stats(mmp_backend_t *be, mmp_pool_stats_t *out) { mmp__pool_stats(ctx_of(be)->pool, out); }

/* Scratch device memory for one op; released with ws_free (stream-ordered). */
static int ws_alloc(mmp_backend_t *be, size_t n, const char *what, void **out) {
  alloc_what = what;
  int rc = cuda_alloc(be, n, out);
  alloc_what = NULL;
  return rc;
}

/* ============================================================ copies */

static int cuda_copy_to_host(mmp_backend_t *be, void *dst, const void *src, size_t n) {
  cuda_ctx_t *c = ctx_of(be);
  if (!n) return 0;
  int rc = use_device(c);
  if (rc) return rc;
  CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream));
  CU_TRY(cudaStreamSynchronize(c->stream));
  return 0;
}

/* Synchronous: the caller may reuse or free @src as soon as this returns. */
static int cuda_copy_from_host(mmp_backend_t *be, void *dst, const void *src, size_t n) {
  cuda_ctx_t *c = ctx_of(be);
  if (!n) return 0;
  int rc = use_device(c);
  if (rc) return rc;
  CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream));
  CU_TRY(cudaStreamSynchronize(c->stream));
  return 0;
}

static int cuda_synchronize(mmp_backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  int rc = use_device(c);
  if (rc) return rc;
  CU_TRY(cudaStreamSynchronize(c->stream));
  return 0;
}

/* ============================================================ helpers */

/* Up to three operands of one shape (dst first) -> coalesced iteration, as
 * the CPU backend's iter_init. */
static void make_iter(mmpk_iter_t *it, int nop, const mmp_tensor_t *const *ts) {
  _Static_assert(MMPK_MAX_DIMS == MMP_MAX_DIMS, "kernel iterator rank");
  it->numel = mmp_tensor_numel(ts[0]);
  int n = mmp__coalesce_dims(nop, ts, it->shape, &it->stride[0][0], MMPK_MAX_DIMS);
  for (int k = nop; k < MMPK_MAX_OPS; k++)
    for (int d = 0; d < n; d++) it->stride[k][d] = 0;
  it->nd = n;
}

static bool is_float(mmp_dtype_t d) { return d == MMP_F32 || d == MMP_F16 || d == MMP_BF16; }

static cudaDataType_t cuda_type(mmp_dtype_t d) {
  return d == MMP_F16 ? CUDA_R_16F : d == MMP_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* A contiguous copy of @t (any strides) on this backend, dtype @dt. */
static int dcopy(cuda_ctx_t *c, const mmp_tensor_t *src, mmp_tensor_t *dst);
static mmp_tensor_t *contig_as(mmp_backend_t *be, const mmp_tensor_t *t, mmp_dtype_t dt) {
  mmp_tensor_t *r = mmp_tensor_new(be, dt, t->ndim, t->shape);
  if (r && dcopy(ctx_of(be), t, r) < 0) {
    mmp_tensor_unref(r);
    return NULL;
  }
  return r;
}

/* ============================================================ GEMM
 * Row-major C[b] = op(A[b]) @ op(B[b]) (+ beta * C[b]), the contract of
 * mmp_cpu_sgemm, on cuBLAS (column-major): computed as C^T = op(B)^T op(A)^T,
 * i.e. the operands swapped. f16/bf16 inputs run on tensor cores with f32
 * accumulation; f32 inputs in f32 (TF32 with MMPIPE_CUDA_TF32=1). */
static int gemm(cuda_ctx_t *c, mmp_dtype_t in_dt, mmp_dtype_t out_dt, int64_t batch, bool ta, bool tb, int64_t M,
                int64_t N, int64_t K, const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb, int64_t sB,
                float beta, void *C, int64_t ldc, int64_t sC) {
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX ||
      batch > INT_MAX)
    return mmp_error_set(MMP_EUNSUPPORTED, "cuda: GEMM of %lld x %lld x %lld (batch %lld) exceeds cuBLAS's int sizes",
                         (long long)M, (long long)N, (long long)K, (long long)batch);
  if (M == 0 || N == 0 || batch == 0) return 0;
  float alpha = 1.0f;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
  if (in_dt == MMP_F32 && c->tf32) ct = CUBLAS_COMPUTE_32F_FAST_TF32;
  cudaDataType_t ti = cuda_type(in_dt), to = cuda_type(out_dt);
  BLAS_TRY(blas.gemm_sb(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      (int)N, (int)M, (int)K, &alpha, B, ti, (int)ldb, (long long)sB, A, ti,
                                      (int)lda, (long long)sA, &beta, C, to, (int)ldc, (long long)sC, (int)batch, ct,
                                      CUBLAS_GEMM_DEFAULT));
  return 0;
}

/* a contiguous copy on the device, for operands whose strides fit no BLAS layout */
static mmp_tensor_t *cuda_contig(mmp_backend_t *be, const mmp_tensor_t *t) { return contig_as(be, t, t->dtype); }

static int op_fill(cuda_ctx_t *c, mmp_tensor_t *dst, double v);

static int op_matmul(mmp_backend_t *be, const mmp_tensor_t *a0, const mmp_tensor_t *b0, mmp_tensor_t *dst) {
  cuda_ctx_t *c = ctx_of(be);
  int nd = dst->ndim, nb = nd - 2;
  int64_t M = dst->shape[nd - 2], N = dst->shape[nd - 1], K = a0->shape[nd - 1];
  int64_t batch = mmp__numel(nb, dst->shape);
  if (M == 0 || N == 0 || batch == 0) return 0;
  if (K == 0) return op_fill(c, dst, 0.0);
  mmp__gemm_operand_t o[2];
  int rc = mmp__gemm_operands(a0, b0, nb, batch, cuda_contig, be, o);
  if (rc < 0) return rc;
  rc = gemm(c, a0->dtype, dst->dtype, batch, o[0].trans, o[1].trans, M, N, K, mmp__ptr(o[0].t), o[0].ld,
            o[0].bstride, mmp__ptr(o[1].t), o[1].ld, o[1].bstride, 0.0f, mmp__ptr(dst), N, M * N);
  mmp__gemm_operands_free(o);
  return rc;
}

/* f32 copy of a (small) bias of any float dtype, or a reference when f32. */
static mmp_tensor_t *bias_f32(mmp_backend_t *be, const mmp_tensor_t *b) {
  if (!b) return NULL;
  if (b->dtype == MMP_F32) return mmp_tensor_ref((mmp_tensor_t *)b);
  return contig_as(be, b, MMP_F32);
}

static int op_linear(mmp_backend_t *be, const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias,
                     mmp_tensor_t *dst) {
  cuda_ctx_t *c = ctx_of(be);
  int64_t rows = x->shape[0], in = x->shape[1], out = w->shape[0];
  if (rows == 0 || out == 0) return 0;
  float beta = 0.0f;
  if (bias) {
    mmp_tensor_t *bf = bias_f32(be, bias);
    if (!bf) return mmp_error_code();
    int e = mmpk_bias_rows(c->stream, mmp__ptr(dst), dst->dtype, mmp__ptr(bf), rows, out);
    mmp_tensor_unref(bf);
    CU_TRY(e);
    beta = 1.0f;
  }
  if (in == 0) return bias ? 0 : op_fill(c, dst, 0.0);
  /* y[rows, out] = x[rows, in] @ w[out, in]^T */
  return gemm(c, x->dtype, dst->dtype, 1, false, true, rows, out, in, mmp__ptr(x), in, 0, mmp__ptr(w), in, 0, beta,
              mmp__ptr(dst), out, 0);
}

/* Workspace bound for im2col columns (bytes). */
#define CONV_WS_MAX ((size_t)256 << 20)

static int op_conv2d(mmp_backend_t *be, const mmp_op_params_t *p, const mmp_tensor_t *x, const mmp_tensor_t *w,
                     const mmp_tensor_t *bias, mmp_tensor_t *y) {
  cuda_ctx_t *c = ctx_of(be);
  int sh = (int)p->i[0], sw = (int)p->i[1], ph = (int)p->i[2], pw = (int)p->i[3], dh = (int)p->i[4],
      dw = (int)p->i[5], G = (int)p->i[6];
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t O = w->shape[0], Cg = w->shape[1], KH = w->shape[2], KW = w->shape[3];
  int64_t OH = y->shape[2], OW = y->shape[3], P = OH * OW, Og = O / G, Kc = Cg * KH * KW;
  size_t es = mmp_dtype_size(x->dtype), yes = mmp_dtype_size(y->dtype);
  const char *xp = mmp__ptr(x);
  char *yp = mmp__ptr(y);
  const void *wp = mmp__ptr(w);
  int rc = 0;
  void *col = NULL;
  size_t col_bytes = 0;
  if (mmp_tensor_numel(y) == 0) return 0;
  float beta = 0.0f;
  if (bias) {
    mmp_tensor_t *bf = bias_f32(be, bias);
    if (!bf) return mmp_error_code();
    int e = mmpk_bias_fill(c->stream, yp, y->dtype, mmp__ptr(bf), N, O, P);
    mmp_tensor_unref(bf);
    CU_TRY(e);
    beta = 1.0f;
  }
  if (Kc == 0) return bias ? 0 : op_fill(c, y, 0.0);
  bool direct = KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  if (direct) { /* 1x1: the input planes are the GEMM operand as they are */
    for (int64_t n = 0; n < N; n++) {
      /* per group g: y[n, g*Og:, P] = w_g[Og, Cg] @ x[n, g*Cg:, P] */
      rc = gemm(c, x->dtype, y->dtype, G, false, false, Og, P, Kc, wp, Kc, Og * Kc, xp + (size_t)(n * C * H * W) * es,
                P, Cg * P, beta, yp + (size_t)(n * O * P) * yes, P, Og * P);
      if (rc) return rc;
    }
    return 0;
  }
  /* im2col in chunks of output pixels so that the columns stay under CONV_WS_MAX */
  int64_t per_pixel = (int64_t)G * Kc * (int64_t)es;
  int64_t pc = (int64_t)(CONV_WS_MAX / (size_t)per_pixel);
  if (pc < 1) pc = 1;
  if (pc > P) pc = P;
  col_bytes = (size_t)(per_pixel * pc);
  rc = ws_alloc(be, col_bytes, "conv2d im2col columns", &col);
  if (rc) return rc;
  for (int64_t n = 0; n < N && rc == 0; n++) {
    for (int64_t p0 = 0; p0 < P && rc == 0; p0 += pc) {
      int64_t p1 = p0 + pc < P ? p0 + pc : P, np = p1 - p0;
      CU_GO(mmpk_im2col(c->stream, xp + (size_t)(n * C * H * W) * es, (int)es, C, H, W, KH, KW, sh, sw, ph, pw, dh,
                        dw, OW, p0, p1, col));
      /* col is [G*Kc, np]: group g's rows start at g*Kc */
      rc = gemm(c, x->dtype, y->dtype, G, false, false, Og, np, Kc, wp, Kc, Og * Kc, col, np, Kc * np, beta,
                yp + (size_t)(n * O * P + p0) * yes, P, Og * P);
    }
  }
out:
  cuda_free(be, col, col_bytes);
  return rc;
}

/* ============================================================ light ops */

static int dcopy(cuda_ctx_t *c, const mmp_tensor_t *src, mmp_tensor_t *dst) {
  if (mmp_tensor_numel(dst) == 0) return 0;
  mmpk_iter_t it;
  const mmp_tensor_t *ts[2] = {dst, src};
  make_iter(&it, 2, ts);
  CU_TRY(mmpk_copy(c->stream, &it, mmp__ptr(dst), dst->dtype, mmp__ptr(src), src->dtype));
  return 0;
}

/* The bytes of @v stored as dtype @dt (as the CPU backend's st_any). */
static uint64_t scalar_bits(mmp_dtype_t dt, double v) {
  uint64_t bits = 0;
  switch (dt) {
  case MMP_F32: {
    float f = (float)v;
    memcpy(&bits, &f, 4);
    break;
  }
  case MMP_F16: bits = mmp__float_to_half((float)v); break;
  case MMP_BF16: bits = mmp__float_to_bf16((float)v); break;
  case MMP_I64: {
    int64_t i = isfinite(v) ? (int64_t)v : 0;
    memcpy(&bits, &i, 8);
    break;
  }
  case MMP_I32: {
    int32_t i = isfinite(v) ? (int32_t)(int64_t)v : 0;
    memcpy(&bits, &i, 4);
    break;
  }
  case MMP_U8: bits = isfinite(v) ? (uint8_t)(int64_t)v : 0; break;
  case MMP_BOOL: bits = v != 0; break;
  case MMP_F64: memcpy(&bits, &v, 8); break;
  default: break;
  }
  return bits;
}

static int op_fill(cuda_ctx_t *c, mmp_tensor_t *dst, double v) {
  if (mmp_tensor_numel(dst) == 0) return 0;
  mmpk_iter_t it;
  const mmp_tensor_t *ts[1] = {dst};
  make_iter(&it, 1, ts);
  CU_TRY(mmpk_fill(c->stream, &it, mmp__ptr(dst), (int)mmp_dtype_size(dst->dtype), scalar_bits(dst->dtype, v)));
  return 0;
}

static int kop_of(mmp_op_t op) {
  switch (op) {
  case MMP_OP_ADD: return MMPK_ADD;
  case MMP_OP_SUB: return MMPK_SUB;
  case MMP_OP_MUL: return MMPK_MUL;
  case MMP_OP_DIV: return MMPK_DIV;
  case MMP_OP_AXPBY: return MMPK_AXPBY;
  case MMP_OP_SCALE: return MMPK_SCALE;
  case MMP_OP_CLAMP: return MMPK_CLAMP;
  case MMP_OP_SQRT: return MMPK_SQRT;
  case MMP_OP_EXP: return MMPK_EXP;
  case MMP_OP_ABS: return MMPK_ABS;
  case MMP_OP_SILU: return MMPK_SILU;
  case MMP_OP_GELU: return MMPK_GELU;
  case MMP_OP_GELU_TANH: return MMPK_GELU_TANH;
  case MMP_OP_QUICK_GELU: return MMPK_QUICK_GELU;
  case MMP_OP_SIGMOID: return MMPK_SIGMOID;
  case MMP_OP_TANH: return MMPK_TANH;
  case MMP_OP_RELU: return MMPK_RELU;
  case MMP_OP_SUM: return MMPK_RED_SUM;
  case MMP_OP_MEAN: return MMPK_RED_MEAN;
  case MMP_OP_MAX: return MMPK_RED_MAX;
  case MMP_OP_ARGMAX: return MMPK_RED_ARGMAX;
  default: return -1;
  }
}

static int op_embedding(mmp_backend_t *be, const mmp_tensor_t *table, const mmp_tensor_t *ids, mmp_tensor_t *dst) {
  cuda_ctx_t *c = ctx_of(be);
  int64_t V = table->shape[0], D = table->shape[1], n = mmp_tensor_numel(ids);
  if (n == 0 || D == 0) return 0;
  void *flag = NULL;
  int rc = ws_alloc(be, sizeof(unsigned long long), "embedding id check", &flag);
  if (rc) return rc;
  unsigned long long bad = ULLONG_MAX;
  bool ids64 = ids->dtype == MMP_I64;
  CU_GO(cudaMemsetAsync(flag, 0xff, sizeof bad, c->stream));
  CU_GO(mmpk_embedding(c->stream, mmp__ptr(table), V, D, mmp__ptr(ids), ids64, n, mmp__ptr(dst), flag));
  /* the check needs the flag on the host: one synchronisation per lookup */
  CU_GO(cudaMemcpyAsync(&bad, flag, sizeof bad, cudaMemcpyDeviceToHost, c->stream));
  CU_GO(cudaStreamSynchronize(c->stream));
  if (bad != ULLONG_MAX) {
    int64_t id = 0;
    size_t es = ids64 ? 8 : 4;
    int32_t id32 = 0;
    CU_GO(cudaMemcpy(ids64 ? (void *)&id : (void *)&id32, (const char *)mmp__ptr(ids) + bad * es, es,
                     cudaMemcpyDeviceToHost));
    if (!ids64) id = id32;
    rc = mmp_error_set(MMP_EINVAL, "embedding: id %lld at position %llu is outside the table of %lld rows",
                       (long long)id, bad, (long long)V);
  }
out:
  cuda_free(be, flag, sizeof(unsigned long long));
  return rc;
}

/* ============================================================ dispatch */

/* Operands of GEMM-like ops (matmul, linear, conv2d, attention): all f32, or
 * all f16, or all bf16; dst f32 or the inputs' dtype. Bias any float type. */
static bool gemm_types_ok(const mmp_tensor_t *const *srcs, int nin, const mmp_tensor_t *bias, const mmp_tensor_t *dst) {
  mmp_dtype_t dt = srcs[0]->dtype;
  if (!is_float(dt)) return false;
  for (int i = 1; i < nin; i++)
    if (!srcs[i] || srcs[i]->dtype != dt) return false;
  if (bias && !is_float(bias->dtype)) return false;
  return dst->dtype == MMP_F32 || dst->dtype == dt;
}

static bool cuda_supports(mmp_backend_t *be, mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                          const mmp_tensor_t *dst) {
  (void)be;
  for (int i = 0; i < nsrc; i++)
    if (srcs[i] && srcs[i]->storage->be != be) return false;
  switch (op) {
  case MMP_OP_COPY:
  case MMP_OP_FILL: return true;
  case MMP_OP_ARGMAX: return nsrc == 1 && srcs[0]->dtype == MMP_F32 && dst->dtype == MMP_I64;
  case MMP_OP_EMBEDDING:
    return nsrc == 2 && srcs[0]->dtype == MMP_F32 && (srcs[1]->dtype == MMP_I64 || srcs[1]->dtype == MMP_I32) &&
           dst->dtype == MMP_F32;
  case MMP_OP_TIMESTEP_EMBEDDING: return nsrc == 1 && srcs[0]->dtype != MMP_BOOL && dst->dtype == MMP_F32;
  case MMP_OP_MATMUL: return nsrc == 2 && gemm_types_ok(srcs, 2, NULL, dst);
  case MMP_OP_LINEAR:
  case MMP_OP_CONV2D: return nsrc >= 2 && gemm_types_ok(srcs, 2, nsrc > 2 ? srcs[2] : NULL, dst);
  case MMP_OP_ATTENTION:
    if (nsrc < 3) return false;
    if (nsrc > 3 && srcs[3] && srcs[3]->dtype != MMP_U8 && srcs[3]->dtype != MMP_BOOL) return false;
    if (srcs[0]->ndim != 4 || srcs[2]->ndim != 4) return false;
    if (srcs[0]->shape[3] > mmpk_attention_max_dim() || srcs[2]->shape[3] > mmpk_attention_max_dim()) return false;
    return gemm_types_ok(srcs, 3, NULL, dst);
  case MMP_OP_ACT_BACKWARD: /* the backward ops have CPU kernels only so far (doc/training.md) */
  case MMP_OP_GEGLU_BACKWARD:
  case MMP_OP_LAYER_NORM_BACKWARD:
  case MMP_OP_GROUP_NORM_BACKWARD:
  case MMP_OP_EMBEDDING_BACKWARD:
  case MMP_OP_CONV2D_BACKWARD_INPUT:
  case MMP_OP_CONV2D_BACKWARD_WEIGHT:
  case MMP_OP_ATTENTION_BACKWARD:
  case MMP_OP_ADAMW: return false;
  default: break;
  }
  if (dst->dtype != MMP_F32) return false;
  for (int i = 0; i < nsrc; i++)
    if (srcs[i] && srcs[i]->dtype != MMP_F32) return false;
  return true;
}

static int compute_locked(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *s,
                          int nsrc, mmp_tensor_t *dst) {
  cuda_ctx_t *c = ctx_of(be);
  int bad = mmp__backend_check("cuda", op, s, nsrc, dst, true);
  if (bad < 0) return bad;
  cudaStream_t st = c->stream;
  switch (op) {
  case MMP_OP_COPY: return dcopy(c, s[0], dst);
  case MMP_OP_FILL: return op_fill(c, dst, p->f[0]);
  case MMP_OP_ADD:
  case MMP_OP_SUB:
  case MMP_OP_MUL:
  case MMP_OP_DIV:
  case MMP_OP_AXPBY: {
    if (mmp_tensor_numel(dst) == 0) return 0;
    mmpk_iter_t it;
    const mmp_tensor_t *ts[3] = {dst, s[0], s[1]};
    make_iter(&it, 3, ts);
    CU_TRY(mmpk_binary(st, kop_of(op), &it, mmp__ptr(dst), mmp__ptr(s[0]), mmp__ptr(s[1]), (float)p->f[0],
                       (float)p->f[1]));
    return 0;
  }
  case MMP_OP_SCALE:
  case MMP_OP_CLAMP:
  case MMP_OP_SQRT:
  case MMP_OP_EXP:
  case MMP_OP_ABS:
  case MMP_OP_SILU:
  case MMP_OP_GELU:
  case MMP_OP_GELU_TANH:
  case MMP_OP_QUICK_GELU:
  case MMP_OP_SIGMOID:
  case MMP_OP_TANH:
  case MMP_OP_RELU: {
    if (mmp_tensor_numel(dst) == 0) return 0;
    mmpk_iter_t it;
    const mmp_tensor_t *ts[2] = {dst, s[0]};
    make_iter(&it, 2, ts);
    CU_TRY(mmpk_unary(st, kop_of(op), &it, mmp__ptr(dst), mmp__ptr(s[0]), (float)p->f[0], (float)p->f[1]));
    return 0;
  }
  case MMP_OP_GEGLU: {
    int64_t D = dst->shape[dst->ndim - 1], rows = D ? mmp_tensor_numel(dst) / D : 0;
    CU_TRY(mmpk_geglu(st, mmp__ptr(s[0]), mmp__ptr(dst), rows, D));
    return 0;
  }
  case MMP_OP_SUM:
  case MMP_OP_MEAN:
  case MMP_OP_MAX:
  case MMP_OP_ARGMAX: {
    const mmp_tensor_t *x = s[0];
    int dim = op == MMP_OP_ARGMAX ? x->ndim - 1 : (int)p->i[0];
    if (dim < 0 || dim >= x->ndim) return mmp_error_set(MMP_EINVAL, "cuda %s: dim %d out of range", mmp_op_name(op), dim);
    CU_TRY(mmpk_reduce(st, kop_of(op), x->ndim, x->shape, x->stride, dim, mmp__ptr(x), mmp__ptr(dst)));
    return 0;
  }
  case MMP_OP_MATMUL: return op_matmul(be, s[0], s[1], dst);
  case MMP_OP_LINEAR: return op_linear(be, s[0], s[1], nsrc > 2 ? s[2] : NULL, dst);
  case MMP_OP_CONV2D: {
    /* i[7]: compute dtype (fp32 here whatever it asks) + 256 x the fused activation */
    const int64_t act = p->i[7] >> 8;
    if (act != 0 && act != MMP_OP_RELU)
      return mmp_error_set(MMP_EINVAL, "cuda conv2d: fused activation %lld (want none or relu)", (long long)act);
    int rc = op_conv2d(be, p, s[0], s[1], nsrc > 2 ? s[2] : NULL, dst);
    if (rc == 0 && act == MMP_OP_RELU && mmp_tensor_numel(dst) > 0) { /* then ReLU in place, same stream */
      mmpk_iter_t it;
      const mmp_tensor_t *ts[2] = {dst, dst};
      make_iter(&it, 2, ts);
      CU_TRY(mmpk_unary(st, MMPK_RELU, &it, mmp__ptr(dst), mmp__ptr(dst), 0.0f, 0.0f));
    }
    return rc;
  }
  case MMP_OP_GROUP_NORM:
  case MMP_OP_GROUP_NORM_SILU: {
    const mmp_tensor_t *x = s[0];
    int64_t N = x->shape[0], C = x->shape[1], S = (N * C) != 0 ? mmp_tensor_numel(x) / (N * C) : 0;
    if (mmp_tensor_numel(x) == 0) return 0;
    CU_TRY(mmpk_group_norm(st, mmp__ptr(x), N, C, S, (int)p->i[0], nsrc > 1 && s[1] ? mmp__ptr(s[1]) : NULL,
                           nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL, (float)p->f[0], mmp__ptr(dst)));
    if (op == MMP_OP_GROUP_NORM_SILU) { /* then SiLU in place, same stream */
      mmpk_iter_t it;
      const mmp_tensor_t *ts[2] = {dst, dst};
      make_iter(&it, 2, ts);
      CU_TRY(mmpk_unary(st, MMPK_SILU, &it, mmp__ptr(dst), mmp__ptr(dst), 0.0f, 0.0f));
    }
    return 0;
  }
  case MMP_OP_LAYER_NORM: {
    const mmp_tensor_t *x = s[0];
    int64_t D = x->shape[x->ndim - 1], rows = D ? mmp_tensor_numel(x) / D : 0;
    if (rows == 0) return 0;
    CU_TRY(mmpk_layer_norm(st, mmp__ptr(x), rows, D, nsrc > 1 && s[1] ? mmp__ptr(s[1]) : NULL,
                           nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL, (float)p->f[0], mmp__ptr(dst)));
    return 0;
  }
  case MMP_OP_SOFTMAX: {
    const mmp_tensor_t *x = s[0];
    int dim = (int)p->i[0];
    if (dim < 0 || dim >= x->ndim) return mmp_error_set(MMP_EINVAL, "cuda softmax: dim %d out of range", dim);
    CU_TRY(mmpk_softmax(st, x->ndim, x->shape, x->stride, dim, mmp__ptr(x), mmp__ptr(dst)));
    return 0;
  }
  case MMP_OP_ATTENTION: {
    const mmp_tensor_t *q = s[0], *k = s[1], *v = s[2], *m = nsrc > 3 ? s[3] : NULL;
    if (mmp_tensor_numel(dst) == 0) return 0;
    CU_TRY(mmpk_attention(st, q->dtype, dst->dtype, mmp__ptr(q), mmp__ptr(k), mmp__ptr(v),
                          m ? (const uint8_t *)mmp__ptr(m) : NULL, q->shape[0], q->shape[1], q->shape[2], k->shape[2],
                          q->shape[3], v->shape[3], p->i[0] != 0, (float)p->f[0], mmp__ptr(dst)));
    return 0;
  }
  case MMP_OP_UPSAMPLE_NEAREST2X: {
    const mmp_tensor_t *x = s[0];
    CU_TRY(mmpk_upsample_nearest2x(st, mmp__ptr(x), mmp__ptr(dst), x->shape[0] * x->shape[1], x->shape[2],
                                   x->shape[3]));
    return 0;
  }
  case MMP_OP_AVG_POOL2D:
  case MMP_OP_MAX_POOL2D: {
    const mmp_tensor_t *x = s[0];
    CU_TRY(mmpk_pool2d(st, op == MMP_OP_MAX_POOL2D, p->i[3] != 0, mmp__ptr(x), mmp__ptr(dst),
                       x->shape[0] * x->shape[1], x->shape[2], x->shape[3], dst->shape[2], dst->shape[3],
                       (int)p->i[0], (int)p->i[1], (int)p->i[2]));
    return 0;
  }
  case MMP_OP_RESIZE_BILINEAR: {
    const mmp_tensor_t *x = s[0];
    CU_TRY(mmpk_resize_bilinear(st, mmp__ptr(x), mmp__ptr(dst), x->shape[0] * x->shape[1], x->shape[2],
                                x->shape[3], dst->shape[2], dst->shape[3], p->i[0] != 0));
    return 0;
  }
  case MMP_OP_EMBEDDING: return op_embedding(be, s[0], s[1], dst);
  case MMP_OP_TIMESTEP_EMBEDDING: {
    const mmp_tensor_t *t = s[0];
    CU_TRY(mmpk_timestep_embedding(st, mmp__ptr(t), t->dtype, t->stride[0], dst->shape[0], dst->shape[1],
                                   p->i[0] != 0, (float)p->f[0], (float)p->f[1], p->f[2], mmp__ptr(dst)));
    return 0;
  }
  default: return mmp_error_set(MMP_EUNSUPPORTED, "cuda: op %s not implemented", mmp_op_name(op));
  }
}

static int cuda_compute(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *s,
                        int nsrc, mmp_tensor_t *dst) {
  cuda_ctx_t *c = ctx_of(be);
  pthread_mutex_lock(&c->op_lock);
  int rc = use_device(c);
  if (rc == 0) rc = compute_locked(be, op, p, s, nsrc, dst);
  if (rc == 0 && c->sync_each) {
    cudaError_t e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess)
      rc = mmp_error_set(MMP_EDEVICE, "cuda: kernel of %s on %s failed: %s (%s)", mmp_op_name(op), mmp__desc(dst),
                         cudaGetErrorString(e), cudaGetErrorName(e));
  }
  pthread_mutex_unlock(&c->op_lock);
  if (rc < 0 && rc != MMP_EINVAL && rc != MMP_EUNSUPPORTED) mmp_error_prefix("%s: ", mmp_op_name(op));
  return rc;
}

static const mmp_backend_ops_t cuda_ops = {
    .struct_size = sizeof(mmp_backend_ops_t),
    .name = "cuda",
    .device = MMP_DEVICE_CUDA,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .copy_to_host = cuda_copy_to_host,
    .copy_from_host = cuda_copy_from_host,
    .supports_op = cuda_supports,
    .compute = cuda_compute,
    .synchronize = cuda_synchronize,
    .pool_stats = cuda_pool_stats,
    .pool_trim = cuda_pool_trim,
    .set_threads = NULL,
};

static mmp_backend_t cuda_backend = {&cuda_ops, &g_ctx};

/* ============================================================ start-up */

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static mmp_backend_t *cuda_ready;
static char cuda_why[512];

/* Dense f16 tensor-core FLOPs per SM per clock with f32 accumulation. */
static double fp16_flops_per_sm_clock(int major, int minor) {
  if (major == 9) return 4096; /* Hopper */
  if (major == 8 && minor == 0) return 2048; /* A100 */
  if (major == 8) return 1024; /* GA10x/AD10x: f32 accumulation at half the f16-accumulate rate */
  if (major == 7) return 1024; /* V100/T4 */
  return 0;
}

#define INIT_TRY(call)                                                                                                 \
  do {                                                                                                                 \
    cudaError_t e_ = (call);                                                                                           \
    if (e_ != cudaSuccess) {                                                                                           \
      snprintf(cuda_why, sizeof cuda_why, "%s: %s (%s)", #call, cudaGetErrorString(e_), cudaGetErrorName(e_));         \
      (void)cudaGetLastError();                                                                                        \
      return;                                                                                                          \
    }                                                                                                                  \
  } while (0)

static void cuda_init(void) {
  cuda_ctx_t *c = &g_ctx;
  int n = 0;
  INIT_TRY(cudaGetDeviceCount(&n));
  if (n <= 0) {
    snprintf(cuda_why, sizeof cuda_why, "cudaGetDeviceCount found no device");
    return;
  }
  const char *e = getenv("MMPIPE_CUDA_DEVICE");
  c->device = e && *e ? atoi(e) : 0;
  if (c->device < 0 || c->device >= n) {
    snprintf(cuda_why, sizeof cuda_why, "MMPIPE_CUDA_DEVICE=%s but there are %d devices", e, n);
    return;
  }
  INIT_TRY(cudaSetDevice(c->device));
  INIT_TRY(cudaFree(NULL)); /* create the context now, not inside the first op */
  INIT_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  const char *why = blas_load();
  if (why) {
    snprintf(cuda_why, sizeof cuda_why, "cannot load cuBLAS (libcublas.so.%d): %s", CUBLAS_VER_MAJOR, why);
    return;
  }
  cublasStatus_t bs = blas.create(&c->blas);
  if (bs == CUBLAS_STATUS_SUCCESS) bs = blas.set_stream(c->blas, c->stream);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    snprintf(cuda_why, sizeof cuda_why, "cublasCreate: %s", blas_status(bs));
    return;
  }
  struct cudaDeviceProp prop;
  INIT_TRY(cudaGetDeviceProperties(&prop, c->device));
  int clock_khz = 0;
  INIT_TRY(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, c->device));
  mmp_cuda_info_t *in = &c->info;
  snprintf(in->name, sizeof in->name, "%s", prop.name);
  in->device = c->device;
  in->cc_major = prop.major;
  in->cc_minor = prop.minor;
  in->sm_count = prop.multiProcessorCount;
  in->clock_ghz = clock_khz / 1e6;
  in->total_mem = prop.totalGlobalMem;
  in->fp16_tflops = in->sm_count * in->clock_ghz * 1e9 * fp16_flops_per_sm_clock(prop.major, prop.minor) / 1e12;
  const char *sy = getenv("MMPIPE_CUDA_SYNC"), *tf = getenv("MMPIPE_CUDA_TF32");
  c->sync_each = sy && atoi(sy) > 0;
  c->tf32 = tf && atoi(tf) > 0;
  mmp_pool_config_t pc = {.name = "cuda",
                          .chunk_alloc = cuda_chunk_alloc,
                          .chunk_release = cuda_chunk_release,
                          .user = c,
                          .chunk_bytes = CUDA_CHUNK_BYTES,
                          .align = 256, /* as cudaMalloc's own: what cuBLAS and vector loads like best */
                          .max_cached = mmp__pool_max_cached_env(1LL << 40)};
  if (!(c->pool = mmp__pool_new(&pc))) {
    snprintf(cuda_why, sizeof cuda_why, "%s", mmp_error_last());
    return;
  }
  if (mmp_backend_register(&cuda_backend) < 0) {
    snprintf(cuda_why, sizeof cuda_why, "%s", mmp_error_last());
    return;
  }
  cuda_ready = &cuda_backend;
  MMP_INFO("cuda", "device %d: %s, compute capability %d.%d, %d SMs, %.0f MiB", c->device, in->name, in->cc_major,
           in->cc_minor, in->sm_count, (double)in->total_mem / (1024.0 * 1024.0));
}

mmp_backend_t *mmp__backend_cuda(void) {
  pthread_once(&cuda_once, cuda_init);
  if (!cuda_ready) mmp_error_set(MMP_EDEVICE, "no CUDA device: %s", cuda_why);
  return cuda_ready;
}

/* ============================================================ public extras */

int mmp_cuda_info(mmp_backend_t *be, mmp_cuda_info_t *out) {
  if (!be || be != &cuda_backend || !cuda_ready || !out)
    return mmp_error_set(MMP_EINVAL, "mmp_cuda_info: not the CUDA backend");
  cuda_ctx_t *c = ctx_of(be);
  *out = c->info;
  int rc = use_device(c);
  if (rc) return rc;
  size_t fr = 0, tot = 0;
  CU_TRY(cudaMemGetInfo(&fr, &tot));
  out->free_mem = fr;
  return 0;
}

int mmp_cuda_philox_fill(mmp_tensor_t *dst, uint64_t seed, uint64_t offset, mmp_cuda_dist_t dist, int64_t low,
                         int64_t high) {
  if (!dst) return mmp_error_set(MMP_EINVAL, "mmp_cuda_philox_fill: NULL tensor");
  mmp_backend_t *be = dst->storage->be;
  if (be != &cuda_backend) return mmp_error_set(MMP_EDEVICE, "mmp_cuda_philox_fill: %s is not on cuda", mmp__desc(dst));
  if (!mmp_tensor_is_contiguous(dst))
    return mmp_error_set(MMP_EINVAL, "mmp_cuda_philox_fill: %s must be contiguous", mmp__desc(dst));
  mmp_dtype_t want = dist == MMP_CUDA_RANDINT ? MMP_I64 : MMP_F32;
  if ((unsigned)dist > MMP_CUDA_RANDINT) return mmp_error_set(MMP_EINVAL, "mmp_cuda_philox_fill: unknown distribution %d", (int)dist);
  if (dst->dtype != want)
    return mmp_error_set(MMP_EDTYPE, "mmp_cuda_philox_fill: %s must be %s", mmp__desc(dst), mmp_dtype_name(want));
  if (dist == MMP_CUDA_RANDINT && high <= low)
    return mmp_error_set(MMP_EINVAL, "mmp_cuda_philox_fill: empty range [%lld, %lld)", (long long)low, (long long)high);
  cuda_ctx_t *c = ctx_of(be);
  pthread_mutex_lock(&c->op_lock);
  int rc = use_device(c);
  if (rc == 0) {
    int e = mmpk_philox(c->stream, (int)dist, seed, offset, mmp_tensor_numel(dst), mmp__ptr(dst), low,
                        (uint64_t)high - (uint64_t)low);
    if (e) rc = cu_fail(e, "mmpk_philox", __FILE__, __LINE__);
  }
  pthread_mutex_unlock(&c->op_lock);
  return rc;
}
