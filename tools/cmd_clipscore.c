/* tools/cmd_clipscore.c - pipeline clipscore: CLIP-T (caption-frame) and CLIP-I
 * (frame-frame) of generated stories. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mmpipe/file.h>
#include <mmpipe/safetensors.h>

#include "tools/clipscore_captions.h"
#include "tools/commands.h"

#ifdef MMP_WITH_PNG
#include "plugins/processors/imagecommon.h"
#endif

static void cs_help(FILE *f) {
  fprintf(
      f,
      "Usage: pipeline clipscore INPUT --model DIR [options]\n\n"
      "CLIP-T (cosine of CLIP's image and text embeddings of each frame and "
      "its caption)\n"
      "and CLIP-I (cosine of the image embeddings of a story's frames, all "
      "pairs) per story\n"
      "and over the run (doc/evaluation.md). INPUT is a story task's output "
      "folder\n"
      "(story<N>/frame<F>.png: frame F of story N has caption F of story N) or "
      "a folder of\n"
      "PNG or JPEG images (sorted by name, --frames per story, one caption "
      "each).\n"
      "Prints a line per story, then 'CLIP-T: <value>' and 'CLIP-I: "
      "<value>'.\n\n"
      "  -m, --model DIR     a transformers CLIPModel folder: config.json, "
      "model.safetensors\n"
      "                      or pytorch_model.bin (text_model.*, "
      "vision_model.*,\n"
      "                      visual_projection, text_projection), vocab.json, "
      "merges.txt\n"
      "  -t, --tokenizer DIR vocab.json and merges.txt elsewhere (default: the "
      "model folder)\n"
      "  -c, --captions FILE JSON: the story task's stories_file "
      "([{\"captions\": [...]}, ...]),\n"
      "                      a list of caption lists, or (image folders) one "
      "caption per\n"
      "                      image; default for an output folder: its "
      "run.json's stories_file\n"
      "  -f, --frames N      images per story in an image folder (default 5)\n"
      "  -s, --scale S       multiply the scores by S (e.g. 100; default 1)\n"
      "  -j, --json OUT      also write the result as JSON; an existing JSON "
      "object in OUT\n"
      "                      (e.g. pipeline fid --json) keeps its keys\n"
      "  -E, --save-embeddings OUT  write image_embeds and text_embeds [N, P] "
      "(.safetensors)\n"
      "  -S, --size N        image side (default: the model's "
      "vision_config.image_size)\n"
      "  -b, --batch N       images per forward pass (default 32)\n"
      "  -B, --device NAME   cpu, cuda or auto (default cpu)\n"
      "  -v, --verbose       more log output; -q, --quiet: no progress\n"
      "  -h, --help          this help\n");
}

typedef struct cs_item {
  char *path, *caption; /* owned */
  int64_t story;        /* index into cs_run_t.stories */
} cs_item_t;

typedef struct cs_story {
  char *name; /* owned */
  int64_t first, count;
  double clip_t, clip_i; /* clip_i NAN for a one-frame story */
} cs_story_t;

typedef struct cs_run {
  cs_item_t *items;
  int64_t n, cap;
  cs_story_t *stories;
  int64_t ns, scap;
  float *img, *txt; /* [n, P] each */
  int64_t P;
  double *frame_t; /* [n] cosines */
} cs_run_t;

static void run_free(cs_run_t *r) {
  for (int64_t i = 0; i < r->n; i++) {
    free(r->items[i].path);
    free(r->items[i].caption);
  }
  for (int64_t i = 0; i < r->ns; i++)
    free(r->stories[i].name);
  free(r->items);
  free(r->stories);
  free(r->img);
  free(r->txt);
  free(r->frame_t);
}

