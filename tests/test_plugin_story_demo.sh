#!/bin/sh
# tests/test_plugin_story_demo.sh - examples/story-tiny.cfg (the AR-LDM made at
# build time, the stories file) runs both tasks and writes the frames, the
# strips, the contact sheet and run.json; a rerun skips the stories; the same
# run from the file as a Lightning last.ckpt (the README's way to a trained
# checkpoint) equals it; and the parity fixture's model read from a last.ckpt
# gives the tensors of its .safetensors bit for bit.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
T=$(mktemp -d /tmp/mmp-story-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
digest() { "$P" tensors --digest "$1" | grep -v '^#' | awk '{print $1, $NF}'; }

if [ -e "$B/examples/tiny-arldm/arldm.safetensors" ]; then
  # the demo as the README runs it, from a copy of examples/ (the configs and
  # stories of the source tree, the AR-LDM file of the build tree)
  mkdir -p "$T/ex/tiny"
  cp "$S/examples/story-tiny.cfg" "$T/ex/" && cp -r "$S/examples/tiny-arldm" "$T/ex/" &&
    cp -r "$S/examples/tiny/tokenizer" "$T/ex/tiny/" &&
    cp "$B/examples/tiny-arldm/arldm.safetensors" "$T/ex/tiny-arldm/"
  ok $? "the demo's files (the AR-LDM file made by make: $(wc -c <"$B/examples/tiny-arldm/arldm.safetensors") bytes)"
  C="$T/ex/story-tiny.cfg"
  "$P" -q run "$C" -s task.output_dir="$T/out" >"$T/log" 2>&1
  r=$?; ok $r "the story demo runs"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  for f in story00000/frame0.png story00000/frame4.png story00000/strip.png story00002/frame4.png \
      story00002/strip.png index.html run.json; do
    [ -s "$T/out/$f" ]; ok $? "it writes $f"
  done
  grep -q "story00002/frame4.png" "$T/out/index.html"; ok $? "the contact sheet shows the frames"
  grep -q '"scheduler": "ddim"' "$T/out/run.json" && grep -q '"stories_file": ".*tiny-arldm/stories.json"' "$T/out/run.json" &&
    grep -q '"stories": 3' "$T/out/run.json"
  ok $? "run.json records the settings and the stories file"
  "$P" -q run "$C" -s task.output_dir="$T/out" >"$T/log" 2>&1
  ok $? "a rerun succeeds"
  [ "$(grep -c "null, null, null, null, null" "$T/out/run.json")" = 3 ]; ok $? "and skips the three complete stories"
  "$P" -q run "$C" -s task.output_dir="$T/cont" -s task.task=continuation >"$T/log" 2>&1
  r=$?; ok $r "continuation from the stories' first images"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  [ -s "$T/cont/story00001/frame4.png" ] && [ -s "$T/cont/story00001/strip.png" ] && [ ! -e "$T/cont/story00001/frame0.png" ]
  ok $? "it draws frames 1-4 after the given one"
  # a trained AR-LDM comes as Lightning's last.ckpt: arldm and the parts' weights
  # at it, the parts under state_dict.<part>.
  "$P" -q convert "$T/ex/tiny-arldm/arldm.safetensors" "$T/last.ckpt" >"$T/log" 2>&1
  ok $? "the demo's AR-LDM file as a Lightning last.ckpt"
  "$P" -q run "$C" -s task.output_dir="$T/st" -s task.save_tensors=true -s 'task.stories="0:1"' -s task.steps=4 \
    >"$T/log" 2>&1
  ok $? "a run from the safetensors file, saving its tensors"
  "$P" -q run "$C" -s task.output_dir="$T/ck" -s task.save_tensors=true -s 'task.stories="0:1"' -s task.steps=4 \
    -s task.arldm="$T/last.ckpt" \
    -s text_encoder.weights="$T/last.ckpt" -s text_encoder.weights_prefix=state_dict.text_encoder. \
    -s mm_encoder.weights="$T/last.ckpt" -s mm_encoder.weights_prefix=state_dict.mm_encoder. \
    -s unet.weights="$T/last.ckpt" -s unet.weights_prefix=state_dict.unet. \
    -s vae.weights="$T/last.ckpt" -s vae.weights_prefix=state_dict.vae. >"$T/log" 2>&1
  r=$?; ok $r "the same run from last.ckpt"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  digest "$T/st/story_tensors.safetensors" >"$T/a"
  digest "$T/ck/story_tensors.safetensors" >"$T/b"
  [ -s "$T/a" ] && grep -q 'frame4.image' "$T/a" && cmp -s "$T/a" "$T/b"
  ok $? "the same contexts, masks, latents and images ($(wc -l <"$T/a") tensors)"
else
  echo "# the demo's AR-LDM file is not built (make builds it): demo checks skipped"
fi

# the parity fixture (tests/gen_arldm.py) from a Lightning last.ckpt (as AR-LDM's
# training writes it: every part's tensors under state_dict.<part>.): the same
# contexts, latents and pixels, tensor for tensor
A="$S/tests/fixtures/arldm/arldm_tiny.safetensors"
if [ -e "$A" ]; then
  C="$S/tests/fixtures/arldm/story.cfg"
  "$P" -q convert "$A" "$T/fx.ckpt" >"$T/log" 2>&1; ok $? "the fixture as a Lightning last.ckpt"
  "$P" -q run "$C" -s task.output_dir="$T/fst" -s task.save_tensors=true >"$T/log" 2>&1
  ok $? "a run from the safetensors file, saving its tensors"
  "$P" -q run "$C" -s task.output_dir="$T/fck" -s task.save_tensors=true \
    -s task.arldm="$T/fx.ckpt" \
    -s text_encoder.weights="$T/fx.ckpt" -s text_encoder.weights_prefix=state_dict.text_encoder. \
    -s mm_encoder.weights="$T/fx.ckpt" -s mm_encoder.weights_prefix=state_dict.mm_encoder. \
    -s unet.weights="$T/fx.ckpt" -s unet.weights_prefix=state_dict.unet. \
    -s vae.weights="$T/fx.ckpt" -s vae.weights_prefix=state_dict.vae. >"$T/log" 2>&1
  r=$?; ok $r "the same run from last.ckpt"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  digest "$T/fst/story_tensors.safetensors" >"$T/a"
  digest "$T/fck/story_tensors.safetensors" >"$T/b"
  [ -s "$T/a" ] && grep -q 'frame4.image' "$T/a" && cmp -s "$T/a" "$T/b"
  ok $? "every context, mask, latent and image equal bit for bit ($(wc -l <"$T/a") tensors)"
fi
[ $n -gt 0 ] || { echo "1..0 # SKIP neither the demo's file nor the fixtures"; exit 0; }
echo "1..$n"
[ $failed = 0 ]
