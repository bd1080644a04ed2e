#!/usr/bin/env python3
"""tests/gen_checkpoints.py - PyTorch checkpoint fixtures for test_core_checkpoint.

Writes small files with torch.save (torch 1.13.1 of the reference environment)
into tests/fixtures/ckpt/, and for each file the tensors torch.load returns,
as JSON (expected/<file>.json: dotted path -> dtype, shape, hex of the
contiguous little-endian bytes), so that the C reader is checked bit for bit
against torch.load, not against numbers typed by hand.

  PYTHONPATH=/root/refenv/site /usr/bin/python3 tests/gen_checkpoints.py

Files:
  plain.pt        zip format: mixed dtypes, shared storages, strided views,
                  0-dim and empty tensors, a Parameter
  legacy.pt       the same state dict in the legacy (pre-1.6) format
  lightning.ckpt  a Lightning-style checkpoint: epoch, global_step,
                  state_dict (the tiny SD UNet as unet.*), optimizer_states,
                  lr_schedulers, callbacks, hyper_parameters holding objects
                  of classes that are not on the allow-list (a user class,
                  pathlib, numpy scalars)
  blip.pth        a BLIP-style {"model": state_dict} (the tiny CLIP text
                  encoder as text_encoder.*)
  sd.ckpt         an original-SD-style {"state_dict": ...} with the CompVis
                  names (first_stage_model.*, cond_stage_model.transformer.*)
                  taken from tests/fixtures/sd/sd_tiny_single.safetensors
  bad_*.pt        malformed variants (forbidden global, truncated zip,
                  missing storage record, big-endian byteorder, storage too
                  small for the view, corrupt pickle)
"""
import collections
import io
import json
import os
import pathlib
import sys
import types
import zipfile

import numpy as np
import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "ckpt")
SD = os.path.join(HERE, "fixtures", "sd")

DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
      torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
      torch.uint8: "u8", torch.bool: "bool"}


