#!/usr/bin/python3
"""tests/gen_arldm.py - fixtures of AR-LDM story visualization and continuation (issue 14).

Builds a tiny AR-LDM with AR-LDM's own classes (xichenpan/ARLDM at 9d8feeb:
main.ARLDM, models/blip_override, models/diffusers_override on diffusers
0.7.2), gives it random weights, and writes to tests/fixtures/arldm/:

- arldm_tiny.safetensors: the whole state dict under AR-LDM's key names
  (text_encoder.*, mm_encoder.*, unet.*, vae.*, modal_type_embeddings.weight,
  time_embeddings.weight, the three null buffers), as a Lightning last.ckpt
  holds it in "state_dict" (parameters bf16: their values are exact in
  bf16; buffers f32 / int64);
- configs of the parts (unet/config.json, vae/config.json,
  text_encoder/config.json, med_config.json) and tiny.json (S, V, ids);
- unet_io.safetensors: AR-LDM's override UNet with and without its
  cross-attention mask (True = do not attend, filled with -inf);
- clip_io.safetensors: the resized CLIP text encoder (token table grown to
  the tokenizer's size, position table grown to S);
- story_{task}_{scheduler}.safetensors: ARLDM.sample() on one story for
  task in (visualization, continuation), scheduler in (ddim, pndm): the
  batch, the UNet's contexts and masks of every frame, the initial and final
  latents and the uint8 images;
- story_ds.h5, tok/ (a tiny CLIP vocab.json + merges.txt and BERT
  vocab.txt whose ids fit the tiny tables) and
  story_dataset_{task}.safetensors: two stories in AR-LDM's pororo HDF5
  layout (test split), read by AR-LDM's own datasets/pororo.py with those
  tokenizers, collated into one batch (B = 2) and run through ARLDM.sample()
  with DDIM; also each story's frame 0 resized to 32x32 by PIL (bilinear),
  what a continuation strip shows as the given frame.

- arldm_init.safetensors: ARLDM.__init__ itself (mode train) on the tiny
  SD folder (tests/fixtures/sd/pipe) and BLIP checkpoint
  (tests/fixtures/blip/blip_base) with S = 85 and tables of 919 / 101 rows:
  per state-dict entry its shape and statistics, the resized tables' copied
  and new rows apart, the null buffers (what `pipeline arldm-init` must
  reproduce; see make_init).

`--dataset` writes only the dataset group, after checking that the rebuilt
model is the committed arldm_tiny.safetensors; `--init` only
arldm_init.safetensors.

Run from the source tree root (diffusers 0.7.2 first on the path):

  PYTHONPATH=/root/refsrc/diffusers-0.7.2/src:/root/refenv/site /usr/bin/python3 tests/gen_arldm.py

Stand-ins (import plumbing only, no math changed): pytorch_lightning
(LightningModule = nn.Module with device = cpu; seed_everything seeds random, numpy and torch
as Lightning does), pl_bolts, hydra, omegaconf (attribute dicts), timm and
fairscale as in gen_blip.py, models.inception (FID only, not built); the
from_pretrained calls build tiny models from configs; the tokenizers return
fixed ids (the contexts are checked from ids). Sizes: AR-LDM hard-codes
width 768 for modal_type_embeddings and time_embeddings; after construction
they are replaced by tables of the tiny width D (the forward never names
768). sample() hard-codes 512x512: diffusion() is wrapped to run at 32x32
(and records its latents); num_inference_steps is a few, not 250.
"""
import json
import os
import random
import sys
import types

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "arldm")
REFSRC = os.environ.get("REFSRC", "/root/refsrc")
sys.path.insert(0, HERE)
from gen_blip import exactify, install_timm_standins, perturb  # noqa: E402

torch.set_grad_enabled(False)

