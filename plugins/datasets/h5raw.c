/* plugins/datasets/h5raw.c - HDF5 structures checked from the file's bytes before libhdf5 decodes them. */
#include "plugins/datasets/h5raw.h"

#include <fcntl.h>
#include <hdf5.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mmpipe/error.h>

/* Little-endian unsigned of @n <= 8 bytes at file offset @pos. */
static int read_le(const h5raw_t *r, int64_t pos, int n, uint64_t *out) {
  uint8_t b[8];
  if (pos < 0 || pos > r->size - n || pread(r->fd, b, (size_t)n, (off_t)pos) != n)
    return mmp_error_set(MMP_EDATA, "offset %lld lies outside the file", (long long)pos);
  *out = 0;
  for (int i = n - 1; i >= 0; i--) *out = *out << 8 | b[i];
  return 0;
}

/* (HDF5 file format, "Global Heap Collection": "GCOL", version, 3 reserved,
 * collection size; then objects of index (2), references (2), reserved (4),
 * size, data padded to 8 bytes; index 0 is the free space that ends the
 * list.) */
int h5raw_check_heap_object(const h5raw_t *r, int64_t pos, int64_t len) {
  uint64_t addr = 0, idx = 0, csize = 0;
  if (read_le(r, pos, r->sizeof_addr, &addr) < 0 || read_le(r, pos + r->sizeof_addr, 4, &idx) < 0)
    return MMP_EDATA;
  if (len == 0 && addr == 0) return 0; /* an empty element HDF5 does not look up */
  uint8_t sig[4];
  if (addr > (uint64_t)r->size || pread(r->fd, sig, 4, (off_t)addr) != 4 || memcmp(sig, "GCOL", 4) != 0)
    return mmp_error_set(MMP_EDATA, "its heap collection at %llu is not one", (unsigned long long)addr);
  const int64_t hdr = 8 + r->sizeof_size, ohdr = 8 + r->sizeof_size;
  if (read_le(r, (int64_t)addr + 8, r->sizeof_size, &csize) < 0) return MMP_EDATA;
  if (csize < (uint64_t)hdr || csize > (uint64_t)r->size - addr)
    return mmp_error_set(MMP_EDATA, "its heap collection claims %llu bytes", (unsigned long long)csize);
  /* Walk the collection as HDF5's loader does (H5HG__cache_heap_deserialize
   * in 1.10): an object of index 0 is free space whose size includes its
   * header, any other takes its header plus its size padded to 8 bytes; the
   * last of several objects with one index wins. HDF5 advances by that
   * amount without checking it: an amount of zero (a zero-sized free-space
   * object, or a size that wraps the padding) keeps it loading the heap
   * forever, and one that overshoots the collection sends it reading
   * elsewhere. Both are refused here, before HDF5 loads the collection. */
  const int64_t end = (int64_t)(addr + csize);
  bool found = false;
  uint64_t found_size = 0;
  for (int64_t o = (int64_t)addr + hdr; o < end;) {
    if (o + ohdr > end) break; /* the remainder is free space too small for a header */
    uint64_t oi = 0, osz = 0;
    if (read_le(r, o, 2, &oi) < 0 || read_le(r, o + 8, r->sizeof_size, &osz) < 0) return MMP_EDATA;
    const uint64_t left = (uint64_t)(end - o);
    uint64_t need;
    if (oi == 0)
      need = osz;
    else
      need = osz > left ? UINT64_MAX : (uint64_t)ohdr + ((osz + 7) & ~(uint64_t)7);
    if (need == 0)
      return mmp_error_set(MMP_EDATA, "its heap collection at %llu holds an empty object at %lld",
                           (unsigned long long)addr, (long long)o);
    if (need > left)
      return mmp_error_set(MMP_EDATA, "heap object %llu runs past its collection", (unsigned long long)oi);
    if (oi == idx && oi != 0) {
      found = true;
      found_size = osz;
    }
    o += (int64_t)need;
  }
  if (len == 0) return 0; /* HDF5 reads nothing out of the object */
  if (found) {
    if ((uint64_t)len > found_size)
      return mmp_error_set(MMP_EDATA, "claims %lld bytes but its heap object holds %llu", (long long)len,
                           (unsigned long long)found_size);
    return 0;
  }
  return mmp_error_set(MMP_EDATA, "heap object %llu is not in its collection", (unsigned long long)idx);
}

/* ---- object headers ---- */

/* Datatype classes as the file format numbers them (H5T_class_t's values). */
enum { H5RAW_INTEGER = 0, H5RAW_FLOAT = 1, H5RAW_STRING = 3, H5RAW_VLEN = 9 };

/* What a checked datatype message says: its class and size. */
typedef struct h5raw_dtype {
  int cls;
  uint32_t size;
} h5raw_dtype_t;

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* Message types of the file format ("Header Message Types"). */
enum {
  MSG_DATASPACE = 0x01, MSG_LINFO = 0x02, MSG_DATATYPE = 0x03, MSG_FILL_OLD = 0x04, MSG_FILL = 0x05,
  MSG_LINK = 0x06, MSG_EFL = 0x07, MSG_LAYOUT = 0x08, MSG_PLINE = 0x0B, MSG_ATTR = 0x0C, MSG_CONT = 0x10,
  MSG_STAB = 0x11, MSG_AINFO = 0x15, MSG_REFCOUNT = 0x16
};
#define MSG_FLAG_SHARED 0x02

