/* plugins/processors/textcommon.h - text helpers shared by the tokenizer
 * plugins (libtextcommon.la, linked into each tokenizer module).
 *
 * Text is handled as arrays of Unicode code points (int32_t) where Python's
 * str semantics matter (tries, case mapping, character classes) and as UTF-8
 * byte strings for vocabulary keys. The functions reproduce CPython 3.11's
 * str methods (isspace, lower, strip, split) and transformers 4.30's Trie;
 * character properties come from utf8proc.
 *
 * Not installed; symbols stay hidden inside each module (the modules only
 * export mmp_plugin_*).
 */
#ifndef MMPIPE_PLUGINS_TEXTCOMMON_H
#define MMPIPE_PLUGINS_TEXTCOMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable code point string ---- */
typedef struct mmp_ustr {
  int32_t *cp;
  size_t len, cap;
} mmp_ustr_t;

int mmp_ustr_push(mmp_ustr_t *s, int32_t c); /* 0 or MMP_ENOMEM */
int mmp_ustr_append(mmp_ustr_t *s, const int32_t *c, size_t n);
void mmp_ustr_free(mmp_ustr_t *s);
/* Strict UTF-8 decode (no overlongs, surrogates or values > 0x10FFFF).
 * MMP_EDATA with the byte offset in the message on invalid input. */
int mmp_ustr_from_utf8(mmp_ustr_t *s, const char *text, size_t n);

/* ---- growable byte string ---- */
typedef struct mmp_bstr {
  char *p;
  size_t len, cap;
} mmp_bstr_t;

int mmp_bstr_putc(mmp_bstr_t *b, char c);
int mmp_bstr_append(mmp_bstr_t *b, const char *p, size_t n);
int mmp_bstr_put_utf8(mmp_bstr_t *b, int32_t c);
/* Encode code points as UTF-8 (NUL-terminated, not counted in len). */
int mmp_bstr_from_ustr(mmp_bstr_t *b, const int32_t *cp, size_t n);
void mmp_bstr_free(mmp_bstr_t *b);

/* ---- string -> int64 hash map (keys copied) ---- */
typedef struct mmp_strmap mmp_strmap_t;
mmp_strmap_t *mmp_strmap_new(void);
void mmp_strmap_free(mmp_strmap_t *m);
/* Insert or overwrite. */
int mmp_strmap_put(mmp_strmap_t *m, const char *key, size_t klen, int64_t v);
/* true and *v when present */
bool mmp_strmap_get(const mmp_strmap_t *m, const char *key, size_t klen,
                    int64_t *v);
size_t mmp_strmap_size(const mmp_strmap_t *m);

/* ---- Python-compatible character classes and case mapping ---- */
bool mmp_py_isspace(int32_t c);     /* str.isspace() */
bool mmp_re_isspace(int32_t c);     /* \s of the `regex` module (White_Space) */
bool mmp_u_isletter(int32_t c);     /* \p{L} */
bool mmp_u_isnumber(int32_t c);     /* \p{N} */
const char *mmp_u_category(int32_t c); /* "Lu", "Mn", ... */
/* str.lower() of @in appended to @out: full mappings (U+0130 -> "i\u0307")
 * and, when @final_sigma, the Final_Sigma context rule of str.lower(). */
int mmp_py_lower(mmp_ustr_t *out, const int32_t *in, size_t n, bool final_sigma);
/* Unicode normalization of a code point array, in place via utf8proc.
 * @form: "NFC" or "NFD". */
int mmp_u_normalize(mmp_ustr_t *s, const char *form);

/* Python str.strip()/lstrip()/rstrip() bounds on [*b, *e). */
void mmp_py_strip(const int32_t *cp, size_t *b, size_t *e, bool left,
                  bool right);

/* BLIP's pre_caption (data/utils.py): str.lower(); each of . ! " ( ) * # :
 * ; ~ becomes a space; runs of two or more \s (str.isspace) become one
 * space; rstrip('\n'); strip(' '); at most @max_words words of split(' ')
 * (max_words <= 0: no limit). *out: malloc'ed UTF-8 (transfer full);
 * MMP_EDATA on invalid UTF-8. */
