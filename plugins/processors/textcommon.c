/* plugins/processors/textcommon.c - UTF-8, Python str semantics, hash map
 * and transformers' added-token trie for the tokenizer plugins. */
#include "plugins/processors/textcommon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

#include <mmpipe/error.h>

/* ---- code point strings ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t nc = *cap ? *cap : 16;
  while (nc < need) nc *= 2;
  void *q = realloc(*p, nc * elem);
  if (!q) return mmp_error_set(MMP_ENOMEM, "out of memory");
  *p = q;
  *cap = nc;
  return 0;
}

int mmp_ustr_push(mmp_ustr_t *s, int32_t c) {
  if (grow((void **)&s->cp, &s->cap, s->len + 1, sizeof(int32_t)) < 0)
    return MMP_ENOMEM;
  s->cp[s->len++] = c;
  return 0;
}

int mmp_ustr_append(mmp_ustr_t *s, const int32_t *c, size_t n) {
  if (grow((void **)&s->cp, &s->cap, s->len + n + 1, sizeof(int32_t)) < 0)
    return MMP_ENOMEM;
  if (n) memcpy(s->cp + s->len, c, n * sizeof(int32_t));
  s->len += n;
  return 0;
}

void mmp_ustr_free(mmp_ustr_t *s) {
  free(s->cp);
  s->cp = NULL;
  s->len = s->cap = 0;
}

int mmp_ustr_from_utf8(mmp_ustr_t *s, const char *text, size_t n) {
  const unsigned char *u = (const unsigned char *)text;
  size_t i = 0;
  s->len = 0;
  while (i < n) {
    unsigned char c = u[i];
    int32_t cp;
    size_t k;
    if (c < 0x80) {
      cp = c;
      k = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      cp = c & 0x1F;
      k = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      cp = c & 0x0F;
      k = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      cp = c & 0x07;
      k = 4;
    } else {
      return mmp_error_set(MMP_EDATA, "invalid UTF-8 at byte %zu", i);
    }
    if (i + k > n)
      return mmp_error_set(MMP_EDATA, "invalid UTF-8 at byte %zu (truncated sequence)", i);
    for (size_t j = 1; j < k; j++) {
      if ((u[i + j] & 0xC0) != 0x80)
        return mmp_error_set(MMP_EDATA, "invalid UTF-8 at byte %zu", i);
      cp = (cp << 6) | (u[i + j] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return mmp_error_set(MMP_EDATA, "invalid UTF-8 at byte %zu", i);
    if (mmp_ustr_push(s, cp) < 0) return MMP_ENOMEM;
    i += k;
  }
  return 0;
}

/* ---- byte strings ---- */

