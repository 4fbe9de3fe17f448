#!/usr/bin/env python3
"""`loratune generate --prompt / --messages` and `loratune chat` against transformers.

    python check_text_generation.py --cli build/loratune --tokenizers build/testdata/tokenizers --workdir DIR

Models: random Llama models whose vocabulary is a real tokenizer's (the tokenizer goldens of
make_tokenizer_goldens.py): a byte-level BPE with the Qwen 2.5 (ChatML) template, and a SentencePiece
tokenizer (Mistral v3 vocabulary, byte fallback) with mistral-common's v3 template. Checks, each exact:
  --messages: apply_chat_template(add_generation_prompt=True) + greedy generate, decoded with
              skip_special_tokens: same prompt length, same ids, same text (EOS ids from
              generation_config.json, a list);
  --prompt:   tokenizer(text) + greedy generate;
  EOS list:   generation_config.json naming a second EOS id the reply reaches: both stop there;
  --stop:     the reply ends where the stop string begins (the text of a run without it, cut there);
  streaming:  what is printed as the reply arrives equals the --json text;
  chat:       in a terminal (tmux send-keys / capture-pane): two turns, /history equals the conversation
              generate --messages produces turn by turn, /system and /reset. Skipped when tmux is missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import offline_env  # noqa: F401

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

CONVS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one, with \u00e9 and \u4e16."}],
]
MAX_NEW = 24


def mistral_v3_template():
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    return generate_chat_template(spm=True, tokenizer_version=TokenizerVersion("v3"), image_support=False,
                                  audio_support=False, thinking_support=False, default_system_prompt=None,
                                  plain_thinking_support=False, use_special_token_variables=True,
                                  model_settings_fields=None, reasoning_effort_values=None,
                                  reasoning_effort_default=None)


def make_model(d, tok_dir, template, seed, allowed=None):
    """A random Llama with the tokenizer's vocabulary; allowed: token ids the LM head can pick (others get a
    zero row, so a terminal sees printable text)."""
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), d)
    with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    tok = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(seed)
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(conf).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
        if allowed is not None:
            keep = torch.zeros(len(tok), dtype=torch.bool)
            keep[list(allowed)] = True
            model.lm_head.weight[~keep] = 0
    model.save_pretrained(d, safe_serialization=True)
    return tok, model


def set_eos(d, eos):
    GenerationConfig(eos_token_id=eos, bos_token_id=None).save_pretrained(d)


def reference(model, d, ids):
    gen = GenerationConfig.from_pretrained(d)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=gen.eos_token_id,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def cli(args, *a, check=True):
    r = subprocess.run([args.cli, *a], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(a)}: exit {r.returncode}: {r.stderr}")
    return r


def trim_eos(ids, eos):
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def check_model(args, name, tok_dir, template, bad):
    d = os.path.join(args.workdir, name)
    tok, model = make_model(d, tok_dir, template, seed=11)
    eos = [tok.eos_token_id]
    set_eos(d, eos)
    for ci, conv in enumerate(CONVS):
        mf = os.path.join(d, f"conv{ci}.json")
        with open(mf, "w") as f:
            json.dump(conv, f, ensure_ascii=False)
        p_ids = list(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        want = reference(model, d, p_ids)
        got = json.loads(cli(args, "generate", "--model", d, "--messages", mf, "--json", "--max-new-tokens",
                             str(MAX_NEW), "--threads", "1").stdout)
        want_text = tok.decode([t for t in want if t not in eos], skip_special_tokens=True)
        if got["prompt_tokens"] != len(p_ids) or got["ids"] != want or got["text"] != want_text:
            bad.append(f"{name} conv {ci}: --messages {got} vs transformers ids {want} text {want_text!r}")
        # streaming: the printed text is the --json text
        streamed = cli(args, "generate", "--model", d, "--messages", mf, "--max-new-tokens", str(MAX_NEW),
                       "--threads", "1").stdout
        if streamed != got["text"] + "\n":
            bad.append(f"{name} conv {ci}: streamed {streamed!r} vs {got['text']!r}")
        if ci == 0:
            # a list of EOS ids: the second one is the 6th token of this reply
            full = reference(model, d, p_ids)
            if len(full) >= 6 and full[5] not in full[:5]:
                set_eos(d, [tok.eos_token_id, full[5]])
                want2 = reference(model, d, p_ids)
                got2 = json.loads(cli(args, "generate", "--model", d, "--messages", mf, "--json", "--max-new-tokens",
                                      str(MAX_NEW), "--threads", "1").stdout)
                if got2["ids"] != want2 or got2["stop"] != "eos" or len(want2) != 6:
                    bad.append(f"{name}: EOS list: {got2} vs transformers {want2}")
                set_eos(d, eos)
            # --stop: the text of a run to the end, cut where the stop string begins
            nostop = json.loads(cli(args, "generate", "--model", d, "--messages", mf, "--json", "--no-eos",
                                    "--max-new-tokens", str(MAX_NEW), "--threads", "1").stdout)["text"]
            if len(nostop) > 8:
                s = nostop[len(nostop) // 2:len(nostop) // 2 + 2]
                cut = nostop[:nostop.index(s)]
                r = json.loads(cli(args, "generate", "--model", d, "--messages", mf, "--json", "--no-eos", "--stop",
                                   s, "--max-new-tokens", str(MAX_NEW), "--threads", "1").stdout)
                st = cli(args, "generate", "--model", d, "--messages", mf, "--no-eos", "--stop", s,
                         "--max-new-tokens", str(MAX_NEW), "--threads", "1").stdout
                if r["text"] != cut or r["stop"] != "stop" or st != cut + "\n":
                    bad.append(f"{name}: --stop {s!r}: {r['text']!r} / streamed {st!r} vs {cut!r}")
    # --prompt: tokenizer(text) with its special tokens
    text = "The capital of France is"
    p_ids = tok(text)["input_ids"]
    want = reference(model, d, p_ids)
    got = json.loads(cli(args, "generate", "--model", d, "--prompt", text, "--json", "--max-new-tokens", str(MAX_NEW),
                         "--threads", "1").stdout)
    want_text = tok.decode([t for t in want if t not in eos], skip_special_tokens=True)
    if got["prompt_tokens"] != len(p_ids) or got["ids"] != want or got["text"] != want_text:
        bad.append(f"{name}: --prompt {got} vs transformers ids {want} text {want_text!r}")
    print(f"{name}: generate --messages / --prompt / EOS list / --stop / streaming checked")


def tmux(*a):
    return subprocess.run(["tmux", *a], capture_output=True, text=True)


def pane(sess):
    return tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", sess).stdout


def wait_for(sess, pred, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        txt = pane(sess)
        if pred(txt):
            return txt
        time.sleep(0.2)
    raise SystemExit(f"chat: timed out; the pane shows:\n{pane(sess)}")


def check_chat(args, tok_dir, bad):
    if shutil.which("tmux") is None:
        print("chat: SKIPPED (tmux is not installed)")
        return
    d = os.path.join(args.workdir, "chat-model")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    # replies a terminal shows as they are: tokens of letters, digits and spaces only
    allowed = [i for i in range(len(tok)) if tok.decode([i]).strip() and all(c.isalnum() or c == " " for c in tok.decode([i]))
               and all(ord(c) < 128 for c in tok.decode([i]))]
    with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
        template = json.load(f)["chat_template"]
    make_model(d, tok_dir, template, seed=5, allowed=allowed)
    set_eos(d, [tok.eos_token_id])
    sess = f"lt-chat-{os.getpid()}"
    cmd = f"{os.path.abspath(args.cli)} chat --model {d} --max-new-tokens 8 --threads 1"
    tmux("kill-session", "-t", sess)
    if tmux("new-session", "-d", "-s", sess, "-x", "200", "-y", "50", cmd).returncode != 0:
        raise SystemExit("chat: tmux new-session failed")
    try:
        wait_for(sess, lambda t: t.rstrip().endswith(">"))
        turns = ["Hi there", "Tell me more"]
        conv = []
        for k, u in enumerate(turns):
            tmux("send-keys", "-t", sess, u, "Enter")
            wait_for(sess, lambda t: t.count("\n> ") >= k + 2 or t.rstrip().count(">") >= k + 2 and t.rstrip().endswith(">"))
            conv.append({"role": "user", "content": u})
            mf = os.path.join(args.workdir, f"chat{k}.json")
            with open(mf, "w") as f:
                json.dump(conv, f)
            reply = json.loads(cli(args, "generate", "--model", d, "--messages", mf, "--json", "--max-new-tokens", "8",
                                   "--threads", "1").stdout)["text"]
            conv.append({"role": "assistant", "content": reply})
        tmux("send-keys", "-t", sess, "/history", "Enter")
        txt = wait_for(sess, lambda t: "\n]\n" in t)
        hist = txt[txt.index("> /history\n") + len("> /history\n"):]
        hist = json.loads(hist[:hist.index("\n]\n") + 2])
        if hist != conv:
            bad.append(f"chat: /history {hist} vs generate --messages turn by turn {conv}")
        tmux("send-keys", "-t", sess, "/system Be brief.", "Enter")
        wait_for(sess, lambda t: "(system prompt set)" in t)
        tmux("send-keys", "-t", sess, "/reset", "Enter")
        wait_for(sess, lambda t: "(the conversation is reset)" in t)
        tmux("send-keys", "-t", sess, "/history", "Enter")
        txt = wait_for(sess, lambda t: t.count("> /history") == 2 and t.rstrip().endswith(">"))
        last = txt[txt.rindex("> /history\n") + len("> /history\n"):]
        last = json.loads(last[:last.index("\n]\n") + 2])
        if last != [{"role": "system", "content": "Be brief."}]:
            bad.append(f"chat: after /system and /reset the history is {last}")
        tmux("send-keys", "-t", sess, "/quit", "Enter")
        t0 = time.time()
        while tmux("has-session", "-t", sess).returncode == 0 and time.time() - t0 < 10:
            time.sleep(0.2)
        if tmux("has-session", "-t", sess).returncode == 0:
            bad.append("chat: /quit did not end the session")
        print("chat: two turns, /history, /system, /reset, /quit checked in tmux")
    finally:
        tmux("kill-session", "-t", sess)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--tokenizers", required=True, help="build/testdata/tokenizers")
    ap.add_argument("--workdir", default="build/text-generation")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    bad = []
    with open(os.path.join(args.tokenizers, "chat", "qwen2_5", "tokenizer_config.json")) as f:
        qwen = json.load(f)["chat_template"]
    check_model(args, "bytelevel-chatml", os.path.join(args.tokenizers, "chat", "qwen2_5"), qwen, bad)
    check_model(args, "sentencepiece-mistral-v3", os.path.join(args.tokenizers, "sp-mistral-v3"), mistral_v3_template(),
                bad)
    check_chat(args, os.path.join(args.tokenizers, "chat", "llama3"), bad)
    for b in bad:
        print("DIFFERENCE:", b[:1500])
    print("text generation:", "OK" if not bad else f"{len(bad)} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
