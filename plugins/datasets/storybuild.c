/* plugins/datasets/storybuild.c - writing story HDF5 files: worker threads, ordered writes, checkpoints, resume, report. */
#include "plugins/datasets/storybuild.h"

#include <errno.h>
#include <hdf5.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/file.h>
#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>

#include "plugins/datasets/h5raw.h"
#include "plugins/datasets/npy.h"

static const char *const SPLIT_NAMES[STORY_SPLITS] = {"train", "val", "test"};

#define MAX_TEXTS 2
/* Checkpoint (flush, record the count written) at least this often. */
#define CHECKPOINT_SECONDS 2.0
#define CHECKPOINT_STORIES 256

typedef struct pstory {
  char *id;
  char *frames[STORY_FRAMES];
  char *texts[MAX_TEXTS];
} pstory_t;

typedef struct remark {
  int split;
  char *id, *reason;
} remark_t;

typedef struct remarks {
  remark_t *v;
  size_t n, cap;
} remarks_t;

struct story_plan {
  char *dataset;
  int ntext;
  char *text_names[MAX_TEXTS];
  story_load_cb load;
  void *user;
  int resize;
  char *salt;
  pstory_t *stories[STORY_SPLITS];
  int64_t n[STORY_SPLITS], cap[STORY_SPLITS];
  remarks_t drops, notes;
};

/* ---- plans ---- */

story_plan_t *story_plan_new(const char *dataset, int ntext, const char *const *text_names,
                             story_load_cb load, void *user) {
  story_plan_t *p = calloc(1, sizeof *p);
  if (!p || ntext < 1 || ntext > MAX_TEXTS) {
    free(p);
    mmp_error_set(p ? MMP_EINVAL : MMP_ENOMEM, "story_plan_new: bad arguments");
    return NULL;
  }
  p->dataset = strdup(dataset);
  p->ntext = ntext;
  p->load = load;
  p->user = user;
  bool ok = p->dataset != NULL;
  for (int i = 0; i < ntext; i++) ok = ok && (p->text_names[i] = strdup(text_names[i])) != NULL;
  if (!ok) {
    story_plan_free(p);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  return p;
}

static void remarks_free(remarks_t *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->v[i].id);
    free(r->v[i].reason);
  }
  free(r->v);
}

void story_plan_free(story_plan_t *p) {
  if (!p) return;
  for (int s = 0; s < STORY_SPLITS; s++) {
    for (int64_t i = 0; i < p->n[s]; i++) {
      pstory_t *st = &p->stories[s][i];
      free(st->id);
      for (int f = 0; f < STORY_FRAMES; f++) free(st->frames[f]);
      for (int t = 0; t < MAX_TEXTS; t++) free(st->texts[t]);
    }
    free(p->stories[s]);
  }
  remarks_free(&p->drops);
  remarks_free(&p->notes);
  for (int i = 0; i < MAX_TEXTS; i++) free(p->text_names[i]);
  free(p->dataset);
  free(p->salt);
  free(p);
}

char *story_join_captions(char *const *parts, int n) {
  size_t len = 1;
  for (int i = 0; i < n; i++) len += strlen(parts[i]) + 1;
  char *t = malloc(len), *e = t;
  if (!t) return NULL;
  for (int i = 0; i < n; i++) {
    size_t l = strlen(parts[i]);
    if (i) *e++ = '|';
    memcpy(e, parts[i], l);
    e += l;
  }
  *e = 0;
  return t;
}

int story_plan_add_captions(story_plan_t *p, int split, const char *id, const char *const frames[STORY_FRAMES],
                            char *const caps[STORY_FRAMES]) {
  char *text = story_join_captions(caps, STORY_FRAMES);
  if (!text) return mmp_error_set(MMP_ENOMEM, "out of memory");
  const char *texts[1] = {text};
  int rc = story_plan_add(p, split, id, frames, texts);
  free(text);
  return rc;
}

int story_plan_add(story_plan_t *p, int split, const char *id, const char *const frames[STORY_FRAMES],
                   const char *const *texts) {
  /* AR-LDM joins with '|' and splits on it: a '|' inside a caption makes
   * the story read as more captions than frames (kept, as AR-LDM does;
   * `on_bad_story = skip` leaves it out when reading) */
  for (int t = 0; t < p->ntext && split >= 0 && split < STORY_SPLITS; t++) {
    if (strcmp(p->text_names[t], "dii") == 0) continue; /* de-duplicated: fewer is normal */
    int k = 1;
    for (const char *c = texts[t]; *c; c++) k += *c == '|';
    if (k != STORY_FRAMES) {
      int rc = story_plan_note(p, split, id, "%s: a caption holds '|': the story reads as %d captions, not 5",
                               p->text_names[t], k);
      if (rc < 0) return rc;
    }
  }
  if (split < 0 || split >= STORY_SPLITS) return mmp_error_set(MMP_EINVAL, "bad split %d", split);
  if (p->n[split] == p->cap[split]) {
    int64_t cap = p->cap[split] ? 2 * p->cap[split] : 64;
    pstory_t *v = realloc(p->stories[split], (size_t)cap * sizeof *v);
    if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory");
    p->stories[split] = v;
    p->cap[split] = cap;
  }
  pstory_t *st = &p->stories[split][p->n[split]];
  memset(st, 0, sizeof *st);
  p->n[split]++;
  bool ok = (st->id = strdup(id)) != NULL;
  for (int f = 0; f < STORY_FRAMES; f++) ok = ok && (st->frames[f] = strdup(frames[f])) != NULL;
  for (int t = 0; t < p->ntext; t++) ok = ok && (st->texts[t] = strdup(texts[t])) != NULL;
  return ok ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
}

static int remark_add(remarks_t *r, int split, const char *id, const char *fmt, va_list ap) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? 2 * r->cap : 16;
    remark_t *v = realloc(r->v, cap * sizeof *v);
    if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory");
    r->v = v;
    r->cap = cap;
  }
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  remark_t *m = &r->v[r->n];
  m->split = split;
  m->id = strdup(id);
  m->reason = strdup(buf);
  if (!m->id || !m->reason) {
    free(m->id);
    free(m->reason);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  r->n++;
  return 0;
}

