#!/usr/bin/python3
"""bench/torch_train.py - the PyTorch side of bench/train: UNet training steps
with diffusers 0.19.3 on random weights, fp32 on CPU.

  torch_train.py CONFIG.json THREADS STEPS HW TOKENS CHECKPOINTING

Each step: forward at batch 1 on HWxHW latents with AR-LDM's 6 x TOKENS
context and the key mask of bench/train.c's frame_mask (passed as diffusers'
encoder_attention_mask, 1 = attend), MSE against the noise, backward,
torch.optim.AdamW (lr 1e-5, weight_decay 1e-4) over every parameter.
CHECKPOINTING 1: unet.enable_gradient_checkpointing() (each resnet and
transformer of the down and up blocks, as diffusers 0.19.3 does).
"""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F

cfg_path, threads, steps, hw, S, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
cfg = json.load(open(cfg_path))


def frame_mask(S):
    """bench/train.c's frame_mask: True = do not attend."""
    m = torch.zeros(1, 6 * S, dtype=torch.bool)
    for k in range(6):
        n = min(S, 12 + 7 * k)
        for s in range(S):
            m[0, k * S + s] = k >= 1 + 2 or s >= n
    print("context %d tokens, keys attended %d" % (6 * S, int((~m[0]).sum())))
    return m


def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


from diffusers import UNet2DConditionModel

t0 = time.time()
torch.manual_seed(0)
unet = UNet2DConditionModel.from_config(cfg)
unet.train()
if ckpt:
    unet.enable_gradient_checkpointing()
opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-4)
print("%-24s %8.2f s  (random init, diffusers UNet2DConditionModel)" % ("torch load", time.time() - t0))
sample = torch.randn(1, 4, hw, hw)
ctx = torch.randn(1, 6 * S, cfg.get("cross_attention_dim", 768))
keep = (~frame_mask(S)).float()
t = torch.tensor([500])
noise = torch.randn(1, 4, hw, hw)
tf = tb = to = tc = 0.0
for step in range(steps):
    c0, t1 = cpu(), time.time()
    opt.zero_grad(set_to_none=True)
    pred = unet(sample, t, ctx, encoder_attention_mask=keep).sample
    loss = F.mse_loss(pred, noise)
    t2 = time.time()
    loss.backward()
    t3 = time.time()
    opt.step()
    t4, c1 = time.time(), cpu()
    print("step %d: loss %.6f, forward %.2f s, backward %.2f s, AdamW %.2f s, total %.2f s, %.2f CPU s"
          % (step, loss.item(), t2 - t1, t3 - t2, t4 - t3, t4 - t1, c1 - c0), flush=True)
    del pred, loss
    if step > 0 or steps == 1:
        tf, tb, to, tc = tf + t2 - t1, tb + t3 - t2, to + t4 - t3, tc + c1 - c0
n = steps - 1 if steps > 1 else 1
print("%-24s %8.2f s  (forward %.2f + backward %.2f + AdamW %.2f; mean of %d step%s%s, %d threads)"
      % ("torch step", (tf + tb + to) / n, tf / n, tb / n, to / n, n, "s" if n > 1 else "",
         " after the first" if steps > 1 else "", torch.get_num_threads()))
print("%-24s %8.2f s  (user + system per step)" % ("torch cpu time", tc / n))
print("%-24s %8.0f MB" % ("torch peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
