/* core/checkpoint_write.c - tensors as a torch.save file (include/mmpipe/checkpoint.h).
 *
 * The zip format of torch.save (PyTorch >= 1.6): an uncompressed zip whose records are
 *   archive/data.pkl      the object, pickle protocol 2; each tensor is
 *                         torch._utils._rebuild_tensor_v2(<persistent id>, 0, size, stride,
 *                         False, OrderedDict()), its persistent id the tuple
 *                         ("storage", torch.<Type>Storage, "<key>", "cpu", numel)
 *   archive/byteorder     "little"
 *   archive/data/<key>    the storage's bytes, one record per tensor
 *   archive/version       "3\n"
 * Records start at multiples of 64 bytes (padding in an extra field, as PyTorch's writer does),
 * so readers can map them in place. Sizes or offsets past 4 GiB use zip64 fields; the whole
 * file goes through mmpipe/file.h (temporary, fsync, rename).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/error.h>
#include <mmpipe/file.h>
#include <mmpipe/tensor.h>

/* ---- a growable byte buffer for the pickle ---- */
typedef struct buf {
  uint8_t *p;
  size_t n, cap;
  int oom;
} buf_t;

static void put(buf_t *b, const void *d, size_t n) {
  if (b->oom) return;
  if (n > b->cap - b->n) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->n < n) cap *= 2;
    uint8_t *np = realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void op(buf_t *b, uint8_t c) { put(b, &c, 1); }
/* @v as @n little-endian bytes into @x (pickle and zip fields alike) */
static void le_bytes(uint8_t *x, uint64_t v, int n) {
  for (int i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * i));
}
static void le(buf_t *b, uint64_t v, int n) {
  uint8_t x[8];
  le_bytes(x, v, n);
  put(b, x, (size_t)n);
}

/* pickle opcodes (protocol 2) */
enum { MARK = '(', STOP = '.', BININT = 'J', BINUNICODE = 'X', GLOBAL = 'c', EMPTY_DICT = '}', EMPTY_TUPLE = ')',
       TUPLE = 't', REDUCE = 'R', SETITEMS = 'u', BINPERSID = 'Q', NEWFALSE = 0x89, LONG1 = 0x8a, PROTO = 0x80 };

static void p_global(buf_t *b, const char *mod, const char *name) {
  op(b, GLOBAL);
  put(b, mod, strlen(mod));
  op(b, '\n');
  put(b, name, strlen(name));
  op(b, '\n');
}
static void p_str(buf_t *b, const char *s) {
  size_t n = strlen(s);
  op(b, BINUNICODE);
  le(b, n, 4);
  put(b, s, n);
}
static void p_int(buf_t *b, int64_t v) {
  if (v >= INT32_MIN && v <= INT32_MAX) {
    op(b, BININT);
    le(b, (uint64_t)v, 4);
  } else {
    op(b, LONG1);
    op(b, 8);
    le(b, (uint64_t)v, 8);
  }
}
static void p_ordered_dict(buf_t *b) {
  p_global(b, "collections", "OrderedDict");
  op(b, EMPTY_TUPLE);
  op(b, REDUCE);
}

static const char *storage_type(mmp_dtype_t dt) {
  switch (dt) {
  case MMP_F32: return "FloatStorage";
  case MMP_F16: return "HalfStorage";
  case MMP_BF16: return "BFloat16Storage";
  case MMP_F64: return "DoubleStorage";
  case MMP_I64: return "LongStorage";
  case MMP_I32: return "IntStorage";
  case MMP_U8: return "ByteStorage";
  case MMP_BOOL: return "BoolStorage";
  default: return NULL;
  }
}

static void p_tensor(buf_t *b, const mmp_tensor_t *t, size_t key) {
  char k[32];
  snprintf(k, sizeof k, "%zu", key);
  int64_t numel = 1, stride[MMP_MAX_DIMS];
  for (int d = t->ndim - 1; d >= 0; d--) {
    stride[d] = numel;
    numel *= t->shape[d];
  }
  p_global(b, "torch._utils", "_rebuild_tensor_v2");
  op(b, MARK);
  op(b, MARK); /* the persistent id */
  p_str(b, "storage");
  p_global(b, "torch", storage_type(t->dtype));
  p_str(b, k);
  p_str(b, "cpu");
  p_int(b, numel);
  op(b, TUPLE);
  op(b, BINPERSID);
  p_int(b, 0);
  op(b, MARK);
  for (int d = 0; d < t->ndim; d++) p_int(b, t->shape[d]);
  op(b, TUPLE);
  op(b, MARK);
  for (int d = 0; d < t->ndim; d++) p_int(b, stride[d]);
  op(b, TUPLE);
  op(b, NEWFALSE);
  p_ordered_dict(b);
  op(b, TUPLE);
  op(b, REDUCE);
}

