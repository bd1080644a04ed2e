/* bench/fid.c - FID evaluation speed: Inception features per second for the 64x64 (AR-LDM) protocol and the time of
 * the statistics and the Frechet distance for 2048-d features, beside PyTorch + scipy (bench/torch_fid.py).
 *
 *   bench/fid [--threads N] [--weights FULL.safetensors] [--batch B] [--iters K] [--dim D] [--compare-torch] [--schur]
 *
 * The Schur method (minutes at 2048-d) runs for --dim <= 1024 or with --schur.
 *
 * Full-size random weights: python3 bench/torch_fid.py weights /tmp/inception_random.safetensors
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/frechet.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/rng.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Statistics of two 2d-row sets and the distance by each method (Schur only
 * when @schur: minutes at 2048-d); wall and process CPU seconds. */
static int bench_distance(int64_t d, int64_t n, bool schur) {
  mmp_rng_t *g = mmp_rng_new(7, MMP_RNG_PHILOX);
  int64_t s2[2] = {n, d};
  mmp_tensor_t *a = mmp_rng_randn(g, mmp_backend_get("cpu"), 2, s2), *b = mmp_rng_randn(g, mmp_backend_get("cpu"), 2, s2);
  float *fa = mmp_tensor_data(a), *fb = mmp_tensor_data(b);
  for (int64_t i = 0; i < n * d; i++) fb[i] = 1.1f * fb[i] + 0.05f; /* a shifted, scaled second set */
  double *mu1 = malloc((size_t)d * 8), *mu2 = malloc((size_t)d * 8);
  double *s1 = malloc((size_t)(d * d) * 8), *sg2 = malloc((size_t)(d * d) * 8);
  double t0 = now(), c0 = cpu_now();
  int rc = mmp_feature_stats(fa, n, d, mu1, s1) | mmp_feature_stats(fb, n, d, mu2, sg2);
  printf("stats: 2 x %lld features of %lld-d: %.3f s (CPU %.3f s)\n", (long long)n, (long long)d, now() - t0,
         cpu_now() - c0);
  static const mmp_sqrtm_method_t methods[3] = {MMP_SQRTM_AUTO, MMP_SQRTM_EIGEN, MMP_SQRTM_SCHUR};
  static const char *const names[3] = {"auto (the default)", "eigen", "schur (scipy's sqrtm)"};
  double fids[3] = {0};
  for (int m = 0; m < (schur ? 3 : 2) && rc == 0; m++) {
    mmp_frechet_info_t info;
    t0 = now();
    c0 = cpu_now();
    rc = mmp_frechet_distance_method(mu1, s1, mu2, sg2, d, methods[m], &fids[m], &info);
    printf("distance (%lld-d, %s): %.3f s (CPU %.3f s)  FID %.9f, rel diff to auto %.2g\n", (long long)d, names[m],
           now() - t0, cpu_now() - c0, fids[m], m ? fabs(fids[m] - fids[0]) / fabs(fids[0]) : 0.0);
    fflush(stdout);
  }
  if (rc) fprintf(stderr, "bench/fid: %s\n", mmp_error_last());
  fflush(stdout);
  free(mu1);
  free(mu2);
  free(s1);
  free(sg2);
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_rng_free(g);
  return rc ? 1 : 0;
}

static int bench_features(const char *weights, int batch, int iters) {
  char text[8192];
  snprintf(text, sizeof text, "encoder = { name = \"inception_fid\"; weights = \"%s\"; };", weights);
  mmp_config_t *cfg = mmp_config_parse(text, "bench");
  mmp_registry_t *reg = mmp_registry_new();
  mmp_registry_add_dir(reg, "plugins/encoders/.libs");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  mmp_component_t *c = ctx ? mmp_component_create(ctx, MMP_KIND_ENCODER, "encoder") : NULL;
  if (!c) {
    fprintf(stderr, "bench/fid: %s\n", mmp_error_last());
    return 1;
  }
  mmp_rng_t *g = mmp_rng_new(1, MMP_RNG_PHILOX);
  int64_t s4[4] = {batch, 3, 64, 64};
  mmp_tensor_t *x = mmp_rng_rand(g, mmp_backend_get("cpu"), 4, s4);
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", x);
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  int rc = 0;
  double best = 1e30, best_cpu = 1e30;
  for (int it = 0; it <= iters && rc == 0; it++) { /* the first pass warms the pools */
    mmp_tensormap_t *out = mmp_tensormap_new();
    double t0 = now(), c0 = cpu_now();
    rc = ops->forward(c->self, "encode", in, out);
    double t = now() - t0, ct = cpu_now() - c0;
    if (it > 0 && t < best) best = t;
    if (it > 0 && ct < best_cpu) best_cpu = ct;
    mmp_tensormap_free(out);
  }
  if (rc) fprintf(stderr, "bench/fid: %s\n", mmp_error_last());
  else
    printf("features (64x64 inputs -> Inception at 299, batch %d): %.3f s per batch, %.2f images/s; "
           "CPU %.3f s per batch, %.2f images per CPU-s\n",
           batch, best, batch / best, best_cpu, batch / best_cpu);
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return rc ? 1 : 0;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"threads", required_argument, NULL, 't'}, {"weights", required_argument, NULL, 'w'},
                                       {"batch", required_argument, NULL, 'b'},   {"iters", required_argument, NULL, 'i'},
                                       {"dim", required_argument, NULL, 'd'},     {"compare-torch", no_argument, NULL, 'c'},
                                       {"schur", no_argument, NULL, 's'},
                                       {NULL, 0, NULL, 0}};
  int threads = 2, batch = 10, iters = 2, dim = 2048, torch = 0, schur = 0, c;
  const char *weights = NULL;
  while ((c = getopt_long(argc, argv, "t:w:b:i:d:cs", opts, NULL)) != -1) {
    switch (c) {
    case 't': threads = atoi(optarg); break;
    case 'w': weights = optarg; break;
    case 'b': batch = atoi(optarg); break;
    case 'i': iters = atoi(optarg); break;
    case 'd': dim = atoi(optarg); break;
    case 'c': torch = 1; break;
    case 's': schur = 1; break;
    default: fprintf(stderr, "usage: bench/fid [--threads N] [--weights FILE] [--batch B] [--iters K] [--dim D] [--compare-torch] [--schur]\n"); return 2;
    }
  }
  if (batch < 1 || iters < 1 || dim < 2) return 2;
  mmp_threads_set(threads);
  printf("bench/fid: %d threads\n", threads);
  fflush(stdout);
  int rc = bench_distance(dim, 2 * (int64_t)dim, schur || dim <= 1024);
  if (weights) rc |= bench_features(weights, batch, iters);
  if (torch) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/torch_fid.py time %d %d %d %s", threads, batch, dim,
             weights ? weights : "-");
    fflush(stdout);
    rc |= system(cmd) != 0;
  }
  return rc;
}
