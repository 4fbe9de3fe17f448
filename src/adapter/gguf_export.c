/*
 * gguf_export.c - a model (base or merged with any delta) or a LoRA adapter as a GGUF file that llama.cpp
 * and Ollama load: the architecture's metadata keys, llama.cpp's tensor names and layouts, the tokenizer.
 *
 * defines: lt_gguf_params_init, lt_model_export_gguf, lt_adapter_export_gguf, lt_gguf_export_model
 *
 * Every key, name and transformation is convert_hf_to_gguf.py's / convert_lora_to_gguf.py's of the pinned
 * llama.cpp (docs/spec/gguf.md lists them per family), checked by tests/python/crosscheck_gguf.py
 * against the converter's own output and against llama.cpp running the files:
 *  - names: token_embd, blk.N.{attn_norm, attn_q|k|v|output (attn_qkv: Phi-3), attn_q_norm, attn_k_norm,
 *    ffn_norm, ffn_gate|up|down (ffn_up = gate|up: Phi-3), post_attention_norm, post_ffw_norm (Gemma 2 / 3,
 *    OLMo 2; gpt-oss: the MLP's norm), ffn_gate_inp (the router), ffn_gate|up|down_exps (every expert's
 *    projection stacked, (E, out, in)), gpt-oss's attn_sinks, attn_output.bias, ffn_gate_inp.bias and
 *    ffn_*_exps.bias (its (in, out) gate_up_proj transposed and split: gate the even, up the odd columns)},
 *    output_norm, output (absent when tied);
 *  - Llama / Mistral / Mixtral / SmolLM3 / Granite: q_proj and k_proj rows permuted for llama.cpp's RoPE (pairs
 *    (i, i + d/2) of each head become adjacent); the others use NeoX-style RoPE and are written as they are;
 *  - Gemma, Gemma 2, Gemma 3: every norm weight is written as 1 + w (llama.cpp's RMSNorm multiplies by it);
 *  - 1-D tensors, norms, biases and the router stay F32 whatever the requested type; Q8_0 falls back to F16 for a
 *    tensor whose rows are not a multiple of 32 values (as the converter does);
 *  - what llama.cpp hard-codes and a model may not match (SmolLM3's NoPE every 4th layer, experts in every
 *    layer, Gemma's query scale, gpt-oss's SwiGLU constants and YaRN betas / rounding) is checked and refused
 *    with LT_ERR_UNSUPPORTED naming it; a sliding-window layout other than llama.cpp's default is written as
 *    the per-layer bool array (Gemma 3, gpt-oss);
 *  - gpt-oss YaRN: rope.scaling.{type, factor, original_context_length} (and attn_factor when the model's
 *    attention_factor is not the default);
 *  - Llama 3 RoPE: the rope_freqs tensor of frequency divisors; Phi-3 longrope: rope_factors_long/short.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter.h"
#include "formats/gguf.h"
#include "text/vocab.h"

static const lt_gguf_params k_defaults = {.size = sizeof(lt_gguf_params), .dtype = LT_GGUF_DTYPE_F16};

LT_API void lt_gguf_params_init(lt_gguf_params *p, size_t size) {
    if (p) lt_fill_struct(p, size, &k_defaults, sizeof k_defaults);
}

static void read_params(const lt_gguf_params *in, lt_gguf_params *p) {
    *p = k_defaults;
    if (in) memcpy(p, in, in->size < sizeof *p ? in->size : sizeof *p);
}

/* ---- the family ----------------------------------------------------------------------------------- */

static const char *arch_name(const lt_model_config *c) {
    switch (c->arch) {
    case LT_ARCH_LLAMA:
    case LT_ARCH_MISTRAL: return "llama";
    case LT_ARCH_QWEN2: return "qwen2";
    case LT_ARCH_QWEN3: return "qwen3";
    case LT_ARCH_GEMMA: return "gemma";
    case LT_ARCH_GEMMA2: return "gemma2";
    case LT_ARCH_PHI3: return "phi3";
    case LT_ARCH_QWEN3_MOE: return "qwen3moe";
    case LT_ARCH_MIXTRAL: return "llama"; /* llama.cpp's llama graph with experts (llama.expert_count) */
    case LT_ARCH_GEMMA3: return "gemma3";
    case LT_ARCH_SMOLLM3: return "smollm3";
    case LT_ARCH_OLMO2: return "olmo2";
    case LT_ARCH_GRANITE: return "granite";
    case LT_ARCH_GPT_OSS: return "gpt-oss"; /* llama.cpp's LLM_ARCH_OPENAI_MOE */
    }
    return NULL;
}

/* llama.cpp's llama, smollm3 and granite graphs use GPT-J style RoPE on (2i, 2i+1): the converter
 * (LlamaModel and its subclasses) permutes q, k rows; the others use NeoX-style RoPE as transformers */
static int permutes_qk(const lt_model_config *c) {
    return c->arch == LT_ARCH_LLAMA || c->arch == LT_ARCH_MISTRAL || c->arch == LT_ARCH_MIXTRAL ||
           c->arch == LT_ARCH_SMOLLM3 || c->arch == LT_ARCH_GRANITE;
}

/* llama.cpp's default sliding-window layout of a period (load_swa_pattern(ml, period): layer l slides when
 * l % period < period - 1; transformers' default layer_types of Gemma 3 (6) and gpt-oss (2)); another layout is
 * written as the per-layer bool array */
static int default_swa_pattern(const lt_model_config *c, int period) {
    for (int l = 0; l < c->num_hidden_layers && l < LT_CONFIG_MAX_LAYERS; l++)
        if (c->layer_sliding[l] != (l % period < period - 1)) return 0;
    return 1;
}

