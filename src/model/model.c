/*
 * model.c - loading a Hugging Face model directory into backend weights; model info; quantizing a
 * loaded model and saving it in the bitsandbytes layout; random models (experimental).
 *
 * defines: lt_model_load, lt_model_free, lt_model_get_info, lt_model_quantize, lt_model_save_quantized,
 *          lt_model_create_random(_params), lt_proj_dims, lt_model_modules, lt_module_dims
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "formats/quant.h"
#include "model/model.h"

const char *const lt_proj_names[P_COUNT] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj"};
const char *const lt_proj_parent[P_COUNT] = {"self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};

void lt_proj_dims(const lt_model_config *c, lt_proj p, int *in, int *out) {
    const int H = (int)c->hidden_size, I = (int)c->intermediate_size;
    const int QD = (int)(c->num_attention_heads * c->head_dim), KD = (int)(c->num_key_value_heads * c->head_dim);
    static const int dummy = 0;
    (void)dummy;
    switch (p) {
    case P_Q:
        *in = H;
        *out = QD;
        break;
    case P_K:
    case P_V:
        *in = H;
        *out = KD;
        break;
    case P_O:
        *in = QD;
        *out = H;
        break;
    case P_GATE:
    case P_UP:
        *in = H;
        *out = I;
        break;
    case P_DOWN:
        *in = I;
        *out = H;
        break;
    default: *in = *out = 0;
    }
}

int lt_model_modules(const lt_model_config *c, lt_module out[P_COUNT]) {
    if (c->fused_proj) {
        out[0] = (lt_module){"self_attn", "qkv_proj", P_Q, 3};
        out[1] = (lt_module){"self_attn", "o_proj", P_O, 1};
        out[2] = (lt_module){"mlp", "gate_up_proj", P_GATE, 2};
        out[3] = (lt_module){"mlp", "down_proj", P_DOWN, 1};
        return 4;
    }
    for (int p = 0; p < P_COUNT; p++) out[p] = (lt_module){lt_proj_parent[p], lt_proj_names[p], p, 1};
    return P_COUNT;
}

int lt_layer_norms(const lt_model_config *c, lt_layer_norm out[LT_MAX_LAYER_NORMS]) {
#define NORM(nm, d, f) \
    (lt_layer_norm) { nm, d, offsetof(lt_layer, f), offsetof(lt_layer, f##_file) }
    const int64_t H = c->hidden_size, HD = c->head_dim;
    int n = 0;
    if (!c->no_pre_norms) out[n++] = NORM("input_layernorm", H, attn_norm);
    if (c->sandwich_norms) { /* Gemma 2 / 3: pre and post norms around both sublayers; OLMo 2: post only */
        if (!c->no_pre_norms) out[n++] = NORM("pre_feedforward_layernorm", H, mlp_norm);
        out[n++] = NORM("post_attention_layernorm", H, post_attn_norm);
        out[n++] = NORM("post_feedforward_layernorm", H, post_ff_norm);
    } else {
        out[n++] = NORM("post_attention_layernorm", H, mlp_norm);
    }
    if (c->qk_norm) { /* per head (HD), or OLMo 2's over the whole projection */
        const int full = c->qk_norm == LT_QK_NORM_FULL;
        out[n++] = NORM("self_attn.q_norm", full ? c->num_attention_heads * HD : HD, q_norm);
        out[n++] = NORM("self_attn.k_norm", full ? c->num_key_value_heads * HD : HD, k_norm);
    }
#undef NORM
    return n;
}

void lt_module_dims(const lt_model_config *c, const lt_module *mod, int *in, int *out) {
    int o = 0, i = 0;
    for (int p = mod->first; p < mod->first + mod->count; p++) {
        int pi, po;
        lt_proj_dims(c, (lt_proj)p, &pi, &po);
        i = pi;
        o += po;
    }
    *in = i;
    *out = o;
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
static lt_status load_weight(lt_model *m, int use_mmap, const char *name, int64_t d0, int64_t d1, float **out,
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
            return lt_fail(err, LT_ERR_SHAPE,
                           "%s: tensor \"%s\" has shape [%s], expected [%lld, %lld] from config.json", m->dir, name,
                           got, (long long)d0, (long long)d1);
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" has shape [%s], expected [%lld] from config.json", m->dir,
                       name, got, (long long)d0);
    }
    if (t->dtype != LT_DT_F32 && t->dtype != LT_DT_F16 && t->dtype != LT_DT_BF16)
        return lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s; weights must be F32, F16 or BF16", m->dir,
                       name, lt_dtype_name(t->dtype));
    const size_t n = (size_t)t->numel;
    m->n_params += (int64_t)n;
    m->weight_bytes += (int64_t)(n * sizeof(float));
    if (m->be->ops->host_memory && use_mmap && t->dtype == LT_DT_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = (float *)(uintptr_t)t->data; /* read-only use: the mapping is private */
        return LT_OK;
    }
    float *dst = m->be->ops->alloc(m->be, n * sizeof(float));
    if (!dst) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for \"%s\"", m->dir, n * 4, name);
    lt_status st = track(m, dst, err);
    if (st != LT_OK) {
        m->be->ops->free(m->be, dst);
        return st;
    }
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

/* ---- quantized projections ------------------------------------------------------------------- */

/* remove p from the owned list and free it (a converted f32 copy replaced by its quantized form) */
static void untrack_free(lt_model *m, void *p) {
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == p) {
            m->owned[i] = m->owned[--m->n_owned];
            m->be->ops->free(m->be, p);
            return;
        }
}

