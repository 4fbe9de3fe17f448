/*
 * decoder.h - the decoder: the per-shape workspace and batch staging (decoder/workspace.c), the layer
 * forward and backward with LoRA / DoRA, the chunked LM head + cross-entropy (decoder/decoder.c), and
 * the passes the trainer, the objectives, evaluation and generation run (internal).
 */
#ifndef LT_DECODER_H
#define LT_DECODER_H

#include <stdatomic.h>

#include "adapter/adapter.h"

/* ---- workspace: everything a forward + backward of one (B, T) shape needs, planned once ------- */

/* The routing of one MoE layer's pass (host memory; decoder.c moe_route): the N tokens' K choices
 * as M = N * K (token, expert) pairs sorted by expert, so that each expert runs one GEMM over its rows. */
typedef struct lt_moe_route {
    float *prob;    /* (N,E) softmax of the router logits                                   */
    int32_t *sel;   /* (N,K) the chosen experts, by decreasing probability                  */
    int32_t *pair;  /* (N,K) the pair of each choice                                       */
    int32_t *tok;   /* (M) the token of each pair (uploaded to e_tok)                        */
    float *w;       /* (M) its routing weight (uploaded to e_w)                              */
    int32_t *off;   /* (E+1) expert e's pairs are off[e] .. off[e+1]-1                      */
    int32_t *order; /* (E) the experts by decreasing pair count (ties: lower expert first)  */
} lt_moe_route;

typedef struct lt_layer_acts {
    float *x_in;            /* (N,H) residual stream entering the layer                     */
    float *ln1, *rstd1;     /* (N,H), (N)                                                   */
    float *q, *k, *v;       /* (N,NH*HD), (N,NKV*HD) x2, after RoPE                          */
    float *q_pre, *k_pre;   /* (N,NH*HD), (N,NKV*HD) before the Qwen3 q/k norm (qk_norm only) */
    float *rstd_q, *rstd_k; /* (N*NH), (N*NKV) q/k norm statistics (qk_norm only)            */
    float *o_raw, *rstd_pa; /* (N,H), (N) o_proj output before post_attention_layernorm (Gemma 2) */
    float *d_raw, *rstd_pf; /* (N,H), (N) down_proj output before post_feedforward_layernorm      */
    float *att, *lse;       /* (N,NH*HD), (B,NH,T)                                          */
    float *x_mid;           /* (N,H) residual after attention                               */
    float *ln2, *rstd2;     /* (N,H), (N)                                                   */
    float *gate, *up, *act; /* (N,I) each; act = silu(gate) * up                            */
    float *xa[P_COUNT];     /* (N,r) dropout(x) A^T per targeted projection                 */
    /* MoE layers: gate, up, act hold (M,MI) rows of the pairs; xa[P_GATE] / xa[P_DOWN] (M,r) the expert
     * LoRAs' x A^T */
    int32_t *e_tok;     /* (M) device copy of route.tok                                        */
    float *e_w;         /* (M) device copy of route.w                                          */
    float *e_y;         /* (M,H) each pair's expert output before its routing weight            */
    lt_moe_route route; /* host                                                                */
} lt_layer_acts;

