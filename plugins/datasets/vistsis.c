/* plugins/datasets/vistsis.c - dataset "vistsis": VIST stories with story-in-sequence captions, read from AR-LDM's HDF5 file. */
#include <mmpipe/plugin.h>

#include "plugins/datasets/story.h"

static const story_desc_t DESC = {
    .name = "vistsis",
    .text_name = "sis",
    .strips = false,
    .target = STORY_TARGET_SHORT_CROP,
    .test_layout = STORY_TEST_SMALL,
};

static const mmp_key_t keys[] = {
    STORY_KEYS("100", "[]"),
    STORY_VIST_KEYS,
    {NULL, 0, NULL, NULL, 0, 0}};

static int vistsis_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                         void **out_self) {
  (void)plugin;
  return story_create(&DESC, cfg, ctx, out_self);
}

static int vistsis_inspect(const mmp_plugin_t *plugin, const char *path, mmp_dataset_inspect_t mode,
                          FILE *out) {
  (void)plugin;
  return story_inspect(&DESC, path, mode, out);
}

static int vistsis_build(const mmp_plugin_t *plugin, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  (void)plugin;
  return story_build_vist(&DESC, req, ctx);
}

static const mmp_dataset_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_DATASET, mmp_dataset_ops_t, "vistsis", "1.0",
                            "VIST stories with story-in-sequence captions (AR-LDM HDF5)", keys, vistsis_create, story_destroy),
    .size = story_size,
    .get = story_get,
    .inspect = vistsis_inspect,
    .build = vistsis_build,
};

MMP_EXPORT int mmp_plugin_dataset_vistsis_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_dataset_vistsis_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ops.base);
}
