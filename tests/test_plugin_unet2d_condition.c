/* tests/test_plugin_unet2d_condition.c - the UNet against diffusers 0.19.3
 * (fixtures from tests/gen_sd.py): plain, with AR-LDM's cross-attention mask,
 * SD-2.x options, single-file layout, weight errors, init-weights mode. */
#include "sd_test.h"

static const char *const UNET_IN[] = {"sample", "timestep", "encoder_hidden_states", NULL};
static const char *const UNET_IN_M[] = {"sample", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                                        NULL};

static mmp_tensor_t *run_unet(const char *cfg, const mmp_tensormap_t *io, const char *const *names,
                              const char *what) {
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_MODEL, "model", cfg);
  if (!ok(c != NULL, "%s: create", what)) {
    diag("%s", mmp_error_last());
    sd_env_close(&e);
    return NULL;
  }
  mmp_tensormap_t *in = sd_pick(io, names), *out = mmp_tensormap_new();
  int rc = sd_forward(c, NULL, in, out);
  if (!ok(rc == 0, "%s: forward", what)) diag("%s", mmp_error_last());
  mmp_tensor_t *s = mmp_tensormap_get(out, "sample");
  if (s) mmp_tensor_ref(s);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_component_free(c);
  sd_env_close(&e);
  return s;
}

