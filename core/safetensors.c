/* core/safetensors.c - memory-mapped .safetensors reader with full header validation, atomic writer. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tensor_impl.h"

#pragma GCC visibility push(default)
#include <mmpipe/file.h>
#include <mmpipe/plugin.h>
#include <mmpipe/safetensors.h>
#pragma GCC visibility pop

#define MAX_HEADER_BYTES (100u << 20) /* the format's own limit */

/* A read-only mapping shared by the file object and its zero-copy tensors. */
typedef struct mapping {
  void *addr;
  size_t len;
  int refs;
} mapping_t;

typedef struct entry {
  char *name;
  mmp_dtype_t dtype;
  int ndim;
  int64_t shape[MMP_MAX_DIMS];
  uint64_t begin, end; /* relative to the data section */
} entry_t;

struct mmp_safetensors {
  char *path;
  mapping_t *map;
  const unsigned char *data; /* start of the data section */
  size_t data_len;
  entry_t *entries;
  size_t n;
  char **meta_keys, **meta_vals;
  size_t nmeta;
};

static void map_unref(void *p) {
  mapping_t *m = p;
  if (!m || __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (m->addr && m->len) munmap(m->addr, m->len);
  free(m);
}

static const struct {
  const char *name;
  mmp_dtype_t dt; /* MMP_DTYPE_COUNT = valid in the format but not supported */
} st_dtypes[] = {
    {"F32", MMP_F32},   {"F16", MMP_F16},   {"BF16", MMP_BF16},       {"I64", MMP_I64},
    {"I32", MMP_I32},   {"U8", MMP_U8},     {"BOOL", MMP_BOOL},       {"F64", MMP_F64},
    {"I8", MMP_DTYPE_COUNT}, {"I16", MMP_DTYPE_COUNT}, {"U16", MMP_DTYPE_COUNT},
    {"U32", MMP_DTYPE_COUNT}, {"U64", MMP_DTYPE_COUNT}, {"F8_E4M3", MMP_DTYPE_COUNT},
    {"F8_E5M2", MMP_DTYPE_COUNT},
};

static const char *st_dtype_name(mmp_dtype_t dt) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
  return NULL;
}

void mmp_safetensors_close(mmp_safetensors_t *st) {
  if (!st) return;
  for (size_t i = 0; i < st->n; i++) free(st->entries[i].name);
  for (size_t i = 0; i < st->nmeta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_vals[i]);
  }
  free(st->entries);
  free(st->meta_keys);
  free(st->meta_vals);
  map_unref(st->map);
  free(st->path);
  free(st);
}

