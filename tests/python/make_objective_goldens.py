#!/usr/bin/env python3
"""Goldens for the objective arithmetic (src/train/objectives.c), computed in float64 with PyTorch autograd,
following TRL's code (trainer/grpo_trainer.py _generate_and_score_completions and _compute_loss,
trainer/dpo_trainer.py _compute_loss, trainer/kto_trainer.py _compute_loss, experimental ORPO
odds_ratio_loss) and docs/spec/algorithms.md.

usage: make_objective_goldens.py OUTDIR   -> OUTDIR/objectives.json

GRPO cases: random rewards (some groups with equal rewards: std 0), every scale_rewards, every
loss_type, lp_old != lp (so the ratio leaves the clip range and the clipped branch is exercised),
kl_beta 0 or > 0 with random reference log-probs, epsilon_high 0 (= epsilon) or larger.
Expected: advantages, reward mean/std, loss, d loss / d lp per token, kl (token mean of k3), clip
fraction (TRL's clip_ratio/region_mean). Pair cases (DPO with label smoothing, IPO, ORPO) and KTO
cases: the loss, d loss / d (summed sequence log-prob), and the metrics.
The Check suite tests/test_objectives.c compares with |diff| <= 1e-9 * max(1, |x|) (double arithmetic
on both sides; the inputs are float32 values stored exactly).
"""
import json
import os
import random
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32))


def grpo_case(rng, scale, loss_type):
    n_prompts, G = rng.randint(1, 3), rng.randint(2, 5)
    S = n_prompts * G
    rewards = []
    for q in range(n_prompts):
        if rng.random() < 0.25:
            rewards += [f32(rng.choice([0.0, 1.0]))] * G  # a group with std 0
        else:
            rewards += [f32(rng.uniform(-2, 2)) for _ in range(G)]
    lens = [rng.randint(1, 5) for _ in range(S)]
    Mx = max(lens) + rng.randint(0, 3)
    eps = f32(rng.choice([0.1, 0.2]))  # the C parameters are float: use their exact values
    eps_high = f32(rng.choice([0.0, 0.28]))
    kl_beta = f32(rng.choice([0.0, 0.04]))
    ntok = sum(lens)
    lp = [f32(rng.uniform(-4, -0.05)) for _ in range(ntok)]
    lp_old = [f32(x + rng.uniform(-0.4, 0.4)) for x in lp]
    ref = [f32(x + rng.uniform(-0.5, 0.5)) for x in lp]
    # advantages (TRL)
    r = torch.tensor(rewards)
    mean_g = r.view(-1, G).mean(1).repeat_interleave(G)
    if scale == "batch":
        std = r.std().expand_as(r)
    else:
        std = r.view(-1, G).std(1).repeat_interleave(G)
    adv = r - mean_g
    if scale != "none":
        adv = adv / (std + 1e-4)
    adv = torch.nan_to_num(adv, nan=0.0)
    # loss (TRL _compute_loss, padded to (S, Mx) with a mask)
    mask = torch.zeros(S, Mx)
    LP = torch.zeros(S, Mx)
    OLD = torch.zeros(S, Mx)
    REF = torch.zeros(S, Mx)
    o = 0
    for i, n in enumerate(lens):
        mask[i, :n] = 1
        LP[i, :n] = torch.tensor(lp[o:o + n])
        OLD[i, :n] = torch.tensor(lp_old[o:o + n])
        REF[i, :n] = torch.tensor(ref[o:o + n])
        o += n
    LP.requires_grad_(True)
    coef_1 = torch.exp(LP - OLD)
    eh = eps_high if eps_high > 0 else eps
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eh)
    A = adv.unsqueeze(1)
    per_token = -torch.min(coef_1 * A, coef_2 * A)
    kl = torch.exp(REF - LP) - (REF - LP) - 1
    if kl_beta > 0:
        per_token = per_token + kl_beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (S * Mx)
    else:  # dapo: total completion tokens of the generation batch
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    loss.backward()
    dlp = [float(LP.grad[i, t]) for i, n in enumerate(lens) for t in range(n)]
    low = (coef_1 < 1 - eps) & (A < 0)
    high = (coef_1 > 1 + eh) & (A > 0)
    clip = float(((low | high).double() * mask).sum() / mask.sum())
    return dict(n_prompts=n_prompts, G=G, rewards=rewards, lens=lens, max_completion_length=Mx, epsilon=eps,
                epsilon_high=eps_high, kl_beta=kl_beta, scale_rewards=scale, loss_type=loss_type, lp=lp,
                lp_old=lp_old, ref=ref, adv=adv.tolist(), reward_mean=float(r.mean()), reward_std=float(r.std()),
                loss=float(loss.detach()), dlp=dlp, kl=float((kl.detach() * mask).sum() / mask.sum()) if kl_beta > 0 else 0.0,
                clip_fraction=clip)


