/* plugins/processors/cliptok.c - CLIP byte-level BPE: vocabulary loading
 * (vocab.json + merges.txt or bpe_simple_vocab_16e6.txt.gz), text cleaning,
 * CLIP's pre-tokenization regex, BPE merges and added tokens, reproducing
 * transformers 4.30's CLIPTokenizer (with ftfy) and OpenAI's SimpleTokenizer. */
#include "plugins/processors/cliptok.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#include "plugins/processors/ftfy.h"
#include "plugins/processors/textcommon.h"

#define SOT "<|startoftext|>"
#define EOT "<|endoftext|>"
/* merges kept: lines [1, 49152 - 256 - 2 + 1) of the merges file */
#define N_MERGE_LINES (49152 - 256 - 2)

struct mmp_cliptok {
  mmp_strmap_t *encoder; /* token -> id */
  mmp_strmap_t *ranks;   /* "first second" -> rank */
  int64_t vocab_size;    /* len(encoder) */
  mmp_added_t added;
  int64_t bos, eos, unk, pad;
  bool openai, lowercase;
  int32_t byte_enc[256]; /* bytes_to_unicode() */
};

static void bytes_to_unicode(int32_t tab[256], int order[256]) {
  int n = 0, k = 0;
  bool in[256] = {false};
  for (int b = '!'; b <= '~'; b++) in[b] = true;
  for (int b = 0xA1; b <= 0xAC; b++) in[b] = true;
  for (int b = 0xAE; b <= 0xFF; b++) in[b] = true;
  for (int b = 0; b < 256; b++)
    if (in[b]) {
      tab[b] = b;
    }
  /* order of bs: the printable ranges ascending, then the rest ascending */
  for (int b = 0; b < 256; b++)
    if (in[b]) order[k++] = b;
  for (int b = 0; b < 256; b++)
    if (!in[b]) {
      tab[b] = 256 + n++;
      order[k++] = b;
    }
}

void mmp_cliptok_free(mmp_cliptok_t *t) {
  if (!t) return;
  mmp_strmap_free(t->encoder);
  mmp_strmap_free(t->ranks);
  mmp_added_free(&t->added);
  free(t);
}

/* Python's str.split() on one line of the merges file */
static int add_merge_line(mmp_cliptok_t *t, const char *line, size_t len, int64_t rank,
                          mmp_bstr_t *key, mmp_ustr_t *tmp) {
  if (mmp_ustr_from_utf8(tmp, line, len) < 0) return MMP_EDATA;
  size_t parts[3][2], np = 0;
  for (size_t i = 0; i < tmp->len && np < 3;) {
    while (i < tmp->len && mmp_py_isspace(tmp->cp[i])) i++;
    if (i >= tmp->len) break;
    size_t b = i;
    while (i < tmp->len && !mmp_py_isspace(tmp->cp[i])) i++;
    parts[np][0] = b;
    parts[np][1] = i;
    np++;
  }
  if (np != 2) return 0; /* a tuple that is not a pair never matches */
  mmp_bstr_t a = {0}, b = {0};
  int rc = 0;
  if (mmp_bstr_from_ustr(&a, tmp->cp + parts[0][0], parts[0][1] - parts[0][0]) < 0 ||
      mmp_bstr_from_ustr(&b, tmp->cp + parts[1][0], parts[1][1] - parts[1][0]) < 0) {
    rc = MMP_ENOMEM;
    goto out;
  }
  key->len = 0;
  if (mmp_bstr_append(key, a.p, a.len) < 0 || mmp_bstr_putc(key, ' ') < 0 ||
      mmp_bstr_append(key, b.p, b.len) < 0 || mmp_strmap_put(t->ranks, key->p, key->len, rank) < 0)
    rc = MMP_ENOMEM;
out:
  mmp_bstr_free(&a);
  mmp_bstr_free(&b);
  return rc;
}

/* Reads merges from @data: transformers strips the text first; both take
 * lines [1, N_MERGE_LINES]. With @vocab_from_merges, builds SimpleTokenizer's
 * vocabulary (bytes, bytes + </w>, merges joined, the two specials). */
