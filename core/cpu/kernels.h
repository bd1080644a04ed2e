/* core/cpu/kernels.h - the CPU compute kernels behind the CPU backend (internal).
 *
 * Raw-pointer, fp32, contiguous (row-major) kernels. They know nothing of
 * mmp_tensor_t: core/backend_cpu.c checks shapes and dtypes, makes operands
 * contiguous and calls these. Every kernel is multi-threaded over the core
 * pool (core/cpu/threadpool.h) and returns 0 or a negative MMP_E* code.
 */
#ifndef MMPIPE_CPU_KERNELS_H
#define MMPIPE_CPU_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- thread pool ---- */
/* Set the number of worker threads (also tells OpenBLAS). 0 = MMPIPE_THREADS
 * env or online cores. */
void mmp_cpu_set_threads(int n);
int mmp_cpu_threads(void);
/* Run fn(i, user) for i in [0, n) over the pool, blocking until done.
 * Nested calls from inside a task run serially. */
void mmp_cpu_parallel_for(int64_t n, void (*fn)(int64_t i, void *user), void *user);

/* ---- instruction set and BLAS selection (added by the kernels work) ----
 * The kernels pick the best code path for the CPU at run time. Tests and
 * benchmarks can narrow the choice: MMPIPE_CPU_ISA=generic (the portable
 * path) or MMPIPE_CPU_ISA=avx512 (AVX-512 without the BF16 dot products) in
 * the environment, or mmp_cpu_set_isa(). The ISA only selects kernels: what
 * a product computes is set per call by its compute dtype (mmp_cpu_gemm's
 * @cdt; for layers, the weight's, mmp_tensor_set_compute_dtype()), and the
 * bf16 compute dtype rounds the same way on every path (core/cpu/gemm.h,
 * mmp_gemm_kernel_for). Both return the ISA in effect (never one the CPU
 * lacks, never above the one asked for). */
enum { MMP_CPU_ISA_AUTO = -1, MMP_CPU_ISA_GENERIC = 0, MMP_CPU_ISA_AVX512 = 1, MMP_CPU_ISA_AVX512_BF16 = 2 };
int mmp_cpu_set_isa(int isa);
int mmp_cpu_isa(void);
/* sgemm through OpenBLAS: 1 always (when built with it), 0 never, -1 auto
 * (env MMPIPE_CPU_BLAS=openblas|builtin, else OpenBLAS only where the
 * built-in AVX-512 kernel is not available). Returns the mode in effect
 * (0 never, 1 always, 2 auto). */
int mmp_cpu_set_openblas(int use);

/* ---- GEMM ----
 * C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] for b < batch.
 * op(A) is M x K, op(B) is K x N; lda/ldb/ldc are row strides; stride_a/b/c
 * are batch strides in elements (0 broadcasts). */
int mmp_cpu_sgemm(int64_t batch, bool trans_a, bool trans_b, int64_t M,
                  int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, int64_t stride_a, const float *B, int64_t ldb,
                  int64_t stride_b, float beta, float *C, int64_t ldc,
                  int64_t stride_c);

/* The same with operands in any float storage: @adt / @bdt are MMP_F32,
 * MMP_F16 or MMP_BF16 (mmp_dtype_t values) and A / B point at elements of
 * that type. Half-precision operands (weights) are converted to fp32 while
 * their panels are packed. @cdt is the compute dtype: MMP_F32 (fp32
 * products and sums), or MMP_BF16: both operands rounded to bf16 (nearest
 * even) while packing, the products (exact in fp32) summed in fp32; the
 * vdpbf16ps kernel where the CPU has AVX512_BF16, the same roundings on
 * the other paths (core/cpu/gemm.h). MMP_EDTYPE for other dtypes. */
int mmp_cpu_gemm(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const void *A, int adt, int64_t lda, int64_t stride_a, const void *B, int bdt, int64_t ldb,
                 int64_t stride_b, float beta, float *C, int64_t ldc, int64_t stride_c, int cdt);

/* @n half-precision values (@dt MMP_F16 or MMP_BF16) at @s as fp32 at @d,
 * exactly (a NaN stays a NaN). @path: MMP_CPU_HALF_BEST, or for tests one
 * of the others, which the CPU must have (AVX-512: vcvtph2ps 16 wide;
 * F16C: 8 wide (bf16 interleaved above zero bits); scalar: one at a time).
 * The portable GEMM packers convert runs with it. Returns the path used,
 * MMP_EDTYPE for another dtype, MMP_EINVAL for a path the CPU lacks. */
