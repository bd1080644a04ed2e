/* tests/test_plugin_clipscore.c - `pipeline clipscore` against transformers
 * 4.30's CLIPModel and CLIPImageProcessor (fixtures: tests/gen_clipscore.py):
 * the preprocessing (image_resize with crop_offset = "floor"), the image and
 * text embeddings, CLIP-T and CLIP-I per story and per run, the inputs
 * (story output folder, image folder, run.json's stories_file), the JSON
 * merged into an existing one, errors. */
#include <jansson.h>
#include <sys/stat.h>

#include "plugins/processors/imagecommon.h"
#include "sd_test.h"

static char fx[4200], tmp[4200], pipe_bin[4200];

static double relerr(double got, double want) {
  return fabs(got - want) / (fabs(want) > 0 ? fabs(want) : 1);
}

/* Run `pipeline clipscore ARGS` quietly; its exit status, stderr in @err. */
static int run(const char *args, char *err, size_t n) {
  char cmd[16384], ep[4300];
  snprintf(ep, sizeof ep, "%s/err.txt", tmp);
  snprintf(cmd, sizeof cmd, "%s clipscore -q %s >%s/out.txt 2>%s", pipe_bin,
           args, tmp, ep);
  int st = system(cmd);
  if (err) {
    err[0] = 0;
    FILE *f = fopen(ep, "r");
    if (f) {
      size_t k = fread(err, 1, n - 1, f);
      err[k] = 0;
      fclose(f);
    }
  }
  return st == -1 ? -1 : WEXITSTATUS(st);
}

static double exp1(const mmp_tensormap_t *e, const char *name, int64_t i) {
  int64_t ix[1] = {i};
  return mmp_tensor_get(mmp_tensormap_get(e, name), ix);
}

/* CLIP-T and CLIP-I of @j (per story and mean) against the fixture, times
 * @scale. */
static void check_scores(json_t *j, const mmp_tensormap_t *e, double scale,
                         const char *what) {
  double worst = relerr(json_real_value(json_object_get(j, "clip_t")),
                        scale * exp1(e, "clip_t_mean", 0));
  double w2 = relerr(json_real_value(json_object_get(j, "clip_i")),
                     scale * exp1(e, "clip_i_mean", 0));
  if (w2 > worst)
    worst = w2;
  json_t *st = json_object_get(json_object_get(j, "clipscore"), "stories");
  bool shape = json_array_size(st) == 2;
  for (size_t s = 0; shape && s < 2; s++) {
    json_t *y = json_array_get(st, s);
    double a = relerr(json_real_value(json_object_get(y, "clip_t")),
                      scale * exp1(e, "clip_t", (int64_t)s));
    double b = relerr(json_real_value(json_object_get(y, "clip_i")),
                      scale * exp1(e, "clip_i", (int64_t)s));
    if (a > worst)
      worst = a;
    if (b > worst)
      worst = b;
    shape = json_integer_value(json_object_get(y, "frames")) == 5;
  }
  if (!ok(shape && worst <= 1e-4,
          "%s: CLIP-T and CLIP-I per story and mean within 1e-4 (%.2g)", what,
          worst))
    diag("stories %zu", json_array_size(st));
}

static json_t *load_json(const char *name) {
  char p[4400];
  snprintf(p, sizeof p, "%s/%s", tmp, name);
  json_error_t err;
  json_t *j = json_load_file(p, 0, &err);
  if (!j)
    diag("%s: %s", p, err.text);
  return j;
}

