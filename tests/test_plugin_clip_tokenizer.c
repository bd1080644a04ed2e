/* tests/test_plugin_clip_tokenizer.c - the CLIP tokenizer against
 * transformers' CLIPTokenizer (with ftfy) and OpenAI's clip.tokenize
 * (fixtures from tests/gen_tokenizers.py): identical ids and masks, engine
 * and plugin; vocabulary sizes; error cases. Needs $MMP_SHARED_DATA/clip. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#include "plugins/processors/cliptok.h"
#include "plugins/processors/textcommon.h"
#include "tokfixture.h"

static char vocab[4096], merges[4096], bpe[4096], clipdir[4096];
static char addeddir[64]; /* a saved tokenizer folder: links + added_tokens.json */
static char addedjson[128];

/* (re)write the folder for a case with "added_tokens_json"; returns its path */
static const char *make_added_dir(json_t *added) {
  char p[4200];
  if (!addeddir[0]) {
    snprintf(addeddir, sizeof addeddir, "/tmp/mmp_cliptok_XXXXXX");
    if (!mkdtemp(addeddir)) return NULL;
    snprintf(p, sizeof p, "%s/vocab.json", addeddir);
    if (symlink(vocab, p) < 0) return NULL;
    snprintf(p, sizeof p, "%s/merges.txt", addeddir);
    if (symlink(merges, p) < 0) return NULL;
  }
  snprintf(addedjson, sizeof addedjson, "%s/added_tokens.json", addeddir);
  if (json_dump_file(added, addedjson, 0) < 0) return NULL;
  return addeddir;
}

static void remove_added_dir(void) {
  char p[4200];
  if (!addeddir[0]) return;
  const char *files[] = {"vocab.json", "merges.txt", "added_tokens.json"};
  for (int i = 0; i < 3; i++) {
    snprintf(p, sizeof p, "%s/%s", addeddir, files[i]);
    unlink(p);
  }
  rmdir(addeddir);
}

static const char *fx_path(const char *name) {
  if (strcmp(name, "vocab.json") == 0) return vocab;
  if (strcmp(name, "merges.txt") == 0) return merges;
  return bpe;
}

/* the engine with a fixture case's config */
static mmp_cliptok_t *engine_for(json_t *cfg, const char **names, size_t *nnames) {
  mmp_cliptok_opts_t o = {0};
  json_t *v;
  if ((v = json_object_get(cfg, "bpe_file"))) {
    o.bpe_gz = bpe;
    const char *tc = json_string_value(json_object_get(cfg, "text_cleaning"));
    o.openai = !tc || strcmp(tc, "openai") == 0;
  } else {
    o.vocab_json = vocab;
    o.merges_txt = merges;
  }
  if ((v = json_object_get(cfg, "pad_token"))) o.pad_token = json_string_value(v);
  if ((v = json_object_get(cfg, "added_tokens_json"))) {
    if (!make_added_dir(v)) return NULL;
    o.added_tokens_json = addedjson;
  }
  json_t *nt = json_object_get(cfg, "new_tokens");
  *nnames = json_array_size(nt);
  for (size_t i = 0; i < *nnames; i++) names[i] = json_string_value(json_array_get(nt, i));
  o.new_tokens = names;
  o.n_new_tokens = *nnames;
  o.lowercase_captions = json_is_true(json_object_get(cfg, "lowercase_captions"));
  return mmp_cliptok_new(&o);
}

