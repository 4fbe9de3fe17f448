#!/usr/bin/env python3
"""Cross-check one GRPO step of libloratune (lt_grpo_generate -> host rewards -> lt_grpo_step, through
the ctypes layer of bindings/python) against PyTorch + PEFT on held-out random Llama models.

usage: crosscheck_grpo.py --lib build/libloratune.so.0 [--seeds N (3)] [--seed-base S (5100)]

Each case draws a tiny random Llama and a nonzero PEFT LoRA adapter (crosscheck_train), G in 2..4,
1..3 prompts, a sampling temperature in {0.7, 1.0, 1.3}, max_new_tokens 2..6 (EOS from config.json
stops a row early), scale_rewards, loss_type and kl_beta (0 or 0.04) at random, and random rewards.
The library samples the completions; PyTorch then computes TRL's GRPO loss on exactly those tokens:
lp = log_softmax(logits / temperature) of each completion token (EOS included), the reference = the
adapter disabled, advantages (r - mean_group) / (std + 1e-4) (Bessel; group / batch / none),
per token -min(rho A, clip(rho) A) with rho = exp(lp - lp.detach()), + kl_beta k3, aggregated as
grpo / bnpo / dr_grpo (max_completion_length = max_new_tokens) / dapo.
Checks: the step's loss and kl (1e-4 relative, or 1e-6 absolute), reward mean/std (1e-6), mean
completion length (exact); and the gradient: the trainer's optimizer is SGD with lr 1, no momentum,
no clipping, so A_before - A_after = grad; per LoRA tensor max|diff| / max|torch| <= 2e-4.
"""
import argparse
import ctypes
import json
import os
import random
import shutil
import sys
import tempfile

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))

from crosscheck_eval import write_model  # noqa: E402
from crosscheck_train import draw_lora, draw_model, load_peft, lora_params, rel_max, write_init_adapter  # noqa: E402

torch.set_num_threads(1)


def ck(st, what, L, err=None):
    if st != 0:
        raise RuntimeError(f"{what}: status {st}: {L.decode(err() if err else L.lib().lt_last_error())}")