D = 32            # context width (768 in the real model)
S = 8             # max_length (85 for pororo)
CLIP_V0, CLIP_V = 40, 44   # CLIP vocab before / after the added character tokens
BLIP_V0, BLIP_V = 50, 52
CLIP_BOS, CLIP_EOS = 38, 39
BERT_PAD, BERT_CLS, BERT_SEP, BERT_ENC = 0, 1, 2, 51
IMG = 32          # generated frame size (512 in sample())
STEPS = 4
GUIDANCE = 6.0
SEED = 7

UNET_CFG = dict(sample_size=IMG // 8, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=D,
                attention_head_dim=2, norm_num_groups=4)
VAE_CFG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
               layers_per_block=2, latent_channels=4, norm_num_groups=4, sample_size=IMG)


class Cfg(dict):
    """omegaconf.DictConfig stand-in: attribute access and get()."""
    __getattr__ = dict.__getitem__


def install_standins():
    install_timm_standins()
    mods = {}
    for n in ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.loggers",
              "pytorch_lightning.strategies", "pl_bolts", "pl_bolts.optimizers",
              "pl_bolts.optimizers.lr_scheduler", "hydra", "omegaconf", "models.inception"]:
        mods[n] = types.ModuleType(n)
        sys.modules[n] = mods[n]
    pl = mods["pytorch_lightning"]

    class LightningModule(nn.Module):
        device = torch.device("cpu")
    pl.LightningModule = LightningModule
    pl.LightningDataModule = object

    def seed_everything(seed):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return seed
    pl.seed_everything = seed_everything
    pl.Trainer = None
    mods["pytorch_lightning.callbacks"].ModelCheckpoint = None
    mods["pytorch_lightning.callbacks"].LearningRateMonitor = None
    mods["pytorch_lightning.loggers"].TensorBoardLogger = None
    mods["pytorch_lightning.strategies"].DDPStrategy = None
    mods["pl_bolts.optimizers.lr_scheduler"].LinearWarmupCosineAnnealingLR = None
    mods["hydra"].main = lambda **kw: (lambda f: f)
    mods["omegaconf"].DictConfig = Cfg
    mods["models.inception"].InceptionV3 = None


class TinyTok:
    """Tokenizer stand-in: only the null caption "" is ever tokenized."""

    def __init__(self, ids, pad):
        self.ids, self.pad = ids, pad

    def __call__(self, texts, padding=None, max_length=None, return_tensors=None, **kw):
        assert texts == [""]
        row = self.ids + [self.pad] * (max_length - len(self.ids))
        return types.SimpleNamespace(input_ids=torch.tensor([row]))


def build_model(task):
    sys.path.insert(0, os.path.join(REFSRC, "ARLDM"))
    import main as M
    import models.blip_override.blip as blip
    from models.blip_override.vit import VisionTransformer
    from transformers import CLIPTextConfig, CLIPTextModel
    from diffusers import AutoencoderKL

    bert_tok = TinyTok([BERT_CLS, BERT_SEP], BERT_PAD)
    bert_tok.enc_token_id = BERT_ENC
    M.CLIPTokenizer = types.SimpleNamespace(
        from_pretrained=lambda *a, **k: TinyTok([CLIP_BOS, CLIP_EOS], CLIP_EOS))
    M.init_tokenizer = lambda: bert_tok
    blip.init_tokenizer = lambda: bert_tok
    blip.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(
        img_size=image_size, patch_size=32, embed_dim=24, depth=1, num_heads=4, mlp_ratio=2.0), 24)
    med = dict(json.load(open(os.path.join(REFSRC, "ARLDM", "models", "blip_override", "med_config.json"))))
    med.update(hidden_size=D, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=16, vocab_size=BLIP_V0)
    os.makedirs(OUT, exist_ok=True)
    med_path = os.path.join(OUT, "med_config.json")
    with open(med_path, "w") as f:
        json.dump(med, f, indent=2, sort_keys=True)
    M.blip_feature_extractor = lambda pretrained="", **kw: blip.BLIP_Base(med_config=med_path, **kw)
    clip_cfg = CLIPTextConfig(vocab_size=CLIP_V0, hidden_size=D, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=6, bos_token_id=CLIP_BOS,
                              eos_token_id=CLIP_EOS, pad_token_id=CLIP_EOS)
    M.CLIPTextModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: CLIPTextModel(clip_cfg))
    M.AutoencoderKL = types.SimpleNamespace(from_pretrained=lambda *a, **k: AutoencoderKL(**VAE_CFG))
    UNet = M.UNet2DConditionModel
    UNET_CLASS.append(UNet)
    M.UNet2DConditionModel = types.SimpleNamespace(from_pretrained=lambda *a, **k: UNet(**UNET_CFG))

    args = Cfg(mode="train", task=task, dataset="tiny", freeze_clip=False, freeze_blip=False,
               freeze_resnet=False, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
               tiny=Cfg(max_length=S, clip_embedding_tokens=CLIP_V, blip_embedding_tokens=BLIP_V))
    torch.manual_seed(1234)
    m = M.ARLDM(args)
    # AR-LDM wires 768 here; the tiny model's width is D (see the notes above).
    m.modal_type_embeddings = nn.Embedding(2, D)
    m.time_embeddings = nn.Embedding(5, D)
    perturb(m)
    return M, m.eval()


