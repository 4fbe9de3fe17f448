/*
 * merge.c - merging an adapter into the model's base weights and undoing it (LoRA and DoRA).
 *
 * defines: lt_adapter_merge, lt_adapter_unmerge
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter.h"
#include "formats/quant.h"

/* Make the model's copy of weight w writable (weights may point into a read-only file mapping). */
static lt_status weight_writable(lt_model *m, float **w, size_t n, lt_error *err) {
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == *w) return LT_OK;
    float *c = m->be->ops->alloc(m->be, n * sizeof(float));
    if (!c) return lt_fail(err, LT_ERR_NOMEM, "merge: out of memory copying a weight");
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) {
            m->be->ops->free(m->be, c);
            return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        }
        m->owned = o;
        m->cap_owned = cap;
    }
    m->be->ops->copy(m->be, c, *w, n * sizeof(float));
    m->owned[m->n_owned++] = c;
    *w = c;
    return LT_OK;
}

/* Merging writes into projection p of layer l: it must be f32 and, if still in the file mapping, copied. */
static lt_status projection_writable(lt_adapter *a, int l, lt_proj p, size_t n) {
    lt_model *m = a->model;
    if (m->layers[l].w[p].format != LT_WEIGHT_F32)
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED,
                       "merge: the base weights are quantized (%s); merging in "
                       "place needs f32 weights: export a merged model instead (lt_adapter_export_merged)",
                       lt_quant_format_name(m->quant));
    return weight_writable(m, &m->layers[l].w[p].f32, n, &a->err);
}

/* DoRA merge on the host, per projection: W' = g (W + s B A), g = m / ||W + s B A||_row (PEFT's merge);
 * unmerge: W = W' / g - s B A with the g kept from the merge. */
static lt_status dora_merge_sign(lt_adapter *a, float sign) {
    lt_model *m = a->model;
    const int L = (int)m->cfg.num_hidden_layers, r = a->p.rank;
    size_t total = 0;
    for (int q = 0; q < P_COUNT; q++)
        if (lt_adapter_lora(a, 0, (lt_proj)q)) {
            int in, o;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
            total += (size_t)o * L;
        }
    if (!a->dora_merge_g && !(a->dora_merge_g = malloc(total * sizeof(float))))
        return lt_fail(&a->err, LT_ERR_NOMEM, "merge: out of memory");
    size_t goff = 0;
    for (int l = 0; l < L; l++)
        for (int q = 0; q < P_COUNT; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
            if (!lo) continue;
            int in, o;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
            lt_status st = projection_writable(a, l, (lt_proj)q, (size_t)in * o);
            if (st != LT_OK) return st;
            float *W = malloc((size_t)o * in * sizeof(float)), *A = malloc((size_t)r * in * sizeof(float));
            float *B = malloc((size_t)o * r * sizeof(float)), *mg = malloc((size_t)o * sizeof(float));
            if (!W || !A || !B || !mg) {
                free(W);
                free(A);
                free(B);
                free(mg);
                return lt_fail(&a->err, LT_ERR_NOMEM, "merge: out of memory");
            }
            m->be->ops->download(m->be, W, m->layers[l].w[q].f32, (size_t)o * in * sizeof(float));
            m->be->ops->download(m->be, A, lo->A, (size_t)r * in * sizeof(float));
            m->be->ops->download(m->be, B, lo->B, (size_t)o * r * sizeof(float));
            m->be->ops->download(m->be, mg, lo->mag, (size_t)o * sizeof(float));
            float *g = a->dora_merge_g + goff;
            for (int i = 0; i < o; i++) {
                float *Wi = W + (size_t)i * in;
                if (sign < 0)
                    for (int j = 0; j < in; j++) Wi[j] /= g[i];
                double ss = 0;
                for (int j = 0; j < in; j++) {
                    double d = 0;
                    for (int k = 0; k < r; k++) d += (double)B[(size_t)i * r + k] * A[(size_t)k * in + j];
                    Wi[j] = (float)(Wi[j] + sign * a->scaling * d);
                    ss += (double)Wi[j] * Wi[j];
                }
                if (sign > 0) {
                    g[i] = (float)(mg[i] / sqrt(ss));
                    for (int j = 0; j < in; j++) Wi[j] *= g[i];
                }
            }
            m->be->ops->upload(m->be, m->layers[l].w[q].f32, W, (size_t)o * in * sizeof(float));
            free(W);
            free(A);
            free(B);
            free(mg);
            goff += (size_t)o;
        }
    return lt_backend_sync(m->be, &a->err, "merging the adapter");
}

