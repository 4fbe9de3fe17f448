/*
 * workspace.c - the per-shape workspace (every activation and scratch buffer of a step in one planned
 * allocation) and the staging of a batch into it (ids, shifted targets, positions, first keys).
 *
 * defines: lt_workspace_create, lt_workspace_free, lt_stage_batch, lt_kv_cache_create, lt_kv_cache_free,
 *          lt_stage_cached
 */
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"

#define OPS (m->be->ops)
#define BE (m->be)

/* ---- workspace -------------------------------------------------------------------------------- */

/* Reserve n floats (or int32s: same size) in the block, 64-byte aligned; records the offset into *slot
 * (as a fake pointer) to be relocated once the block exists. */
static void carve(size_t *total, void **slot, size_t n) {
    *slot = (void *)(uintptr_t)(*total + 1); /* +1: distinguishes "reserved" from NULL */
    *total += (n * 4 + 63) & ~(size_t)63;
}

static void relocate(void **slot, char *base) {
    if (*slot) *slot = base + ((uintptr_t)*slot - 1);
}

#define CARVE(ptr, n) carve(&total, (void **)&(ptr), (size_t)(n))

/* Carve one layer's activation buffers (the set the forward fills and the backward reads). */
static void carve_acts(size_t *tp, lt_layer_acts *A, const lt_model_config *c, size_t N, int B, int T, int rank) {
    size_t total = *tp;
    const int H = (int)c->hidden_size, I = (int)c->intermediate_size, NH = (int)c->num_attention_heads;
    const int QD = (int)(c->num_attention_heads * c->head_dim), KD = (int)(c->num_key_value_heads * c->head_dim);
    /* MoE: M = N * K pairs of MI-wide expert rows; the MLP buffers hold whichever is larger */
    const size_t M = c->n_moe_layers ? N * (size_t)c->num_experts_per_tok : 0, MI = (size_t)c->moe_intermediate_size;
    const size_t NI = N * I > M * MI ? N * I : M * MI, NR = N > M ? N : M;
    CARVE(A->ln1, N * H);
    CARVE(A->rstd1, N);
    CARVE(A->q, N * QD);
    CARVE(A->k, N * KD);
    CARVE(A->v, N * KD);
    if (c->sandwich_norms) {
        CARVE(A->o_raw, N * H);
        CARVE(A->rstd_pa, N);
        CARVE(A->d_raw, N * H);
        CARVE(A->rstd_pf, N);
    }
    if (c->qk_norm) {
        CARVE(A->q_pre, N * QD);
        CARVE(A->k_pre, N * KD);
        CARVE(A->rstd_q, N * NH);
        CARVE(A->rstd_k, N * c->num_key_value_heads);
    }
    CARVE(A->att, N * QD);
    CARVE(A->lse, (size_t)B * NH * T);
    CARVE(A->x_mid, N * H);
    CARVE(A->ln2, N * H);
    CARVE(A->rstd2, N);
    CARVE(A->gate, NI);
    CARVE(A->up, NI);
    CARVE(A->act, NI);
    if (rank > 0)
        for (int p = 0; p < P_COUNT; p++) CARVE(A->xa[p], NR * rank);
    if (M) {
        CARVE(A->e_tok, M);
        CARVE(A->e_w, M);
        CARVE(A->e_y, M * H);
    }
    *tp = total;
}

size_t lt_workspace_layer_bytes(const lt_model *m, int B, int T, int rank) {
    lt_layer_acts A;
    size_t total = 0;
    carve_acts(&total, &A, &m->cfg, (size_t)B * T, B, T, rank);
    return total;
}

lt_status lt_workspace_create(lt_model *m, int B, int T, int rank, int mode, lt_workspace **out, lt_error *err) {
    return lt_workspace_create_kept(m, B, T, rank, mode, mode == LT_WS_FULL ? (int)m->cfg.num_hidden_layers : 0, out,
                                    err);
}

