/* tests/test_plugin_blip_retrieval.c - the blip_retrieval encoder against
 * salesforce/BLIP's BLIP_Retrieval (tiny random sizes, read from a real-format
 * {"model": state_dict} .pth with momentum towers and queues): ITC features,
 * ITM logits, position-grid interpolation at another image size; and the
 * bert_tokenizer with BLIP's pre_caption against BLIP's tokenization of the
 * fixture captions (fixtures: tests/gen_blip_retrieval.py). */
#include <jansson.h>

#include "blip_test.h"
#include "plugins/processors/textcommon.h"

static char fxdir[4096];
static int64_t enc_id;

static mmp_tensormap_t *load_io(void) {
  char p[4200];
  snprintf(p, sizeof p, "%s/io.safetensors", fxdir);
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) < 0) {
    diag("%s: %s", p, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

/* [ENC] = len(vocab.txt) + 1: init_tokenizer adds [DEC], then [ENC]. */
static int64_t vocab_lines(void) {
  char p[4200], line[256];
  snprintf(p, sizeof p, "%s/vocab.txt", fxdir);
  FILE *f = fopen(p, "r");
  int64_t n = 0;
  while (f && fgets(line, sizeof line, f)) n++;
  if (f) fclose(f);
  return n;
}

static mmp_tensormap_t *run(const char *extra, const char *method, const mmp_tensormap_t *in, const char *what,
                            char *err, size_t errlen) {
  char cfg[8192], enc[64] = "";
  if (!strstr(extra, "enc_token_id")) snprintf(enc, sizeof enc, "enc_token_id = %lld;", (long long)enc_id);
  snprintf(cfg, sizeof cfg,
           "encoder = { name = \"blip_retrieval\"; config = "
           "\"%s/med_config.json\"; weights = \"%s/model.pth\";"
           " weights_prefix = \"model.\"; num_heads = 4; %s %s };",
           fxdir, fxdir, enc, extra);
  return bt_run(cfg, method, in, what, err, errlen);
}

/* Rows @idx of a [N, L] tensor. (transfer full) */
static mmp_tensor_t *rows(const mmp_tensor_t *t, const mmp_tensor_t *idx) {
  int64_t n = idx->shape[0];
  mmp_tensor_t **parts = calloc((size_t)n, sizeof *parts), *r = NULL;
  int64_t at[1];
  for (int64_t i = 0; i < n; i++) {
    at[0] = i;
    int64_t k = (int64_t)mmp_tensor_get(idx, at);
    parts[i] = mmp_slice((mmp_tensor_t *)t, 0, k, k + 1, 1);
  }
  r = mmp_concat(parts, (int)n, 0);
  for (int64_t i = 0; i < n; i++) mmp_tensor_unref(parts[i]);
  free(parts);
  return r;
}

static void check_out(const mmp_tensormap_t *o, const char *name, const mmp_tensormap_t *io, const char *key,
                      const char *what) {
  bt_check(mmp_tensormap_get(o, name), mmp_tensormap_get(io, key), what);
}

/* ITM of one image against several captions through the image's cached
 * cross-attention keys and values (cross_kv, then itm with them; and itm
 * with the one image and several texts, which caches within the call)
 * gives the numbers of the uncached pairs. */
static void test_itm_cache(const mmp_tensormap_t *io) {
  char cfg[8192];
  snprintf(cfg, sizeof cfg,
           "encoder = { name = \"blip_retrieval\"; config = \"%s/med_config.json\"; weights = \"%s/model.pth\";"
           " weights_prefix = \"model.\"; num_heads = 4; enc_token_id = %lld; };",
           fxdir, fxdir, (long long)enc_id);
  sd_env_t e;
  mmp_component_t *c = NULL;
  if (sd_env_open(&e, cfg) == 0) c = mmp_component_create(e.ctx, MMP_KIND_ENCODER, "encoder");
  if (!ok(c != NULL, "ITM cache: create")) {
    diag("%s", mmp_error_last());
    sd_env_close(&e);
    return;
  }
  enum { NT = 7 }; /* captions 3 .. 9: padding of several lengths */
  mmp_tensor_t *img1 = mmp_slice(mmp_tensormap_get(io, "pairs.image_embeds"), 0, 2, 3, 1), *imgs[NT];
  for (int i = 0; i < NT; i++) imgs[i] = img1;
  mmp_tensor_t *ids = mmp_slice(mmp_tensormap_get(io, "input_ids"), 0, 3, 3 + NT, 1);
  mmp_tensor_t *am = mmp_slice(mmp_tensormap_get(io, "attention_mask"), 0, 3, 3 + NT, 1);
  /* uncached: the image repeated, one per caption */
  mmp_tensormap_t *in = mmp_tensormap_new(), *ref = mmp_tensormap_new(), *kv = mmp_tensormap_new(),
                  *got = mmp_tensormap_new(), *one = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_concat(imgs, NT, 0));
  mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_ref(am));
  int rc = sd_forward(c, "itm", in, ref);
  mmp_tensormap_free(in);
  /* cached: the image's keys and values once, then the captions */
  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_tensor_ref(img1));
  if (rc == 0) rc = sd_forward(c, "cross_kv", in, kv);
  mmp_tensormap_free(in);
  if (!ok(rc == 0 && mmp_tensormap_size(kv) == 4, "cross_kv gives a key and a value per layer (2 layers)"))
    diag("%s", mmp_error_last());
  const mmp_tensor_t *k0 = mmp_tensormap_get(kv, "cross_key.0");
  ok(k0 && k0->ndim == 4 && k0->shape[0] == 1 && k0->shape[1] == 4 && k0->shape[2] == img1->shape[1],
     "cross_key.0 is [1, heads, image tokens, head width]");
  in = mmp_tensormap_new();
  for (size_t i = 0; i < mmp_tensormap_size(kv); i++)
    mmp_tensormap_set(in, mmp_tensormap_name(kv, i), mmp_tensor_ref(mmp_tensormap_at(kv, i)));
  mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_ref(am));
  rc = sd_forward(c, "itm", in, got);
  if (!ok(rc == 0, "itm with the cached keys and values of one image for %d captions", NT))
    diag("%s", mmp_error_last());
  double r1 = sd_relerr(mmp_tensormap_get(got, "itm_logits"), mmp_tensormap_get(ref, "itm_logits"));
  double r2 = sd_relerr(mmp_tensormap_get(got, "multimodal_embeds"), mmp_tensormap_get(ref, "multimodal_embeds"));
  ok(r1 >= 0 && r1 <= 1e-6 && r2 >= 0 && r2 <= 1e-6,
     "cached: itm_logits (%.2g) and multimodal_embeds (%.2g) equal the uncached to 1e-6", r1, r2);
  /* a missing layer is named */
  {
    mmp_tensormap_t *bad = mmp_tensormap_new(), *o = mmp_tensormap_new();
    mmp_tensormap_set(bad, "cross_key.0", mmp_tensor_ref(mmp_tensormap_get(kv, "cross_key.0")));
    mmp_tensormap_set(bad, "cross_value.0", mmp_tensor_ref(mmp_tensormap_get(kv, "cross_value.0")));
    mmp_tensormap_set(bad, "input_ids", mmp_tensor_ref(ids));
    rc = sd_forward(c, "itm", bad, o);
    ok(rc != 0, "itm with the keys of layer 0 only fails");
    like(rc ? mmp_error_last() : "", "cross_key.1 missing", "and names the missing tensor");
    mmp_tensormap_free(bad);
    mmp_tensormap_free(o);
  }
  /* one image in image_embeds, several captions: cached within the call */
  mmp_tensormap_free(in);
  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_tensor_ref(img1));
  mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_ref(am));
  rc = sd_forward(c, "itm", in, one);
  if (!ok(rc == 0, "itm of one image_embeds against %d captions", NT)) diag("%s", mmp_error_last());
  r1 = sd_relerr(mmp_tensormap_get(one, "itm_logits"), mmp_tensormap_get(ref, "itm_logits"));
  ok(r1 >= 0 && r1 <= 1e-6, "one image broadcast: itm_logits equal the uncached to 1e-6 (%.2g)", r1);
  mmp_tensormap_free(in);
  /* two images for seven captions is neither one nor one each */
  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_slice(mmp_tensormap_get(io, "pairs.image_embeds"), 0, 0, 2, 1));
  mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids));
  mmp_tensormap_free(one);
  one = mmp_tensormap_new();
  rc = sd_forward(c, "itm", in, one);
  like(rc ? mmp_error_last() : "", "2 images for 7 texts", "2 images for 7 captions are refused");
  mmp_tensormap_free(in);
  mmp_tensormap_free(one);
  mmp_tensormap_free(got);
  mmp_tensormap_free(kv);
  mmp_tensormap_free(ref);
  mmp_tensor_unref(img1);
  mmp_tensor_unref(ids);
  mmp_tensor_unref(am);
  mmp_component_free(c);
  sd_env_close(&e);
}

