/* tools/cmd_dataset.c - `pipeline dataset info|verify|build|show|dump`: datasets through the registry and their vtables. */
#include <getopt.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

#ifdef MMP_WITH_PNG
#include "plugins/processors/imagecommon.h"
#endif

#define ITEM_FRAMES 5

static void dataset_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline dataset info FILE [--dataset NAME]\n"
          "       pipeline dataset verify FILE [--dataset NAME] [--digest]\n"
          "       pipeline dataset build NAME --raw DIR --out FILE [-O KEY=VALUE]... [options]\n"
          "       pipeline dataset show CONFIG.cfg --index N [--output STRIP.png] [-s KEY=VALUE]...\n"
          "       pipeline dataset dump CONFIG.cfg --index N --output ITEM.safetensors [-s KEY=VALUE]...\n\n"
          "info:   the layout of a dataset's stored file (AR-LDM story files: groups, stories\n"
          "        per split, text datasets, image sizes of the first 50 stories).\n"
          "verify: read and decode everything in the file; a summary table; exit 5 on any\n"
          "        fault. --digest prints one content digest per split instead (decoded\n"
          "        pixels and strings: equal digests, equal content).\n"
          "        Without --dataset, the dataset plugin that recognises FILE best is used.\n"
          "build:  make dataset NAME's stored file from its raw release (doc/datasets.md):\n"
          "        worker threads, progress with ETA, FILE.partial renamed when complete;\n"
          "        an interrupted build (Ctrl-C) resumes when run again; every dropped\n"
          "        story is listed with its reason in FILE.report.json.\n"
          "show:   build the dataset of CONFIG.cfg's `dataset = { name = ...; };` group, print\n"
          "        item N's captions and token ids, and write its target frames side by side\n"
          "        as a PNG (--output).\n"
          "dump:   write item N's tensors under AR-LDM's names (images, captions,\n"
          "        attention_mask, source_images, source_caption, source_attention_mask)\n"
          "        with the captions in the file's metadata.\n\n"
          "  -d, --dataset NAME   the dataset plugin (info, verify)\n"
          "  -r, --raw DIR        build: the unpacked raw release\n"
          "      --out FILE       build: the file to write\n"
          "  -O, --option K=V     build: a dataset's build option (e.g. VIST's resize=512)\n"
          "  -j, --threads N      build: worker threads (default: MMPIPE_THREADS or CPUs)\n"
          "      --true-rgb       build: PNGs in R, G, B (mmpipe only; AR-LDM's files hold B, G, R)\n"
          "      --restart        build: discard an interrupted build instead of resuming it\n"
          "      --limit N        build: at most N stories per split (trials)\n"
          "      --report FILE    build: the JSON report (default FILE.report.json)\n"
          "      --no-progress    build: no progress display\n"
          "      --digest         verify: print content digests\n"
          "  -i, --index N        item index (after on_bad_story = skip)\n"
          "  -o, --output FILE    output file\n"
          "  -s, --set KEY=VALUE  override a value, e.g. -s dataset.split=val\n"
          "  -h, --help           this help\n");
}

/* A registry over the plugin search path (no configuration file). */
static mmp_registry_t *open_registry(void) {
  mmp_registry_t *reg = mmp_registry_new();
  if (reg && mmp_registry_set_search_path(reg, NULL) < 0) {
    mmp_registry_free(reg);
    return NULL;
  }
  return reg;
}

/* The dataset plugin @name, or (@name NULL) the one whose inspect() scores
 * @path highest. (transfer none) NULL + message. */
static const mmp_dataset_ops_t *find_dataset(mmp_registry_t *reg, const char *name, const char *path) {
  if (name) {
    const mmp_plugin_t *p = mmp_registry_find(reg, MMP_KIND_DATASET, name);
    return p ? (const mmp_dataset_ops_t *)p : NULL;
  }
  mmp_registry_load_all(reg, NULL);
  const mmp_dataset_ops_t *best = NULL;
  int best_score = 0, last_rc = 0;
  char last_msg[1024] = "";
  for (size_t i = 0; i < mmp_registry_count(reg); i++) {
    const mmp_plugin_t *p = mmp_registry_at(reg, i);
    if (p->kind != MMP_KIND_DATASET) continue;
    const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)p;
    if (!MMP_OPS_HAS(ops, mmp_dataset_ops_t, inspect)) continue;
    mmp_error_clear();
    int score = ops->inspect(p, path, MMP_DATASET_PROBE, NULL);
    if (score < 0) {
      last_rc = score;
      snprintf(last_msg, sizeof last_msg, "%s", mmp_error_last());
    } else if (score > best_score) {
      best = ops;
      best_score = score;
    }
  }
  if (!best) {
    if (last_rc < 0) mmp_error_set(last_rc, "%s", last_msg);
    else mmp_error_set(MMP_EDATA, "%s: no dataset plugin recognises this file (give --dataset NAME)", path);
  }
  return best;
}

