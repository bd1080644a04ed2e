#!/usr/bin/python3
"""tests/gen_rng_numpy.py - numpy's legacy RandomState stream, for the core generator's
MMP_RNG_NUMPY mode (tests/test_core_rng).

AR-LDM draws its CFG drop with np.random.rand(B*V) after pl.seed_everything(seed),
i.e. np.random.seed(seed): RandomState's _legacy_seeding for an int seed calls
mt19937_seed(state, seed & 0xffffffff) (MT19937's init_genrand) and random_sample
gives (a >> 5) * 67108864 + (b >> 6)) / 9007199254740992 from two 32-bit outputs
a, b. This script checks that description against numpy itself (a pure-Python
MT19937 seeded so, for every seed below) and writes numpy's own values to
tests/fixtures/rng/numpy_rand.safetensors: seed<s> f64 [1000] = RandomState(s).rand(1000)
(1000 doubles use 2000 words: three regenerations of the 624-word state), and
seed<s>.after_rand = rand(1000) then rand(5) (the stream continues across calls).

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_rng_numpy.py
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

SEEDS = [0, 5, 42, 2 ** 32 - 1]
N = 1000


class MT:
    def __init__(self, seed):
        self.mt = [seed & 0xffffffff]
        for j in range(1, 624):
            p = self.mt[-1]
            self.mt.append((1812433253 * (p ^ (p >> 30)) + j) & 0xffffffff)
        self.i = 624

    def u32(self):
        if self.i >= 624:
            for k in range(624):
                y = (self.mt[k] & 0x80000000) | (self.mt[(k + 1) % 624] & 0x7fffffff)
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908b0df if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c5680
        y ^= (y << 15) & 0xefc60000
        y ^= y >> 18
        return y

    def double(self):
        a, b = self.u32() >> 5, self.u32() >> 6
        return (a * 67108864.0 + b) / 9007199254740992.0


def main():
    out = {}
    for s in SEEDS:
        np.random.seed(s)
        v = np.random.rand(N)
        w = np.random.rand(5)
        m = MT(s)
        mine = [m.double() for _ in range(N + 5)]
        assert mine == list(v) + list(w), "numpy's legacy seeding is not init_genrand for seed %d" % s
        out["seed%d" % s] = torch.from_numpy(v.copy())
        out["seed%d.after_rand" % s] = torch.from_numpy(w.copy())
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rng")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "numpy_rand.safetensors")
    save_file(out, path)
    print("written", path, os.path.getsize(path), "bytes; numpy", np.__version__)


if __name__ == "__main__":
    main()
