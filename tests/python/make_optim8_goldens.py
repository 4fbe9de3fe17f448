#!/usr/bin/env python3
"""Goldens for bitsandbytes' blockwise 8-bit AdamW (AdamW8bit), read by tests/test_optim8.c.

usage: make_optim8_goldens.py OUT_DIR

Writes OUT_DIR/<case>.safetensors per case: the initial parameter `p0` (n), the gradient sequence `g`
(steps, n), the hyper-parameters as metadata, and the state after the last step: parameter `p`, codes
`state1` (m, signed dynamic map) and `state2` (v, unsigned dynamic map), `absmax1`, `absmax2` (one per
256 elements), or fp32 `m`, `v` for a tensor below min_8bit_size (4096). Also `qmap1`, `qmap2`: the maps
bitsandbytes' AdamW8bit uses (bnb.functional.create_dynamic_map(signed=True / False)).

Why a reference of the algorithm and not bitsandbytes' own CPU update for the bytes: bitsandbytes
0.50.2 runs AdamW8bit on CPU (backends/cpu/ops.py, _optimizer_update_8bit_blockwise_cpu), but that CPU
path is a different algorithm from its CUDA kernel (kOptimizerStatic8bit2StateBlockwise), which is what
docs/spec/algorithms.md specifies and what every GPU user of AdamW8bit runs: the CPU path applies
weight decay BEFORE the step (the kernel: after), divides by sqrt(v)/c2 + eps (the kernel: step_size m /
(sqrt(v) + c2 eps)), re-quantizes without the kernel's sign fix for m and updates state for non-finite
gradients; and its native CPU quantizer (cquantize_blockwise_cpu_fp32) is not a nearest-code search
for the unsigned map (a v / absmax of 2.76e-6 gets code 7 = 1.56e-5, where code 3 = 2.12e-6 is nearest),
so its v bytes differ from the kernel's in a few percent of elements. So the bytes below come from this
script's float32 reference of the kernel's arithmetic (one IEEE op at a time, in the kernel's order;
nearest code, ties to the lower code, as docs/spec/algorithms.md states), using bitsandbytes' own code books.
The script checks that reference against bitsandbytes' CPU AdamW8bit for one step on the cases where
both algorithms coincide mathematically (no weight decay, finite gradients): parameters within 1e-5
of the update's size, and at least 99% of m's codes identical (the rest are near-ties the two
quantizers round apart); v's agreement is printed. It exits non-zero when that check fails.
"""
import os
import sys

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import numpy as np
import torch
from safetensors.numpy import save_file

import bitsandbytes as bnb
import bitsandbytes.functional as F

BLOCK = 256
MIN_8BIT = 4096
f32 = np.float32


def nearest(code, x):
    """the nearest entry of the sorted code to each x; ties to the lower index"""
    idx = np.clip(np.searchsorted(code, x, side="right") - 1, 0, 255)
    up = np.minimum(idx + 1, 255)
    better = (idx < 255) & (np.abs(x - code[up]) < np.abs(x - code[idx]))
    return np.where(better, up, idx).astype(np.int64)


def corrections(b1, b2, lr, eps, wd, t):
    c1 = f32(1.0 - float(b1) ** t)
    c2 = np.sqrt(f32(1.0 - float(b2) ** t))
    step_size = f32(f32(-lr) * c2) / c1
    return f32(step_size), f32(c2 * eps), f32(lr * wd)