/* a backend copy of host bytes, owned by the model */
static lt_status upload_owned(lt_model *m, const void *host, size_t bytes, void **out, lt_error *err) {
    void *d = m->be->ops->alloc(m->be, bytes ? bytes : 1);
    if (!d) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for quantized weights", m->dir, bytes);
    lt_status st = track(m, d, err);
    if (st != LT_OK) {
        m->be->ops->free(m->be, d);
        return st;
    }
    m->be->ops->upload(m->be, d, host, bytes);
    *out = d;
    return LT_OK;
}

/* the 8-bit map of double quantization, once per model on the backend */
static lt_status model_code8(lt_model *m, lt_error *err) {
    if (m->code8) return LT_OK;
    return upload_owned(m, lt_quant_code8(), 256 * sizeof(float), (void **)&m->code8, err);
}

/* Point W at a backend copy of the parts of host tensor q (rows = out): one allocation per weight,
 * statistics first (their f32 parts stay aligned), then the codes. */
static lt_status weight_from_qtensor(lt_model *m, lt_weight *W, const lt_qtensor *q, lt_error *err) {
    lt_qdesc d = lt_qtensor_desc(q);
    const size_t nd = lt_qtensor_data_bytes(q);
    const size_t na = q->double_quant ? (size_t)q->n_blocks2 * 4 : (size_t)q->n_blocks * 4; /* f32 part */
    const size_t nq = q->double_quant ? (size_t)q->n_blocks : 0;                            /* u8 codes  */
    char *blk = NULL;
    lt_status st = q->double_quant ? model_code8(m, err) : LT_OK;
    if (st == LT_OK) {
        blk = m->be->ops->alloc(m->be, na + nq + nd);
        if (!blk)
            return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for quantized weights", m->dir,
                           na + nq + nd);
        if ((st = track(m, blk, err)) != LT_OK) {
            m->be->ops->free(m->be, blk);
            return st;
        }
        m->be->ops->upload(m->be, blk, q->double_quant ? (const void *)q->absmax2 : (const void *)q->absmax, na);
        if (nq) m->be->ops->upload(m->be, blk + na, q->qabsmax, nq);
        m->be->ops->upload(m->be, blk + na + nq, q->data, nd);
        d.data = (const uint8_t *)(blk + na + nq);
        if (q->double_quant) {
            d.absmax2 = (const float *)blk;
            d.qabsmax = (const uint8_t *)(blk + na);
            d.code8 = m->code8;
        } else {
            d.absmax = (const float *)blk;
        }
    }
    if (st != LT_OK) return st;
    W->format = LT_WEIGHT_QUANT;
    W->f32 = NULL;
    W->q = d;
    W->double_quant = q->double_quant;
    m->weight_bytes += lt_qtensor_bytes(q);
    m->quant_bytes += lt_qtensor_bytes(q);
    m->quant_params += q->numel;
    m->quant = q->format;
    m->quant_blocksize = q->blocksize;
    m->quant_double = q->double_quant;
    return LT_OK;
}

/* Quantize a loaded f32 projection (out, in) in place of its f32 form. */
static lt_status quantize_weight(lt_model *m, lt_weight *W, int out, int in, const lt_model_params *p, const char *name,
                                 int free_f32, lt_error *err) {
    const size_t n = (size_t)out * in;
    float *host = W->f32, *tmp = NULL;
    if (!m->be->ops->host_memory) {
        tmp = host = malloc(n * sizeof(float));
        if (!tmp) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory quantizing \"%s\"", m->dir, name);
        m->be->ops->download(m->be, tmp, W->f32, n * sizeof(float));
    }
    lt_quant_params qp = {
        .size = sizeof qp, .format = p->quantization, .blocksize = p->quant_blocksize, .double_quant = p->double_quant};
    const int64_t shape[2] = {out, in};
    lt_qtensor *q = NULL;
    lt_status st = lt_qtensor_quantize_ex(host, shape, 2, &qp, NULL, &q, err);
    free(tmp);
    if (st != LT_OK) return lt_fail_prefix(err, "%s: quantizing \"%s\"", m->dir, name);
    float *f32 = W->f32;
    m->weight_bytes -= (int64_t)(n * sizeof(float));
    st = weight_from_qtensor(m, W, q, err);
    lt_qtensor_free(q);
    if (st == LT_OK && free_f32) untrack_free(m, f32); /* a no-op for weights used in place from the mapping */
    return st;
}

/* bitsandbytes 4-bit serialization of weight `name` (transformers' Linear4bit state dict):
 *   name (U8 packed, any shape), name.absmax (F32, or U8 with nested), name.quant_map (F32 16),
 *   name.nested_absmax (F32), name.nested_quant_map (F32 256), name.quant_state.bitsandbytes__nf4|fp4
 *   (U8: JSON {quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset}).
 * Returns LT_ERR_MISSING (without a message) when name is not stored that way. */
