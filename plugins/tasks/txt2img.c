/* plugins/tasks/txt2img.c - text-to-image with a latent-diffusion model
 * (Stable Diffusion 1.x/2.x): tokenizer -> text encoder -> guided denoising
 * loop of UNet + scheduler -> VAE decode -> PNG files with their settings
 * recorded in text chunks. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

#include "plugins/common/sampling.h"
#include "plugins/processors/imagecommon.h"
#include "plugins/common/sd_common.h"

static const mmp_key_t t2i_keys[] = {
    {"prompts", MMP_TYPE_LIST, "[]", "prompts, num_images_per_prompt images each (or use prompt_file)", 0, 0},
    {"prompt_file", MMP_TYPE_STRING, "\"\"", "a text file with one prompt per line (empty lines skipped)", MMP_KEY_PATH, 0},
    {"negative_prompt", MMP_TYPE_STRING, "\"\"", "the unconditional prompt of classifier-free guidance", 0, 0},
    {"guidance_scale", MMP_TYPE_FLOAT, "7.5", "classifier-free guidance weight (<= 1: no guidance)", 0, 0},
    {"width", MMP_TYPE_INT, "512", "image width in pixels (a multiple of the VAE's downscale factor)", 0, 0},
    {"height", MMP_TYPE_INT, "512", "image height in pixels", 0, 0},
    {"steps", MMP_TYPE_INT, "50", "denoising steps", 0, 0},
    {"seed", MMP_TYPE_INT, "0", "seed of the run's one generator: initial latents, then the schedulers' step noise", 0, 0},
    {"seeds", MMP_TYPE_LIST, "[]", "one seed per image instead of seed: image i draws its latents and step noise from its own generator", 0, 0},
    {"num_images_per_prompt", MMP_TYPE_INT, "1", "images per prompt (diffusers' name): the prompt list repeated image-wise", 0, 0},
    {"rng", MMP_TYPE_STRING, "\"torch\"", "random numbers: torch (= torch.Generator().manual_seed(seed) on CPU) or philox", 0, 0},
    {"batch_size", MMP_TYPE_INT, "1", "images denoised together", 0, 0},
    {"output_dir", MMP_TYPE_STRING, "\"txt2img-out\"", "where the PNG files go (created if needed)", MMP_KEY_PATH, 0},
    {"init_latents", MMP_TYPE_STRING, "\"\"", "optional .safetensors with a tensor `latents` [N, C, h, w] used instead of random ones", MMP_KEY_PATH, 0},
    {"save_latents", MMP_TYPE_STRING, "\"\"", "optional .safetensors the final latents go to (tensor `latents` [images, C, h, w], before decoding)", MMP_KEY_PATH, 0},
    {"tokenizer", MMP_TYPE_COMPONENT, "\"clip_tokenizer\"", "the tokenizer (processor) group", 0, MMP_KIND_PROCESSOR},
    {"text_encoder", MMP_TYPE_COMPONENT, "\"clip_text\"", "the text encoder group", 0, MMP_KIND_ENCODER},
    {"unet", MMP_TYPE_COMPONENT, "\"unet2d_condition\"", "the denoising model group", 0, MMP_KIND_MODEL},
    {"vae", MMP_TYPE_COMPONENT, "\"vae\"", "the autoencoder group", 0, MMP_KIND_ENCODER},
    {"scheduler", MMP_TYPE_COMPONENT, "\"ddim\"", "the sampler group", 0, MMP_KIND_SCHEDULER},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct t2i {
  char **prompts;
  size_t n_prompts;
  size_t n_images; /* n_prompts * per_prompt */
  int64_t per_prompt;
  int64_t *seeds; /* one per image, or NULL: one generator seeded with seed */
  char *negative;
  double guidance;
  int64_t width, height, steps, seed, batch;
  mmp_rng_mode_t rng_mode;
  char out_dir[4096];
  char init_latents[4096];
  char save_latents[4096];
} t2i_t;

/* The image's prompt: diffusers repeats each prompt num_images_per_prompt
 * times in a row. */
static const char *image_prompt(const t2i_t *t, size_t image) { return t->prompts[image / (size_t)t->per_prompt]; }