/* What llama.cpp cannot express for this model (LT_ERR_UNSUPPORTED with the reason). */
static lt_status check_family(const lt_model_config *c, int untie, int approximate, lt_error *err) {
    if (!arch_name(c)) return lt_fail(err, LT_ERR_ARCH, "GGUF: no llama.cpp architecture for %s", c->architecture);
    if ((c->arch == LT_ARCH_GEMMA || c->arch == LT_ARCH_GEMMA2) && (!c->tie_word_embeddings || untie))
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF: llama.cpp's %s reads the LM head from token_embd; a model with its own lm_head "
                       "(untied, or a modules_to_save copy) cannot be written",
                       arch_name(c));
    if (c->arch == LT_ARCH_GEMMA2 || c->arch == LT_ARCH_GEMMA3) {
        /* llama.cpp derives the query scale from the shapes (gemma2.cpp, gemma3.cpp: the 27B models by their
         * layer count) */
        const int big = c->num_hidden_layers == (c->arch == LT_ARCH_GEMMA2 ? 46 : 62);
        const double want = big ? (double)c->hidden_size / c->num_attention_heads : (double)c->head_dim;
        const double have = c->query_pre_attn_scalar > 0 ? c->query_pre_attn_scalar : (double)c->head_dim;
        if (fabs(have - want) > 1e-9 * want)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's %s scales queries by %g^-0.5, this model by "
                           "query_pre_attn_scalar^-0.5 = %g^-0.5",
                           arch_name(c), want, have);
    }
    if (c->arch == LT_ARCH_GEMMA3 && c->attn_logit_softcapping > 0)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "GGUF: llama.cpp's gemma3 has no attention logit softcapping");
    if (c->arch == LT_ARCH_GPT_OSS) { /* what openai-moe.cpp, build_moe_ffn and ggml's YaRN hard-code */
        if (fabs(c->swiglu_alpha - 1.702) > 1e-9 || fabs(c->swiglu_limit - 7.0) > 1e-9)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss hard-codes swiglu_alpha 1.702 and swiglu_limit 7; this model "
                           "has %g and %g",
                           c->swiglu_alpha, c->swiglu_limit);
        if (c->rope_type != LT_ROPE_DEFAULT && c->rope_type != LT_ROPE_YARN)
            return lt_fail(err, LT_ERR_UNSUPPORTED, "GGUF: llama.cpp's gpt-oss scales RoPE by YaRN or not at all");
        if (c->rope_type == LT_ROPE_YARN && !c->rope_truncate && !approximate)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's YaRN rounds the correction range to whole dimensions (floor / ceil: "
                           "rope_parameters truncate true); this model's YaRN has truncate false, so a few RoPE "
                           "frequencies would differ (lt_gguf_params.allow_approximate / loratune export "
                           "--allow-approximate writes it anyway, as llama.cpp's converter does)");
        if (c->rope_type == LT_ROPE_YARN && (c->rope_beta_fast != 32 || c->rope_beta_slow != 1))
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss YaRN uses beta_fast 32 and beta_slow 1 (it reads neither from "
                           "the file); this model has %g and %g",
                           c->rope_beta_fast, c->rope_beta_slow);
        if (c->rot_dim != c->head_dim)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss rotates the whole head (partial_rotary_factor 1)");
        if (c->bias_mask != 0xFu || !c->moe_bias || !c->attn_sinks)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss needs the q, k, v, o biases (attention_bias true), the router "
                           "and expert biases and the sinks");
        if (c->n_sliding_layers == 0)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss interleaves sliding-window layers; this model has none");
        if (c->tie_word_embeddings && !untie)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's gpt-oss reads its own output.weight; a tied model cannot be written");
    }
    if (c->num_experts > 0) { /* qwen3moe and llama create the experts of every layer, renormalise the top k */
        if (c->n_moe_layers != c->num_hidden_layers)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's %s has experts in every layer; this model has %d MoE layers of %lld "
                           "(decoder_sparse_step / mlp_only_layers)",
                           arch_name(c), c->n_moe_layers, (long long)c->num_hidden_layers);
        if (!c->norm_topk_prob)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp's %s renormalises the top-k routing weights; this model has "
                           "norm_topk_prob false",
                           arch_name(c));
        if (c->arch == LT_ARCH_MIXTRAL && c->moe_intermediate_size != c->intermediate_size)
            return lt_fail(err, LT_ERR_UNSUPPORTED, "GGUF: llama.cpp's llama experts are feed_forward_length wide");
    }
    /* llama.cpp's smollm3, granite, qwen3moe and llama-with-experts graphs attend fully (Mistral's window, which
     * it ignores too, is accepted as before: identical below the window) */
    if (c->n_sliding_layers > 0 && (c->arch == LT_ARCH_SMOLLM3 || c->arch == LT_ARCH_GRANITE ||
                                    (c->num_experts > 0 && c->arch != LT_ARCH_GPT_OSS)))
        return lt_fail(err, LT_ERR_UNSUPPORTED, "GGUF: llama.cpp's %s has no sliding-window attention", arch_name(c));
    if (c->arch == LT_ARCH_SMOLLM3) /* llama.cpp: n_no_rope_layer_step = 4, hard-coded (smollm3.cpp) */
        for (int l = 0; l < c->num_hidden_layers; l++)
            if ((c->layer_rope[l] == LT_LAYER_ROPE_NONE) != ((l + 1) % 4 == 0))
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "GGUF: llama.cpp's smollm3 skips RoPE in every 4th layer; this model's layer %d %s", l,
                               c->layer_rope[l] == LT_LAYER_ROPE_NONE ? "skips it" : "applies it");
    if (c->arch == LT_ARCH_GRANITE && c->head_dim * c->num_attention_heads != c->hidden_size)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF: llama.cpp's granite derives head_dim from hidden_size / num_attention_heads");
    if (c->bias_mask & ~(c->arch == LT_ARCH_QWEN2 ? 7u : c->arch == LT_ARCH_GPT_OSS ? 15u : 0u))
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF: projection biases other than Qwen2's q/k/v and gpt-oss's attention are not written");
    if (c->rope_type == LT_ROPE_LONGROPE && c->arch != LT_ARCH_PHI3)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "GGUF: longrope outside Phi-3");
    return LT_OK;
}

/* The GGUF name of a checkpoint tensor ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight");
 * part 0 / 1: the gate / up half of gpt-oss's fused gate_up_proj (weight or bias). */
