/* tests/test_plugin_unet_grad.c - the tape through the whole tiny UNet: loss and gradients against PyTorch
 * (tests/gen_unet_grad.py, diffusers 0.19.3 UNet2DConditionModel in f32). */
#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>
#include <mmpipe/optim.h>

#include "sd_test.h"

static const char *const CFG = "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; trainable = true; };";

typedef struct watch_ctx {
  mmp_tape_t *tape;
  mmp_tensormap_t *params;
  int n_f32, n;
} watch_ctx_t;

static int watch_param(void *user, const char *name, mmp_tensor_t *p) {
  watch_ctx_t *w = user;
  w->n++;
  if (p->dtype == MMP_F32) w->n_f32++;
  mmp_tensormap_set(w->params, name, mmp_tensor_ref(p));
  return mmp_tape_watch(w->tape, name, p);
}

static int count_param(void *user, const char *name, mmp_tensor_t *p) {
  (void)name;
  (void)p;
  ++*(int *)user;
  return 0;
}

/* Our gradient (possibly [O, I] where torch has a 1x1 conv's [O, I, 1, 1])
 * against the fixture's. */
static double worst;

static void check_grad(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  mmp_tensor_t *g = NULL;
  if (got && want && mmp_tensor_numel(got) == mmp_tensor_numel(want))
    g = mmp_reshape((mmp_tensor_t *)got, want->ndim, want->shape);
  sd_check(g, want, what);
  double r = sd_relerr(g, want);
  if (r > worst) worst = r;
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

  /* without trainable = true the weights are a read-only mapping: refused */
  sd_env_t e0;
  mmp_component_t *c0 = sd_component(&e0, MMP_KIND_MODEL, "model",
                                     "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; };");
  const mmp_model_ops_t *ops0 = c0 ? (const mmp_model_ops_t *)c0->plugin : NULL;
  ok(ops0 && MMP_OPS_HAS(ops0, mmp_model_ops_t, parameters), "unet2d_condition offers parameters");
  int n0 = 0;
  int rc0 = ops0 ? ops0->parameters(c0->self, count_param, &n0) : -1;
  ok(rc0 == MMP_EINVAL && strstr(mmp_error_last(), "trainable = true"), "parameters without trainable: %s",
     mmp_error_last());
  mmp_component_free(c0);
  sd_env_close(&e0);

  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_MODEL, "model", CFG);
  if (!ok(c != NULL, "unet2d_condition with trainable = true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    return done_testing();
  }
  const mmp_model_ops_t *ops = (const mmp_model_ops_t *)c->plugin;
  mmp_tape_t *tape = mmp_tape_new();
  watch_ctx_t w = {tape, mmp_tensormap_new(), 0, 0};
  int prc = ops->parameters(c->self, watch_param, &w);
  ok(prc == 0, "every parameter watched (%d)", w.n);
  ok(w.n > 0 && w.n_f32 == w.n, "all f32 (the file holds f16)");

  mmp_tensor_t *sample = mmp_clone(mmp_tensormap_get(fx, "sample"));
  mmp_tensor_t *ehs = mmp_clone(mmp_tensormap_get(fx, "encoder_hidden_states"));
  mmp_tape_watch(tape, "sample", sample);
  mmp_tape_watch(tape, "encoder_hidden_states", ehs);
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_tensor_ref(sample));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(ehs));
  mmp_tensormap_set(in, "timestep", mmp_tensor_ref(mmp_tensormap_get(fx, "timestep")));
  mmp_tensormap_set(in, "encoder_attention_mask", mmp_tensor_ref(mmp_tensormap_get(fx, "encoder_attention_mask")));

  mmp_tape_t *prev = mmp_tape_set_current(tape);
  int rc = ops->forward(c->self, NULL, in, out);
  mmp_tensor_t *y = mmp_tensormap_get(out, "sample");
  mmp_tensor_t *loss = rc == 0 ? mmp_mse_loss(y, mmp_tensormap_get(fx, "target")) : NULL;
  mmp_tape_set_current(prev);
  if (!ok(loss != NULL, "forward + MSE under the tape (%zu nodes)", mmp_tape_size(tape))) diag("%s", mmp_error_last());
  sd_check(y, mmp_tensormap_get(fx, "out_sample"), "output");
  int64_t one = 1;
  mmp_tensor_t *loss1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(loss1, mmp_tensormap_get(fx, "loss"), "loss");
  mmp_tensor_unref(loss1);

  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "backward")) diag("%s", mmp_error_last());
  ok(mmp_tensormap_size(grads) == (size_t)w.n + 2, "a gradient for every parameter and both inputs (%zu)",
     mmp_tensormap_size(grads));
  int nchecked = sd_check_fixture_grads(grads, fx, check_grad);
  ok(nchecked == 30, "%d gradients compared", nchecked);
  diag("largest relative error of a gradient: %.3g", worst);

  mmp_tensor_unref(loss);
  mmp_tensormap_free(grads);
  mmp_tensormap_free(out);

  /* AdamW steps on the same batch (gen_unet_grad.py: lr 1e-3, eps 1e-5,
   * weight decay 0.01): every step's loss and the final weights */
  mmp_tensor_t *want_losses = mmp_tensormap_get(fx, "adamw.loss");
  int64_t nsteps = want_losses ? want_losses->shape[0] : 0;
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 1e-3;
  hp.eps = 1e-5;
  hp.weight_decay = 0.01;
  mmp_adamw_t *opt = mmp_adamw_new(&hp);
  for (size_t i = 0; i < mmp_tensormap_size(w.params); i++)
    mmp_adamw_add_param(opt, mmp_tensormap_name(w.params, i), mmp_tensormap_at(w.params, i));
  ok(mmp_adamw_size(opt) == (size_t)w.n, "AdamW over every parameter");
  double worst_loss = 0;
  for (int64_t step = 0; step < nsteps; step++) {
    watch_ctx_t ws = {tape, mmp_tensormap_new(), 0, 0};
    int wrc = ops->parameters(c->self, watch_param, &ws);
    mmp_tensormap_t *o = mmp_tensormap_new(), *g = mmp_tensormap_new();
    prev = mmp_tape_set_current(tape);
    int frc = ops->forward(c->self, NULL, in, o);
    mmp_tensor_t *l = frc == 0 ? mmp_mse_loss(mmp_tensormap_get(o, "sample"), mmp_tensormap_get(fx, "target")) : NULL;
    mmp_tape_set_current(prev);
    int brc = l ? mmp_tape_backward(tape, l, NULL, g) : -1;
    int src = brc == 0 ? mmp_adamw_step(opt, g) : -1;
    if (!ok(wrc == 0 && brc == 0 && src == 0, "AdamW step %lld", (long long)step)) diag("%s", mmp_error_last());
    int64_t ix[1] = {step};
    double got = l ? mmp_tensor_get(l, NULL) : NAN, want = mmp_tensor_get(want_losses, ix);
    double r = fabs(got - want) / fabs(want);
    if (!(r <= worst_loss)) worst_loss = r;
    mmp_tensor_unref(l);
    mmp_tensormap_free(o);
    mmp_tensormap_free(g);
    mmp_tensormap_free(ws.params);
  }
  ok(nsteps == 3 && worst_loss <= SD_TOL, "the loss of each of %lld AdamW steps within 1e-4 relative (%.3g)",
     (long long)nsteps, worst_loss);
  int nfinal = 0;
  worst = 0;
  for (size_t i = 0; i < mmp_tensormap_size(fx); i++) {
    const char *name = mmp_tensormap_name(fx, i);
    if (strncmp(name, "adamw.", 6) != 0 || strcmp(name, "adamw.loss") == 0) continue;
    char what[256];
    snprintf(what, sizeof what, "%s after the AdamW steps", name + 6);
    check_grad(mmp_tensormap_get(w.params, name + 6), mmp_tensormap_at(fx, i), what);
    nfinal++;
  }
  ok(nfinal >= 10, "%d parameters compared after the AdamW steps", nfinal);
  diag("largest relative error of a parameter after the AdamW steps: %.3g", worst);
  mmp_adamw_free(opt);

  mmp_tensor_unref(sample);
  mmp_tensor_unref(ehs);
  mmp_tensormap_free(in);
  mmp_tensormap_free(w.params);
  mmp_tape_free(tape);
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(fx);
  return done_testing();
}
