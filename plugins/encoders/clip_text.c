/* plugins/encoders/clip_text.c - transformers' CLIPTextModel(WithProjection)
 * and the text half of a CLIPModel: token ids -> last_hidden_state,
 * pooler_output and (with text_projection.weight) text_embeds, with
 * resizable token and position tables (AR-LDM extends both). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/sd_common.h"

typedef struct clip {
  mmp_backend_t *be;
  int64_t hidden, inter, heads, n_layers, n_pos, n_vocab;
  double eps;
  sd_act_t act;
  mmp_tensor_t *tok, *pos;
  sd_block_t *layers;
  sd_norm_t final_ln;
  sd_linear_t proj; /* text_projection (w NULL when the checkpoint has none) */
  mmp_tensormap_t *state;
  bool trainable; /* created with trainable = true: owned f32 weights */
  bool checkpointing; /* gradient_checkpointing */
} clip_t;

static const mmp_key_t clip_keys[] = {
    SD_PART_KEYS("text_encoder"),
    {"max_position_embeddings", MMP_TYPE_INT, "0", "resize the position table to this many rows (0: as stored)", 0, 0},
    {"vocab_size", MMP_TYPE_INT, "0", "resize the token table to this many rows (0: as stored)", 0, 0},
    {"resize_seed", MMP_TYPE_INT, "0", "seed (philox) of the rows added by a resize: normal(0, initializer_range * initializer_factor)", 0, 0},
    SD_TRAINABLE_KEY,
    SD_CHECKPOINTING_KEY,
    {NULL, 0, NULL, NULL, 0, 0}};

static void clip_destroy(void *self) {
  clip_t *c = self;
  if (!c) return;
  mmp_tensor_unref(c->tok);
  mmp_tensor_unref(c->pos);
  for (int64_t i = 0; c->layers && i < c->n_layers; i++) sd_block_free(&c->layers[i]);
  free(c->layers);
  sd_norm_free(&c->final_ln);
  sd_linear_free(&c->proj);
  mmp_tensormap_free(c->state);
  free(c);
}

static int key_int(const mmp_config_t *cfg, const char *key, int64_t *out) {
  *out = 0;
  int rc = mmp_config_get_int(cfg, key, out);
  if (rc == MMP_ENOENT) {
    mmp_error_clear();
    return 0;
  }
  return rc;
}