/* Bounds of a header walk: chunks followed (a continuation cycle ends
 * here) and the bytes of one chunk. */
#define MAX_CHUNKS 64
#define MAX_CHUNK_BYTES ((uint64_t)16 << 20)

/* Bytes of the file at @pos (a fresh buffer) or NULL with the error set. */
static uint8_t *read_block(const h5raw_t *r, uint64_t pos, uint64_t len, const char *what) {
  if (pos > (uint64_t)r->size || len > (uint64_t)r->size - pos || len > MAX_CHUNK_BYTES) {
    mmp_error_set(MMP_EDATA, "its %s at %llu (%llu bytes) lies outside the file", what, (unsigned long long)pos,
                  (unsigned long long)len);
    return NULL;
  }
  uint8_t *b = malloc(len ? (size_t)len : 1);
  if (!b) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  if (len && pread(r->fd, b, (size_t)len, (off_t)pos) != (ssize_t)len) {
    free(b);
    mmp_error_set(MMP_EIO, "cannot read its %s at %llu", what, (unsigned long long)pos);
    return NULL;
  }
  return b;
}

/* Called per message with its body; nonzero ends the walk with that value. */
typedef int (*msg_fn)(void *ctx, unsigned type, unsigned flags, const uint8_t *body, size_t n, uint64_t at);

/* Walk every message of the object header at @addr (version 1: a 16-byte
 * prefix, then messages of type (2), size (2), flags (1), 3 reserved;
 * version 2: "OHDR", version, flags, optional times and attribute phase
 * change values, the first chunk's size in 1, 2, 4 or 8 bytes, messages of
 * type (1), size (2), flags (1) and a creation order (2) when the header
 * tracks it; continuation chunks "OCHK" + messages + checksum in version 2,
 * bare messages in version 1). Every message must end inside its chunk. */
static int walk_header(const h5raw_t *r, uint64_t addr, msg_fn fn, void *ctx) {
  struct {
    uint64_t addr, len;
  } q[MAX_CHUNKS];
  int nq = 0;
  uint8_t pre[16];
  if (addr >= (uint64_t)r->size || (uint64_t)r->size - addr < sizeof pre ||
      pread(r->fd, pre, sizeof pre, (off_t)addr) != (ssize_t)sizeof pre)
    return mmp_error_set(MMP_EDATA, "its object header at %llu lies outside the file", (unsigned long long)addr);
  const bool v2 = memcmp(pre, "OHDR", 4) == 0;
  size_t mhdr = 8; /* a message's header bytes */
  if (!v2) {
    if (pre[0] != 1)
      return mmp_error_set(MMP_EDATA, "its object header at %llu has version %u (1 or 2 are read)",
                           (unsigned long long)addr, pre[0]);
    q[nq].addr = addr + 16;
    q[nq++].len = le(pre + 8, 4);
  } else {
    const unsigned ver = pre[4], fl = pre[5];
    if (ver != 2 || (fl & ~0x3Fu))
      return mmp_error_set(MMP_EDATA, "its object header at %llu has version %u, flags 0x%x",
                           (unsigned long long)addr, ver, fl);
    uint64_t pos = addr + 6 + ((fl & 0x20) ? 16 : 0) + ((fl & 0x10) ? 4 : 0), len = 0;
    const int w = 1 << (fl & 3);
    if (read_le(r, (int64_t)pos, w, &len) < 0) return MMP_EDATA;
    q[nq].addr = pos + (uint64_t)w;
    q[nq++].len = len;
    mhdr = (fl & 0x04) ? 6 : 4;
  }
  int rc = 0;
  for (int c = 0; c < nq && rc == 0; c++) {
    const uint64_t ca = q[c].addr, cl = q[c].len;
    uint8_t *buf = read_block(r, ca, cl, "object header chunk");
    if (!buf) return mmp_error_code();
    size_t off = 0, end = (size_t)cl;
    if (v2 && c > 0) { /* a continuation chunk: signature, messages, checksum */
      if (cl < 8 || memcmp(buf, "OCHK", 4) != 0) {
        free(buf);
        return mmp_error_set(MMP_EDATA, "its object header continuation at %llu is not one",
                             (unsigned long long)ca);
      }
      off = 4;
      end = (size_t)cl - 4;
    }
    while (rc == 0 && end - off >= mhdr) { /* less than a message header: a gap */
      const uint8_t *m = buf + off;
      const unsigned type = v2 ? m[0] : (unsigned)le(m, 2);
      const size_t size = (size_t)le(m + (v2 ? 1 : 2), 2);
      const unsigned flags = v2 ? m[3] : m[4];
      if (size > end - off - mhdr) {
        rc = mmp_error_set(MMP_EDATA, "its object header message at %llu (type %u, %zu bytes) runs past its chunk",
                           (unsigned long long)(ca + off), type, size);
        break;
      }
      const uint8_t *body = m + mhdr;
      if (type == MSG_CONT) {
        const size_t need = (size_t)(r->sizeof_addr + r->sizeof_size);
        if (size < need) {
          rc = mmp_error_set(MMP_EDATA, "its object header continuation message at %llu is short",
                             (unsigned long long)(ca + off));
          break;
        }
        if (nq == MAX_CHUNKS) {
          rc = mmp_error_set(MMP_EDATA, "its object header at %llu continues in more than %d chunks",
                             (unsigned long long)addr, MAX_CHUNKS);
          break;
        }
        q[nq].addr = le(body, r->sizeof_addr);
        q[nq++].len = le(body + r->sizeof_addr, r->sizeof_size);
      }
      rc = fn(ctx, type, flags, body, size, ca + off);
      off += mhdr + size;
    }
    free(buf);
  }
  return rc < 0 ? rc : 0;
}

