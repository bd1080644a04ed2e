/* mmpipe/pickle.h - plain Python values from a pickle, read without running it.
 *
 * The restricted machine of the checkpoint reader (doc/checkpoint.md) made
 * reachable for data files that are pickles of plain values: dicts, lists,
 * tuples, sets, strings, bytes, numbers (a `pickle.dump` of a dict of
 * lists, the object part of a NumPy `.npy` object array). Protocols 2-5.
 * Nothing the pickle names is imported or called: a global that is not on
 * the allow-list becomes an opaque value (MMP_PICKLE_STRICT: an error)
 * whose parts (the callee, its arguments, its state) stay reachable.
 *
 *   mmp_pickle_t *pk = mmp_pickle_load(bytes, n, "following_cache4.pkl", 0);
 *   const mmp_pickle_value_t *root = mmp_pickle_root(pk);
 *   for (size_t i = 0; i < mmp_pickle_len(root); i++) {       // a dict: pairs
 *     const char *key = mmp_pickle_str(mmp_pickle_key(root, i), NULL);
 *     const mmp_pickle_value_t *list = mmp_pickle_item(root, i);
 *   }
 *   mmp_pickle_free(pk);
 *
 * Values live as long as their mmp_pickle_t (transfer none everywhere).
 */
#ifndef MMPIPE_PICKLE_H
#define MMPIPE_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mmp_pickle mmp_pickle_t;
typedef struct pk_value mmp_pickle_value_t;

typedef enum mmp_pickle_kind {
  MMP_PICKLE_NONE = 0,
  MMP_PICKLE_BOOL,
  MMP_PICKLE_INT,
  MMP_PICKLE_BIGINT, /* wider than 64 bits */
  MMP_PICKLE_FLOAT,
  MMP_PICKLE_STR,
  MMP_PICKLE_BYTES,
  MMP_PICKLE_TUPLE,
  MMP_PICKLE_LIST,
  MMP_PICKLE_DICT,
  MMP_PICKLE_SET,
  MMP_PICKLE_OPAQUE, /* built from a global not on the allow-list */
  MMP_PICKLE_OTHER   /* allow-listed globals, storages, tensors */
} mmp_pickle_kind_t;

#define MMP_PICKLE_STRICT 0x1u /* a global not on the allow-list is an error */
/* With STRICT: NumPy's array globals (numpy.core.multiarray._reconstruct and
 * .scalar, numpy.ndarray, numpy.dtype; numpy._core too) are let through as
 * OPAQUE values, never called: an .npy object array's pickle, whose parts a
 * caller reads as data (plugins/datasets/npy.c). Any other global is an error. */
#define MMP_PICKLE_NUMPY 0x2u

/* Run the pickle in @data[0, n) (to its STOP; bytes after it are ignored).
 * @data is copied from as needed and may be freed afterwards. @label names
 * the input in messages. (transfer full) NULL + MMP_EDATA naming the
 * offset and the problem, or MMP_ENOMEM. */
mmp_pickle_t *mmp_pickle_load(const void *data, size_t n, const char *label, unsigned flags);
void mmp_pickle_free(mmp_pickle_t *pk); /* NULL ok */
/* Offset just past the pickle's STOP (where a following record starts). */
size_t mmp_pickle_end(const mmp_pickle_t *pk);
const mmp_pickle_value_t *mmp_pickle_root(const mmp_pickle_t *pk);

/* MMP_PICKLE_NONE for NULL. */
mmp_pickle_kind_t mmp_pickle_kind(const mmp_pickle_value_t *v);
/* STR (UTF-8 as stored) and BYTES: the bytes, NUL-terminated; *len
 * (nullable) their count. NULL for other kinds. */
const char *mmp_pickle_str(const mmp_pickle_value_t *v, size_t *len);
/* A STR that a Python 2 pickle wrote (BINSTRING): its bytes are as stored,
 * not UTF-8; Python 3 reads them with the encoding given to pickle.load
 * (numpy.load(..., encoding='latin1')). false for other values. */
bool mmp_pickle_str_py2(const mmp_pickle_value_t *v);
/* INT and BOOL: 0 and *out; MMP_EDATA otherwise. */
int mmp_pickle_int(const mmp_pickle_value_t *v, int64_t *out);
/* FLOAT, INT, BOOL: 0 and *out; MMP_EDATA otherwise. */
int mmp_pickle_float(const mmp_pickle_value_t *v, double *out);
/* Items of a TUPLE, LIST, SET; pairs of a DICT; parts of an OPAQUE value
 * (the callee's global first, then its arguments and state). 0 for others. */
size_t mmp_pickle_len(const mmp_pickle_value_t *v);
/* Item @i (a DICT's value of pair @i). NULL when out of range. */
const mmp_pickle_value_t *mmp_pickle_item(const mmp_pickle_value_t *v, size_t i);
/* A DICT's key of pair @i; NULL for other kinds or out of range. */
const mmp_pickle_value_t *mmp_pickle_key(const mmp_pickle_value_t *v, size_t i);
/* The value under string key @key of a DICT (the last pair with it). */
const mmp_pickle_value_t *mmp_pickle_get(const mmp_pickle_value_t *v, const char *key);
/* OPAQUE: "module.name" of the global it was built from. NULL otherwise. */
const char *mmp_pickle_global(const mmp_pickle_value_t *v);

#ifdef __cplusplus
}
#endif
#endif
