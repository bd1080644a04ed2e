/* plugins/tasks/story.c - AR-LDM story visualization and continuation: the
 * frames of a story drawn one by one, each conditioned on its caption (CLIP)
 * and on the earlier frames and captions (BLIP multimodal), as ARLDM.sample().
 *
 * Context of target frame i (V targets, src_V source frames, S tokens each):
 *   [caption i + type 0 | frame 0 + type 1 + time 0 | ... | frame src_V-1 + ...]
 * key mask = NOT(CLIP mask ++ BLIP masks) OR (over the last V*S columns)
 * block k masked when k >= i. The unconditional half: CLIP(null caption) +
 * type 0 ++ BLIP(black image, null caption) + type 1 + time j, its mask only
 * the triangular part. After frame i is drawn, BLIP(frame i, its caption) +
 * type 1 + time j (j = i + src_V - V) replaces slot j of every conditional
 * context.
 *
 * Random numbers: one generator seeded once per run (torch: as
 * pl.seed_everything(seed)); each frame draws its initial latents
 * randn([B, C, h, w]) from it, frame by frame, story batch by story batch;
 * nothing else draws. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/file.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

#include "plugins/common/arldm.h"
#include "plugins/common/sampling.h"
#include "plugins/common/sd_common.h"
#include "plugins/common/fidfeat.h"
#include "plugins/processors/imagecommon.h"

#include <mmpipe/frechet.h>

#ifdef PACKAGE_VERSION
#define STORY_MMPIPE_VERSION PACKAGE_VERSION
#else
#define STORY_MMPIPE_VERSION "unknown"
#endif

static const mmp_key_t story_keys[] = {
    {"task", MMP_TYPE_STRING, "\"visualization\"", "visualization (5 frames from 5 captions) or continuation (4 frames after the first)", 0, 0},
    {"arldm", MMP_TYPE_STRING, "\"\"", "the AR-LDM state dict: a .safetensors file with AR-LDM's names, or a torch.save file (Lightning's last.ckpt: the "
     "names under state_dict.; or a bare state dict); modal_type_embeddings, time_embeddings and the null buffers are read "
     "from it", MMP_KEY_PATH, 0},
    {"story_tensors", MMP_TYPE_STRING, "\"\"",
     "stories as tensors: captions, caption_mask (CLIP ids [N, 5, S]), blip_captions, blip_mask (BLIP ids [N, 5, S]), frames (u8 [N, 5, H, W, 3])",
     MMP_KEY_PATH, 0},
    {"stories_file", MMP_TYPE_STRING, "\"\"",
     "stories from the user (instead of story_tensors): JSON [{\"id\": ..., \"captions\": [5 strings], \"first_image\": \"a.png\"}, ...]; "
     "first_image (relative to the file) is required for continuation",
     MMP_KEY_PATH, 0},
    {"dataset", MMP_TYPE_COMPONENT, NULL,
     "stories from a story dataset plugin (instead of story_tensors/stories_file): e.g. pororo with split = \"test\", the tokenizer "
     "vocabularies and max_length = S; its task must match; CLIP captions, BLIP captions, source_images (BLIP pixels) and the "
     "target images (ground truth) of each item are used",
     0, MMP_KIND_DATASET},
    {"clip_tokenizer", MMP_TYPE_COMPONENT, NULL,
     "stories_file (required with it): the caption tokenizer (max_length = S, truncation = false, the dataset's new_tokens)", 0, MMP_KIND_PROCESSOR},
    {"blip_tokenizer", MMP_TYPE_COMPONENT, NULL,
     "stories_file (required with it): BLIP's tokenizer (max_length = S, truncation = false, blip = true, new_tokens)", 0, MMP_KIND_PROCESSOR},
    {"stories", MMP_TYPE_STRING, "\"\"",
     "which stories: \"a:b\" (a included, b excluded; either may be left out), \"\" = all; the generator still advances over the "
     "stories before a, so they get the pictures of a whole run", 0, 0},
    {"guidance_scale", MMP_TYPE_FLOAT, "6.0", "classifier-free guidance weight", 0, 0},
    {"width", MMP_TYPE_INT, "512", "frame width in pixels", 0, 0},
    {"height", MMP_TYPE_INT, "512", "frame height in pixels", 0, 0},
    {"steps", MMP_TYPE_INT, "250", "denoising steps per frame", 0, 0},
    {"seed", MMP_TYPE_INT, "0", "seed of the one generator of the run (pl.seed_everything)", 0, 0},
    {"rng", MMP_TYPE_STRING, "\"torch\"", "torch (as AR-LDM on CPU) or philox", 0, 0},
    {"batch_size", MMP_TYPE_INT, "1", "stories denoised together", 0, 0},
    {"output_dir", MMP_TYPE_STRING, "\"story-out\"", "where the outputs go (created if needed)", MMP_KEY_PATH, 0},
    {"sample_output_dir", MMP_TYPE_STRING, "\"\"", "also write each frame as {k:04d}.png here, k = story * V + frame (AR-LDM's numbering)", MMP_KEY_PATH, 0},
    {"save_tensors", MMP_TYPE_BOOL, "false",
     "write story_tensors.safetensors: story{S}.frame{F}.{context,uncond_context,mask,uncond_mask,latents_initial,latents_final,image}", 0, 0},
    {"writeback_from", MMP_TYPE_STRING, "\"\"",
     "verification: write back the frames frame{F}.image (u8 [B, H, W, 3], the stories of one batch) of this file instead of the drawn ones, "
     "to compare frame by frame with a reference run (a 1/255 rounding flip in a fed-back frame otherwise moves all later frames)",
     MMP_KEY_PATH, 0},
    {"calculate_fid", MMP_TYPE_BOOL, "false",
     "at the end of the run, the FID (AR-LDM's 64x64 protocol) of the frames drawn against the ground-truth frames of the "
     "same stories (frames 1-4 for continuation): printed as 'FID: <value>' and written to run.json",
     0, 0},
    {"fid_encoder", MMP_TYPE_COMPONENT, NULL,
     "calculate_fid (required with it): the FID Inception, e.g. { name = \"inception_fid\"; weights = \"pt_inception.pth\"; }",
     0, MMP_KIND_ENCODER},
    {"text_encoder", MMP_TYPE_COMPONENT, "\"clip_text\"", "the caption encoder group (AR-LDM: prefix text_encoder.)", 0, MMP_KIND_ENCODER},
    {"mm_encoder", MMP_TYPE_COMPONENT, "\"blip\"", "the multimodal encoder group (AR-LDM: prefix mm_encoder.)", 0, MMP_KIND_ENCODER},
    {"blip_processor", MMP_TYPE_COMPONENT, "\"image_resize\"", "frames -> BLIP input (224 bilinear, CLIP normalisation)", 0, MMP_KIND_PROCESSOR},
    {"unet", MMP_TYPE_COMPONENT, "\"unet2d_condition\"", "the denoising model group (AR-LDM: prefix unet.)", 0, MMP_KIND_MODEL},
    {"vae", MMP_TYPE_COMPONENT, "\"vae\"", "the autoencoder group (AR-LDM: prefix vae.)", 0, MMP_KIND_ENCODER},
    {"scheduler", MMP_TYPE_COMPONENT, "\"ddim\"", "the sampler group", 0, MMP_KIND_SCHEDULER},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct story {
  bool continuation;
  double guidance;
  int64_t width, height, steps, seed, batch;
  int64_t first, last; /* stories [first, last); last < 0: to the end */
  bool save_tensors;
  bool calc_fid; /* calculate_fid */
  bool dataset; /* a `dataset` group is configured */
  mmp_rng_mode_t rng_mode;
  char arldm[4096], input[4096], out_dir[4096], writeback[4096], sample_dir[4096], stories[4096];
} story_t;

static void story_destroy(void *self) { free(self); }

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int story_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  story_t *t = calloc(1, sizeof *t);
  if (!t) return mmp_error_set(MMP_ENOMEM, "out of memory");
  const char *task = "visualization", *rng = "torch", *range = "";
  int rc;
  if ((rc = mmp_config_get_string(cfg, "task", &task)) || (rc = mmp_config_get_float(cfg, "guidance_scale", &t->guidance)) ||
      (rc = mmp_config_get_int(cfg, "width", &t->width)) || (rc = mmp_config_get_int(cfg, "height", &t->height)) ||
      (rc = mmp_config_get_int(cfg, "steps", &t->steps)) || (rc = mmp_config_get_int(cfg, "seed", &t->seed)) ||
      (rc = mmp_config_get_int(cfg, "batch_size", &t->batch)) || (rc = mmp_config_get_string(cfg, "rng", &rng)) ||
      (rc = mmp_config_get_bool(cfg, "save_tensors", &t->save_tensors)) ||
      (rc = mmp_config_get_bool(cfg, "calculate_fid", &t->calc_fid)) ||
      (rc = mmp_config_get_string(cfg, "stories", &range)) ||
      (rc = mmp_config_get_path(cfg, "arldm", t->arldm, sizeof t->arldm)) ||
      (rc = mmp_config_get_path(cfg, "story_tensors", t->input, sizeof t->input)) ||
      (rc = mmp_config_get_path(cfg, "output_dir", t->out_dir, sizeof t->out_dir)) ||
      (rc = mmp_config_get_path(cfg, "writeback_from", t->writeback, sizeof t->writeback)) ||
      (rc = mmp_config_get_path(cfg, "sample_output_dir", t->sample_dir, sizeof t->sample_dir)) ||
      (rc = mmp_config_get_path(cfg, "stories_file", t->stories, sizeof t->stories)))
    goto fail;
  t->first = 0;
  t->last = -1;
  if (range && *range) {
    const char *colon = strchr(range, ':');
    char *end = NULL;
    if (!colon) { rc = cfg_error(cfg, "stories", "expected \"a:b\""); goto fail; }
    if (colon != range) {
      t->first = strtoll(range, &end, 10);
      if (end != colon || t->first < 0) { rc = cfg_error(cfg, "stories", "bad start (a of \"a:b\")"); goto fail; }
    }
    if (colon[1]) {
      t->last = strtoll(colon + 1, &end, 10);
      if (*end || t->last < t->first) { rc = cfg_error(cfg, "stories", "bad end (b of \"a:b\", b >= a)"); goto fail; }
    }
  }
  if (!strcmp(task, "continuation")) t->continuation = true;
  else if (strcmp(task, "visualization")) { rc = cfg_error(cfg, "task", "must be visualization or continuation"); goto fail; }
  if (mmp_rng_mode_parse(rng, &t->rng_mode) < 0) { rc = cfg_error(cfg, "rng", "must be \"torch\" or \"philox\""); goto fail; }
  if (t->width <= 0 || t->width % 8) { rc = cfg_error(cfg, "width", "must be a positive multiple of 8"); goto fail; }
  if (t->height <= 0 || t->height % 8) { rc = cfg_error(cfg, "height", "must be a positive multiple of 8"); goto fail; }
  if (t->steps < 1 || t->steps > 10000) { rc = cfg_error(cfg, "steps", "must be 1..10000"); goto fail; }
  if (t->batch < 1 || t->batch > 1024) { rc = cfg_error(cfg, "batch_size", "must be 1..1024"); goto fail; }
  if (t->seed < 0) { rc = cfg_error(cfg, "seed", "must be >= 0"); goto fail; }
  if (!t->arldm[0]) { rc = cfg_error(cfg, "arldm", "the AR-LDM state dict is required"); goto fail; }
  t->dataset = ctx && mmp_config_lookup(mmp_context_config(ctx), "dataset") != NULL;
  if ((t->input[0] != 0) + (t->stories[0] != 0) + t->dataset != 1) {
    rc = cfg_error(cfg, "story_tensors", "give exactly one of story_tensors, stories_file and a dataset group");
    goto fail;
  }
  if (!t->out_dir[0]) { rc = cfg_error(cfg, "output_dir", "must not be empty"); goto fail; }
  if (t->calc_fid && !(ctx && mmp_config_lookup(mmp_context_config(ctx), "fid_encoder"))) {
    rc = cfg_error(cfg, "calculate_fid", "needs an fid_encoder group ({ name = \"inception_fid\"; weights = ...; })");
    goto fail;
  }
  if (t->calc_fid && t->stories[0]) {
    rc = cfg_error(cfg, "calculate_fid", "needs ground-truth frames: story_tensors or a dataset (a stories_file has none)");
    goto fail;
  }
  *out_self = t;
  return 0;
