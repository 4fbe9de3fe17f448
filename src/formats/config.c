/*
 * config.c - parse, check and write Hugging Face config.json of Llama-family models; RoPE frequencies.
 * defines: everything declared in config.h
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "formats/config.h"

/* ---- the architecture table -------------------------------------------------------------------- */

#define ACT_BIT(a) (1u << (a))

/* how a family decides which layers slide (config "layer_types" overrides every mode) */
enum { SLIDE_NONE = 0, SLIDE_QWEN = 1, SLIDE_ALL = 2, SLIDE_ALTERNATE = 3, SLIDE_GEMMA3 = 4, SLIDE_SMOLLM3 = 5 };
/* which projections carry biases */
enum { BIAS_LLAMA = 0, BIAS_QWEN2 = 1, BIAS_NONE = 2 };

typedef struct lt_arch_desc {
    const char *name; /* architectures[0]                                               */
    lt_arch_id id;
    const char *model_type; /* written by lt_config_write when the config has none            */
    unsigned activations;   /* ACT_BIT() of the hidden_act values this build implements      */
    int qk_norm;
    float norm_offset;
    int embed_scale_sqrt_hidden;
    int64_t default_head_dim; /* head_dim when config.json has none: 0 = hidden / heads      */
    int default_tied;         /* tie_word_embeddings default of the transformers config class */
    int bias_mode;            /* BIAS_*                                                     */
    int slide_mode;           /* SLIDE_*                                                    */
    int64_t default_window;   /* sliding_window when config.json has none                   */
} lt_arch_desc;

static const lt_arch_desc k_archs[] = {
    {"LlamaForCausalLM", LT_ARCH_LLAMA, "llama", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_LLAMA, SLIDE_NONE, 0},
    {"Qwen2ForCausalLM", LT_ARCH_QWEN2, "qwen2", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_QWEN2, SLIDE_QWEN, 4096},
    {"MistralForCausalLM", LT_ARCH_MISTRAL, "mistral", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_NONE, SLIDE_ALL,
     4096},
    {"Qwen3ForCausalLM", LT_ARCH_QWEN3, "qwen3", ACT_BIT(LT_ACT_SILU), 1, 0.0f, 0, 128, 0, BIAS_LLAMA, SLIDE_QWEN,
     4096},
    {"GemmaForCausalLM", LT_ARCH_GEMMA, "gemma", ACT_BIT(LT_ACT_GELU_TANH), 0, 1.0f, 1, 256, 1, BIAS_LLAMA, SLIDE_NONE,
     0},
    {"Phi3ForCausalLM", LT_ARCH_PHI3, "phi3", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_NONE, SLIDE_ALL, 0},
    {"Gemma2ForCausalLM", LT_ARCH_GEMMA2, "gemma2", ACT_BIT(LT_ACT_GELU_TANH), 0, 1.0f, 1, 256, 1, BIAS_LLAMA,
     SLIDE_ALTERNATE, 4096},
    {"Qwen3MoeForCausalLM", LT_ARCH_QWEN3_MOE, "qwen3_moe", ACT_BIT(LT_ACT_SILU), 1, 0.0f, 0, 0, 0, BIAS_LLAMA,
     SLIDE_NONE, 0},
    {"MixtralForCausalLM", LT_ARCH_MIXTRAL, "mixtral", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_NONE, SLIDE_ALL, 0},
    {"Gemma3ForCausalLM", LT_ARCH_GEMMA3, "gemma3_text", ACT_BIT(LT_ACT_GELU_TANH), LT_QK_NORM_HEAD, 1.0f, 1, 256, 1,
     BIAS_LLAMA, SLIDE_GEMMA3, 4096},
    {"SmolLM3ForCausalLM", LT_ARCH_SMOLLM3, "smollm3", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 1, BIAS_LLAMA,
     SLIDE_SMOLLM3, 0},
    {"Olmo2ForCausalLM", LT_ARCH_OLMO2, "olmo2", ACT_BIT(LT_ACT_SILU), LT_QK_NORM_FULL, 0.0f, 0, 0, 0, BIAS_LLAMA,
     SLIDE_NONE, 0},
    {"GraniteForCausalLM", LT_ARCH_GRANITE, "granite", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 0, 0, BIAS_LLAMA, SLIDE_NONE,
     0},
    {"GptOssForCausalLM", LT_ARCH_GPT_OSS, "gpt_oss", ACT_BIT(LT_ACT_SILU), 0, 0.0f, 0, 64, 0, BIAS_LLAMA,
     SLIDE_ALTERNATE, 128},
};

float lt_config_attn_scale(const lt_model_config *cfg) {
    if (cfg->attention_multiplier > 0) return (float)cfg->attention_multiplier; /* Granite: self.scaling as is */
    if (cfg->query_pre_attn_scalar > 0) return (float)pow(cfg->query_pre_attn_scalar, -0.5);
    return 1.0f / sqrtf((float)cfg->head_dim);
}
#define N_ARCHS ((int)(sizeof k_archs / sizeof k_archs[0]))

const char *lt_config_family(const lt_model_config *cfg) {
    if (cfg && cfg->arch == LT_ARCH_QWEN3_MOE) return "Qwen3MoE";
    if (cfg && cfg->arch == LT_ARCH_MIXTRAL) return "Mixtral";
    if (cfg && cfg->arch == LT_ARCH_GPT_OSS) return "GptOss";
    static const char *const names[] = {"Llama", "Qwen2",  "Qwen3",   "Mistral", "Gemma",  "Gemma2",
                                        "Phi3",  "Gemma3", "SmolLM3", "Olmo2",   "Granite"};
    return cfg && (unsigned)cfg->arch < sizeof names / sizeof *names ? names[cfg->arch] : "?";
}

static const lt_arch_desc *find_arch(const char *name) {
    for (int i = 0; i < N_ARCHS; i++)
        if (strcmp(k_archs[i].name, name) == 0) return &k_archs[i];
    return NULL;
}

static void supported_list(char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_ARCHS && used < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", k_archs[i].name);
        if (w < 0) break;
        used += (size_t)w;
    }
}

static const struct {
    const char *name;
    lt_activation act;
} k_acts[] = {
    {"silu", LT_ACT_SILU},          {"swish", LT_ACT_SILU},
    {"gelu", LT_ACT_GELU},          {"gelu_pytorch_tanh", LT_ACT_GELU_TANH},
    {"gelu_new", LT_ACT_GELU_TANH},
};

/* ---- defaults ---------------------------------------------------------------------------------- */

void lt_config_init_llama(lt_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", "LlamaForCausalLM");
    cfg->arch = LT_ARCH_LLAMA;
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", "llama");
    cfg->vocab_size = 32000;
    cfg->hidden_size = 4096;
    cfg->intermediate_size = 11008;
    cfg->num_hidden_layers = 32;
    cfg->num_attention_heads = 32;
    cfg->num_key_value_heads = 32;
    cfg->head_dim = 128;
    cfg->max_position_embeddings = 2048;
    cfg->rms_norm_eps = 1e-6;
    cfg->tie_word_embeddings = 0;
    cfg->attention_bias = 0;
    cfg->mlp_bias = 0;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "%s", "silu");
    cfg->activation = LT_ACT_SILU;
    cfg->bos_token_id = -1;
    cfg->pad_token_id = -1;
    cfg->eos_token_id = -1;
    cfg->n_eos = 0;
    cfg->rope_theta = 10000.0;
    cfg->partial_rotary_factor = 1.0;
    cfg->rot_dim = 128;
    cfg->rope_type = LT_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_low_freq_factor = 0.0;
    cfg->rope_high_freq_factor = 0.0;
    cfg->rope_original_max_position_embeddings = 0;
    cfg->qk_norm = 0;
    cfg->norm_offset = 0.0f;
    cfg->sliding_window = 0;
    cfg->embed_scale = 1.0;
    cfg->bias_mask = 0;
    cfg->n_sliding_layers = 0;
    memset(cfg->layer_sliding, 0, sizeof cfg->layer_sliding);
    cfg->use_sliding_window = 0;
    cfg->max_window_layers = 0;
    cfg->has_layer_types = 0;
    cfg->sandwich_norms = 0;
    cfg->fused_proj = 0;
    cfg->n_rope_factors = 0;
    cfg->rope_attention_factor = 1.0;
    cfg->query_pre_attn_scalar = 0;
    cfg->attn_logit_softcapping = 0;
    cfg->final_logit_softcapping = 0;
    memset(cfg->layer_rope, LT_LAYER_ROPE_GLOBAL, sizeof cfg->layer_rope);
    cfg->rope_local_theta = 0;
    cfg->no_pre_norms = 0;
    cfg->residual_multiplier = 1.0;
    cfg->attention_multiplier = 0;
    cfg->logits_scaling = 1.0;
    cfg->has_no_rope_layers = 0;
    cfg->rope_beta_fast = 32.0;
    cfg->rope_beta_slow = 1.0;
    cfg->rope_truncate = 1;
    cfg->attn_sinks = 0;
    cfg->moe_bias = 0;
    cfg->swiglu_alpha = 0;
    cfg->swiglu_limit = 0;
}

/* ---- typed field readers (absent or null: keep the default) ----------------------------------- */

typedef struct parse_ctx {
    const char *src;
    lt_error *err;
} parse_ctx;

static json_t *field(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static lt_status get_int(parse_ctx *c, json_t *obj, const char *prefix, const char *key, int64_t *out) {
    json_t *v = field(obj, key);
    if (!v) return LT_OK;
    if (!json_is_integer(v))
        return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s%s\" must be an integer", c->src, prefix, key);
    *out = (int64_t)json_integer_value(v);
    return LT_OK;
}

