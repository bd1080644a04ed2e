#!/bin/sh
# tests/test_plugin_fid_cmd.sh - `pipeline fid` on folders gives pytorch-fid's and AR-LDM's numbers
# (tests/fixtures/fid/expected.txt from tests/gen_fid.py), statistics files, errors.
B="${MMP_TEST_BUILDDIR:-.}"
S="${MMP_TEST_SRCDIR:-.}"
F="$S/tests/fixtures/fid"
P="$B/tools/pipeline"
T="${TMPDIR:-/tmp}/fidcmd.$$"
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT
n=0
fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
[ -x "$P" ] && [ -f "$F/expected.txt" ] || { echo "1..0 # SKIP pipeline or fixtures missing"; exit 0; }
export MMPIPE_PLUGIN_PATH="$B/plugins/encoders/.libs:$B/plugins/datasets/.libs:$B/plugins/processors/.libs"
W="$F/inception_w16.safetensors"
if "$P" fid -q "$F/images" "$F/images2" --weights "$W" 2>&1 | grep -q "without LAPACK"; then
  echo "1..0 # SKIP built without LAPACK"; exit 0
fi
# relative error of "FID: x" against the expected value: <= 1e-4
close() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * (b < 0 ? -b : b)) }'; }
while read -r proto real gen want; do
  case "$proto" in \#*) continue ;; esac
  dims=2048
  case "$proto" in *:*) dims=${proto#*:}; proto=${proto%%:*} ;; esac
  got=$("$P" fid -q -p "$proto" --dims "$dims" "$F/$real" "$F/$gen" --weights "$W" 2>"$T/err" | sed -n 's/^FID: //p')
  close "$got" "$want"; ok $? "$proto (dims $dims) $real $gen: FID $got vs $want"
done < "$F/expected.txt"
# a folder of JPEG files (baseline and progressive) read as PIL reads them (tests/gen_fid_jpeg.py)
if [ -f "$F/expected_jpeg.txt" ] && "$P" fid -q "$F/images_jpeg" "$F/images2" --weights "$W" >/dev/null 2>"$T/err"; then
  while read -r proto real gen want; do
    case "$proto" in \#*) continue ;; esac
    got=$("$P" fid -q -p "$proto" "$F/$real" "$F/$gen" --weights "$W" 2>"$T/err" | sed -n 's/^FID: //p')
    close "$got" "$want"; ok $? "$proto $real $gen (JPEG): FID $got vs $want"
  done < "$F/expected_jpeg.txt"
elif grep -q "need libjpeg" "$T/err"; then
  echo "ok $((n = n + 1)) # SKIP built without libjpeg"
else
  ok 1 "JPEG folder: $(cat "$T/err")"
fi
# a story dataset's test split (AR-LDM's original_images) and a story task's output folder
# against AR-LDM's FID of the same images (tests/gen_fid_story.py)
if [ -f "$F/expected_story.txt" ] && [ -f "$B/plugins/datasets/.libs/dataset_pororo.so" ]; then
  while read -r proto real gen want; do
    case "$proto" in \#*) continue ;; esac
    task=${real##*:}
    printf 'dataset = { name = "pororo"; hdf5_file = "%s"; split = "test"; task = "%s"; frame_index = 0; };\n' \
      "$S/tests/fixtures/datasets/pororo.h5" "$task" > "$T/$task.cfg"
    got=$("$P" fid -q -p "$proto" "$T/$task.cfg" "$F/$gen" --weights "$W" 2>"$T/err" | sed -n 's/^FID: //p')
    close "$got" "$want"; ok $? "$proto pororo test split ($task) vs $gen: FID $got vs AR-LDM's $want"
  done < "$F/expected_story.txt"
  mkdir -p "$T/storyout/story00000" "$T/storyout/story00001"
  for i in 0 1 2; do cp "$F/arldm_gen/000$i.png" "$T/storyout/story00000/frame$i.png"; done
  for i in 3 4; do cp "$F/arldm_gen/000$i.png" "$T/storyout/story00001/frame$((i - 3)).png"; done
  cp "$F/images/000.png" "$T/storyout/story00000/strip.png"
  echo '{}' > "$T/storyout/run.json"
  want=$(awk '$2 == "dataset:pororo:visualization" { print $4 }' "$F/expected_story.txt")
  got=$("$P" fid -q -p arldm "$T/visualization.cfg" "$T/storyout" --weights "$W" --json "$T/s.json" 2>"$T/err" | sed -n 's/^FID: //p')
  close "$got" "$want" && grep -q '"count": 5' "$T/s.json"
  ok $? "a story task's output folder: its 5 frames (strips and run.json left out), FID $got"
  printf 'dataset = { name = "pororo"; hdf5_file = "%s"; split = "val"; frame_index = 0; };\n' \
    "$S/tests/fixtures/datasets/pororo.h5" > "$T/val.cfg"
  "$P" fid -q -p arldm "$T/val.cfg" "$F/arldm_gen" --weights "$W" >/dev/null 2>"$T/err"
  [ $? -ne 0 ] && grep -q "test split" "$T/err"; ok $? "a split without uint8 frames is an error: $(cat "$T/err")"
else
  echo "ok $((n = n + 1)) # SKIP no pororo dataset plugin (libhdf5) or fixture"
fi
# pytorch-fid's .pth layout (torch.save, legacy format, fc and num_batches_tracked included)
# through the checkpoint reader: the same weights as the safetensors file, the same number
if [ -f "$F/inception_w16_legacy.pth" ]; then
  a=$("$P" fid -q "$F/images" "$F/images2" --weights "$W" 2>/dev/null | sed -n 's/^FID: //p')
  b=$("$P" fid -q "$F/images" "$F/images2" --weights "$F/inception_w16_legacy.pth" 2>"$T/err" | sed -n 's/^FID: //p')
  [ -n "$a" ] && [ "$a" = "$b" ]; ok $? "weights from pytorch-fid's .pth layout: FID $b (safetensors: $a)"
fi
mkdir -p "$T/tif"
cp "$F/images/"*.png "$T/tif/"
printf 'II*' > "$T/tif/x.tif"
"$P" fid -q "$T/tif" "$F/images2" --weights "$W" >/dev/null 2>"$T/err"
[ $? -ne 0 ] && grep -q "x.tif: only PNG and JPEG" "$T/err"; ok $? "an image pytorch-fid would read but mmpipe cannot is an error, not left out"
want=$(awk '$1 == "standard" { print $4 }' "$F/expected.txt")
for m in eigen schur; do
  got=$("$P" fid -q --sqrtm $m "$F/images" "$F/images2" --weights "$W" --json "$T/m.json" 2>/dev/null | sed -n 's/^FID: //p')
  close "$got" "$want" && grep -q "\"sqrtm\": \"$m\"" "$T/m.json"; ok $? "--sqrtm $m gives the same FID ($got)"
done
"$P" fid -q "$F/images" --weights "$W" --save-stats "$T/a.safetensors" >/dev/null 2>&1; ok $? "--save-stats"
"$P" fid -q --dims 768 "$F/images" "$F/images2" --weights "$W" --json "$T/d.json" >/dev/null 2>&1 &&
  grep -q '"features": 48' "$T/d.json"; ok $? "--dims 768: block 2 features (48 in the width/16 network)"
got=$("$P" fid -q "$T/a.safetensors" "$F/images2" --weights "$W" --json "$T/r.json" 2>/dev/null | sed -n 's/^FID: //p')
close "$got" "$want"; ok $? "saved statistics give the same FID ($got)"
# four images through the narrow network leave some features constant over a set
# (zero variances): the default (auto) takes scipy's Schur method there
grep -q '"protocol": "standard"' "$T/r.json" && grep -q '"count": 4' "$T/r.json" && grep -q '"sqrtm": "schur"' "$T/r.json"
ok $? "--json written (auto used schur: constant features)"
mkdir -p "$T/bad"
cp "$F/images/"*.png "$T/bad/"
printf 'not a png' > "$T/bad/zzz.png"
"$P" fid -q "$T/bad" "$F/images2" --weights "$W" >/dev/null 2>"$T/err"
rc=$?
[ $rc -ne 0 ] && grep -q "zzz.png" "$T/err"; ok $? "a corrupt image is an error naming the file (rc $rc)"
out=$("$P" fid -q --skip-bad "$T/bad" "$F/images2" --weights "$W" 2>/dev/null)
echo "$out" | grep -q "skipped 1 unreadable" && close "$(echo "$out" | sed -n 's/^FID: //p')" "$want"
ok $? "--skip-bad skips and counts it, FID unchanged"
"$P" fid -q "$F/images" --weights "$W" >/dev/null 2>&1
[ $? -eq 2 ]; ok $? "one set without --save-stats is a usage error"
echo "1..$n"
[ $fails -eq 0 ]
