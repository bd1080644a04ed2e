/* tests/test_plugin_txt2img.c - a whole 10-step DDIM txt2img at 64x64 with
 * guidance against diffusers' StableDiffusionPipeline given the same initial
 * latents (fixtures from tests/gen_sd.py): pixels within 2/255; the
 * single-file layout of the same model gives identical images; PNG text
 * chunks. Then the random stream (fixtures from tests/gen_txt2img_noise.py):
 * ddpm, euler_ancestral, ddim with eta = 1 and dpmpp_2m sde-dpmsolver++ from
 * a seed, with a seed per image and with num_images_per_prompt = 2, and two
 * batches on one generator (ddpm with a t = 0 step, euler), against
 * diffusers given the same generators: pixels within 2/255, final latents
 * within 1e-4 relative.
 * Needs the clip_tokenizer and ddim plugins (skipped without them). */
#include <png.h>

#include "sd_test.h"

/* RGB pixels and the "prompt" (and "seed", @seed nullable) text chunks of a PNG. */
static uint8_t *read_png_meta(const char *path, int *w, int *h, char *prompt, size_t plen, char *seed, size_t slen) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  uint8_t *px = NULL;
  png_bytep *rows = NULL;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    free(px);
    free(rows);
    return NULL;
  }
  png_init_io(png, f);
  png_read_info(png, info);
  *w = (int)png_get_image_width(png, info);
  *h = (int)png_get_image_height(png, info);
  if (png_get_color_type(png, info) != PNG_COLOR_TYPE_RGB || png_get_bit_depth(png, info) != 8) png_error(png, "not RGB8");
  px = malloc((size_t)(*w) * (size_t)(*h) * 3);
  rows = malloc((size_t)(*h) * sizeof *rows);
  for (int y = 0; y < *h; y++) rows[y] = px + (size_t)y * (size_t)(*w) * 3;
  png_read_image(png, rows);
  png_read_end(png, info);
  png_textp text;
  int nt = 0;
  prompt[0] = '\0';
  if (seed) seed[0] = '\0';
  if (png_get_text(png, info, &text, &nt) > 0)
    for (int i = 0; i < nt; i++) {
      if (!strcmp(text[i].key, "prompt")) snprintf(prompt, plen, "%s", text[i].text);
      if (seed && !strcmp(text[i].key, "seed")) snprintf(seed, slen, "%s", text[i].text);
    }
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  fclose(f);
  return px;
}

static uint8_t *read_png(const char *path, int *w, int *h, char *prompt, size_t plen) {
  return read_png_meta(path, w, h, prompt, plen, NULL, 0);
}

static int run_text(const char *text) {
  return sd_run_task(text, "txt2img-test", NULL);
}

static int run_task(const char *outdir, bool single, bool seeded) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  char parts[3][8192];
  const char *names[3] = {"text_encoder", "unet", "vae"}, *impl[3] = {"clip_text", "unet2d_condition", "vae"};
  const char *cfgs[3] = {"text_encoder", "unet", "vae"};
  for (int i = 0; i < 3; i++) {
    if (single)
      snprintf(parts[i], sizeof parts[i],
               "%s = { name = \"%s\"; config = \"%s/pipe/%s/config.json\"; weights = \"%s/sd_tiny_single.safetensors\"; };",
               names[i], impl[i], fx, cfgs[i], fx);
    else
      snprintf(parts[i], sizeof parts[i], "%s = { name = \"%s\"; model_dir = \"%s/pipe\"; };", names[i], impl[i], fx);
  }
  snprintf(text, sizeof text,
           "task = { name = \"txt2img\"; prompt_file = \"%s/txt2img_prompts.txt\"; negative_prompt = \"blurry\";\n"
           "  guidance_scale = 7.5; width = 64; height = 64; steps = 10; batch_size = 2;\n"
           "  %s%s%s output_dir = \"%s\"; };\n"
           "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s/pipe/tokenizer\"; };\n"
           "scheduler = { name = \"ddim\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";\n"
           "  clip_sample = false; set_alpha_to_one = false; steps_offset = 1; };\n%s\n%s\n%s\n",
           fx, seeded ? "seed = 42; rng = \"torch\";" : "init_latents = \"", seeded ? "" : fx,
           seeded ? "" : "/txt2img_io.safetensors\";", outdir, fx, parts[0], parts[1], parts[2]);
  return run_text(text);
}

