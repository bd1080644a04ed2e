/* tests/test_core_file.c - atomic output files (mmpipe/file.h): whole or nothing, errors named. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mmpipe/error.h>
#include <mmpipe/file.h>

#include "tap.h"

static char dir[256];

static const char *path_of(const char *name) {
  static char buf[512];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

static char *slurp(const char *p) {
  FILE *f = fopen(p, "rb");
  if (!f) return NULL;
  static char buf[256];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  return buf;
}

/* entries of the folder other than . and .. */
static int entries(void) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  if (d) closedir(d);
  return n;
}

int main(void) {
  const char *base = getenv("MMP_TEST_BUILDDIR");
  snprintf(dir, sizeof dir, "%s/file-test-XXXXXX", base ? base : "/tmp");
  if (!mkdtemp(dir)) {
    snprintf(dir, sizeof dir, "/tmp/file-test-XXXXXX");
    if (!mkdtemp(dir)) skip_all("cannot create a temporary directory");
  }
  char out[512];
  snprintf(out, sizeof out, "%s", path_of("out.txt"));

  /* commit publishes the whole file; until then only a hidden temporary exists */
  mmp_afile_t *af = mmp_afile_open(out);
  ok(af != NULL, "open");
  fprintf(mmp_afile_stream(af), "first %d\n", 1);
  const char *tmp = mmp_afile_tmp_path(af);
  ok(strstr(tmp, "/.out.txt.tmp.") != NULL, "the temporary is hidden beside the file (%s)", tmp);
  ok(access(out, F_OK) != 0, "nothing under the final name before commit");
  is_int(mmp_afile_commit(af), 0, "commit");
  is_str(slurp(out), "first 1\n", "the content is there");
  is_int(entries(), 1, "no temporary left");
  struct stat sb;
  mode_t um = umask(0);
  umask(um);
  ok(stat(out, &sb) == 0 && (sb.st_mode & 0777) == (0666 & ~um), "the usual mode (0666 less the umask), not 0600");

  /* abort leaves the earlier file as it was */
  af = mmp_afile_open(out);
  fprintf(mmp_afile_stream(af), "second\n");
  mmp_afile_abort(af);
  is_str(slurp(out), "first 1\n", "abort keeps the earlier file");
  is_int(entries(), 1, "abort removes the temporary");
  mmp_afile_abort(NULL);

  /* a write error (the descriptor closed under the stream) fails commit: earlier file kept */
  af = mmp_afile_open(out);
  close(fileno(mmp_afile_stream(af)));
  fprintf(mmp_afile_stream(af), "third\n");
  int rc = mmp_afile_commit(af);
  is_int(rc, MMP_EIO, "a failed flush is an I/O error");
  like(mmp_error_last(), ".out.txt.tmp.", "the message names the temporary (%s)", mmp_error_last());
  is_str(slurp(out), "first 1\n", "the earlier file is untouched");
  is_int(entries(), 1, "the failed temporary is removed");

  /* a missing folder: open fails, naming the path */
  char bad[600];
  snprintf(bad, sizeof bad, "%s/no/such/dir/x.json", dir);
  ok(mmp_afile_open(bad) == NULL, "open in a missing folder fails");
  is_int(mmp_error_code(), MMP_EIO, "as an I/O error");
  like(mmp_error_last(), "no/such/dir/.x.json.tmp", "naming the path (%s)", mmp_error_last());
  ok(mmp_afile_open("") == NULL && mmp_error_code() == MMP_EINVAL, "an empty path is refused");
  /* a bare name (no folder) gets its temporary in the current folder */
  char cwd[512];
  if (getcwd(cwd, sizeof cwd) && chdir(dir) == 0) {
    af = mmp_afile_open("bare.bin");
    ok(af && strncmp(mmp_afile_tmp_path(af), ".bare.bin.tmp.", 14) == 0, "bare name: %s", af ? mmp_afile_tmp_path(af) : "-");
    if (af) mmp_afile_abort(af);
    ok(chdir(cwd) == 0, "back");
  }

  /* the one-call form */
  static const char data[] = "abc\0def";
  is_int(mmp_file_write_atomic(path_of("b.bin"), data, 7), 0, "write_atomic");
  FILE *f = fopen(path_of("b.bin"), "rb");
  char got[8] = {0};
  ok(f && fread(got, 1, 8, f) == 7 && memcmp(got, data, 7) == 0, "its bytes, NUL included");
  if (f) fclose(f);
  is_int(mmp_file_write_atomic(path_of("empty"), NULL, 0), 0, "an empty file");
  is_int(entries(), 3, "three files, no temporaries");

  unlink(path_of("out.txt"));
  unlink(path_of("b.bin"));
  unlink(path_of("empty"));
  rmdir(dir);
  return done_testing();
}
