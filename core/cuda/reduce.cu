/* core/cuda/reduce.cu - sum/mean/max/argmax over one dim and softmax over one dim, any input strides. */
#include "core/cuda/common.cuh"

/* The shape with @dim taken out, for decomposing an output/row index. */
typedef struct outer {
  int nd;
  int64_t shape[MMPK_MAX_DIMS];
  int64_t xstride[MMPK_MAX_DIMS];
  int64_t ystride[MMPK_MAX_DIMS]; /* strides of the contiguous y, for softmax */
  int64_t n, xs, ys;               /* length, x stride, y stride along @dim */
  int64_t count;                   /* number of outputs / rows */
} outer_t;

static void make_outer(outer_t *o, int nd, const int64_t *shape, const int64_t *xstride, int dim) {
  int64_t ys[MMPK_MAX_DIMS], s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    ys[d] = s;
    s *= shape[d];
  }
  o->nd = 0;
  o->count = 1;
  for (int d = 0; d < nd; d++) {
    if (d == dim) continue;
    o->shape[o->nd] = shape[d];
    o->xstride[o->nd] = xstride[d];
    o->ystride[o->nd] = ys[d];
    o->count *= shape[d];
    o->nd++;
  }
  o->n = shape[dim];
  o->xs = xstride[dim];
  o->ys = ys[dim];
}

__device__ __forceinline__ void outer_offsets(const outer_t &o, int64_t i, int64_t *xo, int64_t *yo) {
  int64_t a = 0, b = 0;
  for (int d = o.nd - 1; d >= 0; d--) {
    int64_t q = i / o.shape[d];
    int64_t c = i - q * o.shape[d];
    a += c * o.xstride[d];
    b += c * o.ystride[d];
    i = q;
  }
  *xo = a;
  *yo = b;
}

__device__ __forceinline__ bool isnan_f(float v) { return v != v; }

/* One warp per output. */
__global__ void reduce_kernel(int op, outer_t o, const float *x, void *y) {
  int lane = threadIdx.x & 31;
  int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t out = warp; out < o.count; out += nwarps) {
    int64_t xo, yo;
    outer_offsets(o, out, &xo, &yo);
    const float *p = x + xo;
    if (op == MMPK_RED_SUM || op == MMPK_RED_MEAN) {
      double acc = 0.0;
      for (int64_t i = lane; i < o.n; i += 32) acc += p[i * o.xs];
      acc = warp_sum_d(acc);
      if (op == MMPK_RED_MEAN) acc /= (double)o.n;
      if (lane == 0) ((float *)y)[out] = (float)acc;
    } else if (op == MMPK_RED_MAX) {
      float m = -INFINITY;
      for (int64_t i = lane; i < o.n; i += 32) {
        float v = p[i * o.xs];
        if (v > m || isnan_f(v)) m = v;
        if (isnan_f(m)) break;
      }
      for (int s = 16; s > 0; s >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, m, s);
        m = (isnan_f(m) || isnan_f(w)) ? NAN : fmaxf(m, w);
      }
      if (lane == 0) ((float *)y)[out] = m;
    } else { /* argmax: first index of the max; the first NaN wins, as on CPU */
      float m = -INFINITY;
      long long mi = LLONG_MAX;
      for (int64_t i = lane; i < o.n; i += 32) {
        float v = p[i * o.xs];
        if (isnan_f(v)) {
          m = v;
          mi = i;
          break;
        }
        if (v > m) {
          m = v;
          mi = i;
        }
      }
      for (int s = 16; s > 0; s >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, m, s);
        long long wi = __shfl_xor_sync(0xffffffffu, mi, s);
        bool na = isnan_f(m), nb = isnan_f(w);
        bool take;
        if (na || nb)
          take = nb && (!na || wi < mi);
        else
          take = w > m || (w == m && wi < mi);
        if (take) {
          m = w;
          mi = wi;
        }
      }
      if (lane == 0) ((long long *)y)[out] = mi == LLONG_MAX ? 0 : mi;
    }
  }
}

extern "C" int mmpk_reduce(cudaStream_t st, int op, int nd, const int64_t *shape, const int64_t *xstride, int dim,
                           const float *x, void *y) {
  outer_t o;
  make_outer(&o, nd, shape, xstride, dim);
  if (o.count == 0) return 0;
  /* o.n == 0 goes through the kernel too: sum 0, mean NaN (0/0), argmax 0 */
  const int T = 256;
  reduce_kernel<<<grid_for(o.count * 32, T), T, 0, st>>>(op, o, x, y);
  return MMPK_LAUNCH_RESULT();
}

/* One warp per row: max, sum of exp, write. Statistics in f32. */
__global__ void softmax_kernel(outer_t o, const float *x, float *y) {
  int lane = threadIdx.x & 31;
  int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t row = warp; row < o.count; row += nwarps) {
    int64_t xo, yo;
    outer_offsets(o, row, &xo, &yo);
    const float *p = x + xo;
    float *q = y + yo;
    float m = -INFINITY;
    for (int64_t i = lane; i < o.n; i += 32) m = fmaxf(m, p[i * o.xs]);
    m = warp_max(m);
    float s = 0.0f;
    for (int64_t i = lane; i < o.n; i += 32) s += expf(p[i * o.xs] - m);
    s = warp_sum(s);
    float inv = 1.0f / s;
    for (int64_t i = lane; i < o.n; i += 32) q[i * o.ys] = expf(p[i * o.xs] - m) * inv;
  }
}

extern "C" int mmpk_softmax(cudaStream_t st, int nd, const int64_t *shape, const int64_t *xstride, int dim,
                            const float *x, float *y) {
  outer_t o;
  make_outer(&o, nd, shape, xstride, dim);
  if (o.count == 0 || o.n == 0) return 0;
  const int T = 256;
  softmax_kernel<<<grid_for(o.count * 32, T), T, 0, st>>>(o, x, y);
  return MMPK_LAUNCH_RESULT();
}
