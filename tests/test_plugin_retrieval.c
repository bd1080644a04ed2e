/* tests/test_plugin_retrieval.c - the retrieval task against salesforce/BLIP
 * (tests/gen_blip_retrieval.py): evaluate mode reproduces evaluation()'s
 * score matrices (ITC top k_test re-ranked by itm + itc, -100 elsewhere)
 * and itm_eval()'s recalls from the raw annotation file and PNG images
 * (pre_caption, tokenizer, PIL bicubic, CLIP normalisation all in the
 * path); --itc-only; the index is reused and resumed; search mode ranks
 * text and image queries with the same scores and writes JSON and HTML;
 * the features task gives BLIP's image, text and multimodal embeddings;
 * JPEG files (features, evaluation, search) give BLIP's features of them. */
#include "config.h"

#include <dirent.h>
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blip_test.h"

static char fx[4096], tmp[4096];
static int64_t enc_id;

/* Run the task group "{ name = retrieval; @task_keys }" (or, when
 * @task_keys names the task, that one) with the fixture's components. */
static int run_cfg(const char *task_keys) {
  char text[16384];
  snprintf(text, sizeof text,
           "task = { %s%s };\n"
           "model = { name = \"blip_retrieval\"; config = \"%s/med_config.json\"; "
           "weights = \"%s/model.pth\";"
           " weights_prefix = \"model.\"; num_heads = 4; enc_token_id = %lld; };\n"
           "tokenizer = { name = \"bert_tokenizer\"; vocab = \"%s/vocab.txt\"; "
           "max_length = 35; pre_caption = 30; };\n"
           "image_processor = { name = \"image_resize\"; size = [32, 32]; "
           "interpolation = \"bicubic\";"
           " mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, "
           "0.26130258, 0.27577711]; };\n",
           strstr(task_keys, "name =") ? "" : "name = \"retrieval\"; ", task_keys, fx, fx, (long long)enc_id, fx);
  sd_env_t e;
  int rc = sd_env_open(&e, text);
  if (rc == 0) rc = mmp_context_run_task(e.ctx);
  if (rc) diag("%s", mmp_error_last());
  sd_env_close(&e);
  return rc;
}

static float *host(const mmp_tensor_t *t) {
  int64_t n = mmp_tensor_numel(t);
  float *p = malloc((size_t)n * sizeof *p);
  mmp_tensor_t *f = mmp_convert(t, MMP_F32);
  mmp_tensor_to_host(f, p, (size_t)n * sizeof *p);
  mmp_tensor_unref(f);
  return p;
}