/* ---- the zip container ---- */
typedef struct zentry {
  char *name;
  uint32_t crc;
  uint64_t size, offset; /* offset of the local header */
  uint16_t pad;          /* padding bytes in the local extra field */
} zentry_t;

typedef struct zw {
  FILE *f;
  uint64_t pos;
  zentry_t *e;
  size_t n, cap;
  int err;
} zw_t;

static void zput(zw_t *z, const void *d, size_t n) {
  if (z->err) return;
  if (n && fwrite(d, 1, n, z->f) != n) z->err = errno ? errno : EIO;
  z->pos += n;
}
static void zle(zw_t *z, uint64_t v, int n) {
  uint8_t x[8];
  le_bytes(x, v, n);
  zput(z, x, (size_t)n);
}

#define Z32 0xffffffffu

/* Local header of a stored record of @size bytes with CRC @crc; the data follow at a multiple of 64. */
static int zbegin(zw_t *z, const char *name, uint64_t size, uint32_t crc) {
  if (z->n == z->cap) {
    size_t cap = z->cap ? 2 * z->cap : 64;
    zentry_t *ne = realloc(z->e, cap * sizeof *ne);
    if (!ne) return mmp_error_set(MMP_ENOMEM, "out of memory");
    z->e = ne;
    z->cap = cap;
  }
  zentry_t *e = &z->e[z->n];
  if (!(e->name = strdup(name))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  z->n++;
  e->crc = crc;
  e->size = size;
  e->offset = z->pos;
  size_t nl = strlen(name);
  int zip64 = size >= Z32;
  uint64_t hdr = 30 + nl + (zip64 ? 20 : 0) + 4; /* + the padding field's own 4 bytes */
  e->pad = (uint16_t)((64 - (z->pos + hdr) % 64) % 64);
  zle(z, 0x04034b50, 4);
  zle(z, zip64 ? 45 : 20, 2);
  zle(z, 0, 2); /* flags */
  zle(z, 0, 2); /* stored */
  zle(z, 0, 2); /* time */
  zle(z, 0x21, 2); /* 1980-01-01 */
  zle(z, crc, 4);
  zle(z, zip64 ? Z32 : size, 4);
  zle(z, zip64 ? Z32 : size, 4);
  zle(z, nl, 2);
  zle(z, (zip64 ? 20 : 0) + 4 + e->pad, 2);
  zput(z, name, nl);
  if (zip64) {
    zle(z, 0x0001, 2);
    zle(z, 16, 2);
    zle(z, size, 8);
    zle(z, size, 8);
  }
  static const char pad[64] = "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
  zle(z, 0x4246, 2); /* "FB", PyTorch's padding field */
  zle(z, e->pad, 2);
  zput(z, pad, e->pad);
  return 0;
}

static void zfinish(zw_t *z) {
  uint64_t cd = z->pos;
  for (size_t i = 0; i < z->n; i++) {
    const zentry_t *e = &z->e[i];
    size_t nl = strlen(e->name);
    int big_size = e->size >= Z32, big_off = e->offset >= Z32;
    int x = (big_size ? 16 : 0) + (big_off ? 8 : 0);
    zle(z, 0x02014b50, 4);
    zle(z, 0x031e, 2); /* made by: unix, 3.0 */
    zle(z, x ? 45 : 20, 2);
    zle(z, 0, 2);
    zle(z, 0, 2);
    zle(z, 0, 2);
    zle(z, 0x21, 2);
    zle(z, e->crc, 4);
    zle(z, big_size ? Z32 : e->size, 4);
    zle(z, big_size ? Z32 : e->size, 4);
    zle(z, nl, 2);
    zle(z, x ? x + 4 : 0, 2);
    zle(z, 0, 2); /* comment */
    zle(z, 0, 2); /* disk */
    zle(z, 0, 2); /* internal attributes */
    zle(z, 0644u << 16, 4);
    zle(z, big_off ? Z32 : e->offset, 4);
    zput(z, e->name, nl);
    if (x) {
      zle(z, 0x0001, 2);
      zle(z, (uint64_t)x, 2);
      if (big_size) {
        zle(z, e->size, 8);
        zle(z, e->size, 8);
      }
      if (big_off) zle(z, e->offset, 8);
    }
  }
  uint64_t cdsize = z->pos - cd;
  int zip64 = cd >= Z32 || z->n >= 0xffff;
  if (zip64) {
    uint64_t at = z->pos;
    zle(z, 0x06064b50, 4);
    zle(z, 44, 8);
    zle(z, 45, 2);
    zle(z, 45, 2);
    zle(z, 0, 4);
    zle(z, 0, 4);
    zle(z, z->n, 8);
    zle(z, z->n, 8);
    zle(z, cdsize, 8);
    zle(z, cd, 8);
    zle(z, 0x07064b50, 4);
    zle(z, 0, 4);
    zle(z, at, 8);
    zle(z, 1, 4);
  }
  zle(z, 0x06054b50, 4);
  zle(z, 0, 2);
  zle(z, 0, 2);
  zle(z, zip64 ? 0xffff : z->n, 2);
  zle(z, zip64 ? 0xffff : z->n, 2);
  zle(z, cdsize >= Z32 ? Z32 : cdsize, 4);
  zle(z, zip64 ? Z32 : cd, 4);
  zle(z, 0, 2);
}

/* crc32 over more than 4 GiB in uInt-sized pieces */
static uint32_t crc_big(const uint8_t *p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n) {
    uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
    c = crc32(c, p, k);
    p += k;
    n -= k;
  }
  return (uint32_t)c;
}

