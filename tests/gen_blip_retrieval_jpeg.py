#!/usr/bin/python3
"""tests/gen_blip_retrieval_jpeg.py - JPEG fixtures of the retrieval / features
tasks (issue 17): JPEG copies of three fixture images, and what BLIP's code
makes of them.

Run after tests/gen_blip_retrieval.py (it reads that script's model.pth,
med_config.json, vocab.txt and images/), from the source tree root:

  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy /usr/bin/python3 tests/gen_blip_retrieval_jpeg.py

Debian's python3-pil decodes with the system's libjpeg62-turbo, the library
mmpipe links. Writes into tests/fixtures/blip_retrieval/:

- jpeg/img_00.jpg (baseline 4:2:0, quality 90), jpeg/img_03.jpg
  (progressive 4:4:4, quality 75), jpeg/img_04.jpg (grey, quality 85);
- jpeg.safetensors: for those files in that order, BLIP's dataset path
  (coco_karpathy_retrieval_eval: Image.open(p).convert('RGB'), then the test
  transform at 32) as "jpeg.pixel_values", and BLIP_Retrieval's
  "jpeg.image_embeds" (ViT tokens) and "jpeg.image_feat" (vision_proj of
  [CLS], normalised) from model.pth.
"""
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_blip  # noqa: E402
import gen_blip_retrieval as gbr  # noqa: E402

torch.set_grad_enabled(False)
OUT = gbr.OUT
FILES = [("img_00.png", "img_00.jpg", "RGB", dict(quality=90)),
         ("val2014/img_03.png", "img_03.jpg", "RGB", dict(quality=75, progressive=True, subsampling=0)),
         ("img_04.png", "img_04.jpg", "L", dict(quality=85))]


def main():
    gbr.install_standins()
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    from transformers import BertTokenizer
    from transformers.tokenization_utils_base import AddedToken
    AddedToken.__str__ = lambda self: self.content  # ../shared/REFERENCE.md
    import models.blip_retrieval as br
    from models.vit import VisionTransformer

    vpath = os.path.join(OUT, "vocab.txt")
    BertTokenizer.from_pretrained = classmethod(lambda cls, name, *a, **k: cls(vpath))
    br.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(
        img_size=image_size, patch_size=gbr.PATCH, embed_dim=gbr.VW, depth=2, num_heads=4, mlp_ratio=2.0), gbr.VW)
    model = br.BLIP_Retrieval(med_config=os.path.join(OUT, "med_config.json"), image_size=gbr.SIZE, vit="base",
                              embed_dim=gbr.EMBED, queue_size=8).eval()
    sd = torch.load(os.path.join(OUT, "model.pth"), map_location="cpu")["model"]
    model.load_state_dict(sd)

    jdir = os.path.join(OUT, "jpeg")
    os.makedirs(jdir, exist_ok=True)
    for f in os.listdir(jdir):
        os.remove(os.path.join(jdir, f))
    transform = transforms.Compose([
        transforms.Resize((gbr.SIZE, gbr.SIZE), interpolation=InterpolationMode.BICUBIC), transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    px = []
    for src, dst, mode, opts in FILES:
        Image.open(os.path.join(OUT, "images", src)).convert(mode).save(os.path.join(jdir, dst), "JPEG", **opts)
        # coco_karpathy_retrieval_eval.__getitem__
        px.append(transform(Image.open(os.path.join(jdir, dst)).convert("RGB")))
    px = torch.stack(px)
    emb = model.visual_encoder(px)
    feat = F.normalize(model.vision_proj(emb[:, 0, :]), dim=-1)
    gen_blip.save_io(os.path.join(OUT, "jpeg.safetensors"),
                     {"jpeg.pixel_values": px, "jpeg.image_embeds": emb, "jpeg.image_feat": feat})
    print("JPEG fixtures written to", jdir)


if __name__ == "__main__":
    main()
