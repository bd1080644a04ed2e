/* core/cpu/backward.c - the CPU kernels of the backward (gradient) ops and the AdamW update.
 *
 * Each kernel is the vector-Jacobian product of one forward kernel: given
 * the forward's inputs and the gradient of the loss with respect to its
 * output, it writes the gradient with respect to an input. Statistics that
 * the forward computed (means, variances, softmax normalisers) are
 * recomputed here rather than stored, so the forward pass keeps nothing
 * extra; sums that decide the result's accuracy (norm statistics, the
 * gradient sums of the norms) are accumulated in double. Kernels that
 * accumulate into one output row from several inputs (embedding rows,
 * weight gradients, attention's dK/dV) run that accumulation in a fixed
 * order, so results do not depend on the thread count.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/kernels.h"
#include "mmpipe/error.h"

/* ------------------------------------------------------------ activations */

typedef struct act_job {
  int act;
  const float *x, *g;
  float *dx;
  int64_t n;
} act_job_t;

#define ACT_CHUNK 16384

static double act_deriv(int act, double x) {
  switch (act) {
  case MMP_CPU_ACT_SILU: {
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
  }
  case MMP_CPU_ACT_GELU: {
    double cdf = 0.5 * (1.0 + erf(x * M_SQRT1_2));
    double pdf = exp(-0.5 * x * x) * (M_2_SQRTPI * M_SQRT1_2 * 0.5);
    return cdf + x * pdf;
  }
  case MMP_CPU_ACT_GELU_TANH: {
    const double beta = M_SQRT2 * M_2_SQRTPI * 0.5, kappa = 0.044715;
    double inner = beta * (x + kappa * x * x * x), t = tanh(inner);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * beta * (1.0 + 3.0 * kappa * x * x);
  }
  case MMP_CPU_ACT_QUICK_GELU: {
    double s = 1.0 / (1.0 + exp(-1.702 * x));
    return s + 1.702 * x * s * (1.0 - s);
  }
  case MMP_CPU_ACT_SIGMOID: {
    double s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 - s);
  }
  case MMP_CPU_ACT_TANH: {
    double t = tanh(x);
    return 1.0 - t * t;
  }
  case MMP_CPU_ACT_RELU: return x > 0.0 ? 1.0 : 0.0;
  default: return NAN;
  }
}

/* In float, one loop per activation (the formulas of act_deriv, which
 * remains the double-precision statement used by GEGLU). */
static void act_chunk(int64_t c, void *user) {
  act_job_t *j = user;
  int64_t i0 = c * ACT_CHUNK, i1 = i0 + ACT_CHUNK < j->n ? i0 + ACT_CHUNK : j->n;
  const float *x = j->x, *g = j->g;
  float *dx = j->dx;
  switch (j->act) {
  case MMP_CPU_ACT_SILU:
    for (int64_t i = i0; i < i1; ++i) {
      float s = 1.0f / (1.0f + expf(-x[i]));
      dx[i] = g[i] * (s * (1.0f + x[i] * (1.0f - s)));
    }
    break;
  case MMP_CPU_ACT_GELU:
    for (int64_t i = i0; i < i1; ++i) {
      float cdf = 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
      float pdf = expf(-0.5f * x[i] * x[i]) * (float)(M_2_SQRTPI * M_SQRT1_2 * 0.5);
      dx[i] = g[i] * (cdf + x[i] * pdf);
    }
    break;
  case MMP_CPU_ACT_QUICK_GELU:
    for (int64_t i = i0; i < i1; ++i) {
      float s = 1.0f / (1.0f + expf(-1.702f * x[i]));
      dx[i] = g[i] * (s + 1.702f * x[i] * s * (1.0f - s));
    }
    break;
  case MMP_CPU_ACT_SIGMOID:
    for (int64_t i = i0; i < i1; ++i) {
      float s = 1.0f / (1.0f + expf(-x[i]));
      dx[i] = g[i] * (s * (1.0f - s));
    }
    break;
  case MMP_CPU_ACT_TANH:
    for (int64_t i = i0; i < i1; ++i) {
      float t = tanhf(x[i]);
      dx[i] = g[i] * (1.0f - t * t);
    }
    break;
  case MMP_CPU_ACT_RELU:
    for (int64_t i = i0; i < i1; ++i) dx[i] = x[i] > 0.0f ? g[i] : 0.0f;
    break;
  default: /* gelu_tanh: the cubic term loses digits in float, keep double */
    for (int64_t i = i0; i < i1; ++i) dx[i] = (float)((double)g[i] * act_deriv(j->act, x[i]));
    break;
  }
}