static int do_inspect(const char *path, const char *name, mmp_dataset_inspect_t mode) {
  mmp_registry_t *reg = open_registry();
  const mmp_dataset_ops_t *ops = reg ? find_dataset(reg, name, path) : NULL;
  int code = PIPE_EXIT_OK;
  if (!ops) {
    code = pipe_fail("dataset", mmp_error_code());
  } else if (!MMP_OPS_HAS(ops, mmp_dataset_ops_t, inspect)) {
    mmp_error_set(MMP_EUNSUPPORTED, "dataset '%s' keeps no files of its own (no inspect entry)", ops->base.name);
    code = pipe_fail("dataset", MMP_EUNSUPPORTED);
  } else {
    if (!name && mode != MMP_DATASET_DIGEST && !pipe_quiet)
      fprintf(stderr, "pipeline dataset: reading %s as '%s'\n", path, ops->base.name);
    int rc = ops->inspect(&ops->base, path, mode, stdout);
    fflush(stdout);
    if (rc < 0) code = pipe_fail("dataset", rc);
  }
  mmp_registry_free(reg);
  return code;
}

typedef struct build_args {
  const char *raw, *out, *report;
  const char **options;
  size_t noptions;
  int threads;
  unsigned flags;
  long long limit;
  int progress;
} build_args_t;

static int do_build(const char *name, const build_args_t *a) {
  mmp_registry_t *reg = open_registry();
  mmp_config_t *cfg = mmp_config_new();
  mmp_context_t *ctx = NULL;
  const mmp_plugin_t *p = reg ? mmp_registry_find(reg, MMP_KIND_DATASET, name) : NULL;
  const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)p;
  int code = PIPE_EXIT_OK, rc;
  if (!p || !cfg || !(ctx = mmp_context_new(reg, cfg))) {
    code = pipe_fail("dataset", mmp_error_code());
    goto out;
  }
  if (!MMP_OPS_HAS(ops, mmp_dataset_ops_t, build)) {
    mmp_error_set(MMP_EUNSUPPORTED, "dataset '%s' cannot be built from raw data (no build entry)", name);
    code = pipe_fail("dataset", MMP_EUNSUPPORTED);
    goto out;
  }
  mmp_dataset_build_t req = {.struct_size = sizeof req, .raw_dir = a->raw, .out_path = a->out,
                             .report_path = a->report, .options = a->options, .threads = a->threads,
                             .flags = a->flags, .limit = a->limit};
  mmp_context_set_progress(ctx, a->progress && !pipe_quiet);
