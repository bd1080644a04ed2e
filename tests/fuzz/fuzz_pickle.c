/* tests/fuzz/fuzz_pickle.c - libFuzzer harness: the restricted pickle machine (core/pickle.c) and what
 * the checkpoint reader does with its values (core/checkpoint.c): the input runs as a sequence of
 * pickles in strict and lenient mode, then as the object of a legacy torch.save file (after a valid
 * magic number, protocol and sys-info), so that the tensor rebuilds, the walk over the saved object
 * (cycles, sharing, depth), the storage-key list and the raw storages behind it are all reached.
 * The input is the pickle bytes. */
#include <mmpipe/checkpoint.h>

#include "core/pickle.h"
#include "tests/fuzz/fuzz.h"

/* pickle.dumps(0x1950a86a20f9469cfc6c, 2), pickle.dumps(1001, 2),
 * pickle.dumps({'little_endian': True}, 2) */
static const uint8_t legacy_head[] = {
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
    0x80, 0x02, 0x4d, 0xe9, 0x03, 0x2e,
    0x80, 0x02, 0x7d, 0x71, 0x00, 0x58, 0x0d, 0x00, 0x00, 0x00, 'l', 'i', 't', 't', 'l', 'e', '_',
    'e', 'n', 'd', 'i', 'a', 'n', 0x71, 0x01, 0x88, 0x73, 0x2e};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

static void read_all(mmp_checkpoint_t *ck) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  for (size_t i = 0; i < mmp_checkpoint_count(ck); i++) {
    const char *name = mmp_checkpoint_name(ck, i);
    mmp_tensor_unref(mmp_checkpoint_get(ck, name, cpu, MMP_DTYPE_COUNT));
    mmp_tensor_unref(mmp_checkpoint_get(ck, name, cpu, MMP_F32));
  }
  for (size_t i = 0; i < mmp_checkpoint_value_count(ck); i++)
    (void)strlen(mmp_checkpoint_value_text(ck, i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int strict = 0; strict < 2; strict++) {
    pk_t *pk = pk_new(strict);
    size_t pos = 0;
    for (int k = 0; pk && k < 8 && pos < size; k++) {
      pk_value_t *v = pk_load(pk, data, size, &pos, "fuzz");
      if (!v) break;
      (void)pk_holds_tensor(v);
    }
    pk_free(pk);
  }
  uint8_t *file = malloc(sizeof legacy_head + size);
  if (!file) return 0;
  memcpy(file, legacy_head, sizeof legacy_head);
  if (size) memcpy(file + sizeof legacy_head, data, size);
  static const char *const prefixes[] = {NULL, "state_dict.", "0."};
  for (int p = 0; p < 3; p++) {
    mmp_checkpoint_t *ck =
        mmp_checkpoint_open_memory(file, sizeof legacy_head + size, "fuzz", prefixes[p], p == 2 ? MMP_CKPT_STRICT : 0);
    if (ck) read_all(ck);
    mmp_checkpoint_close(ck);
  }
  free(file);
  mmp_error_clear();
  return 0;
}
