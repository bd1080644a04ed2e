/* plugins/tasks/retrieval.c - BLIP image-text retrieval (salesforce/BLIP
 * train_retrieval.py): index images into ITC embeddings (kept in resumable
 * safetensors shards), answer text and image queries with ITC scores and
 * the ITM re-ranking of the top k_test candidates (score = itm + itc, as
 * BLIP's evaluation() computes it), write JSON and an HTML page; or, in
 * mode "evaluate", compute BLIP's itm_eval recalls on a Karpathy-split
 * annotation file. The model, tokenizer and image processor are components
 * reached through the registry. See doc/retrieval.md. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <mmpipe/file.h>
#include <mmpipe/safetensors.h>

#include "plugins/common/sd_common.h"
#include "plugins/common/topk.h"
#include "plugins/processors/imagecommon.h"

/* Output files appear whole or not at all (mmpipe/file.h). */
static int json_write_atomic(json_t *j, const char *path, size_t flags) {
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_prefix("retrieval: ");
  if (json_dumpf(j, mmp_afile_stream(af), flags) != 0) {
    mmp_afile_abort(af);
    return mmp_error_set(MMP_EIO, "retrieval: cannot write %s", path);
  }
  return mmp_afile_commit(af) < 0 ? mmp_error_prefix("retrieval: ") : 0;
}

