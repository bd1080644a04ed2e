/* mmpipe/rng.h - seeded random numbers, identical on every machine and backend.
 *
 * MMP_RNG_PHILOX: counter-based (Philox4x32-10); the n-th number depends
 * only on (seed, n), so CPU and CUDA produce the same tensors.
 * MMP_RNG_TORCH: reproduces torch.randn/rand on CPU with
 * torch.Generator().manual_seed(seed) bit for bit (float32), so a seed gives
 * the same initial latents as PyTorch pipelines.
 * MMP_RNG_NUMPY: numpy's legacy RandomState after np.random.seed(seed)
 * (MT19937 seeded by init_genrand(seed mod 2^32)): mmp_rng_uniform is
 * random_sample(), so n calls give np.random.rand(n) (AR-LDM's CFG drop);
 * mmp_rng_u64 is two raw 32-bit words (high first). The tensor draws are not
 * numpy's and fail with MMP_EUNSUPPORTED. Not offered by mmp_rng_mode_parse.
 *
 *   mmp_rng_t *g = mmp_rng_new(42, MMP_RNG_TORCH);
 *   int64_t shape[4] = {1, 4, 64, 64};
 *   mmp_tensor_t *x = mmp_rng_randn(g, mmp_backend_get("cpu"), 4, shape);
 *   mmp_tensor_t *y = mmp_dropout(g, x, 0.1);   // F.dropout(x, 0.1, True)
 */
#ifndef MMPIPE_RNG_H
#define MMPIPE_RNG_H

#include <stddef.h>
#include <stdint.h>

#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmp_rng_mode { MMP_RNG_PHILOX = 0, MMP_RNG_TORCH = 1, MMP_RNG_NUMPY = 2 } mmp_rng_mode_t;
typedef struct mmp_rng mmp_rng_t;

mmp_rng_t *mmp_rng_new(uint64_t seed, mmp_rng_mode_t mode); /* (transfer full) */
void mmp_rng_free(mmp_rng_t *g);                             /* NULL ok */
mmp_rng_mode_t mmp_rng_mode(const mmp_rng_t *g);
/* Parse "philox" / "torch". */
int mmp_rng_mode_parse(const char *s, mmp_rng_mode_t *out);

/* f32 tensors; the stream advances as torch's would. (transfer full) */
mmp_tensor_t *mmp_rng_randn(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape);
mmp_tensor_t *mmp_rng_rand(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape);
/* i64 in [low, high). */
mmp_tensor_t *mmp_rng_randint(mmp_rng_t *g, mmp_backend_t *be, int64_t low,
                              int64_t high, int ndim, const int64_t *shape);
/* One shard of a batch's draw (data parallelism): the tensor of @shape is
 * rows [@row_off, @row_off + shape[0]) of the draw of [@rows_total,
 * shape[1:]], which is made whole (so the generator advances as for the
 * whole batch) and cut. MMP_EINVAL when the rows lie outside the batch.
 * (transfer full, contiguous) */
mmp_tensor_t *mmp_rng_randn_rows(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape, int64_t rows_total,
                                 int64_t row_off);
mmp_tensor_t *mmp_rng_randint_rows(mmp_rng_t *g, mmp_backend_t *be, int64_t low, int64_t high, int ndim,
                                   const int64_t *shape, int64_t rows_total, int64_t row_off);
/* Scalar draws for host-side choices (frame choice, shuffling). */
uint64_t mmp_rng_u64(mmp_rng_t *g);
double mmp_rng_uniform(mmp_rng_t *g); /* [0, 1) */

/* ---- dropout (torch.nn.functional.dropout with training=True) ----
 *
 * torch 1.13 on the CPU (no MKL, as Debian's build; doc/training.md):
 * F.dropout(x, p, True) is `noise = empty_like(x).bernoulli_(1 - p);
 * noise.div_(1 - p); x * noise`. bernoulli_ draws one
 * uniform_real_distribution<double> per element of x in row-major order
 * (random64() masked to 53 bits times 2^-53: mmp_rng_uniform of an
 * MMP_RNG_TORCH generator) and keeps the element when u < 1 - p; div_
 * rounds 1 - p to float first, so a kept element of the noise is
 * 1.0f / (float)(1 - p); the product is a float product. p = 0, p = 1 and an
 * empty x draw nothing. With the other modes the same recipe runs on their
 * mmp_rng_uniform stream (Philox: the same on every backend). */

/* torch's noise tensor for an x of @ndim/@shape: f32 on @be holding 0 or
 * 1.0f / (float)(1 - @p), drawn as above (row-major, one uniform per
 * element). @p in (0, 1). (transfer full) NULL + MMP_EINVAL for a NULL
 * generator or @p outside (0, 1); MMP_ENOMEM. */