static int gguf_name(const lt_model_config *c, const lt_xtensor *t, int part, char *out, size_t len) {
    static const char *const hf[][2] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
        {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"}, /* Gemma 2 / 3, OLMo 2 */
        {"self_attn.q_norm.weight", "attn_q_norm.weight"},
        {"self_attn.k_norm.weight", "attn_k_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.qkv_proj.weight", "attn_qkv.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"self_attn.o_proj.bias", "attn_output.bias"}, /* gpt-oss */
        {"self_attn.sinks", "attn_sinks.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.gate_up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
        {"mlp.gate.weight", "ffn_gate_inp.weight"}, /* the router: Qwen3-MoE, Mixtral */
        {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
        {"mlp.router.weight", "ffn_gate_inp.weight"}, /* gpt-oss: the router and its bias */
        {"mlp.router.bias", "ffn_gate_inp.bias"},
        {"mlp.experts.down_proj_bias", "ffn_down_exps.bias"},
    };
    if (!strcmp(t->name, "model.embed_tokens.weight")) return snprintf(out, len, "token_embd.weight") < 0;
    if (!strcmp(t->name, "model.norm.weight")) return snprintf(out, len, "output_norm.weight") < 0;
    if (!strcmp(t->name, "lm_head.weight")) return snprintf(out, len, "output.weight") < 0;
    int l, at = 0;
    if (sscanf(t->name, "model.layers.%d.%n", &l, &at) != 1 || !at) return -1;
    const char *rest = t->name + at;
    static const char *const exps[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
    if (t->kind == LT_XT_EXPERT || t->kind == LT_XT_FUSED) { /* each projection of all the experts (E, out, in) */
        const int p = t->kind == LT_XT_FUSED && t->proj != P_DOWN ? P_GATE + part : t->proj;
        return snprintf(out, len, "blk.%d.%s.weight", l, exps[p - P_GATE]) < 0;
    }
    if (t->kind == LT_XT_FUSED_BIAS) return snprintf(out, len, "blk.%d.%s.bias", l, exps[part]) < 0;
    /* Gemma 2 / 3's and OLMo 2's is a sandwich norm, gpt-oss's the MLP's under that name, elsewhere ffn_norm */
    if (!strcmp(rest, "post_attention_layernorm.weight"))
        return snprintf(out, len, "blk.%d.%s", l,
                        c->sandwich_norms || c->arch == LT_ARCH_GPT_OSS ? "post_attention_norm.weight"
                                                                        : "ffn_norm.weight") < 0;
    for (size_t i = 0; i < sizeof hf / sizeof *hf; i++)
        if (!strcmp(rest, hf[i][0])) return snprintf(out, len, "blk.%d.%s", l, hf[i][1]) < 0;
    return -1;
}

/* rows of a q or k projection (or its bias, or a LoRA B), reordered as convert_hf_to_gguf's permute():
 * per head, row j * d/2 + i goes to 2 i + j (d = rows per head) */
static void permute_rows(float *x, int64_t rows, int64_t cols, int64_t heads, float *tmp) {
    const int64_t d = rows / heads;
    memcpy(tmp, x, (size_t)rows * cols * sizeof *x);
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < d / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(x + (h * d + 2 * i + j) * cols, tmp + (h * d + j * (d / 2) + i) * cols,
                       (size_t)cols * sizeof *x);
}

/* heads of a projection p's rows (q: attention heads, k: kv heads); 0 when p is not permuted */
static int64_t permute_heads(const lt_model_config *c, int p) {
    if (!permutes_qk(c)) return 0;
    return p == P_Q ? c->num_attention_heads : p == P_K ? c->num_key_value_heads : 0;
}

static lt_ggml_type ggml_type_of(lt_gguf_dtype d) {
    return d == LT_GGUF_DTYPE_F32    ? LT_GGML_F32
           : d == LT_GGUF_DTYPE_BF16 ? LT_GGML_BF16
           : d == LT_GGUF_DTYPE_Q8_0 ? LT_GGML_Q8_0
                                     : LT_GGML_F16;
}
static uint32_t
file_type_of(lt_gguf_dtype d) { /* llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32 */
    return d == LT_GGUF_DTYPE_F32 ? 0 : d == LT_GGUF_DTYPE_BF16 ? 32 : d == LT_GGUF_DTYPE_Q8_0 ? 7 : 1;
}

/* ---- the tokenizer ---------------------------------------------------------------------------------- */

static lt_status write_vocab(lt_gguf_writer *w, const lt_model_config *c, const lt_tokenizer *tok, lt_error *err) {
    lt_vocab_desc d;
    lt_status st = lt_tok_vocab_describe(tok, &d, err);
    if (st != LT_OK) return st;
    const int64_t V = c->vocab_size;
    char **tokens = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    if (d.n_tokens > V) {
        st = lt_fail(err, LT_ERR_SHAPE, "GGUF: the tokenizer has %d ids, the model's vocabulary %lld", d.n_tokens,
                     (long long)V);
        goto out;
    }
    /* the model may have more rows than the tokenizer has ids: "[PAD<id>]", unused (as the converter) */
    tokens = calloc((size_t)V, sizeof *tokens);
    types = calloc((size_t)V, sizeof *types);
    scores = calloc((size_t)V, sizeof *scores);
    if (!tokens || !types || !scores) {
        st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
        goto out;
    }
    for (int64_t i = 0; i < V && st == LT_OK; i++) {
        if (i < d.n_tokens) {
            tokens[i] = d.tokens[i];
            d.tokens[i] = NULL;
            types[i] = d.types[i];
            scores[i] = d.scores ? d.scores[i] : 0.0f;
        } else {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
            if (!(tokens[i] = strdup(pad))) st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
            types[i] = LT_TOKTYPE_UNUSED;
            scores[i] = -10000.0f;
        }
    }
    /* special ids: tokenizer_config.json first, then config.json (gguf-py's SpecialVocab order) */
    const int32_t bos = d.bos >= 0 ? d.bos : (int32_t)c->bos_token_id,
                  eos = d.eos >= 0 ? d.eos : (int32_t)c->eos_token_id,
                  pad = d.pad >= 0 ? d.pad : (int32_t)c->pad_token_id;
    if (st == LT_OK) st = lt_gguf_set_str(w, "tokenizer.ggml.model", d.model, err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "tokenizer.ggml.pre", d.pre, err);
    if (st == LT_OK) st = lt_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, (size_t)V, err);
    if (st == LT_OK && d.scores) st = lt_gguf_set_arr(w, "tokenizer.ggml.scores", LT_GGUF_F32, scores, (size_t)V, err);
    if (st == LT_OK) st = lt_gguf_set_arr(w, "tokenizer.ggml.token_type", LT_GGUF_I32, types, (size_t)V, err);
    if (st == LT_OK && d.merges)
        st = lt_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)d.merges, (size_t)d.n_merges, err);
    if (st == LT_OK && bos >= 0 && bos < V) st = lt_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos, err);
    if (st == LT_OK && eos >= 0 && eos < V) st = lt_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos, err);
    if (st == LT_OK && d.unk >= 0 && d.unk < V)
        st = lt_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)d.unk, err);
    if (st == LT_OK && pad >= 0 && pad < V)
        st = lt_gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)pad, err);
    if (st == LT_OK) st = lt_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", d.add_bos, err);
    if (st == LT_OK) st = lt_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", d.add_eos, err);
    if (st == LT_OK && d.model[0] == 'l')
        st = lt_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", d.add_space_prefix, err);
    if (st == LT_OK && d.chat_template) st = lt_gguf_set_str(w, "tokenizer.chat_template", d.chat_template, err);
    if (st == LT_OK && eos < 0)
        st = lt_fail(err, LT_ERR_MISSING,
                     "GGUF: neither tokenizer_config.json nor config.json names an EOS token: llama.cpp would "
                     "never stop generating");
