/* tests/test_plugin_story.c - the story task against AR-LDM's own sample()
 * (fixtures from tests/gen_arldm.py: a tiny AR-LDM built from AR-LDM's
 * classes, one story, 4 steps at 32x32): for both tasks and both schedulers,
 * every frame's conditional and unconditional contexts and masks, initial
 * and final latents and uint8 image, read back from save_tensors. */
#include <sys/stat.h>

#include "sd_test.h"

#include "plugins/processors/imagecommon.h"

static const char *const SCHED[2] = {
    "scheduler = { name = \"ddim\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
    " clip_sample = false; set_alpha_to_one = true; steps_offset = 0; };",
    "scheduler = { name = \"pndm\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
    " skip_prk_steps = true; set_alpha_to_one = false; steps_offset = 0; };"};

static const char *g_extra = ""; /* more keys of the task group */
static const char *g_arldm = NULL; /* the task's `arldm` file (NULL: the fixture's) */
static const char *g_input = NULL; /* the task's `story_tensors` file (NULL: the fixture named) */

static int run_story(const char *task, int sched, const char *fixture, const char *outdir, bool replay) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/arldm", tap_srcdir());
  char arldm[4200], input[4400];
  snprintf(arldm, sizeof arldm, "%s/arldm_tiny.safetensors", fx);
  snprintf(input, sizeof input, "%s/%s", fx, fixture);
  snprintf(text, sizeof text,
           "task = { name = \"story\"; task = \"%s\"; arldm = \"%s\";\n"
           "  story_tensors = \"%s\"; width = 32; height = 32; steps = 4; guidance_scale = 6.0; seed = 7;\n"
           "  save_tensors = true; output_dir = \"%s\"; sample_output_dir = \"%s/samples\"; %s%s%s%s%s %s };\n"
           "text_encoder = { name = \"clip_text\"; config = \"%s/text_encoder/config.json\";"
           " weights = \"%s/arldm_tiny.safetensors\"; weights_prefix = \"text_encoder.\"; };\n"
           "mm_encoder = { name = \"blip\"; config = \"%s/med_config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; };\n"
           "blip_processor = { name = \"image_resize\"; size = [224, 224]; interpolation = \"bilinear\";"
           " mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };\n"
           "unet = { name = \"unet2d_condition\"; config = \"%s/unet/config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"unet.\"; };\n"
           "vae = { name = \"vae\"; config = \"%s/vae/config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"vae.\"; };\n%s\n",
           task, g_arldm ? g_arldm : arldm, g_input ? g_input : input, outdir, outdir, replay ? "writeback_from = \"" : "", replay ? fx : "", replay ? "/" : "",
           replay ? fixture : "", replay ? "\";" : "", g_extra, fx, fx, fx, fx, fx, fx, fx, fx, SCHED[sched]);
  return sd_run_task(text, "story-test", NULL);
}

/* row @b of @t [2, ...] as a tensor [1, ...] (transfer full) */
static mmp_tensor_t *half(mmp_tensor_t *t, int b) {
  mmp_tensor_t *s = t ? mmp_slice(t, 0, b, b + 1, 1) : NULL;
  mmp_tensor_t *c = s ? mmp_contiguous(s) : NULL;
  mmp_tensor_unref(s);
  return c;
}

static double max_abs_diff(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || mmp_tensor_numel(a) != mmp_tensor_numel(b)) return -1;
  int64_t n = mmp_tensor_numel(a);
  mmp_tensor_t *fa = mmp_convert(a, MMP_F32), *fb = mmp_convert(b, MMP_F32);
  float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
  double m = -1;
  if (x && y && fa && fb && mmp_tensor_to_host(fa, x, (size_t)n * 4) == 0 && mmp_tensor_to_host(fb, y, (size_t)n * 4) == 0) {
    m = 0;
    for (int64_t i = 0; i < n; i++)
      if (fabs((double)x[i] - y[i]) > m) m = fabs((double)x[i] - y[i]);
  }
  free(x);
  free(y);
  mmp_tensor_unref(fa);
  mmp_tensor_unref(fb);
  return m;
}

/* @replay: the reference frames are written back (teacher forcing), so every
 * frame is compared under the same conditions; free-running, a 1/255
 * rounding flip in a fed-back frame moves the later frames' contexts by
 * ~5e-4: then frame 0 is held to the strict bounds and all images to 2/255. */
