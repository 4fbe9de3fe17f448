/*
 * model.h - the core's view of a loaded model, an adapter and the per-shape workspace (internal).
 *
 * Layout convention: activations are (N, C) row-major with N = B*T tokens; linear weights are
 * Hugging Face's (out, in), so y = x W^T. All device pointers belong to the model's backend.
 */
#ifndef LT_MODEL_H
#define LT_MODEL_H

#include "backend.h"
#include "config.h"
#include "internal.h"
#include "safetensors.h"

struct lt_context {
    lt_error err;
    lt_backend *be;
    lt_log_fn log_fn;
    void *log_user;
    lt_log_level log_level;
};

/* The seven linear projections of a decoder layer, in PEFT's target-module order. */
typedef enum lt_proj { P_Q, P_K, P_V, P_O, P_GATE, P_UP, P_DOWN, P_COUNT } lt_proj;
extern const char *const lt_proj_names[P_COUNT];   /* "q_proj", ...               */
extern const char *const lt_proj_parent[P_COUNT];  /* "self_attn" or "mlp"        */

/* ---- the weight seam: a frozen (out, in) base weight in one of several storage formats ---------
 * Every product with a base projection goes through lt_weight_forward / lt_weight_backward
 * (src/linear.c), which switch on the format. Quantized weights are dequantized a tile of output rows
 * at a time into the workspace's scratch (ws->wtile), never as a whole layer. */
typedef enum lt_weight_format {
    LT_WEIGHT_F32 = 0,   /* f32: a backend pointer                                            */
    LT_WEIGHT_QUANT = 1, /* blockwise NF4 / FP4 / int8 (bitsandbytes layout): q                */
    LT_WEIGHT_BF16 = 2   /* bf16 in the backend's packed layout (base_dtype LT_BASE_BF16): bf16  */
} lt_weight_format;

typedef struct lt_weight {
    lt_weight_format format;
    float *f32;          /* (out, in), LT_WEIGHT_F32                                            */
    lt_qdesc q;          /* LT_WEIGHT_QUANT: backend pointers, rows = out, cols = in            */
    int double_quant;    /* LT_WEIGHT_QUANT: q.absmax == NULL                                   */
    void *bf16;          /* LT_WEIGHT_BF16: packed by the backend's bf16_weight_pack            */
} lt_weight;

typedef struct lt_layer {
    float *attn_norm; /* (H)        input_layernorm.weight             */
    float *mlp_norm;  /* (H)        post_attention_layernorm.weight    */
    lt_weight w[P_COUNT]; /* (out, in)  q (NH*HD,H) k,v (NKV*HD,H) o (H,NH*HD) gate,up (I,H) down (H,I) */
    /* family extras (NULL when the family has none) */
    float *bias[P_COUNT];        /* (out)  Qwen2 q,k,v; attention_bias / mlp_bias              */
    float *q_norm, *k_norm;      /* (HD)   Qwen3 per-head RMSNorm before RoPE                  */
    /* the norm weights as stored in the checkpoint, for export: the compute weights above are
     * (1 + w) for Gemma (norm_offset), else these are the same pointers */
    float *attn_norm_file, *mlp_norm_file, *q_norm_file, *k_norm_file;
    /* Gemma 2 sandwich norms: mlp_norm is pre_feedforward_layernorm there, and these normalise the
     * attention output (post_attention_layernorm) and the MLP output (post_feedforward_layernorm) */
    float *post_attn_norm, *post_ff_norm, *post_attn_norm_file, *post_ff_norm_file;
} lt_layer;

