/* tests/test_plugin_bert.c - the bert encoder against transformers 4.30's
 * BertModel (plain with token types and pooler; a decoder with
 * cross-attention) and BlipTextModel (encoder and decoder modes, encoder
 * width != text width), and BLIP's med.py BertModel inside AR-LDM's
 * checkpoint (fixtures: tests/gen_blip.py). */
#include "blip_test.h"

static void check(const mmp_tensormap_t *got, const char *gname, const mmp_tensormap_t *want, const char *wname,
                  const char *what) {
  bt_check(mmp_tensormap_get(got, gname), mmp_tensormap_get(want, wname), what);
}

int main(void) {
  mmp_tensormap_t *hf = bt_load("bert_hf_io.safetensors"), *hx = bt_load("bert_hf_cross_io.safetensors"),
                  *bt = bt_load("blip_text_io.safetensors"), *bb = bt_load("blip_base_io.safetensors");
  if (!hf || !hx || !bt || !bb) skip_all("fixtures missing");
  static const char *const all[] = {"input_ids", "attention_mask", "token_type_ids", NULL};
  static const char *const ids[] = {"input_ids", NULL};
  mmp_tensormap_t *in = sd_pick(hf, all);
  mmp_tensormap_t *o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/bert_hf\"; output_hidden_states = true; };",
                              NULL, in, "BertModel", NULL, 0);
  check(o, "last_hidden_state", hf, "last_hidden_state", "BertModel last_hidden_state (mask, token types)");
  check(o, "pooler_output", hf, "pooler_output", "BertModel pooler_output");
  for (int k = 0; k < 3; k++) {
    char key[64], what[96];
    snprintf(key, sizeof key, "hidden_states.%d", k);
    snprintf(what, sizeof what, "BertModel %s", key);
    check(o, key, hf, key, what);
  }
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);
  in = sd_pick(hf, ids);
  o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/bert_hf\"; };", NULL, in, "BertModel, ids only", NULL, 0);
  check(o, "last_hidden_state", hf, "plain.last_hidden_state", "BertModel without mask and token types");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  static const char *const xin[] = {"input_ids", "attention_mask", "encoder_hidden_states", "encoder_attention_mask", NULL};
  in = sd_pick(hx, xin);
  o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/bert_hf_cross\"; };", NULL, in,
             "BertModel decoder with cross-attention", NULL, 0);
  check(o, "last_hidden_state", hx, "last_hidden_state", "BertModel decoder (causal, cross-attention, both masks)");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  static const char *const tin[] = {"input_ids", "attention_mask", "encoder_hidden_states", NULL};
  static const char *const tin_text[] = {"input_ids", "attention_mask", NULL};
  in = sd_pick(bt, tin);
  o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/blip_text\"; };", NULL, in, "BlipTextModel encoder", NULL, 0);
  check(o, "last_hidden_state", bt, "last_hidden_state", "BlipTextModel encoder mode (width 32 over 48)");
  check(o, "pooler_output", bt, "pooler_output", "BlipTextModel pooler_output");
  mmp_tensormap_free(o);
  o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/blip_text\"; is_decoder = 1; };", NULL, in,
             "BlipTextModel decoder", NULL, 0);
  check(o, "last_hidden_state", bt, "decoder.last_hidden_state", "BlipTextModel decoder mode (causal)");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);
  in = sd_pick(bt, tin_text);
  o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/blip_text\"; };", NULL, in, "BlipTextModel text only",
             NULL, 0);
  check(o, "last_hidden_state", bt, "text.last_hidden_state", "BlipTextModel without encoder_hidden_states");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* BLIP's med.py BertModel in AR-LDM's checkpoint: text mode of BLIP_Base */
  in = sd_pick(bb, tin_text);
  o = bt_run("encoder = { name = \"bert\"; config = \"%s/blip_base/med_config.json\";"
             " weights = \"%s/blip_base/model.safetensors\"; prefix = \"mm_encoder.text_encoder.\"; };",
             NULL, in, "med.py BertModel (98-row word table)", NULL, 0);
  check(o, "last_hidden_state", bb, "text.last_hidden_state", "med.py BertModel, BLIP_Base text mode");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  {
    char err[4096];
    mmp_tensormap_t *bad = mmp_tensormap_new();
    int64_t s[2] = {1, 3}, v[3] = {1, 500, 2};
    mmp_tensormap_set(bad, "input_ids", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 2, s, v));
    o = bt_run("encoder = { name = \"bert\"; model_dir = \"%s/bert_hf\"; };", NULL, bad, NULL, err, sizeof err);
    like(err, "input_ids[0, 1] = 500", "an id outside the table is refused, naming it");
    mmp_tensormap_free(o);
    o = bt_run("encoder = { name = \"bert\"; config = \"%s/bert_hf/config.json\";"
               " weights = \"%s/bert_hf_cross/model.safetensors\"; };", NULL, bad, NULL, err, sizeof err);
    like(err, "problems", "a decoder checkpoint for an encoder config: one error");
    like(err, "unexpected: encoder.layer.0.crossattention.self.query.weight", "... listing the unexpected tensors");
    mmp_tensormap_free(o);
    mmp_tensormap_free(bad);
  }
  mmp_tensormap_free(hf);
  mmp_tensormap_free(hx);
  mmp_tensormap_free(bt);
  mmp_tensormap_free(bb);
  return done_testing();
}
