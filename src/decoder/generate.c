/*
 * generate.c - batched generation with a KV cache, greedy or sampled.
 *
 * defines: lt_generate_params_init, lt_generate
 *
 * All rows advance in lock step, one token per row per step at the same position s: a row whose
 * prompt is longer is still "prefilling" (its next input is forced from the prompt) while a shorter
 * one is already sampling. Each step runs the decoder on B tokens (B,H), appends their k and v to
 * the per-layer cache (B, S_cap, NKV, HD) at position s and attends over positions 0..s.
 * Sampling (host): logits / temperature -> top-k -> top-p (nucleus) -> draw; temperature 0 = argmax.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"

LT_API void lt_generate_params_init(lt_generate_params *out, size_t size) {
    lt_generate_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->max_new_tokens = 32;
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->eos_token_id = LT_EOS_FROM_CONFIG;
    lt_fill_struct(out, size, p, sizeof *p);
}

typedef struct {
    uint64_t s;
} gen_rng;
static uint64_t gen_next(gen_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double gen_uniform(gen_rng *r) { return (double)(gen_next(r) >> 11) * (1.0 / 9007199254740992.0); }

typedef struct {
    float p;
    int32_t id;
} cand;
static int cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    if (x != y) return x < y ? 1 : -1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

/* Pick the next token from one row of logits (V). scratch holds V cands. */
static int32_t sample(const float *logits, int V, const lt_generate_params *p, gen_rng *rng, cand *c) {
    if (p->temperature <= 0.0f) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (int i = 0; i < V; i++) {
        c[i].p = logits[i] / p->temperature;
        c[i].id = i;
    }
    qsort(c, (size_t)V, sizeof *c, cand_desc);
    int n = V;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    double mx = c[0].p, sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].p = (float)exp(c[i].p - mx);
        sum += c[i].p;
    }
    if (p->top_p > 0 && p->top_p < 1) {
        /* keep the smallest prefix whose probability reaches top_p (at least one token) */
        double cum = 0;
        int keep = 0;
        while (keep < n) {
            cum += c[keep].p / sum;
            keep++;
            if (cum >= p->top_p) break;
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].p;
    }
    double u = gen_uniform(rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) return c[i].id;
    }
    return c[n - 1].id;
}