static lt_status load_bnb_weight(lt_model *m, const char *name, int out, int in, lt_weight *W, lt_error *err) {
    char key[320];
    const lt_st_tensor *qs = NULL;
    const char *qtype = NULL;
    static const char *const types[] = {"nf4", "fp4"};
    for (int i = 0; i < 2 && !qs; i++) {
        snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__%s", name, types[i]);
        if ((qs = lt_st_set_find(m->st, key))) qtype = types[i];
    }
    if (!qs) return LT_ERR_MISSING;
    json_error_t je;
    json_t *js = json_loadb(qs->data, (size_t)qs->nbytes, 0, &je);
    if (!js) return lt_fail(err, LT_ERR_JSON, "%s: %s does not parse: %s", m->dir, key, je.text);
    lt_status st = LT_OK;
    json_t *bs = json_object_get(js, "blocksize"), *shape = json_object_get(js, "shape");
    json_t *noff = json_object_get(js, "nested_offset"), *nbs = json_object_get(js, "nested_blocksize");
    if (!json_is_integer(bs) || !json_is_array(shape) || json_array_size(shape) != 2 ||
        json_integer_value(json_array_get(shape, 0)) != out || json_integer_value(json_array_get(shape, 1)) != in) {
        st = lt_fail(err, LT_ERR_SHAPE, "%s: %s: blocksize or shape missing, or shape is not [%d, %d]", m->dir, key,
                     out, in);
    } else if (noff && nbs && json_integer_value(nbs) != LT_NESTED_BLOCK) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: %s: nested_blocksize %lld (only 256 is supported)", m->dir, key,
                     (long long)json_integer_value(nbs));
    }
    const int dq = noff != NULL;
    lt_qtensor *q = NULL;
    const int64_t sh[2] = {out, in};
    if (st == LT_OK)
        st = lt_qtensor_alloc(sh, 2, !strcmp(qtype, "nf4") ? LT_QUANT_NF4 : LT_QUANT_FP4, (int)json_integer_value(bs),
                              dq, &q, err);
    if (st == LT_OK && dq) q->offset = (float)json_number_value(noff);
    json_decref(js);
    /* the parts, each checked for dtype and byte count */
    struct {
        const char *suffix;
        lt_dtype dt;
        void *dst;
        size_t bytes;
        const void *expect;
    } parts[] = {
        {"", LT_DT_U8, q ? q->data : NULL, q ? lt_qtensor_data_bytes(q) : 0, NULL},
        {".absmax", dq ? LT_DT_U8 : LT_DT_F32, q ? (dq ? (void *)q->qabsmax : (void *)q->absmax) : NULL,
         q ? (size_t)q->n_blocks * (dq ? 1 : 4) : 0, NULL},
        {".quant_map", LT_DT_F32, NULL, 64, q ? lt_quant_code4(q->format) : NULL},
        {".nested_absmax", LT_DT_F32, q ? q->absmax2 : NULL, q ? (size_t)q->n_blocks2 * 4 : 0, NULL},
        {".nested_quant_map", LT_DT_F32, NULL, 1024, lt_quant_code8()},
    };
    for (int i = 0; st == LT_OK && i < (dq ? 5 : 3); i++) {
        snprintf(key, sizeof key, "%s%s", name, parts[i].suffix);
        const lt_st_tensor *t = lt_st_set_find(m->st, key);
        if (!t)
            st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" of a bitsandbytes %s weight is missing", m->dir, key,
                         qtype);
        else if (t->dtype != parts[i].dt || t->nbytes != parts[i].bytes)
            st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" is %s with %llu bytes, expected %s with %zu", m->dir,
                         key, lt_dtype_name(t->dtype), (unsigned long long)t->nbytes, lt_dtype_name(parts[i].dt),
                         parts[i].bytes);
        else if (parts[i].expect && memcmp(t->data, parts[i].expect, parts[i].bytes))
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: tensor \"%s\" is not the standard bitsandbytes %s code", m->dir,
                         key, i == 2 ? qtype : "dynamic 8-bit");
        else if (parts[i].dst) memcpy(parts[i].dst, t->data, parts[i].bytes);
    }
    if (st == LT_OK) {
        m->n_params += (int64_t)out * in;
        st = weight_from_qtensor(m, W, q, err);
    }
    lt_qtensor_free(q);
    return st;
}

/* Point the projections of module mod at the row blocks of its f32 weight w (a fused module such as
 * Phi-3's qkv_proj holds several), quantizing each block when p asks for it; the f32 form is freed
 * once every block is quantized. */
static lt_status split_module(lt_model *m, lt_layer *L, const lt_module *mod, float *w, const lt_model_params *p,
                              const char *name, lt_error *err) {
    float *base = w;
    for (int q = mod->first; q < mod->first + mod->count; q++) {
        int pi, po;
        lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
        L->w[q] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = w};
        w += (size_t)po * pi;
        if (p->quantization == LT_QUANT_NONE) continue;
        lt_status st = quantize_weight(m, &L->w[q], po, pi, p, name, 0, err);
        if (st != LT_OK) return st;
    }
    if (p->quantization != LT_QUANT_NONE) untrack_free(m, base); /* a no-op for weights used in place */
    return LT_OK;
}

/* A norm weight (C): *file gets the checkpoint tensor, *compute what the forward multiplies by:
 * the same pointer, or a copy holding norm_offset + w (Gemma's (1 + w) RMSNorm). */
