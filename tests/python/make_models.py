#!/usr/bin/env python3
"""Write tiny random Llama checkpoints plus golden outputs for the libloratune C tests.

usage: make_models.py OUTDIR [--verify] [--verify-only] [--only NAME[,NAME...]]

For each model NAME this writes OUTDIR/NAME/:
  config.json, model.safetensors (or shards + model.safetensors.index.json)   transformers save_pretrained
                       (llama-gqa: config rewritten to the legacy top-level rope_theta layout)
  golden.safetensors   input_ids I32 [B,T], labels I32 [B,T], logits F32 [B,T,V], loss F32 [],
                       n_tokens I32 [],
                       packed_input_ids I32 [1,T2], packed_position_ids I32 [1,T2],
                       packed_labels I32 [1,T2], packed_logits F32 [1,T2,V], packed_loss F32 [],
                       packed_n_tokens I32 []
  data.jsonl           8 lines {"input_ids": [...], "labels": [...]} (labels sometimes absent)
  data_golden.json     {"loss": mean token CE over the file, "tokens": predicted tokens, "loss_sum": ...,
                        "per_line": [{"loss_sum": s, "tokens": n}, ...]}

All goldens come from transformers (model.eval(), float32, attn_implementation="eager"), loading the
checkpoint that was just written (so bf16 models are evaluated in fp32 from the bf16-rounded weights).
`loss` is transformers' loss for (input_ids, labels): labels shifted inside, -100 ignored, mean over the
predicted tokens of the whole batch. The packed goldens are each sequence run separately through
transformers and concatenated (what correct packing must equal); packed_loss is the mean token CE with
no prediction across a sequence boundary.

--verify checks every model against the independent reference ref_llama.py (logits, packed logits and
losses at 1e-5 relative) plus file-layout facts (no lm_head when tied, >= 3 shards, BF16 dtype, size).
"""
import argparse
import json
import os
import sys
import time

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import torch  # noqa: E402

torch.set_num_threads(2)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

B = 2
T_DEFAULT = 17
MAX_DIR_BYTES = 3 * 1024 * 1024

