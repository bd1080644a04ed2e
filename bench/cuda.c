/* bench/cuda.c - milliseconds per op on the CUDA backend at Stable-Diffusion-1.5 sizes, GEMM/attention TFLOP/s vs the fp16 peak.
 *
 *   bench/cuda                 # all cases, 20 timed runs each after 3 warm-ups
 *   MMP_BENCH_ITERS=100 bench/cuda attention
 *
 * An argument selects cases whose name contains it. Without a GPU (or a
 * CUDA build) it prints the reason and exits 77 (skipped). Times are wall
 * clock around ITERS launches followed by one device synchronisation, so
 * they include launch overhead, as a model forward would see it.
 * The whole-UNet step is added once the sd model plugin exists (issue 7).
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/tensor.h>
#ifdef HAVE_CUDA
#include <mmpipe/cuda.h>
#endif

#ifndef HAVE_CUDA
int main(void) {
  printf("skip: no CUDA device: this build has no CUDA backend\n");
  return 77;
}
#else

static mmp_backend_t *gpu;
static double peak_tflops;
static int iters = 20;
static const char *filter;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int sync_gpu(void) { return gpu->ops->synchronize ? gpu->ops->synchronize(gpu) : 0; }

static mmp_tensor_t *rnd(mmp_dtype_t dt, int nd, const int64_t *shape) {
  mmp_tensor_t *h = mmp_tensor_new(mmp_backend_get("cpu"), MMP_F32, nd, shape);
  if (!h) return NULL;
  float *d = mmp_tensor_data(h);
  uint32_t s = 12345;
  for (int64_t i = 0; i < mmp_tensor_numel(h); i++) {
    s = s * 1664525u + 1013904223u;
    d[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 0.5f;
  }
  mmp_tensor_t *g = mmp_to_backend(h, gpu);
  mmp_tensor_unref(h);
  if (!g || dt == MMP_F32) return g;
  mmp_tensor_t *c = mmp_convert(g, dt);
  mmp_tensor_unref(g);
  return c;
}
#define RND(dt, ...) rnd(dt, sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__})

/* One case: op on prepared operands through mmp_backend_compute into a fixed dst. */
typedef struct bcase {
  const char *name, *shape;
  mmp_op_t op;
  mmp_op_params_t p;
  const mmp_tensor_t *src[4];
  int nsrc;
  mmp_tensor_t *dst;
  double flops; /* 0: memory-bound op, no TFLOP/s column */
} bcase_t;

static void run_case(bcase_t *c) {
  if (filter && !strstr(c->name, filter)) return;
  const char *dtn = c->src[0] ? mmp_dtype_name(c->src[0]->dtype) : "?";
  if (!c->dst || !c->src[0]) {
    printf("%-22s %-34s %-5s setup failed: %s\n", c->name, c->shape, dtn, mmp_error_last());
    return;
  }
  for (int i = 0; i < 3; i++)
    if (mmp_backend_compute(gpu, c->op, &c->p, c->src, c->nsrc, c->dst) < 0) {
      printf("%-22s %-34s %-5s failed: %s\n", c->name, c->shape, dtn, mmp_error_last());
      return;
    }
  sync_gpu();
  double t0 = now();
  for (int i = 0; i < iters; i++) mmp_backend_compute(gpu, c->op, &c->p, c->src, c->nsrc, c->dst);
  int rc = sync_gpu();
  double ms = (now() - t0) * 1e3 / iters;
  if (rc < 0) {
    printf("%-22s %-34s %-5s failed: %s\n", c->name, c->shape, dtn, mmp_error_last());
    return;
  }
  printf("%-22s %-34s %-5s %9.3f ms", c->name, c->shape, dtn, ms);
  if (c->flops > 0) {
    double tf = c->flops / (ms * 1e-3) / 1e12;
    printf("  %7.1f TFLOP/s", tf);
    if (peak_tflops > 0) printf("  %5.1f%% of fp16 peak", 100.0 * tf / peak_tflops);
  }
  printf("\n");
}

static void free_case(bcase_t *c) {
  for (int i = 0; i < 4; i++) mmp_tensor_unref((mmp_tensor_t *)c->src[i]);
  mmp_tensor_unref(c->dst);
}

