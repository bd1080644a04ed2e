/* plugins/encoders/blip.c - BLIP's feature extractor (BLIP_Base of BLIP and
 * of AR-LDM's blip_override): a ViT and a BERT tower from one checkpoint,
 * with the methods image, text and multimodal -> last_hidden_state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/towers.h"

typedef enum { MODE_IMAGE, MODE_TEXT, MODE_MULTIMODAL } blip_mode_t;

typedef struct blipp {
  mmp_backend_t *be;
  sd_vit_t vit;
  sd_bert_t text;
  int64_t enc_id;
  blip_mode_t mode;
  bool out_hidden;
  bool trainable; /* created with trainable = true: owned f32 weights */
  double drop_path;                 /* the ViT's drop_path_rate in train mode */
  mmp_drop_path_draws_t path_draws; /* drop_path_draws */
  mmp_rng_t *rng;                   /* train mode's generator, set from each call's rng_state (kept: a
                                       checkpoint region replays its draws from it in the backward) */
  mmp_tensormap_t *state;
} blipp_t;

static const mmp_key_t blip_keys[] = {
    SD_TOWER_KEYS,
    {"vit", MMP_TYPE_STRING, "\"\"", "BLIP's vision tower: \"base\" or \"large\" (\"\": sized from the weights)", 0, 0},
    {"num_heads", MMP_TYPE_INT, "0", "vision attention heads when sized from the weights (0: 12 at 768, 16 at 1024)", 0, 0},
    {"vocab_size", MMP_TYPE_INT, "0", "grow the word table to the tokenizer's size (0: as stored)", 0, 0},
    {"resize_seed", MMP_TYPE_INT, "0", "seed (philox) of rows added by vocab_size: normal(0, 0.02)", 0, 0},
    {"enc_token_id", MMP_TYPE_INT, "30523", "the tokenizer's [ENC] id, put first in multimodal mode", 0, 0},
    {"mode", MMP_TYPE_STRING, "\"multimodal\"", "the default method: image, text or multimodal", 0, 0},
    {"drop_path_rate", MMP_TYPE_FLOAT, "-1", "train mode: the ViT's stochastic depth, linspace(0, rate, depth) per block "
     "(-1: as BLIP's create_vit, 0.1 for ViT-L, 0 for ViT-B and transformers' BLIP)", 0, 0},
    {"drop_path_draws", MMP_TYPE_STRING, "\"bernoulli\"", "train mode: the drop path draws of timm >= 0.5 (\"bernoulli\", "
     "what AR-LDM's unpinned requirement installs) or of timm 0.4.12 (\"rand\", BLIP's pin)", 0, 0},
    SD_TRAINABLE_KEY,
    SD_CHECKPOINTING_KEY,
    {NULL, 0, NULL, NULL, 0, 0}};

static void blip_destroy(void *self) {
  blipp_t *p = self;
  if (!p) return;
  sd_vit_free(&p->vit);
  sd_bert_free(&p->text);
  mmp_rng_free(p->rng);
  mmp_tensormap_free(p->state);
  free(p);
}

static int parse_mode(const char *s, blip_mode_t *m) {
  if (!strcmp(s, "image")) *m = MODE_IMAGE;
  else if (!strcmp(s, "text")) *m = MODE_TEXT;
  else if (!strcmp(s, "multimodal")) *m = MODE_MULTIMODAL;
  else return MMP_ENOENT;
  return 0;
}

/* BLIP's VisionTransformer as med_config.json may describe it (mmpipe's
 * keys: BLIP takes the tower from its yaml's `vit` and `image_size`, which
 * only name ViT-B/16 and ViT-L/16): vision_width (absent: nothing to do),
 * vision_depth, vision_heads, vision_patch_size, vision_mlp_ratio, ViT-B's
 * values by default; image_size is read by sd_vit_load when no weights
 * give the grid. transformers and BLIP ignore these keys. */