struct lt_model {
    lt_context *ctx;
    lt_backend *be;
    lt_model_config cfg;
    char dir[4096];
    lt_st_set *st;          /* kept open while weights point into its mapping     */
    float *embed;           /* (V, H)                                             */
    float *final_norm;      /* (H)                                                */
    float *final_norm_file; /* (H) as stored (differs from final_norm for Gemma)  */
    float *lm_head;         /* (V, H); == embed when tied                         */
    lt_layer *layers;       /* (L)                                                */
    float *inv_freq;        /* (rot_dim/2) RoPE inverse frequencies               */
    float *inv_freq_long;   /* (rot_dim/2) longrope's long factors (NULL: none)   */
    float rope_mscale;      /* longrope attention factor on cos/sin (1: none)     */
    int rot_dim;
    void **owned;           /* backend allocations to free                        */
    int n_owned, cap_owned;
    int64_t n_params, weight_bytes;
    int n_merged;           /* adapters currently merged into the weights         */
    lt_quant_format quant;  /* format of the quantized projections (NONE: all f32) */
    int quant_blocksize, quant_double;
    float *code8;           /* (256) backend copy of the 8-bit map (double quant)  */
    int64_t quant_bytes, quant_params; /* bytes and elements of quantized weights */
    size_t tile_floats;     /* dequantization tile size (0: the default, ~1 MiB); tests shrink it */
    lt_weight lm_head_q;    /* the LM head when not f32: quantized (quantize_lm_head) or packed bf16
                             * (base_dtype BF16); lm_head is then NULL unless tied to embed */
    int base_dtype;         /* lt_base_dtype of the projection weights layers[].w (BF16: LT_WEIGHT_BF16) */
};

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
static inline unsigned lt_module_mask(const lt_module *mod) {
    return ((1u << mod->count) - 1u) << mod->first;
}

/* ---- adapters ------------------------------------------------------------------------------- */
typedef struct lt_lora {
    float *A, *B;     /* (r, in), (out, r)  inside adapter->params  */
    float *dA, *dB;   /* gradients, same layout inside adapter->grads */
    /* DoRA (NULL otherwise): magnitude (out) in params, its gradient in grads; g = m / ||W + s B A||_row
     * and inv_n = 1 / ||W + s B A||_row (out each, the adapter's scratch) set by each forward */
    float *mag, *dmag, *dora_g, *dora_inv_n;
    /* PiSSA / OLoRA (NULL otherwise): the frozen initial A0 (r, in), B0 (out, r) in adapter->init0; the
     * projection is x W^T + s (x A^T) B^T - s (x A0^T) B0^T, PEFT's residual base without rewriting W */
    float *A0, *B0;
} lt_lora;

struct lt_adapter {
    lt_error err;
    lt_model *model;
    lt_adapter_params p;
    float scaling;        /* alpha/r, or alpha/sqrt(r) with rsLoRA */
    lt_lora *lora;        /* (L * P_COUNT); A == NULL when the projection is not targeted */
    float *params;        /* every A and B, contiguous (device) */
    float *grads;         /* same layout (device) */
    size_t n_params;
    int merged;
    /* DoRA scratch: g and inv_n of every targeted projection, and one materialised W + s B A of the
     * largest one (device); the row factors applied by a merge, to undo it (host) */
    float *dora_gn, *dora_w;
    float *dora_merge_g;
    float *init0;         /* PiSSA / OLoRA: A0 and B0 at the offsets of A and B in params (device); NULL otherwise */
    size_t n_init0;       /* its floats: the LoRA part of params (modules_to_save copies come after) */
    /* Trained copies of base weights (full fine-tuning: all of them; modules_to_save: embed_tokens
     * and/or lm_head), fp32 inside params after the LoRA tensors, gradients at the same offsets in
     * grads. The model stays read-only: each pass reads weights through the views below. */
    lt_layer *full_layers;    /* (L) full FT: weights in params (norms: *_file = the trained w, the  */
                              /* plain pointers = what the forward multiplies by, (1 + w) for Gemma) */
    lt_layer *full_grads;     /* (L) full FT: the same fields pointing into grads                  */
    float *embed, *d_embed;   /* (V,H) trained embed_tokens and its gradient (NULL: frozen)        */
    float *lm_head, *d_lm_head; /* (V,H) trained lm_head (== embed for a tied full FT)             */
    float *final_norm, *final_norm_file, *d_final_norm; /* full FT: model.norm                       */
    float *norm_compute;      /* Gemma full FT: the (1 + w) copies of every norm (device), refreshed */
    float *norm_ones;         /* after each update by lt_adapter_sync_weights; ones (max(H,HD))    */
    size_t n_decay;           /* params [0, n_decay) take weight decay; the rest (biases, norms) not */
    struct lt_ptensor *ptensors; /* the trained base-weight tensors, in params order               */
    int n_ptensors;
};

