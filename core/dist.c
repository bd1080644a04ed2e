/* core/dist.c - data parallelism over MPI: bucketed gradient averaging overlapped with the tape's backward. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"

#include "core/tensor_impl.h"
#pragma GCC visibility push(default)
#include <mmpipe/dist.h>
#pragma GCC visibility pop

#ifdef HAVE_MPI
#include <mpi.h>
#endif

#define DEFAULT_BUCKET_BYTES ((size_t)4 << 20)

#ifdef HAVE_MPI
/* One gradient's place in a bucket (the tensor is the map's entry). */
typedef struct entry {
  mmp_tensor_t *grad; /* reference */
  size_t off, n;
  char *name; /* (with a delivery callback) */
} entry_t;

typedef struct bucket {
  float *send, *recv; /* [n], [n * size] (ordered) or [n] (allreduce) */
  size_t n, cap;
  entry_t *e;
  size_t ne, cape;
  MPI_Request req;
  bool started, done, delivered;
} bucket_t;
#endif

struct mmp_dist {
  int rank, size;
  size_t bucket_bytes;
  mmp_dist_reduce_t mode;
#ifdef HAVE_MPI
  bool inited_mpi; /* we called MPI_Init: we finalize */
  MPI_Comm comm;
  bucket_t *b; /* [nb]; the last one is open while collecting */
  size_t nb, capb;
  bool collecting;
  int err; /* first error of the hook, reported by end */
  mmp_tape_t *tape;
  mmp_dist_averaged_cb cb; /* (nullable) grads_begin_cb's */
  void *cb_user;
  size_t next; /* the first bucket not yet delivered to cb */
#endif
  mmp_dist_stats_t st;
};

bool mmp_dist_built(void) {
#ifdef HAVE_MPI
  return true;
#else
  return false;
#endif
}

int mmp_dist_rank(const mmp_dist_t *d) { return d ? d->rank : 0; }
int mmp_dist_size(const mmp_dist_t *d) { return d ? d->size : 1; }
bool mmp_dist_is_root(const mmp_dist_t *d) { return mmp_dist_rank(d) == 0; }

void mmp_dist_set_bucket_bytes(mmp_dist_t *d, size_t bytes) {
  if (d) d->bucket_bytes = bytes ? bytes : DEFAULT_BUCKET_BYTES;
}

void mmp_dist_set_reduce(mmp_dist_t *d, mmp_dist_reduce_t mode) {
  if (d) d->mode = mode;
}

void mmp_dist_stats(const mmp_dist_t *d, mmp_dist_stats_t *out) {
  if (!out) return;
  if (d) *out = d->st;
  else memset(out, 0, sizeof *out);
}


void mmp_dist_log(const mmp_dist_t *d, mmp_log_level_t level, const char *component, const char *fmt, ...) {
  if (!mmp_dist_is_root(d) || level > mmp_log_get_level()) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  mmp_log(level, component, "%s", buf);
}

#ifdef HAVE_MPI
/* MMP_ERUNTIME naming the call and MPI's own message. */
static int mpi_fail(int code, const char *call) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", code);
  return mmp_error_set(MMP_ERUNTIME, "dist: %s failed: %s", call, msg);
}
#define MPI_TRY(call)                                                                                                \
  do {                                                                                                               \
    int mpi_rc_ = (call);                                                                                            \
    if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(mpi_rc_, #call);                                                     \
  } while (0)

/* Started by a launcher that MPI_Init can join (Open MPI, MPICH/Hydra, PMIx). */
static bool launched(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}
#endif

mmp_dist_t *mmp_dist_init(void) {
  mmp_dist_t *d = calloc(1, sizeof *d);
  if (!d) {
    mmp_error_set(MMP_ENOMEM, "dist: out of memory");
    return NULL;
  }
  d->rank = 0;
  d->size = 1;
  d->bucket_bytes = DEFAULT_BUCKET_BYTES;
#ifdef HAVE_MPI
  d->comm = MPI_COMM_NULL;
  int inited = 0, rc;
  MPI_Initialized(&inited);
  if (!inited && !launched()) return d;
  if (!inited) {
    int provided = 0;
    if ((rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS) goto fail_init;
    d->inited_mpi = true;
  }
  if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &d->comm)) != MPI_SUCCESS) goto fail;
  MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(d->comm, &d->rank);
  MPI_Comm_size(d->comm, &d->size);
  return d;
fail:
  mpi_fail(rc, "MPI_Comm_dup");
  mmp_dist_finalize(d);
  return NULL;
fail_init:
  mpi_fail(rc, "MPI_Init_thread");
  free(d);
  return NULL;
#else
  return d;
#endif
}

