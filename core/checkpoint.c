/* core/checkpoint.c - PyTorch checkpoints (zip and legacy torch.save formats) read through the restricted pickle machine. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "core/pickle.h"
#include "core/tensor_impl.h"

#pragma GCC visibility push(default)
#include <mmpipe/checkpoint.h>
#include <mmpipe/plugin.h>
#pragma GCC visibility pop

#define MAX_PICKLE_BYTES (1u << 30) /* data.pkl larger than this is refused */
#define MAX_PATH_BYTES 4096         /* a dotted path longer than this is refused */

/* The file's bytes, shared by the checkpoint and its zero-copy tensors. */
typedef struct mapping {
  void *addr;
  size_t len; /* 0: not ours to unmap (open_memory) */
  int refs;
} mapping_t;

static void map_unref(void *p) {
  mapping_t *m = p;
  if (!m || __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (m->addr && m->len) munmap(m->addr, m->len);
  free(m);
}

/* One storage record: its bytes in the mapping (mapped) or a copy. */
typedef struct record {
  const char *key;
  pk_dtype_t dtype;
  int64_t numel;
  const uint8_t *ptr;
  size_t nbytes;
  bool mapped, found, wanted; /* wanted: a selected tensor uses it */
  void *heap;
} record_t;

typedef struct entry {
  char *name;
  pk_value_t *t; /* PK_TENSOR */
  size_t order;
} entry_t;

typedef struct value {
  char *name, *text;
  size_t order;
} value_t;

struct mmp_checkpoint {
  char *label;
  const char *format;
  mapping_t *map;
  const uint8_t *data;
  size_t size;
  pk_t *pk;
  record_t *recs;
  size_t nrecs;
  entry_t *entries;
  size_t n, cap;
  value_t *values;
  size_t nv, capv;
  const char *prefix;
  size_t plen;
  long budget;
};

static int ck_fail(const mmp_checkpoint_t *ck, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ck_fail(const mmp_checkpoint_t *ck, int code, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return mmp_error_set(code, "%s: %s", ck->label, msg);
}

void mmp_checkpoint_close(mmp_checkpoint_t *ck) {
  if (!ck) return;
  for (size_t i = 0; i < ck->n; i++) free(ck->entries[i].name);
  for (size_t i = 0; i < ck->nv; i++) {
    free(ck->values[i].name);
    free(ck->values[i].text);
  }
  for (size_t i = 0; i < ck->nrecs; i++) free(ck->recs[i].heap);
  free(ck->recs);
  free(ck->entries);
  free(ck->values);
  pk_free(ck->pk);
  map_unref(ck->map);
  free(ck->label);
  free(ck);
}

/* ------------------------------------------------------------ zip source */

/* libzip reads the archive through this source over the mapping, which
 * also tells where a stored entry's bytes begin (libzip has no call for
 * it): the offset of the first read after the entry is opened. */
typedef struct zsrc {
  const uint8_t *d;
  uint64_t n, pos, last_read;
  zip_error_t err;
} zsrc_t;

static zip_int64_t zsrc_cb(void *ud, void *data, zip_uint64_t len, zip_source_cmd_t cmd) {
  zsrc_t *s = ud;
  switch (cmd) {
  case ZIP_SOURCE_OPEN: s->pos = 0; return 0;
  case ZIP_SOURCE_READ: {
    uint64_t k = s->n - s->pos < len ? s->n - s->pos : len;
    s->last_read = s->pos;
    if (k) memcpy(data, s->d + s->pos, (size_t)k);
    s->pos += k;
    return (zip_int64_t)k;
  }
  case ZIP_SOURCE_CLOSE: return 0;
  case ZIP_SOURCE_STAT: {
    if (len < sizeof(zip_stat_t)) return -1;
    zip_stat_t *st = data;
    zip_stat_init(st);
    st->size = s->n;
    st->valid |= ZIP_STAT_SIZE;
    return sizeof(zip_stat_t);
  }
  case ZIP_SOURCE_ERROR: return zip_error_to_data(&s->err, data, len);
  case ZIP_SOURCE_FREE: return 0;
  case ZIP_SOURCE_SEEK: {
    zip_int64_t np = zip_source_seek_compute_offset(s->pos, s->n, data, len, &s->err);
    if (np < 0) return -1;
    s->pos = (uint64_t)np;
    return 0;
  }
  case ZIP_SOURCE_TELL: return (zip_int64_t)s->pos;
  case ZIP_SOURCE_SUPPORTS:
    return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE,
                                          ZIP_SOURCE_STAT, ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE,
                                          ZIP_SOURCE_SEEK, ZIP_SOURCE_TELL, ZIP_SOURCE_SUPPORTS, -1);
  default: zip_error_set(&s->err, ZIP_ER_OPNOTSUPP, 0); return -1;
  }
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Whether a local file header of @name ends right before @off (the
 * bytes libzip read are the entry's own). */
static bool local_header_before(const zsrc_t *s, uint64_t off, const char *name) {
  size_t nl = strlen(name);
  for (uint64_t e = 0; e <= 0xffff; e++) {
    if (off < 30 + nl + e) return false;
    const uint8_t *h = s->d + off - 30 - nl - e;
    if (memcmp(h, "PK\3\4", 4) == 0 && le16(h + 26) == nl && le16(h + 28) == e && le16(h + 8) == 0 &&
        memcmp(h + 30, name, nl) == 0)
      return true;
  }
  return false;
}

/* Read a whole entry (growing the buffer as bytes arrive, never to a
 * declared size). (transfer full) */
static int zip_read_all(mmp_checkpoint_t *ck, zip_t *za, zip_uint64_t idx, const char *name, size_t limit,
                        uint8_t **out, size_t *outlen) {
  zip_file_t *zf = zip_fopen_index(za, idx, 0);
  if (!zf) return ck_fail(ck, MMP_EDATA, "%s: %s", name, zip_strerror(za));
  size_t cap = 0, len = 0;
  uint8_t *buf = NULL;
  int rc = 0;
  for (;;) {
    if (len == cap) {
      if (cap >= limit) {
        rc = ck_fail(ck, MMP_EDATA, "%s: larger than %zu bytes", name, limit);
        break;
      }
      size_t nc = cap ? cap * 2 : 4096;
      if (nc > limit) nc = limit;
      uint8_t *nb = realloc(buf, nc);
      if (!nb) {
        rc = ck_fail(ck, MMP_ENOMEM, "%s: out of memory", name);
        break;
      }
      buf = nb;
      cap = nc;
    }
    zip_int64_t k = zip_fread(zf, buf + len, cap - len);
    if (k < 0) {
      rc = ck_fail(ck, MMP_EDATA, "%s: %s", name, zip_file_strerror(zf));
      break;
    }
    if (k == 0) break;
    len += (size_t)k;
  }
  zip_fclose(zf);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *outlen = len;
  return 0;
}

/* -------------------------------------------------------------- walking */

static int cmp_rec(const void *a, const void *b) {
  return strcmp(((const record_t *)a)->key, ((const record_t *)b)->key);
}

static record_t *find_rec(mmp_checkpoint_t *ck, const char *key) {
  record_t k = {.key = key};
  return bsearch(&k, ck->recs, ck->nrecs, sizeof *ck->recs, cmp_rec);
}

/* One record per storage key (sorted), checked for a consistent type. */
static int collect_records(mmp_checkpoint_t *ck) {
  size_t n = pk_storage_count(ck->pk);
  ck->recs = calloc(n ? n : 1, sizeof *ck->recs);
  if (!ck->recs) return ck_fail(ck, MMP_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    pk_storage_t *s = &pk_storage_at(ck->pk, i)->u.storage;
    ck->recs[i] = (record_t){.key = s->key, .dtype = s->dtype, .numel = s->numel};
  }
  qsort(ck->recs, n, sizeof *ck->recs, cmp_rec);
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (m && strcmp(ck->recs[m - 1].key, ck->recs[i].key) == 0) {
      if (ck->recs[m - 1].dtype != ck->recs[i].dtype || ck->recs[m - 1].numel != ck->recs[i].numel)
        return ck_fail(ck, MMP_EDATA, "storage '%s' is declared twice with different types or sizes",
                       ck->recs[i].key);
      continue;
    }
    ck->recs[m++] = ck->recs[i];
  }
  ck->nrecs = m;
  for (size_t i = 0; i < n; i++) {
    pk_value_t *v = pk_storage_at(ck->pk, i);
    v->u.storage.user = find_rec(ck, v->u.storage.key);
  }
  return 0;
}

static bool compatible(const char *path, const mmp_checkpoint_t *ck) {
  size_t l = strlen(path);
  return strncmp(path, ck->prefix, l < ck->plen ? l : ck->plen) == 0;
}

static int add_entry(mmp_checkpoint_t *ck, const char *path, pk_value_t *t) {
  if (ck->n == ck->cap) {
    size_t c = ck->cap ? ck->cap * 2 : 64;
    entry_t *e = realloc(ck->entries, c * sizeof *e);
    if (!e) return ck_fail(ck, MMP_ENOMEM, "out of memory");
    ck->entries = e;
    ck->cap = c;
  }
  char *nm = strdup(path + ck->plen);
  if (!nm) return ck_fail(ck, MMP_ENOMEM, "out of memory");
  ck->entries[ck->n] = (entry_t){nm, t, ck->n};
  record_t *rec = t->u.tensor.storage->u.storage.user;
  if (rec) rec->wanted = true;
  ck->n++;
  return 0;
}

static void scalar_text(const pk_value_t *v, char *buf, size_t n) {
  switch (v->kind) {
  case PK_NONE: snprintf(buf, n, "None"); break;
  case PK_BOOL: snprintf(buf, n, "%s", v->u.b ? "True" : "False"); break;
  case PK_INT: snprintf(buf, n, "%lld", (long long)v->u.i); break;
  case PK_BIGINT: snprintf(buf, n, "<int of %zu bytes>", v->u.str.len); break;
  case PK_FLOAT: /* the shortest text that reads back as the same double, as Python's repr */
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(buf, n, "%.*g", prec, v->u.f);
      if (strtod(buf, NULL) == v->u.f) break;
    }
    break;
  case PK_STR: snprintf(buf, n, "'%.200s%s'", v->u.str.s, v->u.str.len > 200 ? "..." : ""); break;
  case PK_BYTES: snprintf(buf, n, "<%zu bytes>", v->u.str.len); break;
  default: snprintf(buf, n, "?"); break;
  }
}

static int add_value(mmp_checkpoint_t *ck, const char *path, const char *text) {
  if (strlen(path) < ck->plen) return 0;
  if (ck->nv == ck->capv) {
    size_t c = ck->capv ? ck->capv * 2 : 32;
    value_t *v = realloc(ck->values, c * sizeof *v);
    if (!v) return ck_fail(ck, MMP_ENOMEM, "out of memory");
    ck->values = v;
    ck->capv = c;
  }
  value_t *v = &ck->values[ck->nv];
  v->name = strdup(path + ck->plen);
  v->text = strdup(text);
  v->order = ck->nv;
  if (!v->name || !v->text) {
    free(v->name);
    free(v->text);
    return ck_fail(ck, MMP_ENOMEM, "out of memory");
  }
  ck->nv++;
  return 0;
}

/* A sequence of scalars as one short text, or false. */
static bool seq_text(const pk_value_t *v, char *buf, size_t n) {
  if (v->kind != PK_LIST && v->kind != PK_TUPLE && v->kind != PK_SET) return false;
  for (size_t i = 0; i < v->u.seq.n; i++)
    if (!pk_is_scalar(v->u.seq.items[i])) return false;
  const char *open = v->kind == PK_LIST ? "[" : v->kind == PK_TUPLE ? "(" : "{";
  const char *close = v->kind == PK_LIST ? "]" : v->kind == PK_TUPLE ? ")" : "}";
  size_t o = (size_t)snprintf(buf, n, "%s", open);
  for (size_t i = 0; i < v->u.seq.n && o < n; i++) {
    if (i == 16) {
      o += (size_t)snprintf(buf + o, n - o, ", ... (%zu items)", v->u.seq.n);
      break;
    }
    char item[256];
    scalar_text(v->u.seq.items[i], item, sizeof item);
    o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? ", " : "", item);
  }
  if (o < n) snprintf(buf + o, n - o, "%s", v->kind == PK_TUPLE && v->u.seq.n == 1 ? ",)" : close);
  return true;
}

