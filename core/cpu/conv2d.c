/* core/cpu/conv2d.c - 2-D convolution as an implicit GEMM (im2col done while packing). */
#include "config.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/dispatch.h"
#include "core/cpu/gemm.h"
#include "core/cpu/kernels.h"
#include "mmpipe/error.h"
#include "mmpipe/tensor.h" /* MMP_F32, MMP_F16, MMP_BF16 */

/* For one image n and group g, Y_g[Og x P] = W_g[Og x Cg*KH*KW] . col[.. x P]
 * with P = OH*OW output pixels. The GEMM's B operand (the im2col matrix) is
 * never materialised: each KC x NC block is gathered straight from x into
 * the micro-kernel's panel layout, so memory stays O(block) and x is read
 * from cache. A 1x1, stride-1, unpadded convolution is a plain GEMM on x. */
typedef struct conv_job {
  const mmp_gemm_kernel_t *g;
  const float *x, *bias;
  const char *w; /* weights of wsz bytes each, dtype wdt */
  int wdt;
  int64_t wsz;
  float *y;
  int64_t N, C, H, W, O, KH, KW, OH, OW;
  int sh, sw, ph, pw, dh, dw, groups;
  int64_t Cg, Og, Kg, P;
  int64_t Mt, Nt, tm, tn, ntasks;
  bool pointwise;
  bool relu;  /* the epilogue: y = max(y, 0) on each finished tile, while it is in cache */
  bool span;  /* columns run over all images (small images): tasks write a scratch tile */
  float *col; /* span, groups 1: the im2col matrix, built and packed once */
  int64_t col_ld, col_kc, nfill;
  atomic_int_fast64_t next;
  atomic_int failed;
} conv_job_t;

typedef struct conv_b {
  const conv_job_t *j;
  const float *x;  /* x[n, g*Cg] */
  int64_t p0;      /* first output pixel of this task (may run into later images) */
} conv_b_t;

/* torch.relu on a finished output tile: NaN stays NaN */
static inline MMP_ALWAYS_INLINE void relu_rows_body(float *y, int64_t rows, int64_t n, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    float *v = y + r * ld;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      for (int t = 0; t < 16; ++t) v[i + t] = v[i + t] > 0.0f ? v[i + t] : (v[i + t] == v[i + t] ? 0.0f : v[i + t]);
    for (; i < n; ++i) v[i] = v[i] > 0.0f ? v[i] : (v[i] == v[i] ? 0.0f : v[i]);
  }
}
MMP_VARIANTS_VOID(relu_rows, (float *y, int64_t rows, int64_t n, int64_t ld), (y, rows, n, ld))

/* A run of a B panel's columns along one output row (or, for a 1x1
 * stride-1 unpadded kernel, along a whole image): panel columns t..t+len-1
 * read input row ih0 + kh*dh, columns iw0 + kw*dw + u*sw, of the image whose
 * channel 0 starts at xi. */
typedef struct conv_seg {
  const float *xi;
  int64_t ih0, iw0;
  int t, len;
} conv_seg_t;
enum { CONV_MAX_NR = 64 }; /* the widest micro-kernel panel (nr) */

/* d[0:n] = s[0:n] (s NULL: zeros) in blocks of 16 and 8 floats as GCC
 * vector types, so that each block is one vector move of the variant's
 * target (a plain loop is left scalar or turned back into a memmove call);
 * runs are short (8 to a few dozen floats), where a memcpy call or a scalar
 * loop cost more than the copy */
typedef float conv_v16_t __attribute__((vector_size(64), aligned(4), may_alias));
typedef float conv_v8_t __attribute__((vector_size(32), aligned(4), may_alias));
static inline MMP_ALWAYS_INLINE void copy_run(float *d, const float *s, int64_t n) {
  int64_t u = 0;
  if (s) {
    for (; u + 16 <= n; u += 16) *(conv_v16_t *)(d + u) = *(const conv_v16_t *)(s + u);
    if (u + 8 <= n) {
      *(conv_v8_t *)(d + u) = *(const conv_v8_t *)(s + u);
      u += 8;
    }
    for (; u < n; ++u) d[u] = s[u];
  } else {
    const conv_v16_t z16 = {0};
    const conv_v8_t z8 = {0};
    for (; u + 16 <= n; u += 16) *(conv_v16_t *)(d + u) = z16;
    if (u + 8 <= n) {
      *(conv_v8_t *)(d + u) = z8;
      u += 8;
    }
    for (; u < n; ++u) d[u] = 0.0f;
  }
}

