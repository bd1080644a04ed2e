/* bench/grad.c - time of each backward op next to its forward, at SD-1.5 UNet sizes (CPU). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/error.h>
#include <mmpipe/grad.h>
#include <mmpipe/rng.h>
#include <mmpipe/tensor.h>

/* Usage: bench/grad [--threads N] [--reps R] [--small]
 * Best of R runs after a warm-up, forward and backward of the same op and
 * shapes; the ratio backward/forward is what a training step pays on top of
 * a forward (PyTorch's is typically 2 for matmul-like ops). --small runs the
 * 32x32 latent sizes only. */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static mmp_backend_t *cpu;
static mmp_rng_t *rng;
static int reps = 3;

static mmp_tensor_t *randn(int nd, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t s[4] = {a, b, c, d};
  return mmp_rng_randn(rng, cpu, nd, s);
}

typedef struct job {
  int kind;
  mmp_tensor_t *x, *w, *b, *g, *q, *k, *v, *out;
} job_t;

enum { CONV, ATTN, GN, LN, LIN };

static int fwd(job_t *j) {
  mmp_tensor_t *y = NULL;
  switch (j->kind) {
  case CONV: y = mmp_conv2d(j->x, j->w, j->b, 1, 1, 1, 1, 1, 1, 1); break;
  case ATTN: y = mmp_attention(j->q, j->k, j->v, NULL, false, 0); break;
  case GN: y = mmp_group_norm_silu(j->x, 32, j->w, j->b, 1e-5); break;
  case LN: y = mmp_layer_norm(j->x, j->w, j->b, 1e-5); break;
  case LIN: y = mmp_linear(j->x, j->w, j->b); break;
  }
  int rc = y ? 0 : -1;
  mmp_tensor_unref(y);
  return rc;
}

static int bwd(job_t *j) {
  mmp_tensor_t *a = NULL, *b = NULL, *c = NULL;
  int rc = -1;
  switch (j->kind) {
  case CONV: rc = mmp_conv2d_backward(j->g, j->x, j->w, 1, 1, 1, 1, 1, 1, 1, &a, &b, &c); break;
  case ATTN: rc = mmp_attention_backward(j->g, j->q, j->k, j->v, j->out, NULL, false, 0, &a, &b, &c); break;
  case GN: rc = mmp_group_norm_silu_backward(j->g, j->x, 32, j->w, j->b, 1e-5, &a, &b, &c); break;
  case LN: rc = mmp_layer_norm_backward(j->g, j->x, j->w, 1e-5, &a, &b, &c); break;
  case LIN: rc = mmp_linear_backward(j->g, j->x, j->w, &a, &b, &c); break;
  }
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_tensor_unref(c);
  return rc;
}

static double best(int (*f)(job_t *), job_t *j) {
  if (f(j) < 0) {
    fprintf(stderr, "failed: %s\n", mmp_error_last());
    exit(1);
  }
  double t = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    f(j);
    double d = now() - t0;
    if (d < t) t = d;
  }
  return t;
}

static void run(const char *name, job_t *j) {
  double tf = best(fwd, j), tb = best(bwd, j);
  printf("%-44s %10.2f %10.2f %7.2f\n", name, tf * 1e3, tb * 1e3, tb / tf);
  fflush(stdout);
  mmp_tensor_t *ts[] = {j->x, j->w, j->b, j->g, j->q, j->k, j->v, j->out};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) mmp_tensor_unref(ts[i]);
}

int main(int argc, char **argv) {
  int threads = 0;
  bool small = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--small")) small = true;
    else {
      fprintf(stderr, "usage: bench/grad [--threads N] [--reps R] [--small]\n");
      return 2;
    }
  }
  mmp_threads_set(threads);
  cpu = mmp_backend_get("cpu");
  rng = mmp_rng_new(1, MMP_RNG_PHILOX);
  printf("threads %d, best of %d\n%-44s %10s %10s %7s\n", mmp_threads_get(), reps, "op (shapes)", "fwd ms", "bwd ms",
         "bwd/fwd");
  int sizes[2] = {32, 64};
  for (int si = 0; si < (small ? 1 : 2); si++) {
    int64_t S = sizes[si];
    char name[96];
    job_t j = {CONV, randn(4, 1, 320, S, S), randn(4, 320, 320, 3, 3), randn(1, 320, 0, 0, 0),
               randn(4, 1, 320, S, S), NULL, NULL, NULL, NULL};
    snprintf(name, sizeof name, "conv2d 320->320 3x3, %lldx%lld", (long long)S, (long long)S);
    run(name, &j);
    j = (job_t){GN, randn(4, 1, 320, S, S), randn(1, 320, 0, 0, 0), randn(1, 320, 0, 0, 0), randn(4, 1, 320, S, S),
                NULL, NULL, NULL, NULL};
    snprintf(name, sizeof name, "group_norm_silu 320 ch, %lldx%lld", (long long)S, (long long)S);
    run(name, &j);
    j = (job_t){LN, randn(2, S * S, 320, 0, 0), randn(1, 320, 0, 0, 0), randn(1, 320, 0, 0, 0),
                randn(2, S * S, 320, 0, 0), NULL, NULL, NULL, NULL};
    snprintf(name, sizeof name, "layer_norm [%lld, 320]", (long long)(S * S));
    run(name, &j);
    j = (job_t){LIN, randn(2, S * S, 320, 0, 0), randn(2, 320, 320, 0, 0), randn(1, 320, 0, 0, 0),
                randn(2, S * S, 320, 0, 0), NULL, NULL, NULL, NULL};
    snprintf(name, sizeof name, "linear [%lld, 320] x 320", (long long)(S * S));
    run(name, &j);
    j = (job_t){ATTN, NULL, NULL, NULL, randn(4, 1, 8, S * S, 40), randn(4, 1, 8, S * S, 40),
                randn(4, 1, 8, S * S, 40), randn(4, 1, 8, S * S, 40), NULL};
    j.out = mmp_attention(j.q, j.k, j.v, NULL, false, 0);
    snprintf(name, sizeof name, "self-attention 8 heads x 40, L %lld", (long long)(S * S));
    run(name, &j);
  }
  mmp_rng_free(rng);
  return 0;
}
