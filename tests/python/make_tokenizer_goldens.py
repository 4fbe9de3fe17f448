#!/usr/bin/env python3
"""Tokenizer test data and goldens for tests/test_tokenizer.c, from the reference `tokenizers` library.

    python make_tokenizer_goldens.py OUTDIR

Writes OUTDIR/<name>/{tokenizer.json, tokenizer_config.json, goldens.json} for:
  bl-llama3   byte-level BPE trained here with `tokenizers` (Llama 3 Split regex, ignore_merges, BOS template)
  bl-gpt2     byte-level BPE trained here (GPT-2 ByteLevel regex, add_prefix_space, lstrip/rstrip added tokens)
  bl-qwen     byte-level BPE trained here (NFC normalizer, Qwen2 regex, no BOS)
  sp-mistral-v1   real SentencePiece vocabulary (mistral-common's tokenizer.model.v1, = Mistral 7B v0.1),
                  converted as transformers' LlamaConverter does in legacy mode (Prepend + Replace normalizer)
  sp-mistral-v3   real SentencePiece vocabulary (tokenizer.model.v3, control tokens [INST] ...), converted
                  in non-legacy mode (Metaspace pre-tokenizer, prepend_scheme "first")
  tekken      real byte-level vocabulary of Mistral's tekken (mistral-common tekken_240911.json, first
              ranks only), converted to BPE merges as transformers' TikTokenConverter does
and OUTDIR/chat/goldens.json (chat templates, see make_chat_goldens in this file).
Nothing multi-megabyte is committed: every vocabulary is made here.

goldens.json: {"cases": [{"text", "add_special", "ids", "decoded", "decoded_skip"}]} where decoded is
tokenizer.decode(ids) and decoded_skip is decode(ids, skip_special_tokens=True).
"""
import base64
import glob
import json
import os
import sys

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SITE = os.path.dirname(os.path.dirname(tokenizers.__file__))
MC = os.path.join(SITE, "mistral_common", "data")

LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Texts: varied Unicode. The training corpus (below) is different text.
TEXTS = [
    "Hello world",
    "Hello, world! How's it going? I'm fine, they'll see; we've done it.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnewlines\r\n\r\nand   \n  mixed\u00a0nbsp\u2003em-space",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1e10 0x1F 1,000,000",
    "def f(x):\n    return x**2 + 1  # comment\n\nclass A:\n\tpass\n",
    "if (a && b || !c) { printf(\"%d\\n\", a[i]); } // C code;",
    "日本語のテキストです。東京は大きい都市です。",
    "中文文本：我爱自然语言处理！",
    "한국어 텍스트 입니다",
    "Русский текст, ещё немного.",
    "العربية نص قصير",
    "हिन्दी पाठ",
    "emoji 😀😃🎉 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 and ❤️",
    "combining: e\u0301 a\u0308 n\u0303 precomposed: é ä ñ; Ǆ ﬁ ① ｆｕｌｌｗｉｄｔｈ",
    "Zalgo t\u0336\u0335e\u0337x\u0338t\u0334 here",
    "whitespace runs:        end\n\n\n\n",
    "NEL\u0085char and zero\u200bwidth and line\u2028sep",
    "<|begin_of_text|>special <|eot_id|> tokens <|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<s>[INST] What is 2+2? [/INST] 4</s>",
    "<s> <s>x</s></s> <unk>",
    "[INST]spaces around[/INST] a <|im_start|>",
    "a<|im_start|>system\nYou are helpful.<|im_end|>\n",
    "MIXED case WORDS and CamelCaseIdentifiers_with_underscores",
    "URL: https://example.com/path?q=1&r=two#frag email: a.b@c.de",
    "'s 'S 'll 'LL 'Re don't DON'T",
    "",
    " ",
    "\n",
    "a",
    "€100 £20 ¥300 ₿",
    "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕 math 𝑥² + 𝑦²",
    "\u00ad soft hyphen \ufeff BOM \u0000 nul",
    "mixed 日本 English 中文 and emoji 🎉 together123abc",
    "x" * 300,
    "the the the the the " * 20,
]

CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Natural language processing is a subfield of linguistics and computer science.",
    "机器学习是人工智能的一个分支。日本語も少し。한국어도 조금.",
    "Математика и физика. Numbers 0123456789 and symbols !@#$%^&*()_+-=[]{};':\",./<>?",
    "emoji 😀 🎉 👍 ❤️ and accents café naïve résumé",
]


def corpus():
    """Training text: Python sources shipped with the interpreter's standard library + a few lines."""
    lines = list(CORPUS_EXTRA) * 50
    stdlib = os.path.dirname(os.__file__)
    for f in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:120]:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            lines.extend(fh.read().splitlines())
    return lines


def train_bytelevel(kind, vocab_size=3000):
    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    if kind == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif kind == "qwen":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if kind == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok.add_special_tokens(specials)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
        cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    elif kind == "qwen":
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    else:
        tok.add_special_tokens(["<|endoftext|>"])
        # a non-special added token with lstrip/rstrip and one matched as a single word only
        tok.add_tokens([tokenizers.AddedToken("[INST]", lstrip=True, rstrip=True, normalized=False),
                        tokenizers.AddedToken("the", single_word=True, normalized=True),
                        tokenizers.AddedToken("<|im_start|>", special=True, normalized=False)])
        eos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
        cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    return tok, cfg


def sentencepiece_bpe(model_file, legacy):
    """A SentencePiece BPE model as transformers' LlamaConverter builds it (vocab + merges from the proto)."""
    import sentencepiece as spm
    from transformers.tokenization_utils_base import generate_merges
    sp = spm.SentencePieceProcessor(model_file=model_file)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, {p: sp.get_score(i) for i, p in enumerate(pieces)})
    unk = pieces[sp.unk_id()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    specials = [tokenizers.AddedToken(p, normalized=False, special=True)
                for i, p in enumerate(pieces) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens(specials)
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    bos = sp.bos_id()
    bos_piece = pieces[bos]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos_piece} $A", pair=f"{bos_piece} $A {bos_piece} $B",
                                                       special_tokens=[(bos_piece, bos)])
    cfg = {"bos_token": bos_piece, "eos_token": pieces[sp.eos_id()], "unk_token": unk}
    return tok, cfg


def tekken(n_ranks=40000):
    """Mistral tekken (tiktoken-style byte-level BPE): the first n_ranks ranks, merges as TikTokenConverter."""
    with open(os.path.join(MC, "tekken_240911.json")) as f:
        tk = json.load(f)
    n_special = tk["config"]["default_num_special_tokens"]
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in tk["vocab"][:n_ranks]}
    b2u = {b: c for b, c in zip(range(256), pre_tokenizers.ByteLevel.alphabet())}
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    b2u = bytes_to_unicode()
    s = lambda b: "".join(b2u[x] for x in b)
    vocab = {s(b): r + n_special for b, r in ranks.items()}
    merges = []
    for b, r in ranks.items():
        if len(b) == 1:
            continue
        local = [(b[:i], b[i:]) for i in range(1, len(b)) if b[:i] in ranks and b[i:] in ranks]
        local.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((r, s(a), s(c)) for a, c in local)
    merges.sort(key=lambda m: m[0])
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    for i, sp in enumerate(specials):
        vocab[sp] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, c) for _, a, c in merges], ignore_merges=True))
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tk["config"]["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>"}