/* bp[panel][k][t] = x[c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] for
 * row k0+k = (c, kh, kw) and column j0+t = pixel (oh, ow); 0 outside.
 * A panel's runs (segments) are found once and reused for its kc rows, and
 * (c, kh, kw) steps along k without divisions: Inception's 17x17 and 8x8
 * maps give runs of 17 and 8 floats, where the per-row bookkeeping cost as
 * much as the copy. */
static inline MMP_ALWAYS_INLINE void pack_conv_b_body(const void *ctx, int64_t k0, int64_t kc, int64_t j0,
                                                      int64_t nc, float *bp) {
  const conv_b_t *cb = ctx;
  const conv_job_t *j = cb->j;
  const int NR = j->g->nr;
  const int64_t HW = j->H * j->W, KH = j->KH, KW = j->KW, KHW = KH * KW, sw = j->sw;
  const int64_t dh = j->dh, dw = j->dw;
  /* 1x1, stride 1, unpadded: each channel of an image is one run of P pixels */
  const bool flat = KHW == 1 && j->sh == 1 && sw == 1 && j->ph == 0 && j->pw == 0;
  const int64_t OWr = flat ? j->P : j->OW, OHr = flat ? 1 : j->OH;
  const int64_t Hr = flat ? 1 : j->H, Wr = flat ? HW : j->W;
  conv_seg_t seg[CONV_MAX_NR];
  for (int64_t q = 0; q < nc; q += NR) {
    const int nr = (int)(nc - q < NR ? nc - q : NR);
    const int64_t pix0 = cb->p0 + j0 + q, pix = pix0 % j->P;
    const float *xi = cb->x + (pix0 / j->P) * j->C * HW;
    int64_t oh = pix / OWr, ow = pix % OWr;
    int ns = 0;
    for (int t = 0; t < nr;) {
      int run = (int)(OWr - ow < nr - t ? OWr - ow : nr - t);
      seg[ns].xi = xi;
      seg[ns].ih0 = flat ? 0 : oh * j->sh - j->ph;
      seg[ns].iw0 = flat ? ow : ow * sw - j->pw;
      seg[ns].t = t;
      seg[ns].len = run;
      ns++;
      t += run;
      ow += run;
      if (ow == OWr) {
        ow = 0;
        if (++oh == OHr) { /* next image (columns span images) */
          oh = 0;
          xi += j->C * HW;
        }
      }
    }
    int64_t c = k0 / KHW, r = k0 % KHW, kh = r / KW, kw = r % KW;
    for (int64_t k = 0; k < kc; ++k) {
      float *d = bp + k * NR;
      const int64_t coff = c * HW, dih = kh * dh, diw = kw * dw;
      for (int s = 0; s < ns; ++s) {
        float *dd = d + seg[s].t;
        const int64_t len = seg[s].len, ih = seg[s].ih0 + dih;
        if (ih < 0 || ih >= Hr) {
          copy_run(dd, NULL, len);
          continue;
        }
        const float *xr = seg[s].xi + coff + ih * Wr;
        const int64_t iw0 = seg[s].iw0 + diw;
        if (sw == 1) {
          /* contiguous: zeros, a copied run, zeros */
          int64_t lo = iw0 < 0 ? -iw0 : 0;
          if (lo > len) lo = len;
          int64_t hi = Wr - iw0; /* first u with iw >= W */
          if (hi > len) hi = len;
          if (hi < lo) hi = lo;
          if (lo > 0) copy_run(dd, NULL, lo);
          copy_run(dd + lo, xr + iw0 + lo, hi - lo);
          if (len > hi) copy_run(dd + hi, NULL, len - hi);
        } else {
          for (int64_t u = 0; u < len; ++u) {
            int64_t iw = iw0 + u * sw;
            dd[u] = (iw >= 0 && iw < Wr) ? xr[iw] : 0.0f;
          }
        }
      }
      for (int t = nr; t < NR; ++t) d[t] = 0.0f;
      if (++kw == KW) {
        kw = 0;
        if (++kh == KH) {
          kh = 0;
          ++c;
        }
      }
    }
    bp += NR * kc;
  }
}
MMP_VARIANTS_VOID(pack_conv_b, (const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float *bp),
                  (ctx, k0, kc, j0, nc, bp))

