/* tests/test_plugin_half_weights.c - weights_dtype = "bf16" / "f16" (issue 19):
 * each component (UNet, VAE, CLIP text, the BLIP towers) with half-precision
 * weights against the reference fixtures and against its own f32 run, the
 * dtype the weights are held in, and a whole txt2img run's pixels against
 * the f32 run; with bf16 weights also compute_dtype = "bf16" (the UNet, VAE,
 * CLIP text and BLIP against the references, txt2img against f32). The
 * measured errors and the tolerances are in doc/tensor.md ("Half-precision
 * weights").
 *
 * Two kinds of weights:
 * - the fixture files (tests/gen_sd.py, tests/gen_blip.py). The SD fixture
 *   weights are exactly representable in f16 and bf16 (the generator stores
 *   them so), so a half-precision run must give the f32 run's numbers bit for
 *   bit: this checks the plumbing (load, zero-copy half tensors, convert while
 *   packing) end to end. The BLIP fixtures hold genuine f32 weights: there the
 *   difference to the PyTorch reference is the format's rounding.
 * - seeded random f32 weights (init_seed), not representable: the difference
 *   between the half and the f32 run is the rounding of the weights to the
 *   format, measured on each SD component and on a whole txt2img run. */
#include <png.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <mmpipe/rng.h>

#include "blip_test.h"

static const char *const DT[3] = {"f32", "f16", "bf16"};

/* compute_dtype = "bf16" (bf16 weights): the layer inputs are rounded to
 * bf16 too, on every CPU path (vdpbf16ps where the CPU has AVX512_BF16, the
 * same roundings otherwise); relative error measured at most 1.1e-2 against
 * the reference (doc/tensor.md) */
#define TOL_BF16_DOT 2.5e-2

/* Build @group (@kind) from @fmt (%s = the fixture dir, %2$s... same), run
 * @method on @in; the output @key (transfer full), or NULL with a failed
 * test. @sd_out (nullable) receives the state_dict. */
static mmp_tensor_t *run1(mmp_kind_t kind, const char *group, const char *text, const char *method,
                          const mmp_tensormap_t *in, const char *key, const char *what, mmp_tensormap_t *sd_out) {
  sd_env_t e;
  mmp_component_t *c = NULL;
  if (sd_env_open(&e, text) == 0) c = mmp_component_create(e.ctx, kind, group);
  mmp_tensormap_t *out = mmp_tensormap_new();
  int rc = c ? sd_forward(c, method, in, out) : -1;
  if (!ok(rc == 0, "%s: create and run", what)) diag("  %s", mmp_error_last());
  if (c && sd_out) {
    mmp_tensormap_t *none = mmp_tensormap_new();
    sd_forward(c, "state_dict", none, sd_out);
    mmp_tensormap_free(none);
  }
  mmp_tensor_t *r = mmp_tensormap_get(out, key);
  if (r) mmp_tensor_ref(r);
  mmp_tensormap_free(out);
  mmp_component_free(c);
  sd_env_close(&e);
  return r;
}

/* ok() that the weight @name of @sd is held as @dt */
static void check_held(mmp_tensormap_t *sd, const char *name, const char *dt, const char *what) {
  mmp_tensor_t *t = mmp_tensormap_get(sd, name);
  if (!ok(t && strcmp(mmp_dtype_name(t->dtype), dt) == 0, "%s: %s held as %s", what, name, dt))
    diag("  got %s", t ? mmp_dtype_name(t->dtype) : "(missing)");
}

/* A component run with each weights_dtype on the fixture weights (within
 * SD_TOL of the reference and identical to f32), then on random weights
 * (half vs f32 within the tolerances measured for the format). */
typedef struct comp_case {
  const char *label;
  mmp_kind_t kind;
  const char *group, *impl, *part; /* part: the fixture pipe's subfolder */
  const char *io_file, *method;
  const char *const *inputs;
  const char *out_key, *ref_key;
  const char *mat_name, *norm_name; /* a linear/conv weight and a 1-D weight */
  double tol_f16, tol_bf16;         /* random weights: half vs f32 */
} comp_case_t;

