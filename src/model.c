/*
 * model.c - loading a Hugging Face model directory into backend weights; model info; eval entry points.
 *
 * defines: lt_model_load, lt_model_free, lt_model_get_info, lt_model_loss, lt_model_logits
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

const char *const lt_proj_names[P_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
const char *const lt_proj_parent[P_COUNT] = {"self_attn", "self_attn", "self_attn", "self_attn",
                                             "mlp", "mlp", "mlp"};

void lt_proj_dims(const lt_model_config *c, lt_proj p, int *in, int *out) {
    const int H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const int QD = (int)(c->num_attention_heads * c->head_dim), KD = (int)(c->num_key_value_heads * c->head_dim);
    static const int dummy = 0;
    (void)dummy;
    switch (p) {
    case P_Q: *in = H; *out = QD; break;
    case P_K: case P_V: *in = H; *out = KD; break;
    case P_O: *in = QD; *out = H; break;
    case P_GATE: case P_UP: *in = H; *out = I; break;
    case P_DOWN: *in = I; *out = H; break;
    default: *in = *out = 0;
    }
}

static lt_status track(lt_model *m, void *p, lt_error *err) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return LT_OK;
}

/* Find tensor `name`, check its shape is (d0[, d1]) and give a backend f32 pointer to it: the mapped
 * bytes themselves when the backend shares host memory and the data is f32 and aligned, else a
 * converted copy. */
static lt_status find_weight(lt_model *m, const char *name, int64_t d0, int64_t d1, const lt_st_tensor **tp,
                             lt_error *err) {
    const lt_st_tensor *t = lt_st_set_find(m->st, name);
    if (!t) return lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" is missing from the checkpoint", m->dir, name);
    int ndim = d1 > 0 ? 2 : 1;
    int ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (!ok) {
        char got[128] = "", *g = got;
        for (int i = 0; i < t->ndim && g < got + sizeof got - 24; i++)
            g += sprintf(g, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (ndim == 2)
            return lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" has shape [%s], expected [%lld, %lld] from config.json",
                           m->dir, name, got, (long long)d0, (long long)d1);
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" has shape [%s], expected [%lld] from config.json",
                       m->dir, name, got, (long long)d0);
    }
    if (t->dtype != LT_DT_F32 && t->dtype != LT_DT_F16 && t->dtype != LT_DT_BF16)
        return lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s; weights must be F32, F16 or BF16",
                       m->dir, name, lt_dtype_name(t->dtype));
    *tp = t;
    return LT_OK;
}

static lt_status load_weight(lt_model *m, int use_mmap, const char *name, int64_t d0, int64_t d1,
                             float **out, lt_error *err) {
    const lt_st_tensor *t;
    lt_status st = find_weight(m, name, d0, d1, &t, err);
    if (st != LT_OK) return st;
    const size_t n = (size_t)t->numel;
    m->n_params += (int64_t)n;
    m->weight_bytes += (int64_t)(n * sizeof(float));
    if (m->be->ops->host_memory && use_mmap && t->dtype == LT_DT_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = (float *)(uintptr_t)t->data; /* read-only use: the mapping is private */
        return LT_OK;
    }
    float *dst = m->be->ops->alloc(m->be, n * sizeof(float));
    if (!dst) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for \"%s\"", m->dir, n * 4, name);
    st = track(m, dst, err);
    if (st != LT_OK) { m->be->ops->free(m->be, dst); return st; }
    if (m->be->ops->host_memory) {
        lt_convert_to_f32(dst, t->data, t->dtype, n);
    } else {
        float *tmp = malloc(n * sizeof(float));
        if (!tmp) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory converting \"%s\"", m->dir, name);
        lt_convert_to_f32(tmp, t->data, t->dtype, n);
        m->be->ops->upload(m->be, dst, tmp, n * sizeof(float));
        free(tmp);
    }
    *out = dst;
    return LT_OK;
}