int mmp_pre_caption(const char *text, size_t len, int64_t max_words, char **out);

/* ---- transformers' Trie (tokenization_utils.Trie, 4.30) ---- */
typedef struct mmp_trie mmp_trie_t;
mmp_trie_t *mmp_trie_new(void);
void mmp_trie_free(mmp_trie_t *t);
int mmp_trie_add(mmp_trie_t *t, const int32_t *word, size_t n);
/* Cut offsets of Trie.split(): writes a list of cut points (including 0 and
 * n; empty pieces are dropped as cut_text does) into *cuts (malloc'ed, caller
 * frees), pieces are [cuts[i], cuts[i+1]). */
int mmp_trie_split(const mmp_trie_t *t, const int32_t *text, size_t n,
                   size_t **cuts, size_t *ncuts);


/* ---- added tokens, as transformers 4.30's slow tokenizers keep them ----
 * encoder: added token -> id (ids after the base vocabulary);
 * nosplit: unique_no_split_tokens -> 1 when the token strips the whitespace
 * of its neighbours (plain str tokens), 0 when not (AddedToken with
 * lstrip=rstrip=False, e.g. CLIP's <|startoftext|>/<|endoftext|>);
 * trie: the strings that split the text (tokens_trie). */
typedef struct mmp_added {
  mmp_strmap_t *encoder;
  mmp_strmap_t *nosplit;
  mmp_trie_t *trie;
  int64_t n_added;
} mmp_added_t;

int mmp_added_init(mmp_added_t *a);
void mmp_added_free(mmp_added_t *a);
/* One piece of PreTrainedTokenizer.tokenize()'s split: [b, e) of the text;
 * nosplit when the piece is an added/special token. */
typedef struct mmp_piece {
  size_t b, e;
  bool nosplit;
} mmp_piece_t;
/* tokens_trie.split + the neighbour stripping + dropping empty pieces.
 * *pieces is malloc'ed. */
int mmp_added_split(const mmp_added_t *a, const int32_t *text, size_t n,
                    mmp_piece_t **pieces, size_t *npieces);

/* A growable list of token ids (v is malloc'ed). */
typedef struct mmp_ids {
  int64_t *v;
  size_t n, cap;
} mmp_ids_t;
int mmp_ids_push(mmp_ids_t *l, int64_t id);

/* The end of every slow tokenizer's encode (PreTrainedTokenizer.tokenize
 * then convert_tokens_to_ids): split the normalised text @cp[0:n] on the
 * added tokens; an added token's piece becomes token_id(tok, its UTF-8), the
 * text between goes through piece(tok, cp, n, out). *ids_out is malloc'ed. */
typedef int64_t (*mmp_tok_id_fn)(const void *tok, const char *s, size_t len);
typedef int (*mmp_tok_piece_fn)(const void *tok, const int32_t *cp, size_t n, mmp_ids_t *out);
int mmp_tok_encode_pieces(const mmp_added_t *added, const int32_t *cp, size_t n,
                          mmp_tok_id_fn token_id, mmp_tok_piece_fn piece, const void *tok,
                          int64_t **ids_out, size_t *n_out);

/* Pack token id lists into [n, max_length] input_ids/attention_mask rows
 * (row-major, caller-allocated): bos? ids eos? then pad. When a list is too
 * long: truncation cuts it to max_length - specials; otherwise MMP_EDATA
 * naming the text index. */
int mmp_tok_pack_row(const int64_t *ids, size_t nids, int64_t bos, int64_t eos,
                     int64_t pad, int64_t max_length, bool truncation,
                     size_t text_index, int64_t *row_ids, int64_t *row_mask);

/* Read a whole file (NUL-terminated). MMP_EIO naming the file. */
int mmp_read_file(const char *path, char **data, size_t *len);
/* Read a gzip (or plain) file through zlib. */
int mmp_read_gz_file(const char *path, char **data, size_t *len);

#endif
