/* core/rng.c - seeded generators: Philox4x32-10, bit-exact replicas of torch's CPU generator and numpy's RandomState. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/philox.h"
#include "core/tensor_impl.h"

#pragma GCC visibility push(default)
#include <mmpipe/rng.h>
#pragma GCC visibility pop

/* Bit-exactness needs every float operation rounded on its own: no fused
 * multiply-add contraction even when built with -mfma/-march=native. Clang
 * contracts within an expression by default and knows only the standard
 * pragma; GCC ignores that one and needs its own. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397

struct mmp_rng {
  mmp_rng_mode_t mode;
  uint64_t seed;
  /* philox: the index of the next draw */
  uint64_t offset;
  /* torch: mt19937 state and the cached second Box-Muller sample of
   * normal_distribution<double> (CPUGeneratorImpl::next_double_normal_sample) */
  uint32_t mt[MT_N];
  int mt_left, mt_next;
  bool has_next_normal;
  double next_normal;
};

/* ----------------------------------------------------------------- mt19937 */

static void mt_seed(mmp_rng_t *g, uint64_t seed) {
  g->mt[0] = (uint32_t)(seed & 0xffffffffu);
  for (int j = 1; j < MT_N; j++) g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + (uint32_t)j;
  g->mt_left = 1;
  g->mt_next = 0;
}