static void check(const char *task, int sched, bool replay) {
  const char *sn = sched ? "pndm" : "ddim";
  char fixture[128], outdir[4096], path[4200];
  snprintf(fixture, sizeof fixture, "story_%s_%s.safetensors", task, sn);
  const char *tmp = getenv("TMPDIR");
  snprintf(outdir, sizeof outdir, "%s/story_test_%d_%s_%s", tmp ? tmp : "/tmp", (int)getpid(), task, sn);
  char rel[160];
  snprintf(rel, sizeof rel, "../arldm/%s", fixture);
  mmp_tensormap_t *ref = sd_load(rel);
  const char *mode = replay ? "replay" : "free";
  if (!ok(run_story(task, sched, fixture, outdir, replay) == 0, "%s %s %s: the story task runs", task, sn, mode) || !ref) {
    mmp_tensormap_free(ref);
    return;
  }
  snprintf(path, sizeof path, "%s/story_tensors.safetensors", outdir);
  mmp_tensormap_t *got = mmp_tensormap_new();
  ok(mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, got) == 0, "%s %s: story_tensors.safetensors", task, sn);
  int V = strcmp(task, "continuation") ? 5 : 4;
  double ectx = 0, emask = 0, elat0 = 0, elat1 = 0, eimg = 0;
  for (int f = 0; f < V; f++) {
    char k[96];
    mmp_tensor_t *c, *m, *g;
    snprintf(k, sizeof k, "frame%d.context", f);
    c = mmp_tensormap_get(ref, k);
    snprintf(k, sizeof k, "frame%d.mask", f);
    m = mmp_tensormap_get(ref, k);
    static const char *const parts[4] = {"uncond_context", "context", "uncond_mask", "mask"};
    for (int p = 0; p < 4; p++) {
      snprintf(k, sizeof k, "story0.frame%d.%s", f, parts[p]);
      g = mmp_tensormap_get(got, k);
      mmp_tensor_t *w = half(p < 2 ? c : m, p % 2);
      double e = p < 2 ? sd_relerr(g, w) : max_abs_diff(g, w);
      if (e < 0) e = INFINITY;
      if (p < 2 && e > ectx && (replay || f == 0)) ectx = e;
      if (p >= 2 && e > emask) emask = e;
      mmp_tensor_unref(w);
    }
    snprintf(k, sizeof k, "frame%d.latents_initial", f);
    mmp_tensor_t *w0 = mmp_tensormap_get(ref, k);
    snprintf(k, sizeof k, "frame%d.latents_final", f);
    mmp_tensor_t *w1 = mmp_tensormap_get(ref, k);
    snprintf(k, sizeof k, "frame%d.image", f);
    mmp_tensor_t *wi = mmp_tensormap_get(ref, k);
    snprintf(k, sizeof k, "story0.frame%d.latents_initial", f);
    double e0 = sd_relerr(mmp_tensormap_get(got, k), w0);
    snprintf(k, sizeof k, "story0.frame%d.latents_final", f);
    double e1 = sd_relerr(mmp_tensormap_get(got, k), w1);
    snprintf(k, sizeof k, "story0.frame%d.image", f);
    double ei = max_abs_diff(mmp_tensormap_get(got, k), wi);
    if (getenv("STORY_VERBOSE")) diag("    frame %d: latents %.2g, image %g", f, e1, ei);
    elat0 = e0 < 0 || e0 > elat0 ? (e0 < 0 ? INFINITY : e0) : elat0;
    if (replay || f == 0) elat1 = e1 < 0 || e1 > elat1 ? (e1 < 0 ? INFINITY : e1) : elat1;
    eimg = ei < 0 || ei > eimg ? (ei < 0 ? INFINITY : ei) : eimg;
  }
  const char *which = replay ? "every frame" : "frame 0";
  ok(ectx <= 1e-5, "%s %s %s: contexts (both halves, %s) within 1e-5 relative", task, sn, mode, which);
  ok(emask == 0, "%s %s %s: masks identical", task, sn, mode);
  ok(elat0 == 0, "%s %s %s: initial latents identical (torch generator, frame by frame)", task, sn, mode);
  ok(elat1 <= 1e-4, "%s %s %s: final latents (%s) within 1e-4 relative", task, sn, mode, which);
  ok(eimg <= 2, "%s %s %s: images (every frame) within 2/255", task, sn, mode);
  diag("  %s %s %s: context %.2g, mask %g, latents %.2g / %.2g, image %g/255", task, sn, mode, ectx, emask, elat0, elat1,
       eimg);
  mmp_tensormap_free(got);
  mmp_tensormap_free(ref);
  if (!replay && sched == 0) {
    /* the outputs: frames, AR-LDM's numbering, strip, contact sheet, run.json */
    static const char *const files[] = {"story00000/frame1.png", "story00000/frame4.png", "story00000/strip.png",
                                        "index.html", "run.json", "samples/0000.png", NULL};
    for (int k = 0; files[k]; k++) {
      snprintf(path, sizeof path, "%s/%s", outdir, files[k]);
      ok(access(path, F_OK) == 0, "%s: writes %s", task, files[k]);
    }
    snprintf(path, sizeof path, "%s/samples/%04d.png", outdir, V - 1);
    ok(access(path, F_OK) == 0, "%s: sample_output_dir numbering up to %04d", task, V - 1);
    snprintf(path, sizeof path, "%s/samples/%04d.png", outdir, V);
    ok(access(path, F_OK) != 0, "%s: and no further", task);
    /* a rerun skips the complete story: run.json records no frame time */
    ok(run_story(task, sched, fixture, outdir, false) == 0, "%s: rerun", task);
    snprintf(path, sizeof path, "%s/run.json", outdir);
    FILE *f = fopen(path, "r");
    char buf[4096] = "";
    size_t nr = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[nr] = 0;
    if (f) fclose(f);
    like(buf, "[null, null, null, null", "%s: the rerun skipped the complete story (frame_seconds null)", task);
    like(buf, "\"scheduler\": \"ddim\"", "%s: run.json records the scheduler", task);
    /* stories = "1:" leaves the only story out */
    char cmd0[4400], d2[4200];
    snprintf(d2, sizeof d2, "%s_range", outdir);
    g_extra = "stories = \"1:\";";
    ok(run_story(task, sched, fixture, d2, false) == 0, "%s: stories = \"1:\" runs", task);
    g_extra = "";
    snprintf(path, sizeof path, "%s/story00000", d2);
    ok(access(path, F_OK) != 0, "%s: and draws nothing of story 0", task);
    snprintf(cmd0, sizeof cmd0, "rm -rf '%s'", d2);
    if (system(cmd0) != 0) diag("could not remove %s", d2);
  }
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", outdir);
  if (system(cmd) != 0) diag("could not remove %s", outdir);
}

