/* plugins/processors/imagejpeg.c - JPEG decoding as PIL's Image.open(...).convert('RGB') does it (libjpeg-turbo). */
#include "config.h"

#include "plugins/processors/imagecommon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#ifdef HAVE_JPEG
#include <jpeglib.h>
#include <jerror.h>
#include <setjmp.h>

/* Largest accepted side (PIL's own limit is larger; no dataset comes near). */
#define MAX_SIDE 32768
/* A JPEG codes an 8x8 block in no less than a couple of bits, so the bytes
 * of a file bound the pixels it can really hold; a header claiming more is
 * refused before libjpeg allocates for it. */
#define MAX_PIXELS_PER_BYTE 512u
#define MAX_PIXELS ((uint64_t)256 << 20)

typedef struct jerr {
  struct jpeg_error_mgr pub;
  jmp_buf jmp;
  int truncated;
  char msg[JMSG_LENGTH_MAX];
} jerr_t;

static void on_error_exit(j_common_ptr cinfo) {
  jerr_t *e = (jerr_t *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jmp, 1);
}

/* Warnings are ignored as PIL ignores them, except the end of the data
 * before the image is complete: PIL reports such a file as truncated. */
static void on_emit_message(j_common_ptr cinfo, int level) {
  jerr_t *e = (jerr_t *)cinfo->err;
  if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) e->truncated = 1;
}

bool mmp_image_jpeg_available(void) { return true; }

int mmp_image_jpeg_decode(const uint8_t *buf, size_t n, mmp_image_t *out) {
  if (!buf || !out) return mmp_error_set(MMP_EINVAL, "jpeg: bad arguments");
  if (n < 3 || buf[0] != 0xFF || buf[1] != 0xD8 || buf[2] != 0xFF)
    return mmp_error_set(MMP_EDATA, "not a JPEG image (%zu bytes, bad signature)", n);
  if (n > (size_t)0xFFFFFFFFu) return mmp_error_set(MMP_EDATA, "JPEG of %zu bytes is too large", n);
  struct jpeg_decompress_struct cinfo;
  jerr_t err;
  memset(&err, 0, sizeof err);
  mmp_image_t im = {0};
  mmp_image_t *volatile imp = &im;
  const char *volatile refusal = NULL;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error_exit;
  err.pub.emit_message = on_emit_message;
  if (setjmp(err.jmp)) {
    jpeg_destroy_decompress(&cinfo);
    mmp_image_clear(imp);
    if (refusal) return mmp_error_set(MMP_EDATA, "%s", refusal);
    return mmp_error_set(MMP_EDATA, "undecodable JPEG: %s", err.msg);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, buf, (unsigned long)n);
  jpeg_read_header(&cinfo, TRUE);
  uint64_t px = (uint64_t)cinfo.image_width * cinfo.image_height;
  if (cinfo.image_width == 0 || cinfo.image_height == 0 || cinfo.image_width > MAX_SIDE ||
      cinfo.image_height > MAX_SIDE || px > MAX_PIXELS || px / MAX_PIXELS_PER_BYTE > n) {
    refusal = "JPEG header claims more pixels than the file can hold (or over 32768 per side)";
    longjmp(err.jmp, 1);
  }
  switch (cinfo.jpeg_color_space) {
  case JCS_GRAYSCALE:
  case JCS_YCbCr:
  case JCS_RGB: cinfo.out_color_space = JCS_RGB; break;
  default:
    refusal = "JPEG in CMYK or YCCK: not supported (convert it to RGB first)";
    longjmp(err.jmp, 1);
  }
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3) {
    refusal = "JPEG did not decode to three channels";
    longjmp(err.jmp, 1);
  }
  if (mmp_image_alloc(&im, (int)cinfo.output_width, (int)cinfo.output_height, 3) < 0) {
    refusal = "out of memory";
    longjmp(err.jmp, 1);
  }
  while (cinfo.output_scanline < cinfo.output_height && !err.truncated) {
    JSAMPROW row = im.data + (size_t)cinfo.output_scanline * im.w * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  if (err.truncated) {
    refusal = "truncated JPEG (the data ends before the image does)";
    longjmp(err.jmp, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  mmp_image_clear(out);
  *out = im;
  return 0;
}

#else /* !HAVE_JPEG */

bool mmp_image_jpeg_available(void) { return false; }

int mmp_image_jpeg_decode(const uint8_t *buf, size_t n, mmp_image_t *out) {
  (void)buf;
  (void)n;
  (void)out;
  return mmp_error_set(MMP_EUNSUPPORTED, "built without libjpeg: JPEG images cannot be read "
                                         "(install libjpeg62-turbo-dev and reconfigure)");
}

#endif
