/* tests/test_plugin_clip_vision.c - the vit encoder's CLIP kind against
 * transformers 4.30's CLIPVisionModelWithProjection and the vision half of
 * a CLIPModel, and clip_text's text_projection on the text half of that
 * CLIPModel (fixtures: tests/gen_clip_vision.py). */
#include "blip_test.h"

int main(void) {
  mmp_tensormap_t *cv = bt_load("clip_vision_io.safetensors"), *cm = bt_load("clip_model_io.safetensors");
  if (!cv || !cm) skip_all("fixtures missing");
  static const char *const px[] = {"pixel_values", NULL};
  mmp_tensormap_t *in = sd_pick(cv, px);
  mmp_tensormap_t *o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/clip_vision\"; output_hidden_states = true; };",
                              NULL, in, "CLIPVisionModelWithProjection", NULL, 0);
  static const char *const outs[] = {"image_embeds", "pooler_output", "last_hidden_state", "hidden_states.0",
                                     "hidden_states.1", "hidden_states.2", NULL};
  for (int k = 0; outs[k]; k++) {
    char what[96];
    snprintf(what, sizeof what, "CLIPVisionModelWithProjection %s", outs[k]);
    bt_check(mmp_tensormap_get(o, outs[k]), mmp_tensormap_get(cv, outs[k]), what);
  }
  mmp_tensormap_free(o);

  /* a 40x40 input: CLIP has no position interpolation */
  {
    int64_t s[4] = {1, 3, 40, 40};
    mmp_tensormap_t *bad = mmp_tensormap_new();
    mmp_tensormap_set(bad, "pixel_values", mmp_tensor_zeros(mmp_backend_get("cpu"), MMP_F32, 4, s));
    char err[512];
    o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/clip_vision\"; };", NULL, bad, NULL, err, sizeof err);
    ok(strstr(err, "must be 32 x 32") != NULL, "a grid other than the config's is an error (%s)", err);
    mmp_tensormap_free(o);
    mmp_tensormap_free(bad);
  }
  mmp_tensormap_free(in);

  /* the vision half of a CLIPModel folder (its text tensors not ours) */
  in = sd_pick(cm, px);
  o = bt_run("encoder = { name = \"vit\"; model_dir = \"%s/clip_model\"; };", NULL, in, "CLIPModel vision half", NULL, 0);
  bt_check(mmp_tensormap_get(o, "image_embeds"), mmp_tensormap_get(cm, "image_embeds"),
           "CLIPModel get_image_features");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* clip_text on the text half of the same folder: text_embeds */
  static const char *const ids[] = {"input_ids", NULL};
  in = sd_pick(cm, ids);
  o = bt_run("encoder = { name = \"clip_text\"; model_dir = \"%s/clip_model\"; };", NULL, in, "CLIPModel text half",
             NULL, 0);
  bt_check(mmp_tensormap_get(o, "text_embeds"), mmp_tensormap_get(cm, "text_embeds"), "CLIPModel get_text_features");
  mmp_tensormap_free(o);
  mmp_tensormap_free(in);

  /* a missing tensor is named */
  {
    char err[2048];
    in = sd_pick(cv, px);
    o = bt_run("encoder = { name = \"vit\"; config = \"%s/clip_model/config.json\";"
               " weights = \"%s/clip_vision/model.safetensors\"; };",
               NULL, in, NULL, err, sizeof err);
    ok(strstr(err, "vision_model.") != NULL, "weights of another size are an error naming tensors");
    diag("%s", err);
    mmp_tensormap_free(o);
    mmp_tensormap_free(in);
  }
  mmp_tensormap_free(cv);
  mmp_tensormap_free(cm);
  return done_testing();
}