int mmp_cpu_act_backward(int act, const float *x, const float *g, float *dx, int64_t n) {
  if (act < 0 || act >= MMP_CPU_ACT_COUNT)
    return mmp_error_set(MMP_EINVAL, "activation backward: unknown activation %d", act);
  act_job_t j = {act, x, g, dx, n};
  mmp_cpu_parallel_for((n + ACT_CHUNK - 1) / ACT_CHUNK, act_chunk, &j);
  return 0;
}

typedef struct geglu_job {
  const float *x, *g;
  float *dx;
  int64_t D;
} geglu_job_t;

static void geglu_row(int64_t r, void *user) {
  geglu_job_t *j = user;
  const float *h = j->x + r * 2 * j->D, *gate = h + j->D, *g = j->g + r * j->D;
  float *dh = j->dx + r * 2 * j->D, *dgate = dh + j->D;
  for (int64_t i = 0; i < j->D; ++i) {
    double x = gate[i];
    double gelu = 0.5 * x * (1.0 + erf(x * M_SQRT1_2));
    dh[i] = (float)((double)g[i] * gelu);
    dgate[i] = (float)((double)g[i] * h[i] * act_deriv(MMP_CPU_ACT_GELU, x));
  }
}

void mmp_cpu_geglu_backward(const float *x, const float *g, float *dx, int64_t rows, int64_t D) {
  geglu_job_t j = {x, g, dx, D};
  mmp_cpu_parallel_for(rows, geglu_row, &j);
}

/* ---------------------------------------------------------- normalisation */

/* dx of y = gamma * (x - mean) * rstd + beta over one set of @n elements
 * @x (with per-element gamma via @gam(i)), in double:
 *   xhat = (x - mean) * rstd,  gh = g * gamma
 *   dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) */
typedef struct norm_job {
  const float *x, *g, *gamma;
  float *dx;
  int64_t rows, D;     /* layer norm: rows x D */
  int64_t N, C, S, groups;
  float eps;
} norm_job_t;

static void layer_norm_row(int64_t r, void *user) {
  norm_job_t *j = user;
  const int64_t D = j->D;
  const float *x = j->x + r * D, *g = j->g + r * D;
  float *dx = j->dx + r * D;
  double mean = 0.0, var = 0.0;
  for (int64_t i = 0; i < D; ++i) mean += x[i];
  mean /= (double)D;
  for (int64_t i = 0; i < D; ++i) var += ((double)x[i] - mean) * ((double)x[i] - mean);
  var /= (double)D;
  double rstd = 1.0 / sqrt(var + (double)j->eps), sg = 0.0, sgx = 0.0;
  for (int64_t i = 0; i < D; ++i) {
    double gh = (double)g[i] * (j->gamma ? (double)j->gamma[i] : 1.0);
    sg += gh;
    sgx += gh * ((double)x[i] - mean) * rstd;
  }
  sg /= (double)D;
  sgx /= (double)D;
  for (int64_t i = 0; i < D; ++i) {
    double gh = (double)g[i] * (j->gamma ? (double)j->gamma[i] : 1.0);
    double xh = ((double)x[i] - mean) * rstd;
    dx[i] = (float)(rstd * (gh - sg - xh * sgx));
  }
}

