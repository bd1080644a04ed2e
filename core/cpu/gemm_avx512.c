/* core/cpu/gemm_avx512.c - AVX-512 micro-kernel, packing and vector exp (runtime-dispatched). */
#include "config.h"

#include "core/cpu/gemm.h"

#ifdef MMP_HAVE_X86_DISPATCH
#include <immintrin.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))

#define MR 14
#define NR 32
#ifndef PF_C
#define PF_C _MM_HINT_T1
#endif
/* K blocks: 768 deep in general (C, re-read once per K block, is the
 * costly operand of large products; the 96 KiB B panel streams from L2),
 * 256 when the B block is narrow (few columns: the packed A block then
 * dominates and must stay small) */
#ifndef MMP_AVX512_KC
#define MMP_AVX512_KC 768
#endif
#ifndef MMP_AVX512_KC_NARROW
#define MMP_AVX512_KC_NARROW 256
#endif
#ifndef MMP_AVX512_MC
#define MMP_AVX512_MC (14 * 12)
#endif

/* The assembly is spelled with macros; the assembler evaluates the offset
 * sums ("56+4*3(%[a])").
 * KSTEP(AO, BO): one k of the 14 x 32 tile: B row at BO bytes (2 vectors),
 * the 14 A values at AO + 4 i, 28 FMAs into zmm4..31 (row i: zmm 4+2i, 5+2i). */
#define ZERO1(r) "vmovaps %%zmm4, %%zmm" #r "\n\t"
#define ZERO4(r0, r1, r2, r3) ZERO1(r0) ZERO1(r1) ZERO1(r2) ZERO1(r3)
#define PF_B(off)                                                                   \
  "prefetcht0 " #off "(%[b])\n\t" "prefetcht0 " #off "+64(%[b])\n\t"                 \
  "prefetcht0 " #off "+128(%[b])\n\t" "prefetcht0 " #off "+192(%[b])\n\t"
#define FMA_ROW(AO, i, bc, c0, c1)                                                  \
  "vbroadcastss " #AO "+4*" #i "(%[a]), %%zmm" #bc "\n\t"                            \
  "vfmadd231ps %%zmm0, %%zmm" #bc ", %%zmm" #c0 "\n\t"                               \
  "vfmadd231ps %%zmm1, %%zmm" #bc ", %%zmm" #c1 "\n\t"
#define KSTEP(AO, BO)                                                               \
  "vmovaps " #BO "(%[b]), %%zmm0\n\t" "vmovaps " #BO "+64(%[b]), %%zmm1\n\t"          \
  FMA_ROW(AO, 0, 2, 4, 5) FMA_ROW(AO, 1, 3, 6, 7) FMA_ROW(AO, 2, 2, 8, 9)            \
  FMA_ROW(AO, 3, 3, 10, 11) FMA_ROW(AO, 4, 2, 12, 13) FMA_ROW(AO, 5, 3, 14, 15)      \
  FMA_ROW(AO, 6, 2, 16, 17) FMA_ROW(AO, 7, 3, 18, 19) FMA_ROW(AO, 8, 2, 20, 21)      \
  FMA_ROW(AO, 9, 3, 22, 23) FMA_ROW(AO, 10, 2, 24, 25) FMA_ROW(AO, 11, 3, 26, 27)    \
  FMA_ROW(AO, 12, 2, 28, 29) FMA_ROW(AO, 13, 3, 30, 31)
/* Row i of the result (zmm c0, c1) to the stack tile, to C, or added to C
 * (then %[c] steps one row down). */
#define TILE_ROW(i, c0, c1)                                                         \
  "vmovaps %%zmm" #c0 ", 128*" #i "(%[t])\n\t" "vmovaps %%zmm" #c1 ", 128*" #i "+64(%[t])\n\t"
#define STORE_ROW(i, c0, c1)                                                        \
  "vmovups %%zmm" #c0 ", 0(%[c])\n\t" "vmovups %%zmm" #c1 ", 64(%[c])\n\t"            \
  "add %[ldcb], %[c]\n\t"
#define ADD_ROW(i, c0, c1)                                                          \
  "vaddps 0(%[c]), %%zmm" #c0 ", %%zmm" #c0 "\n\t"                                   \
  "vaddps 64(%[c]), %%zmm" #c1 ", %%zmm" #c1 "\n\t" STORE_ROW(i, c0, c1)
