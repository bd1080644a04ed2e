#!/usr/bin/python3
"""tests/gen_sd.py - fixtures for the latent-diffusion stack (issue 5).

Builds tiny random CLIPTextModel / AutoencoderKL / UNet2DConditionModel
parts, runs the reference implementations (diffusers 0.19.3, transformers
4.30.0, torch 1.13 on CPU) and writes weights, inputs and outputs to
tests/fixtures/sd/. Run from the source tree root:

  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy /usr/bin/python3 tests/gen_sd.py

Weights: every norm weight is 1 + noise, every bias is noise (never 0), and
every value is rounded so that it is exact in bf16, f16 and f32; the parts
are stored in different dtypes (unet and vae f16, text encoder bf16, the
single-file checkpoint bf16, the extra variants f32) so that the loaders of all three are exercised
on identical values.
"""
import gzip
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import transformers.tokenization_utils_base as tub

# Without the Rust `tokenizers` package, transformers 4.30 needs AddedToken
# to print as its content for special tokens to resolve (see REFERENCE.md).
if not hasattr(tub.AddedToken, "__str__") or tub.AddedToken.__str__ is object.__str__:
    tub.AddedToken.__str__ = lambda self: self.content

from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sd")
REFSRC = os.environ.get("REFSRC", "/root/refsrc")
torch.manual_seed(1234)
torch.set_grad_enabled(False)


def exactify(t):
    """Round to values exact in bf16 and f16 (no f16 subnormals lost)."""
    t = t.to(torch.bfloat16).float()
    small = t.abs() < 1e-4
    t = torch.where(small, torch.sign(t + 1e-12) * 1e-4, t).to(torch.bfloat16).float()
    assert torch.equal(t.half().float(), t)
    return t


def perturb(model):
    sd = model.state_dict()
    for name, p in model.named_parameters():
        if name.endswith(".bias") or name.endswith("_bias"):
            v = 0.1 * torch.randn_like(p)
        elif p.ndim == 1 and ("norm" in name or "ln" in name):
            v = 1.0 + 0.2 * torch.randn_like(p)
        elif "embedding" in name:
            v = 0.5 * torch.randn_like(p)
        else:
            v = p.clone()
        p.copy_(exactify(v))
    return sd


def save_part(folder, config, state, filename, dtype):
    os.makedirs(os.path.join(OUT, folder), exist_ok=True)
    with open(os.path.join(OUT, folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    st = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    save_file(st, os.path.join(OUT, folder, filename))


def save_tensors(name, d):
    out = {}
    for k, v in d.items():
        v = v.detach().contiguous()
        if v.dtype == torch.float64:
            v = v.float()
        out[k] = v
    save_file(out, os.path.join(OUT, name))


def relerr(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(n_merges=400):
    """A reduced CLIP BPE: the first n_merges merges of OpenAI's file."""
    path = os.path.join(REFSRC, "openai-CLIP", "clip", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1:1 + n_merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m.split()))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    d = os.path.join(OUT, "pipe", "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f, indent=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 77, "do_lower_case": True,
                   "tokenizer_class": "CLIPTokenizer", "errors": "replace"}, f, indent=2)
    tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                        pad_token="<|endoftext|>")
    tok.model_max_length = 77
    return tok, len(vocab)


# ---------------------------------------------------------------- parts
def clip_config(vocab, act="quick_gelu", eos=None):
    return CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2,
                          max_position_embeddings=77, hidden_act=act,
                          layer_norm_eps=1e-5, bos_token_id=vocab - 2,
                          eos_token_id=vocab - 1, pad_token_id=1,
                          projection_dim=32)


UNET_CFG = dict(sample_size=16, in_channels=4, out_channels=4,
                block_out_channels=(16, 32), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4)

UNET_V2_CFG = dict(sample_size=8, in_channels=4, out_channels=4,
                   block_out_channels=(8, 16), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=4,
                   use_linear_projection=True, upcast_attention=True,
                   flip_sin_to_cos=False, freq_shift=1)

VAE_CFG = dict(in_channels=3, out_channels=3,
               down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2,
               block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
               norm_num_groups=4, sample_size=64, scaling_factor=0.18215)


def cfg_dict(model):
    d = dict(model.config)
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
    d["_class_name"] = type(model).__name__
    d["_diffusers_version"] = "0.19.3"
    return {k: v for k, v in d.items() if not k.startswith("_use_default")}


