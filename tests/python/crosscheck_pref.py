#!/usr/bin/env python3
"""Cross-check the preference objectives of `loratune train|eval --objective dpo|ipo|kto|orpo` against
PyTorch + PEFT (+ TRL's own ORPO odds-ratio function) on held-out random Llama models.

usage: crosscheck_pref.py --cli PATH_TO_loratune [--workdir DIR] [--seeds N (2)] [--seed-base S (7300)] [--keep]

Each case (seed) draws a tiny random Llama (crosscheck_train.draw_model, written by transformers'
save_pretrained), a random PEFT LoRA adapter written by peft with NONZERO lora_A and lora_B (so the
policy differs from the reference, which is the base model with the adapter disabled, as TRL does
for a PEFT model without a ref adapter), and random pre-tokenized preference data (prompts 1..6
tokens, completions 1..6 tokens; KTO rows with both labels). The CLI appends config.json's EOS to
every completion that does not end with it; the reference does the same. Then for each objective
(DPO with a random label_smoothing in {0, 0.1, 0.3}, IPO, KTO with random desirable/undesirable
weights, ORPO) and a random beta:

For DPO, IPO and KTO the reference is, at random, a second nonzero adapter (`--ref-adapter R`, torch:
PeftModel(base, R)) instead of the disabled adapter.
1. `loratune eval --objective X --adapter A --batch n --json` (one batch of all n examples) against the
   PyTorch loss and the metrics rewards/chosen, rewards/rejected, rewards/accuracies (not KTO),
   rewards/margins (and kl for KTO): |diff| <= 1e-4 * max(1, |ref|).
   Formulas: DPO -(1-e) log s(b D) - e log s(-b D), D = (pc - rc) - (pr - rr), log-probs summed over
   the completion; IPO ((pc - rc)/nc - (pr - rr)/nr - 1/(2b))^2; KTO as TRL's KTOTrainer._compute_loss
   (KL rows = prompt i + completion i-1, kl = clamp(mean(pKL - rKL), 0), losses cat(wd (1 - s(b(lr - kl))),
   wu (1 - s(b(kl - lr)))) averaged); ORPO: NLL over prompt + chosen (every non-pad token, token mean)
   minus the mean of TRL's ORPOTrainer.odds_ratio_loss (called as is) on the mean per-token log-probs.
2. the gradient: `loratune train --objective X --adapter-init A --optimizer sgd --momentum 0 --lr 1
   --max-grad-norm 0 --steps 1 --batch n --no-shuffle` gives A - grad; grad vs torch autograd of the
   same loss, per LoRA tensor max|diff| / max|torch| <= 2e-4.
3. DPO training: `loratune train --objective dpo` for S = 3 AdamW updates (lr 1e-3, batch 2, grad-accum
   1..2, max-grad-norm 1, constant schedule, --no-shuffle: micro-batch j holds examples (j*B + i) mod n)
   (also with --precompute-ref) equals the same PyTorch run (torch.optim.AdamW, clip_grad_norm_, loss = mean of the micro-batch
   losses): adapter tensors max|diff| / max|torch| <= 1e-4 and the per-step loss within 1e-4 relative.
Prints one line per case and objective; exits 1 if anything failed.
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
import types

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from crosscheck_eval import write_model  # noqa: E402
from crosscheck_train import draw_lora, draw_model, load_peft, lora_params, rel_max, write_init_adapter  # noqa: E402

torch.set_num_threads(1)
TOL_LOSS, TOL_GRAD, TOL_W = 1e-4, 2e-4, 1e-4


def draw_pref(rng, V, n, kto, eos):
    rows = []
    for i in range(n):
        p = [rng.randrange(V) for _ in range(rng.randint(1, 6))]
        if kto:
            rows.append({"prompt_ids": p, "completion_ids": [rng.randrange(V) for _ in range(rng.randint(1, 6))],
                         "label": (i % 2 == 0) if i < 2 else rng.random() < 0.5})
        else:
            rows.append({"prompt_ids": p, "chosen_ids": [rng.randrange(V) for _ in range(rng.randint(1, 6))],
                         "rejected_ids": [rng.randrange(V) for _ in range(rng.randint(1, 6))]})
    return rows


def with_eos(c, eos):
    return c if c and c[-1] == eos else c + [eos]


def forward_logps(model, seqs):
    """seqs: list of (prompt, completion, label_prompt). Returns per row (sum lp over the completion,
    number of completion tokens, sum of CE over every labelled token, their count)."""
    T = max(len(p) + len(c) for p, c, _ in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, (p, c, _) in enumerate(seqs):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    out = []
    for i, (p, c, lab_p) in enumerate(seqs):
        P, C = len(p), len(c)
        tok = logp[i, torch.arange(P + C - 1), ids[i, 1:P + C]]  # position t predicts token t+1
        comp = tok[P - 1:P + C - 1].sum()
        nll = -tok.sum() if lab_p else None
        out.append((comp, C, nll, P + C - 1))
    return out


class _Disabled:
    """The reference: the policy with its adapter disabled (TRL with a PEFT model), or another model."""

    def __init__(self, pm, ref_model):
        self.pm, self.ref_model = pm, ref_model

    def __enter__(self):
        if self.ref_model is not None:
            return self.ref_model
        self.ctx = self.pm.disable_adapter()
        self.ctx.__enter__()
        return self.pm

    def __exit__(self, *a):
        if self.ref_model is None:
            self.ctx.__exit__(*a)


def torch_objective(pm, rows, obj, prm, ref_model=None):
    """Loss (a tensor with grad through the policy) and metrics, as TRL defines them."""
    beta = prm["beta"]
    if obj == "kto":
        n = len(rows)
        seqs = [(r["prompt_ids"], r["completion_ids"], False) for r in rows]
        kl_seqs = [(rows[i]["prompt_ids"], rows[(i - 1) % n]["completion_ids"], False) for i in range(n)]
        pol = forward_logps(pm, seqs)
        with torch.no_grad():
            pol_kl = forward_logps(pm, kl_seqs)
            with _Disabled(pm, ref_model) as rm:
                ref = forward_logps(rm, seqs)
                ref_kl = forward_logps(rm, kl_seqs)
        kl = torch.stack([a[0] - b[0] for a, b in zip(pol_kl, ref_kl)]).mean().detach().clamp(min=0)
        ch = [i for i in range(n) if rows[i]["label"]]
        rj = [i for i in range(n) if not rows[i]["label"]]
        lr = [pol[i][0] - ref[i][0] for i in range(n)]
        cl = [1 - torch.sigmoid(beta * (lr[i] - kl)) for i in ch]
        rl = [1 - torch.sigmoid(beta * (kl - lr[i])) for i in rj]
        losses = torch.cat([prm["dw"] * torch.stack(cl) if cl else torch.zeros(0),
                            prm["uw"] * torch.stack(rl) if rl else torch.zeros(0)])
        loss = losses.nanmean()
        rc = sum(float(beta * lr[i].detach()) for i in ch) / len(ch) if ch else float("nan")
        rr = sum(float(beta * lr[i].detach()) for i in rj) / len(rj) if rj else float("nan")
        met = {"rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr, "kl": float(kl)}
        return loss, met
    orpo = obj == "orpo"
    seqs_c = [(r["prompt_ids"], r["chosen_ids"], orpo) for r in rows]
    seqs_r = [(r["prompt_ids"], r["rejected_ids"], False) for r in rows]
    both = forward_logps(pm, seqs_c + seqs_r)
    pc = torch.stack([x[0] for x in both[:len(rows)]])
    pr = torch.stack([x[0] for x in both[len(rows):]])
    nc = torch.tensor([float(x[1]) for x in both[:len(rows)]])
    nr = torch.tensor([float(x[1]) for x in both[len(rows):]])
    if orpo:
        from trl.experimental.orpo.orpo_trainer import ORPOTrainer
        fake = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device="cpu"))
        losses, rew_c, rew_r, _, _ = ORPOTrainer.odds_ratio_loss(fake, pc / nc, pr / nr)
        nll = torch.stack([x[2] for x in both[:len(rows)]]).sum() / sum(x[3] for x in both[:len(rows)])
        loss = nll - losses.mean()
    else:
        with torch.no_grad(), _Disabled(pm, ref_model) as rm:
            ref = forward_logps(rm, seqs_c + seqs_r)
        rc = torch.stack([x[0] for x in ref[:len(rows)]])
        rr = torch.stack([x[0] for x in ref[len(rows):]])
        if obj == "ipo":
            h = (pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)
            loss = (h ** 2).mean()
        else:
            z = beta * ((pc - rc) - (pr - rr))
            e = prm["ls"]
            loss = (-(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)).mean()
        rew_c, rew_r = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    rew_c, rew_r = rew_c.detach(), rew_r.detach()
    met = {"rewards/chosen": float(rew_c.mean()), "rewards/rejected": float(rew_r.mean()),
           "rewards/accuracies": float((rew_c > rew_r).float().mean()), "rewards/margins": float((rew_c - rew_r).mean())}
    return loss, met


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def obj_flags(obj, prm):
    f = ["--objective", obj, "--beta", repr(prm["beta"])]
    if obj == "dpo":
        f += ["--label-smoothing", repr(prm["ls"])]
    if obj == "kto":
        f += ["--desirable-weight", repr(prm["dw"]), "--undesirable-weight", repr(prm["uw"])]
    return f


def read_adapter(d):
    """the adapter a `loratune train --out d` run wrote (d/adapter)"""
    from safetensors.torch import load_file
    return {k: v.float() for k, v in load_file(os.path.join(d, "adapter", "adapter_model.safetensors")).items()}


def close(a, b, tol):
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return a is None
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


def check_objective(cli, cdir, mdir, adir, rng, obj, eos, ref_adir=None):
    prm = dict(beta=rng.choice([0.1, 0.5, 2.0]), ls=rng.choice([0.0, 0.1, 0.3]), dw=rng.choice([1.0, 1.5]),
               uw=rng.choice([1.0, 0.7]))
    V = json.load(open(os.path.join(mdir, "config.json")))["vocab_size"]
    n = rng.randint(2, 5)
    rows = draw_pref(rng, V, n, obj == "kto", eos)
    data = os.path.join(cdir, f"{obj}.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    ref_rows = []
    for r in rows:  # EOS as the CLI appends it
        r = dict(r)
        for k in ("chosen_ids", "rejected_ids", "completion_ids"):
            if k in r:
                r[k] = with_eos(r[k], eos)
        ref_rows.append(r)
    pm = load_peft(mdir, adir, trainable=True)
    use_ref = ref_adir is not None and obj != "orpo" and rng.random() < 0.5  # a frozen reference adapter
    ref_model = load_peft(mdir, ref_adir) if use_ref else None
    extra = ["--ref-adapter", ref_adir] if use_ref else []
    loss, met = torch_objective(pm, ref_rows, obj, prm, ref_model)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in lora_params(pm).items()}
    w0 = {k: p.detach().clone() for k, p in lora_params(pm).items()}
    # 1. eval
    out = json.loads(run([cli, "eval", "--model", mdir, "--data", data, "--adapter", adir, "--batch", str(n),
                          "--json"] + obj_flags(obj, prm) + extra).strip().splitlines()[-1])
    errs = []
    loss = loss.detach()
    if not close(out["loss"], float(loss), TOL_LOSS):
        errs.append(f"loss {out['loss']} vs {float(loss)}")
    for k, v in met.items():
        if not close(out.get(k), v, TOL_LOSS):
            errs.append(f"{k} {out.get(k)} vs {v}")
    # 2. gradient through one SGD step with lr 1
    odir = os.path.join(cdir, f"{obj}-sgd")
    run([cli, "train", "--model", mdir, "--data", data, "--out", odir, "--adapter-init", adir, "--optimizer", "sgd",
         "--momentum", "0", "--lr", "1", "--max-grad-norm", "0", "--steps", "1", "--batch", str(n), "--no-shuffle",
         "--quiet"] + obj_flags(obj, prm) + extra)
    w1 = read_adapter(odir)
    worst = 0.0
    for k, g in grads.items():
        worst = max(worst, rel_max(w0[k] - w1[k], g))
    if worst > TOL_GRAD:
        errs.append(f"grad rel {worst:.2e}")
    return errs, f"{obj}{' (ref adapter)' if use_ref else ''}: n={n} beta={prm['beta']} loss {out['loss']:.6f} vs {float(loss):.6f} grad rel {worst:.1e}"


def dpo_train(cli, cdir, mdir, adir, rng, eos):
    V = json.load(open(os.path.join(mdir, "config.json")))["vocab_size"]
    n, B, K, S, beta, lr, mgn = 4, 2, rng.choice([1, 2]), 3, rng.choice([0.1, 1.0]), 1e-3, 1.0
    rows = draw_pref(rng, V, n, False, eos)
    data = os.path.join(cdir, "dpo-train.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    odir = os.path.join(cdir, "dpo-train")
    run([cli, "train", "--model", mdir, "--data", data, "--out", odir, "--adapter-init", adir, "--objective", "dpo",
         "--beta", repr(beta), "--lr", repr(lr), "--max-grad-norm", repr(mgn), "--steps", str(S), "--batch", str(B),
         "--grad-accum", str(K), "--no-shuffle", "--quiet"])
    cli_w = read_adapter(odir)
    cli_loss = [json.loads(l)["loss"] for l in open(os.path.join(odir, "metrics.jsonl"))]
    # the same run with reference log-probs computed once for the dataset
    run([cli, "train", "--model", mdir, "--data", data, "--out", odir + "-pre", "--adapter-init", adir, "--objective",
         "dpo", "--beta", repr(beta), "--lr", repr(lr), "--max-grad-norm", repr(mgn), "--steps", str(S), "--batch",
         str(B), "--grad-accum", str(K), "--no-shuffle", "--quiet", "--precompute-ref"])
    pre_w = read_adapter(odir + "-pre")
    ref_rows = [dict(r, chosen_ids=with_eos(r["chosen_ids"], eos), rejected_ids=with_eos(r["rejected_ids"], eos))
                for r in rows]
    pm = load_peft(mdir, adir, trainable=True)
    plist = list(lora_params(pm).values())
    opt = torch.optim.AdamW(plist, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    losses = []
    for s in range(S):
        opt.zero_grad(set_to_none=True)
        last = None
        for k in range(K):
            j = s * K + k
            mb = [ref_rows[(j * B + i) % n] for i in range(B)]
            loss, _ = torch_objective(pm, mb, "dpo", dict(beta=beta, ls=0.0))
            (loss / K).backward()
            last = float(loss.detach())
        torch.nn.utils.clip_grad_norm_(plist, max_norm=mgn)
        opt.step()
        losses.append(last)
    errs = []
    worst = max(max(rel_max(cli_w[k], p.detach()), rel_max(pre_w[k], p.detach())) for k, p in lora_params(pm).items())
    if worst > TOL_W:
        errs.append(f"weights rel {worst:.2e}")
    for s, (a, b) in enumerate(zip(cli_loss, losses)):
        if not close(a, b, TOL_LOSS):
            errs.append(f"step {s + 1} loss {a} vs {b}")
    return errs, f"dpo-train: {S} steps x {K} micro-batches of {B}, beta {beta}: weights rel {worst:.1e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=7300)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    cli = os.path.abspath(a.cli)
    work = a.workdir or tempfile.mkdtemp(prefix="crosscheck-pref-")
    os.makedirs(work, exist_ok=True)
    n_ok = n_bad = 0
    for seed in range(a.seed_base, a.seed_base + a.seeds):
        rng = random.Random(seed)
        cdir = os.path.join(work, f"case-{seed}")
        shutil.rmtree(cdir, ignore_errors=True)
        os.makedirs(cdir)
        cfg, opts = draw_model(rng)
        mdir, adir = os.path.join(cdir, "model"), os.path.join(cdir, "adapter")
        write_model(mdir, cfg, opts, seed)
        lo = draw_lora(rng)
        write_init_adapter(mdir, lo, adir, seed)
        ref_adir = os.path.join(cdir, "ref-adapter")
        write_init_adapter(mdir, lo, ref_adir, seed + 100000)  # another adapter: a frozen reference
        eos = cfg["eos_token_id"]
        checks = [lambda o=o: check_objective(cli, cdir, mdir, adir, rng, o, eos, ref_adir) for o in ("dpo", "ipo", "kto", "orpo")]
        checks.append(lambda: dpo_train(cli, cdir, mdir, adir, rng, eos))
        for c in checks:
            try:
                errs, line = c()
            except Exception as e:  # a CLI failure is a failed check
                errs, line = [str(e)], "exception"
            ok = not errs
            n_ok += ok
            n_bad += not ok
            print(f"case {seed} {'ok  ' if ok else 'FAIL'} {line}" + ("" if ok else "  <- " + "; ".join(errs)), flush=True)
    print(f"crosscheck-pref: {n_ok} passed, {n_bad} failed")
    if not a.workdir and not a.keep and n_bad == 0:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