lt_status lt_workspace_create_train(lt_model *m, int B, int T, int rank, int checkpointing, int64_t keep_bytes,
                                    lt_workspace **out, lt_error *err) {
    const int L = (int)m->cfg.num_hidden_layers;
    int kept = L;
    if (checkpointing) {
        const size_t per = lt_workspace_layer_bytes(m, B, T, rank);
        const int64_t k = keep_bytes > 0 && per ? keep_bytes / (int64_t)per : 0;
        kept = k > L ? L : (int)k;
    }
    return lt_workspace_create_kept(m, B, T, rank, LT_WS_CHECKPOINT, kept, out, err);
}

lt_status lt_workspace_create_kept(lt_model *m, int B, int T, int rank, int mode, int n_kept, lt_workspace **out,
                                   lt_error *err) {
    const lt_model_config *c = &m->cfg;
    *out = NULL;
    if (B <= 0 || T <= 0) return lt_fail(err, LT_ERR_ARGUMENT, "workspace: batch %d x %d is empty", B, T);
    lt_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) return lt_fail(err, LT_ERR_NOMEM, "workspace: out of memory");
    const int L = (int)c->num_hidden_layers, H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const int QD = (int)(c->num_attention_heads * c->head_dim), KD = (int)(c->num_key_value_heads * c->head_dim);
    const int V = (int)c->vocab_size, NH = (int)c->num_attention_heads;
    const size_t N = (size_t)B * T;
    /* MoE: M = N * K pairs of MI-wide expert rows; the MLP buffers hold whichever is larger */
    const size_t E = (size_t)c->num_experts, M = c->n_moe_layers ? N * (size_t)c->num_experts_per_tok : 0;
    const size_t MI = (size_t)c->moe_intermediate_size;
    const size_t NI = N * I > M * MI ? N * I : M * MI, NR = N > M ? N : M;
    ws->be = m->be;
    ws->inv_freq = m->inv_freq;
    ws->B = ws->B_cap = B;
    ws->T = T;
    ws->N = ws->N_cap = (int)N;
    ws->rank = rank;
    ws->forward_only = mode == LT_WS_FORWARD;
    /* layers 0 .. n_kept-1 keep their activations; the others share one set, recomputed in backward */
    ws->n_kept = ws->forward_only ? 0 : n_kept < 0 ? 0 : n_kept > L ? L : n_kept;
    ws->checkpointing = ws->n_kept < L;
    ws->n_acts = ws->n_kept + (ws->checkpointing ? 1 : 0);
    ws->acts = calloc((size_t)ws->n_acts, sizeof *ws->acts);
    ws->x_saved = calloc((size_t)L + 1, sizeof *ws->x_saved);
    if (!ws->acts || !ws->x_saved) {
        lt_workspace_free(ws);
        return lt_fail(err, LT_ERR_NOMEM, "workspace: out of memory");
    }

    /* logits chunk: bound the (chunk, V) buffer to ~16 MiB but keep at least 128 rows: each chunk
     * streams the whole LM head (Llama 3's 128256 x 4096 is 1 GB in bf16) through both of its products,
     * so fewer, taller chunks read it fewer times (64 MiB of logits at that vocabulary). A multiple of
     * 128 rows, the bf16 kernel's row block (cpu/gemm_bf16.c MC_BLK): 131 rows (vocab 32000) would be a
     * block of 128 and one of 3, and each block streams the whole weight again */
    int chunk = (int)((4u << 20) / (unsigned)V) / 128 * 128;
    if (chunk < 128) chunk = 128;
    if ((size_t)chunk > N) chunk = (int)N;
    ws->chunk = chunk;

    size_t total = 0;
    /* forward only: the residual stream ping-pongs between two buffers */
    for (int l = 0; l <= (ws->forward_only ? 1 : L); l++) CARVE(ws->x_saved[l], N * H);
    for (int a = 0; a < ws->n_acts; a++) carve_acts(&total, &ws->acts[a], c, N, B, T, rank);
    if (M) {
        CARVE(ws->e_x, M * H);
        CARVE(ws->r_logits, N * E);
        if (!ws->forward_only) CARVE(ws->e_dx, M * H);
    }
    CARVE(ws->final_ln, N * H);
    CARVE(ws->final_rstd, N);
    CARVE(ws->ids, N);
    CARVE(ws->targets, N);
    CARVE(ws->pos, N);
    CARVE(ws->kv_start, N);
    if (c->sliding_window > 0) CARVE(ws->kv_start_swa, N);
    CARVE(ws->logits, (size_t)chunk * V);
    if (c->final_logit_softcapping > 0 && !ws->forward_only) CARVE(ws->logits_capped, (size_t)chunk * V);
    CARVE(ws->losses, N);
    if (!ws->forward_only) {
        CARVE(ws->dres, N * H);
        CARVE(ws->dln, N * H);
        CARVE(ws->dI1, NI);
        CARVE(ws->dI2, NI);
        CARVE(ws->dI3, NI);
        CARVE(ws->dq, N * QD);
        CARVE(ws->dk, N * KD);
        CARVE(ws->dv, N * KD);
        CARVE(ws->datt, N * QD);
        if (c->qk_norm) CARVE(ws->dk_pre, N * KD);
        if (c->sandwich_norms || c->residual_multiplier != 1.0) CARVE(ws->dsand, N * H);
        if (rank > 0) {
            CARVE(ws->dr, NR * rank);
            CARVE(ws->drop, N * (size_t)(H > I ? (H > QD ? H : QD) : (I > QD ? I : QD)));
        }
        CARVE(ws->att_scratch, OPS->attention_backward_scratch(BE, B, T, NH, (int)c->head_dim));
        CARVE(ws->row_w, N);
        if (c->pad_token_id >= 0 && c->pad_token_id < c->vocab_size) CARVE(ws->embed_keep, N);
    }
    const size_t wtile = lt_weight_tile_floats(m); /* quantized weights: dequantization scratch */
    if (wtile) CARVE(ws->wtile, wtile);

    ws->block = OPS->alloc(BE, total);
    ws->block_bytes = total;
    ws->host_losses = malloc(N * sizeof(float));
    ws->host_stage = malloc(6 * N * sizeof(int32_t));
    if (M) { /* host: the routes of every acts entry, the backward's scratch, the aux-loss statistics */
        const size_t per = N * E + 2 * N * (size_t)c->num_experts_per_tok + 2 * M + 2 * E + 1;
        const size_t hm = M + N * E + 2 * M * H; /* decoder.c moe_backward_block */
        ws->h_route = malloc((size_t)ws->n_acts * per * 4);
        ws->h_moe = malloc(hm * sizeof(float));
        ws->aux_cnt = calloc(2 * E, sizeof(double));
        ws->aux_mask = calloc(N, 1);
        if (!ws->h_route || !ws->h_moe || !ws->aux_cnt || !ws->aux_mask) {
            lt_workspace_free(ws);
            return lt_fail(err, LT_ERR_NOMEM, "workspace: out of memory");
        }
        ws->aux_psum = ws->aux_cnt + E;
        for (int a = 0; a < ws->n_acts; a++) {
            lt_moe_route *R = &ws->acts[a].route;
            char *h = (char *)ws->h_route + (size_t)a * per * 4;
            R->prob = (float *)h;
            R->sel = (int32_t *)(R->prob + N * E);
            R->pair = R->sel + N * c->num_experts_per_tok;
            R->tok = R->pair + N * c->num_experts_per_tok;
            R->w = (float *)(R->tok + M);
            R->off = (int32_t *)(R->w + M);
            R->order = R->off + E + 1;
        }
    }
    if (!ws->block || !ws->host_losses || !ws->host_stage) {
        lt_workspace_free(ws);
        /* a device that has failed refuses every allocation: say that, not "out of memory" */
        const lt_status st = lt_backend_sync(BE, err, "before the workspace was allocated");
        if (st != LT_OK) return st;
        return lt_fail(err, LT_ERR_NOMEM, "workspace: cannot allocate %.1f MiB for a %d x %d batch",
                       (double)total / (1 << 20), B, T);
    }
    char *base = ws->block;
    for (int l = 0; l <= L; l++) {
        if (ws->forward_only && l > 1) ws->x_saved[l] = ws->x_saved[l % 2];
        else relocate((void **)&ws->x_saved[l], base);
    }
    for (int a = 0; a < ws->n_acts; a++) {
        lt_layer_acts *A = &ws->acts[a];
        void **f[] = {(void **)&A->ln1,    (void **)&A->rstd1, (void **)&A->q,       (void **)&A->k,
                      (void **)&A->v,      (void **)&A->att,   (void **)&A->lse,     (void **)&A->x_mid,
                      (void **)&A->ln2,    (void **)&A->rstd2, (void **)&A->gate,    (void **)&A->up,
                      (void **)&A->act,    (void **)&A->q_pre, (void **)&A->k_pre,   (void **)&A->rstd_q,
                      (void **)&A->rstd_k, (void **)&A->o_raw, (void **)&A->rstd_pa, (void **)&A->d_raw,
                      (void **)&A->rstd_pf};
        for (size_t i = 0; i < sizeof f / sizeof *f; i++) relocate(f[i], base);
        for (int p = 0; p < P_COUNT; p++) relocate((void **)&A->xa[p], base);
        relocate((void **)&A->e_tok, base);
        relocate((void **)&A->e_w, base);
        relocate((void **)&A->e_y, base);
    }
    relocate((void **)&ws->e_x, base);
    relocate((void **)&ws->e_dx, base);
    relocate((void **)&ws->r_logits, base);
    void **g[] = {(void **)&ws->final_ln,     (void **)&ws->final_rstd,
                  (void **)&ws->ids,          (void **)&ws->targets,
                  (void **)&ws->pos,          (void **)&ws->kv_start,
                  (void **)&ws->logits,       (void **)&ws->losses,
                  (void **)&ws->dres,         (void **)&ws->dln,
                  (void **)&ws->dI1,          (void **)&ws->dI2,
                  (void **)&ws->dI3,          (void **)&ws->dq,
                  (void **)&ws->dk,           (void **)&ws->dv,
                  (void **)&ws->datt,         (void **)&ws->dr,
                  (void **)&ws->drop,         (void **)&ws->att_scratch,
                  (void **)&ws->row_w,        (void **)&ws->wtile,
                  (void **)&ws->kv_start_swa, (void **)&ws->dk_pre,
                  (void **)&ws->dsand,        (void **)&ws->logits_capped,
                  (void **)&ws->embed_keep};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) relocate(g[i], base);
    /* every layer's activations alias x_in to the saved input of that layer */
    *out = ws;
    return LT_OK;
}

