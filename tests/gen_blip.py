#!/usr/bin/python3
"""tests/gen_blip.py - fixtures of the vit, bert and blip encoders (issue 13).

Builds tiny random towers, runs the reference implementations and writes
weights, inputs and outputs to tests/fixtures/blip/:

- transformers 4.30: ViTModel, BlipVisionModel, BertModel (plain, and as a
  decoder with cross-attention), BlipTextModel (encoder and decoder modes,
  encoder width != text width);
- AR-LDM's copy of BLIP (models/blip_override, imported from source):
  BLIP_Base in image, text and multimodal modes, its checkpoint stored the
  way AR-LDM holds it (under "mm_encoder."), and BLIP's VisionTransformer
  with a position grid interpolated by BLIP's interpolate_pos_embed
  (checkpoint grid 14x14 as at 224/16, input grid 24x24 as at 384/16).

Run from the source tree root:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_blip.py

Stand-ins (import plumbing only, no math changed): timm's PatchEmbed
(Conv2d with kernel = stride = patch, then flatten(2).transpose(1, 2)),
DropPath (identity; drop_path_rate is 0), trunc_normal_ / named_apply /
adapt_input_conv / _cfg / register_model (unused at inference: the weights
are overwritten), timm.models.hub.download_cached_file (never called);
BLIP_Base's `create_vit` builds the tiny VisionTransformer instead of ViT-B
and its `init_tokenizer` returns an object carrying `enc_token_id` only
(the id BLIP writes into the first text position).

Weights: norm weights 1 + noise, biases noise, embeddings 0.5 * noise, all
rounded to values exact in bf16 (see gen_sd.py); every file is f32 except
the BlipVisionModel one (bf16) so that conversion is exercised.
"""
import json
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "blip")
REFSRC = os.environ.get("REFSRC", "/root/refsrc")
torch.manual_seed(4321)
torch.set_grad_enabled(False)


def exactify(t):
    t = t.to(torch.bfloat16).float()
    small = t.abs() < 1e-4
    return torch.where(small, torch.sign(t + 1e-12) * 1e-4, t).to(torch.bfloat16).float()


def perturb(model):
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            v = 0.1 * torch.randn_like(p)
        elif p.ndim == 1:
            v = 1.0 + 0.2 * torch.randn_like(p)
        elif "embedding" in name or name.endswith("cls_token") or name.endswith("pos_embed"):
            v = 0.5 * torch.randn_like(p)
        else:
            v = 0.2 * torch.randn_like(p)
        p.copy_(exactify(v))


def save_dir(folder, config, state, dtype=torch.float32):
    d = os.path.join(OUT, folder)
    os.makedirs(d, exist_ok=True)
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    st = {k: v.detach().to(dtype).contiguous() for k, v in state.items()
          if not k.endswith("position_ids")}
    save_file(st, os.path.join(d, "model.safetensors"))


def save_io(name, d):
    out = {k: v.detach().clone().contiguous() for k, v in d.items()}
    save_file(out, os.path.join(OUT, name))


def hf_config(cfg):
    d = cfg.to_dict()
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "transformers_version"}


def hidden(prefix, hs):
    return {f"{prefix}hidden_states.{i}": h for i, h in enumerate(hs)}


