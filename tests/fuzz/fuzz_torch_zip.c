/* tests/fuzz/fuzz_torch_zip.c - libFuzzer harness: a whole torch.save file (core/checkpoint.c): the
 * container (zip through libzip with data.pkl, data/<key>, byteorder and version records, and the
 * location of stored records in the file; or the legacy format), then every tensor as stored and as
 * bf16, every plain value, in lenient and strict mode and with a prefix. The input is the file. */
#include <mmpipe/checkpoint.h>

#include "tests/fuzz/fuzz.h"


int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  static const char *const prefixes[] = {NULL, "state_dict.", "nested.a."};
  for (int p = 0; p < 4; p++) {
    mmp_checkpoint_t *ck =
        mmp_checkpoint_open_memory(data, size, "fuzz", prefixes[p % 3], p == 3 ? MMP_CKPT_STRICT : 0);
    if (!ck) continue;
    for (size_t i = 0; i < mmp_checkpoint_count(ck); i++) {
      const char *name = mmp_checkpoint_name(ck, i);
      mmp_dtype_t dt;
      int nd;
      int64_t shape[MMP_MAX_DIMS];
      const char *stored;
      size_t nbytes;
      if (mmp_checkpoint_info(ck, name, &dt, &nd, shape, &stored, &nbytes) < 0) continue;
      mmp_tensor_t *t = mmp_checkpoint_get(ck, name, cpu, MMP_DTYPE_COUNT);
      if (t && mmp_tensor_nbytes(t) != (size_t)mmp_tensor_numel(t) * mmp_dtype_size(t->dtype)) abort();
      mmp_tensor_unref(t);
      mmp_tensor_unref(mmp_checkpoint_get(ck, name, cpu, MMP_BF16));
    }
    for (size_t i = 0; i < mmp_checkpoint_value_count(ck); i++)
      (void)strlen(mmp_checkpoint_value_name(ck, i)), (void)strlen(mmp_checkpoint_value_text(ck, i));
    mmp_checkpoint_close(ck);
  }
  mmp_error_clear();
  return 0;
}