def write(outdir, name, tok, cfg, texts):
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # goldens from the file the C side reads
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    cases = []
    for t in texts:
        for add in (False, True):
            ids = tok.encode(t, add_special_tokens=add).ids
            cases.append({"text": t, "add_special": add, "ids": ids,
                          "decoded": tok.decode(ids, skip_special_tokens=False),
                          "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    # decoding of id sequences that are not an encoding (split UTF-8, stray byte tokens)
    n = tok.get_vocab_size(with_added_tokens=True)
    extra = [[i] for i in range(0, min(n, 400))] + [list(range(k, min(n, k + 17))) for k in range(0, n, max(1, n // 50))]
    for ids in extra:
        cases.append({"text": None, "add_special": False, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    with open(os.path.join(d, "goldens.json"), "w") as f:
        json.dump({"tokenizer": name, "tokenizers_version": tokenizers.__version__, "cases": cases}, f, ensure_ascii=False)
    print(f"{name}: {len(cases)} cases, vocab {n}")


CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, of course."}],
    [{"role": "user", "content": "Only a question"}],
    [{"role": "user", "content": "  h\u00e9llo \u4e16\u754c \U0001F600\n\n"}, {"role": "assistant", "content": "  spaced\tanswer  \n"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "quote ' \" and {{ braces }} {% tag %}"}],
    [{"role": "assistant", "content": "assistant first"}],
]

# Chat templates: the ones TRL ships (trl/chat_templates/*.jinja, copied from the model repositories'
# tokenizer_config.json; the *_training variants add {% generation %} blocks) and Mistral's, generated by
# mistral-common (mistral_common.integrations.chat_templates, the template Mistral publishes for its
# SentencePiece v1 and v3 tokenizers and its v7 tekken tokenizer).
TRL_TEMPLATES = ["llama3", "llama3_training", "llama3_1", "llama3_2", "qwen2_5", "qwen2_5_training", "qwen3",
                 "qwen3_training", "gemma", "gemma_training", "gemma3", "gemma3_training", "phi3", "phi3_training",
                 "phi3_5", "phi3_5_training"]


def chat_templates():
    import trl
    d = os.path.join(os.path.dirname(trl.__file__), "chat_templates")
    out = {}
    for name in TRL_TEMPLATES:
        with open(os.path.join(d, name + ".jinja")) as f:
            out[name] = f.read()
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    for v, spm in (("v1", True), ("v3", True), ("v7", False)):
        out["mistral_" + v] = generate_chat_template(
            spm=spm, tokenizer_version=TokenizerVersion(v), image_support=False, audio_support=False,
            thinking_support=False, default_system_prompt=None, plain_thinking_support=False,
            use_special_token_variables=False, model_settings_fields=None, reasoning_effort_values=None,
            reasoning_effort_default=None)
    return out


def make_chat_goldens(out):
    """For each template and conversation: the text transformers renders (jinja2, as apply_chat_template),
    the generation (assistant) character ranges, and for the bl-llama3 tokenizer the token ids and the
    assistant_masks of apply_chat_template(return_assistant_tokens_mask=True)."""
    import re
    from transformers import PreTrainedTokenizerFast
    from transformers.utils.chat_template_utils import render_jinja_template
    base = os.path.join(out, "bl-llama3")
    specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    cases = []
    for name, tmpl in chat_templates().items():
        d = os.path.join(out, "chat", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(base, "tokenizer.json")) as f, open(os.path.join(d, "tokenizer.json"), "w") as g:
            g.write(f.read())
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({**specials, "chat_template": tmpl}, f, ensure_ascii=False, indent=1)
        has_gen = re.search(r"\{\%-?\s*generation\s*-?\%\}", tmpl) is not None
        hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), chat_template=tmpl, **specials)
        for ci, conv in enumerate(CONVERSATIONS):
            for agp in (False, True):
                case = {"template": name, "conversation": ci, "messages": conv, "add_generation_prompt": agp}
                try:
                    res = render_jinja_template(conversations=[conv], chat_template=tmpl, add_generation_prompt=agp,
                                                return_assistant_tokens_mask=has_gen, **specials)
                    text, gen = res
                    case["text"] = text[0]
                    case["generation"] = gen[0] if has_gen else None
                    if has_gen:
                        enc = hf.apply_chat_template(conv, add_generation_prompt=agp, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
                        case["ids"] = list(enc["input_ids"])
                        case["assistant_masks"] = list(enc["assistant_masks"])
                except Exception as e:  # raise_exception() in the template
                    case["error"] = str(e)
                cases.append(case)
    os.makedirs(os.path.join(out, "chat"), exist_ok=True)
    import datetime
    # Llama 3.1/3.2 templates print strftime_now("%d %b %Y"): the test replaces this date by its own day
    today = datetime.datetime.now().strftime("%d %b %Y")
    with open(os.path.join(out, "chat", "goldens.json"), "w") as f:
        json.dump({"today": today, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"chat: {len(cases)} cases, {sum('error' in c for c in cases)} expected errors")


ROWS = [
    {"text": "Plain language-modelling text. 日本語 too."},
    {"text": "Already ends with EOS<|eot_id|>"},
    {"prompt": "Translate to French: cat ->", "completion": " chat"},
    {"prompt": "Q: 2+2?\nA:", "completion": "4"},
    {"messages": CONVERSATIONS[0]},
    {"messages": CONVERSATIONS[1]},
    {"prompt": [{"role": "user", "content": "Say hi"}], "completion": [{"role": "assistant", "content": "hi!"}]},
    {"prompt": "Pick one:", "chosen": " the good answer", "rejected": " the bad answer"},
    {"prompt": "Rate:", "completion": " bad answer", "label": False},
    {"prompt": "Rate:", "completion": " good answer", "label": True},
]


def make_row_goldens(out):
    """TRL SFTTrainer's preparation of each dataset shape, re-done with the reference tokenizer and
    transformers' apply_chat_template: EOS appended to text and string completions, the completion
    starting after the common prefix of prompt and prompt+completion ids, assistant-only masks from
    {% generation %} blocks. Tokenizer: the llama3_training chat directory."""
    from transformers import PreTrainedTokenizerFast
    d = os.path.join(out, "chat", "llama3_training")
    with open(os.path.join(d, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), **cfg)
    eos = cfg["eos_token"]

    def prefix(a, b):
        n = 0
        while n < len(a) and n < len(b) and a[n] == b[n]:
            n += 1
        return n

    cases = []
    for row in ROWS:
        if "text" in row:
            t = row["text"] if row["text"].endswith(eos) else row["text"] + eos
            ids = tok(t)["input_ids"]
            labels = list(ids)
        elif "messages" in row:
            enc = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ids = list(enc["input_ids"])
            labels = [i if m else -100 for i, m in zip(ids, enc["assistant_masks"])]
        else:
            comp = row.get("completion", row.get("chosen"))
            if isinstance(comp, str):
                comp = comp if comp.endswith(eos) else comp + eos
                p_ids = tok(row["prompt"])["input_ids"]
                ids = tok(row["prompt"] + comp)["input_ids"]
            else:
                p_ids = list(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
                ids = list(tok.apply_chat_template(row["prompt"] + comp, tokenize=True, return_dict=True)["input_ids"])
            n = prefix(p_ids, ids)
            labels = [-100] * n + ids[n:]
            if row.get("label") is False:
                labels = [-100] * len(ids)
        cases.append({"row": row, "ids": ids, "labels": labels})
    with open(os.path.join(out, "chat", "rows.json"), "w") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"rows: {len(cases)} cases")


def make_tiny(out):
    """A byte-level BPE small enough for the test models (vocab <= 250) with the Llama 3 training chat
    template: `loratune train` on text JSONL rows in tests/test_tokenizer.c."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=240, show_progress=False,
                                  special_tokens=["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"])
    tok.train_from_iterator(CORPUS_EXTRA[:2] * 20 + ["Hello! How can I help? What is 2+2? 4. Say hi.\n\nTranslate: cat -> chat"] * 20, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    d = os.path.join(out, "tiny")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    import trl
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", "llama3_training.jinja")) as f:
        tmpl = f.read()
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": tmpl}, f, indent=1)
    assert tok.get_vocab_size() <= 250, tok.get_vocab_size()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "build/testdata/tokenizers"
    os.makedirs(out, exist_ok=True)
    for kind in ("llama3", "gpt2", "qwen"):
        tok, cfg = train_bytelevel(kind)
        write(out, "bl-" + kind, tok, cfg, TEXTS)
    tok, cfg = sentencepiece_bpe(os.path.join(MC, "tokenizer.model.v1"), legacy=True)
    write(out, "sp-mistral-v1", tok, cfg, TEXTS)
    tok, cfg = sentencepiece_bpe(os.path.join(MC, "mistral_instruct_tokenizer_240323.model.v3"), legacy=False)
    write(out, "sp-mistral-v3", tok, cfg, TEXTS)
    tok, cfg = tekken()
    write(out, "tekken", tok, cfg, TEXTS)
    make_chat_goldens(out)
    make_row_goldens(out)
    make_tiny(out)


if __name__ == "__main__":
    main()
