#!/usr/bin/env python3
"""Cross-check full fine-tuning (lt_adapter_params.full_finetune, through the ctypes layer of
bindings/python) against PyTorch on held-out tiny random checkpoints written by transformers'
save_pretrained.

usage: crosscheck_full.py --lib build/libloratune.so.0 --workdir DIR [--only NAME,...] [--steps N (3)]

Families: Llama untied and tied, Qwen2 (q/k/v biases), Qwen3 (q/k norms, explicit head_dim), Gemma (1 + w
norms, sqrt(hidden) embedding scale, tied, GeGLU), Gemma 2 (sandwich norms, soft-capping), Gemma 3 (+ per-head
q/k norms, local / global RoPE), SmolLM3 (NoPE layers, MLP biases), OLMo 2 (post-norms only, q/k norms over
the whole projection), Granite (embedding / residual / attention multipliers, logits scaling), Qwen3-MoE and
Mixtral (router, experts), gpt-oss (two models of make_moe_models.py, load-balancing loss on and off: sinks,
attention biases, the router's weight and bias, the fused experts and their biases). For each:
N AdamW updates (lr 2e-3, eps 1e-6, weight decay 0.1 in Hugging Face Trainer's groups: transformers'
Trainer.get_decay_parameter_names, i.e. no decay on biases and norm weights; grad clipping at 1.0;
gradient accumulation 2 with the token-level mean over the accumulated micro-batches) in the library and
in torch.optim.AdamW on the transformers model (float32, eager attention).
modules_to_save (Llama untied and tied; tied with embed_tokens only too; the routers of Qwen3-MoE ["gate"] and
gpt-oss ["router"], weight and bias, next to a LoRA on attention and the experts' down): N AdamW updates of a LoRA with
PEFT's ModulesToSaveWrapper copies equal PEFT + torch.optim (losses 1e-5, every saved tensor 1e-4, PEFT's
keys and config), PeftModel.from_pretrained loads ours with the same logits, the library loads PEFT's
adapter, and the merged export equals PEFT's model in transformers (1e-4).
Checks (each can fail): the loss of every update (1e-5 relative); every tensor of the saved directory
(lt_adapter_save writes a Hugging Face model directory) against the torch model's state_dict:
max|ours - torch| / max|torch| <= 1e-4; the directory loads in AutoModelForCausalLM and gives the torch
model's logits (1e-4 relative to max|logit|); lt_adapter_load of it reproduces the saved tensors (the
library's logits with the reloaded adapter equal torch's, 1e-4). One DPO update per family (SGD, lr 1,
no clipping: the weight change is the gradient) against TRL's sigmoid loss with the frozen base as the
reference: every tensor's change within 2e-4 of max|torch grad|; on Qwen3-MoE and gpt-oss e5k2 also one KTO
update and one GRPO step, each with TRL's load-balancing term. On gpt-oss one IPO (DPOTrainer loss_type "ipo")
and one ORPO (trl.experimental's ORPOTrainer, its odds_ratio_loss called as is) update the same way: ORPO with
a PEFT LoRA on attention and the experts (make_moe_models' config, random A and B; every LoRA tensor's change
against PEFT's gradient) on both models, IPO with full fine-tuning on e5k2 and that LoRA on e7k4 (reference:
the adapter disabled). TRL's load-balancing term is in IPO on both models (e7k4 has output_router_logits false:
TRL adds it all the same), in ORPO only on e5k2 (output_router_logits true), not on e7k4.
"""
import argparse
import ctypes
import json
import os
import shutil
import sys

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))
sys.path.insert(0, HERE)
torch.set_num_threads(2)
from make_moe_models import MODELS as MOE_MODELS  # noqa: E402  (the gpt-oss test models' configs)

