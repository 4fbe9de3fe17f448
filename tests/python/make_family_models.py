#!/usr/bin/env python3
"""Tiny random checkpoints of the non-Llama families plus goldens from transformers' own classes.

usage: make_family_models.py OUTDIR [--only NAME[,NAME...]]

For each model NAME below this writes OUTDIR/NAME/ (next to make_models.py's Llama models):
  config.json, model.safetensors   <Family>ForCausalLM(config) with random weights, save_pretrained
  golden.safetensors               the layout of make_models.py: input_ids/labels I32 [B,T], logits F32
                                   [B,T,V], loss F32 [], n_tokens I32 [], packed_input_ids /
                                   packed_position_ids / packed_labels I32 [1,T2], packed_logits F32
                                   [1,T2,V] (each packed sequence run separately), packed_loss F32 [],
                                   packed_n_tokens I32 []
  lora/adapter/                    a PEFT LoRA adapter saved by peft (random nonzero lora_A and lora_B)
  dora/adapter, dora/grads.safetensors   the same with a DoRA adapter (use_dora, perturbed magnitudes)
  lora/grads.safetensors           with the adapter: input_ids, labels, logits, loss, n_tokens and
                                   grad.<PEFT key> (d mean loss / d LoRA weight); packed_* the same for
                                   the packed row (loss = token CE summed over the sequences / tokens)
  lora/generate.safetensors, dora/generate.safetensors   transformers' greedy generate through the
                                   adapter (PeftModel.generate(do_sample=False), EOS disabled), each
                                   prompt alone (3 and 14 tokens; phi3-longrope: 3, 7 and 14):
                                   prompt_ids I32 [sum of lens], prompt_lens I32 [n],
                                   new_ids I32 [n, GEN_NEW], margin F32 [n] (the smallest gap between the
                                   best and second-best logit over the steps: how far from a tie)
  (phi4-mini, LOGITS_GRADS_ONLY: golden.safetensors and lora/ without generate.safetensors; no dora/)

Every golden comes from transformers itself (AutoModelForCausalLM.from_pretrained of the directory just
written, float32, attn_implementation="eager") and peft (get_peft_model). The configurations make the
family's differences matter: sequences longer than the sliding window, q/k/v biases, an explicit
head_dim that differs from hidden/heads, GQA, tied embeddings, norm weights far from their identity.
"""
import argparse
import os
import shutil
import sys
import time
import warnings

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import torch  # noqa: E402

torch.set_num_threads(2)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from make_models import make_batch, make_packed  # noqa: E402

B, T = 2, 17
PACKED_LENS = (7, 11, 5)
# greedy generation goldens: prompts of these lengths, GEN_NEW new tokens each. Every sliding window
# (4..6) is crossed while decoding (3 + 9 tokens) and within the prompt (14). For phi3-longrope
# (original_max_position_embeddings 12) the 3-token prompt stays below 12 positions, the 7-token one
# crosses 12 while decoding (transformers rebuilds its cache with the long factors) and the 14-token
# one is past it from the start.
GEN_LENS = (3, 14)
GEN_LENS_LONGROPE = (3, 7, 14)
GEN_NEW = 9
GEN_MARGIN = 1e-3  # logits of these random models are O(1): a gap of 1e-3 is far above float rounding
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COMMON = dict(rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)