static const mmp_key_t rt_keys[] = {
    {"mode", MMP_TYPE_STRING, "\"search\"",
     "search (queries against an image folder) or evaluate (annotation "
     "recalls)",
     0, 0},
    {"image_dir", MMP_TYPE_STRING, "\"\"", "search: the folder of images to index (*.png, *.jpg, *.jpeg, sorted by name)",
     MMP_KEY_PATH, 0},
    {"annotation", MMP_TYPE_STRING, "\"\"", "evaluate: BLIP's Karpathy-split JSON ([{image, caption: [...]}])",
     MMP_KEY_PATH, 0},
    {"image_root", MMP_TYPE_STRING, "\"\"", "evaluate: the folder the annotation's image paths are relative to",
     MMP_KEY_PATH, 0},
    {"index", MMP_TYPE_STRING, "\"\"",
     "a folder of image-embedding shards (part-NNNNN.safetensors) to reuse and "
     "resume; \"\": none",
     MMP_KEY_PATH, 0},
    {"shard_size", MMP_TYPE_INT, "256", "images per index shard (the unit of resuming)", 0, 0},
    {"queries", MMP_TYPE_LIST, "[]", "search: text queries (top_k images each)", 0, 0},
    {"query_images", MMP_TYPE_LIST, "[]", "search: image files (top_k captions each, from `captions`)", 0, 0},
    {"captions", MMP_TYPE_STRING, "\"\"", "search: a text file, one caption per line, for the image queries",
     MMP_KEY_PATH, 0},
    {"top_k", MMP_TYPE_INT, "5", "search: results per query", 0, 0},
    {"k_test", MMP_TYPE_INT, "256", "candidates re-ranked by ITM (BLIP: 256 for COCO, 128 for Flickr30k)", 0, 0},
    {"itc_only", MMP_TYPE_BOOL, "false", "rank by ITC similarity alone (no ITM pass)", 0, 0},
    {"batch_size", MMP_TYPE_INT, "16", "images, texts or ITM pairs per model call", 0, 0},
    {"output_json", MMP_TYPE_STRING, "\"retrieval.json\"", "results (search) or metrics (evaluate)", MMP_KEY_PATH, 0},
    {"output_html", MMP_TYPE_STRING, "\"\"", "search: an HTML page of the results with thumbnails; \"\": none",
     MMP_KEY_PATH, 0},
    {"save_scores", MMP_TYPE_STRING, "\"\"", "evaluate: .safetensors of sims, score_i2t, score_t2i; \"\": none",
     MMP_KEY_PATH, 0},
    {"model", MMP_TYPE_COMPONENT, "\"blip_retrieval\"", "the retrieval model (encoder) group", 0, MMP_KIND_ENCODER},
    {"tokenizer", MMP_TYPE_COMPONENT, "\"bert_tokenizer\"", "the tokenizer group (BLIP: max_length 35, pre_caption 30)",
     0, MMP_KIND_PROCESSOR},
    {"image_processor", MMP_TYPE_COMPONENT, "\"image_resize\"",
     "the image transform group (BLIP: 384x384 bicubic, CLIP mean/std)", 0, MMP_KIND_PROCESSOR},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct strs {
  char **v;
  size_t n;
} strs_t;

typedef struct rt {
  bool evaluate, itc_only;
  char image_dir[4096], annotation[4096], image_root[4096], index[4096], captions[4096];
  char out_json[4096], out_html[4096], save_scores[4096];
  strs_t queries, qimages;
  int64_t top_k, k_test, batch, shard;
} rt_t;

typedef struct comps {
  mmp_component_t *model, *tok, *improc;
  mmp_context_t *ctx;
} comps_t;

/* Image side of the index: ITC features and the ViT tokens ITM needs. */
typedef struct gallery {
  int64_t n, E, T, D;
  float *feat;   /* [n, E] */
  float *embeds; /* [n, T, D] */
} gallery_t;

/* Text side: ITC features and the token rows ITM needs. */
typedef struct texts {
  int64_t n, E, L;
  float *feat;        /* [n, E] */
  mmp_tensor_t *ids;  /* [n, L] i64 */
  mmp_tensor_t *mask; /* [n, L] i64 */
} texts_t;

static void strs_free(strs_t *s) {
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  s->v = NULL, s->n = 0;
}

static int strs_add(strs_t *s, const char *x) {
  char **p = realloc(s->v, (s->n + 1) * sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  s->v = p;
  if (!(s->v[s->n] = strdup(x))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  s->n++;
  return 0;
}

static void gallery_free(gallery_t *g) {
  free(g->feat);
  free(g->embeds);
  memset(g, 0, sizeof *g);
}

static void texts_free(texts_t *t) {
  free(t->feat);
  mmp_tensor_unref(t->ids);
  mmp_tensor_unref(t->mask);
  memset(t, 0, sizeof *t);
}

static void rt_destroy(void *self) {
  rt_t *t = self;
  if (!t) return;
  strs_free(&t->queries);
  strs_free(&t->qimages);
  free(t);
}

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int get_list(const mmp_config_t *cfg, const char *key, strs_t *out) {
  size_t n = 0;
  int rc = mmp_config_get_list_size(cfg, key, &n);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const char *s = NULL;
    if ((rc = mmp_config_get_list_string(cfg, key, i, &s)) == 0) rc = strs_add(out, s);
  }
  return rc;
}

static int rt_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  (void)ctx;
  rt_t *t = calloc(1, sizeof *t);
  if (!t) return mmp_error_set(MMP_ENOMEM, "out of memory");
  const char *mode = "search";
  int rc;
  if ((rc = mmp_config_get_string(cfg, "mode", &mode)) ||
      (rc = mmp_config_get_path(cfg, "image_dir", t->image_dir, sizeof t->image_dir)) ||
      (rc = mmp_config_get_path(cfg, "annotation", t->annotation, sizeof t->annotation)) ||
      (rc = mmp_config_get_path(cfg, "image_root", t->image_root, sizeof t->image_root)) ||
      (rc = mmp_config_get_path(cfg, "index", t->index, sizeof t->index)) ||
      (rc = mmp_config_get_path(cfg, "captions", t->captions, sizeof t->captions)) ||
      (rc = mmp_config_get_path(cfg, "output_json", t->out_json, sizeof t->out_json)) ||
      (rc = mmp_config_get_path(cfg, "output_html", t->out_html, sizeof t->out_html)) ||
      (rc = mmp_config_get_path(cfg, "save_scores", t->save_scores, sizeof t->save_scores)) ||
      (rc = mmp_config_get_int(cfg, "shard_size", &t->shard)) || (rc = mmp_config_get_int(cfg, "top_k", &t->top_k)) ||
      (rc = mmp_config_get_int(cfg, "k_test", &t->k_test)) || (rc = mmp_config_get_int(cfg, "batch_size", &t->batch)) ||
      (rc = mmp_config_get_bool(cfg, "itc_only", &t->itc_only)) || (rc = get_list(cfg, "queries", &t->queries)) ||
      (rc = get_list(cfg, "query_images", &t->qimages)))
    goto fail;
  if (!strcmp(mode, "evaluate"))
    t->evaluate = true;
  else if (strcmp(mode, "search")) {
    rc = cfg_error(cfg, "mode", "must be search or evaluate");
    goto fail;
  }
  if (t->evaluate && (!t->annotation[0] || !t->image_root[0])) {
    rc = cfg_error(cfg, t->annotation[0] ? "image_root" : "annotation", "evaluate needs `annotation` and `image_root`");
    goto fail;
  }
  if (!t->evaluate && !t->image_dir[0]) {
    rc = cfg_error(cfg, "image_dir", "search needs the folder of images to index");
    goto fail;
  }
  if (!t->evaluate && t->qimages.n && !t->captions[0]) {
    rc = cfg_error(cfg, "captions", "image queries need a caption file to rank");
    goto fail;
  }
  if (t->shard < 1 || t->shard > 1000000)
    rc = cfg_error(cfg, "shard_size", "must be 1 .. 1000000");
  else if (t->top_k < 1 || t->top_k > 1000000)
    rc = cfg_error(cfg, "top_k", "must be 1 .. 1000000");
  else if (t->k_test < 1 || t->k_test > 1000000)
    rc = cfg_error(cfg, "k_test", "must be 1 .. 1000000");
  else if (t->batch < 1 || t->batch > 65536)
    rc = cfg_error(cfg, "batch_size", "must be 1 .. 65536");
  if (rc) goto fail;
  *out_self = t;
  return 0;
fail:
  rt_destroy(t);
  return rc ? rc : mmp_error_code();
}

static int fwd(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder and processor share the layout */
  return ops->forward(c->self, method, in, out);
}

/* Copy a float tensor to host memory @dst of @n floats. */
static int to_host_f32(const mmp_tensor_t *t, float *dst, int64_t n) {
  if (mmp_tensor_numel(t) != n) return mmp_error_set(MMP_ESHAPE, "retrieval: unexpected output size");
  mmp_tensor_t *f = mmp_convert(t, MMP_F32);
  int rc = f ? mmp_tensor_to_host(f, dst, (size_t)n * sizeof *dst) : mmp_error_code();
  mmp_tensor_unref(f);
  return rc < 0 ? rc : 0;
}

/* ---- images ---- */

/* One image file through the image processor: [1, 3, S, S] f32. */
static mmp_tensor_t *load_pixels(comps_t *c, const char *path) {
  mmp_image_t im = {0};
  if (mmp_image_load(path, &im) < 0) {
    mmp_error_prefix("retrieval: ");
    return NULL;
  }
  int64_t shape[4] = {1, im.h, im.w, 3};
  mmp_tensor_t *u8 = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, shape, im.data);
  mmp_image_clear(&im);
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *px = NULL;
  if (u8 && in && out && mmp_tensormap_set(in, "images", u8) == 0 && fwd(c->improc, NULL, in, out) == 0) {
    px = mmp_tensormap_need(out, "images");
    if (px) mmp_tensor_ref(px);
  } else if (!in || !out) {
    mmp_tensor_unref(u8);
  }
  if (!px) mmp_error_prefix("retrieval: %s: ", path);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return px;
}

/* Encode images [from, to) of @paths into rows of @g (allocated by the caller
 * for n rows). */
