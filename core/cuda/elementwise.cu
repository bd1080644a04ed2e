/* core/cuda/elementwise.cu - strided copy/convert, fill, binary and unary f32 ops, GEGLU on the GPU. */
#include "core/cuda/common.cuh"

/* ------------------------------------------------------------------ copy */

/* Same dtype: raw element moves of E bytes. */
template <typename E>
__global__ void copy_same_kernel(mmpk_iter_t it, E *d, const E *s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x)
    d[iter_offset(it, 0, i)] = s[iter_offset(it, 1, i)];
}

template <typename D, typename S>
__global__ void convert_contig_kernel(int64_t n, D *d, const S *s) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = from_f<D>(to_f<S>(s[i]));
}

__global__ void copy_any_kernel(mmpk_iter_t it, char *d, int ddt, const char *s, int sdt) {
  int des = dt_size(ddt), ses = dt_size(sdt);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x)
    store_any(ddt, d + iter_offset(it, 0, i) * des, load_any(sdt, s + iter_offset(it, 1, i) * ses));
}

static bool contiguous2(const mmpk_iter_t *it) { return it->nd == 1 && it->stride[0][0] == 1 && it->stride[1][0] == 1; }

extern "C" int mmpk_copy(cudaStream_t st, const mmpk_iter_t *it, void *dst, int ddt, const void *src, int sdt) {
  if (it->numel == 0) return 0;
  const int T = 256;
  unsigned g = grid_for(it->numel, T);
  if (ddt == sdt) {
    int es = ddt == DT_F16 || ddt == DT_BF16 ? 2 : ddt == DT_I64 || ddt == DT_F64 ? 8 : ddt == DT_U8 || ddt == DT_BOOL ? 1 : 4;
    if (contiguous2(it)) return (int)cudaMemcpyAsync(dst, src, (size_t)it->numel * es, cudaMemcpyDeviceToDevice, st);
    switch (es) {
    case 1: copy_same_kernel<uint8_t><<<g, T, 0, st>>>(*it, (uint8_t *)dst, (const uint8_t *)src); break;
    case 2: copy_same_kernel<uint16_t><<<g, T, 0, st>>>(*it, (uint16_t *)dst, (const uint16_t *)src); break;
    case 8: copy_same_kernel<uint64_t><<<g, T, 0, st>>>(*it, (uint64_t *)dst, (const uint64_t *)src); break;
    default: copy_same_kernel<uint32_t><<<g, T, 0, st>>>(*it, (uint32_t *)dst, (const uint32_t *)src); break;
    }
    return MMPK_LAUNCH_RESULT();
  }
  if (contiguous2(it)) {
    int64_t n = it->numel;
    if (ddt == DT_F16 && sdt == DT_F32) {
      convert_contig_kernel<__half, float><<<g, T, 0, st>>>(n, (__half *)dst, (const float *)src);
      return MMPK_LAUNCH_RESULT();
    }
    if (ddt == DT_BF16 && sdt == DT_F32) {
      convert_contig_kernel<__nv_bfloat16, float><<<g, T, 0, st>>>(n, (__nv_bfloat16 *)dst, (const float *)src);
      return MMPK_LAUNCH_RESULT();
    }
    if (ddt == DT_F32 && sdt == DT_F16) {
      convert_contig_kernel<float, __half><<<g, T, 0, st>>>(n, (float *)dst, (const __half *)src);
      return MMPK_LAUNCH_RESULT();
    }
    if (ddt == DT_F32 && sdt == DT_BF16) {
      convert_contig_kernel<float, __nv_bfloat16><<<g, T, 0, st>>>(n, (float *)dst, (const __nv_bfloat16 *)src);
      return MMPK_LAUNCH_RESULT();
    }
  }
  copy_any_kernel<<<g, T, 0, st>>>(*it, (char *)dst, ddt, (const char *)src, sdt);
  return MMPK_LAUNCH_RESULT();
}

/* ------------------------------------------------------------------ fill */

template <typename E>
__global__ void fill_kernel(mmpk_iter_t it, E *d, E v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x)
    d[iter_offset(it, 0, i)] = v;
}

extern "C" int mmpk_fill(cudaStream_t st, const mmpk_iter_t *it, void *dst, int esize, uint64_t bits) {
  if (it->numel == 0) return 0;
  const int T = 256;
  unsigned g = grid_for(it->numel, T);
  switch (esize) {
  case 1: fill_kernel<uint8_t><<<g, T, 0, st>>>(*it, (uint8_t *)dst, (uint8_t)bits); break;
  case 2: fill_kernel<uint16_t><<<g, T, 0, st>>>(*it, (uint16_t *)dst, (uint16_t)bits); break;
  case 8: fill_kernel<uint64_t><<<g, T, 0, st>>>(*it, (uint64_t *)dst, (uint64_t)bits); break;
  default: fill_kernel<uint32_t><<<g, T, 0, st>>>(*it, (uint32_t *)dst, (uint32_t)bits); break;
  }
  return MMPK_LAUNCH_RESULT();
}