# name -> (transformers config class, config kwargs, seed, LoRA settings)
MODELS = {
    # Qwen2: q/k/v biases; sliding window on layers >= max_window_layers only with use_sliding_window
    "qwen2-swa": ("Qwen2Config", dict(vocab_size=257, hidden_size=64, intermediate_size=144, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                      sliding_window=5, max_window_layers=1), 4001,
                  dict(r=4, alpha=8, targets=ALL_TARGETS)),
    "qwen2-tied": ("Qwen2Config", dict(vocab_size=251, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                       sliding_window=4, use_sliding_window=False), 4002,
                   dict(r=2, alpha=4, targets=["q_proj", "v_proj", "down_proj"])),
    # Mistral: every layer windowed
    "mistral-swa": ("MistralConfig", dict(vocab_size=260, hidden_size=64, intermediate_size=160,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          sliding_window=6), 4003,
                    dict(r=4, alpha=16, targets=ALL_TARGETS)),
    # Qwen3: per-head q/k RMSNorm, explicit head_dim != hidden / heads
    "qwen3": ("Qwen3Config", dict(vocab_size=255, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=24), 4004,
              dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Gemma: sqrt(hidden) embedding scale, (1 + w) RMSNorm, gelu-tanh MLP, tied embeddings, MQA
    "gemma": ("GemmaConfig", dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                  hidden_act="gelu_pytorch_tanh"), 4005,
              dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Gemma 2: + sandwich norms, attention and final logit soft-capping (small caps so that they bite),
    # query_pre_attn_scalar != head_dim, alternating sliding-window layers
    "gemma2": ("Gemma2Config", dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                    query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0), 4006,
               dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Phi-3: fused qkv_proj / gate_up_proj (LoRA on the fused modules), partial rotary, sliding window
    "phi3": ("Phi3Config", dict(vocab_size=258, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
                                sliding_window=6, pad_token_id=0), 4007,
             dict(r=4, alpha=8, targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])),
    # Gemma 3: Gemma 2's sandwich norms + per-head (1 + w) q/k norms; local layers (every layer but each
    # 3rd here, sliding_window_pattern) rotate with rope_local_base_freq, global ones with rope_theta and a
    # linear rope scaling; query_pre_attn_scalar != head_dim; no soft-capping; GQA
    "gemma3": ("Gemma3TextConfig", dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                        query_pre_attn_scalar=24, sliding_window=5, sliding_window_pattern=3,
                                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                            "rope_theta": 50000.0},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 100.0}}),
               4010, dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Gemma 3 with a window longer than every sequence (the layer types still pick the RoPE; transformers
    # cannot generate with sliding_window None), MQA, odd head count, Gemma 3's head_dim 256
    "gemma3-nowin": ("Gemma3TextConfig", dict(vocab_size=250, hidden_size=48, intermediate_size=96,
                                              num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=1,
                                              head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                                              layer_types=["full_attention", "sliding_attention",
                                                           "full_attention"],
                                              rope_parameters={"full_attention": {"rope_type": "default",
                                                                                  "rope_theta": 1000000.0},
                                                               "sliding_attention": {"rope_type": "default",
                                                                                     "rope_theta": 10.0}}),
                     4011, dict(r=2, alpha=8, targets=["q_proj", "k_proj", "o_proj", "down_proj"])),
    # SmolLM3: NoPE layers (no_rope_layers: every 2nd layer here), tied, GQA, attention and MLP biases
    "smollm3": ("SmolLM3Config", dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, no_rope_layer_interval=2,
                                      attention_bias=True, mlp_bias=True, rope_theta=5000.0, pad_token_id=0), 4012,
                dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # SmolLM3 with a sliding window on its NoPE layers (use_sliding_window), untied, odd heads
    "smollm3-swa": ("SmolLM3Config", dict(vocab_size=253, hidden_size=60, intermediate_size=96, num_hidden_layers=3,
                                          num_attention_heads=5, num_key_value_heads=5, no_rope_layers=[1, 0, 1],
                                          use_sliding_window=True, sliding_window=4, tie_word_embeddings=False,
                                          pad_token_id=0), 4013,
                    dict(r=2, alpha=4, targets=["q_proj", "v_proj", "gate_proj"])),
    # OLMo 2: no pre-norms, post-attention / post-feedforward norms, q/k RMSNorm over the whole projection
    # (NH*HD, NKV*HD), GQA, attention biases
    "olmo2": ("Olmo2Config", dict(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                                  pad_token_id=0), 4014,
              dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Granite: embedding / residual / attention multipliers and logits scaling, all far from 1; GQA, MLP bias
    "granite": ("GraniteConfig", dict(vocab_size=255, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, embedding_multiplier=6.0,
                                      residual_multiplier=0.4, attention_multiplier=0.09, logits_scaling=2.5,
                                      mlp_bias=True), 4015,
                dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Phi-4-mini's shape of Phi-3: partial_rotary_factor 0.75, tied embeddings, GQA (3 query heads per kv)
    "phi4-mini": ("Phi3Config", dict(vocab_size=254, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=2, partial_rotary_factor=0.75,
                                     tie_word_embeddings=True, pad_token_id=0), 4016,
                  dict(r=4, alpha=8, targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])),
    # Llama
    "llama-dora": ("LlamaConfig", dict(vocab_size=257, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2), 4009,
                   dict(r=4, alpha=8, targets=ALL_TARGETS)),
    # Phi-3 longrope: original_max_position_embeddings 12 < T = 17, so the plain batch uses the long
    # factors and the packed one (every position < 12) the short ones; attention factor from factor
    "phi3-longrope": ("Phi3Config", dict(vocab_size=250, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.75,
                                         max_position_embeddings=256, original_max_position_embeddings=12,
                                         pad_token_id=0,
                                         rope_scaling={"rope_type": "longrope",
                                                       "short_factor": [1.0 + 0.1 * i for i in range(6)],
                                                       "long_factor": [1.5 + 0.7 * i for i in range(6)]}),
                      4008, dict(r=4, alpha=8, targets=["qkv_proj", "gate_up_proj"])),
}


# logits and LoRA gradients only (no DoRA adapter, no generate goldens): phi4-mini's partial rotary 0.75
# is generated by phi3-longrope's goldens too, and its fused modules by phi3's
LOGITS_GRADS_ONLY = {"phi4-mini"}


def randomize_peft_(pm, seed):
    """A PEFT model's trainable tensors away from their init, in name order: nonzero lora_A and lora_B, a
    perturbed DoRA magnitude, modules_to_save copies moved off the base's values."""
    gl = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n_, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
            if "lora_A" in n_:
                p.copy_(0.1 * torch.randn(p.shape, generator=gl))
            elif "lora_B" in n_:
                p.copy_(0.05 * torch.randn(p.shape, generator=gl))
            elif "lora_magnitude_vector" in n_:
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=gl))
            elif "modules_to_save" in n_:
                p.add_(0.3 * torch.randn(p.shape, generator=gl))