/* One trained base-weight tensor of an adapter: its checkpoint name and place inside params. */
typedef struct lt_ptensor {
    char name[96];            /* "model.layers.3.self_attn.q_proj.weight", "lm_head.weight"        */
    size_t off, n;
    int decay;                /* 0: a bias or a norm (Hugging Face Trainer's no-decay group)       */
    float *compute;           /* Gemma norms: the (1 + w) copy the forward reads (NULL otherwise)  */
} lt_ptensor;

/* ---- the weights a pass reads: the adapter's trained copies where it holds them, else the model's */
static inline const lt_layer *lt_view_layer(const lt_model *m, const lt_adapter *ad, int l) {
    return ad && ad->full_layers ? &ad->full_layers[l] : &m->layers[l];
}
/* the gradient fields of layer l (NULL: the layer's weights are frozen) */
static inline const lt_layer *lt_view_layer_grads(const lt_adapter *ad, int l) {
    return ad && ad->full_grads ? &ad->full_grads[l] : NULL;
}
static inline const float *lt_view_embed(const lt_model *m, const lt_adapter *ad) {
    return ad && ad->embed ? ad->embed : m->embed;
}
static inline const float *lt_view_final_norm(const lt_model *m, const lt_adapter *ad) {
    return ad && ad->final_norm ? ad->final_norm : m->final_norm;
}
static inline lt_weight lt_view_lm_head(const lt_model *m, const lt_adapter *ad) {
    if (ad && ad->lm_head) {
        lt_weight w = {.format = LT_WEIGHT_F32, .f32 = ad->lm_head};
        return w;
    }
    return lt_model_lm_head(m);
}

/* After the adapter's params changed (update, load): refresh derived weights (Gemma's 1 + w norms). */
void lt_adapter_sync_weights(const lt_adapter *a);
/* src/adapter_full.c: checks of full_finetune / modules_to_save against the model; the trained tensors'
 * float count (pass 0, sets n_ptensors and the floats of Gemma compute norms) and binding (pass 1: the
 * views point into params from `base` on, filled with the model's values); loading a saved full model. */
lt_status lt_adapter_full_check(const lt_model *m, const lt_adapter_params *p, lt_error *err);
size_t lt_adapter_extra_count(lt_adapter *a, size_t *norm_floats);
lt_status lt_adapter_extra_bind(lt_adapter *a, size_t base, lt_error *err);
lt_status lt_adapter_load_full(lt_model *m, const char *dir, lt_adapter **out, lt_error *err);

static inline lt_lora *lt_adapter_lora(const lt_adapter *a, int layer, lt_proj p) {
    lt_lora *l = &a->lora[layer * P_COUNT + p];
    return l->A ? l : NULL;
}

/* DoRA: g and inv_n of one projection (lo->dora_g, lo->dora_inv_n) for the current A, B, m. */
void lt_dora_prepare(lt_model *m, const lt_adapter *ad, int layer, lt_proj p);

/* PiSSA / OLoRA (src/lora_init.c): decompose every targeted module's base weight and set A = A0, B = B0. */
lt_status lt_lora_decompose_init(lt_adapter *a, lt_error *err);
static inline int lt_init_is_decomposed(lt_lora_init init) { return init == LT_INIT_PISSA || init == LT_INIT_OLORA; }

