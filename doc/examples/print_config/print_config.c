/* print_config.c - an out-of-tree mmpipe plugin: a task that prints its configuration.
 *
 * Build it against an installed mmpipe (see README.md beside this file):
 *   cc -shared -fPIC -o task_print_config.so print_config.c $(pkg-config --cflags --libs mmpipe)
 * and run it with:
 *   MMPIPE_PLUGIN_PATH=. pipeline run example.cfg
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>

/* Instance state: everything lives here, never in globals. */
typedef struct print_config {
  const mmp_config_t *cfg; /* (transfer none) our group, valid for the run */
  char *header;            /* owned */
  bool annotate;
} print_config_t;

/* Every key the plugin reads, with type, default and a one-line doc. */
static const mmp_key_t keys[] = {
    {"header", MMP_TYPE_STRING, "\"configuration\"", "line printed before the configuration", 0, 0},
    {"annotate", MMP_TYPE_BOOL, "true", "show where each value came from", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static int pc_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                     void **out_self) {
  (void)plugin;
  (void)ctx;
  const char *header;
  print_config_t *self = calloc(1, sizeof *self);
  if (!self) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = mmp_config_get_string(cfg, "header", &header); /* defaults are merged already */
  if (rc == 0) rc = mmp_config_get_bool(cfg, "annotate", &self->annotate);
  if (rc == 0 && !(self->header = malloc(strlen(header) + 1))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc < 0) {
    free(self);
    return rc;
  }
  strcpy(self->header, header);
  self->cfg = cfg;
  *out_self = self;
  return 0;
}

static void pc_destroy(void *p) {
  print_config_t *self = p;
  free(self->header);
  free(self);
}

static int pc_run(void *p, mmp_context_t *ctx) {
  print_config_t *self = p;
  printf("# %s\n", self->header);
  /* the whole merged configuration, as `pipeline config` shows it */
  return mmp_config_write(mmp_context_config(ctx), stdout, self->annotate);
}

static const mmp_task_ops_t print_config_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "print_config", "1.0",
                            "prints its merged configuration (an out-of-tree example)", keys,
                            pc_create, pc_destroy),
    .run = pc_run,
};

/* The one exported symbol: mmp_plugin_<module file name>_init. */
MMP_EXPORT int mmp_plugin_task_print_config_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_print_config_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &print_config_ops.base);
}
