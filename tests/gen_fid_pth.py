#!/usr/bin/python3
"""tests/gen_fid_pth.py - the narrow FID Inception's weights as a torch.save file in pytorch-fid's layout.

    PYTHONPATH=/root/refenv/site:/root/refsrc/pytorch-fid/src /usr/bin/python3 tests/gen_fid_pth.py

Run after tests/gen_fid.py. pytorch-fid's weights file
(pt_inception-2015-12-05-6726825d.pth) is the state dict of its
fid_inception_v3() network saved by torch.save: this writes the same state
dict of the width/16 network (pytorch-fid's own module, as tests/gen_fid.py
builds it) with the weights of inception_w16.safetensors, in the legacy
(non-zip) torch.save format the 2019 file has. The state dict keeps every key
of the real file (the FID blocks, fc, BatchNorm's num_batches_tracked) except
that fc, which the FID never uses, shrinks to 8 classes to keep the file
small.

Writes tests/fixtures/fid/inception_w16_legacy.pth.
"""
import os

import torch
import torchvision.models.inception as tvi
from safetensors.torch import load_file

import pytorch_fid.inception as pfi

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "fid")
R = 16
_Basic = tvi.BasicConv2d


class NarrowBasicConv2d(_Basic):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(in_channels if in_channels == 3 else in_channels // R, out_channels // R, **kw)


tvi.BasicConv2d = NarrowBasicConv2d
_orig_load = tvi.Inception3.load_state_dict
tvi.Inception3.load_state_dict = lambda self, sd, strict=True: None if sd is None else _orig_load(self, sd, strict)
pfi.load_state_dict_from_url = lambda *a, **k: None
net = pfi.fid_inception_v3()  # the network whose state dict the .pth file holds
w = load_file(os.path.join(OUT, "inception_w16.safetensors"))
sd = net.state_dict()
g = torch.Generator().manual_seed(7)
out = {}
for k, v in sd.items():
    if k in w:
        out[k] = w[k].clone()
    elif k == "fc.weight":
        out[k] = torch.randn(8, v.shape[1] // R if v.shape[1] == 2048 else v.shape[1], generator=g)
    elif k == "fc.bias":
        out[k] = torch.randn(8, generator=g)
    elif k.endswith("num_batches_tracked"):
        out[k] = torch.tensor(0)
    else:
        raise SystemExit("unexpected key " + k)
assert set(w) <= set(out), set(w) - set(out)
torch.save(out, os.path.join(OUT, "inception_w16_legacy.pth"), _use_new_zipfile_serialization=False)
print(len(out), "tensors; fc", tuple(out["fc.weight"].shape), "first keys", list(out)[:3])
