/* core/optim.c - AdamW, the warmup + cosine schedule, gradient clipping/accumulation, freezing patterns. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/tensor_impl.h"
#pragma GCC visibility push(default)
#include <mmpipe/optim.h>
#pragma GCC visibility pop

/* ------------------------------------------------------------------ AdamW */

typedef struct adam_param {
  char *name;
  mmp_tensor_t *p, *m, *v;
  int64_t step;
  size_t off; /* moments in a file: m at off, v at off + span (page-aligned) */
} adam_param_t;

struct mmp_adamw {
  mmp_adamw_params_t hp;
  adam_param_t *ps;
  size_t n, cap;
  /* mmp_adamw_moments_to_file: the shared mapping of the (unlinked) file */
  int fd;
  unsigned char *map;
  size_t map_bytes;
};

void mmp_adamw_defaults(mmp_adamw_params_t *p) {
  p->lr = 1e-3;
  p->beta1 = 0.9;
  p->beta2 = 0.999;
  p->eps = 1e-8;
  p->weight_decay = 1e-2;
}

mmp_adamw_t *mmp_adamw_new(const mmp_adamw_params_t *p) {
  if (!p) {
    mmp_error_set(MMP_EINVAL, "adamw: NULL hyperparameters");
    return NULL;
  }
  if (!(p->lr >= 0) || !(p->eps >= 0) || !(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1) ||
      !(p->weight_decay >= 0)) {
    mmp_error_set(MMP_EINVAL, "adamw: invalid hyperparameters (lr %g, betas (%g, %g), eps %g, weight_decay %g)", p->lr,
                  p->beta1, p->beta2, p->eps, p->weight_decay);
    return NULL;
  }
  mmp_adamw_t *o = calloc(1, sizeof *o);
  if (!o) {
    mmp_error_set(MMP_ENOMEM, "adamw: out of memory");
    return NULL;
  }
  o->hp = *p;
  o->fd = -1;
  return o;
}

void mmp_adamw_free(mmp_adamw_t *o) {
  if (!o) return;
  for (size_t i = 0; i < o->n; i++) {
    free(o->ps[i].name);
    mmp_tensor_unref(o->ps[i].p);
    mmp_tensor_unref(o->ps[i].m);
    mmp_tensor_unref(o->ps[i].v);
  }
  free(o->ps);
  if (o->map) munmap(o->map, o->map_bytes);
  if (o->fd >= 0) close(o->fd);
  free(o);
}

static adam_param_t *find(const mmp_adamw_t *o, const char *name) {
  for (size_t i = 0; i < o->n; i++)
    if (strcmp(o->ps[i].name, name) == 0) return &o->ps[i];
  return NULL;
}

int mmp_adamw_add_param(mmp_adamw_t *o, const char *name, mmp_tensor_t *param) {
  if (!o || !name || !param) return mmp_error_set(MMP_EINVAL, "adamw_add_param: NULL argument");
  if (o->map) return mmp_error_set(MMP_EINVAL, "adamw_add_param: %s after the moments went to a file", name);
  if (param->dtype != MMP_F32 || !mmp_tensor_is_contiguous(param) || (param->flags & MMP_TF_READONLY))
    return mmp_error_set(MMP_EINVAL, "adamw_add_param: %s is %s; parameters must be contiguous, writable f32", name,
                         mmp__desc(param));
  if (find(o, name)) return mmp_error_set(MMP_EEXIST, "adamw_add_param: %s added twice", name);
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 16;
    adam_param_t *ps = realloc(o->ps, cap * sizeof *ps);
    if (!ps) return mmp_error_set(MMP_ENOMEM, "adamw_add_param: out of memory");
    o->ps = ps;
    o->cap = cap;
  }
  adam_param_t *e = &o->ps[o->n];
  mmp_backend_t *be = param->storage->be;
  e->name = strdup(name);
  e->m = mmp_tensor_zeros(be, MMP_F32, param->ndim, param->shape);
  e->v = mmp_tensor_zeros(be, MMP_F32, param->ndim, param->shape);
  if (!e->name || !e->m || !e->v) {
    free(e->name);
    mmp_tensor_unref(e->m);
    mmp_tensor_unref(e->v);
    return mmp_error_set(MMP_ENOMEM, "adamw_add_param: out of memory for the moments of %s", name);
  }
  e->p = mmp_tensor_ref(param);
  e->step = 0;
  o->n++;
  return 0;
}

