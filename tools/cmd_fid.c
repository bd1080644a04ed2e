/* tools/cmd_fid.c - pipeline fid: the Frechet Inception Distance of two image sets as pytorch-fid or AR-LDM compute it. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <mmpipe/file.h>
#include <mmpipe/frechet.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

#ifdef MMP_WITH_PNG
#include "plugins/common/fidfeat.h"
#endif

static void fid_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline fid REAL GEN --weights FILE [options]\n"
          "       pipeline fid SET --weights FILE --save-stats OUT.safetensors\n\n"
          "The Frechet Inception Distance between two image sets, as pytorch-fid and AR-LDM\n"
          "compute it (doc/evaluation.md). REAL and GEN are each a folder of PNG or JPEG images\n"
          "(sorted by name), a story task's output folder (story*/frame*.png), a story dataset\n"
          "split given by a config file (.cfg with a 'dataset' group, e.g. pororo with\n"
          "split = \"test\": its target frames, frames 1-4 for continuation) or a .safetensors\n"
          "file holding statistics (mu, sigma) or features ([N, D] 'features').\n"
          "Prints 'FID: <value>'.\n\n"
          "  -p, --protocol P    standard (pytorch-fid: full-resolution images -> Inception,\n"
          "                      which resizes to 299) or arldm (AR-LDM: PIL resize to 64x64,\n"
          "                      then Inception at 299); default standard\n"
          "  -w, --weights FILE  FID Inception weights (.safetensors, pytorch-fid's names)\n"
          "  -b, --batch N       images per forward pass (default 50)\n"
          "  -d, --dims D        features: 2048 (pool3, default), 768, 192 or 64 (earlier blocks,\n"
          "                      averaged over space, as pytorch-fid's --dims)\n"
          "  -j, --json OUT      also write the result as JSON\n"
          "  -S, --save-stats OUT  write mu, sigma (f64) and count of the one SET given\n"
          "  -k, --skip-bad      skip unreadable images (counted) instead of failing\n"
          "  -m, --sqrtm M       auto (default: eigen, or schur where a feature is constant over\n"
          "                      a set), eigen (a symmetric eigenproblem: about a second at\n"
          "                      2048-d) or schur (scipy's sqrtm as pytorch-fid: minutes)\n"
          "  -B, --device NAME   cpu, cuda or auto (default cpu)\n"
          "  -v, --verbose       more log output; -q, --quiet: no progress\n"
          "  -h, --help          this help\n");
}

/* the protocols of plugins/common/fidfeat.h (without libpng only
 * statistics files are read) */
enum { PROTO_STANDARD = 0, PROTO_ARLDM = 1 };

typedef struct fid_set {
  const char *path;
  int64_t count, skipped, dim;
  double *mu, *sigma; /* owned */
} fid_set_t;

typedef struct fid_run {
  mmp_component_t *enc;
  mmp_backend_t *be;
  int proto; /* mmp_fid_protocol_t */
  int batch;
  bool skip_bad;
} fid_run_t;

static void set_free(fid_set_t *s) {
  free(s->mu);
  free(s->sigma);
  s->mu = s->sigma = NULL;
}

static bool has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  if (a < b) return false;
  for (size_t i = 0; i < b; i++)
    if ((s[a - b + i] | 0x20) != (suf[i] | 0x20)) return false;
  return true;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Statistics from a .safetensors file: mu + sigma, or features [N, D]. */
