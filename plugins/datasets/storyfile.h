/* plugins/datasets/storyfile.h - reading AR-LDM's story HDF5 files (libstorycommon.la, not installed).
 *
 * Layout (AR-LDM's data_script/<name>_hdf5.py): groups train/val/test, each with
 * datasets image0..image4 of shape (N,) holding variable-length uint8 PNG
 * bytes, and one or more text datasets (text, sis, dii) of shape (N,) holding
 * variable-length UTF-8 strings, the captions of a story joined by '|'.
 *
 *   story_file_t *f = story_file_open("flintstones.h5", "val", "text");
 *   uint8_t *png; size_t n; char *text;
 *   story_file_read_image(f, 0, 2, &png, &n);   // story 0, frame 2
 *   story_file_read_text(f, 0, &text);
 *   free(png); free(text); story_file_close(f);
 *
 * All HDF5 calls are serialized by one process-wide lock (the library keeps
 * global state; many builds are not thread-safe), so reads may come from
 * several threads; PNG decoding happens outside the lock.
 */
#ifndef MMPIPE_PLUGINS_STORYFILE_H
#define MMPIPE_PLUGINS_STORYFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORY_FRAMES 5

typedef struct story_file story_file_t;

/* Open @path and check group @split: image0..image4 are 1-D variable-length
 * uint8, @text_name a 1-D variable-length string, all of one length
 * (@text_name NULL: images only).
 * NULL + MMP_EIO (cannot open) / MMP_EDATA (layout) naming the file, the
 * dataset and what is wrong. */
story_file_t *story_file_open(const char *path, const char *split, const char *text_name);
void story_file_close(story_file_t *f); /* NULL ok */
int64_t story_file_count(const story_file_t *f);
const char *story_file_path(const story_file_t *f);

/* The PNG bytes of frame @frame (0..4) of story @index. (transfer full:
 * free()) An empty element is MMP_EDATA "missing frame". */
int story_file_read_image(story_file_t *f, int64_t index, int frame, uint8_t **bytes,
                          size_t *n);
/* The caption string of story @index, NUL-terminated, checked to be valid
 * UTF-8 (MMP_EDATA otherwise). (transfer full: free()) */
int story_file_read_text(story_file_t *f, int64_t index, char **text);
/* Every caption string of the split at once (for scans). (transfer full:
 * free each and the array) */
int story_file_read_all_text(story_file_t *f, char ***texts, int64_t *n);

/* Summary of a file for `pipeline dataset info`, printed to @out. */
int story_file_info(const char *path, void *out /* FILE* */);

/* Split @text at '|' into at most @max pieces (pointers into a copy held
 * in *@storage, free() it). Returns the number of pieces found (which may
 * exceed @max: only the first @max are stored). */
int story_split_captions(const char *text, char **storage, const char **pieces, int max);

/* Whether the file's PNGs hold B, G, R (AR-LDM's files: cv2.imencode of
 * RGB arrays), i.e. unless the root attribute mmpipe_png_order is "RGB"
 * (`pipeline dataset build --true-rgb`). Decode with swap_rb = this. */
bool story_file_png_bgr(const story_file_t *f);

/* The process-wide HDF5 lock, for other HDF5 users of libstorycommon. */
void story_h5_lock(void);
void story_h5_unlock(void);

/* Strict UTF-8 check; returns the offset of the first bad byte or -1. */
int64_t story_utf8_invalid_at(const char *s, size_t n);

#endif