static void t2i_destroy(void *self) {
  t2i_t *t = self;
  if (!t) return;
  for (size_t i = 0; i < t->n_prompts; i++) free(t->prompts[i]);
  free(t->prompts);
  free(t->seeds);
  free(t->negative);
  free(t);
}

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int add_prompt(t2i_t *t, const char *s) {
  char **p = realloc(t->prompts, (t->n_prompts + 1) * sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  t->prompts = p;
  if (!(t->prompts[t->n_prompts] = strdup(s))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  t->n_prompts++;
  return 0;
}

static int read_prompt_file(t2i_t *t, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return mmp_error_set(MMP_EIO, "txt2img: %s: %s", path, strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = 0;
  while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len > 0) rc = add_prompt(t, line);
  }
  free(line);
  fclose(f);
  return rc;
}

static int t2i_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  t2i_t *t = calloc(1, sizeof *t);
  if (!t) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = 0;
  const char *neg = "", *rng = "torch";
  char pfile[4096] = "";
  size_t np = 0, ns = 0;
  if ((rc = mmp_config_get_float(cfg, "guidance_scale", &t->guidance)) ||
      (rc = mmp_config_get_int(cfg, "width", &t->width)) || (rc = mmp_config_get_int(cfg, "height", &t->height)) ||
      (rc = mmp_config_get_int(cfg, "steps", &t->steps)) || (rc = mmp_config_get_int(cfg, "seed", &t->seed)) ||
      (rc = mmp_config_get_int(cfg, "batch_size", &t->batch)) ||
      (rc = mmp_config_get_int(cfg, "num_images_per_prompt", &t->per_prompt)) ||
      (rc = mmp_config_get_string(cfg, "negative_prompt", &neg)) || (rc = mmp_config_get_string(cfg, "rng", &rng)) ||
      (rc = mmp_config_get_path(cfg, "output_dir", t->out_dir, sizeof t->out_dir)) ||
      (rc = mmp_config_get_path(cfg, "init_latents", t->init_latents, sizeof t->init_latents)) ||
      (rc = mmp_config_get_path(cfg, "save_latents", t->save_latents, sizeof t->save_latents)) ||
      (rc = mmp_config_get_path(cfg, "prompt_file", pfile, sizeof pfile)) ||
      (rc = mmp_config_get_list_size(cfg, "prompts", &np)) || (rc = mmp_config_get_list_size(cfg, "seeds", &ns)))
    goto fail;
  if (!(t->negative = strdup(neg))) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto fail;
  }
  if (mmp_rng_mode_parse(rng, &t->rng_mode) < 0) {
    rc = cfg_error(cfg, "rng", "must be \"torch\" or \"philox\"");
    goto fail;
  }
  for (size_t i = 0; i < np; i++) {
    const char *s = NULL;
    if ((rc = mmp_config_get_list_string(cfg, "prompts", i, &s)) || (rc = add_prompt(t, s))) goto fail;
  }
  if (pfile[0] && (rc = read_prompt_file(t, pfile))) goto fail;
  if (t->n_prompts == 0) {
    rc = cfg_error(cfg, "prompts", "no prompts (give `prompts` or a non-empty `prompt_file`)");
    goto fail;
  }
  if (t->width <= 0 || t->width % 8) { rc = cfg_error(cfg, "width", "must be a positive multiple of 8"); goto fail; }
  if (t->height <= 0 || t->height % 8) { rc = cfg_error(cfg, "height", "must be a positive multiple of 8"); goto fail; }
  if (t->steps < 1 || t->steps > 10000) { rc = cfg_error(cfg, "steps", "must be 1..10000"); goto fail; }
  if (t->batch < 1 || t->batch > 1024) { rc = cfg_error(cfg, "batch_size", "must be 1..1024"); goto fail; }
  if (t->per_prompt < 1 || t->per_prompt > 1024) {
    rc = cfg_error(cfg, "num_images_per_prompt", "must be 1..1024");
    goto fail;
  }
  t->n_images = t->n_prompts * (size_t)t->per_prompt;
  if (t->seed < 0) { rc = cfg_error(cfg, "seed", "must be >= 0"); goto fail; }
  if (ns > 0) {
    const mmp_config_t *sn = mmp_config_lookup(cfg, "seed");
    if (sn && mmp_config_layer(sn) != MMP_LAYER_DEFAULT) {
      rc = cfg_error(cfg, "seeds", "give either seed (one generator) or seeds (one per image), not both");
      goto fail;
    }
    if (ns != t->n_images) {
      char msg[160];
      snprintf(msg, sizeof msg, "%zu seeds for %zu images (%zu prompts x num_images_per_prompt %lld): give one per image",
               ns, t->n_images, t->n_prompts, (long long)t->per_prompt);
      rc = cfg_error(cfg, "seeds", msg);
      goto fail;
    }
    if (!(t->seeds = calloc(ns, sizeof *t->seeds))) {
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      goto fail;
    }
    for (size_t i = 0; i < ns; i++) {
      if ((rc = mmp_config_get_list_int(cfg, "seeds", i, &t->seeds[i]))) goto fail;
      if (t->seeds[i] < 0) { rc = cfg_error(cfg, "seeds", "must be >= 0"); goto fail; }
    }
  }
  if (!t->out_dir[0]) { rc = cfg_error(cfg, "output_dir", "must not be empty"); goto fail; }
  *out_self = t;
  return 0;
