/* tools/cmd_init_weights.c - pipeline init-weights: seeded random weights with
 * the names and shapes a part's config.json implies (unet, vae, text encoder). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void init_weights_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline init-weights PART_CONFIG.json OUT.safetensors [--seed N]\n\n"
          "Write seeded random weights for the part described by a diffusers/transformers\n"
          "config.json: UNet2DConditionModel (unet2d_condition), AutoencoderKL (vae) or\n"
          "CLIPTextModel (clip_text), detected from _class_name / architectures / model_type.\n"
          "Names are the diffusers/transformers ones, values f32: normal(0, 1/sqrt(fan_in))\n"
          "for matrices and kernels, normal(0, 0.02) for embedding tables, 1 for norm\n"
          "weights, 0 for biases. The same seed gives the same file on every machine.\n"
          "The weights are random: good for tests, demos and benchmarks, not for images.\n\n"
          "  --seed N     seed (default 0)\n"
          "  -h, --help   this help\n");
}

/* The implementation for a config.json, from its text (no JSON library
 * needed: the class names are distinctive). */
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
    rc = mmp_error_set(MMP_EDATA,
                       "%s: not a UNet2DConditionModel, AutoencoderKL or CLIPTextModel config "
                       "(no matching _class_name, architectures or model_type)", path);
  }
  free(buf);
  return rc;
}

int cmd_init_weights(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"seed", required_argument, NULL, 'S'},
                                       {NULL, 0, NULL, 0}};
  long long seed = 0;
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
    default: return pipe_usage("init-weights", "bad option");
    }
  }
  if (optind != argc - 2) return pipe_usage("init-weights", "expected PART_CONFIG.json OUT.safetensors");
  const char *cpath = argv[optind], *out_path = argv[optind + 1];
  const char *kind_s = NULL, *name = NULL;
  int rc = detect_part(cpath, &kind_s, &name);
  if (rc < 0) return pipe_fail("init-weights", rc);
  char abs[PATH_MAX];
  if (!realpath(cpath, abs)) snprintf(abs, sizeof abs, "%s", cpath);
  char text[PATH_MAX + 256];
  /* The path goes into a libconfig string: refuse quotes and backslashes
   * rather than escape them. */
  if (strpbrk(abs, "\"\\")) {
    mmp_error_set(MMP_EINVAL, "%s: path contains a quote or backslash", abs);
    return pipe_fail("init-weights", MMP_EINVAL);
  }
  snprintf(text, sizeof text, "%s = { name = \"%s\"; config = \"%s\"; init_seed = %lld; };\n", kind_s, name, abs,
           seed);
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
