/* plugins/encoders/vit.c - the Vision Transformer as an encoder: transformers'
 * ViTModel, BlipVisionModel and CLIPVisionModel(WithProjection), BLIP's
 * original VisionTransformer (plugins/common/vit.c). pixel_values ->
 * last_hidden_state, pooler_output, image_embeds (CLIP), hidden_states.K. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/towers.h"

typedef struct vitp {
  mmp_backend_t *be;
  sd_vit_t v;
  sd_linear_t proj; /* CLIP's visual_projection (w NULL when absent) */
  bool out_hidden;
  mmp_tensormap_t *state;
} vitp_t;

static const mmp_key_t vit_keys[] = {
    SD_TOWER_KEYS,
    {"vit", MMP_TYPE_STRING, "\"\"",
     "BLIP's VisionTransformer without config.json: \"base\" or \"large\" (\"\": sized from the weights)", 0, 0},
    {"num_heads", MMP_TYPE_INT, "0", "BLIP's VisionTransformer: attention heads (0: 12 at width 768, 16 at 1024)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static void vit_destroy(void *self) {
  vitp_t *p = self;
  if (!p) return;
  sd_vit_free(&p->v);
  sd_linear_free(&p->proj);
  mmp_tensormap_free(p->state);
  free(p);
}

/* The variant from config.json's model_type (none: BLIP's own). */
static int pick_kind(const json_t *j, const char *cpath, sd_vit_kind_t *kind, const json_t **part,
                     const char **def_prefix) {
  *part = j;
  *def_prefix = "";
  if (!j) {
    *kind = SD_VIT_BLIP;
    return 0;
  }
  const char *mt = sd_json_str(j, "model_type", "");
  if (!strcmp(mt, "vit")) {
    *kind = SD_VIT_HF;
  } else if (!strcmp(mt, "blip_vision_model")) {
    *kind = SD_VIT_BLIP_HF;
  } else if (!strcmp(mt, "blip")) { /* a BLIP folder: its vision part */
    *kind = SD_VIT_BLIP_HF;
    *part = json_object_get(j, "vision_config");
    *def_prefix = "vision_model.";
    if (!json_is_object(*part)) return mmp_error_set(MMP_EDATA, "%s: no vision_config object", cpath);
  } else if (!strcmp(mt, "clip_vision_model")) {
    *kind = SD_VIT_CLIP_HF;
  } else if (!strcmp(mt, "clip")) { /* a CLIPModel folder: its vision part */
    *kind = SD_VIT_CLIP_HF;
    *part = json_object_get(j, "vision_config");
    if (!json_is_object(*part)) return mmp_error_set(MMP_EDATA, "%s: no vision_config object", cpath);
  } else {
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: vit: model_type \"%s\" (vit, blip_vision_model, blip, clip_vision_model, clip)",
                         cpath, mt);
  }
  return 0;
}

