/* plugins/processors/imagepng.c - PNG decoding as OpenCV's imdecode does it, and PNG writing (libpng, or the fast encoder). */
#include "plugins/processors/imagecommon.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <mmpipe/error.h>
#include <mmpipe/file.h>

#include "plugins/processors/deflaterle.h"

/* Largest accepted side. */
#define MAX_SIDE 32768
/* Deflate's largest compression ratio (zlib's technical notes: 1032:1):
 * the compressed bytes left in the file bound the pixel data it can hold,
 * so a small file cannot make the decoder allocate a huge image. */
#define DEFLATE_MAX_RATIO 1032u

typedef struct png_src {
  const uint8_t *buf;
  size_t n, pos;
  char msg[200];
} png_src_t;

static void on_png_error(png_structp png, png_const_charp msg) {
  png_src_t *src = png_get_error_ptr(png);
  snprintf(src->msg, sizeof src->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg; /* benign (e.g. unknown ancillary chunk); OpenCV ignores them too */
}

static void read_mem(png_structp png, png_bytep out, png_size_t len) {
  png_src_t *src = png_get_io_ptr(png);
  if (len > src->n - src->pos) png_error(png, "truncated PNG data");
  memcpy(out, src->buf + src->pos, len);
  src->pos += len;
}

int mmp_image_png_decode(const uint8_t *buf, size_t n, bool swap_rb, mmp_image_t *out) {
  if (!buf || !out) return mmp_error_set(MMP_EINVAL, "png: bad arguments");
  if (n < 8 || png_sig_cmp(buf, 0, 8) != 0)
    return mmp_error_set(MMP_EDATA, "not a PNG image (%zu bytes, bad signature)", n);
  /* volatile: modified between setjmp and a possible longjmp */
  png_src_t src = {.buf = buf, .n = n, .pos = 0, .msg = ""};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_png_error,
                                           on_png_warning);
  if (!png) return mmp_error_set(MMP_ENOMEM, "png: out of memory");
  png_infop info = png_create_info_struct(png);
  png_bytep *volatile rows = NULL;
  mmp_image_t im = {0};
  mmp_image_t *volatile imp = &im;
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return mmp_error_set(MMP_ENOMEM, "png: out of memory");
  }
  if (setjmp(png_jmpbuf(png))) {
    free(rows);
    mmp_image_clear(imp);
    png_destroy_read_struct(&png, &info, NULL);
    return mmp_error_set(MMP_EDATA, "undecodable PNG: %s", src.msg[0] ? src.msg : "error");
  }
  png_set_read_fn(png, &src, read_mem);
  png_set_user_limits(png, MAX_SIDE, MAX_SIDE);
  /* Ancillary chunks that the pixels do not depend on are skipped unread:
   * libpng allocates some of them (sPLT, the text chunks, pCAL, sCAL, eXIf)
   * at the length the file claims before reading them, 1.7 GiB for a
   * 100-byte file with a corrupt sPLT length, whatever the chunk-size limit
   * (libpng 1.6.39 reports that limit as a warning for ancillary chunks and
   * goes on). Skipped, they are read through in small pieces. */
  static const png_byte skipped[] = "sPLT\0tEXt\0zTXt\0iTXt\0iCCP\0eXIf\0pCAL\0sCAL\0tIME\0hIST\0oFFs\0pHYs\0sTER";
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skipped, (int)(sizeof skipped / 5));
  png_set_chunk_malloc_max(png, 8u << 20);
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, color = 0, interlace = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
  /* the filtered rows as stored: one filter byte and the packed pixels each
   * (interlacing only adds to this) */
  uint64_t raw = (uint64_t)h * (1 + (uint64_t)png_get_rowbytes(png, info));
  uint64_t left = src.n - src.pos;
  if (raw / DEFLATE_MAX_RATIO > left) {
    char msg[160];
    snprintf(msg, sizeof msg,
             "truncated: a %ux%u image needs at least %llu bytes of compressed data, %llu left",
             (unsigned)w, (unsigned)h, (unsigned long long)(raw / DEFLATE_MAX_RATIO),
             (unsigned long long)left);
    png_error(png, msg);
  }
  /* OpenCV's IMREAD_COLOR: 8 bits, three channels, alpha dropped (not
   * composited), grey replicated, no gamma correction. */
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (swap_rb) png_set_bgr(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8)
    png_error(png, "unsupported pixel layout after conversion");
  if (mmp_image_alloc(&im, (int)w, (int)h, 3) < 0) png_error(png, "out of memory");
  rows = malloc(h * sizeof *rows);
  if (!rows) png_error(png, "out of memory");
  for (png_uint_32 y = 0; y < h; y++) rows[y] = im.data + (size_t)y * w * 3;
  png_read_image(png, rows);
  /* The IEND chunk and trailing CRCs are not needed for the pixels; OpenCV
   * does not insist on them either. */
  free(rows);
  rows = NULL;
  png_destroy_read_struct(&png, &info, NULL);
  mmp_image_clear(out);
  *out = im;
  return 0;
}

