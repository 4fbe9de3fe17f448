#!/usr/bin/env python3
"""Cross-check `loratune train`, `merge` and `generate` against PyTorch + PEFT + transformers on
held-out random Llama models.

usage: crosscheck_train.py --cli PATH_TO_loratune [--workdir DIR] [--seeds N (3)] [--seed-base S (9100)]
                           [--timeout SEC] [--keep] [--strict] [--edge-cases]

Each case (seed) draws a tiny random Llama the C tests do not ship (vocab 100..599 and not a power of
two, hidden <= 128 a multiple of 8, 1-2 layers, MHA/GQA/MQA, sometimes an explicit head_dim with
nh*hd != hidden, random rope_theta, sometimes llama3 rope scaling, F32 or BF16 weights, tied or not,
sometimes sharded, new or legacy config.json layout; written by crosscheck_eval.write_model, i.e.
transformers' save_pretrained), a random pre-tokenized data.jsonl (varied lengths, some rows longer
than --seq, masked prompts / scattered -100 labels, some rows fully masked, some without "labels";
redrawn until every micro-batch predicts a token and every update predicts one at a position >= 1,
unless --edge-cases), and a random PEFT
LoRA adapter written by peft itself (r in {2,4,8}, random lora_alpha, random subset of the 7 target
modules, sometimes use_rslora; lora_A and lora_B random and nonzero). Then:

1. `PATH train --model M --data D --out O --adapter-init A --no-shuffle --steps S --batch B
   --grad-accum K --lr LR --scheduler {linear|cosine|constant} --warmup W --max-grad-norm C
   --weight-decay WD --seq T --seed 1 --quiet` (S 4..6, K 1..2, C sometimes 0 = off);
2. the same S updates in PyTorch: PeftModel(base fp32 eager, A, trainable), torch.optim.AdamW over the
   LoRA parameters only (betas 0.9/0.999, eps 1e-8, weight_decay WD), transformers'
   get_{linear,cosine,constant}_schedule_with_warmup(W[, S]), clip_grad_norm_(C) when C > 0. Data
   order of the CLI with --no-shuffle: micro-batch j (0-based over the whole run) holds rows
   (j*B + i) mod n_rows, i = 0..B-1, in file order; each row truncated to T = min(--seq, longest row)
   (keeping its start) and right-padded to T with id 0 / label -100 (no packing). The loss of an
   update is sum of token CE over its K micro-batches / their predicted tokens (HF shift: position t
   predicts labels[t+1]); no dropout;
3. O/adapter/adapter_model.safetensors vs the torch result, per tensor max|diff| / max|torch| <= 1e-4
   (max-abs-normalised because Adam magnifies fp32 rounding on near-zero gradient entries),
   same key set; O/adapter/adapter_config.json keeps r, lora_alpha, use_rslora and the targets;
   O/metrics.jsonl per step: "loss" (1e-4 relative), "lr" (1e-6 relative), "grad_norm" (1e-4
   relative: the pre-clip global norm, also when clipping is off). A value that misses its tolerance
   against the fp32 oracle gets a float64 fallback (not with --strict): it passes if it is within
   max(tol, 2 x spread) of a float64 run, the spread being how far equally valid fp32-level runs
   (torch fp32 summing in another order, float64 with fp32-sized gradient noise or with the
   rounding-level gradient entries redrawn) land from float64 -- some random runs are chaotic at
   fp32 precision (AdamW's eps 1e-8 turns gradient entries ~1e-7 of the largest into steps of up to
   ~lr). The case line then says "[fp64 fallback ...]" with the numbers;
4. `PATH merge --model M --adapter O/adapter --out MERGED`; MERGED loads with LlamaForCausalLM.from_pretrained
   (no missing/unexpected keys, no lora tensors) and its logits on a random [2, 16] batch match
   PeftModel(base, O/adapter) within 1e-4 (max|diff| / max|peft|);
5. `PATH generate --model M --adapter O/adapter --prompt-ids "a,b;c,d,e" --max-new-tokens 12 --no-eos` (one
   line of comma-separated ids per prompt) must equal transformers' greedy
   generate(do_sample=False, max_new_tokens=12) on PeftModel(base, O/adapter), each prompt run on its own with
   EOS disabled. If the two first differ at a step where transformers' top-2 logit gap is < 1e-4, the
   case reports a TIE there instead of failing.

Prints one line per case with the measured errors, then `crosscheck-train: N passed, M failed`; exits 1
if any case failed. Without --workdir the cases live in a temporary directory that is removed unless a
case failed (or --keep is given); failed cases print the commands to re-run the CLI by hand.
"""
import argparse
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from crosscheck_eval import describe, is_pow2, write_model  # noqa: E402