static lt_status load_norm(lt_model *m, int use_mmap, const char *name, int64_t C, float **compute, float **file,
                           lt_error *err) {
    lt_status st = load_weight(m, use_mmap, name, C, 0, file, err);
    if (st != LT_OK) return st;
    *compute = *file;
    if (m->cfg.norm_offset == 0.0f) return LT_OK;
    float *h = malloc((size_t)C * sizeof *h);
    float *d = m->be->ops->alloc(m->be, (size_t)C * sizeof(float));
    if (!h || !d || (st = track(m, d, err)) != LT_OK) {
        free(h);
        if (d && st == LT_OK) m->be->ops->free(m->be, d);
        return st != LT_OK ? st : lt_fail(err, LT_ERR_NOMEM, "out of memory");
    }
    m->be->ops->download(m->be, h, *file, (size_t)C * sizeof(float));
    for (int64_t i = 0; i < C; i++) h[i] = m->cfg.norm_offset + h[i]; /* fp32, as transformers' 1.0 + w.float() */
    m->be->ops->upload(m->be, d, h, (size_t)C * sizeof(float));
    free(h);
    *compute = d;
    return LT_OK;
}

/* Store every projection of layer L in bf16 (base_dtype LT_BASE_BF16): each row block of a module's f32
 * weight is packed by the backend (backend/bf16.h's layout) and the f32 form is freed. */
/* *W = the f32 (out, in) weight f32 packed in bf16 by the backend (backend/bf16.h's layout). The f32
 * form is left to the caller. */
static lt_status pack_bf16(lt_model *m, const float *f32, int out, int in, lt_weight *W, lt_error *err) {
    const size_t n = (size_t)out * in, bytes = m->be->ops->bf16_weight_bytes(m->be, out, in);
    const float *host = f32;
    float *tmp = NULL;
    if (!m->be->ops->host_memory) {
        if (!(tmp = malloc(n * sizeof(float)))) return lt_fail(err, LT_ERR_NOMEM, "out of memory packing bf16 weights");
        m->be->ops->download(m->be, tmp, f32, n * sizeof(float));
        host = tmp;
    }
    void *dst = m->be->ops->alloc(m->be, bytes);
    lt_status st =
        dst ? track(m, dst, err) : lt_fail(err, LT_ERR_NOMEM, "cannot allocate %zu bytes for a bf16 weight", bytes);
    if (st != LT_OK) {
        free(tmp);
        if (dst) m->be->ops->free(m->be, dst);
        return st;
    }
    m->be->ops->bf16_weight_pack(m->be, dst, host, out, in);
    free(tmp);
    *W = (lt_weight){.format = LT_WEIGHT_BF16, .bf16 = dst};
    m->weight_bytes += (int64_t)bytes;
    return LT_OK;
}

/* Store every projection of layer L in bf16 (base_dtype LT_BASE_BF16) and free the f32 form. */
static lt_status pack_layer_bf16(lt_model *m, lt_layer *L, lt_error *err) {
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int k = 0; k < n_mods; k++) {
        float *base = L->w[mods[k].first].f32;
        for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
            lt_weight *W = &L->w[q];
            int in, out;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &out);
            lt_status st = pack_bf16(m, W->f32, out, in, W, err);
            if (st != LT_OK) return st;
            m->weight_bytes -= (int64_t)((size_t)out * in * sizeof(float));
        }
        untrack_free(m, base); /* a no-op for weights used in place from the mapping */
    }
    return LT_OK;
}

/* base_dtype LT_BASE_BF16: the LM head too (as torch.autocast computes it), in m->lm_head_q. A tied head
 * keeps the f32 embedding table it shares; an untied one is freed. */
static lt_status pack_lm_head_bf16(lt_model *m, lt_error *err) {
    const int V = (int)m->cfg.vocab_size, H = (int)m->cfg.hidden_size;
    if (m->lm_head_q.format != LT_WEIGHT_F32) return LT_OK; /* quantized: stays so */
    lt_status st = pack_bf16(m, m->lm_head, V, H, &m->lm_head_q, err);
    if (st != LT_OK || m->lm_head == m->embed) return st;
    m->weight_bytes -= (int64_t)((size_t)V * H * sizeof(float));
    untrack_free(m, m->lm_head);
    m->lm_head = NULL;
    return LT_OK;
}

LT_API void lt_model_params_init(lt_model_params *out, size_t size) {
    lt_model_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->use_mmap = 1;
    p->quantization = LT_QUANT_NONE;
    p->double_quant = 1;
    p->quant_blocksize = 64;
    p->quantize_lm_head = 0;
    lt_fill_struct(out, size, p, sizeof *p);
}

/* The model's RoPE tables on the backend: inv_freq, longrope's long factors (and the attention factor),
 * Gemma 3's local table. */
static lt_status upload_rope_tables(lt_model *m, lt_error *err) {
    const lt_model_config *c = &m->cfg;
    m->rot_dim = c->rot_dim;
    m->rope_mscale = c->rope_type == LT_ROPE_LONGROPE ? (float)c->rope_attention_factor : 1.0f;
    if (m->rot_dim <= 0)
        return lt_fail(err, LT_ERR_FORMAT, "%s: rotary dimension %d is not positive", m->dir, m->rot_dim);
    const int half = m->rot_dim / 2;
    float *inv = malloc((size_t)half * sizeof(float));
    if (!inv) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    const struct {
        int (*fn)(const lt_model_config *, float *, int);
        float **dst;
        int wanted;
    } tables[] = {{lt_rope_inv_freq, &m->inv_freq, 1},
                  {lt_rope_inv_freq_long, &m->inv_freq_long, c->rope_type == LT_ROPE_LONGROPE},
                  {lt_rope_inv_freq_local, &m->inv_freq_local, c->rope_local_theta > 0}};
    lt_status st = LT_OK;
    for (size_t i = 0; st == LT_OK && i < sizeof tables / sizeof tables[0]; i++) {
        if (!tables[i].wanted) continue;
        if (tables[i].fn(c, inv, half) != half)
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: cannot compute the RoPE frequencies for this config", m->dir);
        else if (!(*tables[i].dst = m->be->ops->alloc(m->be, (size_t)half * sizeof(float))))
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        else if ((st = track(m, *tables[i].dst, err)) == LT_OK)
            m->be->ops->upload(m->be, *tables[i].dst, inv, (size_t)half * sizeof(float));
    }
    free(inv);
    return st;
}

