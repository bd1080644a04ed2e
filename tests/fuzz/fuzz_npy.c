/* tests/fuzz/fuzz_npy.c - libFuzzer harness: NumPy .npy files as the dataset builders read them
 * (plugins/datasets/npy.c): the header, the data bounds, and for object arrays the pickle after
 * the header through the public plain-value reader (include/mmpipe/pickle.h), every value walked;
 * then as PororoSV's index files are read (MMP_PICKLE_STRICT | MMP_PICKLE_NUMPY): the pickled
 * ndarray, its dtype and data, arrays and NumPy scalars inside it (npy_from_pickle,
 * npy_pickle_int, npy_int_at).
 *
 * Input: the .npy file. */
#include <mmpipe/pickle.h>

#include "plugins/datasets/npy.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

static volatile size_t sink;

/* Visit every value (pickles may share and nest values: bounded depth and visits). */
static void walk(const mmp_pickle_value_t *v, int depth, long *budget) {
  if (!v || depth > 64 || --*budget < 0) return;
  size_t len = 0;
  const char *s = mmp_pickle_str(v, &len);
  if (s) sink += len + (unsigned char)s[len]; /* NUL-terminated */
  int64_t i;
  double f;
  if (mmp_pickle_int(v, &i) == 0) sink += (size_t)i;
  if (mmp_pickle_float(v, &f) == 0) sink += f > 0;
  if (mmp_pickle_global(v)) sink += strlen(mmp_pickle_global(v));
  for (size_t k = 0; k < mmp_pickle_len(v); k++) {
    walk(mmp_pickle_key(v, k), depth + 1, budget);
    walk(mmp_pickle_item(v, k), depth + 1, budget);
  }
  sink += mmp_pickle_get(v, "descr") != NULL;
}

/* An ndarray read out of a pickle: the data inside the pickle's bytes, each element reached. */
static void pickled_array(const mmp_pickle_value_t *v, int depth, long *budget) {
  npy_t a;
  if (depth > 8 || --*budget < 0 || npy_from_pickle(v, "fuzz.npy", &a) < 0) return;
  if (a.kind == 'O') {
    if ((int64_t)mmp_pickle_len(a.items) != a.count) abort();
    for (int64_t i = 0; i < a.count && *budget > 0; i++) {
      const mmp_pickle_value_t *it = mmp_pickle_item(a.items, (size_t)i);
      int64_t x;
      if (npy_pickle_int(it, &x) == 0) sink += (size_t)x;
      if (npy_is_pickled_array(it)) pickled_array(it, depth + 1, budget);
      --*budget;
    }
    return;
  }
  if (!a.data || (uint64_t)a.count * a.itemsize != a.data_len) abort();
  for (int64_t i = 0; i < a.count && (a.kind == 'i' || a.kind == 'u' || a.kind == 'b') && a.itemsize <= 8; i++)
    sink += (size_t)npy_int_at(&a, i);
  for (size_t i = 0; i < a.data_len; i++) sink += a.data[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  npy_t a;
  if (npy_parse(data, size, "fuzz.npy", &a) == 0) {
    if (a.data < data || a.data + a.data_len > data + size) abort(); /* data inside the file */
    if (a.kind != 'O') {
      if ((uint64_t)a.count * a.itemsize != a.data_len) abort();
      for (size_t i = 0; i < a.data_len; i++) sink += a.data[i];
    } else {
      for (unsigned flags = 0; flags < 2; flags++) {
        mmp_pickle_t *pk = mmp_pickle_load(a.data, a.data_len, "fuzz.npy", flags ? MMP_PICKLE_STRICT : 0);
        long budget = 100000;
        if (pk) walk(mmp_pickle_root(pk), 0, &budget);
        if (pk && mmp_pickle_end(pk) > a.data_len) abort();
        mmp_pickle_free(pk);
      }
      mmp_pickle_t *pk = mmp_pickle_load(a.data, a.data_len, "fuzz.npy", MMP_PICKLE_STRICT | MMP_PICKLE_NUMPY);
      long budget = 100000;
      if (pk) pickled_array(mmp_pickle_root(pk), 0, &budget);
      mmp_pickle_free(pk);
    }
  }
  mmp_error_clear();
  return 0;
}
