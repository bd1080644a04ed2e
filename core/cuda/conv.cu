/* core/cuda/conv.cu - im2col for conv2d through cuBLAS, and bias broadcasts that prefill GEMM outputs. */
#include "core/cuda/common.cuh"

template <typename E>
__global__ void im2col_kernel(const E *x, int64_t H, int64_t W, int64_t KH, int64_t KW, int sh, int sw, int ph,
                              int pw, int dh, int dw, int64_t OW, int64_t p0, int64_t pc, int64_t total, E *col) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t row = i / pc, pp = i - row * pc;
    int64_t kw = row % KW, t = row / KW;
    int64_t kh = t % KH, c = t / KH;
    int64_t p = p0 + pp, oh = p / OW, ow = p - oh * OW;
    int64_t h = oh * sh - ph + kh * dh, w = ow * sw - pw + kw * dw;
    E v = E(0);
    if (h >= 0 && h < H && w >= 0 && w < W) v = x[(c * H + h) * W + w];
    col[i] = v;
  }
}

extern "C" int mmpk_im2col(cudaStream_t st, const void *x, int esize, int64_t C, int64_t H, int64_t W, int64_t KH,
                           int64_t KW, int sh, int sw, int ph, int pw, int dh, int dw, int64_t OW, int64_t p0,
                           int64_t p1, void *col) {
  int64_t pc = p1 - p0, total = C * KH * KW * pc;
  if (total == 0) return 0;
  unsigned g = grid_for(total, 256);
  if (esize == 2)
    im2col_kernel<uint16_t><<<g, 256, 0, st>>>((const uint16_t *)x, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OW, p0, pc,
                                                total, (uint16_t *)col);
  else
    im2col_kernel<uint32_t><<<g, 256, 0, st>>>((const uint32_t *)x, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OW, p0, pc,
                                                total, (uint32_t *)col);
  return MMPK_LAUNCH_RESULT();
}

template <typename T>
__global__ void bias_fill_kernel(T *y, const float *bias, int64_t O, int64_t P, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(bias[(i / P) % O]);
}

extern "C" int mmpk_bias_fill(cudaStream_t st, void *y, int dt, const float *bias, int64_t N, int64_t O, int64_t P) {
  int64_t total = N * O * P;
  if (total == 0) return 0;
  unsigned g = grid_for(total, 256);
  if (dt == DT_F16)
    bias_fill_kernel<__half><<<g, 256, 0, st>>>((__half *)y, bias, O, P, total);
  else if (dt == DT_BF16)
    bias_fill_kernel<__nv_bfloat16><<<g, 256, 0, st>>>((__nv_bfloat16 *)y, bias, O, P, total);
  else
    bias_fill_kernel<float><<<g, 256, 0, st>>>((float *)y, bias, O, P, total);
  return MMPK_LAUNCH_RESULT();
}

extern "C" int mmpk_bias_rows(cudaStream_t st, void *y, int dt, const float *bias, int64_t rows, int64_t O) {
  /* [rows, O] is [1, rows*O] with the channel index i % O: P = 1, O = O */
  return mmpk_bias_fill(st, y, dt, bias, rows, O, 1);
}
