#!/usr/bin/env python3
"""Real chat templates rendered by libloratune and by transformers' apply_chat_template: identical text
(and {% generation %} ranges), or the same raise_exception() message, in every case.

    python check_chat_templates.py --lib build/libloratune.so.0 [--workdir DIR] [--sources llamacpp,trl,mistral]
                                   [--json OUT] [--only SUBSTR] [--show N] [--measure]

Templates (none is committed to the repository: each is read at test time from a pinned, hash-checked
package of tests/python/requirements.lock or from the pinned llama-cpp-python sdist):
  llamacpp  llama.cpp's models/templates/*.jinja inside the llama-cpp-python sdist that
            tools/llamacpp.sh src fetches and sha256-checks (templates copied from model repositories)
  trl       trl/chat_templates/*.jinja (the templates TRL ships, and their {% generation %} variants)
  mistral   the templates mistral-common generates for its tokenizer versions (spm / tekken, with and
            without thinking and model settings)
  features  chat_template_features.py: templates written here, one group of Jinja features each (macros with
            starred arguments, call and filter blocks, multi-line strings, loops, tests, slicing, string
            methods, filters, tojson, Python values, strftime_now / raise_exception, tool use)
Each template renders CONVERSATIONS below (system prompts, multi-turn, tool calls and tool results with a
tools list, unicode, empty content, content parts, reasoning), with and without add_generation_prompt, as
apply_chat_template(tokenize=False) renders it: messages without None values, reasoning fields aliased,
bos/eos tokens passed, strftime_now at a fixed date (SOURCE_DATE_EPOCH, which libloratune honours).

Outcomes per case: "same" (identical text; identical generation ranges for templates that have them),
"same-error" (both raise; a raise_exception() message must be equal), else a difference. The share of
identical cases is printed per template. --require lists templates (or "all") that must be at 100%: exit
status 1 otherwise. --measure prints the nesting depth and render steps libloratune measured for each
template (the figures behind its resource limits).
"""
import argparse
import ctypes
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

import offline_env  # noqa: F401  (first: offline, quiet)

FIXED_EPOCH = 1752537600  # 2025-07-15 00:00:00 UTC: what strftime_now returns on both sides

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
        "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "first"},
                                                         "b": {"type": "integer", "description": "second"}},
                       "required": ["a", "b"]}}}]

TOOL_CALL = {"id": "call12345", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}