# ---------------------------------------------------------------- stand-ins
def install_timm_standins():
    import transformers.modeling_utils  # noqa: F401  (it probes for timm: import it before the stand-ins)

    class PatchEmbed(nn.Module):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
            super().__init__()
            self.grid_size = (img_size // patch_size, img_size // patch_size)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class DropPath(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()

        def forward(self, x):
            return x

    def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
        with torch.no_grad():
            return t.normal_(mean, std).clamp_(a, b)

    mods = {}
    for n in ["timm", "timm.models", "timm.models.vision_transformer", "timm.models.registry",
              "timm.models.layers", "timm.models.helpers", "timm.models.hub",
              "fairscale", "fairscale.nn", "fairscale.nn.checkpoint",
              "fairscale.nn.checkpoint.checkpoint_activations"]:
        mods[n] = types.ModuleType(n)
        sys.modules[n] = mods[n]
    mods["timm.models.vision_transformer"]._cfg = lambda **kw: kw
    mods["timm.models.vision_transformer"].PatchEmbed = PatchEmbed
    mods["timm.models.registry"].register_model = lambda f: f
    mods["timm.models.layers"].trunc_normal_ = trunc_normal_
    mods["timm.models.layers"].DropPath = DropPath
    mods["timm.models.helpers"].named_apply = lambda fn, module, name="", **kw: module
    mods["timm.models.helpers"].adapt_input_conv = lambda in_chans, w: w
    mods["timm.models.hub"].download_cached_file = lambda *a, **k: None
    mods["fairscale.nn.checkpoint.checkpoint_activations"].checkpoint_wrapper = lambda m, **kw: m


# ---------------------------------------------------------------- transformers
def gen_vit_hf():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                    image_size=32, patch_size=8, num_channels=3, layer_norm_eps=1e-12, qkv_bias=True)
    m = ViTModel(cfg, add_pooling_layer=True).eval()
    perturb(m)
    save_dir("vit_hf", hf_config(cfg), m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    o = m(pixel_values=x, output_hidden_states=True)
    io = {"pixel_values": x, "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}
    io.update(hidden("", o.hidden_states))
    save_io("vit_hf_io.safetensors", io)


def gen_blip_vision():
    from transformers import BlipVisionConfig, BlipVisionModel
    cfg = BlipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, layer_norm_eps=1e-5, hidden_act="gelu")
    m = BlipVisionModel(cfg).eval()
    perturb(m)
    save_dir("blip_vision", hf_config(cfg), m.state_dict(), torch.bfloat16)
    x = torch.randn(2, 3, 32, 32)
    o = m(pixel_values=x, output_hidden_states=True)
    io = {"pixel_values": x, "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}
    io.update(hidden("", o.hidden_states))
    save_io("blip_vision_io.safetensors", io)


def gen_bert_hf():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12)
    m = BertModel(cfg, add_pooling_layer=True).eval()
    perturb(m)
    save_dir("bert_hf", hf_config(cfg), m.state_dict())
    ids = torch.randint(0, 99, (2, 9))
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, 6:] = 0
    tt = torch.zeros(2, 9, dtype=torch.long)
    tt[:, 5:] = 1
    o = m(input_ids=ids, attention_mask=am, token_type_ids=tt, output_hidden_states=True)
    io = {"input_ids": ids, "attention_mask": am, "token_type_ids": tt,
          "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}
    io.update(hidden("", o.hidden_states))
    o2 = m(input_ids=ids)
    io["plain.last_hidden_state"] = o2.last_hidden_state
    save_io("bert_hf_io.safetensors", io)

    # decoder with cross-attention (transformers' BertModel cross-attends as a decoder only)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=40, is_decoder=True,
                     add_cross_attention=True, hidden_act="gelu", layer_norm_eps=1e-12)
    m = BertModel(cfg, add_pooling_layer=False).eval()
    perturb(m)
    save_dir("bert_hf_cross", hf_config(cfg), m.state_dict())
    ctx = torch.randn(2, 5, 32)
    cm = torch.ones(2, 5, dtype=torch.long)
    cm[0, 3:] = 0
    o = m(input_ids=ids, attention_mask=am, encoder_hidden_states=ctx, encoder_attention_mask=cm)
    save_io("bert_hf_cross_io.safetensors", {"input_ids": ids, "attention_mask": am,
                                             "encoder_hidden_states": ctx, "encoder_attention_mask": cm,
                                             "last_hidden_state": o.last_hidden_state})


def gen_blip_text():
    from transformers import BlipTextConfig
    from transformers.models.blip.modeling_blip_text import BlipTextModel
    cfg = BlipTextConfig(vocab_size=90, hidden_size=32, encoder_hidden_size=48, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
                         layer_norm_eps=1e-12, hidden_act="gelu", is_decoder=True)
    m = BlipTextModel(cfg, add_pooling_layer=True).eval()
    perturb(m)
    save_dir("blip_text", hf_config(cfg), m.state_dict())
    ids = torch.randint(0, 90, (2, 8))
    am = torch.ones(2, 8, dtype=torch.long)
    am[0, 5:] = 0
    ctx = torch.randn(2, 6, 48)
    enc = m(input_ids=ids, attention_mask=am, encoder_hidden_states=ctx, is_decoder=False)
    dec = m(input_ids=ids, attention_mask=am, encoder_hidden_states=ctx, is_decoder=True)
    txt = m(input_ids=ids, attention_mask=am, is_decoder=False)
    save_io("blip_text_io.safetensors", {
        "input_ids": ids, "attention_mask": am, "encoder_hidden_states": ctx,
        "last_hidden_state": enc.last_hidden_state, "pooler_output": enc.pooler_output,
        "decoder.last_hidden_state": dec.last_hidden_state,
        "text.last_hidden_state": txt.last_hidden_state})


