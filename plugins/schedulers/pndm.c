/* plugins/schedulers/pndm.c - PNDM (Liu et al. 2022): PLMS steps with an optional Runge-Kutta warm-up, equal to diffusers 0.19.3 PNDMScheduler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/schedulers/common.h"

static const mmp_key_t pndm_keys[] = {
    SCHED_KEYS_COMMON("\"leading\""),
    {"skip_prk_steps", MMP_TYPE_BOOL, "false",
     "start with plain PLMS steps (true, as Stable Diffusion and AR-LDM) instead of the "
     "12-call Runge-Kutta warm-up", 0, 0},
    {"set_alpha_to_one", MMP_TYPE_BOOL, "false",
     "the step after timestep 0 uses alpha_prod 1 (else alphas_cumprod[0])", 0, 0},
    SCHED_KEYS_END};

typedef struct pndm {
  sched_common_t c;
  bool skip_prk;
  float final_alpha_cumprod;
  int64_t n;
  int64_t *ts;     /* prk timesteps followed by plms timesteps */
  size_t nts, nprk;
  /* multistep state, reset by set_timesteps */
  mmp_tensor_t *ets[4];
  size_t nets;
  size_t counter;
  mmp_tensor_t *cur_sample;       /* nullable */
  mmp_tensor_t *cur_model_output; /* nullable: 0 */
} pndm_t;

static void pndm_reset(pndm_t *s) {
  sched_unref_all(s->ets, 4);
  s->nets = 0;
  s->counter = 0;
  mmp_tensor_unref(s->cur_sample);
  mmp_tensor_unref(s->cur_model_output);
  s->cur_sample = s->cur_model_output = NULL;
}

static void pndm_destroy(void *self) {
  pndm_t *s = self;
  pndm_reset(s);
  sched_common_free(&s->c);
  free(s->ts);
  free(s);
}

static int pndm_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out) {
  (void)plugin;
  (void)ctx;
  pndm_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "pndm: out of memory");
  bool one = false;
  int rc = sched_common_init(&s->c, "pndm", cfg, SCHED_NO_PRED_SAMPLE);
  if (rc == 0) rc = sched_get_bool(cfg, "skip_prk_steps", false, &s->skip_prk);
  if (rc == 0) rc = sched_get_bool(cfg, "set_alpha_to_one", false, &one);
  if (rc == 0 && !s->skip_prk && s->c.num_inference_steps < 4)
    rc = sched_config_error(cfg, "num_inference_steps",
                            "the Runge-Kutta warm-up (skip_prk_steps = false) needs at least 4 "
                            "steps, not %lld", (long long)s->c.num_inference_steps);
  if (rc < 0) {
    pndm_destroy(s);
    return rc;
  }
  s->final_alpha_cumprod = one ? 1.0f : s->c.alphas_cumprod[0];
  *out = s;
  return 0;
}

static int pndm_set_timesteps(void *self, int num_inference_steps) {
  pndm_t *s = self;
  sched_common_t *c = &s->c;
  int64_t n, T = c->num_train_timesteps;
  int rc = sched_check_steps(c, num_inference_steps, &n);
  if (rc < 0) return rc;
  if (!s->skip_prk && n < 4)
    return mmp_error_set(MMP_EINVAL, "pndm: the Runge-Kutta warm-up needs at least 4 steps, not %lld",
                         (long long)n);
  /* the ascending base list (diffusers' _timesteps) */
  int64_t *desc = NULL, *asc = NULL;
  size_t L = 0;
  if ((rc = sched_spaced_timesteps(c, n, &desc, &L)) < 0) return rc;
  asc = malloc((L ? L : 1) * sizeof *asc);
  int64_t *ts = malloc((4 * L + 8) * sizeof *ts);
  if (!asc || !ts) {
    free(desc);
    free(asc);
    free(ts);
    return mmp_error_set(MMP_ENOMEM, "pndm: out of memory");
  }
  for (size_t i = 0; i < L; i++) asc[i] = desc[L - 1 - i];
  free(desc);
  size_t cnt = 0, nprk = 0;
  if (s->skip_prk) {
    /* concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1] */
    int64_t tmp[3];
    size_t k = 0;
    if (L >= 2) tmp[k++] = asc[L - 2];
    if (L >= 1) tmp[k++] = asc[L - 1];
    for (size_t i = k; i-- > 0;) ts[cnt++] = tmp[i];
    for (size_t i = L >= 1 ? L - 1 : 0; i-- > 0;) ts[cnt++] = asc[i];
  } else {
    size_t m = L < 4 ? L : 4;
    int64_t rep[8], rep2[16];
    int64_t half = T / n / 2;
    for (size_t j = 0; j < m; j++) {
      rep[2 * j] = asc[L - m + j];
      rep[2 * j + 1] = asc[L - m + j] + half;
    }
    size_t r2 = 0;
    for (size_t j = 0; j + 1 < 2 * m; j++) {
      rep2[r2++] = rep[j];
      rep2[r2++] = rep[j];
    }
    /* [1:-1] reversed */
    for (size_t j = r2 - 1; j-- > 1;) ts[cnt++] = rep2[j];
    nprk = cnt;
    for (size_t i = L >= 3 ? L - 3 : 0; i-- > 0;) ts[cnt++] = asc[i];
  }
  free(asc);
  if ((rc = sched_check_range(c, ts, cnt)) < 0) {
    free(ts);
    return rc;
  }
  free(s->ts);
  s->ts = ts;
  s->nts = cnt;
  s->nprk = nprk;
  s->n = n;
  pndm_reset(s);
  return 0;
}