/* ---------------------------------------------------------- f32 math ops */

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }

__device__ __forceinline__ float unary_op(int op, float x, float a, float b) {
  switch (op) {
  case MMPK_SCALE: return a * x + b;
  case MMPK_CLAMP: {
    float v = x < a ? a : x; /* NaN stays NaN, as in torch */
    return v > b ? b : v;
  }
  case MMPK_SQRT: return sqrtf(x);
  case MMPK_EXP: return expf(x);
  case MMPK_ABS: return fabsf(x);
  case MMPK_SILU: return x / (1.0f + expf(-x));
  case MMPK_GELU: return gelu_erf(x);
  case MMPK_GELU_TANH: {
    const float k = 0.79788456080286535588f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
  }
  case MMPK_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
  case MMPK_SIGMOID: return 1.0f / (1.0f + expf(-x));
  case MMPK_TANH: return tanhf(x);
  case MMPK_RELU: return x > 0.0f ? x : (x == x ? 0.0f : x);
  default: return x;
  }
}

__device__ __forceinline__ float binary_op(int op, float x, float y, float a, float b) {
  switch (op) {
  case MMPK_ADD: return x + y;
  case MMPK_SUB: return x - y;
  case MMPK_MUL: return x * y;
  case MMPK_DIV: return x / y;
  default: return a * x + b * y;
  }
}

__global__ void binary_contig_kernel(int op, int64_t n, float *d, const float *x, const float *y, float a, float b) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = binary_op(op, x[i], y[i], a, b);
}

__global__ void binary_strided_kernel(int op, mmpk_iter_t it, float *d, const float *x, const float *y, float a,
                                      float b) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x)
    d[iter_offset(it, 0, i)] = binary_op(op, x[iter_offset(it, 1, i)], y[iter_offset(it, 2, i)], a, b);
}

extern "C" int mmpk_binary(cudaStream_t st, int op, const mmpk_iter_t *it, float *d, const float *a, const float *b,
                           float alpha, float beta) {
  if (it->numel == 0) return 0;
  const int T = 256;
  unsigned g = grid_for(it->numel, T);
  if (it->nd == 1 && it->stride[0][0] == 1 && it->stride[1][0] == 1 && it->stride[2][0] == 1)
    binary_contig_kernel<<<g, T, 0, st>>>(op, it->numel, d, a, b, alpha, beta);
  else
    binary_strided_kernel<<<g, T, 0, st>>>(op, *it, d, a, b, alpha, beta);
  return MMPK_LAUNCH_RESULT();
}

__global__ void unary_contig_kernel(int op, int64_t n, float *d, const float *x, float a, float b) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = unary_op(op, x[i], a, b);
}

__global__ void unary_strided_kernel(int op, mmpk_iter_t it, float *d, const float *x, float a, float b) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.numel; i += (int64_t)gridDim.x * blockDim.x)
    d[iter_offset(it, 0, i)] = unary_op(op, x[iter_offset(it, 1, i)], a, b);
}

extern "C" int mmpk_unary(cudaStream_t st, int op, const mmpk_iter_t *it, float *d, const float *a, float alpha,
                          float beta) {
  if (it->numel == 0) return 0;
  const int T = 256;
  unsigned g = grid_for(it->numel, T);
  if (contiguous2(it))
    unary_contig_kernel<<<g, T, 0, st>>>(op, it->numel, d, a, alpha, beta);
  else
    unary_strided_kernel<<<g, T, 0, st>>>(op, *it, d, a, alpha, beta);
  return MMPK_LAUNCH_RESULT();
}

__global__ void geglu_kernel(const float *x, float *y, int64_t rows, int64_t D) {
  int64_t n = rows * D;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / D, c = i - r * D;
    const float *row = x + r * 2 * D;
    y[i] = row[c] * gelu_erf(row[D + c]);
  }
}

extern "C" int mmpk_geglu(cudaStream_t st, const float *x, float *y, int64_t rows, int64_t D) {
  if (rows * D == 0) return 0;
  geglu_kernel<<<grid_for(rows * D, 256), 256, 0, st>>>(x, y, rows, D);
  return MMPK_LAUNCH_RESULT();
}