void lt_workspace_free(lt_workspace *ws) {
    if (!ws) return;
    if (ws->block) ws->be->ops->free(ws->be, ws->block);
    free(ws->host_losses);
    free(ws->host_stage);
    free(ws->h_route);
    free(ws->h_moe);
    free(ws->aux_cnt);
    free(ws->aux_mask);
    free(ws->acts);
    free(ws->x_saved);
    free(ws);
}

/* ---- batch staging ------------------------------------------------------------------------------ */

/* The first key token t may attend to in a sliding-window layer: the window's t - window + 1 .. t,
 * within its sequence (which starts at seg). */
static int32_t window_start(int64_t t, int64_t seg, int64_t window) {
    return (int32_t)(t - window + 1 > seg ? t - window + 1 : seg);
}

lt_status lt_stage_batch(lt_model *m, lt_workspace *ws, const lt_batch *b, int64_t *n_valid, lt_error *err) {
    if (!b || b->size < sizeof(lt_batch) - sizeof(b->position_ids) || !b->input_ids)
        return lt_fail(err, LT_ERR_ARGUMENT, "batch: NULL batch or input_ids (call lt_batch_init)");
    if (b->n_rows <= 0 || b->seq_len <= 0)
        return lt_fail(err, LT_ERR_SHAPE, "batch: %d rows x %d tokens is empty", b->n_rows, b->seq_len);
    if (b->n_rows > ws->B_cap || b->seq_len != ws->T)
        return lt_fail(err, LT_ERR_SHAPE, "batch: %d x %d does not fit the planned %d x %d", b->n_rows, b->seq_len,
                       ws->B_cap, ws->T);
    const int B = b->n_rows, T = b->seq_len, N = B * T, V = (int)m->cfg.vocab_size;
    ws->aux_masked = 0; /* a new batch: the load-balancing statistics count every token until told otherwise */
    int32_t *tmp = ws->host_stage; /* planned with the workspace: no allocation per step */
    int32_t *ids = tmp, *tg = tmp + N, *pos = tmp + 2 * N, *kvs = tmp + 3 * N, *kvw = tmp + 4 * N;
    const int64_t window = m->cfg.sliding_window; /* > 0: keys t - window + 1 .. t in sliding layers */
    int64_t valid = 0;
    int32_t max_pos = 0;
    for (int r = 0; r < B; r++) {
        int seg = 0;
        for (int t = 0; t < T; t++) {
            int i = r * T + t;
            int32_t id = b->input_ids[i];
            if (id < 0 || id >= V) {
                return lt_fail(err, LT_ERR_DATA,
                               "batch: token id %d at row %d position %d is outside the "
                               "vocabulary [0, %d)",
                               id, r, t, V);
            }
            ids[i] = id;
            int32_t p = b->position_ids ? b->position_ids[i] : t;
            if (p < 0) {
                return lt_fail(err, LT_ERR_DATA, "batch: negative position id %d at row %d position %d", p, r, t);
            }
            if (b->position_ids && t > 0 && p == 0) seg = t; /* a packed sequence starts here */
            pos[i] = p;
            if (p > max_pos) max_pos = p;
            kvs[i] = seg;
            if (window > 0) kvw[i] = window_start(t, seg, window);
        }
        for (int t = 0; t < T; t++) {
            int i = r * T + t;
            int32_t target = -100;
            if (t + 1 < T && !(b->position_ids && b->position_ids[i + 1] == 0)) {
                int32_t lab = b->labels ? b->labels[i + 1] : b->input_ids[i + 1];
                if (lab != -100 && (lab < 0 || lab >= V)) {
                    return lt_fail(err, LT_ERR_DATA,
                                   "batch: label %d at row %d position %d is neither -100 "
                                   "nor a token id below %d",
                                   lab, r, t + 1, V);
                }
                target = lab;
            }
            tg[i] = target;
            if (target != -100) valid++;
        }
    }
    OPS->upload(BE, ws->ids, ids, (size_t)N * 4);
    OPS->upload(BE, ws->targets, tg, (size_t)N * 4);
    OPS->upload(BE, ws->pos, pos, (size_t)N * 4);
    OPS->upload(BE, ws->kv_start, kvs, (size_t)N * 4);
    if (window > 0) OPS->upload(BE, ws->kv_start_swa, kvw, (size_t)N * 4);
    if (ws->embed_keep) { /* the last N of the staging area (generation's cache slots) */
        float *keep = (float *)(tmp + 5 * N);
        for (int i = 0; i < N; i++) keep[i] = ids[i] == m->cfg.pad_token_id ? 0.0f : 1.0f;
        OPS->upload(BE, ws->embed_keep, keep, (size_t)N * sizeof(float));
    }
    ws->B = B;
    ws->N = N;
    /* longrope: transformers switches to the long factors when max(position_ids) + 1 exceeds
     * original_max_position_embeddings, for the whole batch */
    ws->inv_freq = m->inv_freq_long && (int64_t)max_pos + 1 > m->cfg.rope_original_max_position_embeddings
                       ? m->inv_freq_long
                       : m->inv_freq;
    *n_valid = valid;
    return LT_OK;
}

