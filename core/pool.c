/* core/pool.c - the coalescing caching allocator shared by the CPU and CUDA backends (see core/pool.h). */
#include "core/pool.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC visibility push(default)
#include <mmpipe/error.h>
#pragma GCC visibility pop

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif
#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define DEFAULT_CHUNK ((size_t)64 << 20)
#define NBINS (64 * 8)
#define SLAB_BLOCKS 256
#define HASH_MIN_LG 10

struct chunk;

/* A block: a run of bytes in a chunk, live (handed out) or free. */
typedef struct blk {
  char *addr;
  size_t size;
  struct blk *prev, *next;   /* physical neighbours in the chunk, NULL at its ends */
  struct blk *fprev, *fnext; /* its bin's list while free in a partly used chunk */
  struct blk *hnext;         /* hash chain while live; the spare list while unused */
  struct chunk *chunk;
  int bin;                   /* bin while in one, else -1 */
  bool live;
} blk_t;

typedef struct chunk {
  char *base;
  size_t size;
  size_t used;                /* bytes of its live blocks */
  uint64_t seq;               /* creation order */
  blk_t *first;               /* its lowest block */
  struct chunk *iprev, *inext; /* the idle list (entirely free chunks, oldest first) */
} chunk_t;

typedef struct slab {
  struct slab *next;
  blk_t b[SLAB_BLOCKS];
} slab_t;

struct mmp_pool {
  pthread_mutex_t lock;
  mmp_pool_config_t cfg;
  /* free blocks of partly used chunks: per size class, sorted by (size, address) */
  blk_t *bins[NBINS];
  uint64_t binmap[NBINS / 64];
  /* live blocks by address */
  blk_t **hash;
  int hash_lg;
  size_t nlive;
  /* entirely free chunks, by seq */
  chunk_t *idle_head, *idle_tail;
  size_t nchunks, nidle, nfree;
  uint64_t next_seq;
  /* descriptors */
  blk_t *spare;
  size_t nspare;
  slab_t *slabs;
  size_t nslabs;
  FILE *trace; /* MMPIPE_POOL_TRACE, or NULL */
  /* counters */
  mmp_pool_stats_t st;
  size_t held, peak_in_use, peak_held;
};

/* ------------------------------------------------------------ bins */

/* The size class of @s (>= 64): a power of two and 3 mantissa bits. Monotone. */
static int bin_of(size_t s) {
  int lg = 63 - __builtin_clzll((unsigned long long)s);
  return lg * 8 + (int)((s >> (lg - 3)) & 7);
}

static void bin_insert(mmp_pool_t *p, blk_t *b) {
  int k = bin_of(b->size);
  blk_t **pp = &p->bins[k], *prev = NULL;
  while (*pp && ((*pp)->size < b->size || ((*pp)->size == b->size && (*pp)->addr < b->addr))) {
    prev = *pp;
    pp = &(*pp)->fnext;
  }
  b->fnext = *pp;
  b->fprev = prev;
  if (*pp) (*pp)->fprev = b;
  *pp = b;
  b->bin = k;
  p->binmap[k / 64] |= 1ull << (k % 64);
  p->nfree++;
}

static void bin_remove(mmp_pool_t *p, blk_t *b) {
  int k = b->bin;
  if (b->fprev) b->fprev->fnext = b->fnext;
  else p->bins[k] = b->fnext;
  if (b->fnext) b->fnext->fprev = b->fprev;
  if (!p->bins[k]) p->binmap[k / 64] &= ~(1ull << (k % 64));
  b->fprev = b->fnext = NULL;
  b->bin = -1;
  p->nfree--;
}

/* The smallest free block of at least @r bytes (lowest address among equals). */
static blk_t *bin_best_fit(mmp_pool_t *p, size_t r) {
  int k = bin_of(r);
  for (blk_t *b = p->bins[k]; b; b = b->fnext)
    if (b->size >= r) return b;
  for (int w = (k + 1) / 64; w < NBINS / 64; w++) {
    uint64_t m = p->binmap[w];
    if (w == (k + 1) / 64) m &= ~0ull << ((k + 1) % 64);
    if (m) return p->bins[w * 64 + __builtin_ctzll(m)];
  }
  return NULL;
}

/* ------------------------------------------------------------ descriptors */

static blk_t *blk_get(mmp_pool_t *p) {
  blk_t *b = p->spare;
  p->spare = b->hnext;
  p->nspare--;
  memset(b, 0, sizeof *b);
  b->bin = -1;
  return b;
}

static void blk_put(mmp_pool_t *p, blk_t *b) {
  b->hnext = p->spare;
  p->spare = b;
  p->nspare++;
}

