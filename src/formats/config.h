/*
 * config.h - Hugging Face config.json of a Llama-family causal LM (internal).
 * defines: lt_model_config, lt_config_init_llama, lt_config_load, lt_config_parse, lt_config_validate,
 *          lt_config_write, lt_rope_inv_freq
 *
 * Defaults are LlamaConfig's (docs/spec/formats.md). Supported architectures live in one table in
 * config.c (Llama, Qwen2, Qwen3, Mistral, Gemma, Gemma 2, Phi-3, Gemma 3, SmolLM3, OLMo 2, Granite); a
 * family is a set of knobs at the end of the struct, each off for Llama.
 */
#ifndef LT_CONFIG_H
#define LT_CONFIG_H

#include "core/core.h"
#include <stdint.h>

typedef enum lt_arch_id {
    LT_ARCH_LLAMA = 0,
    LT_ARCH_QWEN2 = 1,
    LT_ARCH_QWEN3 = 2,
    LT_ARCH_MISTRAL = 3,
    LT_ARCH_GEMMA = 4,
    LT_ARCH_GEMMA2 = 5,
    LT_ARCH_PHI3 = 6,
    LT_ARCH_GEMMA3 = 7, /* Gemma3ForCausalLM (text)                                           */
    LT_ARCH_SMOLLM3 = 8,
    LT_ARCH_OLMO2 = 9,
    LT_ARCH_GRANITE = 10,
    LT_ARCH_QWEN3_MOE = 20, /* mixture-of-experts families from 20 on */
    LT_ARCH_MIXTRAL = 21,
    LT_ARCH_GPT_OSS = 22 /* GptOssForCausalLM                                                  */
} lt_arch_id;

/* how layer l applies RoPE (lt_model_config.layer_rope) */
typedef enum lt_layer_rope {
    LT_LAYER_ROPE_GLOBAL = 0, /* the model's table (rope_theta and its scaling)                   */
    LT_LAYER_ROPE_LOCAL = 1,  /* Gemma 3 sliding layers: rope_local_base_freq, unscaled            */
    LT_LAYER_ROPE_NONE = 2    /* SmolLM3 NoPE layers: no rotary embedding                          */
} lt_layer_rope;

/* qk_norm: where q_norm / k_norm normalise */
enum {
    LT_QK_NORM_NONE = 0,
    LT_QK_NORM_HEAD = 1 /* rows of head_dim (Qwen3, Gemma 3) */,
    LT_QK_NORM_FULL = 2 /* the whole projection, NH*HD / NKV*HD (OLMo 2) */
};

typedef enum lt_rope_type {
    LT_ROPE_DEFAULT = 0,  /* rope_type "default" / absent / null                               */
    LT_ROPE_LINEAR = 1,   /* inv_freq / factor                                                 */
    LT_ROPE_LLAMA3 = 2,   /* Llama 3.1 frequency-dependent scaling                             */
    LT_ROPE_LONGROPE = 3, /* Phi-3: per-frequency short/long factors and an attention factor   */
    LT_ROPE_YARN = 4      /* gpt-oss: NTK-by-parts interpolation, cos/sin times attention_factor */
} lt_rope_type;

typedef enum lt_activation {
    LT_ACT_SILU = 0,     /* "silu", "swish"                                                   */
    LT_ACT_GELU = 1,     /* "gelu" (erf)                                                      */
    LT_ACT_GELU_TANH = 2 /* "gelu_pytorch_tanh", "gelu_new"                                   */
} lt_activation;

#define LT_CONFIG_MAX_EOS 16
#define LT_CONFIG_MAX_ROPE_FACTORS 512 /* longrope short/long factors (rot_dim / 2 each) */
#define LT_CONFIG_MAX_LAYERS 1024      /* per-layer attention types are kept up to this many layers */
#define LT_CONFIG_MAX_DIM (1LL << 24)  /* every size of config.json but max_position_embeddings (config.c) */

