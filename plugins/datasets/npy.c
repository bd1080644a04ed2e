/* plugins/datasets/npy.c - NumPy .npy headers and data bounds, checked before use. */
#include "plugins/datasets/npy.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mmpipe/error.h>

typedef struct cur {
  const char *p, *end;
} cur_t;

static void skip_ws(cur_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool take(cur_t *c, char ch) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

/* A quoted Python string into @out (at most @cap - 1 bytes, no escapes). */
static bool str_lit(cur_t *c, char *out, size_t cap) {
  skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return false;
  char q = *c->p++;
  size_t k = 0;
  while (c->p < c->end && *c->p != q) {
    if (*c->p == '\\' || k + 1 >= cap) return false;
    out[k++] = *c->p++;
  }
  if (c->p >= c->end) return false;
  c->p++;
  out[k] = 0;
  return true;
}

static bool int_lit(cur_t *c, int64_t *v) {
  skip_ws(c);
  int64_t x = 0;
  const char *s = c->p;
  while (c->p < c->end && isdigit((unsigned char)*c->p)) {
    if (x > (INT64_MAX - 9) / 10) return false;
    x = x * 10 + (*c->p++ - '0');
  }
  if (c->p < c->end && *c->p == 'L') c->p++; /* Python 2 longs */
  *v = x;
  return c->p > s;
}

static int bad(const char *label, const char *what) {
  return mmp_error_set(MMP_EDATA, "%s: not a readable .npy file: %s", label, what);
}

int npy_parse(const uint8_t *buf, size_t n, const char *label, npy_t *out) {
  memset(out, 0, sizeof *out);
  if (n < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) return bad(label, "no \\x93NUMPY magic");
  int major = buf[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) return bad(label, "truncated header");
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    hstart = 12;
  } else {
    return bad(label, "unknown format version");
  }
  if (hlen > n - hstart) return bad(label, "header longer than the file");
  cur_t c = {(const char *)buf + hstart, (const char *)buf + hstart + hlen};
  bool have_descr = false, have_fortran = false, have_shape = false;
  if (!take(&c, '{')) return bad(label, "header is not a dict");
  while (!take(&c, '}')) {
    char key[32];
    if (!str_lit(&c, key, sizeof key) || !take(&c, ':')) return bad(label, "malformed header dict");
    if (strcmp(key, "descr") == 0) {
      if (!str_lit(&c, out->descr, sizeof out->descr)) return bad(label, "'descr' is not a simple type string");
      have_descr = true;
    } else if (strcmp(key, "fortran_order") == 0) {
      skip_ws(&c);
      if ((size_t)(c.end - c.p) >= 4 && memcmp(c.p, "True", 4) == 0) {
        out->fortran_order = true;
        c.p += 4;
      } else if ((size_t)(c.end - c.p) >= 5 && memcmp(c.p, "False", 5) == 0) {
        c.p += 5;
      } else {
        return bad(label, "'fortran_order' is not True or False");
      }
      have_fortran = true;
    } else if (strcmp(key, "shape") == 0) {
      if (!take(&c, '(')) return bad(label, "'shape' is not a tuple");
      out->ndim = 0;
      while (!take(&c, ')')) {
        int64_t v;
        if (out->ndim >= NPY_MAX_DIMS) return bad(label, "more than 8 dimensions");
        if (!int_lit(&c, &v)) return bad(label, "'shape' holds a non-integer");
        out->shape[out->ndim++] = v;
        if (!take(&c, ',')) {
          if (!take(&c, ')')) return bad(label, "malformed 'shape'");
          break;
        }
      }
      have_shape = true;
    } else {
      return bad(label, "unknown header key");
    }
    if (!take(&c, ',')) {
      if (!take(&c, '}')) return bad(label, "malformed header dict");
      break;
    }
  }
  if (!have_descr || !have_fortran || !have_shape) return bad(label, "header lacks descr, fortran_order or shape");
  const char *d = out->descr;
  if (d[0] != '<' && d[0] != '>' && d[0] != '|' && d[0] != '=') return bad(label, "'descr' has no byte-order mark");
  out->kind = d[1];
  if (!strchr("uifbSUO", out->kind) || out->kind == 0) return bad(label, "unsupported 'descr'");
  if (out->kind == 'O') {
    if (d[2]) return bad(label, "unsupported 'descr'");
    out->itemsize = 0;
  } else {
    int64_t sz;
    cur_t dc = {d + 2, d + strlen(d)};
    if (!int_lit(&dc, &sz) || dc.p != dc.end || sz <= 0 || sz > 4096) return bad(label, "unsupported 'descr'");
    if (out->kind == 'U') sz *= 4;
    out->itemsize = (size_t)sz;
    bool multi = out->kind != 'S' && out->itemsize > 1;
    if (multi && d[0] == '>') return bad(label, "big-endian data is not supported");
  }
  int64_t count = 1;
  for (int i = 0; i < out->ndim; i++) {
    if (out->shape[i] < 0) return bad(label, "negative dimension");
    if (out->shape[i] && count > INT64_MAX / out->shape[i]) return bad(label, "shape overflows");
    count *= out->shape[i];
  }
  out->count = count;
  size_t start = hstart + hlen;
  out->data = buf + start;
  if (out->kind == 'O') {
    out->data_len = n - start;
    return 0;
  }
  if ((uint64_t)count > (uint64_t)(n - start) / out->itemsize)
    return mmp_error_set(MMP_EDATA, "%s: truncated .npy: shape needs %llu bytes of data, %zu present",
                         label, (unsigned long long)count * out->itemsize, n - start);
  out->data_len = (size_t)count * out->itemsize;
  return 0;
}

