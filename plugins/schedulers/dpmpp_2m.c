/* plugins/schedulers/dpmpp_2m.c - DPM-Solver(++) multistep (Lu et al. 2022), equal to diffusers 0.19.3 DPMSolverMultistepScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"

static const mmp_key_t dpm_keys[] = {
    SCHED_KEYS_COMMON("\"linspace\""),
    SCHED_KEYS_THRESHOLD,
    SCHED_KEYS_RNG,
    {"solver_order", MMP_TYPE_INT, "2", "1, 2 (DPM-Solver++(2M)) or 3 (3M; not with sde-*)", 0, 0},
    {"algorithm_type", MMP_TYPE_STRING, "\"dpmsolver++\"",
     "dpmsolver++, dpmsolver, sde-dpmsolver++ or sde-dpmsolver", 0, 0},
    {"solver_type", MMP_TYPE_STRING, "\"midpoint\"", "second-order update: midpoint or heun", 0, 0},
    {"lower_order_final", MMP_TYPE_BOOL, "true",
     "lower-order final steps when there are fewer than 15 steps", 0, 0},
    {"use_karras_sigmas", MMP_TYPE_BOOL, "false",
     "timesteps from Karras et al. sigmas (rho = 7); overrides timestep_spacing", 0, 0},
    {"lambda_min_clipped", MMP_TYPE_FLOAT, NULL,
     "clip the smallest log-SNR (unset: -infinity, no clipping)", 0, 0},
    {"variance_type", MMP_TYPE_STRING, NULL,
     "learned or learned_range: the model output carries variances; the first 3 channels are "
     "used (unset: none)", 0, 0},
    SCHED_KEYS_END};

enum { ALG_DPMPP, ALG_DPM, ALG_SDE_DPMPP, ALG_SDE_DPM };

typedef struct dpm {
  sched_common_t c;
  int order, algorithm;
  bool heun, lower_order_final, karras, learned_var;
  double lambda_min_clipped;
  float *alpha_t, *sigma_t, *lambda_t; /* [T] float32 as torch */
  int64_t *ts;
  size_t nts;
  mmp_tensor_t *hist[3]; /* converted model outputs, newest last */
  int lower_order_nums;
} dpm_t;

static void dpm_reset(dpm_t *s) {
  sched_unref_all(s->hist, 3);
  s->lower_order_nums = 0;
}

static void dpm_destroy(void *self) {
  dpm_t *s = self;
  dpm_reset(s);
  sched_common_free(&s->c);
  free(s->alpha_t);
  free(s->sigma_t);
  free(s->lambda_t);
  free(s->ts);
  free(s);
}

static int dpm_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                      void **out) {
  static const char *const algs[] = {"dpmsolver++", "dpmsolver", "sde-dpmsolver++",
                                     "sde-dpmsolver", NULL};
  static const char *const solvers[] = {"midpoint", "heun", NULL};
  static const char *const variances[] = {"learned", "learned_range", NULL};
  (void)plugin;
  (void)ctx;
  dpm_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
  int64_t order = 2;
  int solver = 0, var = -1;
  int rc = sched_common_init(&s->c, "dpmpp_2m", cfg, SCHED_HAS_THRESHOLD | SCHED_HAS_RNG);
  if (rc == 0) rc = sched_get_int(cfg, "solver_order", 2, &order);
  if (rc == 0 && (order < 1 || order > 3))
    rc = sched_config_error(cfg, "solver_order", "must be 1, 2 or 3, not %lld", (long long)order);
  if (rc == 0) rc = sched_get_enum(cfg, "algorithm_type", "dpmsolver++", algs, &s->algorithm);
  if (rc == 0 && order == 3 && s->algorithm >= ALG_SDE_DPMPP)
    rc = sched_config_error(cfg, "solver_order",
                            "the SDE variants have no third-order update (use 1 or 2)");
  if (rc == 0) rc = sched_get_enum(cfg, "solver_type", "midpoint", solvers, &solver);
  if (rc == 0) rc = sched_get_bool(cfg, "lower_order_final", true, &s->lower_order_final);
  if (rc == 0) rc = sched_get_bool(cfg, "use_karras_sigmas", false, &s->karras);
  if (rc == 0) rc = sched_get_float(cfg, "lambda_min_clipped", -INFINITY, &s->lambda_min_clipped);
  if (rc == 0 && mmp_config_lookup(cfg, "variance_type"))
    rc = sched_get_enum(cfg, "variance_type", "learned", variances, &var);
  if (rc < 0) {
    dpm_destroy(s);
    return rc;
  }
  s->order = (int)order;
  s->heun = solver == 1;
  s->learned_var = var >= 0;
  int64_t T = s->c.num_train_timesteps;
  s->alpha_t = malloc((size_t)T * sizeof(float));
  s->sigma_t = malloc((size_t)T * sizeof(float));
  s->lambda_t = malloc((size_t)T * sizeof(float));
  if (!s->alpha_t || !s->sigma_t || !s->lambda_t) {
    dpm_destroy(s);
    return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
  }
  for (int64_t i = 0; i < T; i++) {
    float a = s->c.alphas_cumprod[i];
    s->alpha_t[i] = sqrtf(a);
    s->sigma_t[i] = sqrtf(1.0f - a);
    s->lambda_t[i] = logf(s->alpha_t[i]) - logf(s->sigma_t[i]);
  }
  *out = s;
  return 0;
}