typedef struct lt_model_config {
    char architecture[64]; /* architectures[0], e.g. "LlamaForCausalLM"                  */
    lt_arch_id arch;
    char model_type[32]; /* "llama" ("" when absent)                                */

    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t num_key_value_heads; /* absent/null -> num_attention_heads                    */
    int64_t head_dim;            /* absent/null -> hidden_size / num_attention_heads      */
    int64_t max_position_embeddings;
    double rms_norm_eps;
    int tie_word_embeddings;
    int attention_bias;
    int mlp_bias;
    char hidden_act[32];
    lt_activation activation;
    int64_t bos_token_id; /* -1 when absent                                        */
    int64_t pad_token_id; /* -1 when absent or null                                */
    int64_t eos_token_id; /* the first one; -1 when absent                         */
    int n_eos;            /* all of them (eos_token_id may be a list)              */
    int64_t eos_token_ids[LT_CONFIG_MAX_EOS];
    char torch_dtype[32]; /* "torch_dtype" or "dtype" ("" when absent)            */

    /* RoPE */
    double rope_theta;            /* top level or inside rope_parameters/rope_scaling     */
    double partial_rotary_factor; /* default 1.0                                          */
    int rot_dim;                  /* int(head_dim * partial_rotary_factor), even          */
    lt_rope_type rope_type;
    double rope_factor;                            /* linear, llama3                                       */
    double rope_low_freq_factor;                   /* llama3                                               */
    double rope_high_freq_factor;                  /* llama3                                               */
    int64_t rope_original_max_position_embeddings; /* llama3                              */

    /* family knobs (Llama values) */
    int qk_norm;            /* LT_QK_NORM_*: 0 none (Qwen3, Gemma 3: per head; OLMo 2: full)  */
    float norm_offset;      /* RMSNorm multiplies by (norm_offset + w): 0 (Gemma: 1)         */
    int64_t sliding_window; /* 0: full causal attention (Mistral: window)                   */
    double embed_scale;     /* embeddings are multiplied by this: 1 (Gemma: sqrt(hidden))   */

    /* per-family structure (Llama values: 0 / none) */
    unsigned bias_mask;   /* bit p (lt_proj order q,k,v,o,gate,up,down): projection p has a bias.
                           * Llama/Qwen3/Gemma: attention_bias -> q,k,v,o, mlp_bias -> gate,up,down;
                           * Qwen2: always q,k,v                                               */
    int n_sliding_layers; /* layers whose attention is windowed (sliding_window > 0)           */
    unsigned char layer_sliding[LT_CONFIG_MAX_LAYERS]; /* 1: layer l uses the sliding window     */
    int use_sliding_window;    /* Qwen2/Qwen3 "use_sliding_window" as read                          */
    int64_t max_window_layers; /* Qwen2/Qwen3: layers >= this slide (when use_sliding_window)   */
    int has_layer_types;       /* config.json carried an explicit "layer_types" list              */
    /* Gemma 2 */
    int sandwich_norms;             /* post_attention / pre_feedforward / post_feedforward layernorms    */
    double query_pre_attn_scalar;   /* attention scale = this^-0.5; 0: head_dim^-0.5            */
    double attn_logit_softcapping;  /* 0: none                                                  */
    double final_logit_softcapping; /* 0: none                                                  */
    /* Phi-3 */
    int fused_proj;     /* qkv_proj and gate_up_proj hold q|k|v and gate|up                    */
    int n_rope_factors; /* longrope: entries of short/long_factor (= rot_dim / 2)            */
    double rope_short_factor[LT_CONFIG_MAX_ROPE_FACTORS];
    double rope_long_factor[LT_CONFIG_MAX_ROPE_FACTORS];
    double rope_attention_factor; /* longrope: cos and sin are multiplied by this               */
    /* mixture of experts (Qwen3-MoE, Mixtral); num_experts 0: every layer has the dense MLP */
    int64_t num_experts;           /* E: "num_experts" / "num_local_experts"                    */
    int64_t num_experts_per_tok;   /* K: experts each token is routed to (top-k)                */
    int64_t moe_intermediate_size; /* each expert's MLP width                                   */
    int norm_topk_prob;            /* 1: the K routing weights are renormalised to sum to 1      */
    int64_t decoder_sparse_step;   /* layer l is sparse when (l + 1) % step == 0 ...              */
    int output_router_logits;      /* 1: the load-balancing loss joins the training loss        */
    double router_aux_loss_coef;   /* its coefficient                                           */
    int n_moe_layers;
    unsigned char layer_moe[LT_CONFIG_MAX_LAYERS]; /* ... and not in mlp_only_layers: 1 = MoE block */
    /* per-layer RoPE (Gemma 3 local / global, SmolLM3 NoPE); all LT_LAYER_ROPE_GLOBAL for the others */
    unsigned char layer_rope[LT_CONFIG_MAX_LAYERS];
    double rope_local_theta; /* Gemma 3 rope_local_base_freq (the local layers' theta); 0: none    */
    /* OLMo 2: no input_layernorm / pre-MLP norm; the sublayer outputs are normalised (sandwich_norms'
     * post_attention_layernorm / post_feedforward_layernorm) before the residual add */
    int no_pre_norms;
    /* Granite (1 for the others): x + residual_multiplier * sublayer(x); attention scale
     * attention_multiplier (0: the family's); logits divided by logits_scaling; embed_scale above
     * holds embedding_multiplier */
    double residual_multiplier;
    double attention_multiplier;
    double logits_scaling;
    /* SmolLM3 "no_rope_layers" / "use_sliding_window" as read (written back by lt_config_write) */
    int has_no_rope_layers;
    /* YaRN (rope_type "yarn"; factor, original_max_position_embeddings and rope_attention_factor above) */
    double rope_beta_fast, rope_beta_slow; /* the correction range's rotations (defaults 32, 1)        */
    int rope_truncate;                     /* floor / ceil the correction range (default true)         */
    /* gpt-oss (docs/spec/gpt_oss.md): a learned sink logit per attention head; the router's bias; the
     * experts' biases and their clamped SwiGLU (up + 1) * g sigmoid(alpha g), g = min(gate, limit),
     * up clamped to [-limit, limit]; swiglu_limit 0: the plain SwiGLU */
    int attn_sinks;
    int moe_bias; /* router and expert biases                                                     */
    double swiglu_alpha, swiglu_limit;
} lt_model_config;

