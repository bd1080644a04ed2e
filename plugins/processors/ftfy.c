/* plugins/processors/ftfy.c - ftfy 6.1.1's fix_text (default configuration)
 * and Python's html.unescape, on code point strings, for the CLIP tokenizer.
 *
 * Every default fixer of ftfy 6.1.1 is reproduced: unescape_html ("auto"),
 * fix_encoding (the badness heuristic, the nine single-byte encodings with
 * restore_byte_a0, replace_lossy_sequences and the utf-8-variants decoder,
 * decode_inconsistent_utf8, the Latin-1/Windows-1252 step, fix_c1_controls),
 * fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
 * fix_surrogates (a no-op here: input is valid UTF-8), remove_terminal_escapes,
 * remove_control_chars and NFC, applied per line until nothing changes, as
 * fix_text does. Character data: textdata.h (generated). Differences:
 * character properties come from utf8proc (Unicode 15) where CPython 3.11
 * uses Unicode 14. */
#include "plugins/processors/ftfy.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include <mmpipe/error.h>

#include "plugins/processors/textdata.h"

enum {
  S_COMMON, S_C1, S_BAD, S_CURRENCY, S_START, S_END, S_NUMERIC, S_KAOMOJI,
  S_UPPER_ACC, S_LOWER_ACC, S_UPPER_COMMON, S_LOWER_COMMON, S_BOX,
  S_FIRST2, S_FIRST3, S_FIRST4, S_CONT, S_CONT_STRICT, S_COUNT
};
#define B(x) (1u << (x))

