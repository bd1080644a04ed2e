/* core/cpu/norm.c - group_norm, layer_norm and softmax kernels. */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/dispatch.h"
#include "core/cpu/gemm.h"
#include "core/cpu/kernels.h"
#include "mmpipe/error.h"

/* Statistics are accumulated in float over short chunks (so the inner
 * loops vectorise) and the chunk sums in double; the variance is a second
 * pass over (x - mean)^2. That is at least as accurate as PyTorch's
 * float Welford, and the data is re-read from cache. */
#define CHUNK 256

/* The loops below are compiled for AVX-512, AVX2+FMA and the baseline,
 * one picked per call (core/cpu/dispatch.h). */
#define BODY static inline MMP_ALWAYS_INLINE

/* sum of (x - shift): with shift near the mean the float partial sums stay
 * small, so a large mean costs no accuracy */
BODY double sum_f_body(const float *x, int64_t n, float shift) {
  double tot = 0.0;
  for (int64_t i = 0; i < n; i += CHUNK) {
    int64_t m = n - i < CHUNK ? n - i : CHUNK;
    float acc[16] = {0};
    int64_t k = 0;
    for (; k + 16 <= m; k += 16)
      for (int t = 0; t < 16; ++t) acc[t] += x[i + k + t] - shift;
    float s = 0.0f;
    for (; k < m; ++k) s += x[i + k] - shift;
    for (int t = 0; t < 16; ++t) s += acc[t];
    tot += s;
  }
  return tot;
}
MMP_VARIANTS(double, sum_f, (const float *x, int64_t n, float shift), (x, n, shift))

BODY double sumsq_dev_body(const float *x, int64_t n, float mean) {
  double tot = 0.0;
  for (int64_t i = 0; i < n; i += CHUNK) {
    int64_t m = n - i < CHUNK ? n - i : CHUNK;
    float acc[16] = {0};
    int64_t k = 0;
    for (; k + 16 <= m; k += 16)
      for (int t = 0; t < 16; ++t) {
        float d = x[i + k + t] - mean;
        acc[t] += d * d;
      }
    float s = 0.0f;
    for (; k < m; ++k) {
      float d = x[i + k] - mean;
      s += d * d;
    }
    for (int t = 0; t < 16; ++t) s += acc[t];
    tot += s;
  }
  return tot;
}
MMP_VARIANTS(double, sumsq_dev, (const float *x, int64_t n, float mean), (x, n, mean))

/* y = (x - m) * a + b */
BODY void affine_body(const float *x, float *y, int64_t n, float m, float a, float b) {
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * a + b;
}
MMP_VARIANTS_VOID(affine, (const float *x, float *y, int64_t n, float m, float a, float b),
                  (x, y, n, m, a, b))

/* y = (x - mean) * rstd * gamma + beta, per element gamma/beta */
BODY void affine_vec_body(const float *x, float *y, int64_t n, float mean, float rstd,
                          const float *gamma, const float *beta) {
  if (gamma && beta)
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
  else if (gamma)
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * gamma[i];
  else if (beta)
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd + beta[i];
  else
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd;
}
MMP_VARIANTS_VOID(affine_vec,
                  (const float *x, float *y, int64_t n, float mean, float rstd,
                   const float *gamma, const float *beta),
                  (x, y, n, mean, rstd, gamma, beta))

/* ---- group norm ---- */

typedef struct gn_job {
  const float *x, *gamma, *beta;
  float *y;
  int64_t C, S, G, cg;
  float eps;
  bool silu;
} gn_job_t;

static void gn_task(int64_t t, void *user) {
  const gn_job_t *j = user;
  int64_t n = t / j->G, g = t % j->G;
  int64_t off = (n * j->C + g * j->cg) * j->S, cnt = j->cg * j->S;
  const float *x = j->x + off;
  float *y = j->y + off;
  double mean = x[0] + sum_f(x, cnt, x[0]) / (double)cnt;
  float fm = (float)mean;
  double var = sumsq_dev(x, cnt, fm) / (double)cnt;
  /* correct for mean having been rounded to float in the second pass */
  var -= ((double)fm - mean) * ((double)fm - mean);
  if (var < 0) var = 0;
  double rstd = 1.0 / sqrt(var + (double)j->eps);
  for (int64_t c = 0; c < j->cg; ++c) {
    int64_t ch = g * j->cg + c;
    double a = rstd * (j->gamma ? j->gamma[ch] : 1.0f);
    /* (x - fm) * a + (beta - (mean - fm) * a): no cancellation against a
     * large mean, and the float rounding of the mean is compensated */
    double b = (j->beta ? j->beta[ch] : 0.0f) - (mean - (double)fm) * a;
    affine(x + c * j->S, y + c * j->S, j->S, fm, (float)a, (float)b);
    /* while the channel is still in cache (a call inside this task runs
     * serially: the pool is busy with the tasks) */
    if (j->silu) mmp_cpu_silu(y + c * j->S, y + c * j->S, j->S);
  }
}

int mmp_cpu_group_norm(const float *x, int64_t N, int64_t C, int64_t S, int groups,
                       const float *gamma, const float *beta, float eps, float *y) {
  return mmp_cpu_group_norm_act(x, N, C, S, groups, gamma, beta, eps, false, y);
}

