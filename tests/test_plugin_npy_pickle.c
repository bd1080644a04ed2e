/* tests/test_plugin_npy_pickle.c - PororoSV's pickled .npy index files read as data (plugins/datasets/npy.c
 * with MMP_PICKLE_NUMPY) against what NumPy's own np.load reads (tests/gen_dataset_raw.py). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/pickle.h>

#include "plugins/datasets/npy.h"
#include "tap.h"

static char path_[4200];
static const char *fx(const char *rel) {
  const char *src = getenv("MMP_TEST_SRCDIR");
  snprintf(path_, sizeof path_, "%s/tests/fixtures/dataset_raw/%s", src ? src : ".", rel);
  return path_;
}

/* A pickled str as np.load(..., encoding='latin1') reads it. */
static char *text(const mmp_pickle_value_t *v) {
  size_t n = 0;
  const char *s = mmp_pickle_str(v, &n);
  if (!s) return NULL;
  char *o = malloc(2 * n + 1), *w = o;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (mmp_pickle_str_py2(v) && c >= 0x80) {
      *w++ = (char)(0xC0 | c >> 6);
      *w++ = (char)(0x80 | (c & 0x3F));
    } else {
      *w++ = (char)c;
    }
  }
  *w = 0;
  return o;
}

int main(void) {
  json_error_t je;
  json_t *want = json_load_file(fx("pororo.numpy.json"), 0, &je);
  if (!want) {
    printf("1..0 # SKIP %s: %s\n", path_, je.text);
    return 0;
  }
  mmp_pickle_t *pk = NULL;
  npy_t a;

  /* descriptions.npy: a dict in a 0-d object array, Python 2 strs */
  int rc = npy_load_object_file(fx("pororo/descriptions.npy"), 1 << 20, &pk, &a);
  ok(rc == 0, "descriptions.npy reads (%s)", rc ? mmp_error_last() : "");
  is_int(a.ndim, 0, "a 0-d array");
  is_int(a.count, 1, "of one object");
  const mmp_pickle_value_t *d = mmp_pickle_item(a.items, 0);
  json_t *wd = json_object_get(want, "descriptions");
  ok(mmp_pickle_kind(d) == MMP_PICKLE_DICT, "a dict");
  is_int(mmp_pickle_len(d), json_object_size(wd), "as many keys as NumPy reads");
  int keys_ok = 0, vals_ok = 0, py2 = 0;
  for (size_t i = 0; i < mmp_pickle_len(d); i++) {
    char *k = text(mmp_pickle_key(d, i));
    py2 += mmp_pickle_str_py2(mmp_pickle_key(d, i));
    json_t *wv = k ? json_object_get(wd, k) : NULL;
    keys_ok += wv != NULL;
    const mmp_pickle_value_t *v = mmp_pickle_item(d, i);
    bool same = wv && json_array_size(wv) == mmp_pickle_len(v);
    for (size_t j = 0; same && j < mmp_pickle_len(v); j++) {
      char *t = text(mmp_pickle_item(v, j));
      same = t && strcmp(t, json_string_value(json_array_get(wv, j))) == 0;
      if (!same) diag("%s[%zu]: \"%s\"", k, j, t ? t : "(not a str)");
      free(t);
    }
    vals_ok += same;
    free(k);
  }
  is_int(keys_ok, json_object_size(wd), "every key is NumPy's");
  is_int(vals_ok, json_object_size(wd), "every caption list is NumPy's (latin-1 decoded Python 2 strs)");
  is_int(py2, json_object_size(wd), "the keys are Python 2 strs");
  mmp_pickle_free(pk);

  /* train_seen_unseen_ids.npy: an object array of three int64 arrays */
  rc = npy_load_object_file(fx("pororo/train_seen_unseen_ids.npy"), 1 << 20, &pk, &a);
  ok(rc == 0, "train_seen_unseen_ids.npy reads (%s)", rc ? mmp_error_last() : "");
  is_int(a.count, 3, "three splits");
  json_t *wi = json_object_get(want, "ids");
  for (size_t s = 0; s < 3 && rc == 0; s++) {
    npy_t b;
    json_t *ws = json_array_get(wi, s);
    rc = npy_from_pickle(mmp_pickle_item(a.items, s), "ids", &b);
    ok(rc == 0, "split %zu: a pickled array (%s)", s, rc ? mmp_error_last() : "");
    const char *wdt = json_string_value(json_array_get(json_object_get(want, "ids_dtype"), s));
    is_str(b.descr, wdt, "split %zu: NumPy's dtype", s);
    is_int(b.count, json_array_size(ws), "split %zu: NumPy's length", s);
    int same = 0;
    for (int64_t i = 0; i < b.count && i < (int64_t)json_array_size(ws); i++)
      same += npy_int_at(&b, i) == json_integer_value(json_array_get(ws, (size_t)i));
    is_int(same, json_array_size(ws), "split %zu: NumPy's values", s);
  }
  mmp_pickle_free(pk);

  /* refusals */
  rc = npy_load_object_file(fx("unsafe/pororo_evil/descriptions.npy"), 1 << 20, &pk, &a);
  ok(rc == MMP_EDATA && pk == NULL, "a pickle calling os.system is refused");
  like(mmp_error_last(), "global 'posix.system' is not on the allow-list", "naming the global");
  uint8_t *buf = NULL;
  size_t n = 0;
  npy_t top;
  rc = npy_read_file(fx("pororo/train_seen_unseen_ids.npy"), 1 << 20, &buf, &n);
  if (rc == 0) rc = npy_parse(buf, n, "ids", &top);
  ok(rc == 0 && top.kind == 'O', "the header says object array");
  pk = mmp_pickle_load(top.data, top.data_len, "ids", MMP_PICKLE_STRICT);
  ok(pk == NULL, "strict without MMP_PICKLE_NUMPY refuses NumPy's globals");
  like(mmp_error_last(), "numpy.core.multiarray._reconstruct", "naming _reconstruct");
  free(buf);
  rc = npy_read_file(fx("pororo/img_cache4.npy"), 1 << 20, &buf, &n);
  if (rc == 0) rc = npy_parse(buf, n, "img", &top);
  ok(rc == 0 && top.kind == 'S' && top.ndim == 1, "img_cache4.npy: byte strings [N]");
  rc = npy_load_object_file(fx("pororo/img_cache4.npy"), 1 << 20, &pk, &a);
  like(mmp_error_last(), "not a pickled object array", "and not an object array");
  free(buf);
  json_decref(want);
  return done_testing();
}