/* Bad stories are refused with a clear message before any model is loaded. */
static void check_bad_input(void) {
  const char *tmp = getenv("TMPDIR");
  char dir[4096], js[4200], text[16384], fx[4096];
  snprintf(fx, sizeof fx, "%s/tests/fixtures", tap_srcdir());
  snprintf(dir, sizeof dir, "%s/story_bad_%d", tmp ? tmp : "/tmp", (int)getpid());
  mkdir(dir, 0777);
  snprintf(js, sizeof js, "%s/stories.json", dir);
  static const struct {
    const char *task, *json, *want;
  } cases[] = {
      {"visualization", "[{\"captions\": [\"a\", \"b\", \"c\", \"d\"]}]", "story 0 has 4 captions, a story needs five"},
      {"continuation", "[{\"captions\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}]", "story 0 has no first_image"},
      {"visualization",
       "[{\"captions\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}, {\"captions\": [\"a\", \"b\", \"c\", \"d\","
       " \"a red cat sitting on the mat with two dogs running\"]}]",
       "clip_tokenizer"},
      {"visualization", "{\"captions\": []}", "expected a non-empty array of stories"},
      {"visualization", "[{\"captions\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}]",
       "clip_tokenizer has 914 tokens but the checkpoint's text_encoder.text_model.embeddings.token_embedding.weight has 44 rows"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    FILE *f = fopen(js, "w");
    if (f) {
      fputs(cases[k].json, f);
      fclose(f);
    }
    snprintf(text, sizeof text,
             "task = { name = \"story\"; task = \"%s\"; arldm = \"%s/arldm/arldm_tiny.safetensors\";\n"
             "  stories_file = \"%s\"; width = 32; height = 32; steps = 1; output_dir = \"%s/out\"; };\n"
             "clip_tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s/sd/pipe/tokenizer\"; max_length = 8;"
             " truncation = false; };\n"
             "text_encoder = { name = \"clip_text\"; config = \"%s/arldm/text_encoder/config.json\"; weights = \"/nonexistent\"; };\n",
             cases[k].task, fx, js, dir, fx, fx);
    mmp_registry_t *reg = mmp_registry_new();
    sd_env_add_dirs(reg);
    mmp_config_t *cfg = mmp_config_parse(text, "story-bad");
    mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
    if (ctx) mmp_context_set_progress(ctx, false);
    int rc = ctx ? mmp_context_run_task(ctx) : 0;
    ok(rc < 0, "bad stories file %zu refused", k);
    like(mmp_error_last(), cases[k].want, "  with a clear message");
    diag("  %s", mmp_error_last());
    mmp_context_free(ctx);
    mmp_config_free(cfg);
    mmp_registry_free(reg);
  }
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) diag("could not remove %s", dir);
}

/* An AR-LDM file whose extras do not fit: each refused with a message naming
 * the tensors and their shapes, before any drawing. */
