/*
 * model.h - a loaded model: its config, its weights on the backend (through the weight seam of
 * weight.h), the projections and modules of a layer (internal).
 *
 * Layout convention: activations are (N, C) row-major with N = B*T tokens; linear weights are
 * Hugging Face's (out, in), so y = x W^T. All device pointers belong to the model's backend.
 */
#ifndef LT_MODEL_H
#define LT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/context.h"
#include "formats/config.h"
#include "formats/safetensors.h"
#include "model/weight.h"

/* The seven linear projections of a decoder layer, in PEFT's target-module order. */
typedef enum lt_proj { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, P_COUNT } lt_proj;
extern const char *const lt_proj_names[P_COUNT];  /* "q_proj", ...               */
extern const char *const lt_proj_parent[P_COUNT]; /* "self_attn" or "mlp"        */

typedef struct lt_layer {
    float *attn_norm;     /* (H)        input_layernorm.weight             */
    float *mlp_norm;      /* (H)        post_attention_layernorm.weight    */
    lt_weight w[P_COUNT]; /* (out, in)  q (NH*HD,H) k,v (NKV*HD,H) o (H,NH*HD) gate,up (I,H) down (H,I) */
    /* family extras (NULL when the family has none) */
    float *bias[P_COUNT];   /* (out)  Qwen2 q,k,v; attention_bias / mlp_bias              */
    float *q_norm, *k_norm; /* (HD)   Qwen3 per-head RMSNorm before RoPE                  */
    /* the norm weights as stored in the checkpoint, for export: the compute weights above are
     * (1 + w) for Gemma (norm_offset), else these are the same pointers */
    float *attn_norm_file, *mlp_norm_file, *q_norm_file, *k_norm_file;
    /* Gemma 2 sandwich norms: mlp_norm is pre_feedforward_layernorm there, and these normalise the
     * attention output (post_attention_layernorm) and the MLP output (post_feedforward_layernorm) */
    float *post_attn_norm, *post_ff_norm, *post_attn_norm_file, *post_ff_norm_file;
    /* a mixture-of-experts layer (cfg.layer_moe[l]; w[P_GATE .. P_DOWN] are then empty): the router
     * (E,H) mlp.gate.weight and every expert's gate (MI,H), up (MI,H), down (H,MI) projections,
     * expert e's at experts[3e + 0, 1, 2] (checkpoint: mlp.experts.{e}.{gate,up,down}_proj.weight) */
    float *router;
    lt_weight *experts;
    /* gpt-oss (cfg.attn_sinks, cfg.moe_bias): self_attn.sinks (NH); the router's bias (E); the experts'
     * biases (E (2 MI + H)): expert e's gate at e 2MI, its up at e 2MI + MI, its down at E 2MI + e H */
    float *sinks, *router_bias, *expert_bias;
} lt_layer;

/* A norm weight of a layer as the checkpoint names it (model.layers.<l>.<name>.weight), with the lt_layer
 * fields of its compute weight and of the checkpoint's values: loading, saving, full fine-tuning and
 * export all walk this one list, so a family's norm layout is written once (model.c). */
typedef struct lt_layer_norm {
    const char *name; /* "input_layernorm", "self_attn.q_norm", ...       */
    int64_t dim;
    size_t compute, file; /* offsetof(lt_layer, ...)                       */
} lt_layer_norm;
#define LT_MAX_LAYER_NORMS 6
/* The norms of a layer of this family; returns how many. */
int lt_layer_norms(const lt_model_config *cfg, lt_layer_norm out[LT_MAX_LAYER_NORMS]);
static inline float **lt_layer_norm_at(const lt_layer *L, size_t off) {
    return (float **)(uintptr_t)((const char *)L + off);
}

struct lt_model {
    lt_context *ctx;
    lt_backend *be;
    lt_model_config cfg;
    char dir[4096];
    lt_st_set *st;          /* kept open while f32 weights point into its mapping (else NULL after the load) */
    char file_dtype[16];    /* dtype of the checkpoint's embeddings ("F32" for a random model) */
    float *embed;           /* (V, H) f32; NULL when kept in bf16 (embed_bf16)    */
    void *embed_bf16;       /* (V, H) in the backend's packed bf16 layout (base_dtype BF16): rows are looked up
                             * by embedding_forward_bf16; a tied LM head (lm_head_q) multiplies by it */
    float *final_norm;      /* (H)                                                */
    float *final_norm_file; /* (H) as stored (differs from final_norm for Gemma)  */
    float *lm_head;         /* (V, H); == embed when tied                         */
    lt_layer *layers;       /* (L)                                                */
    float *inv_freq;        /* (rot_dim/2) RoPE inverse frequencies               */
    float *inv_freq_long;   /* (rot_dim/2) longrope's long factors (NULL: none)   */
    float rope_mscale;      /* longrope attention factor on cos/sin (1: none)     */
    int rot_dim;
    void **owned; /* backend allocations to free                        */
    int n_owned, cap_owned;
    int64_t n_params, weight_bytes;
    int n_merged;          /* adapters currently merged into the weights         */
    lt_quant_format quant; /* format of the quantized projections (NONE: all f32) */
    int quant_blocksize, quant_double;
    float *code8;                      /* (256) backend copy of the 8-bit map (double quant)  */
    int64_t quant_bytes, quant_params; /* bytes and elements of quantized weights */
    size_t tile_floats;                /* dequantization tile size (0: the default, ~1 MiB); tests shrink it */
    lt_weight lm_head_q;               /* the LM head when not f32: quantized (quantize_lm_head, a bitsandbytes
                                        * checkpoint) or packed bf16 (base_dtype BF16: a tied head is embed_bf16);
                                        * lm_head is then NULL */
    int base_dtype;        /* lt_base_dtype: BF16 keeps the projections (LT_WEIGHT_BF16, or quantized ones computed
                            * in bf16), the embeddings and the LM head in bf16 */
    int check_finite;      /* load: refuse NaN / Inf weights (lt_model_params.skip_finite_check = 0) */
    float *inv_freq_local; /* (rot_dim/2) Gemma 3's local layers' RoPE table (NULL: none) */
};

