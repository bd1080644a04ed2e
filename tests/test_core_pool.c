/* tests/test_core_pool.c - the coalescing pool (core/pool.c) driven directly, over host and fake "device" chunks. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/pool.h"
#include "tap.h"

#pragma GCC visibility push(default)
#include <mmpipe/error.h>
#pragma GCC visibility pop

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define DEV_BYTE 0xA5 /* what the fake device's chunks hold where nothing was written */

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { /* xorshift64* */
  rs ^= rs >> 12;
  rs ^= rs << 25;
  rs ^= rs >> 27;
  return rs * 0x2545F4914F6CDD1Dull;
}

/* ------------------------------------------------------------ chunk providers */

#define MAXCHUNKS 4096
typedef struct provider {
  pthread_mutex_t lock;
  int kind;          /* HOST (mmap), DEVICE (malloc'd, patterned), FAKE (addresses only) */
  size_t capacity;   /* refuse chunks beyond this many bytes held (0: no limit) */
  size_t held;
  uint64_t allocs, frees, dirty_releases;
  uintptr_t fake_next;
  struct {
    char *p;
    size_t n;
  } c[MAXCHUNKS];
  int nc;
} provider_t;
enum { HOST, DEVICE, FAKE };

static int prov_alloc(void *user, size_t n, void **out) {
  provider_t *v = user;
  if (v->capacity && v->held + n > v->capacity) return MMP_ENOMEM;
  char *p;
  if (v->kind == HOST) {
    p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return MMP_ENOMEM;
  } else if (v->kind == DEVICE) {
    if (v->nc == MAXCHUNKS || !(p = aligned_alloc(256, n))) return MMP_ENOMEM;
    memset(p, DEV_BYTE, n);
  } else {
    p = (char *)v->fake_next;
    v->fake_next += (n + 4095) & ~(size_t)4095;
  }
  if (v->kind != FAKE && v->nc < MAXCHUNKS) {
    v->c[v->nc].p = p;
    v->c[v->nc++].n = n;
  }
  v->held += n;
  v->allocs++;
  *out = p;
  return 0;
}

static bool all_byte(const char *p, size_t n, unsigned char b) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)p[i] != b) return false;
  return true;
}

static void prov_release(void *user, void *ptr, size_t n) {
  provider_t *v = user;
  for (int i = 0; i < v->nc; i++) {
    if (v->c[i].p != ptr) continue;
    if (v->c[i].n != n) v->dirty_releases++; /* released with another size than obtained */
    v->c[i] = v->c[--v->nc];
    break;
  }
  if (v->kind == HOST) munmap(ptr, n);
  if (v->kind == DEVICE) {
    if (!all_byte(ptr, n, DEV_BYTE)) v->dirty_releases++;
    free(ptr);
  }
  v->held -= n;
  v->frees++;
}

static void prov_init(provider_t *v, int kind) {
  memset(v, 0, sizeof *v);
  pthread_mutex_init(&v->lock, NULL);
  v->kind = kind;
  v->fake_next = (uintptr_t)1 << 40;
}

static mmp_pool_t *pool_for(provider_t *v, size_t chunk, size_t align, size_t max_cached) {
  mmp_pool_config_t cfg = {.chunk_alloc = prov_alloc,
                           .chunk_release = prov_release,
                           .user = v,
                           .chunk_bytes = chunk,
                           .align = align,
                           .max_cached = max_cached,
                           .poison = v->kind == HOST};
  return mmp__pool_new(&cfg);
}

static mmp_pool_info_t info_of(mmp_pool_t *p) {
  mmp_pool_info_t in;
  mmp__pool_info(p, &in);
  return in;
}

/* ------------------------------------------------------------ live blocks of a test */

typedef struct live {
  char *p;
  size_t n;
  unsigned char pat;
} live_t;

static unsigned char pattern_of(uint64_t id) {
  unsigned char v = (unsigned char)(1 + id % 251);
  return v == DEV_BYTE ? 0x5A : v;
}

static int cmp_live(const void *a, const void *b) {
  const live_t *x = a, *y = b;
  return x->p < y->p ? -1 : x->p > y->p;
}

/* No two live blocks overlap. */
static bool disjoint(live_t *l, int n) {
  live_t *s = malloc((size_t)(n ? n : 1) * sizeof *s);
  memcpy(s, l, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_live);
  bool okay = true;
  for (int i = 1; i < n; i++)
    if (s[i - 1].p + (s[i - 1].n ? s[i - 1].n : 1) > s[i].p) okay = false;
  free(s);
  return okay;
}

/* Every byte of the device chunks outside the live blocks' requested bytes
 * still holds DEV_BYTE: the pool wrote nothing there (no headers). */
static bool device_untouched(provider_t *v, live_t *l, int n) {
  live_t *s = malloc((size_t)(n ? n : 1) * sizeof *s);
  memcpy(s, l, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_live);
  bool okay = true;
  for (int k = 0; k < v->nc && okay; k++) {
    char *at = v->c[k].p, *end = at + v->c[k].n;
    for (int i = 0; i < n && okay; i++) {
      if (s[i].p < at || s[i].p >= end) continue;
      okay = all_byte(at, (size_t)(s[i].p - at), DEV_BYTE);
      at = s[i].p + s[i].n;
    }
    if (okay) okay = all_byte(at, (size_t)(end - at), DEV_BYTE);
  }
  free(s);
  return okay;
}

