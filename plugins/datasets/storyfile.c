/* plugins/datasets/storyfile.c - AR-LDM story HDF5 files: layout checks and element reads (libhdf5). */
#include "plugins/datasets/storyfile.h"
#include "plugins/datasets/h5raw.h"

#include <hdf5.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/error.h>

/* One lock for every HDF5 call in the process: the library has global state
 * (and is not thread-safe in many builds). The only global of this file. */
static pthread_mutex_t h5_lock = PTHREAD_MUTEX_INITIALIZER;

struct story_file {
  char *path;
  char *split;
  char *text_name;
  hid_t file, group;
  hid_t images[STORY_FRAMES];
  hid_t text;
  int64_t count;
  h5raw_t raw;        /* the same file, read by the format (h5raw.h) */
  bool png_bgr;       /* PNGs hold B, G, R (unless mmpipe_png_order = "RGB") */
};

/* Largest element accepted: a frame's PNG bytes, a story's text. */
#define STORY_MAX_IMAGE_BYTES ((int64_t)64 << 20)
#define STORY_MAX_TEXT_BYTES ((int64_t)1 << 20)

/* Record a failed HDF5 call with the library's own message. */
#define H5FAIL(code, what, ...)                                                          \
  do {                                                                                   \
    char h5m_[256];                                                                      \
    h5raw_hdf5_message(h5m_);                                                            \
    mmp_error_set((code), what ": %s [%s:%d]", __VA_ARGS__, h5m_, __FILE__, __LINE__);    \
  } while (0)

static void close_ids(story_file_t *f) {
  for (int i = 0; i < STORY_FRAMES; i++)
    if (f->images[i] > 0) H5Dclose(f->images[i]);
  if (f->text > 0) H5Dclose(f->text);
  if (f->group > 0) H5Gclose(f->group);
  if (f->file > 0) H5Fclose(f->file);
}

void story_file_close(story_file_t *f) {
  if (!f) return;
  if (f->raw.fd >= 0) close(f->raw.fd);
  pthread_mutex_lock(&h5_lock);
  close_ids(f);
  pthread_mutex_unlock(&h5_lock);
  free(f->path);
  free(f->split);
  free(f->text_name);
  free(f);
}

/* Length of a 1-D dataset, or -1 with the error set. */
static int64_t dataset_length(hid_t d, const char *path, const char *name) {
  hid_t sp = H5Dget_space(d);
  if (sp < 0) {
    H5FAIL(MMP_EDATA, "%s: cannot read the shape of %s", path, name);
    return -1;
  }
  int rank = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[1] = {0};
  if (rank != 1) {
    H5Sclose(sp);
    mmp_error_set(MMP_EDATA, "%s: dataset %s has %d dimensions, expected 1 (one element per story)",
                  path, name, rank);
    return -1;
  }
  H5Sget_simple_extent_dims(sp, dims, NULL);
  H5Sclose(sp);
  return (int64_t)dims[0];
}

static int check_vlen_u8(hid_t d, const char *path, const char *name) {
  hid_t t = H5Dget_type(d);
  int ok = 0;
  if (t >= 0 && H5Tget_class(t) == H5T_VLEN) {
    hid_t base = H5Tget_super(t);
    ok = base >= 0 && H5Tget_class(base) == H5T_INTEGER && H5Tget_size(base) == 1;
    if (base >= 0) H5Tclose(base);
  }
  if (t >= 0) H5Tclose(t);
  if (!ok)
    return mmp_error_set(MMP_EDATA,
                         "%s: dataset %s is not variable-length uint8 (PNG bytes as AR-LDM writes them)",
                         path, name);
  return 0;
}

static int check_vlen_str(hid_t d, const char *path, const char *name) {
  hid_t t = H5Dget_type(d);
  int ok = t >= 0 && H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0;
  if (t >= 0) H5Tclose(t);
  if (!ok)
    return mmp_error_set(MMP_EDATA, "%s: dataset %s is not a variable-length string", path, name);
  return 0;
}