static int bad_key(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int clip_build(clip_t *c, const json_t *j, sd_weights_t *w, const char *cpath, const mmp_config_t *cfg) {
  int rc;
  double init_range, init_factor;
  const int64_t W = SD_MAX_WIDTH;
  if ((rc = sd_json_int_range(j, "hidden_size", 512, 1, W, &c->hidden)) ||
      (rc = sd_json_int_range(j, "intermediate_size", 2048, 1, 8 * W, &c->inter)) ||
      (rc = sd_json_int_range(j, "num_attention_heads", 8, 1, W, &c->heads)) ||
      (rc = sd_json_int_range(j, "num_hidden_layers", 12, 0, 1000, &c->n_layers)) ||
      (rc = sd_json_float(j, "layer_norm_eps", 1e-5, &c->eps)) ||
      (rc = sd_json_float(j, "initializer_range", 0.02, &init_range)) ||
      (rc = sd_json_float(j, "initializer_factor", 1.0, &init_factor)))
    return mmp_error_prefix("%s: ", cpath);
  if ((rc = sd_act_parse(sd_json_str(j, "hidden_act", "quick_gelu"), &c->act)))
    return mmp_error_prefix("%s: ", cpath);
  if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads || c->n_layers < 0 || c->n_layers > 1000)
    return mmp_error_set(MMP_EDATA, "%s: hidden_size %lld does not divide into %lld heads", cpath,
                         (long long)c->hidden, (long long)c->heads);
  int64_t want_pos, want_vocab, seed;
  if ((rc = key_int(cfg, "max_position_embeddings", &want_pos)) || (rc = key_int(cfg, "vocab_size", &want_vocab)) ||
      (rc = key_int(cfg, "resize_seed", &seed)))
    return rc;
  if (want_pos < 0) return bad_key(cfg, "max_position_embeddings", "must be >= 0");
  if (want_vocab < 0) return bad_key(cfg, "vocab_size", "must be >= 0");
  const char *P = "text_model.";
  /* Table sizes: as stored (a resized checkpoint may differ from its
   * config.json), else from the config. */
  int64_t cfg_vocab, cfg_pos, fs[MMP_MAX_DIMS];
  int fnd;
  if ((rc = sd_json_int_range(j, "vocab_size", 49408, 1, (int64_t)1 << 24, &cfg_vocab)) ||
      (rc = sd_json_int_range(j, "max_position_embeddings", 77, 1, (int64_t)1 << 20, &cfg_pos)))
    return mmp_error_prefix("%s: ", cpath);
  int64_t st[2] = {cfg_vocab, c->hidden}, sp[2] = {cfg_pos, c->hidden};
  if (sd_w_info(w, "text_model.embeddings.token_embedding.weight", &fnd, fs) == 0 && fnd == 2) st[0] = fs[0];
  if (sd_w_info(w, "text_model.embeddings.position_embedding.weight", &fnd, fs) == 0 && fnd == 2) sp[0] = fs[0];
  /* the token table (38 M of ViT-L/14's 123 M parameters) is held in
   * weights_dtype like a linear weight: the embedding op widens the rows it
   * gathers to f32 */
  c->tok = sd_w_mat(w, 2, st, "%sembeddings.token_embedding.weight", P);
  c->pos = sd_w(w, 2, sp, "%sembeddings.position_embedding.weight", P);
  double std = init_range * init_factor;
  if (c->tok && want_vocab) {
    if (want_vocab < c->tok->shape[0])
      return bad_key(cfg, "vocab_size", "smaller than the stored token table");
    c->tok = sd_grow_rows(c->tok, want_vocab, std, (uint64_t)seed);
    if (!c->tok) return mmp_error_code();
  }
  if (c->pos && want_pos) {
    if (want_pos < c->pos->shape[0])
      return bad_key(cfg, "max_position_embeddings", "smaller than the stored position table");
    c->pos = sd_grow_rows(c->pos, want_pos, std, (uint64_t)seed + 1);
    if (!c->pos) return mmp_error_code();
  }
  c->n_vocab = c->tok ? c->tok->shape[0] : 0;
  c->n_pos = c->pos ? c->pos->shape[0] : 0;
  c->layers = calloc((size_t)(c->n_layers ? c->n_layers : 1), sizeof *c->layers);
  if (!c->layers) return mmp_error_set(MMP_ENOMEM, "out of memory");
  static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
  char p[256];
  for (int64_t i = 0; i < c->n_layers; i++) {
    sd_block_t *l = &c->layers[i];
    snprintf(p, sizeof p, "%sencoder.layers.%lld.layer_norm1", P, (long long)i);
    sd_norm_load(&l->ln_attn, w, p, c->hidden, 0, c->eps);
    snprintf(p, sizeof p, "%sencoder.layers.%lld.self_attn", P, (long long)i);
    sd_attn_load(&l->attn, w, p, names, c->hidden, c->hidden, c->hidden, (int)c->heads, true);
    snprintf(p, sizeof p, "%sencoder.layers.%lld.layer_norm2", P, (long long)i);
    sd_norm_load(&l->ln_mlp, w, p, c->hidden, 0, c->eps);
    char p2[256];
    snprintf(p, sizeof p, "%sencoder.layers.%lld.mlp.fc1", P, (long long)i);
    snprintf(p2, sizeof p2, "%sencoder.layers.%lld.mlp.fc2", P, (long long)i);
    sd_mlp_load(&l->mlp, w, p, p2, c->hidden, c->inter, c->act);
  }
  snprintf(p, sizeof p, "%sfinal_layer_norm", P);
  sd_norm_load(&c->final_ln, w, p, c->hidden, 0, c->eps);
  return 0;
}

