#!/bin/sh
# tests/test_plugin_train_mpi.sh - the train task data-parallel: `mpirun -np 2 pipeline run` with
# batch_size 1 per rank equals one process with batch_size 2 (losses, gradient norms, the
# validation loss, the exported weights' statistics within 1e-5 relative); rank 0 alone writes
# the files; an interrupted two-rank run resumes to the same result; a resume with another
# number of processes is refused; optimizer_in_backward = true gives the same bytes. The same for mode = "arldm" (examples/train-arldm-tiny.cfg: the
# tiny AR-LDM on stories): 2 ranks of batch 1 equal one process of batch 2 within 1e-5, also with
# BLIP in train mode (blip_dropout = "on").
# Skipped (77) in a build without MPI or without mpirun.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
MPIRUN=${MMP_MPIRUN:-}
if [ -z "$MPIRUN" ]; then
  echo "1..0 # SKIP built without MPI, or mpirun not found (configure --with-mpi; apt-get install openmpi-bin)"
  exit 77
fi
T=$(mktemp -d /tmp/mmp-trainmpi-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
# as tests/test_core_dist.sh: no leak checking for the ranks (Open MPI's own allocations)
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"; export ASAN_OPTIONS
env=
for v in MMPIPE_PLUGIN_PATH ASAN_OPTIONS UBSAN_OPTIONS; do
  eval "[ -n \"\${$v+x}\" ]" && env="$env -x $v"
done
CFG="$S/examples/train-tiny.cfg"
mpi2() {
  "$MPIRUN" -np 2 --oversubscribe $root --bind-to none --mca mpi_yield_when_idle 1 \
    --mca btl_vader_single_copy_mechanism none -x MMPIPE_THREADS=1 $env "$P" -q run "$CFG" "$@"
}
# shuffled, two accumulated micro-batches, an epoch boundary, validation each epoch
K="-s task.grad_accum=2 -s task.max_steps=3 -s task.shuffle=true -s task.checkpoint_every=1"
# one value per metrics line: loss or val_loss, and grad_norm
vals() { sed -n 's/.*"\(loss\|val_loss\)": \([^,}]*\).*/\1 \2/p; s/.*"grad_norm": \([^,}]*\).*/grad_norm \1/p' "$1"; }
close() { # two files of "name value" lines (or pipeline tensors --stats lines): every number within 1e-5
  awk 'NR == FNR { a[FNR] = $0; next }
       { split(a[FNR], x, " "); nf = split($0, y, " "); if (nf != split(a[FNR], x, " ")) bad++;
         for (i = 1; i <= nf; i++) if (y[i] ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) {
           d = x[i] - y[i]; if (d < 0) d = -d; m = x[i] < 0 ? -x[i] : x[i];
           if (d > 1e-5 * (m > 1e-3 ? m : 1e-3)) { bad++; if (bad < 4) print "#   " a[FNR] " | " $0 } } }
       END { if (FNR != length(a)) bad++; exit bad > 0 }' "$1" "$2"
}

# run a command, its output in $T/log; "ok" or "not ok" with the log shown
run() { _rl=$1; shift; "$@" >"$T/log" 2>&1; r=$?; ok $r "$_rl"; [ $r = 0 ] || sed 's/^/#   /' "$T/log"; return $r; }
one() { "$P" -q run "$CFG" "$@"; }
# one process of batch 2 against two ranks of batch 1 each, both with the options in $K: the
# logged losses, gradient norms and validation loss, and the exported PART files' statistics
one_vs_two() { # LABEL DIR_ONE DIR_TWO PART...
  label=$1 d1=$T/$2 d2=$T/$3; shift 3
  run "${label}one process, batch_size 2" one -s task.output_dir="$d1" -s task.batch_size=2 $K
  run "${label}two ranks under mpirun, batch_size 1 each" mpi2 -s task.output_dir="$d2" -s task.batch_size=1 $K
  vals "$d1/metrics.jsonl" >"$T/a"; vals "$d2/metrics.jsonl" >"$T/b"
  [ "$(grep -c '^loss' "$T/a")" = 3 ] && [ "$(grep -c '^val_loss' "$T/a")" -ge 1 ]; ok $? "${label}3 losses and a validation loss logged"
  close "$T/a" "$T/b"; ok $? "${label}the same losses, gradient norms and validation loss (1e-5)"
  for part in "$@"; do
    "$P" tensors --stats "$d1/export/$part.safetensors" >"$T/a" 2>&1
    "$P" tensors --stats "$d2/export/$part.safetensors" >"$T/b" 2>&1
    [ -s "$T/a" ] && close "$T/a" "$T/b"; ok $? "${label}the exported $part weights agree (min, max, mean, std of every tensor, 1e-5)"
  done
}

one_vs_two "" one two unet/diffusion_pytorch_model text_encoder/model
[ "$(grep -c '"loss"' "$T/two/metrics.jsonl")" = 3 ]; ok $? "rank 0 alone writes metrics.jsonl (one line per step)"

# interrupted after 2 steps (run_steps), resumed for the last: the uninterrupted two-rank run's metrics
run "two ranks, 2 steps" mpi2 -s task.output_dir="$T/res" -s task.batch_size=1 -s task.run_steps=2 $K
run "two ranks, resumed" mpi2 -s task.output_dir="$T/res" -s task.batch_size=1 -s task.resume="$T/res/checkpoint.safetensors" $K
sed 's/, "elapsed_s": [^}]*//' "$T/two/metrics.jsonl" >"$T/a"; sed 's/, "elapsed_s": [^}]*//' "$T/res/metrics.jsonl" >"$T/b"
cmp -s "$T/a" "$T/b"; ok $? "the resumed run's metrics equal the uninterrupted run's, digit for digit"
one -s task.output_dir="$T/res" -s task.batch_size=1 -s task.resume="$T/res/checkpoint.safetensors" $K >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "2 processes, this one has 1" "$T/log"; ok $? "a one-process resume of a two-rank checkpoint is refused"
[ $r != 0 ] && grep -q "2 processes, this one has 1" "$T/log" || sed 's/^/#   /' "$T/log"

# optimizer_in_backward: each gradient averaged over the ranks and taken by its AdamW update in
# the backward equals the two-rank step after the backward, bit for bit (same ordered reduction)
KB="-s task.max_steps=3 -s task.shuffle=true -s task.batch_size=1 -s task.grad_accum=1 -s task.clip_norm=0.0"
run "two ranks, grad_accum 1, the optimizer after the backward" mpi2 -s task.output_dir="$T/ib0" $KB
run "two ranks, the optimizer in the backward" mpi2 -s task.output_dir="$T/ib1" -s task.optimizer_in_backward=true $KB
sed 's/, "elapsed_s": [^}]*//' "$T/ib0/metrics.jsonl" >"$T/a"; sed 's/, "elapsed_s": [^}]*//' "$T/ib1/metrics.jsonl" >"$T/b"
cmp -s "$T/a" "$T/b" && cmp -s "$T/ib0/checkpoint.safetensors" "$T/ib1/checkpoint.safetensors"
ok $? "two ranks in the backward: the same metrics digit for digit, the same checkpoint byte for byte"

# mode = "arldm": the tiny AR-LDM on the 4 train stories, shuffled, an epoch boundary, validation
CFG="$S/examples/train-arldm-tiny.cfg"
K="-s task.max_steps=3 -s task.shuffle=true -s task.clip_norm=1.0"
one_vs_two "arldm: " aone atwo arldm
# BLIP in train mode (blip_dropout = "on": BERT's dropout drawn in every BLIP call): each rank draws
# the whole batch's masks and keeps its rows, so two ranks still equal one process
K="$K -s task.blip_dropout=on"
one_vs_two "arldm, blip_dropout on: " done dtwo arldm
vals "$T/done/metrics.jsonl" >"$T/a"; vals "$T/aone/metrics.jsonl" >"$T/c"
! cmp -s "$T/a" "$T/c"; ok $? "arldm, blip_dropout on: not the losses without dropout"
echo "1..$n"
[ $failed = 0 ]