static int dpm_set_timesteps(void *self, int num_inference_steps) {
  dpm_t *s = self;
  sched_common_t *c = &s->c;
  int64_t n, T = c->num_train_timesteps;
  int rc = sched_check_steps(c, num_inference_steps, &n);
  if (rc < 0) return rc;
  /* searchsorted(flip(lambda_t), lambda_min_clipped) */
  int64_t clipped = 0;
  while (clipped < T && (double)s->lambda_t[T - 1 - clipped] < s->lambda_min_clipped) clipped++;
  int64_t last = T - clipped;
  size_t cap = (size_t)n + 2;
  int64_t *ts = NULL;
  int64_t len = 0;
  if (s->karras) {
    float *sig = malloc((size_t)T * sizeof *sig), *logs = malloc((size_t)T * sizeof *logs);
    double *k = malloc((size_t)n * sizeof *k);
    ts = malloc(cap * sizeof *ts);
    if (!sig || !logs || !k || !ts) {
      free(sig);
      free(logs);
      free(k);
      free(ts);
      return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
    }
    for (int64_t i = 0; i < T; i++) {
      float a = c->alphas_cumprod[i];
      sig[i] = sqrtf((1.0f - a) / a);
      logs[i] = logf(sig[i]);
    }
    sched_karras((double)sig[0], (double)sig[T - 1], n, k);
    for (int64_t i = 0; i < n; i++)
      ts[n - 1 - i] = (int64_t)sched_np_round(sched_sigma_to_t(k[i], logs, T));
    len = n;
    free(sig);
    free(logs);
    free(k);
  } else if (c->spacing == SCHED_SPACING_LINSPACE) {
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    ts = malloc(cap * sizeof *ts);
    if (!v || !ts) {
      free(v);
      free(ts);
      return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
    }
    sched_np_linspace(0.0, (double)(last - 1), n + 1, v);
    for (int64_t i = 0; i < n; i++) ts[i] = (int64_t)sched_np_round(v[n - i]);
    len = n;
    free(v);
  } else if (c->spacing == SCHED_SPACING_LEADING) {
    int64_t ratio = last / (n + 1);
    ts = malloc(cap * sizeof *ts);
    if (!ts) return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
    for (int64_t i = 0; i < n; i++) ts[i] = (n - i) * ratio + c->steps_offset;
    len = n;
  } else {
    double ratio = (double)T / (double)n;
    len = sched_np_arange((double)last, 0.0, -ratio, NULL);
    double *v = malloc((size_t)(len > 0 ? len : 1) * sizeof *v);
    ts = malloc((size_t)(len > 0 ? len : 1) * sizeof *ts);
    if (!v || !ts) {
      free(v);
      free(ts);
      return mmp_error_set(MMP_ENOMEM, "dpmpp_2m: out of memory");
    }
    sched_np_arange((double)last, 0.0, -ratio, v);
    for (int64_t i = 0; i < len; i++) ts[i] = (int64_t)sched_np_round(v[i]) - 1;
    free(v);
  }
  /* np.unique(return_index=True), kept in order of first appearance */
  size_t cnt = 0;
  for (int64_t i = 0; i < len; i++) {
    bool seen = false;
    for (size_t j = 0; j < cnt && !seen; j++) seen = ts[j] == ts[i];
    if (!seen) ts[cnt++] = ts[i];
  }
  if (cnt == 0) {
    free(ts);
    return mmp_error_set(MMP_EINVAL, "dpmpp_2m: empty schedule");
  }
  if ((rc = sched_check_range(c, ts, cnt)) < 0) {
    free(ts);
    return rc;
  }
  free(s->ts);
  s->ts = ts;
  s->nts = cnt;
  dpm_reset(s);
  return 0;
}

