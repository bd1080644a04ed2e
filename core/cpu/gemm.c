/* core/cpu/gemm.c - sgemm: ISA dispatch, the portable kernel, blocking and threading. */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/gemm.h"
#include "core/cpu/kernels.h"
#include "core/tensor_impl.h" /* scalar f16/bf16 conversions */
#include "mmpipe/error.h"

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

/* ---------------------------------------------------------------- ISA */

static atomic_int g_isa = -1;  /* -1: not decided yet */
static atomic_int g_blas = -1; /* -1: not decided yet */

static int isa_supported(int isa) {
  if (isa == MMP_CPU_ISA_GENERIC) return 1;
#ifdef MMP_HAVE_X86_DISPATCH
  if (isa == MMP_CPU_ISA_AVX512) return (mmp_cpu_features() & MMP_CPU_AVX512) != 0;
  if (isa == MMP_CPU_ISA_AVX512_BF16) return (mmp_cpu_features() & MMP_CPU_AVX512BF16) != 0;
#endif
  return 0;
}

static int isa_best(void) {
  if (isa_supported(MMP_CPU_ISA_AVX512_BF16)) return MMP_CPU_ISA_AVX512_BF16;
  if (isa_supported(MMP_CPU_ISA_AVX512)) return MMP_CPU_ISA_AVX512;
  return MMP_CPU_ISA_GENERIC;
}

int mmp_cpu_set_isa(int isa) {
  int v;
  if (isa == MMP_CPU_ISA_AUTO) {
    /* the bf16 dot products only serve products whose compute dtype is
     * bf16 (asked for per weight), so the best ISA is the default; the
     * variable only narrows the choice (tests, benchmarks) */
    const char *e = getenv("MMPIPE_CPU_ISA");
    v = isa_best();
    if (e && strcmp(e, "generic") == 0)
      v = MMP_CPU_ISA_GENERIC;
    else if (e && strcmp(e, "avx512") == 0 && v > MMP_CPU_ISA_AVX512)
      v = MMP_CPU_ISA_AVX512;
  } else {
    v = isa_supported(isa) ? isa : isa_best();
    if (v > isa) v = isa; /* never above what was asked */
    while (v > MMP_CPU_ISA_GENERIC && !isa_supported(v)) v--;
  }
  atomic_store(&g_isa, v);
  return v;
}

int mmp_cpu_isa(void) {
  int v = atomic_load(&g_isa);
  return v >= 0 ? v : mmp_cpu_set_isa(MMP_CPU_ISA_AUTO);
}

int mmp_cpu_set_openblas(int use) {
#ifdef HAVE_OPENBLAS
  if (use < 0) {
    const char *e = getenv("MMPIPE_CPU_BLAS");
    if (e && strcmp(e, "openblas") == 0)
      use = 1;
    else if (e && strcmp(e, "builtin") == 0)
      use = 0;
    else
      use = -1;
  }
  atomic_store(&g_blas, use < 0 ? 2 : use);
  return use < 0 ? 2 : use;
#else
  (void)use;
  atomic_store(&g_blas, 0);
  return 0;
#endif
}

/* 0: built-in kernels, 1: OpenBLAS, 2: auto (OpenBLAS only without AVX-512) */
static int blas_mode(void) {
  int v = atomic_load(&g_blas);
  return v >= 0 ? v : mmp_cpu_set_openblas(-1);
}

const mmp_gemm_kernel_t *mmp_gemm_kernel(void) {
#ifdef MMP_HAVE_X86_DISPATCH
  if (mmp_cpu_isa() >= MMP_CPU_ISA_AVX512) return &mmp_gemm_kernel_avx512;
#endif
  return &mmp_gemm_kernel_generic;
}

const mmp_gemm_kernel_t *mmp_gemm_kernel_for(int cdt) {
  if (cdt != MMP_BF16) return mmp_gemm_kernel();
#ifdef MMP_HAVE_X86_DISPATCH
  int isa = mmp_cpu_isa();
  if (isa == MMP_CPU_ISA_AVX512_BF16) return &mmp_gemm_kernel_avx512_bf16;
  if (isa >= MMP_CPU_ISA_AVX512) return &mmp_gemm_kernel_avx512_bf16round;
#endif
  return &mmp_gemm_kernel_generic_bf16round;
}

float *mmp_cpu_alloc(int64_t nfloats) {
  if (nfloats <= 0) nfloats = 1;
  size_t bytes = ((size_t)nfloats * sizeof(float) + 63) & ~(size_t)63;
  return aligned_alloc(64, bytes);
}