static void check_bad_tables(void) {
  static const struct {
    const char *name;
    int ndim;
    int64_t shape[4];
    mmp_dtype_t dt;
    const char *want;
  } cases[] = {
      {"time_embeddings.weight", 2, {5, 16}, MMP_F32,
       "time_embeddings.weight is f32[5, 16], expected [>= 5, 32] (the width D of modal_type_embeddings.weight f32[2, 32])"},
      {"time_embeddings.weight", 2, {4, 32}, MMP_F32, "time_embeddings.weight is f32[4, 32], expected [>= 5, 32]"},
      {"modal_type_embeddings.weight", 2, {3, 32}, MMP_F32, "modal_type_embeddings.weight is f32[3, 32], expected [2, D]"},
      {"modal_type_embeddings.weight", 2, {2, 16}, MMP_F32,
       "time_embeddings.weight is f32[5, 32], expected [>= 5, 16] (the width D of modal_type_embeddings.weight f32[2, 16])"},
      {"blip_text_null_token", 2, {1, 7}, MMP_I64,
       "clip_text_null_token is i64[1, 8] and blip_text_null_token i64[1, 7], both must be [1, S]"},
      {"blip_image_null_token", 3, {3, 224, 224}, MMP_F32, "blip_image_null_token is f32[3, 224, 224], expected [1, 3, H, W]"},
  };
  const char *tmp = getenv("TMPDIR");
  char dir[4096], path[4200], src[4200], outdir[4300];
  snprintf(dir, sizeof dir, "%s/story_tables_%d", tmp ? tmp : "/tmp", (int)getpid());
  mkdir(dir, 0777);
  snprintf(path, sizeof path, "%s/arldm.safetensors", dir);
  snprintf(outdir, sizeof outdir, "%s/out", dir);
  snprintf(src, sizeof src, "%s/tests/fixtures/arldm/arldm_tiny.safetensors", tap_srcdir());
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    mmp_tensormap_t *m = mmp_tensormap_new();
    mmp_safetensors_load_map(src, mmp_backend_get("cpu"), false, m);
    mmp_tensormap_set(m, cases[k].name, mmp_tensor_full(mmp_backend_get("cpu"), cases[k].dt, cases[k].ndim, cases[k].shape, 0.5));
    ok(mmp_safetensors_save_map(path, m, NULL) == 0, "bad tables %zu: %s written", k, cases[k].name);
    mmp_tensormap_free(m);
    g_arldm = path;
    ok(run_story("visualization", 0, "story_visualization_ddim.safetensors", outdir, false) < 0, "  refused");
    g_arldm = NULL;
    like(mmp_error_last(), cases[k].want, "  naming the tensors and shapes");
    ok(access(outdir, F_OK) != 0, "  before any output (no output_dir made)");
  }
  /* stories as tensors with ids the checkpoint's tables cannot take, or
   * not integers: refused before any model loads, naming story, frame and
   * token */
  static const struct {
    const char *name;
    int64_t frame, token, id;
    bool f32;
    const char *want;
  } ins[] = {
      {"captions", 2, 3, 60, false,
       "captions[story 0, frame 2, token 3] = 60 is outside the checkpoint's CLIP token table of 44 rows"},
      {"blip_captions", 1, 2, 77, false,
       "blip_captions[story 0, frame 1, token 2] = 77 is outside the checkpoint's BLIP token table of 52 rows"},
      {"captions", 0, 0, 0, true, "\"captions\" must hold integer token ids (i64 or i32), not f32"},
  };
  snprintf(src, sizeof src, "%s/tests/fixtures/arldm/story_visualization_ddim.safetensors", tap_srcdir());
  snprintf(path, sizeof path, "%s/stories.safetensors", dir);
  for (size_t k = 0; k < sizeof ins / sizeof ins[0]; k++) {
    mmp_tensormap_t *m = mmp_tensormap_new();
    mmp_safetensors_load_map(src, mmp_backend_get("cpu"), false, m);
    mmp_tensor_t *t = mmp_tensormap_get(m, ins[k].name);
    if (t && ins[k].f32) {
      mmp_tensormap_set(m, ins[k].name, mmp_convert(t, MMP_F32));
    } else if (t && t->dtype == MMP_I64) { /* story 0 of i64 [1, 5, S]; the file's tensors are read-only */
      int64_t n = mmp_tensor_numel(t), *ids = malloc((size_t)n * sizeof *ids);
      if (ids && mmp_tensor_to_host(t, ids, (size_t)n * sizeof *ids) == 0) {
        ids[ins[k].frame * t->shape[2] + ins[k].token] = ins[k].id;
        mmp_tensormap_set(m, ins[k].name, mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, t->ndim, t->shape, ids));
      }
      free(ids);
    }
    ok(t && mmp_safetensors_save_map(path, m, NULL) == 0, "bad story tensors %zu written", k);
    mmp_tensormap_free(m);
    g_input = path;
    ok(run_story("visualization", 0, "story_visualization_ddim.safetensors", outdir, false) < 0, "  refused");
    g_input = NULL;
    like(mmp_error_last(), ins[k].want, "  naming the tensor, story, frame and token");
    ok(access(outdir, F_OK) != 0, "  before any output (no output_dir made)");
  }
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) diag("could not remove %s", dir);
}

/* batch_size = 2 on two copies of the story: frame 0 of story 0 draws the
 * first half of randn([2, ...]), which is torch's randn([1, ...]) (blocks of
 * 16), so it must equal the one-story reference; story 1 shares its context. */
static void check_batch(void) {
  mmp_tensormap_t *ref = sd_load("../arldm/story_visualization_ddim.safetensors");
  if (!ok(ref != NULL, "batch: fixture")) return;
  const char *tmp = getenv("TMPDIR");
  char in2[4200], outdir[4200], path[4400];
  snprintf(outdir, sizeof outdir, "%s/story_batch_%d", tmp ? tmp : "/tmp", (int)getpid());
  mkdir(outdir, 0777);
  snprintf(in2, sizeof in2, "%s/two.safetensors", outdir);
  static const char *const names[5] = {"captions", "caption_mask", "blip_captions", "blip_mask", "frames"};
  mmp_tensormap_t *two = mmp_tensormap_new();
  mmp_tensormap_t *raw = mmp_tensormap_new();
  char src[4200];
  snprintf(src, sizeof src, "%s/tests/fixtures/arldm/story_visualization_ddim.safetensors", tap_srcdir());
  mmp_safetensors_load_map(src, mmp_backend_get("cpu"), false, raw);
  for (int k = 0; k < 5; k++) {
    mmp_tensor_t *t = mmp_tensormap_get(raw, names[k]);
    mmp_tensor_t *pair[2] = {t, t};
    mmp_tensormap_set(two, names[k], t ? mmp_concat(pair, 2, 0) : NULL);
  }
  ok(mmp_safetensors_save_map(in2, two, NULL) == 0, "batch: two copies of the story written");
  mmp_tensormap_free(two);
  mmp_tensormap_free(raw);
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/arldm", tap_srcdir());
  snprintf(text, sizeof text,
           "task = { name = \"story\"; arldm = \"%s/arldm_tiny.safetensors\"; story_tensors = \"%s\";\n"
           "  width = 32; height = 32; steps = 4; seed = 7; batch_size = 2; save_tensors = true; output_dir = \"%s\"; };\n"
           "text_encoder = { name = \"clip_text\"; config = \"%s/text_encoder/config.json\";"
           " weights = \"%s/arldm_tiny.safetensors\"; weights_prefix = \"text_encoder.\"; };\n"
           "mm_encoder = { name = \"blip\"; config = \"%s/med_config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; };\n"
           "blip_processor = { name = \"image_resize\"; size = [224, 224];"
           " mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };\n"
           "unet = { name = \"unet2d_condition\"; config = \"%s/unet/config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"unet.\"; };\n"
           "vae = { name = \"vae\"; config = \"%s/vae/config.json\"; weights = \"%s/arldm_tiny.safetensors\"; weights_prefix = \"vae.\"; };\n%s\n",
           fx, in2, outdir, fx, fx, fx, fx, fx, fx, fx, fx, SCHED[0]);
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  mmp_config_t *cfg = mmp_config_parse(text, "story-batch");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  if (ctx) mmp_context_set_progress(ctx, false);
  int rc = ctx ? mmp_context_run_task(ctx) : -1;
  if (!ok(rc == 0, "batch: two stories denoised together")) diag("%s", mmp_error_last());
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  snprintf(path, sizeof path, "%s/story_tensors.safetensors", outdir);
  mmp_tensormap_t *got = mmp_tensormap_new();
  mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, got);
  mmp_tensor_t *c0 = half(mmp_tensormap_get(ref, "frame0.context"), 1);
  double e = sd_relerr(mmp_tensormap_get(got, "story0.frame0.context"), c0);
  ok(e >= 0 && e <= 1e-5, "batch: story 0 frame 0 context as the one-story reference (%.2g)", e);
  e = sd_relerr(mmp_tensormap_get(got, "story1.frame0.context"), c0);
  ok(e >= 0 && e <= 1e-5, "batch: story 1 (the same story) shares it (%.2g)", e);
  mmp_tensor_unref(c0);
  e = sd_relerr(mmp_tensormap_get(got, "story0.frame0.latents_initial"), mmp_tensormap_get(ref, "frame0.latents_initial"));
  ok(e == 0, "batch: story 0 frame 0 initial latents = the first half of randn([2, ...])");
  e = sd_relerr(mmp_tensormap_get(got, "story0.frame0.latents_final"), mmp_tensormap_get(ref, "frame0.latents_final"));
  ok(e >= 0 && e <= 1e-4, "batch: story 0 frame 0 final latents within 1e-4 (%.2g)", e);
  e = max_abs_diff(mmp_tensormap_get(got, "story0.frame0.image"), mmp_tensormap_get(ref, "frame0.image"));
  ok(e >= 0 && e <= 2, "batch: story 0 frame 0 image within 2/255 (%g)", e);
  e = sd_relerr(mmp_tensormap_get(got, "story1.frame0.latents_initial"), mmp_tensormap_get(got, "story0.frame0.latents_initial"));
  ok(e > 0.1, "batch: story 1 draws its own noise");
  snprintf(path, sizeof path, "%s/story00001/strip.png", outdir);
  ok(access(path, F_OK) == 0, "batch: both stories written");
  mmp_tensormap_free(got);
  mmp_tensormap_free(ref);
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", outdir);
  if (system(cmd) != 0) diag("could not remove %s", outdir);
}

