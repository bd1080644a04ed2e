/* plugins/common/train_step.h - the model side of one training step, pluggable into the train task.
 *
 * The train task (plugins/tasks/train.c) owns the loop: data order, the
 * tape, accumulation, clipping, AdamW, the schedule, checkpoints. What a
 * step computes is a train_step_ops_t chosen by the task's `mode` key:
 * given the components, a batch and the run's generator, it returns the
 * loss, computed with the caller's tape current so that every watched
 * parameter it touches gets its gradient. It draws its random numbers from
 * @rng only, always in the same order, so a run is a function of the seed
 * and a resumed run draws what the uninterrupted one would have.
 *
 *   static const train_step_ops_t *const modes[] = {&train_step_sd, NULL};
 *   mmp_tensor_t *loss = NULL;
 *   rc = modes[0]->loss(&parts, &batch, rng, &loss);   // under the tape
 *
 * Not part of the ABI: compiled into the task module.
 */
#ifndef MMPIPE_PLUGINS_TRAIN_STEP_H
#define MMPIPE_PLUGINS_TRAIN_STEP_H

#include <mmpipe/mmpipe.h>
#include <mmpipe/rng.h>

/* One micro-batch: image-caption items (mode sd: pixels + captions) or the
 * items of a dataset plugin collated (mode arldm: extra). */
typedef struct train_batch {
  int64_t n;                   /* items */
  mmp_tensor_t *pixels;        /* nullable: f32 [n, 3, H, W] in [-1, 1] (transfer none) */
  const char *const *captions; /* nullable: n captions (transfer none) */
  const mmp_tensormap_t *extra; /* nullable: the items' tensors stacked, [n, ...] each (train_data_collate) */
  /* Data parallelism: the random draws are made for @draw_n items (0: n) and this batch
   * takes their rows [draw_off, draw_off + n), so that N ranks, each given its share of a
   * batch, draw exactly what one process given the whole batch draws (train_batch_rows). */
  int64_t draw_n, draw_off;
  /* nullable: numpy's stream (MMP_RNG_NUMPY), for the draws the upstream step makes with
   * numpy (arldm: the CFG drop); NULL: those come from the step's generator too */
  mmp_rng_t *np_rng;
} train_batch_t;

/* Draw helpers for steps: randn / randint of @shape whose first dimension is the batch,
 * drawn for the batch's draw_n rows and cut to its own (transfer full; NULL + message). */
mmp_tensor_t *train_batch_randn(const train_batch_t *b, mmp_rng_t *rng, mmp_backend_t *be, int ndim,
                                const int64_t *shape);
mmp_tensor_t *train_batch_randint(const train_batch_t *b, mmp_rng_t *rng, mmp_backend_t *be, int64_t low,
                                  int64_t high);

/* The task's components (transfer none); a member is NULL when its group
 * is not configured or the mode does not need it. */
typedef struct train_parts {
  mmp_context_t *ctx;
  mmp_component_t *tokenizer, *text_encoder, *unet, *vae, *scheduler;
  double scaling;              /* the VAE's scaling_factor (0.18215 for SD 1.x) */
  int64_t num_train_timesteps; /* timesteps are drawn in [0, this) */
  mmp_component_t *mm_encoder; /* arldm: BLIP (the mm_encoder group) */
  /* arldm: AR-LDM's own tensors from the `arldm` file: the modal-type and
   * time tables (trained unless frozen by the patterns) and the null buffers */
  mmp_tensor_t *type, *time, *clip_null, *blip_null, *image_null;
  /* arldm: BLIP in train mode (AR-LDM without freeze_blip): its BERT's
   * dropout drawn from the step's generator (the task's `blip_dropout`) */
  bool blip_dropout;
} train_parts_t;

typedef struct train_step_ops {
  const char *mode; /* the task's `mode` value */
  /* Components this mode needs, NULL-terminated group names (checked before
   * the run starts). */
  const char *const *needs;
  /* The loss of @batch: a one-element f32 tensor computed with the caller's
   * tape current (transfer full into *loss). Returns 0 or a negative
   * MMP_E* code with the message set and *loss NULL. */
  int (*loss)(const train_parts_t *parts, const train_batch_t *batch, mmp_rng_t *rng, mmp_tensor_t **loss);
} train_step_ops_t;

/* Stable Diffusion fine-tuning (diffusers' train_text_to_image.py step):
 * latents = VAE encode (frozen, outside the tape) -> latent_dist.sample()
 * x scaling; noise ~ N(0, 1); t ~ U{0 .. T-1}; noisy = add_noise(latents,
 * noise, t) by the scheduler; MSE(unet(noisy, t, text_encoder(tokens)),
 * noise). Draws: the latent sample's noise, the noise, the timesteps, in
 * that order, each as torch.randn/torch.randint with one generator. */
extern const train_step_ops_t train_step_sd;

/* AR-LDM training (ARLDM.forward at 9d8feeb, arldm_train_step): the batch's
 * extra holds a story dataset's items collated, AR-LDM's tuple by the
 * dataset's names: images f32 [n, V, 3, H, W] in [-1, 1], captions and
 * attention_mask [n, V, S] (CLIP), source_images f32 [n, src_V, 3, h, w]
 * (BLIP pixels), source_caption and source_attention_mask [n, src_V, S]
 * (BLIP); src_V = V is visualization, V + 1 continuation. Draws, each made
 * for draw_n items (V rows each) and cut to the batch's rows: the CFG drop's
 * uniforms (B V of them, np.random.rand: from np_rng when given, else from
 * the generator), then from the generator (with parts->blip_dropout: BLIP's
 * dropout in its two calls, sources then null caption) the VAE posterior's
 * noise, the noise, the timesteps, in that order (BLIP's dropout, too, drawn
 * for the draw_n items and cut: its rng_rows input). */
extern const train_step_ops_t train_step_arldm;

#endif
