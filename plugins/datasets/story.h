/* plugins/datasets/story.h - the AR-LDM story dataset engine shared by flintstones, pororo, vistsis and vistdii.
 *
 * Part of libstorycommon.la (not installed). Each dataset plugin is a
 * descriptor (which text dataset, strips or whole images, how targets are
 * resized) plus a key table built from the macros below; create/get/size
 * live here. An item holds AR-LDM's tensors:
 *   images                 train/val: f32 [N,3,S,S] in [-1,1]; test: u8 [N,H,W,3]
 *   captions, attention_mask           i64 [N,L]  (CLIP tokenizer)
 *   source_images          f32 [5,3,B,B] normalized with BLIP's mean/std
 *   source_caption, source_attention_mask  i64 [5,L]  (BERT tokenizer)
 *   first_image            continuation only: u8 [1,H,W,3], frame 0 as decoded (for displays)
 * with N = 5 (visualization) or 4 (continuation), and the strings "text"
 * (the raw '|'-joined captions) and "caption0".."caption4".
 */
#ifndef MMPIPE_PLUGINS_STORY_H
#define MMPIPE_PLUGINS_STORY_H

#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/plugin.h>

typedef enum story_target {
  STORY_TARGET_SQUARE = 0, /* Resize([S, S]) (flintstones, pororo) */
  STORY_TARGET_SHORT_CROP  /* Resize(S) + RandomCrop (train) / CenterCrop (val, test) (VIST) */
} story_target_t;

/* Test targets are uint8 HWC for every dataset, as AR-LDM's (since its
 * commit c4c485c) and what its predict_step hands to Image.fromarray. */
typedef enum story_test_layout {
  STORY_TEST_RAW = 0, /* raw frames u8 [N,H,W,3] (flintstones, pororo) */
  STORY_TEST_SMALL    /* Resize(t) + CenterCrop(t) u8 [N,t,t,3] (VIST) */
} story_test_layout_t;

typedef struct story_desc {
  const char *name;      /* plugin name, for messages */
  const char *text_name; /* "text", "sis", "dii" */
  bool strips;           /* images are vertical strips of frames */
  story_target_t target;
  story_test_layout_t test_layout;
} story_desc_t;

int story_create(const story_desc_t *desc, const mmp_config_t *cfg, mmp_context_t *ctx,
                 void **out_self);
void story_destroy(void *self);
int64_t story_size(void *self);
int story_get(void *self, int64_t index, mmp_tensormap_t *out);

/* The inspect() entry shared by the story datasets (storyinspect.c):
 * probe, info, verify and digest of an AR-LDM file read as @d's text
 * dataset. */
int story_inspect(const story_desc_t *d, const char *path, mmp_dataset_inspect_t mode, FILE *out);

/* The build() entries: AR-LDM's data_script/<name>_hdf5.py from the raw
 * releases (rawflintstones.c, rawvist.c, rawpororo.c). */
int story_build_flintstones(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx);
int story_build_vist(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx);
int story_build_pororo(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx);

/* Keys every story dataset reads; @maxlen and @tokens are literals. */
#define STORY_KEYS(maxlen, tokens)                                                              \
  {"hdf5_file", MMP_TYPE_STRING, NULL, "the AR-LDM HDF5 file", MMP_KEY_REQUIRED | MMP_KEY_PATH, 0}, \
  {"split", MMP_TYPE_STRING, "\"train\"", "train, val or test", 0, 0},                       \
  {"task", MMP_TYPE_STRING, "\"visualization\"",                                              \
   "visualization (5 target frames) or continuation (frame 0 given, 4 targets)", 0, 0},       \
  {"max_length", MMP_TYPE_INT, maxlen, "token length captions are padded to (longer is an error)", 0, 0}, \
  {"new_tokens", MMP_TYPE_LIST, tokens, "words added to both tokenizers (character names)", 0, 0}, \
  {"image_size", MMP_TYPE_INT, "512", "side of the train/val target images", 0, 0},            \
  {"source_image_size", MMP_TYPE_INT, "224", "side of the BLIP source images", 0, 0},         \
  {"interpolation", MMP_TYPE_STRING, "\"bilinear\"", "resampling filter (PIL): bilinear or bicubic", 0, 0}, \
  {"seed", MMP_TYPE_INT, "0", "seed of random frame choices and random crops (per item)", 0, 0}, \
  {"on_bad_story", MMP_TYPE_STRING, "\"fail\"",                                               \
   "fail, or skip: leave out stories whose caption count is not 5 (found when opening)", 0, 0}, \
  {"lowercase_captions", MMP_TYPE_BOOL, "false",                                              \
   "lower-case captions before tokenizing (CLIP's added tokens only match lower case)", 0, 0}, \
  {"clip_tokenizer", MMP_TYPE_STRING, "\"clip_tokenizer\"", "processor tokenizing captions (CLIP)", 0, 0}, \
  {"clip_vocab", MMP_TYPE_STRING, "\"\"", "CLIP vocab.json (empty: no caption ids)", MMP_KEY_PATH, 0}, \
  {"clip_merges", MMP_TYPE_STRING, "\"\"", "CLIP merges.txt", MMP_KEY_PATH, 0},               \
  {"clip_bpe", MMP_TYPE_STRING, "\"\"", "CLIP bpe_simple_vocab_16e6.txt.gz (instead of vocab + merges)", MMP_KEY_PATH, 0}, \
  {"blip_tokenizer", MMP_TYPE_STRING, "\"bert_tokenizer\"", "processor tokenizing BLIP captions", 0, 0}, \
  {"bert_vocab", MMP_TYPE_STRING, "\"\"", "BERT vocab.txt (empty: no source caption ids)", MMP_KEY_PATH, 0}

#define STORY_STRIP_KEYS                                                                         \
  {"frame_height", MMP_TYPE_INT, "128", "height of one frame in an image strip", 0, 0},          \
  {"frame_index", MMP_TYPE_INT, "-1", "frame of each strip to use; -1: random (AR-LDM)", 0, 0}

#define STORY_VIST_KEYS                                                                          \
  {"test_image_size", MMP_TYPE_INT, "64", "side of the raw uint8 test targets (Resize + CenterCrop)", 0, 0}

#endif
