/* bench/unet.c - one UNet forward at SD-1.5 size: latent 64x64, batch 2 (one
 * guided step), 77 tokens, fp32 on CPU. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "unet", "UNet2DConditionModel");
  if (bench_fork_dtypes(&o)) { /* the parent: each dtype ran in a child */
    bench_torch(&o, "unet");
    return 0;
  }
  bench_env_t e;
  if (bench_open(&o, MMP_KIND_MODEL, "model", "unet2d_condition", "", "bench/unet", &e) < 0) return 1;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t xs[4] = {2, 4, 64, 64}, es[3] = {2, 77, 768}, ts[1] = {2};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_rng_randn(g, cpu, 4, xs));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_rng_randn(g, cpu, 3, es));
  mmp_tensormap_set(in, "timestep", mmp_tensor_full(cpu, MMP_I64, 1, ts, 500));
  int rc = bench_run(&o, e.c, NULL, in, "unet forward") < 0;
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  bench_torch(&o, "unet");
  return rc;
}
