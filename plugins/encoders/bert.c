/* plugins/encoders/bert.c - BERT as an encoder: transformers' BertModel and
 * BlipTextModel, BLIP's med.py BertModel (plugins/common/bert.c). input_ids,
 * attention_mask, token_type_ids, encoder_hidden_states,
 * encoder_attention_mask -> last_hidden_state, pooler_output,
 * hidden_states.K. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/towers.h"

typedef struct bertp {
  mmp_backend_t *be;
  sd_bert_t b;
  bool causal, out_hidden;
  mmp_tensormap_t *state;
} bertp_t;

static const mmp_key_t bert_keys[] = {
    SD_TOWER_KEYS,
    {"is_decoder", MMP_TYPE_INT, "-1",
     "causal self-attention: 1 yes, 0 no, -1 the config's is_decoder (BertModel; BLIP's towers: no)", 0, 0},
    {"vocab_size", MMP_TYPE_INT, "0", "grow the word table to the tokenizer's size (0: as stored)", 0, 0},
    {"resize_seed", MMP_TYPE_INT, "0", "seed (philox) of rows added by vocab_size: normal(0, 0.02)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static void bert_destroy(void *self) {
  bertp_t *p = self;
  if (!p) return;
  sd_bert_free(&p->b);
  mmp_tensormap_free(p->state);
  free(p);
}

static int bert_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  char cpath[4096], wpath[4096];
  int rc = sd_tower_locate(cfg, true, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  bertp_t *p = calloc(1, sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  json_t *j = NULL;
  sd_weights_t *w = NULL;
  const char *prefix;
  int64_t dec, vocab, seed;
  if ((rc = sd_cfg_int(cfg, "is_decoder", -1, &dec)) || (rc = sd_cfg_int(cfg, "vocab_size", 0, &vocab)) ||
      (rc = sd_cfg_int(cfg, "resize_seed", 0, &seed)) ||
      (rc = sd_cfg_bool(cfg, "output_hidden_states", false, &p->out_hidden)))
    goto fail;
  if (dec < -1 || dec > 1) {
    rc = sd_cfg_bad(cfg, "is_decoder", "must be -1, 0 or 1");
    goto fail;
  }
  if (vocab < 0) {
    rc = sd_cfg_bad(cfg, "vocab_size", "must be >= 0");
    goto fail;
  }
  if (!(j = sd_json_load(cpath))) {
    rc = mmp_error_code();
    goto fail;
  }
  const json_t *part = j;
  const char *def_prefix = "";
  if (!strcmp(sd_json_str(j, "model_type", ""), "blip")) { /* a BLIP folder: its text part */
    part = json_object_get(j, "text_config");
    def_prefix = "text_model.";
    if (!json_is_object(part)) {
      rc = mmp_error_set(MMP_EDATA, "%s: no text_config object", cpath);
      goto fail;
    }
  }
  if ((rc = sd_cfg_str(cfg, "prefix", def_prefix, &prefix))) goto fail;
  p->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_PLAIN};
  if (!(w = sd_weights_for(cfg, wpath, &map, p->be)) || (rc = sd_weights_set_prefix(w, prefix))) {
    rc = mmp_error_code();
    goto fail;
  }
  sd_weights_ignore_suffix(w, "embeddings.position_ids");
  if ((rc = sd_bert_load(&p->b, part, cpath, w, ""))) goto fail;
  p->state = sd_weights_take_collected(w);
  rc = sd_weights_finish(w, "bert");
  w = NULL;
  if (rc) goto fail;
  if (vocab && (rc = sd_bert_resize_vocab(&p->b, vocab, (uint64_t)seed))) {
    rc = sd_cfg_bad(cfg, "vocab_size", mmp_error_last());
    goto fail;
  }
  p->causal = dec < 0 ? p->b.is_decoder : dec == 1;
  json_decref(j);
  *out_self = p;
  return 0;
fail:
  json_decref(j);
  sd_weights_free(w);
  bert_destroy(p);
  return rc ? rc : mmp_error_code();
}