int mmp_bstr_append(mmp_bstr_t *b, const char *p, size_t n) {
  if (grow((void **)&b->p, &b->cap, b->len + n + 1, 1) < 0) return MMP_ENOMEM;
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

int mmp_bstr_putc(mmp_bstr_t *b, char c) { return mmp_bstr_append(b, &c, 1); }

int mmp_bstr_put_utf8(mmp_bstr_t *b, int32_t c) {
  char buf[4];
  size_t k;
  uint32_t u = (uint32_t)c;
  if (u < 0x80) {
    buf[0] = (char)u;
    k = 1;
  } else if (u < 0x800) {
    buf[0] = (char)(0xC0 | (u >> 6));
    buf[1] = (char)(0x80 | (u & 0x3F));
    k = 2;
  } else if (u < 0x10000) {
    buf[0] = (char)(0xE0 | (u >> 12));
    buf[1] = (char)(0x80 | ((u >> 6) & 0x3F));
    buf[2] = (char)(0x80 | (u & 0x3F));
    k = 3;
  } else {
    buf[0] = (char)(0xF0 | (u >> 18));
    buf[1] = (char)(0x80 | ((u >> 12) & 0x3F));
    buf[2] = (char)(0x80 | ((u >> 6) & 0x3F));
    buf[3] = (char)(0x80 | (u & 0x3F));
    k = 4;
  }
  return mmp_bstr_append(b, buf, k);
}

int mmp_bstr_from_ustr(mmp_bstr_t *b, const int32_t *cp, size_t n) {
  b->len = 0;
  if (mmp_bstr_append(b, "", 0) < 0) return MMP_ENOMEM;
  for (size_t i = 0; i < n; i++)
    if (mmp_bstr_put_utf8(b, cp[i]) < 0) return MMP_ENOMEM;
  return 0;
}

void mmp_bstr_free(mmp_bstr_t *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* ---- hash map (open addressing, FNV-1a) ---- */

typedef struct strmap_slot {
  char *key; /* NULL = empty */
  size_t klen;
  uint64_t hash;
  int64_t value;
} strmap_slot_t;

struct mmp_strmap {
  strmap_slot_t *slots;
  size_t cap, size;
};

static uint64_t fnv1a(const char *k, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 1099511628211ULL;
  }
  return h;
}

mmp_strmap_t *mmp_strmap_new(void) {
  mmp_strmap_t *m = calloc(1, sizeof(*m));
  if (!m) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  return m;
}

void mmp_strmap_free(mmp_strmap_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
  free(m->slots);
  free(m);
}

static int strmap_rehash(mmp_strmap_t *m, size_t ncap) {
  strmap_slot_t *ns = calloc(ncap, sizeof(*ns));
  if (!ns) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->slots[i].key) continue;
    size_t j = m->slots[i].hash & (ncap - 1);
    while (ns[j].key) j = (j + 1) & (ncap - 1);
    ns[j] = m->slots[i];
  }
  free(m->slots);
  m->slots = ns;
  m->cap = ncap;
  return 0;
}

int mmp_strmap_put(mmp_strmap_t *m, const char *key, size_t klen, int64_t v) {
  if ((m->size + 1) * 2 > m->cap)
    if (strmap_rehash(m, m->cap ? m->cap * 2 : 64) < 0) return MMP_ENOMEM;
  uint64_t h = fnv1a(key, klen);
  size_t j = h & (m->cap - 1);
  while (m->slots[j].key) {
    if (m->slots[j].hash == h && m->slots[j].klen == klen &&
        memcmp(m->slots[j].key, key, klen) == 0) {
      m->slots[j].value = v;
      return 0;
    }
    j = (j + 1) & (m->cap - 1);
  }
  char *k = malloc(klen + 1);
  if (!k) return mmp_error_set(MMP_ENOMEM, "out of memory");
  memcpy(k, key, klen);
  k[klen] = '\0';
  m->slots[j].key = k;
  m->slots[j].klen = klen;
  m->slots[j].hash = h;
  m->slots[j].value = v;
  m->size++;
  return 0;
}

bool mmp_strmap_get(const mmp_strmap_t *m, const char *key, size_t klen,
                    int64_t *v) {
  if (!m->cap) return false;
  uint64_t h = fnv1a(key, klen);
  size_t j = h & (m->cap - 1);
  while (m->slots[j].key) {
    if (m->slots[j].hash == h && m->slots[j].klen == klen &&
        memcmp(m->slots[j].key, key, klen) == 0) {
      if (v) *v = m->slots[j].value;
      return true;
    }
    j = (j + 1) & (m->cap - 1);
  }
  return false;
}

size_t mmp_strmap_size(const mmp_strmap_t *m) { return m->size; }

/* ---- character classes ---- */

