/* plugins/datasets/storyinspect.c - the inspect() entry of the story datasets: probe, info, verify, digest of an AR-LDM file. */
#include "plugins/datasets/story.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

#include "plugins/datasets/storyfile.h"
#include "plugins/processors/imagecommon.h"

static const char *const SPLITS[] = {"train", "val", "test"};
static const char *const TEXTS[] = {"text", "sis", "dii"};

/* Width and height from a PNG's IHDR without decoding. */
static int png_size(const uint8_t *b, size_t n, int *w, int *h) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n < 24 || memcmp(b, sig, 8) != 0 || memcmp(b + 12, "IHDR", 4) != 0) return -1;
  *w = (int)((uint32_t)b[16] << 24 | (uint32_t)b[17] << 16 | (uint32_t)b[18] << 8 | b[19]);
  *h = (int)((uint32_t)b[20] << 24 | (uint32_t)b[21] << 16 | (uint32_t)b[22] << 8 | b[23]);
  return 0;
}

typedef struct size_count {
  int w, h;
  long n;
} size_count_t;

static void count_size(size_count_t *seen, int *nseen, int w, int h) {
  int k;
  for (k = 0; k < *nseen; k++)
    if (seen[k].w == w && seen[k].h == h) break;
  if (k < *nseen) seen[k].n++;
  else if (*nseen < 16) seen[(*nseen)++] = (size_count_t){w, h, 1};
}

static int probe(const story_desc_t *d, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "cannot open HDF5 file %s", path);
  unsigned char sig[8] = {0};
  size_t got = fread(sig, 1, 8, f);
  fclose(f);
  if (got < 8 || memcmp(sig, "\x89HDF\r\n\x1a\n", 8) != 0) return 0;
  for (int s = 0; s < 3; s++) {
    mmp_error_clear();
    story_file_t *sf = story_file_open(path, SPLITS[s], d->text_name);
    if (sf) {
      story_file_close(sf);
      return 100;
    }
  }
  mmp_error_clear();
  return 10; /* an HDF5 file: info can still describe it */
}

static int info(const char *path, FILE *out) {
  int rc = story_file_info(path, out);
  if (rc < 0) return rc;
  for (int s = 0; s < 3; s++) {
    mmp_error_clear();
    story_file_t *f = story_file_open(path, SPLITS[s], NULL);
    if (!f) {
      fprintf(out, "  %s: not readable as story images: %s\n", SPLITS[s], mmp_error_last());
      continue;
    }
    int64_t n = story_file_count(f);
    fprintf(out, "  %s: %lld stories; text datasets:", SPLITS[s], (long long)n);
    for (int t = 0; t < 3; t++) {
      story_file_t *ft = story_file_open(path, SPLITS[s], TEXTS[t]);
      if (ft) fprintf(out, " %s", TEXTS[t]);
      story_file_close(ft);
    }
    fprintf(out, "\n");
    if (s == 0)
      fprintf(out, "    PNG channel order: %s\n",
              story_file_png_bgr(f) ? "B, G, R (AR-LDM's cv2.imencode of RGB arrays)" : "R, G, B (--true-rgb)");
    size_count_t seen[16];
    int nseen = 0, bad = 0;
    for (int64_t i = 0; i < n && i < 50; i++)
      for (int fr = 0; fr < STORY_FRAMES; fr++) {
        uint8_t *b = NULL;
        size_t len = 0;
        int w, h;
        if (story_file_read_image(f, i, fr, &b, &len) < 0 || png_size(b, len, &w, &h) < 0) {
          bad++;
          free(b);
          continue;
        }
        free(b);
        count_size(seen, &nseen, w, h);
      }
    fprintf(out, "    image sizes seen (WxH: frames):");
    for (int k = 0; k < nseen; k++) fprintf(out, " %dx%d: %ld", seen[k].w, seen[k].h, seen[k].n);
    if (bad) fprintf(out, " (unreadable or not PNG: %d)", bad);
    fprintf(out, "\n");
    story_file_close(f);
  }
  return 0;
}

static void fnv(uint64_t *h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    *h ^= p[i];
    *h *= 0x100000001b3ull;
  }
}

