#!/usr/bin/python3
"""tests/gen_tokenizers.py - expected token ids for the tokenizer plugins.

Runs the reference tokenizers on a set of tricky strings and writes
tests/fixtures/tokenizers/{clip,bert}.json:
- transformers 4.30's CLIPTokenizer (with ftfy 6.1.1 importable, as in
  AR-LDM's environment), loaded with from_pretrained from a folder laid out
  like Stable Diffusion 1.x's tokenizer/ (vocab.json, merges.txt,
  special_tokens_map.json, tokenizer_config.json), with AR-LDM's add_tokens;
- OpenAI's clip.tokenize / SimpleTokenizer on bpe_simple_vocab_16e6.txt.gz;
- transformers' BertTokenizer.from_pretrained (bert-base-uncased layout) with
  BLIP's init_tokenizer additions ([DEC] bos, [ENC]) and AR-LDM's add_tokens.

Run (reference environment, see ../shared/REFERENCE.md):
  PYTHONPATH=/root/refenv/site:/root/refenv/site-ftfy:/root/refsrc/openai-CLIP \
      /usr/bin/python3 tests/gen_tokenizers.py
Vocabulary files come from $MMP_SHARED_DATA (default ../shared/data); they
are not copied into the repository.
"""
import json
import os
import shutil
import sys
import tempfile

import ftfy  # noqa: F401  (CLIPTokenizer uses ftfy.fix_text when importable)
import transformers
from transformers.tokenization_utils_base import AddedToken

# Without the Rust `tokenizers` package, special-token ids resolve only when
# str(AddedToken) is its content (REFERENCE.md).
AddedToken.__str__ = lambda self: self.content

from transformers import BertTokenizer, CLIPTokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.environ.get("MMP_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
OUT = os.path.join(HERE, "fixtures", "tokenizers")

FLINTSTONES = ["fred", "barney", "wilma", "betty", "pebbles", "dino", "slate"]
PORORO = ["pororo", "loopy", "eddy", "harry", "poby", "tongtong", "crong", "rody", "petty"]

LONG = ("Fred and Barney walk down the long road to the quarry, talking about the bowling game "
        "they lost last night, while Wilma and Betty wait at home with Pebbles and Dino. " * 4)

TEXTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT!!!",
    "Hello, world... (really?) [yes] {no} <maybe> #1 @home $5 100% a&b c*d e+f g=h ~tilde^ `tick`",
    "numbers: 3.14159, 2,000,000 and 1/2 or 12:30pm - 007 -- 42nd",
    "it's he's they're we've I'm you'll she'd don't can't IT'S THEY'RE",
    "rock 'n' roll 'quoted' ''double'' 'sstrange",
    "It\u2019s a \u201ccurly\u201d \u2018quote\u2019 test \u201e\u201f",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c9cole \u00fcber \u00f1and\u00fa S\u00e3o Paulo Z\u00fcrich",
    "cafe\u0301 combining a\u0308 o\u0301",
    "\u6f22\u5b57 \u306b\u307b\u3093\u3054 \ud55c\uad6d\uc5b4 \u4e2d\u6587\u5b57\u7b26abc\u4e2d",
    "emoji \U0001F600\U0001F44D\U0001F3FD \u2764\ufe0f family \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "mojibake caf\u00c3\u00a9 \u00e2\u20ac\u2122s \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d na\u00c3\u00afve",
    "\u00c3\u00a9t\u00c3\u00a9 \u00d0\u00bf\u00d1\u20ac\u00d0\u00b8\u00d0\u00b2\u00d0\u00b5\u00d1\u201a",
    "html &amp; &lt;tag&gt; &quot;q&quot; &#39;s &#x2019; &eacute;t&eacute; &amp;amp; &nbsp;x &copy",
    "<b>bold &amp; html</b> with a tag",
    "multiple   spaces\tand\ttabs\n\nnewlines\r\nwindows\rmac",
    "   leading and trailing   ",
    "\u00a0nbsp\u00a0and\u2003em\u2003space\u3000ideographic\u200bzero-width",
    "ligatures \ufb01nance \ufb02ow \ufb00 and fullwidth \uff21\uff22\uff23\uff11\uff12",
    "control\x01chars\x07here\x1b[31mred\x1b[0m\ufeffbom\x7f",
    "Greek \u039f\u0394\u039f\u03a3 \u03a3\u03b9\u03c3\u03c5\u03c6\u03bf\u03c2 Turkish \u0130stanbul I\u0307 \u017ft",
    "ignorecase classes: \u0391\u0345 a\u0345b \u0345 x'\u017f y'S \u212a \u24b6\u24d0 \u2160\u2170",
    "math x\u00b2 \u00bd \u2153 \u2167 \u0663\u0664 \u00b5m 10\u00b3 \u221e",
    "Fred is talking to Barney in the living room.",
    "fred is talking to barney. FRED! Fred's hat, fred's car. xfredx fredfred",
    "Wilma and Betty, wilma & betty; Pebbles pebbles DINO dino Slate slate Mr. slate",
    "Pororo and Crong play. pororo, crong, loopy, eddy, harry, poby, tongtong, rody, petty",
    "PORORO Loopy Eddy's house; tongtong-rody petty/poby harry",
    "pororo's loopy's fred's  barney  .  dino",
    "<|startoftext|> tokens <|endoftext|> inside <|ENDOFTEXT|> text",
    "a<|endoftext|>b",
    "[CLS] bert [SEP] specials [MASK] [PAD] [UNK] [cls] [DEC] [ENC] [dec]",
    "punctuation!!!???...,,,;;;:::---___***",
    "e-mail: someone@example.com, url https://example.com/path?x=1&y=2",
    "\u00bfQu\u00e9? \u00a1S\u00ed! \u00ab guillemets \u00bb \u2014 dash \u2013 en",
    "   ",
    "\n",
    "x",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 120,
]

