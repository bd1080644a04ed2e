/* plugins/encoders/vae.c - diffusers' AutoencoderKL: image -> latent
 * distribution (mean, logvar, sample from given noise) and latents -> image. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/sd_common.h"

#define MAXB 8

typedef struct vblock {
  int n;
  sd_resnet_t *res;
  bool has_resample;
  sd_conv_t resample;
} vblock_t;

typedef struct vmid {
  sd_resnet_t res[2];
  sd_vae_attn_t attn;
} vmid_t;

typedef struct vae {
  mmp_backend_t *be;
  char mode[16];
  int64_t nb, in_ch, out_ch, latent;
  double scaling;
  /* tiled decode (diffusers' enable_tiling): tile_sample is its
   * tile_sample_min_size, tile_latent its tile_latent_min_size */
  bool tiled;
  int64_t tile_sample, tile_latent;
  double tile_overlap;
  /* encoder */
  sd_conv_t e_conv_in, e_conv_out, quant;
  vblock_t e_down[MAXB];
  vmid_t e_mid;
  sd_norm_t e_norm_out;
  /* decoder */
  sd_conv_t d_conv_in, d_conv_out, post_quant;
  vblock_t d_up[MAXB];
  vmid_t d_mid;
  sd_norm_t d_norm_out;
  mmp_tensormap_t *state;
} vae_t;

static const mmp_key_t vae_keys[] = {
    SD_PART_KEYS("vae"),
    {"mode", MMP_TYPE_STRING, "\"encode\"", "default method: \"encode\" (sample -> latent_mean, latent_logvar) or \"decode\" (latents -> sample)", 0, 0},
    {"tiled", MMP_TYPE_BOOL, "false",
     "decode latents wider or taller than a tile in overlapping tiles blended together, as diffusers' "
     "enable_tiling() (less memory, a slightly different image)", 0, 0},
    {"tile_sample_size", MMP_TYPE_INT, "0",
     "with tiled: a tile's size in image pixels (diffusers' tile_sample_min_size); 0: config.json's sample_size", 0, 0},
    {"tile_overlap_factor", MMP_TYPE_FLOAT, "0.25", "with tiled: the share of a tile that overlaps its neighbours", 0,
     0},
    {NULL, 0, NULL, NULL, 0, 0}};

static void vblock_free(vblock_t *b) {
  for (int j = 0; j < b->n; j++) sd_resnet_free(&b->res[j]);
  free(b->res);
  b->res = NULL;
  sd_conv_free(&b->resample);
}

static void vmid_free(vmid_t *m) {
  sd_resnet_free(&m->res[0]);
  sd_resnet_free(&m->res[1]);
  sd_vae_attn_free(&m->attn);
}

static void vae_destroy(void *self) {
  vae_t *v = self;
  if (!v) return;
  sd_conv_free(&v->e_conv_in);
  sd_conv_free(&v->e_conv_out);
  sd_conv_free(&v->quant);
  sd_conv_free(&v->d_conv_in);
  sd_conv_free(&v->d_conv_out);
  sd_conv_free(&v->post_quant);
  sd_norm_free(&v->e_norm_out);
  sd_norm_free(&v->d_norm_out);
  for (int i = 0; i < MAXB; i++) {
    vblock_free(&v->e_down[i]);
    vblock_free(&v->d_up[i]);
  }
  vmid_free(&v->e_mid);
  vmid_free(&v->d_mid);
  mmp_tensormap_free(v->state);
  free(v);
}

static void vmid_load(vmid_t *m, sd_weights_t *w, const char *part, int64_t ch, int groups) {
  char p[128];
  snprintf(p, sizeof p, "%s.mid_block.resnets.0", part);
  sd_resnet_load(&m->res[0], w, p, ch, ch, 0, groups, 1e-6, 1.0);
  snprintf(p, sizeof p, "%s.mid_block.attentions.0", part);
  sd_vae_attn_load(&m->attn, w, p, ch, groups, 1e-6);
  snprintf(p, sizeof p, "%s.mid_block.resnets.1", part);
  sd_resnet_load(&m->res[1], w, p, ch, ch, 0, groups, 1e-6, 1.0);
}

