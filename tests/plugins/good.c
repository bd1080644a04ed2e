/* tests/plugins/good.c - a well-formed test module: task "good" writes its keys to a file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/mmpipe.h>

typedef struct good {
  char out[4096];
  const mmp_config_t *cfg;
  int64_t steps;
} good_t;

static const mmp_key_t good_keys[] = {
    {"message", MMP_TYPE_STRING, "\"hello\"", "text written to the output", 0, 0},
    {"count", MMP_TYPE_INT, "3", "an integer", 0, 0},
    {"ratio", MMP_TYPE_FLOAT, "0.5", "a number", 0, 0},
    {"flag", MMP_TYPE_BOOL, "false", "a switch", 0, 0},
    {"items", MMP_TYPE_LIST, "[]", "a list of strings", 0, 0},
    {"output", MMP_TYPE_STRING, NULL, "file to write", MMP_KEY_REQUIRED | MMP_KEY_PATH, 0},
    {"steps", MMP_TYPE_INT, "0", "slow steps of 20 ms (progress, cancellation)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static int good_create(const mmp_plugin_t *p, const mmp_config_t *cfg, mmp_context_t *ctx, void **out) {
  (void)p;
  (void)ctx;
  good_t *g = calloc(1, sizeof *g);
  if (!g) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = mmp_config_get_path(cfg, "output", g->out, sizeof g->out);
  if (rc == 0) rc = mmp_config_get_int(cfg, "steps", &g->steps);
  if (rc == 0 && g->steps < 0) {
    const mmp_config_t *n = mmp_config_lookup(cfg, "steps");
    rc = mmp_error_set(MMP_ECONFIG, "%s:%d: steps must be >= 0", mmp_config_file(n) ? mmp_config_file(n) : "-s",
                       mmp_config_line(n));
  }
  if (rc < 0) {
    free(g);
    return rc;
  }
  g->cfg = cfg;
  *out = g;
  return 0;
}

static void good_destroy(void *self) { free(self); }

static int good_run(void *self, mmp_context_t *ctx) {
  good_t *g = self;
  const char *msg;
  int64_t count;
  double ratio;
  bool flag;
  size_t nitems;
  int rc = mmp_config_get_string(g->cfg, "message", &msg);
  if (!rc) rc = mmp_config_get_int(g->cfg, "count", &count);
  if (!rc) rc = mmp_config_get_float(g->cfg, "ratio", &ratio);
  if (!rc) rc = mmp_config_get_bool(g->cfg, "flag", &flag);
  if (!rc) rc = mmp_config_get_list_size(g->cfg, "items", &nitems);
  if (rc < 0) return rc;
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", g->out);
  FILE *f = fopen(tmp, "w");
  if (!f) return mmp_error_set(MMP_EIO, "%s: %s", tmp, strerror(errno));
  fprintf(f, "message=%s\ncount=%lld\nratio=%g\nflag=%d\nitems=", msg, (long long)count, ratio, flag);
  for (size_t i = 0; i < nitems; i++) {
    const char *s;
    if (mmp_config_get_list_string(g->cfg, "items", i, &s) == 0) fprintf(f, "%s%s", i ? "," : "", s);
  }
  fprintf(f, "\n");
  mmp_context_progress_begin(ctx, "good", g->steps);
  for (int64_t i = 0; i < g->steps; i++) {
    if (mmp_context_cancelled(ctx)) {
      fclose(f);
      remove(tmp);
      return mmp_error_set(MMP_ECANCELED, "interrupted at step %lld", (long long)i);
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    fprintf(f, "step %lld\n", (long long)i);
    mmp_context_progress_advance(ctx, 1);
  }
  mmp_context_progress_end(ctx);
  if (fclose(f) != 0 || rename(tmp, g->out) != 0) {
    remove(tmp);
    return mmp_error_set(MMP_EIO, "%s: cannot write: %s", g->out, strerror(errno));
  }
  return 0;
}

static const mmp_task_ops_t good_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "good", "1.0",
                            "test task: writes its keys to a file", good_keys, good_create, good_destroy),
    .run = good_run,
};

/* A second implementation in the same module, under another kind. */
static const mmp_key_t helper_keys[] = {{NULL, 0, NULL, NULL, 0, 0}};
static int helper_forward(void *self, const char *m, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  (void)self; (void)m; (void)in; (void)out;
  return 0;
}
static int helper_create(const mmp_plugin_t *p, const mmp_config_t *cfg, mmp_context_t *ctx, void **out) {
  (void)p; (void)cfg; (void)ctx;
  *out = malloc(1);
  return *out ? 0 : MMP_ENOMEM;
}
static const mmp_encoder_ops_t helper_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "good_helper", "1.0",
                            "test encoder registered by the good module", helper_keys, helper_create, good_destroy),
    .forward = helper_forward,
};

MMP_EXPORT int mmp_plugin_task_good_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_good_init(mmp_registry_t *reg) {
  int rc = mmp_registry_add(reg, &good_ops.base);
  return rc < 0 ? rc : mmp_registry_add(reg, &helper_ops.base);
}
