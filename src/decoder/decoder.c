/*
 * decoder.c - forward and backward of the decoder (every family of formats/config.c) with LoRA /
 * DoRA, through the backend ops.
 *
 * defines: lt_linear_forward, lt_dora_prepare, lt_forward_backward, lt_forward_logp, lt_backward_weighted,
 *          lt_forward_cached
 *
 * One layer (x is the residual stream, (N,H)), the same code for training, evaluation, the objectives
 * and generation (whose passes differ only in how attention reads keys: attend()):
 *   ln1 = rmsnorm(x) ; q,k,v = lin(ln1) ; rope(q,k) ; att = attention(q,k,v) ; x_mid = x + lin_o(att)
 *   ln2 = rmsnorm(x_mid) ; act = silu(lin_gate(ln2)) * lin_up(ln2) ; x_out = x_mid + lin_down(act)
 * lin_p(x) = x W_p^T + s * (dropout(x) A_p^T) B_p^T  when projection p carries LoRA.
 * Loss: h = rmsnorm_final(x_L); logits = h W_lm^T in chunks of rows; token CE against the shifted
 * labels; the logits of a chunk are turned into their gradient in place and folded into dh at once,
 * so the (N, V) logits never exist.
 * Backward runs the layers in reverse; with gradient checkpointing each layer's forward is recomputed
 * from its saved input into a single set of activation buffers first.
 * Full fine-tuning and modules_to_save: every pass reads its weights through lt_view_* (adapter/adapter.h), the
 * adapter's trained copies where it holds them; their gradients (dW += dy^T x per projection, column sums
 * for biases, dweight of each RMSNorm, a scatter-add for the embedding, dlogits^T h for the LM head)
 * accumulate into the adapter's grads next to the input gradients.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"

#define OPS (m->be->ops)
#define BE (m->be)

/* ---- the frozen weight's product, timed ------------------------------------------------------------ *
 * Every product with a frozen weight goes through these two: lt_weight_forward / _backward, plus the
 * time and multiply-adds counted into the workspace (a benchmark's GEMM rate inside the step). */

static double frozen_start(const lt_model *m, const lt_workspace *ws) {
    return ws && OPS->host_memory ? lt_now_seconds() : 0.0;
}
static void frozen_count(lt_workspace *ws, double t0, int N, int in, int out) {
    if (t0 <= 0.0) return;
    atomic_fetch_add_explicit(&ws->frozen_ns, (uint64_t)((lt_now_seconds() - t0) * 1e9), memory_order_relaxed);
    atomic_fetch_add_explicit(&ws->frozen_madds, (uint64_t)N * (uint64_t)in * (uint64_t)out, memory_order_relaxed);
}

/* y (N,out) = x (N,in) W^T */
static void frozen_forward(lt_model *m, lt_workspace *ws, const lt_weight *W, float *y, const float *x, int N, int in,
                           int out) {
    const double t0 = frozen_start(m, ws);
    lt_weight_forward(m, ws ? ws->wtile : NULL, W, y, x, N, in, out, 0.0f);
    frozen_count(ws, t0, N, in, out);
}
/* dx (N,in) = (accumulate ? dx : 0) + dy (N,out) W */
static void frozen_backward(lt_model *m, lt_workspace *ws, const lt_weight *W, float *dx, const float *dy, int N,
                            int in, int out, int accumulate) {
    const double t0 = frozen_start(m, ws);
    lt_weight_backward(m, ws->wtile, W, dx, dy, N, in, out, accumulate ? 1.0f : 0.0f);
    frozen_count(ws, t0, N, in, out);
}

/* ---- linear with LoRA ----------------------------------------------------------------------------- */

/* y (N,out) = x (N,in) W^T + s * (dropout(x) A^T) B^T ; xa (N,r) keeps dropout(x) A^T for backward. */
void lt_linear_forward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                       const lt_dropout_state *drop, uint64_t drop_stream, float *y, const float *x, const lt_weight *W,
                       float *xa, int N, int in, int out) {
    frozen_forward(m, ws, W, y, x, N, in, out);
    if (!lo) return;
    const int r = ad->p.rank;
    if (lo->B0) { /* PiSSA / OLoRA: PEFT's residual base W - s B0 A0 (on x, not dropout(x)); xa as scratch */
        OPS->gemm(BE, 0, 1, N, r, in, 1.0f, x, in, lo->A0, in, 0.0f, xa, r);
        OPS->gemm(BE, 0, 1, N, out, r, -ad->scaling, xa, r, lo->B0, r, 1.0f, y, out);
    }
    const float *xd = x;
    if (drop && drop->p > 0) { /* element i of the (N, in) input draws counter stream + (tok0 * in) + i */
        OPS->dropout(BE, ws->drop, x, (size_t)N * in, drop->p, drop->seed, drop_stream + (uint64_t)drop->tok0 * in);
        xd = ws->drop;
    }
    OPS->gemm(BE, 0, 1, N, r, in, 1.0f, xd, in, lo->A, in, 0.0f, xa, r);
    OPS->gemm(BE, 0, 1, N, out, r, ad->scaling, xa, r, lo->B, r, 1.0f, y, out);
}

/* dx (N,in) = (accumulate ? dx : 0) + dy W + s (dy B) A ;  dB += s dy^T xa ; dA += s (dy B)^T dropout(x)
 * dr (N,r): scratch for dy B (ws->dr, or an expert's rows of it: experts run side by side) */
static void linear_backward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                            const lt_dropout_state *drop, uint64_t drop_stream, float *dx, int accumulate,
                            const float *dy, const float *x, const lt_weight *W, const float *xa, float *dr, int N,
                            int in, int out) {
    frozen_backward(m, ws, W, dx, dy, N, in, out, accumulate);
    if (!lo) return;
    const int r = ad->p.rank;
    const float s = ad->scaling;
    OPS->gemm(BE, 0, 0, N, r, out, 1.0f, dy, out, lo->B, r, 0.0f, dr, r); /* dr = dy B */
    OPS->gemm(BE, 1, 0, out, r, N, s, dy, out, xa, r, 1.0f, lo->dB, r);   /* dB        */
    if (drop && drop->p > 0) {
        /* the path is x -> dropout -> A: dx gets the same mask and 1/(1-p) applied to s dr A */
        const uint64_t at = drop_stream + (uint64_t)drop->tok0 * in; /* the forward's counters */
        OPS->gemm(BE, 0, 0, N, in, r, s, dr, r, lo->A, in, 0.0f, ws->drop, in);
        OPS->dropout(BE, ws->drop, ws->drop, (size_t)N * in, drop->p, drop->seed, at);
        OPS->axpy(BE, (size_t)N * in, 1.0f, ws->drop, dx);
        OPS->dropout(BE, ws->drop, x, (size_t)N * in, drop->p, drop->seed, at);  /* recompute */
        OPS->gemm(BE, 1, 0, r, in, N, s, dr, r, ws->drop, in, 1.0f, lo->dA, in); /* dA        */
    } else {
        OPS->gemm(BE, 0, 0, N, in, r, s, dr, r, lo->A, in, 1.0f, dx, in); /* dx += s dr A */
        OPS->gemm(BE, 1, 0, r, in, N, s, dr, r, x, in, 1.0f, lo->dA, in); /* dA        */
    }
    if (lo->B0) { /* PiSSA / OLoRA: dx -= s (dy B0) A0 (the frozen part of the residual base) */
        OPS->gemm(BE, 0, 0, N, r, out, 1.0f, dy, out, lo->B0, r, 0.0f, dr, r);
        OPS->gemm(BE, 0, 0, N, in, r, -s, dr, r, lo->A0, in, 1.0f, dx, in);
    }
}

/* ---- DoRA on top of a LoRA projection (PEFT's DoraLinearLayer, no dropout) ----------------------------- */

/* g = m / ||W + s B A||_row and inv_n for one projection; the norm is a constant for autograd
 * (PEFT detaches it). W + s B A is materialised in the adapter's scratch. */
static void dora_prepare_lo(lt_model *m, const lt_adapter *ad, const lt_lora *lo, const lt_weight *W, int in, int out) {
    const int r = ad->p.rank;
    if (W->format == LT_WEIGHT_QUANT) OPS->dequantize_rows(BE, ad->dora_w, &W->q, 0, out); /* QDoRA */
    else OPS->copy(BE, ad->dora_w, W->f32, (size_t)out * in * sizeof(float));
    OPS->gemm(BE, 0, 0, out, in, r, ad->scaling, lo->B, r, lo->A, in, 1.0f, ad->dora_w, in);
    OPS->dora_norm(BE, lo->dora_g, lo->dora_inv_n, lo->mag, ad->dora_w, out, in);
}

void lt_dora_prepare(lt_model *m, const lt_adapter *ad, int layer, lt_proj p) {
    const lt_lora *lo = ad ? lt_adapter_lora(ad, layer, p) : NULL;
    if (!lo || !lo->mag) return;
    int in, out;
    lt_proj_dims(&m->cfg, p, &in, &out);
    dora_prepare_lo(m, ad, lo, &m->layers[layer].w[p], in, out);
}

