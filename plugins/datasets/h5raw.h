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
 *   h5raw_t r;
 *   uint64_t root;
 *   char why[256];
 *   if (h5raw_open(file, path, &r, &root) < 0) ... mmp_error_last() says why
 *   if (h5raw_check_link(file, &r, "train", true, NULL, why) < 0) ... @why says why
 *   else H5Gopen2(...)
 *
 * Every function reads with pread() through r->fd and never past
 * r->size; errors are MMP_EDATA with a message that names the structure and
 * its file offset (the caller prefixes the file and dataset names).
 */
#ifndef MMPIPE_PLUGINS_H5RAW_H
#define MMPIPE_PLUGINS_H5RAW_H

#include <hdf5.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct h5raw {
  int fd;          /* the HDF5 file, open for reading */
  int64_t size;    /* its size in bytes */
  int sizeof_addr; /* the superblock's widths of addresses and lengths (2..8) */
  int sizeof_size;
  int sym_ik, sym_lk; /* group B-tree and symbol node half ranks (H5Pget_sym_k) */
} h5raw_t;

/* Bytes of one stored variable-length element: its length (4), the heap
 * collection's address and the object's index (4). */
static inline int64_t h5raw_vlen_element_size(const h5raw_t *r) { return 4 + (int64_t)r->sizeof_addr + 4; }

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

/* Every attribute of the object whose header is at @addr is one libhdf5
 * can decode (H5Aexists, H5Aopen, H5Adelete decode them all) without
 * reading past its message: its name terminated inside it, a fixed-size
 * integer, float or string type, its dataspace and its elements inside it;
 * shared attributes and dense attribute storage are refused. */
int h5raw_check_attributes(const h5raw_t *r, uint64_t addr);

/* The value of the fixed-length string attribute @name of the object whose
 * header is at @addr, read from its attribute messages (compact storage;
 * dense attribute storage is not searched), NUL-terminated in @buf of
 * @cap bytes. 0 found, MMP_ENOENT not there (or not a short fixed-length
 * string), MMP_EDATA for a malformed header. libhdf5 is never asked to
 * decode the object's attributes. */
int h5raw_attr_string(const h5raw_t *r, uint64_t addr, const char *name, char *buf, size_t cap);

/* ---- with libhdf5 ---- */

/* The innermost message of the calling thread's HDF5 error stack, in @buf. */
const char *h5raw_hdf5_message(char buf[256]);

/* @raw for the HDF5 file @file open from @path: its own descriptor (the
 * caller closes raw->fd, -1 when the open failed), its size, the
 * superblock's widths and group ranks; the root group checked
 * (h5raw_check_group). *@root the root's header address. */
int h5raw_open(hid_t file, const char *path, h5raw_t *raw, uint64_t *root);

/* Whether the object @name of @group may be handed to H5Dopen2 (or, with
 * @is_group, to H5Gopen2 and the link lookups): a hard link (soft and
 * external links are not followed) to an object header that passes
 * h5raw_check_dataset / h5raw_check_group. <0 with the reason in @why;
 * *@addr (when not NULL) the object's header address. */
int h5raw_check_link(hid_t group, const h5raw_t *raw, const char *name, bool is_group, uint64_t *addr,
                     char why[256]);

/* Element @index of the contiguous variable-length dataset @d (of a file
 * h5raw_check_dataset accepted) before libhdf5 reads it: its 4-byte length,
 * at most @max and the file's size (libhdf5 allocates it first), and the
 * global heap object it names (h5raw_check_heap_object). An element of a
 * dataset never written (no storage) passes: libhdf5 reads fill values. */
int h5raw_check_vlen_element(const h5raw_t *r, hid_t d, int64_t index, int64_t max);

#endif