/* Backend allocation in the packed bf16 layout of W (out,in), filled from host f32 `src`. */
static lt_status pack_bf16(lt_model *m, const float *src, int out, int in, float **dst_out, lt_error *err) {
    const size_t bytes = m->be->ops->bf16_weight_bytes(m->be, out, in);
    void *dst = m->be->ops->alloc(m->be, bytes);
    if (!dst) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for a bf16 weight", m->dir, bytes);
    lt_status st = track(m, dst, err);
    if (st != LT_OK) { m->be->ops->free(m->be, dst); return st; }
    m->be->ops->bf16_weight_pack(m->be, dst, src, out, in);
    m->n_params += (int64_t)out * in;
    m->weight_bytes += (int64_t)bytes;
    *dst_out = dst; /* not f32: layers[].w of a bf16 model hold packed weights (model.h) */
    return LT_OK;
}

/* A projection weight (out,in) of a LT_BASE_BF16 model: read as f32 (in place when the file holds
 * aligned f32), packed to bf16 in the backend; the f32 bytes are not kept. */
static lt_status load_weight_bf16(lt_model *m, const char *name, int out, int in, float **w, lt_error *err) {
    const lt_st_tensor *t;
    lt_status st = find_weight(m, name, out, in, &t, err);
    if (st != LT_OK) return st;
    const size_t n = (size_t)t->numel;
    float *tmp = NULL;
    const float *src = t->data;
    if (t->dtype != LT_DT_F32 || ((uintptr_t)t->data & 3) != 0) {
        if (!(tmp = malloc(n * sizeof(float))))
            return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory converting \"%s\"", m->dir, name);
        lt_convert_to_f32(tmp, t->data, t->dtype, n);
        src = tmp;
    }
    st = pack_bf16(m, src, out, in, w, err);
    free(tmp);
    return st;
}

LT_API void lt_model_params_init(lt_model_params *out, size_t size) {
    lt_model_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->use_mmap = 1;
    lt_fill_struct(out, size, p, sizeof *p);
}

static lt_status model_load(lt_model *m, const lt_model_params *p, lt_error *err) {
    char path[4200];
    lt_path_join(path, sizeof path, m->dir, "config.json");
    lt_status st = lt_config_load(path, &m->cfg, err);
    if (st != LT_OK) return st;
    const lt_model_config *c = &m->cfg;
    st = lt_st_set_open_dir(m->dir, p->use_mmap, &m->st, err);
    if (st != LT_OK) return st;

    const int64_t V = c->vocab_size, H = c->hidden_size, I = c->intermediate_size;
    const int64_t QD = c->num_attention_heads * c->head_dim, KD = c->num_key_value_heads * c->head_dim;
    if ((st = load_weight(m, p->use_mmap, "model.embed_tokens.weight", V, H, &m->embed, err))) return st;
    if ((st = load_weight(m, p->use_mmap, "model.norm.weight", H, 0, &m->final_norm, err))) return st;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if ((st = load_weight(m, p->use_mmap, "lm_head.weight", V, H, &m->lm_head, err))) {
        if (st == LT_ERR_MISSING)
            lt_fail_prefix(err, "config.json has tie_word_embeddings false");
        return st;
    }
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    char name[256];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        lt_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if ((st = load_weight(m, p->use_mmap, name, H, 0, &L->attn_norm, err))) return st;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if ((st = load_weight(m, p->use_mmap, name, H, 0, &L->mlp_norm, err))) return st;
        for (int q = 0; q < P_COUNT; q++) {
            int in, out;
            lt_proj_dims(c, (lt_proj)q, &in, &out);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, lt_proj_parent[q], lt_proj_names[q]);
            if (m->base_dtype == LT_BASE_BF16) st = load_weight_bf16(m, name, out, in, &L->w[q], err);
            else st = load_weight(m, p->use_mmap, name, out, in, &L->w[q], err);
            if (st != LT_OK) return st;
        }
    }
    (void)QD; (void)KD; (void)I;

    /* RoPE inverse frequencies */
    m->rot_dim = c->rot_dim;
    if (m->rot_dim <= 0) return lt_fail(err, LT_ERR_FORMAT, "%s: rotary dimension %d is not positive", m->dir, m->rot_dim);
    float *inv = malloc((size_t)m->rot_dim / 2 * sizeof(float));
    if (!inv) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    if (lt_rope_inv_freq(c, inv, m->rot_dim / 2) != m->rot_dim / 2) {
        free(inv);
        return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: cannot compute the RoPE frequencies for this config", m->dir);
    }
    m->inv_freq = m->be->ops->alloc(m->be, (size_t)m->rot_dim / 2 * sizeof(float));
    if (!m->inv_freq || (st = track(m, m->inv_freq, err)) != LT_OK) {
        free(inv);
        return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    }
    m->be->ops->upload(m->be, m->inv_freq, inv, (size_t)m->rot_dim / 2 * sizeof(float));
    free(inv);
    return m->be->ops->sync(m->be);
}

