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

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_blip_dropout.py
"""
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_blip as GB  # noqa: E402
import gen_blip_grad as GG  # noqa: E402

SEED = 7


def main():
    GB.install_timm_standins()
    sys.path.insert(0, os.path.join(GB.REFSRC, "ARLDM"))
    import models.blip_override.blip as blip
    from models.blip_override.vit import VisionTransformer

    blip.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(
        img_size=image_size, patch_size=8, embed_dim=GG.VW, depth=2, num_heads=4, mlp_ratio=2.0), GG.VW)
    blip.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=GG.ENC_ID)
    fx = load_file(os.path.join(GG.OUT, "blip_grad.safetensors"))
    m = blip.BLIP_Base(med_config=os.path.join(GG.OUT, "blip_grad_med_config.json"), image_size=16, vit="large")
    state = {k[6:]: v.float() for k, v in fx.items() if k.startswith("model.")}
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    m.train()
    drawing = [n for n, mod in m.named_modules() if isinstance(mod, nn.Dropout) and mod.p > 0]
    assert drawing and all(n.startswith("text_encoder.") for n in drawing), drawing
    assert not any(type(mod).__name__ == "DropPath" for mod in m.modules())
    img, ids, am, target = fx["pixel_values"], fx["input_ids"], fx["attention_mask"], fx["target"]
    torch.set_grad_enabled(True)
    torch.manual_seed(SEED)
    out1 = m(img, ids.clone(), am, mode="multimodal")
    loss = torch.nn.functional.mse_loss(out1, target)
    loss.backward()
    out2 = m(img[:1], ids[:1].clone(), None, mode="multimodal")
    after = torch.rand(4)
    named = dict(m.named_parameters())
    d = {"out1": out1.detach(), "loss": loss.detach().reshape(1), "out2": out2.detach(), "after": after}
    for k in GG.PARAMS:
        d["grad." + k] = named[k].grad.detach().clone()
    m.eval()
    with torch.no_grad():
        ev = m(img, ids.clone(), am, mode="multimodal")
    assert (ev - out1).abs().max() > 1e-3, "the dropout changes the output"
    path = os.path.join(GG.OUT, "blip_dropout.safetensors")
    save_file({k: v.contiguous() for k, v in d.items()}, path)
    print("loss %.6f" % loss.item(), "bytes", os.path.getsize(path))


if __name__ == "__main__":
    main()
