/* core/loader.c - dataset loader: worker threads reading ahead in a seeded, sharded order; batches by stacking. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/loader.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>

typedef struct slot {
  int64_t pos;   /* sampler position this slot holds, -1 when free */
  bool ready;
  int rc;        /* get() status */
  char *msg;     /* its message (messages are per thread) */
  mmp_tensormap_t *item;
} slot_t;

struct mmp_loader {
  const mmp_component_t *ds;
  const mmp_dataset_ops_t *ops;
  mmp_loader_options_t o;
  int64_t *order; /* dataset indices of this shard, in sampler order */
  int64_t n;
  /* shared state, under lock */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  slot_t *slots;
  int nslots;
  int64_t next_claim; /* next position a worker takes */
  int64_t next_out;   /* next position the consumer returns */
  bool stop;
  bool failed;        /* an error was returned: the epoch is over */
  int64_t generation; /* bumped by set_epoch so stale work is dropped */
  pthread_t *threads;
  int nthreads;
};

mmp_loader_options_t mmp_loader_defaults(void) {
  mmp_loader_options_t o;
  memset(&o, 0, sizeof o);
  o.batch_size = 1;
  o.world_size = 1;
  return o;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Fill l->order for @epoch: permutation (seeded by seed and epoch) of all
 * items, then every world_size-th from rank. */
static int make_order(mmp_loader_t *l, int64_t epoch) {
  int64_t total = l->ops->size(l->ds->self);
  if (total < 0) return mmp_error_set(MMP_ERUNTIME, "loader: dataset size %lld", (long long)total);
  int64_t *all = malloc((size_t)(total ? total : 1) * sizeof *all);
  if (!all) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; i < total; i++) all[i] = i;
  if (l->o.shuffle) {
    uint64_t s = l->o.seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(epoch + 1));
    for (int64_t i = total - 1; i > 0; i--) {
      int64_t j = (int64_t)(splitmix(&s) % (uint64_t)(i + 1));
      int64_t t = all[i];
      all[i] = all[j];
      all[j] = t;
    }
  }
  int64_t n = 0;
  for (int64_t i = l->o.rank; i < total; i += l->o.world_size) all[n++] = all[i];
  free(l->order);
  l->order = all;
  l->n = n;
  return 0;
}

/* Produce dataset item @index (any thread, without the lock). */
static void load_one(mmp_loader_t *l, int64_t index, slot_t *out_slot_fields) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  int rc = m ? l->ops->get(l->ds->self, index, m) : mmp_error_code();
  if (rc == 0) {
    int64_t shape[1] = {1};
    mmp_tensor_t *ix = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, shape, &index);
    rc = ix ? mmp_tensormap_set(m, "index", ix) : mmp_error_code();
  }
  out_slot_fields->rc = rc;
  out_slot_fields->item = NULL;
  out_slot_fields->msg = NULL;
  if (rc == 0) {
    out_slot_fields->item = m;
  } else {
    char buf[64];
    snprintf(buf, sizeof buf, "item %lld: ", (long long)index);
    size_t len = strlen(buf) + strlen(mmp_error_last()) + 1;
    out_slot_fields->msg = malloc(len);
    if (out_slot_fields->msg) snprintf(out_slot_fields->msg, len, "%s%s", buf, mmp_error_last());
    mmp_tensormap_free(m);
  }
}

static void *worker(void *arg) {
  mmp_loader_t *l = arg;
  pthread_mutex_lock(&l->lock);
  for (;;) {
    while (!l->stop && !(l->next_claim < l->n && l->next_claim < l->next_out + l->nslots))
      pthread_cond_wait(&l->cond, &l->lock);
    if (l->stop) break;
    int64_t pos = l->next_claim++;
    int64_t gen = l->generation;
    int64_t index = l->order[pos]; /* order may be replaced once we unlock */
    slot_t *s = &l->slots[pos % l->nslots];
    s->pos = pos;
    s->ready = false;
    pthread_mutex_unlock(&l->lock);
    slot_t r;
    load_one(l, index, &r);
    pthread_mutex_lock(&l->lock);
    if (gen == l->generation && s->pos == pos) {
      s->rc = r.rc;
      s->msg = r.msg;
      s->item = r.item;
      s->ready = true;
      pthread_cond_broadcast(&l->cond);
    } else { /* the epoch was restarted meanwhile */
      mmp_tensormap_free(r.item);
      free(r.msg);
    }
  }
  pthread_mutex_unlock(&l->lock);
  return NULL;
}