fail:
  free(t);
  return rc ? rc : MMP_ECONFIG;
}

/* ---------------------------------------------------------------- pieces */

typedef struct comps {
  mmp_component_t *clip, *blip, *proc, *unet, *vae, *sched;
} comps_t;

/* What a run holds: the AR-LDM extras and the null context. */
typedef struct run {
  story_t *t;
  arldm_file_t src;               /* the `arldm` file, open for the whole run */
  comps_t c;
  mmp_backend_t *be;
  int64_t V, src_V, S, D;
  int64_t clip_rows, blip_rows;   /* token table rows of the checkpoint, -1 unknown */
  mmp_tensor_t *type, *time;      /* [2, D], [5, D] */
  mmp_tensor_t *uncond;           /* [1, (src_V + 1) S, D] */
  mmp_tensormap_t *saved;         /* save_tensors */
  mmp_tensormap_t *replay;        /* writeback_from */
  const char *sched_name;
  const mmp_config_t *cfg_root;   /* for run.json */
  double *frame_secs;             /* [n stories * V] seconds, -1 = skipped (resumed) */
  mmp_component_t *fid_enc;       /* calculate_fid: the FID Inception */
  mmp_fid_acc_t *fid_gen, *fid_gt; /* features of the drawn and the ground-truth frames */
  bool fid_ds_gt; /* a dataset batch being loaded: its original target frames go to fid_gt */
  bool have_fid;
  double fid;
} run_t;

static int forward(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder/model/processor share the layout */
  return ops->forward(c->self, method, in, out);
}

/* reshape of a fresh view, the view released (transfer full) */
static mmp_tensor_t *rs(mmp_tensor_t *t, int nd, const int64_t *shape) {
  mmp_tensor_t *r = t ? mmp_reshape(t, nd, shape) : NULL;
  mmp_tensor_unref(t);
  return r;
}

/* The shared AR-LDM pieces (plugins/common/arldm.h) of this run. */
static arldm_parts_t parts_of(const run_t *r) {
  return (arldm_parts_t){.clip = r->c.clip, .blip = r->c.blip, .type = r->type, .time = r->time};
}

/* BLIP multimodal of frames (u8 [N, H, W, 3]) with their captions, + type 1
 * + time @j: [N, S, D] (transfer full). */
static mmp_tensor_t *blip_pixels(run_t *r, mmp_tensor_t *px, mmp_tensor_t *ids, mmp_tensor_t *mask, int64_t j) {
  arldm_parts_t p = parts_of(r);
  return arldm_blip_context(&p, px, ids, mask, j);
}

static mmp_tensor_t *blip_frames(run_t *r, mmp_tensor_t *frames, mmp_tensor_t *ids, mmp_tensor_t *mask, int64_t j) {
  mmp_tensor_t *px = arldm_call1(r->c.proc, NULL, "images", "images", frames, NULL, NULL, NULL, NULL);
  if (!px) return NULL;
  mmp_tensor_t *h = blip_pixels(r, px, ids, mask, j);
  mmp_tensor_unref(px);
  return h;
}

/* The unconditional context, from the null buffers of the AR-LDM file. */
static int build_null_context(run_t *r) {
  int rc = 0;
  mmp_tensor_t *cnull = NULL, *bnull = NULL, *inull = NULL, *hc = NULL, *hb = NULL;
  arldm_parts_t ex = {0};
  char d1[96], d2[96], d3[96];
  const char *f = r->t->arldm;
  if ((rc = arldm_extras_load(&r->src, f, r->be, r->src_V, &ex, &r->S, &r->D)) < 0) {
    rc = mmp_error_prefix("story: ");
    goto done;
  }
  r->type = ex.type;
  r->time = ex.time;
  cnull = ex.clip_null;
  bnull = ex.blip_null;
  inull = ex.image_null;
  hc = arldm_call1(r->c.clip, NULL, "last_hidden_state", "input_ids", cnull, NULL, NULL, NULL, NULL);
  if (!hc) {
    rc = mmp_error_prefix("story: null context: text_encoder on clip_text_null_token %s: ", mmp_tensor_describe(cnull, d1, sizeof d1));
    goto done;
  }
  hb = arldm_call1(r->c.blip, "multimodal", "last_hidden_state", "pixel_values", inull, "input_ids", bnull, NULL, NULL);
  if (!hb) {
    rc = mmp_error_prefix("story: null context: mm_encoder on blip_image_null_token %s, blip_text_null_token %s: ",
                          mmp_tensor_describe(inull, d1, sizeof d1), mmp_tensor_describe(bnull, d2, sizeof d2));
    goto done;
  }
  if (hc->ndim != 3 || hc->shape[2] != r->D || hb->ndim != 3 || hb->shape[2] != r->D || hb->shape[1] != r->S) {
    rc = mmp_error_set(MMP_ESHAPE, "story: width mismatch between the parts: text_encoder gives %s and mm_encoder %s for the null "
                       "caption, but %s has modal_type_embeddings.weight %s and time_embeddings.weight %s (all must share the "
                       "width D; S = %lld tokens per caption)",
                       mmp_tensor_describe(hc, d1, sizeof d1), mmp_tensor_describe(hb, d2, sizeof d2), f,
                       mmp_tensor_describe(r->type, d3, sizeof d3), mmp_tensor_describe(r->time, (char[96]){0}, 96),
                       (long long)r->S);
    goto done;
  }
  arldm_parts_t ap = parts_of(r);
  r->uncond = arldm_null_context(&ap, hc, hb, r->src_V);
  if (!r->uncond) rc = mmp_error_prefix("story: null context: ");
done:
  mmp_tensor_unref(cnull);
  mmp_tensor_unref(bnull);
  mmp_tensor_unref(inull);
  mmp_tensor_unref(hc);
  mmp_tensor_unref(hb);
  return rc;
}

/* Key masks of frame @i (u8, 1 = do not attend), [B, (src_V + 1) S]:
 * @cond from the CLIP and BLIP masks (host [B, 5, S] each), or NULL for the
 * unconditional one. */
static mmp_tensor_t *frame_mask(run_t *r, int64_t B, int64_t i, const float *cmask, const float *bmask) {
  int64_t S = r->S, L = (r->src_V + 1) * S, off = 5 - r->V; /* caption of target i is caption i + off */
  uint8_t *m = calloc((size_t)(B * L), 1);
  if (!m) return NULL;
  for (int64_t b = 0; b < B; b++)
    arldm_mask_row(m + b * L, r->V, r->src_V, S, i, cmask ? cmask + (b * 5 + i + off) * S : NULL,
                   cmask ? bmask + b * 5 * S : NULL);
  int64_t shape[2] = {B, L};
  mmp_tensor_t *t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 2, shape, m);
  free(m);
  return t;
}

static int save_t(run_t *r, int64_t story, int64_t frame, const char *what, mmp_tensor_t *t) {
  if (!r->saved || !t) return 0;
  char name[128];
  snprintf(name, sizeof name, "story%lld.frame%lld.%s", (long long)story, (long long)frame, what);
  return mmp_tensormap_set(r->saved, name, mmp_tensor_ref(t));
}

typedef struct step_noise {
  mmp_rng_t *gen;
  mmp_backend_t *be;
  const int64_t *shape;
} step_noise_t;

static mmp_tensor_t *draw_step_noise(void *arg) {
  const step_noise_t *a = arg;
  return mmp_rng_randn(a->gen, a->be, 4, a->shape);
}

/* Denoise one frame of B stories (sd_sample, progress bar @label), VAE
 * decode, uint8 [B, H, W, 3]. */
