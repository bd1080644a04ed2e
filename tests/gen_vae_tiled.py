#!/usr/bin/python3
"""tests/gen_vae_tiled.py - fixture of the vae encoder's tiled decode (issue 19).

Runs diffusers 0.19.3's AutoencoderKL.tiled_decode (enable_tiling) on the tiny
VAE of tests/gen_sd.py (tests/fixtures/sd/pipe/vae) and writes its inputs and
outputs to tests/fixtures/sd/vae_tiled_io.safetensors. Run from the source tree
root after tests/gen_sd.py:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_vae_tiled.py

Cases (the tile sizes are set as diffusers' attributes, which is what the
plugin's tile_sample_size / tile_overlap_factor keys stand for):
  a: latents [2, 4, 20, 13], tile_sample_min_size 16 (latent tile 8, step 6,
     blend 4): rows of 4 tiles, columns of 3, the last 1 latent wide (the
     blend clamped to the 2-pixel tile)
  b: latents [1, 4, 17, 22], tile_sample_min_size 20, overlap 0.5 (latent
     tile 10, step 5, blend 10)
  c: latents [1, 4, 16, 16] with the config's sample_size 64: not tiled
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL

HERE = os.path.dirname(os.path.abspath(__file__))
SD = os.path.join(HERE, "fixtures", "sd")
torch.set_grad_enabled(False)

cfg = json.load(open(os.path.join(SD, "pipe", "vae", "config.json")))
vae = AutoencoderKL.from_config(cfg).eval()
w = load_file(os.path.join(SD, "pipe", "vae", "diffusion_pytorch_model.safetensors"))
vae.load_state_dict({k: v.float() for k, v in w.items()})
vae.enable_tiling()

g = torch.Generator().manual_seed(19)
out = {}


def case(name, shape, tile=None, overlap=None):
    z = torch.randn(*shape, generator=g)
    vae.tile_sample_min_size = tile if tile else cfg["sample_size"]
    vae.tile_latent_min_size = int(vae.tile_sample_min_size / (2 ** (len(cfg["block_out_channels"]) - 1)))
    vae.tile_overlap_factor = overlap if overlap is not None else 0.25
    out[name + ".latents"] = z
    out[name + ".tiled"] = vae.decode(z).sample.contiguous()
    vae.disable_tiling()
    out[name + ".untiled"] = vae.decode(z).sample.contiguous()
    vae.enable_tiling()


case("a", (2, 4, 20, 13), tile=16)
case("b", (1, 4, 17, 22), tile=20, overlap=0.5)
case("c", (1, 4, 16, 16))
save_file(out, os.path.join(SD, "vae_tiled_io.safetensors"))
