/* plugins/processors/deflaterle.c - a fast zlib-stream encoder with run-length matching only (RFC 1950/1951). */
#include "plugins/processors/deflaterle.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK_TOKENS 16384u /* symbols per block, as zlib's default memLevel 8 */
#define STORED_MAX 65535u   /* bytes per stored block */
#define NLIT 286        /* literals 0-255, end of block 256, lengths 257-285 */
#define NDIST 30
#define NCL 19
#define MAX_RUN 258

/* ---- bits, least significant first ---- */

/* The bit writer keeps whole bytes out of its accumulator by storing all
 * eight of them after each group of codes and advancing by the whole bytes
 * only (the bytes past them are written again by the next store): no
 * branch per code. Callers add at most 56 bits between flushes; the output
 * needs 8 bytes of slack past the stream's end (deflate_rle_bound). */
typedef struct bits {
  uint8_t *p;
  uint64_t acc; /* pending bits, the oldest lowest; none above n */
  unsigned n;   /* pending bits: below 8 after a flush */
} bits_t;

static inline void store_le64(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  memcpy(p, &v, 8);
}

/* @v: @len bits, none set above them */
static inline void add(bits_t *b, uint64_t v, unsigned len) {
  b->acc |= v << b->n;
  b->n += len;
}

static inline void flush(bits_t *b) {
  store_le64(b->p, b->acc);
  b->p += b->n >> 3;
  b->acc >>= b->n & ~7u;
  b->n &= 7;
}

static inline void put(bits_t *b, uint32_t v, unsigned len) {
  add(b, v, len);
  flush(b);
}

/* Out to the next byte boundary (zero bits padded). */
static void align(bits_t *b) {
  flush(b);
  if (b->n) *b->p++ = (uint8_t)b->acc;
  b->acc = 0;
  b->n = 0;
}

/* ---- Huffman codes ---- */

/* The used symbols of @freq (@n <= NLIT, frequencies below 2^16) in order
 * of (frequency, symbol) into @order: a stable two-pass radix sort by
 * frequency of the symbols taken in order. Returns their count. */
static int sort_by_freq(const uint32_t *freq, int n, uint16_t *order) {
  uint16_t tmp[NLIT];
  int m = 0;
  for (int i = 0; i < n; i++)
    if (freq[i]) tmp[m++] = (uint16_t)i;
  for (int shift = 0; shift < 16; shift += 8) {
    const uint16_t *from = shift ? order : tmp;
    uint16_t *to = shift ? tmp : order;
    int count[257] = {0};
    for (int k = 0; k < m; k++) count[1 + (freq[from[k]] >> shift & 255)]++;
    for (int d = 1; d < 257; d++) count[d] += count[d - 1];
    for (int k = 0; k < m; k++) to[count[freq[from[k]] >> shift & 255]++] = from[k];
  }
  memcpy(order, tmp, (size_t)m * sizeof *order);
  return m;
}

/* Code lengths of at most @limit bits for @n (<= NLIT) symbols of
 * frequencies @freq_in (below 2^16): a Huffman code, built again from
 * flattened frequencies while it is too deep. At least two symbols get a
 * code: a code of one symbol would be incomplete, which inflaters refuse. */
static void huff_lengths(const uint32_t *freq_in, int n, int limit, uint8_t *len) {
  uint32_t freq[NLIT];
  uint16_t sym[NLIT];
  uint64_t weight[2 * NLIT];
  int parent[2 * NLIT], depth[2 * NLIT];
  int used = 0;
  for (int i = 0; i < n; i++) used += (freq[i] = freq_in[i]) != 0;
  for (int i = 0; used < 2 && i < n; i++)
    if (!freq[i]) {
      freq[i] = 1;
      used++;
    }
  for (;;) {
    int m = sort_by_freq(freq, n, sym);
    for (int k = 0; k < m; k++) weight[k] = freq[sym[k]];
    /* two queues: the sorted leaves, and the inner nodes, made in order of weight */
    int li = 0, ii = m;
    for (int next = m; next < 2 * m - 1; next++) {
      int pair[2];
      for (int t = 0; t < 2; t++)
        pair[t] = li < m && (ii >= next || weight[li] <= weight[ii]) ? li++ : ii++;
      weight[next] = weight[pair[0]] + weight[pair[1]];
      parent[pair[0]] = parent[pair[1]] = next;
    }
    depth[2 * m - 2] = 0;
    for (int k = 2 * m - 3; k >= 0; k--) depth[k] = depth[parent[k]] + 1; /* parents come later */
    memset(len, 0, (size_t)n);
    int deepest = 0;
    for (int k = 0; k < m; k++) {
      len[sym[k]] = (uint8_t)depth[k];
      if (depth[k] > deepest) deepest = depth[k];
    }
    if (deepest <= limit) return;
    for (int i = 0; i < n; i++)
      if (freq[i]) freq[i] = (freq[i] + 1) / 2;
  }
}