static void check_component(const comp_case_t *k) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  mmp_tensormap_t *io = sd_load(k->io_file);
  if (!ok(io != NULL, "%s: fixture loads", k->label)) return;
  mmp_tensormap_t *in = sd_pick(io, k->inputs);
  mmp_tensor_t *ref = mmp_tensormap_get(io, k->ref_key), *f32 = NULL;
  for (int d = 0; d < 3; d++) {
    char what[256];
    snprintf(what, sizeof what, "%s, fixture weights, weights_dtype %s", k->label, DT[d]);
    snprintf(text, sizeof text, "%s = { name = \"%s\"; model_dir = \"%s/pipe\"; weights_dtype = \"%s\"; };", k->group,
             k->impl, fx, DT[d]);
    mmp_tensormap_t *sd = mmp_tensormap_new();
    mmp_tensor_t *o = run1(k->kind, k->group, text, k->method, in, k->out_key, what, sd);
    sd_check(o, ref, what);
    check_held(sd, k->mat_name, DT[d], what);
    check_held(sd, k->norm_name, "f32", what);
    if (d == 0)
      f32 = o;
    else {
      double r = sd_relerr(o, f32);
      if (!ok(r == 0.0, "%s: identical to the f32 run (the weights are representable)", what))
        diag("  relative difference %.3g", r);
      mmp_tensor_unref(o);
    }
    mmp_tensormap_free(sd);
  }
  /* compute_dtype bf16: the bf16 products, against the reference */
  {
    char what[256];
    snprintf(what, sizeof what, "%s, fixture weights, weights_dtype bf16, compute_dtype bf16", k->label);
    snprintf(text, sizeof text,
             "%s = { name = \"%s\"; model_dir = \"%s/pipe\"; weights_dtype = \"bf16\"; compute_dtype = \"bf16\"; };",
             k->group, k->impl, fx);
    mmp_tensormap_t *sd = mmp_tensormap_new();
    mmp_tensor_t *o = run1(k->kind, k->group, text, k->method, in, k->out_key, what, sd);
    double r = sd_relerr(o, ref), r32 = sd_relerr(o, f32);
    if (!ok(r >= 0 && r <= TOL_BF16_DOT, "%s: within %.1e of the reference", what, TOL_BF16_DOT))
      diag("  relative error %.3g", r);
    else
      diag("  %s: %.3g of the reference, %.3g of the f32 run", what, r, r32);
    /* a zero difference would mean the inputs were not rounded */
    ok(r32 > 0, "%s: differs from the f32 run (the inputs are rounded)", what);
    check_held(sd, k->mat_name, "bf16", what);
    mmp_tensor_t *mw = mmp_tensormap_get(sd, k->mat_name), *nw = mmp_tensormap_get(sd, k->norm_name);
    ok(mw && mmp_tensor_compute_dtype(mw) == MMP_BF16 && nw && mmp_tensor_compute_dtype(nw) == MMP_F32,
       "%s: the layer weights carry compute dtype bf16, the norms not", what);
    mmp_tensor_unref(o);
    mmp_tensormap_free(sd);
  }
  mmp_tensor_unref(f32);
  f32 = NULL;
  for (int d = 0; d < 4; d++) {
    char what[256];
    const bool cb = d == 3; /* bf16 weights, compute_dtype bf16 */
    snprintf(what, sizeof what, "%s, random f32 weights, weights_dtype %s%s", k->label, DT[cb ? 2 : d],
             cb ? ", compute_dtype bf16" : "");
    snprintf(text, sizeof text,
             "%s = { name = \"%s\"; config = \"%s/pipe/%s/config.json\"; init_seed = 3; weights_dtype = \"%s\";%s };",
             k->group, k->impl, fx, k->part, DT[cb ? 2 : d], cb ? " compute_dtype = \"bf16\";" : "");
    mmp_tensor_t *o = run1(k->kind, k->group, text, k->method, in, k->out_key, what, NULL);
    if (d == 0) {
      f32 = o;
      continue;
    }
    double r = sd_relerr(o, f32), tol = d == 1 ? k->tol_f16 : cb ? TOL_BF16_DOT : k->tol_bf16;
    if (!ok(r >= 0 && r <= tol, "%s: within %.0e of the f32 run", what, tol)) diag("  relative difference %.3g", r);
    else diag("  %s: max |half - f32| / max |f32| = %.3g", what, r);
    /* a zero difference would mean the weights were not rounded at all */
    ok(r > 0, "%s: the weights were rounded to the format", what);
    mmp_tensor_unref(o);
  }
  mmp_tensor_unref(f32);
  mmp_tensormap_free(in);
  mmp_tensormap_free(io);
}