out:
    if (tokens)
        for (int64_t i = 0; i < V; i++) free(tokens[i]);
    free(tokens);
    free(types);
    free(scores);
    lt_vocab_desc_free(&d);
    return st;
}

/* ---- hyperparameters ------------------------------------------------------------------------------- */

/* the per-layer bool array <arch>.attention.sliding_window_pattern (llama.cpp's load_swa_pattern reads it first) */
static lt_status write_swa_pattern(lt_gguf_writer *w, const lt_model_config *c, lt_error *err) {
    uint8_t pattern[LT_CONFIG_MAX_LAYERS];
    for (int l = 0; l < c->num_hidden_layers; l++) pattern[l] = c->layer_sliding[l];
    char k[128];
    snprintf(k, sizeof k, "%s.attention.sliding_window_pattern", arch_name(c));
    return lt_gguf_set_arr(w, k, LT_GGUF_BOOL, pattern, (size_t)c->num_hidden_layers, err);
}

static lt_status write_hparams(lt_gguf_writer *w, const lt_model_config *c, lt_error *err) {
    const char *a = arch_name(c);
    char k[128];
    lt_status st = LT_OK;
#define U32(key, v) \
    if (st == LT_OK) snprintf(k, sizeof k, "%s." key, a), st = lt_gguf_set_u32(w, k, (uint32_t)(v), err)
#define F32(key, v) \
    if (st == LT_OK) snprintf(k, sizeof k, "%s." key, a), st = lt_gguf_set_f32(w, k, (float)(v), err)
    if (permutes_qk(c)) U32("vocab_size", c->vocab_size); /* LlamaModel and its subclasses only */
    U32("context_length", c->max_position_embeddings);
    U32("embedding_length", c->hidden_size);
    U32("block_count", c->num_hidden_layers);
    U32("feed_forward_length", c->intermediate_size);
    U32("attention.head_count", c->num_attention_heads);
    U32("attention.head_count_kv", c->num_key_value_heads);
    F32("rope.freq_base", c->rope_theta);
    F32("attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    U32("attention.key_length", c->head_dim);
    U32("attention.value_length", c->head_dim);
    U32("rope.dimension_count", c->rot_dim);
    if (c->rope_type == LT_ROPE_LINEAR) {
        if (st == LT_OK) snprintf(k, sizeof k, "%s.rope.scaling.type", a), st = lt_gguf_set_str(w, k, "linear", err);
        F32("rope.scaling.factor", c->rope_factor);
    }
    if (c->rope_type == LT_ROPE_LONGROPE) { /* Phi-3 (phi.py): the factors are tensors */
        U32("rope.scaling.original_context_length", c->rope_original_max_position_embeddings);
        F32("rope.scaling.attn_factor", c->rope_attention_factor);
    }
    if (c->arch == LT_ARCH_GEMMA2) {
        F32("attn_logit_softcapping", c->attn_logit_softcapping);
        F32("final_logit_softcapping", c->final_logit_softcapping);
        U32("attention.sliding_window", c->sliding_window);
    }
    if (c->arch == LT_ARCH_PHI3) U32("attention.sliding_window", c->sliding_window); /* 0: none */
    if (c->num_experts > 0) {
        U32("expert_count", c->num_experts);
        U32("expert_used_count", c->num_experts_per_tok);
        if (c->arch == LT_ARCH_QWEN3_MOE) U32("expert_feed_forward_length", c->moe_intermediate_size);
    }
    if (c->arch == LT_ARCH_GEMMA3) {
        if (c->final_logit_softcapping > 0) F32("final_logit_softcapping", c->final_logit_softcapping);
        if (c->rope_local_theta > 0) F32("rope.freq_base_swa", c->rope_local_theta);
        if (c->n_sliding_layers > 0) U32("attention.sliding_window", c->sliding_window); /* absent: none */
        if (c->n_sliding_layers > 0 && !default_swa_pattern(c, 6) && st == LT_OK) st = write_swa_pattern(w, c, err);
    }
    if (c->arch == LT_ARCH_GPT_OSS) { /* gpt_oss.py: the window, the experts' width; the layout when not l % 2 */
        U32("expert_feed_forward_length", c->moe_intermediate_size);
        U32("attention.sliding_window", c->sliding_window);
        if (!default_swa_pattern(c, 2) && st == LT_OK) st = write_swa_pattern(w, c, err);
    }
    if (c->rope_type == LT_ROPE_YARN) { /* the converter's keys (llama.cpp reads type, factor and context) */
        if (st == LT_OK) snprintf(k, sizeof k, "%s.rope.scaling.type", a), st = lt_gguf_set_str(w, k, "yarn", err);
        F32("rope.scaling.factor", c->rope_factor);
        U32("rope.scaling.original_context_length", c->rope_original_max_position_embeddings);
        F32("rope.scaling.yarn_beta_fast", c->rope_beta_fast);
        F32("rope.scaling.yarn_beta_slow", c->rope_beta_slow);
        /* llama.cpp multiplies cos and sin by attn_factor * mscale(factor) (llama-context.cpp cancels its own
         * mscale, ggml's rope_yarn applies 1 + 0.1 ln factor): written only when the model's attention_factor is
         * not transformers' default mscale(factor) */
        const double ms = c->rope_factor <= 1 ? 1.0 : 0.1 * log(c->rope_factor) + 1.0;
        if (fabs(c->rope_attention_factor / ms - 1) > 1e-7)
            F32("rope.scaling.attn_factor", c->rope_attention_factor / ms);
    }
    if (c->arch == LT_ARCH_GRANITE) { /* the multipliers under llama.cpp's names (granite.py) */
        F32("attention.scale", lt_config_attn_scale(c));
        F32("embedding_scale", c->embed_scale);
        F32("residual_scale", c->residual_multiplier);
        F32("logit_scale", c->logits_scaling);
    }
#undef U32
#undef F32
    return st;
}

/* ---- the model file --------------------------------------------------------------------------------- */

enum { EXTRA_NONE, EXTRA_ROPE_FREQS, EXTRA_ROPE_LONG, EXTRA_ROPE_SHORT };

typedef struct gtensor {
    int xt;        /* index into the export list, or -1 for an extra tensor */
    int extra;     /* EXTRA_* */
    int64_t heads; /* rows to permute for llama.cpp's RoPE (0: none) */
    int plus_one;  /* Gemma norm: 1 + w */
    int64_t rows, cols;
    int n_exp, layer, proj; /* n_exp > 0: projection proj of layer's n_exp experts stacked (n_exp, rows, cols) */
    int half;               /* 1 / 2: the gate / up columns of gpt-oss's gate_up_proj_bias (E, 2I) (alternating) */
} gtensor;

typedef struct gexport {
    lt_model *m;
    const lt_adapter *a;
    lt_delta_fn delta;
    void *user;
    lt_xtensor *xt;
    gtensor *g;
    float *tmp; /* permutation / gate_up bias scratch */
} gexport;

static lt_status fill_model(void *user, int index, float *dst, size_t n, lt_error *err) {
    gexport *x = user;
    const gtensor *g = &x->g[index];
    const lt_model_config *c = &x->m->cfg;
    if (g->extra == EXTRA_ROPE_FREQS) { /* llama.cpp divides each frequency by its factor (llama.py) */
        lt_model_config plain = *c;
        plain.rope_type = LT_ROPE_DEFAULT;
        float inv[LT_CONFIG_MAX_ROPE_FACTORS];
        lt_rope_inv_freq(&plain, inv, LT_CONFIG_MAX_ROPE_FACTORS);
        const double old = (double)c->rope_original_max_position_embeddings, lo = c->rope_low_freq_factor,
                     hi = c->rope_high_freq_factor, f = c->rope_factor;
        for (size_t i = 0; i < n; i++) {
            const double wavelen = 2 * M_PI / (double)inv[i];
            if (wavelen < old / hi) dst[i] = 1.0f;
            else if (wavelen > old / lo) dst[i] = (float)f;
            else {
                const double smooth = (old / wavelen - lo) / (hi - lo);
                dst[i] = (float)(1 / ((1 - smooth) / f + smooth));
            }
        }
        return LT_OK;
    }
    if (g->extra == EXTRA_ROPE_LONG || g->extra == EXTRA_ROPE_SHORT) {
        const double *f = g->extra == EXTRA_ROPE_LONG ? c->rope_long_factor : c->rope_short_factor;
        for (size_t i = 0; i < n; i++) dst[i] = (float)f[i];
        return LT_OK;
    }
    if (g->n_exp) { /* (E, out, in): the experts' matrices one after another, as the converter's torch.stack */
        lt_status st = LT_OK;
        for (int e = 0; e < g->n_exp && st == LT_OK; e++) {
            const lt_xtensor t = {.kind = LT_XT_EXPERT,
                                  .layer = g->layer,
                                  .proj = g->proj,
                                  .expert = e,
                                  .ndim = 2,
                                  .shape = {g->rows, g->cols}};
            st = lt_export_tensor_data(x->m, x->a, x->delta, x->user, &t, dst + (size_t)e * g->rows * g->cols, err);
        }
        return st;
    }
    if (g->half) { /* gate_up_proj_bias as stored, (E, 2I): gate = [..., ::2], up = [..., 1::2] (gpt_oss.py) */
        lt_status st = lt_export_tensor_data(x->m, x->a, x->delta, x->user, &x->xt[g->xt], x->tmp, err);
        for (size_t i = 0; i < n && st == LT_OK; i++) dst[i] = x->tmp[2 * i + (size_t)(g->half - 1)];
        return st;
    }
    lt_status st = lt_export_tensor_data(x->m, x->a, x->delta, x->user, &x->xt[g->xt], dst, err);
    if (st != LT_OK) return st;
    if (g->heads) permute_rows(dst, g->rows, g->cols, g->heads, x->tmp);
    if (g->plus_one)
        for (size_t i = 0; i < n; i++) dst[i] += 1.0f;
    return LT_OK;
}

static lt_status load_tokenizer(const lt_model *m, const lt_gguf_params *p, lt_tokenizer **own,
                                const lt_tokenizer **tok, lt_error *err) {
    *own = NULL;
    *tok = p->tokenizer;
    if (*tok) return LT_OK;
    if (lt_tokenizer_load(m->dir, own) != LT_OK)
        return lt_fail(err, lt_thread_error()->status,
                       "GGUF: the model's directory %s has no usable tokenizer (%s); a GGUF without its tokenizer "
                       "cannot generate: pass lt_gguf_params.tokenizer",
                       m->dir, lt_last_error());
    *tok = *own;
    return LT_OK;
}

static void default_name(const lt_model *m, const lt_gguf_params *p, char *out, size_t len) {
    const char *s = p->name;
    if (!s) {
        s = strrchr(m->dir, '/');
        s = s && s[1] ? s + 1 : m->dir;
    }
    snprintf(out, len, "%.200s", *s ? s : "model");
}

lt_status lt_gguf_export_model(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *path,
                               const lt_gguf_params *params, lt_error *err) {
    lt_gguf_params p;
    read_params(params, &p);
    const lt_model_config *c = &m->cfg;
    if ((unsigned)p.dtype > LT_GGUF_DTYPE_Q8_0) return lt_fail(err, LT_ERR_ARGUMENT, "GGUF: unknown dtype %d", p.dtype);
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF: the model keeps its base weights in bf16; load it with "
                       "base_dtype LT_BASE_F32 to export");
    gexport x = {.m = m, .a = a, .delta = delta, .user = user};
    int n_xt = 0, untie = 0;
    lt_tokenizer *own_tok = NULL;
    const lt_tokenizer *tok = NULL;
    lt_gguf_writer *w = NULL;
    lt_status st = lt_export_tensors(m, a, &x.xt, &n_xt, &untie, err);
    if (st == LT_OK) st = check_family(c, untie, p.allow_approximate, err);
    if (st == LT_OK) st = load_tokenizer(m, &p, &own_tok, &tok, err);
    if (st == LT_OK && (!(w = lt_gguf_writer_new()) || !(x.g = calloc(2 * (size_t)n_xt + 3, sizeof *x.g))))
        st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
    char name[256];
    default_name(m, &p, name, sizeof name);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.architecture", arch_name(c), err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.type", "model", err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.name", name, err);
    if (st == LT_OK) st = write_hparams(w, c, err);
    if (st == LT_OK) st = lt_gguf_set_u32(w, "general.file_type", file_type_of(p.dtype), err);
    if (st == LT_OK) st = lt_gguf_set_u32(w, "general.quantization_version", 2, err); /* GGML_QNT_VERSION */
    if (st == LT_OK) st = write_vocab(w, c, tok, err);
    /* the tensors: the checkpoint's in its order, then the RoPE factor tensors */
    int n_g = 0;
    size_t max_floats = 0;
    const lt_ggml_type wt = ggml_type_of(p.dtype);
    for (int i = 0; i < n_xt && st == LT_OK; i++) {
        const lt_xtensor *t = &x.xt[i];
        if (t->kind == LT_XT_EXPERT && t->expert) continue; /* stacked into expert 0's tensor */
        /* gpt-oss's fused gate_up_proj (weight and bias) is two tensors, gate and up (the converter's split) */
        const int parts = t->kind == LT_XT_FUSED_BIAS || (t->kind == LT_XT_FUSED && t->proj != P_DOWN) ? 2 : 1;
        for (int part = 0; part < parts && st == LT_OK; part++) {
            char gname[112];
            if (gguf_name(c, t, part, gname, sizeof gname)) {
                st = lt_fail(err, LT_ERR_INTERNAL, "GGUF: no name for %s", t->name);
                break;
            }
            gtensor *g = &x.g[n_g++];
            g->xt = i;
            g->rows = t->shape[0];
            g->cols = t->shape[1];
            g->plus_one = t->norm && c->norm_offset == 1.0f;
            if (t->kind == LT_XT_MODULE || (t->kind == LT_XT_PLAIN && strstr(t->name, "proj.bias")))
                g->heads = permute_heads(c, t->proj);
            int ndim = t->ndim;
            int64_t shape[3] = {t->shape[0], t->shape[1], 0};
            if (t->kind == LT_XT_EXPERT || t->kind == LT_XT_FUSED) { /* (E, out, in) of expert e's (out, in) */
                g->n_exp = (int)c->num_experts;
                g->layer = t->layer;
                g->proj = t->kind == LT_XT_FUSED && t->proj != P_DOWN ? P_GATE + part : t->proj;
                if (t->kind == LT_XT_FUSED) {
                    const int64_t H = c->hidden_size, MI = c->moe_intermediate_size;
                    g->rows = g->proj == P_DOWN ? H : MI;
                    g->cols = g->proj == P_DOWN ? MI : H;
                }
                ndim = 3;
                shape[0] = g->n_exp, shape[1] = g->rows, shape[2] = g->cols;
            }
            if (t->kind == LT_XT_FUSED_BIAS) { /* (E, 2I) -> (E, I) each */
                g->half = 1 + part;
                shape[1] = g->cols = t->shape[1] / 2;
                if ((size_t)(t->shape[0] * t->shape[1]) > max_floats) max_floats = (size_t)(t->shape[0] * t->shape[1]);
            }
            /* the converter keeps 1-D tensors, norms, the router and every bias in f32 */
            const size_t gl = strlen(gname);
            const int f32 = t->ndim == 1 || t->norm || strstr(gname, "ffn_gate_inp") ||
                            (gl > 5 && !strcmp(gname + gl - 5, ".bias"));
            lt_ggml_type type = f32 ? LT_GGML_F32 : wt;
            if (type == LT_GGML_Q8_0 && g->cols % LT_Q8_0_BLOCK) type = LT_GGML_F16;
            st = lt_gguf_add_tensor(w, gname, ndim, shape, type, err);
            if ((size_t)(g->rows * g->cols) > max_floats) max_floats = (size_t)(g->rows * g->cols);
        }
    }
    if (st == LT_OK && c->rope_type == LT_ROPE_LLAMA3) {
        const int64_t half = c->rot_dim / 2;
        x.g[n_g++] = (gtensor){.xt = -1, .extra = EXTRA_ROPE_FREQS, .rows = half, .cols = 1};
        st = lt_gguf_add_tensor(w, "rope_freqs.weight", 1, &half, LT_GGML_F32, err);
    }
    if (st == LT_OK && c->rope_type == LT_ROPE_LONGROPE) {
        const int64_t half = c->n_rope_factors;
        x.g[n_g++] = (gtensor){.xt = -1, .extra = EXTRA_ROPE_LONG, .rows = half, .cols = 1};
        x.g[n_g++] = (gtensor){.xt = -1, .extra = EXTRA_ROPE_SHORT, .rows = half, .cols = 1};
        st = lt_gguf_add_tensor(w, "rope_factors_long.weight", 1, &half, LT_GGML_F32, err);
        if (st == LT_OK) st = lt_gguf_add_tensor(w, "rope_factors_short.weight", 1, &half, LT_GGML_F32, err);
    }
    if (st == LT_OK && !(x.tmp = malloc(max_floats * sizeof(float) + 1)))
        st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
    if (st == LT_OK) st = lt_gguf_write(w, path, fill_model, &x, err);
    lt_gguf_writer_free(w);
    lt_tokenizer_free(own_tok);
    free(x.xt);
    free(x.g);
    free(x.tmp);
    return st;
}

