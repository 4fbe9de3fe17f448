#!/usr/bin/env python3
"""llama.cpp itself as the oracle of the GGUF export (lt_model_export_gguf, lt_adapter_export_gguf,
`loratune export`), for every family we train, on held-out random checkpoints with real tokenizers
(gguf_fixtures.py), plus the `gguf` package and llama.cpp's own converter for the files' contents.

usage: crosscheck_gguf.py --cli build/loratune --lib build/libloratune.so.0 --oracle BIN --llamacpp-src DIR
                          [--workdir DIR] [--families llama,qwen2,...]

Per family (Llama, Qwen2, Qwen3, Mistral, Gemma, Gemma 2, Phi-3 with longrope, Qwen3-MoE, Mixtral, Gemma 3,
SmolLM3, OLMo 2, Granite, gpt-oss (two shapes); the mixtures of experts with a LoRA on every expert as well, the
second gpt-oss's merged only):
 1. a LoRA is trained with `loratune train` on one chat conversation (rsLoRA for Qwen2, PiSSA for Qwen3,
    QLoRA NF4 for Llama) until it answers it; `loratune export` writes the base (f32, f16, q8_0, bf16), the
    merged model (f32) and the adapter (gguf-lora, f32) and a Modelfile (--ollama);
 2. contents: every file read back with the `gguf` package (PyPI): the base's keys and tensors equal those of
    llama.cpp's convert_hf_to_gguf.py run on the same directory (tensors bit for bit; keys equal except a listed
    few), the f16 / bf16 / q8_0 files' tensors = gguf.quants.quantize of the f32 file's (bit for bit), the
    tokenizer keys of the SentencePiece families (which the converter reads only from tokenizer.model) = the
    tokenizer.json's vocabulary, the adapter's lora_a / lora_b = the PEFT tensors (lora_b times the folded
    scale, q/k rows permuted like the base's);
 3. llama.cpp (tests/llamacpp/oracle.c linked to the pinned libllama) loads each file:
      tokenization of sample texts and of the chat prompt = ours (lt_tokenizer_encode, special tokens parsed);
      logits on a held-out sequence (longer than Gemma 2's window, past Phi-3's original context for its
      long factors) vs ours (lt_model_logits), max|d| / max|ours|: f32 base, merged, base + adapter <= 1e-3
      (Gemma, Gemma 2, Gemma 3: 2e-3, ggml's GELU is an f16 table); f16 and bf16 files against our model on the same
      rounded weights <= 1e-2 and 0.1, q8_0 against the f32 model <= 0.25 (MoE: but at 2 of the positions, a near
      tie routed to another expert by the rounding; llama.cpp also rounds the
      activations of those products to f16 / bf16 / 8 bits; the files' bytes are checked exactly in 2);
      llama.cpp's base + our adapter vs llama.cpp's merged model (same tolerance as f32);
      greedy generation from the chat-template prompt with the merged model and with base + adapter: the
      tokens of lt_generate, ending with an end-of-generation token (llama.cpp stopped at EOG, not at the
      length limit);
 4. the Modelfile: FROM / ADAPTER / PARAMETER stop lines, and its Go TEMPLATE (where one is written) gives
    transformers' apply_chat_template rendering of a held-out conversation;
 5. refused exports give clear statuses: a DoRA adapter as gguf-lora (LT_ERR_UNSUPPORTED, pointing to the
    merged export), a Gemma whose head is untied, a Qwen3-MoE with a dense layer (mlp_only_layers), a SmolLM3
    whose NoPE layers are not every 4th, a gpt-oss with another swiglu_limit, YaRN not truncated, other YaRN
    betas (LT_ERR_UNSUPPORTED: what llama.cpp hard-codes), a gpt-oss expert LoRA as gguf-lora (llama.cpp's LoRA
    converter has none);
 6. a Gemma 3 whose layer types are not llama.cpp's default: the sliding_window_pattern array, f32 logits;
 7. gpt-oss from an MXFP4 checkpoint (the release format): its f32 GGUF's experts = the dequantized blocks, f32
    logits.
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
import time

import offline_env  # noqa: F401  (first: offline, no progress bars)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_fixtures as G  # noqa: E402
import lt_ctypes  # noqa: E402

torch.set_num_threads(2)
# f32 files: llama.cpp computes in f32 like us. f16 / bf16 / q8_0 files: llama.cpp rounds the activations of every
# product with such a weight to f16 / bf16 / Q8_0 as well (ggml's vec_dot types), which our f32 compute does not:
# measured on these models up to 5.2e-3 (f16), 4.7e-2 (bf16), 0.14 (q8_0, against the f32 model). Mixtures of
# experts add a jump where the rounding moves a token's top-k across a near tie (another expert): Qwen3-MoE's
# q8_0 file measured 0.233 (5 of the 40 positions above 0.1), Mixtral's bf16 9.1e-2 (thin margins, stated). The bytes of
# those files are checked exactly instead (against the gguf package's own conversion of our f32 tensors).
# Gemma and Gemma 2 (f32 too): ggml computes GELU by looking its value up in a table indexed by the f16 rounding
# of the input (ggml-cpu/vec.h, GGML_GELU_FP16, hard-coded), about 2^-11 relative on every MLP activation:
# measured up to 9.9e-4 on these models, so their f32 tolerance is 2e-3 (the other families: ~3e-6).
# gpt-oss's top-1 of 3 measured one such position at 0.47 in its q8_0 file (the 39 others <= 0.09), its top-4 of 5
# one at 0.11 in bf16 (the others <= 0.09): MoE files may exceed the rounded tolerances at MOE_JUMPS positions.
TOL_F32, TOL_F16, TOL_BF16, TOL_Q8, TOL_F32_GELU = 1e-3, 1e-2, 1e-1, 0.25, 2e-3
MOE_JUMPS = 2
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)

# name, config class, config kwargs, tokenizer, train options, held-out length, llama.cpp context, pre
FAMILIES = [
    ("llama", "LlamaConfig", dict(SMALL, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                           high_freq_factor=4.0, original_max_position_embeddings=64)),
     "llama3", ["--method", "qlora"], 40, 64, "llama-bpe"),
    ("qwen2", "Qwen2Config", dict(SMALL, use_sliding_window=False, tie_word_embeddings=True), "qwen", ["--rslora"],
     40, 64, "qwen2"),
    ("qwen3", "Qwen3Config", dict(SMALL, head_dim=24), "qwen", ["--init", "pissa"], 40, 64, "qwen2"),
    ("mistral", "MistralConfig", dict(SMALL, sliding_window=None, extra_vocab=5), "mistral", [], 40, 64, "llama-bpe"),
    ("gemma", "GemmaConfig", dict(SMALL, num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh"),
     "gemma", [], 40, 64, "-"),
    ("gemma2", "Gemma2Config", dict(SMALL, num_hidden_layers=3, head_dim=32, query_pre_attn_scalar=32, sliding_window=6,
                                    attn_logit_softcapping=20.0, final_logit_softcapping=15.0), "gemma", [], 40, 64,
     "-"),
    # longrope: llama.cpp takes the long factors when its context (padded to 256) exceeds the original length,
    # transformers when the sequence does: the held-out sequence of 300 tokens in a 512 context is long for both
    ("phi3", "Phi3Config", dict(SMALL, max_position_embeddings=1024, original_max_position_embeddings=256,
                                partial_rotary_factor=0.5, sliding_window=None, pad_token_id=0,
                                rope_scaling=dict(type="longrope", short_factor=[1.0, 1.1, 1.2, 1.3],
                                                  long_factor=[2.0, 2.5, 3.0, 4.0])), "phi3", [], 300, 512, "-"),
    # mixtures of experts: every layer sparse, top-2 renormalised; the LoRA on the attention and on every
    # expert (PEFT target_parameters), written as llama.cpp's LoRA of ffn_*_exps
    ("qwen3moe", "Qwen3MoeConfig", dict(SMALL, head_dim=24, moe_intermediate_size=24, num_experts=4,
                                        num_experts_per_tok=2, norm_topk_prob=True), "qwen",
     ["--targets", "q_proj,k_proj,v_proj,o_proj,experts"], 40, 64, "qwen2"),
    ("mixtral", "MixtralConfig", dict(SMALL, num_local_experts=3, num_experts_per_tok=2, sliding_window=None),
     "mistral", ["--targets", "q_proj,v_proj,experts"], 40, 64, "llama-bpe"),
    # Gemma 3: 6 layers (5 sliding, window 6 < the held-out 40 tokens, local RoPE theta; the 6th global with a
    # linear RoPE scaling), final soft-capping, q/k norms
    ("gemma3", "Gemma3TextConfig", dict(SMALL, num_hidden_layers=6, head_dim=32, query_pre_attn_scalar=32,
                                        sliding_window=6, final_logit_softcapping=15.0,
                                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                            "rope_theta": 10000.0},
                                                         "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 100.0}}),
     "gemma", [], 40, 64, "-"),
    # SmolLM3: no RoPE in every 4th layer (llama.cpp's hard-coded step)
    ("smollm3", "SmolLM3Config", dict(SMALL, num_hidden_layers=4, no_rope_layer_interval=4, pad_token_id=0),
     "llama3", [], 40, 64, "llama-bpe"),
    # OLMo 2: post-norms only, q/k RMSNorm over the whole projection
    ("olmo2", "Olmo2Config", dict(SMALL), "qwen", [], 40, 64, "qwen2"),
    # Granite: the four multipliers far from 1
    ("granite", "GraniteConfig", dict(SMALL, embedding_multiplier=6.0, residual_multiplier=0.4,
                                      attention_multiplier=0.09, logits_scaling=2.5), "llama3", [], 40, 64,
     "llama-bpe"),
    # gpt-oss (make_family: sinks N(0, 1), gate_up_proj x 3 so that the clamps at 7 act): llama.cpp hard-codes the
    # SwiGLU constants, YaRN's betas 32 / 1 and its rounded correction range (truncate true). 3 experts top-1,
    # default layout (sliding, full, sliding; window 6 < the 40 tokens), YaRN past its original context of 16;
    # the LoRA on the attention (a gguf-lora)
    ("gptoss", "GptOssConfig", dict(SMALL, num_hidden_layers=3, intermediate_size=32, head_dim=16,
                                    num_local_experts=3, num_experts_per_tok=1, sliding_window=6,
                                    rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                         beta_fast=32.0, beta_slow=1.0, truncate=True,
                                                         original_max_position_embeddings=16)),
     "o200k", ["--targets", "q_proj,k_proj,v_proj,o_proj"], 40, 64, "gpt-4o"),
    # 5 experts top-4, GQA 4:1, layer types full / sliding (window 5: the bool array), YaRN with its own
    # attention_factor; the LoRA on q, v and every expert: merged only (llama.cpp's LoRA converter has no gpt-oss
    # expert LoRA, the gguf-lora export is refused)
    ("gptoss-k4", "GptOssConfig", dict(SMALL, num_key_value_heads=1, intermediate_size=16, head_dim=16,
                                       num_local_experts=5, num_experts_per_tok=4, sliding_window=5,
                                       layer_types=["full_attention", "sliding_attention"],
                                       rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                                                            beta_fast=32.0, beta_slow=1.0, truncate=True,
                                                            attention_factor=1.3,
                                                            original_max_position_embeddings=32)),
     "o200k", ["--targets", "q_proj,v_proj,experts"], 40, 64, "gpt-4o"),
]
NO_GGUF_LORA = ("gptoss-k4",)  # its adapter trains the experts: refused as gguf-lora (checked), merged only
PERMUTED = ("llama", "mistral", "mixtral", "smollm3", "granite")  # LlamaModel's q/k permutation in the converter
CHAT = [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Paris is the capital."}]
TEXTS = ["Hello there! How are you today?", "The quick brown fox, 1234 cafés; 東京 😀\n\n  tabs\tend.",
         "I've been 'told he's there"]
# keys the converter writes that we do not (cosmetic), and keys we write that it does not (values llama.cpp
# otherwise defaults: correct either way, explicit here)
# (gpt-oss: the converter copies rope_parameters' attention_factor to yarn_attn_factor, which llama.cpp reads for
# grok only; we write it as rope.scaling.attn_factor, what llama.cpp reads. The converter ignores layer_types: ours
# writes a layout other than llama.cpp's default as attention.sliding_window_pattern)
CONV_ONLY = {"general.size_label", "general.name", "gpt-oss.rope.scaling.yarn_attn_factor"}
OURS_ONLY = {"tokenizer.ggml.add_eos_token", "general.type"}
OURS_ONLY_RE = re.compile(r"^[\w-]+\.(rope\.dimension_count|rope\.freq_base|attention\.key_length|"
                          r"attention\.value_length|rope\.scaling\.attn_factor|attention\.sliding_window_pattern)$")

failures, passed = [], []


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    (passed if ok else failures).append(what)
    return ok


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---- the library (lt_ctypes.Lib) and what these checks add to it ----------------------------------------
class Lib(lt_ctypes.Lib):
    def generate(self, m, ad, prompt, n, eos):
        L = self.L
        gp = L.init_struct(self.lib.lt_generate_params_init, L.lt_generate_params)
        gp.max_new_tokens, gp.eos_token_id = n, eos
        P = (ctypes.c_int32 * len(prompt))(*prompt)
        lens = (ctypes.c_int32 * 1)(len(prompt))
        out = (ctypes.c_int32 * n)()
        olen = (ctypes.c_int32 * 1)()
        assert self.lib.lt_generate(m, ad, P, lens, 1, ctypes.byref(gp), out, olen) == 0
        return list(out)[:olen[0]]

    def tokenizer(self, d):
        t = self.L.lt_tokenizer_p()
        assert self.lib.lt_tokenizer_load(d.encode(), ctypes.byref(t)) == 0, self.err()
        return t

    def encode(self, t, text):
        raw = text.encode()
        n = ctypes.c_size_t()
        ids = (ctypes.c_int32 * 4096)()
        assert self.lib.lt_tokenizer_encode(t, raw, len(raw), 0, ids, 4096, ctypes.byref(n)) == 0
        return list(ids)[:n.value]

    def render(self, t, messages, agp):
        txt, n = ctypes.c_void_p(), ctypes.c_size_t()
        assert self.lib.lt_tokenizer_render_chat(t, json.dumps(messages).encode(), agp, ctypes.byref(txt),
                                                 ctypes.byref(n)) == 0
        return ctypes.string_at(txt, n.value).decode()



# ---- files -----------------------------------------------------------------------------------------------
def make_family(work, name, cls, kw, tok, seed):
    import transformers
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    kw = dict(kw)
    extra = kw.pop("extra_vocab", 0)
    n, bos, eos = G.write_tokenizer(d, tok)
    cfg = getattr(transformers, cls)(vocab_size=n + extra, bos_token_id=bos, eos_token_id=eos, **kw)
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
        for nme, p in m.named_parameters():  # norms away from their identity (Gemma stores w, uses 1 + w)
            if "norm" in nme:
                p.copy_(torch.rand_like(p) * 0.5 + (0.0 if "gemma" in name else 0.75))
            if nme.endswith("self_attn.sinks"):  # gpt-oss: sinks that take a real share of each softmax
                p.normal_(0, 1)
            if cls == "GptOssConfig" and nme.endswith("mlp.experts.gate_up_proj"):  # beyond the clamps at 7
                p.mul_(3)
    m.save_pretrained(d, safe_serialization=True)
    # the same model with f16- and bf16-rounded weights (what our f16 / bf16 GGUF holds): the reference of those
    for dt, suffix in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
        r = os.path.join(work, f"{name}-{suffix}")
        shutil.rmtree(r, ignore_errors=True)
        m.to(dt).to(torch.float32).save_pretrained(r, safe_serialization=True)
        m.to(torch.float32)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(d, f), r)
    return d, eos


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def oracle(args, gguf_path, *extra):
    out = run([args.oracle, gguf_path, *extra])
    return json.loads(out.strip().splitlines()[-1])


def read_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in r.tensors}
    return r, kv, tensors


# ---- the checks ------------------------------------------------------------------------------------------
def check_against_converter(name, ours_path, conv_path, spm):
    _, ka, ta = read_gguf(ours_path)
    _, kb, tb = read_gguf(conv_path)
    if spm:
        ka = {k: v for k, v in ka.items() if not k.startswith("tokenizer.")}
    bad = []
    for k in sorted(set(ka) | set(kb)):
        if k in CONV_ONLY:
            continue
        if k not in ka:
            bad.append(f"{k} missing (converter: {str(kb[k])[:60]})")
        elif k not in kb:
            if k not in OURS_ONLY and not OURS_ONLY_RE.match(k):
                bad.append(f"{k} not written by the converter")
        elif isinstance(ka[k], float) or isinstance(kb[k], float):
            if abs(ka[k] - kb[k]) > 1e-6 * max(1.0, abs(kb[k])):
                bad.append(f"{k}: {ka[k]} vs {kb[k]}")
        elif ka[k] != kb[k]:
            bad.append(f"{k}: {str(ka[k])[:60]} vs {str(kb[k])[:60]}")
    check(not bad, f"{name}: keys = convert_hf_to_gguf.py's ({len(kb)} keys){': ' + '; '.join(bad[:5]) if bad else ''}")
    bad = [n for n in set(ta) ^ set(tb)]
    for n in set(ta) & set(tb):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape) or \
                not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            bad.append(n)
    check(not bad, f"{name}: {len(ta)} tensors = the converter's, names, types, shapes and bytes"
                   f"{': ' + ', '.join(sorted(bad)[:6]) if bad else ''}")


def check_spm_vocab(name, path, mdir):
    """The tokenizer keys of a SentencePiece-style file against tokenizer.json itself."""
    _, kv, _ = read_gguf(path)
    tj = json.load(open(os.path.join(mdir, "tokenizer.json"), encoding="utf-8"))
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    V = cfg["vocab_size"]
    id2tok = {i: t for t, i in tj["model"]["vocab"].items()}
    specials = {a["id"]: a["content"] for a in tj["added_tokens"]}
    want_tokens = [specials.get(i, id2tok.get(i, f"[PAD{i}]")) for i in range(V)]
    rank = {}
    for r, (a, b) in enumerate(tj["model"]["merges"]):
        rank.setdefault(tj["model"]["vocab"][a + b], r)
    want_types = [3 if i in specials else 6 if re.fullmatch(r"<0x[0-9A-F]{2}>", want_tokens[i]) else 1
                  for i in range(V)]
    want_scores = [0.0 if i in specials or want_types[i] == 6 else -float(rank[i]) if i in rank else -1e9
                   for i in range(V)]
    ok = kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.tokens"] == want_tokens and \
        kv["tokenizer.ggml.token_type"] == want_types and np.allclose(kv["tokenizer.ggml.scores"], want_scores)
    check(ok, f"{name}: tokenizer.ggml.* = tokenizer.json (SentencePiece-style: tokens, types, scores = -merge rank)")


def check_lora_tensors(name, path, adir, permute_heads, hidden):
    """lora_a / lora_b of the GGUF adapter against the PEFT tensors of the same adapter. The experts' LoRA
    (PEFT target_parameters: lora_A (E r, in), lora_B (out, r E) with expert e's column j at j E + e) as
    ffn_{gate,up,down}_exps lora_a (E, r, in) and lora_b (E, out, r) (gate_up_proj's B split in gate, up)."""
    from safetensors.numpy import load_file
    _, kv, ts = read_gguf(path)
    cfg = json.load(open(os.path.join(adir, "adapter_config.json")))
    sd = load_file(os.path.join(adir, "adapter_model.safetensors"))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    fold = scale / (kv["adapter.lora.alpha"] / r)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "qkv_proj": "attn_qkv", "gate_proj": "ffn_gate", "up_proj": "ffn_up", "gate_up_proj": "ffn_up",
             "down_proj": "ffn_down"}
    bad, n = [], 0
    for k, A in sd.items():
        m = re.match(r"base_model\.model\.model\.layers\.(\d+)\.mlp\.experts\.(?:base_layer\.)?lora_A\.weight", k)
        if m:
            Bp = sd[k.replace("lora_A", "lora_B")] * fold
            E, out = Bp.shape[1] // r, Bp.shape[0]
            B3 = Bp.reshape(out, r, E).transpose(2, 0, 1)
            parts = [("ffn_gate_exps", B3[:, :out // 2]), ("ffn_up_exps", B3[:, out // 2:])] \
                if A.shape[1] == hidden else [("ffn_down_exps", B3)]  # gate_up_proj's A reads the hidden state
            for nm, Bx in parts:
                n += 1
                base = f"blk.{m.group(1)}.{nm}.weight"
                ga, gb = ts.get(base + ".lora_a"), ts.get(base + ".lora_b")
                if ga is None or gb is None or \
                        not np.array_equal(np.asarray(ga.data).reshape(E, r, -1), A.reshape(E, r, -1)) or \
                        not np.allclose(np.asarray(gb.data).reshape(Bx.shape), Bx, rtol=1e-6, atol=1e-7):
                    bad.append(base)
            continue
        m = re.match(r"base_model\.model\.model\.layers\.(\d+)\.\w+\.(\w+)\.lora_A\.weight", k)
        if not m:
            continue
        n += 1
        B = sd[k.replace("lora_A", "lora_B")] * fold
        heads = permute_heads.get(m.group(2))
        if heads:  # convert_hf_to_gguf's permute on the rows
            B = B.reshape(heads, 2, B.shape[0] // heads // 2, B.shape[1]).swapaxes(1, 2).reshape(B.shape)
        base = f"blk.{m.group(1)}.{names[m.group(2)]}.weight"
        ga, gb = ts.get(base + ".lora_a"), ts.get(base + ".lora_b")
        if ga is None or gb is None or not np.allclose(np.asarray(ga.data).reshape(A.shape), A, rtol=0, atol=0) or \
                not np.allclose(np.asarray(gb.data).reshape(B.shape), B, rtol=1e-6, atol=1e-7):
            bad.append(base)
    ok = kv["general.type"] == "adapter" and kv["adapter.type"] == "lora" and n and not bad and \
        len(ts) == 2 * n and abs(kv["adapter.lora.alpha"] - alpha) < 1e-5 * alpha
    check(ok, f"{name}: adapter GGUF: general.type, adapter.lora.alpha = {alpha}, {n} lora_a/lora_b pairs = PEFT's "
              f"(B x {fold:.4g}{', q/k rows permuted' if permute_heads else ''}){': ' + ', '.join(bad[:4]) if bad else ''}")


def go_template_render(tmpl, messages):
    """Render the Go TEMPLATE shape that lt_tokenizer_ollama_modelfile writes (range over .Messages, one
    if/else-if per role, the generation prompt after a last non-assistant message)."""
    body = re.fullmatch(r'(.*?)\{\{- range \$i, \$_ := \.Messages \}\}\{\{ \$last := eq \(len \(slice \$\.Messages '
                        r'\$i\)\) 1 \}\}(.*)\{\{ end \}\}\{\{ if and \$last \(ne \.Role "assistant"\) \}\}(.*)'
                        r'\{\{ end \}\}\{\{ end \}\}', tmpl, re.S)
    assert body, "unexpected TEMPLATE shape"
    lit = lambda s: s.replace('{{ "{{" }}', "{{")  # noqa: E731
    roles = dict((m.group(1), (lit(m.group(2)), lit(m.group(3)))) for m in re.finditer(
        r'\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)\{\{ \.Content \}\}(.*?)(?=\{\{ else if|\Z)', body.group(2), re.S))
    out = lit(body.group(1))
    for i, m in enumerate(messages):
        pre, suf = roles[m["role"]]
        out += pre + m["content"] + suf
        if i == len(messages) - 1 and m["role"] != "assistant":
            out += lit(body.group(3))
    return out


def check_modelfile(name, mf_path, mdir, adapter_gguf):
    from transformers import AutoTokenizer
    text = open(mf_path, encoding="utf-8").read()
    tk = AutoTokenizer.from_pretrained(mdir)
    ok = re.search(r"^FROM \./\S+\.gguf$", text, re.M) is not None
    ok &= (re.search(r"^ADAPTER \./\S+\.gguf$", text, re.M) is not None) == bool(adapter_gguf)
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    ok &= tk.eos_token in stops
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.M | re.S)
    conv = [{"role": "user", "content": "What is GGUF?"}, {"role": "assistant", "content": "A file format."},
            {"role": "user", "content": "Thanks"}]
    if m:
        want = tk.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        if tk.bos_token and want.startswith(tk.bos_token) and tk("").input_ids[:1] == [tk.bos_token_id]:
            want = want[len(tk.bos_token):]  # the tokenizer adds it; the TEMPLATE leaves it out
        got = go_template_render(m.group(1), conv)
        check(ok and got == want, f"{name}: Modelfile FROM{'/ADAPTER' if adapter_gguf else ''}, stop {stops}, "
                                  f"TEMPLATE renders = apply_chat_template")
    else:
        check(ok and "# TEMPLATE not converted" in text, f"{name}: Modelfile without TEMPLATE (commented), stop {stops}")


def check_types(name, path, f32_path, typ):
    """Every tensor of an f16 / bf16 / q8_0 file = the gguf package's conversion of the f32 file's tensor (1-D
    tensors and norms stay F32; Q8_0 rows that are not a multiple of 32 values fall back to F16)."""
    import gguf
    _, _, ts = read_gguf(path)
    _, _, t32 = read_gguf(f32_path)
    want_t = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}[typ]
    bad = []
    for n, t in t32.items():
        x = np.asarray(t.data, dtype=np.float32).reshape([int(v) for v in reversed(t.shape)])
        # 1-D tensors, norms, the MoE router (ffn_gate_inp) and biases (gpt-oss's experts': 2-D) stay F32
        qt = gguf.GGMLQuantizationType.F32 if x.ndim == 1 or n.endswith(("_norm.weight", "ffn_gate_inp.weight")) \
            or not n.endswith(".weight") else want_t
        if qt == gguf.GGMLQuantizationType.Q8_0 and x.shape[-1] % 32:
            qt = gguf.GGMLQuantizationType.F16
        want = gguf.quants.quantize(x, qt)
        got = ts.get(n)
        if got is None or got.tensor_type != qt or \
                not np.array_equal(np.asarray(got.data).view(np.uint8).ravel(), want.view(np.uint8).ravel()):
            bad.append(n)
    check(not bad and len(ts) == len(t32), f"{name}: {typ} file: every tensor = gguf.quants.quantize of the f32 "
                                           f"file's ({len(ts)} tensors){': ' + ', '.join(bad[:5]) if bad else ''}")


def prepare(args, spec, seed):
    """The model, its LoRA and every file of one family."""
    name, cls, kw, tok, train_opts, T, ctx, pre = spec
    t0 = time.time()
    work = args.workdir
    mdir, eos = make_family(work, name, cls, kw, tok, seed)
    cli = args.cli
    # a LoRA that learned to answer the conversation and end its turn
    data = os.path.join(work, f"{name}-chat.jsonl")
    with open(data, "w") as f:
        f.write(json.dumps({"messages": CHAT}) + "\n")
    adir = os.path.join(work, f"{name}-lora")
    shutil.rmtree(adir, ignore_errors=True)
    run([cli, "train", "--model", mdir, "--data", data, "--out", adir, "--rank", "8", "--alpha", "16", "--lr", "1e-2",
         "--steps", "40", "--batch", "1", "--seq", "64", "--quiet", "--threads", "2", "--seed", str(seed), *train_opts])
    adir = os.path.join(adir, "adapter")  # the run directory's adapter
    quant = "--method" in train_opts  # qlora: export the dequantized base (train wrote quantization.json)
    g = lambda s: os.path.join(work, f"{name}-{s}.gguf")  # noqa: E731
    qopt = ["--quant", "nf4"] if quant else []
    for typ in ("f32", "f16", "q8_0", "bf16"):
        run([cli, "export", "--format", "gguf", "--model", mdir, "--out", g(typ), "--type", typ, *qopt])
    run([cli, "export", "--format", "gguf", "--model", mdir, "--adapter", adir, "--out", g("merged"), "--type", "f32"])
    mf, refused = {}, None
    os.makedirs(os.path.join(work, name + "-ollama"), exist_ok=True)
    exports = [("adapter", ["--format", "gguf-lora", "--adapter", adir, "--out", g("lora"), "--base-gguf",
                            os.path.basename(g("f32"))]),
               ("merged", ["--format", "gguf", "--adapter", adir, "--type", "f32", "--out",
                           os.path.join(work, name + "-ollama", "merged.gguf")])]
    if name in NO_GGUF_LORA:  # the refusal, checked in verify()
        if os.path.exists(g("lora")):
            os.remove(g("lora"))
        refused = subprocess.run([cli, "export", "--model", mdir, *exports[0][1]], capture_output=True, text=True)
        exports = exports[1:]
    for what, extra in exports:
        run([cli, "export", "--model", mdir, "--ollama", *extra])
        src = os.path.join(os.path.dirname(extra[extra.index("--out") + 1]), "Modelfile")
        mf[what] = os.path.join(work, f"{name}-Modelfile.{what}")
        os.replace(src, mf[what])
    print(f"  {name}: trained and exported in {time.time() - t0:.1f} s")
    return dict(spec=spec, seed=seed, mdir=mdir, eos=eos, adir=adir, quant=quant, g=g, modelfiles=mf,
                refused=refused)


def verify(args, lib, c):
    name, cls, kw, tok, train_opts, T, ctx, pre = c["spec"]
    mdir, eos, adir, quant, g, seed = c["mdir"], c["eos"], c["adir"], c["quant"], c["g"], c["seed"]
    work, spm = args.workdir, pre == "-"
    print(f"== {name}")
    lora = c["refused"] is None
    if lora:
        check_modelfile(name, c["modelfiles"]["adapter"], mdir, True)
    else:
        r = c["refused"]
        check(r.returncode == 1 and "convert_lora_to_gguf" in r.stderr and "merged" in r.stderr and
              not os.path.exists(g("lora")),
              f"{name}: its expert LoRA as gguf-lora is refused: {r.stderr.strip()[:160]}")
    check_modelfile(name, c["modelfiles"]["merged"], mdir, False)
    # contents: the converter's output for the same directory (not for QLoRA's dequantized base)
    if not quant:
        check_against_converter(name, g("f32"), os.path.join(work, f"{name}-conv-f32.gguf"), spm)
    for typ in ("f16", "bf16", "q8_0"):
        check_types(name, g(typ), g("f32"), typ)
    if spm:
        check_spm_vocab(name, g("f32"), mdir)
    heads = {"q_proj": kw["num_attention_heads"], "k_proj": kw["num_key_value_heads"]} \
        if name in PERMUTED else {}
    if lora:
        check_lora_tensors(name, g("lora"), adir, heads, kw["hidden_size"])

    # llama.cpp runs the files
    tk = lib.tokenizer(mdir)
    prompt = lib.render(tk, CHAT[:1], 1)
    tdir = os.path.join(work, f"{name}-texts")
    os.makedirs(tdir, exist_ok=True)
    same = True
    for i, text in enumerate(TEXTS + [prompt]):
        p = os.path.join(tdir, f"{i}.txt")
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        got = oracle(args, g("f32"), "--tokenize-file", p)["tokenized"]
        same &= got == lib.encode(tk, text)
    check(same, f"{name}: llama.cpp's tokenization of {len(TEXTS) + 1} texts (incl. the chat prompt) = ours")

    m, V = lib.model(mdir, quant=quant)
    ad = lib.adapter(m, adir)
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(0, V, T)]
    ids_arg = ",".join(map(str, ids))
    lg = os.path.join(work, f"{name}-logits.bin")

    def theirs(path, *extra):
        oracle(args, path, "--ctx", str(ctx), "--ids", ids_arg, "--logits-out", lg, *extra)
        return np.fromfile(lg, dtype=np.float32).reshape(T, -1)[:, :V]

    ours_base, ours_ad = lib.logits(m, V, None, ids), lib.logits(m, V, ad, ids)
    TOL_F32 = TOL_F32_GELU if name.startswith("gemma") else globals()["TOL_F32"]  # noqa: N806
    r = rel(theirs(g("f32")), ours_base)
    check(r <= TOL_F32, f"{name}: base f32 logits, llama.cpp vs ours: {r:.2e} (<= {TOL_F32})")
    # rounded files of a mixture of experts: a token whose top-k sits at a near tie may go to another expert under
    # the rounding (a jump at that position): at most MOE_JUMPS of the T positions may exceed the tolerance
    moe = "num_experts" in kw or "num_local_experts" in kw

    def rounded(what, t, o, tol):
        per = np.abs(t - o).max(1) / max(float(np.abs(o).max()), 1e-30)
        over = int((per > tol).sum())
        check(over <= (MOE_JUMPS if moe else 0),
              f"{name}: {what}: {per.max():.2e} (<= {tol}{f' but at {MOE_JUMPS} positions (MoE)' if moe else ''}; "
              f"{over} of {T} above)")
    rounded("base q8_0 logits, llama.cpp vs our f32", theirs(g("q8_0")), ours_base, TOL_Q8)
    if not quant:
        for suffix, tol in (("f16", TOL_F16), ("bf16", TOL_BF16)):
            mr, _ = lib.model(os.path.join(work, f"{name}-{suffix}"))
            rounded(f"base {suffix} logits, llama.cpp vs ours on the {suffix}-rounded weights", theirs(g(suffix)),
                    lib.logits(mr, V, None, ids), tol)
            lib.lib.lt_model_free(mr)
    merged = theirs(g("merged"))
    r = rel(merged, ours_ad)
    check(r <= TOL_F32, f"{name}: merged f32 logits, llama.cpp vs ours with the adapter: {r:.2e} (<= {TOL_F32})")
    if lora:
        with_lora = theirs(g("f32"), "--lora", g("lora"))
        r = rel(with_lora, ours_ad)
        check(r <= TOL_F32, f"{name}: base f32 + GGUF adapter, llama.cpp vs ours with the adapter: {r:.2e} "
                            f"(<= {TOL_F32})")
        r = rel(with_lora, merged)
        check(r <= TOL_F32, f"{name}: llama.cpp base + our adapter vs llama.cpp on our merged model: {r:.2e} "
                            f"(<= {TOL_F32})")

    pfile = os.path.join(tdir, f"{len(TEXTS)}.txt")
    want = lib.generate(m, ad, lib.encode(tk, prompt), 24, eos)
    runs = [("merged", g("merged"), []), ("base + adapter", g("f32"), ["--lora", g("lora")])]
    for what, path, extra in runs[:2 if lora else 1]:
        o = oracle(args, path, "--ctx", "64", "--prompt-file", pfile, "--max-new", "24", *extra)
        check(o["generated"] == want and o["stopped"] == "eog" and want and want[-1] == eos,
              f"{name}: greedy generation from the chat prompt ({what}): llama.cpp = ours = {o['generated']}, "
              f"stopped at EOG ({o['stopped']})")
    lib.lib.lt_adapter_free(ad)
    lib.lib.lt_model_free(m)
    lib.lib.lt_tokenizer_free(tk)


def refusals(args, lib):
    print("== refused exports")
    work = args.workdir
    # DoRA cannot be a GGUF LoRA
    mdir = os.path.join(work, "mistral")
    data = os.path.join(work, "mistral-chat.jsonl")
    ddir = os.path.join(work, "mistral-dora")
    shutil.rmtree(ddir, ignore_errors=True)
    run([args.cli, "train", "--model", mdir, "--data", data, "--out", ddir, "--method", "dora", "--rank", "4",
         "--steps", "1", "--batch", "1", "--seq", "32", "--quiet"])
    r = subprocess.run([args.cli, "export", "--format", "gguf-lora", "--model", mdir, "--adapter",
                        os.path.join(ddir, "adapter"), "--out",
                        os.path.join(work, "dora.gguf")], capture_output=True, text=True)
    check(r.returncode == 1 and "DoRA" in r.stderr and "merged" in r.stderr and
          not os.path.exists(os.path.join(work, "dora.gguf")),
          f"a DoRA adapter as gguf-lora is refused, pointing to the merged export: {r.stderr.strip()[:140]}")
    # a Gemma with an untied head: llama.cpp's gemma reads its LM head from token_embd
    import transformers
    gdir = os.path.join(work, "gemma-untied")
    shutil.rmtree(gdir, ignore_errors=True)
    cfg = transformers.GemmaConfig(vocab_size=328, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(gdir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(work, "gemma", f), gdir)
    m, _ = lib.model(gdir)
    gp = lib.L.init_struct(lib.lib.lt_gguf_params_init, lib.L.lt_gguf_params)
    st = lib.lib.lt_model_export_gguf(m, None, os.path.join(work, "untied.gguf").encode(), ctypes.byref(gp))
    msg = lib.lib.lt_model_last_error(m).decode()
    check(lib.status_name(st).startswith("LT_ERR_UNSUPPORTED") and "token_embd" in msg,
          f"an untied Gemma is refused: {lib.status_name(st)}: {msg[:120]}")
    lib.lib.lt_model_free(m)


def refusals_new_families(args, lib):
    """What llama.cpp's graphs hard-code and a checkpoint may not match: refused, naming it."""
    print("== refused exports (llama.cpp's fixed layouts)")
    import transformers
    work = args.workdir
    cases = [("qwen3moe-dense", "qwen3moe", transformers.Qwen3MoeConfig(
                vocab_size=0, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, num_experts=3, num_experts_per_tok=2,
                norm_topk_prob=True, mlp_only_layers=[1]), "every layer"),
             ("smollm3-nope2", "smollm3", transformers.SmolLM3Config(
                vocab_size=0, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
                num_key_value_heads=1, no_rope_layer_interval=2, pad_token_id=0), "every 4th layer")]

    def gptoss(**kw):  # a tiny gpt-oss that llama.cpp can run, changed by kw
        rope = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, beta_fast=32.0, beta_slow=1.0, truncate=True,
                    original_max_position_embeddings=16)
        rope.update(kw.pop("rope", {}))
        return transformers.GptOssConfig(**dict(dict(
            vocab_size=0, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, num_local_experts=3, num_experts_per_tok=2, sliding_window=4,
            rope_parameters=rope), **kw))
    # gpt-oss: llama.cpp's SwiGLU constants, its YaRN (betas 32 / 1, the correction range rounded: the released
    # checkpoints' truncate false is refused)
    cases += [("gptoss-limit", "gptoss", gptoss(swiglu_limit=0.5), "swiglu_limit 7"),
              ("gptoss-truncate", "gptoss", gptoss(rope=dict(truncate=False)), "truncate false"),
              ("gptoss-beta", "gptoss", gptoss(rope=dict(beta_fast=8.0)), "beta_fast 32")]
    for dname, src, cfg, words in cases:
        src_dir = os.path.join(work, src)
        if not os.path.isdir(src_dir):
            continue
        d = os.path.join(work, dname)
        shutil.rmtree(d, ignore_errors=True)
        cfg.vocab_size = json.load(open(os.path.join(src_dir, "config.json")))["vocab_size"]
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src_dir, f), d)
        m, _ = lib.model(d)
        gp = lib.L.init_struct(lib.lib.lt_gguf_params_init, lib.L.lt_gguf_params)
        out = os.path.join(work, dname + ".gguf")
        st = lib.lib.lt_model_export_gguf(m, None, out.encode(), ctypes.byref(gp))
        msg = lib.lib.lt_model_last_error(m).decode()
        check(lib.status_name(st).startswith("LT_ERR_UNSUPPORTED") and words in msg and not os.path.exists(out),
              f"{dname}: refused: {lib.status_name(st)}: {msg[:140]}")
        lib.lib.lt_model_free(m)


