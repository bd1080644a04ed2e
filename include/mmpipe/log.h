/* mmpipe/log.h - levelled logging to a replaceable sink (stderr by default).
 *
 * Results never go to the log. Each line is stamped with the component name:
 *
 *   MMP_INFO("ddim", "%d steps", n);   ->  "[info] ddim: 50 steps"
 */
#ifndef MMPIPE_LOG_H
#define MMPIPE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmp_log_level {
  MMP_LOG_ERROR = 0,
  MMP_LOG_WARN = 1,
  MMP_LOG_INFO = 2,
  MMP_LOG_DEBUG = 3
} mmp_log_level_t;

/* A sink receives one complete message (no trailing newline). */
typedef void (*mmp_log_cb)(mmp_log_level_t level, const char *component,
                           const char *message, void *user);

/* Replace the sink; NULL restores the stderr sink. Not thread-safe against
 * concurrent logging: call at start-up. */
void mmp_log_set_sink(mmp_log_cb cb, void *user);

/* Messages above @level are dropped. Default MMP_LOG_WARN. */
void mmp_log_set_level(mmp_log_level_t level);
mmp_log_level_t mmp_log_get_level(void);

void mmp_log(mmp_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define MMP_ERROR(comp, ...) mmp_log(MMP_LOG_ERROR, (comp), __VA_ARGS__)
#define MMP_WARN(comp, ...) mmp_log(MMP_LOG_WARN, (comp), __VA_ARGS__)
#define MMP_INFO(comp, ...) mmp_log(MMP_LOG_INFO, (comp), __VA_ARGS__)
#define MMP_DEBUG(comp, ...) mmp_log(MMP_LOG_DEBUG, (comp), __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
