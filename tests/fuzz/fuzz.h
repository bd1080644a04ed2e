/* tests/fuzz/fuzz.h - what the libFuzzer harnesses share: the entry point's
 * prototype, input files in a private temporary folder, sections of one
 * input, a registry that finds the build tree's plugins.
 *
 * A harness defines LLVMFuzzerTestOneInput() (and optionally
 * LLVMFuzzerInitialize / LLVMFuzzerCustomMutator); it must accept every
 * input without crashing, leaking or allocating without bound: a parser's
 * error return is a normal outcome. doc/fuzzing.md tells how to add one.
 */
#ifndef MMPIPE_TESTS_FUZZ_H
#define MMPIPE_TESTS_FUZZ_H

#include <dirent.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/mmpipe.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);
/* libFuzzer's own mutator (the replay driver provides a stand-in) */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* The source tree (fixtures, corpora): $MMP_TEST_SRCDIR under `make check`,
 * else the one configure saw. */
static inline const char *fuzz_srcdir(void) {
  const char *s = getenv("MMP_TEST_SRCDIR");
  return s && *s ? s : MMP_FUZZ_SRCDIR;
}

static char fuzz_dir_[PATH_MAX];
/* at exit: the folder holds only the files fuzz_write() made */
static inline void fuzz_dir_remove_(void) {
  DIR *d = opendir(fuzz_dir_);
  struct dirent *e;
  char p[2 * PATH_MAX];
  while (d && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(p, sizeof p, "%s/%s", fuzz_dir_, e->d_name);
    unlink(p);
  }
  if (d) closedir(d);
  rmdir(fuzz_dir_);
}
/* The harness's private folder (created once, removed at exit). */
static inline const char *fuzz_dir(void) {
  char *dir = fuzz_dir_;
  if (!dir[0]) {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof fuzz_dir_, "%s/mmpipe-fuzz-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) {
      perror("mkdtemp");
      abort();
    }
    atexit(fuzz_dir_remove_);
  }
  return dir;
}

/* Write @n bytes into fuzz_dir()/@name; the full path goes to @path. */
static inline void fuzz_write(const char *name, const void *data, size_t n, char *path,
                              size_t plen) {
  snprintf(path, plen, "%s/%s", fuzz_dir(), name);
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
    perror(path);
    abort();
  }
}

/* Remove fuzz_dir()/@name (absent is fine). */
static inline void fuzz_unlink(const char *name) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/%s", fuzz_dir(), name);
  unlink(p);
}

/* The input cut at each occurrence of @sep: up to @max sections as pointers
 * and lengths into @data. Returns the number found (the last section runs to
 * the end). */
static inline size_t fuzz_sections(const uint8_t *data, size_t size, const char *sep,
                                   const uint8_t **sec, size_t *len, size_t max) {
  size_t k = 0, sl = strlen(sep), start = 0;
  for (size_t i = 0; k + 1 < max && i + sl <= size; i++) {
    if (memcmp(data + i, sep, sl) == 0) {
      sec[k] = data + start;
      len[k++] = i - start;
      start = i + sl;
      i += sl - 1;
    }
  }
  sec[k] = data + start;
  len[k++] = size - start;
  return k;
}

/* A registry that loads the plugins of this build tree. (transfer full) */
static inline mmp_registry_t *fuzz_registry(void) {
  static const char *const kinds[] = {"models", "encoders", "tasks", "processors", "schedulers",
                                      "datasets"};
  mmp_registry_t *reg = mmp_registry_new();
  char d[PATH_MAX];
  for (size_t i = 0; reg && i < sizeof kinds / sizeof kinds[0]; i++) {
    snprintf(d, sizeof d, "%s/plugins/%s/.libs", MMP_ABS_BUILDDIR, kinds[i]);
    mmp_registry_add_dir(reg, d);
  }
  return reg;
}

static inline void fuzz_log_sink_(mmp_log_level_t level, const char *component, const char *msg,
                                  void *user) {
  (void)level, (void)component, (void)msg, (void)user;
}
/* No logging: errors and warnings are the expected outcome of most inputs
 * (and writing them would slow the runs down). */
static inline void fuzz_quiet(void) { mmp_log_set_sink(fuzz_log_sink_, NULL); }

#endif