/* Stories from a dataset plugin (the `dataset` group), reached through the
 * registry: the checks that run before any model loads. The dataset
 * fixtures hold real captions tokenized with the real CLIP/BERT vocabularies
 * (ids up to 49416, S = 85), which the tiny AR-LDM (S = 8, tables of 44 and
 * 52 rows) cannot take: these runs must stop with the messages below. */
/* the build tree's dataset plugins */
static const char *dataset_dir(void) {
  static char d[4200];
  const char *b = getenv("MMP_TEST_BUILDDIR");
  snprintf(d, sizeof d, "%s/plugins/datasets/.libs", b ? b : ".");
  return d;
}

static int run_story_ds(const char *task, const char *ds) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/arldm", tap_srcdir());
  snprintf(text, sizeof text,
           "task = { name = \"story\"; task = \"%s\"; arldm = \"%s/arldm_tiny.safetensors\"; width = 32; height = 32;"
           " steps = 1; output_dir = \"/nonexistent/story_ds_never_written\"; %s };\n%s\n",
           task, fx, g_extra, ds);
  return sd_run_task(text, "story-ds-test", dataset_dir());
}

static void check_dataset(void) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  mmp_registry_add_dir(reg, dataset_dir());
  bool have = mmp_registry_find(reg, MMP_KIND_DATASET, "pororo") != NULL;
  mmp_registry_free(reg);
  mmp_error_clear();
  char shared[4096], probe[4200], ds[16384];
  snprintf(shared, sizeof shared, "%s", tap_shared_data());
  snprintf(probe, sizeof probe, "%s/clip/vocab.json", shared);
  if (!have || access(probe, F_OK) != 0) {
    ok(1, "dataset # SKIP needs the pororo plugin (libhdf5) and the shared vocabularies");
    return;
  }
  const char *dsfmt = "dataset = { name = \"pororo\"; hdf5_file = \"%s/tests/fixtures/datasets/pororo.h5\"; split = \"test\";"
                      " task = \"%s\"; frame_index = 0; %s };";
  char tok[9000];
  snprintf(tok, sizeof tok,
           "clip_vocab = \"%s/clip/vocab.json\"; clip_merges = \"%s/clip/merges.txt\"; bert_vocab = \"%s/bert/vocab.txt\";",
           shared, shared, shared);
  /* both story_tensors and a dataset */
  g_extra = "story_tensors = \"x.safetensors\";";
  snprintf(ds, sizeof ds, dsfmt, tap_srcdir(), "visualization", tok);
  ok(run_story_ds("visualization", ds) < 0, "dataset and story_tensors together are refused");
  like(mmp_error_last(), "exactly one of story_tensors, stories_file and a dataset group", "  naming the three sources");
  g_extra = "";
  /* no vocabularies: the dataset gives no token ids */
  snprintf(ds, sizeof ds, dsfmt, tap_srcdir(), "visualization", "");
  ok(run_story_ds("visualization", ds) < 0, "a dataset without tokenizer vocabularies is refused");
  like(mmp_error_last(), "dataset item 0 has no CLIP captions", "  with a message naming the missing captions");
  /* S of the dataset (max_length 85) against the checkpoint's 8 */
  snprintf(ds, sizeof ds, dsfmt, tap_srcdir(), "visualization", tok);
  ok(run_story_ds("visualization", ds) < 0, "the dataset's S = 85 against the checkpoint's S = 8 is refused");
  like(mmp_error_last(), "captions have 85 tokens, the AR-LDM file's S is 8 (set the dataset's max_length = 8)",
       "  with a message naming both lengths");
  /* the dataset's task must give the story task's targets */
  snprintf(ds, sizeof ds, dsfmt, tap_srcdir(), "visualization", tok);
  ok(run_story_ds("continuation", ds) < 0, "a visualization dataset for a continuation run is refused");
  like(mmp_error_last(), "has 5 target captions, continuation needs 4", "  with a message naming the dataset's task");
  /* max_length = 8: the fixture's captions are longer (AR-LDM's
   * truncation=False), the dataset's own error comes through the task */
  char tok2[9200];
  snprintf(tok2, sizeof tok2, "%s max_length = 8;", tok);
  snprintf(ds, sizeof ds, dsfmt, tap_srcdir(), "visualization", tok2);
  ok(run_story_ds("visualization", ds) < 0, "the dataset with max_length = 8 is refused");
  like(mmp_error_last(), "story: dataset item 0: ", "  the dataset's error names the item");
  like(mmp_error_last(), "max_length 8", "  and the dataset's max_length");
}