static int fail(mmp_safetensors_t *st, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(mmp_safetensors_t *st, int code, const char *path, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mmp_safetensors_close(st);
  return mmp_error_set(code, "%s: %s", path, msg);
}

static int cmp_range(const void *a, const void *b) {
  const entry_t *x = *(const entry_t *const *)a, *y = *(const entry_t *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Parse and validate one tensor entry of the header. */
static int parse_entry(const char *path, const char *name, json_t *v, size_t data_len, entry_t *e) {
  if (!json_is_object(v)) return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": entry is not an object", path, name);
  json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"), *jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd)) return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": missing or non-string \"dtype\"", path, name);
  if (!json_is_array(js)) return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": missing or non-array \"shape\"", path, name);
  if (!json_is_array(jo) || json_array_size(jo) != 2)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": \"data_offsets\" must be [begin, end]", path, name);
  const char *ds = json_string_value(jd);
  int found = -1;
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (strcmp(ds, st_dtypes[i].name) == 0) found = (int)i;
  if (found < 0) return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": unknown dtype \"%s\"", path, name, ds);
  if (st_dtypes[found].dt == MMP_DTYPE_COUNT)
    return mmp_error_set(MMP_EDTYPE, "%s: tensor \"%s\": dtype %s is not supported (F32, F16, BF16, F64, I64, I32, U8, BOOL are)",
                         path, name, ds);
  e->dtype = st_dtypes[found].dt;
  size_t nd = json_array_size(js);
  if (nd > MMP_MAX_DIMS)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": %zu dims (at most %d supported)", path, name, nd, MMP_MAX_DIMS);
  e->ndim = (int)nd;
  for (size_t i = 0; i < nd; i++) {
    json_t *d = json_array_get(js, i);
    if (!json_is_integer(d) || json_integer_value(d) < 0)
      return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": shape[%zu] is not a non-negative integer", path, name, i);
    e->shape[i] = (int64_t)json_integer_value(d);
  }
  /* the product without the zero sizes too: it gives the strides, and an
   * empty [0, 2^40, 2^40] would overflow them */
  char sh[160];
  if (mmp__shape_extent(e->ndim, e->shape) < 0)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": shape %s is too large", path, name,
                         mmp__shape_str(e->ndim, e->shape, sh, sizeof sh));
  /* extent <= INT64_MAX / 16 bounds numel * element size */
  uint64_t nbytes = (uint64_t)mmp__numel(e->ndim, e->shape) * (uint64_t)mmp_dtype_size(e->dtype);
  json_t *b = json_array_get(jo, 0), *en = json_array_get(jo, 1);
  if (!json_is_integer(b) || !json_is_integer(en) || json_integer_value(b) < 0 || json_integer_value(en) < 0)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": data_offsets are not non-negative integers", path, name);
  e->begin = (uint64_t)json_integer_value(b);
  e->end = (uint64_t)json_integer_value(en);
  if (e->end < e->begin)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": data_offsets [%llu, %llu] end before they begin", path, name,
                         (unsigned long long)e->begin, (unsigned long long)e->end);
  if (e->end > data_len)
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the end of the data (%zu bytes)",
                         path, name, (unsigned long long)e->begin, (unsigned long long)e->end, data_len);
  if (e->end - e->begin != nbytes) {
    return mmp_error_set(MMP_EDATA, "%s: tensor \"%s\": %s %s needs %llu bytes but data_offsets give %llu", path, name,
                         ds, mmp__shape_str(e->ndim, e->shape, sh, sizeof sh), (unsigned long long)nbytes,
                         (unsigned long long)(e->end - e->begin));
  }
  return 0;
}

