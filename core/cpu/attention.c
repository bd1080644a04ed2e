/* core/cpu/attention.c - scaled dot-product attention with a streaming (online) softmax. */
#include "config.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/gemm.h"
#ifdef MMP_HAVE_X86_DISPATCH
#include <immintrin.h>
#endif
#include "core/cpu/kernels.h"
#include "mmpipe/error.h"

/* Work is done transposed, so that the softmax runs along vector lanes and
 * the probabilities come out already in the micro-kernel's B layout:
 *
 *   S^T[keys x queries] = (scale K) . Q^T     (A = K panels, B = Q^T panels)
 *   P^T = exp(S^T - m)  column-wise online softmax, m and l per query
 *   O^T[Dv x queries]  += V^T . P^T           (A = V^T panels, B = P^T)
 *
 * One task is (batch, head, block of QB queries); it walks the keys in
 * blocks of KB. K and V are packed once per head before the tasks start.
 * Memory: O(B*H*Lk*(D+Dv)) packed operands plus O(KB*QB) per thread. */

typedef struct attn_job {
  const mmp_gemm_kernel_t *g;
  const float *q, *k, *v;
  const uint8_t *mask;
  bool causal;
  float scale;
  float *out;
  int64_t B, H, Lq, Lk, D, Dv;
  int64_t QB, KB, nqb;
  int64_t kp_head, vp_head; /* floats per head of packed K / V^T */
  int64_t vp_block;         /* floats per key block of packed V^T */
  float *kp, *vp;
  atomic_int_fast64_t next;
  int64_t ntasks;
  atomic_int failed;
} attn_job_t;

static void pack_head(int64_t bh, void *user) {
  attn_job_t *j = user;
  const mmp_gemm_kernel_t *g = j->g;
  const float *k = j->k + bh * j->Lk * j->D;
  const float *v = j->v + bh * j->Lk * j->Dv;
  float *kp = j->kp + bh * j->kp_head;
  float *vp = j->vp + bh * j->vp_head;
  /* K rows in panels of mr keys x D, whole sequence (blocks are aligned to mr) */
  g->pack_a(k, j->D, false, 0, j->Lk, 0, j->D, j->scale, kp);
  for (int64_t kb = 0, blk = 0; kb < j->Lk; kb += j->KB, ++blk) {
    int64_t kn = j->Lk - kb < j->KB ? j->Lk - kb : j->KB;
    /* V^T rows (Dv) in panels of mr, columns = keys of this block */
    g->pack_a(v, j->Dv, true, 0, j->Dv, kb, kn, 1.0f, vp + blk * j->vp_block);
  }
}

#ifdef MMP_HAVE_X86_DISPATCH
void mmp_attn_softmax_avx512(float *s, int64_t kn, float *m, float *l, float *o, int64_t dv);
void mmp_attn_store_avx512(const float *o, int64_t dv, const float *l, int64_t nq, float *out,
                           int64_t ldo, float *stage);
#endif

/* Portable version of mmp_attn_softmax_avx512 for a panel of nr queries. */
static void softmax_panel(float *s, int64_t kn, int64_t NR, float *mp, float *lp, float *o,
                          int64_t Dv, float *alpha) {
  float mnew[64], sum[64]; /* NR <= 64 */
  for (int64_t c = 0; c < NR; ++c) mnew[c] = mp[c];
  for (int64_t r = 0; r < kn; ++r) {
    const float *sr = s + r * NR;
    for (int64_t c = 0; c < NR; ++c) mnew[c] = sr[c] > mnew[c] ? sr[c] : mnew[c];
  }
  for (int64_t c = 0; c < NR; ++c) {
    float mu = mnew[c] == -INFINITY ? 0.0f : mnew[c];
    alpha[c] = mp[c] - mu; /* exp below; -inf - mu -> 0 */
    mp[c] = mnew[c];
    mnew[c] = mu;
  }
  mmp_vexp(alpha, alpha, NR);
  for (int64_t r = 0; r < kn; ++r) {
    float *sr = s + r * NR;
    for (int64_t c = 0; c < NR; ++c) sr[c] -= mnew[c];
  }
  mmp_vexp(s, s, kn * NR);
  for (int64_t c = 0; c < NR; ++c) sum[c] = 0.0f;
  for (int64_t r = 0; r < kn; ++r) {
    const float *sr = s + r * NR;
    for (int64_t c = 0; c < NR; ++c) sum[c] += sr[c];
  }
  for (int64_t c = 0; c < NR; ++c) lp[c] = lp[c] * alpha[c] + sum[c];
  for (int64_t d = 0; d < Dv; ++d)
    for (int64_t c = 0; c < NR; ++c) o[d * NR + c] *= alpha[c];
}

