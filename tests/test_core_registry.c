/* tests/test_core_registry.c - registration rules, the module loader and its
 * error for each kind of broken module, lazy loading, components and runs. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/mmpipe.h>

#include "tap.h"

static const mmp_key_t nokeys[] = {{NULL, 0, NULL, NULL, 0, 0}};
static int create(const mmp_plugin_t *p, const mmp_config_t *c, mmp_context_t *x, void **out) {
  (void)p; (void)c; (void)x;
  *out = malloc(1);
  return 0;
}
static void destroy(void *s) { free(s); }
static int run(void *s, mmp_context_t *c) { (void)s; (void)c; return 0; }
static int set_ts(void *s, int n) { (void)s; (void)n; return 0; }
static int fwd(void *s, const char *m, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  (void)s; (void)m; (void)in; (void)out;
  return 0;
}
static int params(void *s, mmp_param_cb cb, void *user) { (void)s; (void)cb; (void)user; return 0; }

static char plugdir[4096];

static int load(mmp_registry_t *reg, const char *mod) {
  char p[4200];
  snprintf(p, sizeof p, "%s/%s.so", plugdir, mod);
  return mmp_registry_load_module(reg, p);
}

int main(void) {
  const char *bd = getenv("MMP_TEST_BUILDDIR");
  snprintf(plugdir, sizeof plugdir, "%s/tests/plugins/.libs", bd ? bd : ".");

  /* ---- registration rules ---- */
  mmp_registry_t *reg = mmp_registry_new();
  ok(reg != NULL, "registry created");
  mmp_task_ops_t t = {.base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "mytask", "1", "d", nokeys, create, destroy),
                      .run = run};
  is_int(mmp_registry_add(reg, &t.base), 0, "a valid task registers");
  is_int(mmp_registry_add(reg, &t.base), MMP_EEXIST, "the same name twice is refused");
  like(mmp_error_last(), "task 'mytask' is already registered by (built-in)", "duplicate message");
  mmp_task_ops_t abi = t;
  abi.base.name = "abi";
  abi.base.abi_major = MMP_ABI_MAJOR + 1;
  is_int(mmp_registry_add(reg, &abi.base), MMP_EABI, "another ABI major is refused");
  like(mmp_error_last(), "built for plugin ABI 2.1", "ABI message names both versions");
  abi.base.abi_major = MMP_ABI_MAJOR;
  abi.base.abi_minor = MMP_ABI_MINOR + 1;
  is_int(mmp_registry_add(reg, &abi.base), MMP_EABI, "a newer ABI minor is refused");
  mmp_task_ops_t nov = t;
  nov.base.name = "nov";
  nov.base.version = "";
  is_int(mmp_registry_add(reg, &nov.base), MMP_EPLUGIN, "empty version is refused");
  like(mmp_error_last(), "'nov' has no version", "names the missing field");
  mmp_task_ops_t norun = t;
  norun.base.name = "norun";
  norun.run = NULL;
  is_int(mmp_registry_add(reg, &norun.base), MMP_EPLUGIN, "a task without run() is refused");
  like(mmp_error_last(), "has no run()", "names the missing member");
  mmp_scheduler_ops_t sch = {.base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t, "half", "1", "d",
                                                     nokeys, create, destroy),
                             .set_timesteps = set_ts};
  is_int(mmp_registry_add(reg, &sch.base), MMP_EPLUGIN, "a scheduler without step() is refused");
  mmp_task_ops_t old = t;
  old.base.name = "old";
  old.base.struct_size = sizeof(mmp_plugin_t); /* built before run() existed */
  is_int(mmp_registry_add(reg, &old.base), MMP_EPLUGIN, "struct_size not covering a required member is refused");
  /* ABI 1.1 added parameters() at the end of the model and encoder vtables:
   * a module built for 1.0 (struct_size without it) registers, and callers
   * see the member as absent */
  mmp_model_ops_t m10 = {.base = MMP_PLUGIN_BASE(MMP_KIND_MODEL, mmp_model_ops_t, "m10", "1", "d", nokeys, create, destroy),
                         .forward = fwd, .parameters = params};
  m10.base.abi_minor = 0;
  m10.base.struct_size = (uint32_t)offsetof(mmp_model_ops_t, parameters);
  is_int(mmp_registry_add(reg, &m10.base), 0, "a model built for ABI 1.0 registers");
  ok(!MMP_OPS_HAS(&m10, mmp_model_ops_t, parameters), "its parameters() is absent to callers");
  mmp_encoder_ops_t e11 = {.base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "e11", "1", "d", nokeys, create,
                                                   destroy),
                           .forward = fwd, .parameters = params};
  is_int(mmp_registry_add(reg, &e11.base), 0, "an encoder with parameters() registers");
  ok(MMP_OPS_HAS(&e11, mmp_encoder_ops_t, parameters), "and offers it");
  ok(offsetof(mmp_model_ops_t, parameters) == sizeof(mmp_plugin_t) + sizeof(mmp_forward_cb) &&
     offsetof(mmp_encoder_ops_t, parameters) == offsetof(mmp_model_ops_t, parameters),
     "parameters() follows forward() in both vtables (layout of ABI 1.1)");
  mmp_task_ops_t caps = t;
  caps.base.name = "Bad Name";
  is_int(mmp_registry_add(reg, &caps.base), MMP_EPLUGIN, "names must be lower-case identifiers");
  static const mmp_key_t badkeys[] = {{"x", MMP_TYPE_INT, "1", "", 0, 0}, {NULL, 0, NULL, NULL, 0, 0}};
  mmp_task_ops_t nodoc = t;
  nodoc.base.name = "nodoc";
  nodoc.base.keys = badkeys;
  is_int(mmp_registry_add(reg, &nodoc.base), MMP_EPLUGIN, "keys need a description");
  ok(mmp_registry_find(reg, MMP_KIND_TASK, "mytask") == &t.base, "find a registered task");
  ok(mmp_registry_find(reg, MMP_KIND_TASK, "mytsk") == NULL, "unknown name");
  like(mmp_error_last(), "unknown task 'mytsk' (did you mean 'mytask'?)", "did-you-mean suggestion");
  is_int(mmp_error_code(), MMP_ENOENT, "unknown is ENOENT");
  mmp_registry_free(reg);

  if (access(plugdir, R_OK) != 0) {
    diag("no test modules in %s", plugdir);
    return done_testing();
  }

  /* ---- the loader, one error per broken module ---- */
  reg = mmp_registry_new();
  is_int(load(reg, "task_good"), 0, "good module loads");
  is_int(mmp_registry_count(reg), 2, "it registered two implementations");
  ok(mmp_registry_find(reg, MMP_KIND_ENCODER, "good_helper") != NULL, "second implementation of the module");
  like(mmp_registry_module_of(reg, mmp_registry_find(reg, MMP_KIND_TASK, "good")), "task_good.so", "module recorded");
  is_int(load(reg, "task_badabi"), MMP_EABI, "wrong ABI module");
  like(mmp_error_last(), "task_badabi.so: plugin 'badabi' was built for plugin ABI 2.1", "ABI error names file");
  is_int(load(reg, "task_noversion"), MMP_EPLUGIN, "module with a missing field");
  like(mmp_error_last(), "task_noversion.so: plugin descriptor 'noversion' has no version", "names file and field");
  is_int(load(reg, "task_dup"), MMP_EEXIST, "module registering a taken name");
  like(mmp_error_last(), "task 'good' is already registered by", "duplicate error");
  like(mmp_error_last(), "task_good.so", "duplicate error names the first module");
  is_int(load(reg, "task_failinit"), MMP_EPLUGIN, "module whose entry fails");
  like(mmp_error_last(), "cannot initialise: a resource is missing", "entry's own message kept");
  is_int(load(reg, "task_noentry"), MMP_EPLUGIN, "module without its entry symbol");
  like(mmp_error_last(), "entry symbol mmp_plugin_task_noentry_init not found", "missing entry message");
  char garbage[] = "/tmp/mmp-test-XXXXXX";
  ok(mkdtemp(garbage) != NULL, "temp dir");
  char gpath[200];
  snprintf(gpath, sizeof gpath, "%s/task_garbage.so", garbage);
  FILE *f = fopen(gpath, "w");
  fputs("this is not an ELF file\n", f);
  fclose(f);
  is_int(mmp_registry_load_module(reg, gpath), MMP_EPLUGIN, "unloadable file");
  like(mmp_error_last(), "task_garbage.so: cannot load module", "unloadable file named");
  is_int(mmp_registry_load_module(reg, "/nonexistent/task_x.so"), MMP_EPLUGIN, "missing file");
  like(mmp_error_last(), "/nonexistent/task_x.so", "missing file named");
  is_int(mmp_registry_count(reg), 2, "failed modules registered nothing");
  mmp_registry_free(reg);

  /* ---- lazy loading by naming convention, and load_all ---- */
  reg = mmp_registry_new();
  mmp_registry_add_dir(reg, plugdir);
  ok(mmp_registry_find(reg, MMP_KIND_TASK, "good") != NULL, "lazy load of task 'good' from task_good.so");
  is_int(mmp_registry_count(reg), 2, "only that module was loaded");
  ok(mmp_registry_find(reg, MMP_KIND_TASK, "failinit") == NULL, "lazy load of a failing module");
  like(mmp_error_last(), "cannot load task 'failinit'", "lazy failure says what was asked for");
  mmp_registry_free(reg);
  reg = mmp_registry_new();
  mmp_registry_add_dir(reg, plugdir);
  int fails = -1;
  is_int(mmp_registry_load_all(reg, &fails), 0, "load_all");
  is_int(fails, 5, "five broken modules counted (badabi, noversion, dup or good, failinit, noentry)");
  ok(mmp_registry_find(reg, MMP_KIND_TASK, "failcreate") != NULL, "failcreate registered");

  /* ---- components and a run through the context ---- */
  char out[300];
  snprintf(out, sizeof out, "%s/out.txt", garbage);
  char text[1024];
  snprintf(text, sizeof text,
           "task = { name = \"good\"; count = 4; items = [\"a\", \"b\"]; output = \"%s\"; };\n", out);
  mmp_config_t *cfg = mmp_config_parse(text, "run.cfg");
  mmp_config_override(cfg, "task.message=overridden");
  mmp_context_t *ctx = mmp_context_new(reg, cfg);
  is_int(mmp_context_run_task(ctx), 0, "task runs: %s", mmp_error_last());
  f = fopen(out, "r");
  char got[512] = "";
  if (f) {
    size_t n = fread(got, 1, sizeof got - 1, f);
    got[n] = '\0';
    fclose(f);
  }
  is_str(got, "message=overridden\ncount=4\nratio=0.5\nflag=0\nitems=a,b\n", "task saw merged keys and defaults");
  mmp_context_free(ctx);
  mmp_config_free(cfg);

  cfg = mmp_config_parse("task = { name = \"good\"; cont = 1; ratio = \"x\"; };\nextra = 1;\n", "bad.cfg");
  ctx = mmp_context_new(reg, cfg);
  is_int(mmp_context_validate(ctx), MMP_ECONFIG, "invalid task config");
  const char *e = mmp_error_last();
  like(e, "4 configuration errors", "all errors at once");
  like(e, "bad.cfg:1: task 'good' (group 'task') has no key 'cont' (did you mean 'count'?)", "undeclared key");
  like(e, "key 'ratio' must be float, found string", "wrong type");
  like(e, "needs key 'output'", "missing required key");
  like(e, "bad.cfg:2: unknown top-level setting 'extra'", "unknown top-level key");
  mmp_context_free(ctx);
  mmp_config_free(cfg);

  cfg = mmp_config_parse("task = { name = \"failcreate\"; };\n", "fc.cfg");
  ctx = mmp_context_new(reg, cfg);
  is_int(mmp_context_run_task(ctx), MMP_ECONFIG, "create() failure propagates its code");
  like(mmp_error_last(), "task 'failcreate' (group 'task'): refusing to start", "create() message with context");
  mmp_context_free(ctx);
  mmp_config_free(cfg);

  cfg = mmp_config_parse("task = { name = \"godo\"; };\n", "typo.cfg");
  ctx = mmp_context_new(reg, cfg);
  is_int(mmp_context_validate(ctx), MMP_ECONFIG, "unknown task name is a config error");
  like(mmp_error_last(), "typo.cfg:1: unknown task 'godo' (did you mean 'good'?)", "with file:line and suggestion");
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  remove(out);
  remove(gpath);
  rmdir(garbage);
  return done_testing();
}