/* rows [a, a + n) of @t as a contiguous tensor (transfer full) */
static mmp_tensor_t *rows(mmp_tensor_t *t, int64_t a, int64_t n) {
  mmp_tensor_t *s = t ? mmp_slice(t, 0, a, a + n, 1) : NULL;
  mmp_tensor_t *c = s ? mmp_contiguous(s) : NULL;
  mmp_tensor_unref(s);
  return c;
}

/* A drawing run from a dataset: the tiny pororo-layout story file of
 * tests/gen_arldm.py (two stories, captions in a tiny vocabulary that fits
 * the tiny AR-LDM's tables), read by the pororo plugin with the tiny
 * tokenizers, two stories in one batch, against ARLDM.sample() on the same
 * stories read by AR-LDM's own datasets/pororo.py. @replay: the reference
 * frames written back (every frame held to the strict bounds). */
static int run_story_dataset(const char *task, const char *outdir, bool replay) {
  char fx[4096], text[20000];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/arldm", tap_srcdir());
  snprintf(text, sizeof text,
           "task = { name = \"story\"; task = \"%s\"; arldm = \"%s/arldm_tiny.safetensors\";\n"
           "  width = 32; height = 32; steps = 4; guidance_scale = 6.0; seed = 7; batch_size = 2;\n"
           "  save_tensors = true; output_dir = \"%s\"; %s%s%s%s };\n"
           "dataset = { name = \"pororo\"; hdf5_file = \"%s/story_ds.h5\"; split = \"test\"; task = \"%s\"; max_length = 8;\n"
           "  new_tokens = [\"pororo\", \"loopy\", \"eddy\", \"crong\"]; clip_vocab = \"%s/tok/vocab.json\";\n"
           "  clip_merges = \"%s/tok/merges.txt\"; bert_vocab = \"%s/tok/vocab.txt\"; };\n"
           "text_encoder = { name = \"clip_text\"; config = \"%s/text_encoder/config.json\";"
           " weights = \"%s/arldm_tiny.safetensors\"; weights_prefix = \"text_encoder.\"; };\n"
           "mm_encoder = { name = \"blip\"; config = \"%s/med_config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; };\n"
           "blip_processor = { name = \"image_resize\"; size = [224, 224]; interpolation = \"bilinear\";"
           " mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };\n"
           "unet = { name = \"unet2d_condition\"; config = \"%s/unet/config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"unet.\"; };\n"
           "vae = { name = \"vae\"; config = \"%s/vae/config.json\"; weights = \"%s/arldm_tiny.safetensors\";"
           " weights_prefix = \"vae.\"; };\n%s\n",
           task, fx, outdir, replay ? "writeback_from = \"" : "", replay ? fx : "",
           replay ? (strcmp(task, "continuation") ? "/story_dataset_visualization.safetensors" : "/story_dataset_continuation.safetensors") : "",
           replay ? "\";" : "", fx, task, fx, fx, fx, fx, fx, fx, fx, fx, fx, fx, fx, SCHED[0]);
  return sd_run_task(text, "story-dataset-test", dataset_dir());
}

/* cell (@row, @col) of a 5 x 2 strip of @w x @h frames as u8 [1, h, w, 3]
 * (transfer full) */
static mmp_tensor_t *strip_cell(const char *path, int row, int col, int w, int h) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
  fclose(f);
  mmp_image_t im = {0};
  mmp_tensor_t *t = NULL;
  if (buf && mmp_image_png_decode(buf, n, false, &im) == 0 && im.w == 5 * w && im.h == 2 * h && im.c == 3) {
    uint8_t *cell = malloc((size_t)(w * h * 3));
    for (int y = 0; cell && y < h; y++)
      memcpy(cell + (size_t)y * w * 3, im.data + ((size_t)(row * h + y) * im.w + (size_t)col * w) * 3, (size_t)w * 3);
    int64_t shape[4] = {1, h, w, 3};
    if (cell) t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, shape, cell);
    free(cell);
  }
  mmp_image_clear(&im);
  free(buf);
  return t;
}