/* weights_dtype = "file": f16/bf16 weights kept as stored, f32 stays f32.
 * The fixture pipe holds f16 (UNet, VAE) and bf16 (CLIP text) files; the
 * CLIP text weights are also converted to f16 and to f32 with `pipeline
 * convert --dtype`. The weights are representable: every run gives the f32
 * run's numbers. */
static void check_file_dtype(void) {
  char fx[4096], text[16384], dir[4200], cmd[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  static const char *const clip_in[] = {"input_ids", NULL};
  mmp_tensormap_t *io = sd_load("clip_text_io.safetensors");
  if (!ok(io != NULL, "file dtype: fixture loads")) return;
  mmp_tensormap_t *in = sd_pick(io, clip_in);
  mmp_tensor_t *ref = mmp_tensormap_get(io, "last_hidden_state");
  const char *q = "text_model.encoder.layers.0.self_attn.q_proj.weight", *n = "text_model.final_layer_norm.weight";
  const char *bd = getenv("MMP_TEST_BUILDDIR"), *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/half_file_%d", tmp ? tmp : "/tmp", (int)getpid());
  /* the part as stored (bf16), then converted to f16 and f32 */
  static const char *const conv[3] = {NULL, "f16", "f32"}, *const held[3] = {"bf16", "f16", "f32"};
  snprintf(text, sizeof text, "encoder = { name = \"clip_text\"; model_dir = \"%s/pipe/text_encoder\"; };", fx);
  mmp_tensor_t *f32 = run1(MMP_KIND_ENCODER, "encoder", text, NULL, in, "last_hidden_state",
                           "file dtype: clip text, weights_dtype f32", NULL);
  mkdir(dir, 0700);
  for (int c = 0; c < 3; c++) {
    char what[256], wpath[4300];
    if (conv[c]) {
      snprintf(wpath, sizeof wpath, "%s/model.%s.safetensors", dir, conv[c]);
      snprintf(cmd, sizeof cmd, "'%s/tools/pipeline' convert '%s/pipe/text_encoder/model.safetensors' '%s' --dtype %s",
               bd ? bd : ".", fx, wpath, conv[c]);
      ok(system(cmd) == 0, "file dtype: pipeline convert --dtype %s", conv[c]);
    } else {
      snprintf(wpath, sizeof wpath, "%s/pipe/text_encoder/model.safetensors", fx);
    }
    snprintf(what, sizeof what, "clip text, a %s file, weights_dtype file", held[c]);
    snprintf(text, sizeof text,
             "encoder = { name = \"clip_text\"; config = \"%s/pipe/text_encoder/config.json\"; weights = \"%s\";"
             " weights_dtype = \"file\"; };",
             fx, wpath);
    mmp_tensormap_t *sd = mmp_tensormap_new();
    mmp_tensor_t *o = run1(MMP_KIND_ENCODER, "encoder", text, NULL, in, "last_hidden_state", what, sd);
    sd_check(o, ref, what);
    check_held(sd, q, held[c], what);
    check_held(sd, n, "f32", what);
    double r = sd_relerr(o, f32);
    if (!ok(r == 0.0, "%s: identical to the f32 run", what)) diag("  relative difference %.3g", r);
    mmp_tensor_unref(o);
    mmp_tensormap_free(sd);
    if (conv[c]) unlink(wpath);
  }
  rmdir(dir);
  /* the UNet's file is f16: kept so */
  {
    mmp_tensormap_t *sd = mmp_tensormap_new(), *uio = sd_load("unet_io.safetensors");
    static const char *const unet_in[] = {"sample", "timestep", "encoder_hidden_states", NULL};
    mmp_tensormap_t *uin = uio ? sd_pick(uio, unet_in) : NULL;
    snprintf(text, sizeof text, "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; weights_dtype = \"file\"; };",
             fx);
    mmp_tensor_t *o = uin ? run1(MMP_KIND_MODEL, "model", text, NULL, uin, "sample", "unet, weights_dtype file", sd) : NULL;
    if (o) sd_check(o, mmp_tensormap_get(uio, "out_sample"), "unet, an f16 file, weights_dtype file");
    check_held(sd, "conv_in.weight", "f16", "unet, an f16 file, weights_dtype file");
    mmp_tensor_unref(o);
    mmp_tensormap_free(sd);
    mmp_tensormap_free(uin);
    mmp_tensormap_free(uio);
  }
  mmp_tensor_unref(f32);
  mmp_tensormap_free(in);
  mmp_tensormap_free(io);
}

/* ---- BLIP (ViT + BERT towers) ----
 * The fixture weights (tests/gen_blip.py) are bf16-exact too: half runs
 * must equal the f32 run and PyTorch. For the rounding error the same
 * weights are perturbed to genuine f32 values (w * (1 + 1e-2 n), n drawn
 * from a seeded normal) and written to a temporary file. */
static int perturbed_blip(const char *src, const char *dst) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensormap_t *m = mmp_tensormap_new(), *o = mmp_tensormap_new();
  mmp_rng_t *g = mmp_rng_new(11, MMP_RNG_PHILOX);
  int rc = mmp_safetensors_load_map(src, cpu, true, m);
  for (size_t i = 0; rc == 0 && i < mmp_tensormap_size(m); i++) {
    mmp_tensor_t *t = mmp_tensormap_at(m, i), *r = NULL;
    if (t->dtype == MMP_F32) {
      mmp_tensor_t *n = mmp_rng_randn(g, cpu, t->ndim, t->shape), *tn = mmp_mul(t, n);
      r = mmp_axpby(1.0, t, 1e-2, tn);
      mmp_tensor_unref(n);
      mmp_tensor_unref(tn);
    } else {
      r = mmp_tensor_ref(t);
    }
    rc = r ? mmp_tensormap_set(o, mmp_tensormap_name(m, i), r) : -1;
  }
  if (rc == 0) rc = mmp_safetensors_save_map(dst, o, NULL);
  mmp_rng_free(g);
  mmp_tensormap_free(m);
  mmp_tensormap_free(o);
  return rc;
}