int story_plan_drop(story_plan_t *p, int split, const char *id, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = remark_add(&p->drops, split, id, fmt, ap);
  va_end(ap);
  return rc;
}

int story_plan_note(story_plan_t *p, int split, const char *id, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = remark_add(&p->notes, split, id, fmt, ap);
  va_end(ap);
  return rc;
}

void story_plan_set_resize(story_plan_t *p, int short_side) { p->resize = short_side; }

void story_plan_set_salt(story_plan_t *p, const char *salt) {
  free(p->salt);
  p->salt = salt ? strdup(salt) : NULL;
}

int64_t story_plan_count(const story_plan_t *p, int split) {
  return split >= 0 && split < STORY_SPLITS ? p->n[split] : 0;
}

/* ---- options ---- */

const char *story_build_option(const mmp_dataset_build_t *req, const char *key) {
  const char *found = NULL;
  size_t kl = strlen(key);
  for (const char *const *o = req->options; o && *o; o++)
    if (strncmp(*o, key, kl) == 0 && (*o)[kl] == '=') found = *o + kl + 1;
  return found;
}

int story_build_check_options(const mmp_dataset_build_t *req, const char *dataset,
                              const char *const *known) {
  for (const char *const *o = req->options; o && *o; o++) {
    const char *eq = strchr(*o, '=');
    if (!eq) return mmp_error_set(MMP_ECONFIG, "%s: build option '%s' is not KEY=VALUE", dataset, *o);
    bool ok = false;
    for (const char *const *k = known; *k && !ok; k++)
      ok = strlen(*k) == (size_t)(eq - *o) && strncmp(*k, *o, (size_t)(eq - *o)) == 0;
    if (!ok) {
      char list[512] = "";
      for (const char *const *k = known; *k; k++) {
        strncat(list, *k, sizeof list - strlen(list) - 3);
        if (k[1]) strncat(list, ", ", sizeof list - strlen(list) - 1);
      }
      return mmp_error_set(MMP_ECONFIG, "%s: unknown build option '%.*s' (known: %s)", dataset,
                           (int)(eq - *o), *o, *list ? list : "none");
    }
  }
  return 0;
}

/* ---- captions: AR-LDM's t.replace('\n', '').replace('\t', '').strip() ---- */

/* Decode one UTF-8 code point at @s (valid input assumed: JSON and pickle
 * strings are); returns its length, 1 for a stray byte. */
static int utf8_next(const unsigned char *s, uint32_t *cp) {
  if (s[0] < 0x80) {
    *cp = s[0];
    return 1;
  }
  if ((s[0] & 0xE0) == 0xC0 && (s[1] & 0xC0) == 0x80) {
    *cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    return 2;
  }
  if ((s[0] & 0xF0) == 0xE0 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
    *cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    return 3;
  }
  if ((s[0] & 0xF8) == 0xF0 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80) {
    *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
          (s[3] & 0x3F);
    return 4;
  }
  *cp = 0xFFFD;
  return 1;
}

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs. */
static bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

char *story_clean_caption(const char *s) {
  size_t n = strlen(s);
  char *o = malloc(n + 1);
  if (!o) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (s[i] != '\n' && s[i] != '\t') o[k++] = s[i];
  o[k] = 0;
  /* strip: find the first and last non-space code points */
  size_t start = 0, end = 0;
  bool any = false;
  for (size_t i = 0; i < k;) {
    uint32_t cp;
    int l = utf8_next((const unsigned char *)o + i, &cp);
    if (i + (size_t)l > k) l = (int)(k - i);
    if (!py_space(cp)) {
      if (!any) start = i;
      any = true;
      end = i + (size_t)l;
    }
    i += (size_t)l;
  }
  if (!any) start = end = 0;
  memmove(o, o + start, end - start);
  o[end - start] = 0;
  return o;
}

size_t story_utf8_len(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
  return n;
}

/* ---- paths and images from the raw data ---- */

int story_path_check(const char *rel, const char *file, const char *entry) {
  bool bad = rel[0] == '/';
  for (const char *c = rel; *c && !bad; c = strchr(c, '/') ? strchr(c, '/') + 1 : c + strlen(c))
    bad = c[0] == '.' && c[1] == '.' && (c[2] == '/' || c[2] == 0);
  if (!bad) return 0;
  return mmp_error_set(MMP_EDATA,
                       "%s: %s: path '%s' is %s; refused (the raw data may only name files under its directory)",
                       file, entry, rel, rel[0] == '/' ? "absolute" : "outside (a '..' component)");
}

#define MAX_IMAGE_BYTES ((size_t)256 << 20)

int story_load_image(void *user, const char *src, mmp_image_t *out) {
  (void)user;
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = npy_read_file(src, MAX_IMAGE_BYTES, &buf, &n);
  if (rc < 0) return rc;
  if (n >= 8 && memcmp(buf, "\x89PNG", 4) == 0) rc = mmp_image_png_decode(buf, n, false, out);
  else rc = mmp_image_jpeg_decode(buf, n, out);
  free(buf);
  return rc;
}

/* ---- the plan's fingerprint (what a resume must match) ---- */

static void fnv(uint64_t *h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    *h ^= p[i];
    *h *= 0x100000001b3ull;
  }
}

static void fnv_str(uint64_t *h, const char *s) { fnv(h, s ? s : "", s ? strlen(s) + 1 : 1); }

static uint64_t plan_digest(const story_plan_t *p, unsigned flags, int64_t limit) {
  uint64_t h = 0xcbf29ce484222325ull;
  fnv_str(&h, "mmpipe-story-build-1");
  fnv_str(&h, p->dataset);
  fnv_str(&h, p->salt);
  fnv(&h, &flags, sizeof flags);
  fnv(&h, &limit, sizeof limit);
  fnv(&h, &p->resize, sizeof p->resize);
  for (int s = 0; s < STORY_SPLITS; s++) {
    fnv(&h, &p->n[s], sizeof p->n[s]);
    for (int64_t i = 0; i < p->n[s]; i++) {
      const pstory_t *st = &p->stories[s][i];
      fnv_str(&h, st->id);
      for (int f = 0; f < STORY_FRAMES; f++) fnv_str(&h, st->frames[f]);
      for (int t = 0; t < p->ntext; t++) fnv_str(&h, st->texts[t]);
    }
  }
  return h;
}

