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