/* The experts' LoRA of MoE layer l: W_e (out,in) += sign * s * B_e A_e for every expert of each targeted
 * kind (gate|up: B_e's row blocks are gate's then up's, A_e shared; docs/spec/moe.md). */
static lt_status merge_experts(lt_adapter *a, int l, float sign) {
    lt_model *m = a->model;
    const lt_model_config *c = &m->cfg;
    const int r = a->p.rank, MI = (int)c->moe_intermediate_size;
    for (int k = 0; k < 2; k++) {
        const lt_lora *lo = lt_adapter_elora(a, l, k);
        if (!lo) continue;
        int in, out;
        lt_elora_dims(c, k, &in, &out);
        const int o = k ? out : MI; /* the rows of one expert projection */
        for (int e = 0; e < c->num_experts; e++)
            for (int part = 0; part < (k ? 1 : 2); part++) {
                lt_weight *W = &m->layers[l].experts[3 * e + (k ? 2 : part)];
                if (W->format != LT_WEIGHT_F32)
                    return lt_fail(&a->err, LT_ERR_UNSUPPORTED,
                                   "merge: the experts are quantized (%s); merging in place needs f32 weights: "
                                   "export a merged model instead (lt_adapter_export_merged)",
                                   lt_quant_format_name(m->quant));
                lt_status st = weight_writable(m, &W->f32, (size_t)o * in, &a->err);
                if (st != LT_OK) return st;
                m->be->ops->gemm(m->be, 0, 0, o, in, r, sign * a->scaling, lo->B + ((size_t)e * out + part * MI) * r, r,
                                 lo->A + (size_t)e * r * in, in, 1.0f, W->f32, in);
            }
    }
    return LT_OK;
}

/* W (out,in) += sign * s * B (out,r) @ A (r,in) for every targeted projection (and expert) */
static lt_status merge_sign(lt_adapter *a, float sign) {
    lt_model *m = a->model;
    if (a->p.use_dora) return dora_merge_sign(a, sign);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        lt_status est = merge_experts(a, l, sign);
        if (est != LT_OK) return est;
        for (int q = 0; q < P_COUNT; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
            if (!lo) continue;
            int in, o;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
            lt_status st = projection_writable(a, l, (lt_proj)q, (size_t)in * o);
            if (st != LT_OK) return st;
            m->be->ops->gemm(m->be, 0, 0, o, in, a->p.rank, sign * a->scaling, lo->B, a->p.rank, lo->A, in, 1.0f,
                             m->layers[l].w[q].f32, in);
            if (lo->B0) /* PiSSA / OLoRA: the delta is s (B A - B0 A0) */
                m->be->ops->gemm(m->be, 0, 0, o, in, a->p.rank, -sign * a->scaling, lo->B0, a->p.rank, lo->A0, in, 1.0f,
                                 m->layers[l].w[q].f32, in);
        }
    }
    return lt_backend_sync(m->be, &a->err, "merging the adapter");
}

LT_API lt_status lt_adapter_merge(lt_adapter *a) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_merge: already merged");
    if (a->p.full_finetune || a->p.modules_to_save)
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED,
                       "lt_adapter_merge: the adapter holds trained copies of base "
                       "weights (%s); export the merged model instead (lt_adapter_export_merged)",
                       a->p.full_finetune ? "full fine-tuning" : "modules_to_save");
    if (a->model->base_dtype != LT_BASE_F32)
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED,
                       "lt_adapter_merge: the model keeps its base weights in "
                       "bf16; load it with base_dtype LT_BASE_F32 to merge");
    lt_status st = merge_sign(a, 1.0f);
    if (st == LT_OK) {
        a->merged = 1;
        a->model->n_merged++;
    }
    return st;
}

LT_API lt_status lt_adapter_unmerge(lt_adapter *a) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_unmerge: the adapter is not merged");
    lt_status st = merge_sign(a, -1.0f);
    if (st == LT_OK) {
        a->merged = 0;
        a->model->n_merged--;
    }
    return st;
}