static void test_tokenizer(const mmp_tensormap_t *io) {
  char p[4200], cfg[8192];
  snprintf(p, sizeof p, "%s/annotation/coco_karpathy_test.json", fxdir);
  json_t *ann = json_load_file(p, 0, NULL), *exp;
  snprintf(p, sizeof p, "%s/expected.json", fxdir);
  exp = json_load_file(p, 0, NULL);
  if (!ok(ann && exp, "annotation and expected.json load")) return;
  /* pre_caption itself: BLIP's outputs of a few hard inputs */
  const char *k;
  json_t *v;
  json_object_foreach(json_object_get(exp, "pre_caption_examples"), k, v) {
    char *got = NULL;
    int rc = mmp_pre_caption(k, strlen(k), 30, &got);
    is_str(rc == 0 ? got : mmp_error_last(), json_string_value(v), "pre_caption(%s, 30)", k);
    free(got);
  }
  /* every raw caption -> pre_caption(30) -> tokenizer(35): BLIP's ids */
  const char *texts[128];
  size_t n = 0;
  size_t i;
  json_t *a;
  json_array_foreach(ann, i, a) {
    size_t j;
    json_t *c;
    json_array_foreach(json_object_get(a, "caption"), j, c) if (n < 128) texts[n++] = json_string_value(c);
  }
  snprintf(cfg, sizeof cfg,
           "tok = { name = \"bert_tokenizer\"; vocab = \"%s/vocab.txt\"; "
           "max_length = 35; pre_caption = 30; };",
           fxdir);
  sd_env_t e;
  mmp_component_t *c = NULL;
  if (sd_env_open(&e, cfg) == 0) c = mmp_component_create(e.ctx, MMP_KIND_PROCESSOR, "tok");
  mmp_tensormap_t *o = mmp_tensormap_new();
  const mmp_processor_ops_t *ops = c ? (const mmp_processor_ops_t *)c->plugin : NULL;
  int rc = ops ? ops->encode_text(c->self, texts, n, o) : -1;
  if (!ok(rc == 0 && n == 100, "tokenize the 100 raw captions")) diag("%s", mmp_error_last());
  bt_check(mmp_tensormap_get(o, "input_ids"), mmp_tensormap_get(io, "input_ids"),
           "input_ids (pre_caption, [CLS] .. [SEP], max_length 35, truncation)");
  bt_check(mmp_tensormap_get(o, "attention_mask"), mmp_tensormap_get(io, "attention_mask"), "attention_mask");
  mmp_tensormap_free(o);
  mmp_component_free(c);
  sd_env_close(&e);
  json_decref(ann);
  json_decref(exp);
}