LT_API lt_status lt_model_load(lt_context *ctx, const char *dir, const lt_model_params *params, lt_model **out) {
    lt_error *terr = lt_thread_error();
    lt_error_clear(terr);
    if (!out) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_model_load: out is NULL");
    *out = NULL;
    if (!ctx || !dir) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_model_load: ctx and dir must not be NULL");
    lt_model_params p;
    lt_model_params_init(&p, sizeof p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof p)
            return lt_fail(terr, LT_ERR_ARGUMENT, "lt_model_load: params->size %zu is not a size this library "
                           "knows (call lt_model_params_init)", params->size);
        memcpy(&p, params, params->size);
    }
    lt_model *m = calloc(1, sizeof *m);
    if (!m) return lt_fail(terr, LT_ERR_NOMEM, "lt_model_load: out of memory");
    m->ctx = ctx;
    m->be = ctx->be;
    if (strlen(dir) >= sizeof m->dir) {
        free(m);
        return lt_fail(terr, LT_ERR_ARGUMENT, "lt_model_load: path too long");
    }
    strcpy(m->dir, dir);
    if (p.base_dtype != LT_BASE_F32 && p.base_dtype != LT_BASE_BF16) {
        free(m);
        return lt_fail(terr, LT_ERR_ARGUMENT, "lt_model_load: base_dtype %d is neither LT_BASE_F32 (0) nor "
                       "LT_BASE_BF16 (1)", p.base_dtype);
    }
    m->base_dtype = p.base_dtype;
    double t0 = lt_now_seconds();
    lt_status st = model_load(m, &p, terr);
    if (st != LT_OK) {
        lt_model_free(m);
        return st;
    }
    lt_log(ctx, LT_LOG_INFO, "loaded %s (%s, %lld parameters) in %.2f s", dir, m->cfg.architecture,
           (long long)m->n_params, lt_now_seconds() - t0);
    *out = m;
    return LT_OK;
}

LT_API void lt_model_free(lt_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) m->be->ops->free(m->be, m->owned[i]);
    free(m->owned);
    free(m->layers);
    lt_st_set_close(m->st);
    free(m);
}

/* per thread: the last failed call on a model from this thread, and which model it was */
static _Thread_local struct { const lt_model *model; lt_error err; } model_errors;

lt_error *lt_model_error(const lt_model *m) {
    model_errors.model = m;
    lt_error_clear(&model_errors.err);
    return &model_errors.err;
}

LT_API const char *lt_model_last_error(const lt_model *m) {
    if (!m) return "lt_model_last_error: model is NULL";
    return model_errors.model == m ? model_errors.err.msg : "";
}

LT_API lt_status lt_model_get_info(const lt_model *m, lt_model_info *info) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!info || info->size < sizeof(size_t))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_get_info: info is NULL or info->size is not set");
    lt_model_info o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    const lt_model_config *c = &m->cfg;
    snprintf(o.architecture, sizeof o.architecture, "%s", c->architecture);
    const lt_st_tensor *t = m->st ? lt_st_set_find(m->st, "model.embed_tokens.weight") : NULL;
    snprintf(o.dtype, sizeof o.dtype, "%s", t ? lt_dtype_name(t->dtype) : "F32");
    o.vocab_size = c->vocab_size;
    o.hidden_size = c->hidden_size;
    o.intermediate_size = c->intermediate_size;
    o.n_layers = c->num_hidden_layers;
    o.n_heads = c->num_attention_heads;
    o.n_kv_heads = c->num_key_value_heads;
    o.head_dim = c->head_dim;
    o.max_position_embeddings = c->max_position_embeddings;
    o.rope_theta = c->rope_theta;
    o.rms_norm_eps = c->rms_norm_eps;
    o.tied_embeddings = c->tie_word_embeddings;
    o.n_params = m->n_params;
    o.weight_bytes = m->weight_bytes;
    size_t n = info->size < sizeof o ? info->size : sizeof o;
    memcpy(info, &o, n);
    info->size = n;
    return LT_OK;
}