/* y = g * (x W^T + s (x A^T) B^T): lt_linear_forward, then the DoRA column scale. g is computed here
 * from the current A, B, m unless dora_ready (generation: the caller ran lt_dora_prepare once). */
static void lora_linear_forward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                                const lt_dropout_state *drop, uint64_t drop_stream, float *y, const float *x,
                                const lt_weight *W, float *xa, int N, int in, int out, int dora_ready) {
    lt_linear_forward(m, ws, ad, lo, drop, drop_stream, y, x, W, xa, N, in, out);
    if (lo && lo->mag) {
        if (!dora_ready) dora_prepare_lo(m, ad, lo, W, in, out);
        OPS->mul_cols(BE, y, lo->dora_g, N, out);
    }
}

/* DoRA backward: dm += inv_n * colsum(dy * y'), y' = x W^T + s (x A^T) B^T recomputed into ws->drop
 * (free: DoRA runs without dropout); then the LoRA backward of g * dy. */
static void lora_linear_backward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_lora *lo,
                                 const lt_dropout_state *drop, uint64_t drop_stream, float *dx, int accumulate,
                                 const float *dy, const float *x, const lt_weight *W, const float *xa, int N, int in,
                                 int out) {
    if (!lo || !lo->mag) {
        linear_backward(m, ws, ad, lo, drop, drop_stream, dx, accumulate, dy, x, W, xa, ws->dr, N, in, out);
        return;
    }
    lt_linear_forward(m, ws, ad, lo, NULL, 0, ws->drop, x, W, (float *)(uintptr_t)xa, N, in, out); /* xa: same bits */
    OPS->col_dot(BE, lo->dmag, dy, ws->drop, lo->dora_inv_n, N, out);
    OPS->copy(BE, ws->drop, dy, (size_t)N * out * sizeof(float));
    OPS->mul_cols(BE, ws->drop, lo->dora_g, N, out);
    linear_backward(m, ws, ad, lo, drop, drop_stream, dx, accumulate, ws->drop, x, W, xa, ws->dr, N, in, out);
}

/* ---- one layer ------------------------------------------------------------------------------------ *
 * A layer is two sublayers, each a function pair (forward, backward) below: the attention and the MLP.
 * Every family is a set of knobs inside them (formats/config.c); another kind of sublayer (a mixture
 * of experts in place of the MLP) is another pair called from layer_forward / layer_backward. Training,
 * evaluation, the objectives and generation all run this code: only attend() looks at the KV cache. */

/* What every step of layer l's pass reads. */
typedef struct layer_pass {
    lt_model *m;
    lt_workspace *ws;
    const lt_adapter *ad;
    const lt_dropout_state *drop;
    const lt_kv_cache *kv; /* NULL: no cache (training, evaluation) */
    int l, N;              /* the layer; the staged tokens B * T */
    const lt_layer *W;     /* the weights the pass reads (lt_view_layer)                   */
    const lt_layer *G;     /* full fine-tuning: their gradients (NULL: the weights are frozen) */
    lt_lora *lo[P_COUNT];  /* each projection's LoRA (NULL: none)                          */
    lt_lora *elo[2];       /* MoE layer: the experts' LoRA on gate|up and on down (NULL: none) */
    const float *router;   /* MoE layer: the router (E,H) the pass reads (lt_view_router)  */
    float *d_router;       /* its gradient (NULL: frozen)                                  */
    const float *router_b; /* gpt-oss: the router's bias (E) (NULL: none)                  */
    float *d_router_b;     /* its gradient (NULL: frozen)                                  */
} layer_pass;

static layer_pass layer_pass_of(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_dropout_state *drop,
                                const lt_kv_cache *kv, int l) {
    layer_pass P = {m,   ws,  ad,   drop, kv,   l,   ws->B * ws->T, lt_view_layer(m, ad, l), lt_view_layer_grads(ad, l),
                    {0}, {0}, NULL, NULL, NULL, NULL};
    for (int p = 0; p < P_COUNT; p++) P.lo[p] = ad ? lt_adapter_lora(ad, l, (lt_proj)p) : NULL;
    for (int k = 0; k < 2; k++) P.elo[k] = ad ? lt_adapter_elora(ad, l, k) : NULL;
    P.router = lt_view_router(m, ad, l, &P.d_router);
    P.router_b = lt_view_router_bias(m, ad, l, &P.d_router_b);
    return P;
}

static uint64_t stream_id(const lt_model_config *c, int layer, lt_proj p) {
    /* distinct, non-overlapping counter ranges per (layer, projection); the projections of a fused
     * module (Phi-3 qkv_proj, gate_up_proj) read one input through one dropout, so they share one */
    if (c->fused_proj) p = p <= P_V ? P_Q : p == P_UP ? P_GATE : p;
    return ((uint64_t)(layer * P_COUNT + p) << 40);
}

/* y (N,out) = projection p of x (N,in): the frozen weight, its LoRA / DoRA, its bias (frozen);
 * xa (N,r) keeps dropout(x) A^T for the backward. */
static void proj_forward(const layer_pass *P, lt_proj p, float *y, const float *x, float *xa) {
    lt_model *m = P->m;
    int in, out;
    lt_proj_dims(&m->cfg, p, &in, &out);
    lora_linear_forward(m, P->ws, P->ad, P->lo[p], P->drop, stream_id(&m->cfg, P->l, p), y, x, &P->W->w[p], xa, P->N,
                        in, out, P->kv && P->kv->dora_ready);
    if (P->W->bias[p]) OPS->bias_add(BE, y, P->W->bias[p], P->N, out);
}

/* dx (N,in) = (accumulate ? dx : 0) + the gradient through projection p of dy (N,out); x, xa as in the
 * forward. The LoRA / DoRA grads accumulate; full fine-tuning: dW (out,in) += dy^T x (one GEMM over all
 * N tokens), db (out) += colsum(dy). */
static void proj_backward(const layer_pass *P, lt_proj p, float *dx, int accumulate, const float *dy, const float *x,
                          const float *xa) {
    lt_model *m = P->m;
    int in, out;
    lt_proj_dims(&m->cfg, p, &in, &out);
    lora_linear_backward(m, P->ws, P->ad, P->lo[p], P->drop, stream_id(&m->cfg, P->l, p), dx, accumulate, dy, x,
                         &P->W->w[p], xa, P->N, in, out);
    if (!P->G) return;
    OPS->gemm(BE, 1, 0, out, in, P->N, 1.0f, dy, out, x, in, 1.0f, P->G->w[p].f32, in);
    if (P->G->bias[p]) OPS->bias_backward(BE, P->G->bias[p], dy, P->N, out);
}

/* The kv_start array of layer l: windowed for the sliding-window layers of Mistral / Qwen2 / Gemma 2. */
static const int32_t *layer_kv_start(const lt_model *m, const lt_workspace *ws, int l) {
    return m->cfg.sliding_window > 0 && m->cfg.layer_sliding[l] ? ws->kv_start_swa : ws->kv_start;
}

/* att (N,NH*HD) = attention of layer l over q (N,NH*HD), k, v (N,NKV*HD) after RoPE: the one step in
 * which a pass over whole rows (training, evaluation; prefill, which also fills the cache) and a decode
 * against the KV cache differ (decoder.h, lt_kv_cache). Gemma 2 soft-caps the scores; gpt-oss adds a
 * sink logit per head to each softmax denominator (attention_sink_forward on the finished pass). */
static void attend(const layer_pass *P, lt_layer_acts *A) {
    lt_model *m = P->m;
    const lt_model_config *c = &m->cfg;
    const lt_workspace *ws = P->ws;
    const lt_kv_cache *kv = P->kv;
    const int NH = (int)c->num_attention_heads, NKV = (int)c->num_key_value_heads, HD = (int)c->head_dim;
    const int KD = NKV * HD;
    const float scale = lt_config_attn_scale(c), cap = (float)c->attn_logit_softcapping;
    const int32_t *kv_start = layer_kv_start(m, ws, P->l);
    if (!kv || kv->mode == LT_KV_FILL) {
        if (cap > 0)
            OPS->attention_softcap_forward(BE, A->att, A->lse, A->q, A->k, A->v, kv_start, ws->B, ws->T, NH, NKV, HD,
                                           scale, cap);
        else OPS->attention_forward(BE, A->att, A->lse, A->q, A->k, A->v, kv_start, ws->B, ws->T, NH, NKV, HD, scale);
        if (P->W->sinks) OPS->attention_sink_forward(BE, A->att, A->lse, P->W->sinks, ws->B, ws->T, NH, HD);
    }
    if (!kv) return;
    /* every staged token's k and v to its slot; a decode then attends over the row's cached keys */
    const size_t layer_off = (size_t)P->l * kv->B * kv->S_cap * KD;
    float *kc = kv->k + layer_off, *vc = kv->v + layer_off;
    OPS->scatter_rows(BE, kc, kv->slot, A->k, P->N, KD);
    OPS->scatter_rows(BE, vc, kv->slot, A->v, P->N, KD);
    if (kv->mode != LT_KV_DECODE) return;
    if (cap > 0)
        OPS->attention_softcap_decode(BE, A->att, A->q, kc, vc, kv_start, kv->len, ws->B, kv->S_cap, NH, NKV, HD, scale,
                                      cap);
    else if (P->W->sinks)
        OPS->attention_sink_decode(BE, A->att, A->q, kc, vc, kv_start, kv->len, P->W->sinks, ws->B, kv->S_cap, NH, NKV,
                                   HD, scale);
    else OPS->attention_decode(BE, A->att, A->q, kc, vc, kv_start, kv->len, ws->B, kv->S_cap, NH, NKV, HD, scale);
}