def gemma3_layout(args, lib):
    """Gemma 3 layer types other than llama.cpp's default (layer l slides when l % 6 < 5): written as the bool
    array gemma3.attention.sliding_window_pattern (the converter writes none); base f32 logits only."""
    print("== Gemma 3 with its own layer types")
    import transformers
    work = args.workdir
    src = os.path.join(work, "gemma3")
    d = os.path.join(work, "gemma3-layout")
    shutil.rmtree(d, ignore_errors=True)
    sc = json.load(open(os.path.join(src, "config.json")))
    cfg = transformers.Gemma3TextConfig(
        vocab_size=sc["vocab_size"], bos_token_id=sc["bos_token_id"], eos_token_id=sc["eos_token_id"],
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, query_pre_attn_scalar=32, sliding_window=6, max_position_embeddings=512,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
    torch.manual_seed(9200)
    mt = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for nme, p in mt.named_parameters():
            p.copy_(torch.rand_like(p) * 0.5 if "norm" in nme else torch.randn_like(p) * 0.2)
    mt.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), d)
    m, V = lib.model(d)
    path = os.path.join(work, "gemma3-layout.gguf")
    if export_f32(lib, m, path, "gemma3 layout"):
        _, kv, _ = read_gguf(path)
        pattern = [bool(x) for x in kv.get("gemma3.attention.sliding_window_pattern", [])]
        check(pattern == [True, False, True], f"gemma3 layout: gemma3.attention.sliding_window_pattern = {pattern}")
        check_f32_logits(args, lib, m, V, path, "gemma3 layout", 9200, TOL_F32_GELU)
    lib.lib.lt_model_free(m)


