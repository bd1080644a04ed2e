/* plugins/processors/clip_tokenizer.c - processor "clip_tokenizer": CLIP's
 * byte-level BPE (transformers' CLIPTokenizer with ftfy, or OpenAI's
 * SimpleTokenizer) from a diffusers tokenizer/ folder, vocab.json +
 * merges.txt, or bpe_simple_vocab_16e6.txt.gz; texts -> input_ids,
 * attention_mask. See doc/plugins/clip_tokenizer.md. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/plugin.h>

#include "plugins/processors/cliptok.h"
#include "plugins/processors/tokplugin.h"

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static const mmp_key_t clip_keys[] = {
    {"tokenizer_dir", MMP_TYPE_STRING, "\"\"",
     "a diffusers/transformers tokenizer/ folder (vocab.json, merges.txt; special_tokens_map.json, added_tokens.json when present)",
     MMP_KEY_PATH, 0},
    {"vocab", MMP_TYPE_STRING, "\"\"", "vocab.json (with merges)", MMP_KEY_PATH, 0},
    {"merges", MMP_TYPE_STRING, "\"\"", "merges.txt (with vocab)", MMP_KEY_PATH, 0},
    {"bpe_file", MMP_TYPE_STRING, "\"\"", "OpenAI's bpe_simple_vocab_16e6.txt.gz", MMP_KEY_PATH, 0},
    {"text_cleaning", MMP_TYPE_STRING, "\"auto\"",
     "transformers (ftfy), openai (ftfy + html.unescape twice) or auto (openai with bpe_file)", 0,
     0},
    {"max_length", MMP_TYPE_INT, "77", "tokens per text, with <|startoftext|> and <|endoftext|>", 0,
     0},
    {"truncation", MMP_TYPE_BOOL, "true", "cut long texts (false: a long text is an error)", 0, 0},
    {"pad_token", MMP_TYPE_STRING, "\"\"",
     "padding token (empty: special_tokens_map.json's pad_token, else <|endoftext|>)", 0, 0},
    {"new_tokens", MMP_TYPE_LIST, "[]", "tokens to add (transformers' add_tokens)", 0, 0},
    {"lowercase_captions", MMP_TYPE_BOOL, "false",
     "lower-case the raw text first (added tokens then also match capitalised words)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct clip_self {
  mmp_cliptok_t *tok;
  int64_t max_length;
  bool truncation;
} clip_self_t;

static int clip_encode_cb(const void *engine, const char *text, size_t len, int64_t **ids,
                          size_t *n) {
  return mmp_cliptok_encode((const mmp_cliptok_t *)engine, text, len, ids, n);
}

/* pad_token of a special_tokens_map.json (a string or {"content": ...});
 * *out is NULL when the file or the entry is absent. */
static int read_pad_token(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  fclose(f);
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root) return mmp_error_set(MMP_EDATA, "%s:%d: invalid JSON: %s", path, err.line, err.text);
  json_t *p = json_is_object(root) ? json_object_get(root, "pad_token") : NULL;
  if (p && json_is_object(p)) p = json_object_get(p, "content");
  if (p && json_is_string(p)) {
    size_t l = strlen(json_string_value(p)) + 1;
    *out = malloc(l);
    if (*out) memcpy(*out, json_string_value(p), l);
  }
  json_decref(root);
  return 0;
}

static int get_path_key(const mmp_config_t *cfg, const char *key, char *buf, size_t len) {
  int rc = mmp_config_get_path(cfg, key, buf, len);
  if (rc == MMP_ENOENT) {
    mmp_error_clear();
    buf[0] = '\0';
    return 0;
  }
  return rc;
}

