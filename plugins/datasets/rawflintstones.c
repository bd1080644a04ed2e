/* plugins/datasets/rawflintstones.c - the FlintstonesSV raw release as a story plan (AR-LDM's data_script/flintstones_hdf5.py). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/error.h>
#include <mmpipe/pickle.h>

#include "plugins/datasets/npy.h"
#include "plugins/datasets/story.h"
#include "plugins/datasets/storybuild.h"

/* Largest frame file and pickle accepted (the real ones: 245 KiB, 2 MiB). */
#define MAX_NPY_BYTES ((size_t)256 << 20)
#define MAX_PKL_BYTES ((size_t)1 << 30)

/* One video_frames_sampled/<id>.npy: F x H x W x 3 uint8, the frames
 * stacked into an (F*H) x W strip (np.concatenate(img, axis=0)). */
static int load_strip(void *user, const char *src, mmp_image_t *out) {
  (void)user;
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = npy_read_file(src, MAX_NPY_BYTES, &buf, &n);
  if (rc < 0) return rc;
  npy_t a;
  if ((rc = npy_parse(buf, n, src, &a)) < 0) goto out;
  if (a.kind != 'u' || a.itemsize != 1 || a.fortran_order || a.ndim != 4 || a.shape[3] != 3 ||
      a.shape[0] < 1 || a.shape[1] < 1 || a.shape[2] < 1) {
    char shape[96] = "";
    for (int i = 0; i < a.ndim; i++)
      snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", i ? ", " : "", (long long)a.shape[i]);
    rc = mmp_error_set(MMP_EDATA, "%s: %s [%s]%s, expected uint8 frames [F, H, W, 3]", src, a.descr, shape,
                       a.fortran_order ? " in Fortran order" : "");
    goto out;
  }
  if (a.shape[0] * a.shape[1] > 32768 || a.shape[2] > 32768) {
    rc = mmp_error_set(MMP_EDATA, "%s: a strip of %lld x %lld pixels is too large", src,
                       (long long)(a.shape[0] * a.shape[1]), (long long)a.shape[2]);
    goto out;
  }
  if ((rc = mmp_image_alloc(out, (int)a.shape[2], (int)(a.shape[0] * a.shape[1]), 3)) < 0) goto out;
  memcpy(out->data, a.data, a.data_len); /* C order: frames are already stacked row-wise */
out:
  free(buf);
  return rc;
}

static int json_fail(const char *path, const json_error_t *e) {
  return mmp_error_set(MMP_EDATA, "%s:%d:%d: %s", path, e->line, e->column, e->text);
}

/* following_cache4.pkl: {globalID: [4 following globalIDs]} */
static int load_followings(const char *path, mmp_pickle_t **pk_out, story_map_t *map) {
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = npy_read_file(path, MAX_PKL_BYTES, &buf, &n);
  if (rc < 0) return rc;
  mmp_pickle_t *pk = mmp_pickle_load(buf, n, path, MMP_PICKLE_STRICT);
  free(buf);
  if (!pk) return mmp_error_code();
  const mmp_pickle_value_t *root = mmp_pickle_root(pk);
  if (mmp_pickle_kind(root) != MMP_PICKLE_DICT) {
    mmp_pickle_free(pk);
    return mmp_error_set(MMP_EDATA, "%s: not a pickled dict", path);
  }
  for (size_t i = 0; i < mmp_pickle_len(root) && rc == 0; i++) {
    const char *key = mmp_pickle_str(mmp_pickle_key(root, i), NULL);
    if (key) rc = story_map_put(map, key, (void *)mmp_pickle_item(root, i));
  }
  if (rc < 0) mmp_pickle_free(pk);
  else *pk_out = pk;
  return rc;
}

