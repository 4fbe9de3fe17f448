/*
 * export.c - the tensors of a model as exported, merged with an adapter or with any other delta on its
 * linear modules, and the Hugging Face model directory written from them (lt_adapter_export_merged,
 * lt_model_save). The GGUF export (gguf_export.c) and the combination of adapters into a base
 * (combine.c) walk the same list. Here rather than in model/ so that the model never calls up into the
 * adapter.
 *
 * defines: lt_export_tensors, lt_export_tensor_data, lt_lora_module_delta, lt_model_export,
 *          lt_adapter_export_merged, lt_model_save
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter.h"
#include "formats/quant.h"
#include "loratune_experimental.h"

static const char *const copied_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "generation_config.json", "tokenizer.model"};

/* ---- the list of tensors ------------------------------------------------------------------------- */

static lt_xtensor *xt_add(lt_xtensor *v, int *n, lt_xt_kind kind, const float *src, int64_t d0, int64_t d1,
                          const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static lt_xtensor *xt_add(lt_xtensor *v, int *n, lt_xt_kind kind, const float *src, int64_t d0, int64_t d1,
                          const char *fmt, ...) {
    lt_xtensor *t = &v[(*n)++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->kind = kind;
    t->src = src;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 1;
    return t;
}

lt_status lt_export_tensors(const lt_model *m, const lt_adapter *a, lt_xtensor **out, int *n_out, int *untie,
                            lt_error *err) {
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    lt_xtensor *v = calloc((size_t)(3 + L * (7 + 2 * P_COUNT) + c->n_moe_layers * (1 + 3 * c->num_experts)), sizeof *v);
    if (!v) return lt_fail(err, LT_ERR_NOMEM, "export: out of memory");
    int n = 0;
    xt_add(v, &n, LT_XT_PLAIN, lt_view_embed(m, a), V, H, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        const lt_layer *Ly = lt_view_layer(m, a, l); /* full fine-tuning: the trained weights */
        /* norms as the checkpoint stores them (Gemma: w, where the forward multiplies by 1 + w) */
        lt_layer_norm norms[LT_MAX_LAYER_NORMS];
        const int n_norms = lt_layer_norms(c, norms);
        for (int k = 0; k < n_norms; k++) {
            const float *f = *lt_layer_norm_at(Ly, norms[k].file);
            xt_add(v, &n, LT_XT_PLAIN, f ? f : *lt_layer_norm_at(Ly, norms[k].compute), norms[k].dim, 0,
                   "model.layers.%d.%s.weight", l, norms[k].name)
                ->norm = 1;
        }
        for (int q = 0; q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            if (Ly->bias[q])
                xt_add(v, &n, LT_XT_PLAIN, Ly->bias[q], o, 0, "model.layers.%d.%s.%s.bias", l, lt_proj_parent[q],
                       lt_proj_names[q])
                    ->proj = q;
        }
        if (Ly->sinks)
            xt_add(v, &n, LT_XT_PLAIN, Ly->sinks, c->num_attention_heads, 0, "model.layers.%d.self_attn.sinks", l);
        if (c->layer_moe[l] && c->arch == LT_ARCH_GPT_OSS) { /* fused (in, out) experts (docs/spec/gpt_oss.md) */
            const int64_t E = c->num_experts, MI = c->moe_intermediate_size;
            float *d_router; /* the router trained as modules_to_save "router" is the adapter's (lt_view_router) */
            xt_add(v, &n, LT_XT_PLAIN, lt_view_router(m, a, l, &d_router), E, H, "model.layers.%d.mlp.router.weight",
                   l);
            xt_add(v, &n, LT_XT_PLAIN, lt_view_router_bias(m, a, l, &d_router), E, 0, "model.layers.%d.mlp.router.bias",
                   l);
            for (int k = 0; k < 2; k++) {
                const int64_t in = k ? MI : H, out = k ? H : 2 * MI;
                lt_xtensor *t = xt_add(v, &n, LT_XT_FUSED, NULL, E, in * out, "model.layers.%d.mlp.experts.%s", l,
                                       k ? "down_proj" : "gate_up_proj");
                t->layer = l;
                t->proj = k ? P_DOWN : P_GATE;
                t->ndim = 3;
                t->dims3[0] = E, t->dims3[1] = in, t->dims3[2] = out;
            }
            xt_add(v, &n, LT_XT_FUSED_BIAS, Ly->expert_bias, E, 2 * MI, "model.layers.%d.mlp.experts.gate_up_proj_bias",
                   l);
            xt_add(v, &n, LT_XT_PLAIN, Ly->expert_bias + (size_t)E * 2 * MI, E, H,
                   "model.layers.%d.mlp.experts.down_proj_bias", l);
        } else if (c->layer_moe[l]) { /* the router and every expert's gate, up, down (checkpoint names) */
            const int64_t MI = c->moe_intermediate_size;
            float *d_router;
            xt_add(v, &n, LT_XT_PLAIN, lt_view_router(m, a, l, &d_router), c->num_experts, H,
                   "model.layers.%d.%s.gate.weight", l, lt_moe_parent(c));
            for (int e = 0; e < c->num_experts; e++)
                for (int k = 0; k < 3; k++) {
                    lt_xtensor *t = xt_add(v, &n, LT_XT_EXPERT, NULL, k == 2 ? H : MI, k == 2 ? MI : H,
                                           "model.layers.%d.%s.experts.%d.%s.weight", l, lt_moe_parent(c), e,
                                           lt_moe_proj_name(c, k));
                    t->layer = l;
                    t->expert = e;
                    t->proj = P_GATE + k;
                }
        }
        lt_module mods[P_COUNT];
        const int n_mods = lt_model_modules(c, mods);
        for (int k = 0; k < n_mods; k++) {
            int min, mout;
            lt_module_dims(c, &mods[k], &min, &mout);
            if (c->layer_moe[l] && mods[k].first >= P_GATE) continue; /* the experts replace the MLP */
            lt_xtensor *t = xt_add(v, &n, LT_XT_MODULE, NULL, mout, min, "model.layers.%d.%s.%s.weight", l,
                                   mods[k].parent, mods[k].name);
            t->layer = l;
            t->mod = mods[k];
            t->proj = mods[k].first;
        }
    }
    xt_add(v, &n, LT_XT_PLAIN,
           a && a->final_norm_file ? a->final_norm_file
           : m->final_norm_file    ? m->final_norm_file
                                   : m->final_norm,
           H, 0, "model.norm.weight")
        ->norm = 1;
    /* modules_to_save on a tied model trains a separate copy of embed_tokens and/or lm_head (PEFT): the
     * two differ, so the merged model is untied */
    const lt_weight head_view = lt_view_lm_head(m, a);
    *untie = c->tie_word_embeddings && a && (a->embed || a->lm_head) && head_view.f32 != lt_view_embed(m, a);
    if (!c->tie_word_embeddings || *untie) xt_add(v, &n, LT_XT_HEAD, NULL, V, H, "lm_head.weight");
    *out = v;
    *n_out = n;
    return LT_OK;
}

/* W_p (o, in) += sign * s * B_p A for one projection of a LoRA (its B row block; A shared by a fused module) */
static lt_status add_product(const lt_adapter *a, const float *dA, const float *dB, int o, int in, float coef, float *W,
                             lt_error *err) {
    const lt_model *m = a->model;
    const int r = a->p.rank;
    float *A = malloc((size_t)r * in * sizeof *A), *B = malloc((size_t)o * r * sizeof *B);
    if (!A || !B) {
        free(A);
        free(B);
        return lt_fail(err, LT_ERR_NOMEM, "export: out of memory");
    }
    m->be->ops->download(m->be, A, dA, (size_t)r * in * sizeof *A);
    m->be->ops->download(m->be, B, dB, (size_t)o * r * sizeof *B);
    for (int i = 0; i < o; i++)
        for (int k = 0; k < r; k++) {
            const float bik = coef * B[(size_t)i * r + k];
            const float *Ak = A + (size_t)k * in;
            float *Wi = W + (size_t)i * in;
            for (int j = 0; j < in; j++) Wi[j] += bik * Ak[j];
        }
    free(A);
    free(B);
    return LT_OK;
}

lt_status lt_lora_module_delta(const lt_adapter *a, int l, const lt_module *mod, float *W, lt_error *err) {
    const lt_model_config *c = &a->model->cfg;
    lt_status st = LT_OK;
    for (int q = mod->first; q < mod->first + mod->count && st == LT_OK; q++) {
        int in, o;
        lt_proj_dims(c, (lt_proj)q, &in, &o);
        const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
        if (lo) {
            st = add_product(a, lo->A, lo->B, o, in, a->scaling, W, err);
            if (st == LT_OK && lo->B0) /* PiSSA / OLoRA: the delta is s (B A - B0 A0) */
                st = add_product(a, lo->A0, lo->B0, o, in, -a->scaling, W, err);
        }
        W += (size_t)o * in;
    }
    return st;
}

/* The adapter's own merge of one module: W + s B A, DoRA's rows scaled by m / ||W + s B A|| after it. */
static lt_status adapter_delta(const lt_adapter *a, int l, const lt_module *mod, float *W, lt_error *err) {
    lt_status st = lt_lora_module_delta(a, l, mod, W, err);
    for (int q = mod->first; q < mod->first + mod->count && st == LT_OK; q++) {
        int in, o;
        lt_proj_dims(&a->model->cfg, (lt_proj)q, &in, &o);
        const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
        if (lo && lo->mag) {
            float *mg = malloc((size_t)o * sizeof(float));
            if (!mg) return lt_fail(err, LT_ERR_NOMEM, "export: out of memory");
            a->model->be->ops->download(a->model->be, mg, lo->mag, (size_t)o * sizeof(float));
            for (int i = 0; i < o; i++) {
                float *Wi = W + (size_t)i * in;
                double ss = 0;
                for (int j = 0; j < in; j++) ss += (double)Wi[j] * Wi[j];
                const float gi = (float)(mg[i] / sqrt(ss));
                for (int j = 0; j < in; j++) Wi[j] *= gi;
            }
            free(mg);
        }
        W += (size_t)o * in;
    }
    return st;
}

lt_status lt_export_tensor_data(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const lt_xtensor *t,
                                float *dst, lt_error *err) {
    const size_t n = (size_t)t->shape[0] * (size_t)t->shape[1];
    if (t->kind == LT_XT_PLAIN) {
        m->be->ops->download(m->be, dst, t->src, n * sizeof(float));
        return LT_OK;
    }
    if (t->kind == LT_XT_EXPERT) { /* dequantized when quantized; W_e += s B_e A_e of the expert LoRA */
        const lt_model_config *c = &m->cfg;
        lt_status st = lt_weight_download(m, lt_expert_w(lt_view_layer(m, a, t->layer), t->expert, (lt_proj)t->proj),
                                          dst, (int)t->shape[0], (int)t->shape[1], err);
        const int k = t->proj == P_DOWN; /* which expert LoRA: gate|up or down */
        const lt_lora *lo = a && !a->merged && !delta ? lt_adapter_elora(a, t->layer, k) : NULL;
        if (st != LT_OK || !lo) return st;
        const int r = a->p.rank, in = (int)t->shape[1], o = (int)t->shape[0];
        int lin, lout;
        lt_elora_dims(c, k, &lin, &lout);
        const size_t b_off =
            (size_t)t->expert * lout * r + (t->proj == P_UP ? (size_t)c->moe_intermediate_size * r : 0);
        return add_product(a, lo->A + (size_t)t->expert * r * lin, lo->B + b_off, o, in, a->scaling, dst, err);
    }
    if (t->kind == LT_XT_FUSED_BIAS) { /* ours: gate (MI) then up (MI) per expert; stored alternating */
        const int64_t E = t->shape[0], MI = t->shape[1] / 2;
        float *h = malloc(n * sizeof *h);
        if (!h) return lt_fail(err, LT_ERR_NOMEM, "export: out of memory");
        m->be->ops->download(m->be, h, t->src, n * sizeof(float));
        for (int64_t e = 0; e < E; e++)
            for (int64_t o = 0; o < 2 * MI; o++) dst[e * 2 * MI + o] = h[e * 2 * MI + (o % 2) * MI + o / 2];
        free(h);
        return LT_OK;
    }
    if (t->kind == LT_XT_FUSED) { /* each expert's (out, in) weight(s), merged, into the stored (in, out) slice */
        const int64_t E = t->dims3[0], in = t->dims3[1], out = t->dims3[2];
        float *w = malloc((size_t)in * out * sizeof *w);
        if (!w) return lt_fail(err, LT_ERR_NOMEM, "export: out of memory");
        lt_status st = LT_OK;
        for (int64_t e = 0; e < E && st == LT_OK; e++) {
            const int gate_up = t->proj != P_DOWN, half = (int)(gate_up ? out / 2 : out);
            for (int part = 0; part < (gate_up ? 2 : 1) && st == LT_OK; part++) {
                lt_xtensor x = {.kind = LT_XT_EXPERT, .layer = t->layer, .expert = (int)e, .ndim = 2};
                x.proj = gate_up ? P_GATE + part : P_DOWN;
                x.shape[0] = half, x.shape[1] = in;
                st = lt_export_tensor_data(m, a, delta, user, &x, w + (size_t)part * half * in, err);
            }
            /* (out, in) rows, gate rows then up rows -> (in, out), gate_up's column 2i gate i, 2i + 1 up i */
            float *d = dst + (size_t)e * in * out;
            for (int64_t o = 0; o < out && st == LT_OK; o++) {
                const int64_t row = gate_up ? (o % 2) * (out / 2) + o / 2 : o;
                for (int64_t i = 0; i < in; i++) d[i * out + o] = w[row * in + i];
            }
        }
        free(w);
        return st;
    }
    if (t->kind == LT_XT_HEAD) { /* dequantized when quantized */
        const lt_weight head = lt_view_lm_head(m, a);
        return lt_weight_download(m, &head, dst, (int)t->shape[0], (int)t->shape[1], err);
    }
    /* a linear module: its projections' weights stacked by rows (dequantized when quantized), then merged */
    const lt_layer *Ly = lt_view_layer(m, a, t->layer);
    float *W = dst;
    for (int q = t->mod.first; q < t->mod.first + t->mod.count; q++) {
        int in, o;
        lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
        lt_status st = lt_weight_download(m, &Ly->w[q], W, o, in, err);
        if (st != LT_OK) return st;
        W += (size_t)o * in;
    }
    if (delta) return delta(user, t->layer, &t->mod, dst, err);
    if (a && !a->merged && a->lora) return adapter_delta(a, t->layer, &t->mod, dst, err);
    return LT_OK;
}

/* Weights are exported in f32 (the compute dtype); config.json says so. */
lt_status lt_model_export_into(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *dir,
                               uint64_t max_shard_bytes, lt_error *err) {
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "export: the model keeps its base weights in bf16; load it "
                       "with base_dtype LT_BASE_F32 to export");
    lt_xtensor *xt = NULL;
    int n = 0, untie = 0;
    lt_status st = lt_export_tensors(m, a, &xt, &n, &untie, err);
    if (st != LT_OK) return st;
    lt_st_entry *e = calloc((size_t)n, sizeof *e);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    if (!e || !bufs) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && st == LT_OK; i++) { /* host copies of every weight, merged where targeted */
        if (!(bufs[i] = malloc((size_t)xt[i].shape[0] * (size_t)xt[i].shape[1] * sizeof(float)))) {
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory exporting %s", xt[i].name);
            break;
        }
        st = lt_export_tensor_data(m, a, delta, user, &xt[i], bufs[i], err);
        e[i].name = xt[i].name;
        e[i].dtype = LT_DT_F32;
        e[i].ndim = xt[i].ndim;
        e[i].shape[0] = xt[i].shape[0];
        e[i].shape[1] = xt[i].shape[1];
        if (xt[i].ndim == 3) memcpy(e[i].shape, xt[i].dims3, sizeof xt[i].dims3); /* gpt-oss's fused experts */
        e[i].data = bufs[i];
    }
    if (st == LT_OK) st = lt_st_write_sharded(dir, e, n, max_shard_bytes, err);
    if (st == LT_OK) {
        lt_model_config out_cfg = m->cfg;
        snprintf(out_cfg.torch_dtype, sizeof out_cfg.torch_dtype, "float32");
        if (untie) out_cfg.tie_word_embeddings = 0;
        char path[4200];
        lt_path_join(path, sizeof path, dir, "config.json");
        st = lt_config_write(&out_cfg, path, err);
    }
    for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files && st == LT_OK; i++) {
        char src[4200], dst[4200];
        lt_path_join(src, sizeof src, m->dir, copied_files[i]);
        lt_path_join(dst, sizeof dst, dir, copied_files[i]);
        char *data;
        size_t len;
        lt_error ignore;
        if (lt_read_file(src, &data, &len, &ignore) != LT_OK) continue; /* optional files */
        st = lt_write_file_atomic(dst, data, len, err);
        free(data);
    }
    if (st == LT_OK) st = lt_adapter_write_save_files(a, dir, err); /* a model card, the run record */
    if (bufs)
        for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    free(xt);
    return st;
}