def step8(p, g, s1, s2, a1, a2, q1, q2, b1, b2, step_size, eps_c2, decay):
    """one kernel step over a tensor (in place)"""
    n = p.size
    for b in range((n + BLOCK - 1) // BLOCK):
        sl = slice(b * BLOCK, min(n, (b + 1) * BLOCK))
        gb = g[sl]
        ok = np.isfinite(gb)
        gz = np.where(ok, gb, f32(0))
        m = q1[s1[sl]] * a1[b]
        m = m * b1 + (f32(1) - b1) * gz
        v = q2[s2[sl]] * a2[b]
        v = v * b2 + (f32(1) - b2) * gz * gz
        m = np.where(ok, m, f32(0)).astype(f32)
        v = np.where(ok, v, f32(0)).astype(f32)
        pb = p[sl]
        upd = pb + step_size * (m / (np.sqrt(v) + eps_c2))
        if decay > 0:
            upd = upd * (f32(1) - decay)
        p[sl] = np.where(ok, upd, pb)
        am1, am2 = f32(np.max(np.abs(m))), f32(np.max(np.abs(v)))
        a1[b], a2[b] = am1, am2
        x1 = m / am1 if am1 > 0 else np.zeros_like(m)
        x2 = v / am2 if am2 > 0 else np.zeros_like(v)
        c1 = nearest(q1, x1)
        flip = np.signbit(q1[c1]) != np.signbit(m)
        c1 = c1 + np.where(flip, np.where(m > 0, 1, -1), 0)
        s1[sl] = c1.astype(np.uint8)
        s2[sl] = nearest(q2, x2).astype(np.uint8)


def step32(p, g, m, v, b1, b2, step_size, eps_c2, decay):
    """bitsandbytes' 32-bit Adam kernel (kOptimizer32bit2State), used below min_8bit_size"""
    ok = np.isfinite(g)
    gz = np.where(ok, g, f32(0))
    mn = m * b1 + (f32(1) - b1) * gz
    vn = v * b2 + (f32(1) - b2) * (gz * gz)
    pn = p + step_size * (mn / (np.sqrt(vn) + eps_c2))
    if decay > 0:
        pn = pn * (f32(1) - decay)
    m[:] = np.where(ok, mn, m)
    v[:] = np.where(ok, vn, v)
    p[:] = np.where(ok, pn, p)


def run_reference(p0, gs, q1, q2, lr, b1, b2, eps, wd):
    p = p0.copy()
    n = p.size
    if n >= MIN_8BIT:
        nb = (n + BLOCK - 1) // BLOCK
        s1 = np.zeros(n, np.uint8)
        s2 = np.zeros(n, np.uint8)
        a1 = np.zeros(nb, f32)
        a2 = np.zeros(nb, f32)
        for t in range(1, len(gs) + 1):
            ss, ec, dec = corrections(b1, b2, lr, eps, wd, t)
            step8(p, gs[t - 1], s1, s2, a1, a2, q1, q2, b1, b2, ss, ec, dec)
        return dict(p=p, state1=s1, state2=s2, absmax1=a1, absmax2=a2)
    m = np.zeros(n, f32)
    v = np.zeros(n, f32)
    for t in range(1, len(gs) + 1):
        ss, ec, dec = corrections(b1, b2, lr, eps, wd, t)
        step32(p, gs[t - 1], m, v, b1, b2, ss, ec, dec)
    return dict(p=p, m=m, v=v)


def run_bnb_cpu(p0, gs, lr, b1, b2, eps):
    """bitsandbytes' own AdamW8bit on CPU tensors (no weight decay)"""
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = bnb.optim.AdamW8bit([p], lr=float(lr), betas=(float(b1), float(b2)), eps=float(eps), weight_decay=0.0)
    for g in gs:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    st = opt.state[p]
    return p.detach().numpy().copy(), st["state1"].numpy().copy(), st["state2"].numpy().copy()


CASES = {
    # name: (n, steps, lr, wd, seed, non-finite gradients)
    "blocks_tail": (5000, 6, 1e-3, 0.01, 1, False),   # 8-bit, 19 full blocks and a 136-element tail
    "exact_blocks": (4096, 5, 2e-3, 0.0, 2, False),   # 8-bit at exactly min_8bit_size, no decay
    "large": (70000, 4, 5e-4, 0.1, 3, False),
    "nonfinite": (4608, 4, 1e-3, 0.01, 4, True),      # NaN / inf gradients: m = v = 0, p untouched
    "zero_block": (4352, 3, 1e-3, 0.0, 5, False),     # a block whose gradients are all zero
    "small_fp32": (3000, 5, 1e-3, 0.01, 6, False),    # below min_8bit_size: 32-bit state
}


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    q1 = F.create_dynamic_map(signed=True).numpy().astype(f32)
    q2 = F.create_dynamic_map(signed=False).numpy().astype(f32)
    assert q1.size == 256 and q2.size == 256 and np.all(np.diff(q1) > 0) and np.all(np.diff(q2) > 0)
    b1, b2, eps = f32(0.9), f32(0.999), f32(1e-8)
    bad = 0
    for name, (n, steps, lr, wd, seed, nonfinite) in CASES.items():
        rng = np.random.default_rng(seed)
        p0 = rng.standard_normal(n).astype(f32) * f32(0.05)
        # gradients of changing scale per step and per block, as LoRA gradients have
        gs = []
        for t in range(steps):
            scale = (10.0 ** rng.uniform(-4, -1, size=(n + BLOCK - 1) // BLOCK)).repeat(BLOCK)[:n]
            g = (rng.standard_normal(n) * scale).astype(f32)
            if name == "zero_block":
                g[BLOCK:2 * BLOCK] = 0
            if nonfinite:
                idx = rng.choice(n, 7, replace=False)
                g[idx[:3]] = np.nan
                g[idx[3:5]] = np.inf
                g[idx[5:]] = -np.inf
            gs.append(g)
        lr32 = f32(lr)
        ref = run_reference(p0, gs, q1, q2, lr32, b1, b2, eps, f32(wd))
        if n >= MIN_8BIT and wd == 0 and not nonfinite:
            # one step: the parameters depend only on the fp32 moments (codes start at zero), so the two
            # algorithms must agree to rounding; the m codes (signed map) almost everywhere
            r1 = run_reference(p0, gs[:1], q1, q2, lr32, b1, b2, eps, f32(wd))
            bp, bs1, bs2 = run_bnb_cpu(p0, gs[:1], lr32, b1, b2, eps)
            upd = np.max(np.abs(r1["p"] - p0))
            dp = np.max(np.abs(bp - r1["p"])) / upd
            # an all-zero block (absmax 0) is left out: bitsandbytes' CPU path quantizes 0 * (1/0) = NaN there
            live = np.repeat(r1["absmax1"] > 0, BLOCK)[:n]
            same1 = np.mean((bs1 == r1["state1"])[live])
            same2 = np.mean((bs2 == r1["state2"])[live])
            ok = dp < 1e-5 and same1 >= 0.99
            print(f"{name}: vs bitsandbytes CPU AdamW8bit, one step: params {dp:.2e} of the update, codes of m "
                  f"{same1:.4f} identical, of v {same2:.4f} {'ok' if ok else 'FAIL'}")
            bad += not ok
        d = dict(p0=p0, g=np.stack(gs), qmap1=q1, qmap2=q2, **ref)
        meta = dict(lr=repr(float(lr32)), beta1=repr(float(b1)), beta2=repr(float(b2)), eps=repr(float(eps)),
                    weight_decay=repr(float(f32(wd))), steps=str(steps),
                    bitsandbytes=bnb.__version__)
        save_file({k: np.ascontiguousarray(v) for k, v in d.items()}, os.path.join(out, name + ".safetensors"),
                  metadata=meta)
        print(f"{name}: n={n} steps={steps} {'8-bit' if n >= MIN_8BIT else 'fp32'}")
    if bad:
        raise SystemExit(f"{bad} case(s): the reference disagrees with bitsandbytes' CPU AdamW8bit")


if __name__ == "__main__":
    main()