int mmp_cpu_layer_norm_backward(const float *x, const float *g, const float *gamma, int64_t rows, int64_t D,
                                float eps, float *dx) {
  if (D <= 0) return mmp_error_set(MMP_EINVAL, "layer_norm backward: empty rows");
  norm_job_t j = {.x = x, .g = g, .gamma = gamma, .dx = dx, .rows = rows, .D = D, .eps = eps};
  mmp_cpu_parallel_for(rows, layer_norm_row, &j);
  return 0;
}

static void group_norm_group(int64_t t, void *user) {
  norm_job_t *j = user;
  const int64_t cg = j->C / j->groups, gi = t % j->groups, n = t / j->groups, S = j->S;
  const int64_t base = (n * j->C + gi * cg) * S, M = cg * S;
  const float *x = j->x + base, *g = j->g + base;
  float *dx = j->dx + base;
  double mean = 0.0, var = 0.0;
  for (int64_t i = 0; i < M; ++i) mean += x[i];
  mean /= (double)M;
  for (int64_t i = 0; i < M; ++i) var += ((double)x[i] - mean) * ((double)x[i] - mean);
  var /= (double)M;
  double rstd = 1.0 / sqrt(var + (double)j->eps), sg = 0.0, sgx = 0.0;
  for (int64_t c = 0; c < cg; ++c) {
    double gam = j->gamma ? (double)j->gamma[gi * cg + c] : 1.0;
    for (int64_t s = 0; s < S; ++s) {
      double gh = (double)g[c * S + s] * gam;
      sg += gh;
      sgx += gh * ((double)x[c * S + s] - mean) * rstd;
    }
  }
  sg /= (double)M;
  sgx /= (double)M;
  for (int64_t c = 0; c < cg; ++c) {
    double gam = j->gamma ? (double)j->gamma[gi * cg + c] : 1.0;
    for (int64_t s = 0; s < S; ++s) {
      double gh = (double)g[c * S + s] * gam, xh = ((double)x[c * S + s] - mean) * rstd;
      dx[c * S + s] = (float)(rstd * (gh - sg - xh * sgx));
    }
  }
}

int mmp_cpu_group_norm_backward(const float *x, const float *g, const float *gamma, int64_t N, int64_t C,
                                int64_t S, int groups, float eps, float *dx) {
  if (groups <= 0 || C % groups)
    return mmp_error_set(MMP_EINVAL, "group_norm backward: %d groups do not divide %lld channels", groups,
                         (long long)C);
  if (S <= 0 || C == 0) return 0;
  norm_job_t j = {.x = x, .g = g, .gamma = gamma, .dx = dx, .N = N, .C = C, .S = S, .groups = groups, .eps = eps};
  mmp_cpu_parallel_for(N * groups, group_norm_group, &j);
  return 0;
}

/* -------------------------------------------------------------- embedding */

typedef struct emb_job {
  const int64_t *id64;
  const int32_t *id32;
  int64_t n, V, D, pad;
  const float *g;
  float *dt;
} emb_job_t;

#define EMB_COLS 256

/* One block of columns over every id in order: each output element is
 * summed in the ids' order whatever the thread count. */
static void emb_cols(int64_t b, void *user) {
  emb_job_t *j = user;
  int64_t c0 = b * EMB_COLS, c1 = c0 + EMB_COLS < j->D ? c0 + EMB_COLS : j->D;
  for (int64_t i = 0; i < j->n; ++i) {
    int64_t id = j->id64 ? j->id64[i] : (int64_t)j->id32[i];
    if (id == j->pad) continue;
    float *row = j->dt + id * j->D;
    const float *g = j->g + i * j->D;
    for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
  }
}

int mmp_cpu_embedding_backward(const void *ids, bool ids_i64, int64_t n, const float *g, int64_t V, int64_t D,
                               int64_t padding_idx, float *dtable) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t id = ids_i64 ? ((const int64_t *)ids)[i] : (int64_t)((const int32_t *)ids)[i];
    if (id < 0 || id >= V)
      return mmp_error_set(MMP_EINVAL, "embedding backward: id %lld at position %lld is outside [0, %lld)",
                           (long long)id, (long long)i, (long long)V);
  }
  memset(dtable, 0, (size_t)(V * D) * sizeof(float));
  emb_job_t j = {ids_i64 ? ids : NULL, ids_i64 ? NULL : ids, n, V, D, padding_idx, g, dtable};
  mmp_cpu_parallel_for((D + EMB_COLS - 1) / EMB_COLS, emb_cols, &j);
  return 0;
}

