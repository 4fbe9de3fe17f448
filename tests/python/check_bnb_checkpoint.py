#!/usr/bin/env python3
"""Our bitsandbytes-layout checkpoint (`loratune quantize`) read by transformers + bitsandbytes (CPU).

usage: check_bnb_checkpoint.py --cli build/loratune --workdir DIR

The model is a small random Llama written here (rows of whole 64-blocks: bitsandbytes' CPU Linear4bit
needs in_features % blocksize == 0).

1. `loratune quantize --model MODEL_DIR --out DIR/q --format nf4 --double-quant` (and fp4 without).
2. Every quantized weight's packed codes and absmax equal bitsandbytes' quantize_4bit on the original
   weight, and so do the nested statistics of double quantization (offset, nested absmax, map), except
   that bitsandbytes' CPU search (BinSearch "Direct2") sometimes misses the nearest 8-bit code in the
   dense region of the map: at most 0.5% of those codes may differ, and ours must be the nearest.
3. transformers loads DIR/q with its bitsandbytes integration (Linear4bit, CPU) and its logits equal
   those of the original model whose projections were replaced by bitsandbytes' dequantization of our
   bytes (3e-2 relative: bitsandbytes' CPU 4-bit matmul is not fp32), and are 10x nearer to them than to
   the unquantized model's.
"""
import argparse
import json
import os
import subprocess
import sys

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
import bitsandbytes.backends.default.ops as ref_ops  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def check(cli, model, out, fmt, dq):
    args = [cli, "quantize", "--model", model, "--out", out, "--format", fmt] + (["--double-quant"] if dq else [])
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    ours = load_file(os.path.join(out, "model.safetensors"))
    orig = load_file(os.path.join(model, "model.safetensors"))
    n_w, n_codes, n_diff = 0, 0, 0
    deq = {}
    for k, w in orig.items():
        if not any(f".{p}." in k for p in PROJ):
            continue
        packed, st = F.quantize_4bit(w.float().contiguous(), blocksize=64, quant_type=fmt, compress_statistics=dq)
        assert torch.equal(ours[k].reshape(-1), packed.reshape(-1)), f"{k}: packed codes differ"
        if dq:
            a, b = ours[k + ".absmax"], st.absmax
            diff = (a != b).nonzero().flatten()
            if len(diff):  # ours must then be the nearest map entry to the value that was coded
                _, raw = F.quantize_4bit(w.float().contiguous(), blocksize=64, quant_type=fmt)
                scale = 1.0 / st.state2.absmax[diff // 256]
                v = (raw.absmax[diff] - st.offset) * scale
                code = st.state2.code
                assert bool(((v - code[a[diff].long()]).abs() <= (v - code[b[diff].long()]).abs()).all()), \
                    f"{k}: a nested code of ours is not the nearest"
            n_diff += len(diff)
            n_codes += a.numel()
            assert torch.equal(ours[k + ".nested_absmax"], st.state2.absmax), f"{k}: nested absmax differs"
            assert torch.equal(ours[k + ".nested_quant_map"], st.state2.code), f"{k}: nested map differs"
            qs = json.loads(bytes(ours[k + f".quant_state.bitsandbytes__{fmt}"].tolist()))
            off = torch.tensor(qs["nested_offset"], dtype=torch.float32)
            assert float(off) == float(st.offset), f"{k}: offset {float(off)!r} vs {float(st.offset)!r}"
            absmax = F.dequantize_blockwise(ours[k + ".absmax"], absmax=ours[k + ".nested_absmax"],
                                            code=ours[k + ".nested_quant_map"], blocksize=256) + off
        else:
            assert torch.equal(ours[k + ".absmax"], st.absmax), f"{k}: absmax differs"
            absmax = ours[k + ".absmax"]
        deq[k] = ref_ops._dequantize_4bit_compute(ours[k].reshape(-1), absmax, st.code, 64, list(w.shape),
                                                  torch.float32)
        n_w += 1
    assert n_w > 0 and n_diff * 200 <= max(n_codes, 1), f"{n_diff} of {n_codes} nested codes differ"

    from transformers import AutoModelForCausalLM
    mq = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    mf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="eager")
    kinds = {type(m).__name__ for m in mq.modules()}
    assert "Linear4bit" in kinds, f"transformers did not load 4-bit layers: {sorted(kinds)}"
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, mf.config.vocab_size, (2, 11), generator=g)
    with torch.no_grad():
        lq = mq(input_ids=ids).logits.float()
        lf0 = mf(input_ids=ids).logits.float()
        sd = mf.state_dict()
        for k, v in deq.items():
            sd[k].copy_(v)
        lf = mf(input_ids=ids).logits.float()
    e, e0 = rel(lq, lf), rel(lq, lf0)
    # bitsandbytes' CPU Linear4bit does not multiply in fp32 (measured: 4e-3 relative per layer against
    # x @ dequantize_4bit(W)^T), so the logits agree to bf16-like precision only
    assert e <= 3e-2, f"{fmt}: transformers logits of our checkpoint vs dequantized reference: {e:.3g}"
    assert e0 > 10 * e, f"{fmt}: the logits are not nearer the quantized reference ({e:.3g}) than the unquantized ({e0:.3g})"
    print(f"{fmt}{'+dq' if dq else ''}: {n_w} weights, bytes = bitsandbytes ({n_diff}/{n_codes} nested codes: bitsandbytes search misses); "
          f"transformers logits vs reference {e:.2e} (vs unquantized {e0:.2e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    torch.set_num_threads(2)
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    base = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model = os.path.join(a.workdir, "base")
    base.save_pretrained(model, safe_serialization=True)
    check(a.cli, model, os.path.join(a.workdir, "nf4"), "nf4", True)
    check(a.cli, model, os.path.join(a.workdir, "fp4"), "fp4", False)
    print("bitsandbytes checkpoint check passed")


if __name__ == "__main__":
    sys.exit(main())
