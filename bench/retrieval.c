/* bench/retrieval.c - BLIP retrieval at ViT-B/16 384² (model_base_retrieval_coco
 * sizes, fp32, CPU): image embeddings per second (the index); one image
 * query's ITM re-ranking of the top candidates (MMP_BENCH_CANDIDATES,
 * default 256, batches of 32) against the image's cross-attention keys and
 * values computed once (cross_kv, as the retrieval task runs image -> text);
 * one text query's ITC over 256 stored images + ITM of its candidates
 * (each pair with its own image tokens, text -> image); and ITC search over
 * 100k stored 256-d embeddings as the retrieval task ranks (matmul + the
 * bounded-heap top k of plugins/common/topk.c, k = the candidates). Every
 * measure runs --warmup untimed passes, then the mean of --repeat.
 * Weights: init_seed in-process, or --weights (a BLIP .pth: weights_prefix
 * "model."). --compare-torch runs bench/torch_retrieval.py (BLIP_Retrieval
 * of salesforce/BLIP) the same way in the same run. doc/performance.md. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"
#include "plugins/common/topk.h"

/* Seconds of one forward; its outputs into @out (nullable: dropped). */
static double call_out(bench_env_t *e, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)e->c->plugin;
  mmp_tensormap_t *own = out ? NULL : mmp_tensormap_new();
  double t0 = bench_now();
  int rc = ops->forward(e->c->self, method, in, out ? out : own);
  double dt = bench_now() - t0;
  mmp_tensormap_free(own);
  if (rc < 0) {
    fprintf(stderr, "bench/retrieval: %s: %s\n", method, mmp_error_last());
    return -1;
  }
  return dt;
}

static double call(bench_env_t *e, const char *method, const mmp_tensormap_t *in) {
  return call_out(e, method, in, NULL);
}

/* One image query's ITM: the image's keys and values once, then the K
 * candidate captions in batches of 32 against them. Seconds, or -1. */