def flatten(obj, prefix, out):
    """Every tensor of @obj by its dotted path (dict keys and list/tuple
    indices joined by '.'), in the order the C reader lists them."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


def tensor_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_expected(name, obj, skip=None):
    flat = {}
    flatten(obj, "", flat)
    if skip:  # tensors compared with another fixture instead (keeps this file small)
        flat = {k: t for k, t in flat.items() if not k.startswith(skip)}
    exp = {k: {"dtype": DT[t.dtype], "shape": list(t.shape), "hex": tensor_bytes(t).hex()}
           for k, t in flat.items()}
    os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
    with open(os.path.join(OUT, "expected", name + ".json"), "w") as f:
        json.dump(exp, f, indent=0, sort_keys=True)


def save(name, obj, legacy=False, expected=True, skip=None):
    path = os.path.join(OUT, name)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    back = torch.load(path)  # what the C reader must reproduce
    if expected:
        write_expected(name, back, skip)
    return path


def mixed_state_dict(g):
    base = torch.randn(4, 6, generator=g)
    sd = collections.OrderedDict()
    sd["w_f32"] = base
    sd["w_t"] = base.t()                    # non-contiguous view of the same storage
    sd["w_rows"] = base[1:3]                # storage offset
    sd["w_cols"] = base[:, 1::2]            # strided view
    sd["f16"] = torch.randn(3, 5, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, 2, generator=g).bfloat16()
    sd["f64"] = torch.randn(5, generator=g).double()
    sd["i64"] = torch.arange(-3, 4, dtype=torch.int64) * 1000000007
    sd["i32"] = torch.tensor([-7, 0, 2147483647], dtype=torch.int32)
    sd["i16"] = torch.tensor([[-32768, 5], [7, 32767]], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)        # 0-dim
    sd["step"] = torch.tensor(7)            # 0-dim int64
    sd["empty"] = torch.zeros(0, 3)         # no element
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["nested"] = {"a": [torch.ones(2) * 3, (torch.full((1,), -1.5),)]}
    sd["n_params"] = 17                     # plain values beside the tensors
    sd["name"] = "mixed"
    return sd


class Holder:
    """A user class holding a tensor (pickled as __main__.Holder)."""


def stand_in_module(modname, clsname, base=dict):
    """A class that exists only here (the reader must not need it)."""
    mod = types.ModuleType(modname)
    cls = type(clsname, (base,), {"__module__": modname})
    mod.__dict__[clsname] = cls
    parts = modname.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    sys.modules[modname] = mod
    return cls


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    sd = mixed_state_dict(g)
    save("plain.pt", sd)
    save("legacy.pt", sd, legacy=True)

    # Lightning-style: the UNet of the tiny pipeline as unet.*, optimizer state
    # for two of its parameters, hyper-parameters with foreign objects.
    AttributeDict = stand_in_module("pytorch_lightning.utilities.parsing", "AttributeDict")
    unet = load_file(os.path.join(SD, "pipe", "unet", "diffusion_pytorch_model.safetensors"))
    state = collections.OrderedDict(("unet." + k, v) for k, v in unet.items())
    p0 = state["unet.conv_in.bias"]
    p1 = state["unet.conv_out.bias"]
    hp = AttributeDict(lr=1e-5, max_epochs=np.int64(50), run_dir=pathlib.PosixPath("/runs/x"),
                       scale=np.float32(0.18215))
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None,
                                                           "best_model_path": "/runs/x/last.ckpt"}},
        "optimizer_states": [{
            "state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.randn(p0.shape, generator=g),
                          "exp_avg_sq": torch.rand(p0.shape, generator=g)},
                      3: {"step": torch.tensor(120.0), "exp_avg": torch.randn(p1.shape, generator=g),
                          "exp_avg_sq": torch.rand(p1.shape, generator=g)}},
            "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
                              "amsgrad": False, "params": [0, 1, 2, 3]}],
        }],
        "lr_schedulers": [{"base_lrs": [1e-5], "last_epoch": 120, "_step_count": 121}],
        "hparams_name": "kwargs",
        "hyper_parameters": hp,
    }
    # state_dict.unet.* equals tests/fixtures/sd/pipe/unet (checked there)
    back = torch.load(save("lightning.ckpt", ckpt, skip="state_dict."))
    assert all(torch.equal(back["state_dict"]["unet." + k], v) for k, v in unet.items())

    # BLIP-style {"model": state_dict}: the tiny CLIP text encoder.
    clip = load_file(os.path.join(SD, "pipe", "text_encoder", "model.safetensors"))
    save("blip.pth", {"model": collections.OrderedDict(("text_encoder." + k, v) for k, v in clip.items())},
         expected=False)

    # Original-SD-style .ckpt: CompVis names under state_dict.
    single = load_file(os.path.join(SD, "sd_tiny_single.safetensors"))
    ldm = collections.OrderedDict((k, v) for k, v in single.items()
                                  if k.startswith(("first_stage_model.", "cond_stage_model.")))
    save("sd.ckpt", {"state_dict": ldm, "global_step": 470000, "epoch": 6}, expected=False)

    # ---- malformed variants ----
    small = collections.OrderedDict(a=torch.arange(6, dtype=torch.float32).reshape(2, 3),
                                    b=torch.tensor([1, 2], dtype=torch.int64))
    good = save("small.pt", small)
    with open(good, "rb") as f:
        raw = f.read()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    # a forbidden global (os.system via posix.system) beside a tensor
    torch.save({"w": small["a"], "x": Evil()}, os.path.join(OUT, "bad_global.pt"))
    # a tensor inside an object of a class not on the allow-list
    holder = Holder()
    holder.t = small["b"]
    torch.save({"w": small["a"], "obj": holder}, os.path.join(OUT, "bad_depends.pt"))
    # truncated zip (the central directory is gone)
    with open(os.path.join(OUT, "bad_truncated.pt"), "wb") as f:
        f.write(raw[: len(raw) // 2])

    def rezip(name, edit, extra=None):
        zin = zipfile.ZipFile(io.BytesIO(raw))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = edit(info.filename, zin.read(info.filename))
                if data is not None:  # fixed dates: the same bytes on every run
                    zout.writestr(zipfile.ZipInfo(info.filename, (1980, 1, 1, 0, 0, 0)), data)
            for n, d in (extra or {}).items():
                zout.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), d)
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(buf.getvalue())

    # a storage key with no record
    rezip("bad_missing_record.pt", lambda n, d: None if n.endswith("data/1") else d)
    # a big-endian file
    rezip("bad_byteorder.pt", lambda n, d: d, {"small/byteorder": b"big"})
    rezip("small_byteorder.pt", lambda n, d: d, {"small/byteorder": b"little"})
    # a storage record shorter than the pickle declares
    rezip("bad_short_record.pt", lambda n, d: d[:8] if n.endswith("data/0") else d)

    # a corrupt pickle: cut in the middle
    def cut(n, d):
        return d[: len(d) // 2] if n.endswith("data.pkl") else d
    rezip("bad_pickle.pt", cut)
    # a view that points past its storage (size edited in the pickle: (2, 3) -> (2, 9))
    def grow(n, d):
        if not n.endswith("data.pkl"):
            return d
        i = d.index(b"K\x02K\x03\x86")  # BININT1 2, BININT1 3, TUPLE2: the size (2, 3)
        return d[:i] + b"K\x02K\x09\x86" + d[i + 5:]
    rezip("bad_view.pt", grow)


def corpus():
    """Seed corpora of the fuzz harnesses (tests/fuzz/fuzz_torch_zip.c, fuzz_pickle.c)."""
    import pickle
    import pickletools
    zdir = os.path.join(HERE, "fuzz", "corpus", "fuzz_torch_zip")
    pdir = os.path.join(HERE, "fuzz", "corpus", "fuzz_pickle")
    os.makedirs(zdir, exist_ok=True)
    os.makedirs(pdir, exist_ok=True)
    for name in ["small.pt", "plain.pt", "legacy.pt", "small_byteorder.pt", "bad_depends.pt",
                 "bad_global.pt", "bad_view.pt"]:
        with open(os.path.join(OUT, name), "rb") as f, open(os.path.join(zdir, name), "wb") as g:
            g.write(f.read())
    # the legacy file after its magic number, protocol and sys-info pickles (the harness adds them)
    with open(os.path.join(OUT, "legacy.pt"), "rb") as f:
        raw = f.read()
    pos = 0
    for _ in range(3):
        for op, arg, at in pickletools.genops(raw[pos:]):
            if op.name == "STOP":
                pos += at + 1
                break
    with open(os.path.join(pdir, "legacy_object"), "wb") as f:
        f.write(raw[pos:])
    for name in ["plain.pt", "lightning.ckpt"]:
        z = zipfile.ZipFile(os.path.join(OUT, name))
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        with open(os.path.join(pdir, name.split(".")[0] + "_data.pkl"), "wb") as f:
            f.write(z.read(pkl))
    cyc = [1, 2]
    cyc.append(cyc)
    plain = {"a": [1, 2.5, "x", b"y", None, True, (1,), {1, 2}, frozenset({3}), 2 ** 100, -2 ** 70, -1, 65535],
             "od": collections.OrderedDict(k=1), "s": "\u00e9t\u00e9", "cyc": cyc, "ba": bytearray(b"ab")}
    for proto in (2, 3, 4, 5):
        with open(os.path.join(pdir, f"plain_p{proto}.pkl"), "wb") as f:
            f.write(pickle.dumps(plain, proto))


if __name__ == "__main__":
    main()
    corpus()