static void attn_worker(int64_t wi, void *user) {
  attn_job_t *j = user;
  (void)wi;
  const mmp_gemm_kernel_t *g = j->g;
  const int64_t NR = g->nr, MR = g->mr, QB = j->QB, KB = j->KB, D = j->D, Dv = j->Dv;
  const int64_t np = QB / NR; /* query panels per task */
  const int64_t dvp = (Dv + MR - 1) / MR * MR;
  float *qp = NULL, *st = NULL, *ot = NULL, *m = NULL, *l = NULL, *tmp = NULL;
  for (;;) {
    int64_t t = atomic_fetch_add(&j->next, 1);
    if (t >= j->ntasks) break;
    if (!qp) {
      qp = mmp_cpu_scratch(MMP_SCRATCH_ATTN_Q, D * QB);
      st = mmp_cpu_scratch(MMP_SCRATCH_ATTN_S, KB * QB);
      ot = mmp_cpu_scratch(MMP_SCRATCH_ATTN_O, dvp * QB);
      /* m, l: QB each (64-byte multiples); tmp: the staging panel */
      m = mmp_cpu_scratch(MMP_SCRATCH_ATTN_ML, 2 * QB + (NR * Dv > QB ? NR * Dv : QB));
      l = m ? m + QB : NULL;
      tmp = m ? m + 2 * QB : NULL;
      if (!qp || !st || !ot || !m) {
        atomic_store(&j->failed, 1);
        break;
      }
    }
    int64_t bh = t / j->nqb, q0 = (t % j->nqb) * QB;
    int64_t b = bh / j->H;
    int64_t qn = j->Lq - q0 < QB ? j->Lq - q0 : QB;
    const float *q = j->q + bh * j->Lq * D;
    const uint8_t *mask = j->mask ? j->mask + b * j->Lk : NULL;
    const float *kp = j->kp + bh * j->kp_head;
    const float *vp = j->vp + bh * j->vp_head;

    /* Q^T panels: B layout, kc = D */
    g->pack_b(q, D, true, 0, D, q0, qn, qp);
    for (int64_t i = 0; i < QB; ++i) {
      m[i] = -INFINITY;
      l[i] = 0.0f;
    }
    memset(ot, 0, (size_t)(dvp * QB) * sizeof(float));

    int64_t kend = j->Lk;
    if (j->causal && q0 + qn < kend) kend = q0 + qn; /* keys past the last query are masked */
    for (int64_t kb = 0, blk = 0; kb < kend; kb += KB, ++blk) {
      int64_t kn = j->Lk - kb < KB ? j->Lk - kb : KB;
      for (int64_t p = 0; p < np; ++p) {
        int64_t qs = q0 + p * NR; /* first query of this panel */
        if (qs >= q0 + qn) break;
        float *s = st + p * KB * NR;
        const float *qpp = qp + p * NR * D;
        /* S^T block [kn x NR] */
        mmp_gemm_macro(g, kn, NR, D, kp + kb * D, qpp, s, NR, 0.0f);
        /* masks */
        if (mask)
          for (int64_t r = 0; r < kn; ++r)
            if (mask[kb + r])
              for (int64_t c = 0; c < NR; ++c) s[r * NR + c] = -INFINITY;
        if (j->causal)
          for (int64_t r = 0; r < kn; ++r) {
            int64_t key = kb + r;
            int64_t c0 = key - qs; /* columns c < c0 have query < key */
            if (c0 <= 0) continue;
            if (c0 > NR) c0 = NR;
            for (int64_t c = 0; c < c0; ++c) s[r * NR + c] = -INFINITY;
          }
        /* online softmax along columns, rescale O^T, then O^T += V^T . P^T */
        float *o = ot + p * dvp * NR;
#ifdef MMP_HAVE_X86_DISPATCH
        if (g == &mmp_gemm_kernel_avx512)
          mmp_attn_softmax_avx512(s, kn, m + p * NR, l + p * NR, o, Dv);
        else
#endif
          softmax_panel(s, kn, NR, m + p * NR, l + p * NR, o, Dv, tmp);
        mmp_gemm_macro(g, Dv, NR, kn, vp + blk * j->vp_block, s, o, NR, 1.0f);
      }
    }
    /* out[q][dv] = O^T[dv][q] / l[q]; fully masked rows give 0 */
    float *out = j->out + (bh * j->Lq + q0) * Dv;
#ifdef MMP_HAVE_X86_DISPATCH
    if (g == &mmp_gemm_kernel_avx512) {
      for (int64_t p = 0; p * NR < qn; ++p)
        mmp_attn_store_avx512(ot + p * dvp * NR, Dv, l + p * NR, qn - p * NR, out + p * NR * Dv, Dv,
                              tmp);
      continue;
    }
#endif
    for (int64_t i = 0; i < qn; ++i) {
      int64_t p = i / NR, c = i % NR;
      const float *o = ot + p * dvp * NR + c;
      float li = l[i];
      float inv = li > 0.0f ? 1.0f / li : 0.0f;
      float *oi = out + i * Dv;
      for (int64_t d = 0; d < Dv; ++d) oi[d] = o[d * NR] * inv;
    }
  }
#ifdef MMP_HAVE_X86_DISPATCH
  if (g == &mmp_gemm_kernel_avx512) _mm_sfence(); /* order the streamed output */
#endif
  mmp_cpu_scratch_done(MMP_SCRATCH_ATTN_Q);
  mmp_cpu_scratch_done(MMP_SCRATCH_ATTN_S);
  mmp_cpu_scratch_done(MMP_SCRATCH_ATTN_O);
  mmp_cpu_scratch_done(MMP_SCRATCH_ATTN_ML);
}