/* ---- the messages H5Dopen2 decodes ---- */

static const char *class_name(int cls) {
  static const char *const names[] = {"integer", "float",    "time", "string",           "bitfield", "opaque",
                                      "compound", "reference", "enum", "variable-length", "array"};
  return cls >= 0 && cls < (int)(sizeof names / sizeof names[0]) ? names[cls] : "unknown";
}

/* A datatype message (version 1-3: class and version byte, 3 bytes of class
 * bits, size (4), then the class's properties). Only the classes the story
 * reader can meet are accepted: libhdf5 1.10 copies compound and enum
 * member names with strdup and reads array dimensions and opaque tags
 * without bounding them by the message. */
static int check_dtype(const uint8_t *b, size_t n, int depth, h5raw_dtype_t *dt, size_t *used, uint64_t at) {
  if (n < 8) return mmp_error_set(MMP_EDATA, "its datatype message at %llu is short", (unsigned long long)at);
  const int ver = b[0] >> 4, cls = b[0] & 15;
  const uint32_t size = (uint32_t)le(b + 4, 4);
  if (ver < 1 || ver > 3)
    return mmp_error_set(MMP_EDATA, "its datatype at %llu has version %d", (unsigned long long)at, ver);
  size_t need = 8;
  switch (cls) {
  case H5RAW_INTEGER:
  case H5RAW_FLOAT: {
    need = cls == H5RAW_INTEGER ? 12 : 20;
    if (n < need) break;
    const unsigned boff = (unsigned)le(b + 8, 2), prec = (unsigned)le(b + 10, 2);
    bool ok = size >= 1 && size <= 16 && prec >= 1 && boff + prec <= 8 * size;
    if (cls == H5RAW_FLOAT) /* exponent and mantissa inside the precision */
      ok = ok && b[13] >= 1 && b[15] >= 1 && b[12] + b[13] <= prec && b[14] + b[15] <= prec;
    if (!ok)
      return mmp_error_set(MMP_EDATA, "its %s datatype at %llu is malformed (size %u, precision %u, offset %u)",
                           class_name(cls), (unsigned long long)at, size, prec, boff);
    break;
  }
  case H5RAW_STRING:
    if (size < 1) return mmp_error_set(MMP_EDATA, "its string datatype at %llu has size 0", (unsigned long long)at);
    break;
  case H5RAW_VLEN: {
    const unsigned kind = b[1] & 15;
    if (kind > 1 || depth > 0)
      return mmp_error_set(MMP_EDATA, "its variable-length datatype at %llu is of kind %u%s",
                           (unsigned long long)at, kind, depth > 0 ? " inside another" : "");
    h5raw_dtype_t base;
    size_t bused = 0;
    int rc = check_dtype(b + 8, n - 8, depth + 1, &base, &bused, at);
    if (rc < 0) return rc;
    if (base.cls == H5RAW_VLEN) return mmp_error_set(MMP_EDATA, "nested variable-length types are not read");
    dt->cls = cls;
    dt->size = size;
    *used = 8 + bused;
    return 0;
  }
  default:
    return mmp_error_set(MMP_EDATA, "its datatype is of class %d (%s), which is not read", cls, class_name(cls));
  }
  if (n < need) return mmp_error_set(MMP_EDATA, "its datatype message at %llu is short", (unsigned long long)at);
  dt->cls = cls;
  dt->size = size;
  *used = need;
  return 0;
}

/* A dataspace message (version 1: version, rank, flags, 5 reserved;
 * version 2: version, rank, flags, type; then the sizes and, with flag 1,
 * the maximum sizes). *@nelem its element count (UINT64_MAX when it
 * overflows). */
static int check_dataspace(const h5raw_t *r, const uint8_t *b, size_t n, uint64_t *nelem, uint64_t at) {
  if (n < 4) return mmp_error_set(MMP_EDATA, "its dataspace message at %llu is short", (unsigned long long)at);
  const unsigned ver = b[0], rank = b[1], flags = b[2];
  size_t off;
  bool null = false;
  if (ver == 1)
    off = 8;
  else if (ver == 2) {
    off = 4;
    if (b[3] > 2) return mmp_error_set(MMP_EDATA, "its dataspace at %llu has type %u", (unsigned long long)at, b[3]);
    null = b[3] == 2;
  } else
    return mmp_error_set(MMP_EDATA, "its dataspace at %llu has version %u", (unsigned long long)at, ver);
  if (rank > 32) return mmp_error_set(MMP_EDATA, "its dataspace at %llu has rank %u", (unsigned long long)at, rank);
  const size_t need = off + (size_t)rank * (size_t)r->sizeof_size * ((flags & 1) ? 2 : 1);
  if (n < need)
    return mmp_error_set(MMP_EDATA, "its dataspace message at %llu holds %zu bytes, its %u sizes need %zu",
                         (unsigned long long)at, n, rank, need);
  uint64_t count = null ? 0 : 1;
  for (unsigned i = 0; i < rank && count; i++) {
    uint64_t d = le(b + off + (size_t)i * (size_t)r->sizeof_size, r->sizeof_size);
    if (__builtin_mul_overflow(count, d, &count)) count = UINT64_MAX;
  }
  *nelem = count;
  return 0;
}

