/* plugins/common/train_arldm.c - the AR-LDM training step of the train task (train_step.h, arldm.h). */
#include <stdlib.h>
#include <string.h>

#include "plugins/common/arldm.h"
#include "plugins/common/train_step.h"

static mmp_tensor_t *field(const train_batch_t *b, const char *name, int ndim) {
  mmp_tensor_t *t = b->extra ? mmp_tensormap_get(b->extra, name) : NULL;
  if (!t || t->ndim != ndim || t->shape[0] != b->n) {
    char d[96];
    mmp_error_set(MMP_EDATA, "train: arldm: the items' %s is %s, expected %d dimensions, the first %lld items (a story "
                  "dataset's train or val split, with its tokenizer vocabularies)", name,
                  t ? mmp_tensor_describe(t, d, sizeof d) : "missing", ndim, (long long)b->n);
    return NULL;
  }
  return t;
}

/* The latents' shape [rows, C, H / down, W / down] from the VAE's info. */
static int latent_shape(const train_parts_t *p, const mmp_tensor_t *images, int64_t rows, int64_t *shape) {
  mmp_tensor_t *c = arldm_call1(p->vae, "info", "latent_channels", NULL, NULL, NULL, NULL, NULL, NULL);
  mmp_tensor_t *d = arldm_call1(p->vae, "info", "downscale_factor", NULL, NULL, NULL, NULL, NULL, NULL);
  int64_t zero[1] = {0};
  int64_t ch = c ? (int64_t)mmp_tensor_get(c, c->ndim ? zero : NULL) : 4;
  int64_t down = d ? (int64_t)mmp_tensor_get(d, d->ndim ? zero : NULL) : 8;
  mmp_tensor_unref(c);
  mmp_tensor_unref(d);
  mmp_error_clear();
  if (down < 1) return mmp_error_set(MMP_EPLUGIN, "train: arldm: the VAE's downscale_factor is %lld", (long long)down);
  shape[0] = rows;
  shape[1] = ch;
  shape[2] = images->shape[3] / down;
  shape[3] = images->shape[4] / down;
  return 0;
}

static int arldm_loss(const train_parts_t *p, const train_batch_t *b, mmp_rng_t *rng, mmp_tensor_t **loss) {
  *loss = NULL;
  arldm_batch_t ab = {field(b, "images", 5), field(b, "captions", 3), field(b, "attention_mask", 3),
                      field(b, "source_images", 5), field(b, "source_caption", 3), field(b, "source_attention_mask", 3)};
  if (!ab.images || !ab.captions || !ab.caption_mask || !ab.source_images || !ab.source_captions || !ab.source_mask)
    return mmp_error_code();
  arldm_parts_t ap = {.clip = p->text_encoder, .blip = p->mm_encoder, .unet = p->unet, .vae = p->vae, .sched = p->scheduler,
                      .type = p->type, .time = p->time, .clip_null = p->clip_null, .blip_null = p->blip_null,
                      .image_null = p->image_null, .num_train_timesteps = p->num_train_timesteps};
  /* the draws of all draw_n items' rows (V per item), in ARLDM.forward's
   * order, cut to this batch's rows */
  int64_t V = ab.captions->shape[1];
  int64_t dn = b->draw_n > 0 ? b->draw_n : b->n, doff = b->draw_n > 0 ? b->draw_off : 0;
  train_batch_t rows = {b->n * V, NULL, NULL, NULL, dn * V, doff * V, NULL};
  arldm_draws_t d = {0};
  mmp_backend_t *be = mmp_context_backend(p->ctx), *cpu = mmp_backend_get("cpu");
  int64_t ls[4];
  int rc = 0;
  double *u = malloc((size_t)(dn * V) * sizeof *u);
  if (!u) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t k = 0; k < dn * V; k++) u[k] = mmp_rng_uniform(b->np_rng ? b->np_rng : rng);
  int64_t own = b->n * V;
  d.cfg_uniform = mmp_tensor_from_data(cpu, MMP_F64, 1, &own, u + doff * V);
  free(u);
  /* With BLIP's dropout its draws come first (in the forward), so the step
   * draws the rest itself, after them, each for the dn items and cut. */
  if (p->blip_dropout) {
    ap.blip_dropout = rng;
    if (dn != b->n) ap.draw_items = dn, ap.draw_off = doff;
  }
  if (!d.cfg_uniform || (!p->blip_dropout &&
      ((rc = latent_shape(p, ab.images, own, ls)) < 0 ||
      !(d.posterior_noise = train_batch_randn(&rows, rng, be, 4, ls)) || !(d.noise = train_batch_randn(&rows, rng, be, 4, ls)) ||
      !(d.timesteps = train_batch_randint(&rows, rng, cpu, 0, p->num_train_timesteps))))) {
    rc = rc < 0 ? rc : mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    arldm_draws_clear(&d);
    return rc;
  }
  rc = arldm_train_step(&ap, &ab, p->blip_dropout ? rng : NULL, &d, loss);
  arldm_draws_clear(&d);
  if (rc < 0) mmp_error_prefix("train: ");
  return rc;
}

static const char *const arldm_needs[] = {"text_encoder", "mm_encoder", "unet", "vae", "scheduler", NULL};

const train_step_ops_t train_step_arldm = {"arldm", arldm_needs, arldm_loss};