#ifdef HAVE_MPI
static void buckets_clear(mmp_dist_t *d) {
  for (size_t i = 0; i < d->nb; i++) {
    bucket_t *b = &d->b[i];
    if (b->started && !b->done) MPI_Wait(&b->req, MPI_STATUS_IGNORE); /* buffers must outlive the request */
    for (size_t k = 0; k < b->ne; k++) {
      mmp_tensor_unref(b->e[k].grad);
      free(b->e[k].name);
    }
    free(b->e);
    free(b->send);
    free(b->recv);
  }
  d->nb = 0;
  d->next = 0;
}
#endif

void mmp_dist_finalize(mmp_dist_t *d) {
  if (!d) return;
#ifdef HAVE_MPI
  if (d->tape) mmp_tape_on_grad_ready(d->tape, NULL, NULL);
  buckets_clear(d);
  free(d->b);
  if (d->comm != MPI_COMM_NULL) MPI_Comm_free(&d->comm);
  if (d->inited_mpi) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
#endif
  free(d);
}

void mmp_dist_abort(mmp_dist_t *d, int code) {
#ifdef HAVE_MPI
  if (d && d->size > 1) MPI_Abort(d->comm, code);
#else
  (void)d;
  (void)code;
#endif
}

int mmp_dist_barrier(mmp_dist_t *d) {
#ifdef HAVE_MPI
  if (d && d->size > 1) MPI_TRY(MPI_Barrier(d->comm));
#else
  (void)d;
#endif
  return 0;
}

int mmp_dist_broadcast(mmp_dist_t *d, mmp_tensor_t *x) {
  if (!x) return mmp_error_set(MMP_EINVAL, "dist_broadcast: NULL tensor");
  if (!mmp_tensor_is_contiguous(x))
    return mmp_error_set(MMP_EINVAL, "dist_broadcast: %s is not contiguous", mmp__desc(x));
#ifdef HAVE_MPI
  if (!d || d->size == 1) return 0;
  size_t nb = mmp_tensor_nbytes(x);
  void *buf = malloc(nb ? nb : 1);
  if (!buf) return mmp_error_set(MMP_ENOMEM, "dist_broadcast: out of memory");
  int rc = d->rank == 0 ? mmp_tensor_to_host(x, buf, nb) : 0;
  /* in chunks of at most 1 GiB: MPI counts are int */
  for (size_t off = 0; rc == 0 && off < nb; off += (size_t)1 << 30) {
    size_t len = nb - off < ((size_t)1 << 30) ? nb - off : (size_t)1 << 30;
    int mrc = MPI_Bcast((char *)buf + off, (int)len, MPI_BYTE, 0, d->comm);
    if (mrc != MPI_SUCCESS) rc = mpi_fail(mrc, "MPI_Bcast");
  }
  mmp_backend_t *be = x->storage->be;
  if (rc == 0 && d->rank != 0 && nb && be->ops->copy_from_host(be, mmp__ptr(x), buf, nb) < 0) rc = MMP_EDEVICE;
  free(buf);
  return rc;
#else
  (void)d;
  return 0;
#endif
}

int mmp_dist_broadcast_param_cb(void *dist, const char *name, mmp_tensor_t *param) {
  int rc = mmp_dist_broadcast(dist, param);
  if (rc < 0) mmp_error_prefix("%s: ", name);
  return rc;
}

int mmp_dist_average(mmp_dist_t *d, double *v, int n) {
  if (n < 0 || (n && !v)) return mmp_error_set(MMP_EINVAL, "dist_average: bad arguments");
#ifdef HAVE_MPI
  if (!d || d->size == 1 || n == 0) return 0;
  double *all = malloc((size_t)n * (size_t)d->size * sizeof *all);
  if (!all) return mmp_error_set(MMP_ENOMEM, "dist_average: out of memory");
  int mrc = MPI_Allgather(v, n, MPI_DOUBLE, all, n, MPI_DOUBLE, d->comm);
  if (mrc == MPI_SUCCESS)
    for (int i = 0; i < n; i++) {
      double s = 0;
      for (int r = 0; r < d->size; r++) s += all[(size_t)r * (size_t)n + (size_t)i];
      v[i] = s / d->size;
    }
  free(all);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(mrc, "MPI_Allgather");
#else
  (void)d;
  return 0;
#endif
}

#ifdef HAVE_MPI
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The open bucket (a new one when none is open). */
static bucket_t *open_bucket(mmp_dist_t *d) {
  if (d->nb && !d->b[d->nb - 1].started) return &d->b[d->nb - 1];
  if (d->nb == d->capb) {
    size_t cap = d->capb ? 2 * d->capb : 16;
    bucket_t *nb = realloc(d->b, cap * sizeof *nb);
    if (!nb) return NULL;
    d->b = nb;
    d->capb = cap;
  }
  bucket_t *b = &d->b[d->nb++];
  memset(b, 0, sizeof *b);
  return b;
}