static void pack_pointwise_b(const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                             float *bp) {
  const conv_b_t *cb = ctx;
  cb->j->g->pack_b(cb->x + cb->p0, cb->j->P, false, k0, kc, j0, nc, bp);
}

/* The im2col matrix packed once in the micro-kernel's B layout, K block by
 * K block (mmp_gemm_serial_pb's layout): item wi of nfill packs a share of
 * the (K block, panel) pairs. */
static void fill_col(int64_t wi, void *user) {
  conv_job_t *j = user;
  const int64_t NR = j->g->nr, cols = j->N * j->P, np = (cols + NR - 1) / NR;
  const int64_t nkb = (j->Kg + j->col_kc - 1) / j->col_kc, items = nkb * np;
  conv_b_t cb = {j, j->x, 0};
  for (int64_t it = wi * items / j->nfill; it < (wi + 1) * items / j->nfill; ++it) {
    int64_t pc = (it / np) * j->col_kc, q = (it % np) * NR;
    int64_t kc = j->Kg - pc < j->col_kc ? j->Kg - pc : j->col_kc;
    float *panel = j->col + pc * j->col_ld + q * kc;
    pack_conv_b(&cb, pc, kc, q, cols - q < NR ? cols - q : NR, panel);
    if (j->g->squeeze) j->g->squeeze(panel, kc, (int)NR);
  }
}

static void conv_worker(int64_t wi, void *user) {
  conv_job_t *j = user;
  (void)wi;
  const mmp_gemm_kernel_t *g = j->g;
  float *bufa = NULL, *bufb = NULL, *tile = NULL;
  for (;;) {
    int64_t t = atomic_fetch_add(&j->next, 1);
    if (t >= j->ntasks) break;
    if (!bufa) {
      bufa = mmp_cpu_scratch(MMP_SCRATCH_A, (int64_t)g->mc * g->kc);
      /* with the shared im2col matrix, B is read where it lies */
      if (!j->col) bufb = mmp_cpu_scratch(MMP_SCRATCH_B, (int64_t)g->kc * ((j->Nt + g->nr - 1) / g->nr * g->nr));
      if (j->span) tile = mmp_cpu_scratch(MMP_SCRATCH_TILE, j->Mt * j->Nt);
      if (!bufa || (!j->col && !bufb) || (j->span && !tile)) {
        atomic_store(&j->failed, 1);
        break;
      }
    }
    int64_t tn = t % j->tn;
    t /= j->tn;
    int64_t tm = t % j->tm;
    t /= j->tm;
    int64_t gi = t % j->groups;
    int64_t n = t / j->groups; /* 0 when span */
    int64_t cols = j->span ? j->N * j->P : j->P;
    int64_t m0 = tm * j->Mt, p0 = tn * j->Nt;
    int64_t mc = j->Og - m0 < j->Mt ? j->Og - m0 : j->Mt;
    int64_t nc = cols - p0 < j->Nt ? cols - p0 : j->Nt;
    float *y, *ydst = j->y + (n * j->O + gi * j->Og + m0) * j->P + p0;
    int64_t ldy;
    if (j->span) {
      y = tile;
      ldy = nc;
    } else {
      y = ydst;
      ldy = j->P;
    }
    float beta = 0.0f;
    if (j->bias) {
      for (int64_t o = 0; o < mc; ++o) {
        float b = j->bias[gi * j->Og + m0 + o];
        float *yo = y + o * ldy;
        for (int64_t p = 0; p < nc; ++p) yo[p] = b;
      }
      beta = 1.0f;
    }
    conv_b_t cb = {j, j->x + (n * j->C + gi * j->Cg) * j->H * j->W, p0};
    const char *A = j->w + (gi * j->Og + m0) * j->Kg * j->wsz;
    if (j->col)
      mmp_gemm_serial_pb(g, false, mc, nc, j->Kg, j->col_kc, 1.0f, A, j->wdt, j->Kg, j->col, j->col_ld, p0,
                         beta, y, ldy, bufa);
    else
      mmp_gemm_serial_cb(g, false, mc, nc, j->Kg, 1.0f, A, j->wdt, j->Kg,
                         j->pointwise ? pack_pointwise_b : pack_conv_b, &cb, beta, y, ldy, bufa,
                         bufb);
    if (j->relu) relu_rows(y, mc, nc, ldy);
    if (j->span) /* scatter the tile: column c is image (p0+c)/P, pixel (p0+c)%P */
      for (int64_t c = 0; c < nc;) {
        int64_t img = (p0 + c) / j->P, pix = (p0 + c) % j->P;
        int64_t run = j->P - pix < nc - c ? j->P - pix : nc - c;
        float *dst = j->y + (img * j->O + gi * j->Og + m0) * j->P + pix;
        for (int64_t o = 0; o < mc; ++o)
          memcpy(dst + o * j->P, tile + o * nc + c, (size_t)run * sizeof(float));
        c += run;
      }
  }
  mmp_cpu_scratch_done(MMP_SCRATCH_A);
  mmp_cpu_scratch_done(MMP_SCRATCH_B);
  mmp_cpu_scratch_done(MMP_SCRATCH_TILE);
}

