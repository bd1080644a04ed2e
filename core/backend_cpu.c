/* core/backend_cpu.c - the CPU backend: the host memory pool (core/pool.c), light ops, dispatch to core/cpu kernels. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/cpu/dispatch.h"
#include "core/cpu/kernels.h"
#include "core/pool.h"
#include "core/tensor_impl.h"

/* ================================================================ the pool
 *
 * A coalescing caching allocator (core/pool.c): blocks are cut best-fit from
 * 64 MiB chunks obtained with mmap (a larger request gets a chunk of its own
 * size) and freed blocks merge with their free neighbours, so the footprint
 * stays close to the bytes actually live while a forward pass that repeats
 * the same sizes finds every block in the cache after its first run:
 * os_allocs (chunks mapped) stops growing (tested in test_core_ops and
 * test_core_pool). Entirely free chunks are kept while the cache holds at
 * most MMPIPE_POOL_MAX_MB (default 8192 MiB) of free bytes; beyond that
 * they are unmapped. mmp_backend_pool_trim() unmaps every entirely free
 * chunk. Under AddressSanitizer the free parts of the chunks and the
 * rounding tail of each block are poisoned, so that use after free and
 * overflows are caught as with a malloc per tensor. */

#define CPU_CHUNK_BYTES ((size_t)64 << 20)

/* Chunks start on a 2 MiB boundary and ask for transparent huge pages: a
 * first touch then faults 2 MiB at a time instead of 4 KiB (on a VM the
 * faults of 4 KiB pages cost more than the arithmetic that fills them). */
#define HUGE_BYTES ((size_t)2 << 20)