static void check_blip(void) {
  mmp_tensormap_t *bb = bt_load("blip_base_io.safetensors");
  if (!ok(bb != NULL, "blip fixture loads")) return;
  static const char *const all[] = {"pixel_values", "input_ids", "attention_mask", NULL};
  mmp_tensormap_t *in = sd_pick(bb, all);
  static const struct {
    const char *mode, *ref;
    double tol[3]; /* perturbed weights, half vs f32: -, f16, bf16 */
  } modes[3] = {{"image", "image.last_hidden_state", {0, 5e-3, 2e-2}},
                {"text", "text.last_hidden_state", {0, 5e-3, 2e-2}},
                {"multimodal", "multimodal.last_hidden_state", {0, 5e-3, 2e-2}}};
  char fx[4096], text[16384], src[4200], pert[4200];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/blip", tap_srcdir());
  snprintf(src, sizeof src, "%s/blip_base/model.safetensors", fx);
  const char *tmp = getenv("TMPDIR");
  snprintf(pert, sizeof pert, "%s/half_blip_%d.safetensors", tmp ? tmp : "/tmp", (int)getpid());
  ok(perturbed_blip(src, pert) == 0, "blip: perturbed f32 weights written");
  for (int m = 0; m < 3; m++) {
    mmp_tensor_t *f32 = NULL, *p32 = NULL;
    for (int d = 0; d < 4; d++) {
      char what[256];
      const bool cb = d == 3; /* bf16 weights, compute_dtype bf16 */
      const char *cdt = cb ? " compute_dtype = \"bf16\";" : "";
      snprintf(what, sizeof what, "blip %s, fixture weights, weights_dtype %s%s", modes[m].mode, DT[cb ? 2 : d],
               cb ? ", compute_dtype bf16" : "");
      snprintf(text, sizeof text,
               "encoder = { name = \"blip\"; config = \"%s/blip_base/med_config.json\";"
               " weights = \"%s\"; prefix = \"mm_encoder.\"; num_heads = 4;"
               " enc_token_id = 97; weights_dtype = \"%s\";%s };",
               fx, src, DT[cb ? 2 : d], cdt);
      mmp_tensormap_t *sd = d && m == 0 ? mmp_tensormap_new() : NULL;
      mmp_tensor_t *o = run1(MMP_KIND_ENCODER, "encoder", text, modes[m].mode, in, "last_hidden_state", what, sd);
      if (cb) {
        /* the bf16 products: the layer inputs rounded too, against BLIP */
        double r = sd_relerr(o, mmp_tensormap_get(bb, modes[m].ref)), r32 = sd_relerr(o, f32);
        if (!ok(r >= 0 && r <= TOL_BF16_DOT, "%s: within %.1e of the reference", what, TOL_BF16_DOT))
          diag("  relative error %.3g", r);
        else
          diag("  %s: %.3g of the reference, %.3g of the f32 run", what, r, r32);
        ok(r32 > 0, "%s: differs from the f32 run (the inputs are rounded)", what);
        if (sd) {
          mmp_tensor_t *qw = NULL;
          for (size_t i = 0; i < mmp_tensormap_size(sd); i++) {
            const char *n = mmp_tensormap_name(sd, i);
            size_t l = strlen(n);
            if (l > 27 && !strcmp(n + l - 27, "attention.self.query.weight")) qw = mmp_tensormap_at(sd, i);
          }
          ok(qw && qw->dtype == MMP_BF16 && mmp_tensor_compute_dtype(qw) == MMP_BF16,
             "%s: the query weights are bf16 with compute dtype bf16", what);
          mmp_tensormap_free(sd);
          sd = NULL;
        }
        mmp_tensor_unref(o);
      } else if (d == 0) {
        bt_check(o, mmp_tensormap_get(bb, modes[m].ref), what);
        f32 = o;
      } else {
        bt_check(o, mmp_tensormap_get(bb, modes[m].ref), what);
        double r = sd_relerr(o, f32);
        if (!ok(r == 0.0, "%s: identical to the f32 run", what))
          diag("  relative difference %.3g", r);
        mmp_tensor_unref(o);
      }
      if (sd) {
        /* the towers' linear weights are half; embeddings and norms f32 */
        bool half = false, f32tab = false, f32norm = false;
        for (size_t i = 0; i < mmp_tensormap_size(sd); i++) {
          const char *n = mmp_tensormap_name(sd, i);
          const mmp_tensor_t *t = mmp_tensormap_at(sd, i);
          size_t l = strlen(n);
          if (l > 27 && !strcmp(n + l - 27, "attention.self.query.weight"))
            half = t->dtype == (d == 1 ? MMP_F16 : MMP_BF16);
          if (l >= 22 && !strcmp(n + l - 22, "word_embeddings.weight")) f32tab = t->dtype == MMP_F32;
          if (l > 16 && !strcmp(n + l - 16, "LayerNorm.weight")) f32norm = t->dtype == MMP_F32;
        }
        ok(half, "%s: the text tower's query weights are %s", what, DT[d]);
        ok(f32tab && f32norm, "%s: the word embeddings and the LayerNorm weights stay f32", what);
        mmp_tensormap_free(sd);
      }
      /* perturbed weights: the rounding of genuine f32 values */
      snprintf(what, sizeof what, "blip %s, perturbed f32 weights, weights_dtype %s%s", modes[m].mode, DT[cb ? 2 : d],
               cb ? ", compute_dtype bf16" : "");
      snprintf(text, sizeof text,
               "encoder = { name = \"blip\"; config = \"%s/blip_base/med_config.json\";"
               " weights = \"%s\"; prefix = \"mm_encoder.\"; num_heads = 4;"
               " enc_token_id = 97; weights_dtype = \"%s\";%s };",
               fx, pert, DT[cb ? 2 : d], cdt);
      o = run1(MMP_KIND_ENCODER, "encoder", text, modes[m].mode, in, "last_hidden_state", what, NULL);
      if (d == 0) {
        p32 = o;
        continue;
      }
      double r = sd_relerr(o, p32), tol = cb ? TOL_BF16_DOT : modes[m].tol[d];
      if (!ok(r > 0 && r <= tol, "%s: within %.0e of the f32 run (and not equal)", what, tol))
        diag("  relative difference %.3g", r);
      else
        diag("  %s: max |half - f32| / max |f32| = %.3g", what, r);
      mmp_tensor_unref(o);
    }
    mmp_tensor_unref(f32);
    mmp_tensor_unref(p32);
  }
  unlink(pert);
  mmp_tensormap_free(in);
  mmp_tensormap_free(bb);
}

