/* plugins/datasets/story.c - one AR-LDM story as tensors: frame choice, torchvision-equivalent transforms, tokenization. */
#include "plugins/datasets/story.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/config.h>
#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>

#include "plugins/datasets/storyfile.h"
#include "plugins/processors/imagecommon.h"

static const float BLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float BLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};
static const float HALF[3] = {0.5f, 0.5f, 0.5f};

typedef struct tokenizer {
  const mmp_processor_ops_t *ops;
  void *self;
  mmp_config_t *cfg;
  bool lowers; /* the tokenizer took lowercase_captions itself */
} tokenizer_t;

typedef struct story {
  const story_desc_t *d;
  story_file_t *file;
  bool train, test, continuation, lowercase;
  int64_t max_length;
  int image_size, source_size, test_size, frame_height, frame_index;
  uint64_t seed;
  mmp_resample_t interp;
  int64_t *map; /* dataset index -> story index in the file (NULL: identity) */
  int64_t count;
  tokenizer_t clip, blip;
  pthread_mutex_t tok_lock; /* tokenizers are not promised to be reentrant */
} story_t;

/* ---- a small per-item generator (splitmix64): items are reproducible
 * whatever thread or order they are read in ---- */
typedef struct item_rng {
  uint64_t s;
} item_rng_t;

static uint64_t rng_next(item_rng_t *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* uniform in [0, n) */
static int rng_below(item_rng_t *r, int n) {
  return n <= 1 ? 0 : (int)(rng_next(r) % (uint64_t)n);
}

/* ---- tokenizers through the registry ---- */

/* The first of @cands that @p declares, or NULL. */
static const char *declared(const mmp_plugin_t *p, const char *const *cands) {
  for (; *cands; cands++)
    for (const mmp_key_t *k = p->keys; k && k->name; k++)
      if (strcmp(k->name, *cands) == 0) return *cands;
  return NULL;
}

static char *quote(const char *s) {
  size_t n = strlen(s);
  char *q = malloc(2 * n + 3), *o = q;
  if (!q) return NULL;
  *o++ = '"';
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') *o++ = '\\';
    *o++ = *s;
  }
  *o++ = '"';
  *o = 0;
  return q;
}

static int set_key(mmp_config_t *cfg, const mmp_plugin_t *p, const char *const *cands,
                   const char *literal, bool needed, const char *what) {
  const char *k = declared(p, cands);
  if (!k) {
    if (!needed) return 0;
    return mmp_error_set(MMP_ECONFIG, "%s: processor '%s' has no key '%s'", what, p->name, cands[0]);
  }
  return mmp_config_set_literal(cfg, k, literal, MMP_LAYER_FILE, NULL, 0);
}