static lt_status get_num(parse_ctx *c, json_t *obj, const char *prefix, const char *key, double *out) {
    json_t *v = field(obj, key);
    if (!v) return LT_OK;
    if (!json_is_number(v))
        return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s%s\" must be a number", c->src, prefix, key);
    *out = json_number_value(v);
    return LT_OK;
}

static lt_status get_bool(parse_ctx *c, json_t *obj, const char *key, int *out) {
    json_t *v = field(obj, key);
    if (!v) return LT_OK;
    if (!json_is_boolean(v)) return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s\" must be true or false", c->src, key);
    *out = json_is_true(v) ? 1 : 0;
    return LT_OK;
}

static lt_status get_str(parse_ctx *c, json_t *obj, const char *key, char *out, size_t len) {
    json_t *v = field(obj, key);
    if (!v) return LT_OK;
    if (!json_is_string(v)) return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s\" must be a string", c->src, key);
    const char *s = json_string_value(v);
    if (strlen(s) >= len)
        return lt_fail(c->err, LT_ERR_FORMAT, "%s: field \"%s\" is too long (%zu bytes, at most %zu)", c->src, key,
                       strlen(s), len - 1);
    memcpy(out, s, strlen(s) + 1);
    return LT_OK;
}

/* A required number inside a rope dict. */
static lt_status get_rope_num(parse_ctx *c, json_t *rope, const char *rname, const char *type, const char *key,
                              double *out) {
    if (!field(rope, key))
        return lt_fail(c->err, LT_ERR_MISSING, "%s: \"%s\" with rope_type '%s' lacks \"%s\"", c->src, rname, type, key);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", rname);
    return get_num(c, rope, prefix, key, out);
}

static lt_status parse_token_ids(parse_ctx *c, json_t *root, lt_model_config *cfg) {
    json_t *b = field(root, "bos_token_id");
    if (b) {
        if (json_is_array(b)) b = json_array_size(b) ? json_array_get(b, 0) : NULL;
        if (b && !json_is_integer(b))
            return lt_fail(c->err, LT_ERR_JSON, "%s: field \"bos_token_id\" must be an integer or a list of integers",
                           c->src);
        if (b) cfg->bos_token_id = (int64_t)json_integer_value(b);
    }
    json_t *pd = field(root, "pad_token_id");
    if (pd && json_is_integer(pd)) cfg->pad_token_id = (int64_t)json_integer_value(pd);
    json_t *e = field(root, "eos_token_id");
    if (!e) return LT_OK;
    if (json_is_integer(e)) {
        cfg->eos_token_ids[0] = cfg->eos_token_id = (int64_t)json_integer_value(e);
        cfg->n_eos = 1;
        return LT_OK;
    }
    if (!json_is_array(e))
        return lt_fail(c->err, LT_ERR_JSON, "%s: field \"eos_token_id\" must be an integer or a list of integers",
                       c->src);
    size_t i;
    json_t *x;
    json_array_foreach(e, i, x) {
        if (!json_is_integer(x))
            return lt_fail(c->err, LT_ERR_JSON, "%s: field \"eos_token_id\"[%zu] must be an integer", c->src, i);
        if (cfg->n_eos < LT_CONFIG_MAX_EOS) cfg->eos_token_ids[cfg->n_eos++] = (int64_t)json_integer_value(x);
    }
    cfg->eos_token_id = cfg->n_eos ? cfg->eos_token_ids[0] : -1;
    return LT_OK;
}

/* One rope dict (rope_parameters, rope_scaling, or Gemma 3's rope_parameters.full_attention) named rname. */
static lt_status parse_rope_dict(parse_ctx *c, json_t *root, json_t *rope, const char *rname, lt_model_config *cfg) {
    lt_status st;
    if (!json_is_object(rope)) return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s\" must be an object", c->src, rname);
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%s.", rname);
    if ((st = get_num(c, rope, prefix, "rope_theta", &cfg->rope_theta)) != LT_OK) return st;
    if ((st = get_num(c, rope, prefix, "partial_rotary_factor", &cfg->partial_rotary_factor)) != LT_OK) return st;

    const char *tkey = field(rope, "rope_type") ? "rope_type" : "type"; /* "type": legacy spelling */
    json_t *t = field(rope, tkey);
    if (!t) { /* no type: default, unless this is a per-layer-type map (transformers v5, e.g. Gemma 3) */
        const char *k;
        json_t *v;
        json_object_foreach(rope, k, v) {
            if (json_is_object(v))
                return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: \"%s\" per layer type (\"%s\") is not supported",
                               c->src, rname, k);
        }
        return LT_OK;
    }
    if (!json_is_string(t))
        return lt_fail(c->err, LT_ERR_JSON, "%s: field \"%s.%s\" must be a string", c->src, rname, tkey);
    const char *type = json_string_value(t);
    if (strcmp(type, "default") == 0) {
        cfg->rope_type = LT_ROPE_DEFAULT;
    } else if (strcmp(type, "linear") == 0) {
        cfg->rope_type = LT_ROPE_LINEAR;
        if ((st = get_rope_num(c, rope, rname, type, "factor", &cfg->rope_factor)) != LT_OK) return st;
    } else if (strcmp(type, "llama3") == 0) {
        cfg->rope_type = LT_ROPE_LLAMA3;
        double orig = 0;
        if ((st = get_rope_num(c, rope, rname, type, "factor", &cfg->rope_factor)) != LT_OK ||
            (st = get_rope_num(c, rope, rname, type, "low_freq_factor", &cfg->rope_low_freq_factor)) != LT_OK ||
            (st = get_rope_num(c, rope, rname, type, "high_freq_factor", &cfg->rope_high_freq_factor)) != LT_OK ||
            (st = get_rope_num(c, rope, rname, type, "original_max_position_embeddings", &orig)) != LT_OK)
            return st;
        if (!(orig >= 1 && orig <= 9.0e15) || orig != floor(orig))
            return lt_fail(c->err, LT_ERR_FORMAT,
                           "%s: \"%s.original_max_position_embeddings\" = %g is not a positive integer", c->src, rname,
                           orig);
        cfg->rope_original_max_position_embeddings = (int64_t)orig;
    } else if (strcmp(type, "longrope") == 0 ||
               (cfg->arch == LT_ARCH_PHI3 && (strcmp(type, "su") == 0 || strcmp(type, "yarn") == 0))) {
        /* Phi3Config maps the legacy "su" / "yarn" to longrope */
        cfg->rope_type = LT_ROPE_LONGROPE;
        const char *fk[2] = {"short_factor", "long_factor"};
        double *dst[2] = {cfg->rope_short_factor, cfg->rope_long_factor};
        int nf[2] = {0, 0};
        for (int i = 0; i < 2; i++) {
            json_t *a = field(rope, fk[i]);
            if (!a)
                return lt_fail(c->err, LT_ERR_MISSING, "%s: \"%s\" with rope_type 'longrope' lacks \"%s\"", c->src,
                               rname, fk[i]);
            if (!json_is_array(a) || json_array_size(a) > LT_CONFIG_MAX_ROPE_FACTORS)
                return lt_fail(c->err, LT_ERR_JSON, "%s: \"%s.%s\" must be a list of at most %d numbers", c->src, rname,
                               fk[i], LT_CONFIG_MAX_ROPE_FACTORS);
            size_t j;
            json_t *x;
            json_array_foreach(a, j, x) {
                if (!json_is_number(x))
                    return lt_fail(c->err, LT_ERR_JSON, "%s: \"%s.%s\"[%zu] must be a number", c->src, rname, fk[i], j);
                dst[i][j] = json_number_value(x);
            }
            nf[i] = (int)json_array_size(a);
        }
        if (nf[0] != nf[1])
            return lt_fail(c->err, LT_ERR_FORMAT,
                           "%s: longrope short_factor (%d) and long_factor (%d) differ in length", c->src, nf[0],
                           nf[1]);
        cfg->n_rope_factors = nf[0];
        /* original_max_position_embeddings: the top-level key wins (Phi3Config), then the rope dict */
        double orig = 0;
        if ((st = get_num(c, rope, prefix, "original_max_position_embeddings", &orig)) != LT_OK) return st;
        if ((st = get_num(c, root, "", "original_max_position_embeddings", &orig)) != LT_OK) return st;
        if (!(orig >= 1) || orig != floor(orig))
            return lt_fail(c->err, LT_ERR_MISSING, "%s: longrope needs a positive original_max_position_embeddings",
                           c->src);
        cfg->rope_original_max_position_embeddings = (int64_t)orig;
        double factor = -1, af = -1;
        if ((st = get_num(c, rope, prefix, "factor", &factor)) != LT_OK) return st;
        if ((st = get_num(c, rope, prefix, "attention_factor", &af)) != LT_OK) return st;
        cfg->rope_factor = factor; /* < 0: max_position_embeddings / original, derived in validate */
        cfg->rope_attention_factor = af;
    } else if (strcmp(type, "yarn") == 0 && cfg->arch == LT_ARCH_GPT_OSS) {
        /* _compute_yarn_parameters; mscale / mscale_all_dim (DeepSeek) are refused, not ignored */
        cfg->rope_type = LT_ROPE_YARN;
        double orig = (double)cfg->max_position_embeddings, af = -1, bf = 0, bs = 0;
        cfg->rope_factor = -1;  /* absent: max_position_embeddings / original (validate) */
        cfg->rope_truncate = 1; /* config.rope_parameters.get("truncate", True) */
        if ((st = get_num(c, rope, prefix, "factor", &cfg->rope_factor)) != LT_OK ||
            (st = get_num(c, rope, prefix, "attention_factor", &af)) != LT_OK ||
            (st = get_num(c, rope, prefix, "beta_fast", &bf)) != LT_OK ||
            (st = get_num(c, rope, prefix, "beta_slow", &bs)) != LT_OK ||
            (st = get_num(c, rope, prefix, "original_max_position_embeddings", &orig)) != LT_OK ||
            (st = get_bool(c, rope, "truncate", &cfg->rope_truncate)) != LT_OK)
            return st;
        if (field(rope, "mscale") || field(rope, "mscale_all_dim"))
            return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: \"%s\": yarn with mscale / mscale_all_dim is not supported",
                           c->src, rname);
        if (!(orig >= 1 && orig <= 9.0e15) || orig != floor(orig))
            return lt_fail(c->err, LT_ERR_FORMAT,
                           "%s: \"%s.original_max_position_embeddings\" = %g is not a positive integer", c->src, rname,
                           orig);
        cfg->rope_original_max_position_embeddings = (int64_t)orig;
        cfg->rope_attention_factor = af;           /* < 0: from factor (validate) */
        cfg->rope_beta_fast = bf != 0 ? bf : 32.0; /* `or 32`: 0 and null mean the default */
        cfg->rope_beta_slow = bs != 0 ? bs : 1.0;
    } else {
        return lt_fail(c->err, LT_ERR_UNSUPPORTED,
                       "%s: %s.%s '%s' is not supported (supported: default, linear, llama3, longrope; yarn for "
                       "GptOssForCausalLM)",
                       c->src, rname, tkey, type);
    }
    return LT_OK;
}