static hid_t open_dataset(const story_file_t *f, const char *name) {
  htri_t ex = H5Lexists(f->group, name, H5P_DEFAULT);
  if (ex <= 0) {
    mmp_error_set(MMP_EDATA, "%s: group '%s' has no dataset '%s'", f->path, f->split, name);
    return -1;
  }
  char why[256];
  if (h5raw_check_link(f->group, &f->raw, name, false, NULL, why) < 0) {
    mmp_error_set(MMP_EDATA, "%s: %s/%s: %s", f->path, f->split, name, why);
    return -1;
  }
  hid_t d = H5Dopen2(f->group, name, H5P_DEFAULT);
  if (d < 0) H5FAIL(MMP_EDATA, "%s: cannot open %s/%s", f->path, f->split, name);
  return d;
}

/* A variable-length dataset must be contiguous: its elements (a 4-byte
 * length and a global heap ID each) are then where check_vlen_len reads
 * them. The h5py files of AR-LDM are. */
static int check_contiguous(const story_file_t *f, hid_t d, const char *name, int64_t count) {
  /* every element is stored in the file: the count is bounded by its size
   * before anything is sized by it */
  if (count > f->raw.size / h5raw_vlen_element_size(&f->raw))
    return mmp_error_set(MMP_EDATA, "%s: %s/%s claims %lld elements, more than a %lld-byte file holds",
                         f->path, f->split, name, (long long)count, (long long)f->raw.size);
  hid_t dcpl = H5Dget_create_plist(d);
  H5D_layout_t lay = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
  if (dcpl >= 0) H5Pclose(dcpl);
  if (lay != H5D_CONTIGUOUS)
    return mmp_error_set(MMP_EDATA,
                         "%s: %s/%s is not stored contiguously (chunked or compact variable-length "
                         "datasets are not read)", f->path, f->split, name);
  return 0;
}

static int open_locked(story_file_t *f) {
  int rc = MMP_EDATA;
  f->file = H5Fopen(f->path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f->file < 0) {
    H5FAIL(MMP_EIO, "cannot open HDF5 file %s", f->path);
    return MMP_EIO;
  }
  uint64_t root = 0;
  if ((rc = h5raw_open(f->file, f->path, &f->raw, &root)) < 0) return rc;
  rc = MMP_EDATA;
  /* the root's attribute, read from its header: libhdf5 is not asked to
   * decode the root's attributes (their datatypes and data are decoded
   * without bounds in 1.10) */
  f->png_bgr = true;
  char order[8];
  int arc = h5raw_attr_string(&f->raw, root, "mmpipe_png_order", order, sizeof order);
  if (arc == MMP_EDATA) {
    char why[256];
    snprintf(why, sizeof why, "%s", mmp_error_last());
    return mmp_error_set(MMP_EDATA, "%s: the root group: %s", f->path, why);
  }
  if (arc == 0) f->png_bgr = strcmp(order, "RGB") != 0;
  if (H5Lexists(f->file, f->split, H5P_DEFAULT) <= 0) {
    return mmp_error_set(MMP_EDATA, "%s: no group '%s' (AR-LDM files have train, val and test)",
                         f->path, f->split);
  }
  char why[256];
  if (h5raw_check_link(f->file, &f->raw, f->split, true, NULL, why) < 0)
    return mmp_error_set(MMP_EDATA, "%s: group '%s': %s", f->path, f->split, why);
  f->group = H5Gopen2(f->file, f->split, H5P_DEFAULT);
  if (f->group < 0) {
    H5FAIL(MMP_EDATA, "%s: '%s' is not a group", f->path, f->split);
    return MMP_EDATA;
  }
  char name[16];
  for (int i = 0; i < STORY_FRAMES; i++) {
    snprintf(name, sizeof name, "image%d", i);
    if ((f->images[i] = open_dataset(f, name)) < 0) return rc;
    if (check_vlen_u8(f->images[i], f->path, name) < 0) return rc;
    int64_t n = dataset_length(f->images[i], f->path, name);
    if (n < 0) return rc;
    if (check_contiguous(f, f->images[i], name, n) < 0) return rc;
    if (i == 0) f->count = n;
    if (n != f->count)
      return mmp_error_set(MMP_EDATA, "%s: %s/%s has %lld elements but image0 has %lld", f->path,
                           f->split, name, (long long)n, (long long)f->count);
  }
  if (!f->text_name) return 0; /* images only (dataset info) */
  if ((f->text = open_dataset(f, f->text_name)) < 0) return rc;
  if (check_vlen_str(f->text, f->path, f->text_name) < 0) return rc;
  int64_t n = dataset_length(f->text, f->path, f->text_name);
  if (n < 0) return rc;
  if (check_contiguous(f, f->text, f->text_name, n) < 0) return rc;
  if (n != f->count)
    return mmp_error_set(MMP_EDATA, "%s: %s/%s has %lld stories but image0 has %lld", f->path,
                         f->split, f->text_name, (long long)n, (long long)f->count);
  return 0;
}