# Tiny models: one thread is as fast, and it does not collapse when the cores are busy (2 threads on 2
# loaded cores made a 0.05 s float64 run take 8 s).
torch.set_num_threads(1)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -100
MAX_NEW = 12
TIE_GAP = 1e-4
TOL_W, TOL_LOSS, TOL_LR, TOL_GN, TOL_MERGE = 1e-4, 1e-4, 1e-6, 1e-4, 1e-4
# fp64 fallback for runs that fp32 cannot resolve (see run_case): a gradient entry below THETA times
# its tensor's largest is "undetermined" (the CLI's and torch's fp32 gradients are ~1e-6 of the
# largest entry away from float64); N_JITTER float64 runs redraw those entries at random, N_NOISE more
# add Gaussian noise of SIGMA * max|g| (per tensor) to every gradient entry.
THETA, N_JITTER, N_NOISE, SIGMA = 1e-5, 3, 2, 3e-7


# ------------------------------------------------------------------------------------------------
# random case

def draw_model(rng):
    """A tiny held-out Llama (LlamaConfig kwargs) + save options for crosscheck_eval.write_model."""
    V = rng.randint(100, 599)
    while is_pow2(V):
        V = rng.randint(100, 599)
    nh = rng.choice([1, 2, 3, 4, 6, 8])
    nkv = rng.choice([d for d in range(1, nh + 1) if nh % d == 0])
    H = rng.choice([h for h in range(32, 129, 8) if h % nh == 0 and (h // nh) % 2 == 0 and h // nh >= 8])
    cfg = dict(vocab_size=V, hidden_size=H, intermediate_size=rng.randint(24, 256),
               num_hidden_layers=rng.choice([1, 2, 2]), num_attention_heads=nh, num_key_value_heads=nkv,
               rms_norm_eps=rng.choice([1e-5, 1e-6]), hidden_act="silu", bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=rng.random() < 0.3, max_position_embeddings=rng.choice([64, 128, 2048]))
    if rng.random() < 0.35:
        cfg["head_dim"] = rng.choice([hd for hd in range(8, 34, 2) if hd != H // nh])
    if rng.random() < 0.25:
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": rng.choice([2.0, 8.0]),
                               "low_freq_factor": rng.choice([1.0, 2.0]), "high_freq_factor": rng.choice([4.0, 8.0]),
                               "original_max_position_embeddings": rng.choice([16, 32])}
    cfg["rope_theta"] = round(10 ** rng.uniform(3.0, 6.3), 1)
    opts = dict(dtype=rng.choice(["f32", "f32", "bf16"]), sharded=rng.random() < 0.2,
                legacy_config=rng.random() < 0.5)
    return cfg, opts


def draw_lora(rng):
    r = rng.choice([2, 4, 8])
    k = rng.randint(1, len(ALL_TARGETS))
    targets = sorted(rng.sample(ALL_TARGETS, k), key=ALL_TARGETS.index)
    return dict(r=r, alpha=rng.choice([r, 2 * r, 4, 8, 16, 6.5]), rslora=rng.random() < 0.3, targets=targets,
                a_std=rng.choice([0.05, 0.1, 0.2]), b_std=rng.choice([0.02, 0.05, 0.1]))


def draw_train(rng):
    return dict(steps=rng.randint(4, 6), batch=rng.randint(1, 3), accum=rng.choice([1, 2]),
                lr=rng.choice(["1e-3", "2e-3", "5e-3", "1e-2"]), scheduler=rng.choice(["linear", "cosine", "constant"]),
                warmup=rng.randint(0, 2), mgn=rng.choice([0, 0, 0.05, 0.5, 1.0, 5.0]),
                wd=rng.choice([0.0, 0.01, 0.1]), seq=rng.randint(8, 24))


def draw_data(rng, V):
    rows = []
    for _ in range(rng.randint(3, 9)):
        n = rng.randint(2, 30)
        ids = [rng.randrange(V) for _ in range(n)]
        kind = rng.random()
        row = {"input_ids": ids}
        if kind < 0.2:
            pass                                           # no labels: labels = input_ids
        elif kind < 0.4:
            row["labels"] = list(ids)
        elif kind < 0.7:
            lab = list(ids)
            k = rng.randint(0, n - 1)                      # masked prompt (sometimes all masked)
            lab[:k + 1] = [IGNORE] * (k + 1)
            row["labels"] = lab
        else:
            row["labels"] = [x if rng.random() < 0.6 else IGNORE for x in ids]
        rows.append(row)
    return rows


def micro_batches(rows, tr):
    """The CLI's micro-batches with --no-shuffle: list of (ids [B,T], labels [B,T]) LongTensors."""
    T = max(2, min(tr["seq"], max(len(r["input_ids"]) for r in rows)))
    n = len(rows)
    out = []
    for j in range(tr["steps"] * tr["accum"]):
        ids = torch.zeros(tr["batch"], T, dtype=torch.long)
        lab = torch.full((tr["batch"], T), IGNORE, dtype=torch.long)
        for i in range(tr["batch"]):
            r = rows[(j * tr["batch"] + i) % n]
            x = r["input_ids"][:T]
            y = r.get("labels", r["input_ids"])[:T]
            ids[i, :len(x)] = torch.tensor(x)
            lab[i, :len(y)] = torch.tensor(y)
        out.append((ids, lab))
    return T, out


def update_tokens(mbs, accum, first=1):
    """Predicted tokens per update (labels from index `first` on; the HF shift makes it 1)."""
    return [sum(int((mbs[s * accum + k][1][:, first:] != IGNORE).sum()) for k in range(accum))
            for s in range(len(mbs) // accum)]


def data_ok(mbs, accum, edge_cases):
    """Every update predicts a token. Unless edge_cases: also every micro-batch (the CLI rejects a
    fully masked micro-batch even inside an accumulation group), and every update predicts a token
    at a position >= 1 (a query at position 0 sees one key, so the q/k LoRA gradients are exactly 0
    and AdamW turns any rounding noise there into a step of ~lr; see README)."""
    if min(update_tokens(mbs, accum)) == 0:
        return False
    if edge_cases:
        return True
    return (min(int((lab[:, 1:] != IGNORE).sum()) for _, lab in mbs) > 0
            and min(update_tokens(mbs, accum, first=2)) > 0)


# ------------------------------------------------------------------------------------------------
# torch / peft side

def peft_key(name):
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def lora_params(pm):
    return dict(sorted((peft_key(n), p) for n, p in pm.named_parameters() if ".lora_A." in n or ".lora_B." in n))


def load_base(d):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def load_peft(d, adapter_dir, trainable=False):
    from peft import PeftModel
    return PeftModel.from_pretrained(load_base(d), adapter_dir, is_trainable=trainable).eval()


def write_init_adapter(mdir, lo, adir, seed):
    from peft import LoraConfig, get_peft_model
    base = load_base(mdir)
    base.name_or_path = mdir
    cfg = LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=0.0, target_modules=list(lo["targets"]),
                     use_rslora=lo["rslora"], bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in lora_params(pm).items():
            std = lo["a_std"] if ".lora_A." in k else lo["b_std"]
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float32))
    pm.save_pretrained(adir, safe_serialization=True)


def token_ce_sum(logits, labels):
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    lg = lg if lg.dtype == torch.float64 else lg.float()
    tgt = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(lg, tgt, ignore_index=IGNORE, reduction="sum")


def torch_train(mdir, adir, mbs, tr, dtype=torch.float32, track=None, jitter_seed=None, per_row=False,
                noise_seed=None):
    """The S updates in PyTorch; dtype float32 is the oracle. For the fp64 fallback only: `track` (a
    dict) receives per LoRA tensor the elementwise min over updates of |g| / max|g|; with
    `jitter_seed` every gradient entry below THETA * max|g| of its tensor is replaced by a uniform
    draw from that band before clipping (its sign and size are not determined at fp32 precision).
    With `noise_seed`, N(0, (SIGMA * max|g|)^2) is added to every gradient entry (before clipping).
    `per_row` runs every row of a micro-batch through its own forward/backward (same math, other
    rounding). Returns ({PEFT key: final weight}, {"loss", "lr", "grad_norm": per update})."""
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    pm = load_peft(mdir, adir, trainable=True).to(dtype)
    params = lora_params(pm)
    plist = list(params.values())
    opt = torch.optim.AdamW(plist, lr=float(tr["lr"]), betas=(0.9, 0.999), eps=1e-8, weight_decay=tr["wd"],
                            foreach=False)
    S, K, W = tr["steps"], tr["accum"], tr["warmup"]
    if tr["scheduler"] == "linear":
        sched = get_linear_schedule_with_warmup(opt, W, S)
    elif tr["scheduler"] == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, W, S)
    else:
        sched = get_constant_schedule_with_warmup(opt, W)
    toks = update_tokens(mbs, K)
    log = {"loss": [], "lr": [], "grad_norm": []}
    for s in range(S):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(K):
            ids, lab = mbs[s * K + k]
            # per_row: the same sums in another order (each row on its own, last row first): another,
            # equally valid fp32 rounding of the oracle
            parts = [slice(i, i + 1) for i in reversed(range(ids.shape[0]))] if per_row else [slice(None)]
            for sl in parts:
                ce = token_ce_sum(pm(input_ids=ids[sl]).logits, lab[sl])
                (ce / toks[s]).backward()
                total += float(ce.detach())
        for p in plist:                                  # a micro-batch set may leave no grad at all
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if track is not None:      # per element: min over updates of |g| / max|g| of its tensor
            for k, p in params.items():
                r = p.grad.detach().abs() / p.grad.detach().abs().max().clamp_min(1e-300)
                track[k] = torch.minimum(track[k], r) if k in track else r
        if jitter_seed is not None:
            g = torch.Generator().manual_seed(jitter_seed * 1000 + s)
            with torch.no_grad():
                for p in plist:
                    band = THETA * p.grad.abs().max()
                    u = (2 * torch.rand(p.shape, generator=g, dtype=torch.float64) - 1).to(dtype) * band
                    p.grad.copy_(torch.where(p.grad.abs() < band, u, p.grad))
        if noise_seed is not None:
            g = torch.Generator().manual_seed(noise_seed * 1000 + 500 + s)
            with torch.no_grad():
                for p in plist:
                    z = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
                    p.grad += SIGMA * p.grad.abs().max() * z
        if tr["mgn"] > 0:
            gn = float(torch.nn.utils.clip_grad_norm_(plist, max_norm=tr["mgn"]))
        else:
            gn = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in plist])))
        log["lr"].append(float(sched.get_last_lr()[0]))
        opt.step()
        sched.step()
        log["loss"].append(total / toks[s])
        log["grad_norm"].append(gn)
    return {k: p.detach().clone() for k, p in params.items()}, log


