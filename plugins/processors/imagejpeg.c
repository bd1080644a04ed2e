/* plugins/processors/imagejpeg.c - JPEG decoding as PIL's Image.open(...).convert('RGB') does it (libjpeg). */
#include "config.h"

#include "plugins/processors/imagecommon.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#include <mmpipe/error.h>

/* Largest accepted side (as for PNG). */
#define MAX_SIDE 32768
/* Every 8x8 block of every component costs at least one bit of entropy-coded
 * data (its DC code), so a file of n bytes holds at most 512 n pixels; a
 * small file cannot make the decoder allocate a huge image. */
#define PIXELS_PER_BYTE 512u
/* Progressive files may repeat scans; each costs a pass over the image
 * (libjpeg-turbo's own fuzzers stop at 500 as well). */
#define MAX_SCANS 500

typedef struct jpeg_src {
  struct jpeg_error_mgr err; /* first: libjpeg's callbacks receive it */
  struct jpeg_progress_mgr progress;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX];
} jpeg_src_t;

static void on_jpeg_error(j_common_ptr cinfo) {
  jpeg_src_t *src = (jpeg_src_t *)cinfo->err;
  if (!src->msg[0]) cinfo->err->format_message(cinfo, src->msg);
  longjmp(src->jump, 1);
}

/* Warnings (corrupt data libjpeg recovers from) are not errors: PIL goes
 * on as well. Nothing is printed. */
static void on_jpeg_message(j_common_ptr cinfo) { (void)cinfo; }

static void on_progress(j_common_ptr cinfo) {
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  jpeg_src_t *src = (jpeg_src_t *)cinfo->err;
  if (d->input_scan_number > MAX_SCANS) {
    snprintf(src->msg, sizeof src->msg, "more than %d progressive scans", MAX_SCANS);
    longjmp(src->jump, 1);
  }
}

/* The memory source: libjpeg's jpeg_mem_src, except that running out of
 * data is an error (PIL: "image file is truncated") where libjpeg would
 * insert an end-of-image marker and decode grey. */
static void src_init(j_decompress_ptr cinfo) { (void)cinfo; }

static boolean src_fill(j_decompress_ptr cinfo) {
  jpeg_src_t *src = (jpeg_src_t *)cinfo->err;
  snprintf(src->msg, sizeof src->msg, "truncated JPEG data");
  longjmp(src->jump, 1);
  return FALSE;
}

static void src_skip(j_decompress_ptr cinfo, long n) {
  struct jpeg_source_mgr *s = cinfo->src;
  if (n <= 0) return;
  if ((size_t)n > s->bytes_in_buffer) src_fill(cinfo);
  s->next_input_byte += n;
  s->bytes_in_buffer -= (size_t)n;
}

static void src_term(j_decompress_ptr cinfo) { (void)cinfo; }