static mmp_tensormap_t *load(const char *p) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) < 0) {
    diag("%s: %s", p, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

/* The top-10 order of each row of @s [r, c] equals @want (lists of ints). */
static bool same_top10(const float *s, int64_t r, int64_t c, const json_t *want) {
  for (int64_t i = 0; i < r; i++) {
    const float *row = s + i * c;
    bool used[128] = {false};
    for (int k = 0; k < 10; k++) {
      int64_t best = -1;
      for (int64_t j = 0; j < c; j++)
        if (!used[j] && (best < 0 || row[j] > row[best])) best = j;
      used[best] = true;
      if (best != json_integer_value(json_array_get(json_array_get(want, (size_t)i), (size_t)k))) {
        diag("row %lld place %d: %lld", (long long)i, k, (long long)best);
        return false;
      }
    }
  }
  return true;
}

static void check_metrics(const char *path, const json_t *want, const char *what) {
  json_t *got = json_load_file(path, 0, NULL);
  static const char *const keys[] = {"txt_r1", "txt_r5",  "txt_r10",    "txt_r_mean", "img_r1",
                                     "img_r5", "img_r10", "img_r_mean", "r_mean"};
  bool same = got != NULL;
  for (int i = 0; got && i < 9; i++) {
    double a = json_number_value(json_object_get(got, keys[i])), b = json_number_value(json_object_get(want, keys[i]));
    if (fabs(a - b) > 1e-9) {
      diag("%s: %.17g, BLIP %.17g", keys[i], a, b);
      same = false;
    }
  }
  ok(same, "%s: BLIP's itm_eval metrics (txt_r1 %.1f, img_r1 %.1f, r_mean %.4f)", what,
     json_number_value(json_object_get(want, "txt_r1")), json_number_value(json_object_get(want, "img_r1")),
     json_number_value(json_object_get(want, "r_mean")));
  json_decref(got);
}

static void check_scores(const char *path, const mmp_tensormap_t *io, const json_t *exp, bool itc) {
  mmp_tensormap_t *m = load(path);
  if (!ok(m != NULL, "scores saved")) return;
  bt_check(mmp_tensormap_get(m, "sims"), mmp_tensormap_get(io, "sims"), "ITC similarity matrix [20, 100]");
  if (!itc) {
    bt_check(mmp_tensormap_get(m, "score_i2t"), mmp_tensormap_get(io, "score_i2t"),
             "score_i2t: itm + itc for the top k_test = 16 texts, -100 elsewhere");
    bt_check(mmp_tensormap_get(m, "score_t2i"), mmp_tensormap_get(io, "score_t2i"),
             "score_t2i: itm + itc for the top k_test = 16 images, -100 elsewhere");
  }
  float *a = host(mmp_tensormap_get(m, "score_i2t")), *b = host(mmp_tensormap_get(m, "score_t2i"));
  ok(same_top10(a, 20, 100, json_object_get(exp, itc ? "itc_top10_i2t" : "top10_i2t")),
     "%s: each image's top-10 captions in BLIP's order", itc ? "ITC" : "ITM");
  ok(same_top10(b, 100, 20, json_object_get(exp, itc ? "itc_top10_t2i" : "top10_t2i")),
     "%s: each caption's top-10 images in BLIP's order", itc ? "ITC" : "ITM");
  free(a);
  free(b);
  mmp_tensormap_free(m);
}

/* @s as the inside of a libconfig string. */
static void cfg_escape(const char *s, char *out, size_t len) {
  size_t k = 0;
  for (; *s && k + 3 < len; s++) {
    if (*s == '\n') {
      out[k++] = '\\', out[k++] = 'n';
      continue;
    }
    if (*s == '"' || *s == '\\') out[k++] = '\\';
    out[k++] = *s;
  }
  out[k] = 0;
}

static const char *caption(const json_t *ann, size_t image, size_t k) {
  return json_string_value(json_array_get(json_object_get(json_array_get(ann, image), "caption"), k));
}

/* Rows @idx of @t. (transfer full) */
static mmp_tensor_t *rows(const mmp_tensor_t *t, const int64_t *idx, int n) {
  mmp_tensor_t *parts[8], *r;
  for (int i = 0; i < n; i++) parts[i] = mmp_slice((mmp_tensor_t *)t, 0, idx[i], idx[i] + 1, 1);
  r = mmp_concat(parts, n, 0);
  for (int i = 0; i < n; i++) mmp_tensor_unref(parts[i]);
  return r;
}

/* The features task on images 0, 0, 3 and captions 0, 1, 15 (the first
 * three ITM pairs of the fixture) against BLIP's tensors. */
static void test_features(const mmp_tensormap_t *io, const json_t *ann) {
  char keys[8192], c[3][512];
  cfg_escape(caption(ann, 0, 0), c[0], sizeof c[0]);
  cfg_escape(caption(ann, 0, 1), c[1], sizeof c[1]);
  cfg_escape(caption(ann, 3, 0), c[2], sizeof c[2]);
  snprintf(keys, sizeof keys,
           "name = \"features\"; images = [\"%s/images/img_00.png\", \"%s/images/img_00.png\","
           " \"%s/images/val2014/img_03.png\"]; texts = [\"%s\", \"%s\", \"%s\"]; multimodal = true; batch_size = 2;"
           " output = \"%s/features.safetensors\";",
           fx, fx, fx, c[0], c[1], c[2], tmp);
  ok(run_cfg(keys) == 0, "features: 3 images, 3 texts, multimodal pairs");
  char p[4200];
  snprintf(p, sizeof p, "%s/features.safetensors", tmp);
  mmp_tensormap_t *m = load(p);
  if (!ok(m != NULL, "features written")) return;
  static const int64_t im[3] = {0, 0, 3}, tx[3] = {0, 1, 15}, first[3] = {0, 1, 2};
  static const char *const img_keys[] = {"image_embeds", "image_embeds_proj", "image_feat"};
  for (int k = 0; k < 3; k++) {
    mmp_tensor_t *want = rows(mmp_tensormap_get(io, img_keys[k]), im, 3);
    bt_check(mmp_tensormap_get(m, img_keys[k]), want, img_keys[k]);
    mmp_tensor_unref(want);
  }
  mmp_tensor_t *want = rows(mmp_tensormap_get(io, "text_feat"), tx, 3);
  bt_check(mmp_tensormap_get(m, "text_feat"), want, "text_feat");
  mmp_tensor_unref(want);
  static const char *const txt_keys[] = {"text_embeds", "text_embeds_proj"};
  for (int k = 0; k < 2; k++) {
    mmp_tensor_t *got = rows(mmp_tensormap_get(m, txt_keys[k]), first, 2);
    mmp_tensor_t *w2 = rows(mmp_tensormap_get(io, txt_keys[k]), first, 2);
    bt_check(got, w2, txt_keys[k]);
    mmp_tensor_unref(got);
    mmp_tensor_unref(w2);
  }
  want = rows(mmp_tensormap_get(io, "pairs.multimodal_embeds"), first, 3);
  bt_check(mmp_tensormap_get(m, "multimodal_embeds"), want, "multimodal_embeds ([ENC], cross-attention)");
  mmp_tensor_unref(want);
  mmp_tensormap_free(m);
}

static int64_t image_index(const char *name) {
  const char *p = strstr(name, "img_");
  return p ? atoll(p + 4) : -1;
}

#ifdef HAVE_JPEG
/* s[i][j] of @got [r, c] is feat[i] . text_feat[tidx[j]] (BLIP's ITC of
 * JPEG image i and caption tidx[j]) within 1e-5. */
static bool same_itc(const float *got, int r, int c, const float *feat, const float *text_feat, const int64_t *tidx) {
  bool same = true;
  for (int i = 0; i < r; i++)
    for (int j = 0; j < c; j++) {
      double d = 0;
      for (int k = 0; k < 16; k++) d += (double)feat[i * 16 + k] * text_feat[tidx[j] * 16 + k];
      if (fabs(got[i * c + j] - d) > 1e-5) {
        diag("image %d text %lld: %g, BLIP %g", i, (long long)tidx[j], got[i * c + j], d);
        same = false;
      }
    }
  return same;
}

/* JPEG input (tests/gen_blip_retrieval_jpeg.py): the features task, an
 * evaluation image root and a search folder of JPEGs give what BLIP's code
 * gives for the same files (PIL's decoding, then its transform). */
static void test_jpeg(const mmp_tensormap_t *io, const json_t *ann) {
  char p[4200], keys[8192];
  snprintf(p, sizeof p, "%s/jpeg.safetensors", fx);
  mmp_tensormap_t *want = load(p);
  if (!ok(want != NULL, "JPEG fixtures")) return;
  snprintf(keys, sizeof keys,
           "name = \"features\"; images = [\"%s/jpeg/img_00.jpg\", \"%s/jpeg/img_03.jpg\", \"%s/jpeg/img_04.jpg\"];"
           " batch_size = 2; output = \"%s/features_jpeg.safetensors\";",
           fx, fx, fx, tmp);
  ok(run_cfg(keys) == 0, "features: 3 JPEGs (4:2:0, progressive 4:4:4, grey)");
  snprintf(p, sizeof p, "%s/features_jpeg.safetensors", tmp);
  mmp_tensormap_t *m = load(p);
  if (m) {
    bt_check(mmp_tensormap_get(m, "image_embeds"), mmp_tensormap_get(want, "jpeg.image_embeds"),
             "JPEG image_embeds (PIL's decoding, then BLIP's transform and ViT)");
    bt_check(mmp_tensormap_get(m, "image_feat"), mmp_tensormap_get(want, "jpeg.image_feat"), "JPEG image_feat");
    mmp_tensormap_free(m);
  } else {
    ok(false, "JPEG features written");
  }
  float *feat = host(mmp_tensormap_get(want, "jpeg.image_feat"));
  float *tf = host(mmp_tensormap_get(io, "text_feat"));

  /* evaluate with an image root of JPEGs: the ITC matrix */
  static const int64_t src[3] = {0, 3, 4};
  int64_t tidx[15];
  json_t *jann = json_array();
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "img_%02d.jpg", (int)src[i]);
    json_t *caps = json_deep_copy(json_object_get(json_array_get(ann, (size_t)src[i]), "caption"));
    json_array_append_new(jann, json_pack("{s:s, s:o}", "image", name, "caption", caps));
    for (int k = 0; k < 5; k++) tidx[i * 5 + k] = src[i] * 5 + k;
  }
  snprintf(p, sizeof p, "%s/jpeg.json", tmp);
  json_dump_file(jann, p, 0);
  json_decref(jann);
  snprintf(keys, sizeof keys,
           "mode = \"evaluate\"; annotation = \"%s\"; image_root = \"%s/jpeg\"; itc_only = true;"
           " output_json = \"%s/jpeg_eval.json\"; save_scores = \"%s/jpeg_scores.safetensors\";",
           p, fx, tmp, tmp);
  ok(run_cfg(keys) == 0, "evaluate: an image root of JPEGs");
  snprintf(p, sizeof p, "%s/jpeg_scores.safetensors", tmp);
  m = load(p);
  const mmp_tensor_t *sims = m ? mmp_tensormap_get(m, "sims") : NULL;
  float *S = sims && mmp_tensor_numel(sims) == 45 ? host(sims) : NULL;
  ok(S && same_itc(S, 3, 15, feat, tf, tidx), "JPEG evaluation: BLIP's ITC matrix [3, 15]");
  free(S);
  mmp_tensormap_free(m);

  /* search: a folder of JPEGs indexed, a JPEG image query */
  char q[512];
  cfg_escape(caption(ann, 3, 1), q, sizeof q);
  snprintf(keys, sizeof keys,
           "image_dir = \"%s/jpeg\"; queries = [\"%s\"]; top_k = 3; query_images = [\"%s/jpeg/img_03.jpg\"];"
           " captions = \"%s/captions.txt\"; output_json = \"%s/jpeg_search.json\";",
           fx, q, fx, tmp, tmp);
  ok(run_cfg(keys) == 0, "search: a folder of JPEGs, a JPEG image query");
  snprintf(p, sizeof p, "%s/jpeg_search.json", tmp);
  json_t *res = json_load_file(p, 0, NULL);
  json_t *r = json_object_get(json_array_get(json_object_get(res, "text_queries"), 0), "results");
  bool good = json_array_size(r) == 3;
  for (size_t k = 0; good && k < 3; k++) {
    json_t *e = json_array_get(r, k);
    const char *name = json_string_value(json_object_get(e, "image"));
    int64_t im = name ? image_index(name) : -1, row = im == 0 ? 0 : im == 3 ? 1 : im == 4 ? 2 : -1;
    float itc = (float)json_number_value(json_object_get(e, "itc"));
    good = row >= 0 && strstr(name, ".jpg") && same_itc(&itc, 1, 1, feat + row * 16, tf, (const int64_t[]){16});
  }
  ok(good, "text query over the JPEG folder: 3 .jpg results with BLIP's ITC");
  r = json_object_get(json_array_get(json_object_get(res, "image_queries"), 0), "results");
  good = json_array_size(r) == 3;
  for (size_t k = 0; good && k < 3; k++) {
    json_t *e = json_array_get(r, k);
    int64_t tx = json_integer_value(json_object_get(e, "index"));
    float itc = (float)json_number_value(json_object_get(e, "itc"));
    good = tx >= 0 && tx < 100 && same_itc(&itc, 1, 1, feat + 16, tf, &tx);
  }
  ok(good, "JPEG image query: the captions' ITC is BLIP's");
  json_decref(res);
  free(feat);
  free(tf);
  mmp_tensormap_free(want);
}
#endif