/* ---- the random stream: tests/gen_txt2img_noise.py's cases ---- */

/* 4 steps at 32x32 on the fixture model; @task_keys and @sched_keys are
 * added to the task and scheduler groups. */
static int run_noise(const char *outdir, const char *sched, const char *sched_keys, const char *task_keys) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  snprintf(text, sizeof text,
           "task = { name = \"txt2img\"; prompt_file = \"%s/txt2img_prompts.txt\"; negative_prompt = \"blurry\";\n"
           "  guidance_scale = 7.5; width = 32; height = 32; steps = 4; rng = \"torch\"; %s\n"
           "  output_dir = \"%s\"; save_latents = \"%s/latents.safetensors\"; };\n"
           "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s/pipe/tokenizer\"; };\n"
           "scheduler = { name = \"%s\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";\n"
           "  clip_sample = false; set_alpha_to_one = false; timestep_spacing = \"leading\"; %s };\n"
           "text_encoder = { name = \"clip_text\"; model_dir = \"%s/pipe\"; };\n"
           "unet = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; };\n"
           "vae = { name = \"vae\"; model_dir = \"%s/pipe\"; };\n",
           fx, task_keys, outdir, outdir, fx, sched, sched_keys, fx, fx, fx);
  return run_text(text);
}

static void check_noise_case(mmp_tensormap_t *ref, const char *label, const char *sched, const char *sched_keys,
                             const char *task_keys, int per_prompt, const char *const *seeds) {
  static const char *const prompts[2] = {"a red cat sitting on the mat", "two dogs, running!"};
  char key[128], dir[4096], path[4200];
  snprintf(key, sizeof key, "%s/images", label);
  mmp_tensor_t *rimg = mmp_tensormap_get(ref, key);
  snprintf(key, sizeof key, "%s/latents", label);
  mmp_tensor_t *rlat = mmp_tensormap_get(ref, key);
  if (!ok(rimg && rlat && rimg->dtype == MMP_U8, "%s: fixture present", label)) return;
  int64_t B = rimg->shape[0], H = rimg->shape[1], W = rimg->shape[2];
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/sd_txt2img_noise_%d", tmp ? tmp : "/tmp", (int)getpid());
  if (!ok(run_noise(dir, sched, sched_keys, task_keys) == 0, "%s: txt2img runs (%s)", label, task_keys)) return;
  const uint8_t *rp = mmp_tensor_data(rimg);
  int maxd = 999;
  bool meta = true;
  for (int64_t b = 0; b < B; b++) {
    char prompt[256], seed[32];
    int w = 0, h = 0;
    snprintf(path, sizeof path, "%s/%05lld.png", dir, (long long)b);
    uint8_t *px = read_png_meta(path, &w, &h, prompt, sizeof prompt, seed, sizeof seed);
    if (!px || w != W || h != H) {
      maxd = 999;
      free(px);
      break;
    }
    if (b == 0) maxd = 0;
    for (int64_t k = 0; k < H * W * 3; k++) {
      int d = abs((int)px[k] - (int)rp[b * H * W * 3 + k]);
      if (d > maxd) maxd = d;
    }
    if (strcmp(prompt, prompts[b / per_prompt]) || strcmp(seed, seeds[b])) {
      diag("  image %lld: prompt \"%s\", seed \"%s\"", (long long)b, prompt, seed);
      meta = false;
    }
    free(px);
    unlink(path);
  }
  if (!ok(maxd <= 2, "%s: %lld images within 2/255 of diffusers", label, (long long)B))
    diag("  max difference %d/255", maxd);
  else
    diag("  %s: max pixel difference %d/255", label, maxd);
  ok(meta, "%s: each PNG records its prompt and its own seed", label);
  snprintf(path, sizeof path, "%s/latents.safetensors", dir);
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  mmp_tensor_t *lat = st ? mmp_safetensors_get(st, "latents", mmp_backend_get("cpu"), MMP_F32) : NULL;
  mmp_safetensors_close(st);
  double e = lat && mmp_tensor_same_shape(lat, rlat) ? sd_relerr(lat, rlat) : 1e9;
  if (!ok(e <= 1e-4, "%s: final latents within 1e-4 relative", label)) diag("  relative error %g", e);
  else diag("  %s: final latents relative error %.3g", label, e);
  mmp_tensor_unref(lat);
  unlink(path);
  rmdir(dir);
}