static mmp_tensor_t *vmid(const vmid_t *m, mmp_tensor_t *h) {
  h = sd_swap(h, sd_resnet(&m->res[0], h, NULL));
  h = sd_swap(h, sd_vae_attn(&m->attn, h));
  return sd_swap(h, sd_resnet(&m->res[1], h, NULL));
}

static int vae_build(vae_t *v, const json_t *j, sd_weights_t *w, const char *cpath) {
  int rc;
  const char *cls = sd_json_str(j, "_class_name", "AutoencoderKL");
  if (strcmp(cls, "AutoencoderKL") != 0)
    return mmp_error_set(MMP_EDATA, "%s: _class_name is %s, expected AutoencoderKL", cpath, cls);
  int64_t nb = (int64_t)sd_json_list_size(j, "block_out_channels");
  if (nb < 1 || nb > MAXB)
    return mmp_error_set(MMP_EDATA, "%s: block_out_channels must list 1..%d sizes", cpath, MAXB);
  int64_t boc[MAXB], L, groups;
  const int64_t W = SD_MAX_WIDTH;
  if ((rc = sd_json_int_list_range(j, "block_out_channels", 0, 1, W, (size_t)nb, boc)) ||
      (rc = sd_json_int_range(j, "layers_per_block", 1, 1, 8, &L)) ||
      (rc = sd_json_int_range(j, "in_channels", 3, 1, W, &v->in_ch)) ||
      (rc = sd_json_int_range(j, "out_channels", 3, 1, W, &v->out_ch)) ||
      (rc = sd_json_int_range(j, "latent_channels", 4, 1, W, &v->latent)) ||
      (rc = sd_json_int_range(j, "norm_num_groups", 32, 1, W, &groups)) ||
      (rc = sd_json_float(j, "scaling_factor", 0.18215, &v->scaling)))
    return mmp_error_prefix("%s: ", cpath);
  const char *act = sd_json_str(j, "act_fn", "silu");
  if (strcmp(act, "silu"))
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: act_fn %s is not supported (silu only)", cpath, act);
  for (int64_t i = 0; i < nb; i++) {
    const char *dt = sd_json_list_str(j, "down_block_types", (size_t)i);
    const char *ut = sd_json_list_str(j, "up_block_types", (size_t)i);
    if (!dt || strcmp(dt, "DownEncoderBlock2D") || !ut || strcmp(ut, "UpDecoderBlock2D"))
      return mmp_error_set(MMP_EUNSUPPORTED, "%s: block %lld: only DownEncoderBlock2D / UpDecoderBlock2D",
                           cpath, (long long)i);
    if (boc[i] % groups)
      return mmp_error_set(MMP_EDATA, "%s: block_out_channels[%lld] = %lld does not divide into %lld groups",
                           cpath, (long long)i, (long long)boc[i], (long long)groups);
  }
  if (L < 1 || L > 8) return mmp_error_set(MMP_EDATA, "%s: layers_per_block must be 1..8", cpath);
  v->nb = nb;
  int g = (int)groups;
  char p[128];
  /* encoder */
  sd_conv_load(&v->e_conv_in, w, "encoder.conv_in", v->in_ch, boc[0], 3, 1, 1);
  int64_t out_c = boc[0];
  for (int64_t i = 0; i < nb; i++) {
    int64_t in_c = out_c;
    out_c = boc[i];
    vblock_t *b = &v->e_down[i];
    b->n = (int)L;
    if (!(b->res = calloc((size_t)L, sizeof *b->res))) return mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int jj = 0; jj < b->n; jj++) {
      snprintf(p, sizeof p, "encoder.down_blocks.%lld.resnets.%d", (long long)i, jj);
      sd_resnet_load(&b->res[jj], w, p, jj ? out_c : in_c, out_c, 0, g, 1e-6, 1.0);
    }
    if (i < nb - 1) {
      b->has_resample = true;
      snprintf(p, sizeof p, "encoder.down_blocks.%lld.downsamplers.0.conv", (long long)i);
      sd_conv_load(&b->resample, w, p, out_c, out_c, 3, 2, 0);
    }
  }
  vmid_load(&v->e_mid, w, "encoder", boc[nb - 1], g);
  sd_norm_load(&v->e_norm_out, w, "encoder.conv_norm_out", boc[nb - 1], g, 1e-6);
  sd_conv_load(&v->e_conv_out, w, "encoder.conv_out", boc[nb - 1], 2 * v->latent, 3, 1, 1);
  sd_conv_load(&v->quant, w, "quant_conv", 2 * v->latent, 2 * v->latent, 1, 1, 0);
  /* decoder */
  sd_conv_load(&v->post_quant, w, "post_quant_conv", v->latent, v->latent, 1, 1, 0);
  sd_conv_load(&v->d_conv_in, w, "decoder.conv_in", v->latent, boc[nb - 1], 3, 1, 1);
  vmid_load(&v->d_mid, w, "decoder", boc[nb - 1], g);
  out_c = boc[nb - 1];
  for (int64_t i = 0; i < nb; i++) {
    int64_t prev = out_c;
    out_c = boc[nb - 1 - i];
    vblock_t *b = &v->d_up[i];
    b->n = (int)L + 1;
    if (!(b->res = calloc((size_t)b->n, sizeof *b->res))) return mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int jj = 0; jj < b->n; jj++) {
      snprintf(p, sizeof p, "decoder.up_blocks.%lld.resnets.%d", (long long)i, jj);
      sd_resnet_load(&b->res[jj], w, p, jj ? out_c : prev, out_c, 0, g, 1e-6, 1.0);
    }
    if (i < nb - 1) {
      b->has_resample = true;
      snprintf(p, sizeof p, "decoder.up_blocks.%lld.upsamplers.0.conv", (long long)i);
      sd_conv_load(&b->resample, w, p, out_c, out_c, 3, 1, 1);
    }
  }
  sd_norm_load(&v->d_norm_out, w, "decoder.conv_norm_out", boc[0], g, 1e-6);
  sd_conv_load(&v->d_conv_out, w, "decoder.conv_out", boc[0], v->out_ch, 3, 1, 1);
  return 0;
}

