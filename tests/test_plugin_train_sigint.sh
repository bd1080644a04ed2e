#!/bin/sh
# tests/test_plugin_train_sigint.sh - SIGINT during training writes a
# checkpoint and exits cleanly (status 130 = cancelled); a resume from it
# finishes the run; progress with an ETA goes to stderr.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
T=$(mktemp -d /tmp/mmp-train-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
CFG="$S/examples/train-tiny.cfg"
# many steps, so that the signal comes in the middle of the run
"$B/tools/pipeline" run "$CFG" -s task.output_dir="$T/out" -s task.epochs=1000 \
  -s task.checkpoint_every=0 >"$T/log" 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ] && ! grep -q '"loss"' "$T/out/metrics.jsonl" 2>/dev/null; do sleep 0.2; i=$((i+1)); done
kill -INT $pid
wait $pid
rc=$?
ok $([ $rc = 130 ] && echo 0 || echo 1) "SIGINT: exit status 130 (got $rc)"
grep -q 'interrupted at step' "$T/log"; ok $? "the message names the step and the checkpoint"
[ -s "$T/out/checkpoint.safetensors" ]; ok $? "checkpoint.safetensors written"
ls "$T/out" | grep -q tmp; ok $([ $? = 1 ] && echo 0 || echo 1) "no temporary file left"
grep -q 'ETA' "$T/log"; ok $? "progress with an ETA on stderr"
steps=$(grep -c '"loss"' "$T/out/metrics.jsonl")
# resume and finish: 2 more steps as a bounded run
"$B/tools/pipeline" -q run "$CFG" -s task.output_dir="$T/out" -s task.epochs=1000 -s task.checkpoint_every=0 \
  -s task.run_steps=2 -s task.resume="$T/out/checkpoint.safetensors" >"$T/log2" 2>&1
rc=$?
ok $rc "resumed from the checkpoint (status $rc)"
[ $rc = 0 ] || cat "$T/log2" | sed 's/^/# /'
after=$(grep -c '"loss"' "$T/out/metrics.jsonl")
ok $([ "$after" = $((steps + 2)) ] && echo 0 || echo 1) "2 more metrics lines ($steps -> $after)"
grep '"step": '$((steps + 1))',' "$T/out/metrics.jsonl" >/dev/null; ok $? "the resumed run continues at step $((steps + 1))"
echo "1..$n"
[ $failed = 0 ]
