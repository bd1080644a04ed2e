/* tools/cmd_init_weights.c - pipeline init-weights: seeded random weights with
 * the names and shapes a part's config.json implies (unet, vae, text encoder,
 * BLIP). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void init_weights_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline init-weights PART_CONFIG.json OUT.safetensors [--seed N]\n"
          "                             [--part NAME] [--vit base|large]\n\n"
          "Write seeded random weights for the part described by a diffusers/transformers\n"
          "config.json: UNet2DConditionModel (unet2d_condition), AutoencoderKL (vae) or\n"
          "CLIPTextModel (clip_text), detected from _class_name / architectures / model_type,\n"
          "or BLIP_Base (blip: BLIP's med_config.json, a BERT config with\n"
          "\"add_cross_attention\": true). Names are the diffusers/transformers ones, for\n"
          "BLIP its checkpoints' (visual_encoder.*, text_encoder.*, with the buffer\n"
          "text_encoder.embeddings.position_ids = 0..max_position_embeddings-1). Values\n"
          "f32: normal(0, 1/sqrt(fan_in)) for matrices, kernels and BLIP's cls_token and\n"
          "pos_embed, normal(0, 0.02) for embedding tables, 1 for norm weights, 0 for\n"
          "biases. The same seed gives the same file on every machine. The weights are\n"
          "random: good for tests, demos and benchmarks, not for images.\n\n"
          "BLIP's vision tower is not in med_config.json: give --vit (BLIP's ViT-B/16 or\n"
          "ViT-L/16, image_size from the config, default 224), or describe it in the\n"
          "config with mmpipe's keys vision_width, vision_depth, vision_heads,\n"
          "vision_patch_size, vision_mlp_ratio and image_size (doc/plugins/blip.md).\n\n"
          "  --seed N       seed (default 0)\n"
          "  --part NAME    the part, instead of detecting it: unet2d_condition, vae,\n"
          "                 clip_text or blip\n"
          "  --vit SIZE     blip: the vision tower, base or large\n"
          "  -h, --help     this help\n");
}

/* The implementation for a config.json: the diffusers/transformers class
 * names are distinctive enough to be found in the text; BLIP's med_config.json
 * names only BertModel, so it is recognised by its keys. */
static int detect_part(const char *path, const char **kind, const char **name) {
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "%s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t cap = 0, len = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        fclose(f);
        return mmp_error_set(MMP_ENOMEM, "out of memory");
      }
      buf = nb;
    }
    size_t r = fread(buf + len, 1, 4096, f);
    len += r;
    if (r < 4096) break;
  }
  fclose(f);
  buf[len] = '\0';
  int rc = 0;
  if (strstr(buf, "\"UNet2DConditionModel\"")) {
    *kind = "model";
    *name = "unet2d_condition";
  } else if (strstr(buf, "\"AutoencoderKL\"")) {
    *kind = "encoder";
    *name = "vae";
  } else if (strstr(buf, "\"CLIPTextModel\"") || strstr(buf, "\"clip_text_model\"")) {
    *kind = "encoder";
    *name = "clip_text";
  } else {
    /* BLIP's med_config.json: a BertConfig with cross-attention */
    json_error_t je;
    json_t *j = json_loadb(buf, len, 0, &je);
    const json_t *mt = j ? json_object_get(j, "model_type") : NULL, *ca = j ? json_object_get(j, "add_cross_attention") : NULL;
    if (j && json_is_string(mt) && !strcmp(json_string_value(mt), "bert") && json_is_true(ca)) {
      *kind = "encoder";
      *name = "blip";
    } else if (!j) {
      rc = mmp_error_set(MMP_EDATA, "%s:%d:%d: not a JSON config: %s", path, je.line, je.column, je.text);
    } else {
      rc = mmp_error_set(MMP_EDATA,
                         "%s: not a UNet2DConditionModel, AutoencoderKL, CLIPTextModel or BLIP med_config "
                         "(BERT with add_cross_attention) config (no matching _class_name, architectures or "
                         "model_type; --part names the part)", path);
    }
    json_decref(j);
  }
  free(buf);
  return rc;
}

/* BLIP_Base's buffer text_encoder.embeddings.position_ids [1, P] = 0..P-1
 * (P: max_position_embeddings, BERT's default 512), which its checkpoints
 * hold and the blip plugin does not read. */