typedef struct dset_ctx {
  const h5raw_t *r;
  h5raw_dtype_t dt;
  int n_dtype, n_space, n_layout;
  bool fill_value; /* a fill value of more than zero bytes */
} dset_ctx_t;

static int dset_msg(void *ctxp, unsigned type, unsigned flags, const uint8_t *b, size_t n, uint64_t at) {
  dset_ctx_t *c = ctxp;
  const h5raw_t *r = c->r;
  /* a shared message points into another header or the shared message
   * heap, which libhdf5 would decode unchecked */
  if ((flags & MSG_FLAG_SHARED) && (type == MSG_DATASPACE || type == MSG_DATATYPE || type == MSG_FILL_OLD ||
                                    type == MSG_FILL || type == MSG_LAYOUT))
    return mmp_error_set(MMP_EDATA, "its object header message at %llu (type %u) is shared (committed types and "
                         "shared messages are not read)", (unsigned long long)at, type);
  switch (type) {
  case MSG_DATASPACE: {
    uint64_t nelem;
    c->n_space++;
    return check_dataspace(r, b, n, &nelem, at);
  }
  case MSG_DATATYPE: {
    size_t used;
    c->n_dtype++;
    return check_dtype(b, n, 0, &c->dt, &used, at);
  }
  case MSG_FILL_OLD: /* size (4), value */
    if (n < 4 || le(b, 4) > n - 4)
      return mmp_error_set(MMP_EDATA, "its fill value message at %llu runs past its end", (unsigned long long)at);
    c->fill_value |= le(b, 4) > 0;
    return 0;
  case MSG_FILL: { /* versions 1-2: version, allocation time, write time, defined, [size (4), value];
                    * version 3: version, flags, [size, value] with flag 0x20 */
    if (n < 2 || b[0] < 1 || b[0] > 3)
      return mmp_error_set(MMP_EDATA, "its fill value message at %llu is malformed", (unsigned long long)at);
    size_t off = 0;
    bool has = false;
    if (b[0] < 3 && n >= 4 && b[3]) {
      off = 4;
      has = true;
    } else if (b[0] == 3 && (b[1] & 0x20)) {
      off = 2;
      has = true;
    } else if (b[0] < 3 && n < 4)
      return mmp_error_set(MMP_EDATA, "its fill value message at %llu is short", (unsigned long long)at);
    if (has) {
      if (n < off + 4) return mmp_error_set(MMP_EDATA, "its fill value message at %llu is short", (unsigned long long)at);
      const int32_t sz = (int32_t)(uint32_t)le(b + off, 4);
      if (sz > 0 && (uint64_t)sz > n - off - 4)
        return mmp_error_set(MMP_EDATA, "its fill value at %llu claims %d bytes, its message holds %zu",
                             (unsigned long long)at, sz, n - off - 4);
      c->fill_value |= sz > 0;
    }
    return 0;
  }
  case MSG_LAYOUT: { /* versions 1-2: version, rank, class, 5 reserved, address, rank sizes (4);
                      * versions 3-4: version, class, then for contiguous: address, size */
    c->n_layout++;
    if (n < 2 || b[0] < 1 || b[0] > 4 || (b[0] < 3 && n < 8))
      return mmp_error_set(MMP_EDATA, "its layout message at %llu is malformed", (unsigned long long)at);
    const unsigned cls = b[0] < 3 ? b[2] : b[1];
    if (cls != 1)
      return mmp_error_set(MMP_EDATA, "it is not stored contiguously (chunked or compact variable-length "
                           "datasets are not read)");
    const size_t need = b[0] < 3 ? 8 + (size_t)r->sizeof_addr + 4 * (size_t)b[1]
                                 : 2 + (size_t)(r->sizeof_addr + r->sizeof_size);
    if ((b[0] < 3 && b[1] > 33) || n < need)
      return mmp_error_set(MMP_EDATA, "its layout message at %llu is malformed", (unsigned long long)at);
    return 0;
  }
  case MSG_EFL:
    return mmp_error_set(MMP_EDATA, "its data is stored in external files (not read)");
  case MSG_PLINE:
    return mmp_error_set(MMP_EDATA, "it is filtered (compressed); only unfiltered contiguous datasets are read");
  case MSG_REFCOUNT: /* decoded while libhdf5 loads the header: version, count (4) */
    if (n < 5) return mmp_error_set(MMP_EDATA, "its reference count message at %llu is short", (unsigned long long)at);
    return 0;
  default: /* attributes, times, comments and the rest: not decoded by H5Dopen2 */
    return 0;
  }
}

