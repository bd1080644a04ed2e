/* plugins/tasks/features.c - feature extraction as LAVIS's
 * extract_features does for BLIP: image embeddings (the ViT tokens), text
 * embeddings (the text tower in text mode), multimodal embeddings ([ENC]
 * first, cross-attention to the image tokens) and the projected,
 * L2-normalised versions, for lists of images and texts, to one
 * safetensors file. The model, tokenizer and image processor are
 * components reached through the registry. See doc/retrieval.md. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include <mmpipe/safetensors.h>

#include "plugins/common/sd_common.h"
#include "plugins/processors/imagecommon.h"

static const mmp_key_t ft_keys[] = {
    {"images", MMP_TYPE_LIST, "[]", "image files (PNG or JPEG; relative to the working directory)", 0, 0},
    {"image_dir", MMP_TYPE_STRING, "\"\"", "also every *.png, *.jpg, *.jpeg of this folder, sorted by name", MMP_KEY_PATH, 0},
    {"texts", MMP_TYPE_LIST, "[]", "texts", 0, 0},
    {"text_file", MMP_TYPE_STRING, "\"\"", "also one text per line of this file (empty lines skipped)", MMP_KEY_PATH,
     0},
    {"multimodal", MMP_TYPE_BOOL, "false", "also multimodal_embeds of the pairs (image i, text i): equal counts needed",
     0, 0},
    {"batch_size", MMP_TYPE_INT, "16", "images or texts per model call", 0, 0},
    {"output", MMP_TYPE_STRING, "\"features.safetensors\"", "where the features go", MMP_KEY_PATH, 0},
    {"model", MMP_TYPE_COMPONENT, "\"blip_retrieval\"", "the model (encoder) group", 0, MMP_KIND_ENCODER},
    {"tokenizer", MMP_TYPE_COMPONENT, "\"bert_tokenizer\"", "the tokenizer group", 0, MMP_KIND_PROCESSOR},
    {"image_processor", MMP_TYPE_COMPONENT, "\"image_resize\"", "the image transform group", 0, MMP_KIND_PROCESSOR},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct ft {
  char **images, **texts;
  size_t n_images, n_texts;
  bool multimodal;
  int64_t batch;
  char output[4096];
} ft_t;

static void free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void ft_destroy(void *self) {
  ft_t *t = self;
  if (!t) return;
  free_list(t->images, t->n_images);
  free_list(t->texts, t->n_texts);
  free(t);
}

static int add(char ***v, size_t *n, const char *s) {
  char **p = realloc(*v, (*n + 1) * sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  *v = p;
  if (!(p[*n] = strdup(s))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  (*n)++;
  return 0;
}

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ft_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  (void)ctx;
  ft_t *t = calloc(1, sizeof *t);
  if (!t) return mmp_error_set(MMP_ENOMEM, "out of memory");
  char dir[4096] = "", tfile[4096] = "";
  size_t ni = 0, nt = 0;
  int rc;
  if ((rc = mmp_config_get_list_size(cfg, "images", &ni)) || (rc = mmp_config_get_list_size(cfg, "texts", &nt)) ||
      (rc = mmp_config_get_path(cfg, "image_dir", dir, sizeof dir)) ||
      (rc = mmp_config_get_path(cfg, "text_file", tfile, sizeof tfile)) ||
      (rc = mmp_config_get_bool(cfg, "multimodal", &t->multimodal)) ||
      (rc = mmp_config_get_int(cfg, "batch_size", &t->batch)) ||
      (rc = mmp_config_get_path(cfg, "output", t->output, sizeof t->output)))
    goto fail;
  for (size_t i = 0; i < ni; i++) {
    const char *s;
    if ((rc = mmp_config_get_list_string(cfg, "images", i, &s)) || (rc = add(&t->images, &t->n_images, s))) goto fail;
  }
  if (dir[0]) {
    DIR *d = opendir(dir);
    if (!d) {
      rc = cfg_error(cfg, "image_dir", strerror(errno));
      goto fail;
    }
    char **names = NULL;
    size_t nn = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
      if (mmp_image_name_known(e->d_name)) rc = add(&names, &nn, e->d_name);
    }
    closedir(d);
    if (nn) qsort(names, nn, sizeof *names, cmp_str);
    for (size_t i = 0; rc == 0 && i < nn; i++) {
      char p[8300];
      snprintf(p, sizeof p, "%s/%s", dir, names[i]);
      rc = add(&t->images, &t->n_images, p);
    }
    free_list(names, nn);
    if (rc) goto fail;
  }
  for (size_t i = 0; i < nt; i++) {
    const char *s;
    if ((rc = mmp_config_get_list_string(cfg, "texts", i, &s)) || (rc = add(&t->texts, &t->n_texts, s))) goto fail;
  }
  if (tfile[0]) {
    FILE *f = fopen(tfile, "r");
    if (!f) {
      rc = cfg_error(cfg, "text_file", strerror(errno));
      goto fail;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
      while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
      if (len > 0) rc = add(&t->texts, &t->n_texts, line);
    }
    free(line);
    fclose(f);
    if (rc) goto fail;
  }
  if (!t->n_images && !t->n_texts)
    rc = cfg_error(cfg, "images", "no images and no texts");
  else if (t->multimodal && t->n_images != t->n_texts)
    rc = cfg_error(cfg, "multimodal", "pairs image i with text i: give as many images as texts");
  else if (t->batch < 1 || t->batch > 65536)
    rc = cfg_error(cfg, "batch_size", "must be 1 .. 65536");
  if (rc) goto fail;
  *out_self = t;
  return 0;
fail:
  ft_destroy(t);
  return rc ? rc : mmp_error_code();
}

static int fwd(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder and processor share the layout */
  return ops->forward(c->self, method, in, out);
}