def run_sample(M, m, task, scheduler_name, batch):
    from diffusers import DDIMScheduler, PNDMScheduler
    if scheduler_name == "pndm":
        m.scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    skip_prk_steps=True)
    else:
        m.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=True)
    m.task = task
    rec = []
    diffusion = M.ARLDM.diffusion
    orig_randn = torch.randn

    def wrapped(self, ehs, mask, height, width, steps, g, eta):
        frame = {"context": ehs.clone(), "mask": mask.clone()}

        def randn(*a, **k):
            r = orig_randn(*a, **k)
            frame["latents_initial"] = r.clone()
            return r
        orig_step = self.scheduler.step

        def step(out, t, lat, **kw):
            res = orig_step(out, t, lat, **kw)
            frame["latents_final"] = res.prev_sample.clone()
            return res
        torch.randn = randn
        self.scheduler.step = step
        try:
            imgs = diffusion(self, ehs, mask, IMG, IMG, steps, g, eta)
        finally:
            torch.randn = orig_randn
            del self.scheduler.step
        frame["image"] = torch.stack([torch.from_numpy(np.array(im)) for im in imgs])
        rec.append(frame)
        return imgs

    M.ARLDM.diffusion = wrapped
    try:
        sys.modules["pytorch_lightning"].seed_everything(SEED)
        m.sample(tuple(t.clone() for t in batch))
    finally:
        M.ARLDM.diffusion = diffusion
    return rec


