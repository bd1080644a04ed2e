/* plugins/encoders/blip_retrieval.c - BLIP's image-text retrieval model
 * (salesforce/BLIP models/blip_retrieval.py BLIP_Retrieval) at inference:
 * the ViT and BERT towers of plugins/common, vision_proj / text_proj to the
 * joint space with L2 normalisation (ITC), and the ITM head over the text
 * tower run with [ENC] first and cross-attention to the image tokens. The
 * momentum towers and queues of the checkpoint are training-only: loaded
 * names are counted and ignored. See doc/plugins/blip_retrieval.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/towers.h"

typedef struct blipr {
  mmp_backend_t *be;
  sd_vit_t vit;
  sd_bert_t text;
  sd_linear_t vision_proj, text_proj, itm_head;
  mmp_tensor_t *temp; /* [] or [1] as stored */
  int64_t embed_dim, enc_id;
  mmp_tensormap_t *state;
} blipr_t;

static const mmp_key_t blipr_keys[] = {SD_TOWER_KEYS,
                                       {"vit", MMP_TYPE_STRING, "\"\"",
                                        "BLIP's vision tower: \"base\" or \"large\" (\"\": sized from the "
                                        "weights)",
                                        0, 0},
                                       {"num_heads", MMP_TYPE_INT, "0",
                                        "vision attention heads when sized from the weights (0: 12 at 768, 16 at "
                                        "1024)",
                                        0, 0},
                                       {"enc_token_id", MMP_TYPE_INT, "30523",
                                        "the tokenizer's [ENC] id, put first for ITM (bert-base-uncased + BLIP: "
                                        "30523)",
                                        0, 0},
                                       {NULL, 0, NULL, NULL, 0, 0}};

/* The training-only parts of a BLIP_Retrieval checkpoint. */
static const char *const momentum[] = {"visual_encoder_m.", "text_encoder_m.", "vision_proj_m.", "text_proj_m.",
                                       "image_queue",       "text_queue",      "idx_queue",      "ptr_queue"};

static void blipr_destroy(void *self) {
  blipr_t *p = self;
  if (!p) return;
  sd_vit_free(&p->vit);
  sd_bert_free(&p->text);
  sd_linear_free(&p->vision_proj);
  sd_linear_free(&p->text_proj);
  sd_linear_free(&p->itm_head);
  mmp_tensor_unref(p->temp);
  mmp_tensormap_free(p->state);
  free(p);
}

static int blipr_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  char cpath[4096], wpath[4096];
  int rc = sd_tower_locate(cfg, true, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  blipr_t *p = calloc(1, sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  json_t *j = NULL;
  sd_weights_t *w = NULL;
  const char *prefix, *preset;
  int64_t heads;
  if ((rc = sd_cfg_str(cfg, "prefix", "", &prefix)) || (rc = sd_cfg_str(cfg, "vit", "", &preset)) ||
      (rc = sd_cfg_int(cfg, "num_heads", 0, &heads)) || (rc = sd_cfg_int(cfg, "enc_token_id", 30523, &p->enc_id)))
    goto fail;
  if (preset[0] && sd_vit_blip_preset(preset, &p->vit)) {
    rc = sd_cfg_bad(cfg, "vit", "must be \"base\" or \"large\"");
    goto fail;
  }
  if (heads < 0 || heads > 4096) {
    rc = sd_cfg_bad(cfg, "num_heads", "out of range");
    goto fail;
  }
  if (heads) p->vit.heads = heads;
  if (!(j = sd_json_load(cpath))) {
    rc = mmp_error_code();
    goto fail;
  }
  p->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_PLAIN};
  static const char *const scopes[] = {"visual_encoder.", "text_encoder.", "vision_proj.",
                                       "text_proj.",      "itm_head.",     "temp"};
  if (!(w = sd_weights_for(cfg, wpath, &map, p->be)) || (rc = sd_weights_set_prefix(w, prefix))) {
    rc = mmp_error_code();
    goto fail;
  }
  for (size_t k = 0; k < sizeof scopes / sizeof *scopes; k++)
    if ((rc = sd_weights_add_scope(w, scopes[k]))) goto fail;
  sd_weights_ignore_suffix(w, "embeddings.position_ids");
  if ((rc = sd_vit_load(&p->vit, SD_VIT_BLIP, NULL, cpath, w, "visual_encoder."))) goto fail;
  p->text.enc_width = p->vit.dim; /* as BLIP_Retrieval sets med_config.encoder_width */
  if ((rc = sd_bert_load(&p->text, j, cpath, w, "text_encoder."))) goto fail;
  int nd;
  int64_t s[MMP_MAX_DIMS];
  p->embed_dim = sd_w_info(w, "vision_proj.weight", &nd, s) == 0 && nd == 2 ? s[0] : 256;
  if (p->embed_dim <= 0 || p->embed_dim > 65536) {
    rc = mmp_error_set(MMP_EDATA, "%s: vision_proj.weight: embedding width %lld", wpath, (long long)p->embed_dim);
    goto fail;
  }
  sd_linear_load(&p->vision_proj, w, "vision_proj", p->vit.dim, p->embed_dim, true);
  sd_linear_load(&p->text_proj, w, "text_proj", p->text.dim, p->embed_dim, true);
  sd_linear_load(&p->itm_head, w, "itm_head", p->text.dim, 2, true);
  if (sd_w_info(w, "temp", &nd, s) == 0) { /* nn.Parameter(0.07 * torch.ones([])) */
    if (nd == 0 || (nd == 1 && s[0] == 1))
      p->temp = sd_w(w, nd, s, "temp");
    else
      p->temp = sd_w(w, 0, s, "temp"); /* records the mis-shaped tensor */
  }
  for (size_t k = 0; k < sizeof momentum / sizeof *momentum; k++) {
    int64_t c = sd_weights_count_unused(w, momentum[k]);
    if (c)
      MMP_INFO("blip_retrieval", "ignored (training only): %s%s: %lld tensor%s", momentum[k],
               momentum[k][strlen(momentum[k]) - 1] == '.' ? "*" : "", (long long)c, c == 1 ? "" : "s");
  }
  p->state = sd_weights_take_collected(w);
  rc = sd_weights_finish(w, "blip_retrieval");
  w = NULL;
  if (rc) goto fail;
  if (!p->text.cross || p->text.enc_width != p->vit.dim) {
    rc = mmp_error_set(MMP_EDATA,
                       "%s: the text tower must cross-attend to the vision "
                       "width %lld (add_cross_attention)",
                       cpath, (long long)p->vit.dim);
    goto fail;
  }
  if (p->enc_id < 0 || p->enc_id >= p->text.n_vocab) {
    rc = sd_cfg_bad(cfg, "enc_token_id", "outside the word table");
    goto fail;
  }
  json_decref(j);
  *out_self = p;
  return 0;
fail:
  json_decref(j);
  sd_weights_free(w);
  blipr_destroy(p);
  return rc ? rc : mmp_error_code();
}