size_t mmp_adamw_size(const mmp_adamw_t *o) { return o ? o->n : 0; }
void mmp_adamw_set_lr(mmp_adamw_t *o, double lr) {
  if (o) o->hp.lr = lr;
}
double mmp_adamw_lr(const mmp_adamw_t *o) { return o ? o->hp.lr : 0.0; }

/* Whether @g fits parameter @e (shape, dtype, backend); MMP_ESHAPE with a message if not. */
static int check_grad(const adam_param_t *e, const char *name, const mmp_tensor_t *g, const char *fn) {
  if (!g || g->dtype != MMP_F32 || !mmp_tensor_same_shape(g, e->p) || g->storage->be != e->p->storage->be)
    return mmp_error_set(MMP_ESHAPE, "%s: gradient %s %s does not fit its parameter %s", fn, name,
                         g ? mmp__desc(g) : "(null)", mmp__desc(e->p));
  return 0;
}

/* Moments in a file: the bytes of one moment of @e, rounded up to whole pages. */
static size_t moment_span(const adam_param_t *e) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE), b = mmp_tensor_nbytes(e->p);
  return (b + pg - 1) / pg * pg;
}

/* Write @e's moments back to the file and drop them from memory: from this
 * process's pages (madvise) and from the page cache (fadvise), so neither the
 * RSS nor the cache keeps them; the next access reads them from the file. */
static int release_moments(const mmp_adamw_t *o, const adam_param_t *e) {
  if (!o->map) return 0;
  size_t span = moment_span(e);
  unsigned char *at = o->map + e->off;
  if (msync(at, 2 * span, MS_SYNC) < 0)
    return mmp_error_set(MMP_EIO, "adamw: writing the moments of %s to their file: %s", e->name, strerror(errno));
  if (madvise(at, 2 * span, MADV_DONTNEED) < 0)
    return mmp_error_set(MMP_EIO, "adamw: madvise for the moments of %s: %s", e->name, strerror(errno));
  int rc = posix_fadvise(o->fd, (off_t)e->off, (off_t)(2 * span), POSIX_FADV_DONTNEED);
  if (rc != 0) return mmp_error_set(MMP_EIO, "adamw: fadvise for the moments of %s: %s", e->name, strerror(rc));
  return 0;
}

/* The update of one parameter from its (checked) gradient: the one place of
 * AdamW's per-parameter math, for mmp_adamw_step and mmp_adamw_step_one. */
static int update(const mmp_adamw_t *o, adam_param_t *e, const mmp_tensor_t *g, const char *fn) {
  const mmp_adamw_params_t *hp = &o->hp;
  mmp_tensor_t *gc = mmp_contiguous((mmp_tensor_t *)g);
  if (!gc) return mmp_error_code();
  e->step++;
  /* the scalars as torch 1.13 forms them in Python (double) */
  double bc1 = 1.0 - pow(hp->beta1, (double)e->step), bc2 = 1.0 - pow(hp->beta2, (double)e->step);
  int64_t b1, b2;
  memcpy(&b1, &hp->beta1, sizeof b1);
  memcpy(&b2, &hp->beta2, sizeof b2);
  mmp_op_params_t p = {{1.0 - hp->lr * hp->weight_decay, hp->lr / bc1, sqrt(bc2), hp->eps}, {b1, b2}};
  const mmp_tensor_t *s[3] = {gc, e->m, e->v};
  int rc = mmp_backend_compute(e->p->storage->be, MMP_OP_ADAMW, &p, s, 3, e->p);
  mmp_tensor_unref(gc);
  if (rc < 0) return mmp_error_prefix("%s: %s: ", fn, e->name);
  return release_moments(o, e);
}

