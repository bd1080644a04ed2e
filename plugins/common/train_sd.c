/* plugins/common/train_sd.c - the Stable Diffusion fine-tuning step of the train task (train_step.h). */
#include <stdlib.h>
#include <string.h>

#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>

#include "plugins/common/sd_common.h"
#include "plugins/common/train_step.h"

static int fwd(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder/model share the layout */
  return ops->forward(c->self, method, in, out);
}

mmp_tensor_t *train_batch_randn(const train_batch_t *b, mmp_rng_t *rng, mmp_backend_t *be, int ndim,
                                const int64_t *shape) {
  if (ndim >= 1 && shape[0] != b->n) {
    mmp_error_set(MMP_EINVAL, "train: a draw of %lld rows for a batch of %lld", (long long)shape[0], (long long)b->n);
    return NULL;
  }
  return mmp_rng_randn_rows(rng, be, ndim, shape, b->draw_n > 0 ? b->draw_n : b->n, b->draw_n > 0 ? b->draw_off : 0);
}

mmp_tensor_t *train_batch_randint(const train_batch_t *b, mmp_rng_t *rng, mmp_backend_t *be, int64_t low,
                                  int64_t high) {
  int64_t n = b->n;
  return mmp_rng_randint_rows(rng, be, low, high, 1, &n, b->draw_n > 0 ? b->draw_n : b->n, b->draw_n > 0 ? b->draw_off : 0);
}

/* latent_dist.sample() x scaling, with the tape suspended (the VAE is
 * frozen). (transfer full) */
static mmp_tensor_t *encode_latents(const train_parts_t *p, const train_batch_t *b, mmp_rng_t *rng) {
  mmp_tape_t *prev = mmp_tape_set_current(NULL);
  mmp_tensormap_t *in = mmp_tensormap_new(), *info = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *z = NULL;
  mmp_backend_t *be = mmp_context_backend(p->ctx);
  if (!in || !info || !out) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  /* the noise has latent_mean's shape: ask the VAE for it */
  if (fwd(p->vae, "info", in, info) < 0) goto done;
  mmp_tensor_t *lc = mmp_tensormap_get(info, "latent_channels"), *df = mmp_tensormap_get(info, "downscale_factor");
  int64_t zero[1] = {0};
  int64_t ch = lc ? (int64_t)mmp_tensor_get(lc, lc->ndim ? zero : NULL) : 4;
  int64_t down = df ? (int64_t)mmp_tensor_get(df, df->ndim ? zero : NULL) : 8;
  int64_t shape[4] = {b->n, ch, b->pixels->shape[2] / down, b->pixels->shape[3] / down};
  mmp_tensor_t *noise = train_batch_randn(b, rng, be, 4, shape);
  if (!noise || mmp_tensormap_set(in, "noise", noise) < 0 ||
      mmp_tensormap_set(in, "sample", mmp_tensor_ref(b->pixels)) < 0 || fwd(p->vae, "encode", in, out) < 0)
    goto done;
  mmp_tensor_t *s = mmp_tensormap_need(out, "latent_sample");
  if (s) z = mmp_scale(s, p->scaling, 0.0);
done:
  mmp_tensormap_free(in);
  mmp_tensormap_free(info);
  mmp_tensormap_free(out);
  mmp_tape_set_current(prev);
  return z;
}

/* CLIP hidden states of the captions, under the caller's tape (the text
 * encoder may be trained). (transfer full) */
static mmp_tensor_t *encode_text(const train_parts_t *p, const train_batch_t *b) {
  const mmp_processor_ops_t *tops = (const mmp_processor_ops_t *)p->tokenizer->plugin;
  if (tops->base.struct_size < sizeof(mmp_processor_ops_t) || !tops->encode_text) {
    mmp_error_set(MMP_EPLUGIN, "train: tokenizer '%s' cannot encode text", tops->base.name);
    return NULL;
  }
  mmp_tensormap_t *tk = mmp_tensormap_new(), *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *h = NULL;
  if (!tk || !in || !out) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  if (tops->encode_text(p->tokenizer->self, b->captions, (size_t)b->n, tk) < 0) goto done;
  mmp_tensor_t *ids = mmp_tensormap_need(tk, "input_ids");
  /* as train_text_to_image.py: no attention mask */
  if (!ids || mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids)) < 0 || fwd(p->text_encoder, NULL, in, out) < 0)
    goto done;
  h = mmp_tensormap_need(out, "last_hidden_state");
  if (h) mmp_tensor_ref(h);
done:
  mmp_tensormap_free(tk);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return h;
}

static int sd_loss(const train_parts_t *p, const train_batch_t *b, mmp_rng_t *rng, mmp_tensor_t **loss) {
  *loss = NULL;
  mmp_backend_t *be = mmp_context_backend(p->ctx);
  mmp_tensor_t *lat = NULL, *noise = NULL, *t = NULL, *noisy = NULL, *ehs = NULL;
  mmp_tensormap_t *in = NULL, *out = NULL;
  int rc = 0;
  if (!(lat = encode_latents(p, b, rng))) goto fail;
  if (!(noise = train_batch_randn(b, rng, be, lat->ndim, lat->shape))) goto fail;
  if (!(t = train_batch_randint(b, rng, be, 0, p->num_train_timesteps))) goto fail;
  const mmp_scheduler_ops_t *sops = (const mmp_scheduler_ops_t *)p->scheduler->plugin;
  if ((rc = sops->add_noise(p->scheduler->self, lat, noise, t, &noisy)) < 0) goto done;
  if (!(ehs = encode_text(p, b))) goto fail;
  in = mmp_tensormap_new();
  out = mmp_tensormap_new();
  if (!in || !out || mmp_tensormap_set(in, "sample", mmp_tensor_ref(noisy)) < 0 ||
      mmp_tensormap_set(in, "timestep", mmp_tensor_ref(t)) < 0 ||
      mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(ehs)) < 0 || fwd(p->unet, NULL, in, out) < 0)
    goto fail;
  mmp_tensor_t *pred = mmp_tensormap_need(out, "sample");
  /* epsilon prediction: the target is the noise */
  if (!pred || !(*loss = mmp_mse_loss(pred, noise))) goto fail;
  goto done;
fail:
  rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
done:
  mmp_tensor_unref(lat);
  mmp_tensor_unref(noise);
  mmp_tensor_unref(t);
  mmp_tensor_unref(noisy);
  mmp_tensor_unref(ehs);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return rc;
}

static const char *const sd_needs[] = {"tokenizer", "text_encoder", "unet", "vae", "scheduler", NULL};

const train_step_ops_t train_step_sd = {"sd", sd_needs, sd_loss};