static size_t random_size(void) {
  uint64_t r = rnd() % 100;
  if (r < 75) return rnd() % (4 * KiB + 1);
  if (r < 97) return 4 * KiB + rnd() % (64 * KiB);
  return 256 * KiB + rnd() % (1536 * KiB); /* some larger than the 1 MiB chunk */
}

/* ------------------------------------------------------------ tests */

static void test_basics(void) {
  provider_t v;
  prov_init(&v, HOST);
  mmp_pool_t *p = pool_for(&v, MiB, 0, 8 * MiB);
  ok(p != NULL, "pool over mmap'd chunks");
  void *a = NULL, *b = NULL, *z = NULL;
  is_int(mmp__pool_alloc(p, 100, &a), 0, "alloc 100 bytes");
  is_int(mmp__pool_alloc(p, 1000, &b), 0, "alloc 1000 bytes");
  is_int(mmp__pool_alloc(p, 0, &z), 0, "alloc 0 bytes");
  ok(a && b && z && a != b && b != z && a != z, "three distinct non-NULL blocks");
  ok(((uintptr_t)a | (uintptr_t)b | (uintptr_t)z) % 64 == 0, "64-byte aligned");
  mmp_pool_stats_t st;
  mmp__pool_stats(p, &st);
  is_int(st.bytes_in_use, 128 + 1024 + 64, "bytes_in_use counts rounded sizes (128 + 1024 + 64)");
  is_int(st.bytes_cached, MiB - st.bytes_in_use, "bytes_cached is the rest of the chunk");
  is_int(st.os_allocs, 1, "one chunk");
  is_int(st.requests, 3, "three requests");
  is_int(st.pool_hits, 2, "two served without a new chunk");
  is_int((char *)b - (char *)a, 128, "blocks are cut one after the other from the chunk's start");
#ifdef TEST_ASAN
  ok(__asan_address_is_poisoned((char *)a + 100) && !__asan_address_is_poisoned((char *)a + 99),
     "ASan: the rounding tail past the requested size is poisoned");
  ok(__asan_address_is_poisoned((char *)z), "ASan: a 0-byte block is not addressable");
  ok(__asan_address_is_poisoned((char *)b + 4096), "ASan: free chunk space is poisoned");
#endif
  mmp__pool_free(p, a);
#ifdef TEST_ASAN
  ok(__asan_address_is_poisoned((char *)a), "ASan: a freed block is poisoned");
#endif
  mmp__pool_free(p, b);
  mmp__pool_free(p, z);
  mmp__pool_free(p, NULL);
  mmp_pool_info_t in = info_of(p);
  is_int(in.st.bytes_in_use, 0, "all returned");
  ok(in.idle_chunks == 1 && in.free_blocks == 0, "the chunk is one free block again");
  is_int(mmp__pool_alloc(p, SIZE_MAX, &a), MMP_ENOMEM, "SIZE_MAX bytes: MMP_ENOMEM");
  mmp__pool_destroy(p);
  is_int(v.held, 0, "destroy releases every chunk");
  mmp__pool_destroy(NULL);

  mmp_pool_config_t bad = {.chunk_alloc = prov_alloc, .chunk_release = prov_release, .align = 96};
  ok(mmp__pool_new(&bad) == NULL && mmp_error_code() == MMP_EINVAL, "alignment 96 is refused");
  bad.align = 0;
  bad.chunk_release = NULL;
  ok(mmp__pool_new(&bad) == NULL && mmp_error_code() == MMP_EINVAL, "a missing callback is refused");

  prov_init(&v, DEVICE);
  p = pool_for(&v, MiB, 256, 8 * MiB);
  void *q[5];
  bool al = true;
  for (int i = 0; i < 5; i++) {
    al = al && mmp__pool_alloc(p, (size_t)(1 + 333 * i), &q[i]) == 0 && (uintptr_t)q[i] % 256 == 0;
  }
  ok(al, "alignment 256 (the CUDA backend's) holds for odd sizes");
  for (int i = 0; i < 5; i++) mmp__pool_free(p, q[i]);
  mmp__pool_destroy(p);
}

/* Random alloc/free, each block filled with its own pattern and checked
 * before it is freed; on the fake device the free parts of every chunk are
 * checked to hold the chunk's initial bytes. */