/* Gemma3TextConfig: transformers 5 writes rope_parameters {"full_attention": {...}, "sliding_attention":
 * {...}}; older configs the global layers' rope_theta / rope_scaling and the local rope_local_base_freq.
 * Defaults: global theta 1e6, local 1e4 (default_theta); the local layers are never scaled here (a
 * sliding_attention dict with another rope_type is refused). */
static lt_status parse_rope_gemma3(parse_ctx *c, json_t *root, lt_model_config *cfg) {
    lt_status st;
    cfg->rope_theta = 1000000.0;
    cfg->rope_local_theta = 10000.0;
    if ((st = get_num(c, root, "", "rope_theta", &cfg->rope_theta)) != LT_OK ||
        (st = get_num(c, root, "", "rope_local_base_freq", &cfg->rope_local_theta)) != LT_OK)
        return st;
    json_t *rp = field(root, "rope_parameters");
    if (!rp) {
        json_t *rs = field(root, "rope_scaling");
        return rs ? parse_rope_dict(c, root, rs, "rope_scaling", cfg) : LT_OK;
    }
    if (!json_is_object(rp))
        return lt_fail(c->err, LT_ERR_JSON, "%s: field \"rope_parameters\" must be an object", c->src);
    json_t *loc = field(rp, "sliding_attention"), *full = field(rp, "full_attention");
    if (loc) {
        if (!json_is_object(loc))
            return lt_fail(c->err, LT_ERR_JSON, "%s: field \"rope_parameters.sliding_attention\" must be an object",
                           c->src);
        if ((st = get_num(c, loc, "rope_parameters.sliding_attention.", "rope_theta", &cfg->rope_local_theta)) != LT_OK)
            return st;
        json_t *t = field(loc, "rope_type");
        if (t && (!json_is_string(t) || strcmp(json_string_value(t), "default") != 0))
            return lt_fail(c->err, LT_ERR_UNSUPPORTED,
                           "%s: rope_parameters.sliding_attention: only rope_type 'default' is supported", c->src);
    }
    return full ? parse_rope_dict(c, root, full, "rope_parameters.full_attention", cfg) : LT_OK;
}

static lt_status parse_rope(parse_ctx *c, json_t *root, lt_model_config *cfg) {
    lt_status st;
    cfg->rope_type = LT_ROPE_DEFAULT;
    if ((st = get_num(c, root, "", "partial_rotary_factor", &cfg->partial_rotary_factor)) != LT_OK) return st;
    if (cfg->arch == LT_ARCH_GEMMA3) return parse_rope_gemma3(c, root, cfg);
    if (cfg->arch == LT_ARCH_SMOLLM3) cfg->rope_theta = 2000000.0; /* SmolLM3Config.default_theta */
    if (cfg->arch == LT_ARCH_GPT_OSS) { /* GptOssConfig: default_theta and its rope_parameters default */
        cfg->rope_theta = 150000.0;
        cfg->rope_type = LT_ROPE_YARN;
        cfg->rope_factor = 32.0;
        cfg->rope_original_max_position_embeddings = 4096;
        cfg->rope_attention_factor = -1;
        cfg->rope_truncate = 0;
    }
    if ((st = get_num(c, root, "", "rope_theta", &cfg->rope_theta)) != LT_OK) return st;
    /* the newer rope_parameters wins over the legacy rope_scaling */
    const char *rname = "rope_parameters";
    json_t *rope = field(root, rname);
    if (!rope) {
        rname = "rope_scaling";
        rope = field(root, rname);
    }
    return rope ? parse_rope_dict(c, root, rope, rname, cfg) : LT_OK;
}

/* Biases and sliding-window layers, the way each family's transformers config derives them. */
static lt_status parse_family(parse_ctx *c, json_t *root, const lt_arch_desc *arch, lt_model_config *cfg) {
    lt_status st;
    const unsigned attn = 0xFu, mlp = 0x70u; /* q,k,v,o and gate,up,down in lt_proj order */
    if (arch->bias_mode == BIAS_LLAMA) cfg->bias_mask = (cfg->attention_bias ? attn : 0u) | (cfg->mlp_bias ? mlp : 0u);
    else if (arch->bias_mode == BIAS_QWEN2) cfg->bias_mask = 0x7u; /* Qwen2Attention: q, k, v with bias, o without */
    else cfg->bias_mask = 0;
    if (arch->id == LT_ARCH_QWEN2 && cfg->mlp_bias)
        return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: mlp_bias is not supported for %s", c->src, arch->name);
    /* only Llama's, SmolLM3's and Granite's MLPs read mlp_bias */
    const int mlp_reads_bias = arch->id == LT_ARCH_LLAMA || arch->id == LT_ARCH_SMOLLM3 || arch->id == LT_ARCH_GRANITE;
    if (arch->bias_mode == BIAS_LLAMA && cfg->mlp_bias && !mlp_reads_bias) cfg->bias_mask &= ~mlp;

    /* sliding window: absent -> the class default, null -> none */
    cfg->sliding_window = 0;
    if (arch->slide_mode == SLIDE_NONE) return LT_OK;
    const int L = (int)cfg->num_hidden_layers;
    const int per_layer_rope = arch->slide_mode == SLIDE_GEMMA3 || arch->slide_mode == SLIDE_SMOLLM3;
    if (per_layer_rope && L > LT_CONFIG_MAX_LAYERS)
        return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: %s with more than %d layers", c->src, arch->name,
                       LT_CONFIG_MAX_LAYERS);
    json_t *sw = json_object_get(root, "sliding_window");
    int64_t window = arch->default_window;
    if (sw && json_is_null(sw)) window = 0;
    else if ((st = get_int(c, root, "", "sliding_window", &window)) != LT_OK) return st;
    if (window < 0) return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"sliding_window\" must not be negative", c->src);
    if (arch->slide_mode == SLIDE_QWEN || arch->slide_mode == SLIDE_SMOLLM3) {
        cfg->max_window_layers = 28;
        if ((st = get_bool(c, root, "use_sliding_window", &cfg->use_sliding_window)) != LT_OK) return st;
        if ((st = get_int(c, root, "", "max_window_layers", &cfg->max_window_layers)) != LT_OK) return st;
        if (!cfg->use_sliding_window) window = 0; /* Qwen2Config: sliding_window only with use_sliding_window */
    }
    if (arch->slide_mode == SLIDE_GEMMA3) {
        int bidir = 0;
        if ((st = get_bool(c, root, "use_bidirectional_attention", &bidir)) != LT_OK) return st;
        if (bidir)
            return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: use_bidirectional_attention is not supported", c->src);
    }
    if (arch->slide_mode == SLIDE_SMOLLM3) { /* SmolLM3Config: no_rope_layers[l] = 0 marks a NoPE layer */
        int64_t interval = 4;
        if ((st = get_int(c, root, "", "no_rope_layer_interval", &interval)) != LT_OK) return st;
        json_t *nr = field(root, "no_rope_layers");
        if (nr && (!json_is_array(nr) || (int64_t)json_array_size(nr) != cfg->num_hidden_layers))
            return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"no_rope_layers\" must be a list of %lld integers", c->src,
                           (long long)cfg->num_hidden_layers);
        if (!nr && interval <= 0)
            return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"no_rope_layer_interval\" must be positive", c->src);
        cfg->has_no_rope_layers = nr != NULL;
        for (int l = 0; l < L; l++) {
            int64_t rope = (l + 1) % interval != 0;
            json_t *v = nr ? json_array_get(nr, (size_t)l) : NULL;
            if (v && !json_is_integer(v))
                return lt_fail(c->err, LT_ERR_JSON, "%s: \"no_rope_layers\"[%d] must be an integer", c->src, l);
            if (v) rope = json_integer_value(v) != 0;
            cfg->layer_rope[l] = rope ? LT_LAYER_ROPE_GLOBAL : LT_LAYER_ROPE_NONE;
        }
    }
    json_t *lt = field(root, "layer_types");
    if (lt && arch->slide_mode != SLIDE_ALL) {
        if (!json_is_array(lt)) return lt_fail(c->err, LT_ERR_JSON, "%s: field \"layer_types\" must be a list", c->src);
        if ((int64_t)json_array_size(lt) != cfg->num_hidden_layers)
            return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"layer_types\" has %zu entries for %lld layers", c->src,
                           json_array_size(lt), (long long)cfg->num_hidden_layers);
        cfg->has_layer_types = 1;
    }
    /* Gemma 3: a layer's type also picks its RoPE, window or not; Gemma3TextConfig's legacy pattern */
    int64_t pattern = 6;
    if (arch->slide_mode == SLIDE_GEMMA3 && (st = get_int(c, root, "", "sliding_window_pattern", &pattern)) != LT_OK)
        return st;
    if (arch->slide_mode == SLIDE_GEMMA3 && !cfg->has_layer_types && pattern <= 0)
        return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"sliding_window_pattern\" must be positive", c->src);
    if (window == 0 && !per_layer_rope) return LT_OK;
    if (L > LT_CONFIG_MAX_LAYERS)
        return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: sliding-window attention with more than %d layers", c->src,
                       LT_CONFIG_MAX_LAYERS);
    for (int l = 0; l < L; l++) {
        int slide;
        if (cfg->has_layer_types) {
            json_t *v = json_array_get(lt, (size_t)l);
            if (!json_is_string(v))
                return lt_fail(c->err, LT_ERR_JSON, "%s: \"layer_types\"[%d] must be a string", c->src, l);
            const char *t = json_string_value(v);
            if (strcmp(t, "sliding_attention") == 0) slide = 1;
            else if (strcmp(t, "full_attention") == 0) slide = 0;
            else
                return lt_fail(c->err, LT_ERR_UNSUPPORTED,
                               "%s: layer type \"%s\" is not supported (only "
                               "full_attention, sliding_attention)",
                               c->src, t);
        } else if (arch->slide_mode == SLIDE_QWEN) {
            slide = l >= cfg->max_window_layers;
        } else if (arch->slide_mode == SLIDE_ALTERNATE) {
            slide = (l + 1) % 2 != 0; /* Gemma 2: even layers slide */
        } else if (arch->slide_mode == SLIDE_GEMMA3) {
            slide = (l + 1) % pattern != 0; /* five local layers, then a global one */
        } else if (arch->slide_mode == SLIDE_SMOLLM3) {
            slide = cfg->layer_rope[l] == LT_LAYER_ROPE_NONE; /* the NoPE layers, when windowed at all */
        } else {
            slide = 1;
        }
        if (arch->slide_mode == SLIDE_GEMMA3 && slide) cfg->layer_rope[l] = LT_LAYER_ROPE_LOCAL;
        if (window == 0) slide = 0;
        cfg->layer_sliding[l] = (unsigned char)slide;
        cfg->n_sliding_layers += slide;
    }
    if (cfg->n_sliding_layers == 0) cfg->sliding_window = 0;
    else cfg->sliding_window = window;
    return LT_OK;
}

