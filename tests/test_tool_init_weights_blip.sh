#!/bin/sh
# tests/test_tool_init_weights_blip.sh - `pipeline init-weights` on BLIP's
# med_config.json: the names, dtypes and shapes of the BLIP_Base checkpoint
# of tests/gen_blip.py (blip_base: a tiny VisionTransformer described by the
# vision_* keys), seeded bytes, the blip plugin loading and running the file,
# arldm-init taking it, and the detection's refusals.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F="$S/tests/fixtures/blip"
T=$(mktemp -d /tmp/mmp-initblip-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
[ -e "$F/blip_base/model.safetensors" ] || { echo "1..0 # SKIP fixtures missing"; exit 0; }
"$P" plugins 2>/dev/null | grep -qw blip || { echo "1..0 # SKIP blip plugin not built"; exit 0; }

# the fixture's med_config.json, its word table as stored (98 rows: AR-LDM's
# resize), and gen_blip.py's tiny_vit: width 48, 2 blocks, 4 heads, patch 8,
# mlp_ratio 2, 32x32 images
sed -e 's/"vocab_size": 96/"vocab_size": 98/' \
    -e 's/^{/{\n  "vision_width": 48, "vision_depth": 2, "vision_heads": 4, "vision_patch_size": 8,\n  "vision_mlp_ratio": 2.0, "image_size": 32,/' \
    "$F/blip_base/med_config.json" >"$T/med_config.json"
"$P" -q init-weights "$T/med_config.json" "$T/a.safetensors" --seed 3 >"$T/log" 2>&1
r=$?; ok $r "init-weights detects BLIP's med_config.json and writes it"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"
# (gen_blip.py's save_dir leaves out the position_ids buffers, which BLIP's
# med.py registers as persistent: its checkpoints hold them; checked below)
"$P" tensors "$T/a.safetensors" | grep -v '^#' | grep -v position_ids | tr -s ' ' | sort >"$T/got"
"$P" tensors "$F/blip_base/model.safetensors" | grep -v '^#' | sed 's/^mm_encoder\.//' | tr -s ' ' | sort >"$T/want"
[ -s "$T/want" ] && cmp -s "$T/got" "$T/want"
r=$?; ok $r "every name, dtype and shape of the BLIP_Base fixture, nothing else ($(wc -l <"$T/want") tensors)"
[ $r = 0 ] || diff "$T/want" "$T/got" | head -20 | sed 's/^/#   /'
"$P" tensors "$T/a.safetensors" | grep -q '^text_encoder.embeddings.position_ids  *i64 *\[1, 40\]'
ok $? "position_ids: i64 [1, 40]"
"$P" -q init-weights "$T/med_config.json" "$T/b.safetensors" --seed 3 >/dev/null 2>&1 && cmp -s "$T/a.safetensors" "$T/b.safetensors"
ok $? "the same seed gives the same bytes"
"$P" -q init-weights "$T/med_config.json" "$T/c.safetensors" --seed 4 >/dev/null 2>&1 && ! cmp -s "$T/a.safetensors" "$T/c.safetensors"
ok $? "another seed other bytes"
"$P" -q init-weights "$T/med_config.json" "$T/d.safetensors" --seed 3 --part blip >/dev/null 2>&1 && cmp -s "$T/a.safetensors" "$T/d.safetensors"
ok $? "--part blip: the same file"
"$P" tensors --stats "$T/a.safetensors" 2>&1 | tr -s ' ' >"$T/stats"
grep -E '^text_encoder.encoder.layer.0.attention.self.query.bias ' "$T/stats" | grep -q 'min 0 max 0'
r1=$?
grep -E '^visual_encoder.norm.weight ' "$T/stats" | grep -q 'min 1 max 1'
r2=$?
# cls_token [1, 1, 32]: normal(0, 1/sqrt(32) = 0.177); word table: normal(0, 0.02)
grep -E '^visual_encoder.cls_token ' "$T/stats" | grep -q 'std 0\.1[2-9]\|std 0\.2[0-3]'
r3=$?
grep -E '^text_encoder.embeddings.word_embeddings.weight ' "$T/stats" | grep -q 'std 0\.01[89]\|std 0\.02[01]'
[ $r1 = 0 ] && [ $r2 = 0 ] && [ $r3 = 0 ] && [ $? = 0 ]
ok $? "biases 0, norm weights 1, cls_token std ~1/sqrt(D), word table std ~0.02"

# the blip plugin runs it, in every mode, on gen_blip.py's inputs
for mode in image text multimodal; do
  cat >"$T/c.cfg" <<EOF
encoder = { name = "blip"; config = "$T/med_config.json"; weights = "$T/a.safetensors"; enc_token_id = 97; mode = "$mode"; };
EOF
  "$P" -q forward "$T/c.cfg" --input "$F/blip_base_io.safetensors" --output "$T/o-$mode.safetensors" >"$T/log" 2>&1
  r=$?; ok $r "the blip plugin loads the file and runs ($mode)"
  [ $r = 0 ] || sed 's/^/#   /' "$T/log"
done
"$P" tensors --stats "$T/o-multimodal.safetensors" 2>&1 | tr -s ' ' | grep -E '^last_hidden_state ' | grep -q 'f32 *\[2, 7, 32\].*std [1-9]'
ok $? "multimodal features [2, 7, 32], finite, spread"
# the vision keys describing the fixture's tower give the features of the tower
# sized by the fixture's weights (gen_blip.py's reference inputs)
FA=$(cd "$F" && pwd)
for c in med_config.json vsized.json; do
  h=""
  [ $c = vsized.json ] && cp "$F/blip_base/med_config.json" "$T/vsized.json" && h="num_heads = 4;"
  cat >"$T/c.cfg" <<EOF
encoder = { name = "blip"; config = "$T/$c"; weights = "$FA/blip_base/model.safetensors"; prefix = "mm_encoder.";
            enc_token_id = 97; $h };
EOF
  "$P" -q forward "$T/c.cfg" --input "$F/blip_base_io.safetensors" --output "$T/f-$c.safetensors" >"$T/log" 2>&1 ||
    sed 's/^/#   /' "$T/log"
done
d1=$("$P" tensors --digest "$T/f-med_config.json.safetensors" 2>/dev/null | grep last_hidden)
d2=$("$P" tensors --digest "$T/f-vsized.json.safetensors" 2>/dev/null | grep last_hidden)
[ -n "$d1" ] && [ "$d1" = "$d2" ]
ok $? "the fixture's checkpoint with its tower in vision_* keys: the features of the tower sized by its tensors"
# arldm-init takes it as --blip
"$P" -q arldm-init --sd "$S/tests/fixtures/sd/pipe" --blip "$T/a.safetensors" --max-length 8 --image-size 32 \
  --clip-ids 38,39,39 --blip-ids 1,2,0 --seed 1 --out "$T/arldm.safetensors" >"$T/log" 2>&1
r=$?; ok $r "arldm-init takes it as BLIP"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"

# refusals
printf '{"model_type": "bert", "hidden_size": 32}\n' >"$T/bert.json"
"$P" -q init-weights "$T/bert.json" "$T/x.safetensors" >"$T/log" 2>&1
r=$?; [ $r = 5 ] && grep -q "BLIP med_config" "$T/log" && [ ! -e "$T/x.safetensors" ]
ok $? "a BERT config without cross-attention is not BLIP's (exit $r)"
printf '{"model_type": "bert",\n "add_cross_attention": tru }\n' >"$T/bad.json"
"$P" -q init-weights "$T/bad.json" "$T/x.safetensors" >"$T/log" 2>&1
r=$?; [ $r = 5 ] && grep -q "bad.json:2:" "$T/log"
ok $? "malformed JSON: file and line (exit $r: $(head -c 160 "$T/log"))"
sed '/"vision_/d; /"image_size"/d' "$T/med_config.json" >"$T/novit.json"
"$P" -q init-weights "$T/novit.json" "$T/x.safetensors" >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "vit" "$T/log" && [ ! -e "$T/x.safetensors" ]
ok $? "no vision tower described: an error naming vit (exit $r)"
"$P" -q init-weights "$T/med_config.json" "$T/x.safetensors" --vit huge >"$T/log" 2>&1
r=$?; [ $r = 2 ]; ok $? "--vit huge is a usage error"
"$P" -q init-weights "$S/tests/fixtures/sd/pipe/unet/config.json" "$T/x.safetensors" --vit base >"$T/log" 2>&1
r=$?; [ $r = 2 ]; ok $? "--vit on a UNet config is a usage error"
"$P" -q init-weights "$T/med_config.json" "$T/x.safetensors" --part bert >"$T/log" 2>&1
r=$?; [ $r = 2 ]; ok $? "--part with an unknown part is a usage error"
sed 's/"vision_heads": 4/"vision_heads": 5/' "$T/med_config.json" >"$T/heads.json"
"$P" -q init-weights "$T/heads.json" "$T/x.safetensors" >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "heads" "$T/log" && [ ! -e "$T/x.safetensors" ]
ok $? "a width not divisible by the heads is refused (exit $r)"
sed 's/"vision_mlp_ratio": 2.0/"vision_mlp_ratio": -1/' "$T/med_config.json" >"$T/ratio.json"
"$P" -q init-weights "$T/ratio.json" "$T/x.safetensors" >"$T/log" 2>&1
r=$?; [ $r != 0 ] && grep -q "vision_mlp_ratio" "$T/log"
ok $? "a negative mlp ratio is refused (exit $r)"
echo "1..$n"
[ $failed = 0 ]