#define ROWS(R)                                                                     \
  R(0, 4, 5) R(1, 6, 7) R(2, 8, 9) R(3, 10, 11) R(4, 12, 13) R(5, 14, 15) R(6, 16, 17) \
  R(7, 18, 19) R(8, 20, 21) R(9, 22, 23) R(10, 24, 25) R(11, 26, 27) R(12, 28, 29)   \
  R(13, 30, 31)

/* 14 x 32 tile: 28 accumulators (zmm4-31), 2 B vectors, 2 broadcast
 * registers. The inner loop is written in assembly because GCC's register
 * allocation of the intrinsic version shuffles accumulators around. The
 * tile goes through a small stack buffer, then beta and the edge masks are
 * applied in C. */
AVX512 static void ukr_14x32(int64_t kc, const float *restrict ap, const float *restrict bp,
                             float *restrict c, int64_t ldc, int mr, int nr, float beta) {
  float tile[MR * NR] __attribute__((aligned(64)));
  const float *a = ap, *b = bp;
  int64_t k = kc;
  /* full tiles with beta 0 or 1 go straight from the accumulators to C;
   * edge tiles and other betas through the stack tile (mode 0) */
  float *cp = c;
  const int64_t ldcb = ldc * (int64_t)sizeof(float);
  const int64_t mode = mr == MR && nr == NR ? (beta == 0.0f ? 1 : beta == 1.0f ? 2 : 0) : 0;
  /* C rows are often 4 KiB-aliased (ldc a multiple of 1024): prefetching
   * 14 of them into L1 at once only evicts them again. Fetch this tile and
   * the next one down into L2 instead; their loads at the end hit L2. */
  if (beta != 0.0f)
    for (int i = 0; i < mr; ++i) {
      _mm_prefetch((const char *)(c + i * ldc), PF_C);
      _mm_prefetch((const char *)(c + i * ldc + 16), PF_C);
    }
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch((const char *)(c + (i + MR) * ldc), _MM_HINT_T2);
    _mm_prefetch((const char *)(c + (i + MR) * ldc + 16), _MM_HINT_T2);
  }
  __asm__ volatile(
    "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
    ZERO4(5, 6, 7, 8) ZERO4(9, 10, 11, 12) ZERO4(13, 14, 15, 16) ZERO4(17, 18, 19, 20)
    ZERO4(21, 22, 23, 24) ZERO4(25, 26, 27, 28) ZERO1(29) ZERO1(30) ZERO1(31)
    "cmp $4, %[k4]\n\t"
    "jl 2f\n\t"
    "1:\n\t"
    PF_B(1024) KSTEP(0, 0) KSTEP(56, 128)
    PF_B(1280) KSTEP(112, 256) KSTEP(168, 384)
    "add $224, %[a]\n\t"
    "add $512, %[b]\n\t"
    "sub $4, %[k4]\n\t"
    "cmp $4, %[k4]\n\t"
    "jge 1b\n\t"
    "2:\n\t"
    "test %[k4], %[k4]\n\t"
    "jz 4f\n\t"
    "3:\n\t"
    KSTEP(0, 0)
    "add $56, %[a]\n\t"
    "add $128, %[b]\n\t"
    "dec %[k4]\n\t"
    "jnz 3b\n\t"
    "4:\n\t"
    "cmp $1, %[mode]\n\t"
    "je 5f\n\t"
    "cmp $2, %[mode]\n\t"
    "je 6f\n\t"
    ROWS(TILE_ROW)
    "jmp 9f\n\t"
    "5:\n\t"
    ROWS(STORE_ROW)
    "jmp 9f\n\t"
    "6:\n\t"
    ROWS(ADD_ROW)
    "9:\n\t"
    : [a] "+r"(a), [b] "+r"(b), [k4] "+r"(k), [c] "+r"(cp)
    : [t] "r"(tile), [mode] "r"(mode), [ldcb] "r"(ldcb)
    : "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21","xmm22","xmm23","xmm24","xmm25","xmm26","xmm27","xmm28","xmm29","xmm30","xmm31", "memory", "cc");

  if (mode != 0) return;
  __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
  __m512 vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; ++i) {
    float *ci = c + i * ldc;
    __m512 x0 = _mm512_load_ps(tile + i * NR), x1 = _mm512_load_ps(tile + i * NR + 16);
    if (beta == 0.0f) {
    } else if (beta == 1.0f) {
      x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, ci));
      x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, ci + 16));
    } else {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), x1);
    }
    _mm512_mask_storeu_ps(ci, m0, x0);
    _mm512_mask_storeu_ps(ci + 16, m1, x1);
  }
}