static int cpu_chunk_alloc(void *user, size_t nbytes, void **out) {
  (void)user;
  size_t len = (nbytes + 4095) & ~(size_t)4095;
  char *m = mmap(NULL, len + HUGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return MMP_ENOMEM;
  char *p = (char *)(((uintptr_t)m + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
  if (p > m) munmap(m, (size_t)(p - m));
  if (m + HUGE_BYTES > p) munmap(p + len, (size_t)(m + HUGE_BYTES - p));
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE);
#endif
  *out = p;
  return 0;
}

static void cpu_chunk_release(void *user, void *ptr, size_t nbytes) {
  (void)user;
  munmap(ptr, nbytes);
}

static mmp_pool_t *cpu_pool;
static pthread_once_t cpu_pool_once = PTHREAD_ONCE_INIT;

static void cpu_pool_init(void) {
  mmp_pool_config_t cfg = {.name = "cpu",
                           .chunk_alloc = cpu_chunk_alloc,
                           .chunk_release = cpu_chunk_release,
                           .chunk_bytes = CPU_CHUNK_BYTES,
                           .align = 64,
                           .max_cached = mmp__pool_max_cached_env(8192),
                           .poison = true};
  cpu_pool = mmp__pool_new(&cfg);
}

static mmp_pool_t *pool_get(void) {
  pthread_once(&cpu_pool_once, cpu_pool_init);
  return cpu_pool;
}

static int cpu_alloc(mmp_backend_t *be, size_t nbytes, void **out) {
  (void)be;
  mmp_pool_t *p = pool_get();
  int rc = p ? mmp__pool_alloc(p, nbytes, out) : MMP_ENOMEM;
  if (rc < 0) return mmp_error_set(MMP_ENOMEM, "cpu: out of memory allocating %zu bytes", nbytes);
  return 0;
}

static void cpu_free(mmp_backend_t *be, void *ptr, size_t nbytes) {
  (void)be;
  (void)nbytes;
  if (ptr) mmp__pool_free(pool_get(), ptr);
}

static void cpu_pool_trim(mmp_backend_t *be) {
  (void)be;
  mmp_pool_t *p = pool_get();
  if (p) mmp__pool_trim(p);
}

__attribute__((destructor)) static void cpu_pool_drain(void) {
  if (cpu_pool) mmp__pool_trim(cpu_pool);
}

static void cpu_pool_stats(mmp_backend_t *be, mmp_pool_stats_t *out) {
  (void)be;
  mmp_pool_t *p = pool_get();
  if (p) mmp__pool_stats(p, out);
  else memset(out, 0, sizeof *out);
}

static int cpu_copy(mmp_backend_t *be, void *dst, const void *src, size_t n) {
  (void)be;
  if (n) memmove(dst, src, n);
  return 0;
}

/* ========================================================= parallel helper */

typedef void (*range_fn)(int64_t start, int64_t end, void *ctx);

typedef struct range_job {
  range_fn fn;
  void *ctx;
  int64_t n, chunk;
} range_job_t;

static void range_task(int64_t i, void *user) {
  range_job_t *j = user;
  int64_t s = i * j->chunk, e = s + j->chunk;
  if (e > j->n) e = j->n;
  if (s < e) j->fn(s, e, j->ctx);
}

/* Run fn over [0, n) in chunks, each worth about @grain units of work per item
 * (cost = items * cost_per_item); small jobs run inline. */
static void par_range(int64_t n, int64_t cost_per_item, range_fn fn, void *ctx) {
  if (n <= 0) return;
  int nt = mmp_cpu_threads();
  int64_t total = n * (cost_per_item > 0 ? cost_per_item : 1);
  if (nt <= 1 || total < 32768 || n == 1) {
    fn(0, n, ctx);
    return;
  }
  int64_t tasks = (int64_t)nt * 4;
  if (tasks > n) tasks = n;
  if (tasks > total / 16384) tasks = total / 16384 > 1 ? total / 16384 : 2;
  range_job_t j = {fn, ctx, n, (n + tasks - 1) / tasks};
  mmp_cpu_parallel_for((n + j.chunk - 1) / j.chunk, range_task, &j);
}

/* ================================================== strided iteration
 * Up to 4 operands of one shape (dst first). Dims are coalesced where all
 * operands are contiguous across them; the iteration is over "rows" of the
 * innermost dim. */

#define MAXOP 4
typedef struct iter {
  int nd, nop;
  int64_t shape[MMP_MAX_DIMS];
  int64_t stride[MAXOP][MMP_MAX_DIMS];
  char *base[MAXOP];
  size_t esize[MAXOP];
  int64_t rows, inner;
} iter_t;

static void iter_init(iter_t *it, int nop, const mmp_tensor_t *const *ts) {
  it->nop = nop;
  for (int k = 0; k < nop; k++) {
    it->base[k] = mmp__ptr(ts[k]);
    it->esize[k] = mmp_dtype_size(ts[k]->dtype);
  }
  int n = mmp__coalesce_dims(nop, ts, it->shape, &it->stride[0][0], MMP_MAX_DIMS);
  it->nd = n;
  it->inner = it->shape[n - 1];
  it->rows = 1;
  for (int d = 0; d < n - 1; d++) it->rows *= it->shape[d];
}

/* Byte pointers of operand k at the start of row r. */
static inline void iter_row(const iter_t *it, int64_t r, char **ptrs) {
  int64_t idx[MMP_MAX_DIMS];
  for (int d = it->nd - 2; d >= 0; d--) {
    idx[d] = r % it->shape[d];
    r /= it->shape[d];
  }
  for (int k = 0; k < it->nop; k++) {
    int64_t off = 0;
    for (int d = 0; d < it->nd - 1; d++) off += idx[d] * it->stride[k][d];
    ptrs[k] = it->base[k] + off * (int64_t)it->esize[k];
  }
}

/* ================================================================ copy */

static inline double ld_any(mmp_dtype_t dt, const char *p) {
  switch (dt) {
  case MMP_F32: return *(const float *)p;
  case MMP_F16: return mmp__half_to_float(*(const uint16_t *)p);
  case MMP_BF16: return mmp__bf16_to_float(*(const uint16_t *)p);
  case MMP_I64: return (double)*(const int64_t *)p;
  case MMP_I32: return *(const int32_t *)p;
  case MMP_U8: return *(const uint8_t *)p;
  case MMP_BOOL: return *(const uint8_t *)p != 0;
  case MMP_F64: return *(const double *)p;
  default: return 0;
  }
}

static inline void st_any(mmp_dtype_t dt, char *p, double v) {
  switch (dt) {
  case MMP_F32: *(float *)p = (float)v; break;
  case MMP_F16: *(uint16_t *)p = mmp__float_to_half((float)v); break;
  case MMP_BF16: *(uint16_t *)p = mmp__float_to_bf16((float)v); break;
  case MMP_I64: *(int64_t *)p = isfinite(v) ? (int64_t)v : 0; break;
  case MMP_I32: *(int32_t *)p = isfinite(v) ? (int32_t)(int64_t)v : 0; break;
  case MMP_U8: *(uint8_t *)p = isfinite(v) ? (uint8_t)(int64_t)v : 0; break;
  case MMP_BOOL: *(uint8_t *)p = v != 0; break;
  case MMP_F64: *(double *)p = v; break;
  default: break;
  }
}

/* f16 <-> f32 on contiguous runs with the F16C instructions when the CPU
 * has them (weights stored in f16 are converted once at load: this makes
 * that a memory-bound pass). Same rounding (to nearest even) as the scalar
 * code. */
#ifdef MMP_HAVE_X86_DISPATCH
#include <immintrin.h>
#define HAVE_F16C_PATH 1
__attribute__((target("avx,f16c"))) static void h2f_f16c(const uint16_t *s, float *d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
  for (; i < n; i++) d[i] = mmp__half_to_float(s[i]);
}
__attribute__((target("avx,f16c"))) static void f2h_f16c(const float *s, uint16_t *d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) d[i] = mmp__float_to_half(s[i]);
}
static int have_f16c(void) { return (mmp_cpu_features() & MMP_CPU_F16C) != 0; }
#endif

typedef struct copy_ctx {
  iter_t it;
  mmp_dtype_t dt, st;
} copy_ctx_t;

static void copy_rows(int64_t r0, int64_t r1, void *user) {
  copy_ctx_t *c = user;
  const iter_t *it = &c->it;
  int64_t n = it->inner, sd = it->stride[0][it->nd - 1], ss = it->stride[1][it->nd - 1];
  size_t es = it->esize[0];
  for (int64_t r = r0; r < r1; r++) {
    char *p[2];
    iter_row(it, r, p);
    char *d = p[0];
    const char *s = p[1];
    if (c->dt == c->st) {
      if (sd == 1 && ss == 1) {
        memcpy(d, s, (size_t)n * es);
      } else if (es == 4) {
        for (int64_t i = 0; i < n; i++) ((uint32_t *)d)[i * sd] = ((const uint32_t *)s)[i * ss];
      } else if (es == 2) {
        for (int64_t i = 0; i < n; i++) ((uint16_t *)d)[i * sd] = ((const uint16_t *)s)[i * ss];
      } else if (es == 8) {
        for (int64_t i = 0; i < n; i++) ((uint64_t *)d)[i * sd] = ((const uint64_t *)s)[i * ss];
      } else {
        for (int64_t i = 0; i < n; i++) d[i * sd] = s[i * ss];
      }
    } else if (c->dt == MMP_F32 && c->st == MMP_F16) {
#ifdef HAVE_F16C_PATH
      if (sd == 1 && ss == 1 && have_f16c()) {
        h2f_f16c((const uint16_t *)s, (float *)d, n);
        continue;
      }
#endif
      for (int64_t i = 0; i < n; i++) ((float *)d)[i * sd] = mmp__half_to_float(((const uint16_t *)s)[i * ss]);
    } else if (c->dt == MMP_F32 && c->st == MMP_BF16) {
      for (int64_t i = 0; i < n; i++) ((float *)d)[i * sd] = mmp__bf16_to_float(((const uint16_t *)s)[i * ss]);
    } else if (c->dt == MMP_F16 && c->st == MMP_F32) {
#ifdef HAVE_F16C_PATH
      if (sd == 1 && ss == 1 && have_f16c()) {
        f2h_f16c((const float *)s, (uint16_t *)d, n);
        continue;
      }
#endif
      for (int64_t i = 0; i < n; i++) ((uint16_t *)d)[i * sd] = mmp__float_to_half(((const float *)s)[i * ss]);
    } else if (c->dt == MMP_BF16 && c->st == MMP_F32) {
      for (int64_t i = 0; i < n; i++) ((uint16_t *)d)[i * sd] = mmp__float_to_bf16(((const float *)s)[i * ss]);
    } else {
      size_t ess = it->esize[1];
      for (int64_t i = 0; i < n; i++)
        st_any(c->dt, d + i * sd * (int64_t)es, ld_any(c->st, s + i * ss * (int64_t)ess));
    }
  }
}

/* A permuting copy (dst contiguous along its last dim, src along another
 * one, e.g. NCHW -> NHWC) walked element by element thrashes the cache on
 * the strided side; it is done as a batch of 2-D transposes in 32 x 32
 * tiles instead. */
#define TILE 64  /* along K: src-contiguous */
#define TILE_N 8 /* along N: src rows at a large power-of-two stride share a cache set; few per tile */
typedef struct tr_ctx {
  char *d;
  const char *s;
  size_t es;
  int nb;                                    /* batch dims */
  int64_t bshape[MMP_MAX_DIMS], bsd[MMP_MAX_DIMS], bss[MMP_MAX_DIMS];
  int64_t K, N;                              /* tile plane: K (src-contiguous) x N (dst-contiguous) */
  int64_t dk, sn;                            /* dst stride along K, src stride along N */
  int64_t kblocks;
} tr_ctx_t;

static void tr_range(int64_t t0, int64_t t1, void *user) {
  const tr_ctx_t *c = user;
  for (int64_t t = t0; t < t1; t++) {
    int64_t b = t / c->kblocks, k0 = (t % c->kblocks) * TILE, k1 = k0 + TILE < c->K ? k0 + TILE : c->K;
    int64_t od = 0, os = 0, r = b;
    for (int d = c->nb - 1; d >= 0; d--) {
      int64_t i = r % c->bshape[d];
      r /= c->bshape[d];
      od += i * c->bsd[d];
      os += i * c->bss[d];
    }
    for (int64_t n0 = 0; n0 < c->N; n0 += TILE_N) {
      int64_t n1 = n0 + TILE_N < c->N ? n0 + TILE_N : c->N;
      if (c->es == 4) {
        float *d = (float *)c->d + od;
        const float *s = (const float *)c->s + os;
        for (int64_t k = k0; k < k1; k++)
          for (int64_t n = n0; n < n1; n++) d[k * c->dk + n] = s[k + n * c->sn];
      } else {
        for (int64_t k = k0; k < k1; k++)
          for (int64_t n = n0; n < n1; n++)
            memcpy(c->d + (od + k * c->dk + n) * (int64_t)c->es, c->s + (os + k + n * c->sn) * (int64_t)c->es, c->es);
      }
    }
  }
}

static bool try_transpose_copy(const iter_t *it, mmp_dtype_t dt, mmp_dtype_t st) {
  int nd = it->nd, in = nd - 1, k = -1;
  if (dt != st || nd < 2 || it->stride[0][in] != 1 || it->stride[1][in] == 1 || it->shape[in] < 8) return false;
  for (int d = 0; d < in; d++)
    if (it->stride[1][d] == 1 && it->shape[d] >= 8) k = d;
  if (k < 0) return false;
  tr_ctx_t c;
  c.d = it->base[0];
  c.s = it->base[1];
  c.es = it->esize[0];
  c.nb = 0;
  int64_t batch = 1;
  for (int d = 0; d < in; d++) {
    if (d == k) continue;
    c.bshape[c.nb] = it->shape[d];
    c.bsd[c.nb] = it->stride[0][d];
    c.bss[c.nb] = it->stride[1][d];
    batch *= it->shape[d];
    c.nb++;
  }
  c.K = it->shape[k];
  c.N = it->shape[in];
  c.dk = it->stride[0][k];
  c.sn = it->stride[1][in];
  c.kblocks = (c.K + TILE - 1) / TILE;
  par_range(batch * c.kblocks, TILE * c.N, tr_range, &c);
  return true;
}

static int op_copy(const mmp_tensor_t *src, mmp_tensor_t *dst) {
  if (mmp_tensor_numel(dst) == 0) return 0;
  copy_ctx_t c;
  const mmp_tensor_t *ts[2] = {dst, src};
  iter_init(&c.it, 2, ts);
  c.dt = dst->dtype;
  c.st = src->dtype;
  if (try_transpose_copy(&c.it, c.dt, c.st)) return 0;
  par_range(c.it.rows, c.it.inner, copy_rows, &c);
  return 0;
}

typedef struct fill_ctx {
  iter_t it;
  mmp_dtype_t dt;
  _Alignas(8) unsigned char val[8];
} fill_ctx_t;

static void fill_rows(int64_t r0, int64_t r1, void *user) {
  fill_ctx_t *c = user;
  const iter_t *it = &c->it;
  int64_t n = it->inner, sd = it->stride[0][it->nd - 1];
  size_t es = it->esize[0];
  for (int64_t r = r0; r < r1; r++) {
    char *p[1];
    iter_row(it, r, p);
    if (es == 4 && sd == 1) {
      uint32_t v;
      memcpy(&v, c->val, 4);
      for (int64_t i = 0; i < n; i++) ((uint32_t *)p[0])[i] = v;
    } else {
      for (int64_t i = 0; i < n; i++) memcpy(p[0] + i * sd * (int64_t)es, c->val, es);
    }
  }
}

static int op_fill(mmp_tensor_t *dst, double v) {
  if (mmp_tensor_numel(dst) == 0) return 0;
  fill_ctx_t c;
  const mmp_tensor_t *ts[1] = {dst};
  iter_init(&c.it, 1, ts);
  c.dt = dst->dtype;
  st_any(dst->dtype, (char *)c.val, v);
  par_range(c.it.rows, c.it.inner, fill_rows, &c);
  return 0;
}

/* ===================================================== binary elementwise */

typedef struct bin_ctx {
  iter_t it;
  mmp_op_t op;
  float alpha, beta;
} bin_ctx_t;

static void bin_rows(int64_t r0, int64_t r1, void *user) {
  bin_ctx_t *c = user;
  const iter_t *it = &c->it;
  int64_t n = it->inner, sd = it->stride[0][it->nd - 1], sa = it->stride[1][it->nd - 1],
          sb = it->stride[2][it->nd - 1];
  float al = c->alpha, be = c->beta;
  for (int64_t r = r0; r < r1; r++) {
    char *p[3];
    iter_row(it, r, p);
    float *d = (float *)p[0];
    const float *a = (const float *)p[1], *b = (const float *)p[2];
    if (sd == 1 && sa == 1 && sb == 1) {
      switch (c->op) {
      case MMP_OP_ADD: for (int64_t i = 0; i < n; i++) d[i] = a[i] + b[i]; break;
      case MMP_OP_SUB: for (int64_t i = 0; i < n; i++) d[i] = a[i] - b[i]; break;
      case MMP_OP_MUL: for (int64_t i = 0; i < n; i++) d[i] = a[i] * b[i]; break;
      case MMP_OP_DIV: for (int64_t i = 0; i < n; i++) d[i] = a[i] / b[i]; break;
      default: for (int64_t i = 0; i < n; i++) d[i] = al * a[i] + be * b[i]; break;
      }
    } else {
      switch (c->op) {
      case MMP_OP_ADD: for (int64_t i = 0; i < n; i++) d[i * sd] = a[i * sa] + b[i * sb]; break;
      case MMP_OP_SUB: for (int64_t i = 0; i < n; i++) d[i * sd] = a[i * sa] - b[i * sb]; break;
      case MMP_OP_MUL: for (int64_t i = 0; i < n; i++) d[i * sd] = a[i * sa] * b[i * sb]; break;
      case MMP_OP_DIV: for (int64_t i = 0; i < n; i++) d[i * sd] = a[i * sa] / b[i * sb]; break;
      default: for (int64_t i = 0; i < n; i++) d[i * sd] = al * a[i * sa] + be * b[i * sb]; break;
      }
    }
  }
}

static int op_binary(mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *a, const mmp_tensor_t *b,
                     mmp_tensor_t *dst) {
  if (mmp_tensor_numel(dst) == 0) return 0;
  bin_ctx_t c;
  const mmp_tensor_t *ts[3] = {dst, a, b};
  iter_init(&c.it, 3, ts);
  c.op = op;
  c.alpha = (float)p->f[0];
  c.beta = (float)p->f[1];
  par_range(c.it.rows, c.it.inner, bin_rows, &c);
  return 0;
}

/* ====================================================== unary (contiguous) */

typedef struct un_ctx {
  mmp_op_t op;
  const float *x;
  float *y;
  float a, b;
} un_ctx_t;

static void un_range(int64_t s, int64_t e, void *user) {
  un_ctx_t *c = user;
  const float *x = c->x + s;
  float *y = c->y + s;
  int64_t n = e - s;
  float a = c->a, b = c->b;
  switch (c->op) {
  case MMP_OP_SCALE: for (int64_t i = 0; i < n; i++) y[i] = a * x[i] + b; break;
  case MMP_OP_CLAMP:
    for (int64_t i = 0; i < n; i++) {
      float v = x[i];
      v = v < a ? a : v; /* NaN stays NaN, as in torch */
      y[i] = v > b ? b : v;
    }
    break;
  case MMP_OP_SQRT: for (int64_t i = 0; i < n; i++) y[i] = sqrtf(x[i]); break;
  case MMP_OP_EXP: for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]); break;
  case MMP_OP_ABS: for (int64_t i = 0; i < n; i++) y[i] = fabsf(x[i]); break;
  case MMP_OP_SIGMOID: for (int64_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i])); break;
  case MMP_OP_TANH: for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]); break;
  case MMP_OP_RELU: for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : (x[i] == x[i] ? 0.0f : x[i]); break;
  case MMP_OP_SILU: mmp_cpu_silu(x, y, n); break;
  case MMP_OP_GELU: mmp_cpu_gelu(x, y, n); break;
  case MMP_OP_GELU_TANH: mmp_cpu_gelu_tanh(x, y, n); break;
  case MMP_OP_QUICK_GELU: mmp_cpu_quick_gelu(x, y, n); break;
  default: break;
  }
}