/* ---- a whole txt2img run on random f32 weights: half vs f32 pixels ---- */
static uint8_t *read_rgb(const char *path, int *w, int *h) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  uint8_t *volatile px = NULL;
  png_bytep *volatile rows = NULL;
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
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  fclose(f);
  return px;
}

/* @cdt: compute_dtype of the three parts ("" or "bf16") */
static int run_txt2img(const char *outdir, const char *dt, const char *cdt) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
  snprintf(text, sizeof text,
           "task = { name = \"txt2img\"; prompt_file = \"%s/txt2img_prompts.txt\"; negative_prompt = \"blurry\";\n"
           "  guidance_scale = 7.5; width = 64; height = 64; steps = 6; seed = 42; rng = \"torch\"; batch_size = 2;\n"
           "  output_dir = \"%s\"; };\n"
           "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%s/pipe/tokenizer\"; };\n"
           "scheduler = { name = \"ddim\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";\n"
           "  clip_sample = false; set_alpha_to_one = false; steps_offset = 1; };\n"
           "text_encoder = { name = \"clip_text\"; config = \"%s/pipe/text_encoder/config.json\"; init_seed = 1;"
           " weights_dtype = \"%s\"; compute_dtype = \"%s\"; };\n"
           "unet = { name = \"unet2d_condition\"; config = \"%s/pipe/unet/config.json\"; init_seed = 2;"
           " weights_dtype = \"%s\"; compute_dtype = \"%s\"; };\n"
           "vae = { name = \"vae\"; config = \"%s/pipe/vae/config.json\"; init_seed = 3; weights_dtype = \"%s\";"
           " compute_dtype = \"%s\"; };\n",
           fx, outdir, fx, fx, dt, cdt, fx, dt, cdt, fx, dt, cdt);
  return sd_run_task(text, "half-txt2img", NULL);
}

