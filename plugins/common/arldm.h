/* plugins/common/arldm.h - AR-LDM's composition, shared by the story task
 * (sampling) and training: the contexts of the UNet (CLIP caption + BLIP
 * frames + modal-type and time rows), their key masks, the null context,
 * and the training step of ARLDM.forward.
 *
 * Context of target frame i (V targets, src_V source frames, S tokens each):
 *   [CLIP(caption i) + type 0 | BLIP(frame 0) + type 1 + time 0 | ... | BLIP(frame src_V-1) + type 1 + time src_V-1]
 * key mask (1 = do not attend) = NOT(CLIP mask ++ BLIP masks), OR over the
 * last V*S columns block k masked when k >= i. The null context: CLIP(null
 * caption) + type 0 ++ (BLIP(black image, null caption) + type 1 + time j)
 * for each j, its mask only the triangular part.
 *
 * Training (arldm_train_step), as ARLDM.forward at 9d8feeb:
 *   drop_n = u_n < 0.1 (u: np.random.rand(B*V));  rows dropped get the null context
 *   z = (mean + exp(logvar / 2) * eps) * 0.18215 (the VAE posterior sample of the targets)
 *   x_t = DDPM add_noise(z, noise, t), t in [0, 1000);  loss = mean((unet(x_t, t, ctx, mask) - noise)^2)
 * With a tape current and the trainable parameters watched (arldm_parameters
 * lists them by AR-LDM's state-dict names), mmp_tape_backward(loss) gives
 * their gradients.
 *
 *   arldm_parts_t p = {.clip = clip, .blip = blip, .unet = unet, .vae = vae, .sched = ddpm,
 *                      .type = type, .time = time, .clip_null = cn, .blip_null = bn, .image_null = in};
 *   arldm_draws_t d = {0};                  // all drawn from rng, in ARLDM.forward's order
 *   mmp_tape_set_current(tape);  ... watch ...
 *   mmp_tensor_t *loss;
 *   if (arldm_train_step(&p, &batch, rng, &d, &loss) == 0) mmp_tape_backward(tape, loss, NULL, grads);
 *   arldm_draws_clear(&d);
 *
 * Part of libsdcommon.la (hidden symbols, linked into each module that uses it). */
#ifndef MMPIPE_PLUGINS_ARLDM_H
#define MMPIPE_PLUGINS_ARLDM_H

#include <stdint.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/checkpoint.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

/* The parts (all transfer none; members a caller does not need may be NULL:
 * the contexts need clip, blip, type, time; the null context also the three
 * null buffers; training everything). */
typedef struct arldm_parts {
  mmp_component_t *clip;   /* text_encoder: clip_text (input_ids, attention_mask -> last_hidden_state) */
  mmp_component_t *blip;   /* mm_encoder: blip, method multimodal */
  mmp_component_t *unet;   /* unet: unet2d_condition */
  mmp_component_t *vae;    /* vae (encode) */
  mmp_component_t *sched;  /* a scheduler with add_noise: ddpm, beta 0.00085..0.012 scaled_linear, 1000 steps */
  mmp_tensor_t *type;      /* modal_type_embeddings.weight f32 [2, D] */
  mmp_tensor_t *time;      /* time_embeddings.weight f32 [>= src_V, D] */
  mmp_tensor_t *clip_null; /* clip_text_null_token [1, S] */
  mmp_tensor_t *blip_null; /* blip_text_null_token [1, S] */
  mmp_tensor_t *image_null; /* blip_image_null_token f32 [1, 3, h, w] */
  mmp_rng_t *blip_dropout;  /* (nullable) training only: BLIP in train mode (AR-LDM without freeze_blip), its BERT's
                               dropout drawn from this generator (AR-LDM's: torch's global one) at the BLIP calls of
                               arldm_train_step; NULL: eval mode, no draws */
  int64_t num_train_timesteps; /* training: the timesteps arldm_train_step draws lie in [0, this) (0: 1000, AR-LDM's) */
  /* training, data parallelism: the batch is items [draw_off, draw_off + B) of draw_items (0:
   * the whole batch); what arldm_train_step draws (BLIP's dropout on the source frames, the
   * posterior noise, the noise, the timesteps) is drawn for all of them and cut */
  int64_t draw_items, draw_off;
} arldm_parts_t;

/* The AR-LDM state dict file (the story task's and the train task's `arldm`):
 * a .safetensors file with AR-LDM's names, or a torch.save file (Lightning's
 * last.ckpt: the names under "state_dict."; or a bare state dict), read in
 * place: tensors are read one by one, on demand. */
typedef struct arldm_file {
  mmp_safetensors_t *st;
  mmp_checkpoint_t *ck;
} arldm_file_t;

/* Open @path into @a (zeroed first). Returns 0 or a negative MMP_E* code
 * with the message naming the file. */
int arldm_file_open(arldm_file_t *a, const char *path);
/* Close; safe on a zeroed or closed @a. */
void arldm_file_close(arldm_file_t *a);
/* Tensors of the file: how many, the name of the @i-th (transfer none). */
size_t arldm_file_count(const arldm_file_t *a);
const char *arldm_file_name(const arldm_file_t *a, size_t i);
/* Dtype (nullable), rank and shape of tensor @name; MMP_ENOENT if absent. */
int arldm_file_info(const arldm_file_t *a, const char *name, mmp_dtype_t *dtype, int *nd, int64_t *shape);
/* Tensor @name converted to @dt on @be (transfer full; NULL + message). */
mmp_tensor_t *arldm_file_get(arldm_file_t *a, const char *name, mmp_dtype_t dt, mmp_backend_t *be);