static int encode_images(comps_t *c, const rt_t *t, char *const *paths, int64_t from, int64_t to, gallery_t *g) {
  int rc = 0;
  for (int64_t b = from; rc == 0 && b < to; b += t->batch) {
    int64_t nb = to - b < t->batch ? to - b : t->batch;
    mmp_tensor_t **px = calloc((size_t)nb, sizeof *px);
    if (!px) return mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int64_t i = 0; rc == 0 && i < nb; i++)
      if (!(px[i] = load_pixels(c, paths[b + i]))) rc = mmp_error_code();
    mmp_tensor_t *batch = rc == 0 ? mmp_concat(px, (int)nb, 0) : NULL;
    for (int64_t i = 0; i < nb; i++) mmp_tensor_unref(px[i]);
    free(px);
    if (rc == 0 && !batch) rc = mmp_error_prefix("retrieval: images of different sizes after the processor: ");
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if (rc == 0 && (rc = mmp_tensormap_set(in, "pixel_values", batch)) == 0)
      rc = fwd(c->model, "image", in, out);
    else if (rc)
      mmp_tensor_unref(batch);
    const mmp_tensor_t *f = rc == 0 ? mmp_tensormap_need(out, "image_feat") : NULL;
    const mmp_tensor_t *e = rc == 0 ? mmp_tensormap_need(out, "image_embeds") : NULL;
    if (rc == 0 && (!f || !e || f->ndim != 2 || e->ndim != 3))
      rc = mmp_error_set(MMP_EPLUGIN,
                         "retrieval: the model's image method must give "
                         "image_feat [B, E] and image_embeds [B, T, D]");
    if (rc == 0 && !g->feat) {
      g->E = f->shape[1], g->T = e->shape[1], g->D = e->shape[2];
      g->feat = malloc((size_t)(g->n * g->E) * sizeof *g->feat);
      g->embeds = malloc((size_t)(g->n * g->T * g->D) * sizeof *g->embeds);
      if (!g->feat || !g->embeds)
        rc = mmp_error_set(MMP_ENOMEM, "retrieval: out of memory for %lld image embeddings", (long long)g->n);
    }
    if (rc == 0 && (f->shape[1] != g->E || e->shape[1] != g->T || e->shape[2] != g->D))
      rc = mmp_error_set(MMP_ESHAPE,
                         "retrieval: image embeddings change shape "
                         "between batches (image size?)");
    if (rc == 0) rc = to_host_f32(f, g->feat + b * g->E, nb * g->E);
    if (rc == 0) rc = to_host_f32(e, g->embeds + b * g->T * g->D, nb * g->T * g->D);
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    if (rc == 0) mmp_context_progress_advance(c->ctx, nb);
    if (rc == 0 && mmp_context_cancelled(c->ctx)) rc = mmp_error_set(MMP_ECANCELED, "retrieval: cancelled");
  }
  return rc;
}

/* Shard @s of the index: its names must be names[s*shard ...]. Loads rows
 * into @g; returns 1 when loaded, 0 when absent, < 0 on error. */
static int load_shard(const rt_t *t, int64_t s, char *const *names, int64_t n, gallery_t *g) {
  char p[4200];
  snprintf(p, sizeof p, "%s/part-%05lld.safetensors", t->index, (long long)s);
  struct stat sb;
  if (stat(p, &sb) != 0) return 0;
  mmp_tensormap_t *m = mmp_tensormap_new();
  mmp_safetensors_t *st = mmp_safetensors_open(p);
  int rc = st && m ? mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) : mmp_error_code();
  const char *meta = st ? mmp_safetensors_metadata(st, "names") : NULL;
  json_t *j = meta ? json_loads(meta, 0, NULL) : NULL;
  int64_t from = s * t->shard, cnt = n - from < t->shard ? n - from : t->shard;
  if (rc == 0 && (!json_is_array(j) || (int64_t)json_array_size(j) != cnt))
    rc = mmp_error_set(MMP_EDATA,
                       "retrieval: index %s: its `names` do not list %lld "
                       "images (delete the index or change shard_size)",
                       p, (long long)cnt);
  for (int64_t i = 0; rc == 0 && i < cnt; i++) {
    const char *nm = json_string_value(json_array_get(j, (size_t)i));
    if (!nm || strcmp(nm, names[from + i]))
      rc = mmp_error_set(MMP_EDATA,
                         "retrieval: index %s holds \"%s\" where \"%s\" is expected: it was "
                         "built from other images (delete it or choose another `index`)",
                         p, nm ? nm : "?", names[from + i]);
  }
  const mmp_tensor_t *f = rc == 0 ? mmp_tensormap_need(m, "image_feat") : NULL,
                     *e = rc == 0 ? mmp_tensormap_need(m, "image_embeds") : NULL;
  if (rc == 0 && (!f || !e || f->ndim != 2 || e->ndim != 3 || f->shape[0] != cnt || e->shape[0] != cnt))
    rc = mmp_error_set(MMP_EDATA,
                       "retrieval: index %s: image_feat [%lld, E] and "
                       "image_embeds [%lld, T, D] expected",
                       p, (long long)cnt, (long long)cnt);
  if (rc == 0 && !g->feat) {
    g->E = f->shape[1], g->T = e->shape[1], g->D = e->shape[2];
    g->feat = malloc((size_t)(g->n * g->E) * sizeof *g->feat);
    g->embeds = malloc((size_t)(g->n * g->T * g->D) * sizeof *g->embeds);
    if (!g->feat || !g->embeds)
      rc = mmp_error_set(MMP_ENOMEM, "retrieval: out of memory for %lld image embeddings", (long long)g->n);
  }
  if (rc == 0 && (f->shape[1] != g->E || e->shape[1] != g->T || e->shape[2] != g->D))
    rc = mmp_error_set(MMP_EDATA, "retrieval: index %s: embedding shapes differ from the other shards", p);
  if (rc == 0) rc = to_host_f32(f, g->feat + from * g->E, cnt * g->E);
  if (rc == 0) rc = to_host_f32(e, g->embeds + from * g->T * g->D, cnt * g->T * g->D);
  json_decref(j);
  mmp_safetensors_close(st);
  mmp_tensormap_free(m);
  return rc < 0 ? rc : 1;
}