static int cmp_u16(const void *a, const void *b) {
  return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static unsigned cmask(int32_t c) {
  if (c < 0x80) return c == 0x20 ? B(S_CONT) : 0; /* only ASCII member: a space */
  if (c > 0xFFFF) return 0;
  unsigned m = 0;
  uint16_t k = (uint16_t)c;
  for (int i = 0; i < S_COUNT; i++)
    if (bsearch(&k, mmp_ftfy_sets[i].cps, (size_t)mmp_ftfy_sets[i].n,
                sizeof(uint16_t), cmp_u16))
      m |= B(i);
  return m;
}

static bool in_str(int32_t c, const char *utf8) {
  /* membership in a short literal set given as UTF-8 */
  const unsigned char *p = (const unsigned char *)utf8;
  while (*p) {
    int32_t d;
    utf8proc_ssize_t k = utf8proc_iterate(p, -1, &d);
    if (k <= 0) return false;
    if (d == c) return true;
    p += k;
  }
  return false;
}

static bool is_az(int32_t c) { return c >= 'a' && c <= 'z'; }
static bool is_azAZ(int32_t c) { return is_az(c) || (c >= 'A' && c <= 'Z'); }
static bool is_word(int32_t c) { /* re's \w: str.isalnum() or '_' */
  return c == '_' || mmp_u_isletter(c) || mmp_u_isnumber(c);
}

/* ---- badness.BADNESS_RE ---- */

static bool bad_at(const int32_t *t, const unsigned *m, size_t n, size_t i) {
  const unsigned A = B(S_LOWER_ACC) | B(S_UPPER_ACC) | B(S_BOX) | B(S_START) |
                     B(S_END) | B(S_CURRENCY) | B(S_NUMERIC);
  int32_t c0 = t[i];
  unsigned m0 = m[i], m1 = i + 1 < n ? m[i + 1] : 0, m2 = i + 2 < n ? m[i + 2] : 0;
  bool h1 = i + 1 < n, h2 = i + 2 < n, h3 = i + 3 < n;
  int32_t c1 = h1 ? t[i + 1] : -1, c2 = h2 ? t[i + 2] : -1;
  if (m0 & B(S_C1)) return true;
  if (h1 && (m0 & (A | B(S_BAD))) && (m1 & B(S_BAD))) return true;
  if (h2 && is_azAZ(c0) && (m1 & (B(S_LOWER_COMMON) | B(S_UPPER_COMMON))) && (m2 & B(S_BAD)))
    return true;
  if (h1 && (m0 & B(S_BAD)) && (m1 & A)) return true;
  if (h1 && (m0 & (B(S_LOWER_ACC) | B(S_LOWER_COMMON) | B(S_BOX) | B(S_END) | B(S_CURRENCY) | B(S_NUMERIC))) &&
      (m1 & B(S_UPPER_ACC)))
    return true;
  if (h1 && (m0 & (B(S_BOX) | B(S_END) | B(S_CURRENCY) | B(S_NUMERIC))) && (m1 & B(S_LOWER_ACC)))
    return true;
  if (h1 && (m0 & (B(S_LOWER_ACC) | B(S_BOX) | B(S_END))) && (m1 & B(S_CURRENCY))) return true;
  if (h2 && mmp_py_isspace(c0) && (m1 & B(S_UPPER_ACC)) && (m2 & B(S_CURRENCY))) return true;
  if (h1 && (m0 & (B(S_UPPER_ACC) | B(S_BOX))) && (m1 & B(S_NUMERIC))) return true;
  if (h2 && (m0 & (B(S_LOWER_ACC) | B(S_UPPER_ACC) | B(S_BOX) | B(S_CURRENCY) | B(S_END))) &&
      (m1 & B(S_START)) && (m2 & B(S_NUMERIC)))
    return true;
  if (h2 && (m0 & (B(S_LOWER_ACC) | B(S_UPPER_ACC) | B(S_CURRENCY) | B(S_NUMERIC) | B(S_BOX))) &&
      (m1 & B(S_END)) && (m2 & B(S_START)))
    return true;
  if (h1 && (m0 & (B(S_CURRENCY) | B(S_NUMERIC) | B(S_BOX))) && (m1 & B(S_START))) return true;
  if (h2 && is_az(c0) && (m1 & B(S_UPPER_ACC)) && (m2 & (B(S_START) | B(S_CURRENCY)))) return true;
  if (h1 && (m0 & B(S_BOX)) && (m1 & B(S_KAOMOJI))) return true;
  if (h1 && (m0 & (B(S_LOWER_ACC) | B(S_UPPER_ACC) | B(S_CURRENCY) | B(S_NUMERIC) | B(S_START) | B(S_END))) &&
      (m1 & B(S_BOX)))
    return true;
  if (h1 && (m0 & B(S_BOX)) && (m1 & B(S_END))) return true;
  if (h2 && (m0 & (B(S_LOWER_ACC) | B(S_UPPER_ACC))) && (m1 & B(S_END)) && is_word(c2)) return true;
  if (h1 && (c0 == 0x152 || c0 == 0x153) && !is_azAZ(c1)) return true;
  if (h1 && in_str(c0, "ÂÃÎÐ") &&
      (in_str(c1, "€Šš¢£Ÿž\xc2\xa0\xc2\xad®©°·»–—´") || (m1 & (B(S_START) | B(S_END)))))
    return true;
  if (h1 && c0 == 0xD7 && (c1 == 0xB2 || c1 == 0xB3)) return true;
  if (h3 && (c0 == 0xD8 || c0 == 0xD9) && (c2 == 0xD8 || c2 == 0xD9)) {
    const unsigned S = B(S_COMMON) | B(S_CURRENCY) | B(S_BAD) | B(S_NUMERIC) | B(S_START);
    if (((m1 & S) || in_str(c1, "ŸŠ®°µ»")) && ((m[i + 3] & S) || in_str(t[i + 3], "ŸŠ®°µ»")))
      return true;
  }
  if (h1 && c0 == 0xE0 && in_str(c1, "²µ¹¼½¾")) return true;
  if (h1 && c0 == 0x221A && in_str(c1, "±∂†≠®™´≤≥¥µø")) return true;
  if (h1 && c0 == 0x2248 && (c1 == 0xB0 || c1 == 0xA2)) return true;
  if (h2 && c0 == 0x201A && c1 == 0xC4 && in_str(c2, "ìîïòôúùû†°¢π")) return true;
  if (h2 && c0 == 0x201A && (c1 == 0xE2 || c1 == 0xF3) && in_str(c2, "àä°ê")) return true;
  if (h1 && c0 == 0x432 && c1 == 0x402) return true;
  if (h2 && in_str(c0, "ВГРС") && in_str(c2, "ВГРС") &&
      ((m1 & (B(S_C1) | B(S_BAD) | B(S_START) | B(S_END) | B(S_CURRENCY))) || c1 == 0xB0 || c1 == 0xB5))
    return true;
  if (i + 5 < n && c0 == 0x413 && c1 == 0x45E && c2 == 0x412 && t[i + 3] == 0x402 &&
      t[i + 4] == 0x412 && t[i + 5] != '\n' && i + 6 < n && (is_azAZ(t[i + 6]) || t[i + 6] == ' '))
    return true;
  if (h1 && c0 == 0xC3 && (c1 == 0xA0 || c1 == 0xA1)) return true;
  if (is_az(c0)) {
    size_t j = i + 1;
    if (j < n && mmp_py_isspace(t[j]) && j + 2 < n && (t[j + 1] == 0xC3 || t[j + 1] == 0xC2) &&
        t[j + 2] == ' ')
      return true;
    if (j + 1 < n && (t[j] == 0xC3 || t[j] == 0xC2) && t[j + 1] == ' ') return true;
  }
  if (i == 0 && h1 && (c0 == 0xC3 || c0 == 0xC2) && c1 == ' ') return true;
  if (h2 && (is_az(c0) || in_str(c0, ".,?!") || (m0 & B(S_END))) && c1 == 0xC2 &&
      (c2 == ' ' || (m2 & (B(S_START) | B(S_END)))))
    return true;
  if (h2 && c0 == 0x3B2 && c1 == 0x20AC && in_str(c2, "™\xc2\xa0Ά\xc2\xad®°")) return true;
  if (h2 && in_str(c0, "ΒΓΞΟ") && in_str(c2, "ΒΓΞΟ") &&
      ((m1 & (B(S_C1) | B(S_BAD) | B(S_START) | B(S_END) | B(S_CURRENCY))) || c1 == 0xB0))
    return true;
  return false;
}

static bool is_bad(const int32_t *t, size_t n) {
  if (n == 0) return false;
  unsigned *m = malloc(n * sizeof(unsigned));
  if (!m) return false;
  for (size_t i = 0; i < n; i++) m[i] = cmask(t[i]);
  bool r = false;
  for (size_t i = 0; i < n && !r; i++) r = bad_at(t, m, n, i);
  free(m);
  return r;
}

/* ---- single-byte encodings ---- */

static bool sloppy(int e) { return strncmp(mmp_charmap_names[e], "sloppy", 6) == 0; }

/* Byte for code point @c in encoding @e, or -1. Mirrors ENCODING_REGEXES
 * (possible_encoding) and charmap_encode: ASCII except 0x1A encodes as
 * itself; the high bytes and 0x1A via the table. */
static int enc_byte(int e, int32_t c) {
  if (c < 0x80 && c != 0x1A) return (int)c;
  for (int b = 0x80; b < 0x100; b++)
    if (mmp_charmaps[e][b] == c) return b;
  if (mmp_charmaps[e][0x1A] == c) return 0x1A;
  return -1;
}

static bool encode_charmap(int e, const int32_t *t, size_t n, mmp_bstr_t *out) {
  out->len = 0;
  for (size_t i = 0; i < n; i++) {
    int b = enc_byte(e, t[i]);
    if (b < 0) return false;
    if (mmp_bstr_putc(out, (char)b) < 0) return false;
  }
  return true;
}

/* ---- byte-level fixes ---- */

static bool cont(unsigned char b) { return b >= 0x80 && b <= 0xBF; }
static bool cont_x(unsigned char b) { /* [\x80-\x84\x86-\x9f\xa1-\xbf] */
  return (b >= 0x80 && b <= 0x84) || (b >= 0x86 && b <= 0x9F) || (b >= 0xA1 && b <= 0xBF);
}

/* ALTERED_UTF8_RE match length at @i (0 = none) */
static size_t altered_at(const unsigned char *p, size_t n, size_t i) {
  unsigned char c = p[i];
  if (i + 1 < n && (c == 0xC2 || c == 0xC3 || c == 0xC5 || c == 0xCE || c == 0xD0 || c == 0xD9) &&
      p[i + 1] == ' ')
    return 2;
  if (i + 2 < n && (c == 0xE2 || c == 0xE3) && p[i + 1] == ' ' && cont_x(p[i + 2])) return 3;
  if (i + 2 < n && c >= 0xE0 && c <= 0xE3 && cont_x(p[i + 1]) && p[i + 2] == ' ') return 3;
  if (i + 3 < n && c == 0xF0) {
    if (p[i + 1] == ' ' && cont(p[i + 2]) && cont(p[i + 3])) return 4;
    if (cont(p[i + 1]) && p[i + 2] == ' ' && cont(p[i + 3])) return 4;
    if (cont(p[i + 1]) && cont(p[i + 2]) && p[i + 3] == ' ') return 4;
  }
  return 0;
}

static bool has_altered(const mmp_bstr_t *b) {
  for (size_t i = 0; i < b->len; i++)
    if (altered_at((const unsigned char *)b->p, b->len, i)) return true;
  return false;
}

static bool starts(const unsigned char *p, size_t n, size_t i, const char *lit) {
  size_t k = strlen(lit);
  return i + k <= n && memcmp(p + i, lit, k) == 0;
}

static int restore_byte_a0(mmp_bstr_t *b) {
  mmp_bstr_t o = {0};
  const unsigned char *p = (const unsigned char *)b->p;
  size_t n = b->len;
  /* A_GRAVE_WORD_RE: b'\xc3 (?! |quele|quela|quilo|s )' -> b'\xc3\xa0 ' */
  for (size_t i = 0; i < n;) {
    if (p[i] == 0xC3 && i + 1 < n && p[i + 1] == ' ' && !starts(p, n, i + 2, " ") &&
        !starts(p, n, i + 2, "quele") && !starts(p, n, i + 2, "quela") &&
        !starts(p, n, i + 2, "quilo") && !starts(p, n, i + 2, "s ")) {
      if (mmp_bstr_append(&o, "\xc3\xa0 ", 3) < 0) goto oom;
      i += 2;
    } else {
      if (mmp_bstr_putc(&o, (char)p[i]) < 0) goto oom;
      i++;
    }
  }
  /* ALTERED_UTF8_RE: spaces inside a match become 0xA0 */
  mmp_bstr_t o2 = {0};
  p = (const unsigned char *)o.p;
  n = o.len;
  if (mmp_bstr_append(&o2, "", 0) < 0) goto oom;
  for (size_t i = 0; i < n;) {
    size_t k = altered_at(p, n, i);
    if (k) {
      for (size_t j = 0; j < k; j++)
        if (mmp_bstr_putc(&o2, p[i + j] == ' ' ? (char)0xA0 : (char)p[i + j]) < 0) goto oom2;
      i += k;
    } else {
      if (mmp_bstr_putc(&o2, (char)p[i]) < 0) goto oom2;
      i++;
    }
  }
  mmp_bstr_free(&o);
  mmp_bstr_free(b);
  *b = o2;
  return 0;
oom2:
  mmp_bstr_free(&o2);
oom:
  mmp_bstr_free(&o);
  return MMP_ENOMEM;
}

/* LOSSY_UTF8_RE match length at @i */
static size_t lossy_at(const unsigned char *p, size_t n, size_t i) {
#define AT(k) (i + (k) < n ? p[i + (k)] : -1)
#define SUBQ(x) ((x) == 0x1A || (x) == '?')
#define CONT1A(x) ((x) == 0x1A || ((x) >= 0x80 && (x) <= 0xBF))
#define ANYQC(x) (SUBQ(x) || ((x) >= 0x80 && (x) <= 0xBF))
  int c = p[i];
  int a = AT(1), b = AT(2), d = AT(3), e = AT(4), f = AT(5);
  if (c >= 0xC2 && c <= 0xDF && a == 0x1A) return 2;
  if ((c == 0xC2 || c == 0xC3) && a == '?') return 2;
  if (c == 0xED && a >= 0xA0 && a <= 0xAF && SUBQ(b) && d == 0xED && e >= 0xB0 && e <= 0xBF &&
      (SUBQ(f) || (f >= 0x80 && f <= 0xBF)))
    return 6;
  if (c == 0xED && a >= 0xA0 && a <= 0xAF && ANYQC(b) && d == 0xED && e >= 0xB0 && e <= 0xBF &&
      SUBQ(f))
    return 6;
  if (c >= 0xE0 && c <= 0xEF && SUBQ(a) && CONT1A(b)) return 3;
  if (c >= 0xE0 && c <= 0xEF && CONT1A(a) && SUBQ(b)) return 3;
  if (c >= 0xF0 && c <= 0xF4) {
    if (SUBQ(a) && CONT1A(b) && CONT1A(d)) return 4;
    if (CONT1A(a) && SUBQ(b) && CONT1A(d)) return 4;
    if (CONT1A(a) && CONT1A(b) && SUBQ(d)) return 4;
  }
  if (c == 0x1A) return 1;
  return 0;
#undef AT
#undef SUBQ
#undef CONT1A
#undef ANYQC
}

static int replace_lossy(mmp_bstr_t *b) {
  mmp_bstr_t o = {0};
  const unsigned char *p = (const unsigned char *)b->p;
  if (mmp_bstr_append(&o, "", 0) < 0) return MMP_ENOMEM;
  for (size_t i = 0; i < b->len;) {
    size_t k = lossy_at(p, b->len, i);
    int rc = k ? mmp_bstr_append(&o, "\xef\xbf\xbd", 3) : mmp_bstr_putc(&o, (char)p[i]);
    if (rc < 0) {
      mmp_bstr_free(&o);
      return MMP_ENOMEM;
    }
    i += k ? k : 1;
  }
  mmp_bstr_free(b);
  *b = o;
  return 0;
}

/* Length of one strict UTF-8 sequence at p[i] (0 = invalid) */
static size_t utf8_one(const unsigned char *p, size_t n, size_t i, int32_t *cp) {
  unsigned char c = p[i];
  size_t k;
  int32_t v;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if (c >= 0xC2 && c <= 0xDF) {
    k = 2;
    v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    k = 3;
    v = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    k = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + k > n) return 0;
  for (size_t j = 1; j < k; j++) {
    if (!cont(p[i + j])) return 0;
    v = (v << 6) | (p[i + j] & 0x3F);
  }
  if ((k == 3 && v < 0x800) || (k == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
      (v >= 0xD800 && v <= 0xDFFF))
    return 0;
  *cp = v;
  return k;
}

/* Strict UTF-8, or ftfy's utf-8-variants (CESU-8 pairs, C0 80 = NUL). */
static bool decode_utf8(const mmp_bstr_t *b, bool variants, mmp_ustr_t *out) {
  const unsigned char *p = (const unsigned char *)b->p;
  size_t n = b->len;
  out->len = 0;
  for (size_t i = 0; i < n;) {
    int32_t cp;
    size_t k;
    if (variants && p[i] == 0xC0 && i + 1 < n && p[i + 1] == 0x80) {
      cp = 0;
      k = 2;
    } else if (variants && p[i] == 0xED && i + 5 < n && p[i + 1] >= 0xA0 && p[i + 1] <= 0xAF &&
               cont(p[i + 2]) && p[i + 3] == 0xED && p[i + 4] >= 0xB0 && p[i + 4] <= 0xBF &&
               cont(p[i + 5])) {
      cp = ((p[i + 1] & 0x0F) << 16) + ((p[i + 2] & 0x3F) << 10) + ((p[i + 4] & 0x0F) << 6) +
           (p[i + 5] & 0x3F) + 0x10000;
      k = 6;
    } else {
      k = utf8_one(p, n, i, &cp);
      if (!k) return false;
    }
    if (mmp_ustr_push(out, cp) < 0) return false;
    i += k;
  }
  return true;
}

/* ---- fix_encoding ---- */

static int fix_encoding(mmp_ustr_t *s);

static bool set_has(int set, int32_t c) { return (cmask(c) & B(set)) != 0; }

/* chardata.UTF8_DETECTOR_RE match at @i; returns the end or 0 */
static size_t utf8_detect_at(const int32_t *t, size_t n, size_t i) {
  if (i > 0 && set_has(S_CONT_STRICT, t[i - 1])) return 0;
  size_t j = i;
  while (j < n) {
    size_t need;
    if (set_has(S_FIRST2, t[j]))
      need = 1;
    else if (set_has(S_FIRST3, t[j]))
      need = 2;
    else if (set_has(S_FIRST4, t[j]))
      need = 3;
    else
      break;
    bool ok = true;
    for (size_t k = 1; ok && k <= need; k++) ok = j + k < n && set_has(S_CONT, t[j + k]);
    if (!ok) break;
    j += need + 1;
  }
  return j > i ? j : 0;
}

static int decode_inconsistent_utf8(mmp_ustr_t *s, bool *any) {
  mmp_ustr_t out = {0};
  *any = false;
  for (size_t i = 0; i < s->len;) {
    size_t e = utf8_detect_at(s->cp, s->len, i);
    if (!e) {
      if (mmp_ustr_push(&out, s->cp[i]) < 0) goto oom;
      i++;
      continue;
    }
    *any = true;
    size_t len = e - i;
    if (len < s->len && is_bad(s->cp + i, len)) {
      mmp_ustr_t sub = {0};
      if (mmp_ustr_append(&sub, s->cp + i, len) < 0) goto oom;
      int rc = fix_encoding(&sub);
      if (rc < 0 || mmp_ustr_append(&out, sub.cp, sub.len) < 0) {
        mmp_ustr_free(&sub);
        mmp_ustr_free(&out);
        return rc < 0 ? rc : MMP_ENOMEM;
      }
      mmp_ustr_free(&sub);
    } else if (mmp_ustr_append(&out, s->cp + i, len) < 0) {
      goto oom;
    }
    i = e;
  }
  mmp_ustr_free(s);
  *s = out;
  return 0;
oom:
  mmp_ustr_free(&out);
  return mmp_error_set(MMP_ENOMEM, "out of memory");
}

static bool ustr_eq(const mmp_ustr_t *a, const mmp_ustr_t *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->cp, b->cp, a->len * sizeof(int32_t)) == 0);
}