static int op_unary(mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *x, mmp_tensor_t *dst) {
  int64_t n = mmp_tensor_numel(dst);
  if (n == 0) return 0;
  un_ctx_t c = {op, mmp__ptr(x), mmp__ptr(dst), (float)p->f[0], (float)p->f[1]};
  if (op == MMP_OP_SILU || op == MMP_OP_GELU || op == MMP_OP_GELU_TANH || op == MMP_OP_QUICK_GELU) {
    un_range(0, n, &c); /* the kernels thread themselves */
    return 0;
  }
  par_range(n, 4, un_range, &c);
  return 0;
}

/* ============================================================ reductions */

typedef struct red_ctx {
  mmp_op_t op;
  const mmp_tensor_t *x;
  mmp_tensor_t *y;
  int dim;
} red_ctx_t;

static void red_range(int64_t s, int64_t e, void *user) {
  red_ctx_t *c = user;
  const mmp_tensor_t *x = c->x;
  int nd = x->ndim, dim = c->dim;
  int64_t n = x->shape[dim], sx = x->stride[dim];
  const float *xb = mmp__ptr(x);
  for (int64_t o = s; o < e; o++) {
    /* decompose o over x's dims with dim's extent 1 */
    int64_t r = o, off = 0;
    for (int d = nd - 1; d >= 0; d--) {
      if (d == dim) continue;
      off += (r % x->shape[d]) * x->stride[d];
      r /= x->shape[d];
    }
    const float *p = xb + off;
    if (c->op == MMP_OP_SUM || c->op == MMP_OP_MEAN) {
      double acc = 0;
      for (int64_t i = 0; i < n; i++) acc += p[i * sx];
      if (c->op == MMP_OP_MEAN) acc /= (double)n;
      ((float *)mmp__ptr(c->y))[o] = (float)acc;
    } else if (c->op == MMP_OP_MAX) {
      float m = -INFINITY;
      for (int64_t i = 0; i < n; i++) {
        float v = p[i * sx];
        if (v > m || v != v) m = v;
        if (m != m) break;
      }
      ((float *)mmp__ptr(c->y))[o] = m;
    } else { /* argmax: first index of the max; NaN wins like torch */
      float m = -INFINITY;
      int64_t mi = 0;
      for (int64_t i = 0; i < n; i++) {
        float v = p[i * sx];
        if (v != v) {
          mi = i;
          break;
        }
        if (v > m) {
          m = v;
          mi = i;
        }
      }
      ((int64_t *)mmp__ptr(c->y))[o] = mi;
    }
  }
}

