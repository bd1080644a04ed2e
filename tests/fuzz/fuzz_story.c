/* tests/fuzz/fuzz_story.c - libFuzzer harness: AR-LDM story HDF5 files
 * (plugins/datasets/storyfile.c): each split opened with the first text
 * dataset name that opens (else images only), every caption and frame read,
 * captions split, frames decoded, `pipeline dataset info`.
 *
 * Input: the HDF5 file. Byte mutations rarely leave an HDF5 file readable,
 * so the custom mutator mostly works on the file's content instead: it reads
 * the story layout (groups of 1-D variable-length datasets) out of the file
 * image, mutates one value (a PNG, a caption), the number of stories of a
 * dataset, or drops a dataset, and writes a new, valid HDF5 image with the
 * HDF5 library (core driver, in memory). One mutation in eight is a plain
 * byte mutation, for the HDF5 structures themselves.
 *
 * HDF5 1.10 does not check everything it reads (a corrupt global heap can
 * crash it), so the mutator parses only files it wrote itself (or the seeds):
 * those end in a trailer, "MMPFZH5" and the FNV-1a hash of the bytes before
 * it. HDF5 ignores bytes past the end of its data; a byte-mutated file fails
 * the hash and is only byte-mutated further. */
#include <hdf5.h>

#include "plugins/datasets/storyfile.h"
#include "plugins/processors/imagecommon.h"
#include "tests/fuzz/fuzz.h"

static const char *const splits[] = {"train", "val", "test"};
static const char *const texts[] = {"text", "sis", "dii"};
static const char *const frames[] = {"image0", "image1", "image2", "image3", "image4"};

/* HDF5 sizes some of its own allocations from the file (a corrupt object
 * header asks for 2^64 - 2^16 bytes) and reports an error when malloc()
 * fails; ASan must return NULL there as malloc does, not abort. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* HDF5 1.10.8 (Debian 12) leaks an object header (424 bytes) when opening a
 * group or dataset of a corrupt file fails in H5O_protect (from H5Gopen2);
 * mmpipe closes every id HDF5 gives it. The stack stops inside the library
 * (no frame pointers there), so the library is named. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libhdf5_serial.so\n"; }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  return 0;
}

static bool read_story_file(const char *path, const char *split, const char *text) {
  story_file_t *f = story_file_open(path, split, text);
  if (!f) return false;
  int64_t n = story_file_count(f);
  for (int64_t i = 0; i < n && i < 8; i++) {
    char *t = NULL;
    if (text && story_file_read_text(f, i, &t) == 0) {
      char *storage = NULL;
      const char *pieces[5];
      (void)story_split_captions(t, &storage, pieces, 5);
      free(storage);
    }
    free(t);
    for (int fr = 0; fr < 5; fr++) {
      uint8_t *png = NULL;
      size_t len = 0;
      if (story_file_read_image(f, i, fr, &png, &len) == 0) {
        mmp_image_t im = {0};
        (void)mmp_image_png_decode(png, len, true, &im);
        mmp_image_clear(&im);
      }
      free(png);
    }
  }
  if (text) {
    char **all = NULL;
    int64_t na = 0;
    if (story_file_read_all_text(f, &all, &na) == 0)
      for (int64_t i = 0; i < na; i++) free(all[i]);
    free(all);
  }
  story_file_close(f);
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char path[PATH_MAX];
  fuzz_write("story.h5", data, size, path, sizeof path);
  /* each split with the first text dataset name that opens (opening a file
   * is most of the time an input takes), else with images only */
  for (size_t s = 0; s < 3; s++) {
    bool opened = false;
    for (size_t t = 0; t < 3 && !opened; t++) opened = read_story_file(path, splits[s], texts[t]);
    if (!opened) read_story_file(path, splits[s], NULL);
  }
  FILE *devnull = fopen("/dev/null", "w");
  if (devnull) {
    (void)story_file_info(path, devnull);
    fclose(devnull);
  }
  mmp_error_clear();
  return 0;
}

/* ---- the structure-keeping mutator ---- */

#define MAX_VALUE (1u << 20) /* a value the mutator reads or writes */
#define MAX_ROWS 16

typedef struct value {
  uint8_t *p;
  size_t n;
} value_t;

typedef struct dset {
  int split;  /* index into splits[] */
  char name[16];
  bool str;   /* a variable-length string, else variable-length uint8 */
  size_t rows;
  value_t v[MAX_ROWS];
} dset_t;

typedef struct model {
  dset_t d[3 * 8];
  size_t nd;
} model_t;