int mmp_adamw_step(mmp_adamw_t *o, const mmp_tensormap_t *grads) {
  if (!o || !grads) return mmp_error_set(MMP_EINVAL, "adamw_step: NULL argument");
  /* check everything first so a bad map changes nothing */
  for (size_t i = 0; i < mmp_tensormap_size(grads); i++) {
    const char *name = mmp_tensormap_name(grads, i);
    adam_param_t *e = find(o, name);
    if (!e) return mmp_error_set(MMP_ENOENT, "adamw_step: gradient %s belongs to no parameter", name);
    int rc = check_grad(e, name, mmp_tensormap_at(grads, i), "adamw_step");
    if (rc < 0) return rc;
  }
  for (size_t i = 0; i < o->n; i++) {
    adam_param_t *e = &o->ps[i];
    mmp_tensor_t *g = mmp_tensormap_get(grads, e->name);
    if (!g) continue;
    int rc = update(o, e, g, "adamw_step");
    if (rc < 0) return rc;
  }
  return 0;
}

int mmp_adamw_step_one(mmp_adamw_t *o, const char *name, const mmp_tensor_t *grad) {
  if (!o || !name || !grad) return mmp_error_set(MMP_EINVAL, "adamw_step_one: NULL argument");
  adam_param_t *e = find(o, name);
  if (!e) return mmp_error_set(MMP_ENOENT, "adamw_step_one: gradient %s belongs to no parameter", name);
  int rc = check_grad(e, name, grad, "adamw_step_one");
  return rc < 0 ? rc : update(o, e, grad, "adamw_step_one");
}

int mmp_adamw_moments_to_file(mmp_adamw_t *o, const char *dir) {
  if (!o || !dir) return mmp_error_set(MMP_EINVAL, "adamw_moments_to_file: NULL argument");
  if (o->map) return mmp_error_set(MMP_EINVAL, "adamw_moments_to_file: the moments are in a file already");
  size_t total = 0;
  for (size_t i = 0; i < o->n; i++) {
    if (o->ps[i].p->storage->be != mmp__backend_cpu())
      return mmp_error_set(MMP_EUNSUPPORTED, "adamw_moments_to_file: %s is not on the CPU backend", o->ps[i].name);
    o->ps[i].off = total;
    total += 2 * moment_span(&o->ps[i]);
  }
  if (total == 0) return 0;
  char path[4200];
  snprintf(path, sizeof path, "%.4000s/adamw-moments-XXXXXX", dir);
  int fd = mkstemp(path);
  if (fd < 0) return mmp_error_set(MMP_EIO, "adamw_moments_to_file: %s: %s", path, strerror(errno));
  unlink(path); /* nothing is left behind, however the run ends */
  int err = 0;
  void *map = MAP_FAILED;
  if ((err = posix_fallocate(fd, 0, (off_t)total)) == 0) {
    map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) err = errno;
  }
  if (err) {
    close(fd);
    return mmp_error_set(MMP_EIO, "adamw_moments_to_file: %zu bytes in %s: %s", total, dir, strerror(err));
  }
  /* the moments as they are (zero, or restored) into the file, then wrapped in place */
  mmp_tensor_t **w = calloc(2 * o->n, sizeof *w);
  int rc = w ? 0 : mmp_error_set(MMP_ENOMEM, "adamw_moments_to_file: out of memory");
  for (size_t i = 0; rc == 0 && i < o->n; i++) {
    adam_param_t *e = &o->ps[i];
    unsigned char *at = (unsigned char *)map + e->off;
    size_t span = moment_span(e);
    w[2 * i] = mmp_tensor_wrap(MMP_F32, e->p->ndim, e->p->shape, at, NULL, NULL);
    w[2 * i + 1] = mmp_tensor_wrap(MMP_F32, e->p->ndim, e->p->shape, at + span, NULL, NULL);
    if (!w[2 * i] || !w[2 * i + 1]) rc = mmp_error_code();
    /* (a parameter never updated has zero moments: the file reads zeros already) */
    if (rc == 0 && e->step > 0) rc = mmp_tensor_to_host(e->m, at, mmp_tensor_nbytes(e->p));
    if (rc == 0 && e->step > 0) rc = mmp_tensor_to_host(e->v, at + span, mmp_tensor_nbytes(e->p));
  }
  if (rc < 0) {
    for (size_t i = 0; w && i < 2 * o->n; i++) mmp_tensor_unref(w[i]);
    free(w);
    munmap(map, total);
    close(fd);
    return rc;
  }
  o->fd = fd;
  o->map = map;
  o->map_bytes = total;
  for (size_t i = 0; i < o->n; i++) {
    adam_param_t *e = &o->ps[i];
    mmp_tensor_unref(e->m);
    mmp_tensor_unref(e->v);
    e->m = w[2 * i];
    e->v = w[2 * i + 1];
    if (rc == 0) rc = release_moments(o, e);
  }
  free(w);
  /* the memory the moments had (filled with zeros, so resident) goes back to the system,
   * not into the backend's cache */
  mmp_backend_pool_trim(mmp__backend_cpu());
  return rc;
}