static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
  uint32_t mix = (u & 0x80000000u) | (v & 0x7fffffffu);
  return (mix >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_next_state(mmp_rng_t *g) {
  uint32_t *p = g->mt;
  g->mt_left = MT_N;
  g->mt_next = 0;
  for (int j = MT_N - MT_M + 1; --j; p++) *p = p[MT_M] ^ mt_twist(p[0], p[1]);
  for (int j = MT_M; --j; p++) *p = p[MT_M - MT_N] ^ mt_twist(p[0], p[1]);
  *p = p[MT_M - MT_N] ^ mt_twist(p[0], g->mt[0]);
}

static inline uint32_t mt_u32(mmp_rng_t *g) {
  if (--g->mt_left == 0) mt_next_state(g);
  uint32_t y = g->mt[g->mt_next++];
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

static inline uint64_t mt_u64(mmp_rng_t *g) { /* CPUGeneratorImpl::random64 */
  uint32_t hi = mt_u32(g), lo = mt_u32(g);
  return ((uint64_t)hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1) */
static inline float torch_uniform_f(mmp_rng_t *g) {
  return (float)(mt_u32(g) & ((1u << 24) - 1)) * (1.0f / (float)(1u << 24));
}

/* uniform_real_distribution<double>(0, 1) */
static inline double torch_uniform_d(mmp_rng_t *g) {
  return (double)(mt_u64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / (double)(UINT64_C(1) << 53));
}

/* numpy's random_sample() of the legacy RandomState (mt19937_next_double) */
static inline double numpy_uniform_d(mmp_rng_t *g) {
  uint32_t a = mt_u32(g) >> 5, b = mt_u32(g) >> 6;
  return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

/* normal_distribution<double>(0, 1), with the cached second sample */
static double torch_normal_d(mmp_rng_t *g) {
  if (g->has_next_normal) {
    g->has_next_normal = false;
    return g->next_normal;
  }
  double u1 = torch_uniform_d(g), u2 = torch_uniform_d(g);
  double r = sqrt(-2.0 * log(1.0 - u2));
  double theta = 2.0 * M_PI * u1;
  g->next_normal = r * sin(theta);
  g->has_next_normal = true;
  return r * cos(theta);
}

/* ---- torch's vectorised normal_fill (AVX2 build: avx_mathfun's log256_ps
 * and sincos256_ps, Cephes polynomials), replayed one lane at a time. */

static inline float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t f_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float cephes_logf(float x) {
  bool invalid = x <= 0.0f;
  if (!(x > bits_f(0x00800000u))) x = bits_f(0x00800000u); /* max_ps(x, min_norm): NaN -> min_norm */
  int32_t imm0 = (int32_t)(f_bits(x) >> 23);
  x = bits_f((f_bits(x) & ~0x7f800000u) | f_bits(0.5f));
  imm0 -= 0x7f;
  float e = (float)imm0;
  e = e + 1.0f;
  bool mask = x < 0.707106781186547524f;
  float tmp = mask ? x : 0.0f;
  x = x - 1.0f;
  e = e - (mask ? 1.0f : 0.0f);
  x = x + tmp;
  float z = x * x;
  float y = 7.0376836292E-2f;
  y = fmaf(y, x, -1.1514610310E-1f);
  y = fmaf(y, x, 1.1676998740E-1f);
  y = fmaf(y, x, -1.2420140846E-1f);
  y = fmaf(y, x, 1.4249322787E-1f);
  y = fmaf(y, x, -1.6668057665E-1f);
  y = fmaf(y, x, 2.0000714765E-1f);
  y = fmaf(y, x, -2.4999993993E-1f);
  y = fmaf(y, x, 3.3333331174E-1f);
  y = y * x;
  y = fmaf(y, z, e * -2.12194440e-4f);
  y = fmaf(-z, 0.5f, y);
  x = x + y;
  x = fmaf(e, 0.693359375f, x);
  if (invalid) x = bits_f(0xffffffffu);
  return x;
}

static void cephes_sincosf(float xin, float *s, float *c) {
  uint32_t sign_sin = f_bits(xin) & 0x80000000u;
  float x = bits_f(f_bits(xin) & 0x7fffffffu);
  float y = x * 1.27323954473516f;
  int32_t imm2 = (int32_t)y; /* cvttps: truncation (out of range -> INT_MIN) */
  if (!(y < 2147483648.0f)) imm2 = INT32_MIN;
  imm2 = (int32_t)((uint32_t)imm2 + 1u);
  imm2 &= ~1;
  y = (float)imm2;
  int32_t imm4 = imm2;
  uint32_t swap_sin = ((uint32_t)imm2 & 4u) << 29;
  bool poly = (imm2 & 2) == 0;
  x = fmaf(y, -0.78515625f, x);
  x = fmaf(y, -2.4187564849853515625e-4f, x);
  x = fmaf(y, -3.77489497744594108e-8f, x);
  imm4 = (int32_t)((uint32_t)imm4 - 2u);
  uint32_t sign_cos = ((~(uint32_t)imm4) & 4u) << 29;
  sign_sin ^= swap_sin;
  float z = x * x;
  float yc = 2.443315711809948E-005f;
  yc = fmaf(yc, z, -1.388731625493765E-003f);
  yc = fmaf(yc, z, 4.166664568298827E-002f);
  yc = yc * z;
  yc = fmaf(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;
  float y2 = -1.9515295891E-4f;
  y2 = fmaf(y2, z, 8.3321608736E-3f);
  y2 = fmaf(y2, z, -1.6666654611E-1f);
  y2 = y2 * z;
  y2 = fmaf(y2, x, x);
  float ysin2 = poly ? y2 : 0.0f, ysin1 = poly ? 0.0f : yc;
  y2 = y2 - ysin2;
  yc = yc - ysin1;
  float r1 = ysin1 + ysin2, r2 = yc + y2;
  *s = bits_f(f_bits(r1) ^ sign_sin);
  *c = bits_f(f_bits(r2) ^ sign_cos);
}

static void torch_normal_fill_16(float *d) {
  const float two_pi = (float)(2.0 * M_PI);
  for (int j = 0; j < 8; j++) {
    float u1 = 1.0f - d[j], u2 = d[j + 8];
    float radius = sqrtf(-2.0f * cephes_logf(u1));
    float theta = two_pi * u2;
    float sn, cs;
    cephes_sincosf(theta, &sn, &cs);
    float n1 = radius * cs, n2 = radius * sn;
    d[j] = fmaf(n1, 1.0f, 0.0f);
    d[j + 8] = fmaf(n2, 1.0f, 0.0f);
  }
}

static void torch_randn(mmp_rng_t *g, float *d, int64_t n) {
  if (n >= 16) {
    for (int64_t i = 0; i < n; i++) d[i] = torch_uniform_f(g);
    for (int64_t i = 0; i < n - 15; i += 16) torch_normal_fill_16(d + i);
    if (n % 16 != 0) { /* torch redraws and recomputes the last 16 */
      float *t = d + n - 16;
      for (int i = 0; i < 16; i++) t[i] = torch_uniform_f(g);
      torch_normal_fill_16(t);
    }
  } else {
    for (int64_t i = 0; i < n; i++) d[i] = (float)torch_normal_d(g);
  }
}

/* ------------------------------------------------------------------ philox */

/* Draw i of the stream depends on (seed, i) only: one Philox block per draw. */
static inline float philox_uniform_f(uint64_t seed, uint64_t i) {
  uint32_t w[4];
  mmp_philox4x32_10(i, seed, w);
  return (float)(w[0] >> 8) * (1.0f / 16777216.0f);
}

static inline float philox_normal_f(uint64_t seed, uint64_t i) {
  uint32_t w[4];
  mmp_philox4x32_10(i, seed, w);
  uint64_t a = ((uint64_t)w[0] << 21) ^ w[1], b = ((uint64_t)w[2] << 21) ^ w[3];
  double u1 = ((double)(a & ((UINT64_C(1) << 53) - 1)) + 1.0) * (1.0 / 9007199254740992.0); /* (0, 1] */
  double u2 = (double)(b & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

static inline uint64_t philox_u64(uint64_t seed, uint64_t i) {
  uint32_t w[4];
  mmp_philox4x32_10(i, seed, w);
  return ((uint64_t)w[0] << 32) | w[1];
}

/* ------------------------------------------------------------------- API */

mmp_rng_t *mmp_rng_new(uint64_t seed, mmp_rng_mode_t mode) {
  if (mode != MMP_RNG_PHILOX && mode != MMP_RNG_TORCH && mode != MMP_RNG_NUMPY) {
    mmp_error_set(MMP_EINVAL, "rng: unknown mode %d", (int)mode);
    return NULL;
  }
  mmp_rng_t *g = calloc(1, sizeof *g);
  if (!g) {
    mmp_error_set(MMP_ENOMEM, "rng: out of memory");
    return NULL;
  }
  g->mode = mode;
  g->seed = seed;
  /* numpy's _legacy_seeding of an int: mt19937_seed(seed & 0xffffffff), the same init_genrand */
  if (mode == MMP_RNG_TORCH || mode == MMP_RNG_NUMPY) mt_seed(g, seed);
  return g;
}

void mmp_rng_free(mmp_rng_t *g) { free(g); }

mmp_rng_mode_t mmp_rng_mode(const mmp_rng_t *g) { return g ? g->mode : MMP_RNG_PHILOX; }

int mmp_rng_mode_parse(const char *s, mmp_rng_mode_t *out) {
  if (s && strcasecmp(s, "philox") == 0) {
    if (out) *out = MMP_RNG_PHILOX;
    return 0;
  }
  if (s && strcasecmp(s, "torch") == 0) {
    if (out) *out = MMP_RNG_TORCH;
    return 0;
  }
  return mmp_error_set(MMP_EINVAL, "unknown rng mode \"%s\" (known: philox, torch)", s ? s : "(null)");
}

/* Fill on the host, then move to @be. */
static mmp_tensor_t *host_tensor(mmp_backend_t *be, mmp_dtype_t dt, int ndim, const int64_t *shape) {
  (void)be;
  return mmp_tensor_new(mmp__backend_cpu(), dt, ndim, shape);
}

static mmp_tensor_t *finish(mmp_tensor_t *t, mmp_backend_t *be) {
  if (!t || !be || be == mmp__backend_cpu()) return t;
  mmp_tensor_t *r = mmp_to_backend(t, be);
  mmp_tensor_unref(t);
  return r;
}

mmp_tensor_t *mmp_rng_randn(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape) {
  if (!g) {
    mmp_error_set(MMP_EINVAL, "rng_randn: NULL generator");
    return NULL;
  }
  if (g->mode == MMP_RNG_NUMPY) {
    mmp_error_set(MMP_EUNSUPPORTED, "rng_randn: a numpy-mode generator draws only uniform doubles");
    return NULL;
  }
  mmp_tensor_t *t = host_tensor(be, MMP_F32, ndim, shape);
  if (!t) return NULL;
  float *d = mmp_tensor_data(t);
  int64_t n = mmp_tensor_numel(t);
  if (g->mode == MMP_RNG_TORCH) {
    torch_randn(g, d, n);
  } else {
    for (int64_t i = 0; i < n; i++) d[i] = philox_normal_f(g->seed, g->offset + (uint64_t)i);
    g->offset += (uint64_t)n;
  }
  return finish(t, be);
}

mmp_tensor_t *mmp_rng_rand(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape) {
  if (!g) {
    mmp_error_set(MMP_EINVAL, "rng_rand: NULL generator");
    return NULL;
  }
  if (g->mode == MMP_RNG_NUMPY) {
    mmp_error_set(MMP_EUNSUPPORTED, "rng_rand: a numpy-mode generator draws only uniform doubles");
    return NULL;
  }
  mmp_tensor_t *t = host_tensor(be, MMP_F32, ndim, shape);
  if (!t) return NULL;
  float *d = mmp_tensor_data(t);
  int64_t n = mmp_tensor_numel(t);
  if (g->mode == MMP_RNG_TORCH) {
    for (int64_t i = 0; i < n; i++) d[i] = torch_uniform_f(g);
  } else {
    for (int64_t i = 0; i < n; i++) d[i] = philox_uniform_f(g->seed, g->offset + (uint64_t)i);
    g->offset += (uint64_t)n;
  }
  return finish(t, be);
}

mmp_tensor_t *mmp_rng_randint(mmp_rng_t *g, mmp_backend_t *be, int64_t low, int64_t high, int ndim,
                              const int64_t *shape) {
  if (!g) {
    mmp_error_set(MMP_EINVAL, "rng_randint: NULL generator");
    return NULL;
  }
  if (g->mode == MMP_RNG_NUMPY) {
    mmp_error_set(MMP_EUNSUPPORTED, "rng_randint: a numpy-mode generator draws only uniform doubles");
    return NULL;
  }
  if (high <= low) {
    mmp_error_set(MMP_EINVAL, "rng_randint: empty range [%lld, %lld)", (long long)low, (long long)high);
    return NULL;
  }
  mmp_tensor_t *t = host_tensor(be, MMP_I64, ndim, shape);
  if (!t) return NULL;
  int64_t *d = mmp_tensor_data(t);
  int64_t n = mmp_tensor_numel(t);
  uint64_t range = (uint64_t)high - (uint64_t)low;
  for (int64_t i = 0; i < n; i++) {
    uint64_t v;
    if (g->mode == MMP_RNG_TORCH)
      v = range >= (UINT64_C(1) << 32) ? mt_u64(g) % range : (uint64_t)(mt_u32(g) % (uint32_t)range);
    else
      v = philox_u64(g->seed, g->offset++) % range;
    d[i] = (int64_t)(v + (uint64_t)low);
  }
  return finish(t, be);
}

/* Whether @n rows starting at @off lie inside a batch of @total: the one
 * check of every sharded draw. */
static bool shard_ok(int64_t n, int64_t total, int64_t off) {
  return off >= 0 && total >= 0 && off <= total && n >= 0 && n <= total - off;
}

/* The whole batch's shape for a shard's @shape, or false (error set). */
static bool whole_shape(const char *what, int ndim, const int64_t *shape, int64_t total, int64_t off, int64_t *out) {
  if (ndim < 1 || ndim > MMP_MAX_DIMS || !shape || !shard_ok(shape[0], total, off)) {
    mmp_error_set(MMP_EINVAL, "%s: rows [%lld, +%lld) of a batch of %lld", what, (long long)off,
                  ndim >= 1 && shape ? (long long)shape[0] : 0LL, (long long)total);
    return false;
  }
  memcpy(out, shape, (size_t)ndim * sizeof *out);
  out[0] = total;
  return true;
}

/* rows [@off, @off + n) of @all, contiguous (consumes @all) */
static mmp_tensor_t *cut_rows(mmp_tensor_t *all, int64_t off, int64_t n) {
  if (!all || (off == 0 && n == all->shape[0])) return all;
  mmp_tensor_t *v = mmp_slice(all, 0, off, off + n, 1);
  mmp_tensor_t *c = v ? mmp_contiguous(v) : NULL;
  mmp_tensor_unref(v);
  mmp_tensor_unref(all);
  return c;
}

mmp_tensor_t *mmp_rng_randn_rows(mmp_rng_t *g, mmp_backend_t *be, int ndim, const int64_t *shape, int64_t rows_total,
                                 int64_t row_off) {
  int64_t s[MMP_MAX_DIMS];
  if (!whole_shape("rng_randn_rows", ndim, shape, rows_total, row_off, s)) return NULL;
  return cut_rows(mmp_rng_randn(g, be, ndim, s), row_off, shape[0]);
}

mmp_tensor_t *mmp_rng_randint_rows(mmp_rng_t *g, mmp_backend_t *be, int64_t low, int64_t high, int ndim,
                                   const int64_t *shape, int64_t rows_total, int64_t row_off) {
  int64_t s[MMP_MAX_DIMS];
  if (!whole_shape("rng_randint_rows", ndim, shape, rows_total, row_off, s)) return NULL;
  return cut_rows(mmp_rng_randint(g, be, low, high, ndim, s), row_off, shape[0]);
}

uint64_t mmp_rng_u64(mmp_rng_t *g) {
  if (!g) return 0;
  if (g->mode == MMP_RNG_TORCH || g->mode == MMP_RNG_NUMPY) return mt_u64(g);
  return philox_u64(g->seed, g->offset++);
}

double mmp_rng_uniform(mmp_rng_t *g) {
  if (!g) return 0;
  if (g->mode == MMP_RNG_TORCH) return torch_uniform_d(g);
  if (g->mode == MMP_RNG_NUMPY) return numpy_uniform_d(g);
  return (double)(philox_u64(g->seed, g->offset++) >> 11) * (1.0 / 9007199254740992.0);
}

/* -------------------------------------------------------------- dropout */
/* The noise of rows [@off, @off + shape[0]) of a [@total, shape[1:]] mask:
 * one uniform double per element of the whole mask in row-major order (the
 * other rows' drawn and discarded); kept when u < 1 - p, then 1.0f / (float)(1 - p). */
static mmp_tensor_t *mask_rows(mmp_rng_t *g, mmp_backend_t *be, double p, int ndim, const int64_t *shape, int64_t total,
                               int64_t off) {
  mmp_tensor_t *t = host_tensor(be, MMP_F32, ndim, shape);
  if (!t) return NULL;
  float *d = mmp_tensor_data(t);
  int64_t inner = 1;
  for (int i = 1; i < ndim; i++) inner *= shape[i];
  int64_t n = ndim ? shape[0] * inner : 1, before = off * inner, after = (total - off - (ndim ? shape[0] : 1)) * inner;
  /* bernoulli_(1 - p): u < 1 - p in double; div_(1 - p): the scalar
   * becomes a float before the division (torch's type promotion) */
  double keep = 1.0 - p;
  float scale = 1.0f / (float)keep;
  for (int64_t i = 0; i < before; i++) (void)mmp_rng_uniform(g);
  for (int64_t i = 0; i < n; i++) d[i] = mmp_rng_uniform(g) < keep ? scale : 0.0f;
  for (int64_t i = 0; i < after; i++) (void)mmp_rng_uniform(g);
  return finish(t, be);
}

mmp_tensor_t *mmp_rng_dropout_mask(mmp_rng_t *g, mmp_backend_t *be, double p, int ndim, const int64_t *shape) {
  if (!g || !(p > 0.0 && p < 1.0)) {
    mmp_error_set(MMP_EINVAL, "rng_dropout_mask: %s", g ? "the probability must lie in (0, 1)" : "NULL generator");
    return NULL;
  }
  return mask_rows(g, be, p, ndim, shape, ndim ? shape[0] : 1, 0);
}

/* The checks of a sharded draw: @x [n, ...] is rows [@off, @off + n) of @total. */
static bool rows_ok(const mmp_tensor_t *x, int64_t total, int64_t off) {
  return x->ndim >= 1 && shard_ok(x->shape[0], total, off);
}

mmp_tensor_t *mmp_dropout_rows(mmp_rng_t *g, mmp_tensor_t *x, double p, int64_t rows_total, int64_t row_off) {
  if (!g || !x || !(p >= 0.0 && p <= 1.0) || x->dtype != MMP_F32 || (rows_total >= 0 && !rows_ok(x, rows_total, row_off))) {
    mmp_error_set(MMP_EINVAL, "dropout: %s", !g || !x ? "NULL generator or tensor"
                                             : x->dtype != MMP_F32 ? "the tensor must be f32"
                                             : !(p >= 0.0 && p <= 1.0) ? "the probability must lie in [0, 1]"
                                                                       : "the rows lie outside the batch");
    return NULL;
  }
  int64_t inner = 1;
  for (int i = 1; i < x->ndim; i++) inner *= x->shape[i];
  bool sharded = rows_total >= 0;
  if (p == 0.0 || (sharded ? rows_total * inner : mmp_tensor_numel(x)) == 0) return mmp_tensor_ref(x);
  mmp_tensor_t *noise;
  if (p == 1.0) /* torch: x * zeros({}) */
    noise = mmp_tensor_zeros(mmp_tensor_backend(x), MMP_F32, 0, NULL);
  else
    noise = mask_rows(g, mmp_tensor_backend(x), p, x->ndim, x->shape, sharded ? rows_total : x->ndim ? x->shape[0] : 1,
                      sharded ? row_off : 0);
  if (!noise) return NULL;
  mmp_tensor_t *y = mmp_mul(x, noise);
  mmp_tensor_unref(noise);
  return y;
}

mmp_tensor_t *mmp_dropout(mmp_rng_t *g, mmp_tensor_t *x, double p) {
  return mmp_dropout_rows(g, x, p, -1, 0);
}

mmp_tensor_t *mmp_drop_path_rows(mmp_rng_t *g, mmp_tensor_t *x, double p, mmp_drop_path_draws_t draws, int64_t rows_total,
                                 int64_t row_off) {
  if (!g || !x || !(p >= 0.0 && p < 1.0) || x->dtype != MMP_F32 || x->ndim < 1 ||
      (draws != MMP_DROP_PATH_BERNOULLI && draws != MMP_DROP_PATH_RAND) || !rows_ok(x, rows_total, row_off)) {
    mmp_error_set(MMP_EINVAL, "drop_path: %s",
                  !g || !x ? "NULL generator or tensor"
                  : x->dtype != MMP_F32 || x->ndim < 1 ? "the tensor must be f32 with a batch dimension"
                  : !(p >= 0.0 && p < 1.0) ? "the probability must lie in [0, 1)"
                  : draws != MMP_DROP_PATH_BERNOULLI && draws != MMP_DROP_PATH_RAND ? "unknown draws"
                                                                                   : "the rows lie outside the batch");
    return NULL;
  }
  int64_t inner = 1;
  for (int i = 1; i < x->ndim; i++) inner *= x->shape[i];
  if (p == 0.0 || rows_total * inner == 0) return mmp_tensor_ref(x);
  int64_t shape[MMP_MAX_DIMS], n = x->shape[0];
  shape[0] = n;
  for (int i = 1; i < x->ndim; i++) shape[i] = 1;
  mmp_backend_t *be = mmp_tensor_backend(x);
  if (draws == MMP_DROP_PATH_BERNOULLI) {
    mmp_tensor_t *noise = mask_rows(g, be, p, x->ndim, shape, rows_total, row_off);
    mmp_tensor_t *y = noise ? mmp_mul(x, noise) : NULL;
    mmp_tensor_unref(noise);
    return y;
  }
  /* timm 0.4.12: keep_prob + torch.rand(shape) is a float sum (the Python
   * double becomes a float), floor_ binarizes; x.div(keep_prob) divides by
   * that float. torch.rand of the whole batch, this shard's rows kept. */
  if (g->mode == MMP_RNG_NUMPY) {
    mmp_error_set(MMP_EUNSUPPORTED, "drop_path: a numpy-mode generator draws only uniform doubles");
    return NULL;
  }
  float keep = (float)(1.0 - p);
  mmp_tensor_t *r = host_tensor(be, MMP_F32, x->ndim, shape);
  if (!r) return NULL;
  float *d = mmp_tensor_data(r);
  for (int64_t i = 0; i < rows_total; i++) {
    float u = g->mode == MMP_RNG_TORCH ? torch_uniform_f(g) : philox_uniform_f(g->seed, g->offset++);
    if (i >= row_off && i < row_off + n) d[i - row_off] = floorf(keep + u);
  }
  r = finish(r, be);
  mmp_tensor_t *k = r ? mmp_tensor_full(be, MMP_F32, 0, NULL, keep) : NULL;
  mmp_tensor_t *xd = k ? mmp_div(x, k) : NULL;
  mmp_tensor_t *y = xd ? mmp_mul(xd, r) : NULL;
  mmp_tensor_unref(xd);
  mmp_tensor_unref(k);
  mmp_tensor_unref(r);
  return y;
}

mmp_tensor_t *mmp_drop_path(mmp_rng_t *g, mmp_tensor_t *x, double p, mmp_drop_path_draws_t draws) {
  return mmp_drop_path_rows(g, x, p, draws, x && x->ndim >= 1 ? x->shape[0] : 0, 0);
}

/* ------------------------------------------------------------ state I/O */
/* mode u32, seed u64, offset u64, mt[624] u32, mt_left i32, mt_next i32,
 * has_next_normal u32, next_normal f64 bits u64: 4 + 8 + 8 + 2496 + 4 + 4 + 4
 * + 8 = 2536 bytes, each field little-endian. */
static uint8_t *put_le(uint8_t *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
  return p + n;
}

static const uint8_t *get_le(const uint8_t *p, uint64_t *v, int n) {
  *v = 0;
  for (int i = 0; i < n; i++) *v |= (uint64_t)p[i] << (8 * i);
  return p + n;
}

int mmp_rng_get_state(const mmp_rng_t *g, void *buf, size_t len) {
  if (!g || !buf || len < MMP_RNG_STATE_SIZE)
    return mmp_error_set(MMP_EINVAL, "rng_get_state: need a generator and %d bytes", MMP_RNG_STATE_SIZE);
  uint8_t *p = buf;
  uint64_t nn;
  memcpy(&nn, &g->next_normal, sizeof nn);
  p = put_le(p, (uint64_t)g->mode, 4);
  p = put_le(p, g->seed, 8);
  p = put_le(p, g->offset, 8);
  for (int i = 0; i < MT_N; i++) p = put_le(p, g->mt[i], 4);
  p = put_le(p, (uint32_t)g->mt_left, 4);
  p = put_le(p, (uint32_t)g->mt_next, 4);
  p = put_le(p, g->has_next_normal ? 1u : 0u, 4);
  put_le(p, nn, 8);
  return 0;
}

int mmp_rng_set_state(mmp_rng_t *g, const void *buf, size_t len) {
  if (!g || !buf || len != MMP_RNG_STATE_SIZE)
    return mmp_error_set(MMP_EINVAL, "rng_set_state: the state is %zu bytes, expected %d", buf ? len : 0,
                         MMP_RNG_STATE_SIZE);
  const uint8_t *p = buf;
  uint64_t mode, seed, offset, left, next, has, nn;
  uint32_t mt[MT_N];
  p = get_le(p, &mode, 4);
  p = get_le(p, &seed, 8);
  p = get_le(p, &offset, 8);
  for (int i = 0; i < MT_N; i++) {
    uint64_t v;
    p = get_le(p, &v, 4);
    mt[i] = (uint32_t)v;
  }
  p = get_le(p, &left, 4);
  p = get_le(p, &next, 4);
  p = get_le(p, &has, 4);
  get_le(p, &nn, 8);
  if (mode != (uint64_t)g->mode)
    return mmp_error_set(MMP_EINVAL, "rng_set_state: the state is of mode %llu, the generator's is %d",
                         (unsigned long long)mode, (int)g->mode);
  /* the mt19937 part is unused (all zero) in philox mode */
  /* mt_u32 reads mt[next] for the left - 1 draws before the next twist:
   * next + left - 1 must not pass the end of the table */
  if (has > 1 || (g->mode != MMP_RNG_PHILOX &&
                  ((int32_t)left < 1 || (int32_t)left > MT_N || next >= MT_N || next + left > MT_N + 1)))
    return mmp_error_set(MMP_EINVAL, "rng_set_state: invalid state (position %lld/%lld)", (long long)(int32_t)left,
                         (long long)next);
  g->seed = seed;
  g->offset = offset;
  memcpy(g->mt, mt, sizeof mt);
  g->mt_left = (int)(int32_t)left;
  g->mt_next = (int)next;
  g->has_next_normal = has != 0;
  memcpy(&g->next_normal, &nn, sizeof nn);
  return 0;
}