static int vit_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  char cpath[4096], wpath[4096];
  int rc = sd_tower_locate(cfg, false, cpath, sizeof cpath, wpath, sizeof wpath);
  if (rc) return rc;
  const char *preset, *prefix;
  int64_t heads;
  vitp_t *p = calloc(1, sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  json_t *j = NULL;
  sd_weights_t *w = NULL;
  if ((rc = sd_cfg_str(cfg, "vit", "", &preset)) || (rc = sd_cfg_int(cfg, "num_heads", 0, &heads)) ||
      (rc = sd_cfg_bool(cfg, "output_hidden_states", false, &p->out_hidden)))
    goto fail;
  if (cpath[0] && !(j = sd_json_load(cpath))) {
    rc = mmp_error_code();
    goto fail;
  }
  sd_vit_kind_t kind = SD_VIT_BLIP;
  const json_t *part;
  const char *def_prefix;
  if ((rc = pick_kind(j, cpath, &kind, &part, &def_prefix))) goto fail;
  if ((rc = sd_cfg_str(cfg, "prefix", def_prefix, &prefix))) goto fail;
  if (kind != SD_VIT_BLIP && (preset[0] || heads)) {
    rc = sd_cfg_bad(cfg, preset[0] ? "vit" : "num_heads", "only for BLIP's VisionTransformer (no config.json)");
    goto fail;
  }
  if (preset[0] && sd_vit_blip_preset(preset, &p->v)) {
    rc = sd_cfg_bad(cfg, "vit", "must be \"base\" or \"large\"");
    goto fail;
  }
  if (heads < 0 || heads > 4096) {
    rc = sd_cfg_bad(cfg, "num_heads", "out of range");
    goto fail;
  }
  if (heads) p->v.heads = heads;
  p->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  sd_ldm_map_t map = {.part = SD_PART_PLAIN};
  if (!(w = sd_weights_for(cfg, wpath, &map, p->be)) || (rc = sd_weights_set_prefix(w, prefix))) {
    rc = mmp_error_code();
    goto fail;
  }
  if (kind == SD_VIT_CLIP_HF) {
    /* CLIPVisionModelWithProjection and CLIPModel both name the tower
     * vision_model.* and the projection visual_projection.weight; the text
     * half of a CLIPModel file is not this component's. */
    sd_weights_ignore_suffix(w, "position_ids");
    if ((rc = sd_weights_add_scope(w, "vision_model.")) || (rc = sd_weights_add_scope(w, "visual_projection.")) ||
        (rc = sd_vit_load(&p->v, kind, part, cpath, w, "vision_model.")))
      goto fail;
    if (sd_weights_has(w, "visual_projection.weight")) {
      int64_t pd;
      const json_t *pj = j; /* both configs hold projection_dim at their top */
      if ((rc = sd_json_int(pj, "projection_dim", 512, &pd))) {
        rc = mmp_error_prefix("%s: ", cpath);
        goto fail;
      }
      if (pd <= 0 || pd > 65536) {
        rc = mmp_error_set(MMP_EDATA, "%s: projection_dim %lld out of range", cpath, (long long)pd);
        goto fail;
      }
      sd_linear_load(&p->proj, w, "visual_projection", p->v.dim, pd, false);
    }
  } else if ((rc = sd_vit_load(&p->v, kind, part, cpath, w, ""))) {
    goto fail;
  }
  p->state = sd_weights_take_collected(w);
  rc = sd_weights_finish(w, "vit");
  w = NULL;
  if (rc) goto fail;
  json_decref(j);
  *out_self = p;
  return 0;
fail:
  json_decref(j);
  sd_weights_free(w);
  vit_destroy(p);
  return rc ? rc : mmp_error_code();
}

static int vit_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  vitp_t *p = self;
  if (method && !strcmp(method, "state_dict")) return sd_state_dict(p->state, out);
  if (method && *method && strcmp(method, "forward") && strcmp(method, "encode"))
    return mmp_error_set(MMP_EINVAL, "vit: unknown method \"%s\" (forward, state_dict)", method);
  const mmp_tensor_t *px = mmp_tensormap_need(in, "pixel_values");
  if (!px) return mmp_error_prefix("vit: ");
  mmp_tensor_t **hidden = p->out_hidden ? calloc((size_t)p->v.layers + 1, sizeof *hidden) : NULL;
  if (p->out_hidden && !hidden) return mmp_error_set(MMP_ENOMEM, "out of memory");
  mmp_tensor_t *x = sd_input_f32(px, p->be), *pooled = NULL;
  mmp_tensor_t *h = sd_vit(&p->v, x, hidden, &pooled);
  mmp_tensor_unref(x);
  int rc = h ? mmp_tensormap_set(out, "last_hidden_state", h) : mmp_error_prefix("vit: ");
  mmp_tensor_t *embeds = NULL;
  if (pooled && rc == 0 && p->proj.w && !(embeds = sd_linear(&p->proj, pooled))) rc = mmp_error_prefix("vit: ");
  if (pooled && rc == 0) rc = mmp_tensormap_set(out, "pooler_output", pooled);
  else mmp_tensor_unref(pooled);
  if (embeds && rc == 0) rc = mmp_tensormap_set(out, "image_embeds", embeds);
  else mmp_tensor_unref(embeds);
  if (hidden) {
    if (rc == 0) rc = sd_put_hidden(out, hidden, p->v.layers + 1);
    for (int64_t k = 0; k <= p->v.layers; k++) mmp_tensor_unref(hidden[k]);
    free(hidden);
  }
  return rc;
}

static const mmp_encoder_ops_t vit_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "vit", "1.0",
                            "Vision Transformer (ViTModel, BlipVisionModel, CLIPVisionModel(WithProjection), "
                            "BLIP's VisionTransformer): pixel_values -> last_hidden_state, pooler_output, image_embeds",
                            vit_keys, vit_create, vit_destroy),
    .forward = vit_forward,
};

MMP_EXPORT int mmp_plugin_encoder_vit_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_vit_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &vit_ops.base); }