def make_batch(task, g):
    """One story: images (B, V, H, W, 3) uint8, captions (B, V, S), masks,
    source images (B, src_V, 3, 224, 224) as the BLIP processor makes them,
    source captions and masks (BLIP ids)."""
    V = 4 if task == "continuation" else 5
    src_V = 5
    lens = [5, 8, 3, 6, 4]
    cap = torch.full((1, 5, S), CLIP_EOS, dtype=torch.long)
    cam = torch.zeros(1, 5, S, dtype=torch.long)
    bcap = torch.full((1, 5, S), BERT_PAD, dtype=torch.long)
    bam = torch.zeros(1, 5, S, dtype=torch.long)
    for i, n in enumerate(lens):
        cap[0, i, 0] = CLIP_BOS
        cap[0, i, 1:n - 1] = torch.randint(0, CLIP_V - 2, (n - 2,), generator=g)
        cap[0, i, n - 1] = CLIP_EOS
        cam[0, i, :n] = 1
        bcap[0, i, 0] = BERT_CLS
        bcap[0, i, 1:n - 1] = torch.randint(3, BLIP_V - 1, (n - 2,), generator=g)
        bcap[0, i, n - 1] = BERT_SEP
        bam[0, i, :n] = 1
    cap[0, 1, 2] = CLIP_V - 1   # an added character token
    bcap[0, 1, 2] = BLIP_V - 2
    frames = torch.randint(0, 256, (1, 5, IMG, IMG, 3), generator=g, dtype=torch.uint8)
    from PIL import Image
    from torchvision import transforms
    proc = transforms.Compose([transforms.Resize([224, 224]), transforms.ToTensor(),
                               transforms.Normalize([0.48145466, 0.4578275, 0.40821073],
                                                    [0.26862954, 0.26130258, 0.27577711])])
    src = torch.stack([proc(Image.fromarray(frames[0, i].numpy())) for i in range(5)]).unsqueeze(0)
    if task == "continuation":
        # AR-LDM's datasets: the targets are frames 1..4; the sources all five
        return (frames[:, 1:], cap[:, 1:], cam[:, 1:], src, bcap, bam), frames, cap, cam, bcap, bam, src_V, V
    return (frames, cap, cam, src, bcap, bam), frames, cap, cam, bcap, bam, src_V, V


# ---- the tiny story dataset: captions in a vocabulary that fits the tables
WORDS = ["a", "the", "is", "and", "in", "snow", "house", "playing", "with", "eating", "cake", "looks", "at",
         "tree", "sky", "red", "blue", "big", "small", "dog", "runs", "to", "friend", "happy", "sad", "sits",
         "on", "chair", "door", "opens", "sees", "bird", "flies", "ball", "kicks", "smiles", "sleeps", "talks"]
NAMES = ["pororo", "loopy", "eddy", "crong"]   # the dataset's new_tokens
BERT_EXTRA = ["pororo", "loopy", "car", "sun", "hat"]  # two names BERT already knows
DS_CAPTIONS = [
    ["pororo is playing in the snow", "loopy looks at the big tree", "eddy and crong eating cake",
     "the red bird flies", "pororo smiles at loopy"],
    ["crong kicks a blue ball", "the dog runs to eddy", "loopy sits on a chair",
     "pororo opens the door", "a happy friend sleeps"],
]


def write_tokenizers(d):
    """CLIP: 38 words + <|startoftext|> (38) + <|endoftext|> (39); every word
    one BPE token, built by a chain of merges. BERT: [PAD] [CLS] [SEP] [UNK]
    [MASK] + 43 words (BLIP's init_tokenizer adds [DEC] = 48, [ENC] = 49)."""
    assert len(WORDS) == CLIP_V0 - 2
    os.makedirs(d, exist_ok=True)
    vocab, merges = {}, []

    def bpe(w):  # CLIP's bpe(): merge the best-ranked pair until none applies
        sym = list(w[:-1]) + [w[-1] + "</w>"]
        rank = {m: i for i, m in enumerate(merges)}
        while len(sym) > 1:
            pairs = [(rank.get(sym[i] + " " + sym[i + 1], 1 << 30), i) for i in range(len(sym) - 1)]
            r, i = min(pairs)
            if r == 1 << 30:
                break
            sym = sym[:i] + [sym[i] + sym[i + 1]] + sym[i + 2:]
        return sym

    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
        # a new merge ranks after every earlier one, so it never changes a
        # word already made whole
        while len(sym := bpe(w)) > 1:
            merges.append(sym[0] + " " + sym[1])
    vocab["<|startoftext|>"] = CLIP_BOS
    vocab["<|endoftext|>"] = CLIP_EOS
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab, f, indent=0)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: tiny\n" + "\n".join(merges) + "\n")
    bert = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + WORDS + BERT_EXTRA
    assert len(bert) == BLIP_V0 - 2 and bert.index("[PAD]") == BERT_PAD and bert.index("[CLS]") == BERT_CLS
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(bert) + "\n")