static double image_query_itm(bench_env_t *e, mmp_tensor_t *img, mmp_tensor_t *ids, mmp_tensor_t *am, int64_t K,
                              double *t_kv) {
  mmp_tensormap_t *in = mmp_tensormap_new(), *kv = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_tensor_ref(img));
  double t = call_out(e, "cross_kv", in, kv);
  mmp_tensormap_free(in);
  *t_kv = t;
  for (int64_t b = 0; t >= 0 && b < K; b += 32) {
    int64_t nb = K - b < 32 ? K - b : 32;
    in = mmp_tensormap_new();
    for (size_t i = 0; i < mmp_tensormap_size(kv); i++)
      mmp_tensormap_set(in, mmp_tensormap_name(kv, i), mmp_tensor_ref(mmp_tensormap_at(kv, i)));
    mmp_tensormap_set(in, "input_ids", mmp_slice(ids, 0, 0, nb, 1));
    mmp_tensormap_set(in, "attention_mask", mmp_slice(am, 0, 0, nb, 1));
    double dt = call(e, "itm", in);
    mmp_tensormap_free(in);
    t = dt < 0 ? -1 : t + dt;
  }
  mmp_tensormap_free(kv);
  return t;
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
  /* 2. one image query: ITM of its top K captions with its keys and values cached */
  if (rc == 0) {
    int64_t es[3] = {1, 577, 768}, bs[2] = {32, 35};
    mmp_tensor_t *img = mmp_rng_randn(g, cpu, 3, es), *ids = mmp_rng_randint(g, cpu, 0, 30522, 2, bs),
                 *am = mmp_tensor_full(cpu, MMP_I64, 2, bs, 1.0);
    double tot = 0, tkv = 0;
    for (int i = 0; rc == 0 && i < o.warmup + o.repeat; i++) {
      double kv, dt = image_query_itm(&e, img, ids, am, K, &kv);
      if (dt < 0) rc = 1;
      else if (i >= o.warmup) tot += dt, tkv += kv;
    }
    tot /= o.repeat, tkv /= o.repeat;
    if (rc == 0)
      printf("%-22s %8.2f s  (ITM of %lld candidates against one image: its K/V %.3f s once, %.4f s per pair)\n",
             "image query ITM", tot, (long long)K, tkv, tot / (double)K);
    mmp_tensor_unref(img);
    mmp_tensor_unref(ids);
    mmp_tensor_unref(am);
  }
  /* 3. one text query: text tower, ITC over 256 images, ITM on the top K
   * (every pair its own image tokens) */
  if (rc == 0) {
    int64_t is[2] = {1, 35}, fs[2] = {256, 256}, es[3] = {32, 577, 768}, bs[2] = {32, 35};
    mmp_tensormap_t *in = mmp_tensormap_new(), *itm = mmp_tensormap_new();
    mmp_tensormap_set(in, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, is));
    mmp_tensormap_set(in, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, is, 1.0));
    mmp_tensor_t *feats = mmp_rng_randn(g, cpu, 2, fs), *q = mmp_rng_randn(g, cpu, 2, (int64_t[2]){1, 256});
    mmp_tensormap_set(itm, "image_embeds", mmp_rng_randn(g, cpu, 3, es));
    mmp_tensormap_set(itm, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, bs));
    mmp_tensormap_set(itm, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, bs, 1.0));
    double tt = 0, ti = 0;
    for (int i = 0; rc == 0 && i < o.warmup + o.repeat; i++) {
      double t0 = bench_now(), dtt = call(&e, "text", in), dti = 0;
      mmp_tensor_t *s = dtt >= 0 ? mmp_matmul(q, feats, false, true) : NULL;
      mmp_tensor_unref(s);
      dtt = dtt >= 0 ? bench_now() - t0 : -1;
      for (int64_t b = 0; dtt >= 0 && b < K; b += 32) {
        int64_t nb = K - b < 32 ? K - b : 32;
        mmp_tensormap_t *part = mmp_tensormap_new();
        for (size_t j = 0; j < mmp_tensormap_size(itm); j++)
          mmp_tensormap_set(part, mmp_tensormap_name(itm, j), mmp_slice(mmp_tensormap_at(itm, j), 0, 0, nb, 1));
        double dt = call(&e, "itm", part);
        mmp_tensormap_free(part);
        if (dt < 0) {
          dtt = -1;
          break;
        }
        dti += dt;
      }
      if (dtt < 0) rc = 1;
      else if (i >= o.warmup) tt += dtt, ti += dti;
    }
    tt /= o.repeat, ti /= o.repeat;
    if (rc == 0)
      printf("%-22s %8.2f s  (text + ITC %.3f s, ITM of %lld candidates %.2f s, %.3f s per pair)\n",
             "text query + ITM", tt + ti, tt, (long long)K, ti, ti / (double)K);
    mmp_tensor_unref(feats);
    mmp_tensor_unref(q);
    mmp_tensormap_free(in);
    mmp_tensormap_free(itm);
  }
  /* 4. ITC search over 100k stored embeddings, ranked as the task does */
  if (rc == 0) {
    int64_t fs[2] = {100000, 256}, qs[2] = {1, 256};
    mmp_tensor_t *feats = mmp_rng_randn(g, cpu, 2, fs), *q = mmp_rng_randn(g, cpu, 2, qs);
    float *row = malloc(100000 * sizeof *row);
    int n = o.repeat > 5 ? o.repeat : 5;
    double best = 1e30, sum = 0;
    for (int i = 0; rc == 0 && i < o.warmup + n; i++) {
      double t0 = bench_now();
      mmp_tensor_t *s = mmp_matmul(q, feats, false, true);
      sd_iv_t *top = s && mmp_tensor_to_host(s, row, 100000 * sizeof *row) == 0 ? sd_top_desc(row, 100000, 1, K)
                                                                               : NULL;
      double dt = bench_now() - t0;
      if (!top) {
        fprintf(stderr, "bench/retrieval: ITC search: %s\n", mmp_error_last());
        rc = 1;
      }
      free(top);
      mmp_tensor_unref(s);
      if (i < o.warmup) continue;
      sum += dt;
      if (dt < best) best = dt;
    }
    if (rc == 0)
      printf("%-22s %8.1f ms  (best of %d, mean %.1f ms: matmul [1, 256] x [100000, 256]^T + top %lld by bounded "
             "heap)\n",
             "ITC search 100k", best * 1e3, n, sum / n * 1e3, (long long)K);
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
