#!/bin/sh
# tests/test_plugin_txt2img_schedulers.sh - the demo task runs with every
# scheduler by changing only scheduler.name (its other keys are DDIM's).
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
T=$(mktemp -d /tmp/mmp-swap-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
[ -e "$B/examples/tiny/unet/diffusion_pytorch_model.safetensors" ] || { echo "1..0 # SKIP demo weights not built"; exit 0; }
# the demo's config, with its weights in the build tree and its output here
sed -e "s|\"tiny|\"$B/examples/tiny|g" -e "s|tokenizer_dir = \"$B/examples/tiny/tokenizer\"|tokenizer_dir = \"$S/examples/tiny/tokenizer\"|" \
    -e 's|output_dir = .*|output_dir = "out";|' -e 's|steps = 20;|steps = 4;|' \
    "$S/examples/txt2img-tiny.cfg" >"$T/demo.cfg"
for s in ddim ddpm pndm euler euler_ancestral dpmpp_2m; do
  "$B/tools/pipeline" -q run "$T/demo.cfg" -s scheduler.name=$s >"$T/log" 2>&1
  r=$?; ok $r "txt2img runs with scheduler.name=$s and DDIM's other keys"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  [ -s "$T/out/00000.png" ] && [ -s "$T/out/00001.png" ]; ok $? "$s wrote both images"
  grep -q "$s" "$T/out/00000.png"; ok $? "$s is recorded in the PNG's text chunks"
  rm -rf "$T/out"
done
"$B/tools/pipeline" -v run "$T/demo.cfg" -s scheduler.name=pndm >"$T/log" 2>&1
grep -q "scheduler 'pndm' (group 'scheduler') ignores key 'clip_sample'" "$T/log"; ok $? "-v says which keys a scheduler ignores"
echo "1..$n"
[ $failed = 0 ]