/* In-register 16x16 transpose: r[i] row i -> r[j] column j. */
AVX512 static inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
  __m512 t[16];
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

static inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* ap[k*MR + i] = alpha * op(A)[i0+i][k0+k] */
AVX512 static void pack_a_avx512(const float *A, int64_t lda, bool trans, int64_t i0, int64_t mc,
                                 int64_t k0, int64_t kc, float alpha, float *ap) {
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t p = 0; p < mc; p += MR) {
    int mr = (int)(mc - p < MR ? mc - p : MR);
    if (trans) {
      /* rows of op(A) are columns of A: each k is a contiguous run */
      __mmask16 m = tail_mask(mr);
      const float *s = A + k0 * lda + i0 + p;
      for (int64_t k = 0; k < kc; ++k) {
        __m512 v = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, s + k * lda));
        _mm512_mask_storeu_ps(ap + k * MR, 0x3FFF, v);
      }
    } else {
      const float *s = A + (i0 + p) * lda + k0;
      int64_t k = 0;
      for (; k < kc; k += 16) {
        __mmask16 m = tail_mask(kc - k);
        __m512 r[16];
        _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i) /* 14 strided streams: help the prefetcher */
          if (i < mr) _mm_prefetch((const char *)(s + i * lda + k + 64), _MM_HINT_T0);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i)
          r[i] = i < mr ? _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, s + i * lda + k))
                        : _mm512_setzero_ps();
        transpose16(r);
        int64_t kk = kc - k < 16 ? kc - k : 16;
        _Pragma("GCC unroll 16") for (int q = 0; q < 16; ++q)
          if (q < kk) _mm512_mask_storeu_ps(ap + (k + q) * MR, 0x3FFF, r[q]);
      }
    }
    ap += MR * kc;
  }
}

/* bp[k*NR + j] = op(B)[k0+k][j0+j] */
AVX512 static void pack_b_avx512(const float *B, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                                 int64_t j0, int64_t nc, float *bp) {
  for (int64_t p = 0; p < nc; p += NR) {
    int64_t nr = nc - p < NR ? nc - p : NR;
    if (!trans) {
      __mmask16 m0 = tail_mask(nr), m1 = tail_mask(nr > 16 ? nr - 16 : 0);
      const float *s = B + k0 * ldb + j0 + p;
      if (nr == NR) {
        for (int64_t k = 0; k < kc; ++k) {
          _mm512_store_ps(bp + k * NR, _mm512_loadu_ps(s + k * ldb));
          _mm512_store_ps(bp + k * NR + 16, _mm512_loadu_ps(s + k * ldb + 16));
        }
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          _mm512_store_ps(bp + k * NR, _mm512_maskz_loadu_ps(m0, s + k * ldb));
          _mm512_store_ps(bp + k * NR + 16, _mm512_maskz_loadu_ps(m1, s + k * ldb + 16));
        }
      }
    } else {
      /* columns of op(B) are rows of B: transpose 16x16 blocks */
      for (int h = 0; h < 2; ++h) {
        int64_t jn = nr - 16 * h; /* valid columns in this half */
        const float *s = B + (j0 + p + 16 * h) * ldb + k0;
        for (int64_t k = 0; k < kc; k += 16) {
          __mmask16 m = tail_mask(kc - k);
          __m512 r[16];
          _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
            if (j < jn) _mm_prefetch((const char *)(s + j * ldb + k + 64), _MM_HINT_T0);
          _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
            r[j] = j < jn ? _mm512_maskz_loadu_ps(m, s + j * ldb + k) : _mm512_setzero_ps();
          transpose16(r);
          int64_t kk = kc - k < 16 ? kc - k : 16;
          _Pragma("GCC unroll 16") for (int q = 0; q < 16; ++q)
            if (q < kk) _mm512_store_ps(bp + (k + q) * NR + 16 * h, r[q]);
        }
      }
    }
    bp += NR * kc;
  }
}