int main(void) {
  snprintf(fxdir, sizeof fxdir, "%s/tests/fixtures/blip_retrieval", tap_srcdir());
  mmp_tensormap_t *io = load_io();
  if (!io) skip_all("fixtures missing");
  enc_id = vocab_lines() + 1;

  mmp_tensormap_t *in = mmp_tensormap_new(), *o;
  mmp_tensormap_set(in, "pixel_values", mmp_tensor_ref(mmp_tensormap_get(io, "pixel_values")));
  o = run("", "image", in, "image", NULL, 0);
  check_out(o, "image_embeds", io, "image_embeds", "image_embeds (the ViT's last_hidden_state)");
  {
    mmp_tensor_t *f = mmp_slice(mmp_tensormap_get(io, "image_feat"), 0, 0, 4, 1);
    bt_check(mmp_tensormap_get(o, "image_feat"), f, "image_feat: normalize(vision_proj(CLS))");
    mmp_tensor_unref(f);
  }
  check_out(o, "image_embeds_proj", io, "image_embeds_proj", "image_embeds_proj: every token projected, normalised");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(mmp_tensormap_get(io, "input_ids")));
  mmp_tensormap_set(in, "attention_mask", mmp_tensor_ref(mmp_tensormap_get(io, "attention_mask")));
  o = run("", "text", in, "text", NULL, 0);
  check_out(o, "text_feat", io, "text_feat", "text_feat of 100 captions: normalize(text_proj(CLS)), mode text");
  {
    mmp_tensor_t *h = mmp_slice(mmp_tensormap_get(o, "text_embeds"), 0, 0, 6, 1);
    mmp_tensor_t *hp = mmp_slice(mmp_tensormap_get(o, "text_embeds_proj"), 0, 0, 6, 1);
    bt_check(h, mmp_tensormap_get(io, "text_embeds"), "text_embeds");
    bt_check(hp, mmp_tensormap_get(io, "text_embeds_proj"), "text_embeds_proj");
    mmp_tensor_unref(h);
    mmp_tensor_unref(hp);
  }
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* ITM of (image, text) pairs: [ENC] first, cross-attention to all tokens */
  const mmp_tensor_t *pt = mmp_tensormap_get(io, "pairs.text");
  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "image_embeds", mmp_tensor_ref(mmp_tensormap_get(io, "pairs.image_embeds")));
  mmp_tensormap_set(in, "input_ids", rows(mmp_tensormap_get(io, "input_ids"), pt));
  mmp_tensormap_set(in, "attention_mask", rows(mmp_tensormap_get(io, "attention_mask"), pt));
  mmp_tensor_t *ids_before = mmp_clone(mmp_tensormap_get(in, "input_ids"));
  o = run("", "itm", in, "itm", NULL, 0);
  check_out(o, "itm_logits", io, "pairs.itm_logits", "itm_logits of 6 pairs");
  check_out(o, "multimodal_embeds", io, "pairs.multimodal_embeds", "multimodal_embeds of 6 pairs");
  {
    mmp_tensor_t *col = mmp_slice(mmp_tensormap_get(io, "pairs.itm_logits"), 1, 1, 2, 1);
    int64_t s1[1] = {6};
    mmp_tensor_t *want = col ? mmp_reshape(col, 1, s1) : NULL;
    bt_check(mmp_tensormap_get(o, "itm_score"), want, "itm_score = itm_logits[:, 1] (evaluation()'s score)");
    mmp_tensor_unref(col);
    mmp_tensor_unref(want);
  }
  ok(sd_relerr(mmp_tensormap_get(in, "input_ids"), ids_before) == 0, "the caller's input_ids are not written");
  mmp_tensor_unref(ids_before);
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* image_size 48 from a checkpoint at 32: the position grid interpolated */
  in = mmp_tensormap_new();
  mmp_tensormap_set(in, "pixel_values", mmp_tensor_ref(mmp_tensormap_get(io, "size48.pixel_values")));
  o = run("", "image", in, "image at 48x48", NULL, 0);
  check_out(o, "image_feat", io, "size48.image_feat",
            "image_feat at image_size 48 (load_checkpoint's interpolate_pos_embed)");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  in = mmp_tensormap_new();
  o = run("", "temp", in, "temp", NULL, 0);
  {
    int64_t at[1] = {0};
    mmp_tensor_t *t = mmp_tensormap_get(o, "temp");
    ok(t && fabs(mmp_tensor_get(t, at) - 0.07) < 1e-7, "temp is read (0.07)");
  }
  mmp_tensormap_free(o);
  {
    char err[4096];
    o = run("", "caption", in, NULL, err, sizeof err);
    like(err, "unknown method \"caption\"", "unknown methods are refused");
    mmp_tensormap_free(o);
    o = run("enc_token_id = 100000;", "text", in, NULL, err, sizeof err);
    like(err, "enc_token_id", "an [ENC] id outside the word table is a config error");
    mmp_tensormap_free(o);
    char cfg[8192];
    snprintf(cfg, sizeof cfg,
             "encoder = { name = \"blip_retrieval\"; config = "
             "\"%s/med_config.json\";"
             " weights = \"%s/model.pth\"; num_heads = 4; };",
             fxdir, fxdir);
    o = bt_run(cfg, "text", in, NULL, err, sizeof err);
    like(err, "no visual_encoder.patch_embed.proj.weight",
         "without weights_prefix = \"model.\" the tensors are not found, and "
         "the error names one");
    mmp_tensormap_free(o);
  }
  mmp_tensormap_free(in);
  test_itm_cache(io);
  test_tokenizer(io);
  mmp_tensormap_free(io);
  return done_testing();
}