typedef struct lt_workspace {
    lt_backend *be;
    int B, T, N;       /* rows of the staged batch (<= B_cap), tokens per row, B*T */
    int B_cap;         /* rows planned for; a smaller batch reuses the workspace */
    int N_cap;         /* tokens planned for (B_cap * the planned T): generation stages fewer */
    int rank;          /* LoRA rank it was planned for (0: none) */
    int checkpointing; /* 1: some layers are recomputed in backward (those from n_kept on) */
    int forward_only;  /* no backward buffers were planned */
    int n_kept;        /* layers 0 .. n_kept-1 keep their activations (acts[l]); L without checkpointing */
    int n_acts;        /* n_kept, + 1 shared set (acts[n_kept]) for the recomputed layers */
    lt_layer_acts *acts;
    float **x_saved;                         /* (L) layer inputs (N,H) kept by checkpointing; x_saved[L] = final */
    float *final_ln, *final_rstd;            /* (N,H), (N) */
    int32_t *ids, *targets, *pos, *kv_start; /* (N) device copies */
    int32_t *kv_start_swa;                   /* (N) first key of each query in sliding-window layers (NULL: none) */
    const float *inv_freq; /* the model's RoPE frequencies for the staged batch (longrope: short or long) */
    float *logits;         /* (chunk, V) */
    float *losses;         /* (N) */
    int chunk;
    /* backward scratch */
    float *dres, *dln;          /* (N,H) */
    float *dI1, *dI2, *dI3;     /* (N,I) */
    float *dq, *dk, *dv, *datt; /* (N,NH*HD) (N,NKV*HD) x2 (N,NH*HD) */
    float *dk_pre;              /* (N,NKV*HD) gradient before the k norm (qk_norm only) */
    float *dsand;               /* (N,H) gradient before a sandwich norm (Gemma 2) */
    float *logits_capped;       /* (chunk,V) soft-capped logits kept for backward (Gemma 2) */
    float *dr;                  /* (N,r) */
    float *drop;                /* (N,max(H,I)) dropout-masked inputs */
    float *att_scratch;
    float *wtile;        /* (lt_weight_tile_floats) dequantized rows of a quantized weight */
    float *host_losses;  /* host copy of losses (N) */
    int32_t *host_stage; /* (6N) host staging of ids, targets, positions, kv_start, kv_start_swa, and the
                          * cache slots (generation) */
    void *block;         /* the one allocation everything above lives in */
    size_t block_bytes;
    float *row_w;      /* (N) per-token CE-gradient weights of lt_backward_weighted */
    float *embed_keep; /* (N) 0 where the input is pad_token_id, else 1 (NULL: the config has no pad id, or
                        * no backward): PyTorch's nn.Embedding(padding_idx) gives the pad row no gradient
                        * from the lookup (a tied LM head's gradient still reaches it) */
    /* mixture of experts (NULL / 0 without MoE layers) */
    float *e_x, *e_dx; /* (M,H) the pairs' inputs; their output gradients, then input gradients */
    float *r_logits;   /* (N,E) router logits, in the backward their gradient                   */
    float *h_moe;      /* host (M + N E + 2 M H): the router logits; the backward's row dots, router
                        * gradient and (device backends) the rows the dots read */
    void *h_route;     /* host: the routes of every acts entry                                  */
    double *aux_cnt;   /* host (E): pairs per expert, summed over the MoE layers of the forward */
    double *aux_psum;  /* host (E): router probabilities per expert, summed likewise            */
    double aux_rows;   /* tokens routed, summed over the MoE layers                             */
    double aux_loss;   /* the load-balancing loss of the last forward (transformers' aux_loss)  */
    double aux_weight; /* its weight in the backward's loss (0: none)                           */
    uint8_t *aux_mask; /* host (N): with aux_masked, the tokens the statistics count (1; 0: padding */
    int aux_masked;    /* of a preference row, as transformers' attention_mask excludes it); 0: all */
    int moe_recompute; /* 1 while checkpointing recomputes a layer: routing statistics not counted */
    /* the products with frozen weights (the weight seam) of every pass run with this workspace, for the
     * benchmarks' GEMM rate (lt_trainer_frozen_gemm_stats): wall time of the calls, summed over the threads
     * that call at once (experts side by side), and multiply-adds. Host-memory backends only: a device's
     * calls return before their work is done. Atomic: experts call from several threads. */
    _Atomic uint64_t frozen_ns, frozen_madds;
} lt_workspace;

/* mode: LT_WS_FULL keeps every layer's activations, LT_WS_CHECKPOINT keeps layer inputs and
 * recomputes in backward, LT_WS_FORWARD plans no backward at all (evaluation, logits). */