bool mmp_py_isspace(int32_t c) {
  /* CPython: bidirectional class WS, B or S, or category Zs */
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool mmp_re_isspace(int32_t c) {
  /* Unicode White_Space (what `regex` matches with \s) */
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool mmp_u_isletter(int32_t c) {
  utf8proc_category_t k = utf8proc_category(c);
  return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL ||
         k == UTF8PROC_CATEGORY_LT || k == UTF8PROC_CATEGORY_LM ||
         k == UTF8PROC_CATEGORY_LO;
}

bool mmp_u_isnumber(int32_t c) {
  utf8proc_category_t k = utf8proc_category(c);
  return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL ||
         k == UTF8PROC_CATEGORY_NO;
}

const char *mmp_u_category(int32_t c) { return utf8proc_category_string(c); }

static bool is_cased(int32_t c) {
  utf8proc_category_t k = utf8proc_category(c);
  if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
    return true;
  return utf8proc_tolower(c) != c || utf8proc_toupper(c) != c;
}

static bool is_case_ignorable(int32_t c) {
  utf8proc_category_t k = utf8proc_category(c);
  if (k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME ||
      k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_LM ||
      k == UTF8PROC_CATEGORY_SK)
    return true;
  /* Word_Break MidLetter, MidNumLet, Single_Quote */
  switch (c) {
  case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x5F4:
  case 0x2018: case 0x2019: case 0x2024: case 0x2027: case 0xFE13:
  case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
    return true;
  default:
    return false;
  }
}

int mmp_py_lower(mmp_ustr_t *out, const int32_t *in, size_t n, bool final_sigma) {
  for (size_t i = 0; i < n; i++) {
    int32_t c = in[i];
    if (c < 0x80) {
      if (mmp_ustr_push(out, (c >= 'A' && c <= 'Z') ? c + 32 : c) < 0) return MMP_ENOMEM;
      continue;
    }
    if (c == 0x130) { /* SpecialCasing: I WITH DOT ABOVE -> i + COMBINING DOT ABOVE */
      if (mmp_ustr_push(out, 'i') < 0 || mmp_ustr_push(out, 0x307) < 0) return MMP_ENOMEM;
      continue;
    }
    if (c == 0x3A3 && final_sigma) {
      /* \p{cased}\p{case-ignorable}* SIGMA !(\p{case-ignorable}* \p{cased}) */
      size_t j = i;
      bool fs = false;
      while (j > 0 && is_case_ignorable(in[j - 1])) j--;
      fs = j > 0 && is_cased(in[j - 1]);
      if (fs) {
        size_t k = i + 1;
        while (k < n && is_case_ignorable(in[k])) k++;
        fs = k == n || !is_cased(in[k]);
      }
      if (mmp_ustr_push(out, fs ? 0x3C2 : 0x3C3) < 0) return MMP_ENOMEM;
      continue;
    }
    if (mmp_ustr_push(out, utf8proc_tolower(c)) < 0) return MMP_ENOMEM;
  }
  return 0;
}

int mmp_u_normalize(mmp_ustr_t *s, const char *form) {
  utf8proc_option_t opt = UTF8PROC_STABLE;
  if (strcmp(form, "NFC") == 0)
    opt |= UTF8PROC_COMPOSE;
  else if (strcmp(form, "NFD") == 0)
    opt |= UTF8PROC_DECOMPOSE;
  else if (strcmp(form, "NFKC") == 0)
    opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  else
    return mmp_error_set(MMP_EINVAL, "unknown normalization form %s", form);
  bool ascii = true;
  for (size_t i = 0; i < s->len && ascii; i++) ascii = s->cp[i] < 0x80;
  if (ascii) return 0;
  mmp_bstr_t b = {0};
  if (mmp_bstr_from_ustr(&b, s->cp, s->len) < 0) return MMP_ENOMEM;
  utf8proc_uint8_t *dst = NULL;
  utf8proc_ssize_t r =
      utf8proc_map((const utf8proc_uint8_t *)b.p, (utf8proc_ssize_t)b.len, &dst, opt);
  mmp_bstr_free(&b);
  if (r < 0) return mmp_error_set(MMP_EDATA, "normalization: %s", utf8proc_errmsg(r));
  int rc = mmp_ustr_from_utf8(s, (const char *)dst, (size_t)r);
  free(dst);
  return rc;
}

void mmp_py_strip(const int32_t *cp, size_t *b, size_t *e, bool left, bool right) {
  if (left)
    while (*b < *e && mmp_py_isspace(cp[*b])) (*b)++;
  if (right)
    while (*e > *b && mmp_py_isspace(cp[*e - 1])) (*e)--;
}

/* ---- Trie ---- */

typedef struct trie_node {
  int32_t ch;
  int32_t first_child; /* index or -1 */
  int32_t next;        /* sibling index or -1 */
  bool terminal;
} trie_node_t;

struct mmp_trie {
  trie_node_t *nodes;
  size_t n, cap;
};

mmp_trie_t *mmp_trie_new(void) {
  mmp_trie_t *t = calloc(1, sizeof(*t));
  if (!t || grow((void **)&t->nodes, &t->cap, 1, sizeof(trie_node_t)) < 0) {
    free(t);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  t->nodes[0] = (trie_node_t){0, -1, -1, false};
  t->n = 1;
  return t;
}

void mmp_trie_free(mmp_trie_t *t) {
  if (!t) return;
  free(t->nodes);
  free(t);
}

static int32_t trie_child(const mmp_trie_t *t, int32_t node, int32_t ch) {
  for (int32_t c = t->nodes[node].first_child; c >= 0; c = t->nodes[c].next)
    if (t->nodes[c].ch == ch) return c;
  return -1;
}

int mmp_trie_add(mmp_trie_t *t, const int32_t *word, size_t n) {
  if (n == 0) return 0; /* Trie.add ignores the empty string */
  int32_t node = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t c = trie_child(t, node, word[i]);
    if (c < 0) {
      if (grow((void **)&t->nodes, &t->cap, t->n + 1, sizeof(trie_node_t)) < 0)
        return MMP_ENOMEM;
      c = (int32_t)t->n++;
      t->nodes[c] = (trie_node_t){word[i], -1, t->nodes[node].first_child, false};
      t->nodes[node].first_child = c;
    }
    node = c;
  }
  t->nodes[node].terminal = true;
  return 0;
}

/* A partial match: where it started and the trie node reached. States stay
 * in insertion order (= increasing start), like the OrderedDict/dict of the
 * Python implementation; removal is deferred to the end of a step. */
typedef struct trie_state {
  size_t start;
  int32_t node;
  bool removed;
} trie_state_t;

int mmp_trie_split(const mmp_trie_t *t, const int32_t *text, size_t n,
                   size_t **cuts_out, size_t *ncuts_out) {
  trie_state_t *st = NULL;
  size_t nst = 0, capst = 0;
  size_t *off = NULL, noff = 0, capoff = 0;
  int rc = 0;
  if (grow((void **)&off, &capoff, 1, sizeof(size_t)) < 0) return MMP_ENOMEM;
  off[noff++] = 0;
  size_t skip = 0;
  for (size_t cur = 0; cur < n; cur++) {
    if (skip && cur < skip) continue;
    int32_t ch = text[cur];
    bool reset = false;
    for (size_t si = 0; si < nst; si++) {
      size_t start = st[si].start;
      int32_t ptr = st[si].node;
      if (t->nodes[ptr].terminal) {
        size_t end = 0;
        for (size_t li = 0; li < nst; li++) {
          size_t lookstart = st[li].start;
          int32_t lptr = st[li].node;
          size_t la;
          if (lookstart > start) break;
          if (lookstart < start) {
            la = cur + 1;
            end = cur + 1;
          } else {
            la = cur;
            end = cur;
          }
          bool has_next = la < n;
          int32_t next = has_next ? text[la] : 0;
          if (t->nodes[lptr].terminal) {
            start = lookstart;
            end = la;
            skip = la;
          }
          while (has_next) {
            int32_t c = trie_child(t, lptr, next);
            if (c < 0) break;
            lptr = c;
            la++;
            if (t->nodes[lptr].terminal) {
              start = lookstart;
              end = la;
              skip = la;
            }
            if (la == n) break;
            next = text[la];
          }
        }
        if (grow((void **)&off, &capoff, noff + 2, sizeof(size_t)) < 0) {
          rc = MMP_ENOMEM;
          goto out;
        }
        off[noff++] = start;
        off[noff++] = end;
        reset = true;
        break;
      } else {
        int32_t c = trie_child(t, ptr, ch);
        if (c >= 0)
          st[si].node = c;
        else
          st[si].removed = true;
      }
    }
    if (reset) {
      nst = 0;
    } else {
      size_t k = 0;
      for (size_t si = 0; si < nst; si++)
        if (!st[si].removed) st[k++] = st[si];
      nst = k;
    }
    if (cur >= skip) {
      int32_t c = trie_child(t, 0, ch);
      if (c >= 0) {
        if (grow((void **)&st, &capst, nst + 1, sizeof(trie_state_t)) < 0) {
          rc = MMP_ENOMEM;
          goto out;
        }
        st[nst++] = (trie_state_t){cur, c, false};
      }
    }
  }
  for (size_t si = 0; si < nst; si++) {
    if (t->nodes[st[si].node].terminal) {
      if (grow((void **)&off, &capoff, noff + 2, sizeof(size_t)) < 0) {
        rc = MMP_ENOMEM;
        goto out;
      }
      off[noff++] = st[si].start;
      off[noff++] = n;
      break;
    }
  }
  if (grow((void **)&off, &capoff, noff + 1, sizeof(size_t)) < 0) {
    rc = MMP_ENOMEM;
    goto out;
  }
  off[noff++] = n;
  /* cut_text: keep strictly increasing cut points (drops empty pieces and,
   * like the reference, ignores offsets that go backwards) */
  {
    size_t *cuts = malloc((noff + 1) * sizeof(size_t));
    if (!cuts) {
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      goto out;
    }
    size_t nc = 0, start = 0;
    cuts[nc++] = 0;
    for (size_t i = 0; i < noff; i++) {
      size_t end = off[i];
      if (start >= end) continue;
      cuts[nc++] = end;
      start = end;
    }
    *cuts_out = cuts;
    *ncuts_out = nc;
  }
out:
  free(st);
  free(off);
  return rc;
}

/* ---- files ---- */

int mmp_read_file(const char *path, char **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "cannot open %s: %s", path, strerror(errno));
  mmp_bstr_t b = {0};
  char buf[65536];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, f)) > 0)
    if (mmp_bstr_append(&b, buf, k) < 0) {
      fclose(f);
      mmp_bstr_free(&b);
      return MMP_ENOMEM;
    }
  int err = ferror(f);
  fclose(f);
  if (err) {
    mmp_bstr_free(&b);
    return mmp_error_set(MMP_EIO, "cannot read %s", path);
  }
  if (mmp_bstr_append(&b, "", 0) < 0) return MMP_ENOMEM;
  *data = b.p;
  *len = b.len;
  return 0;
}