/* The rows a q / k norm normalises: per head (Qwen3, Gemma 3: (N*heads, HD)) or over the whole
 * projection (OLMo 2: (N, heads*HD)). */
static void qk_norm_rows(const lt_model_config *c, int N, int heads, int *rows, int *width) {
    const int full = c->qk_norm == LT_QK_NORM_FULL;
    *rows = full ? N : N * heads;
    *width = full ? heads * (int)c->head_dim : (int)c->head_dim;
}

/* The input of a sublayer: its pre-norm of x into ln, or x itself (OLMo 2 has no pre-norms). */
static const float *pre_norm_forward(lt_model *m, float *ln, float *rstd, const float *x, const float *w, int N) {
    const lt_model_config *c = &m->cfg;
    if (c->no_pre_norms) return x;
    OPS->rmsnorm_forward(BE, ln, rstd, x, w, N, (int)c->hidden_size, (float)c->rms_norm_eps);
    return ln;
}

/* ws->dres += the gradient of the sublayer input ln = pre_norm(x) in ws->dln (dweight into dw). */
static void pre_norm_backward(lt_model *m, lt_workspace *ws, float *dw, const float *x, const float *w,
                              const float *rstd, int N) {
    const int H = (int)m->cfg.hidden_size;
    if (m->cfg.no_pre_norms) OPS->axpy(BE, (size_t)N * H, 1.0f, ws->dln, ws->dres);
    else OPS->rmsnorm_backward(BE, ws->dres, dw, ws->dln, x, w, rstd, N, H);
}

/* out (N,H) = residual + residual_multiplier * out: the sublayer's output joins the stream (Granite
 * scales it) */
static void residual_add(lt_model *m, float *out, const float *residual, int N) {
    const size_t n = (size_t)N * m->cfg.hidden_size;
    if (m->cfg.residual_multiplier != 1.0) OPS->scale(BE, n, (float)m->cfg.residual_multiplier, out);
    OPS->axpy(BE, n, 1.0f, residual, out);
}

/* d loss / d (sublayer output) from ws->dres = d loss / d (stream after it): dres itself, or Granite's
 * residual_multiplier * dres in ws->dsand */
static const float *residual_backward(lt_model *m, lt_workspace *ws, int N) {
    if (m->cfg.residual_multiplier == 1.0) return ws->dres;
    const size_t n = (size_t)N * m->cfg.hidden_size;
    OPS->copy(BE, ws->dsand, ws->dres, n * sizeof(float));
    OPS->scale(BE, n, (float)m->cfg.residual_multiplier, ws->dsand);
    return ws->dsand;
}

/* attention sublayer: x_mid = x + o(attend(rope(q(ln1)), rope(k(ln1)), v(ln1))), ln1 = attn_norm(x).
 * Qwen3 / Gemma 3 normalise q and k per head before RoPE, OLMo 2 over the whole projection; Gemma 2 / 3
 * and OLMo 2 normalise o's output (a sandwich norm; OLMo 2 has no attn_norm); Gemma 3's sliding layers
 * rotate with their own RoPE table, SmolLM3's NoPE layers not at all. */
static void attention_forward_block(const layer_pass *P, const float *x, lt_layer_acts *A) {
    lt_model *m = P->m;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W;
    const int N = P->N, H = (int)c->hidden_size;
    const int NH = (int)c->num_attention_heads, NKV = (int)c->num_key_value_heads, HD = (int)c->head_dim;
    const float eps = (float)c->rms_norm_eps;
    /* q / k norm: the q and k projections land in q_pre / k_pre, normalised into q, k */
    float *qp = c->qk_norm ? A->q_pre : A->q, *kp = c->qk_norm ? A->k_pre : A->k;
    const float *ln1 = pre_norm_forward(m, A->ln1, A->rstd1, x, W->attn_norm, N);
    proj_forward(P, P_Q, qp, ln1, A->xa[P_Q]);
    proj_forward(P, P_K, kp, ln1, A->xa[P_K]);
    proj_forward(P, P_V, A->v, ln1, A->xa[P_V]);
    if (c->qk_norm) {
        int rows, width;
        qk_norm_rows(c, N, NH, &rows, &width);
        OPS->rmsnorm_forward(BE, A->q, A->rstd_q, qp, W->q_norm, rows, width, eps);
        qk_norm_rows(c, N, NKV, &rows, &width);
        OPS->rmsnorm_forward(BE, A->k, A->rstd_k, kp, W->k_norm, rows, width, eps);
    }
    const float *inv_freq = lt_layer_inv_freq(m, P->l, P->ws->inv_freq);
    if (inv_freq) {
        OPS->rope_forward(BE, A->q, P->ws->pos, inv_freq, N, NH, HD, m->rot_dim);
        OPS->rope_forward(BE, A->k, P->ws->pos, inv_freq, N, NKV, HD, m->rot_dim);
    }
    if (inv_freq && m->rope_mscale != 1.0f) { /* longrope: cos and sin times the attention factor */
        OPS->rope_scale(BE, A->q, N, NH, HD, m->rot_dim, m->rope_mscale);
        OPS->rope_scale(BE, A->k, N, NKV, HD, m->rot_dim, m->rope_mscale);
    }
    attend(P, A);
    float *o_out = c->sandwich_norms ? A->o_raw : A->x_mid;
    proj_forward(P, P_O, o_out, A->att, A->xa[P_O]);
    if (c->sandwich_norms) OPS->rmsnorm_forward(BE, A->x_mid, A->rstd_pa, A->o_raw, W->post_attn_norm, N, H, eps);
    residual_add(m, A->x_mid, x, N);
}

/* MLP sublayer: x_out = x_mid + down(act(gate(ln2)) * up(ln2)), ln2 = mlp_norm(x_mid); act = silu
 * (SwiGLU) or gelu-tanh (GeGLU, Gemma); Gemma 2 normalises down's output (a sandwich norm). */
static void mlp_forward_block(const layer_pass *P, lt_layer_acts *A, float *x_out) {
    lt_model *m = P->m;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W;
    const int N = P->N, H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const float eps = (float)c->rms_norm_eps;
    const float *ln2 = pre_norm_forward(m, A->ln2, A->rstd2, A->x_mid, W->mlp_norm, N);
    proj_forward(P, P_GATE, A->gate, ln2, A->xa[P_GATE]);
    proj_forward(P, P_UP, A->up, ln2, A->xa[P_UP]);
    if (c->activation == LT_ACT_GELU_TANH) OPS->geglu_forward(BE, A->act, A->gate, A->up, (size_t)N * I);
    else OPS->swiglu_forward(BE, A->act, A->gate, A->up, (size_t)N * I);
    float *d_out = c->sandwich_norms ? A->d_raw : x_out;
    proj_forward(P, P_DOWN, d_out, A->act, A->xa[P_DOWN]);
    if (c->sandwich_norms) OPS->rmsnorm_forward(BE, x_out, A->rstd_pf, A->d_raw, W->post_ff_norm, N, H, eps);
    residual_add(m, x_out, A->x_mid, N);
}

/* MLP backward: ws->dres holds d loss / d x_out on entry, d loss / d x_mid on return. */
static void mlp_backward_block(const layer_pass *P, lt_layer_acts *A) {
    lt_model *m = P->m;
    lt_workspace *ws = P->ws;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W, *G = P->G;
    const int N = P->N, H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const float *d_down = residual_backward(m, ws, N);
    if (c->sandwich_norms) { /* x_out = x_mid + post_ff_norm(down(...)) (no residual_multiplier here) */
        OPS->zero(BE, ws->dsand, (size_t)N * H * sizeof(float));
        OPS->rmsnorm_backward(BE, ws->dsand, G ? G->post_ff_norm : NULL, ws->dres, A->d_raw, W->post_ff_norm,
                              A->rstd_pf, N, H);
        d_down = ws->dsand;
    }
    const float *ln2 = c->no_pre_norms ? A->x_mid : A->ln2;
    proj_backward(P, P_DOWN, ws->dI1, 0, d_down, A->act, A->xa[P_DOWN]);
    if (c->activation == LT_ACT_GELU_TANH)
        OPS->geglu_backward(BE, ws->dI2, ws->dI3, ws->dI1, A->gate, A->up, (size_t)N * I);
    else OPS->swiglu_backward(BE, ws->dI2, ws->dI3, ws->dI1, A->gate, A->up, (size_t)N * I);
    proj_backward(P, P_GATE, ws->dln, 0, ws->dI2, ln2, A->xa[P_GATE]);
    proj_backward(P, P_UP, ws->dln, 1, ws->dI3, ln2, A->xa[P_UP]);
    pre_norm_backward(m, ws, G ? G->mlp_norm : NULL, A->x_mid, W->mlp_norm, A->rstd2, N);
}

