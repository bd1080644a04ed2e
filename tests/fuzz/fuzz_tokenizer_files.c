/* tests/fuzz/fuzz_tokenizer_files.c - libFuzzer harness: the files a
 * tokenizer is made from, through the clip_tokenizer and bert_tokenizer
 * plugins: a tokenizer folder (vocab.json, merges.txt,
 * special_tokens_map.json, added_tokens.json), OpenAI's bpe .gz, a BERT
 * vocab.txt; then one text encoded with the result.
 *
 * Input: one byte choosing the form, then sections cut at "\n%%\n":
 *   0  vocab.json, merges.txt, special_tokens_map.json, added_tokens.json, text
 *      (a missing section: that file is absent)
 *   1  the bpe file (gzip-compressed here unless it is already gzip), text
 *   2  vocab.txt, text */
#include <zlib.h>

#include <mmpipe/mmpipe.h>

#include "tests/fuzz/fuzz.h"

#define SEP "\n%%\n"

static mmp_registry_t *reg;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  reg = fuzz_registry();
  mmp_registry_load_all(reg, NULL);
  return 0;
}

static void write_gz(const uint8_t *d, size_t n, char *path, size_t plen) {
  if (n >= 2 && d[0] == 0x1f && d[1] == 0x8b) {
    fuzz_write("bpe.txt.gz", d, n, path, plen);
    return;
  }
  fuzz_write("bpe.txt.gz", "", 0, path, plen);
  gzFile g = gzopen(path, "wb1");
  if (!g || (n && gzwrite(g, d, (unsigned)n) != (int)n) || gzclose(g) != Z_OK) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *sec[5];
  size_t len[5];
  unsigned form = data[0] % 3;
  size_t n = fuzz_sections(data + 1, size - 1, SEP, sec, len, form == 0 ? 5 : 2);
  static const char *const dir_files[] = {"vocab.json", "merges.txt", "special_tokens_map.json",
                                          "added_tokens.json"};
  char path[PATH_MAX], text[3 * PATH_MAX];
  size_t ntext;
  if (form == 0) {
    for (size_t i = 0; i < 4; i++) {
      if (i < n)
        fuzz_write(dir_files[i], sec[i], len[i], path, sizeof path);
      else
        fuzz_unlink(dir_files[i]);
    }
    ntext = 4;
    snprintf(text, sizeof text,
             "tok = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s\"; max_length = 16; "
             "new_tokens = [\"fred\", \"<x>\"]; };",
             fuzz_dir());
  } else if (form == 1) {
    write_gz(sec[0], len[0], path, sizeof path);
    ntext = 1;
    snprintf(text, sizeof text, "tok = { name = \"clip_tokenizer\"; bpe_file = \"%s\"; max_length = 16; };",
             path);
  } else {
    fuzz_write("vocab.txt", sec[0], len[0], path, sizeof path);
    ntext = 1;
    snprintf(text, sizeof text,
             "tok = { name = \"bert_tokenizer\"; vocab = \"%s\"; max_length = 16; "
             "new_tokens = [\"fred\", \"[X]\"]; };",
             path);
  }
  char *sample = NULL;
  if (ntext < n) {
    sample = malloc(len[ntext] + 1);
    memcpy(sample, sec[ntext], len[ntext]);
    sample[len[ntext]] = '\0';
  }
  mmp_config_t *cfg = mmp_config_parse(text, "fuzz");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  mmp_component_t *c = ctx ? mmp_component_create(ctx, MMP_KIND_PROCESSOR, "tok") : NULL;
  if (c) {
    const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)c->plugin;
    const char *texts[1] = {sample ? sample : "a photo of fred, Wilma!"};
    mmp_tensormap_t *out = mmp_tensormap_new();
    if (ops->encode_text) (void)ops->encode_text(c->self, texts, 1, out);
    mmp_tensormap_free(out);
  }
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  free(sample);
  mmp_error_clear();
  return 0;
}