/* 16 half-precision values (the @m lanes; others 0) as fp32: F16 with
 * vcvtph2ps, BF16 by widening into the high half of each lane (exact). */
AVX512 static inline __attribute__((always_inline)) __m512 load_half16(const uint16_t *p, __mmask16 m,
                                                                        int dt) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  if (dt == MMP_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

/* pack_a_avx512 from f16/bf16 (conv2d's weights): ap[k*MR + i] = alpha * op(A)[i0+i][k0+k] */
AVX512 static void pack_a_h_avx512(const uint16_t *A, int dt, int64_t lda, bool trans, int64_t i0,
                                   int64_t mc, int64_t k0, int64_t kc, float alpha, float *ap) {
  const __m512 va = _mm512_set1_ps(alpha);
  for (int64_t p = 0; p < mc; p += MR) {
    int mr = (int)(mc - p < MR ? mc - p : MR);
    if (trans) {
      __mmask16 m = tail_mask(mr);
      const uint16_t *s = A + k0 * lda + i0 + p;
      for (int64_t k = 0; k < kc; ++k) {
        __m512 v = _mm512_mul_ps(va, load_half16(s + k * lda, m, dt));
        _mm512_mask_storeu_ps(ap + k * MR, 0x3FFF, v);
      }
    } else {
      const uint16_t *s = A + (i0 + p) * lda + k0;
      for (int64_t k = 0; k < kc; k += 16) {
        __mmask16 m = tail_mask(kc - k);
        __m512 r[16];
        _Pragma("GCC unroll 16") for (int i = 0; i < MR; ++i)
          if (i < mr) _mm_prefetch((const char *)(s + i * lda + k + 128), _MM_HINT_T0);
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i)
          r[i] = i < mr ? _mm512_mul_ps(va, load_half16(s + i * lda + k, m, dt)) : _mm512_setzero_ps();
        transpose16(r);
        int64_t kk = kc - k < 16 ? kc - k : 16;
        _Pragma("GCC unroll 16") for (int q = 0; q < 16; ++q)
          if (q < kk) _mm512_mask_storeu_ps(ap + (k + q) * MR, 0x3FFF, r[q]);
      }
    }
    ap += MR * kc;
  }
}

/* pack_b_avx512 from f16/bf16 (linear's weights, trans): bp[k*NR + j] = op(B)[k0+k][j0+j] */
AVX512 static void pack_b_h_avx512(const uint16_t *B, int dt, int64_t ldb, bool trans, int64_t k0,
                                   int64_t kc, int64_t j0, int64_t nc, float *bp) {
  for (int64_t p = 0; p < nc; p += NR) {
    int64_t nr = nc - p < NR ? nc - p : NR;
    if (!trans) {
      __mmask16 m0 = tail_mask(nr), m1 = tail_mask(nr > 16 ? nr - 16 : 0);
      const uint16_t *s = B + k0 * ldb + j0 + p;
      for (int64_t k = 0; k < kc; ++k) {
        _mm512_store_ps(bp + k * NR, load_half16(s + k * ldb, m0, dt));
        _mm512_store_ps(bp + k * NR + 16, load_half16(s + k * ldb + 16, m1, dt));
      }
    } else {
      for (int h = 0; h < 2; ++h) {
        int64_t jn = nr - 16 * h;
        const uint16_t *s = B + (j0 + p + 16 * h) * ldb + k0;
        for (int64_t k = 0; k < kc; k += 16) {
          __mmask16 m = tail_mask(kc - k);
          __m512 r[16];
          _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
            if (j < jn) _mm_prefetch((const char *)(s + j * ldb + k + 128), _MM_HINT_T0);
          _Pragma("GCC unroll 16") for (int j = 0; j < 16; ++j)
            r[j] = j < jn ? load_half16(s + j * ldb + k, m, dt) : _mm512_setzero_ps();
          transpose16(r);
          int64_t kk = kc - k < 16 ? kc - k : 16;
          _Pragma("GCC unroll 16") for (int q = 0; q < 16; ++q)
            if (q < kk) _mm512_store_ps(bp + (k + q) * NR + 16 * h, r[q]);
        }
      }
    }
    bp += NR * kc;
  }
}

const mmp_gemm_kernel_t mmp_gemm_kernel_avx512 = {
    "avx512-14x32", MR, NR, MMP_AVX512_KC, MMP_AVX512_MC, MMP_AVX512_KC_NARROW, ukr_14x32, pack_a_avx512, pack_b_avx512,
    pack_a_h_avx512, pack_b_h_avx512, NULL};
