/* tests/fuzz/replay.c - main() of a harness outside a fuzzing build: a TAP
 * test that feeds it every file of tests/fuzz/corpus/<name>/ and
 * tests/fixtures/fuzz/<name>/ (or the files given as arguments). */
#include <dirent.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

/* optional in a harness */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* libFuzzer's mutator, for harnesses whose custom mutator calls it (only
 * exercised when a test drives the mutator): flips one byte. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size) {
  (void)max_size;
  if (size) data[(size_t)rand() % size] ^= (uint8_t)(1u + (unsigned)rand() % 255u);
  return size;
}

static int n_run = 0, n_bad = 0;

static void run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = NULL;
  long n = -1;
  if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)n + 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) n = -1;
  }
  if (f) fclose(f);
  ++n_run;
  if (!buf || n < 0) {
    ++n_bad;
    printf("not ok %d - %s: cannot read\n", n_run, path);
  } else {
    /* a copy of exactly n bytes, so that ASan sees reads past the end */
    uint8_t *exact = malloc(n ? (size_t)n : 1);
    memcpy(exact, buf, (size_t)n);
    LLVMFuzzerTestOneInput(exact, (size_t)n);
    free(exact);
    printf("ok %d - %s\n", n_run, path);
  }
  fflush(stdout);
  free(buf);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    names = realloc(names, (n + 1) * sizeof *names);
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n; i++) {
    char p[PATH_MAX];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) run_file(p);
    free(names[i]);
  }
  free(names);
}

int main(int argc, char **argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  if (argc > 1) {
    for (int i = 1; i < argc; i++) run_file(argv[i]);
  } else {
    char self[PATH_MAX], p[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv[0]);
    const char *name = basename(self);
    if (strncmp(name, "lt-", 3) == 0) name += 3; /* libtool's uninstalled binary */
    const char *src = getenv("MMP_TEST_SRCDIR");
    if (!src || !*src) src = MMP_FUZZ_SRCDIR;
    snprintf(p, sizeof p, "%s/tests/fuzz/corpus/%s", src, name);
    run_dir(p);
    snprintf(p, sizeof p, "%s/tests/fixtures/fuzz/%s", src, name);
    run_dir(p);
  }
  if (n_run == 0) {
    printf("1..0 # SKIP no inputs for %s\n", argv[0]);
    return 0;
  }
  printf("1..%d\n", n_run);
  return n_bad ? 1 : 0;
}
