/* plugins/processors/cliptok.h - CLIP's byte-level BPE tokenizer engine
 * (transformers 4.30 CLIPTokenizer with ftfy, or OpenAI's SimpleTokenizer);
 * part of libtextcommon, wrapped by the clip_tokenizer plugin. */
#ifndef MMPIPE_PLUGINS_CLIPTOK_H
#define MMPIPE_PLUGINS_CLIPTOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mmp_cliptok_opts {
  const char *vocab_json;  /* with merges_txt (transformers layout), or NULL */
  const char *merges_txt;
  const char *bpe_gz;      /* OpenAI's bpe_simple_vocab_16e6.txt.gz, or NULL */
  /* true: OpenAI's SimpleTokenizer cleaning (ftfy, html.unescape twice,
   * strip) and no special-token splitting; false: transformers' CLIPTokenizer
   * (ftfy only; <|startoftext|>/<|endoftext|> split out first). */
  bool openai;
  const char *pad_token;   /* NULL = "<|endoftext|>" */
  /* a saved tokenizer's added_tokens.json ({token: id}, ids consecutive
   * after the vocabulary), loaded before new_tokens, or NULL */
  const char *added_tokens_json;
  const char *const *new_tokens; /* add_tokens(new_tokens) */
  size_t n_new_tokens;
  bool lowercase_captions; /* lower-case the raw text before anything */
} mmp_cliptok_opts_t;

typedef struct mmp_cliptok mmp_cliptok_t;

/* (transfer full) NULL + message (naming the file) on failure. */
mmp_cliptok_t *mmp_cliptok_new(const mmp_cliptok_opts_t *o);
void mmp_cliptok_free(mmp_cliptok_t *t);

/* Token ids of @text (UTF-8, @len bytes) without <|startoftext|> and
 * <|endoftext|>. *ids is malloc'ed. MMP_EDATA on invalid UTF-8.
 * Thread-safe on one instance. */
int mmp_cliptok_encode(const mmp_cliptok_t *t, const char *text, size_t len,
                       int64_t **ids, size_t *n);
int64_t mmp_cliptok_vocab_size(const mmp_cliptok_t *t); /* len(tokenizer) */
int64_t mmp_cliptok_bos(const mmp_cliptok_t *t);
int64_t mmp_cliptok_eos(const mmp_cliptok_t *t);
int64_t mmp_cliptok_pad(const mmp_cliptok_t *t);
/* number of new_tokens actually added (add_tokens' return value) */
int64_t mmp_cliptok_n_added(const mmp_cliptok_t *t);

#endif