static void bench_gemm(mmp_dtype_t dt, int64_t n) {
  bcase_t c = {.name = "matmul", .op = MMP_OP_MATMUL, .nsrc = 2};
  char sh[64];
  snprintf(sh, sizeof sh, "[%lld,%lld]@[%lld,%lld]", (long long)n, (long long)n, (long long)n, (long long)n);
  c.shape = sh;
  c.src[0] = RND(dt, n, n);
  c.src[1] = RND(dt, n, n);
  c.dst = mmp_tensor_new(gpu, dt, 2, (int64_t[]){n, n});
  c.flops = 2.0 * n * n * n;
  run_case(&c);
  free_case(&c);
}

static void bench_linear(mmp_dtype_t dt, int64_t rows, int64_t in, int64_t out) {
  bcase_t c = {.name = "linear+bias", .op = MMP_OP_LINEAR, .nsrc = 3};
  char sh[64];
  snprintf(sh, sizeof sh, "[%lld,%lld]x[%lld,%lld]^T", (long long)rows, (long long)in, (long long)out, (long long)in);
  c.shape = sh;
  c.src[0] = RND(dt, rows, in);
  c.src[1] = RND(dt, out, in);
  c.src[2] = RND(MMP_F32, out);
  c.dst = mmp_tensor_new(gpu, dt, 2, (int64_t[]){rows, out});
  c.flops = 2.0 * rows * in * out;
  run_case(&c);
  free_case(&c);
}

static void bench_attention(mmp_dtype_t dt, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D) {
  bcase_t c = {.name = Lq == Lk ? "attention self" : "attention cross", .op = MMP_OP_ATTENTION, .nsrc = 3};
  char sh[64];
  snprintf(sh, sizeof sh, "B%lld H%lld Lq%lld Lk%lld D%lld", (long long)B, (long long)H, (long long)Lq, (long long)Lk,
           (long long)D);
  c.shape = sh;
  c.src[0] = RND(dt, B, H, Lq, D);
  c.src[1] = RND(dt, B, H, Lk, D);
  c.src[2] = RND(dt, B, H, Lk, D);
  c.dst = mmp_tensor_new(gpu, dt, 4, (int64_t[]){B, H, Lq, D});
  c.p.f[0] = 1.0 / sqrt((double)D);
  c.flops = 4.0 * B * H * Lq * Lk * D;
  run_case(&c);
  free_case(&c);
}

static void bench_conv(mmp_dtype_t dt, int64_t N, int64_t C, int64_t O, int64_t HW, int k) {
  bcase_t c = {.name = k == 1 ? "conv2d 1x1" : "conv2d 3x3", .op = MMP_OP_CONV2D, .nsrc = 3};
  char sh[64];
  snprintf(sh, sizeof sh, "[%lld,%lld,%lld,%lld] -> %lld", (long long)N, (long long)C, (long long)HW, (long long)HW,
           (long long)O);
  c.shape = sh;
  c.src[0] = RND(dt, N, C, HW, HW);
  c.src[1] = RND(dt, O, C, k, k);
  c.src[2] = RND(MMP_F32, O);
  c.dst = mmp_tensor_new(gpu, dt, 4, (int64_t[]){N, O, HW, HW});
  int pad = k / 2;
  c.p = (mmp_op_params_t){{0}, {1, 1, pad, pad, 1, 1, 1}};
  c.flops = 2.0 * N * O * HW * HW * C * k * k;
  run_case(&c);
  free_case(&c);
}

static void bench_simple(const char *name, mmp_op_t op, const char *shape, mmp_tensor_t *x, mmp_tensor_t *w,
                         mmp_tensor_t *b, mmp_tensor_t *dst, mmp_op_params_t p) {
  bcase_t c = {.name = name, .shape = shape, .op = op, .p = p, .nsrc = w || b ? 3 : 1, .dst = dst};
  c.src[0] = x;
  c.src[1] = w;
  c.src[2] = b;
  run_case(&c);
  free_case(&c);
}

