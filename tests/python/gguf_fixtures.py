"""Small held-out model directories with real tokenizers for the GGUF tests (crosscheck_gguf.py).

Every family we train gets a random transformers checkpoint (save_pretrained, f32) and a tokenizer of the
kind its real checkpoints use, trained here with `tokenizers` on a small corpus:
  byte-level BPE (llama.cpp "gpt2"): Llama 3's regex + ignore_merges (Llama, Mistral), Qwen2's regex + NFC
    (Qwen2, Qwen3), o200k's regex (gpt-oss, llama.cpp's "gpt-4o");
  SentencePiece-style BPE with byte fallback (llama.cpp "llama"): Prepend("▁") + Replace(" ", "▁") like
    Llama 2 / Phi-3, or Replace only like Gemma;
and the family's chat template shape (Llama 3 headers, ChatML, [INST], Gemma turns, Phi-3 tags).
"""
import json
import os

import offline_env  # noqa: F401  (first: offline, no progress bars)

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")

# o200k (gpt-oss): llama.cpp's "gpt-4o" pre-tokenizer
O200K_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
            r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Hello there! How are you today?",
    "Paris is the capital of France; Berlin is the capital of Germany.", "I've been told he's there, 'RE you sure?",
    "Numbers: 1 12 123 1234 12345 3.14159 and 2026-12-07.", "Fine-tuned models should stop at the end of a turn.",
    "llama.cpp and Ollama load GGUF files.", "A LoRA adapter adds a low-rank product B A to a weight.",
    "Unicode: café naïve über straße 東京 😀", "tabs\tand\nnewlines\n\nand  double  spaces",
] * 4

TEMPLATES = {
    "llama3": ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}"),
    "inst": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
             "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
             "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"),
    "gemma": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
              "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
              "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"),
    "harmony": ("{% for message in messages %}{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + "
                "'<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant<|message|>' }}{% endif %}"),
    "phi3": ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + "
             "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
}

# kind, template, special tokens (bos, eos, extra specials), regex / SentencePiece prepend
TOKENIZERS = {
    "llama3": dict(kind="bytelevel", regex=LLAMA3_RE, ignore_merges=True, template="llama3",
                   bos="<|begin_of_text|>", eos="<|eot_id|>",
                   specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"]),
    "qwen": dict(kind="bytelevel", regex=QWEN2_RE, ignore_merges=False, nfc=True, template="chatml", bos=None,
                 eos="<|im_end|>", specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    # gpt-oss's o200k_harmony shape (its turns end with <|end|>)
    "o200k": dict(kind="bytelevel", regex=O200K_RE, ignore_merges=False, template="harmony", bos=None, eos="<|end|>",
                  specials=["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|message|>", "<|end|>"]),
    "mistral": dict(kind="bytelevel", regex=LLAMA3_RE, ignore_merges=True, template="inst", bos="<s>", eos="</s>",
                    specials=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]),
    "gemma": dict(kind="spm", prepend=False, template="gemma", bos="<bos>", eos="<end_of_turn>",
                  specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], unk="<unk>"),
    # Phi-3's added tokens strip the whitespace after them (rstrip), as llama.cpp assumes for a model named phi3
    "phi3": dict(kind="spm", prepend=True, template="phi3", bos="<s>", eos="<|end|>",
                 specials=["<unk>", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>",
                           "<|end|>"], unk="<unk>", rstrip=["</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
}


def _bytelevel(spec, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=spec["ignore_merges"]))
    if spec.get("nfc"):
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["regex"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if spec["bos"]:
        bos_id = tok.token_to_id(spec["bos"])
        tok.post_processor = processors.TemplateProcessing(single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B",
                                                           special_tokens=[(spec["bos"], bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return json.loads(tok.to_str())


def _spm(spec, vocab_size):
    """A Llama-2 / Gemma style tokenizer.json: specials, then <0x00>..<0xFF>, then a BPE trained on the
    corpus with ▁ for spaces (no pre-tokenizer: merges run over the whole normalized text)."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    norm = [normalizers.Replace(" ", "\u2581")]
    if spec["prepend"]:
        norm = [normalizers.Prepend("\u2581")] + norm
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(norm)
    n_fixed = len(spec["specials"]) + 256
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, show_progress=False)
    tok.train_from_iterator([s.replace("\n", " ") for s in CORPUS], trainer)
    trained = json.loads(tok.to_str())
    vocab = {}
    for s in spec["specials"]:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [m if isinstance(m, list) else m.split(" ") for m in trained["model"]["merges"]]
    bos_id = vocab[spec["bos"]]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [dict(id=vocab[s], content=s, single_word=False, lstrip=False,
                              rstrip=s in spec.get("rstrip", ()), normalized=False, special=True)
                         for s in spec["specials"]],
        "normalizer": {"type": "Sequence", "normalizers": (
            ([{"type": "Prepend", "prepend": "\u2581"}] if spec["prepend"] else []) +
            [{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}])},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": spec["bos"], "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": spec["bos"], "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {spec["bos"]: {"id": spec["bos"], "ids": [bos_id],
                                                            "tokens": [spec["bos"]]}}},
        "decoder": {"type": "Sequence", "decoders": (
            [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if spec["prepend"] else []))},
        "model": {"type": "BPE", "dropout": None, "unk_token": spec["unk"], "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def write_tokenizer(d, name, vocab_size=320):
    """tokenizer.json + tokenizer_config.json into d; returns (n_ids, bos_id, eos_id)."""
    spec = TOKENIZERS[name]
    tj = _bytelevel(spec, vocab_size) if spec["kind"] == "bytelevel" else _spm(spec, vocab_size)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    ids = {t["content"]: t["id"] for t in tj["added_tokens"]}
    ids.update(tj["model"]["vocab"])
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": TEMPLATES[spec["template"]],
           "eos_token": spec["eos"], "bos_token": spec["bos"], "clean_up_tokenization_spaces": False,
           "model_max_length": 256}
    if spec.get("unk"):
        cfg["unk_token"] = spec["unk"]
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    n_ids = 1 + max(ids.values())
    return n_ids, ids.get(spec["bos"]) if spec["bos"] else None, ids[spec["eos"]]
