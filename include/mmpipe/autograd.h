/* mmpipe/autograd.h - the tape: reverse-mode automatic differentiation of any forward made of core ops.
 *
 * While a tape is current on a thread, every op of tensor.h (and
 * mmp_mse_loss) that takes a tracked tensor records a node; its output
 * becomes tracked. Watched tensors (parameters, inputs) are the leaves.
 * mmp_tape_backward() walks the nodes in reverse, calls the backward ops of
 * grad.h and adds the gradient of every watched leaf to a tensormap under
 * the leaf's name, which is what the optimizer (optim.h) takes.
 *
 *   mmp_tape_t *tape = mmp_tape_new();
 *   mmp_tape_watch(tape, "fc.weight", w);
 *   mmp_tape_t *prev = mmp_tape_set_current(tape);
 *   mmp_tensor_t *y = mmp_linear(x, w, NULL);
 *   mmp_tensor_t *loss = mmp_mse_loss(y, target);
 *   mmp_tape_set_current(prev);
 *   mmp_tensormap_t *grads = mmp_tensormap_new();
 *   mmp_tape_backward(tape, loss, NULL, grads);   // grads["fc.weight"]
 *   mmp_tape_free(tape);
 *
 * Rules (doc/training.md):
 * - ops on untracked tensors record nothing: frozen weights and data cost
 *   nothing, and with no tape current an op pays one thread-local load;
 * - a node keeps references to what its backward needs (inputs, and the
 *   output of softmax and attention); they are dropped as the reverse pass
 *   goes, and a tape is used for one backward (it is empty afterwards;
 *   watch again for the next step);
 * - several uses of one tensor sum their gradients; broadcasting is undone
 *   with mmp_sum_to_shape;
 * - in-place writes are not differentiable: mmp_copy_into into or from a
 *   tracked tensor while its tape is current is an MMP_EUNSUPPORTED error;
 *   ops without a backward (clamp, abs, max, pools, resizes, ...) record a
 *   node that fails with MMP_EUNSUPPORTED if a gradient reaches it;
 * - mmp_embedding has no padding index: every row of the table gets its
 *   gradient (CLIP's embeddings have none; BERT's padding_idx row would
 *   need masking by the caller).
 */
#ifndef MMPIPE_AUTOGRAD_H
#define MMPIPE_AUTOGRAD_H

#include <mmpipe/plugin.h> /* mmp_tensormap_t */
#include <mmpipe/rng.h>
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_tape mmp_tape_t;

/* An empty tape. (transfer full) NULL + MMP_ENOMEM. */
mmp_tape_t *mmp_tape_new(void);
/* Drops every reference the tape holds; a tape that is current on this
 * thread stops being current. NULL is a no-op. */
void mmp_tape_free(mmp_tape_t *t);

/* Track @x (transfer none: the tape does not keep it) as a leaf whose
 * gradient is wanted, under @name (copied): a parameter's state-dict name,
 * or an input such as "latents". Errors: MMP_EINVAL for NULL arguments, a
 * non-f32 @x, or an @x this tape already tracks (watched twice, or the
 * output of a recorded op). */
int mmp_tape_watch(mmp_tape_t *t, const char *name, mmp_tensor_t *x);

/* Ops called on this thread record into @t from now on (NULL stops).
 * Returns the previous current tape (transfer none), to restore later. */
mmp_tape_t *mmp_tape_set_current(mmp_tape_t *t);
/* (transfer none, nullable) The current tape of this thread. */
mmp_tape_t *mmp_tape_current(void);
/* Whether @x is tracked by @t (watched or computed from a watched tensor
 * while @t was current). */
bool mmp_tape_tracks(const mmp_tape_t *t, const mmp_tensor_t *x);

/* Reverse pass from @out with seed @grad (NULL: 1, for a loss with one
 * element; else @out's shape). The gradient of every watched tensor that
 * @out depends on is added to @grads under its name (set when absent,
 * summed with the tensor there when present: accumulation by calling
 * again). Gradients are contiguous f32 of the leaf's shape (transfer full
 * into the map). Recording is suspended on this thread meanwhile. The
 * tape is empty afterwards, whether or not it succeeded.
 * Errors: MMP_EINVAL (@out not tracked by @t, seed of the wrong shape),
 * MMP_EUNSUPPORTED (a gradient reached an op without a backward, named),
 * or the error of a backward op; @grads then holds what was added before. */
int mmp_tape_backward(mmp_tape_t *t, mmp_tensor_t *out, const mmp_tensor_t *grad, mmp_tensormap_t *grads);

/* Told, during mmp_tape_backward, that the gradient of the watched leaf
 * @name is final: it has just been added to the caller's map and @grad is
 * that map entry (transfer none; contiguous f32, summed with what the map
 * held before). Return 0, or a negative MMP_E* code to stop the backward
 * with that error. */