/* ---- mixture-of-experts sublayer (Qwen3-MoE; docs/spec/moe.md) --------------------------------------- *
 * x_out = x_mid + sum over the K experts e chosen for the token of w_e * down_e(silu(gate_e(ln2)) * up_e(ln2)),
 * ln2 = mlp_norm(x_mid), z = ln2 W_router^T (N,E), p = softmax(z), the K largest p (w = p, or p / their sum
 * with norm_topk_prob). Routing runs on the host (one (N,E) download per layer); the N*K (token, expert)
 * pairs are sorted by expert, so each expert is one GEMM per projection over its rows (gathered with
 * embedding_forward, an expert with no token skipped), the experts side by side in one run_groups per
 * pass (moe_experts), and the weighted rows are summed back with embedding_backward's
 * deterministic scatter-add. No loop over tokens on the device. */

/* Host routing of N tokens from their router logits z (N,E) into R (lt_moe_route). Ties between equal
 * probabilities go to the lower expert. The pairs of one expert keep token order. */
static void moe_route(const lt_model_config *c, lt_moe_route *R, const float *z, int N) {
    const int E = (int)c->num_experts, K = (int)c->num_experts_per_tok;
    for (int t = 0; t < N; t++) {
        float *p = R->prob + (size_t)t * E;
        const float *zt = z + (size_t)t * E;
        float mx = zt[0], sum = 0.0f;
        for (int e = 1; e < E; e++) mx = zt[e] > mx ? zt[e] : mx;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(zt[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= sum;
        int32_t *sel = R->sel + (size_t)t * K;
        for (int k = 0; k < K; k++) { /* K is small: a selection by scans */
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k && !taken; j++) taken = sel[j] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            sel[k] = best;
        }
    }
    for (int e = 0; e <= E; e++) R->off[e] = 0;
    for (size_t i = 0; i < (size_t)N * K; i++) R->off[R->sel[i] + 1]++;
    for (int e = 0; e < E; e++) R->off[e + 1] += R->off[e];
    for (int t = 0; t < N; t++) {
        const int32_t *sel = R->sel + (size_t)t * K;
        const float *p = R->prob + (size_t)t * E;
        float s = 0.0f;
        for (int k = 0; k < K; k++) s += p[sel[k]];
        for (int k = 0; k < K; k++) {
            int32_t a = R->off[sel[k]]++; /* off[e] walks to off[e + 1]; shifted back below */
            R->tok[a] = t;
            R->w[a] = c->norm_topk_prob ? p[sel[k]] / s : p[sel[k]];
            R->pair[(size_t)t * K + k] = a;
        }
    }
    for (int e = E; e > 0; e--) R->off[e] = R->off[e - 1];
    R->off[0] = 0;
    for (int e = 0; e < E; e++) { /* insertion sort: E is small, and it keeps the ties in expert order */
        const int n = R->off[e + 1] - R->off[e];
        int i = e;
        for (; i > 0 && R->off[R->order[i - 1] + 1] - R->off[R->order[i - 1]] < n; i--) R->order[i] = R->order[i - 1];
        R->order[i] = e;
    }
}

/* Expert e's view of the layer's expert LoRA k (0: gate|up, part 0 gate / 1 up; 1: down); A == NULL: none. */
static lt_lora expert_lora(const layer_pass *P, int k, int e, int part) {
    lt_lora v = {0};
    const lt_lora *lo = P->elo[k];
    if (!lo) return v;
    const int r = P->ad->p.rank, MI = (int)P->m->cfg.moe_intermediate_size;
    int in, out;
    lt_elora_dims(&P->m->cfg, k, &in, &out);
    const size_t a = (size_t)e * r * in, b = (size_t)e * out * r + (size_t)part * MI * r;
    v.A = lo->A + a;
    v.dA = lo->dA + a;
    v.B = lo->B + b;
    v.dB = lo->dB + b;
    return v;
}

/* y (n,out) = rows x (n,in) through expert e's projection p, its LoRA and its bias (gpt-oss; trained by a full
 * fine-tuning: expert_backward); xa (n,r). gate and up share their LoRA A: gate's call leaves xa = x A^T, up's only
 * adds its own s xa B_up^T (x A^T once, not twice). */
static void expert_forward(const layer_pass *P, int e, lt_proj p, float *y, const float *x, float *xa, int n) {
    lt_model *m = P->m;
    const int H = (int)m->cfg.hidden_size, MI = (int)m->cfg.moe_intermediate_size;
    const int in = p == P_DOWN ? MI : H, out = p == P_DOWN ? H : MI;
    lt_lora lo = expert_lora(P, p == P_DOWN, e, p == P_UP);
    const lt_weight *W = lt_expert_w(P->W, e, p);
    if (p == P_UP && lo.A) {
        const int r = P->ad->p.rank;
        frozen_forward(m, P->ws, W, y, x, n, in, out);
        OPS->gemm(BE, 0, 1, n, out, r, P->ad->scaling, xa, r, lo.B, r, 1.0f, y, out);
    } else lt_linear_forward(m, P->ws, P->ad, lo.A ? &lo : NULL, NULL, 0, y, x, W, xa, n, in, out);
    const float *b = lt_expert_bias(&m->cfg, P->W, e, p);
    if (b) OPS->bias_add(BE, y, b, n, out);
}

/* act (M,MI) = the experts' gated activation: SwiGLU, or gpt-oss's clamped SwiGLU (swiglu_limit > 0) */
static void expert_act_forward(lt_model *m, float *act, const float *gate, const float *up, size_t n) {
    const lt_model_config *c = &m->cfg;
    if (c->swiglu_limit > 0)
        OPS->swiglu_clamp_forward(BE, act, gate, up, n, (float)c->swiglu_alpha, (float)c->swiglu_limit);
    else OPS->swiglu_forward(BE, act, gate, up, n);
}

static void expert_act_backward(lt_model *m, float *dgate, float *dup, const float *dact, const float *gate,
                                const float *up, size_t n) {
    const lt_model_config *c = &m->cfg;
    if (c->swiglu_limit > 0)
        OPS->swiglu_clamp_backward(BE, dgate, dup, dact, gate, up, n, (float)c->swiglu_alpha, (float)c->swiglu_limit);
    else OPS->swiglu_backward(BE, dgate, dup, dact, gate, up, n);
}

/* dx (n,in) (= or += by accumulate) through expert e's projection p; its LoRA grads accumulate; dr (n,r)
 * scratch of the expert's own rows; full fine-tuning: dW_e (out,in) += dy^T x over the expert's rows and,
 * gpt-oss, its bias's db_e (out) += colsum(dy) (expert e's own slice: experts run side by side). */
static void expert_backward(const layer_pass *P, int e, lt_proj p, float *dx, int accumulate, const float *dy,
                            const float *x, const float *xa, float *dr, int n) {
    const int H = (int)P->m->cfg.hidden_size, MI = (int)P->m->cfg.moe_intermediate_size;
    const int in = p == P_DOWN ? MI : H, out = p == P_DOWN ? H : MI;
    lt_model *m = P->m;
    lt_lora lo = expert_lora(P, p == P_DOWN, e, p == P_UP);
    linear_backward(P->m, P->ws, P->ad, lo.A ? &lo : NULL, NULL, 0, dx, accumulate, dy, x, lt_expert_w(P->W, e, p), xa,
                    dr, n, in, out);
    if (!P->G) return;
    OPS->gemm(BE, 1, 0, out, in, n, 1.0f, dy, out, x, in, 1.0f, lt_expert_w(P->G, e, p)->f32, in);
    float *db = (float *)lt_expert_bias(&m->cfg, P->G, e, p); /* the gradient fields: writable adapter grads */
    if (db) OPS->bias_backward(BE, db, dy, n, out);
}

/* dx (n,H) = the d input of expert e's gate and up from dgate, dup (n,MI); x (n,H) its rows, xa (n,r) their
 * x A^T, dr (n,r) scratch. Gate and up share their LoRA A (PEFT's gate_up_proj), so their LoRA paths meet
 * in dr = dgate B_gate + dup B_up: dx += s dr A and dA += s dr^T x once, not once per projection (two
 * skinny GEMMs fewer per expert). dB_gate, dB_up, dA accumulate; full fine-tuning: dW += dy^T x each and,
 * gpt-oss, db += colsum(dy) each. */
static void expert_gate_up_backward(const layer_pass *P, int e, float *dx, const float *dgate, const float *dup,
                                    const float *x, const float *xa, float *dr, int n) {
    lt_model *m = P->m;
    const int H = (int)m->cfg.hidden_size, MI = (int)m->cfg.moe_intermediate_size;
    const lt_proj proj[2] = {P_GATE, P_UP};
    const float *dy[2] = {dgate, dup};
    for (int k = 0; k < 2; k++) frozen_backward(m, P->ws, lt_expert_w(P->W, e, proj[k]), dx, dy[k], n, H, MI, k);
    if (P->elo[0]) {
        const int r = P->ad->p.rank;
        const float s = P->ad->scaling;
        for (int k = 0; k < 2; k++) {
            const lt_lora lo = expert_lora(P, 0, e, k);
            OPS->gemm(BE, 0, 0, n, r, MI, 1.0f, dy[k], MI, lo.B, r, k ? 1.0f : 0.0f, dr, r); /* dr (+)= dy B */
            OPS->gemm(BE, 1, 0, MI, r, n, s, dy[k], MI, xa, r, 1.0f, lo.dB, r);              /* dB          */
        }
        const lt_lora lo = expert_lora(P, 0, e, 0);                   /* A, dA: gate's and up's */
        OPS->gemm(BE, 0, 0, n, H, r, s, dr, r, lo.A, H, 1.0f, dx, H); /* dx += s dr A */
        OPS->gemm(BE, 1, 0, r, H, n, s, dr, r, x, H, 1.0f, lo.dA, H); /* dA          */
    }
    if (P->G)
        for (int k = 0; k < 2; k++) {
            OPS->gemm(BE, 1, 0, MI, H, n, 1.0f, dy[k], MI, x, H, 1.0f, lt_expert_w(P->G, e, proj[k])->f32, H);
            float *db = (float *)lt_expert_bias(&m->cfg, P->G, e, proj[k]); /* gpt-oss: its own slice */
            if (db) OPS->bias_backward(BE, db, dy[k], n, MI);
        }
}

/* The experts of one MoE pass as groups of the backend's run_groups: expert e owns the pair rows
 * off[e] .. off[e+1] of every pair buffer (e_x, e_dx, gate, up, act, e_y, dI*, xa, ws->dr, dw) and its own
 * slices of the LoRA grads, so the experts run side by side, each op on one thread. An expert's whole pass
 * (gather, gate|up, activation, down, weighting; in the backward also its routing weights' row dots) is one
 * group: one parallel region per MoE pass instead of one per projection, elementwise op or host loop
 * (moe-s: ~6,000 GEMMs of ~128 rows per step), and its rows stay in cache from one op to the next. */
typedef struct moe_experts {
    const layer_pass *P;
    lt_layer_acts *A;
    float *host; /* backward, device backends: (M,2H) host copies of the rows the row dots read */
    float *dw;   /* backward: host (M) d loss / d w of each pair                              */
} moe_experts;

/* What group g works on: expert e (the g-th largest: route.order), its pair rows o .. o+n, the widths of
 * the pair buffers. */
typedef struct expert_rows {
    const layer_pass *P;
    lt_layer_acts *A;
    lt_workspace *ws;
    int e, o, n, H, MI, r;
} expert_rows;

static expert_rows expert_rows_of(const void *ctx, int g) {
    const moe_experts *X = ctx;
    const lt_model_config *c = &X->P->m->cfg;
    const int *off = X->A->route.off, e = X->A->route.order[g];
    return (expert_rows){X->P,
                         X->A,
                         X->P->ws,
                         e,
                         off[e],
                         off[e + 1] - off[e],
                         (int)c->hidden_size,
                         (int)c->moe_intermediate_size,
                         X->P->ad ? X->P->ad->p.rank : 0};
}

/* row o of a (rows, w) buffer; NULL stays NULL (no LoRA: no xa) */
static float *row_of(float *buf, int o, int w) { return buf ? buf + (size_t)o * w : NULL; }

/* 1 if the experts of a pass may run side by side: nothing they do touches scratch shared by all of
 * them. Not so where a weight of the experts is dequantized through the workspace's one tile (NF4 / FP4 /
 * int8 computed in f32: weight.h lt_weight_uses_tile); other per-pass scratch (ws->drop, the adapter's
 * DoRA matrix) would count here too. */
static int experts_side_by_side(const layer_pass *P) {
    for (int i = 0; i < 3 * (int)P->m->cfg.num_experts; i++)
        if (lt_weight_uses_tile(P->m, &P->W->experts[i])) return 0;
    return 1;
}

/* fn(g) for every expert, the largest first (expert_rows_of): in one run_groups, so that no thread is left
 * with a large expert at the end; else one after the other (each op then on every thread). */
static void run_experts(const moe_experts *X, void (*fn)(void *ctx, int g)) {
    lt_model *m = X->P->m;
    if (experts_side_by_side(X->P)) {
        OPS->run_groups(BE, (int)m->cfg.num_experts, fn, (void *)X);
        return;
    }
    for (int g = 0; g < m->cfg.num_experts; g++) fn((void *)X, g);
}

/* Expert e's forward over its pair rows: e_x = its pairs' inputs (rows of ln2), gate, up, act, e_y = the
 * expert's output y; then e_x = w y (its inputs are not needed any more), what the scatter-add sums. */
static void experts_forward(void *ctx, int g) {
    const expert_rows X = expert_rows_of(ctx, g);
    const int e = X.e;
    if (X.n == 0) return;
    lt_model *m = X.P->m;
    float *xe = row_of(X.ws->e_x, X.o, X.H), *y = row_of(X.A->e_y, X.o, X.H);
    float *gate = row_of(X.A->gate, X.o, X.MI), *up = row_of(X.A->up, X.o, X.MI), *act = row_of(X.A->act, X.o, X.MI);
    float *xa = row_of(X.A->xa[P_GATE], X.o, X.r);
    OPS->embedding_forward(BE, xe, X.A->e_tok + X.o, X.A->ln2, X.n, X.H);
    expert_forward(X.P, e, P_GATE, gate, xe, xa, X.n);
    expert_forward(X.P, e, P_UP, up, xe, xa, X.n); /* after gate: its xa */
    expert_act_forward(m, act, gate, up, (size_t)X.n * X.MI);
    expert_forward(X.P, e, P_DOWN, y, act, row_of(X.A->xa[P_DOWN], X.o, X.r), X.n);
    OPS->copy(BE, xe, y, (size_t)X.n * X.H * sizeof(float));
    OPS->row_scale(BE, xe, X.A->e_w + X.o, X.n, X.H);
}

/* Expert e's backward over its pair rows: e_dx = d loss / d (w y) of its pairs (rows of ws->dres), the
 * routing weights' gradient dw_a = dy_a . y_a (host, in double, in order; a device backend's rows are
 * downloaded first), d y = w dy, back through down (dI1), the activation (dI2, dI3) and gate|up (the
 * inputs gathered again into e_x) into e_dx = the pairs' d input. */
static void experts_backward(void *ctx, int g) {
    const moe_experts *pass = ctx;
    const expert_rows X = expert_rows_of(ctx, g);
    const int e = X.e;
    if (X.n == 0) return;
    lt_model *m = X.P->m;
    float *xe = row_of(X.ws->e_x, X.o, X.H), *dx = row_of(X.ws->e_dx, X.o, X.H), *dr = row_of(X.ws->dr, X.o, X.r);
    float *dI1 = row_of(X.ws->dI1, X.o, X.MI), *dI2 = row_of(X.ws->dI2, X.o, X.MI), *dI3 = row_of(X.ws->dI3, X.o, X.MI);
    const float *y = row_of(X.A->e_y, X.o, X.H), *xa = row_of(X.A->xa[P_GATE], X.o, X.r);
    OPS->embedding_forward(BE, dx, X.A->e_tok + X.o, X.ws->dres, X.n, X.H);
    const float *hdy = dx, *hy = y;
    if (!OPS->host_memory) {
        float *h = pass->host + (size_t)X.o * 2 * X.H;
        OPS->download(BE, h, dx, (size_t)X.n * X.H * sizeof(float));
        OPS->download(BE, h + (size_t)X.n * X.H, y, (size_t)X.n * X.H * sizeof(float));
        hdy = h;
        hy = h + (size_t)X.n * X.H;
    }
    for (int i = 0; i < X.n; i++) {
        double d = 0;
        for (int h = 0; h < X.H; h++) d += (double)hdy[(size_t)i * X.H + h] * hy[(size_t)i * X.H + h];
        pass->dw[X.o + i] = (float)d;
    }
    OPS->row_scale(BE, dx, X.A->e_w + X.o, X.n, X.H); /* d y = w dy */
    expert_backward(X.P, e, P_DOWN, dI1, 0, dx, row_of(X.A->act, X.o, X.MI), row_of(X.A->xa[P_DOWN], X.o, X.r), dr,
                    X.n);
    expert_act_backward(m, dI2, dI3, dI1, row_of(X.A->gate, X.o, X.MI), row_of(X.A->up, X.o, X.MI), (size_t)X.n * X.MI);
    OPS->embedding_forward(BE, xe, X.A->e_tok + X.o, X.A->ln2, X.n, X.H); /* the pairs' inputs again */
    expert_gate_up_backward(X.P, e, dx, dI2, dI3, xe, xa, dr, X.n);       /* e_dx (free now): d input */
}

static void moe_forward_block(const layer_pass *P, lt_layer_acts *A, float *x_out) {
    lt_model *m = P->m;
    lt_workspace *ws = P->ws;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W;
    lt_moe_route *R = &A->route;
    const int N = P->N, H = (int)c->hidden_size, E = (int)c->num_experts;
    const int M = N * (int)c->num_experts_per_tok;
    OPS->rmsnorm_forward(BE, A->ln2, A->rstd2, A->x_mid, W->mlp_norm, N, H, (float)c->rms_norm_eps);
    OPS->gemm(BE, 0, 1, N, E, H, 1.0f, A->ln2, H, P->router, H, 0.0f, ws->r_logits, E);
    if (P->router_b) OPS->bias_add(BE, ws->r_logits, P->router_b, N, E); /* gpt-oss */
    OPS->download(BE, ws->h_moe, ws->r_logits, (size_t)N * E * sizeof(float));
    moe_route(c, R, ws->h_moe, N);
    OPS->upload(BE, A->e_tok, R->tok, (size_t)M * sizeof(int32_t));
    OPS->upload(BE, A->e_w, R->w, (size_t)M * sizeof(float));
    if (!ws->moe_recompute) /* the load-balancing loss's statistics (load_balancing_loss_func) */
        for (int t = 0; t < N; t++) {
            if (ws->aux_masked && !ws->aux_mask[t]) continue; /* padding: out of the attention mask */
            for (int k = 0; k < (int)c->num_experts_per_tok; k++)
                ws->aux_cnt[R->sel[(size_t)t * c->num_experts_per_tok + k]]++;
            for (int e = 0; e < E; e++) ws->aux_psum[e] += R->prob[(size_t)t * E + e];
            ws->aux_rows++;
        }
    const moe_experts X = {P, A, NULL, NULL};
    run_experts(&X, experts_forward); /* e_x = w y of each pair */
    OPS->copy(BE, x_out, A->x_mid, (size_t)N * H * sizeof(float));
    OPS->embedding_backward(BE, x_out, A->e_tok, ws->e_x, M, H); /* x_out[tok] += w y, pair by pair */
}

/* d loss / d z (N,E) of one layer into dz (host): the routing weights' gradient dw (M) back through the
 * renormalisation and the softmax, plus the load-balancing loss's ws->aux_weight * d aux / d p, where
 * aux = E * sum_e f_e P_e over every MoE layer's tokens (f_e: share of pairs, P_e: mean probability). */
static void moe_router_backward(const lt_model_config *c, const lt_workspace *ws, const lt_moe_route *R,
                                const float *dw, float *dz, int N) {
    const int E = (int)c->num_experts, K = (int)c->num_experts_per_tok;
    for (int t = 0; t < N; t++) {
        const float *p = R->prob + (size_t)t * E;
        const int32_t *sel = R->sel + (size_t)t * K, *pair = R->pair + (size_t)t * K;
        float *d = dz + (size_t)t * E; /* first d loss / d p */
        const int in_aux = ws->aux_weight != 0 && (!ws->aux_masked || ws->aux_mask[t]);
        for (int e = 0; e < E; e++)
            d[e] = in_aux ? (float)(ws->aux_weight * E * (ws->aux_cnt[e] / ws->aux_rows) / ws->aux_rows) : 0.0f;
        if (c->norm_topk_prob) { /* w_k = p_k / S: dp_k = (dw_k - sum_j dw_j w_j) / S */
            float S = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) S += p[sel[k]];
            for (int k = 0; k < K; k++) dot += dw[pair[k]] * p[sel[k]] / S;
            for (int k = 0; k < K; k++) d[sel[k]] += (dw[pair[k]] - dot) / S;
        } else {
            for (int k = 0; k < K; k++) d[sel[k]] += dw[pair[k]];
        }
        float s = 0.0f; /* softmax: dz = p * (dp - sum p dp) */
        for (int e = 0; e < E; e++) s += p[e] * d[e];
        for (int e = 0; e < E; e++) d[e] = p[e] * (d[e] - s);
    }
}

