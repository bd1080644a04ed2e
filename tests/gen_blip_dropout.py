#!/usr/bin/python3
"""tests/gen_blip_dropout.py - the blip encoder in train mode (BERT dropout) against BLIP's code.

The tiny BLIP_Base of tests/gen_blip_grad.py (AR-LDM's models/blip_override imported from
source, the same stand-ins; its weights and inputs read back from
tests/fixtures/grad/blip_grad.safetensors) put in train mode: its BERT's nn.Dropout modules
(p = 0.1 from med_config.json: embeddings, attention probabilities, self- and
cross-attention outputs, layer outputs) draw from torch's global generator; the ViT's have
p = 0 and its stand-in has no DropPath (checked). After torch.manual_seed(SEED): the
multimodal mode on the two images and captions (with their attention mask), loss =
mse(last_hidden_state, target), loss.backward(); then a second call on the first image and
caption without a mask (the stream continues); then torch.rand(4). Writes
tests/fixtures/grad/blip_dropout.safetensors: out1, loss, grad.NAME (gen_blip_grad.py's
PARAMS), out2, after.

With stochastic depth (two more fixtures, the same model and steps): create_vit builds the
tiny ViT with drop_path_rate = 0.5, so block 1 of 2 has DropPath(0.5) (dpr = linspace(0, 0.5,
2)) on both branches; DropPath is timm's, which is not installable here, so the stand-in is
timm's drop_path written out for one release line (tests/gen_drop_path.py checks both
recipes against the core op): blip_drop_path_bernoulli.safetensors (timm >= 0.5, what
AR-LDM's unpinned requirements install) and blip_drop_path_rand.safetensors (timm 0.4.12,
BLIP's pin), each seeded with its own SEED (kept as "seed") and recording "kept": the drop
path noise of every draw, in order, so a reader can see that both outcomes occur.

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_blip_dropout.py
"""
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import gen_drop_path as GD  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_blip as GB  # noqa: E402
import gen_blip_grad as GG  # noqa: E402

SEED = 7
# (file, drop_path_rate, recipe, seed)
VARIANTS = [("blip_dropout.safetensors", 0.0, None, SEED),
            ("blip_drop_path_bernoulli.safetensors", 0.5, GD.drop_path_bernoulli, 5),
            ("blip_drop_path_rand.safetensors", 0.5, GD.drop_path_rand, 5)]


def run(out_name, rate, recipe, seed):
    import models.blip_override.blip as blip
    import models.blip_override.vit as vit
    from models.blip_override.vit import VisionTransformer

    kept = []

    class DropPath(nn.Module):  # timm's DropPath, the recipe of one release line
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.training:
                return x
            ones = torch.ones((x.shape[0],) + (1,) * (x.ndim - 1))
            state = torch.get_rng_state()
            kept.append(recipe(ones, self.drop_prob).flatten())
            torch.set_rng_state(state)
            return recipe(x, self.drop_prob)

    vit.DropPath = DropPath
    blip.create_vit = lambda v, image_size, *a, **k: (VisionTransformer(
        img_size=image_size, patch_size=8, embed_dim=GG.VW, depth=2, num_heads=4, mlp_ratio=2.0,
        drop_path_rate=rate), GG.VW)
    blip.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=GG.ENC_ID)
    fx = load_file(os.path.join(GG.OUT, "blip_grad.safetensors"))
    m = blip.BLIP_Base(med_config=os.path.join(GG.OUT, "blip_grad_med_config.json"), image_size=16, vit="large")
    state = {k[6:]: v.float() for k, v in fx.items() if k.startswith("model.")}
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    m.train()
    drawing = [n for n, mod in m.named_modules() if isinstance(mod, nn.Dropout) and mod.p > 0]
    assert drawing and all(n.startswith("text_encoder.") for n in drawing), drawing
    paths = [n for n, mod in m.named_modules() if isinstance(mod, DropPath)]
    assert paths == ([] if rate == 0 else ["visual_encoder.blocks.1.drop_path"]), paths
    img, ids, am, target = fx["pixel_values"], fx["input_ids"], fx["attention_mask"], fx["target"]
    torch.set_grad_enabled(True)
    torch.manual_seed(seed)
    out1 = m(img, ids.clone(), am, mode="multimodal")
    loss = torch.nn.functional.mse_loss(out1, target)
    loss.backward()
    out2 = m(img[:1], ids[:1].clone(), None, mode="multimodal")
    after = torch.rand(4)
    named = dict(m.named_parameters())
    d = {"out1": out1.detach(), "loss": loss.detach().reshape(1), "out2": out2.detach(), "after": after,
         "seed": torch.tensor([seed], dtype=torch.int64)}
    for k in GG.PARAMS:
        d["grad." + k] = named[k].grad.detach().clone()
    if kept:
        d["kept"] = torch.cat(kept)
        assert (d["kept"] == 0).any() and (d["kept"] != 0).any(), d["kept"]
    m.eval()
    with torch.no_grad():
        ev = m(img, ids.clone(), am, mode="multimodal")
    assert (ev - out1).abs().max() > 1e-3, "the dropout changes the output"
    path = os.path.join(GG.OUT, out_name)
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print(out_name, "loss %.6f" % loss.item(), "kept", d.get("kept"), "bytes", os.path.getsize(path))


def main():
    GB.install_timm_standins()
    sys.path.insert(0, os.path.join(GB.REFSRC, "ARLDM"))
    for v in VARIANTS:
        run(*v)


if __name__ == "__main__":
    main()