story_file_t *story_file_open(const char *path, const char *split, const char *text_name) {
  story_file_t *f = calloc(1, sizeof *f);
  if (!f) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  f->path = strdup(path);
  f->split = strdup(split);
  f->text_name = text_name ? strdup(text_name) : NULL;
  f->file = f->group = f->text = -1;
  f->raw.fd = -1;
  for (int i = 0; i < STORY_FRAMES; i++) f->images[i] = -1;
  if (!f->path || !f->split || (text_name && !f->text_name)) {
    story_file_close(f);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  int rc;
  pthread_mutex_lock(&h5_lock);
  H5E_BEGIN_TRY { rc = open_locked(f); }
  H5E_END_TRY;
  pthread_mutex_unlock(&h5_lock);
  if (rc < 0) {
    story_file_close(f);
    return NULL;
  }
  return f;
}

int64_t story_file_count(const story_file_t *f) { return f->count; }
bool story_file_png_bgr(const story_file_t *f) { return f->png_bgr; }
void story_h5_lock(void) { pthread_mutex_lock(&h5_lock); }
void story_h5_unlock(void) { pthread_mutex_unlock(&h5_lock); }
const char *story_file_path(const story_file_t *f) { return f->path; }

/* The length element @index of the variable-length dataset @d claims,
 * read from the file before HDF5 reads the element: HDF5 allocates that
 * many bytes first (up to 4 GiB for a corrupt length). Bounded by @max and
 * by the file's size, and the heap object it names checked
 * (h5raw_check_vlen_element). */
static int check_vlen_len(story_file_t *f, hid_t d, int64_t index, int64_t max, const char *name) {
  if (h5raw_check_vlen_element(&f->raw, d, index, max) == 0) return 0;
  return mmp_error_prefix("%s: story %lld: %s/%s: ", f->path, (long long)index, f->split, name);
}

int story_file_read_image(story_file_t *f, int64_t index, int frame, uint8_t **bytes, size_t *n) {
  if (index < 0 || index >= f->count || frame < 0 || frame >= STORY_FRAMES)
    return mmp_error_set(MMP_EINVAL, "%s: story %lld frame %d out of range (%lld stories)", f->path,
                         (long long)index, frame, (long long)f->count);
  int rc = 0;
  uint8_t *copy = NULL;
  size_t len = 0;
  char name[16];
  snprintf(name, sizeof name, "image%d", frame);
  pthread_mutex_lock(&h5_lock);
  H5E_BEGIN_TRY { rc = check_vlen_len(f, f->images[frame], index, STORY_MAX_IMAGE_BYTES, name); }
  H5E_END_TRY;
  if (rc < 0) {
    pthread_mutex_unlock(&h5_lock);
    return rc;
  }
  H5E_BEGIN_TRY {
    hid_t mt = H5Tvlen_create(H5T_NATIVE_UINT8);
    hvl_t v = {0, NULL};
    hid_t fs = H5Dget_space(f->images[frame]);
    hsize_t start = (hsize_t)index, count = 1;
    hid_t ms = H5Screate_simple(1, &count, NULL);
    herr_t st = (mt < 0 || fs < 0 || ms < 0) ? -1
                : H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL);
    if (st >= 0) st = H5Dread(f->images[frame], mt, ms, fs, H5P_DEFAULT, &v);
    if (st < 0) {
      H5FAIL(MMP_EDATA, "%s: story %lld: cannot read %s/image%d", f->path, (long long)index,
             f->split, frame);
      rc = MMP_EDATA;
    } else {
      len = v.len;
      if (len > 0) {
        copy = malloc(len);
        if (copy) memcpy(copy, v.p, len);
        else rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      }
      H5Dvlen_reclaim(mt, ms, H5P_DEFAULT, &v);
    }
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (mt >= 0) H5Tclose(mt);
  }
  H5E_END_TRY;
  pthread_mutex_unlock(&h5_lock);
  if (rc < 0) return rc;
  if (len == 0)
    return mmp_error_set(MMP_EDATA, "%s: story %lld: missing frame %d (%s/image%d is empty)",
                         f->path, (long long)index, frame, f->split, frame);
  *bytes = copy;
  *n = len;
  return 0;
}