static void test_random(int kind) {
  const char *name = kind == HOST ? "host" : "device";
  provider_t v;
  prov_init(&v, kind);
  mmp_pool_t *p = pool_for(&v, MiB, kind == HOST ? 64 : 256, 4 * MiB);
  enum { SLOTS = 400, OPS = 12000 };
  live_t l[SLOTS];
  int n = 0;
  uint64_t id = 0;
  int bad_align = 0, bad_data = 0, fails = 0, overlaps = 0, touched = 0;
  size_t align = kind == HOST ? 64 : 256;
  for (int op = 0; op < OPS; op++) {
    bool do_alloc = n == 0 || (n < SLOTS && rnd() % 100 < (op < OPS / 2 ? 55 : 45));
    if (do_alloc) {
      size_t sz = random_size();
      void *ptr;
      if (mmp__pool_alloc(p, sz, &ptr) < 0) {
        fails++;
        continue;
      }
      if ((uintptr_t)ptr % align) bad_align++;
      l[n] = (live_t){ptr, sz, pattern_of(id++)};
      memset(ptr, l[n].pat, sz);
      n++;
    } else {
      int i = (int)(rnd() % (uint64_t)n);
      if (!all_byte(l[i].p, l[i].n, l[i].pat)) bad_data++;
      if (kind == DEVICE) memset(l[i].p, DEV_BYTE, l[i].n); /* leave the device as we found it */
      mmp__pool_free(p, l[i].p);
      l[i] = l[--n];
    }
    if (op % 1000 == 999) {
      if (!disjoint(l, n)) overlaps++;
      if (kind == DEVICE && !device_untouched(&v, l, n)) touched++;
    }
  }
  is_int(fails, 0, "%s: %d random ops, every allocation served", name, OPS);
  is_int(bad_align, 0, "%s: every block aligned to %zu", name, align);
  is_int(overlaps, 0, "%s: live blocks never overlap", name);
  is_int(bad_data, 0, "%s: every block kept its pattern until freed", name);
  if (kind == DEVICE) is_int(touched, 0, "device: the pool never wrote into the chunks it manages");
  mmp_pool_info_t in = info_of(p);
  is_int(in.live_blocks, (long long)n, "%s: live_blocks counts what is handed out", name);
  while (n > 0) {
    if (!all_byte(l[n - 1].p, l[n - 1].n, l[n - 1].pat)) bad_data++;
    if (kind == DEVICE) memset(l[n - 1].p, DEV_BYTE, l[n - 1].n);
    mmp__pool_free(p, l[--n].p);
  }
  in = info_of(p);
  ok(in.st.bytes_in_use == 0 && in.free_blocks == 0 && in.idle_chunks == in.chunks,
     "%s: after freeing everything each of the %zu chunks is one free block", name, in.chunks);
  is_int(in.st.bytes_cached, in.held, "%s: bytes_cached is then all that is held", name);
  if (kind == DEVICE) ok(device_untouched(&v, l, 0), "device: every chunk still holds only its initial bytes");
  uint64_t before = in.st.os_allocs;
  void *whole;
  ok(mmp__pool_alloc(p, MiB, &whole) == 0 && info_of(p).st.os_allocs == before,
     "%s: coalesced: a whole chunk's size is served without a new chunk", name);
  mmp__pool_free(p, whole);
  mmp__pool_destroy(p);
  is_int(v.dirty_releases, 0, "%s: chunks went back with their size%s", name,
         kind == DEVICE ? " and untouched" : "");
}

static void test_best_fit(void) {
  provider_t v;
  prov_init(&v, FAKE);
  mmp_pool_t *p = pool_for(&v, MiB, 64, 64 * MiB);
  /* free holes of 64K, 16K, 32K, 16K kept apart by live separators */
  size_t sizes[9] = {64 * KiB, 4 * KiB, 16 * KiB, 4 * KiB, 32 * KiB, 4 * KiB, 16 * KiB, 4 * KiB, 0};
  void *b[9];
  for (int i = 0; i < 8; i++) mmp__pool_alloc(p, sizes[i], &b[i]);
  for (int i = 0; i < 8; i += 2) mmp__pool_free(p, b[i]);
  void *x, *y, *z, *w, *t;
  mmp__pool_alloc(p, 16 * KiB, &x);
  ok(x == b[2], "16K goes to the first of two exact 16K holes (lowest address)");
  mmp__pool_alloc(p, 16 * KiB - 100, &y);
  ok(y == b[6], "16K-100 goes to the other 16K hole, not the larger ones");
  mmp__pool_alloc(p, 20 * KiB, &z);
  ok(z == b[4], "20K goes to the 32K hole (the smallest that fits)");
  mmp__pool_alloc(p, 12 * KiB, &w);
  ok(w == (char *)b[4] + 20 * KiB, "12K takes the 12K left of the 32K hole");
  mmp__pool_alloc(p, 40 * KiB, &t);
  ok(t == b[0], "40K goes to the 64K hole, not the chunk's large tail");
  is_int(v.allocs, 1, "all in one chunk");
  mmp__pool_destroy(p);
}

/* A recorded mixed-size sequence with interleaved lifetimes that frees all
 * it allocates; (s = size, or -(index + 1) of the block to free). */
typedef struct seq {
  int64_t *ops;
  int n;
} seq_t;