/* Per-batch outputs gathered under their names, concatenated at the end. */
typedef struct acc {
  const char *name;
  mmp_tensor_t **parts;
  size_t n;
} acc_t;

static int acc_take(acc_t *a, const mmp_tensormap_t *out, const char *key) {
  mmp_tensor_t *t = mmp_tensormap_need(out, key);
  if (!t) return mmp_error_prefix("features: the model gave no %s: ", key);
  mmp_tensor_t **p = realloc(a->parts, (a->n + 1) * sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  a->parts = p;
  a->parts[a->n++] = mmp_tensor_ref(t);
  return 0;
}

static int acc_put(acc_t *a, mmp_tensormap_t *m) {
  if (!a->n) return 0;
  mmp_tensor_t *t = mmp_concat(a->parts, (int)a->n, 0);
  return t ? mmp_tensormap_set(m, a->name, t) : mmp_error_prefix("features: %s: ", a->name);
}

static void acc_free(acc_t *a) {
  for (size_t i = 0; i < a->n; i++) mmp_tensor_unref(a->parts[i]);
  free(a->parts);
}

static mmp_tensor_t *load_pixels(mmp_component_t *improc, const char *path) {
  mmp_image_t im = {0};
  if (mmp_image_load(path, &im) < 0) {
    mmp_error_prefix("features: ");
    return NULL;
  }
  int64_t shape[4] = {1, im.h, im.w, 3};
  mmp_tensor_t *u8 = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, shape, im.data), *px = NULL;
  mmp_image_clear(&im);
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  if (u8 && in && out && mmp_tensormap_set(in, "images", u8) == 0 && fwd(improc, NULL, in, out) == 0) {
    px = mmp_tensormap_need(out, "images");
    if (px) mmp_tensor_ref(px);
  } else if (!in || !out) {
    mmp_tensor_unref(u8);
  }
  if (!px) mmp_error_prefix("features: %s: ", path);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return px;
}

static char *json_list(char **v, size_t n) {
  json_t *j = json_array();
  for (size_t i = 0; j && i < n; i++) json_array_append_new(j, json_string(v[i]));
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return s;
}

