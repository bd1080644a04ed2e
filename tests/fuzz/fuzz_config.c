/* tests/fuzz/fuzz_config.c - libFuzzer harness: a task file, the file it may
 * @include (from disk) and `-s` overrides (core/config.c), then key
 * validation: a key table of every type, and the whole task through the
 * registry's plugins (mmp_context_validate), and the merged tree written out.
 *
 * Input: task file, then "\n%%\n", then inc.cfg, then "\n%%\n", then one
 * override ("a.b=value") per line. The task file is read as
 * <tmp>/task.cfg, so `@include "inc.cfg"` finds the second section. */
#include <mmpipe/mmpipe.h>

#include "tests/fuzz/fuzz.h"

static mmp_registry_t *reg;
static FILE *devnull;

/* libconfig 1.5 (Debian 12) leaks its scanner's string buffer when a text
 * fails to parse inside a string, 64 bytes per failed parse (mmpipe calls
 * config_destroy() on every path). The stack stops inside libconfig (no
 * frame pointers there), so the library is named. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libconfig.so\n"; }

static const mmp_key_t keys[] = {
    {"name", MMP_TYPE_STRING, NULL, "implementation", MMP_KEY_REQUIRED, 0},
    {"count", MMP_TYPE_INT, "1", "an int", 0, 0},
    {"scale", MMP_TYPE_FLOAT, "7.5", "a float", 0, 0},
    {"flag", MMP_TYPE_BOOL, "false", "a bool", 0, 0},
    {"output", MMP_TYPE_STRING, "\"out\"", "a path", MMP_KEY_PATH, 0},
    {"items", MMP_TYPE_LIST, "[]", "a list", 0, 0},
    {"extra", MMP_TYPE_GROUP, NULL, "a free group", 0, 0},
    {"scheduler", MMP_TYPE_COMPONENT, NULL, "a component", 0, MMP_KIND_SCHEDULER},
    {"old", MMP_TYPE_INT, NULL, "ignored", MMP_KEY_IGNORED, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  reg = fuzz_registry();
  mmp_registry_load_all(reg, NULL);
  devnull = fopen("/dev/null", "w");
  return 0;
}

/* Every typed getter on every child of @g, recursively. */
static void read_all(const mmp_config_t *g, int depth) {
  char buf[PATH_MAX];
  for (size_t i = 0; i < mmp_config_count(g); i++) {
    const mmp_config_t *c = mmp_config_child(g, i);
    const char *k = mmp_config_name(c);
    int64_t iv;
    double fv;
    bool bv;
    const char *sv;
    size_t n;
    (void)mmp_config_path(c, buf, sizeof buf);
    (void)mmp_config_file(c);
    (void)mmp_config_line(c);
    if (mmp_config_type(c) == MMP_TYPE_GROUP && depth < 16) read_all(c, depth + 1);
    if (!k || !*k) continue;
    (void)mmp_config_get_int(g, k, &iv);
    (void)mmp_config_get_float(g, k, &fv);
    (void)mmp_config_get_bool(g, k, &bv);
    (void)mmp_config_get_string(g, k, &sv);
    (void)mmp_config_get_path(g, k, buf, sizeof buf);
    if (mmp_config_get_list_size(g, k, &n) == 0)
      for (size_t j = 0; j < n && j < 64; j++) {
        (void)mmp_config_get_list_int(g, k, j, &iv);
        (void)mmp_config_get_list_float(g, k, j, &fv);
        (void)mmp_config_get_list_string(g, k, j, &sv);
      }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *sec[3];
  size_t len[3];
  size_t n = fuzz_sections(data, size, "\n%%\n", sec, len, 3);
  char task[PATH_MAX], inc[PATH_MAX];
  fuzz_write("task.cfg", sec[0], len[0], task, sizeof task);
  if (n > 1)
    fuzz_write("inc.cfg", sec[1], len[1], inc, sizeof inc);
  else
    fuzz_unlink("inc.cfg");
  mmp_config_t *cfg = mmp_config_load(task);
  if (cfg && n > 2) {
    char line[4096];
    const uint8_t *p = sec[2], *end = sec[2] + len[2];
    while (p < end) {
      const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
      size_t l = (size_t)((nl ? nl : end) - p);
      if (l < sizeof line) {
        memcpy(line, p, l);
        line[l] = '\0';
        (void)mmp_config_override(cfg, line);
      }
      p += l + 1;
    }
  }
  if (cfg) {
    char *errors = NULL;
    const mmp_config_t *t = mmp_config_lookup(cfg, "task");
    if (t && mmp_config_type(t) == MMP_TYPE_GROUP) {
      mmp_config_check_keys(t, keys, "task", &errors);
      free(errors);
      mmp_config_merge_defaults((mmp_config_t *)t, keys);
    }
    read_all(cfg, 0);
    mmp_context_t *ctx = mmp_context_new(reg, cfg);
    if (ctx) (void)mmp_context_validate(ctx);
    mmp_context_free(ctx);
    if (devnull) (void)mmp_config_write(cfg, devnull, true);
  }
  mmp_config_free(cfg);
  mmp_error_clear();
  return 0;
}
