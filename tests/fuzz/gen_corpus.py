#!/usr/bin/env python3
"""tests/fuzz/gen_corpus.py - make the seed corpora of the fuzz harnesses
(tests/fuzz/corpus/<harness>/) from the test fixtures and data of the tree.

Run from the top of the source tree with h5py, numpy and Pillow available:
    python3 tests/fuzz/gen_corpus.py
Seeds are small (fuzzing speed) and valid (the fuzzer starts deep); the
formats of the inputs are described at the top of each tests/fuzz/fuzz_*.c.
"""
import gzip
import io
import os
import shutil

import h5py
import numpy as np
from PIL import Image

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(TOP, "tests", "fuzz", "corpus")
SEP = b"\n%%\n"


def fx(*p):
    return os.path.join(TOP, "tests", *p)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def png(mode, size, interlace=False, bits16=False):
    rng = np.random.default_rng(len(mode) * 7 + size[0])
    w, h = size
    if mode == "P":
        im = Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    elif bits16:
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16).astype(np.int32), "I")
    else:
        ch = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "1": 1}[mode]
        a = rng.integers(0, 255, (h, w, ch), dtype=np.uint8)
        im = Image.fromarray(a[:, :, 0] if ch == 1 else a, "L" if mode in ("L", "1") else mode)
        if mode == "1":
            im = im.convert("1")
    b = io.BytesIO()
    im.save(b, "PNG", interlace=interlace)
    return b.getvalue()


def with_trailer(image):
    """fuzz_story's mark of a file its mutator may parse: "MMPFZH5\\0" and the
    FNV-1a hash of the HDF5 image (HDF5 ignores bytes past its data)."""
    h = 1469598103934665603
    for b in image:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return image + b"MMPFZH5\0" + h.to_bytes(8, "little")