/* F.normalize(x, dim=-1): x / max(||x||_2, 1e-12). (transfer full) */
static mmp_tensor_t *l2norm(mmp_tensor_t *x) {
  if (!x) return NULL;
  mmp_tensor_t *sq = mmp_mul(x, x);
  mmp_tensor_t *n = sq ? mmp_sum(sq, x->ndim - 1, true) : NULL;
  n = sd_swap(n, n ? mmp_sqrt(n) : NULL);
  n = sd_swap(n, n ? mmp_clamp(n, 1e-12, 3.4e38) : NULL);
  mmp_tensor_t *r = n ? mmp_div(x, n) : NULL;
  mmp_tensor_unref(sq);
  mmp_tensor_unref(n);
  return r;
}

/* Row 0 of [B, L, D] as [B, D]. (transfer full) */
static mmp_tensor_t *first_token(mmp_tensor_t *h) {
  mmp_tensor_t *f = mmp_slice(h, 1, 0, 1, 1);
  int64_t s2[2] = {h->shape[0], h->shape[2]};
  return sd_swap(f, f ? mmp_reshape(f, 2, s2) : NULL);
}

/* proj(x) normalised, and the same of the first token. */
static int project(const sd_linear_t *proj, mmp_tensor_t *h, mmp_tensormap_t *out, const char *feat, const char *all) {
  mmp_tensor_t *f = first_token(h);
  f = sd_swap(f, f ? sd_linear(proj, f) : NULL);
  f = sd_swap(f, l2norm(f));
  mmp_tensor_t *a = f ? sd_linear(proj, h) : NULL;
  a = sd_swap(a, l2norm(a));
  if (!f || !a) {
    mmp_tensor_unref(f);
    mmp_tensor_unref(a);
    return mmp_error_prefix("blip_retrieval: ");
  }
  int rc = mmp_tensormap_set(out, feat, f);
  if (rc)
    mmp_tensor_unref(a);
  else
    rc = mmp_tensormap_set(out, all, a);
  return rc;
}

static mmp_tensor_t *image_embeds(blipr_t *p, const mmp_tensormap_t *in) {
  const mmp_tensor_t *px = mmp_tensormap_need(in, "pixel_values");
  mmp_tensor_t *x = px ? sd_input_f32(px, p->be) : NULL;
  mmp_tensor_t *img = x ? sd_vit(&p->vit, x, NULL, NULL) : NULL;
  mmp_tensor_unref(x);
  if (!img) mmp_error_prefix("blip_retrieval: ");
  return img;
}