mmp_safetensors_t *mmp_safetensors_open(const char *path) {
  if (!path) {
    mmp_error_set(MMP_EINVAL, "safetensors_open: NULL path");
    return NULL;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    mmp_error_set(MMP_EIO, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
    mmp_error_set(MMP_EIO, "%s: not a regular file", path);
    close(fd);
    return NULL;
  }
  mmp_safetensors_t *st = calloc(1, sizeof *st);
  mapping_t *map = calloc(1, sizeof *map);
  if (!st || !map || !(st->path = strdup(path))) {
    free(map);
    free(st);
    close(fd);
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
    return NULL;
  }
  map->refs = 1;
  st->map = map;
  size_t fsize = (size_t)sb.st_size;
  if (fsize < 8) {
    close(fd);
    fail(st, MMP_EDATA, path, "file of %zu bytes is too short for a safetensors header", fsize);
    return NULL;
  }
  void *addr = mmap(NULL, fsize, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (addr == MAP_FAILED) {
    fail(st, MMP_EIO, path, "mmap failed: %s", strerror(errno));
    return NULL;
  }
  map->addr = addr;
  map->len = fsize;
  const unsigned char *p = addr;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
  if (hlen == 0 || hlen > fsize - 8) {
    fail(st, MMP_EDATA, path, "header length %llu does not fit in the file of %zu bytes (truncated or not safetensors)",
         (unsigned long long)hlen, fsize);
    return NULL;
  }
  if (hlen > MAX_HEADER_BYTES) {
    fail(st, MMP_EDATA, path, "header of %llu bytes exceeds the %u byte limit", (unsigned long long)hlen,
         MAX_HEADER_BYTES);
    return NULL;
  }
  st->data = p + 8 + hlen;
  st->data_len = fsize - 8 - (size_t)hlen;
  json_error_t jerr;
  json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    if (strstr(jerr.text, "duplicate"))
      fail(st, MMP_EDATA, path, "header: duplicate name (%s, column %d)", jerr.text, jerr.column);
    else
      fail(st, MMP_EDATA, path, "header is not valid JSON: %s (column %d)", jerr.text, jerr.column);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    fail(st, MMP_EDATA, path, "header is not a JSON object");
    return NULL;
  }
  size_t cap = json_object_size(root);
  st->entries = calloc(cap ? cap : 1, sizeof *st->entries);
  if (!st->entries) {
    json_decref(root);
    fail(st, MMP_ENOMEM, path, "out of memory");
    return NULL;
  }
  const char *key;
  json_t *val;
  int rc = 0;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(val)) {
        rc = mmp_error_set(MMP_EDATA, "%s: __metadata__ is not an object", path);
        break;
      }
      size_t nm = json_object_size(val);
      st->meta_keys = calloc(nm ? nm : 1, sizeof(char *));
      st->meta_vals = calloc(nm ? nm : 1, sizeof(char *));
      if (!st->meta_keys || !st->meta_vals) {
        rc = mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
        break;
      }
      const char *mk;
      json_t *mv;
      json_object_foreach(val, mk, mv) {
        if (!json_is_string(mv)) {
          rc = mmp_error_set(MMP_EDATA, "%s: __metadata__ value of \"%s\" is not a string", path, mk);
          break;
        }
        st->meta_keys[st->nmeta] = strdup(mk);
        st->meta_vals[st->nmeta] = strdup(json_string_value(mv));
        st->nmeta++;
        if (!st->meta_keys[st->nmeta - 1] || !st->meta_vals[st->nmeta - 1]) {
          rc = mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
          break;
        }
      }
      if (rc < 0) break;
      continue;
    }
    entry_t *e = &st->entries[st->n];
    rc = parse_entry(path, key, val, st->data_len, e);
    if (rc < 0) break;
    e->name = strdup(key);
    if (!e->name) {
      rc = mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
      break;
    }
    st->n++;
  }
  json_decref(root);
  if (rc < 0) {
    mmp_safetensors_close(st);
    return NULL;
  }
  /* no two byte ranges may overlap */
  if (st->n > 1) {
    entry_t **order = malloc(st->n * sizeof *order);
    if (!order) {
      fail(st, MMP_ENOMEM, path, "out of memory");
      return NULL;
    }
    for (size_t i = 0; i < st->n; i++) order[i] = &st->entries[i];
    qsort(order, st->n, sizeof *order, cmp_range);
    const entry_t *prev = NULL;
    for (size_t i = 0; i < st->n; i++) {
      const entry_t *e = order[i];
      if (e->begin == e->end) continue; /* empty tensors occupy nothing */
      if (prev && e->begin < prev->end) {
        char a[256], b[256];
        snprintf(a, sizeof a, "%s", prev->name);
        snprintf(b, sizeof b, "%s", e->name);
        free(order);
        fail(st, MMP_EDATA, path, "tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] overlap", a,
             (unsigned long long)prev->begin, (unsigned long long)prev->end, b, (unsigned long long)e->begin,
             (unsigned long long)e->end);
        return NULL;
      }
      prev = e;
    }
    free(order);
  }
  return st;
}

size_t mmp_safetensors_count(const mmp_safetensors_t *st) { return st ? st->n : 0; }

const char *mmp_safetensors_name(const mmp_safetensors_t *st, size_t i) {
  return st && i < st->n ? st->entries[i].name : NULL;
}

static const entry_t *find(const mmp_safetensors_t *st, const char *name) {
  for (size_t i = 0; st && name && i < st->n; i++)
    if (strcmp(st->entries[i].name, name) == 0) return &st->entries[i];
  return NULL;
}

