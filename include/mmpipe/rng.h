/* mmpipe/rng.h - seeded random numbers, identical on every machine and backend.
 *
 * MMP_RNG_PHILOX: counter-based (Philox4x32-10); the n-th number depends
 * only on (seed, n), so CPU and CUDA produce the same tensors.
 * MMP_RNG_TORCH: reproduces torch.randn/rand on CPU with
 * torch.Generator().manual_seed(seed) bit for bit (float32), so a seed gives
 * the same initial latents as PyTorch pipelines.
 *
 *   mmp_rng_t *g = mmp_rng_new(42, MMP_RNG_TORCH);
 *   int64_t shape[4] = {1, 4, 64, 64};
 *   mmp_tensor_t *x = mmp_rng_randn(g, mmp_backend_get("cpu"), 4, shape);
 */
#ifndef MMPIPE_RNG_H
#define MMPIPE_RNG_H

#include <stdint.h>

#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmp_rng_mode { MMP_RNG_PHILOX = 0, MMP_RNG_TORCH = 1 } mmp_rng_mode_t;
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

#ifdef __cplusplus
}
#endif
#endif