/* Create the adapter tensors (zeros) for the given params; used by create and load. */
lt_status lt_adapter_alloc(lt_model *model, const lt_adapter_params *p, lt_adapter **out, lt_error *err);

/* ---- workspace: everything a forward + backward of one (B, T) shape needs, planned once ------- */
typedef struct lt_layer_acts {
    float *x_in;              /* (N,H) residual stream entering the layer                     */
    float *ln1, *rstd1;       /* (N,H), (N)                                                   */
    float *q, *k, *v;         /* (N,NH*HD), (N,NKV*HD) x2, after RoPE                          */
    float *q_pre, *k_pre;     /* (N,NH*HD), (N,NKV*HD) before the Qwen3 q/k norm (qk_norm only) */
    float *rstd_q, *rstd_k;   /* (N*NH), (N*NKV) q/k norm statistics (qk_norm only)            */
    float *o_raw, *rstd_pa;   /* (N,H), (N) o_proj output before post_attention_layernorm (Gemma 2) */
    float *d_raw, *rstd_pf;   /* (N,H), (N) down_proj output before post_feedforward_layernorm      */
    float *att, *lse;         /* (N,NH*HD), (B,NH,T)                                          */
    float *x_mid;             /* (N,H) residual after attention                               */
    float *ln2, *rstd2;       /* (N,H), (N)                                                   */
    float *gate, *up, *act;   /* (N,I) each; act = silu(gate) * up                            */
    float *xa[P_COUNT];       /* (N,r) dropout(x) A^T per targeted projection                 */
} lt_layer_acts;

typedef struct lt_workspace {
    lt_backend *be;
    int B, T, N;              /* rows of the staged batch (<= B_cap), tokens per row, B*T */
    int B_cap;                /* rows planned for; a smaller batch reuses the workspace */
    int rank;                 /* LoRA rank it was planned for (0: none) */
    int checkpointing;        /* 1: recompute each layer in backward */
    int forward_only;         /* no backward buffers were planned */
    int n_acts;               /* L without checkpointing, 1 with */
    lt_layer_acts *acts;
    float **x_saved;          /* (L) layer inputs (N,H) kept by checkpointing; x_saved[L] = final */
    float *final_ln, *final_rstd; /* (N,H), (N) */
    int32_t *ids, *targets, *pos, *kv_start; /* (N) device copies */
    int32_t *kv_start_swa;    /* (N) first key of each query in sliding-window layers (NULL: none) */
    const float *inv_freq;    /* the model's RoPE frequencies for the staged batch (longrope: short or long) */
    float *logits;            /* (chunk, V) */
    float *losses;            /* (N) */
    int chunk;
    /* backward scratch */
    float *dres, *dln;        /* (N,H) */
    float *dI1, *dI2, *dI3;   /* (N,I) */
    float *dq, *dk, *dv, *datt; /* (N,NH*HD) (N,NKV*HD) x2 (N,NH*HD) */
    float *dk_pre;            /* (N,NKV*HD) gradient before the k norm (qk_norm only) */
    float *dsand;             /* (N,H) gradient before a sandwich norm (Gemma 2) */
    float *logits_capped;     /* (chunk,V) soft-capped logits kept for backward (Gemma 2) */
    float *dr;                /* (N,r) */
    float *drop;              /* (N,max(H,I)) dropout-masked inputs */
    float *att_scratch;
    float *wtile;             /* (lt_weight_tile_floats) dequantized rows of a quantized weight */
    float *host_losses;       /* host copy of losses (N) */
    int32_t *host_stage;      /* (5N) host staging of ids, targets, positions, kv_start, kv_start_swa */
    void *block;              /* the one allocation everything above lives in */
    size_t block_bytes;
    float *row_w;             /* (N) per-token CE-gradient weights of lt_backward_weighted */
} lt_workspace;