static int blip_position_ids(const char *cpath, mmp_tensormap_t *out) {
  json_error_t je;
  json_t *j = json_load_file(cpath, 0, &je);
  if (!j) return mmp_error_set(MMP_EDATA, "%s:%d:%d: %s", cpath, je.line, je.column, je.text);
  const json_t *v = json_object_get(j, "max_position_embeddings");
  json_int_t n = json_is_integer(v) ? json_integer_value(v) : 512;
  json_decref(j);
  if (n < 1 || n > 1 << 24)
    return mmp_error_set(MMP_EDATA, "%s: max_position_embeddings %lld out of range", cpath, (long long)n);
  int64_t shape[2] = {1, (int64_t)n};
  mmp_tensor_t *t = mmp_tensor_new(mmp_backend_get("cpu"), MMP_I64, 2, shape);
  if (!t) return mmp_error_code();
  int64_t *d = mmp_tensor_data(t);
  for (int64_t i = 0; i < n; i++) d[i] = i;
  return mmp_tensormap_set(out, "text_encoder.embeddings.position_ids", t);
}

/* The kind of a part's plugin name (--part). */
static const char *part_kind(const char *name) {
  if (!strcmp(name, "unet2d_condition")) return "model";
  if (!strcmp(name, "vae") || !strcmp(name, "clip_text") || !strcmp(name, "blip")) return "encoder";
  return NULL;
}

int cmd_init_weights(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"seed", required_argument, NULL, 'S'},
                                       {"part", required_argument, NULL, 'P'},
                                       {"vit", required_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
  long long seed = 0;
  const char *part = NULL, *vit = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': init_weights_help(stdout); return PIPE_EXIT_OK;
    case 'S': {
      char *end = NULL;
      errno = 0;
      seed = strtoll(optarg, &end, 10);
      if (errno || !end || *end || seed < 0) return pipe_usage("init-weights", "--seed needs an integer >= 0");
      break;
    }
    case 'P':
      if (!part_kind(optarg))
        return pipe_usage("init-weights", "--part: '%s' is not unet2d_condition, vae, clip_text or blip", optarg);
      part = optarg;
      break;
    case 'V':
      if (strcmp(optarg, "base") && strcmp(optarg, "large")) return pipe_usage("init-weights", "--vit must be base or large");
      vit = optarg;
      break;
    default: return pipe_usage("init-weights", "bad option");
    }
  }
  if (optind != argc - 2) return pipe_usage("init-weights", "expected PART_CONFIG.json OUT.safetensors");
  const char *cpath = argv[optind], *out_path = argv[optind + 1];
  const char *kind_s = NULL, *name = NULL;
  int rc = 0;
  if (part) kind_s = part_kind(part), name = part;
  else if ((rc = detect_part(cpath, &kind_s, &name)) < 0) return pipe_fail("init-weights", rc);
  bool blip = !strcmp(name, "blip");
  if (vit && !blip) return pipe_usage("init-weights", "--vit is for a BLIP config (this one is %s)", name);
  char abs[PATH_MAX];
  if (!realpath(cpath, abs)) snprintf(abs, sizeof abs, "%s", cpath);
  char text[PATH_MAX + 256];
  /* The path goes into a libconfig string: refuse quotes and backslashes
   * rather than escape them. */
  if (strpbrk(abs, "\"\\")) {
    mmp_error_set(MMP_EINVAL, "%s: path contains a quote or backslash", abs);
    return pipe_fail("init-weights", MMP_EINVAL);
  }
  /* blip: [ENC]'s id is checked against the word table, and plays no part
   * in the weights */
  snprintf(text, sizeof text, "%s = { name = \"%s\"; config = \"%s\"; init_seed = %lld;%s%s%s%s };\n", kind_s, name,
           abs, seed, blip ? " enc_token_id = 0;" : "", vit ? " vit = \"" : "", vit ? vit : "", vit ? "\";" : "");
  mmp_config_t *cfg = mmp_config_parse(text, "init-weights");
  if (!cfg) return pipe_fail("init-weights", mmp_error_code());
  mmp_registry_t *reg = mmp_registry_new();
  mmp_context_t *ctx = NULL;
  mmp_component_t *comp = NULL;
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_kind_t kind;
  mmp_kind_parse(kind_s, &kind);
  if (!reg || !in || !out || (rc = mmp_registry_set_search_path(reg, cfg)) < 0) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    goto done;
  }
  if (!(ctx = mmp_context_new(reg, cfg)) || !(comp = mmp_component_create(ctx, kind, kind_s))) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
    goto done;
  }
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)comp->plugin; /* model ops share the layout */
  if ((rc = ops->forward(comp->self, "state_dict", in, out)) < 0) goto done;
  if (blip && (rc = blip_position_ids(abs, out)) < 0) goto done;
  static const char *const meta[] = {"format", "pt", "generator", "mmpipe init-weights", NULL};
  if ((rc = mmp_safetensors_save_map(out_path, out, meta)) < 0) goto done;
  if (!pipe_quiet)
    fprintf(stderr, "pipeline init-weights: %s: %zu tensors (%s, seed %lld)\n", out_path, mmp_tensormap_size(out),
            name, seed);
done:
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return rc < 0 ? pipe_fail("init-weights", rc) : PIPE_EXIT_OK;
}
