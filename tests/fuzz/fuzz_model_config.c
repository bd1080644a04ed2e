/* tests/fuzz/fuzz_model_config.c - libFuzzer harness: a model's config.json
 * (plugins/common/sd_weights.c's JSON access, and the builders of
 * unet2d_condition, vae, clip_text and blip: BLIP's med_config.json with
 * mmpipe's vision_* keys), through the registry, with the weights of the
 * test fixtures.
 *
 * Input: one byte choosing the part and its weights (see parts[]), then the
 * config.json text. */
#include <mmpipe/mmpipe.h>

#include "tests/fuzz/fuzz.h"

static const struct {
  mmp_kind_t kind;
  const char *plugin, *weights; /* weights: under tests/fixtures */
  const char *extra;            /* more keys of the group */
} parts[] = {
    {MMP_KIND_MODEL, "unet2d_condition", "sd/pipe/unet/diffusion_pytorch_model.safetensors", ""},
    {MMP_KIND_ENCODER, "vae", "sd/pipe/vae/diffusion_pytorch_model.safetensors", ""},
    {MMP_KIND_ENCODER, "clip_text", "sd/pipe/text_encoder/model.safetensors", ""},
    {MMP_KIND_MODEL, "unet2d_condition", "sd/unet_v2/diffusion_pytorch_model.safetensors", ""},
    {MMP_KIND_ENCODER, "clip_text", "sd/clip_gelu/model.safetensors", ""},
    /* the vision tower sized by the config's vision_* keys, or by the weights */
    {MMP_KIND_ENCODER, "blip", "blip/blip_base/model.safetensors", "prefix = \"mm_encoder.\"; enc_token_id = 0;"},
};
#define NPARTS (sizeof parts / sizeof parts[0])

static mmp_registry_t *reg;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  reg = fuzz_registry();
  mmp_registry_load_all(reg, NULL);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t p = data[0] % NPARTS;
  char json[PATH_MAX], text[3 * PATH_MAX];
  fuzz_write("config.json", data + 1, size - 1, json, sizeof json);
  snprintf(text, sizeof text,
           "part = { name = \"%s\"; config = \"%s\"; weights = \"%s/tests/fixtures/%s\"; %s };",
           parts[p].plugin, json, fuzz_srcdir(), parts[p].weights, parts[p].extra);
  mmp_config_t *cfg = mmp_config_parse(text, "fuzz");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  mmp_component_t *c = ctx ? mmp_component_create(ctx, parts[p].kind, "part") : NULL;
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_error_clear();
  return 0;
}
