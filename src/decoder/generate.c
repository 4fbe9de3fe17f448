/*
 * generate.c - batched generation: the loop and the sampling. The model itself runs in decoder.c
 * (lt_forward_cached: the layers of training, attending through a KV cache).
 *
 * defines: lt_generate_params_init, lt_generate, lt_sample_token
 *
 * Prefill: every prompt in one pass, the B rows right-padded to the longest prompt (B, P) and staged
 * like a training batch; it fills the cache and gives the logits of each row's last prompt token.
 * Decode: one pass of B tokens per step, each row's last token at its own position (per-row lengths),
 * stored in the cache and attending to that row's cached keys. All rows advance in lock step; a
 * finished row keeps feeding its last token, and what it produces is dropped.
 * Phi-3 longrope: a pass uses the long factors when max(position) + 1 exceeds
 * original_max_position_embeddings (transformers' rule, for the whole batch as transformers applies it
 * to a padded batch). When decoding crosses that length, the cache is rebuilt with the long factors by
 * one prefill of everything fed so far (transformers' Phi3ForCausalLM.prepare_inputs_for_generation).
 * Everything is planned once per call: the workspace for the largest pass, the cache, the host buffers.
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

/* ---- sampling ------------------------------------------------------------------------------------ */

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

/* the sampling order: decreasing probability, ties by increasing id */
static int cand_before(const lt_sample_cand *a, const lt_sample_cand *b) {
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}
static int cand_cmp(const void *a, const void *b) {
    const lt_sample_cand *x = a, *y = b;
    return cand_before(x, y) ? -1 : cand_before(y, x) ? 1 : 0;
}

/* Keep the k first of c[0..n) in the sampling order, sorted, in c[0..k): a heap of the k best seen
 * (its root the worst of them), O(n log k), then a sort of those k. */
static void select_first(lt_sample_cand *c, int n, int k) {
    for (int i = 0; i < n; i++) {
        lt_sample_cand x = c[i];
        int j;
        if (i < k) { /* sift up */
            for (j = i; j > 0 && cand_before(&c[(j - 1) / 2], &x); j = (j - 1) / 2) c[j] = c[(j - 1) / 2];
            c[j] = x;
            continue;
        }
        if (!cand_before(&x, &c[0])) continue;
        for (j = 0;;) { /* sift the new root down */
            int ch = 2 * j + 1;
            if (ch >= k) break;
            if (ch + 1 < k && cand_before(&c[ch], &c[ch + 1])) ch++;
            if (!cand_before(&x, &c[ch])) break;
            c[j] = c[ch];
            j = ch;
        }
        c[j] = x;
    }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

/*
 * What the sampling order needs is its head: the top_k first, the nucleus, or the token where u falls.
 * So the candidates are the tokens of weight w = exp(z - max z) >= cut, a prefix of the order (all
 * tokens of equal w are in or out together), sorted (or, with top_k, selected); if what was asked for
 * runs past them, a second round takes every token, which is the whole sort of the plain method. The
 * weights, sums and walks are those of that plain method (sort all V, cut, normalise, walk), in its
 * order, so the same u gives the same token; the one difference is the order in which the weights
 * below the cut are added to the total mass (top_k 0): a rounding of about 1e-16 of it.
 */
int32_t lt_sample_token(const float *logits, int V, float temperature, int top_k, float top_p, double u,
                        lt_sample_cand *c) {
    int32_t best = 0;
    for (int i = 0; i < V; i++) {
        if (!isfinite(logits[i])) return -1;
        if (logits[i] > logits[best]) best = i;
    }
    if (temperature <= 0.0f) return best;
    const double mx = logits[best] / temperature; /* z = logits / temperature in float, as the plain method */
    const int k = top_k > 0 && top_k < V ? top_k : V;
    const int nucleus = top_p > 0 && top_p < 1;
    /* with top_k only the k heaviest matter: tokens far below the cut need no exp */
    const double zcut = log(1.0 / 16384.0) - 1e-3;
    for (int round = 0; round < 2; round++) {
        const float cut = round == 0 ? 1.0f / 16384.0f : -1.0f; /* round 1: every token */
        double tail = 0;                                       /* mass below the cut (top_k 0) */
        int n = 0;
        for (int i = 0; i < V; i++) {
            const float z = logits[i] / temperature;
            if (k < V && round == 0 && z - mx < zcut) continue;
            const float w = (float)exp(z - mx);
            if (w >= cut) c[n++] = (lt_sample_cand){w, i};
            else tail += w;
        }
        const int all = n == V; /* the candidates are every token */
        if (k < n) select_first(c, n, k);
        else qsort(c, (size_t)n, sizeof *c, cand_cmp);
        if (k < V && n < k && !all) continue; /* fewer than top_k candidates */
        if (n > k) n = k;
        double sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].p;
        if (k == V) sum += tail;
        if (nucleus) { /* the shortest prefix whose probability reaches top_p (at least one token) */
            double cum = 0;
            int keep = 0;
            while (keep < n) {
                cum += c[keep].p / sum;
                keep++;
                if (cum >= top_p) break;
            }
            if (cum < top_p && !all && k == V) continue; /* the nucleus runs below the cut */
            n = keep;
            sum = 0;
            for (int i = 0; i < n; i++) sum += c[i].p;
        }
        const double target = u * sum;
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += c[i].p;
            if (target < acc) return c[i].id;
        }
        if (!all && k == V && !nucleus) continue; /* u falls below the cut */
        return c[n - 1].id;
    }
    return best; /* not reached: round 1 takes every token */
}