static int clip_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                       void **out_self) {
  (void)plugin;
  (void)ctx;
  char dir[PATH_MAX], vocab[PATH_MAX], merges[PATH_MAX], bpe[PATH_MAX], sp[PATH_MAX],
      added[PATH_MAX];
  bool have_added = false;
  const char *cleaning = "auto", *pad = "";
  bool trunc = true, lower = false;
  int64_t max_length = 77;
  char **newt = NULL, *pad_from_dir = NULL;
  size_t nnew = 0;
  int rc;
  if ((rc = get_path_key(cfg, "tokenizer_dir", dir, sizeof dir)) < 0 ||
      (rc = get_path_key(cfg, "vocab", vocab, sizeof vocab)) < 0 ||
      (rc = get_path_key(cfg, "merges", merges, sizeof merges)) < 0 ||
      (rc = get_path_key(cfg, "bpe_file", bpe, sizeof bpe)) < 0)
    return rc;
  if ((rc = mmp_config_get_string(cfg, "text_cleaning", &cleaning)) < 0 && rc != MMP_ENOENT)
    return rc;
  if ((rc = mmp_config_get_string(cfg, "pad_token", &pad)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_int(cfg, "max_length", &max_length)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_bool(cfg, "truncation", &trunc)) < 0 && rc != MMP_ENOENT) return rc;
  if ((rc = mmp_config_get_bool(cfg, "lowercase_captions", &lower)) < 0 && rc != MMP_ENOENT)
    return rc;
  mmp_error_clear();
  int sources = (dir[0] != 0) + (vocab[0] != 0 || merges[0] != 0) + (bpe[0] != 0);
  if (sources != 1)
    return mmp_tokp_cfg_error(cfg, dir[0] ? "tokenizer_dir" : bpe[0] ? "bpe_file" : "vocab",
                              "give exactly one of tokenizer_dir, vocab + merges, or bpe_file");
  if ((vocab[0] != 0) != (merges[0] != 0))
    return mmp_tokp_cfg_error(cfg, vocab[0] ? "merges" : "vocab",
                              "vocab and merges go together");
  bool openai;
  if (strcmp(cleaning, "auto") == 0)
    openai = bpe[0] != 0;
  else if (strcmp(cleaning, "openai") == 0)
    openai = true;
  else if (strcmp(cleaning, "transformers") == 0)
    openai = false;
  else
    return mmp_tokp_cfg_error(cfg, "text_cleaning",
                              "'%s' is not one of transformers, openai, auto", cleaning);
  if (max_length < 2 || max_length > (int64_t)1 << 24)
    return mmp_tokp_cfg_error(cfg, "max_length", "%lld is out of range (2 .. 16777216)",
                              (long long)max_length);
  if (dir[0]) {
    if (snprintf(vocab, sizeof vocab, "%s/vocab.json", dir) >= (int)sizeof vocab ||
        snprintf(merges, sizeof merges, "%s/merges.txt", dir) >= (int)sizeof merges ||
        snprintf(sp, sizeof sp, "%s/special_tokens_map.json", dir) >= (int)sizeof sp ||
        snprintf(added, sizeof added, "%s/added_tokens.json", dir) >= (int)sizeof added)
      return mmp_tokp_cfg_error(cfg, "tokenizer_dir", "path too long");
    FILE *f = fopen(added, "rb");
    if (f) {
      have_added = true;
      fclose(f);
    }
    if (!pad[0] && (rc = read_pad_token(sp, &pad_from_dir)) < 0) return rc;
  }
  if ((rc = mmp_tokp_get_strings(cfg, "new_tokens", &newt, &nnew)) < 0) {
    free(pad_from_dir);
    return rc;
  }
  mmp_cliptok_opts_t o = {
      .vocab_json = bpe[0] ? NULL : vocab,
      .merges_txt = bpe[0] ? NULL : merges,
      .bpe_gz = bpe[0] ? bpe : NULL,
      .openai = openai,
      .pad_token = pad[0] ? pad : pad_from_dir,
      .added_tokens_json = have_added ? added : NULL,
      .new_tokens = (const char *const *)newt,
      .n_new_tokens = nnew,
      .lowercase_captions = lower,
  };
  mmp_cliptok_t *tok = mmp_cliptok_new(&o);
  mmp_tokp_free_strings(newt, nnew);
  free(pad_from_dir);
  if (!tok) return mmp_error_prefix("clip_tokenizer: ");
  clip_self_t *self = calloc(1, sizeof(*self));
  if (!self) {
    mmp_cliptok_free(tok);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  self->tok = tok;
  self->max_length = max_length;
  self->truncation = trunc;
  *out_self = self;
  return 0;
}

static void clip_destroy(void *p) {
  clip_self_t *self = p;
  mmp_cliptok_free(self->tok);
  free(self);
}

static int clip_encode_text(void *p, const char *const *texts, size_t n, mmp_tensormap_t *out) {
  clip_self_t *self = p;
  int rc = mmp_tokp_encode_batch(self->tok, clip_encode_cb, texts, n, mmp_cliptok_bos(self->tok),
                                 mmp_cliptok_eos(self->tok), mmp_cliptok_pad(self->tok),
                                 self->max_length, self->truncation, out);
  return rc < 0 ? mmp_error_prefix("clip_tokenizer: ") : 0;
}

static int clip_forward(void *p, const char *method, const mmp_tensormap_t *in,
                        mmp_tensormap_t *out) {
  clip_self_t *self = p;
  return mmp_tokp_forward(self->tok, clip_encode_cb, "clip_tokenizer",
                          mmp_cliptok_vocab_size(self->tok), mmp_cliptok_bos(self->tok),
                          mmp_cliptok_eos(self->tok), mmp_cliptok_pad(self->tok),
                          self->max_length, self->truncation, method, in, out);
}

static const mmp_processor_ops_t clip_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_PROCESSOR, mmp_processor_ops_t, "clip_tokenizer", "1.0",
                            "CLIP byte-level BPE tokenizer (transformers/OpenAI, ftfy cleaning)",
                            clip_keys, clip_create, clip_destroy),
    .forward = clip_forward,
    .encode_text = clip_encode_text,
};

MMP_EXPORT int mmp_plugin_processor_clip_tokenizer_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_processor_clip_tokenizer_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &clip_ops.base);
}
