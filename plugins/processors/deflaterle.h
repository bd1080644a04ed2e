/* plugins/processors/deflaterle.h - a fast zlib-stream encoder with run-length matching only (zlib's Z_RLE).
 *
 * The PNG writer's compressor (imagepng.c). It finds what zlib's Z_RLE
 * strategy finds (runs of one repeated byte: matches at distance 1, 3 to
 * 258 bytes) and codes each block of 16384 symbols with its own Huffman
 * codes (stored blocks where that is smaller), writing bits 64 at
 * a time. About the compression of zlib level 1 with Z_RLE on filtered
 * image rows, in a fraction of zlib's time (runs looked for 16 bytes a
 * step, SSE2 where the compiler targets it); other bytes than zlib's,
 * which any inflater reads back to the same data.
 *
 *   size_t cap = deflate_rle_bound(n);
 *   uint8_t *z = malloc(cap);
 *   size_t zn = deflate_rle_zlib(data, n, z, cap);   (0: @cap too small)
 */
#ifndef MMPIPE_PLUGINS_DEFLATERLE_H
#define MMPIPE_PLUGINS_DEFLATERLE_H

#include <stddef.h>
#include <stdint.h>

/* The most bytes deflate_rle_zlib() writes for @n input bytes. */
size_t deflate_rle_bound(size_t n);

/* @n bytes of @in as a zlib stream (RFC 1950: header, deflate blocks,
 * Adler-32) into @out (@cap bytes). Returns its length, 0 when @cap is
 * below deflate_rle_bound(@n) or memory ran out. */
size_t deflate_rle_zlib(const uint8_t *in, size_t n, uint8_t *out, size_t cap);

#endif
