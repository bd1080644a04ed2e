/* mmpipe/checkpoint.h - read PyTorch checkpoints (.ckpt, .pth, .pt, .bin) without running them.
 *
 * Both containers torch.save writes are read: the zip format (ARCHIVE/data.pkl,
 * ARCHIVE/data/<key>, ARCHIVE/version, ARCHIVE/byteorder; read with libzip)
 * and the legacy format (magic number, protocol, sys-info, the object pickle,
 * the storage keys, then the raw storages). The object pickle runs on a
 * restricted machine that builds plain values and tensors only; the globals
 * it accepts are listed in doc/checkpoint.md. Nothing a file names is ever
 * imported or called.
 *
 * Tensors are named by their dotted path in the saved object: dict keys and
 * list/tuple indices joined by '.' ("state_dict.unet.conv_in.weight",
 * "optimizer_states.0.state.3.exp_avg"). @prefix selects the tensors whose
 * path starts with it and strips it ("state_dict.unet." gives
 * "conv_in.weight"). Storages stored uncompressed are used in place from a
 * read-only mapping of the file (zero-copy when aligned, as torch aligns
 * zip records to 64 bytes).
 *
 * By default (flags 0) a global that is not on the allow-list becomes an
 * opaque value (Lightning's hyper-parameters, numpy scalars, pathlib
 * objects), and it is an error only when a selected tensor lies inside it.
 * MMP_CKPT_STRICT refuses every such global.
 *
 *   mmp_checkpoint_t *ck = mmp_checkpoint_open("last.ckpt", "state_dict.unet.", 0);
 *   mmp_tensor_t *w = mmp_checkpoint_get(ck, "conv_in.weight", mmp_backend_get("cpu"), MMP_F32);
 *   mmp_checkpoint_close(ck);   // w stays valid
 *   mmp_tensor_unref(w);
 */
#ifndef MMPIPE_CHECKPOINT_H
#define MMPIPE_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>

#include <mmpipe/plugin.h>
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_checkpoint mmp_checkpoint_t;

#define MMP_CKPT_STRICT 0x1u /* every global must be on the allow-list */

/* Open @path. @prefix: NULL or "" for every tensor. (transfer full) NULL +
 * message (MMP_EIO, MMP_EDATA; MMP_ENOENT when @prefix selects nothing)
 * naming the file, the problem and where it is. */
mmp_checkpoint_t *mmp_checkpoint_open(const char *path, const char *prefix, unsigned flags);
/* The same over @size bytes at @data, which must outlive the checkpoint and
 * its tensors (transfer none). @label names it in messages. */
mmp_checkpoint_t *mmp_checkpoint_open_memory(const void *data, size_t size, const char *label,
                                             const char *prefix, unsigned flags);
void mmp_checkpoint_close(mmp_checkpoint_t *ck); /* NULL ok */

/* True when the first bytes of @path are a zip archive or a pickle that
 * starts with torch.save's magic number (the two torch.save formats),
 * false for anything else (e.g. safetensors). */
bool mmp_checkpoint_sniff(const char *path);
/* "zip" or "legacy". (transfer none) */
const char *mmp_checkpoint_format(const mmp_checkpoint_t *ck);

size_t mmp_checkpoint_count(const mmp_checkpoint_t *ck);
/* (transfer none) the name after the prefix, in the saved object's order. */
const char *mmp_checkpoint_name(const mmp_checkpoint_t *ck, size_t i);
/* @dtype: what mmp_checkpoint_get returns by default (i16 and i8 storages
 * widen to MMP_I32); @stored: NULL or the stored type ("f32", "i16", ...);
 * @nbytes: NULL or the stored size. MMP_ENOENT when absent. */
int mmp_checkpoint_info(const mmp_checkpoint_t *ck, const char *name, mmp_dtype_t *dtype, int *ndim,
                        int64_t *shape, const char **stored, size_t *nbytes);
/* A contiguous tensor on @be converted to @want (MMP_DTYPE_COUNT = as
 * stored). A contiguous CPU tensor of the stored dtype in an aligned,
 * uncompressed record is a zero-copy view of the mapping; views, strided
 * and shared storages are materialised. (transfer full) NULL + message
 * (MMP_EDATA names the tensor and the problem: a missing record, a view
 * past its storage, a global the tensor depends on). */
mmp_tensor_t *mmp_checkpoint_get(mmp_checkpoint_t *ck, const char *name, mmp_backend_t *be,
                                 mmp_dtype_t want);

/* The plain values under the prefix (ints, floats, strings, bools, None,
 * bytes, short lists of them; objects of other classes as "<module.Class>"),
 * by dotted path, in order. (transfer none) */
size_t mmp_checkpoint_value_count(const mmp_checkpoint_t *ck);
const char *mmp_checkpoint_value_name(const mmp_checkpoint_t *ck, size_t i);
const char *mmp_checkpoint_value_text(const mmp_checkpoint_t *ck, size_t i);

/* Every tensor under @prefix into @out, as stored (f64 -> f32 when
 * @f64_to_f32). */
int mmp_checkpoint_load_map(const char *path, const char *prefix, mmp_backend_t *be, bool f64_to_f32,
                            mmp_tensormap_t *out);

/* ---- writing ---- */

#define MMP_CKPT_LIGHTNING 0x2u /* save: the dict under "state_dict" of a Lightning checkpoint */

/* Write the tensors of @m as a torch.save file (the zip format of PyTorch >= 1.6) that
 * torch.load reads: an OrderedDict of name -> contiguous CPU tensor in the map's order, each
 * with its own storage (f32, f16, bf16, f64, i64, i32, u8, bool). With MMP_CKPT_LIGHTNING the
 * OrderedDict is the "state_dict" of a dict that also holds epoch = 0, global_step = 0 and
 * pytorch-lightning_version, the keys Lightning's load_from_checkpoint() reads (AR-LDM's
 * last.ckpt layout). Records are 64-byte aligned; zip64 past 4 GiB; written atomically
 * (mmpipe/file.h). Tensors on another backend are copied to the host one at a time. */
int mmp_checkpoint_save_map(const char *path, const mmp_tensormap_t *m, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
