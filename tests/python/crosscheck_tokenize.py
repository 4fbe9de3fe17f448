#!/usr/bin/env python3
"""Live cross-check of `loratune tokenize` / `detokenize` against Hugging Face `tokenizers`.

    python crosscheck_tokenize.py --cli build/loratune --workdir build/crosscheck-tok [--seed S] [--lines N]

Trains tokenizers with configurations drawn at random (normalizer, pre-tokenizer regex, metaspace,
byte fallback, ignore_merges, added tokens with lstrip/rstrip/single_word), writes random Unicode text
(many scripts, emoji sequences, combining marks, odd whitespace, digits, special tokens inside words),
then requires the CLI's ids (with and without special tokens) and decoded text to equal the reference's
on every line. Also runs the tokenizers of build/testdata/tokenizers (real Mistral vocabularies) on the
same text. Exit status 1 on any difference.
"""
import argparse
import json
import os
import random
import subprocess
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

REGEXES = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "o200k": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
             r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "digits": r"\p{N}|[^\p{N}]+",
}

PIECES = [
    "the", "The", "quick", "brown", "fox", "don't", "WE'LL", "it's", "naïve", "café", "über", "straße", "İstanbul",
    "日本語", "東京", "中文", "한국어", "Русский", "ελληνικά", "العربية", "עברית", "हिन्दी", "ไทย", "ᐊᓂᔑᓈᐯᒧᐎᓐ",
    "😀", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "❤️", "🇫🇷", "e\u0301", "a\u0308\u0323", "Z\u0336\u0335", "ﬁ", "①", "ｆｕｌｌ", "Ǆ", "ℌ",
    "𝔢𝔩", "x²", "½", "0", "7", "42", "123", "2024", "3.14159", "1e-9", "0xFF", "1,000", "٣", "५",
    "def", "return", "(", ")", "{", "}", "[", "]", "==", "!=", "->", "=>", "//", "/*", "*/", "#", "@", "$", "%", "^", "&",
    "*", "_", "-", "+", "=", "|", "\\", ":", ";", "\"", "'", "<", ">", ",", ".", "?", "!", "~", "`", "…", "—", "€", "£",
    "<|eot_id|>", "<s>", "</s>", "[INST]", "[/INST]", "<|im_start|>", "<|endoftext|>", "<unk>", "<0x41>", "▁", "Ġ",
]
SPACES = [" ", " ", " ", "  ", "   ", "\t", "\r", "\u00a0", "\u3000", "\u2003", "\u0085", "\u200b", "\u2028", "", ""]


def random_line(rng):
    out = []
    for _ in range(rng.randint(0, 30)):
        out.append(rng.choice(PIECES) if rng.random() < 0.8 else chr(rng.choice(
            [rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x24f), rng.randint(0x370, 0x52f), rng.randint(0x4e00, 0x4fff),
             rng.randint(0x1f300, 0x1f6ff), rng.randint(0x300, 0x36f), rng.randint(0xac00, 0xacff), rng.randint(0x2000, 0x206f)])))
        out.append(rng.choice(SPACES))
    return "".join(out).replace("\n", " ")


def corpus(rng, n):
    base = [random_line(rng) for _ in range(n)]
    stdlib = os.path.dirname(os.__file__)
    for name in sorted(os.listdir(stdlib))[200:260]:
        if name.endswith(".py"):
            with open(os.path.join(stdlib, name), encoding="utf-8", errors="ignore") as f:
                base.extend(f.read().splitlines()[:400])
    return base