int mmp_adamw_release_moments(mmp_adamw_t *o) {
  if (!o) return mmp_error_set(MMP_EINVAL, "adamw_release_moments: NULL argument");
  for (size_t i = 0; i < o->n; i++) {
    int rc = release_moments(o, &o->ps[i]);
    if (rc < 0) return rc;
  }
  return 0;
}

int mmp_adamw_state(const mmp_adamw_t *o, size_t i, const char **name, mmp_tensor_t **param, mmp_tensor_t **exp_avg,
                    mmp_tensor_t **exp_avg_sq, int64_t *step) {
  if (!o || i >= o->n) return mmp_error_set(MMP_EINVAL, "adamw_state: index %zu out of range", i);
  const adam_param_t *e = &o->ps[i];
  if (name) *name = e->name;
  if (param) *param = e->p;
  if (exp_avg) *exp_avg = e->m;
  if (exp_avg_sq) *exp_avg_sq = e->v;
  if (step) *step = e->step;
  return 0;
}

int mmp_adamw_set_step(mmp_adamw_t *o, size_t i, int64_t step) {
  if (!o || i >= o->n || step < 0)
    return mmp_error_set(MMP_EINVAL, "adamw_set_step: index %zu or step %lld out of range", i, (long long)step);
  o->ps[i].step = step;
  return 0;
}

/* --------------------------------------------------------------- schedule */

int mmp_lr_warmup_cosine_init(mmp_lr_warmup_cosine_t *s, double base_lr, int64_t warmup_steps, int64_t max_steps,
                              double warmup_start_lr, double eta_min) {
  if (!s || warmup_steps < 0 || max_steps <= warmup_steps || !(base_lr >= 0))
    return mmp_error_set(MMP_EINVAL, "lr schedule: need 0 <= warmup_steps (%lld) < max_steps (%lld), base_lr %g >= 0",
                         (long long)warmup_steps, (long long)max_steps, base_lr);
  *s = (mmp_lr_warmup_cosine_t){base_lr, warmup_start_lr, eta_min, warmup_steps, max_steps, 0, warmup_start_lr};
  return 0;
}

