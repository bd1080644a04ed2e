#!/usr/bin/python3
"""tests/gen_fid_jpeg.py - JPEG fixtures: files written by PIL, PIL's decoding of them, pytorch-fid on a JPEG folder.

    PYTHONPATH=/root/refenv/site:/root/refsrc/pytorch-fid/src /usr/bin/python3 tests/gen_fid_jpeg.py

Run after tests/gen_fid.py (it reads the narrow Inception weights that script
writes). Debian's python3-pil decodes with the system's libjpeg62-turbo, the
library mmpipe links.

Writes into tests/fixtures/fid/:
  jpeg/<name>.jpg   small JPEGs of assorted kinds (baseline 4:2:0, 4:2:2,
                    4:4:4, progressive, optimised Huffman tables, grey,
                    odd sizes, quality 20 to 95)
  jpeg.safetensors  "decoded/<name>": uint8 [H, W, 3], PIL's
                    Image.open(f).convert('RGB') of each file (pytorch-fid's
                    ImagePathDataset reads files this way)
  images_jpeg/      four 40x36 JPEGs for a whole run
  expected_jpeg.txt pytorch-fid's calculate_fid_given_paths (its body) of images_jpeg
                    against the PNG folder images2 (tests/gen_fid.py), with the
                    narrow Inception (the format of expected.txt)
"""
import io
import os

import numpy as np
import torch
import torchvision.models.inception as tvi
from PIL import Image
from safetensors.torch import load_file, save_file

import pytorch_fid.inception as pfi
from pytorch_fid import fid_score

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "fid")
R = 16


def image(h, w, seed):
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    noise = r.randint(-40, 41, size=(h, w, 3))
    blob = ((xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 4) ** 2)[..., None] * r.randint(0, 256, size=3)
    return np.clip(base + noise + blob, 0, 255).astype(np.uint8)


jdir = os.path.join(OUT, "jpeg")
os.makedirs(jdir, exist_ok=True)
for f in os.listdir(jdir):
    os.remove(os.path.join(jdir, f))
kinds = [
    ("baseline420_q90", 37, 45, "RGB", dict(quality=90)),
    ("baseline422_q75", 32, 48, "RGB", dict(quality=75, subsampling=1)),
    ("baseline444_q95", 29, 31, "RGB", dict(quality=95, subsampling=0)),
    ("progressive_q80", 40, 52, "RGB", dict(quality=80, progressive=True)),
    ("progressive444_q60", 17, 70, "RGB", dict(quality=60, progressive=True, subsampling=0)),
    ("optimized_q20", 50, 33, "RGB", dict(quality=20, optimize=True)),
    ("grey_q85", 35, 41, "L", dict(quality=85)),
    ("grey_progressive", 24, 24, "L", dict(quality=70, progressive=True)),
    ("tiny_1x1", 1, 1, "RGB", dict(quality=90)),
]
tensors = {}
for i, (name, h, w, mode, opts) in enumerate(kinds):
    im = Image.fromarray(image(h, w, 100 + i), "RGB")
    if mode == "L":
        im = im.convert("L")
    p = os.path.join(jdir, name + ".jpg")
    im.save(p, "JPEG", **opts)
    dec = np.asarray(Image.open(p).convert("RGB"))
    assert dec.shape == (h, w, 3)
    tensors["decoded/" + name] = torch.from_numpy(np.ascontiguousarray(dec))
    print(name, os.path.getsize(p), "bytes")
# PIL refuses a file cut inside its scan data
raw = open(os.path.join(jdir, "progressive_q80.jpg"), "rb").read()
try:
    Image.open(io.BytesIO(raw[: len(raw) // 2])).convert("RGB")
    raise SystemExit("PIL decoded a truncated JPEG")
except OSError as e:
    print("truncated:", e)
save_file(tensors, os.path.join(OUT, "jpeg.safetensors"),
          metadata={"note": "tests/gen_fid_jpeg.py: PIL %s Image.open(f).convert('RGB')" % Image.__version__})

# ---- a whole run: the narrow FID Inception of tests/gen_fid.py, its weights
_Basic = tvi.BasicConv2d


class NarrowBasicConv2d(_Basic):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(in_channels if in_channels == 3 else in_channels // R, out_channels // R, **kw)


tvi.BasicConv2d = NarrowBasicConv2d
_orig_load = tvi.Inception3.load_state_dict
tvi.Inception3.load_state_dict = lambda self, sd, strict=True: None if sd is None else _orig_load(self, sd, strict)
pfi.load_state_dict_from_url = lambda *a, **k: None
model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
w = load_file(os.path.join(OUT, "inception_w16.safetensors"))
names = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None], ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
         ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
         ["Mixed_7a", "Mixed_7b", "Mixed_7c", None]]
sd = model.state_dict()
for k in sd:
    if k.endswith("num_batches_tracked"):
        continue
    p = k.split(".")
    sd[k] = w[".".join([names[int(p[1])][int(p[2])]] + p[3:])]
model.load_state_dict(sd)

idir = os.path.join(OUT, "images_jpeg")
os.makedirs(idir, exist_ok=True)
for f in os.listdir(idir):
    os.remove(os.path.join(idir, f))
for i in range(4):
    Image.fromarray(image(40, 36, 40 + i), "RGB").save(os.path.join(idir, "%03d.jpg" % i), "JPEG",
                                                       quality=85, progressive=bool(i % 2))
with torch.no_grad():
    # calculate_fid_given_paths' body (it builds its own full-width model)
    m1, s1 = fid_score.compute_statistics_of_path(idir, model, 50, 2048 // R, "cpu", 0)
    m2, s2 = fid_score.compute_statistics_of_path(os.path.join(OUT, "images2"), model, 50, 2048 // R, "cpu", 0)
    fid = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
with open(os.path.join(OUT, "expected_jpeg.txt"), "w") as f:
    f.write("# protocol[:dims] REAL GEN FID (written by tests/gen_fid_jpeg.py)\n")
    f.write("standard images_jpeg images2 %.17g\n" % fid)
print("FID", fid)