def log1mexp(x):
    return torch.where(x < -0.693147180559945309, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_case(rng, obj):
    B = rng.randint(1, 5)
    beta = f32(rng.choice([0.1, 0.5, 2.0]))
    ls = f32(rng.choice([0.0, 0.2])) if obj == "dpo" else 0.0
    n_c = [rng.randint(1, 6) for _ in range(B)]
    n_r = [rng.randint(1, 6) for _ in range(B)]
    lp_c = torch.tensor([-rng.uniform(0.05, 3) * n for n in n_c], requires_grad=True)
    lp_r = torch.tensor([-rng.uniform(0.05, 3) * n for n in n_r], requires_grad=True)
    ref_c = torch.tensor([x + rng.uniform(-1, 1) for x in lp_c.tolist()])
    ref_r = torch.tensor([x + rng.uniform(-1, 1) for x in lp_r.tolist()])
    nc, nr = torch.tensor(n_c, dtype=torch.float64), torch.tensor(n_r, dtype=torch.float64)
    if obj == "orpo":
        lc, lr = lp_c / nc, lp_r / nr
        log_odds = (lc - lr) - (log1mexp(lc) - log1mexp(lr))
        loss = -(beta * F.logsigmoid(log_odds)).mean()  # the odds-ratio term only (NLL added elsewhere)
        rc, rr = beta * lc.detach(), beta * lr.detach()
    else:
        c, r = lp_c - ref_c, lp_r - ref_r
        if obj == "ipo":
            loss = ((c / nc - r / nr - 1 / (2 * beta)) ** 2).mean()
        else:
            z = beta * (c - r)
            loss = (-(1 - ls) * F.logsigmoid(z) - ls * F.logsigmoid(-z)).mean()
        rc, rr = beta * c.detach(), beta * r.detach()
    loss.backward()
    return dict(obj=obj, B=B, beta=beta, label_smoothing=ls, n_c=n_c, n_r=n_r, lp_c=lp_c.tolist(), lp_r=lp_r.tolist(),
                ref_c=ref_c.tolist(), ref_r=ref_r.tolist(), loss=float(loss.detach()), g_c=lp_c.grad.tolist(),
                g_r=lp_r.grad.tolist(), rewards_chosen=float(rc.mean()), rewards_rejected=float(rr.mean()),
                accuracies=float((rc > rr).double().mean()), margins=float((rc - rr).mean()))


def kto_case(rng):
    B = rng.randint(2, 6)
    beta = f32(rng.choice([0.1, 1.0]))
    dw, uw = f32(rng.choice([1.0, 1.3])), f32(rng.choice([1.0, 0.6]))
    label = [1, 0] + [int(rng.random() < 0.5) for _ in range(B - 2)]
    lp = torch.tensor([-rng.uniform(0.5, 8) for _ in range(B)], requires_grad=True)
    ref = torch.tensor([x + rng.uniform(-1, 1) for x in lp.tolist()])
    lp_kl = torch.tensor([-rng.uniform(0.5, 8) for _ in range(B)])
    ref_kl = torch.tensor([x + rng.uniform(-1, 1.5) for x in lp_kl.tolist()])
    kl = (lp_kl - ref_kl).mean().clamp(min=0)
    lab = torch.tensor(label, dtype=torch.bool)
    lr = lp - ref
    chosen = 1 - torch.sigmoid(beta * (lr[lab] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - lr[~lab]))
    loss = torch.cat((dw * chosen, uw * rejected), 0).nanmean()
    loss.backward()
    rc = float((beta * lr[lab]).mean().detach())
    rr = float((beta * lr[~lab]).mean().detach())
    return dict(B=B, beta=beta, desirable_weight=dw, undesirable_weight=uw, label=label, lp=lp.tolist(),
                ref=ref.tolist(), lp_kl=lp_kl.tolist(), ref_kl=ref_kl.tolist(), loss=float(loss.detach()), g=lp.grad.tolist(),
                kl=float(kl), rewards_chosen=rc, rewards_rejected=rr, margins=rc - rr)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "build/testdata/objectives"
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261123)
    grpo = [grpo_case(rng, s, l) for s in ("group", "batch", "none") for l in ("dapo", "grpo", "bnpo", "dr_grpo")
            for _ in range(2)]
    pairs = [pair_case(rng, o) for o in ("dpo", "ipo", "orpo") for _ in range(4)]
    kto = [kto_case(rng) for _ in range(4)]
    tmp = os.path.join(out, "objectives.json.tmp")
    with open(tmp, "w") as f:
        json.dump(dict(grpo=grpo, pairs=pairs, kto=kto), f)
    os.replace(tmp, os.path.join(out, "objectives.json"))
    print(f"{len(grpo)} GRPO, {len(pairs)} pair and {len(kto)} KTO cases -> {out}/objectives.json")


if __name__ == "__main__":
    main()
