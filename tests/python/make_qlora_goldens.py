#!/usr/bin/env python3
"""QLoRA gradient goldens: LoRA gradients through bitsandbytes-NF4 base weights, from PyTorch + PEFT.

usage: make_qlora_goldens.py MODELS_DIR

MODELS_DIR must hold make_models.py's models and make_lora_goldens.py's adapters. For each model NAME
below, every q/k/v/o/gate/up/down weight is quantized with bitsandbytes itself (quantize_4bit,
NF4, blocksize 64, no double quantization: our codes equal theirs byte for byte there) and replaced by
bitsandbytes' dequantization; PEFT then loads NAME/lora/adapter on that model and torch autograd gives
the gradients. Writes MODELS_DIR/NAME/qlora/grads.safetensors:
  input_ids I32 [B,T], labels I32 [B,T], loss F32 [] (mean over predicted tokens), n_tokens I32 [],
  grad.<PEFT key> F32 (d loss / d LoRA weight).
The C test loads NAME with quantization nf4 (double_quant 0) and the same adapter and must match.
"""
import os
import sys

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
import bitsandbytes.backends.default.ops as ref_ops  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_lora_goldens as mlg  # noqa: E402

MODELS = ["llama-gqa", "llama-basic"]
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def nf4_roundtrip(w):
    packed, st = F.quantize_4bit(w.detach().float().contiguous(), blocksize=64, quant_type="nf4",
                                 compress_statistics=False)
    # bitsandbytes' reference dequantizer (blocks over the flattened tensor, as the format and its CUDA
    # kernel); its CPU C++ kernel blocks per row, which differs when a row is not whole blocks
    return ref_ops._dequantize_4bit_compute(packed.reshape(-1), st.absmax, st.code, 64, list(w.shape), torch.float32)


def main():
    root = sys.argv[1]
    torch.set_num_threads(2)
    for name in MODELS:
        d = os.path.join(root, name)
        pm = mlg.load_peft(d, os.path.join(d, "lora", "adapter"), trainable=True)
        n_q = 0
        with torch.no_grad():
            for mod_name, mod in pm.named_modules():
                if mod_name.split(".")[-1] in PROJ and hasattr(mod, "base_layer"):
                    mod.base_layer.weight.copy_(nf4_roundtrip(mod.base_layer.weight))
                    n_q += 1
        assert n_q > 0
        V = pm.get_base_model().config.vocab_size
        g = torch.Generator().manual_seed(4242)
        ids, labels = mlg.make_batch(g, V, mlg.B, mlg.T)
        out = pm(input_ids=ids, labels=labels)
        out.loss.backward()
        res = {"input_ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "loss": out.loss.detach().float().reshape(()),
               "n_tokens": torch.tensor(int((labels[:, 1:] != mlg.IGNORE).sum()), dtype=torch.int32)}
        for k, p in mlg.lora_params(pm).items():
            res["grad." + k] = p.grad.detach().clone().contiguous()
        os.makedirs(os.path.join(d, "qlora"), exist_ok=True)
        save_file(res, os.path.join(d, "qlora", "grads.safetensors"))
        print(f"{name}: {n_q} NF4 projections, loss {float(out.loss.detach()):.6f}")


if __name__ == "__main__":
    main()
