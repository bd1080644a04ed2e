/* plugins/datasets/flintstones.c - dataset "flintstones": FlintstonesSV stories (5 frames of 128x128 per strip), read from AR-LDM's HDF5 file. */
#include <mmpipe/plugin.h>

#include "plugins/datasets/story.h"

static const story_desc_t DESC = {
    .name = "flintstones",
    .text_name = "text",
    .strips = true,
    .target = STORY_TARGET_SQUARE,
    .test_layout = STORY_TEST_RAW,
};

static const mmp_key_t keys[] = {
    STORY_KEYS("91", "[\"fred\", \"barney\", \"wilma\", \"betty\", \"pebbles\", \"dino\", \"slate\"]"),
    STORY_STRIP_KEYS,
    {NULL, 0, NULL, NULL, 0, 0}};

static int flintstones_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                         void **out_self) {
  (void)plugin;
  return story_create(&DESC, cfg, ctx, out_self);
}

static int flintstones_inspect(const mmp_plugin_t *plugin, const char *path, mmp_dataset_inspect_t mode,
                          FILE *out) {
  (void)plugin;
  return story_inspect(&DESC, path, mode, out);
}

static int flintstones_build(const mmp_plugin_t *plugin, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  (void)plugin;
  return story_build_flintstones(&DESC, req, ctx);
}

static const mmp_dataset_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_DATASET, mmp_dataset_ops_t, "flintstones", "1.0",
                            "FlintstonesSV stories (5 frames of 128x128 per strip) (AR-LDM HDF5)", keys, flintstones_create, story_destroy),
    .size = story_size,
    .get = story_get,
    .inspect = flintstones_inspect,
    .build = flintstones_build,
};

MMP_EXPORT int mmp_plugin_dataset_flintstones_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_dataset_flintstones_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ops.base);
}
