/* tests/fuzz/fuzz_clipscore_captions.c - libFuzzer harness: the captions file
 * of `pipeline clipscore` (tools/clipscore_captions.c, jansson's parser
 * behind it): the walk that checks it is a list of stories (lists of caption
 * strings, or objects with "captions") or of caption strings, then what the
 * command asks of the result: a story and a frame by number (some out of
 * range, negative, huge), and the flat list of all captions in order.
 *
 * Input: the captions file (JSON). */
#include "tests/fuzz/fuzz.h"
#include "tools/clipscore_captions.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

/* A result the command relies on broke: stop with the fuzzer's crash report. */
static void check(bool ok) {
  if (!ok)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[PATH_MAX];
  fuzz_write("captions.json", data, size, path, sizeof path);
  bool nested = false;
  mmp_error_clear();
  json_t *caps = cs_captions_load(path, &nested);
  if (!caps) {
    check(mmp_error_code() != 0 && *mmp_error_last());
    return 0;
  }
  size_t n = json_array_size(caps), total = 0;
  check(n > 0);
  for (size_t i = 0; i < n; i++) {
    const json_t *s = cs_captions_story(caps, (long)i);
    check(nested == (s != NULL));
    if (!nested) {
      check(json_is_string(json_array_get(caps, i)));
      total++;
      continue;
    }
    size_t m = json_array_size(s);
    for (size_t k = 0; k < m; k++)
      check(cs_captions_caption(s, (long)k) != NULL);
    check(cs_captions_caption(s, (long)m) == NULL);
    total += m;
  }
  const long probe[] = {-1, LONG_MIN, LONG_MAX, (long)n, (long)(size % 7)};
  for (size_t i = 0; i < sizeof probe / sizeof *probe; i++) {
    const json_t *s = cs_captions_story(caps, probe[i]);
    check(!s || (nested && probe[i] >= 0 && (size_t)probe[i] < n));
    for (size_t k = 0; k < sizeof probe / sizeof *probe; k++)
      (void)cs_captions_caption(s, probe[k]);
  }
  json_t *flat = cs_captions_flatten(caps);
  check(flat && json_array_size(flat) == total);
  for (size_t i = 0; i < total; i++)
    check(json_is_string(json_array_get(flat, i)));
  json_decref(flat);
  json_decref(caps);
  return 0;
}