static int save_shard(const rt_t *t, int64_t s, char *const *names, int64_t n, const gallery_t *g) {
  int64_t from = s * t->shard, cnt = n - from < t->shard ? n - from : t->shard;
  json_t *j = json_array();
  for (int64_t i = 0; j && i < cnt; i++) json_array_append_new(j, json_string(names[from + i]));
  char *meta = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  int64_t fs[2] = {cnt, g->E}, es[3] = {cnt, g->T, g->D};
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensormap_t *m = mmp_tensormap_new();
  int rc = meta && m ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc == 0)
    rc = mmp_tensormap_set(m, "image_feat", mmp_tensor_from_data(cpu, MMP_F32, 2, fs, g->feat + from * g->E));
  if (rc == 0)
    rc =
        mmp_tensormap_set(m, "image_embeds", mmp_tensor_from_data(cpu, MMP_F32, 3, es, g->embeds + from * g->T * g->D));
  char p[4200];
  snprintf(p, sizeof p, "%s/part-%05lld.safetensors", t->index, (long long)s);
  const char *md[] = {"names", meta, "format", "mmpipe retrieval index 1", NULL};
  if (rc == 0) rc = mmp_safetensors_save_map(p, m, md);
  free(meta);
  mmp_tensormap_free(m);
  return rc;
}

/* The gallery of @n images: shards of the index reused, the rest encoded
 * shard by shard (each saved as soon as it is complete: a run stopped
 * midway resumes from there). */
static int build_gallery(comps_t *c, const rt_t *t, char *const *paths, char *const *names, int64_t n, gallery_t *g) {
  memset(g, 0, sizeof *g);
  g->n = n;
  if (n == 0) return mmp_error_set(MMP_EINVAL, "retrieval: no images");
  if (t->index[0] && mkdir(t->index, 0777) != 0 && errno != EEXIST)
    return mmp_error_set(MMP_EIO, "retrieval: index %s: %s", t->index, strerror(errno));
  int64_t shards = (n + t->shard - 1) / t->shard, reused = 0;
  int rc = 0;
  bool *have = calloc((size_t)shards, sizeof *have);
  if (!have) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t s = 0; rc == 0 && t->index[0] && s < shards; s++) {
    int r = load_shard(t, s, names, n, g);
    if (r < 0) rc = r;
    have[s] = r == 1;
    if (r == 1) reused += (n - s * t->shard < t->shard ? n - s * t->shard : t->shard);
  }
  if (rc == 0 && reused)
    MMP_INFO("retrieval", "%lld of %lld image embeddings reused from %s", (long long)reused, (long long)n, t->index);
  if (rc == 0 && reused < n) {
    mmp_context_progress_begin(c->ctx, "image embeddings", n - reused);
    for (int64_t s = 0; rc == 0 && s < shards; s++) {
      if (have[s]) continue;
      int64_t from = s * t->shard, to = from + t->shard < n ? from + t->shard : n;
      rc = encode_images(c, t, paths, from, to, g);
      if (rc == 0 && t->index[0]) rc = save_shard(t, s, names, n, g);
    }
    mmp_context_progress_end(c->ctx);
  }
  free(have);
  return rc;
}

/* ---- texts ---- */
static int encode_texts(comps_t *c, const rt_t *t, char *const *v, int64_t n, texts_t *x) {
  memset(x, 0, sizeof *x);
  x->n = n;
  if (n == 0) return 0;
  const mmp_processor_ops_t *tops = (const mmp_processor_ops_t *)c->tok->plugin;
  if (tops->base.struct_size < sizeof(mmp_processor_ops_t) || !tops->encode_text)
    return mmp_error_set(MMP_EPLUGIN, "retrieval: tokenizer '%s' cannot encode text", tops->base.name);
  mmp_tensormap_t *tk = mmp_tensormap_new();
  int rc = tk ? tops->encode_text(c->tok->self, (const char *const *)v, (size_t)n, tk) : MMP_ENOMEM;
  mmp_tensor_t *ids = rc == 0 ? mmp_tensormap_need(tk, "input_ids") : NULL,
               *am = rc == 0 ? mmp_tensormap_need(tk, "attention_mask") : NULL;
  if (rc == 0 && (!ids || !am)) rc = mmp_error_code();
  if (rc == 0) {
    x->ids = mmp_tensor_ref(ids), x->mask = mmp_tensor_ref(am), x->L = ids->shape[1];
  }
  for (int64_t b = 0; rc == 0 && b < n; b += t->batch) {
    int64_t nb = n - b < t->batch ? n - b : t->batch;
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if ((rc = mmp_tensormap_set(in, "input_ids", mmp_slice(ids, 0, b, b + nb, 1))) == 0 &&
        (rc = mmp_tensormap_set(in, "attention_mask", mmp_slice(am, 0, b, b + nb, 1))) == 0)
      rc = fwd(c->model, "text", in, out);
    const mmp_tensor_t *f = rc == 0 ? mmp_tensormap_need(out, "text_feat") : NULL;
    if (rc == 0 && (!f || f->ndim != 2))
      rc = mmp_error_set(MMP_EPLUGIN, "retrieval: the model's text method must give text_feat [B, E]");
    if (rc == 0 && !x->feat) {
      x->E = f->shape[1];
      if (!(x->feat = malloc((size_t)(n * x->E) * sizeof *x->feat))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    if (rc == 0) rc = to_host_f32(f, x->feat + b * x->E, nb * x->E);
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
  }
  mmp_tensormap_free(tk);
  return rc;
}

/* ---- scores ---- */

/* sims [ni, nt] = image_feat @ text_feat^T through the tensor API. */
static float *similarity(const gallery_t *g, const texts_t *x) {
  if (g->E != x->E) {
    mmp_error_set(MMP_ESHAPE, "retrieval: image features of %lld and text features of %lld dims", (long long)g->E,
                  (long long)x->E);
    return NULL;
  }
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  int64_t si[2] = {g->n, g->E}, st[2] = {x->n, x->E};
  mmp_tensor_t *a = mmp_tensor_from_data(cpu, MMP_F32, 2, si, g->feat),
               *b = mmp_tensor_from_data(cpu, MMP_F32, 2, st, x->feat);
  mmp_tensor_t *s = a && b ? mmp_matmul(a, b, false, true) : NULL;
  float *r = s ? malloc((size_t)(g->n * x->n) * sizeof *r) : NULL;
  if (s && !r) mmp_error_set(MMP_ENOMEM, "out of memory");
  if (r && to_host_f32(s, r, g->n * x->n) < 0) {
    free(r);
    r = NULL;
  }
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_tensor_unref(s);
  return r;
}

/* The model's cross-attention keys and values of image @img (its
 * cross_kv method), which every ITM pair of that image reuses. (transfer
 * full) */
static mmp_tensormap_t *image_kv(comps_t *c, const gallery_t *g, int64_t img) {
  int64_t es[3] = {1, g->T, g->D};
  mmp_tensormap_t *in = mmp_tensormap_new(), *kv = mmp_tensormap_new();
  int rc = in && kv ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc == 0 && (rc = mmp_tensormap_set(in, "image_embeds", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 3,
                                                                               es, g->embeds + img * g->T * g->D))) == 0)
    rc = fwd(c->model, "cross_kv", in, kv);
  mmp_tensormap_free(in);
  if (rc) {
    mmp_tensormap_free(kv);
    return NULL;
  }
  return kv;
}