static void test_engine(json_t *c) {
  const char *name = json_string_value(json_object_get(c, "name"));
  json_t *cfg = json_object_get(c, "config"), *texts = json_object_get(c, "texts");
  const char *names[64];
  size_t nn;
  mmp_cliptok_t *t = engine_for(cfg, names, &nn);
  if (!ok(t != NULL, "%s: engine loads", name)) {
    diag("%s", mmp_error_last());
    return;
  }
  is_int(mmp_cliptok_vocab_size(t), json_integer_value(json_object_get(c, "vocab_size")),
         "%s: vocabulary size", name);
  is_int(mmp_cliptok_n_added(t), json_integer_value(json_object_get(c, "n_added")),
         "%s: tokens added", name);
  size_t n = json_array_size(texts);
  int64_t L = json_integer_value(json_object_get(cfg, "max_length"));
  int64_t *ids = calloc(n * (size_t)L, sizeof(int64_t)), *mask = calloc(n * (size_t)L, 8);
  int fails = 0;
  for (size_t i = 0; i < n; i++) {
    const char *s = json_string_value(json_array_get(texts, i));
    int64_t *row;
    size_t nr;
    if (mmp_cliptok_encode(t, s, strlen(s), &row, &nr) < 0) {
      diag("%s text %zu: %s", name, i, mmp_error_last());
      fails++;
      continue;
    }
    if (mmp_tok_pack_row(row, nr, mmp_cliptok_bos(t), mmp_cliptok_eos(t), mmp_cliptok_pad(t), L,
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
  mmp_cliptok_free(t);
}

/* Keys that name files: the fixture's paths, and added tokens written to a
 * tokenizer folder of their own. */
static int clip_special_key(const char *key, json_t *v, json_t *cfg, char *out, size_t len) {
  if (strcmp(key, "added_tokens_json") == 0) {
    out[0] = '\0';
    return 1;
  }
  if (strcmp(key, "tokenizer_dir") == 0) {
    json_t *added = json_object_get(cfg, "added_tokens_json");
    const char *dir = added ? make_added_dir(added) : clipdir;
    snprintf(out, len, "  tokenizer_dir = \"%s\";\n", dir ? dir : "(mkdtemp failed)");
    return 1;
  }
  if (strcmp(key, "vocab") == 0 || strcmp(key, "merges") == 0 || strcmp(key, "bpe_file") == 0) {
    snprintf(out, len, "  %s = \"%s\";\n", key, fx_path(json_string_value(v)));
    return 1;
  }
  return 0;
}

/* The same case through the plugin: config text -> component -> encode_text */
static void test_plugin(json_t *c) { tokfx_plugin_case(c, "clip_tokenizer", clip_special_key); }

/* one instance shared by threads (dataset loaders do this) */
typedef struct worker {
  const mmp_cliptok_t *t;
  json_t *c;
  int mismatches;
} worker_t;

static void *work(void *p) {
  worker_t *w = p;
  json_t *texts = json_object_get(w->c, "texts"), *want = json_object_get(w->c, "input_ids");
  for (int rep = 0; rep < 3; rep++)
    for (size_t i = 0; i < json_array_size(texts); i++) {
      const char *s = json_string_value(json_array_get(texts, i));
      int64_t *row;
      size_t nr;
      if (mmp_cliptok_encode(w->t, s, strlen(s), &row, &nr) < 0) {
        w->mismatches++;
        continue;
      }
      json_t *wr = json_array_get(want, i);
      /* the ids between <|startoftext|> and <|endoftext|> (truncated rows: the first 75) */
      size_t L = json_array_size(wr), m = nr < L - 2 ? nr : L - 2;
      for (size_t j = 0; j < m; j++)
        if (row[j] != json_integer_value(json_array_get(wr, j + 1))) {
          w->mismatches++;
          break;
        }
      free(row);
    }
  return NULL;
}

static void test_threads(json_t *c) {
  const char *names[64];
  size_t nn;
  mmp_cliptok_t *t = engine_for(json_object_get(c, "config"), names, &nn);
  if (!ok(t != NULL, "threads: engine")) return;
  worker_t w[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker_t){t, c, 0};
    pthread_create(&th[i], NULL, work, &w[i]);
  }
  int bad = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    bad += w[i].mismatches;
  }
  is_int(bad, 0, "4 threads on one instance give the reference ids");
  mmp_cliptok_free(t);
}

static void test_errors(void) {
  /* missing vocabulary file: the message names it */
  mmp_cliptok_opts_t o = {.vocab_json = "/nonexistent/vocab.json", .merges_txt = merges};
  ok(mmp_cliptok_new(&o) == NULL, "missing vocab.json fails");
  like(mmp_error_last(), "/nonexistent/vocab.json", "the error names the vocabulary file");
  o = (mmp_cliptok_opts_t){.vocab_json = vocab, .merges_txt = "/nonexistent/merges.txt"};
  ok(mmp_cliptok_new(&o) == NULL, "missing merges.txt fails");
  like(mmp_error_last(), "/nonexistent/merges.txt", "the error names the merges file");
  o = (mmp_cliptok_opts_t){.bpe_gz = "/nonexistent/bpe.txt.gz"};
  ok(mmp_cliptok_new(&o) == NULL, "missing bpe file fails");
  like(mmp_error_last(), "/nonexistent/bpe.txt.gz", "the error names the bpe file");

  /* added_tokens.json ids must follow the vocabulary (slow tokenizers) */
  json_t *bad_added = json_pack("{s:i}", "zzqx", 49500);
  o = (mmp_cliptok_opts_t){.vocab_json = vocab, .merges_txt = merges};
  o.added_tokens_json = make_added_dir(bad_added) ? addedjson : "/nonexistent";
  ok(mmp_cliptok_new(&o) == NULL, "non-consecutive added_tokens.json fails");
  like(mmp_error_last(), "non-consecutive added token 'zzqx'", "the message names the token");
  json_decref(bad_added);

  o = (mmp_cliptok_opts_t){.vocab_json = vocab, .merges_txt = merges};
  mmp_cliptok_t *t = mmp_cliptok_new(&o);
  ok(t != NULL, "engine for error tests");
  if (!t) return;
  int64_t *ids = NULL;
  size_t n = 0;
  static const char *bad[] = {"caf\xc3", "\xff\xfe", "a\xed\xa0\x80z", "\xc0\xaf", "ok\x80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = mmp_cliptok_encode(t, bad[i], strlen(bad[i]), &ids, &n);
    is_int(rc, MMP_EDATA, "invalid UTF-8 #%zu is MMP_EDATA", i);
    like(mmp_error_last(), "invalid UTF-8", "invalid UTF-8 #%zu: message", i);
  }
  /* truncation off: too long is an error naming the text */
  int64_t many[100] = {0}, row[77], mask[77];
  int rc = mmp_tok_pack_row(many, 100, 1, 2, 3, 77, false, 4, row, mask);
  is_int(rc, MMP_EDATA, "too long without truncation fails with MMP_EDATA");
  like(mmp_error_last(), "text 4", "the error names the text index");
  rc = mmp_tok_pack_row(many, 75, 1, 2, 3, 77, false, 4, row, mask);
  ok(rc == 0 && row[76] == 2 && mask[76] == 1, "exactly max_length fits");
  mmp_cliptok_free(t);
}

static void test_plugin_errors(void) {
  char text[8192];
  tokfx_comp_t c;
  snprintf(text, sizeof text,
           "processor = { name = \"clip_tokenizer\"; vocab = \"/nonexistent/v.json\"; merges = "
           "\"%s\"; };\n",
           merges);
  ok(tokfx_comp_new(&c, text) < 0, "plugin: missing vocab fails");
  like(mmp_error_last(), "/nonexistent/v.json", "plugin: the error names the file");
  tokfx_comp_free(&c);
  snprintf(text, sizeof text,
           "processor = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s\"; bpe_file = \"%s\"; };\n",
           clipdir, bpe);
  ok(tokfx_comp_new(&c, text) < 0, "plugin: two vocabulary sources fail");
  like(mmp_error_last(), "exactly one", "plugin: the message says what to give");
  tokfx_comp_free(&c);
  snprintf(text, sizeof text,
           "processor = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s\";\n"
           "  text_cleaning = \"nope\"; };\n",
           clipdir);
  ok(tokfx_comp_new(&c, text) < 0, "plugin: bad text_cleaning fails");
  like(mmp_error_last(), "test.cfg:2", "plugin: the message has file:line");
  tokfx_comp_free(&c);
  snprintf(text, sizeof text,
           "processor = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s\"; max_length = 8;\n"
           "  truncation = false; };\n",
           clipdir);
  if (ok(tokfx_comp_new(&c, text) == 0, "plugin: truncation off")) {
    const char *texts[] = {"short", "this text is much too long for eight tokens", "caf\xc3"};
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
  const char *d = tap_shared_data();
  snprintf(clipdir, sizeof clipdir, "%s/clip", d);
  snprintf(vocab, sizeof vocab, "%s/vocab.json", clipdir);
  snprintf(merges, sizeof merges, "%s/merges.txt", clipdir);
  snprintf(bpe, sizeof bpe, "%s/bpe_simple_vocab_16e6.txt.gz", clipdir);
  if (!tokfx_exists(vocab) || !tokfx_exists(merges) || !tokfx_exists(bpe)) {
    char msg[4200];
    snprintf(msg, sizeof msg, "CLIP vocabulary files not found in %s (set MMP_SHARED_DATA)", clipdir);
    skip_all(msg);
  }
  json_t *root = tokfx_load("clip.json");
  json_t *cases = json_object_get(root, "cases");
  for (size_t i = 0; i < json_array_size(cases); i++) test_engine(json_array_get(cases, i));
  test_errors();
  test_threads(json_array_get(cases, 0));
  for (size_t i = 0; i < json_array_size(cases); i++) test_plugin(json_array_get(cases, i));
  test_plugin_errors();
  remove_added_dir();
  json_decref(root);
  return done_testing();
}