enum { LT_WS_FULL = 0, LT_WS_CHECKPOINT = 1, LT_WS_FORWARD = 2 };
lt_status lt_workspace_create(lt_model *m, int B, int T, int rank, int mode, lt_workspace **out, lt_error *err);
/* The same with the first n_kept layers keeping their activations (mode LT_WS_CHECKPOINT; clamped to
 * 0 .. L; L is LT_WS_FULL): gradient checkpointing that spends memory to skip recomputation. */
lt_status lt_workspace_create_kept(lt_model *m, int B, int T, int rank, int mode, int n_kept, lt_workspace **out,
                                   lt_error *err);
/* A training workspace: without checkpointing every layer keeps its activations; with it, as many
 * layers as keep_bytes pays for (lt_trainer_params.activation_memory), the others recomputed. */
lt_status lt_workspace_create_train(lt_model *m, int B, int T, int rank, int checkpointing, int64_t keep_bytes,
                                    lt_workspace **out, lt_error *err);
/* Bytes of one layer's activation set for a B x T batch (what keeping one more layer costs). */
size_t lt_workspace_layer_bytes(const lt_model *m, int B, int T, int rank);
/* the activation set of layer l */
static inline lt_layer_acts *lt_workspace_acts(lt_workspace *ws, int l) {
    return &ws->acts[l < ws->n_kept ? l : ws->n_kept];
}
void lt_workspace_free(lt_workspace *ws);

/* Dropout control for a forward/backward pass. p == 0: off. tok0: the place of the batch's first token in a
 * larger batch (data-parallel ranks: the global one), so that each token draws the mask it would draw there. */
typedef struct lt_dropout_state {
    float p;
    uint64_t seed;
    int64_t tok0;
} lt_dropout_state;

/*
 * Validate a batch against the model (shapes, id ranges) and stage ids/targets/positions into the
 * workspace. *n_valid receives the number of predicted tokens.
 */
lt_status lt_stage_batch(lt_model *m, lt_workspace *ws, const lt_batch *b, int64_t *n_valid, lt_error *err);

/* ---- the KV cache of generation: the one thing in which a pass of generation differs -------------
 * A layer attends in one of three ways (decoder.c attend()), everything else is the same code:
 *   no cache (kv NULL: training, evaluation): the staged (B, T) rows attend within themselves, token t
 *       of a row to its keys kv_start[t] .. t;
 *   LT_KV_FILL (prefill): the same, and every staged token's k and v is stored in the cache at its slot
 *       (row b's token t at position t: prompts are right-padded, the padding's keys land in slots that
 *       decoding overwrites before it reads them);
 *   LT_KV_DECODE: one token per row (T = 1) at position len[b] - 1: its k and v are stored at that slot
 *       and it attends to the cached keys kv_start[b] .. len[b] - 1 of its row (kv_start: 0, or the
 *       first key of the sliding window in a windowed layer).
 * Ids, positions and first keys are staged into the workspace as for training (lt_stage_cached). */
typedef enum lt_kv_mode { LT_KV_FILL = 1, LT_KV_DECODE = 2 } lt_kv_mode;

typedef struct lt_kv_cache {
    lt_kv_mode mode;
    int B, S_cap, T_cap; /* rows, slots per row, tokens per row a fill may stage                    */
    float *k, *v;        /* (L, B, S_cap, NKV*HD) each: keys after RoPE, values                      */
    int32_t *slot;       /* (B*T_cap) device: the cache row (b * S_cap + position) of each staged token */
    int32_t *len;        /* (B) device, decode: keys of each row including its new token              */
    int32_t *last;       /* (B) device, fill: the staged index b*T + n_b - 1 of each row's last token  */
    int dora_ready;      /* 1: lt_dora_prepare ran for every DoRA projection (the adapter is fixed)   */
    void *block;         /* the one allocation the device arrays above live in                       */
} lt_kv_cache;

/* A cache of B rows x S_cap slots per layer, fills of up to T_cap tokens per row. */
lt_status lt_kv_cache_create(lt_model *m, int B, int S_cap, int T_cap, lt_kv_cache **out, lt_error *err);
void lt_kv_cache_free(lt_model *m, lt_kv_cache *kv);