/* ITM scores (itm_logits[:, 1]) of image @img against texts @tix (or,
 * with @one_text >= 0, of that text against images @tix) into @out. One
 * image: its cross-attention keys and values are computed once and each
 * batch of captions attends to them (BLIP recomputes them per pair); one
 * text: the batch carries each candidate's image tokens. */
static int itm_batch(comps_t *c, const rt_t *t, const gallery_t *g, const texts_t *x, int64_t img, int64_t one_text,
                     const sd_iv_t *cand, int64_t k, float *out) {
  int rc = 0;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  int64_t TD = g->T * g->D;
  mmp_tensormap_t *kv = NULL;
  if (one_text < 0 && k > 0 && !(kv = image_kv(c, g, img))) return mmp_error_code();
  for (int64_t b = 0; rc == 0 && b < k; b += t->batch) {
    int64_t nb = k - b < t->batch ? k - b : t->batch;
    float *emb = kv ? NULL : malloc((size_t)(nb * TD) * sizeof *emb);
    mmp_tensor_t **ir = calloc((size_t)nb, sizeof *ir), **mr = calloc((size_t)nb, sizeof *mr);
    if ((!kv && !emb) || !ir || !mr) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int64_t i = 0; rc == 0 && i < nb; i++) {
      int64_t tx = one_text >= 0 ? one_text : cand[b + i].i;
      if (emb) memcpy(emb + i * TD, g->embeds + cand[b + i].i * TD, (size_t)TD * sizeof *emb);
      ir[i] = mmp_slice(x->ids, 0, tx, tx + 1, 1);
      mr[i] = mmp_slice(x->mask, 0, tx, tx + 1, 1);
      if (!ir[i] || !mr[i]) rc = mmp_error_code();
    }
    int64_t es[3] = {nb, g->T, g->D};
    mmp_tensormap_t *in = mmp_tensormap_new(), *o = mmp_tensormap_new();
    if (!in || !o) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    for (size_t e = 0; rc == 0 && kv && e < mmp_tensormap_size(kv); e++)
      rc = mmp_tensormap_set(in, mmp_tensormap_name(kv, e), mmp_tensor_ref(mmp_tensormap_at(kv, e)));
    if (rc == 0 && emb)
      rc = mmp_tensormap_set(in, "image_embeds", mmp_tensor_from_data(cpu, MMP_F32, 3, es, emb));
    if (rc == 0 && (rc = mmp_tensormap_set(in, "input_ids", mmp_concat(ir, (int)nb, 0))) == 0 &&
        (rc = mmp_tensormap_set(in, "attention_mask", mmp_concat(mr, (int)nb, 0))) == 0)
      rc = fwd(c->model, "itm", in, o);
    const mmp_tensor_t *s = rc == 0 ? mmp_tensormap_need(o, "itm_score") : NULL;
    if (rc == 0 && !s) rc = mmp_error_code();
    if (rc == 0) rc = to_host_f32(s, out + b, nb);
    for (int64_t i = 0; ir && mr && i < nb; i++) mmp_tensor_unref(ir[i]), mmp_tensor_unref(mr[i]);
    free(ir);
    free(mr);
    free(emb);
    mmp_tensormap_free(in);
    mmp_tensormap_free(o);
  }
  mmp_tensormap_free(kv);
  return rc;
}

/* BLIP's evaluation(): score_i2t [ni, nt] and score_t2i [nt, ni] filled
 * with -100, then itm + itc for each row's top k_test by ITC; with
 * itc_only the similarities themselves. */
static int score_matrices(comps_t *c, const rt_t *t, const gallery_t *g, const texts_t *x, const float *sims,
                          float **i2t_out, float **t2i_out) {
  int64_t ni = g->n, nt = x->n;
  float *i2t = malloc((size_t)(ni * nt) * sizeof *i2t), *t2i = malloc((size_t)(ni * nt) * sizeof *t2i);
  float *itm = malloc((size_t)(ni > nt ? ni : nt) * sizeof *itm);
  int rc = i2t && t2i && itm ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; rc == 0 && i < ni * nt; i++) {
    int64_t r = i / nt, k = i % nt;
    i2t[i] = t->itc_only ? sims[i] : -100.0f;
    t2i[k * ni + r] = t->itc_only ? sims[i] : -100.0f;
  }
  if (rc == 0 && !t->itc_only) {
    int64_t ki = t->k_test < nt ? t->k_test : nt, kt = t->k_test < ni ? t->k_test : ni;
    mmp_context_progress_begin(c->ctx, "ITM re-ranking", ni + nt);
    for (int64_t i = 0; rc == 0 && i < ni; i++) {
      sd_iv_t *top = sd_top_desc(sims + i * nt, nt, 1, ki);
      if (!top) rc = mmp_error_code();
      if (rc == 0) rc = itm_batch(c, t, g, x, i, -1, top, ki, itm);
      for (int64_t k = 0; rc == 0 && k < ki; k++) i2t[i * nt + top[k].i] = itm[k] + top[k].v;
      free(top);
      mmp_context_progress_advance(c->ctx, 1);
    }
    for (int64_t j = 0; rc == 0 && j < nt; j++) {
      sd_iv_t *top = sd_top_desc(sims + j, ni, nt, kt);
      if (!top) rc = mmp_error_code();
      if (rc == 0) rc = itm_batch(c, t, g, x, -1, j, top, kt, itm);
      for (int64_t k = 0; rc == 0 && k < kt; k++) t2i[j * ni + top[k].i] = itm[k] + top[k].v;
      free(top);
      mmp_context_progress_advance(c->ctx, 1);
    }
    mmp_context_progress_end(c->ctx);
  }
  free(itm);
  if (rc) {
    free(i2t);
    free(t2i);
    return rc;
  }
  *i2t_out = i2t, *t2i_out = t2i;
  return 0;
}