static int pndm_timesteps(void *self, const int64_t **out, size_t *n) {
  pndm_t *s = self;
  *out = s->ts;
  *n = s->nts;
  return 0;
}

/* diffusers' _get_prev_sample (formula (9) of the PNDM paper) */
static mmp_tensor_t *prev_sample(pndm_t *s, const mmp_tensor_t *sample, int64_t t, int64_t prev_t,
                                 const mmp_tensor_t *mo) {
  sched_common_t *c = &s->c;
  if (t < 0 || t >= c->num_train_timesteps || prev_t >= c->num_train_timesteps) {
    mmp_error_set(MMP_EINVAL, "pndm: timestep %lld -> %lld outside the schedule", (long long)t,
                  (long long)prev_t);
    return NULL;
  }
  float a_t = c->alphas_cumprod[t];
  float a_prev = sched_alpha_prod(c, prev_t, s->final_alpha_cumprod);
  float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  mmp_tensor_t *v = NULL;
  if (c->prediction == SCHED_PRED_V) {
    v = mmp_axpby((double)sqrtf(a_t), mo, (double)sqrtf(b_t), sample);
    if (!v) return NULL;
    mo = v;
  }
  float sample_coeff = sqrtf(a_prev / a_t);
  float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
  double mo_coeff = -(double)(a_prev - a_t) / (double)denom;
  mmp_tensor_t *r = mmp_axpby((double)sample_coeff, sample, mo_coeff, mo);
  mmp_tensor_unref(v);
  return r;
}

