/* plugins/datasets/vistdii.c - dataset "vistdii": VIST stories with description-in-isolation captions, read from AR-LDM's HDF5 file. */
#include <mmpipe/plugin.h>

#include "plugins/datasets/story.h"

static const story_desc_t DESC = {
    .name = "vistdii",
    .text_name = "dii",
    .strips = false,
    .target = STORY_TARGET_SHORT_CROP,
    .test_layout = STORY_TEST_SMALL,
};

static const mmp_key_t keys[] = {
    STORY_KEYS("65", "[]"),
    STORY_VIST_KEYS,
    {NULL, 0, NULL, NULL, 0, 0}};

static int vistdii_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                         void **out_self) {
  (void)plugin;
  return story_create(&DESC, cfg, ctx, out_self);
}

static int vistdii_inspect(const mmp_plugin_t *plugin, const char *path, mmp_dataset_inspect_t mode,
                          FILE *out) {
  (void)plugin;
  return story_inspect(&DESC, path, mode, out);
}

static int vistdii_build(const mmp_plugin_t *plugin, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  (void)plugin;
  return story_build_vist(&DESC, req, ctx);
}

static const mmp_dataset_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_DATASET, mmp_dataset_ops_t, "vistdii", "1.0",
                            "VIST stories with description-in-isolation captions (AR-LDM HDF5)", keys, vistdii_create, story_destroy),
    .size = story_size,
    .get = story_get,
    .inspect = vistdii_inspect,
    .build = vistdii_build,
};

MMP_EXPORT int mmp_plugin_dataset_vistdii_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_dataset_vistdii_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ops.base);
}
