# tests/story_tiny.sh - the story task's shell tests on the tiny AR-LDM of tests/gen_arldm.py and the
# two stories of its tiny pororo-layout dataset (sourced; POSIX sh).
#
#   . "$S/tests/story_tiny.sh"
#   story_tiny_setup || { echo "1..0 # SKIP pipeline, plugins or fixtures missing"; exit 0; }
#   story_tiny_cfg visualization "$T/out" 2 'calculate_fid = true;' > "$T/story.cfg"
#
# story_tiny_setup sets A (the fixtures, absolute), P (the pipeline) and
# MMPIPE_PLUGIN_PATH (the build tree's plugins), and fails when the pipeline,
# the story task, the pororo plugin (HDF5) or the fixtures are missing.

story_tiny_setup() {
  A=$(cd "$S/tests/fixtures/arldm" && pwd)
  P="$B/tools/pipeline"
  [ -x "$P" ] && [ -e "$A/arldm_tiny.safetensors" ] && [ -e "$B/plugins/tasks/.libs/task_story.so" ] &&
    [ -e "$B/plugins/datasets/.libs/dataset_pororo.so" ] || return 1
  MMPIPE_PLUGIN_PATH=
  for k in tasks models encoders processors schedulers datasets; do
    MMPIPE_PLUGIN_PATH="$MMPIPE_PLUGIN_PATH${MMPIPE_PLUGIN_PATH:+:}$B/plugins/$k/.libs"
  done
  export MMPIPE_PLUGIN_PATH
}

# story_tiny_cfg TASK OUTPUT_DIR STEPS [MORE TASK KEYS]: the configuration (DDIM as AR-LDM's,
# 32 x 32, seed 7, one story per batch; the keys given are added to the task group).
story_tiny_cfg() {
  cat <<CFG
task = { name = "story"; task = "$1"; arldm = "$A/arldm_tiny.safetensors";
  width = 32; height = 32; steps = $3; guidance_scale = 6.0; seed = 7; batch_size = 1;
  output_dir = "$2"; ${4:-} };
dataset = { name = "pororo"; hdf5_file = "$A/story_ds.h5"; split = "test"; task = "$1"; max_length = 8;
  new_tokens = ["pororo", "loopy", "eddy", "crong"]; clip_vocab = "$A/tok/vocab.json";
  clip_merges = "$A/tok/merges.txt"; bert_vocab = "$A/tok/vocab.txt"; };
text_encoder = { name = "clip_text"; config = "$A/text_encoder/config.json"; weights = "$A/arldm_tiny.safetensors";
  weights_prefix = "text_encoder."; };
mm_encoder = { name = "blip"; config = "$A/med_config.json"; weights = "$A/arldm_tiny.safetensors";
  weights_prefix = "mm_encoder."; num_heads = 4; enc_token_id = 51; };
blip_processor = { name = "image_resize"; size = [224, 224]; interpolation = "bilinear";
  mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };
unet = { name = "unet2d_condition"; config = "$A/unet/config.json"; weights = "$A/arldm_tiny.safetensors";
  weights_prefix = "unet."; };
vae = { name = "vae"; config = "$A/vae/config.json"; weights = "$A/arldm_tiny.safetensors"; weights_prefix = "vae."; };
scheduler = { name = "ddim"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = "scaled_linear";
  clip_sample = false; set_alpha_to_one = true; steps_offset = 0; };
CFG
}