def run_case(lib_path, seed, work):
    os.environ["LORATUNE_LIBRARY"] = lib_path
    from loratune import _lib as L
    lib = L.lib()
    rng = random.Random(seed)
    cfg, opts = draw_model(rng)
    mdir, adir, odir = (os.path.join(work, x) for x in ("model", "adapter", "out"))
    write_model(mdir, cfg, opts, seed)
    write_init_adapter(mdir, draw_lora(rng), adir, seed)
    G, n_prompts = rng.randint(2, 4), rng.randint(1, 3)
    temp, max_new = rng.choice([0.7, 1.0, 1.3]), rng.randint(2, 6)
    scale, loss_type = rng.choice([0, 1, 2]), rng.choice([0, 1, 2, 3])
    kl_beta = rng.choice([0.0, 0.04])
    V, eos = cfg["vocab_size"], cfg["eos_token_id"]
    prompts = [[rng.randrange(3, V) for _ in range(rng.randint(1, 5))] for _ in range(n_prompts)]

    cp = L.init_struct(lib.lt_context_params_init, L.lt_context_params)
    cp.backend = b"cpu"
    ctx_p = L.lt_context_p()
    ck(lib.lt_context_create(ctypes.byref(cp), ctypes.byref(ctx_p)), "context", L)
    model_p = L.lt_model_p()
    ck(lib.lt_model_load(ctx_p, mdir.encode(), None, ctypes.byref(model_p)), "model", L)
    ad_p = L.lt_adapter_p()
    ck(lib.lt_adapter_load(model_p, adir.encode(), ctypes.byref(ad_p)), "adapter", L)
    op = L.init_struct(lib.lt_optimizer_params_init, L.lt_optimizer_params)
    op.kind, op.lr, op.momentum, op.max_grad_norm = 1, 1.0, 0.0, 0.0  # SGD: A -= grad
    opt_p = L.lt_optimizer_p()
    ck(lib.lt_optimizer_create(ad_p, ctypes.byref(op), ctypes.byref(opt_p)), "optimizer", L)
    tp = L.init_struct(lib.lt_trainer_params_init, L.lt_trainer_params)
    tp.objective, tp.num_generations, tp.kl_beta = 5, G, kl_beta
    tp.scale_rewards, tp.loss_type = scale, loss_type
    tr_p = L.lt_trainer_p()
    ck(lib.lt_trainer_create(model_p, ad_p, opt_p, ctypes.byref(tp), ctypes.byref(tr_p)), "trainer", L)
    flat = [t for p in prompts for t in p]
    P = (ctypes.c_int32 * len(flat))(*flat)
    PL = (ctypes.c_int32 * n_prompts)(*[len(p) for p in prompts])
    S = n_prompts * G
    comp = (ctypes.c_int32 * (S * max_new))()
    clens = (ctypes.c_int32 * S)()
    gp = L.init_struct(lib.lt_generate_params_init, L.lt_generate_params)
    gp.max_new_tokens, gp.temperature, gp.seed = max_new, temp, seed
    terr = lambda: lib.lt_trainer_last_error(tr_p)  # noqa: E731
    ck(lib.lt_grpo_generate(tr_p, P, PL, n_prompts, ctypes.byref(gp), comp, clens), "generate", L, terr)
    rewards = [float(torch.tensor(rng.choice([0.0, 1.0, rng.uniform(-1, 2)]), dtype=torch.float32)) for _ in range(S)]
    R = (ctypes.c_float * S)(*rewards)
    res = L.lt_step_result()
    res.size = ctypes.sizeof(res)
    ck(lib.lt_grpo_step(tr_p, R, ctypes.byref(res)), "step", L, terr)
    ck(lib.lt_adapter_save(ad_p, odir.encode()), "save", L)
    lib.lt_trainer_free(tr_p)
    lib.lt_optimizer_free(opt_p)
    lib.lt_adapter_free(ad_p)
    lib.lt_model_free(model_p)
    lib.lt_context_free(ctx_p)

    # ---- PyTorch, TRL's formulas on the same completions
    rows = [(prompts[i // G], list(comp[i * max_new:i * max_new + clens[i]])) for i in range(S)]
    pm = load_peft(mdir, adir, trainable=True)

    def token_logps(model):
        out = []
        for p, c in rows:
            ids = torch.tensor([p + c])
            lg = model(input_ids=ids).logits[0].float() / temp
            lp = torch.log_softmax(lg, -1)
            out.append(lp[len(p) - 1:len(p) + len(c) - 1].gather(1, torch.tensor(c)[:, None])[:, 0])
        return out

    lp = token_logps(pm)
    with torch.no_grad(), pm.disable_adapter():
        ref = token_logps(pm)
    r = torch.tensor(rewards, dtype=torch.float64)
    mean_g = r.view(-1, G).mean(1).repeat_interleave(G)
    std = r.std().expand_as(r) if scale == 1 else r.view(-1, G).std(1).repeat_interleave(G)
    adv = r - mean_g
    if scale != 2:
        adv = adv / (std + 1e-4)
    adv = torch.nan_to_num(adv, nan=0.0).float()
    eps = 0.2
    per_seq, kls, total = [], [], sum(len(c) for _, c in rows)
    for i in range(S):
        rho = torch.exp(lp[i] - lp[i].detach())
        l_tok = -torch.min(rho * adv[i], torch.clamp(rho, 1 - eps, 1 + eps) * adv[i])
        if kl_beta > 0:
            k3 = torch.exp(ref[i] - lp[i]) - (ref[i] - lp[i]) - 1
            l_tok = l_tok + kl_beta * k3
            kls.append(k3.detach())
        per_seq.append(l_tok)
    if loss_type == 1:  # grpo
        loss = torch.stack([x.sum() / max(1, len(x)) for x in per_seq]).mean()
    elif loss_type == 3:  # dr_grpo
        loss = sum(x.sum() for x in per_seq) / (S * max_new)
    else:  # dapo, bnpo
        loss = sum(x.sum() for x in per_seq) / total
    loss.backward()
    kl = float(torch.cat(kls).mean()) if kls else 0.0
    errs = []

    def near(a, b, tol, what):
        if not abs(a - b) <= max(tol * abs(b), 1e-6):
            errs.append(f"{what} {a:.9g} vs {b:.9g}")

    near(res.loss, float(loss.detach()), 1e-4, "loss")
    near(res.kl, kl, 1e-4, "kl")
    near(res.reward_mean, float(r.mean()), 1e-6, "reward mean")
    near(res.reward_std, float(r.std()), 1e-6, "reward std")
    if res.completion_length != total / S:
        errs.append(f"completion length {res.completion_length} vs {total / S}")
    from safetensors.torch import load_file
    a0 = load_file(os.path.join(adir, "adapter_model.safetensors"))
    a1 = load_file(os.path.join(odir, "adapter_model.safetensors"))
    worst = 0.0
    for k, p in lora_params(pm).items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        worst = max(worst, rel_max(a0[k].float() - a1[k].float(), g))
    if worst > 2e-4:
        errs.append(f"grad rel {worst:.2e}")
    desc = (f"G={G} prompts={n_prompts} T={temp} new={max_new} scale={['group', 'batch', 'none'][scale]} "
            f"loss={['dapo', 'grpo', 'bnpo', 'dr_grpo'][loss_type]} kl_beta={kl_beta}: loss {res.loss:.6g} "
            f"grad rel {worst:.1e}")
    return errs, desc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-base", type=int, default=5100)
    a = ap.parse_args()
    lib_path = os.path.abspath(a.lib)
    ok = bad = 0
    for seed in range(a.seed_base, a.seed_base + a.seeds):
        work = tempfile.mkdtemp(prefix="crosscheck-grpo-")
        try:
            errs, desc = run_case(lib_path, seed, work)
        except Exception as e:  # a failing call is a failed case
            errs, desc = [str(e)], "exception"
        print(f"case {seed} {'ok  ' if not errs else 'FAIL'} {desc}" + ("" if not errs else "  <- " + "; ".join(errs)),
              flush=True)
        ok += not errs
        bad += bool(errs)
        if not errs:
            shutil.rmtree(work, ignore_errors=True)
    print(f"crosscheck-grpo: {ok} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
