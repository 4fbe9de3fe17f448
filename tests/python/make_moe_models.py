#!/usr/bin/env python3
"""Tiny random mixture-of-experts checkpoints (Qwen3-MoE, Mixtral) plus goldens from transformers' and peft's own classes.

usage: make_moe_models.py OUTDIR [--only NAME[,NAME...]]

For each model NAME below this writes OUTDIR/NAME/ (the layout of make_family_models.py):
  config.json, model.safetensors   <Family>ForCausalLM(config), random weights, save_pretrained (experts
                                   stored per expert: mlp.experts.{e}.{gate,up,down}_proj.weight)
  golden.safetensors               input_ids / labels I32 [B,T], logits F32 [B,T,V], loss F32 [] (config
                                   output_router_logits true: mean CE + router_aux_loss_coef * aux_loss),
                                   aux_loss F32 [] (transformers' load_balancing_loss_func), n_tokens I32 [],
                                   counts I32 [L_moe, E] (tokens routed to each expert: an expert with none
                                   is part of each shape)
  lora/adapter/                    a PEFT adapter saved by peft: target_modules (attention, and the dense
                                   MLP of mlp_only_layers) and target_parameters mlp.experts.gate_up_proj /
                                   mlp.experts.down_proj, random nonzero lora_A and lora_B
  lora/grads.safetensors           with the adapter: input_ids, labels, logits, loss, aux_loss, n_tokens and
                                   grad.<PEFT key> (d loss / d LoRA weight)
  lora/generate.safetensors        PeftModel.generate(do_sample=False) of each prompt alone (EOS disabled)
  router/adapter/, router/grads.safetensors (the models of ROUTER only): the same LoRA plus
                                   modules_to_save=["gate"] (PEFT's trainable copy of every MoE layer's router,
                                   moved away from the base), its gradients too: grad.<PEFT's saved key>;
                                   router/grads_noaux.safetensors the same with output_router_logits false
                                   (the loss without the load-balancing term)

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
    "mixtral-e6k1": ("MixtralConfig", dict(vocab_size=193, hidden_size=48, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, num_local_experts=6,
                                           num_experts_per_tok=1), 5005,
                     dict(r=2, alpha=4, targets=["q_proj", "o_proj"], params=EXPERTS[1:], skew=2.0)),
}


# the models whose router is trained too (modules_to_save "gate"), each with and without the aux loss in the
# loss (top-1 renormalised models are left out: their routing weights are 1, the router's gradient 0)
ROUTER = ("qwen3moe-e5k2", "mixtral-e3k2")


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
            if n_.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
                p.add_(-lora["skew"] * torch.linspace(0, 1, p.shape[0])[:, None] * torch.sign(p))
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
    print(f"{name}: loss={float(gold['loss']):.5f} aux={float(gold['aux_loss']):.5f} "
          f"lora_loss={float(lg_out['loss']):.5f} unused experts={int((gold['counts'] == 0).sum())} "
          f"generate margin={margin:.2e} ({time.time() - t0:.1f}s)", flush=True)


def router_goldens(d, lc, seed, ids, labels, n_tokens):
    """PEFT's LoRA of lc plus modules_to_save=["gate"]: the routers are trainable copies (moved off the base so
    that a loader reading the base's router fails), saved by peft; the gradients of every trainable tensor
    (LoRA and routers) under PEFT's saved keys."""
    import copy
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    lc = copy.deepcopy(lc)
    lc.modules_to_save = ["gate"]
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
    assert any(".mlp.gate." in k for k in keys.values())
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    for name in [n for n in a.only.split(",") if n] or list(MODELS):
        generate(name, a.outdir)


if __name__ == "__main__":
    main()