static int load_merges(mmp_cliptok_t *t, char *data, size_t len, const char *path,
                       bool strip, bool vocab_from_merges) {
  size_t b = 0, e = len;
  if (strip) {
    mmp_ustr_t all = {0};
    if (mmp_ustr_from_utf8(&all, data, len) < 0) {
      mmp_ustr_free(&all);
      return mmp_error_prefix("%s: ", path);
    }
    /* strip ASCII-range and Unicode whitespace at both ends (bytes) */
    size_t cb = 0, ce = all.len;
    mmp_py_strip(all.cp, &cb, &ce, true, true);
    mmp_bstr_t tmp = {0};
    int r = mmp_bstr_from_ustr(&tmp, all.cp, cb);
    b = tmp.len;
    if (r == 0) r = mmp_bstr_from_ustr(&tmp, all.cp, ce);
    e = tmp.len;
    mmp_bstr_free(&tmp);
    mmp_ustr_free(&all);
    if (r < 0) return r;
  }
  mmp_bstr_t key = {0};
  mmp_ustr_t tmp = {0};
  int rc = 0;
  int64_t line = 0, next_id = 0;
  if (vocab_from_merges) {
    int order[256];
    int32_t tab[256];
    bytes_to_unicode(tab, order);
    for (int pass = 0; pass < 2 && rc == 0; pass++)
      for (int i = 0; i < 256 && rc == 0; i++) {
        key.len = 0;
        if (mmp_bstr_put_utf8(&key, t->byte_enc[order[i]]) < 0 ||
            (pass && mmp_bstr_append(&key, "</w>", 4) < 0) ||
            mmp_strmap_put(t->encoder, key.p, key.len, next_id++) < 0)
          rc = MMP_ENOMEM;
      }
  }
  size_t pos = b;
  while (rc == 0 && pos <= e) {
    size_t nl = pos;
    while (nl < e && data[nl] != '\n') nl++;
    if (line >= 1 && line <= N_MERGE_LINES) {
      rc = add_merge_line(t, data + pos, nl - pos, line - 1, &key, &tmp);
      if (rc == MMP_EDATA) {
        mmp_error_prefix("%s line %lld: ", path, (long long)line + 1);
        break;
      }
      if (rc == 0 && vocab_from_merges) {
        /* ''.join(merge): the line without its whitespace */
        mmp_bstr_t joined = {0};
        for (size_t i = 0; i < tmp.len && rc == 0; i++)
          if (!mmp_py_isspace(tmp.cp[i]) && mmp_bstr_put_utf8(&joined, tmp.cp[i]) < 0)
            rc = MMP_ENOMEM;
        if (rc == 0 && mmp_bstr_append(&joined, "", 0) < 0) rc = MMP_ENOMEM;
        if (rc == 0 && mmp_strmap_put(t->encoder, joined.p, joined.len, next_id++) < 0)
          rc = MMP_ENOMEM;
        mmp_bstr_free(&joined);
      }
    }
    line++;
    if (nl >= e) break;
    pos = nl + 1;
  }
  if (rc == 0 && vocab_from_merges) {
    if (mmp_strmap_put(t->encoder, SOT, strlen(SOT), next_id++) < 0 ||
        mmp_strmap_put(t->encoder, EOT, strlen(EOT), next_id++) < 0)
      rc = MMP_ENOMEM;
  }
  mmp_bstr_free(&key);
  mmp_ustr_free(&tmp);
  return rc;
}

static int load_vocab_json(mmp_cliptok_t *t, const char *path) {
  json_error_t err;
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "cannot open vocabulary %s", path);
  fclose(f);
  json_t *root = json_load_file(path, 0, &err);
  if (!root)
    return mmp_error_set(MMP_EDATA, "%s:%d: invalid JSON: %s", path, err.line, err.text);
  if (!json_is_object(root)) {
    json_decref(root);
    return mmp_error_set(MMP_EDATA, "%s: expected a JSON object of token -> id", path);
  }
  const char *k;
  json_t *v;
  int rc = 0;
  json_object_foreach(root, k, v) {
    if (!json_is_integer(v)) {
      rc = mmp_error_set(MMP_EDATA, "%s: the id of token \"%s\" is not an integer", path, k);
      break;
    }
    if (mmp_strmap_put(t->encoder, k, strlen(k), (int64_t)json_integer_value(v)) < 0) {
      rc = MMP_ENOMEM;
      break;
    }
  }
  json_decref(root);
  return rc;
}