static void clear_slots(mmp_loader_t *l) {
  for (int i = 0; i < l->nslots; i++) {
    mmp_tensormap_free(l->slots[i].item);
    free(l->slots[i].msg);
    memset(&l->slots[i], 0, sizeof l->slots[i]);
    l->slots[i].pos = -1;
  }
}

void mmp_loader_free(mmp_loader_t *l) {
  if (!l) return;
  pthread_mutex_lock(&l->lock);
  l->stop = true;
  pthread_cond_broadcast(&l->cond);
  pthread_mutex_unlock(&l->lock);
  for (int i = 0; i < l->nthreads; i++) pthread_join(l->threads[i], NULL);
  if (l->slots) clear_slots(l);
  free(l->slots);
  free(l->threads);
  free(l->order);
  pthread_mutex_destroy(&l->lock);
  pthread_cond_destroy(&l->cond);
  free(l);
}

mmp_loader_t *mmp_loader_new(const mmp_component_t *ds, const mmp_loader_options_t *opt) {
  mmp_loader_options_t o = opt ? *opt : mmp_loader_defaults();
  if (!ds || !ds->plugin || ds->plugin->kind != MMP_KIND_DATASET) {
    mmp_error_set(MMP_EINVAL, "loader: not a dataset component");
    return NULL;
  }
  if (o.workers < 0 || o.workers > 256 || o.prefetch < 0 || o.batch_size < 1 || o.world_size < 1 ||
      o.rank < 0 || o.rank >= o.world_size) {
    mmp_error_set(MMP_EINVAL,
                  "loader: bad options (workers %d, prefetch %d, batch_size %d, rank %d of %d)",
                  o.workers, o.prefetch, o.batch_size, o.rank, o.world_size);
    return NULL;
  }
  mmp_loader_t *l = calloc(1, sizeof *l);
  if (!l) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  l->ds = ds;
  l->ops = (const mmp_dataset_ops_t *)ds->plugin;
  l->o = o;
  pthread_mutex_init(&l->lock, NULL);
  pthread_cond_init(&l->cond, NULL);
  l->nslots = o.prefetch ? o.prefetch : 2 * (o.workers ? o.workers : 1);
  if (l->nslots < o.batch_size) l->nslots = o.batch_size;
  l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
  if (!l->slots || make_order(l, 0) < 0) {
    if (!l->slots) mmp_error_set(MMP_ENOMEM, "out of memory");
    mmp_loader_free(l);
    return NULL;
  }
  for (int i = 0; i < l->nslots; i++) l->slots[i].pos = -1;
  if (o.workers > 0) {
    l->threads = calloc((size_t)o.workers, sizeof *l->threads);
    if (!l->threads) {
      mmp_error_set(MMP_ENOMEM, "out of memory");
      mmp_loader_free(l);
      return NULL;
    }
    for (int i = 0; i < o.workers; i++) {
      if (pthread_create(&l->threads[i], NULL, worker, l) != 0) {
        mmp_error_set(MMP_ERUNTIME, "loader: cannot start worker thread %d", i);
        mmp_loader_free(l);
        return NULL;
      }
      l->nthreads++;
    }
  }
  return l;
}

int64_t mmp_loader_items(const mmp_loader_t *l) { return l ? l->n : 0; }

int mmp_loader_set_epoch(mmp_loader_t *l, int64_t epoch) {
  if (!l) return mmp_error_set(MMP_EINVAL, "loader: NULL");
  pthread_mutex_lock(&l->lock);
  /* work still running for the old epoch is dropped by the generation
   * check when it finishes; workers copy their index out of the order
   * array under the lock, so it may be replaced here */
  l->generation++;
  clear_slots(l);
  int rc = make_order(l, epoch);
  l->next_claim = 0;
  l->next_out = 0;
  l->failed = false;
  pthread_cond_broadcast(&l->cond);
  pthread_mutex_unlock(&l->lock);
  return rc;
}

