#!/usr/bin/python3
"""bench/arldm.py - one AR-LDM story (visualization: 5 frames) drawn by
mmpipe's story task and by AR-LDM's own ARLDM.sample() in the same run, on
the same story and the same sizes, CPU fp32: wall time, CPU time and peak
RSS of each, and the ratios.

  PYTHONPATH=/root/refsrc/diffusers-0.7.2/src:/root/refenv/site:/root/refenv/site-ftfy \\
      /usr/bin/python3 bench/arldm.py --size tiny|sd15 [--steps N] [--res R] [--threads T]
      [--task visualization|continuation --mmpipe-only] [--set KEY=VALUE ...]

Run from the source tree root after `make` (mmpipe: tools/pipeline with the
plugins of the build tree). Sizes:
- tiny: the test fixture's AR-LDM (tests/gen_arldm.py: random weights from
  AR-LDM's classes, width 32, S = 8) on its story, tests/fixtures/arldm/story.cfg;
- sd15: AR-LDM's real sizes with random weights: SD-1.5's UNet and VAE
  (bench/sd15), CLIP ViT-L/14 text with the pororo tables (49416 tokens,
  S = 85), BLIP-large (ViT-L/16 at 224, bench/blip_large/med_config.json),
  768-wide extras; a random story (frames RxR, captions of 12..40 tokens).
  mmpipe makes its weights in-process (`init_seed`); PyTorch builds the
  modules with their random init. Neither side reads a checkpoint.
PyTorch runs ARLDM.sample() from AR-LDM's main.py with the import stand-ins
of tests/gen_arldm.py; its diffusion() is given RxR instead of its fixed
512x512 (the same wrap as the fixtures'), scheduler DDIM as AR-LDM's sample
mode builds it. mmpipe runs first, as a child process (its peak RSS is the
child's ru_maxrss); PyTorch then runs in this process (its peak includes the
interpreter and the imports; the model build is not timed).

--mmpipe-only runs mmpipe alone (e.g. a whole story at AR-LDM's step count);
--task continuation (4 frames drawn after the first, given one) is mmpipe
alone too: the PyTorch side builds visualization only. The single guided
step and the BLIP re-encode beside PyTorch are bench/unet --arldm S and
bench/blip --frames 1 --tokens S (doc/performance.md, "AR-LDM stories").
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
import gen_arldm as G  # noqa: E402

torch.set_grad_enabled(False)
S15, VCLIP15, VBLIP15 = 85, 49416, 30530  # AR-LDM's pororo settings


def run_mmpipe(cfg, sets, threads):
    out = tempfile.mkdtemp(prefix="bench-arldm-")
    cmd = [os.path.join(TOP, "tools", "pipeline"), "-q", "run", cfg, "--no-progress", "-s", "task.output_dir=" + out]
    for s in sets:
        cmd += ["-s", s]
    if threads:
        cmd += ["--threads", str(threads)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=os.path.dirname(cfg))
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(out, "run.json")) as f:
        run = json.load(f)
    frames = sum(run["frame_seconds"][0])
    return dict(wall=wall, frames=frames, frame_list=run["frame_seconds"][0], cpu=(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                rss=r1.ru_maxrss / 1024, out=out)


def sd15_files(d, res, rng):
    """The mmpipe side of --size sd15: the extras file, the story, configs."""
    from safetensors.torch import save_file
    te = json.load(open(os.path.join(TOP, "bench", "sd15", "text_encoder", "config.json")))
    te.update(vocab_size=VCLIP15, max_position_embeddings=S15)
    json.dump(te, open(os.path.join(d, "text_encoder.json"), "w"))
    g = torch.Generator().manual_seed(3)
    null_c = torch.tensor([[49406, 49407] + [49407] * (S15 - 2)])
    null_b = torch.tensor([[101, 102] + [0] * (S15 - 2)])
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    save_file({"modal_type_embeddings.weight": torch.randn(2, 768, generator=g),
               "time_embeddings.weight": torch.randn(5, 768, generator=g),
               "clip_text_null_token": null_c, "blip_text_null_token": null_b,
               "blip_image_null_token": ((torch.zeros(1, 3, 224, 224) - mean) / std).contiguous()},
              os.path.join(d, "extras.safetensors"))
    cap = torch.full((1, 5, S15), 49407, dtype=torch.long)
    cam = torch.zeros(1, 5, S15, dtype=torch.long)
    bcap = torch.zeros(1, 5, S15, dtype=torch.long)
    bam = torch.zeros(1, 5, S15, dtype=torch.long)
    for i in range(5):
        n = int(rng.integers(12, 41))
        cap[0, i, 0], cap[0, i, n - 1] = 49406, 49407
        cap[0, i, 1:n - 1] = torch.randint(0, 49405, (n - 2,), generator=g)
        cam[0, i, :n] = 1
        bcap[0, i, 0], bcap[0, i, n - 1] = 101, 102
        bcap[0, i, 1:n - 1] = torch.randint(1000, 30000, (n - 2,), generator=g)
        bam[0, i, :n] = 1
    frames = torch.from_numpy(rng.integers(0, 256, (1, 5, res, res, 3), dtype=np.uint8))
    story = {"captions": cap, "caption_mask": cam, "blip_captions": bcap, "blip_mask": bam, "frames": frames}
    save_file(story, os.path.join(d, "story.safetensors"))
    b = os.path.join(TOP, "bench")
    cfg = f"""task = {{ name = "story"; task = "visualization"; arldm = "{d}/extras.safetensors";
  story_tensors = "{d}/story.safetensors"; width = {res}; height = {res}; steps = 1; guidance_scale = 6.0; seed = 7; }};