static int add_story(cs_run_t *r, const char *name) {
  if (r->ns == r->scap) {
    int64_t nc = r->scap ? 2 * r->scap : 16;
    cs_story_t *ns = realloc(r->stories, (size_t)nc * sizeof *ns);
    if (!ns)
      return mmp_error_set(MMP_ENOMEM, "out of memory");
    r->stories = ns;
    r->scap = nc;
  }
  cs_story_t *s = &r->stories[r->ns];
  memset(s, 0, sizeof *s);
  if (!(s->name = strdup(name)))
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  s->first = r->n;
  r->ns++;
  return 0;
}

static int add_item(cs_run_t *r, const char *dir, const char *name,
                    const char *caption) {
  if (r->n == r->cap) {
    int64_t nc = r->cap ? 2 * r->cap : 64;
    cs_item_t *ni = realloc(r->items, (size_t)nc * sizeof *ni);
    if (!ni)
      return mmp_error_set(MMP_ENOMEM, "out of memory");
    r->items = ni;
    r->cap = nc;
  }
  cs_item_t *it = &r->items[r->n];
  size_t len = strlen(dir) + strlen(name) + 2;
  it->path = malloc(len);
  it->caption = strdup(caption);
  if (!it->path || !it->caption) {
    free(it->path);
    free(it->caption);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  snprintf(it->path, len, "%s/%s", dir, name);
  it->story = r->ns - 1;
  r->stories[r->ns - 1].count++;
  r->n++;
  return 0;
}

static bool is_story_dir_name(const char *name) {
  if (strncmp(name, "story", 5) != 0 || !name[5])
    return false;
  for (const char *c = name + 5; *c; c++)
    if (*c < '0' || *c > '9')
      return false;
  return true;
}

static bool frame_number(const char *name, long *f) {
  if (strncmp(name, "frame", 5) != 0 || name[5] < '0' || name[5] > '9')
    return false;
  char *end;
  *f = strtol(name + 5, &end, 10);
  return strcmp(end, ".png") == 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}
static int cmp_long(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return x < y ? -1 : x > y;
}

typedef struct names {
  char **v;
  size_t n, cap;
} names_t;

static int names_push(names_t *l, const char *s) {
  if (l->n == l->cap) {
    size_t nc = l->cap ? 2 * l->cap : 64;
    char **nv = realloc(l->v, nc * sizeof *nv);
    if (!nv)
      return mmp_error_set(MMP_ENOMEM, "out of memory");
    l->v = nv;
    l->cap = nc;
  }
  if (!(l->v[l->n] = strdup(s)))
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  l->n++;
  return 0;
}

static void names_free(names_t *l) {
  for (size_t i = 0; i < l->n; i++)
    free(l->v[i]);
  free(l->v);
}

/* stories_file from INPUT/run.json (a story task's record); relative paths
 * are tried as given, then beside INPUT. */
static int captions_from_run(const char *input, char *out, size_t n) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/run.json", input);
  json_error_t err;
  json_t *j = json_load_file(p, 0, &err);
  const char *sf =
      j ? json_string_value(json_object_get(j, "stories_file")) : NULL;
  int rc = 0;
  if (!sf || !*sf) {
    rc = mmp_error_set(
        MMP_EINVAL, "%s: no captions: give --captions (%s)", input,
        j ? "its run.json records no stories_file" : "it has no run.json");
  } else if (sf[0] != '/' && access(sf, R_OK) != 0) {
    snprintf(out, n, "%s/%s", input, sf);
  } else {
    snprintf(out, n, "%s", sf);
  }
  json_decref(j);
  return rc;
}