static int vision_from_json(const json_t *j, const char *cpath, sd_vit_t *v) {
  int64_t width;
  double ratio;
  int rc;
  if ((rc = sd_json_int_range(j, "vision_width", 0, 0, 65536, &width))) return mmp_error_prefix("%s: ", cpath);
  if (!width) return 0;
  if ((rc = sd_json_int_range(j, "vision_depth", 12, 0, 1000, &v->layers)) ||
      (rc = sd_json_int_range(j, "vision_heads", 12, 1, 4096, &v->heads)) ||
      (rc = sd_json_int_range(j, "vision_patch_size", 16, 1, 1024, &v->patch)) ||
      (rc = sd_json_float(j, "vision_mlp_ratio", 4.0, &ratio)))
    return mmp_error_prefix("%s: ", cpath);
  /* timm's int(embed_dim * mlp_ratio) */
  if (!(ratio > 0.0 && ratio * (double)width <= 262144.0) || (int64_t)(ratio * (double)width) < 1)
    return mmp_error_set(MMP_EDATA, "%s: vision_mlp_ratio %g with vision_width %lld: want a hidden size in [1, 262144]",
                         cpath, ratio, (long long)width);
  v->dim = width, v->inter = (int64_t)(ratio * (double)width), v->chans = 3;
  return 0;
}

static int blip_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  char cpath[4096], wpath[4096];
  int rc = sd_tower_locate(cfg, true, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  blipp_t *p = calloc(1, sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  json_t *j = NULL;
  sd_weights_t *w = NULL;
  const char *prefix, *preset, *mode, *draws;
  int64_t heads, vocab, seed;
  double rate;
  bool ckpt;
  if ((rc = sd_cfg_str(cfg, "prefix", "", &prefix)) || (rc = sd_cfg_str(cfg, "vit", "", &preset)) ||
      (rc = sd_cfg_str(cfg, "mode", "multimodal", &mode)) || (rc = sd_cfg_int(cfg, "num_heads", 0, &heads)) ||
      (rc = sd_cfg_int(cfg, "vocab_size", 0, &vocab)) || (rc = sd_cfg_int(cfg, "resize_seed", 0, &seed)) ||
      (rc = sd_cfg_int(cfg, "enc_token_id", 30523, &p->enc_id)) ||
      (rc = sd_cfg_bool(cfg, "output_hidden_states", false, &p->out_hidden)) ||
      (rc = sd_cfg_bool(cfg, "trainable", false, &p->trainable)) || (rc = sd_cfg_float(cfg, "drop_path_rate", -1.0, &rate)) ||
      (rc = sd_cfg_str(cfg, "drop_path_draws", "bernoulli", &draws)) ||
      (rc = sd_cfg_bool(cfg, "gradient_checkpointing", false, &ckpt)))
    goto fail;
  if (!(rate == -1.0 || (rate >= 0.0 && rate < 1.0))) {
    rc = sd_cfg_bad(cfg, "drop_path_rate", "must lie in [0, 1) (or -1: BLIP's default)");
    goto fail;
  }
  if (strcmp(draws, "bernoulli") && strcmp(draws, "rand")) {
    rc = sd_cfg_bad(cfg, "drop_path_draws", "must be \"bernoulli\" (timm >= 0.5) or \"rand\" (timm 0.4.12)");
    goto fail;
  }
  p->path_draws = strcmp(draws, "rand") ? MMP_DROP_PATH_BERNOULLI : MMP_DROP_PATH_RAND;
  if (parse_mode(mode, &p->mode)) {
    rc = sd_cfg_bad(cfg, "mode", "must be image, text or multimodal");
    goto fail;
  }
  if (preset[0] && sd_vit_blip_preset(preset, &p->vit)) {
    rc = sd_cfg_bad(cfg, "vit", "must be \"base\" or \"large\"");
    goto fail;
  }
  if (heads < 0 || heads > 4096 || vocab < 0) {
    rc = sd_cfg_bad(cfg, heads < 0 || heads > 4096 ? "num_heads" : "vocab_size", "out of range");
    goto fail;
  }
  if (!(j = sd_json_load(cpath))) {
    rc = mmp_error_code();
    goto fail;
  }
  /* A transformers BLIP folder (config.json of model_type "blip": vision_model.*
   * and the retrieval model's text_encoder.*), else BLIP's own checkpoint
   * (visual_encoder.*, text_encoder.*) with its med_config.json. */
  bool hf = !strcmp(sd_json_str(j, "model_type", ""), "blip");
  const json_t *vj = hf ? json_object_get(j, "vision_config") : NULL, *tj = hf ? json_object_get(j, "text_config") : j;
  if (hf && (!json_is_object(vj) || !json_is_object(tj))) {
    rc = mmp_error_set(MMP_EDATA, "%s: a BLIP config needs vision_config and text_config objects", cpath);
    goto fail;
  }
  if (!hf && !preset[0] && (rc = vision_from_json(j, cpath, &p->vit))) goto fail;
  if (heads) p->vit.heads = heads;
  const char *vp = hf ? "vision_model." : "visual_encoder.", *tp = "text_encoder.";
  p->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_PLAIN};
  if (!(w = sd_weights_for(cfg, wpath, &map, p->be)) || (rc = sd_weights_set_prefix(w, prefix)) ||
      (rc = sd_weights_add_scope(w, vp)) || (rc = sd_weights_add_scope(w, tp))) {
    rc = mmp_error_code();
    goto fail;
  }
  sd_weights_ignore_suffix(w, "embeddings.position_ids");
  /* (BLIP's kind reads only image_size of @j: random weights' grid) */
  if ((rc = sd_vit_load(&p->vit, hf ? SD_VIT_BLIP_HF : SD_VIT_BLIP, hf ? vj : j, cpath, w, vp))) goto fail;
  p->text.enc_width = p->vit.dim; /* as BLIP_Base sets med_config.encoder_width */
  /* BLIP's create_vit: drop_path_rate = 0.1 or the argument for 'large',
   * 0 or the argument for 'base' (BLIP_Base passes none); transformers'
   * BlipVisionModel has no stochastic depth */
  if (rate == -1.0) rate = !hf && p->vit.dim == 1024 ? 0.1 : 0.0;
  else if (hf && rate > 0.0) {
    rc = sd_cfg_bad(cfg, "drop_path_rate", "transformers' BLIP vision model has no stochastic depth");
    goto fail;
  }
  p->drop_path = rate;
  p->vit.checkpointing = p->text.checkpointing = ckpt;
  if ((rc = sd_bert_load(&p->text, tj, cpath, w, tp))) goto fail;
  p->state = sd_weights_take_collected(w);
  rc = sd_weights_finish(w, "blip");
  w = NULL;
  if (rc) goto fail;
  if (!p->text.cross || p->text.enc_width != p->vit.dim) {
    rc = mmp_error_set(MMP_EDATA, "%s: the text tower must cross-attend to the vision width %lld (add_cross_attention, encoder_width)",
                       cpath, (long long)p->vit.dim);
    goto fail;
  }
  if (vocab && (rc = sd_bert_resize_vocab(&p->text, vocab, (uint64_t)seed))) {
    rc = sd_cfg_bad(cfg, "vocab_size", mmp_error_last());
    goto fail;
  }
  if (p->enc_id < 0 || p->enc_id >= p->text.n_vocab) {
    rc = sd_cfg_bad(cfg, "enc_token_id", "outside the word table (set vocab_size to the tokenizer's size)");
    goto fail;
  }
  json_decref(j);
  *out_self = p;
  return 0;
fail:
  json_decref(j);
  sd_weights_free(w);
  blip_destroy(p);
  return rc ? rc : mmp_error_code();
}