/* ---- evaluation entry points ------------------------------------------------------------------ */

static lt_status eval_batch(lt_model *m, const lt_adapter *ad, const lt_batch *b, double *loss_sum,
                            int64_t *n_tokens, float *logits, size_t logits_count) {
    lt_error *err = lt_model_error(m);
    if (!b) return lt_fail(err, LT_ERR_ARGUMENT, "batch is NULL");
    if (ad && ad->model != m) return lt_fail(err, LT_ERR_ARGUMENT, "the adapter belongs to another model");
    if (logits && logits_count < (size_t)b->n_rows * b->seq_len * m->cfg.vocab_size)
        return lt_fail(err, LT_ERR_ARGUMENT, "logits buffer holds %zu floats, need %lld", logits_count,
                       (long long)b->n_rows * b->seq_len * m->cfg.vocab_size);
    lt_workspace *ws = NULL;
    lt_status st = lt_workspace_create(m, b->n_rows > 0 ? b->n_rows : 1, b->seq_len > 0 ? b->seq_len : 1,
                                       ad ? ad->p.rank : 0, LT_WS_FORWARD, &ws, err);
    if (st != LT_OK) return st;
    int64_t valid = 0;
    double sum = 0;
    st = lt_stage_batch(m, ws, b, &valid, err);
    if (st == LT_OK) st = lt_forward_backward(m, ad, ws, NULL, 0.0f, &sum, logits, err);
    lt_workspace_free(ws);
    if (st != LT_OK) return st;
    if (loss_sum) *loss_sum = sum;
    if (n_tokens) *n_tokens = valid;
    return LT_OK;
}

LT_API lt_status lt_model_loss(lt_model *m, const lt_adapter *ad, const lt_batch *b, double *loss_sum,
                               int64_t *n_tokens) {
    if (!m) return LT_ERR_ARGUMENT;
    if (!loss_sum || !n_tokens) return lt_fail(lt_model_error(m), LT_ERR_ARGUMENT, "lt_model_loss: NULL output");
    return eval_batch(m, ad, b, loss_sum, n_tokens, NULL, 0);
}

LT_API lt_status lt_model_logits(lt_model *m, const lt_adapter *ad, const lt_batch *b, float *out, size_t count) {
    if (!m) return LT_ERR_ARGUMENT;
    if (!out) return lt_fail(lt_model_error(m), LT_ERR_ARGUMENT, "lt_model_logits: out is NULL");
    return eval_batch(m, ad, b, NULL, NULL, out, count);
}

/* ---- experimental: random models and saving ------------------------------------------------------ */

#include "loratune_experimental.h"

static uint64_t rnd_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* fill n floats: value `one` when std == 0, else N(0, std^2) (Box-Muller). packed_out > 0: a (packed_out,
 * n/packed_out) projection of a bf16 model, stored packed. */
