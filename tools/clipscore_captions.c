/* tools/clipscore_captions.c - the captions file of `pipeline clipscore`
 * (tools/clipscore_captions.h). */
#include "tools/clipscore_captions.h"

#include <mmpipe/mmpipe.h>

json_t *cs_captions_from_json(const json_t *doc, const char *path,
                              bool *nested) {
  if (!json_is_array(doc) || json_array_size(doc) == 0) {
    mmp_error_set(MMP_EDATA, "%s: captions must be a non-empty JSON list",
                  path);
    return NULL;
  }
  json_t *out = json_array();
  if (!out) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  *nested = !json_is_string(json_array_get(doc, 0));
  for (size_t i = 0; i < json_array_size(doc); i++) {
    json_t *e = json_array_get(doc, i),
           *caps = json_is_object(e) ? json_object_get(e, "captions") : e;
    bool okk = *nested ? json_is_array(caps) : json_is_string(e);
    for (size_t k = 0; okk && *nested && k < json_array_size(caps); k++)
      okk = json_is_string(json_array_get(caps, k));
    if (!okk) {
      mmp_error_set(
          MMP_EDATA, "%s: entry %zu: %s", path, i,
          *nested ? "a story needs a list of caption strings (or an object "
                    "with \"captions\")"
                  : "every entry of a flat list must be a caption string");
      json_decref(out);
      return NULL;
    }
    if (json_array_append(out, caps) != 0) {
      json_decref(out);
      mmp_error_set(MMP_ENOMEM, "out of memory");
      return NULL;
    }
  }
  return out;
}

json_t *cs_captions_load(const char *path, bool *nested) {
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) {
    if (err.line > 0)
      mmp_error_set(MMP_EDATA, "%s:%d: %s", path, err.line, err.text);
    else
      mmp_error_set(MMP_EIO, "%s", err.text);
    return NULL;
  }
  json_t *out = cs_captions_from_json(j, path, nested);
  json_decref(j);
  return out;
}

const json_t *cs_captions_story(const json_t *caps, long idx) {
  if (idx < 0)
    return NULL;
  const json_t *s = json_array_get(caps, (size_t)idx);
  return json_is_array(s) ? s : NULL;
}

const char *cs_captions_caption(const json_t *story, long frame) {
  if (frame < 0 || !story)
    return NULL;
  return json_string_value(json_array_get(story, (size_t)frame));
}

json_t *cs_captions_flatten(const json_t *caps) {
  json_t *flat = json_array();
  for (size_t i = 0; flat && i < json_array_size(caps); i++) {
    json_t *c = json_array_get(caps, i);
    int rc = 0;
    if (json_is_string(c))
      rc = json_array_append(flat, c);
    else
      for (size_t k = 0; rc == 0 && k < json_array_size(c); k++)
        rc = json_array_append(flat, json_array_get(c, k));
    if (rc != 0) {
      json_decref(flat);
      flat = NULL;
    }
  }
  return flat;
}
