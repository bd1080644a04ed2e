/* plugins/common/train_data.c - the image-caption list of the train task (train_data.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#include "plugins/common/train_data.h"

void train_data_clear(train_data_t *d) {
  if (!d) return;
  for (int64_t i = 0; i < d->n; i++) {
    free(d->items[i].path);
    free(d->items[i].caption);
  }
  free(d->items);
  memset(d, 0, sizeof *d);
}

static int add_item(train_data_t *d, const char *dir, const char *name, size_t nlen, const char *cap, size_t clen) {
  if (d->n == d->cap) {
    int64_t nc = d->cap ? 2 * d->cap : 64;
    train_item_t *ni = realloc(d->items, (size_t)nc * sizeof *ni);
    if (!ni) return mmp_error_set(MMP_ENOMEM, "out of memory");
    d->items = ni;
    d->cap = nc;
  }
  size_t dl = strlen(dir);
  train_item_t *it = &d->items[d->n];
  it->path = malloc(dl + nlen + 2);
  it->caption = malloc(clen + 1);
  if (!it->path || !it->caption) {
    free(it->path);
    free(it->caption);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  memcpy(it->path, dir, dl);
  it->path[dl] = '/';
  memcpy(it->path + dl + 1, name, nlen);
  it->path[dl + 1 + nlen] = '\0';
  memcpy(it->caption, cap, clen);
  it->caption[clen] = '\0';
  d->n++;
  return 0;
}

int train_data_parse(train_data_t *d, const char *dir, const char *buf, size_t n, const char *what) {
  size_t pos = 0;
  int line = 0;
  while (pos < n) {
    const char *s = buf + pos;
    const char *nl = memchr(s, '\n', n - pos);
    size_t len = nl ? (size_t)(nl - s) : n - pos;
    pos += len + (nl ? 1 : 0);
    line++;
    while (len > 0 && s[len - 1] == '\r') len--;
    if (len == 0) continue;
    if (memchr(s, '\0', len)) return mmp_error_set(MMP_EDATA, "train: %s:%d: a NUL byte", what, line);
    const char *tab = memchr(s, '\t', len);
    if (!tab || tab == s) return mmp_error_set(MMP_EDATA, "train: %s:%d: expected `image<TAB>caption`", what, line);
    int rc = add_item(d, dir, s, (size_t)(tab - s), tab + 1, len - (size_t)(tab - s) - 1);
    if (rc < 0) return rc;
  }
  if (d->n == 0) return mmp_error_set(MMP_EDATA, "train: %s lists no images", what);
  return 0;
}

int train_data_load(train_data_t *d, const char *dir, const char *captions) {
  FILE *f = fopen(captions, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "train: %s: %s", captions, strerror(errno));
  char *buf = NULL;
  size_t len = 0, cap = 0;
  int rc = 0;
  for (;;) {
    if (len == cap) {
      size_t nc = cap ? 2 * cap : 65536;
      char *nb = realloc(buf, nc);
      if (!nb) {
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
        break;
      }
      buf = nb;
      cap = nc;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) rc = mmp_error_set(MMP_EIO, "train: %s: read error", captions);
      break;
    }
  }
  fclose(f);
  if (rc == 0) rc = train_data_parse(d, dir, buf ? buf : "", len, captions);
  free(buf);
  return rc;
}