/* Every story of every split: captions, decoded frames. */
static int verify(const story_desc_t *d, const char *path, bool digest, FILE *out) {
  long faults = 0;
  if (!digest) {
    fprintf(out, "%s: %s (%s)\n", d->name, path, d->text_name);
    fprintf(out, "  %-6s %9s %9s %11s %12s  %s\n", "split", "stories", "frames", "bad frames",
            "captions!=5", "frame sizes (WxH: frames)");
  }
  for (int s = 0; s < 3; s++) {
    mmp_error_clear();
    story_file_t *f = story_file_open(path, SPLITS[s], d->text_name);
    if (!f) {
      if (digest) return mmp_error_code() ? mmp_error_code() : MMP_EDATA;
      fprintf(out, "  %-6s unreadable: %s\n", SPLITS[s], mmp_error_last());
      faults++;
      continue;
    }
    bool bgr = story_file_png_bgr(f);
    int64_t n = story_file_count(f), frames = 0, badf = 0, badc = 0;
    size_count_t seen[16];
    int nseen = 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++) {
      char *text = NULL;
      if (story_file_read_text(f, i, &text) < 0) {
        if (!digest && badc < 5) fprintf(out, "  %s story %lld: %s\n", SPLITS[s], (long long)i, mmp_error_last());
        badc++;
      } else {
        int k = 1;
        for (const char *c = text; *c; c++) k += *c == '|';
        if (k != STORY_FRAMES) badc++;
        fnv(&h, text, strlen(text) + 1);
      }
      free(text);
      for (int fr = 0; fr < STORY_FRAMES; fr++) {
        uint8_t *b = NULL;
        size_t len = 0;
        mmp_image_t im = {0};
        int rc = story_file_read_image(f, i, fr, &b, &len);
        if (rc == 0) rc = mmp_image_png_decode(b, len, bgr, &im);
        free(b);
        if (rc < 0) {
          if (digest) {
            story_file_close(f);
            return mmp_error_prefix("%s story %lld frame %d: ", SPLITS[s], (long long)i, fr);
          }
          if (badf < 5) fprintf(out, "  %s story %lld frame %d: %s\n", SPLITS[s], (long long)i, fr, mmp_error_last());
          badf++;
          continue;
        }
        frames++;
        count_size(seen, &nseen, im.w, im.h);
        int32_t wh[2] = {im.w, im.h};
        fnv(&h, wh, sizeof wh);
        fnv(&h, im.data, (size_t)im.w * im.h * 3);
        mmp_image_clear(&im);
      }
    }
    story_file_close(f);
    if (digest) {
      fprintf(out, "%s %lld %016llx\n", SPLITS[s], (long long)n, (unsigned long long)h);
      continue;
    }
    fprintf(out, "  %-6s %9lld %9lld %11lld %12lld  ", SPLITS[s], (long long)n, (long long)frames,
            (long long)badf, (long long)badc);
    for (int k = 0; k < nseen; k++) fprintf(out, "%s%dx%d: %ld", k ? ", " : "", seen[k].w, seen[k].h, seen[k].n);
    fprintf(out, "\n");
    faults += badf;
    /* VIST's DII de-duplication leaves stories with fewer captions (AR-LDM
     * keeps them); other datasets must have five */
    if (strcmp(d->text_name, "dii") != 0) faults += badc;
  }
  if (faults)
    return mmp_error_set(MMP_EDATA, "%s: %ld faults (unreadable splits, frames or captions)", path, faults);
  return 0;
}

int story_inspect(const story_desc_t *d, const char *path, mmp_dataset_inspect_t mode, FILE *out) {
  switch (mode) {
  case MMP_DATASET_PROBE: return probe(d, path);
  case MMP_DATASET_INFO: return info(path, out);
  case MMP_DATASET_VERIFY: return verify(d, path, false, out);
  case MMP_DATASET_DIGEST: return verify(d, path, true, out);
  default: return mmp_error_set(MMP_EINVAL, "%s: unknown inspect mode %d", d->name, (int)mode);
  }
}
