/* plugins/common/vit.c - the Vision Transformer tower (ViTModel,
 * BlipVisionModel, CLIPVisionModel, BLIP's VisionTransformer) through the
 * core tensor API. */
#include "plugins/common/towers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sd_vit_blip_preset(const char *name, sd_vit_t *v) {
  if (!strcmp(name, "base")) {
    v->dim = 768, v->layers = 12, v->heads = 12;
  } else if (!strcmp(name, "large")) {
    v->dim = 1024, v->layers = 24, v->heads = 16;
  } else {
    return MMP_ENOENT;
  }
  v->inter = 4 * v->dim, v->patch = 16, v->chans = 3;
  return 0;
}

/* BLIP's VisionTransformer without a config: dimensions off the tensors. */
static int blip_dims(sd_vit_t *v, sd_weights_t *w, const char *P) {
  char n[512];
  int nd;
  int64_t s[MMP_MAX_DIMS];
  if (v->dim) return 0; /* a preset */
  snprintf(n, sizeof n, "%spatch_embed.proj.weight", P);
  if (sd_w_info(w, n, &nd, s) != 0 || nd != 4 || s[2] != s[3])
    return mmp_error_set(MMP_EDATA, "vit: no %s [D, C, p, p] to size the tower by (give `vit` = \"base\" or \"large\")", n);
  v->dim = s[0], v->chans = s[1], v->patch = s[2];
  snprintf(n, sizeof n, "%sblocks.0.mlp.fc1.weight", P);
  if (sd_w_info(w, n, &nd, s) != 0 || nd != 2) return mmp_error_set(MMP_EDATA, "vit: no %s", n);
  v->inter = s[0];
  for (v->layers = 0; v->layers < 1000; v->layers++) {
    snprintf(n, sizeof n, "%sblocks.%lld.norm1.weight", P, (long long)v->layers);
    if (!sd_weights_has(w, n)) break;
  }
  if (!v->heads) v->heads = v->dim == 768 ? 12 : v->dim == 1024 ? 16 : 0;
  if (!v->heads)
    return mmp_error_set(MMP_EDATA, "vit: width %lld is neither BLIP base nor large: set num_heads", (long long)v->dim);
  return 0;
}

static int hf_dims(sd_vit_t *v, const json_t *j, const char *cpath) {
  int rc;
  bool clip = v->kind == SD_VIT_CLIP_HF;
  const char *act = sd_json_str(j, "hidden_act", clip ? "quick_gelu" : "gelu");
  sd_act_t a;
  if ((rc = sd_json_int(j, "hidden_size", 768, &v->dim)) || (rc = sd_json_int(j, "num_hidden_layers", 12, &v->layers)) ||
      (rc = sd_json_int(j, "num_attention_heads", 12, &v->heads)) ||
      (rc = sd_json_int(j, "intermediate_size", 3072, &v->inter)) ||
      (rc = sd_json_int(j, "patch_size", clip ? 32 : 16, &v->patch)) || (rc = sd_json_int(j, "num_channels", 3, &v->chans)) ||
      (rc = sd_json_float(j, "layer_norm_eps", v->kind == SD_VIT_HF ? 1e-12 : 1e-5, &v->eps)) ||
      (rc = sd_act_parse(act, &a)))
    return mmp_error_prefix("%s: ", cpath);
  if (a != SD_ACT_GELU && !clip)
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: vit: hidden_act %s (only gelu is wired)", cpath, act);
  v->act = a;
  return 0;
}

/* The checks on a tower's dimensions shared by every kind. */
static int check_dims(const sd_vit_t *v, const char *cpath) {
  /* Bounds well above any real tower keep random-weight sizes sane. */
  if (v->dim <= 0 || v->dim > 65536 || v->heads <= 0 || v->dim % v->heads || v->layers < 0 || v->layers > 1000 ||
      v->patch <= 0 || v->patch > 1024 || v->inter <= 0 || v->inter > 262144 || v->chans <= 0 || v->chans > 64)
    return mmp_error_set(MMP_EDATA, "%s: vit: width %lld, %lld heads, %lld layers, patch %lld do not make a tower",
                         cpath ? cpath : "vit", (long long)v->dim, (long long)v->heads, (long long)v->layers,
                         (long long)v->patch);
  return 0;
}

/* transformers' CLIPVisionTransformer: class_embedding [D], position_embedding
 * an nn.Embedding [N, D], q/k/v/out projections, pre- and post-layernorm. */
