/* bench/ops.c - throughput of the CPU kernels next to machine peak, OpenBLAS and PyTorch. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/cpu/kernels.h"
#include "mmpipe/error.h"
#include "mmpipe/tensor.h" /* MMP_F32, MMP_BF16, the half weights */

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

/* Usage: bench/ops [--threads N] [--reps R] [--min-time S] [--quick] [--compare-torch]
 *
 * Every figure is the best of at least R timed runs after one warm-up run,
 * more runs being made until S seconds (default 0.5) were measured (the
 * machine may be shared: the best run is the one least disturbed); PyTorch's
 * times follow the same rule. Peak
 * fp32 throughput = threads x measured clock x FMA pipes x 2 x lanes, with
 * the clock and the number of FMA pipes measured by timed loops (a virtual
 * machine's /proc/cpuinfo shows the nominal clock, not the boost clock). */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* 64-byte aligned, as the backend's tensors are */
static float *rnd(int64_t n) {
  float *p = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) & ~(size_t)63);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  uint32_t s = 12345u;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = (float)((s >> 8) * (1.0 / 16777216.0) - 0.5);
  }
  return p;
}

static int g_reps = 3;
/* short ops are repeated until this much time was measured (the first runs
 * on a VM are often slow: page faults, clock ramp-up, a neighbour) */
static double g_min_time = 0.5;

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* best wall time, and best process CPU time (all threads) into g_cpu */
static double g_cpu;
#define TIME_BEST(best, stmt)                       \
  do {                                              \
    stmt;                                           \
    best = 1e30;                                    \
    g_cpu = 1e30;                                   \
    double acc_ = 0.0;                              \
    for (int r_ = 0; r_ < g_reps || (acc_ < g_min_time && r_ < 1000); ++r_) { \
      double c0_ = cpu_now();                       \
      double t0_ = now();                           \
      stmt;                                         \
      double t_ = now() - t0_;                      \
      double c_ = cpu_now() - c0_;                  \
      acc_ += t_;                                   \
      if (t_ < best) best = t_;                     \
      if (c_ < g_cpu) g_cpu = c_;                   \
    }                                               \
  } while (0)

/* ---------------------------------------------------------- machine peak */

static double g_clock_ghz, g_fma_pipes, g_fma_rate, g_peak_core; /* GFLOP/s per core */
static const char *g_isa = "generic";

#if defined(__x86_64__) && defined(__GNUC__)
/* 100 dependent adds per iteration: one per cycle */
static double measure_clock(void) {
  double best = 1e30;
  long n = 20000;
  for (int r = 0; r < 40; ++r) {
    long i = n, x = 0;
    double t0 = now();
    __asm__ volatile(
        "1:\n\t"
        ".rept 100\n\t"
        "add $1, %1\n\t"
        ".endr\n\t"
        "dec %0\n\t"
        "jnz 1b\n\t"
        : "+r"(i), "+r"(x)::"cc");
    double t = now() - t0;
    if (t < best) best = t;
  }
  return (double)n * 100.0 / best * 1e-9;
}

