/* plugins/processors/berttok.c - BERT WordPiece: vocab.txt, BasicTokenizer
 * (cleaning, CJK spacing, lower-casing, accent stripping, punctuation),
 * WordpieceTokenizer and added/special tokens, reproducing transformers
 * 4.30's BertTokenizer.from_pretrained + BLIP's init_tokenizer additions. */
#include "plugins/processors/berttok.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include <mmpipe/error.h>

#include "plugins/processors/textcommon.h"

#define MAX_CHARS_PER_WORD 100
#define MAX_SPECIALS 8

struct mmp_berttok {
  mmp_strmap_t *vocab; /* token -> id */
  int64_t vocab_size;  /* len(vocab) */
  mmp_added_t added;
  bool lower, chinese, strip_accents;
  int64_t unk, cls, sep, pad;
  /* all_special_tokens, in transformers' order */
  char *specials[MAX_SPECIALS];
  size_t nspecials;
  /* the lower-casing regex alternatives: sorted unique_no_split_tokens,
   * then all_special_tokens (code points) */
  mmp_ustr_t *keep;
  size_t nkeep;
};

void mmp_berttok_free(mmp_berttok_t *t) {
  if (!t) return;
  mmp_strmap_free(t->vocab);
  mmp_added_free(&t->added);
  for (size_t i = 0; i < t->nspecials; i++) free(t->specials[i]);
  for (size_t i = 0; i < t->nkeep; i++) mmp_ustr_free(&t->keep[i]);
  free(t->keep);
  free(t);
}

static int load_vocab(mmp_berttok_t *t, const char *path) {
  char *data;
  size_t len;
  if (mmp_read_file(path, &data, &len) < 0) return mmp_error_prefix("vocabulary: ");
  /* text-mode readlines(): universal newlines, then rstrip("\n") */
  int64_t idx = 0;
  int rc = 0;
  size_t pos = 0;
  while (pos < len && rc == 0) {
    size_t e = pos;
    while (e < len && data[e] != '\n' && data[e] != '\r') e++;
    rc = mmp_strmap_put(t->vocab, data + pos, e - pos, idx++);
    if (e < len && data[e] == '\r' && e + 1 < len && data[e + 1] == '\n') e++;
    pos = e + 1;
  }
  free(data);
  t->vocab_size = (int64_t)mmp_strmap_size(t->vocab);
  return rc;
}

static int64_t token_id(const mmp_berttok_t *t, const char *tok, size_t len) {
  int64_t id;
  if (mmp_strmap_get(t->added.encoder, tok, len, &id)) return id;
  if (mmp_strmap_get(t->vocab, tok, len, &id)) return id;
  return t->unk;
}

static bool is_special(const mmp_berttok_t *t, const char *tok) {
  for (size_t i = 0; i < t->nspecials; i++)
    if (strcmp(t->specials[i], tok) == 0) return true;
  return false;
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* unique_no_split_tokens, kept sorted (code point order = UTF-8 byte order) */
typedef struct strlist {
  char **v;
  size_t n;
} strlist_t;

static int strlist_insert_sorted(strlist_t *l, const char *s) {
  size_t i = 0;
  while (i < l->n && strcmp(l->v[i], s) < 0) i++;
  if (i < l->n && strcmp(l->v[i], s) == 0) return 0;
  char **q = realloc(l->v, (l->n + 1) * sizeof(char *));
  if (!q) return mmp_error_set(MMP_ENOMEM, "out of memory");
  l->v = q;
  char *d = dupstr(s);
  if (!d) return mmp_error_set(MMP_ENOMEM, "out of memory");
  memmove(l->v + i + 1, l->v + i, (l->n - i) * sizeof(char *));
  l->v[i] = d;
  l->n++;
  return 0;
}

static void strlist_free(strlist_t *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i]);
  free(l->v);
}

static int add_keep(mmp_berttok_t *t, const char *s) {
  mmp_ustr_t *q = realloc(t->keep, (t->nkeep + 1) * sizeof(mmp_ustr_t));
  if (!q) return mmp_error_set(MMP_ENOMEM, "out of memory");
  t->keep = q;
  t->keep[t->nkeep] = (mmp_ustr_t){0};
  int rc = mmp_ustr_from_utf8(&t->keep[t->nkeep], s, strlen(s));
  t->nkeep++;
  return rc;
}