text_encoder = {{ name = "clip_text"; config = "{d}/text_encoder.json"; init_seed = 1; }};
mm_encoder = {{ name = "blip"; config = "{b}/blip_large/med_config.json"; vit = "large"; init_seed = 2; enc_token_id = 30523; }};
blip_processor = {{ name = "image_resize"; size = [224, 224]; interpolation = "bilinear";
  mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; }};
unet = {{ name = "unet2d_condition"; config = "{b}/sd15/unet/config.json"; init_seed = 3; }};
vae = {{ name = "vae"; config = "{b}/sd15/vae/config.json"; init_seed = 4; }};
scheduler = {{ name = "ddim"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = "scaled_linear";
  clip_sample = false; set_alpha_to_one = true; steps_offset = 0; }};
"""
    path = os.path.join(d, "story-sd15.cfg")
    open(path, "w").write(cfg)
    return path, story


def build_sd15(M):
    """ARLDM(args) at AR-LDM's sizes with random weights (from_pretrained
    stand-ins building the modules from their configs)."""
    import inspect
    import types
    import models.blip_override.blip as blip
    from transformers import CLIPTextConfig, CLIPTextModel
    from diffusers import AutoencoderKL
    bert = G.TinyTok([101, 102], 0)
    bert.enc_token_id = 30523
    M.CLIPTokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: G.TinyTok([49406, 49407], 49407))
    M.init_tokenizer = lambda: bert
    blip.init_tokenizer = lambda: bert
    med = os.path.join(TOP, "bench", "blip_large", "med_config.json")
    M.blip_feature_extractor = lambda pretrained="", **kw: blip.BLIP_Base(med_config=med, **kw)
    te = json.load(open(os.path.join(TOP, "bench", "sd15", "text_encoder", "config.json")))
    M.CLIPTextModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: CLIPTextModel(
        CLIPTextConfig(**{k2: v for k2, v in te.items() if not k2.startswith("_")})))

    def part(cls, sub):
        cfg = json.load(open(os.path.join(TOP, "bench", "sd15", sub, "config.json")))
        return cls(**{k: v for k, v in cfg.items() if k in inspect.signature(cls.__init__).parameters})
    UNet = M.UNet2DConditionModel
    M.AutoencoderKL = types.SimpleNamespace(from_pretrained=lambda *a, **k: part(AutoencoderKL, "vae"))
    M.UNet2DConditionModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: part(UNet, "unet"))
    args = G.Cfg(mode="train", task="visualization", dataset="pororo", freeze_clip=False, freeze_blip=False,
                 freeze_resnet=False, num_inference_steps=1, guidance_scale=6.0,
                 pororo=G.Cfg(max_length=S15, clip_embedding_tokens=VCLIP15, blip_embedding_tokens=VBLIP15))
    return M.ARLDM(args).eval()


def run_torch(M, m, batch, steps, res):
    from diffusers import DDIMScheduler
    m.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=True)
    m.args.num_inference_steps = steps
    diffusion = M.ARLDM.diffusion
    M.ARLDM.diffusion = lambda self, e, a, h, w, n, g, eta: diffusion(self, e, a, res, res, n, g, eta)
    try:
        sys.modules["pytorch_lightning"].seed_everything(7)
        c0, t0 = time.process_time(), time.time()
        _, images = m.sample(batch)
        wall, cpu = time.time() - t0, time.process_time() - c0
    finally:
        M.ARLDM.diffusion = diffusion
    assert len(images) == 5
    return dict(wall=wall, cpu=cpu, rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps per frame (tiny 50, sd15 2)")
    ap.add_argument("--res", type=int, default=None, help="frame side (tiny 32, sd15 256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--task", choices=["visualization", "continuation"], default="visualization",
                    help="continuation: 4 frames after the given first (needs --mmpipe-only)")
    ap.add_argument("--mmpipe-only", action="store_true", help="run mmpipe's side alone")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config setting for mmpipe's run (tools/pipeline -s), e.g. unet.weights_dtype=bf16")
    a = ap.parse_args()
    if a.task == "continuation" and not a.mmpipe_only:
        ap.error("--task continuation needs --mmpipe-only (the PyTorch side builds visualization)")
    steps = a.steps or (50 if a.size == "tiny" else 2)
    res = a.res or (32 if a.size == "tiny" else 256)
    torch.set_num_threads(a.threads)
    G.install_standins()
    nv = 5 if a.task == "visualization" else 4
    if a.size == "tiny":
        cfg = os.path.join(TOP, "tests", "fixtures", "arldm", "story.cfg")
        mm = run_mmpipe(cfg, ["task.steps=%d" % steps, "task.width=%d" % res, "task.height=%d" % res,
                              "task.task=" + a.task] + a.set, a.threads)
    else:
        d = tempfile.mkdtemp(prefix="bench-arldm-sd15-")
        cfg, story = sd15_files(d, res, np.random.default_rng(11))
        mm = run_mmpipe(cfg, ["task.steps=%d" % steps, "task.task=" + a.task] + a.set, a.threads)
    if a.mmpipe_only:
        print("AR-LDM story (%s, %d frames), size %s, %dx%d, %d DDIM steps/frame, %d threads, mmpipe alone"
              % (a.task, nv, a.size, res, res, steps, a.threads))
        print("%-8s %10s %10s %10s %10s" % ("", "wall s", "CPU s", "RSS MB", "frames s"))
        print("%-8s %10.2f %10.2f %10.0f %10.2f" % ("mmpipe", mm["wall"], mm["cpu"], mm["rss"], mm["frames"]))
        print("per frame: " + ", ".join("%.2f s" % f for f in mm["frame_list"]))
        return
    if a.size == "tiny":
        M, m = G.build_model("visualization")
        batch = G.make_batch("visualization", torch.Generator().manual_seed(5))[0]
    else:
        sys.path.insert(0, os.path.join(G.REFSRC, "ARLDM"))
        import main as M
        m = build_sd15(M)
        from PIL import Image
        from torchvision import transforms
        proc = transforms.Compose([transforms.Resize([224, 224]), transforms.ToTensor(),
                                   transforms.Normalize([0.48145466, 0.4578275, 0.40821073],
                                                        [0.26862954, 0.26130258, 0.27577711])])
        fr = story["frames"]
        src = torch.stack([proc(Image.fromarray(fr[0, i].numpy())) for i in range(5)]).unsqueeze(0)
        batch = (fr, story["captions"], story["caption_mask"], src, story["blip_captions"], story["blip_mask"])
    pt = run_torch(M, m, batch, steps, res)
    print("AR-LDM story (visualization, 5 frames), size %s, %dx%d, %d DDIM steps/frame, %d threads"
          % (a.size, res, res, steps, a.threads))
    print("%-8s %10s %10s %10s %10s" % ("", "wall s", "CPU s", "RSS MB", "frames s"))
    print("%-8s %10.2f %10.2f %10.0f %10.2f" % ("mmpipe", mm["wall"], mm["cpu"], mm["rss"], mm["frames"]))
    print("%-8s %10.2f %10.2f %10.0f %10s" % ("PyTorch", pt["wall"], pt["cpu"], pt["rss"], "-"))
    print("speed: %.2fx (PyTorch's sample() / mmpipe's frames), %.2fx (/ mmpipe's whole run incl. loading), "
          "%.2fx (CPU, mmpipe incl. loading); memory: mmpipe %.0f%% of PyTorch's peak"
          % (pt["wall"] / mm["frames"], pt["wall"] / mm["wall"], pt["cpu"] / mm["cpu"], 100 * mm["rss"] / pt["rss"]))


if __name__ == "__main__":
    main()
