/* mmpipe/file.h - output files that appear whole or not at all.
 *
 * Every file mmpipe writes as a result (images, JSON, HTML, safetensors, HDF5 reports) goes
 * through here, so that an interrupted or failed run never leaves a half-written file under
 * the final name, and an earlier complete file is replaced only by a complete new one:
 *
 *   mmp_afile_t *af = mmp_afile_open(path);
 *   if (!af) return mmp_error_code();        // the error names the temporary's path
 *   fprintf(mmp_afile_stream(af), ...);      // any stdio calls, libpng, jansson's json_dumpf
 *   return mmp_afile_commit(af);             // or mmp_afile_abort(af) on a failure of yours
 *
 * The data is written to a temporary beside PATH (same directory, so rename(2) is atomic:
 * "DIR/.NAME.tmp.<pid>", hidden from globs of the output folder), then flushed, fsync'ed, closed and renamed over PATH by
 * mmp_afile_commit(). A write error seen by the stream (ferror), a failing flush, fsync,
 * close or rename makes commit fail with MMP_EIO naming the path and the reason; the
 * temporary is then removed and PATH is untouched. Both commit and abort free the handle.
 */
#ifndef MMPIPE_FILE_H
#define MMPIPE_FILE_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_afile mmp_afile_t;

/* Creates the temporary for @path (mode 0644 before umask). NULL on failure, with the error
 * set (MMP_EIO: the directory is missing or not writable; MMP_EINVAL: @path is NULL or empty). */
mmp_afile_t *mmp_afile_open(const char *path);
/* The stream to write to (owned by the handle: never fclose it). */
FILE *mmp_afile_stream(mmp_afile_t *af);
/* The temporary's path, for libraries that want a file name (valid until commit/abort). */
const char *mmp_afile_tmp_path(const mmp_afile_t *af);
/* Publishes the file under its final name. 0, or a negative MMP_E* code with the error set;
 * frees @af either way. */
int mmp_afile_commit(mmp_afile_t *af);
/* Drops the temporary; PATH is untouched. Frees @af. NULL is accepted. */
void mmp_afile_abort(mmp_afile_t *af);

/* The whole of @data (@n bytes) as the file @path, atomically. */
int mmp_file_write_atomic(const char *path, const void *data, size_t n);

#ifdef __cplusplus
}
#endif

#endif