fail:
  t2i_destroy(t);
  return rc ? rc : MMP_ECONFIG;
}

/* ---------------------------------------------------------------- PNG */

static int mkdir_p(const char *dir) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "txt2img: mkdir %s: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "txt2img: mkdir %s: %s", buf, strerror(errno));
  return 0;
}

typedef struct png_meta {
  const char *keys[8];
  const char *vals[8];
  int n;
} png_meta_t;

/* ---------------------------------------------------------------- run */

typedef struct comps {
  mmp_component_t *tok, *text, *unet, *vae, *sched;
} comps_t;

static int forward(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder/model share the layout */
  return ops->forward(c->self, method, in, out);
}

/* Token ids for @texts -> last_hidden_state [n, L, D] (transfer full). */
static mmp_tensor_t *encode_prompts(comps_t *c, const char *const *texts, size_t n) {
  const mmp_processor_ops_t *tops = (const mmp_processor_ops_t *)c->tok->plugin;
  if (tops->base.struct_size < sizeof(mmp_processor_ops_t) || !tops->encode_text) {
    mmp_error_set(MMP_EPLUGIN, "txt2img: tokenizer '%s' cannot encode text", tops->base.name);
    return NULL;
  }
  mmp_tensormap_t *tk = mmp_tensormap_new(), *enc = mmp_tensormap_new(), *in = mmp_tensormap_new();
  mmp_tensor_t *h = NULL;
  if (!tk || !enc || !in) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  if (tops->encode_text(c->tok->self, texts, n, tk) < 0) goto done;
  mmp_tensor_t *ids = mmp_tensormap_need(tk, "input_ids");
  if (!ids) goto done;
  /* Stable Diffusion 1.x feeds the text encoder without the padding mask. */
  if (mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids)) < 0) goto done;
  if (forward(c->text, NULL, in, enc) < 0) goto done;
  h = mmp_tensormap_need(enc, "last_hidden_state");
  if (h) mmp_tensor_ref(h);
done:
  mmp_tensormap_free(tk);
  mmp_tensormap_free(enc);
  mmp_tensormap_free(in);
  return h;
}

static double scalar_of(const mmp_tensormap_t *m, const char *name, double def) {
  mmp_tensor_t *t = mmp_tensormap_get(m, name);
  if (!t || mmp_tensor_numel(t) != 1) return def;
  int64_t idx[MMP_MAX_DIMS] = {0};
  return mmp_tensor_get(t, idx);
}

static const char *group_str(const mmp_config_t *root, const char *path) {
  const mmp_config_t *n = mmp_config_lookup(root, path);
  return n ? mmp_config_string(n) : NULL;
}

/* Standard normal noise [nb, C, h, w] for images first..first+nb-1 (@chw:
 * C, h, w): one draw from the run's generator, or with seeds one
 * [1, C, h, w] draw from each image's own generator, as diffusers'
 * randn_tensor does with a list of generators. (transfer full) */
static mmp_tensor_t *draw_noise(const t2i_t *t, mmp_rng_t **gens, mmp_backend_t *be, size_t first, size_t nb,
                                const int64_t *chw) {
  if (!t->seeds) {
    int64_t shape[4] = {(int64_t)nb, chw[0], chw[1], chw[2]};
    return mmp_rng_randn(gens[0], be, 4, shape);
  }
  int64_t one[4] = {1, chw[0], chw[1], chw[2]};
  mmp_tensor_t **parts = calloc(nb, sizeof *parts);
  if (!parts) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  size_t k = 0;
  while (k < nb && (parts[k] = mmp_rng_randn(gens[first + k], be, 4, one))) k++;
  mmp_tensor_t *r = k < nb ? NULL : nb == 1 ? mmp_tensor_ref(parts[0]) : mmp_concat(parts, (int)nb, 0);
  for (size_t i = 0; i < k; i++) mmp_tensor_unref(parts[i]);
  free(parts);
  return r;
}

