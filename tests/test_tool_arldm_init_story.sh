#!/bin/sh
# tests/test_tool_arldm_init_story.sh - the story task runs on a file made by
# `pipeline arldm-init` from the tiny SD and BLIP fixtures (tests/fixtures/arldm/story.cfg
# with its parts pointed at that file), and its weight checks refuse extras of
# the wrong width.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
F="$S/tests/fixtures"
T=$(mktemp -d /tmp/mmp-arldminit-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
[ -e "$F/arldm/story_visualization_ddim.safetensors" ] || { echo "1..0 # SKIP fixtures missing"; exit 0; }
# S = 8 and the ids of the fixture story (tests/fixtures/arldm/tiny.json);
# the BLIP fixture's ViT sees 32x32 images.
init() {
  "$B/tools/pipeline" -q arldm-init --sd "$F/sd/pipe" --blip "$F/blip/blip_base/model.safetensors" \
    --blip-prefix mm_encoder. --max-length 8 --image-size 32 --clip-ids 38,39,39 --blip-ids 1,2,0 --seed 1 \
    --out "$T/a.safetensors" "$@" >"$T/log" 2>&1
}
story() {
  (cd "$F/arldm" && "$B/tools/pipeline" -q run story.cfg -s task.output_dir="$T/out" \
    -s task.arldm="$T/a.safetensors" -s task.steps=2 \
    -s text_encoder.config="$F/sd/pipe/text_encoder/config.json" -s text_encoder.weights="$T/a.safetensors" \
    -s mm_encoder.config="$F/blip/blip_base/med_config.json" -s mm_encoder.weights="$T/a.safetensors" \
    -s 'blip_processor.size=[32,32]' \
    -s unet.config="$F/sd/pipe/unet/config.json" -s unet.weights="$T/a.safetensors" \
    -s vae.config="$F/sd/pipe/vae/config.json" -s vae.weights="$T/a.safetensors") >"$T/log" 2>&1
}
init; r=$?; ok $r "arldm-init on the tiny parts"; [ $r = 0 ] || sed 's/^/#   /' "$T/log"
story; r=$?; ok $r "the story task runs on it"; [ $r = 0 ] || sed 's/^/#   /' "$T/log"
for f in story00000/frame0.png story00000/frame4.png run.json; do
  [ -s "$T/out/$f" ]; ok $? "it writes $f"
done
rm -rf "$T/out"
init --embed-dim 16; ok $? "arldm-init with 16-wide extras"
story; r=$?; [ $r != 0 ]; ok $? "the story task refuses them (exit $r)"
# (checked before any table is added to an encoder's output: a clear width
# message naming the parts and their shapes, not a broadcast error)
grep -q "width mismatch between the parts: text_encoder gives f32\[1, 8, 32\].*modal_type_embeddings.weight f32\[2, 16\]" "$T/log"
r=$?; ok $r "naming the parts and their widths"; [ $r = 0 ] || sed 's/^/#   /' "$T/log"
echo "1..$n"
[ $failed = 0 ]