static int64_t token_id(const mmp_cliptok_t *t, const char *tok, size_t len) {
  int64_t id;
  if (mmp_strmap_get(t->added.encoder, tok, len, &id)) return id;
  if (mmp_strmap_get(t->encoder, tok, len, &id)) return id;
  return t->unk;
}

static int add_nosplit(mmp_cliptok_t *t, const char *tok, int64_t strip) {
  mmp_ustr_t u = {0};
  int rc = mmp_ustr_from_utf8(&u, tok, strlen(tok));
  if (rc == 0) rc = mmp_trie_add(t->added.trie, u.cp, u.len);
  if (rc == 0) rc = mmp_strmap_put(t->added.nosplit, tok, strlen(tok), strip);
  mmp_ustr_free(&u);
  return rc;
}

/* from_pretrained's added_tokens.json: sorted by id, each id must be the
 * next one (slow tokenizers), then add_tokens */
typedef struct added_entry {
  const char *tok;
  int64_t id;
} added_entry_t;

static int cmp_added(const void *a, const void *b) {
  int64_t x = ((const added_entry_t *)a)->id, y = ((const added_entry_t *)b)->id;
  return x < y ? -1 : x > y;
}

static int load_added_tokens(mmp_cliptok_t *t, const char *path) {
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root) return mmp_error_set(MMP_EDATA, "%s:%d: invalid JSON: %s", path, err.line, err.text);
  int rc = 0;
  size_t n = json_is_object(root) ? json_object_size(root) : 0;
  added_entry_t *e = calloc(n + 1, sizeof(*e));
  if (!json_is_object(root) || !e) {
    rc = e ? mmp_error_set(MMP_EDATA, "%s: expected a JSON object of token -> id", path)
           : mmp_error_set(MMP_ENOMEM, "out of memory");
    goto out;
  }
  const char *k;
  json_t *v;
  size_t i = 0;
  json_object_foreach(root, k, v) {
    if (!json_is_integer(v)) {
      rc = mmp_error_set(MMP_EDATA, "%s: the id of \"%s\" is not an integer", path, k);
      goto out;
    }
    e[i].tok = k;
    e[i].id = (int64_t)json_integer_value(v);
    i++;
  }
  qsort(e, n, sizeof(*e), cmp_added);
  for (i = 0; i < n; i++) {
    int64_t want = t->vocab_size + t->added.n_added;
    if (e[i].id != want) {
      rc = mmp_error_set(MMP_EDATA,
                         "%s: non-consecutive added token '%s': should have id %lld, has %lld",
                         path, e[i].tok, (long long)want, (long long)e[i].id);
      goto out;
    }
    size_t tl = strlen(e[i].tok);
    if (strcmp(e[i].tok, EOT) == 0 || token_id(t, e[i].tok, tl) != t->unk) continue;
    if ((rc = mmp_strmap_put(t->added.encoder, e[i].tok, tl, want)) < 0) goto out;
    t->added.n_added++;
    if ((rc = add_nosplit(t, e[i].tok, strcmp(e[i].tok, SOT) != 0)) < 0) goto out;
  }
out:
  free(e);
  json_decref(root);
  return rc;
}