static int clip_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  char cpath[4096], wpath[4096];
  int rc = sd_locate_part(cfg, SD_PART_CLIP, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  json_t *j = sd_json_load(cpath);
  if (!j) return mmp_error_code();
  clip_t *c = calloc(1, sizeof *c);
  if (!c) {
    json_decref(j);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  c->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_CLIP};
  sd_weights_t *w = sd_weights_for(cfg, wpath, &map, c->be);
  if (!w) {
    json_decref(j);
    clip_destroy(c);
    return mmp_error_code();
  }
  sd_weights_ignore_suffix(w, "embeddings.position_ids");
  /* A CLIPModel folder: the text_config part; its vision tensors are not ours. */
  const json_t *tj = j;
  if (!strcmp(sd_json_str(j, "model_type", ""), "clip")) {
    tj = json_object_get(j, "text_config");
    if (!json_is_object(tj)) rc = mmp_error_set(MMP_EDATA, "%s: no text_config object", cpath);
    else if ((rc = sd_weights_add_scope(w, "text_model.")) == 0) rc = sd_weights_add_scope(w, "text_projection.");
  }
  if (rc == 0) rc = clip_build(c, tj, w, cpath, cfg);
  if (rc == 0 && sd_weights_has(w, "text_projection.weight")) {
    int64_t pd; /* CLIPTextConfig and CLIPConfig both hold projection_dim at their top */
    if ((rc = sd_json_int_range(j, "projection_dim", 512, 1, SD_MAX_WIDTH, &pd))) rc = mmp_error_prefix("%s: ", cpath);
    else sd_linear_load(&c->proj, w, "text_projection", c->hidden, pd, false);
  }
  json_decref(j);
  if (rc) {
    sd_weights_free(w);
    clip_destroy(c);
    return rc;
  }
  c->state = sd_weights_take_collected(w);
  bool trainable = false;
  if (mmp_config_get_bool(cfg, "trainable", &trainable) < 0) trainable = false;
  if (mmp_config_get_bool(cfg, "gradient_checkpointing", &c->checkpointing) < 0) c->checkpointing = false;
  mmp_error_clear();
  c->trainable = trainable;
  if ((rc = sd_weights_finish(w, "clip_text"))) {
    clip_destroy(c);
    return rc;
  }
  *out_self = c;
  return 0;
}

static int clip_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  clip_t *c = self;
  if (method && strcmp(method, "state_dict") == 0) return sd_state_dict(c->state, out);
  if (method && *method && strcmp(method, "forward") && strcmp(method, "encode"))
    return mmp_error_set(MMP_EINVAL, "clip_text: unknown method \"%s\" (forward, state_dict)", method);
  const mmp_tensor_t *ids = mmp_tensormap_need(in, "input_ids");
  if (!ids) return mmp_error_prefix("clip_text: ");
  const mmp_tensor_t *am = mmp_tensormap_get(in, "attention_mask");
  if (ids->ndim != 2) return mmp_error_set(MMP_ESHAPE, "clip_text: input_ids must be [B, L]");
  if (ids->dtype != MMP_I64 && ids->dtype != MMP_I32)
    return mmp_error_set(MMP_EDTYPE, "clip_text: input_ids must be i64 or i32, not %s", mmp_dtype_name(ids->dtype));
  int64_t B = ids->shape[0], L = ids->shape[1];
  if (L > c->n_pos)
    return mmp_error_set(MMP_ESHAPE, "clip_text: %lld tokens but only %lld positions (resize with max_position_embeddings)",
                         (long long)L, (long long)c->n_pos);
  if (am && (am->ndim != 2 || am->shape[0] != B || am->shape[1] != L))
    return mmp_error_set(MMP_ESHAPE, "clip_text: attention_mask must be [B, L] like input_ids");
  /* Ids are host-side inputs: range check and pooling positions. */
  int64_t *hid = malloc((size_t)(B * L) * sizeof *hid);
  int64_t *argmax = malloc((size_t)(B ? B : 1) * sizeof *argmax);
  mmp_tensor_t *ids64 = ids->dtype == MMP_I64 ? mmp_tensor_ref((mmp_tensor_t *)ids) : mmp_convert(ids, MMP_I64);
  if (!hid || !argmax || !ids64 || mmp_tensor_to_host(ids64, hid, (size_t)(B * L) * sizeof *hid) < 0) {
    free(hid);
    free(argmax);
    mmp_tensor_unref(ids64);
    return mmp_error_code() ? mmp_error_code() : mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  for (int64_t b = 0; b < B; b++) {
    argmax[b] = 0;
    for (int64_t i = 0; i < L; i++) {
      int64_t v = hid[b * L + i];
      if (v < 0 || v >= c->n_vocab) {
        free(hid);
        free(argmax);
        mmp_tensor_unref(ids64);
        return mmp_error_set(MMP_EINVAL, "clip_text: input_ids[%lld, %lld] = %lld is outside the vocabulary of %lld",
                             (long long)b, (long long)i, (long long)v, (long long)c->n_vocab);
      }
      if (v > hid[b * L + argmax[b]]) argmax[b] = i;
    }
  }
  free(hid);
  mmp_tensor_t *dev_ids = mmp_tensor_backend(ids64) == c->be ? mmp_tensor_ref(ids64) : mmp_to_backend(ids64, c->be);
  mmp_tensor_unref(ids64);
  mmp_tensor_t *h = dev_ids ? mmp_embedding(c->tok, dev_ids) : NULL;
  mmp_tensor_unref(dev_ids);
  mmp_tensor_t *pos = mmp_slice(c->pos, 0, 0, L, 1);
  h = sd_swap(h, h && pos ? mmp_add(h, pos) : NULL);
  mmp_tensor_unref(pos);
  mmp_tensor_t *mask = am ? sd_input_mask(am, c->be, true) : NULL;
  for (int64_t i = 0; i < c->n_layers && h; i++)
    h = sd_swap(h, sd_block_train(&c->layers[i], c->checkpointing, h, mask, true, NULL, NULL, NULL, NULL, NULL));
  mmp_tensor_unref(mask);
  h = sd_swap(h, sd_layer_norm(&c->final_ln, h));
  if (!h) {
    free(argmax);
    return mmp_error_prefix("clip_text: ");
  }
  /* pooler_output: the hidden state at the first maximal id (the eos token
   * in CLIP's vocabulary), as transformers 4.30 does. */
  mmp_tensor_t **rows = calloc((size_t)(B ? B : 1), sizeof *rows);
  mmp_tensor_t *pooled = NULL;
  if (rows) {
    bool okr = true;
    for (int64_t b = 0; b < B; b++) {
      mmp_tensor_t *r = mmp_slice(h, 0, b, b + 1, 1);
      rows[b] = r ? mmp_slice(r, 1, argmax[b], argmax[b] + 1, 1) : NULL;
      mmp_tensor_unref(r);
      okr = okr && rows[b];
    }
    if (okr) pooled = mmp_concat(rows, (int)B, 0);
    for (int64_t b = 0; b < B; b++) mmp_tensor_unref(rows[b]);
    free(rows);
  }
  free(argmax);
  if (pooled) {
    int64_t s[2] = {B, c->hidden};
    pooled = sd_swap(pooled, mmp_reshape(pooled, 2, s));
  }
  if (!pooled) {
    mmp_tensor_unref(h);
    return mmp_error_prefix("clip_text: ");
  }
  mmp_tensor_t *embeds = c->proj.w ? sd_linear(&c->proj, pooled) : NULL;
  int rc = c->proj.w && !embeds ? mmp_error_prefix("clip_text: ") : 0;
  if (rc == 0) rc = mmp_tensormap_set(out, "last_hidden_state", h);
  else mmp_tensor_unref(h);
  if (rc == 0) rc = mmp_tensormap_set(out, "pooler_output", pooled);
  else mmp_tensor_unref(pooled);
  if (embeds && rc == 0) rc = mmp_tensormap_set(out, "text_embeds", embeds);
  else mmp_tensor_unref(embeds);
  return rc;
}

