/* plugins/schedulers/euler_ancestral.c - ancestral Euler sampler, equal to diffusers 0.19.3 EulerAncestralDiscreteScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"
#include "plugins/schedulers/sigmas.h"

static const mmp_key_t ea_keys[] = {
    SCHED_KEYS_COMMON("\"linspace\""),
    SCHED_KEYS_RNG,
    SCHED_KEYS_END};

typedef struct ea {
  sched_common_t c;
  sched_sigmas_t sg;
} ea_t;

static void ea_destroy(void *self) {
  ea_t *s = self;
  sched_common_free(&s->c);
  sched_sigmas_free(&s->sg);
  free(s);
}

static int ea_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                     void **out) {
  (void)plugin;
  (void)ctx;
  ea_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "euler_ancestral: out of memory");
  int rc = sched_common_init(&s->c, "euler_ancestral", cfg, SCHED_HAS_RNG | SCHED_NO_PRED_SAMPLE);
  if (rc < 0) {
    ea_destroy(s);
    return rc;
  }
  *out = s;
  return 0;
}

static int ea_set_timesteps(void *self, int num_inference_steps) {
  ea_t *s = self;
  int64_t n;
  int rc = sched_check_steps(&s->c, num_inference_steps, &n);
  if (rc < 0) return rc;
  sched_sigmas_t sg;
  if ((rc = sched_sigmas_build(&s->c, n, false, false, &sg)) < 0) return rc;
  sched_sigmas_free(&s->sg);
  s->sg = sg;
  return 0;
}

static int ea_timesteps(void *self, const int64_t **out, size_t *n) {
  ea_t *s = self;
  *out = s->sg.timesteps;
  *n = s->sg.n;
  return 0;
}

static int ea_model_timesteps(void *self, const double **out, size_t *n) {
  ea_t *s = self;
  *out = s->sg.timesteps_f;
  *n = s->sg.n;
  return 0;
}

static int ea_step(void *self, size_t index, const mmp_tensor_t *mo, const mmp_tensor_t *sample,
                   const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  ea_t *s = self;
  sched_common_t *c = &s->c;
  int rc = sched_step_begin(c, s->sg.sigmas != NULL, index, s->sg.n, mo, sample, prev_out,
                            pred_out);
  if (rc < 0) return rc;
  float sigma = s->sg.sigmas[index];
  mmp_tensor_t *x0 = NULL;
  if (c->prediction == SCHED_PRED_EPSILON) {
    x0 = mmp_axpby(1.0, sample, -(double)sigma, mo);
  } else {
    float s2 = sigma * sigma + 1.0f;
    x0 = mmp_axpby((double)(-sigma / sqrtf(s2)), mo, 1.0 / (double)s2, sample);
  }
  float sf = sigma, st = s->sg.sigmas[index + 1];
  float up2 = (st * st * (sf * sf - st * st)) / (sf * sf);
  float sigma_up = sqrtf(up2 > 0.0f ? up2 : 0.0f);
  float down2 = st * st - sigma_up * sigma_up;
  float sigma_down = sqrtf(down2 > 0.0f ? down2 : 0.0f); /* rounding could make it -0 */
  mmp_tensor_t *diff = mmp_sub(sample, x0);
  mmp_tensor_t *deriv = mmp_scale(diff, 1.0 / (double)sigma, 0.0);
  float dt = sigma_down - sigma;
  mmp_tensor_t *prev = deriv ? mmp_axpby(1.0, sample, (double)dt, deriv) : NULL;
  mmp_tensor_unref(diff);
  mmp_tensor_unref(deriv);
  mmp_tensor_t *z = prev ? sched_noise(c, noise, sample) : NULL;
  mmp_tensor_t *p2 = z ? mmp_axpby(1.0, prev, (double)sigma_up, z) : NULL;
  mmp_tensor_unref(z);
  mmp_tensor_unref(prev);
  return sched_step_end(p2, x0, prev_out, pred_out);
}

static int ea_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                        const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  ea_t *s = self;
  return sched_sigmas_add_noise(&s->c, &s->sg, x0, noise, timesteps, out);
}

static int ea_scale_model_input(void *self, size_t index, const mmp_tensor_t *sample,
                                mmp_tensor_t **out) {
  ea_t *s = self;
  return sched_sigmas_scale_input(&s->sg, index, sample, out);
}

static double ea_init_noise_sigma(void *self) {
  ea_t *s = self;
  if (!s->sg.sigmas && ea_set_timesteps(s, 0) < 0) return 1.0;
  return sched_sigmas_init_noise(&s->c, &s->sg);
}

static int ea_order(void *self) {
  (void)self;
  return 1;
}

/* every step draws (the last one too, where sigma_up is 0) */
static int ea_step_noise(void *self, size_t index) {
  ea_t *s = self;
  int rc = sched_check_index(&s->c, s->sg.sigmas != NULL, index, s->sg.n);
  return rc < 0 ? rc : 1;
}

static const mmp_scheduler_ops_t ea_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "euler_ancestral", "1.0",
                            "ancestral Euler sampler (diffusers 0.19.3 "
                            "EulerAncestralDiscreteScheduler)",
                            ea_keys, ea_create, ea_destroy),
    .set_timesteps = ea_set_timesteps,
    .timesteps = ea_timesteps,
    .step = ea_step,
    .add_noise = ea_add_noise,
    .scale_model_input = ea_scale_model_input,
    .init_noise_sigma = ea_init_noise_sigma,
    .order = ea_order,
    .model_timesteps = ea_model_timesteps,
    .step_noise = ea_step_noise,
};

MMP_EXPORT int mmp_plugin_scheduler_euler_ancestral_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_euler_ancestral_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ea_ops.base);
}