static int draw_frame(run_t *r, mmp_context_t *ctx, mmp_rng_t *gen, const char *label, mmp_tensor_t *ehs, mmp_tensor_t *mask,
                      int64_t B, double scaling, int down, int64_t lch, mmp_tensor_t **lat0, mmp_tensor_t **lat1,
                      mmp_tensor_t **img) {
  story_t *t = r->t;
  int64_t ls[4] = {B, lch, t->height / down, t->width / down};
  mmp_tensor_t *lat = mmp_rng_randn(gen, r->be, 4, ls);
  if (!lat) return mmp_error_code();
  *lat0 = mmp_tensor_ref(lat);
  /* a scheduler that asks for step noise draws it from the run's generator,
   * as AR-LDM's step() draws from the global torch generator (DDIM with
   * eta = 0 and PNDM never do) */
  step_noise_t na = {gen, r->be, ls};
  sd_sampler_t smp = {.unet = r->c.unet, .sched = r->c.sched, .ctx = ctx, .who = "story", .label = label,
                      .steps = t->steps, .guided = true, .guidance = t->guidance, .context = ehs, .mask = mask,
                      .noise = draw_step_noise, .noise_arg = &na};
  int rc = sd_sample(&smp, &lat);
  if (rc < 0 && rc != MMP_ECANCELED) {
    /* e.g. a UNet whose cross-attention width is not the context's D */
    char d1[96], d2[96];
    return mmp_error_prefix("story: denoising on the context %s (mask %s; the UNet's cross_attention_dim must be D = %lld): ",
                            mmp_tensor_describe(ehs, d1, sizeof d1), mmp_tensor_describe(mask, d2, sizeof d2),
                            (long long)r->D);
  }
  if (rc < 0) return rc;
  *lat1 = lat;
  mmp_tensor_t *z = mmp_scale(lat, 1.0 / scaling, 0.0);
  mmp_tensor_t *x = z ? arldm_call1(r->c.vae, "decode", "sample", "latents", z, NULL, NULL, NULL, NULL) : NULL;
  mmp_tensor_unref(z);
  if (!x) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  /* (x / 2 + 0.5).clamp(0, 1) * 255, rounded (numpy_to_pil), HWC */
  int64_t C = x->shape[1], H = x->shape[2], W = x->shape[3];
  size_t n = (size_t)(B * C * H * W);
  float *px = malloc(n * sizeof *px);
  uint8_t *u = malloc(n);
  rc = px && u ? mmp_tensor_to_host(x, px, n * sizeof *px) : mmp_error_set(MMP_ENOMEM, "out of memory");
  mmp_tensor_unref(x);
  if (rc == 0 && C != 3) rc = mmp_error_set(MMP_ESHAPE, "story: the VAE gave %lld channels, frames need 3", (long long)C);
  if (rc == 0) {
    for (int64_t b = 0; b < B; b++)
      for (int64_t c = 0; c < 3; c++)
        for (int64_t p = 0; p < H * W; p++) {
          float v = px[(b * 3 + c) * H * W + p] / 2.0f + 0.5f;
          v = v < 0 ? 0 : v > 1 ? 1 : v;
          u[(b * H * W + p) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
        }
    int64_t shape[4] = {B, H, W, 3};
    if (!(*img = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 4, shape, u))) rc = mmp_error_code();
  }
  free(px);
  free(u);
  return rc;
}