/* x contiguous, viewed as [outer, n, inner] with inner > 1: accumulate whole
 * rows so the inner loop runs over contiguous memory. */
typedef struct red3_ctx {
  mmp_op_t op;
  const float *x;
  float *y;
  int64_t n, inner, iblocks;
} red3_ctx_t;

#define RBLK 256
static void red3_range(int64_t t0, int64_t t1, void *user) {
  const red3_ctx_t *c = user;
  double acc[RBLK];
  float mx[RBLK];
  for (int64_t t = t0; t < t1; t++) {
    int64_t o = t / c->iblocks, i0 = (t % c->iblocks) * RBLK;
    int64_t m = c->inner - i0 < RBLK ? c->inner - i0 : RBLK;
    const float *x = c->x + o * c->n * c->inner + i0;
    float *y = c->y + o * c->inner + i0;
    if (c->op == MMP_OP_MAX) {
      for (int64_t i = 0; i < m; i++) mx[i] = -INFINITY;
      for (int64_t r = 0; r < c->n; r++)
        for (int64_t i = 0; i < m; i++) {
          float v = x[r * c->inner + i];
          if (v > mx[i] || v != v || mx[i] != mx[i]) mx[i] = (mx[i] != mx[i]) ? mx[i] : v;
        }
      memcpy(y, mx, (size_t)m * sizeof(float));
    } else {
      for (int64_t i = 0; i < m; i++) acc[i] = 0;
      for (int64_t r = 0; r < c->n; r++)
        for (int64_t i = 0; i < m; i++) acc[i] += x[r * c->inner + i];
      double div = c->op == MMP_OP_MEAN ? (double)c->n : 1.0;
      for (int64_t i = 0; i < m; i++) y[i] = (float)(acc[i] / div);
    }
  }
}

