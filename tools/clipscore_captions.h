/* tools/clipscore_captions.h - the captions file of `pipeline clipscore`: its
 * walk, apart from the command so that tests/fuzz/fuzz_clipscore_captions.c
 * reaches it.
 *
 * A captions file is a non-empty JSON list, either of stories (each a list of
 * caption strings, or an object whose "captions" is one: a story task's
 * stories_file) or of caption strings (flat). For example:
 *
 *   bool nested;
 *   json_t *caps = cs_captions_load("stories.json", &nested);
 *   const char *c = caps && nested
 *                       ? cs_captions_caption(cs_captions_story(caps, 2), 0)
 *                       : NULL;
 *   json_decref(caps);
 */
#ifndef MMPIPE_TOOLS_CLIPSCORE_CAPTIONS_H
#define MMPIPE_TOOLS_CLIPSCORE_CAPTIONS_H

#include <jansson.h>
#include <stdbool.h>

/* The captions of a parsed captions file @doc (transfer none), checked: a new
 * list (transfer full) of stories when *@nested (each a list of strings), else
 * of strings. NULL on error, with the message set (MMP_EDATA: the shape, naming
 * @path and the entry; MMP_ENOMEM). */
json_t *cs_captions_from_json(const json_t *doc, const char *path,
                              bool *nested);

/* cs_captions_from_json() of the file @path (MMP_EDATA with file and line when
 * it is not JSON, MMP_EIO when it cannot be read). (transfer full) */
json_t *cs_captions_load(const char *path, bool *nested);

/* Story @idx of nested captions, NULL when there is none (a negative @idx
 * included). (transfer none, nullable) */
const json_t *cs_captions_story(const json_t *caps, long idx);

/* Caption @frame of a story from cs_captions_story(), NULL when there is none
 * (or @story is NULL). (transfer none, nullable) */
const char *cs_captions_caption(const json_t *story, long frame);

/* All captions in order, the stories of nested captions one after the other.
 * (transfer full) NULL when out of memory. */
json_t *cs_captions_flatten(const json_t *caps);

#endif