def randomize_(model, seed, family):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                # Gemma stores w of (1 + w): keep it near 0; the others near 1
                std, base = 0.1, (0.0 if family.startswith("Gemma") else 1.0)
            elif name.endswith(".bias"):
                std, base = 0.3, 0.0
            elif "embed_tokens" in name:
                std, base = 0.15 if family.startswith("Gemma") else 0.1, 0.0
            elif "lm_head" in name:
                std, base = 0.2, 0.0
            elif "q_proj" in name or "k_proj" in name:
                std, base = 0.1, 0.0
            else:
                std, base = 0.08, 0.0
            if family.startswith("Gemma") and "embed_tokens" in name:
                std = 0.03  # times sqrt(64) = 8 at the input
            p.copy_(base + std * torch.randn(p.shape, generator=g, dtype=torch.float32))


def segments(lens):
    out, s = [], 0
    for n in lens:
        out.append(slice(s, s + n))
        s += n
    return out


def token_ce(logits, labels):
    lg = logits[0].to(torch.float64)
    tgt = labels[0, 1:]
    keep = tgt != -100
    return -torch.log_softmax(lg[:-1], -1)[keep, tgt[keep]]


def lora_goldens(m, d, sub, seed, lora, gold, ids, labels, pids, ppos, plab, use_dora):
    """A PEFT adapter (LoRA or DoRA) with nonzero A, B (and a perturbed magnitude) saved by peft into
    d/sub/adapter, and d/sub/grads.safetensors: its logits, losses and gradients."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    lc = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"], lora_dropout=0.0,
                    bias="none", task_type="CAUSAL_LM", use_dora=use_dora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(m, lc)
    randomize_peft_(pm, seed + 11)
    pm.eval()
    adir = os.path.join(d, sub, "adapter")
    pm.save_pretrained(adir, safe_serialization=True)
    names = {id(p): n_ for n_, p in pm.named_parameters() if p.requires_grad}
    sd_keys = set(get_peft_model_state_dict(pm).keys())

    def peft_key(param_name):
        # "...q_proj.lora_A.default.weight" -> "...q_proj.lora_A.weight";
        # "...q_proj.lora_magnitude_vector.default.weight" -> "...q_proj.lora_magnitude_vector"
        k = param_name.replace(".default", "")
        if k not in sd_keys and k.endswith(".weight") and k[: -len(".weight")] in sd_keys:
            k = k[: -len(".weight")]
        assert k in sd_keys, k
        return k

    def grads():
        return {peft_key(names[id(p)]): p.grad.detach().float().clone()
                for p in pm.parameters() if p.requires_grad}

    lg_out = {}
    pm.zero_grad()
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    lg_out.update(input_ids=ids, labels=labels, logits=out.logits.detach().float(),
                  loss=out.loss.detach().float().reshape(()), n_tokens=gold["n_tokens"])
    lg_out.update({"grad." + k: v for k, v in grads().items()})
    pm.zero_grad()
    total, ntok = 0.0, 0
    for sl in segments(PACKED_LENS):
        o = pm(input_ids=pids[:, sl])
        ce = token_ce(o.logits.float(), plab[:, sl])
        ntok += ce.numel()
        total = total + ce.sum()
    (total / ntok).float().backward()
    lg_out.update(packed_input_ids=pids, packed_position_ids=ppos, packed_labels=plab,
                  packed_loss=(total / ntok).detach().float().reshape(()),
                  packed_n_tokens=torch.tensor(ntok))
    lg_out.update({"packed_grad." + k: v for k, v in grads().items()})
    save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in lg_out.items()},
              os.path.join(d, sub, "grads.safetensors"), metadata={"format": "pt"})
    return lg_out, pm


def generate_goldens(pm, subdir, seed, V, lens):
    """transformers' greedy generate through the PEFT model, each prompt (of the lengths lens) alone, EOS
    disabled, into subdir/generate.safetensors; returns the smallest best - second-best logit gap met."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed + 13)
    pm.generation_config.eos_token_id = None
    pm.generation_config.pad_token_id = 0
    pm.base_model.config.eos_token_id = None
    prompts, news, margins = [], [], []
    for n in lens:
        for _ in range(20):  # a prompt whose greedy path never comes within GEN_MARGIN of a tie
            prompt = torch.randint(3, V, (1, n), generator=g)
            with torch.no_grad():
                out = pm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=GEN_NEW, eos_token_id=None, pad_token_id=0, output_logits=True,
                                  return_dict_in_generate=True)
            top2 = torch.stack([lg[0].float().topk(2).values for lg in out.logits])
            margin = float((top2[:, 0] - top2[:, 1]).min())
            if margin >= GEN_MARGIN:
                break
        assert margin >= GEN_MARGIN, f"no prompt of {n} tokens without a near-tie ({margin:.2e})"
        new = out.sequences[0, n:]
        assert new.numel() == GEN_NEW, (n, new)
        prompts.append(prompt[0])
        news.append(new)
        margins.append(margin)
    save_file({"prompt_ids": torch.cat(prompts).to(torch.int32),
               "prompt_lens": torch.tensor(lens, dtype=torch.int32),
               "new_ids": torch.stack(news).to(torch.int32), "margin": torch.tensor(margins, dtype=torch.float32)},
              os.path.join(subdir, "generate.safetensors"), metadata={"format": "pt"})
    return min(margins)