/* The frames of INPUT with their captions, story by story. */
static int list_input(cs_run_t *r, const char *input, const char *captions,
                      int64_t frames) {
  DIR *d = opendir(input);
  if (!d)
    return mmp_error_set(MMP_EIO, "%s: %s", input, strerror(errno));
  names_t stories = {0}, images = {0};
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (is_story_dir_name(e->d_name))
      rc = names_push(&stories, e->d_name);
#ifdef MMP_WITH_PNG
    else if (mmp_image_name_known(e->d_name))
      rc = names_push(&images, e->d_name);
#endif
  }
  closedir(d);
  char cpath[PATH_MAX];
  json_t *caps = NULL;
  bool nested = false, story_mode = stories.n > 0 && images.n == 0;
  if (rc == 0 && !captions && story_mode &&
      (rc = captions_from_run(input, cpath, sizeof cpath)) == 0)
    captions = cpath;
  if (rc == 0 && !captions)
    rc = mmp_error_set(MMP_EINVAL, "%s: an image folder needs --captions",
                       input);
  if (rc == 0 && !(caps = cs_captions_load(captions, &nested)))
    rc = mmp_error_code();
  if (rc == 0 && story_mode) {
    if (!nested)
      rc = mmp_error_set(
          MMP_EDATA, "%s: a story output folder needs captions story by story",
          captions);
    qsort(stories.v, stories.n, sizeof *stories.v, cmp_str);
    for (size_t s = 0; rc == 0 && s < stories.n; s++) {
      char sd[PATH_MAX];
      snprintf(sd, sizeof sd, "%s/%s", input, stories.v[s]);
      long idx = strtol(stories.v[s] + 5, NULL, 10);
      const json_t *sc = cs_captions_story(caps, idx);
      if (!sc) {
        rc = mmp_error_set(MMP_EDATA,
                           "%s: story %ld has no captions in %s (%zu stories)",
                           sd, idx, captions, json_array_size(caps));
        break;
      }
      DIR *dd = opendir(sd);
      if (!dd) {
        rc = mmp_error_set(MMP_EIO, "%s: %s", sd, strerror(errno));
        break;
      }
      long fr[256], f;
      size_t nf = 0;
      while (rc == 0 && (e = readdir(dd)) != NULL)
        if (frame_number(e->d_name, &f)) {
          if (nf == sizeof fr / sizeof *fr)
            rc = mmp_error_set(MMP_EDATA, "%s: more than %zu frames", sd, sizeof fr / sizeof *fr);
          else
            fr[nf++] = f;
        }
      closedir(dd);
      if (rc)
        break;
      qsort(fr, nf, sizeof *fr, cmp_long);
      if ((rc = add_story(r, stories.v[s])) < 0)
        break;
      for (size_t k = 0; rc == 0 && k < nf; k++) {
        const char *c = cs_captions_caption(sc, fr[k]);
        char fname[64];
        snprintf(fname, sizeof fname, "frame%ld.png", fr[k]);
        if (!c)
          rc = mmp_error_set(MMP_EDATA,
                             "%s/%s: story %ld has no caption %ld in %s", sd,
                             fname, idx, fr[k], captions);
        else
          rc = add_item(r, sd, fname, c);
      }
      if (rc == 0 && nf == 0)
        rc = mmp_error_set(MMP_EDATA, "%s: no frame<F>.png", sd);
    }
  } else if (rc == 0) {
    /* an image folder: one caption per image, in name order */
    json_t *flat = cs_captions_flatten(caps);
    qsort(images.v, images.n, sizeof *images.v, cmp_str);
    if (!flat)
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    else if (images.n == 0)
      rc = mmp_error_set(
          MMP_EDATA, "%s: no PNG or JPEG images (nor story<N> folders)", input);
    else if (json_array_size(flat) != images.n)
      rc = mmp_error_set(MMP_EDATA, "%s: %zu images but %zu captions in %s",
                         input, images.n, json_array_size(flat), captions);
    else if (images.n % (size_t)frames)
      rc = mmp_error_set(MMP_EDATA,
                         "%s: %zu images do not make stories of --frames %lld",
                         input, images.n, (long long)frames);
    for (size_t i = 0; rc == 0 && i < images.n; i++) {
      if (i % (size_t)frames == 0) {
        char sn[32];
        snprintf(sn, sizeof sn, "story%05zu", i / (size_t)frames);
        if ((rc = add_story(r, sn)) < 0)
          break;
      }
      rc = add_item(r, input, images.v[i],
                    json_string_value(json_array_get(flat, i)));
    }
    json_decref(flat);
  }
  json_decref(caps);
  names_free(&stories);
  names_free(&images);
  return rc;
}