static int op_reduce(mmp_op_t op, int dim, const mmp_tensor_t *x, mmp_tensor_t *dst) {
  int64_t inner = mmp__numel(x->ndim - dim - 1, x->shape + dim + 1);
  if (op != MMP_OP_ARGMAX && inner > 1 && mmp_tensor_is_contiguous(x)) {
    red3_ctx_t c3 = {op, mmp__ptr(x), mmp__ptr(dst), x->shape[dim], inner, (inner + RBLK - 1) / RBLK};
    int64_t outer = mmp__numel(dim, x->shape);
    par_range(outer * c3.iblocks, RBLK * (c3.n + 1), red3_range, &c3);
    return 0;
  }
  red_ctx_t c = {op, x, dst, dim};
  int64_t n = mmp_tensor_numel(dst);
  par_range(n, x->shape[dim] + 8, red_range, &c);
  return 0;
}

/* ================================================================= matmul */

/* a contiguous copy, for operands whose strides fit no BLAS layout */
static mmp_tensor_t *cpu_contig(mmp_backend_t *be, const mmp_tensor_t *t) {
  (void)be;
  return mmp_clone(t);
}

static int op_matmul(const mmp_tensor_t *a0, const mmp_tensor_t *b0, mmp_tensor_t *dst) {
  int nd = dst->ndim, nb = nd - 2;
  int64_t M = dst->shape[nd - 2], N = dst->shape[nd - 1], K = a0->shape[nd - 1];
  int64_t batch = mmp__numel(nb, dst->shape);
  if (M == 0 || N == 0 || batch == 0) return 0;
  if (K == 0) return op_fill(dst, 0.0);
  mmp__gemm_operand_t o[2];
  int rc = mmp__gemm_operands(a0, b0, nb, batch, cpu_contig, NULL, o);
  if (rc < 0) return rc;
  rc = mmp_cpu_sgemm(batch, o[0].trans, o[1].trans, M, N, K, 1.0f, mmp__ptr(o[0].t), o[0].ld, o[0].bstride,
                     mmp__ptr(o[1].t), o[1].ld, o[1].bstride, 0.0f, mmp__ptr(dst), N, M * N);
  mmp__gemm_operands_free(o);
  return rc;
}

static int op_linear(const mmp_tensor_t *x, const mmp_tensor_t *w, const mmp_tensor_t *bias, int cdt, mmp_tensor_t *dst) {
  int64_t rows = x->shape[0], in = x->shape[1], out = w->shape[0];
  float *y = mmp__ptr(dst);
  if (rows == 0 || out == 0) return 0;
  float beta = 0.0f;
  if (bias) {
    const float *b = mmp__ptr(bias);
    for (int64_t r = 0; r < rows; r++) memcpy(y + r * out, b, (size_t)out * sizeof(float));
    beta = 1.0f;
  }
  if (in == 0) return bias ? 0 : op_fill(dst, 0.0);
  /* an f16/bf16 weight is converted while the GEMM packs its panels */
  return mmp_cpu_gemm(1, false, true, rows, out, in, 1.0f, mmp__ptr(x), MMP_F32, in, 0, mmp__ptr(w), w->dtype, in,
                      0, beta, y, out, 0, cdt);
}

/* ============================================================ nn helpers */

static int op_softmax(int dim, const mmp_tensor_t *x, mmp_tensor_t *dst) {
  int nd = x->ndim;
  int64_t D = x->shape[dim];
  int64_t rows = D ? mmp_tensor_numel(x) / D : 0;
  if (rows == 0 || D == 0) return 0;
  if (dim == nd - 1 && mmp_tensor_is_contiguous(x)) return mmp_cpu_softmax(mmp__ptr(x), rows, D, mmp__ptr(dst));
  /* move @dim last, compute there, move back */
  mmp_tensor_t *xt = mmp_transpose((mmp_tensor_t *)x, dim, nd - 1);
  mmp_tensor_t *xc = mmp_clone(xt);
  mmp_tensor_t *yc = xc ? mmp_tensor_new(mmp__backend_cpu(), MMP_F32, xc->ndim, xc->shape) : NULL;
  int rc = yc ? mmp_cpu_softmax(mmp__ptr(xc), rows, D, mmp__ptr(yc)) : mmp_error_code();
  if (rc == 0) {
    mmp_tensor_t *yb = mmp_transpose(yc, dim, nd - 1);
    rc = yb ? op_copy(yb, dst) : mmp_error_code();
    mmp_tensor_unref(yb);
  }
  mmp_tensor_unref(xt);
  mmp_tensor_unref(xc);
  mmp_tensor_unref(yc);
  return rc;
}

