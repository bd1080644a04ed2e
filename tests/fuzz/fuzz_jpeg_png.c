/* tests/fuzz/fuzz_jpeg_png.c - libFuzzer harness: JPEG decoding (PIL's rules through libjpeg,
 * plugins/processors/imagejpeg.c), then the PNG encoding `pipeline dataset build` applies
 * to the result, decoded again: the round trip must give the same pixels.
 *
 * Input: one option byte (swap_rb), then the JPEG file. */
#include "plugins/processors/imagecommon.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  bool swap = data[0] & 1;
  mmp_image_t im = {0}, back = {0};
  if (mmp_image_jpeg_decode(data + 1, size - 1, &im) == 0) {
    if (im.w < 1 || im.h < 1 || im.c != 3 || !im.data) abort(); /* a decoded image is usable */
    uint8_t *png = NULL;
    size_t n = 0;
    if ((int64_t)im.w * im.h <= 1 << 20 && mmp_image_png_encode(&im, swap, -1, &png, &n) == 0) {
      if (mmp_image_png_decode(png, n, swap, &back) != 0) abort(); /* our own PNG must decode */
      if (back.w != im.w || back.h != im.h || memcmp(back.data, im.data, (size_t)im.w * im.h * 3) != 0)
        abort(); /* and give the pixels back */
    }
    free(png);
  }
  mmp_image_clear(&im);
  mmp_image_clear(&back);
  mmp_error_clear();
  return 0;
}
