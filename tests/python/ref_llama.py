#!/usr/bin/env python3
"""Independent plain-PyTorch reference implementation of the Hugging Face Llama forward pass.

This is the second oracle for libloratune (the first is transformers itself). It deliberately does
NOT import transformers: it reads config.json and the safetensors weights with the `safetensors`
package and implements the model from the published description (see docs/spec/formats.md):

  - single-file or sharded checkpoints (model.safetensors.index.json),
  - tied embeddings (lm_head.weight absent -> model.embed_tokens.weight),
  - grouped-query attention (num_key_value_heads < num_attention_heads),
  - an explicit head_dim (num_heads * head_dim may differ from hidden_size),
  - RoPE "default", "linear" and "llama3" (legacy `rope_scaling` + `rope_theta` or the newer
    `rope_parameters` dict), partial_rotary_factor,
  - F32 / BF16 / F16 weights, upcast to the compute dtype (float32 by default, float64 on request),
  - packed rows: a position id of 0 at t > 0 starts a new sequence; attention is block-diagonal
    causal and no token is predicted across the boundary.

API
  load(model_dir, dtype=torch.float32) -> RefLlama
  logits(model, input_ids, position_ids=None) -> float32 tensor [B, T, V]
  loss(model, rows) -> (loss_sum, n_tokens)
      rows: iterable of dicts {"input_ids": [...], "labels": [...] (optional, default input_ids),
      "position_ids": [...] (optional)}; each row is evaluated on its own; labels are aligned with
      the inputs and shifted inside (t predicts labels[t+1]); -100 is ignored. loss_sum is the sum
      of token cross-entropies (float64 accumulation), n_tokens the number of predicted tokens,
      exactly like lt_model_loss in include/loratune.h. mean = loss_sum / n_tokens.
  loss_mean(model, rows) -> float

Command line (debugging aid):
  ref_llama.py MODEL_DIR DATA.jsonl [--float64]   prints {"loss": mean, "tokens": N}
"""
import json
import math
import os
import sys

import torch
from safetensors import safe_open

IGNORE_INDEX = -100

__all__ = ["RefLlama", "load", "logits", "loss", "loss_mean", "segment_ids", "rope_inv_freq"]