static void check_noise(void) {
  mmp_tensormap_t *ref = sd_load("txt2img_noise.safetensors");
  if (!ref) {
    ok(false, "tests/fixtures/sd/txt2img_noise.safetensors loads");
    return;
  }
  static const char *const s3[4] = {"3", "3", "3", "3"}, *const s78[2] = {"7", "8"}, *const s5[2] = {"5", "5"};
  static const struct {
    const char *label, *name, *keys;
  } scheds[4] = {{"ddpm", "ddpm", "steps_offset = 1;"},
                 {"euler_ancestral", "euler_ancestral", "steps_offset = 1;"},
                 {"ddim", "ddim", "steps_offset = 1; eta = 1.0;"},
                 {"dpmpp_sde", "dpmpp_2m", "steps_offset = 1; algorithm_type = \"sde-dpmsolver++\";"}};
  /* two batches on one generator = two pipeline calls sharing it */
  static const struct {
    const char *label, *name, *keys;
  } batches[2] = {{"ddpm0/batches", "ddpm", "steps_offset = 0;"}, /* no draw at t = 0 */
                  {"euler/batches", "euler", "steps_offset = 1;"}}; /* draws unused noise */
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  bool have[4], have_b[2];
  for (int i = 0; i < 4; i++) have[i] = mmp_registry_find(reg, MMP_KIND_SCHEDULER, scheds[i].name) != NULL;
  for (int i = 0; i < 2; i++) have_b[i] = mmp_registry_find(reg, MMP_KIND_SCHEDULER, batches[i].name) != NULL;
  mmp_registry_free(reg);
  for (int i = 0; i < 4; i++) {
    char label[64];
    if (!have[i]) {
      diag("skipped: scheduler %s not built", scheds[i].name);
      continue;
    }
    snprintf(label, sizeof label, "%s/seed", scheds[i].label);
    check_noise_case(ref, label, scheds[i].name, scheds[i].keys, "seed = 3; batch_size = 2;", 1, s3);
    snprintf(label, sizeof label, "%s/seeds", scheds[i].label);
    check_noise_case(ref, label, scheds[i].name, scheds[i].keys, "seeds = [7, 8]; batch_size = 1;", 1, s78);
    snprintf(label, sizeof label, "%s/per2", scheds[i].label);
    check_noise_case(ref, label, scheds[i].name, scheds[i].keys, "seed = 3; num_images_per_prompt = 2; batch_size = 4;",
                     2, s3);
  }
  for (int i = 0; i < 2; i++) {
    if (have_b[i])
      check_noise_case(ref, batches[i].label, batches[i].name, batches[i].keys, "seed = 5; batch_size = 1;", 1, s5);
    else
      diag("skipped: scheduler %s not built", batches[i].name);
  }
  /* seed and seeds exclude each other; seeds needs one per image */
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/sd_txt2img_noise_bad_%d", tmp ? tmp : "/tmp", (int)getpid());
  ok(run_noise(dir, "ddim", "", "seed = 3; seeds = [7, 8];") == MMP_ECONFIG &&
         strstr(mmp_error_last(), "seeds") && strstr(mmp_error_last(), "not both"),
     "seed and seeds together: a config error");
  ok(run_noise(dir, "ddim", "", "seeds = [7, 8, 9];") == MMP_ECONFIG && strstr(mmp_error_last(), "3 seeds for 2 images"),
     "seeds must give one seed per image");
  ok(run_noise(dir, "ddim", "", "seeds = [7, 8]; num_images_per_prompt = 2;") == MMP_ECONFIG &&
         strstr(mmp_error_last(), "2 seeds for 4 images"),
     "num_images_per_prompt counts in the seeds");
  rmdir(dir);
  mmp_tensormap_free(ref);
}