def arldm_pororo(d, h5path, task):
    """AR-LDM's datasets/pororo.StoryDataset('test') with the tiny tokenizers
    (from_pretrained stand-ins reading tok/; its code runs unchanged)."""
    import contextlib
    import importlib.util
    import io
    from transformers import CLIPTokenizer
    from transformers.tokenization_utils_base import AddedToken
    import gen_datasets as GD
    AddedToken.__str__ = lambda self: self.content  # see ../shared/REFERENCE.md
    spec = importlib.util.spec_from_file_location("arldm_pororo", os.path.join(REFSRC, "ARLDM", "datasets", "pororo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.CLIPTokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: CLIPTokenizer(
        os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")))
    mod.init_tokenizer = GD.arldm_init_tokenizer(os.path.join(d, "vocab.txt"))
    args = Cfg(dataset="pororo", task=task,
               pororo=Cfg(hdf5_file=h5path, max_length=S, new_tokens=NAMES))
    with contextlib.redirect_stdout(io.StringIO()):
        ds = mod.StoryDataset("test", args)
    assert len(ds.clip_tokenizer) == CLIP_V and len(ds.blip_tokenizer) == BLIP_V, \
        (len(ds.clip_tokenizer), len(ds.blip_tokenizer))
    for w in WORDS:
        assert len(ds.clip_tokenizer(w).input_ids) == 3, w
    return ds


def make_dataset(M, m):
    import gen_datasets as GD
    from PIL import Image
    d = os.path.join(OUT, "tok")
    write_tokenizers(d)
    h5 = os.path.join(OUT, "story_ds.h5")
    kinds = ["gradient", "checker", "rings", "blocks", "checker"]
    GD.rng = np.random.default_rng(2026)
    frames = [[GD.frame(kinds[(i + 2 * s) % 5]) for i in range(5)] for s in range(2)]
    GD.write_story_file(h5, {"test": [(frames[s], {"text": "|".join(DS_CAPTIONS[s])}) for s in range(2)]}, ["text"])
    for task in ("visualization", "continuation"):
        ds = arldm_pororo(d, h5, task)
        items = [ds[k] for k in range(2)]
        batch = tuple(torch.stack([it[j] for it in items]) for j in range(6))  # DataLoader's collate
        rec = run_sample(M, m, task, "ddim", batch)
        out = {"captions": batch[1], "caption_mask": batch[2], "blip_captions": batch[4], "blip_mask": batch[5]}
        for s in range(2):
            raw = ds.h5["image0"][s]
            import cv2
            f0 = cv2.imdecode(raw, cv2.IMREAD_COLOR)[:128]
            out["story%d.frame0_32" % s] = torch.from_numpy(np.array(Image.fromarray(f0).resize((IMG, IMG), Image.BILINEAR)))
        for i, fr in enumerate(rec):
            for k, v in fr.items():
                out["frame%d.%s" % (i, k)] = v
        save("story_dataset_%s.safetensors" % task, out)
        print("dataset", task, "frames", len(rec), "ids", batch[1][0, 0].tolist(), batch[4][0, 0].tolist())


# ---- ARLDM.__init__ on the tiny SD and BLIP fixtures (pipeline arldm-init)
INIT_S, INIT_VCLIP, INIT_VBLIP = 85, 919, 101   # pororo's max_length; + 5 / + 3 rows


def tensor_stats(t):
    """numel, sum, sum of squares, max |x| (f64), of @t as f32 values."""
    x = t.detach().double().flatten()
    return torch.tensor([x.numel(), x.sum().item(), (x * x).sum().item(),
                         x.abs().max().item() if x.numel() else 0.0], dtype=torch.float64)


def make_init(M):
    """ARLDM(args) with mode=train, its from_pretrained calls reading the tiny
    SD folder (tests/fixtures/sd/pipe) and BLIP's load_checkpoint reading the
    tiny BLIP fixture (blip_base/model.safetensors, written to a temporary
    .pth as {'model': state} and loaded by AR-LDM's own load_checkpoint), the
    BERT tokenizer the tiny tok/vocab.txt through AR-LDM's init_tokenizer.
    Stand-ins: create_vit builds the tiny ViT on the checkpoint's 32-pixel
    grid (so interpolate_pos_embed keeps pos_embed, which arldm-init copies
    as stored); diffusers 0.7.2 cannot read safetensors (and transformers
    4.30 not one without format metadata), so the text encoder, VAE and UNet
    are built from their config.json and given the file's tensors (0.19
    names of the VAE attention mapped to 0.7.2's query/key/value/proj_attn).
    Written: per state-dict entry its shape and (numel, sum, sum of squares,
    max |x|); for the resized tables the same over the copied rows and over
    the new rows; the null buffers as they are (the image per channel)."""
    import tempfile
    from safetensors.torch import load_file
    import gen_datasets as GD
    import models.blip_override.blip as blip
    from models.blip_override.vit import VisionTransformer
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.tokenization_utils_base import AddedToken
    from diffusers import AutoencoderKL
    AddedToken.__str__ = lambda self: self.content
    sd = os.path.join(HERE, "fixtures", "sd", "pipe")
    bfile = os.path.join(HERE, "fixtures", "blip", "blip_base", "model.safetensors")
    tok = GD.arldm_init_tokenizer(os.path.join(OUT, "tok", "vocab.txt"))
    M.init_tokenizer = tok
    blip.init_tokenizer = tok
    M.CLIPTokenizer = types.SimpleNamespace(
        from_pretrained=lambda name, subfolder: CLIPTokenizer.from_pretrained(os.path.join(sd, subfolder)))
    def clip_text(name, subfolder):
        # transformers 4.30 refuses a safetensors file without format metadata
        from transformers import CLIPTextConfig
        model = CLIPTextModel(CLIPTextConfig.from_pretrained(os.path.join(sd, subfolder)))
        st = {k: v.float() for k, v in load_file(os.path.join(sd, subfolder, "model.safetensors")).items()}
        msg = model.load_state_dict(st, strict=False)
        assert not msg.unexpected_keys and set(msg.missing_keys) <= {"text_model.embeddings.position_ids"}, msg
        return model
    M.CLIPTextModel = types.SimpleNamespace(from_pretrained=clip_text)
    bstate = {k[len("mm_encoder."):]: v.float() for k, v in load_file(bfile).items()}
    # model_large.pth holds BertEmbeddings' position_ids buffer; the tiny
    # BLIP fixture does not (load_checkpoint asserts no missing key)
    npos = bstate["text_encoder.embeddings.position_embeddings.weight"].shape[0]
    bstate["text_encoder.embeddings.position_ids"] = torch.arange(npos).expand((1, -1))
    vw = bstate["visual_encoder.pos_embed"].shape[-1]
    grid = int(round((bstate["visual_encoder.pos_embed"].shape[1] - 1) ** 0.5))
    blip.create_vit = lambda vit, image_size, *a, **k: (VisionTransformer(
        img_size=grid * 8, patch_size=8, embed_dim=vw, depth=2, num_heads=4, mlp_ratio=2.0), vw)
    med = json.load(open(os.path.join(HERE, "fixtures", "blip", "blip_base", "med_config.json")))
    med["vocab_size"] = bstate["text_encoder.embeddings.word_embeddings.weight"].shape[0]  # as model_large's
    tmp = tempfile.mkdtemp()
    med_path, ck = os.path.join(tmp, "med_config.json"), os.path.join(tmp, "model_large.pth")
    json.dump(med, open(med_path, "w"))
    torch.save({"model": bstate}, ck)
    fe = blip.blip_feature_extractor
    M.blip_feature_extractor = lambda pretrained, **kw: fe(pretrained=ck, med_config=med_path, **kw)

    def diffusers_part(cls, sub, rename=None):
        cfg = json.load(open(os.path.join(sd, sub, "config.json")))
        model = cls(**{k: v for k, v in cfg.items() if not k.startswith("_") and k in
                       inspect.signature(cls.__init__).parameters})
        st = {k: v.float() for k, v in load_file(os.path.join(sd, sub, "diffusion_pytorch_model.safetensors")).items()}
        if rename:
            st = {rename(k): v for k, v in st.items()}
        model.load_state_dict(st, strict=True)
        return model

    def vae_old_names(k):
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
            if "mid_block.attentions" in k:
                k = k.replace(new, old)
        return k
    import inspect
    M.AutoencoderKL = types.SimpleNamespace(
        from_pretrained=lambda name, subfolder: diffusers_part(AutoencoderKL, subfolder, vae_old_names))
    UNet = M.UNet2DConditionModel if isinstance(M.UNet2DConditionModel, type) else UNET_CLASS[0]
    M.UNet2DConditionModel = types.SimpleNamespace(
        from_pretrained=lambda name, subfolder: diffusers_part(UNet, subfolder))
    args = Cfg(mode="train", task="visualization", dataset="tiny", freeze_clip=False, freeze_blip=False,
               freeze_resnet=False,
               tiny=Cfg(max_length=INIT_S, clip_embedding_tokens=INIT_VCLIP, blip_embedding_tokens=INIT_VBLIP))
    import contextlib
    import io
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        m = M.ARLDM(args)
    state = m.state_dict()
    te = load_file(os.path.join(sd, "text_encoder", "model.safetensors"))
    old_rows = {"text_encoder.text_model.embeddings.token_embedding.weight":
                te["text_model.embeddings.token_embedding.weight"].shape[0],
                "text_encoder.text_model.embeddings.position_embedding.weight":
                te["text_model.embeddings.position_embedding.weight"].shape[0],
                "mm_encoder.text_encoder.embeddings.word_embeddings.weight":
                bstate["text_encoder.embeddings.word_embeddings.weight"].shape[0]}
    out = {"config": torch.tensor([INIT_S, INIT_VCLIP, INIT_VBLIP], dtype=torch.int64)}
    for k, v in state.items():
        out["shape." + k] = torch.tensor(list(v.shape), dtype=torch.int64)
        out["stat." + k] = tensor_stats(v)
        if k in old_rows:
            n = old_rows[k]
            out["head." + k] = tensor_stats(v[:n])
            out["tail." + k] = tensor_stats(v[n:])
    for k in ("clip_text_null_token", "blip_text_null_token"):
        out[k] = state[k]
    im = state["blip_image_null_token"]
    out["blip_image_null_token.channel_min"] = im.amin(dim=(0, 2, 3))
    out["blip_image_null_token.channel_max"] = im.amax(dim=(0, 2, 3))
    save("arldm_init.safetensors", out)
    print("init: %d state-dict entries, null tokens %s / %s" % (len(state), state["clip_text_null_token"][0, :4].tolist(),
                                                                 state["blip_text_null_token"][0, :4].tolist()))


UNET_CLASS = []


def save(name, d):
    save_file({k: v.detach().contiguous() for k, v in d.items()}, os.path.join(OUT, name))


def main():
    install_standins()
    M, m = build_model("visualization")
    os.makedirs(OUT, exist_ok=True)
    # parameters are bf16-exact (perturb): stored as bf16; buffers as they are
    params = {k for k, _ in m.named_parameters()}
    state = {k: (v.to(torch.bfloat16) if k in params else v).detach().clone().contiguous()
             for k, v in m.state_dict().items()}
    if "--init" in sys.argv[1:]:
        make_init(M)
        return
    if "--dataset" in sys.argv[1:]:
        from safetensors.torch import load_file
        old = load_file(os.path.join(OUT, "arldm_tiny.safetensors"))
        assert old.keys() == state.keys() and all(torch.equal(old[k], state[k]) for k in old), \
            "the rebuilt model differs from the committed arldm_tiny.safetensors"
        make_dataset(M, m)
        return
    save_file(state, os.path.join(OUT, "arldm_tiny.safetensors"))
    for part, mod in (("unet", m.unet), ("vae", m.vae)):
        os.makedirs(os.path.join(OUT, part), exist_ok=True)
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(mod.config).items()}
        cfg["_class_name"] = type(mod).__name__
        with open(os.path.join(OUT, part, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
    os.makedirs(os.path.join(OUT, "text_encoder"), exist_ok=True)
    cc = m.text_encoder.config.to_dict()
    cc = {k: v for k, v in cc.items() if not k.startswith("_") and k != "transformers_version"}
    with open(os.path.join(OUT, "text_encoder", "config.json"), "w") as f:
        json.dump(cc, f, indent=2, sort_keys=True)
    with open(os.path.join(OUT, "tiny.json"), "w") as f:
        json.dump(dict(S=S, D=D, clip_vocab=CLIP_V, blip_vocab=BLIP_V, clip_bos=CLIP_BOS, clip_eos=CLIP_EOS,
                       bert_pad=BERT_PAD, bert_cls=BERT_CLS, bert_sep=BERT_SEP, bert_enc=BERT_ENC,
                       image=IMG, steps=STEPS, guidance=GUIDANCE, seed=SEED), f, indent=2, sort_keys=True)

    g = torch.Generator().manual_seed(99)
    # ---- the override UNet with its mask
    s = torch.randn(2, 4, IMG // 8, IMG // 8, generator=g)
    t = torch.tensor([10, 621], dtype=torch.int64)
    ehs = torch.randn(2, 3 * S, D, generator=g)
    mask = torch.zeros(2, 3 * S, dtype=torch.bool)
    mask[0, 5:S] = True
    mask[0, 2 * S:] = True
    mask[1, 3:S] = True
    mask[1, S + 4:] = True
    out = m.unet(s, t, ehs, None).sample
    out_m = m.unet(s, t, ehs, mask).sample
    save("unet_io.safetensors", {"sample": s, "timestep": t, "encoder_hidden_states": ehs,
                                 "encoder_attention_mask": mask.to(torch.uint8), "out_sample": out,
                                 "out_sample_masked": out_m})
    print("unet |out| %.4g, mask changes it by %.4g" % (out.abs().max(), (out - out_m).abs().max()))

    # ---- the resized CLIP text encoder
    ids = torch.tensor([[CLIP_BOS, 3, CLIP_V - 1, 17, CLIP_EOS, CLIP_EOS, CLIP_EOS, CLIP_EOS],
                        [CLIP_BOS, 5, 6, 7, 8, 9, 10, CLIP_EOS]])
    am = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
    o = m.text_encoder(ids, am)
    save("clip_io.safetensors", {"input_ids": ids, "attention_mask": am,
                                 "last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output})

    # ---- sample(): both tasks, both schedulers
    for task in ("visualization", "continuation"):
        gb = torch.Generator().manual_seed(5 if task == "visualization" else 6)
        batch, frames, cap, cam, bcap, bam, src_V, V = make_batch(task, gb)
        for sch in ("ddim", "pndm"):
            rec = run_sample(M, m, task, sch, batch)
            assert len(rec) == V
            d = {"frames": frames, "captions": cap, "caption_mask": cam, "blip_captions": bcap,
                 "blip_mask": bam}
            for i, fr in enumerate(rec):
                for k, v in fr.items():
                    d["frame%d.%s" % (i, k)] = v
            save("story_%s_%s.safetensors" % (task, sch), d)
            print(task, sch, "frames", len(rec), "image mean %.2f" % rec[-1]["image"].float().mean())
    make_dataset(M, m)
    make_init(M)
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
