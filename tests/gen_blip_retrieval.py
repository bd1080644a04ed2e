#!/usr/bin/python3
"""tests/gen_blip_retrieval.py - fixtures of the blip_retrieval encoder and
the retrieval / features tasks (issue 17), from salesforce/BLIP's own code.

BLIP is imported from source ($REFSRC/BLIP): models/blip_retrieval.py's
BLIP_Retrieval at tiny random sizes, models/blip.py's init_tokenizer and
load_checkpoint, data/utils.py's pre_caption, data/coco_karpathy_dataset.py's
coco_karpathy_retrieval_eval, train_retrieval.py's evaluation() and
itm_eval(). Written to tests/fixtures/blip_retrieval/:

- model.pth: {"model": state_dict} as BLIP's checkpoints hold it (momentum
  towers and queues included), med_config.json, vocab.txt (a tiny WordPiece
  vocabulary; init_tokenizer adds [DEC] and [ENC] to it);
- images/*.png (20 small images of varied sizes), annotation/
  coco_karpathy_test.json (BLIP's format: image path + 5 captions each, some
  with punctuation, capitals, runs of spaces, over 30 words);
- io.safetensors: pixel_values (BLIP's test transform), input_ids /
  attention_mask (pre_caption(max_words=30) + the tokenizer, max_length 35;
  stored as int32 to keep the file small, the values are BLIP's),
  image_embeds, image_feat, text_embeds, text_feat, per-token projections,
  multimodal embeddings and ITM logits of some pairs, the ITC similarity
  matrix and evaluation()'s score matrices (k_test = 16); the image features
  at image_size 48 from the same checkpoint (load_checkpoint interpolates
  the position grid);
- expected.json: the cleaned captions, itm_eval() of the ITM and ITC-only
  scores, and each query's top-10 order.

Sizes: vision width 24 (2 layers, 4 heads, patch 8, 32x32 images), text
width 16 (2 layers, 4 heads, intermediate 37), 16-d joint space; the text
width is the smallest that keeps 4 heads, since the checkpoint holds each
tower twice (the momentum copies).

Random weights: norm weights 1 + noise, biases noise (gen_blip.perturb).
Ties are avoided by construction: the seed is advanced until every score gap
that decides a top-10 order (so the recalls) or a k_test cut is > 2e-5
(float error is ~1e-6).

Run from the source tree root:

  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy /usr/bin/python3 tests/gen_blip_retrieval.py

Stand-ins (import plumbing only): gen_blip's timm/fairscale modules,
pycocotools / pycocoevalcap (imported by data/utils.py, unused here),
ruamel_yaml (imported by train_retrieval.py, unused); BertTokenizer.
from_pretrained('bert-base-uncased') reads the tiny vocab.txt instead.
"""
import json
import os
import shutil
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "blip_retrieval")
REFSRC = os.environ.get("REFSRC", "/root/refsrc")
sys.path.insert(0, HERE)
import gen_blip  # noqa: E402

torch.set_grad_enabled(False)

VW, TW, EMBED, PATCH, SIZE, K_TEST = 24, 16, 16, 8, 32, 16

WORDS = ("a an the two three one red blue green yellow black white small big old young dog cat man woman "
         "child bird horse car bus boat train ball tree street beach field road table kitchen park water "
         "is are on in at with of and near by sits run stands play plays walks rides eats looks holding "
         "next to under over front large people group grass snow sky sunny").split()
PIECES = ["##s", "##ing", "##ning", "##ed", "##er", "##ly"]


def install_standins():
    gen_blip.install_timm_standins()
    for n in ["pycocotools", "pycocotools.coco", "pycocoevalcap", "pycocoevalcap.eval", "ruamel_yaml"]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["pycocotools.coco"].COCO = None
    sys.modules["pycocoevalcap.eval"].COCOEvalCap = None
    sys.path.insert(0, os.path.join(REFSRC, "BLIP"))


def make_captions(rng):
    caps = []
    for i in range(20):
        row = []
        for j in range(5):
            n = int(rng.integers(4, 11))
            ws = [WORDS[int(k)] for k in rng.integers(0, len(WORDS), n)]
            if j == 1:
                ws[0] = ws[0].upper()
                ws.append("running")  # run ##ning
            if j == 2:
                ws.insert(1, "(zebra)")  # [UNK] after the parentheses go
                ws[-1] += "!!"
            if j == 3:
                ws[2] = ws[2] + ".  "
                ws.append("walked;")
            s = " ".join(ws)
            if j == 4 and i % 4 == 0:  # over 30 words and over 35 tokens
                s = s + " " + " ".join(WORDS[int(k)] for k in rng.integers(0, len(WORDS), 34)) + "."
            if j == 0:
                s = "  " + s.capitalize() + ". \n"
            row.append(s)
        caps.append(row)
    return caps


