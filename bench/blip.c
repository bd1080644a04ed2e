/* bench/blip.c - AR-LDM's BLIP-large multimodal features for one story's 5
 * frames: ViT-L/16 at 224 + the 12-layer BERT cross-attending to it, 91
 * tokens, fp32 on CPU (--frames N --tokens S: N frames of S tokens; 1 frame
 * is AR-LDM's re-encode of a drawn frame); --compare-torch runs BLIP_Base of
 * AR-LDM's blip_override (bench/torch_blip.py) with the same threads. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

/* --compare-torch: bench/torch_blip.py with the same inputs' shapes. */
static void blip_torch(const bench_opts_t *o) {
  if (!o->compare_torch) return;
  const char *pp = getenv("MMP_TORCH_PYTHONPATH");
  char cmd[12000];
  snprintf(cmd, sizeof cmd,
           "PYTHONPATH='%s' LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
           "/usr/bin/python3 '%s/bench/torch_blip.py' '%s' %d %d %d %d %d",
           pp ? pp : "/root/refenv/site", o->threads, o->srcdir, o->config, o->threads, o->repeat, o->warmup, o->frames,
           o->tokens);
  printf("-- PyTorch (subprocess) --\n");
  fflush(stdout);
  int rc = system(cmd);
  if (rc != 0) printf("PyTorch comparison failed (exit %d)\n", rc);
}

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "blip", "BLIP-large multimodal feature");
  static char cfg[4096];
  if (strstr(o.config, "/bench/sd15/")) { /* the default: BLIP's med_config.json with ViT-L's width */
    snprintf(cfg, sizeof cfg, "%s/bench/blip_large/med_config.json", o.srcdir);
    o.config = cfg;
  }
  if (bench_fork_dtypes(&o)) { /* the parent: each dtype ran in a child */
    blip_torch(&o);
    return 0;
  }
  bench_env_t e;
  if (bench_open(&o, MMP_KIND_ENCODER, "encoder", "blip", "vit = \"large\"; mode = \"multimodal\";", "bench/blip", &e) < 0)
    return 1;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t ps[4] = {o.frames, 3, 224, 224}, is[2] = {o.frames, o.tokens};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "pixel_values", mmp_rng_randn(g, cpu, 4, ps));
  mmp_tensormap_set(in, "input_ids", mmp_rng_randint(g, cpu, 0, 30522, 2, is));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_full(cpu, MMP_I64, 2, is, 1.0));
  char label[64];
  snprintf(label, sizeof label, "blip multimodal x%d", o.frames);
  int rc = bench_run(&o, e.c, "multimodal", in, label) < 0; /* prints the CPU seconds too */
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  blip_torch(&o);
  return rc;
}