int h5raw_check_dataset(const h5raw_t *r, uint64_t addr) {
  dset_ctx_t c = {.r = r};
  int rc = walk_header(r, addr, dset_msg, &c);
  if (rc < 0) return rc;
  if (c.n_dtype != 1 || c.n_space != 1 || c.n_layout != 1)
    return mmp_error_set(MMP_EDATA, "its object header at %llu holds %d datatype, %d dataspace and %d layout "
                         "messages (a dataset has one of each)", (unsigned long long)addr, c.n_dtype, c.n_space,
                         c.n_layout);
  if (c.dt.cls == H5RAW_VLEN && c.fill_value) /* a fill value of a variable-length type names a heap object */
    return mmp_error_set(MMP_EDATA, "it has a variable-length fill value (not read)");
  return 0;
}

/* ---- groups ---- */

static bool addr_undef(uint64_t a, int width) {
  return width >= 8 ? a == UINT64_MAX : a == ((uint64_t)1 << (8 * width)) - 1;
}

/* A local heap ("HEAP", version 0, 3 reserved, data segment size, free
 * list head, data segment address) whose data lies in the file: its data
 * segment, read (transfer full), for the names the group's nodes point at. */
static uint8_t *read_local_heap(const h5raw_t *r, uint64_t addr, uint64_t *dsize) {
  const int L = r->sizeof_size, O = r->sizeof_addr;
  uint8_t *h = read_block(r, addr, 8 + 2 * (uint64_t)L + (uint64_t)O, "local heap");
  if (!h) return NULL;
  const bool sig = memcmp(h, "HEAP", 4) == 0 && h[4] == 0;
  const uint64_t size = le(h + 8, L), seg = le(h + 8 + 2 * L, O);
  free(h);
  if (!sig) {
    mmp_error_set(MMP_EDATA, "its local heap at %llu is not one", (unsigned long long)addr);
    return NULL;
  }
  if (size == 0) {
    mmp_error_set(MMP_EDATA, "its local heap at %llu is empty", (unsigned long long)addr);
    return NULL;
  }
  *dsize = size;
  return read_block(r, seg, size, "local heap data");
}

#define MAX_GROUP_NODES 4096

typedef struct stab_walk {
  const h5raw_t *r;
  const uint8_t *heap; /* the local heap's data segment */
  uint64_t heap_size;
  int nodes;
} stab_walk_t;

/* A name offset of a key or an entry: inside the heap, and the name
 * terminated there (libhdf5 1.10 compares and copies names with strcmp and
 * strdup, bounded only by the terminator). */
static int check_name_offset(const stab_walk_t *w, uint64_t off, uint64_t at) {
  if (off >= w->heap_size)
    return mmp_error_set(MMP_EDATA, "a name offset %llu at %llu lies outside its local heap (%llu bytes)",
                         (unsigned long long)off, (unsigned long long)at, (unsigned long long)w->heap_size);
  if (!memchr(w->heap + off, 0, (size_t)(w->heap_size - off)))
    return mmp_error_set(MMP_EDATA, "the name at offset %llu of its local heap is not terminated inside the heap",
                         (unsigned long long)off);
  return 0;
}

/* A symbol node: "SNOD", version 1, reserved, entry count (2), then 2 x leaf
 * K entries of name offset (L), header address (O), cache type (4), 4
 * reserved, 16 bytes of scratch. */
static int check_snod(stab_walk_t *w, uint64_t addr) {
  const h5raw_t *r = w->r;
  const uint64_t esz = (uint64_t)(r->sizeof_size + r->sizeof_addr + 24), cap = 2 * (uint64_t)r->sym_lk;
  uint8_t *b = read_block(r, addr, 8 + cap * esz, "symbol node");
  if (!b) return MMP_EDATA;
  int rc = 0;
  const uint64_t n = le(b + 6, 2);
  if (memcmp(b, "SNOD", 4) != 0 || b[4] != 1)
    rc = mmp_error_set(MMP_EDATA, "its symbol node at %llu is not one", (unsigned long long)addr);
  else if (n > cap)
    rc = mmp_error_set(MMP_EDATA, "its symbol node at %llu claims %llu entries (at most %llu)", (unsigned long long)addr,
                       (unsigned long long)n, (unsigned long long)cap);
  for (uint64_t i = 0; rc == 0 && i < n; i++)
    rc = check_name_offset(w, le(b + 8 + i * esz, r->sizeof_size), addr + 8 + i * esz);
  free(b);
  return rc;
}

/* A group B-tree node (version 1 B-tree): "TREE", type 0, level, entries
 * used (2), left and right siblings, then keys (name offsets) and children
 * alternating, 2 x K children at most; children of level 0 are symbol
 * nodes. */