int64_t story_utf8_invalid_at(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      k = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3;
      cp = c & 0x07;
    } else {
      return (int64_t)i;
    }
    if (i + k >= n) return (int64_t)i;
    for (size_t j = 1; j <= k; j++) {
      if ((p[i + j] & 0xC0) != 0x80) return (int64_t)i;
      cp = (cp << 6) | (p[i + j] & 0x3F);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return (int64_t)i;
    i += k + 1;
  }
  return -1;
}

static int read_text_locked(story_file_t *f, int64_t index, char **text) {
  int rc0 = check_vlen_len(f, f->text, index, STORY_MAX_TEXT_BYTES, f->text_name);
  if (rc0 < 0) return rc0;
  hid_t mt = H5Tcopy(H5T_C_S1);
  H5Tset_size(mt, H5T_VARIABLE);
  H5Tset_cset(mt, H5T_CSET_UTF8);
  char *s = NULL;
  hid_t fs = H5Dget_space(f->text);
  hsize_t start = (hsize_t)index, count = 1;
  hid_t ms = H5Screate_simple(1, &count, NULL);
  herr_t st = H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL);
  if (st >= 0) st = H5Dread(f->text, mt, ms, fs, H5P_DEFAULT, &s);
  int rc = 0;
  if (st < 0) {
    H5FAIL(MMP_EDATA, "%s: story %lld: cannot read %s/%s", f->path, (long long)index, f->split,
           f->text_name);
    rc = MMP_EDATA;
  } else {
    *text = strdup(s ? s : "");
    if (!*text) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    H5Dvlen_reclaim(mt, ms, H5P_DEFAULT, &s);
  }
  H5Sclose(ms);
  H5Sclose(fs);
  H5Tclose(mt);
  return rc;
}

int story_file_read_text(story_file_t *f, int64_t index, char **text) {
  if (!f->text_name) return mmp_error_set(MMP_EINVAL, "%s: opened without a text dataset", f->path);
  if (index < 0 || index >= f->count)
    return mmp_error_set(MMP_EINVAL, "%s: story %lld out of range (%lld stories)", f->path,
                         (long long)index, (long long)f->count);
  int rc;
  *text = NULL;
  pthread_mutex_lock(&h5_lock);
  H5E_BEGIN_TRY { rc = read_text_locked(f, index, text); }
  H5E_END_TRY;
  pthread_mutex_unlock(&h5_lock);
  if (rc < 0) return rc;
  int64_t bad = story_utf8_invalid_at(*text, strlen(*text));
  if (bad >= 0) {
    free(*text);
    *text = NULL;
    return mmp_error_set(MMP_EDATA, "%s: story %lld: %s/%s is not valid UTF-8 (byte %lld)", f->path,
                         (long long)index, f->split, f->text_name, (long long)bad);
  }
  return 0;
}