mmp_tensor_t *mmp_rng_dropout_mask(mmp_rng_t *g, mmp_backend_t *be, double p, int ndim, const int64_t *shape);

/* F.dropout(@x, @p, training=True) of f32 @x (any layout, any backend: the
 * noise is drawn on the host and moved to @x's backend): @x * noise, one
 * mmp_mul, so a current tape records it and the backward multiplies the
 * upstream gradient by the same saved noise (torch's gradient), and a
 * checkpoint region given @g replays the same draws
 * (mmp_tape_checkpoint). @p = 0 or an empty @x: a new reference to @x, no
 * draws (as eval mode); @p = 1: @x * 0, no draws. (transfer full) NULL +
 * MMP_EINVAL (NULL argument, @p outside [0, 1], a non-f32 @x) or the
 * error of the multiplication. */
mmp_tensor_t *mmp_dropout(mmp_rng_t *g, mmp_tensor_t *x, double p);

/* ---- stochastic depth (timm's DropPath in train mode) ----
 *
 * drop_path(x, p): each sample (row of dimension 0) of a residual branch
 * kept or zeroed as a whole. Two recipes, by the timm release that ran:
 * MMP_DROP_PATH_BERNOULLI (timm >= 0.5, what an unpinned `pip install
 * timm` gives, scale_by_keep): `noise = x.new_empty((B, 1, ...)).bernoulli_(1
 * - p); noise.div_(1 - p); x * noise` - one uniform double per sample, as
 * mmp_rng_dropout_mask draws for shape [B, 1, ...]. MMP_DROP_PATH_RAND (timm
 * 0.4.12, BLIP's pin): `r = floor((1 - p) + torch.rand((B, 1, ...)))` (one
 * uniform float per sample, the sum rounded as a float), `x / (1 - p) * r`
 * (the division by the float of 1 - p, then the product). */
typedef enum mmp_drop_path_draws {
  MMP_DROP_PATH_BERNOULLI = 0, /* timm >= 0.5 */
  MMP_DROP_PATH_RAND = 1       /* timm 0.4.12 */
} mmp_drop_path_draws_t;

/* drop_path(@x, @p, training=True) of f32 @x [B, ...] (any layout, any
 * backend) drawn from @g by @draws, through mmp_mul (and mmp_div for
 * MMP_DROP_PATH_RAND), so a tape records it and its backward is torch's.
 * @p = 0 or an empty @x: a new reference to @x, no draws. (transfer full)
 * NULL + MMP_EINVAL (NULL argument, @p outside [0, 1), a non-f32 or 0-d
 * @x, an unknown @draws) or the error of the arithmetic. */
mmp_tensor_t *mmp_drop_path(mmp_rng_t *g, mmp_tensor_t *x, double p, mmp_drop_path_draws_t draws);

/* ---- draws of one shard of a batch (data parallelism) ----
 *
 * @x [n, ...] holds rows [@row_off, @row_off + n) of a batch of @rows_total
 * rows along dimension 0: the generator advances exactly as the op on the
 * whole batch would (the other rows' numbers drawn and discarded) and @x
 * gets its rows' noise, so N ranks each given their share, with generators
 * in one state, compute what one process given the whole batch computes.
 * With @rows_total = n and @row_off = 0 they are mmp_dropout and
 * mmp_drop_path (mmp_dropout_rows also takes @rows_total = -1: not
 * sharded, any @x); MMP_EINVAL when the rows lie outside the batch; an
 * empty shard of a non-empty batch still draws. (transfer full) */
mmp_tensor_t *mmp_dropout_rows(mmp_rng_t *g, mmp_tensor_t *x, double p, int64_t rows_total, int64_t row_off);
mmp_tensor_t *mmp_drop_path_rows(mmp_rng_t *g, mmp_tensor_t *x, double p, mmp_drop_path_draws_t draws, int64_t rows_total,
                                 int64_t row_off);

/* The whole state of a generator as bytes (checkpoints: a run resumed from
 * them draws exactly what the uninterrupted run would have drawn). The
 * layout is fixed (little-endian fields, MMP_RNG_STATE_SIZE bytes) and
 * independent of the build. */
#define MMP_RNG_STATE_SIZE 2536
/* Write the state of @g into @buf (@len >= MMP_RNG_STATE_SIZE).
 * MMP_EINVAL for a NULL argument or a short buffer. */
int mmp_rng_get_state(const mmp_rng_t *g, void *buf, size_t len);
/* Replace the state of @g with one from mmp_rng_get_state (its mode must be
 * @g's). MMP_EINVAL for a wrong length, a mode mismatch or an invalid
 * state; @g is unchanged then. */
int mmp_rng_set_state(mmp_rng_t *g, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
