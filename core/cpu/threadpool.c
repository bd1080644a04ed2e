/* core/cpu/threadpool.c - the persistent worker pool behind mmp_cpu_parallel_for. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/cpu/kernels.h"

#ifdef HAVE_OPENBLAS
#include <cblas.h>
#endif

/* One job at a time: the caller publishes (fn, user, n), bumps the
 * generation, and every participant (workers and the caller itself) takes
 * indices from an atomic counter until none are left. Workers sleep on a
 * condition variable between jobs, so an idle pool costs nothing on a
 * machine shared with other processes. */
typedef struct pool {
  pthread_mutex_t mu;
  pthread_cond_t wake;   /* workers wait here for a new generation */
  pthread_cond_t done;   /* the caller waits here for the stragglers */
  pthread_t *th;
  int nworkers;          /* threads besides the caller */
  int stop;
  unsigned long gen;
  int active;            /* workers still inside the current job */
  void (*fn)(int64_t, void *);
  void *user;
  int64_t n;
  atomic_int_fast64_t next;
} pool_t;

static pthread_mutex_t g_cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pool_t *g_pool;
static int g_threads; /* 0 = not yet decided */
static _Thread_local int t_in_task;

static int default_threads(void) {
  const char *e = getenv("MMPIPE_THREADS");
  if (e && *e) {
    char *end;
    long v = strtol(e, &end, 10);
    if (*end == '\0' && v > 0 && v <= 1024) return (int)v;
  }
  long c = sysconf(_SC_NPROCESSORS_ONLN);
  return c > 0 ? (int)c : 1;
}

static void run_items(pool_t *p) {
  for (;;) {
    int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (i >= p->n) break;
    p->fn(i, p->user);
  }
}

static void *worker_main(void *arg) {
  pool_t *p = g_pool;
  (void)arg;
  t_in_task = 1; /* anything a worker runs is inside a task */
  unsigned long seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->gen == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->stop) break;
    seen = p->gen;
    pthread_mutex_unlock(&p->mu);
    run_items(p);
    pthread_mutex_lock(&p->mu);
    if (--p->active == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void pool_destroy(pool_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nworkers; ++i) pthread_join(p->th[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  free(p->th);
  free(p);
}

static void pool_atexit(void) {
  pthread_mutex_lock(&g_run_mu);
  pool_destroy(g_pool);
  g_pool = NULL;
  pthread_mutex_unlock(&g_run_mu);
}

/* Called with g_run_mu held. */
static pool_t *pool_get(void) {
  static int atexit_done;
  int want;
  pthread_mutex_lock(&g_cfg_mu);
  if (g_threads <= 0) g_threads = default_threads();
  want = g_threads - 1;
  pthread_mutex_unlock(&g_cfg_mu);
  if (g_pool && g_pool->nworkers == want) return g_pool;
  pool_destroy(g_pool);
  g_pool = NULL;
  if (want <= 0) return NULL;
  pool_t *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->th = calloc((size_t)want, sizeof *p->th);
  if (!p->th) {
    free(p);
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  g_pool = p;
  for (int i = 0; i < want; ++i) {
    if (pthread_create(&p->th[i], NULL, worker_main, (void *)(intptr_t)(i + 1)) != 0) break;
    p->nworkers = i + 1;
  }
  if (!atexit_done) {
    atexit(pool_atexit);
    atexit_done = 1;
  }
  return p;
}

void mmp_cpu_set_threads(int n) {
  pthread_mutex_lock(&g_cfg_mu);
  g_threads = n > 0 ? n : default_threads();
  n = g_threads;
  pthread_mutex_unlock(&g_cfg_mu);
#ifdef HAVE_OPENBLAS
  openblas_set_num_threads(n);
#endif
}

int mmp_cpu_threads(void) {
  pthread_mutex_lock(&g_cfg_mu);
  if (g_threads <= 0) {
    g_threads = default_threads();
#ifdef HAVE_OPENBLAS
    openblas_set_num_threads(g_threads);
#endif
  }
  int n = g_threads;
  pthread_mutex_unlock(&g_cfg_mu);
  return n;
}

void mmp_cpu_parallel_for(int64_t n, void (*fn)(int64_t i, void *user), void *user) {
  if (n <= 0) return;
  /* Serial when nested, when there is one item, or when another thread is
   * already running a job on the pool (never wait on it: that could
   * deadlock and would oversubscribe anyway). */
  if (t_in_task || n == 1 || mmp_cpu_threads() <= 1 || pthread_mutex_trylock(&g_run_mu) != 0) {
    int was = t_in_task;
    t_in_task = 1;
    for (int64_t i = 0; i < n; ++i) fn(i, user);
    t_in_task = was;
    return;
  }
  pool_t *p = pool_get();
  if (!p) {
    t_in_task = 1;
    for (int64_t i = 0; i < n; ++i) fn(i, user);
    t_in_task = 0;
    pthread_mutex_unlock(&g_run_mu);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->user = user;
  p->n = n;
  atomic_store(&p->next, 0);
  p->active = p->nworkers;
  ++p->gen;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);

  t_in_task = 1;
  run_items(p);
  t_in_task = 0;

  pthread_mutex_lock(&p->mu);
  while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
  pthread_mutex_unlock(&g_run_mu);
}