/* ---- the generation loop --------------------------------------------------------------------------- */

/* Everything one call plans: the workspace, the cache and the host buffers. */
typedef struct gen_plan {
    lt_workspace *ws;
    lt_kv_cache *kv;
    int32_t *seq;  /* (B, S_cap) host: each row's tokens, prompt then generated (a finished row repeats) */
    int32_t *ids;  /* (B * T_cap) host: the staged ids of a pass                                         */
    int32_t *n;    /* (B) host: tokens of each row in the cache after the pass                           */
    float *logits; /* (B, V) host                                                                        */
    lt_sample_cand *cands;
} gen_plan;

static void gen_plan_free(lt_model *m, gen_plan *g) {
    lt_workspace_free(g->ws);
    lt_kv_cache_free(m, g->kv);
    free(g->seq);
    free(g->ids);
    free(g->n);
    free(g->logits);
    free(g->cands);
}

/* One prefill of the first n[b] tokens of each row (T = the longest) with the RoPE table inv_freq: the
 * cache is (re)filled from slot 0 and g->logits gets each row's last-token logits. */
static lt_status gen_prefill(lt_model *m, const lt_adapter *ad, gen_plan *g, int B, int S_cap, const float *inv_freq,
                             lt_error *err) {
    int T = 0;
    for (int b = 0; b < B; b++) T = g->n[b] > T ? g->n[b] : T;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) g->ids[b * T + t] = g->seq[(size_t)b * S_cap + (t < g->n[b] ? t : 0)];
    lt_status st = lt_stage_cached(m, g->ws, g->kv, LT_KV_FILL, g->ids, g->n, B, T, inv_freq, err);
    return st != LT_OK ? st : lt_forward_cached(m, ad, g->ws, g->kv, 0, g->logits, err);
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
    const int V = (int)c->vocab_size, L = (int)c->num_hidden_layers, B = n_prompts, NEW = p.max_new_tokens;
    const int32_t eos = p.eos_token_id == LT_EOS_FROM_CONFIG ? (int32_t)c->eos_token_id : p.eos_token_id;
    int maxP = 0;
    for (int b = 0, off = 0; b < B; off += prompt_lens[b], b++) {
        if (prompt_lens[b] <= 0) return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: prompt %d is empty", b);
        if (prompt_lens[b] > INT32_MAX / 2 - NEW)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_generate: prompt %d is too long", b);
        for (int t = 0; t < prompt_lens[b]; t++)
            if (prompts[off + t] < 0 || prompts[off + t] >= V)
                return lt_fail(err, LT_ERR_DATA, "lt_generate: prompt %d token %d is %d, outside [0, %d)", b, t,
                               prompts[off + t], V);
        if (prompt_lens[b] > maxP) maxP = prompt_lens[b];
    }
    /* slots: every token fed (the last generated one never is); longrope: the rebuild feeds
     * original_max + 1 tokens per row when decoding crosses that length within this call */
    const int S_cap = maxP + NEW - 1;
    const int64_t orig = c->rope_original_max_position_embeddings;
    const int long_at_start = m->inv_freq_long && maxP > orig;
    const int may_switch = m->inv_freq_long && !long_at_start && (int64_t)maxP + NEW - 2 >= orig;
    const int T_cap = may_switch ? (int)orig + 1 : maxP;

    gen_plan g = {0};
    lt_status st = lt_workspace_create(m, B, T_cap, ad ? ad->p.rank : 0, LT_WS_FORWARD, &g.ws, err);
    if (st == LT_OK) st = lt_kv_cache_create(m, B, S_cap, T_cap, &g.kv, err);
    if (st != LT_OK) {
        gen_plan_free(m, &g);
        return st;
    }
    g.seq = malloc((size_t)B * S_cap * sizeof *g.seq);
    g.ids = malloc((size_t)B * T_cap * sizeof *g.ids);
    g.n = malloc((size_t)B * sizeof *g.n);
    g.logits = malloc((size_t)B * V * sizeof *g.logits);
    g.cands = malloc((size_t)V * sizeof *g.cands);
    if (!g.seq || !g.ids || !g.n || !g.logits || !g.cands) {
        gen_plan_free(m, &g);
        return lt_fail(err, LT_ERR_NOMEM, "lt_generate: out of memory for %d rows", B);
    }
    for (int b = 0, off = 0; b < B; off += prompt_lens[b], b++) {
        memcpy(g.seq + (size_t)b * S_cap, prompts + off, (size_t)prompt_lens[b] * sizeof *prompts);
        g.n[b] = prompt_lens[b];
        out_lens[b] = 0;
    }
    /* DoRA: the adapter does not change during generation, so each projection's g is computed once */
    for (int l = 0; ad && ad->p.use_dora && l < L; l++)
        for (int pj = 0; pj < P_COUNT; pj++) lt_dora_prepare(m, ad, l, (lt_proj)pj);
    g.kv->dora_ready = 1;
    const float *inv_freq = long_at_start ? m->inv_freq_long : m->inv_freq;
    gen_rng rng = {p.seed ^ 0x5DEECE66Dull};

    st = gen_prefill(m, ad, &g, B, S_cap, inv_freq, err);
    /* step k: the logits in g.logits give each row's token k; the next pass feeds it at position n[b] */
    for (int k = 0; st == LT_OK; k++) {
        int active = 0;
        for (int b = 0; b < B; b++) {
            int32_t *row = g.seq + (size_t)b * S_cap, *ob = out + (size_t)b * NEW;
            int32_t next = row[g.n[b] - 1]; /* a finished row repeats its last token */
            if (out_lens[b] == k && !(k > 0 && ob[k - 1] == eos)) {
                double u = p.temperature > 0 ? gen_uniform(&rng) : 0.0;
                next = lt_sample_token(g.logits + (size_t)b * V, V, p.temperature, p.top_k, p.top_p, u, g.cands);
                if (next < 0) {
                    st = lt_fail(err, LT_ERR_NUMERIC, "lt_generate: the logits of row %d are not finite", b);
                    break;
                }
                ob[out_lens[b]++] = next;
                active += out_lens[b] < NEW && next != eos;
            }
            if (g.n[b] < S_cap) row[g.n[b]] = next;
        }
        if (st != LT_OK || !active) break;
        int longest = 0;
        for (int b = 0; b < B; b++) longest = ++g.n[b] > longest ? g.n[b] : longest;
        if (may_switch && inv_freq != m->inv_freq_long && longest > orig) {
            inv_freq = m->inv_freq_long; /* rebuild the cache with the long factors */
            st = gen_prefill(m, ad, &g, B, S_cap, inv_freq, err);
            continue;
        }
        for (int b = 0; b < B; b++) g.ids[b] = g.seq[(size_t)b * S_cap + g.n[b] - 1];
        st = lt_stage_cached(m, g.ws, g.kv, LT_KV_DECODE, g.ids, g.n, B, 1, inv_freq, err);
        if (st == LT_OK) st = lt_forward_cached(m, ad, g.ws, g.kv, 0, g.logits, err);
    }
    gen_plan_free(m, &g);
    return st;
}