/* ------------------------------------------------ per-thread scratch */

#define SCRATCH_CACHE_MAX ((int64_t)32 << 20) /* bytes kept per slot */

typedef struct scratch {
  float *p[MMP_SCRATCH_SLOTS];
  int64_t n[MMP_SCRATCH_SLOTS];
  struct scratch *prev, *next; /* every thread's, for the exit-time release */
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static scratch_t *scratch_all;
static bool scratch_key_ok;

static void scratch_release(scratch_t *s) {
  for (int i = 0; i < MMP_SCRATCH_SLOTS; ++i) free(s->p[i]);
  free(s);
}

static void scratch_unlink(scratch_t *s) {
  if (s->prev) s->prev->next = s->next;
  else scratch_all = s->next;
  if (s->next) s->next->prev = s->prev;
}

/* a thread ends: its buffers go */
static void scratch_thread_exit(void *v) {
  scratch_t *s = v;
  pthread_mutex_lock(&scratch_lock);
  scratch_unlink(s);
  pthread_mutex_unlock(&scratch_lock);
  scratch_release(s);
}

static void scratch_make_key(void) {
  scratch_key_ok = pthread_key_create(&scratch_key, scratch_thread_exit) == 0;
}

/* the library is unloaded (or the process exits): the threads still alive
 * (the main thread, pool workers) give theirs back too */
__attribute__((destructor)) static void scratch_drain(void) {
  pthread_mutex_lock(&scratch_lock);
  while (scratch_all) {
    scratch_t *s = scratch_all;
    scratch_unlink(s);
    scratch_release(s);
  }
  /* threads still alive must not run the destructor on freed buffers */
  if (scratch_key_ok) pthread_key_delete(scratch_key);
  scratch_key_ok = false;
  pthread_mutex_unlock(&scratch_lock);
}

static scratch_t *scratch_self(void) {
  pthread_once(&scratch_once, scratch_make_key);
  if (!scratch_key_ok) return NULL;
  scratch_t *s = pthread_getspecific(scratch_key);
  if (s) return s;
  if (!(s = calloc(1, sizeof *s))) return NULL;
  if (pthread_setspecific(scratch_key, s) != 0) {
    free(s);
    return NULL;
  }
  pthread_mutex_lock(&scratch_lock);
  s->next = scratch_all;
  if (scratch_all) scratch_all->prev = s;
  scratch_all = s;
  pthread_mutex_unlock(&scratch_lock);
  return s;
}

float *mmp_cpu_scratch(int slot, int64_t nfloats) {
  scratch_t *s = scratch_self();
  if (!s || slot < 0 || slot >= MMP_SCRATCH_SLOTS) return NULL;
  if (nfloats < 1) nfloats = 1;
  if (s->n[slot] < nfloats) {
    free(s->p[slot]);
    s->p[slot] = mmp_cpu_alloc(nfloats);
    s->n[slot] = s->p[slot] ? nfloats : 0;
  }
  return s->p[slot];
}

void mmp_cpu_scratch_done(int slot) {
  pthread_once(&scratch_once, scratch_make_key);
  scratch_t *s = scratch_key_ok ? pthread_getspecific(scratch_key) : NULL;
  if (!s || slot < 0 || slot >= MMP_SCRATCH_SLOTS) return;
  if (s->n[slot] * (int64_t)sizeof(float) > SCRATCH_CACHE_MAX) {
    free(s->p[slot]);
    s->p[slot] = NULL;
    s->n[slot] = 0;
  }
}

/* ------------------------------------------------- portable kernel */

#define GMR 6
#define GNR 16

/* Written so that the compiler vectorises the j loops; the variants let
 * x86 machines without the AVX-512 kernel use AVX2+FMA when they have it
 * (core/cpu/dispatch.h). */
static inline MMP_ALWAYS_INLINE void ukr_generic_body(int64_t kc, const float *restrict ap,
                                                      const float *restrict bp, float *restrict c,
                                                      int64_t ldc, int mr, int nr, float beta) {
  float acc[GMR][GNR];
  memset(acc, 0, sizeof acc);
  for (int64_t k = 0; k < kc; ++k) {
    const float *b = bp + k * GNR;
    const float *a = ap + k * GMR;
    for (int i = 0; i < GMR; ++i) {
      float ai = a[i];
      for (int j = 0; j < GNR; ++j) acc[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    float *ci = c + i * ldc;
    if (beta == 0.0f)
      for (int j = 0; j < nr; ++j) ci[j] = acc[i][j];
    else if (beta == 1.0f)
      for (int j = 0; j < nr; ++j) ci[j] += acc[i][j];
    else
      for (int j = 0; j < nr; ++j) ci[j] = beta * ci[j] + acc[i][j];
  }
}
MMP_VARIANTS_VOID(ukr_generic,
                  (int64_t kc, const float *restrict ap, const float *restrict bp,
                   float *restrict c, int64_t ldc, int mr, int nr, float beta),
                  (kc, ap, bp, c, ldc, mr, nr, beta))

static void pack_a_generic(const float *A, int64_t lda, bool trans, int64_t i0, int64_t mc,
                           int64_t k0, int64_t kc, float alpha, float *ap) {
  for (int64_t p = 0; p < mc; p += GMR) {
    int mr = (int)(mc - p < GMR ? mc - p : GMR);
    for (int64_t k = 0; k < kc; ++k) {
      float *d = ap + k * GMR;
      int i = 0;
      if (trans) {
        const float *s = A + (k0 + k) * lda + i0 + p;
        for (; i < mr; ++i) d[i] = alpha * s[i];
      } else {
        const float *s = A + (i0 + p) * lda + k0 + k;
        for (; i < mr; ++i) d[i] = alpha * s[i * lda];
      }
      for (; i < GMR; ++i) d[i] = 0.0f;
    }
    ap += GMR * kc;
  }
}

static void pack_b_generic(const float *B, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                           int64_t j0, int64_t nc, float *bp) {
  for (int64_t p = 0; p < nc; p += GNR) {
    int nr = (int)(nc - p < GNR ? nc - p : GNR);
    for (int64_t k = 0; k < kc; ++k) {
      float *d = bp + k * GNR;
      int j = 0;
      if (trans) {
        const float *s = B + (j0 + p) * ldb + k0 + k;
        for (; j < nr; ++j) d[j] = s[j * ldb];
      } else {
        const float *s = B + (k0 + k) * ldb + j0 + p;
        for (; j < nr; ++j) d[j] = s[j];
      }
      for (; j < GNR; ++j) d[j] = 0.0f;
    }
    bp += GNR * kc;
  }
}

/* ------------------------------------- half precision to fp32 runs */

/* The portable packers convert contiguous runs, not single elements: they
 * are the kernels of every x86 machine without AVX-512 (whose f16 weights
 * went through the branchy scalar conversion one element at a time, the
 * f16 path then slower than bf16's shift), so a run takes vcvtph2ps where
 * the CPU has it. Every path gives the same bits (a NaN stays a NaN). */
static void half_to_f32_scalar(const uint16_t *s, int dt, int64_t n, float *d) {
  if (dt == MMP_BF16)
    for (int64_t i = 0; i < n; ++i) d[i] = mmp__bf16_to_float(s[i]);
  else
    for (int64_t i = 0; i < n; ++i) d[i] = mmp__half_to_float(s[i]);
}

#ifdef MMP_HAVE_X86_DISPATCH
#include <immintrin.h>
/* F16C (AVX machines): 8 f16 per vcvtph2ps, the tail through a padded
 * copy; 8 bf16 by interleaving them above 16 zero bits */
__attribute__((target("avx,f16c"))) static void half_to_f32_f16c(const uint16_t *s, int dt, int64_t n, float *d) {
  int64_t i = 0;
  if (dt == MMP_BF16) {
    const __m128i z = _mm_setzero_si128();
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128((const __m128i *)(s + i));
      _mm_storeu_si128((__m128i *)(d + i), _mm_unpacklo_epi16(z, h));
      _mm_storeu_si128((__m128i *)(d + i + 4), _mm_unpackhi_epi16(z, h));
    }
    half_to_f32_scalar(s + i, dt, n - i, d + i);
    return;
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
  if (i < n) {
    uint16_t h[8] = {0};
    float f[8];
    memcpy(h, s + i, (size_t)(n - i) * sizeof *h);
    _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
    memcpy(d + i, f, (size_t)(n - i) * sizeof *f);
  }
}

/* AVX-512: 16 per instruction, the tail masked */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void half_to_f32_avx512(const uint16_t *s, int dt,
                                                                                     int64_t n, float *d) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    __m256i h = _mm256_maskz_loadu_epi16(m, s + i);
    __m512 v = dt == MMP_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                              : _mm512_cvtph_ps(h);
    _mm512_mask_storeu_ps(d + i, m, v);
  }
}
#endif

static bool half_path_ok(int path) {
  if (path == MMP_CPU_HALF_SCALAR) return true;
#ifdef MMP_HAVE_X86_DISPATCH
  if (path == MMP_CPU_HALF_F16C) return (mmp_cpu_features() & MMP_CPU_F16C) != 0;
  if (path == MMP_CPU_HALF_AVX512) return (mmp_cpu_features() & MMP_CPU_AVX512) != 0;
#endif
  return false;
}

static atomic_int g_half_path = MMP_CPU_HALF_BEST;

int mmp_cpu_set_half_path(int path) {
  if (path < MMP_CPU_HALF_SCALAR || path > MMP_CPU_HALF_AVX512) path = MMP_CPU_HALF_BEST;
  while (path > MMP_CPU_HALF_SCALAR && !half_path_ok(path)) path--;
  atomic_store(&g_half_path, path);
  return path < 0 ? mmp_cpu_half_path() : path;
}

int mmp_cpu_half_path(void) {
  int p = atomic_load(&g_half_path);
  if (p >= 0) return p;
#ifdef MMP_HAVE_X86_DISPATCH
  const int f = mmp_cpu_features();
  if (f & MMP_CPU_AVX512) return MMP_CPU_HALF_AVX512;
  if (f & MMP_CPU_F16C) return MMP_CPU_HALF_F16C;
#endif
  return MMP_CPU_HALF_SCALAR;
}

int mmp_cpu_half_to_f32(const uint16_t *s, int dt, int64_t n, float *d, int path) {
  if (dt != MMP_F16 && dt != MMP_BF16)
    return mmp_error_set(MMP_EDTYPE, "half_to_f32: dtype %d (want f16 or bf16)", dt);
  if (path == MMP_CPU_HALF_BEST) path = mmp_cpu_half_path();
  if (!half_path_ok(path))
    return mmp_error_set(MMP_EINVAL, "half_to_f32: conversion path %d not available on this CPU", path);
  if (n <= 0) return path;
#ifdef MMP_HAVE_X86_DISPATCH
  if (path == MMP_CPU_HALF_AVX512) {
    half_to_f32_avx512(s, dt, n, d);
    return path;
  }
  if (path == MMP_CPU_HALF_F16C) {
    half_to_f32_f16c(s, dt, n, d);
    return path;
  }
#endif
  half_to_f32_scalar(s, dt, n, d);
  return path;
}

/* Pack an R x kc block of half-precision values into panels of @w rows
 * (dst[(r / w) * w * kc + k * w + r % w] = alpha * x(r, k), the last
 * panel's missing rows 0); x(r, k) = X[r * sr + k * sk], one of the two
 * strides being 1: lines along it are converted a chunk at a time and
 * scattered into the panels. */
#define HALF_CHUNK 256
static void pack_h_panels(const uint16_t *X, int dt, int64_t sr, int64_t sk, int64_t R, int64_t kc, int w,
                          float alpha, float *dst) {
  float buf[HALF_CHUNK];
  const int path = mmp_cpu_half_path();
  if (sr == 1) { /* line k: rows r contiguous; chunks of whole panels */
    const int64_t chunk = HALF_CHUNK / w * w;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t n = R - r0 < chunk ? R - r0 : chunk;
        mmp_cpu_half_to_f32(X + k * sk + r0, dt, n, buf, path);
        for (int64_t c0 = 0; c0 < n; c0 += w) {
          float *d = dst + (r0 + c0) * kc + k * w; /* panel (r0 + c0) / w */
          const int64_t m = n - c0 < w ? n - c0 : w;
          for (int64_t q = 0; q < m; ++q) d[q] = alpha * buf[c0 + q];
        }
      }
  } else { /* line r: k contiguous */
    for (int64_t r = 0; r < R; ++r) {
      float *d = dst + (r / w) * w * kc + r % w;
      for (int64_t k0 = 0; k0 < kc; k0 += HALF_CHUNK) {
        const int64_t n = kc - k0 < HALF_CHUNK ? kc - k0 : HALF_CHUNK;
        mmp_cpu_half_to_f32(X + r * sr + k0, dt, n, buf, path);
        for (int64_t c = 0; c < n; ++c) d[(k0 + c) * w] = alpha * buf[c];
      }
    }
  }
  const int64_t rem = R % w;
  if (rem) {
    float *last = dst + (R / w) * w * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t r = rem; r < w; ++r) last[k * w + r] = 0.0f;
  }
}