/* The whole text of file @path (transfer full; NULL when unreadable). */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  fclose(f);
  if (buf) buf[n] = '\0';
  return buf;
}

/* After a dataset run into @outdir: each frame's PNG records its caption (the
 * one the pororo plugin gives for that story and frame), the contact sheet
 * shows it under the frame, and a caption with markup characters and UTF-8
 * (written into a frame's PNG as iTXt) is shown as text by the next run's
 * contact sheet, which a resumed run rewrites from the frames on disk. */
static void check_captions(const char *task, const char *outdir, int V, int B) {
  char text[4096], path[4400];
  snprintf(text, sizeof text,
           "dataset = { name = \"pororo\"; hdf5_file = \"%s/tests/fixtures/arldm/story_ds.h5\"; split = \"test\"; task = \"%s\"; };\n",
           tap_srcdir(), task);
  sd_env_t e;
  mmp_component_t *ds = NULL;
  if (sd_env_open(&e, text) == 0) {
    mmp_registry_add_dir(e.reg, dataset_dir());
    ds = mmp_component_create(e.ctx, MMP_KIND_DATASET, "dataset");
  }
  char *index = NULL;
  snprintf(path, sizeof path, "%s/index.html", outdir);
  index = slurp(path);
  int good = 0, shown = 0;
  for (int b = 0; ds && b < B; b++) {
    mmp_tensormap_t *it = mmp_tensormap_new();
    if (((const mmp_dataset_ops_t *)ds->plugin)->get(ds->self, b, it) == 0)
      for (int f = 5 - V; f < 5; f++) {
        char key[16], *cap = NULL;
        snprintf(key, sizeof key, "caption%d", f);
        const char *want = mmp_tensormap_get_string(it, key);
        snprintf(path, sizeof path, "%s/story%05d/frame%d.png", outdir, b, f);
        if (mmp_image_png_file_text(path, "caption", &cap) == 1 && want && strcmp(cap, want) == 0) good++;
        else diag("  story %d frame %d: PNG caption '%s', the dataset's '%s'", b, f, cap ? cap : "(none)", want ? want : "(none)");
        if (want && index && strstr(index, want)) shown++;
        free(cap);
      }
    mmp_tensormap_free(it);
  }
  ok(good == B * V, "dataset %s: every frame's PNG records the dataset's caption of that frame (%d of %d)", task, good, B * V);
  ok(shown == B * V, "dataset %s: index.html shows every caption (%d of %d)", task, shown, B * V);
  free(index);
  mmp_component_free(ds);
  sd_env_close(&e);
  /* a caption with markup and UTF-8: into the last frame of story 1, then a
   * resumed run (every story complete) rewrites the contact sheet */
  static const char odd[] = "a <b>bold</b> \"dog\" & caf\xc3\xa9's friend";
  snprintf(path, sizeof path, "%s/story00001/frame4.png", outdir);
  char *back = NULL;
  FILE *f = fopen(path, "rb");
  size_t n = 0;
  uint8_t *bytes = malloc(1 << 20);
  if (f && bytes) n = fread(bytes, 1, 1 << 20, f);
  if (f) fclose(f);
  mmp_image_t im = {0};
  const char *keys[1] = {"caption"}, *vals[1] = {odd};
  ok(bytes && mmp_image_png_decode(bytes, n, false, &im) == 0 && mmp_image_png_write_text(&im, path, keys, vals, 1) == 0 &&
         mmp_image_png_file_text(path, "caption", &back) == 1 && strcmp(back, odd) == 0,
     "a UTF-8 caption with markup characters round-trips through a PNG text chunk");
  free(back);
  free(bytes);
  mmp_image_clear(&im);
  ok(run_story_dataset(task, outdir, false) == 0, "dataset %s: a rerun (every story complete) succeeds", task);
  snprintf(path, sizeof path, "%s/index.html", outdir);
  index = slurp(path);
  ok(index && strstr(index, "a &lt;b&gt;bold&lt;/b&gt; &quot;dog&quot; &amp; caf\xc3\xa9&#39;s friend") && !strstr(index, "<b>bold"),
     "dataset %s: the resumed run's contact sheet shows that caption as text, escaped", task);
  free(index);
}

