#!/usr/bin/env python3
"""Adapter arithmetic (`loratune combine`, lt_adapter_combine) and LoRA extraction (`loratune extract`,
lt_adapter_extract) against an independent PyTorch implementation of mergekit's formulas on delta weights.

usage: crosscheck_combine.py --cli build/loratune --lib build/libloratune.so.0 [--workdir DIR]

Adapters: three PEFT LoRAs saved by peft itself on a held-out random Llama (GQA) and Phi-3 (fused qkv_proj /
gate_up_proj) checkpoint, random A and B (init_lora_weights=False), different ranks and alphas, one rsLoRA.
The reference works on dW_i = s_i B_i A_i read from PEFT's files (s_i applied once) and implements, per module:
  linear: sum w_i dW_i;  TIES: per delta the top int(density * numel) magnitudes, the weighted deltas' sum
  consensus (+ when the sum >= 0), the agreeing entries summed and divided by their weights' sum (0 -> 1)
  (mergekit ties, normalize); DARE: keep with probability density by the library's documented counter hash
  (reimplemented here in numpy), rescale 1 / density, then linear (dare_linear) or the consensus without the
  division (dare_ties); magnitude prune: the TIES trimming, then linear; SLERP: mergekit's slerp() of the two
  flattened deltas.
Checks (max|ours - ref| / max|ref|):
 1. rank 0 (exact): every method's saved adapter (s B A of the PEFT directory written) = the reference, 1e-5;
    cat: rank = sum of the ranks and the delta = sum w_i dW_i, 1e-6;
 2. rank r: the delta = the best rank-r approximation of the reference (Eckart-Young, from torch's SVD), 1e-4,
    and the reported kept energy = the sum of the top-r squared singular values over modules, 1e-4;
 3. --into-base: the written model's weights = base + the reference delta, 1e-5;
 4. malformed inputs give clear statuses: different target sets, adapters of two different models (C API:
    LT_ERR_ARGUMENT), density 0 and 1.5, rank -1, SLERP of three adapters, a DoRA adapter;
 5. extraction from a full fine-tune (3 AdamW steps of PyTorch on every linear weight of the random Llama): at
    full rank our logits with the extracted adapter = transformers' logits of the tuned model (1e-4); at rank r
    the per-module captured energy = the sum of the top-r squared singular values of (tuned - base) (1e-4) and
    the total = ||tuned - base||_F^2; a tuned model whose norm also moved: that norm is reported.
Exits 1 if any check fails.
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys

import offline_env  # noqa: F401
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lt_ctypes  # noqa: E402
torch.set_num_threads(2)
failures, passed = [], []
M64 = (1 << 64) - 1


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    (passed if ok else failures).append(what)
    return ok


def rel(a, b):
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


def run(cmd, expect=0):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if expect == 0 and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


# ---- the reference -----------------------------------------------------------------------------------------
def deltas(adir):
    """{module key: s B A} of a PEFT directory"""
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(adir, "adapter_config.json")))
    sd = load_file(os.path.join(adir, "adapter_model.safetensors"))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    out = {}
    for k, A in sd.items():
        if ".lora_A." in k:
            out[k.replace(".lora_A.weight", "")] = s * (sd[k.replace("lora_A", "lora_B")].double() @ A.double()).float()
    return out


def magnitude(x, density):
    if density >= 1:
        return x
    k = int(density * x.numel())
    mask = torch.zeros_like(x)
    mask.view(-1)[torch.argsort(x.abs().view(-1), descending=True, stable=True)[:k]] = 1
    return x * mask


def hash_uniform(seed, n):
    """the library's counter hash (splitmix64 of seed + golden * (index + 1)), as float32 in [0, 1)"""
    idx = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15) * (idx + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def dare(x, density, seed):
    if density >= 1:
        return x
    keep = torch.from_numpy(hash_uniform(seed, x.numel()) < np.float32(density)).view(x.shape)
    return torch.where(keep, x * (1.0 / torch.tensor(density, dtype=torch.float32)), torch.zeros_like(x))


def slerp(t, v0, v1, thr=0.9995, eps=1e-8):  # mergekit's, in float64
    a, b = v0.double(), v1.double()
    na, nb = a / a.norm() if a.norm() > eps else a, b / b.norm() if b.norm() > eps else b
    dot = float((na * nb).sum())
    if abs(dot) > thr:
        return ((1 - t) * a + t * b).float()
    th = np.arccos(dot)
    return (np.sin(th - th * t) / np.sin(th) * a + np.sin(th * t) / np.sin(th) * b).float()


def reference(method, ds, w, density, t, seed, first_proj):
    """the combined delta of every module key"""
    out = {}
    for key in ds[0]:
        layer = int(re.search(r"layers\.(\d+)\.", key).group(1))
        q = first_proj[key.split(".")[-1]]
        xs = [d[key] for d in ds]
        if method == "slerp":
            out[key] = slerp(t, xs[0], xs[1])
            continue
        if method in ("ties", "magnitude_prune"):
            xs = [magnitude(x, density) for x in xs]
        if method in ("dare_linear", "dare_ties"):
            xs = [dare(x, density, (seed ^ ((i + 1) << 48) ^ (layer << 24) ^ q) & M64) for i, x in enumerate(xs)]
        wd = torch.stack([wi * x for wi, x in zip(w, xs)])
        if method in ("ties", "dare_ties"):
            sign = (wd.sum(0) >= 0).float() * 2 - 1
            mask = (wd.sign() == sign).float()
            mixed = (wd * mask).sum(0)
            div = (torch.tensor(w).view(-1, 1, 1) * mask).sum(0)
            div[div == 0] = 1
            out[key] = mixed / div if method == "ties" else mixed
        else:
            out[key] = wd.sum(0)
    return out


# ---- files ---------------------------------------------------------------------------------------------------
LLAMA_T = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FIRST = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3, "gate_proj": 4, "up_proj": 5, "down_proj": 6,
         "qkv_proj": 0, "gate_up_proj": 4}