static void pack_a_h_generic(const uint16_t *A, int dt, int64_t lda, bool trans, int64_t i0, int64_t mc,
                             int64_t k0, int64_t kc, float alpha, float *ap) {
  if (trans) /* op(A)[i][k] = A[k][i] */
    pack_h_panels(A + k0 * lda + i0, dt, 1, lda, mc, kc, GMR, alpha, ap);
  else
    pack_h_panels(A + i0 * lda + k0, dt, lda, 1, mc, kc, GMR, alpha, ap);
}

static void pack_b_h_generic(const uint16_t *B, int dt, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                             int64_t j0, int64_t nc, float *bp) {
  if (trans) /* op(B)[k][j] = B[j][k] */
    pack_h_panels(B + j0 * ldb + k0, dt, ldb, 1, nc, kc, GNR, 1.0f, bp);
  else
    pack_h_panels(B + k0 * ldb + j0, dt, 1, ldb, nc, kc, GNR, 1.0f, bp);
}

const mmp_gemm_kernel_t mmp_gemm_kernel_generic = {
    "generic", GMR, GNR, 256, 96, 0, ukr_generic, pack_a_generic, pack_b_generic,
    pack_a_h_generic, pack_b_h_generic, NULL};

/* fp32 -> bf16 -> fp32 as vcvtneps2bf16 rounds: to nearest even (overflow
 * to inf), an fp32 denormal to a signed zero, NaN stays a quiet NaN */