LT_API lt_status lt_model_export_gguf(lt_model *m, const lt_adapter *a, const char *path, const lt_gguf_params *p) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!path) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_export_gguf: path is NULL");
    if (a && a->model != m)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_export_gguf: the adapter belongs to another model");
    return lt_gguf_export_model(m, a, NULL, NULL, path, p, err);
}

/* ---- the LoRA adapter file ---------------------------------------------------------------------------- */

typedef struct lexport {
    const lt_adapter *a;
    int n;      /* tensors: lora_a, lora_b of each targeted module or expert projection */
    int *layer; /* per module */
    lt_module *mod;
    int *exp;   /* per module: -1 a linear module; P_GATE, P_UP, P_DOWN: that projection of every expert */
    float fold; /* into B: the adapter's scaling over llama.cpp's alpha / rank */
    int r_w;    /* rank written: r, or 2r for a converted PiSSA / OLoRA ([A; A0], [B, -B0]) */
    float *tmp;
} lexport;

/* The experts' LoRA of projection p as llama.cpp's LoRA of ffn_*_exps (build_lora_mm_id: expert e's
 * lora_a (r, in) and lora_b (out, r) at index e of the third dimension): lora_a (E, r_w, in) = A, lora_b
 * (E, out, r_w) = fold times p's row block of B (gate and up share one A and stack their B, as the
 * checkpoint's gate_up_proj); the ranks beyond r (a PiSSA / OLoRA adapter's written 2r) are zero. */
