/* core/cpu/gemm.h - the packed GEMM engine shared by sgemm, conv2d and attention (internal).
 *
 * GotoBLAS/BLIS structure: operands are copied ("packed") into panels that
 * the register-blocked micro-kernel streams through linearly.
 *   packed A panel (mr rows x kc):  ap[k * mr + i]   (rows past M are 0)
 *   packed B panel (kc x nr cols):  bp[k * nr + j]   (cols past N are 0)
 * A block of mc rows is ceil(mc/mr) consecutive A panels, each mr*kc floats;
 * a block of nc columns is ceil(nc/nr) consecutive B panels, each kc*nr.
 */
#ifndef MMPIPE_CPU_GEMM_H
#define MMPIPE_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/cpu/dispatch.h" /* MMP_HAVE_X86_DISPATCH */
#include "mmpipe/tensor.h"      /* MMP_F32, MMP_F16, MMP_BF16 */

/* C[0:mr, 0:nr] = beta * C + ap . bp (beta == 0: C is not read). The
 * kernel always computes a full MR x NR tile; mr/nr only limit the store. */
typedef void (*mmp_ukr_fn)(int64_t kc, const float *ap, const float *bp,
                           float *c, int64_t ldc, int mr, int nr, float beta);

/* A micro-kernel and the packing routines that produce its layout. */
typedef struct mmp_gemm_kernel {
  const char *name;
  int mr, nr;
  int kc, mc;           /* cache blocking: K block, mc x kc A block in L2 */
  int kc_narrow;        /* (<= kc) K block when the B block has at most 4 panels (0: kc) */
  mmp_ukr_fn ukr;
  /* ap <- alpha * op(A)[i0:i0+mc, k0:k0+kc]; op(A)[i][k] = trans ? A[k*lda+i] : A[i*lda+k] */
  void (*pack_a)(const float *A, int64_t lda, bool trans, int64_t i0, int64_t mc,
                 int64_t k0, int64_t kc, float alpha, float *ap);
  /* bp <- op(B)[k0:k0+kc, j0:j0+nc]; op(B)[k][j] = trans ? B[j*ldb+k] : B[k*ldb+j] */
  void (*pack_b)(const float *B, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                 int64_t j0, int64_t nc, float *bp);
  /* The same from half-precision operands (@dt MMP_F16 or MMP_BF16, the
   * weights of linear and conv2d): converted to fp32 while packing, so the
   * micro-kernel and its accuracy are the fp32 ones and the weights are
   * read from memory at half the bytes. */
  void (*pack_a_h)(const uint16_t *A, int dt, int64_t lda, bool trans, int64_t i0, int64_t mc,
                   int64_t k0, int64_t kc, float alpha, float *ap);
  void (*pack_b_h)(const uint16_t *B, int dt, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                   int64_t j0, int64_t nc, float *bp);
  /* NULL (fp32 products), or the bf16 compute path (compute dtype bf16): run
   * on every packed panel after its packer, rounding both operands to bf16
   * (round to nearest even, as vcvtneps2bf16: an fp32 denormal becomes a
   * signed zero). The AVX-512-BF16 kernel's rewrites the panel of @w values
   * per k (w = mr or nr, kc rows of fp32) in place as ceil(kc/2) rows of w
   * bf16 pairs (k even in the low half, k odd in the high half; a missing
   * last k is 0), the operand layout of vdpbf16ps; panels keep their fp32
   * stride (mr*kc, nr*kc). The fp32 kernels' (mmp_gemm_round_bf16) keeps
   * fp32 rows, rounded, with rows 2p and 2p+1 swapped: the fp32 kernel then
   * adds the products in vdpbf16ps's order (odd k, then even k), each
   * product exact in fp32. */
  void (*squeeze)(float *panel, int64_t kc, int w);
} mmp_gemm_kernel_t;

/* The kernel for the ISA in use (see mmp_cpu_isa()): fp32 arithmetic. */
const mmp_gemm_kernel_t *mmp_gemm_kernel(void);
/* The kernel for a product in compute dtype @cdt: mmp_gemm_kernel() for
 * MMP_F32; for MMP_BF16 (both operands rounded to bf16 while packing, fp32
 * accumulation) the AVX-512-BF16 kernel (vdpbf16ps) when the ISA in use is
 * MMP_CPU_ISA_AVX512_BF16, else the ISA's fp32 kernel with
 * mmp_gemm_round_bf16 as its squeeze: the same roundings and the same order
 * of fp32 additions, so the AVX-512 kernels agree bit for bit (up to
 * vdpbf16ps flushing results below 2^-126 to zero) and the portable one up
 * to its K blocking. */
