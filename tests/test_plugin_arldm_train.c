/* tests/test_plugin_arldm_train.c - AR-LDM's training step (arldm_train_step,
 * plugins/common/arldm.c) through the tape: the loss and the gradients of
 * named parameters against AR-LDM's own ARLDM.forward + backward
 * (tests/gen_arldm_train.py, fixture tests/fixtures/arldm/train_step.safetensors)
 * on the tiny AR-LDM, with the recorded draws, for two cases of AR-LDM's
 * config: visualization with nothing frozen, continuation with freeze_clip
 * and freeze_blip (the freezing done by name patterns, mmp_param_trainable). */
#include <mmpipe/autograd.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>

#include "plugins/common/arldm.h"
#include "sd_test.h"

#define ARLDM_FILE "%1$s/../arldm/arldm_tiny.safetensors"
#define DIR "%1$s/../arldm"

static const char *const CFG =
    "text_encoder = { name = \"clip_text\"; config = \"" DIR "/text_encoder/config.json\"; weights = \"" ARLDM_FILE "\";"
    " weights_prefix = \"text_encoder.\"; trainable = true; };\n"
    "mm_encoder = { name = \"blip\"; config = \"" DIR "/med_config.json\"; weights = \"" ARLDM_FILE "\";"
    " weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; %2$s };\n"
    "unet = { name = \"unet2d_condition\"; config = \"" DIR "/unet/config.json\"; weights = \"" ARLDM_FILE "\";"
    " weights_prefix = \"unet.\"; trainable = true; };\n"
    "vae = { name = \"vae\"; config = \"" DIR "/vae/config.json\"; weights = \"" ARLDM_FILE "\"; weights_prefix = \"vae.\"; };\n"
    "scheduler = { name = \"ddpm\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
    " num_train_timesteps = 1000; };\n";

typedef struct watch {
  mmp_tape_t *tape;
  const char *const *freeze, *const *train;
  int n;
  bool blip; /* a mm_encoder parameter was listed */
} watch_t;

static int watch_cb(void *user, const char *name, mmp_tensor_t *p) {
  watch_t *w = user;
  if (!strncmp(name, "mm_encoder.", 11)) w->blip = true;
  if (!mmp_param_trainable(name, w->freeze, w->train)) return 0;
  w->n++;
  return mmp_tape_watch(w->tape, name, p);
}

static double worst;

static void check_grad(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  mmp_tensor_t *g = NULL;
  if (got && want && mmp_tensor_numel(got) == mmp_tensor_numel(want))
    g = mmp_reshape((mmp_tensor_t *)got, want->ndim, want->shape); /* 1x1 convs: [O, I] here, [O, I, 1, 1] in torch */
  sd_check(g, want, what);
  double r = sd_relerr(g, want);
  if (r > worst) worst = r;
  if (getenv("ARLDM_DEBUG") && g && r > SD_TOL && want->ndim == 2)
    for (int64_t i = 0; i < want->shape[0]; i++) {
      double dm = 0, wm = 0;
      for (int64_t j = 0; j < want->shape[1]; j++) {
        int64_t ix[2] = {i, j};
        double a = mmp_tensor_get(g, ix), b = mmp_tensor_get(want, ix);
        if (fabs(a - b) > dm) dm = fabs(a - b);
        if (fabs(b) > wm) wm = fabs(b);
      }
      if (dm > 1e-6) diag("  row %lld: max diff %.3g, max |want| %.3g", (long long)i, dm, wm);
    }
  mmp_tensor_unref(g);
}

/* BLIP pixels: the fixture's 7x7 grid repeated 32x32 (nearest) */
static mmp_tensor_t *expand_pixels(const mmp_tensor_t *small) {
  int64_t B = small->shape[0], F = small->shape[1], G = small->shape[3], R = 224 / G, P = 224;
  int64_t n = B * F * 3 * P * P;
  float *src = malloc((size_t)mmp_tensor_numel(small) * sizeof *src), *dst = malloc((size_t)n * sizeof *dst);
  mmp_tensor_t *t = NULL;
  if (src && dst && mmp_tensor_to_host(small, src, (size_t)mmp_tensor_numel(small) * sizeof *src) == 0) {
    for (int64_t c = 0; c < B * F * 3; c++)
      for (int64_t y = 0; y < P; y++)
        for (int64_t x = 0; x < P; x++) dst[(c * P + y) * P + x] = src[(c * G + y / R) * G + x / R];
    int64_t shape[5] = {B, F, 3, P, P};
    t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 5, shape, dst);
  }
  free(src);
  free(dst);
  return t;
}