/* MoE backward: ws->dres holds d loss / d x_out on entry, d loss / d x_mid on return. */
static void moe_backward_block(const layer_pass *P, lt_layer_acts *A) {
    lt_model *m = P->m;
    lt_workspace *ws = P->ws;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W;
    const lt_moe_route *R = &A->route;
    const int N = P->N, H = (int)c->hidden_size, E = (int)c->num_experts;
    const int M = N * (int)c->num_experts_per_tok;
    /* host (workspace.c): dw (M), dz (N,E), and for a device backend its rows of d (w y) and y (M,2H) */
    float *dw = ws->h_moe, *dz = ws->h_moe + M;
    const moe_experts X = {P, A, dz + (size_t)N * E, dw};
    run_experts(&X, experts_backward); /* e_dx: the pairs' d input, dw */
    OPS->zero(BE, ws->dln, (size_t)N * H * sizeof(float));
    OPS->embedding_backward(BE, ws->dln, A->e_tok, ws->e_dx, M, H);
    /* the router: d z on the host, then d ln2 += d z W_router; a trained router: dW_router += d z^T ln2 */
    moe_router_backward(c, ws, R, dw, dz, N);
    OPS->upload(BE, ws->r_logits, dz, (size_t)N * E * sizeof(float));
    OPS->gemm(BE, 0, 0, N, H, E, 1.0f, ws->r_logits, E, P->router, H, 1.0f, ws->dln, H);
    if (P->d_router) OPS->gemm(BE, 1, 0, E, H, N, 1.0f, ws->r_logits, E, A->ln2, H, 1.0f, P->d_router, H);
    if (P->d_router_b) OPS->bias_backward(BE, P->d_router_b, ws->r_logits, N, E); /* z = ln2 W^T + b */
    OPS->rmsnorm_backward(BE, ws->dres, P->G ? P->G->mlp_norm : NULL, ws->dln, A->x_mid, W->mlp_norm, A->rstd2, N, H);
}