static lt_status model_load(lt_model *m, const lt_model_params *p, lt_error *err) {
    char path[4200];
    lt_path_join(path, sizeof path, m->dir, "config.json");
    lt_status st = lt_config_load(path, &m->cfg, err);
    if (st != LT_OK) return st;
    const lt_model_config *c = &m->cfg;
    if (p->quantization != LT_QUANT_NONE) {
        lt_quant_params qp = {.size = sizeof qp,
                              .format = p->quantization,
                              .blocksize = p->quant_blocksize,
                              .double_quant = p->double_quant};
        if ((st = lt_quant_check_params(&qp, err)) != LT_OK) return lt_fail_prefix(err, "lt_model_load");
        if (p->quantize_lm_head && c->tie_word_embeddings)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "lt_model_load: quantize_lm_head: the LM head is tied to the "
                           "embeddings, which stay f32 (the lookup needs them)");
    }
    st = lt_st_set_open_dir(m->dir, p->use_mmap, &m->st, err);
    if (st != LT_OK) return st;

    const int64_t V = c->vocab_size, H = c->hidden_size, I = c->intermediate_size;
    const int64_t QD = c->num_attention_heads * c->head_dim, KD = c->num_key_value_heads * c->head_dim;
    if ((st = load_weight(m, p->use_mmap, "model.embed_tokens.weight", V, H, &m->embed, err))) return st;
    if ((st = load_norm(m, p->use_mmap, "model.norm.weight", H, &m->final_norm, &m->final_norm_file, err))) return st;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if ((st = load_bnb_weight(m, "lm_head.weight", (int)V, (int)H, &m->lm_head_q, err)) == LT_OK) {
        m->lm_head = NULL; /* a pre-quantized LM head */
    } else if (st != LT_ERR_MISSING) {
        return st;
    } else if ((st = load_weight(m, p->use_mmap, "lm_head.weight", V, H, &m->lm_head, err))) {
        if (st == LT_ERR_MISSING) lt_fail_prefix(err, "config.json has tie_word_embeddings false");
        return st;
    } else if (p->quantization != LT_QUANT_NONE && p->quantize_lm_head) {
        m->lm_head_q = (lt_weight){.format = LT_WEIGHT_F32, .f32 = m->lm_head};
        if ((st = quantize_weight(m, &m->lm_head_q, (int)V, (int)H, p, "lm_head.weight", 1, err))) return st;
        m->lm_head = NULL;
    }
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    char name[256];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        lt_layer *L = &m->layers[l];
        lt_layer_norm norms[LT_MAX_LAYER_NORMS];
        const int n_norms = lt_layer_norms(c, norms);
        for (int k = 0; k < n_norms; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, norms[k].name);
            if ((st = load_norm(m, p->use_mmap, name, norms[k].dim, lt_layer_norm_at(L, norms[k].compute),
                                lt_layer_norm_at(L, norms[k].file), err)))
                return st;
        }
        lt_module mods[P_COUNT];
        int n_mods = lt_model_modules(c, mods);
        for (int k = 0; k < n_mods; k++) { /* a fused module: its projections are row blocks of one weight */
            int in, out;
            lt_module_dims(c, &mods[k], &in, &out);
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            if (mods[k].count == 1) { /* a pre-quantized (bitsandbytes) checkpoint stores it quantized */
                st = load_bnb_weight(m, name, out, in, &L->w[mods[k].first], err);
                if (st == LT_OK) continue;
                if (st != LT_ERR_MISSING) return st;
            }
            float *w;
            if ((st = load_weight(m, p->use_mmap, name, out, in, &w, err))) return st;
            if ((st = split_module(m, L, &mods[k], w, p, name, err))) return st;
        }
        for (int q = 0; q < P_COUNT; q++) {
            int in, out;
            lt_proj_dims(c, (lt_proj)q, &in, &out);
            if (c->bias_mask & (1u << q)) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, lt_proj_parent[q], lt_proj_names[q]);
                if ((st = load_weight(m, p->use_mmap, name, out, 0, &L->bias[q], err))) return st;
            }
        }
        if (m->base_dtype == LT_BASE_BF16 && (st = pack_layer_bf16(m, L, err))) return st;
    }
    if (m->base_dtype == LT_BASE_BF16 && (st = pack_lm_head_bf16(m, err))) return st;
    (void)QD;
    (void)KD;
    (void)I;

    if ((st = upload_rope_tables(m, err)) != LT_OK) return st;
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
            return lt_fail(terr, LT_ERR_ARGUMENT,
                           "lt_model_load: params->size %zu is not a size this library "
                           "knows (call lt_model_params_init)",
                           params->size);
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
        return lt_fail(terr, LT_ERR_ARGUMENT,
                       "lt_model_load: base_dtype %d is neither LT_BASE_F32 (0) nor "
                       "LT_BASE_BF16 (1)",
                       p.base_dtype);
    }
    if (p.base_dtype == LT_BASE_BF16 && p.quantization != LT_QUANT_NONE) {
        free(m);
        return lt_fail(terr, LT_ERR_ARGUMENT,
                       "lt_model_load: base_dtype LT_BASE_BF16 and quantization are exclusive "
                       "(the projections are stored one way)");
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
static _Thread_local struct {
    const lt_model *model;
    lt_error err;
} model_errors;

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
    o.quantization = m->quant;
    o.quantized_params = m->quant_params;
    o.quantized_bytes = m->quant_bytes;
    snprintf(o.family, sizeof o.family, "%s", lt_config_family(c));
    o.sliding_window = c->sliding_window;
    o.n_sliding_layers = c->n_sliding_layers;
    size_t n = info->size < sizeof o ? info->size : sizeof o;
    memcpy(info, &o, n);
    info->size = n;
    return LT_OK;
}