int story_file_read_all_text(story_file_t *f, char ***texts, int64_t *n) {
  char **all = calloc(f->count ? (size_t)f->count : 1, sizeof *all);
  if (!all) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; i < f->count; i++) {
    int rc = story_file_read_text(f, i, &all[i]);
    if (rc < 0 && rc != MMP_EDATA) {
      for (int64_t j = 0; j < i; j++) free(all[j]);
      free(all);
      return rc;
    }
    /* an unreadable string stays NULL: the caller reports it per story */
  }
  *texts = all;
  *n = f->count;
  return 0;
}

int story_split_captions(const char *text, char **storage, const char **pieces, int max) {
  char *copy = strdup(text);
  *storage = copy;
  if (!copy) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int count = 0;
  char *p = copy;
  for (;;) {
    char *bar = strchr(p, '|');
    if (bar) *bar = 0;
    if (count < max) pieces[count] = p;
    count++;
    if (!bar) break;
    p = bar + 1;
  }
  return count;
}

/* ---- info ---- */

typedef struct info_ctx {
  FILE *out;
  const h5raw_t *raw;
} info_ctx_t;

static void info_dataset(const info_ctx_t *c, hid_t g, const char *name) {
  FILE *out = c->out;
  char why[256];
  if (h5raw_check_link(g, c->raw, name, false, NULL, why) < 0) {
    fprintf(out, "    %-8s (not read: %s)\n", name, why);
    return;
  }
  hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
  if (d < 0) return;
  hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
  /* room for any rank the file may give (HDF5 writes that many sizes) */
  hsize_t dims[H5S_MAX_RANK] = {0};
  int rank = H5Sget_simple_extent_ndims(sp);
  if (rank < 0 || rank > H5S_MAX_RANK) rank = 0;
  else H5Sget_simple_extent_dims(sp, dims, NULL);
  const char *kind = "other";
  H5T_class_t cls = H5Tget_class(t);
  if (cls == H5T_VLEN) kind = "vlen bytes";
  else if (cls == H5T_STRING) kind = H5Tis_variable_str(t) > 0 ? "vlen string" : "fixed string";
  else if (cls == H5T_INTEGER) kind = "integer";
  else if (cls == H5T_FLOAT) kind = "float";
  fprintf(out, "    %-8s %-12s shape (", name, kind);
  for (int i = 0; i < rank; i++) fprintf(out, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
  fprintf(out, ")\n");
  H5Sclose(sp);
  H5Tclose(t);
  H5Dclose(d);
}

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
  (void)info;
  info_dataset(data, g, name);
  return 0;
}

int story_file_info(const char *path, void *outp) {
  FILE *out = outp;
  int rc = 0;
  h5raw_t raw = {.fd = -1};
  pthread_mutex_lock(&h5_lock);
  H5E_BEGIN_TRY {
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    uint64_t root;
    if (file < 0) {
      H5FAIL(MMP_EIO, "cannot open HDF5 file %s", path);
      rc = MMP_EIO;
    } else if ((rc = h5raw_open(file, path, &raw, &root)) == 0) {
      fprintf(out, "%s\n", path);
      static const char *const splits[] = {"train", "val", "test"};
      for (int s = 0; s < 3; s++) {
        if (H5Lexists(file, splits[s], H5P_DEFAULT) <= 0) {
          fprintf(out, "  %s: (missing)\n", splits[s]);
          continue;
        }
        char why[256];
        if (h5raw_check_link(file, &raw, splits[s], true, NULL, why) < 0) {
          fprintf(out, "  %s: (not read: %s)\n", splits[s], why);
          continue;
        }
        hid_t g = H5Gopen2(file, splits[s], H5P_DEFAULT);
        if (g < 0) {
          fprintf(out, "  %s: (not a group)\n", splits[s]);
          continue;
        }
        fprintf(out, "  %s:\n", splits[s]);
        info_ctx_t c = {.out = out, .raw = &raw};
        H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_cb, &c);
        H5Gclose(g);
      }
    }
    if (file >= 0) H5Fclose(file);
  }
  H5E_END_TRY;
  pthread_mutex_unlock(&h5_lock);
  if (raw.fd >= 0) close(raw.fd);
  return rc;
}