static int clip_load(sd_vit_t *v, const json_t *j, const char *cpath, sd_weights_t *w, const char *P) {
  int rc;
  char n[512], n2[512];
  int64_t img;
  if ((rc = hf_dims(v, j, cpath)) || (rc = check_dims(v, cpath))) return rc;
  if ((rc = sd_json_int(j, "image_size", 224, &img))) return mmp_error_prefix("%s: ", cpath);
  if (img < v->patch || img > 16384)
    return mmp_error_set(MMP_EDATA, "%s: image_size %lld out of range", cpath, (long long)img);
  v->grid = img / v->patch;
  int64_t npos = v->grid * v->grid + 1;
  int64_t cs[1] = {v->dim}, ps[2] = {npos, v->dim}, ws[4] = {v->dim, v->chans, v->patch, v->patch};
  int64_t cs3[3] = {1, 1, v->dim}, ps3[3] = {1, npos, v->dim};
  mmp_tensor_t *t = sd_w(w, 1, cs, "%sembeddings.class_embedding", P);
  v->cls = t ? sd_swap(t, mmp_reshape(t, 3, cs3)) : NULL;
  t = sd_w(w, 2, ps, "%sembeddings.position_embedding.weight", P);
  v->pos = t ? sd_swap(t, mmp_reshape(t, 3, ps3)) : NULL;
  v->patch_embed.w = sd_w_mat(w, 4, ws, "%sembeddings.patch_embedding.weight", P);
  v->patch_embed.b = NULL;
  v->patch_embed.stride = (int)v->patch;
  v->patch_embed.pad = 0;
  snprintf(n, sizeof n, "%spre_layrnorm", P); /* sic: transformers' name */
  sd_norm_load(&v->pre_norm, w, n, v->dim, 0, v->eps);
  v->blocks = calloc((size_t)(v->layers ? v->layers : 1), sizeof *v->blocks);
  if (!v->blocks) return mmp_error_set(MMP_ENOMEM, "out of memory");
  static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
  for (int64_t i = 0; i < v->layers; i++) {
    sd_block_t *b = &v->blocks[i];
    long long li = (long long)i;
    snprintf(n, sizeof n, "%sencoder.layers.%lld.layer_norm1", P, li);
    sd_norm_load(&b->ln_attn, w, n, v->dim, 0, v->eps);
    snprintf(n, sizeof n, "%sencoder.layers.%lld.self_attn", P, li);
    sd_attn_load(&b->attn, w, n, names, v->dim, v->dim, v->dim, (int)v->heads, true);
    snprintf(n, sizeof n, "%sencoder.layers.%lld.layer_norm2", P, li);
    sd_norm_load(&b->ln_mlp, w, n, v->dim, 0, v->eps);
    snprintf(n, sizeof n, "%sencoder.layers.%lld.mlp.fc1", P, li);
    snprintf(n2, sizeof n2, "%sencoder.layers.%lld.mlp.fc2", P, li);
    sd_mlp_load(&b->mlp, w, n, n2, v->dim, v->inter, v->act);
  }
  snprintf(n, sizeof n, "%spost_layernorm", P);
  sd_norm_load(&v->norm, w, n, v->dim, 0, v->eps);
  return 0;
}

