#!/bin/sh
# tests/test_core_convert.sh - `pipeline tensors` and `pipeline convert` on PyTorch checkpoints
# (fixtures from tests/gen_checkpoints.py): listings, --select/--strip-prefix/--dtype, bit-for-bit
# round trips checked by digest, errors. TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F="$S/tests/fixtures/ckpt"
T=$(mktemp -d /tmp/mmp-convert-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
expect_rc() { want=$1; shift; d=$1; shift; "$@" >"$T/out" 2>"$T/err"; rc=$?; [ "$rc" = "$want" ]; r=$?; ok $r "$d (exit $rc, want $want)"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"; }
grep_err() { grep -qF -- "$1" "$T/err"; r=$?; ok $r "stderr says: $1"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"; }
grep_out() { grep -qF -- "$1" "$T/out"; r=$?; ok $r "stdout says: $1"; [ $r = 0 ] || sed 's/^/#   /' "$T/out"; }
# name and digest of each tensor, sorted
digests() { "$P" tensors --digest "$1" | grep -v '^#' | awk '{print $1, $NF}' | sort; }
same() { diff "$1" "$2" >"$T/diff"; r=$?; ok $r "$3"; [ $r = 0 ] || head -5 "$T/diff" | sed 's/^/#   /'; }

expect_rc 0 "convert --help" "$P" convert --help
grep_out "--strip-prefix"

# listing: tensors by dotted path with bytes, then the plain values
expect_rc 0 "tensors of a Lightning checkpoint" "$P" tensors "$F/lightning.ckpt"
grep_out "state_dict.unet.conv_in.weight"
grep_out "optimizer_states.0.state.3.exp_avg "
grep_out "# global_step = 120"
grep_out "# pytorch-lightning_version = '1.7.7'"
grep_out "# hyper_parameters = <pytorch_lightning.utilities.parsing.AttributeDict>"
expect_rc 0 "tensors --select model of a BLIP-style file" "$P" tensors --select model "$F/blip.pth"
grep_out "text_encoder.text_model.embeddings.token_embedding.weight"

# a part, converted, is the diffusers file bit for bit
expect_rc 0 "convert --select state_dict --strip-prefix unet." \
  "$P" convert "$F/lightning.ckpt" "$T/unet.safetensors" --select state_dict --strip-prefix unet.
digests "$T/unet.safetensors" >"$T/a"
digests "$S/tests/fixtures/sd/pipe/unet/diffusion_pytorch_model.safetensors" >"$T/b"
same "$T/a" "$T/b" "the converted UNet equals the diffusers file (names and bytes)"

# every tensor, under its dotted path, in its own dtype (i16/i8 as i32)
for f in plain.pt legacy.pt lightning.ckpt; do
  expect_rc 0 "convert $f (everything)" "$P" convert "$F/$f" "$T/all.safetensors"
  digests "$F/$f" >"$T/a"
  digests "$T/all.safetensors" >"$T/b"
  same "$T/a" "$T/b" "$f: loading the converted file gives the same tensors bit for bit"
done
"$P" tensors "$T/all.safetensors" >"$T/out" 2>&1
grep_out "optimizer_states.0.state.3.exp_avg "
"$P" convert "$F/plain.pt" "$T/all.safetensors" -q; "$P" tensors "$T/all.safetensors" >"$T/out" 2>&1
grep -q '^bf16 *bf16' "$T/out"; ok $? "bf16 stays bf16"

expect_rc 0 "convert --dtype f16" "$P" convert "$F/blip.pth" "$T/h.safetensors" --select model --dtype f16
"$P" tensors "$T/h.safetensors" >"$T/out"
! grep -v '^#' "$T/out" | grep -qv ' f16 '; ok $? "every tensor is f16"

# errors
expect_rc 5 "a tensor inside an object of an unknown class" "$P" convert "$F/bad_depends.pt" "$T/x.safetensors"
grep_err "__main__.Holder"
expect_rc 5 "a storage without a record" "$P" tensors "$F/bad_missing_record.pt"
grep_err "has no record"
expect_rc 2 "a bad --dtype" "$P" convert "$F/plain.pt" "$T/x.safetensors" --dtype i8
[ ! -e "$T/x.safetensors" ] && [ -z "$(ls "$T" | grep tmp)" ]; ok $? "nothing written by failed runs"

echo "1..$n"
[ "$failed" = 0 ]