static int fix_c1_controls(mmp_ustr_t *s) {
  for (size_t i = 0; i < s->len; i++)
    if (s->cp[i] >= 0x80 && s->cp[i] <= 0x9F) s->cp[i] = mmp_charmaps[1][s->cp[i]];
  return 0;
}

/* One step of _fix_encoding_one_step_and_explain (in place). */
static int fix_encoding_step(mmp_ustr_t *s) {
  size_t n = s->len;
  bool ascii = true;
  for (size_t i = 0; i < n && ascii; i++) ascii = s->cp[i] < 0x80;
  if (n == 0 || ascii || !is_bad(s->cp, n)) return 0;
  bool possible_latin1 = false;
  mmp_bstr_t bytes = {0};
  mmp_ustr_t fixed = {0};
  for (int e = 0; e < MMP_N_CHARMAPS - 1; e++) {
    if (!encode_charmap(e, s->cp, n, &bytes)) continue;
    if (e == 0) possible_latin1 = true;
    if (has_altered(&bytes) && restore_byte_a0(&bytes) < 0) goto oom;
    if (sloppy(e) && replace_lossy(&bytes) < 0) goto oom;
    bool variants = false;
    for (size_t i = 0; i < bytes.len; i++)
      if ((unsigned char)bytes.p[i] == 0xED || (unsigned char)bytes.p[i] == 0xC0) variants = true;
    if (decode_utf8(&bytes, variants, &fixed)) {
      mmp_ustr_free(s);
      *s = fixed;
      mmp_bstr_free(&bytes);
      return 0;
    }
  }
  mmp_bstr_free(&bytes);
  mmp_ustr_free(&fixed);
  {
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) found = utf8_detect_at(s->cp, n, i) != 0;
    if (found) {
      mmp_ustr_t copy = {0};
      if (mmp_ustr_append(&copy, s->cp, n) < 0) goto oom;
      bool any;
      int rc = decode_inconsistent_utf8(&copy, &any);
      if (rc < 0) {
        mmp_ustr_free(&copy);
        return rc;
      }
      if (!ustr_eq(&copy, s)) {
        mmp_ustr_free(s);
        *s = copy;
        return 0;
      }
      mmp_ustr_free(&copy);
    }
  }
  if (possible_latin1) {
    /* text.encode('latin-1').decode('windows-1252'), strict */
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
      ok = s->cp[i] > 0xFF || mmp_charmaps[MMP_N_CHARMAPS - 1][s->cp[i]] >= 0;
    if (ok) {
      bool changed = false;
      for (size_t i = 0; i < n; i++) {
        int32_t d = mmp_charmaps[MMP_N_CHARMAPS - 1][s->cp[i]];
        if (d != s->cp[i]) changed = true;
      }
      if (changed) {
        for (size_t i = 0; i < n; i++) s->cp[i] = mmp_charmaps[MMP_N_CHARMAPS - 1][s->cp[i]];
        return 0;
      }
    }
  }
  return fix_c1_controls(s);