static int vae_key_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

/* The tiled-decode keys; the tile's default size is config.json's
 * sample_size (diffusers' default 32 when absent; its first item when a
 * list), and the latent tile int(sample / 2^(blocks-1)) as diffusers'. */
static int vae_config_tiles(vae_t *v, const mmp_config_t *cfg, const json_t *j, const char *cpath) {
  int rc;
  int64_t ts = 0;
  v->tile_overlap = 0.25;
  if ((rc = mmp_config_get_bool(cfg, "tiled", &v->tiled)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_int(cfg, "tile_sample_size", &ts)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_float(cfg, "tile_overlap_factor", &v->tile_overlap)) < 0 && rc != MMP_ENOENT) return rc;
  mmp_error_clear();
  if (ts == 0) {
    size_t n = sd_json_list_size(j, "sample_size");
    int64_t ss[2] = {32, 32};
    if ((rc = n == 1 || n == 2 ? sd_json_int_list_range(j, "sample_size", 32, 1, SD_MAX_WIDTH, n, ss)
                               : sd_json_int_range(j, "sample_size", 32, 1, SD_MAX_WIDTH, ss)))
      return mmp_error_prefix("%s: ", cpath);
    ts = ss[0];
  }
  if (ts < 1 || ts > SD_MAX_WIDTH) return vae_key_error(cfg, "tile_sample_size", "must be 1..65536 (0: sample_size)");
  if (!(v->tile_overlap >= 0.0 && v->tile_overlap < 1.0))
    return vae_key_error(cfg, "tile_overlap_factor", "must be in [0, 1)");
  v->tile_sample = ts;
  v->tile_latent = (int64_t)((double)ts / (double)(1 << (v->nb - 1)));
  /* diffusers steps through the latent by int(tile_latent * (1 - overlap)):
   * a step of 0 would never advance */
  if (v->tiled && (int64_t)((double)v->tile_latent * (1.0 - v->tile_overlap)) < 1) {
    char msg[160];
    snprintf(msg, sizeof msg, "%lld with tile_overlap_factor %g leaves no step between tiles (the latent tile is %lld)",
             (long long)ts, v->tile_overlap, (long long)v->tile_latent);
    return vae_key_error(cfg, "tile_sample_size", msg);
  }
  return 0;
}

