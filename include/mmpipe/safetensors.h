/* mmpipe/safetensors.h - read and write .safetensors files.
 *
 * Reading memory-maps the file; the header is validated in full before any
 * use (bounds, JSON, dtypes, sizes, ranges inside the file, no overlaps, no
 * duplicates). Tensors taken from an open file keep the mapping alive.
 * Writing goes to a temporary name in the same directory and is renamed
 * into place, so an interrupted write never leaves a truncated file.
 *
 *   mmp_safetensors_t *st = mmp_safetensors_open("unet.safetensors");
 *   mmp_tensor_t *w = mmp_safetensors_get(st, "conv_in.weight",
 *                                         mmp_backend_get("cpu"), MMP_F32);
 *   mmp_safetensors_close(st);   // w stays valid
 *   mmp_tensor_unref(w);
 */
#ifndef MMPIPE_SAFETENSORS_H
#define MMPIPE_SAFETENSORS_H

#include <stddef.h>

#include <mmpipe/plugin.h>
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_safetensors mmp_safetensors_t;

/* (transfer full) NULL + message (MMP_EIO/MMP_EDATA) naming the problem
 * and, where there is one, the tensor. */
mmp_safetensors_t *mmp_safetensors_open(const char *path);
void mmp_safetensors_close(mmp_safetensors_t *st); /* NULL ok */

size_t mmp_safetensors_count(const mmp_safetensors_t *st);
/* (transfer none) in file order */
const char *mmp_safetensors_name(const mmp_safetensors_t *st, size_t i);
/* MMP_ENOENT when absent. shape has MMP_MAX_DIMS entries. */
int mmp_safetensors_info(const mmp_safetensors_t *st, const char *name,
                         mmp_dtype_t *dtype, int *ndim, int64_t *shape);
/* A tensor on @be converted to @want (MMP_DTYPE_COUNT = as stored). For a
 * CPU f32 tensor stored as f32 this is a zero-copy view of the mapping.
 * (transfer full) NULL + message when absent or unreadable. */
mmp_tensor_t *mmp_safetensors_get(mmp_safetensors_t *st, const char *name,
                                  mmp_backend_t *be, mmp_dtype_t want);
/* A value of the "__metadata__" object. (transfer none) NULL when absent. */
const char *mmp_safetensors_metadata(const mmp_safetensors_t *st, const char *key);
size_t mmp_safetensors_metadata_count(const mmp_safetensors_t *st);
const char *mmp_safetensors_metadata_key(const mmp_safetensors_t *st, size_t i);

/* Every tensor of a file into @out (as stored; f64 inputs converted to f32
 * when @f64_to_f32). */
int mmp_safetensors_load_map(const char *path, mmp_backend_t *be,
                             bool f64_to_f32, mmp_tensormap_t *out);
/* Write @m atomically. @metadata: NULL or NULL-terminated key, value pairs. */
int mmp_safetensors_save_map(const char *path, const mmp_tensormap_t *m,
                             const char *const *metadata);

#ifdef __cplusplus
}
#endif
#endif