const mmp_gemm_kernel_t *mmp_gemm_kernel_for(int cdt);
/* The squeeze of the fp32 kernels' bf16 compute path (see the member). */
void mmp_gemm_round_bf16(float *panel, int64_t kc, int w);
extern const mmp_gemm_kernel_t mmp_gemm_kernel_generic;
extern const mmp_gemm_kernel_t mmp_gemm_kernel_generic_bf16round;
#ifdef MMP_HAVE_X86_DISPATCH
extern const mmp_gemm_kernel_t mmp_gemm_kernel_avx512;
extern const mmp_gemm_kernel_t mmp_gemm_kernel_avx512_bf16round;
extern const mmp_gemm_kernel_t mmp_gemm_kernel_avx512_bf16;
#endif

/* C[mc x nc] = beta * C + Ap . Bp over already packed blocks (one thread). */
void mmp_gemm_macro(const mmp_gemm_kernel_t *g, int64_t mc, int64_t nc, int64_t kc,
                    const float *ap, const float *bp, float *c, int64_t ldc, float beta);

/* Single-threaded GEMM of one (sub)problem using caller scratch:
 * bufa >= mc*kc floats, bufb >= kc*roundup(N, nr) floats (g->mc, g->kc). */
void mmp_gemm_serial(const mmp_gemm_kernel_t *g, bool ta, bool tb, int64_t M, int64_t N,
                     int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                     int64_t ldb, float beta, float *C, int64_t ldc, float *bufa, float *bufb);

/* Same, with op(B) produced by a callback (implicit GEMM, e.g. conv2d's
 * im2col done while packing): pack_b(ctx, k0, kc, j0, nc, bp) must write
 * the kernel's B layout (g->nr columns per panel, zero padded). */
typedef void (*mmp_pack_b_cb)(const void *ctx, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                              float *bp);
/* @A is fp32 (@adt MMP_F32) or half precision (MMP_F16, MMP_BF16). */
void mmp_gemm_serial_cb(const mmp_gemm_kernel_t *g, bool ta, int64_t M, int64_t N, int64_t K,
                        float alpha, const void *A, int adt, int64_t lda, mmp_pack_b_cb pack_b,
                        const void *ctx, float beta, float *C, int64_t ldc, float *bufa,
                        float *bufb);

/* The K block mmp_gemm_serial*() use for a K-deep product over N columns:
 * equal blocks of at most kc (kc_narrow for narrow products). */
int64_t mmp_gemm_kblock(const mmp_gemm_kernel_t *g, int64_t K, int64_t N);

/* Same as mmp_gemm_serial_cb with B already packed for every K block:
 * with KC = mmp_gemm_kblock(g, K, Nfull), K block pc (depth kc) of the
 * packed matrix starts at bp + pc * ldbp (ldbp >= roundup(Nfull, nr)) and
 * holds its panels one after another (panel q at q * nr * kc). This
 * product's columns start at column j0 (a multiple of nr) of that matrix.
 * Lets several tasks share one packed B (conv2d's im2col matrix). */
void mmp_gemm_serial_pb(const mmp_gemm_kernel_t *g, bool ta, int64_t M, int64_t N, int64_t K,
                        int64_t KC, float alpha, const void *A, int adt, int64_t lda, const float *bp,
                        int64_t ldbp, int64_t j0, float beta, float *C, int64_t ldc, float *bufa);

/* Vectorised helpers (dispatch on the ISA; y may equal x). */
void mmp_vexp(const float *x, float *y, int64_t n);

/* 64-byte aligned scratch (free with free()). NULL on failure. */
float *mmp_cpu_alloc(int64_t nfloats);

/* Per-thread scratch kept across calls, so that a kernel called again with
 * the same shapes touches no fresh pages (the packing buffers were a large
 * share of a UNet step's page faults). mmp_cpu_scratch() returns the calling
 * thread's buffer @slot of at least @nfloats floats (64-byte aligned,
 * contents undefined; the buffer only grows), or NULL when out of memory.
 * (transfer none): valid until the same thread asks for @slot again.
 * mmp_cpu_scratch_done() after use frees the buffer when it is larger than
 * the cache bound (32 MiB), so one huge call does not pin its memory. */
enum {
  MMP_SCRATCH_A = 0,     /* packed A block (sgemm, conv2d workers) */
  MMP_SCRATCH_B,         /* packed B block */
  MMP_SCRATCH_TILE,      /* conv2d: output tile spanning images */
  MMP_SCRATCH_ATTN_Q,    /* attention workers: Q^T panels */
  MMP_SCRATCH_ATTN_S,    /* scores block */
  MMP_SCRATCH_ATTN_O,    /* O^T accumulator */
  MMP_SCRATCH_ATTN_ML,   /* running max, denominator, staging */
  MMP_SCRATCH_CALLER0,   /* the calling thread, before its workers start: */
  MMP_SCRATCH_CALLER1,   /*   packed K / V^T, conv2d's im2col matrix */
  MMP_SCRATCH_SLOTS
};
float *mmp_cpu_scratch(int slot, int64_t nfloats);
void mmp_cpu_scratch_done(int slot);

#endif