/* The text tower on input_ids / attention_mask: mode text ([CLS], no
 * image) when @img and @kv are NULL, else ITM ([ENC] first, every image
 * token): cross-attention to @img [B, N, D], or to the image's cached keys
 * and values @kv (2 * layers tensors of batch B or 1). */
static mmp_tensor_t *text_tower(blipr_t *p, const mmp_tensormap_t *in, const mmp_tensor_t *img,
                                const mmp_tensor_t *const *kv) {
  const mmp_tensor_t *ids = mmp_tensormap_need(in, "input_ids"), *am = mmp_tensormap_get(in, "attention_mask");
  if (!ids) {
    mmp_error_prefix("blip_retrieval: ");
    return NULL;
  }
  bool itm = img || kv;
  mmp_tensor_t *dids = sd_input_ids(ids, p->text.n_vocab, p->be, "blip_retrieval", itm ? p->enc_id : -1);
  int64_t nimg = img ? img->shape[0] : kv ? kv[0]->shape[0] : 0;
  if (dids && itm && nimg != ids->shape[0] && nimg != 1) {
    mmp_error_set(MMP_ESHAPE, "blip_retrieval: %lld images for %lld texts (give one, or one per text)",
                  (long long)nimg, (long long)ids->shape[0]);
    dids = sd_swap(dids, NULL);
  }
  if (dids && am && (am->ndim != 2 || am->shape[0] != ids->shape[0] || am->shape[1] != ids->shape[1])) {
    mmp_error_set(MMP_ESHAPE, "blip_retrieval: attention_mask must be [B, L] like input_ids");
    dids = sd_swap(dids, NULL);
  }
  mmp_tensor_t *mask = dids && am ? sd_input_mask(am, p->be, true) : NULL, *h = NULL;
  if (dids && (!am || mask)) {
    if (kv)
      h = sd_bert_cached(&p->text, dids, mask, NULL, false, kv, NULL, NULL, NULL);
    else if (img && nimg != ids->shape[0]) { /* one image, several texts: its keys and values once */
      mmp_tensor_t **own = calloc((size_t)(2 * p->text.layers + 1), sizeof *own);
      if (!own)
        mmp_error_set(MMP_ENOMEM, "out of memory");
      else if (sd_bert_cross_kv(&p->text, img, own) == 0)
        h = sd_bert_cached(&p->text, dids, mask, NULL, false, (const mmp_tensor_t *const *)own, NULL, NULL, NULL);
      for (int64_t i = 0; own && i < 2 * p->text.layers; i++) mmp_tensor_unref(own[i]);
      free(own);
    } else {
      h = sd_bert(&p->text, dids, mask, NULL, false, img, NULL, NULL, NULL);
    }
  }
  mmp_tensor_unref(dids);
  mmp_tensor_unref(mask);
  if (!h) mmp_error_prefix("blip_retrieval: ");
  return h;
}

/* image_embeds [B, N, D] from an earlier "image" call, else pixel_values
 * through the ViT. (transfer full) */
static mmp_tensor_t *itm_image(blipr_t *p, const mmp_tensormap_t *in) {
  const mmp_tensor_t *ie = mmp_tensormap_get(in, "image_embeds");
  mmp_tensor_t *img = ie ? sd_input_f32(ie, p->be) : image_embeds(p, in);
  if (img && (img->ndim != 3 || img->shape[2] != p->vit.dim)) {
    char d[96];
    mmp_error_set(MMP_ESHAPE, "blip_retrieval: image_embeds %s must be [B, N, %lld]",
                  mmp_tensor_describe(img, d, sizeof d), (long long)p->vit.dim);
    img = sd_swap(img, NULL);
  }
  return img;
}

/* The "cross_key.K" / "cross_value.K" inputs of a cached ITM, in layer
 * order into @kv (transfer none); 0 when there are none (*have false). */
static int cached_kv(const blipr_t *p, const mmp_tensormap_t *in, const mmp_tensor_t **kv, bool *have) {
  char n[64];
  *have = mmp_tensormap_get(in, "cross_key.0") != NULL;
  for (int64_t i = 0; *have && i < p->text.layers; i++)
    for (int j = 0; j < 2; j++) {
      snprintf(n, sizeof n, "%s.%lld", j ? "cross_value" : "cross_key", (long long)i);
      if (!(kv[2 * i + j] = mmp_tensormap_get(in, n)))
        return mmp_error_set(MMP_EINVAL, "blip_retrieval: %s missing (the text tower has %lld layers; give every "
                             "output of the cross_kv method)", n, (long long)p->text.layers);
      if (mmp_tensor_backend(kv[2 * i + j]) != p->be || kv[2 * i + j]->dtype != MMP_F32)
        return mmp_error_set(MMP_EINVAL, "blip_retrieval: %s must be f32 on the model's backend (as cross_kv "
                             "gives it)", n);
    }
  return 0;
}

