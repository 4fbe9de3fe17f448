/*
 * export.c - writing a Hugging Face model directory of the model's weights, merged with an adapter
 * (lt_adapter_export_merged) or as loaded (lt_model_save, experimental). Here rather than in model/ so
 * that the model never calls up into the adapter.
 *
 * defines: lt_model_export, lt_adapter_export_merged, lt_model_save
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

/* Weights are exported in f32 (the compute dtype); config.json says so. */
lt_status lt_model_export(lt_model *m, const lt_adapter *a, const char *dir, uint64_t max_shard_bytes, lt_error *err) {
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "export: the model keeps its base weights in bf16; load it "
                       "with base_dtype LT_BASE_F32 to export");
    lt_status st = lt_mkdir_p(dir, err);
    if (st != LT_OK) return st;
    int cap = 3 + L * (6 + 2 * P_COUNT), n = 0;
    lt_st_entry *e = calloc((size_t)cap, sizeof *e);
    char *names = calloc((size_t)cap, 128);
    float **bufs = calloc((size_t)cap, sizeof *bufs);
    if (!e || !names || !bufs) {
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* host copies of every weight, merged where the adapter targets them */
#define ADD(nm_fmt, ptr, d0, d1, ...)                                            \
    do {                                                                         \
        char *nm = names + (size_t)n * 128;                                      \
        snprintf(nm, 128, nm_fmt, __VA_ARGS__);                                  \
        size_t cnt = (size_t)(d0) * ((d1) > 0 ? (d1) : 1);                       \
        bufs[n] = malloc(cnt * sizeof(float));                                   \
        if (!bufs[n]) {                                                          \
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory exporting %s", nm);   \
            goto out;                                                            \
        }                                                                        \
        if (ptr) m->be->ops->download(m->be, bufs[n], ptr, cnt * sizeof(float)); \
        e[n].name = nm;                                                          \
        e[n].dtype = LT_DT_F32;                                                  \
        e[n].ndim = (d1) > 0 ? 2 : 1;                                            \
        e[n].shape[0] = d0;                                                      \
        e[n].shape[1] = d1;                                                      \
        e[n].data = bufs[n];                                                     \
        n++;                                                                     \
    } while (0)
    ADD("%s", lt_view_embed(m, a), V, H, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        const lt_layer *Ly = lt_view_layer(m, a, l); /* full fine-tuning: the trained weights */
        lt_layer_norm norms[LT_MAX_LAYER_NORMS];
        const int n_norms = lt_layer_norms(c, norms);
        for (int k = 0; k < n_norms; k++) { /* the checkpoint's values (Gemma: w, not 1 + w) */
            const float *f = *lt_layer_norm_at(Ly, norms[k].file);
            ADD("model.layers.%d.%s.weight", f ? f : *lt_layer_norm_at(Ly, norms[k].compute), norms[k].dim, 0, l,
                norms[k].name);
        }
        for (int q = 0; q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            if (Ly->bias[q])
                ADD("model.layers.%d.%s.%s.bias", Ly->bias[q], o, 0, l, lt_proj_parent[q], lt_proj_names[q]);
        }
        lt_module mods[P_COUNT];
        const int n_mods = lt_model_modules(c, mods);
        for (int k = 0; k < n_mods; k++) {
            int min, mout;
            lt_module_dims(c, &mods[k], &min, &mout);
            char *nm = names + (size_t)n * 128;
            snprintf(nm, 128, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            float *W = bufs[n] = malloc((size_t)mout * min * sizeof(float));
            if (!W) {
                st = lt_fail(err, LT_ERR_NOMEM, "out of memory exporting %s", nm);
                goto out;
            }
            e[n].name = nm;
            e[n].dtype = LT_DT_F32;
            e[n].ndim = 2;
            e[n].shape[0] = mout;
            e[n].shape[1] = min;
            e[n].data = W;
            n++;
            /* a fused module is its projections' weights stacked by rows */
            for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
                int in, o;
                lt_proj_dims(c, (lt_proj)q, &in, &o);
                st = lt_weight_download(m, &Ly->w[q], W, o, in, err); /* dequantized when quantized */
                if (st != LT_OK) goto out;
                lt_lora *lo = a ? lt_adapter_lora(a, l, (lt_proj)q) : NULL;
                if (lo && !a->merged) {
                    /* host-side merge: W += s B A */
                    float *A = malloc((size_t)a->p.rank * in * sizeof(float)),
                          *B = malloc((size_t)o * a->p.rank * sizeof(float));
                    if (!A || !B) {
                        free(A);
                        free(B);
                        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
                        goto out;
                    }
                    m->be->ops->download(m->be, A, lo->A, (size_t)a->p.rank * in * sizeof(float));
                    m->be->ops->download(m->be, B, lo->B, (size_t)o * a->p.rank * sizeof(float));
                    for (int i = 0; i < o; i++)
                        for (int r = 0; r < a->p.rank; r++) {
                            float bik = a->scaling * B[(size_t)i * a->p.rank + r];
                            const float *Ak = A + (size_t)r * in;
                            float *Wi = W + (size_t)i * in;
                            for (int j = 0; j < in; j++) Wi[j] += bik * Ak[j];
                        }
                    if (lo->B0) { /* PiSSA / OLoRA: W += s (B A - B0 A0) */
                        m->be->ops->download(m->be, A, lo->A0, (size_t)a->p.rank * in * sizeof(float));
                        m->be->ops->download(m->be, B, lo->B0, (size_t)o * a->p.rank * sizeof(float));
                        for (int i = 0; i < o; i++)
                            for (int r = 0; r < a->p.rank; r++) {
                                float bik = a->scaling * B[(size_t)i * a->p.rank + r];
                                const float *Ak = A + (size_t)r * in;
                                float *Wi = W + (size_t)i * in;
                                for (int j = 0; j < in; j++) Wi[j] -= bik * Ak[j];
                            }
                    }
                    if (lo->mag) { /* DoRA: rows times m / ||W + s B A|| */
                        float *mg = malloc((size_t)o * sizeof(float));
                        if (!mg) {
                            free(A);
                            free(B);
                            st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
                            goto out;
                        }
                        m->be->ops->download(m->be, mg, lo->mag, (size_t)o * sizeof(float));
                        for (int i = 0; i < o; i++) {
                            float *Wi = W + (size_t)i * in;
                            double ss = 0;
                            for (int j = 0; j < in; j++) ss += (double)Wi[j] * Wi[j];
                            float gi = (float)(mg[i] / sqrt(ss));
                            for (int j = 0; j < in; j++) Wi[j] *= gi;
                        }
                        free(mg);
                    }
                    free(A);
                    free(B);
                }
                W += (size_t)o * in;
            }
        }
    }
    if (a && a->final_norm_file) ADD("%s", a->final_norm_file, H, 0, "model.norm.weight");
    else ADD("%s", m->final_norm_file ? m->final_norm_file : m->final_norm, H, 0, "model.norm.weight");
    /* modules_to_save on a tied model trains a separate copy of embed_tokens and/or lm_head (PEFT): the
     * two differ, so the merged model is untied */
    const lt_weight head_view = lt_view_lm_head(m, a);
    const int untie = c->tie_word_embeddings && a && (a->embed || a->lm_head) && head_view.f32 != lt_view_embed(m, a);
    if (!c->tie_word_embeddings || untie) {
        const lt_weight head = lt_view_lm_head(m, a); /* exported dequantized when quantized */
        ADD("%s", NULL, V, H, "lm_head.weight");
        st = lt_weight_download(m, &head, bufs[n - 1], (int)V, (int)H, err);
        if (st != LT_OK) goto out;
    }
#undef ADD
    st = lt_st_write_sharded(dir, e, n, max_shard_bytes, err);
    if (st != LT_OK) goto out;
    {
        lt_model_config out_cfg = *c;
        snprintf(out_cfg.torch_dtype, sizeof out_cfg.torch_dtype, "float32");
        if (untie) out_cfg.tie_word_embeddings = 0;
        char path[4200];
        lt_path_join(path, sizeof path, dir, "config.json");
        st = lt_config_write(&out_cfg, path, err);
        if (st != LT_OK) goto out;
    }
    for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files; i++) {
        char src[4200], dst[4200];
        lt_path_join(src, sizeof src, m->dir, copied_files[i]);
        lt_path_join(dst, sizeof dst, dir, copied_files[i]);
        char *data;
        size_t len;
        lt_error ignore;
        if (lt_read_file(src, &data, &len, &ignore) != LT_OK) continue; /* optional files */
        st = lt_write_file_atomic(dst, data, len, err);
        free(data);
        if (st != LT_OK) goto out;
    }
out:
    if (bufs)
        for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    free(names);
    return st;
}

LT_API lt_status lt_adapter_export_merged(lt_adapter *a, const char *dir, int64_t max_shard_bytes) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!dir) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_export_merged: dir is NULL");
    if (max_shard_bytes < 0) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_export_merged: max_shard_bytes < 0");
    return lt_model_export(a->model, a, dir, max_shard_bytes > 0 ? (uint64_t)max_shard_bytes : (2ull << 30), &a->err);
}

LT_API lt_status lt_model_save(lt_model *m, const char *dir) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    if (!dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_save: dir is NULL");
    return lt_model_export(m, NULL, dir, 2ull << 30, err);
}