static lt_status fill_lora_experts(lexport *x, int l, int p, int is_b, float *dst, size_t n) {
    const lt_adapter *a = x->a;
    const lt_model *m = a->model;
    const lt_model_config *c = &m->cfg;
    const int r = a->p.rank, k = p == P_DOWN, E = (int)c->num_experts;
    int in, lout;
    lt_elora_dims(c, k, &in, &lout);
    const lt_lora *lo = lt_adapter_elora(a, l, k);
    memset(dst, 0, n * sizeof *dst);
    if (!is_b) {
        for (int e = 0; e < E; e++)
            m->be->ops->download(m->be, dst + (size_t)e * x->r_w * in, lo->A + (size_t)e * r * in,
                                 (size_t)r * in * sizeof(float));
        return LT_OK;
    }
    const int out = k ? lout : lout / 2, row0 = p == P_UP ? out : 0;
    m->be->ops->download(m->be, x->tmp, lo->B, (size_t)E * lout * r * sizeof(float));
    for (int e = 0; e < E; e++)
        for (int i = 0; i < out; i++)
            for (int j = 0; j < r; j++)
                dst[((size_t)e * out + i) * x->r_w + j] = x->fold * x->tmp[((size_t)e * lout + row0 + i) * r + j];
    return LT_OK;
}

