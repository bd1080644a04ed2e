/* core/cpu/activation.c - elementwise activations: SiLU, GELU (erf, tanh), quick GELU, GEGLU. */
#include "config.h"

#include <math.h>

#include "core/cpu/gemm.h"
#include "core/cpu/kernels.h"

/* Every sigmoid-shaped activation is written as x / (1 + exp(-c u)), which
 * keeps full relative accuracy in both tails (no 1 + tanh or 1 + erf
 * cancellation); exp is the vectorised ~1 ulp mmp_vexp. The erf GELU uses
 * libm's erfcf for the same reason: 0.5 x erfc(-x/sqrt 2), or on AVX-512 a
 * vectorised erfc of the same accuracy class (mmp_vgelu_avx512). */

#define BLK 1024     /* elements per stack block (aliasing-safe) */
#define PAR 65536    /* elements per parallel task */

#ifdef MMP_HAVE_X86_DISPATCH
void mmp_vgelu_avx512(const float *x, float *y, int64_t n);
#endif

typedef enum { ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_QUICK } act_t;

static void act_block(act_t a, const float *x, float *y, int64_t n) {
  float t[BLK];
  for (int64_t i0 = 0; i0 < n; i0 += BLK) {
    int64_t m = n - i0 < BLK ? n - i0 : BLK;
    const float *xs = x + i0;
    float *ys = y + i0;
    switch (a) {
      case ACT_SILU:
        for (int64_t i = 0; i < m; ++i) t[i] = -xs[i];
        break;
      case ACT_QUICK:
        for (int64_t i = 0; i < m; ++i) t[i] = -1.702f * xs[i];
        break;
      case ACT_GELU_TANH:
        /* 1 + tanh(u) = 2 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3) */
        for (int64_t i = 0; i < m; ++i) {
          float v = xs[i];
          t[i] = -2.0f * 0.7978845608028654f * (v + 0.044715f * v * v * v);
        }
        break;
      case ACT_GELU:
#ifdef MMP_HAVE_X86_DISPATCH
        if (mmp_cpu_isa() >= MMP_CPU_ISA_AVX512) {
          mmp_vgelu_avx512(xs, ys, m);
          continue;
        }
#endif
        for (int64_t i = 0; i < m; ++i) ys[i] = 0.5f * xs[i] * erfcf(-xs[i] * 0.70710678118654752f);
        continue;
    }
    mmp_vexp(t, t, m);
    for (int64_t i = 0; i < m; ++i) ys[i] = xs[i] / (1.0f + t[i]);
  }
}

typedef struct act_job {
  act_t a;
  const float *x;
  float *y;
  int64_t n;
} act_job_t;

static void act_task(int64_t t, void *user) {
  const act_job_t *j = user;
  int64_t i0 = t * PAR, m = j->n - i0 < PAR ? j->n - i0 : PAR;
  act_block(j->a, j->x + i0, j->y + i0, m);
}

static void act_run(act_t a, const float *x, float *y, int64_t n) {
  if (n <= 0) return;
  if (n <= PAR) {
    act_block(a, x, y, n);
    return;
  }
  act_job_t j = {a, x, y, n};
  mmp_cpu_parallel_for((n + PAR - 1) / PAR, act_task, &j);
}

void mmp_cpu_silu(const float *x, float *y, int64_t n) { act_run(ACT_SILU, x, y, n); }
void mmp_cpu_gelu(const float *x, float *y, int64_t n) { act_run(ACT_GELU, x, y, n); }
void mmp_cpu_gelu_tanh(const float *x, float *y, int64_t n) { act_run(ACT_GELU_TANH, x, y, n); }
void mmp_cpu_quick_gelu(const float *x, float *y, int64_t n) { act_run(ACT_QUICK, x, y, n); }

/* ---- GEGLU: y[r] = x[r, :D] * gelu(x[r, D:]) ---- */

typedef struct geglu_job {
  const float *x;
  float *y;
  int64_t rows, D, per;
} geglu_job_t;

static void geglu_task(int64_t t, void *user) {
  const geglu_job_t *j = user;
  int64_t r0 = t * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
  float g[BLK];
  for (int64_t r = r0; r < r1; ++r) {
    const float *xa = j->x + r * 2 * j->D, *xg = xa + j->D;
    float *y = j->y + r * j->D;
    for (int64_t i0 = 0; i0 < j->D; i0 += BLK) {
      int64_t m = j->D - i0 < BLK ? j->D - i0 : BLK;
      act_block(ACT_GELU, xg + i0, g, m);
      for (int64_t i = 0; i < m; ++i) y[i0 + i] = xa[i0 + i] * g[i];
    }
  }
}

void mmp_cpu_geglu(const float *x, float *y, int64_t rows, int64_t D) {
  if (rows <= 0 || D <= 0) return;
  int64_t per = PAR / D + 1;
  geglu_job_t j = {x, y, rows, D, per};
  int64_t nt = (rows + per - 1) / per;
  if (rows * D <= PAR)
    for (int64_t t = 0; t < nt; ++t) geglu_task(t, &j);
  else
    mmp_cpu_parallel_for(nt, geglu_task, &j);
}
