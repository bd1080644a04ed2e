#!/bin/sh
# tests/test_plugin_story_fid.sh - the story task's calculate_fid: the FID of the frames drawn against the
# ground truth of the same stories equals `pipeline fid -p arldm` on the dataset split and the output folder
# (tiny AR-LDM of tests/gen_arldm.py, tiny FID Inception of tests/gen_fid.py); run.json holds it.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
W="$S/tests/fixtures/fid/inception_w16.safetensors"
T=$(mktemp -d /tmp/mmp-storyfid-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
. "$S/tests/story_tiny.sh"
{ story_tiny_setup && [ -e "$W" ]; } || { echo "1..0 # SKIP pipeline, plugins or fixtures missing"; exit 0; }
if "$P" fid -q "$S/tests/fixtures/fid/images" "$S/tests/fixtures/fid/images2" --weights "$W" 2>&1 | grep -q "without LAPACK"; then
  echo "1..0 # SKIP built without LAPACK"; exit 0
fi
# equal to 1e-9 relative (the same accumulator and distance: only the batching may differ)
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-9 * (b < 0 ? -b : b)) }'; }
for task in visualization continuation; do
  { story_tiny_cfg "$task" "$T/out-$task" 2 'calculate_fid = true;'
    echo "fid_encoder = { name = \"inception_fid\"; weights = \"$W\"; };"; } >"$T/$task.cfg"
  "$P" -q run "$T/$task.cfg" >"$T/log" 2>&1
  r=$?; ok $r "$task: the story task runs with calculate_fid"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
  got=$(sed -n 's/^FID: //p' "$T/log")
  json=$(sed -n 's/^  "fid": \([^,]*\),*$/\1/p' "$T/out-$task/run.json")
  frames=4; [ $task = visualization ] && frames=5
  want=$("$P" fid -q -p arldm "$T/$task.cfg" "$T/out-$task" --weights "$W" 2>"$T/err" | sed -n 's/^FID: //p')
  close "$got" "$want"; ok $? "$task: 'FID: $got' equals pipeline fid -p arldm of the split and the output folder ($want)"
  close "$json" "$want"; ok $? "$task: run.json's fid ($json)"
  grep -q "\"fid_images\": $((2 * frames))" "$T/out-$task/run.json"; ok $? "$task: run.json counts the $((2 * frames)) frames"
done
# a rerun draws nothing: no FID, said so
"$P" run "$T/visualization.cfg" >"$T/log" 2>&1
r=$?
[ $r = 0 ] && grep -q '"fid": null' "$T/out-visualization/run.json" && grep -q "no FID" "$T/log"
ok $? "a fully resumed run writes fid null and warns"
# calculate_fid without weights for the FID Inception is a configuration error
sed 's/^fid_encoder = .*$/fid_encoder = { name = "inception_fid"; };/' "$T/continuation.cfg" > "$T/bad.cfg"
sed -i 's/out-continuation/out-bad/' "$T/bad.cfg"
"$P" -q run "$T/bad.cfg" >"$T/log" 2>&1
r=$?; [ $r != 0 ] && [ ! -e "$T/out-bad/story00000" ]
ok $? "calculate_fid without the FID Inception's weights fails before drawing ($(head -c 200 "$T/log"))"
# story_tensors input (tests/fixtures/arldm/story.cfg): its frames are the ground truth
FW="$(cd "$S/tests/fixtures/fid" && pwd)/inception_w16.safetensors"
(cd "$S/tests/fixtures/arldm" && "$P" -q run story.cfg -s task.output_dir="$T/tiny" -s task.calculate_fid=true \
  -s fid_encoder.name='"inception_fid"' -s fid_encoder.weights="\"$FW\"") >"$T/log" 2>&1
got=$(sed -n 's/^FID: //p' "$T/log")
json=$(sed -n 's/^  "fid": \([^,]*\),*$/\1/p' "$T/tiny/run.json")
close "$got" "$json"; ok $? "story_tensors input: FID $got printed and in run.json"
# a stories_file has no ground truth
(cd "$S/tests/fixtures/arldm" && "$P" -q run story.cfg -s task.output_dir="$T/tiny2" -s task.calculate_fid=true \
  -s task.story_tensors='""' -s task.stories_file='"none.json"' -s fid_encoder.name='"inception_fid"' \
  -s fid_encoder.weights="\"$FW\"") >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "calculate_fid: needs ground-truth frames" "$T/log"
ok $? "calculate_fid with a stories_file is a configuration error ($(head -c 160 "$T/log"))"
# calculate_fid without an fid_encoder group
(cd "$S/tests/fixtures/arldm" && "$P" -q run story.cfg -s task.output_dir="$T/tiny3" -s task.calculate_fid=true) >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "needs an fid_encoder group" "$T/log" && [ ! -e "$T/tiny3/story00000" ]
ok $? "calculate_fid without an fid_encoder group is a configuration error"
echo "1..$n"
[ $failed = 0 ]