COMMON = dict(rms_norm_eps=1e-5, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# name -> (config class, kwargs, seed); small enough for seconds per case, shapes that make mistakes show
MODELS = {
    "llama": ("LlamaConfig", dict(vocab_size=97, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False), 9101),
    "llama-tied": ("LlamaConfig", dict(vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True), 9102),
    "qwen2": ("Qwen2Config", dict(vocab_size=101, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                  use_sliding_window=False), 9103),
    "qwen3": ("Qwen3Config", dict(vocab_size=93, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                  tie_word_embeddings=False, use_sliding_window=False), 9104),
    "gemma": ("GemmaConfig", dict(vocab_size=91, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                  hidden_activation="gelu_pytorch_tanh"), 9105),
    "gemma2": ("Gemma2Config", dict(vocab_size=87, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                    query_pre_attn_scalar=8, hidden_activation="gelu_pytorch_tanh"), 9106),
    "gemma3": ("Gemma3TextConfig", dict(vocab_size=85, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                        sliding_window_pattern=2, query_pre_attn_scalar=8,
                                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                            "rope_theta": 10000.0},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 100.0}}), 9107),
    "smollm3": ("SmolLM3Config", dict(vocab_size=83, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, no_rope_layer_interval=2,
                                      mlp_bias=True), 9108),
    "olmo2": ("Olmo2Config", dict(vocab_size=81, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, attention_bias=True), 9109),
    "granite": ("GraniteConfig", dict(vocab_size=79, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, embedding_multiplier=4.0,
                                      residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=3.0), 9110),
    # mixture of experts: the router and every expert trained (torch: the fused experts.gate_up_proj /
    # down_proj parameters); Qwen3-MoE with a dense layer (mlp_only_layers) and the load-balancing loss in the
    # loss, Mixtral without it
    "qwen3moe": ("Qwen3MoeConfig", dict(vocab_size=77, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        num_experts=5, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                                        output_router_logits=True, router_aux_loss_coef=0.1,
                                        tie_word_embeddings=False), 9111),
    "mixtral": ("MixtralConfig", dict(vocab_size=75, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_local_experts=3,
                                      num_experts_per_tok=2, tie_word_embeddings=False), 9112),
    # gpt-oss, the configs of two test models of make_moe_models.py: every parameter trained, the attention sinks,
    # the q / k / v / o biases, the router's weight and bias and the experts' biases included (torch: the fused
    # (in, out) experts.gate_up_proj with gate / up in alternate columns); e5k2 with the load-balancing loss in
    # the loss (coefficient 0.3), e7k4 without it (output_router_logits off; TRL's objectives still add it)
    "gptoss-e5k2": ("GptOssConfig", MOE_MODELS["gptoss-e5k2"][1], 9113),
    "gptoss-e7k4": ("GptOssConfig", {**MOE_MODELS["gptoss-e7k4"][1], "output_router_logits": False}, 9114),
}
B, T = 2, 9
ACCUM = 2
LR, WD, CLIP = 2e-3, 0.1, 1.0
# Adam normalises each element's step: an element whose gradient is within rounding of 0 takes a +-lr step
# whose sign is rounding noise. eps 1e-6 (on both sides) keeps those steps small, so the comparison tests
# the algorithm, not the last bits of a near-zero gradient.
EPS = 1e-6