/* lora_a (r_w, in) as PEFT's lora_A; lora_b (out, r_w) as PEFT's lora_B times fold, rows permuted like
 * the base tensor's */
static lt_status fill_lora(void *user, int index, float *dst, size_t n, lt_error *err) {
    lexport *x = user;
    const lt_adapter *a = x->a;
    const lt_model *m = a->model;
    const int k = index / 2, is_b = index % 2, r = a->p.rank, l = x->layer[k];
    if (x->exp[k] >= 0) return fill_lora_experts(x, l, x->exp[k], is_b, dst, n);
    const lt_module *mod = &x->mod[k];
    int in, out;
    lt_module_dims(&m->cfg, mod, &in, &out);
    const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mod->first);
    if (!is_b) {
        m->be->ops->download(m->be, dst, lo->A, (size_t)r * in * sizeof(float));
        if (lo->A0) m->be->ops->download(m->be, dst + (size_t)r * in, lo->A0, (size_t)r * in * sizeof(float));
        return LT_OK;
    }
    /* the module's B: the row blocks of its projections (a fused module's B is one (out, r) block) */
    float *B = x->tmp, *B0 = x->tmp + (size_t)out * r;
    m->be->ops->download(m->be, B, lo->B, (size_t)out * r * sizeof(float));
    if (lo->B0) m->be->ops->download(m->be, B0, lo->B0, (size_t)out * r * sizeof(float));
    for (int i = 0; i < out; i++)
        for (int j = 0; j < x->r_w; j++)
            dst[(size_t)i * x->r_w + j] = x->fold * (j < r ? B[(size_t)i * r + j] : -B0[(size_t)i * r + j - r]);
    const int64_t heads = permute_heads(&m->cfg, mod->first);
    if (heads && mod->count == 1) permute_rows(dst, out, x->r_w, heads, x->tmp);
    (void)err;
    return LT_OK;
}

/* one lora_a / lora_b pair of base tensor `base` (lora_a (E, r_w, in), lora_b (E, out, r_w); E = 0: 2-D) */
static lt_status add_lora_pair(lt_gguf_writer *w, const char *base, int64_t E, int64_t r_w, int64_t in, int64_t out,
                               lt_ggml_type wt, lt_error *err) {
    const int nd = E ? 3 : 2, o = E ? 0 : 1; /* 2-D: the shapes without their first entry */
    int64_t sa[3] = {E, r_w, in}, sb[3] = {E, out, r_w};
    lt_ggml_type ta = wt, tb = wt;
    if (ta == LT_GGML_Q8_0 && in % LT_Q8_0_BLOCK) ta = LT_GGML_F16;
    if (tb == LT_GGML_Q8_0 && r_w % LT_Q8_0_BLOCK) tb = LT_GGML_F16;
    char tn[128];
    snprintf(tn, sizeof tn, "%s.lora_a", base);
    lt_status st = lt_gguf_add_tensor(w, tn, nd, sa + o, ta, err);
    snprintf(tn, sizeof tn, "%s.lora_b", base);
    if (st == LT_OK) st = lt_gguf_add_tensor(w, tn, nd, sb + o, tb, err);
    return st;
}