/* One component's forward; its outputs in @out. */
static int fwd(mmp_component_t *c, mmp_kind_t kind, mmp_tensormap_t *in,
               mmp_tensormap_t *out) {
  mmp_forward_cb f = kind == MMP_KIND_PROCESSOR
                         ? ((const mmp_processor_ops_t *)c->plugin)->forward
                         : ((const mmp_encoder_ops_t *)c->plugin)->forward;
  return f(c->self, "", in, out);
}

/* Append @t's rows [B, P] to @dst at row @at. */
static int take_rows(const mmp_tensor_t *t, const char *name, int64_t B,
                     float *dst, int64_t at, int64_t *P) {
  if (!t || t->ndim != 2 || t->shape[0] != B)
    return mmp_error_set(MMP_EDATA,
                         "clipscore: the encoder gave no [%lld, P] '%s' (a "
                         "CLIPModel with its projections?)",
                         (long long)B, name);
  if (*P && t->shape[1] != *P)
    return mmp_error_set(
        MMP_EDATA,
        "clipscore: '%s' has %lld dimensions, the other embeddings %lld", name,
        (long long)t->shape[1], (long long)*P);
  *P = t->shape[1];
  return mmp_tensor_to_host(t, dst + at * *P, (size_t)(B * *P) * sizeof(float));
}

typedef struct cs_comps {
  mmp_component_t *vit, *text, *proc, *tok;
  int batch;
} cs_comps_t;

#ifdef MMP_WITH_PNG
/* Image embeddings of every item, @batch at a time. */
static int embed_images(const cs_comps_t *c, cs_run_t *r) {
  float *pix = NULL;
  int64_t side = 0, bn = 0, done = 0;
  int rc = 0;
  for (int64_t i = 0; rc == 0 && i < r->n; i++) {
    mmp_image_t im = {0};
    if ((rc = mmp_image_load(r->items[i].path, &im)) < 0)
      break;
    int64_t shape[4] = {1, im.h, im.w, 3};
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    mmp_tensor_t *t =
        mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, shape, im.data);
    mmp_image_clear(&im);
    if (!in || !out || !t)
      rc = mmp_error_code() ? mmp_error_code()
                            : mmp_error_set(MMP_ENOMEM, "out of memory");
    if (rc == 0 && (rc = mmp_tensormap_set(in, "images", t)) == 0)
      t = NULL;
    mmp_tensor_unref(t);
    if (rc == 0)
      rc = fwd(c->proc, MMP_KIND_PROCESSOR, in, out);
    mmp_tensor_t *px = rc == 0 ? mmp_tensormap_get(out, "images") : NULL;
    if (rc == 0 &&
        (!px || px->dtype != MMP_F32 || px->ndim != 4 ||
         px->shape[2] != px->shape[3] || (side && px->shape[2] != side)))
      rc = mmp_error_set(
          MMP_EDATA,
          "clipscore: the image processor gave no f32 [1, 3, S, S] 'images'");
    if (rc == 0 && !pix) {
      side = px->shape[2];
      if (!(pix = malloc((size_t)(c->batch * 3 * side * side) * sizeof *pix)))
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    if (rc == 0)
      rc = mmp_tensor_to_host(px, pix + bn * 3 * side * side,
                              (size_t)(3 * side * side) * sizeof *pix);
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    if (rc) {
      mmp_error_prefix("%s: ", r->items[i].path);
      break;
    }
    if (++bn == c->batch || i == r->n - 1) {
      int64_t s4[4] = {bn, 3, side, side};
      in = mmp_tensormap_new();
      out = mmp_tensormap_new();
      mmp_tensor_t *x =
          mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 4, s4, pix);
      if (!in || !out || !x)
        rc = mmp_error_code() ? mmp_error_code()
                              : mmp_error_set(MMP_ENOMEM, "out of memory");
      if (rc == 0 && (rc = mmp_tensormap_set(in, "pixel_values", x)) == 0)
        x = NULL;
      mmp_tensor_unref(x);
      if (rc == 0)
        rc = fwd(c->vit, MMP_KIND_ENCODER, in, out);
      mmp_tensor_t *e = rc == 0 ? mmp_tensormap_get(out, "image_embeds") : NULL;
      if (rc == 0 && !r->img && e && e->ndim == 2 &&
          !(r->img = malloc((size_t)(r->n * e->shape[1]) * sizeof(float))))
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      if (rc == 0)
        rc = take_rows(e, "image_embeds", bn, r->img, done, &r->P);
      mmp_tensormap_free(in);
      mmp_tensormap_free(out);
      done += bn;
      bn = 0;
      if (!pipe_quiet)
        fprintf(stderr, "\rclipscore: %lld/%lld images   %s", (long long)done,
                (long long)r->n, done == r->n ? "\n" : "");
    }
  }
  free(pix);
  return rc;
}
#endif

