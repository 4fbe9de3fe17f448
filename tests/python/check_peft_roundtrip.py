#!/usr/bin/env python3
"""Check that an adapter (and a merged model) written by libloratune is accepted by PEFT/transformers.

usage: check_peft_roundtrip.py --model DIR --adapter DIR [--logits FILE.safetensors] [--merged DIR]
                               [--tol 1e-4] [--quiet]

adapter check (always):
  - adapter_config.json loads with peft.LoraConfig.from_pretrained (peft_type LORA);
  - the base model (transformers, fp32, eager attention) + PeftModel.from_pretrained(base, ADAPTER)
    loads without any missing/unexpected-key warning;
  - every tensor of adapter_model.safetensors is consumed: a second load of the same directory through
    PeftModel.load_adapter reports no missing and no unexpected keys, the keys of the file equal the
    keys of get_peft_model_state_dict(model) exactly, and each loaded tensor equals the file's;
  - with --logits FILE: FILE holds `input_ids` I32/I64 [B,T] (optional `position_ids` [B,T]: packed
    rows, a 0 at t > 0 starts a new sequence; each sequence is then run separately because
    transformers' eager attention does not isolate packed sequences) and `logits` F32 [B,T,V] written
    by the C side; PEFT's logits must agree: max|diff| / max|PEFT| <= tol.
merged check (--merged DIR): DIR (a merged model directory written by libloratune) loads with plain
  AutoModelForCausalLM.from_pretrained without missing/unexpected/mismatched keys and its logits equal
  PeftModel(base + adapter) logits within tol, on FILE's input_ids (or fixed random ids without --logits).

Prints `peft-roundtrip: N passed, M failed` (one line per failure before it, with the reason);
exit status 0 when all checks passed, 1 otherwise, 2 on bad usage.
"""
import argparse
import json
import os
import sys
import warnings

import offline_env  # noqa: E402,F401  (first: offline, no progress bars, no hub-kernel notices)

import torch  # noqa: E402

torch.set_num_threads(2)

ADAPTER_NAME_CHECK = "roundtrip_check"


class CheckFailed(Exception):
    pass


def rel_err(a, b):
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def key_warnings(records):
    out = []
    for w in records:
        msg = str(w.message)
        low = msg.lower()
        if ("missing" in low or "unexpected" in low or "mismatch" in low or "not initialized" in low) \
                and ("key" in low or "weight" in low):
            out.append(msg.strip().splitlines()[0][:300])
    return out


def segments(pos_row):
    starts = [0] + [t for t in range(1, len(pos_row)) if int(pos_row[t]) == 0]
    return list(zip(starts, starts[1:] + [len(pos_row)]))


@torch.no_grad()
def run_logits(model, ids, pos=None):
    """[B,T,V] fp32 logits; packed rows (position_ids restarting at 0) are run one sequence at a time."""
    if pos is None:
        return model(input_ids=ids).logits.float()
    rows = []
    for b in range(ids.shape[0]):
        parts = [model(input_ids=ids[b:b + 1, s:e]).logits.float() for s, e in segments(pos[b])]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