int mmp_cpu_group_norm_act(const float *x, int64_t N, int64_t C, int64_t S, int groups,
                           const float *gamma, const float *beta, float eps, bool silu, float *y) {
  if (N < 0 || C <= 0 || S < 0 || groups <= 0 || C % groups)
    return mmp_error_set(MMP_EINVAL, "group_norm: %d groups do not divide %lld channels", groups,
                         (long long)C);
  if (N == 0 || S == 0) return 0;
  if (!x || !y) return mmp_error_set(MMP_EINVAL, "group_norm: NULL operand");
  gn_job_t j = {x, gamma, beta, y, C, S, groups, C / groups, eps, silu};
  if (N * C * S < 32768)
    for (int64_t t = 0; t < N * groups; ++t) gn_task(t, &j);
  else
    mmp_cpu_parallel_for(N * groups, gn_task, &j);
  return 0;
}

/* ---- layer norm ---- */

typedef struct ln_job {
  const float *x, *gamma, *beta;
  float *y;
  int64_t rows, D, per;
  float eps;
} ln_job_t;

static void ln_task(int64_t t, void *user) {
  const ln_job_t *j = user;
  int64_t r0 = t * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
  for (int64_t r = r0; r < r1; ++r) {
    const float *x = j->x + r * j->D;
    float *y = j->y + r * j->D;
    double mean = x[0] + sum_f(x, j->D, x[0]) / (double)j->D;
    float fm = (float)mean;
    double var = sumsq_dev(x, j->D, fm) / (double)j->D;
    var -= ((double)fm - mean) * ((double)fm - mean);
    if (var < 0) var = 0;
    float rstd = (float)(1.0 / sqrt(var + (double)j->eps));
    /* (x - mean) computed against the float mean, off by < 1 ulp of mean */
    affine_vec(x, y, j->D, fm, rstd, j->gamma, j->beta);
  }
}

int mmp_cpu_layer_norm(const float *x, int64_t rows, int64_t D, const float *gamma,
                       const float *beta, float eps, float *y) {
  if (rows < 0 || D <= 0)
    return mmp_error_set(MMP_EINVAL, "layer_norm: bad sizes (rows %lld, D %lld)", (long long)rows,
                         (long long)D);
  if (rows == 0) return 0;
  if (!x || !y) return mmp_error_set(MMP_EINVAL, "layer_norm: NULL operand");
  int64_t per = 16384 / D + 1;
  ln_job_t j = {x, gamma, beta, y, rows, D, per, eps};
  int64_t nt = (rows + per - 1) / per;
  if (rows * D < 32768)
    for (int64_t t = 0; t < nt; ++t) ln_task(t, &j);
  else
    mmp_cpu_parallel_for(nt, ln_task, &j);
  return 0;
}

/* ---- softmax ---- */

BODY float max_f_body(const float *x, int64_t n) {
  float acc[16];
  for (int t = 0; t < 16; ++t) acc[t] = -INFINITY;
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    for (int t = 0; t < 16; ++t) acc[t] = x[k + t] > acc[t] ? x[k + t] : acc[t];
  float m = -INFINITY;
  for (; k < n; ++k) m = x[k] > m ? x[k] : m;
  for (int t = 0; t < 16; ++t) m = acc[t] > m ? acc[t] : m;
  return m;
}
MMP_VARIANTS(float, max_f, (const float *x, int64_t n), (x, n))

BODY void sub_f_body(const float *x, float *y, int64_t n, float m) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] - m;
}
MMP_VARIANTS_VOID(sub_f, (const float *x, float *y, int64_t n, float m), (x, y, n, m))

BODY void scale_f_body(float *y, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}
MMP_VARIANTS_VOID(scale_f, (float *y, int64_t n, float s), (y, n, s))

typedef struct sm_job {
  const float *x;
  float *y;
  int64_t rows, D, per;
} sm_job_t;

static void sm_task(int64_t t, void *user) {
  const sm_job_t *j = user;
  int64_t r0 = t * j->per, r1 = r0 + j->per < j->rows ? r0 + j->per : j->rows;
  for (int64_t r = r0; r < r1; ++r) {
    const float *x = j->x + r * j->D;
    float *y = j->y + r * j->D;
    float m = max_f(x, j->D);
    if (m == -INFINITY) m = 0.0f; /* all -inf: exp gives 0s, sum 0 -> NaN like PyTorch */
    sub_f(x, y, j->D, m);
    mmp_vexp(y, y, j->D);
    double s = sum_f(y, j->D, 0.0f);
    scale_f(y, j->D, (float)(1.0 / s));
  }
}

int mmp_cpu_softmax(const float *x, int64_t rows, int64_t D, float *y) {
  if (rows < 0 || D <= 0)
    return mmp_error_set(MMP_EINVAL, "softmax: bad sizes (rows %lld, D %lld)", (long long)rows,
                         (long long)D);
  if (rows == 0) return 0;
  if (!x || !y) return mmp_error_set(MMP_EINVAL, "softmax: NULL operand");
  int64_t per = 16384 / D + 1;
  sm_job_t j = {x, y, rows, D, per};
  int64_t nt = (rows + per - 1) / per;
  if (rows * D < 32768)
    for (int64_t t = 0; t < nt; ++t) sm_task(t, &j);
  else
    mmp_cpu_parallel_for(nt, sm_task, &j);
  return 0;
}
