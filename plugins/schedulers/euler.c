/* plugins/schedulers/euler.c - Euler sampler of Karras et al. (2022), equal to diffusers 0.19.3 EulerDiscreteScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"
#include "plugins/schedulers/sigmas.h"

static const mmp_key_t euler_keys[] = {
    SCHED_KEYS_COMMON("\"linspace\""),
    SCHED_KEYS_RNG,
    {"interpolation_type", MMP_TYPE_STRING, "\"linear\"",
     "sigmas between training steps: linear (np.interp) or log_linear", 0, 0},
    {"use_karras_sigmas", MMP_TYPE_BOOL, "false", "Karras et al. sigma spacing (rho = 7)", 0, 0},
    {"s_churn", MMP_TYPE_FLOAT, "0.0", "stochasticity (0 = deterministic)", 0, 0},
    {"s_tmin", MMP_TYPE_FLOAT, "0.0", "churn only where sigma >= s_tmin", 0, 0},
    {"s_tmax", MMP_TYPE_FLOAT, NULL, "churn only where sigma <= s_tmax (unset: infinity)", 0, 0},
    {"s_noise", MMP_TYPE_FLOAT, "1.0", "scale of the churn noise", 0, 0},
    SCHED_KEYS_END};

typedef struct euler {
  sched_common_t c;
  bool log_linear, karras;
  double s_churn, s_tmin, s_tmax, s_noise;
  sched_sigmas_t sg;
} euler_t;

static void euler_destroy(void *self) {
  euler_t *s = self;
  sched_common_free(&s->c);
  sched_sigmas_free(&s->sg);
  free(s);
}

static int euler_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                        void **out) {
  static const char *const interps[] = {"linear", "log_linear", NULL};
  (void)plugin;
  (void)ctx;
  euler_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "euler: out of memory");
  int interp = 0;
  int rc = sched_common_init(&s->c, "euler", cfg, SCHED_HAS_RNG);
  if (rc == 0) rc = sched_get_enum(cfg, "interpolation_type", "linear", interps, &interp);
  if (rc == 0) rc = sched_get_bool(cfg, "use_karras_sigmas", false, &s->karras);
  if (rc == 0) rc = sched_get_float(cfg, "s_churn", 0.0, &s->s_churn);
  if (rc == 0 && s->s_churn < 0)
    rc = sched_config_error(cfg, "s_churn", "must not be negative, not %g", s->s_churn);
  if (rc == 0) rc = sched_get_float(cfg, "s_tmin", 0.0, &s->s_tmin);
  if (rc == 0) rc = sched_get_float(cfg, "s_tmax", INFINITY, &s->s_tmax);
  if (rc == 0) rc = sched_get_float(cfg, "s_noise", 1.0, &s->s_noise);
  if (rc < 0) {
    euler_destroy(s);
    return rc;
  }
  s->log_linear = interp == 1;
  *out = s;
  return 0;
}

static int euler_set_timesteps(void *self, int num_inference_steps) {
  euler_t *s = self;
  int64_t n;
  int rc = sched_check_steps(&s->c, num_inference_steps, &n);
  if (rc < 0) return rc;
  sched_sigmas_t sg;
  if ((rc = sched_sigmas_build(&s->c, n, s->log_linear, s->karras, &sg)) < 0) return rc;
  sched_sigmas_free(&s->sg);
  s->sg = sg;
  return 0;
}

static int euler_timesteps(void *self, const int64_t **out, size_t *n) {
  euler_t *s = self;
  *out = s->sg.timesteps;
  *n = s->sg.n;
  return 0;
}

static int euler_model_timesteps(void *self, const double **out, size_t *n) {
  euler_t *s = self;
  *out = s->sg.timesteps_f;
  *n = s->sg.n;
  return 0;
}

static int euler_step(void *self, size_t index, const mmp_tensor_t *mo, const mmp_tensor_t *sample,
                      const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  euler_t *s = self;
  sched_common_t *c = &s->c;
  int rc = sched_step_begin(c, s->sg.sigmas != NULL, index, s->sg.n, mo, sample, prev_out,
                            pred_out);
  if (rc < 0) return rc;
  float sigma = s->sg.sigmas[index];
  double gamma = 0.0;
  if ((float)s->s_tmin <= sigma && (double)sigma <= s->s_tmax) {
    gamma = s->s_churn / (double)(s->sg.nsig - 1);
    if (gamma > sqrt(2.0) - 1) gamma = sqrt(2.0) - 1;
  }
  float sigma_hat = sigma * (float)(gamma + 1.0);

  mmp_tensor_t *x = mmp_tensor_ref((mmp_tensor_t *)sample);
  /* diffusers draws the churn noise at every step; so do we when churning */
  if (s->s_churn > 0 || noise) {
    mmp_tensor_t *z = (s->s_churn > 0) ? sched_noise(c, noise, sample) : NULL;
    if (s->s_churn > 0 && !z) {
      mmp_tensor_unref(x);
      return mmp_error_code();
    }
    if (z && gamma > 0) {
      mmp_tensor_t *eps = mmp_scale(z, s->s_noise, 0.0);
      float k = sqrtf(sigma_hat * sigma_hat - sigma * sigma);
      mmp_tensor_t *x2 = mmp_axpby(1.0, x, (double)k, eps);
      mmp_tensor_unref(eps);
      mmp_tensor_unref(x);
      x = x2;
    }
    mmp_tensor_unref(z);
    if (!x) return mmp_error_code();
  }
  mmp_tensor_t *x0 = NULL;
  switch (c->prediction) {
  case SCHED_PRED_EPSILON:
    x0 = mmp_axpby(1.0, x, -(double)sigma_hat, mo);
    break;
  case SCHED_PRED_SAMPLE:
    x0 = mmp_tensor_ref((mmp_tensor_t *)mo);
    break;
  case SCHED_PRED_V: {
    float s2 = sigma * sigma + 1.0f;
    x0 = mmp_axpby((double)(-sigma / sqrtf(s2)), mo, 1.0 / (double)s2, x);
    break;
  }
  }
  mmp_tensor_t *diff = mmp_sub(x, x0);
  mmp_tensor_t *deriv = mmp_scale(diff, 1.0 / (double)sigma_hat, 0.0);
  float dt = s->sg.sigmas[index + 1] - sigma_hat;
  mmp_tensor_t *prev = deriv ? mmp_axpby(1.0, x, (double)dt, deriv) : NULL;
  mmp_tensor_unref(diff);
  mmp_tensor_unref(deriv);
  mmp_tensor_unref(x);
  return sched_step_end(prev, x0, prev_out, pred_out);
}

