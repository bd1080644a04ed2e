/* tests/train_test.h - helpers of the train task's tests (test_plugin_train,
 * test_plugin_train_arldm): whole safetensors files compared bit for bit,
 * a run's folder removed. */
#ifndef MMPIPE_TESTS_TRAIN_TEST_H
#define MMPIPE_TESTS_TRAIN_TEST_H

#include <stdbool.h>

#include "sd_test.h"

/* The tensors of @path on the CPU (transfer full; NULL with a diag line). */
static inline mmp_tensormap_t *train_test_load(const char *path) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), false, m) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

/* Whether two files' tensors are bit-identical (same names, shapes, bytes);
 * otherwise @why names the first difference. */
static inline bool same_tensors(const char *a, const char *b, char *why, size_t wlen) {
  mmp_tensormap_t *ma = train_test_load(a), *mb = train_test_load(b);
  bool same = ma && mb && mmp_tensormap_size(ma) == mmp_tensormap_size(mb);
  snprintf(why, wlen, "%s", same ? "" : "different tensor counts");
  for (size_t i = 0; same && i < mmp_tensormap_size(ma); i++) {
    const char *name = mmp_tensormap_name(ma, i);
    mmp_tensor_t *x = mmp_tensormap_at(ma, i), *y = mmp_tensormap_get(mb, name);
    same = y && x->dtype == y->dtype && mmp_tensor_same_shape(x, y) &&
           memcmp(mmp_tensor_data(x), mmp_tensor_data(y), mmp_tensor_nbytes(x)) == 0;
    if (!same) snprintf(why, wlen, "%s differs", name);
  }
  mmp_tensormap_free(ma);
  mmp_tensormap_free(mb);
  return same;
}

/* same_tensors on the file @rel of two run directories. */
static inline bool same_run_files(const char *dir_a, const char *dir_b, const char *rel, char *why, size_t wlen) {
  char pa[4600], pb[4600];
  snprintf(pa, sizeof pa, "%s/%s", dir_a, rel);
  snprintf(pb, sizeof pb, "%s/%s", dir_b, rel);
  return same_tensors(pa, pb, why, wlen);
}

static inline void rm_rf(const char *path) {
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0) diag("could not remove %s", path);
}

#endif