static void key_text(const pk_value_t *k, char *buf, size_t n) {
  if (k->kind == PK_STR)
    snprintf(buf, n, "%s", k->u.str.s);
  else if (pk_is_scalar(k))
    scalar_text(k, buf, n);
  else if (!seq_text(k, buf, n))
    snprintf(buf, n, "?");
}

static int walk(mmp_checkpoint_t *ck, pk_value_t *v, char *path, size_t plen, int depth) {
  if (--ck->budget < 0) return ck_fail(ck, MMP_EDATA, "the saved object is too large to walk (shared too often)");
  if (depth > PK_MAX_DEPTH) return ck_fail(ck, MMP_EDATA, "%s: nested deeper than %d levels", path, PK_MAX_DEPTH);
  char text[4096];
  switch (v->kind) {
  case PK_TENSOR:
    if (plen >= ck->plen && strncmp(path, ck->prefix, ck->plen) == 0) return add_entry(ck, path, v);
    return 0;
  case PK_DICT:
  case PK_LIST:
  case PK_TUPLE: {
    if (v->mark) return add_value(ck, path, "<recursive>"); /* a cycle: its tensors are reached on the first visit */
    if (v->kind != PK_DICT && seq_text(v, text, sizeof text) && v->u.seq.n) return add_value(ck, path, text);
    if (v->u.seq.n == 0) return add_value(ck, path, v->kind == PK_DICT ? "{}" : v->kind == PK_LIST ? "[]" : "()");
    v->mark = 1;
    int rc = 0;
    bool dict = v->kind == PK_DICT;
    for (size_t i = 0; i < v->u.seq.n && rc == 0; i += dict ? 2 : 1) {
      char key[1024];
      if (dict)
        key_text(v->u.seq.items[i], key, sizeof key);
      else
        snprintf(key, sizeof key, "%zu", i);
      size_t kl = strlen(key), nl = plen + (plen ? 1 : 0) + kl;
      if (nl >= MAX_PATH_BYTES) {
        rc = ck_fail(ck, MMP_EDATA, "a path longer than %d bytes", MAX_PATH_BYTES);
        break;
      }
      if (plen) path[plen] = '.';
      memcpy(path + plen + (plen ? 1 : 0), key, kl + 1);
      if (compatible(path, ck)) rc = walk(ck, v->u.seq.items[i + (dict ? 1 : 0)], path, nl, depth + 1);
      path[plen] = '\0';
    }
    v->mark = 0;
    return rc;
  }
  case PK_OPAQUE:
    if (pk_holds_tensor(v))
      return ck_fail(ck, MMP_EDATA,
                     "the tensors under '%s' are inside an object of '%s' (global at pickle offset %zu), "
                     "which is not on the allow-list; select another part (prefix) or convert the file with torch",
                     plen ? path : "(top)", v->gname, v->gpos);
    snprintf(text, sizeof text, "<%s>", v->gname);
    return add_value(ck, path, text);
  case PK_SET:
    if (!seq_text(v, text, sizeof text)) snprintf(text, sizeof text, "<set of %zu items>", v->u.seq.n);
    return add_value(ck, path, text);
  case PK_GLOBAL: return add_value(ck, path, "<global>");
  case PK_STORAGE: return add_value(ck, path, "<storage>");
  default: scalar_text(v, text, sizeof text); return add_value(ck, path, text);
  }
}

