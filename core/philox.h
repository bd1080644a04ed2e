/* core/philox.h - the Philox-4x32-10 block function (Salmon et al. 2011), shared by core/rng.c
 * and the CUDA kernels so that both draw the same stream (internal, header-only). */
#ifndef MMPIPE_CORE_PHILOX_H
#define MMPIPE_CORE_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define MMP_PHILOX_FN static __host__ __device__ __forceinline__
#else
#define MMP_PHILOX_FN static inline
#endif

/* Ten rounds on the counter (ctr, 0) under the key @key: four 32-bit words. */
MMP_PHILOX_FN void mmp_philox4x32_10(uint64_t ctr, uint64_t key, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

#endif