/* 12 independent 512-bit FMA chains: enough to fill two pipes of latency <= 6 */
__attribute__((target("avx512f"))) static double measure_fma512(void) {
  double best = 1e30;
  long n = 100000;
  for (int r = 0; r < 40; ++r) {
    long i = n;
    double t0 = now();
    __asm__ volatile(
        "vxorps %%zmm1, %%zmm1, %%zmm1\n\t"
        "1:\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm2\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm3\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm4\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm5\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm6\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm7\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm8\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm9\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm10\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm11\n\t"
        "vfmadd231ps %%zmm1, %%zmm1, %%zmm12\n\t vfmadd231ps %%zmm1, %%zmm1, %%zmm13\n\t"
        "dec %0\n\t"
        "jnz 1b\n\t"
        : "+r"(i)::"xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "cc");
    double t = now() - t0;
    if (t < best) best = t;
  }
  return (double)n * 12.0 / best * 1e-9; /* G FMA instructions per second */
}

__attribute__((target("avx2,fma"))) static double measure_fma256(void) {
  double best = 1e30;
  long n = 100000;
  for (int r = 0; r < 40; ++r) {
    long i = n;
    double t0 = now();
    __asm__ volatile(
        "vxorps %%ymm1, %%ymm1, %%ymm1\n\t"
        "1:\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm2\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm3\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm4\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm5\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm6\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm7\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm8\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm9\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm10\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm11\n\t"
        "vfmadd231ps %%ymm1, %%ymm1, %%ymm12\n\t vfmadd231ps %%ymm1, %%ymm1, %%ymm13\n\t"
        "dec %0\n\t"
        "jnz 1b\n\t"
        : "+r"(i)::"xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "cc");
    double t = now() - t0;
    if (t < best) best = t;
  }
  return (double)n * 12.0 / best * 1e-9;
}
#endif

static void measure_peak(void) {
  int lanes = 4;
  double fma_rate = 0.0;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  /* interleaved, best of several rounds: on a shared machine the fastest
   * trial is the undisturbed one */
  for (int round = 0; round < 5; ++round) {
    double c = measure_clock();
    if (c > g_clock_ghz) g_clock_ghz = c;
    double f = 0.0;
    if (__builtin_cpu_supports("avx512f")) {
      g_isa = "AVX-512";
      lanes = 16;
      f = measure_fma512();
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      g_isa = "AVX2+FMA";
      lanes = 8;
      f = measure_fma256();
    }
    if (f > fma_rate) fma_rate = f;
  }
#endif
  g_fma_rate = fma_rate;
  if (fma_rate <= 0.0 || g_clock_ghz <= 0.0) {
    g_fma_pipes = 1;
    g_peak_core = 0; /* unknown */
    return;
  }
  /* FMA instructions per cycle; x86 cores have 1 or 2 FMA pipes */
  g_fma_pipes = floor(fma_rate / g_clock_ghz + 0.3); /* 1.9 -> 2 */
  if (g_fma_pipes < 1) g_fma_pipes = 1;
  if (g_fma_pipes > 2) g_fma_pipes = 2;
  g_peak_core = g_clock_ghz * g_fma_pipes * 2.0 * lanes;
}

/* memory bandwidth for group_norm: best copy of a 256 MiB buffer (read+write) */
static double measure_copy_gbs(void) {
  int64_t n = 64ll << 20;
  float *a = rnd(n), *b = rnd(n);
  double best;
  TIME_BEST(best, memcpy(b, a, (size_t)n * sizeof(float)));
  free(a);
  free(b);
  return 2.0 * (double)n * sizeof(float) / best * 1e-9;
}

/* ------------------------------------------------------------- reporting */

static int g_threads;
static double g_peak;

static void print_header(void) {
  printf("%-42s %8s %8s %9s %8s %10s\n", "op", "ms", "GFLOP/s", "of peak", "vs BLAS",
         "CPU-s eff.");
}

/* "CPU-s eff." = flops / (CPU seconds the process actually got x per-core
 * peak): the kernel's efficiency on the CPU time it received, which is what
 * a loaded, shared machine lets us measure (wall-clock figures there are
 * diluted by other processes). */
static void print_flops(const char *name, double flops, double t, double cpu, double t_blas,
                        double cpu_blas) {
  double gf = flops / t * 1e-9;
  printf("%-42s %8.2f %8.1f %8.1f%%", name, t * 1e3, gf, g_peak > 0 ? 100.0 * gf / g_peak : 0.0);
  if (t_blas > 0)
    printf(" %7.2fx", t_blas / t);
  else
    printf(" %8s", "-");
  if (g_peak_core > 0 && cpu > 0) printf(" %9.1f%%", 100.0 * flops * 1e-9 / cpu / g_peak_core);
  if (g_peak_core > 0 && cpu_blas > 0)
    printf("  (BLAS %.1f%%)", 100.0 * flops * 1e-9 / cpu_blas / g_peak_core);
  printf("\n");
  fflush(stdout);
}

/* ------------------------------------------------------------------ ops */

typedef struct result {
  char key[32];
  double t;
} result_t;
static result_t g_res[32];
static int g_nres;
static void remember(const char *key, double t) {
  if (g_nres < 32) {
    snprintf(g_res[g_nres].key, sizeof g_res[g_nres].key, "%s", key);
    g_res[g_nres++].t = t;
  }
}

static void bench_sgemm(const char *key, const char *label, int64_t M, int64_t N, int64_t K,
                        bool tb) {
  float *A = rnd(M * K), *B = rnd(K * N), *C = rnd(M * N);
  double t, tb_ = 0, cpu, cpub = 0;
  int64_t ldb = tb ? K : N;
  mmp_cpu_set_openblas(0);
  TIME_BEST(t, mmp_cpu_sgemm(1, false, tb, M, N, K, 1.0f, A, K, 0, B, ldb, 0, 0.0f, C, N, 0));
  cpu = g_cpu;
#ifdef HAVE_OPENBLAS
  TIME_BEST(tb_, cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M,
                             (int)N, (int)K, 1.0f, A, (int)K, B, (int)ldb, 0.0f, C, (int)N));
  cpub = g_cpu;
#endif
  mmp_cpu_set_openblas(-1);
  print_flops(label, 2.0 * M * N * K, t, cpu, tb_, cpub);
  remember(key, t);
  free(A);
  free(B);
  free(C);
}

/* Products with half-precision weights (issue 19): converted to fp32 while
 * the panels are packed (compute dtype f32), and multiplied as bf16 pairs
 * (compute dtype bf16: vdpbf16ps, 32 multiply-adds per instruction, so the
 * bf16 peak is taken as twice the fp32 one) when the CPU has AVX512_BF16.
 * One product: a linear layer x W^T (x M x K, W N x K) or a 3x3
 * convolution (n images of c x h x w, o outputs). */
typedef struct half_op {
  bool conv;
  int64_t M, N, K;
  int64_t n, c, h, w, o;
} half_op_t;

/* @n floats as @dt (round to nearest even), through the tensor API */
static void half_weights(const float *w, int64_t n, int dt, uint16_t *out) {
  mmp_tensor_t *t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 1, &n, w);
  mmp_tensor_t *h = t ? mmp_convert(t, (mmp_dtype_t)dt) : NULL;
  if (!h || mmp_tensor_to_host(h, out, (size_t)n * sizeof *out) < 0) {
    fprintf(stderr, "half_weights: %s\n", mmp_error_last());
    exit(1);
  }
  mmp_tensor_unref(h);
  mmp_tensor_unref(t);
}