static seq_t make_seq(int nops, int seed, bool large) {
  seq_t s = {calloc((size_t)nops * 2, sizeof(int64_t)), 0};
  rs = 0x9e3779b97f4a7c15ull * (uint64_t)(seed + 1);
  int live[512], nl = 0, nalloc = 0;
  for (int i = 0; i < nops; i++) {
    if (nl == 0 || (nl < 512 && rnd() % 100 < 52)) {
      size_t sz = random_size();
      if (large && rnd() % 50 == 0) sz = 3 * MiB / 2 + rnd() % (2 * MiB);
      s.ops[s.n++] = (int64_t)sz;
      live[nl++] = nalloc++;
    } else {
      /* LIFO-ish: mostly recent blocks */
      int k = rnd() % 4 ? nl - 1 - (int)(rnd() % (uint64_t)(nl < 4 ? nl : 4)) : (int)(rnd() % (uint64_t)nl);
      s.ops[s.n++] = -(int64_t)live[k] - 1;
      live[k] = live[--nl];
    }
  }
  while (nl > 0) s.ops[s.n++] = -(int64_t)live[--nl] - 1;
  return s;
}

static void run_seq(mmp_pool_t *p, const seq_t *s, void **slots) {
  int na = 0;
  for (int i = 0; i < s->n; i++) {
    if (s->ops[i] >= 0) mmp__pool_alloc(p, (size_t)s->ops[i], &slots[na++]);
    else mmp__pool_free(p, slots[-s->ops[i] - 1]);
  }
}

static void test_repeat(void) {
  int stable = 0, cases = 0;
  bool descr_stable = true;
  for (int seed = 0; seed < 12; seed++) {
    provider_t v;
    prov_init(&v, FAKE);
    mmp_pool_t *p = pool_for(&v, MiB, 64, (size_t)1 << 40);
    /* state before the first run: long-lived blocks in partly used chunks
     * and, for odd seeds, entirely free chunks of several sizes */
    void *keep[40], *tmp[3];
    rs = 12345 + (uint64_t)seed;
    for (int i = 0; i < 40; i++) mmp__pool_alloc(p, random_size(), &keep[i]);
    if (seed % 2) {
      mmp__pool_alloc(p, 3 * MiB, &tmp[0]);
      mmp__pool_alloc(p, MiB, &tmp[1]);
      mmp__pool_alloc(p, 2 * MiB + 4096, &tmp[2]);
      for (int i = 0; i < 3; i++) mmp__pool_free(p, tmp[i]);
    }
    for (int i = 0; i < 40; i += 3) mmp__pool_free(p, keep[i]);
    seq_t s = make_seq(6000, seed, seed % 3 != 0);
    void **slots = malloc((size_t)s.n * sizeof *slots);
    uint64_t first = 0;
    size_t descr = 0;
    bool same = true;
    for (int run = 0; run < 20; run++) {
      run_seq(p, &s, slots);
      mmp_pool_info_t in = info_of(p);
      if (run == 0) {
        first = in.st.os_allocs;
        descr = in.descriptors;
      } else {
        if (in.st.os_allocs != first) {
          if (same) diag("seed %d: run %d has %llu chunk allocations, run 1 had %llu", seed, run + 1,
                         (unsigned long long)in.st.os_allocs, (unsigned long long)first);
          same = false;
        }
        if (in.descriptors != descr) descr_stable = false;
      }
    }
    stable += same;
    cases++;
    for (int i = 0; i < 40; i++)
      if (i % 3) mmp__pool_free(p, keep[i]);
    free(slots);
    free(s.ops);
    mmp__pool_destroy(p);
  }
  is_int(stable, cases, "repeat: over %d recorded sequences x 20 runs, os_allocs never grows after the first run",
         cases);
  ok(descr_stable, "repeat: and no new block descriptor is allocated after the first run");

  /* the same through the bound: with MMPIPE_POOL_MAX_MB large enough, all
   * of a run's chunks are kept */
  provider_t v;
  prov_init(&v, HOST);
  mmp_pool_t *p = pool_for(&v, MiB, 64, 64 * MiB);
  seq_t s = make_seq(3000, 99, true);
  void **slots = malloc((size_t)s.n * sizeof *slots);
  run_seq(p, &s, slots);
  uint64_t a1 = info_of(p).st.os_allocs;
  for (int run = 0; run < 5; run++) run_seq(p, &s, slots);
  is_int(info_of(p).st.os_allocs - a1, 0, "repeat: over mmap'd chunks too");
  free(slots);
  free(s.ops);
  mmp__pool_destroy(p);
}

/* The old allocator (size classes of a power of two with 3 mantissa bits,
 * 512 bytes at least, one free list per class, a block of one class never
 * serving another): its footprint (in use + cached) over a sequence. */
typedef struct old_pool {
  int64_t nfree[64 * 8];
  size_t in_use, cached, peak;
} old_pool_t;

static int old_class(size_t n, size_t *rounded) {
  if (n < 512) n = 512;
  int lg = 63 - __builtin_clzll((unsigned long long)n);
  size_t step = (size_t)1 << (lg - 3);
  size_t r = (n + step - 1) & ~(step - 1);
  if (r == ((size_t)1 << (lg + 1))) lg++;
  *rounded = r;
  return lg * 8 + (int)((r >> (lg - 3)) & 7);
}