static int zrecord(zw_t *z, const char *name, const void *data, size_t n) {
  int rc = zbegin(z, name, n, crc_big(data, n));
  if (rc == 0) zput(z, data, n);
  return rc;
}


int mmp_checkpoint_save_map(const char *path, const mmp_tensormap_t *m, unsigned flags) {
  size_t n = mmp_tensormap_size(m);
  for (size_t i = 0; i < n; i++) {
    const mmp_tensor_t *t = mmp_tensormap_at(m, i);
    if (!storage_type(t->dtype))
      return mmp_error_set(MMP_EDTYPE, "%s: tensor \"%s\" has a dtype torch.save cannot store", path,
                           mmp_tensormap_name(m, i));
  }
  /* the object */
  buf_t b = {0};
  op(&b, PROTO);
  op(&b, 2);
  if (flags & MMP_CKPT_LIGHTNING) {
    op(&b, EMPTY_DICT);
    op(&b, MARK);
    p_str(&b, "epoch");
    p_int(&b, 0);
    p_str(&b, "global_step");
    p_int(&b, 0);
    p_str(&b, "pytorch-lightning_version");
    p_str(&b, "1.6.5");
    p_str(&b, "state_dict");
  }
  p_ordered_dict(&b);
  if (n) {
    op(&b, MARK);
    for (size_t i = 0; i < n; i++) {
      p_str(&b, mmp_tensormap_name(m, i));
      p_tensor(&b, mmp_tensormap_at(m, i), i);
    }
    op(&b, SETITEMS);
  }
  if (flags & MMP_CKPT_LIGHTNING) op(&b, SETITEMS);
  op(&b, STOP);
  if (b.oom) {
    free(b.p);
    return mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
  }

  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) {
    free(b.p);
    return mmp_error_code();
  }
  zw_t z = {.f = mmp_afile_stream(af)};
  int rc = zrecord(&z, "archive/data.pkl", b.p, b.n);
  free(b.p);
  if (rc == 0) rc = zrecord(&z, "archive/byteorder", "little", 6);
  void *host = NULL;
  size_t hostcap = 0;
  for (size_t i = 0; i < n && rc == 0 && !z.err; i++) {
    const mmp_tensor_t *t = mmp_tensormap_at(m, i);
    size_t nb = mmp_tensor_nbytes(t);
    const uint8_t *data = NULL;
    if (nb && mmp_tensor_is_contiguous(t) && mmp_tensor_backend(t) == mmp_backend_get("cpu"))
      data = mmp_tensor_data(t);
    else if (nb) {
      if (nb > hostcap) {
        void *nh = realloc(host, nb);
        if (!nh) {
          rc = mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
          break;
        }
        host = nh;
        hostcap = nb;
      }
      if ((rc = mmp_tensor_to_host(t, host, nb)) < 0) break;
      data = host;
    }
    char name[48];
    snprintf(name, sizeof name, "archive/data/%zu", i);
    if ((rc = zbegin(&z, name, nb, nb ? crc_big(data, nb) : 0)) == 0) zput(&z, data, nb);
  }
  free(host);
  if (rc == 0) rc = zrecord(&z, "archive/version", "3\n", 2);
  if (rc == 0) zfinish(&z);
  if (rc == 0 && z.err) rc = mmp_error_set(MMP_EIO, "%s: write failed: %s", path, strerror(z.err));
  for (size_t i = 0; i < z.n; i++) free(z.e[i].name);
  free(z.e);
  if (rc == 0) return mmp_afile_commit(af);
  mmp_afile_abort(af);
  return rc;
}
