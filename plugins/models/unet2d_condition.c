/* plugins/models/unet2d_condition.c - diffusers' UNet2DConditionModel (SD-1.x /
 * 2.x blocks) with AR-LDM's optional cross-attention key mask. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/autograd.h>

#include "plugins/common/sd_common.h"

#define MAXB 8

typedef struct ublock {
  bool attn;
  int n;
  sd_resnet_t *res;
  sd_transformer_t *tr;
  bool has_resample;
  sd_conv_t resample;
} ublock_t;

typedef struct unet {
  mmp_backend_t *be;
  int64_t in_ch, out_ch, nb, t_dim;
  bool flip_sin_to_cos, center_input;
  double freq_shift;
  sd_linear_t t1, t2;
  sd_conv_t conv_in, conv_out;
  sd_norm_t norm_out;
  ublock_t down[MAXB], up[MAXB];
  sd_resnet_t mid_res[2];
  sd_transformer_t mid_attn;
  bool mid_has_attn;
  mmp_tensormap_t *state; /* every weight by diffusers name */
  bool trainable;         /* created with trainable = true: owned f32 weights */
  bool checkpointing;     /* gradient_checkpointing = true: each resnet and transformer is a region */
} unet_t;

static const mmp_key_t unet_keys[] = {
    SD_PART_KEYS("unet"),
    {"ff_chunk_rows", MMP_TYPE_INT, "0",
     "rows per block of the transformers' feed-forward: 0 = automatic (about 16 MB of activation "
     "per block), -1 = all rows at once (as diffusers by default: more memory, same numbers)", 0, 0},
    SD_TRAINABLE_KEY,
    {"gradient_checkpointing", MMP_TYPE_BOOL, "false",
     "under a tape (training), run each resnet and transformer as a checkpoint region "
     "(mmp_tape_checkpoint): their activations are not kept but computed again during the "
     "backward; less memory, one more forward of each block; no effect on inference", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static void ublock_free(ublock_t *b) {
  for (int j = 0; j < b->n; j++) {
    if (b->res) sd_resnet_free(&b->res[j]);
    if (b->tr) sd_transformer_free(&b->tr[j]);
  }
  free(b->res);
  free(b->tr);
  sd_conv_free(&b->resample);
}

static void unet_destroy(void *self) {
  unet_t *u = self;
  if (!u) return;
  sd_linear_free(&u->t1);
  sd_linear_free(&u->t2);
  sd_conv_free(&u->conv_in);
  sd_conv_free(&u->conv_out);
  sd_norm_free(&u->norm_out);
  for (int i = 0; i < MAXB; i++) {
    ublock_free(&u->down[i]);
    ublock_free(&u->up[i]);
  }
  sd_resnet_free(&u->mid_res[0]);
  sd_resnet_free(&u->mid_res[1]);
  if (u->mid_has_attn) sd_transformer_free(&u->mid_attn);
  mmp_tensormap_free(u->state);
  free(u);
}

static int ublock_alloc(ublock_t *b, int n, bool attn) {
  b->n = n;
  b->attn = attn;
  b->res = calloc((size_t)n, sizeof *b->res);
  b->tr = attn ? calloc((size_t)n, sizeof *b->tr) : NULL;
  if (!b->res || (attn && !b->tr)) return mmp_error_set(MMP_ENOMEM, "out of memory");
  return 0;
}

/* Reads the config and builds every module; records weight problems in @w. */
static int unet_build(unet_t *u, const json_t *j, sd_weights_t *w, const char *cpath) {
  int rc;
  const char *cls = sd_json_str(j, "_class_name", "UNet2DConditionModel");
  if (strcmp(cls, "UNet2DConditionModel") != 0)
    return mmp_error_set(MMP_EDATA, "%s: _class_name is %s, expected UNet2DConditionModel", cpath, cls);
  int64_t nb = (int64_t)sd_json_list_size(j, "block_out_channels");
  if (nb < 1 || nb > MAXB)
    return mmp_error_set(MMP_EDATA, "%s: block_out_channels must list 1..%d sizes", cpath, MAXB);
  int64_t boc[MAXB], lpb[MAXB], heads[MAXB], xdim[MAXB], tlayers[MAXB], ngroups, cin_k, cout_k, dpad;
  double eps, mid_scale;
  bool linear_proj;
  const int64_t W = SD_MAX_WIDTH;
  if ((rc = sd_json_int_list_range(j, "block_out_channels", 0, 1, W, (size_t)nb, boc)) ||
      (rc = sd_json_int_list_range(j, "layers_per_block", 2, 1, 6, (size_t)nb, lpb)) ||
      (rc = sd_json_int_list_range(j, "transformer_layers_per_block", 1, 1, 64, (size_t)nb, tlayers)) ||
      (rc = sd_json_int_list_range(j, "cross_attention_dim", 1280, 1, W, (size_t)nb, xdim)) ||
      (rc = sd_json_int_range(j, "in_channels", 4, 1, W, &u->in_ch)) ||
      (rc = sd_json_int_range(j, "out_channels", 4, 1, W, &u->out_ch)) ||
      (rc = sd_json_int_range(j, "norm_num_groups", 32, 1, W, &ngroups)) ||
      (rc = sd_json_int_range(j, "conv_in_kernel", 3, 1, 15, &cin_k)) ||
      (rc = sd_json_int_range(j, "conv_out_kernel", 3, 1, 15, &cout_k)) ||
      (rc = sd_json_int_range(j, "downsample_padding", 1, 0, 1, &dpad)) ||
      (rc = sd_json_float(j, "norm_eps", 1e-5, &eps)) ||
      (rc = sd_json_float(j, "mid_block_scale_factor", 1.0, &mid_scale)) ||
      (rc = sd_json_float(j, "freq_shift", 0.0, &u->freq_shift)) ||
      (rc = sd_json_bool(j, "flip_sin_to_cos", true, &u->flip_sin_to_cos)) ||
      (rc = sd_json_bool(j, "center_input_sample", false, &u->center_input)) ||
      (rc = sd_json_bool(j, "use_linear_projection", false, &linear_proj)))
    return mmp_error_prefix("%s: ", cpath);
  /* diffusers 0.19: num_attention_heads, else attention_head_dim (which SD
   * configs use to mean the number of heads). */
  json_t *nah = json_object_get(j, "num_attention_heads");
  rc = sd_json_int_list_range(j, (nah && !json_is_null(nah)) ? "num_attention_heads" : "attention_head_dim",
                              8, 1, W, (size_t)nb, heads);
  if (rc) return mmp_error_prefix("%s: ", cpath);
  /* Options this implementation does not cover are refused, not ignored. */
  static const char *const unsupported_non_null[] = {
      "class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim",
      "num_class_embeds", "timestep_post_act", "time_embedding_act_fn", "time_embedding_dim",
      "cross_attention_norm", NULL};
  for (int k = 0; unsupported_non_null[k]; k++) {
    json_t *v = json_object_get(j, unsupported_non_null[k]);
    if (v && !json_is_null(v))
      return mmp_error_set(MMP_EUNSUPPORTED, "%s: \"%s\" is not supported", cpath, unsupported_non_null[k]);
  }
  static const char *const unsupported_true[] = {"dual_cross_attention", "only_cross_attention",
                                                 "resnet_skip_time_act", NULL};
  for (int k = 0; unsupported_true[k]; k++)
    if (json_is_true(json_object_get(j, unsupported_true[k])) || json_is_array(json_object_get(j, unsupported_true[k])))
      return mmp_error_set(MMP_EUNSUPPORTED, "%s: \"%s\" is not supported", cpath, unsupported_true[k]);
  const char *tet = sd_json_str(j, "time_embedding_type", "positional");
  const char *rts = sd_json_str(j, "resnet_time_scale_shift", "default");
  const char *act = sd_json_str(j, "act_fn", "silu");
  const char *mid = sd_json_str(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
  if (strcmp(tet, "positional") || strcmp(rts, "default") || strcmp(act, "silu") ||
      strcmp(mid, "UNetMidBlock2DCrossAttn"))
    return mmp_error_set(MMP_EUNSUPPORTED,
                         "%s: supported: time_embedding_type positional, resnet_time_scale_shift default, "
                         "act_fn silu, mid_block_type UNetMidBlock2DCrossAttn", cpath);
  if (sd_json_list_size(j, "down_block_types") != (size_t)nb || sd_json_list_size(j, "up_block_types") != (size_t)nb)
    return mmp_error_set(MMP_EDATA, "%s: down_block_types and up_block_types need %lld entries", cpath, (long long)nb);
  for (int64_t i = 0; i < nb; i++) {
    if (lpb[i] < 1 || lpb[i] > 6 || tlayers[i] < 1)
      return mmp_error_set(MMP_EDATA, "%s: block %lld: layers_per_block must be 1..6", cpath, (long long)i);
    if (boc[i] % heads[i] || boc[i] % ngroups)
      return mmp_error_set(MMP_EDATA, "%s: block %lld: %lld channels do not divide into %lld heads / %lld groups",
                           cpath, (long long)i, (long long)boc[i], (long long)heads[i], (long long)ngroups);
  }
  /* conv_in/conv_out pad by (k - 1) / 2: an even kernel would change the size */
  if (cin_k % 2 == 0 || cout_k % 2 == 0)
    return mmp_error_set(MMP_EDATA, "%s: conv_in_kernel and conv_out_kernel must be odd (%lld, %lld)", cpath,
                         (long long)cin_k, (long long)cout_k);
  u->nb = nb;
  u->t_dim = boc[0] * 4;
  char p[256];
  sd_linear_load(&u->t1, w, "time_embedding.linear_1", boc[0], u->t_dim, true);
  sd_linear_load(&u->t2, w, "time_embedding.linear_2", u->t_dim, u->t_dim, true);
  sd_conv_load(&u->conv_in, w, "conv_in", u->in_ch, boc[0], (int)cin_k, 1, (int)(cin_k - 1) / 2);
  int64_t out_c = boc[0];
  for (int64_t i = 0; i < nb; i++) {
    const char *type = sd_json_list_str(j, "down_block_types", (size_t)i);
    bool attn;
    if (type && strcmp(type, "CrossAttnDownBlock2D") == 0) attn = true;
    else if (type && strcmp(type, "DownBlock2D") == 0) attn = false;
    else return mmp_error_set(MMP_EUNSUPPORTED, "%s: down block type %s is not supported", cpath, type ? type : "?");
    int64_t in_c = out_c;
    out_c = boc[i];
    ublock_t *b = &u->down[i];
    if ((rc = ublock_alloc(b, (int)lpb[i], attn))) return rc;
    for (int jj = 0; jj < b->n; jj++) {
      snprintf(p, sizeof p, "down_blocks.%lld.resnets.%d", (long long)i, jj);
      sd_resnet_load(&b->res[jj], w, p, jj == 0 ? in_c : out_c, out_c, u->t_dim, (int)ngroups, eps, 1.0);
      if (attn) {
        snprintf(p, sizeof p, "down_blocks.%lld.attentions.%d", (long long)i, jj);
        if ((rc = sd_transformer_load(&b->tr[jj], w, p, out_c, (int)heads[i], xdim[i], (int)tlayers[i],
                                      (int)ngroups, linear_proj)))
          return rc;
      }
    }
    if (i < nb - 1) {
      b->has_resample = true;
      snprintf(p, sizeof p, "down_blocks.%lld.downsamplers.0.conv", (long long)i);
      sd_conv_load(&b->resample, w, p, out_c, out_c, 3, 2, (int)dpad);
    }
  }
  int64_t mc = boc[nb - 1];
  sd_resnet_load(&u->mid_res[0], w, "mid_block.resnets.0", mc, mc, u->t_dim, (int)ngroups, eps, mid_scale);
  sd_resnet_load(&u->mid_res[1], w, "mid_block.resnets.1", mc, mc, u->t_dim, (int)ngroups, eps, mid_scale);
  u->mid_has_attn = true;
  if ((rc = sd_transformer_load(&u->mid_attn, w, "mid_block.attentions.0", mc, (int)heads[nb - 1],
                                xdim[nb - 1], (int)tlayers[nb - 1], (int)ngroups, linear_proj)))
    return rc;
  out_c = boc[nb - 1];
  for (int64_t i = 0; i < nb; i++) {
    int64_t r = nb - 1 - i; /* index into the per-block lists, reversed */
    const char *type = sd_json_list_str(j, "up_block_types", (size_t)i);
    bool attn;
    if (type && strcmp(type, "CrossAttnUpBlock2D") == 0) attn = true;
    else if (type && strcmp(type, "UpBlock2D") == 0) attn = false;
    else return mmp_error_set(MMP_EUNSUPPORTED, "%s: up block type %s is not supported", cpath, type ? type : "?");
    int64_t prev = out_c;
    out_c = boc[r];
    int64_t in_c = boc[r > 0 ? r - 1 : 0];
    ublock_t *b = &u->up[i];
    if ((rc = ublock_alloc(b, (int)lpb[r] + 1, attn))) return rc;
    for (int jj = 0; jj < b->n; jj++) {
      int64_t skip = jj == b->n - 1 ? in_c : out_c;
      int64_t rin = jj == 0 ? prev : out_c;
      snprintf(p, sizeof p, "up_blocks.%lld.resnets.%d", (long long)i, jj);
      sd_resnet_load(&b->res[jj], w, p, rin + skip, out_c, u->t_dim, (int)ngroups, eps, 1.0);
      if (attn) {
        snprintf(p, sizeof p, "up_blocks.%lld.attentions.%d", (long long)i, jj);
        if ((rc = sd_transformer_load(&b->tr[jj], w, p, out_c, (int)heads[r], xdim[r], (int)tlayers[r],
                                      (int)ngroups, linear_proj)))
          return rc;
      }
    }
    if (i < nb - 1) {
      b->has_resample = true;
      snprintf(p, sizeof p, "up_blocks.%lld.upsamplers.0.conv", (long long)i);
      sd_conv_load(&b->resample, w, p, out_c, out_c, 3, 1, 1);
    }
  }
  sd_norm_load(&u->norm_out, w, "conv_norm_out", boc[0], (int)ngroups, eps);
  sd_conv_load(&u->conv_out, w, "conv_out", boc[0], u->out_ch, (int)cout_k, 1, (int)(cout_k - 1) / 2);
  return 0;
}

static int unet_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out_self) {
  char cpath[4096], wpath[4096];
  int rc = sd_locate_part(cfg, SD_PART_UNET, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  json_t *j = sd_json_load(cpath);
  if (!j) return mmp_error_code();
  unet_t *u = calloc(1, sizeof *u);
  if (!u) {
    json_decref(j);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  u->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_UNET};
  map.n_blocks = (int)sd_json_list_size(j, "block_out_channels");
  int64_t L = 2;
  sd_json_int(j, "layers_per_block", 2, &L);
  map.layers_per_block = (int)L;
  for (int i = 0; i < map.n_blocks && i < 8; i++) {
    const char *t = sd_json_list_str(j, "up_block_types", (size_t)i);
    map.up_has_attn[i] = t && strstr(t, "CrossAttn") != NULL;
  }
  sd_weights_t *w = sd_weights_for(cfg, wpath, &map, u->be);
  if (!w) {
    json_decref(j);
    unet_destroy(u);
    return mmp_error_code();
  }
  rc = unet_build(u, j, w, cpath);
  json_decref(j);
  if (rc) {
    sd_weights_free(w);
    unet_destroy(u);
    return rc;
  }
  int64_t chunk = 0;
  if (mmp_config_get_int(cfg, "ff_chunk_rows", &chunk) < 0) chunk = 0; /* unset: automatic */
  for (int i = 0; i < MAXB; i++)
    for (int k = 0; k < 2; k++) {
      ublock_t *b = k ? &u->up[i] : &u->down[i];
      for (int jj = 0; b->tr && jj < b->n; jj++) b->tr[jj].ff_chunk_rows = chunk;
    }
  u->mid_attn.ff_chunk_rows = chunk;
  u->state = sd_weights_take_collected(w);
  bool trainable = false;
  if (mmp_config_get_bool(cfg, "trainable", &trainable) < 0) trainable = false;
  bool ckpt = false;
  if (mmp_config_get_bool(cfg, "gradient_checkpointing", &ckpt) < 0) ckpt = false;
  mmp_error_clear();
  u->trainable = trainable;
  u->checkpointing = ckpt;
  if ((rc = sd_weights_finish(w, "unet2d_condition"))) {
    unet_destroy(u);
    return rc;
  }
  *out_self = u;
  return 0;
}

/* A checkpoint region: one resnet (in: h, emb) or one transformer (in: h,
 * ctx, mask), as diffusers' gradient checkpointing cuts the blocks. */
typedef struct region {
  const sd_resnet_t *res;
  const sd_transformer_t *tr;
} region_t;

static mmp_tensor_t *region_run(void *user, int nin, mmp_tensor_t *const *in) {
  const region_t *r = user;
  (void)nin;
  return r->res ? sd_resnet(r->res, in[0], in[1]) : sd_transformer(r->tr, in[0], in[1], in[2]);
}

static mmp_tensor_t *resnet(const unet_t *u, const sd_resnet_t *res, mmp_tensor_t *h, const mmp_tensor_t *emb) {
  if (!u->checkpointing || !mmp_tape_current()) return sd_resnet(res, h, emb);
  region_t r = {res, NULL};
  mmp_tensor_t *in[2] = {h, (mmp_tensor_t *)emb};
  return mmp_tape_checkpoint(region_run, &r, sizeof r, 2, in, NULL);
}

static mmp_tensor_t *transformer(const unet_t *u, const sd_transformer_t *tr, mmp_tensor_t *h, const mmp_tensor_t *ctx,
                                 const mmp_tensor_t *mask) {
  if (!u->checkpointing || !mmp_tape_current()) return sd_transformer(tr, h, ctx, mask);
  region_t r = {NULL, tr};
  mmp_tensor_t *in[3] = {h, (mmp_tensor_t *)ctx, (mmp_tensor_t *)mask};
  return mmp_tape_checkpoint(region_run, &r, sizeof r, 3, in, NULL);
}

static mmp_tensor_t *run_block_res(const unet_t *u, const ublock_t *b, int jj, mmp_tensor_t *h,
                                   const mmp_tensor_t *emb, const mmp_tensor_t *ctx, const mmp_tensor_t *mask) {
  h = sd_swap(h, resnet(u, &b->res[jj], h, emb));
  if (b->attn) h = sd_swap(h, transformer(u, &b->tr[jj], h, ctx, mask));
  return h;
}

static int unet_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  unet_t *u = self;
  if (method && strcmp(method, "state_dict") == 0) return sd_state_dict(u->state, out);
  if (method && *method && strcmp(method, "forward") != 0)
    return mmp_error_set(MMP_EINVAL, "unet2d_condition: unknown method \"%s\" (forward, state_dict)", method);
  const mmp_tensor_t *xs = mmp_tensormap_need(in, "sample");
  const mmp_tensor_t *ts = mmp_tensormap_need(in, "timestep");
  const mmp_tensor_t *es = mmp_tensormap_need(in, "encoder_hidden_states");
  if (!xs || !ts || !es) return mmp_error_prefix("unet2d_condition: ");
  const mmp_tensor_t *ms = mmp_tensormap_get(in, "encoder_attention_mask");
  if (xs->ndim != 4 || xs->shape[1] != u->in_ch)
    return mmp_error_set(MMP_ESHAPE, "unet2d_condition: sample must be [B, %lld, H, W]", (long long)u->in_ch);
  if (es->ndim != 3 || es->shape[0] != xs->shape[0])
    return mmp_error_set(MMP_ESHAPE, "unet2d_condition: encoder_hidden_states must be [B, L, D] with B = %lld",
                         (long long)xs->shape[0]);
  if (ms && (ms->ndim != 2 || ms->shape[0] != es->shape[0] || ms->shape[1] != es->shape[1]))
    return mmp_error_set(MMP_ESHAPE, "unet2d_condition: encoder_attention_mask must be [B, L] = [%lld, %lld]",
                         (long long)es->shape[0], (long long)es->shape[1]);
  int64_t B = xs->shape[0];
  int64_t nt = mmp_tensor_numel(ts);
  if (nt != 1 && nt != B)
    return mmp_error_set(MMP_ESHAPE, "unet2d_condition: timestep must have 1 or B = %lld entries", (long long)B);
  int64_t nb = u->nb;
  if ((xs->shape[2] % (1 << (nb - 1))) || (xs->shape[3] % (1 << (nb - 1))))
    return mmp_error_set(MMP_ESHAPE, "unet2d_condition: sample height and width must be multiples of %d",
                         1 << (nb - 1));

  mmp_tensor_t *x = sd_input_f32(xs, u->be);
  mmp_tensor_t *ctx = sd_input_f32(es, u->be);
  mmp_tensor_t *mask = ms ? sd_input_mask(ms, u->be, false) : NULL;
  mmp_tensor_t *t = sd_input_f32(ts, u->be);
  if (t) {
    int64_t s1[1] = {nt};
    t = sd_swap(t, mmp_reshape(t, 1, s1));
  }
  /* time embedding */
  mmp_tensor_t *emb = t ? mmp_timestep_embedding(t, (int)(u->t_dim / 4), u->flip_sin_to_cos, u->freq_shift,
                                                 1.0, 10000.0) : NULL;
  mmp_tensor_unref(t);
  emb = sd_swap(emb, sd_linear(&u->t1, emb));
  emb = sd_swap(emb, emb ? mmp_silu(emb) : NULL);
  emb = sd_swap(emb, sd_linear(&u->t2, emb));

  if (x && u->center_input) x = sd_swap(x, mmp_scale(x, 2.0, -1.0));
  mmp_tensor_t *h = sd_conv(&u->conv_in, x);
  mmp_tensor_unref(x);

  /* skip connections */
  mmp_tensor_t *stack[MAXB * 8 + 2];
  int sp = 0;
  stack[sp++] = h ? mmp_tensor_ref(h) : NULL;
  for (int64_t i = 0; i < nb; i++) {
    const ublock_t *b = &u->down[i];
    for (int jj = 0; jj < b->n; jj++) {
      h = run_block_res(u, b, jj, h, emb, ctx, mask);
      stack[sp++] = h ? mmp_tensor_ref(h) : NULL;
    }
    if (b->has_resample) {
      h = sd_swap(h, sd_downsample(&b->resample, h));
      stack[sp++] = h ? mmp_tensor_ref(h) : NULL;
    }
  }
  h = sd_swap(h, resnet(u, &u->mid_res[0], h, emb));
  h = sd_swap(h, transformer(u, &u->mid_attn, h, ctx, mask));
  h = sd_swap(h, resnet(u, &u->mid_res[1], h, emb));
  for (int64_t i = 0; i < nb; i++) {
    const ublock_t *b = &u->up[i];
    for (int jj = 0; jj < b->n; jj++) {
      mmp_tensor_t *skip = sp > 0 ? stack[--sp] : NULL;
      if (h && skip) {
        mmp_tensor_t *cat[2] = {h, skip};
        h = sd_swap(h, mmp_concat(cat, 2, 1));
      } else {
        h = sd_swap(h, NULL);
      }
      mmp_tensor_unref(skip);
      h = run_block_res(u, b, jj, h, emb, ctx, mask);
    }
    if (b->has_resample) h = sd_swap(h, sd_upsample(&b->resample, h));
  }
  while (sp > 0) mmp_tensor_unref(stack[--sp]);
  h = sd_swap(h, sd_group_norm_silu(&u->norm_out, h));
  h = sd_swap(h, sd_conv(&u->conv_out, h));
  mmp_tensor_unref(emb);
  mmp_tensor_unref(ctx);
  mmp_tensor_unref(mask);
  if (!h) return mmp_error_prefix("unet2d_condition: ");
  return mmp_tensormap_set(out, "sample", h);
}

/* Every weight is trainable (diffusers' named_parameters, by the same
 * names; the transformers' 1x1 proj_in/proj_out are [out, in] here, as
 * when use_linear_projection is set). The tensors are the very ones the
 * modules compute with, so a tape watching them sees every use. */
static int unet_parameters(void *self, mmp_param_cb cb, void *user) {
  unet_t *u = self;
  if (!u->trainable)
    return mmp_error_set(MMP_EINVAL, "unet2d_condition: parameters need an instance created with trainable = true "
                                     "(the weights are otherwise a read-only mapping of the file)");
  for (size_t i = 0; i < mmp_tensormap_size(u->state); i++) {
    int rc = cb(user, mmp_tensormap_name(u->state, i), mmp_tensormap_at(u->state, i));
    if (rc) return rc;
  }
  return 0;
}

static const mmp_model_ops_t unet_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_MODEL, mmp_model_ops_t, "unet2d_condition", "1.0",
                            "diffusers UNet2DConditionModel (SD-1.x/2.x) with optional cross-attention mask",
                            unet_keys, unet_create, unet_destroy),
    .forward = unet_forward,
    .parameters = unet_parameters,
};

MMP_EXPORT int mmp_plugin_model_unet2d_condition_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_model_unet2d_condition_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &unet_ops.base);
}