def make_images(rng):
    imgs = []
    for i in range(20):
        h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        yy, xx = np.meshgrid(np.linspace(0, 3, h), np.linspace(0, 3, w), indexing="ij")
        y0, x0 = np.floor(yy).astype(int).clip(0, 2), np.floor(xx).astype(int).clip(0, 2)
        fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
        v = (base[y0, x0] * (1 - fy) * (1 - fx) + base[y0 + 1, x0] * fy * (1 - fx) +
             base[y0, x0 + 1] * (1 - fy) * fx + base[y0 + 1, x0 + 1] * fy * fx)
        v += rng.normal(0, 20, v.shape)
        imgs.append(v.clip(0, 255).astype(np.uint8))
    return imgs


def gaps_ok(scores, k, cut=None, margin=2e-5):
    """Every row's top-k order (what decides recall@1/5/10 and the top-10
    lists) and, with @cut, the k_test cut are decided by more than margin."""
    ok = True
    for r, row in enumerate(scores):
        s = np.sort(row[row > -50])[::-1]
        top = s[:min(len(s), k + 1)]
        if len(top) > 1 and np.min(top[:-1] - top[1:]) <= margin:
            print("  row %d: top-%d gap %.3g" % (r, k, np.min(top[:-1] - top[1:])))
            ok = False
        if cut is not None and len(s) > cut and s[cut - 1] - s[cut] <= margin:
            print("  row %d: cut gap %.3g" % (r, s[cut - 1] - s[cut]))
            ok = False
    return ok


