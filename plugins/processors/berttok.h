/* plugins/processors/berttok.h - BERT WordPiece tokenizer engine
 * (transformers 4.30 BertTokenizer, as BLIP's init_tokenizer sets it up);
 * part of libtextcommon, wrapped by the bert_tokenizer plugin. */
#ifndef MMPIPE_PLUGINS_BERTTOK_H
#define MMPIPE_PLUGINS_BERTTOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mmp_berttok_opts {
  const char *vocab_txt;
  bool do_lower_case;     /* BertTokenizer(do_lower_case=...) */
  bool tokenize_chinese_chars;
  int strip_accents;      /* -1 = None (follow do_lower_case), 0, 1 */
  bool blip;              /* add [DEC] (bos) and [ENC] like BLIP */
  const char *const *new_tokens; /* add_tokens(new_tokens) */
  size_t n_new_tokens;
} mmp_berttok_opts_t;

typedef struct mmp_berttok mmp_berttok_t;

mmp_berttok_t *mmp_berttok_new(const mmp_berttok_opts_t *o); /* (transfer full) */
void mmp_berttok_free(mmp_berttok_t *t);
/* ids of @text without [CLS]/[SEP]; *ids malloc'ed; thread-safe. */
int mmp_berttok_encode(const mmp_berttok_t *t, const char *text, size_t len,
                       int64_t **ids, size_t *n);
int64_t mmp_berttok_vocab_size(const mmp_berttok_t *t); /* len(tokenizer) */
int64_t mmp_berttok_cls(const mmp_berttok_t *t);
int64_t mmp_berttok_sep(const mmp_berttok_t *t);
int64_t mmp_berttok_pad(const mmp_berttok_t *t);
/* id of a token (added ones included), -1 when unknown */
int64_t mmp_berttok_token_id(const mmp_berttok_t *t, const char *tok);
int64_t mmp_berttok_n_added(const mmp_berttok_t *t); /* new_tokens added */

#endif
