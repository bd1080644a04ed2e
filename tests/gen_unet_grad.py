#!/usr/bin/python3
"""tests/gen_unet_grad.py - the tape's proof on a whole model (issue 16).

Loads the tiny UNet2DConditionModel of tests/fixtures/sd/pipe/unet (written
by gen_sd.py; its values are exact in f16, so the f32 model equals the file)
into diffusers 0.19.3 in f32, runs one forward with a cross-attention key
mask, an MSE loss against a random target, loss.backward(), and writes the
inputs, the loss and the gradients of the inputs and of a set of named
parameters to tests/fixtures/grad/unet_grad.safetensors. Then, from the same
weights, ADAMW_STEPS steps of torch.optim.AdamW on the same batch: the loss
of each step and the final values of the named parameters that are small
(adamw.*). eps is 1e-5 rather than torch's 1e-8: the first Adam step moves
each weight by about lr * sign(g), so a gradient that is 0 up to rounding
(|g| < 1e-8) would make the comparison a coin toss; with eps = 1e-5 the update
is a smooth function of the gradient. Run from the source tree root:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_unet_grad.py
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file
from diffusers import UNet2DConditionModel

HERE = os.path.dirname(os.path.abspath(__file__))
UNET = os.path.join(HERE, "fixtures", "sd", "pipe", "unet")
OUT = os.path.join(HERE, "fixtures", "grad", "unet_grad.safetensors")

# one of each kind of layer, in each part of the network
PARAMS = [
    "conv_in.weight",
    "conv_in.bias",
    "time_embedding.linear_1.weight",
    "time_embedding.linear_2.bias",
    "down_blocks.0.resnets.0.norm1.weight",
    "down_blocks.0.resnets.0.conv1.weight",
    "down_blocks.0.resnets.1.time_emb_proj.weight",
    "down_blocks.0.attentions.0.norm.weight",
    "down_blocks.0.attentions.0.proj_in.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.bias",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.norm3.bias",
    "down_blocks.0.downsamplers.0.conv.weight",
    "down_blocks.1.resnets.0.conv_shortcut.weight",
    "mid_block.resnets.1.norm2.bias",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
    "mid_block.attentions.0.proj_out.bias",
    "up_blocks.0.resnets.2.conv2.weight",
    "up_blocks.0.upsamplers.0.conv.weight",
    "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2.weight",
    "up_blocks.1.resnets.0.conv_shortcut.bias",
    "conv_norm_out.weight",
    "conv_out.weight",
    "conv_out.bias",
]


ADAMW_STEPS = 3
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
ADAMW_MAX_NUMEL = 2048  # final values kept for the smaller named parameters


def load_unet():
    with open(os.path.join(UNET, "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**cfg).eval()
    sd = load_file(os.path.join(UNET, "diffusion_pytorch_model.safetensors"))
    unet.load_state_dict({k: v.float() for k, v in sd.items()})
    return unet


def main():
    torch.manual_seed(0)
    unet = load_unet()
    g = torch.Generator().manual_seed(16)
    s = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    t = torch.tensor([10, 621], dtype=torch.int64)
    ehs = torch.randn(2, 7, 32, generator=g).requires_grad_(True)
    mask = torch.zeros(2, 7, dtype=torch.bool)  # True = do not attend (AR-LDM)
    mask[0, 5:] = True
    mask[1, 1] = True
    target = torch.randn(2, 4, 8, 8, generator=g)
    # diffusers 0.19: 1 = keep, (1 - m) * -10000 added to the scores
    # (exp(-10000) is 0 in f32: the same as masking the keys out)
    out = unet(s, t, ehs, encoder_attention_mask=(~mask).float()).sample
    loss = torch.nn.functional.mse_loss(out, target)
    loss.backward()
    params = dict(unet.named_parameters())
    d = {"sample": s.detach(), "timestep": t, "encoder_hidden_states": ehs.detach(),
         "encoder_attention_mask": mask.to(torch.uint8), "target": target,
         "out_sample": out.detach(), "loss": loss.detach().reshape(1),
         "grad.sample": s.grad, "grad.encoder_hidden_states": ehs.grad}
    for n in PARAMS:
        d["grad." + n] = params[n].grad
    # AdamW steps from the same weights on the same batch
    unet = load_unet()
    opt = torch.optim.AdamW(unet.parameters(), **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        o = unet(s.detach(), t, ehs.detach(), encoder_attention_mask=(~mask).float()).sample
        l = torch.nn.functional.mse_loss(o, target)
        l.backward()
        opt.step()
        losses.append(l.item())
    d["adamw.loss"] = torch.tensor(losses, dtype=torch.float32)
    params = dict(unet.named_parameters())
    for n in PARAMS:
        if params[n].numel() <= ADAMW_MAX_NUMEL:
            d["adamw." + n] = params[n].detach()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, OUT)
    print("loss %.6g, %d parameter gradients, AdamW losses %s, %d bytes" %
          (loss.item(), len(PARAMS), losses, os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