static double half_flops(const half_op_t *op) {
  return op->conv ? 2.0 * op->n * op->o * op->h * op->w * op->c * 9 : 2.0 * op->M * op->N * op->K;
}

static int half_run(const half_op_t *op, const float *x, const void *w, int wdt, float *y, int cdt) {
  if (op->conv)
    return mmp_cpu_conv2d_w(x, op->n, op->c, op->h, op->w, w, wdt, op->o, 3, 3, NULL, 1, 1, 1, 1, 1, 1, 1, y, cdt);
  return mmp_cpu_gemm(1, false, true, op->M, op->N, op->K, 1.0f, x, MMP_F32, op->K, 0, w, wdt, op->K, 0, 0.0f, y,
                      op->N, 0, cdt);
}

/* The op with f32, bf16 and f16 weights (fp32 math), on the AVX-512 path
 * and on the portable one (MMPIPE_CPU_ISA=generic), then with the bf16 dot
 * products where the CPU has them; each line's ratio is to the f32 weights
 * on the same path. */
static void bench_half(const char *label, const half_op_t *op) {
  int64_t nx = op->conv ? op->n * op->c * op->h * op->w : op->M * op->K;
  int64_t nw = op->conv ? op->o * op->c * 9 : op->N * op->K;
  int64_t ny = op->conv ? op->n * op->o * op->h * op->w : op->M * op->N;
  float *x = rnd(nx), *W = rnd(nw), *y = rnd(ny);
  uint16_t *Wb = malloc((size_t)nw * sizeof *Wb), *Wf = malloc((size_t)nw * sizeof *Wf);
  if (!Wb || !Wf) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  half_weights(W, nw, MMP_BF16, Wb);
  half_weights(W, nw, MMP_F16, Wf);
  const double flops = half_flops(op);
  const int isa0 = mmp_cpu_isa();
  mmp_cpu_set_openblas(0);
  static const int isas[] = {MMP_CPU_ISA_AVX512, MMP_CPU_ISA_GENERIC};
  static const char *const isa_names[] = {"avx512", "generic"};
  char name[128];
  for (int q = 0; q < 2; ++q) {
    if (mmp_cpu_set_isa(isas[q]) != isas[q]) continue;
    double t32, t, cpu;
    TIME_BEST(t32, half_run(op, x, W, MMP_F32, y, MMP_F32));
    snprintf(name, sizeof name, "%s [%s] f32 W", label, isa_names[q]);
    print_flops(name, flops, t32, g_cpu, 0, 0);
    const void *ws[2] = {Wb, Wf};
    static const int wdts[2] = {MMP_BF16, MMP_F16};
    static const char *const wn[2] = {"bf16", "f16"};
    for (int d = 0; d < 2; ++d) {
      TIME_BEST(t, half_run(op, x, ws[d], wdts[d], y, MMP_F32));
      cpu = g_cpu;
      snprintf(name, sizeof name, "%s [%s] %s W, fp32 math", label, isa_names[q], wn[d]);
      print_flops(name, flops, t, cpu, 0, 0);
      printf("%-42s %8s x%.2f vs f32 weights\n", "", "", t32 / t);
    }
    if (isas[q] == MMP_CPU_ISA_AVX512 && mmp_cpu_set_isa(MMP_CPU_ISA_AVX512_BF16) == MMP_CPU_ISA_AVX512_BF16) {
      TIME_BEST(t, half_run(op, x, Wb, MMP_BF16, y, MMP_BF16));
      double gf = flops / t * 1e-9;
      cpu = g_cpu;
      snprintf(name, sizeof name, "%s bf16 dot products", label);
      printf("%-42s %8.2f %8.1f %8.1f%% of the bf16 peak (%.1f GFLOP/s)", name, t * 1e3, gf,
             g_peak > 0 ? 100.0 * gf / (2.0 * g_peak) : 0.0, 2.0 * g_peak);
      if (g_peak_core > 0 && cpu > 0) printf(", CPU-s eff. %.1f%% of it", 100.0 * flops * 1e-9 / cpu / (2.0 * g_peak_core));
      printf("; x%.2f vs f32 weights\n", t32 / t);
    }
  }
  mmp_cpu_set_isa(isa0);
  mmp_cpu_set_openblas(-1);
  free(x);
  free(W);
  free(Wb);
  free(Wf);
  free(y);
}