int mmp_read_gz_file(const char *path, char **data, size_t *len) {
  FILE *probe = fopen(path, "rb");
  if (!probe) return mmp_error_set(MMP_EIO, "cannot open %s: %s", path, strerror(errno));
  fclose(probe);
  gzFile g = gzopen(path, "rb");
  if (!g) return mmp_error_set(MMP_EIO, "cannot open %s (zlib)", path);
  mmp_bstr_t b = {0};
  char buf[65536];
  int k;
  while ((k = gzread(g, buf, sizeof buf)) > 0)
    if (mmp_bstr_append(&b, buf, (size_t)k) < 0) {
      gzclose(g);
      mmp_bstr_free(&b);
      return MMP_ENOMEM;
    }
  if (k < 0) {
    int errnum = 0;
    const char *msg = gzerror(g, &errnum);
    int rc = mmp_error_set(MMP_EIO, "cannot read %s: zlib: %s", path, msg ? msg : "error");
    gzclose(g);
    mmp_bstr_free(&b);
    return rc;
  }
  gzclose(g);
  if (mmp_bstr_append(&b, "", 0) < 0) return MMP_ENOMEM;
  *data = b.p;
  *len = b.len;
  return 0;
}

/* ---- added tokens ---- */

int mmp_added_init(mmp_added_t *a) {
  memset(a, 0, sizeof(*a));
  a->encoder = mmp_strmap_new();
  a->nosplit = mmp_strmap_new();
  a->trie = mmp_trie_new();
  if (!a->encoder || !a->nosplit || !a->trie) {
    mmp_added_free(a);
    return MMP_ENOMEM;
  }
  return 0;
}

