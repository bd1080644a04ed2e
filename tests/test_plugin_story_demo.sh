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
echo "1..$n"
[ $failed = 0 ]
