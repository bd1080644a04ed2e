/* tests/test_core_cuda_select.c - device selection: "cuda" is the GPU or a clear MMP_EDEVICE, "auto" falls back to the CPU. */
#include <string.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/tensor.h>

#include "tap.h"

int main(void) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_error_clear();
  mmp_backend_t *gpu = mmp_backend_get("cuda");
  if (gpu) {
    ok(mmp_backend_device(gpu) == MMP_DEVICE_CUDA, "\"cuda\": the CUDA backend");
    is_str(mmp_backend_name(gpu), "cuda", "  named cuda");
    ok(mmp_backend_get("auto") == gpu, "\"auto\": CUDA when a device exists");
    ok(mmp_backend_get("cuda") == gpu, "the backend is a singleton");
  } else {
    is_int(mmp_error_code(), MMP_EDEVICE, "\"cuda\" without a device: MMP_EDEVICE");
    like(mmp_error_last(), "no CUDA device: ", "  message: %s", mmp_error_last());
    mmp_backend_t *a = mmp_backend_get("auto");
    ok(a == cpu, "\"auto\" without a device falls back to the CPU");
    is_int(mmp_error_code(), MMP_OK, "  and leaves no error behind");
    ok(mmp_backend_get("auto") == cpu, "  every time");
    ok(mmp_backend_get("cuda") == NULL && mmp_error_code() == MMP_EDEVICE, "\"cuda\" keeps failing the same way");
  }
  ok(mmp_backend_get("tpu") == NULL && mmp_error_code() == MMP_ENOENT, "an unknown device name is MMP_ENOENT");
  return done_testing();
}