/* ---- quantizing a loaded model and saving it in the bitsandbytes layout ------------------------- */

LT_API lt_status lt_model_quantize(lt_model *m, const lt_quant_params *params) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    lt_quant_params qp;
    lt_quant_params_init(&qp, sizeof qp);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof qp)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_quantize: params->size %zu is not a size this library knows",
                           params->size);
        memcpy(&qp, params, params->size);
    }
    lt_status st = lt_quant_check_params(&qp, err);
    if (st != LT_OK) return lt_fail_prefix(err, "lt_model_quantize");
    if (m->n_merged) return lt_fail(err, LT_ERR_STATE, "lt_model_quantize: an adapter is merged into the weights");
    if (m->base_dtype == LT_BASE_BF16)
        return lt_fail(err, LT_ERR_STATE,
                       "lt_model_quantize: the model keeps its projections in bf16; load it with "
                       "LT_BASE_F32 to quantize");
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = qp.format;
    mp.quant_blocksize = qp.blocksize;
    mp.double_quant = qp.double_quant;
    char name[256];
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int k = 0; k < n_mods; k++) {
            lt_layer *L = &m->layers[l];
            float *w = L->w[mods[k].first].f32; /* a fused module's first block starts its f32 weight */
            if (L->w[mods[k].first].format != LT_WEIGHT_F32) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            if ((st = split_module(m, L, &mods[k], w, &mp, name, err)) != LT_OK) return st;
        }
    return m->be->ops->sync(m->be);
}

/* the entries of one tensor list being written: names, host copies, count */
typedef struct save_list {
    lt_st_entry *e;
    char *names; /* 160 bytes per entry */
    void **bufs;
    int n, cap;
} save_list;

/* add entry NAME (printf format) of dtype dt and shape (d0[, d1]) holding `bytes` copied from backend
 * memory dev, or from host memory when host != NULL */
static lt_status save_add(lt_model *m, save_list *L, lt_dtype dt, int nd, int64_t d0, int64_t d1, const void *dev,
                          const void *host, size_t bytes, lt_error *err, const char *fmt, ...)
    __attribute__((format(printf, 11, 12)));
static lt_status save_add(lt_model *m, save_list *L, lt_dtype dt, int nd, int64_t d0, int64_t d1, const void *dev,
                          const void *host, size_t bytes, lt_error *err, const char *fmt, ...) {
    if (L->n == L->cap) return lt_fail(err, LT_ERR_INTERNAL, "lt_model_save_quantized: too many tensors");
    char *nm = L->names + (size_t)L->n * 160;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nm, 160, fmt, ap);
    va_end(ap);
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf) return lt_fail(err, LT_ERR_NOMEM, "out of memory saving %s", nm);
    if (host) memcpy(buf, host, bytes);
    else if (bytes) m->be->ops->download(m->be, buf, dev, bytes);
    L->bufs[L->n] = buf;
    L->e[L->n] = (lt_st_entry){.name = nm, .dtype = dt, .ndim = nd, .shape = {d0, d1}, .data = buf};
    L->n++;
    return LT_OK;
}

