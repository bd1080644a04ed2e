/* plugins/datasets/npy.h - a bounds-checked reader of NumPy's .npy format (libstorycommon.la, not installed).
 *
 * Versions 1.0, 2.0 and 3.0: the magic, the header (a Python dict literal
 * with 'descr', 'fortran_order' and 'shape'), then the data. Only what the
 * raw datasets hold is understood: fixed-width numbers and byte strings
 * ('|u1', '<i8', '|S20', ...) whose bytes must all be present, and object
 * arrays ('|O'), whose data is a pickle (read it with mmp_pickle_load).
 *
 *   npy_t a;
 *   if (npy_parse(bytes, n, "x.npy", &a) == 0 && strcmp(a.descr, "|u1") == 0) ...a.data...
 */
#ifndef MMPIPE_PLUGINS_NPY_H
#define MMPIPE_PLUGINS_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/pickle.h>

#define NPY_MAX_DIMS 8

typedef struct npy {
  char descr[16];      /* as stored: "|u1", "<f4", "|S20", "|O" */
  char kind;           /* 'u', 'i', 'f', 'b', 'S', 'U', 'O' */
  size_t itemsize;     /* bytes per element (0 for 'O') */
  bool fortran_order;
  int ndim;
  int64_t shape[NPY_MAX_DIMS];
  int64_t count;       /* product of shape */
  const uint8_t *data; /* into the caller's buffer (transfer none) */
  size_t data_len;     /* count * itemsize, or the rest of the file for 'O' */
  /* an array read from a pickle (npy_from_pickle), kind 'O': the list of
   * its count values in C order; NULL otherwise */
  const mmp_pickle_value_t *items;
} npy_t;

/* Parse @buf[0, n). MMP_EDATA naming @label and the problem. */
int npy_parse(const uint8_t *buf, size_t n, const char *label, npy_t *out);

/* An ndarray as np.save pickles one (the object arrays of PororoSV's
 * index files, and the arrays inside them): the OPAQUE value of
 * numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') with its
 * state (1, shape, dtype, fortran_order, data), the dtype itself
 * numpy.dtype(name, False, True) with its state (3, byteorder, ..., elsize,
 * ...). Nothing is called: the parts are read as data and checked. On
 * success @out describes it: kind 'O' with .items, or numbers/bytes with
 * .data into the pickle's bytes (transfer none: they live as long as the
 * pickle). MMP_EDATA naming @label and what is wrong. */
int npy_from_pickle(const mmp_pickle_value_t *v, const char *label, npy_t *out);
/* Whether @v is such a pickled ndarray. */
bool npy_is_pickled_array(const mmp_pickle_value_t *v);
/* An integer: a pickled int or bool, or a NumPy integer scalar
 * (numpy.core.multiarray.scalar(dtype, bytes)). MMP_EDATA otherwise. */
int npy_pickle_int(const mmp_pickle_value_t *v, int64_t *out);
/* Element @i of an array of kind 'i', 'u' or 'b' (little-endian). */
int64_t npy_int_at(const npy_t *a, int64_t i);

/* An object array file (np.save(..., allow_pickle=True)): read @path (at
 * most @max bytes), check the header, unpickle its data with the
 * restricted machine (MMP_PICKLE_STRICT | MMP_PICKLE_NUMPY: plain values
 * and NumPy's array globals only) and describe the array in @out (as
 * npy_from_pickle). (transfer full: *pk, free with mmp_pickle_free; @out
 * points into it) MMP_EIO, MMP_EDATA naming the file. */
int npy_load_object_file(const char *path, size_t max, mmp_pickle_t **pk, npy_t *out);

/* Read a whole file (at most @max bytes). (transfer full: free) MMP_EIO, MMP_EDATA. */
int npy_read_file(const char *path, size_t max, uint8_t **buf, size_t *n);

#endif