/* ---- the worker pool: stories are encoded out of order, written in order ---- */

typedef struct result {
  int64_t index; /* story index in the split; -1: slot free */
  bool ready;
  int rc;
  char msg[512];
  uint8_t *png[STORY_FRAMES];
  size_t len[STORY_FRAMES];
} result_t;

typedef struct pool {
  story_plan_t *plan;
  int split;
  bool swap_rb;
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  int64_t next, end;   /* next story to hand out; one past the last */
  int64_t window_base; /* the oldest story not yet written */
  int window;          /* slots */
  result_t *slots;
  bool stop, quit;
  long delay_ms; /* MMPIPE_BUILD_STORY_DELAY_MS: slows each story (tests of interruption) */
} pool_t;

static void result_clear(result_t *r) {
  for (int f = 0; f < STORY_FRAMES; f++) {
    free(r->png[f]);
    r->png[f] = NULL;
    r->len[f] = 0;
  }
  r->ready = false;
  r->rc = 0;
  r->msg[0] = 0;
  r->index = -1;
}

/* Short side to @short_side with PIL's rule as AR-LDM's download helper applies it. */
static int maybe_resize(int short_side, mmp_image_t *im) {
  if (short_side <= 0 || im->w <= short_side || im->h <= short_side) return 0;
  int w, h;
  if (im->w > im->h) {
    w = (int)((double)im->w / ((double)im->h / short_side));
    h = short_side;
  } else {
    w = short_side;
    h = (int)((double)im->h / ((double)im->w / short_side));
  }
  mmp_image_t out = {0};
  int rc = mmp_image_resize(im, w, h, MMP_RESAMPLE_BICUBIC, &out);
  if (rc < 0) return rc;
  mmp_image_clear(im);
  *im = out;
  return 0;
}

static void encode_story(pool_t *pl, int64_t index, result_t *r) {
  const pstory_t *st = &pl->plan->stories[pl->split][index];
  for (int f = 0; f < STORY_FRAMES; f++) {
    mmp_image_t im = {0};
    mmp_error_clear();
    int rc = pl->plan->load(pl->plan->user, st->frames[f], &im);
    if (rc == 0) rc = maybe_resize(pl->plan->resize, &im);
    if (rc == 0) rc = mmp_image_png_encode(&im, pl->swap_rb, -1, &r->png[f], &r->len[f]);
    mmp_image_clear(&im);
    if (rc < 0) {
      r->rc = rc;
      snprintf(r->msg, sizeof r->msg, "frame %d (%s): %s", f, st->frames[f], mmp_error_last());
      return;
    }
  }
}

static void *worker(void *arg) {
  pool_t *pl = arg;
  pthread_mutex_lock(&pl->mu);
  for (;;) {
    while (!pl->quit && (pl->stop || pl->next >= pl->end || pl->next >= pl->window_base + pl->window))
      pthread_cond_wait(&pl->work, &pl->mu);
    if (pl->quit) break;
    int64_t i = pl->next++;
    result_t *r = &pl->slots[i % pl->window];
    r->index = i;
    pthread_mutex_unlock(&pl->mu);
    encode_story(pl, i, r);
    if (pl->delay_ms > 0) {
      struct timespec ts = {pl->delay_ms / 1000, (pl->delay_ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&pl->mu);
    r->ready = true;
    pthread_cond_broadcast(&pl->done);
  }
  pthread_mutex_unlock(&pl->mu);
  return NULL;
}

/* ---- HDF5 ---- */

#define H5FAIL(code, ...)                                                                      \
  do {                                                                                         \
    char h5m_[256];                                                                            \
    h5raw_hdf5_message(h5m_);                                                                  \
    char what_[512];                                                                           \
    snprintf(what_, sizeof what_, __VA_ARGS__);                                                \
    rc = mmp_error_set((code), "%s: %s [%s:%d]", what_, h5m_, __FILE__, __LINE__);             \
  } while (0)

typedef struct out_split {
  hid_t group;
  hid_t images[STORY_FRAMES];
  hid_t texts[MAX_TEXTS];
  int64_t count, done;
  int64_t *holes; /* indices of stories dropped while encoding */
  size_t nholes, capholes;
  char **hole_reasons;
} out_split_t;

typedef struct out_file {
  hid_t file;
  hid_t vlen_u8, vlen_str;
  out_split_t sp[STORY_SPLITS];
  int ntext;
} out_file_t;

static void out_close(out_file_t *o) {
  for (int s = 0; s < STORY_SPLITS; s++) {
    out_split_t *sp = &o->sp[s];
    for (int f = 0; f < STORY_FRAMES; f++)
      if (sp->images[f] > 0) H5Dclose(sp->images[f]);
    for (int t = 0; t < MAX_TEXTS; t++)
      if (sp->texts[t] > 0) H5Dclose(sp->texts[t]);
    if (sp->group > 0) H5Gclose(sp->group);
    for (size_t i = 0; i < sp->nholes; i++) free(sp->hole_reasons[i]);
    free(sp->holes);
    free(sp->hole_reasons);
    memset(sp, 0, sizeof *sp);
  }
  if (o->vlen_u8 > 0) H5Tclose(o->vlen_u8);
  if (o->vlen_str > 0) H5Tclose(o->vlen_str);
  if (o->file > 0) H5Fclose(o->file);
  o->file = o->vlen_u8 = o->vlen_str = -1;
}

static int make_types(out_file_t *o) {
  o->vlen_u8 = H5Tvlen_create(H5T_STD_U8LE);
  o->vlen_str = H5Tcopy(H5T_C_S1);
  if (o->vlen_u8 < 0 || o->vlen_str < 0 || H5Tset_size(o->vlen_str, H5T_VARIABLE) < 0 ||
      H5Tset_cset(o->vlen_str, H5T_CSET_UTF8) < 0)
    return mmp_error_set(MMP_ERUNTIME, "HDF5: cannot make the vlen types");
  return 0;
}

static int attr_write_str(hid_t obj, const char *name, const char *val) {
  int rc = 0;
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR), a = -1;
  H5Tset_size(t, strlen(val) + 1);
  a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0 || H5Awrite(a, t, val) < 0) H5FAIL(MMP_EIO, "cannot write attribute %s", name);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
  return rc;
}

