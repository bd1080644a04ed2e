#!/usr/bin/python3
"""tests/gen_train_sd.py - the reference of the train task's Stable Diffusion step (issue 16).

Writes tests/fixtures/train/data/ (8 random 16x16 RGB PNGs and captions.txt,
`image<TAB>caption` lines) and runs on them, with the tiny pipeline of
tests/fixtures/sd/pipe (gen_sd.py; its f16 values are exact in f32) in
diffusers 0.19.3 / transformers 4.30.0 in f32, what the train task runs
(tests/test_plugin_train.c, the same settings): diffusers'
train_text_to_image.py step --

  latents = vae.encode(pixels).latent_dist.sample(generator) * 0.18215
  noise = torch.randn(latents.shape, generator)
  t = torch.randint(0, 1000, (B,), generator)
  noisy = DDPMScheduler.add_noise(latents, noise, t)
  loss = mse(unet(noisy, t, text_encoder(input_ids)[0]).sample, noise)

with one torch.Generator().manual_seed(SEED) for every draw, in that order;
batch 2, 2 accumulated micro-batches (each loss / 2), clip_grad_norm_(1.0),
torch.optim.AdamW, pl_bolts' warmup + cosine schedule (its recursive rule
as in gen_grad.py) stepped per optimizer step; the UNet trained whole, the
text encoder frozen except its token embedding (AR-LDM's freeze_clip). The
items in file order (shuffle off): optimizer step s uses items
4(s mod 2) .. 4(s mod 2) + 3. Records each step's loss (the mean of its
micro-batches), learning rate and gradient norm, and the final values of a
few named parameters, in tests/fixtures/train/train_sd.safetensors.
eps is 1e-5 for the reason gen_unet_grad.py gives. Run from the source root:

  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy /usr/bin/python3 tests/gen_train_sd.py
"""
import json
import math
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from genutil import Schedule

HERE = os.path.dirname(os.path.abspath(__file__))
PIPE = os.path.join(HERE, "fixtures", "sd", "pipe")
DATA = os.path.join(HERE, "fixtures", "train", "data")
OUT = os.path.join(HERE, "fixtures", "train", "train_sd.safetensors")

N, SIZE, BATCH, ACCUM, STEPS, SEED = 8, 16, 2, 2, 3, 7
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-5, weight_decay=1e-2)
WARMUP, MAX_STEPS, CLIP = 1, 3, 1.0
CAPTIONS = ["a red cat sitting on the mat", "two dogs, running!", "a blue house by the sea",
            "an old man reading", "green trees in the rain", "a small boat", "the sun over hills",
            "children playing ball"]
PARAMS = [
    "unet.conv_in.weight",
    "unet.conv_in.bias",
    "unet.time_embedding.linear_1.weight",
    "unet.down_blocks.0.resnets.0.norm1.weight",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "unet.mid_block.attentions.0.proj_out.bias",
    "unet.up_blocks.1.resnets.0.conv_shortcut.bias",
    "unet.conv_out.weight",
    "unet.conv_out.bias",
    "text_encoder.text_model.embeddings.token_embedding.weight",
]


def config(part):
    with open(os.path.join(PIPE, part, "config.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def weights(part, file):
    return {k: v.float() for k, v in load_file(os.path.join(PIPE, part, file)).items()}


def write_data():
    os.makedirs(DATA, exist_ok=True)
    rs = np.random.RandomState(16)
    lines = []
    for i in range(N):
        # smooth-ish colour fields plus noise: a little structure for the VAE
        base = rs.randint(0, 256, size=(1, 1, 3))
        img = np.clip(base + rs.randint(-60, 61, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        name = "%03d.png" % i
        Image.fromarray(img, "RGB").save(os.path.join(DATA, name))
        lines.append("%s\t%s\n" % (name, CAPTIONS[i]))
    with open(os.path.join(DATA, "captions.txt"), "w") as f:
        f.writelines(lines)


def pixels(i):
    im = np.asarray(Image.open(os.path.join(DATA, "%03d.png" % i)).convert("RGB"))
    x = torch.from_numpy(im.copy()).permute(2, 0, 1).float().div(255)  # ToTensor
    return (x - 0.5) / 0.5  # Normalize([0.5], [0.5])


def main():
    write_data()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config("unet"))
    unet.load_state_dict(weights("unet", "diffusion_pytorch_model.safetensors"))
    vae = AutoencoderKL(**config("vae")).eval()
    vae.load_state_dict(weights("vae", "diffusion_pytorch_model.safetensors"))
    text = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
    missing, unexpected = text.load_state_dict(weights("text_encoder", "model.safetensors"), strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    tok = CLIPTokenizer.from_pretrained(os.path.join(PIPE, "tokenizer"))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    unet.train()
    text.train()
    for n, p in text.named_parameters():
        p.requires_grad_(n == "text_model.embeddings.token_embedding.weight")
    named = {"unet." + n: p for n, p in unet.named_parameters()}
    named.update({"text_encoder." + n: p for n, p in text.named_parameters() if p.requires_grad})
    params = list(named.values())
    opt = torch.optim.AdamW(params, **ADAMW)
    lrs = Schedule(opt, WARMUP, MAX_STEPS)
    g = torch.Generator().manual_seed(SEED)
    spe = N // BATCH // ACCUM
    losses, rates, norms = [], [], []
    for step in range(STEPS):
        pos = step % spe
        opt.zero_grad()
        rates.append(opt.param_groups[0]["lr"])
        micro = []
        for k in range(ACCUM):
            first = (pos * ACCUM + k) * BATCH
            idx = list(range(first, first + BATCH))
            px = torch.stack([pixels(i) for i in idx])
            with torch.no_grad():
                latents = vae.encode(px).latent_dist.sample(generator=g) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (BATCH,), generator=g)
            noisy = sched.add_noise(latents, noise, t)
            ids = tok([CAPTIONS[i] for i in idx], padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
            ehs = text(ids)[0]
            pred = unet(noisy, t, ehs).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
            (loss / ACCUM).backward()
            micro.append(loss.item())
        norms.append(torch.nn.utils.clip_grad_norm_(params, CLIP).item())
        opt.step()
        lrs.step()
        losses.append(sum(micro) / ACCUM)
    d = {"loss": torch.tensor(losses, dtype=torch.float64), "lr": torch.tensor(rates, dtype=torch.float64),
         "grad_norm": torch.tensor(norms, dtype=torch.float64)}
    for n in PARAMS:
        d["param." + n] = named[n].detach().clone()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, OUT,
              metadata={"settings": "N=%d size=%d batch=%d accum=%d steps=%d seed=%d adamw=%s warmup=%d max=%d clip=%g" %
                        (N, SIZE, BATCH, ACCUM, STEPS, SEED, ADAMW, WARMUP, MAX_STEPS, CLIP)})
    print("losses %s lrs %s norms %s, %d bytes" % (losses, rates, norms, os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
