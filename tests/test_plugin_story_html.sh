#!/bin/sh
# tests/test_plugin_story_html.sh - the story task's contact sheet (index.html) opened in a real
# browser: the tiny AR-LDM of tests/gen_arldm.py draws the two stories of the tiny pororo-layout
# dataset into a folder whose name holds a space, '#' and a non-ASCII letter; headless Chromium
# (tests/browser.sh) renders the page with console logging on. Every frame must load and decode,
# each caption must appear under its frame as text, and the page must log nothing. Skips (TAP)
# without Chromium or the pororo plugin. TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
A=$(cd "$S/tests/fixtures/arldm" && pwd)
P="$B/tools/pipeline"
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
. "$S/tests/browser.sh"
browser_find || { echo "1..0 # SKIP no Chromium (apt-get install chromium, or set CHROMIUM)"; exit 0; }
[ -x "$P" ] && [ -e "$A/arldm_tiny.safetensors" ] && [ -e "$B/plugins/tasks/.libs/task_story.so" ] &&
  [ -e "$B/plugins/datasets/.libs/dataset_pororo.so" ] || { echo "1..0 # SKIP pipeline, plugins or fixtures missing"; exit 0; }
MMPIPE_PLUGIN_PATH=
for k in tasks models encoders processors schedulers datasets; do MMPIPE_PLUGIN_PATH="$MMPIPE_PLUGIN_PATH${MMPIPE_PLUGIN_PATH:+:}$B/plugins/$k/.libs"; done
export MMPIPE_PLUGIN_PATH
T=$(mktemp -d /tmp/mmp-story-html-XXXXXX)
trap 'rm -rf "$T"' EXIT
O="$T/run #1 caf$(printf '\303\251')"
cat > "$T/story.cfg" <<CFG
task = { name = "story"; task = "visualization"; arldm = "$A/arldm_tiny.safetensors";
  width = 32; height = 32; steps = 2; guidance_scale = 6.0; seed = 7; batch_size = 1; output_dir = "$O"; };
dataset = { name = "pororo"; hdf5_file = "$A/story_ds.h5"; split = "test"; task = "visualization"; max_length = 8;
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
"$P" -q run "$T/story.cfg" >"$T/log" 2>&1
r=$?; ok $r "the story task draws the dataset's two stories"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"
browser_dom "$T" "$O/index.html" "$T/dom.html" "$T/chrome.err"
r=$?; ok $r "chromium --headless --dump-dom of index.html exits 0 ($r)"
[ $r = 0 ] || grep -v dbus "$T/chrome.err" | tail -5 | sed 's/^/#   /'
! grep -q 'CONSOLE' "$T/chrome.err"
ok $? "nothing logged to the browser console"
grep 'CONSOLE' "$T/chrome.err" | head -5 | sed 's/^/#   /'
# the captions of the tiny dataset (tests/gen_arldm.py), under their frames
caps=0
for c in "pororo is playing in the snow" "loopy looks at the big tree" "eddy and crong eating cake" \
  "the red bird flies" "pororo smiles at loopy" "crong kicks a blue ball" "the dog runs to eddy" \
  "loopy sits on a chair" "pororo opens the door" "a happy friend sleeps"; do
  grep -q "<span class=\"cap\">$c</span>" "$T/dom.html" && caps=$((caps + 1))
done
[ $caps = 10 ]; ok $? "the rendered page shows the 10 captions under their frames ($caps)"
res=$(browser_images "$O" index.html)
[ "$res" = "RESULT imgs=10 loaded=10 broken=" ]
ok $? "every frame loads and decodes in the browser ($res)"
echo "1..$n"
[ $failed = 0 ]