static int check_btree(stab_walk_t *w, uint64_t addr, int depth) {
  const h5raw_t *r = w->r;
  const int L = r->sizeof_size, O = r->sizeof_addr;
  if (++w->nodes > MAX_GROUP_NODES || depth > 32)
    return mmp_error_set(MMP_EDATA, "its group B-tree has more than %d nodes or levels", MAX_GROUP_NODES);
  const uint64_t cap = 2 * (uint64_t)r->sym_ik, hdr = 8 + 2 * (uint64_t)O;
  uint8_t *b = read_block(r, addr, hdr + (cap + 1) * (uint64_t)L + cap * (uint64_t)O, "group B-tree node");
  if (!b) return MMP_EDATA;
  int rc = 0;
  const unsigned level = b[5];
  const uint64_t n = le(b + 6, 2);
  if (memcmp(b, "TREE", 4) != 0 || b[4] != 0)
    rc = mmp_error_set(MMP_EDATA, "its group B-tree node at %llu is not one", (unsigned long long)addr);
  else if (n > cap)
    rc = mmp_error_set(MMP_EDATA, "its group B-tree node at %llu claims %llu children (at most %llu)",
                       (unsigned long long)addr, (unsigned long long)n, (unsigned long long)cap);
  for (uint64_t i = 0; rc == 0 && i <= n; i++) {
    const uint64_t k = hdr + i * (uint64_t)(L + O);
    rc = check_name_offset(w, le(b + k, L), addr + k);
    if (rc == 0 && i < n) {
      const uint64_t child = le(b + k + L, O);
      rc = level > 0 ? check_btree(w, child, depth + 1) : check_snod(w, child);
    }
  }
  free(b);
  return rc;
}

typedef struct group_ctx {
  const h5raw_t *r;
  int n_stab;
  uint64_t btree, heap;
} group_ctx_t;

static int group_msg(void *ctxp, unsigned type, unsigned flags, const uint8_t *b, size_t n, uint64_t at) {
  group_ctx_t *c = ctxp;
  const h5raw_t *r = c->r;
  const int O = r->sizeof_addr;
  (void)flags;
  switch (type) {
  case MSG_STAB: /* B-tree address, local heap address */
    if (n < 2 * (size_t)O)
      return mmp_error_set(MMP_EDATA, "its symbol table message at %llu is short", (unsigned long long)at);
    c->n_stab++;
    c->btree = le(b, O);
    c->heap = le(b + O, O);
    return 0;
  case MSG_LINFO: { /* version 0, flags, [max creation index (8)], fractal heap address, name index address, ... */
    const size_t off = 2 + ((n >= 2 && (b[1] & 1)) ? 8 : 0);
    if (n < 2 || b[0] != 0 || n < off + 2 * (size_t)O)
      return mmp_error_set(MMP_EDATA, "its link info message at %llu is malformed", (unsigned long long)at);
    if (!addr_undef(le(b + off, O), O))
      return mmp_error_set(MMP_EDATA, "its links are in dense storage (not read: story groups hold a few links)");
    return 0;
  }
  case MSG_LINK: { /* version 1, flags, [type], [creation order (8)], [charset], name length (1-8), name, link info */
    if (n < 2 || b[0] != 1)
      return mmp_error_set(MMP_EDATA, "its link message at %llu is malformed", (unsigned long long)at);
    const unsigned fl = b[1];
    size_t off = 2;
    unsigned ltype = 0;
    if (fl & 0x08) {
      if (n < off + 1) goto short_msg;
      ltype = b[off++];
    }
    if (fl & 0x04) off += 8;
    if (fl & 0x10) off += 1;
    const int w = 1 << (fl & 3);
    if (n < off + (size_t)w) goto short_msg;
    const uint64_t len = le(b + off, w);
    off += (size_t)w;
    if (len == 0 || len > n - off) goto short_msg;
    off += (size_t)len;
    if (ltype == 0) { /* hard: an address */
      if (n - off < (size_t)O) goto short_msg;
    } else { /* soft, external, user-defined: a length (2) and that many bytes */
      if (n - off < 2 || le(b + off, 2) > n - off - 2) goto short_msg;
    }
    return 0;
  short_msg:
    return mmp_error_set(MMP_EDATA, "its link message at %llu runs past its end", (unsigned long long)at);
  }
  default:
    return 0;
  }
}

int h5raw_check_group(const h5raw_t *r, uint64_t addr) {
  if (r->sym_ik < 1 || r->sym_lk < 1 || r->sym_ik > 32768 || r->sym_lk > 32768)
    return mmp_error_set(MMP_EDATA, "the file's group ranks (%d, %d) are not usable", r->sym_ik, r->sym_lk);
  group_ctx_t c = {.r = r};
  int rc = walk_header(r, addr, group_msg, &c);
  if (rc < 0) return rc;
  if (c.n_stab > 1) return mmp_error_set(MMP_EDATA, "its object header holds %d symbol tables", c.n_stab);
  if (c.n_stab == 0) return 0; /* a version-2 group: its link messages were checked */
  stab_walk_t w = {.r = r};
  uint8_t *heap = read_local_heap(r, c.heap, &w.heap_size);
  if (!heap) return MMP_EDATA;
  w.heap = heap;
  rc = check_btree(&w, c.btree, 0);
  free(heap);
  return rc;
}

/* ---- attributes ---- */

/* One attribute message, taken apart. */
typedef struct h5raw_attr {
  const uint8_t *name; /* NUL-terminated inside the message */
  size_t name_size;    /* with the NUL */
  h5raw_dtype_t dt;
  uint64_t nelem;
  const uint8_t *data; /* nelem x dt.size bytes, inside the message */
} h5raw_attr_t;

