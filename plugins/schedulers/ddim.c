/* plugins/schedulers/ddim.c - DDIM sampler (Song et al. 2020), equal to diffusers 0.19.3 DDIMScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"

static const mmp_key_t ddim_keys[] = {
    SCHED_KEYS_COMMON("\"leading\""),
    SCHED_KEYS_THRESHOLD,
    SCHED_KEYS_RNG,
    {"clip_sample", MMP_TYPE_BOOL, "true", "clip the predicted x0 to [-clip_sample_range, clip_sample_range]", 0, 0},
    {"clip_sample_range", MMP_TYPE_FLOAT, "1.0", "bound for clip_sample", 0, 0},
    {"set_alpha_to_one", MMP_TYPE_BOOL, "true",
     "the step after timestep 0 uses alpha_prod 1 (else alphas_cumprod[0])", 0, 0},
    {"rescale_betas_zero_snr", MMP_TYPE_BOOL, "false",
     "rescale betas to zero terminal SNR (Lin et al. 2023)", 0, 0},
    {"eta", MMP_TYPE_FLOAT, "0.0", "noise weight in [0, 1]: 0 = deterministic DDIM, 1 = DDPM-like", 0, 0},
    {"use_clipped_model_output", MMP_TYPE_BOOL, "false",
     "recompute epsilon from the clipped x0 (diffusers' step argument)", 0, 0},
    SCHED_KEYS_END};

typedef struct ddim {
  sched_common_t c;
  bool clip_sample, use_clipped;
  double clip_range, eta;
  float final_alpha_cumprod;
  int64_t n;        /* num_inference_steps of the current schedule */
  int64_t *ts;
  size_t nts;
} ddim_t;

static void ddim_destroy(void *self) {
  ddim_t *s = self;
  sched_common_free(&s->c);
  free(s->ts);
  free(s);
}

static int ddim_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out) {
  (void)plugin;
  (void)ctx;
  ddim_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "ddim: out of memory");
  int rc = sched_common_init(&s->c, "ddim", cfg,
                             SCHED_ALLOW_ZERO_SNR | SCHED_HAS_THRESHOLD | SCHED_HAS_RNG);
  bool one = true;
  if (rc == 0) rc = sched_get_bool(cfg, "clip_sample", true, &s->clip_sample);
  if (rc == 0) rc = sched_get_float(cfg, "clip_sample_range", 1.0, &s->clip_range);
  if (rc == 0 && s->clip_sample && !(s->clip_range > 0))
    rc = sched_config_error(cfg, "clip_sample_range", "must be positive, not %g", s->clip_range);
  if (rc == 0) rc = sched_get_bool(cfg, "set_alpha_to_one", true, &one);
  if (rc == 0) rc = sched_get_float(cfg, "eta", 0.0, &s->eta);
  if (rc == 0 && !(s->eta >= 0.0 && s->eta <= 1.0))
    rc = sched_config_error(cfg, "eta", "must be in [0, 1], not %g", s->eta);
  if (rc == 0) rc = sched_get_bool(cfg, "use_clipped_model_output", false, &s->use_clipped);
  if (rc < 0) {
    ddim_destroy(s);
    return rc;
  }
  s->final_alpha_cumprod = one ? 1.0f : s->c.alphas_cumprod[0];
  *out = s;
  return 0;
}

static int ddim_set_timesteps(void *self, int num_inference_steps) {
  ddim_t *s = self;
  int64_t n, *ts = NULL;
  size_t cnt = 0;
  int rc = sched_plain_timesteps(&s->c, num_inference_steps, &ts, &cnt, &n);
  if (rc < 0) return rc;
  free(s->ts);
  s->ts = ts;
  s->nts = cnt;
  s->n = n;
  return 0;
}

static int ddim_timesteps(void *self, const int64_t **out, size_t *n) {
  ddim_t *s = self;
  *out = s->ts;
  *n = s->nts;
  return 0;
}