mmp_berttok_t *mmp_berttok_new(const mmp_berttok_opts_t *o) {
  mmp_berttok_t *t = calloc(1, sizeof(*t));
  strlist_t nosplit = {0};
  if (!t) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  t->lower = o->do_lower_case;
  t->chinese = o->tokenize_chinese_chars;
  t->strip_accents = o->strip_accents < 0 ? o->do_lower_case : o->strip_accents != 0;
  t->vocab = mmp_strmap_new();
  if (!t->vocab || mmp_added_init(&t->added) < 0) goto fail;
  if (!o->vocab_txt) {
    mmp_error_set(MMP_EINVAL, "BERT tokenizer: no vocabulary file given");
    goto fail;
  }
  if (load_vocab(t, o->vocab_txt) < 0) goto fail;
  if (!mmp_strmap_get(t->vocab, "[UNK]", 5, &t->unk)) {
    mmp_error_set(MMP_EDATA, "%s: the vocabulary lacks [UNK]", o->vocab_txt);
    goto fail;
  }
  /* all_special_tokens: bos, eos, unk, sep, pad, cls, mask, additional */
  const char *sp[MAX_SPECIALS];
  size_t nsp = 0;
  if (o->blip) sp[nsp++] = "[DEC]";
  sp[nsp++] = "[UNK]";
  sp[nsp++] = "[SEP]";
  sp[nsp++] = "[PAD]";
  sp[nsp++] = "[CLS]";
  sp[nsp++] = "[MASK]";
  if (o->blip) sp[nsp++] = "[ENC]";
  for (size_t i = 0; i < nsp; i++) {
    t->specials[i] = dupstr(sp[i]);
    if (!t->specials[i]) goto fail;
    t->nspecials++;
  }
  /* from_pretrained's sanitize_special_tokens, then BLIP's
   * add_special_tokens({'bos_token': '[DEC]'}) and
   * add_special_tokens({'additional_special_tokens': ['[ENC]']}) */
  const char *base[] = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "[DEC]", "[ENC]"};
  size_t nbase = o->blip ? 7 : 5;
  for (size_t i = 0; i < nbase; i++) {
    const char *s = base[i];
    size_t sl = strlen(s);
    if (strcmp(s, "[UNK]") != 0 && token_id(t, s, sl) == t->unk) {
      if (mmp_strmap_put(t->added.encoder, s, sl, t->vocab_size + t->added.n_added) < 0) goto fail;
      t->added.n_added++;
    }
    if (strlist_insert_sorted(&nosplit, s) < 0) goto fail;
  }
  int64_t n_special_added = t->added.n_added;
  /* add_tokens(new_tokens): lower-cased first when do_lower_case */
  for (size_t i = 0; i < o->n_new_tokens; i++) {
    mmp_ustr_t u = {0}, low = {0};
    mmp_bstr_t b = {0};
    const char *tok = o->new_tokens[i];
    if (mmp_ustr_from_utf8(&u, tok, strlen(tok)) < 0) {
      mmp_ustr_free(&u);
      mmp_error_prefix("new_tokens[%zu]: ", i);
      goto fail;
    }
    int rc = t->lower ? mmp_py_lower(&low, u.cp, u.len, true) : mmp_ustr_append(&low, u.cp, u.len);
    if (rc == 0) rc = mmp_bstr_from_ustr(&b, low.cp, low.len);
    mmp_ustr_free(&u);
    mmp_ustr_free(&low);
    if (rc < 0) {
      mmp_bstr_free(&b);
      goto fail;
    }
    if (strcmp(b.p, "[UNK]") != 0 && token_id(t, b.p, b.len) == t->unk) {
      rc = mmp_strmap_put(t->added.encoder, b.p, b.len, t->vocab_size + t->added.n_added);
      if (rc == 0) {
        t->added.n_added++;
        rc = strlist_insert_sorted(&nosplit, b.p);
      }
    }
    mmp_bstr_free(&b);
    if (rc < 0) goto fail;
  }
  (void)n_special_added;
  /* tokens_trie (_create_trie) and the no-split set */
  for (size_t i = 0; i < nosplit.n; i++) {
    const char *s = nosplit.v[i];
    mmp_ustr_t u = {0}, low = {0};
    int rc = mmp_ustr_from_utf8(&u, s, strlen(s));
    if (rc == 0 && t->lower && !is_special(t, s))
      rc = mmp_py_lower(&low, u.cp, u.len, true);
    else if (rc == 0)
      rc = mmp_ustr_append(&low, u.cp, u.len);
    if (rc == 0) rc = mmp_trie_add(t->added.trie, low.cp, low.len);
    if (rc == 0) rc = mmp_strmap_put(t->added.nosplit, s, strlen(s), 1);
    mmp_ustr_free(&u);
    mmp_ustr_free(&low);
    if (rc < 0) goto fail;
  }
  for (size_t i = 0; i < nosplit.n; i++)
    if (add_keep(t, nosplit.v[i]) < 0) goto fail;
  for (size_t i = 0; i < t->nspecials; i++)
    if (add_keep(t, t->specials[i]) < 0) goto fail;
  t->cls = token_id(t, "[CLS]", 5);
  t->sep = token_id(t, "[SEP]", 5);
  t->pad = token_id(t, "[PAD]", 5);
  strlist_free(&nosplit);
  return t;