int sd_vit_load(sd_vit_t *v, sd_vit_kind_t kind, const json_t *j, const char *cpath, sd_weights_t *w,
                const char *P) {
  int rc;
  char n[512], n2[512];
  v->kind = kind;
  v->act = SD_ACT_GELU;
  if (kind == SD_VIT_CLIP_HF) return clip_load(v, j, cpath, w, P);
  if (kind == SD_VIT_BLIP) {
    v->eps = 1e-6;
    if ((rc = blip_dims(v, w, P))) return rc;
  } else if ((rc = hf_dims(v, j, cpath))) {
    return rc;
  }
  if ((rc = check_dims(v, cpath))) return rc;
  const char *cls_n = kind == SD_VIT_HF ? "embeddings.cls_token" :
                      kind == SD_VIT_BLIP_HF ? "embeddings.class_embedding" : "cls_token";
  const char *pos_n = kind == SD_VIT_HF ? "embeddings.position_embeddings" :
                      kind == SD_VIT_BLIP_HF ? "embeddings.position_embedding" : "pos_embed";
  const char *patch_n = kind == SD_VIT_HF ? "embeddings.patch_embeddings.projection" :
                        kind == SD_VIT_BLIP_HF ? "embeddings.patch_embedding" : "patch_embed.proj";
  /* The stored grid (any square); the config's image_size for random weights. */
  int nd;
  int64_t s[MMP_MAX_DIMS], npos = -1;
  snprintf(n, sizeof n, "%s%s", P, pos_n);
  if (sd_w_info(w, n, &nd, s) == 0 && nd == 3) npos = s[1];
  if (npos < 0) {
    int64_t img = 224;
    if (j && (rc = sd_json_int(j, "image_size", 224, &img))) return mmp_error_prefix("%s: ", cpath);
    if (img < v->patch || img > 16384) return mmp_error_set(MMP_EDATA, "%s: image_size %lld out of range", cpath, (long long)img);
    npos = (img / v->patch) * (img / v->patch) + 1;
  }
  v->grid = (int64_t)llround(sqrt((double)(npos - 1)));
  if (npos < 2 || v->grid * v->grid != npos - 1)
    return mmp_error_set(MMP_EDATA, "vit: %s has %lld rows: not 1 + a square grid", n, (long long)npos);
  int64_t cs[3] = {1, 1, v->dim}, ps[3] = {1, npos, v->dim};
  v->cls = sd_w(w, 3, cs, "%s%s", P, cls_n);
  v->pos = sd_w(w, 3, ps, "%s%s", P, pos_n);
  snprintf(n, sizeof n, "%s%s", P, patch_n);
  sd_conv_load(&v->patch_embed, w, n, v->chans, v->dim, (int)v->patch, (int)v->patch, 0);
  v->blocks = calloc((size_t)(v->layers ? v->layers : 1), sizeof *v->blocks);
  if (!v->blocks) return mmp_error_set(MMP_ENOMEM, "out of memory");
  bool qkv_bias = true;
  if (j && kind == SD_VIT_HF && (rc = sd_json_bool(j, "qkv_bias", true, &qkv_bias))) return mmp_error_prefix("%s: ", cpath);
  for (int64_t i = 0; i < v->layers; i++) {
    sd_block_t *b = &v->blocks[i];
    long long li = (long long)i;
    if (kind == SD_VIT_HF) {
      static const char *const names[4] = {"attention.query", "attention.key", "attention.value", "output.dense"};
      snprintf(n, sizeof n, "%sencoder.layer.%lld.layernorm_before", P, li);
      sd_norm_load(&b->ln_attn, w, n, v->dim, 0, v->eps);
      snprintf(n, sizeof n, "%sencoder.layer.%lld.attention", P, li);
      sd_attn_load(&b->attn, w, n, names, v->dim, v->dim, v->dim, (int)v->heads, qkv_bias);
      snprintf(n, sizeof n, "%sencoder.layer.%lld.layernorm_after", P, li);
      sd_norm_load(&b->ln_mlp, w, n, v->dim, 0, v->eps);
      snprintf(n, sizeof n, "%sencoder.layer.%lld.intermediate.dense", P, li);
      snprintf(n2, sizeof n2, "%sencoder.layer.%lld.output.dense", P, li);
    } else {
      bool hf = kind == SD_VIT_BLIP_HF;
      const char *L = hf ? "encoder.layers" : "blocks";
      char q[512];
      snprintf(n, sizeof n, "%s%s.%lld.%s", P, L, li, hf ? "layer_norm1" : "norm1");
      sd_norm_load(&b->ln_attn, w, n, v->dim, 0, v->eps);
      snprintf(n, sizeof n, "%s%s.%lld.%s.qkv", P, L, li, hf ? "self_attn" : "attn");
      snprintf(q, sizeof q, "%s%s.%lld.%s", P, L, li, hf ? "self_attn.projection" : "attn.proj");
      sd_attn_load_fused(&b->attn, w, n, q, v->dim, (int)v->heads, true);
      snprintf(n, sizeof n, "%s%s.%lld.%s", P, L, li, hf ? "layer_norm2" : "norm2");
      sd_norm_load(&b->ln_mlp, w, n, v->dim, 0, v->eps);
      snprintf(n, sizeof n, "%s%s.%lld.mlp.fc1", P, L, li);
      snprintf(n2, sizeof n2, "%s%s.%lld.mlp.fc2", P, L, li);
    }
    sd_mlp_load(&b->mlp, w, n, n2, v->dim, v->inter, v->act);
  }
  snprintf(n, sizeof n, "%s%s", P, kind == SD_VIT_HF ? "layernorm" : kind == SD_VIT_BLIP_HF ? "post_layernorm" : "norm");
  sd_norm_load(&v->norm, w, n, v->dim, 0, v->eps);
  snprintf(n, sizeof n, "%spooler.dense.weight", P);
  if (kind == SD_VIT_HF && sd_weights_has(w, n)) {
    snprintf(n, sizeof n, "%spooler.dense", P);
    sd_linear_load(&v->pooler, w, n, v->dim, v->dim, true);
  }
  return 0;
}