static mmp_tensor_t *to_host_f32(mmp_tensor_t *t, float **out) {
  int64_t n = mmp_tensor_numel(t);
  mmp_tensor_t *f = mmp_convert(t, MMP_F32);
  *out = f ? malloc((size_t)n * sizeof **out) : NULL;
  if (!*out || mmp_tensor_to_host(f, *out, (size_t)n * sizeof **out) < 0) {
    free(*out);
    *out = NULL;
  }
  return f;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void story_dir(const run_t *r, int64_t story, char *buf, size_t n) {
  snprintf(buf, n, "%s/story%05lld", r->t->out_dir, (long long)story);
}

/* A story is complete when its strip (written last) exists. */
static bool story_done(const run_t *r, int64_t story) {
  char d[4200], p[4300];
  story_dir(r, story, d, sizeof d);
  snprintf(p, sizeof p, "%s/strip.png", d);
  return access(p, F_OK) == 0;
}

static int mkdir_p(const char *dir);

/* The text of caption @j of story @k of @in (counted from the story @in
 * starts at), or NULL when the input gave only token ids. */
static const char *caption_of(const mmp_tensormap_t *in, int64_t k, int j) {
  char key[48];
  snprintf(key, sizeof key, "caption.%lld", (long long)(k * 5 + j));
  return mmp_tensormap_get_string(in, key);
}

static int set_caption(mmp_tensormap_t *in, int64_t k, int j, const char *text) {
  char key[48];
  snprintf(key, sizeof key, "caption.%lld", (long long)(k * 5 + j));
  return text ? mmp_tensormap_set_string(in, key, text) : 0;
}

/* Frames (PNG with text chunks), AR-LDM's numbering, then the strip:
 * ground truth above the drawn frames (continuation: the given first frame
 * opens the lower row). @gen[i] is frame i of story @story, H x W x 3. */
static int write_story(run_t *r, int64_t story, const uint8_t *const *gen, int64_t H, int64_t W, const uint8_t *gt,
                       int64_t gh, int64_t gw, const char *const *caps) {
  story_t *t = r->t;
  char d[4200], path[4400], sv[32], fv[32], seed[32], steps[32], gs[32];
  story_dir(r, story, d, sizeof d);
  int rc = mkdir_p(d);
  if (rc) return rc;
  snprintf(sv, sizeof sv, "%lld", (long long)story);
  snprintf(seed, sizeof seed, "%lld", (long long)t->seed);
  snprintf(steps, sizeof steps, "%lld", (long long)t->steps);
  snprintf(gs, sizeof gs, "%g", t->guidance);
  const char *keys[9] = {"story", "frame", "task", "seed", "scheduler", "steps", "guidance_scale", "checkpoint", "caption"};
  const char *vals[9] = {sv, fv, t->continuation ? "continuation" : "visualization", seed, r->sched_name, steps, gs, t->arldm, NULL};
  for (int64_t i = 0; rc == 0 && i < r->V; i++) {
    int64_t frame = i + 5 - r->V;
    snprintf(fv, sizeof fv, "%lld", (long long)frame);
    mmp_image_t im = {(int)W, (int)H, 3, (uint8_t *)gen[i]};
    vals[8] = caps ? caps[frame] : NULL; /* the caption, when the input has its text */
    int nk = vals[8] ? 9 : 8;
    snprintf(path, sizeof path, "%s/frame%lld.png", d, (long long)frame);
    rc = mmp_image_png_write_text(&im, path, keys, vals, nk);
    if (rc == 0 && t->sample_dir[0]) {
      snprintf(path, sizeof path, "%s/%04lld.png", t->sample_dir, (long long)(story * r->V + i));
      rc = mmp_image_png_write_text(&im, path, keys, vals, nk);
    }
  }
  if (rc) return rc;
  /* the strip: 5 columns, 2 rows */
  mmp_image_t strip = {0};
  if ((rc = mmp_image_alloc(&strip, (int)(5 * W), (int)(2 * H), 3))) return rc;
  memset(strip.data, 0, (size_t)strip.w * strip.h * 3);
  for (int64_t j = 0; rc == 0 && j < 5; j++) {
    mmp_image_t src = {(int)gw, (int)gh, 3, (uint8_t *)(gt + j * gh * gw * 3)}, rs = {0};
    const mmp_image_t *use = &src;
    if (gh != H || gw != W) {
      if ((rc = mmp_image_resize(&src, (int)W, (int)H, MMP_RESAMPLE_BILINEAR, &rs))) break;
      use = &rs;
    }
    for (int64_t y = 0; y < H; y++) {
      memcpy(strip.data + ((size_t)y * strip.w + (size_t)(j * W)) * 3, use->data + (size_t)y * W * 3, (size_t)W * 3);
      const uint8_t *low = j < 5 - r->V ? use->data + (size_t)y * W * 3 : gen[j - (5 - r->V)] + (size_t)y * W * 3;
      memcpy(strip.data + ((size_t)(H + y) * strip.w + (size_t)(j * W)) * 3, low, (size_t)W * 3);
    }
    mmp_image_clear(&rs);
  }
  if (rc == 0) {
    snprintf(path, sizeof path, "%s/strip.png", d);
    snprintf(fv, sizeof fv, "strip");
    rc = mmp_image_png_write_text(&strip, path, keys, vals, 8);
  }
  mmp_image_clear(&strip);
  if (rc == 0) MMP_INFO("story", "story %lld written to %s", (long long)story, d);
  return rc;
}

/* Stories [s0, s0 + B) of the input; @in holds the stories from @at on
 * (0 for a whole input, s0 for one batch of a dataset). With
 * "source_pixels" (a dataset's source_images) the source slots take those
 * BLIP pixels as AR-LDM does, not the processed frames. */
static int draw_stories(run_t *r, mmp_context_t *ctx, mmp_rng_t *gen, const mmp_tensormap_t *in, int64_t at, int64_t s0,
                        int64_t B, double scaling, int down, int64_t lch) {
  int64_t V = r->V, src_V = r->src_V, S = r->S, L = (src_V + 1) * S, off = 5 - V, k0 = s0 - at;
  mmp_tensor_t *cap = mmp_slice(mmp_tensormap_get(in, "captions"), 0, k0, k0 + B, 1);
  mmp_tensor_t *cam = mmp_slice(mmp_tensormap_get(in, "caption_mask"), 0, k0, k0 + B, 1);
  mmp_tensor_t *bcap = mmp_slice(mmp_tensormap_get(in, "blip_captions"), 0, k0, k0 + B, 1);
  mmp_tensor_t *bam = mmp_slice(mmp_tensormap_get(in, "blip_mask"), 0, k0, k0 + B, 1);
  mmp_tensor_t *frames = mmp_slice(mmp_tensormap_get(in, "frames"), 0, k0, k0 + B, 1);
  mmp_tensor_t *spx = mmp_tensormap_get(in, "source_pixels");
  spx = spx ? mmp_slice(spx, 0, k0, k0 + B, 1) : NULL;
  mmp_tensor_t *cond = NULL, *ucond = NULL;
  float *cm = NULL, *bm = NULL;
  mmp_tensor_t *fcm = to_host_f32(cam, &cm), *fbm = to_host_f32(bam, &bm);
  int rc = 0;
  if (!cap || !cam || !bcap || !bam || !frames || !cm || !bm) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    goto done;
  }
  {
    /* captions of the V targets: [B V, S] -> CLIP + type 0 */
    mmp_tensor_t *ids = rs(mmp_slice(cap, 1, off, 5, 1), 2, (int64_t[]){B * V, S});
    mmp_tensor_t *am = rs(mmp_slice(cam, 1, off, 5, 1), 2, (int64_t[]){B * V, S});
    mmp_tensor_t *hc = ids && am ? arldm_call1(r->c.clip, NULL, "last_hidden_state", "input_ids", ids, "attention_mask", am, NULL, NULL) : NULL;
    hc = sd_swap(hc, arldm_add_row(hc, r->type, 0));
    mmp_tensor_unref(ids);
    mmp_tensor_unref(am);
    /* source frames: BLIP of each frame j with caption j, + type 1 + time j */
    mmp_tensor_t *src[5] = {NULL};
    for (int64_t j = 0; j < src_V && hc; j++) {
      mmp_tensor_t *fj = spx ? rs(mmp_slice(spx, 1, j, j + 1, 1), 4, (int64_t[]){B, spx->shape[2], spx->shape[3], spx->shape[4]})
                             : rs(mmp_slice(frames, 1, j, j + 1, 1), 4, (int64_t[]){B, frames->shape[2], frames->shape[3], 3});
      mmp_tensor_t *fc = fj ? mmp_contiguous(fj) : NULL;
      mmp_tensor_t *ij = rs(mmp_slice(bcap, 1, j, j + 1, 1), 2, (int64_t[]){B, S});
      mmp_tensor_t *mj = rs(mmp_slice(bam, 1, j, j + 1, 1), 2, (int64_t[]){B, S});
      src[j] = fc && ij && mj ? (spx ? blip_pixels(r, fc, ij, mj, j) : blip_frames(r, fc, ij, mj, j)) : NULL;
      mmp_tensor_unref(fj);
      mmp_tensor_unref(fc);
      mmp_tensor_unref(ij);
      mmp_tensor_unref(mj);
      if (!src[j]) break;
    }
    /* conditional context [B, V, L, D]: caption i of each target then the
     * src_V frame slots shared by the V targets of a story */
    if (hc && src[src_V - 1]) {
      mmp_tensor_t *srcs = mmp_concat(src, (int)src_V, 1); /* [B, src_V S, D] */
      mmp_tensor_t *h4 = mmp_reshape(hc, 4, (int64_t[]){B, V, S, r->D});
      mmp_tensor_t *s4 = srcs ? mmp_reshape(srcs, 4, (int64_t[]){B, 1, src_V * S, r->D}) : NULL;
      mmp_tensor_t *sb = s4 ? mmp_broadcast_to(s4, 4, (int64_t[]){B, V, src_V * S, r->D}) : NULL;
      mmp_tensor_t *sc = sb ? mmp_contiguous(sb) : NULL;
      mmp_tensor_t *both[2] = {h4, sc};
      cond = h4 && sc ? mmp_concat(both, 2, 2) : NULL; /* [B, V, L, D] */
      mmp_tensor_unref(srcs);
      mmp_tensor_unref(h4);
      mmp_tensor_unref(s4);
      mmp_tensor_unref(sb);
      mmp_tensor_unref(sc);
    }
    for (int64_t j = 0; j < src_V; j++) mmp_tensor_unref(src[j]);
    mmp_tensor_unref(hc);
    if (!cond) {
      rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      goto done;
    }
    mmp_tensor_t *ub = mmp_broadcast_to(r->uncond, 3, (int64_t[]){B, L, r->D});
    ucond = ub ? mmp_contiguous(ub) : NULL;
    mmp_tensor_unref(ub);
    if (!ucond) {
      rc = mmp_error_code();
      goto done;
    }
  }
  char label[96];
  uint8_t *gen_px[5] = {NULL};
  for (int64_t i = 0; i < V; i++) {
    double t0 = now_s();
    snprintf(label, sizeof label, "story %lld-%lld frame %lld/%lld", (long long)s0, (long long)(s0 + B - 1),
             (long long)i + 1, (long long)V);
    mmp_tensor_t *ci = rs(mmp_slice(cond, 1, i, i + 1, 1), 3, (int64_t[]){B, L, r->D});
    mmp_tensor_t *cc = ci ? mmp_contiguous(ci) : NULL;
    mmp_tensor_t *um = frame_mask(r, B, i, NULL, NULL), *cmk = frame_mask(r, B, i, cm, bm);
    mmp_tensor_t *two[2] = {ucond, cc}, *twom[2] = {um, cmk};
    mmp_tensor_t *ehs = cc ? mmp_concat(two, 2, 0) : NULL, *mask = um && cmk ? mmp_concat(twom, 2, 0) : NULL;
    mmp_tensor_t *l0 = NULL, *l1 = NULL, *img = NULL;
    if (!ehs || !mask) rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    else rc = draw_frame(r, ctx, gen, label, ehs, mask, B, scaling, down, lch, &l0, &l1, &img);
    if (rc == 0) {
      size_t nb = (size_t)mmp_tensor_numel(img);
      if (!(gen_px[i] = malloc(nb))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      else rc = mmp_tensor_to_host(img, gen_px[i], nb);
    }
    for (int64_t b = 0; rc == 0 && r->saved && b < B; b++) {
      mmp_tensor_t *pc = mmp_slice(cc, 0, b, b + 1, 1), *pu = mmp_slice(ucond, 0, b, b + 1, 1);
      mmp_tensor_t *pm = mmp_slice(cmk, 0, b, b + 1, 1), *pum = mmp_slice(um, 0, b, b + 1, 1);
      mmp_tensor_t *p0 = mmp_slice(l0, 0, b, b + 1, 1), *p1 = mmp_slice(l1, 0, b, b + 1, 1);
      mmp_tensor_t *pi = mmp_slice(img, 0, b, b + 1, 1);
      mmp_tensor_t *all[7] = {pc, pu, pm, pum, p0, p1, pi};
      static const char *const names[7] = {"context", "uncond_context", "mask", "uncond_mask", "latents_initial",
                                           "latents_final", "image"};
      for (int k = 0; k < 7; k++) {
        mmp_tensor_t *cont = all[k] ? mmp_contiguous(all[k]) : NULL;
        if (!cont) rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
        else if (rc == 0) rc = save_t(r, s0 + b, i, names[k], cont);
        mmp_tensor_unref(cont);
        mmp_tensor_unref(all[k]);
      }
    }
    /* write-back: BLIP(frame i, caption j) + type 1 + time j into slot j */
    int64_t j = i + src_V - V;
    if (rc == 0 && i + 1 < V) {
      mmp_tensor_t *ij = rs(mmp_slice(bcap, 1, j, j + 1, 1), 2, (int64_t[]){B, S});
      mmp_tensor_t *mj = rs(mmp_slice(bam, 1, j, j + 1, 1), 2, (int64_t[]){B, S});
      mmp_tensor_t *fb = img;
      if (r->replay) {
        char k[64];
        snprintf(k, sizeof k, "frame%lld.image", (long long)i);
        fb = mmp_tensormap_get(r->replay, k);
        if (!fb || fb->dtype != MMP_U8 || !mmp_tensor_same_shape(fb, img)) {
          rc = mmp_error_set(MMP_EDATA, "story: writeback_from: %s must be u8 like the drawn frames", k);
          fb = NULL;
        }
      }
      mmp_tensor_t *ne = fb && ij && mj ? blip_frames(r, fb, ij, mj, j) : NULL; /* [B, S, D] */
      mmp_tensor_t *n4 = ne ? mmp_reshape(ne, 4, (int64_t[]){B, 1, S, r->D}) : NULL;
      mmp_tensor_t *nb = n4 ? mmp_broadcast_to(n4, 4, (int64_t[]){B, V, S, r->D}) : NULL;
      mmp_tensor_t *nc = nb ? mmp_contiguous(nb) : NULL;
      int64_t a = (j + 1) * S;
      mmp_tensor_t *pre = mmp_slice(cond, 2, 0, a, 1), *post = mmp_slice(cond, 2, a + S, L, 1);
      mmp_tensor_t *pc = pre ? mmp_contiguous(pre) : NULL, *qc = post ? mmp_contiguous(post) : NULL;
      mmp_tensor_t *parts[3] = {pc, nc, qc};
      mmp_tensor_t *nw = pc && nc && qc ? mmp_concat(parts, 3, 2) : NULL;
      if (nw) cond = sd_swap(cond, nw);
      else if (rc == 0) rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      mmp_tensor_unref(ij);
      mmp_tensor_unref(mj);
      mmp_tensor_unref(ne);
      mmp_tensor_unref(n4);
      mmp_tensor_unref(nb);
      mmp_tensor_unref(nc);
      mmp_tensor_unref(pre);
      mmp_tensor_unref(post);
      mmp_tensor_unref(pc);
      mmp_tensor_unref(qc);
    }
    mmp_tensor_unref(ci);
    mmp_tensor_unref(cc);
    mmp_tensor_unref(um);
    mmp_tensor_unref(cmk);
    mmp_tensor_unref(ehs);
    mmp_tensor_unref(mask);
    mmp_tensor_unref(l0);
    mmp_tensor_unref(l1);
    mmp_tensor_unref(img);
    if (rc < 0) break;
    double dt = now_s() - t0;
    for (int64_t b = 0; b < B; b++) r->frame_secs[(s0 + b) * V + i] = dt / (double)B;
    MMP_INFO("story", "stories %lld-%lld frame %lld/%lld: %.2f s", (long long)s0, (long long)(s0 + B - 1), (long long)i + 1,
             (long long)V, dt);
  }
  if (rc == 0) {
    int64_t H = r->t->height, W = r->t->width, gh = frames->shape[2], gw = frames->shape[3];
    uint8_t *gt = malloc((size_t)mmp_tensor_numel(frames));
    mmp_tensor_t *fc = mmp_contiguous(frames);
    if (!gt || !fc || mmp_tensor_to_host(fc, gt, (size_t)mmp_tensor_numel(frames)) < 0)
      rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    for (int64_t b = 0; rc == 0 && b < B; b++) {
      const uint8_t *g[5];
      for (int64_t i = 0; i < V; i++) g[i] = gen_px[i] + (size_t)b * H * W * 3;
      const char *caps[5];
      for (int j = 0; j < 5; j++) caps[j] = caption_of(in, s0 + b - at, j);
      rc = write_story(r, s0 + b, g, H, W, gt + (size_t)b * 5 * gh * gw * 3, gh, gw, caps);
      /* calculate_fid: the drawn frames and the ground truth of the same
       * targets (frames 5 - V .. 4) */
      for (int64_t i = 0; rc == 0 && r->fid_gen && i < V; i++) {
        mmp_image_t gi = {(int)W, (int)H, 3, (uint8_t *)g[i]};
        mmp_image_t ti = {(int)gw, (int)gh, 3, gt + ((size_t)b * 5 + (size_t)(i + 5 - V)) * (size_t)(gh * gw * 3)};
        if ((rc = mmp_fid_acc_add(r->fid_gen, &gi)) == 0 && !r->t->dataset) rc = mmp_fid_acc_add(r->fid_gt, &ti);
        if (rc) mmp_error_prefix("story: calculate_fid: ");
      }
    }
    free(gt);
    mmp_tensor_unref(fc);
  }
  for (int i = 0; i < 5; i++) free(gen_px[i]);
done:
  free(cm);
  free(bm);
  mmp_tensor_unref(fcm);
  mmp_tensor_unref(fbm);
  mmp_tensor_unref(cap);
  mmp_tensor_unref(cam);
  mmp_tensor_unref(bcap);
  mmp_tensor_unref(bam);
  mmp_tensor_unref(frames);
  mmp_tensor_unref(spx);
  mmp_tensor_unref(cond);
  mmp_tensor_unref(ucond);
  return rc;
}

static int mkdir_p(const char *dir) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "story: mkdir %s: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "story: mkdir %s: %s", buf, strerror(errno));
  return 0;
}

