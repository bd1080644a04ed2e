/* bench/unet.c - one UNet forward at SD-1.5 size: latent 64x64, batch 2 (one
 * guided step), 77 tokens, fp32 on CPU. --arldm S: AR-LDM's guided step
 * instead, on its 6 x S-token context with the cross-attention key mask. */
#include <mmpipe/rng.h>

#include "bench/sd_bench.h"

/* AR-LDM's key mask (1 = do not attend) of one guided step, visualization,
 * target frame i = 2: the context is 6 blocks of S tokens (block 0 the
 * caption, block 1 + j the BLIP features of frame j); row 0 is the
 * unconditional half, row 1 the conditional one (ARLDM.sample() concatenates
 * [uncond, cond]). Frames j >= i are masked in both rows (the triangular
 * part); in the conditional row the padding of block k is masked too, its
 * caption having min(S, 12 + 7 k) tokens (a fixed stand-in for real caption
 * lengths). bench/torch_sd.py builds the same mask. */
static mmp_tensor_t *arldm_mask(mmp_backend_t *be, int64_t S) {
  int64_t L = 6 * S, shape[2] = {2, 6 * S};
  uint8_t *m = calloc((size_t)(2 * L), 1);
  if (!m) return NULL;
  for (int64_t row = 0; row < 2; row++)
    for (int64_t k = 0; k < 6; k++) {
      int64_t n = 12 + 7 * k < S ? 12 + 7 * k : S;
      for (int64_t s = 0; s < S; s++) m[row * L + k * S + s] = k >= 1 + 2 || (row == 1 && s >= n);
    }
  int64_t open[2] = {0, 0};
  for (int64_t j = 0; j < 2 * L; j++) open[j / L] += !m[j];
  printf("context %lld tokens, keys attended: uncond %lld, cond %lld\n", (long long)L, (long long)open[0],
         (long long)open[1]);
  mmp_tensor_t *t = mmp_tensor_from_data(be, MMP_U8, 2, shape, m);
  free(m);
  return t;
}

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
  int64_t xs[4] = {2, 4, 64, 64}, es[3] = {2, o.arldm_s ? 6 * o.arldm_s : 77, 768}, ts[1] = {2};
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_rng_randn(g, cpu, 4, xs));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_rng_randn(g, cpu, 3, es));
  mmp_tensormap_set(in, "timestep", mmp_tensor_full(cpu, MMP_I64, 1, ts, 500));
  if (o.arldm_s) mmp_tensormap_set(in, "encoder_attention_mask", arldm_mask(cpu, o.arldm_s));
  char label[64] = "unet forward";
  if (o.arldm_s) snprintf(label, sizeof label, "unet, %lld masked", (long long)es[1]);
  int rc = bench_run(&o, e.c, NULL, in, label) < 0;
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  bench_close(&e);
  bench_torch(&o, "unet");
  return rc;
}