static int ddim_step(void *self, size_t index, const mmp_tensor_t *mo, const mmp_tensor_t *sample,
                     const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  ddim_t *s = self;
  sched_common_t *c = &s->c;
  int rc = sched_step_begin(c, s->ts != NULL, index, s->nts, mo, sample, prev_out, pred_out);
  if (rc < 0) return rc;
  int64_t t = s->ts[index];
  int64_t prev_t = t - c->num_train_timesteps / s->n;
  float a_t = c->alphas_cumprod[t];
  float a_prev = sched_alpha_prod(c, prev_t, s->final_alpha_cumprod);
  float b_t = 1.0f - a_t;
  float sa = sqrtf(a_t), sb = sqrtf(b_t);

  mmp_tensor_t *x0 = NULL, *eps = NULL, *tmp = NULL;
  switch (c->prediction) {
  case SCHED_PRED_EPSILON:
    tmp = mmp_axpby(1.0, sample, -(double)sb, mo);
    x0 = mmp_scale(tmp, 1.0 / (double)sa, 0.0);
    eps = mmp_tensor_ref((mmp_tensor_t *)mo);
    break;
  case SCHED_PRED_SAMPLE:
    x0 = mmp_tensor_ref((mmp_tensor_t *)mo);
    tmp = mmp_axpby(1.0, sample, -(double)sa, x0);
    eps = mmp_scale(tmp, 1.0 / (double)sb, 0.0);
    break;
  case SCHED_PRED_V:
    x0 = mmp_axpby((double)sa, sample, -(double)sb, mo);
    eps = mmp_axpby((double)sa, mo, (double)sb, sample);
    break;
  }
  mmp_tensor_unref(tmp);
  x0 = sched_clip_or_threshold(c, x0, s->clip_sample, s->clip_range);

  float b_prev = 1.0f - a_prev;
  float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
  float std = (float)s->eta * sqrtf(variance);
  if (s->use_clipped && x0 && eps) {
    mmp_tensor_unref(eps);
    tmp = mmp_axpby(1.0, sample, -(double)sa, x0);
    eps = mmp_scale(tmp, 1.0 / (double)sb, 0.0);
    mmp_tensor_unref(tmp);
  }
  float dir = 1.0f - a_prev - std * std;
  dir = sqrtf(dir > 0.0f ? dir : 0.0f);
  mmp_tensor_t *prev = (x0 && eps) ? mmp_axpby((double)sqrtf(a_prev), x0, (double)dir, eps) : NULL;
  if (prev && s->eta > 0) {
    mmp_tensor_t *z = sched_noise(c, noise, sample);
    mmp_tensor_t *p2 = z ? mmp_axpby(1.0, prev, (double)std, z) : NULL;
    mmp_tensor_unref(z);
    mmp_tensor_unref(prev);
    prev = p2;
  }
  mmp_tensor_unref(eps);
  return sched_step_end(prev, x0, prev_out, pred_out);
}

static int ddim_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                          const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  ddim_t *s = self;
  return sched_add_noise_alphas(&s->c, x0, noise, timesteps, out);
}

static int ddim_order(void *self) {
  (void)self;
  return 1;
}

/* diffusers draws variance_noise at every step when eta > 0 */
static int ddim_step_noise(void *self, size_t index) {
  ddim_t *s = self;
  int rc = sched_check_index(&s->c, s->ts != NULL, index, s->nts);
  return rc < 0 ? rc : s->eta > 0;
}

static const mmp_scheduler_ops_t ddim_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "ddim", "1.0",
                            "DDIM sampler (diffusers 0.19.3 DDIMScheduler)", ddim_keys, ddim_create,
                            ddim_destroy),
    .set_timesteps = ddim_set_timesteps,
    .timesteps = ddim_timesteps,
    .step = ddim_step,
    .add_noise = ddim_add_noise,
    .order = ddim_order,
    .step_noise = ddim_step_noise,
};

MMP_EXPORT int mmp_plugin_scheduler_ddim_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_ddim_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ddim_ops.base);
}
