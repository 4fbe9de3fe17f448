#!/usr/bin/env python3
"""Write a random bf16 checkpoint of a benchmark shape as transformers saves one (config.json, shards of
at most 5 GB, model.safetensors.index.json), to time `loratune bench --model DIR` (loading a real-size
checkpoint from disk, docs/BENCHMARKS.md):

    $(bash tests/ref-venv.sh) bench/make_checkpoint.py bench-8b /tmp/bench-8b   # 16.1 GB, about 2 minutes idle
    $(bash tests/ref-venv.sh) bench/make_checkpoint.py bench-1b /tmp/bench-1b   #  2.5 GB (numpy: the reference venv)

Weights N(0, 0.02^2) rounded to bf16 (norms 1), made and written a slice at a time (numpy only, about
64 MB of memory). Delete the directory when done: nothing else removes it.
"""
import json, os, struct, sys

import numpy as np

CONFIGS = {
    "bench-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                     rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                     max_position_embeddings=131072, tie_word_embeddings=True),
    "bench-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                     max_position_embeddings=8192, tie_word_embeddings=False),
}
SHARD = 5 * 10**9
SLICE = 1 << 24  # values made and written at a time


def tensors(c):
    """(name, shape, is_norm) in the order transformers saves a Llama model"""
    V, H, I, L = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    QD, KD = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", (V, H), False)]
    for l in range(L):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (H,), True), (p + "post_attention_layernorm.weight", (H,), True),
                (p + "self_attn.q_proj.weight", (QD, H), False), (p + "self_attn.k_proj.weight", (KD, H), False),
                (p + "self_attn.v_proj.weight", (KD, H), False), (p + "self_attn.o_proj.weight", (H, QD), False),
                (p + "mlp.gate_proj.weight", (I, H), False), (p + "mlp.up_proj.weight", (I, H), False),
                (p + "mlp.down_proj.weight", (H, I), False)]
    out.append(("model.norm.weight", (H,), True))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, H), False))
    return out


def bf16(x):
    """float32 -> bf16 bits, round to nearest even"""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in CONFIGS:
        sys.exit(__doc__)
    name, out = sys.argv[1], sys.argv[2]
    c = CONFIGS[name]
    os.makedirs(out, exist_ok=True)
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, hidden_act="silu",
               torch_dtype="bfloat16", bos_token_id=128000, eos_token_id=128001, **c)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # shards: tensors in order, a new shard when the next tensor would pass SHARD bytes
    shards, cur, size = [], [], 0
    for t in tensors(c):
        n = 2 * int(np.prod(t[1]))
        if cur and size + n > SHARD:
            shards.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += n
    shards.append(cur)
    rng = np.random.default_rng(1)
    weight_map, total = {}, 0
    for k, sh in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for tn, shape, _ in sh:
            n = 2 * int(np.prod(shape))
            header[tn] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            weight_map[tn] = fname
            off += n
        total += off
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(os.path.join(out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            for tn, shape, norm in sh:
                left = int(np.prod(shape))
                while left:
                    k_ = min(left, SLICE)
                    x = np.ones(k_, np.float32) if norm else rng.standard_normal(k_, dtype=np.float32) * np.float32(0.02)
                    f.write(bf16(x).tobytes())
                    left -= k_
        print(f"{fname}: {len(sh)} tensors, {off / 1e9:.2f} GB", flush=True)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    print(f"{out}: {name}, {total / 1e9:.2f} GB of bf16 weights in {len(shards)} shards")


if __name__ == "__main__":
    main()
