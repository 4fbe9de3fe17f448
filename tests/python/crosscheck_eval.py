#!/usr/bin/env python3
"""Cross-check `loratune eval` against transformers and ref_llama.py on held-out random Llama models.

usage: crosscheck_eval.py --cli PATH_TO_loratune [--workdir DIR] [--seeds N] [--seed-base S]
                          [--tol 1e-4] [--cli-arg ARG ...] [--timeout SEC] [--keep]

Each case draws a random Llama configuration the C tests do not ship (vocab 100..1000 and not a power
of two, hidden a multiple of 8, MHA/GQA/MQA head layouts, sometimes an explicit head_dim with
nh*hd != hidden, random rope_theta, sometimes llama3 rope scaling, weights F32/BF16/F16, tied or not,
sometimes sharded, config.json in the transformers-5 `rope_parameters` layout or the legacy
`rope_theta`/`rope_scaling` one), writes it with transformers' save_pretrained and a random
data.jsonl, then runs

    PATH_TO_loratune eval --model DIR --data FILE --json [--cli-arg ...]

whose LAST stdout line must be one JSON object {"loss": L, "tokens": N}. L must be within --tol
(relative) of both transformers (fp32, eager, each line on its own, labels default to input_ids,
shifted, -100 ignored, token-weighted mean over the file) and ref_llama.py, and N must equal the
number of predicted tokens. transformers and ref_llama must also agree with each other (1e-5).

Prints one line per case and finally `crosscheck: N passed, M failed`; exits 1 if any failed.
Without --workdir the cases live in a temporary directory that is removed unless a case failed
(or --keep is given).
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import torch  # noqa: E402

torch.set_num_threads(2)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ref_llama  # noqa: E402
from make_models import legacy_rope_config, randomize_  # noqa: E402

ORACLE_TOL = 1e-5


def is_pow2(n):
    return n & (n - 1) == 0


def draw_case(rng):
    """A random held-out configuration (dict of LlamaConfig kwargs) and save options."""
    V = rng.randint(100, 1000)
    while is_pow2(V):
        V = rng.randint(100, 1000)
    nh = rng.choice([1, 2, 3, 4, 6, 8])
    nkv = rng.choice([d for d in range(1, nh + 1) if nh % d == 0])
    hiddens = [h for h in range(32, 193, 8) if h % nh == 0 and (h // nh) % 2 == 0 and h // nh >= 8]
    H = rng.choice(hiddens)
    cfg = dict(vocab_size=V, hidden_size=H, intermediate_size=rng.randint(24, 300),
               num_hidden_layers=rng.randint(1, 3), num_attention_heads=nh, num_key_value_heads=nkv,
               rms_norm_eps=rng.choice([1e-5, 1e-6]), hidden_act="silu", bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=rng.random() < 0.3, max_position_embeddings=rng.choice([128, 256, 2048]))
    if rng.random() < 0.35:
        cfg["head_dim"] = rng.choice([hd for hd in range(8, 50, 2) if hd != H // nh])
    theta = round(10 ** rng.uniform(3.0, 6.3), 1)
    if rng.random() < 0.4:
        lff = rng.choice([1.0, 2.0])
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": rng.choice([2.0, 4.0, 8.0, 16.0]),
                               "low_freq_factor": lff, "high_freq_factor": rng.choice([4.0, 8.0]),
                               "original_max_position_embeddings": rng.choice([16, 32, 64])}
        cfg["max_position_embeddings"] = max(cfg["max_position_embeddings"], 256)
    cfg["rope_theta"] = theta
    opts = dict(dtype=rng.choice(["f32", "bf16", "f16"]), sharded=rng.random() < 0.3,
                legacy_config=rng.random() < 0.5)
    return cfg, opts


def draw_data(rng, V):
    rows = []
    for _ in range(rng.randint(4, 10)):
        n = rng.randint(2, 64)
        ids = [rng.randrange(V) for _ in range(n)]
        kind = rng.random()
        row = {"input_ids": ids}
        if kind < 0.35:
            pass                                   # no labels: labels = input_ids
        elif kind < 0.7:
            lab = list(ids)
            k = rng.randint(0, n - 2)              # masked prompt, >= 1 predicted token left
            lab[:k + 1] = [-100] * (k + 1)
            row["labels"] = lab
        else:
            lab = [x if rng.random() < 0.7 else -100 for x in ids]
            if all(x == -100 for x in lab[1:]):
                lab[rng.randint(1, n - 1)] = ids[-1]
            row["labels"] = lab
        rows.append(row)
    return rows


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def write_model(d, cfg, opts, seed):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    randomize_(model, seed, tied=bool(cfg["tie_word_embeddings"]))
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
    model = model.to(DTYPES[opts["dtype"]])
    kw = dict(safe_serialization=True)
    if opts["sharded"]:
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        kw["max_shard_size"] = max(4096, nbytes // 3)
    model.save_pretrained(d, **kw)
    if opts["legacy_config"]:
        legacy_rope_config(os.path.join(d, "config.json"))


def hf_loss(d, rows):
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for r in rows:
            x = torch.tensor([r["input_ids"]])
            y = torch.tensor([r.get("labels", r["input_ids"])])
            out = m(input_ids=x, labels=y)
            tgt = y[0, 1:]
            keep = tgt != -100
            ce = -torch.log_softmax(out.logits[0, :-1].double(), -1)[keep, tgt[keep]]
            if abs(float(out.loss) * ce.numel() - float(ce.sum())) > 1e-4 * max(1.0, float(ce.sum())):
                raise RuntimeError("transformers' loss disagrees with its own logits")
            total += float(ce.sum())
            n += int(ce.numel())
    return total / n, n


def run_cli(cli, extra, d, data, timeout):
    cmd = [cli, "eval", "--model", d, "--data", data, "--json"] + list(extra)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s"
    except OSError as e:
        return None, f"cannot run {cli}: {e}"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [""])[-1]
        return None, f"exit status {p.returncode}: {tail}"
    if not lines:
        return None, "no output on stdout"
    try:
        obj = json.loads(lines[-1])
        return (float(obj["loss"]), int(obj["tokens"])), None
    except (ValueError, KeyError, TypeError) as e:
        return None, f"last stdout line is not {{\"loss\", \"tokens\"}} JSON ({e}): {lines[-1][:200]!r}"


def rel(a, b):
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-30)


def describe(cfg, opts):
    nh, nkv, H = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd = cfg.get("head_dim")
    s = (f"V={cfg['vocab_size']} H={H} I={cfg['intermediate_size']} L={cfg['num_hidden_layers']} "
         f"nh={nh} nkv={nkv} hd={hd if hd else H // nh}{'(explicit)' if hd else ''} "
         f"theta={cfg['rope_theta']:g} eps={cfg['rms_norm_eps']:g}")
    rs = cfg.get("rope_scaling")
    if rs:
        s += (f" llama3(f={rs['factor']:g},lo={rs['low_freq_factor']:g},hi={rs['high_freq_factor']:g},"
              f"orig={rs['original_max_position_embeddings']})")
    s += f" {opts['dtype']}"
    s += " tied" if cfg["tie_word_embeddings"] else ""
    s += " sharded" if opts["sharded"] else ""
    s += " legacy-config" if opts["legacy_config"] else ""
    return s


def main():
    ap = argparse.ArgumentParser(description="cross-check `loratune eval` against transformers and ref_llama")
    ap.add_argument("--cli", required=True, help="path to the loratune command-line tool")
    ap.add_argument("--workdir", help="where to write the cases (kept); default: a temporary directory")
    ap.add_argument("--seeds", type=int, default=6, help="number of random cases (default 6)")
    ap.add_argument("--seed-base", type=int, default=7340, help="seed of the first case (default 7340)")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative loss tolerance (default 1e-4)")
    ap.add_argument("--cli-arg", action="append", default=[], help="extra argument for the CLI (repeatable)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per CLI call (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()

    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    t0 = time.time()
    cli = os.path.abspath(a.cli) if os.path.exists(a.cli) else a.cli
    if a.workdir:
        work = os.path.abspath(a.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="lt-crosscheck-")
    passed = failed = 0
    for i in range(a.seeds):
        seed = a.seed_base + i
        rng = random.Random(seed)
        cfg, opts = draw_case(rng)
        rows = draw_data(rng, cfg["vocab_size"])
        cdir = os.path.join(work, f"case-{seed}")
        mdir = os.path.join(cdir, "model")
        data = os.path.join(cdir, "data.jsonl")
        errs = []
        res = ""
        try:
            if os.path.isdir(cdir):
                shutil.rmtree(cdir)
            os.makedirs(mdir)
            write_model(mdir, cfg, opts, seed)
            with open(data, "w") as f:
                for r in rows:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
            hf_l, hf_n = hf_loss(mdir, rows)
            ref_s, ref_n = ref_llama.loss(ref_llama.load(mdir), rows)
            ref_l = ref_s / ref_n
            if rel(ref_l, hf_l) > ORACLE_TOL or ref_n != hf_n:
                errs.append(f"ORACLES DISAGREE: transformers {hf_l:.8g}/{hf_n} vs ref_llama {ref_l:.8g}/{ref_n}")
            out, err = run_cli(cli, a.cli_arg, mdir, data, a.timeout)
            if err:
                errs.append(f"cli: {err}")
                res = f"hf={hf_l:.8g} ref={ref_l:.8g} tokens={hf_n}"
            else:
                cl, cn = out
                r_hf, r_ref = rel(cl, hf_l), rel(cl, ref_l)
                res = (f"cli={cl:.8g} hf={hf_l:.8g} ref={ref_l:.8g} rel_hf={r_hf:.1e} rel_ref={r_ref:.1e} "
                       f"tokens={cn}")
                if not r_hf <= a.tol:
                    errs.append(f"loss differs from transformers by {r_hf:.3g} > {a.tol:g}")
                if not r_ref <= a.tol:
                    errs.append(f"loss differs from ref_llama by {r_ref:.3g} > {a.tol:g}")
                if cn != hf_n:
                    errs.append(f"tokens {cn} != {hf_n}")
        except Exception as e:  # a broken case counts as a failure, the others still run
            errs.append(f"{type(e).__name__}: {e}")
        ok = not errs
        passed += ok
        failed += not ok
        print(f"case {i} seed={seed}: {describe(cfg, opts)} | lines={len(rows)} | {res} -> "
              f"{'PASS' if ok else 'FAIL: ' + '; '.join(errs)}", flush=True)
    if failed:
        print(f"cases kept in {work}", flush=True)
    elif not a.workdir and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif a.keep:
        print(f"cases kept in {work}", flush=True)
    print(f"({time.time() - t0:.1f}s)", flush=True)
    print(f"crosscheck: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
