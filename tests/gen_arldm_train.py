#!/usr/bin/python3
"""tests/gen_arldm_train.py - fixtures of AR-LDM's training step (issue 16).

Runs AR-LDM's own ARLDM.forward (xichenpan/ARLDM at 9d8feeb, main.py) on the
tiny AR-LDM of tests/gen_arldm.py (rebuilt, and checked equal to the committed
tests/fixtures/arldm/arldm_tiny.safetensors), calls loss.backward() and
writes tests/fixtures/arldm/train_step.safetensors, per case c:

- c.images f32 [B, V, 3, 32, 32] (the VAE input, in [-1, 1]);
  c.captions, c.caption_mask i64 [B, V, S]; c.source_captions,
  c.source_mask i64 [B, src_V, S]; c.source_small f32 [B, src_V, 3, 7, 7]:
  the BLIP pixels are this grid repeated 32x32 (nearest), so the fixture
  stays small (the C test expands it the same way);
- the draws, recorded as ARLDM.forward made them: c.cfg_uniform f64 [B*V]
  (np.random.rand; a row is dropped when < 0.1), c.posterior_noise (the
  torch.randn of the VAE posterior's sample()), c.noise, c.timesteps i64
  (torch.randint(0, 1000));
- c.loss f32 [1] and c.grad.<name> for some named parameters (AR-LDM's
  state-dict names): UNet attention and resnet weights, the CLIP token
  table and a CLIP layer, BLIP's word table, a BLIP text layer and the ViT's
  fused qkv, modal_type_embeddings and time_embeddings; only those that
  are trainable in the case (freeze_* of AR-LDM's config applied by
  ARLDM.__init__ itself).

Cases: "vis" (task visualization, nothing frozen) and "cont" (continuation,
freeze_clip and freeze_blip: CLIP's token table and BLIP's word table stay
trainable).

Run from the source tree root (diffusers 0.7.2 first on the path):

  PYTHONPATH=/root/refsrc/diffusers-0.7.2/src:/root/refenv/site /usr/bin/python3 tests/gen_arldm_train.py

Stand-ins: those of gen_arldm.py. One difference from a Lightning run: BLIP's
BERT has dropout 0.1 (med_config.json), active in train mode when
freeze_blip is false; mmpipe has no dropout, so every nn.Dropout is given
p = 0 here (the random draws of dropout could not be matched anyway). CLIP,
the UNet and the VAE have no active dropout.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_arldm as G  # noqa: E402

B = 1
IMG = 32
GRID = 7

GRADS = [
    "unet.conv_in.weight",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight",
    "unet.down_blocks.0.attentions.0.proj_in.weight",
    "unet.down_blocks.0.resnets.0.conv1.weight",
    "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.bias",
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    "unet.up_blocks.1.resnets.1.norm1.weight",
    "unet.time_embedding.linear_1.weight",
    "unet.conv_out.bias",
    "text_encoder.text_model.embeddings.token_embedding.weight",
    "text_encoder.text_model.embeddings.position_embedding.weight",
    "text_encoder.text_model.encoder.layers.1.self_attn.v_proj.weight",
    "text_encoder.text_model.final_layer_norm.weight",
    "mm_encoder.text_encoder.embeddings.word_embeddings.weight",
    "mm_encoder.text_encoder.embeddings.LayerNorm.weight",
    "mm_encoder.text_encoder.encoder.layer.1.attention.self.query.weight",
    "mm_encoder.text_encoder.encoder.layer.0.crossattention.self.key.weight",
    "mm_encoder.text_encoder.encoder.layer.1.output.dense.bias",
    "mm_encoder.visual_encoder.blocks.0.attn.qkv.weight",
    "mm_encoder.visual_encoder.blocks.0.attn.qkv.bias",
    "mm_encoder.visual_encoder.pos_embed",
    "modal_type_embeddings.weight",
    "time_embeddings.weight",
]

CASES = [("vis", "visualization", dict(freeze_clip=False, freeze_blip=False, freeze_resnet=False), 11),
         ("cont", "continuation", dict(freeze_clip=True, freeze_blip=True, freeze_resnet=False), 12)]


def make_batch(task, g):
    V = 4 if task == "continuation" else 5
    src_V = 5
    S = G.S
    cap = torch.full((B, V, S), G.CLIP_EOS, dtype=torch.long)
    cam = torch.zeros(B, V, S, dtype=torch.long)
    bcap = torch.full((B, src_V, S), G.BERT_PAD, dtype=torch.long)
    bam = torch.zeros(B, src_V, S, dtype=torch.long)
    for b in range(B):
        for i in range(V):
            n = int(torch.randint(3, S + 1, (1,), generator=g))
            cap[b, i, 0] = G.CLIP_BOS
            cap[b, i, 1:n - 1] = torch.randint(0, G.CLIP_V - 2, (n - 2,), generator=g)
            cap[b, i, n - 1] = G.CLIP_EOS
            cam[b, i, :n] = 1
        for i in range(src_V):
            n = int(torch.randint(3, S + 1, (1,), generator=g))
            bcap[b, i, 0] = G.BERT_CLS
            bcap[b, i, 1:n - 1] = torch.randint(3, G.BLIP_V - 1, (n - 2,), generator=g)
            bcap[b, i, n - 1] = G.BERT_SEP
            bam[b, i, :n] = 1
    cap[0, 1, 1] = G.CLIP_V - 1   # an added character token
    bcap[0, 1, 1] = G.BLIP_V - 2
    images = (torch.rand(B, V, 3, IMG, IMG, generator=g) * 2 - 1)
    small = torch.randn(B, src_V, 3, GRID, GRID, generator=g)
    src = small.repeat_interleave(224 // GRID, -1).repeat_interleave(224 // GRID, -2)
    return images, cap, cam, src, bcap, bam, small, V, src_V


def main():
    G.install_standins()
    sys.path.insert(0, os.path.join(G.REFSRC, "ARLDM"))
    import importlib
    import main as M
    out = {}
    committed = load_file(os.path.join(G.OUT, "arldm_tiny.safetensors"))
    for name, task, fl, seed in CASES:
        importlib.reload(M)   # build_model replaces M's from_pretrained targets
        G.UNET_CLASS.clear()
        orig_init = M.ARLDM.__init__

        def init(self, args, *a, _orig=orig_init, _fl=fl, **k):
            args.update(_fl)   # the case's freeze_* before ARLDM.__init__ applies them
            _orig(self, args, *a, **k)
        M.ARLDM.__init__ = init
        torch.set_grad_enabled(False)
        M2, m = G.build_model(task)
        params = {k for k, _ in m.named_parameters()}
        state = {k: (v.to(torch.bfloat16) if k in params else v) for k, v in m.state_dict().items()}
        assert state.keys() == committed.keys() and all(torch.equal(state[k], committed[k]) for k in state), \
            "the rebuilt model differs from the committed arldm_tiny.safetensors"
        torch.set_grad_enabled(True)
        m.train()
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
        m.task = task
        g = torch.Generator().manual_seed(seed)
        images, cap, cam, src, bcap, bam, small, V, src_V = make_batch(task, g)
        # np.random.rand(B * V): a seed whose draws drop some rows, not all
        for s in range(1000):
            rs = np.random.RandomState(s)
            u = rs.rand(B * V)
            if 0 < (u < 0.1).sum() < B * V:
                break
        rec = {}
        orig_rand, orig_randn, orig_randint = np.random.rand, torch.randn, torch.randint

        def rand(*shape):
            r = np.random.RandomState(s).rand(*shape)
            rec["cfg_uniform"] = torch.from_numpy(r.copy())
            return r

        def randn(*a, **k):
            r = orig_randn(*a, **k)
            rec["posterior_noise" if "posterior_noise" not in rec else "noise"] = r.clone()
            return r

        def randint(*a, **k):
            r = orig_randint(*a, **k)
            rec["timesteps"] = r.clone()
            return r
        np.random.rand, torch.randn, torch.randint = rand, randn, randint
        try:
            torch.manual_seed(100 + seed)
            m.zero_grad()
            loss = m((images.clone(), cap.clone(), cam.clone(), src.clone(), bcap.clone(), bam.clone()))
        finally:
            np.random.rand, torch.randn, torch.randint = orig_rand, orig_randn, orig_randint
        loss.backward()
        named = dict(m.named_parameters())
        p = name + "."
        out.update({p + "images": images, p + "captions": cap, p + "caption_mask": cam, p + "source_captions": bcap,
                    p + "source_mask": bam, p + "source_small": small, p + "loss": loss.detach().reshape(1)})
        for k in ("cfg_uniform", "posterior_noise", "noise", "timesteps"):
            out[p + k] = rec[k]
        ngrad = 0
        for k in GRADS:
            par = named[k]
            if par.requires_grad:
                assert par.grad is not None and par.grad.abs().max() > 0, k
                out[p + "grad." + k] = par.grad.detach().clone()
                ngrad += 1
        trainable = sum(1 for q in m.parameters() if q.requires_grad)
        out[p + "n_trainable"] = torch.tensor([trainable], dtype=torch.int64)
        print(name, "loss %.6f" % loss.item(), "dropped", (rec["cfg_uniform"] < 0.1).tolist(),
              "t", rec["timesteps"].tolist(), "grads", ngrad, "trainable tensors", trainable)
    save_file({k: v.detach().contiguous() for k, v in out.items()}, os.path.join(G.OUT, "train_step.safetensors"))
    print("written", os.path.join(G.OUT, "train_step.safetensors"),
          os.path.getsize(os.path.join(G.OUT, "train_step.safetensors")), "bytes")


if __name__ == "__main__":
    main()
