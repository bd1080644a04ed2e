/* tests/test_plugin_blip_dropout.c - the blip encoder in train mode (an rng_state input: BERT's
 * dropout, the ViT's stochastic depth) against BLIP_Base of AR-LDM's blip_override after .train()
 * (tests/gen_blip_dropout.py): output, loss and gradients under the tape, a second call continuing
 * the stream, the returned generator state where torch's global generator is after both; without
 * drop path, and with drop_path_rate 0.5 drawn as timm >= 0.5 and as timm 0.4.12 do. */
#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>

#include "sd_test.h"

/* %s: the drop path keys of the variant */
static const char *const CFG =
    "enc = { name = \"blip\"; config = \"%%s/../grad/blip_grad_med_config.json\";"
    " weights = \"%%s/../grad/blip_grad.safetensors\"; weights_prefix = \"model.\"; num_heads = 4;"
    " enc_token_id = 39; trainable = true; %s };";

static double worst;
static size_t last_nodes; /* the tape's nodes after the last check_fixture's forward */

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

/* One fixture of tests/gen_blip_dropout.py with the blip keys @keys;
 * @more: also the eval-mode and malformed-state checks. */
static void check_fixture(const char *file, const char *keys, bool more) {
  char path[4200], cfg[1024];
  worst = 0;
  diag("-- %s (%s)", file, keys[0] ? keys : "no drop path");
  mmp_tensormap_t *fx = mmp_tensormap_new(), *in0 = mmp_tensormap_new();
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/%s", tap_srcdir(), file);
  int rc = mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, fx);
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/blip_grad.safetensors", tap_srcdir());
  if (!ok(rc == 0 && mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, in0) == 0, "read %s", file)) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(in0);
    return;
  }
  snprintf(cfg, sizeof cfg, CFG, keys);
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "enc", cfg);
  if (!ok(c != NULL, "blip with trainable = true")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(fx);
    mmp_tensormap_free(in0);
    return;
  }
  int64_t z[1] = {0};
  const mmp_tensor_t *seed = mmp_tensormap_get(fx, "seed");
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  mmp_tape_t *tape = mmp_tape_new();
  sd_watch_t w = {tape, 0};
  rc = ops->parameters(c->self, sd_watch_cb, &w);
  if (!ok(rc == 0 && w.n > 0, "every parameter watched (%d)", w.n)) diag("%s", mmp_error_last());
  mmp_rng_t *g = mmp_rng_new(seed ? (uint64_t)mmp_tensor_get(seed, z) : 0, MMP_RNG_TORCH); /* torch.manual_seed */
  ok(seed != NULL, "the fixture's seed");
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  static const char *const names[] = {"pixel_values", "input_ids", "attention_mask"};
  for (int i = 0; i < 3; i++) mmp_tensormap_set(in, names[i], mmp_tensor_ref(mmp_tensormap_get(in0, names[i])));
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  rc = run(c, in, g, out);
  mmp_tensor_t *y = rc == 0 ? mmp_tensormap_get(out, "last_hidden_state") : NULL;
  mmp_tensor_t *loss = y ? mmp_mse_loss(y, mmp_tensormap_get(in0, "target")) : NULL;
  mmp_tape_set_current(prev);
  last_nodes = mmp_tape_size(tape);
  if (!ok(loss != NULL, "multimodal forward in train mode + MSE under the tape (%zu nodes)", last_nodes))
    diag("%s", mmp_error_last());
  sd_check(y, mmp_tensormap_get(fx, "out1"), keys[0] ? "output with BERT's dropout and the ViT's drop path" : "output with BERT's dropout");
  int64_t one = 1;
  mmp_tensor_t *l1 = loss ? mmp_reshape(loss, 1, &one) : NULL;
  sd_check(l1, mmp_tensormap_get(fx, "loss"), "loss");
  mmp_tensor_unref(l1);
  mmp_tensormap_t *grads = mmp_tensormap_new();
  rc = loss ? mmp_tape_backward(tape, loss, NULL, grads) : -1;
  if (!ok(rc == 0, "backward through the dropout and drop path masks")) diag("%s", mmp_error_last());
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
  mmp_tensormap_t *out3 = mmp_tensormap_new();
  mmp_tensormap_t *in3 = mmp_tensormap_new();
  if (!more) goto done;
  /* without rng_state: eval mode, no draws, no state returned */
  mmp_tensormap_set(in3, "pixel_values", mmp_tensor_ref(px));
  mmp_tensormap_set(in3, "input_ids", mmp_tensor_ref(ids));
  rc = ops->forward(c->self, "multimodal", in3, out3);
  ok(rc == 0 && !mmp_tensormap_get(out3, "rng_state"), "without rng_state: eval mode, no state returned");
  /* a malformed state is refused */
  int64_t three = 3;
  mmp_tensormap_set(in3, "rng_state", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_U8, 1, &three));
  rc = ops->forward(c->self, "multimodal", in3, out3);
  ok(rc == MMP_EINVAL && strstr(mmp_error_last(), "rng_state"), "a short rng_state refused: %s", mmp_error_last());
done:
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
}

/* "rng_rows": the two images run as two shards of the batch (each from the
 * generator's one state, as two data-parallel ranks) give the rows of the
 * whole batch's train-mode output, and the generator state it returns. */