/* An attribute message (version 1: version, reserved, name size (2),
 * datatype size (2), dataspace size (2), then name, datatype and dataspace
 * each padded to 8 bytes, then the data; version 2: flags for the reserved
 * byte, no padding; version 3: as 2 with an encoding byte after the sizes).
 * libhdf5 1.10 decodes one with strdup for the name, the datatype and
 * dataspace decoders (which do not know the sizes given here) and a memcpy
 * of elements x datatype size bytes: all of it must lie in the message.
 * Fixed-size integer, float and string types only (a variable-length
 * attribute names global heap objects). */
static int parse_attr(const h5raw_t *r, const uint8_t *b, size_t n, uint64_t at, h5raw_attr_t *a) {
  if (n < 8 || b[0] < 1 || b[0] > 3)
    return mmp_error_set(MMP_EDATA, "its attribute message at %llu is malformed", (unsigned long long)at);
  const unsigned ver = b[0];
  if (ver > 1 && (b[1] & 3))
    return mmp_error_set(MMP_EDATA, "its attribute at %llu has a shared datatype or dataspace (not read)",
                         (unsigned long long)at);
  const size_t name_sz = (size_t)le(b + 2, 2), dt_sz = (size_t)le(b + 4, 2), ds_sz = (size_t)le(b + 6, 2);
  size_t off = ver == 3 ? 9 : 8;
#define PAD(x) (ver == 1 ? (((x) + 7) & ~(size_t)7) : (x))
  if (name_sz == 0 || n < off || n - off < PAD(name_sz) || !memchr(b + off, 0, name_sz))
    return mmp_error_set(MMP_EDATA, "its attribute at %llu has a name of %zu bytes its message does not hold",
                         (unsigned long long)at, name_sz);
  a->name = b + off;
  a->name_size = name_sz;
  off += PAD(name_sz);
  size_t used = 0;
  if (n - off < PAD(dt_sz))
    return mmp_error_set(MMP_EDATA, "its attribute at %llu has a datatype of %zu bytes its message does not hold",
                         (unsigned long long)at, dt_sz);
  int rc = check_dtype(b + off, dt_sz, 0, &a->dt, &used, at);
  if (rc < 0) return rc;
  if (a->dt.cls == H5RAW_VLEN)
    return mmp_error_set(MMP_EDATA, "its attribute at %llu is of a variable-length type (not read)",
                         (unsigned long long)at);
  off += PAD(dt_sz);
  if (n - off < PAD(ds_sz))
    return mmp_error_set(MMP_EDATA, "its attribute at %llu has a dataspace of %zu bytes its message does not hold",
                         (unsigned long long)at, ds_sz);
  if ((rc = check_dataspace(r, b + off, ds_sz, &a->nelem, at)) < 0) return rc;
  off += PAD(ds_sz);
#undef PAD
  uint64_t bytes;
  if (__builtin_mul_overflow(a->nelem, (uint64_t)a->dt.size, &bytes) || bytes > n - off)
    return mmp_error_set(MMP_EDATA, "its attribute at %llu claims %llu elements of %u bytes, its message holds %zu",
                         (unsigned long long)at, (unsigned long long)a->nelem, a->dt.size, n - off);
  a->data = b + off;
  return 0;
}

static int attrs_msg(void *ctxp, unsigned type, unsigned flags, const uint8_t *b, size_t n, uint64_t at) {
  const h5raw_t *r = ctxp;
  const int O = r->sizeof_addr;
  if (type == MSG_AINFO) { /* version 0, flags, [max creation index (2)], fractal heap address, ... */
    const size_t off = 2 + ((n >= 2 && (b[1] & 1)) ? 2 : 0);
    if (n < 2 || b[0] != 0 || n < off + 2 * (size_t)O)
      return mmp_error_set(MMP_EDATA, "its attribute info message at %llu is malformed", (unsigned long long)at);
    if (!addr_undef(le(b + off, O), O))
      return mmp_error_set(MMP_EDATA, "its attributes are in dense storage (not read)");
    return 0;
  }
  if (type != MSG_ATTR) return 0;
  if (flags & MSG_FLAG_SHARED)
    return mmp_error_set(MMP_EDATA, "its attribute message at %llu is shared (not read)", (unsigned long long)at);
  h5raw_attr_t a;
  return parse_attr(r, b, n, at, &a);
}

int h5raw_check_attributes(const h5raw_t *r, uint64_t addr) { return walk_header(r, addr, attrs_msg, (void *)r); }

typedef struct attr_ctx {
  const h5raw_t *r;
  const char *name;
  char *buf;
  size_t cap;
  bool found;
} attr_ctx_t;

/* The attribute looked for; every other attribute message, and one of this
 * name this reader does not understand, is passed over. */
static int attr_msg(void *ctxp, unsigned type, unsigned flags, const uint8_t *b, size_t n, uint64_t at) {
  attr_ctx_t *c = ctxp;
  if (type != MSG_ATTR || (flags & MSG_FLAG_SHARED)) return 0;
  h5raw_attr_t a;
  if (parse_attr(c->r, b, n, at, &a) < 0) {
    mmp_error_clear();
    return 0;
  }
  if (strcmp((const char *)a.name, c->name) != 0 || a.dt.cls != H5RAW_STRING || a.nelem != 1 || a.dt.size >= c->cap)
    return 0;
  memcpy(c->buf, a.data, a.dt.size);
  c->buf[a.dt.size] = 0;
  c->found = true;
  return 1;
}

