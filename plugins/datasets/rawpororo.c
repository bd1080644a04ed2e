/* plugins/datasets/rawpororo.c - the PororoSV raw release as a story plan (AR-LDM's data_script/pororo_hdf5.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/error.h>
#include <mmpipe/pickle.h>

#include "plugins/datasets/npy.h"
#include "plugins/datasets/story.h"
#include "plugins/datasets/storybuild.h"

/* Largest index file accepted (the real ones: 1-20 MiB). */
#define MAX_INDEX_BYTES ((size_t)1 << 30)

static const char *const SPL[] = {"train", "val", "test"};

/* A byte string of an '|S' array as pororo_hdf5.py turns it into a path:
 * str(b)[2:-1], the inside of Python's repr of the bytes (NumPy drops
 * trailing NULs). (transfer full) */
static char *bytes_path(const uint8_t *p, size_t size) {
  while (size && p[size - 1] == 0) size--;
  bool sq = memchr(p, '\'', size) != NULL, dq = memchr(p, '"', size) != NULL;
  char quote = sq && !dq ? '"' : '\'';
  char *o = malloc(4 * size + 1), *w = o;
  if (!o) return NULL;
  for (size_t i = 0; i < size; i++) {
    uint8_t c = p[i];
    if (c == (uint8_t)quote || c == '\\') {
      *w++ = '\\';
      *w++ = (char)c;
    } else if (c == '\t' || c == '\n' || c == '\r') {
      *w++ = '\\';
      *w++ = c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
    } else if (c < 0x20 || c >= 0x7f) {
      w += sprintf(w, "\\x%02x", c);
    } else {
      *w++ = (char)c;
    }
  }
  *w = 0;
  return o;
}

/* A pickled str as Python 3 reads it with encoding='latin1': Python 2
 * strings byte by byte as code points, others as stored. (transfer full) */
static char *py_text(const mmp_pickle_value_t *v) {
  size_t n = 0;
  const char *s = mmp_pickle_str(v, &n);
  if (!s || mmp_pickle_kind(v) != MMP_PICKLE_STR) return NULL;
  char *o = malloc(2 * n + 1), *w = o;
  if (!o) return NULL;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = (uint8_t)s[i];
    if (mmp_pickle_str_py2(v) && c >= 0x80) {
      *w++ = (char)(0xC0 | c >> 6);
      *w++ = (char)(0x80 | (c & 0x3F));
    } else {
      *w++ = (char)c;
    }
  }
  *w = 0;
  return o;
}

/* Python's str.replace(old, ''): every occurrence, left to right. */
static void remove_all(char *s, const char *old) {
  size_t ol = strlen(old);
  char *r = s, *w = s;
  while (*r) {
    if (strncmp(r, old, ol) == 0) r += ol;
    else *w++ = *r++;
  }
  *w = 0;
}

/* An '|S' array file (img_cache4.npy [N], following_cache4.npy [N, K]). */
static int load_bytes_array(const char *path, int ndim, uint8_t **buf, npy_t *a) {
  size_t n = 0;
  int rc = npy_read_file(path, MAX_INDEX_BYTES, buf, &n);
  if (rc < 0) return rc;
  if ((rc = npy_parse(*buf, n, path, a)) < 0) return rc;
  if (a->kind != 'S' || a->ndim != ndim || a->fortran_order || (ndim == 2 && a->shape[1] < 4))
    return mmp_error_set(MMP_EDATA, "%s: '%s' of %d dimensions%s: want byte strings ('|S') of shape %s", path, a->descr,
                         a->ndim, a->fortran_order ? " in Fortran order" : "", ndim == 1 ? "[N]" : "[N, 4]");
  return 0;
}

