/* mmpipe/optim.h - optimisation: AdamW, the warmup + cosine learning-rate schedule,
 * gradient clipping and accumulation, parameter freezing by name pattern.
 *
 * The optimizer knows parameters and gradients by name and nothing about the
 * model that produced them: a model plugin lists its trainable tensors, a
 * backward pass returns gradients under the same names (doc/training.md).
 *
 *   mmp_adamw_params_t hp;
 *   mmp_adamw_defaults(&hp);                 // torch.optim.AdamW's defaults
 *   hp.lr = 1e-5; hp.weight_decay = 1e-4;    // AR-LDM's
 *   mmp_adamw_t *opt = mmp_adamw_new(&hp);
 *   mmp_adamw_add_param(opt, "fc.weight", w); // updated in place from now on
 *   mmp_lr_warmup_cosine_t sched;
 *   mmp_lr_warmup_cosine_init(&sched, hp.lr, 100, 10000, 0.0, 0.0);
 *   for (...) {
 *     mmp_adamw_set_lr(opt, sched.lr);
 *     ... grads = backward(...) ...
 *     mmp_clip_grad_norm(grads, 1.0, NULL);   // optional
 *     mmp_adamw_step(opt, grads);
 *     mmp_lr_warmup_cosine_step(&sched);      // per optimizer step
 *   }
 *   mmp_adamw_free(opt);
 */
#ifndef MMPIPE_OPTIM_H
#define MMPIPE_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/plugin.h> /* mmp_tensormap_t */
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- AdamW (torch.optim.AdamW of torch 1.13, amsgrad off) ---- */
typedef struct mmp_adamw_params {
  double lr, beta1, beta2, eps, weight_decay;
} mmp_adamw_params_t;

/* lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2 (torch's). */
void mmp_adamw_defaults(mmp_adamw_params_t *p);

typedef struct mmp_adamw mmp_adamw_t;

/* (transfer full) NULL + MMP_EINVAL message for lr < 0, eps < 0, betas
 * outside [0, 1) or weight_decay < 0 (torch's checks). */
mmp_adamw_t *mmp_adamw_new(const mmp_adamw_params_t *p);
void mmp_adamw_free(mmp_adamw_t *o); /* NULL is a no-op */
/* Add a parameter under @name (copied). The optimizer takes a reference to
 * @param (transfer none: the caller keeps its own) and updates it IN PLACE
 * at each step; it must be a contiguous, writable f32 tensor (not a view of
 * a read-only file mapping: MMP_EINVAL). Duplicate names: MMP_EEXIST. The
 * moments start at zero, allocated on the parameter's backend. */
int mmp_adamw_add_param(mmp_adamw_t *o, const char *name, mmp_tensor_t *param);
size_t mmp_adamw_size(const mmp_adamw_t *o);
void mmp_adamw_set_lr(mmp_adamw_t *o, double lr);
double mmp_adamw_lr(const mmp_adamw_t *o);
/* One optimizer step with the gradients in @grads by parameter name.
 * A parameter without an entry is skipped (torch: grad None; its step count
 * stays). A gradient whose shape differs from its parameter, or a name that
 * is no parameter, is an error reported before anything is updated. */
int mmp_adamw_step(mmp_adamw_t *o, const mmp_tensormap_t *grads);
/* The update of one parameter, @name, from its gradient @grad (transfer
 * none; f32 of the parameter's shape, on its backend): exactly what
 * mmp_adamw_step does for that entry (the same code), at the current lr,
 * and the parameter's step count advances. For the optimizer step inside
 * the backward: called from a grad-ready hook (autograd.h) as each
 * gradient is final, it updates every parameter as mmp_adamw_step would
 * after the backward, bit for bit, while the gradients never all exist at
 * once (doc/training.md, "Optimizer in the backward"). Errors: MMP_EINVAL
 * (NULL), MMP_ENOENT (no such parameter), MMP_ESHAPE (a gradient that
 * does not fit); nothing is updated then. */
int mmp_adamw_step_one(mmp_adamw_t *o, const char *name, const mmp_tensor_t *grad);
/* The state of parameter @i (in the order added), for checkpoints: name,
 * parameter, first and second moments (transfer none) and its step count.
 * Any pointer may be NULL. MMP_EINVAL if @i is out of range. */