static int pndm_step(void *self, size_t index, const mmp_tensor_t *mo, const mmp_tensor_t *sample,
                     const mmp_tensor_t *noise, mmp_tensor_t **prev_out, mmp_tensor_t **pred_out) {
  pndm_t *s = self;
  sched_common_t *c = &s->c;
  (void)noise;
  int rc = sched_step_begin(c, s->ts != NULL, index, s->nts, NULL, sample, prev_out, pred_out);
  if (rc < 0) return rc;
  if (index != s->counter)
    return mmp_error_set(MMP_EINVAL,
                         "pndm: steps must come in order (expected call %zu, got %zu); "
                         "set_timesteps restarts", s->counter, index);
  if (!mmp_tensor_same_shape(mo, sample))
    return mmp_error_set(MMP_ESHAPE, "pndm: model output and sample differ in shape");
  int64_t timestep = s->ts[index];
  int64_t ratio = c->num_train_timesteps / s->n;
  mmp_tensor_t *prev = NULL, *eff = NULL;

  if (s->counter < s->nprk && !s->skip_prk) {
    /* Runge-Kutta warm-up: 4 calls per step */
    int64_t diff = (s->counter % 2) ? 0 : ratio / 2;
    int64_t prev_t = timestep - diff;
    int64_t t = s->ts[s->counter / 4 * 4];
    size_t phase = s->counter % 4;
    if (phase == 0) {
      mmp_tensor_t *add = mmp_scale(mo, 1.0 / 6.0, 0.0);
      mmp_tensor_t *cur = s->cur_model_output ? mmp_add(s->cur_model_output, add) : mmp_tensor_ref(add);
      mmp_tensor_unref(add);
      if (!cur) return mmp_error_code();
      mmp_tensor_unref(s->cur_model_output);
      s->cur_model_output = cur;
      if (s->nets == 4) {
        mmp_tensor_unref(s->ets[0]);
        memmove(s->ets, s->ets + 1, 3 * sizeof *s->ets);
        s->nets = 3;
      }
      s->ets[s->nets++] = mmp_tensor_ref((mmp_tensor_t *)mo);
      mmp_tensor_unref(s->cur_sample);
      s->cur_sample = mmp_tensor_ref((mmp_tensor_t *)sample);
      eff = mmp_tensor_ref((mmp_tensor_t *)mo);
    } else if (phase == 1 || phase == 2) {
      mmp_tensor_t *add = mmp_scale(mo, 1.0 / 3.0, 0.0);
      mmp_tensor_t *cur = s->cur_model_output ? mmp_add(s->cur_model_output, add) : mmp_tensor_ref(add);
      mmp_tensor_unref(add);
      if (!cur) return mmp_error_code();
      mmp_tensor_unref(s->cur_model_output);
      s->cur_model_output = cur;
      eff = mmp_tensor_ref((mmp_tensor_t *)mo);
    } else {
      mmp_tensor_t *add = mmp_scale(mo, 1.0 / 6.0, 0.0);
      eff = s->cur_model_output ? mmp_add(s->cur_model_output, add) : mmp_tensor_ref(add);
      mmp_tensor_unref(add);
      mmp_tensor_unref(s->cur_model_output);
      s->cur_model_output = NULL;
    }
    if (!eff) return mmp_error_code();
    const mmp_tensor_t *base = s->cur_sample ? s->cur_sample : sample;
    prev = prev_sample(s, base, t, prev_t, eff);
  } else {
    /* linear multistep */
    if (!s->skip_prk && s->nets < 3)
      return mmp_error_set(MMP_EINVAL, "pndm: PLMS steps need the Runge-Kutta warm-up first");
    int64_t prev_t = timestep - ratio, t = timestep;
    if (s->counter != 1) {
      if (s->nets == 4) {
        mmp_tensor_unref(s->ets[0]);
        memmove(s->ets, s->ets + 1, 3 * sizeof *s->ets);
        s->nets = 3;
      }
      s->ets[s->nets++] = mmp_tensor_ref((mmp_tensor_t *)mo);
    } else {
      prev_t = timestep;
      t = timestep + ratio;
    }
    mmp_tensor_t *const *e = s->ets;
    size_t k = s->nets;
    const mmp_tensor_t *base = sample;
    mmp_tensor_t *keep = NULL;
    if (k == 1 && s->counter == 0) {
      eff = mmp_tensor_ref((mmp_tensor_t *)mo);
      mmp_tensor_unref(s->cur_sample);
      s->cur_sample = mmp_tensor_ref((mmp_tensor_t *)sample);
    } else if (k == 1 && s->counter == 1) {
      mmp_tensor_t *sum = mmp_add(mo, e[0]);
      eff = mmp_scale(sum, 0.5, 0.0);
      mmp_tensor_unref(sum);
      keep = s->cur_sample; /* sample = cur_sample; cur_sample = None */
      s->cur_sample = NULL;
      if (keep) base = keep;
    } else if (k == 2) {
      mmp_tensor_t *d = mmp_axpby(3.0, e[1], -1.0, e[0]);
      eff = mmp_scale(d, 0.5, 0.0);
      mmp_tensor_unref(d);
    } else if (k == 3) {
      mmp_tensor_t *a = mmp_axpby(23.0, e[2], -16.0, e[1]);
      mmp_tensor_t *b = mmp_axpby(1.0, a, 5.0, e[0]);
      eff = mmp_scale(b, 1.0 / 12.0, 0.0);
      mmp_tensor_unref(a);
      mmp_tensor_unref(b);
    } else {
      mmp_tensor_t *a = mmp_axpby(55.0, e[3], -59.0, e[2]);
      mmp_tensor_t *b = mmp_axpby(1.0, a, 37.0, e[1]);
      mmp_tensor_t *d = mmp_axpby(1.0, b, -9.0, e[0]);
      eff = mmp_scale(d, 1.0 / 24.0, 0.0);
      mmp_tensor_unref(a);
      mmp_tensor_unref(b);
      mmp_tensor_unref(d);
    }
    if (!eff) {
      mmp_tensor_unref(keep);
      return mmp_error_code();
    }
    prev = prev_sample(s, base, t, prev_t, eff);
    mmp_tensor_unref(keep);
  }
  mmp_tensor_unref(eff);
  if (!prev) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  s->counter++;
  *prev_out = prev;
  return 0;
}

static int pndm_add_noise(void *self, const mmp_tensor_t *x0, const mmp_tensor_t *noise,
                          const mmp_tensor_t *timesteps, mmp_tensor_t **out) {
  pndm_t *s = self;
  return sched_add_noise_alphas(&s->c, x0, noise, timesteps, out);
}

static int pndm_order(void *self) {
  (void)self;
  return 1;
}

static const mmp_scheduler_ops_t pndm_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "pndm", "1.0",
                            "PNDM / PLMS sampler (diffusers 0.19.3 PNDMScheduler)", pndm_keys,
                            pndm_create, pndm_destroy),
    .set_timesteps = pndm_set_timesteps,
    .timesteps = pndm_timesteps,
    .step = pndm_step,
    .add_noise = pndm_add_noise,
    .order = pndm_order,
};

MMP_EXPORT int mmp_plugin_scheduler_pndm_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_scheduler_pndm_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &pndm_ops.base);
}
