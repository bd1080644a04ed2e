#!/usr/bin/python3
"""tests/gen_arldm_trainrun.py - the tiny story data of the train task's mode = "arldm" (issue 16).

Writes tests/fixtures/arldm/story_train.h5: a pororo-layout AR-LDM story file
(AR-LDM's data_script layout: groups train and val with image0..image4 as
PNG bytes and text as '|'-joined captions) with 4 train and 2 val
stories, every caption in the tiny vocabulary of tests/gen_arldm.py (tok/),
so that the tiny AR-LDM (arldm_tiny.safetensors) can train on it. Every
image is one 128x128 frame (a strip of one), so AR-LDM's random frame
choice of the train split has one outcome.

With --steps it also writes tests/fixtures/arldm/train_run.safetensors: K = 2
optimizer steps of AR-LDM's own training (ARLDM.forward, loss.backward(),
torch.optim.AdamW over model.parameters() with AR-LDM's weight decay 1e-4 at
a constant rate lr = 1e-3: the rate of pl_bolts' schedule is checked by the
sd mode's test) on the tiny AR-LDM of tests/gen_arldm.py (checked equal to
arldm_tiny.safetensors), task visualization, freeze_clip and freeze_blip,
batches of 2 train stories in file order ([0, 1], [2, 3]), each item read
by AR-LDM's own datasets/pororo.py StoryDataset('train') from story_train.h5
with the tiny tokenizers (tok/). Stored: step<k>.loss and, after the K
steps, param.<name> for the named tensors of gen_arldm_train.py's list that
are trainable (AR-LDM's names), n_trainable, and n_trainable_resnet (the
count ARLDM.__init__ leaves trainable with freeze_resnet added).

With --steps-dropout it writes tests/fixtures/arldm/train_run_dropout.safetensors
instead: the same run with freeze_clip only (freeze_blip false, AR-LDM's default),
so that BLIP trains and ARLDM.forward leaves mm_encoder in train mode: its BERT's
nn.Dropout modules (p = 0.1 from med_config.json: embeddings, attention
probabilities, self/cross-attention outputs, layer outputs) draw from torch's
global generator in both BLIP calls of each step (the source frames, then the
null caption), before the posterior noise. No other module draws (checked: every
other nn.Dropout has p = 0, the tiny ViT of depth 1 has no DropPath).

Stand-ins besides gen_arldm.py's: the dataset's train augment resizes to
32x32 (Resize([512, 512]) in AR-LDM; the train task's image_size = 32);
--steps sets every nn.Dropout to p = 0 (the fixture of BLIP in eval mode; BLIP is
in eval mode there anyway, freeze_blip). The draws are AR-LDM's own:
torch.manual_seed(SEED) and np.random.seed(SEED) as pl.seed_everything does, the
CFG drop's np.random.rand(B*V) from numpy's stream, the posterior noise, noise
and timesteps from torch's (the train task: rng = "torch", seed = SEED, whose
numpy-mode generator replays numpy's stream).

Run from the source tree root:

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_arldm_trainrun.py
  PYTHONPATH=/root/refsrc/diffusers-0.7.2/src:/root/refenv/site /usr/bin/python3 tests/gen_arldm_trainrun.py --steps
  PYTHONPATH=/root/refsrc/diffusers-0.7.2/src:/root/refenv/site /usr/bin/python3 tests/gen_arldm_trainrun.py --steps-dropout
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_datasets as GD  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "arldm")
WORDS = ["a", "the", "is", "and", "in", "snow", "house", "playing", "with", "eating", "cake", "looks", "at",
         "tree", "sky", "red", "blue", "big", "small", "dog", "runs", "to", "friend", "happy", "sad", "sits",
         "on", "chair", "door", "opens", "sees", "bird", "flies", "ball", "kicks", "smiles", "sleeps", "talks"]
NAMES = ["pororo", "loopy", "eddy", "crong"]
KINDS = ["gradient", "checker", "rings", "blocks"]


def caption(r):
    """a name and 2..4 words: at most 6 tokens with BOS/EOS (S = 8)"""
    n = int(r.integers(2, 5))
    return " ".join([NAMES[int(r.integers(0, 4))]] + [WORDS[int(r.integers(0, len(WORDS)))] for _ in range(n)])


K = 2
BATCH = 2
SEED = 5
LR = 1e-3


def run_steps(dropout=False):
    import torch
    import torch.nn as nn
    from safetensors.torch import load_file, save_file
    from torchvision import transforms
    import gen_arldm as G
    import gen_arldm_train as GT
    G.install_standins()
    committed = load_file(os.path.join(OUT, "arldm_tiny.safetensors"))
    import importlib
    sys.path.insert(0, os.path.join(G.REFSRC, "ARLDM"))
    import main as M
    importlib.reload(M)
    orig_init = M.ARLDM.__init__
    flags = dict(freeze_clip=True, freeze_blip=not dropout, freeze_resnet=False)

    def init(self, args, *a, **k):
        args.update(flags)
        orig_init(self, args, *a, **k)
    M.ARLDM.__init__ = init
    torch.set_grad_enabled(False)
    M2, m = G.build_model("visualization")
    params = {k for k, _ in m.named_parameters()}
    state = {k: (v.to(torch.bfloat16) if k in params else v) for k, v in m.state_dict().items()}
    assert state.keys() == committed.keys() and all(torch.equal(state[k], committed[k]) for k in state), \
        "the rebuilt model differs from the committed arldm_tiny.safetensors"
    torch.set_grad_enabled(True)
    m.train()
    if dropout:
        # the only modules that draw: BLIP's BERT dropouts (p = 0.1)
        drawing = [n for n, mod in m.named_modules() if isinstance(mod, nn.Dropout) and mod.p > 0]
        assert drawing and all(n.startswith("mm_encoder.text_encoder.") for n in drawing), drawing
        assert not any(type(mod).__name__ == "DropPath" for mod in m.modules())
    else:
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    m.task = "visualization"
    ds = G.arldm_pororo(os.path.join(OUT, "tok"), os.path.join(OUT, "story_train.h5"), "visualization")
    ds.subset = "train"
    ds.augment = transforms.Compose([transforms.ToPILImage(), transforms.Resize([32, 32]), transforms.ToTensor(),
                                     transforms.Normalize([0.5], [0.5])])
    opt = torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=1e-4)
    # pl.seed_everything(SEED): torch's generator and numpy's (the CFG drop's np.random.rand)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    out = {}
    if True:
        for k in range(K):
            items = [ds[i] for i in range(k * BATCH, (k + 1) * BATCH)]
            batch = tuple(torch.stack([it[j] for it in items]) for j in range(6))  # DataLoader's collate
            opt.zero_grad()
            loss = m(batch)
            loss.backward()
            opt.step()
            out["step%d.loss" % k] = loss.detach().reshape(1)
            print("step", k, "loss %.6f" % loss.item())
    named = dict(m.named_parameters())
    n = 0
    for name in GT.GRADS:
        if named[name].requires_grad:
            out["param." + name] = named[name].detach().clone()
            n += 1
    out["n_trainable"] = torch.tensor([sum(1 for q in m.parameters() if q.requires_grad)], dtype=torch.int64)
    # freeze_resnet as well: what ARLDM.__init__ leaves trainable then (count only)
    flags["freeze_resnet"] = True
    G.UNET_CLASS.clear()
    importlib.reload(M)
    M.ARLDM.__init__ = init
    torch.set_grad_enabled(False)
    _, m3 = G.build_model("visualization")
    out["n_trainable_resnet"] = torch.tensor([sum(1 for q in m3.parameters() if q.requires_grad)], dtype=torch.int64)
    print("trainable tensors:", int(out["n_trainable"]), "and with freeze_resnet", int(out["n_trainable_resnet"]))
    path = os.path.join(OUT, "train_run_dropout.safetensors" if dropout else "train_run.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print("written", path, os.path.getsize(path), "bytes,", n, "parameters")


def main():
    if "--steps" in sys.argv[1:] or "--steps-dropout" in sys.argv[1:]:
        run_steps(dropout="--steps-dropout" in sys.argv[1:])
        return
    r = np.random.default_rng(2027)
    GD.rng = np.random.default_rng(2028)
    splits = {}
    for split, n in (("train", 4), ("val", 2)):
        items = []
        for s in range(n):
            frames = [GD.frame(KINDS[int(r.integers(0, len(KINDS)))]) for _ in range(5)]
            items.append((frames, {"text": "|".join(caption(r) for _ in range(5))}))
        splits[split] = items
    path = os.path.join(OUT, "story_train.h5")
    GD.write_story_file(path, splits, ["text"])
    print("written", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