typedef struct ids {
  int64_t *v;
  size_t n;
} ids_t;

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* One split's ids: a pickled int array, or a list or tuple of ints. */
static int ids_from(const mmp_pickle_value_t *v, const char *path, int s, ids_t *out) {
  npy_t a;
  mmp_pickle_kind_t k = mmp_pickle_kind(v);
  if (npy_is_pickled_array(v)) {
    if (npy_from_pickle(v, path, &a) < 0) return mmp_error_code();
    if (a.ndim != 1 || (a.kind != 'i' && a.kind != 'u' && a.kind != 'O'))
      return mmp_error_set(MMP_EDATA, "%s: the %s ids are an array of '%s' of %d dimensions, not integers [N]", path,
                           SPL[s], a.descr, a.ndim);
  } else if (k != MMP_PICKLE_LIST && k != MMP_PICKLE_TUPLE) {
    return mmp_error_set(MMP_EDATA, "%s: the %s ids are neither an array nor a list", path, SPL[s]);
  } else {
    memset(&a, 0, sizeof a);
    a.kind = 'O';
    a.items = v;
    a.count = (int64_t)mmp_pickle_len(v);
  }
  if (!(out->v = malloc(((size_t)a.count + 1) * sizeof *out->v))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  out->n = (size_t)a.count;
  for (int64_t i = 0; i < a.count; i++) {
    if (a.kind != 'O') {
      if (a.kind == 'u' && a.itemsize == 8 && npy_int_at(&a, i) < 0)
        return mmp_error_set(MMP_EDATA, "%s: %s id %lld is out of range", path, SPL[s], (long long)i);
      out->v[i] = npy_int_at(&a, i);
    } else if (npy_pickle_int(mmp_pickle_item(a.items, (size_t)i), &out->v[i]) < 0) {
      return mmp_error_set(MMP_EDATA, "%s: %s id %lld is not an integer", path, SPL[s], (long long)i);
    }
  }
  qsort(out->v, out->n, sizeof *out->v, cmp_i64); /* np.sort */
  return 0;
}

/* train_seen_unseen_ids.npy: train_ids, val_ids, test_ids = np.load(...) */
static int load_ids(const char *path, ids_t ids[3]) {
  uint8_t *buf = NULL;
  size_t n = 0;
  npy_t top;
  int rc = npy_read_file(path, MAX_INDEX_BYTES, &buf, &n);
  if (rc == 0) rc = npy_parse(buf, n, path, &top);
  if (rc < 0) goto out;
  if (top.kind == 'i' || top.kind == 'u') { /* three lists of one length: a plain [3, N] array */
    if (top.ndim != 2 || top.shape[0] != 3 || top.fortran_order) {
      rc = mmp_error_set(MMP_EDATA, "%s: an integer array of %d dimensions: want [3, N] (train, val, test)", path,
                         top.ndim);
      goto out;
    }
    for (int s = 0; s < 3 && rc == 0; s++) {
      size_t m = (size_t)top.shape[1];
      if (!(ids[s].v = malloc((m + 1) * sizeof *ids[s].v))) {
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
        break;
      }
      ids[s].n = m;
      for (size_t i = 0; i < m; i++) ids[s].v[i] = npy_int_at(&top, (int64_t)(s * m + i));
      qsort(ids[s].v, m, sizeof *ids[s].v, cmp_i64);
    }
    goto out;
  }
  mmp_pickle_t *pk = NULL;
  npy_t a;
  if ((rc = npy_load_object_file(path, MAX_INDEX_BYTES, &pk, &a)) < 0) goto out;
  if (a.count != 3 || a.ndim != 1)
    rc = mmp_error_set(MMP_EDATA, "%s: an object array of %lld items: want 3 (train, val, test ids)", path,
                       (long long)a.count);
  for (int s = 0; s < 3 && rc == 0; s++) rc = ids_from(mmp_pickle_item(a.items, (size_t)s), path, s, &ids[s]);
  mmp_pickle_free(pk);
out:
  free(buf);
  return rc;
}

/* descriptions.npy: {frame id: [captions]} in a 0-d object array. */
static int load_descriptions(const char *path, mmp_pickle_t **pk, story_map_t *map) {
  npy_t a;
  int rc = npy_load_object_file(path, MAX_INDEX_BYTES, pk, &a);
  if (rc < 0) return rc;
  const mmp_pickle_value_t *d = mmp_pickle_item(a.items, 0);
  if (a.count != 1 || mmp_pickle_kind(d) != MMP_PICKLE_DICT)
    return mmp_error_set(MMP_EDATA, "%s: not one dict in an object array (np.load(...).item())", path);
  for (size_t i = 0; i < mmp_pickle_len(d) && rc == 0; i++) {
    char *key = py_text(mmp_pickle_key(d, i));
    if (key) rc = story_map_put(map, key, (void *)mmp_pickle_item(d, i)); /* other keys cannot match a path */
    free(key);
  }
  return rc;
}

/* descriptions[id][0] as text (transfer full), or NULL and why in @why. */
static char *first_caption(const mmp_pickle_value_t *v, const char **why) {
  mmp_pickle_kind_t k = mmp_pickle_kind(v);
  const mmp_pickle_value_t *first = NULL;
  if (k == MMP_PICKLE_LIST || k == MMP_PICKLE_TUPLE) {
    first = mmp_pickle_item(v, 0);
  } else if (npy_is_pickled_array(v)) {
    npy_t a;
    if (npy_from_pickle(v, "descriptions.npy", &a) == 0 && a.kind == 'O' && a.count > 0)
      first = mmp_pickle_item(a.items, 0);
    mmp_error_clear();
  } else {
    *why = "is not a list of captions";
    return NULL;
  }
  if (!first) {
    *why = "is an empty list";
    return NULL;
  }
  char *t = py_text(first);
  if (!t) *why = "does not start with a str";
  return t;
}

int story_build_pororo(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  static const char *const known[] = {NULL};
  int rc = story_build_check_options(req, d->name, known);
  if (rc < 0) return rc;
  if (!req->raw_dir) return mmp_error_set(MMP_EINVAL, "%s: no raw directory given (--raw)", d->name);
  char path[4200], img_path[4200];
  mmp_pickle_t *dpk = NULL;
  uint8_t *ibuf = NULL, *fbuf = NULL;
  npy_t imgs, fol;
  ids_t ids[3] = {{0}};
  story_map_t *desc = story_map_new();
  const char *tn[] = {"text"};
  story_plan_t *plan = story_plan_new(d->name, 1, tn, story_load_image, NULL);
  if (!desc || !plan) {
    rc = mmp_error_code();
    goto out;
  }
  snprintf(path, sizeof path, "%s/descriptions.npy", req->raw_dir);
  if ((rc = load_descriptions(path, &dpk, desc)) < 0) goto out;
  snprintf(path, sizeof path, "%s/img_cache4.npy", req->raw_dir);
  if ((rc = load_bytes_array(path, 1, &ibuf, &imgs)) < 0) goto out;
  snprintf(path, sizeof path, "%s/following_cache4.npy", req->raw_dir);
  if ((rc = load_bytes_array(path, 2, &fbuf, &fol)) < 0) goto out;
  snprintf(path, sizeof path, "%s/train_seen_unseen_ids.npy", req->raw_dir);
  if ((rc = load_ids(path, ids)) < 0) goto out;
  for (int s = 0; s < STORY_SPLITS && rc == 0; s++) {
    for (size_t i = 0; i < ids[s].n && rc == 0; i++) {
      int64_t item = ids[s].v[i];
      char id[32];
      snprintf(id, sizeof id, "%lld", (long long)item);
      /* NumPy indexing: negative ids count from the end */
      int64_t ii = item < 0 ? item + imgs.shape[0] : item, fi = item < 0 ? item + fol.shape[0] : item;
      if (ii < 0 || ii >= imgs.shape[0] || fi < 0 || fi >= fol.shape[0]) {
        rc = story_plan_drop(plan, s, id, "index %lld outside img_cache4.npy (%lld entries) or following_cache4.npy "
                                          "(%lld)", (long long)item, (long long)imgs.shape[0], (long long)fol.shape[0]);
        continue;
      }
      char *paths[STORY_FRAMES] = {0}, *caps[STORY_FRAMES] = {0}, *frames[STORY_FRAMES] = {0};
      bool ok = true;
      for (int j = 0; j < STORY_FRAMES && rc == 0; j++) {
        const uint8_t *p = j == 0 ? imgs.data + (size_t)ii * imgs.itemsize
                                  : fol.data + ((size_t)fi * (size_t)fol.shape[1] + (size_t)(j - 1)) * fol.itemsize;
        if (!(paths[j] = bytes_path(p, j == 0 ? imgs.itemsize : fol.itemsize))) {
          rc = mmp_error_set(MMP_ENOMEM, "out of memory");
          break;
        }
        char entry[96];
        if (j == 0) snprintf(entry, sizeof entry, "entry %lld", (long long)ii);
        else snprintf(entry, sizeof entry, "entry [%lld][%d]", (long long)fi, j - 1);
        rc = story_path_check(paths[j], j == 0 ? "img_cache4.npy" : "following_cache4.npy", entry);
      }
      for (int j = 0; j < STORY_FRAMES && ok && rc == 0; j++) {
        snprintf(img_path, sizeof img_path, "%s/%s", req->raw_dir, paths[j]);
        if (access(img_path, R_OK) != 0) {
          rc = story_plan_drop(plan, s, id, "missing image %s", paths[j]);
          ok = false;
          break;
        }
        if (!(frames[j] = strdup(img_path))) {
          rc = mmp_error_set(MMP_ENOMEM, "out of memory");
          break;
        }
        remove_all(paths[j], ".png"); /* str(img_path).replace('.png', '') */
        const mmp_pickle_value_t *dv = story_map_get(desc, paths[j]);
        const char *why = NULL;
        char *t = dv ? first_caption(dv, &why) : NULL;
        if (!t) {
          if (dv && !why) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
          else if (!dv) rc = story_plan_drop(plan, s, id, "no description for %s in descriptions.npy", paths[j]);
          else rc = story_plan_drop(plan, s, id, "the description of %s in descriptions.npy %s", paths[j], why);
          ok = false;
          break;
        }
        caps[j] = story_clean_caption(t);
        free(t);
        if (!caps[j]) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      }
      if (ok && rc == 0) rc = story_plan_add_captions(plan, s, id, (const char *const *)frames, caps);
      for (int j = 0; j < STORY_FRAMES; j++) {
        free(paths[j]);
        free(caps[j]);
        free(frames[j]);
      }
    }
  }
  if (rc == 0) rc = story_build_run(plan, req, ctx);
out:
  story_plan_free(plan);
  story_map_free(desc);
  mmp_pickle_free(dpk);
  free(ibuf);
  free(fbuf);
  for (int s = 0; s < 3; s++) free(ids[s].v);
  return rc;
}
