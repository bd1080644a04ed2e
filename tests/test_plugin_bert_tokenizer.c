/* tests/test_plugin_bert_tokenizer.c - the BERT tokenizer against
 * transformers' BertTokenizer with BLIP's init_tokenizer additions and
 * AR-LDM's added tokens (fixtures from tests/gen_tokenizers.py): identical
 * ids and masks, engine and plugin; vocabulary sizes; error cases. Needs
 * $MMP_SHARED_DATA/bert/vocab.txt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/processors/berttok.h"
#include "plugins/processors/textcommon.h"
#include "tokfixture.h"

static char vocab[4096];

static mmp_berttok_t *engine_for(json_t *cfg, const char **names, size_t *nnames) {
  mmp_berttok_opts_t o = {.vocab_txt = vocab, .do_lower_case = true, .tokenize_chinese_chars = true,
                          .strip_accents = -1};
  o.blip = json_is_true(json_object_get(cfg, "blip"));
  json_t *nt = json_object_get(cfg, "new_tokens");
  *nnames = json_array_size(nt);
  for (size_t i = 0; i < *nnames; i++) names[i] = json_string_value(json_array_get(nt, i));
  o.new_tokens = names;
  o.n_new_tokens = *nnames;
  return mmp_berttok_new(&o);
}

static void test_engine(json_t *c) {
  const char *name = json_string_value(json_object_get(c, "name"));
  json_t *cfg = json_object_get(c, "config"), *texts = json_object_get(c, "texts");
  const char *names[64];
  size_t nn;
  mmp_berttok_t *t = engine_for(cfg, names, &nn);
  if (!ok(t != NULL, "%s: engine loads", name)) {
    diag("%s", mmp_error_last());
    return;
  }
  is_int(mmp_berttok_vocab_size(t), json_integer_value(json_object_get(c, "vocab_size")),
         "%s: vocabulary size", name);
  is_int(mmp_berttok_n_added(t), json_integer_value(json_object_get(c, "n_added")),
         "%s: tokens added", name);
  if (json_is_true(json_object_get(cfg, "blip"))) {
    is_int(mmp_berttok_token_id(t, "[DEC]"), json_integer_value(json_object_get(c, "bos_token_id")),
           "%s: [DEC] (bos_token_id)", name);
    is_int(mmp_berttok_token_id(t, "[ENC]"), json_integer_value(json_object_get(c, "enc_token_id")),
           "%s: [ENC] (enc_token_id)", name);
  }
  size_t n = json_array_size(texts);
  int64_t L = json_integer_value(json_object_get(cfg, "max_length"));
  int64_t *ids = calloc(n * (size_t)L, sizeof(int64_t)), *mask = calloc(n * (size_t)L, 8);
  int fails = 0;
  for (size_t i = 0; i < n; i++) {
    const char *s = json_string_value(json_array_get(texts, i));
    int64_t *row;
    size_t nr;
    if (mmp_berttok_encode(t, s, strlen(s), &row, &nr) < 0) {
      diag("%s text %zu: %s", name, i, mmp_error_last());
      fails++;
      continue;
    }
    if (mmp_tok_pack_row(row, nr, mmp_berttok_cls(t), mmp_berttok_sep(t), mmp_berttok_pad(t), L,
                         json_is_true(json_object_get(cfg, "truncation")), i, ids + i * (size_t)L,
                         mask + i * (size_t)L) < 0) {
      diag("%s text %zu: %s", name, i, mmp_error_last());
      fails++;
    }
    free(row);
  }
  ok(fails == 0 && tokfx_rows_equal(ids, n, (size_t)L, json_object_get(c, "input_ids"),
                                    "input_ids", name, texts),
     "%s: input_ids identical (%zu texts)", name, n);
  ok(tokfx_rows_equal(mask, n, (size_t)L, json_object_get(c, "attention_mask"), "attention_mask",
                      name, texts),
     "%s: attention_mask identical", name);
  free(ids);
  free(mask);
  mmp_berttok_free(t);
}

/* The vocabulary is the shared data's file. */
static int bert_special_key(const char *key, json_t *v, json_t *cfg, char *out, size_t len) {
  (void)v;
  (void)cfg;
  if (strcmp(key, "vocab") != 0) return 0;
  snprintf(out, len, "  vocab = \"%s\";\n", vocab);
  return 1;
}