int mmp_adamw_state(const mmp_adamw_t *o, size_t i, const char **name, mmp_tensor_t **param,
                    mmp_tensor_t **exp_avg, mmp_tensor_t **exp_avg_sq, int64_t *step);

/* Set the step count of parameter @i (restoring a checkpoint: copy the
 * moments into the tensors mmp_adamw_state hands out, then set the count).
 * MMP_EINVAL if @i is out of range or @step < 0. */
int mmp_adamw_set_step(mmp_adamw_t *o, size_t i, int64_t step);

/* Keep the two moments of every parameter added so far (call it after the
 * last mmp_adamw_add_param; later adds are MMP_EINVAL) in a shared mapping
 * of a temporary file in folder @dir, unlinked at once (nothing is left
 * behind). The moments' current values move there (zero, or restored from a
 * checkpoint). Each update then reads its parameter's moments from the file
 * and writes them back (msync), dropping them from the process's memory
 * (madvise MADV_DONTNEED) and from the page cache (posix_fadvise
 * POSIX_FADV_DONTNEED): the moments cost neither RSS nor cache, at the price
 * of reading and writing both of them at every step (ZeRO-Infinity-style
 * offload to disk). The numbers are the same bits as in memory. The tensors
 * mmp_adamw_state hands out are views of the mapping: reading them (a
 * checkpoint) brings pages in; mmp_adamw_release_moments drops them again.
 * CPU parameters only (MMP_EUNSUPPORTED otherwise); MMP_EIO when the file
 * cannot be made or sized (the disk needs 2 x the parameters' bytes). */
int mmp_adamw_moments_to_file(mmp_adamw_t *o, const char *dir);
/* Write back and drop from memory every parameter's moments (a no-op for
 * moments in memory). 0 or MMP_EIO. */
int mmp_adamw_release_moments(mmp_adamw_t *o);

/* ---- LinearWarmupCosineAnnealingLR (pl_bolts), stepped per optimizer step ----
 * The state lives in the caller's struct (it is what a checkpoint stores).
 * After init, @lr is the rate of optimizer step 0 (warmup_start_lr, as
 * the scheduler's constructor sets it); each mmp_lr_warmup_cosine_step
 * advances one step and returns the new @lr. The values follow pl_bolts's
 * recursive form (each rate from the previous one), which is what
 * PyTorch's scheduler.step() computes, not the closed form. */
typedef struct mmp_lr_warmup_cosine {
  double base_lr, warmup_start_lr, eta_min;
  int64_t warmup_steps, max_steps;
  int64_t last_step; /* pl_bolts's last_epoch */
  double lr;
} mmp_lr_warmup_cosine_t;

/* MMP_EINVAL unless 0 <= warmup_steps < max_steps and base_lr >= 0. */
int mmp_lr_warmup_cosine_init(mmp_lr_warmup_cosine_t *s, double base_lr, int64_t warmup_steps,
                              int64_t max_steps, double warmup_start_lr, double eta_min);
double mmp_lr_warmup_cosine_step(mmp_lr_warmup_cosine_t *s);

/* ---- gradients ---- */
/* torch.nn.utils.clip_grad_norm_ (norm type 2): the total norm of every
 * gradient in @grads as one vector; each gradient is replaced by itself
 * times min(1, max_norm / (total + 1e-6)). @total_norm (nullable) gets the
 * norm before clipping. */
int mmp_clip_grad_norm(mmp_tensormap_t *grads, double max_norm, double *total_norm);
/* @acc[name] += @g[name] for every entry of @g (entries missing from @acc
 * are added as copies): gradient accumulation over micro-batches. Scale
 * each micro-batch's loss by 1/k for the mean over k of them. */
int mmp_grad_accumulate(mmp_tensormap_t *acc, const mmp_tensormap_t *g);

/* ---- freezing ----
 * Whether parameter @name is trained: it is frozen when it matches one of
 * the NULL-terminated glob patterns @freeze (fnmatch, '*' crosses dots) and
 * none of @train, which list the exceptions. Either list may be NULL.
 * AR-LDM's freeze_resnet: freeze {"unet.*"}, train {"unet.*attentions*"};
 * freeze_clip: freeze {"text_encoder.*"}, train {"*.token_embedding.*"}. */
bool mmp_param_trainable(const char *name, const char *const *freeze, const char *const *train);

#ifdef __cplusplus
}
#endif
#endif