static void old_alloc(old_pool_t *o, size_t n) {
  size_t r;
  int c = old_class(n, &r);
  if (o->nfree[c] > 0) {
    o->nfree[c]--;
    o->cached -= r;
  }
  o->in_use += r;
  if (o->in_use + o->cached > o->peak) o->peak = o->in_use + o->cached;
}

static void old_free(old_pool_t *o, size_t n) {
  size_t r;
  int c = old_class(n, &r);
  o->nfree[c]++;
  o->in_use -= r;
  o->cached += r;
}

/* A pass shaped like an SD UNet forward at batch 2: resnet blocks (group
 * norm, SiLU, conv with its im2col columns, residual add), attention blocks
 * with their projections, skips kept from the down path to the up path,
 * down- and upsampling. Sizes are those of f32 tensors at 64x64 latents.
 * (test_trace replays the real one.) */
typedef struct net {
  mmp_pool_t *p;
  old_pool_t old;
  void *ptr[64];
  size_t sz[64];
  int n;
} net_t;

static int net_alloc(net_t *t, size_t bytes) {
  int i = 0;
  while (t->ptr[i]) i++;
  mmp__pool_alloc(t->p, bytes, &t->ptr[i]);
  t->sz[i] = bytes;
  old_alloc(&t->old, bytes);
  return i;
}

static void net_free(net_t *t, int i) {
  mmp__pool_free(t->p, t->ptr[i]);
  old_free(&t->old, t->sz[i]);
  t->ptr[i] = NULL;
}

static size_t act(int c, int hw) { return (size_t)2 * (size_t)c * (size_t)hw * (size_t)hw * 4; }

/* conv of x (cin, hw) to cout: a padded copy of the input, then the output */
static int net_conv(net_t *t, int x, int cin, int cout, int hw, bool free_x) {
  int pad = net_alloc(t, (size_t)2 * (size_t)cin * (size_t)(hw + 2) * (size_t)(hw + 2) * 4);
  int y = net_alloc(t, act(cout, hw));
  net_free(t, pad);
  if (free_x) net_free(t, x);
  return y;
}

static int net_resnet(net_t *t, int x, int cin, int cout, int hw) {
  int h = net_alloc(t, act(cin, hw)); /* group norm */
  int s = net_alloc(t, act(cin, hw)); /* silu */
  net_free(t, h);
  h = net_conv(t, s, cin, cout, hw, true);
  int e = net_alloc(t, (size_t)2 * (size_t)cout * 4); /* time embedding projection */
  int a = net_alloc(t, act(cout, hw));
  net_free(t, h);
  net_free(t, e);
  h = net_alloc(t, act(cout, hw));
  net_free(t, a);
  s = net_alloc(t, act(cout, hw));
  net_free(t, h);
  h = net_conv(t, s, cout, cout, hw, true);
  int sc = cin != cout ? net_alloc(t, act(cout, hw)) : -1; /* 1x1 shortcut */
  int y = net_alloc(t, act(cout, hw));
  net_free(t, h);
  if (sc >= 0) net_free(t, sc);
  return y;
}

static int net_attn(net_t *t, int x, int c, int hw) {
  size_t tok = act(c, hw);
  int n = net_alloc(t, tok), pin = net_alloc(t, tok);
  net_free(t, n);
  int ln = net_alloc(t, tok);
  int q = net_alloc(t, tok), k = net_alloc(t, tok), v = net_alloc(t, tok);
  int o = net_alloc(t, tok);
  net_free(t, q);
  net_free(t, k);
  net_free(t, v);
  net_free(t, ln);
  int ck = net_alloc(t, (size_t)2 * 77 * (size_t)c * 4), cv = net_alloc(t, (size_t)2 * 77 * (size_t)c * 4);
  int o2 = net_alloc(t, tok);
  net_free(t, ck);
  net_free(t, cv);
  int ff = net_alloc(t, tok * 8); /* geglu input */
  int g = net_alloc(t, tok * 4);
  net_free(t, ff);
  int f = net_alloc(t, tok);
  net_free(t, g);
  net_free(t, o);
  net_free(t, o2);
  int y = net_alloc(t, tok);
  net_free(t, f);
  net_free(t, pin);
  net_free(t, x);
  return y;
}

static void net_forward(net_t *t) {
  static const int ch[4] = {320, 640, 1280, 1280};
  int skips[16], ns = 0;
  int x = net_alloc(t, act(4, 64));
  int h = net_conv(t, x, 4, 320, 64, true);
  skips[ns++] = h;
  int hw = 64, c = 320;
  for (int l = 0; l < 4; l++) {
    for (int r = 0; r < 2; r++) {
      h = net_resnet(t, skips[ns - 1], c, ch[l], hw);
      c = ch[l];
      if (l < 3) h = net_attn(t, h, c, hw);
      skips[ns++] = h;
    }
    if (l < 3) {
      h = net_conv(t, h, c, c, hw / 2, false);
      hw /= 2;
      skips[ns++] = h;
    }
  }
  h = net_resnet(t, skips[ns - 1], c, c, hw);
  h = net_attn(t, h, c, hw);
  int m = net_resnet(t, h, c, c, hw);
  net_free(t, h);
  h = m;
  for (int l = 3; l >= 0; l--) {
    for (int r = 0; r < 3; r++) {
      int s = skips[--ns], cs = (int)(t->sz[s] / act(1, hw));
      int cat = net_alloc(t, t->sz[h] + t->sz[s]);
      net_free(t, h);
      net_free(t, s);
      int y = net_resnet(t, cat, c + cs, ch[l], hw);
      net_free(t, cat);
      c = ch[l];
      h = l < 3 ? net_attn(t, y, c, hw) : y;
    }
    if (l > 0) {
      int u = net_alloc(t, act(c, hw * 2));
      net_free(t, h);
      hw *= 2;
      h = net_conv(t, u, c, c, hw, true);
    }
  }
  int o = net_conv(t, h, 320, 4, 64, true);
  net_free(t, o);
}