oom:
  mmp_bstr_free(&bytes);
  mmp_ustr_free(&fixed);
  return mmp_error_set(MMP_ENOMEM, "out of memory");
}

static int fix_encoding(mmp_ustr_t *s) {
  mmp_ustr_t prev = {0};
  for (;;) {
    prev.len = 0;
    if (mmp_ustr_append(&prev, s->cp, s->len) < 0) return MMP_ENOMEM;
    int rc = fix_encoding_step(s);
    if (rc < 0) {
      mmp_ustr_free(&prev);
      return rc;
    }
    if (ustr_eq(&prev, s)) break;
  }
  mmp_ustr_free(&prev);
  return 0;
}

/* ---- HTML entities ---- */

static int cmp_entity(const void *k, const void *e) {
  return strcmp((const char *)k, ((const mmp_entity_t *)e)->name);
}

static const char *html5_lookup(const char *name) {
  const mmp_entity_t *e =
      bsearch(name, mmp_html5_entities, sizeof mmp_html5_entities / sizeof mmp_html5_entities[0],
              sizeof(mmp_entity_t), cmp_entity);
  return e ? e->value : NULL;
}

static const char *ftfy_upper_lookup(const char *name) {
  const mmp_entity_t *e = bsearch(
      name, mmp_ftfy_upper_entities,
      sizeof mmp_ftfy_upper_entities / sizeof mmp_ftfy_upper_entities[0], sizeof(mmp_entity_t),
      cmp_entity);
  return e ? e->value : NULL;
}

