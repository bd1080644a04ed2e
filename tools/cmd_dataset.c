/* tools/cmd_dataset.c - `pipeline dataset info|show|dump`: look into AR-LDM story files and dataset items. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

#ifdef MMP_WITH_STORY
#include "plugins/datasets/storyfile.h"
#include "plugins/processors/imagecommon.h"
#endif

static void dataset_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline dataset info FILE.h5\n"
          "       pipeline dataset show CONFIG.cfg --index N [--output STRIP.png] [-s KEY=VALUE]...\n"
          "       pipeline dataset dump CONFIG.cfg --index N --output ITEM.safetensors [-s KEY=VALUE]...\n\n"
          "info: the groups of an AR-LDM story file, stories per split, the text datasets\n"
          "      present and the image sizes seen (first 50 stories of each split).\n"
          "show: build the dataset of CONFIG.cfg's `dataset = { name = ...; };` group, print\n"
          "      item N's captions and token ids, and write its target frames side by side\n"
          "      as a PNG (--output).\n"
          "dump: write item N's tensors under AR-LDM's names (images, captions,\n"
          "      attention_mask, source_images, source_caption, source_attention_mask)\n"
          "      with the captions in the file's metadata.\n\n"
          "  -i, --index N        item index (after on_bad_story = skip)\n"
          "  -o, --output FILE    output file\n"
          "  -s, --set KEY=VALUE  override a value, e.g. -s dataset.split=val\n"
          "  -h, --help           this help\n");
}

#ifdef MMP_WITH_STORY

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

static int do_info(const char *path) {
  int rc = story_file_info(path, stdout);
  if (rc < 0) return pipe_fail("dataset", rc);
  static const char *const splits[] = {"train", "val", "test"};
  for (int s = 0; s < 3; s++) {
    mmp_error_clear();
    story_file_t *f = story_file_open(path, splits[s], NULL);
    if (!f) {
      printf("  %s: not readable as story images: %s\n", splits[s], mmp_error_last());
      continue;
    }
    int64_t n = story_file_count(f);
    static const char *const texts[] = {"text", "sis", "dii"};
    printf("  %s: %lld stories; text datasets:", splits[s], (long long)n);
    for (int t = 0; t < 3; t++) {
      story_file_t *ft = story_file_open(path, splits[s], texts[t]);
      if (ft) printf(" %s", texts[t]);
      story_file_close(ft);
    }
    printf("\n");
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
        int k;
        for (k = 0; k < nseen; k++)
          if (seen[k].w == w && seen[k].h == h) break;
        if (k < nseen) seen[k].n++;
        else if (nseen < 16) seen[nseen++] = (size_count_t){w, h, 1};
      }
    printf("    image sizes seen (WxH: frames):");
    for (int k = 0; k < nseen; k++) printf(" %dx%d: %ld", seen[k].w, seen[k].h, seen[k].n);
    if (bad) printf(" (unreadable or not PNG: %d)", bad);
    printf("\n");
    story_file_close(f);
  }
  return PIPE_EXIT_OK;
}

/* Frames of an item's "images" as RGB images (f32 in [-1,1] or u8 CHW/HWC). */
static int item_frames(const mmp_tensor_t *t, mmp_image_t *out, int max, int *n) {
  if (!t || t->ndim != 4) return mmp_error_set(MMP_ESHAPE, "item has no 4-D 'images'");
  bool hwc = t->dtype == MMP_U8 && t->shape[3] == 3 && t->shape[1] != 3;
  int64_t N = t->shape[0], H = hwc ? t->shape[1] : t->shape[2], W = hwc ? t->shape[2] : t->shape[3];
  *n = (int)(N < max ? N : max);
  for (int i = 0; i < *n; i++) {
    int rc = mmp_image_alloc(&out[i], (int)W, (int)H, 3);
    if (rc < 0) return rc;
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++)
        for (int c = 0; c < 3; c++) {
          int64_t ix[4] = {i, hwc ? y : c, hwc ? x : y, hwc ? c : x};
          double v = mmp_tensor_get(t, ix);
          if (t->dtype != MMP_U8) v = floor((v * 0.5 + 0.5) * 255.0 + 0.5);
          out[i].data[(y * W + x) * 3 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
  }
  return 0;
}

static void print_ids(const mmp_tensormap_t *m, const char *ids_name, const char *mask_name) {
  mmp_tensor_t *ids = mmp_tensormap_get(m, ids_name), *mask = mmp_tensormap_get(m, mask_name);
  if (!ids || !mask || ids->ndim != 2) {
    printf("%s: (none: no tokenizer vocabulary configured)\n", ids_name);
    return;
  }
  for (int64_t i = 0; i < ids->shape[0]; i++) {
    printf("%s[%lld]:", ids_name, (long long)i);
    for (int64_t j = 0; j < ids->shape[1]; j++) {
      int64_t ix[2] = {i, j};
      if (mmp_tensor_get(mask, ix) != 0) printf(" %lld", (long long)mmp_tensor_get(ids, ix));
    }
    printf("\n");
  }
}

static int do_item(const char *verb, const char *cfgpath, long long index, const char *output,
                   const pipe_sets_t *sets) {
  mmp_config_t *cfg = pipe_load_config(cfgpath, sets);
  if (!cfg) return pipe_fail("dataset", mmp_error_code());
  int code = PIPE_EXIT_OK, rc = 0;
  mmp_registry_t *reg = mmp_registry_new();
  mmp_context_t *ctx = NULL;
  mmp_component_t *ds = NULL;
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (!reg || mmp_registry_set_search_path(reg, cfg) < 0 || !(ctx = mmp_context_new(reg, cfg)) ||
      !(ds = mmp_component_create(ctx, MMP_KIND_DATASET, "dataset"))) {
    code = pipe_fail("dataset", mmp_error_code());
    goto out;
  }
  const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)ds->plugin;
  int64_t size = ops->size(ds->self);
  if (index < 0 || index >= size) {
    code = pipe_usage("dataset", "--index %lld out of range (%lld items)", index, (long long)size);
    goto out;
  }
  if ((rc = ops->get(ds->self, index, m)) < 0) {
    code = pipe_fail("dataset", rc);
    goto out;
  }
  if (strcmp(verb, "dump") == 0) {
    const char *meta[16];
    int k = 0;
    static const char *const names[] = {"text", "caption0", "caption1", "caption2", "caption3", "caption4"};
    for (int i = 0; i < 6; i++) {
      const char *s = mmp_tensormap_get_string(m, names[i]);
      if (s && k < 14) {
        meta[k++] = names[i];
        meta[k++] = s;
      }
    }
    meta[k] = NULL;
    if ((rc = mmp_safetensors_save_map(output, m, meta)) < 0) code = pipe_fail("dataset", rc);
    else if (!pipe_quiet) fprintf(stderr, "pipeline dataset: wrote item %lld to %s\n", index, output);
    goto out;
  }
  /* show */
  printf("item %lld of %lld\n", index, (long long)size);
  for (int i = 0; i < STORY_FRAMES; i++) {
    char key[16];
    snprintf(key, sizeof key, "caption%d", i);
    const char *s = mmp_tensormap_get_string(m, key);
    if (s) printf("caption %d: %s\n", i, s);
  }
  for (size_t i = 0; i < mmp_tensormap_size(m); i++) {
    char d[96];
    printf("tensor %-22s %s\n", mmp_tensormap_name(m, i), mmp_tensor_describe(mmp_tensormap_at(m, i), d, sizeof d));
  }
  print_ids(m, "captions", "attention_mask");
  print_ids(m, "source_caption", "source_attention_mask");
  if (output) {
    mmp_image_t fr[STORY_FRAMES] = {{0}}, strip = {0};
    int n = 0;
    rc = item_frames(mmp_tensormap_get(m, "images"), fr, STORY_FRAMES, &n);
    if (rc == 0 && n > 0) rc = mmp_image_alloc(&strip, fr[0].w * n, fr[0].h, 3);
    for (int i = 0; rc == 0 && i < n; i++)
      for (int y = 0; y < fr[0].h; y++)
        memcpy(strip.data + ((size_t)y * strip.w + (size_t)i * fr[0].w) * 3,
               fr[i].data + (size_t)y * fr[0].w * 3, (size_t)fr[0].w * 3);
    if (rc == 0) rc = mmp_image_png_write(&strip, output);
    if (rc < 0) code = pipe_fail("dataset", rc);
    else if (!pipe_quiet) fprintf(stderr, "pipeline dataset: wrote %d frames to %s\n", n, output);
    for (int i = 0; i < STORY_FRAMES; i++) mmp_image_clear(&fr[i]);
    mmp_image_clear(&strip);
  }
out:
  mmp_tensormap_free(m);
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return code;
}
#endif /* MMP_WITH_STORY */

