/* tests/fuzz/fuzz_train.c - libFuzzer harness: what the train task reads besides safetensors:
 * the caption list (`image<TAB>caption` lines, plugins/common/train_data.c)
 * and a checkpoint's generator state (mmp_rng_set_state, core/rng.c), after
 * which the generator must still draw.
 *
 * Input: an option byte (bit 0: the caption list or a generator state; bit
 * 1: the torch or the philox generator), then the bytes. */
#include <mmpipe/rng.h>

#include "plugins/common/train_data.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *body = (const char *)data + 1;
  size_t n = size - 1;
  if (data[0] & 1) {
    mmp_rng_t *g = mmp_rng_new(7, (data[0] & 2) ? MMP_RNG_PHILOX : MMP_RNG_TORCH);
    if (!g) abort();
    if (mmp_rng_set_state(g, body, n) == 0) {
      /* an accepted state draws, and reads back as it was given */
      uint8_t back[MMP_RNG_STATE_SIZE];
      if (mmp_rng_get_state(g, back, sizeof back) < 0 || memcmp(back, body, sizeof back) != 0) abort();
      int64_t shape[1] = {700}; /* past one mt19937 block */
      mmp_tensor_t *x = mmp_rng_randn(g, mmp_backend_get("cpu"), 1, shape);
      mmp_tensor_t *i = mmp_rng_randint(g, mmp_backend_get("cpu"), 0, 1000, 1, shape);
      if (!x || !i) abort();
      mmp_tensor_unref(x);
      mmp_tensor_unref(i);
    }
    mmp_rng_free(g);
    return 0;
  }
  train_data_t d = {0};
  if (train_data_parse(&d, "dir", body, n, "captions") == 0) {
    if (d.n < 1) abort();
    for (int64_t i = 0; i < d.n; i++)
      if (strncmp(d.items[i].path, "dir/", 4) != 0 || strlen(d.items[i].path) < 5 || strchr(d.items[i].caption, '\n'))
        abort();
  }
  train_data_clear(&d);
  return 0;
}
