#!/usr/bin/python3
"""tests/gen_grad.py - PyTorch fixtures of the backward ops, AdamW, the LR schedule and a tiny training run.

Run from the source tree with Debian's python and the reference environment:

    PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_grad.py

It writes tests/fixtures/grad/grad.safetensors (read by tests/test_core_grad.c).

Backward cases: metadata key = case name, value = "OP key=value ...". The
case's tensors are "<case>/<input>" (the forward's inputs, named as in the
C API: x, w, b, a, q, k, v, mask, ids, ...), "<case>/g" (the gradient of
the loss with respect to the forward's output, random) and "<case>/d<input>"
(torch.autograd's gradients, the expected values).

Optimizer cases:
  adamw/*:  a parameter, three gradients g0..g2, the parameter and both
            moments after three torch.optim.AdamW steps.
  sched/lr: the learning rate of each optimizer step under
            LinearWarmupCosineAnnealingLR (see Schedule below).
  mlp/*:    a 2-layer MLP (linear, GELU, linear) trained with AdamW under the
            schedule, with gradient clipping and accumulation over two
            micro-batches; the initial and final weights, the data and the
            loss of every micro-batch.

pl_bolts (where AR-LDM takes LinearWarmupCosineAnnealingLR from) is not part
of the reference environment, so Schedule below is that scheduler's
recursive get_lr() rule written as a torch _LRScheduler and stepped by
torch's own machinery, with warmup_start_lr = eta_min = 0 as AR-LDM uses it.
"""
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from genutil import Schedule

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "grad")
torch.manual_seed(20261202)

tensors = {}
meta = {}


def case(name, op, inputs, outputs, **params):
    """inputs: dict name -> tensor (leaf tensors that need grads are cloned
    with requires_grad); outputs: a function of the inputs returning the
    forward's output. Stores inputs, g and d<name> for float inputs."""
    assert name not in meta, name
    leaves = {}
    for k, t in inputs.items():
        if t is None:
            continue
        if t.dtype == torch.float32:
            leaves[k] = t.clone().requires_grad_(True)
        else:
            leaves[k] = t
    y = outputs(**leaves)
    g = torch.randn(y.shape, dtype=torch.float32)
    y.backward(g)
    desc = [op] + ["%s=%s" % (k, int(v) if isinstance(v, bool) else v) for k, v in params.items()]
    meta[name] = " ".join(desc)
    for k, t in leaves.items():
        tensors["%s/%s" % (name, k)] = t.detach().contiguous()
        if t.dtype == torch.float32:
            tensors["%s/d%s" % (name, k)] = t.grad.detach().contiguous()
    tensors["%s/g" % name] = g.contiguous()
    tensors["%s/y" % name] = y.detach().contiguous()


def rnd(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32) * scale


# ---- linear algebra
case("linear", "linear", {"x": rnd(2, 3, 5), "w": rnd(4, 5), "b": rnd(4)},
     lambda x, w, b: F.linear(x, w, b))
case("linear_nobias", "linear", {"x": rnd(7, 33), "w": rnd(9, 33)}, lambda x, w: F.linear(x, w))
case("matmul", "matmul ta=0 tb=0", {"a": rnd(2, 3, 4), "b": rnd(4, 5)}, lambda a, b: a @ b)
case("matmul_t", "matmul ta=1 tb=1", {"a": rnd(2, 1, 4, 3), "b": rnd(3, 5, 4)},
     lambda a, b: a.transpose(-1, -2) @ b.transpose(-1, -2))
case("matmul_ta", "matmul ta=1 tb=0", {"a": rnd(3, 6, 4), "b": rnd(3, 6, 5)},
     lambda a, b: a.transpose(-1, -2) @ b)

