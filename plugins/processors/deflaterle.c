/* plugins/processors/deflaterle.c - a fast zlib-stream encoder with run-length matching only (RFC 1950/1951). */
#include "plugins/processors/deflaterle.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define BLOCK_TOKENS 16384u /* symbols per block, as zlib's default memLevel 8 */
#define STORED_MAX 65535u   /* bytes per stored block */
#define NLIT 286        /* literals 0-255, end of block 256, lengths 257-285 */
#define NDIST 30
#define NCL 19
#define MAX_RUN 258

/* ---- bits, least significant first ---- */

typedef struct bits {
  uint8_t *p;
  uint64_t acc;
  int n;
} bits_t;

static inline void put(bits_t *b, uint32_t v, int len) {
  b->acc |= (uint64_t)v << b->n;
  b->n += len;
  if (b->n >= 32) {
    b->p[0] = (uint8_t)b->acc;
    b->p[1] = (uint8_t)(b->acc >> 8);
    b->p[2] = (uint8_t)(b->acc >> 16);
    b->p[3] = (uint8_t)(b->acc >> 24);
    b->p += 4;
    b->acc >>= 32;
    b->n -= 32;
  }
}

/* Out to the next byte boundary (zero bits padded). */
static void align(bits_t *b) {
  while (b->n > 0) {
    *b->p++ = (uint8_t)b->acc;
    b->acc >>= 8;
    b->n -= 8;
  }
  b->acc = 0;
  b->n = 0;
}

/* ---- Huffman codes ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Code lengths of at most @limit bits for @n (<= NLIT) symbols of
 * frequencies @freq_in: a Huffman code, built again from flattened
 * frequencies while it is too deep. At least two symbols get a code: a
 * code of one symbol would be incomplete, which inflaters refuse. */
static void huff_lengths(const uint32_t *freq_in, int n, int limit, uint8_t *len) {
  uint32_t freq[NLIT];
  uint64_t key[NLIT], weight[2 * NLIT];
  int parent[2 * NLIT], depth[2 * NLIT];
  int used = 0;
  for (int i = 0; i < n; i++) used += (freq[i] = freq_in[i]) != 0;
  for (int i = 0; used < 2 && i < n; i++)
    if (!freq[i]) {
      freq[i] = 1;
      used++;
    }
  for (;;) {
    int m = 0;
    for (int i = 0; i < n; i++)
      if (freq[i]) key[m++] = (uint64_t)freq[i] << 9 | (unsigned)i;
    qsort(key, (size_t)m, sizeof *key, cmp_u64);
    for (int k = 0; k < m; k++) weight[k] = key[k] >> 9;
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
      len[key[k] & 511] = (uint8_t)depth[k];
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
    unsigned v = (unsigned)next[len[i]]++, r = 0;
    for (int b = 0; b < len[i]; b++, v >>= 1) r = r << 1 | (v & 1);
    code[i] = (uint16_t)r;
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

/* Tokens: a literal byte (< 256) or a run of length L at distance 1 (256 + L). */
static void write_block(bits_t *b, const uint8_t *in, size_t start, size_t end, const uint16_t *tok, size_t ntok,
                        const uint32_t *lfreq, uint32_t dmatches, const lencode_t *lc, bool final) {
  uint8_t llen[NLIT], dlen[NDIST], cllen[NCL];
  uint16_t lcode[NLIT], dcode[NDIST], clcode[NCL], cl[NLIT + NDIST];
  uint32_t dfreq[NDIST] = {dmatches}, clfreq[NCL] = {0};
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
  for (size_t k = 0; k < ntok; k++) {
    unsigned t = tok[k];
    if (t < 256) {
      put(b, lcode[t], llen[t]);
    } else {
      unsigned l = t - 256, s = lc->sym[l];
      put(b, lcode[s], llen[s]);
      if (lc->extra[l]) put(b, lc->value[l], lc->extra[l]);
      put(b, dcode[0], dlen[0]);
    }
  }
  put(b, lcode[256], llen[256]);
}

/* Each block at most its stored size: 5 bytes per 64 KiB piece; a block
 * but the last holds BLOCK_TOKENS symbols, so at least as many bytes. */
size_t deflate_rle_bound(size_t n) { return n + 5 * (n / STORED_MAX + n / BLOCK_TOKENS + 2) + 2 + 4 + 8; }

size_t deflate_rle_zlib(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  if (cap < deflate_rle_bound(n)) return 0;
  uint16_t *tok = malloc(BLOCK_TOKENS * sizeof *tok);
  if (!tok) return 0;
  lencode_t lc;
  lencode_init(&lc);
  out[0] = 0x78; /* deflate, 32 KiB window */
  out[1] = 0x01; /* the fastest level; check bits */
  bits_t b = {out + 2, 0, 0};
  size_t pos = 0;
  do {
    size_t i = pos, ntok = 0;
    uint32_t lfreq[NLIT] = {0}, dmatches = 0;
    lfreq[256] = 1;
    /* zlib's deflate_rle: a run of the byte before, 3 to 258 long, or a literal */
    while (i < n && ntok < BLOCK_TOKENS) {
      if (i > 0 && in[i] == in[i - 1]) {
        uint8_t v = in[i - 1];
        size_t lim = n - i < MAX_RUN ? n - i : MAX_RUN, l = 1;
        while (l < lim && in[i + l] == v) l++;
        if (l >= 3) {
          tok[ntok++] = (uint16_t)(256 + l);
          lfreq[lc.sym[l]]++;
          dmatches++;
          i += l;
          continue;
        }
      }
      tok[ntok++] = in[i];
      lfreq[in[i]]++;
      i++;
    }
    write_block(&b, in, pos, i, tok, ntok, lfreq, dmatches, &lc, i == n);
    pos = i;
  } while (pos < n);
  align(&b);
  uLong a = adler32(0L, Z_NULL, 0);
  for (size_t done = 0; done < n;) { /* uInt lengths */
    size_t k = n - done > (1u << 30) ? (1u << 30) : n - done;
    a = adler32(a, in + done, (uInt)k);
    done += k;
  }
  b.p[0] = (uint8_t)(a >> 24);
  b.p[1] = (uint8_t)(a >> 16);
  b.p[2] = (uint8_t)(a >> 8);
  b.p[3] = (uint8_t)a;
  free(tok);
  return (size_t)(b.p + 4 - out);
}
