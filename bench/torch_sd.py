#!/usr/bin/python3
"""bench/torch_sd.py - the PyTorch side of bench/{unet,vae,clip}: the same
forward with diffusers 0.19.3 / transformers 4.30.0 on random weights.

  torch_sd.py unet|vae|text_encoder CONFIG.json THREADS [ARLDM_S | TILE]

TILE > 0 (vae): decode with enable_tiling() in tiles of TILE pixels.

With ARLDM_S (bench/unet --arldm S): AR-LDM's override UNet
(models/diffusers_override of ARLDM under REFSRC, default /root/refsrc) on
diffusers 0.7.2, which must come first on PYTHONPATH, with AR-LDM's
6 x S-token context and the cross-attention key mask of bench/unet.c's
arldm_mask (True = do not attend), batch 2 = [uncond, cond].
"""
import inspect
import json
import os
import resource
import sys
import time

import torch

part, cfg_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
extra = int(sys.argv[4]) if len(sys.argv) > 4 else 0
arldm_s = extra if part == "unet" else 0
tile = extra if part == "vae" else 0
if threads > 0:
    torch.set_num_threads(threads)
torch.set_grad_enabled(False)
cfg = json.load(open(cfg_path))


def arldm_mask(S):
    """bench/unet.c's arldm_mask: target frame 2 of a visualization; block k
    of the conditional row has min(S, 12 + 7 k) tokens."""
    m = torch.zeros(2, 6 * S, dtype=torch.bool)
    for row in range(2):
        for k in range(6):
            n = min(S, 12 + 7 * k)
            for s in range(S):
                m[row, k * S + s] = k >= 1 + 2 or (row == 1 and s >= n)
    print("context %d tokens, keys attended: uncond %d, cond %d" % (6 * S, (~m[0]).sum(), (~m[1]).sum()))
    return m


t0 = time.time()
if part == "unet" and arldm_s:
    import diffusers
    assert diffusers.__version__ == "0.7.2", "diffusers %s: put 0.7.2 first on PYTHONPATH" % diffusers.__version__
    sys.path.insert(0, os.path.join(os.environ.get("REFSRC", "/root/refsrc"), "ARLDM"))
    from models.diffusers_override.unet_2d_condition import UNet2DConditionModel
    sig = inspect.signature(UNet2DConditionModel.__init__).parameters
    m = UNet2DConditionModel(**{k: v for k, v in cfg.items() if k in sig}).eval()
    args = (torch.randn(2, 4, 64, 64), torch.tensor(500), torch.randn(2, 6 * arldm_s, 768), arldm_mask(arldm_s))
    run = lambda: m(*args).sample
elif part == "unet":
    from diffusers import UNet2DConditionModel
    m = UNet2DConditionModel.from_config(cfg).eval()
    args = (torch.randn(2, 4, 64, 64), torch.tensor([500, 500]), torch.randn(2, 77, 768))
    run = lambda: m(*args).sample
elif part == "vae":
    from diffusers import AutoencoderKL
    m = AutoencoderKL.from_config(cfg).eval()
    if tile > 0:
        m.enable_tiling()
        m.tile_sample_min_size = tile
        m.tile_latent_min_size = int(tile / (2 ** (len(cfg["block_out_channels"]) - 1)))
    z = torch.randn(1, 4, 64, 64)
    run = lambda: m.decode(z).sample
else:
    from transformers import CLIPTextConfig, CLIPTextModel
    m = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})).eval()
    ids = torch.randint(0, 49406, (2, 77))
    run = lambda: m(input_ids=ids).last_hidden_state
print("%-22s %8.2f s  (random init%s)" % ("torch load", time.time() - t0,
                                          ", AR-LDM override UNet, diffusers 0.7.2" if arldm_s else ""))
ru0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.time()
run()
print("%-22s %8.2f s  (%d threads)" % ("torch forward", time.time() - t0, torch.get_num_threads()))
ru1 = resource.getrusage(resource.RUSAGE_SELF)
print("%-22s %8.2f s  (user + system)" % ("torch cpu time", ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime))
print("%-22s %8.0f MB" % ("torch peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