/* The mixture-of-experts knobs as Qwen3MoeConfig reads them (docs/spec/moe.md): a layer is sparse when
 * num_experts > 0, (l + 1) % decoder_sparse_step == 0 and l is not in mlp_only_layers. MixtralConfig:
 * every layer sparse, experts of width intermediate_size, the top-k weights always renormalised. */
static lt_status parse_moe(parse_ctx *c, json_t *root, const lt_arch_desc *arch, lt_model_config *cfg) {
    lt_status st;
    if (arch->id == LT_ARCH_MIXTRAL) {
        double jitter = 0;
        cfg->num_experts = 8;
        cfg->num_experts_per_tok = 2;
        cfg->norm_topk_prob = 1;
        cfg->decoder_sparse_step = 1;
        cfg->router_aux_loss_coef = 0.001;
        if ((st = get_int(c, root, "", "num_local_experts", &cfg->num_experts)) != LT_OK ||
            (st = get_int(c, root, "", "num_experts_per_tok", &cfg->num_experts_per_tok)) != LT_OK ||
            (st = get_bool(c, root, "output_router_logits", &cfg->output_router_logits)) != LT_OK ||
            (st = get_num(c, root, "", "router_aux_loss_coef", &cfg->router_aux_loss_coef)) != LT_OK ||
            (st = get_num(c, root, "", "router_jitter_noise", &jitter)) != LT_OK)
            return st;
        if (jitter != 0) /* transformers multiplies the hidden states by training-time noise */
            return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: router_jitter_noise %g is not supported for %s (use 0)",
                           c->src, jitter, arch->name);
    }
    if (arch->id == LT_ARCH_GPT_OSS) { /* GptOssConfig: every layer sparse, experts of intermediate_size */
        cfg->num_experts = 128;
        cfg->num_experts_per_tok = 4;
        cfg->norm_topk_prob = 1; /* softmax over the top-k logits == the top-k probabilities renormalised */
        cfg->decoder_sparse_step = 1;
        cfg->router_aux_loss_coef = 0.001;
        cfg->attn_sinks = 1;
        cfg->moe_bias = 1;
        cfg->swiglu_alpha = 1.702;
        cfg->swiglu_limit = 7.0;
        if ((st = get_int(c, root, "", "num_local_experts", &cfg->num_experts)) != LT_OK ||
            (st = get_int(c, root, "", "num_experts", &cfg->num_experts)) != LT_OK ||
            (st = get_int(c, root, "", "num_experts_per_tok", &cfg->num_experts_per_tok)) != LT_OK ||
            (st = get_bool(c, root, "output_router_logits", &cfg->output_router_logits)) != LT_OK ||
            (st = get_num(c, root, "", "router_aux_loss_coef", &cfg->router_aux_loss_coef)) != LT_OK ||
            (st = get_num(c, root, "", "swiglu_alpha", &cfg->swiglu_alpha)) != LT_OK ||
            (st = get_num(c, root, "", "swiglu_limit", &cfg->swiglu_limit)) != LT_OK)
            return st;
        if (!(cfg->swiglu_alpha > 0) || !(cfg->swiglu_limit > 0) || !isfinite(cfg->swiglu_alpha) ||
            !isfinite(cfg->swiglu_limit))
            return lt_fail(c->err, LT_ERR_FORMAT, "%s: swiglu_alpha and swiglu_limit must be positive numbers", c->src);
        double drop = 0;
        if ((st = get_num(c, root, "", "attention_dropout", &drop)) != LT_OK) return st;
        if (drop != 0)
            return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: attention_dropout %g is not supported for %s (use 0)",
                           c->src, drop, arch->name);
    }
    if (arch->id == LT_ARCH_MIXTRAL || arch->id == LT_ARCH_GPT_OSS) {
        cfg->moe_intermediate_size = cfg->intermediate_size;
        if (cfg->num_hidden_layers > LT_CONFIG_MAX_LAYERS)
            return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: %s with more than %d layers", c->src, arch->name,
                           LT_CONFIG_MAX_LAYERS);
        for (int l = 0; l < cfg->num_hidden_layers; l++) cfg->layer_moe[l] = cfg->num_experts > 0;
        cfg->n_moe_layers = cfg->num_experts > 0 ? (int)cfg->num_hidden_layers : 0;
        return LT_OK;
    }
    if (arch->id != LT_ARCH_QWEN3_MOE) return LT_OK;
    cfg->num_experts = 128; /* Qwen3MoeConfig defaults */
    cfg->num_experts_per_tok = 8;
    cfg->moe_intermediate_size = 768;
    cfg->decoder_sparse_step = 1;
    cfg->router_aux_loss_coef = 0.001;
    if ((st = get_int(c, root, "", "num_experts", &cfg->num_experts)) != LT_OK ||
        (st = get_int(c, root, "", "num_local_experts", &cfg->num_experts)) != LT_OK ||
        (st = get_int(c, root, "", "num_experts_per_tok", &cfg->num_experts_per_tok)) != LT_OK ||
        (st = get_int(c, root, "", "moe_intermediate_size", &cfg->moe_intermediate_size)) != LT_OK ||
        (st = get_int(c, root, "", "decoder_sparse_step", &cfg->decoder_sparse_step)) != LT_OK ||
        (st = get_bool(c, root, "norm_topk_prob", &cfg->norm_topk_prob)) != LT_OK ||
        (st = get_bool(c, root, "output_router_logits", &cfg->output_router_logits)) != LT_OK ||
        (st = get_num(c, root, "", "router_aux_loss_coef", &cfg->router_aux_loss_coef)) != LT_OK)
        return st;
    int sw = 0;
    if ((st = get_bool(c, root, "use_sliding_window", &sw)) != LT_OK) return st;
    if (sw)
        return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: use_sliding_window is not supported for %s", c->src,
                       arch->name);
    const int L = (int)cfg->num_hidden_layers;
    if (L > LT_CONFIG_MAX_LAYERS)
        return lt_fail(c->err, LT_ERR_UNSUPPORTED, "%s: %s with more than %d layers", c->src, arch->name,
                       LT_CONFIG_MAX_LAYERS);
    if (cfg->num_experts < 0 || cfg->decoder_sparse_step <= 0)
        return lt_fail(c->err, LT_ERR_FORMAT, "%s: num_experts must not be negative, decoder_sparse_step positive",
                       c->src);
    for (int l = 0; l < L; l++)
        cfg->layer_moe[l] = (unsigned char)(cfg->num_experts > 0 && (l + 1) % cfg->decoder_sparse_step == 0);
    json_t *mo = field(root, "mlp_only_layers");
    if (mo) {
        if (!json_is_array(mo))
            return lt_fail(c->err, LT_ERR_JSON, "%s: field \"mlp_only_layers\" must be a list", c->src);
        size_t i;
        json_t *v;
        json_array_foreach(mo, i, v) {
            if (!json_is_integer(v))
                return lt_fail(c->err, LT_ERR_JSON, "%s: \"mlp_only_layers\"[%zu] must be an integer", c->src, i);
            json_int_t l = json_integer_value(v);
            if (l >= 0 && l < L) cfg->layer_moe[l] = 0; /* Qwen3MoeDecoderLayer: `layer_idx not in` */
        }
    }
    cfg->n_moe_layers = 0;
    for (int l = 0; l < L; l++) cfg->n_moe_layers += cfg->layer_moe[l];
    return LT_OK;
}