/* The step noise of sd_sample: a draw like the initial latents. */
typedef struct noise_arg {
  const t2i_t *t;
  mmp_rng_t **gens;
  mmp_backend_t *be;
  size_t first, nb;
  const int64_t *chw;
} noise_arg_t;

static mmp_tensor_t *step_noise(void *arg) {
  const noise_arg_t *a = arg;
  return draw_noise(a->t, a->gens, a->be, a->first, a->nb, a->chw);
}

/* Images first..first+nb-1: *images gets the decoded batch in [0, 1] and
 * *latents (nullable) the final latents. The random draws, in diffusers'
 * order: the initial latents (unless init_latents), then at each step whose
 * scheduler asks for noise (step_noise) a draw shaped like the latents. */
static int denoise_batch(t2i_t *t, comps_t *c, mmp_context_t *ctx, mmp_rng_t **gens, mmp_tensor_t *init,
                         size_t first, size_t nb, double scaling, int down, int64_t latent_ch,
                         mmp_tensor_t **images, mmp_tensor_t **latents) {
  mmp_backend_t *be = mmp_context_backend(ctx);
  bool cfg = t->guidance > 1.0;
  int rc = 0;
  mmp_tensor_t *ehs = NULL, *lat = NULL, *cond = NULL, *unc = NULL;
  const char **texts = calloc(nb, sizeof *texts);
  if (!texts) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < nb; i++) texts[i] = image_prompt(t, first + i);
  if (!(cond = encode_prompts(c, texts, nb))) goto fail;
  if (cfg) {
    for (size_t i = 0; i < nb; i++) texts[i] = t->negative;
    if (!(unc = encode_prompts(c, texts, nb))) goto fail;
    mmp_tensor_t *two[2] = {unc, cond};
    if (!(ehs = mmp_concat(two, 2, 0))) goto fail;
  } else {
    ehs = mmp_tensor_ref(cond);
  }
  /* initial latents */
  int64_t ls[4] = {(int64_t)nb, latent_ch, t->height / down, t->width / down};
  if (init) {
    lat = mmp_slice(init, 0, (int64_t)first, (int64_t)(first + nb), 1);
    lat = sd_swap(lat, sd_input_f32(lat, be));
    if (lat && (lat->shape[1] != ls[1] || lat->shape[2] != ls[2] || lat->shape[3] != ls[3])) {
      rc = mmp_error_set(MMP_ESHAPE, "txt2img: init_latents must be [N, %lld, %lld, %lld]", (long long)ls[1],
                         (long long)ls[2], (long long)ls[3]);
      goto done;
    }
  } else {
    lat = draw_noise(t, gens, be, first, nb, ls + 1);
  }
  if (!lat) goto fail;
  char label[64];
  snprintf(label, sizeof label, "txt2img %zu-%zu/%zu", first + 1, first + nb, t->n_images);
  noise_arg_t na = {t, gens, be, first, nb, ls + 1};
  sd_sampler_t smp = {.unet = c->unet, .sched = c->sched, .ctx = ctx, .who = "txt2img", .label = label,
                      .steps = t->steps, .guided = cfg, .guidance = t->guidance, .context = ehs,
                      .noise = step_noise, .noise_arg = &na};
  if ((rc = sd_sample(&smp, &lat)) < 0) goto done;
  if (latents) *latents = mmp_tensor_ref(lat);
  /* decode: latents / scaling_factor -> [-1, 1] -> [0, 1] */
  {
    mmp_tensormap_t *di = mmp_tensormap_new(), *dout = mmp_tensormap_new();
    mmp_tensor_t *z = mmp_scale(lat, 1.0 / scaling, 0.0);
    if (!di || !dout || !z) {
      mmp_tensor_unref(z);
      mmp_tensormap_free(di);
      mmp_tensormap_free(dout);
      goto fail;
    }
    mmp_tensormap_set(di, "latents", z);
    if (forward(c->vae, "decode", di, dout) < 0) {
      mmp_tensormap_free(di);
      mmp_tensormap_free(dout);
      goto fail;
    }
    mmp_tensor_t *img = mmp_tensormap_need(dout, "sample");
    img = img ? mmp_scale(img, 0.5, 0.5) : NULL;
    img = sd_swap(img, img ? mmp_clamp(img, 0.0, 1.0) : NULL);
    mmp_tensormap_free(di);
    mmp_tensormap_free(dout);
    if (!img) goto fail;
    *images = img;
  }
  goto done;