class RefLlama:
    """Plain container: config values and a dict of weight tensors (already in the compute dtype)."""

    def __init__(self, cfg, weights, dtype, source_dtypes):
        self.cfg = cfg
        self.w = weights
        self.dtype = dtype
        self.source_dtypes = source_dtypes  # set of dtypes found in the checkpoint
        self.vocab_size = int(cfg["vocab_size"])
        self.hidden_size = int(cfg["hidden_size"])
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        nkv = cfg.get("num_key_value_heads")
        self.n_kv_heads = int(nkv) if nkv is not None else self.n_heads
        hd = cfg.get("head_dim")
        self.head_dim = int(hd) if hd is not None else self.hidden_size // self.n_heads
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise NotImplementedError(f"hidden_act {act!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        self.rope = _rope_params(cfg)
        self.inv_freq = rope_inv_freq(self.rope, self.head_dim)  # float64 [rot_dim/2]

    def __repr__(self):
        return (f"RefLlama(V={self.vocab_size}, H={self.hidden_size}, L={self.n_layers}, nh={self.n_heads}, "
                f"nkv={self.n_kv_heads}, hd={self.head_dim}, rope={self.rope})")


# ------------------------------------------------------------------------------------------------
# loading

def _rope_params(cfg):
    """Normalise the legacy (rope_theta + rope_scaling) and new (rope_parameters) layouts."""
    rp = cfg.get("rope_parameters")
    rs = cfg.get("rope_scaling")
    out = {}
    if isinstance(rp, dict):
        out.update(rp)
    if isinstance(rs, dict):
        for k, v in rs.items():
            out.setdefault(k, v)
    if "rope_type" not in out:
        out["rope_type"] = out.get("type", "default")
    out.pop("type", None)
    if out.get("rope_theta") is None:
        out["rope_theta"] = cfg.get("rope_theta", 10000.0)
    if out.get("partial_rotary_factor") is None:
        out["partial_rotary_factor"] = cfg.get("partial_rotary_factor", 1.0)
    if out["rope_type"] == "llama3" and out.get("original_max_position_embeddings") is None:
        out["original_max_position_embeddings"] = cfg.get("max_position_embeddings", 2048)
    return out


def rope_inv_freq(rope, head_dim):
    """Inverse frequencies in float64, [rot_dim // 2]."""
    rot_dim = int(head_dim * float(rope.get("partial_rotary_factor", 1.0)))
    base = float(rope["rope_theta"])
    exps = torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim
    inv = 1.0 / (base ** exps)
    rtype = rope["rope_type"]
    if rtype == "default":
        return inv
    if rtype == "linear":
        return inv / float(rope["factor"])
    if rtype == "llama3":
        factor = float(rope["factor"])
        lff = float(rope["low_freq_factor"])
        hff = float(rope["high_freq_factor"])
        orig = float(rope["original_max_position_embeddings"])
        low_wav = orig / lff
        high_wav = orig / hff
        out = torch.empty_like(inv)
        for i, f in enumerate(inv.tolist()):
            wav = 2.0 * math.pi / f
            if wav > low_wav:
                out[i] = f / factor
            elif wav < high_wav:
                out[i] = f
            else:
                s = (orig / wav - lff) / (hff - lff)
                out[i] = (1.0 - s) * f / factor + s * f
        return out
    raise NotImplementedError(f"rope_type {rtype!r}")


def _read_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wmap = json.load(f)["weight_map"]
        files = sorted(set(wmap.values()))
    elif os.path.exists(single):
        wmap, files = None, ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors or index in {model_dir}")
    out = {}
    for fn in files:
        with safe_open(os.path.join(model_dir, fn), framework="pt") as f:
            for name in f.keys():
                if wmap is not None and wmap.get(name) != fn:
                    continue
                if name in out:
                    raise ValueError(f"tensor {name} appears twice")
                out[name] = f.get_tensor(name)
    if wmap is not None:
        missing = set(wmap) - set(out)
        if missing:
            raise ValueError(f"index names tensors not found in shards: {sorted(missing)[:5]}")
    return out


def load(model_dir, dtype=torch.float32):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if archs[0] != "LlamaForCausalLM" and cfg.get("model_type") != "llama":
        raise NotImplementedError(f"architecture {archs}")
    raw = _read_weights(model_dir)
    src = {str(t.dtype) for t in raw.values()}
    w = {k: v.to(dtype) for k, v in raw.items()}
    if "lm_head.weight" not in w or cfg.get("tie_word_embeddings", False):
        if "lm_head.weight" not in w and not cfg.get("tie_word_embeddings", False):
            raise KeyError("lm_head.weight missing and tie_word_embeddings is false")
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    m = RefLlama(cfg, w, dtype, src)
    _check_shapes(m)
    return m


def _check_shapes(m):
    H, V, hd, nh, nkv = m.hidden_size, m.vocab_size, m.head_dim, m.n_heads, m.n_kv_heads
    I = int(m.cfg["intermediate_size"])
    exp = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for i in range(m.n_layers):
        p = f"model.layers.{i}."
        exp.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (nh * hd, H), p + "self_attn.k_proj.weight": (nkv * hd, H),
            p + "self_attn.v_proj.weight": (nkv * hd, H), p + "self_attn.o_proj.weight": (H, nh * hd),
            p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
        })
    for k, s in exp.items():
        if k not in m.w:
            raise KeyError(f"missing tensor {k}")
        if tuple(m.w[k].shape) != s:
            raise ValueError(f"{k}: shape {tuple(m.w[k].shape)}, expected {s}")


# ------------------------------------------------------------------------------------------------
# forward

def _as_long_2d(x):
    t = torch.as_tensor(x).to(torch.long)
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2:
        raise ValueError("expected [B, T] ids")
    return t


def segment_ids(position_ids):
    """[B, T] segment index: a position id of 0 at t > 0 starts a new sequence."""
    restart = position_ids == 0
    restart[:, 0] = False
    return torch.cumsum(restart.to(torch.long), dim=1)


def _rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def _linear(x, m, name):
    y = x @ m.w[name + ".weight"].T
    b = m.w.get(name + ".bias")
    return y if b is None else y + b