void sd_vit_free(sd_vit_t *v) {
  if (!v) return;
  sd_conv_free(&v->patch_embed);
  mmp_tensor_unref(v->cls);
  mmp_tensor_unref(v->pos);
  mmp_tensor_unref(v->pos_cache);
  for (int64_t i = 0; v->blocks && i < v->layers; i++) sd_block_free(&v->blocks[i]);
  free(v->blocks);
  sd_norm_free(&v->norm);
  sd_norm_free(&v->pre_norm);
  sd_linear_free(&v->pooler);
  memset(v, 0, sizeof *v);
}

/* The position table for a gh x gw grid: stored, or BLIP's
 * interpolate_pos_embed (bicubic on the patch grid, the CLS row kept). */
static mmp_tensor_t *pos_table(sd_vit_t *v, int64_t gh, int64_t gw) {
  if (gh == v->grid && gw == v->grid) return mmp_tensor_ref(v->pos);
  if (v->pos_cache && v->cache_gh == gh && v->cache_gw == gw) return mmp_tensor_ref(v->pos_cache);
  int64_t g = v->grid, D = v->dim;
  mmp_tensor_t *cls = mmp_slice(v->pos, 1, 0, 1, 1);
  mmp_tensor_t *grid = mmp_slice(v->pos, 1, 1, 1 + g * g, 1);
  int64_t s4[4] = {1, g, g, D};
  static const int to_nchw[4] = {0, 3, 1, 2}, to_nhwc[4] = {0, 2, 3, 1};
  grid = sd_swap(grid, grid ? mmp_reshape(grid, 4, s4) : NULL);
  grid = sd_swap(grid, grid ? mmp_permute(grid, to_nchw) : NULL);
  grid = sd_swap(grid, grid ? mmp_contiguous(grid) : NULL);
  grid = sd_swap(grid, mmp_resize_bicubic(grid, gh, gw));
  grid = sd_swap(grid, grid ? mmp_permute(grid, to_nhwc) : NULL);
  int64_t s3[3] = {1, gh * gw, D};
  grid = sd_swap(grid, grid ? mmp_reshape(grid, 3, s3) : NULL);
  mmp_tensor_t *r = NULL;
  if (cls && grid) {
    mmp_tensor_t *parts[2] = {cls, grid};
    r = mmp_concat(parts, 2, 1);
  }
  mmp_tensor_unref(cls);
  mmp_tensor_unref(grid);
  if (r) {
    mmp_tensor_unref(v->pos_cache);
    v->pos_cache = mmp_tensor_ref(r);
    v->cache_gh = gh, v->cache_gw = gw;
  }
  return r;
}

/* sd_vit and sd_vit_drop_path: @rates (nullable: eval) the drop path
 * rate of each block, drawn as @train says. */