static int tokenizer_open(tokenizer_t *t, mmp_context_t *ctx, const char *what,
                          const char *plugin_name, const char *vocab, const char *merges,
                          const char *bpe, int64_t max_length, bool lowercase,
                          const mmp_config_t *dcfg) {
  mmp_registry_t *reg = ctx ? mmp_context_registry(ctx) : NULL;
  if (!reg) return mmp_error_set(MMP_EINVAL, "%s: no registry to find '%s' in", what, plugin_name);
  const mmp_plugin_t *p = mmp_registry_find(reg, MMP_KIND_PROCESSOR, plugin_name);
  if (!p) return mmp_error_prefix("%s: ", what);
  const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)p;
  if (p->struct_size < offsetof(mmp_processor_ops_t, encode_text) + sizeof ops->encode_text ||
      !ops->encode_text)
    return mmp_error_set(MMP_EPLUGIN, "%s: processor '%s' does not tokenize text (no encode_text)",
                         what, plugin_name);
  mmp_config_t *cfg = mmp_config_new();
  if (!cfg) return mmp_error_code();
  int rc = 0;
  static const char *const K_VOCAB[] = {"vocab", "vocab_file", NULL};
  static const char *const K_MERGES[] = {"merges", "merges_file", NULL};
  static const char *const K_BPE[] = {"bpe_file", "bpe", "bpe_path", NULL};
  static const char *const K_MAXLEN[] = {"max_length", NULL};
  static const char *const K_TOKENS[] = {"new_tokens", "added_tokens", NULL};
  static const char *const K_TRUNC[] = {"truncation", NULL};
  static const char *const K_LOWER[] = {"lowercase_captions", NULL};
  char *q = NULL, lit[64];
  char *list = NULL;
  if (rc == 0 && vocab && *vocab) {
    q = quote(vocab);
    rc = q ? set_key(cfg, p, K_VOCAB, q, true, what) : MMP_ENOMEM;
    free(q);
  }
  if (rc == 0 && merges && *merges) {
    q = quote(merges);
    rc = q ? set_key(cfg, p, K_MERGES, q, true, what) : MMP_ENOMEM;
    free(q);
  }
  if (rc == 0 && bpe && *bpe) {
    q = quote(bpe);
    rc = q ? set_key(cfg, p, K_BPE, q, true, what) : MMP_ENOMEM;
    free(q);
  }
  if (rc == 0) {
    snprintf(lit, sizeof lit, "%lld", (long long)max_length);
    rc = set_key(cfg, p, K_MAXLEN, lit, true, what);
  }
  /* AR-LDM tokenizes with truncation=False: a longer caption is an error */
  if (rc == 0) rc = set_key(cfg, p, K_TRUNC, "false", false, what);
  if (rc == 0 && lowercase && declared(p, K_LOWER)) {
    rc = set_key(cfg, p, K_LOWER, "true", false, what);
    t->lowers = true;
  }
  size_t nt = 0;
  if (rc == 0 && mmp_config_get_list_size(dcfg, "new_tokens", &nt) == 0 && nt > 0) {
    size_t len = 2; /* "[" + "]" */
    for (size_t i = 0; rc == 0 && i < nt; i++) {
      const char *tokv = NULL;
      if ((rc = mmp_config_get_list_string(dcfg, "new_tokens", i, &tokv)) == 0)
        len += 2 * strlen(tokv) + 4;
    }
    list = rc == 0 ? malloc(len + 1) : NULL;
    if (rc == 0 && !list) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    if (list) strcpy(list, "[");
    for (size_t i = 0; rc == 0 && i < nt; i++) {
      const char *tokv = NULL;
      mmp_config_get_list_string(dcfg, "new_tokens", i, &tokv);
      char *tq = quote(tokv);
      if (!tq) {
        rc = mmp_error_set(MMP_ENOMEM, "out of memory");
        break;
      }
      if (i) strcat(list, ", ");
      strcat(list, tq);
      free(tq);
    }
    if (rc == 0) {
      strcat(list, "]");
      rc = set_key(cfg, p, K_TOKENS, list, true, what);
    }
  }
  free(list);
  if (rc == 0) {
    char *errs = NULL, w[300];
    snprintf(w, sizeof w, "%s: processor '%s'", what, plugin_name);
    int n = mmp_config_check_keys(cfg, p->keys, w, &errs);
    if (n > 0) rc = mmp_error_set(MMP_ECONFIG, "%s", errs ? errs : "bad tokenizer configuration");
    free(errs);
  }
  if (rc == 0) rc = mmp_config_merge_defaults(cfg, p->keys);
  if (rc == 0) {
    rc = p->create(p, cfg, ctx, &t->self);
    if (rc < 0) mmp_error_prefix("%s: creating '%s': ", what, plugin_name);
  }
  if (rc < 0) {
    mmp_config_free(cfg);
    return rc;
  }
  t->ops = ops;
  t->cfg = cfg;
  return 0;
}