/* the bf16 compute path without AVX512_BF16 (or with MMPIPE_CPU_ISA=avx512) */
const mmp_gemm_kernel_t mmp_gemm_kernel_avx512_bf16round = {
    "avx512-14x32+bf16-round", MR, NR, MMP_AVX512_KC, MMP_AVX512_MC, MMP_AVX512_KC_NARROW, ukr_14x32, pack_a_avx512,
    pack_b_avx512, pack_a_h_avx512, pack_b_h_avx512, mmp_gemm_round_bf16};

/* The AVX-512-BF16 kernel: the same 14 x 32 tile and loop, over panels of
 * bf16 pairs (see the squeeze member of mmp_gemm_kernel_t): each step
 * broadcasts the pair (a[i][2p], a[i][2p+1]) and vdpbf16ps adds
 * a[i][2p] b[2p][j] + a[i][2p+1] b[2p+1][j] into the fp32 accumulators, two
 * k per instruction. A pair row has the byte size of an fp32 row, so the
 * offsets are those of the fp32 kernel. */
#define AVX512BF16 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,fma")))
#define DP_ROW(AO, i, bc, c0, c1)                                                   \
  "vbroadcastss " #AO "+4*" #i "(%[a]), %%zmm" #bc "\n\t"                            \
  "vdpbf16ps %%zmm0, %%zmm" #bc ", %%zmm" #c0 "\n\t"                                 \
  "vdpbf16ps %%zmm1, %%zmm" #bc ", %%zmm" #c1 "\n\t"
#define KSTEPB(AO, BO)                                                              \
  "vmovaps " #BO "(%[b]), %%zmm0\n\t" "vmovaps " #BO "+64(%[b]), %%zmm1\n\t"          \
  DP_ROW(AO, 0, 2, 4, 5) DP_ROW(AO, 1, 3, 6, 7) DP_ROW(AO, 2, 2, 8, 9)               \
  DP_ROW(AO, 3, 3, 10, 11) DP_ROW(AO, 4, 2, 12, 13) DP_ROW(AO, 5, 3, 14, 15)         \
  DP_ROW(AO, 6, 2, 16, 17) DP_ROW(AO, 7, 3, 18, 19) DP_ROW(AO, 8, 2, 20, 21)         \
  DP_ROW(AO, 9, 3, 22, 23) DP_ROW(AO, 10, 2, 24, 25) DP_ROW(AO, 11, 3, 26, 27)       \
  DP_ROW(AO, 12, 2, 28, 29) DP_ROW(AO, 13, 3, 30, 31)

