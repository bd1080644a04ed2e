/* tests/test_plugin_clip_text.c - CLIPTextModel against transformers 4.30
 * (fixtures from tests/gen_sd.py): quick_gelu (bf16 file) with and without
 * the padding mask, gelu (f32 file), single-file layout, PyTorch checkpoints, table resizing. */
#include "sd_test.h"

static mmp_tensormap_t *run(const char *cfg, const mmp_tensormap_t *in, const char *what) {
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "encoder", cfg);
  mmp_tensormap_t *out = mmp_tensormap_new();
  if (ok(c != NULL, "%s: create", what)) {
    if (!ok(sd_forward(c, NULL, in, out) == 0, "%s: forward", what)) diag("%s", mmp_error_last());
  } else {
    diag("%s", mmp_error_last());
  }
  mmp_component_free(c);
  sd_env_close(&e);
  return out;
}

int main(void) {
  mmp_tensormap_t *io = sd_load("clip_text_io.safetensors"), *iog = sd_load("clip_gelu_io.safetensors");
  if (!io || !iog) skip_all("fixtures missing");
  const char *folder = "encoder = { name = \"clip_text\"; model_dir = \"%s/pipe\"; };";
  static const char *const ids[] = {"input_ids", NULL};
  static const char *const ids_m[] = {"input_ids", "attention_mask", NULL};
  mmp_tensormap_t *in = sd_pick(io, ids), *in_m = sd_pick(io, ids_m);

  mmp_tensormap_t *o = run(folder, in, "quick_gelu, bf16 file");
  sd_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(io, "last_hidden_state"), "last_hidden_state");
  sd_check(mmp_tensormap_get(o, "pooler_output"), mmp_tensormap_get(io, "pooler_output"), "pooler_output (argmax id)");
  mmp_tensormap_t *om = run(folder, in_m, "with attention_mask");
  sd_check(mmp_tensormap_get(om, "last_hidden_state"), mmp_tensormap_get(io, "masked.last_hidden_state"),
           "last_hidden_state with padding mask");
  sd_check(mmp_tensormap_get(om, "pooler_output"), mmp_tensormap_get(io, "masked.pooler_output"),
           "pooler_output with padding mask");
  mmp_tensormap_t *os = run("encoder = { name = \"clip_text\"; config = \"%s/pipe/text_encoder/config.json\";"
                            " weights = \"%s/sd_tiny_single.safetensors\"; };", in, "single file");
  is_close(sd_relerr(mmp_tensormap_get(os, "last_hidden_state"), mmp_tensormap_get(o, "last_hidden_state")), 0.0, 0.0,
           "single-file layout gives the identical result");
  /* PyTorch checkpoints (tests/gen_checkpoints.py): a BLIP-style {"model": ...}
   * with the encoder under text_encoder., and an original SD .ckpt's
   * state_dict with the CompVis names (cond_stage_model.transformer.*) */
  mmp_tensormap_t *obl = run("encoder = { name = \"clip_text\"; config = \"%s/pipe/text_encoder/config.json\";"
                            " weights = \"%s/../ckpt/blip.pth\"; weights_prefix = \"model.text_encoder.\"; };",
                            in, "BLIP-style .pth");
  is_close(sd_relerr(mmp_tensormap_get(obl, "last_hidden_state"), mmp_tensormap_get(o, "last_hidden_state")), 0.0, 0.0,
           "a BLIP-style .pth gives the identical result");
  mmp_tensormap_t *oc = run("encoder = { name = \"clip_text\"; config = \"%s/pipe/text_encoder/config.json\";"
                            " weights = \"%s/../ckpt/sd.ckpt\"; weights_prefix = \"state_dict.\"; };",
                            in, "SD-style .ckpt");
  is_close(sd_relerr(mmp_tensormap_get(oc, "last_hidden_state"), mmp_tensormap_get(o, "last_hidden_state")), 0.0, 0.0,
           "an SD-style .ckpt (CompVis names) gives the identical result");
  mmp_tensormap_free(obl);
  mmp_tensormap_free(oc);
  /* resized tables: old ids and positions keep their rows */
  mmp_tensormap_t *orz = run("encoder = { name = \"clip_text\"; model_dir = \"%s/pipe\"; vocab_size = 1000;"
                             " max_position_embeddings = 100; resize_seed = 3; };", in, "resized tables");
  is_close(sd_relerr(mmp_tensormap_get(orz, "last_hidden_state"), mmp_tensormap_get(o, "last_hidden_state")), 0.0,
           0.0, "resizing keeps the stored rows");
  /* the token table held in bf16 (weights_dtype) grows in f32 and is rounded
   * back: the stored rows are bf16-exact, so the result is the f32 run's */
  mmp_tensormap_t *orb = run("encoder = { name = \"clip_text\"; model_dir = \"%s/pipe\"; vocab_size = 1000;"
                             " max_position_embeddings = 100; resize_seed = 3; weights_dtype = \"bf16\"; };", in,
                             "resized tables, weights_dtype bf16");
  is_close(sd_relerr(mmp_tensormap_get(orb, "last_hidden_state"), mmp_tensormap_get(o, "last_hidden_state")), 0.0,
           0.0, "  a bf16 token table resized keeps the stored rows");
  mmp_tensormap_free(orb);
  mmp_tensormap_t *og_in = sd_pick(iog, ids);
  mmp_tensormap_t *og = run("encoder = { name = \"clip_text\"; model_dir = \"%s/clip_gelu\"; };", og_in, "gelu, f32 file");
  sd_check(mmp_tensormap_get(og, "last_hidden_state"), mmp_tensormap_get(iog, "last_hidden_state"), "gelu last_hidden_state");
  sd_check(mmp_tensormap_get(og, "pooler_output"), mmp_tensormap_get(iog, "pooler_output"), "gelu pooler_output");
  /* an id outside the table is an error, not a crash */
  {
    mmp_tensormap_t *bad = mmp_tensormap_new();
    int64_t s[2] = {1, 3}, v[3] = {1, 5000, 2};
    mmp_tensormap_set(bad, "input_ids", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 2, s, v));
    sd_env_t e;
    mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "encoder", folder);
    mmp_tensormap_t *ob = mmp_tensormap_new();
    ok(c && sd_forward(c, NULL, bad, ob) < 0, "id 5000 is refused");
    like(mmp_error_last(), "5000", "the message names the id");
    mmp_tensormap_free(ob);
    mmp_tensormap_free(bad);
    mmp_component_free(c);
    sd_env_close(&e);
  }
  mmp_tensormap_free(o);
  mmp_tensormap_free(om);
  mmp_tensormap_free(os);
  mmp_tensormap_free(orz);
  mmp_tensormap_free(og);
  mmp_tensormap_free(og_in);
  mmp_tensormap_free(in);
  mmp_tensormap_free(in_m);
  mmp_tensormap_free(io);
  mmp_tensormap_free(iog);
  /* every size and divisor of config.json is checked before use */
  {
    static const struct { const char *key, *value, *want; } bad[] = {
        {"num_attention_heads", "0", "\"num_attention_heads\" is 0"},
        {"num_attention_heads", "5", "does not divide into 5 heads"},
        {"hidden_size", "-32", "\"hidden_size\" is -32"},
        {"intermediate_size", "0", "\"intermediate_size\" is 0"},
        {"max_position_embeddings", "0", "\"max_position_embeddings\" is 0"},
        {"vocab_size", "1099511627776", "\"vocab_size\" is 1099511627776"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      char path[4300];
      if (sd_config_variant("pipe/text_encoder/config.json", bad[i].key, bad[i].value, path, sizeof path) < 0) {
        ok(0, "config variant %s", bad[i].key);
        continue;
      }
      sd_refused(MMP_KIND_ENCODER, "encoder", "encoder = { name = \"clip_text\"; config = \"%s\"; init_seed = 1; };",
                 path, bad[i].want, bad[i].key);
      like(mmp_error_last(), "sd-variant-", "  names the file");
      unlink(path);
    }
  }
  return done_testing();
}