static int euler_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                           const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  euler_t *s = self;
  return sched_sigmas_add_noise(&s->c, &s->sg, x0, noise, timesteps, out);
}

static int euler_scale_model_input(void *self, size_t index, const mmp_tensor_t *sample,
                                   mmp_tensor_t **out) {
  euler_t *s = self;
  return sched_sigmas_scale_input(&s->sg, index, sample, out);
}

static double euler_init_noise_sigma(void *self) {
  euler_t *s = self;
  if (!s->sg.sigmas && euler_set_timesteps(s, 0) < 0) return 1.0;
  return sched_sigmas_init_noise(&s->c, &s->sg);
}

static int euler_order(void *self) {
  (void)self;
  return 1;
}

/* diffusers draws the churn noise at every step, used or not */
static int euler_step_noise(void *self, size_t index) {
  euler_t *s = self;
  int rc = sched_check_index(&s->c, s->sg.sigmas != NULL, index, s->sg.n);
  return rc < 0 ? rc : 1;
}

static const mmp_scheduler_ops_t euler_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "euler", "1.0",
                            "Euler sampler (diffusers 0.19.3 EulerDiscreteScheduler)", euler_keys,
                            euler_create, euler_destroy),
    .set_timesteps = euler_set_timesteps,
    .timesteps = euler_timesteps,
    .step = euler_step,
    .add_noise = euler_add_noise,
    .scale_model_input = euler_scale_model_input,
    .init_noise_sigma = euler_init_noise_sigma,
    .order = euler_order,
    .model_timesteps = euler_model_timesteps,
    .step_noise = euler_step_noise,
};

MMP_EXPORT int mmp_plugin_scheduler_euler_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_euler_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &euler_ops.base);
}