int npy_read_file(const char *path, size_t max, uint8_t **buf, size_t *n) {
  *buf = NULL;
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return mmp_error_set(MMP_EIO, "%s: not a regular file", path);
  }
  if ((uint64_t)st.st_size > max) {
    fclose(f);
    return mmp_error_set(MMP_EDATA, "%s: %lld bytes, more than the %zu accepted", path,
                         (long long)st.st_size, max);
  }
  size_t len = (size_t)st.st_size;
  uint8_t *b = malloc(len ? len : 1);
  if (!b) {
    fclose(f);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  if (fread(b, 1, len, f) != len) {
    free(b);
    fclose(f);
    return mmp_error_set(MMP_EIO, "cannot read %s", path);
  }
  fclose(f);
  *buf = b;
  *n = len;
  return 0;
}

/* ---- ndarrays inside pickles ---- */

static bool global_is(const mmp_pickle_value_t *v, const char *name) {
  const char *g = mmp_pickle_global(v);
  if (!g) return false;
  if (strncmp(g, "numpy.core.multiarray.", 22) == 0) return strcmp(g + 22, name) == 0;
  if (strncmp(g, "numpy._core.multiarray.", 23) == 0) return strcmp(g + 23, name) == 0;
  return false;
}

/* An OPAQUE call value's parts: [callee, args, state...]. */
static const mmp_pickle_value_t *part(const mmp_pickle_value_t *v, size_t i) { return mmp_pickle_item(v, i); }

bool npy_is_pickled_array(const mmp_pickle_value_t *v) {
  return mmp_pickle_kind(v) == MMP_PICKLE_OPAQUE && global_is(v, "_reconstruct");
}