static void lower_ascii(char *p) {
  for (; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
}

static void tokenizer_close(tokenizer_t *t) {
  if (t->ops && t->self) t->ops->base.destroy(t->self);
  mmp_config_free(t->cfg);
  memset(t, 0, sizeof *t);
}

/* Tokenize @n texts into i64 [n, max_length] ids and mask (transfer full). */
static int tokenize(story_t *s, tokenizer_t *t, const char *const *texts, size_t n, int first,
                    int64_t story, mmp_tensor_t **ids_out, mmp_tensor_t **mask_out) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (!m) return mmp_error_code();
  /* lowercase_captions for a tokenizer without that key: ASCII here */
  char *lowered[STORY_FRAMES] = {NULL};
  const char *use[STORY_FRAMES];
  for (size_t i = 0; i < n && i < STORY_FRAMES; i++) {
    use[i] = texts[i];
    if (s->lowercase && !t->lowers && (lowered[i] = strdup(texts[i]))) {
      lower_ascii(lowered[i]);
      use[i] = lowered[i];
    }
  }
  pthread_mutex_lock(&s->tok_lock);
  int rc = t->ops->encode_text(t->self, use, n, m);
  pthread_mutex_unlock(&s->tok_lock);
  for (size_t i = 0; i < STORY_FRAMES; i++) free(lowered[i]);
  int64_t *ids = NULL, *mask = NULL;
  if (rc < 0) {
    /* texts are captions first..first+n-1 of the story */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mmp_error_last());
    if (strstr(msg, "more than max_length")) rc = MMP_EDATA;
    mmp_error_set(rc, "%s: story %lld: captions %d-%d: %s", s->d->name, (long long)story, first,
                  first + (int)n - 1, msg);
    goto out;
  }
  mmp_tensor_t *ti = mmp_tensormap_need(m, "input_ids"), *tm = mmp_tensormap_need(m, "attention_mask");
  if (!ti || !tm) {
    rc = mmp_error_prefix("%s: tokenizer output: ", s->d->name);
    goto out;
  }
  if (ti->ndim != 2 || ti->shape[0] != (int64_t)n || !mmp_tensor_same_shape(ti, tm)) {
    rc = mmp_error_set(MMP_ESHAPE, "%s: tokenizer gave input_ids of an unexpected shape", s->d->name);
    goto out;
  }
  int64_t L = ti->shape[1];
  size_t cnt = (size_t)n * (size_t)L;
  ids = malloc(cnt * sizeof *ids);
  mask = malloc(cnt * sizeof *mask);
  if (!ids || !mask) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto out;
  }
  const mmp_tensor_t *src[2] = {ti, tm};
  int64_t *dst[2] = {ids, mask};
  for (int k = 0; k < 2; k++) {
    if (src[k]->dtype == MMP_I64) {
      rc = mmp_tensor_to_host(src[k], dst[k], cnt * sizeof(int64_t));
    } else if (src[k]->dtype == MMP_I32) {
      int32_t *tmp = malloc(cnt * sizeof *tmp);
      rc = tmp ? mmp_tensor_to_host(src[k], tmp, cnt * sizeof *tmp) : MMP_ENOMEM;
      for (size_t i = 0; rc == 0 && i < cnt; i++) dst[k][i] = tmp[i];
      free(tmp);
    } else {
      rc = mmp_error_set(MMP_EDTYPE, "%s: tokenizer ids must be i64 or i32", s->d->name);
    }
    if (rc < 0) goto out;
  }
  /* a caption longer than max_length: AR-LDM pads with truncation=False, so
   * such a story cannot be batched; report which caption it is */
  for (size_t i = 0; i < n; i++) {
    int64_t len = 0;
    for (int64_t j = 0; j < L; j++) len += mask[i * L + j] != 0;
    if (len > s->max_length) {
      rc = mmp_error_set(MMP_EDATA, "%s: story %lld: caption %d is %lld tokens long, more than max_length %lld",
                         s->d->name, (long long)story, first + (int)i, (long long)len,
                         (long long)s->max_length);
      goto out;
    }
  }
  if (L != s->max_length) {
    rc = mmp_error_set(MMP_EDATA, "%s: story %lld: tokenizer padded to %lld, not max_length %lld",
                       s->d->name, (long long)story, (long long)L, (long long)s->max_length);
    goto out;
  }
  int64_t shape[2] = {(int64_t)n, L};
  *ids_out = mmp_tensor_wrap(MMP_I64, 2, shape, ids, free, ids);
  if (!*ids_out) {
    rc = mmp_error_code();
    goto out;
  }
  ids = NULL;
  *mask_out = mmp_tensor_wrap(MMP_I64, 2, shape, mask, free, mask);
  if (!*mask_out) {
    rc = mmp_error_code();
    mmp_tensor_unref(*ids_out);
    *ids_out = NULL;
    goto out;
  }
  mask = NULL;
  rc = 0;
out:
  free(ids);
  free(mask);
  mmp_tensormap_free(m);
  return rc;
}

