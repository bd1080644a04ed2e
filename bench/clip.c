/* bench/clip.c - one CLIP text encode at SD-1.5 size: batch 2 (prompt and
 * negative prompt), 77 tokens, fp32 on CPU. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "text_encoder", "CLIPTextModel");
  if (bench_fork_dtypes(&o)) { /* the parent: each dtype ran in a child */
    bench_torch(&o, "text_encoder");
    return 0;
  }
  bench_env_t e;
  if (bench_open(&o, MMP_KIND_ENCODER, "encoder", "clip_text", "", "bench/clip", &e) < 0) return 1;
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t is[2] = {2, 77};
  mmp_tensor_t *ids = mmp_rng_randint(g, mmp_backend_get("cpu"), 0, 49406, 2, is);
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "input_ids", ids);
  int rc = bench_run(&o, e.c, NULL, in, "clip text encode") < 0;
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  bench_torch(&o, "text_encoder");
  return rc;
}