static int stats_from_file(fid_set_t *s) {
  mmp_safetensors_t *st = mmp_safetensors_open(s->path);
  if (!st) return mmp_error_code();
  int rc = 0, nd = 0;
  int64_t shape[MMP_MAX_DIMS];
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensor_t *t = NULL, *u = NULL;
  if (mmp_safetensors_info(st, "mu", NULL, &nd, shape) == 0) {
    int nd2 = 0;
    int64_t sh2[MMP_MAX_DIMS];
    if (nd != 1 || mmp_safetensors_info(st, "sigma", NULL, &nd2, sh2) < 0 || nd2 != 2 || sh2[0] != shape[0] ||
        sh2[1] != shape[0]) {
      rc = mmp_error_set(MMP_EDATA, "%s: statistics need mu [D] and sigma [D, D]", s->path);
      goto out;
    }
    s->dim = shape[0];
    t = mmp_safetensors_get(st, "mu", cpu, MMP_F64);
    u = mmp_safetensors_get(st, "sigma", cpu, MMP_F64);
    s->mu = malloc((size_t)s->dim * sizeof *s->mu);
    s->sigma = malloc((size_t)(s->dim * s->dim) * sizeof *s->sigma);
    if (!t || !u || !s->mu || !s->sigma) {
      rc = t && u ? mmp_error_set(MMP_ENOMEM, "out of memory") : mmp_error_code();
      goto out;
    }
    mmp_tensor_to_host(t, s->mu, (size_t)s->dim * sizeof(double));
    mmp_tensor_to_host(u, s->sigma, (size_t)(s->dim * s->dim) * sizeof(double));
    s->count = 0;
    if (mmp_safetensors_info(st, "count", NULL, NULL, NULL) == 0) {
      mmp_tensor_t *c = mmp_safetensors_get(st, "count", cpu, MMP_DTYPE_COUNT);
      int64_t z[1] = {0};
      if (c && mmp_tensor_numel(c) == 1) s->count = (int64_t)mmp_tensor_get(c, z);
      mmp_tensor_unref(c);
    }
  } else if (mmp_safetensors_info(st, "features", NULL, &nd, shape) == 0) {
    if (nd != 2 || shape[0] < 2 || shape[1] < 1) {
      rc = mmp_error_set(MMP_EDATA, "%s: features must be [N >= 2, D]", s->path);
      goto out;
    }
    t = mmp_safetensors_get(st, "features", cpu, MMP_F32);
    float *f = t ? malloc((size_t)(shape[0] * shape[1]) * sizeof *f) : NULL;
    s->dim = shape[1];
    s->count = shape[0];
    s->mu = malloc((size_t)s->dim * sizeof *s->mu);
    s->sigma = malloc((size_t)(s->dim * s->dim) * sizeof *s->sigma);
    if (!f || !s->mu || !s->sigma) {
      free(f);
      rc = t ? mmp_error_set(MMP_ENOMEM, "out of memory") : mmp_error_code();
      goto out;
    }
    mmp_tensor_to_host(t, f, (size_t)(shape[0] * shape[1]) * sizeof *f);
    rc = mmp_feature_stats(f, shape[0], shape[1], s->mu, s->sigma);
    free(f);
  } else {
    rc = mmp_error_set(MMP_EDATA, "%s: holds neither statistics (mu, sigma) nor features", s->path);
  }
out:
  mmp_tensor_unref(t);
  mmp_tensor_unref(u);
  mmp_safetensors_close(st);
  return rc;
}

#ifdef MMP_WITH_PNG
/* The progress line of one set (stderr). */
typedef struct prog {
  const char *what;
  int64_t total; /* images expected */
  double t0;
} prog_t;

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress(void *user, int64_t done) {
  const prog_t *p = user;
  if (pipe_quiet) return;
  int64_t total = p->total > done ? p->total : done;
  double el = mono_now() - p->t0, rate = el > 0 ? (double)done / el : 0;
  double eta = rate > 0 ? (double)(total - done) / rate : 0;
  fprintf(stderr, "\rfid: %s %lld/%lld images, %.1f img/s, ETA %.0f s   ", p->what, (long long)done, (long long)total,
          rate, eta);
  if (done == total) fputc('\n', stderr);
}

/* The accumulated features' statistics into @s; frees @a. */
static int acc_finish(mmp_fid_acc_t *a, fid_set_t *s, int rc) {
  mmp_fid_stats_t st = {0};
  if (rc == 0 && (rc = mmp_fid_acc_finish(a, &st)) < 0) mmp_error_prefix("%s: ", s->path);
  mmp_fid_acc_free(a);
  if (rc == 0) {
    s->count = st.count;
    s->dim = st.dim;
    s->mu = st.mu;
    s->sigma = st.sigma;
  }
  return rc;
}

/* The image files @paths (n of them, in order; PNG or JPEG by signature,
 * mmp_image_load) into @s. */
static int stats_from_files(const fid_run_t *r, fid_set_t *s, char **paths, size_t n) {
  prog_t pr = {.what = s->path, .total = (int64_t)n, .t0 = mono_now()};
  mmp_fid_acc_t *a = mmp_fid_acc_new(r->enc, r->proto, r->batch, progress, &pr);
  if (!a) return mmp_error_code();
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    mmp_image_t im = {0};
    int lr = mmp_image_load(paths[i], &im);
    if (lr < 0) {
      if (!r->skip_bad || lr == MMP_ENOMEM) {
        rc = lr;
        break;
      }
      MMP_WARN("fid", "skipping %s: %s", paths[i], mmp_error_last());
      s->skipped++;
      pr.total--;
      continue;
    }
    if ((rc = mmp_fid_acc_add(a, &im)) < 0) mmp_error_prefix("%s: ", paths[i]);
    mmp_image_clear(&im);
  }
  return acc_finish(a, s, rc);
}
#endif