/* Canonical codes (RFC 1951 3.2.2), bit-reversed for output LSB first. */
static void huff_codes(const uint8_t *len, int n, uint16_t *code) {
  int count[16] = {0}, next[16];
  for (int i = 0; i < n; i++) count[len[i]]++;
  count[0] = 0;
  int c = 0;
  for (int b = 1; b < 16; b++) next[b] = c = (c + count[b - 1]) << 1;
  for (int i = 0; i < n; i++) {
    if (!len[i]) continue;
    unsigned v = (unsigned)next[len[i]]++;
    v = (v >> 1 & 0x5555) | (v & 0x5555) << 1;
    v = (v >> 2 & 0x3333) | (v & 0x3333) << 2;
    v = (v >> 4 & 0x0F0F) | (v & 0x0F0F) << 4;
    v = (v >> 8 & 0x00FF) | (v & 0x00FF) << 8;
    code[i] = (uint16_t)(v >> (16 - len[i]));
  }
}

/* ---- lengths 3-258 as symbols 257-285 ---- */

static const uint16_t LEN_BASE[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t LEN_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};

typedef struct lencode {
  uint16_t sym[MAX_RUN + 1];
  uint8_t extra[MAX_RUN + 1];
  uint8_t value[MAX_RUN + 1];
} lencode_t;

static void lencode_init(lencode_t *lc) {
  for (int l = 3, i = 0; l <= MAX_RUN; l++) {
    while (i < 28 && LEN_BASE[i + 1] <= l) i++;
    lc->sym[l] = (uint16_t)(257 + i);
    lc->extra[l] = LEN_EXTRA[i];
    lc->value[l] = (uint8_t)(l - LEN_BASE[i]);
  }
}

/* ---- blocks ---- */

static const uint8_t CL_ORDER[NCL] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

/* The code-length sequence of a dynamic block header, run-length coded
 * with symbols 16-18; each entry: symbol | extra value << 5. */
static int cl_tokens(const uint8_t *lens, int total, uint16_t *out, uint32_t *freq) {
  int k = 0;
  for (int i = 0; i < total;) {
    int v = lens[i], run = 1;
    while (i + run < total && lens[i + run] == v) run++;
    i += run;
    if (v == 0) {
      for (; run >= 11; run -= run < 138 ? run : 138) out[k++] = (uint16_t)(18 | ((run < 138 ? run : 138) - 11) << 5);
      if (run >= 3) {
        out[k++] = (uint16_t)(17 | (run - 3) << 5);
        run = 0;
      }
    } else {
      out[k++] = (uint16_t)v;
      for (run--; run >= 3; run -= run < 6 ? run : 6) out[k++] = (uint16_t)(16 | ((run < 6 ? run : 6) - 3) << 5);
    }
    for (; run > 0; run--) out[k++] = (uint16_t)v;
  }
  for (int j = 0; j < k; j++) freq[out[j] & 31]++;
  return k;
}

static const uint8_t CL_EXTRA[NCL] = {[16] = 2, [17] = 3, [18] = 7};

/* A block's symbols as items: the count of literals (the input bytes in
 * order) before a run, << 9, | the run's length (3-258: a match at
 * distance 1), or | 0 for the literals that end the block. */
#define ITEM(lits, run) ((uint32_t)(lits) << 9 | (uint32_t)(run))