static lt_status random_weight(lt_model *m, size_t n, float std, float one, uint64_t *rng, float **out, lt_error *err,
                               int packed_out) {
    float *h = malloc(n * sizeof *h);
    float *d = packed_out > 0 ? NULL : m->be->ops->alloc(m->be, n * sizeof(float));
    lt_status st = (!h || (!d && packed_out <= 0)) ? lt_fail(err, LT_ERR_NOMEM, "lt_model_create_random: out of memory")
                   : d ? track(m, d, err) : LT_OK;
    if (st != LT_OK) {
        free(h);
        if (d) m->be->ops->free(m->be, d);
        return st;
    }
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ((double)(rnd_next(rng) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(rnd_next(rng) >> 11) / 9007199254740992.0, rad = sqrt(-2.0 * log(u1));
        h[i] = std > 0 ? (float)(std * rad * cos(2 * M_PI * u2)) : one;
        if (i + 1 < n) h[i + 1] = std > 0 ? (float)(std * rad * sin(2 * M_PI * u2)) : one;
    }
    if (packed_out > 0) {
        st = pack_bf16(m, h, packed_out, (int)(n / (size_t)packed_out), out, err);
        free(h);
        return st;
    }
    m->be->ops->upload(m->be, d, h, n * sizeof(float));
    free(h);
    m->n_params += (int64_t)n;
    m->weight_bytes += (int64_t)(n * sizeof(float));
    *out = d;
    return LT_OK;
}

LT_API lt_status lt_model_create_random(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
                                        lt_model **out) {
    return lt_model_create_random_params(ctx, config_json, seed, init_std, NULL, out);
}

LT_API lt_status lt_model_create_random_params(lt_context *ctx, const char *config_json, uint64_t seed,
                                               float init_std, const lt_model_params *params, lt_model **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: out is NULL");
    *out = NULL;
    if (!ctx || !config_json) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: ctx and config_json are required");
    if (!(init_std > 0)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: init_std must be positive");
    lt_model_params p;
    lt_model_params_init(&p, sizeof p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof p)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: params->size %zu is not a size this "
                           "library knows (call lt_model_params_init)", params->size);
        memcpy(&p, params, params->size);
    }
    if (p.base_dtype != LT_BASE_F32 && p.base_dtype != LT_BASE_BF16)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: base_dtype %d is neither LT_BASE_F32 (0) "
                       "nor LT_BASE_BF16 (1)", p.base_dtype);
    lt_model *m = calloc(1, sizeof *m);
    if (!m) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    m->base_dtype = p.base_dtype;
    m->ctx = ctx;
    m->be = ctx->be;
    snprintf(m->dir, sizeof m->dir, "(random)");
    lt_status st = lt_config_parse(config_json, strlen(config_json), "config", &m->cfg, err);
    const lt_model_config *c = &m->cfg;
    uint64_t rng = seed;
    const size_t V = (size_t)c->vocab_size, H = (size_t)c->hidden_size;
    if (st == LT_OK) st = random_weight(m, V * H, init_std, 0, &rng, &m->embed, err, 0);
    if (st == LT_OK) st = random_weight(m, H, 0, 1.0f, &rng, &m->final_norm, err, 0);
    if (st == LT_OK) {
        if (c->tie_word_embeddings) m->lm_head = m->embed;
        else st = random_weight(m, V * H, init_std, 0, &rng, &m->lm_head, err, 0);
    }
    if (st == LT_OK && !(m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers)))
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int l = 0; st == LT_OK && l < c->num_hidden_layers; l++) {
        lt_layer *Ly = &m->layers[l];
        st = random_weight(m, H, 0, 1.0f, &rng, &Ly->attn_norm, err, 0);
        if (st == LT_OK) st = random_weight(m, H, 0, 1.0f, &rng, &Ly->mlp_norm, err, 0);
        for (int q = 0; st == LT_OK && q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            st = random_weight(m, (size_t)in * o, init_std, 0, &rng, &Ly->w[q], err,
                               m->base_dtype == LT_BASE_BF16 ? o : 0);
        }
    }
    if (st == LT_OK) {
        m->rot_dim = c->rot_dim;
        float *inv = malloc((size_t)m->rot_dim / 2 * sizeof(float));
        if (!inv || lt_rope_inv_freq(c, inv, m->rot_dim / 2) != m->rot_dim / 2) st = lt_fail(err, LT_ERR_FORMAT, "bad RoPE config");
        else if (!(m->inv_freq = m->be->ops->alloc(m->be, (size_t)m->rot_dim / 2 * sizeof(float))) ||
                 (st = track(m, m->inv_freq, err)) != LT_OK)
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        else m->be->ops->upload(m->be, m->inv_freq, inv, (size_t)m->rot_dim / 2 * sizeof(float));
        free(inv);
    }
    if (st != LT_OK) { lt_model_free(m); return st; }
    *out = m;
    return LT_OK;
}

LT_API lt_status lt_model_save(lt_model *m, const char *dir) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_save: dir is NULL");
    return lt_model_export(m, NULL, dir, 2ull << 30, err);
}
