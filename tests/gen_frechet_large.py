#!/usr/bin/python3
"""tests/gen_frechet_large.py - pytorch-fid's Frechet distance of 512-d feature sets (scipy 1.10).

    PYTHONPATH=/root/refenv/site:/root/refsrc/pytorch-fid/src /usr/bin/python3 tests/gen_frechet_large.py

The feature sets are too big to commit (1500 x 512 f32), so they are defined by
a formula that tests/test_core_frechet.c evaluates bit for bit: an integer
hash of (set, row, column) gives uniforms u in [0, 1) (53-bit, exact in
double); g = u_a + u_b - 1; feature j of row i is
    s_j * (g(i, j) + 0.6 g(i, j + 1 mod d)) + m_j,   s_j = scale / (1 + j / 32),  m_j = shift * s_j
in double, then rounded to f32: a decaying spectrum with correlated
neighbours, like pool3 features. Only the distances are stored.

Writes tests/fixtures/fid/frechet_large.safetensors: for each case
"<name>/fid" (f64 [1]) pytorch-fid's calculate_frechet_distance and
"<name>/params" (f64 [8]: d, n1, n2, seed1, seed2, scale2, shift2, unused),
"<name>/check" (f32 [2, 4]: the first set's first features, to check the formula).
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

from pytorch_fid import fid_score

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "fid")
M64 = (1 << 64) - 1


def mix(x):
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(seed, i, j):
    x = (np.uint64(seed) << np.uint64(40)) ^ (i.astype(np.uint64) << np.uint64(20)) ^ j.astype(np.uint64)
    return (mix(x) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def features(seed, n, d, scale, shift):
    i, j = np.meshgrid(np.arange(n), np.arange(d), indexing="ij")
    jn = (j + 1) % d

    def g(jj):
        return uniform(2 * seed, i, jj) + uniform(2 * seed + 1, i, jj) - 1.0

    s = scale / (1.0 + np.arange(d, dtype=np.float64) / 32.0)
    m = shift * s
    return (s[None, :] * (g(j) + 0.6 * g(jn)) + m[None, :]).astype(np.float32)


tensors = {}
cases = [("d512_full", 512, 1500, 1500, 1, 2, 1.2, 0.05), ("d512_few", 512, 300, 250, 3, 4, 0.9, -0.1)]
with np.errstate(over="ignore"):
    for name, d, n1, n2, seed1, seed2, scale2, shift2 in cases:
        a1 = features(seed1, n1, d, 1.0, 0.0).astype(np.float64)
        a2 = features(seed2, n2, d, scale2, shift2).astype(np.float64)
        m1, s1 = np.mean(a1, axis=0), np.cov(a1, rowvar=False)
        m2, s2 = np.mean(a2, axis=0), np.cov(a2, rowvar=False)
        fid = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
        tensors[name + "/fid"] = torch.tensor([fid], dtype=torch.float64)
        tensors[name + "/params"] = torch.tensor([d, n1, n2, seed1, seed2, scale2, shift2, 0], dtype=torch.float64)
        tensors[name + "/check"] = torch.from_numpy(np.ascontiguousarray(a1[:2, :4].astype(np.float32)))
        print(name, fid, "f[0, :4]", a1[0, :4])
save_file(tensors, os.path.join(OUT, "frechet_large.safetensors"),
          metadata={"note": "tests/gen_frechet_large.py: scipy distances of formula-defined 512-d sets"})
