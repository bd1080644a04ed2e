/* core/util.h - small helpers shared by core files (not installed). */
#ifndef MMPIPE_CORE_UTIL_H
#define MMPIPE_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Checked arithmetic on sizes read from files and configs: true (and *out
 * unspecified) when the result does not fit. */
static inline bool mmp_mul_overflow_i64(int64_t a, int64_t b, int64_t *out) {
  return __builtin_mul_overflow(a, b, out);
}
static inline bool mmp_add_overflow_i64(int64_t a, int64_t b, int64_t *out) {
  return __builtin_add_overflow(a, b, out);
}
static inline bool mmp_mul_overflow_size(size_t a, size_t b, size_t *out) {
  return __builtin_mul_overflow(a, b, out);
}

/* malloc/strdup that never return NULL silently: they set MMP_ENOMEM. */
void *mmp_xmalloc(size_t n);
void *mmp_xcalloc(size_t n, size_t size);
char *mmp_xstrdup(const char *s);

/* Growable string for collecting messages. */
typedef struct mmp_strbuf {
  char *data;
  size_t len, cap;
} mmp_strbuf_t;
void mmp_strbuf_append(mmp_strbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mmp_strbuf_free(mmp_strbuf_t *b);

/* Levenshtein distance (for "did you mean"). */
size_t mmp_edit_distance(const char *a, const char *b);
/* The candidate nearest to @word if it is close enough (<= 1/3 of the
 * length, at least 2 edits), else NULL. */
const char *mmp_nearest(const char *word, const char *const *cands, size_t n);

#endif