static int vae_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  const char *mode = "encode";
  if (mmp_config_get_string(cfg, "mode", &mode) < 0 && mmp_error_code() != MMP_ENOENT) return mmp_error_code();
  mmp_error_clear();
  if (!mode || (strcmp(mode, "encode") && strcmp(mode, "decode"))) {
    const mmp_config_t *n = mmp_config_lookup(cfg, "mode");
    return mmp_error_set(MMP_ECONFIG, "%s:%d: mode: must be \"encode\" or \"decode\", not \"%s\"",
                         n && mmp_config_file(n) ? mmp_config_file(n) : "(config)", n ? mmp_config_line(n) : 0,
                         mode ? mode : "");
  }
  char cpath[4096], wpath[4096];
  int rc = sd_locate_part(cfg, SD_PART_VAE, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  json_t *j = sd_json_load(cpath);
  if (!j) return mmp_error_code();
  vae_t *v = calloc(1, sizeof *v);
  if (!v) {
    json_decref(j);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  snprintf(v->mode, sizeof v->mode, "%s", mode);
  v->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_VAE};
  map.n_blocks = (int)sd_json_list_size(j, "block_out_channels");
  int64_t L = 1;
  sd_json_int(j, "layers_per_block", 1, &L);
  map.layers_per_block = (int)L;
  sd_weights_t *w = sd_weights_for(cfg, wpath, &map, v->be);
  if (!w) {
    json_decref(j);
    vae_destroy(v);
    return mmp_error_code();
  }
  rc = vae_build(v, j, w, cpath);
  if (rc == 0) rc = vae_config_tiles(v, cfg, j, cpath);
  json_decref(j);
  if (rc) {
    sd_weights_free(w);
    vae_destroy(v);
    return rc;
  }
  v->state = sd_weights_take_collected(w);
  if ((rc = sd_weights_finish(w, "vae"))) {
    vae_destroy(v);
    return rc;
  }
  *out_self = v;
  return 0;
}