/* AR-LDM's own tensors of @a into @p: modal_type_embeddings.weight f32
 * [2, D] and time_embeddings.weight f32 [>= src_V, D] on @be, the null
 * buffers clip_text_null_token, blip_text_null_token (i64 [1, S]) and
 * blip_image_null_token (f32 [1, 3, h, w]) on the CPU (all transfer full
 * into @p; the caller releases them). Shapes are checked, the messages
 * naming @label (the file) and the tensors; *@S and *@D (nullable) get the
 * token count and the width. On error nothing is left in @p. */
int arldm_extras_load(arldm_file_t *a, const char *label, mmp_backend_t *be, int64_t src_V, arldm_parts_t *p, int64_t *S,
                      int64_t *D);

/* One output @out_name of component @c's forward(@method) for up to three
 * named inputs (a NULL name ends the list) (transfer full; NULL + error). */
mmp_tensor_t *arldm_call1(mmp_component_t *c, const char *method, const char *out_name, const char *n1, mmp_tensor_t *t1,
                          const char *n2, mmp_tensor_t *t2, const char *n3, mmp_tensor_t *t3);

/* @x [N, L, D] + row @k of @table, broadcast over N and L (transfer full;
 * NULL @x gives NULL). */
mmp_tensor_t *arldm_add_row(mmp_tensor_t *x, mmp_tensor_t *table, int64_t k);

/* BLIP multimodal of pixel values @px [N, 3, h, w] with their captions
 * (@mask nullable), + type 1 + time @j: [N, S, D] (transfer full). */
mmp_tensor_t *arldm_blip_context(const arldm_parts_t *p, mmp_tensor_t *px, mmp_tensor_t *ids, mmp_tensor_t *mask, int64_t j);

/* The null context [1, (src_V + 1) S, D] from the encoders' outputs on the
 * null buffers, @hc = CLIP(clip_null) and @hb = BLIP(image_null, blip_null)
 * (both [1, S, D]): hc + type 0 ++ (hb + type 1 + time j), j < src_V
 * (transfer full). */
mmp_tensor_t *arldm_null_context(const arldm_parts_t *p, mmp_tensor_t *hc, mmp_tensor_t *hb, int64_t src_V);

/* One key-mask row (1 = do not attend), (src_V + 1) S entries, of target
 * frame @i of @V: from @cmask (the S entries of its CLIP mask) and @bmask
 * (the src_V * S entries of the BLIP masks of its story), 0 meaning
 * masked; @cmask NULL: the null context's row (only the triangular part). */
void arldm_mask_row(uint8_t *row, int64_t V, int64_t src_V, int64_t S, int64_t i, const float *cmask, const float *bmask);

/* A training batch, AR-LDM's collated tuple (transfer none). Ids and masks
 * of any integer or float dtype. */
typedef struct arldm_batch {
  mmp_tensor_t *images;          /* f32 [B, V, 3, H, W] in [-1, 1]: the target frames (VAE input) */
  mmp_tensor_t *captions;        /* CLIP ids [B, V, S] */
  mmp_tensor_t *caption_mask;    /* [B, V, S], 1 = token */
  mmp_tensor_t *source_images;   /* f32 [B, src_V, 3, h, w]: BLIP pixel values */
  mmp_tensor_t *source_captions; /* BLIP ids [B, src_V, S] (src_V = V: visualization, V + 1: continuation) */
  mmp_tensor_t *source_mask;     /* [B, src_V, S] */
} arldm_batch_t;

/* The random draws of one step (n = B * V rows). The struct owns its
 * members (arldm_draws_clear releases them): given ones (a reference handed
 * over) are used as they are; NULL ones are drawn by arldm_train_step from
 * its generator, in ARLDM.forward's order, and stored here. With
 * cfg_uniform given, a torch-mode generator seeded as torch's global one
 * draws exactly AR-LDM's posterior noise, noise and t
 * (tests/test_plugin_arldm_train). */
typedef struct arldm_draws {
  mmp_tensor_t *cfg_uniform;     /* [n] in [0, 1): row dropped when < 0.1. AR-LDM draws np.random.rand(n);
                                    drawn here: mmp_rng_uniform n times of @rng (the train task gives
                                    them from an MMP_RNG_NUMPY generator: numpy's stream) */
  mmp_tensor_t *posterior_noise; /* f32 [n, C, h, w]: the VAE posterior's sample() noise (randn) */
  mmp_tensor_t *noise;           /* f32 [n, C, h, w] (randn) */
  mmp_tensor_t *timesteps;       /* i64 [n] in [0, 1000) (randint) */
} arldm_draws_t;

/* Releases the draws' tensors and zeroes @d. */
void arldm_draws_clear(arldm_draws_t *d);

/* ARLDM.forward: the loss of @b (0-dim f32, transfer full into *@loss)
 * computed with whatever tape is current, so mmp_tape_backward(loss)
 * gives the gradients of the watched parameters. @rng (nullable when
 * every draw is given) draws the missing members of @d. Errors: a negative
 * MMP_E* code with *@loss NULL; the message names the shape or part. */
int arldm_train_step(const arldm_parts_t *p, const arldm_batch_t *b, mmp_rng_t *rng, arldm_draws_t *d, mmp_tensor_t **loss);

/* Every parameter of the parts under AR-LDM's state-dict names
 * (text_encoder.*, mm_encoder.*, unet.*, modal_type_embeddings.weight,
 * time_embeddings.weight): the components' own parameters() (created with
 * trainable = true) with the prefix added; a component whose plugin has no
 * parameters member is skipped (frozen). The VAE is never listed (AR-LDM
 * freezes it). Stops at and returns @cb's non-zero return. */
int arldm_parameters(const arldm_parts_t *p, mmp_param_cb cb, void *user);

#endif
