#!/usr/bin/python3
"""bench/torch_blip.py - the PyTorch side of bench/blip: BLIP_Base of
AR-LDM's models/blip_override (imported from source, timm stand-ins as in
tests/gen_blip.py) with ViT-L at 224 on random weights, multimodal features
for FRAMES frames x TOKENS tokens (default 5 x 91; 1 frame: AR-LDM's re-encode
of a drawn frame).

  torch_blip.py MED_CONFIG.json THREADS REPEAT WARMUP [FRAMES TOKENS]
  (REFSRC: where ARLDM is, default /root/refsrc)
"""
import os
import resource
import sys
import time
import types

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests"))
from gen_blip import install_timm_standins  # noqa: E402

cfg_path, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
frames, tokens = (int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else (5, 91)
if threads > 0:
    torch.set_num_threads(threads)
torch.set_grad_enabled(False)
install_timm_standins()
sys.path.insert(0, os.path.join(os.environ.get("REFSRC", "/root/refsrc"), "ARLDM"))
import models.blip_override.blip as blip  # noqa: E402

blip.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=30523)
t0 = time.time()
m = blip.BLIP_Base(med_config=cfg_path, image_size=224, vit="large").eval()
print("%-22s %8.2f s  (random init)" % ("torch load", time.time() - t0))
img = torch.randn(frames, 3, 224, 224)
ids = torch.randint(0, 30522, (frames, tokens))
am = torch.ones(frames, tokens, dtype=torch.long)
best, tot = 1e30, 0.0
ru0 = resource.getrusage(resource.RUSAGE_SELF)
for i in range(warmup + runs):
    t0 = time.time()
    m(img, ids.clone(), am, mode="multimodal")
    dt = time.time() - t0
    if i < warmup:
        continue
    tot += dt
    best = min(best, dt)
print("%-22s %8.2f s  (best of %d: %.2f s, %d threads)" % ("torch forward", tot / runs, runs, best,
                                                         torch.get_num_threads()))
ru1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / (warmup + runs)
print("%-22s %8.2f s  (user + system per forward, %d forwards)" % ("torch cpu time", cpu, warmup + runs))
print("%-22s %8.0f MB" % ("torch peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
