/* mmpipe/cuda.h - what only the CUDA backend offers (built when configure finds CUDA: HAVE_CUDA).
 *
 * The CUDA backend itself is reached through the generic interface:
 * mmp_backend_get("cuda") (MMP_EDEVICE "no CUDA device: ..." without a GPU)
 * or mmp_backend_get("auto") (CUDA, else the CPU with one warning). This
 * header adds device facts for benchmarks and on-device Philox draws for the
 * seeded generator (include/mmpipe/rng.h):
 *
 *   mmp_backend_t *gpu = mmp_backend_get("cuda");
 *   mmp_cuda_info_t info;
 *   if (gpu && mmp_cuda_info(gpu, &info) == 0)
 *     printf("%s: %.0f TFLOP/s fp16\n", info.name, info.fp16_tflops);
 *
 * Environment: MMPIPE_CUDA_DEVICE (ordinal, default 0), MMPIPE_CUDA_SYNC=1
 * (synchronise after every op so that a failing kernel is reported by the op
 * that launched it), MMPIPE_CUDA_TF32=1 (f32 GEMMs may use TF32 tensor
 * cores), MMPIPE_POOL_MAX_MB (cache bound, shared meaning with the CPU pool).
 */
#ifndef MMPIPE_CUDA_H
#define MMPIPE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <mmpipe/backend.h>
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_cuda_info {
  char name[256];     /* "NVIDIA H100 80GB HBM3" */
  int device;         /* ordinal in use */
  int cc_major, cc_minor;
  int sm_count;
  double clock_ghz;   /* peak SM clock */
  size_t total_mem, free_mem; /* bytes, free as of the call */
  double fp16_tflops; /* dense f16 tensor-core peak with f32 accumulation,
                         from SM count x clock x per-SM rate; 0 if unknown */
} mmp_cuda_info_t;

/* Facts about the device behind @be (the "cuda" backend). Returns 0,
 * MMP_EINVAL when @be is not the CUDA backend, MMP_EDEVICE on a CUDA error. */
int mmp_cuda_info(mmp_backend_t *be, mmp_cuda_info_t *out);

typedef enum mmp_cuda_dist {
  MMP_CUDA_UNIFORM = 0, /* f32 in [0, 1) */
  MMP_CUDA_NORMAL = 1,  /* f32 standard normal */
  MMP_CUDA_RANDINT = 2  /* i64 in [low, high) */
} mmp_cuda_dist_t;

/* Fill the contiguous CUDA tensor @dst (f32, or i64 for RANDINT) with draws
 * offset, offset+1, ... of the Philox stream of @seed: element i equals what
 * the CPU Philox generator (MMP_RNG_PHILOX, core/rng.c) gives for draw
 * offset+i, so a generator at @offset can fill device tensors without a host
 * round trip and then advance its offset by numel(dst). @low/@high only for
 * RANDINT. Returns 0 or MMP_EINVAL/MMP_EDTYPE/MMP_EDEVICE. */
int mmp_cuda_philox_fill(mmp_tensor_t *dst, uint64_t seed, uint64_t offset, mmp_cuda_dist_t dist, int64_t low,
                         int64_t high);

#ifdef __cplusplus
}
#endif
#endif