# ---- elementwise with broadcasting, views
case("add", "add", {"a": rnd(2, 3, 4), "b": rnd(3, 1)}, lambda a, b: a + b)
case("sub", "sub", {"a": rnd(4, 1), "b": rnd(2, 1, 5)}, lambda a, b: a - b)
case("mul", "mul", {"a": rnd(2, 3, 4), "b": rnd(1, 3, 1)}, lambda a, b: a * b)
case("scale", "scale alpha=-0.375 beta=2", {"x": rnd(3, 4)}, lambda x: x * -0.375 + 2)
case("concat", "concat dim=1", {"a": rnd(2, 3, 2), "b": rnd(2, 5, 2)}, lambda a, b: torch.cat([a, b], 1))
case("slice", "slice dim=1 start=1 end=6 step=2", {"x": rnd(3, 7, 2)}, lambda x: x[:, 1:6:2])
case("permute", "permute perm=0,2,3,1", {"x": rnd(2, 3, 4, 5)}, lambda x: x.permute(0, 2, 3, 1))
case("mse", "mse", {"a": rnd(2, 3, 4, 4), "b": rnd(2, 3, 4, 4)}, lambda a, b: F.mse_loss(a, b))

# ---- activations (a wide range of inputs)
for op, fn in [("silu", F.silu), ("gelu", F.gelu), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
               ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x)), ("sigmoid", torch.sigmoid),
               ("tanh", torch.tanh), ("relu", F.relu)]:
    x = rnd(4, 250, scale=3.0)
    case(op, op, {"x": x}, lambda x, fn=fn: fn(x))


def geglu(x):
    h, gate = x.chunk(2, dim=-1)
    return h * F.gelu(gate)


case("geglu", "geglu", {"x": rnd(2, 3, 40)}, geglu)
case("softmax", "softmax dim=-1", {"x": rnd(3, 5, 9, scale=2.0)}, lambda x: torch.softmax(x, -1))
case("softmax_d1", "softmax dim=1", {"x": rnd(3, 5, 9, scale=2.0)}, lambda x: torch.softmax(x, 1))

# ---- normalisation
case("layer_norm", "layer_norm eps=1e-05", {"x": rnd(3, 7, 16, scale=2.0) + 1.5, "w": rnd(16), "b": rnd(16)},
     lambda x, w, b: F.layer_norm(x, (16,), w, b, 1e-5))
case("layer_norm_plain", "layer_norm eps=1e-06", {"x": rnd(5, 24)}, lambda x: F.layer_norm(x, (24,), None, None, 1e-6))
case("group_norm", "group_norm groups=4 eps=1e-06", {"x": rnd(2, 8, 5, 5) + 0.5, "w": rnd(8), "b": rnd(8)},
     lambda x, w, b: F.group_norm(x, 4, w, b, 1e-6))
case("group_norm_silu", "group_norm_silu groups=2 eps=1e-05", {"x": rnd(2, 6, 4, 3), "w": rnd(6), "b": rnd(6)},
     lambda x, w, b: F.silu(F.group_norm(x, 2, w, b, 1e-5)))

# ---- lookups, resampling
case("embedding", "embedding", {"w": rnd(10, 6), "ids": torch.tensor([[1, 3, 3, 0, 9], [3, 1, 7, 7, 7]])},
     lambda w, ids: F.embedding(ids, w))
case("embedding_pad", "embedding padding_idx=0", {"w": rnd(10, 6), "ids": torch.tensor([[1, 0, 3, 0, 9]])},
     lambda w, ids: F.embedding(ids, w, padding_idx=0))
