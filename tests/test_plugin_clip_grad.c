/* tests/test_plugin_clip_grad.c - the tape through the CLIP text encoder: loss and gradients against
 * PyTorch (tests/gen_clip_grad.py, transformers 4.30.0 CLIPTextModel in f32), without and with
 * gradient_checkpointing (each layer a checkpoint region: one tape node per layer). */
#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>

#include "sd_test.h"

typedef struct watch_ctx {
  mmp_tape_t *tape;
  int n, n_f32;
} watch_ctx_t;

static int watch_param(void *user, const char *name, mmp_tensor_t *p) {
  watch_ctx_t *w = user;
  w->n++;
  if (p->dtype == MMP_F32) w->n_f32++;
  return mmp_tape_watch(w->tape, name, p);
}

/* One run with the clip_text keys @keys; the tape's node count in *@nodes. */
static void run_variant(const char *keys, size_t *nodes) {
  char path[4200], cfg[512];
  diag("-- %s", keys[0] ? keys : "no checkpointing");
  snprintf(cfg, sizeof cfg, "encoder = { name = \"clip_text\"; model_dir = \"%%s/pipe\"; trainable = true; %s };", keys);
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/clip_grad.safetensors", tap_srcdir());
  mmp_tensormap_t *fx = mmp_tensormap_new();
  mmp_tensormap_t *io = sd_load("clip_text_io.safetensors");
  if (!io || mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(io);
    ok(0, "fixtures");
    return;
  }
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "encoder", cfg);
  if (!ok(c != NULL, "clip_text with trainable = true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(io);
    return;
  }
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  ok(MMP_OPS_HAS(ops, mmp_encoder_ops_t, parameters), "clip_text offers parameters");
  mmp_tape_t *tape = mmp_tape_new();
  watch_ctx_t w = {tape, 0, 0};
  int prc = ops->parameters(c->self, watch_param, &w);
  ok(prc == 0 && w.n == 36 && w.n_f32 == w.n, "36 f32 parameters watched (as transformers' named_parameters; the file holds bf16)");

  mmp_tensormap_t *in = sd_pick(io, (const char *const[]){"input_ids", "attention_mask", NULL});
  mmp_tensormap_t *out = mmp_tensormap_new();
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  int rc = ops->forward(c->self, NULL, in, out);
  mmp_tensor_t *l1 = mmp_mse_loss(mmp_tensormap_get(out, "last_hidden_state"),
                                  mmp_tensormap_get(fx, "target.last_hidden_state"));
  mmp_tensor_t *l2 = mmp_mse_loss(mmp_tensormap_get(out, "pooler_output"), mmp_tensormap_get(fx, "target.pooler_output"));
  mmp_tensor_t *loss = rc == 0 ? mmp_add(l1, l2) : NULL;
  mmp_tape_set_current(prev);
  *nodes = mmp_tape_size(tape);
  if (!ok(loss != NULL, "forward + two MSE losses under the tape (%zu nodes)", mmp_tape_size(tape)))
    diag("%s", mmp_error_last());
  int64_t one = 1;
  mmp_tensor_t *loss1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(loss1, mmp_tensormap_get(fx, "loss"), "loss");
  mmp_tensor_unref(loss1);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "backward")) diag("%s", mmp_error_last());
  ok(mmp_tensormap_size(grads) == (size_t)w.n, "a gradient for every parameter (%zu)", mmp_tensormap_size(grads));
  int nchecked = sd_check_fixture_grads(grads, fx, NULL);
  ok(nchecked == 12, "%d gradients compared", nchecked);
  mmp_tensor_unref(l1);
  mmp_tensor_unref(l2);
  mmp_tensor_unref(loss);
  mmp_tensormap_free(grads);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_tape_free(tape);
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(fx);
  mmp_tensormap_free(io);
}

int main(void) {
  size_t plain = 0, ckpt = 0;
  run_variant("", &plain);
  run_variant("gradient_checkpointing = true;", &ckpt);
  ok(ckpt > 0 && ckpt * 2 < plain, "with checkpointing the tape holds %zu nodes instead of %zu (a region per layer)", ckpt,
     plain);
  return done_testing();
}