/* ---- create / destroy ---- */

static int key_error(const mmp_config_t *cfg, const char *key, const char *fmt, const char *val) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *file = n ? mmp_config_file(n) : NULL;
  char loc[600] = "";
  if (file) snprintf(loc, sizeof loc, "%s:%d: ", file, mmp_config_line(n));
  char msg[400];
  snprintf(msg, sizeof msg, fmt, val);
  return mmp_error_set(MMP_ECONFIG, "%skey '%s': %s", loc, key, msg);
}

static int get_int_key(const mmp_config_t *cfg, const char *key, int64_t lo, int64_t hi, int *out) {
  int64_t v;
  int rc = mmp_config_get_int(cfg, key, &v);
  if (rc < 0) return rc;
  if (v < lo || v > hi) {
    char b[64];
    snprintf(b, sizeof b, "%lld", (long long)v);
    return key_error(cfg, key, "value %s out of range", b);
  }
  *out = (int)v;
  return 0;
}

void story_destroy(void *self) {
  story_t *s = self;
  if (!s) return;
  tokenizer_close(&s->clip);
  tokenizer_close(&s->blip);
  story_file_close(s->file);
  pthread_mutex_destroy(&s->tok_lock);
  free(s->map);
  free(s);
}

/* Count the captions of a '|'-joined string. */
static int caption_count(const char *text) {
  int n = 1;
  for (; *text; text++) n += *text == '|';
  return n;
}

static int build_skip_map(story_t *s) {
  char **texts = NULL;
  int64_t n = 0;
  int rc = story_file_read_all_text(s->file, &texts, &n);
  if (rc < 0) return rc;
  s->map = malloc((n ? (size_t)n : 1) * sizeof *s->map);
  if (!s->map) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  s->count = 0;
  for (int64_t i = 0; i < n; i++) {
    if (rc == 0) {
      if (!texts[i])
        MMP_WARN(s->d->name, "skipping story %lld: its captions are not valid UTF-8", (long long)i);
      else if (caption_count(texts[i]) != STORY_FRAMES)
        MMP_WARN(s->d->name, "skipping story %lld: %d captions, not %d", (long long)i,
                 caption_count(texts[i]), STORY_FRAMES);
      else
        s->map[s->count++] = i;
    }
    free(texts[i]);
  }
  free(texts);
  return rc;
}

