#!/usr/bin/env python3
"""Per-op gradient goldens from torch.autograd for the libloratune C kernels (tests/test_backend_ops.c).

usage: make_op_goldens.py OUTDIR

For each op this writes OUTDIR/<op>.safetensors: the inputs, a random upstream gradient, the forward outputs
and the gradients of the inputs (and parameters) computed by torch.autograd. Inputs are drawn with fixed
seeds and rounded to float32 (that is what is stored and what the C side reads); everything is then
computed in float64 from those float32 values and the results are stored as float32. Integer inputs are
I32. The conventions are those of src/backend/backend.h:

  rmsnorm        inp [7,96], weight [96], eps 1e-5 (scalar F32), dout [7,96];
                 out [7,96], rstd [7], dinp [7,96], dweight [96]
  rope           x [9,3,16] (N tokens, heads, head_dim), pos I32 [9] (arbitrary, up to 131071), dout [9,3,16],
                 theta (scalar F32, 10000); per case R in {16, 8} (rot_dim; 8 = partial rotary):
                 rR.inv_freq [R/2] (float32, as transformers computes it), rR.out, rR.dx [9,3,16].
                 The angle is float32(pos) * inv_freq rounded to float32 (as HF does), its cos/sin in
                 float64; HF rotate_half pairs j with j+R/2. The large positions make that float32
                 rounding matter: an angle computed in double misses the golden by ~3e-4 relative.
  attention      q [2,11,4,16] (B,T,NH,HD), k, v [2,11,2,16] (B,T,NKV,HD), kv_start I32 [22] (B*T; row 1
                 holds a packed boundary at t = 6), dout [2,11,4,16]; out [2,11,4,16], lse [2,4,11]
                 (B,NH,T), dq, dk, dv. scale 1/sqrt(16); query head h uses kv head h/(NH/NKV); token t
                 attends to keys kv_start[t]..t of its row.
  swiglu         gate, up, dout [300]; out = silu(gate)*up, dgate, dup
  cross_entropy  logits [6,50], targets I32 [6] (row 3 is -100); losses [6] (-log softmax[target], 0 for
                 the ignored row), dlogits [6,50] = d(sum of losses)/d logits (grad_scale 1)
  lora_linear    x [5,12], W [10,12] (frozen), A [3,12], B [10,3], scaling s = 2 (scalar F32), dy [5,10];
                 y = x W^T + s (x A^T) B^T [5,10], dx [5,12], dA [3,12], dB [10,3]

The attention is also checked against torch's scaled_dot_product_attention with the same boolean mask
(an independent oracle for the explicit implementation); the script exits 1 if they disagree.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(2)
F64 = torch.float64


def rnd(gen, *shape, scale=1.0, shift=0.0):
    """float32-rounded random normals, returned in float64 (exactly representable in f32)."""
    t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale + shift
    return t.to(torch.float32).to(F64)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def leaf(t):
    return t.clone().requires_grad_(True)


def write(outdir, name, tensors, seed):
    path = os.path.join(outdir, name + ".safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              # one key: the safetensors writer orders metadata by hash, several keys would make the
              # files differ byte-wise between runs
              metadata={"generator": "tests/python/make_op_goldens.py seed=%d torch=%s" % (seed, torch.__version__)})
    return path


# ---- rmsnorm ---------------------------------------------------------------------------------------
def gen_rmsnorm(outdir):
    seed = 1001
    g = torch.Generator().manual_seed(seed)
    N, C, eps = 7, 96, 1e-5
    inp = rnd(g, N, C, scale=1.5, shift=0.2)
    weight = rnd(g, C, scale=0.1, shift=1.0)
    dout = rnd(g, N, C)
    x, w = leaf(inp), leaf(weight)
    # eps as the float32 the C side receives
    e = float(torch.tensor(eps, dtype=torch.float32))
    rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + e)
    out = x * rstd * w
    out.backward(dout)
    write(outdir, "rmsnorm", {
        "inp": f32(inp), "weight": f32(weight), "eps": torch.tensor(eps, dtype=torch.float32),
        "dout": f32(dout), "out": f32(out), "rstd": f32(rstd.squeeze(-1)),
        "dinp": f32(x.grad), "dweight": f32(w.grad)}, seed)


# ---- rope ------------------------------------------------------------------------------------------
def hf_inv_freq(rot_dim, theta):
    # transformers' _compute_default_rope_parameters, in float32
    return 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).to(torch.float32) / rot_dim))


def rope_apply(x, pos, inv_freq32, rot_dim):
    ang = (pos.to(torch.float32)[:, None] * inv_freq32[None, :]).to(F64)  # (N, rot/2): float32 angle
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1)[:, None, :]  # (N, 1, rot)
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1)[:, None, :]
    xr, xp = x[..., :rot_dim], x[..., rot_dim:]
    h = rot_dim // 2
    rot_half = torch.cat([-xr[..., h:], xr[..., :h]], dim=-1)
    return torch.cat([xr * cos + rot_half * sin, xp], dim=-1)


def gen_rope(outdir):
    seed = 1002
    g = torch.Generator().manual_seed(seed)
    N, NHd, HD, theta = 9, 3, 16, 10000.0
    x0 = rnd(g, N, NHd, HD)
    dout = rnd(g, N, NHd, HD)
    pos = torch.tensor([0, 5, 3, 1000, 4095, 1, 131071, 2, 65537], dtype=torch.int32)
    t = {"x": f32(x0), "pos": pos, "dout": f32(dout), "theta": torch.tensor(theta, dtype=torch.float32)}
    for rot in (16, 8):
        inv = hf_inv_freq(rot, theta)
        x = leaf(x0)
        out = rope_apply(x, pos, inv, rot)
        out.backward(dout)
        t["r%d.inv_freq" % rot] = inv.to(torch.float32)
        t["r%d.out" % rot] = f32(out)
        t["r%d.dx" % rot] = f32(x.grad)
    write(outdir, "rope", t, seed)


# ---- attention -------------------------------------------------------------------------------------
def attention_mask(kv_start, B, T):
    ks = kv_start.view(B, T).to(torch.int64)
    tq = torch.arange(T)[:, None]
    tk = torch.arange(T)[None, :]
    lo = torch.minimum(ks.clamp(min=0), tq.view(1, T))  # (B,T): clamp like lt_att_kv_lo
    return (tk[None] <= tq[None]) & (tk[None] >= lo[:, :, None])  # (B, Tq, Tk)


def attention_explicit(q, k, v, allowed, NH, NKV, scale):
    rep = NH // NKV
    kk = k.repeat_interleave(rep, dim=2)  # (B,T,NH,HD): head h -> kv head h // rep
    vv = v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) * scale
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B,NH,T)
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("bhqk,bkhd->bqhd", p, vv)
    return out, lse


def gen_attention(outdir):
    seed = 1003
    g = torch.Generator().manual_seed(seed)
    B, T, NH, NKV, HD = 2, 11, 4, 2, 16
    scale = 1.0 / math.sqrt(HD)
    q0 = rnd(g, B, T, NH, HD)
    k0 = rnd(g, B, T, NKV, HD)
    v0 = rnd(g, B, T, NKV, HD)
    dout = rnd(g, B, T, NH, HD)
    # row 0: one sequence; row 1: two packed sequences (6 + 5 tokens)
    kv_start = torch.tensor([0] * T + [0] * 6 + [6] * 5, dtype=torch.int32)
    allowed = attention_mask(kv_start, B, T)
    q, k, v = leaf(q0), leaf(k0), leaf(v0)
    out, lse = attention_explicit(q, k, v, allowed, NH, NKV, scale)
    out.backward(dout)

    # independent oracle: torch's SDPA with the same boolean mask (and its own GQA expansion)
    q2, k2, v2 = leaf(q0), leaf(k0), leaf(v0)
    rep = NH // NKV
    o2 = torch.nn.functional.scaled_dot_product_attention(
        q2.transpose(1, 2), k2.repeat_interleave(rep, 2).transpose(1, 2),
        v2.repeat_interleave(rep, 2).transpose(1, 2), attn_mask=allowed[:, None], scale=scale).transpose(1, 2)
    o2.backward(dout)
    for name, a, b in (("out", out, o2), ("dq", q.grad, q2.grad), ("dk", k.grad, k2.grad), ("dv", v.grad, v2.grad)):
        err = ((a - b).abs().max() / b.abs().max()).item()
        if not err < 1e-12:
            sys.exit("make_op_goldens: attention %s disagrees with torch SDPA (rel err %.3g)" % (name, err))

    write(outdir, "attention", {
        "q": f32(q0), "k": f32(k0), "v": f32(v0), "kv_start": kv_start, "dout": f32(dout),
        "scale": torch.tensor(scale, dtype=torch.float32),
        "out": f32(out), "lse": f32(lse), "dq": f32(q.grad), "dk": f32(k.grad), "dv": f32(v.grad)}, seed)


# ---- swiglu ----------------------------------------------------------------------------------------
def gen_swiglu(outdir):
    seed = 1004
    g = torch.Generator().manual_seed(seed)
    n = 300
    gate0 = rnd(g, n, scale=3.0)
    up0 = rnd(g, n, scale=1.5)
    dout = rnd(g, n)
    gate, up = leaf(gate0), leaf(up0)
    out = torch.nn.functional.silu(gate) * up
    out.backward(dout)
    write(outdir, "swiglu", {"gate": f32(gate0), "up": f32(up0), "dout": f32(dout), "out": f32(out),
                             "dgate": f32(gate.grad), "dup": f32(up.grad)}, seed)


# ---- cross-entropy ---------------------------------------------------------------------------------
def gen_cross_entropy(outdir):
    seed = 1005
    g = torch.Generator().manual_seed(seed)
    n, V = 6, 50
    logits0 = rnd(g, n, V, scale=3.0)
    targets = torch.randint(0, V, (n,), generator=g, dtype=torch.int64)
    targets[3] = -100
    logits = leaf(logits0)
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none", ignore_index=-100)
    losses.sum().backward()
    write(outdir, "cross_entropy", {"logits": f32(logits0), "targets": targets.to(torch.int32),
                                    "losses": f32(losses), "dlogits": f32(logits.grad)}, seed)


# ---- LoRA linear -----------------------------------------------------------------------------------
def gen_lora_linear(outdir):
    seed = 1006
    g = torch.Generator().manual_seed(seed)
    N, IN, OUT, R, s = 5, 12, 10, 3, 2.0
    x0 = rnd(g, N, IN)
    W = rnd(g, OUT, IN, scale=0.3)
    A0 = rnd(g, R, IN, scale=0.3)
    B0 = rnd(g, OUT, R, scale=0.3)  # nonzero: the adapter path contributes to y and dx
    dy = rnd(g, N, OUT)
    x, A, Bm = leaf(x0), leaf(A0), leaf(B0)
    y = x @ W.T + s * ((x @ A.T) @ Bm.T)
    y.backward(dy)
    write(outdir, "lora_linear", {
        "x": f32(x0), "W": f32(W), "A": f32(A0), "B": f32(B0), "scaling": torch.tensor(s, dtype=torch.float32),
        "dy": f32(dy), "y": f32(y), "dx": f32(x.grad), "dA": f32(A.grad), "dB": f32(Bm.grad)}, seed)


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: make_op_goldens.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    for fn in (gen_rmsnorm, gen_rope, gen_attention, gen_swiglu, gen_cross_entropy, gen_lora_linear):
        fn(outdir)
    print("make_op_goldens: wrote 6 files to %s" % outdir)


if __name__ == "__main__":
    main()
