/* tests/plugins/broken.c - deliberately broken modules, one per -DBROKEN_* flavour.
 * Each is built as its own module; the loader must give each its own error. */
#include <stdlib.h>

#include <mmpipe/mmpipe.h>

static const mmp_key_t keys[] = {{NULL, 0, NULL, NULL, 0, 0}};
static int run(void *self, mmp_context_t *ctx) { (void)self; (void)ctx; return 0; }
static int create(const mmp_plugin_t *p, const mmp_config_t *c, mmp_context_t *x, void **out) {
  (void)p; (void)c; (void)x;
#ifdef BROKEN_CREATE
  return mmp_error_set(MMP_ECONFIG, "refusing to start: this module always fails in create()");
#else
  *out = malloc(1);
  return *out ? 0 : MMP_ENOMEM;
#endif
}
static void destroy(void *self) { free(self); }

#if defined(BROKEN_ABI)
#define NAME "badabi"
#define ENTRY mmp_plugin_task_badabi_init
#elif defined(BROKEN_NOVERSION)
#define NAME "noversion"
#define ENTRY mmp_plugin_task_noversion_init
#elif defined(BROKEN_DUP)
#define NAME "good" /* the name the good module registers */
#define ENTRY mmp_plugin_task_dup_init
#elif defined(BROKEN_INIT)
#define NAME "failinit"
#define ENTRY mmp_plugin_task_failinit_init
#elif defined(BROKEN_CREATE)
#define NAME "failcreate"
#define ENTRY mmp_plugin_task_failcreate_init
#elif defined(BROKEN_NOENTRY)
#define NAME "noentry"
#define ENTRY mmp_plugin_some_other_name_init
#endif

static mmp_task_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, NAME, "1.0", "a broken test module", keys,
                            create, destroy),
    .run = run,
};

MMP_EXPORT int ENTRY(mmp_registry_t *reg);
MMP_EXPORT int ENTRY(mmp_registry_t *reg) {
#if defined(BROKEN_ABI)
  ops.base.abi_major = MMP_ABI_MAJOR + 1;
#elif defined(BROKEN_NOVERSION)
  ops.base.version = NULL;
#elif defined(BROKEN_INIT)
  return mmp_error_set(MMP_EPLUGIN, "cannot initialise: a resource is missing");
#endif
  return mmp_registry_add(reg, &ops.base);
}