AVX512BF16 static void ukr_14x32_bf16(int64_t kc, const float *restrict ap, const float *restrict bp,
                             float *restrict c, int64_t ldc, int mr, int nr, float beta) {
  float tile[MR * NR] __attribute__((aligned(64)));
  const float *a = ap, *b = bp;
  int64_t k = (kc + 1) / 2; /* bf16 pairs */
  /* full tiles with beta 0 or 1 go straight from the accumulators to C;
   * edge tiles and other betas through the stack tile (mode 0) */
  float *cp = c;
  const int64_t ldcb = ldc * (int64_t)sizeof(float);
  const int64_t mode = mr == MR && nr == NR ? (beta == 0.0f ? 1 : beta == 1.0f ? 2 : 0) : 0;
  /* C rows are often 4 KiB-aliased (ldc a multiple of 1024): prefetching
   * 14 of them into L1 at once only evicts them again. Fetch this tile and
   * the next one down into L2 instead; their loads at the end hit L2. */
  if (beta != 0.0f)
    for (int i = 0; i < mr; ++i) {
      _mm_prefetch((const char *)(c + i * ldc), PF_C);
      _mm_prefetch((const char *)(c + i * ldc + 16), PF_C);
    }
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch((const char *)(c + (i + MR) * ldc), _MM_HINT_T2);
    _mm_prefetch((const char *)(c + (i + MR) * ldc + 16), _MM_HINT_T2);
  }
  __asm__ volatile(
    "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
    ZERO4(5, 6, 7, 8) ZERO4(9, 10, 11, 12) ZERO4(13, 14, 15, 16) ZERO4(17, 18, 19, 20)
    ZERO4(21, 22, 23, 24) ZERO4(25, 26, 27, 28) ZERO1(29) ZERO1(30) ZERO1(31)
    "cmp $4, %[k4]\n\t"
    "jl 2f\n\t"
    "1:\n\t"
    PF_B(1024) KSTEPB(0, 0) KSTEPB(56, 128)
    PF_B(1280) KSTEPB(112, 256) KSTEPB(168, 384)
    "add $224, %[a]\n\t"
    "add $512, %[b]\n\t"
    "sub $4, %[k4]\n\t"
    "cmp $4, %[k4]\n\t"
    "jge 1b\n\t"
    "2:\n\t"
    "test %[k4], %[k4]\n\t"
    "jz 4f\n\t"
    "3:\n\t"
    KSTEPB(0, 0)
    "add $56, %[a]\n\t"
    "add $128, %[b]\n\t"
    "dec %[k4]\n\t"
    "jnz 3b\n\t"
    "4:\n\t"
    "cmp $1, %[mode]\n\t"
    "je 5f\n\t"
    "cmp $2, %[mode]\n\t"
    "je 6f\n\t"
    ROWS(TILE_ROW)
    "jmp 9f\n\t"
    "5:\n\t"
    ROWS(STORE_ROW)
    "jmp 9f\n\t"
    "6:\n\t"
    ROWS(ADD_ROW)
    "9:\n\t"
    : [a] "+r"(a), [b] "+r"(b), [k4] "+r"(k), [c] "+r"(cp)
    : [t] "r"(tile), [mode] "r"(mode), [ldcb] "r"(ldcb)
    : "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21","xmm22","xmm23","xmm24","xmm25","xmm26","xmm27","xmm28","xmm29","xmm30","xmm31", "memory", "cc");

  if (mode != 0) return;
  __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
  __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
  __m512 vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; ++i) {
    float *ci = c + i * ldc;
    __m512 x0 = _mm512_load_ps(tile + i * NR), x1 = _mm512_load_ps(tile + i * NR + 16);
    if (beta == 0.0f) {
    } else if (beta == 1.0f) {
      x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, ci));
      x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, ci + 16));
    } else {
      x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, ci), x0);
      x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16), x1);
    }
    _mm512_mask_storeu_ps(ci, m0, x0);
    _mm512_mask_storeu_ps(ci + 16, m1, x1);
  }
}

/* fp32 panel rows (2p, 2p+1) -> one row of bf16 pairs, round to nearest
 * even (vcvtneps2bf16), in place: row p is written after rows 2p and 2p+1
 * were read, and never over a row still to be read. */