/* ---- evaluate ---- */

/* BLIP's itm_eval rank of a row: the place of the best ground truth in the
 * descending order (entries with a strictly larger score come first; BLIP's
 * np.argsort leaves the order of exact ties unspecified, which only the
 * -100 entries outside every top k_test have). */
static int64_t rank_of(const float *row, int64_t n, const int64_t *gt, int64_t ngt) {
  int64_t best = INT64_MAX;
  for (int64_t g = 0; g < ngt; g++) {
    int64_t r = 0;
    for (int64_t k = 0; k < n; k++) r += row[k] > row[gt[g]];
    if (r < best) best = r;
  }
  return best;
}

static int run_evaluate(comps_t *c, const rt_t *t) {
  json_error_t je;
  json_t *ann = json_load_file(t->annotation, 0, &je);
  if (!ann) return mmp_error_set(MMP_EDATA, "retrieval: %s:%d: %s", t->annotation, je.line, je.text);
  int rc = json_is_array(ann)
               ? 0
               : mmp_error_set(MMP_EDATA, "retrieval: %s: a list of {image, caption} expected", t->annotation);
  strs_t paths = {0}, names = {0}, caps = {0};
  int64_t *txt2img = NULL, *img2txt_off = NULL;
  size_t i;
  json_t *a;
  json_array_foreach(ann, i, a) {
    if (rc) break;
    const char *im = json_string_value(json_object_get(a, "image"));
    json_t *cl = json_object_get(a, "caption");
    if (json_is_string(cl)) {
      json_t *one = json_array();
      json_array_append(one, cl);
      json_object_set_new(a, "caption", one);
      cl = json_object_get(a, "caption");
    }
    if (!im || !json_is_array(cl) || json_array_size(cl) == 0) {
      rc = mmp_error_set(MMP_EDATA,
                         "retrieval: %s: entry %zu needs \"image\" and a "
                         "non-empty \"caption\" list",
                         t->annotation, i);
      break;
    }
    char p[8300];
    snprintf(p, sizeof p, "%s/%s", t->image_root, im);
    if ((rc = strs_add(&paths, p)) || (rc = strs_add(&names, im))) break;
    size_t j;
    json_t *cj;
    json_array_foreach(cl, j, cj) {
      if (!json_is_string(cj)) {
        rc = mmp_error_set(MMP_EDATA, "retrieval: %s: entry %zu: caption %zu is not a string", t->annotation, i, j);
        break;
      }
      if ((rc = strs_add(&caps, json_string_value(cj)))) break;
    }
  }
  int64_t ni = (int64_t)names.n, nt = (int64_t)caps.n;
  if (rc == 0) {
    txt2img = malloc((size_t)(nt ? nt : 1) * sizeof *txt2img);
    img2txt_off = malloc((size_t)(ni + 1) * sizeof *img2txt_off);
    if (!txt2img || !img2txt_off) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  if (rc == 0) {
    int64_t k = 0;
    json_array_foreach(ann, i, a) {
      img2txt_off[i] = k;
      for (size_t j = 0; j < json_array_size(json_object_get(a, "caption")); j++) txt2img[k++] = (int64_t)i;
    }
    img2txt_off[ni] = k;
  }
  gallery_t g = {0};
  texts_t x = {0};
  float *sims = NULL, *i2t = NULL, *t2i = NULL;
  if (rc == 0) rc = encode_texts(c, t, caps.v, nt, &x);
  if (rc == 0) rc = build_gallery(c, t, paths.v, names.v, ni, &g);
  if (rc == 0 && !(sims = similarity(&g, &x))) rc = mmp_error_code();
  if (rc == 0) rc = score_matrices(c, t, &g, &x, sims, &i2t, &t2i);
  if (rc == 0) {
    int64_t tr[3] = {0, 0, 0}, ir[3] = {0, 0, 0};
    static const int64_t at[3] = {1, 5, 10};
    for (int64_t r = 0; r < ni; r++) {
      int64_t rk, n_gt = img2txt_off[r + 1] - img2txt_off[r];
      int64_t *gt = malloc((size_t)n_gt * sizeof *gt);
      for (int64_t q = 0; gt && q < n_gt; q++) gt[q] = img2txt_off[r] + q;
      rk = gt ? rank_of(i2t + r * nt, nt, gt, n_gt) : INT64_MAX;
      free(gt);
      for (int q = 0; q < 3; q++) tr[q] += rk < at[q];
    }
    for (int64_t j = 0; j < nt; j++) {
      int64_t rk = rank_of(t2i + j * ni, ni, &txt2img[j], 1);
      for (int q = 0; q < 3; q++) ir[q] += rk < at[q];
    }
    double T[3], I[3];
    for (int q = 0; q < 3; q++) T[q] = 100.0 * (double)tr[q] / (double)ni, I[q] = 100.0 * (double)ir[q] / (double)nt;
    double tm = (T[0] + T[1] + T[2]) / 3, im = (I[0] + I[1] + I[2]) / 3;
    json_t *o = json_pack("{s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:I,s:I,s:b}", "txt_r1", T[0], "txt_r5", T[1],
                          "txt_r10", T[2], "txt_r_mean", tm, "img_r1", I[0], "img_r5", I[1], "img_r10", I[2],
                          "img_r_mean", im, "r_mean", (tm + im) / 2, "n_images", (json_int_t)ni, "n_texts",
                          (json_int_t)nt, "k_test", (json_int_t)t->k_test, "itc_only", t->itc_only);
    if (!o) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    else rc = json_write_atomic(o, t->out_json, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    if (rc == 0)
      MMP_INFO("retrieval",
               "txt_r1 %.2f txt_r5 %.2f txt_r10 %.2f img_r1 %.2f img_r5 %.2f "
               "img_r10 %.2f r_mean %.2f -> %s",
               T[0], T[1], T[2], I[0], I[1], I[2], (tm + im) / 2, t->out_json);
    json_decref(o);
  }
  if (rc == 0 && t->save_scores[0]) {
    mmp_backend_t *cpu = mmp_backend_get("cpu");
    int64_t a2[2] = {ni, nt}, b2[2] = {nt, ni};
    mmp_tensormap_t *m = mmp_tensormap_new();
    if ((rc = mmp_tensormap_set(m, "sims", mmp_tensor_from_data(cpu, MMP_F32, 2, a2, sims))) == 0 &&
        (rc = mmp_tensormap_set(m, "score_i2t", mmp_tensor_from_data(cpu, MMP_F32, 2, a2, i2t))) == 0 &&
        (rc = mmp_tensormap_set(m, "score_t2i", mmp_tensor_from_data(cpu, MMP_F32, 2, b2, t2i))) == 0)
      rc = mmp_safetensors_save_map(t->save_scores, m, NULL);
    mmp_tensormap_free(m);
  }
  free(sims);
  free(i2t);
  free(t2i);
  free(txt2img);
  free(img2txt_off);
  gallery_free(&g);
  texts_free(&x);
  strs_free(&paths);
  strs_free(&names);
  strs_free(&caps);
  json_decref(ann);
  return rc;
}

/* ---- search ---- */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int list_images(const char *dir, strs_t *paths, strs_t *names) {
  DIR *d = opendir(dir);
  if (!d) return mmp_error_set(MMP_EIO, "retrieval: image_dir %s: %s", dir, strerror(errno));
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d))) {
    if (mmp_image_name_known(e->d_name)) rc = strs_add(names, e->d_name);
  }
  closedir(d);
  if (rc == 0 && names->n) qsort(names->v, names->n, sizeof *names->v, cmp_str);
  for (size_t i = 0; rc == 0 && i < names->n; i++) {
    char p[8300];
    snprintf(p, sizeof p, "%s/%s", dir, names->v[i]);
    rc = strs_add(paths, p);
  }
  if (rc == 0 && !names->n) rc = mmp_error_set(MMP_EDATA, "retrieval: image_dir %s holds no .png, .jpg or .jpeg files", dir);
  return rc;
}

