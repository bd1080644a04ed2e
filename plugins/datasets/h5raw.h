/* plugins/datasets/h5raw.h - checks of HDF5 file structures read from the bytes, before libhdf5 decodes them
 * (libstorycommon.la, not installed).
 *
 * HDF5 1.10 decodes several structures without bounding its reads by the
 * sizes the file gives: a datatype message's member names are copied with
 * strdup, a fill value or an attribute's data with a length taken from the
 * file, a global heap collection is walked by sizes it does not check.
 * The story reader therefore reads those structures itself first, by the
 * file format specification ("HDF5 File Format Specification Version 3.0"),
 * and hands a dataset to libhdf5 only once everything libhdf5 will decode
 * there lies inside its message and is of a kind the reader accepts:
 *
 *   h5raw_t r = {fd, file_size, sizeof_addr, sizeof_size};
 *   if (h5raw_check_dataset(&r, addr, &cls) < 0) ... mmp_error_last() says why
 *   else H5Dopen2(...)
 *
 * Every function reads with pread() through r->fd and never past
 * r->size; errors are MMP_EDATA with a message that names the structure and
 * its file offset (the caller prefixes the file and dataset names).
 */
#ifndef MMPIPE_PLUGINS_H5RAW_H
#define MMPIPE_PLUGINS_H5RAW_H

#include <stddef.h>
#include <stdint.h>

typedef struct h5raw {
  int fd;          /* the HDF5 file, open for reading */
  int64_t size;    /* its size in bytes */
  int sizeof_addr; /* the superblock's widths of addresses and lengths (2..8) */
  int sizeof_size;
  int sym_ik, sym_lk; /* group B-tree and symbol node half ranks (H5Pget_sym_k) */
} h5raw_t;

/* The global heap object a variable-length element stored at @pos (heap
 * address, object index) names must exist and hold at least @len bytes, and
 * its collection must be one HDF5's loader walks to its end. */
int h5raw_check_heap_object(const h5raw_t *r, int64_t pos, int64_t len);

/* The object header at @addr is one a dataset can be opened from without
 * libhdf5 reading past what the file holds: version 1 or 2 headers with their
 * continuation chunks, every message inside its chunk, and the messages
 * H5Dopen2 decodes checked: the dataspace, the datatype (integer, float,
 * string, or variable-length of one of them; compound, enum, array, opaque,
 * reference and time types are refused), the fill value, the layout
 * (contiguous only: story elements are read from their place in the file);
 * external storage, filters and shared (committed) messages are refused. */
int h5raw_check_dataset(const h5raw_t *r, uint64_t addr);

/* The group whose object header is at @addr is one libhdf5 can look names
 * up in and list without reading past what the file holds: a version-1
 * group (symbol table: a B-tree of symbol nodes, every node inside the file
 * with at most its rank of entries, every name they point at inside the
 * local heap and terminated there)
 * or a version-2 group with its links in the header (every link message
 * within its size); links in dense storage (a fractal heap) are refused. */
int h5raw_check_group(const h5raw_t *r, uint64_t addr);

/* The value of the fixed-length string attribute @name of the object whose
 * header is at @addr, read from its attribute messages (compact storage;
 * dense attribute storage is not searched), NUL-terminated in @buf of
 * @cap bytes. 0 found, MMP_ENOENT not there (or not a short fixed-length
 * string), MMP_EDATA for a malformed header. libhdf5 is never asked to
 * decode the object's attributes. */
int h5raw_attr_string(const h5raw_t *r, uint64_t addr, const char *name, char *buf, size_t cap);

#endif
