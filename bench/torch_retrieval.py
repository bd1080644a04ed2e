#!/usr/bin/python3
"""bench/torch_retrieval.py - the PyTorch side of bench/retrieval: BLIP_Retrieval
of salesforce/BLIP (imported from source, the stand-ins of tests/gen_blip.py)
with ViT-B/16 at 384 on random weights: image embeddings per second (2 images
per call), one text query (text tower, ITC against 256 features, ITM of the
top CANDIDATES pairs in batches of 32, as evaluation() runs them) and ITC
search over 100k 256-d embeddings (matmul + topk of CANDIDATES, as evaluation()
ranks). BLIP's image -> text ITM repeats the image per pair (image_feats[i].repeat),
so a pair costs the same either way; the text -> image pass is measured.

  torch_retrieval.py MED_CONFIG.json THREADS CANDIDATES   (REFSRC: where BLIP is, default /root/refsrc)
"""
import os
import resource
import sys
import time
import types

import torch
import torch.nn.functional as F

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests"))
from gen_blip import install_timm_standins  # noqa: E402

cfg_path, threads, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
torch.set_grad_enabled(False)
install_timm_standins()
sys.path.insert(0, os.path.join(os.environ.get("REFSRC", "/root/refsrc"), "BLIP"))
import models.blip_retrieval as br  # noqa: E402
from models.vit import VisionTransformer  # noqa: E402

br.init_tokenizer = lambda: types.SimpleNamespace(enc_token_id=30523)
br.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(img_size=image_size, patch_size=16,
                                                                     embed_dim=768, depth=12, num_heads=12), 768)
t0 = time.time()
m = br.BLIP_Retrieval(med_config=cfg_path, image_size=384, vit="base", queue_size=8).eval()
print("%-22s %8.2f s  (random init)" % ("torch load", time.time() - t0))
img = torch.randn(2, 3, 384, 384)
t0 = time.time()
m.visual_encoder(img)
dt = time.time() - t0
print("%-22s %8.2f images/s  (%.2f s per image, %d threads)" % ("torch image embeds", 2 / dt, dt / 2,
                                                              torch.get_num_threads()))
ids = torch.randint(0, 30522, (1, 35))
am = torch.ones(1, 35, dtype=torch.long)
t0 = time.time()
out = m.text_encoder(ids, attention_mask=am, mode="text")
tf = F.normalize(m.text_proj(out.last_hidden_state[:, 0, :]))
sims = tf @ F.normalize(torch.randn(256, 256), dim=-1).t()
tt = time.time() - t0
ti = 0.0
emb = torch.randn(32, 577, 768)
for b in range(0, K, 32):
    n = min(32, K - b)
    t0 = time.time()
    o = m.text_encoder(ids.repeat(32, 1), attention_mask=am.repeat(32, 1), encoder_hidden_states=emb,
                       encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long), return_dict=True)
    m.itm_head(o.last_hidden_state[:, 0, :])[:, 1]
    ti += (time.time() - t0) * n / 32
print("%-22s %8.2f s  (text %.3f s, ITM of %d candidates %.2f s, %.3f s per pair)" % (
    "torch query + ITM", tt + ti, tt, K, ti, ti / K))
feats = torch.randn(100000, 256)
q = torch.randn(1, 256)
best = 1e30
for i in range(5):
    t0 = time.time()
    s = (q @ feats.t())[0]
    s.topk(k=min(K, s.shape[0]))  # evaluation()'s sims_matrix[i].topk(k=k_test)
    best = min(best, time.time() - t0)
print("%-22s %8.1f ms  (best of 5, topk %d)" % ("torch ITC search 100k", best * 1e3, K))
print("%-22s %8.0f MB" % ("torch peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