static int read_lines(const char *path, strs_t *out) {
  FILE *f = fopen(path, "r");
  if (!f) return mmp_error_set(MMP_EIO, "retrieval: %s: %s", path, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = 0;
  while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len > 0) rc = strs_add(out, line);
  }
  free(line);
  fclose(f);
  if (rc == 0 && !out->n) rc = mmp_error_set(MMP_EDATA, "retrieval: %s holds no captions", path);
  return rc;
}

/* Rank @nc candidates for one query: ITC @row (strided), then ITM for the
 * top k_test; results (top_k) appended to @arr as {index, score, itc, itm}. */
static int rank_query(comps_t *c, const rt_t *t, const gallery_t *g, const texts_t *x, int64_t img, int64_t text,
                      const float *row, int64_t nc, int64_t stride, char *const *labels, const char *label_key,
                      json_t *arr) {
  int64_t k = t->k_test < nc ? t->k_test : nc;
  sd_iv_t *top = sd_top_desc(row, nc, stride, k);
  float *itm = top ? malloc((size_t)k * sizeof *itm) : NULL;
  int rc = top && itm ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  sd_iv_t *fin = rc == 0 ? malloc((size_t)k * sizeof *fin) : NULL;
  if (rc == 0 && !fin) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc == 0 && !t->itc_only) rc = itm_batch(c, t, g, x, img, text, top, k, itm);
  for (int64_t i = 0; rc == 0 && i < k; i++) fin[i].i = i, fin[i].v = t->itc_only ? top[i].v : itm[i] + top[i].v;
  if (rc == 0) qsort(fin, (size_t)k, sizeof *fin, sd_iv_desc);
  for (int64_t r = 0; rc == 0 && r < k && r < t->top_k; r++) {
    const sd_iv_t *cand = &top[fin[r].i];
    json_t *o = json_pack("{s:s,s:I,s:f,s:f}", label_key, labels[cand->i], "index", (json_int_t)cand->i, "score",
                          (double)fin[r].v, "itc", (double)cand->v);
    if (o && !t->itc_only) json_object_set_new(o, "itm", json_real((double)itm[fin[r].i]));
    if (!o || json_array_append_new(arr, o)) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  free(top);
  free(itm);
  free(fin);
  return rc;
}

static void html_text(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '<')
      fputs("&lt;", f);
    else if (*s == '>')
      fputs("&gt;", f);
    else if (*s == '&')
      fputs("&amp;", f);
    else if (*s == '"')
      fputs("&quot;", f);
    else
      fputc(*s, f);
  }
}

/* An image path as a file:// URL (absolute, percent-encoded). */
static void html_url(FILE *f, const char *path) {
  char abs[PATH_MAX];
  if (!realpath(path, abs)) snprintf(abs, sizeof abs, "%s", path);
  fputs("file://", f);
  for (const unsigned char *p = (const unsigned char *)abs; *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("/-_.~", *p))
      fputc(*p, f);
    else
      fprintf(f, "%%%02X", *p);
  }
}