/* ---- validation -------------------------------------------------------------------------------- */

lt_status lt_config_validate(lt_model_config *cfg, const char *source, lt_error *err) {
    const char *src = source ? source : "config";
    const lt_arch_desc *a = find_arch(cfg->architecture);
    if (!a) {
        char list[512];
        supported_list(list, sizeof list);
        return lt_fail(err, LT_ERR_ARCH, "%s: architecture '%s' is not supported (supported: %s)", src,
                       cfg->architecture, list);
    }
    cfg->arch = a->id;
    if (!(a->activations & ACT_BIT(cfg->activation)))
        return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported for %s", src, cfg->hidden_act,
                       a->name);
    const struct {
        const char *name;
        int64_t v;
    } sizes[] = {
        {"vocab_size", cfg->vocab_size},
        {"hidden_size", cfg->hidden_size},
        {"intermediate_size", cfg->intermediate_size},
        {"num_hidden_layers", cfg->num_hidden_layers},
        {"num_attention_heads", cfg->num_attention_heads},
        {"num_key_value_heads", cfg->num_key_value_heads},
        {"head_dim", cfg->head_dim},
        {"max_position_embeddings", cfg->max_position_embeddings},
    };
    /* Every size but the context length at most 2^24: 1000x the widest real model (hidden 16384) and
     * 64x the largest vocabulary (262144), so that products of sizes (a layer's weight, a fused
     * module's rows) stay far inside int64 and every per-dimension count inside int. */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const int64_t limit = strcmp(sizes[i].name, "max_position_embeddings") ? LT_CONFIG_MAX_DIM : INT32_MAX;
        if (sizes[i].v <= 0)
            return lt_fail(err, LT_ERR_FORMAT, "%s: \"%s\" = %lld must be positive", src, sizes[i].name,
                           (long long)sizes[i].v);
        if (sizes[i].v > limit)
            return lt_fail(err, LT_ERR_FORMAT, "%s: \"%s\" = %lld is too large (the limit is %lld)", src, sizes[i].name,
                           (long long)sizes[i].v, (long long)limit);
    }
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return lt_fail(err, LT_ERR_FORMAT,
                       "%s: \"num_attention_heads\" = %lld is not a multiple of \"num_key_value_heads\" = %lld", src,
                       (long long)cfg->num_attention_heads, (long long)cfg->num_key_value_heads);
    if ((int64_t)cfg->num_attention_heads * cfg->head_dim > LT_CONFIG_MAX_DIM)
        return lt_fail(err, LT_ERR_FORMAT, "%s: num_attention_heads * head_dim is too large (the limit is %lld)", src,
                       (long long)LT_CONFIG_MAX_DIM);
    if (!(cfg->rms_norm_eps > 0) || !isfinite(cfg->rms_norm_eps))
        return lt_fail(err, LT_ERR_FORMAT, "%s: \"rms_norm_eps\" = %g must be positive", src, cfg->rms_norm_eps);
    if (!(cfg->rope_theta > 0) || !isfinite(cfg->rope_theta))
        return lt_fail(err, LT_ERR_FORMAT, "%s: \"rope_theta\" = %g must be positive", src, cfg->rope_theta);
    if (!(cfg->partial_rotary_factor > 0 && cfg->partial_rotary_factor <= 1))
        return lt_fail(err, LT_ERR_FORMAT, "%s: \"partial_rotary_factor\" = %g must be in (0, 1]", src,
                       cfg->partial_rotary_factor);
    double rd = (double)cfg->head_dim * cfg->partial_rotary_factor; /* python: int(head_dim * factor) */
    cfg->rot_dim = (int)rd;
    if (cfg->rot_dim < 2 || cfg->rot_dim % 2 != 0)
        return lt_fail(err, LT_ERR_FORMAT,
                       "%s: rotary dimension int(head_dim %lld * partial_rotary_factor %g) = %d must be even and >= 2",
                       src, (long long)cfg->head_dim, cfg->partial_rotary_factor, cfg->rot_dim);
    if (cfg->rope_type == LT_ROPE_LINEAR || cfg->rope_type == LT_ROPE_LLAMA3) {
        if (!(cfg->rope_factor > 0) || !isfinite(cfg->rope_factor))
            return lt_fail(err, LT_ERR_FORMAT, "%s: rope scaling \"factor\" = %g must be positive", src,
                           cfg->rope_factor);
    }
    if (cfg->rope_type == LT_ROPE_LLAMA3) {
        if (!(cfg->rope_low_freq_factor > 0) || !isfinite(cfg->rope_high_freq_factor) ||
            !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return lt_fail(err, LT_ERR_FORMAT,
                           "%s: llama3 rope scaling needs 0 < low_freq_factor (%g) < high_freq_factor (%g)", src,
                           cfg->rope_low_freq_factor, cfg->rope_high_freq_factor);
        if (cfg->rope_original_max_position_embeddings <= 0)
            return lt_fail(err, LT_ERR_FORMAT, "%s: llama3 rope scaling needs original_max_position_embeddings > 0",
                           src);
    } else if (cfg->rope_type == LT_ROPE_LONGROPE) {
        if (cfg->n_rope_factors != cfg->rot_dim / 2)
            return lt_fail(err, LT_ERR_FORMAT, "%s: longrope factors have %d entries, the rotary dimension needs %d",
                           src, cfg->n_rope_factors, cfg->rot_dim / 2);
        for (int i = 0; i < cfg->n_rope_factors; i++)
            if (!(cfg->rope_short_factor[i] > 0) || !(cfg->rope_long_factor[i] > 0) ||
                !isfinite(cfg->rope_short_factor[i]) || !isfinite(cfg->rope_long_factor[i]))
                return lt_fail(err, LT_ERR_FORMAT, "%s: longrope factor %d is not a positive number", src, i);
        if (cfg->rope_original_max_position_embeddings <= 0)
            return lt_fail(err, LT_ERR_FORMAT, "%s: longrope needs original_max_position_embeddings > 0", src);
        /* transformers' _compute_longrope_parameters */
        if (cfg->rope_factor < 0)
            cfg->rope_factor =
                (double)cfg->max_position_embeddings / (double)cfg->rope_original_max_position_embeddings;
        if (cfg->rope_attention_factor < 0)
            cfg->rope_attention_factor =
                cfg->rope_factor <= 1.0
                    ? 1.0
                    : sqrt(1 + log(cfg->rope_factor) / log((double)cfg->rope_original_max_position_embeddings));
    } else if (cfg->rope_type == LT_ROPE_YARN) {
        if (cfg->rope_original_max_position_embeddings <= 0)
            return lt_fail(err, LT_ERR_FORMAT, "%s: yarn needs original_max_position_embeddings > 0", src);
        if (cfg->rope_factor < 0) /* factor None: max_position_embeddings / original */
            cfg->rope_factor =
                (double)cfg->max_position_embeddings / (double)cfg->rope_original_max_position_embeddings;
        if (!(cfg->rope_factor > 0) || !isfinite(cfg->rope_factor) || !isfinite(cfg->rope_beta_fast) ||
            !isfinite(cfg->rope_beta_slow) || !(cfg->rope_beta_fast > 0) || !(cfg->rope_beta_slow > 0))
            return lt_fail(err, LT_ERR_FORMAT, "%s: yarn factor (%g), beta_fast and beta_slow must be positive", src,
                           cfg->rope_factor);
        if (cfg->rope_attention_factor < 0) /* yarn_get_mscale(factor) */
            cfg->rope_attention_factor = cfg->rope_factor <= 1.0 ? 1.0 : 0.1 * log(cfg->rope_factor) + 1.0;
    } else if (cfg->rope_type != LT_ROPE_DEFAULT && cfg->rope_type != LT_ROPE_LINEAR) {
        return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: rope type %d is not supported", src, (int)cfg->rope_type);
    }
    if (cfg->sliding_window < 0) return lt_fail(err, LT_ERR_FORMAT, "%s: \"sliding_window\" must not be negative", src);
    if (cfg->n_moe_layers > 0) {
        if (cfg->num_experts > 65536 || cfg->num_experts_per_tok <= 0 || cfg->num_experts_per_tok > cfg->num_experts ||
            cfg->moe_intermediate_size <= 0 || cfg->moe_intermediate_size > INT32_MAX / 2)
            return lt_fail(err, LT_ERR_FORMAT,
                           "%s: experts: num_experts %lld (at most 65536), num_experts_per_tok %lld (1 .. "
                           "num_experts) and moe_intermediate_size %lld (positive) do not fit",
                           src, (long long)cfg->num_experts, (long long)cfg->num_experts_per_tok,
                           (long long)cfg->moe_intermediate_size);
        if (!(cfg->router_aux_loss_coef >= 0) || !isfinite(cfg->router_aux_loss_coef))
            return lt_fail(err, LT_ERR_FORMAT, "%s: router_aux_loss_coef must be a non-negative number", src);
    }
    return LT_OK;
}

/* ---- loading ----------------------------------------------------------------------------------- */

