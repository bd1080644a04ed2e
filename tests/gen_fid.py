#!/usr/bin/python3
"""tests/gen_fid.py - fixtures of the FID evaluation from pytorch-fid v0.3.0 and scipy.

Run from the source tree with Debian's python (python3-torchvision 0.14 and
python3-scipy installed) and pytorch-fid's source on the path:

    PYTHONPATH=/root/refenv/site:/root/refsrc/pytorch-fid/src:/root/refsrc/ARLDM /usr/bin/python3 tests/gen_fid.py

(AR-LDM's fid_utils.py is imported from its source folder.)

Writes tests/fixtures/fid/:
  inception_w16.safetensors  random weights of pytorch-fid's FID Inception-v3 in
      its key names, every channel count divided by 16 (the network keeps its
      topology: kernels, strides, pools, FID blocks; 2048 -> 128 features).
      Built by pytorch-fid's own fid_inception_v3() with torchvision's
      BasicConv2d narrowed (monkeypatched) and its weight download replaced by
      seeded random weights. f32.
  fid.safetensors  metadata "case/<name>" describes each case; tensors:
    arldm/frame<i>  uint8 [H, W, 3] real frames (assorted sizes)
    arldm/features  [N, 128] AR-LDM's inception_feature on the frames:
        PIL Resize([64, 64]) -> ToTensor -> Normalize(0.5) -> (x+1)/2 ->
        F.interpolate(299, bilinear) -> InceptionV3([3]) (main.py lines 91-97,
        381-389 written out here: AR-LDM's module needs pytorch_lightning)
    standard/features  [N, 128] pytorch-fid's get_activations on the PNG files
        tests/fixtures/fid/images/*.png (ToTensor at full resolution)
    standard/block<k>  block k's output for the first image (block-by-block
        debugging: after maxpool1, maxpool2, Mixed_6e, the final pool)
    standard/mu  compute_statistics_of_path's mean (f64)
    standard_vs_arldm/fid  calculate_frechet_distance between the two sets
    fd/<case>/f1, fd/<case>/f2  f32 feature sets; fd/<case>/fid the scipy
        calculate_frechet_distance of their statistics (f64 [1]);
        fd/<case>/sqrtm_re, sqrtm_im: scipy's sqrtm(s1 s2) (small cases)
    eps/mu1, sigma1, mu2, sigma2, fid  statistics whose product has no root
        (the eps retry) and pytorch-fid's distance
"""
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.models.inception as tvi
import torchvision.transforms as TF
from PIL import Image
from safetensors.torch import save_file
from scipy import linalg

import pytorch_fid.inception as pfi
from pytorch_fid import fid_score

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "fid")
R = 16  # channel divisor

torch.manual_seed(1515)
rng = np.random.RandomState(1515)

# ---- a narrow FID Inception from pytorch-fid's own builder
_Basic = tvi.BasicConv2d


class NarrowBasicConv2d(_Basic):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(in_channels if in_channels == 3 else in_channels // R, out_channels // R, **kw)


tvi.BasicConv2d = NarrowBasicConv2d


def random_state(model):
    g = torch.Generator().manual_seed(20151205)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.6 + 0.8 * torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean.data = 0.2 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)
            assert m.eps == 0.001


_orig_load = tvi.Inception3.load_state_dict


def fake_load(self, sd, strict=True):
    if sd is None:  # the patched download: seeded random weights instead
        random_state(self)
        return None
    return _orig_load(self, sd, strict)


tvi.Inception3.load_state_dict = fake_load
pfi.load_state_dict_from_url = lambda *a, **k: None

model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
DIM = 2048 // R
state = {}
for k, v in model.state_dict().items():
    if k.endswith("num_batches_tracked"):
        continue
    state[k] = v.contiguous()
# pytorch-fid's blocks are a ModuleList; its checkpoint uses the Inception3 names
# map blocks.* to the Inception3 attribute names of the original checkpoint
block_children = [
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c", None],
]
weights = {}
for k, v in state.items():
    parts = k.split(".")
    assert parts[0] == "blocks"
    top = block_children[int(parts[1])][int(parts[2])]
    weights[".".join([top] + parts[3:])] = v
os.makedirs(OUT, exist_ok=True)
save_file(weights, os.path.join(OUT, "inception_w16.safetensors"),
          metadata={"note": "pytorch-fid FID Inception-v3, channels / 16, random weights (tests/gen_fid.py)"})

tensors, meta = {}, {}


def put(name, t):
    tensors[name] = t.contiguous() if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))