int mmp_image_jpeg_decode(const uint8_t *buf, size_t n, mmp_image_t *out) {
  if (!buf || !out) return mmp_error_set(MMP_EINVAL, "jpeg: bad arguments");
  if (n < 3 || buf[0] != 0xFF || buf[1] != 0xD8 || buf[2] != 0xFF)
    return mmp_error_set(MMP_EDATA, "not a JPEG image (%zu bytes, bad signature)", n);
  struct jpeg_decompress_struct cinfo;
  struct jpeg_source_mgr mem;
  /* volatile: modified between setjmp and a possible longjmp */
  jpeg_src_t src;
  mmp_image_t im = {0};
  mmp_image_t *volatile imp = &im;
  volatile int rc = MMP_EDATA;
  memset(&src, 0, sizeof src);
  memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = jpeg_std_error(&src.err);
  src.err.error_exit = on_jpeg_error;
  src.err.output_message = on_jpeg_message;
  if (setjmp(src.jump)) {
    mmp_image_clear(imp);
    jpeg_destroy_decompress(&cinfo);
    if (rc == MMP_EUNSUPPORTED || rc == MMP_ENOMEM) return mmp_error_set(rc, "JPEG: %s", src.msg);
    return mmp_error_set(MMP_EDATA, "undecodable JPEG: %s", src.msg[0] ? src.msg : "error");
  }
  jpeg_create_decompress(&cinfo);
  memset(&mem, 0, sizeof mem);
  mem.init_source = src_init;
  mem.fill_input_buffer = src_fill;
  mem.skip_input_data = src_skip;
  mem.resync_to_restart = jpeg_resync_to_restart;
  mem.term_source = src_term;
  mem.next_input_byte = buf;
  mem.bytes_in_buffer = n;
  cinfo.src = &mem;
  src.progress.progress_monitor = on_progress;
  cinfo.progress = &src.progress;
  jpeg_read_header(&cinfo, TRUE);
  JDIMENSION w = cinfo.image_width, h = cinfo.image_height;
  if (w < 1 || h < 1 || w > MAX_SIDE || h > MAX_SIDE) {
    snprintf(src.msg, sizeof src.msg, "image size %ux%u outside 1..%d", (unsigned)w, (unsigned)h, MAX_SIDE);
    longjmp(src.jump, 1);
  }
  if ((uint64_t)w * h > (uint64_t)n * PIXELS_PER_BYTE) {
    snprintf(src.msg, sizeof src.msg, "a %ux%u image cannot fit in %zu bytes", (unsigned)w, (unsigned)h, n);
    longjmp(src.jump, 1);
  }
  /* PIL: 1 component = mode L (convert('RGB') replicates it), 3 = RGB
   * (libjpeg's own guess of YCbCr or RGB); CMYK and YCCK would need PIL's
   * CMYK -> RGB conversion, which is not implemented. libjpeg's defaults
   * otherwise (slow integer IDCT, fancy upsampling), as PIL without draft(). */
  if (cinfo.num_components == 1) {
    cinfo.out_color_space = JCS_GRAYSCALE;
  } else if (cinfo.num_components == 3 &&
             (cinfo.jpeg_color_space == JCS_YCbCr || cinfo.jpeg_color_space == JCS_RGB)) {
    cinfo.out_color_space = JCS_RGB;
  } else {
    rc = MMP_EUNSUPPORTED;
    snprintf(src.msg, sizeof src.msg, "%d-component (color space %d) images are not supported (RGB and grey only)",
             cinfo.num_components, (int)cinfo.jpeg_color_space);
    longjmp(src.jump, 1);
  }
  jpeg_start_decompress(&cinfo);
  int oc = cinfo.output_components;
  if ((oc != 1 && oc != 3) || cinfo.output_width != w || cinfo.output_height != h) {
    snprintf(src.msg, sizeof src.msg, "unexpected output layout");
    longjmp(src.jump, 1);
  }
  if (mmp_image_alloc(&im, (int)w, (int)h, 3) < 0) {
    rc = MMP_ENOMEM;
    snprintf(src.msg, sizeof src.msg, "out of memory for a %ux%u image", (unsigned)w, (unsigned)h);
    longjmp(src.jump, 1);
  }
  while (cinfo.output_scanline < h) {
    uint8_t *row = im.data + (size_t)cinfo.output_scanline * w * 3;
    JSAMPROW rows[1] = {row};
    if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
      snprintf(src.msg, sizeof src.msg, "truncated JPEG data");
      longjmp(src.jump, 1);
    }
    if (oc == 1) /* grey, written into the row's first third: replicate from the end */
      for (JDIMENSION x = w; x-- > 0;) row[3 * x] = row[3 * x + 1] = row[3 * x + 2] = row[x];
  }
  /* the pixels are complete; what follows the last scan (the EOI marker)
   * is not read, as PIL does not need it either */
  jpeg_destroy_decompress(&cinfo);
  mmp_image_clear(out);
  *out = im;
  return 0;
}
