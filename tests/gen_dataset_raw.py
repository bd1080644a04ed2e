#!/usr/bin/python3
"""tests/gen_dataset_raw.py - tiny raw releases of FlintstonesSV, VIST and PororoSV, and the HDF5 files AR-LDM makes of them.

Writes, under tests/fixtures/dataset_raw/:
  flintstones/   train-val-test_split.json, following_cache4.pkl (pickle
                 protocol 4), flintstones_annotations_v1-0.json,
                 video_frames_sampled/<globalID>.npy (uint8 [5, 16, 12, 3])
  flintstones.arldm.h5   what data_script/flintstones_hdf5.py makes of it
  flintstones_bad/  the same with faults AR-LDM's script cannot survive (a
                 missing .npy, a missing description, a .npy of the wrong
                 shape): mmpipe drops those stories and says why
  vist/          sis/<split>.story-in-sequence.json,
                 dii/<split>.description-in-isolation.json, images/<id>.jpg
                 (baseline, progressive, 4:2:0 with odd sizes, greyscale)
  vist.arldm.h5  what data_script/vist_hdf5.py makes of it
  pororo/        descriptions.npy (a dict {frame id: [captions]} in a 0-d
                 object array, pickled as Python 2 wrote it: py2 str,
                 read with encoding='latin1'), img_cache4.npy ('|S' [N]),
                 following_cache4.npy ('|S' [N, 4]),
                 train_seen_unseen_ids.npy (np.save of an object array of
                 three int64 arrays), <episode>/<n>.png strips of 128-row
                 frames (RGB, RGBA, palette, grey)
  pororo.arldm.h5  what data_script/pororo_hdf5.py makes of it
  pororo_bad/    the same with faults AR-LDM's script cannot survive (a
                 missing .png, a missing and an empty description, an id
                 past the end): mmpipe drops those stories and says why
  pororo.numpy.json  what NumPy's np.load reads from pororo/'s pickled
                 index files (tests/test_plugin_npy_pickle.c compares)
  unsafe/        index files naming paths outside the raw directory (an
                 absolute path, a '..' component), one tree per builder:
                 refused; pororo_evil/, a descriptions.npy whose pickle
                 calls os.system: refused, never run

AR-LDM's scripts (xichenpan/ARLDM at 9d8feeb, default /root/refsrc/ARLDM)
run unchanged, in a subprocess, with their paths given by their own
command-line arguments; nothing of them is copied. They need h5py,
opencv, Pillow, numpy and tqdm (Debian's python3-* packages).

Run (from the source tree root):
  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_dataset_raw.py
"""
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "dataset_raw")
ARLDM = os.environ.get("ARLDM", "/root/refsrc/ARLDM")
rng = np.random.default_rng(20261202)