/*
 * Stage B rows for a pass through the cache (mode: LT_KV_FILL or LT_KV_DECODE), ids and n (B) on the host:
 *   fill:   ids (B*T) right-padded rows, row b's n[b] tokens at positions 0 .. n[b]-1; T <= kv->T_cap;
 *   decode: T = 1, ids (B) each row's next token, n[b] its keys after this step (position n[b] - 1).
 * Ids must be valid. inv_freq: the RoPE table of the pass (longrope: short or long).
 */
lt_status lt_stage_cached(lt_model *m, lt_workspace *ws, lt_kv_cache *kv, lt_kv_mode mode, const int32_t *ids,
                          const int32_t *n, int B, int T, const float *inv_freq, lt_error *err);

/*
 * The pass of generation: the staged tokens through every layer, attending through kv, then the logits
 * (host, f32) of each row's last token (fill: (B,V)), of every token when every_token (fill: (B*T,V)),
 * or of the one token of each row (decode: (B,V)). Gemma 2's final soft-capping applied.
 */
lt_status lt_forward_cached(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_kv_cache *kv, int every_token,
                            float *logits, lt_error *err);

/* ---- sampling (generate.c) ---------------------------------------------------------------------- */
typedef struct lt_sample_cand {
    float p;
    int32_t id;
} lt_sample_cand;
/*
 * The next token from one row of logits (V). temperature 0: the first argmax. Else p = softmax(logits /
 * temperature) in the order of decreasing p (ties: the lower id first), cut to the top_k first (0: all),
 * then to the shortest prefix whose mass reaches top_p; u in [0, 1) picks the first token whose
 * cumulative mass exceeds u times the mass kept. scratch: V entries. -1 when a logit is not finite.
 */
int32_t lt_sample_token(const float *logits, int V, float temperature, int top_k, float top_p, double u,
                        lt_sample_cand *scratch);

/*
 * Forward through every layer and the chunked LM head + cross-entropy.
 * loss_sum receives the summed token loss. If grad_scale != 0 the backward pass runs too and
 * adapter grads ACCUMULATE grad_scale * d(loss_sum)/d(param).
 * If logits_out != NULL (host memory, (N,V)) the logits are copied there (no backward).
 */
lt_status lt_forward_backward(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                              float grad_scale, double *loss_sum, float *logits_out, lt_error *err);

/*
 * Objectives other than SFT (train/objectives.c) in two halves, with the host in between:
 * lt_forward_logp runs the forward and leaves -log p of every target token in ws->host_losses (0 where
 * the target is -100), keeping what the backward needs; logit_scale multiplies the logits (GRPO:
 * 1/temperature; 1 otherwise). lt_backward_weighted then accumulates into the adapter grads the
 * gradient of sum_t w[t] * CE_t, w = host_w (N) (= -d loss / d log p_t), recomputing the LM-head
 * logits chunk by chunk. The adapter, dropout and logit_scale must be those of the forward.
 * An MoE model: lt_forward_logp also leaves the load-balancing loss of the tokens it counted (every
 * token, or ws->aux_mask's) in ws->aux_loss; an objective that adds coef * aux_loss to its loss sets
 * ws->aux_weight = coef (times the loss's scale) between the two, and the backward adds its gradient.
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
                       const lt_dropout_state *drop, uint64_t drop_stream, float *y, const float *x, const lt_weight *W,
                       float *xa, int N, int in, int out);

/* out (N,H) = the embeddings of ids (N, on the backend): the adapter's trained table where it holds one,
 * else the model's f32 table, or its bf16 table (base_dtype BF16) read into f32. */
void lt_embed_lookup(lt_model *m, const lt_adapter *ad, float *out, const int32_t *ids, int N);

/* DoRA: g and inv_n of one projection (lo->dora_g, lo->dora_inv_n) for the current A, B, m. */
void lt_dora_prepare(lt_model *m, const lt_adapter *ad, int layer, lt_proj p);

#endif /* LT_DECODER_H */