static void bench_halves(void) {
  static const struct {
    const char *label;
    half_op_t op;
  } cases[] = {
      {"linear 8192x320->1280", {false, 8192, 1280, 320, 0, 0, 0, 0, 0}},
      {"linear 2048x640->2560", {false, 2048, 2560, 640, 0, 0, 0, 0, 0}},
      {"linear 512x1280->5120", {false, 512, 5120, 1280, 0, 0, 0, 0, 0}},
      {"conv 320->320 64x64 b2", {true, 0, 0, 0, 2, 320, 64, 64, 320}},
      {"conv 1280->1280 8x8 b2", {true, 0, 0, 0, 2, 1280, 8, 8, 1280}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) bench_half(cases[i].label, &cases[i].op);
}

#ifdef HAVE_OPENBLAS
/* the classic alternative: explicit im2col + OpenBLAS sgemm, per image */
static void conv_im2col_blas(const float *x, int64_t N, int64_t C, int64_t H, int64_t W,
                             const float *w, int64_t O, float *col, float *y) {
  int64_t P = H * W;
  for (int64_t n = 0; n < N; ++n) {
    const float *xn = x + n * C * P;
    for (int64_t c = 0; c < C; ++c)
      for (int kh = 0; kh < 3; ++kh)
        for (int kw = 0; kw < 3; ++kw) {
          float *d = col + ((c * 3 + kh) * 3 + kw) * P;
          for (int64_t oh = 0; oh < H; ++oh) {
            int64_t ih = oh - 1 + kh;
            for (int64_t ow = 0; ow < W; ++ow) {
              int64_t iw = ow - 1 + kw;
              d[oh * W + ow] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? xn[(c * H + ih) * W + iw] : 0.0f;
            }
          }
        }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)O, (int)P, (int)(C * 9), 1.0f, w,
                (int)(C * 9), col, (int)P, 0.0f, y + n * O * P, (int)P);
  }
}
#endif

