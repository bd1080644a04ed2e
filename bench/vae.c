/* bench/vae.c - one VAE decode at SD-1.5 size: latent 64x64 -> 512x512 image,
 * batch 1, fp32 on CPU; --tiled[=N] decodes in tiles of N pixels. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

int main(int argc, char **argv) {
  bench_opts_t o;
  bench_parse(argc, argv, &o, "vae", "AutoencoderKL decode");
  if (bench_fork_dtypes(&o)) { /* the parent: each dtype ran in a child */
    bench_torch(&o, "vae");
    return 0;
  }
  bench_env_t e;
  char keys[160] = "mode = \"decode\";";
  if (o.tiled > 0)
    snprintf(keys, sizeof keys, "mode = \"decode\"; tiled = true; tile_sample_size = %d;", o.tiled);
  if (bench_open(&o, MMP_KIND_ENCODER, "encoder", "vae", keys, "bench/vae", &e) < 0) return 1;
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t zs[4] = {1, 4, 64, 64};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "latents", mmp_rng_randn(g, mmp_backend_get("cpu"), 4, zs));
  int rc = bench_run(&o, e.c, "decode", in, o.tiled > 0 ? "vae decode (tiled)" : "vae decode") < 0;
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  bench_torch(&o, "vae");
  return rc;
}
