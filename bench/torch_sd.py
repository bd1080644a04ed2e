#!/usr/bin/python3
"""bench/torch_sd.py - the PyTorch side of bench/{unet,vae,clip}: the same
forward with diffusers 0.19.3 / transformers 4.30.0 on random weights.

  torch_sd.py unet|vae|text_encoder CONFIG.json THREADS [TILE]

TILE > 0 (vae): decode with enable_tiling() in tiles of TILE pixels.
"""
import json
import resource
import sys
import time

import torch

part, cfg_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
tile = int(sys.argv[4]) if len(sys.argv) > 4 else 0
if threads > 0:
    torch.set_num_threads(threads)
torch.set_grad_enabled(False)
cfg = json.load(open(cfg_path))
t0 = time.time()
if part == "unet":
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
print("%-22s %8.2f s  (random init)" % ("torch load", time.time() - t0))
t0, c0 = time.time(), time.process_time()
run()
print("%-22s %8.2f s  (%d threads; %.2f CPU-s)" % ("torch forward", time.time() - t0, torch.get_num_threads(),
                                                   time.process_time() - c0))
print("%-22s %8.0f MB" % ("torch peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