def generate(name, outdir):
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    cls_name, kw, seed, lora = MODELS[name]
    d = os.path.join(outdir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cfg = getattr(transformers, cls_name)(**{**COMMON, **kw})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    randomize_(model, seed, cls_name)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(d, safe_serialization=True)
    del model

    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(seed + 7)
    ids, labels = make_batch(g, V, T)
    pids, ppos, plab = make_packed(g, V, PACKED_LENS)
    gold = {}
    with torch.no_grad():
        out = m(input_ids=ids, labels=labels)
        gold.update(input_ids=ids, labels=labels, logits=out.logits.float(), loss=out.loss.float().reshape(()),
                    n_tokens=torch.tensor(int((labels[:, 1:] != -100).sum())))
        pl, ce = [], []
        for sl in segments(PACKED_LENS):
            lg = m(input_ids=pids[:, sl]).logits.float()
            pl.append(lg)
            ce.append(token_ce(lg, plab[:, sl]))
        ce = torch.cat(ce)
        gold.update(packed_input_ids=pids, packed_position_ids=ppos, packed_labels=plab,
                    packed_logits=torch.cat(pl, dim=1), packed_loss=(ce.sum() / ce.numel()).float().reshape(()),
                    packed_n_tokens=torch.tensor(int(ce.numel())))
    save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in gold.items()},
              os.path.join(d, "golden.safetensors"), metadata={"format": "pt"})

    lg_out, pm = lora_goldens(m, d, "lora", seed, lora, gold, ids, labels, pids, ppos, plab, use_dora=False)
    margin = float("nan")
    if name not in LOGITS_GRADS_ONLY:
        gen_lens = GEN_LENS_LONGROPE if "rope_scaling" in kw else GEN_LENS
        margin = generate_goldens(pm, os.path.join(d, "lora"), seed, V, gen_lens)
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        m.eval()
        _, pm = lora_goldens(m, d, "dora", seed + 100, lora, gold, ids, labels, pids, ppos, plab, use_dora=True)
        margin = min(margin, generate_goldens(pm, os.path.join(d, "dora"), seed, V, gen_lens))
    print(f"{name}: {cls_name} loss={float(gold['loss']):.5f} packed_loss={float(gold['packed_loss']):.5f} "
          f"lora_loss={float(lg_out['loss']):.5f} generate margin={margin:.2e} ({time.time() - t0:.1f}s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(MODELS)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.makedirs(a.outdir, exist_ok=True)
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n}; known: {', '.join(MODELS)}")
        generate(n, a.outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