mmp_cliptok_t *mmp_cliptok_new(const mmp_cliptok_opts_t *o) {
  mmp_cliptok_t *t = calloc(1, sizeof(*t));
  if (!t) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  int order[256];
  bytes_to_unicode(t->byte_enc, order);
  t->openai = o->openai;
  t->lowercase = o->lowercase_captions;
  t->encoder = mmp_strmap_new();
  t->ranks = mmp_strmap_new();
  if (!t->encoder || !t->ranks || mmp_added_init(&t->added) < 0) goto fail;
  char *data = NULL;
  size_t len = 0;
  if (o->bpe_gz) {
    if (mmp_read_gz_file(o->bpe_gz, &data, &len) < 0) goto fail;
    int rc = load_merges(t, data, len, o->bpe_gz, false, true);
    free(data);
    if (rc < 0) goto fail;
  } else {
    if (!o->vocab_json || !o->merges_txt) {
      mmp_error_set(MMP_EINVAL, "CLIP tokenizer: give vocab.json and merges.txt, or the bpe file");
      goto fail;
    }
    if (load_vocab_json(t, o->vocab_json) < 0) goto fail;
    if (mmp_read_file(o->merges_txt, &data, &len) < 0) goto fail;
    int rc = load_merges(t, data, len, o->merges_txt, true, false);
    free(data);
    if (rc < 0) goto fail;
  }
  t->vocab_size = (int64_t)mmp_strmap_size(t->encoder);
  const char *vname = o->bpe_gz ? o->bpe_gz : o->vocab_json;
  if (!mmp_strmap_get(t->encoder, SOT, strlen(SOT), &t->bos) ||
      !mmp_strmap_get(t->encoder, EOT, strlen(EOT), &t->eos)) {
    mmp_error_set(MMP_EDATA, "%s: the vocabulary lacks %s or %s", vname, SOT, EOT);
    goto fail;
  }
  t->unk = t->eos;
  /* special tokens: split out before BPE (sanitize_special_tokens of
   * from_pretrained); AddedToken(lstrip=False, rstrip=False) strip nothing */
  if (!t->openai && (add_nosplit(t, SOT, 0) < 0 || add_nosplit(t, EOT, 0) < 0)) goto fail;
  const char *pad = o->pad_token && *o->pad_token ? o->pad_token : EOT;
  if (!t->openai && strcmp(pad, SOT) != 0 && strcmp(pad, EOT) != 0 && add_nosplit(t, pad, 1) < 0)
    goto fail;
  if (o->added_tokens_json && load_added_tokens(t, o->added_tokens_json) < 0) goto fail;
  /* add_tokens(new_tokens): only tokens the tokenizer does not know */
  for (size_t i = 0; i < o->n_new_tokens; i++) {
    const char *tok = o->new_tokens[i];
    size_t tl = strlen(tok);
    mmp_ustr_t chk = {0};
    if (mmp_ustr_from_utf8(&chk, tok, tl) < 0) {
      mmp_ustr_free(&chk);
      mmp_error_prefix("new_tokens[%zu]: ", i);
      goto fail;
    }
    mmp_ustr_free(&chk);
    if (strcmp(tok, EOT) == 0 || token_id(t, tok, tl) != t->unk) continue;
    int64_t id = t->vocab_size + t->added.n_added;
    if (mmp_strmap_put(t->added.encoder, tok, tl, id) < 0) goto fail;
    t->added.n_added++;
    if (add_nosplit(t, tok, 1) < 0) goto fail;
  }
  t->pad = token_id(t, pad, strlen(pad));
  return t;
fail:
  mmp_cliptok_free(t);
  return NULL;
}

int64_t mmp_cliptok_vocab_size(const mmp_cliptok_t *t) { return t->vocab_size + t->added.n_added; }
int64_t mmp_cliptok_bos(const mmp_cliptok_t *t) { return t->bos; }
int64_t mmp_cliptok_eos(const mmp_cliptok_t *t) { return t->eos; }
int64_t mmp_cliptok_pad(const mmp_cliptok_t *t) { return t->pad; }
int64_t mmp_cliptok_n_added(const mmp_cliptok_t *t) { return t->added.n_added; }

/* ---- growable id list ---- */

/* ---- BPE ---- */

typedef struct sym {
  char *s;
  size_t len;
} sym_t;