#if defined(__GLIBC__)
  /* The build's workers allocate and free each frame's buffers (the decoded
   * image, the filtered rows, the PNG: about 0.5 MiB each). By default glibc
   * hands the freed top of a thread's heap back to the kernel once it
   * exceeds twice the largest such block, and every frame then faulted its
   * pages in again (a fifth of a VIST build's CPU time; doc/performance.md).
   * Blocks below 32 MiB come from the heaps, and up to 256 MiB of free top
   * stays mapped. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  pipe_catch_sigint(ctx);
  rc = ops->build(p, &req, ctx);
  pipe_catch_sigint(NULL);
  if (rc < 0) code = pipe_fail("dataset", rc);
out:
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return code;
}

#ifdef MMP_WITH_PNG
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

#endif

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
  for (int i = 0; i < ITEM_FRAMES; i++) {
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
#ifndef MMP_WITH_PNG
    mmp_error_set(MMP_EUNSUPPORTED, "built without libpng: cannot write %s", output);
    code = pipe_fail("dataset", MMP_EUNSUPPORTED);
  }
#else
    mmp_image_t fr[ITEM_FRAMES] = {{0}}, strip = {0};
    int n = 0;
    rc = item_frames(mmp_tensormap_get(m, "images"), fr, ITEM_FRAMES, &n);
    if (rc == 0 && n > 0) rc = mmp_image_alloc(&strip, fr[0].w * n, fr[0].h, 3);
    for (int i = 0; rc == 0 && i < n; i++)
      for (int y = 0; y < fr[0].h; y++)
        memcpy(strip.data + ((size_t)y * strip.w + (size_t)i * fr[0].w) * 3,
               fr[i].data + (size_t)y * fr[0].w * 3, (size_t)fr[0].w * 3);
    if (rc == 0) rc = mmp_image_png_write(&strip, output);
    if (rc < 0) code = pipe_fail("dataset", rc);
    else if (!pipe_quiet) fprintf(stderr, "pipeline dataset: wrote %d frames to %s\n", n, output);
    for (int i = 0; i < ITEM_FRAMES; i++) mmp_image_clear(&fr[i]);
    mmp_image_clear(&strip);
  }
#endif
out:
  mmp_tensormap_free(m);
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return code;
}

int cmd_dataset(int argc, char **argv) {
  enum { OPT_OUT = 1000, OPT_TRUE_RGB, OPT_RESTART, OPT_LIMIT, OPT_REPORT, OPT_NO_PROGRESS, OPT_DIGEST };
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"index", required_argument, NULL, 'i'},
                                       {"output", required_argument, NULL, 'o'},
                                       {"set", required_argument, NULL, 's'},
                                       {"dataset", required_argument, NULL, 'd'},
                                       {"raw", required_argument, NULL, 'r'},
                                       {"option", required_argument, NULL, 'O'},
                                       {"threads", required_argument, NULL, 'j'},
                                       {"out", required_argument, NULL, OPT_OUT},
                                       {"true-rgb", no_argument, NULL, OPT_TRUE_RGB},
                                       {"restart", no_argument, NULL, OPT_RESTART},
                                       {"limit", required_argument, NULL, OPT_LIMIT},
                                       {"report", required_argument, NULL, OPT_REPORT},
                                       {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
                                       {"digest", no_argument, NULL, OPT_DIGEST},
                                       {NULL, 0, NULL, 0}};
  pipe_sets_t sets = {0};
  const char *output = NULL, *args[2] = {NULL, NULL}, *dataset = NULL;
  build_args_t b = {.progress = 1};
  long long index = -1;
  int nargs = 0, c, digest = 0, code;
  b.options = calloc((size_t)argc + 1, sizeof *b.options);
  if (!b.options) return pipe_fail("dataset", mmp_error_set(MMP_ENOMEM, "out of memory"));
  optind = 1;
  for (;;) {
    c = getopt_long(argc, argv, "+hvqi:o:s:d:r:O:j:", opts, NULL);
    if (c == -1) {
      if (optind >= argc) break;
      if (nargs < 2) args[nargs++] = argv[optind++];
      else {
        code = pipe_usage("dataset", "unexpected argument '%s'", argv[optind]);
        goto out;
      }
      continue;
    }
    if (pipe_common_option(c)) continue;
    char *end = NULL;
    switch (c) {
    case 'h': dataset_help(stdout); code = PIPE_EXIT_OK; goto out;
    case 'i':
      index = strtoll(optarg, &end, 10);
      if (*end || end == optarg) {
        code = pipe_usage("dataset", "--index wants an integer, not '%s'", optarg);
        goto out;
      }
      break;
    case 'o': output = optarg; break;
    case 's': pipe_sets_add(&sets, optarg); break;
    case 'd': dataset = optarg; break;
    case 'r': b.raw = optarg; break;
    case 'O': b.options[b.noptions++] = optarg; break;
    case 'j':
      b.threads = (int)strtol(optarg, &end, 10);
      if (*end || end == optarg || b.threads < 1 || b.threads > 256) {
        code = pipe_usage("dataset", "--threads wants 1..256, not '%s'", optarg);
        goto out;
      }
      break;
    case OPT_OUT: b.out = optarg; break;
    case OPT_TRUE_RGB: b.flags |= MMP_DATASET_BUILD_TRUE_RGB; break;
    case OPT_RESTART: b.flags |= MMP_DATASET_BUILD_NO_RESUME; break;
    case OPT_LIMIT:
      b.limit = strtoll(optarg, &end, 10);
      if (*end || end == optarg || b.limit < 1) {
        code = pipe_usage("dataset", "--limit wants a positive integer, not '%s'", optarg);
        goto out;
      }
      break;
    case OPT_REPORT: b.report = optarg; break;
    case OPT_NO_PROGRESS: b.progress = 0; break;
    case OPT_DIGEST: digest = 1; break;
    default: code = pipe_usage("dataset", "bad option"); goto out;
    }
  }
  const char *verb = args[0];
  if (nargs < 2) {
    code = pipe_usage("dataset", "usage: pipeline dataset info|verify FILE | build NAME --raw DIR --out FILE | "
                                 "show|dump CONFIG.cfg --index N");
  } else if (!strcmp(verb, "info") || !strcmp(verb, "verify")) {
    code = do_inspect(args[1], dataset,
                      !strcmp(verb, "info") ? MMP_DATASET_INFO : digest ? MMP_DATASET_DIGEST : MMP_DATASET_VERIFY);
  } else if (!strcmp(verb, "build")) {
    if (!b.raw || !b.out) code = pipe_usage("dataset", "build needs --raw DIR and --out FILE");
    else code = do_build(args[1], &b);
  } else if (strcmp(verb, "show") && strcmp(verb, "dump")) {
    code = pipe_usage("dataset", "unknown sub-command '%s' (info, verify, build, show, dump)", verb);
  } else if (index < 0) {
    code = pipe_usage("dataset", "%s needs --index N", verb);
  } else if (!strcmp(verb, "dump") && !output) {
    code = pipe_usage("dataset", "dump needs --output ITEM.safetensors");
  } else {
    code = do_item(verb, args[1], index, output, &sets);
  }
out:
  free(b.options);
  pipe_sets_free(&sets);
  return code;
}
