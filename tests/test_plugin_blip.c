/* tests/test_plugin_blip.c - the blip encoder against BLIP_Base of AR-LDM's
 * blip_override (imported from source) in image, text and multimodal modes,
 * from a checkpoint held the way AR-LDM holds it (mm_encoder.*, a resized
 * word table), and a transformers BLIP folder (BlipForImageTextRetrieval's
 * vision_model and text_encoder); the caller's ids stay untouched
 * (fixtures: tests/gen_blip.py). */
#include "blip_test.h"

#define CFG                                                                                     \
  "encoder = { name = \"blip\"; config = \"%s/blip_base/med_config.json\";"                     \
  " weights = \"%s/blip_base/model.safetensors\"; prefix = \"mm_encoder.\"; num_heads = 4;"     \
  " %s };"

static mmp_tensormap_t *run(const char *extra, const char *method, const mmp_tensormap_t *in, const char *what,
                            char *err, size_t errlen) {
  char fx[4096], fmt[2048];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/blip", tap_srcdir());
  char ex[512];
  /* the fixture's tokenizer puts [ENC] at 97 */
  snprintf(ex, sizeof ex, "%s%s", strstr(extra, "enc_token_id") ? "" : "enc_token_id = 97; ", extra);
  snprintf(fmt, sizeof fmt, CFG, fx, fx, ex);
  return bt_run(fmt, method, in, what, err, errlen);
}

int main(void) {
  mmp_tensormap_t *bb = bt_load("blip_base_io.safetensors");
  if (!bb) skip_all("fixtures missing");
  static const char *const all[] = {"pixel_values", "input_ids", "attention_mask", NULL};
  mmp_tensormap_t *in = sd_pick(bb, all);
  mmp_tensor_t *ids = mmp_tensormap_get(in, "input_ids");
  int64_t first[2] = {0, 0}, at[2] = {0, 0};
  first[0] = (int64_t)mmp_tensor_get(ids, at);

  mmp_tensormap_t *o = run("", "multimodal", in, "multimodal", NULL, 0);
  bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(bb, "multimodal.last_hidden_state"),
           "multimodal last_hidden_state ([ENC] first, cross-attending to all image tokens)");
  is_int((int64_t)mmp_tensor_get(ids, at), first[0], "the caller's input_ids keep their first id");
  mmp_tensormap_free(o);
  o = run("", NULL, in, "default method (mode = multimodal)", NULL, 0);
  bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(bb, "multimodal.last_hidden_state"),
           "the default method is multimodal");
  mmp_tensormap_free(o);
  o = run("", "image", in, "image", NULL, 0);
  bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(bb, "image.last_hidden_state"),
           "image last_hidden_state");
  mmp_tensormap_free(o);
  o = run("mode = \"text\";", NULL, in, "text", NULL, 0);
  bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(bb, "text.last_hidden_state"),
           "text last_hidden_state (mode = text)");
  mmp_tensormap_free(o);
  /* growing the word table to a tokenizer's size keeps the stored rows */
  o = run("vocab_size = 120; resize_seed = 5;", "multimodal", in, "vocab_size = 120", NULL, 0);
  bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(bb, "multimodal.last_hidden_state"),
           "multimodal with a grown word table");
  mmp_tensormap_free(o);
  {
    char err[4096];
    o = run("enc_token_id = 200;", "multimodal", in, NULL, err, sizeof err);
    like(err, "enc_token_id", "an [ENC] id outside the table is a config error");
    mmp_tensormap_free(o);
    o = run("", "caption", in, NULL, err, sizeof err);
    like(err, "unknown method \"caption\"", "unknown methods are refused");
    mmp_tensormap_free(o);
    o = run("", "multimodal", in, NULL, err, sizeof err);
    mmp_tensormap_free(o);
    ok(err[0] == 0, "the checkpoint's other tensors (none here) do not matter");
    /* input errors name the plugin once ("blip: blip: ..." before) */
    mmp_tensormap_t *bad = sd_pick(bb, all);
    int64_t one[2] = {1, 1};
    mmp_tensormap_set(bad, "attention_mask", mmp_tensor_full(mmp_backend_get("cpu"), MMP_I64, 2, one, 1));
    o = run("", "multimodal", bad, NULL, err, sizeof err);
    like(err, "blip: attention_mask must be [B, L]", "a mask of the wrong shape is refused");
    ok(strstr(err, "blip: blip:") == NULL, "the message names the plugin once: %s", err);
    mmp_tensormap_free(o);
    mmp_tensormap_free(bad);
    static const char *const no_ids[] = {"pixel_values", "attention_mask", NULL};
    bad = sd_pick(bb, no_ids);
    o = run("", "multimodal", bad, NULL, err, sizeof err);
    like(err, "input_ids", "missing input_ids are named");
    like(err, "blip: ", "... with the plugin's name");
    mmp_tensormap_free(o);
    mmp_tensormap_free(bad);
  }
  mmp_tensormap_free(in);

  /* a transformers BLIP folder (BlipForImageTextRetrieval's names) */
  mmp_tensormap_t *hf = bt_load("blip_hf_io.safetensors");
  if (ok(hf != NULL, "transformers BLIP fixture")) {
    in = sd_pick(hf, all);
    static const char *const modes[] = {"multimodal", "image", "text"};
    for (int i = 0; i < 3; i++) {
      char what[96], key[96];
      snprintf(what, sizeof what, "transformers BLIP folder, %s", modes[i]);
      o = bt_run("encoder = { name = \"blip\"; model_dir = \"%s/blip_hf\"; enc_token_id = 79; };", modes[i], in,
                 what, NULL, 0);
      snprintf(key, sizeof key, "%s.last_hidden_state", modes[i]);
      bt_check(mmp_tensormap_get(o, "last_hidden_state"), mmp_tensormap_get(hf, key), what);
      mmp_tensormap_free(o);
    }
    mmp_tensormap_free(in);
  }
  mmp_tensormap_free(hf);
  mmp_tensormap_free(bb);
  return done_testing();
}