def greedy(pm, prompt):
    """transformers' greedy generate (EOS disabled): new ids and each step's raw logits."""
    gc = pm.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    pm.base_model.config.eos_token_id = None
    with torch.no_grad():
        out = pm.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=None, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), [lg[0].float() for lg in out.logits]


# ------------------------------------------------------------------------------------------------
# helpers

def rel_max(a, b):
    """max|a - b| / max|b| (b = the reference)."""
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def rel(a, b):
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    if b == 0:                       # a learning rate of 0 (linear/cosine warmup from 0)
        return 0.0 if abs(a) <= 1e-12 else math.inf
    return abs(a - b) / abs(b)


CLI_SECONDS = [0.0]


def run(cmd, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s"
    except OSError as e:
        return None, f"cannot run {cmd[0]}: {e}"
    finally:
        CLI_SECONDS[0] += time.time() - t0
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[-1]
        return None, f"exit status {p.returncode}: {tail}"
    return p.stdout, None


def lora_desc(lo):
    return (f"r={lo['r']} alpha={lo['alpha']:g}{' rslora' if lo['rslora'] else ''} "
            f"targets={','.join(t.replace('_proj', '') for t in lo['targets'])}")


def train_desc(tr, T, n_rows):
    return (f"S={tr['steps']} B={tr['batch']} K={tr['accum']} T={T} rows={n_rows} lr={tr['lr']} "
            f"{tr['scheduler']} W={tr['warmup']} C={tr['mgn']:g} wd={tr['wd']:g}")


# ------------------------------------------------------------------------------------------------
# one case

def run_case(cli, seed, cdir, timeout, edge_cases=False, strict=False):
    """Returns (description, measured, errors, ties, commands)."""
    rng = random.Random(seed)
    cfg, opts = draw_model(rng)
    lo = draw_lora(rng)
    tr = draw_train(rng)
    V = cfg["vocab_size"]
    for _ in range(200):
        rows = draw_data(rng, V)
        T, mbs = micro_batches(rows, tr)
        if data_ok(mbs, tr["accum"], edge_cases):
            break
    else:
        raise RuntimeError("could not draw data with predicted tokens in every update")
    prompts = [[rng.randrange(V) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(1, 3))]
    desc = f"{describe(cfg, opts)} | {lora_desc(lo)} | {train_desc(tr, T, len(rows))}"

    mdir, data = os.path.join(cdir, "model"), os.path.join(cdir, "data.jsonl")
    adir, odir, merged = (os.path.join(cdir, x) for x in ("init_adapter", "out", "merged"))
    if os.path.isdir(cdir):
        shutil.rmtree(cdir)
    os.makedirs(mdir)
    write_model(mdir, cfg, opts, seed)
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    write_init_adapter(mdir, lo, adir, seed + 1)

    errs, ties, meas = [], [], []
    cmds = [[cli, "train", "--model", mdir, "--data", data, "--out", odir, "--adapter-init", adir, "--no-shuffle",
             "--steps", str(tr["steps"]), "--batch", str(tr["batch"]), "--grad-accum", str(tr["accum"]),
             "--lr", tr["lr"], "--scheduler", tr["scheduler"], "--warmup", str(tr["warmup"]),
             "--max-grad-norm", f"{tr['mgn']:g}", "--weight-decay", f"{tr['wd']:g}", "--seq", str(tr["seq"]),
             "--seed", "1", "--quiet"]]

    # 1-3: train
    _, err = run(cmds[0], timeout)
    ref_w, ref_log = torch_train(mdir, adir, mbs, tr)
    if err:
        errs.append(f"train: {err}")
        return desc, meas, errs, ties, cmds
    from safetensors.torch import load_file
    got = load_file(os.path.join(odir, "adapter", "adapter_model.safetensors"))
    if set(got) != set(ref_w):
        errs.append(f"adapter keys differ: missing {sorted(set(ref_w) - set(got))[:3]}, "
                    f"extra {sorted(set(got) - set(ref_w))[:3]}")
    with open(os.path.join(odir, "adapter", "adapter_config.json")) as f:
        ocfg = json.load(f)
    tm = ocfg.get("target_modules")
    tm = sorted(tm) if isinstance(tm, list) else tm
    for key, want, have in (("r", lo["r"], ocfg.get("r")), ("lora_alpha", lo["alpha"], ocfg.get("lora_alpha")),
                            ("use_rslora", lo["rslora"], bool(ocfg.get("use_rslora", False))),
                            ("target_modules", sorted(lo["targets"]), tm)):
        if have != want:
            errs.append(f"adapter_config.json {key} = {have!r}, expected {want!r}")
    with open(os.path.join(odir, "metrics.jsonl")) as f:
        mets = [json.loads(ln) for ln in f if ln.strip()]
    if [m.get("step") for m in mets] != list(range(1, tr["steps"] + 1)):
        errs.append(f"metrics.jsonl steps {[m.get('step') for m in mets]}")
        mets = []

    # (name, tolerance, cli value, torch value getter) for every compared quantity; relative errors
    common = sorted(k for k in set(got) & set(ref_w) if got[k].shape == ref_w[k].shape)
    errs += [f"{k}: shape {list(got[k].shape)} != {list(ref_w[k].shape)}" for k in set(got) & set(ref_w)
             if k not in common]
    checks = [(f"weight {k}", TOL_W, got[k].float(), (lambda w, lg, k=k: w[k])) for k in common]
    for i, m in enumerate(mets):
        for key, tol in (("loss", TOL_LOSS), ("lr", TOL_LR), ("grad_norm", TOL_GN)):
            checks.append((f"{key} step {i + 1}", tol, float(m[key]), (lambda w, lg, key=key, i=i: lg[key][i])))

    def err_of(a, b):
        return rel_max(a, b) if isinstance(a, torch.Tensor) else rel(float(a), float(b))

    e32 = [err_of(c, get(ref_w, ref_log)) for _, _, c, get in checks]
    bad = [i for i, (chk, e) in enumerate(zip(checks, e32)) if not e <= chk[1]]
    fallback = []
    if bad and not strict:
        # Is the run determined to the tolerance at fp32 precision at all? AdamW (eps 1e-8) turns a
        # gradient entry that is ~1e-7 of its tensor's largest (rounding-level in fp32) into a step of
        # up to ~lr of either sign, and what that does to the rest of the run can grow. So: the oracle
        # in float64 (the truth) records which entries ever had |g| < THETA * max|g| ("undetermined");
        # N_JITTER float64 runs redraw exactly those gradient entries at random inside that band, N_NOISE
        # float64 runs add fp32-sized noise (SIGMA * max|g|) to every entry, and a second fp32 oracle
        # sums in another order (per row). A value failing against fp32 passes if
        # its error against float64 is within max(tol, 2 x the largest deviation of an fp32 oracle or
        # of a jittered run from float64), separately for the determined and the undetermined entries
        # of a tensor. Update-1 loss and grad_norm can only move by fp32 rounding (the jitter comes
        # after them), so they stay effectively strict.
        trk = {}
        w64, log64 = torch_train(mdir, adir, mbs, tr, torch.float64, track=trk)
        alt = [(ref_w, ref_log), torch_train(mdir, adir, mbs, tr, per_row=True)]
        alt += [torch_train(mdir, adir, mbs, tr, torch.float64, jitter_seed=n + 1) for n in range(N_JITTER)]
        alt += [torch_train(mdir, adir, mbs, tr, torch.float64, noise_seed=n + 1) for n in range(N_NOISE)]
        still = []
        for i in bad:
            name, tol, c, get = checks[i]
            ref = get(w64, log64)
            if isinstance(c, torch.Tensor):
                key = name.split(" ", 1)[1]
                und = trk[key] < THETA
                parts = []
                for mask in (~und, und):    # determined entries, then undetermined ones
                    if not bool(mask.any()):
                        continue

                    def part(a, mask=mask):
                        d = (a.detach().double() - ref.double()).abs() * mask
                        return float(d.max() / ref.double().abs().max().clamp_min(1e-30))
                    parts.append((part(c), max(part(get(w, lg)) for w, lg in alt)))
                ok = all(e <= max(tol, 2 * n) for e, n in parts)
                e64, noise = parts[0]
                extra = ""
                if bool(und.any()):
                    if bool((~und).any()):
                        extra = (f"; {int(und.sum())} undetermined entries: vs fp64 {parts[1][0]:.1e}, "
                                 f"spread {parts[1][1]:.1e}")
                    else:
                        extra = "; all entries undetermined"
            else:
                e64 = err_of(c, ref)
                noise = max(err_of(get(w, lg), ref) for w, lg in alt)
                ok = e64 <= max(tol, 2 * noise)
                extra = ""
            (fallback if ok else still).append((i, e64, noise, extra))
        for i, e64, noise, extra in still:
            name, tol, c, get = checks[i]
            v = "" if isinstance(c, torch.Tensor) else f" (cli {c:.8g} vs torch {float(get(ref_w, ref_log)):.8g})"
            errs.append(f"{name} off by {e32[i]:.3g} > {tol:g}{v} [vs float64 {e64:.2g}, fp32-level spread "
                        f"{noise:.2g}{extra}]")
    elif bad:
        for i in bad:
            name, tol, c, get = checks[i]
            v = "" if isinstance(c, torch.Tensor) else f" (cli {c:.8g} vs torch {float(get(ref_w, ref_log)):.8g})"
            errs.append(f"{name} off by {e32[i]:.3g} > {tol:g}{v}")
    for short, prefix in (("w", "weight"), ("loss", "loss "), ("lr", "lr "), ("gn", "grad_norm ")):
        es = [e for chk, e in zip(checks, e32) if chk[0].startswith(prefix)]
        if es:
            meas.append(f"{short}={max(es):.1e}")
    if fallback:
        i, e64, noise, extra = max(fallback, key=lambda x: e32[x[0]])
        meas.append(f"[fp64 fallback for {len(fallback)} values; worst "
                    f"{checks[i][0].replace('base_model.model.model.', '')}: vs fp32 {e32[i]:.1e}, vs fp64 {e64:.1e}, "
                    f"spread {noise:.1e}{extra}]")

    # 4: merge
    cmds.append([cli, "merge", "--model", mdir, "--adapter", os.path.join(odir, "adapter"), "--out", merged])
    _, err = run(cmds[-1], timeout)
    pm = load_peft(mdir, os.path.join(odir, "adapter"))
    if err:
        errs.append(f"merge: {err}")
    else:
        from transformers import LlamaForCausalLM
        mm, info = LlamaForCausalLM.from_pretrained(merged, dtype=torch.float32, attn_implementation="eager",
                                                    output_loading_info=True)
        mm.eval()
        probs = [f"{k} {v[:3]}" for k, v in info.items() if v]
        lora_keys = [n for n, _ in mm.named_parameters() if "lora" in n]
        if probs or lora_keys:
            errs.append(f"merged model loading: {'; '.join(probs)} {lora_keys[:3]}")
        g = torch.Generator().manual_seed(seed + 2)
        x = torch.randint(0, V, (2, 16), generator=g)
        with torch.no_grad():
            lp, lm = pm(input_ids=x).logits, mm(input_ids=x).logits
            with pm.disable_adapter():
                lb = pm(input_ids=x).logits
        e = rel_max(lm, lp)
        meas.append(f"merged={e:.1e}(adapter effect {rel_max(lb, lp):.2f})")
        if not e <= TOL_MERGE:
            errs.append(f"merged logits off by {e:.3g} > {TOL_MERGE:g}")

    # 5: generate
    pstr = ";".join(",".join(str(t) for t in p) for p in prompts)
    cmds.append([cli, "generate", "--model", mdir, "--adapter", os.path.join(odir, "adapter"), "--prompt-ids", pstr,
                 "--max-new-tokens", str(MAX_NEW), "--no-eos"])
    out, err = run(cmds[-1], timeout)
    if err:
        errs.append(f"generate: {err}")
    else:
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if len(lines) != len(prompts):
            errs.append(f"generate printed {len(lines)} lines for {len(prompts)} prompts")
        ok_gen = 0
        for b, p in enumerate(prompts[:len(lines)]):
            try:
                cl = [int(t) for t in lines[b].split(",")]
            except ValueError:
                errs.append(f"generate line {b} is not comma-separated ids: {lines[b][:80]!r}")
                continue
            ref, lgs = greedy(pm, p)
            if len(ref) != MAX_NEW:
                errs.append(f"transformers generated {len(ref)} tokens for prompt {b} (EOS not disabled?)")
            if cl == ref:
                ok_gen += 1
                continue
            k = next((i for i in range(min(len(cl), len(ref))) if cl[i] != ref[i]), min(len(cl), len(ref)))
            if k < len(lgs) and k < len(cl):
                top2 = torch.topk(lgs[k], 2).values
                gap = float(top2[0] - top2[1])
                if gap < TIE_GAP:
                    ties.append(f"prompt {b} step {k}: top-2 gap {gap:.1e} (cli {cl[k]}, hf {ref[k]})")
                    continue
                errs.append(f"generate prompt {b} ({len(p)} ids) differs at new token {k}: cli {cl[k]} vs hf "
                            f"{ref[k]} (hf top-2 gap {gap:.3g}; logit of cli's choice {float(lgs[k][cl[k]]):.5g} vs "
                            f"{float(lgs[k][ref[k]]):.5g}) cli={cl} hf={ref}")
            else:
                errs.append(f"generate prompt {b}: cli produced {len(cl)} tokens, hf {len(ref)}: cli={cl} hf={ref}")
        meas.append(f"gen={ok_gen}/{len(prompts)}" + (f"+{len(ties)}tie" if ties else ""))
    return desc, meas, errs, ties, cmds


def main():
    ap = argparse.ArgumentParser(description="cross-check `loratune train/merge/generate` against PyTorch + PEFT")
    ap.add_argument("--cli", required=True, help="path to the loratune command-line tool")
    ap.add_argument("--workdir", help="where to write the cases (kept); default: a temporary directory")
    ap.add_argument("--seeds", type=int, default=3, help="number of random cases (default 3)")
    ap.add_argument("--seed-base", type=int, default=9100, help="seed of the first case (default 9100)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per CLI call (default 120)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--strict", action="store_true",
                    help="no float64 fallback: every value within its tolerance of the fp32 oracle")
    ap.add_argument("--edge-cases", action="store_true",
                    help="also draw data with fully masked micro-batches and updates whose only predicted "
                         "tokens sit at position 0 (known to differ; see README)")
    a = ap.parse_args()

    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")

    t0 = time.time()
    cli = os.path.abspath(a.cli) if os.path.exists(a.cli) else a.cli
    if a.workdir:
        work = os.path.abspath(a.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="lt-crosscheck-train-")
    passed = failed = 0
    for i in range(a.seeds):
        seed = a.seed_base + i
        cdir = os.path.join(work, f"case-{seed}")
        t1 = time.time()
        CLI_SECONDS[0] = 0.0
        desc, meas, errs, ties, cmds = "", [], [], [], []
        try:
            desc, meas, errs, ties, cmds = run_case(cli, seed, cdir, a.timeout, a.edge_cases, a.strict)
        except Exception as e:  # a broken case counts as a failure, the others still run
            errs = [f"{type(e).__name__}: {e}"]
        ok = not errs
        passed += ok
        failed += not ok
        shown = errs if len(errs) <= 5 else errs[:4] + [f"... and {len(errs) - 4} more"]
        verdict = "PASS" if ok else "FAIL: " + "; ".join(shown)
        if ties:
            verdict += " (TIE, not compared further: " + "; ".join(ties) + ")"
        print(f"case {i} seed={seed}: {desc} | {' '.join(meas)} ({time.time() - t1:.1f}s, cli {CLI_SECONDS[0]:.1f}s) -> {verdict}", flush=True)
        if not ok:
            for c in cmds:
                print("  repro: " + " ".join(shlex.quote(x) for x in c), flush=True)
    if failed or a.keep:
        print(f"cases kept in {work}", flush=True)
    elif not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"({time.time() - t0:.1f}s)", flush=True)
    print(f"crosscheck-train: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