static inline float round_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u)
    x = (x | 0x00400000u) & 0xffff0000u;
  else if (ax < 0x00800000u)
    x &= 0x80000000u;
  else
    x = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
  memcpy(&f, &x, 4);
  return f;
}

void mmp_gemm_round_bf16(float *panel, int64_t kc, int w) {
  for (int64_t k = 0; k + 1 < kc; k += 2) {
    float *r0 = panel + k * w, *r1 = r0 + w;
    for (int j = 0; j < w; ++j) {
      float t = round_bf16(r0[j]);
      r0[j] = round_bf16(r1[j]);
      r1[j] = t;
    }
  }
  if (kc & 1)
    for (int j = 0; j < w; ++j) panel[(kc - 1) * w + j] = round_bf16(panel[(kc - 1) * w + j]);
}

/* the bf16 compute path on the portable kernel */
const mmp_gemm_kernel_t mmp_gemm_kernel_generic_bf16round = {
    "generic+bf16-round", GMR, GNR, 256, 96, 0, ukr_generic, pack_a_generic, pack_b_generic,
    pack_a_h_generic, pack_b_h_generic, mmp_gemm_round_bf16};

/* ------------------------------------------------------ macro level */

void mmp_gemm_macro(const mmp_gemm_kernel_t *g, int64_t mc, int64_t nc, int64_t kc,
                    const float *ap, const float *bp, float *c, int64_t ldc, float beta) {
  const int MR = g->mr, NR = g->nr;
  for (int64_t j = 0; j < nc; j += NR) {
    int nr = (int)(nc - j < NR ? nc - j : NR);
    const float *b = bp + j * kc;
    for (int64_t i = 0; i < mc; i += MR) {
      int mr = (int)(mc - i < MR ? mc - i : MR);
      g->ukr(kc, ap + i * kc, b, c + i * ldc + j, ldc, mr, nr, beta);
    }
  }
}