int story_create(const story_desc_t *d, const mmp_config_t *cfg, mmp_context_t *ctx,
                 void **out_self) {
  story_t *s = calloc(1, sizeof *s);
  if (!s) return mmp_error_set(MMP_ENOMEM, "out of memory");
  s->d = d;
  pthread_mutex_init(&s->tok_lock, NULL);
  int rc;
  char path[4096], vocab[4096], merges[4096], bpe[4096], bvocab[4096];
  const char *split = NULL, *task = NULL, *interp = NULL, *bad = NULL, *clipname = NULL,
             *blipname = NULL;
  int64_t seed = 0;
  if ((rc = mmp_config_get_path(cfg, "hdf5_file", path, sizeof path)) < 0 ||
      (rc = mmp_config_get_string(cfg, "split", &split)) < 0 ||
      (rc = mmp_config_get_string(cfg, "task", &task)) < 0 ||
      (rc = mmp_config_get_int(cfg, "max_length", &s->max_length)) < 0 ||
      (rc = get_int_key(cfg, "image_size", 1, 16384, &s->image_size)) < 0 ||
      (rc = get_int_key(cfg, "source_image_size", 1, 16384, &s->source_size)) < 0 ||
      (rc = mmp_config_get_string(cfg, "interpolation", &interp)) < 0 ||
      (rc = mmp_config_get_int(cfg, "seed", &seed)) < 0 ||
      (rc = mmp_config_get_string(cfg, "on_bad_story", &bad)) < 0 ||
      (rc = mmp_config_get_bool(cfg, "lowercase_captions", &s->lowercase)) < 0 ||
      (rc = mmp_config_get_string(cfg, "clip_tokenizer", &clipname)) < 0 ||
      (rc = mmp_config_get_path(cfg, "clip_vocab", vocab, sizeof vocab)) < 0 ||
      (rc = mmp_config_get_path(cfg, "clip_merges", merges, sizeof merges)) < 0 ||
      (rc = mmp_config_get_path(cfg, "clip_bpe", bpe, sizeof bpe)) < 0 ||
      (rc = mmp_config_get_string(cfg, "blip_tokenizer", &blipname)) < 0 ||
      (rc = mmp_config_get_path(cfg, "bert_vocab", bvocab, sizeof bvocab)) < 0)
    goto fail;
  s->seed = (uint64_t)seed;
  if (strcmp(split, "train") && strcmp(split, "val") && strcmp(split, "test")) {
    rc = key_error(cfg, "split", "'%s' is not train, val or test", split);
    goto fail;
  }
  s->train = strcmp(split, "train") == 0;
  s->test = strcmp(split, "test") == 0;
  if (strcmp(task, "visualization") && strcmp(task, "continuation")) {
    rc = key_error(cfg, "task", "'%s' is not visualization or continuation", task);
    goto fail;
  }
  s->continuation = strcmp(task, "continuation") == 0;
  if (s->max_length < 2 || s->max_length > 4096) {
    rc = key_error(cfg, "max_length", "%s", "must be in 2..4096");
    goto fail;
  }
  if (mmp_resample_parse(interp, &s->interp) < 0 ||
      (s->interp != MMP_RESAMPLE_BILINEAR && s->interp != MMP_RESAMPLE_BICUBIC)) {
    rc = key_error(cfg, "interpolation", "'%s' is not bilinear or bicubic", interp);
    goto fail;
  }
  if (strcmp(bad, "fail") && strcmp(bad, "skip")) {
    rc = key_error(cfg, "on_bad_story", "'%s' is not fail or skip", bad);
    goto fail;
  }
  s->frame_index = -1;
  s->frame_height = 128;
  s->test_size = 64;
  if (d->strips) {
    if ((rc = get_int_key(cfg, "frame_height", 1, 16384, &s->frame_height)) < 0 ||
        (rc = get_int_key(cfg, "frame_index", -1, 1000, &s->frame_index)) < 0)
      goto fail;
  }
  if (d->test_layout == STORY_TEST_SMALL &&
      (rc = get_int_key(cfg, "test_image_size", 1, 16384, &s->test_size)) < 0)
    goto fail;
  if (*vocab && *bpe) {
    rc = key_error(cfg, "clip_bpe", "%s", "give either clip_bpe or clip_vocab + clip_merges");
    goto fail;
  }
  if ((*vocab != 0) != (*merges != 0)) {
    rc = key_error(cfg, *vocab ? "clip_merges" : "clip_vocab", "%s",
                   "clip_vocab and clip_merges go together");
    goto fail;
  }

  s->file = story_file_open(path, split, d->text_name);
  if (!s->file) {
    rc = mmp_error_prefix("%s: ", d->name);
    goto fail;
  }
  s->count = story_file_count(s->file);
  if (strcmp(bad, "skip") == 0 && (rc = build_skip_map(s)) < 0) goto fail;

  if (*vocab || *bpe) {
    char what[128];
    snprintf(what, sizeof what, "%s: clip_tokenizer", d->name);
    if ((rc = tokenizer_open(&s->clip, ctx, what, clipname, vocab, merges, bpe, s->max_length, s->lowercase, cfg)) < 0)
      goto fail;
  }
  if (*bvocab) {
    char what[128];
    snprintf(what, sizeof what, "%s: blip_tokenizer", d->name);
    if ((rc = tokenizer_open(&s->blip, ctx, what, blipname, bvocab, NULL, NULL, s->max_length, s->lowercase, cfg)) < 0)
      goto fail;
  }
  *out_self = s;
  return 0;
fail:
  story_destroy(s);
  return rc < 0 ? rc : MMP_ERUNTIME;
}

int64_t story_size(void *self) { return ((story_t *)self)->count; }

/* ---- items ---- */

