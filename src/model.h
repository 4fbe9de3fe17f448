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

typedef struct lt_layer {
    float *attn_norm; /* (H)        input_layernorm.weight             */
    float *mlp_norm;  /* (H)        post_attention_layernorm.weight    */
    float *w[P_COUNT];/* (out, in)  q (NH*HD,H) k,v (NKV*HD,H) o (H,NH*HD) gate,up (I,H) down (H,I) */
                      /* with base_dtype LT_BASE_BF16: the backend's packed bf16 layout instead */
} lt_layer;

struct lt_model {
    lt_context *ctx;
    lt_backend *be;
    lt_model_config cfg;
    char dir[4096];
    lt_st_set *st;          /* kept open while weights point into its mapping     */
    float *embed;           /* (V, H)                                             */
    float *final_norm;      /* (H)                                                */
    float *lm_head;         /* (V, H); == embed when tied                         */
    lt_layer *layers;       /* (L)                                                */
    float *inv_freq;        /* (rot_dim/2) RoPE inverse frequencies               */
    int rot_dim;
    void **owned;           /* backend allocations to free                        */
    int n_owned, cap_owned;
    int64_t n_params, weight_bytes;
    int n_merged;           /* adapters currently merged into the weights         */
    int base_dtype;         /* lt_base_dtype of the projection weights layers[].w  */
};

/*
 * A model is shared read-only by every thread that uses it, so its calls never write to it: the
 * message of a failed call is kept per thread, tagged with the model (lt_model_last_error). This
 * clears and returns that record for model m.
 */
lt_error *lt_model_error(const lt_model *m);

/* Input and output width of projection p. */
void lt_proj_dims(const lt_model_config *cfg, lt_proj p, int *in, int *out);

/* ---- adapters ------------------------------------------------------------------------------- */
typedef struct lt_lora {
    float *A, *B;     /* (r, in), (out, r)  inside adapter->params  */
    float *dA, *dB;   /* gradients, same layout inside adapter->grads */
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
};

static inline lt_lora *lt_adapter_lora(const lt_adapter *a, int layer, lt_proj p) {
    lt_lora *l = &a->lora[layer * P_COUNT + p];
    return l->A ? l : NULL;
}

/* Create the adapter tensors (zeros) for the given params; used by create and load. */
lt_status lt_adapter_alloc(lt_model *model, const lt_adapter_params *p, lt_adapter **out, lt_error *err);

/* ---- workspace: everything a forward + backward of one (B, T) shape needs, planned once ------- */
typedef struct lt_layer_acts {
    float *x_in;              /* (N,H) residual stream entering the layer                     */
    float *ln1, *rstd1;       /* (N,H), (N)                                                   */
    float *q, *k, *v;         /* (N,NH*HD), (N,NKV*HD) x2, after RoPE                          */
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
    float *logits;            /* (chunk, V) */
    float *losses;            /* (N) */
    int chunk;
    /* backward scratch */
    float *dres, *dln;        /* (N,H) */
    float *dI1, *dI2, *dI3;   /* (N,I) */
    float *dq, *dk, *dv, *datt; /* (N,NH*HD) (N,NKV*HD) x2 (N,NH*HD) */
    float *dr;                /* (N,r) */
    float *drop;              /* (N,max(H,I)) dropout-masked inputs */
    float *att_scratch;
    float *host_losses;       /* host copy of losses (N) */
    int32_t *host_stage;      /* (4N) host staging of ids, targets, positions, kv_start */
    void *block;              /* the one allocation everything above lives in */
    size_t block_bytes;
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
 * y (N,out) = x (N,in) W^T + s * (dropout(x) A^T) B^T for one projection; xa (N,r) receives
 * dropout(x) A^T when lo != NULL. ws is only used for the dropout scratch (may be NULL without dropout).
 */
void lt_linear_forward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                       const lt_dropout_state *drop, uint64_t drop_stream, float *y, const float *x,
                       const float *W, float *xa, int N, int in, int out);

/* Write a Hugging Face model directory of the model's weights (merged with `ad` when not NULL). */
lt_status lt_model_export(lt_model *m, const lt_adapter *ad, const char *dir, uint64_t max_shard_bytes,
                          lt_error *err);

#endif /* LT_MODEL_H */
