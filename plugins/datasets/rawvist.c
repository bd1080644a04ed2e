/* plugins/datasets/rawvist.c - the VIST raw release (SIS + DII JSON, images) as a story plan (AR-LDM's data_script/vist_hdf5.py). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/error.h>

#include "plugins/datasets/npy.h"
#include "plugins/datasets/story.h"
#include "plugins/datasets/storybuild.h"

typedef struct album {
  char *id;
  char *flickr[STORY_FRAMES];
  const char *sis[STORY_FRAMES];
  int length;
} album_t;

/* A JSON id (a string, or a number in some copies) as text. */
static const char *id_text(json_t *v, char *buf, size_t cap) {
  if (json_is_string(v)) return json_string_value(v);
  if (json_is_integer(v)) {
    snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    return buf;
  }
  return NULL;
}

static int json_fail(const char *path, const json_error_t *e) {
  return mmp_error_set(MMP_EDATA, "%s:%d:%d: %s", path, e->line, e->column, e->text);
}

static const char *const SPL[] = {"train", "val", "test"};

/* Albums of one SIS file: stories by story_id in order of appearance. */
static int read_sis(const char *path, json_t **root, album_t **albums, size_t *nalb) {
  json_error_t je;
  if (!(*root = json_load_file(path, 0, &je))) return json_fail(path, &je);
  json_t *anns = json_object_get(*root, "annotations");
  if (!json_is_array(anns)) return mmp_error_set(MMP_EDATA, "%s: no list 'annotations'", path);
  story_map_t *byid = story_map_new();
  if (!byid) return mmp_error_code();
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < json_array_size(anns) && rc == 0; i++) {
    json_t *an = json_array_get(anns, i);
    if (!json_is_array(an) || json_array_size(an) != 1) {
      rc = mmp_error_set(MMP_EDATA, "%s: annotations[%zu] is not a list of one annotation", path, i);
      break;
    }
    json_t *a = json_array_get(an, 0);
    char b1[32], b2[32];
    const char *sid = id_text(json_object_get(a, "story_id"), b1, sizeof b1);
    const char *fid = id_text(json_object_get(a, "photo_flickr_id"), b2, sizeof b2);
    const char *txt = json_string_value(json_object_get(a, "original_text"));
    if (!sid || !fid || !txt) {
      rc = mmp_error_set(MMP_EDATA, "%s: annotations[%zu] lacks story_id, photo_flickr_id or original_text",
                         path, i);
      break;
    }
    char entry[64];
    snprintf(entry, sizeof entry, "annotations[%zu].photo_flickr_id", i);
    if ((rc = story_path_check(fid, path, entry)) < 0) break;
    size_t k = (size_t)(uintptr_t)story_map_get(byid, sid);
    if (!k) {
      if (*nalb == cap) {
        cap = cap ? 2 * cap : 1024;
        album_t *v = realloc(*albums, cap * sizeof *v);
        if (!v) {
          rc = mmp_error_set(MMP_ENOMEM, "out of memory");
          break;
        }
        *albums = v;
      }
      album_t *al = &(*albums)[(*nalb)++];
      memset(al, 0, sizeof *al);
      if (!(al->id = strdup(sid))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      else rc = story_map_put(byid, sid, (void *)(uintptr_t)*nalb);
      k = *nalb;
    }
    album_t *al = &(*albums)[k - 1];
    if (rc == 0 && al->length < STORY_FRAMES) {
      if (!(al->flickr[al->length] = strdup(fid))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      al->sis[al->length] = txt;
    }
    al->length++;
  }
  story_map_free(byid);
  return rc;
}

/* The longest DII caption of each photo over the three DII files. */
static int read_dii(const char *dir, json_t **roots, story_map_t *text) {
  static const char *const files[] = {"train", "val", "test"};
  for (int i = 0; i < 3; i++) {
    char path[4200];
    json_error_t je;
    snprintf(path, sizeof path, "%s/%s.description-in-isolation.json", dir, files[i]);
    if (!(roots[i] = json_load_file(path, 0, &je))) return json_fail(path, &je);
    json_t *anns = json_object_get(roots[i], "annotations");
    if (!json_is_array(anns)) return mmp_error_set(MMP_EDATA, "%s: no list 'annotations'", path);
    for (size_t k = 0; k < json_array_size(anns); k++) {
      json_t *an = json_array_get(anns, k);
      if (!json_is_array(an) || json_array_size(an) != 1)
        return mmp_error_set(MMP_EDATA, "%s: annotations[%zu] is not a list of one annotation", path, k);
      json_t *a = json_array_get(an, 0);
      char b[32];
      const char *fid = id_text(json_object_get(a, "photo_flickr_id"), b, sizeof b);
      const char *txt = json_string_value(json_object_get(a, "original_text"));
      if (!fid || !txt)
        return mmp_error_set(MMP_EDATA, "%s: annotations[%zu] lacks photo_flickr_id or original_text", path, k);
      const char *old = story_map_get(text, fid);
      /* max([old, new], key=len): the new one only when strictly longer */
      if (!old || story_utf8_len(txt) > story_utf8_len(old)) {
        int rc = story_map_put(text, fid, (void *)txt);
        if (rc < 0) return rc;
      }
    }
  }
  return 0;
}

int story_build_vist(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  static const char *const known[] = {"sis_dir", "dii_dir", "img_dir", "resize", NULL};
  int rc = story_build_check_options(req, d->name, known);
  if (rc < 0) return rc;
  if (!req->raw_dir) return mmp_error_set(MMP_EINVAL, "%s: no raw directory given (--raw)", d->name);
  if (!mmp_image_jpeg_available()) return mmp_image_jpeg_decode(NULL, 0, NULL) < 0 ? mmp_error_code() : MMP_EUNSUPPORTED;
  char sis_dir[4096], dii_dir[4096], img_dir[4096], path[8400];
  const char *o;
  snprintf(sis_dir, sizeof sis_dir, "%s/%s", req->raw_dir, "sis");
  snprintf(dii_dir, sizeof dii_dir, "%s/%s", req->raw_dir, "dii");
  snprintf(img_dir, sizeof img_dir, "%s/%s", req->raw_dir, "images");
  if ((o = story_build_option(req, "sis_dir"))) snprintf(sis_dir, sizeof sis_dir, "%s", o);
  if ((o = story_build_option(req, "dii_dir"))) snprintf(dii_dir, sizeof dii_dir, "%s", o);
  if ((o = story_build_option(req, "img_dir"))) snprintf(img_dir, sizeof img_dir, "%s", o);
  int resize = 0;
  if ((o = story_build_option(req, "resize"))) {
    char *end;
    long v = strtol(o, &end, 10);
    if (*end || v < 0 || v > 16384)
      return mmp_error_set(MMP_ECONFIG, "%s: build option resize=%s: want a side in pixels (512 as AR-LDM's "
                                        "download helper), or 0", d->name, o);
    resize = (int)v;
  }
  json_t *sis_root[3] = {0}, *dii_root[3] = {0};
  album_t *albums[3] = {0};
  size_t nalb[3] = {0};
  story_map_t *dii = story_map_new();
  const char *tn[] = {"sis", "dii"};
  story_plan_t *plan = story_plan_new(d->name, 2, tn, story_load_image, NULL);
  if (!dii || !plan) {
    rc = mmp_error_code();
    goto out;
  }
  story_plan_set_resize(plan, resize);
  for (int s = 0; s < 3 && rc == 0; s++) {
    snprintf(path, sizeof path, "%s/%s.story-in-sequence.json", sis_dir, SPL[s]);
    rc = read_sis(path, &sis_root[s], &albums[s], &nalb[s]);
  }
  if (rc == 0) rc = read_dii(dii_dir, dii_root, dii);
  for (int s = 0; s < 3 && rc == 0; s++) {
    for (size_t i = 0; i < nalb[s] && rc == 0; i++) {
      album_t *al = &albums[s][i];
      if (al->length != STORY_FRAMES) {
        rc = story_plan_drop(plan, s, al->id, "wrong length: %d photos, not 5", al->length);
        continue;
      }
      char missing[600] = "";
      int nmiss = 0;
      for (int f = 0; f < STORY_FRAMES; f++) {
        snprintf(path, sizeof path, "%s/%s.jpg", img_dir, al->flickr[f]);
        if (access(path, F_OK) != 0) {
          if (nmiss++ < 5)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "%s%s.jpg", *missing ? ", " : "",
                     al->flickr[f]);
        }
      }
      if (nmiss) {
        rc = story_plan_drop(plan, s, al->id, "missing image %s", missing);
        continue;
      }
      const char *diit[STORY_FRAMES];
      int f;
      for (f = 0; f < STORY_FRAMES; f++)
        if (!(diit[f] = story_map_get(dii, al->flickr[f]))) break;
      if (f < STORY_FRAMES) {
        rc = story_plan_drop(plan, s, al->id, "missing DII caption: photo %s has none", al->flickr[f]);
        continue;
      }
      char *sis[STORY_FRAMES] = {0}, *dc[STORY_FRAMES] = {0}, *uniq[STORY_FRAMES];
      char *frames[STORY_FRAMES] = {0};
      int nu = 0;
      for (f = 0; f < STORY_FRAMES && rc == 0; f++) {
        snprintf(path, sizeof path, "%s/%s.jpg", img_dir, al->flickr[f]);
        sis[f] = story_clean_caption(al->sis[f]);
        dc[f] = story_clean_caption(diit[f]);
        frames[f] = strdup(path);
        if (!sis[f] || !dc[f] || !frames[f]) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      }
      if (rc == 0) {
        /* sorted(set(txt_dii), key=txt_dii.index): first appearances */
        for (f = 0; f < STORY_FRAMES; f++) {
          int k;
          for (k = 0; k < nu && strcmp(uniq[k], dc[f]) != 0; k++) {}
          if (k == nu) uniq[nu++] = dc[f];
        }
        char *ts = story_join_captions(sis, STORY_FRAMES), *td = story_join_captions(uniq, nu);
        if (!ts || !td) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
        else {
          const char *texts[2] = {ts, td};
          rc = story_plan_add(plan, s, al->id, (const char *const *)frames, texts);
          if (rc == 0 && nu < STORY_FRAMES)
            rc = story_plan_note(plan, s, al->id, "dii holds %d distinct captions, not 5 (AR-LDM keeps such stories)", nu);
        }
        free(ts);
        free(td);
      }
      for (f = 0; f < STORY_FRAMES; f++) {
        free(sis[f]);
        free(dc[f]);
        free(frames[f]);
      }
    }
  }
  if (rc == 0) {
    char salt[64];
    snprintf(salt, sizeof salt, "resize=%d", resize);
    story_plan_set_salt(plan, salt);
    rc = story_build_run(plan, req, ctx);
  }
out:
  story_plan_free(plan);
  story_map_free(dii);
  for (int s = 0; s < 3; s++) {
    for (size_t i = 0; i < nalb[s]; i++) {
      free(albums[s][i].id);
      for (int f = 0; f < STORY_FRAMES; f++) free(albums[s][i].flickr[f]);
    }
    free(albums[s]);
    json_decref(sis_root[s]);
    json_decref(dii_root[s]);
  }
  return rc;
}