/* attention backward: ws->dres holds d loss / d x_mid on entry, d loss / d x on return. */
static void attention_backward_block(const layer_pass *P, const float *x, lt_layer_acts *A) {
    lt_model *m = P->m;
    lt_workspace *ws = P->ws;
    const lt_model_config *c = &m->cfg;
    const lt_layer *W = P->W, *G = P->G;
    const int B = ws->B, T = ws->T, N = P->N, H = (int)c->hidden_size;
    const int NH = (int)c->num_attention_heads, NKV = (int)c->num_key_value_heads, HD = (int)c->head_dim;
    const int QD = NH * HD, KD = NKV * HD;
    const float *d_o = residual_backward(m, ws, N);
    if (c->sandwich_norms) { /* x_mid = x + post_attn_norm(o(...)) (no residual_multiplier here) */
        OPS->zero(BE, ws->dsand, (size_t)N * H * sizeof(float));
        OPS->rmsnorm_backward(BE, ws->dsand, G ? G->post_attn_norm : NULL, ws->dres, A->o_raw, W->post_attn_norm,
                              A->rstd_pa, N, H);
        d_o = ws->dsand;
    }
    proj_backward(P, P_O, ws->datt, 0, d_o, A->att, A->xa[P_O]);
    const int32_t *kv_start = layer_kv_start(m, ws, P->l);
    if (c->attn_logit_softcapping > 0)
        OPS->attention_softcap_backward(BE, ws->dq, ws->dk, ws->dv, ws->datt, A->q, A->k, A->v, A->att, A->lse,
                                        kv_start, B, T, NH, NKV, HD, lt_config_attn_scale(c),
                                        (float)c->attn_logit_softcapping);
    else
        OPS->attention_backward(BE, ws->dq, ws->dk, ws->dv, ws->datt, A->q, A->k, A->v, A->att, A->lse, kv_start, B, T,
                                NH, NKV, HD, lt_config_attn_scale(c), ws->att_scratch);
    if (W->sinks) /* the sink's share: its own gradient (trained sinks) and the single-key queries' */
        OPS->attention_sink_backward(BE, G ? G->sinks : NULL, ws->dq, ws->dk, ws->datt, A->q, A->k, A->att, A->lse,
                                     W->sinks, kv_start, B, T, NH, NKV, HD, lt_config_attn_scale(c));
    const float *inv_freq = lt_layer_inv_freq(m, P->l, ws->inv_freq);
    if (inv_freq && m->rope_mscale != 1.0f) {
        OPS->rope_scale(BE, ws->dq, N, NH, HD, m->rot_dim, m->rope_mscale);
        OPS->rope_scale(BE, ws->dk, N, NKV, HD, m->rot_dim, m->rope_mscale);
    }
    if (inv_freq) {
        OPS->rope_backward(BE, ws->dq, ws->pos, inv_freq, N, NH, HD, m->rot_dim);
        OPS->rope_backward(BE, ws->dk, ws->pos, inv_freq, N, NKV, HD, m->rot_dim);
    }
    float *dqp = ws->dq, *dkp = ws->dk;
    if (c->qk_norm) { /* back through the q / k norms; datt is free again and holds d q_pre */
        dqp = ws->datt;
        dkp = ws->dk_pre;
        OPS->zero(BE, dqp, (size_t)N * QD * sizeof(float));
        OPS->zero(BE, dkp, (size_t)N * KD * sizeof(float));
        int rows, width;
        qk_norm_rows(c, N, NH, &rows, &width);
        OPS->rmsnorm_backward(BE, dqp, G ? G->q_norm : NULL, ws->dq, A->q_pre, W->q_norm, A->rstd_q, rows, width);
        qk_norm_rows(c, N, NKV, &rows, &width);
        OPS->rmsnorm_backward(BE, dkp, G ? G->k_norm : NULL, ws->dk, A->k_pre, W->k_norm, A->rstd_k, rows, width);
    }
    const float *ln1 = c->no_pre_norms ? x : A->ln1;
    proj_backward(P, P_Q, ws->dln, 0, dqp, ln1, A->xa[P_Q]);
    proj_backward(P, P_K, ws->dln, 1, dkp, ln1, A->xa[P_K]);
    proj_backward(P, P_V, ws->dln, 1, ws->dv, ln1, A->xa[P_V]);
    pre_norm_backward(m, ws, G ? G->attn_norm : NULL, x, W->attn_norm, A->rstd1, N);
}