AVX512BF16 static void squeeze_bf16(float *panel, int64_t kc, int w) {
  for (int64_t p = 0; p < (kc + 1) / 2; ++p) {
    const float *r0 = panel + 2 * p * w, *r1 = r0 + w;
    uint32_t *d = (uint32_t *)panel + p * w;
    for (int j = 0; j < w; j += 16) {
      __mmask16 m = tail_mask(w - j);
      __m512 x0 = _mm512_maskz_loadu_ps(m, r0 + j);
      __m512 x1 = 2 * p + 1 < kc ? _mm512_maskz_loadu_ps(m, r1 + j) : _mm512_setzero_ps();
      __m256bh h0 = _mm512_cvtneps_pbh(x0), h1 = _mm512_cvtneps_pbh(x1);
      __m512i lo = _mm512_cvtepu16_epi32((__m256i)h0), hi = _mm512_cvtepu16_epi32((__m256i)h1);
      _mm512_mask_storeu_epi32(d + j, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

const mmp_gemm_kernel_t mmp_gemm_kernel_avx512_bf16 = {
    "avx512bf16-14x32", MR, NR, MMP_AVX512_KC, MMP_AVX512_MC, MMP_AVX512_KC_NARROW, ukr_14x32_bf16,
    pack_a_avx512, pack_b_avx512, pack_a_h_avx512, pack_b_h_avx512, squeeze_bf16};

/* ---- exp: Cody-Waite range reduction + degree-6 polynomial (Cephes
 * expf coefficients), about 1 ulp; exp(-inf) = 0, overflow -> inf. */
AVX512 static inline __m512 exp512(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.7228391f), lo = _mm512_set1_ps(-103.972084f);
  __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  /* scalef handles the full exponent range, including denormal results */
  __m512 y = _mm512_scalef_ps(p, n);
  /* x > hi -> inf, NaN propagates */
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y,
                           _mm512_set1_ps(__builtin_inff()));
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
  return y;
}

AVX512 void mmp_vexp_avx512(const float *x, float *y, int64_t n);
AVX512 void mmp_vexp_avx512(const float *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp512(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

/* ---- GELU (erf form): x * 0.5 * erfc(-x / sqrt 2). erfc(t) for |t| < 1
 * is 1 - t T(t^2); for |t| >= 1 it is exp(-t^2) / |t| * P(1/t^2) (R for
 * |t| >= 2), reflected as 2 - erfc(|t|) for t < 0. Coefficients: Cephes
 * single-precision erff/erfcf. exp(-t^2) is corrected for the rounding of
 * t^2 (the FMA gives it exactly), which matters in the tail. */
AVX512 static inline __m512 poly(__m512 x, const float *c, int n) {
  __m512 p = _mm512_set1_ps(c[0]);
  for (int i = 1; i < n; ++i) p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(c[i]));
  return p;
}

AVX512 static inline __m512 gelu512(__m512 x) {
  static const float T[7] = {7.853861353153693E-5f,  -8.010193625184903E-4f, 5.188327685732524E-3f,
                             -2.685381193529856E-2f, 1.128358514861418E-1f,  -3.761262582423300E-1f,
                             1.128379165726710E+0f};
  static const float P[9] = {2.326819970068386E-2f,  -1.387039388740657E-1f, 3.687424674597105E-1f,
                             -5.824733027278666E-1f, 6.210004621745983E-1f,  -4.944515323274145E-1f,
                             3.404879937665872E-1f,  -2.741127028184656E-1f, 5.638259427386472E-1f};
  static const float R[8] = {-1.047766399936249E+1f, 1.297719955372516E+1f,  -7.495518717768503E+0f,
                             2.921019019210786E+0f,  -1.015265279202700E+0f, 4.218463358204948E-1f,
                             -2.820767439740514E-1f, 5.641895067754075E-1f};
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(-0.70710678118654752f));
  __m512 at = _mm512_abs_ps(t);
  __m512 h = _mm512_mul_ps(t, t);
  /* |t| < 1 */
  __m512 small = _mm512_fnmadd_ps(t, poly(h, T, 7), one);
  /* |t| >= 1 */
  __m512 lo = _mm512_fmsub_ps(t, t, h); /* t*t - h exactly */
  __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), h));
  e = _mm512_fnmadd_ps(e, lo, e); /* exp(-h - lo) = exp(-h) (1 - lo) */
  __m512 q = _mm512_div_ps(one, at);
  __m512 y = _mm512_mul_ps(q, q);
  __mmask16 mid = _mm512_cmp_ps_mask(at, _mm512_set1_ps(2.0f), _CMP_LT_OQ);
  __m512 pr = _mm512_mask_blend_ps(mid, poly(y, R, 8), poly(y, P, 9));
  __m512 big = _mm512_mul_ps(_mm512_mul_ps(e, q), pr);
  __mmask16 neg = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_LT_OQ);
  big = _mm512_mask_sub_ps(big, neg, _mm512_set1_ps(2.0f), big);
  __mmask16 isbig = _mm512_cmp_ps_mask(at, one, _CMP_GE_OQ);
  __m512 erfc = _mm512_mask_blend_ps(isbig, small, big);
  return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), erfc);
}

