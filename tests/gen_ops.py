#!/usr/bin/python3
"""tests/gen_ops.py - write the PyTorch fixtures of the tensor ops and the RNG.

Run from the source tree with Debian's python and the reference environment:

    PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_ops.py

It writes tests/fixtures/ops/ops.safetensors and tests/fixtures/ops/rng.safetensors.

ops.safetensors: one "case" per metadata key. The value is
"OP [key=value ...]"; the case's tensors are "<case>/a", "<case>/b", ... (inputs,
in argument order) and "<case>/out" (expected). An input stored with key T<i>=1
is stored transposed in its last two dims: the test views it back with
mmp_transpose, so the op sees a strided (non-contiguous) operand.

rng.safetensors: metadata key = case, value "SEED|DRAW|DRAW..." where a DRAW is
"randn D0 D1 ...", "rand D0 ...", or "randint LOW HIGH D0 ...", made in order on
one torch.Generator().manual_seed(SEED); tensor "<case>/<k>" is the k-th draw.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

try:
    from diffusers.models.embeddings import get_timestep_embedding
except Exception as e:  # pragma: no cover
    sys.exit("gen_ops.py needs diffusers from the reference env: %s" % e)
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "ops")
torch.manual_seed(20240611)

tensors = {}
meta = {}


def rnd(*shape, lo=None):
    x = torch.randn(*shape, dtype=torch.float32)
    if lo is not None:  # keep away from zero (divisors, sqrt)
        x = x.abs() + lo
    return x


def case(name, op, inputs, out, **params):
    assert name not in meta, name
    desc = [op]
    for k, v in params.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (list, tuple)):
            v = ",".join(str(int(i)) for i in v)
        desc.append("%s=%s" % (k, v))
    for i, x in enumerate(inputs):
        if x is None:
            continue
        key = "%s/%s" % (name, "abcdefgh"[i])
        if params.get("T%d" % i):
            x = x.transpose(-1, -2)
        tensors[key] = x.contiguous().clone()
    tensors[name + "/out"] = out.contiguous().clone()
    meta[name] = " ".join(desc)


# ---- elementwise with broadcasting
for name, sa, sb in [("same", (3, 5, 7), (3, 5, 7)), ("bcast", (2, 1, 5), (4, 1)),
                     ("scalar", (6, 3), (1,)), ("lead", (5,), (2, 3, 5))]:
    a, b = rnd(*sa), rnd(*sb, lo=0.5)
    case("add_" + name, "add", [a, b], a + b)
    case("sub_" + name, "sub", [a, b], a - b)
    case("mul_" + name, "mul", [a, b], a * b)
    case("div_" + name, "div", [a, b], a / b)
a, b = rnd(4, 6), rnd(6, 4)
case("add_strided", "add", [a, b.t()], a + b.t(), T1=1)
a, b = rnd(3, 4, 5), rnd(3, 4, 5)
case("axpby", "axpby", [a, b], 0.75 * a + (-1.25) * b, alpha=0.75, beta=-1.25)
case("scale", "scale", [a], 1.5 * a + 0.25, alpha=1.5, beta=0.25)
case("clamp", "clamp", [a], a.clamp(-0.5, 0.7), lo=-0.5, hi=0.7)
x = rnd(7, 9, lo=0.01)
case("sqrt", "sqrt", [x], x.sqrt())
for shape in [(13,), (3, 17, 5)]:
    x = rnd(*shape) * 3
    sfx = "_%d" % len(shape)
    case("exp" + sfx, "exp", [x], x.exp())
    case("abs" + sfx, "abs", [x], x.abs())
    case("silu" + sfx, "silu", [x], F.silu(x))
    case("gelu" + sfx, "gelu", [x], F.gelu(x))
    case("gelu_tanh" + sfx, "gelu_tanh", [x], F.gelu(x, approximate="tanh"))
    case("quick_gelu" + sfx, "quick_gelu", [x], x * torch.sigmoid(1.702 * x))
    case("sigmoid" + sfx, "sigmoid", [x], torch.sigmoid(x))
    case("tanh" + sfx, "tanh", [x], torch.tanh(x))
    case("relu" + sfx, "relu", [x], torch.relu(x))
x = rnd(6, 5)
case("silu_strided", "silu", [x.t()], F.silu(x.t()), T0=1)
for shape in [(3, 10), (2, 3, 34)]:
    x = rnd(*shape) * 2
    h, g = x.chunk(2, dim=-1)
    case("geglu_%d" % len(shape), "geglu", [x], h * F.gelu(g))

# ---- reductions
x = rnd(3, 4, 5)
for dim in (0, 1, -1):
    for keep in (0, 1):
        case("sum_d%d_k%d" % (dim, keep), "sum", [x], x.sum(dim, keepdim=bool(keep)), dim=dim, keepdim=keep)
        case("mean_d%d_k%d" % (dim, keep), "mean", [x], x.mean(dim, keepdim=bool(keep)), dim=dim, keepdim=keep)
        case("max_d%d_k%d" % (dim, keep), "max", [x], x.amax(dim, keepdim=bool(keep)), dim=dim, keepdim=keep)
case("argmax", "argmax", [x], x.argmax(-1))
v = rnd(11)
case("argmax_1d", "argmax", [v], v.argmax(-1))

# ---- matmul / linear
for name, sa, sb, ta, tb in [("2d", (5, 7), (7, 3), 0, 0), ("batched", (2, 3, 4, 5), (5, 6), 0, 0),
                             ("bcast", (2, 1, 4, 5), (3, 5, 6), 0, 0), ("ta", (7, 5), (7, 3), 1, 0),
                             ("tb", (2, 5, 7), (2, 3, 7), 0, 1), ("tab", (3, 9, 1), (3, 2, 9), 1, 1),
                             ("vec", (1, 33), (33, 1), 0, 0)]:
    a, b = rnd(*sa), rnd(*sb)
    A = a.transpose(-1, -2) if ta else a
    B = b.transpose(-1, -2) if tb else b
    case("matmul_" + name, "matmul", [a, b], A @ B, trans_a=ta, trans_b=tb)
a, b = rnd(3, 6, 4), rnd(3, 4, 5)
case("matmul_strided", "matmul", [a, b], a @ b, T0=1, T1=1)
for name, sx, out, bias in [("2d", (6, 10), 7, True), ("3d", (2, 5, 9), 4, True), ("nobias", (3, 8), 5, False)]:
    x, w = rnd(*sx), rnd(out, sx[-1])
    bb = rnd(out) if bias else None
    case("linear_" + name, "linear", [x, w, bb], F.linear(x, w, bb), bias=int(bias))

# ---- conv2d
for name, xs, ws, st, pd, dl, gr, bias in [
        ("3x3", (2, 3, 7, 9), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, True),
        ("stride2", (1, 4, 9, 8), (6, 4, 3, 3), (2, 2), (1, 1), (1, 1), 1, True),
        ("1x1", (2, 5, 6, 5), (3, 5, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),
        ("dil2", (1, 2, 10, 11), (3, 2, 3, 3), (1, 1), (2, 2), (2, 2), 1, False),
        ("groups", (2, 4, 6, 6), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2, True),
        ("rect", (1, 3, 8, 7), (2, 3, 3, 1), (2, 1), (1, 0), (1, 1), 1, True)]:
    x, w = rnd(*xs), rnd(*ws) * 0.3
    bb = rnd(ws[0]) if bias else None
    case("conv2d_" + name, "conv2d", [x, w, bb], F.conv2d(x, w, bb, st, pd, dl, gr), stride=st, pad=pd,
         dil=dl, groups=gr, bias=int(bias))

# ---- normalisation, softmax
for name, xs, g, eps in [("4d", (2, 8, 5, 3), 4, 1e-5), ("3d", (2, 6, 7), 3, 1e-6), ("g1", (1, 5, 4, 4), 1, 1e-5)]:
    x = rnd(*xs) * 2 + 0.5
    w, bb = 1 + 0.5 * rnd(xs[1]), rnd(xs[1])
    case("group_norm_" + name, "group_norm", [x, w, bb], F.group_norm(x, g, w, bb, eps), groups=g, eps=eps)
x = rnd(2, 4, 3, 3)
case("group_norm_noaffine", "group_norm", [x], F.group_norm(x, 2, None, None, 1e-5), groups=2, eps=1e-5)
for name, xs, affine in [("3d", (3, 5, 16), True), ("odd", (7, 13), True), ("noaffine", (4, 9), False)]:
    x = rnd(*xs) * 3 + 1
    w, bb = (1 + 0.5 * rnd(xs[-1]), rnd(xs[-1])) if affine else (None, None)
    case("layer_norm_" + name, "layer_norm", [x, w, bb], F.layer_norm(x, (xs[-1],), w, bb, 1e-5), eps=1e-5,
         affine=int(affine))
x = rnd(3, 4, 7) * 4
for dim in (-1, 1, 0):
    case("softmax_d%d" % dim, "softmax", [x], torch.softmax(x, dim), dim=dim)


# ---- attention (reference math in float64, then float32)
def attn(q, k, v, mask=None, causal=False, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    scale = scale if scale else 1.0 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-1, -2) * scale
    neg = torch.zeros_like(s, dtype=torch.bool)
    if mask is not None:
        neg |= mask[:, None, None, :].bool()
    if causal:
        lq, lk = s.shape[-2], s.shape[-1]
        neg |= torch.ones(lq, lk, dtype=torch.bool).triu(1)
    s = s.masked_fill(neg, float("-inf"))
    p = torch.softmax(s, -1)
    out = p @ v
    return torch.nan_to_num(out, nan=0.0).float()  # rows with every key masked give 0 (our documented choice)


q, k, v = rnd(2, 3, 5, 8), rnd(2, 3, 7, 8), rnd(2, 3, 7, 6)
case("attention_cross", "attention", [q, k, v], attn(q, k, v))
mask = torch.zeros(2, 7, dtype=torch.uint8)
mask[0, 5:] = 1
mask[1, 0] = 1
mask[1, 3] = 1
case("attention_mask", "attention", [q, k, v, mask], attn(q, k, v, mask))
q, k, v = rnd(1, 2, 6, 4), rnd(1, 2, 6, 4), rnd(1, 2, 6, 4)
case("attention_causal", "attention", [q, k, v], attn(q, k, v, causal=True), causal=1)
case("attention_scale", "attention", [q, k, v], attn(q, k, v, scale=0.3), scale=0.3)
fm = torch.zeros(1, 6, dtype=torch.uint8)
fm[0, :] = 1
case("attention_allmasked", "attention", [q, k, v, fm], attn(q, k, v, fm))
q, k, v = rnd(1, 1, 70, 16), rnd(1, 1, 77, 16), rnd(1, 1, 77, 16)
case("attention_long", "attention", [q, k, v], attn(q, k, v))

# ---- spatial
x = rnd(2, 3, 4, 5)
case("upsample", "upsample_nearest2x", [x], F.interpolate(x, scale_factor=2.0, mode="nearest"))
x = rnd(2, 3, 7, 6)
case("avg_pool_k2s2", "avg_pool2d", [x], F.avg_pool2d(x, 2, 2), kernel=2, stride=2, pad=0)
case("avg_pool_k3s2p1", "avg_pool2d", [x], F.avg_pool2d(x, 3, 2, 1), kernel=3, stride=2, pad=1)
case("max_pool_k3s2p1", "max_pool2d", [x], F.max_pool2d(x, 3, 2, 1), kernel=3, stride=2, pad=1)
case("max_pool_k2s1", "max_pool2d", [x], F.max_pool2d(x, 2, 1), kernel=2, stride=1, pad=0)

# ---- embeddings
table = rnd(11, 6)
ids = torch.tensor([[3, 0, 10, 3, 7], [1, 1, 2, 9, 4]], dtype=torch.int64)
case("embedding_i64", "embedding", [table, ids], F.embedding(ids, table))
ids32 = torch.tensor([5, 2, 8], dtype=torch.int32)
case("embedding_i32", "embedding", [table, ids32], F.embedding(ids32.long(), table))
t = torch.tensor([0, 1, 37, 500, 999], dtype=torch.int64)
for name, dim, flip, shift, scale, mp in [("sd", 320, True, 0, 1, 10000), ("odd", 7, False, 1, 1, 10000),
                                          ("scaled", 16, True, 1, 2.0, 1000)]:
    case("timestep_" + name, "timestep_embedding", [t],
         get_timestep_embedding(t, dim, flip, shift, scale, mp), dim=dim, flip=flip, shift=shift, scale=scale,
         max_period=mp)
tf = torch.tensor([0.5, 250.25, 981.0], dtype=torch.float32)
case("timestep_frac", "timestep_embedding", [tf], get_timestep_embedding(tf, 32, False, 1), dim=32, flip=0, shift=1,
     scale=1, max_period=10000)

# ---- data movement
a, b = rnd(2, 3, 4), rnd(2, 5, 4)
case("concat_d1", "concat", [a, b], torch.cat([a, b], 1), dim=1)
a, b, c = rnd(3, 2), rnd(3, 1), rnd(3, 4)
case("concat_last", "concat", [a, b, c], torch.cat([a, b, c], -1), dim=-1)
x = torch.cat([rnd(40) * 10, torch.tensor([65504.0, 65520.0, 1e-7, 3e-5, -0.0, 1.0 / 3.0, 1e5, 6e-8])])
case("to_f16", "convert", [x], x.half(), dtype="f16")
case("to_bf16", "convert", [x], x.bfloat16(), dtype="bf16")
h = x.half()
case("from_f16", "convert", [h], h.float(), dtype="f32")
hb = x.bfloat16()
case("from_bf16", "convert", [hb], hb.float(), dtype="f32")

# ---- host resize (ViT position grids: 14 -> 24 as 224 -> 384 at patch 16; down; non-square)
x = rnd(1, 5, 14, 14)
case("resize_bicubic_up", "resize_bicubic", [x], F.interpolate(x, size=(24, 24), mode="bicubic", align_corners=False),
     oh=24, ow=24)
case("resize_bicubic_down", "resize_bicubic", [x], F.interpolate(x, size=(9, 9), mode="bicubic", align_corners=False),
     oh=9, ow=9)
x = rnd(2, 3, 7, 5)
case("resize_bicubic_rect", "resize_bicubic", [x], F.interpolate(x, size=(3, 11), mode="bicubic", align_corners=False),
     oh=3, ow=11)

os.makedirs(OUT, exist_ok=True)
# ---- FID Inception's pools and resize (appended: earlier cases keep their draws)
x = rnd(2, 3, 7, 6)
case("avg_pool_k3s1p1_excl", "avg_pool2d", [x], F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), kernel=3,
     stride=1, pad=1, exclude_pad=1)
case("avg_pool_k3s2p1_excl", "avg_pool2d", [x], F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), kernel=3,
     stride=2, pad=1, exclude_pad=1)
for name, size, align in [("up", (13, 11), False), ("down", (3, 4), False), ("same", (7, 6), False),
                          ("mixed", (5, 17), False), ("up_ac", (13, 11), True), ("to1", (1, 1), False)]:
    case("resize_bilinear_" + name, "resize_bilinear", [x],
         F.interpolate(x, size=size, mode="bilinear", align_corners=align), size=size, align_corners=align)
x = rnd(1, 2, 64, 64)
case("resize_bilinear_299", "resize_bilinear", [x], F.interpolate(x, size=(299, 299), mode="bilinear",
                                                                     align_corners=False), size=(299, 299),
     align_corners=False)

# ---- planes wide enough for the pools' vector blocks (16 columns) and their
# edges, and conv2d with the fused ReLU (appended: earlier cases keep their draws)
x = rnd(1, 2, 9, 37)
case("avg_pool_wide_k3s1p1_excl", "avg_pool2d", [x], F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), kernel=3,
     stride=1, pad=1, exclude_pad=1)
case("avg_pool_wide_k3s1p1", "avg_pool2d", [x], F.avg_pool2d(x, 3, 1, 1), kernel=3, stride=1, pad=1)
case("avg_pool_wide_k3s2p1_excl", "avg_pool2d", [x], F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), kernel=3,
     stride=2, pad=1, exclude_pad=1)
case("max_pool_wide_k3s1p1", "max_pool2d", [x], F.max_pool2d(x, 3, 1, 1), kernel=3, stride=1, pad=1)
case("max_pool_wide_k3s2", "max_pool2d", [x], F.max_pool2d(x, 3, 2), kernel=3, stride=2, pad=0)
x, w, bb = rnd(2, 3, 7, 9), rnd(4, 3, 3, 3) * 0.3, rnd(4)
case("conv2d_relu_3x3", "conv2d_relu", [x, w, bb], F.relu(F.conv2d(x, w, bb, 1, 1)), stride=(1, 1), pad=(1, 1),
     dil=(1, 1), groups=1, bias=1)
x, w, bb = rnd(3, 5, 6, 5), rnd(7, 5, 1, 1) * 0.3, rnd(7)
case("conv2d_relu_1x1", "conv2d_relu", [x, w, bb], F.relu(F.conv2d(x, w, bb)), stride=(1, 1), pad=(0, 0),
     dil=(1, 1), groups=1, bias=1)

save_file(tensors, os.path.join(OUT, "ops.safetensors"), metadata=meta)

# ---- RNG
rng_t, rng_m = {}, {}
seqs = {
    "small": ["randn 1", "randn 3", "randn 5"],  # the cached Box-Muller sample carries over
    "edge15": ["randn 15"],
    "edge16": ["randn 16"],
    "edge17": ["randn 17"],
    "nd": ["randn 2 3 5", "randn 4 4 4"],
    "mixed": ["randn 3", "randn 20", "rand 7", "randn 1", "randint 0 10 9", "randint -5 1099511627776 4", "rand 33"],
    "latent": ["randn 1 4 16 16"],
}
for seed in [0, 1, 42, 1234567, 2**32 + 5]:
    for sname, draws in seqs.items():
        if sname == "latent" and seed not in (0, 42):
            continue
        name = "s%d_%s" % (seed, sname)
        g = torch.Generator().manual_seed(seed)
        for i, d in enumerate(draws):
            parts = d.split()
            if parts[0] == "randn":
                out = torch.randn(*map(int, parts[1:]), generator=g)
            elif parts[0] == "rand":
                out = torch.rand(*map(int, parts[1:]), generator=g)
            else:
                out = torch.randint(int(parts[1]), int(parts[2]), tuple(map(int, parts[3:])), generator=g)
            rng_t["%s/%d" % (name, i)] = out
        rng_m[name] = "|".join([str(seed)] + draws)
save_file(rng_t, os.path.join(OUT, "rng.safetensors"), metadata=rng_m)
print("wrote %d op tensors (%d cases), %d rng tensors" % (len(tensors), len(meta), len(rng_t)))