int mmp_cpu_conv2d(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const float *w,
                   int64_t O, int64_t KH, int64_t KW, const float *bias, int sh, int sw, int ph,
                   int pw, int dh, int dw, int groups, float *y) {
  return mmp_cpu_conv2d_w(x, N, C, H, W, w, MMP_F32, O, KH, KW, bias, sh, sw, ph, pw, dh, dw, groups, y, MMP_F32);
}

int mmp_cpu_conv2d_w(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const void *w, int wdt,
                     int64_t O, int64_t KH, int64_t KW, const float *bias, int sh, int sw, int ph, int pw,
                     int dh, int dw, int groups, float *y, int cdt) {
  return mmp_cpu_conv2d_act(x, N, C, H, W, w, wdt, O, KH, KW, bias, sh, sw, ph, pw, dh, dw, groups, -1, y, cdt);
}

int mmp_cpu_conv2d_act(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const void *w, int wdt,
                       int64_t O, int64_t KH, int64_t KW, const float *bias, int sh, int sw, int ph, int pw,
                       int dh, int dw, int groups, int act, float *y, int cdt) {
  if (act != -1 && act != MMP_CPU_ACT_RELU)
    return mmp_error_set(MMP_EINVAL, "conv2d: activation %d (want none or relu)", act);
  if (wdt != MMP_F32 && wdt != MMP_F16 && wdt != MMP_BF16)
    return mmp_error_set(MMP_EDTYPE, "conv2d: weight dtype %d (want f32, f16 or bf16)", wdt);
  if (cdt != MMP_F32 && cdt != MMP_BF16)
    return mmp_error_set(MMP_EDTYPE, "conv2d: compute dtype %d (want f32 or bf16)", cdt);
  if (N < 0 || C <= 0 || H <= 0 || W <= 0 || O <= 0 || KH <= 0 || KW <= 0)
    return mmp_error_set(MMP_EINVAL, "conv2d: bad sizes (C %lld, H %lld, W %lld, O %lld, kernel %lldx%lld)",
                         (long long)C, (long long)H, (long long)W, (long long)O, (long long)KH,
                         (long long)KW);
  if (sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || ph < 0 || pw < 0)
    return mmp_error_set(MMP_EINVAL, "conv2d: stride and dilation must be >= 1, padding >= 0");
  if (groups <= 0 || C % groups || O % groups)
    return mmp_error_set(MMP_EINVAL, "conv2d: groups %d must divide channels %lld and outputs %lld",
                         groups, (long long)C, (long long)O);
  int64_t OH = (H + 2 * (int64_t)ph - (int64_t)dh * (KH - 1) - 1) / sh + 1;
  int64_t OW = (W + 2 * (int64_t)pw - (int64_t)dw * (KW - 1) - 1) / sw + 1;
  if (H + 2 * (int64_t)ph - (int64_t)dh * (KH - 1) - 1 < 0 ||
      W + 2 * (int64_t)pw - (int64_t)dw * (KW - 1) - 1 < 0 || OH <= 0 || OW <= 0)
    return mmp_error_set(MMP_EINVAL, "conv2d: kernel larger than the padded input");
  if (N == 0) return 0;
  if (!x || !w || !y) return mmp_error_set(MMP_EINVAL, "conv2d: NULL operand");

  conv_job_t j;
  memset(&j, 0, sizeof j);
  j.g = mmp_gemm_kernel_for(cdt);
  if (j.g->nr > CONV_MAX_NR) return mmp_error_set(MMP_EINVAL, "conv2d: micro-kernel panel of %d columns", j.g->nr);
  j.x = x;
  j.w = w;
  j.wdt = wdt;
  j.wsz = wdt == MMP_F32 ? 4 : 2;
  j.bias = bias;
  j.relu = act == MMP_CPU_ACT_RELU;
  j.y = y;
  j.N = N;
  j.C = C;
  j.H = H;
  j.W = W;
  j.O = O;
  j.KH = KH;
  j.KW = KW;
  j.OH = OH;
  j.OW = OW;
  j.sh = sh;
  j.sw = sw;
  j.ph = ph;
  j.pw = pw;
  j.dh = dh;
  j.dw = dw;
  j.groups = groups;
  j.Cg = C / groups;
  j.Og = O / groups;
  j.Kg = j.Cg * KH * KW;
  j.P = OH * OW;
  j.pointwise = KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;

  /* Tasks: (image, group, block of output channels, block of pixels).
   * Keep the channel block whole when possible (each im2col element is
   * then gathered once per image), split pixels to feed every thread. */
  int threads = mmp_cpu_threads();
  const int64_t MR = j.g->mr, NR = j.g->nr;
  /* small images: let the GEMM's columns run over the whole batch, so the
   * weights are packed once instead of once per image */
  j.span = N > 1 && j.P < 512;
  if (j.span) j.pointwise = false; /* the im2col packer handles 1x1 across images */
  int64_t cols = j.span ? N * j.P : j.P;
  int64_t pm = (j.Og + MR - 1) / MR, pn = (cols + NR - 1) / NR;
  int64_t base = (j.span ? 1 : N) * groups;
  int64_t want = threads > 1 ? 3 * threads : 1;
  int64_t need = (want + base - 1) / base; /* blocks per (image, group) */
  int64_t max_nt = 2048 / NR;              /* B block (kc x Nt) stays in L2/L3 */
  /* weights are packed once per column block, im2col once per row block:
   * pick the split with the least packing that feeds every thread */
  int64_t tm = 1, tn = (pn + max_nt - 1) / max_nt;
  double best = -1.0;
  for (int64_t a = 1; a <= pm && a <= 64; ++a)
    for (int64_t b = (pn + max_nt - 1) / max_nt; b <= pn && b <= 64; ++b) {
      int64_t ra = (pm + (pm + a - 1) / a - 1) / ((pm + a - 1) / a);
      int64_t rb = (pn + (pn + b - 1) / b - 1) / ((pn + b - 1) / b);
      if (ra * rb < need && !(a == pm && b == pn)) continue;
      double cost = (double)j.Og * rb + (double)cols * ra;
      if (best < 0 || cost < best) {
        best = cost;
        tm = ra;
        tn = rb;
      }
    }
  j.Mt = (pm + tm - 1) / tm * MR;
  j.Nt = (pn + tn - 1) / tn * NR;
  j.tm = (j.Og + j.Mt - 1) / j.Mt;
  j.tn = (cols + j.Nt - 1) / j.Nt;
  j.ntasks = base * j.tm * j.tn;
  atomic_store(&j.next, 0);
  atomic_store(&j.failed, 0);
  double flops = 2.0 * N * O * j.P * j.Kg;
  int64_t nw = flops < 2e6 ? 1 : (threads < j.ntasks ? threads : j.ntasks);
  /* Split into several row blocks, every task would gather the same im2col
   * blocks again (runs of OW floats: slow for 8x8 images). Build the matrix
   * once instead when it is small. */
  if (j.span && groups == 1 && j.tm > 1 && j.Kg * cols <= ((int64_t)16 << 20)) {
    j.col_ld = (cols + NR - 1) / NR * NR;
    j.col_kc = mmp_gemm_kblock(j.g, j.Kg, j.Nt); /* as the tasks' products (Nt columns) */
    j.col = mmp_cpu_scratch(MMP_SCRATCH_CALLER0, j.Kg * j.col_ld);
    if (!j.col) return mmp_error_set(MMP_ENOMEM, "conv2d: out of memory for the im2col matrix");
    j.nfill = nw > 1 ? 4 * nw : 1; /* (K block, panel) items: several per thread */
    if (j.nfill <= 1)
      fill_col(0, &j);
    else
      mmp_cpu_parallel_for(j.nfill, fill_col, &j);
  }
  if (nw <= 1)
    conv_worker(0, &j);
  else
    mmp_cpu_parallel_for(nw, conv_worker, &j);
  if (j.col) mmp_cpu_scratch_done(MMP_SCRATCH_CALLER0);
  if (atomic_load(&j.failed)) return mmp_error_set(MMP_ENOMEM, "conv2d: out of memory for packing buffers");
  return 0;
}