int mmp_safetensors_info(const mmp_safetensors_t *st, const char *name, mmp_dtype_t *dtype, int *ndim,
                         int64_t *shape) {
  const entry_t *e = find(st, name);
  if (!e)
    return mmp_error_set(MMP_ENOENT, "%s: no tensor \"%s\"", st ? st->path : "(null)", name ? name : "(null)");
  if (dtype) *dtype = e->dtype;
  if (ndim) *ndim = e->ndim;
  if (shape)
    for (int i = 0; i < MMP_MAX_DIMS; i++) shape[i] = i < e->ndim ? e->shape[i] : 0;
  return 0;
}

mmp_tensor_t *mmp_safetensors_get(mmp_safetensors_t *st, const char *name, mmp_backend_t *be, mmp_dtype_t want) {
  const entry_t *e = find(st, name);
  if (!e) {
    mmp_error_set(MMP_ENOENT, "%s: no tensor \"%s\"", st ? st->path : "(null)", name ? name : "(null)");
    return NULL;
  }
  if (!be) be = mmp__backend_cpu();
  if (want == MMP_DTYPE_COUNT) want = e->dtype;
  if ((unsigned)want > MMP_DTYPE_COUNT) {
    mmp_error_set(MMP_EDTYPE, "%s: tensor \"%s\": invalid dtype %d requested", st->path, name, (int)want);
    return NULL;
  }
  const unsigned char *src = st->data + e->begin;
  size_t es = mmp_dtype_size(e->dtype);
  bool aligned = ((uintptr_t)src % es) == 0;
  mmp_tensor_t *raw;
  if (aligned) { /* zero-copy view of the mapping */
    __atomic_add_fetch(&st->map->refs, 1, __ATOMIC_RELAXED);
    raw = mmp_tensor_wrap(e->dtype, e->ndim, e->shape, (void *)src, map_unref, st->map);
    if (!raw) {
      map_unref(st->map);
      return NULL;
    }
    raw->flags |= MMP_TF_READONLY;
  } else {
    raw = mmp_tensor_from_data(mmp__backend_cpu(), e->dtype, e->ndim, e->shape, src);
    if (!raw) return NULL;
  }
  mmp_tensor_t *conv = mmp_convert(raw, want);
  mmp_tensor_unref(raw);
  if (!conv) {
    mmp_error_prefix("%s: tensor \"%s\": ", st->path, name);
    return NULL;
  }
  if (be == mmp__backend_cpu()) return conv;
  mmp_tensor_t *moved = mmp_to_backend(conv, be);
  mmp_tensor_unref(conv);
  if (!moved) mmp_error_prefix("%s: tensor \"%s\": ", st->path, name);
  return moved;
}

const char *mmp_safetensors_metadata(const mmp_safetensors_t *st, const char *key) {
  for (size_t i = 0; st && key && i < st->nmeta; i++)
    if (strcmp(st->meta_keys[i], key) == 0) return st->meta_vals[i];
  return NULL;
}

size_t mmp_safetensors_metadata_count(const mmp_safetensors_t *st) { return st ? st->nmeta : 0; }

const char *mmp_safetensors_metadata_key(const mmp_safetensors_t *st, size_t i) {
  return st && i < st->nmeta ? st->meta_keys[i] : NULL;
}

int mmp_safetensors_load_map(const char *path, mmp_backend_t *be, bool f64_to_f32, mmp_tensormap_t *out) {
  if (!out) return mmp_error_set(MMP_EINVAL, "safetensors_load_map: NULL map");
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) return mmp_error_code();
  int rc = 0;
  for (size_t i = 0; i < st->n && rc == 0; i++) {
    const entry_t *e = &st->entries[i];
    mmp_dtype_t want = (f64_to_f32 && e->dtype == MMP_F64) ? MMP_F32 : MMP_DTYPE_COUNT;
    mmp_tensor_t *t = mmp_safetensors_get(st, e->name, be, want);
    rc = t ? mmp_tensormap_set(out, e->name, t) : mmp_error_code();
  }
  mmp_safetensors_close(st);
  return rc;
}

/* ------------------------------------------------------------------ writer */

typedef struct wentry {
  const char *name;
  const mmp_tensor_t *t;
  size_t index;
} wentry_t;