int main(void) {
  const char *b = getenv("MMP_TEST_BUILDDIR");
  snprintf(fx, sizeof fx, "%s/tests/fixtures/clipscore", tap_srcdir());
  snprintf(pipe_bin, sizeof pipe_bin, "%s/tools/pipeline", b ? b : ".");
  char ep[4300];
  snprintf(ep, sizeof ep, "%s/expected.safetensors", fx);
  mmp_tensormap_t *e = mmp_tensormap_new();
  if (access(pipe_bin, X_OK) != 0 ||
      mmp_safetensors_load_map(ep, mmp_backend_get("cpu"), true, e) < 0) {
    mmp_tensormap_free(e);
    skip_all("pipeline or fixtures missing");
  }
  {
    char pp[9000];
    snprintf(pp, sizeof pp,
             "%s/plugins/encoders/.libs:%s/plugins/processors/.libs",
             b ? b : ".", b ? b : ".");
    setenv("MMPIPE_PLUGIN_PATH", pp, 1);
  }
  snprintf(tmp, sizeof tmp, "%s/clipscore.%ld",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)getpid());
  mkdir(tmp, 0700);

  /* CLIPImageProcessor (shortest_edge 32, crop 32) on a 64 x 71 frame: the
   * long side becomes 35, crop margin 3 (transformers' floor, not round) */
  {
    char text[8192], img[4400];
    snprintf(
        text, sizeof text,
        "p = { name = \"image_resize\"; size = [32]; interpolation = "
        "\"bicubic\"; center_crop = [32];"
        " crop_offset = \"floor\"; mean = [0.48145466, 0.4578275, 0.40821073];"
        " std = [0.26862954, 0.26130258, 0.27577711]; };");
    snprintf(img, sizeof img, "%s/out/story00000/frame0.png", fx);
    sd_env_t env;
    mmp_component_t *c =
        sd_env_open(&env, text) == 0
            ? mmp_component_create(env.ctx, MMP_KIND_PROCESSOR, "p")
            : NULL;
    mmp_image_t im = {0};
    int rc = c ? mmp_image_load(img, &im) : -1;
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if (rc == 0) {
      int64_t s[4] = {1, im.h, im.w, 3};
      mmp_tensormap_set(
          in, "images",
          mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, s, im.data));
      rc = ((const mmp_processor_ops_t *)c->plugin)
               ->forward(c->self, "", in, out);
    }
    if (!ok(rc == 0, "image_resize as CLIPImageProcessor runs"))
      diag("%s", mmp_error_last());
    sd_check(mmp_tensormap_get(out, "images"),
             mmp_tensormap_get(e, "pixel_values"),
             "CLIPImageProcessor pixel_values");
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    mmp_image_clear(&im);
    mmp_component_free(c);
    sd_env_close(&env);
  }

  char args[12000], err[4096];
  /* a story output folder with the stories_file it was drawn from */
  snprintf(args, sizeof args,
           "%s/out --model %s/clip --captions %s/out/stories.json --json "
           "%s/a.json --save-embeddings %s/emb.safetensors",
           fx, fx, fx, tmp, tmp);
  int st = run(args, err, sizeof err);
  if (!ok(st == 0, "clipscore on a story output folder"))
    diag("%s", err);
  {
    char p[4400];
    snprintf(p, sizeof p, "%s/emb.safetensors", tmp);
    mmp_tensormap_t *m = mmp_tensormap_new();
    if (mmp_safetensors_load_map(p, mmp_backend_get("cpu"), true, m) < 0)
      diag("%s", mmp_error_last());
    static const char *const names[2] = {"image_embeds", "text_embeds"};
    for (int k = 0; k < 2; k++) {
      double r = sd_relerr(mmp_tensormap_get(m, names[k]),
                           mmp_tensormap_get(e, names[k]));
      ok(r >= 0 && r <= 1e-4,
         "%s of the 10 frames / captions vs CLIPModel within 1e-4 (%.2g)",
         names[k], r);
    }
    mmp_tensormap_free(m);
  }
  json_t *j = load_json("a.json");
  check_scores(j, e, 1, "story output folder");
  json_decref(j);

  /* the same model as pytorch_model.bin (transformers' torch.save file) */
  snprintf(args, sizeof args, "%s/out --model %s/clip_bin --captions %s/out/stories.json --json %s/bin.json", fx, fx, fx,
           tmp);
  st = run(args, err, sizeof err);
  if (!ok(st == 0, "clipscore with pytorch_model.bin")) diag("%s", err);
  j = load_json("bin.json");
  check_scores(j, e, 1, "pytorch_model.bin");
  json_decref(j);

  /* the same frames as an image folder with one caption each, x100 */
  snprintf(args, sizeof args,
           "%s/flat --model %s/clip --captions %s/flat/captions.json --frames "
           "5 --scale 100 --json %s/b.json",
           fx, fx, fx, tmp);
  st = run(args, err, sizeof err);
  if (!ok(st == 0, "clipscore on an image folder"))
    diag("%s", err);
  j = load_json("b.json");
  check_scores(j, e, 100, "image folder, --scale 100");
  json_decref(j);

  /* captions from run.json's stories_file; the result added to a JSON
   * object already there (pipeline fid --json) */
  {
    char d[4400], cmd[9000];
    snprintf(d, sizeof d, "%s/run", tmp);
    mkdir(d, 0700);
    snprintf(cmd, sizeof cmd,
             "ln -s %s/out/story00000 %s/run/story00000 && ln -s "
             "%s/out/story00001 %s/run/story00001 && "
             "printf '{\"task\": \"visualization\", \"stories_file\": "
             "\"%s/out/stories.json\"}' > %s/run/run.json && "
             "printf '{\"fid\": 12.5}' > %s/c.json",
             fx, tmp, fx, tmp, fx, tmp, tmp);
    ok(system(cmd) == 0, "a story output folder with run.json");
    snprintf(args, sizeof args, "%s/run --model %s/clip --json %s/c.json", tmp,
             fx, tmp);
    st = run(args, err, sizeof err);
    if (!ok(st == 0,
            "clipscore takes the captions from run.json's stories_file"))
      diag("%s", err);
    j = load_json("c.json");
    check_scores(j, e, 1, "run.json's stories_file");
    ok(json_real_value(json_object_get(j, "fid")) == 12.5,
       "the FID already in the JSON file stays");
    json_decref(j);
  }

  /* errors */
  snprintf(
      args, sizeof args,
      "%s/flat --model %s/clip --captions %s/flat/captions.json --frames 3", fx,
      fx, fx);
  st = run(args, err, sizeof err);
  ok(st == 5 && strstr(err, "--frames 3"),
     "10 images in stories of 3 is an error (%d: %.200s)", st, err);
  snprintf(args, sizeof args,
           "%s/flat --model %s/clip --captions %s/out/stories.json --frames 2",
           fx, fx, fx);
  st = run(args, err, sizeof err);
  ok(st == 0, "an image folder takes nested captions in order (%d)", st);
  snprintf(args, sizeof args,
           "%s/out --model %s/clip --captions %s/flat/captions.json", fx, fx,
           fx);
  st = run(args, err, sizeof err);
  ok(st == 5 && strstr(err, "story by story"),
     "an output folder with a flat caption list is an error (%.200s)", err);
  snprintf(args, sizeof args, "%s/flat --model %s/clip", fx, fx);
  st = run(args, err, sizeof err);
  ok(st != 0 && strstr(err, "--captions"),
     "an image folder without captions is an error (%.200s)", err);
  snprintf(args, sizeof args,
           "%s/out --model %s/out --captions %s/out/stories.json", fx, fx, fx);
  st = run(args, err, sizeof err);
  ok(st != 0 && strstr(err, "config.json"),
     "a model folder without config.json is an error (%.200s)", err);

  {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0)
      diag("could not remove %s", tmp);
  }
  mmp_tensormap_free(e);
  return done_testing();
}
