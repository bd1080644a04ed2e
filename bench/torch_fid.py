#!/usr/bin/python3
"""bench/torch_fid.py - the PyTorch + scipy side of bench/fid, and full-size random weights for it.

  torch_fid.py weights OUT.safetensors          pytorch-fid's FID Inception-v3 with seeded random
                                                weights, in its key names (never downloads)
  torch_fid.py time THREADS BATCH DIM WEIGHTS   images/s of AR-LDM's inception_feature path on
                                                64x64 inputs, and scipy's calculate_frechet_distance
                                                of DIM-d statistics

Needs pytorch-fid's source on PYTHONPATH (e.g. /root/refsrc/pytorch-fid/src), torchvision and scipy.
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models.inception as tvi

import pytorch_fid.inception as pfi
from pytorch_fid import fid_score

_orig = tvi.Inception3.load_state_dict


def _load(self, sd, strict=True):
    if sd is None:
        g = torch.Generator().manual_seed(1)
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data = 0.6 + 0.8 * torch.rand(m.num_features, generator=g)
                m.bias.data = 0.2 * torch.randn(m.num_features, generator=g)
                m.running_mean.data = 0.2 * torch.randn(m.num_features, generator=g)
                m.running_var.data = 0.5 + torch.rand(m.num_features, generator=g)
        return None
    return _orig(self, sd, strict)


tvi.Inception3.load_state_dict = _load
pfi.load_state_dict_from_url = lambda *a, **k: None


def model_with(weights):
    m = pfi.InceptionV3([3]).eval()
    if weights != "-":
        from safetensors.torch import load_file
        w = load_file(weights)
        names = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None], ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
                 ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
                 ["Mixed_7a", "Mixed_7b", "Mixed_7c", None]]
        sd = m.state_dict()
        for k in sd:
            p = k.split(".")
            src = ".".join([names[int(p[1])][int(p[2])]] + p[3:])
            if src in w:
                sd[k] = w[src]
        m.load_state_dict(sd)
    return m


if sys.argv[1] == "weights":
    from safetensors.torch import save_file
    m = pfi.fid_inception_v3()
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(sd, sys.argv[2])
    print("wrote", len(sd), "tensors to", sys.argv[2])
    sys.exit(0)

threads, batch, dim, weights = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
if weights != "-":
    m = model_with(weights)
    x = torch.rand(batch, 3, 64, 64)
    best = best_cpu = 1e30
    for it in range(3):
        t0, c0 = time.time(), time.process_time()
        y = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        m(y)
        if it:
            best = min(best, time.time() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    print("torch features (batch %d): %.3f s per batch, %.2f images/s; CPU %.3f s per batch, %.2f images per CPU-s"
          % (batch, best, batch / best, best_cpu, batch / best_cpu))
rng = np.random.RandomState(7)
a = rng.randn(2 * dim, dim).astype(np.float32)
b = (1.1 * rng.randn(2 * dim, dim) + 0.05).astype(np.float32)
t0 = time.time()
m1, s1 = np.mean(a.astype(np.float64), axis=0), np.cov(a.astype(np.float64), rowvar=False)
m2, s2 = np.mean(b.astype(np.float64), axis=0), np.cov(b.astype(np.float64), rowvar=False)
t1 = time.time()
fid = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
t2 = time.time()
print("numpy stats: %.3f s; scipy distance (%d-d): %.3f s (FID %.6f)" % (t1 - t0, dim, t2 - t1, fid))