static int ft_run(void *self, mmp_context_t *ctx) {
  ft_t *t = self;
  mmp_component_t *model = NULL, *tok = NULL, *improc = NULL;
  acc_t img[3] = {{.name = "image_embeds"}, {.name = "image_embeds_proj"}, {.name = "image_feat"}},
        txt[3] = {{.name = "text_embeds"}, {.name = "text_embeds_proj"}, {.name = "text_feat"}},
        mm[1] = {{.name = "multimodal_embeds"}};
  mmp_tensormap_t *tk = mmp_tensormap_new(), *res = mmp_tensormap_new();
  mmp_tensor_t *image_embeds = NULL;
  char *mi = NULL, *mt = NULL;
  int rc = tk && res ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc == 0 && (!(model = mmp_component_create(ctx, MMP_KIND_ENCODER, "model")) ||
                  (t->n_texts && !(tok = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "tokenizer"))) ||
                  (t->n_images && !(improc = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "image_processor")))))
    rc = mmp_error_code();
  int64_t ni = (int64_t)t->n_images, nt = (int64_t)t->n_texts;
  if (rc == 0 && ni) mmp_context_progress_begin(ctx, "image features", ni);
  for (int64_t b = 0; rc == 0 && b < ni; b += t->batch) {
    int64_t nb = ni - b < t->batch ? ni - b : t->batch;
    mmp_tensor_t **px = calloc((size_t)nb, sizeof *px);
    if (!px) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int64_t i = 0; rc == 0 && i < nb; i++)
      if (!(px[i] = load_pixels(improc, t->images[b + i]))) rc = mmp_error_code();
    mmp_tensor_t *batch = rc == 0 ? mmp_concat(px, (int)nb, 0) : NULL;
    for (int64_t i = 0; px && i < nb; i++) mmp_tensor_unref(px[i]);
    free(px);
    if (rc == 0 && !batch) rc = mmp_error_prefix("features: images of different sizes after the processor: ");
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if (rc == 0 && (rc = mmp_tensormap_set(in, "pixel_values", batch)) == 0 &&
        (rc = fwd(model, "image", in, out)) == 0 && (rc = acc_take(&img[0], out, "image_embeds")) == 0 &&
        (rc = acc_take(&img[1], out, "image_embeds_proj")) == 0)
      rc = acc_take(&img[2], out, "image_feat");
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    if (rc == 0) mmp_context_progress_advance(ctx, nb);
  }
  if (ni) mmp_context_progress_end(ctx);
  if (rc == 0 && nt) {
    const mmp_processor_ops_t *tops = (const mmp_processor_ops_t *)tok->plugin;
    if (tops->base.struct_size < sizeof(mmp_processor_ops_t) || !tops->encode_text)
      rc = mmp_error_set(MMP_EPLUGIN, "features: tokenizer '%s' cannot encode text", tops->base.name);
    else
      rc = tops->encode_text(tok->self, (const char *const *)t->texts, t->n_texts, tk);
  }
  mmp_tensor_t *ids = rc == 0 && nt ? mmp_tensormap_need(tk, "input_ids") : NULL;
  mmp_tensor_t *am = rc == 0 && nt ? mmp_tensormap_need(tk, "attention_mask") : NULL;
  if (rc == 0 && nt && (!ids || !am)) rc = mmp_error_code();
  if (rc == 0 && t->multimodal && !(image_embeds = mmp_concat(img[0].parts, (int)img[0].n, 0))) rc = mmp_error_code();
  for (int64_t b = 0; rc == 0 && b < nt; b += t->batch) {
    int64_t nb = nt - b < t->batch ? nt - b : t->batch;
    for (int pass = 0; rc == 0 && pass < (t->multimodal ? 2 : 1); pass++) {
      mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
      if ((rc = mmp_tensormap_set(in, "input_ids", mmp_slice(ids, 0, b, b + nb, 1))) == 0 &&
          (rc = mmp_tensormap_set(in, "attention_mask", mmp_slice(am, 0, b, b + nb, 1))) == 0 && pass == 1)
        rc = mmp_tensormap_set(in, "image_embeds", mmp_slice(image_embeds, 0, b, b + nb, 1));
      if (rc == 0) rc = fwd(model, pass ? "multimodal" : "text", in, out);
      if (rc == 0 && pass == 0 && (rc = acc_take(&txt[0], out, "text_embeds")) == 0 &&
          (rc = acc_take(&txt[1], out, "text_embeds_proj")) == 0)
        rc = acc_take(&txt[2], out, "text_feat");
      if (rc == 0 && pass == 1) rc = acc_take(&mm[0], out, "multimodal_embeds");
      mmp_tensormap_free(in);
      mmp_tensormap_free(out);
    }
  }
  for (int i = 0; rc == 0 && i < 3; i++) rc = acc_put(&img[i], res);
  for (int i = 0; rc == 0 && i < 3; i++) rc = acc_put(&txt[i], res);
  if (rc == 0) rc = acc_put(&mm[0], res);
  if (rc == 0) {
    mi = json_list(t->images, t->n_images), mt = json_list(t->texts, t->n_texts);
    const char *md[] = {"images", mi ? mi : "[]", "texts", mt ? mt : "[]", NULL};
    if ((rc = mmp_safetensors_save_map(t->output, res, md)) == 0)
      MMP_INFO("features", "%lld images, %lld texts -> %s", (long long)ni, (long long)nt, t->output);
  }
  free(mi);
  free(mt);
  for (int i = 0; i < 3; i++) acc_free(&img[i]), acc_free(&txt[i]);
  acc_free(&mm[0]);
  mmp_tensor_unref(image_embeds);
  mmp_tensormap_free(tk);
  mmp_tensormap_free(res);
  mmp_component_free(improc);
  mmp_component_free(tok);
  mmp_component_free(model);
  return rc;
}

static const mmp_task_ops_t ft_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "features", "1.0",
                            "image, text and multimodal embeddings (LAVIS extract_features) to safetensors", ft_keys,
                            ft_create, ft_destroy),
    .run = ft_run,
};

MMP_EXPORT int mmp_plugin_task_features_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_features_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &ft_ops.base); }