/* Inputs checked before any work: names, shapes, five captions, S. */
static int check_input(run_t *r, const mmp_tensormap_t *in, int64_t *n) {
  static const char *const names[5] = {"captions", "caption_mask", "blip_captions", "blip_mask", "frames"};
  const char *src = r->t->input[0] ? r->t->input : r->t->stories[0] ? r->t->stories : "dataset";
  for (int k = 0; k < 5; k++) {
    mmp_tensor_t *t = mmp_tensormap_get(in, names[k]);
    if (!t) return mmp_error_set(MMP_EDATA, "story: %s: no tensor \"%s\"", src, names[k]);
    if (t->ndim != (k == 4 ? 5 : 3) || t->shape[1] != 5 || (k < 4 && t->shape[2] != r->S) ||
        t->shape[0] != mmp_tensormap_get(in, "captions")->shape[0])
      return mmp_error_set(MMP_ESHAPE, "story: %s: \"%s\" must be [N, 5, %s] (five frames per story, S = %lld of the AR-LDM file)",
                           src, names[k], k == 4 ? "H, W, 3" : "S", (long long)r->S);
  }
  /* token ids: integers inside the checkpoint's tables (the encoders would
   * refuse them only after every model is loaded, naming a row of their
   * batch rather than the story) */
  for (int k = 0; k < 4; k += 2) {
    mmp_tensor_t *t = mmp_tensormap_get(in, names[k]);
    int64_t rows = k ? r->blip_rows : r->clip_rows;
    if (t->dtype != MMP_I64 && t->dtype != MMP_I32)
      return mmp_error_set(MMP_EDTYPE, "story: %s: \"%s\" must hold integer token ids (i64 or i32), not %s", src, names[k],
                           mmp_dtype_name(t->dtype));
    if (rows < 0) continue;
    int64_t nid = mmp_tensor_numel(t);
    int64_t *ids = malloc((size_t)nid * sizeof *ids);
    mmp_tensor_t *c = ids ? mmp_convert(t, MMP_I64) : NULL;
    int rc = c ? mmp_tensor_to_host(c, ids, (size_t)nid * sizeof *ids) : mmp_error_set(MMP_ENOMEM, "out of memory");
    mmp_tensor_unref(c);
    for (int64_t q = 0; rc == 0 && q < nid; q++)
      if (ids[q] < 0 || ids[q] >= rows)
        rc = mmp_error_set(MMP_EDATA, "story: %s: %s[story %lld, frame %lld, token %lld] = %lld is outside the checkpoint's %s token "
                           "table of %lld rows (another dataset's tokenizer or new_tokens?)", src, names[k], (long long)(q / (5 * r->S)),
                           (long long)(q / r->S % 5), (long long)(q % r->S), (long long)ids[q], k ? "BLIP" : "CLIP", (long long)rows);
    free(ids);
    if (rc) return rc;
  }
  mmp_tensor_t *f = mmp_tensormap_get(in, "frames"), *p = mmp_tensormap_get(in, "source_pixels");
  if (f->dtype != MMP_U8 || f->shape[4] != 3) return mmp_error_set(MMP_EDTYPE, "story: %s: frames must be u8 [N, 5, H, W, 3]", src);
  if (p && (p->dtype != MMP_F32 || p->ndim != 5 || p->shape[0] != f->shape[0] || p->shape[1] != 5 || p->shape[2] != 3))
    return mmp_error_set(MMP_ESHAPE, "story: %s: source_pixels must be f32 [N, 5, 3, h, w]", src);
  *n = f->shape[0];
  return 0;
}

/* ---------------------------------------------------------------- dataset */

/* @t converted to @dt into @buf of exactly @n elements of @es bytes. */
static int host_copy(mmp_tensor_t *t, mmp_dtype_t dt, void *buf, int64_t n, size_t es) {
  if (mmp_tensor_numel(t) != n) return mmp_error_set(MMP_ESHAPE, "story: dataset: unexpected tensor size");
  mmp_tensor_t *c = mmp_convert(t, dt);
  int rc = c ? mmp_tensor_to_host(c, buf, (size_t)n * es) : mmp_error_code();
  mmp_tensor_unref(c);
  return rc;
}

/* Items [s0, s0 + B) of the dataset as the tensors of story_tensors, plus
 * source_pixels (the items' BLIP-processed source_images, which AR-LDM feeds
 * to BLIP as they are). The items' target images become the ground truth
 * frames (u8 test images as they are, f32 train/val images in [-1, 1] back
 * to u8), resized to width x height; continuation's frame 0 from the item's
 * first_image (a dataset without it leaves that slot black). Checked per item:
 * CLIP captions present, V targets (the dataset's task), S, ids inside the
 * checkpoint's token tables. */