int main(void) {
  snprintf(fx, sizeof fx, "%s/tests/fixtures/blip_retrieval", tap_srcdir());
  char p[4200];
  snprintf(p, sizeof p, "%s/io.safetensors", fx);
  mmp_tensormap_t *io = load(p);
  if (!io) skip_all("fixtures missing");
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  bool have = mmp_registry_find(reg, MMP_KIND_TASK, "retrieval") &&
              mmp_registry_find(reg, MMP_KIND_PROCESSOR, "bert_tokenizer") &&
              mmp_registry_find(reg, MMP_KIND_PROCESSOR, "image_resize");
  mmp_registry_free(reg);
  if (!have) skip_all("needs the retrieval, bert_tokenizer and image_resize plugins");
  snprintf(p, sizeof p, "%s/vocab.txt", fx);
  FILE *vf = fopen(p, "r");
  char line[256];
  while (vf && fgets(line, sizeof line, vf)) enc_id++;
  if (vf) fclose(vf);
  enc_id += 1; /* [DEC], then [ENC] */
  snprintf(p, sizeof p, "%s/expected.json", fx);
  json_t *exp = json_load_file(p, 0, NULL);
  const char *t = getenv("TMPDIR");
  snprintf(tmp, sizeof tmp, "%s/mmp_retrieval_XXXXXX", t ? t : "/tmp");
  if (!mkdtemp(tmp)) skip_all("cannot make a temporary folder");

  char keys[8192], eval[4096];
  snprintf(eval, sizeof eval,
           "mode = \"evaluate\"; annotation = "
           "\"%s/annotation/coco_karpathy_test.json\"; image_root = \"%s/images\";"
           " k_test = 16; batch_size = 7; index = \"%s/index\"; shard_size = 8;",
           fx, fx, tmp);
  snprintf(keys, sizeof keys,
           "%s output_json = \"%s/eval.json\"; save_scores = "
           "\"%s/scores.safetensors\";",
           eval, tmp, tmp);
  ok(run_cfg(keys) == 0, "evaluate: 20 images, 100 captions, k_test 16");
  snprintf(p, sizeof p, "%s/eval.json", tmp);
  check_metrics(p, json_object_get(exp, "itm_eval"), "ITM re-ranked");
  snprintf(p, sizeof p, "%s/scores.safetensors", tmp);
  check_scores(p, io, exp, false);
  snprintf(p, sizeof p, "%s/index/part-00002.safetensors", tmp);
  struct stat sb;
  ok(stat(p, &sb) == 0, "the index holds 3 shards of 8 images");

  /* resume: a lost shard is encoded again, the others reused */
  unlink(p);
  snprintf(keys, sizeof keys,
           "%s output_json = \"%s/eval2.json\"; save_scores = "
           "\"%s/scores2.safetensors\";",
           eval, tmp, tmp);
  ok(run_cfg(keys) == 0, "evaluate again with the index (one shard deleted)");
  snprintf(p, sizeof p, "%s/eval2.json", tmp);
  check_metrics(p, json_object_get(exp, "itm_eval"), "from the resumed index");
  snprintf(p, sizeof p, "%s/index/part-00002.safetensors", tmp);
  ok(stat(p, &sb) == 0, "the deleted shard is written again");

  snprintf(keys, sizeof keys,
           "%s itc_only = true; output_json = \"%s/itc.json\"; save_scores = "
           "\"%s/itc.safetensors\";",
           eval, tmp, tmp);
  ok(run_cfg(keys) == 0, "evaluate with itc_only");
  snprintf(p, sizeof p, "%s/itc.json", tmp);
  check_metrics(p, json_object_get(exp, "itc_eval"), "ITC only");
  snprintf(p, sizeof p, "%s/itc.safetensors", tmp);
  check_scores(p, io, exp, true);

  /* an index built from other images is refused */
  snprintf(keys, sizeof keys,
           "image_dir = \"%s/images\"; index = \"%s/index\"; shard_size = 8; "
           "queries = [\"a dog\"];"
           " output_json = \"%s/x.json\";",
           fx, tmp, tmp);
  ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "built from other images"),
     "an index of other images is an error naming it");

  /* bad input: clear errors naming the file and the entry */
  {
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/bad.json", tmp);
    FILE *bf = fopen(bad, "w");
    fputs("[{\"image\": \"img_00.png\", \"caption\": [\"a dog\"]}, {\"image\": \"img_02.png\"}]", bf);
    fclose(bf);
    snprintf(keys, sizeof keys,
             "mode = \"evaluate\"; annotation = \"%s\"; image_root = \"%s/images\"; output_json = \"%s/b.json\";", bad,
             fx, tmp);
    ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "entry 1") && strstr(mmp_error_last(), "bad.json"),
       "an annotation entry without captions is an error naming the file and the entry");
    bf = fopen(bad, "w");
    fputs("[{\"image\": \"missing.png\", \"caption\": [\"a dog\"]}]", bf);
    fclose(bf);
    ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "missing.png"), "a missing image is an error naming it");
    bf = fopen(bad, "w");
    fputs("[{\"image\": \"img_00.png\", \"caption\": [\"a dog\"]},", bf);
    fclose(bf);
    ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "bad.json:1"), "broken JSON is an error with file and line");
    snprintf(keys, sizeof keys, "mode = \"evaluate\"; image_root = \"%s/images\";", fx);
    ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "annotation"), "evaluate without annotation is a config error");
    snprintf(keys, sizeof keys, "image_dir = \"%s/images\"; k_test = 0;", fx);
    ok(run_cfg(keys) != 0 && strstr(mmp_error_last(), "k_test"), "k_test = 0 is a config error");
  }

  /* search: the 10 images of images/ (not its val2014/), 2 text queries;
   * 2 image queries against the 100 captions */
  const mmp_tensor_t *t2i = mmp_tensormap_get(io, "score_t2i"), *i2t = mmp_tensormap_get(io, "score_i2t");
  const mmp_tensor_t *sims = mmp_tensormap_get(io, "sims");
  float *T2I = host(t2i), *I2T = host(i2t), *S = host(sims);
  snprintf(p, sizeof p, "%s/annotation/coco_karpathy_test.json", fx);
  json_t *ann = json_load_file(p, 0, NULL);
  char capf[4200];
  snprintf(capf, sizeof capf, "%s/captions.txt", tmp);
  FILE *cf = fopen(capf, "w");
  size_t ai, cj;
  json_t *a, *c;
  json_array_foreach(ann, ai, a) json_array_foreach(json_object_get(a, "caption"), cj, c) {
    const char *s = json_string_value(c);
    size_t l = strlen(s);
    while (l && s[l - 1] == '\n') l--;
    fprintf(cf, "%.*s\n", (int)l, s);
  }
  fclose(cf);
  char qesc[2][512];
  cfg_escape(caption(ann, 0, 1), qesc[0], sizeof qesc[0]);
  cfg_escape(caption(ann, 6, 3), qesc[1], sizeof qesc[1]);
  snprintf(keys, sizeof keys,
           "image_dir = \"%s/images\"; index = \"%s/search-index\"; queries = "
           "[\"%s\", \"%s\"]; top_k = 4; k_test = 16;"
           " query_images = [\"%s/images/img_00.png\", "
           "\"%s/images/val2014/img_03.png\"]; captions = \"%s\";"
           " output_json = \"%s/search.json\"; output_html = \"%s/search.html\";",
           fx, tmp, qesc[0], qesc[1], fx, fx, capf, tmp, tmp);
  ok(run_cfg(keys) == 0, "search: text and image queries");
  snprintf(p, sizeof p, "%s/search.json", tmp);
  json_t *res = json_load_file(p, 0, NULL);
  static const int64_t qtext[2] = {1, 33}, qimg[2] = {0, 3};
  bool all_ok = res != NULL, sorted = true;
  int compared = 0;
  for (int q = 0; res && q < 2; q++) {
    json_t *r = json_object_get(json_array_get(json_object_get(res, "text_queries"), (size_t)q), "results");
    all_ok = all_ok && json_array_size(r) == 4;
    double prev = INFINITY;
    for (size_t k = 0; k < json_array_size(r); k++) {
      json_t *e = json_array_get(r, k);
      int64_t im = image_index(json_string_value(json_object_get(e, "image")));
      double sc = json_number_value(json_object_get(e, "score")), itc = json_number_value(json_object_get(e, "itc"));
      sorted = sorted && sc <= prev;
      prev = sc;
      if (im < 0 || im % 2 || fabs(itc - S[im * 100 + qtext[q]]) > 1e-5) all_ok = false;
      float ref = T2I[qtext[q] * 20 + im];
      if (ref > -50) {
        compared++;
        if (fabs(sc - ref) > 1e-4 * (1 + fabs(ref)))
          all_ok = false, diag("text query %d image %lld: %g vs %g", q, (long long)im, sc, ref);
      }
    }
  }
  for (int q = 0; res && q < 2; q++) {
    json_t *r = json_object_get(json_array_get(json_object_get(res, "image_queries"), (size_t)q), "results");
    all_ok = all_ok && json_array_size(r) == 4;
    double prev = INFINITY;
    for (size_t k = 0; k < json_array_size(r); k++) {
      json_t *e = json_array_get(r, k);
      int64_t tx = json_integer_value(json_object_get(e, "index"));
      double sc = json_number_value(json_object_get(e, "score")), itc = json_number_value(json_object_get(e, "itc"));
      sorted = sorted && sc <= prev;
      prev = sc;
      if (tx < 0 || tx >= 100 || fabs(itc - S[qimg[q] * 100 + tx]) > 1e-5) all_ok = false;
      float ref = I2T[qimg[q] * 100 + tx];
      if (ref > -50) {
        compared++;
        if (fabs(sc - ref) > 1e-4 * (1 + fabs(ref)))
          all_ok = false, diag("image query %d text %lld: %g vs %g", q, (long long)tx, sc, ref);
      }
    }
  }
  ok(all_ok && compared >= 12, "search scores are BLIP's itm + itc and itc (%d compared)", compared);
  ok(sorted, "results are in descending score order");
  /* BLIP's top-1 caption of image 0 is the search's top-1 (k_test covers all of
   * BLIP's) */
  json_t *top = json_array_get(json_object_get(json_array_get(json_object_get(res, "image_queries"), 0), "results"), 0);
  is_int(json_integer_value(json_object_get(top, "index")),
         json_integer_value(json_array_get(json_array_get(json_object_get(exp, "top10_i2t"), 0), 0)),
         "image query img_00: the top caption is BLIP's");
  snprintf(p, sizeof p, "%s/search.html", tmp);
  char *html = NULL;
  size_t hl = 0;
  FILE *hf = fopen(p, "r");
  if (hf) {
    html = calloc(1, 1 << 20);
    hl = fread(html, 1, (1 << 20) - 1, hf);
    fclose(hf);
  }
  ok(html && hl > 0 && strstr(html, "<img src=\"file://") && strstr(html, "img_") && strstr(html, "</html>"),
     "the HTML page links the thumbnails");
  free(html);
  test_features(io, ann);
#ifdef HAVE_JPEG
  test_jpeg(io, ann);
#else
  diag("built without libjpeg: JPEG input not tested");
#endif
  json_decref(res);
  json_decref(ann);
  free(T2I);
  free(I2T);
  free(S);
  json_decref(exp);
  mmp_tensormap_free(io);
  char cmd[4300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0) diag("could not remove %s", tmp);
  return done_testing();
}