/* Text embeddings of every caption, @batch at a time. */
static int embed_texts(const cs_comps_t *c, cs_run_t *r) {
  const mmp_processor_ops_t *tops = (const mmp_processor_ops_t *)c->tok->plugin;
  if (tops->base.struct_size < sizeof(mmp_processor_ops_t) ||
      !tops->encode_text)
    return mmp_error_set(MMP_EUNSUPPORTED,
                         "clipscore: the tokenizer has no encode_text");
  if (!(r->txt = malloc((size_t)(r->n * r->P) * sizeof(float))))
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  const char **texts = malloc((size_t)c->batch * sizeof *texts);
  if (!texts)
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = 0;
  for (int64_t i0 = 0; rc == 0 && i0 < r->n; i0 += c->batch) {
    int64_t B = r->n - i0 < c->batch ? r->n - i0 : c->batch;
    for (int64_t k = 0; k < B; k++)
      texts[k] = r->items[i0 + k].caption;
    mmp_tensormap_t *tk = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if (!tk || !out)
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    if (rc == 0 &&
        (rc = tops->encode_text(c->tok->self, texts, (size_t)B, tk)) < 0)
      mmp_error_prefix("clipscore: caption of %s: ", r->items[i0].path);
    if (rc == 0)
      rc = fwd(c->text, MMP_KIND_ENCODER, tk, out);
    if (rc == 0)
      rc = take_rows(mmp_tensormap_get(out, "text_embeds"), "text_embeds", B,
                     r->txt, i0, &r->P);
    mmp_tensormap_free(tk);
    mmp_tensormap_free(out);
  }
  free(texts);
  return rc;
}

static double cosine(const float *a, const float *b, int64_t P) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t k = 0; k < P; k++) {
    ab += (double)a[k] * b[k];
    aa += (double)a[k] * a[k];
    bb += (double)b[k] * b[k];
  }
  return ab / (sqrt(aa) * sqrt(bb));
}

/* CLIP-T per frame and story, CLIP-I per story; the run's means. */
static void score(cs_run_t *r, double *t_mean, double *i_mean) {
  double st = 0, si = 0;
  int64_t ni = 0;
  for (int64_t i = 0; i < r->n; i++) {
    r->frame_t[i] = cosine(r->img + i * r->P, r->txt + i * r->P, r->P);
    st += r->frame_t[i];
  }
  for (int64_t s = 0; s < r->ns; s++) {
    cs_story_t *y = &r->stories[s];
    double a = 0, b = 0;
    int64_t np = 0;
    for (int64_t i = y->first; i < y->first + y->count; i++) {
      a += r->frame_t[i];
      for (int64_t j = i + 1; j < y->first + y->count; j++, np++)
        b += cosine(r->img + i * r->P, r->img + j * r->P, r->P);
    }
    y->clip_t = a / (double)y->count;
    y->clip_i = np ? b / (double)np : NAN;
    if (np) {
      si += y->clip_i;
      ni++;
    }
  }
  *t_mean = st / (double)r->n;
  *i_mean = ni ? si / (double)ni : NAN;
}

