/* plugins/common/train_data.h - the image-caption list of the train task: `image<TAB>caption` lines.
 *
 *   train_data_t d = {0};
 *   if (train_data_load(&d, "/data/imgs", "/data/imgs/captions.txt") < 0) ...
 *   // d.items[i].path = "/data/imgs/<image>", d.items[i].caption
 *   train_data_clear(&d);
 *
 * Not part of the ABI: a noinst convenience library (libtraindata.la) of the
 * train task and its fuzz harness (tests/fuzz/fuzz_train.c).
 */
#ifndef MMPIPE_PLUGINS_TRAIN_DATA_H
#define MMPIPE_PLUGINS_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct train_item {
  char *path, *caption; /* owned */
} train_item_t;

typedef struct train_data {
  train_item_t *items;
  int64_t n, cap;
} train_data_t;

/* Parse @n bytes of caption lines (@what names them in errors: "FILE")
 * and append the items to @d, each image path joined to @dir. Empty lines
 * (and \r before \n) are skipped; a line without a tab, with an empty image
 * name or with a NUL byte is an MMP_EDATA error naming @what and the line;
 * no items at all is an MMP_EDATA error. On error @d keeps what was added
 * (train_data_clear frees it). */
int train_data_parse(train_data_t *d, const char *dir, const char *buf, size_t n, const char *what);
/* Read file @captions and parse it. MMP_EIO naming the file. */
int train_data_load(train_data_t *d, const char *dir, const char *captions);
/* Free everything and zero @d; safe on a zeroed struct. */
void train_data_clear(train_data_t *d);

#endif