static int cmp_entry_name(const void *a, const void *b) {
  const entry_t *x = *(entry_t *const *)a, *y = *(entry_t *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->order < y->order ? -1 : x->order > y->order);
}

/* A dict written with a key twice keeps the last value (as Python does). */
static int dedupe_entries(mmp_checkpoint_t *ck) {
  if (ck->n < 2) return 0;
  entry_t **idx = malloc(ck->n * sizeof *idx);
  if (!idx) return ck_fail(ck, MMP_ENOMEM, "out of memory");
  for (size_t i = 0; i < ck->n; i++) idx[i] = &ck->entries[i];
  qsort(idx, ck->n, sizeof *idx, cmp_entry_name);
  bool any = false;
  for (size_t i = 0; i + 1 < ck->n; i++)
    if (strcmp(idx[i]->name, idx[i + 1]->name) == 0) {
      idx[i]->t = NULL;
      any = true;
    }
  free(idx);
  if (!any) return 0;
  size_t m = 0;
  for (size_t i = 0; i < ck->n; i++) {
    if (!ck->entries[i].t) {
      free(ck->entries[i].name);
      continue;
    }
    ck->entries[m++] = ck->entries[i];
  }
  ck->n = m;
  return 0;
}

static bool mul_ok(int64_t a, int64_t b, int64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static bool add_ok(int64_t a, int64_t b, int64_t *out) { return !__builtin_add_overflow(a, b, out); }

/* Elements of the tensor and the last element it reaches (-1 when empty). */
static int tensor_extent(const pk_tensor_t *t, int64_t *numel, int64_t *last) {
  int64_t n = 1, hi = t->offset;
  for (int d = 0; d < t->ndim; d++)
    if (!mul_ok(n, t->size[d], &n)) return -1;
  *numel = n;
  if (n == 0) {
    *last = -1;
    return 0;
  }
  for (int d = 0; d < t->ndim; d++) {
    int64_t s;
    if (!mul_ok(t->size[d] - 1, t->stride[d], &s) || !add_ok(hi, s, &hi)) return -1;
  }
  *last = hi;
  return 0;
}

/* Each selected tensor: dims mmpipe holds, a record, inside its storage. */
static int check_tensors(mmp_checkpoint_t *ck) {
  for (size_t i = 0; i < ck->n; i++) {
    const pk_tensor_t *t = &ck->entries[i].t->u.tensor;
    const pk_storage_t *s = &t->storage->u.storage;
    const record_t *rec = s->user;
    const char *nm = ck->entries[i].name;
    if (t->ndim > MMP_MAX_DIMS)
      return ck_fail(ck, MMP_EDATA, "tensor '%s%s' has %d dims (mmpipe holds at most %d)", ck->prefix, nm,
                     t->ndim, MMP_MAX_DIMS);
    if (!rec || !rec->found)
      return ck_fail(ck, MMP_EDATA, "tensor '%s%s': storage '%s' has no record in the file", ck->prefix, nm, s->key);
    int64_t numel, last;
    if (tensor_extent(t, &numel, &last) < 0)
      return ck_fail(ck, MMP_EDATA, "tensor '%s%s': sizes and strides overflow", ck->prefix, nm);
    int64_t avail = s->view ? s->view_numel : s->numel;
    if (last >= avail)
      return ck_fail(ck, MMP_EDATA,
                     "tensor '%s%s': offset %lld, sizes and strides reach element %lld of a storage of %lld",
                     ck->prefix, nm, (long long)t->offset, (long long)last, (long long)avail);
  }
  return 0;
}

/* ------------------------------------------------------------ containers */

static int zip_records(mmp_checkpoint_t *ck, zip_t *za, zsrc_t *src, const char *dir) {
  for (size_t i = 0; i < ck->nrecs; i++) {
    record_t *rec = &ck->recs[i];
    if (!rec->wanted) continue;
    int64_t nbytes;
    if (!mul_ok(rec->numel, (int64_t)pk_dtype_size(rec->dtype), &nbytes))
      return ck_fail(ck, MMP_EDATA, "storage '%s': size overflows", rec->key);
    char name[600];
    snprintf(name, sizeof name, "%sdata/%s", dir, rec->key);
    zip_int64_t idx = zip_name_locate(za, name, 0);
    if (idx < 0) continue; /* an error only if a selected tensor uses it */
    zip_stat_t st;
    if (zip_stat_index(za, (zip_uint64_t)idx, 0, &st) < 0 || !(st.valid & ZIP_STAT_SIZE))
      return ck_fail(ck, MMP_EDATA, "%s: %s", name, zip_strerror(za));
    if (st.size != (zip_uint64_t)nbytes)
      return ck_fail(ck, MMP_EDATA, "record %s has %llu bytes; the pickle declares %lld %s elements (%lld bytes)",
                     name, (unsigned long long)st.size, (long long)rec->numel, pk_dtype_name(rec->dtype),
                     (long long)nbytes);
    rec->nbytes = (size_t)nbytes;
    rec->found = true;
    if (nbytes == 0) continue;
    bool stored = (st.valid & ZIP_STAT_COMP_METHOD) && st.comp_method == ZIP_CM_STORE &&
                  (!(st.valid & ZIP_STAT_ENCRYPTION_METHOD) || st.encryption_method == ZIP_EM_NONE);
    if (stored) {
      zip_file_t *zf = zip_fopen_index(za, (zip_uint64_t)idx, 0);
      uint8_t first;
      if (zf && zip_fread(zf, &first, 1) == 1) {
        uint64_t off = src->last_read;
        if (off < src->n && src->n - off >= (uint64_t)nbytes && src->d[off] == first &&
            local_header_before(src, off, name)) {
          rec->ptr = src->d + off;
          rec->mapped = true;
        }
      }
      if (zf) zip_fclose(zf);
      if (rec->mapped) continue;
    }
    uint8_t *buf;
    size_t len;
    int rc = zip_read_all(ck, za, (zip_uint64_t)idx, name, (size_t)nbytes, &buf, &len);
    if (rc < 0) return rc;
    if (len != (size_t)nbytes) {
      free(buf);
      return ck_fail(ck, MMP_EDATA, "record %s: %zu bytes read, %lld expected", name, len, (long long)nbytes);
    }
    rec->heap = buf;
    rec->ptr = buf;
  }
  return 0;
}

static int walk_root(mmp_checkpoint_t *ck, pk_value_t *root) {
  char *path = malloc(MAX_PATH_BYTES + 1);
  if (!path) return ck_fail(ck, MMP_ENOMEM, "out of memory");
  path[0] = '\0';
  ck->budget = 1L << 24;
  int rc = walk(ck, root, path, 0, 0);
  free(path);
  if (rc == 0) rc = dedupe_entries(ck);
  if (rc == 0 && ck->n == 0 && ck->plen && ck->nv == 0)
    rc = ck_fail(ck, MMP_ENOENT, "nothing under the prefix '%s'", ck->prefix);
  return rc;
}

static int open_zip(mmp_checkpoint_t *ck) {
  zsrc_t *src = calloc(1, sizeof *src);
  if (!src) return ck_fail(ck, MMP_ENOMEM, "out of memory");
  src->d = ck->data;
  src->n = ck->size;
  zip_error_init(&src->err);
  zip_error_t err;
  zip_error_init(&err);
  int rc = 0;
  zip_t *za = NULL;
  zip_source_t *zs = zip_source_function_create(zsrc_cb, src, &err);
  if (zs) za = zip_open_from_source(zs, ZIP_RDONLY | ZIP_CHECKCONS, &err);
  if (!za) {
    rc = ck_fail(ck, MMP_EDATA, "not a readable zip archive: %s", zip_error_strerror(&err));
    if (zs) zip_source_free(zs);
    goto out;
  }
  /* data.pkl: ARCHIVE/data.pkl, where ARCHIVE is whatever the file was
   * called when saved; the shallowest one wins */
  zip_int64_t ne = zip_get_num_entries(za, 0), pkl = -1;
  size_t best = (size_t)-1;
  for (zip_int64_t i = 0; i < ne; i++) {
    const char *nm = zip_get_name(za, (zip_uint64_t)i, 0);
    if (!nm) continue;
    size_t l = strlen(nm);
    if (l < 8 || strcmp(nm + l - 8, "data.pkl") != 0 || (l > 8 && nm[l - 9] != '/')) continue;
    size_t depth = 0;
    for (size_t k = 0; k < l; k++) depth += nm[k] == '/';
    if (depth < best) {
      best = depth;
      pkl = i;
    }
  }
  if (pkl < 0) {
    rc = ck_fail(ck, MMP_EDATA, "a zip archive without data.pkl: not a torch.save file");
    goto out;
  }
  char dir[512];
  const char *pname = zip_get_name(za, (zip_uint64_t)pkl, 0);
  size_t dl = strlen(pname) - 8;
  if (dl >= sizeof dir) {
    rc = ck_fail(ck, MMP_EDATA, "archive folder name too long");
    goto out;
  }
  memcpy(dir, pname, dl);
  dir[dl] = '\0';
  char name[600];
  snprintf(name, sizeof name, "%sbyteorder", dir);
  zip_int64_t bo = zip_name_locate(za, name, 0);
  if (bo >= 0) {
    uint8_t *b;
    size_t bl;
    if ((rc = zip_read_all(ck, za, (zip_uint64_t)bo, name, 64, &b, &bl)) < 0) goto out;
    bool little = bl == 6 && memcmp(b, "little", 6) == 0;
    if (!little) {
      rc = ck_fail(ck, MMP_EDATA, "byteorder is '%.*s': only little-endian files are read", (int)(bl < 16 ? bl : 16),
                   (const char *)b);
      free(b);
      goto out;
    }
    free(b);
  }
  uint8_t *pk_bytes;
  size_t pk_len, pos = 0;
  if ((rc = zip_read_all(ck, za, (zip_uint64_t)pkl, pname, MAX_PICKLE_BYTES, &pk_bytes, &pk_len)) < 0) goto out;
  pk_value_t *root = pk_load(ck->pk, pk_bytes, pk_len, &pos, pname);
  free(pk_bytes);
  if (!root) {
    rc = mmp_error_prefix("%s: ", ck->label);
    goto out;
  }
  if ((rc = collect_records(ck)) < 0 || (rc = walk_root(ck, root)) < 0 ||
      (rc = zip_records(ck, za, src, dir)) < 0 || (rc = check_tensors(ck)) < 0)
    goto out;
  ck->format = "zip";
out:
  if (za) zip_discard(za);
  zip_error_fini(&err); /* frees the text zip_error_strerror made */
  zip_error_fini(&src->err);
  free(src);
  return rc;
}

static bool is_magic(const pk_value_t *v) {
  static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  return v && v->kind == PK_BIGINT && v->u.str.len == 10 && memcmp(v->u.str.s, magic, 10) == 0;
}

static int open_legacy(mmp_checkpoint_t *ck) {
  size_t pos = 0;
  pk_value_t *magic = pk_load(ck->pk, ck->data, ck->size, &pos, "magic number");
  if (!magic) return mmp_error_prefix("%s: ", ck->label);
  if (!is_magic(magic)) return ck_fail(ck, MMP_EDATA, "not a torch.save file (no magic number)");
  pk_value_t *proto = pk_load(ck->pk, ck->data, ck->size, &pos, "protocol version");
  if (!proto) return mmp_error_prefix("%s: ", ck->label);
  if (proto->kind != PK_INT || proto->u.i != 1001)
    return ck_fail(ck, MMP_EDATA, "legacy protocol version is not 1001");
  pk_value_t *info = pk_load(ck->pk, ck->data, ck->size, &pos, "sys info");
  if (!info) return mmp_error_prefix("%s: ", ck->label);
  if (info->kind == PK_DICT)
    for (size_t i = 0; i + 1 < info->u.seq.n; i += 2) {
      pk_value_t *k = info->u.seq.items[i], *v = info->u.seq.items[i + 1];
      if (k->kind == PK_STR && strcmp(k->u.str.s, "little_endian") == 0 && !(v->kind == PK_BOOL && v->u.b))
        return ck_fail(ck, MMP_EDATA, "saved on a big-endian machine: only little-endian files are read");
    }
  pk_value_t *root = pk_load(ck->pk, ck->data, ck->size, &pos, "object");
  if (!root) return mmp_error_prefix("%s: ", ck->label);
  pk_value_t *keys = pk_load(ck->pk, ck->data, ck->size, &pos, "storage keys");
  if (!keys) return mmp_error_prefix("%s: ", ck->label);
  if (keys->kind != PK_LIST) return ck_fail(ck, MMP_EDATA, "the storage keys are not a list");
  int rc;
  if ((rc = collect_records(ck)) < 0) return rc;
  for (size_t i = 0; i < keys->u.seq.n; i++) {
    pk_value_t *k = keys->u.seq.items[i];
    if (k->kind != PK_STR) return ck_fail(ck, MMP_EDATA, "storage key %zu is not a string", i);
    record_t *rec = find_rec(ck, k->u.str.s);
    if (!rec) return ck_fail(ck, MMP_EDATA, "storage key '%s' is not used by the pickle", k->u.str.s);
    if (rec->found) return ck_fail(ck, MMP_EDATA, "storage key '%s' listed twice", k->u.str.s);
    if (ck->size - pos < 8)
      return ck_fail(ck, MMP_EDATA, "truncated at storage '%s' (offset %zu)", k->u.str.s, pos);
    int64_t numel = 0;
    for (int b = 7; b >= 0; b--) numel = (int64_t)(((uint64_t)numel << 8) | ck->data[pos + (size_t)b]);
    pos += 8;
    int64_t nbytes;
    if (numel != rec->numel || !mul_ok(numel, (int64_t)pk_dtype_size(rec->dtype), &nbytes))
      return ck_fail(ck, MMP_EDATA, "storage '%s' has %lld elements in the file, %lld in the pickle", rec->key,
                     (long long)numel, (long long)rec->numel);
    if ((uint64_t)nbytes > ck->size - pos)
      return ck_fail(ck, MMP_EDATA, "truncated in storage '%s' (%lld bytes at offset %zu, %zu left)", rec->key,
                     (long long)nbytes, pos, ck->size - pos);
    rec->ptr = ck->data + pos;
    rec->nbytes = (size_t)nbytes;
    rec->mapped = rec->found = true;
    pos += (size_t)nbytes;
  }
  if ((rc = walk_root(ck, root)) < 0 || (rc = check_tensors(ck)) < 0) return rc;
  ck->format = "legacy";
  return 0;
}

static mmp_checkpoint_t *open_common(mapping_t *map, const uint8_t *data, size_t size, const char *label,
                                     const char *prefix, unsigned flags) {
  mmp_checkpoint_t *ck = calloc(1, sizeof *ck);
  if (!ck || !(ck->label = strdup(label))) {
    free(ck);
    map_unref(map);
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", label);
    return NULL;
  }
  ck->map = map;
  ck->data = data;
  ck->size = size;
  ck->prefix = prefix ? prefix : "";
  ck->plen = strlen(ck->prefix);
  ck->pk = pk_new(flags & MMP_CKPT_STRICT);
  int rc;
  mmp_error_clear();
  if (!ck->pk)
    rc = MMP_ENOMEM;
  else if (size >= 4 && memcmp(data, "PK\3\4", 4) == 0)
    rc = open_zip(ck);
  else if (size >= 2 && data[0] == 0x80)
    rc = open_legacy(ck);
  else
    rc = ck_fail(ck, MMP_EDATA, "not a PyTorch checkpoint (neither a zip archive nor a pickle)");
  ck->prefix = NULL; /* the caller's string: not kept */
  if (rc < 0) {
    mmp_checkpoint_close(ck);
    return NULL;
  }
  return ck;
}

mmp_checkpoint_t *mmp_checkpoint_open_memory(const void *data, size_t size, const char *label, const char *prefix,
                                             unsigned flags) {
  if (!label) label = "(memory)";
  if (!data && size) {
    mmp_error_set(MMP_EINVAL, "%s: NULL data", label);
    return NULL;
  }
  mapping_t *m = calloc(1, sizeof *m);
  if (!m) {
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", label);
    return NULL;
  }
  m->addr = (void *)data;
  m->refs = 1;
  return open_common(m, data, size, label, prefix, flags);
}

mmp_checkpoint_t *mmp_checkpoint_open(const char *path, const char *prefix, unsigned flags) {
  if (!path) {
    mmp_error_set(MMP_EINVAL, "mmp_checkpoint_open: NULL path");
    return NULL;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    mmp_error_set(errno == ENOENT ? MMP_ENOENT : MMP_EIO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
    mmp_error_set(MMP_EIO, "%s: %s", path, sb.st_size == 0 ? "empty file" : "not a regular file");
    close(fd);
    return NULL;
  }
  void *addr = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (addr == MAP_FAILED) {
    mmp_error_set(MMP_EIO, "%s: mmap failed: %s", path, strerror(errno));
    return NULL;
  }
  mapping_t *m = calloc(1, sizeof *m);
  if (!m) {
    munmap(addr, (size_t)sb.st_size);
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
    return NULL;
  }
  m->addr = addr;
  m->len = (size_t)sb.st_size;
  m->refs = 1;
  return open_common(m, addr, (size_t)sb.st_size, path, prefix, flags);
}

bool mmp_checkpoint_sniff(const char *path) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return false;
  uint8_t b[16] = {0};
  size_t k = fread(b, 1, sizeof b, f);
  fclose(f);
  if (k >= 4 && memcmp(b, "PK\3\4", 4) == 0) return true;
  /* legacy: a pickle of protocol 2-5 whose first value is the 10-byte
   * magic number (LONG1), after a FRAME for protocol 4+; a safetensors
   * header length can begin 0x80 0x02 too, but never continues so */
  if (k < 4 || b[0] != 0x80 || b[1] < 2 || b[1] > 5) return false;
  return (b[2] == 0x8a && b[3] == 0x0a) || (k >= 13 && b[2] == 0x95 && b[11] == 0x8a && b[12] == 0x0a);
}

const char *mmp_checkpoint_format(const mmp_checkpoint_t *ck) { return ck ? ck->format : NULL; }
size_t mmp_checkpoint_count(const mmp_checkpoint_t *ck) { return ck ? ck->n : 0; }
const char *mmp_checkpoint_name(const mmp_checkpoint_t *ck, size_t i) {
  return ck && i < ck->n ? ck->entries[i].name : NULL;
}
size_t mmp_checkpoint_value_count(const mmp_checkpoint_t *ck) { return ck ? ck->nv : 0; }
const char *mmp_checkpoint_value_name(const mmp_checkpoint_t *ck, size_t i) {
  return ck && i < ck->nv ? ck->values[i].name : NULL;
}
const char *mmp_checkpoint_value_text(const mmp_checkpoint_t *ck, size_t i) {
  return ck && i < ck->nv ? ck->values[i].text : NULL;
}

static const entry_t *find(const mmp_checkpoint_t *ck, const char *name) {
  for (size_t i = 0; ck && name && i < ck->n; i++)
    if (strcmp(ck->entries[i].name, name) == 0) return &ck->entries[i];
  return NULL;
}

static mmp_dtype_t mmp_dtype_of(pk_dtype_t d) {
  switch (d) {
  case PK_F32: return MMP_F32;
  case PK_F64: return MMP_F64;
  case PK_F16: return MMP_F16;
  case PK_BF16: return MMP_BF16;
  case PK_I64: return MMP_I64;
  case PK_I32:
  case PK_I16:
  case PK_I8: return MMP_I32;
  case PK_U8: return MMP_U8;
  default: return MMP_BOOL;
  }
}

int mmp_checkpoint_info(const mmp_checkpoint_t *ck, const char *name, mmp_dtype_t *dtype, int *ndim, int64_t *shape,
                        const char **stored, size_t *nbytes) {
  const entry_t *e = find(ck, name);
  if (!e)
    return mmp_error_set(MMP_ENOENT, "%s: no tensor \"%s\"", ck ? ck->label : "(null)", name ? name : "(null)");
  const pk_tensor_t *t = &e->t->u.tensor;
  pk_dtype_t d = t->storage->u.storage.dtype;
  if (dtype) *dtype = mmp_dtype_of(d);
  if (ndim) *ndim = t->ndim;
  if (shape)
    for (int i = 0; i < MMP_MAX_DIMS; i++) shape[i] = i < t->ndim ? t->size[i] : 0;
  if (stored) *stored = pk_dtype_name(d);
  if (nbytes) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->size[i]; /* checked at open */
    *nbytes = (size_t)n * pk_dtype_size(d);
  }
  return 0;
}

