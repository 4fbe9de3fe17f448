#!/usr/bin/env python3
"""Cross-check PiSSA / OLoRA initialisation (lt_adapter_create with LT_INIT_PISSA / LT_INIT_OLORA, through the
ctypes layer of bindings/python) against PEFT (init_lora_weights="pissa" / "olora") on held-out tiny random
checkpoints written with transformers' save_pretrained: Llama, Qwen2 (q/k/v biases, rsLoRA in one case) and
Phi-3 (fused qkv_proj / gate_up_proj, decomposed as one stacked weight as PEFT does).

usage: crosscheck_pissa.py --lib build/libloratune.so.0 [--workdir DIR] [--keep]

Per case (family x init), r and alpha fixed per case, all target modules, no dropout:
 1. init: our saved adapter is the converted rank-2r LoRA ([A; A0], [B, -B0]) with A == A0 and B == B0
    exactly, adapter_config r = 2r, lora_alpha = 2 alpha (rsLoRA: alpha sqrt 2), init_lora_weights true,
    plus loratune_init.json. Against PEFT's lora_A / lora_B after get_peft_model:
      OLoRA: A and B elementwise (max|diff| / max|peft| <= 1e-4; both are LAPACK geqrf + orgqr, same signs);
      PiSSA: singular vectors are defined up to a sign per pair: A and B after flipping each of our rank
             rows / columns to PEFT's sign (1e-4), and B A itself (1e-4);
    PEFT's residual base weight W - s B A vs the same computed from our A, B (1e-4 of max|W|);
 2. logits at init: ours (lt_model_logits with the adapter) vs the base model's and vs PEFT's (1e-4);
 3. N = 3 AdamW steps (lr 2e-3, weight decay 0.01, constant schedule, no clipping) on fixed batches:
    the step losses (1e-4 relative) and per module the effective delta s (B A - B0 A0) (max|diff| /
    max|peft| <= 1e-4; ours = s B' A' of the saved converted adapter);
 4. the saved converted adapter loads in PeftModel.from_pretrained on the ORIGINAL base and gives our
    logits (1e-4); PEFT's own save_pretrained(path_initial_model_for_weight_conversion=...) writes the same
    r / lora_alpha / init_lora_weights and the same B' A' (1e-4);
 4b. PEFT's plain save of the trained adapter (init_lora_weights "pissa" / "olora": from_pretrained redoes
    the decomposition of the original base): lt_adapter_load gives PEFT's logits (1e-4);
 5. resume (Llama cases): 2 steps, lt_trainer_save_checkpoint, a new adapter from lt_adapter_load of the
    checkpoint (loratune_init.json restores A0, B0), lt_trainer_load_checkpoint, 1 step: loss and adapter
    equal the straight 3-step run (1e-6).
Exits 1 if any case fails.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import warnings

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))
torch.set_num_threads(1)

LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_T = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
STEPS, LR, WD = 3, 2e-3, 0.01
TOL = 1e-4

# name, config class, config kwargs, seed, r, alpha, rslora, targets
CASES = [
    ("llama", "LlamaConfig", dict(vocab_size=203, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2), 7101, 4, 8.0, False, LLAMA_T),
    ("qwen2", "Qwen2Config", dict(vocab_size=211, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, use_sliding_window=False),
     7102, 3, 6.0, True, LLAMA_T),
    ("phi3", "Phi3Config", dict(vocab_size=199, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5,
                                 pad_token_id=0), 7103, 4, 16.0, False, PHI3_T),
]


def rel_max(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


def write_model(d, cls_name, kw, seed):
    import transformers
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls_name)(rms_norm_eps=1e-5, max_position_embeddings=128, bos_token_id=1,
                                          eos_token_id=2, tie_word_embeddings=False, **kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            std, base = (0.1, 1.0) if name.endswith("norm.weight") else (0.3, 0.0) if name.endswith(".bias") else (0.1, 0.0)
            p.copy_(base + std * torch.randn(p.shape, generator=g, dtype=torch.float32))
    model.save_pretrained(d, safe_serialization=True)


def load_base(d):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def peft_model(d, init, r, alpha, rslora, targets):
    from peft import LoraConfig, get_peft_model
    base = load_base(d)
    base.name_or_path = d
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), use_rslora=rslora,
                     bias="none", task_type="CAUSAL_LM", init_lora_weights=init)
    return get_peft_model(base, cfg)


def read_st(path):
    from safetensors.torch import load_file
    return load_file(path)


def module_names(sd):
    """base_model.model.model.layers.{l}.{parent}.{name} of every lora_A key"""
    return sorted(k[: -len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight"))


def peft_lora(pm):
    """PEFT's current A, B per module (our key naming) and the base weight of each"""
    out = {}
    for n, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = n  # base_model.model.model.layers.0.self_attn.q_proj
            out[key] = (mod.lora_A["default"].weight.detach().clone(), mod.lora_B["default"].weight.detach().clone(),
                        mod.get_base_layer().weight.detach().clone(), mod.scaling["default"])
    return out