enum { MMP_CPU_HALF_BEST = -1, MMP_CPU_HALF_SCALAR = 0, MMP_CPU_HALF_F16C = 1, MMP_CPU_HALF_AVX512 = 2 };
int mmp_cpu_half_to_f32(const uint16_t *s, int dt, int64_t n, float *d, int path);
/* The path MMP_CPU_HALF_BEST means (the best the CPU has unless narrowed):
 * mmp_cpu_set_half_path() narrows it (tests: each conversion under the
 * portable packers) and returns the path in effect, never one the CPU
 * lacks; MMP_CPU_HALF_BEST restores the default. */
int mmp_cpu_set_half_path(int path);
int mmp_cpu_half_path(void);

/* ---- conv2d ---- x[N,C,H,W], w[O,C/groups,KH,KW], bias[O] or NULL,
 * y[N,O,OH,OW] with OH = (H + 2ph - dh*(KH-1) - 1)/sh + 1. */
int mmp_cpu_conv2d(const float *x, int64_t N, int64_t C, int64_t H, int64_t W,
                   const float *w, int64_t O, int64_t KH, int64_t KW,
                   const float *bias, int sh, int sw, int ph, int pw, int dh,
                   int dw, int groups, float *y);
/* The same with weights @w in @wdt storage (MMP_F32, MMP_F16, MMP_BF16)
 * and the products in compute dtype @cdt (MMP_F32 or MMP_BF16, as
 * mmp_cpu_gemm's). */
int mmp_cpu_conv2d_w(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const void *w, int wdt,
                     int64_t O, int64_t KH, int64_t KW, const float *bias, int sh, int sw, int ph, int pw,
                     int dh, int dw, int groups, float *y, int cdt);
/* The same, then the activation @act on y: -1 (none) or MMP_CPU_ACT_RELU
 * (torch.relu; the enum below), applied to each output tile as it is
 * finished. */
int mmp_cpu_conv2d_act(const float *x, int64_t N, int64_t C, int64_t H, int64_t W, const void *w, int wdt,
                       int64_t O, int64_t KH, int64_t KW, const float *bias, int sh, int sw, int ph, int pw,
                       int dh, int dw, int groups, int act, float *y, int cdt);

/* ---- normalisation ---- */
/* x viewed as [N, C, S] (S = spatial size); groups divide C. */
int mmp_cpu_group_norm(const float *x, int64_t N, int64_t C, int64_t S,
                       int groups, const float *gamma, const float *beta,
                       float eps, float *y);
/* Same, then y = silu(y) (silu false: exactly mmp_cpu_group_norm). */
int mmp_cpu_group_norm_act(const float *x, int64_t N, int64_t C, int64_t S, int groups,
                           const float *gamma, const float *beta, float eps, bool silu, float *y);
/* x viewed as [rows, D]; gamma/beta [D] or NULL. */
int mmp_cpu_layer_norm(const float *x, int64_t rows, int64_t D,
                       const float *gamma, const float *beta, float eps,
                       float *y);
/* softmax over the last dim of [rows, D]. */
int mmp_cpu_softmax(const float *x, int64_t rows, int64_t D, float *y);
/* Average (is_max false) or max pooling of @planes [H, W] planes into
 * [OH, OW] ones: window k, stride s, padding p (at most k/2); the average
 * divides by k*k, or with exclude_pad by the in-image count. @scratch holds
 * mmp_cpu_pool2d_scratch(H, W, OW) floats. Serial (the caller splits planes). */
int64_t mmp_cpu_pool2d_scratch(int64_t H, int64_t W, int64_t OW);
void mmp_cpu_pool2d(const float *x, float *y, int64_t planes, int64_t H, int64_t W, int64_t OH, int64_t OW, int k,
                    int s, int p, bool is_max, bool exclude_pad, float *scratch);

/* ---- attention ----
 * q[B,H,Lq,D], k[B,H,Lk,D], v[B,H,Lk,Dv] contiguous; out[B,H,Lq,Dv].
 * key_mask: NULL or uint8 [B, Lk], nonzero = do not attend. causal masks
 * key j > query i. Rows with every key masked give 0 (documented choice).
 * Online softmax over key blocks: memory O(Lq*Dv + block), never Lq x Lk
 * for all heads at once. */
