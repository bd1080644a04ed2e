#!/usr/bin/python3
"""tests/gen_blip_grad.py - the tape through the BLIP encoder (issue 16).

Builds a tiny BLIP_Base from BLIP's code as AR-LDM carries it
(models/blip_override, imported from source; stand-ins of gen_blip.py), with
random bf16-exact weights and a word table of the config's size (so BERT's
nn.Embedding keeps padding_idx = pad_token_id = 0, unlike AR-LDM's resized
one), runs the multimodal mode in eval mode (no dropout) on two images and
captions with padding, takes loss = mse(last_hidden_state, T) for a random
T, loss.backward(), and writes to tests/fixtures/grad/:

- blip_grad_med_config.json;
- blip_grad.safetensors: the weights under "model." (bf16), the inputs,
  the target, the loss, the output and grad.NAME for named parameters
  (the word table, whose padding row gets none; the embedding LayerNorm;
  self- and cross-attention and MLP weights of the text layers; the ViT's
  fused qkv, its projection, the patch embedding, the class token and the
  position table).

Run from the source tree root:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_blip_grad.py
"""
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_blip as GB  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "grad")
VW, VOCAB, ENC_ID = 24, 40, 39

PARAMS = [
    "text_encoder.embeddings.word_embeddings.weight",
    "text_encoder.embeddings.position_embeddings.weight",
    "text_encoder.embeddings.LayerNorm.weight",
    "text_encoder.encoder.layer.0.attention.self.query.weight",
    "text_encoder.encoder.layer.0.attention.self.value.bias",
    "text_encoder.encoder.layer.0.crossattention.self.key.weight",
    "text_encoder.encoder.layer.1.crossattention.self.value.weight",
    "text_encoder.encoder.layer.1.intermediate.dense.weight",
    "text_encoder.encoder.layer.1.output.LayerNorm.bias",
    "visual_encoder.cls_token",
    "visual_encoder.pos_embed",
    "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.blocks.0.attn.qkv.weight",
    "visual_encoder.blocks.0.attn.qkv.bias",
    "visual_encoder.blocks.1.attn.proj.weight",
    "visual_encoder.norm.weight",
]


def main():
    GB.install_timm_standins()
    sys.path.insert(0, os.path.join(GB.REFSRC, "ARLDM"))
    import models.blip_override.blip as blip
    from models.blip_override.vit import VisionTransformer

    blip.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(
        img_size=image_size, patch_size=8, embed_dim=VW, depth=2, num_heads=4, mlp_ratio=2.0), VW)
    blip.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=ENC_ID)
    med = dict(json.load(open(os.path.join(GB.REFSRC, "ARLDM", "models", "blip_override", "med_config.json"))))
    med.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=12, vocab_size=VOCAB)
    os.makedirs(OUT, exist_ok=True)
    med_path = os.path.join(OUT, "blip_grad_med_config.json")
    with open(med_path, "w") as f:
        json.dump(med, f, indent=2, sort_keys=True)
    torch.manual_seed(2468)
    m = blip.BLIP_Base(med_config=med_path, image_size=16, vit="large").eval()
    torch.set_grad_enabled(False)
    GB.perturb(m)
    torch.set_grad_enabled(True)
    assert m.text_encoder.embeddings.word_embeddings.padding_idx == 0
    img = torch.randn(2, 3, 16, 16)
    ids = torch.randint(3, VOCAB - 1, (2, 7))
    ids[:, 0] = 1
    ids[0, 5:] = 0   # [PAD]: the padding row of the word table
    ids[1, 6] = 0
    am = torch.ones(2, 7, dtype=torch.long)
    am[0, 5:] = 0
    am[1, 6] = 0
    target = torch.randn(2, 7, 32)
    out = m(img, ids.clone(), am, mode="multimodal")
    loss = torch.nn.functional.mse_loss(out, target)
    loss.backward()
    named = dict(m.named_parameters())
    d = {"model." + k: v.detach().to(torch.bfloat16) for k, v in m.state_dict().items()
         if not k.endswith("position_ids")}
    d.update({"pixel_values": img, "input_ids": ids, "attention_mask": am, "target": target,
              "last_hidden_state": out.detach(), "loss": loss.detach().reshape(1)})
    for k in PARAMS:
        d["grad." + k] = named[k].grad.detach().clone()
    assert d["grad.text_encoder.embeddings.word_embeddings.weight"][0].abs().max() == 0
    save_file({k: v.contiguous() for k, v in d.items()}, os.path.join(OUT, "blip_grad.safetensors"))
    print("loss %.6f" % loss.item(), "bytes", os.path.getsize(os.path.join(OUT, "blip_grad.safetensors")))


if __name__ == "__main__":
    main()