# ---- assorted images
def image(h, w, seed):
    r = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
    noise = r.randint(-40, 41, size=(h, w, 3))
    blob = ((xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 4) ** 2)[..., None] * r.randint(0, 256, size=3)
    return np.clip(base + noise + blob, 0, 255).astype(np.uint8)


frames = [image(64, 64, 1), image(80, 96, 2), image(128, 100, 3), image(50, 45, 4), image(64, 64, 5)]
fid_augment = TF.Compose([TF.Resize([64, 64]), TF.ToTensor(), TF.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def inception_feature(pil_images):
    images = torch.stack([fid_augment(im) for im in pil_images])
    images = images.type(torch.FloatTensor)
    images = (images + 1) / 2
    images = F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False)
    pred = model(images)[0]
    if pred.shape[2] != 1 or pred.shape[3] != 1:
        pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
    return pred.reshape(-1, DIM)


with torch.no_grad():
    for i, fr in enumerate(frames):
        put("arldm/frame%d" % i, torch.from_numpy(fr))
    feats = inception_feature([Image.fromarray(f, "RGB") for f in frames])
    put("arldm/features", feats)
meta["case/arldm"] = "frames %d: AR-LDM inception_feature" % len(frames)

# ---- the standard protocol on PNG files of one size (pytorch-fid batches them)
imgdir = os.path.join(OUT, "images")
os.makedirs(imgdir, exist_ok=True)
for f in os.listdir(imgdir):
    os.remove(os.path.join(imgdir, f))
std_imgs = [image(40, 36, 10 + i) for i in range(4)]
files = []
for i, im in enumerate(std_imgs):
    p = os.path.join(imgdir, "%03d.png" % i)
    Image.fromarray(im, "RGB").save(p)
    files.append(p)
with torch.no_grad():
    act = fid_score.get_activations(files, model, batch_size=50, dims=DIM, device="cpu", num_workers=0)
    put("standard/features", torch.from_numpy(act.astype(np.float32)))
    mu, sigma = fid_score.compute_statistics_of_path(imgdir, model, 50, DIM, "cpu", 0)
    put("standard/mu", torch.from_numpy(mu))
    # block-by-block for the first image
    x = TF.ToTensor()(Image.open(files[0]).convert("RGB"))[None]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    for k, blk in enumerate(model.blocks):
        x = blk(x)
        put("standard/block%d" % k, x[0, :2] if k == 0 else x[0])  # block 0: its first 2 channels
meta["case/standard"] = "images %d: pytorch-fid get_activations, compute_statistics_of_path" % len(files)

# the FID between the two protocols' sets, through fid_score's own function
m1, s1 = np.mean(act, axis=0), np.cov(act, rowvar=False)
a2 = feats.numpy().astype(np.float64)
m2, s2 = np.mean(a2, axis=0), np.cov(a2, rowvar=False)
put("standard_vs_arldm/fid", torch.tensor([fid_score.calculate_frechet_distance(m1, s1, m2, s2)], dtype=torch.float64))


# ---- whole runs of `pipeline fid` on folders: pytorch-fid's
# calculate_fid_given_paths (its statistics of each folder, then the distance)
# with the narrow model, and AR-LDM's calculate_fid_given_features on the
# inception_feature of real and generated frames stored as PNG files
def write_dir(name, imgs):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    for i, im in enumerate(imgs):
        Image.fromarray(im, "RGB").save(os.path.join(d, "%04d.png" % i))
    return d


import fid_utils  # noqa: E402  (AR-LDM's fid_utils.py; only numpy and scipy)

expected = []
with torch.no_grad():
    std2 = write_dir("images2", [image(40, 36, 20 + i) * np.uint8(1) // 2 + 60 for i in range(4)])
    m_a, s_a = fid_score.compute_statistics_of_path(imgdir, model, 50, DIM, "cpu", 0)
    m_b, s_b = fid_score.compute_statistics_of_path(std2, model, 50, DIM, "cpu", 0)
    expected.append(("standard images images2", fid_score.calculate_frechet_distance(m_a, s_a, m_b, s_b)))
    # --dims 768: InceptionV3([2]) (same seeded weights), spatially averaged by get_activations
    model2 = pfi.InceptionV3([2], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    m_a, s_a = fid_score.compute_statistics_of_path(imgdir, model2, 50, 768 // R, "cpu", 0)
    m_b, s_b = fid_score.compute_statistics_of_path(std2, model2, 50, 768 // R, "cpu", 0)
    expected.append(("standard:768 images images2", fid_score.calculate_frechet_distance(m_a, s_a, m_b, s_b)))
    real_dir = write_dir("arldm_real", frames)
    gen = [image(64, 64, 30 + i) for i in range(5)]
    gen_dir = write_dir("arldm_gen", gen)
    ori = inception_feature([Image.open(os.path.join(real_dir, f)).convert("RGB")
                             for f in sorted(os.listdir(real_dir))]).numpy()
    gf = inception_feature([Image.open(os.path.join(gen_dir, f)).convert("RGB")
                            for f in sorted(os.listdir(gen_dir))]).numpy()
    expected.append(("arldm arldm_real arldm_gen", fid_utils.calculate_fid_given_features(ori, gf)))
with open(os.path.join(OUT, "expected.txt"), "w") as f:
    f.write("# protocol[:dims] REAL GEN FID (written by tests/gen_fid.py)\n")
    for k, v in expected:
        f.write("%s %.17g\n" % (k, v))
print(expected)

# ---- Frechet distances from scipy
def fd_case(name, f1, f2, keep_sqrtm=False):
    f1 = f1.astype(np.float32)
    f2 = f2.astype(np.float32)
    a1, a2 = f1.astype(np.float64), f2.astype(np.float64)
    m1, s1 = np.mean(a1, axis=0), np.cov(a1, rowvar=False)
    m2, s2 = np.mean(a2, axis=0), np.cov(a2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    eps_path = not np.isfinite(covmean).all()
    fid = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
    put("fd/%s/f1" % name, torch.from_numpy(f1))
    put("fd/%s/f2" % name, torch.from_numpy(f2))
    put("fd/%s/fid" % name, torch.tensor([fid], dtype=torch.float64))
    put("fd/%s/mu1" % name, torch.from_numpy(m1))
    if name == "wellcond":
        put("fd/%s/sigma1" % name, torch.from_numpy(s1))
    if keep_sqrtm:
        c = np.asarray(covmean, dtype=np.complex128)
        put("fd/%s/sqrtm_re" % name, torch.from_numpy(np.ascontiguousarray(c.real)))
        put("fd/%s/sqrtm_im" % name, torch.from_numpy(np.ascontiguousarray(c.imag)))
    meta["case/fd/" + name] = "n1 %d n2 %d d %d complex %d eps_path %d" % (
        len(f1), len(f2), f1.shape[1], int(np.iscomplexobj(covmean)), int(eps_path))
    print(name, fid, "complex" if np.iscomplexobj(covmean) else "real", "eps" if eps_path else "")


d = 24
A = rng.randn(d, d) / np.sqrt(d)
fd_case("wellcond", rng.randn(200, d), rng.randn(150, d) @ A + 0.3, keep_sqrtm=True)
fd_case("wellcond_b", rng.randn(250, d) * 2.0 + 1.0, rng.randn(250, d) @ (np.eye(d) + 0.2 * A), keep_sqrtm=True)
fd_case("identical", *(lambda f: (f, f.copy()))(rng.randn(200, d)), keep_sqrtm=True)
fd_case("small", rng.randn(6, d), rng.randn(7, d) + 0.5, keep_sqrtm=True)
fd_case("tiny", rng.randn(3, d), rng.randn(3, d) * 0.5)
fd_case("wide", rng.randn(50, 96), rng.randn(40, 96) * 1.5 - 0.2)
# an exactly singular product: one feature constant in both sets -> zero row and column
s_a, s_b = rng.randn(30, d), rng.randn(30, d)
s_a[:, 0] = 1.0
s_b[:, 0] = 1.0
s_a[:, 1] = 0.0
s_b[:, 1] = 0.0
fd_case("zero_feature", s_a, s_b)

# the eps retry: s1 s2 = [[0, 0, 1], [0, 1, 0], [0, 0, 0]] has a 2x2 Jordan
# block of 0 and no square root (scipy's SqrtmError: NaN), so
# calculate_frechet_distance adds 1e-6 to the diagonals and finds a real root
e1 = np.diag([1.0, 1.0, 0.0])
e2 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 3e6]])
em1, em2 = np.array([0.5, -1.0, 0.25]), np.array([0.0, 2.0, 1.0])
assert not np.isfinite(linalg.sqrtm(e1.dot(e2), disp=False)[0]).all()
for k, v in [("mu1", em1), ("sigma1", e1), ("mu2", em2), ("sigma2", e2)]:
    put("eps/" + k, torch.from_numpy(v))
put("eps/fid", torch.tensor([fid_score.calculate_frechet_distance(em1, e1, em2, e2)], dtype=torch.float64))
meta["case/eps"] = "a product without a square root: the eps retry"

save_file(tensors, os.path.join(OUT, "fid.safetensors"), metadata=meta)
print("wrote", len(weights), "weights,", len(tensors), "tensors; features", tuple(feats.shape),
      "mean |f|", float(feats.abs().mean()))