int mmp_image_png_write(const mmp_image_t *im, const char *path) {
  if (!im || !im->data || (im->c != 3 && im->c != 1))
    return mmp_error_set(MMP_EINVAL, "png: cannot write this image");
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_code();
  png_image p;
  memset(&p, 0, sizeof p);
  p.version = PNG_IMAGE_VERSION;
  p.width = (png_uint_32)im->w;
  p.height = (png_uint_32)im->h;
  p.format = im->c == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
  if (!png_image_write_to_stdio(&p, mmp_afile_stream(af), 0, im->data, 0, NULL)) {
    int rc = mmp_error_set(MMP_EIO, "cannot write PNG %s: %s", path, p.message);
    png_image_free(&p);
    mmp_afile_abort(af);
    return rc;
  }
  return mmp_afile_commit(af);
}

int mmp_image_png_write_text(const mmp_image_t *im, const char *path, const char *const *keys,
                             const char *const *vals, int n) {
  if (!im || !im->data || im->c != 3 || n < 0 || n > 32) return mmp_error_set(MMP_EINVAL, "png: cannot write this image");
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_code();
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  png_bytep *volatile rows = NULL;
  int rc = 0;
  if (!png || !info) {
    rc = mmp_error_set(MMP_ENOMEM, "png: out of memory");
  } else if (setjmp(png_jmpbuf(png))) {
    rc = mmp_error_set(MMP_EIO, "png: libpng failed writing %s", path);
  } else {
    png_init_io(png, mmp_afile_stream(af));
    png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_text text[32];
    memset(text, 0, sizeof text);
    for (int i = 0; i < n; i++) {
      /* tEXt holds Latin-1: a value with other bytes (UTF-8) goes in an iTXt chunk */
      bool ascii = true;
      for (const char *c = vals[i]; *c; c++) ascii &= (unsigned char)*c < 0x80;
      text[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
      text[i].key = (png_charp)keys[i];
      text[i].text = (png_charp)vals[i];
      text[i].lang = (png_charp)"";
      text[i].lang_key = (png_charp)"";
    }
    if (n) png_set_text(png, info, text, n);
    png_write_info(png, info);
    rows = malloc((size_t)im->h * sizeof *rows);
    if (!rows) png_error(png, "out of memory");
    for (int y = 0; y < im->h; y++) rows[y] = im->data + (size_t)y * im->w * 3;
    png_write_image(png, rows);
    png_write_end(png, info);
  }
  png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
  free(rows);
  if (rc) {
    mmp_afile_abort(af);
    return rc;
  }
  return mmp_afile_commit(af);
}

/* ---- encoding to memory ---- */

typedef struct png_sink {
  uint8_t *buf;
  size_t n, cap;
  int failed;
} png_sink_t;

static void write_mem(png_structp png, png_bytep data, png_size_t len) {
  png_sink_t *s = png_get_io_ptr(png);
  if (len > s->cap - s->n) {
    size_t cap = s->cap ? s->cap : 4096;
    while (cap - s->n < len) {
      if (cap > SIZE_MAX / 2) png_error(png, "PNG too large");
      cap *= 2;
    }
    uint8_t *b = realloc(s->buf, cap);
    if (!b) png_error(png, "out of memory");
    s->buf = b;
    s->cap = cap;
  }
  memcpy(s->buf + s->n, data, len);
  s->n += len;
}

static void flush_mem(png_structp png) { (void)png; }

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* The chunk whose @len data bytes follow its length and type at @p: the
 * length and the CRC written. Returns the bytes after it. */
static uint8_t *chunk_close(uint8_t *p, const char *type, size_t len) {
  put_be32(p, (uint32_t)len);
  memcpy(p + 4, type, 4);
  put_be32(p + 8 + len, (uint32_t)crc32(crc32(0L, Z_NULL, 0), p + 4, (uInt)(len + 4)));
  return p + 12 + len;
}

typedef uint8_t v16u8 __attribute__((vector_size(16), aligned(1)));

/* One row of @n bytes (RGB pixels) with PNG's Sub filter (each byte less
 * the one a pixel before) into @o, after its filter type byte; with
 * @swap_rb in B, G, R: the differences of swapped pixels are the swapped
 * differences, so the filter runs 16 bytes a step and then swaps R and B
 * in place, 8 pixels (three 64-bit words) a step. */
static void sub_filter_row(const uint8_t *s, size_t n, bool swap_rb, uint8_t *o) {
  *o++ = 1; /* PNG_FILTER_VALUE_SUB */
  size_t k = 0;
  for (; k < 3 && k < n; k++) o[k] = s[k];
  for (; k + 16 <= n; k += 16) {
    v16u8 a, b;
    memcpy(&a, s + k, 16);
    memcpy(&b, s + k - 3, 16);
    a -= b;
    memcpy(o + k, &a, 16);
  }
  for (; k < n; k++) o[k] = (uint8_t)(s[k] - s[k - 3]);
  if (!swap_rb) return;
  k = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  /* byte i of 24 holds channel i % 3: R takes the byte two above (the
   * 192 bits shifted down 16), B the byte two below, G stays */
  const uint64_t C0 = 0x00ff0000ff0000ffull, C1 = 0xff0000ff0000ff00ull, C2 = 0x0000ff0000ff0000ull;
  for (; k + 24 <= n; k += 24) {
    uint64_t w0, w1, w2;
    memcpy(&w0, o + k, 8);
    memcpy(&w1, o + k + 8, 8);
    memcpy(&w2, o + k + 16, 8);
    uint64_t r0 = ((w0 >> 16 | w1 << 48) & C0) | (w0 & C1) | (w0 << 16 & C2);
    uint64_t r1 = ((w1 >> 16 | w2 << 48) & C1) | (w1 & C2) | ((w1 << 16 | w0 >> 48) & C0);
    uint64_t r2 = (w2 >> 16 & C2) | (w2 & C0) | ((w2 << 16 | w1 >> 48) & C1);
    memcpy(o + k, &r0, 8);
    memcpy(o + k + 8, &r1, 8);
    memcpy(o + k + 16, &r2, 8);
  }
#endif
  for (; k + 3 <= n; k += 3) {
    uint8_t t = o[k];
    o[k] = o[k + 2];
    o[k + 2] = t;
  }
}

/* OpenCV's settings (the Sub filter, run-length matching) with the fast
 * encoder of deflaterle.c, the chunks written here: IHDR, one IDAT, IEND. */
static int png_encode_rle(const mmp_image_t *im, bool swap_rb, uint8_t **bytes, size_t *n) {
  size_t stride = (size_t)im->w * 3 + 1, raw = stride * (size_t)im->h;
  size_t cap = 8 + 25 + 12 + deflate_rle_bound(raw) + 12;
  uint8_t *f = malloc(raw), *out = malloc(cap);
  if (!f || !out) {
    free(f);
    free(out);
    return mmp_error_set(MMP_ENOMEM, "png: out of memory");
  }
  for (int y = 0; y < im->h; y++) sub_filter_row(im->data + (size_t)y * im->w * 3, (size_t)im->w * 3, swap_rb,
                                                  f + (size_t)y * stride);
  uint8_t *p = out;
  memcpy(p, "\x89PNG\r\n\x1a\n", 8);
  p += 8;
  put_be32(p + 8, (uint32_t)im->w);
  put_be32(p + 12, (uint32_t)im->h);
  memcpy(p + 16, "\x08\x02\x00\x00\x00", 5); /* 8 bits, RGB, deflate, adaptive filters, no interlace */
  p = chunk_close(p, "IHDR", 13);
  size_t zn = deflate_rle_zlib(f, raw, p + 8, cap - (size_t)(p - out) - 8 - 4 - 12);
  free(f);
  if (zn == 0) {
    free(out);
    return mmp_error_set(MMP_ENOMEM, "png: out of memory");
  }
  p = chunk_close(p, "IDAT", zn);
  p = chunk_close(p, "IEND", 0);
  *bytes = out;
  *n = (size_t)(p - out);
  return 0;
}

int mmp_image_png_encode(const mmp_image_t *im, bool swap_rb, int level, uint8_t **bytes,
                         size_t *n) {
  if (!im || !im->data || im->c != 3 || im->w <= 0 || im->h <= 0 || !bytes || !n)
    return mmp_error_set(MMP_EINVAL, "png: cannot encode this image");
  /* one IDAT chunk holds at most 2^31 - 1 bytes; larger images go through libpng */
  if (level < 0 && (size_t)im->h * ((size_t)im->w * 3 + 1) < ((size_t)1 << 30))
    return png_encode_rle(im, swap_rb, bytes, n);
  png_src_t err = {.msg = ""};
  png_sink_t sink = {0};
  png_sink_t *volatile sp = &sink;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error, on_png_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!info) {
    if (png) png_destroy_write_struct(&png, NULL);
    return mmp_error_set(MMP_ENOMEM, "png: out of memory");
  }
  if (setjmp(png_jmpbuf(png))) {
    free(sp->buf);
    png_destroy_write_struct(&png, &info);
    return mmp_error_set(MMP_ENOMEM, "cannot encode PNG: %s", err.msg[0] ? err.msg : "error");
  }
  png_set_write_fn(png, sp, write_mem, flush_mem);
  /* OpenCV's imencode('.png') defaults (grfmt_png.cpp, no IMWRITE_PNG_COMPRESSION given): the Sub
   * filter on every row, zlib level 1 (Z_BEST_SPEED) with the RLE strategy. One fixed filter also
   * spares libpng's adaptive choice, which tries all five filters on every row (most of the
   * encoding time). */
  png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_compression_level(png, level < 0 ? 1 : level > 9 ? 9 : level);
  png_set_compression_strategy(png, 3 /* Z_RLE */);
  png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  if (swap_rb) png_set_bgr(png);
  for (int y = 0; y < im->h; y++) png_write_row(png, im->data + (size_t)y * im->w * 3);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  *bytes = sink.buf;
  *n = sink.n;
  return 0;
}

