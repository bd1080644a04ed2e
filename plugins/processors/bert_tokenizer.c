/* plugins/processors/bert_tokenizer.c - processor "bert_tokenizer": BERT
 * WordPiece (transformers' BertTokenizer) with BLIP's [DEC]/[ENC] additions
 * and added tokens; texts -> input_ids, attention_mask.
 * See doc/plugins/bert_tokenizer.md. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/plugin.h>

#include "plugins/processors/berttok.h"
#include "plugins/processors/textcommon.h"
#include "plugins/processors/tokplugin.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static const mmp_key_t bert_keys[] = {
    {"vocab", MMP_TYPE_STRING, NULL, "vocab.txt (one WordPiece token per line)",
     MMP_KEY_REQUIRED | MMP_KEY_PATH, 0},
    {"max_length", MMP_TYPE_INT, "512", "tokens per text, with [CLS] and [SEP]", 0, 0},
    {"truncation", MMP_TYPE_BOOL, "true", "cut long texts (false: a long text is an error)", 0, 0},
    {"do_lower_case", MMP_TYPE_BOOL, "true", "lower-case (bert-base-uncased)", 0, 0},
    {"strip_accents", MMP_TYPE_STRING, "\"auto\"",
     "auto (= do_lower_case), true or false: NFD and drop combining marks", 0, 0},
    {"tokenize_chinese_chars", MMP_TYPE_BOOL, "true", "put spaces around CJK ideographs", 0, 0},
    {"blip", MMP_TYPE_BOOL, "true", "BLIP's init_tokenizer: add [DEC] (bos) and [ENC]", 0, 0},
    {"new_tokens", MMP_TYPE_LIST, "[]", "tokens to add (transformers' add_tokens)", 0, 0},
    {"pre_caption", MMP_TYPE_INT, "0",
     "> 0: clean each text first with BLIP's pre_caption(text, max_words = this); 0: off", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct bert_self {
  mmp_berttok_t *tok;
  int64_t max_length;
  bool truncation;
  int64_t pre_caption; /* max_words of BLIP's pre_caption, 0: off */
} bert_self_t;

static int bert_encode_cb(const void *engine, const char *text, size_t len, int64_t **ids,
                          size_t *n) {
  const bert_self_t *self = engine;
  if (self->pre_caption <= 0) return mmp_berttok_encode(self->tok, text, len, ids, n);
  char *clean = NULL;
  int rc = mmp_pre_caption(text, len, self->pre_caption, &clean);
  if (rc == 0) rc = mmp_berttok_encode(self->tok, clean, strlen(clean), ids, n);
  free(clean);
  return rc;
}

static int bert_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out_self) {
  (void)plugin;
  (void)ctx;
  char vocab[PATH_MAX];
  int64_t max_length = 512, pre_caption = 0;
  bool trunc = true, lower = true, chinese = true, blip = true;
  const char *strip = "auto";
  char **newt = NULL;
  size_t nnew = 0;
  int rc;
  if ((rc = mmp_config_get_path(cfg, "vocab", vocab, sizeof vocab)) < 0) {
    if (rc == MMP_ENOENT) return mmp_tokp_cfg_error(cfg, "vocab", "required");
    return rc;
  }
  if (!vocab[0]) return mmp_tokp_cfg_error(cfg, "vocab", "empty path");
  if ((rc = mmp_config_get_int(cfg, "max_length", &max_length)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_bool(cfg, "truncation", &trunc)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_bool(cfg, "do_lower_case", &lower)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_bool(cfg, "tokenize_chinese_chars", &chinese)) < 0 && rc != MMP_ENOENT)
    return rc;
  if ((rc = mmp_config_get_bool(cfg, "blip", &blip)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_int(cfg, "pre_caption", &pre_caption)) < 0 && rc != MMP_ENOENT) return rc;
  if (pre_caption < 0) return mmp_tokp_cfg_error(cfg, "pre_caption", "must be >= 0 (0: off)");
  if ((rc = mmp_config_get_string(cfg, "strip_accents", &strip)) < 0 && rc != MMP_ENOENT) return rc;
  mmp_error_clear();
  int strip_accents;
  if (strcmp(strip, "auto") == 0)
    strip_accents = -1;
  else if (strcmp(strip, "true") == 0)
    strip_accents = 1;
  else if (strcmp(strip, "false") == 0)
    strip_accents = 0;
  else
    return mmp_tokp_cfg_error(cfg, "strip_accents", "'%s' is not one of auto, true, false", strip);
  if (max_length < 2 || max_length > (int64_t)1 << 24)
    return mmp_tokp_cfg_error(cfg, "max_length", "%lld is out of range (2 .. 16777216)",
                              (long long)max_length);
  if ((rc = mmp_tokp_get_strings(cfg, "new_tokens", &newt, &nnew)) < 0) return rc;
  mmp_berttok_opts_t o = {
      .vocab_txt = vocab,
      .do_lower_case = lower,
      .tokenize_chinese_chars = chinese,
      .strip_accents = strip_accents,
      .blip = blip,
      .new_tokens = (const char *const *)newt,
      .n_new_tokens = nnew,
  };
  mmp_berttok_t *tok = mmp_berttok_new(&o);
  mmp_tokp_free_strings(newt, nnew);
  if (!tok) return mmp_error_prefix("bert_tokenizer: ");
  bert_self_t *self = calloc(1, sizeof(*self));
  if (!self) {
    mmp_berttok_free(tok);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  self->tok = tok;
  self->max_length = max_length;
  self->truncation = trunc;
  self->pre_caption = pre_caption;
  *out_self = self;
  return 0;
}

static void bert_destroy(void *p) {
  bert_self_t *self = p;
  mmp_berttok_free(self->tok);
  free(self);
}

static int bert_encode_text(void *p, const char *const *texts, size_t n, mmp_tensormap_t *out) {
  bert_self_t *self = p;
  int rc = mmp_tokp_encode_batch(self, bert_encode_cb, texts, n, mmp_berttok_cls(self->tok),
                                 mmp_berttok_sep(self->tok), mmp_berttok_pad(self->tok),
                                 self->max_length, self->truncation, out);
  return rc < 0 ? mmp_error_prefix("bert_tokenizer: ") : 0;
}

static int bert_forward(void *p, const char *method, const mmp_tensormap_t *in,
                        mmp_tensormap_t *out) {
  bert_self_t *self = p;
  return mmp_tokp_forward(self, bert_encode_cb, "bert_tokenizer",
                          mmp_berttok_vocab_size(self->tok), mmp_berttok_cls(self->tok),
                          mmp_berttok_sep(self->tok), mmp_berttok_pad(self->tok),
                          self->max_length, self->truncation, method, in, out);
}

static const mmp_processor_ops_t bert_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_PROCESSOR, mmp_processor_ops_t, "bert_tokenizer", "1.0",
                            "BERT WordPiece tokenizer (BLIP's, with [DEC]/[ENC])", bert_keys,
                            bert_create, bert_destroy),
    .forward = bert_forward,
    .encode_text = bert_encode_text,
};

MMP_EXPORT int mmp_plugin_processor_bert_tokenizer_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_processor_bert_tokenizer_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &bert_ops.base);
}