static bool is_image_name(const char *name) {
  return has_suffix(name, ".png") || has_suffix(name, ".jpg") || has_suffix(name, ".jpeg");
}

/* Append "dir/name" to a growing list. */
static int list_push(char ***list, size_t *n, size_t *cap, const char *dir, const char *name) {
  if (*n == *cap) {
    size_t nc = *cap ? 2 * *cap : 64;
    char **nl = realloc(*list, nc * sizeof *nl);
    if (!nl) return mmp_error_set(MMP_ENOMEM, "out of memory");
    *list = nl;
    *cap = nc;
  }
  size_t len = strlen(dir) + strlen(name) + 2;
  if (!((*list)[*n] = malloc(len))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  snprintf((*list)[*n], len, "%s/%s", dir, name);
  (*n)++;
  return 0;
}

/* A story task's output folder holds story<NNNNN>/frame<F>.png (and
 * strip.png, index.html, run.json: not frames). */
static bool is_story_dir_name(const char *name) {
  if (strncmp(name, "story", 5) != 0 || !name[5]) return false;
  for (const char *c = name + 5; *c; c++)
    if (*c < '0' || *c > '9') return false;
  return true;
}

static bool is_frame_name(const char *name) {
  if (strncmp(name, "frame", 5) != 0 || name[5] < '0' || name[5] > '9') return false;
  const char *c = name + 5;
  while (*c >= '0' && *c <= '9') c++;
  return strcmp(c, ".png") == 0;
}

/* Frame files sort by their number (frame10 after frame9). */
static int cmp_frame(const void *a, const void *b) {
  const char *x = strrchr(*(char *const *)a, '/'), *y = strrchr(*(char *const *)b, '/');
  long fx = strtol(x + 6, NULL, 10), fy = strtol(y + 6, NULL, 10);
  return fx < fy ? -1 : fx > fy;
}

static void list_free(char **list, size_t n) {
  for (size_t i = 0; i < n; i++) free(list[i]);
  free(list);
}

static int stats_from_dir(const fid_run_t *r, fid_set_t *s) {
#ifndef MMP_WITH_PNG
  (void)r;
  return mmp_error_set(MMP_EUNSUPPORTED, "%s: image folders need libpng (this build has none)", s->path);
#else
  DIR *d = opendir(s->path);
  if (!d) return mmp_error_set(MMP_EIO, "%s: %s", s->path, strerror(errno));
  char **names = NULL, **stories = NULL;
  size_t n = 0, cap = 0, ns = 0, scap = 0;
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    /* pytorch-fid's IMAGE_EXTENSIONS: the ones not decoded here are an
     * error rather than silently left out of the count */
    static const char *const other[] = {".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"};
    for (size_t k = 0; k < sizeof other / sizeof *other && rc == 0; k++)
      if (has_suffix(e->d_name, other[k]))
        rc = mmp_error_set(MMP_EUNSUPPORTED, "%s/%s: only PNG and JPEG images are supported", s->path, e->d_name);
    if (rc) break;
    if (is_story_dir_name(e->d_name)) rc = list_push(&stories, &ns, &scap, s->path, e->d_name);
    else if (is_image_name(e->d_name)) rc = list_push(&names, &n, &cap, s->path, e->d_name);
    if (rc) break;
  }
  closedir(d);
  if (rc == 0 && ns > 0 && n == 0) {
    /* a story task's output folder: its frames, story by story */
    qsort(stories, ns, sizeof *stories, cmp_str);
    for (size_t i = 0; rc == 0 && i < ns; i++) {
      DIR *sd = opendir(stories[i]);
      if (!sd) {
        rc = mmp_error_set(MMP_EIO, "%s: %s", stories[i], strerror(errno));
        break;
      }
      size_t first = n;
      while (rc == 0 && (e = readdir(sd)) != NULL)
        if (is_frame_name(e->d_name)) rc = list_push(&names, &n, &cap, stories[i], e->d_name);
      closedir(sd);
      qsort(names + first, n - first, sizeof *names, cmp_frame);
    }
  } else if (rc == 0) {
    qsort(names, n, sizeof *names, cmp_str);
  }
  list_free(stories, ns);
  if (rc == 0 && n < 2) rc = mmp_error_set(MMP_EDATA, "%s: fewer than 2 PNG or JPEG images", s->path);
  if (rc == 0) rc = stats_from_files(r, s, names, n);
  list_free(names, n);
  return rc;
#endif
}