/* i16/i8 storages widened to i32 element by element. */
static mmp_tensor_t *widen(const pk_tensor_t *t, const uint8_t *base, pk_dtype_t d) {
  int64_t shape[MMP_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) shape[i] = t->size[i];
  mmp_tensor_t *r = mmp_tensor_new(mmp__backend_cpu(), MMP_I32, t->ndim, shape);
  if (!r) return NULL;
  int32_t *out = mmp_tensor_data(r);
  int64_t n = mmp_tensor_numel(r), idx[MMP_MAX_DIMS] = {0};
  for (int64_t k = 0; k < n; k++) {
    int64_t off = t->offset;
    for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
    if (d == PK_I16) {
      int16_t v;
      memcpy(&v, base + off * 2, 2);
      out[k] = v;
    } else {
      out[k] = (int8_t)base[off];
    }
    for (int i = t->ndim - 1; i >= 0; i--) {
      if (++idx[i] < t->size[i]) break;
      idx[i] = 0;
    }
  }
  return r;
}

mmp_tensor_t *mmp_checkpoint_get(mmp_checkpoint_t *ck, const char *name, mmp_backend_t *be, mmp_dtype_t want) {
  const entry_t *e = find(ck, name);
  if (!e) {
    mmp_error_set(MMP_ENOENT, "%s: no tensor \"%s\"", ck ? ck->label : "(null)", name ? name : "(null)");
    return NULL;
  }
  if (!be) be = mmp__backend_cpu();
  const pk_tensor_t *t = &e->t->u.tensor;
  const pk_storage_t *s = &t->storage->u.storage;
  const record_t *rec = s->user;
  pk_dtype_t d = s->dtype;
  mmp_dtype_t dt = mmp_dtype_of(d);
  if (want == MMP_DTYPE_COUNT) want = dt;
  if ((unsigned)want > MMP_DTYPE_COUNT) {
    mmp_error_set(MMP_EDTYPE, "%s: tensor \"%s\": invalid dtype %d requested", ck->label, name, (int)want);
    return NULL;
  }
  size_t es = pk_dtype_size(d);
  const uint8_t *base = rec->ptr ? rec->ptr + (s->view ? (size_t)s->view_offset * es : 0) : NULL;
  int64_t numel, last;
  tensor_extent(t, &numel, &last); /* checked at open */
  int64_t shape[MMP_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) shape[i] = t->size[i];
  mmp_tensor_t *raw;
  if (numel == 0) {
    raw = mmp_tensor_zeros(mmp__backend_cpu(), dt, t->ndim, shape);
  } else if (d == PK_I16 || d == PK_I8) {
    raw = widen(t, base, d);
  } else {
    int64_t ext = last + 1;
    mmp_tensor_t *flat;
    if (rec->mapped && ((uintptr_t)base % es) == 0) { /* zero-copy view of the mapping */
      __atomic_add_fetch(&ck->map->refs, 1, __ATOMIC_RELAXED);
      flat = mmp_tensor_wrap(dt, 1, &ext, (void *)base, map_unref, ck->map);
      if (!flat)
        map_unref(ck->map);
      else
        flat->flags |= MMP_TF_READONLY;
    } else {
      flat = mmp_tensor_from_data(mmp__backend_cpu(), dt, 1, &ext, base);
    }
    raw = flat ? mmp__tensor_view(flat, t->ndim, shape, t->stride, t->offset) : NULL;
    mmp_tensor_unref(flat);
  }
  mmp_tensor_t *conv = raw ? mmp_convert(raw, want) : NULL;
  mmp_tensor_unref(raw);
  if (!conv) {
    mmp_error_prefix("%s: tensor \"%s\": ", ck->label, name);
    return NULL;
  }
  if (be == mmp__backend_cpu()) return conv;
  mmp_tensor_t *moved = mmp_to_backend(conv, be);
  mmp_tensor_unref(conv);
  if (!moved) mmp_error_prefix("%s: tensor \"%s\": ", ck->label, name);
  return moved;
}

int mmp_checkpoint_load_map(const char *path, const char *prefix, mmp_backend_t *be, bool f64_to_f32,
                            mmp_tensormap_t *out) {
  if (!out) return mmp_error_set(MMP_EINVAL, "checkpoint_load_map: NULL map");
  mmp_checkpoint_t *ck = mmp_checkpoint_open(path, prefix, 0);
  if (!ck) return mmp_error_code();
  int rc = 0;
  for (size_t i = 0; i < ck->n && rc == 0; i++) {
    mmp_dtype_t dt;
    mmp_checkpoint_info(ck, ck->entries[i].name, &dt, NULL, NULL, NULL, NULL);
    mmp_dtype_t want = (f64_to_f32 && dt == MMP_F64) ? MMP_F32 : MMP_DTYPE_COUNT;
    mmp_tensor_t *t = mmp_checkpoint_get(ck, ck->entries[i].name, be, want);
    rc = t ? mmp_tensormap_set(out, ck->entries[i].name, t) : mmp_error_code();
  }
  mmp_checkpoint_close(ck);
  return rc;
}