static void bench_conv(const char *key, const char *label, int64_t N, int64_t C, int64_t H,
                       int64_t W, int64_t O) {
  float *x = rnd(N * C * H * W), *w = rnd(O * C * 9), *b = rnd(O), *y = rnd(N * O * H * W);
  double t, tb_ = 0, cpu, cpub = 0;
  TIME_BEST(t, mmp_cpu_conv2d(x, N, C, H, W, w, O, 3, 3, b, 1, 1, 1, 1, 1, 1, 1, y));
  cpu = g_cpu;
#ifdef HAVE_OPENBLAS
  float *col = rnd(C * 9 * H * W);
  TIME_BEST(tb_, conv_im2col_blas(x, N, C, H, W, w, O, col, y));
  cpub = g_cpu;
  free(col);
#endif
  print_flops(label, 2.0 * N * O * H * W * C * 9, t, cpu, tb_, cpub);
  remember(key, t);
  free(x);
  free(w);
  free(b);
  free(y);
}

#ifdef HAVE_OPENBLAS
/* "math" attention with OpenBLAS, one head at a time: full Lq x Lk scores */
static void attn_blas(const float *q, const float *k, const float *v, int64_t BH, int64_t Lq,
                      int64_t Lk, int64_t D, float scale, float *s, float *out) {
  for (int64_t h = 0; h < BH; ++h) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Lq, (int)Lk, (int)D, scale,
                q + h * Lq * D, (int)D, k + h * Lk * D, (int)D, 0.0f, s, (int)Lk);
    mmp_cpu_softmax(s, Lq, Lk, s);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Lq, (int)D, (int)Lk, 1.0f, s,
                (int)Lk, v + h * Lk * D, (int)D, 0.0f, out + h * Lq * D, (int)D);
  }
}
#endif

static void bench_attention(const char *key, const char *label, int64_t B, int64_t H, int64_t Lq,
                            int64_t Lk, int64_t D) {
  float *q = rnd(B * H * Lq * D), *k = rnd(B * H * Lk * D), *v = rnd(B * H * Lk * D);
  float *o = rnd(B * H * Lq * D);
  float scale = 1.0f / sqrtf((float)D);
  double t, tb_ = 0, cpu, cpub = 0;
  TIME_BEST(t, mmp_cpu_attention(q, k, v, B, H, Lq, Lk, D, D, NULL, false, scale, o));
  cpu = g_cpu;
#ifdef HAVE_OPENBLAS
  float *s = rnd(Lq * Lk);
  TIME_BEST(tb_, attn_blas(q, k, v, B * H, Lq, Lk, D, scale, s, o));
  cpub = g_cpu;
  free(s);
#endif
  print_flops(label, 4.0 * B * H * Lq * Lk * D, t, cpu, tb_, cpub);
  remember(key, t);
  free(q);
  free(k);
  free(v);
  free(o);
}

static void bench_group_norm(const char *key, const char *label, int64_t N, int64_t C, int64_t S,
                             double copy_gbs) {
  float *x = rnd(N * C * S), *y = rnd(N * C * S), *g = rnd(C), *b = rnd(C);
  double t;
  TIME_BEST(t, mmp_cpu_group_norm(x, N, C, S, 32, g, b, 1e-5f, y));
  double gbs = 2.0 * N * C * S * sizeof(float) / t * 1e-9; /* read x once, write y once */
  printf("%-42s %8.2f %6.1f GB/s (memcpy on this machine: %.1f GB/s, %.0f%%)\n", label, t * 1e3,
         gbs, copy_gbs, 100.0 * gbs / copy_gbs);
  remember(key, t);
  free(x);
  free(y);
  free(g);
  free(b);
}

/* ------------------------------------------------------------- PyTorch */