/* The literals @s[0..@k), three codes (at most 45 bits) per flush; @lit:
 * each byte's code | its length << 16. */
static inline void put_literals(bits_t *b, const uint8_t *s, size_t k, const uint32_t *lit) {
  for (; k >= 3; k -= 3, s += 3) {
    uint32_t x = lit[s[0]], y = lit[s[1]], z = lit[s[2]];
    unsigned lx = x >> 16, ly = y >> 16;
    add(b, (x & 0xFFFF) | (uint64_t)(y & 0xFFFF) << lx | (uint64_t)(z & 0xFFFF) << (lx + ly), lx + ly + (z >> 16));
    flush(b);
  }
  for (; k > 0; k--, s++) put(b, lit[*s] & 0xFFFF, lit[*s] >> 16);
}

static void write_block(bits_t *b, const uint8_t *in, size_t start, size_t end, const uint32_t *items, size_t nitems,
                        const uint32_t *lfreq, uint32_t dmatches, const lencode_t *lc, bool final) {
  uint8_t llen[NLIT], dlen[NDIST], cllen[NCL];
  uint16_t lcode[NLIT], dcode[NDIST], clcode[NCL], cl[NLIT + NDIST];
  uint32_t dfreq[NDIST] = {dmatches}, clfreq[NCL] = {0}, lit[256];
  huff_lengths(lfreq, NLIT, 15, llen);
  huff_lengths(dfreq, NDIST, 15, dlen);
  int nlit = NLIT, ndist = NDIST;
  while (nlit > 257 && !llen[nlit - 1]) nlit--;
  while (ndist > 1 && !dlen[ndist - 1]) ndist--;
  uint8_t all[NLIT + NDIST];
  memcpy(all, llen, (size_t)nlit);
  memcpy(all + nlit, dlen, (size_t)ndist);
  int ncltok = cl_tokens(all, nlit + ndist, cl, clfreq);
  huff_lengths(clfreq, NCL, 7, cllen);
  int ncl = NCL;
  while (ncl > 4 && !cllen[CL_ORDER[ncl - 1]]) ncl--;

  uint64_t dyn = 3 + 14 + 3 * (uint64_t)ncl + (uint64_t)dmatches * dlen[0];
  for (int s = 0; s < NCL; s++) dyn += (uint64_t)clfreq[s] * (cllen[s] + CL_EXTRA[s]);
  for (int s = 0; s < NLIT; s++) dyn += (uint64_t)lfreq[s] * (llen[s] + (s > 256 ? LEN_EXTRA[s - 257] : 0));
  size_t pieces = (end - start + STORED_MAX - 1) / STORED_MAX + (end == start);
  if (dyn >= pieces * (3 + 7 + 32) + 8 * (uint64_t)(end - start)) {
    for (size_t at = start, k = 0; k < pieces; k++) { /* BTYPE 00: stored, at most 64 KiB each */
      unsigned n = end - at > STORED_MAX ? STORED_MAX : (unsigned)(end - at);
      put(b, final && k == pieces - 1, 3);
      align(b);
      b->p[0] = (uint8_t)n;
      b->p[1] = (uint8_t)(n >> 8);
      b->p[2] = (uint8_t)~n;
      b->p[3] = (uint8_t)(~n >> 8);
      memcpy(b->p + 4, in + at, n);
      b->p += 4 + n;
      at += n;
    }
    return;
  }
  huff_codes(llen, NLIT, lcode);
  huff_codes(dlen, NDIST, dcode);
  huff_codes(cllen, NCL, clcode);
  put(b, final | 2u << 1, 3); /* BTYPE 10: dynamic Huffman codes */
  put(b, (uint32_t)(nlit - 257), 5);
  put(b, (uint32_t)(ndist - 1), 5);
  put(b, (uint32_t)(ncl - 4), 4);
  for (int k = 0; k < ncl; k++) put(b, cllen[CL_ORDER[k]], 3);
  for (int k = 0; k < ncltok; k++) {
    int s = cl[k] & 31;
    put(b, clcode[s], cllen[s]);
    if (CL_EXTRA[s]) put(b, cl[k] >> 5, CL_EXTRA[s]);
  }
  for (int c = 0; c < 256; c++) lit[c] = lcode[c] | (uint32_t)llen[c] << 16;
  const uint8_t *s = in + start;
  for (size_t k = 0; k < nitems; k++) {
    size_t lits = items[k] >> 9;
    unsigned l = items[k] & 511;
    put_literals(b, s, lits, lit);
    s += lits;
    if (l) { /* at most 15 + 5 + 15 bits */
      unsigned sym = lc->sym[l];
      add(b, lcode[sym], llen[sym]);
      add(b, lc->value[l], lc->extra[l]);
      add(b, dcode[0], dlen[0]);
      flush(b);
      s += l;
    }
  }
  put(b, lcode[256], llen[256]);
}