static int load_dataset(run_t *r, mmp_component_t *ds, int64_t s0, int64_t B, mmp_tensormap_t *in) {
  const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)ds->plugin;
  int64_t S = r->S, V = r->V, off = 5 - V, H = r->t->height, W = r->t->width, ph = 0, pw = 0;
  int64_t *cap = calloc((size_t)(B * 5 * S), sizeof *cap), *cam = calloc((size_t)(B * 5 * S), sizeof *cam);
  int64_t *bcap = calloc((size_t)(B * 5 * S), sizeof *bcap), *bam = calloc((size_t)(B * 5 * S), sizeof *bam);
  uint8_t *frames = calloc((size_t)(B * 5), (size_t)(H * W * 3));
  float *px = NULL;
  int rc = cap && cam && bcap && bam && frames ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t b = 0; b < B && rc == 0; b++) {
    int64_t k = s0 + b;
    mmp_tensormap_t *it = mmp_tensormap_new();
    if (!it || (rc = ops->get(ds->self, k, it)) < 0) {
      rc = it ? mmp_error_prefix("story: dataset item %lld: ", (long long)k) : mmp_error_set(MMP_ENOMEM, "out of memory");
      mmp_tensormap_free(it);
      break;
    }
    mmp_tensor_t *c = mmp_tensormap_get(it, "captions"), *cm = mmp_tensormap_get(it, "attention_mask");
    mmp_tensor_t *bc = mmp_tensormap_get(it, "source_caption"), *bm = mmp_tensormap_get(it, "source_attention_mask");
    mmp_tensor_t *si = mmp_tensormap_get(it, "source_images"), *im = mmp_tensormap_get(it, "images");
    for (int j = 0; j < 5 && rc == 0; j++) {
      char key[16];
      snprintf(key, sizeof key, "caption%d", j);
      rc = set_caption(in, b, j, mmp_tensormap_get_string(it, key));
    }
    if (!c || !cm || !bc || !bm)
      rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld has no %s (give the dataset its tokenizer vocabularies: clip_vocab and "
                         "clip_merges or clip_bpe, bert_vocab)", (long long)k, !c || !cm ? "CLIP captions" : "BLIP captions");
    else if (c->ndim != 2 || c->shape[0] != V)
      rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld has %lld target captions, %s needs %lld (set the dataset's task = \"%s\")",
                         (long long)k, (long long)(c->ndim == 2 ? c->shape[0] : -1), r->t->continuation ? "continuation" : "visualization",
                         (long long)V, r->t->continuation ? "continuation" : "visualization");
    else if (c->shape[1] != S || bc->ndim != 2 || bc->shape[0] != 5 || bc->shape[1] != S)
      rc = mmp_error_set(MMP_ECONFIG, "story: the dataset's captions have %lld tokens, the AR-LDM file's S is %lld (set the "
                         "dataset's max_length = %lld)", (long long)c->shape[1], (long long)S, (long long)S);
    else if (!si || si->ndim != 4 || si->shape[0] != 5 || si->shape[1] != 3 || (ph && (si->shape[2] != ph || si->shape[3] != pw)))
      rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld: source_images must be [5, 3, h, w], alike in a batch", (long long)k);
    if (rc == 0 && !px) {
      ph = si->shape[2];
      pw = si->shape[3];
      if (!(px = malloc((size_t)(B * 5 * 3 * ph * pw) * sizeof *px))) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    if (rc == 0 && ((rc = host_copy(c, MMP_I64, cap + (b * 5 + off) * S, V * S, 8)) ||
                    (rc = host_copy(cm, MMP_I64, cam + (b * 5 + off) * S, V * S, 8)) ||
                    (rc = host_copy(bc, MMP_I64, bcap + b * 5 * S, 5 * S, 8)) ||
                    (rc = host_copy(bm, MMP_I64, bam + b * 5 * S, 5 * S, 8)) ||
                    (rc = host_copy(si, MMP_F32, px + b * 5 * 3 * ph * pw, 5 * 3 * ph * pw, 4))))
      mmp_error_prefix("story: dataset item %lld: ", (long long)k);
    /* ids outside the tables would be refused by the encoders only when
     * they run; AR-LDM sizes its tables to the dataset's tokenizers */
    for (int64_t q = 0; rc == 0 && q < 5 * S; q++) {
      int64_t ci = cap[b * 5 * S + q], bi = bcap[b * 5 * S + q];
      bool cbad = r->clip_rows >= 0 && (ci < 0 || ci >= r->clip_rows), bbad = r->blip_rows >= 0 && (bi < 0 || bi >= r->blip_rows);
      if (cbad || bbad)
        rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld: token id %lld is outside the checkpoint's %s table of %lld rows "
                           "(another dataset's tokenizer or new_tokens?)", (long long)k, (long long)(cbad ? ci : bi),
                           cbad ? "CLIP" : "BLIP", (long long)(cbad ? r->clip_rows : r->blip_rows));
    }
    /* ground truth: V target images, HWC u8 or CHW f32 in [-1, 1]; before
     * them (continuation) the given frame 0, u8 HWC */
    bool hwc = im && im->ndim == 4 && im->shape[3] == 3, chw = im && im->ndim == 4 && im->shape[1] == 3;
    mmp_tensor_t *f0 = off ? mmp_tensormap_get(it, "first_image") : NULL;
    if (rc == 0 && im && (im->shape[0] != V || (!hwc && !chw)))
      rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld: images must be [%lld, h, w, 3] or [%lld, 3, h, w]", (long long)k,
                         (long long)V, (long long)V);
    if (rc == 0 && f0 && (f0->ndim != 4 || f0->shape[0] != 1 || f0->shape[3] != 3 || f0->dtype != MMP_U8))
      rc = mmp_error_set(MMP_EDATA, "story: dataset item %lld: first_image must be u8 [1, h, w, 3]", (long long)k);
    for (int64_t i = f0 ? -1 : 0; rc == 0 && (im || i < 0) && i < V; i++) {
      /* i = -1: the given frame 0 */
      mmp_tensor_t *src_t = i < 0 ? f0 : im;
      bool shwc = i < 0 || hwc;
      int64_t h = shwc ? src_t->shape[1] : src_t->shape[2], w = shwc ? src_t->shape[2] : src_t->shape[3], np = h * w * 3;
      mmp_tensor_t *one = mmp_slice(src_t, 0, i < 0 ? 0 : i, i < 0 ? 1 : i + 1, 1), *oc = one ? mmp_contiguous(one) : NULL;
      float *f = malloc((size_t)np * sizeof *f);
      mmp_image_t src = {0}, dst = {0};
      rc = oc && f ? host_copy(oc, MMP_F32, f, np, 4) : mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
      if (rc == 0) rc = mmp_image_alloc(&src, (int)w, (int)h, 3);
      for (int64_t p = 0; rc == 0 && p < h * w; p++)
        for (int ch = 0; ch < 3; ch++) {
          float v = shwc ? f[p * 3 + ch] : (f[ch * h * w + p] / 2.0f + 0.5f) * 255.0f;
          v = v < 0 ? 0 : v > 255 ? 255 : v;
          src.data[p * 3 + ch] = (uint8_t)nearbyintf(v);
        }
      /* calculate_fid: the dataset's target frames as they are (what
       * pipeline fid reads of the split), not resized to the output size */
      if (rc == 0 && i >= 0 && r->fid_ds_gt && (rc = mmp_fid_acc_add(r->fid_gt, &src)) < 0)
        mmp_error_prefix("story: calculate_fid: ");
      if (rc == 0 && (h != H || w != W)) rc = mmp_image_resize(&src, (int)W, (int)H, MMP_RESAMPLE_BILINEAR, &dst);
      if (rc == 0)
        memcpy(frames + (size_t)(b * 5 + (i < 0 ? 0 : off + i)) * (size_t)(H * W * 3), dst.data ? dst.data : src.data,
               (size_t)(H * W * 3));
      mmp_image_clear(&src);
      mmp_image_clear(&dst);
      free(f);
      mmp_tensor_unref(one);
      mmp_tensor_unref(oc);
    }
    mmp_tensormap_free(it);
  }
  if (rc == 0) {
    mmp_backend_t *cpu = mmp_backend_get("cpu");
    int64_t s3[3] = {B, 5, S}, s5[5] = {B, 5, H, W, 3}, p5[5] = {B, 5, 3, ph, pw};
    if (mmp_tensormap_set(in, "captions", mmp_tensor_from_data(cpu, MMP_I64, 3, s3, cap)) < 0 ||
        mmp_tensormap_set(in, "caption_mask", mmp_tensor_from_data(cpu, MMP_I64, 3, s3, cam)) < 0 ||
        mmp_tensormap_set(in, "blip_captions", mmp_tensor_from_data(cpu, MMP_I64, 3, s3, bcap)) < 0 ||
        mmp_tensormap_set(in, "blip_mask", mmp_tensor_from_data(cpu, MMP_I64, 3, s3, bam)) < 0 ||
        mmp_tensormap_set(in, "frames", mmp_tensor_from_data(cpu, MMP_U8, 5, s5, frames)) < 0 ||
        mmp_tensormap_set(in, "source_pixels", mmp_tensor_from_data(cpu, MMP_F32, 5, p5, px)) < 0)
      rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
  }
  free(cap);
  free(cam);
  free(bcap);
  free(bam);
  free(frames);
  free(px);
  return rc;
}

/* ---------------------------------------------------------------- stories_file */

/* Rows of the token table @name in the AR-LDM file, or -1 when absent. */
static int64_t table_rows(const arldm_file_t *a, const char *name) {
  int nd = 0;
  int64_t sh[MMP_MAX_DIMS], rows = -1;
  if (arldm_file_info(a, name, NULL, &nd, sh) == 0 && nd == 2) rows = sh[0];
  mmp_error_clear();
  return rows;
}

static int tokenize(mmp_context_t *ctx, const char *group, const char *const *texts, size_t n, int64_t S,
                    const arldm_file_t *arldm, const char *table, mmp_tensor_t **ids, mmp_tensor_t **mask) {
  mmp_component_t *c = mmp_component_create(ctx, MMP_KIND_PROCESSOR, group);
  if (!c) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)c->plugin;
  mmp_tensormap_t *out = mmp_tensormap_new();
  int rc = 0;
  if (ops->base.struct_size < sizeof(mmp_processor_ops_t) || !ops->encode_text)
    rc = mmp_error_set(MMP_EPLUGIN, "story: %s '%s' cannot encode text", group, ops->base.name);
  else if (!out)
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  else if ((rc = ops->encode_text(c->self, texts, n, out)) < 0)
    /* AR-LDM tokenizes with truncation=False: a long caption is an error */
    mmp_error_prefix("story: %s (text k = caption k %% 5 of story k / 5): ", group);
  if (rc == 0) {
    mmp_tensor_t *a = mmp_tensormap_get(out, "input_ids"), *b = mmp_tensormap_get(out, "attention_mask");
    if (!a || !b || a->ndim != 2 || a->shape[1] != S)
      rc = mmp_error_set(MMP_ECONFIG, "story: %s gives %lld tokens per caption, the AR-LDM file's S is %lld (set max_length = %lld)",
                         group, (long long)(a && a->ndim == 2 ? a->shape[1] : -1), (long long)S, (long long)S);
    else {
      *ids = mmp_tensor_ref(a);
      *mask = mmp_tensor_ref(b);
    }
  }
  /* AR-LDM sizes its token tables to its tokenizers (resize_token_embeddings
   * with the dataset's clip/blip_embedding_tokens): a mismatch means the
   * wrong dataset's tokens */
  int64_t rows = rc == 0 ? table_rows(arldm, table) : -1;
  if (rows >= 0) {
    mmp_tensormap_t *vi = mmp_tensormap_new(), *vo = mmp_tensormap_new();
    mmp_tensor_t *v = NULL;
    if (vi && vo && ops->base.struct_size >= sizeof(mmp_processor_ops_t) && ops->forward &&
        ops->forward(c->self, "vocab_size", vi, vo) == 0)
      v = mmp_tensormap_get(vo, "vocab_size");
    int64_t z[1] = {0};
    int64_t size = v && mmp_tensor_numel(v) == 1 ? (int64_t)mmp_tensor_get(v, z) : -1;
    if (size >= 0 && size != rows)
      rc = mmp_error_set(MMP_EDATA, "story: %s has %lld tokens but the checkpoint's %s has %lld rows (another dataset's "
                         "tokens? give the tokenizer the dataset's new_tokens)",
                         group, (long long)size, table, (long long)rows);
    mmp_tensormap_free(vi);
    mmp_tensormap_free(vo);
    if (rc) {
      mmp_tensor_unref(*ids);
      mmp_tensor_unref(*mask);
      *ids = *mask = NULL;
    }
  }
  mmp_tensormap_free(out);
  mmp_component_free(c);
  return rc;
}

static int read_file(const char *path, uint8_t **buf, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "story: %s: %s", path, strerror(errno));
  long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (len < 0 || len > (1L << 30) || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return mmp_error_set(MMP_EIO, "story: %s: cannot read", path);
  }
  *buf = malloc((size_t)len + 1);
  int rc = *buf && fread(*buf, 1, (size_t)len, f) == (size_t)len ? 0 : mmp_error_set(MMP_EIO, "story: %s: cannot read", path);
  fclose(f);
  *n = (size_t)len;
  return rc;
}

/* The JSON stories file -> the tensors of story_tensors. All stories are
 * checked (five captions, the first image for continuation, lengths) before
 * any drawing. */