static int write_html(const rt_t *t, json_t *res, char *const *paths) {
  mmp_afile_t *af = mmp_afile_open(t->out_html);
  if (!af) return mmp_error_prefix("retrieval: ");
  FILE *f = mmp_afile_stream(af);
  fputs(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mmpipe "
      "retrieval</title>\n<style>"
      "body{font-family:sans-serif;margin:1em}figure{display:inline-block;"
      "margin:.3em;text-align:center;"
      "vertical-align:top;width:170px}img{max-width:160px;max-height:160px;"
      "border:1px solid #ccc}"
      "figcaption{font-size:12px}table{border-collapse:collapse}td{border:"
      "1px solid #ddd;padding:.3em}"
      "</style></head><body>\n<h1>Image-text retrieval</h1>\n",
      f);
  size_t i, j;
  json_t *q, *r;
  json_t *tq = json_object_get(res, "text_queries"), *iq = json_object_get(res, "image_queries");
  if (json_array_size(tq)) fputs("<h2>Text queries</h2>\n", f);
  json_array_foreach(tq, i, q) {
    fputs("<section><h3>", f);
    html_text(f, json_string_value(json_object_get(q, "query")));
    fputs("</h3>\n", f);
    json_array_foreach(json_object_get(q, "results"), j, r) {
      int64_t k = json_integer_value(json_object_get(r, "index"));
      fputs("<figure><img src=\"", f);
      html_url(f, paths[k]);
      fputs("\" alt=\"", f);
      html_text(f, json_string_value(json_object_get(r, "image")));
      fprintf(f, "\"><figcaption>%zu. ", j + 1);
      html_text(f, json_string_value(json_object_get(r, "image")));
      fprintf(f, "<br>score %.4f (itc %.4f)</figcaption></figure>\n", json_real_value(json_object_get(r, "score")),
              json_real_value(json_object_get(r, "itc")));
    }
    fputs("</section>\n", f);
  }
  if (json_array_size(iq)) fputs("<h2>Image queries</h2>\n", f);
  json_array_foreach(iq, i, q) {
    fputs("<section><h3><img src=\"", f);
    html_url(f, json_string_value(json_object_get(q, "query")));
    fputs("\" alt=\"query\"> ", f);
    html_text(f, json_string_value(json_object_get(q, "query")));
    fputs("</h3>\n<table>\n", f);
    json_array_foreach(json_object_get(q, "results"), j, r) {
      fprintf(f, "<tr><td>%zu</td><td>", j + 1);
      html_text(f, json_string_value(json_object_get(r, "caption")));
      fprintf(f, "</td><td>%.4f</td><td>itc %.4f</td></tr>\n", json_real_value(json_object_get(r, "score")),
              json_real_value(json_object_get(r, "itc")));
    }
    fputs("</table></section>\n", f);
  }
  fputs("</body></html>\n", f);
  return mmp_afile_commit(af) < 0 ? mmp_error_prefix("retrieval: ") : 0;
}

static int run_search(comps_t *c, const rt_t *t) {
  strs_t paths = {0}, names = {0}, caps = {0};
  gallery_t g = {0}, qg = {0};
  texts_t q = {0}, cx = {0};
  float *s1 = NULL, *s2 = NULL;
  json_t *res = json_object(), *tq = json_array(), *iq = json_array();
  int rc = res && tq && iq ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  json_object_set(res, "text_queries", tq);
  json_object_set(res, "image_queries", iq);
  if (rc == 0) rc = list_images(t->image_dir, &paths, &names);
  if (rc == 0) rc = build_gallery(c, t, paths.v, names.v, (int64_t)names.n, &g);
  if (rc == 0 && t->queries.n) {
    rc = encode_texts(c, t, t->queries.v, (int64_t)t->queries.n, &q);
    if (rc == 0 && !(s1 = similarity(&g, &q))) rc = mmp_error_code();
    for (int64_t j = 0; rc == 0 && j < q.n; j++) {
      json_t *arr = json_array(), *o = json_pack("{s:s,s:o}", "query", t->queries.v[j], "results", arr);
      if (!o || json_array_append_new(tq, o)) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      if (rc == 0) rc = rank_query(c, t, &g, &q, -1, j, s1 + j, g.n, q.n, names.v, "image", arr);
    }
  }
  if (rc == 0 && t->qimages.n) {
    rt_t t2 = *t;
    t2.index[0] = '\0'; /* query images are not indexed */
    if ((rc = read_lines(t->captions, &caps)) == 0) rc = encode_texts(c, t, caps.v, (int64_t)caps.n, &cx);
    if (rc == 0) rc = build_gallery(c, &t2, t->qimages.v, t->qimages.v, (int64_t)t->qimages.n, &qg);
    if (rc == 0 && !(s2 = similarity(&qg, &cx))) rc = mmp_error_code();
    for (int64_t i = 0; rc == 0 && i < qg.n; i++) {
      json_t *arr = json_array(), *o = json_pack("{s:s,s:o}", "query", t->qimages.v[i], "results", arr);
      if (!o || json_array_append_new(iq, o)) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      if (rc == 0) rc = rank_query(c, t, &qg, &cx, i, -1, s2 + i * cx.n, cx.n, 1, caps.v, "caption", arr);
    }
  }
  if (rc == 0) {
    json_object_set_new(res, "k_test", json_integer(t->k_test));
    json_object_set_new(res, "itc_only", json_boolean(t->itc_only));
    if ((rc = json_write_atomic(res, t->out_json, JSON_INDENT(1) | JSON_REAL_PRECISION(9))) == 0)
      MMP_INFO("retrieval", "%zu text and %zu image queries -> %s", t->queries.n, t->qimages.n, t->out_json);
  }
  if (rc == 0 && t->out_html[0]) rc = write_html(t, res, paths.v);
  json_decref(tq);
  json_decref(iq);
  json_decref(res);
  free(s1);
  free(s2);
  gallery_free(&g);
  gallery_free(&qg);
  texts_free(&q);
  texts_free(&cx);
  strs_free(&paths);
  strs_free(&names);
  strs_free(&caps);
  return rc;
}

static int rt_run(void *self, mmp_context_t *ctx) {
  rt_t *t = self;
  comps_t c = {.ctx = ctx};
  int rc;
  if (!(c.model = mmp_component_create(ctx, MMP_KIND_ENCODER, "model")) ||
      !(c.tok = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "tokenizer")) ||
      !(c.improc = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "image_processor")))
    rc = mmp_error_code();
  else
    rc = t->evaluate ? run_evaluate(&c, t) : run_search(&c, t);
  mmp_component_free(c.improc);
  mmp_component_free(c.tok);
  mmp_component_free(c.model);
  return rc;
}

static const mmp_task_ops_t rt_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "retrieval", "1.0",
                            "BLIP image-text retrieval: indexed search with "
                            "ITM re-ranking, and itm_eval recalls",
                            rt_keys, rt_create, rt_destroy),
    .run = rt_run,
};

MMP_EXPORT int mmp_plugin_task_retrieval_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_retrieval_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &rt_ops.base); }
