#!/bin/sh
# bench/dataset-build.sh - stories/s of `pipeline dataset build` against AR-LDM's data_script/*_hdf5.py
# on the same machine, at real frame sizes (FlintstonesSV: 5 x 128 x 128 x 3 per clip; VIST:
# 500 x 375 JPEGs; PororoSV: PNG strips of three 128 x 128 frames, pickled index files), on
# synthetic raw trees in the layouts tests/gen_dataset_raw.py writes.
#
#   bench/dataset-build.sh [STORIES] [THREADS]      (defaults 200, 2; run from the source tree root
#                                                     of a built tree; needs the reference Python)
# Prints one line per dataset: stories, seconds, stories/s of each side, mmpipe's speed-up, and the
# CPU seconds (user + sys) of each side with their ratio.
set -eu
N=${1:-200}
J=${2:-2}
PY=${MMP_REF_PYTHON:-/usr/bin/python3}
ARLDM=${ARLDM:-/root/refsrc/ARLDM}
B=${MMP_BENCH_BUILDDIR:-.}
T=$(mktemp -d /tmp/mmp-bench-dsbuild-XXXXXX)
trap 'rm -rf "$T"' EXIT
export MMPIPE_PLUGIN_PATH="$B/plugins/datasets/.libs:$B/plugins/processors/.libs"
PYTHONPATH=/root/refenv/site "$PY" - "$T" "$N" <<'PYEOF'
import json, os, pickle, sys
import numpy as np
from PIL import Image
root, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(1)
fl = os.path.join(root, "fl"); os.makedirs(os.path.join(fl, "video_frames_sampled"))
clips = ["c%05d" % i for i in range(n + 4)]
base = rng.integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
for i, c in enumerate(clips):
    np.save(os.path.join(fl, "video_frames_sampled", c + ".npy"), np.roll(base, i, axis=2))
json.dump({"train": clips[:n], "val": [], "test": []}, open(os.path.join(fl, "train-val-test_split.json"), "w"))
pickle.dump({c: clips[i + 1:i + 5] for i, c in enumerate(clips[:n])}, open(os.path.join(fl, "following_cache4.pkl"), "wb"))
json.dump([{"globalID": c, "description": "Fred talks to Barney %d." % i} for i, c in enumerate(clips)],
          open(os.path.join(fl, "flintstones_annotations_v1-0.json"), "w"))
vi = os.path.join(root, "vist")
for d in ("sis", "dii", "images"): os.makedirs(os.path.join(vi, d))
y, x = np.mgrid[0:375, 0:500]
sis = {"train": [], "val": [], "test": []}
dii = {"train": [], "val": [], "test": []}
for s in range(n):
    for k in range(5):
        pid = str(100000 + 5 * s + k)
        a = np.stack([(x + s * 7 + k) % 256, (y * 2 + k * 11) % 256, (x * y // 97 + s) % 256], -1)
        a = np.clip(a + rng.integers(0, 30, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(os.path.join(vi, "images", pid + ".jpg"), quality=90)
        sis["train"].append([{"story_id": str(s), "photo_flickr_id": pid, "original_text": "story %d photo %d" % (s, k)}])
        dii["train"].append([{"photo_flickr_id": pid, "original_text": "a photo %s" % pid}])
for sp in sis:
    json.dump({"annotations": sis[sp]}, open(os.path.join(vi, "sis", sp + ".story-in-sequence.json"), "w"))
    json.dump({"annotations": dii[sp]}, open(os.path.join(vi, "dii", sp + ".description-in-isolation.json"), "w"))
po = os.path.join(root, "po"); os.makedirs(os.path.join(po, "ep"))
names = ["ep/%d.png" % i for i in range(n + 4)]
y, x = np.mgrid[0:384, 0:128]
for i, nm in enumerate(names):
    a = np.stack([(x * 2 + i) % 256, (y + i * 3) % 256, (x * y // 51 + i) % 256], -1)
    a = np.clip(a + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(os.path.join(po, nm))
d = np.empty((), dtype=object)
d[()] = {nm[:-4]: ["Pororo and Crong play %d." % i, "x"] for i, nm in enumerate(names)}
np.save(os.path.join(po, "descriptions.npy"), d, allow_pickle=True)
np.save(os.path.join(po, "img_cache4.npy"), np.array([nm.encode() for nm in names]))
np.save(os.path.join(po, "following_cache4.npy"), np.array([[names[min(i + j, n + 3)].encode() for j in range(1, 5)] for i in range(n + 4)]))
ids = np.empty(3, dtype=object)
ids[0], ids[1], ids[2] = np.arange(n), np.array([], np.int64), np.array([], np.int64)
np.save(os.path.join(po, "train_seen_unseen_ids.npy"), ids, allow_pickle=True)
PYEOF
# timed OUT CMD...: run CMD (its output dropped); OUT gets "wall user sys" in seconds
timed() { o=$1; shift; /usr/bin/time -f "%e %U %S" -o "$o" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; }
# report LABEL: stories/s of both sides from $T/ref.t and $T/ours.t, the speed-up, and the CPU
# seconds (user + sys) each side spent: the work ratio, which a loaded machine disturbs less
report() {
  awk -v n="$N" -v j="$J" -v label="$1" -v r="$(cat "$T/ref.t")" -v o="$(cat "$T/ours.t")" 'BEGIN {
    split(r, a, " "); split(o, b, " "); ca = a[2] + a[3]; cb = b[2] + b[3]
    printf "%-12s AR-LDM: %d stories in %.2f s: %.1f stories/s   mmpipe -j %d: %.2f s: %.1f stories/s   x%.2f" \
           "   CPU: %.2f s vs %.2f s (x%.2f)\n", label, n, a[1], n / a[1], j, b[1], n / b[1], a[1] / b[1], ca, cb, ca / cb }'
}
export PYTHONPATH=/root/refenv/site
timed "$T/ref.t" "$PY" "$ARLDM/data_script/flintstones_hdf5.py" --data_dir "$T/fl" --save_path "$T/fl_ref.h5"
timed "$T/ours.t" "$B/tools/pipeline" -q dataset build flintstones --raw "$T/fl" --out "$T/fl.h5" -j "$J" --no-progress
report flintstones
timed "$T/ref.t" "$PY" "$ARLDM/data_script/vist_hdf5.py" --sis_json_dir "$T/vist/sis" --dii_json_dir "$T/vist/dii" \
  --img_dir "$T/vist/images" --save_path "$T/vi_ref.h5"
timed "$T/ours.t" "$B/tools/pipeline" -q dataset build vistsis --raw "$T/vist" --out "$T/vi.h5" -j "$J" --no-progress
report vist
timed "$T/ref.t" "$PY" "$ARLDM/data_script/pororo_hdf5.py" --data_dir "$T/po" --save_path "$T/po_ref.h5"
timed "$T/ours.t" "$B/tools/pipeline" -q dataset build pororo --raw "$T/po" --out "$T/po.h5" -j "$J" --no-progress
report pororo
for d in flintstones vistsis pororo; do
  f=$T/fl; [ $d = vistsis ] && f=$T/vi; [ $d = pororo ] && f=$T/po
  a=$("$B/tools/pipeline" dataset verify --digest "${f}.h5" --dataset $d); b=$("$B/tools/pipeline" dataset verify --digest "${f}_ref.h5" --dataset $d)
  [ "$a" = "$b" ] && echo "$d: the same content as AR-LDM's file" || echo "$d: CONTENT DIFFERS from AR-LDM's file"
done