static json_t *num_or_null(double v) {
  return isnan(v) ? json_null() : json_real(v);
}

/* The result into @path (keys added to an existing JSON object there),
 * through a temporary file. */
static int write_json(const char *path, const cs_run_t *r, double tm, double im,
                      double scale, const char *input, const char *model) {
  json_error_t err;
  json_t *root =
      access(path, F_OK) == 0 ? json_load_file(path, 0, &err) : json_object();
  if (!root || !json_is_object(root)) {
    json_decref(root);
    return mmp_error_set(MMP_EDATA,
                         "%s: exists and holds no JSON object to add to", path);
  }
  json_t *st = json_array();
  for (int64_t s = 0; st && s < r->ns; s++) {
    const cs_story_t *y = &r->stories[s];
    json_t *ft = json_array();
    for (int64_t i = y->first; ft && i < y->first + y->count; i++)
      json_array_append_new(ft, json_real(scale * r->frame_t[i]));
    json_array_append_new(st,
                          json_pack("{s:s, s:I, s:o, s:o, s:o}", "name",
                                    y->name, "frames", (json_int_t)y->count,
                                    "clip_t", json_real(scale * y->clip_t),
                                    "clip_i", num_or_null(scale * y->clip_i),
                                    "frame_clip_t", ft ? ft : json_null()));
  }
  json_object_set_new(root, "clip_t", json_real(scale * tm));
  json_object_set_new(root, "clip_i", num_or_null(scale * im));
  json_object_set_new(root, "clipscore",
                      json_pack("{s:s, s:s, s:f, s:I, s:I, s:o}", "input",
                                input, "model", model, "scale", scale, "images",
                                (json_int_t)r->n, "dims", (json_int_t)r->P,
                                "stories", st ? st : json_null()));
  mmp_afile_t *af = mmp_afile_open(path);
  int rc = af ? 0 : mmp_error_code();
  if (af && json_dumpf(root, mmp_afile_stream(af),
                       JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0) {
    mmp_afile_abort(af);
    rc = mmp_error_set(MMP_EIO, "%s: cannot write", path);
  } else if (af)
    rc = mmp_afile_commit(af);
  json_decref(root);
  return rc;
}

static int save_embeddings(const char *path, const cs_run_t *r) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  int64_t s[2] = {r->n, r->P};
  mmp_tensormap_t *m = mmp_tensormap_new();
  int rc =
      m ? mmp_tensormap_set(m, "image_embeds",
                            mmp_tensor_from_data(cpu, MMP_F32, 2, s, r->img))
        : MMP_ENOMEM;
  if (rc == 0)
    rc = mmp_tensormap_set(m, "text_embeds",
                           mmp_tensor_from_data(cpu, MMP_F32, 2, s, r->txt));
  static const char *const meta[] = {
      "format",
      "mmpipe clipscore: image_embeds, text_embeds [N, P] (not normalised)",
      NULL};
  if (rc == 0)
    rc = mmp_safetensors_save_map(path, m, meta); /* atomic */
  mmp_tensormap_free(m);
  return rc;
}