static lt_status parse_root(parse_ctx *c, json_t *root, lt_model_config *cfg) {
    lt_status st;
    lt_error *err = c->err;
    if (!json_is_object(root)) return lt_fail(err, LT_ERR_JSON, "%s: not a JSON object", c->src);

    json_t *archs = field(root, "architectures");
    if (!archs) return lt_fail(err, LT_ERR_MISSING, "%s: no \"architectures\" field", c->src);
    if (!json_is_array(archs))
        return lt_fail(err, LT_ERR_JSON, "%s: field \"architectures\" must be a list of strings", c->src);
    if (json_array_size(archs) == 0) return lt_fail(err, LT_ERR_MISSING, "%s: \"architectures\" is empty", c->src);
    json_t *a0 = json_array_get(archs, 0);
    if (!json_is_string(a0))
        return lt_fail(err, LT_ERR_JSON, "%s: field \"architectures\"[0] must be a string", c->src);
    const char *aname = json_string_value(a0);
    const lt_arch_desc *arch = find_arch(aname);
    if (!arch) {
        char list[512];
        supported_list(list, sizeof list);
        return lt_fail(err, LT_ERR_ARCH, "%s: architecture '%.200s' is not supported (supported: %s)", c->src, aname,
                       list);
    }
    lt_config_init_llama(cfg);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", arch->name);
    cfg->arch = arch->id;
    cfg->model_type[0] = '\0';
    cfg->qk_norm = arch->qk_norm;
    cfg->norm_offset = arch->norm_offset;
    cfg->tie_word_embeddings = arch->default_tied;
    cfg->fused_proj = arch->id == LT_ARCH_PHI3;

    if ((st = get_str(c, root, "model_type", cfg->model_type, sizeof cfg->model_type)) != LT_OK) return st;
    const struct {
        const char *key;
        int64_t *dst;
    } ints[] = {
        {"vocab_size", &cfg->vocab_size},
        {"hidden_size", &cfg->hidden_size},
        {"intermediate_size", &cfg->intermediate_size},
        {"num_hidden_layers", &cfg->num_hidden_layers},
        {"num_attention_heads", &cfg->num_attention_heads},
        {"max_position_embeddings", &cfg->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if ((st = get_int(c, root, "", ints[i].key, ints[i].dst)) != LT_OK) return st;

    cfg->num_key_value_heads = cfg->num_attention_heads;
    if ((st = get_int(c, root, "", "num_key_value_heads", &cfg->num_key_value_heads)) != LT_OK) return st;
    if (field(root, "head_dim")) {
        if ((st = get_int(c, root, "", "head_dim", &cfg->head_dim)) != LT_OK) return st;
    } else if (arch->default_head_dim > 0) {
        cfg->head_dim = arch->default_head_dim; /* e.g. Qwen3Config / GemmaConfig default */
    } else {
        if (cfg->num_attention_heads <= 0)
            return lt_fail(err, LT_ERR_FORMAT, "%s: \"num_attention_heads\" = %lld must be positive", c->src,
                           (long long)cfg->num_attention_heads);
        if (cfg->hidden_size % cfg->num_attention_heads != 0)
            return lt_fail(err, LT_ERR_FORMAT,
                           "%s: no \"head_dim\" and \"hidden_size\" = %lld is not a multiple of "
                           "\"num_attention_heads\" = %lld",
                           c->src, (long long)cfg->hidden_size, (long long)cfg->num_attention_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    }
    if (arch->id == LT_ARCH_OLMO2 || arch->id == LT_ARCH_GPT_OSS) cfg->rms_norm_eps = 1e-5; /* the configs' default */
    if ((st = get_num(c, root, "", "rms_norm_eps", &cfg->rms_norm_eps)) != LT_OK) return st;
    if ((st = get_bool(c, root, "tie_word_embeddings", &cfg->tie_word_embeddings)) != LT_OK) return st;
    if (arch->id == LT_ARCH_GPT_OSS) cfg->attention_bias = 1; /* GptOssConfig default */
    if ((st = get_bool(c, root, "attention_bias", &cfg->attention_bias)) != LT_OK) return st;
    if ((st = get_bool(c, root, "mlp_bias", &cfg->mlp_bias)) != LT_OK) return st;

    const int gemma = arch->id == LT_ARCH_GEMMA || arch->id == LT_ARCH_GEMMA2 || arch->id == LT_ARCH_GEMMA3;
    if (gemma) snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "%s", "gelu_pytorch_tanh");
    if ((st = get_str(c, root, "hidden_act", cfg->hidden_act, sizeof cfg->hidden_act)) != LT_OK ||
        (gemma && (st = get_str(c, root, "hidden_activation", cfg->hidden_act, sizeof cfg->hidden_act)) != LT_OK)) {
        if (st == LT_ERR_FORMAT) return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: hidden_act is not supported", c->src);
        return st;
    }
    /* GemmaConfig: the legacy "gelu" of the official releases means the tanh approximation */
    if (arch->id == LT_ARCH_GEMMA && strcmp(cfg->hidden_act, "gelu") == 0)
        snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "%s", "gelu_pytorch_tanh");
    int found = 0;
    for (size_t i = 0; i < sizeof k_acts / sizeof k_acts[0]; i++) {
        if (strcmp(cfg->hidden_act, k_acts[i].name) == 0) {
            cfg->activation = k_acts[i].act;
            found = 1;
            break;
        }
    }
    if (!found || !(arch->activations & ACT_BIT(cfg->activation)))
        return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported for %s", c->src, cfg->hidden_act,
                       arch->name);

    if ((st = parse_token_ids(c, root, cfg)) != LT_OK) return st;
    /* "dtype" (transformers >= 4.56) or the older "torch_dtype" */
    if ((st = get_str(c, root, "torch_dtype", cfg->torch_dtype, sizeof cfg->torch_dtype)) != LT_OK) return st;
    if ((st = get_str(c, root, "dtype", cfg->torch_dtype, sizeof cfg->torch_dtype)) != LT_OK) return st;
    if ((st = parse_rope(c, root, cfg)) != LT_OK) return st;

    if (arch->embed_scale_sqrt_hidden) cfg->embed_scale = sqrt((double)cfg->hidden_size);
    if ((st = parse_family(c, root, arch, cfg)) != LT_OK) return st;
    if ((st = parse_moe(c, root, arch, cfg)) != LT_OK) return st;
    if (arch->id == LT_ARCH_OLMO2) { /* post-norms only */
        cfg->sandwich_norms = 1;
        cfg->no_pre_norms = 1;
    }
    if (arch->id == LT_ARCH_GRANITE) {
        cfg->attention_multiplier = 1.0; /* GraniteConfig defaults */
        const struct {
            const char *key;
            double *dst;
        } mult[] = {{"embedding_multiplier", &cfg->embed_scale},
                    {"residual_multiplier", &cfg->residual_multiplier},
                    {"attention_multiplier", &cfg->attention_multiplier},
                    {"logits_scaling", &cfg->logits_scaling}};
        for (size_t i = 0; i < sizeof mult / sizeof mult[0]; i++) {
            if ((st = get_num(c, root, "", mult[i].key, mult[i].dst)) != LT_OK) return st;
            if (!(*mult[i].dst > 0) || !isfinite(*mult[i].dst))
                return lt_fail(c->err, LT_ERR_FORMAT, "%s: \"%s\" = %g must be positive", c->src, mult[i].key,
                               *mult[i].dst);
        }
    }
    if (arch->id == LT_ARCH_GEMMA2 || arch->id == LT_ARCH_GEMMA3) {
        /* Gemma2Config / Gemma3TextConfig defaults (Gemma 3: no soft-capping); null turns one off */
        const int g2 = arch->id == LT_ARCH_GEMMA2;
        cfg->sandwich_norms = 1;
        cfg->query_pre_attn_scalar = 256;
        cfg->attn_logit_softcapping = g2 ? 50.0 : 0;
        cfg->final_logit_softcapping = g2 ? 30.0 : 0;
        if ((st = get_num(c, root, "", "query_pre_attn_scalar", &cfg->query_pre_attn_scalar)) != LT_OK) return st;
        json_t *v = json_object_get(root, "attn_logit_softcapping");
        if (v && json_is_null(v)) cfg->attn_logit_softcapping = 0;
        else if ((st = get_num(c, root, "", "attn_logit_softcapping", &cfg->attn_logit_softcapping)) != LT_OK)
            return st;
        v = json_object_get(root, "final_logit_softcapping");
        if (v && json_is_null(v)) cfg->final_logit_softcapping = 0;
        else if ((st = get_num(c, root, "", "final_logit_softcapping", &cfg->final_logit_softcapping)) != LT_OK)
            return st;
        if (!(cfg->query_pre_attn_scalar > 0) || cfg->attn_logit_softcapping < 0 || cfg->final_logit_softcapping < 0)
            return lt_fail(c->err, LT_ERR_FORMAT,
                           "%s: query_pre_attn_scalar must be positive and the soft-capping "
                           "values non-negative",
                           c->src);
    }
    return lt_config_validate(cfg, c->src, err);
}

lt_status lt_config_parse(const char *json_text, size_t len, const char *source, lt_model_config *cfg, lt_error *err) {
    const char *src = source ? source : "config";
    if (!json_text || !cfg) return lt_fail(err, LT_ERR_ARGUMENT, "%s: NULL argument", src);
    json_error_t jerr;
    json_t *root = json_loadb(json_text, len, 0, &jerr);
    if (!root)
        return lt_fail(err, LT_ERR_JSON, "%s: not valid JSON: %s (line %d, column %d)", src, jerr.text, jerr.line,
                       jerr.column);
    parse_ctx c = {src, err};
    lt_model_config tmp;
    lt_status st = parse_root(&c, root, &tmp);
    json_decref(root);
    if (st == LT_OK) *cfg = tmp;
    return st;
}