typedef struct up_ctx {
  const float *x;
  float *y;
  int64_t H, W;
} up_ctx_t;

static void up_range(int64_t s, int64_t e, void *user) {
  up_ctx_t *c = user;
  int64_t H = c->H, W = c->W;
  for (int64_t p = s; p < e; p++) { /* one (n, c) plane */
    const float *x = c->x + p * H * W;
    float *y = c->y + p * 4 * H * W;
    for (int64_t h = 0; h < H; h++) {
      float *r0 = y + (2 * h) * 2 * W;
      for (int64_t w = 0; w < W; w++) r0[2 * w] = r0[2 * w + 1] = x[h * W + w];
      memcpy(r0 + 2 * W, r0, (size_t)(2 * W) * sizeof(float));
    }
  }
}

typedef struct pool_ctx {
  const float *x;
  float *y;
  int64_t H, W, OH, OW;
  int k, s, p;
  bool is_max;
  bool exclude_pad; /* avg: divide by the in-image count (count_include_pad=False) */
} pool_ctx_t;

static void pool_range(int64_t s0, int64_t e0, void *user) {
  pool_ctx_t *c = user;
  /* the separable kernel (core/cpu/pool2d.c); the direct loop below only
   * where its scratch rows cannot be had */
  float *rows = c->p <= c->k / 2 ? malloc((size_t)mmp_cpu_pool2d_scratch(c->H, c->W, c->OW) * sizeof *rows) : NULL;
  if (rows) {
    mmp_cpu_pool2d(c->x + s0 * c->H * c->W, c->y + s0 * c->OH * c->OW, e0 - s0, c->H, c->W, c->OH, c->OW, c->k,
                   c->s, c->p, c->is_max, c->exclude_pad, rows);
    free(rows);
    return;
  }
  for (int64_t pl = s0; pl < e0; pl++) {
    const float *x = c->x + pl * c->H * c->W;
    float *y = c->y + pl * c->OH * c->OW;
    for (int64_t oh = 0; oh < c->OH; oh++)
      for (int64_t ow = 0; ow < c->OW; ow++) {
        int64_t h0 = oh * c->s - c->p, w0 = ow * c->s - c->p;
        float acc = c->is_max ? -INFINITY : 0.0f;
        int64_t count = 0;
        for (int64_t i = 0; i < c->k; i++) {
          int64_t h = h0 + i;
          if (h < 0 || h >= c->H) continue;
          for (int64_t j = 0; j < c->k; j++) {
            int64_t w = w0 + j;
            if (w < 0 || w >= c->W) continue;
            float v = x[h * c->W + w];
            count++;
            if (c->is_max) {
              if (v > acc || v != v) acc = v;
            } else {
              acc += v;
            }
          }
        }
        int64_t div = c->exclude_pad ? count : (int64_t)c->k * c->k;
        y[oh * c->OW + ow] = c->is_max ? acc : acc / (float)div;
      }
  }
}

/* Bilinear resize as torch's upsample_bilinear2d on CPU: per output
 * coordinate a source index (scale = in / out in float, half-pixel centres
 * clamped at 0 without align_corners), its floor, the next index (clamped at
 * the last row/column) and the weight of the second. */
typedef struct bil_ctx {
  const float *x;
  float *y;
  int64_t H, W, OH, OW;
  const int64_t *h0, *h1, *w0, *w1;
  const float *hl, *wl;
} bil_ctx_t;

static void bil_axis(int64_t in, int64_t out, bool align, int64_t *i0, int64_t *i1, float *lam) {
  float scale = align ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
  for (int64_t o = 0; o < out; o++) {
    /* torch: scale * (dst + 0.5) - 0.5 evaluated in double (the 0.5 literals), then float */
    float src = align ? scale * (float)o : (float)((double)scale * ((double)o + 0.5) - 0.5);
    if (src < 0) src = 0;
    int64_t a = (int64_t)src;
    if (a > in - 1) a = in - 1;
    i0[o] = a;
    i1[o] = a < in - 1 ? a + 1 : a;
    lam[o] = src - (float)a;
  }
}

static void bil_range(int64_t s0, int64_t e0, void *user) {
  bil_ctx_t *c = user;
  for (int64_t pl = s0; pl < e0; pl++) {
    const float *x = c->x + pl * c->H * c->W;
    float *y = c->y + pl * c->OH * c->OW;
    for (int64_t oh = 0; oh < c->OH; oh++) {
      const float *r0 = x + c->h0[oh] * c->W, *r1 = x + c->h1[oh] * c->W;
      float h1l = c->hl[oh], h0l = 1.0f - h1l;
      for (int64_t ow = 0; ow < c->OW; ow++) {
        float w1l = c->wl[ow], w0l = 1.0f - w1l;
        int64_t a = c->w0[ow], b = c->w1[ow];
        y[oh * c->OW + ow] = h0l * (w0l * r0[a] + w1l * r0[b]) + h1l * (w0l * r1[a] + w1l * r1[b]);
      }
    }
  }
}

static int op_resize_bilinear(const mmp_tensor_t *x, bool align, mmp_tensor_t *dst) {
  int64_t H = x->shape[2], W = x->shape[3], OH = dst->shape[2], OW = dst->shape[3];
  if (mmp_tensor_numel(dst) == 0) return 0;
  size_t n = (size_t)(OH + OW);
  int64_t *idx = malloc(2 * n * sizeof *idx);
  float *lam = malloc(n * sizeof *lam);
  if (!idx || !lam) {
    free(idx);
    free(lam);
    return mmp_error_set(MMP_ENOMEM, "resize_bilinear: out of memory");
  }
  int64_t *h0 = idx, *h1 = idx + OH, *w0 = idx + 2 * OH, *w1 = idx + 2 * OH + OW;
  bil_axis(H, OH, align, h0, h1, lam);
  bil_axis(W, OW, align, w0, w1, lam + OH);
  bil_ctx_t c = {mmp__ptr(x), mmp__ptr(dst), H, W, OH, OW, h0, h1, w0, w1, lam, lam + OH};
  par_range(x->shape[0] * x->shape[1], 4 * OH * OW, bil_range, &c);
  free(idx);
  free(lam);
  return 0;
}