void mmp_added_free(mmp_added_t *a) {
  mmp_strmap_free(a->encoder);
  mmp_strmap_free(a->nosplit);
  mmp_trie_free(a->trie);
  memset(a, 0, sizeof(*a));
}

static bool piece_nosplit(const mmp_added_t *a, const int32_t *text, size_t b, size_t e,
                          mmp_bstr_t *tmp, int64_t *flags) {
  if (mmp_bstr_from_ustr(tmp, text + b, e - b) < 0) return false;
  return mmp_strmap_get(a->nosplit, tmp->p, tmp->len, flags);
}

int mmp_added_split(const mmp_added_t *a, const int32_t *text, size_t n,
                    mmp_piece_t **pieces, size_t *npieces) {
  size_t *cuts = NULL, ncuts = 0;
  int rc = mmp_trie_split(a->trie, text, n, &cuts, &ncuts);
  if (rc < 0) return rc;
  size_t np = ncuts > 0 ? ncuts - 1 : 0;
  mmp_piece_t *p = malloc((np + 1) * sizeof(*p));
  if (!p) {
    free(cuts);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < np; i++) p[i] = (mmp_piece_t){cuts[i], cuts[i + 1], false};
  free(cuts);
  mmp_bstr_t tmp = {0};
  for (size_t i = 0; i < np; i++) {
    int64_t strip = 0;
    if (!piece_nosplit(a, text, p[i].b, p[i].e, &tmp, &strip)) continue;
    if (strip) {
      if (i + 1 < np && p[i + 1].e > p[i + 1].b) /* right.lstrip() */
        mmp_py_strip(text, &p[i + 1].b, &p[i + 1].e, true, false);
      if (i > 0 && p[i - 1].e > p[i - 1].b) /* left.rstrip() */
        mmp_py_strip(text, &p[i - 1].b, &p[i - 1].e, false, true);
    }
  }
  size_t k = 0;
  for (size_t i = 0; i < np; i++) {
    if (p[i].e == p[i].b) continue;
    int64_t f;
    p[i].nosplit = piece_nosplit(a, text, p[i].b, p[i].e, &tmp, &f);
    p[k++] = p[i];
  }
  mmp_bstr_free(&tmp);
  *pieces = p;
  *npieces = k;
  return 0;
}

