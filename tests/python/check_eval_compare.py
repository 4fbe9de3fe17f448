#!/usr/bin/env python3
"""Did fine-tuning help, on the demo model (tools/demo.sh's flow), and is the run recorded so it can be re-run?

    python check_eval_compare.py --cli build/loratune --workdir DIR

1. `loratune demo --steps 1` writes the demo's base model (random weights, byte-level tokenizer.json) and its
   data as JSONL (16 taught question/answer lines, 4 held out, the 20 questions with expected answers).
2. `loratune train --canary` on the taught lines (a random canary inserted 4 times).
3. `loratune eval --compare --run`: required
   - held-out loss lower with the adapter, per-row losses and the canary's log-likelihood equal to PyTorch
     + PEFT on the same model, adapter and rows (|diff| <= 2e-3 nats per row, float32);
   - the taught answers: the adapter answers at least 14 of the 16 exactly, the base none;
   - the canary's exposure: >= 90% of its maximum with the adapter, < 4 bits with the base (exposure =
     log2(#candidates) - log2(rank), Carlini et al. 2019);
   - a markdown report with every section and the loss-curve SVG (well-formed XML) beside it.
4. The model card: README.md is YAML front matter (PyYAML) + markdown with the Hub's keys (base_model,
   library_name: peft, tags, datasets) and every section; training_args.json holds the data's sha256.
5. `loratune train --config run/adapter/training_args.json --out run2` (a short run with a canary): the adapter is
   identical byte for byte; `loratune merge` writes a card with library_name: transformers.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import xml.dom.minidom

import offline_env  # noqa: F401

import torch
import yaml


def run(args, *a):
    r = subprocess.run([args.cli, *a], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"loratune {' '.join(a)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def check_card(path, kind, bad):
    text = open(path, encoding="utf-8").read()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        bad.append(f"{path}: no YAML front matter")
        return None
    front = yaml.safe_load(text[4:text.index("\n---\n", 4)])
    want_lib = "peft" if kind == "adapter" else "transformers"
    for k in ("base_model", "library_name", "tags", "pipeline_tag"):
        if k not in front:
            bad.append(f"{path}: front matter without {k}")
    if front.get("library_name") != want_lib:
        bad.append(f"{path}: library_name {front.get('library_name')} (want {want_lib})")
    tag = ("base_model:adapter:" if kind == "adapter" else "base_model:finetune:") + str(front.get("base_model"))
    if tag not in front.get("tags", []) or "loratune" not in front.get("tags", []):
        bad.append(f"{path}: tags {front.get('tags')}")
    body = text[text.index("\n---\n", 4) + 5:]
    for sec in ("## Method and hyperparameters", "## Training data", "## Evaluation", "## Compute", "## Intended use",
                "## Limitations"):
        if sec not in body:
            bad.append(f"{path}: no section {sec!r}")
    return front


def torch_nll(base_dir, adapter_dir, texts):
    """Per-text summed NLL (BOS + bytes + EOS, every token predicted) with transformers + PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(base_dir)
    out = {}
    for name, ad in (("base", None), ("adapter", adapter_dir)):
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
        if ad:
            model = PeftModel.from_pretrained(model, ad)
        model.eval()
        res = []
        for t in texts:
            ids = torch.tensor([tok(t + tok.eos_token)["input_ids"]])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].double()
            res.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")))
        out[name] = res
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--workdir", default="build/eval-compare")
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    w = os.path.abspath(args.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    bad = []
    run(args, "demo", "--out", w, "--steps", "1", "--threads", "1")
    base, data = os.path.join(w, "base-model"), os.path.join(w, "data")
    train = ["train", "--model", base, "--data", f"{data}/train.jsonl", "--eval-data", f"{data}/heldout.jsonl",
             "--rank", "16", "--lr", "3e-3", "--scheduler", "cosine", "--warmup", "10", "--batch", "8", "--canary",
             "--canary-repeat", "4", "--threads", "1", "--quiet", "--eval-every", "20"]
    run(args, *train, "--out", f"{w}/run", "--steps", str(args.steps))
    report = f"{w}/report.md"
    j = json.loads(run(args, "eval", "--compare", "--model", base, "--adapter", f"{w}/run/adapter", "--run", f"{w}/run", "--data",
                       f"{data}/heldout.jsonl", "--prompts", f"{data}/prompts.jsonl", "--report", report, "--json",
                       "--candidates", "200", "--max-new-tokens", "12", "--threads", "1"))
    # held-out loss, per row, against PyTorch + PEFT
    h = j["heldout"]
    if not h["loss"][1] < h["loss"][0] or h["wins"] != h["rows"]:
        bad.append(f"held-out: loss {h['loss']}, wins {h['wins']}/{h['rows']}")
    texts = [json.loads(l)["text"] for l in open(f"{data}/heldout.jsonl")]
    canary = j["canaries"][0]
    ref = torch_nll(base, f"{w}/run/adapter", texts + [canary["canary"]])
    for s, name in enumerate(("base", "adapter")):
        for i, r in enumerate(h["per_row"]):
            want = ref[name][i] / r["tokens"]
            if abs(r["loss"][s] - want) > 2e-3:
                bad.append(f"held-out row {i + 1} {name}: loss {r['loss'][s]:.6f} vs PyTorch+PEFT {want:.6f}")
        if abs(canary["nll"][s] - ref[name][-1]) > 2e-3 * 45:
            bad.append(f"canary NLL {name}: {canary['nll'][s]:.5f} vs PyTorch+PEFT {ref[name][-1]:.5f}")
    # taught answers
    rows = j["prompts"]["rows"]
    prompts = [json.loads(l) for l in open(f"{data}/prompts.jsonl")]
    taught = [r for r, p in zip(rows, prompts) if p["taught"]]
    ok = [sum(r["correct"][s] for r in taught) for s in range(2)]
    if ok[1] < 14 or ok[0] > 0:
        bad.append(f"taught answers correct: base {ok[0]}/16, adapter {ok[1]}/16")
    # canary exposure
    mx = math.log2(canary["candidates"])
    if abs(canary["max_exposure"] - mx) > 1e-9 or any(
            abs(canary["exposure"][s] - (mx - math.log2(canary["rank"][s]))) > 1e-9 for s in range(2)):
        bad.append(f"canary exposure is not log2(candidates) - log2(rank): {canary}")
    if canary["exposure"][1] < 0.9 * mx or canary["exposure"][0] >= 4:
        bad.append(f"canary exposure: base {canary['exposure'][0]:.2f}, adapter {canary['exposure'][1]:.2f} of {mx:.2f}")
    # the report and its loss curve
    md = open(report, encoding="utf-8").read()
    for sec in ("## Held-out data", "## Expected answers", "## Canaries", "## The training run", "![loss curve](loss-curve.svg)"):
        if sec not in md:
            bad.append(f"report: no {sec!r}")
    try:
        xml.dom.minidom.parse(f"{w}/loss-curve.svg")
    except Exception as e:
        bad.append(f"loss-curve.svg: {e}")
    # the model card and the record
    front = check_card(f"{w}/run/adapter/README.md", "adapter", bad)
    rec = json.load(open(f"{w}/run/adapter/training_args.json"))
    sha = hashlib.sha256(open(f"{data}/train.jsonl", "rb").read()).hexdigest()
    if rec["data"][0]["sha256"] != sha or rec["data"][0]["rows"] != 16:
        bad.append(f"training_args.json data: {rec['data'][0]} (sha256 {sha})")
    if front and front.get("datasets") != ["train.jsonl"]:
        bad.append(f"card datasets {front.get('datasets')}")
    # re-run from the record: the same adapter, byte for byte
    run(args, *train, "--out", f"{w}/short", "--steps", "12")
    run(args, "train", "--config", f"{w}/short/adapter/training_args.json", "--out", f"{w}/short2")
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        if open(f"{w}/short/adapter/{f}", "rb").read() != open(f"{w}/short2/adapter/{f}", "rb").read():
            bad.append(f"train --config: {f} differs from the recorded run's")
    run(args, "merge", "--model", base, "--adapter", f"{w}/short/adapter", "--out", f"{w}/merged")
    check_card(f"{w}/merged/README.md", "merged", bad)
    for b in bad:
        print("PROBLEM:", b)
    print(f"eval --compare on the demo model: held-out loss {h['loss'][0]:.3f} -> {h['loss'][1]:.3f}, taught answers "
          f"{ok[0]}/16 -> {ok[1]}/16, canary exposure {canary['exposure'][0]:.2f} -> {canary['exposure'][1]:.2f} "
          f"(max {mx:.2f}); card, record, train --config: {'OK' if not bad else 'FAILED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