def _rotate(x, cos, sin):
    # x [B, heads, T, hd]; cos/sin [B, 1, T, rot]; rotate_half pairs j with j + rot/2.
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    half = rot // 2
    x1, x2 = xr[..., :half], xr[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((xr * cos + rotated * sin, xp), dim=-1)


@torch.no_grad()
def logits(model, input_ids, position_ids=None):
    """Logits [B, T, V] as float32 (computed in model.dtype)."""
    m = model
    ids = _as_long_2d(input_ids)
    B, T = ids.shape
    if position_ids is None:
        pos = torch.arange(T, dtype=torch.long)[None, :].expand(B, T)
    else:
        pos = _as_long_2d(position_ids)
        if pos.shape != ids.shape:
            raise ValueError("position_ids shape differs from input_ids")
    if int(ids.min()) < 0 or int(ids.max()) >= m.vocab_size:
        raise ValueError("token id out of range")
    dt = m.dtype
    nh, nkv, hd = m.n_heads, m.n_kv_heads, m.head_dim

    # RoPE angles in float64, then cast.
    ang = pos.to(torch.float64)[..., None] * m.inv_freq[None, None, :]
    ang = torch.cat((ang, ang), dim=-1)
    cos = ang.cos().to(dt)[:, None, :, :]
    sin = ang.sin().to(dt)[:, None, :, :]

    seg = segment_ids(pos)
    tq = torch.arange(T)
    allowed = (tq[None, :] <= tq[:, None])[None, :, :] & (seg[:, :, None] == seg[:, None, :])  # [B, Tq, Tk]
    allowed = allowed[:, None, :, :]
    scale = 1.0 / math.sqrt(hd)
    group = nh // nkv

    h = m.w["model.embed_tokens.weight"][ids]
    for i in range(m.n_layers):
        p = f"model.layers.{i}."
        x = _rms_norm(h, m.w[p + "input_layernorm.weight"], m.eps)
        q = _linear(x, m, p + "self_attn.q_proj").view(B, T, nh, hd).transpose(1, 2)
        k = _linear(x, m, p + "self_attn.k_proj").view(B, T, nkv, hd).transpose(1, 2)
        v = _linear(x, m, p + "self_attn.v_proj").view(B, T, nkv, hd).transpose(1, 2)
        q = _rotate(q, cos, sin)
        k = _rotate(k, cos, sin)
        # query head j uses kv head j // group
        kv_index = torch.arange(nh) // group
        k = k[:, kv_index]
        v = v[:, kv_index]
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, T, nh * hd)
        h = h + _linear(o, m, p + "self_attn.o_proj")
        x = _rms_norm(h, m.w[p + "post_attention_layernorm.weight"], m.eps)
        g = _linear(x, m, p + "mlp.gate_proj")
        u = _linear(x, m, p + "mlp.up_proj")
        h = h + _linear(torch.nn.functional.silu(g) * u, m, p + "mlp.down_proj")
    h = _rms_norm(h, m.w["model.norm.weight"], m.eps)
    return (h @ m.w["lm_head.weight"].T).to(torch.float32)


# ------------------------------------------------------------------------------------------------
# loss

def _token_ce(model, ids, labels, pos):
    """Per-predicted-token cross-entropies (float64) of one row, after shifting and masking."""
    lg = logits(model, ids, pos)[0].to(torch.float64)  # [T, V]
    ids = _as_long_2d(ids)[0]
    lab = _as_long_2d(labels)[0] if labels is not None else ids.clone()
    if lab.shape != ids.shape:
        raise ValueError("labels length differs from input_ids")
    T = ids.shape[0]
    if T < 2:
        return torch.zeros(0, dtype=torch.float64)
    target = lab[1:].clone()
    if pos is not None:
        seg = segment_ids(_as_long_2d(pos))[0]
        target[seg[1:] != seg[:-1]] = IGNORE_INDEX  # never predict across a packed boundary
    keep = target != IGNORE_INDEX
    if keep.any():
        bad = target[keep]
        if int(bad.min()) < 0 or int(bad.max()) >= model.vocab_size:
            raise ValueError("label out of range")
    lp = torch.log_softmax(lg[:-1], dim=-1)
    return -lp[keep, target[keep]]


def loss(model, rows):
    """(loss_sum, n_tokens) over rows, each evaluated separately (see module docstring)."""
    total, n = 0.0, 0
    for r in rows:
        ce = _token_ce(model, r["input_ids"], r.get("labels"), r.get("position_ids"))
        total += float(ce.sum())
        n += int(ce.numel())
    return total, n


def loss_mean(model, rows):
    s, n = loss(model, rows)
    return s / n if n else float("nan")


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("data")
    ap.add_argument("--float64", action="store_true", help="compute in float64")
    a = ap.parse_args(argv)
    m = load(a.model_dir, torch.float64 if a.float64 else torch.float32)
    s, n = loss(m, read_jsonl(a.data))
    print(json.dumps({"loss": s / n if n else None, "tokens": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