typedef int (*mmp_grad_ready_cb)(void *user, const char *name, mmp_tensor_t *grad);
/* Install (@cb NULL: remove) the grad-ready hook of @t; it stays for later
 * backwards of @t. A leaf's gradient is final once the reverse walk has
 * passed the first recorded op that read the leaf, so the hook is called
 * as soon as that op's backward ran, while the walk continues with earlier
 * ops: data-parallel training (dist.h) sends gradient buckets from it,
 * overlapping communication with the rest of the backward. Each delivered
 * gradient is reported once, in the order the walk finishes them (the
 * same order for the same forward); with a hook, the map's insertion order
 * is that order (without one, it is the watching order).
 * When the hook is called, no op left to walk reads the leaf: every
 * recorded op that read it (a checkpoint region counts as reading what its
 * replay reads) comes after its first use and has been walked. So the hook
 * may change the leaf in place (the optimizer step inside the backward,
 * mmp_adamw_step_one) and may take the gradient out of the map
 * (mmp_tensormap_remove), which the tape does not touch again. */
void mmp_tape_on_grad_ready(mmp_tape_t *t, mmp_grad_ready_cb cb, void *user);

/* Nodes recorded so far (tests, and to check that frozen parts record
 * nothing). */
size_t mmp_tape_size(const mmp_tape_t *t);

/* Bytes of the tensors that @t's nodes hold for their backward now (the
 * activations a training step keeps; a tensor held by two nodes counts
 * twice; weights count where an op keeps them, though they live anyway),
 * including the nested tapes of checkpoint regions being replayed under
 * it; and the most it held since mmp_tape_new() (forward and backward
 * together). 0 for NULL. */
size_t mmp_tape_saved_bytes(const mmp_tape_t *t);
size_t mmp_tape_peak_bytes(const mmp_tape_t *t);

/* ---- gradient checkpointing (torch.utils.checkpoint) ----
 *
 * A region is a function of some tensors that returns one new tensor. Run
 * through mmp_tape_checkpoint() while a tape is current, it records one
 * node that keeps only the region's inputs instead of the activations of
 * every op inside it: activation memory becomes the regions' inputs plus
 * the inside of one region. When the reverse pass reaches the node, the
 * region runs again under a nested tape and its gradient is walked back
 * through that tape, which is then dropped: each checkpointed op runs its
 * forward twice. Any tensor the current tape tracks that the region reads
 * (its inputs, captured tensors, the parameters) gets its gradient, summed
 * with its other uses as usual.
 *
 *   static mmp_tensor_t *block(void *user, int nin, mmp_tensor_t *const *in) {
 *     const my_block_t *b = *(const my_block_t *const *)user;
 *     return my_block_forward(b, in[0], in[1]);   // (transfer full)
 *   }
 *   ...
 *   mmp_tensor_t *args[2] = {h, emb};
 *   mmp_tensor_t *y = mmp_tape_checkpoint(block, &b, sizeof b, 2, args, NULL);
 *
 * Rules:
 * - @fn must compute the same way each time: the same ops on the same
 *   tensors. Random draws replay when they come from @rng: its state is
 *   saved at the first run, set back for the replay, and restored after
 *   it, so the caller's later draws are unaffected (torch's preserve_rng_state);
 *   a region must not draw from a generator it was not given;
 * - @fn must read tensors only from @in and from objects that live until
 *   the backward (a model's weights): the node keeps references to @in,
 *   not to anything else @user points to;
 * - the output's gradient reaches the region's inputs only through @fn's
 *   return value: one output per region (a block of a network);
 * - regions nest: a region run inside another runs plainly in the first
 *   run and as a region of the nested tape in the replay;
 * - without a current tape (inference), or when @fn reads nothing tracked,
 *   this is @fn(@user, @nin, @in) and records nothing.
 */
typedef mmp_tensor_t *(*mmp_checkpoint_fn)(void *user, int nin, mmp_tensor_t *const *in);

/* Run region @fn on @in (transfer none; NULL entries allowed) with @user:
 * when @user_size > 0 the @user_size bytes at @user are copied and @fn gets
 * the copy at both runs; with 0, @user itself, which must then live until
 * the backward. @rng (nullable): the generator the region draws from.
 * Returns @fn's result (transfer full), tracked by the current tape when
 * the region read a tracked tensor. NULL on failure: @fn's error, or
 * MMP_EINVAL / MMP_ENOMEM. An error of the replay surfaces from
 * mmp_tape_backward(). */
mmp_tensor_t *mmp_tape_checkpoint(mmp_checkpoint_fn fn, void *user, size_t user_size, int nin,
                                  mmp_tensor_t *const *in, mmp_rng_t *rng);

#ifdef __cplusplus
}
#endif
#endif