static int dpm_timesteps(void *self, const int64_t **out, size_t *n) {
  dpm_t *s = self;
  *out = s->ts;
  *n = s->nts;
  return 0;
}

/* diffusers' convert_model_output: x0 (dpmsolver++) or epsilon (dpmsolver) */
static mmp_tensor_t *convert(dpm_t *s, const mmp_tensor_t *mo_in, int64_t t,
                             const mmp_tensor_t *sample) {
  sched_common_t *c = &s->c;
  float a = s->alpha_t[t], sg = s->sigma_t[t];
  mmp_tensor_t *mo = NULL, *tmp = NULL, *r = NULL;
  if (s->learned_var && c->prediction == SCHED_PRED_EPSILON && mo_in->ndim >= 2 &&
      mo_in->shape[1] > 3)
    mo = mmp_slice((mmp_tensor_t *)mo_in, 1, 0, 3, 1);
  else
    mo = mmp_tensor_ref((mmp_tensor_t *)mo_in);
  if (!mo) return NULL;
  if (!mmp_tensor_same_shape(mo, sample)) {
    mmp_tensor_unref(mo);
    mmp_error_set(MMP_ESHAPE, "dpmpp_2m: model output and sample differ in shape");
    return NULL;
  }
  bool plus = s->algorithm == ALG_DPMPP || s->algorithm == ALG_SDE_DPMPP;
  if (plus) {
    switch (c->prediction) {
    case SCHED_PRED_EPSILON:
      tmp = mmp_axpby(1.0, sample, -(double)sg, mo);
      r = mmp_scale(tmp, 1.0 / (double)a, 0.0);
      break;
    case SCHED_PRED_SAMPLE:
      r = mmp_tensor_ref(mo);
      break;
    case SCHED_PRED_V:
      r = mmp_axpby((double)a, sample, -(double)sg, mo);
      break;
    }
    mmp_tensor_unref(tmp);
    mmp_tensor_unref(mo);
    if (c->thresholding && r) {
      mmp_tensor_t *th = sched_threshold(c, r);
      mmp_tensor_unref(r);
      r = th;
    }
    return r;
  }
  switch (c->prediction) {
  case SCHED_PRED_EPSILON:
    r = mmp_tensor_ref(mo);
    break;
  case SCHED_PRED_SAMPLE:
    tmp = mmp_axpby(1.0, sample, -(double)a, mo);
    r = mmp_scale(tmp, 1.0 / (double)sg, 0.0);
    break;
  case SCHED_PRED_V:
    r = mmp_axpby((double)a, mo, (double)sg, sample);
    break;
  }
  mmp_tensor_unref(tmp);
  mmp_tensor_unref(mo);
  if (c->thresholding && r) {
    mmp_tensor_t *t1 = mmp_axpby(1.0, sample, -(double)sg, r);
    mmp_tensor_t *x0 = mmp_scale(t1, 1.0 / (double)a, 0.0);
    mmp_tensor_t *th = sched_threshold(c, x0);
    mmp_tensor_t *t2 = mmp_axpby(1.0, sample, -(double)a, th);
    mmp_tensor_t *eps = mmp_scale(t2, 1.0 / (double)sg, 0.0);
    mmp_tensor_unref(t1);
    mmp_tensor_unref(x0);
    mmp_tensor_unref(th);
    mmp_tensor_unref(t2);
    mmp_tensor_unref(r);
    r = eps;
  }
  return r;
}

/* x = cx * sample + sum_k cd[k] * D[k] + cn * noise */
static mmp_tensor_t *combine(float cx, const mmp_tensor_t *sample, int nd, const float *cd,
                             mmp_tensor_t *const *d, float cn, const mmp_tensor_t *noise) {
  mmp_tensor_t *acc = mmp_axpby((double)cx, sample, (double)cd[0], d[0]);
  for (int k = 1; k < nd && acc; k++) {
    mmp_tensor_t *nx = mmp_axpby(1.0, acc, (double)cd[k], d[k]);
    mmp_tensor_unref(acc);
    acc = nx;
  }
  if (noise && acc) {
    mmp_tensor_t *nx = mmp_axpby(1.0, acc, (double)cn, noise);
    mmp_tensor_unref(acc);
    acc = nx;
  }
  return acc;
}