/* x_out (N,H) = layer l of x (N,H); A receives the activations the backward needs. kv: how it attends. */
static void layer_forward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_dropout_state *drop,
                          const lt_kv_cache *kv, int l, const float *x, lt_layer_acts *A, float *x_out) {
    const layer_pass P = layer_pass_of(m, ws, ad, drop, kv, l);
    attention_forward_block(&P, x, A);
    if (m->cfg.layer_moe[l]) moe_forward_block(&P, A, x_out);
    else mlp_forward_block(&P, A, x_out);
}

/* ws->dres (N,H) holds d loss / d x_out on entry and d loss / d x on return. */
static void layer_backward(lt_model *m, lt_workspace *ws, const lt_adapter *ad, const lt_dropout_state *drop, int l,
                           const float *x, lt_layer_acts *A) {
    const layer_pass P = layer_pass_of(m, ws, ad, drop, NULL, l);
    if (m->cfg.layer_moe[l]) moe_backward_block(&P, A);
    else mlp_backward_block(&P, A);
    attention_backward_block(&P, x, A);
}

/* ---- the whole model ---------------------------------------------------------------------------- */

void lt_embed_lookup(lt_model *m, const lt_adapter *ad, float *out, const int32_t *ids, int N) {
    const int H = (int)m->cfg.hidden_size;
    const float *table = lt_view_embed(m, ad);
    if (table) OPS->embedding_forward(BE, out, ids, table, N, H);
    else OPS->embedding_forward_bf16(BE, out, ids, m->embed_bf16, N, H); /* a bf16 base keeps its table in bf16 */
}

/* From ws->dln = d loss / d final_ln back through the final norm and every layer (reverse order);
 * adapter grads accumulate. */
static lt_status backward_layers(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                                 lt_error *err) {
    const int L = (int)m->cfg.num_hidden_layers, H = (int)m->cfg.hidden_size, N = ws->B * ws->T;
    OPS->zero(BE, ws->dres, (size_t)N * H * sizeof(float));
    OPS->rmsnorm_backward(BE, ws->dres, ad ? ad->d_final_norm : NULL, ws->dln, ws->x_saved[L],
                          lt_view_final_norm(m, ad), ws->final_rstd, N, H);
    ws->moe_recompute = 1; /* the routing statistics were counted by the forward */
    for (int l = L - 1; l >= 0; l--) {
        lt_layer_acts *A = lt_workspace_acts(ws, l);
        if (l >= ws->n_kept) /* recompute this layer's activations; its output goes to a scratch */
            layer_forward(m, ws, ad, drop, NULL, l, ws->x_saved[l], A, ws->dln);
        layer_backward(m, ws, ad, drop, l, ws->x_saved[l], A);
    }
    ws->moe_recompute = 0;
    if (ad && ad->d_embed) { /* x_0 = embed_scale * E[ids]: dE[ids] += embed_scale * dx_0 (dres is free after) */
        if (m->cfg.embed_scale != 1.0) OPS->scale(BE, (size_t)N * H, (float)m->cfg.embed_scale, ws->dres);
        if (ws->embed_keep) OPS->row_scale(BE, ws->dres, ws->embed_keep, N, H); /* no gradient to the pad row */
        OPS->embedding_backward(BE, ad->d_embed, ws->ids, ws->dres, N, H);
    }
    lt_status st = lt_backend_sync(BE, err, "during the backward pass");
    if (st != LT_OK) return st;
    return LT_OK;
}

/* Checks shared by every pass, then embeddings, each layer and the final norm into ws->final_ln;
 * checkpointing keeps only each layer's input. kv: NULL, or the KV cache a generation pass attends through. */
static lt_status forward_layers(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                                const lt_kv_cache *kv, lt_error *err) {
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers, H = (int)c->hidden_size, N = ws->B * ws->T;
    if (ad && ad->p.rank > ws->rank)
        return lt_fail(err, LT_ERR_INTERNAL, "workspace planned for rank %d, adapter has rank %d", ws->rank,
                       ad->p.rank);
    if (ad && ad->merged)
        return lt_fail(err, LT_ERR_STATE, "the adapter is merged into the base weights; unmerge it first");
    if (!ws->wtile && lt_weight_tile_floats(m) > 0)
        return lt_fail(err, LT_ERR_STATE,
                       "the model was quantized after this trainer planned its memory; "
                       "quantize the model before creating trainers");
    if (c->n_moe_layers) { /* the load-balancing statistics of this forward */
        memset(ws->aux_cnt, 0, 2 * (size_t)c->num_experts * sizeof(double));
        ws->aux_rows = 0;
        ws->aux_loss = 0;
        ws->aux_weight = 0;
    }
    lt_embed_lookup(m, ad, ws->x_saved[0], ws->ids, N);
    if (c->embed_scale != 1.0) /* Gemma: times sqrt(hidden) rounded to the activation dtype (fp32) */
        OPS->scale(BE, (size_t)N * H, (float)c->embed_scale, ws->x_saved[0]);
    for (int l = 0; l < L; l++) {
        lt_layer_acts *A = lt_workspace_acts(ws, l);
        layer_forward(m, ws, ad, drop, kv, l, ws->x_saved[l], A, ws->x_saved[l + 1]);
    }
    OPS->rmsnorm_forward(BE, ws->final_ln, ws->final_rstd, ws->x_saved[L], lt_view_final_norm(m, ad), N, H,
                         (float)c->rms_norm_eps);
    return LT_OK;
}

/* The factor on the LM head's logits: the pass's logit_scale (GRPO: 1 / temperature) over the family's
 * logits_scaling (Granite divides its logits by it; 1 for the others). */
static float lm_head_scale(const lt_model *m, float logit_scale) {
    return m->cfg.logits_scaling != 1.0 ? logit_scale / (float)m->cfg.logits_scaling : logit_scale;
}

/* logits (n,V) = softcap(lm_head_scale * final_ln[r0 .. r0+n) W_lm^T); Gemma 2's final soft-capping
 * cap tanh(z / cap) is kept in ws->logits_capped when a backward will need it. */
static void lm_head_forward(lt_model *m, lt_workspace *ws, const lt_weight *head, int r0, int n, float logit_scale,
                            int backward) {
    const int H = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    const float fcap = (float)m->cfg.final_logit_softcapping;
    const float s = lm_head_scale(m, logit_scale);
    frozen_forward(m, ws, head, ws->logits, ws->final_ln + (size_t)r0 * H, n, H, V);
    if (s != 1.0f) OPS->scale(BE, (size_t)n * V, s, ws->logits);
    if (fcap > 0) {
        OPS->softcap_forward(BE, ws->logits, (size_t)n * V, fcap);
        if (backward) OPS->copy(BE, ws->logits_capped, ws->logits, (size_t)n * V * sizeof(float));
    }
}

/* A trained LM head (full FT, modules_to_save): dW_lm (V,H) += s dlogits^T final_ln for the chunk of rows
 * r0 .. r0+n, dlogits (n,V) in ws->logits, s the logit scale. Tied: dW_lm is the embedding's gradient. */
static void lm_head_weight_grad(lt_model *m, const lt_adapter *ad, lt_workspace *ws, int r0, int n, float s) {
    const int H = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    OPS->gemm(BE, 1, 0, V, H, n, s, ws->logits, V, ws->final_ln + (size_t)r0 * H, H, 1.0f, ad->d_lm_head, H);
}