def make_model(work, name, cls, kw, seed):
    import transformers
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kw), dtype=torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    m.save_pretrained(d)
    return d, m


def make_adapter(model, d, r, alpha, rslora, targets, seed, dora=False):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=targets,
                                          init_lora_weights=False, use_dora=dora))
    pm.save_pretrained(d)
    pm.unload()
    return d


class Lib(lt_ctypes.Lib):
    def model(self, d):
        return super().model(d)[0]

    def logits(self, m, ad, ids, V):
        return torch.tensor(super().logits(m, V, ad, ids))


def check_family(args, name, cls, kw, targets, seed):
    print(f"== {name}")
    work = args.workdir
    mdir, model = make_model(work, name, cls, kw, seed)
    ads = [make_adapter(model, os.path.join(work, f"{name}-a{i}"), r, a, rs, targets, seed + i)
           for i, (r, a, rs) in enumerate([(4, 8.0, False), (6, 3.0, True), (2, 5.0, False)])]
    ds = [deltas(a) for a in ads]
    w = [0.7, -0.4, 0.9]
    density, t, seed_dare = 0.4, 0.3, 12345
    for method in ("cat", "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune", "slerp"):
        use = ads[:2] if method == "slerp" else ads
        out = os.path.join(work, f"{name}-{method}")
        r = run([args.cli, "combine", "--model", mdir, "--adapters", ",".join(use), "--method", method, "--weights",
                 ",".join(map(str, w[:len(use)])), "--density", str(density), "--t", str(t), "--seed", str(seed_dare),
                 "--out", out, "--json"])
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        got = deltas(out)
        ref = reference(method, ds[:len(use)], w[:len(use)], density, t, seed_dare, FIRST)
        err = max(rel(got[k], ref[k]) for k in ref)
        tol = 1e-6 if method == "cat" else 1e-5
        extra = f", rank {rep['rank']} = sum of ranks 12" if method == "cat" else ""
        check(err <= tol and set(got) == set(ref) and (method != "cat" or rep["rank"] == 12),
              f"{name}: {method} (exact){extra}: max rel error {err:.2e} (<= {tol})")
    # truncated: the best rank-r approximation, energy as reported
    for method, rank in (("ties", 3), ("cat", 5)):
        out = os.path.join(work, f"{name}-{method}-r{rank}")
        r = run([args.cli, "combine", "--model", mdir, "--adapters", ",".join(ads), "--method", method, "--weights",
                 ",".join(map(str, w)), "--density", str(density), "--rank", str(rank), "--out", out, "--json"])
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        got, ref = deltas(out), reference(method if method != "cat" else "linear", ds, w, density, t, 0, FIRST)
        err, kept, total = 0.0, 0.0, 0.0
        for k, D in ref.items():
            U, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
            best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
            err = max(err, rel(got[k].double(), best))
            kept += float((S[:rank] ** 2).sum())
            total += float((S ** 2).sum())
        check(err <= 1e-4 and abs(rep["kept_energy"] - kept) <= 1e-4 * kept and abs(rep["total_energy"] - total)
              <= 1e-4 * total, f"{name}: {method} at rank {rank}: the best rank-{rank} approximation ({err:.2e}), kept "
                               f"energy {rep['kept_energy']:.6g} = sum of the top-{rank} squared singular values "
                               f"{kept:.6g} (share {kept / total:.4f})")
    # into the base
    out = os.path.join(work, f"{name}-into-base")
    run([args.cli, "combine", "--model", mdir, "--adapters", ",".join(ads), "--method", "ties", "--weights",
         ",".join(map(str, w)), "--density", str(density), "--into-base", "--out", out])
    from safetensors.torch import load_file
    base, merged = load_file(os.path.join(mdir, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    ref = reference("ties", ds, w, density, t, 0, FIRST)
    err = 0.0
    for k, D in ref.items():
        wk = k.replace("base_model.model.", "") + ".weight"
        err = max(err, rel(merged[wk] - base[wk], D))
    untouched = all(torch.equal(merged[k], base[k]) for k in base if not any(k.startswith(x.replace(
        "base_model.model.", "")) for x in ref))
    check(err <= 1e-5 and untouched, f"{name}: ties into the base: W' - W = the reference delta ({err:.2e}), every "
                                     f"other tensor unchanged")
    return mdir, model, ads


def malformed(args, lib, mdir, model, ads):
    print("== malformed inputs")
    work = args.workdir
    other = make_adapter(model, os.path.join(work, "targets-qv"), 4, 8.0, False, ["q_proj", "v_proj"], 77)
    dora = make_adapter(model, os.path.join(work, "dora"), 4, 8.0, False, LLAMA_T, 78, dora=True)
    cases = [
        (["--adapters", f"{ads[0]},{other}"], "target sets must be equal"),
        (["--adapters", ",".join(ads[:2]), "--method", "ties", "--density", "0"], "density 0 is not in (0, 1]"),
        (["--adapters", ",".join(ads[:2]), "--method", "dare_linear", "--density", "1.5"], "density 1.5 is not in (0, 1]"),
        (["--adapters", ",".join(ads[:2]), "--rank", "-1"], "rank -1 is not in [0, 4096]"),
        (["--adapters", ",".join(ads), "--method", "slerp"], "slerp takes exactly two adapters"),
        (["--adapters", f"{ads[0]},{dora}"], "DoRA"),
    ]
    for extra, want in cases:
        r = run([args.cli, "combine", "--model", mdir, "--out", os.path.join(work, "bad"), *extra], expect=1)
        check(r.returncode == 1 and want in r.stderr and "combine: combine:" not in r.stderr,
              f"combine {' '.join(extra[2:]) or 'targets'}: {r.stderr.strip()}")
    # two models: the C API refuses adapters of different lt_model handles
    m1, m2 = lib.model(mdir), lib.model(mdir)
    a1, a2 = lib.adapter(m1, ads[0]), lib.adapter(m2, ads[1])
    arr = (lib.L.lt_adapter_p * 2)(a1, a2)
    cp = lib.L.init_struct(lib.lib.lt_combine_params_init, lib.L.lt_combine_params)
    res = lib.L.lt_adapter_p()
    st = lib.lib.lt_adapter_combine(arr, 2, ctypes.byref(cp), ctypes.byref(res), None)
    msg = lib.lib.lt_last_error().decode()
    check(lib.lib.lt_status_string(st).decode().startswith("LT_ERR_ARGUMENT") and "mismatched bases" in msg,
          f"adapters of two models: {lib.lib.lt_status_string(st).decode()}: {msg}")
    r = run([args.cli, "extract", "--base", mdir, "--tuned", os.path.join(work, "phi3"), "--out",
             os.path.join(work, "bad")], expect=1)
    check(r.returncode == 1 and "extract:" in r.stderr and "extract: extract:" not in r.stderr,
          f"extract from another architecture: {r.stderr.strip()}")


def extraction(args, lib, mdir, model):
    print("== extraction")
    import transformers
    work = args.workdir
    tuned = transformers.AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32)
    for n, p in tuned.named_parameters():
        p.requires_grad = n.endswith("proj.weight")
    opt = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(5)
    V = tuned.config.vocab_size
    for _ in range(3):
        ids = torch.randint(0, V, (2, 16), generator=g)
        loss = tuned(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tdir = os.path.join(work, "tuned")
    tuned.save_pretrained(tdir)
    full = min(tuned.config.hidden_size, tuned.config.intermediate_size)
    out = os.path.join(work, "extracted-full")
    r = run([args.cli, "extract", "--base", mdir, "--tuned", tdir, "--rank", str(full), "--out", out, "--json"])
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    m = lib.model(mdir)
    ad = lib.adapter(m, out)
    ids = [int(x) for x in torch.randint(0, V, (24,), generator=g)]
    ours = lib.logits(m, ad, ids, V)
    with torch.no_grad():
        want = tuned(input_ids=torch.tensor([ids])).logits[0]
    e = rel(ours, want)
    check(e <= 1e-4 and rep["others_max_diff"] == 0, f"extract at full rank {full}: our logits with the adapter = "
                                                      f"the tuned model's (transformers): {e:.2e} (<= 1e-4)")
    rank = 5
    r = run([args.cli, "extract", "--base", mdir, "--tuned", tdir, "--rank", str(rank), "--out",
             os.path.join(work, "extracted-r5"), "--json"])
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    from safetensors.torch import load_file
    b, t = load_file(os.path.join(mdir, "model.safetensors")), load_file(os.path.join(tdir, "model.safetensors"))
    worst = 0.0
    for mod in rep["modules"]:
        key = [k for k in b if f"layers.{mod['layer']}." in k and k.endswith(f"{mod['module']}.weight")][0]
        S = torch.linalg.svdvals((t[key] - b[key]).double())
        worst = max(worst, abs(mod["kept"] - float((S[:rank] ** 2).sum())) / float((S ** 2).sum()),
                    abs(mod["total"] - float((S ** 2).sum())) / float((S ** 2).sum()))
    check(worst <= 1e-4 and len(rep["modules"]) == 7 * tuned.config.num_hidden_layers,
          f"extract at rank {rank}: per module captured energy = sum of the top-{rank} squared singular values, total "
          f"= ||tuned - base||^2 ({len(rep['modules'])} modules, {worst:.2e})")
    with torch.no_grad():
        tuned.model.norm.weight.add_(0.5)
    tuned.save_pretrained(tdir + "-norm")
    r = run([args.cli, "extract", "--base", mdir, "--tuned", tdir + "-norm", "--rank", "4", "--out",
             os.path.join(work, "extracted-norm")])
    check("model.norm.weight differs by up to 0.5" in r.stderr, f"a moved norm is reported: {r.stderr.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--workdir", default="build/crosscheck-combine")
    args = ap.parse_args()
    args.cli = os.path.abspath(args.cli)
    os.makedirs(args.workdir, exist_ok=True)
    lib = Lib(os.path.abspath(args.lib))
    small = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64)
    try:
        check_family(args, "phi3", "Phi3Config", dict(small, num_key_value_heads=2, pad_token_id=0),
                     ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], 300)
        mdir, model, ads = check_family(args, "llama", "LlamaConfig", dict(small, num_key_value_heads=2), LLAMA_T, 200)
        malformed(args, lib, mdir, model, ads)
        extraction(args, lib, mdir, model)
    except Exception as e:
        import traceback
        traceback.print_exc()
        check(False, f"{type(e).__name__}: {e}")
    for f in failures:
        print("  FAIL", f)
    print(f"crosscheck_combine: {len(passed)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
