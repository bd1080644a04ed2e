/* tests/test_plugin_vit.c - the vit encoder against transformers 4.30's
 * ViTModel and BlipVisionModel and BLIP's VisionTransformer (AR-LDM's
 * copy), including a position grid interpolated from 14x14 to 24x24
 * (fixtures: tests/gen_blip.py). */
#include "blip_test.h"

static void check_all(const mmp_tensormap_t *got, const mmp_tensormap_t *want, const char *what, int nhidden) {
  char name[128];
  snprintf(name, sizeof name, "%s last_hidden_state", what);
  bt_check(mmp_tensormap_get(got, "last_hidden_state"), mmp_tensormap_get(want, "last_hidden_state"), name);
  if (mmp_tensormap_get(want, "pooler_output")) {
    snprintf(name, sizeof name, "%s pooler_output", what);
    bt_check(mmp_tensormap_get(got, "pooler_output"), mmp_tensormap_get(want, "pooler_output"), name);
  }
  for (int k = 0; k < nhidden; k++) {
    char key[64];
    snprintf(key, sizeof key, "hidden_states.%d", k);
    snprintf(name, sizeof name, "%s %s", what, key);
    bt_check(mmp_tensormap_get(got, key), mmp_tensormap_get(want, key), name);
  }
}

int main(void) {
  mmp_tensormap_t *hf = bt_load("vit_hf_io.safetensors"), *bv = bt_load("blip_vision_io.safetensors"),
                  *bb = bt_load("blip_base_io.safetensors"), *grid = bt_load("blip_vit_grid_io.safetensors");
  if (!hf || !bv || !bb || !grid) skip_all("fixtures missing");
  static const char *const px[] = {"pixel_values", NULL};
  mmp_tensormap_t *in = sd_pick(hf, px);
  mmp_tensormap_t *o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/vit_hf\"; output_hidden_states = true; };",
                              NULL, in, "ViTModel", NULL, 0);
  check_all(o, hf, "ViTModel", 3);
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  in = sd_pick(bv, px);
  o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/blip_vision\"; output_hidden_states = true; };", NULL, in,
             "BlipVisionModel (bf16 file)", NULL, 0);
  check_all(o, bv, "BlipVisionModel", 3);
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* BLIP's VisionTransformer inside AR-LDM's checkpoint (mm_encoder.visual_encoder.*) */
  static const char *const bpx[] = {"pixel_values", NULL};
  static const char *const bout[] = {"image.last_hidden_state=last_hidden_state", NULL};
  in = sd_pick(bb, bpx);
  mmp_tensormap_t *want = sd_pick(bb, bout);
  o = bt_run("encoder = { name = \"vit\"; weights = \"%s/blip_base/model.safetensors\";"
             " prefix = \"mm_encoder.visual_encoder.\"; num_heads = 4; };",
             NULL, in, "BLIP VisionTransformer (sized from the weights)", NULL, 0);
  check_all(o, want, "BLIP VisionTransformer", 0);
  ok(mmp_tensormap_get(o, "pooler_output") == NULL, "BLIP's VisionTransformer has no pooler_output");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);
  mmp_tensormap_free(want);

  /* checkpoint grid 14x14, input grid 24x24: interpolate_pos_embed */
  in = sd_pick(grid, px);
  o = bt_run("encoder = { name = \"vit\"; weights = \"%s/blip_vit_grid14/model.safetensors\"; num_heads = 4; };",
             NULL, in, "BLIP ViT at grid 24 from a grid-14 checkpoint", NULL, 0);
  check_all(o, grid, "interpolated grid", 0);
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);
  static const char *const px14[] = {"grid14.pixel_values=pixel_values", NULL};
  static const char *const out14[] = {"grid14.last_hidden_state=last_hidden_state", NULL};
  in = sd_pick(grid, px14);
  want = sd_pick(grid, out14);
  o = bt_run("encoder = { name = \"vit\"; weights = \"%s/blip_vit_grid14/model.safetensors\"; num_heads = 4; };",
             NULL, in, "the same checkpoint at its own grid", NULL, 0);
  check_all(o, want, "stored grid", 0);
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);
  mmp_tensormap_free(want);

  /* seeded random weights from the config alone (benchmarks) */
  in = sd_pick(hf, px);
  o = bt_run("encoder = { name = \"vit\"; config = \"%s/vit_hf/config.json\"; init_seed = 3; };", NULL, in,
             "random weights (init_seed)", NULL, 0);
  {
    const mmp_tensor_t *h = mmp_tensormap_get(o, "last_hidden_state");
    ok(h && h->ndim == 3 && h->shape[0] == 2 && h->shape[1] == 17 && h->shape[2] == 32,
       "init_seed: last_hidden_state [2, 17, 32]");
  }
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* errors: every problem of a wrong checkpoint in one message; bad input shapes */
  {
    char err[4096];
    in = sd_pick(hf, px);
    o = bt_run("encoder = { name = \"vit\"; config = \"%s/vit_hf/config.json\";"
               " weights = \"%s/blip_vision/model.safetensors\"; };", NULL, in, NULL, err, sizeof err);
    like(err, "missing: embeddings.cls_token", "a BlipVisionModel file for a ViTModel config: missing names listed");
    like(err, "unexpected: embeddings.class_embedding", "... and the names nobody asked for");
    mmp_tensormap_free(o);
    mmp_tensormap_free(in);
    mmp_tensormap_t *bad = mmp_tensormap_new();
    int64_t s[4] = {1, 3, 30, 32};
    mmp_tensormap_set(bad, "pixel_values", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_F32, 4, s));
    o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/vit_hf\"; };", NULL, bad, NULL, err, sizeof err);
    like(err, "multiples of the patch", "a 30-pixel side is refused with the reason");
    mmp_tensormap_free(o);
    mmp_tensormap_free(bad);
  }
  mmp_tensormap_free(hf);
  mmp_tensormap_free(bv);
  mmp_tensormap_free(bb);
  mmp_tensormap_free(grid);
  return done_testing();
}
