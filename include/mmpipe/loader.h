/* mmpipe/loader.h - reading a dataset ahead with worker threads, in a seeded order, sharded, batched.
 *
 * A loader walks one dataset component epoch by epoch. Worker threads call
 * the dataset's get() ahead of the consumer; items come out in sampler
 * order whatever thread finished first, so a seed fixes the sequence.
 *
 *   mmp_loader_options_t o = mmp_loader_defaults();
 *   o.workers = 2; o.shuffle = true; o.seed = 0;
 *   mmp_loader_t *l = mmp_loader_new(dataset_component, &o);
 *   mmp_tensormap_t *batch;
 *   while (mmp_loader_next(l, &batch) == 0 && batch) {
 *     ... use batch ...
 *     mmp_tensormap_free(batch);
 *   }
 *   mmp_loader_free(l);
 */
#ifndef MMPIPE_LOADER_H
#define MMPIPE_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_loader_options {
  int workers;        /* threads calling get(); 0 = in the caller's thread */
  int prefetch;       /* items decoded ahead at most; 0 = 2 * workers */
  int batch_size;     /* items stacked along a new dim 0 (>= 1) */
  bool shuffle;       /* seeded permutation per epoch; else dataset order */
  uint64_t seed;
  int rank;           /* shard: this process takes positions rank, rank + world_size, ... */
  int world_size;     /* >= 1 */
  bool drop_last;     /* drop a final batch smaller than batch_size */
  bool skip_bad;      /* items failing with MMP_EDATA are skipped with a warning */
} mmp_loader_options_t;

typedef struct mmp_loader mmp_loader_t;

/* workers 0, prefetch 0, batch_size 1, no shuffle, seed 0, rank 0 of 1. */
mmp_loader_options_t mmp_loader_defaults(void);

/* @dataset must be a dataset component and outlive the loader. Starts the
 * workers on epoch 0. (transfer full) NULL + message on bad options. */
mmp_loader_t *mmp_loader_new(const mmp_component_t *dataset, const mmp_loader_options_t *opt);
void mmp_loader_free(mmp_loader_t *l); /* stops and joins the workers; NULL ok */

/* Items of this shard per epoch (before skipping bad ones). */
int64_t mmp_loader_items(const mmp_loader_t *l);

/* The next batch (transfer full), or *out = NULL at the end of the epoch.
 * With batch_size 1 this is the item itself (tensors without a batch dim,
 * and its strings); larger batches stack each tensor along a new dim 0 and
 * carry no strings. "index" (i64 [B]) holds the dataset indices. Errors of get() come
 * back here with the dataset index in the message (after the items before
 * it); the loader then stays at the end of the epoch. */
int mmp_loader_next(mmp_loader_t *l, mmp_tensormap_t **out);

/* A batch of @items [0, n) (n >= 1) as mmp_loader_next makes it, for callers
 * that order items themselves (the train task): each tensor of items[0]
 * stacked along a new dim 0 ("index" concatenated), no strings; into *@out
 * (transfer full). MMP_ESHAPE naming the tensor when the items differ in its
 * shape or lack it. */
int mmp_loader_stack(mmp_tensormap_t *const *items, int n, mmp_tensormap_t **out);

/* Restart at the beginning of @epoch (a new permutation when shuffling). */
int mmp_loader_set_epoch(mmp_loader_t *l, int64_t epoch);

#ifdef __cplusplus
}
#endif
#endif