static int vae_encode(vae_t *v, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_tensor_t *xs = mmp_tensormap_need(in, "sample");
  if (!xs) return mmp_error_prefix("vae encode: ");
  if (xs->ndim != 4 || xs->shape[1] != v->in_ch)
    return mmp_error_set(MMP_ESHAPE, "vae encode: sample must be [B, %lld, H, W]", (long long)v->in_ch);
  int f = 1 << (v->nb - 1);
  if (xs->shape[2] % f || xs->shape[3] % f)
    return mmp_error_set(MMP_ESHAPE, "vae encode: height and width must be multiples of %d", f);
  const mmp_tensor_t *ns = mmp_tensormap_get(in, "noise");
  mmp_tensor_t *h = sd_input_f32(xs, v->be);
  h = sd_swap(h, sd_conv(&v->e_conv_in, h));
  for (int64_t i = 0; i < v->nb; i++) {
    const vblock_t *b = &v->e_down[i];
    for (int jj = 0; jj < b->n; jj++) h = sd_swap(h, sd_resnet(&b->res[jj], h, NULL));
    if (b->has_resample) h = sd_swap(h, sd_downsample(&b->resample, h));
  }
  h = vmid(&v->e_mid, h);
  h = sd_swap(h, sd_group_norm_silu(&v->e_norm_out, h));
  h = sd_swap(h, sd_conv(&v->e_conv_out, h));
  h = sd_swap(h, sd_conv(&v->quant, h));
  if (!h) return mmp_error_prefix("vae encode: ");
  mmp_tensor_t *parts[2];
  if (mmp_chunk(h, 2, 1, parts) < 0) {
    mmp_tensor_unref(h);
    return mmp_error_prefix("vae encode: ");
  }
  mmp_tensor_unref(h);
  mmp_tensor_t *mean = mmp_contiguous(parts[0]);
  mmp_tensor_t *logvar = mmp_clamp(parts[1], -30.0, 20.0);
  mmp_tensor_unref(parts[0]);
  mmp_tensor_unref(parts[1]);
  if (!mean || !logvar) {
    mmp_tensor_unref(mean);
    mmp_tensor_unref(logvar);
    return mmp_error_prefix("vae encode: ");
  }
  int rc = 0;
  if (ns) {
    mmp_tensor_t *noise = sd_input_f32(ns, v->be);
    if (noise && !mmp_tensor_same_shape(noise, mean)) {
      char a[64], b[64];
      mmp_tensor_unref(noise);
      mmp_tensor_unref(mean);
      mmp_tensor_unref(logvar);
      return mmp_error_set(MMP_ESHAPE, "vae encode: noise is %s, latent_mean is %s", mmp_tensor_describe(ns, a, sizeof a),
                           mmp_tensor_describe(mean, b, sizeof b));
    }
    mmp_tensor_t *sd = mmp_scale(logvar, 0.5, 0.0);
    sd = sd_swap(sd, sd ? mmp_exp(sd) : NULL);
    mmp_tensor_t *s = sd && noise ? mmp_mul(sd, noise) : NULL;
    s = sd_swap(s, s ? mmp_add(mean, s) : NULL);
    mmp_tensor_unref(sd);
    mmp_tensor_unref(noise);
    if (!s) rc = mmp_error_prefix("vae encode: ");
    else rc = mmp_tensormap_set(out, "latent_sample", s);
  }
  if (rc == 0) rc = mmp_tensormap_set(out, "latent_mean", mean);
  else mmp_tensor_unref(mean);
  if (rc == 0) rc = mmp_tensormap_set(out, "latent_logvar", logvar);
  else mmp_tensor_unref(logvar);
  return rc;
}

/* The decoder proper (post_quant_conv included) on an f32 latent; consumes
 * @h. */
static mmp_tensor_t *vae_decoder(vae_t *v, mmp_tensor_t *h) {
  h = sd_swap(h, sd_conv(&v->post_quant, h));
  h = sd_swap(h, sd_conv(&v->d_conv_in, h));
  h = vmid(&v->d_mid, h);
  for (int64_t i = 0; i < v->nb; i++) {
    const vblock_t *b = &v->d_up[i];
    for (int jj = 0; jj < b->n; jj++) h = sd_swap(h, sd_resnet(&b->res[jj], h, NULL));
    if (b->has_resample) h = sd_swap(h, sd_upsample(&b->resample, h));
  }
  h = sd_swap(h, sd_group_norm_silu(&v->d_norm_out, h));
  return sd_swap(h, sd_conv(&v->d_conv_out, h));
}

/* diffusers' blend_v (@dim 2) / blend_h (@dim 3), in place on @b: its first
 * e = min(a, b, @extent) rows (columns) become a's last e * (1 - y/e) + b's
 * * (y/e), each product rounded to f32 as torch's. */