static mmp_tensor_t *vit_run(sd_vit_t *v, const mmp_tensor_t *px, mmp_tensor_t **hidden, mmp_tensor_t **pooled,
                             const sd_dropout_t *train, const float *rates) {
  if (pooled) *pooled = NULL;
  if (!px) return NULL;
  if (px->ndim != 4 || px->shape[1] != v->chans || px->shape[2] % v->patch || px->shape[3] % v->patch ||
      px->shape[2] < v->patch || px->shape[3] < v->patch) {
    char d[96];
    mmp_error_set(MMP_ESHAPE, "vit: pixel_values %s must be [B, %lld, H, W] with H, W multiples of the patch %lld",
                  mmp_tensor_describe(px, d, sizeof d), (long long)v->chans, (long long)v->patch);
    return NULL;
  }
  int64_t B = px->shape[0], gh = px->shape[2] / v->patch, gw = px->shape[3] / v->patch, D = v->dim;
  if (v->kind == SD_VIT_CLIP_HF && (gh != v->grid || gw != v->grid)) {
    char d[96];
    mmp_error_set(MMP_ESHAPE, "vit: CLIP pixel_values %s must be %lld x %lld (the config's image_size)",
                  mmp_tensor_describe(px, d, sizeof d), (long long)(v->grid * v->patch),
                  (long long)(v->grid * v->patch));
    return NULL;
  }
  mmp_tensor_t *x = sd_conv(&v->patch_embed, px); /* [B, D, gh, gw] */
  int64_t s3[3] = {B, D, gh * gw};
  x = sd_swap(x, x ? mmp_reshape(x, 3, s3) : NULL);
  x = sd_swap(x, x ? mmp_transpose(x, 1, 2) : NULL);
  int64_t cs[3] = {B, 1, D};
  mmp_tensor_t *cls = mmp_broadcast_to(v->cls, 3, cs), *h = NULL;
  if (x && cls) {
    mmp_tensor_t *parts[2] = {cls, x};
    h = mmp_concat(parts, 2, 1);
  }
  mmp_tensor_unref(cls);
  mmp_tensor_unref(x);
  mmp_tensor_t *pos = h ? pos_table(v, gh, gw) : NULL;
  h = sd_swap(h, pos ? mmp_add(h, pos) : NULL);
  mmp_tensor_unref(pos);
  if (v->pre_norm.w) h = sd_swap(h, sd_layer_norm(&v->pre_norm, h));
  for (int64_t i = 0; i < v->layers && h; i++) {
    if (hidden) hidden[i] = mmp_tensor_ref(h);
    sd_dropout_t dp = {0};
    if (rates) dp = *train, dp.hidden = dp.attn = 0.0, dp.path = (double)rates[i];
    h = sd_swap(h, sd_block_train(&v->blocks[i], v->checkpointing, h, NULL, false, NULL, NULL, NULL, NULL, rates ? &dp : NULL));
  }
  if (hidden && h) hidden[v->layers] = mmp_tensor_ref(h);
  if (v->kind != SD_VIT_CLIP_HF) h = sd_swap(h, sd_layer_norm(&v->norm, h));
  if (!h || !pooled || v->kind == SD_VIT_BLIP) return h;
  mmp_tensor_t *first = mmp_slice(h, 1, 0, 1, 1);
  int64_t s2[2] = {B, D};
  first = sd_swap(first, first ? mmp_reshape(first, 2, s2) : NULL);
  if (v->kind == SD_VIT_BLIP_HF || v->kind == SD_VIT_CLIP_HF) {
    /* BlipVisionModel normalises the CLS row again; CLIP only there */
    *pooled = sd_layer_norm(&v->norm, first);
  } else if (v->pooler.w) {
    mmp_tensor_t *p = sd_linear(&v->pooler, first);
    *pooled = sd_swap(p, p ? mmp_tanh(p) : NULL);
  }
  mmp_tensor_unref(first);
  if ((v->kind == SD_VIT_BLIP_HF || v->kind == SD_VIT_CLIP_HF || v->pooler.w) && !*pooled) {
    mmp_tensor_unref(h);
    return NULL;
  }
  return h;
}

mmp_tensor_t *sd_vit(sd_vit_t *v, const mmp_tensor_t *px, mmp_tensor_t **hidden, mmp_tensor_t **pooled) {
  return vit_run(v, px, hidden, pooled, NULL, NULL);
}

mmp_tensor_t *sd_vit_drop_path(sd_vit_t *v, const mmp_tensor_t *px, mmp_tensor_t **hidden, const sd_dropout_t *train) {
  if (!train || !train->rng || !(train->path >= 0.0 && train->path < 1.0) || v->kind == SD_VIT_CLIP_HF) {
    mmp_error_set(MMP_EINVAL, "vit: drop path %s", !train || !train->rng ? "needs a generator"
                                                  : v->kind == SD_VIT_CLIP_HF ? "of a CLIP tower (it has none)"
                                                                              : "rate must lie in [0, 1)");
    return NULL;
  }
  /* timm's VisionTransformer: dpr = [x.item() for x in torch.linspace(0,
   * drop_path_rate, depth)], block i drop_path = dpr[i] */
  float *rates = malloc((size_t)(v->layers ? v->layers : 1) * sizeof *rates);
  if (!rates) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  mmp_tensor_t *h = mmp_linspace_f32(0.0, train->path, v->layers, rates) ? NULL : vit_run(v, px, hidden, NULL, train, rates);
  free(rates);
  return h;
}