static int attr_read_str(hid_t obj, const char *name, char *buf, size_t cap) {
  buf[0] = 0;
  if (H5Aexists(obj, name) <= 0) return MMP_ENOENT;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t at = a >= 0 ? H5Aget_type(a) : -1;
  int rc = MMP_EDATA;
  if (at >= 0 && H5Tget_class(at) == H5T_STRING && H5Tis_variable_str(at) <= 0 && H5Tget_size(at) < cap) {
    hid_t mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, cap);
    if (H5Aread(a, mt, buf) >= 0) rc = 0;
    buf[cap - 1] = 0;
    H5Tclose(mt);
  }
  if (at >= 0) H5Tclose(at);
  if (a >= 0) H5Aclose(a);
  return rc;
}

static int attr_write_i64(hid_t obj, const char *name, const int64_t *v, size_t n) {
  int rc = 0;
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hsize_t dims[1] = {n};
  hid_t sp = n ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_NULL);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0 || (n && H5Awrite(a, H5T_NATIVE_INT64, v) < 0)) H5FAIL(MMP_EIO, "cannot write attribute %s", name);
  if (a >= 0) H5Aclose(a);
  H5Sclose(sp);
  return rc;
}

/* An int64 array attribute (at most @cap values); -1 when absent or bad. */
static int64_t attr_read_i64(hid_t obj, const char *name, int64_t *v, size_t cap) {
  if (H5Aexists(obj, name) <= 0) return -1;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
  int64_t n = -1;
  if (sp >= 0) {
    H5S_class_t cls = H5Sget_simple_extent_type(sp);
    if (cls == H5S_NULL) n = 0;
    else if (cls == H5S_SIMPLE && H5Sget_simple_extent_ndims(sp) == 1) {
      hssize_t k = H5Sget_simple_extent_npoints(sp);
      if (k >= 0 && (size_t)k <= cap && H5Aread(a, H5T_NATIVE_INT64, v) >= 0) n = k;
    }
    H5Sclose(sp);
  }
  if (a >= 0) H5Aclose(a);
  return n;
}

