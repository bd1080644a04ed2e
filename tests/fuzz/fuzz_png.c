/* tests/fuzz/fuzz_png.c - libFuzzer harness: PNG decoding (OpenCV's rules,
 * plugins/processors/imagepng.c) and the transforms image_resize and the
 * story datasets apply to the result (imagecommon.c): PIL resize with each
 * filter, short-side resize, centre crop with padding, to float and CHW;
 * and the text-chunk reader (mmp_image_png_text: tEXt / iTXt before IDAT).
 *
 * Input: four option bytes (filter and swap_rb; target width; height;
 * crop side), then the PNG file. */
#include "plugins/processors/imagecommon.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  mmp_image_t im = {0}, out = {0}, crop = {0};
  mmp_resample_t filter = (mmp_resample_t)(data[0] % 5);
  char *text = NULL;
  int found = mmp_image_png_text(data + 4, size - 4, (data[1] & 1) ? "caption" : "story", &text);
  if ((found == 1) != (text != NULL)) abort(); /* a value exactly when found */
  if (text) (void)strlen(text);              /* NUL-terminated */
  free(text);
  if (mmp_image_png_decode(data + 4, size - 4, data[0] & 0x80, &im) == 0) {
    if (im.w < 1 || im.h < 1 || im.c != 3 || !im.data) abort(); /* a decoded image is usable */
    int w = 1 + data[1] % 64, h = 1 + data[2] % 64, side = 1 + data[3] % 48;
    /* the work of a resize grows with the source; keep iterations fast */
    if ((int64_t)im.w * im.h <= 1 << 20) {
      if (mmp_image_resize(&im, w, h, filter, &out) == 0) {
        int ow, oh, x, y;
        mmp_image_resize_short_side(out.w, out.h, side, &ow, &oh);
        mmp_image_center_offsets(out.w, out.h, side, side, &x, &y);
        if (mmp_image_crop(&out, x, y, side, side, &crop) == 0) {
          static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
          static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
          float *f = malloc((size_t)crop.w * crop.h * 3 * sizeof *f);
          uint8_t *chw = malloc((size_t)crop.w * crop.h * 3);
          if (f) mmp_image_to_float(&crop, mean, std, f);
          if (chw) mmp_image_to_chw(&crop, chw);
          free(f);
          free(chw);
        }
      }
    }
  }
  mmp_image_clear(&im);
  mmp_image_clear(&out);
  mmp_image_clear(&crop);
  mmp_error_clear();
  return 0;
}
