/* mmpipe/dist.h - data-parallel training: ranks, gradient averaging overlapped with the backward, rank-0 duties.
 *
 * N processes (mpirun -np N) each train the same model on their shard of
 * the data (mmp_loader_opts_t.rank / world_size) with per-rank batch b;
 * after each backward the gradients are averaged over the ranks, so every
 * rank takes the same optimizer step as one process with batch N * b would
 * (doc/training.md, "Data parallel"). Without MPI in the build, or when not
 * started by mpirun, the group has one rank and every call is a no-op.
 *
 *   mmp_dist_t *d = mmp_dist_init();                 // rank, size
 *   model->parameters(self, mmp_dist_broadcast_param_cb, d); // rank 0's initial weights everywhere
 *   opts.rank = mmp_dist_rank(d); opts.world_size = mmp_dist_size(d); // the loader's shard
 *   for (...) {
 *     ... watch the parameters, forward under the tape, loss ...
 *     mmp_dist_grads_begin(d, tape);                 // buckets leave while the backward runs
 *     mmp_tape_backward(tape, loss, NULL, grads);
 *     mmp_dist_grads_end(d, grads);                  // grads now hold the average over the ranks
 *     mmp_clip_grad_norm(grads, 1.0, NULL); mmp_adamw_step(opt, grads);
 *     if (mmp_dist_is_root(d)) { ... log, checkpoint ... }
 *   }
 *   mmp_dist_finalize(d);
 *
 * Rules:
 * - every rank must produce the same gradients by name in the same order
 *   (the same model, frozen set and forward): buckets are matched by
 *   position, not by name;
 * - the reduction is deterministic by default (MMP_DIST_ORDERED): each
 *   bucket is all-gathered and summed in rank order 0, 1, ..., N-1 in
 *   double, so a run is reproducible given the seed and N and every rank
 *   holds bit-identical averages; MMP_DIST_ALLREDUCE uses MPI_Iallreduce
 *   (less traffic for large N; its summation order is the MPI library's);
 * - MPI is called from the thread that called mmp_dist_init only
 *   (MPI_THREAD_FUNNELED): the backward and the training loop run there.
 */
#ifndef MMPIPE_DIST_H
#define MMPIPE_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include <mmpipe/autograd.h>
#include <mmpipe/log.h>
#include <mmpipe/plugin.h> /* mmp_tensormap_t */
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_dist mmp_dist_t;

typedef enum mmp_dist_reduce {
  MMP_DIST_ORDERED = 0,   /* all-gather, sum in rank order (default; reproducible) */
  MMP_DIST_ALLREDUCE = 1, /* MPI_Iallreduce(MPI_SUM) */
} mmp_dist_reduce_t;

/* Whether this build has MPI (configure --with-mpi). */
bool mmp_dist_built(void);

/* Join the process group. With MPI built in and the process started by a
 * launcher (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK in the
 * environment): MPI_Init_thread (FUNNELED) unless MPI is already
 * initialised, rank and size of MPI_COMM_WORLD (on a duplicate
 * communicator). Otherwise a group of one. (transfer full) NULL +
 * MMP_ENOMEM / MMP_ERUNTIME (MPI failed, its message quoted). */
mmp_dist_t *mmp_dist_init(void);
/* Finish pending work and free; MPI_Finalize if mmp_dist_init called
 * MPI_Init. NULL is a no-op. Call once, at the end of the program. */
void mmp_dist_finalize(mmp_dist_t *d);

int mmp_dist_rank(const mmp_dist_t *d); /* 0 for NULL */
int mmp_dist_size(const mmp_dist_t *d); /* 1 for NULL */
bool mmp_dist_is_root(const mmp_dist_t *d); /* rank 0 (true for NULL) */

/* Gradients travel in buckets of about @bytes (a bucket closes once it
 * holds at least that much; one larger gradient is a bucket of its own).
 * Default 4 MiB. Every rank must use the same value. */