/* a weight (out, in): f32 as is, or its bitsandbytes 4-bit tensors */
static lt_status save_weight(lt_model *m, save_list *L, const char *base, const lt_weight *W, int out, int in,
                             lt_error *err) {
    if (W->format != LT_WEIGHT_QUANT)
        return save_add(m, L, LT_DT_F32, 2, out, in, W->f32, NULL, (size_t)out * in * 4, err, "%s", base);
    const int64_t numel = (int64_t)out * in, nb = (numel + W->q.blocksize - 1) / W->q.blocksize;
    const int64_t nb2 = (nb + LT_NESTED_BLOCK - 1) / LT_NESTED_BLOCK;
    const lt_quant_format f = (lt_quant_format)W->q.format;
    lt_status st =
        save_add(m, L, LT_DT_U8, 2, (numel + 1) / 2, 1, W->q.data, NULL, (size_t)(numel + 1) / 2, err, "%s", base);
    if (st == LT_OK && W->double_quant) {
        st = save_add(m, L, LT_DT_U8, 1, nb, 0, W->q.qabsmax, NULL, (size_t)nb, err, "%s.absmax", base);
        if (st == LT_OK)
            st = save_add(m, L, LT_DT_F32, 1, nb2, 0, W->q.absmax2, NULL, (size_t)nb2 * 4, err, "%s.nested_absmax",
                          base);
        if (st == LT_OK)
            st = save_add(m, L, LT_DT_F32, 1, 256, 0, NULL, lt_quant_code8(), 1024, err, "%s.nested_quant_map", base);
    } else if (st == LT_OK) {
        st = save_add(m, L, LT_DT_F32, 1, nb, 0, W->q.absmax, NULL, (size_t)nb * 4, err, "%s.absmax", base);
    }
    if (st == LT_OK) st = save_add(m, L, LT_DT_F32, 1, 16, 0, NULL, lt_quant_code4(f), 64, err, "%s.quant_map", base);
    if (st != LT_OK) return st;
    /* the non-tensor state as bitsandbytes packs it: UTF-8 JSON in a uint8 tensor */
    json_t *js = json_object();
    json_object_set_new(js, "quant_type", json_string(lt_quant_format_name(f)));
    json_object_set_new(js, "blocksize", json_integer(W->q.blocksize));
    json_object_set_new(js, "dtype", json_string("float32"));
    json_object_set_new(js, "shape", json_pack("[I,I]", (json_int_t)out, (json_int_t)in));
    if (W->double_quant) {
        json_object_set_new(js, "nested_blocksize", json_integer(LT_NESTED_BLOCK));
        json_object_set_new(js, "nested_dtype", json_string("float32"));
        json_object_set_new(js, "nested_offset", json_real(W->q.offset));
    }
    char *text = json_dumps(js, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(js);
    if (!text) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    st = save_add(m, L, LT_DT_U8, 1, (int64_t)strlen(text), 0, NULL, text, strlen(text), err,
                  "%s.quant_state.bitsandbytes__%s", base, lt_quant_format_name(f));
    free(text);
    return st;
}

LT_API lt_status lt_model_save_quantized(lt_model *m, const char *dir) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_save_quantized: dir is NULL");
    if (m->quant != LT_QUANT_NF4 && m->quant != LT_QUANT_FP4)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "lt_model_save_quantized: the projections are %s; the bitsandbytes "
                       "checkpoint layout is written for nf4 and fp4",
                       lt_quant_format_name(m->quant));
    const lt_model_config *c = &m->cfg;
    if (strcmp(lt_config_family(c), "Llama"))
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "lt_model_save_quantized: writes the Llama family's tensors; this "
                       "model is %s (quantize it on load instead)",
                       lt_config_family(c));
    const int L_ = (int)c->num_hidden_layers;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    save_list L = {.cap = 3 + (L_ + 1) * (2 + 6 * P_COUNT)};
    L.e = calloc((size_t)L.cap, sizeof *L.e);
    L.names = calloc((size_t)L.cap, 160);
    L.bufs = calloc((size_t)L.cap, sizeof *L.bufs);
    lt_status st = lt_mkdir_p(dir, err);
    if (!L.e || !L.names || !L.bufs) st = lt_fail(err, LT_ERR_NOMEM, "lt_model_save_quantized: out of memory");
    if (st == LT_OK)
        st = save_add(m, &L, LT_DT_F32, 2, V, H, m->embed, NULL, (size_t)V * H * 4, err, "model.embed_tokens.weight");
    if (st == LT_OK)
        st = save_add(m, &L, LT_DT_F32, 1, H, 0, m->final_norm, NULL, (size_t)H * 4, err, "model.norm.weight");
    if (st == LT_OK && !c->tie_word_embeddings) {
        const lt_weight head = lt_model_lm_head(m);
        st = save_weight(m, &L, "lm_head.weight", &head, (int)V, (int)H, err);
    }
    for (int l = 0; l < L_ && st == LT_OK; l++) {
        st = save_add(m, &L, LT_DT_F32, 1, H, 0, m->layers[l].attn_norm, NULL, (size_t)H * 4, err,
                      "model.layers.%d.input_layernorm.weight", l);
        if (st == LT_OK)
            st = save_add(m, &L, LT_DT_F32, 1, H, 0, m->layers[l].mlp_norm, NULL, (size_t)H * 4, err,
                          "model.layers.%d.post_attention_layernorm.weight", l);
        for (int q = 0; q < P_COUNT && st == LT_OK; q++) {
            int in, out;
            lt_proj_dims(c, (lt_proj)q, &in, &out);
            char base[128];
            snprintf(base, sizeof base, "model.layers.%d.%s.%s.weight", l, lt_proj_parent[q], lt_proj_names[q]);
            st = save_weight(m, &L, base, &m->layers[l].w[q], out, in, err);
        }
    }
    lt_st_entry *e = L.e;
    int n = L.n;
    void **bufs = L.bufs;
    char *names = L.names;
    if (st == LT_OK) st = lt_st_write_sharded(dir, e, n, 2ull << 30, err);
    char path[4200];
    lt_path_join(path, sizeof path, dir, "config.json");
    if (st == LT_OK) {
        lt_model_config oc = *c;
        snprintf(oc.torch_dtype, sizeof oc.torch_dtype, "float32");
        st = lt_config_write(&oc, path, err);
    }
    if (st == LT_OK) {
        /* add the quantization_config block transformers writes for bitsandbytes 4-bit */
        json_error_t je;
        json_t *cfg = json_load_file(path, 0, &je);
        if (!cfg) st = lt_fail(err, LT_ERR_JSON, "%s: %s", path, je.text);
        else {
            json_t *qc = json_object();
            json_object_set_new(qc, "quant_method", json_string("bitsandbytes"));
            json_object_set_new(qc, "_load_in_4bit", json_true());
            json_object_set_new(qc, "_load_in_8bit", json_false());
            json_object_set_new(qc, "load_in_4bit", json_true());
            json_object_set_new(qc, "load_in_8bit", json_false());
            json_object_set_new(qc, "bnb_4bit_compute_dtype", json_string("float32"));
            json_object_set_new(qc, "bnb_4bit_quant_storage", json_string("uint8"));
            json_object_set_new(qc, "bnb_4bit_quant_type", json_string(lt_quant_format_name(m->quant)));
            json_object_set_new(qc, "bnb_4bit_use_double_quant", json_boolean(m->quant_double));
            json_object_set_new(qc, "llm_int8_enable_fp32_cpu_offload", json_false());
            json_object_set_new(qc, "llm_int8_has_fp16_weight", json_false());
            /* transformers leaves lm_head unquantized unless the skip list is given: [] when ours is */
            json_object_set_new(qc, "llm_int8_skip_modules",
                                m->lm_head_q.format != LT_WEIGHT_F32 ? json_array() : json_null());
            json_object_set_new(qc, "llm_int8_threshold", json_real(6.0));
            json_object_set_new(cfg, "quantization_config", qc);
            char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
            json_decref(cfg);
            st = text ? lt_write_file_atomic(path, text, strlen(text), err)
                      : lt_fail(err, LT_ERR_NOMEM, "out of memory");
            free(text);
        }
    }
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    free(names);
    return st;
}