def gen_blip_hf():
    """A transformers BLIP folder (BlipForImageTextRetrieval: vision_model.*,
    text_encoder.*, plus projections and the ITM head the encoder ignores);
    the multimodal features computed as BLIP_Base does: [ENC] first,
    cross-attention to every image token."""
    from transformers import BlipConfig, BlipForImageTextRetrieval
    cfg = BlipConfig(
        text_config=dict(vocab_size=80, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, layer_norm_eps=1e-12),
        vision_config=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, layer_norm_eps=1e-5),
        image_text_hidden_size=16)
    m = BlipForImageTextRetrieval(cfg).eval()
    perturb(m)
    save_dir("blip_hf", hf_config(cfg), m.state_dict())
    img = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1, 78, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    am[0, 4:] = 0
    image = m.vision_model(pixel_values=img).last_hidden_state
    mm_ids = ids.clone()
    mm_ids[:, 0] = 79
    mm = m.text_encoder(input_ids=mm_ids, attention_mask=am, encoder_hidden_states=image,
                        encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long)).last_hidden_state
    text = m.text_encoder(input_ids=ids, attention_mask=am).last_hidden_state
    save_io("blip_hf_io.safetensors", {
        "pixel_values": img, "input_ids": ids, "attention_mask": am,
        "image.last_hidden_state": image, "text.last_hidden_state": text,
        "multimodal.last_hidden_state": mm})


# ---------------------------------------------------------------- BLIP (AR-LDM's copy)
def gen_blip_base():
    install_timm_standins()
    sys.path.insert(0, os.path.join(REFSRC, "ARLDM"))
    import models.blip_override.blip as blip
    from models.blip_override.vit import VisionTransformer, interpolate_pos_embed

    VW, ENC_ID, VOCAB = 48, 97, 98

    def tiny_vit(vit, image_size, *a, **k):
        return VisionTransformer(img_size=image_size, patch_size=8, embed_dim=VW, depth=2, num_heads=4,
                                 mlp_ratio=2.0), VW

    blip.create_vit = tiny_vit
    blip.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=ENC_ID)
    med = dict(json.load(open(os.path.join(REFSRC, "ARLDM", "models", "blip_override", "med_config.json"))))
    med.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=40, vocab_size=96)
    os.makedirs(os.path.join(OUT, "blip_base"), exist_ok=True)
    med_path = os.path.join(OUT, "blip_base", "med_config.json")
    with open(med_path, "w") as f:
        json.dump(med, f, indent=2, sort_keys=True)
    m = blip.BLIP_Base(med_config=med_path, image_size=32, vit="large").eval()
    perturb(m)
    # AR-LDM resizes the word embeddings to its tokenizer (30524+ rows); the
    # checkpoint then carries them all: 96 -> 98 rows here.
    m.text_encoder.resize_token_embeddings(VOCAB)
    we = m.text_encoder.embeddings.word_embeddings.weight
    we[96:] = exactify(0.5 * torch.randn(VOCAB - 96, 32))
    state = {"mm_encoder." + k: v for k, v in m.state_dict().items()}
    save_dir("blip_base", None, state)

    img = torch.randn(2, 3, 32, 32)
    ids = torch.randint(1, 96, (2, 7))
    ids[:, 0] = 95  # [CLS]-like first token, replaced by [ENC] in multimodal mode
    ids[1, 2] = 96  # a row added by the resize
    am = torch.ones(2, 7, dtype=torch.long)
    am[1, 5:] = 0
    ids_in = ids.clone()
    image = m(img, None, None, mode="image")
    text = m(img, ids.clone(), am, mode="text")
    mm_ids = ids.clone()
    mm = m(img, mm_ids, am, mode="multimodal")
    assert mm_ids[0, 0].item() == ENC_ID  # BLIP writes [ENC] in place
    save_io("blip_base_io.safetensors", {
        "pixel_values": img, "input_ids": ids_in, "attention_mask": am,
        "image.last_hidden_state": image, "text.last_hidden_state": text,
        "multimodal.last_hidden_state": mm})

    # interpolated position grid: checkpoint at 56/4 (14x14), input at 96/4 (24x24)
    src = VisionTransformer(img_size=56, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()
    perturb(src)
    ck = src.state_dict()
    save_dir("blip_vit_grid14", None, ck)
    dst = VisionTransformer(img_size=96, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0).eval()
    ck2 = dict(ck)
    ck2["pos_embed"] = interpolate_pos_embed(ck["pos_embed"], dst)
    dst.load_state_dict(ck2)
    x = torch.randn(1, 3, 96, 96)
    x56 = torch.randn(1, 3, 56, 56)
    save_io("blip_vit_grid_io.safetensors", {
        "pixel_values": x, "last_hidden_state": dst(x),
        "grid14.pixel_values": x56, "grid14.last_hidden_state": src(x56)})


def main():
    os.makedirs(OUT, exist_ok=True)
    gen_vit_hf()
    gen_blip_vision()
    gen_bert_hf()
    gen_blip_text()
    gen_blip_base()
    gen_blip_hf()
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