/* the gradient in ws->logits back through the soft-capping (after lm_head_forward with backward) */
static void lm_head_softcap_backward(lt_model *m, lt_workspace *ws, int n) {
    const float fcap = (float)m->cfg.final_logit_softcapping;
    if (fcap > 0) OPS->softcap_backward(BE, ws->logits, ws->logits_capped, (size_t)n * (size_t)m->cfg.vocab_size, fcap);
}

/* The load-balancing loss of the last forward into ws->aux_loss (transformers' load_balancing_loss_func;
 * its attention mask is ws->aux_mask): aux = E * sum_e f_e P_e, f_e = pairs of expert e / tokens, P_e =
 * mean probability of e, both over the counted tokens of every MoE layer. */
static void moe_aux_value(const lt_model_config *c, lt_workspace *ws) {
    double aux = 0;
    for (int e = 0; e < c->num_experts; e++) aux += ws->aux_cnt[e] * ws->aux_psum[e];
    ws->aux_loss = aux * (double)c->num_experts / (ws->aux_rows * ws->aux_rows);
}

/* SFT: with output_router_logits the training loss is mean CE + router_aux_loss_coef * aux, so the summed
 * loss gains n_valid * coef * aux and the backward weighs d aux by grad_scale * n_valid * coef
 * (ws->aux_weight). Returns the summed loss's term. */
static double moe_aux_loss(lt_model *m, lt_workspace *ws, float grad_scale) {
    const lt_model_config *c = &m->cfg;
    if (!c->n_moe_layers || !(ws->aux_rows > 0)) return 0.0;
    moe_aux_value(c, ws);
    if (!c->output_router_logits || c->router_aux_loss_coef == 0) return 0.0;
    int64_t n_valid = 0;
    const int32_t *tg = ws->host_stage + ws->B * ws->T; /* the staged targets (lt_stage_batch) */
    for (int i = 0; i < ws->B * ws->T; i++) n_valid += tg[i] != -100;
    ws->aux_weight = (double)grad_scale * (double)n_valid * c->router_aux_loss_coef;
    return (double)n_valid * c->router_aux_loss_coef * ws->aux_loss;
}

lt_status lt_forward_backward(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                              float grad_scale, double *loss_sum, float *logits_out, lt_error *err) {
    const int H = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    const int N = ws->B * ws->T;
    const int backward = grad_scale != 0.0f && !logits_out;
    if (backward && ws->forward_only)
        return lt_fail(err, LT_ERR_INTERNAL, "a forward-only workspace cannot run a backward pass");
    lt_status st = forward_layers(m, ad, ws, drop, NULL, err);
    if (st != LT_OK) return st;

    /* chunked LM head + cross-entropy; dln accumulates d loss / d final_ln */
    double total = 0.0;
    const lt_weight head = lt_view_lm_head(m, ad);
    for (int r0 = 0; r0 < N; r0 += ws->chunk) {
        int n = N - r0 < ws->chunk ? N - r0 : ws->chunk;
        lm_head_forward(m, ws, &head, r0, n, 1.0f, backward);
        if (logits_out) OPS->download(BE, logits_out + (size_t)r0 * V, ws->logits, (size_t)n * V * sizeof(float));
        OPS->cross_entropy(BE, ws->logits, ws->losses + r0, ws->targets + r0, n, V, backward ? grad_scale : 0.0f);
        if (backward) {
            const float s = lm_head_scale(m, 1.0f);
            lm_head_softcap_backward(m, ws, n);
            frozen_backward(m, ws, &head, ws->dln + (size_t)r0 * H, ws->logits, n, H, V, 0);
            if (ad && ad->d_lm_head) lm_head_weight_grad(m, ad, ws, r0, n, s);
            if (s != 1.0f) OPS->scale(BE, (size_t)n * H, s, ws->dln + (size_t)r0 * H);
        }
    }
    OPS->download(BE, ws->host_losses, ws->losses, (size_t)N * sizeof(float));
    st = lt_backend_sync(BE, err, "during the forward pass");
    if (st != LT_OK) return st;
    for (int i = 0; i < N; i++) total += ws->host_losses[i];
    total += moe_aux_loss(m, ws, backward ? grad_scale : 0.0f);
    *loss_sum = total;
    if (!isfinite(total)) return lt_fail(err, LT_ERR_NUMERIC, "the loss is not finite (%g)", total);
    if (!backward) return LT_OK;

    return backward_layers(m, ad, ws, drop, err);
}

/* ---- generation: a pass through the KV cache ------------------------------------------------------ */

lt_status lt_forward_cached(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_kv_cache *kv, int every_token,
                            float *logits, lt_error *err) {
    const int H = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    if (kv->B != ws->B || (kv->mode == LT_KV_DECODE && ws->T != 1))
        return lt_fail(err, LT_ERR_INTERNAL, "a KV cache of %d rows cannot take %d x %d staged tokens", kv->B, ws->B,
                       ws->T);
    lt_status st = forward_layers(m, ad, ws, NULL, kv, err);
    if (st != LT_OK) return st;
    int n = ws->N;
    if (kv->mode == LT_KV_FILL && !every_token) {
        /* the last token of each row: its final_ln row gathered (x_saved[0] is free after the layers),
         * then back to the first B rows of final_ln for the LM head */
        n = ws->B;
        OPS->embedding_forward(BE, ws->x_saved[0], kv->last, ws->final_ln, n, H);
        OPS->copy(BE, ws->final_ln, ws->x_saved[0], (size_t)n * H * sizeof(float));
    }
    const lt_weight head = lt_view_lm_head(m, ad);
    for (int r0 = 0; r0 < n; r0 += ws->chunk) {
        int nc = n - r0 < ws->chunk ? n - r0 : ws->chunk;
        lm_head_forward(m, ws, &head, r0, nc, 1.0f, 0);
        OPS->download(BE, logits + (size_t)r0 * V, ws->logits, (size_t)nc * V * sizeof(float));
    }
    st = lt_backend_sync(BE, err, "during generation");
    if (st != LT_OK) return st;
    return LT_OK;
}

/* ---- objectives other than SFT: forward to per-token log-probs, then a weighted backward ---------- */

lt_status lt_forward_logp(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                          float logit_scale, lt_error *err) {
    const int V = (int)m->cfg.vocab_size, N = ws->B * ws->T;
    lt_status st = forward_layers(m, ad, ws, drop, NULL, err);
    if (st != LT_OK) return st;
    const lt_weight head = lt_view_lm_head(m, ad);
    for (int r0 = 0; r0 < N; r0 += ws->chunk) {
        int n = N - r0 < ws->chunk ? N - r0 : ws->chunk;
        lm_head_forward(m, ws, &head, r0, n, logit_scale, 0);
        OPS->cross_entropy(BE, ws->logits, ws->losses + r0, ws->targets + r0, n, V, 0.0f);
    }
    OPS->download(BE, ws->host_losses, ws->losses, (size_t)N * sizeof(float));
    st = lt_backend_sync(BE, err, "during the forward pass");
    if (st != LT_OK) return st;
    for (int i = 0; i < N; i++)
        if (!isfinite(ws->host_losses[i]))
            return lt_fail(err, LT_ERR_NUMERIC, "the log-probability of token %d of row %d is not finite", i % ws->T,
                           i / ws->T);
    if (m->cfg.n_moe_layers && ws->aux_rows > 0) moe_aux_value(&m->cfg, ws); /* the objective may add it */
    return LT_OK;
}

lt_status lt_backward_weighted(lt_model *m, const lt_adapter *ad, lt_workspace *ws, const lt_dropout_state *drop,
                               float logit_scale, const float *host_w, lt_error *err) {
    const int H = (int)m->cfg.hidden_size, V = (int)m->cfg.vocab_size;
    const int N = ws->B * ws->T;
    if (ws->forward_only) return lt_fail(err, LT_ERR_INTERNAL, "a forward-only workspace cannot run a backward pass");
    OPS->upload(BE, ws->row_w, host_w, (size_t)N * sizeof(float));
    /* d loss / d final_ln, chunk by chunk: logits again (one extra LM-head GEMM), softmax - onehot
     * scaled per row by w, then through the LM head (and the logit scale) */
    const lt_weight head = lt_view_lm_head(m, ad);
    const float s = lm_head_scale(m, logit_scale);
    for (int r0 = 0; r0 < N; r0 += ws->chunk) {
        int n = N - r0 < ws->chunk ? N - r0 : ws->chunk;
        float *dln = ws->dln + (size_t)r0 * H;
        lm_head_forward(m, ws, &head, r0, n, logit_scale, 1);
        OPS->cross_entropy(BE, ws->logits, ws->losses + r0, ws->targets + r0, n, V, 1.0f);
        lm_head_softcap_backward(m, ws, n);
        OPS->row_scale(BE, ws->logits, ws->row_w + r0, n, V);
        frozen_backward(m, ws, &head, dln, ws->logits, n, H, V, 0);
        if (ad && ad->d_lm_head) lm_head_weight_grad(m, ad, ws, r0, n, s);
        if (s != 1.0f) OPS->scale(BE, (size_t)n * H, s, dln);
    }
    return backward_layers(m, ad, ws, drop, err);
}