/* ----------------------------------------------------------------- conv2d */

/* Geometry of one convolution (forward shapes). */
typedef struct conv_geo {
  int64_t N, C, H, W, O, KH, KW, OH, OW;
  int sh, sw, ph, pw, dh, dw, groups;
} conv_geo_t;

typedef struct col_job {
  const conv_geo_t *c;
  const float *x; /* im2col: image channels of one group */
  float *dx;      /* col2im: image channels of one group */
  float *col;     /* [cg * KH * KW, OH * OW] */
} col_job_t;

/* col[(ci, kh, kw), (oh, ow)] = x[ci, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (0 outside) */
static void im2col_row(int64_t r, void *user) {
  col_job_t *j = user;
  const conv_geo_t *c = j->c;
  int64_t ci = r / (c->KH * c->KW), kh = r / c->KW % c->KH, kw = r % c->KW;
  const float *x = j->x + ci * c->H * c->W;
  float *col = j->col + r * c->OH * c->OW;
  for (int64_t oh = 0; oh < c->OH; ++oh) {
    int64_t ih = oh * c->sh - c->ph + kh * c->dh;
    float *out = col + oh * c->OW;
    if (ih < 0 || ih >= c->H) {
      memset(out, 0, (size_t)c->OW * sizeof(float));
      continue;
    }
    for (int64_t ow = 0; ow < c->OW; ++ow) {
      int64_t iw = ow * c->sw - c->pw + kw * c->dw;
      out[ow] = iw >= 0 && iw < c->W ? x[ih * c->W + iw] : 0.0f;
    }
  }
}

/* dx[ci] = sum over (kh, kw, oh, ow) of col; one task per input channel so
 * every element is summed in one fixed order by one thread. */
static void col2im_chan(int64_t ci, void *user) {
  col_job_t *j = user;
  const conv_geo_t *c = j->c;
  float *dx = j->dx + ci * c->H * c->W;
  memset(dx, 0, (size_t)(c->H * c->W) * sizeof(float));
  for (int64_t kh = 0; kh < c->KH; ++kh)
    for (int64_t kw = 0; kw < c->KW; ++kw) {
      const float *col = j->col + ((ci * c->KH + kh) * c->KW + kw) * c->OH * c->OW;
      for (int64_t oh = 0; oh < c->OH; ++oh) {
        int64_t ih = oh * c->sh - c->ph + kh * c->dh;
        if (ih < 0 || ih >= c->H) continue;
        for (int64_t ow = 0; ow < c->OW; ++ow) {
          int64_t iw = ow * c->sw - c->pw + kw * c->dw;
          if (iw >= 0 && iw < c->W) dx[ih * c->W + iw] += col[oh * c->OW + ow];
        }
      }
    }
}