#ifdef MMP_WITH_PNG
/* A story dataset split from a config file (its `dataset` group, e.g.
 * pororo with split = "test"): every item's target frames, which for the
 * test split are AR-LDM's uint8 HWC originals (frames 1-4 for
 * continuation: the dataset leaves out frame 0 as AR-LDM does). */
static int stats_from_dataset(const fid_run_t *r, fid_set_t *s) {
  mmp_config_t *cfg = pipe_load_config(s->path, NULL);
  if (!cfg) return mmp_error_code();
  int rc = 0;
  mmp_registry_t *reg = mmp_registry_new();
  mmp_context_t *ctx = NULL;
  mmp_component_t *ds = NULL;
  prog_t pr = {.what = s->path, .t0 = mono_now()};
  mmp_fid_acc_t *a = mmp_fid_acc_new(r->enc, r->proto, r->batch, progress, &pr);
  if (!a) rc = mmp_error_code();
  if (rc || !reg || (rc = mmp_registry_set_search_path(reg, cfg)) < 0 || !(ctx = mmp_context_new(reg, cfg)) ||
      !(ds = mmp_component_create(ctx, MMP_KIND_DATASET, "dataset"))) {
    rc = rc ? rc : mmp_error_code();
    goto out;
  }
  const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)ds->plugin;
  int64_t size = ops->size(ds->self);
  for (int64_t i = 0; rc == 0 && i < size; i++) {
    mmp_tensormap_t *m = mmp_tensormap_new();
    if (!m) {
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      break;
    }
    if ((rc = ops->get(ds->self, i, m)) < 0) {
      mmp_error_prefix("%s: item %lld: ", s->path, (long long)i);
      mmp_tensormap_free(m);
      break;
    }
    mmp_tensor_t *t = mmp_tensormap_get(m, "images");
    if (!t || t->dtype != MMP_U8 || t->ndim != 4 || t->shape[3] != 3 || t->shape[1] < 1 || t->shape[2] < 1 ||
        t->shape[1] > 32768 || t->shape[2] > 32768) {
      rc = mmp_error_set(MMP_EDATA,
                         "%s: item %lld has no uint8 [N, H, W, 3] 'images' (FID needs the test split's frames)",
                         s->path, (long long)i);
      mmp_tensormap_free(m);
      break;
    }
    if (pr.total == 0) pr.total = size * t->shape[0];
    int64_t nf = t->shape[0], h = t->shape[1], w = t->shape[2];
    mmp_image_t im = {0};
    if ((rc = mmp_image_alloc(&im, (int)w, (int)h, 3)) == 0) {
      /* contiguous host bytes, wherever the dataset put the tensor */
      uint8_t *host = malloc((size_t)(nf * h * w * 3));
      if (!host) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      else rc = mmp_tensor_to_host(t, host, (size_t)(nf * h * w * 3));
      const uint8_t *src = host;
      for (int64_t f = 0; rc == 0 && f < nf; f++) {
        memcpy(im.data, src + (size_t)(f * h * w * 3), (size_t)(h * w * 3));
        rc = mmp_fid_acc_add(a, &im);
      }
      free(host);
    }
    mmp_image_clear(&im);
    mmp_tensormap_free(m);
  }
out:
  rc = a ? acc_finish(a, s, rc) : rc;
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return rc;
}
#endif

