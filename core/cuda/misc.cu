/* core/cuda/misc.cu - nearest upsampling, pooling, embedding lookup, timestep embedding and the Philox generator. */
#include "core/cuda/common.cuh"
#include "core/philox.h"

__global__ void upsample2x_kernel(const float *x, float *y, int64_t H, int64_t W, int64_t total) {
  int64_t W2 = 2 * W, H2 = 2 * H;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % W2, t = i / W2;
    int64_t h = t % H2, pl = t / H2;
    y[i] = x[(pl * H + h / 2) * W + w / 2];
  }
}

extern "C" int mmpk_upsample_nearest2x(cudaStream_t st, const float *x, float *y, int64_t planes, int64_t H,
                                       int64_t W) {
  int64_t total = planes * 4 * H * W;
  if (total == 0) return 0;
  upsample2x_kernel<<<grid_for(total, 256), 256, 0, st>>>(x, y, H, W, total);
  return MMPK_LAUNCH_RESULT();
}

/* As the CPU: padded positions are skipped by max (NaN wins) and counted by
 * avg (count_include_pad, divisor k*k) unless @exclude_pad (divisor: the
 * window's positions inside the image). */
__global__ void pool2d_kernel(bool is_max, bool exclude_pad, const float *x, float *y, int64_t H, int64_t W,
                              int64_t OH, int64_t OW, int k, int s, int p, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t ow = i % OW, t = i / OW;
    int64_t oh = t % OH, pl = t / OH;
    const float *xp = x + pl * H * W;
    int64_t h0 = oh * s - p, w0 = ow * s - p;
    float acc = is_max ? -INFINITY : 0.0f;
    int count = 0;
    for (int a = 0; a < k; a++) {
      int64_t h = h0 + a;
      if (h < 0 || h >= H) continue;
      for (int c = 0; c < k; c++) {
        int64_t w = w0 + c;
        if (w < 0 || w >= W) continue;
        float v = xp[h * W + w];
        count++;
        if (is_max) {
          if (v > acc || v != v) acc = v;
        } else {
          acc += v;
        }
      }
    }
    y[i] = is_max ? acc : acc / (float)(exclude_pad ? count : k * k);
  }
}

extern "C" int mmpk_pool2d(cudaStream_t st, bool is_max, bool exclude_pad, const float *x, float *y, int64_t planes,
                           int64_t H, int64_t W, int64_t OH, int64_t OW, int k, int stride, int pad) {
  int64_t total = planes * OH * OW;
  if (total == 0) return 0;
  pool2d_kernel<<<grid_for(total, 256), 256, 0, st>>>(is_max, exclude_pad, x, y, H, W, OH, OW, k, stride, pad,
                                                      total);
  return MMPK_LAUNCH_RESULT();
}

/* One source coordinate of torch's upsample_bilinear2d (as the CPU's
 * bil_axis): index, next index, weight of the next. */
__device__ static void bil_src(int64_t in, int64_t out, bool align, int64_t o, int64_t *i0, int64_t *i1,
                               float *lam) {
  float scale = align ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
  /* torch: scale * (dst + 0.5) - 0.5 evaluated in double (the 0.5 literals), then float */
    float src = align ? scale * (float)o : (float)((double)scale * ((double)o + 0.5) - 0.5);
  if (src < 0) src = 0;
  int64_t a = (int64_t)src;
  if (a > in - 1) a = in - 1;
  *i0 = a;
  *i1 = a < in - 1 ? a + 1 : a;
  *lam = src - (float)a;
}

__global__ void resize_bilinear_kernel(const float *x, float *y, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                       bool align, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t ow = i % OW, t = i / OW;
    int64_t oh = t % OH, pl = t / OH;
    int64_t h0, h1, w0, w1;
    float hl, wl;
    bil_src(H, OH, align, oh, &h0, &h1, &hl);
    bil_src(W, OW, align, ow, &w0, &w1, &wl);
    const float *r0 = x + (pl * H + h0) * W, *r1 = x + (pl * H + h1) * W;
    float w0l = 1.0f - wl, h0l = 1.0f - hl;
    y[i] = h0l * (w0l * r0[w0] + wl * r0[w1]) + hl * (w0l * r1[w0] + wl * r1[w1]);
  }
}

extern "C" int mmpk_resize_bilinear(cudaStream_t st, const float *x, float *y, int64_t planes, int64_t H, int64_t W,
                                    int64_t OH, int64_t OW, bool align_corners) {
  int64_t total = planes * OH * OW;
  if (total == 0) return 0;
  resize_bilinear_kernel<<<grid_for(total, 256), 256, 0, st>>>(x, y, H, W, OH, OW, align_corners, total);
  return MMPK_LAUNCH_RESULT();
}