static int load_stories_file(run_t *r, mmp_context_t *ctx, mmp_tensormap_t *in) {
  story_t *t = r->t;
  json_error_t je;
  json_t *root = json_load_file(t->stories, 0, &je);
  if (!root) return mmp_error_set(MMP_EDATA, "story: %s:%d: %s", t->stories, je.line, je.text);
  int rc = 0;
  size_t n = json_is_array(root) ? json_array_size(root) : 0;
  const char **texts = calloc(n * 5 + 1, sizeof *texts);
  int64_t H = t->height, W = t->width;
  uint8_t *frames = calloc(n ? n * 5 : 1, (size_t)(H * W * 3));
  if (!json_is_array(root) || n == 0) {
    rc = mmp_error_set(MMP_EDATA, "story: %s: expected a non-empty array of stories", t->stories);
    goto done;
  }
  if (!texts || !frames) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", t->stories);
  char *sl = strrchr(dir, '/');
  if (sl) sl[1] = '\0';
  else dir[0] = '\0';
  for (size_t s = 0; s < n && rc == 0; s++) {
    json_t *st = json_array_get(root, s), *caps = json_object_get(st, "captions");
    if (!json_is_array(caps) || json_array_size(caps) != 5) {
      rc = mmp_error_set(MMP_EDATA, "story: %s: story %zu has %zu captions, a story needs five", t->stories, s,
                         json_is_array(caps) ? json_array_size(caps) : 0);
      break;
    }
    for (size_t i = 0; i < 5; i++) {
      texts[s * 5 + i] = json_string_value(json_array_get(caps, i));
      if (!texts[s * 5 + i]) {
        rc = mmp_error_set(MMP_EDATA, "story: %s: story %zu caption %zu is not a string", t->stories, s, i);
        break;
      }
    }
    const char *img = json_string_value(json_object_get(st, "first_image"));
    if (rc == 0 && t->continuation && !img) {
      rc = mmp_error_set(MMP_EDATA, "story: %s: story %zu has no first_image (continuation starts from it)", t->stories, s);
      break;
    }
    if (rc == 0 && img) {
      char p[8300];
      snprintf(p, sizeof p, "%s%s", img[0] == '/' ? "" : dir, img);
      uint8_t *buf = NULL;
      size_t len = 0;
      mmp_image_t im = {0}, rs = {0};
      if ((rc = read_file(p, &buf, &len)) == 0 && (rc = mmp_image_png_decode(buf, len, false, &im)) == 0 &&
          (rc = mmp_image_resize(&im, (int)W, (int)H, MMP_RESAMPLE_BILINEAR, &rs)) == 0)
        memcpy(frames + s * 5 * (size_t)(H * W * 3), rs.data, (size_t)(H * W * 3));
      else
        mmp_error_prefix("story: first_image of story %zu: ", s);
      free(buf);
      mmp_image_clear(&im);
      mmp_image_clear(&rs);
    }
  }
  mmp_tensor_t *ci = NULL, *cm = NULL, *bi = NULL, *bm = NULL;
  if (rc == 0)
    rc = tokenize(ctx, "clip_tokenizer", texts, n * 5, r->S, &r->src,
                  "text_encoder.text_model.embeddings.token_embedding.weight", &ci, &cm);
  if (rc == 0)
    rc = tokenize(ctx, "blip_tokenizer", texts, n * 5, r->S, &r->src,
                  "mm_encoder.text_encoder.embeddings.word_embeddings.weight", &bi, &bm);
  if (rc == 0) {
    int64_t s3[3] = {(int64_t)n, 5, r->S}, s5[5] = {(int64_t)n, 5, H, W, 3};
    mmp_tensor_t *f = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 5, s5, frames);
    if (!f || mmp_tensormap_set(in, "frames", f) < 0 ||
        mmp_tensormap_set(in, "captions", mmp_reshape(ci, 3, s3)) < 0 ||
        mmp_tensormap_set(in, "caption_mask", mmp_reshape(cm, 3, s3)) < 0 ||
        mmp_tensormap_set(in, "blip_captions", mmp_reshape(bi, 3, s3)) < 0 ||
        mmp_tensormap_set(in, "blip_mask", mmp_reshape(bm, 3, s3)) < 0)
      rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    for (size_t k = 0; rc == 0 && k < n * 5; k++) rc = set_caption(in, (int64_t)(k / 5), (int)(k % 5), texts[k]);
  }
  mmp_tensor_unref(ci);
  mmp_tensor_unref(cm);
  mmp_tensor_unref(bi);
  mmp_tensor_unref(bm);
done:
  free(texts);
  free(frames);
  json_decref(root);
  return rc;
}

/* @s as HTML text: markup characters escaped, bytes as they are (UTF-8). */
static void html_text(FILE *f, const char *s) {
  for (; *s; s++) {
    switch (*s) {
      case '<': fputs("&lt;", f); break;
      case '>': fputs("&gt;", f); break;
      case '&': fputs("&amp;", f); break;
      case '"': fputs("&quot;", f); break;
      case '\'': fputs("&#39;", f); break;
      default: fputc(*s, f);
    }
  }
}

/* index.html: one row per complete story, frames with their story, frame
 * number and caption under them. */
