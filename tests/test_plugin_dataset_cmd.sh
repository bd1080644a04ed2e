#!/bin/sh
# tests/test_plugin_dataset_cmd.sh - `pipeline dataset info|show|dump` on the fixtures of tests/gen_datasets.py.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
D="$S/tests/fixtures/datasets"
P="$B/tools/pipeline"
T=$(mktemp -d /tmp/mmp-dataset-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
[ -e "$B/plugins/datasets/dataset_flintstones.la" ] || { echo "1..0 # SKIP dataset plugins not built (libhdf5, libpng)"; exit 0; }
export MMPIPE_PLUGIN_PATH="$B/plugins/datasets/.libs:$B/plugins/processors/.libs"

"$P" dataset info "$D/vist.h5" >"$T/out" 2>"$T/err"; ok $? "info vist.h5"
grep -q "val: 3 stories; text datasets: sis dii" "$T/out"; ok $? "info counts stories and finds sis and dii"
grep -q "image sizes seen (WxH: frames):.* 75x75: 3" "$T/out"; ok $? "info lists image sizes"
"$P" dataset info "$D/bad_dtype.h5" >"$T/out" 2>&1
grep -q "image3   integer      shape (1, 64)" "$T/out"; ok $? "info shows a wrong dtype"
"$P" dataset info "$T/none.h5" >"$T/out" 2>&1; r=$?
[ $r = 3 ] || [ $r = 1 ] || [ $r = 5 ]; ok $? "info of a missing file fails (exit $r)"
grep -q "cannot open HDF5 file" "$T/out"; ok $? "and says so"

cat >"$T/fl.cfg" <<CFG
dataset = { name = "flintstones"; hdf5_file = "$D/flintstones.h5"; split = "val"; frame_index = 0; };
CFG
"$P" dataset show "$T/fl.cfg" --index 0 --output "$T/strip.png" >"$T/out" 2>"$T/err"; ok $? "show item 0"
grep -q "caption 0: Fred is talking to Barney in the living room." "$T/out"; ok $? "show prints captions"
grep -q "tensor images *f32\[5, 3, 512, 512\]" "$T/out"; ok $? "show prints tensor shapes"
[ -s "$T/strip.png" ] && head -c 8 "$T/strip.png" | od -c | grep -q "P   N   G"; ok $? "show writes a PNG strip"
"$P" dataset dump "$T/fl.cfg" --index 1 -s dataset.task=continuation --output "$T/item.safetensors" 2>"$T/err"; ok $? "dump item 1 (continuation)"
"$P" tensors "$T/item.safetensors" >"$T/out" 2>&1
grep -q "images *f32 *\[4, 3, 512, 512\]" "$T/out"; ok $? "dump wrote images [4, 3, 512, 512]"
grep -q "source_images *f32 *\[5, 3, 224, 224\]" "$T/out"; ok $? "dump wrote source_images"
grep -q "caption0 = " "$T/out"; ok $? "dump keeps the captions in the metadata"
"$P" dataset show "$T/fl.cfg" --index 7 >"$T/out" 2>&1; r=$?
[ $r = 2 ]; ok $? "an index out of range is a usage error (exit $r)"
cat >"$T/bad.cfg" <<CFG
dataset = { name = "flintstones"; hdf5_file = "$D/bad_stories.h5"; split = "val"; frame_index = 0; };
CFG
"$P" dataset show "$T/bad.cfg" --index 1 >"$T/out" 2>&1; r=$?
[ $r = 5 ]; ok $? "a truncated PNG is a data error (exit $r)"
grep -q "story 1: image2: undecodable PNG" "$T/out"; ok $? "naming the story and frame"
echo "1..$n"
[ $failed = 0 ]