/* ---- text chunks ---- */

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Latin-1 bytes as UTF-8 (a tEXt value); @n bytes (transfer full). */
static char *latin1_to_utf8(const uint8_t *s, size_t n) {
  char *o = malloc(2 * n + 1), *p = o;
  if (!o) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < 0x80) {
      *p++ = (char)s[i];
    } else {
      *p++ = (char)(0xC0 | s[i] >> 6);
      *p++ = (char)(0x80 | (s[i] & 0x3F));
    }
  }
  *p = '\0';
  return o;
}

int mmp_image_png_text(const uint8_t *buf, size_t n, const char *key, char **out) {
  if (!buf || !key || !out) return mmp_error_set(MMP_EINVAL, "png: bad arguments");
  *out = NULL;
  if (n < 8 || png_sig_cmp(buf, 0, 8) != 0) return mmp_error_set(MMP_EDATA, "not a PNG image (bad signature)");
  size_t kl = strlen(key), pos = 8;
  while (n - pos >= 8) {
    uint32_t len = be32(buf + pos);
    const uint8_t *type = buf + pos + 4, *d = buf + pos + 8;
    if (len > n - pos - 8) return mmp_error_set(MMP_EDATA, "truncated PNG chunk (%u bytes claimed, %zu left)", len, n - pos - 8);
    if (!memcmp(type, "IDAT", 4) || !memcmp(type, "IEND", 4)) break;
    /* key, NUL, then the value: tEXt Latin-1; iTXt uncompressed UTF-8 after the
     * compression flag and method, the language tag and the translated key */
    bool t = !memcmp(type, "tEXt", 4), it = !memcmp(type, "iTXt", 4);
    if ((t || it) && len > kl && memcmp(d, key, kl) == 0 && d[kl] == 0) {
      const uint8_t *v = d + kl + 1, *end = d + len;
      if (t) {
        if (!(*out = latin1_to_utf8(v, (size_t)(end - v)))) return mmp_error_set(MMP_ENOMEM, "out of memory");
        return 1;
      }
      if (end - v >= 2 && v[0] == 0) { /* compressed values are not written by mmpipe: looked past */
        const uint8_t *lang = v + 2, *z1 = memchr(lang, 0, (size_t)(end - lang));
        const uint8_t *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
        if (z2) {
          size_t vl = (size_t)(end - z2 - 1);
          if (!(*out = malloc(vl + 1))) return mmp_error_set(MMP_ENOMEM, "out of memory");
          memcpy(*out, z2 + 1, vl);
          (*out)[vl] = '\0';
          return 1;
        }
      }
    }
    if (n - pos - 8 - len < 4) break; /* no CRC */
    pos += 12 + (size_t)len;
  }
  return 0;
}

