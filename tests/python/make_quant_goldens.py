#!/usr/bin/env python3
"""Quantization goldens from bitsandbytes itself (CPU path), for tests/test_quant.c.

usage: make_quant_goldens.py OUT_DIR

Writes OUT_DIR/<case>.safetensors per case, holding the input `x` (F32, its shape) and what bitsandbytes
produces for it:
  4-bit (functional.quantize_4bit(x, blocksize, quant_type, compress_statistics=dq)):
    data (U8 packed), absmax (F32, or U8 with double quantization), nested_absmax (F32),
    nested_quant_map (F32 256), quant_map (F32 16), offset (F32 [1]),
    deq (F32: functional.dequantize_4bit), deq_bf16 (U16 bits: dequantize_4bit(..., bf16 quant state)).
  int8 (functional.int8_vectorwise_quant on x viewed as rows of `blocksize`):
    data (I8), absmax (F32 per row), deq (F32: int8_vectorwise_dequant).
metadata: format, blocksize, double_quant.
Cases: random normals of several scales and shapes, odd sizes and partial blocks, all zeros, constant
blocks, huge and tiny magnitudes, values on code midpoints, a single element.
"""
import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # bitsandbytes compiles its dequantizer per shape: slow here

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import numpy as np
import torch
import bitsandbytes.functional as F
import bitsandbytes.backends.default.ops as ref_ops
from safetensors.numpy import save_file


def quant4(x, fmt, bs, dq):
    # bitsandbytes takes the shape from x; quantize a contiguous copy
    t = torch.from_numpy(x.copy())
    packed, st = F.quantize_4bit(t, blocksize=bs, quant_type=fmt, compress_statistics=dq)
    # Dequantized values from bitsandbytes' reference (torch) kernel, which blocks the flattened tensor
    # like the CUDA kernel and the format. Its CPU C++ kernel indexes absmax per row instead, which
    # differs when a row is not a whole number of blocks (a bitsandbytes bug): it is checked against
    # the reference where rows are whole blocks.
    absmax = st.absmax
    if dq:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    deq = ref_ops._dequantize_4bit_compute(packed.reshape(-1), absmax, st.code, bs, list(x.shape), torch.float32)
    if x.shape[-1] % bs == 0 and x.ndim == 2:
        cpu = F.dequantize_4bit(packed, st).float()
        assert torch.equal(cpu, deq), f"bitsandbytes CPU dequantize differs: {x.shape} {bs} {fmt} {dq} {cpu.flatten()[:4]} {deq.flatten()[:4]} {absmax[:4]}"
    out = {
        "x": x,
        "data": packed.reshape(-1).numpy().astype(np.uint8),
        "quant_map": st.code.float().numpy(),
        "deq": deq.numpy().reshape(x.shape),
    }
    if dq:
        out["absmax"] = st.absmax.numpy().astype(np.uint8)
        out["nested_absmax"] = st.state2.absmax.float().numpy()
        out["nested_quant_map"] = st.state2.code.float().numpy()
        out["offset"] = np.array([float(st.offset)], dtype=np.float32)
    else:
        out["absmax"] = st.absmax.float().numpy()
    # bf16 output: the same codes, dequantized with the output dtype bf16
    deq16 = ref_ops._dequantize_4bit_compute(packed.reshape(-1), absmax, st.code, bs, list(x.shape), torch.bfloat16)
    out["deq_bf16"] = deq16.view(torch.int16).numpy().view(np.uint16).reshape(x.shape)
    return out