static void check_dataset_draw(const char *task, bool replay) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  mmp_registry_add_dir(reg, dataset_dir());
  bool have = mmp_registry_find(reg, MMP_KIND_DATASET, "pororo") != NULL;
  mmp_registry_free(reg);
  mmp_error_clear();
  if (!have) {
    ok(1, "dataset %s # SKIP needs the pororo plugin (libhdf5)", task);
    return;
  }
  char rel[160], outdir[4096], path[4300];
  snprintf(rel, sizeof rel, "../arldm/story_dataset_%s.safetensors", task);
  mmp_tensormap_t *ref = sd_load(rel);
  const char *tmp = getenv("TMPDIR"), *mode = replay ? "replay" : "free";
  snprintf(outdir, sizeof outdir, "%s/story_dsdraw_%d_%s_%s", tmp ? tmp : "/tmp", (int)getpid(), task, mode);
  if (!ok(run_story_dataset(task, outdir, replay) == 0, "dataset %s %s: two stories of the pororo plugin drawn in one batch", task,
          mode) || !ref) {
    mmp_tensormap_free(ref);
    return;
  }
  snprintf(path, sizeof path, "%s/story_tensors.safetensors", outdir);
  mmp_tensormap_t *got = mmp_tensormap_new();
  mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, got);
  int V = strcmp(task, "continuation") ? 5 : 4, B = 2;
  double ectx = 0, emask = 0, elat0 = 0, elat1 = 0, eimg = 0;
  for (int b = 0; b < B; b++)
    for (int f = 0; f < V; f++) {
      char k[96];
      static const char *const parts[4] = {"uncond_context", "context", "uncond_mask", "mask"};
      for (int p = 0; p < 4; p++) {
        snprintf(k, sizeof k, "frame%d.%s", f, p < 2 ? "context" : "mask");
        mmp_tensor_t *w = rows(mmp_tensormap_get(ref, k), (p % 2) * B + b, 1); /* [uncond B | cond B] */
        snprintf(k, sizeof k, "story%d.frame%d.%s", b, f, parts[p]);
        mmp_tensor_t *g = mmp_tensormap_get(got, k);
        double e = p < 2 ? sd_relerr(g, w) : max_abs_diff(g, w);
        if (e < 0) e = INFINITY;
        if (p < 2 && e > ectx && (replay || f == 0)) ectx = e;
        if (p >= 2 && e > emask) emask = e;
        mmp_tensor_unref(w);
      }
      static const char *const lat[3] = {"latents_initial", "latents_final", "image"};
      double e[3];
      for (int q = 0; q < 3; q++) {
        snprintf(k, sizeof k, "frame%d.%s", f, lat[q]);
        mmp_tensor_t *w = rows(mmp_tensormap_get(ref, k), b, 1);
        snprintf(k, sizeof k, "story%d.frame%d.%s", b, f, lat[q]);
        e[q] = q < 2 ? sd_relerr(mmp_tensormap_get(got, k), w) : max_abs_diff(mmp_tensormap_get(got, k), w);
        if (e[q] < 0) e[q] = INFINITY;
        mmp_tensor_unref(w);
      }
      if (e[0] > elat0) elat0 = e[0];
      if ((replay || f == 0) && e[1] > elat1) elat1 = e[1];
      if (e[2] > eimg) eimg = e[2];
    }
  const char *which = replay ? "every frame" : "frame 0";
  ok(ectx <= 1e-5, "dataset %s %s: contexts (both halves, both stories, %s) within 1e-5 relative", task, mode, which);
  ok(emask == 0, "dataset %s %s: masks identical", task, mode);
  ok(elat0 == 0, "dataset %s %s: initial latents identical (randn([2, ...]) frame by frame)", task, mode);
  ok(elat1 <= 1e-4, "dataset %s %s: final latents (%s) within 1e-4 relative", task, mode, which);
  ok(eimg <= 2, "dataset %s %s: images (every frame, both stories) within 2/255", task, mode);
  diag("  dataset %s %s: context %.2g, mask %g, latents %.2g / %.2g, image %g/255", task, mode, ectx, emask, elat0, elat1, eimg);
  if (!replay) {
    /* the strips: continuation shows the given frame 0 (PIL's 32x32
     * bilinear resize of the decoded frame) in both rows; the drawn frames
     * fill the lower row */
    for (int b = 0; b < B; b++) {
      snprintf(path, sizeof path, "%s/story%05d/strip.png", outdir, b);
      char k[64];
      snprintf(k, sizeof k, "story%d.frame0_32", b);
      mmp_tensor_t *want = mmp_tensormap_get(ref, k);
      mmp_tensor_t *top = strip_cell(path, 0, 0, 32, 32), *low = strip_cell(path, 1, 0, 32, 32);
      mmp_tensor_t *last = strip_cell(path, 1, 4, 32, 32);
      snprintf(k, sizeof k, "story%d.frame%d.image", b, V - 1);
      double et = max_abs_diff(top, want), el = max_abs_diff(low, want), eg = max_abs_diff(last, mmp_tensormap_get(got, k));
      ok(et >= 0 && et <= 1, "dataset %s: story %d strip: ground-truth frame 0 = the dataset's frame 0 (%g)", task, b, et);
      if (V == 4)
        ok(el >= 0 && el <= 1, "dataset continuation: story %d strip: the given frame 0 opens the drawn row (%g)", b, el);
      ok(eg == 0, "dataset %s: story %d strip: the last drawn frame closes the drawn row", task, b);
      mmp_tensor_unref(top);
      mmp_tensor_unref(low);
      mmp_tensor_unref(last);
    }
    check_captions(task, outdir, V, B);
  }
  mmp_tensormap_free(got);
  mmp_tensormap_free(ref);
  char cmd[4400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", outdir);
  if (system(cmd) != 0) diag("could not remove %s", outdir);
}

int main(void) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  bool have = mmp_registry_find(reg, MMP_KIND_TASK, "story") && mmp_registry_find(reg, MMP_KIND_ENCODER, "blip") &&
              mmp_registry_find(reg, MMP_KIND_PROCESSOR, "image_resize") && mmp_registry_find(reg, MMP_KIND_SCHEDULER, "pndm");
  mmp_registry_free(reg);
  if (!have) skip_all("needs the story, blip, image_resize, ddim and pndm plugins");
  mmp_tensormap_t *probe = sd_load("../arldm/arldm_tiny.safetensors");
  if (!probe) skip_all("fixtures missing");
  mmp_tensormap_free(probe);
  check_bad_input();
  check_dataset();
  check_bad_tables();
  for (int replay = 1; replay >= 0; replay--) {
    check_dataset_draw("visualization", replay);
    check_dataset_draw("continuation", replay);
  }
  check_batch();
  for (int replay = 1; replay >= 0; replay--) {
    check("visualization", 0, replay);
    check("visualization", 1, replay);
    check("continuation", 0, replay);
    check("continuation", 1, replay);
  }
  return done_testing();
}
