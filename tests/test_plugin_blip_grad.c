/* tests/test_plugin_blip_grad.c - the tape through the blip encoder (multimodal:
 * ViT with fused qkv, BERT with cross-attention): loss and gradients against
 * BLIP_Base of AR-LDM's blip_override imported from source (tests/gen_blip_grad.py),
 * with a word table of the config's size, so that its padding row gets none. */
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

int main(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/blip_grad.safetensors", tap_srcdir());
  mmp_tensormap_t *fx = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(fx);
    return 1;
  }
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "enc", CFG);
  if (!ok(c != NULL, "blip with trainable = true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    return done_testing();
  }
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  ok(MMP_OPS_HAS(ops, mmp_encoder_ops_t, parameters), "blip offers parameters");
  mmp_tape_t *tape = mmp_tape_new();
  sd_watch_t w = {tape, 0};
  int rc = ops->parameters(c->self, sd_watch_cb, &w);
  if (!ok(rc == 0 && w.n > 0, "every parameter watched (%d)", w.n)) diag("%s", mmp_error_last());
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  static const char *const names[] = {"pixel_values", "input_ids", "attention_mask"};
  for (int i = 0; i < 3; i++) mmp_tensormap_set(in, names[i], mmp_tensor_ref(mmp_tensormap_get(fx, names[i])));
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  rc = ops->forward(c->self, "multimodal", in, out);
  mmp_tensor_t *y = rc == 0 ? mmp_tensormap_get(out, "last_hidden_state") : NULL;
  mmp_tensor_t *loss = y ? mmp_mse_loss(y, mmp_tensormap_get(fx, "target")) : NULL;
  mmp_tape_set_current(prev);
  if (!ok(loss != NULL, "multimodal forward + MSE under the tape (%zu nodes)", mmp_tape_size(tape)))
    diag("%s", mmp_error_last());
  sd_check(y, mmp_tensormap_get(fx, "last_hidden_state"), "output");
  int64_t one = 1;
  mmp_tensor_t *l1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(l1, mmp_tensormap_get(fx, "loss"), "loss");
  mmp_tensor_unref(l1);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "backward")) diag("%s", mmp_error_last());
  ok(mmp_tensormap_size(grads) == (size_t)w.n, "a gradient for every parameter (%zu of %d)", mmp_tensormap_size(grads),
     w.n);
  int n = sd_check_fixture_grads(grads, fx, check_grad);
  ok(n == 16, "%d gradients compared", n);
  /* torch's padding_idx: the [PAD] row (id 0) of the word table gets no gradient */
  mmp_tensor_t *gw = mmp_tensormap_get(grads, "text_encoder.embeddings.word_embeddings.weight");
  double pad = 0;
  for (int64_t j = 0; gw && j < gw->shape[1]; j++) pad = fmax(pad, fabs(mmp_tensor_get(gw, (int64_t[2]){0, j})));
  ok(gw && pad == 0, "the padding row of the word table gets no gradient (max %g)", pad);
  diag("largest relative error of a gradient: %.3g", worst);
  mmp_tensor_unref(loss);
  mmp_tensormap_free(grads);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_tape_free(tape);
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(fx);
  return done_testing();
}
