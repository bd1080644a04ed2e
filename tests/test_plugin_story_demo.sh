#!/bin/sh
# tests/test_plugin_story_demo.sh - examples/story-tiny.cfg runs and writes the
# frames, the strip, the contact sheet and run.json; a rerun skips the story.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
T=$(mktemp -d /tmp/mmp-story-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
[ -e "$S/tests/fixtures/arldm/arldm_tiny.safetensors" ] || { echo "1..0 # SKIP fixtures missing"; exit 0; }
"$B/tools/pipeline" -q run "$S/examples/story-tiny.cfg" -s task.output_dir="$T/out" >"$T/log" 2>&1
r=$?; ok $r "the story demo runs"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"
for f in story00000/frame0.png story00000/frame4.png story00000/strip.png index.html run.json; do
  [ -s "$T/out/$f" ]; ok $? "it writes $f"
done
grep -q "frame4.png" "$T/out/index.html"; ok $? "the contact sheet shows the frames"
grep -q '"scheduler": "ddim"' "$T/out/run.json"; ok $? "run.json records the settings"
"$B/tools/pipeline" -q run "$S/examples/story-tiny.cfg" -s task.output_dir="$T/out" >"$T/log" 2>&1
ok $? "a rerun succeeds"
grep -q "null, null, null, null, null" "$T/out/run.json"; ok $? "and skips the complete story"
# the same model from a Lightning last.ckpt (as AR-LDM's training writes it: every part's
# tensors under state_dict.<part>.): the same contexts, latents and pixels, tensor for tensor
A="$S/tests/fixtures/arldm/arldm_tiny.safetensors"
"$B/tools/pipeline" -q convert "$A" "$T/last.ckpt" >"$T/log" 2>&1; ok $? "the fixture as a Lightning last.ckpt"
"$B/tools/pipeline" -q run "$S/examples/story-tiny.cfg" -s task.output_dir="$T/st" -s task.save_tensors=true >"$T/log" 2>&1
ok $? "a run from the safetensors file, saving its tensors"
"$B/tools/pipeline" -q run "$S/examples/story-tiny.cfg" -s task.output_dir="$T/ck" -s task.save_tensors=true \
  -s task.arldm="$T/last.ckpt" \
  -s text_encoder.weights="$T/last.ckpt" -s text_encoder.weights_prefix=state_dict.text_encoder. \
  -s mm_encoder.weights="$T/last.ckpt" -s mm_encoder.weights_prefix=state_dict.mm_encoder. \
  -s unet.weights="$T/last.ckpt" -s unet.weights_prefix=state_dict.unet. \
  -s vae.weights="$T/last.ckpt" -s vae.weights_prefix=state_dict.vae. >"$T/log" 2>&1
r=$?; ok $r "the same run from last.ckpt"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"
"$B/tools/pipeline" tensors --digest "$T/st/story_tensors.safetensors" | grep -v '^#' | awk '{print $1, $NF}' >"$T/a"
"$B/tools/pipeline" tensors --digest "$T/ck/story_tensors.safetensors" | grep -v '^#' | awk '{print $1, $NF}' >"$T/b"
[ -s "$T/a" ] && grep -q 'frame4.image' "$T/a" && cmp -s "$T/a" "$T/b"
ok $? "every context, mask, latent and image equal bit for bit ($(wc -l <"$T/a") tensors)"
echo "1..$n"
[ $failed = 0 ]