__global__ void embedding_kernel(const float *table, int64_t V, int64_t D, const void *ids, bool ids64, int64_t total,
                                 float *y, unsigned long long *bad) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / D, d = i - r * D;
    int64_t id = ids64 ? ((const long long *)ids)[r] : ((const int *)ids)[r];
    if (id < 0 || id >= V) {
      y[i] = 0.0f;
      if (d == 0) atomicMin(bad, (unsigned long long)r);
    } else {
      y[i] = table[id * D + d];
    }
  }
}

extern "C" int mmpk_embedding(cudaStream_t st, const float *table, int64_t V, int64_t D, const void *ids, bool ids64,
                              int64_t n, float *y, unsigned long long *bad) {
  int64_t total = n * D;
  if (total == 0) return 0;
  embedding_kernel<<<grid_for(total, 256), 256, 0, st>>>(table, V, D, ids, ids64, total, y, bad);
  return MMPK_LAUNCH_RESULT();
}

/* diffusers get_timestep_embedding in the CPU backend's f32 operation order. */
__global__ void timestep_kernel(const char *t, int tdt, int64_t tstride, int64_t N, int64_t dim, bool flip,
                                float shift, float scale, float lmp, float *y) {
  int64_t half = dim / 2, total = N * half;
  int tes = dt_size(tdt);
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t n = idx / half, i = idx - n * half;
    float tv = (float)load_any(tdt, t + n * tstride * tes);
    float ex = lmp * (float)i;
    ex = ex / ((float)half - shift);
    float f = expf(ex);
    float arg = tv * f;
    arg = scale * arg;
    float *row = y + n * dim;
    row[flip ? half + i : i] = sinf(arg);
    row[flip ? i : half + i] = cosf(arg);
    if (i == 0 && (dim & 1)) row[dim - 1] = 0.0f;
  }
}

extern "C" int mmpk_timestep_embedding(cudaStream_t st, const void *t, int tdt, int64_t tstride, int64_t N,
                                       int64_t dim, bool flip, float shift, float scale, double max_period,
                                       float *y) {
  if (N * dim == 0) return 0;
  float lmp = (float)(-log(max_period));
  if (dim / 2 == 0) /* dim 1: only the zero pad column */
    return (int)cudaMemsetAsync(y, 0, (size_t)(N * dim) * sizeof(float), st);
  timestep_kernel<<<grid_for(N * (dim / 2), 256), 256, 0, st>>>((const char *)t, tdt, tstride, N, dim, flip, shift,
                                                                 scale, lmp, y);
  return MMPK_LAUNCH_RESULT();
}

/* ---------------------------------------------------------------- Philox */

__global__ void philox_kernel(int dist, uint64_t seed, uint64_t offset, int64_t n, void *y, int64_t low,
                              uint64_t range) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t w[4];
    mmp_philox4x32_10(offset + (uint64_t)i, seed, w);
    if (dist == MMPK_RNG_UNIFORM) {
      ((float *)y)[i] = (float)(w[0] >> 8) * (1.0f / 16777216.0f);
    } else if (dist == MMPK_RNG_NORMAL) {
      /* Box-Muller in double, as core/rng.c: u1 in (0, 1], u2 in [0, 1) */
      uint64_t a = ((uint64_t)w[0] << 21) ^ w[1], b = ((uint64_t)w[2] << 21) ^ w[3];
      const uint64_t m53 = (1ULL << 53) - 1;
      double u1 = __dmul_rn(__dadd_rn((double)(a & m53), 1.0), 1.0 / 9007199254740992.0);
      double u2 = __dmul_rn((double)(b & m53), 1.0 / 9007199254740992.0);
      double r = sqrt(__dmul_rn(-2.0, log(u1)));
      double th = __dmul_rn(2.0 * 3.14159265358979323846, u2);
      ((float *)y)[i] = (float)__dmul_rn(r, cos(th));
    } else {
      uint64_t v = ((uint64_t)w[0] << 32) | w[1];
      ((long long *)y)[i] = (long long)(v % range + (uint64_t)low);
    }
  }
}

extern "C" int mmpk_philox(cudaStream_t st, int dist, uint64_t seed, uint64_t offset, int64_t n, void *y, int64_t low,
                           uint64_t range) {
  if (n == 0) return 0;
  philox_kernel<<<grid_for(n, 256), 256, 0, st>>>(dist, seed, offset, n, y, low, range);
  return MMPK_LAUNCH_RESULT();
}
