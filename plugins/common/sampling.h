/* plugins/common/sampling.h - the guided denoising loop of the latent-diffusion
 * tasks (txt2img, story): one loop of model + scheduler calls with
 * classifier-free guidance, written once.
 *
 * Each timestep i of the scheduler's schedule:
 *   x   = guided ? cat([lat, lat]) : lat        (scale_model_input(i, x) when the scheduler has it)
 *   eps = model(sample = x, timestep = t_i, encoder_hidden_states = context
 *               [, encoder_attention_mask = mask]).sample
 *   eps = eps_u + g (eps_c - eps_u)              (guided: the halves of eps, unconditional first)
 *   lat = scheduler.step(i, eps, lat, noise)     (noise drawn by @noise when step_noise(i) says so)
 * after set_timesteps(steps) and lat *= init_noise_sigma (when not 1), as
 * diffusers' pipelines and AR-LDM's diffusion() do. Nothing here draws random
 * numbers: the caller's @noise callback does, in diffusers' order (one draw
 * shaped like the latents at each step that asks for it).
 *
 *   sd_sampler_t s = {.unet = unet, .sched = sched, .ctx = ctx, .who = "story", .label = "frame 1/5",
 *                     .steps = 50, .guided = true, .guidance = 6.0, .context = ehs, .mask = mask};
 *   mmp_tensor_t *lat = mmp_rng_randn(gen, be, 4, shape);
 *   if (sd_sample(&s, &lat) < 0) ...;   // lat now holds the final latents
 *
 * Part of libsdcommon.la (hidden symbols, linked into each task module). */
#ifndef MMPIPE_PLUGINS_SAMPLING_H
#define MMPIPE_PLUGINS_SAMPLING_H

#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/mmpipe.h>

/* A draw of standard normal noise shaped like the latents (transfer full),
 * or NULL with the error set. */
typedef mmp_tensor_t *(*sd_noise_cb)(void *arg);

typedef struct sd_sampler {
  mmp_component_t *unet;  /* the model (a model or encoder plugin: forward(NULL, ...)) (transfer none) */
  mmp_component_t *sched; /* the scheduler (transfer none) */
  mmp_context_t *ctx;     /* backend, cancellation, progress (transfer none) */
  const char *who;        /* prefix of messages ("txt2img", "story") */
  const char *label;      /* nullable: a progress bar of this label over the steps; NULL: the
                             caller's bar advances by one per step */
  int64_t steps;          /* set_timesteps(steps) */
  bool guided;            /* classifier-free guidance */
  double guidance;        /* g of eps_u + g (eps_c - eps_u) */
  mmp_tensor_t *context;  /* encoder_hidden_states: [2B, L, D] (unconditional half first) when
                             guided, else [B, L, D] (transfer none) */
  mmp_tensor_t *mask;     /* nullable: encoder_attention_mask [2B or B, L] (transfer none) */
  sd_noise_cb noise;      /* nullable: the step noise (without it no step gets noise) */
  void *noise_arg;
} sd_sampler_t;

/* Denoise @*latents ([B, C, h, w], the initial noise before
 * init_noise_sigma) over the whole schedule. Returns 0 with *latents
 * replaced by the final latents (the initial reference released), or a
 * negative MMP_E* code (MMP_ECANCELED when the context is cancelled between
 * steps) with *latents released and set to NULL. */
int sd_sample(const sd_sampler_t *s, mmp_tensor_t **latents);

#endif