/* image_size and max_position_embeddings of a CLIPModel's config.json. */
static int model_sizes(const char *dir, int64_t *img, int64_t *pos) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/config.json", dir);
  json_error_t err;
  json_t *j = json_load_file(p, 0, &err);
  if (!j)
    return err.line > 0
               ? mmp_error_set(MMP_EDATA, "%s:%d: %s", p, err.line, err.text)
               : mmp_error_set(MMP_EIO, "%s", err.text);
  const char *mt = json_string_value(json_object_get(j, "model_type"));
  json_t *v =
      json_object_get(json_object_get(j, "vision_config"), "image_size");
  json_t *t = json_object_get(json_object_get(j, "text_config"),
                              "max_position_embeddings");
  int rc = 0;
  if (!mt || strcmp(mt, "clip"))
    rc = mmp_error_set(
        MMP_EDATA, "%s: model_type is not \"clip\" (a CLIPModel folder)", p);
  if (rc == 0 && !*img)
    *img = json_is_integer(v) ? json_integer_value(v) : 224;
  if (rc == 0)
    *pos = json_is_integer(t) ? json_integer_value(t) : 77;
  json_decref(j);
  if (rc == 0 && (*img < 1 || *img > 16384 || *pos < 2 || *pos > 65536))
    rc = mmp_error_set(
        MMP_EDATA,
        "%s: image_size %lld or max_position_embeddings %lld out of range", p,
        (long long)*img, (long long)*pos);
  return rc;
}

int cmd_clipscore(int argc, char **argv) {
  static const struct option opts[] = {
      {"help", no_argument, NULL, 'h'},
      {"model", required_argument, NULL, 'm'},
      {"tokenizer", required_argument, NULL, 't'},
      {"captions", required_argument, NULL, 'c'},
      {"frames", required_argument, NULL, 'f'},
      {"scale", required_argument, NULL, 's'},
      {"json", required_argument, NULL, 'j'},
      {"save-embeddings", required_argument, NULL, 'E'},
      {"size", required_argument, NULL, 'S'},
      {"batch", required_argument, NULL, 'b'},
      {"device", required_argument, NULL, 'B'},
      {"verbose", no_argument, NULL, 'v'},
      {"quiet", no_argument, NULL, 'q'},
      {NULL, 0, NULL, 0}};
  const char *model = NULL, *tokdir = NULL, *captions = NULL, *json = NULL,
             *embout = NULL, *backend = "cpu";
  int64_t frames = 5, size = 0;
  double scale = 1;
  cs_comps_t c = {.batch = 32};
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "hm:t:c:f:s:j:E:S:b:B:vq", opts,
                            NULL)) != -1) {
    if (pipe_common_option(opt))
      continue;
    char *end;
    switch (opt) {
    case 'h':
      cs_help(stdout);
      return PIPE_EXIT_OK;
    case 'm':
      model = optarg;
      break;
    case 't':
      tokdir = optarg;
      break;
    case 'c':
      captions = optarg;
      break;
    case 'f':
      frames = strtol(optarg, &end, 10);
      if (*end || frames < 1 || frames > 100000)
        return pipe_usage("clipscore", "--frames must be 1..100000");
      break;
    case 's':
      scale = strtod(optarg, &end);
      if (*end || !isfinite(scale) || scale <= 0)
        return pipe_usage("clipscore", "--scale must be a positive number");
      break;
    case 'j':
      json = optarg;
      break;
    case 'E':
      embout = optarg;
      break;
    case 'S':
      size = strtol(optarg, &end, 10);
      if (*end || size < 1 || size > 16384)
        return pipe_usage("clipscore", "--size must be 1..16384");
      break;
    case 'b': {
      long v = strtol(optarg, &end, 10);
      if (*end || v < 1 || v > 4096)
        return pipe_usage("clipscore", "--batch must be 1..4096");
      c.batch = (int)v;
      break;
    }
    case 'B':
      backend = optarg;
      break;
    default:
      return pipe_usage("clipscore", "bad option");
    }
  }
  if (argc - optind != 1)
    return pipe_usage("clipscore", "expected one INPUT folder");
  if (!model)
    return pipe_usage("clipscore",
                      "--model DIR (a CLIPModel folder) is required");
  const char *input = argv[optind];
#ifndef MMP_WITH_PNG
  (void)input;
  mmp_error_set(MMP_EUNSUPPORTED,
                "clipscore needs libpng (this build has none)");
  return pipe_fail("clipscore", MMP_EUNSUPPORTED);
