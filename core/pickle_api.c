/* core/pickle_api.c - the public reader of plain pickled values (include/mmpipe/pickle.h) over the restricted machine. */
#include <mmpipe/pickle.h>

#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#include "core/pickle.h"

struct mmp_pickle {
  pk_t *pk;
  pk_value_t *root;
  size_t end;
};

mmp_pickle_t *mmp_pickle_load(const void *data, size_t n, const char *label, unsigned flags) {
  if (!data && n) {
    mmp_error_set(MMP_EINVAL, "mmp_pickle_load: NULL data");
    return NULL;
  }
  mmp_pickle_t *p = calloc(1, sizeof *p);
  if (!p || !(p->pk = pk_new((flags & MMP_PICKLE_STRICT) != 0))) {
    free(p);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  if (flags & MMP_PICKLE_NUMPY) pk_allow_numpy(p->pk);
  size_t pos = 0;
  p->root = pk_load(p->pk, data, n, &pos, label ? label : "pickle");
  if (!p->root) {
    mmp_pickle_free(p);
    return NULL;
  }
  p->end = pos;
  return p;
}

void mmp_pickle_free(mmp_pickle_t *p) {
  if (!p) return;
  pk_free(p->pk);
  free(p);
}

size_t mmp_pickle_end(const mmp_pickle_t *p) { return p ? p->end : 0; }
const mmp_pickle_value_t *mmp_pickle_root(const mmp_pickle_t *p) { return p ? p->root : NULL; }

mmp_pickle_kind_t mmp_pickle_kind(const mmp_pickle_value_t *v) {
  if (!v) return MMP_PICKLE_NONE;
  switch (v->kind) {
  case PK_NONE: return MMP_PICKLE_NONE;
  case PK_BOOL: return MMP_PICKLE_BOOL;
  case PK_INT: return MMP_PICKLE_INT;
  case PK_BIGINT: return MMP_PICKLE_BIGINT;
  case PK_FLOAT: return MMP_PICKLE_FLOAT;
  case PK_STR: return MMP_PICKLE_STR;
  case PK_BYTES: return MMP_PICKLE_BYTES;
  case PK_TUPLE: return MMP_PICKLE_TUPLE;
  case PK_LIST: return MMP_PICKLE_LIST;
  case PK_DICT: return MMP_PICKLE_DICT;
  case PK_SET: return MMP_PICKLE_SET;
  case PK_OPAQUE: return MMP_PICKLE_OPAQUE;
  default: return MMP_PICKLE_OTHER;
  }
}

const char *mmp_pickle_str(const mmp_pickle_value_t *v, size_t *len) {
  if (!v || (v->kind != PK_STR && v->kind != PK_BYTES)) return NULL;
  if (len) *len = v->u.str.len;
  return v->u.str.s;
}

bool mmp_pickle_str_py2(const mmp_pickle_value_t *v) { return v && v->kind == PK_STR && v->py2; }

int mmp_pickle_int(const mmp_pickle_value_t *v, int64_t *out) {
  if (v && v->kind == PK_INT) *out = v->u.i;
  else if (v && v->kind == PK_BOOL) *out = v->u.b;
  else return mmp_error_set(MMP_EDATA, "pickle: value is not an int");
  return 0;
}

int mmp_pickle_float(const mmp_pickle_value_t *v, double *out) {
  if (v && v->kind == PK_FLOAT) {
    *out = v->u.f;
    return 0;
  }
  int64_t i;
  int rc = mmp_pickle_int(v, &i);
  if (rc == 0) *out = (double)i;
  return rc;
}

static bool is_seq(const pk_value_t *v) {
  return v && (v->kind == PK_TUPLE || v->kind == PK_LIST || v->kind == PK_DICT || v->kind == PK_SET ||
               v->kind == PK_OPAQUE);
}

size_t mmp_pickle_len(const mmp_pickle_value_t *v) {
  if (!is_seq(v)) return 0;
  return v->kind == PK_DICT ? v->u.seq.n / 2 : v->u.seq.n;
}

const mmp_pickle_value_t *mmp_pickle_item(const mmp_pickle_value_t *v, size_t i) {
  if (i >= mmp_pickle_len(v)) return NULL;
  return v->kind == PK_DICT ? v->u.seq.items[2 * i + 1] : v->u.seq.items[i];
}

const mmp_pickle_value_t *mmp_pickle_key(const mmp_pickle_value_t *v, size_t i) {
  if (!v || v->kind != PK_DICT || i >= mmp_pickle_len(v)) return NULL;
  return v->u.seq.items[2 * i];
}

const mmp_pickle_value_t *mmp_pickle_get(const mmp_pickle_value_t *v, const char *key) {
  const mmp_pickle_value_t *found = NULL;
  size_t kl = strlen(key);
  for (size_t i = 0; v && v->kind == PK_DICT && i < mmp_pickle_len(v); i++) {
    size_t l;
    const char *s = mmp_pickle_str(mmp_pickle_key(v, i), &l);
    if (s && l == kl && memcmp(s, key, kl) == 0) found = mmp_pickle_item(v, i);
  }
  return found;
}

const char *mmp_pickle_global(const mmp_pickle_value_t *v) {
  return v && v->kind == PK_OPAQUE ? v->gname : NULL;
}
