/* core/cuda/common.cuh - helpers shared by the CUDA kernels: dtype loads/stores, strided offsets, warp reductions. */
#ifndef MMPIPE_CUDA_COMMON_CUH
#define MMPIPE_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "core/cuda/kernels.h"

/* mmp_dtype_t values (include/mmpipe/tensor.h), repeated so that the .cu
 * files need no C headers of the core. */
enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2, DT_I64 = 3, DT_I32 = 4, DT_U8 = 5, DT_BOOL = 6, DT_F64 = 7 };

#define MMPK_LAUNCH_RESULT() ((int)cudaGetLastError())

/* Blocks for a grid-stride loop over n items. */
static inline unsigned grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32;
  return (unsigned)b;
}

/* Element offset of linear index @i (row-major over it->shape) in operand k. */
__device__ __forceinline__ int64_t iter_offset(const mmpk_iter_t &it, int k, int64_t i) {
  int64_t off = 0;
  for (int d = it.nd - 1; d >= 0; d--) {
    int64_t n = it.shape[d];
    int64_t q = i / n;
    off += (i - q * n) * it.stride[k][d];
    i = q;
  }
  return off;
}

/* Scalar conversions through float (f32/f16/bf16) or double (the rest). */
template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ double load_any(int dt, const char *p) {
  switch (dt) {
  case DT_F32: return *(const float *)p;
  case DT_F16: return __half2float(*(const __half *)p);
  case DT_BF16: return __bfloat162float(*(const __nv_bfloat16 *)p);
  case DT_I64: return (double)*(const long long *)p;
  case DT_I32: return *(const int *)p;
  case DT_U8: return *(const unsigned char *)p;
  case DT_BOOL: return *(const unsigned char *)p != 0;
  case DT_F64: return *(const double *)p;
  default: return 0;
  }
}

/* As the CPU backend's st_any: non-finite values become 0 in integer types. */
__device__ __forceinline__ void store_any(int dt, char *p, double v) {
  bool fin = isfinite(v);
  switch (dt) {
  case DT_F32: *(float *)p = (float)v; break;
  case DT_F16: *(__half *)p = __float2half_rn((float)v); break;
  case DT_BF16: *(__nv_bfloat16 *)p = __float2bfloat16_rn((float)v); break;
  case DT_I64: *(long long *)p = fin ? (long long)v : 0; break;
  case DT_I32: *(int *)p = fin ? (int)(long long)v : 0; break;
  case DT_U8: *(unsigned char *)p = fin ? (unsigned char)(long long)v : 0; break;
  case DT_BOOL: *(unsigned char *)p = v != 0; break;
  case DT_F64: *(double *)p = v; break;
  default: break;
  }
}

__device__ __forceinline__ int dt_size(int dt) {
  switch (dt) {
  case DT_F16: case DT_BF16: return 2;
  case DT_I64: case DT_F64: return 8;
  case DT_U8: case DT_BOOL: return 1;
  default: return 4;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Block-wide sum (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the result. @sh: 32 floats of shared memory. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads(); /* sh may still be read from a previous call */
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(v);
}

#endif
