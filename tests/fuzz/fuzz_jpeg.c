/* tests/fuzz/fuzz_jpeg.c - libFuzzer harness: JPEG decoding as PIL does it
 * (plugins/processors/imagejpeg.c, libjpeg) through the signature dispatch
 * `pipeline fid` uses, then what the FID protocols do with the image: PIL's
 * resize (AR-LDM's 64x64 with bilinear, or another filter and size) and the
 * conversion to float.
 *
 * Input: two option bytes (filter and whether to call the JPEG decoder
 * directly; target side), then the JPEG file. */
#include "plugins/processors/imagecommon.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  mmp_image_t im = {0}, out = {0};
  mmp_resample_t filter = (mmp_resample_t)(data[0] % 5);
  int rc = data[0] & 0x80 ? mmp_image_jpeg_decode(data + 2, size - 2, &im) : mmp_image_decode(data + 2, size - 2, &im);
  if (rc == 0) {
    if (im.w < 1 || im.h < 1 || im.c != 3 || !im.data) abort(); /* a decoded image is usable */
    /* a decoded image never exceeds what its bytes can hold */
    if ((uint64_t)im.w * (uint64_t)im.h > (uint64_t)size * 512u) abort();
    int side = data[1] & 1 ? 64 : 1 + data[1] % 80;
    if ((int64_t)im.w * im.h <= 1 << 20 && mmp_image_resize(&im, side, side, filter, &out) == 0) {
      static const float half[3] = {0.5f, 0.5f, 0.5f};
      float *f = malloc((size_t)out.w * out.h * 3 * sizeof *f);
      if (f) mmp_image_to_float(&out, half, half, f);
      free(f);
    }
  }
  mmp_image_clear(&im);
  mmp_image_clear(&out);
  mmp_error_clear();
  return 0;
}