int main(void) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  bool have = mmp_registry_find(reg, MMP_KIND_PROCESSOR, "clip_tokenizer") &&
              mmp_registry_find(reg, MMP_KIND_SCHEDULER, "ddim") && mmp_registry_find(reg, MMP_KIND_TASK, "txt2img");
  mmp_registry_free(reg);
  if (!have) skip_all("needs the clip_tokenizer, ddim and txt2img plugins");
  mmp_tensormap_t *io = sd_load("txt2img_io.safetensors");
  if (!io) skip_all("fixtures missing");
  mmp_tensor_t *ref = mmp_tensormap_get(io, "images"); /* [2, 64, 64, 3] in [0, 1] */
  float *rf = malloc(2 * 64 * 64 * 3 * sizeof *rf);
  mmp_tensor_t *rf32 = mmp_convert(ref, MMP_F32);
  mmp_tensor_to_host(rf32, rf, 2 * 64 * 64 * 3 * sizeof *rf);
  mmp_tensor_unref(rf32);

  const char *tmp = getenv("TMPDIR");
  char d1[4096], d2[4096], d3[4096];
  snprintf(d1, sizeof d1, "%s/sd_txt2img_%d_a", tmp ? tmp : "/tmp", (int)getpid());
  snprintf(d2, sizeof d2, "%s/sd_txt2img_%d_b", tmp ? tmp : "/tmp", (int)getpid());
  snprintf(d3, sizeof d3, "%s/sd_txt2img_%d_c", tmp ? tmp : "/tmp", (int)getpid());
  ok(run_task(d1, false, false) == 0, "txt2img with the diffusers folder");
  ok(run_task(d2, true, false) == 0, "txt2img with the single-file checkpoint");
  ok(run_task(d3, false, true) == 0, "txt2img with seed 42 and the torch generator (no init_latents)");
  static const char *const prompts[2] = {"a red cat sitting on the mat", "two dogs, running!"};
  for (int i = 0; i < 2; i++) {
    char p1[4200], p2[4200], p3[4200], t1[256], t2[256], t3[256];
    snprintf(p1, sizeof p1, "%s/%05d.png", d1, i);
    snprintf(p2, sizeof p2, "%s/%05d.png", d2, i);
    snprintf(p3, sizeof p3, "%s/%05d.png", d3, i);
    int w = 0, h = 0, w2 = 0, h2 = 0;
    uint8_t *a = read_png(p1, &w, &h, t1, sizeof t1), *b = read_png(p2, &w2, &h2, t2, sizeof t2);
    ok(a && w == 64 && h == 64, "image %d is a 64x64 RGB PNG", i);
    is_str(a ? t1 : NULL, prompts[i], "image %d records its prompt", i);
    double maxd = 1e9;
    if (a) {
      maxd = 0;
      for (int k = 0; k < 64 * 64 * 3; k++) {
        double d = fabs(a[k] / 255.0 - rf[i * 64 * 64 * 3 + k]);
        if (d > maxd) maxd = d;
      }
    }
    if (!ok(maxd <= 2.0 / 255.0 + 1e-9, "image %d within 2/255 of diffusers", i)) diag("  max difference %.4f (%.2f/255)", maxd, maxd * 255);
    ok(a && b && w == w2 && h == h2 && memcmp(a, b, (size_t)w * (size_t)h * 3) == 0,
       "image %d: single-file and folder layouts give identical pixels", i);
    int w3 = 0, h3 = 0;
    uint8_t *c3 = read_png(p3, &w3, &h3, t3, sizeof t3);
    ok(a && c3 && w3 == w && h3 == h && memcmp(a, c3, (size_t)w * (size_t)h * 3) == 0,
       "image %d: seed 42 with rng torch draws diffusers' initial latents", i);
    free(a);
    free(b);
    free(c3);
    unlink(p1);
    unlink(p2);
    unlink(p3);
  }
  rmdir(d1);
  rmdir(d2);
  rmdir(d3);
  free(rf);
  mmp_tensormap_free(io);
  check_noise();
  return done_testing();
}
