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
} npy_t;

/* Parse @buf[0, n). MMP_EDATA naming @label and the problem. */
int npy_parse(const uint8_t *buf, size_t n, const char *label, npy_t *out);

/* Read a whole file (at most @max bytes). (transfer full: free) MMP_EIO, MMP_EDATA. */
int npy_read_file(const char *path, size_t max, uint8_t **buf, size_t *n);

#endif