static int vae_blend(const mmp_tensor_t *a, mmp_tensor_t *b, int dim, int64_t extent) {
  int64_t e = extent;
  if (a->shape[dim] < e) e = a->shape[dim];
  if (b->shape[dim] < e) e = b->shape[dim];
  if (e <= 0) return 0;
  int64_t ws[4] = {1, 1, 1, 1};
  ws[dim] = e;
  mmp_tensor_t *wa = mmp_tensor_new(mmp_backend_get("cpu"), MMP_F32, 4, ws);
  mmp_tensor_t *wb = mmp_tensor_new(mmp_backend_get("cpu"), MMP_F32, 4, ws);
  if (!wa || !wb) {
    mmp_tensor_unref(wa);
    mmp_tensor_unref(wb);
    return mmp_error_code();
  }
  float *pa = mmp_tensor_data(wa), *pb = mmp_tensor_data(wb);
  for (int64_t y = 0; y < e; y++) {
    pa[y] = (float)(1.0 - (double)y / (double)e);
    pb[y] = (float)((double)y / (double)e);
  }
  mmp_backend_t *be = mmp_tensor_backend(b);
  mmp_tensor_t *wa_be = mmp_to_backend(wa, be), *wb_be = mmp_to_backend(wb, be);
  mmp_tensor_t *as = mmp_slice((mmp_tensor_t *)a, dim, a->shape[dim] - e, a->shape[dim], 1);
  mmp_tensor_t *bs = mmp_slice(b, dim, 0, e, 1);
  mmp_tensor_t *x = as && wa_be ? mmp_mul(as, wa_be) : NULL;
  mmp_tensor_t *y = bs && wb_be ? mmp_mul(bs, wb_be) : NULL;
  mmp_tensor_t *s = x && y ? mmp_add(x, y) : NULL;
  int rc = s ? mmp_copy_into(bs, s) : mmp_error_code();
  mmp_tensor_unref(s);
  mmp_tensor_unref(x);
  mmp_tensor_unref(y);
  mmp_tensor_unref(as);
  mmp_tensor_unref(bs);
  mmp_tensor_unref(wa_be);
  mmp_tensor_unref(wb_be);
  mmp_tensor_unref(wa);
  mmp_tensor_unref(wb);
  return rc < 0 ? rc : 0;
}

/* diffusers' AutoencoderKL.tiled_decode: latent tiles of tile_latent
 * starting every int(tile_latent * (1 - overlap)), each decoded alone,
 * blended with the (already blended) tile above and the one to the left
 * over int(tile_sample * overlap) pixels, and cropped to tile_sample minus
 * that. Only the previous row's tiles are kept; each tile's activations
 * come from the backend's pool and are back in it before the next tile. */
static mmp_tensor_t *vae_tiled_decode(vae_t *v, mmp_tensor_t *z) {
  const int64_t H = z->shape[2], W = z->shape[3], f = (int64_t)1 << (v->nb - 1);
  const int64_t step = (int64_t)((double)v->tile_latent * (1.0 - v->tile_overlap));
  const int64_t blend = (int64_t)((double)v->tile_sample * v->tile_overlap);
  const int64_t limit = v->tile_sample - blend;
  const int64_t nr = (H + step - 1) / step, nc = (W + step - 1) / step;
  /* the output: the sum of the cropped tiles' sizes (a tile of h latent
   * rows decodes to h * f) */
  int64_t oh = 0, ow = 0;
  for (int64_t i = 0; i < nr; i++) {
    int64_t th = f * (H - i * step < v->tile_latent ? H - i * step : v->tile_latent);
    oh += th < limit ? th : limit;
  }
  for (int64_t j = 0; j < nc; j++) {
    int64_t tw = f * (W - j * step < v->tile_latent ? W - j * step : v->tile_latent);
    ow += tw < limit ? tw : limit;
  }
  int64_t os[4] = {z->shape[0], v->out_ch, oh, ow};
  mmp_tensor_t *out = mmp_tensor_new(mmp_tensor_backend(z), MMP_F32, 4, os);
  mmp_tensor_t **prev = calloc((size_t)nc, sizeof *prev), **cur = calloc((size_t)nc, sizeof *cur);
  int rc = out && prev && cur ? 0 : (out ? mmp_error_set(MMP_ENOMEM, "out of memory") : mmp_error_code());
  int64_t y0 = 0;
  for (int64_t i = 0; i < nr && rc == 0; i++) {
    int64_t x0 = 0, rh = 0;
    for (int64_t j = 0; j < nc && rc == 0; j++) {
      mmp_tensor_t *t = mmp_slice(z, 2, i * step, i * step + v->tile_latent < H ? i * step + v->tile_latent : H, 1);
      t = sd_swap(t, t ? mmp_slice(t, 3, j * step, j * step + v->tile_latent < W ? j * step + v->tile_latent : W, 1)
                       : NULL);
      t = sd_swap(t, t ? mmp_contiguous(t) : NULL);
      t = t ? vae_decoder(v, t) : NULL;
      if (!t || (i > 0 && (rc = vae_blend(prev[j], t, 2, blend)) < 0) ||
          (j > 0 && (rc = vae_blend(cur[j - 1], t, 3, blend)) < 0)) {
        if (!t) rc = mmp_error_code();
        mmp_tensor_unref(t);
        break;
      }
      cur[j] = t;
      int64_t ch = t->shape[2] < limit ? t->shape[2] : limit, cw = t->shape[3] < limit ? t->shape[3] : limit;
      mmp_tensor_t *src = mmp_slice(t, 2, 0, ch, 1);
      src = sd_swap(src, src ? mmp_slice(src, 3, 0, cw, 1) : NULL);
      mmp_tensor_t *dst = mmp_slice(out, 2, y0, y0 + ch, 1);
      dst = sd_swap(dst, dst ? mmp_slice(dst, 3, x0, x0 + cw, 1) : NULL);
      rc = src && dst ? mmp_copy_into(dst, src) : mmp_error_code();
      if (rc > 0) rc = 0;
      mmp_tensor_unref(src);
      mmp_tensor_unref(dst);
      x0 += cw;
      rh = ch;
    }
    y0 += rh;
    for (int64_t j = 0; j < nc; j++) {
      mmp_tensor_unref(prev[j]);
      prev[j] = cur[j];
      cur[j] = NULL;
    }
  }
  for (int64_t j = 0; prev && j < nc; j++) mmp_tensor_unref(prev[j]);
  for (int64_t j = 0; cur && j < nc; j++) mmp_tensor_unref(cur[j]);
  free(prev);
  free(cur);
  if (rc < 0) {
    mmp_tensor_unref(out);
    return NULL;
  }
  return out;
}