/* The first j in [@i, @limit) (1 <= @i, @limit <= @n) where zlib's
 * deflate_rle takes a run: in[j-1] == in[j] == in[j+1] == in[j+2], j + 2 < @n;
 * @limit when there is none. */
static size_t next_run(const uint8_t *in, size_t n, size_t i, size_t limit) {
  size_t j = i;
#if defined(__SSE2__)
  for (; j < limit && j + 18 <= n; j += 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(in + j - 1));
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(in + j));
    __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(in + j + 1));
    __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(in + j + 2));
    __m128i e = _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(a, b), _mm_cmpeq_epi8(b, c)), _mm_cmpeq_epi8(c, d));
    unsigned m = (unsigned)_mm_movemask_epi8(e);
    if (m) {
      j += (size_t)__builtin_ctz(m);
      return j < limit ? j : limit;
    }
  }
#endif
  for (; j < limit; j++)
    if (j + 2 < n && in[j - 1] == in[j] && in[j] == in[j + 1] && in[j + 1] == in[j + 2]) return j;
  return limit;
}

/* The length of the run of @v from @p (at least 3 known), at most @lim. */
static size_t run_length(const uint8_t *p, uint8_t v, size_t lim) {
  size_t l = 3;
  uint64_t vv = v * 0x0101010101010101ull;
  for (; l + 8 <= lim; l += 8) {
    uint64_t w;
    memcpy(&w, p + l, 8);
    if ((w ^= vv) != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      return l + (size_t)(__builtin_clzll(w) >> 3);
#else
      return l + (size_t)(__builtin_ctzll(w) >> 3);
#endif
    }
  }
  while (l < lim && p[l] == v) l++;
  return l;
}

/* Byte counts in four tables (no store waiting on the one before). */
static void count_bytes(const uint8_t *s, size_t k, uint32_t (*h)[256]) {
  for (; k >= 4; k -= 4, s += 4) {
    h[0][s[0]]++;
    h[1][s[1]]++;
    h[2][s[2]]++;
    h[3][s[3]]++;
  }
  for (; k > 0; k--) h[0][*s++]++;
}

#define ADLER_BASE 65521u
#define ADLER_NMAX 5552u /* the most bytes before the sums must be reduced (zlib's NMAX) */