/* pl_bolts's get_lr() at last_epoch = s->last_step + 1, from the previous rate */
double mmp_lr_warmup_cosine_step(mmp_lr_warmup_cosine_t *s) {
  const int64_t e = ++s->last_step, W = s->warmup_steps, M = s->max_steps;
  if (e == 0)
    s->lr = s->warmup_start_lr;
  else if (e < W)
    s->lr = s->lr + (s->base_lr - s->warmup_start_lr) / (double)(W - 1);
  else if (e == W)
    s->lr = s->base_lr;
  else if ((e - 1 - M) % (2 * (M - W)) == 0)
    s->lr = s->lr + (s->base_lr - s->eta_min) * (1.0 - cos(M_PI / (double)(M - W))) / 2.0;
  else
    s->lr = (1.0 + cos(M_PI * (double)(e - W) / (double)(M - W))) /
                (1.0 + cos(M_PI * (double)(e - W - 1) / (double)(M - W))) * (s->lr - s->eta_min) +
            s->eta_min;
  return s->lr;
}

/* -------------------------------------------------------------- gradients */

int mmp_clip_grad_norm(mmp_tensormap_t *grads, double max_norm, double *total_norm) {
  if (!grads) return mmp_error_set(MMP_EINVAL, "clip_grad_norm: NULL gradients");
  const size_t n = mmp_tensormap_size(grads);
  double tot = 0.0;
  for (size_t i = 0; i < n; i++) {
    mmp_tensor_t *g = mmp_tensormap_at(grads, i);
    int64_t all = -1;
    mmp_tensor_t *sq = mmp_mul(g, g);
    mmp_tensor_t *f = sq ? mmp_reshape(sq, 1, &all) : NULL;
    mmp_tensor_t *s = f ? mmp_sum(f, 0, false) : NULL;
    mmp_tensor_unref(sq);
    mmp_tensor_unref(f);
    if (!s) return mmp_error_prefix("clip_grad_norm: %s: ", mmp_tensormap_name(grads, i));
    /* torch takes each gradient's norm in float, then the norm of the norms */
    float norm = sqrtf((float)mmp_tensor_get(s, NULL));
    mmp_tensor_unref(s);
    tot += (double)norm * (double)norm;
  }
  float total = sqrtf((float)tot);
  if (total_norm) *total_norm = total;
  float coef = (float)max_norm / (total + 1e-6f);
  if (coef > 1.0f) coef = 1.0f;
  for (size_t i = 0; i < n; i++) {
    mmp_tensor_t *s = mmp_scale(mmp_tensormap_at(grads, i), coef, 0.0);
    if (!s || mmp_tensormap_set(grads, mmp_tensormap_name(grads, i), s) < 0) {
      mmp_tensor_unref(s);
      return mmp_error_code() < 0 ? mmp_error_code() : MMP_ENOMEM;
    }
  }
  return 0;
}

int mmp_grad_accumulate(mmp_tensormap_t *acc, const mmp_tensormap_t *g) {
  if (!acc || !g) return mmp_error_set(MMP_EINVAL, "grad_accumulate: NULL map");
  for (size_t i = 0; i < mmp_tensormap_size(g); i++) {
    const char *name = mmp_tensormap_name(g, i);
    mmp_tensor_t *t = mmp_tensormap_at(g, i), *a = mmp_tensormap_get(acc, name);
    if (a && !mmp_tensor_same_shape(a, t))
      return mmp_error_set(MMP_ESHAPE, "grad_accumulate: %s is %s, its new gradient %s", name, mmp__desc(a),
                           mmp__desc(t));
    mmp_tensor_t *s = a ? mmp_add(a, t) : mmp_clone(t);
    if (!s || mmp_tensormap_set(acc, name, s) < 0) {
      mmp_tensor_unref(s);
      return mmp_error_code() < 0 ? mmp_error_code() : MMP_ENOMEM;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- freezing */

static bool any_match(const char *name, const char *const *pats) {
  for (size_t i = 0; pats && pats[i]; i++)
    if (fnmatch(pats[i], name, 0) == 0) return true;
  return false;
}

bool mmp_param_trainable(const char *name, const char *const *freeze, const char *const *train) {
  if (!name) return false;
  return !any_match(name, freeze) || any_match(name, train);
}
