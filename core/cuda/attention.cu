/* core/cuda/attention.cu - fused scaled-dot-product attention: online softmax over key tiles in shared memory.
 *
 * One block computes QROWS query rows of one (batch, head): 4 warps, each
 * owning RPW rows. Key/value tiles of BK = 32 rows are staged in shared
 * memory as f32; for a tile, lane j scores key j against the warp's row, the
 * warp updates the row's running max m and denominator l, rescales its
 * accumulator and adds p_j * v_j (each lane owns the output dims lane,
 * lane+32, ...). Scores for a whole row never exist: memory is O(tile), not
 * Lq x Lk. Inputs f32/f16/bf16 are widened on load; all arithmetic is f32.
 * Rows whose keys are all masked produce 0 (as the CPU kernel).
 * SIMT, no tensor cores: a correct baseline; see doc/cuda.md.
 */
#include "core/cuda/common.cuh"

#define WARPS 4
#define RPW 4
#define QROWS (WARPS * RPW)
#define BK 32

static size_t smem_bytes(int dmax) {
  return sizeof(float) * ((size_t)QROWS * dmax + (size_t)BK * (dmax + 1) + (size_t)BK * dmax + BK);
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(WARPS * 32) flash_attention_kernel(const T *__restrict__ q, const T *__restrict__ k,
                                                                     const T *__restrict__ v,
                                                                     const uint8_t *__restrict__ mask, int64_t H,
                                                                     int64_t Lq, int64_t Lk, int D, int Dv,
                                                                     int causal, float scale, int odt,
                                                                     void *__restrict__ out) {
  extern __shared__ float smem[];
  float *Qs = smem;                  /* [QROWS][DMAX], pre-scaled */
  float *Ks = Qs + QROWS * DMAX;     /* [BK][DMAX + 1]: padded against bank conflicts */
  float *Vs = Ks + BK * (DMAX + 1);  /* [BK][DMAX] */
  float *Ms = Vs + BK * DMAX;        /* [BK]: 1 if key usable (in range, not masked) */
  constexpr int NT = DMAX / 32;

  const int64_t bh = blockIdx.x, b = bh / H;
  const int64_t q0 = (int64_t)blockIdx.y * QROWS;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const T *qb = q + bh * Lq * D;
  const T *kb = k + bh * Lk * D;
  const T *vb = v + bh * Lk * Dv;
  const int64_t obase = bh * Lq * Dv;

  for (int idx = tid; idx < QROWS * D; idx += blockDim.x) {
    int r = idx / D, d = idx - r * D;
    int64_t i = q0 + r;
    Qs[r * DMAX + d] = i < Lq ? to_f<T>(qb[i * D + d]) * scale : 0.0f;
  }

  float acc[RPW][NT], m[RPW], l[RPW];
#pragma unroll
  for (int r = 0; r < RPW; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
  }

  int64_t kend = Lk;
  if (causal && q0 + QROWS < kend) kend = q0 + QROWS; /* keys beyond the block's last row are all masked */

  for (int64_t k0 = 0; k0 < kend; k0 += BK) {
    __syncthreads(); /* the previous tile is consumed (and Qs is written) */
    for (int idx = tid; idx < BK * D; idx += blockDim.x) {
      int j = idx / D, d = idx - j * D;
      int64_t kj = k0 + j;
      Ks[j * (DMAX + 1) + d] = kj < Lk ? to_f<T>(kb[kj * D + d]) : 0.0f;
    }
    for (int idx = tid; idx < BK * Dv; idx += blockDim.x) {
      int j = idx / Dv, d = idx - j * Dv;
      int64_t kj = k0 + j;
      Vs[j * DMAX + d] = kj < Lk ? to_f<T>(vb[kj * Dv + d]) : 0.0f;
    }
    if (tid < BK) {
      int64_t kj = k0 + tid;
      Ms[tid] = (kj < Lk && !(mask && mask[b * Lk + kj])) ? 1.0f : 0.0f;
    }
    __syncthreads();

#pragma unroll
    for (int r = 0; r < RPW; r++) {
      const int rl = warp * RPW + r;
      const int64_t i = q0 + rl;
      if (i >= Lq) continue; /* uniform across the warp */
      const int64_t kj = k0 + lane;
      const bool valid = Ms[lane] != 0.0f && !(causal && kj > i);
      float s = -INFINITY;
      if (valid) {
        const float *qr = Qs + rl * DMAX, *kr = Ks + lane * (DMAX + 1);
        float dot = 0.0f;
        for (int d = 0; d < D; d++) dot = fmaf(qr[d], kr[d], dot);
        s = dot;
      }
      const float tmax = warp_max(s);
      if (tmax == -INFINITY) continue; /* nothing usable in this tile for this row */
      const float mnew = fmaxf(m[r], tmax);
      const float p = valid ? expf(s - mnew) : 0.0f;
      const float corr = expf(m[r] - mnew); /* 0 while m is still -inf */
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = mnew;
#pragma unroll
      for (int t = 0; t < NT; t++) acc[r][t] *= corr;
#pragma unroll 4
      for (int jj = 0; jj < BK; jj++) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.0f) continue; /* uniform: pj is the same in every lane */
        const float *vr = Vs + jj * DMAX;
#pragma unroll
        for (int t = 0; t < NT; t++) {
          const int d = lane + 32 * t;
          if (d < Dv) acc[r][t] = fmaf(pj, vr[d], acc[r][t]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RPW; r++) {
    const int64_t i = q0 + warp * RPW + r;
    if (i >= Lq) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) {
      const int d = lane + 32 * t;
      if (d >= Dv) continue;
      const float val = acc[r][t] * inv;
      const int64_t o = obase + i * Dv + d;
      if (odt == DT_F16)
        ((__half *)out)[o] = __float2half_rn(val);
      else if (odt == DT_BF16)
        ((__nv_bfloat16 *)out)[o] = __float2bfloat16_rn(val);
      else
        ((float *)out)[o] = val;
    }
  }
}

template <typename T, int DMAX>
static int launch(cudaStream_t st, const void *q, const void *k, const void *v, const uint8_t *mask, int64_t B,
                  int64_t H, int64_t Lq, int64_t Lk, int D, int Dv, bool causal, float scale, int odt, void *out) {
  size_t sm = smem_bytes(DMAX);
  auto kern = flash_attention_kernel<T, DMAX>;
  if (sm > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
    if (e != cudaSuccess) return (int)e;
  }
  dim3 grid((unsigned)(B * H), (unsigned)((Lq + QROWS - 1) / QROWS));
  kern<<<grid, WARPS * 32, sm, st>>>((const T *)q, (const T *)k, (const T *)v, mask, H, Lq, Lk, D, Dv,
                                     causal ? 1 : 0, scale, odt, out);
  return MMPK_LAUNCH_RESULT();
}

template <typename T>
static int dispatch_dim(cudaStream_t st, const void *q, const void *k, const void *v, const uint8_t *mask, int64_t B,
                        int64_t H, int64_t Lq, int64_t Lk, int D, int Dv, bool causal, float scale, int odt,
                        void *out) {
  /* two tile widths only: every instantiation costs CI compile time */
  if ((D > Dv ? D : Dv) <= 128) return launch<T, 128>(st, q, k, v, mask, B, H, Lq, Lk, D, Dv, causal, scale, odt, out);
  return launch<T, 256>(st, q, k, v, mask, B, H, Lq, Lk, D, Dv, causal, scale, odt, out);
}

extern "C" int mmpk_attention_max_dim(void) { return 256; }

extern "C" int mmpk_attention(cudaStream_t st, int dt, int odt, const void *q, const void *k, const void *v,
                              const uint8_t *key_mask, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                              int64_t Dv, bool causal, float scale, void *out) {
  if (B * H * Lq * Dv == 0) return 0;
  if (D > 256 || Dv > 256 || B * H > 0x7fffffffLL || (Lq + QROWS - 1) / QROWS > 65535)
    return (int)cudaErrorInvalidValue;
  if (odt != DT_F32 && odt != dt) return (int)cudaErrorInvalidValue;
  int d = (int)D, dv = (int)Dv;
  switch (dt) {
  case DT_F32: return dispatch_dim<float>(st, q, k, v, key_mask, B, H, Lq, Lk, d, dv, causal, scale, odt, out);
  case DT_F16: return dispatch_dim<__half>(st, q, k, v, key_mask, B, H, Lq, Lk, d, dv, causal, scale, odt, out);
  case DT_BF16:
    return dispatch_dim<__nv_bfloat16>(st, q, k, v, key_mask, B, H, Lq, Lk, d, dv, causal, scale, odt, out);
  default: return (int)cudaErrorInvalidValue;
  }
}
