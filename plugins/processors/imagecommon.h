/* plugins/processors/imagecommon.h - uint8 RGB images: PNG I/O and PIL/torchvision-exact transforms.
 *
 * Shared by the image_resize processor, the story datasets, the retrieval
 * and features tasks and the `pipeline dataset` command through the noinst convenience library
 * plugins/processors/libimagecommon.la (not installed, not part of the ABI).
 *
 *   mmp_image_t im = {0}, small = {0};
 *   if (mmp_image_png_decode(bytes, n, true, &im) < 0) ...   // OpenCV PNG -> RGB
 *   mmp_image_resize(&im, 224, 224, MMP_RESAMPLE_BILINEAR, &small);  // == PIL
 *   mmp_image_clear(&im); mmp_image_clear(&small);
 *
 * All functions return 0 or a negative MMP_E* code with mmp_error_set();
 * output images are (re)allocated by the callee and owned by the caller.
 */
#ifndef MMPIPE_PLUGINS_IMAGECOMMON_H
#define MMPIPE_PLUGINS_IMAGECOMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An interleaved 8-bit image, rows top to bottom, @c channels per pixel
 * (always 3 = RGB after decoding). */
typedef struct mmp_image {
  int w, h, c;
  uint8_t *data; /* w * h * c bytes, owned */
} mmp_image_t;

/* PIL's resampling filters (Image.BILINEAR, Image.BICUBIC, ...). */
typedef enum mmp_resample {
  MMP_RESAMPLE_BILINEAR = 0,
  MMP_RESAMPLE_BICUBIC,
  MMP_RESAMPLE_BOX,
  MMP_RESAMPLE_HAMMING,
  MMP_RESAMPLE_LANCZOS
} mmp_resample_t;

/* Parse "bilinear", "bicubic", "box", "hamming", "lanczos" (no "nearest":
 * PIL does that with an affine transform, not implemented). */
int mmp_resample_parse(const char *s, mmp_resample_t *out);
const char *mmp_resample_name(mmp_resample_t r);

/* Allocate @im as w x h x c (contents undefined). */
int mmp_image_alloc(mmp_image_t *im, int w, int h, int c);
/* Free the pixels and zero the struct; safe on a zeroed struct. */
void mmp_image_clear(mmp_image_t *im);

/* Decode PNG bytes to 8-bit RGB as OpenCV's imdecode(IMREAD_COLOR) does
 * (palette and grey expanded, 16-bit stripped to 8, alpha dropped, no gamma
 * handling). @swap_rb swaps red and blue: files written by cv2.imencode from
 * an RGB array store it as BGR, so swap_rb = true gives the original RGB.
 * Errors: MMP_EDATA (not a PNG, truncated, corrupt) with libpng's message. */
int mmp_image_png_decode(const uint8_t *buf, size_t n, bool swap_rb, mmp_image_t *out);
/* Decode JPEG bytes (baseline or progressive; YCbCr, RGB or grey) to 8-bit
 * RGB as PIL's Image.open(f).convert('RGB') does with the same libjpeg:
 * libjpeg's defaults (integer IDCT, fancy upsampling), grey replicated, no
 * EXIF rotation. Data ending before the last scan is an error (PIL: "image
 * file is truncated"); corrupt data libjpeg recovers from is not (PIL goes
 * on too). Only in builds with libjpeg (HAVE_JPEG in config.h).
 * Errors: MMP_EDATA (not a JPEG, truncated, corrupt, larger than its bytes
 * can hold), MMP_EUNSUPPORTED (CMYK, YCCK), MMP_ENOMEM. */
int mmp_image_jpeg_decode(const uint8_t *buf, size_t n, mmp_image_t *out);
/* PNG (OpenCV's rules, no swap) or JPEG (PIL's), chosen by the signature.
 * MMP_EUNSUPPORTED for a JPEG in a build without libjpeg. */
int mmp_image_decode(const uint8_t *buf, size_t n, mmp_image_t *out);
/* Read and decode a PNG file (as mmp_image_png_decode; an ordinary RGB
 * PNG wants @swap_rb = false, like PIL's Image.open(p).convert("RGB")).
 * MMP_EIO naming the file, MMP_EDATA prefixed with it. */