int mmp_image_png_file_text(const char *path, const char *key, char **out) {
  if (!path || !out) return mmp_error_set(MMP_EINVAL, "png: bad arguments");
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "%s: %s", path, strerror(errno));
  /* the chunks before the first IDAT (where mmpipe writes its text), at most 4 MiB */
  size_t n = 0, cap = 1 << 16, limit = 4u << 20;
  uint8_t *buf = malloc(cap);
  int rc = buf ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc == 0 && fread(buf, 1, 8, f) != 8) rc = mmp_error_set(MMP_EDATA, "%s: not a PNG image (too short)", path);
  n = 8;
  while (rc == 0) {
    uint8_t h[8];
    if (fread(h, 1, 8, f) != 8) break;
    uint32_t len = be32(h);
    bool stop = !memcmp(h + 4, "IDAT", 4) || !memcmp(h + 4, "IEND", 4);
    size_t need = 8 + (stop ? 0 : (size_t)len + 4);
    if (n + need > limit) break;
    if (n + need > cap) {
      while (n + need > cap) cap *= 2;
      uint8_t *nb = realloc(buf, cap);
      if (!nb) {
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
        break;
      }
      buf = nb;
    }
    memcpy(buf + n, h, 8);
    n += 8;
    if (stop) break;
    size_t got = fread(buf + n, 1, need - 8, f);
    if (got != need - 8) { /* a truncated file: the complete chunks before it */
      n -= 8;
      break;
    }
    n += got;
  }
  fclose(f);
  if (rc == 0 && (rc = mmp_image_png_text(buf, n, key, out)) < 0) mmp_error_prefix("%s: ", path);
  free(buf);
  return rc;
}
