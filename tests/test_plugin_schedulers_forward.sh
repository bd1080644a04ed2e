#!/bin/sh
# tests/test_plugin_schedulers_forward.sh - `pipeline forward` runs a scheduler on golden cases; TAP output.
# The numbers themselves are compared in test_plugin_schedulers; here the
# command, its exit codes and its output tensors are checked.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F="$S/tests/fixtures/schedulers"
T=$(mktemp -d /tmp/mmp-sched-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
MMPIPE_PLUGIN_PATH="$B/plugins/schedulers/.libs"; export MMPIPE_PLUGIN_PATH

for c in pndm_arldm_250_eps ddim_arldm_50_eps_eta1 euler_karras_25; do
  "$P" forward "$F/$c.cfg" --input "$F/$c.in.safetensors" --output "$T/$c.out.safetensors" 2>"$T/err"
  rc=$?
  ok $rc "forward $c (exit $rc)"
  [ $rc = 0 ] || sed 's/^/#   /' "$T/err"
  [ -s "$T/$c.out.safetensors" ]; ok $? "$c: output written"
  for t in timesteps samples; do
    grep -q "\"$t\"" "$T/$c.out.safetensors"; ok $? "$c: output has $t"
  done
done
grep -q '"noisy"' "$T/ddim_arldm_50_eps_eta1.out.safetensors"; ok $? "ddim: output has noisy"
grep -q '"pred_original_samples"' "$T/ddim_arldm_50_eps_eta1.out.safetensors"; ok $? "ddim: output has pred_original_samples"
grep -q '"model_timesteps"' "$T/euler_karras_25.out.safetensors"; ok $? "euler karras: output has model_timesteps"

# swapping the sampler is one override (50 steps = 50 model calls for these;
# pndm with skip_prk_steps = true makes 51)
for s in ddpm ddim euler euler_ancestral dpmpp_2m; do
  "$P" forward "$F/euler_default_50_eps.cfg" -s scheduler.name=$s \
    --input "$F/euler_default_50_eps.in.safetensors" --output "$T/swap.safetensors" 2>"$T/err"
  rc=$?; ok $rc "-s scheduler.name=$s runs the same inputs (exit $rc)"
  [ $rc = 0 ] || sed 's/^/#   /' "$T/err"
done

# a bad value is a config error (exit 3) naming file and line
printf 'scheduler = {\n  name = "ddim";\n  beta_start = 0.01;\n  beta_end = 0.001;\n};\n' >"$T/bad.cfg"
"$P" forward "$T/bad.cfg" --input "$F/ddim_arldm_10_eps.in.safetensors" --output "$T/x.safetensors" 2>"$T/err"
rc=$?; [ $rc = 3 ]; ok $? "beta_end < beta_start: exit $rc, want 3"
grep -q "bad.cfg:4" "$T/err"; ok $? "message names bad.cfg:4"
[ ! -e "$T/x.safetensors" ]; ok $? "no output on error"

# the number of model outputs must match the schedule
"$P" forward "$F/ddim_arldm_10_eps.cfg" -s scheduler.num_inference_steps=20 \
  --input "$F/ddim_arldm_10_eps.in.safetensors" --output "$T/y.safetensors" 2>"$T/err"
rc=$?; [ $rc != 0 ]; ok $? "20 steps on 10 model outputs fails (exit $rc)"
grep -q "number of model calls" "$T/err"; ok $? "message says the count is wrong"

echo "1..$n"
[ $failed = 0 ]