static int op_embedding(const mmp_tensor_t *table, const mmp_tensor_t *ids, mmp_tensor_t *dst) {
  int64_t V = table->shape[0], D = table->shape[1], n = mmp_tensor_numel(ids);
  float *y = mmp__ptr(dst);
  for (int64_t i = 0; i < n; i++) {
    int64_t id = ids->dtype == MMP_I64 ? ((const int64_t *)mmp__ptr(ids))[i] : ((const int32_t *)mmp__ptr(ids))[i];
    if (id < 0 || id >= V)
      return mmp_error_set(MMP_EINVAL, "embedding: id %lld at position %lld is outside the table of %lld rows",
                           (long long)id, (long long)i, (long long)V);
    if (table->dtype == MMP_F32) {
      memcpy(y + i * D, (const float *)mmp__ptr(table) + id * D, (size_t)D * sizeof(float));
      continue;
    }
    /* a half-precision table (weights_dtype): the row widened to f32 */
    const uint16_t *row = (const uint16_t *)mmp__ptr(table) + id * D;
    for (int64_t d = 0; d < D; d++)
      y[i * D + d] = table->dtype == MMP_BF16 ? mmp__bf16_to_float(row[d]) : mmp__half_to_float(row[d]);
  }
  return 0;
}

/* diffusers get_timestep_embedding, step for step in float32. */
static int op_timestep_embedding(const mmp_op_params_t *p, const mmp_tensor_t *t, mmp_tensor_t *dst) {
  int64_t N = dst->shape[0], dim = dst->shape[1], half = dim / 2;
  bool flip = p->i[0] != 0;
  float shift = (float)p->f[0], scale = (float)p->f[1];
  float lmp = (float)(-log(p->f[2]));
  float *y = mmp__ptr(dst);
  for (int64_t n = 0; n < N; n++) {
    float tv = (float)ld_any(t->dtype, (const char *)mmp__ptr(t) + n * t->stride[0] * (int64_t)mmp_dtype_size(t->dtype));
    float *row = y + n * dim;
    for (int64_t i = 0; i < half; i++) {
      float ex = lmp * (float)i;
      ex = ex / ((float)half - shift);
      float f = expf(ex);
      float arg = tv * f;
      arg = scale * arg;
      float sv = sinf(arg), cv = cosf(arg);
      row[flip ? half + i : i] = sv;
      row[flip ? i : half + i] = cv;
    }
    if (dim % 2) row[dim - 1] = 0.0f;
  }
  return 0;
}

/* ============================================================== dispatch */

static bool is_f32(const mmp_tensor_t *t) { return t->dtype == MMP_F32; }

static bool cpu_supports(mmp_backend_t *be, mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                         const mmp_tensor_t *dst) {
  (void)be;
  if (op >= MMP_OP_ACT_BACKWARD && op <= MMP_OP_ADAMW) return mmp__cpu_supports_backward(op, srcs, nsrc, dst);
  switch (op) {
  case MMP_OP_COPY:
  case MMP_OP_FILL: return true;
  case MMP_OP_ARGMAX: return nsrc == 1 && is_f32(srcs[0]) && dst->dtype == MMP_I64;
  case MMP_OP_EMBEDDING:
    return nsrc == 2 &&
           (is_f32(srcs[0]) || srcs[0]->dtype == MMP_F16 || srcs[0]->dtype == MMP_BF16) &&
           mmp_tensor_is_contiguous(srcs[0]) && (srcs[1]->dtype == MMP_I64 || srcs[1]->dtype == MMP_I32) &&
           mmp_tensor_is_contiguous(srcs[1]) && is_f32(dst);
  case MMP_OP_TIMESTEP_EMBEDDING: return nsrc == 1 && srcs[0]->dtype != MMP_BOOL && is_f32(dst);
  case MMP_OP_LINEAR:
  case MMP_OP_CONV2D: /* weights (srcs[1]) may be f16/bf16: converted while packing */
    if (nsrc >= 2 && srcs[1] && (srcs[1]->dtype == MMP_F16 || srcs[1]->dtype == MMP_BF16)) {
      if (!is_f32(dst) || !is_f32(srcs[0]) || (nsrc > 2 && srcs[2] && !is_f32(srcs[2]))) return false;
      return true;
    }
    break;
  case MMP_OP_ATTENTION:
    if (nsrc == 4 && srcs[3] && srcs[3]->dtype != MMP_U8 && srcs[3]->dtype != MMP_BOOL) return false;
    if (nsrc > 3) nsrc = 3;
    break;
  default: break;
  }
  if (!is_f32(dst)) return false;
  for (int i = 0; i < nsrc; i++)
    if (srcs[i] && !is_f32(srcs[i])) return false;
  return true;
}