static void check_txt2img(void) {
  mmp_registry_t *reg = mmp_registry_new();
  sd_env_add_dirs(reg);
  bool have = mmp_registry_find(reg, MMP_KIND_PROCESSOR, "clip_tokenizer") && mmp_registry_find(reg, MMP_KIND_SCHEDULER, "ddim");
  mmp_registry_free(reg);
  if (!have) {
    ok(true, "# SKIP txt2img needs the clip_tokenizer and ddim plugins");
    return;
  }
  const char *tmp = getenv("TMPDIR");
  /* the fourth run: bf16 weights with compute_dtype bf16 */
  static const char *const label[4] = {"f32", "f16", "bf16", "bf16, compute_dtype bf16"};
  char dir[4][4096];
  uint8_t *px[4] = {NULL, NULL, NULL, NULL};
  int n = 0;
  for (int d = 0; d < 4; d++) {
    snprintf(dir[d], sizeof dir[d], "%s/half_txt2img_%d_%d", tmp ? tmp : "/tmp", d, (int)getpid());
    ok(run_txt2img(dir[d], DT[d < 3 ? d : 2], d < 3 ? "" : "bf16") == 0,
       "txt2img 64x64, 6 steps, random weights, weights_dtype %s", label[d]);
  }
  /* both images of the batch, half vs f32 */
  /* max |difference| in 1/255: measured -, 1, 5, 8 (doc/tensor.md) */
  const int limit[4] = {0, 2, 8, 16};
  for (int d = 1; d < 4; d++) {
    int maxd = -1;
    double sum = 0;
    int64_t cnt = 0;
    for (int b = 0; b < 2; b++) {
      char p0[4200], p1[4200];
      int w0 = 0, h0 = 0, w1 = 0, h1 = 0;
      snprintf(p0, sizeof p0, "%s/%05d.png", dir[0], b);
      snprintf(p1, sizeof p1, "%s/%05d.png", dir[d], b);
      px[0] = read_rgb(p0, &w0, &h0);
      px[d] = read_rgb(p1, &w1, &h1);
      if (px[0] && px[d] && w0 == w1 && h0 == h1) {
        if (maxd < 0) maxd = 0;
        for (int64_t i = 0; i < (int64_t)w0 * h0 * 3; i++) {
          int df = abs((int)px[0][i] - (int)px[d][i]);
          if (df > maxd) maxd = df;
          sum += df;
          cnt++;
        }
        n++;
      } else {
        maxd = 999;
      }
      free(px[0]);
      free(px[d]);
    }
    if (!ok(maxd >= 0 && maxd <= limit[d], "txt2img weights_dtype %s: pixels within %d/255 of the f32 run", label[d],
            limit[d]))
      diag("  max difference %d/255", maxd);
    else
      diag("  txt2img %s vs f32: max %d/255, mean %.3f/255 over %lld values", label[d], maxd, cnt ? sum / cnt : 0.0,
           (long long)cnt);
  }
  for (int d = 0; d < 4; d++)
    for (int b = 0; b < 2; b++) {
      char p[4200];
      snprintf(p, sizeof p, "%s/%05d.png", dir[d], b);
      unlink(p);
    }
  for (int d = 0; d < 4; d++) rmdir(dir[d]);
  (void)n;
}