int main(int argc, char **argv) {
  gpu = mmp_backend_get("cuda");
  if (!gpu) {
    printf("skip: %s\n", mmp_error_last());
    return 77;
  }
  if (argc > 1) filter = argv[1];
  const char *it = getenv("MMP_BENCH_ITERS");
  if (it && atoi(it) > 0) iters = atoi(it);
  mmp_cuda_info_t info;
  if (mmp_cuda_info(gpu, &info) == 0) {
    peak_tflops = info.fp16_tflops;
    printf("# %s, cc %d.%d, %d SMs at %.2f GHz, %.1f GiB; fp16 tensor peak (f32 accumulate) %.0f TFLOP/s\n", info.name,
           info.cc_major, info.cc_minor, info.sm_count, info.clock_ghz, info.total_mem / 1073741824.0, peak_tflops);
  }
  printf("# %d timed runs per case; SD-1.5 sizes at a 64x64 latent, batch 2 (classifier-free guidance)\n", iters);
  printf("%-22s %-34s %-5s %12s\n", "op", "shape", "dtype", "time");

  bench_gemm(MMP_F16, 4096);
  bench_gemm(MMP_BF16, 4096);
  bench_gemm(MMP_F32, 4096);
  bench_linear(MMP_F16, 2 * 4096, 320, 2560); /* GEGLU projection, first level */
  bench_linear(MMP_F32, 2 * 4096, 320, 2560);
  bench_attention(MMP_F16, 2, 8, 4096, 4096, 40);
  bench_attention(MMP_F32, 2, 8, 4096, 4096, 40);
  bench_attention(MMP_F16, 2, 8, 4096, 77, 40);
  bench_attention(MMP_F16, 2, 8, 256, 256, 160);
  bench_conv(MMP_F16, 2, 320, 320, 64, 3);
  bench_conv(MMP_F32, 2, 320, 320, 64, 3);
  bench_conv(MMP_F16, 2, 320, 320, 64, 1);
  bench_conv(MMP_F16, 1, 128, 128, 512, 3); /* VAE decoder, last level */

  int64_t x4[4] = {2, 320, 64, 64};
  bench_simple("group_norm", MMP_OP_GROUP_NORM, "[2,320,64,64] 32 groups", RND(MMP_F32, 2, 320, 64, 64),
               RND(MMP_F32, 320), RND(MMP_F32, 320), mmp_tensor_new(gpu, MMP_F32, 4, x4),
               (mmp_op_params_t){{1e-5}, {32}});
  int64_t t3[3] = {2, 4096, 320};
  bench_simple("layer_norm", MMP_OP_LAYER_NORM, "[2,4096,320]", RND(MMP_F32, 2, 4096, 320), RND(MMP_F32, 320),
               RND(MMP_F32, 320), mmp_tensor_new(gpu, MMP_F32, 3, t3), (mmp_op_params_t){{1e-5}, {0}});
  bench_simple("silu", MMP_OP_SILU, "[2,320,64,64]", RND(MMP_F32, 2, 320, 64, 64), NULL, NULL,
               mmp_tensor_new(gpu, MMP_F32, 4, x4), (mmp_op_params_t){{0}, {0}});
  int64_t sm[3] = {16, 4096, 77};
  bench_simple("softmax", MMP_OP_SOFTMAX, "[16,4096,77] last dim", RND(MMP_F32, 16, 4096, 77), NULL, NULL,
               mmp_tensor_new(gpu, MMP_F32, 3, sm), (mmp_op_params_t){{0}, {2}});
  int64_t gg[2] = {2 * 4096, 1280};
  bench_simple("geglu", MMP_OP_GEGLU, "[8192,2560] -> [8192,1280]", RND(MMP_F32, 2 * 4096, 2560), NULL, NULL,
               mmp_tensor_new(gpu, MMP_F32, 2, gg), (mmp_op_params_t){{0}, {0}});
  {
    bcase_t c = {.name = "add", .shape = "[2,320,64,64] + same", .op = MMP_OP_ADD, .nsrc = 2};
    c.src[0] = RND(MMP_F32, 2, 320, 64, 64);
    c.src[1] = RND(MMP_F32, 2, 320, 64, 64);
    c.dst = mmp_tensor_new(gpu, MMP_F32, 4, x4);
    run_case(&c);
    free_case(&c);
  }
  {
    bcase_t c = {.name = "convert f32->f16", .shape = "[2,320,64,64]", .op = MMP_OP_COPY, .nsrc = 1};
    c.src[0] = RND(MMP_F32, 2, 320, 64, 64);
    c.dst = mmp_tensor_new(gpu, MMP_F16, 4, x4);
    run_case(&c);
    free_case(&c);
  }
  if (!filter || strstr("unet", filter))
    printf("%-22s %-34s %-5s %s\n", "unet step", "SD-1.5, 64x64 latent, batch 2", "f16",
           "not yet: needs the sd model plugin");
  mmp_pool_stats_t st;
  mmp_backend_pool_stats(gpu, &st);
  printf("# arena: %llu cudaMalloc, %llu requests, %.1f MiB cached\n", (unsigned long long)st.os_allocs,
         (unsigned long long)st.requests, st.bytes_cached / 1048576.0);
  return 0;
}
#endif