int mmp_image_png_load(const char *path, bool swap_rb, mmp_image_t *out);
/* Read and decode a PNG or JPEG file, chosen by its signature (as
 * mmp_image_decode): the pixels of PIL's Image.open(p).convert("RGB") for
 * ordinary RGB, grey or palette PNGs and for JPEGs. MMP_EIO naming the file;
 * the decoder's errors (MMP_EDATA, MMP_EUNSUPPORTED) prefixed with it. */
int mmp_image_load(const char *path, mmp_image_t *out);
/* Whether @name ends in .png, .jpg or .jpeg (any case): the files an image
 * folder is listed for. */
bool mmp_image_name_known(const char *name);
/* Write @im (c = 3 RGB or 1 grey) as an ordinary PNG file, atomically (mmpipe/file.h). MMP_EIO. */
int mmp_image_png_write(const mmp_image_t *im, const char *path);
/* Write @im (c = 3) with @n text chunks keys[i] = vals[i] (tEXt for ASCII
 * values, uncompressed iTXt for UTF-8 ones), before the pixel data,
 * atomically: to a temporary file beside @path, then renamed (an interrupted
 * run leaves no partial file under @path). MMP_EIO. */
int mmp_image_png_write_text(const mmp_image_t *im, const char *path, const char *const *keys,
                             const char *const *vals, int n);

/* The value of text chunk @key among the chunks before the first IDAT of
 * the PNG bytes @buf (tEXt Latin-1 converted to UTF-8, or uncompressed
 * iTXt; compressed chunks are passed over): 1 and *@out (transfer full:
 * free), 0 when there is none (*@out NULL), MMP_EDATA for a bad signature or
 * a chunk running past the end. mmp_image_png_file_text reads the chunks
 * before the first IDAT of a file (at most 4 MiB; MMP_EIO naming it). */
int mmp_image_png_text(const uint8_t *buf, size_t n, const char *key, char **out);
int mmp_image_png_file_text(const char *path, const char *key, char **out);

/* Encode @im (c = 3) as PNG bytes in memory with OpenCV's imencode
 * defaults: the Sub filter on every row, zlib's run-length matching
 * (Z_RLE). @level -1: mmpipe's fast encoder (deflaterle.h; other bytes than
 * OpenCV's, the same pixels); 0-9: libpng and zlib at that level (level 1:
 * the bytes of cv2.imencode with the same zlib). @swap_rb stores
 * the channels as B, G, R: what cv2.imencode writes for an RGB array (the
 * layout of AR-LDM's HDF5 files). (transfer full: free(*bytes)) */
int mmp_image_png_encode(const mmp_image_t *im, bool swap_rb, int level, uint8_t **bytes,
                         size_t *n);

/* Whether this build decodes JPEG (libjpeg found by configure); without
 * it mmp_image_jpeg_decode() is MMP_EUNSUPPORTED for every call. */
bool mmp_image_jpeg_available(void);

/* PIL's Image.resize(size=(w, h), resample) for 8-bit images: separable
 * convolution whose support grows with the downscale factor (antialiasing),
 * 22-bit fixed-point coefficients, horizontal pass first and an 8-bit
 * clipped intermediate image, then the vertical pass. Same size = copy. */
int mmp_image_resize(const mmp_image_t *in, int w, int h, mmp_resample_t filter,
                     mmp_image_t *out);

/* torchvision's output size for Resize(size) with one int: the shorter side
 * becomes @size, the longer int(size * long / short). */
void mmp_image_resize_short_side(int w, int h, int size, int *ow, int *oh);

/* Crop the window (x, y, w, h); parts outside the image are zero (the
 * padding torchvision's crops apply). */
int mmp_image_crop(const mmp_image_t *in, int x, int y, int w, int h, mmp_image_t *out);
/* torchvision CenterCrop offsets: round((H - h) / 2) with Python's
 * round-half-to-even; negative when padding is needed. */
void mmp_image_center_offsets(int in_w, int in_h, int w, int h, int *x, int *y);

/* uint8 HWC -> float CHW: v / 255 (float32), then for each channel
 * (v - mean[c]) / std[c] when @mean/@std are non-NULL, exactly in the order
 * and precision of torchvision's ToTensor + Normalize. @out holds
 * c * h * w floats. */
void mmp_image_to_float(const mmp_image_t *in, const float *mean, const float *std,
                        float *out);
/* uint8 HWC -> uint8 CHW. */
void mmp_image_to_chw(const mmp_image_t *in, uint8_t *out);

#endif
