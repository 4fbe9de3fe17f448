/*
 * model.c - a loaded model: its projections and modules, freeing it, model info, its per-thread error
 * record, and saving a quantized model in the bitsandbytes layout (loading is model/load.c).
 *
 * defines: lt_proj_dims, lt_model_modules, lt_module_dims, lt_model_free, lt_model_error,
 *          lt_model_last_error, lt_model_get_info, lt_model_save_quantized
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

LT_API void lt_model_free(lt_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) m->be->ops->free(m->be, m->owned[i]);
    free(m->owned);
    for (int l = 0; m->layers && l < m->cfg.num_hidden_layers; l++) free(m->layers[l].experts);
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
    snprintf(o.dtype, sizeof o.dtype, "%s", m->file_dtype);
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
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "lt_model_save_quantized: this model keeps its embeddings in bf16 (base_dtype "
                       "LT_BASE_BF16); load it with LT_BASE_F32 to save it");
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
    lt_save sv;
    lt_status st = lt_save_begin(&sv, dir, err);
    const int begun = st == LT_OK;
    if (st == LT_OK && (!L.e || !L.names || !L.bufs))
        st = lt_fail(err, LT_ERR_NOMEM, "lt_model_save_quantized: out of memory");
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
    if (st == LT_OK) st = lt_st_write_sharded(sv.stage, e, n, 2ull << 30, err);
    char path[4200];
    if (begun) lt_path_join(path, sizeof path, sv.stage, "config.json");
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
    if (begun && st != LT_OK) lt_save_abort(&sv);
    else if (begun) st = lt_save_commit(&sv, err);
    return st;
}