def export_f32(lib, m, path, what):
    """lt_model_export_gguf of m (no adapter) as an f32 file; a check that it succeeded"""
    gp = lib.L.init_struct(lib.lib.lt_gguf_params_init, lib.L.lt_gguf_params)
    gp.dtype = 0  # LT_GGUF_DTYPE_F32
    st = lib.lib.lt_model_export_gguf(m, None, path.encode(), ctypes.byref(gp))
    return check(st == 0, f"{what}: exported ({lib.status_name(st)}: {lib.lib.lt_model_last_error(m).decode()})")


def check_f32_logits(args, lib, m, V, path, what, seed, tol):
    """llama.cpp's logits of the f32 file at path vs ours (m) on 40 random ids"""
    ids = [int(x) for x in np.random.default_rng(seed).integers(0, V, 40)]
    lg = path + ".logits.bin"
    oracle(args, path, "--ctx", "64", "--ids", ",".join(map(str, ids)), "--logits-out", lg)
    r = rel(np.fromfile(lg, dtype=np.float32).reshape(40, -1)[:, :V], lib.logits(m, V, None, ids))
    check(r <= tol, f"{what}: base f32 logits, llama.cpp vs ours: {r:.2e} (<= {tol})")


def gptoss_mxfp4(args, lib):
    """The gptoss family's model with its experts stored as the openai/gpt-oss releases store them (MXFP4 blocks and
    scales, make_moe_models.mxfp4_quantize): written dequantized (f32): the expert tensors = the e2m1 codes times
    2^(scale - 127), split into gate (even) / up (odd) rows as the converter splits the float gate_up_proj; llama.cpp's
    f32 logits = ours on the loaded model."""
    print("== gpt-oss from an MXFP4 checkpoint")
    from safetensors.torch import load_file, save_file
    from make_moe_models import FP4, mxfp4_quantize
    work = args.workdir
    src, d = os.path.join(work, "gptoss"), os.path.join(work, "gptoss-mxfp4")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    sd = {}
    for k, v in load_file(os.path.join(src, "model.safetensors")).items():
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):  # (E, in, out) -> (E, out, in) blocks
            sd[k + "_blocks"], sd[k + "_scales"] = mxfp4_quantize(v.transpose(1, 2).float())
        else:
            sd[k] = v
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cj = json.load(open(os.path.join(src, "config.json")))
    cj["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    json.dump(cj, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), d)
    m, V = lib.model(d)
    path = os.path.join(work, "gptoss-mxfp4.gguf")
    if not export_f32(lib, m, path, "gptoss-mxfp4"):
        return
    _, _, ts = read_gguf(path)
    lut = torch.tensor(FP4, dtype=torch.float32)
    bad = []
    for k in [k for k in sd if k.endswith("_blocks")]:
        blocks, scales = sd[k], sd[k.replace("_blocks", "_scales")]
        codes = torch.stack([blocks & 15, blocks >> 4], -1).reshape(*blocks.shape[:-2], -1).long()
        w = (lut[codes].reshape(*scales.shape, 32) * torch.pow(2.0, scales.float() - 127)[..., None]).reshape(
            blocks.shape[0], blocks.shape[1], -1).numpy()  # (E, out, in)
        lyr = k.split(".")[2]
        want = {"ffn_down_exps": w} if "down_proj" in k else {"ffn_gate_exps": w[:, ::2], "ffn_up_exps": w[:, 1::2]}
        for nm, x in want.items():
            t = ts.get(f"blk.{lyr}.{nm}.weight")
            if t is None or not np.array_equal(np.asarray(t.data).reshape(x.shape), x):
                bad.append(f"blk.{lyr}.{nm}")
    check(not bad, f"gptoss-mxfp4: f32 expert tensors = the MXFP4 blocks dequantized, gate / up rows split"
                   f"{': ' + ', '.join(bad) if bad else ''}")
    check_f32_logits(args, lib, m, V, path, "gptoss-mxfp4", 9300, TOL_F32)
    lib.lib.lt_model_free(m)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--oracle", required=True)
    ap.add_argument("--llamacpp-src", required=True)
    ap.add_argument("--workdir", default="build/crosscheck-gguf")
    ap.add_argument("--families", default=",".join(f[0] for f in FAMILIES))
    args = ap.parse_args()
    args.cli, args.oracle = os.path.abspath(args.cli), os.path.abspath(args.oracle)
    os.makedirs(args.workdir, exist_ok=True)
    lib = Lib(os.path.abspath(args.lib))
    want = args.families.split(",")
    t0 = time.time()
    ready = []
    for i, spec in enumerate(FAMILIES):
        if spec[0] in want:
            try:
                ready.append(prepare(args, spec, 9100 + i))
            except Exception as e:  # one family's crash is a failure, the others still run
                check(False, f"{spec[0]}: {type(e).__name__}: {e}")
    # llama.cpp's converter on every family at once (one process: torch is imported once)
    jobs = []
    for c in ready:
        if not c["quant"]:
            name, pre = c["spec"][0], c["spec"][7]
            jobs += [c["mdir"], os.path.join(args.workdir, f"{name}-conv-f32.gguf"), "f32", pre]
    if jobs:
        run([sys.executable, os.path.join(HERE, "llamacpp_convert.py"), args.llamacpp_src, *jobs])
    print(f"(models, training, exports and the converter: {time.time() - t0:.1f} s)")
    for c in ready:
        try:
            verify(args, lib, c)
        except Exception as e:
            check(False, f"{c['spec'][0]}: {type(e).__name__}: {e}")
    if "mistral" in want and "gemma" in want:
        refusals(args, lib)
    refusals_new_families(args, lib)
    if "gemma3" in want:
        gemma3_layout(args, lib)
    if "gptoss" in want:
        gptoss_mxfp4(args, lib)
    for f in failures:
        print("  FAIL", f)
    print(f"crosscheck_gguf: {len(passed)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
