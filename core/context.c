/* core/context.c - the run context: backend, cancellation, progress, task runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>

#include "core/context.h"
#include "core/util.h"

/* Keys every configuration may hold at its top level. */
static const mmp_key_t global_keys[] = {
    {"plugin_path", MMP_TYPE_LIST, NULL, "directories searched for plugin modules before the built-in ones", MMP_KEY_PATH, 0},
    {"device", MMP_TYPE_STRING, "\"cpu\"", "compute device: cpu, cuda or auto", 0, 0},
    {"threads", MMP_TYPE_INT, "0", "CPU threads (0 = MMPIPE_THREADS or all cores)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

const mmp_key_t *context_global_keys(void);
const mmp_key_t *context_global_keys(void) { return global_keys; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mmp_context_t *mmp_context_new(mmp_registry_t *reg, mmp_config_t *cfg) {
  if (!reg || !cfg) {
    mmp_error_set(MMP_EINVAL, "mmp_context_new: NULL argument");
    return NULL;
  }
  mmp_context_t *ctx = mmp_xcalloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->reg = reg;
  ctx->cfg = cfg;
  ctx->progress_on = true;
  ctx->is_tty = isatty(STDERR_FILENO) != 0;
  return ctx;
}

void mmp_context_free(mmp_context_t *ctx) {
  if (!ctx) return;
  for (size_t i = 0; i < ctx->nslots; i++) free(ctx->slots[i]);
  free(ctx->slots);
  free(ctx);
}

int context_mark_slot(mmp_context_t *ctx, const char *path) {
  for (size_t i = 0; i < ctx->nslots; i++)
    if (strcmp(ctx->slots[i], path) == 0) return 1;
  char **s = realloc(ctx->slots, (ctx->nslots + 1) * sizeof *s);
  if (!s) return 0;
  ctx->slots = s;
  ctx->slots[ctx->nslots] = mmp_xstrdup(path);
  if (ctx->slots[ctx->nslots]) ctx->nslots++;
  return 0;
}

mmp_registry_t *mmp_context_registry(mmp_context_t *ctx) { return ctx ? ctx->reg : NULL; }
const mmp_config_t *mmp_context_config(mmp_context_t *ctx) { return ctx ? ctx->cfg : NULL; }
int mmp_context_cancelled(mmp_context_t *ctx) { return ctx ? ctx->cancelled != 0 : 0; }
void mmp_context_cancel(mmp_context_t *ctx) {
  if (ctx) ctx->cancelled = 1;
}
void mmp_context_set_progress(mmp_context_t *ctx, bool enabled) {
  if (ctx) ctx->progress_on = enabled;
}

mmp_backend_t *mmp_context_backend(mmp_context_t *ctx) {
  if (!ctx) return NULL;
  if (!ctx->backend) {
    const char *dev = "cpu";
    if (mmp_config_lookup(ctx->cfg, "device") && mmp_config_get_string(ctx->cfg, "device", &dev) < 0)
      return NULL;
    ctx->backend = mmp_backend_get(dev);
  }
  return ctx->backend;
}

/* ---- validation of the whole configuration ---- */

/* Check the top level: only global keys, the task and the component groups
 * some implementation declared (validated slots) may appear. */
static int check_top_level(mmp_context_t *ctx, mmp_strbuf_t *b) {
  int nerr = 0;
  const mmp_config_t *root = ctx->cfg;
  for (size_t i = 0; i < mmp_config_count(root); i++) {
    const mmp_config_t *c = mmp_config_child(root, i);
    const char *n = mmp_config_name(c);
    int known = 0;
    for (const mmp_key_t *k = global_keys; k->name; k++) known |= strcmp(k->name, n) == 0;
    for (size_t s = 0; s < ctx->nslots; s++) known |= strcmp(ctx->slots[s], n) == 0;
    if (known) continue;
    const char **cands = malloc((ctx->nslots + 4) * sizeof *cands);
    size_t nc = 0;
    for (const mmp_key_t *k = global_keys; cands && k->name; k++) cands[nc++] = k->name;
    for (size_t s = 0; cands && s < ctx->nslots; s++) cands[nc++] = ctx->slots[s];
    const char *near = cands ? mmp_nearest(n, cands, nc) : NULL;
    char loc[600];
    if (mmp_config_layer(c) == MMP_LAYER_OVERRIDE)
      snprintf(loc, sizeof loc, "command line (-s)");
    else
      snprintf(loc, sizeof loc, "%s:%d", mmp_config_file(c) ? mmp_config_file(c) : "config",
               mmp_config_line(c));
    mmp_strbuf_append(b, "%s: unknown top-level setting '%s'%s%s%s (nothing declares it)\n", loc, n,
                      near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
    free(cands);
    nerr++;
  }
  char *errs = NULL;
  int n = mmp_config_check_keys(root, global_keys, "the configuration", &errs);
  (void)n; /* unknown top-level keys were reported above with better context */
  free(errs);
  for (const mmp_key_t *k = global_keys; k->name; k++) {
    const mmp_config_t *c = mmp_config_lookup(root, k->name);
    if (!c) continue;
    int ok = 1;
    if (k->type == MMP_TYPE_STRING) ok = mmp_config_string(c) != NULL;
    if (k->type == MMP_TYPE_INT) ok = mmp_config_type(c) == MMP_TYPE_INT;
    if (k->type == MMP_TYPE_LIST) ok = mmp_config_type(c) != MMP_TYPE_GROUP;
    if (!ok) {
      mmp_strbuf_append(b, "%s:%d: '%s' must be %s\n", mmp_config_file(c) ? mmp_config_file(c) : "config",
                        mmp_config_line(c), k->name, mmp_type_name(k->type));
      nerr++;
    }
  }
  if (mmp_config_merge_defaults(ctx->cfg, global_keys) < 0) nerr++;
  return nerr;
}

static int validate_as(mmp_context_t *ctx, mmp_kind_t kind, const char *path) {
  char *errs = NULL;
  int n = context_validate_component(ctx, kind, path, &errs);
  mmp_strbuf_t b = {0};
  if (errs) mmp_strbuf_append(&b, "%s", errs);
  free(errs);
  n += check_top_level(ctx, &b);
  if (n > 0) {
    mmp_error_set(MMP_ECONFIG, "%d configuration error%s:\n%s", n, n == 1 ? "" : "s",
                  b.data ? b.data : "");
    size_t l = strlen(mmp_error_last());
    (void)l;
    mmp_strbuf_free(&b);
    return MMP_ECONFIG;
  }
  mmp_strbuf_free(&b);
  return 0;
}

int mmp_context_validate_component(mmp_context_t *ctx, mmp_kind_t kind, const char *path) {
  return validate_as(ctx, kind, path);
}

int mmp_context_validate(mmp_context_t *ctx) {
  if (!ctx) return mmp_error_set(MMP_EINVAL, "mmp_context_validate: NULL context");
  return validate_as(ctx, MMP_KIND_TASK, "task");
}

int mmp_context_run_task(mmp_context_t *ctx) {
  int rc = mmp_context_validate(ctx);
  if (rc < 0) return rc;
  int64_t threads = 0;
  mmp_config_get_int(ctx->cfg, "threads", &threads);
  if (threads > 0) mmp_threads_set((int)threads);
  mmp_component_t *task = mmp_component_create(ctx, MMP_KIND_TASK, "task");
  if (!task) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  const mmp_task_ops_t *ops = (const mmp_task_ops_t *)task->plugin;
  mmp_error_clear();
  rc = ops->run(task->self, ctx);
  if (rc < 0 && mmp_error_code() == MMP_OK) mmp_error_set(rc, "task failed: %s", mmp_strerror(rc));
  if (rc == 0 && ctx->cancelled) rc = mmp_error_set(MMP_ECANCELED, "interrupted");
  int saved = mmp_error_code();
  char msg[8192];
  snprintf(msg, sizeof msg, "%s", mmp_error_last());
  mmp_component_free(task);
  if (rc < 0) mmp_error_set(saved ? saved : rc, "%s", msg);
  return rc;
}

/* ---- progress ---- */

static void fmt_time(double s, char *buf, size_t len) {
  if (!isfinite(s) || s < 0) {
    snprintf(buf, len, "?");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

static void progress_print(mmp_context_t *ctx, int final) {
  double el = now() - ctx->t0;
  double rate = el > 0 ? (double)ctx->done / el : 0;
  double eta = rate > 0 ? (double)(ctx->total - ctx->done) / rate : NAN;
  char es[32], ts[32];
  fmt_time(eta, es, sizeof es);
  fmt_time(el, ts, sizeof ts);
  if (ctx->is_tty) {
    int width = 30, fill = ctx->total > 0 ? (int)(width * ctx->done / ctx->total) : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%s [%s] %lld/%lld %.2f it/s elapsed %s ETA %s\033[K", ctx->label, bar,
            (long long)ctx->done, (long long)ctx->total, rate, ts, es);
    if (final) fputc('\n', stderr);
  } else {
    fprintf(stderr, "%s: %lld/%lld (%.2f it/s, elapsed %s, ETA %s)\n", ctx->label,
            (long long)ctx->done, (long long)ctx->total, rate, ts, es);
  }
  fflush(stderr);
  ctx->last_print = now();
}

void mmp_context_progress_begin(mmp_context_t *ctx, const char *label, int64_t total) {
  if (!ctx) return;
  snprintf(ctx->label, sizeof ctx->label, "%s", label ? label : "working");
  ctx->total = total;
  ctx->done = 0;
  ctx->t0 = ctx->last_print = now();
}

void mmp_context_progress_advance(mmp_context_t *ctx, int64_t n) {
  if (!ctx) return;
  ctx->done += n;
  if (!ctx->progress_on) return;
  double gap = ctx->is_tty ? 0.1 : 10.0;
  if (now() - ctx->last_print >= gap) progress_print(ctx, 0);
}

void mmp_context_progress_end(mmp_context_t *ctx) {
  if (!ctx || !ctx->progress_on) return;
  progress_print(ctx, 1);
}