static int need_mask(const mmp_tensor_t *m, int64_t B, int64_t L, const char *name) {
  if (m && (m->ndim != 2 || m->shape[0] != B || m->shape[1] != L))
    return mmp_error_set(MMP_ESHAPE, "bert: %s must be [%lld, %lld]", name, (long long)B, (long long)L);
  return 0;
}

static int bert_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  bertp_t *p = self;
  if (method && !strcmp(method, "state_dict")) return sd_state_dict(p->state, out);
  if (method && *method && strcmp(method, "forward") && strcmp(method, "encode"))
    return mmp_error_set(MMP_EINVAL, "bert: unknown method \"%s\" (forward, state_dict)", method);
  const mmp_tensor_t *ids = mmp_tensormap_need(in, "input_ids");
  if (!ids) return mmp_error_prefix("bert: ");
  const mmp_tensor_t *am = mmp_tensormap_get(in, "attention_mask"), *tt = mmp_tensormap_get(in, "token_type_ids"),
                     *ctx = mmp_tensormap_get(in, "encoder_hidden_states"),
                     *cm = mmp_tensormap_get(in, "encoder_attention_mask");
  mmp_tensor_t *dids = sd_input_ids(ids, p->b.n_vocab, p->be, "bert", -1);
  if (!dids) return mmp_error_code();
  int64_t B = ids->shape[0], L = ids->shape[1];
  int rc;
  if ((rc = need_mask(am, B, L, "attention_mask")) || (rc = need_mask(tt, B, L, "token_type_ids")) ||
      (rc = (cm && !ctx) ? mmp_error_set(MMP_EINVAL, "bert: encoder_attention_mask without encoder_hidden_states") : 0) ||
      (rc = need_mask(cm, B, ctx ? ctx->shape[1] : 0, "encoder_attention_mask"))) {
    mmp_tensor_unref(dids);
    return rc;
  }
  mmp_tensor_t *dtt = NULL;
  if (tt && !(dtt = p->b.type ? sd_input_ids(tt, p->b.type->shape[0], p->be, "bert: token_type_ids", -1) : NULL)) {
    mmp_tensor_unref(dids);
    return p->b.type ? mmp_error_code() : mmp_error_set(MMP_EINVAL, "bert: token_type_ids given but the model has no token-type table");
  }
  mmp_tensor_t *mask = am ? sd_input_mask(am, p->be, true) : NULL;
  mmp_tensor_t *cmask = cm ? sd_input_mask(cm, p->be, true) : NULL;
  mmp_tensor_t *c = ctx ? sd_input_f32(ctx, p->be) : NULL;
  mmp_tensor_t **hidden = p->out_hidden ? calloc((size_t)p->b.layers + 1, sizeof *hidden) : NULL, *pooled = NULL;
  mmp_tensor_t *h = NULL;
  if ((!am || mask) && (!cm || cmask) && (!ctx || c) && (!p->out_hidden || hidden))
    h = sd_bert(&p->b, dids, mask, dtt, p->causal, c, cmask, hidden, &pooled);
  mmp_tensor_unref(dids);
  mmp_tensor_unref(dtt);
  mmp_tensor_unref(mask);
  mmp_tensor_unref(cmask);
  mmp_tensor_unref(c);
  rc = h ? mmp_tensormap_set(out, "last_hidden_state", h) : mmp_error_prefix("bert: ");
  if (pooled && rc == 0) rc = mmp_tensormap_set(out, "pooler_output", pooled);
  else mmp_tensor_unref(pooled);
  if (hidden) {
    if (rc == 0) rc = sd_put_hidden(out, hidden, p->b.layers + 1);
    for (int64_t k = 0; k <= p->b.layers; k++) mmp_tensor_unref(hidden[k]);
    free(hidden);
  }
  return rc;
}

static const mmp_encoder_ops_t bert_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "bert", "1.0",
                            "BERT (BertModel, BlipTextModel, BLIP's med.py BertModel): input_ids -> "
                            "last_hidden_state, pooler_output",
                            bert_keys, bert_create, bert_destroy),
    .forward = bert_forward,
};

MMP_EXPORT int mmp_plugin_encoder_bert_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_bert_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &bert_ops.base); }