lt_status lt_config_load(const char *path, lt_model_config *cfg, lt_error *err) {
    if (!path || !cfg) return lt_fail(err, LT_ERR_ARGUMENT, "lt_config_load: NULL argument");
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return lt_fail(err, LT_ERR_MISSING, "%s: does not exist", path);
    char *text = NULL;
    size_t len = 0;
    lt_status st = lt_read_file(path, &text, &len, err);
    if (st != LT_OK) return st;
    st = lt_config_parse(text, len, path, cfg, err);
    free(text);
    return st;
}

/* ---- writing ----------------------------------------------------------------------------------- */

/* Fewest significant digits that round-trip v, and at least enough that %g does not switch to an
 * exponent for integral values (500000 -> "500000.0", not "5e+05"). */
static int digits_for(double v) {
    int p = 17;
    for (int k = 1; k <= 17; k++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.*g", k, v);
        if (strtod(buf, NULL) == v) {
            p = k;
            break;
        }
    }
    double a = fabs(v);
    if (a >= 1 && a < 1e16) {
        int e = (int)floor(log10(a)) + 1;
        if (e > p) p = e;
    }
    return p;
}

static int set_new(json_t *o, const char *k, json_t *v) { return json_object_set_new(o, k, v); }

lt_status lt_config_write(const lt_model_config *cfg, const char *path, lt_error *err) {
    if (!cfg || !path) return lt_fail(err, LT_ERR_ARGUMENT, "lt_config_write: NULL argument");
    const lt_arch_desc *arch = find_arch(cfg->architecture);
    if (!arch) {
        char list[512];
        supported_list(list, sizeof list);
        return lt_fail(err, LT_ERR_ARCH, "%s: architecture '%s' is not supported (supported: %s)", path,
                       cfg->architecture, list);
    }
    json_t *o = json_object();
    int bad = !o;
    double reals[20];
    int nreal = 0;
    if (!bad) {
        bad |= set_new(o, "architectures", json_pack("[s]", cfg->architecture));
        bad |= set_new(o, "model_type", json_string(cfg->model_type[0] ? cfg->model_type : arch->model_type));
        bad |= set_new(o, "vocab_size", json_integer(cfg->vocab_size));
        bad |= set_new(o, "hidden_size", json_integer(cfg->hidden_size));
        bad |= set_new(o, "intermediate_size", json_integer(cfg->intermediate_size));
        bad |= set_new(o, "num_hidden_layers", json_integer(cfg->num_hidden_layers));
        bad |= set_new(o, "num_attention_heads", json_integer(cfg->num_attention_heads));
        bad |= set_new(o, "num_key_value_heads", json_integer(cfg->num_key_value_heads));
        bad |= set_new(o, "head_dim", json_integer(cfg->head_dim));
        bad |= set_new(o, "max_position_embeddings", json_integer(cfg->max_position_embeddings));
        bad |= set_new(o, "rms_norm_eps", json_real(reals[nreal++] = cfg->rms_norm_eps));
        bad |= set_new(o, "rope_theta", json_real(reals[nreal++] = cfg->rope_theta));
        if (cfg->partial_rotary_factor != 1.0)
            bad |= set_new(o, "partial_rotary_factor", json_real(reals[nreal++] = cfg->partial_rotary_factor));
        if (cfg->rope_type == LT_ROPE_DEFAULT) {
            bad |= set_new(o, "rope_scaling", json_null());
        } else if (cfg->rope_type == LT_ROPE_LINEAR) {
            bad |= set_new(o, "rope_scaling",
                           json_pack("{s:s, s:f}", "rope_type", "linear", "factor", reals[nreal++] = cfg->rope_factor));
        } else if (cfg->rope_type == LT_ROPE_LLAMA3) {
            reals[nreal++] = cfg->rope_factor;
            reals[nreal++] = cfg->rope_low_freq_factor;
            reals[nreal++] = cfg->rope_high_freq_factor;
            bad |= set_new(o, "rope_scaling",
                           json_pack("{s:s, s:f, s:f, s:f, s:I}", "rope_type", "llama3", "factor", cfg->rope_factor,
                                     "low_freq_factor", cfg->rope_low_freq_factor, "high_freq_factor",
                                     cfg->rope_high_freq_factor, "original_max_position_embeddings",
                                     (json_int_t)cfg->rope_original_max_position_embeddings));
        } else if (cfg->rope_type == LT_ROPE_YARN) { /* transformers 5's rope_parameters (gpt-oss) */
            reals[nreal++] = cfg->rope_factor;
            reals[nreal++] = cfg->rope_beta_fast;
            reals[nreal++] = cfg->rope_beta_slow;
            reals[nreal++] = cfg->rope_attention_factor;
            bad |= set_new(o, "rope_parameters",
                           json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:b, s:I}", "rope_type", "yarn", "rope_theta",
                                     cfg->rope_theta, "factor", cfg->rope_factor, "beta_fast", cfg->rope_beta_fast,
                                     "beta_slow", cfg->rope_beta_slow, "attention_factor", cfg->rope_attention_factor,
                                     "truncate", cfg->rope_truncate, "original_max_position_embeddings",
                                     (json_int_t)cfg->rope_original_max_position_embeddings));
        } else if (cfg->rope_type == LT_ROPE_LONGROPE) {
            json_t *r = json_object(), *sf = json_array(), *lf = json_array();
            for (int i = 0; r && sf && lf && i < cfg->n_rope_factors; i++) {
                bad |= json_array_append_new(sf, json_real(cfg->rope_short_factor[i]));
                bad |= json_array_append_new(lf, json_real(cfg->rope_long_factor[i]));
            }
            bad |= !r || !sf || !lf;
            if (r) {
                bad |= set_new(r, "rope_type", json_string("longrope"));
                bad |= set_new(r, "short_factor", sf);
                bad |= set_new(r, "long_factor", lf);
                bad |= set_new(r, "attention_factor", json_real(cfg->rope_attention_factor));
                bad |= set_new(r, "factor", json_real(cfg->rope_factor));
            }
            bad |= set_new(o, "rope_scaling", r);
            bad |= set_new(o, "original_max_position_embeddings",
                           json_integer((json_int_t)cfg->rope_original_max_position_embeddings));
        }
        bad |= set_new(o, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
        bad |= set_new(o, "attention_bias", json_boolean(cfg->attention_bias));
        bad |= set_new(o, "mlp_bias", json_boolean(cfg->mlp_bias));
        bad |= set_new(o, "hidden_act", json_string(cfg->hidden_act[0] ? cfg->hidden_act : "silu"));
        if (cfg->bos_token_id >= 0) bad |= set_new(o, "bos_token_id", json_integer(cfg->bos_token_id));
        /* pad: as read; other families' config classes default it to ids outside small vocabularies */
        if (cfg->pad_token_id >= 0) bad |= set_new(o, "pad_token_id", json_integer(cfg->pad_token_id));
        else if (arch->id != LT_ARCH_LLAMA) bad |= set_new(o, "pad_token_id", json_null());
        if (cfg->n_eos == 1 || (cfg->n_eos == 0 && cfg->eos_token_id >= 0)) {
            bad |= set_new(o, "eos_token_id", json_integer(cfg->n_eos ? cfg->eos_token_ids[0] : cfg->eos_token_id));
        } else if (cfg->n_eos > 1) {
            json_t *a = json_array();
            for (int i = 0; a && i < cfg->n_eos; i++)
                bad |= json_array_append_new(a, json_integer(cfg->eos_token_ids[i]));
            bad |= set_new(o, "eos_token_id", a);
        }
        if (cfg->torch_dtype[0]) bad |= set_new(o, "torch_dtype", json_string(cfg->torch_dtype));
        if (arch->id == LT_ARCH_GEMMA3) /* the global layers' theta and scaling are rope_theta / rope_scaling */
            bad |= set_new(o, "rope_local_base_freq", json_real(reals[nreal++] = cfg->rope_local_theta));
        if (arch->id == LT_ARCH_GRANITE) {
            bad |= set_new(o, "embedding_multiplier", json_real(reals[nreal++] = cfg->embed_scale));
            bad |= set_new(o, "residual_multiplier", json_real(reals[nreal++] = cfg->residual_multiplier));
            bad |= set_new(o, "attention_multiplier", json_real(reals[nreal++] = cfg->attention_multiplier));
            bad |= set_new(o, "logits_scaling", json_real(reals[nreal++] = cfg->logits_scaling));
        }
        if (arch->id == LT_ARCH_SMOLLM3) {
            json_t *a = json_array();
            for (int l = 0; a && l < cfg->num_hidden_layers; l++)
                bad |= json_array_append_new(a, json_integer(cfg->layer_rope[l] != LT_LAYER_ROPE_NONE));
            bad |= set_new(o, "no_rope_layers", a);
        }
        if (arch->id == LT_ARCH_GEMMA2 || arch->id == LT_ARCH_GEMMA3) {
            bad |= set_new(o, "hidden_activation", json_string(cfg->hidden_act));
            double qs = cfg->query_pre_attn_scalar; /* Gemma2Config types it int */
            bad |=
                set_new(o, "query_pre_attn_scalar",
                        qs == floor(qs) && qs < 1e15 ? json_integer((json_int_t)qs) : json_real(reals[nreal++] = qs));
            bad |= set_new(o, "attn_logit_softcapping",
                           cfg->attn_logit_softcapping > 0 ? json_real(reals[nreal++] = cfg->attn_logit_softcapping)
                                                           : json_null());
            bad |= set_new(o, "final_logit_softcapping",
                           cfg->final_logit_softcapping > 0 ? json_real(reals[nreal++] = cfg->final_logit_softcapping)
                                                            : json_null());
        }
        /* family structure, in the keys of each family's transformers config class */
        if (arch->slide_mode != SLIDE_NONE) {
            bad |=
                set_new(o, "sliding_window", cfg->sliding_window > 0 ? json_integer(cfg->sliding_window) : json_null());
            if (arch->slide_mode == SLIDE_QWEN || arch->slide_mode == SLIDE_SMOLLM3)
                bad |= set_new(o, "use_sliding_window", json_boolean(cfg->use_sliding_window));
            if (arch->slide_mode == SLIDE_QWEN)
                bad |= set_new(o, "max_window_layers", json_integer(cfg->max_window_layers));
            /* Gemma 3: the types pick each layer's RoPE too, so they are written with or without a window */
            const int gemma3 = arch->slide_mode == SLIDE_GEMMA3;
            if (gemma3 || (cfg->sliding_window > 0 && (cfg->has_layer_types || arch->slide_mode == SLIDE_ALTERNATE ||
                                                       arch->slide_mode == SLIDE_SMOLLM3))) {
                json_t *a = json_array();
                for (int l = 0; a && l < cfg->num_hidden_layers; l++) {
                    int slide = gemma3 ? cfg->layer_rope[l] == LT_LAYER_ROPE_LOCAL : cfg->layer_sliding[l];
                    bad |= json_array_append_new(a, json_string(slide ? "sliding_attention" : "full_attention"));
                }
                bad |= set_new(o, "layer_types", a);
            }
        }
        if (cfg->arch == LT_ARCH_QWEN3_MOE) {
            bad |= set_new(o, "num_experts", json_integer(cfg->num_experts));
            bad |= set_new(o, "num_experts_per_tok", json_integer(cfg->num_experts_per_tok));
            bad |= set_new(o, "moe_intermediate_size", json_integer(cfg->moe_intermediate_size));
            bad |= set_new(o, "decoder_sparse_step", json_integer(cfg->decoder_sparse_step));
            bad |= set_new(o, "norm_topk_prob", json_boolean(cfg->norm_topk_prob));
            bad |= set_new(o, "output_router_logits", json_boolean(cfg->output_router_logits));
            bad |= set_new(o, "router_aux_loss_coef", json_real(reals[nreal++] = cfg->router_aux_loss_coef));
            json_t *a = json_array(); /* the sparse-step layers that are dense */
            for (int l = 0; a && l < cfg->num_hidden_layers; l++)
                if (cfg->num_experts > 0 && (l + 1) % cfg->decoder_sparse_step == 0 && !cfg->layer_moe[l])
                    bad |= json_array_append_new(a, json_integer(l));
            bad |= set_new(o, "mlp_only_layers", a);
        }
        if (cfg->arch == LT_ARCH_MIXTRAL) {
            bad |= set_new(o, "num_local_experts", json_integer(cfg->num_experts));
            bad |= set_new(o, "num_experts_per_tok", json_integer(cfg->num_experts_per_tok));
            bad |= set_new(o, "output_router_logits", json_boolean(cfg->output_router_logits));
            bad |= set_new(o, "router_aux_loss_coef", json_real(reals[nreal++] = cfg->router_aux_loss_coef));
            bad |= set_new(o, "router_jitter_noise", json_real(0.0));
        }
        if (cfg->arch == LT_ARCH_GPT_OSS) {
            bad |= set_new(o, "num_local_experts", json_integer(cfg->num_experts));
            bad |= set_new(o, "num_experts_per_tok", json_integer(cfg->num_experts_per_tok));
            bad |= set_new(o, "output_router_logits", json_boolean(cfg->output_router_logits));
            bad |= set_new(o, "router_aux_loss_coef", json_real(reals[nreal++] = cfg->router_aux_loss_coef));
            bad |= set_new(o, "swiglu_alpha", json_real(reals[nreal++] = cfg->swiglu_alpha));
            bad |= set_new(o, "swiglu_limit", json_real(reals[nreal++] = cfg->swiglu_limit));
        }
        bad |= set_new(o, "use_cache", json_true());
    }
    int prec = 1;
    for (int i = 0; i < nreal; i++) {
        int p = digits_for(reals[i]);
        if (p > prec) prec = p;
    }
    char *text = bad ? NULL : json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(prec));
    json_decref(o);
    if (!text) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot build the JSON (out of memory or invalid UTF-8)", path);
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
    }
    t2[n] = '\n';
    t2[n + 1] = '\0';
    lt_status st = lt_write_file_atomic(path, t2, n + 1, err);
    free(t2);
    return st;
}