/* Every weight by its transformers name. The token and position tables
 * are the (possibly resized) ones the forward uses, not the stored ones. */
static int clip_parameters(void *self, mmp_param_cb cb, void *user) {
  clip_t *c = self;
  if (!c->trainable)
    return mmp_error_set(MMP_EINVAL, "clip_text: parameters need an instance created with trainable = true "
                                     "(the weights are otherwise a read-only mapping of the file)");
  for (size_t i = 0; i < mmp_tensormap_size(c->state); i++) {
    const char *name = mmp_tensormap_name(c->state, i);
    mmp_tensor_t *t = mmp_tensormap_at(c->state, i);
    size_t l = strlen(name);
    static const char tok[] = "embeddings.token_embedding.weight", pos[] = "embeddings.position_embedding.weight";
    if (l >= sizeof tok - 1 && strcmp(name + l - (sizeof tok - 1), tok) == 0) t = c->tok;
    else if (l >= sizeof pos - 1 && strcmp(name + l - (sizeof pos - 1), pos) == 0) t = c->pos;
    int rc = cb(user, name, t);
    if (rc) return rc;
  }
  return 0;
}

static const mmp_encoder_ops_t clip_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "clip_text", "1.0",
                            "transformers CLIPTextModel(WithProjection): token ids -> last_hidden_state, "
                            "pooler_output, text_embeds",
                            clip_keys, clip_create, clip_destroy),
    .forward = clip_forward,
    .parameters = clip_parameters,
};

MMP_EXPORT int mmp_plugin_encoder_clip_text_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_clip_text_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &clip_ops.base); }
