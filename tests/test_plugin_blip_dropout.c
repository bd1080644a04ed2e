/* tests/test_plugin_blip_dropout.c - the blip encoder in train mode (an rng_state input: BERT's
 * dropout) against BLIP_Base of AR-LDM's blip_override after .train() (tests/gen_blip_dropout.py):
 * output, loss and gradients under the tape, a second call continuing the stream, the returned
 * generator state where torch's global generator is after both. */
#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>

#include "sd_test.h"

static const char *const CFG =
    "enc = { name = \"blip\"; config = \"%s/../grad/blip_grad_med_config.json\";"
    " weights = \"%s/../grad/blip_grad.safetensors\"; weights_prefix = \"model.\"; num_heads = 4;"
    " enc_token_id = 39; trainable = true; };";

static double worst;

static void check_grad(const mmp_tensor_t *got, const mmp_tensor_t *want, const char *what) {
  sd_check(got, want, what);
  double r = sd_relerr(got, want);
  if (r > worst) worst = r;
}

/* forward(multimodal) of @in plus "rng_state" from @g; @g takes the returned state */
static int run(mmp_component_t *c, mmp_tensormap_t *in, mmp_rng_t *g, mmp_tensormap_t *out) {
  unsigned char st[MMP_RNG_STATE_SIZE];
  int64_t n = MMP_RNG_STATE_SIZE;
  mmp_rng_get_state(g, st, sizeof st);
  mmp_tensormap_set(in, "rng_state", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 1, &n, st));
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  int rc = ops->forward(c->self, "multimodal", in, out);
  const mmp_tensor_t *back = rc == 0 ? mmp_tensormap_get(out, "rng_state") : NULL;
  if (rc == 0 && !back) rc = mmp_error_set(MMP_EPLUGIN, "no rng_state returned");
  if (rc == 0 && (mmp_tensor_to_host(back, st, sizeof st) < 0 || mmp_rng_set_state(g, st, sizeof st) < 0))
    rc = mmp_error_code();
  return rc;
}

int main(void) {
  char path[4200];
  mmp_tensormap_t *fx = mmp_tensormap_new(), *in0 = mmp_tensormap_new();
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/blip_dropout.safetensors", tap_srcdir());
  int rc = mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx);
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/blip_grad.safetensors", tap_srcdir());
  if (rc < 0 || mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, in0) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(in0);
    return 1;
  }
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "enc", CFG);
  if (!ok(c != NULL, "blip with trainable = true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(in0);
    return done_testing();
  }
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  mmp_tape_t *tape = mmp_tape_new();
  sd_watch_t w = {tape, 0};
  rc = ops->parameters(c->self, sd_watch_cb, &w);
  if (!ok(rc == 0 && w.n > 0, "every parameter watched (%d)", w.n)) diag("%s", mmp_error_last());
  mmp_rng_t *g = mmp_rng_new(7, MMP_RNG_TORCH); /* torch.manual_seed(7) */
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  static const char *const names[] = {"pixel_values", "input_ids", "attention_mask"};
  for (int i = 0; i < 3; i++) mmp_tensormap_set(in, names[i], mmp_tensor_ref(mmp_tensormap_get(in0, names[i])));
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  rc = run(c, in, g, out);
  mmp_tensor_t *y = rc == 0 ? mmp_tensormap_get(out, "last_hidden_state") : NULL;
  mmp_tensor_t *loss = y ? mmp_mse_loss(y, mmp_tensormap_get(in0, "target")) : NULL;
  mmp_tape_set_current(prev);
  if (!ok(loss != NULL, "multimodal forward in train mode + MSE under the tape")) diag("%s", mmp_error_last());
  sd_check(y, mmp_tensormap_get(fx, "out1"), "output with BERT's dropout");
  int64_t one = 1;
  mmp_tensor_t *l1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(l1, mmp_tensormap_get(fx, "loss"), "loss");
  mmp_tensor_unref(l1);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "backward through the dropout masks")) diag("%s", mmp_error_last());
  int n = sd_check_fixture_grads(grads, fx, check_grad);
  ok(n == 16, "%d gradients compared", n);
  diag("largest relative error of a gradient: %.3g", worst);
  /* the stream continues: a second call (first image and caption, no mask), then rand(4) */
  mmp_tensormap_t *in2 = mmp_tensormap_new(), *out2 = mmp_tensormap_new();
  mmp_tensor_t *px = mmp_slice(mmp_tensormap_get(in0, "pixel_values"), 0, 0, 1, 1);
  mmp_tensor_t *ids = mmp_slice(mmp_tensormap_get(in0, "input_ids"), 0, 0, 1, 1);
  mmp_tensormap_set(in2, "pixel_values", px);
  mmp_tensormap_set(in2, "input_ids", ids);
  rc = run(c, in2, g, out2);
  if (!ok(rc == 0, "a second train-mode call")) diag("%s", mmp_error_last());
  sd_check(mmp_tensormap_get(out2, "last_hidden_state"), mmp_tensormap_get(fx, "out2"), "the second call's output");
  int64_t four = 4;
  mmp_tensor_t *after = mmp_rng_rand(g, mmp_backend_get("cpu"), 1, &four), *want = mmp_tensormap_get(fx, "after");
  ok(after && want && memcmp(mmp_tensor_data(after), mmp_tensor_data(want), 16) == 0,
     "the returned generator state is torch's after both calls (rand(4) equal)");
  mmp_tensor_unref(after);
  /* without rng_state: eval mode, no draws, no state returned */
  mmp_tensormap_t *out3 = mmp_tensormap_new();
  mmp_tensormap_t *in3 = mmp_tensormap_new();
  mmp_tensormap_set(in3, "pixel_values", mmp_tensor_ref(px));
  mmp_tensormap_set(in3, "input_ids", mmp_tensor_ref(ids));
  rc = ops->forward(c->self, "multimodal", in3, out3);
  ok(rc == 0 && !mmp_tensormap_get(out3, "rng_state"), "without rng_state: eval mode, no state returned");
  /* a malformed state is refused */
  int64_t three = 3;
  mmp_tensormap_set(in3, "rng_state", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_U8, 1, &three));
  rc = ops->forward(c->self, "multimodal", in3, out3);
  ok(rc == MMP_EINVAL && strstr(mmp_error_last(), "rng_state"), "a short rng_state refused: %s", mmp_error_last());
  mmp_tensormap_free(in3);
  mmp_tensormap_free(out3);
  mmp_tensormap_free(in2);
  mmp_tensormap_free(out2);
  mmp_rng_free(g);
  mmp_tensor_unref(loss);
  mmp_tensormap_free(grads);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_tape_free(tape);
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(fx);
  mmp_tensormap_free(in0);
  return done_testing();
}