def clean(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def run_arldm(script, args):
    cmd = [sys.executable, os.path.join(ARLDM, "data_script", script)] + args
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def frames(seed_shift):
    """Five 16x12 frames: smooth ramps with noise (small, but every pixel differs)."""
    y, x = np.mgrid[0:16, 0:12]
    f = np.zeros((5, 16, 12, 3), np.int32)
    for k in range(5):
        f[k, :, :, 0] = (x * 20 + k * 7 + seed_shift) % 256
        f[k, :, :, 1] = (y * 15 + k * 11) % 256
        f[k, :, :, 2] = (x * y + seed_shift * 3) % 256
    f += rng.integers(0, 24, f.shape)
    return np.clip(f, 0, 255).astype(np.uint8)


def flintstones(root, bad=False):
    clean(root)
    os.makedirs(os.path.join(root, "video_frames_sampled"))
    clips = ["s_01_e_%02d_shot_%06d_%06d" % (e, 10 * e, 10 * e + 80) for e in range(1, 13)]
    caps = {
        clips[0]: "Fred is talking to Barney in the living room.",
        clips[1]: "  Wilma\tstands in the kitchen \n holding a pan.  ",
        clips[2]: "Betty and Barney walk\u3000outside.\u00a0",
        clips[3]: "Dino runs through the yard \u2014 caf\u00e9 sign behind.",
        clips[4]: "\tPebbles laughs.\n",
        clips[5]: "Mr. Slate yells at Fred in the quarry.",
        clips[6]: "Fred drives the car, no, he walks.",
        clips[7]: "Barney sits on the couch.",
        clips[8]: "Wilma and Betty talk on the phone.",
        clips[9]: "Fred is in the bowling alley.",
        clips[10]: "Barney and Fred are at the lodge.",
        clips[11]: "Dino licks Fred.",
    }
    # later duplicates replace earlier ones (dict assignment in the script)
    ann = [{"globalID": c, "description": "old text", "keyFrames": []} for c in clips[:2]]
    ann += [{"globalID": c, "description": d, "keyFrames": []} for c, d in caps.items()]
    follow = {
        clips[0]: clips[1:5],
        clips[1]: clips[2:6],
        clips[2]: [clips[3], clips[4], clips[5]],          # 3 following: dropped
        clips[3]: clips[4:8],
        clips[4]: clips[5:9],
        clips[5]: [clips[6], clips[7], clips[8], clips[9]],
        clips[6]: clips[7:11],
        clips[7]: clips[8:12],
        clips[8]: [clips[9], clips[10], clips[11], clips[0]],
    }
    split = {"train": [clips[0], clips[1], clips[2], clips[3], "s_99_e_99_not_followed"],
             "val": [clips[4], clips[5]], "test": [clips[6], clips[7], clips[8]]}
    for i, c in enumerate(clips):
        np.save(os.path.join(root, "video_frames_sampled", c + ".npy"), frames(i * 13))
    if bad:
        # clip 6's frames missing, clip 10's description missing, clip 0's
        # frames of the wrong shape (found while encoding), a '|' inside
        # clip 2's caption (the story then reads as six captions)
        os.remove(os.path.join(root, "video_frames_sampled", clips[6] + ".npy"))
        ann = [a for a in ann if a["globalID"] != clips[10]]
        np.save(os.path.join(root, "video_frames_sampled", clips[0] + ".npy"), np.zeros((5, 16, 12), np.uint8))
        for a in ann:
            if a["globalID"] == clips[2]:
                a["description"] = "Betty and Barney walk | outside."
    with open(os.path.join(root, "train-val-test_split.json"), "w") as f:
        json.dump(split, f)
    with open(os.path.join(root, "following_cache4.pkl"), "wb") as f:
        pickle.dump(follow, f, protocol=4)
    with open(os.path.join(root, "flintstones_annotations_v1-0.json"), "w") as f:
        json.dump(ann, f)


def jpeg(path, w, h, seed, **kw):
    y, x = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), np.int32)
    a[..., 0] = (x * 9 + seed * 31) % 256
    a[..., 1] = (y * 7 + x * 3 + seed) % 256
    a[..., 2] = (x * y + seed * 5) % 256
    a += np.random.default_rng(seed).integers(0, 40, a.shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if kw.pop("grey", False):
        im = im.convert("L")
    im.save(path, "JPEG", **kw)


def vist(root):
    clean(root)
    for d in ("sis", "dii", "images"):
        os.makedirs(os.path.join(root, d))
    photos = [str(1000 + i) for i in range(26)]
    kinds = [dict(quality=90), dict(quality=75, progressive=True), dict(quality=85, subsampling=2),
             dict(quality=95, subsampling=0), dict(quality=80, grey=True)]
    sizes = [(21, 14), (17, 23), (31, 19), (15, 15), (40, 27)]
    for i, p in enumerate(photos):
        if p == "1013":
            continue  # a missing image
        w, h = sizes[i % len(sizes)]
        jpeg(os.path.join(root, "images", p + ".jpg"), w, h, i, **kinds[i % len(kinds)])

    def ann(sid, pid, text, order):
        return [{"story_id": sid, "photo_flickr_id": pid, "original_text": text, "worker_arranged_photo_order": order,
                 "album_id": "a" + sid, "storylet_id": sid + pid, "text": text.lower(), "tier": "story-in-sequence"}]

    # train: story 10 and 11 interleaved (order of first appearance: 11, 10);
    # story 12 has 4 photos; story 13 has photo 1013 (missing image)
    train = []
    s10 = photos[0:5]
    s11 = photos[5:10]
    for k in range(5):
        train.append(ann("11", s11[k], " Sis %d of eleven.\n" % k, k))
        train.append(ann("10", s10[k], "The\tday %d began\u00a0." % k, k))
    train += [ann("12", p, "only four %s" % p, k) for k, p in enumerate(photos[10:14][:4])]
    train += [ann("13", p, "story thirteen %s" % p, k) for k, p in enumerate(photos[11:16])]
    # val: story 20 ok; story 21 with a photo without DII (1020)
    val = [ann("20", p, "val story %d" % k, k) for k, p in enumerate(photos[15:20])]
    val += [ann("21", p, "no dii %d" % k, k) for k, p in enumerate(photos[20:25])]
    # test: story 30 with repeated photos (same DII caption twice: de-dup)
    t = [photos[16], photos[17], photos[16], photos[18], photos[25]]
    test = [ann("30", p, "test caption %d \u2003" % k, k) for k, p in enumerate(t)]
    for name, data in (("train", train), ("val", val), ("test", test)):
        with open(os.path.join(root, "sis", name + ".story-in-sequence.json"), "w") as f:
            json.dump({"annotations": data, "images": [], "albums": [], "info": {}, "type": "sis"}, f)

    def dann(pid, text):
        return [{"photo_flickr_id": pid, "original_text": text, "text": text.lower(), "album_id": "x",
                 "photo_order_in_story": 0, "tier": "descriptions-in-isolation"}]
    dii = {"train": [], "val": [], "test": []}
    for i, p in enumerate(photos):
        if p == "1020":
            continue
        sp = ("train", "val", "test")[i % 3]
        dii[sp].append(dann(p, "A photo number %s." % p))
        if i % 4 == 0:  # a longer caption later: it wins
            dii[("val", "test", "train")[i % 3]].append(dann(p, "A longer description of photo %s\t." % p))
        if i % 5 == 0:  # as long, later: the first stays
            dii[sp].append(dann(p, "B photo number %s." % p))
    # two photos of story 10 with one caption: the dii de-dup
    dii["train"].append(dann(photos[1], "A shared caption that is the longest of all."))
    dii["train"].append(dann(photos[2], "A shared caption that is the longest of all."))
    for name, data in dii.items():
        with open(os.path.join(root, "dii", name + ".description-in-isolation.json"), "w") as f:
            json.dump({"annotations": data, "images": [], "albums": [], "info": {}, "type": "dii"}, f)


class Py2Str(bytes):
    """A Python 2 str: pickled as SHORT_BINSTRING/BINSTRING (bytes as stored)."""


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: every str and bytes a py2 str."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2(self, obj):
        b = bytes(obj) if isinstance(obj, bytes) else obj.encode("latin1")
        if len(b) < 256:
            self.write(b"U" + bytes([len(b)]) + b)
        else:
            self.write(b"T" + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[Py2Str] = save_py2
    dispatch[bytes] = save_py2
    dispatch[str] = save_py2


def save_py2_object(path, obj):
    """np.save of a 0-d object array holding @obj, as NumPy under Python 2 wrote it."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(arr)
    f = open(path, "wb") if isinstance(path, str) else path
    np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
    f.write(buf.getvalue())
    if isinstance(path, str):
        f.close()


def strip_png(path, k, seed, mode):
    """k frames of 128 rows (12 columns), stacked vertically, saved in PIL mode @mode."""
    y, x = np.mgrid[0:128 * k, 0:12]
    a = np.zeros((128 * k, 12, 3), np.int32)
    a[..., 0] = (x * 9 + y + seed * 31) % 256
    a[..., 1] = (y * 2 + seed * 7) % 256
    a[..., 2] = (x * 5 + (y // 128) * 60 + seed * 5) % 256
    a[::7, ::5] += np.random.default_rng(seed).integers(0, 60, a[::7, ::5].shape)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if mode == "RGBA":
        im.putalpha(Image.fromarray(((x * 10 + y) % 256).astype(np.uint8)))
    elif mode == "P":
        im = im.quantize(64)
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, "PNG")


def pororo(root, bad=False):
    clean(root)
    eps = ["Pororo_ENGLISH1_1_ep1", "Pororo_ENGLISH2_3_ep12"]
    for e in eps:
        os.makedirs(os.path.join(root, e))
    names = ["%s/%d.png" % (eps[i // 8], i % 8) for i in range(16)]
    modes = ["RGB", "RGB", "RGBA", "P", "L", "RGB", "LA", "RGB"]
    for i, n in enumerate(names):
        strip_png(os.path.join(root, n), 1 + i % 2, i, modes[i % len(modes)])
    caps = ["Pororo is in the snow with Crong.", "  Loopy\tbakes cookies \n in the kitchen.  ",
            "Eddy shows his new machine \u2014 it flies.", "Poby\u00a0and Harry sing.\u3000",
            "caf\u00e9 time for Petty.", "Crong laughs.", "Rody is a robot.", "Tongtong casts a spell."]
    desc = {}
    for i, n in enumerate(names):
        key = n.replace(".png", "")
        # Python 2 str: UTF-8 bytes, which encoding='latin1' reads one code point per byte
        desc[Py2Str(key.encode())] = [Py2Str(caps[i % len(caps)].encode("utf-8") + (b" %d" % i)),
                                     Py2Str(b"another caption")]
    follow = [[names[(i // 8) * 8 + (i % 8 + j) % 8] for j in range(1, 5)] for i in range(16)]
    ids = np.empty(3, dtype=object)
    ids[0] = np.array([5, 0, 12, 3, 9], np.int64)  # np.sort orders them
    ids[1] = np.array([7, 2], np.int64)
    ids[2] = np.array([14, -1], np.int64)          # -1: NumPy indexing, the last entry
    if bad:
        os.remove(os.path.join(root, names[4]))    # stories 0, 2, 3 (frames 1..4 after them)
        del desc[Py2Str(names[10].replace(".png", "").encode())]  # stories 9, 7?
        desc[Py2Str(names[13].replace(".png", "").encode())] = []
        ids[1] = np.array([7, 2, 40], np.int64)
    save_py2_object(os.path.join(root, "descriptions.npy"), desc)
    np.save(os.path.join(root, "img_cache4.npy"), np.array([n.encode() for n in names]))
    np.save(os.path.join(root, "following_cache4.npy"), np.array([[n.encode() for n in f] for f in follow]))
    np.save(os.path.join(root, "train_seen_unseen_ids.npy"), ids, allow_pickle=True)


def pororo_expected(root, path):
    """What NumPy itself reads from the tree's pickled index files (AR-LDM's np.load calls):
    the C test of plugins/datasets/npy.c compares with it."""
    desc = np.load(os.path.join(root, "descriptions.npy"), allow_pickle=True, encoding="latin1").item()
    ids = np.load(os.path.join(root, "train_seen_unseen_ids.npy"), allow_pickle=True)
    out = {"descriptions": {k: v for k, v in sorted(desc.items())},
           "ids": [[int(x) for x in a] for a in ids],
           "ids_dtype": [a.dtype.str for a in ids]}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


class Evil:
    """An object whose unpickling would run a command: a pickle that must be refused."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def unsafe(root):
    """Index files that name paths outside the raw directory: each builder refuses them."""
    clean(root)
    fl = os.path.join(root, "flintstones")
    os.makedirs(fl)
    with open(os.path.join(fl, "train-val-test_split.json"), "w") as f:
        json.dump({"train": ["s_01"], "val": [], "test": []}, f)
    with open(os.path.join(fl, "following_cache4.pkl"), "wb") as f:
        pickle.dump({"s_01": ["s_02", "s_03/../../../etc", "s_04", "s_05"]}, f, protocol=4)
    with open(os.path.join(fl, "flintstones_annotations_v1-0.json"), "w") as f:
        json.dump([], f)
    vi = os.path.join(root, "vist", "sis")
    os.makedirs(vi)
    ann = [[{"story_id": "1", "photo_flickr_id": "/etc/passwd", "original_text": "x"}]]
    with open(os.path.join(vi, "train.story-in-sequence.json"), "w") as f:
        json.dump({"annotations": ann}, f)
    po = os.path.join(root, "pororo")
    os.makedirs(po)
    save_py2_object(os.path.join(po, "descriptions.npy"), {Py2Str(b"a/0"): [Py2Str(b"x")]})
    np.save(os.path.join(po, "img_cache4.npy"), np.array([b"a/0.png", b"a/../../secret.png"]))
    np.save(os.path.join(po, "following_cache4.npy"), np.array([[b"a/0.png"] * 4] * 2))
    ids = np.empty(3, dtype=object)
    ids[0], ids[1], ids[2] = np.array([0, 1]), np.array([], np.int64), np.array([], np.int64)
    np.save(os.path.join(po, "train_seen_unseen_ids.npy"), ids, allow_pickle=True)
    # descriptions.npy whose pickle calls os.system (the loader must refuse it, naming the global)
    ev = os.path.join(root, "pororo_evil")
    os.makedirs(ev)
    for n in ("img_cache4.npy", "following_cache4.npy", "train_seen_unseen_ids.npy"):
        shutil.copy(os.path.join(po, n), ev)
    d = np.empty((), dtype=object)
    d[()] = {"a/0": [Evil()]}
    np.save(os.path.join(ev, "descriptions.npy"), d, allow_pickle=True)


def fuzz_seeds():
    """Seeds of tests/fuzz/fuzz_{npy,dataset_raw} from the trees above."""
    corpus = os.path.join(HERE, "fuzz", "corpus")
    # fuzz_jpeg's seeds are tests/gen_fid_jpeg.py's (tests/fuzz/gen_corpus.py)
    for name in ("fuzz_npy", "fuzz_dataset_raw"):
        clean(os.path.join(corpus, name))
        os.makedirs(os.path.join(corpus, name))
    frames_dir = os.path.join(OUT, "flintstones", "video_frames_sampled")
    shutil.copy(os.path.join(frames_dir, sorted(os.listdir(frames_dir))[0]), os.path.join(corpus, "fuzz_npy", "frames.npy"))
    # object arrays as PororoSV's index files are (np.save pickles them)
    np.save(os.path.join(corpus, "fuzz_npy", "object_dict.npy"), np.array({"a_1": ["x"], "b_2": ["y z"]}), allow_pickle=True)
    ids = np.empty(2, dtype=object)
    ids[0], ids[1] = np.arange(3), np.arange(2)
    np.save(os.path.join(corpus, "fuzz_npy", "object_ids.npy"), ids, allow_pickle=True)
    np.save(os.path.join(corpus, "fuzz_npy", "bytes.npy"), np.array([b"a/b.png", b"c/d.png"]))
    # PororoSV's index files as the builder reads them (the pickled ndarrays)
    po = os.path.join(OUT, "pororo")
    for n in ("descriptions.npy", "train_seen_unseen_ids.npy"):
        shutil.copy(os.path.join(po, n), os.path.join(corpus, "fuzz_npy", "pororo_" + n))
    sep = b"\n%%\n"
    fl = os.path.join(OUT, "flintstones")
    parts = [open(os.path.join(fl, n), "rb").read() for n in
             ("train-val-test_split.json", "following_cache4.pkl", "flintstones_annotations_v1-0.json")]
    with open(os.path.join(corpus, "fuzz_dataset_raw", "flintstones"), "wb") as f:
        f.write(b"\0" + sep.join(parts))
    vi = os.path.join(OUT, "vist")
    parts = [open(os.path.join(vi, "sis", s + ".story-in-sequence.json"), "rb").read() for s in ("train", "val", "test")]
    parts += [open(os.path.join(vi, "dii", s + ".description-in-isolation.json"), "rb").read() for s in ("train", "val", "test")]
    parts.append(open(os.path.join(vi, "images", "1000.jpg"), "rb").read())
    with open(os.path.join(corpus, "fuzz_dataset_raw", "vist"), "wb") as f:
        f.write(b"\1" + sep.join(parts))
    # pororo: the frames are all one file (0.png) in the harness's flat directory
    names = [b"0.png", b"0.png", b"0.png"]

    def npy(arr, **kw):
        b = io.BytesIO()
        np.save(b, arr, **kw)
        return b.getvalue()
    desc = io.BytesIO()
    save_py2_object(desc, {Py2Str(b"0"): [Py2Str(b"Pororo\tand Crong.")]})
    ids = np.empty(3, dtype=object)
    ids[0], ids[1], ids[2] = np.array([1, 0], np.int64), np.array([2], np.int64), np.array([-1], np.int64)
    parts = [desc.getvalue(), npy(np.array(names)), npy(np.array([[n] * 4 for n in names])),
             npy(ids, allow_pickle=True), open(os.path.join(po, "Pororo_ENGLISH1_1_ep1", "0.png"), "rb").read()]
    with open(os.path.join(corpus, "fuzz_dataset_raw", "pororo"), "wb") as f:
        f.write(b"\2" + sep.join(parts))


def main():
    os.makedirs(OUT, exist_ok=True)
    fl = os.path.join(OUT, "flintstones")
    flintstones(fl)
    flintstones(os.path.join(OUT, "flintstones_bad"), bad=True)
    h5 = os.path.join(OUT, "flintstones.arldm.h5")
    clean(h5)
    run_arldm("flintstones_hdf5.py", ["--data_dir", fl, "--save_path", h5])
    vi = os.path.join(OUT, "vist")
    vist(vi)
    h5 = os.path.join(OUT, "vist.arldm.h5")
    clean(h5)
    run_arldm("vist_hdf5.py", ["--sis_json_dir", os.path.join(vi, "sis"), "--dii_json_dir", os.path.join(vi, "dii"),
                               "--img_dir", os.path.join(vi, "images"), "--save_path", h5])
    po = os.path.join(OUT, "pororo")
    pororo(po)
    pororo(os.path.join(OUT, "pororo_bad"), bad=True)
    h5 = os.path.join(OUT, "pororo.arldm.h5")
    clean(h5)
    run_arldm("pororo_hdf5.py", ["--data_dir", po, "--save_path", h5])
    pororo_expected(po, os.path.join(OUT, "pororo.numpy.json"))
    unsafe(os.path.join(OUT, "unsafe"))
    fuzz_seeds()
    total = 0
    for dp, _, fs in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print("wrote %s (%d bytes)" % (OUT, total))


if __name__ == "__main__":
    main()