def write_model(d, name):
    import transformers
    cls_name, kw, seed = MODELS[name]
    cfg = getattr(transformers, cls_name)(**COMMON, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():  # weights far from their init (norms away from identity, nonzero biases)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(0.3 * torch.randn_like(p) + (0.0 if cls_name.startswith("Gemma") else 1.0))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(d, safe_serialization=True)
    return seed


def load_hf(d):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")


def draw_batches(gen, V, n):
    out = []
    for _ in range(n):
        ids = torch.randint(3, V, (B, T), generator=gen)
        # the pad id as an input in every batch (a packed document separator, a left pad): PyTorch's
        # nn.Embedding(padding_idx=pad_token_id) gives its row no gradient from the lookup
        ids[0, T // 3] = ids[-1, 2 * T // 3] = COMMON["pad_token_id"]
        labels = ids.clone()
        labels[torch.rand(B, T, generator=gen) < 0.2] = -100
        out.append((ids, labels))
    return out


def ce_sum(logits, labels):
    lg, lb = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(lg, lb, ignore_index=-100, reduction="sum"), int((lb != -100).sum())


def aux_term(model, out, n_valid):
    """The load-balancing loss the library adds to a micro-batch's summed loss when the config asks for it
    (output_router_logits): n_valid * router_aux_loss_coef * aux_loss (transformers' load_balancing_loss_func)."""
    if not getattr(model.config, "output_router_logits", False):
        return 0.0
    return n_valid * model.config.router_aux_loss_coef * out.aux_loss


def module_names(tensors, cfg):
    """A checkpoint's tensors (one per expert projection; Mixtral: block_sparse_moe, w1 / w3 / w2) under the
    names of the model's own parameters (mlp.gate, the fused mlp.experts.gate_up_proj (E, 2 MI, H) and
    down_proj (E, H, MI)), as state_dict() gives them."""
    if cfg.model_type not in ("qwen3_moe", "mixtral"):
        return tensors
    mix = cfg.model_type == "mixtral"
    parent, (g, u, d) = ("block_sparse_moe", ("w1", "w3", "w2")) if mix else ("mlp", ("gate_proj", "up_proj",
                                                                                       "down_proj"))
    E = cfg.num_local_experts if mix else cfg.num_experts
    out = dict(tensors)
    for l in range(cfg.num_hidden_layers):
        pre = f"model.layers.{l}.{parent}"
        if f"{pre}.gate.weight" not in out:
            continue
        out[f"model.layers.{l}.mlp.gate.weight"] = out.pop(f"{pre}.gate.weight")
        ex = lambda e, n: out.pop(f"{pre}.experts.{e}.{n}.weight")  # noqa: E731
        out[f"model.layers.{l}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([ex(e, g), ex(e, u)])
                                                                         for e in range(E)])
        out[f"model.layers.{l}.mlp.experts.down_proj"] = torch.stack([ex(e, d) for e in range(E)])
    return out


def torch_train(mdir, batches, steps):
    from transformers import Trainer
    model = load_hf(mdir)
    model.train()
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())  # tied parameters appear once
    groups = [dict(params=[p for n, p in named if n in decay], weight_decay=WD),
              dict(params=[p for n, p in named if n not in decay], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=EPS)
    losses = []
    for s in range(steps):
        mbs = batches[s * ACCUM:(s + 1) * ACCUM]
        n_tok = sum(int((lb[:, 1:] != -100).sum()) for _, lb in mbs)
        tot = 0.0
        for ids, lb in mbs:
            out = model(input_ids=ids)
            loss, nv = ce_sum(out.logits.float(), lb)
            loss = loss + aux_term(model, out, nv)
            (loss / n_tok).backward()
            tot += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        losses.append(tot / n_tok)
    return model, losses, decay


def ck(st, what, L, err=None):
    if st != 0:
        raise RuntimeError(f"{what}: status {st}: {L.decode(err() if err else L.lib().lt_last_error())}")


class Lib:
    """The library through bindings/python's ctypes layer: one context, model and full adapter."""

    def __init__(self, lib_path, mdir):
        os.environ["LORATUNE_LIBRARY"] = lib_path
        from loratune import _lib as L
        self.L, self.lib = L, L.lib()
        cp = L.init_struct(self.lib.lt_context_params_init, L.lt_context_params)
        cp.backend = b"cpu"
        self.ctx = L.lt_context_p()
        ck(self.lib.lt_context_create(ctypes.byref(cp), ctypes.byref(self.ctx)), "context", L)
        self.model = L.lt_model_p()
        ck(self.lib.lt_model_load(self.ctx, mdir.encode(), None, ctypes.byref(self.model)), "model", L)

    def full_adapter(self):
        L = self.L
        ap = L.init_struct(self.lib.lt_adapter_params_init, L.lt_adapter_params)
        ap.full_finetune = 1
        ad = L.lt_adapter_p()
        ck(self.lib.lt_adapter_create(self.model, ctypes.byref(ap), ctypes.byref(ad)), "adapter", L)
        return ad

    def trainer(self, ad, kind=0, lr=LR, wd=WD, clip=CLIP, accum=ACCUM, objective=0):
        L = self.L
        op = L.init_struct(self.lib.lt_optimizer_params_init, L.lt_optimizer_params)
        op.kind, op.lr, op.weight_decay, op.max_grad_norm, op.momentum, op.eps = kind, lr, wd, clip, 0.0, EPS
        opt = L.lt_optimizer_p()
        ck(self.lib.lt_optimizer_create(ad, ctypes.byref(op), ctypes.byref(opt)), "optimizer", L)
        tp = L.init_struct(self.lib.lt_trainer_params_init, L.lt_trainer_params)
        tp.grad_accum, tp.objective = accum, objective
        tr = L.lt_trainer_p()
        ck(self.lib.lt_trainer_create(self.model, ad, opt, ctypes.byref(tp), ctypes.byref(tr)), "trainer", L)
        return opt, tr

    def step(self, tr, ids, labels):
        L = self.L
        b = L.init_struct(self.lib.lt_batch_init, L.lt_batch)
        flat_i, flat_l = ids.flatten().tolist(), labels.flatten().tolist()
        I = (ctypes.c_int32 * len(flat_i))(*flat_i)
        Lb = (ctypes.c_int32 * len(flat_l))(*flat_l)
        b.n_rows, b.seq_len, b.input_ids, b.labels = ids.shape[0], ids.shape[1], I, Lb
        res = L.lt_step_result()
        res.size = ctypes.sizeof(res)
        ck(self.lib.lt_trainer_step(tr, ctypes.byref(b), ctypes.byref(res)), "step", L,
           lambda: self.lib.lt_trainer_last_error(tr))
        return res

    def logits(self, ad, ids):
        L = self.L
        b = L.init_struct(self.lib.lt_batch_init, L.lt_batch)
        flat = ids.flatten().tolist()
        I = (ctypes.c_int32 * len(flat))(*flat)
        b.n_rows, b.seq_len, b.input_ids = ids.shape[0], ids.shape[1], I
        V = self.vocab
        out = (ctypes.c_float * (len(flat) * V))()
        ck(self.lib.lt_model_logits(self.model, ad, ctypes.byref(b), out, len(flat) * V), "logits", L,
           lambda: self.lib.lt_model_last_error(self.model))
        return torch.tensor(list(out)).view(ids.shape[0], ids.shape[1], V)


def read_dir(d):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def rel_max(a, b):
    return float((a.double() - b.double()).abs().max() / max(b.double().abs().max(), 1e-30))


def check_sft(lib_path, name, work, steps):
    mdir, odir, rdir = (os.path.join(work, name, x) for x in ("model", "out", "out-reload"))
    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    seed = write_model(mdir, name)
    V = MODELS[name][1]["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    batches = draw_batches(gen, V, steps * ACCUM)
    fails = []

    # ---- the library
    lb = Lib(lib_path, mdir)
    lb.vocab = V
    ad = lb.full_adapter()
    opt, tr = lb.trainer(ad)
    ours = []
    for ids, labels in batches:
        r = lb.step(tr, ids, labels)
        if r.updated:
            ours.append(r.loss)
    ck(lb.lib.lt_adapter_save(ad, odir.encode()), "save", lb.L, lambda: lb.lib.lt_adapter_last_error(ad))
    probe = torch.randint(3, V, (2, T), generator=gen)
    our_logits = lb.logits(ad, probe)
    ad2 = lb.L.lt_adapter_p()
    ck(lb.lib.lt_adapter_load(lb.model, odir.encode(), ctypes.byref(ad2)), "reload", lb.L)
    reload_logits = lb.logits(ad2, probe)
    base_logits = lb.logits(None, probe)

    # ---- PyTorch
    model, theirs, decay = torch_train(mdir, batches, steps)
    if len(ours) != steps:
        fails.append(f"{len(ours)} updates, expected {steps}")
    for s, (a, b) in enumerate(zip(ours, theirs)):
        if abs(a - b) > 1e-5 * abs(b):
            fails.append(f"update {s + 1}: loss {a:.8f} vs torch {b:.8f}")
    sd = {k: v for k, v in model.state_dict().items()}
    mine = module_names(read_dir(odir), model.config)
    worst = (0.0, "")
    for k, v in sd.items():
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if k not in mine:
            fails.append(f"saved directory lacks {k}")
            continue
        e = rel_max(mine[k], v)
        worst = max(worst, (e, k))
        if e > 1e-4:
            fails.append(f"{k}: max rel diff {e:.2e} > 1e-4")
    extra = set(mine) - set(sd)
    if extra:
        fails.append(f"saved directory has unexpected tensors {sorted(extra)[:3]}")
    with torch.no_grad():
        tl = model(input_ids=probe).logits.float()
        hl = load_hf(odir)(input_ids=probe).logits.float()
        b0 = load_hf(mdir)(input_ids=probe).logits.float()
    for what, a in (("transformers on the saved directory", hl), ("library", our_logits),
                    ("library with the reloaded adapter", reload_logits)):
        e = rel_max(a, tl)
        if e > 1e-4:
            fails.append(f"logits of the {what}: max rel diff {e:.2e} > 1e-4")
    if rel_max(base_logits, b0) > 1e-4:
        fails.append("the base model changed under full fine-tuning")
    if rel_max(tl, b0) < 1e-3:
        fails.append("training did not move the logits (the check would be vacuous)")
    n_dec = len([k for k in sd if k in decay])
    print(f"  {name}: losses {['%.6f' % x for x in ours]} torch {['%.6f' % x for x in theirs]}; "
          f"{len(sd)} tensors ({n_dec} decayed), worst {worst[0]:.1e} ({worst[1]})")
    lb.lib.lt_adapter_free(ad2)
    lb.lib.lt_trainer_free(tr)
    lb.lib.lt_optimizer_free(opt)
    lb.lib.lt_adapter_free(ad)
    lb.lib.lt_model_free(lb.model)
    lb.lib.lt_context_free(lb.ctx)
    return fails


def trl_aux(model, seqs, orpo=False):
    """The load-balancing loss TRL 1.16 adds to a preference loss on an MoE model (DPOTrainer / KTOTrainer:
    router_aux_loss_coef * outputs.aux_loss of the policy forward; trl.experimental's ORPOTrainer only when
    the config's output_router_logits is true): one forward of the sequences right-padded as one batch (DPO,
    IPO, ORPO: chosen rows then rejected rows; KTO: the completion rows) with their attention_mask and
    output_router_logits=True, so transformers' load_balancing_loss_func leaves out the padding. 0 for a
    dense model."""
    if not hasattr(model.config, "output_router_logits") or not model.config.router_aux_loss_coef:
        return 0.0
    if orpo and not model.config.output_router_logits:
        return 0.0
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    return model.config.router_aux_loss_coef * out.aux_loss


OBJECTIVES = {"dpo": 1, "ipo": 2, "kto": 3, "orpo": 4}  # lt_objective


def trl_pref_loss(model, ref, rows, obj, beta=0.1):
    """TRL's loss of one batch of (prompt, chosen, rejected) rows (KTO: row 0 desirable, row 1 undesirable, the
    rejected completions unused), log-probs summed over the completion of each unpadded row; ref: the frozen
    reference model (a context manager giving it). DPO sigmoid -log s(b D); IPO (DPOTrainer loss_type "ipo",
    log-probs per completion token) ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 b))^2; KTO as KTOTrainer (KL rows
    pair prompt i with completion i - 1, detached); ORPO (ORPOTrainer.get_batch_loss_metrics) the NLL of every
    token of prompt + chosen (a token mean) minus the mean of TRL's own odds_ratio_loss on the mean per-token
    log-probs. Plus trl_aux on an MoE model."""
    def logp(m, p, c, tokens=False):
        lg = m(input_ids=torch.tensor([p + c])).logits[0].float()
        lp = torch.log_softmax(lg, -1)[:-1].gather(1, torch.tensor(p + c)[1:, None])[:, 0]
        return lp if tokens else lp[len(p) - 1:].sum()

    losses = []
    if obj == "kto":
        with torch.no_grad():
            pkl = [logp(model, p, rows[i - 1][1]) for i, (p, _, _) in enumerate(rows)]
            with ref() as rm:
                rkl = [logp(rm, p, rows[i - 1][1]) for i, (p, _, _) in enumerate(rows)]
                rcs = [logp(rm, p, c) for p, c, _ in rows]
        kl = torch.stack([a - b for a, b in zip(pkl, rkl)]).mean().clamp(min=0)
        for i, (p, c, _) in enumerate(rows):
            lr = logp(model, p, c) - rcs[i]
            losses.append(1 - torch.sigmoid(beta * (lr - kl)) if i == 0 else 1 - torch.sigmoid(beta * (kl - lr)))
        return torch.stack(losses).mean() + trl_aux(model, [p + c for p, c, _ in rows])
    seqs = [p + c for p, c, _ in rows] + [p + r for p, _, r in rows]
    if obj == "orpo":
        from trl.experimental.orpo.orpo_trainer import ORPOTrainer
        import types
        tok = [logp(model, p, c, tokens=True) for p, c, _ in rows]
        nll = -torch.cat(tok).sum() / sum(len(t) for t in tok)
        pc = torch.stack([t[len(p) - 1:].mean() for t, (p, _, _) in zip(tok, rows)])
        pr = torch.stack([logp(model, p, r) / len(r) for p, _, r in rows])
        fake = types.SimpleNamespace(beta=beta, accelerator=types.SimpleNamespace(device="cpu"))
        return nll - ORPOTrainer.odds_ratio_loss(fake, pc, pr)[0].mean() + trl_aux(model, seqs, orpo=True)
    for p, c, r in rows:
        with torch.no_grad(), ref() as rm:
            rc, rr = logp(rm, p, c), logp(rm, p, r)
        dc, dr = logp(model, p, c) - rc, logp(model, p, r) - rr
        if obj == "ipo":
            losses.append((dc / len(c) - dr / len(r) - 1 / (2 * beta)) ** 2)
        else:
            losses.append(-torch.nn.functional.logsigmoid(beta * (dc - dr)))
    return torch.stack(losses).mean() + trl_aux(model, seqs)


def check_dpo(lib_path, name, work, obj="dpo", lora=False):
    """One DPO, IPO, KTO or ORPO update (trl_pref_loss, beta 0.1; reference = the frozen base) with SGD lr 1: the
    change of every weight is its gradient. Full fine-tuning, or (lora) a PEFT LoRA with random A and B of the
    make_moe_models config of an MoE model (attention and the experts' target_parameters): the reference is
    then the policy with its adapter disabled, as TRL does for a PEFT model without a reference adapter, and
    every LoRA tensor's change is compared with PEFT's gradient."""
    import contextlib
    kto = obj == "kto"
    tag = f"{obj}-lora" if lora else obj
    mdir = os.path.join(work, name, "model")
    idir, odir, gdir = (os.path.join(work, name, f"{tag}-{x}") for x in ("init", "out", "torch-grad"))
    V = MODELS[name][1]["vocab_size"]
    gen = torch.Generator().manual_seed(MODELS[name][2] + 7)
    rows = []
    for _ in range(2):
        p = torch.randint(3, V, (3,), generator=gen).tolist()
        c = torch.randint(3, V, (4,), generator=gen).tolist()
        r = torch.randint(3, V, (3,), generator=gen).tolist()
        rows.append((p, c, r))
    if lora:
        from peft import LoraConfig, get_peft_model
        from make_family_models import randomize_peft_
        lc = MOE_MODELS[name][3]
        pm = get_peft_model(load_hf(mdir), LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=0.0,
                                                      target_modules=lc["targets"], target_parameters=lc["params"]))
        randomize_peft_(pm, MODELS[name][2] + 17)
        pm.save_pretrained(idir)
    lb = Lib(lib_path, mdir)
    L = lb.L
    if lora:
        ad = L.lt_adapter_p()
        ck(lb.lib.lt_adapter_load(lb.model, idir.encode(), ctypes.byref(ad)), "load PEFT adapter", L)
    else:
        ad = lb.full_adapter()
    opt, tr = lb.trainer(ad, kind=1, lr=1.0, wd=0.0, clip=0.0, accum=1, objective=OBJECTIVES[obj])
    pb = L.init_struct(lb.lib.lt_pref_batch_init, L.lt_pref_batch)
    cat = lambda k: [t for row in rows for t in row[k]]  # noqa: E731
    arr = lambda xs: (ctypes.c_int32 * len(xs))(*xs)  # noqa: E731
    keep = [arr(cat(0)), arr([len(r[0]) for r in rows]), arr(cat(1)), arr([len(r[1]) for r in rows]),
            arr(cat(2)), arr([len(r[2]) for r in rows])]
    pb.n_rows = len(rows)
    pb.prompt_ids, pb.prompt_lens, pb.chosen_ids, pb.chosen_lens = keep[:4]
    if kto:  # example 0 desirable, example 1 undesirable
        keep.append(arr([1, 0]))
        pb.labels = keep[-1]
    else:
        pb.rejected_ids, pb.rejected_lens = keep[4:]
    res = L.lt_step_result()
    res.size = ctypes.sizeof(res)
    ck(lb.lib.lt_trainer_step_preference(tr, ctypes.byref(pb), ctypes.byref(res)), f"{obj} step", L,
       lambda: lb.lib.lt_trainer_last_error(tr))
    ck(lb.lib.lt_adapter_save(ad, odir.encode()), "save", L)
    for f, h in ((lb.lib.lt_trainer_free, tr), (lb.lib.lt_optimizer_free, opt), (lb.lib.lt_adapter_free, ad),
                 (lb.lib.lt_model_free, lb.model), (lb.lib.lt_context_free, lb.ctx)):
        f(h)

    if lora:
        model = pm  # the adapter the library loaded

        @contextlib.contextmanager
        def ref():
            with model.disable_adapter():
                yield model
    else:
        model, base = load_hf(mdir), (load_hf(mdir) if obj != "orpo" else None)  # ORPO has no reference
        ref = lambda: contextlib.nullcontext(base)  # noqa: E731
    loss = trl_pref_loss(model, ref, rows, obj)
    loss.backward()
    fails = []
    lv = float(loss.detach())
    if abs(res.loss - lv) > 1e-5 * abs(lv):
        fails.append(f"{tag} loss {res.loss:.8f} vs torch {lv:.8f}")
    if lora:  # PEFT's gradients under the keys of its saved adapter: the parameters set to them, saved
        with torch.no_grad():
            for n_, prm in model.named_parameters():
                if prm.requires_grad:
                    if prm.grad is None or not prm.grad.abs().max() > 0:
                        fails.append(f"{tag}: PEFT gives {n_} no gradient (the check would be vacuous)")
                    else:
                        prm.copy_(prm.grad)
        model.save_pretrained(gdir)
        before, after, grads = read_dir(idir), read_dir(odir), read_dir(gdir)
    else:
        before, after = module_names(read_dir(mdir), model.config), module_names(read_dir(odir), model.config)
        grads = {k: prm.grad if prm.grad is not None else torch.zeros_like(prm) for k, prm in model.named_parameters()}
    if lora and set(grads) != set(after):
        fails.append(f"{tag}: saved tensors differ from torch's: {sorted(set(grads) ^ set(after))[:4]}")
    worst = 0.0
    for k in sorted(set(grads) & set(after)) if lora else grads:
        g, d = grads[k], before[k] - after[k]
        e = float((d.double() - g.double()).abs().max() / max(g.double().abs().max(), 1e-30))
        worst = max(worst, e)
        if e > 2e-4:
            fails.append(f"{tag} gradient of {k}: max diff {e:.2e} of max|grad| > 2e-4")
    print(f"  {name}: {tag} loss {res.loss:.8f} torch {lv:.8f}; {len(grads)} tensors, worst gradient diff {worst:.1e}")
    return fails


def check_grpo(lib_path, name, work):
    """One GRPO step (G = 2 completions sampled by the library for one prompt, rewards 1 and 0, group
    scaling, loss dapo, no KL, temperature 1) with SGD lr 1, against TRL's formulas on the same completions:
    sum over tokens of -rho A / tokens, plus on an MoE model TRL's load-balancing term (trl_aux over the
    prompt + completion rows); every weight's change is its gradient (2e-4 of max|grad|)."""
    mdir, odir = os.path.join(work, name, "model"), os.path.join(work, name, "grpo-out")
    V = MODELS[name][1]["vocab_size"]
    gen = torch.Generator().manual_seed(MODELS[name][2] + 13)
    prompt = torch.randint(3, V, (4,), generator=gen).tolist()
    G, new = 2, 5
    lb = Lib(lib_path, mdir)
    L = lb.L
    ad = lb.full_adapter()
    op = L.init_struct(lb.lib.lt_optimizer_params_init, L.lt_optimizer_params)
    op.kind, op.lr, op.momentum, op.max_grad_norm, op.weight_decay = 1, 1.0, 0.0, 0.0, 0.0  # SGD: W -= grad
    opt = L.lt_optimizer_p()
    ck(lb.lib.lt_optimizer_create(ad, ctypes.byref(op), ctypes.byref(opt)), "optimizer", L)
    tp = L.init_struct(lb.lib.lt_trainer_params_init, L.lt_trainer_params)
    tp.objective, tp.num_generations, tp.kl_beta, tp.scale_rewards, tp.loss_type = 5, G, 0.0, 0, 0
    tr = L.lt_trainer_p()
    ck(lb.lib.lt_trainer_create(lb.model, ad, opt, ctypes.byref(tp), ctypes.byref(tr)), "trainer", L)
    gp = L.init_struct(lb.lib.lt_generate_params_init, L.lt_generate_params)
    gp.max_new_tokens, gp.temperature, gp.seed = new, 1.0, MODELS[name][2] + 1
    comp, clens = (ctypes.c_int32 * (G * new))(), (ctypes.c_int32 * G)()
    terr = lambda: lb.lib.lt_trainer_last_error(tr)  # noqa: E731
    ck(lb.lib.lt_grpo_generate(tr, (ctypes.c_int32 * len(prompt))(*prompt), (ctypes.c_int32 * 1)(len(prompt)), 1,
                               ctypes.byref(gp), comp, clens), "generate", L, terr)
    rewards = [1.0, 0.0]
    res = L.lt_step_result()
    res.size = ctypes.sizeof(res)
    ck(lb.lib.lt_grpo_step(tr, (ctypes.c_float * G)(*rewards), ctypes.byref(res)), "grpo step", L, terr)
    ck(lb.lib.lt_adapter_save(ad, odir.encode()), "save", L)
    for f, h in ((lb.lib.lt_trainer_free, tr), (lb.lib.lt_optimizer_free, opt), (lb.lib.lt_adapter_free, ad),
                 (lb.lib.lt_model_free, lb.model), (lb.lib.lt_context_free, lb.ctx)):
        f(h)

    model = load_hf(mdir)
    comps = [list(comp[i * new:i * new + clens[i]]) for i in range(G)]
    # torch never trains the pad token's embedding row (nn.Embedding padding_idx), the library does: a sampled
    # pad id would make the embedding's gradients differ for that reason alone (the seed avoids it)
    if any(COMMON["pad_token_id"] in c for c in comps):
        return [f"GRPO: a completion holds the pad id {COMMON['pad_token_id']} ({comps}): choose another seed"]
    adv = torch.tensor(rewards) - 0.5
    adv = adv / (torch.tensor(rewards).std() + 1e-4)
    terms, total = [], sum(len(c) for c in comps)
    for i, c in enumerate(comps):
        lg = model(input_ids=torch.tensor([prompt + c])).logits[0].float()
        lp = torch.log_softmax(lg, -1)[len(prompt) - 1:len(prompt) + len(c) - 1].gather(1, torch.tensor(c)[:, None])
        terms.append((-torch.exp(lp - lp.detach()) * adv[i]).sum())
    loss = sum(terms) / total + trl_aux(model, [prompt + c for c in comps])
    loss.backward()
    fails = []
    lv = float(loss.detach())
    if abs(res.loss - lv) > 1e-5 * max(abs(lv), 1e-3):
        fails.append(f"GRPO loss {res.loss:.8f} vs torch {lv:.8f}")
    before, after = module_names(read_dir(mdir), model.config), module_names(read_dir(odir), model.config)
    worst = 0.0
    for k, prm in model.named_parameters():
        g = prm.grad if prm.grad is not None else torch.zeros_like(prm)
        e = float(((before[k] - after[k]).double() - g.double()).abs().max() / max(g.double().abs().max(), 1e-30))
        worst = max(worst, e)
        if e > 2e-4:
            fails.append(f"GRPO gradient of {k}: max diff {e:.2e} of max|grad| > 2e-4")
    print(f"  {name}: GRPO completions {comps} loss {res.loss:.8f} torch {lv:.8f}; worst gradient diff {worst:.1e}")
    return fails


def check_mts(lib_path, name, work, steps, modules=("embed_tokens", "lm_head"),
              targets=("q_proj", "v_proj", "down_proj"), params=None):
    """LoRA + modules_to_save=[embed_tokens, lm_head] (PEFT's ModulesToSaveWrapper: separate trainable copies,
    also on a tied model; on an MoE model ["gate"], the routers, next to a LoRA on experts: target_parameters
    params): the library loads PEFT's adapter, trains N AdamW updates like PEFT + torch.optim, saves PEFT's
    keys; PeftModel.from_pretrained loads ours with the same logits; the merged export equals
    merge_and_unload's logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Trainer
    mdir = os.path.join(work, name, "model")
    tag = "-".join(modules)
    idir, odir, edir = (os.path.join(work, name, f"mts-{tag}-{x}") for x in ("init", "out", "merged"))
    V = MODELS[name][1]["vocab_size"]
    gen = torch.Generator().manual_seed(MODELS[name][2] + 11)
    torch.manual_seed(MODELS[name][2] + 12)
    pm = get_peft_model(load_hf(mdir), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                                  target_modules=list(targets), target_parameters=params,
                                                  modules_to_save=list(modules)))
    pm.save_pretrained(idir)
    batches = draw_batches(gen, V, steps * ACCUM)
    lb = Lib(lib_path, mdir)
    lb.vocab = V
    L = lb.L
    ad = L.lt_adapter_p()
    ck(lb.lib.lt_adapter_load(lb.model, idir.encode(), ctypes.byref(ad)), "load PEFT adapter", L)
    opt, tr = lb.trainer(ad)
    ours = [lb.step(tr, ids, lab).loss for ids, lab in batches][ACCUM - 1::ACCUM]
    ck(lb.lib.lt_adapter_save(ad, odir.encode()), "save", L, lambda: lb.lib.lt_adapter_last_error(ad))
    ck(lb.lib.lt_adapter_export_merged(ad, edir.encode(), 0), "export", L, lambda: lb.lib.lt_adapter_last_error(ad))
    probe = torch.randint(3, V, (2, T), generator=gen)
    our_logits = lb.logits(ad, probe)
    for f, h in ((lb.lib.lt_trainer_free, tr), (lb.lib.lt_optimizer_free, opt), (lb.lib.lt_adapter_free, ad),
                 (lb.lib.lt_model_free, lb.model), (lb.lib.lt_context_free, lb.ctx)):
        f(h)

    pm = PeftModel.from_pretrained(load_hf(mdir), idir, is_trainable=True)
    decay = set(Trainer.get_decay_parameter_names(None, pm))
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    groups = [dict(params=[p for n, p in named if n in decay], weight_decay=WD),
              dict(params=[p for n, p in named if n not in decay], weight_decay=0.0)]
    topt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=EPS)
    theirs = []
    for s in range(steps):
        mbs = batches[s * ACCUM:(s + 1) * ACCUM]
        n_tok = sum(int((lab[:, 1:] != -100).sum()) for _, lab in mbs)
        tot = 0.0
        for ids, lab in mbs:
            out = pm(input_ids=ids)
            loss, nv = ce_sum(out.logits.float(), lab)
            loss = loss + aux_term(pm, out, nv)
            (loss / n_tok).backward()
            tot += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for _, p in named], CLIP)
        topt.step()
        topt.zero_grad()
        theirs.append(tot / n_tok)
    fails = []
    for s, (a, b) in enumerate(zip(ours, theirs)):
        if abs(a - b) > 1e-5 * abs(b):
            fails.append(f"modules_to_save update {s + 1}: loss {a:.8f} vs PEFT {b:.8f}")
    pdir = os.path.join(work, name, f"mts-{tag}-peft")
    pm.save_pretrained(pdir)
    mine, ref = read_dir(odir), read_dir(pdir)
    if set(mine) != set(ref):
        fails.append(f"modules_to_save keys differ from PEFT's: {sorted(set(mine) ^ set(ref))[:4]}")
    worst = 0.0
    for k in set(mine) & set(ref):
        e = rel_max(mine[k], ref[k])
        worst = max(worst, e)
        if e > 1e-4:
            fails.append(f"modules_to_save {k}: max rel diff {e:.2e} > 1e-4")
    with open(os.path.join(odir, "adapter_config.json")) as f:
        mts = json.load(f).get("modules_to_save")
    if sorted(mts or []) != sorted(modules):
        fails.append(f"adapter_config.json modules_to_save is {mts}")
    pm.eval()
    with torch.no_grad():
        tl = pm(input_ids=probe).logits.float()
        ol = PeftModel.from_pretrained(load_hf(mdir), odir)(input_ids=probe).logits.float()
        el = load_hf(edir)(input_ids=probe).logits.float()
    for what, a in (("PeftModel.from_pretrained of our adapter", ol), ("library", our_logits),
                    ("transformers on our merged export", el)):
        e = rel_max(a, tl)
        if e > 1e-4:
            fails.append(f"modules_to_save logits of the {what}: max rel diff {e:.2e} > 1e-4")
    print(f"  {name}: modules_to_save {list(modules)} losses {['%.6f' % x for x in ours]} PEFT {['%.6f' % x for x in theirs]}; "
          f"{len(mine)} tensors, worst {worst:.1e}")
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(MODELS)
    fails = []
    for name in names:
        f = check_sft(os.path.abspath(args.lib), name, args.workdir, args.steps)
        f += check_dpo(os.path.abspath(args.lib), name, args.workdir)
        if name in ("llama", "llama-tied"):
            f += check_mts(os.path.abspath(args.lib), name, args.workdir, args.steps)
        if name.startswith("gptoss"):  # IPO and ORPO with TRL's aux term: in IPO on both (e7k4: output_router_logits
            # false, TRL adds it all the same), in ORPO only on e5k2 (output_router_logits true)
            f += check_dpo(os.path.abspath(args.lib), name, args.workdir, "orpo", lora=True)
            f += check_dpo(os.path.abspath(args.lib), name, args.workdir, "ipo", lora=name == "gptoss-e7k4")
        if name in ("qwen3moe", "gptoss-e5k2"):  # KTO and GRPO with the aux loss
            f += check_dpo(os.path.abspath(args.lib), name, args.workdir, "kto")
            f += check_grpo(os.path.abspath(args.lib), name, args.workdir)
        if name in ("qwen3moe", "gptoss-e5k2"):  # the routers trained next to a LoRA on attention and experts' down
            f += check_mts(os.path.abspath(args.lib), name, args.workdir, 2, ("router" if "gptoss" in name else "gate",),
                           ("q_proj", "v_proj"), ["mlp.experts.down_proj"])
        if name == "llama-tied":  # one trained copy: the merged model must be untied
            f += check_mts(os.path.abspath(args.lib), name, args.workdir, 2, ("embed_tokens",))
        fails += [f"{name}: {x}" for x in f]
    if fails:
        print("FAIL\n  " + "\n  ".join(fails))
        return 1
    print(f"full fine-tuning matches PyTorch on {len(names)} families")
    return 0


if __name__ == "__main__":
    sys.exit(main())