/* ---- the KV cache of generation ----------------------------------------------------------------- */

lt_status lt_kv_cache_create(lt_model *m, int B, int S_cap, int T_cap, lt_kv_cache **out, lt_error *err) {
    const lt_model_config *c = &m->cfg;
    *out = NULL;
    if (B <= 0 || S_cap <= 0 || T_cap <= 0 || T_cap > S_cap)
        return lt_fail(err, LT_ERR_INTERNAL, "KV cache: %d rows x %d slots (fills of %d) is not a shape", B, S_cap,
                       T_cap);
    lt_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return lt_fail(err, LT_ERR_NOMEM, "KV cache: out of memory");
    const size_t KD = (size_t)(c->num_key_value_heads * c->head_dim), L = (size_t)c->num_hidden_layers;
    const size_t cache = L * B * S_cap * KD;
    size_t total = 0;
    CARVE(kv->k, cache);
    CARVE(kv->v, cache);
    CARVE(kv->slot, (size_t)B * T_cap);
    CARVE(kv->len, B);
    CARVE(kv->last, B);
    kv->block = OPS->alloc(BE, total);
    if (!kv->block) {
        free(kv);
        return lt_fail(err, LT_ERR_NOMEM, "cannot allocate the KV cache (%.1f MiB) for %d rows x %d positions",
                       (double)total / (1 << 20), B, S_cap);
    }
    void **f[] = {(void **)&kv->k, (void **)&kv->v, (void **)&kv->slot, (void **)&kv->len, (void **)&kv->last};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) relocate(f[i], kv->block);
    kv->B = B;
    kv->S_cap = S_cap;
    kv->T_cap = T_cap;
    *out = kv;
    return LT_OK;
}