# ---------------------------------------------------------------- single file
def unet_to_ldm(sd, cfg):
    """diffusers UNet names -> original LDM names, any depth (generalised
    from diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py)."""
    L = cfg["layers_per_block"]
    nb = len(cfg["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in cfg["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection")]
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    pre = []
    for i in range(nb):
        for j in range(L):
            pre.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i*(L+1)+j+1}.0.", True))
            if down_attn[i]:
                pre.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i*(L+1)+j+1}.1.", False))
        if i < nb - 1:
            pre.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i+1)*(L+1)}.0.op.", False))
        for j in range(L + 1):
            pre.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i*(L+1)+j}.0.", True))
            if up_attn[i]:
                pre.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i*(L+1)+j}.1.", False))
        if i < nb - 1:
            pre.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i*(L+1)+L}.{2 if up_attn[i] else 1}.", False))
    pre.append(("mid_block.resnets.0.", "middle_block.0.", True))
    pre.append(("mid_block.attentions.0.", "middle_block.1.", False))
    pre.append(("mid_block.resnets.1.", "middle_block.2.", True))
    out = {}
    for k, v in sd.items():
        base, leaf = k.rsplit(".", 1)
        if base in fixed:
            out["model.diffusion_model." + fixed[base] + "." + leaf] = v
            continue
        for hp, sp, isres in pre:
            if k.startswith(hp):
                rest = k[len(hp):]
                if isres:
                    for a, b in res:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                            break
                out["model.diffusion_model." + sp + rest] = v
                break
        else:
            raise KeyError(k)
    return out


