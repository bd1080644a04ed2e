/* core/file.c - atomic output files (include/mmpipe/file.h). */
#include "mmpipe/file.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mmpipe/error.h"

struct mmp_afile {
  FILE *f;
  char *path, *tmp;
};

mmp_afile_t *mmp_afile_open(const char *path) {
  if (!path || !*path) {
    mmp_error_set(MMP_EINVAL, "atomic file: no path given");
    return NULL;
  }
  mmp_afile_t *af = calloc(1, sizeof *af);
  size_t n = strlen(path) + 40;
  if (af) af->path = strdup(path);
  if (af) af->tmp = malloc(n);
  if (!af || !af->path || !af->tmp) {
    if (af) free(af->path);
    free(af);
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", path);
    return NULL;
  }
  /* hidden, beside the final name: ".NAME.tmp.PID" */
  const char *slash = strrchr(path, '/');
  int dir = slash ? (int)(slash - path + 1) : 0;
  snprintf(af->tmp, n, "%.*s.%s.tmp.%ld", dir, path, path + dir, (long)getpid());
  af->f = fopen(af->tmp, "wb");
  if (!af->f) {
    mmp_error_set(MMP_EIO, "cannot create %s: %s", af->tmp, strerror(errno));
    free(af->tmp);
    free(af->path);
    free(af);
    return NULL;
  }
  return af;
}

FILE *mmp_afile_stream(mmp_afile_t *af) { return af->f; }

const char *mmp_afile_tmp_path(const mmp_afile_t *af) { return af->tmp; }

static void afile_free(mmp_afile_t *af) {
  free(af->tmp);
  free(af->path);
  free(af);
}

int mmp_afile_commit(mmp_afile_t *af) {
  if (!af) return mmp_error_set(MMP_EINVAL, "atomic file: no handle");
  int rc = 0;
  errno = 0;
  if (ferror(af->f))
    rc = mmp_error_set(MMP_EIO, "%s: write failed: %s", af->tmp, errno ? strerror(errno) : "stream error");
  else if (fflush(af->f) != 0)
    rc = mmp_error_set(MMP_EIO, "%s: write failed: %s", af->tmp, strerror(errno));
  else if (fsync(fileno(af->f)) != 0 && errno != EINVAL && errno != EROFS)
    rc = mmp_error_set(MMP_EIO, "%s: fsync failed: %s", af->tmp, strerror(errno));
  if (fclose(af->f) != 0 && rc == 0) rc = mmp_error_set(MMP_EIO, "%s: close failed: %s", af->tmp, strerror(errno));
  if (rc == 0 && rename(af->tmp, af->path) != 0)
    rc = mmp_error_set(MMP_EIO, "cannot rename %s to %s: %s", af->tmp, af->path, strerror(errno));
  if (rc) unlink(af->tmp);
  afile_free(af);
  return rc;
}

void mmp_afile_abort(mmp_afile_t *af) {
  if (!af) return;
  fclose(af->f);
  unlink(af->tmp);
  afile_free(af);
}

int mmp_file_write_atomic(const char *path, const void *data, size_t n) {
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_code();
  if (n && fwrite(data, 1, n, af->f) != n) {
    int e = errno;
    mmp_afile_abort(af);
    return mmp_error_set(MMP_EIO, "%s: write failed: %s", path, strerror(e));
  }
  return mmp_afile_commit(af);
}