/* ---- RoPE -------------------------------------------------------------------------------------- */

/*
 * Mirrors transformers' _compute_*_rope_parameters in float32 operation by operation (no FMA
 * contraction): `base ** (arange(0, dim, 2).float() / dim)` (torch casts the python scalar base to
 * float32; pow is evaluated in double here and rounded, i.e. correctly rounded, where torch's powf
 * is within 1 ulp), `1.0 / x` (torch: reciprocal), python scalars cast to float32 when combined with
 * the float32 tensor, `scalar / tensor` evaluated as reciprocal(tensor) * scalar as torch does.
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
int lt_rope_inv_freq(const lt_model_config *cfg, float *inv_freq, int n) {
    if (!cfg) return -1;
    int dim = (int)((double)cfg->head_dim * cfg->partial_rotary_factor);
    if (dim < 2 || dim % 2 != 0) return -1;
    int half = dim / 2;
    if (!inv_freq) return half;
    if (n < half) return -1;
    float base = (float)cfg->rope_theta;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)dim;
        float p = (float)pow((double)base, (double)e);
        inv_freq[i] = 1.0f / p;
    }
    if (cfg->rope_type == LT_ROPE_LINEAR) {
        float f = (float)cfg->rope_factor;
        for (int i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / f;
    } else if (cfg->rope_type == LT_ROPE_LLAMA3) {
        double orig = (double)cfg->rope_original_max_position_embeddings;
        double lff = cfg->rope_low_freq_factor, hff = cfg->rope_high_freq_factor;
        float factor = (float)cfg->rope_factor;
        float low_wav = (float)(orig / lff); /* python floats, compared as float32 */
        float high_wav = (float)(orig / hff);
        float two_pi = (float)(2.0 * 3.14159265358979323846);
        float orig_f = (float)orig;
        float lff_f = (float)lff;
        float span = (float)(hff - lff);
        for (int i = 0; i < half; i++) {
            float inv = inv_freq[i];
            float wavelen = (1.0f / inv) * two_pi;
            float llama = wavelen > low_wav ? inv / factor : inv;
            float smooth = ((1.0f / wavelen) * orig_f - lff_f) / span;
            float a = (1.0f - smooth) * llama;
            a = a / factor;
            float b = smooth * llama;
            float smoothed = a + b;
            int medium = !(wavelen < high_wav) && !(wavelen > low_wav);
            inv_freq[i] = medium ? smoothed : llama;
        }
    } else if (cfg->rope_type == LT_ROPE_LONGROPE) {
        /* short factors: 1.0 / (ext * base ** (arange(0, dim, 2) / dim)) in float32 */
        for (int i = 0; i < half && i < cfg->n_rope_factors; i++) {
            float e = (float)(2 * i) / (float)dim;
            float p = (float)pow((double)base, (double)e);
            inv_freq[i] = 1.0f / ((float)cfg->rope_short_factor[i] * p);
        }
    } else if (cfg->rope_type == LT_ROPE_YARN) {
        /* _compute_yarn_parameters: the correction range in double (python), the rest in float32 */
        const double pi = 3.14159265358979323846, lb = 2.0 * log(cfg->rope_theta);
        const double orig = (double)cfg->rope_original_max_position_embeddings;
        double low = dim * log(orig / (cfg->rope_beta_fast * 2 * pi)) / lb;
        double high = dim * log(orig / (cfg->rope_beta_slow * 2 * pi)) / lb;
        if (cfg->rope_truncate) {
            low = floor(low);
            high = ceil(high);
        }
        low = low > 0 ? low : 0;
        high = high < dim - 1 ? high : dim - 1;
        if (low == high) high += 0.001; /* linear_ramp_factor: no singularity */
        const float factor = (float)cfg->rope_factor, lo = (float)low, span = (float)(high - low);
        for (int i = 0; i < half; i++) {
            const float p = (float)pow((double)base, (double)((float)(2 * i) / (float)dim)); /* pos_freqs */
            const float extra = inv_freq[i], inter = 1.0f / (factor * p);
            float ramp = ((float)i - lo) / span;
            ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
            const float ef = 1.0f - ramp; /* the share of extrapolation */
            const float a = inter * (1.0f - ef), b = extra * ef;
            inv_freq[i] = a + b;
        }
    } else if (cfg->rope_type != LT_ROPE_DEFAULT) {
        return -1;
    }
    return half;
}

int lt_rope_inv_freq_local(const lt_model_config *cfg, float *inv_freq, int n) {
    if (!cfg || !(cfg->rope_local_theta > 0)) return -1;
    lt_model_config local = *cfg; /* the same default computation with the local theta, unscaled */
    local.rope_theta = cfg->rope_local_theta;
    local.rope_type = LT_ROPE_DEFAULT;
    return lt_rope_inv_freq(&local, inv_freq, n);
}

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
int lt_rope_inv_freq_long(const lt_model_config *cfg, float *inv_freq, int n) {
    if (!cfg || cfg->rope_type != LT_ROPE_LONGROPE) return -1;
    int dim = (int)((double)cfg->head_dim * cfg->partial_rotary_factor);
    if (dim < 2 || dim % 2 != 0) return -1;
    int half = dim / 2;
    if (!inv_freq) return half;
    if (n < half || cfg->n_rope_factors < half) return -1;
    float base = (float)cfg->rope_theta;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)dim;
        float p = (float)pow((double)base, (double)e);
        inv_freq[i] = 1.0f / ((float)cfg->rope_long_factor[i] * p);
    }
    return half;
}