static void test_footprint(void) {
  provider_t v;
  prov_init(&v, FAKE);
  net_t t;
  memset(&t, 0, sizeof t);
  t.p = pool_for(&v, 64 * MiB, 64, (size_t)8192 << 20);
  net_forward(&t);
  mmp_pool_info_t in = info_of(t.p);
  double f = (double)in.peak_held / (double)in.peak_in_use;
  double fold = (double)t.old.peak / (double)in.peak_in_use;
  diag("UNet-shaped pass: peak in use %.1f MiB, peak footprint %.1f MiB (x%.3f); "
       "the size-class pool: %.1f MiB (x%.3f)",
       in.peak_in_use / (double)MiB, in.peak_held / (double)MiB, f, t.old.peak / (double)MiB, fold);
  /* measured: x1.511 (272 MiB for 180 MiB) against x3.572 for the size-class pool */
  ok(f <= 1.55, "footprint: peak (in use + cached) within 1.55 x the peak in use");
  ok(fold > 1.5 * f, "  (the size-class pool needs over 1.5 x as much)");
  is_int(in.st.bytes_in_use, 0, "the pass freed what it allocated");
  uint64_t a1 = in.st.os_allocs;
  for (int i = 0; i < 3; i++) net_forward(&t);
  in = info_of(t.p);
  is_int(in.st.os_allocs - a1, 0, "a second, third and fourth pass obtain no chunk");
  ok((double)in.peak_held / (double)in.peak_in_use <= 1.55, "  and the footprint stays as it was");
  mmp__pool_destroy(t.p);
}

/* Replay a recorded workload (tests/data/pool/) @runs times into a pool
 * shaped like the CPU backend's (64 MiB chunks); the size-class pool is
 * simulated alongside. Returns false when the file cannot be read. */
typedef struct replay {
  double factor, old_factor;
  size_t peak_in_use, peak_held;
  uint64_t os_allocs[8];
  size_t in_use_after;
} replay_t;

static bool replay_file(const char *name, int runs, replay_t *out) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/data/pool/%s", tap_srcdir(), name);
  FILE *f = fopen(path, "r");
  if (!f) return false;
  size_t cap = 4096, n = 0;
  int64_t *ops = malloc(cap * sizeof *ops);
  char line[256];
  while (fgets(line, sizeof line, f)) {
    long long v;
    if (line[0] == '#' || sscanf(line + 1, "%lld", &v) != 1) continue;
    if (n == cap) ops = realloc(ops, (cap *= 2) * sizeof *ops);
    ops[n++] = line[0] == 'a' ? v : -v - 1;
  }
  fclose(f);
  provider_t v;
  prov_init(&v, FAKE);
  mmp_pool_t *p = pool_for(&v, 64 * MiB, 64, (size_t)8192 << 20);
  old_pool_t old;
  memset(&old, 0, sizeof old);
  size_t na = 0;
  for (size_t i = 0; i < n; i++) na += ops[i] >= 0;
  void **ptr = calloc(na ? na : 1, sizeof *ptr);
  size_t *sz = calloc(na ? na : 1, sizeof *sz);
  for (int r = 0; r < runs && r < 8; r++) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      if (ops[i] >= 0) {
        sz[k] = (size_t)ops[i];
        mmp__pool_alloc(p, sz[k], &ptr[k]);
        old_alloc(&old, sz[k]);
        k++;
      } else {
        mmp__pool_free(p, ptr[-ops[i] - 1]);
        old_free(&old, sz[-ops[i] - 1]);
      }
    }
    out->os_allocs[r] = info_of(p).st.os_allocs;
  }
  mmp_pool_info_t in = info_of(p);
  out->peak_in_use = in.peak_in_use;
  out->peak_held = in.peak_held;
  out->factor = (double)in.peak_held / (double)in.peak_in_use;
  out->old_factor = (double)old.peak / (double)in.peak_in_use;
  out->in_use_after = in.st.bytes_in_use;
  free(ptr);
  free(sz);
  free(ops);
  mmp__pool_destroy(p);
  return true;
}