static void check_shards(void) {
  char path[4200], cfg[1024];
  mmp_tensormap_t *in0 = mmp_tensormap_new();
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/blip_grad.safetensors", tap_srcdir());
  snprintf(cfg, sizeof cfg, CFG, "drop_path_rate = 0.5;");
  sd_env_t e;
  mmp_component_t *c = mmp_safetensors_load_map(path, mmp_backend_get("cpu"), true, in0) == 0
                           ? sd_component(&e, MMP_KIND_ENCODER, "enc", cfg) : NULL;
  if (!ok(c != NULL, "blip with drop path for the shards")) {
    diag("%s", mmp_error_last());
    mmp_tensormap_free(in0);
    return;
  }
  mmp_rng_t *g = mmp_rng_new(5, MMP_RNG_TORCH);
  unsigned char start[MMP_RNG_STATE_SIZE], whole_end[MMP_RNG_STATE_SIZE], end[MMP_RNG_STATE_SIZE];
  mmp_rng_get_state(g, start, sizeof start);
  static const char *const names[] = {"pixel_values", "input_ids", "attention_mask"};
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  for (int i = 0; i < 3; i++) mmp_tensormap_set(in, names[i], mmp_tensor_ref(mmp_tensormap_get(in0, names[i])));
  int rc = run(c, in, g, out);
  const mmp_tensor_t *whole = rc == 0 ? mmp_tensormap_get(out, "last_hidden_state") : NULL;
  mmp_rng_get_state(g, whole_end, sizeof whole_end);
  if (!ok(whole != NULL, "the whole batch of two in train mode")) diag("%s", mmp_error_last());
  for (int64_t r = 0; whole && r < 2; r++) {
    mmp_rng_set_state(g, start, sizeof start);
    mmp_tensormap_t *ins = mmp_tensormap_new(), *outs = mmp_tensormap_new();
    for (int i = 0; i < 3; i++) mmp_tensormap_set(ins, names[i], mmp_slice(mmp_tensormap_get(in0, names[i]), 0, r, r + 1, 1));
    int64_t two = 2, rows[2] = {2, r};
    mmp_tensormap_set(ins, "rng_rows", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, &two, rows));
    rc = run(c, ins, g, outs);
    mmp_tensor_t *want = mmp_slice((mmp_tensor_t *)whole, 0, r, r + 1, 1);
    char what[96];
    snprintf(what, sizeof what, "shard %lld of 2 (rng_rows {2, %lld}): the whole batch's row", (long long)r, (long long)r);
    if (rc == 0) sd_check(mmp_tensormap_get(outs, "last_hidden_state"), want, what);
    else ok(0, "%s: %s", what, mmp_error_last());
    mmp_rng_get_state(g, end, sizeof end);
    ok(rc == 0 && !memcmp(end, whole_end, sizeof end), "shard %lld: the generator ends where the whole batch's does", (long long)r);
    mmp_tensor_unref(want);
    /* a shard past the batch */
    rows[1] = 2;
    mmp_tensormap_set(ins, "rng_rows", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, &two, rows));
    if (r == 0) {
      rc = run(c, ins, g, outs);
      ok(rc == MMP_EINVAL && strstr(mmp_error_last(), "rng_rows"), "rng_rows {2, 2} for one row refused: %s", mmp_error_last());
    }
    mmp_tensormap_free(ins);
    mmp_tensormap_free(outs);
  }
  mmp_rng_free(g);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_component_free(c);
  sd_env_close(&e);
  mmp_tensormap_free(in0);
}

/* Bad drop path keys are refused with the key's name. */
static void check_keys(void) {
  static const char *const bad[][2] = {{"drop_path_rate = 1.0;", "drop_path_rate"},
                                       {"drop_path_rate = -0.5;", "drop_path_rate"},
                                       {"drop_path_draws = \"floor\";", "drop_path_draws"}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char cfg[1024];
    snprintf(cfg, sizeof cfg, CFG, bad[i][0]);
    sd_env_t e;
    mmp_component_t *c = sd_component(&e, MMP_KIND_ENCODER, "enc", cfg);
    ok(!c && strstr(mmp_error_last(), bad[i][1]), "%s refused: %s", bad[i][0], mmp_error_last());
    mmp_component_free(c);
    sd_env_close(&e);
  }
}

int main(void) {
  check_fixture("blip_dropout.safetensors", "", true);
  size_t plain = last_nodes;
  check_fixture("blip_drop_path_bernoulli.safetensors", "drop_path_rate = 0.5;", false);
  check_fixture("blip_drop_path_rand.safetensors", "drop_path_rate = 0.5; drop_path_draws = \"rand\";", false);
  /* each layer a checkpoint region: the draws replay in the backward */
  check_fixture("blip_dropout.safetensors", "gradient_checkpointing = true;", false);
  ok(last_nodes > 0 && last_nodes * 2 < plain, "with checkpointing the tape holds %zu nodes instead of %zu", last_nodes, plain);
  check_fixture("blip_drop_path_rand.safetensors", "drop_path_rate = 0.5; drop_path_draws = \"rand\"; gradient_checkpointing = true;",
                false);
  check_shards();
  check_keys();
  return done_testing();
}
