#!/usr/bin/env python3
"""The bench-s checkpoint for the llama.cpp peer (bench/llamacpp_peer.sh), and its training text.

  python bench/llamacpp_model.py model DIR        write the bench-s Llama as a Hugging Face directory
  python bench/llamacpp_model.py text FILE WORDS  write WORDS random 3-letter words (one token each)

The model is the bench-s shape of docs/spec/performance.md (vocab 32000, hidden 512, intermediate 1376,
8 layers, 8 heads, 8 kv heads, rope_theta 500000), f32, random init N(0, 0.02) (transformers' own
initialisation with initializer_range 0.02, seed 0), written with save_pretrained.

The tokenizer has exactly 32000 tokens and is built here, not downloaded: a Llama-2-style BPE with byte
fallback (what llama.cpp's convert_hf_to_gguf.py converts to its "llama" SentencePiece-like vocabulary
through gguf.LlamaHfVocab, with no pre-tokenizer hash to recognise):
  0-2 <unk> <s> </s>; 3-258 the byte tokens <0x00>..<0xFF>; then '▁' and a-z; then '▁a'..'▁z', every
  '▁xy', every '▁xyz' (x, y, z in a-z), every 'xy', and 'xyz' words until there are 32000.
The merges build each '▁xyz' left to right, so a space-separated 3-letter word is exactly one token both
in Hugging Face tokenizers and in llama.cpp's tokenizer (all scores equal, leftmost pair first): the
training text of WORDS words is WORDS tokens (+1 for <s>).
"""
import itertools, json, os, random, shutil, string, sys

SP = "\u2581"  # '▁', SentencePiece's space
VOCAB = 32000


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers
    letters = string.ascii_lowercase
    vocab, merges = {}, []

    def add(tok):
        assert tok not in vocab
        vocab[tok] = len(vocab)

    for t in ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [SP] + list(letters):
        add(t)
    for x in letters:
        add(SP + x); merges.append((SP, x))
    for x, y in itertools.product(letters, repeat=2):
        add(SP + x + y); merges.append((SP + x, y))
    for x, y, z in itertools.product(letters, repeat=3):
        add(SP + x + y + z); merges.append((SP + x + y, z))
    for x, y in itertools.product(letters, repeat=2):
        add(x + y); merges.append((x, y))
    for x, y, z in itertools.product(letters, repeat=3):
        if len(vocab) == VOCAB:
            break
        add(x + y + z); merges.append((x + y, z))
    assert len(vocab) == VOCAB, len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SP), normalizers.Replace(" ", SP)])
    tok.decoder = decoders.Sequence([decoders.Replace(SP, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def write_model(out):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, rope_theta=500000.0,
                      max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      initializer_range=0.02, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
    model = LlamaForCausalLM(cfg).to(torch.float32)
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", add_prefix_space=None)
    tok.save_pretrained(tmp)
    # a 3-letter word is one token (checked, so the token count of the training text is known)
    ids = tok("abc xyz qqq", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and len(tok) == VOCAB, (ids, len(tok))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"dir": out, "parameters": n, "vocab": len(tok)}))


def write_text(path, words):
    rng = random.Random(12345)
    letters = string.ascii_lowercase
    text = " ".join("".join(rng.choice(letters) for _ in range(3)) for _ in range(words))
    with open(path + ".tmp", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "model":
        write_model(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "text":
        write_text(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