TEXTS_LONG = TEXTS + [LONG]


def random_texts(seed, n):
    """Seeded strings built from pieces that stress the cleaning and the
    added-token matching (Python's random is stable across versions)."""
    import random
    rnd = random.Random(seed)
    pool = (list("aAbBfFrReEdD '\u2019\"sStTmMlL.,!?-_0123456789\u00e9\u00c9\u00f1\u00d1\u00fc\u00dc"
                 "\u6f22\u5b57\U0001F600\n\t  \ufb01\uff21[]<>|&;#")
            + ["fred", "Fred", "FRED", "barney", "Barney", "pebbles", "pororo", "Pororo", "PORORO",
               "crong", "<|endoftext|>", "<|startoftext|>", "'s", "'ll", "'RE", "\u00c3\u00a9",
               "\u00e2\u20ac\u2122", "&quot;", "&amp;amp;", "&lt;", "&#39;", "\u00a0", "\u017f",
               "\u0130", "\u03a3", "\u0301", "\u3000", "\x85", "\u2028", "[DEC]", "[ENC]",
               "[CLS]", "[cls]", "\u00c3", "\u00c2 ", "\u2018", "\u201c", "\x1b[1m"])
    return ["".join(rnd.choice(pool) for _ in range(rnd.randint(0, 16))) for _ in range(n)]


