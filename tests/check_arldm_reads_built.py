#!/usr/bin/python3
"""tests/check_arldm_reads_built.py - AR-LDM's own dataset classes read the files `pipeline dataset build` writes.

For each raw tree of tests/gen_dataset_raw.py (flintstones, vist, pororo)
this builds the file with mmpipe's `pipeline dataset build` and reads every
story of every split through AR-LDM's datasets/{flintstones,vistsis,vistdii,
pororo}.py StoryDataset (9d8feeb, imported with tests/gen_datasets.py's
stand-ins: local tokenizer files, `args`, randint answering 0; torch's
seed set per item for VIST's random crops), from
mmpipe's file and from the file AR-LDM's own data_script made of the same
tree (tests/fixtures/dataset_raw/*.arldm.h5). Every tensor of every item
must be equal (images, captions, attention masks, BLIP sources and
captions; test splits: the raw frames), and the story counts too. A
control: a `--true-rgb` build (ordinary RGB PNGs, which AR-LDM's cv2 reads
with red and blue swapped) must be told apart, so the comparison sees the
pixels.

Run by tests/test_plugin_dataset_arldm_read.sh; exit 77 (skip) when the
reference environment (torch, torchvision, h5py, cv2, transformers 4.30,
AR-LDM's sources, the tokenizer files of ../shared/data) is missing.
  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/check_arldm_reads_built.py PIPELINE TMPDIR
"""
import contextlib
import io
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RAW = os.path.join(HERE, "fixtures", "dataset_raw")

try:
    import numpy as np
    import h5py  # noqa: F401
    import torch
    sys.path.insert(0, HERE)
    import gen_datasets as G
    if not os.path.isdir(G.ARLDM) or not os.path.isfile(os.path.join(G.SHARED, "clip", "vocab.json")):
        raise ImportError("AR-LDM's sources or the tokenizer files are missing")
    import transformers
    if transformers.__version__ != "4.30.0":
        raise ImportError("transformers %s, not 4.30.0" % transformers.__version__)
except ImportError as e:
    print("1..0 # SKIP reference environment: %s" % e)
    sys.exit(77)

TOKENS = {"flintstones": G.FLINT_TOKENS, "pororo": G.PORORO_TOKENS, "vistsis": [], "vistdii": []}
n = 0
failed = 0


def ok(cond, what):
    global n, failed
    n += 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n, what))
    failed += 0 if cond else 1


def items(dataset, path, split):
    with contextlib.redirect_stdout(io.StringIO()):
        ds = G.arldm_dataset(dataset, path, split, "visualization", TOKENS[dataset])
        out = []
        for i in range(len(ds)):
            torch.manual_seed(i)  # VIST's train transforms crop at random (torchvision draws from torch)
            out.append(G.item(ds, i))
        return out


def same(a, b):
    """Every item equal, tensor by tensor; a reason otherwise."""
    if len(a) != len(b):
        return "%d stories, AR-LDM's file %d" % (len(a), len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        for k in y:
            if x[k].shape != y[k].shape or x[k].dtype != y[k].dtype or not np.array_equal(x[k], y[k]):
                return "story %d: %s differs" % (i, k)
    return None


def main():
    pipeline, tmp = sys.argv[1], sys.argv[2]
    cases = [("flintstones", "flintstones", ["flintstones"]), ("vistsis", "vist", ["vistsis", "vistdii"]),
             ("pororo", "pororo", ["pororo"])]
    for name, tree, readers in cases:
        out = os.path.join(tmp, tree + ".mmpipe.h5")
        r = subprocess.run([pipeline, "dataset", "build", name, "--raw", os.path.join(RAW, tree), "--out", out,
                            "--no-progress", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ok(r.returncode == 0, "%s: pipeline dataset build (%s)" % (name, r.stderr.strip()[-200:]))
        if r.returncode:
            continue
        for ds in readers:
            for split in ("train", "val", "test"):
                mine = items(ds, out, split)
                theirs = items(ds, os.path.join(RAW, tree + ".arldm.h5"), split)
                why = same(mine, theirs)
                ok(why is None and len(theirs) > 0,
                   "%s %s: AR-LDM's StoryDataset reads mmpipe's file as its own (%d stories)%s" %
                   (ds, split, len(theirs), ": " + why if why else ""))
    # the control: R and B swapped is seen
    out = os.path.join(tmp, "flintstones.rgb.h5")
    subprocess.run([pipeline, "dataset", "build", "flintstones", "--raw", os.path.join(RAW, "flintstones"), "--out",
                    out, "--true-rgb", "--no-progress", "-q"], check=True, stdout=subprocess.DEVNULL)
    why = same(items("flintstones", out, "train"), items("flintstones", os.path.join(RAW, "flintstones.arldm.h5"),
                                                         "train"))
    ok(why is not None and "images" in why, "control: a --true-rgb file is told apart (%s)" % why)
    print("1..%d" % n)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