static void scale_c(float *C, int64_t ldc, int64_t M, int64_t N, float beta) {
  for (int64_t i = 0; i < M; ++i) {
    float *c = C + i * ldc;
    if (beta == 0.0f)
      memset(c, 0, (size_t)N * sizeof(float));
    else
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
  }
}

typedef struct plain_b {
  const mmp_gemm_kernel_t *g;
  const void *B;
  int bdt;
  int64_t ldb;
  bool tb;
} plain_b_t;

static void pack_plain_b(const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                         float *bp) {
  const plain_b_t *p = ctx;
  if (p->bdt == MMP_F32)
    p->g->pack_b(p->B, p->ldb, p->tb, k0, kc, j0, nc, bp);
  else
    p->g->pack_b_h(p->B, p->bdt, p->ldb, p->tb, k0, kc, j0, nc, bp);
}

/* equal K blocks (K = 320 -> 2 x 160, not 256 + 64): a short last block
 * would pay a full pass over C for little work */
int64_t mmp_gemm_kblock(const mmp_gemm_kernel_t *g, int64_t K, int64_t N) {
  const int64_t kcmax = N <= 4 * g->nr && g->kc_narrow > 0 ? g->kc_narrow : g->kc;
  if (K <= 0) return kcmax;
  const int64_t nkb = (K + kcmax - 1) / kcmax;
  return (K + nkb - 1) / nkb;
}

/* Where a K block of B comes from: packed now by a callback into a
 * buffer, or already packed by the caller (mmp_gemm_serial_pb's layout). */