int main(void) {
  mmp_tensormap_t *io = sd_load("unet_io.safetensors");
  mmp_tensormap_t *io2 = sd_load("unet_v2_io.safetensors");
  if (!io || !io2) skip_all("fixtures missing");
  const char *folder = "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; };";
  const char *single = "model = { name = \"unet2d_condition\"; config = \"%s/pipe/unet/config.json\";"
                       " weights = \"%s/sd_tiny_single.safetensors\"; };";

  mmp_tensor_t *a = run_unet(folder, io, UNET_IN, "folder (f16 file)");
  sd_check(a, mmp_tensormap_get(io, "out_sample"), "unet sample");
  mmp_tensor_t *b = run_unet(folder, io, UNET_IN_M, "masked");
  sd_check(b, mmp_tensormap_get(io, "out_sample_masked"), "unet sample with encoder_attention_mask");
  ok(sd_relerr(a, b) > 1e-3, "the mask changes the output");
  mmp_tensor_t *c = run_unet(single, io, UNET_IN_M, "single file (bf16)");
  is_close(sd_relerr(c, b), 0.0, 0.0, "single-file layout gives the identical result");
  /* the feed-forward over blocks of rows (24: a short last block) and all at
   * once give the same numbers as the automatic choice */
  mmp_tensor_t *ch = run_unet("model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; ff_chunk_rows = 24; };",
                              io, UNET_IN_M, "feed-forward in blocks of 24 rows");
  is_close(sd_relerr(ch, b), 0.0, 0.0, "ff_chunk_rows = 24 gives the identical result");
  mmp_tensor_t *whole = run_unet("model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; ff_chunk_rows = -1; };",
                                 io, UNET_IN_M, "feed-forward all at once");
  is_close(sd_relerr(whole, b), 0.0, 0.0, "ff_chunk_rows = -1 gives the identical result");
  mmp_tensor_unref(ch);
  mmp_tensor_unref(whole);
  mmp_tensor_t *d = run_unet("model = { name = \"unet2d_condition\"; model_dir = \"%s/unet_v2\"; };", io2, UNET_IN,
                             "SD-2.x options (linear projection, head list, upcast)");
  sd_check(d, mmp_tensormap_get(io2, "out_sample"), "unet v2 sample");
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_tensor_unref(c);
  mmp_tensor_unref(d);

  /* a mis-shaped, a missing and an unexpected tensor: one error naming all */
  {
    char src[4200], bad[4200];
    snprintf(src, sizeof src, "%s/tests/fixtures/sd/pipe/unet/diffusion_pytorch_model.safetensors", tap_srcdir());
    const char *tmp = getenv("TMPDIR");
    snprintf(bad, sizeof bad, "%s/sd_bad_unet_%d.safetensors", tmp ? tmp : "/tmp", (int)getpid());
    mmp_tensormap_t *w = mmp_tensormap_new();
    mmp_safetensors_load_map(src, mmp_backend_get("cpu"), true, w);
    int64_t s[4] = {16, 4, 3, 2};
    mmp_tensormap_set(w, "conv_in.weight", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_F32, 4, s));
    int64_t s1[1] = {7};
    mmp_tensormap_set(w, "extra.tensor", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_F32, 1, s1));
    mmp_tensormap_t *w2 = mmp_tensormap_new();
    for (size_t i = 0; i < mmp_tensormap_size(w); i++)
      if (strcmp(mmp_tensormap_name(w, i), "conv_out.bias"))
        mmp_tensormap_set(w2, mmp_tensormap_name(w, i), mmp_tensor_ref(mmp_tensormap_at(w, i)));
    ok(mmp_safetensors_save_map(bad, w2, NULL) == 0, "wrote a broken weight file");
    char cfg[9000];
    snprintf(cfg, sizeof cfg, "model = { name = \"unet2d_condition\"; config = \"%%s/pipe/unet/config.json\"; weights = \"%s\"; };", bad);
    sd_env_t e;
    mmp_component_t *comp = sd_component(&e, MMP_KIND_MODEL, "model", cfg);
    ok(comp == NULL, "broken weights are refused");
    const char *msg = mmp_error_last();
    like(msg, "conv_in.weight expected [16, 4, 3, 3] found [16, 4, 3, 2]", "names the mis-shaped tensor and both shapes");
    like(msg, "missing: conv_out.bias [4]", "names the missing tensor");
    like(msg, "unexpected: extra.tensor [7]", "names the unexpected tensor");
    like(msg, "3 problems", "in one error");
    mmp_component_free(comp);
    sd_env_close(&e);
    mmp_tensormap_free(w);
    mmp_tensormap_free(w2);
    unlink(bad);
  }
  /* random init: the same names and shapes as the real file, reproducible */
  {
    sd_env_t e;
    mmp_component_t *comp = sd_component(&e, MMP_KIND_MODEL, "model",
        "model = { name = \"unet2d_condition\"; config = \"%s/pipe/unet/config.json\"; init_seed = 5; };");
    ok(comp != NULL, "init_seed builds without a weight file");
    mmp_tensormap_t *in = mmp_tensormap_new(), *sd = mmp_tensormap_new(), *ref = sd_load("pipe/unet/diffusion_pytorch_model.safetensors");
    ok(comp && sd_forward(comp, "state_dict", in, sd) == 0, "state_dict");
    bool same = ref && mmp_tensormap_size(sd) == mmp_tensormap_size(ref);
    for (size_t i = 0; same && i < mmp_tensormap_size(ref); i++) {
      mmp_tensor_t *r = mmp_tensormap_at(ref, i), *g = mmp_tensormap_get(sd, mmp_tensormap_name(ref, i));
      same = g && mmp_tensor_same_shape(r, g);
      if (!same) diag("  %s differs", mmp_tensormap_name(ref, i));
    }
    ok(same, "random weights have exactly the names and shapes of the diffusers file");
    mmp_tensormap_free(in);
    mmp_tensormap_free(sd);
    mmp_tensormap_free(ref);
    mmp_component_free(comp);
    sd_env_close(&e);
  }
  /* inputs found by fuzzing (tests/fixtures/fuzz) */
  {
    char fz[4200], cfgp[4300], wp[4300];
    snprintf(fz, sizeof fz, "%s/tests/fixtures/fuzz", tap_srcdir());
    const char *fmt = "model = { name = \"unet2d_condition\"; config = \"%s\"; init_seed = 1; };";
    snprintf(cfgp, sizeof cfgp, "%s/norm_num_groups_zero/unet_config_norm_num_groups_0.json", fz);
    sd_refused(MMP_KIND_MODEL, "model", fmt, cfgp, "\"norm_num_groups\" is 0, must be 1..",
               "norm_num_groups 0: an error naming the key, no SIGFPE");
    like(mmp_error_last(), "unet_config_norm_num_groups_0.json", "  and the file");
    snprintf(cfgp, sizeof cfgp, "%s/norm_num_groups_zero/fuzzer_found_unet_config.json", fz);
    sd_refused(MMP_KIND_MODEL, "model", fmt, cfgp, "norm_num_groups", "the fuzzer's own config too");
    /* a weight file that lacks every expected tensor: a long problem list
     * (the list builder wrote 2 bytes past its buffer) */
    snprintf(cfgp, sizeof cfgp, "%s/sd_weights_add_problem_overflow/unet_v2_config.json", fz);
    snprintf(wp, sizeof wp, "%s/sd_weights_add_problem_overflow/weights_with_unrelated_tensor.safetensors", fz);
    char fmt2[8800];
    snprintf(fmt2, sizeof fmt2, "model = { name = \"unet2d_condition\"; config = \"%%s\"; weights = \"%s\"; };", wp);
    sd_refused(MMP_KIND_MODEL, "model", fmt2, cfgp, "missing: ", "unrelated weights: every problem listed");
    like(mmp_error_last(), "problems", "  and counted");
  }
  /* every size and divisor of config.json is checked before use */
  {
    static const struct { const char *key, *value, *want; } bad[] = {
        {"norm_num_groups", "-4", "\"norm_num_groups\" is -4"},
        {"norm_num_groups", "3", "do not divide into 2 heads / 3 groups"},
        {"attention_head_dim", "0", "\"attention_head_dim\"[0] is 0"},
        {"attention_head_dim", "5", "do not divide into 5 heads"},
        {"block_out_channels", "[16, -32]", "\"block_out_channels\"[1] is -32"},
        {"block_out_channels", "[16, 4611686018427387904]", "\"block_out_channels\"[1] is 4611686018427387904"},
        {"layers_per_block", "0", "\"layers_per_block\"[0] is 0"},
        {"cross_attention_dim", "0", "\"cross_attention_dim\"[0] is 0"},
        {"in_channels", "0", "\"in_channels\" is 0"},
        {"conv_in_kernel", "4", "must be odd"},
        {"conv_out_kernel", "-1", "\"conv_out_kernel\" is -1"},
        {"transformer_layers_per_block", "0", "\"transformer_layers_per_block\"[0] is 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      char path[4300];
      if (sd_config_variant("pipe/unet/config.json", bad[i].key, bad[i].value, path, sizeof path) < 0) {
        ok(0, "config variant %s", bad[i].key);
        continue;
      }
      sd_refused(MMP_KIND_MODEL, "model",
                 "model = { name = \"unet2d_condition\"; config = \"%s\"; init_seed = 1; };", path,
                 bad[i].want, bad[i].key);
      like(mmp_error_last(), "sd-variant-", "  names the file");
      unlink(path);
    }
  }
  mmp_tensormap_free(io);
  mmp_tensormap_free(io2);
  return done_testing();
}