/* The same case through the plugin: config text -> component -> encode_text */
static void test_plugin(json_t *c) { tokfx_plugin_case(c, "bert_tokenizer", bert_special_key); }

static void test_errors(void) {
  mmp_berttok_opts_t o = {.vocab_txt = "/nonexistent/vocab.txt", .do_lower_case = true,
                          .strip_accents = -1};
  ok(mmp_berttok_new(&o) == NULL, "missing vocab.txt fails");
  like(mmp_error_last(), "/nonexistent/vocab.txt", "the error names the vocabulary file");
  o.vocab_txt = vocab;
  o.blip = true;
  mmp_berttok_t *t = mmp_berttok_new(&o);
  ok(t != NULL, "engine for error tests");
  if (!t) return;
  int64_t *ids = NULL;
  size_t n = 0;
  static const char *bad[] = {"caf\xc3", "\xff\xfe", "a\xed\xa0\x80z", "\xc0\xaf", "ok\x80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = mmp_berttok_encode(t, bad[i], strlen(bad[i]), &ids, &n);
    is_int(rc, MMP_EDATA, "invalid UTF-8 #%zu is MMP_EDATA", i);
    like(mmp_error_last(), "invalid UTF-8", "invalid UTF-8 #%zu: message", i);
  }
  mmp_berttok_free(t);
}

static void test_plugin_errors(void) {
  char text[8192];
  tokfx_comp_t c;
  ok(tokfx_comp_new(&c, "processor = { name = \"bert_tokenizer\"; vocab = \"/nonexistent/v.txt\"; };\n") < 0,
     "plugin: missing vocab fails");
  like(mmp_error_last(), "/nonexistent/v.txt", "plugin: the error names the file");
  tokfx_comp_free(&c);
  ok(tokfx_comp_new(&c, "processor = { name = \"bert_tokenizer\"; };\n") < 0,
     "plugin: vocab is required");
  like(mmp_error_last(), "vocab", "plugin: the message names the key");
  tokfx_comp_free(&c);
  snprintf(text, sizeof text,
           "processor = { name = \"bert_tokenizer\"; vocab = \"%s\";\n  strip_accents = \"maybe\"; };\n",
           vocab);
  ok(tokfx_comp_new(&c, text) < 0, "plugin: bad strip_accents fails");
  like(mmp_error_last(), "test.cfg:2", "plugin: the message has file:line");
  tokfx_comp_free(&c);
  snprintf(text, sizeof text,
           "processor = { name = \"bert_tokenizer\"; vocab = \"%s\"; max_length = 6;\n"
           "  truncation = false; };\n",
           vocab);
  if (ok(tokfx_comp_new(&c, text) == 0, "plugin: truncation off")) {
    const char *texts[] = {"short", "this text is much too long for six tokens", "caf\xc3"};
    mmp_tensormap_t *out = mmp_tensormap_new();
    ok(tokfx_encode(&c, texts, 2, out) == MMP_EDATA, "plugin: a long text fails without truncation");
    like(mmp_error_last(), "text 1", "plugin: the error names the text index");
    ok(tokfx_encode(&c, texts + 2, 1, out) == MMP_EDATA, "plugin: invalid UTF-8 is MMP_EDATA");
    like(mmp_error_last(), "invalid UTF-8", "plugin: invalid UTF-8 message");
    mmp_tensormap_free(out);
  }
  tokfx_comp_free(&c);
}

int main(void) {
  snprintf(vocab, sizeof vocab, "%s/bert/vocab.txt", tap_shared_data());
  if (!tokfx_exists(vocab)) {
    char msg[4200];
    snprintf(msg, sizeof msg, "BERT vocabulary not found: %s (set MMP_SHARED_DATA)", vocab);
    skip_all(msg);
  }
  json_t *root = tokfx_load("bert.json");
  json_t *cases = json_object_get(root, "cases");
  for (size_t i = 0; i < json_array_size(cases); i++) test_engine(json_array_get(cases, i));
  test_errors();
  for (size_t i = 0; i < json_array_size(cases); i++) test_plugin(json_array_get(cases, i));
  test_plugin_errors();
  json_decref(root);
  return done_testing();
}