def split_conv(sd, key, r):
    A2, B2 = sd[key + ".lora_A.weight"], sd[key + ".lora_B.weight"]
    return A2[:r], A2[r:], B2[:, :r], -B2[:, r:]


def batches(V, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (2, 11), generator=g) for _ in range(STEPS)]


def ce_mean(logits, ids):
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(lg, ids[:, 1:].reshape(-1), reduction="mean")


def run_case(lt, case, init, work, fails):
    name, cls_name, kw, seed, r, alpha, rslora, targets = case
    tag = f"{name}/{init}{' rslora' if rslora else ''} r={r} alpha={alpha:g}"
    msgs = []

    def check(what, err, tol=TOL):
        ok = err <= tol and not math.isnan(err)
        msgs.append(f"{what} {err:.2e}{'' if ok else ' FAIL'}")
        if not ok:
            fails.append(f"{tag}: {what} {err:.3e} > {tol:g}")

    mdir = os.path.join(work, f"{name}-model")
    if not os.path.exists(os.path.join(mdir, "config.json")):
        write_model(mdir, cls_name, kw, seed)
    V = kw["vocab_size"]
    data = batches(V, seed + 1)
    ctx = lt.Context(backend="cpu")
    model = ctx.load_model(mdir)
    ad = lt.Adapter.create(model, rank=r, alpha=alpha, targets="all", use_rslora=rslora, init=init)
    s = alpha / math.sqrt(r) if rslora else alpha / r

    # 1. init: the saved converted adapter and the sidecar
    d0 = os.path.join(work, f"{name}-{init}-ours-init")
    ad.save(d0)
    cfg = json.load(open(os.path.join(d0, "adapter_config.json")))
    side = json.load(open(os.path.join(d0, "loratune_init.json")))
    want_alpha = alpha * math.sqrt(2) if rslora else 2 * alpha
    if cfg["r"] != 2 * r or abs(cfg["lora_alpha"] - want_alpha) > 1e-5 * want_alpha or cfg["init_lora_weights"] is not True:
        fails.append(f"{tag}: adapter_config r={cfg['r']} lora_alpha={cfg['lora_alpha']} init={cfg['init_lora_weights']}")
    if side["r"] != r or side["init_lora_weights"] != init or abs(side["lora_alpha"] - alpha) > 1e-6:
        fails.append(f"{tag}: loratune_init.json {side}")
    sd0 = read_st(os.path.join(d0, "adapter_model.safetensors"))
    pm = peft_model(mdir, init, r, alpha, rslora, targets)
    pl = peft_lora(pm)
    base_sd = {k: v for k, v in load_base(mdir).state_dict().items()}
    if sorted(pl) != module_names(sd0):
        fails.append(f"{tag}: module sets differ: {sorted(pl)[:3]}... vs {module_names(sd0)[:3]}...")
        return
    eA = eB = eBA = eRes = eRef = eOurs = 0.0
    ours0 = {}
    for key, (Ap, Bp, Wres, sp) in pl.items():
        A, A0, B, B0 = split_conv(sd0, key, r)
        if not (torch.equal(A, A0) and torch.equal(B, B0)):
            fails.append(f"{tag}: {key}: A != A0 or B != B0 at init")
        if abs(sp - s) > 1e-6 * s:
            fails.append(f"{tag}: PEFT scaling {sp} != {s}")
        ours0[key] = (A, B)
        W = base_sd[key.replace("base_model.model.", "", 1) + ".weight"]
        if init == "pissa":  # per rank sign: flip ours to PEFT's
            sg = torch.sign((A * Ap).sum(1))
            sg[sg == 0] = 1
            A, B = A * sg[:, None], B * sg[None, :]
            # how far PEFT's own fp32 SVD factors are from float64 ones: the scale of fp32 singular-vector
            # error (about eps * sigma_1 / gap; these random weights have relative gaps down to ~0.005)
            U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
            Ar = torch.diag(torch.sqrt(S[:r] / s)) @ Vh[:r]
            Br = U[:, :r] @ torch.diag(torch.sqrt(S[:r] / s))
            sr = torch.sign((Ap.double() * Ar).sum(1))
            eRef = max(eRef, rel_max(Ap.double() * sr[:, None], Ar), rel_max(Bp.double() * sr[None, :], Br))
            # ours against the float64 factors (A, B already carry PEFT's signs, which sr maps to Ar's)
            eOurs = max(eOurs, rel_max(A.double() * sr[:, None], Ar), rel_max(B.double() * sr[None, :], Br))
        eA, eB = max(eA, rel_max(A, Ap)), max(eB, rel_max(B, Bp))
        eBA = max(eBA, rel_max(B @ A, Bp @ Ap))
        eRes = max(eRes, float((Wres.double() - (W.double() - s * (B.double() @ A.double()))).abs().max() / W.abs().max()))
    # OLoRA: 1e-4. PiSSA: two fp32 SVDs (OpenBLAS's LAPACK here, whose rounding follows the core OpenBLAS
    # runs, MKL in torch) each carry an error of about eps * sigma_1 / gap in the singular vectors (these random
    # weights have relative gaps down to ~0.005). So ours is checked against the float64 factors: within 1e-4
    # or 3x PEFT's own fp32 distance from them; ours against PEFT's then within the sum of the two distances
    # (what two independent fp32 factorisations can differ by), with 25 % more for the products B A and the
    # residual base weight, whose relative error the factors' bound only approximately
    if init == "olora":
        ftol = TOL
    else:
        check("A, B vs float64", eOurs, max(TOL, 3 * eRef))
        ftol = max(TOL, 1.25 * (eOurs + eRef))
    check("A", eA, ftol)
    check("B", eB, ftol)
    check("BA", eBA, ftol)
    check("residual", eRes, ftol)
    if init == "pissa":
        # fp32 SVDs from two LAPACKs (OpenBLAS here, MKL in torch) differ by ~1e-4 on these factors and Adam
        # amplifies that; so the PEFT run below is PEFT's pissa_init with our factors in place of its SVD:
        # lora_A, lora_B = ours, base = W - s B A (its formula, fp32)
        with torch.no_grad():
            for n, mod in pm.named_modules():
                if n in ours0:
                    A, B = ours0[n]
                    W = base_sd[n.replace("base_model.model.", "", 1) + ".weight"]
                    mod.lora_A["default"].weight.copy_(A)
                    mod.lora_B["default"].weight.copy_(B)
                    mod.get_base_layer().weight.copy_(W - s * B @ A)
        pl = peft_lora(pm)

    # 2. logits at init
    base = load_base(mdir)
    ids = data[0]
    with torch.no_grad():
        lb = base(input_ids=ids).logits
        lp = pm(input_ids=ids).logits
    lo = torch.from_numpy(model.logits(ids.numpy().astype("int32"), adapter=ad))
    check("logits0-vs-base", rel_max(lo, lb))
    check("logits0-vs-peft", rel_max(lo, lp))

    # PEFT's initial adapter for its own conversion later
    pinit = os.path.join(work, f"{name}-{init}-peft-init")
    pm.save_pretrained(pinit, safe_serialization=True)

    # 3. N AdamW steps on both
    opt = lt.Optimizer(ad, kind="adamw", lr=LR, weight_decay=WD, max_grad_norm=0, schedule="constant")
    tr = lt.Trainer(model, ad, opt, grad_accum=1)
    ours_loss = [tr.step(b.numpy().astype("int32"), labels=b.numpy().astype("int32")).loss for b in data]
    pm.train()
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    topt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    peft_loss = []
    for b in data:
        topt.zero_grad()
        loss = ce_mean(pm(input_ids=b).logits, b)
        loss.backward()
        topt.step()
        peft_loss.append(float(loss.detach()))
    pm.eval()
    check("losses", max(abs(a - b) / abs(b) for a, b in zip(ours_loss, peft_loss)))
    d1 = os.path.join(work, f"{name}-{init}-ours-trained")
    ad.save(d1)
    sd1 = read_st(os.path.join(d1, "adapter_model.safetensors"))
    pl1 = peft_lora(pm)
    eD = 0.0
    for key, (Ap, Bp, _, _) in pl1.items():
        A0p, B0p = pl[key][0], pl[key][1]
        dp = s * (Bp.double() @ Ap.double() - B0p.double() @ A0p.double())
        do = s * (sd1[key + ".lora_B.weight"].double() @ sd1[key + ".lora_A.weight"].double())
        eD = max(eD, rel_max(do, dp))
    check("delta", eD)

    # 4. the converted adapter on the original base; PEFT's own conversion
    from peft import PeftModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PEFT's plain (unconverted) save: init_lora_weights "pissa" / "olora"; PEFT's from_pretrained redoes the
        # decomposition on the base, so does lt_adapter_load
        punconv = os.path.join(work, f"{name}-{init}-peft-unconverted")
        pm.save_pretrained(punconv, safe_serialization=True)
        pu = PeftModel.from_pretrained(load_base(mdir), punconv).eval()
        with torch.no_grad():
            lpu = pu(input_ids=ids).logits
        adu = lt.Adapter.load(model, punconv)
        check("logits-unconverted-load", rel_max(torch.from_numpy(model.logits(ids.numpy().astype("int32"), adapter=adu)), lpu))
        pconv = os.path.join(work, f"{name}-{init}-peft-conv")
        pm.save_pretrained(pconv, safe_serialization=True, path_initial_model_for_weight_conversion=pinit)
    ours_pm = PeftModel.from_pretrained(load_base(mdir), d1).eval()
    with torch.no_grad():
        lpo = ours_pm(input_ids=ids).logits
    lo1 = torch.from_numpy(model.logits(ids.numpy().astype("int32"), adapter=ad))
    check("logits-peft-load", rel_max(lo1, lpo))
    pcfg = json.load(open(os.path.join(pconv, "adapter_config.json")))
    for k in ("r", "lora_alpha", "init_lora_weights", "use_rslora"):
        if not (pcfg[k] == cfg[k] or (isinstance(pcfg[k], float) and abs(pcfg[k] - cfg[k]) <= 1e-6 * abs(pcfg[k]))):
            fails.append(f"{tag}: adapter_config {k}: PEFT writes {pcfg[k]!r}, we write {cfg[k]!r}")
    psd = read_st(os.path.join(pconv, "adapter_model.safetensors"))
    eC = 0.0
    for key in pl1:
        pk = key
        dp = psd[pk + ".lora_B.weight"].double() @ psd[pk + ".lora_A.weight"].double()
        do = sd1[key + ".lora_B.weight"].double() @ sd1[key + ".lora_A.weight"].double()
        eC = max(eC, rel_max(do, dp))
    check("peft-conversion", eC)

    # 5. resume == straight
    if name == "llama":
        ad2 = lt.Adapter.create(model, rank=r, alpha=alpha, targets="all", use_rslora=rslora, init=init)
        o2 = lt.Optimizer(ad2, kind="adamw", lr=LR, weight_decay=WD, max_grad_norm=0, schedule="constant")
        t2 = lt.Trainer(model, ad2, o2, grad_accum=1)
        for b in data[:2]:
            t2.step(b.numpy().astype("int32"), labels=b.numpy().astype("int32"))
        ck = os.path.join(work, f"{name}-{init}-ckpt")
        t2.save_checkpoint(ck)
        ad3 = lt.Adapter.load(model, ck)
        if ad3.params.init != lt.LoraInit.parse(init) or ad3.params.rank != r:
            fails.append(f"{tag}: the checkpoint's adapter loads as init={ad3.params.init} r={ad3.params.rank}")
        o3 = lt.Optimizer(ad3, kind="adamw", lr=LR, weight_decay=WD, max_grad_norm=0, schedule="constant")
        t3 = lt.Trainer(model, ad3, o3, grad_accum=1)
        t3.load_checkpoint(ck)
        l3 = t3.step(data[2].numpy().astype("int32"), labels=data[2].numpy().astype("int32")).loss
        d3 = os.path.join(work, f"{name}-{init}-resumed")
        ad3.save(d3)
        sd3 = read_st(os.path.join(d3, "adapter_model.safetensors"))
        check("resume-loss", abs(l3 - ours_loss[2]) / abs(ours_loss[2]), 1e-6)
        check("resume-adapter", max(rel_max(sd3[k], sd1[k]) for k in sd1), 1e-6)
    print(f"{'ok  ' if not any(f.startswith(tag) for f in fails) else 'FAIL'} {tag}: " + ", ".join(msgs), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.environ["LORATUNE_LIBRARY"] = os.path.abspath(a.lib)
    import loratune as lt
    work = a.workdir or tempfile.mkdtemp(prefix="lt-pissa-")
    if a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    fails = []
    n = 0
    for case in CASES:
        for init in ("pissa", "olora"):
            n += 1
            try:
                run_case(lt, case, init, work, fails)
            except Exception as e:  # a crash is a failure of the case, not of the script
                import traceback
                traceback.print_exc()
                fails.append(f"{case[0]}/{init}: {type(e).__name__}: {e}")
    for f in fails:
        print("  " + f)
    print(f"crosscheck-pissa: {n} cases, {len(fails)} failures")
    if not fails and not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