int h5raw_attr_string(const h5raw_t *r, uint64_t addr, const char *name, char *buf, size_t cap) {
  if (cap == 0) return MMP_ENOENT;
  buf[0] = 0;
  attr_ctx_t c = {.r = r, .name = name, .buf = buf, .cap = cap};
  int rc = walk_header(r, addr, attr_msg, &c);
  if (rc < 0) return rc;
  return c.found ? 0 : MMP_ENOENT;
}

/* ---- with libhdf5 ---- */

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
  char *buf = data;
  if (n == 0 && e->desc) snprintf(buf, 256, "%s (in %s)", e->desc, e->func_name ? e->func_name : "?");
  return 0;
}

const char *h5raw_hdf5_message(char buf[256]) {
  buf[0] = 0;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, buf);
  if (!buf[0]) snprintf(buf, 256, "HDF5 error");
  return buf;
}

int h5raw_open(hid_t file, const char *path, h5raw_t *raw, uint64_t *root) {
  struct stat sb;
  raw->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (raw->fd < 0 || fstat(raw->fd, &sb) < 0) return mmp_error_set(MMP_EIO, "cannot open %s", path);
  raw->size = (int64_t)sb.st_size;
  hid_t fcpl = H5Fget_create_plist(file);
  size_t sa = 0, ss = 0;
  unsigned ik = 0, lk = 0;
  const bool good = fcpl >= 0 && H5Pget_sizes(fcpl, &sa, &ss) >= 0 && H5Pget_sym_k(fcpl, &ik, &lk) >= 0;
  if (fcpl >= 0) H5Pclose(fcpl);
  if (!good || sa < 2 || sa > 8 || ss < 2 || ss > 8)
    return mmp_error_set(MMP_EDATA, "%s: cannot read the file's address size", path);
  raw->sizeof_addr = (int)sa;
  raw->sizeof_size = (int)ss;
  raw->sym_ik = (int)ik;
  raw->sym_lk = (int)lk;
  H5O_info_t oi;
  if (H5Oget_info2(file, &oi, H5O_INFO_BASIC) < 0) {
    char m[256];
    return mmp_error_set(MMP_EDATA, "%s: cannot locate the root group: %s", path, h5raw_hdf5_message(m));
  }
  *root = (uint64_t)oi.addr;
  if (h5raw_check_group(raw, *root) < 0) {
    char why[256];
    snprintf(why, sizeof why, "%s", mmp_error_last());
    return mmp_error_set(MMP_EDATA, "%s: the root group: %s", path, why);
  }
  return 0;
}

int h5raw_check_link(hid_t group, const h5raw_t *raw, const char *name, bool is_group, uint64_t *addr, char why[256]) {
  H5L_info_t li;
  if (H5Lget_info(group, name, &li, H5P_DEFAULT) < 0) {
    h5raw_hdf5_message(why);
    return MMP_EDATA;
  }
  if (li.type != H5L_TYPE_HARD) {
    snprintf(why, 256, "it is %s link (only objects stored in the file are read)",
             li.type == H5L_TYPE_SOFT ? "a soft" : li.type == H5L_TYPE_EXTERNAL ? "an external" : "a user-defined");
    return MMP_EDATA;
  }
  const uint64_t a = (uint64_t)li.u.address;
  if ((is_group ? h5raw_check_group(raw, a) : h5raw_check_dataset(raw, a)) < 0) {
    snprintf(why, 256, "%s", mmp_error_last());
    return MMP_EDATA;
  }
  if (addr) *addr = a;
  return 0;
}

int h5raw_check_vlen_element(const h5raw_t *r, hid_t d, int64_t index, int64_t max) {
  const haddr_t off = H5Dget_offset(d);
  if (off == HADDR_UNDEF) return 0; /* never written: libhdf5 reads fill values */
  const int64_t esz = h5raw_vlen_element_size(r), stored = (int64_t)H5Dget_storage_size(d);
  int64_t rel, pos;
  if (index < 0 || __builtin_mul_overflow(index, esz, &rel) || off > (haddr_t)r->size || rel > stored - esz ||
      __builtin_add_overflow(rel, (int64_t)off, &pos) || pos > r->size - 4)
    return mmp_error_set(MMP_EDATA, "element %lld lies outside the file", (long long)index);
  uint64_t len = 0;
  if (read_le(r, pos, 4, &len) < 0) return MMP_EDATA;
  if ((int64_t)len > max || (int64_t)len > r->size)
    return mmp_error_set(MMP_EDATA, "claims %lld bytes (at most %lld, file %lld bytes)", (long long)len,
                         (long long)(max < r->size ? max : r->size), (long long)r->size);
  /* HDF5 1.10 copies @len bytes out of the heap object without comparing
   * them with the object's size (a read past its buffer for a corrupt
   * length): the object must hold them. It loads the collection even for an
   * empty element whose heap address is not zero (found by fuzz_story: a
   * collection that loops HDF5's loader behind an element of length 0). */
  return h5raw_check_heap_object(r, pos + 4, (int64_t)len);
}