# (name, messages, extra template variables)
CONVERSATIONS = [
    ("system", [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello! How can I help?"}], {}),
    ("multi-turn", [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, of course."},
                    {"role": "user", "content": "Thanks."}], {}),
    ("unicode", [{"role": "user", "content": "  h\u00e9llo \u4e16\u754c \U0001F600\n\n\"quotes\" 'and' {{ braces }}"},
                 {"role": "assistant", "content": "  spaced\tanswer \u00fc\u00df  \n"}], {}),
    ("empty", [{"role": "system", "content": ""}, {"role": "user", "content": ""}, {"role": "assistant", "content": ""},
               {"role": "user", "content": "next"}], {}),
    ("tools", [{"role": "system", "content": "Use tools when needed."},
               {"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
               {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
                "content": "{\"temperature\": 22, \"sky\": \"clear\"}"},
               {"role": "assistant", "content": "It is 22 \u00b0C and clear in Paris."}], {"tools": TOOLS}),
    ("tools-string-args", [{"role": "user", "content": "Add 2 and 3."},
                           {"role": "assistant", "content": "Let me compute.", "tool_calls": [
                               {"id": "callabcde", "type": "function",
                                "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
                           {"role": "tool", "tool_call_id": "callabcde", "name": "add", "content": "5"}],
     {"tools": TOOLS}),
    ("tools-only-listed", [{"role": "user", "content": "Hello there"}], {"tools": TOOLS}),
    ("parts", [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
               {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "a cat."}]},
               {"role": "assistant", "content": [{"type": "text", "text": "A small feline."}]}], {}),
    ("reasoning", [{"role": "user", "content": "Is 17 prime?"},
                   {"role": "assistant", "content": "Yes.", "reasoning_content": "17 has no divisor but 1 and 17."},
                   {"role": "user", "content": "And 21?"}], {}),
    ("assistant-first", [{"role": "assistant", "content": "assistant first"}, {"role": "user", "content": "ok"}], {}),
]

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


# ---- templates ---------------------------------------------------------------------------------------

def llamacpp_templates(root):
    src = subprocess.run(["bash", os.path.join(root, "tools", "llamacpp.sh"), "src"], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    d = os.path.join(src, "models", "templates")
    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".jinja"):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                out["llamacpp/" + name[:-6]] = f.read()
    return out


def feature_templates():
    from chat_template_features import FEATURE_TEMPLATES
    return {"features/" + k: v for k, v in FEATURE_TEMPLATES.items()}


def trl_templates():
    import trl
    d = os.path.join(os.path.dirname(trl.__file__), "chat_templates")
    out = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".jinja"):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                out["trl/" + name[:-6]] = f.read()
    return out


def mistral_templates():
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    out = {}
    combos = [("v1", True, {}), ("v2", True, {}), ("v3", True, {}), ("v3", False, {}), ("v7", True, {}),
              ("v7", False, {}), ("v11", False, {}), ("v11", False, {"plain_thinking_support": True}),
              ("v13", False, {}), ("v13", False, {"thinking_support": True}), ("v15", False, {}),
              ("v15", False, {"thinking_support": True})]
    for v, spm, extra in combos:
        kw = dict(spm=spm, tokenizer_version=TokenizerVersion(v), image_support=False, audio_support=False,
                  thinking_support=False, default_system_prompt=None, plain_thinking_support=False,
                  use_special_token_variables=True, model_settings_fields=None, reasoning_effort_values=None,
                  reasoning_effort_default=None)
        if TokenizerVersion(v).supports_model_settings:  # the reasoning-effort setting of these versions
            kw.update(reasoning_effort_values=("none", "high"), reasoning_effort_default="none")
        kw.update(extra)
        name = "mistral/" + v + ("-spm" if spm else "-tekken") + "".join("-" + k.split("_")[0] for k in extra)
        out[name] = generate_chat_template(**kw)
    return out


# ---- the two renderers ----------------------------------------------------------------------------

class FixedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.fromtimestamp(FIXED_EPOCH, datetime.timezone.utc).replace(tzinfo=None)


def reference_render(tmpl, messages, extra, agp, has_gen):
    """apply_chat_template(tokenize=False) of transformers: (text, [(start, end) char ranges]) or an exception."""
    from transformers.utils import chat_template_utils as ctu
    ctu.datetime = FixedDatetime  # strftime_now reads ctu.datetime.now()
    conv = ctu._normalize_chat_messages(messages)
    kw = {k: v for k, v in extra.items() if k not in ("tools", "documents")}
    res = ctu.render_jinja_template(conversations=[conv], tools=extra.get("tools"), documents=extra.get("documents"),
                                    chat_template=tmpl, add_generation_prompt=agp,
                                    return_assistant_tokens_mask=has_gen, **SPECIALS, **kw)
    text, gen = res
    return text[0], (gen[0] if has_gen else None)


class Lib:
    def __init__(self, path, workdir):
        os.environ["SOURCE_DATE_EPOCH"] = str(FIXED_EPOCH)
        self.lib = ctypes.CDLL(path)
        L = self.lib
        L.lt_tokenizer_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        L.lt_tokenizer_free.argtypes = [ctypes.c_void_p]
        L.lt_tokenizer_last_error.argtypes = [ctypes.c_void_p]
        L.lt_tokenizer_last_error.restype = ctypes.c_char_p
        L.lt_last_error.restype = ctypes.c_char_p
        L.lt_tokenizer_render_chat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
        L.lt_tokenizer_encode_chat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int32),
                                               ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.tokjson = os.path.join(workdir, "tokenizer.json")
        if not os.path.exists(self.tokjson):
            # a byte-level BPE over single bytes: every text encodes, one token per byte
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers
            alphabet = pre_tokenizers.ByteLevel.alphabet()
            vocab = {c: i for i, c in enumerate(sorted(alphabet))}
            tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
            tok.decoder = decoders.ByteLevel()  # no added tokens: "<s>" is 3 tokens, so ids = bytes
            tok.save(self.tokjson)

    def load(self, name, tmpl):
        d = os.path.join(self.workdir, re.sub(r"[^A-Za-z0-9._-]", "_", name))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({**SPECIALS, "chat_template": tmpl}, f, ensure_ascii=False)
        dst = os.path.join(d, "tokenizer.json")
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(self.tokjson), dst)
        h = ctypes.c_void_p()
        if self.lib.lt_tokenizer_load(d.encode(), ctypes.byref(h)) != 0:
            raise RuntimeError(self.lib.lt_last_error().decode())
        return h

    def render(self, h, messages, extra, agp, has_gen):
        """(text, byte mask or None) or (None, (status, message))."""
        doc = json.dumps({"messages": messages, **extra}, ensure_ascii=False).encode()
        text = ctypes.c_char_p()
        n = ctypes.c_size_t()
        st = self.lib.lt_tokenizer_render_chat(h, doc, int(agp), ctypes.byref(text), ctypes.byref(n))
        if st != 0:
            return None, (st, self.lib.lt_tokenizer_last_error(h).decode("utf-8", "replace"))
        return ctypes.string_at(text, n.value).decode("utf-8"), None


# ---- comparison --------------------------------------------------------------------------------------

def char_ranges_to_bytes(text, ranges):
    mask = bytearray(len(text.encode("utf-8")))
    offs = [0]
    for ch in text:
        offs.append(offs[-1] + len(ch.encode("utf-8")))
    for a, b in ranges:
        for i in range(offs[a], offs[b]):
            mask[i] = 1
    return bytes(mask)


def first_diff(a, b):
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--workdir", default="build/chat-templates")
    ap.add_argument("--sources", default="llamacpp,trl,mistral,features")
    ap.add_argument("--only", default=None, help="templates whose name contains this")
    ap.add_argument("--json", default=None)
    ap.add_argument("--show", type=int, default=1, help="differences printed per template")
    ap.add_argument("--require", default="all", help="templates that must be at 100%%: 'all', 'none' or a list")
    ap.add_argument("--measure", default=None, metavar="JINJA_STATS",
                    help="the jinja_stats tool (build/tests/jinja_stats): print the largest nesting depth and steps")
    args = ap.parse_args()
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    lib = Lib(os.path.abspath(args.lib), args.workdir)
    tmpls = {}
    srcs = args.sources.split(",")
    if "llamacpp" in srcs:
        tmpls.update(llamacpp_templates(root))
    if "trl" in srcs:
        tmpls.update(trl_templates())
    if "mistral" in srcs:
        tmpls.update(mistral_templates())
    if "features" in srcs:
        tmpls.update(feature_templates())
    if args.only:
        tmpls = {k: v for k, v in tmpls.items() if args.only in k}
    report = {}
    total = same_total = 0
    for name, tmpl in sorted(tmpls.items()):
        has_gen = re.search(r"\{\%-?\s*generation\s*-?\%\}", tmpl) is not None
        try:
            h = lib.load(name, tmpl)
        except RuntimeError as e:
            report[name] = {"cases": 0, "same": 0, "error": str(e)}
            print(f"{name}: tokenizer load failed: {e}")
            continue
        cases = same = 0
        diffs = []
        for cname, msgs, extra in CONVERSATIONS:
            for agp in (False, True):
                cases += 1
                try:
                    ref, ref_gen = reference_render(tmpl, msgs, extra, agp, has_gen)
                    ref_err = None
                except Exception as e:
                    ref, ref_gen, ref_err = None, None, e
                got, got_err = lib.render(h, msgs, extra, agp, has_gen)
                ok, why = False, ""
                if ref_err is not None:
                    import jinja2
                    raised = type(ref_err) is jinja2.exceptions.TemplateError  # raise_exception()
                    if got_err is None:
                        why = f"reference raised {type(ref_err).__name__}: {ref_err}; libloratune rendered"
                    elif raised and not got_err[1].endswith("chat template raised an exception: " + str(ref_err)):
                        why = f"raise_exception messages differ: {str(ref_err)!r} vs {got_err[1]!r}"
                    else:
                        ok = True
                elif got_err is not None:
                    why = f"libloratune failed ({got_err[0]}): {got_err[1]}"
                elif got != ref:
                    i = first_diff(got, ref)
                    why = f"text differs at char {i}: ours {got[max(0, i - 30):i + 50]!r} vs ref {ref[max(0, i - 30):i + 50]!r}"
                elif has_gen:
                    # the generation ranges, as byte masks (libloratune's encode_chat uses the same mask)
                    want = char_ranges_to_bytes(ref, ref_gen)
                    mask = lib_mask(lib, h, msgs, extra, agp, ref)
                    if mask is None:
                        why = "libloratune gave no byte mask (lt_tokenizer_encode_chat)"
                    elif mask != want:
                        why = "generation ranges differ"
                    else:
                        ok = True
                else:
                    ok = True
                same += ok
                if not ok:
                    diffs.append(f"  [{cname} agp={int(agp)}] {why}")
        lib.lib.lt_tokenizer_free(h)
        total += cases
        same_total += same
        report[name] = {"cases": cases, "same": same, "differences": diffs}
        flag = "" if same == cases else "   <--"
        print(f"{name:60s} {same:3d}/{cases:3d} {100.0 * same / cases:6.1f}%{flag}")
        for d in diffs[:args.show]:
            print(d[:400])
    print(f"total: {same_total}/{total} cases identical ({100.0 * same_total / max(total, 1):.1f}%), "
          f"{sum(r['same'] == r['cases'] for r in report.values())}/{len(report)} templates at 100%")
    if args.measure:
        measure(args.measure, tmpls)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
    req = set(report) if args.require == "all" else set() if args.require == "none" else set(args.require.split(","))
    bad = [n for n in sorted(req) if n in report and report[n]["same"] != report[n]["cases"]]
    if bad:
        print("below 100%: " + ", ".join(bad))
        return 1
    return 0


def measure(tool, tmpls):
    """Depth and steps of every case (the context transformers gives the template), from jinja_stats."""
    from transformers.utils import chat_template_utils as ctu
    lines, keys = [], []
    for name, tmpl in sorted(tmpls.items()):
        for cname, msgs, extra in CONVERSATIONS:
            for agp in (False, True):
                conv = ctu._alias_reasoning_fields(ctu._normalize_chat_messages(msgs))
                ctx = {**SPECIALS, "tools": None, "documents": None, **extra, "messages": conv,
                       "add_generation_prompt": agp}
                lines.append(json.dumps({"template": tmpl, "context": ctx}, ensure_ascii=False))
                keys.append(f"{name} [{cname} agp={int(agp)}]")
    res = subprocess.run([tool], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
                         env={**os.environ, "SOURCE_DATE_EPOCH": str(FIXED_EPOCH)})
    stats = [json.loads(x) for x in res.stdout.splitlines()]
    for what in ("depth", "steps", "bytes"):
        i = max(range(len(stats)), key=lambda k: stats[k][what])
        print(f"largest {what}: {stats[i][what]} ({keys[i]})")
    real = [k for k in range(len(stats)) if not keys[k].startswith("features/")]
    for what in ("depth", "steps"):
        i = max(real, key=lambda k: stats[k][what])
        print(f"largest {what} of a real template: {stats[i][what]} ({keys[i]})")
    # the step budget grows with the variables: base + per byte (src/text/jinja.h)
    i = max(real, key=lambda k: stats[k]["steps"] / stats[k]["step_limit"])
    print(f"largest share of the step budget: {stats[i]['steps']} of {stats[i]['step_limit']} ({keys[i]})")


def lib_mask(lib, h, msgs, extra, agp, text):
    """The byte mask of generation blocks, through the test hook of lt_tokenizer_encode_chat: a per-byte
    tokenizer gives one token per byte, so its assistant mask is the byte mask."""
    doc = json.dumps({"messages": msgs, **extra}, ensure_ascii=False).encode()
    n = ctypes.c_size_t()
    if lib.lib.lt_tokenizer_encode_chat(h, doc, int(agp), None, None, 0, ctypes.byref(n)) != 0:
        return None
    ids = (ctypes.c_int32 * max(n.value, 1))()
    mask = (ctypes.c_int32 * max(n.value, 1))()
    if lib.lib.lt_tokenizer_encode_chat(h, doc, int(agp), ids, mask, n.value, ctypes.byref(n)) != 0:
        return None
    if n.value != len(text.encode("utf-8")):
        return None
    return bytes(mask[i] for i in range(n.value))


if __name__ == "__main__":
    sys.exit(main())