# name -> (config kwargs, extra options)
MODELS = {
    "llama-basic": dict(
        cfg=dict(vocab_size=257, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),
        seed=1001),
    "llama-gqa": dict(
        cfg=dict(vocab_size=300, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                 num_attention_heads=6, num_key_value_heads=2, rope_theta=500000.0),
        seed=1002, legacy_rope_config=True),
    "llama-tied": dict(
        cfg=dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
        seed=1003),
    "llama-headdim": dict(
        cfg=dict(vocab_size=263, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=24),
        seed=1004),
    "llama-bf16": dict(
        cfg=dict(vocab_size=257, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
        seed=1005, dtype=torch.bfloat16),
    "llama-sharded": dict(
        cfg=dict(vocab_size=257, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),
        seed=1006, max_shard_size="150KB"),
    "llama3-rope": dict(
        cfg=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                 rope_theta=10000.0,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        seed=1007, T=120, packed_lens=(104, 23, 9)),
}

COMMON_CFG = dict(rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                  hidden_act="silu")


def randomize_(model, seed, tied=False):
    """Deterministic weights independent of transformers' own init: larger std than the default so
    that logits are far from uniform and mistakes show up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                std, base = 0.1, 1.0
            elif "embed_tokens" in name:
                std, base = (0.15 if tied else 0.05), 0.0
            elif "lm_head" in name:
                std, base = 0.2, 0.0
            elif "q_proj" in name or "k_proj" in name:
                std, base = 0.1, 0.0
            else:
                std, base = 0.08, 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g, dtype=torch.float32))


def build_config(spec):
    from transformers import LlamaConfig
    kw = dict(COMMON_CFG)
    kw.update(spec["cfg"])
    return LlamaConfig(**kw)


def legacy_rope_config(path):
    """Rewrite transformers 5's `rope_parameters` into the pre-5 layout most published checkpoints use:
    top-level `rope_theta` plus `rope_scaling` (null for plain RoPE)."""
    with open(path) as f:
        cfg = json.load(f)
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def make_batch(g, V, T):
    ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    labels = ids.clone()
    labels[0, : T // 3] = -100                                       # a masked prompt
    labels[1, torch.randint(0, T, (max(2, T // 5),), generator=g)] = -100  # scattered holes
    labels[1, -1] = -100
    return ids, labels


def make_packed(g, V, lens):
    ids = torch.randint(0, V, (1, sum(lens)), generator=g, dtype=torch.int64)
    pos = torch.cat([torch.arange(n) for n in lens])[None, :]
    labels = ids.clone()
    labels[0, 1] = -100
    labels[0, lens[0] + 2] = -100
    return ids, pos, labels


def make_data(g, V):
    lines = []
    lens = [5, 40, 12, 23, 7, 31, 18, 9]
    for i, n in enumerate(lens):
        ids = torch.randint(0, V, (n,), generator=g).tolist()
        row = {"input_ids": ids}
        if i % 3 == 0:
            pass                                          # no labels: labels = input_ids
        elif i % 3 == 1:
            lab = list(ids)
            k = max(1, n // 3)
            lab[:k] = [-100] * k                          # masked prompt
            row["labels"] = lab
        else:
            lab = list(ids)
            for j in torch.randint(0, n, (max(1, n // 4),), generator=g).tolist():
                lab[j] = -100
            lab[-1] = -100
            if all(x == -100 for x in lab[1:]):
                lab[1] = ids[1]
            row["labels"] = lab
        lines.append(row)
    return lines


def hf_token_ce(model, ids, labels):
    """Per-token CE (float64) of one sequence from transformers logits, plus transformers' own loss."""
    out = model(input_ids=ids, labels=labels)
    lg = out.logits[0].to(torch.float64)
    tgt = labels[0, 1:]
    keep = tgt != -100
    ce = -torch.log_softmax(lg[:-1], -1)[keep, tgt[keep]]
    return ce, out.loss, out.logits


def generate(name, spec, outdir):
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    t0 = time.time()
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    seed = spec["seed"]
    torch.manual_seed(seed)
    cfg = build_config(spec)
    model = LlamaForCausalLM(cfg)
    randomize_(model, seed, tied=bool(cfg.tie_word_embeddings))
    if cfg.tie_word_embeddings:
        model.tie_weights()
    dtype = spec.get("dtype", torch.float32)
    model = model.to(dtype)
    save_kw = dict(safe_serialization=True)
    if "max_shard_size" in spec:
        save_kw["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(d, **save_kw)
    del model
    if spec.get("legacy_rope_config"):
        legacy_rope_config(os.path.join(d, "config.json"))

    # Goldens from the checkpoint on disk, in fp32, eager attention.
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    V = m.config.vocab_size
    T = spec.get("T", T_DEFAULT)
    g = torch.Generator().manual_seed(seed + 7)
    ids, labels = make_batch(g, V, T)
    with torch.no_grad():
        out = m(input_ids=ids, labels=labels)
        logits = out.logits.float()
        n_tok = int((labels[:, 1:] != -100).sum())

        lens = spec.get("packed_lens", (7, 11, 5))
        pids, ppos, plab = make_packed(g, V, lens)
        pl, ce_all, start = [], [], 0
        for n in lens:
            sl = slice(start, start + n)
            ce, _, lg = hf_token_ce(m, pids[:, sl], plab[:, sl])
            pl.append(lg.float())
            ce_all.append(ce)
            start += n
        packed_logits = torch.cat(pl, dim=1)
        ce_all = torch.cat(ce_all)
        packed_loss = ce_all.sum() / ce_all.numel()

        data = make_data(g, V)
        per_line, tot, ntot = [], 0.0, 0
        for row in data:
            x = torch.tensor([row["input_ids"]])
            y = torch.tensor([row.get("labels", row["input_ids"])])
            ce, hf_loss, _ = hf_token_ce(m, x, y)
            # transformers' mean loss times count == our sum (sanity)
            assert abs(float(hf_loss) * ce.numel() - float(ce.sum())) <= 1e-4 * max(1.0, float(ce.sum()))
            per_line.append({"loss_sum": float(ce.sum()), "tokens": int(ce.numel())})
            tot += float(ce.sum())
            ntot += int(ce.numel())

    golden = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": logits.contiguous(),
        "loss": out.loss.detach().float().reshape(()).contiguous(),
        "n_tokens": torch.tensor(n_tok, dtype=torch.int32),
        "packed_input_ids": pids.to(torch.int32).contiguous(),
        "packed_position_ids": ppos.to(torch.int32).contiguous(),
        "packed_labels": plab.to(torch.int32).contiguous(),
        "packed_logits": packed_logits.contiguous(),
        "packed_loss": packed_loss.float().reshape(()).contiguous(),
        "packed_n_tokens": torch.tensor(int(ce_all.numel()), dtype=torch.int32),
    }
    save_file(golden, os.path.join(d, "golden.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for row in data:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    with open(os.path.join(d, "data_golden.json"), "w") as f:
        json.dump({"loss": tot / ntot, "tokens": ntot, "loss_sum": tot, "per_line": per_line}, f, indent=1)
        f.write("\n")

    size = dir_bytes(d)
    if size >= MAX_DIR_BYTES:
        raise SystemExit(f"{name}: directory is {size} bytes (limit {MAX_DIR_BYTES})")
    p = torch.softmax(logits, -1)
    ent = float(-(p * torch.log(p)).sum(-1).mean())
    print(f"{name}: V={V} H={cfg.hidden_size} L={cfg.num_hidden_layers} nh={cfg.num_attention_heads} "
          f"nkv={cfg.num_key_value_heads} hd={cfg.head_dim} dtype={str(dtype).replace('torch.', '')} "
          f"T={T} T2={sum(lens)} loss={float(out.loss):.6f} data_loss={tot / ntot:.6f} "
          f"tokens={ntot} logit_std={float(logits.std()):.3f} entropy={ent:.3f}/{float(torch.log(torch.tensor(V))):.3f} "
          f"bytes={size} ({time.time() - t0:.2f}s)", flush=True)


def rel_err(a, b):
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def verify(name, outdir, tol=1e-5):
    """Compare ref_llama against the goldens; return a list of failure strings."""
    import ref_llama
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = os.path.join(outdir, name)
    fails = []
    gold = load_file(os.path.join(d, "golden.safetensors"))
    m = ref_llama.load(d)
    cfg = json.load(open(os.path.join(d, "config.json")))

    # file layout facts
    files = sorted(os.listdir(d))
    shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
    names, dtypes = set(), set()
    for f in (shards or ["model.safetensors"]):
        with safe_open(os.path.join(d, f), framework="pt") as sf:
            for k in sf.keys():
                names.add(k)
                dtypes.add(str(sf.get_slice(k).get_dtype()))
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in names:
        fails.append("tied model stores lm_head.weight")
    if not cfg.get("tie_word_embeddings") and "lm_head.weight" not in names:
        fails.append("untied model lacks lm_head.weight")
    if name == "llama-sharded" and (len(shards) < 3 or "model.safetensors.index.json" not in files):
        fails.append(f"expected >= 3 shards + index, got {shards}")
    if name == "llama-bf16" and dtypes != {"BF16"}:
        fails.append(f"expected BF16 weights, got {dtypes}")
    if name != "llama-bf16" and dtypes != {"F32"}:
        fails.append(f"expected F32 weights, got {dtypes}")
    if dir_bytes(d) >= MAX_DIR_BYTES:
        fails.append("directory too large")

    lg = ref_llama.logits(m, gold["input_ids"])
    e1 = rel_err(lg, gold["logits"])
    plg = ref_llama.logits(m, gold["packed_input_ids"], gold["packed_position_ids"])
    e2 = rel_err(plg, gold["packed_logits"])
    rows = [{"input_ids": gold["input_ids"][b].tolist(), "labels": gold["labels"][b].tolist()} for b in range(B)]
    s, n = ref_llama.loss(m, rows)
    e3 = abs(s / n - float(gold["loss"])) / abs(float(gold["loss"]))
    s2, n2 = ref_llama.loss(m, [{"input_ids": gold["packed_input_ids"][0].tolist(),
                                 "labels": gold["packed_labels"][0].tolist(),
                                 "position_ids": gold["packed_position_ids"][0].tolist()}])
    e4 = abs(s2 / n2 - float(gold["packed_loss"])) / abs(float(gold["packed_loss"]))
    dg = json.load(open(os.path.join(d, "data_golden.json")))
    s3, n3 = ref_llama.loss(m, ref_llama.read_jsonl(os.path.join(d, "data.jsonl")))
    e5 = abs(s3 / n3 - dg["loss"]) / abs(dg["loss"])
    for label, e in (("logits", e1), ("packed_logits", e2), ("loss", e3), ("packed_loss", e4), ("data_loss", e5)):
        if not e <= tol:
            fails.append(f"{label} rel err {e:.3g} > {tol}")
    if n != int(gold["n_tokens"]):
        fails.append(f"n_tokens {n} != {int(gold['n_tokens'])}")
    if n2 != int(gold["packed_n_tokens"]):
        fails.append(f"packed_n_tokens {n2} != {int(gold['packed_n_tokens'])}")
    if n3 != dg["tokens"]:
        fails.append(f"data tokens {n3} != {dg['tokens']}")
    # packing must matter: running the packed row without position ids has to differ
    naive = ref_llama.logits(m, gold["packed_input_ids"])
    if rel_err(naive, gold["packed_logits"]) < 1e-3:
        fails.append("packed golden is insensitive to packing")
    print(f"verify {name}: logits {e1:.2e} packed {e2:.2e} loss {e3:.2e} packed_loss {e4:.2e} "
          f"data_loss {e5:.2e} -> {'OK' if not fails else 'FAIL: ' + '; '.join(fails)}", flush=True)
    return fails


def main():
    ap = argparse.ArgumentParser(description="tiny random Llama checkpoints + goldens for libloratune")
    ap.add_argument("outdir")
    ap.add_argument("--verify", action="store_true", help="check the goldens with ref_llama.py afterwards")
    ap.add_argument("--verify-only", action="store_true", help="only check an existing OUTDIR")
    ap.add_argument("--only", default="", help="comma-separated model names")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(MODELS)
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n}; known: {', '.join(MODELS)}")
    t0 = time.time()
    if not a.verify_only:
        os.makedirs(a.outdir, exist_ok=True)
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        for n in names:
            generate(n, MODELS[n], a.outdir)
        print(f"generated {len(names)} models in {time.time() - t0:.1f}s", flush=True)
    if a.verify or a.verify_only:
        bad = 0
        for n in names:
            bad += bool(verify(n, a.outdir))
        print(f"verify: {len(names) - bad} ok, {bad} failed")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