typedef struct b_source {
  mmp_pack_b_cb pack_b; /* NULL: prepacked */
  const void *ctx;
  float *buf;
  const float *bp;
  int64_t ldbp, j0;
} b_source_t;

/* The serial loops over K blocks of depth KC and row blocks of A. */
static void gemm_blocks(const mmp_gemm_kernel_t *g, bool ta, int64_t M, int64_t N, int64_t K, int64_t KC,
                        float alpha, const void *A, int adt, int64_t lda, const b_source_t *src, float beta,
                        float *C, int64_t ldc, float *bufa) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    if (beta != 1.0f) scale_c(C, ldc, M, N, beta);
    return;
  }
  for (int64_t pc = 0; pc < K; pc += KC) {
    int64_t kc = K - pc < KC ? K - pc : KC;
    float b_eff = pc == 0 ? beta : 1.0f;
    const float *b;
    if (src->pack_b) {
      src->pack_b(src->ctx, pc, kc, 0, N, src->buf);
      if (g->squeeze)
        for (int64_t q = 0; q < N; q += g->nr) g->squeeze(src->buf + q * kc, kc, g->nr);
      b = src->buf;
    } else {
      b = src->bp + pc * src->ldbp + src->j0 * kc;
    }
    for (int64_t ic = 0; ic < M; ic += g->mc) {
      int64_t mc = M - ic < g->mc ? M - ic : g->mc;
      if (adt == MMP_F32)
        g->pack_a(A, lda, ta, ic, mc, pc, kc, alpha, bufa);
      else
        g->pack_a_h(A, adt, lda, ta, ic, mc, pc, kc, alpha, bufa);
      if (g->squeeze)
        for (int64_t p = 0; p < mc; p += g->mr) g->squeeze(bufa + p * kc, kc, g->mr);
      mmp_gemm_macro(g, mc, N, kc, bufa, b, C + ic * ldc, ldc, b_eff);
    }
  }
}

void mmp_gemm_serial_cb(const mmp_gemm_kernel_t *g, bool ta, int64_t M, int64_t N, int64_t K,
                        float alpha, const void *A, int adt, int64_t lda, mmp_pack_b_cb pack_b,
                        const void *ctx, float beta, float *C, int64_t ldc, float *bufa,
                        float *bufb) {
  b_source_t src = {pack_b, ctx, bufb, NULL, 0, 0};
  gemm_blocks(g, ta, M, N, K, mmp_gemm_kblock(g, K, N), alpha, A, adt, lda, &src, beta, C, ldc, bufa);
}

void mmp_gemm_serial_pb(const mmp_gemm_kernel_t *g, bool ta, int64_t M, int64_t N, int64_t K,
                        int64_t KC, float alpha, const void *A, int adt, int64_t lda, const float *bp,
                        int64_t ldbp, int64_t j0, float beta, float *C, int64_t ldc, float *bufa) {
  b_source_t src = {NULL, NULL, NULL, bp, ldbp, j0};
  gemm_blocks(g, ta, M, N, K, KC, alpha, A, adt, lda, &src, beta, C, ldc, bufa);
}

static void gemm_serial_x(const mmp_gemm_kernel_t *g, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                          float alpha, const void *A, int adt, int64_t lda, const void *B, int bdt,
                          int64_t ldb, float beta, float *C, int64_t ldc, float *bufa, float *bufb) {
  plain_b_t p = {g, B, bdt, ldb, tb};
  mmp_gemm_serial_cb(g, ta, M, N, K, alpha, A, adt, lda, pack_plain_b, &p, beta, C, ldc, bufa, bufb);
}

void mmp_gemm_serial(const mmp_gemm_kernel_t *g, bool ta, bool tb, int64_t M, int64_t N,
                     int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                     int64_t ldb, float beta, float *C, int64_t ldc, float *bufa, float *bufb) {
  gemm_serial_x(g, ta, tb, M, N, K, alpha, A, MMP_F32, lda, B, MMP_F32, ldb, beta, C, ldc, bufa, bufb);
}

/* --------------------------------------------------- threaded sgemm */

#define NT_MAX 2048 /* widest column block a task packs (B block in L3) */

typedef struct sgemm_job {
  const mmp_gemm_kernel_t *g;
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
  const char *A, *B; /* elements of asz / bsz bytes (adt / bdt) */
  int adt, bdt;
  int64_t asz, bsz;
  float *C;
  int64_t lda, ldb, ldc, sa, sb, sc;
  int64_t ntm, ntn, Mt, Nt, ntasks;
  atomic_int_fast64_t next;
  atomic_int failed;
} sgemm_job_t;

