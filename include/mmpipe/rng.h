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
/* Scalar draws for host-side choices (frame choice, shuffling). */
uint64_t mmp_rng_u64(mmp_rng_t *g);
double mmp_rng_uniform(mmp_rng_t *g); /* [0, 1) */

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