int mmp_cpu_attention(const float *q, const float *k, const float *v, int64_t B, int64_t H,
                      int64_t Lq, int64_t Lk, int64_t D, int64_t Dv, const uint8_t *key_mask,
                      bool causal, float scale, float *out) {
  if (B < 0 || H < 0 || Lq < 0 || Lk < 0 || D <= 0 || Dv <= 0)
    return mmp_error_set(MMP_EINVAL, "attention: bad sizes (B %lld, H %lld, Lq %lld, Lk %lld, D %lld, Dv %lld)",
                         (long long)B, (long long)H, (long long)Lq, (long long)Lk, (long long)D,
                         (long long)Dv);
  if (B == 0 || H == 0 || Lq == 0) return 0;
  if (!q || !out || (Lk > 0 && (!k || !v)))
    return mmp_error_set(MMP_EINVAL, "attention: NULL operand");
  if (Lk == 0) {
    memset(out, 0, (size_t)(B * H * Lq * Dv) * sizeof(float));
    return 0;
  }
  attn_job_t j;
  memset(&j, 0, sizeof j);
  j.g = mmp_gemm_kernel();
  const int64_t MR = j.g->mr, NR = j.g->nr;
  j.q = q;
  j.k = k;
  j.v = v;
  j.mask = key_mask;
  j.causal = causal;
  j.scale = scale;
  j.out = out;
  j.B = B;
  j.H = H;
  j.Lq = Lq;
  j.Lk = Lk;
  j.D = D;
  j.Dv = Dv;
  /* 4 query panels per task: each K/V block is reused 4 times from L1/L2 */
  j.QB = NR * 4;
  if (j.QB > 128) j.QB = 128;
  j.KB = MR * 12;
  j.nqb = (Lq + j.QB - 1) / j.QB;
  int64_t nkb = (Lk + j.KB - 1) / j.KB;
  int64_t dvp = (Dv + MR - 1) / MR * MR;
  j.kp_head = (Lk + MR - 1) / MR * MR * D;
  j.vp_block = dvp * j.KB;
  j.vp_head = nkb * j.vp_block;
  j.kp = mmp_cpu_scratch(MMP_SCRATCH_CALLER0, B * H * j.kp_head);
  j.vp = mmp_cpu_scratch(MMP_SCRATCH_CALLER1, B * H * j.vp_head);
  if (!j.kp || !j.vp) {
    mmp_cpu_scratch_done(MMP_SCRATCH_CALLER0);
    mmp_cpu_scratch_done(MMP_SCRATCH_CALLER1);
    return mmp_error_set(MMP_ENOMEM, "attention: out of memory for packed keys/values");
  }
  int threads = mmp_cpu_threads();
  mmp_cpu_parallel_for(B * H, pack_head, &j);
  j.ntasks = B * H * j.nqb;
  atomic_store(&j.next, 0);
  atomic_store(&j.failed, 0);
  int64_t nw = threads < j.ntasks ? threads : j.ntasks;
  if (nw <= 1)
    attn_worker(0, &j);
  else
    mmp_cpu_parallel_for(nw, attn_worker, &j);
  mmp_cpu_scratch_done(MMP_SCRATCH_CALLER0);
  mmp_cpu_scratch_done(MMP_SCRATCH_CALLER1);
  if (atomic_load(&j.failed)) return mmp_error_set(MMP_ENOMEM, "attention: out of memory for scratch");
  return 0;
}
