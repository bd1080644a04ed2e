/* bench/retrieval.c - BLIP retrieval at ViT-B/16 384² (model_base_retrieval_coco
 * sizes, fp32, CPU): image embeddings per second (the index), one text
 * query's ITC over 256 stored images + ITM re-ranking of the top
 * candidates (MMP_BENCH_CANDIDATES, default 256, batches of 32), and ITC
 * search over 100k stored 256-d embeddings (matmul + full sort, as the
 * retrieval task ranks). Weights: init_seed in-process, or --weights
 * (a BLIP .pth: weights_prefix "model."). --compare-torch runs
 * bench/torch_retrieval.py (BLIP_Retrieval of salesforce/BLIP) the same way
 * in the same run. doc/performance.md. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

static int cmp_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

static double call(bench_env_t *e, const char *method, const mmp_tensormap_t *in) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)e->c->plugin;
  mmp_tensormap_t *out = mmp_tensormap_new();
  double t0 = bench_now();
  int rc = ops->forward(e->c->self, method, in, out);
  double dt = bench_now() - t0;
  mmp_tensormap_free(out);
  if (rc < 0) {
    fprintf(stderr, "bench/retrieval: %s: %s\n", method, mmp_error_last());
    return -1;
  }
  return dt;
}

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "retrieval", "BLIP retrieval (ViT-B/16, 384x384)");
  static char cfg[4096];
  if (strstr(o.config, "/bench/sd15/")) {
    snprintf(cfg, sizeof cfg, "%s/bench/blip_base/med_config.json", o.srcdir);
    o.config = cfg;
  }
  const char *cand_env = getenv("MMP_BENCH_CANDIDATES");
  int64_t K = cand_env ? atoll(cand_env) : 256;
  if (K < 1 || K > 4096) K = 256;
  bench_env_t e;
  if (bench_open(&o, MMP_KIND_ENCODER, "model", "blip_retrieval",
                 o.weights ? "vit = \"base\"; weights_prefix = \"model.\";" : "vit = \"base\";", "bench/retrieval",
                 &e) < 0)
    return 1;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int rc = 0;
  /* 1. image embeddings: 2 images per call */
  {
    int64_t ps[4] = {2, 3, 384, 384};
    mmp_tensormap_t *in = mmp_tensormap_new();
    mmp_tensormap_set(in, "pixel_values", mmp_rng_randn(g, cpu, 4, ps));
    double tot = 0;
    for (int i = 0; rc == 0 && i < o.warmup + o.repeat; i++) {
      double dt = call(&e, "image", in);
      if (dt < 0) rc = 1;
      else if (i >= o.warmup) tot += dt;
    }
    if (rc == 0)
      printf("%-22s %8.2f images/s  (%.2f s per image, %d threads)\n", "image embeddings", 2.0 * o.repeat / tot,
             tot / (2.0 * o.repeat), o.threads);
    mmp_tensormap_free(in);
  }
  /* 2. one text query: text tower, ITC over 256 images, ITM on the top K */
  if (rc == 0) {
    int64_t is[2] = {1, 35}, fs[2] = {256, 256}, es[3] = {32, 577, 768}, bs[2] = {32, 35};
    mmp_tensormap_t *in = mmp_tensormap_new(), *itm = mmp_tensormap_new();
    mmp_tensormap_set(in, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, is));
    mmp_tensormap_set(in, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, is, 1.0));
    mmp_tensor_t *feats = mmp_rng_randn(g, cpu, 2, fs), *q = mmp_rng_randn(g, cpu, 2, (int64_t[2]){1, 256});
    mmp_tensormap_set(itm, "image_embeds", mmp_rng_randn(g, cpu, 3, es));
    mmp_tensormap_set(itm, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, bs));
    mmp_tensormap_set(itm, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, bs, 1.0));
    double t0 = bench_now(), tt = call(&e, "text", in), ti = 0;
    mmp_tensor_t *s = mmp_matmul(q, feats, false, true);
    mmp_tensor_unref(s);
    for (int64_t b = 0; tt >= 0 && b < K; b += 32) {
      double dt = call(&e, "itm", itm); /* every batch holds 32 pairs; the last is cut below */
      if (dt < 0) {
        rc = 1;
        break;
      }
      ti += dt * (double)(K - b < 32 ? K - b : 32) / 32.0;
    }
    if (tt < 0) rc = 1;
    if (rc == 0)
      printf("%-22s %8.2f s  (text %.3f s, ITM of %lld candidates %.2f s, %.3f s per pair)\n", "text query + ITM",
             tt + ti, tt, (long long)K, ti, ti / (double)K);
    (void)t0;
    mmp_tensor_unref(feats);
    mmp_tensor_unref(q);
    mmp_tensormap_free(in);
    mmp_tensormap_free(itm);
  }
  /* 3. ITC search over 100k stored embeddings */
  if (rc == 0) {
    int64_t fs[2] = {100000, 256}, qs[2] = {1, 256};
    mmp_tensor_t *feats = mmp_rng_randn(g, cpu, 2, fs), *q = mmp_rng_randn(g, cpu, 2, qs);
    float *row = malloc(100000 * sizeof *row);
    double best = 1e30;
    for (int i = 0; i < 5; i++) {
      double t0 = bench_now();
      mmp_tensor_t *s = mmp_matmul(q, feats, false, true);
      mmp_tensor_to_host(s, row, 100000 * sizeof *row);
      qsort(row, 100000, sizeof *row, cmp_desc);
      double dt = bench_now() - t0;
      mmp_tensor_unref(s);
      if (dt < best) best = dt;
    }
    printf("%-22s %8.1f ms  (best of 5: matmul [1, 256] x [100000, 256]^T + full sort)\n", "ITC search 100k",
           best * 1e3);
    free(row);
    mmp_tensor_unref(feats);
    mmp_tensor_unref(q);
  }
  printf("%-22s %8.0f MB\n", "peak RSS", bench_peak_rss_mb());
  mmp_rng_free(g);
  bench_close(&e);
  if (o.compare_torch) {
    const char *pp = getenv("MMP_TORCH_PYTHONPATH");
    char cmd[12000];
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH='%s' LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
             "/usr/bin/python3 '%s/bench/torch_retrieval.py' '%s' %d %lld",
             pp ? pp : "/root/refenv/site", o.threads, o.srcdir, o.config, o.threads, (long long)K);
    printf("-- PyTorch (subprocess) --\n");
    fflush(stdout);
    int trc = system(cmd);
    if (trc != 0) printf("PyTorch comparison failed (exit %d)\n", trc);
  }
  return rc;
}