static void sgemm_worker(int64_t w, void *user) {
  sgemm_job_t *j = user;
  (void)w;
  const mmp_gemm_kernel_t *g = j->g;
  float *bufa = NULL, *bufb = NULL;
  for (;;) {
    int64_t t = atomic_fetch_add(&j->next, 1);
    if (t >= j->ntasks) break;
    if (!bufa) {
      int64_t nt = (j->Nt + g->nr - 1) / g->nr * g->nr;
      bufa = mmp_cpu_scratch(MMP_SCRATCH_A, (int64_t)g->mc * g->kc);
      bufb = mmp_cpu_scratch(MMP_SCRATCH_B, (int64_t)g->kc * nt);
      if (!bufa || !bufb) {
        atomic_store(&j->failed, 1);
        break;
      }
    }
    int64_t per = j->ntm * j->ntn;
    int64_t b = t / per, r = t % per;
    int64_t tm = r / j->ntn, tn = r % j->ntn;
    int64_t m0 = tm * j->Mt, n0 = tn * j->Nt;
    int64_t mc = j->M - m0 < j->Mt ? j->M - m0 : j->Mt;
    int64_t nc = j->N - n0 < j->Nt ? j->N - n0 : j->Nt;
    if (mc <= 0 || nc <= 0) continue;
    const char *A = j->A + (b * j->sa + (j->ta ? m0 : m0 * j->lda)) * j->asz;
    const char *B = j->B + (b * j->sb + (j->tb ? n0 * j->ldb : n0)) * j->bsz;
    float *C = j->C + b * j->sc + m0 * j->ldc + n0;
    gemm_serial_x(g, j->ta, j->tb, mc, nc, j->K, j->alpha, A, j->adt, j->lda, B, j->bdt, j->ldb, j->beta,
                  C, j->ldc, bufa, bufb);
  }
  mmp_cpu_scratch_done(MMP_SCRATCH_A);
  mmp_cpu_scratch_done(MMP_SCRATCH_B);
}

/* Split M x N into ntm x ntn blocks: enough blocks to keep every thread
 * busy (with slack for a noisy machine), at the least packing cost
 * (B is packed once per row block, A once per column block). */
static void plan_tiles(sgemm_job_t *j, int threads) {
  const int64_t MR = j->g->mr, NR = j->g->nr;
  int64_t pm = (j->M + MR - 1) / MR, pn = (j->N + NR - 1) / NR; /* panels */
  int64_t want = threads > 1 ? 3 * threads : 1;
  int64_t per_batch = (want + j->ntasks - 1) / j->ntasks; /* j->ntasks = batch here */
  if (per_batch < 1) per_batch = 1;
  int64_t min_tn = (pn * NR + NT_MAX - 1) / NT_MAX;
  double best = -1.0;
  int64_t bm = 1, bn = min_tn;
  for (int64_t tm = 1; tm <= pm && tm <= 64; ++tm) {
    for (int64_t tn = min_tn; tn <= pn && tn <= 64; ++tn) {
      int64_t mt = (pm + tm - 1) / tm, nt = (pn + tn - 1) / tn;
      int64_t rtm = (pm + mt - 1) / mt, rtn = (pn + nt - 1) / nt; /* real counts */
      int64_t n = rtm * rtn;
      if (n < per_batch && !(tm == pm && tn == pn)) continue;
      /* packing cost + imbalance: the last wave leaves threads idle */
      double pack = (double)j->K * (double)(j->N * rtm + j->M * rtn);
      double work = (double)j->M * j->N * j->K / 16.0; /* ~flops per pack element */
      int64_t tot = n * (j->ntasks);
      int64_t waves = (tot + threads - 1) / threads;
      double imbalance = work * ((double)waves * threads / (double)tot - 1.0) / (double)threads;
      double cost = pack + imbalance;
      if (best < 0 || cost < best) {
        best = cost;
        bm = rtm;
        bn = rtn;
      }
    }
  }
  j->ntm = bm;
  j->ntn = bn;
  j->Mt = ((pm + bm - 1) / bm) * MR;
  j->Nt = ((pn + bn - 1) / bn) * NR;
}

int mmp_cpu_sgemm(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                  int64_t ldb, int64_t stride_b, float beta, float *C, int64_t ldc,
                  int64_t stride_c) {
  return mmp_cpu_gemm(batch, trans_a, trans_b, M, N, K, alpha, A, MMP_F32, lda, stride_a, B, MMP_F32, ldb,
                      stride_b, beta, C, ldc, stride_c, MMP_F32);
}

