/* tests/test_plugin_vae.c - AutoencoderKL against diffusers 0.19.3 (fixtures
 * from tests/gen_sd.py): encode (mean, logvar, sample from noise), decode,
 * single-file layout, an SD .ckpt, the pre-0.14 attention names, info; the
 * tiled decode against diffusers' tiled_decode (tests/gen_vae_tiled.py). */
#include "sd_test.h"

static int run(const char *cfg, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out,
               const char *what) {
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "encoder", cfg);
  int rc = -1;
  if (ok(c != NULL, "%s: create", what)) {
    rc = sd_forward(c, method, in, out);
    if (!ok(rc == 0, "%s: %s", what, method ? method : "default method")) diag("%s", mmp_error_last());
  } else {
    diag("%s", mmp_error_last());
  }
  mmp_component_free(c);
  sd_env_close(&e);
  return rc;
}

int main(void) {
  mmp_tensormap_t *io = sd_load("vae_io.safetensors");
  if (!io) skip_all("fixtures missing");
  const char *folder = "encoder = { name = \"vae\"; model_dir = \"%s/pipe\"; };";
  const char *single = "encoder = { name = \"vae\"; mode = \"decode\"; config = \"%s/pipe/vae/config.json\";"
                       " weights = \"%s/sd_tiny_single.safetensors\"; };";
  static const char *const enc_in[] = {"sample", "noise", NULL};
  static const char *const dec_in[] = {"latents", NULL};
  mmp_tensormap_t *ein = sd_pick(io, enc_in), *din = sd_pick(io, dec_in);

  mmp_tensormap_t *o = mmp_tensormap_new();
  run(folder, NULL, ein, o, "encode (f16 file, default mode)");
  sd_check(mmp_tensormap_get(o, "latent_mean"), mmp_tensormap_get(io, "latent_mean"), "latent_mean");
  sd_check(mmp_tensormap_get(o, "latent_logvar"), mmp_tensormap_get(io, "latent_logvar"), "latent_logvar");
  sd_check(mmp_tensormap_get(o, "latent_sample"), mmp_tensormap_get(io, "latent_sample"), "latent_sample from noise");
  mmp_tensormap_free(o);

  o = mmp_tensormap_new();
  run(folder, "decode", din, o, "decode");
  sd_check(mmp_tensormap_get(o, "sample"), mmp_tensormap_get(io, "decoded"), "decoded sample");
  mmp_tensormap_t *o2 = mmp_tensormap_new();
  run(single, NULL, din, o2, "single file, mode decode");
  is_close(sd_relerr(mmp_tensormap_get(o2, "sample"), mmp_tensormap_get(o, "sample")), 0.0, 0.0,
           "single-file layout decodes identically");
  mmp_tensormap_free(o2);
  /* an original SD .ckpt (tests/gen_checkpoints.py): state_dict with the CompVis names */
  o2 = mmp_tensormap_new();
  run("encoder = { name = \"vae\"; mode = \"decode\"; config = \"%s/pipe/vae/config.json\";"
      " weights = \"%s/../ckpt/sd.ckpt\"; weights_prefix = \"state_dict.\"; };",
      NULL, din, o2, "SD-style .ckpt, mode decode");
  is_close(sd_relerr(mmp_tensormap_get(o2, "sample"), mmp_tensormap_get(o, "sample")), 0.0, 0.0,
           "an SD-style .ckpt decodes identically");
  mmp_tensormap_free(o2);

  /* the same weights under the names diffusers used before 0.14 */
  {
    char src[4200], old[4200];
    snprintf(src, sizeof src, "%s/tests/fixtures/sd/pipe/vae/diffusion_pytorch_model.safetensors", tap_srcdir());
    const char *tmp = getenv("TMPDIR");
    snprintf(old, sizeof old, "%s/sd_old_vae_%d.safetensors", tmp ? tmp : "/tmp", (int)getpid());
    mmp_tensormap_t *w = mmp_tensormap_new(), *w2 = mmp_tensormap_new();
    mmp_safetensors_load_map(src, mmp_backend_get("cpu"), true, w);
    static const char *const map[][2] = {{".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."},
                                         {".to_out.0.", ".proj_attn."}};
    int renamed = 0;
    for (size_t i = 0; i < mmp_tensormap_size(w); i++) {
      const char *n = mmp_tensormap_name(w, i);
      char nn[512];
      snprintf(nn, sizeof nn, "%s", n);
      for (int k = 0; k < 4; k++) {
        const char *p = strstr(n, map[k][0]);
        if (p) {
          snprintf(nn, sizeof nn, "%.*s%s%s", (int)(p - n), n, map[k][1], p + strlen(map[k][0]));
          renamed++;
        }
      }
      mmp_tensormap_set(w2, nn, mmp_tensor_ref(mmp_tensormap_at(w, i)));
    }
    int saved = mmp_safetensors_save_map(old, w2, NULL);
    ok(renamed == 16 && saved == 0, "wrote a file with old attention names (%d)", renamed);
    char cfg[9000];
    snprintf(cfg, sizeof cfg, "encoder = { name = \"vae\"; config = \"%%s/pipe/vae/config.json\"; weights = \"%s\"; };", old);
    o2 = mmp_tensormap_new();
    run(cfg, "decode", din, o2, "old attention names");
    is_close(sd_relerr(mmp_tensormap_get(o2, "sample"), mmp_tensormap_get(o, "sample")), 0.0, 0.0,
             "old names load the same weights");
    mmp_tensormap_free(o2);
    mmp_tensormap_free(w);
    mmp_tensormap_free(w2);
    unlink(old);
  }
  mmp_tensormap_free(o);

  o = mmp_tensormap_new();
  run(folder, "info", din, o, "info");
  mmp_tensor_t *sf = mmp_tensormap_get(o, "scaling_factor"), *df = mmp_tensormap_get(o, "downscale_factor");
  int64_t z[1] = {0};
  is_close(sf ? mmp_tensor_get(sf, z) : -1, 0.18215, 1e-7, "scaling_factor from config.json");
  is_close(df ? mmp_tensor_get(df, z) : -1, 2.0, 0.0, "downscale_factor 2^(blocks-1)");
  mmp_tensormap_free(o);

  /* tiled decode: diffusers' enable_tiling() with its tile sizes set */
  {
    mmp_tensormap_t *tio = sd_load("vae_tiled_io.safetensors");
    static const struct { const char *name, *keys, *what; } tc[] = {
        {"a", "tile_sample_size = 16;", "tiled, batch 2, 4 x 3 tiles, a last column 1 latent wide"},
        {"b", "tile_sample_size = 20; tile_overlap_factor = 0.5;", "tiled, overlap 0.5, 4 x 5 tiles"},
        {"c", "", "tiled, latent no larger than config.json's sample_size: not tiled"},
    };
    for (size_t i = 0; tio && i < sizeof tc / sizeof tc[0]; i++) {
      char cfg[512], key[32];
      snprintf(cfg, sizeof cfg,
               "encoder = { name = \"vae\"; mode = \"decode\"; model_dir = \"%%s/pipe\"; tiled = true; %s };",
               tc[i].keys);
      snprintf(key, sizeof key, "%s.latents", tc[i].name);
      mmp_tensormap_t *tin = mmp_tensormap_new(), *to = mmp_tensormap_new();
      mmp_tensormap_set(tin, "latents", mmp_tensor_ref(mmp_tensormap_get(tio, key)));
      run(cfg, NULL, tin, to, tc[i].what);
      snprintf(key, sizeof key, "%s.tiled", tc[i].name);
      sd_check(mmp_tensormap_get(to, "sample"), mmp_tensormap_get(tio, key), tc[i].what);
      if (tc[i].keys[0]) { /* the tiles do change the image: the check above is not the untiled decode's */
        snprintf(key, sizeof key, "%s.untiled", tc[i].name);
        double d = sd_relerr(mmp_tensormap_get(to, "sample"), mmp_tensormap_get(tio, key));
        if (!ok(d > 100 * SD_TOL, "  and differs from the untiled decode")) diag("  relative difference %.3g", d);
      }
      mmp_tensormap_free(to);
      to = mmp_tensormap_new();
      run("encoder = { name = \"vae\"; mode = \"decode\"; model_dir = \"%s/pipe\"; };", NULL, tin, to,
          "the same latents untiled (the default)");
      snprintf(key, sizeof key, "%s.untiled", tc[i].name);
      sd_check(mmp_tensormap_get(to, "sample"), mmp_tensormap_get(tio, key), "  untiled decode");
      mmp_tensormap_free(to);
      mmp_tensormap_free(tin);
    }
    if (!tio) ok(0, "vae_tiled_io.safetensors");
    mmp_tensormap_free(tio);
    char fxd[4200];
    snprintf(fxd, sizeof fxd, "%s/tests/fixtures/sd", tap_srcdir());
    sd_refused(MMP_KIND_ENCODER, "encoder",
               "encoder = { name = \"vae\"; model_dir = \"%s/pipe\"; tiled = true; tile_overlap_factor = 1.0; };",
               fxd, "tile_overlap_factor", "tile_overlap_factor 1.0 is refused, naming the key");
    sd_refused(MMP_KIND_ENCODER, "encoder",
               "encoder = { name = \"vae\"; model_dir = \"%s/pipe\"; tiled = true; tile_sample_size = 2; };",
               fxd, "no step between tiles", "a tile of 1 latent with overlap 0.25 is refused");
  }

  /* a bad mode value names the key */
  {
    sd_env_t e;
    mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "encoder",
                                      "encoder = { name = \"vae\"; mode = \"encoed\"; model_dir = \"%s/pipe\"; };");
    ok(c == NULL, "mode \"encoed\" is refused");
    like(mmp_error_last(), "mode", "the message names the key");
    mmp_component_free(c);
    sd_env_close(&e);
  }
  mmp_tensormap_free(ein);
  mmp_tensormap_free(din);
  mmp_tensormap_free(io);
  /* inputs found by fuzzing, and the checks of every size in config.json */
  {
    char cfgp[4300];
    const char *fmt = "encoder = { name = \"vae\"; config = \"%s\"; init_seed = 1; };";
    snprintf(cfgp, sizeof cfgp, "%s/tests/fixtures/fuzz/norm_num_groups_zero/vae_config_norm_num_groups_0.json",
             tap_srcdir());
    sd_refused(MMP_KIND_ENCODER, "encoder", fmt, cfgp, "\"norm_num_groups\" is 0, must be 1..",
               "norm_num_groups 0: an error naming the key, no SIGFPE");
    like(mmp_error_last(), "vae_config_norm_num_groups_0.json", "  and the file");
    static const struct { const char *key, *value, *want; } bad[] = {
        {"norm_num_groups", "5", "does not divide into 5 groups"},
        {"latent_channels", "0", "\"latent_channels\" is 0"},
        {"layers_per_block", "9", "\"layers_per_block\" is 9"},
        {"block_out_channels", "[16, 0]", "\"block_out_channels\"[1] is 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      char path[4300];
      if (sd_config_variant("pipe/vae/config.json", bad[i].key, bad[i].value, path, sizeof path) < 0) {
        ok(0, "config variant %s", bad[i].key);
        continue;
      }
      sd_refused(MMP_KIND_ENCODER, "encoder", fmt, path, bad[i].want, bad[i].key);
      unlink(path);
    }
  }
  return done_testing();
}
