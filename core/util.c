/* core/util.c - allocation wrappers, string buffers, edit distance. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#include "core/util.h"

void *mmp_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) mmp_error_set(MMP_ENOMEM, "out of memory allocating %zu bytes", n);
  return p;
}

void *mmp_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) mmp_error_set(MMP_ENOMEM, "out of memory allocating %zu x %zu bytes", n, size);
  return p;
}

char *mmp_xstrdup(const char *s) {
  char *p = strdup(s ? s : "");
  if (!p) mmp_error_set(MMP_ENOMEM, "out of memory copying a string");
  return p;
}

void mmp_strbuf_append(mmp_strbuf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int need = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (need < 0) return;
  if (b->len + (size_t)need + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + (size_t)need + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) return;
    b->data = d;
    b->cap = cap;
  }
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  b->len += (size_t)need;
}

void mmp_strbuf_free(mmp_strbuf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

size_t mmp_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  size_t *row = malloc((lb + 1) * sizeof *row);
  if (!row) return (size_t)-1;
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      size_t best = diag + cost;
      if (row[j] + 1 < best) best = row[j] + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  size_t d = row[lb];
  free(row);
  return d;
}

const char *mmp_nearest(const char *word, const char *const *cands, size_t n) {
  const char *best = NULL;
  size_t bestd = (size_t)-1;
  for (size_t i = 0; i < n; i++) {
    size_t d = mmp_edit_distance(word, cands[i]);
    if (d < bestd) {
      bestd = d;
      best = cands[i];
    }
  }
  size_t len = strlen(word);
  size_t limit = len / 3 > 2 ? len / 3 : 2;
  return (best && bestd <= limit) ? best : NULL;
}