static const char *torch_script =
    "import sys, time, torch, torch.nn.functional as F\n"
    "torch.set_num_threads(int(sys.argv[1])); reps = int(sys.argv[2]); quick = sys.argv[3] == '1'\n"
    "min_time = float(sys.argv[4])\n"
    "torch.manual_seed(0)\n"
    "def best(f):\n"
    "    t = time.perf_counter(); f(); b = time.perf_counter() - t\n"
    "    if b > 5.0: return b  # slow op: the warm-up run is the measurement\n"
    "    b = 1e30; acc = 0.0; r = 0\n"
    "    while r < reps or (acc < min_time and r < 1000):\n"
    "        t = time.perf_counter(); f(); d = time.perf_counter() - t\n"
    "        b = min(b, d); acc += d; r += 1\n"
    "    return b\n"
    "def mm(M, N, K, tb):\n"
    "    a = torch.randn(M, K); w = torch.randn(N, K) if tb else torch.randn(K, N)\n"
    "    return best(lambda: F.linear(a, w) if tb else torch.matmul(a, w))\n"
    "def attn(B, H, Lq, Lk, D):\n"
    "    q = torch.randn(B * H, Lq, D); k = torch.randn(B * H, Lk, D); v = torch.randn(B * H, Lk, D)\n"
    "    def f():\n"
    "        for h in range(B * H):\n"
    "            s = torch.baddbmm(torch.empty(1, Lq, Lk), q[h:h+1], k[h:h+1].transpose(1, 2), beta=0, alpha=D ** -0.5)\n"
    "            torch.bmm(s.softmax(-1), v[h:h+1])\n"
    "    return best(f)\n"
    "def conv(N, C, H, W, O):\n"
    "    x = torch.randn(N, C, H, W); w = torch.randn(O, C, 3, 3); b = torch.randn(O)\n"
    "    return best(lambda: F.conv2d(x, w, b, padding=1))\n"
    "def gn(N, C, S):\n"
    "    x = torch.randn(N, C, S); g = torch.randn(C); b = torch.randn(C)\n"
    "    return best(lambda: F.group_norm(x, 32, g, b, 1e-5))\n"
    "with torch.no_grad():\n"
    "    if not quick: print('mm4096', mm(4096, 4096, 4096, False), flush=True)\n"
    "    for key, M, N, K in [('lin1', 8192, 1280, 320), ('lin2', 8192, 320, 1280), ('lin3', 2048, 2560, 640),\n"
    "                         ('lin4', 512, 5120, 1280), ('lin5', 4096, 320, 320), ('lin6', 154, 320, 768)]:\n"
    "        print(key, mm(M, N, K, True), flush=True)\n"
    "    print('conv320', conv(2, 320, 64, 64, 320), flush=True)\n"
    "    print('conv1280', conv(2, 1280, 8, 8, 1280), flush=True)\n"
    "    print('attn_self', attn(2, 8, 4096, 4096, 40), flush=True)\n"
    "    print('attn_cross', attn(2, 8, 4096, 77, 40), flush=True)\n"
    "    print('gn', gn(2, 320, 4096), flush=True)\n";

static void compare_torch(int threads, bool quick) {
  if (access("/usr/bin/python3", X_OK) != 0 ||
      system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
    printf("\n--compare-torch: /usr/bin/python3 cannot import torch; skipped\n");
    return;
  }
  char path[] = "/tmp/mmpipe-bench-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return;
  FILE *f = fdopen(fd, "w");
  fputs(torch_script, f);
  fclose(f);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
           "/usr/bin/python3 %s %d %d %d %g",
           threads, path, threads, g_reps, quick ? 1 : 0, g_min_time);
  printf("\nPyTorch (same ops, %d threads, OpenBLAS, best of %d runs or of %.2f s of runs):\n",
         threads, g_reps, g_min_time);
  printf("%-12s %10s %10s %10s\n", "op", "torch ms", "mmpipe ms", "speedup");
  fflush(stdout);
  FILE *p = popen(cmd, "r");
  if (!p) {
    unlink(path);
    return;
  }
  char key[64];
  double t;
  while (fscanf(p, "%63s %lf", key, &t) == 2) {
    double ours = 0;
    for (int i = 0; i < g_nres; ++i)
      if (strcmp(g_res[i].key, key) == 0) ours = g_res[i].t;
    printf("%-12s %10.2f %10.2f %9.2fx\n", key, t * 1e3, ours * 1e3, ours > 0 ? t / ours : 0.0);
    fflush(stdout);
  }
  pclose(p);
  unlink(path);
}

