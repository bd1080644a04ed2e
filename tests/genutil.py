"""tests/genutil.py - pieces shared by the fixture generators (tests/gen_*.py).

Importing this module has no side effect: it draws no random number and seeds nothing, so a
generator that imports it makes the same fixtures as before. Run only in the reference
environment (PyTorch from Debian, ../shared/REFERENCE.md).
"""
import math

import torch


class Schedule(torch.optim.lr_scheduler._LRScheduler):
    """pl_bolts' LinearWarmupCosineAnnealingLR (AR-LDM's schedule) as its recursive get_lr() rule,
    warmup_start_lr = eta_min = 0 by default; pl_bolts is not installable in the reference
    environment, so the rule is re-stated here from its source."""

    def __init__(self, optimizer, warmup, total, start=0.0, eta_min=0.0):
        self.warmup, self.total, self.start, self.eta_min = warmup, total, start, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        e, W, M = self.last_epoch, self.warmup, self.total
        prev = [g["lr"] for g in self.optimizer.param_groups]
        if e == 0:
            return [self.start for _ in self.base_lrs]
        if e < W:
            return [lr + (base - self.start) / (W - 1) for base, lr in zip(self.base_lrs, prev)]
        if e == W:
            return list(self.base_lrs)
        if (e - 1 - M) % (2 * (M - W)) == 0:
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / (M - W))) / 2
                    for base, lr in zip(self.base_lrs, prev)]
        return [(1 + math.cos(math.pi * (e - W) / (M - W))) / (1 + math.cos(math.pi * (e - W - 1) / (M - W)))
                * (lr - self.eta_min) + self.eta_min for lr in prev]


@torch.no_grad()
def perturb_clip(model):
    """Weights far from a CLIP model's init, so that every parameter matters: biases N(0, 0.1),
    norm weights 1 + N(0, 0.2), embeddings N(0, 0.5), the rest N(0, 0.2); drawn from torch's
    global generator in named_parameters() order."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            v = 0.1 * torch.randn_like(p)
        elif p.ndim == 1 and "class_embedding" not in name:
            v = 1.0 + 0.2 * torch.randn_like(p)
        elif "embedding" in name:
            v = 0.5 * torch.randn_like(p)
        else:
            v = 0.2 * torch.randn_like(p)
        p.copy_(v)