/* mode: LT_WS_FULL keeps every layer's activations, LT_WS_CHECKPOINT keeps layer inputs and
 * recomputes in backward, LT_WS_FORWARD plans no backward at all (evaluation, logits). */
enum { LT_WS_FULL = 0, LT_WS_CHECKPOINT = 1, LT_WS_FORWARD = 2 };
lt_status lt_workspace_create(lt_model *m, int B, int T, int rank, int mode,
                              lt_workspace **out, lt_error *err);
void lt_workspace_free(lt_workspace *ws);

/* Dropout control for a forward/backward pass. p == 0: off. */
typedef struct lt_dropout_state { float p; uint64_t seed; } lt_dropout_state;

/*
 * Validate a batch against the model (shapes, id ranges) and stage ids/targets/positions into the
 * workspace. *n_valid receives the number of predicted tokens.
 */
lt_status lt_stage_batch(lt_model *m, lt_workspace *ws, const lt_batch *b, int64_t *n_valid, lt_error *err);

/*
 * Forward through every layer and the chunked LM head + cross-entropy.
 * loss_sum receives the summed token loss. If grad_scale != 0 the backward pass runs too and
 * adapter grads ACCUMULATE grad_scale * d(loss_sum)/d(param).
 * If logits_out != NULL (host memory, (N,V)) the logits are copied there (no backward).
 */
lt_status lt_forward_backward(lt_model *m, const lt_adapter *ad, lt_workspace *ws,
                              const lt_dropout_state *drop, float grad_scale, double *loss_sum,
                              float *logits_out, lt_error *err);

/*
 * Objectives other than SFT (src/objectives.c) in two halves, with the host in between:
 * lt_forward_logp runs the forward and leaves -log p of every target token in ws->host_losses (0 where
 * the target is -100), keeping what the backward needs; logit_scale multiplies the logits (GRPO:
 * 1/temperature; 1 otherwise). lt_backward_weighted then accumulates into the adapter grads the
 * gradient of sum_t w[t] * CE_t, w = host_w (N) (= -d loss / d log p_t), recomputing the LM-head
 * logits chunk by chunk. The adapter, dropout and logit_scale must be those of the forward.
 */
lt_status lt_forward_logp(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                          float logit_scale, lt_error *err);
lt_status lt_backward_weighted(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                               float logit_scale, const float *host_w, lt_error *err);

/*
 * y (N,out) = x (N,in) W^T + s * (dropout(x) A^T) B^T for one projection; xa (N,r) receives
 * dropout(x) A^T when lo != NULL. ws is only used for the dropout scratch (may be NULL without dropout).
 */
void lt_linear_forward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                       const lt_dropout_state *drop, uint64_t drop_stream, float *y, const float *x,
                       const lt_weight *W, float *xa, int N, int in, int out);

/* ---- the weight seam (src/linear.c) ------------------------------------------------------------ */
/* Floats of dequantization scratch a workspace must plan for this model (0: nothing quantized). */
size_t lt_weight_tile_floats(const lt_model *m);
/* y (N,out) = x (N,in) W^T + beta * y.  tile: ws->wtile (unused for f32 weights). */
void lt_weight_forward(lt_model *m, float *tile, const lt_weight *W, float *y, const float *x, int N, int in,
                       int out, float beta);
/* dx (N,in) = dy (N,out) W + beta * dx. */
void lt_weight_backward(lt_model *m, float *tile, const lt_weight *W, float *dx, const float *dy, int N, int in,
                        int out, float beta);
/* The weight as f32 (out, in) in host memory (dequantized when quantized). */
lt_status lt_weight_download(lt_model *m, const lt_weight *W, float *host, int out, int in, lt_error *err);

/* Write a Hugging Face model directory of the model's weights (merged with `ad` when not NULL). */
lt_status lt_model_export(lt_model *m, const lt_adapter *ad, const char *dir, uint64_t max_shard_bytes,
                          lt_error *err);

#endif /* LT_MODEL_H */