/* Decode frame @f of story @si and pick the frame of a strip. */
static int load_frame(story_t *s, int64_t si, int f, item_rng_t *r, mmp_image_t *out) {
  uint8_t *bytes = NULL;
  size_t n = 0;
  int rc = story_file_read_image(s->file, si, f, &bytes, &n);
  if (rc < 0) return rc;
  mmp_image_t full = {0};
  rc = mmp_image_png_decode(bytes, n, story_file_png_bgr(s->file), &full);
  free(bytes);
  if (rc < 0)
    return mmp_error_prefix("%s: story %lld: image%d: ", story_file_path(s->file), (long long)si, f);
  if (!s->d->strips) {
    *out = full;
    return 0;
  }
  int fh = s->frame_height;
  int frames = full.h / fh;
  if (frames < 1 || full.h % fh != 0) {
    rc = mmp_error_set(MMP_EDATA, "%s: story %lld: image%d is %dx%d, not a strip of %d-pixel frames",
                       story_file_path(s->file), (long long)si, f, full.w, full.h, fh);
  } else {
    int idx = s->frame_index >= 0 ? s->frame_index : rng_below(r, frames);
    if (idx >= frames)
      rc = mmp_error_set(MMP_EDATA, "%s: story %lld: image%d has %d frames, frame_index is %d",
                         story_file_path(s->file), (long long)si, f, frames, idx);
    else
      rc = mmp_image_crop(&full, 0, idx * fh, full.w, fh, out);
  }
  mmp_image_clear(&full);
  return rc;
}

/* Resize (to size x size, or the short side to size) and crop to size. */
static int transform(story_t *s, const mmp_image_t *in, bool square, int size, bool random,
                     item_rng_t *r, mmp_image_t *out) {
  int rc;
  if (square) return mmp_image_resize(in, size, size, s->interp, out);
  int w, h, x, y;
  mmp_image_resize_short_side(in->w, in->h, size, &w, &h);
  mmp_image_t tmp = {0};
  if ((rc = mmp_image_resize(in, w, h, s->interp, &tmp)) < 0) return rc;
  if (random) { /* torchvision RandomCrop: offsets uniform in [0, H - h] */
    y = rng_below(r, h - size + 1);
    x = rng_below(r, w - size + 1);
  } else {
    mmp_image_center_offsets(w, h, size, size, &x, &y);
  }
  rc = mmp_image_crop(&tmp, x, y, size, size, out);
  mmp_image_clear(&tmp);
  return rc;
}

static int put(mmp_tensormap_t *out, const char *name, mmp_dtype_t dt, int ndim,
               const int64_t *shape, void *data) {
  mmp_tensor_t *t = mmp_tensor_wrap(dt, ndim, shape, data, free, data);
  if (!t) {
    free(data);
    return mmp_error_code();
  }
  return mmp_tensormap_set(out, name, t);
}

/* Stack @n images of size x size into f32 [n,3,size,size], normalized. */
static int put_float(mmp_tensormap_t *out, const char *name, mmp_image_t *ims, int n,
                     const float *mean, const float *std) {
  int64_t shape[4] = {n, 3, ims[0].h, ims[0].w};
  size_t per = (size_t)3 * ims[0].h * ims[0].w;
  float *buf = malloc((size_t)n * per * sizeof *buf);
  if (!buf) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int i = 0; i < n; i++) mmp_image_to_float(&ims[i], mean, std, buf + (size_t)i * per);
  return put(out, name, MMP_F32, 4, shape, buf);
}

/* Stack @n RGB images into u8 [n,H,W,3] (AR-LDM's test targets). */
static int put_u8(mmp_tensormap_t *out, const char *name, mmp_image_t *ims, int n) {
  for (int i = 1; i < n; i++)
    if (ims[i].w != ims[0].w || ims[i].h != ims[0].h)
      return mmp_error_set(MMP_ESHAPE, "test frames of one story differ in size (%dx%d, %dx%d)",
                           ims[0].w, ims[0].h, ims[i].w, ims[i].h);
  size_t per = (size_t)3 * ims[0].h * ims[0].w;
  uint8_t *buf = malloc((size_t)n * per);
  if (!buf) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * per, ims[i].data, per);
  int64_t shape[4] = {n, ims[0].h, ims[0].w, 3};
  return put(out, name, MMP_U8, 4, shape, buf);
}

