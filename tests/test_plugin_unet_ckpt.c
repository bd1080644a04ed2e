/* tests/test_plugin_unet_ckpt.c - gradient_checkpointing = true on the tiny UNet: the same loss and gradients as
 * without (and as diffusers, tests/gen_unet_grad.py), with less memory held by the tape. */
#include <math.h>

#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>

#include "sd_test.h"

static const char *const CFG_OFF =
    "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; trainable = true; };";
static const char *const CFG_ON = "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; trainable = true; "
                                  "gradient_checkpointing = true; };";

static int watch_param(void *user, const char *name, mmp_tensor_t *p) { return mmp_tape_watch(user, name, p); }

typedef struct step {
  double loss;
  mmp_tensor_t *out;
  mmp_tensormap_t *grads;
  size_t nodes, after_forward, peak;
} step_t;

/* One forward + MSE + backward of @c on the fixture's batch. */
static int run(mmp_component_t *c, const mmp_tensormap_t *fx, step_t *s) {
  const mmp_model_ops_t *ops = (const mmp_model_ops_t *)c->plugin;
  mmp_tape_t *tape = mmp_tape_new();
  int rc = ops->parameters(c->self, watch_param, tape);
  mmp_tensor_t *sample = mmp_clone(mmp_tensormap_get(fx, "sample"));
  mmp_tensor_t *ehs = mmp_clone(mmp_tensormap_get(fx, "encoder_hidden_states"));
  if (rc == 0) rc = mmp_tape_watch(tape, "sample", sample);
  if (rc == 0) rc = mmp_tape_watch(tape, "encoder_hidden_states", ehs);
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_tensor_ref(sample));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(ehs));
  mmp_tensormap_set(in, "timestep", mmp_tensor_ref(mmp_tensormap_get(fx, "timestep")));
  mmp_tensormap_set(in, "encoder_attention_mask", mmp_tensor_ref(mmp_tensormap_get(fx, "encoder_attention_mask")));
  mmp_tensor_t *loss = NULL;
  if (rc == 0) {
    mmp_tape_t *prev = mmp_tape_set_current(tape);
    rc = ops->forward(c->self, NULL, in, out);
    loss = rc == 0 ? mmp_mse_loss(mmp_tensormap_get(out, "sample"), mmp_tensormap_get(fx, "target")) : NULL;
    mmp_tape_set_current(prev);
    if (!loss) rc = -1;
  }
  s->nodes = mmp_tape_size(tape);
  s->after_forward = mmp_tape_saved_bytes(tape);
  s->grads = mmp_tensormap_new();
  if (rc == 0) rc = mmp_tape_backward(tape, loss, NULL, s->grads);
  s->peak = mmp_tape_peak_bytes(tape);
  s->loss = loss ? mmp_tensor_get(loss, NULL) : NAN;
  s->out = mmp_tensor_ref(mmp_tensormap_get(out, "sample"));
  ok(rc == 0 && mmp_tape_saved_bytes(tape) == 0, "forward + backward (%zu nodes, %zu bytes held after the forward, "
                                                  "%zu at the peak; none after the backward)",
     s->nodes, s->after_forward, s->peak);
  if (rc) diag("%s", mmp_error_last());
  mmp_tensor_unref(loss);
  mmp_tensor_unref(sample);
  mmp_tensor_unref(ehs);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_tape_free(tape);
  return rc;
}

/* Largest |a - b| over the largest |b|; 0 when bit for bit equal. */
static double normerr(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  if (!a || !b || mmp_tensor_numel(a) != mmp_tensor_numel(b)) return INFINITY;
  mmp_tensor_t *ca = mmp_contiguous((mmp_tensor_t *)a), *cb = mmp_contiguous((mmp_tensor_t *)b);
  const float *x = mmp_tensor_data(ca), *y = mmp_tensor_data(cb);
  double d = 0, m = 0;
  for (int64_t i = 0; i < mmp_tensor_numel(a); i++) {
    if (fabs((double)x[i] - y[i]) > d) d = fabs((double)x[i] - y[i]);
    if (fabs((double)y[i]) > m) m = fabs((double)y[i]);
  }
  mmp_tensor_unref(ca);
  mmp_tensor_unref(cb);
  return d == 0 ? 0 : d / (m > 0 ? m : 1);
}

static void check_fixture(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  mmp_tensor_t *g = NULL;
  if (got && want && mmp_tensor_numel(got) == mmp_tensor_numel(want))
    g = mmp_reshape((mmp_tensor_t *)got, want->ndim, want->shape);
  sd_check(g, want, what);
  mmp_tensor_unref(g);
}

