#!/bin/sh
# tests/test_plugin_blip_forward.sh - `pipeline forward` runs the vit, bert and
# blip encoders on the fixtures' inputs (tests/gen_blip.py) and writes the
# documented tensor names; TAP output. The numbers are compared in
# test_plugin_vit, test_plugin_bert and test_plugin_blip.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F=$(cd "$S/tests/fixtures/blip" && pwd)
T=$(mktemp -d /tmp/mmp-blip-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
MMPIPE_PLUGIN_PATH="$B/plugins/encoders/.libs"; export MMPIPE_PLUGIN_PATH

# run NAME CFG INPUT [METHOD] -> $T/NAME.safetensors
run() {
  printf '%s\n' "$2" >"$T/$1.cfg"
  if [ $# -ge 4 ]; then meth="--method $4"; else meth=""; fi
  # shellcheck disable=SC2086
  "$P" forward "$T/$1.cfg" --input "$3" --output "$T/$1.safetensors" $meth 2>"$T/err"
  rc=$?
  ok $rc "forward $1 (exit $rc)"
  [ $rc = 0 ] || sed 's/^/#   /' "$T/err"
}
has() { # has NAME TENSOR...
  f=$1; shift
  for t in "$@"; do grep -q "\"$t\"" "$T/$f.safetensors" 2>/dev/null; ok $? "$f: output has $t"; done
}

run vit "encoder = { name = \"vit\"; model_dir = \"$F/vit_hf\"; output_hidden_states = true; };" "$F/vit_hf_io.safetensors"
has vit last_hidden_state pooler_output hidden_states.0 hidden_states.2
run bert "encoder = { name = \"bert\"; model_dir = \"$F/bert_hf\"; };" "$F/bert_hf_io.safetensors"
has bert last_hidden_state pooler_output
run bert_cross "encoder = { name = \"bert\"; model_dir = \"$F/blip_text\"; is_decoder = 1; };" "$F/blip_text_io.safetensors"
has bert_cross last_hidden_state
BLIP="encoder = { name = \"blip\"; config = \"$F/blip_base/med_config.json\"; weights = \"$F/blip_base/model.safetensors\"; prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 97; };"
for m in multimodal image text; do
  run "blip_$m" "$BLIP" "$F/blip_base_io.safetensors" $m
  has "blip_$m" last_hidden_state
done

# a checkpoint that does not fit: data error (exit 5), every problem listed
run_bad() {
  printf '%s\n' "$1" >"$T/bad.cfg"
  "$P" forward "$T/bad.cfg" --input "$2" --output "$T/bad.safetensors" 2>"$T/err"
  echo $?
}
rc=$(run_bad "encoder = { name = \"bert\"; config = \"$F/bert_hf/config.json\"; weights = \"$F/blip_base/model.safetensors\"; prefix = \"mm_encoder.text_encoder.\"; };" "$F/bert_hf_io.safetensors")
[ "$rc" = 5 ]; ok $? "a med.py checkpoint for a BertModel config: exit $rc, want 5"
grep -q "problems" "$T/err"; ok $? "one message lists the problems"
[ ! -e "$T/bad.safetensors" ]; ok $? "no output on error"

echo "1..$n"
[ $failed = 0 ]