/* Adler-32 (RFC 1950) of @n bytes. */
static uint32_t adler32_of(const uint8_t *p, size_t n) {
  uint32_t a = 1, b = 0;
#if defined(__SSE2__)
  /* 16 bytes a step: a += their sum; b += 16 a + (16, 15, ..., 1) . bytes */
  const __m128i zero = _mm_setzero_si128();
  const __m128i w_lo = _mm_setr_epi16(16, 15, 14, 13, 12, 11, 10, 9), w_hi = _mm_setr_epi16(8, 7, 6, 5, 4, 3, 2, 1);
  while (n >= 16) {
    size_t steps = n / 16 < ADLER_NMAX / 16 ? n / 16 : ADLER_NMAX / 16;
    __m128i vs1 = zero, vs1_sum = zero, vs2 = zero;
    for (size_t k = 0; k < steps; k++, p += 16) {
      __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
      vs1_sum = _mm_add_epi32(vs1_sum, vs1); /* a before each step, counted 16 times below */
      vs1 = _mm_add_epi32(vs1, _mm_sad_epu8(v, zero));
      vs2 = _mm_add_epi32(vs2, _mm_madd_epi16(_mm_unpacklo_epi8(v, zero), w_lo));
      vs2 = _mm_add_epi32(vs2, _mm_madd_epi16(_mm_unpackhi_epi8(v, zero), w_hi));
    }
    uint32_t t1[4], t1s[4], t2[4];
    _mm_storeu_si128((__m128i *)(void *)t1, vs1);
    _mm_storeu_si128((__m128i *)(void *)t1s, vs1_sum);
    _mm_storeu_si128((__m128i *)(void *)t2, vs2);
    uint64_t s1 = (uint64_t)t1[0] + t1[1] + t1[2] + t1[3];
    uint64_t s1s = (uint64_t)t1s[0] + t1s[1] + t1s[2] + t1s[3];
    uint64_t s2 = (uint64_t)t2[0] + t2[1] + t2[2] + t2[3];
    b = (uint32_t)(((uint64_t)b + (uint64_t)a * 16 * steps + 16 * s1s + s2) % ADLER_BASE);
    a = (uint32_t)((a + s1) % ADLER_BASE);
    n -= 16 * steps;
  }
#endif
  while (n > 0) {
    size_t k = n < ADLER_NMAX ? n : ADLER_NMAX;
    n -= k;
    for (; k > 0; k--) {
      a += *p++;
      b += a;
    }
    a %= ADLER_BASE;
    b %= ADLER_BASE;
  }
  return b << 16 | a;
}

/* Each block at most its stored size: 5 bytes per 64 KiB piece; a block
 * but the last holds BLOCK_TOKENS symbols, so at least as many bytes. The
 * bit writer's stores reach 8 bytes past its output. */
size_t deflate_rle_bound(size_t n) { return n + 5 * (n / STORED_MAX + n / BLOCK_TOKENS + 2) + 2 + 4 + 8; }

size_t deflate_rle_zlib(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  if (cap < deflate_rle_bound(n)) return 0;
  uint32_t *items = malloc((BLOCK_TOKENS + 1) * sizeof *items);
  uint32_t(*hist)[256] = malloc(4 * sizeof *hist);
  if (!items || !hist) {
    free(items);
    free(hist);
    return 0;
  }
  lencode_t lc;
  lencode_init(&lc);
  out[0] = 0x78; /* deflate, 32 KiB window */
  out[1] = 0x01; /* the fastest level; check bits */
  bits_t b = {out + 2, 0, 0};
  size_t pos = 0;
  do {
    /* zlib's deflate_rle: a run of the byte before, 3 to 258 long, or a literal */
    size_t i = pos, lit0 = pos, ntok = 0, nitems = 0;
    uint32_t lfreq[NLIT] = {0}, dmatches = 0;
    lfreq[256] = 1;
    memset(hist, 0, 4 * sizeof *hist);
    while (i < n && ntok < BLOCK_TOKENS) {
      size_t limit = n - i < BLOCK_TOKENS - ntok ? n : i + (BLOCK_TOKENS - ntok);
      size_t j = next_run(in, n, i ? i : 1, limit);
      ntok += j - i;
      i = j;
      if (i >= limit) break;
      size_t l = run_length(in + i, in[i - 1], n - i < MAX_RUN ? n - i : MAX_RUN);
      count_bytes(in + lit0, i - lit0, hist);
      items[nitems++] = ITEM(i - lit0, l);
      lfreq[lc.sym[l]]++;
      dmatches++;
      ntok++;
      i += l;
      lit0 = i;
    }
    count_bytes(in + lit0, i - lit0, hist);
    items[nitems++] = ITEM(i - lit0, 0);
    for (int c = 0; c < 256; c++) lfreq[c] = hist[0][c] + hist[1][c] + hist[2][c] + hist[3][c];
    write_block(&b, in, pos, i, items, nitems, lfreq, dmatches, &lc, i == n);
    pos = i;
  } while (pos < n);
  align(&b);
  uint32_t a = adler32_of(in, n);
  b.p[0] = (uint8_t)(a >> 24);
  b.p[1] = (uint8_t)(a >> 16);
  b.p[2] = (uint8_t)(a >> 8);
  b.p[3] = (uint8_t)a;
  free(items);
  free(hist);
  return (size_t)(b.p + 4 - out);
}