int mmp_tok_pack_row(const int64_t *ids, size_t nids, int64_t bos, int64_t eos,
                     int64_t pad, int64_t max_length, bool truncation,
                     size_t text_index, int64_t *row_ids, int64_t *row_mask) {
  int64_t specials = (bos >= 0) + (eos >= 0);
  int64_t room = max_length - specials;
  if (room < 0)
    return mmp_error_set(MMP_EINVAL, "max_length %lld leaves no room for the special tokens",
                         (long long)max_length);
  if ((int64_t)nids > room) {
    if (!truncation)
      return mmp_error_set(MMP_EDATA,
                           "text %zu has %zu tokens, more than max_length %lld allows (%lld "
                           "with the special tokens) and truncation is off",
                           text_index, nids, (long long)max_length, (long long)room);
    nids = (size_t)room;
  }
  int64_t k = 0;
  if (bos >= 0) row_ids[k++] = bos;
  for (size_t i = 0; i < nids; i++) row_ids[k++] = ids[i];
  if (eos >= 0) row_ids[k++] = eos;
  for (int64_t i = 0; i < max_length; i++) {
    row_mask[i] = i < k ? 1 : 0;
    if (i >= k) row_ids[i] = pad;
  }
  return 0;
}

int mmp_ids_push(mmp_ids_t *l, int64_t id) {
  if (l->n == l->cap) {
    size_t nc = l->cap ? l->cap * 2 : 32;
    int64_t *q = realloc(l->v, nc * sizeof(int64_t));
    if (!q) return mmp_error_set(MMP_ENOMEM, "out of memory");
    l->v = q;
    l->cap = nc;
  }
  l->v[l->n++] = id;
  return 0;
}