static mmp_tensor_t *fx_get(const mmp_tensormap_t *fx, const char *c, const char *k) {
  char n[256];
  snprintf(n, sizeof n, "%s.%s", c, k);
  return mmp_tensormap_get(fx, n);
}

/* the extras of the AR-LDM file: owned f32 tables (trainable) and the null buffers */
static int load_extras(arldm_parts_t *p) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tests/fixtures/arldm/arldm_tiny.safetensors", tap_srcdir());
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) return -1;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensor_t *ty = mmp_safetensors_get(st, "modal_type_embeddings.weight", cpu, MMP_F32);
  mmp_tensor_t *ti = mmp_safetensors_get(st, "time_embeddings.weight", cpu, MMP_F32);
  p->type = ty ? mmp_clone(ty) : NULL;
  p->time = ti ? mmp_clone(ti) : NULL;
  mmp_tensor_unref(ty);
  mmp_tensor_unref(ti);
  p->clip_null = mmp_safetensors_get(st, "clip_text_null_token", cpu, MMP_I64);
  p->blip_null = mmp_safetensors_get(st, "blip_text_null_token", cpu, MMP_I64);
  p->image_null = mmp_safetensors_get(st, "blip_image_null_token", cpu, MMP_F32);
  mmp_safetensors_close(st);
  return p->type && p->time && p->clip_null && p->blip_null && p->image_null ? 0 : -1;
}