/* Start the collective of the open bucket. */
static int start_bucket(mmp_dist_t *d, bucket_t *b) {
  if (b->n > (size_t)INT32_MAX)
    return mmp_error_set(MMP_EINVAL, "dist: a bucket of %zu floats is over MPI's int count", b->n);
  size_t rn = d->mode == MMP_DIST_ORDERED ? b->n * (size_t)d->size : b->n;
  b->recv = malloc((rn ? rn : 1) * sizeof *b->recv);
  if (!b->recv) return mmp_error_set(MMP_ENOMEM, "dist: out of memory");
  int n = (int)b->n;
  if (d->mode == MMP_DIST_ORDERED)
    MPI_TRY(MPI_Iallgather(b->send, n, MPI_FLOAT, b->recv, n, MPI_FLOAT, d->comm, &b->req));
  else
    MPI_TRY(MPI_Iallreduce(b->send, b->recv, n, MPI_FLOAT, MPI_SUM, d->comm, &b->req));
  b->started = true;
  d->st.buckets++;
  d->st.floats += b->n;
  if (d->collecting) d->st.early++;
  return 0;
}

/* The averages of finished bucket @b into its gradient tensors; with a
 * callback, each handed over and released (the bucket keeps its floats). */
static int deliver(mmp_dist_t *d, bucket_t *b) {
  int rc = 0;
  /* the average into send (no longer read by MPI) */
  if (d->mode == MMP_DIST_ORDERED) {
    for (size_t k = 0; k < b->n; k++) {
      double s = 0;
      for (int r = 0; r < d->size; r++) s += b->recv[(size_t)r * b->n + k];
      b->send[k] = (float)(s / d->size);
    }
  } else {
    float inv = 1.0f / (float)d->size;
    for (size_t k = 0; k < b->n; k++) b->send[k] = b->recv[k] * inv;
  }
  for (size_t k = 0; k < b->ne && rc == 0; k++) {
    mmp_tensor_t *g = b->e[k].grad;
    mmp_backend_t *be = g->storage->be;
    if (b->e[k].n && be->ops->copy_from_host(be, mmp__ptr(g), b->send + b->e[k].off, b->e[k].n * sizeof(float)) < 0)
      rc = mmp_error_set(MMP_EDEVICE, "dist: writing the averaged gradient %s back failed", mmp__desc(g));
    if (rc == 0 && d->cb) {
      rc = d->cb(d->cb_user, b->e[k].name, g);
      mmp_tensor_unref(g);
      b->e[k].grad = NULL;
    }
  }
  b->delivered = true;
  return rc;
}

/* Let started collectives progress (Open MPI advances non-blocking
 * collectives only inside MPI calls); with a callback, deliver the
 * finished buckets at the front. */
