/* plugins/datasets/pororo.c - dataset "pororo": PororoSV stories (strips of 128x128 frames), read from AR-LDM's HDF5 file. */
#include <mmpipe/plugin.h>

#include "plugins/datasets/story.h"

static const story_desc_t DESC = {
    .name = "pororo",
    .text_name = "text",
    .strips = true,
    .target = STORY_TARGET_SQUARE, /* AR-LDM 9d8feeb: Resize([512, 512]), no crop */
    .test_layout = STORY_TEST_RAW,
};

static const mmp_key_t keys[] = {
    STORY_KEYS("85", "[\"pororo\", \"loopy\", \"eddy\", \"harry\", \"poby\", \"tongtong\", \"crong\", \"rody\", \"petty\"]"),
    STORY_STRIP_KEYS,
    {NULL, 0, NULL, NULL, 0, 0}};

static int pororo_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                         void **out_self) {
  (void)plugin;
  return story_create(&DESC, cfg, ctx, out_self);
}

static int pororo_inspect(const mmp_plugin_t *plugin, const char *path, mmp_dataset_inspect_t mode,
                          FILE *out) {
  (void)plugin;
  return story_inspect(&DESC, path, mode, out);
}

static int pororo_build(const mmp_plugin_t *plugin, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  (void)plugin;
  return story_build_pororo(&DESC, req, ctx);
}

static const mmp_dataset_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_DATASET, mmp_dataset_ops_t, "pororo", "1.0",
                            "PororoSV stories (strips of 128x128 frames) (AR-LDM HDF5)", keys, pororo_create, story_destroy),
    .size = story_size,
    .get = story_get,
    .inspect = pororo_inspect,
    .build = pororo_build,
};

MMP_EXPORT int mmp_plugin_dataset_pororo_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_dataset_pororo_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ops.base);
}