void mmp_dist_set_bucket_bytes(mmp_dist_t *d, size_t bytes);
void mmp_dist_set_reduce(mmp_dist_t *d, mmp_dist_reduce_t mode);

/* End every rank with exit status @code (MPI_Abort) after a failure on
 * this one: the others would otherwise wait forever in their next
 * collective. A group of one: returns (the caller exits as usual). */
void mmp_dist_abort(mmp_dist_t *d, int code);

/* Wait for every rank. 0 or MMP_ERUNTIME. */
int mmp_dist_barrier(mmp_dist_t *d);

/* Overwrite @x (any backend, contiguous) on every rank with rank 0's
 * contents, in place. MMP_EINVAL for a non-contiguous @x; MMP_ERUNTIME. */
int mmp_dist_broadcast(mmp_dist_t *d, mmp_tensor_t *x);
/* An mmp_param_cb (plugin.h) broadcasting each parameter: @dist is the
 * mmp_dist_t. Call on every rank with the same model. */
int mmp_dist_broadcast_param_cb(void *dist, const char *name, mmp_tensor_t *param);

/* Average @n doubles over the ranks in place, deterministically (rank
 * order): the loss to log, metrics. 0 or MMP_ERUNTIME. */
int mmp_dist_average(mmp_dist_t *d, double *v, int n);

/* Gradient averaging overlapped with the backward: begin installs a
 * grad-ready hook on @t (autograd.h) that packs each final gradient into
 * the open bucket and starts a non-blocking collective when the bucket is
 * full; end sends the last bucket, waits for all, writes the averages into
 * the gradient tensors of @grads (the map the backward filled) and removes
 * the hook. With gradient accumulation, begin before the last micro-batch's
 * backward only (the hook sees the accumulated sums). A group of one: both
 * are no-ops. Errors: MMP_EINVAL (a gradient not f32, or end without
 * begin), MMP_ERUNTIME (MPI, its message quoted), MMP_ENOMEM; after an error
 * the gradients are unspecified and end must still be called. */
int mmp_dist_grads_begin(mmp_dist_t *d, mmp_tape_t *t);
int mmp_dist_grads_end(mmp_dist_t *d, mmp_tensormap_t *grads);
/* The same, with each gradient handed to @cb once averaged: as soon as its
 * bucket's collective completes (seen at the hook's progress calls during
 * the backward, else at end), the averages are written into the gradient
 * tensor and @cb(@user, name, grad) is called, bucket by bucket in the
 * walk's order; end delivers the rest. For an optimizer in the backward
 * (mmp_adamw_step_one): the update waits only for its own bucket, and the
 * transfers overlap the backward. A bucket's gradients are held until it
 * is delivered. A group of one (or NULL @d): @cb is installed as the
 * tape's grad-ready hook itself and end does nothing. An error of @cb
 * stops the backward (the hook's rule) or is returned by end. */
typedef int (*mmp_dist_averaged_cb)(void *user, const char *name, mmp_tensor_t *grad);
int mmp_dist_grads_begin_cb(mmp_dist_t *d, mmp_tape_t *t, mmp_dist_averaged_cb cb, void *user);
/* Average every gradient of @grads (in the map's order, which must be the
 * same on every rank) without a tape: a hand-written backward, or
 * accumulated gradients. Same buckets and reduction as above. */
int mmp_dist_allreduce_grads(mmp_dist_t *d, mmp_tensormap_t *grads);

/* What the last gradient averaging did (zeros in a group of one). */
typedef struct mmp_dist_stats {
  size_t buckets;     /* collectives started */
  size_t early;       /* of which started during the backward (from the hook) */
  size_t floats;      /* gradient elements averaged */
  double wait_s;      /* seconds mmp_dist_grads_end / _allreduce_grads spent finishing */
} mmp_dist_stats_t;
void mmp_dist_stats(const mmp_dist_t *d, mmp_dist_stats_t *out);

/* mmp_log() on rank 0 only; a no-op elsewhere. */
void mmp_dist_log(const mmp_dist_t *d, mmp_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#ifdef __cplusplus
}
#endif
#endif