static int progress(mmp_dist_t *d) {
  for (size_t i = 0; i < d->nb; i++) {
    bucket_t *b = &d->b[i];
    if (!b->started || b->done) continue;
    int flag = 0;
    MPI_TRY(MPI_Test(&b->req, &flag, MPI_STATUS_IGNORE));
    if (flag) b->done = true;
  }
  while (d->cb && d->next < d->nb && d->b[d->next].done) {
    int rc = deliver(d, &d->b[d->next++]);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Pack @g into the open bucket; start it once full. */
static int add_grad(mmp_dist_t *d, const char *name, mmp_tensor_t *g) {
  if (!g || g->dtype != MMP_F32)
    return mmp_error_set(MMP_EINVAL, "dist: gradient %s is %s; only f32 gradients are averaged", name,
                         g ? mmp__desc(g) : "missing");
  if (!mmp_tensor_is_contiguous(g))
    return mmp_error_set(MMP_EINVAL, "dist: gradient %s %s is not contiguous", name, mmp__desc(g));
  bucket_t *b = open_bucket(d);
  if (!b) return mmp_error_set(MMP_ENOMEM, "dist: out of memory");
  size_t n = (size_t)mmp_tensor_numel(g);
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : d->bucket_bytes / sizeof(float) + 1;
    while (cap < b->n + n) cap *= 2;
    float *s = realloc(b->send, cap * sizeof *s);
    if (!s) return mmp_error_set(MMP_ENOMEM, "dist: out of memory");
    b->send = s;
    b->cap = cap;
  }
  if (b->ne == b->cape) {
    size_t cap = b->cape ? 2 * b->cape : 32;
    entry_t *e = realloc(b->e, cap * sizeof *e);
    if (!e) return mmp_error_set(MMP_ENOMEM, "dist: out of memory");
    b->e = e;
    b->cape = cap;
  }
  int rc = mmp_tensor_to_host(g, b->send + b->n, n * sizeof(float));
  if (rc < 0) return rc;
  char *nm = NULL;
  if (d->cb && !(nm = strdup(name))) return mmp_error_set(MMP_ENOMEM, "dist: out of memory");
  b->e[b->ne++] = (entry_t){mmp_tensor_ref(g), b->n, n, nm};
  b->n += n;
  if (b->n * sizeof(float) >= d->bucket_bytes && (rc = start_bucket(d, b)) < 0) return rc;
  return progress(d);
}

static int on_ready(void *user, const char *name, mmp_tensor_t *grad) {
  mmp_dist_t *d = user;
  int rc = add_grad(d, name, grad);
  if (rc < 0 && !d->err) d->err = rc;
  return rc;
}

/* Start the last bucket, wait for all, write the averages back. */
static int finish(mmp_dist_t *d) {
  double t0 = now_s();
  int rc = 0;
  if (d->nb && !d->b[d->nb - 1].started) rc = start_bucket(d, &d->b[d->nb - 1]);
  for (size_t i = 0; i < d->nb && rc == 0; i++) {
    bucket_t *b = &d->b[i];
    if (!b->done) {
      int mrc = MPI_Wait(&b->req, MPI_STATUS_IGNORE);
      b->done = true;
      if (mrc != MPI_SUCCESS) {
        rc = mpi_fail(mrc, d->mode == MMP_DIST_ORDERED ? "MPI_Iallgather" : "MPI_Iallreduce");
        break;
      }
    }
    if (!b->delivered) rc = deliver(d, b);
  }
  buckets_clear(d);
  d->st.wait_s = now_s() - t0;
  return rc;
}
#endif

int mmp_dist_grads_begin(mmp_dist_t *d, mmp_tape_t *t) {
  if (!t) return mmp_error_set(MMP_EINVAL, "dist_grads_begin: NULL tape");
#ifdef HAVE_MPI
  if (!d || d->size == 1) return 0;
  if (d->collecting) return mmp_error_set(MMP_EINVAL, "dist_grads_begin: already begun (end the previous one)");
  d->collecting = true;
  d->err = 0;
  memset(&d->st, 0, sizeof d->st);
  d->tape = t;
  mmp_tape_on_grad_ready(t, on_ready, d);
#else
  (void)d;
#endif
  return 0;
}

int mmp_dist_grads_begin_cb(mmp_dist_t *d, mmp_tape_t *t, mmp_dist_averaged_cb cb, void *user) {
  if (!t || !cb) return mmp_error_set(MMP_EINVAL, "dist_grads_begin_cb: NULL tape or callback");
#ifdef HAVE_MPI
  if (d && d->size > 1) {
    int rc = mmp_dist_grads_begin(d, t);
    if (rc == 0) d->cb = cb, d->cb_user = user, d->next = 0;
    return rc;
  }
#endif
  (void)d;
  mmp_tape_on_grad_ready(t, cb, user);
  return 0;
}

int mmp_dist_grads_end(mmp_dist_t *d, mmp_tensormap_t *grads) {
  (void)grads; /* the buckets hold the map's tensors themselves */
#ifdef HAVE_MPI
  if (!d || d->size == 1) return 0;
  if (!d->collecting) return mmp_error_set(MMP_EINVAL, "dist_grads_end: without dist_grads_begin");
  d->collecting = false;
  mmp_tape_on_grad_ready(d->tape, NULL, NULL);
  d->tape = NULL;
  int rc = d->err ? d->err : finish(d);
  if (d->err) buckets_clear(d);
  d->cb = NULL;
  d->cb_user = NULL;
  return rc;
#else
  (void)d;
  return 0;
#endif
}

int mmp_dist_allreduce_grads(mmp_dist_t *d, mmp_tensormap_t *grads) {
  if (!grads) return mmp_error_set(MMP_EINVAL, "dist_allreduce_grads: NULL map");
#ifdef HAVE_MPI
  if (!d || d->size == 1) return 0;
  if (d->collecting) return mmp_error_set(MMP_EINVAL, "dist_allreduce_grads: a tape's collection is under way");
  memset(&d->st, 0, sizeof d->st);
  for (size_t i = 0; i < mmp_tensormap_size(grads); i++) {
    int rc = add_grad(d, mmp_tensormap_name(grads, i), mmp_tensormap_at(grads, i));
    if (rc < 0) {
      buckets_clear(d);
      return rc;
    }
  }
  return finish(d);
#else
  (void)d;
  return 0;
#endif
}
