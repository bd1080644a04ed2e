/* core/pool.h - the coalescing caching allocator behind the CPU and CUDA backends (internal, not installed).
 *
 * A pool carves blocks out of large chunks that it obtains through two
 * callbacks (mmap/munmap for the CPU backend, cudaMalloc/cudaFree for the
 * CUDA one). All bookkeeping lives in host-side descriptors: the pool never
 * reads or writes the memory it manages, so the same code serves device
 * memory.
 *
 *   static int get(void *u, size_t n, void **out) { *out = my_map(n); return *out ? 0 : MMP_ENOMEM; }
 *   static void put(void *u, void *p, size_t n) { my_unmap(p, n); }
 *   mmp_pool_config_t cfg = {.chunk_alloc = get, .chunk_release = put,
 *                            .max_cached = (size_t)8192 << 20};
 *   mmp_pool_t *pool = mmp__pool_new(&cfg);
 *   void *p;
 *   if (mmp__pool_alloc(pool, 1000, &p) == 0) mmp__pool_free(pool, p);
 *   mmp__pool_destroy(pool);
 *
 * Placement, and why a repeated sequence settles (the property the backends
 * promise: a repeated sequence of allocations and frees reaches the OS only
 * in its first run):
 *   - sizes are rounded up to the alignment (64 bytes or more);
 *   - a request takes the best-fitting free block (smallest, then lowest
 *     address) among the chunks that hold at least one live block, and is
 *     cut from its start; the rest stays free;
 *   - failing that, the OLDEST entirely free chunk that is large enough;
 *   - failing that, a new chunk of max(chunk_bytes, request).
 *   - a freed block merges with its free neighbours in its chunk, so the
 *     free space of a chunk depends only on which blocks are live in it.
 * If a sequence frees everything it allocates, the state after its first
 * run is the state before it plus entirely free chunks E (those it had to
 * create), in creation order. A second run then makes the same decisions
 * step by step: the first tier sees the same partly used chunks; the second
 * tier prefers older chunks, and every chunk of E is younger than any chunk
 * the first run found free there; where the first run created a chunk, the
 * second finds that very chunk as the oldest of E. Nothing is created, and
 * every later run repeats the second. (The bound below can break this: a
 * chunk released for it must be obtained again.)
 *
 * Entirely free chunks are kept while the free bytes held (bytes_cached)
 * stay within max_cached; past it, entirely free chunks go back through
 * chunk_release, newest first. Free space inside chunks that still hold a
 * live block cannot be given back and counts towards bytes_cached.
 *
 * Thread safety: every function may be called from any thread (one mutex
 * per pool; the callbacks are called with it held).
 *
 * Debugging: with MMPIPE_POOL_TRACE=FILE every allocation and free of every
 * pool is written to FILE ("cpu a NBYTES ADDR" / "cpu f ADDR"), a workload
 * that tests/test_core_pool can replay (tests/data/pool/).
 */
#ifndef MMPIPE_CORE_POOL_H
#define MMPIPE_CORE_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#pragma GCC visibility push(default)
#include <mmpipe/backend.h>
#pragma GCC visibility pop

typedef struct mmp_pool mmp_pool_t;

/* Obtain a chunk of @nbytes, aligned to at least the pool's alignment, into
 * *out. Returns 0 or a negative MMP_E* code (the pool passes it on; setting
 * the message is optional: the backends word their own). */
typedef int (*mmp_pool_chunk_alloc_cb)(void *user, size_t nbytes, void **out);
/* Give back a chunk from chunk_alloc (@nbytes as asked). */
typedef void (*mmp_pool_chunk_release_cb)(void *user, void *ptr, size_t nbytes);

typedef struct mmp_pool_config {
  mmp_pool_chunk_alloc_cb chunk_alloc;       /* REQUIRED */
  mmp_pool_chunk_release_cb chunk_release;   /* REQUIRED */
  void *user;                                /* passed to both */
  const char *name;   /* (nullable) for the trace below: "cpu", "cuda" */
  size_t chunk_bytes; /* size of a regular chunk; 0: 64 MiB */
  size_t align;       /* block alignment and size granule, a power of two >= 64; 0: 64 */
  size_t max_cached;  /* bound on the free bytes kept (see above) */
  bool poison;        /* host memory under AddressSanitizer: poison what is
                         not handed out (a no-op in other builds) */
} mmp_pool_config_t;

/* Internal figures beyond the public counters. */
typedef struct mmp_pool_info {
  mmp_pool_stats_t st;  /* as mmp__pool_stats */
  size_t held;          /* bytes of all chunks (in use + cached): the footprint */
  size_t peak_in_use;   /* highest bytes_in_use since creation or the last reset */
  size_t peak_held;     /* highest footprint since then */
  size_t largest_free;  /* largest free block, entirely free chunks included */
  size_t chunks;        /* chunks held */
  size_t idle_chunks;   /* of which entirely free */
  size_t free_blocks;   /* free blocks in partly used chunks */
  size_t live_blocks;   /* blocks handed out */
  size_t descriptors;   /* block descriptors allocated (they are recycled) */
} mmp_pool_info_t;

/* A new pool (no memory is obtained yet). NULL with MMP_EINVAL (missing
 * callback, bad alignment) or MMP_ENOMEM and the message set.
 * (transfer full) */
mmp_pool_t *mmp__pool_new(const mmp_pool_config_t *cfg);
/* Release every chunk, live blocks included, and the pool. NULL: no-op. */
void mmp__pool_destroy(mmp_pool_t *pool);
/* A block of at least @nbytes (0 gives a block of one granule), aligned to
 * the pool's alignment, into *out. When a new chunk cannot be obtained,
 * every entirely free chunk is released and the chunk asked for once more.
 * Returns 0, or the callback's code (MMP_ENOMEM when the size cannot be
 * represented, or descriptors cannot be allocated), *out unchanged and the
 * message left to the caller unless the callback set one. */
int mmp__pool_alloc(mmp_pool_t *pool, size_t nbytes, void **out);
/* Return a block from mmp__pool_alloc. NULL: no-op. A pointer the pool
 * never handed out is a programming error: the process aborts with a
 * message. */
void mmp__pool_free(mmp_pool_t *pool, void *ptr);
/* Release every entirely free chunk. */
void mmp__pool_trim(mmp_pool_t *pool);
/* The public counters (see mmp_pool_stats_t). */
void mmp__pool_stats(mmp_pool_t *pool, mmp_pool_stats_t *out);
/* Counters and internal figures. */
void mmp__pool_info(mmp_pool_t *pool, mmp_pool_info_t *out);
/* Restart the peaks from the current values. */
void mmp__pool_reset_peaks(mmp_pool_t *pool);
/* The bound from MMPIPE_POOL_MAX_MB (MiB; negative counts as 0), or
 * @default_mb when it is unset or empty, in bytes. */
size_t mmp__pool_max_cached_env(long long default_mb);

#endif