/* The generator of a train-mode forward from the input "rng_state" (u8
 * [MMP_RNG_STATE_SIZE], mmp_rng_get_state's bytes; its mode is the first
 * little-endian u32): *@g stays NULL without one (eval mode). */
static int train_rng(const mmp_tensormap_t *in, mmp_rng_t *keep, mmp_rng_t **g) {
  *g = NULL;
  const mmp_tensor_t *t = mmp_tensormap_get(in, "rng_state");
  if (!t) return 0;
  unsigned char buf[MMP_RNG_STATE_SIZE];
  if (t->dtype != MMP_U8 || mmp_tensor_numel(t) != MMP_RNG_STATE_SIZE || mmp_tensor_to_host(t, buf, sizeof buf) < 0) {
    char d[96];
    return mmp_error_set(MMP_EINVAL, "blip: rng_state %s must be u8 [%d] (mmp_rng_get_state)", mmp_tensor_describe(t, d, sizeof d),
                         MMP_RNG_STATE_SIZE);
  }
  uint32_t mode = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 24;
  /* the instance's generator when its mode fits (see blipp_t.rng), else a new one */
  mmp_rng_t *r = keep && (uint32_t)mmp_rng_mode(keep) == mode ? keep : mode <= MMP_RNG_NUMPY ? mmp_rng_new(0, (mmp_rng_mode_t)mode) : NULL;
  if (!r || mmp_rng_set_state(r, buf, sizeof buf) < 0) {
    if (r != keep) mmp_rng_free(r);
    return mmp_error_prefix("blip: rng_state: ");
  }
  *g = r;
  return 0;
}