static int write_index(run_t *r, int64_t n) {
  char path[4200];
  snprintf(path, sizeof path, "%s/index.html", r->t->out_dir);
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_prefix("story: ");
  FILE *f = mmp_afile_stream(af);
  fprintf(f, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mmpipe stories</title>\n"
             "<style>td{text-align:center;vertical-align:top;font:12px sans-serif;padding:4px;max-width:170px}"
             ".cap{color:#333}</style></head><body>\n"
             "<h1>AR-LDM %s</h1>\n<table>\n", r->t->continuation ? "continuation" : "visualization");
  for (int64_t s = 0; s < n; s++) {
    if (!story_done(r, s)) continue;
    fprintf(f, "<tr><th>story %lld</th>", (long long)s);
    for (int64_t i = 0; i < r->V; i++) {
      int64_t fr = i + 5 - r->V;
      fprintf(f, "<td><img src=\"story%05lld/frame%lld.png\" width=\"160\" alt=\"story %lld frame %lld\"><br>frame %lld",
              (long long)s, (long long)fr, (long long)s, (long long)fr, (long long)fr);
      /* the caption the frame was drawn from, as its PNG records it (also for
       * the stories an earlier run drew) */
      char fpath[4400], *cap = NULL;
      snprintf(fpath, sizeof fpath, "%s/story%05lld/frame%lld.png", r->t->out_dir, (long long)s, (long long)fr);
      if (mmp_image_png_file_text(fpath, "caption", &cap) > 0) {
        fputs("<br><span class=\"cap\">", f);
        html_text(f, cap);
        fputs("</span>", f);
      }
      mmp_error_clear();
      free(cap);
      fputs("</td>", f);
    }
    fprintf(f, "<td><a href=\"story%05lld/strip.png\">strip</a></td></tr>\n", (long long)s);
  }
  fprintf(f, "</table></body></html>\n");
  return mmp_afile_commit(af) < 0 ? mmp_error_prefix("story: ") : 0;
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

/* run.json: settings, versions, seconds per frame (null: resumed). */
static int write_run_json(run_t *r, int64_t n, double secs) {
  char fidv[64] = "";
  story_t *t = r->t;
  char path[4200];
  snprintf(path, sizeof path, "%s/run.json", t->out_dir);
  mmp_afile_t *af = mmp_afile_open(path);
  if (!af) return mmp_error_prefix("story: ");
  FILE *f = mmp_afile_stream(af);
  fprintf(f, "{\n  \"task\": \"%s\",\n  \"checkpoint\": ", t->continuation ? "continuation" : "visualization");
  json_str(f, t->arldm);
  fprintf(f, ",\n  \"%s\": ", t->input[0] ? "story_tensors" : t->stories[0] ? "stories_file" : "dataset");
  if (t->dataset) {
    const mmp_config_t *dn = mmp_config_lookup(r->cfg_root, "dataset.name");
    json_str(f, dn && mmp_config_string(dn) ? mmp_config_string(dn) : "");
  } else
    json_str(f, t->input[0] ? t->input : t->stories);
  fprintf(f, ",\n  \"scheduler\": ");
  json_str(f, r->sched_name);
  fprintf(f, ",\n  \"steps\": %lld,\n  \"guidance_scale\": %.17g,\n  \"seed\": %lld,\n  \"rng\": \"%s\",\n"
             "  \"width\": %lld,\n  \"height\": %lld,\n  \"batch_size\": %lld,\n  \"stories\": %lld,\n"
             "  \"frames_per_story\": %lld,\n  \"mmpipe_version\": \"%s\",\n  \"plugin_version\": \"%s\",\n"
             "  \"seconds\": %.3f,\n  \"frame_seconds\": [",
          (long long)t->steps, t->guidance, (long long)t->seed, t->rng_mode == MMP_RNG_TORCH ? "torch" : "philox",
          (long long)t->width, (long long)t->height, (long long)t->batch, (long long)n, (long long)r->V, STORY_MMPIPE_VERSION,
          "0.1", secs);
  for (int64_t s = 0; s < n; s++) {
    fprintf(f, "%s\n    [", s ? "," : "");
    for (int64_t i = 0; i < r->V; i++) {
      double v = r->frame_secs[s * r->V + i];
      if (v < 0) fprintf(f, "%snull", i ? ", " : "");
      else fprintf(f, "%s%.3f", i ? ", " : "", v);
    }
    fprintf(f, "]");
  }
  fprintf(f, "\n  ]");
  if (t->calc_fid) {
    if (r->have_fid) snprintf(fidv, sizeof fidv, "%.17g", r->fid);
    fprintf(f, ",\n  \"fid\": %s,\n  \"fid_protocol\": \"arldm\",\n  \"fid_images\": %lld", r->have_fid ? fidv : "null",
            (long long)(r->fid_gen ? mmp_fid_acc_count(r->fid_gen) : 0));
  }
  fprintf(f, "\n}\n");
  return mmp_afile_commit(af) < 0 ? mmp_error_prefix("story: ") : 0;
}

/* calculate_fid: the Frechet distance of the drawn frames' features to the
 * ground truth's (pipeline fid's numbers: the same accumulator, protocol
 * arldm, the automatic square root). Stories not drawn in this run
 * (resumed, outside `stories`) are not in it. */
static int finish_fid(run_t *r, int64_t n) {
  int64_t drawn = mmp_fid_acc_count(r->fid_gen);
  if (drawn < n * r->V)
    MMP_WARN("story", "calculate_fid: %lld of %lld frames were drawn in this run (the others resumed or outside "
                      "`stories`): the FID covers those %lld",
             (long long)drawn, (long long)(n * r->V), (long long)drawn);
  if (drawn < 2) {
    MMP_WARN("story", "calculate_fid: fewer than 2 frames drawn in this run: no FID");
    return 0;
  }
  mmp_fid_stats_t g = {0}, t = {0};
  mmp_frechet_info_t info;
  int rc = mmp_fid_acc_finish(r->fid_gen, &g);
  if (rc == 0) rc = mmp_fid_acc_finish(r->fid_gt, &t);
  if (rc == 0)
    rc = mmp_frechet_distance_method(t.mu, t.sigma, g.mu, g.sigma, g.dim, MMP_SQRTM_AUTO, &r->fid, &info);
  if (rc == 0) {
    r->have_fid = true;
    if (info.eps_retry)
      MMP_WARN("story", "fid calculation produces singular product; adding 1e-06 to diagonal of cov estimates");
    printf("FID: %.17g\n", r->fid);
    fflush(stdout);
  } else {
    mmp_error_prefix("story: calculate_fid: ");
  }
  mmp_fid_stats_clear(&g);
  mmp_fid_stats_clear(&t);
  return rc;
}

static int story_run(void *self, mmp_context_t *ctx) {
  story_t *t = self;
  run_t r = {.t = t, .be = mmp_context_backend(ctx), .cfg_root = mmp_context_config(ctx), .clip_rows = -1, .blip_rows = -1};
  r.V = t->continuation ? 4 : 5;
  r.src_V = 5;
  mmp_rng_t *gen = NULL;
  mmp_component_t *ds = NULL;
  mmp_tensormap_t *in = mmp_tensormap_new();
  int rc = 0;
  if (!in) return mmp_error_set(MMP_ENOMEM, "out of memory");
  if (t->input[0] && mmp_safetensors_load_map(t->input, mmp_backend_get("cpu"), false, in) < 0) {
    rc = mmp_error_prefix("story: ");
    goto done;
  }
  {
    /* S from the AR-LDM file, to check the stories before loading any model */
    int nd = 0;
    int64_t sh[MMP_MAX_DIMS];
    if ((rc = arldm_file_open(&r.src, t->arldm)) < 0) {
      rc = mmp_error_prefix("story: ");
      goto done;
    }
    if (arldm_file_info(&r.src, "clip_text_null_token", NULL, &nd, sh) < 0 || nd < 1) {
      rc = mmp_error_set(MMP_EDATA, "story: %s: no clip_text_null_token (is this an AR-LDM state dict?)", t->arldm);
      goto done;
    }
    r.S = sh[nd - 1];
  }
  if (t->stories[0] && (rc = load_stories_file(&r, ctx, in)) < 0) goto done;
  int64_t n = 0;
  /* the token tables' sizes, when the AR-LDM file holds them, bound the ids */
  r.clip_rows = table_rows(&r.src, "text_encoder.text_model.embeddings.token_embedding.weight");
  r.blip_rows = table_rows(&r.src, "mm_encoder.text_encoder.embeddings.word_embeddings.weight");
  if (t->dataset) {
    /* the dataset's first item is checked before any model loads; the
     * others as their batch is read */
    int64_t pos = table_rows(&r.src, "text_encoder.text_model.embeddings.position_embedding.weight");
    if (pos >= 0 && pos < r.S) {
      rc = mmp_error_set(MMP_EDATA, "story: %s: CLIP's position table has %lld rows, S is %lld", t->arldm, (long long)pos,
                         (long long)r.S);
      goto done;
    }
    if (!(ds = mmp_component_create(ctx, MMP_KIND_DATASET, "dataset"))) {
      rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      goto done;
    }
    n = ((const mmp_dataset_ops_t *)ds->plugin)->size(ds->self);
    if (n <= 0) {
      rc = mmp_error_set(MMP_EDATA, "story: the dataset has no stories");
      goto done;
    }
    int64_t n1 = 0;
    if ((rc = load_dataset(&r, ds, 0, 1, in)) < 0 || (rc = check_input(&r, in, &n1)) < 0) goto done;
  } else if ((rc = check_input(&r, in, &n)) < 0)
    goto done;
  if (!(r.c.clip = mmp_component_create(ctx, MMP_KIND_ENCODER, "text_encoder")) ||
      !(r.c.blip = mmp_component_create(ctx, MMP_KIND_ENCODER, "mm_encoder")) ||
      !(r.c.proc = mmp_component_create(ctx, MMP_KIND_PROCESSOR, "blip_processor")) ||
      !(r.c.unet = mmp_component_create(ctx, MMP_KIND_MODEL, "unet")) ||
      !(r.c.vae = mmp_component_create(ctx, MMP_KIND_ENCODER, "vae")) ||
      !(r.c.sched = mmp_component_create(ctx, MMP_KIND_SCHEDULER, "scheduler"))) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
    goto done;
  }
  if (t->calc_fid) {
    if (!(r.fid_enc = mmp_component_create(ctx, MMP_KIND_ENCODER, "fid_encoder"))) {
      rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      goto done;
    }
    if (!(r.fid_gen = mmp_fid_acc_new(r.fid_enc, MMP_FID_ARLDM, 50, NULL, NULL)) ||
        !(r.fid_gt = mmp_fid_acc_new(r.fid_enc, MMP_FID_ARLDM, 50, NULL, NULL))) {
      rc = mmp_error_code();
      goto done;
    }
  }
  if ((rc = build_null_context(&r)) < 0) goto done;
  mmp_tensormap_t *ii = mmp_tensormap_new(), *info = mmp_tensormap_new();
  if (!ii || !info || forward(r.c.vae, "info", ii, info) < 0) {
    mmp_tensormap_free(ii);
    mmp_tensormap_free(info);
    rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    goto done;
  }
  double scaling = 0.18215;
  int down = 8;
  int64_t lch = 4;
  {
    int64_t z[1] = {0};
    mmp_tensor_t *a = mmp_tensormap_get(info, "scaling_factor"), *b = mmp_tensormap_get(info, "downscale_factor"),
                 *c = mmp_tensormap_get(info, "latent_channels");
    if (a) scaling = mmp_tensor_get(a, z);
    if (b) down = (int)mmp_tensor_get(b, z);
    if (c) lch = (int64_t)mmp_tensor_get(c, z);
  }
  mmp_tensormap_free(ii);
  mmp_tensormap_free(info);
  if (t->width % down || t->height % down) {
    rc = mmp_error_set(MMP_ECONFIG, "story: width and height must be multiples of the VAE's downscale factor %d", down);
    goto done;
  }
  if ((rc = mkdir_p(t->out_dir)) < 0) goto done;
  if (t->save_tensors && !(r.saved = mmp_tensormap_new())) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  if (t->writeback[0]) {
    if (!(r.replay = mmp_tensormap_new()) ||
        mmp_safetensors_load_map(t->writeback, mmp_backend_get("cpu"), false, r.replay) < 0) {
      rc = mmp_error_prefix("story: writeback_from: ");
      goto done;
    }
  }
  if (!(gen = mmp_rng_new((uint64_t)t->seed, t->rng_mode))) {
    rc = mmp_error_code();
    goto done;
  }
  {
    const mmp_config_t *sn = mmp_config_lookup(mmp_context_config(ctx), "scheduler.name");
    r.sched_name = sn && mmp_config_string(sn) ? mmp_config_string(sn) : "";
  }
  if (!(r.frame_secs = malloc((size_t)(n * r.V) * sizeof *r.frame_secs))) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  for (int64_t k = 0; k < n * r.V; k++) r.frame_secs[k] = -1;
  if (t->sample_dir[0] && (rc = mkdir_p(t->sample_dir)) < 0) goto done;
  double run0 = now_s();
  for (int64_t s0 = 0; s0 < n && rc == 0; s0 += t->batch) {
    int64_t B = n - s0 < t->batch ? n - s0 : t->batch;
    bool done_all = true;
    for (int64_t b = 0; b < B && done_all; b++)
      done_all = s0 + b < t->first || (t->last >= 0 && s0 + b >= t->last) || story_done(&r, s0 + b);
    if (done_all) {
      /* resume: the generator still draws what these stories drew, so the
       * later stories get the pictures of an uninterrupted run */
      int64_t ls[4] = {B, lch, t->height / down, t->width / down};
      for (int64_t i = 0; i < r.V && rc == 0; i++) {
        mmp_tensor_t *skip = mmp_rng_randn(gen, mmp_backend_get("cpu"), 4, ls);
        if (!skip) rc = mmp_error_code();
        mmp_tensor_unref(skip);
      }
      MMP_DEBUG("story", "stories %lld-%lld complete or outside `stories`: skipped", (long long)s0, (long long)(s0 + B - 1));
      continue;
    }
    if (ds) {
      /* one batch of items at a time: a dataset's split need not fit in memory */
      mmp_tensormap_free(in);
      if (!(in = mmp_tensormap_new())) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      else {
        r.fid_ds_gt = r.fid_gt != NULL;
        rc = load_dataset(&r, ds, s0, B, in);
        r.fid_ds_gt = false;
      }
      if (rc == 0) {
        int64_t nb = 0;
        rc = check_input(&r, in, &nb);
      }
      if (rc == 0) rc = draw_stories(&r, ctx, gen, in, s0, s0, B, scaling, down, lch);
    } else
      rc = draw_stories(&r, ctx, gen, in, 0, s0, B, scaling, down, lch);
    double el = now_s() - run0;
    int64_t left = n - (s0 + B);
    if (rc == 0)
      MMP_INFO("story", "%lld/%lld stories, %.1f s so far, ETA %.1f s", (long long)(s0 + B), (long long)n, el,
               el / (double)(s0 + B) * (double)left);
  }
  if (rc == 0) rc = write_index(&r, n);
  if (rc == 0 && r.fid_gen) rc = finish_fid(&r, n);
  if (rc == 0) rc = write_run_json(&r, n, now_s() - run0);
  if (rc == 0 && r.saved && mmp_tensormap_size(r.saved) > 0) { /* a fully resumed run keeps the earlier file */
    char path[4200];
    snprintf(path, sizeof path, "%s/story_tensors.safetensors", t->out_dir);
    rc = mmp_safetensors_save_map(path, r.saved, NULL); /* atomic */
  }
done:
  mmp_fid_acc_free(r.fid_gen);
  mmp_fid_acc_free(r.fid_gt);
  mmp_component_free(r.fid_enc);
  mmp_tensormap_free(r.saved);
  mmp_tensormap_free(r.replay);
  free(r.frame_secs);
  mmp_tensormap_free(in);
  mmp_tensor_unref(r.type);
  mmp_tensor_unref(r.time);
  mmp_tensor_unref(r.uncond);
  arldm_file_close(&r.src);
  mmp_rng_free(gen);
  mmp_component_free(r.c.sched);
  mmp_component_free(r.c.vae);
  mmp_component_free(r.c.unet);
  mmp_component_free(r.c.proc);
  mmp_component_free(r.c.blip);
  mmp_component_free(r.c.clip);
  mmp_component_free(ds);
  return rc;
}

static const mmp_task_ops_t story_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "story", "0.1",
                            "AR-LDM story visualization and continuation (frames drawn one by one)", story_keys,
                            story_create, story_destroy),
    .run = story_run,
};

MMP_EXPORT int mmp_plugin_task_story_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_story_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &story_ops.base); }