int main(int argc, char **argv) {
  int threads = 0;
  bool torch = false, quick = false, half_only = false;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
      g_reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--min-time") == 0 && i + 1 < argc)
      g_min_time = atof(argv[++i]);
    else if (strcmp(argv[i], "--compare-torch") == 0)
      torch = true;
    else if (strcmp(argv[i], "--quick") == 0)
      quick = true;
    else if (strcmp(argv[i], "--half") == 0) /* only the products with half-precision weights */
      half_only = true;
    else {
      fprintf(stderr, "usage: %s [--threads N] [--reps R] [--min-time S] [--quick] [--half] [--compare-torch]\n",
              argv[0]);
      return 2;
    }
  }
  if (g_reps < 1) g_reps = 1;
  mmp_cpu_set_threads(threads); /* 0: MMPIPE_THREADS or online cores; also sets OpenBLAS */
  g_threads = mmp_cpu_threads();
  measure_peak();
  g_peak = g_peak_core * g_threads;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("mmpipe bench/ops: %d thread(s) on %ld online core(s); kernels: %s\n", g_threads, cores,
         mmp_cpu_isa() == MMP_CPU_ISA_AVX512_BF16 ? "AVX-512 14x32 (+ BF16 dot products for compute dtype bf16)"
         : mmp_cpu_isa() == MMP_CPU_ISA_AVX512 ? "AVX-512 14x32" : "portable C");
  printf("ISA %s, measured clock %.2f GHz, %.0f FMA pipe(s) (%.2f G FMA/s measured): fp32 peak %.1f GFLOP/s per core, "
         "%.1f GFLOP/s for %d thread(s)\n",
         g_isa, g_clock_ghz, g_fma_pipes, g_fma_rate, g_peak_core, g_peak, g_threads);
#ifdef HAVE_OPENBLAS
  printf("vs BLAS: time of OpenBLAS (%s) doing the same: sgemm; im2col + sgemm for conv2d; "
         "per-head sgemm + softmax + sgemm for attention\n",
         openblas_get_config());
#endif
  double l1 = 0, l5 = 0, l15 = 0;
  FILE *la = fopen("/proc/loadavg", "r");
  if (la) {
    if (fscanf(la, "%lf %lf %lf", &l1, &l5, &l15) != 3) l1 = l5 = l15 = 0;
    fclose(la);
  }
  printf("best of %d runs each (more until %.2f s measured); load average before the run %.2f %.2f %.2f\n\n",
         g_reps, g_min_time, l1, l5,
         l15);
  print_header();
  if (half_only) {
    bench_halves();
    return 0;
  }
  if (!quick) bench_sgemm("mm4096", "sgemm 4096x4096x4096 NN", 4096, 4096, 4096, false);
  bench_sgemm("lin1", "linear [8192x320]x[320x1280] (x W^T)", 8192, 1280, 320, true);
  bench_sgemm("lin2", "linear [8192x1280]x[1280x320]", 8192, 320, 1280, true);
  bench_sgemm("lin3", "linear [2048x640]x[640x2560]", 2048, 2560, 640, true);
  bench_sgemm("lin4", "linear [512x1280]x[1280x5120]", 512, 5120, 1280, true);
  bench_sgemm("lin5", "linear [4096x320]x[320x320]", 4096, 320, 320, true);
  bench_sgemm("lin6", "linear [154x768]x[768x320] (cross K/V)", 154, 320, 768, true);
  bench_halves();
  bench_conv("conv320", "conv2d 3x3 320->320 64x64 batch 2", 2, 320, 64, 64, 320);
  bench_conv("conv1280", "conv2d 3x3 1280->1280 8x8 batch 2", 2, 1280, 8, 8, 1280);
  bench_attention("attn_self", "attention self 2x8 heads 4096x4096 d40", 2, 8, 4096, 4096, 40);
  bench_attention("attn_cross", "attention cross 2x8 heads 4096x77 d40", 2, 8, 4096, 77, 40);
  double copy = measure_copy_gbs();
  bench_group_norm("gn", "group_norm [2,320,64x64] 32 groups", 2, 320, 4096, copy);
  if (torch) compare_torch(g_threads, quick);
  return 0;
}