/* The input "rng_rows" (i64 [2]: rows_total, first row; optional): this
 * call's @B rows are rows [first, first + B) of a batch of rows_total, and
 * the dropout and drop path draw as the whole batch would (data
 * parallelism: mmp_dropout_rows). Absent: the call is the whole batch. */
static int train_rows(const mmp_tensormap_t *in, int64_t B, sd_dropout_t *dp) {
  const mmp_tensor_t *t = mmp_tensormap_get(in, "rng_rows");
  dp->rows_total = dp->rows_off = 0;
  if (!t) return 0;
  int64_t v[2] = {-1, -1};
  if (t->dtype != MMP_I64 || mmp_tensor_numel(t) != 2 || mmp_tensor_to_host(t, v, sizeof v) < 0 || v[1] < 0 || v[0] < 1 ||
      v[1] > v[0] || B > v[0] - v[1]) {
    char d[96];
    return mmp_error_set(MMP_EINVAL, "blip: rng_rows %s must be i64 [2] = {rows of the whole batch, first row of this call} "
                         "holding this call's %lld rows (got %lld, %lld)", mmp_tensor_describe(t, d, sizeof d), (long long)B,
                         (long long)v[0], (long long)v[1]);
  }
  dp->rows_total = v[0], dp->rows_off = v[1];
  return 0;
}

/* The advanced state of @g as the output "rng_state". */
static int put_rng(mmp_tensormap_t *out, const mmp_rng_t *g) {
  unsigned char buf[MMP_RNG_STATE_SIZE];
  int64_t n = MMP_RNG_STATE_SIZE;
  int rc = mmp_rng_get_state(g, buf, sizeof buf);
  mmp_tensor_t *t = rc < 0 ? NULL : mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 1, &n, buf);
  return t ? mmp_tensormap_set(out, "rng_state", t) : mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
}

