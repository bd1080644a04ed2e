/* core/cuda/norm.cu - group_norm and layer_norm with f32 two-pass statistics (mean, then centred variance). */
#include "core/cuda/common.cuh"

/* One block per (n, group): the group's (C/groups)*S elements are contiguous. */
__global__ void __launch_bounds__(1024) group_norm_kernel(const float *x, int64_t C, int64_t S, int groups, const float *gamma,
                                  const float *beta, float eps, float *y) {
  __shared__ float sh[32];
  int64_t ng = blockIdx.x;
  int64_t n = ng / groups, g = ng - n * groups;
  int64_t Cg = C / groups, M = Cg * S;
  int64_t base = (n * C + g * Cg) * S;
  const float *p = x + base;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) s += p[i];
  float mean = block_sum(s, sh) / (float)M;
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    float d = p[i] - mean;
    v += d * d;
  }
  float var = block_sum(v, sh) / (float)M;
  float rstd = 1.0f / sqrtf(var + eps);
  float *q = y + base;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    int64_t c = g * Cg + i / S;
    float t = (p[i] - mean) * rstd;
    if (gamma) t *= gamma[c];
    if (beta) t += beta[c];
    q[i] = t;
  }
}

extern "C" int mmpk_group_norm(cudaStream_t st, const float *x, int64_t N, int64_t C, int64_t S, int groups,
                               const float *gamma, const float *beta, float eps, float *y) {
  if (N * C * S == 0) return 0;
  int64_t M = C / groups * S;
  int T = M >= 16384 ? 1024 : M >= 2048 ? 512 : 128;
  group_norm_kernel<<<(unsigned)(N * groups), T, 0, st>>>(x, C, S, groups, gamma, beta, eps, y);
  return MMPK_LAUNCH_RESULT();
}

/* One warp per row. */
__global__ void layer_norm_kernel(const float *x, int64_t rows, int64_t D, const float *gamma, const float *beta,
                                  float eps, float *y) {
  int lane = threadIdx.x & 31;
  int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += nwarps) {
    const float *p = x + r * D;
    float *q = y + r * D;
    float s = 0.0f;
    for (int64_t i = lane; i < D; i += 32) s += p[i];
    float mean = warp_sum(s) / (float)D;
    float v = 0.0f;
    for (int64_t i = lane; i < D; i += 32) {
      float d = p[i] - mean;
      v += d * d;
    }
    float rstd = 1.0f / sqrtf(warp_sum(v) / (float)D + eps);
    for (int64_t i = lane; i < D; i += 32) {
      float t = (p[i] - mean) * rstd;
      if (gamma) t *= gamma[i];
      if (beta) t += beta[i];
      q[i] = t;
    }
  }
}

extern "C" int mmpk_layer_norm(cudaStream_t st, const float *x, int64_t rows, int64_t D, const float *gamma,
                               const float *beta, float eps, float *y) {
  if (rows * D == 0) return 0;
  const int T = 256;
  layer_norm_kernel<<<grid_for(rows * 32, T), T, 0, st>>>(x, rows, D, gamma, beta, eps, y);
  return MMPK_LAUNCH_RESULT();
}