int story_get(void *self, int64_t index, mmp_tensormap_t *out) {
  story_t *s = self;
  if (index < 0 || index >= s->count)
    return mmp_error_set(MMP_EINVAL, "%s: index %lld out of range (%lld stories)", s->d->name,
                         (long long)index, (long long)s->count);
  int64_t si = s->map ? s->map[index] : index;
  item_rng_t r = {s->seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)si};
  rng_next(&r);
  mmp_image_t frames[STORY_FRAMES] = {{0}}, src[STORY_FRAMES] = {{0}}, tgt[STORY_FRAMES] = {{0}};
  char *text = NULL, *storage = NULL;
  const char *caps[STORY_FRAMES];
  int rc = story_file_read_text(s->file, si, &text);
  if (rc < 0) goto out;
  int nc = story_split_captions(text, &storage, caps, STORY_FRAMES);
  if (nc < 0) {
    rc = nc;
    goto out;
  }
  if (nc != STORY_FRAMES) {
    rc = mmp_error_set(MMP_EDATA, "%s: story %lld: %d captions, expected %d (on_bad_story = skip leaves such stories out)",
                       s->d->name, (long long)si, nc, STORY_FRAMES);
    goto out;
  }

  for (int f = 0; f < STORY_FRAMES; f++)
    if ((rc = load_frame(s, si, f, &r, &frames[f])) < 0) goto out;

  /* BLIP source images: all five frames */
  bool square = s->d->target == STORY_TARGET_SQUARE;
  for (int f = 0; f < STORY_FRAMES; f++)
    if ((rc = transform(s, &frames[f], square, s->source_size, s->train, &r, &src[f])) < 0) goto out;
  if ((rc = put_float(out, "source_images", src, STORY_FRAMES, BLIP_MEAN, BLIP_STD)) < 0) goto out;

  int first = s->continuation ? 1 : 0, nt = STORY_FRAMES - first;
  /* continuation: the given frame 0 as decoded (not in AR-LDM's item, which
   * keeps it only as BLIP pixels), for displays of the story */
  if (s->continuation && (rc = put_u8(out, "first_image", frames, 1)) < 0) goto out;
  if (!s->test) {
    for (int f = 0; f < nt; f++)
      if ((rc = transform(s, &frames[first + f], square, s->image_size, s->train, &r, &tgt[f])) < 0)
        goto out;
    if ((rc = put_float(out, "images", tgt, nt, HALF, HALF)) < 0) goto out;
  } else if (s->d->test_layout == STORY_TEST_SMALL) {
    for (int f = 0; f < nt; f++)
      if ((rc = transform(s, &frames[first + f], false, s->test_size, false, &r, &tgt[f])) < 0)
        goto out;
    if ((rc = put_u8(out, "images", tgt, nt)) < 0) goto out;
  } else {
    if ((rc = put_u8(out, "images", frames + first, nt)) < 0) goto out;
  }

  mmp_tensor_t *ids = NULL, *mask = NULL;
  if (s->clip.ops) {
    if ((rc = tokenize(s, &s->clip, caps + first, (size_t)nt, first, si, &ids, &mask)) < 0) goto out;
    if ((rc = mmp_tensormap_set(out, "captions", ids)) < 0 ||
        (rc = mmp_tensormap_set(out, "attention_mask", mask)) < 0)
      goto out;
  }
  if (s->blip.ops) {
    if ((rc = tokenize(s, &s->blip, caps, STORY_FRAMES, 0, si, &ids, &mask)) < 0) goto out;
    if ((rc = mmp_tensormap_set(out, "source_caption", ids)) < 0 ||
        (rc = mmp_tensormap_set(out, "source_attention_mask", mask)) < 0)
      goto out;
  }
  if ((rc = mmp_tensormap_set_string(out, "text", text)) < 0) goto out;
  for (int i = 0; i < STORY_FRAMES; i++) {
    char key[16];
    snprintf(key, sizeof key, "caption%d", i);
    if ((rc = mmp_tensormap_set_string(out, key, caps[i])) < 0) goto out;
  }
  rc = 0;
out:
  for (int f = 0; f < STORY_FRAMES; f++) {
    mmp_image_clear(&frames[f]);
    mmp_image_clear(&src[f]);
    mmp_image_clear(&tgt[f]);
  }
  free(text);
  free(storage);
  return rc;
}