LT_API lt_status lt_adapter_export_gguf(lt_adapter *a, const char *path, const lt_gguf_params *params) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error *err = &a->err;
    lt_error_clear(err);
    if (!path) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_export_gguf: path is NULL");
    lt_gguf_params p;
    read_params(params, &p);
    const lt_model *m = a->model;
    const lt_model_config *c = &m->cfg;
    if ((unsigned)p.dtype > LT_GGUF_DTYPE_Q8_0) return lt_fail(err, LT_ERR_ARGUMENT, "GGUF: unknown dtype %d", p.dtype);
    if (a->p.full_finetune || a->p.modules_to_save || a->p.use_dora)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF adapter: llama.cpp's LoRA has only A and B; %s cannot be expressed: export the merged "
                       "model instead (lt_model_export_gguf with the adapter, loratune export --format gguf "
                       "--adapter DIR)",
                       a->p.full_finetune ? "a full fine-tuning"
                       : a->p.use_dora    ? "DoRA's magnitude vector"
                                          : "modules_to_save (trained copies of "
                                            "embed_tokens / lm_head)");
    if (a->merged)
        return lt_fail(err, LT_ERR_STATE, "GGUF adapter: the adapter is merged into the model; unmerge it first");
    lt_status st = check_family(c, 0, p.allow_approximate, err);
    if (st != LT_OK) return st;
    /* convert_lora_to_gguf.py cannot name a gpt-oss expert LoRA (PEFT's mlp.experts lora_A / lora_B: its gpt-oss
     * class splits only the base's gate_up_proj), so no llama.cpp file of one exists to match */
    for (int l = 0; l < c->num_hidden_layers && c->arch == LT_ARCH_GPT_OSS; l++)
        if (lt_adapter_elora(a, l, 0) || lt_adapter_elora(a, l, 1))
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF adapter: llama.cpp's convert_lora_to_gguf.py has no gpt-oss expert LoRA (PEFT "
                           "target_parameters mlp.experts.gate_up_proj / down_proj); export the merged model instead "
                           "(lt_model_export_gguf with the adapter, loratune export --format gguf --adapter DIR)");
    lexport x = {.a = a, .r_w = a->init0 ? 2 * a->p.rank : a->p.rank};
    /* llama.cpp scales by alpha / rank (rank = lora_b's ne[0]); alpha written as PEFT's save does (doubled for
     * a converted PiSSA / OLoRA), and whatever differs from the adapter's scaling (rsLoRA's alpha / sqrt(r))
     * folded into B */
    const float alpha_w = a->p.alpha * (float)x.r_w / (float)a->p.rank;
    x.fold = a->scaling / (alpha_w / (float)x.r_w);
    const int L = (int)c->num_hidden_layers;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(c, mods);
    const int per_layer = n_mods + 3; /* the linear modules, the experts' gate, up, down */
    x.layer = calloc((size_t)L * per_layer + 1, sizeof *x.layer);
    x.mod = calloc((size_t)L * per_layer + 1, sizeof *x.mod);
    x.exp = calloc((size_t)L * per_layer + 1, sizeof *x.exp);
    lt_gguf_writer *w = lt_gguf_writer_new();
    if (!x.layer || !x.mod || !x.exp || !w) st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
    char name[256];
    default_name(m, &p, name, sizeof name);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.architecture", arch_name(c), err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.type", "adapter", err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "general.name", name, err);
    if (st == LT_OK) st = lt_gguf_set_str(w, "adapter.type", "lora", err);
    if (st == LT_OK) st = lt_gguf_set_f32(w, "adapter.lora.alpha", alpha_w, err);
    size_t max_tmp = 0;
    const lt_ggml_type wt = ggml_type_of(p.dtype);
    for (int l = 0; l < L && st == LT_OK; l++) {
        for (int q = 0; q < n_mods && st == LT_OK; q++) {
            if (!lt_adapter_lora(a, l, (lt_proj)mods[q].first)) continue;
            lt_xtensor t = {.kind = LT_XT_MODULE, .layer = l, .mod = mods[q], .ndim = 2};
            snprintf(t.name, sizeof t.name, "model.layers.%d.%s.%s.weight", l, mods[q].parent, mods[q].name);
            char base[112];
            gguf_name(c, &t, 0, base, sizeof base);
            int in, out;
            lt_module_dims(c, &mods[q], &in, &out);
            st = add_lora_pair(w, base, 0, x.r_w, in, out, wt, err);
            x.layer[x.n] = l;
            x.exp[x.n] = -1;
            x.mod[x.n++] = mods[q];
            if (2 * (size_t)out * x.r_w > max_tmp) max_tmp = 2 * (size_t)out * x.r_w;
        }
        for (int e = P_GATE; e <= P_DOWN && st == LT_OK; e++) {
            const int k = e == P_DOWN;
            if (!lt_adapter_elora(a, l, k)) continue;
            lt_xtensor t = {.kind = LT_XT_EXPERT, .layer = l, .proj = e, .ndim = 2};
            snprintf(t.name, sizeof t.name, "model.layers.%d.%s.experts", l, lt_moe_parent(c));
            char base[112];
            gguf_name(c, &t, 0, base, sizeof base);
            int in, lout;
            lt_elora_dims(c, k, &in, &lout);
            st = add_lora_pair(w, base, c->num_experts, x.r_w, in, k ? lout : lout / 2, wt, err);
            x.layer[x.n] = l;
            x.exp[x.n++] = e;
            if ((size_t)c->num_experts * lout * a->p.rank > max_tmp)
                max_tmp = (size_t)c->num_experts * lout * a->p.rank;
        }
    }
    if (st == LT_OK && !(x.tmp = malloc(max_tmp * sizeof(float) + 1)))
        st = lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory");
    if (st == LT_OK) st = lt_gguf_write(w, path, fill_lora, &x, err);
    lt_gguf_writer_free(w);
    free(x.layer);
    free(x.mod);
    free(x.exp);
    free(x.tmp);
    return st;
}