def main():
    shutil.rmtree(OUT, ignore_errors=True)

    # safetensors: small fixture files of several dtypes and shapes
    for name in ["sd/clip_gelu_io.safetensors", "sd/unet_v2_io.safetensors",
                 "schedulers/ddim_arldm_10_eps.in.safetensors"]:
        put("fuzz_safetensors", os.path.basename(name), read(fx("fixtures", name)))
    header = (b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},'
              b'"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},'
              b'"c":{"dtype":"I64","shape":[],"data_offsets":[12,20]}}')
    put("fuzz_safetensors", "metadata_f16_bf16.safetensors",
        len(header).to_bytes(8, "little") + header + bytes(range(20)))

    # configuration: task file, included file, overrides
    layered = read(fx("data", "config", "layered.cfg"))
    base = read(fx("data", "config", "base.cfg"))
    put("fuzz_config", "layered", layered.replace(b'"base.cfg"', b'"inc.cfg"') + SEP + base + SEP +
        b"task.count=3\ntask.items=[1, 2]\nshared.b=\"over\"\nnew.group.key=4.5\n")
    put("fuzz_config", "txt2img", read(os.path.join(TOP, "examples", "txt2img-tiny.cfg")) + SEP + SEP +
        b"scheduler.name=pndm\ntask.steps=x\nunet.model_dir=/nonexistent\n")
    put("fuzz_config", "keys", b'task = { name = "good"; count = 2; scale = 1; flag = true; '
        b'output = "o.txt"; items = ["a", "b"]; extra = { x = 1; }; old = 3; typo = 1; };\n'
        b'scheduler = { name = "ddim"; num_train_timesteps = 1000; };\n@include "inc.cfg"\n' + SEP +
        b'other = { list = (1, "a", { g = 1; }); big = 9223372036854775807L; hex = 0x10; };' + SEP +
        b"task.flag=false\n")

    # every model's config.json with the part byte of fuzz_model_config.c
    for i, p in enumerate(["pipe/unet", "pipe/vae", "pipe/text_encoder", "unet_v2", "clip_gelu"]):
        put("fuzz_model_config", p.replace("/", "_"), bytes([i]) + read(fx("fixtures", "sd", p, "config.json")))
    # part 5, blip: BLIP's med_config.json, the vision tower sized by the
    # weights; the same with mmpipe's vision_* keys (gen_blip.py's tiny_vit)
    med = read(fx("fixtures", "blip", "blip_base", "med_config.json"))
    put("fuzz_model_config", "blip_base", bytes([5]) + med)
    put("fuzz_model_config", "blip_base_vision", bytes([5]) + med.replace(
        b"{", b'{"vision_width": 48, "vision_depth": 2, "vision_heads": 4, "vision_patch_size": 8, '
        b'"vision_mlp_ratio": 2.0, "image_size": 32,', 1))

    # tokenizer texts (engine byte: 0, 1 CLIP; 2, 3, 4 BERT)
    texts = ["a photo of an astronaut riding a horse on mars",
             "Fred and Barney are talking in the room. | Wilma stands.",
             "caf\u00e9 \u00fcber na\u00efve \u6771\u4eac <|startoftext|>hello<|endoftext|>",
             "&amp;lt;b&amp;gt; HTML &quot;x&quot; \u00e2\u0080\u0099mojibake\u00e2\u0080\u009d",
             "don't you're I'll 123,456.78 #hash @user \U0001f600 \t\n  spaces"]
    for i, t in enumerate(texts):
        put("fuzz_tokenizer_text", "t%d" % i, bytes([i]) + t.encode())

    # tokenizer files
    tok = fx("fixtures", "sd", "pipe", "tokenizer")
    merges = read(os.path.join(tok, "merges.txt"))
    put("fuzz_tokenizer_files", "clip_dir", b"\0" + read(os.path.join(tok, "vocab.json")) + SEP + merges +
        SEP + read(os.path.join(tok, "special_tokens_map.json")) + SEP + b'{"<x>": 914, "fred": 915}' +
        SEP + b"a photo of fred")
    put("fuzz_tokenizer_files", "clip_dir_pad_object", b"\0" + read(os.path.join(tok, "vocab.json")) +
        SEP + merges + SEP + b'{"pad_token": {"content": "!", "lstrip": false}}' + SEP + b"{}" + SEP +
        b"the ring")
    put("fuzz_tokenizer_files", "clip_bpe", b"\1" + b"\"bpe_simple_vocab_16e6.txt\"\n" +
        merges.split(b"\n", 1)[1] + SEP + b"the thing")
    put("fuzz_tokenizer_files", "clip_bpe_gz", b"\1" + gzip.compress(merges, 9, mtime=0) + SEP + b"on")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "man", "##s", "##ing", "un",
             "##aff", "##able", "\u00fcber", "\u6771"] + [chr(c) for c in range(33, 127)]
    put("fuzz_tokenizer_files", "bert_vocab", b"\2" + "\n".join(vocab).encode() + b"\n" + SEP +
        "the men unaffable \u00dcber \u6771 fred".encode())

    # PNGs of each colour type, bit depth and interlacing, with the option bytes
    kinds = [("RGB", (5, 4), False, False), ("RGBA", (3, 7), False, False), ("L", (6, 6), False, False),
             ("LA", (4, 3), False, False), ("P", (8, 2), False, False), ("1", (9, 3), False, False),
             ("RGB", (7, 5), True, False), ("I", (4, 4), False, True)]
    for i, (m, s, il, b16) in enumerate(kinds):
        put("fuzz_png", "%s_%dx%d%s%s.png" % (m, s[0], s[1], "_interlaced" if il else "", "_16bit" if b16 else ""),
            bytes([i | (0x80 if i % 2 else 0), 3 + i, 5 + 2 * i, 2 + i]) + png(m, s, il, b16))

    jpeg_seeds()

    # story HDF5 files: the fixtures' layout with tiny frames and real captions
    src = h5py.File(fx("fixtures", "datasets", "flintstones.h5"), "r")
    caps = [bytes(c) if not isinstance(c, str) else c.encode() for c in src["val"]["text"][()]]
    vist = h5py.File(fx("fixtures", "datasets", "vist.h5"), "r")
    sis = [c if isinstance(c, bytes) else c.encode() for c in vist["val"]["sis"][()][:2]]
    for name, splits, textnames, captions in [("flintstones_like", ["val", "test"], ["text"], caps),
                                              ("vist_like", ["train"], ["sis", "dii"], sis)]:
        b = io.BytesIO()
        with h5py.File(b, "w") as f:
            for sp in splits:
                g = f.create_group(sp)
                n = len(captions)
                for k in range(5):
                    d = g.create_dataset("image%d" % k, (n,), dtype=h5py.vlen_dtype(np.uint8))
                    for r in range(n):
                        d[r] = np.frombuffer(png("RGB", (4 + k, 8 + r)), dtype=np.uint8)
                for t in textnames:
                    d = g.create_dataset(t, (n,), dtype=h5py.string_dtype("utf-8"))
                    for r in range(n):
                        d[r] = captions[r].decode("utf-8")
        put("fuzz_story", name + ".h5", with_trailer(b.getvalue()))

    # clipscore captions files: the fixtures' story task stories_file and flat
    # list, a list of lists, and errors the walk must report
    put("fuzz_clipscore_captions", "stories.json", read(fx("fixtures", "clipscore", "out", "stories.json")))
    put("fuzz_clipscore_captions", "flat.json", read(fx("fixtures", "clipscore", "flat", "captions.json")))
    put("fuzz_clipscore_captions", "lists.json", b'[["a dog", "the red bird"], [], ["a \\u00e9t\\u00e9 \\ud83d\\ude00"]]')
    put("fuzz_clipscore_captions", "mixed.json", b'[{"captions": ["a"]}, ["b", "c"], {"id": "s2"}]')
    put("fuzz_clipscore_captions", "flat_then_list.json", b'["a dog", ["b"]]')


def jpeg_seeds():
    """JPEGs of the kinds PIL writes (baseline with each subsampling,
    progressive, optimised tables, grey), with the two option bytes."""
    r = np.random.RandomState(7)
    kinds = [("baseline420", "RGB", (9, 7), dict(quality=90)), ("baseline422", "RGB", (16, 5), dict(subsampling=1)),
             ("baseline444", "RGB", (5, 11), dict(subsampling=0, quality=95)),
             ("progressive", "RGB", (12, 10), dict(progressive=True, quality=70)),
             ("optimized", "RGB", (8, 8), dict(optimize=True, quality=30)), ("grey", "L", (7, 6), dict(quality=80)),
             ("grey_progressive", "L", (17, 3), dict(progressive=True))]
    for i, (name, mode, size, opts) in enumerate(kinds):
        im = Image.fromarray(r.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8), "RGB").convert(mode)
        b = io.BytesIO()
        im.save(b, "JPEG", **opts)
        put("fuzz_jpeg", name + ".jpg", bytes([i | (0x80 if i % 2 else 0), 2 * i + 1]) + b.getvalue())


if __name__ == "__main__":
    main()