case("upsample", "upsample_nearest2x", {"x": rnd(2, 3, 4, 5)},
     lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"))

# ---- conv2d (the UNet's geometries: 3x3 pad 1, the stride-2 downsample, 1x1; plus groups and dilation)
for name, xs, ws, s, p, d, gr in [("conv3x3", (2, 4, 7, 7), (6, 4, 3, 3), 1, 1, 1, 1),
                                  ("conv_down", (2, 4, 8, 8), (5, 4, 3, 3), 2, 1, 1, 1),
                                  ("conv1x1", (1, 6, 5, 4), (3, 6, 1, 1), 1, 0, 1, 1),
                                  ("conv_groups", (2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2),
                                  ("conv_dil", (1, 3, 9, 8), (2, 3, 3, 2), 2, 2, 2, 1)]:
    case(name, "conv2d stride=%d pad=%d dil=%d groups=%d" % (s, p, d, gr),
         {"x": rnd(*xs), "w": rnd(*ws), "b": rnd(ws[0])},
         lambda x, w, b, s=s, p=p, d=d, gr=gr: F.conv2d(x, w, b, s, p, d, gr))


# ---- attention: explicit softmax(q k^T * scale) v with masks
def attn(q, k, v, mask=None, causal=False, scale=None):
    D = q.shape[-1]
    scale = scale or 1.0 / math.sqrt(D)
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(mask[:, None, None, :].bool(), float("-inf"))
    if causal:
        Lq, Lk = s.shape[-2:]
        s = s.masked_fill(torch.ones(Lq, Lk, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


mask = torch.zeros(2, 80, dtype=torch.uint8)
mask[0, 5:9] = 1
mask[1, 60:] = 1
case("attention", "attention causal=0", {"q": rnd(2, 3, 70, 8), "k": rnd(2, 3, 80, 8), "v": rnd(2, 3, 80, 12),
                                         "mask": mask}, lambda q, k, v, mask: attn(q, k, v, mask))
case("attention_causal", "attention causal=1", {"q": rnd(1, 2, 70, 16), "k": rnd(1, 2, 70, 16),
                                                "v": rnd(1, 2, 70, 16)}, lambda q, k, v: attn(q, k, v, causal=True))
case("attention_small", "attention causal=0 scale=0.3", {"q": rnd(1, 1, 3, 4), "k": rnd(1, 1, 5, 4),
                                                         "v": rnd(1, 1, 5, 2)},
     lambda q, k, v: attn(q, k, v, scale=0.3))

# ---- AdamW alone: three steps with given gradients
p0 = rnd(5, 7)
gs = [rnd(5, 7) for _ in range(3)]
p = p0.clone().requires_grad_(True)
opt = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
for g in gs:
    p.grad = g.clone()
    opt.step()
tensors["adamw/p0"] = p0
for i, g in enumerate(gs):
    tensors["adamw/g%d" % i] = g
tensors["adamw/p"] = p.detach().clone()
tensors["adamw/m"] = opt.state[p]["exp_avg"].clone()
tensors["adamw/v"] = opt.state[p]["exp_avg_sq"].clone()
meta["adamw"] = "adamw lr=0.01 wd=0.1 steps=3"


opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
sched = Schedule(opt, 4, 12)
lrs = []
for _ in range(30):  # past max_steps: the cosine turns back up
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
tensors["sched/lr"] = torch.tensor(lrs, dtype=torch.float64)
meta["sched"] = "schedule base_lr=0.001 warmup=4 max=12 steps=30"

# ---- a tiny training run: MLP 5 -> 16 -> 3, GELU, MSE; AdamW + schedule,
# clip_grad_norm_(1.0), two micro-batches of 4 per optimizer step (loss / 2)
torch.manual_seed(7)
fc1 = torch.nn.Linear(5, 16)
fc2 = torch.nn.Linear(16, 3)
params = {"fc1.weight": fc1.weight, "fc1.bias": fc1.bias, "fc2.weight": fc2.weight, "fc2.bias": fc2.bias}
for k, v in params.items():
    tensors["mlp/init/" + k] = v.detach().clone()
steps, accum, mb = 6, 2, 4
X = rnd(steps * accum * mb, 5)
Y = rnd(steps * accum * mb, 3)
tensors["mlp/x"] = X
tensors["mlp/y"] = Y
opt = torch.optim.AdamW(list(params.values()), lr=0.05, weight_decay=1e-2)
sched = Schedule(opt, 2, steps)
losses = []
for s in range(steps):
    opt.zero_grad()
    for a in range(accum):
        i0 = (s * accum + a) * mb
        out = fc2(F.gelu(fc1(X[i0:i0 + mb])))
        loss = F.mse_loss(out, Y[i0:i0 + mb])
        losses.append(loss.item())
        (loss / accum).backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    opt.step()
    sched.step()
for k, v in params.items():
    tensors["mlp/final/" + k] = v.detach().clone()
tensors["mlp/loss"] = torch.tensor(losses, dtype=torch.float64)
meta["mlp"] = "mlp steps=%d accum=%d micro=%d lr=0.05 wd=0.01 warmup=2 clip=1" % (steps, accum, mb)

os.makedirs(OUT, exist_ok=True)
save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "grad.safetensors"), metadata=meta)
print("wrote %d tensors, %d cases" % (len(tensors), len(meta)))
