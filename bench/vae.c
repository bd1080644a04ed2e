/* bench/vae.c - one VAE decode at SD-1.5 size: latent 64x64 -> 512x512 image,
 * batch 1, fp32 on CPU. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "vae", "AutoencoderKL decode");
  mmp_registry_t *reg = NULL;
  mmp_config_t *cfg = NULL;
  mmp_context_t *ctx = NULL;
  mmp_component_t *c = bench_create(&o, MMP_KIND_ENCODER, "encoder", "vae", "mode = \"decode\";", &reg, &cfg, &ctx);
  if (!c) {
    fprintf(stderr, "bench/vae: %s\n", mmp_error_last());
    return 1;
  }
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t zs[4] = {1, 4, 64, 64};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "latents", mmp_rng_randn(g, mmp_backend_get("cpu"), 4, zs));
  int rc = bench_run(&o, c, "decode", in, "vae decode") < 0;
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  bench_torch(&o, "vae");
  return rc;
}