int mmp_tok_encode_pieces(const mmp_added_t *added, const int32_t *cp, size_t n,
                          mmp_tok_id_fn token_id, mmp_tok_piece_fn piece, const void *tok,
                          int64_t **ids_out, size_t *n_out) {
  mmp_ids_t ids = {0};
  mmp_piece_t *pieces = NULL;
  size_t np = 0;
  mmp_bstr_t tmp = {0};
  int rc = mmp_added_split(added, cp, n, &pieces, &np);
  for (size_t i = 0; rc == 0 && i < np; i++) {
    if (pieces[i].nosplit) {
      rc = mmp_bstr_from_ustr(&tmp, cp + pieces[i].b, pieces[i].e - pieces[i].b);
      if (rc == 0) rc = mmp_ids_push(&ids, token_id(tok, tmp.p, tmp.len));
    } else {
      rc = piece(tok, cp + pieces[i].b, pieces[i].e - pieces[i].b, &ids);
    }
  }
  free(pieces);
  mmp_bstr_free(&tmp);
  if (rc < 0) {
    free(ids.v);
    return rc;
  }
  *ids_out = ids.v;
  *n_out = ids.n;
  return 0;
}

int mmp_pre_caption(const char *text, size_t len, int64_t max_words, char **out) {
  mmp_ustr_t u = {0}, lo = {0}, v = {0};
  mmp_bstr_t b = {0};
  *out = NULL;
  int rc = mmp_ustr_from_utf8(&u, text, len);
  if (rc == 0) rc = mmp_py_lower(&lo, u.cp, u.len, true);
  for (size_t i = 0; rc == 0 && i < lo.len; i++) {
    int32_t c = lo.cp[i];
    if (c < 0x80 && strchr(".!\"()*#:;~", (int)c)) c = ' ';
    lo.cp[i] = c;
  }
  /* re.sub(r"\s{2,}", ' '): a single whitespace character stays as it is */
  for (size_t i = 0; rc == 0 && i < lo.len;) {
    size_t j = i;
    while (j < lo.len && mmp_py_isspace(lo.cp[j])) j++;
    if (j - i >= 2) rc = mmp_ustr_push(&v, ' '), i = j;
    else rc = mmp_ustr_push(&v, lo.cp[i]), i++;
  }
  size_t bgn = 0, end = v.len;
  while (end > bgn && v.cp[end - 1] == '\n') end--;
  while (end > bgn && v.cp[end - 1] == ' ') end--;
  while (bgn < end && v.cp[bgn] == ' ') bgn++;
  if (rc == 0 && max_words > 0) { /* split(' ') counts empty words too */
    int64_t words = 1;
    for (size_t i = bgn; i < end; i++)
      if (v.cp[i] == ' ' && ++words > max_words) {
        end = i;
        break;
      }
  }
  if (rc == 0) rc = mmp_bstr_from_ustr(&b, v.cp + bgn, end - bgn);
  mmp_ustr_free(&u);
  mmp_ustr_free(&lo);
  mmp_ustr_free(&v);
  if (rc < 0) {
    mmp_bstr_free(&b);
    return rc;
  }
  if (!b.p && !(b.p = calloc(1, 1))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  *out = b.p;
  return 0;
}