int cmd_dataset(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"index", required_argument, NULL, 'i'},
                                       {"output", required_argument, NULL, 'o'},
                                       {"set", required_argument, NULL, 's'},
                                       {NULL, 0, NULL, 0}};
  pipe_sets_t sets = {0};
  const char *output = NULL, *args[2] = {NULL, NULL};
  long long index = -1;
  int nargs = 0, c;
  optind = 1;
  for (;;) {
    c = getopt_long(argc, argv, "+hvqi:o:s:", opts, NULL);
    if (c == -1) {
      if (optind >= argc) break;
      if (nargs < 2) args[nargs++] = argv[optind++];
      else {
        pipe_sets_free(&sets);
        return pipe_usage("dataset", "unexpected argument '%s'", argv[optind]);
      }
      continue;
    }
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': dataset_help(stdout); pipe_sets_free(&sets); return PIPE_EXIT_OK;
    case 'i': {
      char *end;
      index = strtoll(optarg, &end, 10);
      if (*end || end == optarg) {
        pipe_sets_free(&sets);
        return pipe_usage("dataset", "--index wants an integer, not '%s'", optarg);
      }
      break;
    }
    case 'o': output = optarg; break;
    case 's': pipe_sets_add(&sets, optarg); break;
    default: pipe_sets_free(&sets); return pipe_usage("dataset", "bad option");
    }
  }
  int code;
  if (nargs < 2) {
    code = pipe_usage("dataset", "usage: pipeline dataset info FILE.h5 | show|dump CONFIG.cfg --index N");
  } else if (strcmp(args[0], "info") && strcmp(args[0], "show") && strcmp(args[0], "dump")) {
    code = pipe_usage("dataset", "unknown sub-command '%s' (info, show, dump)", args[0]);
  } else if (strcmp(args[0], "info") && index < 0) {
    code = pipe_usage("dataset", "%s needs --index N", args[0]);
  } else if (!strcmp(args[0], "dump") && !output) {
    code = pipe_usage("dataset", "dump needs --output ITEM.safetensors");
  } else {
#ifdef MMP_WITH_STORY
    code = !strcmp(args[0], "info") ? do_info(args[1]) : do_item(args[0], args[1], index, output, &sets);
#else
    mmp_error_set(MMP_EUNSUPPORTED, "built without libhdf5 and libpng: story datasets are not available");
    code = pipe_fail("dataset", MMP_EUNSUPPORTED);
#endif
  }
  pipe_sets_free(&sets);
  return code;
}