def random_tokenizer(rng, train_text):
    kind = rng.choice(["bytelevel", "split", "split", "metaspace"])
    norm = rng.choice([None, "NFC", "NFKC", "lower", "strip-squeeze", "nfd"])
    if kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    else:
        tok = Tokenizer(models.BPE(ignore_merges=rng.random() < 0.5))
    if norm == "NFC":
        tok.normalizer = normalizers.NFC()
    elif norm == "NFKC":
        tok.normalizer = normalizers.NFKC()
    elif norm == "lower":
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    elif norm == "strip-squeeze":  # Strip, then whitespace runs squeezed by a regex Replace
        tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(r"\s+"), " ")])
    elif norm == "nfd":
        tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Replace("\u0301", "")])
    desc = {"kind": kind, "normalizer": norm}
    if kind == "bytelevel":
        aps = rng.random() < 0.5
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=aps, use_regex=True)
        desc["add_prefix_space"] = aps
    elif kind == "split":
        name = rng.choice(sorted(REGEXES))
        pts = [pre_tokenizers.Split(Regex(REGEXES[name]), behavior=rng.choice(["isolated", "isolated", "merged_with_previous"]), invert=False)]
        if rng.random() < 0.3:  # a string pattern with another behavior first
            pts.insert(0, pre_tokenizers.Split(rng.choice([" ", ".", "e"]), behavior=rng.choice(
                ["removed", "contiguous", "merged_with_next", "merged_with_previous", "isolated"]), invert=False))
        if rng.random() < 0.3:
            pts.insert(0, pre_tokenizers.Digits(individual_digits=rng.random() < 0.5))
        pts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(pts)
        desc["regex"] = name
    else:
        scheme = rng.choice(["first", "always"])
        split = rng.random() < 0.5
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
        desc.update(prepend_scheme=scheme, split=split)
    if kind == "metaspace":
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=rng.choice([600, 2000]), show_progress=False, special_tokens=["<unk>", "<s>", "</s>"])
    else:
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=rng.choice([600, 2000, 5000]), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"])
    tok.train_from_iterator(train_text, trainer)
    if kind == "metaspace":  # byte fallback needs <0xXX> entries in the vocabulary (not added tokens)
        j = json.loads(tok.to_str())
        vocab = j["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        tok = Tokenizer.from_str(json.dumps(j))
    tok.add_special_tokens(["<|eot_id|>", AddedToken("[INST]", lstrip=rng.random() < 0.5, rstrip=rng.random() < 0.5)])
    tok.add_tokens([AddedToken("fox", single_word=rng.random() < 0.5), AddedToken("<|im_start|>", normalized=False, special=True)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", tok.token_to_id("</s>"))])
    return tok, desc


def run_cli(cli, args, stdin=None):
    p = subprocess.run([cli] + args, input=stdin, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.decode(errors='replace')}")
    return p.stdout.decode("utf-8")


def check(cli, tdir, tok, lines, label):
    path = os.path.join(tdir, "lines.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines))
    bad = 0
    for add in (False, True):
        out = run_cli(cli, ["tokenize", "--tokenizer", tdir, "--text-file", path] + (["--add-special"] if add else [])).split("\n")[:-1]
        if len(out) != len(lines):
            print(f"{label}: {len(out)} output lines for {len(lines)} texts")
            return 1
        got = [json.loads(x) for x in out]
        for text, ids in zip(lines, got):
            want = tok.encode(text, add_special_tokens=add).ids
            if ids != want:
                bad += 1
                if bad <= 3:
                    print(f"{label}: encode differs (add_special={add}) for {text!r}\n  want {want}\n  got  {ids}")
        if not add:
            ids_path = os.path.join(tdir, "ids.txt")
            with open(ids_path, "w") as f:
                f.write("\n".join(json.dumps(tok.encode(t, add_special_tokens=True).ids) for t in lines))
            dec = [json.loads(x) for x in run_cli(cli, ["detokenize", "--tokenizer", tdir, "--ids-file", ids_path]).split("\n")[:-1]]
            for text, d in zip(lines, dec):
                want = tok.decode(tok.encode(text, add_special_tokens=True).ids, skip_special_tokens=False)
                if d != want:
                    bad += 1
                    if bad <= 3:
                        print(f"{label}: decode differs for {text!r}\n  want {want!r}\n  got  {d!r}")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--lines", type=int, default=400)
    ap.add_argument("--configs", type=int, default=8)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.workdir, exist_ok=True)
    train_text = corpus(rng, 3000)
    lines = [random_line(rng) for _ in range(a.lines)] + ["", " ", "x" * 2000, " ".join(["word"] * 500)]
    total_bad = 0
    for i in range(a.configs):
        tok, desc = random_tokenizer(rng, train_text)
        tdir = os.path.join(a.workdir, f"s{a.seed}-random-{i}")
        os.makedirs(tdir, exist_ok=True)
        tok.save(os.path.join(tdir, "tokenizer.json"))
        tok = Tokenizer.from_file(os.path.join(tdir, "tokenizer.json"))
        bad = check(a.cli, tdir, tok, lines, f"random-{i} {desc}")
        print(f"random-{i} {desc}: {'OK' if not bad else f'{bad} differences'}")
        total_bad += bad
    real = os.path.join(os.path.dirname(os.path.abspath(a.cli)), "testdata", "tokenizers")
    for name in ("sp-mistral-v1", "sp-mistral-v3", "tekken", "bl-qwen"):
        src = os.path.join(real, name)
        if not os.path.isdir(src):
            continue
        tdir = os.path.join(a.workdir, name)
        os.makedirs(tdir, exist_ok=True)
        with open(os.path.join(src, "tokenizer.json")) as f, open(os.path.join(tdir, "tokenizer.json"), "w") as g:
            g.write(f.read())
        tok = Tokenizer.from_file(os.path.join(tdir, "tokenizer.json"))
        bad = check(a.cli, tdir, tok, lines, name)
        print(f"{name}: {'OK' if not bad else f'{bad} differences'}")
        total_bad += bad
    print(f"crosscheck_tokenize: tokenizers {tokenizers.__version__}, {len(lines)} texts, "
          f"{'all equal' if not total_bad else f'{total_bad} differences'}")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
