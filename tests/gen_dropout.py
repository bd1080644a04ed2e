#!/usr/bin/python3
"""tests/gen_dropout.py - torch's F.dropout(x, p, training=True) on the CPU, for the core
op mmp_dropout (tests/test_core_dropout).

torch 1.13 without MKL (torch.backends.mkl.is_available() is False for Debian's build,
checked below) runs _dropout<false>: noise = empty_like(x).bernoulli_(1 - p);
noise.div_(1 - p); x * noise, the bernoulli_ a serial kernel drawing one
uniform_real_distribution<double> per element in row-major order. This script checks
that description against torch itself (the keep mask equals torch.rand(n, float64) <
1 - p from the same state, the kept noise value is 1.0f / float(1 - p), the product a
float product, p = 0 and eval mode draw nothing) and writes torch's own values to
tests/fixtures/rng/dropout.safetensors: after torch.manual_seed(SEED), the cases in
order on the one global generator (the stream continues across calls):
case<k>.x f32 (drawn from a separate generator), case<k>.p f64 [1], case<k>.t i64 [1]
(1: the op gets x.t(), a transposed view), case<k>.y = F.dropout(x', p, True),
case<k>.g an upstream gradient and case<k>.gx = x's gradient from y.backward(g);
after = torch.rand(4) drawn after the last case.

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_dropout.py
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "rng", "dropout.safetensors")
SEED = 11
CASES = [((3, 5), 0.1, 0), ((2, 3, 7, 4), 0.5, 0), ((4, 33), 0.9, 0), ((5, 6), 0.3, 1),
         ((3, 4), 0.0, 0), ((129,), 1 / 3, 0), ((2, 3), 1.0, 0), ((17, 9), 0.1, 1)]


def check():
    assert not torch.backends.mkl.is_available(), "this torch has MKL: its bernoulli_ differs"
    for p in (0.1, 0.3, 0.5, 0.9, 1 / 3, 0.123456789):
        torch.manual_seed(3)
        x = torch.randn(41, 13)
        state = torch.get_rng_state()
        y = F.dropout(x, p, training=True)
        after = torch.rand(2)
        torch.set_rng_state(state)
        keep = torch.rand(x.numel(), dtype=torch.float64).reshape(x.shape) < 1 - p
        assert torch.equal(after, torch.rand(2)), "dropout draws one double per element"
        scale = np.float32(1.0) / np.float32(1 - p)
        want = x * torch.where(keep, torch.tensor(scale), torch.tensor(np.float32(0)))
        assert torch.equal(y, want), p
    state = torch.get_rng_state()
    F.dropout(torch.ones(5), 0.0, training=True)
    F.dropout(torch.ones(5), 0.5, training=False)
    F.dropout(torch.ones(5), 1.0, training=True)
    assert torch.equal(state, torch.get_rng_state()), "p = 0, p = 1 and eval mode draw nothing"


def main():
    check()
    data = torch.Generator().manual_seed(2029)
    torch.manual_seed(SEED)
    out = {}
    for k, (shape, p, t) in enumerate(CASES):
        x = torch.randn(shape, generator=data)
        g = torch.randn(shape[::-1] if t else shape, generator=data)
        xa = x.clone().requires_grad_(True)
        y = F.dropout(xa.t() if t else xa, p, training=True)
        y.backward(g)
        out["case%d.x" % k] = x
        out["case%d.p" % k] = torch.tensor([p], dtype=torch.float64)
        out["case%d.t" % k] = torch.tensor([t], dtype=torch.int64)
        out["case%d.y" % k] = y.detach().contiguous()
        out["case%d.g" % k] = g
        out["case%d.gx" % k] = xa.grad
    out["after"] = torch.rand(4)
    save_file({k: v.contiguous() for k, v in out.items()}, OUT)
    print("written", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