static mmp_tensor_t *first_order(dpm_t *s, mmp_tensor_t *m, int64_t t_s, int64_t t_t,
                                 const mmp_tensor_t *sample, const mmp_tensor_t *noise) {
  float lt = s->lambda_t[t_t], ls = s->lambda_t[t_s];
  float at = s->alpha_t[t_t], as = s->alpha_t[t_s];
  float st = s->sigma_t[t_t], ss = s->sigma_t[t_s];
  float h = lt - ls;
  float cx = 0, c0 = 0, cn = 0;
  switch (s->algorithm) {
  case ALG_DPMPP:
    cx = st / ss;
    c0 = -(at * (expf(-h) - 1.0f));
    break;
  case ALG_DPM:
    cx = at / as;
    c0 = -(st * (expf(h) - 1.0f));
    break;
  case ALG_SDE_DPMPP:
    cx = st / ss * expf(-h);
    c0 = at * (1.0f - expf(-2.0f * h));
    cn = st * sqrtf(1.0f - expf(-2.0f * h));
    break;
  case ALG_SDE_DPM:
    cx = at / as;
    c0 = -(2.0f * (st * (expf(h) - 1.0f)));
    cn = st * sqrtf(expf(2.0f * h) - 1.0f);
    break;
  }
  return combine(cx, sample, 1, &c0, &m, cn, s->algorithm >= ALG_SDE_DPMPP ? noise : NULL);
}

static mmp_tensor_t *second_order(dpm_t *s, int64_t t_t, int64_t s0, int64_t s1,
                                  const mmp_tensor_t *sample, const mmp_tensor_t *noise) {
  mmp_tensor_t *m0 = s->hist[2], *m1 = s->hist[1];
  float lt = s->lambda_t[t_t], l0 = s->lambda_t[s0], l1 = s->lambda_t[s1];
  float at = s->alpha_t[t_t], a0 = s->alpha_t[s0];
  float st = s->sigma_t[t_t], sg0 = s->sigma_t[s0];
  float h = lt - l0, h0 = l0 - l1;
  float r0 = h0 / h;
  mmp_tensor_t *diff = mmp_sub(m0, m1);
  mmp_tensor_t *d1 = mmp_scale(diff, (double)(1.0f / r0), 0.0);
  mmp_tensor_unref(diff);
  if (!d1) return NULL;
  float cx = 0, c[2] = {0, 0}, cn = 0;
  float em = expf(-h) - 1.0f, ep = expf(h) - 1.0f;
  switch (s->algorithm) {
  case ALG_DPMPP:
    cx = st / sg0;
    c[0] = -(at * em);
    c[1] = s->heun ? at * (em / h + 1.0f) : -(0.5f * (at * em));
    break;
  case ALG_DPM:
    cx = at / a0;
    c[0] = -(st * ep);
    c[1] = s->heun ? -(st * (ep / h - 1.0f)) : -(0.5f * (st * ep));
    break;
  case ALG_SDE_DPMPP: {
    float e2 = 1.0f - expf(-2.0f * h);
    cx = st / sg0 * expf(-h);
    c[0] = at * e2;
    c[1] = s->heun ? at * (e2 / (-2.0f * h) + 1.0f) : 0.5f * (at * e2);
    cn = st * sqrtf(1.0f - expf(-2.0f * h));
    break;
  }
  case ALG_SDE_DPM:
    cx = at / a0;
    c[0] = -(2.0f * (st * ep));
    c[1] = s->heun ? -(2.0f * (st * (ep / h - 1.0f))) : -(st * ep);
    cn = st * sqrtf(expf(2.0f * h) - 1.0f);
    break;
  }
  mmp_tensor_t *d[2] = {m0, d1};
  mmp_tensor_t *r = combine(cx, sample, 2, c, d, cn, s->algorithm >= ALG_SDE_DPMPP ? noise : NULL);
  mmp_tensor_unref(d1);
  return r;
}