static int blip_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  blipp_t *p = self;
  if (method && !strcmp(method, "state_dict")) return sd_state_dict(p->state, out);
  blip_mode_t mode = p->mode;
  if (method && *method && strcmp(method, "forward") && strcmp(method, "encode") && parse_mode(method, &mode))
    return mmp_error_set(MMP_EINVAL, "blip: unknown method \"%s\" (image, text, multimodal, forward, state_dict)",
                         method);
  int64_t nh = (mode == MODE_IMAGE ? p->vit.layers : p->text.layers) + 1;
  mmp_rng_t *g = NULL;
  int rc = train_rng(in, p->rng, &g);
  if (rc < 0) return rc;
  if (g && g != p->rng) { /* kept for the instance's life: a tape's checkpoint regions may replay from it */
    mmp_rng_free(p->rng);
    p->rng = g;
  }
  mmp_tensor_t **hidden = p->out_hidden ? calloc((size_t)nh, sizeof *hidden) : NULL, *h = NULL, *img = NULL;
  if (p->out_hidden && !hidden) return mmp_error_set(MMP_ENOMEM, "out of memory");
  sd_dropout_t train = {g, 0.0, 0.0, p->drop_path, p->path_draws, 0, 0};
  const mmp_tensor_t *rows_of = mmp_tensormap_get(in, mode == MODE_TEXT ? "input_ids" : "pixel_values");
  if (g && (rc = train_rows(in, rows_of && rows_of->ndim ? rows_of->shape[0] : 0, &train)) < 0) {
    free(hidden);
    return rc;
  }
  if (mode != MODE_TEXT) {
    const mmp_tensor_t *px = mmp_tensormap_need(in, "pixel_values");
    mmp_tensor_t *x = px ? sd_input_f32(px, p->be) : NULL;
    img = g ? sd_vit_drop_path(&p->vit, x, mode == MODE_IMAGE ? hidden : NULL, &train)
            : sd_vit(&p->vit, x, mode == MODE_IMAGE ? hidden : NULL, NULL);
    mmp_tensor_unref(x);
    if (!img) rc = mmp_error_prefix("blip: ");
    if (mode == MODE_IMAGE) h = img, img = NULL;
  }
  if (rc == 0 && mode != MODE_IMAGE) {
    const mmp_tensor_t *ids = mmp_tensormap_need(in, "input_ids"), *am = mmp_tensormap_get(in, "attention_mask");
    /* BLIP writes [ENC] into the caller's ids; a copy takes it here. */
    mmp_tensor_t *dids = ids ? sd_input_ids(ids, p->text.n_vocab, p->be, "blip", mode == MODE_MULTIMODAL ? p->enc_id : -1) : NULL;
    if (!ids) mmp_error_prefix("blip: ");
    if (dids && img && img->shape[0] != ids->shape[0]) {
      mmp_error_set(MMP_ESHAPE, "blip: %lld images for %lld texts", (long long)img->shape[0], (long long)ids->shape[0]);
      mmp_tensor_unref(dids);
      dids = NULL;
    }
    if (dids && am && (am->ndim != 2 || am->shape[0] != ids->shape[0] || am->shape[1] != ids->shape[1])) {
      mmp_error_set(MMP_ESHAPE, "blip: attention_mask must be [B, L] like input_ids");
      mmp_tensor_unref(dids);
      dids = NULL;
    }
    mmp_tensor_t *mask = dids && am ? sd_input_mask(am, p->be, true) : NULL;
    if (dids && (!am || mask)) {
      /* only the tower's errors lack the plugin's name; the input checks above carry it */
      h = g ? sd_bert_dropout(&p->text, &train, dids, mask, NULL, false, img, NULL, hidden, NULL)
            : sd_bert(&p->text, dids, mask, NULL, false, img, NULL, hidden, NULL);
      if (!h) mmp_error_prefix("blip: ");
    }
    mmp_tensor_unref(dids);
    mmp_tensor_unref(mask);
    if (!h) rc = mmp_error_code() ? mmp_error_code() : MMP_EINVAL;
  }
  mmp_tensor_unref(img);
  if (rc == 0) rc = mmp_tensormap_set(out, "last_hidden_state", h);
  else mmp_tensor_unref(h);
  if (rc == 0 && g) rc = put_rng(out, g);
  if (hidden) {
    if (rc == 0) rc = sd_put_hidden(out, hidden, nh);
    for (int64_t k = 0; k < nh; k++) mmp_tensor_unref(hidden[k]);
    free(hidden);
  }
  return rc;
}

/* Every weight by the checkpoint's names (visual_encoder.*, text_encoder.*,
 * after `prefix`), the fused qkv of the vision blocks as stored (a tape
 * sees its uses: sd_attn's qkv), the word table the forward uses (grown by
 * vocab_size). */
static int blip_parameters(void *self, mmp_param_cb cb, void *user) {
  blipp_t *p = self;
  if (!p->trainable)
    return mmp_error_set(MMP_EINVAL, "blip: parameters need an instance created with trainable = true "
                                     "(the weights are otherwise a read-only mapping of the file)");
  static const char word[] = "embeddings.word_embeddings.weight";
  for (size_t i = 0; i < mmp_tensormap_size(p->state); i++) {
    const char *name = mmp_tensormap_name(p->state, i);
    mmp_tensor_t *t = mmp_tensormap_at(p->state, i);
    size_t l = strlen(name);
    if (l >= sizeof word - 1 && !strcmp(name + l - (sizeof word - 1), word)) t = p->text.word;
    int rc = cb(user, name, t);
    if (rc) return rc;
  }
  return 0;
}

static const mmp_encoder_ops_t blip_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "blip", "1.0",
                            "BLIP feature extractor (BLIP_Base): image, text and multimodal features",
                            blip_keys, blip_create, blip_destroy),
    .forward = blip_forward,
    .parameters = blip_parameters,
};

MMP_EXPORT int mmp_plugin_encoder_blip_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_blip_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &blip_ops.base); }