def main():
    install_standins()
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode
    from transformers import BertTokenizer
    from transformers.tokenization_utils_base import AddedToken
    AddedToken.__str__ = lambda self: self.content  # ../shared/REFERENCE.md
    import models.blip as mblip
    import models.blip_retrieval as br
    from models.vit import VisionTransformer
    import train_retrieval
    from data.coco_karpathy_dataset import coco_karpathy_retrieval_eval
    from data.utils import pre_caption

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "images"))
    os.makedirs(os.path.join(OUT, "annotation"))
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "run", "walk", "!", "(", ";"] + \
        WORDS + PIECES
    vocab = list(dict.fromkeys(v for v in vocab if v not in ("running",)))
    vpath = os.path.join(OUT, "vocab.txt")
    with open(vpath, "w") as f:
        f.write("\n".join(vocab) + "\n")
    BertTokenizer.from_pretrained = classmethod(lambda cls, name, *a, **k: cls(vpath))

    def tiny_vit(vit, image_size, *a, **k):
        return VisionTransformer(img_size=image_size, patch_size=PATCH, embed_dim=VW, depth=2, num_heads=4,
                                 mlp_ratio=2.0), VW
    br.create_vit = tiny_vit
    med = dict(json.load(open(os.path.join(REFSRC, "BLIP", "configs", "med_config.json"))))
    med.update(hidden_size=TW, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=40, vocab_size=len(vocab) + 2)
    med_path = os.path.join(OUT, "med_config.json")
    with open(med_path, "w") as f:
        json.dump(med, f, indent=2, sort_keys=True)

    rng = np.random.default_rng(17)
    captions = make_captions(rng)
    images = make_images(rng)
    ann = []
    for i, (im, caps) in enumerate(zip(images, captions)):
        name = "val2014/img_%02d.png" % i if i % 2 else "img_%02d.png" % i
        os.makedirs(os.path.dirname(os.path.join(OUT, "images", name)), exist_ok=True)
        Image.fromarray(im).save(os.path.join(OUT, "images", name))
        ann.append({"image": name, "caption": caps})
    with open(os.path.join(OUT, "annotation", "coco_karpathy_test.json"), "w") as f:
        json.dump(ann, f, indent=1)

    normalize = transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

    def transform_test(size):  # data/__init__.py's transform_test
        return transforms.Compose([transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
                                   transforms.ToTensor(), normalize])

    ds = coco_karpathy_retrieval_eval(transform_test(SIZE), os.path.join(OUT, "images"),
                                      os.path.join(OUT, "annotation"), "test")
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False)
    train_retrieval.args = types.SimpleNamespace(distributed=False)

    for seed in range(1000, 1100):
        torch.manual_seed(seed)
        model = br.BLIP_Retrieval(med_config=med_path, image_size=SIZE, vit="base", embed_dim=EMBED,
                                  queue_size=8).eval()
        gen_blip.perturb(model)
        model.temp.fill_(0.07)
        s_i2t, s_t2i = train_retrieval.evaluation(model, loader, torch.device("cpu"), {"k_test": K_TEST})
        # the ITC similarities as evaluation() computes them
        tok = model.tokenizer(ds.text, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        t_out = model.text_encoder(tok.input_ids, attention_mask=tok.attention_mask, mode="text")
        text_feat = F.normalize(model.text_proj(t_out.last_hidden_state[:, 0, :]))
        px = torch.stack([ds[i][0] for i in range(len(ds))])
        img_emb = model.visual_encoder(px)
        image_feat = F.normalize(model.vision_proj(img_emb[:, 0, :]), dim=-1)
        sims = (image_feat @ text_feat.t()).numpy()
        print("seed", seed, flush=True)
        checks = [gaps_ok(s_i2t, 10), gaps_ok(s_t2i, 10), gaps_ok(sims, 10, K_TEST), gaps_ok(sims.T, 10, K_TEST)]
        print("checks", checks, "ITC spread %.3g" % np.std(sims, 1).mean(), flush=True)
        if all(checks):
            break
    else:
        raise SystemExit("no seed without near-ties")
    print("seed", seed)
    torch.save({"model": model.state_dict()}, os.path.join(OUT, "model.pth"))

    # ITM of some pairs, as evaluation() runs it ([ENC] first, all image tokens)
    pairs_i = torch.tensor([0, 0, 3, 7, 19, 12])
    pairs_t = torch.tensor([0, 1, 15, 2, 99, 61])
    enc_ids = tok.input_ids.clone()
    enc_ids[:, 0] = model.tokenizer.enc_token_id
    mm = model.text_encoder(enc_ids[pairs_t], attention_mask=tok.attention_mask[pairs_t],
                            encoder_hidden_states=img_emb[pairs_i],
                            encoder_attention_mask=torch.ones(img_emb[pairs_i].shape[:-1], dtype=torch.long),
                            return_dict=True).last_hidden_state
    itm = model.itm_head(mm[:, 0, :])

    # image_size 48 from the same checkpoint: load_checkpoint interpolates pos_embed
    m48 = br.BLIP_Retrieval(med_config=med_path, image_size=48, vit="base", embed_dim=EMBED, queue_size=8).eval()
    m48, msg = mblip.load_checkpoint(m48, os.path.join(OUT, "model.pth"))
    assert not msg.missing_keys, msg
    px48 = torch.stack([transform_test(48)(Image.open(os.path.join(OUT, "images", ann[i]["image"])).convert("RGB"))
                        for i in range(2)])
    feat48 = F.normalize(m48.vision_proj(m48.visual_encoder(px48)[:, 0, :]), dim=-1)

    # every image's and text's projected features; the full embeddings of
    # the first few only (size)
    io = {
        "pixel_values": px[:4], "input_ids": tok.input_ids.int(), "attention_mask": tok.attention_mask.int(),
        "image_embeds": img_emb[:4], "image_feat": image_feat,
        "text_embeds": t_out.last_hidden_state[:6], "text_feat": text_feat,
        "image_embeds_proj": F.normalize(model.vision_proj(img_emb[:4]), dim=-1),
        "text_embeds_proj": F.normalize(model.text_proj(t_out.last_hidden_state[:6]), dim=-1),
        "pairs.image_embeds": img_emb[pairs_i],
        "pairs.image": pairs_i, "pairs.text": pairs_t, "pairs.multimodal_embeds": mm, "pairs.itm_logits": itm,
        "sims": torch.from_numpy(sims), "score_i2t": torch.from_numpy(s_i2t), "score_t2i": torch.from_numpy(s_t2i),
        "size48.pixel_values": px48, "size48.image_feat": feat48,
    }
    gen_blip.save_io(os.path.join(OUT, "io.safetensors"), io)

    def top10(m):
        return [[int(j) for j in np.argsort(row)[::-1][:10]] for row in m]
    expected = {
        "seed": seed, "k_test": K_TEST, "enc_token_id": int(model.tokenizer.enc_token_id),
        "temp": float(model.temp), "captions": ds.text,
        "raw_caption_example": ann[0]["caption"][0],
        "pre_caption_examples": {c: pre_caption(c, 30) for c in
                                 ["  Two\tDOGS  run.\n", "a (red)  ball!! ~on~ the #grass:", "é À ~", "x " * 40]},
        "itm_eval": train_retrieval.itm_eval(s_i2t, s_t2i, ds.txt2img, ds.img2txt),
        "itc_eval": train_retrieval.itm_eval(sims, sims.T, ds.txt2img, ds.img2txt),
        "top10_i2t": top10(s_i2t), "top10_t2i": top10(s_t2i),
        "itc_top10_i2t": top10(sims), "itc_top10_t2i": top10(sims.T),
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print("fixtures written to", OUT, expected["itm_eval"], expected["itc_eval"])


if __name__ == "__main__":
    main()