fail:
  strlist_free(&nosplit);
  mmp_berttok_free(t);
  return NULL;
}

int64_t mmp_berttok_vocab_size(const mmp_berttok_t *t) { return t->vocab_size + t->added.n_added; }
int64_t mmp_berttok_cls(const mmp_berttok_t *t) { return t->cls; }
int64_t mmp_berttok_sep(const mmp_berttok_t *t) { return t->sep; }
int64_t mmp_berttok_pad(const mmp_berttok_t *t) { return t->pad; }
int64_t mmp_berttok_n_added(const mmp_berttok_t *t) {
  return t->added.n_added - (is_special(t, "[DEC]") ? 2 : 0);
}
int64_t mmp_berttok_token_id(const mmp_berttok_t *t, const char *tok) {
  int64_t id;
  size_t l = strlen(tok);
  if (mmp_strmap_get(t->added.encoder, tok, l, &id)) return id;
  if (mmp_strmap_get(t->vocab, tok, l, &id)) return id;
  return -1;
}

/* ---- ids ---- */

/* ---- BasicTokenizer character classes ---- */

static bool is_control(int32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  const char *k = mmp_u_category(c);
  return k[0] == 'C';
}

static bool is_whitespace(int32_t c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r') return true;
  return utf8proc_category(c) == UTF8PROC_CATEGORY_ZS;
}

static bool is_punct(int32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return true;
  return mmp_u_category(c)[0] == 'P';
}