/* The RoPE table layer l rotates with (NULL: none, a SmolLM3 NoPE layer); `global` is the pass's table of
 * the global layers (longrope: short or long). */
static inline const float *lt_layer_inv_freq(const lt_model *m, int l, const float *global) {
    const int r = l < LT_CONFIG_MAX_LAYERS ? m->cfg.layer_rope[l] : LT_LAYER_ROPE_GLOBAL; /* kept for so many */
    return r == LT_LAYER_ROPE_NONE ? NULL : r == LT_LAYER_ROPE_LOCAL ? m->inv_freq_local : global;
}

/* The LM head (V, H) as a weight of the seam: quantized, or the f32 lm_head. */
static inline lt_weight lt_model_lm_head(const lt_model *m) {
    if (m->lm_head_q.format != LT_WEIGHT_F32) return m->lm_head_q;
    lt_weight w = {.format = LT_WEIGHT_F32, .f32 = m->lm_head};
    return w;
}

/*
 * A model is shared read-only by every thread that uses it, so its calls never write to it: the
 * message of a failed call is kept per thread, tagged with the model (lt_model_last_error). This
 * clears and returns that record for model m.
 */
lt_error *lt_model_error(const lt_model *m);

/* The checkpoint names of an MoE layer: its parent module (Qwen3-MoE "mlp", Mixtral "block_sparse_moe")
 * and the experts' gate, up, down ("gate_proj", "up_proj", "down_proj" / "w1", "w3", "w2"). */
/* Expert e's bias of projection p (NULL: the family has none). */
static inline const float *lt_expert_bias(const lt_model_config *c, const lt_layer *L, int e, lt_proj p) {
    if (!L->expert_bias) return NULL;
    const size_t MI = (size_t)c->moe_intermediate_size;
    return p == P_DOWN ? L->expert_bias + (size_t)c->num_experts * 2 * MI + (size_t)e * c->hidden_size
                       : L->expert_bias + (size_t)e * 2 * MI + (p == P_UP ? MI : 0);
}
static inline const char *lt_moe_parent(const lt_model_config *c) {
    return c->arch == LT_ARCH_MIXTRAL ? "block_sparse_moe" : "mlp";
}
/* The router's module under the parent: "gate" (Qwen3-MoE, Mixtral), "router" (gpt-oss: weight and bias); PEFT's
 * modules_to_save name for it (LT_SAVE_ROUTER). */
static inline const char *lt_moe_router_name(const lt_model_config *c) {
    return c->arch == LT_ARCH_GPT_OSS ? "router" : "gate";
}
static inline const char *lt_moe_proj_name(const lt_model_config *c, int k) {
    static const char *const qwen[3] = {"gate_proj", "up_proj", "down_proj"}, *const mixtral[3] = {"w1", "w3", "w2"};
    return c->arch == LT_ARCH_MIXTRAL ? mixtral[k] : qwen[k];
}

/* Expert e's projection p (P_GATE, P_UP, P_DOWN) of MoE layer L. */
static inline const lt_weight *lt_expert_w(const lt_layer *L, int e, lt_proj p) {
    return &L->experts[3 * e + (p - P_GATE)];
}

/* lt_model_load with a conversion buffer of `chunk` floats (0: the default, 1M): tests stream a
 * checkpoint through a small buffer to cut tensors at many places (model/load.c). */
lt_status lt_model_load_chunked(lt_context *ctx, const char *dir, const lt_model_params *params, size_t chunk,
                                lt_model **out);

/* Input and output width of projection p. */
void lt_proj_dims(const lt_model_config *cfg, lt_proj p, int *in, int *out);

/* A linear module as the checkpoint and PEFT name it: one projection, or several fused ones stacked
 * along the output dimension (Phi-3: qkv_proj = q|k|v, gate_up_proj = gate|up). A LoRA on a fused
 * module has one A (r, in) shared by its projections and one B (sum of outs, r) whose row blocks are
 * the projections' B. */
typedef struct lt_module {
    const char *parent, *name; /* "self_attn", "qkv_proj"                          */
    int first, count;          /* projections first .. first + count - 1           */
} lt_module;
/* The modules of a layer in PEFT order; returns how many (<= P_COUNT). */
int lt_model_modules(const lt_model_config *cfg, lt_module out[P_COUNT]);
/* in and the summed out width of a module */
void lt_module_dims(const lt_model_config *cfg, const lt_module *mod, int *in, int *out);
/* the target mask bits (1 << p) of a module */
static inline unsigned lt_module_mask(const lt_module *mod) { return ((1u << mod->count) - 1u) << mod->first; }

#endif /* LT_MODEL_H */