static void run_case(const char *c, int seed, const mmp_tensormap_t *fx, const char *const *freeze,
                     const char *const *train, bool blip_trainable) {
  sd_env_t e;
  char text[8192], fxdir[4096];
  snprintf(fxdir, sizeof fxdir, "%s/tests/fixtures/sd", tap_srcdir());
  snprintf(text, sizeof text, CFG, fxdir, blip_trainable ? "trainable = true;" : "");
  if (!ok(sd_env_open(&e, text) == 0, "%s: config", c)) {
    diag("%s", mmp_error_last());
    return;
  }
  arldm_parts_t p = {0};
  p.clip = mmp_component_create(e.ctx, MMP_KIND_ENCODER, "text_encoder");
  p.blip = mmp_component_create(e.ctx, MMP_KIND_ENCODER, "mm_encoder");
  p.unet = mmp_component_create(e.ctx, MMP_KIND_MODEL, "unet");
  p.vae = mmp_component_create(e.ctx, MMP_KIND_ENCODER, "vae");
  p.sched = mmp_component_create(e.ctx, MMP_KIND_SCHEDULER, "scheduler");
  if (!ok(p.clip && p.blip && p.unet && p.vae && p.sched && load_extras(&p) == 0, "%s: the parts", c)) {
    diag("%s", mmp_error_last());
    goto done;
  }
  mmp_tensor_t *src = expand_pixels(fx_get(fx, c, "source_small"));
  arldm_batch_t b = {.images = fx_get(fx, c, "images"), .captions = fx_get(fx, c, "captions"),
                     .caption_mask = fx_get(fx, c, "caption_mask"), .source_images = src,
                     .source_captions = fx_get(fx, c, "source_captions"), .source_mask = fx_get(fx, c, "source_mask")};
  arldm_draws_t d = {.cfg_uniform = mmp_tensor_ref(fx_get(fx, c, "cfg_uniform")),
                     .posterior_noise = mmp_tensor_ref(fx_get(fx, c, "posterior_noise")),
                     .noise = mmp_tensor_ref(fx_get(fx, c, "noise")),
                     .timesteps = mmp_tensor_ref(fx_get(fx, c, "timesteps"))};
  mmp_tape_t *tape = mmp_tape_new();
  watch_t w = {tape, freeze, train, 0, false};
  int rc = arldm_parameters(&p, watch_cb, &w);
  if (!ok(rc == 0, "%s: %d parameters watched", c, w.n)) diag("%s", mmp_error_last());
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *loss = NULL;
  rc = arldm_train_step(&p, &b, NULL, &d, &loss);
  mmp_tape_set_current(prev);
  if (!ok(rc == 0 && loss, "%s: the step (%zu nodes)", c, mmp_tape_size(tape))) diag("%s", mmp_error_last());
  int64_t one = 1;
  mmp_tensor_t *l1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(l1, fx_get(fx, c, "loss"), "loss");
  if (l1) diag("%s: loss %.7g", c, mmp_tensor_get(l1, (int64_t[1]){0}));
  mmp_tensor_unref(l1);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "%s: backward", c)) diag("%s", mmp_error_last());
  ok(mmp_tensormap_size(grads) == (size_t)w.n, "%s: a gradient for each of the %d watched parameters (%zu)", c, w.n,
     mmp_tensormap_size(grads));
  char pre[64];
  int n = snprintf(pre, sizeof pre, "%s.grad.", c), checked = 0, skipped = 0;
  for (size_t i = 0; i < mmp_tensormap_size(fx); i++) {
    const char *name = mmp_tensormap_name(fx, i);
    if (strncmp(name, pre, (size_t)n)) continue;
    const char *pn = name + n;
    if (!strncmp(pn, "mm_encoder.", 11) && !w.blip) { /* BLIP without parameters: frozen here */
      skipped++;
      continue;
    }
    char what[256];
    snprintf(what, sizeof what, "%s: d loss / d %s", c, pn);
    check_grad(mmp_tensormap_get(grads, pn), mmp_tensormap_at(fx, i), what);
    checked++;
  }
  ok(checked >= 8, "%s: %d gradients compared (%d of BLIP skipped: no blip parameters)", c, checked, skipped);
  mmp_tensor_unref(loss);
  mmp_tensormap_free(grads);
  mmp_tape_free(tape);
  arldm_draws_clear(&d);

  /* the draws made by the step: with the CFG uniforms given (AR-LDM draws
   * them from numpy), a torch generator seeded as the fixture's global one
   * draws the posterior noise, the noise and t as ARLDM.forward did */
  mmp_rng_t *g = mmp_rng_new((uint64_t)seed, MMP_RNG_TORCH);
  arldm_draws_t d2 = {.cfg_uniform = mmp_tensor_ref(fx_get(fx, c, "cfg_uniform"))};
  mmp_tensor_t *loss2 = NULL;
  rc = arldm_train_step(&p, &b, g, &d2, &loss2);
  if (!ok(rc == 0 && loss2, "%s: the step drawing from a torch generator seeded %d", c, seed)) diag("%s", mmp_error_last());
  ok(d2.posterior_noise && sd_relerr(d2.posterior_noise, fx_get(fx, c, "posterior_noise")) == 0,
     "%s: posterior noise = the VAE posterior's torch.randn", c);
  ok(d2.noise && sd_relerr(d2.noise, fx_get(fx, c, "noise")) == 0, "%s: noise = torch.randn", c);
  bool same_t = d2.timesteps && mmp_tensor_numel(d2.timesteps) == mmp_tensor_numel(fx_get(fx, c, "timesteps"));
  for (int64_t k = 0; same_t && k < mmp_tensor_numel(d2.timesteps); k++)
    same_t = mmp_tensor_get(d2.timesteps, &k) == mmp_tensor_get(fx_get(fx, c, "timesteps"), &k);
  ok(same_t, "%s: timesteps = torch.randint(0, 1000)", c);
  l1 = loss2 ? mmp_reshape(loss2, 1, &one) : NULL;
  sd_check(l1, fx_get(fx, c, "loss"), "loss with the drawn noise");
  mmp_tensor_unref(l1);
  mmp_tensor_unref(loss2);
  arldm_draws_clear(&d2);
  mmp_rng_free(g);
  mmp_tensor_unref(src);
done:
  mmp_tensor_unref(p.type);
  mmp_tensor_unref(p.time);
  mmp_tensor_unref(p.clip_null);
  mmp_tensor_unref(p.blip_null);
  mmp_tensor_unref(p.image_null);
  mmp_component_free(p.clip);
  mmp_component_free(p.blip);
  mmp_component_free(p.unet);
  mmp_component_free(p.vae);
  mmp_component_free(p.sched);
  sd_env_close(&e);
}

int main(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tests/fixtures/arldm/train_step.safetensors", tap_srcdir());
  mmp_tensormap_t *fx = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(fx);
    return 1;
  }
  /* AR-LDM's switches as patterns (doc/training.md) */
  static const char *const none[] = {NULL};
  static const char *const freeze_cb[] = {"text_encoder.*", "mm_encoder.*", "vae.*", NULL};
  static const char *const train_cb[] = {"*.token_embedding.*", "*.word_embeddings.*", NULL};
  run_case("vis", 111, fx, none, none, true); /* gen_arldm_train.py: torch.manual_seed(100 + 11) */
  run_case("cont", 112, fx, freeze_cb, train_cb, true);
  diag("largest relative error of a gradient: %.3g", worst);
  mmp_tensormap_free(fx);
  return done_testing();
}