static int bpe(const mmp_cliptok_t *t, const char *tok, size_t len, mmp_ids_t *out) {
  if ((len == strlen(SOT) && memcmp(tok, SOT, len) == 0) ||
      (len == strlen(EOT) && memcmp(tok, EOT, len) == 0))
    return mmp_ids_push(out, token_id(t, tok, len)); /* the cache's two entries */
  /* symbols: the characters; the last one gets </w> */
  size_t nsym = 0;
  sym_t *w = malloc((len + 1) * sizeof(sym_t));
  if (!w) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = 0;
  for (size_t i = 0; i < len;) {
    size_t k = 1;
    unsigned char c = (unsigned char)tok[i];
    if (c >= 0xF0) k = 4;
    else if (c >= 0xE0) k = 3;
    else if (c >= 0xC0) k = 2;
    bool last = i + k >= len;
    w[nsym].len = k + (last ? 4 : 0);
    w[nsym].s = malloc(w[nsym].len + 1);
    if (!w[nsym].s) {
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      goto out;
    }
    memcpy(w[nsym].s, tok + i, k);
    if (last) memcpy(w[nsym].s + k, "</w>", 4);
    w[nsym].s[w[nsym].len] = '\0';
    nsym++;
    i += k;
  }
  mmp_bstr_t key = {0};
  while (nsym > 1) {
    int64_t best = INT64_MAX;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < nsym; i++) {
      key.len = 0;
      if (mmp_bstr_append(&key, w[i].s, w[i].len) < 0 || mmp_bstr_putc(&key, ' ') < 0 ||
          mmp_bstr_append(&key, w[i + 1].s, w[i + 1].len) < 0) {
        rc = MMP_ENOMEM;
        break;
      }
      int64_t r;
      if (mmp_strmap_get(t->ranks, key.p, key.len, &r) && r < best) {
        best = r;
        bi = i;
      }
    }
    if (rc < 0 || best == INT64_MAX) break;
    /* merge every (first, second) occurrence, left to right */
    sym_t first = w[bi], second = w[bi + 1];
    size_t fl = first.len, sl = second.len;
    char *fs = malloc(fl + 1), *ss = malloc(sl + 1);
    if (!fs || !ss) {
      free(fs);
      free(ss);
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      break;
    }
    memcpy(fs, first.s, fl + 1);
    memcpy(ss, second.s, sl + 1);
    size_t k = 0;
    for (size_t i = 0; i < nsym;) {
      if (i + 1 < nsym && w[i].len == fl && memcmp(w[i].s, fs, fl) == 0 && w[i + 1].len == sl &&
          memcmp(w[i + 1].s, ss, sl) == 0) {
        char *m = realloc(w[i].s, fl + sl + 1);
        if (!m) {
          rc = mmp_error_set(MMP_ENOMEM, "out of memory");
          break;
        }
        memcpy(m + fl, ss, sl + 1);
        free(w[i + 1].s);
        w[k].s = m;
        w[k].len = fl + sl;
        k++;
        i += 2;
      } else {
        w[k++] = w[i++];
      }
    }
    free(fs);
    free(ss);
    if (rc < 0) {
      nsym = k; /* what is left is still owned by w[0..k) */
      break;
    }
    nsym = k;
  }
  mmp_bstr_free(&key);
  for (size_t i = 0; i < nsym && rc == 0; i++) rc = mmp_ids_push(out, token_id(t, w[i].s, w[i].len));
out:
  for (size_t i = 0; i < nsym; i++) free(w[i].s);
  free(w);
  return rc;
}

/* ---- CLIP's pattern ---- */

/* equality under the `regex` module's IGNORECASE (simple case folding) for
 * an ASCII lower-case pattern letter */
static bool ci_eq(int32_t c, char p) {
  if (c == p) return true;
  if (p >= 'a' && p <= 'z' && c == p - 32) return true;
  if (p == 's' && c == 0x17F) return true;  /* LATIN SMALL LETTER LONG S */
  if (p == 'k' && c == 0x212A) return true; /* KELVIN SIGN */
  return false;
}

static size_t match_lit(const int32_t *t, size_t n, size_t i, const char *lit) {
  size_t k = strlen(lit);
  if (i + k > n) return 0;
  for (size_t j = 0; j < k; j++)
    if (!ci_eq(t[i + j], lit[j])) return 0;
  return k;
}