static int cpu_compute(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p, const mmp_tensor_t *const *s,
                       int nsrc, mmp_tensor_t *dst) {
  (void)be;
  int bad = mmp__backend_check("cpu", op, s, nsrc, dst, false);
  if (bad < 0) return bad;
  switch (op) {
  case MMP_OP_COPY: return op_copy(s[0], dst);
  case MMP_OP_FILL: return op_fill(dst, p->f[0]);
  case MMP_OP_ADD:
  case MMP_OP_SUB:
  case MMP_OP_MUL:
  case MMP_OP_DIV:
  case MMP_OP_AXPBY: return op_binary(op, p, s[0], s[1], dst);
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
    if (mmp_tensor_is_contiguous(s[0])) return op_unary(op, p, s[0], dst);
    int rc = op_copy(s[0], dst); /* gather into dst, then in place */
    return rc < 0 ? rc : op_unary(op, p, dst, dst);
  }
  case MMP_OP_GEGLU: {
    int64_t D = dst->shape[dst->ndim - 1], rows = D ? mmp_tensor_numel(dst) / D : 0;
    if (rows) mmp_cpu_geglu(mmp__ptr(s[0]), mmp__ptr(dst), rows, D);
    return 0;
  }
  case MMP_OP_SUM:
  case MMP_OP_MEAN:
  case MMP_OP_MAX: return op_reduce(op, (int)p->i[0], s[0], dst);
  case MMP_OP_ARGMAX: return op_reduce(op, s[0]->ndim - 1, s[0], dst);
  case MMP_OP_MATMUL: return op_matmul(s[0], s[1], dst);
  case MMP_OP_LINEAR: return op_linear(s[0], s[1], nsrc > 2 ? s[2] : NULL, p && p->i[0] == MMP_BF16 ? MMP_BF16 : MMP_F32, dst);
  case MMP_OP_CONV2D: {
    const mmp_tensor_t *x = s[0], *w = s[1], *b = nsrc > 2 ? s[2] : NULL;
    if (mmp_tensor_numel(dst) == 0) return 0;
    int64_t cdt = p->i[7] & 255, act = p->i[7] >> 8;
    if (act != 0 && act != MMP_OP_RELU)
      return mmp_error_set(MMP_EINVAL, "conv2d: fused activation %lld (want none or relu)", (long long)act);
    return mmp_cpu_conv2d_act(mmp__ptr(x), x->shape[0], x->shape[1], x->shape[2], x->shape[3], mmp__ptr(w),
                              w->dtype, w->shape[0], w->shape[2], w->shape[3], b ? mmp__ptr(b) : NULL, (int)p->i[0],
                              (int)p->i[1], (int)p->i[2], (int)p->i[3], (int)p->i[4], (int)p->i[5], (int)p->i[6],
                              act == MMP_OP_RELU ? MMP_CPU_ACT_RELU : -1, mmp__ptr(dst),
                              cdt == MMP_BF16 ? MMP_BF16 : MMP_F32);
  }
  case MMP_OP_GROUP_NORM:
  case MMP_OP_GROUP_NORM_SILU: {
    const mmp_tensor_t *x = s[0];
    int64_t N = x->shape[0], C = x->shape[1], S = (N * C) != 0 ? mmp_tensor_numel(x) / (N * C) : 0;
    if (mmp_tensor_numel(x) == 0) return 0;
    return mmp_cpu_group_norm_act(mmp__ptr(x), N, C, S, (int)p->i[0],
                                  nsrc > 1 && s[1] ? mmp__ptr(s[1]) : NULL,
                                  nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL, (float)p->f[0],
                                  op == MMP_OP_GROUP_NORM_SILU, mmp__ptr(dst));
  }
  case MMP_OP_LAYER_NORM: {
    const mmp_tensor_t *x = s[0];
    int64_t D = x->shape[x->ndim - 1], rows = D ? mmp_tensor_numel(x) / D : 0;
    if (rows == 0) return 0;
    return mmp_cpu_layer_norm(mmp__ptr(x), rows, D, nsrc > 1 && s[1] ? mmp__ptr(s[1]) : NULL,
                              nsrc > 2 && s[2] ? mmp__ptr(s[2]) : NULL, (float)p->f[0], mmp__ptr(dst));
  }
  case MMP_OP_SOFTMAX: return op_softmax((int)p->i[0], s[0], dst);
  case MMP_OP_ATTENTION: {
    const mmp_tensor_t *q = s[0], *k = s[1], *v = s[2], *m = nsrc > 3 ? s[3] : NULL;
    if (mmp_tensor_numel(dst) == 0) return 0;
    return mmp_cpu_attention(mmp__ptr(q), mmp__ptr(k), mmp__ptr(v), q->shape[0], q->shape[1], q->shape[2],
                             k->shape[2], q->shape[3], v->shape[3], m ? mmp__ptr(m) : NULL, p->i[0] != 0,
                             (float)p->f[0], mmp__ptr(dst));
  }
  case MMP_OP_UPSAMPLE_NEAREST2X: {
    const mmp_tensor_t *x = s[0];
    up_ctx_t c = {mmp__ptr(x), mmp__ptr(dst), x->shape[2], x->shape[3]};
    par_range(x->shape[0] * x->shape[1], 4 * c.H * c.W, up_range, &c);
    return 0;
  }
  case MMP_OP_AVG_POOL2D:
  case MMP_OP_MAX_POOL2D: {
    const mmp_tensor_t *x = s[0];
    pool_ctx_t c = {mmp__ptr(x), mmp__ptr(dst), x->shape[2], x->shape[3], dst->shape[2], dst->shape[3],
                    (int)p->i[0], (int)p->i[1], (int)p->i[2], op == MMP_OP_MAX_POOL2D, p->i[3] != 0};
    par_range(x->shape[0] * x->shape[1], c.OH * c.OW * c.k * c.k, pool_range, &c);
    return 0;
  }
  case MMP_OP_EMBEDDING: return op_embedding(s[0], s[1], dst);
  case MMP_OP_TIMESTEP_EMBEDDING: return op_timestep_embedding(p, s[0], dst);
  case MMP_OP_RESIZE_BILINEAR: return op_resize_bilinear(s[0], p->i[0] != 0, dst);
  case MMP_OP_ACT_BACKWARD:
  case MMP_OP_GEGLU_BACKWARD:
  case MMP_OP_LAYER_NORM_BACKWARD:
  case MMP_OP_GROUP_NORM_BACKWARD:
  case MMP_OP_EMBEDDING_BACKWARD:
  case MMP_OP_CONV2D_BACKWARD_INPUT:
  case MMP_OP_CONV2D_BACKWARD_WEIGHT:
  case MMP_OP_ATTENTION_BACKWARD:
  case MMP_OP_ADAMW: return mmp__cpu_compute_backward(op, p, s, nsrc, dst);
  default: return mmp_error_set(MMP_EUNSUPPORTED, "cpu: op %s not implemented", mmp_op_name(op));
  }
}

static void cpu_set_threads(mmp_backend_t *be, int n) {
  (void)be;
  (void)n; /* the core pool is set by mmp_threads_set itself */
}

static const mmp_backend_ops_t cpu_ops = {
    .struct_size = sizeof(mmp_backend_ops_t),
    .name = "cpu",
    .device = MMP_DEVICE_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_to_host = cpu_copy,
    .copy_from_host = cpu_copy,
    .supports_op = cpu_supports,
    .compute = cpu_compute,
    .synchronize = NULL,
    .pool_stats = cpu_pool_stats,
    .pool_trim = cpu_pool_trim,
    .set_threads = cpu_set_threads,
};

static mmp_backend_t cpu_backend = {&cpu_ops, NULL};
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_register(void) { mmp_backend_register(&cpu_backend); }

mmp_backend_t *mmp__backend_cpu(void) {
  pthread_once(&cpu_once, cpu_register);
  return &cpu_backend;
}