static int conv_geo(conv_geo_t *c, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                    int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
  if (sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0 || groups <= 0 || C % groups || O % groups)
    return mmp_error_set(MMP_EINVAL, "conv2d backward: bad stride/padding/dilation/groups");
  *c = (conv_geo_t){N, C, H, W, O, KH, KW, 0, 0, sh, sw, ph, pw, dh, dw, groups};
  c->OH = (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1;
  c->OW = (W + 2 * pw - dw * (KW - 1) - 1) / sw + 1;
  if (c->OH <= 0 || c->OW <= 0) return mmp_error_set(MMP_EINVAL, "conv2d backward: empty output");
  return 0;
}

int mmp_cpu_conv2d_backward_input(const float *g, const float *w, int64_t N, int64_t C, int64_t H, int64_t W,
                                  int64_t O, int64_t KH, int64_t KW, int sh, int sw, int ph, int pw, int dh, int dw,
                                  int groups, float *dx) {
  conv_geo_t c;
  int rc = conv_geo(&c, N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups);
  if (rc < 0) return rc;
  const int64_t cg = C / groups, og = O / groups, K = cg * KH * KW, P = c.OH * c.OW;
  float *col = malloc((size_t)(K * P) * sizeof(float));
  if (!col) return mmp_error_set(MMP_ENOMEM, "conv2d backward: out of memory for the column matrix");
  for (int64_t n = 0; n < N && rc == 0; ++n)
    for (int gi = 0; gi < groups && rc == 0; ++gi) {
      /* dcol[K, P] = W_g^T [K, og] @ G[og, P] */
      rc = mmp_cpu_sgemm(1, true, false, K, P, og, 1.0f, w + gi * og * K, K, 0, g + (n * O + gi * og) * P, P, 0,
                         0.0f, col, P, 0);
      if (rc < 0) break;
      col_job_t j = {&c, NULL, dx + (n * C + gi * cg) * H * W, col};
      mmp_cpu_parallel_for(cg, col2im_chan, &j);
    }
  free(col);
  return rc;
}

int mmp_cpu_conv2d_backward_weight(const float *x, const float *g, int64_t N, int64_t C, int64_t H, int64_t W,
                                   int64_t O, int64_t KH, int64_t KW, int sh, int sw, int ph, int pw, int dh, int dw,
                                   int groups, float *dw_out) {
  conv_geo_t c;
  int rc = conv_geo(&c, N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups);
  if (rc < 0) return rc;
  const int64_t cg = C / groups, og = O / groups, K = cg * KH * KW, P = c.OH * c.OW;
  float *col = malloc((size_t)(K * P) * sizeof(float));
  if (!col) return mmp_error_set(MMP_ENOMEM, "conv2d backward: out of memory for the column matrix");
  for (int64_t n = 0; n < N && rc == 0; ++n)
    for (int gi = 0; gi < groups && rc == 0; ++gi) {
      col_job_t j = {&c, x + (n * C + gi * cg) * H * W, NULL, col};
      mmp_cpu_parallel_for(K, im2col_row, &j);
      /* dW_g[og, K] (+)= G[og, P] @ col^T */
      rc = mmp_cpu_sgemm(1, false, true, og, K, P, 1.0f, g + (n * O + gi * og) * P, P, 0, col, P, 0,
                         n == 0 ? 0.0f : 1.0f, dw_out + gi * og * K, K, 0);
    }
  free(col);
  return rc;
}

/* -------------------------------------------------------------- attention */

/* The memory-efficient backward (as FlashAttention's): per (batch, head)
 * and block of QB queries, a first pass over the key blocks recomputes the
 * softmax normaliser (log-sum-exp) of each query row, a second pass
 * recomputes each QB x KB block of scores and probabilities and
 * accumulates
 *   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)) * scale,
 *   dQ += dS K,    dK += dS^T Q.
 * Memory: two QB x KB blocks per task; never Lq x Lk. One task owns a whole
 * (batch, head), so dK and dV are summed in one fixed order. */
#define ATT_QB 64
#define ATT_KB 64

typedef struct attb_job {
  const float *q, *k, *v, *o, *go;
  const uint8_t *mask;
  bool causal;
  float scale;
  float *dq, *dk, *dv;
  int64_t B, H, Lq, Lk, D, Dv;
  int failed;
} attb_job_t;

/* s[qn x kn] = scale * Q K^T with masked entries -inf */
static int att_scores(const attb_job_t *j, const float *q, const float *k, const uint8_t *mask, int64_t q0,
                      int64_t qn, int64_t k0, int64_t kn, float *s) {
  int rc = mmp_cpu_sgemm(1, false, true, qn, kn, j->D, j->scale, q + q0 * j->D, j->D, 0, k + k0 * j->D, j->D, 0, 0.0f,
                         s, ATT_KB, 0);
  if (rc < 0) return rc;
  for (int64_t i = 0; i < qn; ++i)
    for (int64_t c = 0; c < kn; ++c)
      if ((mask && mask[k0 + c]) || (j->causal && k0 + c > q0 + i)) s[i * ATT_KB + c] = -INFINITY;
  return 0;
}

static void attb_head(int64_t bh, void *user) {
  attb_job_t *j = user;
  const int64_t b = bh / j->H, D = j->D, Dv = j->Dv, Lq = j->Lq, Lk = j->Lk;
  const float *q = j->q + bh * Lq * D, *k = j->k + bh * Lk * D, *v = j->v + bh * Lk * Dv;
  const float *o = j->o + bh * Lq * Dv, *go = j->go + bh * Lq * Dv;
  float *dq = j->dq + bh * Lq * D, *dk = j->dk + bh * Lk * D, *dv = j->dv + bh * Lk * Dv;
  const uint8_t *mask = j->mask ? j->mask + b * Lk : NULL;
  float *s = malloc(2 * ATT_QB * ATT_KB * sizeof(float));
  if (!s) {
    __atomic_store_n(&j->failed, MMP_ENOMEM, __ATOMIC_RELAXED);
    return;
  }
  float *dp = s + ATT_QB * ATT_KB;
  float lse[ATT_QB], dd[ATT_QB];
  memset(dq, 0, (size_t)(Lq * D) * sizeof(float));
  memset(dk, 0, (size_t)(Lk * D) * sizeof(float));
  memset(dv, 0, (size_t)(Lk * Dv) * sizeof(float));
  int rc = 0;
  for (int64_t q0 = 0; q0 < Lq && rc == 0; q0 += ATT_QB) {
    int64_t qn = Lq - q0 < ATT_QB ? Lq - q0 : ATT_QB;
    int64_t kend = j->causal && q0 + qn < Lk ? q0 + qn : Lk;
    double m[ATT_QB], l[ATT_QB];
    for (int64_t i = 0; i < qn; ++i) m[i] = -INFINITY, l[i] = 0.0;
    for (int64_t k0 = 0; k0 < kend && rc == 0; k0 += ATT_KB) { /* pass 1: log-sum-exp per row */
      int64_t kn = kend - k0 < ATT_KB ? kend - k0 : ATT_KB;
      if ((rc = att_scores(j, q, k, mask, q0, qn, k0, kn, s)) < 0) break;
      for (int64_t i = 0; i < qn; ++i) {
        double mx = m[i];
        for (int64_t c = 0; c < kn; ++c) mx = s[i * ATT_KB + c] > mx ? s[i * ATT_KB + c] : mx;
        if (mx == -INFINITY) continue;
        double acc = l[i] * exp(m[i] - mx);
        const float mf = (float)mx;
        float part = 0.0f;
        for (int64_t c = 0; c < kn; ++c) part += expf(s[i * ATT_KB + c] - mf);
        acc += part;
        m[i] = mx;
        l[i] = acc;
      }
    }
    for (int64_t i = 0; i < qn; ++i) {
      lse[i] = m[i] == -INFINITY ? INFINITY : (float)(m[i] + log(l[i])); /* fully masked: P = 0 */
      double acc = 0.0;
      for (int64_t c = 0; c < Dv; ++c) acc += (double)go[(q0 + i) * Dv + c] * o[(q0 + i) * Dv + c];
      dd[i] = (float)acc;
    }
    for (int64_t k0 = 0; k0 < kend && rc == 0; k0 += ATT_KB) { /* pass 2: gradients */
      int64_t kn = kend - k0 < ATT_KB ? kend - k0 : ATT_KB;
      if ((rc = att_scores(j, q, k, mask, q0, qn, k0, kn, s)) < 0) break;
      for (int64_t i = 0; i < qn; ++i)
        for (int64_t c = 0; c < kn; ++c) s[i * ATT_KB + c] = expf(s[i * ATT_KB + c] - lse[i]);
      /* dV[k0:] += P^T dO */
      rc = mmp_cpu_sgemm(1, true, false, kn, Dv, qn, 1.0f, s, ATT_KB, 0, go + q0 * Dv, Dv, 0, 1.0f, dv + k0 * Dv, Dv,
                         0);
      /* dP = dO V^T */
      if (rc == 0)
        rc = mmp_cpu_sgemm(1, false, true, qn, kn, Dv, 1.0f, go + q0 * Dv, Dv, 0, v + k0 * Dv, Dv, 0, 0.0f, dp,
                           ATT_KB, 0);
      if (rc < 0) break;
      for (int64_t i = 0; i < qn; ++i)
        for (int64_t c = 0; c < kn; ++c)
          dp[i * ATT_KB + c] = s[i * ATT_KB + c] * (dp[i * ATT_KB + c] - dd[i]) * j->scale;
      /* dQ[q0:] += dS K;  dK[k0:] += dS^T Q */
      rc = mmp_cpu_sgemm(1, false, false, qn, D, kn, 1.0f, dp, ATT_KB, 0, k + k0 * D, D, 0, 1.0f, dq + q0 * D, D, 0);
      if (rc == 0)
        rc = mmp_cpu_sgemm(1, true, false, kn, D, qn, 1.0f, dp, ATT_KB, 0, q + q0 * D, D, 0, 1.0f, dk + k0 * D, D,
                           0);
    }
  }
  free(s);
  if (rc < 0) __atomic_store_n(&j->failed, rc, __ATOMIC_RELAXED);
}

int mmp_cpu_attention_backward(const float *q, const float *k, const float *v, const float *out, const float *gout,
                               int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv,
                               const uint8_t *key_mask, bool causal, float scale, float *dq, float *dk, float *dv) {
  attb_job_t j = {q, k, v, out, gout, key_mask, causal, scale, dq, dk, dv, B, H, Lq, Lk, D, Dv, 0};
  mmp_cpu_parallel_for(B * H, attb_head, &j);
  if (j.failed == MMP_ENOMEM) return mmp_error_set(MMP_ENOMEM, "attention backward: out of memory for a score block");
  return j.failed;
}

/* ------------------------------------------------------------------ AdamW */

typedef struct adamw_job {
  float *p, *m, *v;
  const float *g;
  int64_t n;
  float decay, b1, b2, omb1, omb2, step_size, bc2_sqrt, eps;
} adamw_job_t;

/* torch 1.13's _single_tensor_adamw, operation by operation in float:
 *   p *= 1 - lr*wd;  m = m*b1 + (1-b1)*g;  v = v*b2 + (1-b2)*g*g
 *   p += -step_size * m / (sqrt(v) / sqrt(bc2) + eps) */
static void adamw_chunk(int64_t c, void *user) {
  adamw_job_t *j = user;
  int64_t i0 = c * ACT_CHUNK, i1 = i0 + ACT_CHUNK < j->n ? i0 + ACT_CHUNK : j->n;
  for (int64_t i = i0; i < i1; ++i) {
    float g = j->g[i], p = j->p[i] * j->decay;
    float m = j->m[i] * j->b1 + j->omb1 * g;
    float v = j->v[i] * j->b2 + j->omb2 * g * g;
    float denom = sqrtf(v) / j->bc2_sqrt + j->eps;
    j->p[i] = p + -j->step_size * (m / denom);
    j->m[i] = m;
    j->v[i] = v;
  }
}

void mmp_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float decay, double beta1, double beta2,
                   float step_size, float bc2_sqrt, float eps) {
  /* 1 - beta is formed in double (Python) and only then rounded to float */
  adamw_job_t j = {p, m, v, g, n, decay, (float)beta1, (float)beta2, (float)(1.0 - beta1), (float)(1.0 - beta2),
                   step_size, bc2_sqrt, eps};
  mmp_cpu_parallel_for((n + ACT_CHUNK - 1) / ACT_CHUNK, adamw_chunk, &j);
}