/* Under IGNORECASE the `regex` module matches a class when a case variant
 * of the character is in it; for [^\s\p{L}\p{N}] the only character this
 * changes is U+0345 COMBINING GREEK YPOGEGRAMMENI (Mn, folds to iota): it
 * matches no alternative and is skipped like whitespace. (Checked over all
 * code points against regex 2.5.123; utf8proc's classes equal regex's.) */
#define YPOGEGRAMMENI 0x345

/* <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static size_t pat_match(const int32_t *t, size_t n, size_t i) {
  static const char *const lits[] = {SOT, EOT, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
    size_t m = match_lit(t, n, i, lits[k]);
    if (m) return m;
  }
  size_t j = i;
  while (j < n && mmp_u_isletter(t[j])) j++;
  if (j > i) return j - i;
  if (mmp_u_isnumber(t[i])) return 1;
  while (j < n && !mmp_re_isspace(t[j]) && !mmp_u_isletter(t[j]) && !mmp_u_isnumber(t[j]) &&
         t[j] != YPOGEGRAMMENI)
    j++;
  return j - i;
}

/* s = s.strip(), in place. An empty string may have no buffer at all. */
static void ustr_strip(mmp_ustr_t *s) {
  size_t b = 0, e = s->len;
  mmp_py_strip(s->cp, &b, &e, true, true);
  if (b > 0) memmove(s->cp, s->cp + b, (e - b) * sizeof(int32_t));
  s->len = e - b;
}

/* whitespace_clean: re.sub(r"\s+", " ", text).strip() */
static int whitespace_clean(mmp_ustr_t *s) {
  size_t k = 0;
  for (size_t i = 0; i < s->len;) {
    if (mmp_re_isspace(s->cp[i])) {
      while (i < s->len && mmp_re_isspace(s->cp[i])) i++;
      s->cp[k++] = ' ';
    } else {
      s->cp[k++] = s->cp[i++];
    }
  }
  s->len = k;
  ustr_strip(s);
  return 0;
}

/* _tokenize of one piece */
static int tokenize_piece(const mmp_cliptok_t *t, const int32_t *cp, size_t n, mmp_ids_t *out) {
  mmp_ustr_t s = {0}, low = {0};
  mmp_bstr_t tok = {0};
  int rc = mmp_ustr_append(&s, cp, n);
  if (rc == 0) rc = mmp_ftfy_fix_text(&s);
  if (rc == 0 && t->openai) {
    rc = mmp_html_unescape(&s);
    if (rc == 0) rc = mmp_html_unescape(&s);
    if (rc == 0) ustr_strip(&s);
  }
  if (rc == 0) rc = whitespace_clean(&s);
  if (rc == 0) rc = mmp_py_lower(&low, s.cp, s.len, true);
  for (size_t i = 0; rc == 0 && i < low.len;) {
    size_t m = pat_match(low.cp, low.len, i);
    if (!m) {
      i++;
      continue;
    }
    /* the UTF-8 bytes of the match, each mapped through bytes_to_unicode */
    mmp_bstr_t raw = {0};
    rc = mmp_bstr_from_ustr(&raw, low.cp + i, m);
    tok.len = 0;
    for (size_t j = 0; rc == 0 && j < raw.len; j++)
      rc = mmp_bstr_put_utf8(&tok, t->byte_enc[(unsigned char)raw.p[j]]);
    mmp_bstr_free(&raw);
    if (rc == 0) rc = bpe(t, tok.p, tok.len, out);
    i += m;
  }
  mmp_ustr_free(&s);
  mmp_ustr_free(&low);
  mmp_bstr_free(&tok);
  return rc;
}

static int64_t id_cb(const void *tok, const char *s, size_t len) {
  return token_id(tok, s, len);
}

static int piece_cb(const void *tok, const int32_t *cp, size_t n, mmp_ids_t *out) {
  return tokenize_piece(tok, cp, n, out);
}

int mmp_cliptok_encode(const mmp_cliptok_t *t, const char *text, size_t len, int64_t **ids_out,
                       size_t *n_out) {
  mmp_ustr_t u = {0}, low = {0};
  int rc = mmp_ustr_from_utf8(&u, text, len);
  if (rc == 0 && t->lowercase) {
    rc = mmp_py_lower(&low, u.cp, u.len, true);
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
