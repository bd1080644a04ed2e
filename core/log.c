/* core/log.c - levelled logging with a replaceable sink. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/log.h>

static mmp_log_cb sink_cb;
static void *sink_user;
static mmp_log_level_t log_level = MMP_LOG_WARN;

static const char *level_names[] = {"error", "warning", "info", "debug"};

static void stderr_sink(mmp_log_level_t level, const char *component,
                        const char *message, void *user) {
  (void)user;
  fprintf(stderr, "[%s] %s: %s\n", level_names[level], component, message);
}

void mmp_log_set_sink(mmp_log_cb cb, void *user) {
  sink_cb = cb;
  sink_user = user;
}

void mmp_log_set_level(mmp_log_level_t level) {
  if (level < MMP_LOG_ERROR) level = MMP_LOG_ERROR;
  if (level > MMP_LOG_DEBUG) level = MMP_LOG_DEBUG;
  log_level = level;
}

mmp_log_level_t mmp_log_get_level(void) { return log_level; }

void mmp_log(mmp_log_level_t level, const char *component, const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  if (level > log_level) return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t n = strlen(msg);
  while (n > 0 && msg[n - 1] == '\n') msg[--n] = '\0';
  (sink_cb ? sink_cb : stderr_sink)(level, component ? component : "mmpipe", msg,
                                    sink_user);
}
