#!/usr/bin/python3
"""tests/gen_drop_path.py - timm's drop_path (DropPath in train mode) on the CPU, for the core
op mmp_drop_path (tests/test_core_dropout).

timm is not installable here (no PyPI), so the two recipes are written out below from timm's
timm/models/layers/drop.py, one per release line, and run on torch 1.13 itself:
  timm >= 0.5 (scale_by_keep True, what an unpinned `pip install timm` gives):
      noise = x.new_empty((B, 1, ...)).bernoulli_(1 - p); noise.div_(1 - p); x * noise
  timm 0.4.12 (BLIP's requirements pin):
      r = (1 - p) + torch.rand((B, 1, ...), dtype=x.dtype); r.floor_(); x.div(1 - p) * r
Nothing else is stood in: the draws, the arithmetic and the gradients are torch's.
After torch.manual_seed(SEED), the cases in order on the one global generator (the stream
continues across calls): case<k>.x f32 (from a separate generator), case<k>.p f64 [1],
case<k>.draws i64 [1] (0: timm >= 0.5, 1: timm 0.4.12), case<k>.t i64 [1] (1: the op gets
x.transpose(0, 1), a view), case<k>.y, case<k>.g an upstream gradient, case<k>.gx = x's
gradient from y.backward(g); after = torch.rand(4) drawn after the last case. Also
dpr.<depth>.<rate> f64: [x.item() for x in torch.linspace(0, rate, depth)], the per-block
rates of BLIP's VisionTransformer, for the C formula's check.

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_drop_path.py
"""
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "rng", "drop_path.safetensors")
SEED = 13
CASES = [((4, 3, 5), 0.3, 0, 0), ((4, 3, 5), 0.3, 1, 0), ((7, 2), 0.5, 0, 0), ((7, 2), 0.5, 1, 0),
         ((3, 6, 2), 0.0, 0, 0), ((64, 3), 0.1, 1, 0), ((64, 3), 0.1, 0, 0), ((5, 4, 3), 0.25, 1, 1),
         ((5, 4, 3), 0.25, 0, 1), ((9, 2, 2), 0.95, 1, 0), ((9, 2, 2), 0.95, 0, 0)]
LINSPACE = [(24, 0.1), (12, 0.1), (2, 0.5), (1, 0.1), (40, 0.3)]


def drop_path_bernoulli(x, p):
    if p == 0.0:
        return x
    keep = 1 - p
    noise = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return x * noise


def drop_path_rand(x, p):
    if p == 0.0:
        return x
    keep = 1 - p
    r = keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    r.floor_()
    return x.div(keep) * r


def main():
    data = torch.Generator().manual_seed(2031)
    torch.manual_seed(SEED)
    out = {}
    for k, (shape, p, draws, t) in enumerate(CASES):
        x = torch.randn(shape, generator=data)
        xv_shape = (shape[1], shape[0]) + tuple(shape[2:]) if t else shape
        g = torch.randn(xv_shape, generator=data)
        xa = x.clone().requires_grad_(True)
        xv = xa.transpose(0, 1) if t else xa
        y = (drop_path_rand if draws else drop_path_bernoulli)(xv, p)
        y.backward(g)
        out["case%d.x" % k] = x
        out["case%d.p" % k] = torch.tensor([p], dtype=torch.float64)
        out["case%d.draws" % k] = torch.tensor([draws], dtype=torch.int64)
        out["case%d.t" % k] = torch.tensor([t], dtype=torch.int64)
        out["case%d.y" % k] = y.detach().contiguous()
        out["case%d.g" % k] = g
        out["case%d.gx" % k] = xa.grad
    out["after"] = torch.rand(4)
    for depth, rate in LINSPACE:
        out["dpr.%d.%g" % (depth, rate)] = torch.tensor([v.item() for v in torch.linspace(0, rate, depth)],
                                                         dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("written", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
