#!/usr/bin/env python3
"""Tiny random mixture-of-experts checkpoints (Qwen3-MoE, Mixtral, gpt-oss) plus goldens from transformers' and peft's own classes.

usage: make_moe_models.py OUTDIR [--only NAME[,NAME...]]

For each model NAME below this writes OUTDIR/NAME/ (the layout of make_family_models.py):
  config.json, model.safetensors   <Family>ForCausalLM(config), random weights, save_pretrained (experts
                                   stored per expert: mlp.experts.{e}.{gate,up,down}_proj.weight)
  golden.safetensors               input_ids / labels I32 [B,T], logits F32 [B,T,V], loss F32 [] (config
                                   output_router_logits true: mean CE + router_aux_loss_coef * aux_loss),
                                   aux_loss F32 [] (transformers' load_balancing_loss_func), n_tokens I32 [],
                                   counts I32 [L_moe, E] (tokens routed to each expert: an expert with none
                                   is part of each shape), inv_freq F32 [rot_dim/2] and attention_scaling
                                   F32 [] of the model's rotary embedding (gpt-oss: YaRN's)
  lora/adapter/                    a PEFT adapter saved by peft: target_modules (attention, and the dense
                                   MLP of mlp_only_layers) and target_parameters mlp.experts.gate_up_proj /
                                   mlp.experts.down_proj, random nonzero lora_A and lora_B
  lora/grads.safetensors           with the adapter: input_ids, labels, logits, loss, aux_loss, n_tokens and
                                   grad.<PEFT key> (d loss / d LoRA weight)
  lora/generate.safetensors        PeftModel.generate(do_sample=False) of each prompt alone (EOS disabled)
  router/adapter/, router/grads.safetensors (the models of ROUTER only): the same LoRA plus
                                   modules_to_save=["gate"] (gpt-oss: ["router"], a GptOssTopKRouter: weight
                                   and bias) (PEFT's trainable copy of every MoE layer's router, moved away
                                   from the base), its gradients too: grad.<PEFT's saved key>;
                                   router/grads_noaux.safetensors the same with output_router_logits false
                                   (the loss without the load-balancing term)

gpt-oss (GptOssForCausalLM, stored as transformers 5 saves it: fused mlp.experts.gate_up_proj (E, H, 2I) with
gate / up in alternate columns, down_proj (E, I, H), their biases, mlp.router.weight / .bias, self_attn.sinks):
attention sinks drawn N(0, 1) (large enough to matter), sliding and full layers alternating with a window
shorter than the sequence, YaRN on (truncate off and on), a swiglu_limit small enough that the clamps act on
part of the values, top-1 / 2 / 4 with an odd expert count; its LoRA targets attention and the experts
(PEFT's target_parameters on the (in, out) tensors: lora_B's gate_up rows alternate gate / up).

optim8/lora/, optim8/full/ (the models of OPTIM8): bitsandbytes' blockwise 8-bit AdamW (tests/test_moe.c) on a
LoRA of the experts (lora/: PEFT target_parameters, rank 32 so that every expert tensor is 8-bit) and on a full
fine-tuning (full/, gpt-oss only: its fused experts are in another order than ours). p0/ (lora only: a PEFT
adapter; full: the model itself), g1/ ... gT/ the gradient of each step and want/ the parameters after the T
steps, each saved as its p0 is (a PEFT adapter, a model directory: the torch parameters' own shapes and
orders), and steps.json (lr, betas, eps, weight decay, T). The update is make_optim8_goldens.py's float32
reference of bitsandbytes' kernel over each torch parameter's flattened storage (blocks of 256 of torch's
order); weight decay as Hugging Face's Trainer groups it (none for a name with "bias" or "norm").

gptoss-mxfp4/ is a gpt-oss checkpoint whose experts are stored as the openai/gpt-oss releases store them
(mlp.experts.{gate_up,down}_proj_blocks U8 (E, out, in/32, 16) and _scales U8 (E, out, in/32), transformers'
integrations/mxfp4.py layout; quantization_config quant_method mxfp4), made from a random model by quantizing its
experts here; golden.safetensors holds the logits of transformers loading it with Mxfp4Config(dequantize=True).

The shapes: an odd number of experts, top-1, top-2 and top-4, norm_topk_prob on and off, a dense layer
(mlp_only_layers / decoder_sparse_step), a router biased so that tokens route unevenly and some expert
gets no token of the batch, the load-balancing loss in the training loss with a large coefficient.
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

from make_models import make_batch  # noqa: E402
from make_family_models import GEN_LENS, generate_goldens, randomize_, randomize_peft_  # noqa: E402

B, T = 2, 17
COMMON = dict(rms_norm_eps=1e-5, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]

# name -> (config class, kwargs, seed, LoRA: r, alpha, target_modules, target_parameters, router skew)
MODELS = {
    # 5 experts, top-2, no renormalisation, layer 1 dense (mlp_only_layers), aux loss in the loss
    "qwen3moe-e5k2": ("Qwen3MoeConfig", dict(vocab_size=211, hidden_size=48, intermediate_size=80,
                                             moe_intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
                                             num_key_value_heads=2, head_dim=16, num_experts=5,
                                             num_experts_per_tok=2, norm_topk_prob=False, mlp_only_layers=[1],
                                             output_router_logits=True, router_aux_loss_coef=0.3), 5001,
                      dict(r=4, alpha=8, targets=ATTN, params=EXPERTS, skew=0.0)),
    # 7 experts, top-1 with renormalisation (weights 1), a router skewed so that experts go unused
    "qwen3moe-e7k1": ("Qwen3MoeConfig", dict(vocab_size=199, hidden_size=32, intermediate_size=64,
                                             moe_intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=4, num_experts=7, num_experts_per_tok=1,
                                             norm_topk_prob=True), 5002,
                      dict(r=2, alpha=4, targets=["q_proj", "v_proj"], params=EXPERTS[:1], skew=2.0)),
    # 9 experts, top-4, renormalised, every second layer sparse (decoder_sparse_step 2), only down targeted
    "qwen3moe-e9k4": ("Qwen3MoeConfig", dict(vocab_size=203, hidden_size=40, intermediate_size=56,
                                             moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, head_dim=24, num_experts=9,
                                             num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=2,
                                             output_router_logits=True, router_aux_loss_coef=0.05), 5003,
                      dict(r=4, alpha=16, targets=ATTN, params=EXPERTS[1:], skew=1.0)),
    # Mixtral (checkpoint: block_sparse_moe.experts.{e}.w1/w3/w2): 3 experts, top-2 renormalised, every layer
    # windowed (sliding_window 6 < T), aux loss in the loss
    "mixtral-e3k2": ("MixtralConfig", dict(vocab_size=197, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=3,
                                           num_experts_per_tok=2, sliding_window=6, output_router_logits=True,
                                           router_aux_loss_coef=0.2), 5004,
                     dict(r=4, alpha=8, targets=ATTN, params=EXPERTS, skew=0.0)),
    # Mixtral: 6 experts, top-1 (weight 1), skewed router, no window
    # gpt-oss: 5 experts top-2, GQA, layers sliding / full / sliding (window 6 < T), YaRN (factor 4, not truncated),
    # clamps active (swiglu_limit 0.4), aux loss in the loss
    "gptoss-e5k2": ("GptOssConfig", dict(vocab_size=211, hidden_size=48, intermediate_size=24, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=5,
                                         num_experts_per_tok=2, sliding_window=6, swiglu_limit=0.4,
                                         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                              beta_fast=8.0, beta_slow=1.0, truncate=False,
                                                              original_max_position_embeddings=64),
                                         output_router_logits=True, router_aux_loss_coef=0.3), 5006,
                    dict(r=4, alpha=8, targets=ATTN, params=EXPERTS, skew=0.0)),
    # gpt-oss: 3 experts top-1, no GQA, layer_types full then sliding (window 5), YaRN truncated, default clamp 7
    # with alpha 1.2, skewed router
    "gptoss-e3k1": ("GptOssConfig", dict(vocab_size=199, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_local_experts=3,
                                         num_experts_per_tok=1, sliding_window=5, swiglu_alpha=1.2,
                                         layer_types=["full_attention", "sliding_attention"],
                                         rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=8.0,
                                                              beta_fast=16.0, beta_slow=1.0, truncate=True,
                                                              original_max_position_embeddings=32)), 5007,
                    dict(r=2, alpha=4, targets=["q_proj", "v_proj"], params=EXPERTS[:1], skew=2.0)),
    # gpt-oss: 7 experts top-4, GQA 4:1, window 4, YaRN, clamps active
    "gptoss-e7k4": ("GptOssConfig", dict(vocab_size=203, hidden_size=40, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=12, num_local_experts=7,
                                         num_experts_per_tok=4, sliding_window=4, swiglu_limit=0.6,
                                         rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                                                              beta_fast=32.0, beta_slow=2.0, truncate=False,
                                                              original_max_position_embeddings=128),
                                         output_router_logits=True, router_aux_loss_coef=0.05), 5008,
                    dict(r=4, alpha=16, targets=ATTN, params=EXPERTS[1:], skew=1.0)),
    "mixtral-e6k1": ("MixtralConfig", dict(vocab_size=193, hidden_size=48, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, num_local_experts=6,
                                           num_experts_per_tok=1), 5005,
                     dict(r=2, alpha=4, targets=["q_proj", "o_proj"], params=EXPERTS[1:], skew=2.0)),
}


# the models whose router is trained too (modules_to_save "gate", gpt-oss "router"), each with and without the aux
# loss in the loss (top-1 renormalised models are left out: their routing weights are 1, the router's gradient 0)
ROUTER = ("qwen3moe-e5k2", "mixtral-e3k2", "gptoss-e5k2")


def route_counts(m, ids):
    """Tokens routed to each expert in each MoE layer (router hooks)."""
    counts = []

    def hook(mod, inp, out):
        _, _, idx = out
        counts.append(torch.bincount(idx.reshape(-1), minlength=mod.num_experts))

    hs = [mod.register_forward_hook(hook) for n, mod in m.named_modules() if type(mod).__name__.endswith("TopKRouter")]
    with torch.no_grad():
        m(input_ids=ids)
    for h in hs:
        h.remove()
    return torch.stack(counts)


def generate(name, outdir):
    import transformers
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
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
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():  # a router far from uniform; with skew, the last experts are rarely chosen
        for n_, p in model.named_parameters():
            if n_.endswith("mlp.gate.weight") or n_.endswith("mlp.router.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
                p.add_(-lora["skew"] * torch.linspace(0, 1, p.shape[0])[:, None] * torch.sign(p))
            if n_.endswith("self_attn.sinks"):  # gpt-oss: sinks that take a real share of each softmax
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(d, safe_serialization=True)
    del model

    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(seed + 7)
    ids, labels = make_batch(g, V, T)
    gold = {}
    with torch.no_grad():
        aux = m(input_ids=ids, output_router_logits=True).aux_loss  # whatever the config says
        out = m(input_ids=ids, labels=labels)  # the loss as the config makes it (aux with output_router_logits)
        gold.update(input_ids=ids, labels=labels, logits=out.logits.float(), loss=out.loss.float().reshape(()),
                    aux_loss=aux.float().reshape(()),
                    n_tokens=torch.tensor(int((labels[:, 1:] != -100).sum())), counts=route_counts(m, ids))
        if hasattr(m.model, "rotary_emb"):  # the RoPE table and the factor on cos / sin (YaRN's attention factor)
            gold.update(inv_freq=m.model.rotary_emb.inv_freq.float().clone(),
                        attention_scaling=torch.tensor(float(m.model.rotary_emb.attention_scaling)))
    save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in gold.items()},
              os.path.join(d, "golden.safetensors"), metadata={"format": "pt"})

    lc = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"],
                    target_parameters=lora["params"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(m, lc)
    randomize_peft_(pm, seed + 11)
    pm.eval()
    pm.save_pretrained(os.path.join(d, "lora", "adapter"), safe_serialization=True)
    names = {id(p): n_ for n_, p in pm.named_parameters() if p.requires_grad}
    sd_keys = set(get_peft_model_state_dict(pm).keys())

    def peft_key(param_name):
        k = param_name.replace(".default", "")
        assert k in sd_keys, k
        return k

    pm.zero_grad()
    with torch.no_grad():
        aux = pm(input_ids=ids, output_router_logits=True).aux_loss
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    lg_out = dict(input_ids=ids, labels=labels, logits=out.logits.detach().float(),
                  loss=out.loss.detach().float().reshape(()), aux_loss=aux.detach().float().reshape(()),
                  n_tokens=gold["n_tokens"])
    lg_out.update({"grad." + peft_key(names[id(p)]): p.grad.detach().float().clone()
                   for p in pm.parameters() if p.requires_grad})
    save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in lg_out.items()},
              os.path.join(d, "lora", "grads.safetensors"), metadata={"format": "pt"})
    margin = generate_goldens(pm, os.path.join(d, "lora"), seed, V, GEN_LENS)
    if name in ROUTER:
        router_goldens(d, lc, seed, ids, labels, gold["n_tokens"])
    if name in OPTIM8:
        optim8_goldens(d, seed)
    print(f"{name}: loss={float(gold['loss']):.5f} aux={float(gold['aux_loss']):.5f} "
          f"lora_loss={float(lg_out['loss']):.5f} (layer, expert) pairs without a token="
          f"{int((gold['counts'] == 0).sum())}/{gold['counts'].numel()} "
          f"generate margin={margin:.2e} ({time.time() - t0:.1f}s)", flush=True)


OPTIM8 = {"qwen3moe-e5k2": ("lora",), "gptoss-e5k2": ("lora", "full")}
OPTIM8_STEPS = dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, steps=3)


def optim8_goldens(d, seed):
    """bitsandbytes' 8-bit AdamW over the torch parameters of a LoRA of the experts / a full fine-tuning"""
    import json

    import numpy as np
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    import bitsandbytes.functional as F
    from make_optim8_goldens import MIN_8BIT, run_bnb_cpu, run_reference

    f32 = np.float32
    q1 = F.create_dynamic_map(signed=True).numpy().astype(f32)
    q2 = F.create_dynamic_map(signed=False).numpy().astype(f32)
    h = OPTIM8_STEPS
    g = torch.Generator().manual_seed(seed + 23)
    for kind in OPTIM8[os.path.basename(d)]:
        out = os.path.join(d, "optim8", kind)
        os.makedirs(out)
        if kind == "lora":  # the PEFT adapter; its state dict's keys and shapes are the saved ones
            m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
            lc = LoraConfig(r=32, lora_alpha=16, target_modules=["q_proj"], target_parameters=EXPERTS,
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pm = get_peft_model(m, lc)
            randomize_peft_(pm, seed + 29)
            pm.save_pretrained(os.path.join(out, "p0"), safe_serialization=True)
            src = os.path.join(out, "p0")
            fname = "adapter_model.safetensors"
        else:  # the model directory itself
            src, fname = d, "model.safetensors"
        p0 = load_file(os.path.join(src, fname))
        grads = [{k: (10.0 ** (-3 + 2 * torch.rand((), generator=g))) * torch.randn(v.shape, generator=g)
                  for k, v in p0.items()} for _ in range(h["steps"])]
        # bitsandbytes' own AdamW8bit (its CPU path) on each 8-bit parameter in its torch shape, one step without
        # weight decay (where its algorithm and the kernel's coincide: make_optim8_goldens.py): the reference
        # over the flattened storage must agree, as for the dense cases: parameters within 1e-5 of the update
        # plus one float32 rounding of the parameter (these are up to 10x the dense cases' 0.05, where one ulp
        # alone exceeds 1e-5 of an update of lr), and 99% of m's codes (the codes are what the blocks decide)
        for k, v in p0.items():
            if v.numel() < MIN_8BIT:
                continue
            p, g1 = v.numpy().astype(f32), grads[0][k].numpy().astype(f32)
            r1 = run_reference(p.reshape(-1), [g1.reshape(-1)], q1, q2, f32(h["lr"]), f32(h["beta1"]),
                               f32(h["beta2"]), f32(h["eps"]), f32(0))
            bp, bs1, _ = run_bnb_cpu(p, [g1], f32(h["lr"]), f32(h["beta1"]), f32(h["beta2"]), f32(h["eps"]))
            upd = np.max(np.abs(r1["p"] - p.reshape(-1)))
            dp = np.max(np.maximum(np.abs(bp.reshape(-1) - r1["p"]) - np.spacing(np.abs(r1["p"])), 0)) / upd
            same1 = np.mean(bs1.reshape(-1) == r1["state1"])
            if not (dp < 1e-5 and same1 >= 0.99):
                raise SystemExit(f"{d} {kind} {k}: the reference is not bitsandbytes' AdamW8bit over the torch "
                                 f"parameter: params {dp:.2e} of the update, codes of m {same1:.4f} identical")
        want = {}
        for k, v in p0.items():  # each torch parameter alone, in its flattened (row-major) order
            wd = 0.0 if ("bias" in k or "norm" in k) else h["weight_decay"]
            r = run_reference(v.numpy().astype(f32).reshape(-1), [gr[k].numpy().astype(f32).reshape(-1) for gr in grads],
                              q1, q2, f32(h["lr"]), f32(h["beta1"]), f32(h["beta2"]), f32(h["eps"]), f32(wd))
            want[k] = torch.from_numpy(r["p"].reshape(tuple(v.shape)))
        for sub, tensors in [(f"g{t + 1}", gr) for t, gr in enumerate(grads)] + [("want", want)]:
            os.makedirs(os.path.join(out, sub))
            for f in os.listdir(src):  # the configs beside the weights
                if f.endswith(".json"):
                    shutil.copy(os.path.join(src, f), os.path.join(out, sub, f))
            save_file({k: v.float().contiguous() for k, v in tensors.items()}, os.path.join(out, sub, fname),
                      metadata={"format": "pt"})
        with open(os.path.join(out, "steps.json"), "w") as f:
            json.dump(h, f)


def router_goldens(d, lc, seed, ids, labels, n_tokens):
    """PEFT's LoRA of lc plus modules_to_save=["gate"] (gpt-oss: ["router"], weight and bias): the routers are
    trainable copies (moved off the base so that a loader reading the base's router fails), saved by peft; the
    gradients of every trainable tensor (LoRA and routers) under PEFT's saved keys."""
    import copy
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    lc = copy.deepcopy(lc)
    router = "router" if m.config.model_type == "gpt_oss" else "gate"
    lc.modules_to_save = [router]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(m, lc)
    randomize_peft_(pm, seed + 17)  # the routers' copies moved off the base's
    pm.eval()
    out_dir = os.path.join(d, "router")
    pm.save_pretrained(os.path.join(out_dir, "adapter"), safe_serialization=True)
    # PEFT's saved key of each trainable parameter: its name without the adapter name and the wrapper's
    sd = get_peft_model_state_dict(pm)
    train = [(n_, p) for n_, p in pm.named_parameters() if p.requires_grad]
    keys = {n_: n_.replace(".default", "").replace(".modules_to_save", "") for n_, _ in train}
    assert all(k in sd for k in keys.values()), sorted(set(keys.values()) - set(sd))
    assert any(f".mlp.{router}." in k for k in keys.values())
    assert pm.config.output_router_logits
    with torch.no_grad():
        aux = pm(input_ids=ids, output_router_logits=True).aux_loss
    for file, with_aux in (("grads.safetensors", True), ("grads_noaux.safetensors", False)):
        pm.config.output_router_logits = with_aux  # the model's loss: CE + coef * aux, or CE
        pm.zero_grad()
        out = pm(input_ids=ids, labels=labels)
        out.loss.backward()
        g_out = dict(input_ids=ids, labels=labels, logits=out.logits.detach().float(),
                     loss=out.loss.detach().float().reshape(()), aux_loss=aux.detach().float().reshape(()),
                     n_tokens=n_tokens)
        g_out.update({"grad." + keys[n_]: p.grad.detach().float().clone() for n_, p in train})
        save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in g_out.items()},
                  os.path.join(out_dir, file), metadata={"format": "pt"})


FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_quantize(w):
    """(E, out, in) float -> blocks U8 (E, out, in/32, 16), scales U8 (E, out, in/32): per group of 32 inputs the
    power of two 2^s with max|x| / 2^s <= 6 (scale byte s + 127), each value the nearest e2m1 code, two codes a
    byte, the even column in the low nibble (the inverse of transformers' _convert_moe_packed_tensors)."""
    E, O, I = w.shape
    g = w.reshape(E, O, I // 32, 32)
    amax = g.abs().amax(-1).clamp_min(1e-30)
    s = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    x = g / torch.pow(2.0, s)[..., None]
    lut = torch.tensor(FP4, dtype=torch.float32)
    code = (x[..., None] - lut).abs().argmin(-1).to(torch.uint8)  # ties: the first (the +0 / positive) code
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).contiguous()
    return blocks, (s + 127).to(torch.uint8).contiguous()


def generate_mxfp4(outdir):
    """gptoss-mxfp4: a random gpt-oss model saved with MXFP4 experts; the logits transformers gives for it."""
    import json

    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    seed = 5009
    d = os.path.join(outdir, "gptoss-mxfp4")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cfg = transformers.GptOssConfig(**{**COMMON, **dict(
        vocab_size=101, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=3, num_experts_per_tok=2, sliding_window=6,
        swiglu_limit=0.5, rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, beta_fast=8.0,
                                               beta_slow=1.0, truncate=False, original_max_position_embeddings=64))})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    randomize_(model, seed, "GptOssConfig")
    model.save_pretrained(d, safe_serialization=True)  # config.json (and the float weights, replaced below)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            blocks, scales = mxfp4_quantize(v.transpose(1, 2).float())  # the parameter is (in, out)
            sd[k + "_blocks"], sd[k + "_scales"] = blocks, scales
        else:
            sd[k] = v.contiguous()
    for f in os.listdir(d):
        if f.endswith(".safetensors") or f.endswith(".index.json"):
            os.remove(os.path.join(d, f))
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json")) as f:
        cj = json.load(f)
    cj["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=2)
    del model
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                             quantization_config=transformers.Mxfp4Config(dequantize=True))
    m.eval()
    # the layout, checked independently: the loaded expert weights are our codes times our scales
    lut = torch.tensor(FP4, dtype=torch.float32)
    blocks, scales = sd["model.layers.0.mlp.experts.gate_up_proj_blocks"], sd["model.layers.0.mlp.experts.gate_up_proj_scales"]
    codes = torch.stack([blocks & 15, blocks >> 4], -1).reshape(*blocks.shape[:-2], -1).long()
    want = (lut[codes].reshape(*scales.shape, 32) * torch.pow(2.0, scales.float() - 127)[..., None]).reshape(
        blocks.shape[0], blocks.shape[1], -1).transpose(1, 2)
    got = m.model.layers[0].mlp.experts.gate_up_proj.detach().float()
    assert torch.equal(got, want), float((got - want).abs().max())
    g = torch.Generator().manual_seed(seed + 7)
    ids, labels = make_batch(g, m.config.vocab_size, T)
    with torch.no_grad():
        out = m(input_ids=ids, labels=labels)
    gold = dict(input_ids=ids, labels=labels, logits=out.logits.float(), loss=out.loss.float().reshape(()))
    save_file({k: (v.to(torch.int32) if v.dtype == torch.int64 else v).contiguous() for k, v in gold.items()},
              os.path.join(d, "golden.safetensors"), metadata={"format": "pt"})
    print(f"gptoss-mxfp4: loss={float(gold['loss']):.5f} ({time.time() - t0:.1f}s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    for name in [n for n in a.only.split(",") if n] or list(MODELS) + ["gptoss-mxfp4"]:
        if name == "gptoss-mxfp4":
            generate_mxfp4(a.outdir)
        else:
            generate(name, a.outdir)


if __name__ == "__main__":
    main()