/* The item at the next position (transfer full), NULL at the end; errors
 * of get() are returned with their message. Skips bad items if asked. */
static int next_item(mmp_loader_t *l, mmp_tensormap_t **out) {
  *out = NULL;
  for (;;) {
    pthread_mutex_lock(&l->lock);
    if (l->failed || l->next_out >= l->n) {
      pthread_mutex_unlock(&l->lock);
      return 0;
    }
    int64_t pos = l->next_out;
    slot_t r;
    if (l->nthreads == 0) {
      int64_t index = l->order[pos];
      pthread_mutex_unlock(&l->lock);
      load_one(l, index, &r);
      pthread_mutex_lock(&l->lock);
    } else {
      slot_t *s = &l->slots[pos % l->nslots];
      while (!(s->pos == pos && s->ready)) pthread_cond_wait(&l->cond, &l->lock);
      r = *s;
      s->pos = -1;
      s->ready = false;
      s->item = NULL;
      s->msg = NULL;
    }
    l->next_out++;
    pthread_cond_broadcast(&l->cond);
    if (r.rc < 0 && l->o.skip_bad && r.rc == MMP_EDATA) {
      pthread_mutex_unlock(&l->lock);
      MMP_WARN("loader", "skipping %s", r.msg ? r.msg : "a bad item");
      free(r.msg);
      continue;
    }
    if (r.rc < 0) l->failed = true;
    pthread_mutex_unlock(&l->lock);
    if (r.rc < 0) {
      mmp_error_set(r.rc, "%s", r.msg ? r.msg : "loader: an item failed");
      free(r.msg);
      return r.rc;
    }
    *out = r.item;
    return 0;
  }
}

int mmp_loader_stack(mmp_tensormap_t *const *items, int n, mmp_tensormap_t **out) {
  if (!items || n < 1 || !out) return mmp_error_set(MMP_EINVAL, "loader: stack: no items");
  mmp_tensormap_t *b = mmp_tensormap_new();
  if (!b) return mmp_error_code();
  mmp_tensor_t **parts = calloc((size_t)n, sizeof *parts);
  if (!parts) {
    mmp_tensormap_free(b);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  int rc = 0;
  for (size_t k = 0; rc == 0 && k < mmp_tensormap_size(items[0]); k++) {
    const char *name = mmp_tensormap_name(items[0], k);
    int got = 0;
    for (int i = 0; i < n; i++) {
      mmp_tensor_t *t = mmp_tensormap_get(items[i], name);
      if (!t || !mmp_tensor_same_shape(t, mmp_tensormap_at(items[0], k))) {
        rc = mmp_error_set(MMP_ESHAPE, "loader: cannot batch '%s': items differ in shape", name);
        break;
      }
      parts[got++] = strcmp(name, "index") == 0 ? mmp_tensor_ref(t) : mmp_unsqueeze(t, 0);
    }
    if (rc == 0) {
      mmp_tensor_t *cat = mmp_concat(parts, n, 0);
      rc = cat ? mmp_tensormap_set(b, name, cat) : mmp_error_code();
    }
    for (int i = 0; i < got; i++) mmp_tensor_unref(parts[i]);
  }
  free(parts);
  if (rc < 0) {
    mmp_tensormap_free(b);
    return rc;
  }
  *out = b;
  return 0;
}

int mmp_loader_next(mmp_loader_t *l, mmp_tensormap_t **out) {
  if (!l || !out) return mmp_error_set(MMP_EINVAL, "loader: NULL argument");
  *out = NULL;
  if (l->o.batch_size == 1) return next_item(l, out);
  mmp_tensormap_t **items = calloc((size_t)l->o.batch_size, sizeof *items);
  if (!items) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int n = 0, rc = 0;
  while (n < l->o.batch_size) {
    mmp_tensormap_t *it = NULL;
    if ((rc = next_item(l, &it)) < 0 || !it) break;
    items[n++] = it;
  }
  if (rc == 0 && n > 0 && (n == l->o.batch_size || !l->o.drop_last)) rc = mmp_loader_stack(items, n, out);
  for (int i = 0; i < n; i++) mmp_tensormap_free(items[i]);
  free(items);
  return rc;
}