/* longrope: the inverse frequencies for sequences longer than original_max_position_embeddings
 * (transformers picks them when max(position_ids) + 1 exceeds it). Same contract as lt_rope_inv_freq;
 * -1 when the config is not longrope. */
int lt_rope_inv_freq_long(const lt_model_config *cfg, float *inv_freq, int n);

/* The attention scale of a validated config: attention_multiplier (Granite), query_pre_attn_scalar^-0.5
 * (Gemma 2, Gemma 3), else hd^-0.5. */
float lt_config_attn_scale(const lt_model_config *cfg);

/* The family's short name ("Llama", "Qwen2", ...) of a validated config. */
const char *lt_config_family(const lt_model_config *cfg);

/* LlamaConfig defaults (architecture "LlamaForCausalLM", 7B shapes). */
void lt_config_init_llama(lt_model_config *cfg);

/*
 * Load config.json. Statuses: LT_ERR_MISSING (no file, no "architectures", a required rope key),
 * LT_ERR_JSON (unparsable, a field of the wrong JSON type: the message names the field),
 * LT_ERR_ARCH (architecture not supported: the message lists the supported ones),
 * LT_ERR_UNSUPPORTED (rope_type or hidden_act this build does not implement),
 * LT_ERR_FORMAT (inconsistent values: non-positive sizes, heads not divisible by kv heads, ...).
 */
lt_status lt_config_load(const char *config_json_path, lt_model_config *cfg, lt_error *err);
/* The same from a JSON text; `source` names it in messages. */
lt_status lt_config_parse(const char *json_text, size_t len, const char *source, lt_model_config *cfg, lt_error *err);
/* Consistency checks (also run by load/parse); derives rot_dim. LT_ERR_FORMAT / LT_ERR_ARCH. */
lt_status lt_config_validate(lt_model_config *cfg, const char *source, lt_error *err);

/* Write a config.json that transformers loads (atomically). */
lt_status lt_config_write(const lt_model_config *cfg, const char *path, lt_error *err);

/*
 * The rot_dim/2 RoPE inverse frequencies, computed in float32 the way transformers/torch does
 * (default: 1 / theta^(float(2i)/dim); then linear or llama3 scaling). Returns the count (rot_dim/2);
 * with inv_freq == NULL only the count; -1 if n is too small or cfg is invalid.
 */
int lt_rope_inv_freq(const lt_model_config *cfg, float *inv_freq, int n);
/* Gemma 3: the local layers' table (rope_local_theta, default RoPE); -1 when the config has none. */
int lt_rope_inv_freq_local(const lt_model_config *cfg, float *inv_freq, int n);

#endif /* LT_CONFIG_H */
