#!/usr/bin/env python3
"""tests/gen_clip_vision.py - fixtures of the vit encoder's CLIP kind from
transformers 4.30 at tiny random sizes: CLIPVisionModelWithProjection (its
own folder) and the vision half of a CLIPModel folder.

Run in the reference environment (see ../shared/REFERENCE.md):
  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_clip_vision.py
Writes tests/fixtures/blip/{clip_vision,clip_model}/ and *_io.safetensors
(the tower fixtures share tests/fixtures/blip and its test helpers).
"""
import json
import os

import torch
from safetensors.torch import save_file
from genutil import perturb_clip as perturb

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "blip")
torch.manual_seed(1515)
torch.set_grad_enabled(False)


def save_dir(folder, config, state):
    d = os.path.join(OUT, folder)
    os.makedirs(d, exist_ok=True)
    cfg = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    st = {k: v.detach().float().contiguous() for k, v in state.items() if not k.endswith("position_ids")}
    save_file(st, os.path.join(d, "model.safetensors"))


def save_io(name, d):
    save_file({k: v.detach().clone().contiguous() for k, v in d.items()}, os.path.join(OUT, name))


VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def gen_vision():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    cfg = CLIPVisionConfig(**VISION)
    m = CLIPVisionModelWithProjection(cfg).eval()
    perturb(m)
    save_dir("clip_vision", cfg, m.state_dict())
    x = torch.randn(3, 3, 32, 32)
    o = m(pixel_values=x, output_hidden_states=True)
    io = {"pixel_values": x, "image_embeds": o.image_embeds, "last_hidden_state": o.last_hidden_state}
    # pooler_output: post_layernorm of the CLS row (what the projection reads)
    io["pooler_output"] = m.vision_model(pixel_values=x).pooler_output
    io.update({f"hidden_states.{i}": h for i, h in enumerate(o.hidden_states)})
    save_io("clip_vision_io.safetensors", io)


def gen_model():
    from transformers import CLIPConfig, CLIPModel
    text = dict(vocab_size=99, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=16, hidden_act="quick_gelu")
    vision = dict(VISION, hidden_size=40, intermediate_size=56, num_attention_heads=5, patch_size=16, image_size=48)
    vision.pop("projection_dim")
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
    m = CLIPModel(cfg).eval()
    perturb(m)
    save_dir("clip_model", cfg, m.state_dict())
    x = torch.randn(2, 3, 48, 48)
    ids = torch.tensor([[0, 5, 7, 98, 1, 1], [0, 9, 98, 1, 1, 1]])
    io = {"pixel_values": x, "image_embeds": m.get_image_features(pixel_values=x),
          "input_ids": ids, "text_embeds": m.get_text_features(input_ids=ids)}
    save_io("clip_model_io.safetensors", io)


def main():
    gen_vision()
    gen_model()


if __name__ == "__main__":
    main()
