#!/usr/bin/env python3
"""tests/gen_clipscore.py - fixtures of `pipeline clipscore` from transformers
4.30's CLIPModel, CLIPImageProcessor (PIL) and CLIPTokenizer at tiny random
sizes.

Run in the reference environment (see ../shared/REFERENCE.md):
  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_clipscore.py
Writes tests/fixtures/clipscore/:
- clip/: a CLIPModel folder (config.json, model.safetensors; clip_bin/ the
  same with pytorch_model.bin) with the tiny
  CLIP tokenizer of tests/fixtures/arldm/tok (vocab.json, merges.txt: 38
  words, <|endoftext|> the largest id, as in CLIP's vocabulary);
- out/: a story task's output folder (story00000, story00001, frame<F>.png of
  assorted sizes, so that the short-side resize and the centre crop's odd
  offsets matter) and stories.json (the story task's stories_file form);
- flat/: the same frames as one folder (AR-LDM's {k:04d}.png) and
  captions.json (one caption per image);
- expected.safetensors: image_embeds [N, P] of the frames in order (story by
  story, frame by frame), text_embeds [N, P] of their captions,
  pixel_values [1, 3, 32, 32] of the first frame, clip_t and clip_i
  (per story) and their means (f64).

CLIP-T of a story: the mean over its frames of cos(image_embeds, text_embeds)
(CLIPModel's normalised embeddings, as its logits_per_image / logit_scale);
CLIP-I: the mean over the story's frame pairs i < j of cos(image_i, image_j).
The run's values are the means over all frames (CLIP-T) and over stories
(CLIP-I). No scaling (x100 is the command's --scale).
"""
import json
import os
import shutil

import numpy as np
import torch
from genutil import perturb_clip as perturb
from PIL import Image
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "clipscore")
TOK = os.path.join(HERE, "fixtures", "arldm", "tok")
torch.manual_seed(1516)
torch.set_grad_enabled(False)

CAPTIONS = [
    ["a dog is playing in the snow", "the red bird flies", "a small house and a big tree",
     "the dog runs to the house", "a happy friend sleeps"],
    ["a blue ball", "the friend kicks a ball", "a sad dog sits on the chair", "the sky is blue",
     "a bird looks at the cake"],
]
# (w, h) per frame: after the short side goes to 32, the long side is 35 in
# several (an odd crop margin: transformers' floor vs torchvision's round)
SIZES = [[(64, 71), (32, 35), (48, 48), (71, 64), (40, 30)],
         [(35, 32), (50, 64), (33, 45), (64, 64), (90, 40)]]


def picture(rng, w, h):
    """Smooth colour fields plus noise: resizing them is not trivial."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    a = rng.uniform(0.05, 0.3, size=3)
    b = rng.uniform(0, 6.28, size=3)
    img = np.stack([127 + 100 * np.sin(a[c] * x + b[c]) * np.cos(a[(c + 1) % 3] * y) for c in range(3)], -1)
    img += rng.normal(0, 20, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def main():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.tokenization_utils_base import AddedToken
    AddedToken.__str__ = lambda self: self.content  # see ../shared/REFERENCE.md
    os.makedirs(OUT, exist_ok=True)
    mdir = os.path.join(OUT, "clip")
    os.makedirs(mdir, exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TOK, f), os.path.join(mdir, f))
    tok = CLIPTokenizer(os.path.join(mdir, "vocab.json"), os.path.join(mdir, "merges.txt"))
    text = dict(vocab_size=len(tok), hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    m = CLIPModel(cfg).eval()
    perturb(m)
    with torch.no_grad():
        m.logit_scale.fill_(2.6592)
    d = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(d, f, indent=1, sort_keys=True)
    st = {k: v.detach().float().contiguous() for k, v in m.state_dict().items() if not k.endswith("position_ids")}
    save_file(st, os.path.join(mdir, "model.safetensors"))
    # the same model as transformers' torch.save file (pytorch_model.bin)
    bdir = os.path.join(OUT, "clip_bin")
    os.makedirs(bdir, exist_ok=True)
    for f in ("config.json", "vocab.json", "merges.txt"):
        shutil.copy(os.path.join(mdir, f), os.path.join(bdir, f))
    torch.save(m.state_dict(), os.path.join(bdir, "pytorch_model.bin"))

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    rng = np.random.default_rng(1516)
    odir, fdir = os.path.join(OUT, "out"), os.path.join(OUT, "flat")
    for p in (odir, fdir):
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
    images, caps, k = [], [], 0
    for s, sizes in enumerate(SIZES):
        sd = os.path.join(odir, "story%05d" % s)
        os.makedirs(sd)
        for fr, (w, h) in enumerate(sizes):
            im = picture(rng, w, h)
            im.save(os.path.join(sd, "frame%d.png" % fr))
            im.save(os.path.join(fdir, "%04d.png" % k))
            k += 1
            images.append(Image.open(os.path.join(sd, "frame%d.png" % fr)).convert("RGB"))
            caps.append(CAPTIONS[s][fr])
    with open(os.path.join(odir, "stories.json"), "w") as f:
        json.dump([{"id": "s%d" % s, "captions": c} for s, c in enumerate(CAPTIONS)], f, indent=1)
    with open(os.path.join(fdir, "captions.json"), "w") as f:
        json.dump(caps, f, indent=1)

    px = proc(images=images, return_tensors="pt")["pixel_values"]
    ids = tok(caps, padding=True, return_tensors="pt")
    img = m.get_image_features(pixel_values=px)
    txt = m.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    # CLIPModel.forward's normalisation and cosine (logits_per_image / logit_scale)
    o = m(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=px)
    cos = (o.logits_per_image / m.logit_scale.exp()).double()
    ie = o.image_embeds.double()
    V = len(SIZES[0])
    clip_t, clip_i = [], []
    for s in range(len(SIZES)):
        r = range(s * V, (s + 1) * V)
        clip_t.append(float(torch.stack([cos[i, i] for i in r]).mean()))
        pairs = [float(ie[i] @ ie[j]) for i in r for j in r if i < j]
        clip_i.append(float(np.mean(pairs)))
    n = len(caps)
    exp = {
        "image_embeds": img, "text_embeds": txt, "pixel_values": px[:1].contiguous(), "input_ids": ids["input_ids"],
        "clip_t": torch.tensor(clip_t, dtype=torch.float64), "clip_i": torch.tensor(clip_i, dtype=torch.float64),
        "clip_t_mean": torch.tensor([float(torch.stack([cos[i, i] for i in range(n)]).mean())], dtype=torch.float64),
        "clip_i_mean": torch.tensor([float(np.mean(clip_i))], dtype=torch.float64),
    }
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"))
    print("CLIP-T", clip_t, "CLIP-I", clip_i)


if __name__ == "__main__":
    main()
