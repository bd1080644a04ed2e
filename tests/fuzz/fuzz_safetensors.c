/* tests/fuzz/fuzz_safetensors.c - libFuzzer harness: a .safetensors file
 * (core/safetensors.c): open, every name, info and metadata entry, every
 * tensor as stored and converted to f32, and the whole-file map loader. */
#include <mmpipe/safetensors.h>

#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[PATH_MAX];
  fuzz_write("input.safetensors", data, size, path, sizeof path);
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (st) {
    for (size_t i = 0; i < mmp_safetensors_metadata_count(st); i++) {
      const char *k = mmp_safetensors_metadata_key(st, i);
      if (k) (void)mmp_safetensors_metadata(st, k);
    }
    for (size_t i = 0; i < mmp_safetensors_count(st); i++) {
      const char *name = mmp_safetensors_name(st, i);
      mmp_dtype_t dt;
      int ndim;
      int64_t shape[MMP_MAX_DIMS];
      if (!name || mmp_safetensors_info(st, name, &dt, &ndim, shape) < 0) continue;
      mmp_tensor_t *t = mmp_safetensors_get(st, name, cpu, MMP_DTYPE_COUNT);
      if (t) (void)mmp_tensor_numel(t);
      mmp_tensor_unref(t);
      mmp_tensor_unref(mmp_safetensors_get(st, name, cpu, MMP_F32));
    }
    mmp_safetensors_close(st);
  }
  mmp_tensormap_t *m = mmp_tensormap_new();
  (void)mmp_safetensors_load_map(path, cpu, true, m);
  mmp_tensormap_free(m);
  mmp_error_clear();
  return 0;
}