static int push_utf8_str(mmp_ustr_t *out, const char *v) {
  const unsigned char *p = (const unsigned char *)v;
  while (*p) {
    int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate(p, -1, &c);
    if (k <= 0) return MMP_EDATA;
    if (mmp_ustr_push(out, c) < 0) return MMP_ENOMEM;
    p += k;
  }
  return 0;
}

/* html.unescape's numeric character reference rules (_replace_charref) */
static int charref(mmp_ustr_t *out, uint64_t num, bool overflow) {
  static const struct { int from; int to; } invalid[] = {
      {0x00, 0xfffd}, {0x0d, '\r'}, {0x80, 0x20ac}, {0x81, 0x81}, {0x82, 0x201a},
      {0x83, 0x0192}, {0x84, 0x201e}, {0x85, 0x2026}, {0x86, 0x2020}, {0x87, 0x2021},
      {0x88, 0x02c6}, {0x89, 0x2030}, {0x8a, 0x0160}, {0x8b, 0x2039}, {0x8c, 0x0152},
      {0x8d, 0x8d},   {0x8e, 0x017d}, {0x8f, 0x8f},   {0x90, 0x90},   {0x91, 0x2018},
      {0x92, 0x2019}, {0x93, 0x201c}, {0x94, 0x201d}, {0x95, 0x2022}, {0x96, 0x2013},
      {0x97, 0x2014}, {0x98, 0x02dc}, {0x99, 0x2122}, {0x9a, 0x0161}, {0x9b, 0x203a},
      {0x9c, 0x0153}, {0x9d, 0x9d},   {0x9e, 0x017e}, {0x9f, 0x0178}};
  if (!overflow && num < 0xA0)
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
      if ((uint64_t)invalid[i].from == num) return mmp_ustr_push(out, invalid[i].to);
  if (overflow || (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF)
    return mmp_ustr_push(out, 0xFFFD);
  /* _invalid_codepoints are dropped */
  if ((num >= 0x1 && num <= 0x8) || (num >= 0xE && num <= 0x1F) || (num >= 0x7F && num <= 0x9F) ||
      (num >= 0xFDD0 && num <= 0xFDEF) || num == 0xB || (num & 0xFFFE) == 0xFFFE)
    return 0;
  return mmp_ustr_push(out, (int32_t)num);
}

static bool is_hex(int32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Parse &#...; at t[i] (t[i] == '&', t[i+1] == '#'), per html.unescape's
 * regex '&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?...)'. Returns the length matched or 0. */
static size_t numeric_ref(const int32_t *t, size_t n, size_t i, uint64_t *num, bool *ovf) {
  size_t j = i + 2;
  bool hex = false;
  if (j < n && (t[j] == 'x' || t[j] == 'X')) {
    hex = true;
    j++;
  }
  size_t d0 = j;
  *num = 0;
  *ovf = false;
  while (j < n && (hex ? is_hex(t[j]) : (t[j] >= '0' && t[j] <= '9'))) {
    int v = t[j] <= '9' ? t[j] - '0' : (t[j] | 0x20) - 'a' + 10;
    if (*num > (UINT64_MAX >> 5)) *ovf = true;
    else *num = *num * (hex ? 16 : 10) + (uint64_t)v;
    j++;
  }
  if (j == d0) return 0;
  if (j < n && t[j] == ';') j++;
  return j - i;
}

int mmp_html_unescape(mmp_ustr_t *s) {
  mmp_ustr_t out = {0};
  mmp_bstr_t name = {0};
  const int32_t *t = s->cp;
  size_t n = s->len;
  int rc = 0;
  bool any = false;
  for (size_t i = 0; i < n; i++)
    if (t[i] == '&') any = true;
  if (!any) return 0;
  for (size_t i = 0; i < n;) {
    if (t[i] != '&') {
      if ((rc = mmp_ustr_push(&out, t[i])) < 0) goto out;
      i++;
      continue;
    }
    if (i + 1 < n && t[i + 1] == '#') {
      uint64_t num;
      bool ovf;
      size_t k = numeric_ref(t, n, i, &num, &ovf);
      if (k) {
        if ((rc = charref(&out, num, ovf)) < 0) goto out;
        i += k;
        continue;
      }
      if ((rc = mmp_ustr_push(&out, '&')) < 0) goto out;
      i++;
      continue;
    }
    /* named: [^\t\n\f <&#;]{1,32};? */
    size_t j = i + 1;
    while (j < n && j - (i + 1) < 32 && t[j] != '\t' && t[j] != '\n' && t[j] != '\f' &&
           t[j] != ' ' && t[j] != '<' && t[j] != '&' && t[j] != '#' && t[j] != ';')
      j++;
    if (j == i + 1) {
      if ((rc = mmp_ustr_push(&out, '&')) < 0) goto out;
      i++;
      continue;
    }
    bool semi = j < n && t[j] == ';';
    size_t end = semi ? j + 1 : j;
    if ((rc = mmp_bstr_from_ustr(&name, t + i + 1, end - (i + 1))) < 0) goto out;
    const char *v = html5_lookup(name.p);
    if (v) {
      if ((rc = push_utf8_str(&out, v)) < 0) goto out;
      i = end;
      continue;
    }
    /* longest prefix that is a legacy name (without ';') */
    bool done = false;
    for (size_t x = end - (i + 1) - 1; x >= 2 && !done; x--) {
      if ((rc = mmp_bstr_from_ustr(&name, t + i + 1, x)) < 0) goto out;
      v = html5_lookup(name.p);
      if (v) {
        if ((rc = push_utf8_str(&out, v)) < 0) goto out;
        if ((rc = mmp_ustr_append(&out, t + i + 1 + x, end - (i + 1) - x)) < 0) goto out;
        done = true;
      }
    }
    if (!done && (rc = mmp_ustr_append(&out, t + i, end - i)) < 0) goto out;
    i = end;
  }
  mmp_ustr_free(s);
  *s = out;
  out = (mmp_ustr_t){0};
out:
  mmp_ustr_free(&out);
  mmp_bstr_free(&name);
  return rc;
}

static bool is_alnum_ascii(int32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* ftfy.fixes.unescape_html: HTML_ENTITY_RE = &#?[0-9A-Za-z]{1,24}; */
static int ftfy_unescape_html(mmp_ustr_t *s) {
  mmp_ustr_t out = {0};
  mmp_bstr_t name = {0};
  const int32_t *t = s->cp;
  size_t n = s->len;
  int rc = 0;
  for (size_t i = 0; i < n;) {
    if (t[i] == '&') {
      size_t j = i + 1;
      if (j < n && t[j] == '#') j++;
      size_t a = j;
      while (j < n && j - a < 24 && is_alnum_ascii(t[j])) j++;
      if (j > a && j < n && t[j] == ';') {
        size_t end = j + 1;
        if (t[i + 1] == '#') {
          /* html.unescape(text); keep the original if a ';' remains */
          mmp_ustr_t piece = {0};
          if ((rc = mmp_ustr_append(&piece, t + i, end - i)) < 0 ||
              (rc = mmp_html_unescape(&piece)) < 0) {
            mmp_ustr_free(&piece);
            goto out;
          }
          bool semi = false;
          for (size_t k = 0; k < piece.len; k++)
            if (piece.cp[k] == ';') semi = true;
          rc = semi ? mmp_ustr_append(&out, t + i, end - i)
                    : mmp_ustr_append(&out, piece.cp, piece.len);
          mmp_ustr_free(&piece);
          if (rc < 0) goto out;
        } else {
          if ((rc = mmp_bstr_from_ustr(&name, t + i + 1, end - (i + 1))) < 0) goto out;
          const char *v = html5_lookup(name.p);
          if (!v) v = ftfy_upper_lookup(name.p);
          rc = v ? push_utf8_str(&out, v) : mmp_ustr_append(&out, t + i, end - i);
          if (rc < 0) goto out;
        }
        i = end;
        continue;
      }
    }
    if ((rc = mmp_ustr_push(&out, t[i])) < 0) goto out;
    i++;
  }
  mmp_ustr_free(s);
  *s = out;
  out = (mmp_ustr_t){0};
out:
  mmp_ustr_free(&out);
  mmp_bstr_free(&name);
  return rc;
}

/* ---- the simple fixers ---- */

static int translate(mmp_ustr_t *s, int (*map)(int32_t c, mmp_ustr_t *out, bool *mapped)) {
  mmp_ustr_t out = {0};
  for (size_t i = 0; i < s->len; i++) {
    bool mapped = false;
    if (map(s->cp[i], &out, &mapped) < 0) {
      mmp_ustr_free(&out);
      return MMP_ENOMEM;
    }
    if (!mapped && mmp_ustr_push(&out, s->cp[i]) < 0) {
      mmp_ustr_free(&out);
      return MMP_ENOMEM;
    }
  }
  mmp_ustr_free(s);
  *s = out;
  return 0;
}

static int map_ligature(int32_t c, mmp_ustr_t *out, bool *mapped) {
  static const struct { int32_t c; const char *to; } lig[] = {
      {0x132, "IJ"}, {0x133, "ij"}, {0x149, "\xca\xbcn"}, {0x1F1, "DZ"}, {0x1F2, "Dz"},
      {0x1F3, "dz"}, {0x1C4, "D\xc5\xbd"}, {0x1C5, "D\xc5\xbe"}, {0x1C6, "d\xc5\xbe"},
      {0x1C7, "LJ"}, {0x1C8, "Lj"}, {0x1C9, "lj"}, {0x1CA, "NJ"}, {0x1CB, "Nj"},
      {0x1CC, "nj"}, {0xFB00, "ff"}, {0xFB01, "fi"}, {0xFB02, "fl"}, {0xFB03, "ffi"},
      {0xFB04, "ffl"}, {0xFB05, "\xc5\xbft"}, {0xFB06, "st"}};
  for (size_t i = 0; i < sizeof lig / sizeof lig[0]; i++)
    if (lig[i].c == c) {
      *mapped = true;
      return push_utf8_str(out, lig[i].to);
    }
  return 0;
}

static int map_width(int32_t c, mmp_ustr_t *out, bool *mapped) {
  if (c == 0x3000) {
    *mapped = true;
    return mmp_ustr_push(out, ' ');
  }
  if (c < 0xFF01 || c >= 0xFFF0) return 0;
  /* NFKC of the character, where it differs */
  mmp_ustr_t one = {0};
  if (mmp_ustr_push(&one, c) < 0) return MMP_ENOMEM;
  int rc = mmp_u_normalize(&one, "NFKC");
  if (rc == 0 && !(one.len == 1 && one.cp[0] == c)) {
    *mapped = true;
    rc = mmp_ustr_append(out, one.cp, one.len);
  }
  mmp_ustr_free(&one);
  return rc;
}

static int map_quotes(int32_t c, mmp_ustr_t *out, bool *mapped) {
  if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) {
    *mapped = true;
    return mmp_ustr_push(out, '\'');
  }
  if (c >= 0x201C && c <= 0x201F) {
    *mapped = true;
    return mmp_ustr_push(out, '"');
  }
  return 0;
}

static int map_control(int32_t c, mmp_ustr_t *out, bool *mapped) {
  (void)out;
  if ((c >= 0 && c < 0x09) || c == 0x0B || (c >= 0x0E && c < 0x20) || c == 0x7F ||
      (c >= 0x206A && c < 0x2070) || c == 0xFEFF || (c >= 0xFFF9 && c < 0xFFFD))
    *mapped = true; /* deleted */
  return 0;
}

static int fix_line_breaks(mmp_ustr_t *s) {
  size_t k = 0;
  for (size_t i = 0; i < s->len; i++) {
    int32_t c = s->cp[i];
    if (c == '\r' && i + 1 < s->len && s->cp[i + 1] == '\n') continue; /* \r\n -> \n */
    if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
    s->cp[k++] = c;
  }
  s->len = k;
  return 0;
}

static int remove_terminal_escapes(mmp_ustr_t *s) {
  /* ANSI_RE = '\x1b\[((?:\d|;)*)([a-zA-Z])' (\d: Unicode decimal digits) */
  size_t k = 0;
  for (size_t i = 0; i < s->len;) {
    if (s->cp[i] == 0x1B && i + 1 < s->len && s->cp[i + 1] == '[') {
      size_t j = i + 2;
      while (j < s->len && (s->cp[j] == ';' || utf8proc_category(s->cp[j]) == UTF8PROC_CATEGORY_ND))
        j++;
      if (j < s->len && is_azAZ(s->cp[j])) {
        i = j + 1;
        continue;
      }
    }
    s->cp[k++] = s->cp[i++];
  }
  s->len = k;
  return 0;
}

/* fix_and_explain on one segment (explain=False) */
static int fix_segment(mmp_ustr_t *s, bool unescape) {
  mmp_ustr_t orig = {0};
  int rc = 0;
  for (;;) {
    orig.len = 0;
    if ((rc = mmp_ustr_append(&orig, s->cp, s->len)) < 0) break;
    if (unescape && (rc = ftfy_unescape_html(s)) < 0) break;
    if ((rc = fix_encoding(s)) < 0) break;
    if ((rc = fix_c1_controls(s)) < 0) break;
    if ((rc = translate(s, map_ligature)) < 0) break;
    if ((rc = translate(s, map_width)) < 0) break;
    if ((rc = translate(s, map_quotes)) < 0) break;
    if ((rc = fix_line_breaks(s)) < 0) break;
    /* fix_surrogates: valid UTF-8 input holds no surrogates */
    if ((rc = remove_terminal_escapes(s)) < 0) break;
    if ((rc = translate(s, map_control)) < 0) break;
    if ((rc = mmp_u_normalize(s, "NFC")) < 0) break;
    if (ustr_eq(&orig, s)) break;
  }
  mmp_ustr_free(&orig);
  return rc;
}

int mmp_ftfy_fix_text(mmp_ustr_t *s) {
  mmp_ustr_t out = {0}, seg = {0};
  bool unescape = true; /* "auto": off from the first segment holding '<' on */
  int rc = 0;
  for (size_t pos = 0; pos < s->len;) {
    size_t brk = pos;
    while (brk < s->len && s->cp[brk] != '\n') brk++;
    brk = brk < s->len ? brk + 1 : s->len;
    if (brk - pos > 1000000) brk = pos + 1000000;
    seg.len = 0;
    if ((rc = mmp_ustr_append(&seg, s->cp + pos, brk - pos)) < 0) goto out;
    for (size_t i = 0; i < seg.len && unescape; i++)
      if (seg.cp[i] == '<') unescape = false;
    if ((rc = fix_segment(&seg, unescape)) < 0) goto out;
    if ((rc = mmp_ustr_append(&out, seg.cp, seg.len)) < 0) goto out;
    pos = brk;
  }
  mmp_ustr_free(s);
  *s = out;
  out = (mmp_ustr_t){0};
out:
  mmp_ustr_free(&out);
  mmp_ustr_free(&seg);
  return rc;
}