/* At least @n spare descriptors, so that no step after this can fail. */
static int reserve(mmp_pool_t *p, size_t n) {
  if (p->nspare >= n) return 0;
  slab_t *s = malloc(sizeof *s);
  if (!s) return MMP_ENOMEM;
  s->next = p->slabs;
  p->slabs = s;
  p->nslabs++;
  for (int i = SLAB_BLOCKS - 1; i >= 0; i--) blk_put(p, &s->b[i]);
  return 0;
}

/* ------------------------------------------------------------ live blocks by address */

static size_t hash_slot(const mmp_pool_t *p, const void *addr) {
  uint64_t h = ((uint64_t)(uintptr_t)addr >> 6) * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> (64 - p->hash_lg));
}

static void hash_grow(mmp_pool_t *p) {
  int lg = p->hash_lg + 1;
  blk_t **nh = calloc((size_t)1 << lg, sizeof *nh);
  if (!nh) return; /* longer chains, still correct */
  blk_t **old = p->hash;
  size_t n = (size_t)1 << p->hash_lg;
  p->hash = nh;
  p->hash_lg = lg;
  for (size_t i = 0; i < n; i++) {
    for (blk_t *b = old[i], *nx; b; b = nx) {
      nx = b->hnext;
      size_t s = hash_slot(p, b->addr);
      b->hnext = nh[s];
      nh[s] = b;
    }
  }
  free(old);
}

static void hash_insert(mmp_pool_t *p, blk_t *b) {
  if (p->nlive >= ((size_t)1 << p->hash_lg)) hash_grow(p);
  size_t s = hash_slot(p, b->addr);
  b->hnext = p->hash[s];
  p->hash[s] = b;
  p->nlive++;
}