static int vae_decode(vae_t *v, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_tensor_t *zs = mmp_tensormap_need(in, "latents");
  if (!zs) return mmp_error_prefix("vae decode: ");
  if (zs->ndim != 4 || zs->shape[1] != v->latent)
    return mmp_error_set(MMP_ESHAPE, "vae decode: latents must be [B, %lld, h, w]", (long long)v->latent);
  mmp_tensor_t *h = sd_input_f32(zs, v->be);
  /* diffusers tiles only latents larger than one tile */
  if (h && v->tiled && (h->shape[2] > v->tile_latent || h->shape[3] > v->tile_latent))
    h = sd_swap(h, vae_tiled_decode(v, h));
  else if (h)
    h = vae_decoder(v, h);
  if (!h) return mmp_error_prefix("vae decode: ");
  return mmp_tensormap_set(out, "sample", h);
}

static int vae_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  vae_t *v = self;
  const char *m = method && *method ? method : v->mode;
  if (strcmp(m, "encode") == 0) return vae_encode(v, in, out);
  if (strcmp(m, "decode") == 0) return vae_decode(v, in, out);
  if (strcmp(m, "state_dict") == 0) return sd_state_dict(v->state, out);
  if (strcmp(m, "info") == 0) {
    /* scalars a pipeline needs: scaling_factor (config), downscale_factor
     * (2^(blocks-1)) and latent_channels */
    const char *names[3] = {"scaling_factor", "downscale_factor", "latent_channels"};
    double vals[3] = {v->scaling, (double)(1 << (v->nb - 1)), (double)v->latent};
    int64_t one[1] = {1};
    for (int i = 0; i < 3; i++) {
      mmp_tensor_t *s = mmp_tensor_full(mmp_backend_get("cpu"), MMP_F32, 1, one, vals[i]);
      if (!s) return mmp_error_code();
      int rc = mmp_tensormap_set(out, names[i], s);
      if (rc < 0) return rc;
    }
    return 0;
  }
  return mmp_error_set(MMP_EINVAL, "vae: unknown method \"%s\" (encode, decode, info, state_dict)", m);
}

static const mmp_encoder_ops_t vae_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "vae", "1.0",
                            "diffusers AutoencoderKL: encode to latent mean/logvar, decode latents",
                            vae_keys, vae_create, vae_destroy),
    .forward = vae_forward,
};

MMP_EXPORT int mmp_plugin_encoder_vae_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_vae_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &vae_ops.base); }