/* ---- experimental: random models ------------------------------------------------------------ */

#include "loratune_experimental.h"

static uint64_t rnd_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* fill n floats: value `one` when std == 0, else N(0, std^2) (Box-Muller) */
static lt_status random_weight(lt_model *m, size_t n, float std, float one, uint64_t *rng, float **out, lt_error *err) {
    float *h = malloc(n * sizeof *h);
    float *d = m->be->ops->alloc(m->be, n * sizeof(float));
    lt_status st = (!h || !d) ? lt_fail(err, LT_ERR_NOMEM, "lt_model_create_random: out of memory") : track(m, d, err);
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

LT_API lt_status lt_model_create_random_params(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
                                               const lt_model_params *params, lt_model **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: out is NULL");
    *out = NULL;
    if (!ctx || !config_json)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: ctx and config_json are required");
    if (!(init_std > 0)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_create_random: init_std must be positive");
    lt_model_params p;
    lt_model_params_init(&p, sizeof p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof p)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_model_create_random: params->size %zu is not a size this "
                           "library knows (call lt_model_params_init)",
                           params->size);
        memcpy(&p, params, params->size);
    }
    if (p.base_dtype != LT_BASE_F32 && p.base_dtype != LT_BASE_BF16)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_model_create_random: base_dtype %d is neither LT_BASE_F32 (0) "
                       "nor LT_BASE_BF16 (1)",
                       p.base_dtype);
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
    if (st == LT_OK) st = random_weight(m, V * H, init_std, 0, &rng, &m->embed, err);
    m->rope_mscale = 1.0f;
    if (st == LT_OK && (c->fused_proj || c->rope_type == LT_ROPE_LONGROPE))
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "lt_model_create_random: %s is not supported here", c->architecture);
    if (st == LT_OK && (c->norm_offset != 0.0f || c->sandwich_norms || c->qk_norm == LT_QK_NORM_FULL))
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "lt_model_create_random: %s is not supported here", c->architecture);
    if (st == LT_OK) st = random_weight(m, H, 0, 1.0f, &rng, &m->final_norm, err);
    m->final_norm_file = m->final_norm;
    if (st == LT_OK) {
        if (c->tie_word_embeddings) m->lm_head = m->embed;
        else st = random_weight(m, V * H, init_std, 0, &rng, &m->lm_head, err);
    }
    if (st == LT_OK && !(m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers)))
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int l = 0; st == LT_OK && l < c->num_hidden_layers; l++) {
        lt_layer *Ly = &m->layers[l];
        st = random_weight(m, H, 0, 1.0f, &rng, &Ly->attn_norm, err);
        if (st == LT_OK) st = random_weight(m, H, 0, 1.0f, &rng, &Ly->mlp_norm, err);
        for (int q = 0; st == LT_OK && q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            st = random_weight(m, (size_t)in * o, init_std, 0, &rng, &Ly->w[q].f32, err);
            if (st == LT_OK && (c->bias_mask & (1u << q)))
                st = random_weight(m, (size_t)o, init_std, 0, &rng, &Ly->bias[q], err);
        }
        if (st == LT_OK && c->qk_norm) {
            st = random_weight(m, (size_t)c->head_dim, 0, 1.0f, &rng, &Ly->q_norm, err);
            if (st == LT_OK) st = random_weight(m, (size_t)c->head_dim, 0, 1.0f, &rng, &Ly->k_norm, err);
        }
        if (st == LT_OK && m->base_dtype == LT_BASE_BF16) st = pack_layer_bf16(m, Ly, err);
        /* random norms hold the compute weights; the checkpoint value is that minus norm_offset, which
         * only Gemma has: those families are not offered here */
        Ly->attn_norm_file = Ly->attn_norm;
        Ly->mlp_norm_file = Ly->mlp_norm;
        Ly->q_norm_file = Ly->q_norm;
        Ly->k_norm_file = Ly->k_norm;
    }
    if (st == LT_OK && m->base_dtype == LT_BASE_BF16) st = pack_lm_head_bf16(m, err);
    if (st == LT_OK) st = upload_rope_tables(m, err);
    if (st != LT_OK) {
        lt_model_free(m);
        return st;
    }
    *out = m;
    return LT_OK;
}