/* numpy.dtype(name, False, True) with its state into descr/kind/itemsize. */
static int pickled_dtype(const mmp_pickle_value_t *dt, const char *label, npy_t *out) {
  const char *g = mmp_pickle_global(dt);
  const mmp_pickle_value_t *args = part(dt, 1), *state = part(dt, 2);
  const char *name = mmp_pickle_str(mmp_pickle_item(args, 0), NULL);
  if (!g || strcmp(g, "numpy.dtype") != 0 || mmp_pickle_kind(args) != MMP_PICKLE_TUPLE || !name ||
      mmp_pickle_len(dt) != 3 || mmp_pickle_kind(state) != MMP_PICKLE_TUPLE || mmp_pickle_len(state) < 8)
    return mmp_error_set(MMP_EDATA, "%s: a pickled array's dtype is not numpy.dtype(name, ...) with its state",
                         label);
  const char *order = mmp_pickle_str(mmp_pickle_item(state, 1), NULL);
  int64_t elsize = -1;
  if (!order || strlen(order) != 1 || !strchr("<>|=", order[0]) ||
      mmp_pickle_int(mmp_pickle_item(state, 5), &elsize) < 0 || mmp_pickle_len(state) > 9 ||
      mmp_pickle_kind(mmp_pickle_item(state, 3)) != MMP_PICKLE_NONE)
    return mmp_error_set(MMP_EDATA, "%s: dtype '%.16s': an unsupported state (structured or without a byte order)",
                         label, name);
  char kind = name[0];
  if (!kind || !strchr("uifbSUO", kind) || strlen(name) > 6)
    return mmp_error_set(MMP_EDATA, "%s: pickled array of dtype '%.16s' (numbers, bytes, str or objects only)",
                         label, name);
  int64_t size = 0;
  for (const char *c = name + 1; *c; c++) {
    if (!isdigit((unsigned char)*c)) return mmp_error_set(MMP_EDATA, "%s: dtype name '%s' not understood", label, name);
    size = size * 10 + (*c - '0');
  }
  if (elsize > 0) size = elsize; /* flexible types ('S', 'U') carry their size in the state */
  if (kind == 'O') size = 0;
  else if (size <= 0 || size > 4096 || (kind != 'S' && kind != 'U' && size > 8))
    return mmp_error_set(MMP_EDATA, "%s: dtype '%s' of %lld bytes per item", label, name, (long long)size);
  if (order[0] == '>' && size > 1 && kind != 'S')
    return mmp_error_set(MMP_EDATA, "%s: big-endian pickled array ('%s'): not supported", label, name);
  out->kind = kind;
  out->itemsize = (size_t)size;
  snprintf(out->descr, sizeof out->descr, "%c%c%lld", order[0] == '=' ? '<' : order[0], kind, (long long)size);
  if (kind == 'O') snprintf(out->descr, sizeof out->descr, "|O");
  return 0;
}

int npy_from_pickle(const mmp_pickle_value_t *v, const char *label, npy_t *out) {
  memset(out, 0, sizeof *out);
  if (!npy_is_pickled_array(v))
    return mmp_error_set(MMP_EDATA, "%s: not a pickled NumPy array (%s)", label,
                         mmp_pickle_global(v) ? mmp_pickle_global(v) : "a plain value");
  const mmp_pickle_value_t *args = part(v, 1), *state = part(v, 2);
  const char *cls = mmp_pickle_global(mmp_pickle_item(args, 0));
  if (mmp_pickle_len(v) != 3 || mmp_pickle_kind(args) != MMP_PICKLE_TUPLE || !cls ||
      strcmp(cls, "numpy.ndarray") != 0 || mmp_pickle_kind(state) != MMP_PICKLE_TUPLE)
    return mmp_error_set(MMP_EDATA, "%s: a pickled array is not _reconstruct(numpy.ndarray, ...) with one state",
                         label);
  /* (version, shape, dtype, is_fortran, data), or without the version (old NumPy) */
  size_t k = mmp_pickle_len(state) == 5 ? 1 : 0;
  if (mmp_pickle_len(state) != 4 + k)
    return mmp_error_set(MMP_EDATA, "%s: a pickled array's state has %zu fields, not 5", label, mmp_pickle_len(state));
  const mmp_pickle_value_t *shape = mmp_pickle_item(state, k), *data = mmp_pickle_item(state, k + 3);
  int64_t fortran = 0;
  if (mmp_pickle_kind(shape) != MMP_PICKLE_TUPLE || mmp_pickle_len(shape) > NPY_MAX_DIMS ||
      mmp_pickle_int(mmp_pickle_item(state, k + 2), &fortran) < 0)
    return mmp_error_set(MMP_EDATA, "%s: a pickled array's shape or order is malformed", label);
  int rc = pickled_dtype(mmp_pickle_item(state, k + 1), label, out);
  if (rc < 0) return rc;
  out->fortran_order = fortran != 0;
  out->ndim = (int)mmp_pickle_len(shape);
  int64_t count = 1;
  for (int i = 0; i < out->ndim; i++) {
    if (mmp_pickle_int(mmp_pickle_item(shape, (size_t)i), &out->shape[i]) < 0 || out->shape[i] < 0)
      return mmp_error_set(MMP_EDATA, "%s: a pickled array's shape holds a negative or non-integer size", label);
    if (out->shape[i] && count > INT64_MAX / out->shape[i])
      return mmp_error_set(MMP_EDATA, "%s: shape overflows", label);
    count *= out->shape[i];
  }
  out->count = count;
  if (out->kind == 'O') {
    mmp_pickle_kind_t dk = mmp_pickle_kind(data);
    if ((dk != MMP_PICKLE_LIST && dk != MMP_PICKLE_TUPLE) || (int64_t)mmp_pickle_len(data) != count)
      return mmp_error_set(MMP_EDATA, "%s: an object array of %lld items holds a data list of %zu", label,
                           (long long)count, mmp_pickle_len(data));
    if (out->fortran_order && out->ndim > 1)
      return mmp_error_set(MMP_EDATA, "%s: Fortran-ordered object array: not supported", label);
    out->items = data;
    return 0;
  }
  size_t len = 0;
  const char *bytes = mmp_pickle_str(data, &len);
  /* protocol 3: bytes; Python 2: a str of the raw bytes */
  if (!bytes || (mmp_pickle_kind(data) == MMP_PICKLE_STR && !mmp_pickle_str_py2(data)))
    return mmp_error_set(MMP_EDATA, "%s: a pickled array's data is not bytes", label);
  if ((uint64_t)count > SIZE_MAX / out->itemsize || (size_t)count * out->itemsize != len)
    return mmp_error_set(MMP_EDATA, "%s: a pickled array of %lld items of %zu bytes holds %zu bytes of data", label,
                         (long long)count, out->itemsize, len);
  out->data = (const uint8_t *)bytes;
  out->data_len = len;
  return 0;
}