static void test_trace(void) {
  static const struct {
    const char *file, *what;
    double bound; /* measured: see the diag line */
  } w[2] = {
      /* UNet: x1.295 (208 MiB for 160.6 MiB; the size-class pool held 573 MiB, x3.57): the two
       * 64 MiB chunks and the 80 MiB one that the peak needs (an 80 MiB feed-forward input
       * beside 80 MiB of others) */
      {"sd15_unet_forward.txt", "SD-1.5 UNet forward", 1.30},
      /* VAE: x1.667 (1280 MiB for 768 MiB; size classes: x1.94): its tensors of 128 and
       * 256 MiB each take a chunk of their own, and the 128 MiB chunks freed before the
       * 256 MiB phase cannot serve it */
      {"sd15_vae_decode.txt", "SD-1.5 VAE decode", 1.67},
  };
  for (int i = 0; i < 2; i++) {
    replay_t r;
    memset(&r, 0, sizeof r);
    if (!replay_file(w[i].file, 3, &r)) {
      ok(0, "read tests/data/pool/%s", w[i].file);
      continue;
    }
    diag("%s: peak in use %.1f MiB, peak footprint %.1f MiB (x%.3f); the size-class pool x%.3f", w[i].what,
         r.peak_in_use / (double)MiB, r.peak_held / (double)MiB, r.factor, r.old_factor);
    ok(r.factor <= w[i].bound, "%s: peak footprint within %.2f x the peak in use", w[i].what, w[i].bound);
    ok(r.old_factor > r.factor, "  less than the size-class pool's");
    ok(r.os_allocs[1] == r.os_allocs[0] && r.os_allocs[2] == r.os_allocs[0],
       "  the second and third passes obtain no chunk (%llu chunks)", (unsigned long long)r.os_allocs[0]);
    is_int(r.in_use_after, 0, "  everything was freed");
  }
}

static void test_bound(void) {
  setenv("MMPIPE_POOL_MAX_MB", "3", 1);
  size_t bound = mmp__pool_max_cached_env(8192);
  is_int(bound, 3 * MiB, "MMPIPE_POOL_MAX_MB=3 is 3 MiB");
  setenv("MMPIPE_POOL_MAX_MB", "-2", 1);
  is_int(mmp__pool_max_cached_env(8192), 0, "a negative bound counts as 0");
  unsetenv("MMPIPE_POOL_MAX_MB");
  is_int(mmp__pool_max_cached_env(8192), (long long)8192 << 20, "unset: the default");

  provider_t v;
  prov_init(&v, FAKE);
  mmp_pool_t *p = pool_for(&v, MiB, 64, bound);
  void *b[8];
  for (int i = 0; i < 8; i++) mmp__pool_alloc(p, MiB, &b[i]);
  is_int(v.allocs, 8, "eight whole-chunk blocks, eight chunks");
  bool within = true;
  for (int i = 0; i < 8; i++) {
    mmp__pool_free(p, b[i]);
    mmp_pool_stats_t st;
    mmp__pool_stats(p, &st);
    if (st.bytes_cached > bound) within = false;
  }
  ok(within, "bytes_cached never exceeds MMPIPE_POOL_MAX_MB while chunks are freed");
  mmp_pool_info_t in = info_of(p);
  ok(in.idle_chunks == 3 && v.frees == 5 && in.st.os_frees == 5, "3 chunks kept, 5 released (%zu, %llu)",
     in.idle_chunks, (unsigned long long)v.frees);
  /* free space in a partly used chunk counts too, and pushes entirely free ones out */
  void *small, *big;
  mmp__pool_alloc(p, 64, &small);     /* the oldest kept chunk, now partly used */
  mmp__pool_alloc(p, 2 * MiB, &big);  /* a chunk of its own */
  mmp__pool_free(p, big);             /* cached: 2 whole + 1 partly used + this one > 3 MiB */
  in = info_of(p);
  ok(in.st.bytes_cached <= bound && v.frees == 6 && in.idle_chunks == 2,
     "free bytes of a partly used chunk count: the newest entirely free chunk went back");
  mmp__pool_free(p, small);
  in = info_of(p);
  ok(in.st.bytes_cached <= bound && in.idle_chunks == 3, "  3 whole chunks kept again");
  mmp__pool_destroy(p);

  prov_init(&v, FAKE);
  p = pool_for(&v, MiB, 64, 0);
  void *x, *y;
  mmp__pool_alloc(p, 100, &x);
  mmp__pool_alloc(p, 2 * MiB, &y);
  mmp__pool_free(p, y);
  ok(v.frees == 1 && info_of(p).chunks == 1, "bound 0: an entirely free chunk goes back at once");
  mmp__pool_free(p, x);
  ok(v.frees == 2 && v.held == 0, "  and so does the last one");
  mmp__pool_destroy(p);
}

