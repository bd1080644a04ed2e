/* tests/fuzz/fuzz_tokenizer_text.c - libFuzzer harness: texts through the
 * tokenizer engines (plugins/processors: ftfy, CLIP's byte-level BPE in both
 * cleanings, BERT's WordPiece in its option sets), with added tokens.
 *
 * Input: one byte choosing the engine, then the text (any bytes). The CLIP
 * vocabulary is the tiny one of tests/fixtures/sd/pipe/tokenizer; the BERT
 * vocabulary is made here (specials, ASCII, "##" pieces, a few words). */
#include "plugins/processors/berttok.h"
#include "plugins/processors/cliptok.h"
#include "tests/fuzz/fuzz.h"

static mmp_cliptok_t *clip[2];
static mmp_berttok_t *bert[3];
static const char *const new_tokens[] = {"fred", "barney", "wilma", "<new>", "ünï"};

static void make_bert_vocab(char *path, size_t plen) {
  static const char *const words[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the",
                                      "a", "man", "##s", "##ing", "un", "##aff", "##able",
                                      "über", "東", "京", "é", "##é"};
  char buf[8192];
  size_t n = 0;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\n", words[i]);
  for (int c = 33; c < 127; c++) n += (size_t)snprintf(buf + n, sizeof buf - n, "%c\n##%c\n", c, c);
  fuzz_write("vocab.txt", buf, n, path, plen);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  char vj[PATH_MAX], mt[PATH_MAX], vt[PATH_MAX];
  snprintf(vj, sizeof vj, "%s/tests/fixtures/sd/pipe/tokenizer/vocab.json", fuzz_srcdir());
  snprintf(mt, sizeof mt, "%s/tests/fixtures/sd/pipe/tokenizer/merges.txt", fuzz_srcdir());
  for (int i = 0; i < 2; i++) {
    mmp_cliptok_opts_t o = {.vocab_json = vj, .merges_txt = mt, .openai = i == 1,
                            .new_tokens = new_tokens, .n_new_tokens = 5,
                            .lowercase_captions = i == 1};
    clip[i] = mmp_cliptok_new(&o);
  }
  make_bert_vocab(vt, sizeof vt);
  for (int i = 0; i < 3; i++) {
    mmp_berttok_opts_t o = {.vocab_txt = vt, .do_lower_case = i != 1,
                            .tokenize_chinese_chars = i != 2, .strip_accents = i - 1,
                            .blip = i == 0, .new_tokens = new_tokens, .n_new_tokens = 5};
    bert[i] = mmp_berttok_new(&o);
  }
  if (!clip[0] || !clip[1] || !bert[0] || !bert[1] || !bert[2]) {
    fprintf(stderr, "fuzz_tokenizer_text: cannot build the tokenizers: %s\n", mmp_error_last());
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  int64_t *ids = NULL;
  size_t n = 0;
  unsigned which = data[0] % 5;
  int rc = which < 2 ? mmp_cliptok_encode(clip[which], text, len, &ids, &n)
                     : mmp_berttok_encode(bert[which - 2], text, len, &ids, &n);
  if (rc == 0) {
    int64_t vs = which < 2 ? mmp_cliptok_vocab_size(clip[which]) : mmp_berttok_vocab_size(bert[which - 2]);
    for (size_t i = 0; i < n; i++)
      if (ids[i] < 0 || ids[i] >= vs) abort(); /* an id outside the vocabulary */
  }
  free(ids);
  mmp_error_clear();
  return 0;
}