static int create_split(out_file_t *o, int s, int64_t count, const story_plan_t *p) {
  int rc = 0;
  out_split_t *sp = &o->sp[s];
  sp->count = count;
  sp->group = H5Gcreate2(o->file, SPLIT_NAMES[s], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (sp->group < 0) {
    H5FAIL(MMP_EIO, "cannot create group %s", SPLIT_NAMES[s]);
    return rc;
  }
  hsize_t dims[1] = {(hsize_t)count};
  hid_t space = H5Screate_simple(1, dims, NULL);
  char name[16];
  for (int f = 0; f < STORY_FRAMES && rc == 0; f++) {
    snprintf(name, sizeof name, "image%d", f);
    sp->images[f] = H5Dcreate2(sp->group, name, o->vlen_u8, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (sp->images[f] < 0) H5FAIL(MMP_EIO, "cannot create %s/%s", SPLIT_NAMES[s], name);
  }
  for (int t = 0; t < p->ntext && rc == 0; t++) {
    sp->texts[t] = H5Dcreate2(sp->group, p->text_names[t], o->vlen_str, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (sp->texts[t] < 0) H5FAIL(MMP_EIO, "cannot create %s/%s", SPLIT_NAMES[s], p->text_names[t]);
  }
  H5Sclose(space);
  return rc;
}

/* Dataset @k of a split: image0..image4, then the plan's text datasets;
 * *@name its name (an image's written in @buf). */
static hid_t *split_dataset(out_split_t *sp, const story_plan_t *p, int k, char buf[16], const char **name) {
  if (k < STORY_FRAMES) {
    snprintf(buf, 16, "image%d", k);
    *name = buf;
    return &sp->images[k];
  }
  *name = p->text_names[k - STORY_FRAMES];
  return &sp->texts[k - STORY_FRAMES];
}

/* Reopen split @s of a .partial file. Every structure libhdf5 decodes here
 * is checked by its bytes first (@raw, h5raw.h): the group and its
 * attributes, the datasets, and the elements already written (the
 * compaction reads them back). */
static int open_split(out_file_t *o, int s, const story_plan_t *p, const h5raw_t *raw) {
  int rc = 0;
  out_split_t *sp = &o->sp[s];
  const char *sn = SPLIT_NAMES[s];
  char why[256];
  uint64_t addr = 0;
  if (h5raw_check_link(o->file, raw, sn, true, &addr, why) < 0)
    return mmp_error_set(MMP_EDATA, "group %s: %s", sn, why);
  if (h5raw_check_attributes(raw, addr) < 0) return mmp_error_prefix("group %s: ", sn);
  sp->group = H5Gopen2(o->file, sn, H5P_DEFAULT);
  if (sp->group < 0) {
    H5FAIL(MMP_EDATA, "no group %s", sn);
    return rc;
  }
  const int nd = STORY_FRAMES + p->ntext;
  char name[16];
  const char *dn;
  for (int k = 0; k < nd; k++) {
    hid_t *d = split_dataset(sp, p, k, name, &dn);
    if (h5raw_check_link(sp->group, raw, dn, false, NULL, why) < 0)
      return mmp_error_set(MMP_EDATA, "%s/%s: %s", sn, dn, why);
    if ((*d = H5Dopen2(sp->group, dn, H5P_DEFAULT)) < 0) {
      H5FAIL(MMP_EDATA, "no %s/%s", sn, dn);
      return rc;
    }
  }
  sp->count = p->n[s];
  int64_t done = 0;
  if (attr_read_i64(sp->group, "mmpipe_done", &done, 1) != 1 || done < 0 || done > sp->count)
    return mmp_error_set(MMP_EDATA, "%s has no valid mmpipe_done", sn);
  sp->done = done;
  for (int k = 0; k < nd; k++) {
    const hid_t d = *split_dataset(sp, p, k, name, &dn);
    for (int64_t i = 0; i < done; i++)
      if (h5raw_check_vlen_element(raw, d, i, INT64_MAX) < 0)
        return mmp_error_prefix("story %lld: %s/%s: ", (long long)i, sn, dn);
  }
  int64_t nh = 0;
  if (H5Aexists(sp->group, "mmpipe_holes") > 0) {
    sp->holes = malloc((size_t)(done + 1) * sizeof *sp->holes);
    sp->hole_reasons = calloc((size_t)done + 1, sizeof *sp->hole_reasons);
    if (!sp->holes || !sp->hole_reasons) return mmp_error_set(MMP_ENOMEM, "out of memory");
    sp->capholes = (size_t)done + 1;
    nh = attr_read_i64(sp->group, "mmpipe_holes", sp->holes, (size_t)done + 1);
    if (nh < 0) return mmp_error_set(MMP_EDATA, "%s has a bad mmpipe_holes", sn);
    sp->nholes = (size_t)nh;
    for (size_t i = 0; i < sp->nholes; i++) {
      if (sp->holes[i] < 0 || sp->holes[i] >= done) return mmp_error_set(MMP_EDATA, "bad mmpipe_holes");
      char an[48], buf[600];
      snprintf(an, sizeof an, "mmpipe_hole_%lld", (long long)sp->holes[i]);
      attr_read_str(sp->group, an, buf, sizeof buf);
      sp->hole_reasons[i] = strdup(buf[0] ? buf : "unreadable (reason lost)");
    }
  }
  return 0;
}

/* Reopen the .partial file of an interrupted build of the plan @digest
 * names. A file damaged since it was written (a crash, a full disk, another
 * program) is read by its bytes before libhdf5 decodes anything in it
 * beyond the superblock and the root group, as the story reader reads its
 * input: libhdf5 1.10 decodes attributes, names and heap objects without
 * bounding its reads by the file. false, with the reason in @why, when it
 * is not resumable. */
static bool resume_partial(out_file_t *o, const char *path, const story_plan_t *p, const char *digest,
                           char why[512]) {
  h5raw_t raw = {.fd = -1};
  uint64_t root = 0;
  char have[32] = "", m[256];
  bool resumed = false;
  o->file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  if (o->file < 0)
    snprintf(why, 512, "unreadable: %s", h5raw_hdf5_message(m));
  else if (h5raw_open(o->file, path, &raw, &root) < 0)
    snprintf(why, 512, "damaged: %s", mmp_error_last());
  else if (h5raw_check_attributes(&raw, root) < 0)
    snprintf(why, 512, "damaged: the root group: %s", mmp_error_last());
  else if (attr_read_str(o->file, "mmpipe_build_plan", have, sizeof have) != 0 || strcmp(have, digest) != 0)
    snprintf(why, 512, "other raw data or options");
  else if (make_types(o) < 0)
    snprintf(why, 512, "%s", mmp_error_last());
  else {
    resumed = true;
    for (int s = 0; s < STORY_SPLITS && resumed; s++)
      if (open_split(o, s, p, &raw) < 0) {
        snprintf(why, 512, "damaged: %s", mmp_error_last());
        resumed = false;
      }
  }
  if (raw.fd >= 0) close(raw.fd);
  return resumed;
}

static int write_elem(hid_t d, hid_t type, int64_t index, const void *value) {
  int rc = 0;
  hid_t fs = H5Dget_space(d);
  hsize_t start[1] = {(hsize_t)index}, count[1] = {1};
  hid_t ms = H5Screate_simple(1, count, NULL);
  if (fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
      H5Dwrite(d, type, ms, fs, H5P_DEFAULT, value) < 0)
    H5FAIL(MMP_EIO, "cannot write element %lld", (long long)index);
  if (ms >= 0) H5Sclose(ms);
  if (fs >= 0) H5Sclose(fs);
  return rc;
}

static int write_story(out_file_t *o, const story_plan_t *p, int s, int64_t i, const result_t *r) {
  out_split_t *sp = &o->sp[s];
  int rc = 0;
  for (int f = 0; f < STORY_FRAMES && rc == 0; f++) {
    hvl_t v = {r->len[f], r->png[f]};
    rc = write_elem(sp->images[f], o->vlen_u8, i, &v);
  }
  for (int t = 0; t < p->ntext && rc == 0; t++) {
    const char *txt = p->stories[s][i].texts[t];
    rc = write_elem(sp->texts[t], o->vlen_str, i, &txt);
  }
  return rc;
}

static int add_hole(out_split_t *sp, int64_t i, const char *reason) {
  if (sp->nholes == sp->capholes) {
    size_t cap = sp->capholes ? 2 * sp->capholes : 16;
    int64_t *h = realloc(sp->holes, cap * sizeof *h);
    if (h) sp->holes = h;
    char **r = realloc(sp->hole_reasons, cap * sizeof *r);
    if (r) sp->hole_reasons = r;
    if (!h || !r) return mmp_error_set(MMP_ENOMEM, "out of memory");
    sp->capholes = cap;
  }
  sp->holes[sp->nholes] = i;
  if (!(sp->hole_reasons[sp->nholes] = strdup(reason))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  sp->nholes++;
  return 0;
}

/* Record what is written so far: flush the data, then the count. */
static int checkpoint(out_file_t *o, int s) {
  out_split_t *sp = &o->sp[s];
  int rc = 0;
  if (H5Fflush(o->file, H5F_SCOPE_GLOBAL) < 0) {
    H5FAIL(MMP_EIO, "cannot flush");
    return rc;
  }
  if ((rc = attr_write_i64(sp->group, "mmpipe_holes", sp->holes, sp->nholes)) < 0) return rc;
  for (size_t i = 0; i < sp->nholes; i++) {
    char an[48];
    snprintf(an, sizeof an, "mmpipe_hole_%lld", (long long)sp->holes[i]);
    if (H5Aexists(sp->group, an) <= 0 && (rc = attr_write_str(sp->group, an, sp->hole_reasons[i])) < 0) return rc;
  }
  if ((rc = attr_write_i64(sp->group, "mmpipe_done", &sp->done, 1)) < 0) return rc;
  if (H5Fflush(o->file, H5F_SCOPE_GLOBAL) < 0) H5FAIL(MMP_EIO, "cannot flush");
  return rc;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int default_threads(void) {
  const char *e = getenv("MMPIPE_THREADS");
  if (e && atoi(e) > 0) return atoi(e);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* Encode and write split @s from its checkpoint on. */
static int build_split(story_plan_t *p, out_file_t *o, int s, int nthreads, bool swap_rb,
                       mmp_context_t *ctx) {
  out_split_t *sp = &o->sp[s];
  if (sp->done >= sp->count) return 0;
  pool_t pl = {.plan = p, .split = s, .swap_rb = swap_rb, .next = sp->done, .end = sp->count,
               .window_base = sp->done, .window = 4 * nthreads};
  pl.slots = calloc((size_t)pl.window, sizeof *pl.slots);
  pthread_t *th = calloc((size_t)nthreads, sizeof *th);
  if (!pl.slots || !th) {
    free(pl.slots);
    free(th);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  for (int i = 0; i < pl.window; i++) pl.slots[i].index = -1;
  const char *delay = getenv("MMPIPE_BUILD_STORY_DELAY_MS");
  pl.delay_ms = delay ? atol(delay) : 0;
  pthread_mutex_init(&pl.mu, NULL);
  pthread_cond_init(&pl.work, NULL);
  pthread_cond_init(&pl.done, NULL);
  int started = 0, rc = 0;
  for (; started < nthreads; started++)
    if (pthread_create(&th[started], NULL, worker, &pl) != 0) break;
  if (started == 0) rc = mmp_error_set(MMP_ERUNTIME, "cannot start worker threads");
  char label[64];
  snprintf(label, sizeof label, "%s %s", p->dataset, SPLIT_NAMES[s]);
  mmp_context_progress_begin(ctx, label, sp->count - sp->done);
  double last = now_s();
  int64_t since = 0;
  while (rc == 0 && sp->done < sp->count) {
    if (mmp_context_cancelled(ctx)) {
      rc = MMP_ECANCELED;
      break;
    }
    pthread_mutex_lock(&pl.mu);
    result_t *r = &pl.slots[sp->done % pl.window];
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 200000000;
    if (until.tv_nsec >= 1000000000) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000;
    }
    while (!(r->ready && r->index == sp->done)) {
      if (pthread_cond_timedwait(&pl.done, &pl.mu, &until) != 0) break;
    }
    bool ready = r->ready && r->index == sp->done;
    pthread_mutex_unlock(&pl.mu);
    if (!ready) continue; /* look at the cancel flag again */
    story_h5_lock();
    if (r->rc < 0) {
      MMP_WARN("dataset build", "%s: dropping story %s: %s", SPLIT_NAMES[s], p->stories[s][sp->done].id, r->msg);
      rc = add_hole(sp, sp->done, r->msg);
    } else {
      rc = write_story(o, p, s, sp->done, r);
    }
    story_h5_unlock();
    if (rc < 0) break;
    pthread_mutex_lock(&pl.mu);
    result_clear(r);
    sp->done++;
    pl.window_base = sp->done;
    pthread_cond_broadcast(&pl.work);
    pthread_mutex_unlock(&pl.mu);
    mmp_context_progress_advance(ctx, 1);
    since++;
    if (since >= CHECKPOINT_STORIES || now_s() - last >= CHECKPOINT_SECONDS) {
      story_h5_lock();
      rc = checkpoint(o, s);
      story_h5_unlock();
      since = 0;
      last = now_s();
    }
  }
  pthread_mutex_lock(&pl.mu);
  pl.quit = true;
  pthread_cond_broadcast(&pl.work);
  pthread_mutex_unlock(&pl.mu);
  for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
  mmp_context_progress_end(ctx);
  if (rc == 0 || rc == MMP_ECANCELED) {
    story_h5_lock();
    int crc = checkpoint(o, s);
    story_h5_unlock();
    if (crc < 0) rc = crc;
  }
  for (int i = 0; i < pl.window; i++) result_clear(&pl.slots[i]);
  free(pl.slots);
  free(th);
  pthread_cond_destroy(&pl.work);
  pthread_cond_destroy(&pl.done);
  pthread_mutex_destroy(&pl.mu);
  return rc;
}

/* Copy the stories that are not holes into a fresh file (contiguous
 * datasets cannot shrink). */
static int compact(out_file_t *o, const story_plan_t *p, const char *dst, const char *order) {
  int rc = 0;
  out_file_t c = {.file = -1, .vlen_u8 = -1, .vlen_str = -1};
  c.file = H5Fcreate(dst, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (c.file < 0) {
    H5FAIL(MMP_EIO, "cannot create %s", dst);
    return rc;
  }
  if ((rc = make_types(&c)) < 0 || (rc = attr_write_str(c.file, "mmpipe_png_order", order)) < 0) goto out;
  for (int s = 0; s < STORY_SPLITS && rc == 0; s++) {
    out_split_t *sp = &o->sp[s];
    if ((rc = create_split(&c, s, sp->count - (int64_t)sp->nholes, p)) < 0) break;
    int64_t k = 0;
    size_t h = 0;
    for (int64_t i = 0; i < sp->count && rc == 0; i++) {
      bool hole = false;
      for (h = 0; h < sp->nholes && !hole; h++) hole = sp->holes[h] == i;
      if (hole) continue;
      hsize_t start[1] = {(hsize_t)i}, cnt[1] = {1};
      hid_t ms = H5Screate_simple(1, cnt, NULL);
      for (int f = 0; f < STORY_FRAMES + p->ntext && rc == 0; f++) {
        bool img = f < STORY_FRAMES;
        hid_t d = img ? sp->images[f] : sp->texts[f - STORY_FRAMES];
        hid_t dt = img ? o->vlen_u8 : o->vlen_str;
        hid_t fs = H5Dget_space(d);
        hvl_t v = {0, NULL};
        char *str = NULL;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
        if (H5Dread(d, dt, ms, fs, H5P_DEFAULT, img ? (void *)&v : (void *)&str) < 0) {
          H5FAIL(MMP_EIO, "cannot read back story %lld", (long long)i);
        } else {
          hid_t cd = img ? c.sp[s].images[f] : c.sp[s].texts[f - STORY_FRAMES];
          rc = write_elem(cd, dt, k, img ? (void *)&v : (void *)&str);
          if (img) H5Dvlen_reclaim(dt, ms, H5P_DEFAULT, &v);
          else H5Dvlen_reclaim(dt, ms, H5P_DEFAULT, &str);
        }
        H5Sclose(fs);
      }
      H5Sclose(ms);
      k++;
    }
  }
out:
  out_close(&c);
  return rc;
}

/* ---- report ---- */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static int write_report(const story_plan_t *p, const out_file_t *o, const char *path, const char *out,
                        const int64_t *written) {
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_code();
  FILE *f = mmp_afile_stream(af);
  fprintf(f, "{\n  \"dataset\": ");
  json_str(f, p->dataset);
  fprintf(f, ",\n  \"output\": ");
  json_str(f, out);
  fprintf(f, ",\n  \"splits\": {");
  for (int s = 0; s < STORY_SPLITS; s++) {
    int64_t dropped = (int64_t)o->sp[s].nholes;
    for (size_t i = 0; i < p->drops.n; i++) dropped += p->drops.v[i].split == s;
    fprintf(f, "%s\n    \"%s\": {\"written\": %lld, \"dropped\": %lld}", s ? "," : "", SPLIT_NAMES[s],
            (long long)written[s], (long long)dropped);
  }
  fprintf(f, "\n  },\n  \"dropped\": [");
  bool first = true;
  for (int s = 0; s < STORY_SPLITS; s++) {
    for (size_t i = 0; i < p->drops.n; i++) {
      if (p->drops.v[i].split != s) continue;
      fprintf(f, "%s\n    {\"split\": \"%s\", \"story\": ", first ? "" : ",", SPLIT_NAMES[s]);
      json_str(f, p->drops.v[i].id);
      fprintf(f, ", \"reason\": ");
      json_str(f, p->drops.v[i].reason);
      fprintf(f, "}");
      first = false;
    }
    for (size_t i = 0; i < o->sp[s].nholes; i++) {
      fprintf(f, "%s\n    {\"split\": \"%s\", \"story\": ", first ? "" : ",", SPLIT_NAMES[s]);
      json_str(f, p->stories[s][o->sp[s].holes[i]].id);
      fprintf(f, ", \"reason\": ");
      char buf[700];
      snprintf(buf, sizeof buf, "unreadable file: %s", o->sp[s].hole_reasons[i]);
      json_str(f, buf);
      fprintf(f, "}");
      first = false;
    }
  }
  fprintf(f, "%s],\n  \"notes\": [", first ? "" : "\n  ");
  for (size_t i = 0; i < p->notes.n; i++) {
    fprintf(f, "%s\n    {\"split\": \"%s\", \"story\": ", i ? "," : "", SPLIT_NAMES[p->notes.v[i].split]);
    json_str(f, p->notes.v[i].id);
    fprintf(f, ", \"note\": ");
    json_str(f, p->notes.v[i].reason);
    fprintf(f, "}");
  }
  fprintf(f, "%s]\n}\n", p->notes.n ? "\n  " : "");
  return mmp_afile_commit(af);
}

/* Group reasons by their text up to the first ':' or digit-free prefix:
 * the summary counts kinds, the report lists each story. */
static void print_summary(const story_plan_t *p, const out_file_t *o, const int64_t *written,
                          const char *out, const char *report) {
  printf("%s: wrote %s\n", p->dataset, out);
  printf("  %-6s %10s %10s\n", "split", "stories", "dropped");
  for (int s = 0; s < STORY_SPLITS; s++) {
    int64_t dropped = (int64_t)o->sp[s].nholes;
    for (size_t i = 0; i < p->drops.n; i++) dropped += p->drops.v[i].split == s;
    printf("  %-6s %10lld %10lld\n", SPLIT_NAMES[s], (long long)written[s], (long long)dropped);
  }
  size_t shown = 0;
  for (size_t i = 0; i < p->drops.n && shown < 10; i++, shown++)
    printf("  dropped %s/%s: %s\n", SPLIT_NAMES[p->drops.v[i].split], p->drops.v[i].id, p->drops.v[i].reason);
  for (int s = 0; s < STORY_SPLITS; s++)
    for (size_t i = 0; i < o->sp[s].nholes && shown < 10; i++, shown++)
      printf("  dropped %s/%s: unreadable file: %s\n", SPLIT_NAMES[s], p->stories[s][o->sp[s].holes[i]].id,
             o->sp[s].hole_reasons[i]);
  size_t total = p->drops.n;
  for (int s = 0; s < STORY_SPLITS; s++) total += o->sp[s].nholes;
  if (total > shown) printf("  ... %zu more dropped\n", total - shown);
  if (p->notes.n) printf("  %zu remarks on kept stories\n", p->notes.n);
  printf("  report: %s\n", report);
}

/* ---- the build ---- */

int story_build_run(story_plan_t *p, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  if (!req || req->struct_size < offsetof(mmp_dataset_build_t, flags) + sizeof req->flags || !req->out_path)
    return mmp_error_set(MMP_EINVAL, "%s: bad build request", p->dataset);
  int64_t limit = req->struct_size >= offsetof(mmp_dataset_build_t, limit) + sizeof req->limit ? req->limit : 0;
  if (limit > 0)
    for (int s = 0; s < STORY_SPLITS; s++)
      if (p->n[s] > limit) {
        for (int64_t i = limit; i < p->n[s]; i++) {
          pstory_t *st = &p->stories[s][i];
          free(st->id);
          for (int f = 0; f < STORY_FRAMES; f++) free(st->frames[f]);
          for (int t = 0; t < MAX_TEXTS; t++) free(st->texts[t]);
        }
        p->n[s] = limit;
      }
  bool swap_rb = (req->flags & MMP_DATASET_BUILD_TRUE_RGB) == 0;
  const char *order = swap_rb ? "BGR" : "RGB";
  char partial[4200], compacted[4200], report[4200], digest[32];
  snprintf(partial, sizeof partial, "%s.partial", req->out_path);
  snprintf(compacted, sizeof compacted, "%s.compact", req->out_path);
  if (req->report_path) snprintf(report, sizeof report, "%s", req->report_path);
  else snprintf(report, sizeof report, "%s.report.json", req->out_path);
  snprintf(digest, sizeof digest, "%016llx", (unsigned long long)plan_digest(p, req->flags & MMP_DATASET_BUILD_TRUE_RGB, limit));
  int nthreads = req->threads > 0 ? req->threads : default_threads();
  if (nthreads > 256) nthreads = 256;

  out_file_t o = {.file = -1, .vlen_u8 = -1, .vlen_str = -1};
  int rc = 0;
  story_h5_lock();
  H5E_BEGIN_TRY {
    bool resumed = false;
    struct stat st;
    if (stat(partial, &st) == 0) {
      if (req->flags & MMP_DATASET_BUILD_NO_RESUME) {
        MMP_INFO("dataset build", "discarding the interrupted build %s", partial);
      } else {
        char why[512];
        resumed = resume_partial(&o, partial, p, digest, why);
        if (resumed) {
          int64_t done = 0, total = 0;
          for (int s = 0; s < STORY_SPLITS; s++) {
            done += o.sp[s].done;
            total += o.sp[s].count;
          }
          MMP_INFO("dataset build", "resuming %s: %lld of %lld stories already written", partial,
                   (long long)done, (long long)total);
        } else {
          MMP_WARN("dataset build", "%s is not a resumable build of this plan (%s); starting over", partial, why);
          out_close(&o);
        }
      }
    }
    if (!resumed) {
      unlink(partial);
      o.file = H5Fcreate(partial, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
      if (o.file < 0) H5FAIL(MMP_EIO, "cannot create %s", partial);
      if (rc == 0) rc = make_types(&o);
      if (rc == 0) rc = attr_write_str(o.file, "mmpipe_build_plan", digest);
      if (rc == 0) rc = attr_write_str(o.file, "mmpipe_png_order", order);
      for (int s = 0; s < STORY_SPLITS && rc == 0; s++) {
        rc = create_split(&o, s, p->n[s], p);
        if (rc == 0) rc = checkpoint(&o, s);
      }
    }
  }
  H5E_END_TRY;
  story_h5_unlock();
  if (rc < 0) goto out;

  H5E_BEGIN_TRY {
    for (int s = 0; s < STORY_SPLITS && rc == 0; s++) rc = build_split(p, &o, s, nthreads, swap_rb, ctx);
  }
  H5E_END_TRY;
  if (rc == MMP_ECANCELED) {
    int64_t done = 0, total = 0;
    for (int s = 0; s < STORY_SPLITS; s++) {
      done += o.sp[s].done;
      total += o.sp[s].count;
    }
    rc = mmp_error_set(MMP_ECANCELED, "interrupted after %lld of %lld stories; %s keeps them: run the same "
                                      "command again to resume",
                       (long long)done, (long long)total, partial);
    goto out;
  }
  if (rc < 0) goto out;

  int64_t written[STORY_SPLITS];
  size_t holes = 0;
  for (int s = 0; s < STORY_SPLITS; s++) {
    written[s] = o.sp[s].count - (int64_t)o.sp[s].nholes;
    holes += o.sp[s].nholes;
  }
  const char *final = partial;
  story_h5_lock();
  H5E_BEGIN_TRY {
    if (holes) {
      rc = compact(&o, p, compacted, order);
      final = compacted;
    } else {
      /* the bookkeeping goes; the file is then what a fresh build writes */
      for (int s = 0; s < STORY_SPLITS; s++) {
        H5Adelete(o.sp[s].group, "mmpipe_done");
        H5Adelete(o.sp[s].group, "mmpipe_holes");
      }
      H5Adelete(o.file, "mmpipe_build_plan");
    }
  }
  H5E_END_TRY;
  story_h5_unlock();
  if (rc < 0) goto out;
  if ((rc = write_report(p, &o, report, req->out_path, written)) < 0) goto out;
  if (!(req->flags & MMP_DATASET_BUILD_QUIET)) print_summary(p, &o, written, req->out_path, report);
  story_h5_lock();
  out_close(&o);
  story_h5_unlock();
  if (rename(final, req->out_path) != 0) {
    rc = mmp_error_set(MMP_EIO, "cannot rename %s to %s: %s", final, req->out_path, strerror(errno));
    goto out;
  }
  if (holes) unlink(partial);
out:
  story_h5_lock();
  out_close(&o);
  story_h5_unlock();
  return rc;
}

/* ---- a string map (open addressing, FNV-1a) ---- */

typedef struct map_slot {
  char *key;
  void *value;
} map_slot_t;

struct story_map {
  map_slot_t *slots;
  size_t cap, n;
};

story_map_t *story_map_new(void) {
  story_map_t *m = calloc(1, sizeof *m);
  if (m) m->slots = calloc((m->cap = 64), sizeof *m->slots);
  if (!m || !m->slots) {
    free(m);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  return m;
}

void story_map_free(story_map_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->cap; i++) free(m->slots[i].key);
  free(m->slots);
  free(m);
}

static size_t map_hash(const char *k) {
  uint64_t h = 0xcbf29ce484222325ull;
  fnv(&h, k, strlen(k));
  return (size_t)h;
}

static map_slot_t *map_find(const story_map_t *m, const char *key) {
  size_t i = map_hash(key) & (m->cap - 1);
  while (m->slots[i].key && strcmp(m->slots[i].key, key) != 0) i = (i + 1) & (m->cap - 1);
  return &m->slots[i];
}

int story_map_put(story_map_t *m, const char *key, void *value) {
  if (2 * (m->n + 1) > m->cap) {
    story_map_t bigger = {calloc(2 * m->cap, sizeof(map_slot_t)), 2 * m->cap, m->n};
    if (!bigger.slots) return mmp_error_set(MMP_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i].key) *map_find(&bigger, m->slots[i].key) = m->slots[i];
    free(m->slots);
    *m = bigger;
  }
  map_slot_t *s = map_find(m, key);
  if (!s->key) {
    if (!(s->key = strdup(key))) return mmp_error_set(MMP_ENOMEM, "out of memory");
    m->n++;
  }
  s->value = value;
  return 0;
}

void *story_map_get(const story_map_t *m, const char *key) { return map_find(m, key)->value; }