fail:
  rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
done:
  free(texts);
  mmp_tensor_unref(ehs);
  mmp_tensor_unref(lat);
  mmp_tensor_unref(cond);
  mmp_tensor_unref(unc);
  return rc;
}

static int save_images(t2i_t *t, mmp_context_t *ctx, mmp_tensor_t *img, size_t first) {
  int64_t B = img->shape[0], C = img->shape[1], H = img->shape[2], W = img->shape[3];
  if (C != 3) return mmp_error_set(MMP_ESHAPE, "txt2img: the VAE gave %lld channels, PNG output needs 3", (long long)C);
  size_t n = (size_t)(B * C * H * W);
  float *px = malloc(n * sizeof *px);
  uint8_t *rgb = malloc((size_t)(H * W * 3));
  int rc = 0;
  if (!px || !rgb) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  else rc = mmp_tensor_to_host(img, px, n * sizeof *px);
  const mmp_config_t *root = mmp_context_config(ctx);
  const char *sched = group_str(root, "scheduler.name");
  const char *model = group_str(root, "unet.model_dir");
  if (!model || !*model) model = group_str(root, "unet.weights");
  char seed[32], steps[32], gs[32];
  snprintf(steps, sizeof steps, "%lld", (long long)t->steps);
  snprintf(gs, sizeof gs, "%g", t->guidance);
  for (int64_t b = 0; rc == 0 && b < B; b++) {
    /* [C, H, W] float in [0, 1] -> interleaved RGB, rounded as diffusers'
     * numpy_to_pil does ((x * 255).round()). */
    for (int64_t y = 0; y < H; y++)
      for (int64_t x = 0; x < W; x++)
        for (int64_t ch = 0; ch < 3; ch++) {
          float v = px[((b * C + ch) * H + y) * W + x] * 255.0f;
          v = nearbyintf(v);
          rgb[(y * W + x) * 3 + ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    /* each image's own seed: its generator's, or the run's one */
    snprintf(seed, sizeof seed, "%lld", (long long)(t->seeds ? t->seeds[first + (size_t)b] : t->seed));
    png_meta_t meta = {.n = 0};
    meta.keys[meta.n] = "prompt", meta.vals[meta.n++] = image_prompt(t, first + (size_t)b);
    meta.keys[meta.n] = "negative_prompt", meta.vals[meta.n++] = t->negative;
    meta.keys[meta.n] = "seed", meta.vals[meta.n++] = seed;
    meta.keys[meta.n] = "scheduler", meta.vals[meta.n++] = sched ? sched : "";
    meta.keys[meta.n] = "steps", meta.vals[meta.n++] = steps;
    meta.keys[meta.n] = "guidance_scale", meta.vals[meta.n++] = gs;
    meta.keys[meta.n] = "model", meta.vals[meta.n++] = model ? model : "";
    meta.keys[meta.n] = "Software", meta.vals[meta.n++] = "mmpipe txt2img";
    char path[4200];
    snprintf(path, sizeof path, "%s/%05zu.png", t->out_dir, first + (size_t)b);
    mmp_image_t im = {.data = rgb, .w = (int)W, .h = (int)H, .c = 3};
    rc = mmp_image_png_write_text(&im, path, meta.keys, meta.vals, meta.n);
    if (rc == 0) MMP_INFO("txt2img", "wrote %s", path);
  }
  free(px);
  free(rgb);
  return rc;
}

static int t2i_run(void *self, mmp_context_t *ctx) {
  t2i_t *t = self;
  comps_t c = {0};
  size_t n_gens = t->seeds ? t->n_images : 1, n_done = 0;
  mmp_rng_t **gens = calloc(n_gens, sizeof *gens);
  mmp_tensor_t *init = NULL, **finals = NULL;
  int rc = 0;
  if (!gens) return mmp_error_set(MMP_ENOMEM, "out of memory");
  if (!(c.tok = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "tokenizer")) ||
      !(c.text = mmp_component_create(ctx, MMP_KIND_ENCODER, "text_encoder")) ||
      !(c.unet = mmp_component_create(ctx, MMP_KIND_MODEL, "unet")) ||
      !(c.vae = mmp_component_create(ctx, MMP_KIND_ENCODER, "vae")) ||
      !(c.sched = mmp_component_create(ctx, MMP_KIND_SCHEDULER, "scheduler"))) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
    goto done;
  }
  /* the VAE's scaling factor and downscale factor */
  mmp_tensormap_t *info_in = mmp_tensormap_new(), *info = mmp_tensormap_new();
  if (!info_in || !info || forward(c.vae, "info", info_in, info) < 0) {
    mmp_tensormap_free(info_in);
    mmp_tensormap_free(info);
    rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    goto done;
  }
  double scaling = scalar_of(info, "scaling_factor", 0.18215);
  int down = (int)scalar_of(info, "downscale_factor", 8);
  int64_t lch = (int64_t)scalar_of(info, "latent_channels", 4);
  mmp_tensormap_free(info_in);
  mmp_tensormap_free(info);
  if (t->width % down || t->height % down) {
    rc = mmp_error_set(MMP_ECONFIG, "txt2img: width and height must be multiples of the VAE's downscale factor %d", down);
    goto done;
  }
  if (t->init_latents[0]) {
    mmp_safetensors_t *st = mmp_safetensors_open(t->init_latents);
    init = st ? mmp_safetensors_get(st, "latents", mmp_context_backend(ctx), MMP_F32) : NULL;
    mmp_safetensors_close(st);
    if (!init) {
      rc = mmp_error_prefix("txt2img: init_latents: ");
      goto done;
    }
    if (init->ndim != 4 || init->shape[0] < (int64_t)t->n_images) {
      rc = mmp_error_set(MMP_ESHAPE, "txt2img: init_latents must hold [N >= %zu, C, h, w]", t->n_images);
      goto done;
    }
  }
  /* the generators also feed the step noise when the latents are given */
  for (size_t i = 0; i < n_gens; i++)
    if (!(gens[i] = mmp_rng_new((uint64_t)(t->seeds ? t->seeds[i] : t->seed), t->rng_mode))) {
      rc = mmp_error_code();
      goto done;
    }
  size_t n_batches = (t->n_images + (size_t)t->batch - 1) / (size_t)t->batch;
  if (t->save_latents[0] && !(finals = calloc(n_batches, sizeof *finals))) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  if ((rc = mkdir_p(t->out_dir)) < 0) goto done;
  for (size_t first = 0; first < t->n_images; first += (size_t)t->batch) {
    size_t nb = t->n_images - first < (size_t)t->batch ? t->n_images - first : (size_t)t->batch;
    mmp_tensor_t *img = NULL;
    rc = denoise_batch(t, &c, ctx, gens, init, first, nb, scaling, down, lch, &img, finals ? &finals[n_done] : NULL);
    if (finals && finals[n_done]) n_done++;
    if (rc < 0) goto done;
    rc = save_images(t, ctx, img, first);
    mmp_tensor_unref(img);
    if (rc < 0) goto done;
  }
  if (finals) {
    mmp_tensor_t *all = n_done == 1 ? mmp_tensor_ref(finals[0]) : mmp_concat(finals, (int)n_done, 0);
    mmp_tensormap_t *m = all ? mmp_tensormap_new() : NULL;
    static const char *const md[] = {"format", "pt", NULL};
    if (!m || mmp_tensormap_set(m, "latents", all) < 0) {
      if (!m) mmp_tensor_unref(all);
      rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    } else if ((rc = mmp_safetensors_save_map(t->save_latents, m, md)) < 0) {
      rc = mmp_error_prefix("txt2img: save_latents: ");
    } else {
      MMP_INFO("txt2img", "wrote %s", t->save_latents);
    }
    mmp_tensormap_free(m);
  }
done:
  for (size_t i = 0; finals && i < n_done; i++) mmp_tensor_unref(finals[i]);
  free(finals);
  mmp_tensor_unref(init);
  for (size_t i = 0; i < n_gens; i++) mmp_rng_free(gens[i]);
  free(gens);
  mmp_component_free(c.sched);
  mmp_component_free(c.vae);
  mmp_component_free(c.unet);
  mmp_component_free(c.text);
  mmp_component_free(c.tok);
  return rc;
}

static const mmp_task_ops_t t2i_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "txt2img", "1.0",
                            "text-to-image with a latent-diffusion model (Stable Diffusion 1.x/2.x)", t2i_keys,
                            t2i_create, t2i_destroy),
    .run = t2i_run,
};

MMP_EXPORT int mmp_plugin_task_txt2img_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_txt2img_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &t2i_ops.base); }