lt_status lt_model_export(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *dir,
                          uint64_t max_shard_bytes, lt_error *err) {
    if (m->base_dtype != LT_BASE_F32) /* its message, before anything is created */
        return lt_model_export_into(m, a, delta, user, dir, max_shard_bytes, err);
    lt_save sv;
    lt_status st = lt_save_begin(&sv, dir, err);
    if (st != LT_OK) return st;
    if ((st = lt_model_export_into(m, a, delta, user, sv.stage, max_shard_bytes, err)) != LT_OK) {
        lt_fail_prefix(err, "%s", dir);
        lt_save_abort(&sv);
        return st;
    }
    return lt_save_commit(&sv, err);
}

LT_API lt_status lt_adapter_export_merged(lt_adapter *a, const char *dir, int64_t max_shard_bytes) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!dir) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_export_merged: dir is NULL");
    if (max_shard_bytes < 0) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_export_merged: max_shard_bytes < 0");
    return lt_model_export(a->model, a, NULL, NULL, dir, max_shard_bytes > 0 ? (uint64_t)max_shard_bytes : (2ull << 30),
                           &a->err);
}

LT_API lt_status lt_model_save(lt_model *m, const char *dir) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_save: dir is NULL");
    return lt_model_export(m, NULL, NULL, NULL, dir, 2ull << 30, err);
}