int mmp_cpu_attention(const float *q, const float *k, const float *v,
                      int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                      int64_t Dv, const uint8_t *key_mask, bool causal,
                      float scale, float *out);

/* ---- activations (n elements, y may equal x) ---- */
void mmp_cpu_silu(const float *x, float *y, int64_t n);
void mmp_cpu_gelu(const float *x, float *y, int64_t n);       /* erf */
void mmp_cpu_gelu_tanh(const float *x, float *y, int64_t n);
void mmp_cpu_quick_gelu(const float *x, float *y, int64_t n);
/* x[rows, 2D] -> y[rows, D] = x[:, :D] * gelu(x[:, D:]); y must not overlap x. */
void mmp_cpu_geglu(const float *x, float *y, int64_t rows, int64_t D);

/* ---- backward kernels and the optimizer update (core/cpu/backward.c) ----
 * Gradients of the forward kernels above; same layouts. See
 * doc/training.md for the formulas and include/mmpipe/grad.h for the ops. */
enum {
  MMP_CPU_ACT_SILU = 0,
  MMP_CPU_ACT_GELU,       /* erf form */
  MMP_CPU_ACT_GELU_TANH,
  MMP_CPU_ACT_QUICK_GELU,
  MMP_CPU_ACT_SIGMOID,
  MMP_CPU_ACT_TANH,
  MMP_CPU_ACT_RELU,
  MMP_CPU_ACT_COUNT
};
/* dx = g * act'(x), n elements. */
int mmp_cpu_act_backward(int act, const float *x, const float *g, float *dx, int64_t n);
/* x[rows, 2D] (forward input), g[rows, D] -> dx[rows, 2D]. */
void mmp_cpu_geglu_backward(const float *x, const float *g, float *dx, int64_t rows, int64_t D);
/* dx of layer_norm over [rows, D]; gamma [D] or NULL (statistics recomputed). */
int mmp_cpu_layer_norm_backward(const float *x, const float *g, const float *gamma, int64_t rows,
                                int64_t D, float eps, float *dx);
/* dx of group_norm over x[N, C, S]; gamma [C] or NULL. */
int mmp_cpu_group_norm_backward(const float *x, const float *g, const float *gamma, int64_t N,
                                int64_t C, int64_t S, int groups, float eps, float *dx);
/* dtable[V, D] = sum of g rows per id (zeroed first; rows of padding_idx,
 * when >= 0, stay 0). ids out of [0, V): MMP_EINVAL before any write. */
int mmp_cpu_embedding_backward(const void *ids, bool ids_i64, int64_t n, const float *g, int64_t V,
                               int64_t D, int64_t padding_idx, float *dtable);
/* conv2d of x[N,C,H,W] with w[O,C/groups,KH,KW] -> g[N,O,OH,OW]:
 * dx[N,C,H,W] and dw[O,C/groups,KH,KW] (column matrix + sgemm). */
int mmp_cpu_conv2d_backward_input(const float *g, const float *w, int64_t N, int64_t C, int64_t H,
                                  int64_t W, int64_t O, int64_t KH, int64_t KW, int sh, int sw,
                                  int ph, int pw, int dh, int dw, int groups, float *dx);
int mmp_cpu_conv2d_backward_weight(const float *x, const float *g, int64_t N, int64_t C, int64_t H,
                                   int64_t W, int64_t O, int64_t KH, int64_t KW, int sh, int sw,
                                   int ph, int pw, int dh, int dw, int groups, float *dw_out);
/* Gradients of mmp_cpu_attention given its output @out and the output's
 * gradient @gout; score blocks are recomputed (memory O(block) per
 * thread). dq/dk/dv take q/k/v's shapes. */
int mmp_cpu_attention_backward(const float *q, const float *k, const float *v, const float *out,
                               const float *gout, int64_t B, int64_t H, int64_t Lq, int64_t Lk,
                               int64_t D, int64_t Dv, const uint8_t *key_mask, bool causal,
                               float scale, float *dq, float *dk, float *dv);
/* One AdamW update in place (torch 1.13 single-tensor order of operations):
 * p *= decay; m = m*b1 + (1-b1)*g; v = v*b2 + (1-b2)*g*g;
 * p += -step_size * m / (sqrt(v) / bc2_sqrt + eps). */
void mmp_cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float decay, double beta1,
                   double beta2, float step_size, float bc2_sqrt, float eps);

#endif