static blk_t *hash_remove(mmp_pool_t *p, const void *addr) {
  for (blk_t **pp = &p->hash[hash_slot(p, addr)]; *pp; pp = &(*pp)->hnext) {
    if ((*pp)->addr == addr) {
      blk_t *b = *pp;
      *pp = b->hnext;
      b->hnext = NULL;
      p->nlive--;
      return b;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------ chunks */

static void idle_insert(mmp_pool_t *p, chunk_t *c) {
  chunk_t *at = p->idle_tail;
  while (at && at->seq > c->seq) at = at->iprev;
  c->iprev = at;
  c->inext = at ? at->inext : p->idle_head;
  if (c->inext) c->inext->iprev = c;
  else p->idle_tail = c;
  if (at) at->inext = c;
  else p->idle_head = c;
  p->nidle++;
}

static void idle_remove(mmp_pool_t *p, chunk_t *c) {
  if (c->iprev) c->iprev->inext = c->inext;
  else p->idle_head = c->inext;
  if (c->inext) c->inext->iprev = c->iprev;
  else p->idle_tail = c->iprev;
  c->iprev = c->inext = NULL;
  p->nidle--;
}

/* Give back an entirely free chunk (on the idle list). */
static void chunk_release(mmp_pool_t *p, chunk_t *c) {
  idle_remove(p, c);
  blk_put(p, c->first);
  if (p->cfg.poison) UNPOISON(c->base, c->size); /* the address range may be reused by anyone */
  p->cfg.chunk_release(p->cfg.user, c->base, c->size);
  p->held -= c->size;
  p->nchunks--;
  p->st.os_frees++;
  free(c);
}

/* Release entirely free chunks, newest first, until the free bytes kept are
 * within the bound (or all of them when @all). */
static void release_idle(mmp_pool_t *p, bool all) {
  while (p->idle_tail && (all || p->held - p->st.bytes_in_use > p->cfg.max_cached)) chunk_release(p, p->idle_tail);
}

/* A new chunk of @size, idle, with one free block; NULL with the code in *rc. */
static chunk_t *chunk_new(mmp_pool_t *p, size_t size, int *rc) {
  chunk_t *c = malloc(sizeof *c);
  if (!c) {
    *rc = MMP_ENOMEM;
    return NULL;
  }
  void *mem = NULL;
  *rc = p->cfg.chunk_alloc(p->cfg.user, size, &mem);
  if (*rc == 0 && !mem) *rc = MMP_ENOMEM;
  if (*rc == 0 && ((uintptr_t)mem & (p->cfg.align - 1))) {
    p->cfg.chunk_release(p->cfg.user, mem, size);
    *rc = mmp_error_set(MMP_EINVAL, "pool: a chunk at %p is not aligned to %zu bytes", mem, p->cfg.align);
  }
  if (*rc < 0) {
    free(c);
    return NULL;
  }
  if (p->cfg.poison) POISON(mem, size);
  blk_t *b = blk_get(p);
  b->addr = mem;
  b->size = size;
  b->chunk = c;
  *c = (chunk_t){.base = mem, .size = size, .seq = p->next_seq++, .first = b};
  p->held += size;
  p->nchunks++;
  p->st.os_allocs++;
  if (p->held > p->peak_held) p->peak_held = p->held;
  idle_insert(p, c);
  return c;
}

/* MMPIPE_POOL_TRACE=FILE: every allocation and free of every pool, one line
 * each ("cpu a NBYTES ADDR", "cpu f ADDR"), for replaying a real workload
 * (tests/data/pool/). One stream for the process, opened by the first pool. */
static FILE *trace_stream;
static pthread_once_t trace_once = PTHREAD_ONCE_INIT;

static void trace_open(void) {
  const char *e = getenv("MMPIPE_POOL_TRACE");
  if (e && *e) trace_stream = fopen(e, "w");
}

/* ------------------------------------------------------------ the API */

mmp_pool_t *mmp__pool_new(const mmp_pool_config_t *cfg) {
  if (!cfg || !cfg->chunk_alloc || !cfg->chunk_release) {
    mmp_error_set(MMP_EINVAL, "pool: chunk_alloc and chunk_release are required");
    return NULL;
  }
  size_t align = cfg->align ? cfg->align : 64;
  if (align < 64 || (align & (align - 1))) {
    mmp_error_set(MMP_EINVAL, "pool: alignment %zu is not a power of two >= 64", align);
    return NULL;
  }
  mmp_pool_t *p = calloc(1, sizeof *p);
  if (p) p->hash = calloc((size_t)1 << HASH_MIN_LG, sizeof *p->hash);
  if (!p || !p->hash) {
    free(p);
    mmp_error_set(MMP_ENOMEM, "pool: out of memory");
    return NULL;
  }
  p->hash_lg = HASH_MIN_LG;
  p->cfg = *cfg;
  p->cfg.align = align;
  size_t cb = cfg->chunk_bytes ? cfg->chunk_bytes : DEFAULT_CHUNK;
  p->cfg.chunk_bytes = (cb + align - 1) & ~(align - 1);
  if (!p->cfg.name) p->cfg.name = "pool";
  pthread_once(&trace_once, trace_open);
  p->trace = trace_stream;
#ifndef POOL_ASAN
  p->cfg.poison = false;
#endif
  pthread_mutex_init(&p->lock, NULL);
  return p;
}

void mmp__pool_destroy(mmp_pool_t *p) {
  if (!p) return;
  /* live blocks: free them (merging everything), then every chunk is idle */
  size_t n = (size_t)1 << p->hash_lg;
  for (size_t i = 0; i < n; i++)
    while (p->hash[i]) mmp__pool_free(p, p->hash[i]->addr);
  pthread_mutex_lock(&p->lock);
  release_idle(p, true);
  pthread_mutex_unlock(&p->lock);
  while (p->slabs) {
    slab_t *s = p->slabs;
    p->slabs = s->next;
    free(s);
  }
  free(p->hash);
  pthread_mutex_destroy(&p->lock);
  free(p);
}

int mmp__pool_alloc(mmp_pool_t *p, size_t nbytes, void **out) {
  size_t a = p->cfg.align;
  if (nbytes > SIZE_MAX / 2) return MMP_ENOMEM;
  size_t r = nbytes ? (nbytes + a - 1) & ~(a - 1) : a;
  pthread_mutex_lock(&p->lock);
  p->st.requests++;
  /* two descriptors at most: a new chunk's block and the remainder of a split */
  int rc = reserve(p, 2);
  if (rc < 0) {
    pthread_mutex_unlock(&p->lock);
    return rc;
  }
  blk_t *b = bin_best_fit(p, r);
  if (b) {
    bin_remove(p, b);
    p->st.pool_hits++;
  } else {
    chunk_t *c = p->idle_head;
    while (c && c->size < r) c = c->inext;
    if (c) {
      p->st.pool_hits++;
    } else {
      size_t cs = r > p->cfg.chunk_bytes ? r : p->cfg.chunk_bytes;
      c = chunk_new(p, cs, &rc);
      if (!c && p->idle_head) {
        release_idle(p, true);
        c = chunk_new(p, cs, &rc);
      }
      if (!c) {
        pthread_mutex_unlock(&p->lock);
        return rc;
      }
    }
    idle_remove(p, c);
    b = c->first;
  }
  if (b->size > r) { /* split: the rest stays free */
    blk_t *rest = blk_get(p);
    rest->addr = b->addr + r;
    rest->size = b->size - r;
    rest->chunk = b->chunk;
    rest->prev = b;
    rest->next = b->next;
    if (b->next) b->next->prev = rest;
    b->next = rest;
    b->size = r;
    bin_insert(p, rest);
  }
  b->live = true;
  b->chunk->used += r;
  hash_insert(p, b);
  p->st.bytes_in_use += r;
  if (p->st.bytes_in_use > p->peak_in_use) p->peak_in_use = p->st.bytes_in_use;
  if (p->cfg.poison) UNPOISON(b->addr, nbytes); /* the rounding tail stays poisoned */
  *out = b->addr;
  if (p->trace) fprintf(p->trace, "%s a %zu %p\n", p->cfg.name, nbytes, (void *)b->addr);
  pthread_mutex_unlock(&p->lock);
  return 0;
}

/* Merge free @n into @b, its lower neighbour. */
static void merge_next(mmp_pool_t *p, blk_t *b, blk_t *n) {
  b->size += n->size;
  b->next = n->next;
  if (n->next) n->next->prev = b;
  blk_put(p, n);
}

void mmp__pool_free(mmp_pool_t *p, void *ptr) {
  if (!ptr) return;
  pthread_mutex_lock(&p->lock);
  blk_t *b = hash_remove(p, ptr);
  if (!b) {
    fprintf(stderr, "mmpipe pool: free of %p, which this pool did not hand out (or already took back)\n", ptr);
    abort();
  }
  if (p->trace) fprintf(p->trace, "%s f %p\n", p->cfg.name, ptr);
  b->live = false;
  p->st.bytes_in_use -= b->size;
  chunk_t *c = b->chunk;
  c->used -= b->size;
  if (p->cfg.poison) POISON(b->addr, b->size);
  if (b->prev && !b->prev->live) {
    blk_t *pr = b->prev;
    bin_remove(p, pr);
    merge_next(p, pr, b);
    b = pr;
  }
  if (b->next && !b->next->live) {
    bin_remove(p, b->next);
    merge_next(p, b, b->next);
  }
  if (c->used == 0) idle_insert(p, c); /* b is the whole chunk now */
  else bin_insert(p, b);
  release_idle(p, false);
  pthread_mutex_unlock(&p->lock);
}

void mmp__pool_trim(mmp_pool_t *p) {
  pthread_mutex_lock(&p->lock);
  release_idle(p, true);
  pthread_mutex_unlock(&p->lock);
}

static void stats_locked(mmp_pool_t *p, mmp_pool_stats_t *out) {
  *out = p->st;
  out->bytes_cached = p->held - p->st.bytes_in_use;
}

void mmp__pool_stats(mmp_pool_t *p, mmp_pool_stats_t *out) {
  pthread_mutex_lock(&p->lock);
  stats_locked(p, out);
  pthread_mutex_unlock(&p->lock);
}

void mmp__pool_info(mmp_pool_t *p, mmp_pool_info_t *out) {
  pthread_mutex_lock(&p->lock);
  memset(out, 0, sizeof *out);
  stats_locked(p, &out->st);
  out->held = p->held;
  out->peak_in_use = p->peak_in_use;
  out->peak_held = p->peak_held;
  out->chunks = p->nchunks;
  out->idle_chunks = p->nidle;
  out->free_blocks = p->nfree;
  out->live_blocks = p->nlive;
  out->descriptors = p->nslabs * SLAB_BLOCKS;
  for (chunk_t *c = p->idle_head; c; c = c->inext)
    if (c->size > out->largest_free) out->largest_free = c->size;
  for (int k = NBINS - 1; k >= 0; k--) {
    if (!p->bins[k]) continue;
    blk_t *b = p->bins[k];
    while (b->fnext) b = b->fnext; /* sorted: the last is the largest */
    if (b->size > out->largest_free) out->largest_free = b->size;
    break;
  }
  pthread_mutex_unlock(&p->lock);
}

void mmp__pool_reset_peaks(mmp_pool_t *p) {
  pthread_mutex_lock(&p->lock);
  p->peak_in_use = p->st.bytes_in_use;
  p->peak_held = p->held;
  pthread_mutex_unlock(&p->lock);
}

size_t mmp__pool_max_cached_env(long long default_mb) {
  const char *e = getenv("MMPIPE_POOL_MAX_MB");
  long long mb = e && *e ? atoll(e) : default_mb;
  if (mb < 0) mb = 0;
  if ((unsigned long long)mb > (SIZE_MAX >> 20)) return SIZE_MAX;
  return (size_t)mb << 20;
}