LT_API lt_status lt_generate(lt_model *m, const lt_adapter *ad, const int32_t *prompts, const int32_t *prompt_lens,
                             int n_prompts, const lt_generate_params *params, int32_t *out, int32_t *out_lens) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!prompts || !prompt_lens || !out || !out_lens || n_prompts <= 0)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_generate: prompts, prompt_lens, out and out_lens are required and "
                       "n_prompts must be positive");
    if (ad && ad->model != m) return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: the adapter belongs to another model");
    if (ad && ad->merged)
        return lt_fail(err, LT_ERR_STATE, "lt_generate: the adapter is merged; pass NULL to use the merged weights");
    lt_generate_params p;
    lt_generate_params_init(&p, sizeof p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof p)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: params->size %zu unknown (call lt_generate_params_init)",
                           params->size);
        memcpy(&p, params, params->size);
    }
    if (p.max_new_tokens <= 0)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: max_new_tokens %d must be positive", p.max_new_tokens);
    if (!(p.temperature >= 0) || p.top_k < 0 || !(p.top_p > 0 && p.top_p <= 1))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: need temperature >= 0, top_k >= 0 and 0 < top_p <= 1");
    const lt_model_config *c = &m->cfg;
    const int V = (int)c->vocab_size, H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const int L = (int)c->num_hidden_layers, NH = (int)c->num_attention_heads, NKV = (int)c->num_key_value_heads;
    const int HD = (int)c->head_dim, QD = NH * HD, KD = NKV * HD, B = n_prompts;
    const int32_t eos = p.eos_token_id == LT_EOS_FROM_CONFIG ? (int32_t)c->eos_token_id : p.eos_token_id;
    int max_prompt = 0;
    const int32_t **starts = malloc((size_t)B * sizeof *starts);
    if (!starts) return lt_fail(err, LT_ERR_NOMEM, "lt_generate: out of memory");
    for (int b = 0, off = 0; b < B; off += prompt_lens[b], b++) {
        if (prompt_lens[b] <= 0) {
            free(starts);
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: prompt %d is empty", b);
        }
        starts[b] = prompts + off;
        for (int t = 0; t < prompt_lens[b]; t++)
            if (starts[b][t] < 0 || starts[b][t] >= V) {
                int32_t bad = starts[b][t];
                free(starts);
                return lt_fail(err, LT_ERR_DATA, "lt_generate: prompt %d token %d is %d, outside [0, %d)", b, t, bad,
                               V);
            }
        if (prompt_lens[b] > max_prompt) max_prompt = prompt_lens[b];
    }
    const int S = max_prompt + p.max_new_tokens; /* positions needed */
    const int r = ad && ad->p.rank > 0 ? ad->p.rank : 1;
    lt_backend *be = m->be;
    /* one allocation: activations for B tokens + the KV cache */
    const size_t wt = lt_weight_tile_floats(m); /* dequantization scratch of quantized weights */
    size_t nf = (size_t)B * (4 * H + 2 * QD + 2 * KD + 3 * I + r + V) + (size_t)B + 2 * (size_t)L * B * S * KD +
                (size_t)B * (NH + QD) + wt; /* + q/k norm statistics and a pre-norm q (Qwen3) */
    float *blk = be->ops->alloc(be, nf * sizeof(float) + 2 * (size_t)B * sizeof(int32_t));
    float *hlog = malloc((size_t)B * V * sizeof(float));
    cand *cands = malloc((size_t)V * sizeof *cands);
    int32_t *htok = malloc((size_t)B * 2 * sizeof(int32_t));
    if (!blk || !hlog || !cands || !htok) {
        if (blk) be->ops->free(be, blk);
        free(hlog);
        free(cands);
        free(htok);
        free(starts);
        return lt_fail(err, LT_ERR_NOMEM, "lt_generate: cannot allocate the KV cache for %d rows x %d positions", B, S);
    }
    float *x = blk, *ln = x + (size_t)B * H, *xmid = ln + (size_t)B * H, *tmpH = xmid + (size_t)B * H;
    float *q = tmpH + (size_t)B * H, *att = q + (size_t)B * QD, *k = att + (size_t)B * QD, *v = k + (size_t)B * KD;
    float *gate = v + (size_t)B * KD, *up = gate + (size_t)B * I, *act = up + (size_t)B * I, *xa = act + (size_t)B * I;
    float *logits = xa + (size_t)B * r, *rstd = logits + (size_t)B * V, *kc = rstd + B,
          *vc = kc + (size_t)L * B * S * KD;
    float *wtile = vc + (size_t)L * B * S * KD;
    float *rstd_qk = wtile + wt, *qpre = rstd_qk + (size_t)B * NH;
    int32_t *dtok = (int32_t *)(qpre + (size_t)B * QD), *dpos = dtok + B;
    lt_workspace gws; /* only the weight scratch is used (no dropout, no backward) */
    memset(&gws, 0, sizeof gws);
    gws.wtile = wtile;
    int32_t *tok = htok, *posv = htok + B;
    for (int b = 0; b < B; b++) {
        tok[b] = starts[b][0];
        out_lens[b] = 0;
    }
    gen_rng rng = {p.seed ^ 0x5DEECE66Dull};
    const float eps = (float)c->rms_norm_eps, scale = lt_config_attn_scale(c);
    int done = 0;
    lt_status st = LT_OK;
    /* longrope (Phi-3): a sequence longer than original_max_position_embeddings uses the long factors at
     * every position, so on crossing that length the cache is rebuilt from position 0 with them (what
     * transformers' Phi3ForCausalLM.prepare_inputs_for_generation does): the prompt and the tokens
     * generated so far are fed again, then generation goes on */
    const float *inv_freq = m->inv_freq;
    /* DoRA: the adapter does not change during generation, so each projection's g is computed once */
    for (int l = 0; ad && ad->p.use_dora && l < L; l++)
        for (int pj = 0; pj < P_COUNT; pj++) lt_dora_prepare(m, ad, l, (lt_proj)pj);
    for (int s = 0; s < S - 1 && !done; s++) {
        if (m->inv_freq_long && inv_freq != m->inv_freq_long &&
            (int64_t)s + 1 > c->rope_original_max_position_embeddings) {
            inv_freq = m->inv_freq_long;
            s = 0;
            for (int b = 0; b < B; b++) tok[b] = starts[b][0];
        }
        for (int b = 0; b < B; b++) posv[b] = s;
        be->ops->upload(be, dtok, tok, (size_t)B * sizeof(int32_t));
        be->ops->upload(be, dpos, posv, (size_t)B * sizeof(int32_t));
        be->ops->embedding_forward(be, x, dtok, lt_view_embed(m, ad), B, H);
        if (c->embed_scale != 1.0) be->ops->scale(be, (size_t)B * H, (float)c->embed_scale, x);
        for (int l = 0; l < L; l++) {
            const lt_layer *W = lt_view_layer(m, ad, l);
            const lt_lora *lo[P_COUNT];
            for (int pj = 0; pj < P_COUNT; pj++) lo[pj] = ad ? lt_adapter_lora(ad, l, (lt_proj)pj) : NULL;
            float *kcl = kc + (size_t)l * B * S * KD, *vcl = vc + (size_t)l * B * S * KD;
            be->ops->rmsnorm_forward(be, ln, rstd, x, W->attn_norm, B, H, eps);
            /* the family steps mirror layer_forward in decoder.c */
            float *qp = c->qk_norm ? qpre : q, *kp = c->qk_norm ? att : k; /* att is free until attention */
            lt_linear_forward(m, &gws, ad, lo[P_Q], NULL, 0, qp, ln, &W->w[P_Q], xa, B, H, QD);
            if (lo[P_Q] && lo[P_Q]->mag) be->ops->mul_cols(be, qp, lo[P_Q]->dora_g, B, QD); /* DoRA */
            lt_linear_forward(m, &gws, ad, lo[P_K], NULL, 0, kp, ln, &W->w[P_K], xa, B, H, KD);
            if (lo[P_K] && lo[P_K]->mag) be->ops->mul_cols(be, kp, lo[P_K]->dora_g, B, KD); /* DoRA */
            lt_linear_forward(m, &gws, ad, lo[P_V], NULL, 0, v, ln, &W->w[P_V], xa, B, H, KD);
            if (lo[P_V] && lo[P_V]->mag) be->ops->mul_cols(be, v, lo[P_V]->dora_g, B, KD); /* DoRA */
            if (W->bias[P_Q]) be->ops->bias_add(be, qp, W->bias[P_Q], B, QD);
            if (W->bias[P_K]) be->ops->bias_add(be, kp, W->bias[P_K], B, KD);
            if (W->bias[P_V]) be->ops->bias_add(be, v, W->bias[P_V], B, KD);
            if (c->qk_norm) {
                be->ops->rmsnorm_forward(be, q, rstd_qk, qp, W->q_norm, B * NH, HD, eps);
                be->ops->rmsnorm_forward(be, k, rstd_qk, kp, W->k_norm, B * NKV, HD, eps);
            }
            be->ops->rope_forward(be, q, dpos, inv_freq, B, NH, HD, m->rot_dim);
            be->ops->rope_forward(be, k, dpos, inv_freq, B, NKV, HD, m->rot_dim);
            if (m->rope_mscale != 1.0f) {
                be->ops->rope_scale(be, q, B, NH, HD, m->rot_dim, m->rope_mscale);
                be->ops->rope_scale(be, k, B, NKV, HD, m->rot_dim, m->rope_mscale);
            }
            for (int b = 0; b < B; b++) {
                be->ops->copy(be, kcl + ((size_t)b * S + s) * KD, k + (size_t)b * KD, (size_t)KD * sizeof(float));
                be->ops->copy(be, vcl + ((size_t)b * S + s) * KD, v + (size_t)b * KD, (size_t)KD * sizeof(float));
            }
            /* sliding-window layers see positions s - window + 1 .. s: start the cache rows there */
            int k0 = 0;
            if (c->sliding_window > 0 && c->layer_sliding[l] && s + 1 > c->sliding_window)
                k0 = (int)(s + 1 - c->sliding_window);
            if (c->attn_logit_softcapping > 0)
                be->ops->attention_softcap_decode(be, att, q, kcl + (size_t)k0 * KD, vcl + (size_t)k0 * KD, B, S,
                                                  s + 1 - k0, NH, NKV, HD, scale, (float)c->attn_logit_softcapping);
            else
                be->ops->attention_decode(be, att, q, kcl + (size_t)k0 * KD, vcl + (size_t)k0 * KD, B, S, s + 1 - k0,
                                          NH, NKV, HD, scale);
            float *o_out = c->sandwich_norms ? tmpH : xmid;
            lt_linear_forward(m, &gws, ad, lo[P_O], NULL, 0, o_out, att, &W->w[P_O], xa, B, QD, H);
            if (lo[P_O] && lo[P_O]->mag) be->ops->mul_cols(be, o_out, lo[P_O]->dora_g, B, H); /* DoRA */
            if (W->bias[P_O]) be->ops->bias_add(be, o_out, W->bias[P_O], B, H);
            if (c->sandwich_norms) be->ops->rmsnorm_forward(be, xmid, rstd, tmpH, W->post_attn_norm, B, H, eps);
            be->ops->axpy(be, (size_t)B * H, 1.0f, x, xmid);
            be->ops->rmsnorm_forward(be, ln, rstd, xmid, W->mlp_norm, B, H, eps);
            lt_linear_forward(m, &gws, ad, lo[P_GATE], NULL, 0, gate, ln, &W->w[P_GATE], xa, B, H, I);
            if (lo[P_GATE] && lo[P_GATE]->mag) be->ops->mul_cols(be, gate, lo[P_GATE]->dora_g, B, I); /* DoRA */
            lt_linear_forward(m, &gws, ad, lo[P_UP], NULL, 0, up, ln, &W->w[P_UP], xa, B, H, I);
            if (lo[P_UP] && lo[P_UP]->mag) be->ops->mul_cols(be, up, lo[P_UP]->dora_g, B, I); /* DoRA */
            if (W->bias[P_GATE]) be->ops->bias_add(be, gate, W->bias[P_GATE], B, I);
            if (W->bias[P_UP]) be->ops->bias_add(be, up, W->bias[P_UP], B, I);
            if (c->activation == LT_ACT_GELU_TANH) be->ops->geglu_forward(be, act, gate, up, (size_t)B * I);
            else be->ops->swiglu_forward(be, act, gate, up, (size_t)B * I);
            float *d_out = c->sandwich_norms ? tmpH : x;
            lt_linear_forward(m, &gws, ad, lo[P_DOWN], NULL, 0, d_out, act, &W->w[P_DOWN], xa, B, I, H);
            if (lo[P_DOWN] && lo[P_DOWN]->mag) be->ops->mul_cols(be, d_out, lo[P_DOWN]->dora_g, B, H); /* DoRA */
            if (W->bias[P_DOWN]) be->ops->bias_add(be, d_out, W->bias[P_DOWN], B, H);
            if (c->sandwich_norms) be->ops->rmsnorm_forward(be, x, rstd, tmpH, W->post_ff_norm, B, H, eps);
            be->ops->axpy(be, (size_t)B * H, 1.0f, xmid, x);
        }
        be->ops->rmsnorm_forward(be, ln, rstd, x, lt_view_final_norm(m, ad), B, H, eps);
        const lt_weight head = lt_view_lm_head(m, ad);
        lt_weight_forward(m, gws.wtile, &head, logits, ln, B, H, V, 0.0f);
        if (c->final_logit_softcapping > 0)
            be->ops->softcap_forward(be, logits, (size_t)B * V, (float)c->final_logit_softcapping);
        be->ops->download(be, hlog, logits, (size_t)B * V * sizeof(float));
        if ((st = be->ops->sync(be)) != LT_OK) {
            lt_fail(err, st, "lt_generate: backend %s failed: %s", be->ops->name, be->ops->error_message(be));
            break;
        }
        done = 1;
        for (int b = 0; b < B; b++) {
            int32_t *ob = out + (size_t)b * p.max_new_tokens;
            if (s + 1 < prompt_lens[b]) {
                tok[b] = starts[b][s + 1];
                done = 0;
                continue;
            }                                           /* still prefilling */
            if (s + 1 < prompt_lens[b] + out_lens[b]) { /* replaying generated tokens after a longrope switch */
                tok[b] = ob[s + 1 - prompt_lens[b]];
                done = 0;
                continue;
            }
            int finished = out_lens[b] >= p.max_new_tokens || (out_lens[b] > 0 && ob[out_lens[b] - 1] == eos);
            if (finished) continue;
            int32_t next = sample(hlog + (size_t)b * V, V, &p, &rng, cands);
            ob[out_lens[b]++] = next;
            tok[b] = next;
            if (out_lens[b] < p.max_new_tokens && next != eos) done = 0;
        }
    }
    be->ops->free(be, blk);
    free(hlog);
    free(cands);
    free(htok);
    free(starts);
    return st;
}