static void model_free(model_t *m) {
  for (size_t i = 0; i < m->nd; i++)
    for (size_t r = 0; r < m->d[i].rows; r++) free(m->d[i].v[r].p);
  m->nd = 0;
}

#define TRAILER 16
static const char trailer_magic[8] = "MMPFZH5";

static uint64_t fnv1a(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* The size of the HDF5 image before a valid trailer, or 0 without one. */
static size_t trusted_size(const uint8_t *data, size_t size) {
  if (size < TRAILER || memcmp(data + size - TRAILER, trailer_magic, 8) != 0) return 0;
  uint64_t h = fnv1a(data, size - TRAILER), stored;
  memcpy(&stored, data + size - 8, 8);
  return h == stored ? size - TRAILER : 0;
}

static hid_t image_fapl(void) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  return fapl;
}

/* Read dataset @name of group @g into @d; false when it is not a story
 * dataset the mutator understands (or too big). */
static bool read_dset(hid_t g, const char *name, dset_t *d) {
  bool ok = false;
  hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
  if (ds < 0) return false;
  hid_t ft = H5Dget_type(ds), sp = H5Dget_space(ds), mt = -1;
  hsize_t dims[1] = {0}, need = 0;
  if (ft < 0 || sp < 0 || H5Sget_simple_extent_ndims(sp) != 1) goto out;
  H5Sget_simple_extent_dims(sp, dims, NULL);
  if (dims[0] > MAX_ROWS) goto out;
  d->str = H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
  if (!d->str && H5Tget_class(ft) != H5T_VLEN) goto out;
  if (d->str) {
    mt = H5Tcopy(H5T_C_S1);
    H5Tset_size(mt, H5T_VARIABLE);
    H5Tset_cset(mt, H5T_CSET_UTF8);
  } else {
    mt = H5Tvlen_create(H5T_NATIVE_UINT8);
  }
  if (H5Dvlen_get_buf_size(ds, mt, sp, &need) < 0 || need > MAX_VALUE) goto out;
  d->rows = (size_t)dims[0];
  snprintf(d->name, sizeof d->name, "%s", name);
  if (d->str) {
    char *s[MAX_ROWS] = {0};
    if (d->rows && H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) < 0) goto out;
    for (size_t r = 0; r < d->rows; r++) {
      size_t l = s[r] ? strlen(s[r]) : 0;
      d->v[r].p = malloc(l + 1);
      if (l) memcpy(d->v[r].p, s[r], l);
      d->v[r].p[l] = '\0';
      d->v[r].n = l;
    }
    H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, s);
  } else {
    hvl_t h[MAX_ROWS];
    memset(h, 0, sizeof h);
    if (d->rows && H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, h) < 0) goto out;
    for (size_t r = 0; r < d->rows; r++) {
      d->v[r].p = malloc(h[r].len + 1);
      if (h[r].len) memcpy(d->v[r].p, h[r].p, h[r].len);
      d->v[r].p[h[r].len] = '\0'; /* a string if the type is swapped */
      d->v[r].n = h[r].len;
    }
    H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, h);
  }
  ok = true;
out:
  if (mt >= 0) H5Tclose(mt);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  H5Dclose(ds);
  return ok;
}