int main(void) {
  /* the f32 runs the half ones must equal bit for bit use the built-in
   * kernels too (OpenBLAS, the f32 default without AVX-512, sums in
   * another order) */
  setenv("MMPIPE_CPU_BLAS", "builtin", 0);
  mmp_tensormap_t *probe = sd_load("unet_io.safetensors");
  if (!probe) skip_all("fixtures missing");
  mmp_tensormap_free(probe);
  static const char *const unet_in[] = {"sample", "timestep", "encoder_hidden_states", NULL};
  static const char *const vae_in[] = {"latents", NULL};
  static const char *const clip_in[] = {"input_ids", NULL};
  /* tolerances: about twice the measured difference (doc/tensor.md) */
  const comp_case_t cases[] = {
      {"unet", MMP_KIND_MODEL, "model", "unet2d_condition", "unet", "unet_io.safetensors", NULL, unet_in, "sample",
       "out_sample", "conv_in.weight", "conv_norm_out.weight", 2e-3, 1.5e-2},
      {"vae decode", MMP_KIND_ENCODER, "encoder", "vae", "vae", "vae_io.safetensors", "decode", vae_in, "sample",
       "decoded", "decoder.conv_in.weight", "decoder.conv_norm_out.weight", 2e-3, 1.5e-2},
      {"clip text", MMP_KIND_ENCODER, "encoder", "clip_text", "text_encoder", "clip_text_io.safetensors", NULL, clip_in,
       "last_hidden_state", "last_hidden_state", "text_model.encoder.layers.0.self_attn.q_proj.weight",
       "text_model.final_layer_norm.weight", 2e-3, 1.5e-2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_component(&cases[i]);
  check_file_dtype();
  check_blip();
  check_txt2img();

  /* an unknown dtype: a config error naming the key, the file and line */
  {
    char fx[4096];
    snprintf(fx, sizeof fx, "%s/tests/fixtures/sd", tap_srcdir());
    sd_refused(MMP_KIND_MODEL, "model", "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\";\n"
               " weights_dtype = \"f8\"; };", fx, "test:2: weights_dtype: \"f8\" is not one of", "weights_dtype = \"f8\" is refused");
    sd_refused(MMP_KIND_MODEL, "model", "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\";\n"
               " compute_dtype = \"f16\"; };", fx, "test:2: compute_dtype: \"f16\" is not one of", "compute_dtype = \"f16\" is refused");
  }
  return done_testing();
}