int story_build_flintstones(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  static const char *const known[] = {NULL};
  int rc = story_build_check_options(req, d->name, known);
  if (rc < 0) return rc;
  if (!req->raw_dir) return mmp_error_set(MMP_EINVAL, "%s: no raw directory given (--raw)", d->name);
  char path[4200];
  json_error_t je;
  json_t *splits = NULL, *ann = NULL;
  mmp_pickle_t *pk = NULL;
  story_map_t *follow = story_map_new(), *desc = story_map_new();
  const char *tn[] = {"text"};
  story_plan_t *plan = story_plan_new(d->name, 1, tn, load_strip, NULL);
  if (!follow || !desc || !plan) {
    rc = mmp_error_code();
    goto out;
  }
  snprintf(path, sizeof path, "%s/train-val-test_split.json", req->raw_dir);
  if (!(splits = json_load_file(path, 0, &je))) {
    rc = json_fail(path, &je);
    goto out;
  }
  snprintf(path, sizeof path, "%s/following_cache4.pkl", req->raw_dir);
  if ((rc = load_followings(path, &pk, follow)) < 0) goto out;
  snprintf(path, sizeof path, "%s/flintstones_annotations_v1-0.json", req->raw_dir);
  if (!(ann = json_load_file(path, 0, &je))) {
    rc = json_fail(path, &je);
    goto out;
  }
  if (!json_is_array(ann)) {
    rc = mmp_error_set(MMP_EDATA, "%s: not a list of annotations", path);
    goto out;
  }
  for (size_t i = 0; i < json_array_size(ann) && rc == 0; i++) {
    json_t *a = json_array_get(ann, i);
    const char *gid = json_string_value(json_object_get(a, "globalID"));
    json_t *dv = json_object_get(a, "description");
    if (!gid || !json_is_string(dv)) {
      rc = mmp_error_set(MMP_EDATA, "%s: annotation %zu has no string globalID and description", path, i);
      break;
    }
    rc = story_map_put(desc, gid, (void *)json_string_value(dv));
  }
  if (rc < 0) goto out;
  static const char *const SPL[] = {"train", "val", "test"};
  for (int s = 0; s < STORY_SPLITS && rc == 0; s++) {
    json_t *ids = json_object_get(splits, SPL[s]);
    if (!json_is_array(ids)) {
      rc = mmp_error_set(MMP_EDATA, "%s/train-val-test_split.json: no list '%s'", req->raw_dir, SPL[s]);
      break;
    }
    for (size_t i = 0; i < json_array_size(ids) && rc == 0; i++) {
      const char *id = json_string_value(json_array_get(ids, i));
      if (!id) {
        rc = mmp_error_set(MMP_EDATA, "%s/train-val-test_split.json: %s[%zu] is not a string", req->raw_dir,
                           SPL[s], i);
        break;
      }
      char entry[64];
      snprintf(entry, sizeof entry, "%s[%zu]", SPL[s], i);
      if ((rc = story_path_check(id, "train-val-test_split.json", entry)) < 0) break;
      const mmp_pickle_value_t *fl = story_map_get(follow, id);
      if (!fl) {
        rc = story_plan_drop(plan, s, id, "not in following_cache4.pkl");
        continue;
      }
      mmp_pickle_kind_t k = mmp_pickle_kind(fl);
      if ((k != MMP_PICKLE_LIST && k != MMP_PICKLE_TUPLE) || mmp_pickle_len(fl) != 4) {
        rc = story_plan_drop(plan, s, id, "%zu following clips in following_cache4.pkl, not 4",
                             mmp_pickle_len(fl));
        continue;
      }
      const char *gids[STORY_FRAMES] = {id};
      bool ok = true;
      for (int j = 0; j < 4 && ok; j++)
        if (!(gids[j + 1] = mmp_pickle_str(mmp_pickle_item(fl, (size_t)j), NULL))) {
          rc = story_plan_drop(plan, s, id, "following clip %d is not a string", j);
          ok = false;
        }
      for (int j = 0; j < 4 && ok && rc == 0; j++) {
        char e[600];
        snprintf(e, sizeof e, "the following clips of '%.500s', item %d", id, j);
        rc = story_path_check(gids[j + 1], "following_cache4.pkl", e);
      }
      char *frames[STORY_FRAMES] = {0}, *caps[STORY_FRAMES] = {0};
      for (int j = 0; j < STORY_FRAMES && ok && rc == 0; j++) {
        const char *dsc = story_map_get(desc, gids[j]);
        if (!dsc) {
          rc = story_plan_drop(plan, s, id, "no description for %s in flintstones_annotations_v1-0.json", gids[j]);
          ok = false;
          break;
        }
        snprintf(path, sizeof path, "%s/video_frames_sampled/%s.npy", req->raw_dir, gids[j]);
        if (access(path, R_OK) != 0) {
          rc = story_plan_drop(plan, s, id, "missing image video_frames_sampled/%s.npy", gids[j]);
          ok = false;
          break;
        }
        frames[j] = strdup(path);
        caps[j] = story_clean_caption(dsc);
        if (!frames[j] || !caps[j]) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      }
      if (ok && rc == 0) rc = story_plan_add_captions(plan, s, id, (const char *const *)frames, caps);
      for (int j = 0; j < STORY_FRAMES; j++) {
        free(frames[j]);
        free(caps[j]);
      }
    }
  }
  if (rc == 0) rc = story_build_run(plan, req, ctx);
out:
  story_plan_free(plan);
  story_map_free(follow);
  story_map_free(desc);
  mmp_pickle_free(pk);
  json_decref(splits);
  json_decref(ann);
  return rc;
}
