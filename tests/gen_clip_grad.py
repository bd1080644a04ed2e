#!/usr/bin/python3
"""tests/gen_clip_grad.py - the tape through the CLIP text encoder (issue 16).

Loads the tiny CLIPTextModel of tests/fixtures/sd/pipe/text_encoder (written
by gen_sd.py; its values are exact in bf16, so the f32 model equals the
file) into transformers 4.30.0 in f32, runs the ids and padding mask of
clip_text_io.safetensors, takes loss = mse(last_hidden_state, T1) +
mse(pooler_output, T2) for random targets, loss.backward(), and writes the
targets, the loss and the gradients of a set of named parameters to
tests/fixtures/grad/clip_grad.safetensors. Run from the source tree root:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_clip_grad.py
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP = os.path.join(HERE, "fixtures", "sd", "pipe", "text_encoder")
IO = os.path.join(HERE, "fixtures", "sd", "clip_text_io.safetensors")
OUT = os.path.join(HERE, "fixtures", "grad", "clip_grad.safetensors")

PARAMS = [
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.encoder.layers.0.layer_norm1.weight",
    "text_model.encoder.layers.0.self_attn.q_proj.weight",
    "text_model.encoder.layers.0.self_attn.q_proj.bias",  # (k_proj.bias: 0 in exact arithmetic)
    "text_model.encoder.layers.0.self_attn.v_proj.weight",
    "text_model.encoder.layers.0.self_attn.out_proj.weight",
    "text_model.encoder.layers.0.mlp.fc1.weight",
    "text_model.encoder.layers.1.mlp.fc2.bias",
    "text_model.encoder.layers.1.layer_norm2.bias",
    "text_model.final_layer_norm.weight",
    "text_model.final_layer_norm.bias",
]


def main():
    with open(os.path.join(CLIP, "config.json")) as f:
        cfg = CLIPTextConfig(**{k: v for k, v in json.load(f).items() if not k.startswith("_")})
    clip = CLIPTextModel(cfg).eval()
    sd = load_file(os.path.join(CLIP, "model.safetensors"))
    missing, unexpected = clip.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    io = load_file(IO)
    ids, am = io["input_ids"], io["attention_mask"]
    g = torch.Generator().manual_seed(16)
    out = clip(input_ids=ids, attention_mask=am)
    t1 = torch.randn(out.last_hidden_state.shape, generator=g)
    t2 = torch.randn(out.pooler_output.shape, generator=g)
    loss = (torch.nn.functional.mse_loss(out.last_hidden_state, t1) +
            torch.nn.functional.mse_loss(out.pooler_output, t2))
    loss.backward()
    params = dict(clip.named_parameters())
    d = {"target.last_hidden_state": t1, "target.pooler_output": t2, "loss": loss.detach().reshape(1)}
    for n in PARAMS:
        d["grad." + n] = params[n].grad
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in d.items()}, OUT)
    print("loss %.6g, %d gradients of %d parameters, %d bytes" %
          (loss.item(), len(PARAMS), len(params), os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
