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

# writing torch.save files: by OUT's extension a Lightning .ckpt (tensors under state_dict, with
# epoch, global_step and pytorch-lightning_version) or a plain .pt; reading them back gives the
# same tensors bit for bit, every record 64-byte aligned (read in place)
A="$S/tests/fixtures/sd/pipe/unet/diffusion_pytorch_model.safetensors"
expect_rc 0 "convert safetensors -> Lightning .ckpt" "$P" convert "$A" "$T/w.ckpt"
expect_rc 0 "tensors of the written .ckpt" "$P" tensors "$T/w.ckpt"
grep_out "state_dict.conv_in.weight"
grep_out "# global_step = 0"
grep_out "# pytorch-lightning_version = '1.6.5'"
expect_rc 0 "convert the .ckpt back" "$P" convert "$T/w.ckpt" "$T/w.safetensors" --select state_dict
digests "$A" >"$T/a"
digests "$T/w.safetensors" >"$T/b"
same "$T/a" "$T/b" "safetensors -> .ckpt -> safetensors keeps every name and byte"
expect_rc 0 "convert safetensors -> plain .pt (bf16)" "$P" convert "$A" "$T/w.pt" --dtype bf16
"$P" tensors "$T/w.pt" >"$T/out"
grep -q '^conv_in.weight .* bf16 ' "$T/out"; ok $? "a top-level OrderedDict of bf16 tensors"
expect_rc 0 "--to torch overrides the extension" "$P" convert "$A" "$T/w2.bin" --to torch
digests "$T/w2.bin" >"$T/b"
same "$T/a" "$T/b" "a plain OrderedDict (no state_dict level) with every name and byte of the source"
# the zip: every record's data starts at a multiple of 64 (local header 30 + name + extra)
if command -v python3 >/dev/null 2>&1; then
  python3 - "$T/w.ckpt" >"$T/out" 2>&1 <<'PY'
import struct, sys, zipfile
f = open(sys.argv[1], 'rb').read()
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
bad = [i.filename for i in z.infolist()
       if (i.header_offset + 30 + sum(struct.unpack('<HH', f[i.header_offset + 26:i.header_offset + 30]))) % 64]
print('misaligned', len(bad), 'of', len(z.infolist()))
PY
  grep -q "^misaligned 0 of" "$T/out"; ok $? "a valid zip, every record 64-byte aligned ($(cat "$T/out"))"
else
  echo "ok $((n=n+1)) # SKIP python3 absent"
fi
# torch.load reads them as PyTorch's own (only where the reference environment has torch)
PY3=/usr/bin/python3
if [ -x "$PY3" ] && "$PY3" -c 'import torch' 2>/dev/null && [ -n "${MMP_REFENV:-}" ]; then
  PYTHONPATH="$MMP_REFENV" "$PY3" - "$T/w.ckpt" "$T/w.pt" "$A" >"$T/out" 2>&1 <<'PY'
import sys, torch, safetensors.torch as st
ref = st.load_file(sys.argv[3])
c = torch.load(sys.argv[1], map_location='cpu')
assert c['epoch'] == 0 and c['global_step'] == 0, c.keys()
d = c['state_dict']
assert list(d) == sorted(ref) or sorted(d) == sorted(ref)
assert all(torch.equal(d[k], ref[k]) and d[k].dtype == ref[k].dtype for k in ref)
p = torch.load(sys.argv[2], map_location='cpu')
assert type(p).__name__ == 'OrderedDict' and all(p[k].dtype == torch.bfloat16 for k in p)
assert all(torch.equal(p[k], ref[k].bfloat16()) for k in ref)
print('torch.load ok', len(d))
PY
  grep -q "^torch.load ok" "$T/out"; ok $? "torch.load reads both files with the same tensors"
  [ $? = 0 ] || sed 's/^/#   /' "$T/out"
else
  echo "ok $((n=n+1)) # SKIP torch.load check: set MMP_REFENV to the reference environment's site dir"
fi

# errors
expect_rc 2 "a bad --to" "$P" convert "$A" "$T/x.ckpt" --to onnx
expect_rc 5 "a tensor inside an object of an unknown class" "$P" convert "$F/bad_depends.pt" "$T/x.safetensors"
grep_err "__main__.Holder"
expect_rc 5 "a storage without a record" "$P" tensors "$F/bad_missing_record.pt"
grep_err "has no record"
expect_rc 2 "a bad --dtype" "$P" convert "$F/plain.pt" "$T/x.safetensors" --dtype i8
[ ! -e "$T/x.safetensors" ] && [ -z "$(ls "$T" | grep tmp)" ]; ok $? "nothing written by failed runs"

echo "1..$n"
[ "$failed" = 0 ]
