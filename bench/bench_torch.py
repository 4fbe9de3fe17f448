#!/usr/bin/env python3
"""The PyTorch peer of `loratune bench`: the same LoRA training step with transformers + peft on the
CPU; with --method full, the same step as full fine-tuning (every parameter trainable, embeddings and
lm_head included, no peft, torch.optim.AdamW over all of them: the peer of `loratune bench --method full`).

--config bench-s (default): Llama (vocab 32000, hidden 512, intermediate 1376, 8 layers, 8 heads, 8 kv
heads, rope_theta 5e5), batch 4 x 256 tokens, no gradient checkpointing.
--config bench-1b: the shapes of Llama-3.2-1B (vocab 128256, hidden 2048, intermediate 8192, 16 layers,
32 / 8 heads, tied embeddings, llama3 RoPE), batch 1 x 1024, gradient checkpointing on (--seq, --batch,
--checkpointing override).
fp32 weights (or --precision autocast-bf16 / bf16-weights); LoRA r=16 alpha=32 on q,k,v,o,gate,up,down;
AdamW; N threads.
--method full: the same model and batch, no LoRA, AdamW (lr 1e-4, torch defaults otherwise) on all
58.07M parameters in fp32 (fp32 master weights and states; 16 bytes per parameter with the gradients).
Prints one JSON object as the last line: {"tokens_per_s": X, "peak_rss_mb": Y, ...}.
"""
import argparse, json, resource, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", choices=["lora", "full"], default="lora",
                    help="lora (default): peft LoRA r=16 on the 7 projections; full: every parameter trainable")
    ap.add_argument("--config", choices=["bench-s", "bench-1b", "moe-s"], default="bench-s",
                    help="moe-s: Qwen3-MoE (hidden 512, 8 layers, 32 experts of 256, top-4), LoRA r=16 on q,k,v,o "
                         "(target_modules) and the experts' gate_up_proj, down_proj (target_parameters)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=None, help="tokens per row (bench-s 256, bench-1b 1024)")
    ap.add_argument("--batch", type=int, default=None, help="rows (bench-s 4, bench-1b 1)")
    ap.add_argument("--checkpointing", choices=["on", "off"], default=None,
                    help="gradient checkpointing (bench-s off, bench-1b on)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa (default) or eager")
    ap.add_argument("--precision", choices=["fp32", "autocast-bf16", "bf16-weights"], default="fp32",
                    help="fp32 (default); autocast-bf16: fp32 model, matmuls under torch.autocast('cpu', "
                         "bfloat16); bf16-weights: the whole base model in bf16 (peft keeps LoRA in fp32)")
    ap.add_argument("--experts", default=None,
                    help="moe-s: transformers' experts_implementation (eager, batched_mm, grouped_mm; default: "
                         "transformers' choice, grouped_mm where torch can run it); printed as experts_impl")
    a = ap.parse_args()
    big = a.config == "bench-1b"
    B = a.batch or (1 if big else 4)
    T = a.seq or (1024 if big else 256)
    a.checkpointing = a.checkpointing or ("on" if big else "off")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if big:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                          max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=8, rope_theta=500000.0,
                          max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)
    dtype = torch.bfloat16 if a.precision == "bf16-weights" else torch.float32
    experts_impl = None
    if a.config == "moe-s":  # the model of `loratune bench --config moe-s` (src/cli/bench.c)
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        cfg = Qwen3MoeConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, moe_intermediate_size=256,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, head_dim=64,
                             num_experts=32, num_experts_per_tok=4, norm_topk_prob=True, rope_theta=1e6,
                             rms_norm_eps=1e-6, max_position_embeddings=2048, tie_word_embeddings=False)
        kw = {"experts_implementation": a.experts} if a.experts else {}
        model = Qwen3MoeForCausalLM._from_config(cfg, attn_implementation=a.attn, torch_dtype=dtype, **kw)
        experts_impl = model.config._experts_implementation
    else:
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=a.attn, torch_dtype=dtype)
    if a.checkpointing == "on":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if a.method == "lora":
            model.enable_input_require_grads()
    if a.method == "lora" and a.config == "moe-s":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 target_parameters=["mlp.experts.gate_up_proj",
                                                                    "mlp.experts.down_proj"]))
    elif a.method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(12345)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    loss = None
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "autocast-bf16"):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peer = f"torch {torch.__version__} + peft" if a.method == "lora" else f"torch {torch.__version__} full FT"
    print(json.dumps({"peer": peer, "config": a.config, "method": a.method, "trainable_params": trainable,
                      "threads": a.threads, "batch": B, "seq": T,
                      "checkpointing": a.checkpointing, "attn": a.attn, "precision": a.precision,
                      "lora_dtype": str(next(p for p in model.parameters() if p.requires_grad).dtype),
                      "experts_impl": experts_impl,
                      "steps": a.steps, "loss": loss,
                      "tokens_per_s": a.steps * B * T / dt, "tokens_per_cpu_s": a.steps * B * T / dc,
                      "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