static void test_trim(void) {
  provider_t v;
  prov_init(&v, FAKE);
  mmp_pool_t *p = pool_for(&v, MiB, 64, (size_t)1 << 40);
  void *keep, *b[6];
  mmp__pool_alloc(p, 1000, &keep);
  for (int i = 0; i < 6; i++) mmp__pool_alloc(p, (size_t)(i + 1) * 300 * KiB, &b[i]);
  for (int i = 0; i < 6; i++) mmp__pool_free(p, b[i]);
  mmp_pool_info_t in = info_of(p);
  diag("before trim: %zu chunks, %zu entirely free", in.chunks, in.idle_chunks);
  uint64_t frees = in.st.os_frees;
  mmp__pool_trim(p);
  mmp_pool_info_t af = info_of(p);
  ok(af.idle_chunks == 0 && af.chunks == 1, "trim releases every entirely free chunk, keeps the one in use");
  is_int(af.st.os_frees - frees, (long long)in.idle_chunks, "  os_frees counts them");
  is_int(af.st.bytes_cached, MiB - 1024, "  what stays cached is the used chunk's free part");
  mmp__pool_free(p, keep);
  mmp__pool_trim(p);
  af = info_of(p);
  ok(af.st.bytes_cached == 0 && af.chunks == 0 && v.held == 0, "with nothing live, trim empties the pool");
  ok(af.st.os_frees == af.st.os_allocs, "  every chunk obtained went back (%llu)", (unsigned long long)af.st.os_frees);
  mmp__pool_destroy(p);
}

static void test_oom(void) {
  provider_t v;
  prov_init(&v, FAKE);
  v.capacity = 4 * MiB;
  mmp_pool_t *p = pool_for(&v, MiB, 64, (size_t)1 << 40);
  void *a, *b, *c, *d, *big = NULL;
  mmp__pool_alloc(p, MiB, &a);
  mmp__pool_alloc(p, MiB, &b);
  mmp__pool_alloc(p, 1000, &c);
  mmp__pool_alloc(p, 1000, &d);
  mmp__pool_free(p, a);
  mmp__pool_free(p, b); /* two entirely free chunks, one partly used; 3 MiB held */
  is_int(mmp__pool_alloc(p, 2 * MiB, &big), 0, "a request the provider refuses at first is served after the "
                                                "entirely free chunks are released");
  is_int(v.frees, 2, "  those two chunks went back");
  void *none = (void *)&none;
  is_int(mmp__pool_alloc(p, 2 * MiB, &none), MMP_ENOMEM, "beyond the provider: its MMP_ENOMEM comes back");
  ok(none == (void *)&none, "  and *out is unchanged");
  mmp__pool_free(p, big);
  mmp__pool_free(p, c);
  mmp__pool_free(p, d);
  mmp__pool_destroy(p);

  /* a pointer the pool never handed out is a programming error */
  prov_init(&v, FAKE);
  p = pool_for(&v, MiB, 64, 0);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    mmp__pool_free(p, (void *)0x1000);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "freeing a foreign pointer aborts");
  mmp__pool_destroy(p);
}

/* 4 threads on one pool, each checking its blocks' patterns. */
typedef struct worker {
  mmp_pool_t *p;
  int seed, bad, fails;
} worker_t;

static void *work(void *arg) {
  worker_t *w = arg;
  uint64_t s = 0x1234567ull * (uint64_t)(w->seed + 7);
  live_t l[128];
  int n = 0;
  for (int op = 0; op < 6000; op++) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    uint64_t r = s * 0x2545F4914F6CDD1Dull;
    if (n == 0 || (n < 128 && r % 2)) {
      size_t sz = (r >> 8) % 8 == 0 ? (r >> 16) % (300 * KiB) : (r >> 16) % (2 * KiB);
      void *ptr;
      if (mmp__pool_alloc(w->p, sz, &ptr) < 0) {
        w->fails++;
        continue;
      }
      l[n] = (live_t){ptr, sz, (unsigned char)(w->seed * 50 + op % 50 + 1)};
      memset(ptr, l[n].pat, sz);
      n++;
    } else {
      int i = (int)((r >> 20) % (uint64_t)n);
      if (!all_byte(l[i].p, l[i].n, l[i].pat)) w->bad++;
      mmp__pool_free(w->p, l[i].p);
      l[i] = l[--n];
    }
  }
  while (n > 0) {
    if (!all_byte(l[n - 1].p, l[n - 1].n, l[n - 1].pat)) w->bad++;
    mmp__pool_free(w->p, l[--n].p);
  }
  return NULL;
}

static void test_threads(void) {
  provider_t v;
  prov_init(&v, HOST);
  mmp_pool_t *p = pool_for(&v, MiB, 64, 16 * MiB);
  pthread_t th[4];
  worker_t w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker_t){p, i, 0, 0};
    pthread_create(&th[i], NULL, work, &w[i]);
  }
  int bad = 0, fails = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    bad += w[i].bad;
    fails += w[i].fails;
  }
  is_int(fails, 0, "threads: every allocation of 4 threads served");
  is_int(bad, 0, "threads: no block was corrupted by another thread's");
  mmp_pool_info_t in = info_of(p);
  ok(in.st.bytes_in_use == 0 && in.live_blocks == 0 && in.idle_chunks == in.chunks,
     "threads: afterwards nothing is live and every chunk is whole");
  mmp__pool_destroy(p);
}

int main(void) {
  test_basics();
  test_random(HOST);
  test_random(DEVICE);
  test_best_fit();
  test_repeat();
  test_footprint();
  test_trace();
  test_bound();
  test_trim();
  test_oom();
  test_threads();
  return done_testing();
}