def vae_to_ldm(sd, cfg):
    nb = len(cfg["block_out_channels"])
    L = cfg["layers_per_block"]
    pre = []
    for i in range(nb):
        for j in range(L):
            pre.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        pre.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        for j in range(L + 1):
            pre.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{nb-1-i}.block.{j}."))
        pre.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{nb-1-i}.upsample."))
    for part in ("encoder", "decoder"):
        pre.append((f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."))
        pre.append((f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."))
        pre.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        pre.append((f"{part}.conv_norm_out.", f"{part}.norm_out."))
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        nk = k
        for hp, sp in pre:
            if k.startswith(hp):
                nk = sp + k[len(hp):]
                break
        nk = nk.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in nk:
            head, rest = nk.split(".mid.attn_1.")
            mod, leaf = rest.rsplit(".", 1)
            nk = head + ".mid.attn_1." + attn[mod] + "." + leaf
            if leaf == "weight" and mod != "group_norm":
                v = v.reshape(*v.shape, 1, 1)
        out["first_stage_model." + nk] = v
    return out


# ---------------------------------------------------------------- main
def main():
    os.makedirs(OUT, exist_ok=True)
    tok, nvocab = make_tokenizer()

    # ---- CLIP text encoder (bf16 file) ----
    clip = CLIPTextModel(clip_config(nvocab)).eval()
    clip_sd = perturb(clip)
    ccfg = clip.config.to_dict()
    ccfg["architectures"] = ["CLIPTextModel"]
    ccfg["_class_name"] = "CLIPTextModel"
    save_part("pipe/text_encoder", ccfg, clip_sd, "model.safetensors", torch.bfloat16)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, nvocab - 2, (2, 12), generator=g)
    ids[:, 0] = nvocab - 2
    ids[0, 7:] = nvocab - 1          # eos then padding with eos (as SD pads)
    ids[1, 11] = nvocab - 1
    am = torch.ones(2, 12, dtype=torch.int64)
    am[0, 8:] = 0
    o1 = clip(input_ids=ids)
    o2 = clip(input_ids=ids, attention_mask=am)
    save_tensors("clip_text_io.safetensors", {
        "input_ids": ids, "attention_mask": am,
        "last_hidden_state": o1.last_hidden_state, "pooler_output": o1.pooler_output,
        "masked.last_hidden_state": o2.last_hidden_state, "masked.pooler_output": o2.pooler_output})
    # a gelu variant (f32, its own small vocab)
    clip_g = CLIPTextModel(clip_config(300, act="gelu")).eval()
    clipg_sd = perturb(clip_g)
    gcfg = clip_g.config.to_dict()
    gcfg["architectures"] = ["CLIPTextModel"]
    gcfg["_class_name"] = "CLIPTextModel"
    save_part("clip_gelu", gcfg, clipg_sd, "model.safetensors", torch.float32)
    ids_g = torch.randint(0, 298, (1, 9), generator=g)
    ids_g[0, 8] = 299
    og = clip_g(input_ids=ids_g)
    save_tensors("clip_gelu_io.safetensors", {"input_ids": ids_g,
                 "last_hidden_state": og.last_hidden_state, "pooler_output": og.pooler_output})

    # ---- VAE (f16 file) ----
    vae = AutoencoderKL(**VAE_CFG).eval()
    vae_sd = perturb(vae)
    save_part("pipe/vae", cfg_dict(vae), vae_sd, "diffusion_pytorch_model.safetensors", torch.float16)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    dist = vae.encode(x).latent_dist
    noise = torch.randn(dist.mean.shape, generator=g)
    lat_sample = dist.mean + dist.std * noise
    z = torch.randn(1, 4, 16, 16, generator=g)
    dec = vae.decode(z).sample
    save_tensors("vae_io.safetensors", {"sample": x, "latent_mean": dist.mean,
                 "latent_logvar": dist.logvar, "noise": noise, "latent_sample": lat_sample,
                 "latents": z, "decoded": dec})

    # ---- UNet (f16 file) ----
    unet = UNet2DConditionModel(**UNET_CFG).eval()
    unet_sd = perturb(unet)
    save_part("pipe/unet", cfg_dict(unet), unet_sd, "diffusion_pytorch_model.safetensors", torch.float16)
    s = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 621], dtype=torch.int64)
    ehs = torch.randn(2, 7, 32, generator=g)
    mask = torch.zeros(2, 7, dtype=torch.bool)   # AR-LDM: True = do not attend
    mask[0, 5:] = True
    mask[1, 0:2] = True
    mask[1, 4] = True
    out = unet(s, t, ehs).sample
    # diffusers 0.19 takes 1 = keep and adds (1 - m) * -10000 to the scores;
    # exp(-10000) is exactly 0 in f32, so this equals AR-LDM's -inf fill.
    out_m = unet(s, t, ehs, encoder_attention_mask=(~mask).float()).sample
    save_tensors("unet_io.safetensors", {"sample": s, "timestep": t,
                 "encoder_hidden_states": ehs, "encoder_attention_mask": mask.to(torch.uint8),
                 "out_sample": out, "out_sample_masked": out_m})

    # ---- UNet with SD-2.x options (f32) ----
    unet2 = UNet2DConditionModel(**UNET_V2_CFG).eval()
    unet2_sd = perturb(unet2)
    save_part("unet_v2", cfg_dict(unet2), unet2_sd, "diffusion_pytorch_model.safetensors", torch.float32)
    s2 = torch.randn(1, 4, 8, 8, generator=g)
    t2 = torch.tensor([999], dtype=torch.int64)
    e2 = torch.randn(1, 5, 32, generator=g)
    save_tensors("unet_v2_io.safetensors", {"sample": s2, "timestep": t2,
                 "encoder_hidden_states": e2, "out_sample": unet2(s2, t2, e2).sample})

    # ---- scheduler + model_index ----
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.save_pretrained(os.path.join(OUT, "pipe", "scheduler"))
    with open(os.path.join(OUT, "pipe", "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.19.3",
                   "scheduler": ["diffusers", "DDIMScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"],
                   "safety_checker": [None, None], "feature_extractor": [None, None],
                   "requires_safety_checker": False}, f, indent=2)

    # ---- single file (original LDM layout, bf16) ----
    single = {}
    single.update(unet_to_ldm(unet_sd, UNET_CFG))
    single.update(vae_to_ldm(vae_sd, VAE_CFG))
    single.update({"cond_stage_model.transformer." + k: v for k, v in clip_sd.items()})
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in single.items()},
              os.path.join(OUT, "sd_tiny_single.safetensors"))

    # ---- whole txt2img: 10 DDIM steps at 64x64 with guidance ----
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cat sitting on the mat", "two dogs, running!"]
    negative = "blurry"
    seed = 42
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn((2, 4, 32, 32), generator=gen)
    img = pipe(prompts, negative_prompt=[negative] * 2, height=64, width=64,
               num_inference_steps=10, guidance_scale=7.5, latents=latents.clone(),
               output_type="np").images
    img = torch.from_numpy(img)
    tk = tok(prompts, padding="max_length", max_length=77, return_tensors="pt")
    tn = tok([negative], padding="max_length", max_length=77, return_tensors="pt")
    save_tensors("txt2img_io.safetensors", {"latents": latents, "images": img, "input_ids": tk.input_ids, "negative_input_ids": tn.input_ids})
    with open(os.path.join(OUT, "txt2img.json"), "w") as f:
        json.dump({"prompts": prompts, "negative_prompt": negative, "seed": seed, "steps": 10,
                   "guidance_scale": 7.5, "width": 64, "height": 64}, f, indent=2)
    with open(os.path.join(OUT, "txt2img_prompts.txt"), "w") as f:
        f.write("\n".join(prompts) + "\n")
    print("unet |out| max %.4g, masked differs by %.4g" % (out.abs().max(), (out - out_m).abs().max()))
    print("image range %.3f..%.3f, saturated %.3f" % (img.min(), img.max(),
          float(((img <= 0) | (img >= 1)).float().mean())))
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print("fixtures total %.2f MB" % (total / 1e6))


if __name__ == "__main__":
    main()