def quant8(x, bs):
    t = torch.from_numpy(x.copy()).reshape(-1, bs)
    q, stats, _ = F.int8_vectorwise_quant(t.clone())
    deq = F.int8_vectorwise_dequant(q, stats)
    return {"x": x, "data": q.reshape(-1).numpy(), "absmax": stats.float().numpy(),
            "deq": deq.float().numpy().reshape(x.shape)}


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(1234)
    cases = []

    def add(name, x, fmt, bs=64, dq=True):
        cases.append((name, np.ascontiguousarray(x, dtype=np.float32), fmt, bs, dq))

    nf4 = F.get_4bit_type("nf4", device="cpu").numpy()
    mids = ((np.sort(nf4)[:-1] + np.sort(nf4)[1:]) / 2).astype(np.float32)
    for fmt in ("nf4", "fp4"):
        add(f"{fmt}_rand_64x96", rng.standard_normal((64, 96)) * 0.02, fmt)
        add(f"{fmt}_rand_nodq", rng.standard_normal((48, 80)) * 0.05, fmt, 64, False)
        for bs in (64, 128, 256, 512, 1024, 2048, 4096):
            add(f"{fmt}_bs{bs}", rng.standard_normal((37, 301)) * 0.1, fmt, bs, bs % 128 == 0)
        add(f"{fmt}_odd_1x999", rng.standard_normal((1, 999)), fmt)            # odd count, partial block
        add(f"{fmt}_odd_3x7", rng.standard_normal((3, 7)), fmt, 64, False)     # one partial block only
        add(f"{fmt}_single", np.array([0.37]), fmt)
        add(f"{fmt}_zeros_128x64", np.zeros((128, 64)), fmt, 64, False)
        add(f"{fmt}_zeros_odd", np.zeros((5, 13)), fmt, 64, False)
        add(f"{fmt}_zeros_dq", np.zeros((64, 64)), fmt)
        const = np.repeat(rng.standard_normal((32, 1)), 128, axis=1)         # constant blocks
        add(f"{fmt}_const_blocks", const, fmt)
        add(f"{fmt}_all_same", np.full((300, 64), 0.123), fmt)
        # huge: with double quantization bitsandbytes sums the absmax values in fp32, which overflows
        # to inf past ~3e38 in total (NaN statistics); below that it is exact and so are we
        add(f"{fmt}_huge", rng.standard_normal((40, 64)) * 1e36, fmt)
        add(f"{fmt}_huge_nodq", rng.standard_normal((40, 64)) * 5e37, fmt, 64, False)
        add(f"{fmt}_tiny", rng.standard_normal((40, 64)) * 1e-39, fmt)        # subnormal absmax
        add(f"{fmt}_tiny_partial", rng.standard_normal((1, 100)) * 1e-40, fmt, 64, False)
        mixed = rng.standard_normal((64, 128)) * np.exp(rng.uniform(-30, 30, size=(64, 1)))
        add(f"{fmt}_mixed_scales", mixed, fmt)
        # values exactly on decision midpoints (times absmax 1 through a 1.0 in each block)
        m = np.resize(np.concatenate([mids, -mids, [1.0]]), (16, 64)).astype(np.float32)
        m[:, 0] = 1.0
        add(f"{fmt}_midpoints", m, fmt, 64, False)
        add(f"{fmt}_big_layer", rng.standard_normal((256, 512)) * 0.02, fmt)   # 2048 blocks: 8 nested blocks
    for bs in (64, 128, 256, 4096):
        add(f"int8_bs{bs}", rng.standard_normal((8, bs)) * 0.5, "int8", bs, False)
    add("int8_zero_row", np.concatenate([np.zeros((1, 64)), rng.standard_normal((3, 64))]), "int8", 64, False)
    add("int8_halfway", np.tile(np.array([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 63.5, -126.5]), (2, 8)), "int8", 64, False)

    for name, x, fmt, bs, dq in cases:
        d = quant8(x, bs) if fmt == "int8" else quant4(x, fmt, bs, dq)
        meta = {"format": fmt, "blocksize": str(bs), "double_quant": "1" if dq else "0"}
        save_file({k: np.ascontiguousarray(v) for k, v in d.items()}, os.path.join(out_dir, name + ".safetensors"),
                  metadata=meta)
    with open(os.path.join(out_dir, "cases.txt"), "w") as f:
        for c in cases:
            f.write(c[0] + "\n")
    print(f"wrote {len(cases)} quantization goldens to {out_dir}")


if __name__ == "__main__":
    main()