static bool model_read(const uint8_t *data, size_t size, model_t *m) {
  m->nd = 0;
  hid_t fapl = image_fapl();
  if (H5Pset_file_image(fapl, (void *)data, size) < 0) {
    H5Pclose(fapl);
    return false;
  }
  hid_t f = H5Fopen("mutator-in.h5", H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (f < 0) return false;
  for (int s = 0; s < 3; s++) {
    if (H5Lexists(f, splits[s], H5P_DEFAULT) <= 0) continue;
    hid_t g = H5Gopen2(f, splits[s], H5P_DEFAULT);
    if (g < 0) continue;
    const char *names[8];
    for (int i = 0; i < 5; i++) names[i] = frames[i];
    for (int i = 0; i < 3; i++) names[5 + i] = texts[i];
    for (int i = 0; i < 8 && m->nd < sizeof m->d / sizeof m->d[0]; i++) {
      if (H5Lexists(g, names[i], H5P_DEFAULT) <= 0) continue;
      dset_t *d = &m->d[m->nd];
      memset(d, 0, sizeof *d);
      d->split = s;
      if (read_dset(g, names[i], d)) m->nd++;
    }
    H5Gclose(g);
  }
  H5Fclose(f);
  return m->nd > 0;
}

/* Write @m as a new HDF5 image into @out (at most @max bytes); 0 if too big. */
static size_t model_write(const model_t *m, uint8_t *out, size_t max) {
  hid_t fapl = image_fapl();
  hid_t f = H5Fcreate("mutator-out.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (f < 0) return 0;
  hid_t groups[3] = {-1, -1, -1};
  for (size_t i = 0; i < m->nd; i++) {
    const dset_t *d = &m->d[i];
    if (groups[d->split] < 0)
      groups[d->split] = H5Gcreate2(f, splits[d->split], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[1] = {d->rows};
    hid_t sp = H5Screate_simple(1, dims, NULL), t;
    if (d->str) {
      t = H5Tcopy(H5T_C_S1);
      H5Tset_size(t, H5T_VARIABLE);
      H5Tset_cset(t, H5T_CSET_UTF8);
    } else {
      t = H5Tvlen_create(H5T_NATIVE_UINT8);
    }
    hid_t ds = H5Dcreate2(groups[d->split], d->name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds >= 0 && d->rows) {
      if (d->str) {
        const char *s[MAX_ROWS];
        for (size_t r = 0; r < d->rows; r++) s[r] = (const char *)d->v[r].p;
        H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s);
      } else {
        hvl_t h[MAX_ROWS];
        for (size_t r = 0; r < d->rows; r++) h[r] = (hvl_t){.len = d->v[r].n, .p = d->v[r].p};
        H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, h);
      }
    }
    if (ds >= 0) H5Dclose(ds);
    H5Tclose(t);
    H5Sclose(sp);
  }
  for (int s = 0; s < 3; s++)
    if (groups[s] >= 0) H5Gclose(groups[s]);
  H5Fflush(f, H5F_SCOPE_GLOBAL);
  ssize_t n = H5Fget_file_image(f, NULL, 0);
  size_t got = 0;
  if (n > 0 && (size_t)n <= max && H5Fget_file_image(f, out, (size_t)n) == n) got = (size_t)n;
  H5Fclose(f);
  return got;
}

/* Replace @v by a mutation of it (libFuzzer's mutator on a copy). */
static void mutate_value(value_t *v, bool str) {
  size_t max = v->n * 2 + 64;
  if (max > MAX_VALUE) max = MAX_VALUE;
  uint8_t *b = malloc(max + 1);
  if (v->n) memcpy(b, v->p, v->n < max ? v->n : max);
  size_t n = LLVMFuzzerMutate(b, v->n < max ? v->n : max, max);
  if (str) /* a C string: no NUL inside */
    for (size_t i = 0; i < n; i++)
      if (!b[i]) b[i] = '|';
  b[n] = '\0';
  free(v->p);
  v->p = b;
  v->n = n;
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
  srand(seed);
  model_t m;
  size_t image = trusted_size(data, size);
  if (rand() % 8 == 0 || !image || !model_read(data, image, &m))
    return LLVMFuzzerMutate(data, size, max_size);
  dset_t *d = &m.d[(size_t)rand() % m.nd];
  switch (rand() % 8) {
  case 0: /* one more row (a copy of another, or empty) */
    if (d->rows < MAX_ROWS) {
      value_t *v = &d->v[d->rows];
      size_t src = d->rows ? (size_t)rand() % d->rows : 0;
      v->n = d->rows && rand() % 2 ? d->v[src].n : 0;
      v->p = malloc(v->n + 1);
      if (v->n) memcpy(v->p, d->v[src].p, v->n);
      v->p[v->n] = '\0';
      d->rows++;
    }
    break;
  case 1: /* one row less */
    if (d->rows) free(d->v[--d->rows].p);
    break;
  case 2: /* drop the dataset */
    for (size_t r = 0; r < d->rows; r++) free(d->v[r].p);
    *d = m.d[--m.nd];
    break;
  case 3: /* swap the type (string <-> bytes) */
    d->str = !d->str;
    if (d->str)
      for (size_t r = 0; r < d->rows; r++)
        for (size_t i = 0; i < d->v[r].n; i++)
          if (!d->v[r].p[i]) d->v[r].p[i] = ' ';
    break;
  default: /* mutate one value */
    if (d->rows) mutate_value(&d->v[(size_t)rand() % d->rows], d->str);
    break;
  }
  size_t n = max_size >= TRAILER ? model_write(&m, data, max_size - TRAILER) : 0;
  model_free(&m);
  if (!n) return LLVMFuzzerMutate(data, size, max_size);
  uint64_t h = fnv1a(data, n);
  memcpy(data + n, trailer_magic, 8);
  memcpy(data + n + 8, &h, 8);
  return n + TRAILER;
}