def sd_tokenizer_dir(tmp):
    d = os.path.join(tmp, "clip_tokenizer")
    os.makedirs(d)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(DATA, "clip", f), d)
    tok = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False,
                     "single_word": False}
    # Stable Diffusion 1.x's tokenizer/special_tokens_map.json and tokenizer_config.json
    json.dump({"bos_token": tok("<|startoftext|>"), "eos_token": tok("<|endoftext|>"),
               "pad_token": "<|endoftext|>", "unk_token": tok("<|endoftext|>")},
              open(os.path.join(d, "special_tokens_map.json"), "w"))
    cfg_tok = lambda c: dict(tok(c), __type="AddedToken")
    json.dump({"add_prefix_space": False, "bos_token": cfg_tok("<|startoftext|>"),
               "do_lower_case": True, "eos_token": cfg_tok("<|endoftext|>"), "errors": "replace",
               "model_max_length": 77, "pad_token": "<|endoftext|>",
               "tokenizer_class": "CLIPTokenizer", "unk_token": cfg_tok("<|endoftext|>")},
              open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


def bert_dir(tmp):
    d = os.path.join(tmp, "bert")
    os.makedirs(d)
    shutil.copy(os.path.join(DATA, "bert", "vocab.txt"), d)
    json.dump({"do_lower_case": True}, open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d


def run_hf(tk, texts, max_length, truncation, lower_first=False):
    texts = [t.lower() if lower_first else t for t in texts]
    assert not any("\0" in t for t in texts)  # encode_text takes C strings
    # AR-LDM / diffusers call: padding="max_length", max_length, truncation
    enc = tk(texts, padding="max_length", max_length=max_length, truncation=truncation)
    for row in enc["input_ids"]:
        assert len(row) == max_length, "a text is longer than max_length without truncation"
    return enc["input_ids"], enc["attention_mask"]


def clip_cases(tmp):
    d = sd_tokenizer_dir(tmp)
    cases = []

    def hf_case(name, texts, max_length, truncation, new_tokens=None, lower=False, plugin=None,
                pad_token=None):
        kw = {}
        if pad_token is not None:
            kw["pad_token"] = pad_token
        tk = CLIPTokenizer.from_pretrained(d, **kw)
        n_added = tk.add_tokens(list(new_tokens)) if new_tokens else 0
        ids, mask = run_hf(tk, texts, max_length, truncation, lower)
        cfg = {"max_length": max_length, "truncation": truncation,
               "new_tokens": list(new_tokens or []), "lowercase_captions": lower}
        if pad_token is not None:
            cfg["pad_token"] = pad_token
        cfg.update(plugin or {"tokenizer_dir": "clip_tokenizer"})
        cases.append({"name": name, "config": cfg, "vocab_size": len(tk), "n_added": n_added,
                      "texts": texts, "input_ids": ids, "attention_mask": mask})

    hf_case("sd_vocab_json", TEXTS_LONG, 77, True)
    hf_case("sd_bpe_file_transformers_cleaning", TEXTS_LONG, 77, True,
            plugin={"bpe_file": "bpe_simple_vocab_16e6.txt.gz", "text_cleaning": "transformers"})
    hf_case("sd_vocab_merges_short", TEXTS_LONG, 16, True,
            plugin={"vocab": "vocab.json", "merges": "merges.txt"})
    hf_case("flintstones", TEXTS, 91, False, FLINTSTONES)
    hf_case("pororo", TEXTS, 85, False, PORORO)
    hf_case("pororo_lowercase_captions", TEXTS, 85, False, PORORO, lower=True)
    hf_case("odd_new_tokens", TEXTS, 77, True,
            ["Fred", "a", "ab c", "<x>", "tongtong", "tongtong", "\u00e9t\u00e9"])
    # a saved tokenizer folder with added_tokens.json (loaded by from_pretrained)
    d2 = os.path.join(tmp, "clip_tokenizer_added")
    shutil.copytree(d, d2)
    added = {"pororo": 49408, "Crong": 49409, "tong tong": 49410}
    json.dump(added, open(os.path.join(d2, "added_tokens.json"), "w"))
    tk = CLIPTokenizer.from_pretrained(d2)
    n_added = tk.add_tokens(["loopy", "crong", "Crong"])
    texts = TEXTS + ["pororo Crong crong tong tong tongtong loopy"]
    ids, mask = run_hf(tk, texts, 77, True)
    cases.append({"name": "saved_added_tokens_json",
                  "config": {"tokenizer_dir": "clip_tokenizer_added", "added_tokens_json": added,
                             "max_length": 77, "truncation": True,
                             "new_tokens": ["loopy", "crong", "Crong"],
                             "lowercase_captions": False},
                  "vocab_size": len(tk), "n_added": n_added + len(added), "texts": texts,
                  "input_ids": ids, "attention_mask": mask})
    hf_case("random_flintstones", random_texts(11, 400), 40, True, FLINTSTONES)
    hf_case("sd2_pad_bang", TEXTS_LONG + ["wow! ! !!  !x", "!"], 77, True, pad_token="!")

    # OpenAI's clip.tokenize (zero padding = id of "!"), SimpleTokenizer
    import clip.clip as openai_clip
    from clip.simple_tokenizer import SimpleTokenizer
    st = SimpleTokenizer(os.path.join(DATA, "clip", "bpe_simple_vocab_16e6.txt.gz"))
    openai_clip._tokenizer = st
    for ml in (77, 12):
        t = openai_clip.tokenize(TEXTS_LONG, context_length=ml, truncate=True).tolist()
        # the real length of each row (clip.tokenize gives no mask)
        mask = []
        for text in TEXTS_LONG:
            n = min(len(st.encode(text)) + 2, ml)
            mask.append([1] * n + [0] * (ml - n))
        cases.append({"name": "openai_clip_tokenize_%d" % ml,
                      "config": {"bpe_file": "bpe_simple_vocab_16e6.txt.gz", "max_length": ml,
                                 "truncation": True, "pad_token": "!", "new_tokens": [],
                                 "lowercase_captions": False},
                      "vocab_size": len(st.encoder), "n_added": 0, "texts": TEXTS_LONG,
                      "input_ids": t, "attention_mask": mask})
    return cases


def bert_cases(tmp):
    d = bert_dir(tmp)
    cases = []

    def case(name, texts, max_length, truncation, blip=True, new_tokens=None):
        tk = BertTokenizer.from_pretrained(d)
        if blip:  # BLIP's init_tokenizer (models/blip.py)
            tk.add_special_tokens({"bos_token": "[DEC]"})
            tk.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
            assert tk.additional_special_tokens_ids[0] == tk.convert_tokens_to_ids("[ENC]")
        n_added = tk.add_tokens(list(new_tokens)) if new_tokens else 0
        ids, mask = run_hf(tk, texts, max_length, truncation)
        cases.append({"name": name,
                      "config": {"vocab": "vocab.txt", "max_length": max_length,
                                 "truncation": truncation, "blip": blip,
                                 "new_tokens": list(new_tokens or [])},
                      "vocab_size": len(tk), "n_added": n_added,
                      "bos_token_id": tk.bos_token_id if blip else None,
                      "enc_token_id": tk.additional_special_tokens_ids[0] if blip else None,
                      "texts": texts, "input_ids": ids, "attention_mask": mask})

    case("blip_flintstones", TEXTS, 91, False, True, FLINTSTONES)
    case("blip_pororo", TEXTS, 85, False, True, PORORO)
    case("blip_vist", TEXTS_LONG, 100, True, True)
    case("blip_truncate_16", TEXTS_LONG, 16, True, True, ["Pororo", "NEWtok", "pebbles"])
    case("random_blip_pororo", random_texts(12, 400), 40, True, True, PORORO)
    case("bert_plain", TEXTS_LONG, 40, True, False)
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        meta = {"generator": "tests/gen_tokenizers.py", "transformers": transformers.__version__,
                "ftfy": ftfy.__version__}
        for name, cases in (("clip", clip_cases(tmp)), ("bert", bert_cases(tmp))):
            with open(os.path.join(OUT, name + ".json"), "w") as f:
                json.dump(dict(meta, cases=cases), f, ensure_ascii=True, separators=(",", ":"))
                f.write("\n")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
