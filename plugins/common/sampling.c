/* plugins/common/sampling.c - the guided denoising loop shared by the
 * latent-diffusion tasks (see sampling.h). */
#include <stddef.h>

#include "plugins/common/sampling.h"
#include "plugins/common/sd_common.h"

/* The optional scheduler members are read only when the module's vtable is
 * long enough to hold them. */
#define HAS(ops, member) \
  ((ops)->base.struct_size >= offsetof(mmp_scheduler_ops_t, member) + sizeof(ops)->member && (ops)->member)

/* One model call: @x at timestep @tt -> "sample" (transfer full). */
static mmp_tensor_t *model_eps(const sd_sampler_t *s, mmp_tensor_t *x, mmp_tensor_t *tt) {
  const mmp_model_ops_t *mo = (const mmp_model_ops_t *)s->unet->plugin; /* model and encoder share the layout */
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *eps = NULL;
  if (!in || !out) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
  } else if (mmp_tensormap_set(in, "sample", mmp_tensor_ref(x)) == 0 &&
             mmp_tensormap_set(in, "timestep", mmp_tensor_ref(tt)) == 0 &&
             mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(s->context)) == 0 &&
             (!s->mask || mmp_tensormap_set(in, "encoder_attention_mask", mmp_tensor_ref(s->mask)) == 0) &&
             mo->forward(s->unet->self, NULL, in, out) == 0) {
    eps = mmp_tensormap_need(out, "sample");
    if (eps) mmp_tensor_ref(eps);
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return eps;
}

/* eps_u + g (eps_c - eps_u) from the halves of @eps (transfer full). */
static mmp_tensor_t *guide(mmp_tensor_t *eps, double g) {
  mmp_tensor_t *h[2] = {NULL, NULL}, *r = NULL;
  if (mmp_chunk(eps, 2, 0, h) == 0) {
    mmp_tensor_t *d = mmp_sub(h[1], h[0]);
    r = d ? mmp_axpby(1.0, h[0], g, d) : NULL;
    mmp_tensor_unref(d);
  }
  mmp_tensor_unref(h[0]);
  mmp_tensor_unref(h[1]);
  return r;
}

static int fail_code(void) { return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME; }

int sd_sample(const sd_sampler_t *s, mmp_tensor_t **latents) {
  const mmp_scheduler_ops_t *so = (const mmp_scheduler_ops_t *)s->sched->plugin;
  void *sc = s->sched->self;
  mmp_backend_t *be = mmp_context_backend(s->ctx);
  mmp_tensor_t *lat = *latents;
  *latents = NULL;
  int rc;
  if (!lat) return fail_code();
  /* as diffusers: the schedule first, then init_noise_sigma (it depends on
   * the step count for sigma-based schedulers) */
  if ((rc = so->set_timesteps(sc, (int)s->steps)) < 0) goto fail;
  double sigma = HAS(so, init_noise_sigma) ? so->init_noise_sigma(sc) : 1.0;
  if (sigma != 1.0 && !(lat = sd_swap(lat, mmp_scale(lat, sigma, 0.0)))) {
    rc = fail_code();
    goto fail;
  }
  const int64_t *ts = NULL;
  size_t nts = 0;
  if ((rc = so->timesteps(sc, &ts, &nts)) < 0) goto fail;
  /* fractional schedules (euler with linspace spacing or Karras sigmas) give
   * the model the exact timestep, as diffusers does */
  const double *mts = NULL;
  size_t nmts = 0;
  if (HAS(so, model_timesteps) && (so->model_timesteps(sc, &mts, &nmts) < 0 || nmts != nts)) mts = NULL;
  bool has_scale = HAS(so, scale_model_input);
  bool has_noise = s->noise && HAS(so, step_noise);
  int64_t nb = lat->shape[0], nbt = s->guided ? 2 * nb : nb;
  if (s->label) mmp_context_progress_begin(s->ctx, s->label, (int64_t)nts);
  for (size_t i = 0; i < nts; i++) {
    if (mmp_context_cancelled(s->ctx)) {
      rc = mmp_error_set(MMP_ECANCELED, "%s: canceled", s->who);
      goto end;
    }
    mmp_tensor_t *x;
    if (s->guided) {
      mmp_tensor_t *two[2] = {lat, lat};
      x = mmp_concat(two, 2, 0);
    } else {
      x = mmp_tensor_ref(lat);
    }
    if (x && has_scale) {
      mmp_tensor_t *y = NULL;
      if (so->scale_model_input(sc, i, x, &y) < 0) y = NULL;
      x = sd_swap(x, y);
    }
    int64_t tsh[1] = {nbt};
    mmp_tensor_t *tt = mts ? mmp_tensor_full(be, MMP_F32, 1, tsh, mts[i]) : mmp_tensor_full(be, MMP_I64, 1, tsh, (double)ts[i]);
    mmp_tensor_t *eps = x && tt ? model_eps(s, x, tt) : NULL;
    mmp_tensor_unref(x);
    mmp_tensor_unref(tt);
    mmp_tensor_t *g = eps && s->guided ? guide(eps, s->guidance) : eps ? mmp_tensor_ref(eps) : NULL;
    mmp_tensor_unref(eps);
    /* the step's noise, drawn when diffusers' step() would draw it */
    mmp_tensor_t *prev = NULL, *pred = NULL, *noise = NULL;
    int want = g && has_noise ? so->step_noise(sc, i) : 0;
    if (want > 0) noise = s->noise(s->noise_arg);
    rc = !g || want < 0 || (want > 0 && !noise) ? fail_code() : so->step(sc, i, g, lat, noise, &prev, &pred);
    mmp_tensor_unref(pred);
    mmp_tensor_unref(noise);
    mmp_tensor_unref(g);
    if (rc == 0 && !prev) rc = fail_code();
    if (rc < 0) {
      mmp_tensor_unref(prev);
      goto end;
    }
    lat = sd_swap(lat, prev);
    mmp_context_progress_advance(s->ctx, 1);
  }
  rc = 0;
end:
  if (s->label) mmp_context_progress_end(s->ctx);
  if (rc == 0) {
    *latents = lat;
    return 0;
  }
fail:
  mmp_tensor_unref(lat);
  return rc;
}