static bool is_chinese(int32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* ---- WordPiece of one whitespace-free word ---- */
static int wordpiece(const mmp_berttok_t *t, const int32_t *w, size_t n, mmp_ids_t *out,
                     mmp_bstr_t *buf) {
  if (n > MAX_CHARS_PER_WORD) return mmp_ids_push(out, t->unk);
  size_t mark = out->n;
  size_t start = 0;
  while (start < n) {
    size_t end = n;
    int64_t found = -1;
    while (start < end) {
      buf->len = 0;
      if (start > 0 && mmp_bstr_append(buf, "##", 2) < 0) return MMP_ENOMEM;
      for (size_t i = start; i < end; i++)
        if (mmp_bstr_put_utf8(buf, w[i]) < 0) return MMP_ENOMEM;
      int64_t id;
      if (mmp_strmap_get(t->vocab, buf->p, buf->len, &id)) {
        found = id;
        break;
      }
      end--;
    }
    if (found < 0) {
      out->n = mark; /* is_bad: the whole word becomes [UNK] */
      return mmp_ids_push(out, t->unk);
    }
    if (mmp_ids_push(out, found) < 0) return MMP_ENOMEM;
    start = end;
  }
  return 0;
}

static bool is_never_split(const mmp_berttok_t *t, const int32_t *w, size_t n, mmp_bstr_t *buf) {
  if (mmp_bstr_from_ustr(buf, w, n) < 0) return false;
  return is_special(t, buf->p);
}

/* BertTokenizer._tokenize of one piece */
static int tokenize_piece(const mmp_berttok_t *t, const int32_t *cp, size_t n, mmp_ids_t *out) {
  mmp_ustr_t s = {0}, split = {0}, tok = {0}, tmp = {0};
  mmp_bstr_t buf = {0};
  int rc = 0;
  /* _clean_text + _tokenize_chinese_chars */
  for (size_t i = 0; i < n && rc == 0; i++) {
    int32_t c = cp[i];
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_whitespace(c)) {
      rc = mmp_ustr_push(&s, ' ');
    } else if (t->chinese && is_chinese(c)) {
      if ((rc = mmp_ustr_push(&s, ' ')) == 0 && (rc = mmp_ustr_push(&s, c)) == 0)
        rc = mmp_ustr_push(&s, ' ');
    } else {
      rc = mmp_ustr_push(&s, c);
    }
  }
  /* whitespace_tokenize, per-token lower/strip accents/punctuation split,
   * joined by ' ' (split: the same whitespace_tokenize again) */
  for (size_t i = 0; rc == 0 && i < s.len;) {
    while (i < s.len && mmp_py_isspace(s.cp[i])) i++;
    if (i >= s.len) break;
    size_t b = i;
    while (i < s.len && !mmp_py_isspace(s.cp[i])) i++;
    tok.len = 0;
    bool never = is_never_split(t, s.cp + b, i - b, &buf);
    if (never) {
      rc = mmp_ustr_append(&tok, s.cp + b, i - b);
    } else {
      if (t->lower)
        rc = mmp_py_lower(&tok, s.cp + b, i - b, true);
      else
        rc = mmp_ustr_append(&tok, s.cp + b, i - b);
      if (rc == 0 && t->strip_accents) {
        rc = mmp_u_normalize(&tok, "NFD");
        size_t k = 0;
        for (size_t j = 0; rc == 0 && j < tok.len; j++)
          if (utf8proc_category(tok.cp[j]) != UTF8PROC_CATEGORY_MN) tok.cp[k++] = tok.cp[j];
        tok.len = k;
      }
    }
    if (rc < 0) break;
    if (never) {
      if ((rc = mmp_ustr_append(&split, tok.cp, tok.len)) == 0) rc = mmp_ustr_push(&split, ' ');
      continue;
    }
    bool start_new = true;
    for (size_t j = 0; rc == 0 && j < tok.len; j++) {
      if (is_punct(tok.cp[j])) {
        if ((rc = mmp_ustr_push(&split, ' ')) == 0 && (rc = mmp_ustr_push(&split, tok.cp[j])) == 0)
          rc = mmp_ustr_push(&split, ' ');
        start_new = true;
      } else {
        if (start_new && (rc = mmp_ustr_push(&split, ' ')) < 0) break;
        start_new = false;
        rc = mmp_ustr_push(&split, tok.cp[j]);
      }
    }
    if (rc == 0) rc = mmp_ustr_push(&split, ' ');
  }
  /* the pieces are separated by ' ' (and cannot contain other whitespace
   * than what str.split() splits on): whitespace_tokenize + WordPiece,
   * whose own whitespace_tokenize splits nothing further */
  for (size_t i = 0; rc == 0 && i < split.len;) {
    while (i < split.len && mmp_py_isspace(split.cp[i])) i++;
    if (i >= split.len) break;
    size_t b = i;
    while (i < split.len && !mmp_py_isspace(split.cp[i])) i++;
    rc = wordpiece(t, split.cp + b, i - b, out, &buf);
  }
  mmp_ustr_free(&s);
  mmp_ustr_free(&split);
  mmp_ustr_free(&tok);
  mmp_ustr_free(&tmp);
  mmp_bstr_free(&buf);
  return rc;
}

static int64_t id_cb(const void *tok, const char *s, size_t len) {
  return token_id(tok, s, len);
}

static int piece_cb(const void *tok, const int32_t *cp, size_t n, mmp_ids_t *out) {
  return tokenize_piece(tok, cp, n, out);
}

int mmp_berttok_encode(const mmp_berttok_t *t, const char *text, size_t len, int64_t **ids_out,
                       size_t *n_out) {
  mmp_ustr_t u = {0}, low = {0};
  int rc = mmp_ustr_from_utf8(&u, text, len);
  if (rc == 0 && t->lower) {
    /* re.sub("(tok|...)|(.+?)", keep tok / lower the char) */
    for (size_t i = 0; rc == 0 && i < u.len;) {
      size_t m = 0;
      for (size_t k = 0; k < t->nkeep && !m; k++) {
        const mmp_ustr_t *kw = &t->keep[k];
        if (kw->len && i + kw->len <= u.len &&
            memcmp(u.cp + i, kw->cp, kw->len * sizeof(int32_t)) == 0)
          m = kw->len;
      }
      if (m) {
        rc = mmp_ustr_append(&low, u.cp + i, m);
        i += m;
      } else {
        rc = u.cp[i] == '\n' ? mmp_ustr_push(&low, '\n') : mmp_py_lower(&low, u.cp + i, 1, false);
        i++;
      }
    }
    if (rc == 0) {
      mmp_ustr_free(&u);
      u = low;
      low = (mmp_ustr_t){0};
    }
  }
  if (rc == 0)
    rc = mmp_tok_encode_pieces(&t->added, u.cp, u.len, id_cb, piece_cb, t, ids_out, n_out);
  mmp_ustr_free(&u);
  mmp_ustr_free(&low);
  return rc;
}