int64_t npy_int_at(const npy_t *a, int64_t i) {
  const uint8_t *p = a->data + (size_t)i * a->itemsize;
  uint64_t u = 0;
  for (size_t b = 0; b < a->itemsize && b < 8; b++) u |= (uint64_t)p[b] << (8 * b);
  if (a->kind == 'i' && a->itemsize < 8 && (p[a->itemsize - 1] & 0x80)) u |= ~0ull << (8 * a->itemsize);
  return (int64_t)u;
}

int npy_pickle_int(const mmp_pickle_value_t *v, int64_t *out) {
  if (mmp_pickle_kind(v) == MMP_PICKLE_INT || mmp_pickle_kind(v) == MMP_PICKLE_BOOL) return mmp_pickle_int(v, out);
  if (mmp_pickle_kind(v) == MMP_PICKLE_OPAQUE && global_is(v, "scalar") && mmp_pickle_len(v) == 2) {
    const mmp_pickle_value_t *args = part(v, 1);
    npy_t t;
    memset(&t, 0, sizeof t);
    size_t len = 0;
    const char *b = mmp_pickle_str(mmp_pickle_item(args, 1), &len);
    mmp_error_clear();
    if (mmp_pickle_kind(args) == MMP_PICKLE_TUPLE && mmp_pickle_len(args) == 2 && b &&
        pickled_dtype(mmp_pickle_item(args, 0), "scalar", &t) == 0 && strchr("iub", t.kind) && len == t.itemsize &&
        !(t.kind == 'u' && t.itemsize == 8 && ((const uint8_t *)b)[7] & 0x80)) {
      t.data = (const uint8_t *)b;
      *out = npy_int_at(&t, 0);
      return 0;
    }
    mmp_error_clear();
  }
  return mmp_error_set(MMP_EDATA, "not an integer");
}

int npy_load_object_file(const char *path, size_t max, mmp_pickle_t **pk, npy_t *out) {
  *pk = NULL;
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = npy_read_file(path, max, &buf, &n);
  if (rc < 0) return rc;
  npy_t top;
  if ((rc = npy_parse(buf, n, path, &top)) < 0) goto out;
  if (top.kind != 'O') {
    rc = mmp_error_set(MMP_EDATA, "%s: an array of '%s', not a pickled object array", path, top.descr);
    goto out;
  }
  if (!(*pk = mmp_pickle_load(top.data, top.data_len, path, MMP_PICKLE_STRICT | MMP_PICKLE_NUMPY))) {
    rc = mmp_error_code();
    goto out;
  }
  if ((rc = npy_from_pickle(mmp_pickle_root(*pk), path, out)) < 0) goto out;
  if (out->ndim != top.ndim || memcmp(out->shape, top.shape, sizeof top.shape) != 0 || out->kind != 'O')
    rc = mmp_error_set(MMP_EDATA, "%s: the pickled array is not the object array the header describes", path);
out:
  if (rc < 0) {
    mmp_pickle_free(*pk);
    *pk = NULL;
  }
  free(buf);
  return rc;
}