void lt_kv_cache_free(lt_model *m, lt_kv_cache *kv) {
    if (!kv) return;
    if (kv->block) OPS->free(BE, kv->block);
    free(kv);
}

lt_status lt_stage_cached(lt_model *m, lt_workspace *ws, lt_kv_cache *kv, lt_kv_mode mode, const int32_t *ids,
                          const int32_t *n, int B, int T, const float *inv_freq, lt_error *err) {
    if (B != kv->B || B > ws->B_cap || T <= 0 || (size_t)B * T > (size_t)ws->N_cap ||
        (mode == LT_KV_DECODE ? T != 1 : T > kv->T_cap))
        return lt_fail(err, LT_ERR_INTERNAL, "generation: %d x %d tokens do not fit the planned %d x %d", B, T, kv->B,
                       kv->T_cap);
    const int N = B * T;
    const int64_t window = m->cfg.sliding_window;
    int32_t *pos = ws->host_stage, *kvs = pos + N, *kvw = kvs + N, *slot = kvw + N, *aux = slot + N;
    for (int b = 0; b < B; b++) {
        if (n[b] < 1 || n[b] > (mode == LT_KV_DECODE ? kv->S_cap : T))
            return lt_fail(err, LT_ERR_INTERNAL, "generation: row %d has %d tokens", b, n[b]);
        for (int t = 0; t < T; t++) {
            const int i = b * T + t;
            const int32_t p = mode == LT_KV_DECODE ? n[b] - 1 : t; /* right-padded rows: position = index */
            pos[i] = p;
            kvs[i] = 0;
            if (window > 0) kvw[i] = window_start(p, 0, window);
            slot[i] = b * kv->S_cap + p;
        }
        aux[b] = mode == LT_KV_DECODE ? n[b] : b * T + n[b] - 1; /* decode: len; fill: the last token */
    }
    OPS->upload(BE, ws->ids, ids, (size_t)N * 4);
    OPS->upload(BE, ws->pos, pos, (size_t)N * 4);
    OPS->upload(BE, ws->kv_start, kvs, (size_t)N * 4);
    if (window > 0) OPS->upload(BE, ws->kv_start_swa, kvw, (size_t)N * 4);
    OPS->upload(BE, kv->slot, slot, (size_t)N * 4);
    OPS->upload(BE, mode == LT_KV_DECODE ? kv->len : kv->last, aux, (size_t)B * 4);
    kv->mode = mode;
    ws->B = B;
    ws->T = T;
    ws->N = N;
    ws->inv_freq = inv_freq;
    return LT_OK;
}