static mmp_tensor_t *third_order(dpm_t *s, int64_t t_t, int64_t s0, int64_t s1, int64_t s2,
                                 const mmp_tensor_t *sample) {
  mmp_tensor_t *m0 = s->hist[2], *m1 = s->hist[1], *m2 = s->hist[0];
  float lt = s->lambda_t[t_t], l0 = s->lambda_t[s0], l1 = s->lambda_t[s1], l2 = s->lambda_t[s2];
  float at = s->alpha_t[t_t], a0 = s->alpha_t[s0];
  float st = s->sigma_t[t_t], sg0 = s->sigma_t[s0];
  float h = lt - l0, h0 = l0 - l1, h1 = l1 - l2;
  float r0 = h0 / h, r1 = h1 / h;
  mmp_tensor_t *e01 = mmp_sub(m0, m1), *e12 = mmp_sub(m1, m2);
  mmp_tensor_t *d10 = mmp_scale(e01, (double)(1.0f / r0), 0.0);
  mmp_tensor_t *d11 = mmp_scale(e12, (double)(1.0f / r1), 0.0);
  mmp_tensor_t *dd = mmp_sub(d10, d11);
  mmp_tensor_t *d1 = mmp_axpby(1.0, d10, (double)(r0 / (r0 + r1)), dd);
  mmp_tensor_t *d2 = mmp_scale(dd, (double)(1.0f / (r0 + r1)), 0.0);
  mmp_tensor_unref(e01);
  mmp_tensor_unref(e12);
  mmp_tensor_unref(d10);
  mmp_tensor_unref(d11);
  mmp_tensor_unref(dd);
  mmp_tensor_t *r = NULL;
  if (d1 && d2) {
    float cx, c[3];
    if (s->algorithm == ALG_DPMPP) {
      float em = expf(-h) - 1.0f;
      cx = st / sg0;
      c[0] = -(at * em);
      c[1] = at * (em / h + 1.0f);
      c[2] = -(at * ((expf(-h) - 1.0f + h) / (h * h) - 0.5f));
    } else {
      float ep = expf(h) - 1.0f;
      cx = at / a0;
      c[0] = -(st * ep);
      c[1] = -(st * (ep / h - 1.0f));
      c[2] = -(st * ((expf(h) - 1.0f - h) / (h * h) - 0.5f));
    }
    mmp_tensor_t *d[3] = {m0, d1, d2};
    r = combine(cx, sample, 3, c, d, 0.0f, NULL);
  }
  mmp_tensor_unref(d1);
  mmp_tensor_unref(d2);
  return r;
}

static int dpm_step(void *self, size_t index, const mmp_tensor_t *mo, const mmp_tensor_t *sample,
                    const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  dpm_t *s = self;
  /* convert() checks the shapes */
  int rc = sched_step_begin(&s->c, s->ts != NULL, index, s->nts, NULL, sample, prev_out, pred_out);
  if (rc < 0) return rc;
  size_t len = s->nts;
  int64_t t = s->ts[index];
  int64_t prev_t = index == len - 1 ? 0 : s->ts[index + 1];
  bool lof = index == len - 1 && s->lower_order_final && len < 15;
  bool los = len >= 2 && index == len - 2 && s->lower_order_final && len < 15;
  mmp_tensor_t *m = convert(s, mo, t, sample);
  if (!m) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  mmp_tensor_unref(s->hist[0]);
  s->hist[0] = s->hist[1];
  s->hist[1] = s->hist[2];
  s->hist[2] = m;
  mmp_tensor_t *z = NULL;
  if (s->algorithm >= ALG_SDE_DPMPP) {
    z = sched_noise(&s->c, noise, sample);
    if (!z) return mmp_error_code();
  }
  mmp_tensor_t *prev;
  if (s->order == 1 || s->lower_order_nums < 1 || lof)
    prev = first_order(s, m, t, prev_t, sample, z);
  else if (s->order == 2 || s->lower_order_nums < 2 || los)
    prev = second_order(s, prev_t, t, s->ts[index - 1], sample, z);
  else
    prev = third_order(s, prev_t, t, s->ts[index - 1], s->ts[index - 2], sample);
  mmp_tensor_unref(z);
  if (!prev) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  if (s->lower_order_nums < s->order) s->lower_order_nums++;
  *prev_out = prev;
  return 0;
}

static int dpm_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                         const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  dpm_t *s = self;
  return sched_add_noise_alphas(&s->c, x0, noise, timesteps, out);
}

static int dpm_order(void *self) {
  (void)self;
  return 1;
}

/* the sde-* algorithms draw at every step */
static int dpm_step_noise(void *self, size_t index) {
  dpm_t *s = self;
  int rc = sched_check_index(&s->c, s->ts != NULL, index, s->nts);
  return rc < 0 ? rc : s->algorithm >= ALG_SDE_DPMPP;
}

static const mmp_scheduler_ops_t dpm_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "dpmpp_2m", "1.0",
                            "DPM-Solver++(2M) and relatives (diffusers 0.19.3 "
                            "DPMSolverMultistepScheduler)",
                            dpm_keys, dpm_create, dpm_destroy),
    .set_timesteps = dpm_set_timesteps,
    .timesteps = dpm_timesteps,
    .step = dpm_step,
    .add_noise = dpm_add_noise,
    .order = dpm_order,
    .step_noise = dpm_step_noise,
};

MMP_EXPORT int mmp_plugin_scheduler_dpmpp_2m_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_dpmpp_2m_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &dpm_ops.base);
}
