#!/usr/bin/python3
"""tests/gen_txt2img_noise.py - txt2img with the schedulers that draw noise (issue 11).

diffusers 0.19.3's StableDiffusionPipeline on the tiny model of
tests/fixtures/sd/pipe (written by tests/gen_sd.py; loaded here unchanged),
with generators instead of given latents, so that the random stream itself
is under test: the initial latents randn((B, C, h, w)) and then, for every
step whose scheduler draws, randn of the latents' shape from the same
generator; with a list of generators each image draws [1, C, h, w] from its
own. Writes tests/fixtures/sd/txt2img_noise.safetensors: for each case the
images as diffusers' numpy_to_pil rounds them (u8 [B, 32, 32, 3]) and the
final latents before decoding (f32 [B, 4, 16, 16], from the step callback).

Run from the source tree root:
  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy /usr/bin/python3 tests/gen_txt2img_noise.py

Cases (tests/test_plugin_txt2img.c builds the same configurations):
  SCHED/seed     seed 3: one generator, 2 prompts
  SCHED/seeds    seeds [7, 8]: one generator per image
  SCHED/per2     seed 3 and num_images_per_prompt 2: 4 images
  ddpm0/batches  DDPM with steps_offset 0 (no draw at t = 0), seed 5, the two
                 prompts as two pipeline calls sharing one generator (what
                 txt2img's batch_size = 1 does)
  euler/batches  the same with Euler (s_churn = 0): its step draws noise it
                 does not use, which moves the second call's latents
SCHED: ddpm, euler_ancestral, ddim (eta = 1), dpmpp_sde (DPM-Solver++ 2M,
algorithm_type sde-dpmsolver++), all from the pipe's scheduler config (SD's
scaled_linear betas, steps_offset 1, leading spacing).
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import transformers.tokenization_utils_base as tub

if not hasattr(tub.AddedToken, "__str__") or tub.AddedToken.__str__ is object.__str__:
    tub.AddedToken.__str__ = lambda self: self.content  # see REFERENCE.md

from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

FX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "sd")
PIPE = os.path.join(FX, "pipe")
torch.set_grad_enabled(False)

PROMPTS = ["a red cat sitting on the mat", "two dogs, running!"]
NEGATIVE = "blurry"
STEPS, SIZE, GUIDANCE = 4, 32, 7.5


def load_pipe():
    tok = CLIPTokenizer(os.path.join(PIPE, "tokenizer", "vocab.json"), os.path.join(PIPE, "tokenizer", "merges.txt"),
                        pad_token="<|endoftext|>")
    tok.model_max_length = 77
    # the file has no "format" metadata, which transformers' from_pretrained wants
    clip = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(PIPE, "text_encoder"))).eval()
    sd = load_file(os.path.join(PIPE, "text_encoder", "model.safetensors"))
    clip.load_state_dict({k: v.to(clip.state_dict()[k].dtype) for k, v in sd.items()}, strict=True)
    vae = AutoencoderKL.from_pretrained(os.path.join(PIPE, "vae"), torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(PIPE, "unet"), torch_dtype=torch.float32).eval()
    sched = DDIMScheduler.from_pretrained(os.path.join(PIPE, "scheduler"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompts, generator, per_prompt=1, eta=0.0):
    final = {}

    def keep(i, t, latents):
        final["latents"] = latents.clone()

    img = pipe(prompts, negative_prompt=[NEGATIVE] * len(prompts), height=SIZE, width=SIZE,
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, num_images_per_prompt=per_prompt,
               generator=generator, eta=eta, output_type="np", callback=keep, callback_steps=1).images
    u8 = torch.from_numpy((img * 255).round().astype(np.uint8))  # numpy_to_pil's rounding
    return u8, final["latents"]


def main():
    pipe = load_pipe()
    # the loaded model is gen_sd.py's: its DDIM run from the stored latents
    io = load_file(os.path.join(FX, "txt2img_io.safetensors"))
    ref = pipe(PROMPTS, negative_prompt=[NEGATIVE] * 2, height=64, width=64, num_inference_steps=10,
               guidance_scale=7.5, latents=io["latents"].clone(), output_type="np").images
    d = float((torch.from_numpy(ref) - io["images"].float()).abs().max())
    assert d < 1e-5, "the pipe folder does not reproduce txt2img_io.safetensors (%g)" % d

    base = dict(pipe.scheduler.config)
    out, notes = {}, {}
    for name, cls, eta, extra in (("ddpm", DDPMScheduler, 0.0, {}),
                                  ("euler_ancestral", EulerAncestralDiscreteScheduler, 0.0, {}),
                                  ("ddim", DDIMScheduler, 1.0, {}),
                                  ("dpmpp_sde", DPMSolverMultistepScheduler, 0.0,
                                   {"algorithm_type": "sde-dpmsolver++"})):
        pipe.scheduler = cls.from_config(base, **extra)
        cases = {
            "seed": (PROMPTS, torch.Generator().manual_seed(3), 1),
            "seeds": (PROMPTS, [torch.Generator().manual_seed(s) for s in (7, 8)], 1),
            "per2": (PROMPTS, torch.Generator().manual_seed(3), 2),
        }
        for case, (prompts, gen, per) in cases.items():
            img, lat = run(pipe, prompts, gen, per, eta)
            out["%s/%s/images" % (name, case)] = img
            out["%s/%s/latents" % (name, case)] = lat
        notes[name] = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
        notes[name]["eta"] = eta
    # two calls on one generator: DDPM whose last timestep is 0 (no draw
    # there), Euler (draws unused noise)
    for name, sched in (("ddpm0", DDPMScheduler.from_config(base, steps_offset=0)),
                        ("euler", EulerDiscreteScheduler.from_config(base))):
        pipe.scheduler = sched
        if name == "ddpm0":
            sched.set_timesteps(STEPS)
            assert int(sched.timesteps[-1]) == 0
        gen = torch.Generator().manual_seed(5)
        parts = [run(pipe, [p], gen) for p in PROMPTS]
        out["%s/batches/images" % name] = torch.cat([p[0] for p in parts])
        out["%s/batches/latents" % name] = torch.cat([p[1] for p in parts])
        notes[name] = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}

    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(FX, "txt2img_noise.safetensors"))
    with open(os.path.join(FX, "txt2img_noise.json"), "w") as f:
        json.dump({"prompts": PROMPTS, "negative_prompt": NEGATIVE, "steps": STEPS, "width": SIZE,
                   "height": SIZE, "guidance_scale": GUIDANCE, "seed": 3, "seeds": [7, 8],
                   "batches_seed": 5, "schedulers": notes}, f, indent=2, sort_keys=True)
    for k, v in out.items():
        if k.endswith("latents"):
            print("%-28s |latents| max %.3f" % (k, float(v.abs().max())))
    print("wrote %s (%d bytes)" % (FX, os.path.getsize(os.path.join(FX, "txt2img_noise.safetensors"))))


if __name__ == "__main__":
    main()