int main(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/unet_grad.safetensors", tap_srcdir());
  mmp_tensormap_t *fx = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(fx);
    return 1;
  }
  sd_env_t e0, e1;
  mmp_component_t *c0 = sd_component(&e0, MMP_KIND_MODEL, "model", CFG_OFF);
  mmp_component_t *c1 = sd_component(&e1, MMP_KIND_MODEL, "model", CFG_ON);
  if (!ok(c0 && c1, "the tiny UNet with gradient_checkpointing false and true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    return done_testing();
  }
  step_t off = {0}, on = {0};
  run(c0, fx, &off);
  run(c1, fx, &on);
  ok(on.loss == off.loss && normerr(on.out, off.out) == 0, "the same output and loss, bit for bit (%.9g)", on.loss);
  ok(on.nodes < off.nodes / 4, "the tape records one node per region: %zu nodes instead of %zu", on.nodes, off.nodes);
  ok(on.after_forward * 4 < off.after_forward,
     "after the forward the tape holds %zu bytes instead of %zu (the regions' inputs only)", on.after_forward,
     off.after_forward);
  ok(on.peak * 2 < off.peak, "its peak, replays included, is %zu bytes instead of %zu (%.0f%%)", on.peak, off.peak,
     100.0 * (double)on.peak / (double)off.peak);

  /* The gradients. Each op computes the same numbers in both runs (the
   * replay repeats the forward exactly); what changes is the association of
   * some sums. A tensor read several times inside one region and also
   * outside it (a down block's output: twice by the next resnet, once more
   * by the skip connection; the time embedding, read by every resnet; the
   * context, by every cross-attention) gets the region's share summed on
   * the nested tape first, then added to its other uses: (a + b) + c
   * instead of (c + a) + b, a difference in the last bits that propagates
   * to what lies upstream of it. torch.utils.checkpoint sums the same way. */
  size_t n = mmp_tensormap_size(off.grads), exact = 0, bad = 0;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    const char *name = mmp_tensormap_name(off.grads, i);
    double r = normerr(mmp_tensormap_get(on.grads, name), mmp_tensormap_at(off.grads, i));
    if (r == 0) exact++;
    else if (!(r <= 1e-6)) {
      bad++;
      diag("%s: normalised difference %.3g", name, r);
    }
    if (r > worst) worst = r;
  }
  ok(n > 0 && mmp_tensormap_size(on.grads) == n, "a gradient for every parameter and both inputs (%zu)", n);
  ok(bad == 0, "every gradient within 1e-6 of the largest of its tensor (largest difference %.3g)", worst);
  ok(exact > n / 2, "%zu of the %zu gradients bit for bit equal (the rest: reassociated sums)", exact, n);
  ok(normerr(mmp_tensormap_get(on.grads, "up_blocks.0.resnets.0.conv1.weight"),
             mmp_tensormap_get(off.grads, "up_blocks.0.resnets.0.conv1.weight")) == 0,
     "the up blocks' gradients (the walk reaches them before any reassociated sum) bit for bit");
  int nchecked = sd_check_fixture_grads(on.grads, fx, check_fixture);
  ok(nchecked == 30, "with checkpointing, %d gradients compared with diffusers'", nchecked);

  /* without a tape the key changes nothing */
  mmp_tensormap_t *in = mmp_tensormap_new(), *o0 = mmp_tensormap_new(), *o1 = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_tensor_ref(mmp_tensormap_get(fx, "sample")));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(mmp_tensormap_get(fx, "encoder_hidden_states")));
  mmp_tensormap_set(in, "timestep", mmp_tensor_ref(mmp_tensormap_get(fx, "timestep")));
  int r0 = sd_forward(c0, NULL, in, o0), r1 = sd_forward(c1, NULL, in, o1);
  ok(r0 == 0 && r1 == 0 && normerr(mmp_tensormap_get(o1, "sample"), mmp_tensormap_get(o0, "sample")) == 0,
     "inference is the same with the key on");
  mmp_tensormap_free(in);
  mmp_tensormap_free(o0);
  mmp_tensormap_free(o1);

  mmp_tensor_unref(off.out);
  mmp_tensor_unref(on.out);
  mmp_tensormap_free(off.grads);
  mmp_tensormap_free(on.grads);
  mmp_component_free(c0);
  mmp_component_free(c1);
  sd_env_close(&e0);
  sd_env_close(&e1);
  mmp_tensormap_free(fx);
  return done_testing();
}