static int compute_set(const fid_run_t *r, fid_set_t *s) {
  struct stat sb;
  if (stat(s->path, &sb) < 0) return mmp_error_set(MMP_EIO, "%s: %s", s->path, strerror(errno));
  if (S_ISDIR(sb.st_mode)) {
    if (!r->enc) return mmp_error_set(MMP_EINVAL, "%s: an image folder needs --weights", s->path);
    return stats_from_dir(r, s);
  }
  if (has_suffix(s->path, ".safetensors")) return stats_from_file(s);
  if (has_suffix(s->path, ".cfg") || has_suffix(s->path, ".conf")) {
    if (!r->enc) return mmp_error_set(MMP_EINVAL, "%s: a dataset needs --weights", s->path);
#ifdef MMP_WITH_PNG
    return stats_from_dataset(r, s);
#else
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: datasets need libpng (this build has none)", s->path);
#endif
  }
  return mmp_error_set(MMP_EINVAL, "%s: neither a folder of images, a dataset config (.cfg) nor a .safetensors file",
                       s->path);
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

static int save_stats(const char *out, const fid_set_t *s) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  int64_t d1[1] = {s->dim}, d2[2] = {s->dim, s->dim}, one[1] = {1};
  int64_t cnt = s->count;
  mmp_tensormap_t *m = mmp_tensormap_new();
  int rc = mmp_tensormap_set(m, "mu", mmp_tensor_from_data(cpu, MMP_F64, 1, d1, s->mu));
  if (rc == 0) rc = mmp_tensormap_set(m, "sigma", mmp_tensor_from_data(cpu, MMP_F64, 2, d2, s->sigma));
  if (rc == 0) rc = mmp_tensormap_set(m, "count", mmp_tensor_from_data(cpu, MMP_I64, 1, one, &cnt));
  static const char *const meta[] = {"format", "mmpipe fid statistics: mu [D] f64, sigma [D, D] f64 (n-1), count", NULL};
  if (rc == 0) rc = mmp_safetensors_save_map(out, m, meta);
  mmp_tensormap_free(m);
  return rc;
}