static int cmp_write(const void *a, const void *b) {
  const wentry_t *x = a, *y = b;
  size_t sx = mmp_dtype_size(x->t->dtype), sy = mmp_dtype_size(y->t->dtype);
  if (sx != sy) return sx > sy ? -1 : 1; /* larger elements first keeps every tensor aligned */
  return x->index < y->index ? -1 : x->index > y->index;
}

int mmp_safetensors_save_map(const char *path, const mmp_tensormap_t *m, const char *const *metadata) {
  if (!path || !m) return mmp_error_set(MMP_EINVAL, "safetensors_save_map: NULL argument");
  size_t n = mmp_tensormap_size(m);
  wentry_t *ws = calloc(n ? n : 1, sizeof *ws);
  if (!ws) return mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
  for (size_t i = 0; i < n; i++) {
    ws[i].name = mmp_tensormap_name(m, i);
    ws[i].t = mmp_tensormap_at(m, i);
    ws[i].index = i;
    if (!st_dtype_name(ws[i].t->dtype)) {
      int rc = mmp_error_set(MMP_EDTYPE, "%s: tensor \"%s\" has a dtype safetensors cannot store", path, ws[i].name);
      free(ws);
      return rc;
    }
  }
  qsort(ws, n, sizeof *ws, cmp_write);
  json_t *root = json_object();
  int rc = 0;
  if (metadata && metadata[0]) {
    json_t *md = json_object();
    for (size_t i = 0; metadata[i] && metadata[i + 1]; i += 2)
      json_object_set_new(md, metadata[i], json_string(metadata[i + 1]));
    json_object_set_new(root, "__metadata__", md);
  }
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    const mmp_tensor_t *t = ws[i].t;
    json_t *e = json_object(), *sh = json_array();
    for (int d = 0; d < t->ndim; d++) json_array_append_new(sh, json_integer(t->shape[d]));
    json_object_set_new(e, "dtype", json_string(st_dtype_name(t->dtype)));
    json_object_set_new(e, "shape", sh);
    uint64_t nb = mmp_tensor_nbytes(t);
    json_t *of = json_array();
    json_array_append_new(of, json_integer((json_int_t)off));
    json_array_append_new(of, json_integer((json_int_t)(off + nb)));
    json_object_set_new(e, "data_offsets", of);
    if (json_object_set_new(root, ws[i].name, e) < 0) rc = mmp_error_set(MMP_EINVAL, "%s: bad tensor name", path);
    off += nb;
  }
  char *hdr = rc == 0 ? json_dumps(root, JSON_COMPACT) : NULL;
  json_decref(root);
  if (!hdr) {
    free(ws);
    return rc ? rc : mmp_error_set(MMP_ENOMEM, "%s: cannot encode the header", path);
  }
  size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) {
    free(hdr);
    free(ws);
    return mmp_error_code();
  }
  FILE *f = mmp_afile_stream(af);
  unsigned char lenb[8];
  for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  static const char spaces[8] = "        ";
  if (fwrite(lenb, 1, 8, f) != 8 || fwrite(hdr, 1, hl, f) != hl || fwrite(spaces, 1, padded - hl, f) != padded - hl)
    rc = mmp_error_set(MMP_EIO, "%s: write failed: %s", path, strerror(errno));
  void *buf = NULL;
  size_t bufcap = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    size_t nb = mmp_tensor_nbytes(ws[i].t);
    if (!nb) continue;
    if (nb > bufcap) {
      void *nbuf = realloc(buf, nb);
      if (!nbuf) {
        rc = mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
        break;
      }
      buf = nbuf;
      bufcap = nb;
    }
    rc = mmp_tensor_to_host(ws[i].t, buf, nb);
    if (rc == 0 && fwrite(buf, 1, nb, f) != nb) rc = mmp_error_set(MMP_EIO, "%s: write failed: %s", path, strerror(errno));
  }
  free(buf);
  if (rc == 0) rc = mmp_afile_commit(af);
  else mmp_afile_abort(af);
  free(hdr);
  free(ws);
  return rc;
}