def load_base(model_dir):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def load_inputs(path, vocab):
    from safetensors.torch import load_file
    if path is None:
        g = torch.Generator().manual_seed(1234)
        return torch.randint(0, vocab, (2, 16), generator=g), None, None
    f = load_file(path)
    if "input_ids" not in f:
        raise CheckFailed(f"{path}: no `input_ids` tensor")
    ids = f["input_ids"].to(torch.long)
    if ids.dim() != 2:
        raise CheckFailed(f"{path}: input_ids must be [B,T], got {list(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise CheckFailed(f"{path}: input_ids out of range [0, {vocab})")
    pos = f.get("position_ids")
    if pos is not None:
        pos = pos.to(torch.long)
        if pos.shape != ids.shape:
            raise CheckFailed(f"{path}: position_ids {list(pos.shape)} != input_ids {list(ids.shape)}")
    return ids, pos, f.get("logits")


def load_peft(model_dir, adapter_dir, log):
    """PeftModel for base + adapter; raises CheckFailed on any sign that the adapter was not fully used."""
    from peft import LoraConfig, PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    st_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    for p in (cfg_path, st_path):
        if not os.path.isfile(p):
            raise CheckFailed(f"missing {p}")
    try:
        cfg = LoraConfig.from_pretrained(adapter_dir)
    except Exception as e:  # noqa: BLE001
        raise CheckFailed(f"LoraConfig.from_pretrained failed: {type(e).__name__}: {e}")
    if str(getattr(cfg.peft_type, "value", cfg.peft_type)) != "LORA":
        raise CheckFailed(f"adapter_config peft_type {cfg.peft_type}")
    log(f"config: r={cfg.r} lora_alpha={cfg.lora_alpha} use_rslora={cfg.use_rslora} "
        f"targets={sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules}")

    with safe_open(st_path, framework="pt") as f:
        meta = f.metadata() or {}
        file_sd = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "pt":
        log(f"note: adapter_model.safetensors metadata {meta} has no format=pt")
    if not file_sd:
        raise CheckFailed("adapter_model.safetensors holds no tensors")

    base = load_base(model_dir)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            pm = PeftModel.from_pretrained(base, adapter_dir)
        except Exception as e:  # noqa: BLE001
            raise CheckFailed(f"PeftModel.from_pretrained failed: {type(e).__name__}: {e}")
        bad = key_warnings(rec)
        if bad:
            raise CheckFailed("PEFT warned while loading: " + " | ".join(bad))
        # load the same directory again under a second name to get PEFT's own load result
        try:
            res = pm.load_adapter(adapter_dir, adapter_name=ADAPTER_NAME_CHECK)
        except Exception as e:  # noqa: BLE001
            raise CheckFailed(f"PeftModel.load_adapter failed: {type(e).__name__}: {e}")
        bad = key_warnings(rec)
    if res.missing_keys or res.unexpected_keys:
        raise CheckFailed(f"load_adapter: missing keys {list(res.missing_keys)[:4]} "
                          f"unexpected keys {list(res.unexpected_keys)[:4]}")
    if bad:
        raise CheckFailed("PEFT warned while loading: " + " | ".join(bad))
    pm.delete_adapter(ADAPTER_NAME_CHECK)
    pm.set_adapter("default")
    pm.eval()

    model_sd = get_peft_model_state_dict(pm, adapter_name="default", save_embedding_layers=False)
    extra = sorted(set(file_sd) - set(model_sd))
    missing = sorted(set(model_sd) - set(file_sd))
    if extra or missing:
        raise CheckFailed(f"adapter keys not consumed by PEFT: {extra[:4]} ({len(extra)}); "
                          f"PEFT expects keys absent from the file: {missing[:4]} ({len(missing)})")
    for k, t in file_sd.items():
        got = model_sd[k]
        if tuple(got.shape) != tuple(t.shape):
            raise CheckFailed(f"{k}: loaded shape {list(got.shape)} != file {list(t.shape)}")
        if not torch.equal(got.detach().cpu().to(torch.float32), t.to(torch.float32)):
            raise CheckFailed(f"{k}: the loaded tensor differs from the file")
    log(f"adapter: {len(file_sd)} tensors, all consumed by PEFT")
    return pm


def check_adapter(a, log):
    pm = load_peft(a.model, a.adapter, log)
    if a.logits is None:
        return pm
    ids, pos, ref_c = load_inputs(a.logits, pm.config.vocab_size)
    if ref_c is None:
        raise CheckFailed(f"{a.logits}: no `logits` tensor")
    if ref_c.dtype != torch.float32:
        log(f"note: logits dtype {ref_c.dtype} (expected float32)")
    exp_shape = (ids.shape[0], ids.shape[1], pm.config.vocab_size)
    if tuple(ref_c.shape) != exp_shape:
        raise CheckFailed(f"logits shape {list(ref_c.shape)}, expected {list(exp_shape)}")
    got = run_logits(pm, ids, pos)
    e = rel_err(ref_c, got)
    with pm.disable_adapter():
        base = run_logits(pm, ids, pos)
    effect = rel_err(got, base)
    log(f"logits: B={ids.shape[0]} T={ids.shape[1]}{' packed' if pos is not None else ''} "
        f"rel err {e:.2e} (tol {a.tol:g}); adapter changes the logits by {effect:.2e}")
    if effect < 1e-6:
        log("note: the adapter does not change the logits (lora_B == 0?): the logits comparison is weak")
    if not e <= a.tol:
        raise CheckFailed(f"logits differ from PEFT: rel err {e:.3e} > {a.tol:g}")
    return pm


def check_merged(a, pm, log):
    from transformers import AutoModelForCausalLM
    if os.path.exists(os.path.join(a.merged, "adapter_config.json")):
        raise CheckFailed(f"{a.merged} contains adapter_config.json (a merged model must not)")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            mm, info = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32,
                                                        attn_implementation="eager",
                                                        output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            raise CheckFailed(f"AutoModelForCausalLM.from_pretrained({a.merged}) failed: {type(e).__name__}: {e}")
    mm.eval()
    info = dict(info or {})
    problems = {k: list(v) for k, v in info.items()
                if k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs") and v}
    if problems:
        raise CheckFailed(f"merged model load: {json.dumps(problems, default=str)[:400]}")
    bad = key_warnings(rec)
    if bad:
        raise CheckFailed("transformers warned while loading the merged model: " + " | ".join(bad))
    sd = mm.state_dict()
    if any("lora" in k for k in sd):
        raise CheckFailed("merged model has lora tensors")
    ids, pos, _ = load_inputs(a.logits, pm.config.vocab_size)
    if mm.config.vocab_size != pm.config.vocab_size:
        raise CheckFailed(f"merged vocab {mm.config.vocab_size} != base {pm.config.vocab_size}")
    ref = run_logits(pm, ids, pos)
    got = run_logits(mm, ids, pos)
    e = rel_err(got, ref)
    log(f"merged: B={ids.shape[0]} T={ids.shape[1]} rel err vs PeftModel {e:.2e} (tol {a.tol:g})")
    if not e <= a.tol:
        raise CheckFailed(f"merged logits differ from base + adapter: rel err {e:.3e} > {a.tol:g}")


def main():
    ap = argparse.ArgumentParser(description="check a libloratune adapter / merged model against PEFT")
    ap.add_argument("--model", required=True, help="base model directory (Hugging Face layout)")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory written by libloratune")
    ap.add_argument("--logits", help="safetensors with input_ids [B,T] (+ position_ids) and logits [B,T,V]")
    ap.add_argument("--merged", help="merged model directory written by libloratune")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (max|diff| / max|ref|)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    if a.logits is None and a.merged is None:
        ap.error("give --logits FILE and/or --merged DIR")

    import transformers
    transformers.logging.set_verbosity_error()   # key problems are checked explicitly, not via logs
    transformers.logging.disable_progress_bar()

    def log(msg):
        if not a.quiet:
            print(msg, flush=True)

    results = []          # (check name, None or failure reason)
    pm, adapter_err = None, None
    try:
        pm = check_adapter(a, log)
    except CheckFailed as e:
        adapter_err = str(e)
    except Exception as e:  # noqa: BLE001
        adapter_err = f"unexpected {type(e).__name__}: {e}"
    if a.logits is not None:
        results.append(("adapter", adapter_err))
    if a.merged is not None:
        if pm is None:
            results.append(("merged", "the adapter did not load" +
                            ("" if a.logits is not None else f": {adapter_err}")))
        else:
            try:
                check_merged(a, pm, log)
                results.append(("merged", None))
            except CheckFailed as e:
                results.append(("merged", str(e)))
            except Exception as e:  # noqa: BLE001
                results.append(("merged", f"unexpected {type(e).__name__}: {e}"))
    for name, err in results:
        if err is not None:
            print(f"FAIL {name}: {' '.join(str(err).split())[:2000]}", flush=True)
    failed = sum(err is not None for _, err in results)
    passed = len(results) - failed
    print(f"peft-roundtrip: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
