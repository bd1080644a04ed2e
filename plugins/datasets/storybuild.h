/* plugins/datasets/storybuild.h - writing AR-LDM story HDF5 files from a plan of stories (libstorycommon.la, not installed).
 *
 * A dataset's raw reader (rawflintstones.c, rawvist.c, rawpororo.c) turns
 * the raw release into a plan: per split, the stories to write in order
 * (an id, five frame sources, the '|'-joined texts) and the stories it
 * dropped, each with its reason. story_build_run() then writes the file:
 * worker threads load each frame through the plan's callback and encode it
 * as PNG, the calling thread writes the stories in order into
 * OUT.partial, checkpointing how many are written; an interrupted build
 * (SIGINT through the context, or a crash after a checkpoint) resumes there
 * when run again with the same plan; the finished file is renamed to OUT.
 * A JSON report lists every dropped story with its reason.
 *
 *   story_plan_t *p = story_plan_new("flintstones", 1, (const char *[]){"text"}, load, user);
 *   story_plan_add(p, 0, "s_01_e_01_shot_000000", frames, texts);
 *   story_plan_drop(p, 0, "s_01_...", "has 3 following clips, not 4");
 *   rc = story_build_run(p, req, ctx);
 *   story_plan_free(p);
 */
#ifndef MMPIPE_PLUGINS_STORYBUILD_H
#define MMPIPE_PLUGINS_STORYBUILD_H

#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/plugin.h>

#include "plugins/datasets/storyfile.h"
#include "plugins/processors/imagecommon.h"

#define STORY_SPLITS 3 /* train, val, test */

/* Load frame source @src (as given to story_plan_add) as RGB. Called from
 * worker threads at once: must be thread-safe. */
typedef int (*story_load_cb)(void *user, const char *src, mmp_image_t *out);

typedef struct story_plan story_plan_t;

/* @ntext text datasets named @text_names ("text"; or "sis", "dii"). */
story_plan_t *story_plan_new(const char *dataset, int ntext, const char *const *text_names,
                             story_load_cb load, void *user);
void story_plan_free(story_plan_t *p); /* NULL ok */
/* Append a story to split @split (0 train, 1 val, 2 test); strings copied. */
int story_plan_add(story_plan_t *p, int split, const char *id, const char *const frames[STORY_FRAMES],
                   const char *const *texts);
/* @n captions joined with '|' as AR-LDM's scripts store them. (transfer
 * full) NULL when out of memory. */
char *story_join_captions(char *const *parts, int n);
/* story_plan_add() of a story with one text: its STORY_FRAMES @caps joined
 * by story_join_captions(). */
int story_plan_add_captions(story_plan_t *p, int split, const char *id, const char *const frames[STORY_FRAMES],
                            char *const caps[STORY_FRAMES]);
/* Record a dropped story and why. */
int story_plan_drop(story_plan_t *p, int split, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Record a remark on a kept story (reported, not dropped). */
int story_plan_note(story_plan_t *p, int split, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Short side above which frames are resized to it (PIL bicubic); 0: never. */
void story_plan_set_resize(story_plan_t *p, int short_side);
/* Something that identifies the raw input beyond the plan (options). */
void story_plan_set_salt(story_plan_t *p, const char *salt);
int64_t story_plan_count(const story_plan_t *p, int split);

/* Write the file. 0, MMP_ECANCELED (resumable), or another MMP_E*. */
int story_build_run(story_plan_t *p, const mmp_dataset_build_t *req, mmp_context_t *ctx);

/* The value of option @key in @req->options ("key=value"), or NULL. */
const char *story_build_option(const mmp_dataset_build_t *req, const char *key);
/* MMP_ECONFIG when @req->options holds a key not in the NULL-terminated @known. */
int story_build_check_options(const mmp_dataset_build_t *req, const char *dataset,
                              const char *const *known);

/* Python's str.strip() after removing every '\n' and '\t' (AR-LDM's caption
 * cleaning), on UTF-8. (transfer full) */
char *story_clean_caption(const char *s);
/* Code points of UTF-8 @s (Python's len()). */
size_t story_utf8_len(const char *s);

/* A path (or path part) @rel taken from the raw data, refused when it is
 * absolute or has a '..' component: MMP_EDATA "FILE: ENTRY: path 'REL' ...",
 * naming the raw file @file and the entry @entry it came from. 0 when safe. */
int story_path_check(const char *rel, const char *file, const char *entry);
/* A story_load_cb: an image file as PIL's Image.open(src).convert('RGB')
 * gives it (PNG, or JPEG, by content; alpha dropped, grey and palette
 * expanded to RGB). */
int story_load_image(void *user, const char *src, mmp_image_t *out);


/* A string-keyed hash map (keys copied, values borrowed) for the raw
 * readers' lookups (ids to records). */
typedef struct story_map story_map_t;
story_map_t *story_map_new(void);
void story_map_free(story_map_t *m); /* NULL ok */
/* Insert or replace. MMP_ENOMEM. */
int story_map_put(story_map_t *m, const char *key, void *value);
/* NULL when absent. */
void *story_map_get(const story_map_t *m, const char *key);

#endif