#else
  cs_run_t r = {0};
  mmp_registry_t *reg = NULL;
  mmp_config_t *cfg = NULL;
  mmp_context_t *ctx = NULL;
  char mabs[PATH_MAX], tabs[PATH_MAX];
  int64_t npos = 0;
  int rc = 0;
  if (!realpath(model, mabs) || !realpath(tokdir ? tokdir : model, tabs)) {
    rc = mmp_error_set(MMP_EIO, "%s: %s",
                       tokdir && realpath(model, mabs) ? tokdir : model,
                       strerror(errno));
    goto out;
  }
  if (strchr(mabs, '"') || strchr(tabs, '"') || strchr(backend, '"'))
    return pipe_usage("clipscore", "quotes in paths are not supported");
  if ((rc = model_sizes(mabs, &size, &npos)) < 0 ||
      (rc = list_input(&r, input, captions, frames)) < 0)
    goto out;
  {
    /* CLIPImageProcessor: the short side to S with PIL bicubic, a centre
     * crop S x S at (in - S) // 2, x / 255, CLIP's mean and std */
    char text[3 * PATH_MAX + 1024];
    snprintf(text, sizeof text,
             "device = \"%s\";\n"
             "image_encoder = { name = \"vit\"; model_dir = \"%s\"; };\n"
             "text_encoder = { name = \"clip_text\"; model_dir = \"%s\"; };\n"
             "image_processor = { name = \"image_resize\"; size = [%lld]; "
             "interpolation = \"bicubic\";\n"
             "  center_crop = [%lld]; crop_offset = \"floor\"; mean = "
             "[0.48145466, 0.4578275, 0.40821073];\n"
             "  std = [0.26862954, 0.26130258, 0.27577711]; };\n"
             "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s\"; "
             "max_length = %lld; };\n",
             backend, mabs, mabs, (long long)size, (long long)size, tabs,
             (long long)npos);
    cfg = mmp_config_parse(text, "clipscore");
  }
  reg = cfg ? mmp_registry_new() : NULL;
  if (!reg || (rc = mmp_registry_set_search_path(reg, cfg)) < 0 ||
      !(ctx = mmp_context_new(reg, cfg)) ||
      !(c.proc =
            mmp_component_create(ctx, MMP_KIND_PROCESSOR, "image_processor")) ||
      !(c.tok = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "tokenizer")) ||
      !(c.vit = mmp_component_create(ctx, MMP_KIND_ENCODER, "image_encoder")) ||
      !(c.text = mmp_component_create(ctx, MMP_KIND_ENCODER, "text_encoder"))) {
    rc = rc ? rc : mmp_error_code();
    goto out;
  }
  if ((rc = embed_images(&c, &r)) < 0 || (rc = embed_texts(&c, &r)) < 0)
    goto out;
  if (!(r.frame_t = malloc((size_t)r.n * sizeof *r.frame_t))) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto out;
  }
  double tm, im;
  score(&r, &tm, &im);
  for (int64_t s = 0; s < r.ns; s++) {
    printf("%s  frames %lld  CLIP-T %.6f  CLIP-I ", r.stories[s].name,
           (long long)r.stories[s].count, scale * r.stories[s].clip_t);
    if (isnan(r.stories[s].clip_i))
      printf("-\n");
    else
      printf("%.6f\n", scale * r.stories[s].clip_i);
  }
  printf("CLIP-T: %.17g\n", scale * tm);
  if (isnan(im))
    printf("CLIP-I: -\n");
  else
    printf("CLIP-I: %.17g\n", scale * im);
  if (json && (rc = write_json(json, &r, tm, im, scale, input, mabs)) < 0)
    goto out;
  if (embout)
    rc = save_embeddings(embout, &r);
out:
  mmp_component_free(c.text);
  mmp_component_free(c.vit);
  mmp_component_free(c.tok);
  mmp_component_free(c.proc);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  run_free(&r);
  return rc ? pipe_fail("clipscore", rc) : PIPE_EXIT_OK;
#endif
}
