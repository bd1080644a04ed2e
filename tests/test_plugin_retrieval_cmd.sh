#!/bin/sh
# tests/test_plugin_retrieval_cmd.sh - `pipeline -v run` of the retrieval
# task in evaluate mode from a config file, with `-s task.itc_only=true` as
# the command-line switch: the verbose output names the checkpoint's
# training-only parts (momentum towers, queues) it ignores, and the metrics
# are BLIP's itm_eval of the ITC scores (tests/fixtures/blip_retrieval/
# expected.json); a bad key is a configuration error (exit 3). TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F=$(cd "$S/tests/fixtures/blip_retrieval" && pwd)
T=$(mktemp -d /tmp/mmp-retrieval-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
for k in tasks encoders processors; do MMPIPE_PLUGIN_PATH="${MMPIPE_PLUGIN_PATH:+$MMPIPE_PLUGIN_PATH:}$B/plugins/$k/.libs"; done
export MMPIPE_PLUGIN_PATH
if [ ! -f "$B/plugins/tasks/.libs/task_retrieval.so" ]; then echo "1..0 # SKIP the retrieval task is not built"; exit 0; fi
ENC=$(($(wc -l <"$F/vocab.txt") + 1))
cat >"$T/eval.cfg" <<CFG
task = { name = "retrieval"; mode = "evaluate"; annotation = "$F/annotation/coco_karpathy_test.json";
         image_root = "$F/images"; k_test = 16; output_json = "$T/metrics.json"; };
model = { name = "blip_retrieval"; config = "$F/med_config.json"; weights = "$F/model.pth";
          weights_prefix = "model."; num_heads = 4; enc_token_id = $ENC; };
tokenizer = { name = "bert_tokenizer"; vocab = "$F/vocab.txt"; max_length = 35; pre_caption = 30; };
image_processor = { name = "image_resize"; size = [32, 32]; interpolation = "bicubic";
                    mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };
CFG
"$P" -v run "$T/eval.cfg" -s task.itc_only=true >"$T/out" 2>"$T/err"
rc=$?
ok $rc "pipeline -v run (evaluate, itc_only) exits 0 ($rc)"
[ $rc = 0 ] || sed 's/^/#   /' "$T/err"
for part in 'visual_encoder_m\.\*' 'text_encoder_m\.\*' 'vision_proj_m\.\*' 'text_proj_m\.\*' image_queue text_queue idx_queue ptr_queue; do
  grep -q "ignored (training only): $part" "$T/err"; ok $? "verbose output names the ignored $part"
done
# the ITC metrics, as BLIP's itm_eval printed them into expected.json
for key in txt_r1 txt_r5 txt_r10 img_r1 img_r5 img_r10 r_mean; do
  want=$(sed -n '/"itc_eval"/,/}/p' "$F/expected.json" | grep "\"$key\"" | sed 's/.*: *//; s/,$//')
  got=$(grep "\"$key\"" "$T/metrics.json" 2>/dev/null | sed 's/.*: *//; s/,$//')
  awk -v a="$got" -v b="$want" 'BEGIN { exit !(a != "" && b != "" && (a - b < 1e-9 && b - a < 1e-9)) }'
  ok $? "$key = $got (BLIP: $want)"
done
"$P" run "$T/eval.cfg" -s task.k_tset=3 >/dev/null 2>"$T/err"
rc=$?
[ $rc = 3 ] && grep -q "k_tset" "$T/err"
ok $? "an unknown task key is a configuration error naming it (exit $rc)"
echo "1..$n"
[ $failed = 0 ]
