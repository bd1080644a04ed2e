/* core/tensormap.c - named tensors (and strings) passed between components. */
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/plugin.h>

#include "core/util.h"

typedef struct entry {
  char *name;
  mmp_tensor_t *tensor;
} entry_t;

typedef struct sentry {
  char *name;
  char *value;
} sentry_t;

struct mmp_tensormap {
  entry_t *items;
  size_t n, cap;
  sentry_t *strs;
  size_t ns, caps;
};

mmp_tensormap_t *mmp_tensormap_new(void) {
  return mmp_xcalloc(1, sizeof(mmp_tensormap_t));
}

void mmp_tensormap_free(mmp_tensormap_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n; i++) {
    free(m->items[i].name);
    mmp_tensor_unref(m->items[i].tensor);
  }
  for (size_t i = 0; i < m->ns; i++) {
    free(m->strs[i].name);
    free(m->strs[i].value);
  }
  free(m->items);
  free(m->strs);
  free(m);
}

static entry_t *find(const mmp_tensormap_t *m, const char *name) {
  for (size_t i = 0; i < m->n; i++)
    if (strcmp(m->items[i].name, name) == 0) return &m->items[i];
  return NULL;
}

int mmp_tensormap_set(mmp_tensormap_t *m, const char *name, mmp_tensor_t *t) {
  if (!m || !name || !t) {
    mmp_tensor_unref(t);
    return mmp_error_set(MMP_EINVAL, "mmp_tensormap_set: NULL argument");
  }
  entry_t *e = find(m, name);
  if (e) {
    mmp_tensor_unref(e->tensor);
    e->tensor = t;
    return 0;
  }
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    entry_t *items = realloc(m->items, cap * sizeof *items);
    if (!items) {
      mmp_tensor_unref(t);
      return mmp_error_set(MMP_ENOMEM, "out of memory growing a tensor map");
    }
    m->items = items;
    m->cap = cap;
  }
  char *copy = mmp_xstrdup(name);
  if (!copy) {
    mmp_tensor_unref(t);
    return MMP_ENOMEM;
  }
  m->items[m->n].name = copy;
  m->items[m->n].tensor = t;
  m->n++;
  return 0;
}

mmp_tensor_t *mmp_tensormap_get(const mmp_tensormap_t *m, const char *name) {
  if (!m || !name) return NULL;
  entry_t *e = find(m, name);
  return e ? e->tensor : NULL;
}

mmp_tensor_t *mmp_tensormap_need(const mmp_tensormap_t *m, const char *name) {
  mmp_tensor_t *t = mmp_tensormap_get(m, name);
  if (!t) mmp_error_set(MMP_ENOENT, "input tensor '%s' is missing", name);
  return t;
}

size_t mmp_tensormap_size(const mmp_tensormap_t *m) { return m ? m->n : 0; }

const char *mmp_tensormap_name(const mmp_tensormap_t *m, size_t i) {
  return (m && i < m->n) ? m->items[i].name : NULL;
}

mmp_tensor_t *mmp_tensormap_at(const mmp_tensormap_t *m, size_t i) {
  return (m && i < m->n) ? m->items[i].tensor : NULL;
}

int mmp_tensormap_remove(mmp_tensormap_t *m, const char *name) {
  entry_t *e = m && name ? find(m, name) : NULL;
  if (!e) return 0;
  free(e->name);
  mmp_tensor_unref(e->tensor);
  size_t i = (size_t)(e - m->items);
  memmove(e, e + 1, (m->n - i - 1) * sizeof *e);
  m->n--;
  return 1;
}

int mmp_tensormap_set_string(mmp_tensormap_t *m, const char *name, const char *s) {
  if (!m || !name || !s) return mmp_error_set(MMP_EINVAL, "mmp_tensormap_set_string: NULL argument");
  char *v = mmp_xstrdup(s);
  if (!v) return MMP_ENOMEM;
  for (size_t i = 0; i < m->ns; i++) {
    if (strcmp(m->strs[i].name, name) == 0) {
      free(m->strs[i].value);
      m->strs[i].value = v;
      return 0;
    }
  }
  if (m->ns == m->caps) {
    size_t cap = m->caps ? m->caps * 2 : 4;
    sentry_t *strs = realloc(m->strs, cap * sizeof *strs);
    if (!strs) {
      free(v);
      return mmp_error_set(MMP_ENOMEM, "out of memory growing a tensor map");
    }
    m->strs = strs;
    m->caps = cap;
  }
  m->strs[m->ns].name = mmp_xstrdup(name);
  if (!m->strs[m->ns].name) {
    free(v);
    return MMP_ENOMEM;
  }
  m->strs[m->ns].value = v;
  m->ns++;
  return 0;
}

const char *mmp_tensormap_get_string(const mmp_tensormap_t *m, const char *name) {
  if (!m || !name) return NULL;
  for (size_t i = 0; i < m->ns; i++)
    if (strcmp(m->strs[i].name, name) == 0) return m->strs[i].value;
  return NULL;
}