static int blipr_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  blipr_t *p = self;
  int rc = 0;
  if (!method || !*method || !strcmp(method, "forward"))
    return mmp_error_set(MMP_EINVAL, "blip_retrieval: give a method: image, text, itm, cross_kv, temp or state_dict");
  if (!strcmp(method, "state_dict")) return sd_state_dict(p->state, out);
  if (!strcmp(method, "temp")) {
    if (!p->temp) return mmp_error_set(MMP_ENOENT, "blip_retrieval: the checkpoint has no temp");
    int64_t one[1] = {1};
    mmp_tensor_t *t = mmp_reshape(p->temp, 1, one);
    return t ? mmp_tensormap_set(out, "temp", t) : mmp_error_code();
  }
  if (!strcmp(method, "image")) {
    mmp_tensor_t *img = image_embeds(p, in);
    if (!img) return mmp_error_code();
    rc = project(&p->vision_proj, img, out, "image_feat", "image_embeds_proj");
    if (rc == 0) return mmp_tensormap_set(out, "image_embeds", img);
    mmp_tensor_unref(img);
    return rc;
  }
  if (!strcmp(method, "text")) {
    mmp_tensor_t *h = text_tower(p, in, NULL, NULL);
    if (!h) return mmp_error_code();
    rc = project(&p->text_proj, h, out, "text_feat", "text_embeds_proj");
    if (rc == 0) return mmp_tensormap_set(out, "text_embeds", h);
    mmp_tensor_unref(h);
    return rc;
  }
  if (!strcmp(method, "itm") || !strcmp(method, "multimodal")) {
    const mmp_tensor_t **kv = calloc((size_t)(2 * p->text.layers + 1), sizeof *kv);
    bool have = false;
    if (!kv) return mmp_error_set(MMP_ENOMEM, "out of memory");
    mmp_tensor_t *img = NULL, *h = NULL;
    if ((rc = cached_kv(p, in, kv, &have)) == 0 && (have || (img = itm_image(p, in))))
      h = text_tower(p, in, img, have ? kv : NULL);
    mmp_tensor_unref(img);
    free(kv);
    if (!h) return rc ? rc : mmp_error_code();
    mmp_tensor_t *f = first_token(h);
    mmp_tensor_t *logits = f ? sd_linear(&p->itm_head, f) : NULL;
    mmp_tensor_unref(f);
    mmp_tensor_t *score = logits ? mmp_slice(logits, 1, 1, 2, 1) : NULL;
    int64_t s1[1] = {h->shape[0]};
    score = sd_swap(score, score ? mmp_reshape(score, 1, s1) : NULL);
    if (!score) {
      mmp_tensor_unref(h);
      mmp_tensor_unref(logits);
      return mmp_error_prefix("blip_retrieval: ");
    }
    rc = mmp_tensormap_set(out, "multimodal_embeds", h);
    if (rc == 0)
      rc = mmp_tensormap_set(out, "itm_logits", logits);
    else
      mmp_tensor_unref(logits);
    if (rc == 0)
      rc = mmp_tensormap_set(out, "itm_score", score);
    else
      mmp_tensor_unref(score);
    return rc;
  }
  if (!strcmp(method, "cross_kv")) {
    mmp_tensor_t *img = itm_image(p, in);
    if (!img) return mmp_error_code();
    mmp_tensor_t **kv = calloc((size_t)(2 * p->text.layers + 1), sizeof *kv);
    rc = kv ? sd_bert_cross_kv(&p->text, img, kv) : mmp_error_set(MMP_ENOMEM, "out of memory");
    mmp_tensor_unref(img);
    char n[64];
    for (int64_t i = 0; kv && i < 2 * p->text.layers; i++) {
      snprintf(n, sizeof n, "%s.%lld", i % 2 ? "cross_value" : "cross_key", (long long)(i / 2));
      if (rc == 0)
        rc = mmp_tensormap_set(out, n, kv[i]);
      else
        mmp_tensor_unref(kv[i]);
    }
    free(kv);
    return rc ? mmp_error_prefix("blip_retrieval: ") : 0;
  }
  return mmp_error_set(MMP_EINVAL,
                       "blip_retrieval: unknown method \"%s\" (image, text, "
                       "itm, cross_kv, temp, state_dict)",
                       method);
}

static const mmp_encoder_ops_t blipr_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "blip_retrieval", "1.0",
                            "BLIP image-text retrieval (BLIP_Retrieval): ITC "
                            "features and ITM scores",
                            blipr_keys, blipr_create, blipr_destroy),
    .forward = blipr_forward,
};

MMP_EXPORT int mmp_plugin_encoder_blip_retrieval_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_blip_retrieval_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &blipr_ops.base);
}
