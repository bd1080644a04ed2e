/* bench/blip.c - AR-LDM's BLIP-large multimodal features for one story's 5
 * frames: ViT-L/16 at 224 + the 12-layer BERT cross-attending to it, 91
 * tokens, fp32 on CPU; --compare-torch runs BLIP_Base of AR-LDM's
 * blip_override (bench/torch_blip.py) with the same threads. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "blip", "BLIP-large multimodal feature");
  static char cfg[4096];
  if (strstr(o.config, "/bench/sd15/")) { /* the default: BLIP's med_config.json with ViT-L's width */
    snprintf(cfg, sizeof cfg, "%s/bench/blip_large/med_config.json", o.srcdir);
    o.config = cfg;
  }
  bench_env_t e;
  if (bench_open(&o, MMP_KIND_ENCODER, "encoder", "blip", "vit = \"large\"; mode = \"multimodal\";", "bench/blip", &e) < 0)
    return 1;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t ps[4] = {5, 3, 224, 224}, is[2] = {5, 91};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "pixel_values", mmp_rng_randn(g, cpu, 4, ps));
  mmp_tensormap_set(in, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, is));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, is, 1.0));
  /* CPU seconds beside wall seconds: on a shared machine they are what
   * compares (the warm-up included, as in bench/torch_blip.py). */
  struct rusage r0, r1;
  getrusage(RUSAGE_SELF, &r0);
  int rc = bench_run(&o, e.c, "multimodal", in, "blip multimodal x5") < 0;
  getrusage(RUSAGE_SELF, &r1);
  double cpu_s = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
               (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec + r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) * 1e-6;
  printf("%-22s %8.2f s  (user + system per forward, %d forwards)\n", "cpu time", cpu_s / (o.warmup + o.repeat),
         o.warmup + o.repeat);
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  if (o.compare_torch) {
    const char *pp = getenv("MMP_TORCH_PYTHONPATH");
    char cmd[12000];
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH='%s' LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
             "/usr/bin/python3 '%s/bench/torch_blip.py' '%s' %d %d %d",
             pp ? pp : "/root/refenv/site", o.threads, o.srcdir, o.config, o.threads, o.repeat, o.warmup);
    printf("-- PyTorch (subprocess) --\n");
    fflush(stdout);
    int trc = system(cmd);
    if (trc != 0) printf("PyTorch comparison failed (exit %d)\n", trc);
  }
  return rc;
}