static bool gemm_dtype_ok(int dt) { return dt == MMP_F32 || dt == MMP_F16 || dt == MMP_BF16; }

int mmp_cpu_gemm(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int adt, int64_t lda, int64_t stride_a, const void *B, int bdt, int64_t ldb,
                 int64_t stride_b, float beta, float *C, int64_t ldc, int64_t stride_c, int cdt) {
  if (!gemm_dtype_ok(adt) || !gemm_dtype_ok(bdt))
    return mmp_error_set(MMP_EDTYPE, "sgemm: operand dtypes %d and %d (want f32, f16 or bf16)", adt, bdt);
  if (cdt != MMP_F32 && cdt != MMP_BF16)
    return mmp_error_set(MMP_EDTYPE, "sgemm: compute dtype %d (want f32 or bf16)", cdt);
  if (batch < 0 || M < 0 || N < 0 || K < 0)
    return mmp_error_set(MMP_EINVAL, "sgemm: negative size (batch %lld, M %lld, N %lld, K %lld)",
                         (long long)batch, (long long)M, (long long)N, (long long)K);
  if (batch == 0 || M == 0 || N == 0) return 0;
  if (!C || (K > 0 && (!A || !B)))
    return mmp_error_set(MMP_EINVAL, "sgemm: NULL operand");
  if (ldc < N || (K > 0 && (lda < (trans_a ? M : K) || ldb < (trans_b ? K : N))))
    return mmp_error_set(MMP_EINVAL, "sgemm: leading dimension too small");
  if (stride_a < 0 || stride_b < 0 || stride_c < 0 || (batch > 1 && stride_c == 0))
    return mmp_error_set(MMP_EINVAL, "sgemm: bad batch strides");

  int threads = mmp_cpu_threads();
  int isa = mmp_cpu_isa();
#ifdef HAVE_OPENBLAS
  int bm = blas_mode();
  /* OpenBLAS has no mixed-precision sgemm: half operands take the built-in kernels */
  if (K > 0 && adt == MMP_F32 && bdt == MMP_F32 && cdt == MMP_F32 && (bm == 1 || (bm == 2 && isa < MMP_CPU_ISA_AVX512))) {
    for (int64_t b = 0; b < batch; ++b)
      cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                  trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha,
                  (const float *)A + b * stride_a, (int)lda, (const float *)B + b * stride_b, (int)ldb, beta,
                  C + b * stride_c, (int)ldc);
    return 0;
  }
#endif
  (void)isa;
  sgemm_job_t j;
  memset(&j, 0, sizeof j);
  j.g = mmp_gemm_kernel_for(cdt);
  j.ta = trans_a;
  j.tb = trans_b;
  j.M = M;
  j.N = N;
  j.K = K;
  j.alpha = alpha;
  j.beta = beta;
  j.A = A;
  j.B = B;
  j.adt = adt;
  j.bdt = bdt;
  j.asz = adt == MMP_F32 ? 4 : 2;
  j.bsz = bdt == MMP_F32 ? 4 : 2;
  j.C = C;
  j.lda = lda;
  j.ldb = ldb;
  j.ldc = ldc;
  j.sa = stride_a;
  j.sb = stride_b;
  j.sc = stride_c;
  j.ntasks = batch;
  /* tiny problems: one thread, no point in waking the pool */
  double flops = 2.0 * (double)M * N * (K > 0 ? K : 1) * batch;
  int th = flops < 2e6 ? 1 : threads;
  plan_tiles(&j, th);
  j.ntasks = batch * j.ntm * j.ntn;
  atomic_store(&j.next, 0);
  atomic_store(&j.failed, 0);
  int64_t nw = th < j.ntasks ? th : j.ntasks;
  if (nw <= 1)
    sgemm_worker(0, &j);
  else
    mmp_cpu_parallel_for(nw, sgemm_worker, &j);
  if (atomic_load(&j.failed)) return mmp_error_set(MMP_ENOMEM, "sgemm: out of memory for packing buffers");
  return 0;
}

/* ------------------------------------------------------ vector math */

#ifdef MMP_HAVE_X86_DISPATCH
void mmp_vexp_avx512(const float *x, float *y, int64_t n);
#endif

void mmp_vexp(const float *x, float *y, int64_t n) {
#ifdef MMP_HAVE_X86_DISPATCH
  if (mmp_cpu_isa() >= MMP_CPU_ISA_AVX512) {
    mmp_vexp_avx512(x, y, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = expf(x[i]);
}