int cmd_fid(int argc, char **argv) {
  static const struct option opts[] = {
      {"help", no_argument, NULL, 'h'},          {"protocol", required_argument, NULL, 'p'},
      {"weights", required_argument, NULL, 'w'}, {"batch", required_argument, NULL, 'b'},
      {"json", required_argument, NULL, 'j'},    {"save-stats", required_argument, NULL, 'S'},
      {"skip-bad", no_argument, NULL, 'k'},      {"device", required_argument, NULL, 'B'},
      {"verbose", no_argument, NULL, 'v'},       {"quiet", no_argument, NULL, 'q'},
      {"sqrtm", required_argument, NULL, 'm'},   {"dims", required_argument, NULL, 'd'},
      {NULL, 0, NULL, 0}};
  int block = 3;
  mmp_sqrtm_method_t method = MMP_SQRTM_AUTO;
  const char *weights = NULL, *json = NULL, *save = NULL, *backend = "cpu";
  fid_run_t r = {.proto = PROTO_STANDARD, .batch = 50};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hp:w:b:j:S:kB:vqm:d:", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': fid_help(stdout); return PIPE_EXIT_OK;
    case 'p':
      if (strcmp(optarg, "standard") == 0) r.proto = PROTO_STANDARD;
      else if (strcmp(optarg, "arldm") == 0) r.proto = PROTO_ARLDM;
      else return pipe_usage("fid", "--protocol must be standard or arldm, not '%s'", optarg);
      break;
    case 'w': weights = optarg; break;
    case 'b': {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || v < 1 || v > 4096) return pipe_usage("fid", "--batch must be 1..4096");
      r.batch = (int)v;
      break;
    }
    case 'j': json = optarg; break;
    case 'S': save = optarg; break;
    case 'k': r.skip_bad = true; break;
    case 'd':
      /* InceptionV3.BLOCK_INDEX_BY_DIM */
      if (strcmp(optarg, "64") == 0) block = 0;
      else if (strcmp(optarg, "192") == 0) block = 1;
      else if (strcmp(optarg, "768") == 0) block = 2;
      else if (strcmp(optarg, "2048") == 0) block = 3;
      else return pipe_usage("fid", "--dims must be 64, 192, 768 or 2048, not '%s'", optarg);
      break;
    case 'm':
      if (strcmp(optarg, "schur") == 0) method = MMP_SQRTM_SCHUR;
      else if (strcmp(optarg, "eigen") == 0) method = MMP_SQRTM_EIGEN;
      else if (strcmp(optarg, "auto") == 0) method = MMP_SQRTM_AUTO;
      else return pipe_usage("fid", "--sqrtm must be auto, eigen or schur, not '%s'", optarg);
      break;
    case 'B': backend = optarg; break;
    default: return pipe_usage("fid", "bad option");
    }
  }
  int npaths = argc - optind;
  if (save ? npaths != 1 : npaths != 2)
    return pipe_usage("fid", save ? "--save-stats takes one SET" : "expected REAL and GEN");
  fid_set_t sets[2] = {{.path = argv[optind]}, {.path = npaths > 1 ? argv[optind + 1] : NULL}};
  mmp_registry_t *reg = NULL;
  mmp_config_t *cfg = NULL;
  mmp_context_t *ctx = NULL;
  int rc = 0;
  if (weights) {
    char abs[PATH_MAX], text[PATH_MAX + 512];
    if (!realpath(weights, abs)) {
      mmp_error_set(MMP_EIO, "--weights %s: %s", weights, strerror(errno));
      return pipe_fail("fid", MMP_EIO);
    }
    if (strchr(abs, '"') || strchr(backend, '"')) return pipe_usage("fid", "quotes in paths are not supported");
    snprintf(text, sizeof text,
             "device = \"%s\";\nencoder = { name = \"inception_fid\"; weights = \"%s\"; blocks = [%d]; };\n",
             backend, abs, block);
    cfg = mmp_config_parse(text, "fid");
    reg = cfg ? mmp_registry_new() : NULL;
    if (!reg || (rc = mmp_registry_set_search_path(reg, cfg)) < 0) goto fail;
    if (!(ctx = mmp_context_new(reg, cfg))) goto fail;
    if (!(r.enc = mmp_component_create(ctx, MMP_KIND_ENCODER, "encoder"))) goto fail;
    r.be = mmp_context_backend(ctx);
  }
  for (int i = 0; i < npaths; i++)
    if ((rc = compute_set(&r, &sets[i])) < 0) goto fail;
  if (save) {
    if ((rc = save_stats(save, &sets[0])) < 0) goto fail;
    if (!pipe_quiet) printf("saved statistics of %lld images (%lld features) to %s\n", (long long)sets[0].count,
                            (long long)sets[0].dim, save);
  } else {
    if (sets[0].dim != sets[1].dim) {
      rc = mmp_error_set(MMP_EDATA, "%s has %lld features but %s has %lld", sets[0].path, (long long)sets[0].dim,
                         sets[1].path, (long long)sets[1].dim);
      goto fail;
    }
    double fid = 0;
    mmp_frechet_info_t info;
    if ((rc = mmp_frechet_distance_method(sets[0].mu, sets[0].sigma, sets[1].mu, sets[1].sigma, sets[0].dim, method,
                                          &fid, &info)) < 0)
      goto fail;
    if (info.eps_retry)
      MMP_WARN("fid", "fid calculation produces singular product; adding 1e-06 to diagonal of cov estimates");
    printf("FID: %.17g\n", fid);
    for (int i = 0; i < 2; i++)
      if (sets[i].skipped) printf("skipped %lld unreadable images of %s\n", (long long)sets[i].skipped, sets[i].path);
    if (json) {
      mmp_afile_t *af = mmp_afile_open(json);
      if (!af) {
        rc = mmp_error_code();
        goto fail;
      }
      FILE *f = mmp_afile_stream(af);
      fprintf(f, "{\"fid\": %.17g, \"protocol\": \"%s\", \"features\": %lld, \"eps_retry\": %s, "
                 "\"complex_root\": %s, \"max_imag_diag\": %.6g, \"sqrtm\": \"%s\"",
              fid, r.proto == PROTO_ARLDM ? "arldm" : "standard", (long long)sets[0].dim,
              info.eps_retry ? "true" : "false", info.complex_root ? "true" : "false", info.max_imag_diag,
              info.method == MMP_SQRTM_EIGEN ? "eigen" : "schur");
      static const char *const names[2] = {"real", "gen"};
      for (int i = 0; i < 2; i++) {
        fprintf(f, ", \"%s\": {\"path\": ", names[i]);
        json_str(f, sets[i].path);
        fprintf(f, ", \"count\": %lld, \"skipped\": %lld}", (long long)sets[i].count, (long long)sets[i].skipped);
      }
      fprintf(f, "}\n");
      if ((rc = mmp_afile_commit(af)) < 0) goto fail;
    }
  }
  set_free(&sets[0]);
  set_free(&sets[1]);
  mmp_component_free(r.enc);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return PIPE_EXIT_OK;
fail:
  if (rc == 0) rc = mmp_error_code();
  set_free(&sets[0]);
  set_free(&sets[1]);
  mmp_component_free(r.enc);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return pipe_fail("fid", rc);
}