AVX512 void mmp_vgelu_avx512(const float *x, float *y, int64_t n);
AVX512 void mmp_vgelu_avx512(const float *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu512(_mm512_loadu_ps(x + i)));
  if (i < n) {
    __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, gelu512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

/* One online-softmax step of attention on a 32-query panel of S^T
 * (kn key rows x 32): m/l are the running max and denominator per query;
 * S becomes P = exp(S - m_new) in place and O^T (dv rows x 32) is rescaled
 * by exp(m_old - m_new). A query with every key so far masked keeps m =
 * -inf and contributes zeros. */
AVX512 void mmp_attn_softmax_avx512(float *s, int64_t kn, float *m, float *l, float *o,
                                    int64_t dv);
AVX512 void mmp_attn_softmax_avx512(float *s, int64_t kn, float *m, float *l, float *o,
                                    int64_t dv) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  __m512 m0 = _mm512_loadu_ps(m), m1 = _mm512_loadu_ps(m + 16);
  __m512 x0 = m0, x1 = m1;
  for (int64_t r = 0; r < kn; ++r) {
    x0 = _mm512_max_ps(x0, _mm512_load_ps(s + r * NR));
    x1 = _mm512_max_ps(x1, _mm512_load_ps(s + r * NR + 16));
  }
  _mm512_storeu_ps(m, x0);
  _mm512_storeu_ps(m + 16, x1);
  /* mu = m_new, or 0 where m_new = -inf (then exp(S - mu) = 0, alpha = 0) */
  __m512 u0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x0, ninf, _CMP_NEQ_OQ), x0);
  __m512 u1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x1, ninf, _CMP_NEQ_OQ), x1);
  __m512 a0 = exp512(_mm512_sub_ps(m0, u0)), a1 = exp512(_mm512_sub_ps(m1, u1));
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  for (int64_t r = 0; r < kn; ++r) {
    __m512 p0 = exp512(_mm512_sub_ps(_mm512_load_ps(s + r * NR), u0));
    __m512 p1 = exp512(_mm512_sub_ps(_mm512_load_ps(s + r * NR + 16), u1));
    _mm512_store_ps(s + r * NR, p0);
    _mm512_store_ps(s + r * NR + 16, p1);
    s0 = _mm512_add_ps(s0, p0);
    s1 = _mm512_add_ps(s1, p1);
  }
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), a0, s0));
  _mm512_storeu_ps(l + 16, _mm512_fmadd_ps(_mm512_loadu_ps(l + 16), a1, s1));
  for (int64_t d = 0; d < dv; ++d) {
    _mm512_store_ps(o + d * NR, _mm512_mul_ps(_mm512_load_ps(o + d * NR), a0));
    _mm512_store_ps(o + d * NR + 16, _mm512_mul_ps(_mm512_load_ps(o + d * NR + 16), a1));
  }
}

/* out[q][d] = O^T[d][q] / l[q] for the nq (<= 32) valid queries of a
 * panel; l = 0 (every key masked) gives 0. When the panel's rows are one
 * contiguous, 64-byte aligned run (ldo == dv, all 32 queries valid) they are
 * transposed into @stage (32 * dv floats) and written with aligned
 * non-temporal stores: no read-for-ownership of the output, no stores split
 * across cache lines (dv = 40 rows start at 32-byte offsets). */
AVX512 void mmp_attn_store_avx512(const float *o, int64_t dv, const float *l, int64_t nq,
                                  float *out, int64_t ldo, float *stage);
AVX512 void mmp_attn_store_avx512(const float *o, int64_t dv, const float *l, int64_t nq,
                                  float *out, int64_t ldo, float *stage) {
  const bool staged = nq == NR && ldo == dv && ((uintptr_t)out & 63) == 0;
  float *dst = staged ? stage : out;
  for (int h = 0; h < 2; ++h) {
    int64_t qv = nq - 16 * h;
    if (qv <= 0) break;
    if (qv > 16) qv = 16;
    __m512 lv = _mm512_loadu_ps(l + 16 * h);
    __mmask16 pos = _mm512_cmp_ps_mask(lv, _mm512_setzero_ps(), _CMP_GT_OQ);
    __m512 inv = _mm512_maskz_div_ps(pos, _mm512_set1_ps(1.0f), lv);
    for (int64_t d0 = 0; d0 < dv; d0 += 16) {
      int64_t dn = dv - d0 < 16 ? dv - d0 : 16;
      __m512 r[16];
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; ++i)
        r[i] = i < dn ? _mm512_mul_ps(_mm512_load_ps(o + (d0 + i) * NR + 16 * h), inv)
                      : _mm512_setzero_ps();
      transpose16(r);
      __mmask16 m = tail_mask(dn);
      _Pragma("GCC unroll 16") for (int q = 0; q < 16; ++q)
        if (q < qv) _mm512_mask_storeu_ps(dst + (16 * h + q) * ldo + d0, m, r[q]);
    }
  }
  if (staged)
    for (int64_t i = 0; i < NR * dv; i += 16) _mm512_stream_ps(out + i, _mm512_load_ps(stage + i));
}

#endif /* MMP_HAVE_X86_DISPATCH */
