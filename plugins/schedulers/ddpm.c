/* plugins/schedulers/ddpm.c - DDPM ancestral sampler (Ho et al. 2020), equal to diffusers 0.19.3 DDPMScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"

static const mmp_key_t ddpm_keys[] = {
    SCHED_KEYS_COMMON("\"leading\""),
    SCHED_KEYS_THRESHOLD,
    SCHED_KEYS_RNG,
    {"variance_type", MMP_TYPE_STRING, "\"fixed_small\"",
     "fixed_small, fixed_small_log, fixed_large, learned or learned_range "
     "(learned*: the model output has 2x channels, the second half the variance)", 0, 0},
    {"clip_sample", MMP_TYPE_BOOL, "true", "clip the predicted x0 to [-clip_sample_range, clip_sample_range]", 0, 0},
    {"clip_sample_range", MMP_TYPE_FLOAT, "1.0", "bound for clip_sample", 0, 0},
    SCHED_KEYS_END};

enum { VAR_FIXED_SMALL, VAR_FIXED_SMALL_LOG, VAR_FIXED_LARGE, VAR_LEARNED, VAR_LEARNED_RANGE };

typedef struct ddpm {
  sched_common_t c;
  int variance;
  bool clip_sample;
  double clip_range;
  int64_t n;
  int64_t *ts;
  size_t nts;
} ddpm_t;

static void ddpm_destroy(void *self) {
  ddpm_t *s = self;
  sched_common_free(&s->c);
  free(s->ts);
  free(s);
}

static int ddpm_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out) {
  static const char *const variances[] = {"fixed_small", "fixed_small_log", "fixed_large",
                                          "learned", "learned_range", NULL};
  (void)plugin;
  (void)ctx;
  ddpm_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "ddpm: out of memory");
  int rc = sched_common_init(&s->c, "ddpm", cfg,
                             SCHED_ALLOW_SIGMOID | SCHED_HAS_THRESHOLD | SCHED_HAS_RNG);
  if (rc == 0) rc = sched_get_enum(cfg, "variance_type", "fixed_small", variances, &s->variance);
  if (rc == 0) rc = sched_get_bool(cfg, "clip_sample", true, &s->clip_sample);
  if (rc == 0) rc = sched_get_float(cfg, "clip_sample_range", 1.0, &s->clip_range);
  if (rc == 0 && s->clip_sample && !(s->clip_range > 0))
    rc = sched_config_error(cfg, "clip_sample_range", "must be positive, not %g", s->clip_range);
  if (rc < 0) {
    ddpm_destroy(s);
    return rc;
  }
  *out = s;
  return 0;
}

static int ddpm_set_timesteps(void *self, int num_inference_steps) {
  ddpm_t *s = self;
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

static int ddpm_timesteps(void *self, const int64_t **out, size_t *n) {
  ddpm_t *s = self;
  *out = s->ts;
  *n = s->nts;
  return 0;
}

static int ddpm_step(void *self, size_t index, const mmp_tensor_t *mo_in, const mmp_tensor_t *sample,
                     const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  ddpm_t *s = self;
  sched_common_t *c = &s->c;
  /* the shape check waits for the learned-variance split below */
  int rc = sched_step_begin(c, s->ts != NULL, index, s->nts, NULL, sample, prev_out, pred_out);
  if (rc < 0) return rc;
  int64_t t = s->ts[index];
  int64_t prev_t = t - c->num_train_timesteps / s->n;

  /* learned variances: the model output carries the variance in its second
   * half of channels */
  mmp_tensor_t *mo = NULL, *pv = NULL;
  bool learned = s->variance == VAR_LEARNED || s->variance == VAR_LEARNED_RANGE;
  if (learned && mo_in->ndim >= 2 && sample->ndim >= 2 && mo_in->shape[1] == sample->shape[1] * 2) {
    mmp_tensor_t *parts[2];
    int64_t sizes[2] = {sample->shape[1], sample->shape[1]};
    if (mmp_split((mmp_tensor_t *)mo_in, 2, sizes, 1, parts) < 0) return mmp_error_code();
    mo = parts[0];
    pv = parts[1];
  } else {
    mo = mmp_tensor_ref((mmp_tensor_t *)mo_in);
  }
  if (!mmp_tensor_same_shape(mo, sample)) {
    mmp_tensor_unref(mo);
    mmp_tensor_unref(pv);
    return mmp_error_set(MMP_ESHAPE, "ddpm: model output and sample differ in shape%s",
                         learned ? " (learned variances need 2x channels)" : "");
  }

  float a_t = c->alphas_cumprod[t];
  float a_prev = sched_alpha_prod(c, prev_t, 1.0f);
  float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
  float sa = sqrtf(a_t), sb = sqrtf(b_t);

  mmp_tensor_t *x0 = NULL, *tmp = NULL;
  switch (c->prediction) {
  case SCHED_PRED_EPSILON:
    tmp = mmp_axpby(1.0, sample, -(double)sb, mo);
    x0 = mmp_scale(tmp, 1.0 / (double)sa, 0.0);
    break;
  case SCHED_PRED_SAMPLE:
    x0 = mmp_tensor_ref(mo);
    break;
  case SCHED_PRED_V:
    x0 = mmp_axpby((double)sa, sample, -(double)sb, mo);
    break;
  }
  mmp_tensor_unref(tmp);
  x0 = sched_clip_or_threshold(c, x0, s->clip_sample, s->clip_range);

  float x0_coeff = (sqrtf(a_prev) * cur_beta) / b_t;
  float cur_coeff = sqrtf(cur_alpha) * b_prev / b_t;
  mmp_tensor_t *prev = x0 ? mmp_axpby((double)x0_coeff, x0, (double)cur_coeff, sample) : NULL;

  if (prev && t > 0) {
    float var = (1.0f - a_prev) / (1.0f - a_t) * cur_beta;
    if (var < 1e-20f) var = 1e-20f;
    mmp_tensor_t *z = sched_noise(c, noise, sample), *term = NULL;
    if (z) {
      switch (s->variance) {
      case VAR_FIXED_SMALL:
        term = mmp_scale(z, (double)sqrtf(var), 0.0);
        break;
      case VAR_FIXED_SMALL_LOG:
        term = mmp_scale(z, (double)expf(0.5f * logf(var)), 0.0);
        break;
      case VAR_FIXED_LARGE:
        term = mmp_scale(z, (double)sqrtf(cur_beta), 0.0);
        break;
      case VAR_LEARNED:
        if (!pv) {
          mmp_error_set(MMP_ESHAPE, "ddpm: variance_type learned needs a model output with 2x channels");
          break;
        } else {
          mmp_tensor_t *sd = mmp_sqrt(pv);
          term = mmp_mul(sd, z);
          mmp_tensor_unref(sd);
        }
        break;
      case VAR_LEARNED_RANGE:
        if (!pv) {
          mmp_error_set(MMP_ESHAPE,
                        "ddpm: variance_type learned_range needs a model output with 2x channels");
          break;
        } else {
          float min_log = logf(var), max_log = logf(cur_beta);
          /* frac = (pv + 1) / 2; v = frac * max_log + (1 - frac) * min_log */
          mmp_tensor_t *frac = mmp_scale(pv, 0.5, 0.5);
          mmp_tensor_t *one_m = mmp_scale(frac, -1.0, 1.0);
          mmp_tensor_t *v = mmp_axpby((double)max_log, frac, (double)min_log, one_m);
          mmp_tensor_t *half = mmp_scale(v, 0.5, 0.0);
          mmp_tensor_t *sd = mmp_exp(half);
          term = mmp_mul(sd, z);
          mmp_tensor_unref(frac);
          mmp_tensor_unref(one_m);
          mmp_tensor_unref(v);
          mmp_tensor_unref(half);
          mmp_tensor_unref(sd);
        }
        break;
      }
    }
    mmp_tensor_t *p2 = term ? mmp_add(prev, term) : NULL;
    mmp_tensor_unref(z);
    mmp_tensor_unref(term);
    mmp_tensor_unref(prev);
    prev = p2;
  }
  mmp_tensor_unref(mo);
  mmp_tensor_unref(pv);
  return sched_step_end(prev, x0, prev_out, pred_out);
}

static int ddpm_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                          const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  ddpm_t *s = self;
  return sched_add_noise_alphas(&s->c, x0, noise, timesteps, out);
}

static int ddpm_order(void *self) {
  (void)self;
  return 1;
}

/* diffusers draws the variance noise where t > 0 */
static int ddpm_step_noise(void *self, size_t index) {
  ddpm_t *s = self;
  int rc = sched_check_index(&s->c, s->ts != NULL, index, s->nts);
  return rc < 0 ? rc : s->ts[index] > 0;
}

static const mmp_scheduler_ops_t ddpm_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "ddpm", "1.0",
                            "DDPM ancestral sampler (diffusers 0.19.3 DDPMScheduler)", ddpm_keys,
                            ddpm_create, ddpm_destroy),
    .set_timesteps = ddpm_set_timesteps,
    .timesteps = ddpm_timesteps,
    .step = ddpm_step,
    .add_noise = ddpm_add_noise,
    .order = ddpm_order,
    .step_noise = ddpm_step_noise,
};

MMP_EXPORT int mmp_plugin_scheduler_ddpm_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_ddpm_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ddpm_ops.base);
}
