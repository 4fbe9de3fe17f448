/*
 * adapter.c - LoRA adapters: creation and initialisation, the PEFT directory format (save / load),
 * merging into the base weights and exporting a merged Hugging Face model.
 *
 * defines: lt_adapter_* (public), lt_adapter_alloc
 *
 * PEFT layout (shared/spec/formats.md): adapter_config.json + adapter_model.safetensors with keys
 *   base_model.model.model.layers.{l}.{self_attn|mlp}.{proj}.lora_A.weight  (r, in)
 *   base_model.model.model.layers.{l}.{self_attn|mlp}.{proj}.lora_B.weight  (out, r)
 * delta W = scaling * B @ A, scaling = alpha / r (rsLoRA: alpha / sqrt(r)).
 */
#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "quant.h"

#define KEY_PREFIX "base_model.model.model.layers."
#define INIT_SIDECAR "loratune_init.json" /* PiSSA / OLoRA: method and trainable rank (ours, not PEFT's) */

LT_API void lt_adapter_params_init(lt_adapter_params *out, size_t size) {
    lt_adapter_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->rank = 8;
    p->alpha = 8.0f;
    p->dropout = 0.0f;
    p->targets = LT_TARGET_ALL;
    p->init = LT_INIT_DEFAULT;
    lt_fill_struct(out, size, p, sizeof *p);
}

static float adapter_scaling(const lt_adapter_params *p) {
    return p->use_rslora ? p->alpha / sqrtf((float)p->rank) : p->alpha / (float)p->rank;
}

/* Full fine-tuning: no LoRA; every base weight as an fp32 copy in params (src/adapter_full.c). */
static lt_status full_alloc(lt_model *m, const lt_adapter_params *p, lt_adapter **out, lt_error *err) {
    lt_adapter *a = calloc(1, sizeof *a);
    const int L = (int)m->cfg.num_hidden_layers;
    if (!a) return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
    a->model = m;
    a->p = *p;
    a->p.size = sizeof a->p;
    a->p.rank = 0; /* no LoRA: workspaces plan no LoRA buffers */
    a->p.targets = 0;
    a->p.use_rslora = 0;
    a->lora = calloc((size_t)L * P_COUNT, sizeof *a->lora);
    a->full_layers = calloc((size_t)L, sizeof *a->full_layers);
    a->full_grads = calloc((size_t)L, sizeof *a->full_grads);
    if (!a->lora || !a->full_layers || !a->full_grads) {
        lt_adapter_free(a);
        return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
    }
    size_t norm_floats = 0;
    const size_t n = lt_adapter_extra_count(a, &norm_floats);
    lt_backend *be = m->be;
    a->ptensors = calloc((size_t)a->n_ptensors, sizeof *a->ptensors);
    a->n_params = n;
    a->params = be->ops->alloc(be, n * sizeof(float));
    a->grads = be->ops->alloc(be, n * sizeof(float));
    if (!a->ptensors || !a->params || !a->grads) {
        lt_adapter_free(a);
        return lt_fail(err, LT_ERR_NOMEM, "adapter: cannot allocate %zu trainable parameters (%.1f MiB each for "
                       "weights and gradients)", n, (double)n * 4 / (1 << 20));
    }
    if (m->cfg.norm_offset != 0.0f) { /* Gemma: the (1 + w) compute copies of the trained norms */
        const size_t ones = (size_t)(m->cfg.hidden_size > m->cfg.head_dim ? m->cfg.hidden_size : m->cfg.head_dim);
        a->norm_compute = be->ops->alloc(be, norm_floats * sizeof(float));
        a->norm_ones = be->ops->alloc(be, ones * sizeof(float));
        float *h = malloc(ones * sizeof *h);
        if (!a->norm_compute || !a->norm_ones || !h) {
            free(h);
            lt_adapter_free(a);
            return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
        }
        for (size_t i = 0; i < ones; i++) h[i] = 1.0f;
        be->ops->upload(be, a->norm_ones, h, ones * sizeof *h);
        free(h);
    }
    be->ops->zero(be, a->grads, n * sizeof(float));
    lt_status st = lt_adapter_extra_bind(a, 0, err);
    if (st == LT_OK) st = be->ops->sync(be);
    if (st != LT_OK) {
        lt_adapter_free(a);
        return lt_fail(err, st, "adapter: cannot copy the base weights");
    }
    /* the copies are the weights training reads; the base's file pages (a read-only mapping) need not stay
     * resident: released, they are read again from the file if the base is used (a reference model) */
    lt_st_set_release_pages(m->st);
    *out = a;
    return LT_OK;
}

lt_status lt_adapter_alloc(lt_model *m, const lt_adapter_params *p, lt_adapter **out, lt_error *err) {
    *out = NULL;
    lt_status fst = lt_adapter_full_check(m, p, err);
    if (fst != LT_OK) return fst;
    if (p->full_finetune) return full_alloc(m, p, out, err);
    if (p->rank <= 0 || p->rank > 4096) return lt_fail(err, LT_ERR_ARGUMENT, "adapter: rank %d is not in [1, 4096]", p->rank);
    if (!(p->alpha > 0) || !isfinite(p->alpha)) return lt_fail(err, LT_ERR_ARGUMENT, "adapter: alpha %g must be positive", p->alpha);
    if (!(p->dropout >= 0 && p->dropout < 1)) return lt_fail(err, LT_ERR_ARGUMENT, "adapter: dropout %g is not in [0, 1)", p->dropout);
    if (p->use_dora && p->dropout > 0)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "adapter: DoRA with lora_dropout %g is not supported (use 0)", p->dropout);
    if (p->use_dora && m->base_dtype == LT_BASE_BF16)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "adapter: DoRA needs the base weights' row norms, which a bf16 base "
                       "(base_dtype LT_BASE_BF16) does not keep; load the model with LT_BASE_F32");
    if (lt_init_is_decomposed(p->init) && p->use_dora)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "adapter: DoRA with PiSSA / OLoRA initialisation is not supported");
    if (!(p->targets & LT_TARGET_ALL) || (p->targets & ~(unsigned)LT_TARGET_ALL))
        return lt_fail(err, LT_ERR_ARGUMENT, "adapter: target mask 0x%x names no known projection", p->targets);
    lt_adapter *a = calloc(1, sizeof *a);
    const int L = (int)m->cfg.num_hidden_layers;
    if (!a || !(a->lora = calloc((size_t)L * P_COUNT, sizeof *a->lora))) {
        free(a);
        return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
    }
    a->model = m;
    a->p = *p;
    a->p.size = sizeof a->p;
    a->scaling = adapter_scaling(p);
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int k = 0; k < n_mods; k++) {
        unsigned mk = lt_module_mask(&mods[k]);
        if ((p->targets & mk) && (p->targets & mk) != mk) {
            lt_adapter_free(a);
            return lt_fail(err, LT_ERR_ARGUMENT, "adapter: %s fuses %d projections into %s; target all of them or none",
                           m->cfg.architecture, mods[k].count, mods[k].name);
        }
    }
    size_t n = 0, n_gn = 0, max_w = 0;
    for (int k = 0; k < n_mods; k++) {
        if (!(p->targets & lt_module_mask(&mods[k]))) continue;
        int in, o;
        lt_module_dims(&m->cfg, &mods[k], &in, &o);
        n += (size_t)p->rank * (in + o) + (p->use_dora ? (size_t)o : 0);
        n_gn += 2 * (size_t)o;
        for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
            int pi, po;
            lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
            if ((size_t)pi * po > max_w) max_w = (size_t)pi * po;
        }
    }
    n *= (size_t)L;
    n_gn *= (size_t)L;
    const size_t n_lora = n;
    size_t norm_floats = 0;
    n += lt_adapter_extra_count(a, &norm_floats); /* modules_to_save copies after the LoRA tensors */
    if (a->n_ptensors && !(a->ptensors = calloc((size_t)a->n_ptensors, sizeof *a->ptensors))) {
        lt_adapter_free(a);
        return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
    }
    if (p->use_dora) {
        a->dora_gn = m->be->ops->alloc(m->be, n_gn * sizeof(float));
        a->dora_w = m->be->ops->alloc(m->be, max_w * sizeof(float));
        if (!a->dora_gn || !a->dora_w) {
            lt_adapter_free(a);
            return lt_fail(err, LT_ERR_NOMEM, "adapter: cannot allocate the DoRA scratch (%zu floats)", n_gn + max_w);
        }
    }
    a->n_params = n;
    a->params = m->be->ops->alloc(m->be, n * sizeof(float));
    a->grads = m->be->ops->alloc(m->be, n * sizeof(float));
    if (!a->params || !a->grads) {
        lt_adapter_free(a);
        return lt_fail(err, LT_ERR_NOMEM, "adapter: cannot allocate %zu parameters", n);
    }
    m->be->ops->zero(m->be, a->params, n * sizeof(float));
    m->be->ops->zero(m->be, a->grads, n * sizeof(float));
    if (lt_init_is_decomposed(p->init)) { /* PiSSA / OLoRA: the frozen A0, B0, laid out like the LoRA part of params */
        a->n_init0 = n_lora;
        if (!(a->init0 = m->be->ops->alloc(m->be, n_lora * sizeof(float)))) {
            lt_adapter_free(a);
            return lt_fail(err, LT_ERR_NOMEM, "adapter: cannot allocate %zu initial parameters", n_lora);
        }
        m->be->ops->zero(m->be, a->init0, n_lora * sizeof(float));
    }
    size_t off = 0, gn_off = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < n_mods; k++) {
            if (!(p->targets & lt_module_mask(&mods[k]))) continue;
            int in, o;
            lt_module_dims(&m->cfg, &mods[k], &in, &o);
            size_t a_off = off, b_off = off + (size_t)p->rank * in, m_off = b_off + (size_t)o * p->rank;
            off = m_off + (p->use_dora ? (size_t)o : 0);
            /* the projections of a fused module share A; their B are consecutive row blocks */
            for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
                int pi, po;
                lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
                lt_lora *lo = &a->lora[l * P_COUNT + q];
                lo->A = a->params + a_off;
                lo->dA = a->grads + a_off;
                lo->B = a->params + b_off;
                lo->dB = a->grads + b_off;
                if (a->init0) { lo->A0 = a->init0 + a_off; lo->B0 = a->init0 + b_off; }
                b_off += (size_t)po * p->rank;
                if (p->use_dora) { /* the module's magnitude vector: this projection's rows */
                    lo->mag = a->params + m_off;
                    lo->dmag = a->grads + m_off;
                    m_off += (size_t)po;
                    lo->dora_g = a->dora_gn + gn_off;
                    lo->dora_inv_n = a->dora_gn + gn_off + po;
                    gn_off += 2 * (size_t)po;
                }
            }
        }
    a->n_decay = n; /* LoRA tensors and modules_to_save copies all take weight decay */
    if (a->n_ptensors) {
        lt_status st = lt_adapter_extra_bind(a, n_lora, err);
        if (st != LT_OK) { lt_adapter_free(a); return st; }
        a->n_decay = n;
    }
    *out = a;
    return LT_OK;
}

/* xoshiro256** seeded by splitmix64: the adapter's own generator (no global state). */
typedef struct { uint64_t s[4]; } rng_t;
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static void rng_seed(rng_t *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        r->s[i] = z ^ (z >> 31);
    }
}
static uint64_t rng_next(rng_t *r) {
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return res;
}
static double rng_uniform(rng_t *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static double rng_normal(rng_t *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

LT_API lt_status lt_adapter_create(lt_model *m, const lt_adapter_params *params, lt_adapter **out) {
    lt_error *terr = lt_thread_error();
    lt_error_clear(terr);
    if (!out) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: out is NULL");
    *out = NULL;
    if (!m) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: model is NULL");
    lt_adapter_params p;
    lt_adapter_params_init(&p, sizeof p);
    if (params) {
        if (params->size < offsetof(lt_adapter_params, seed) || params->size > sizeof p)
            return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: params->size %zu is not a size this "
                           "library knows (call lt_adapter_params_init)", params->size);
        memcpy(&p, params, params->size);
    }
    if (p.init != LT_INIT_DEFAULT && p.init != LT_INIT_GAUSSIAN && !lt_init_is_decomposed(p.init))
        return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: unknown init %d", (int)p.init);
    lt_adapter *a;
    lt_status st = lt_adapter_alloc(m, &p, &a, terr);
    if (st != LT_OK) return st;
    if (lt_init_is_decomposed(p.init)) { /* PiSSA / OLoRA: A, B (and A0, B0) from the base weights */
        if ((st = lt_lora_decompose_init(a, terr)) != LT_OK) { lt_adapter_free(a); return st; }
        *out = a;
        return LT_OK;
    }
    /* A: kaiming_uniform(a=sqrt 5) = U(-1/sqrt(in), 1/sqrt(in)) (PEFT default) or N(0, 1/r) ("gaussian");
     * B: zeros, so the adapter starts as the identity. */
    rng_t rng;
    rng_seed(&rng, p.seed);
    float *host = NULL;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first); /* fused: one shared A */
            if (!lo) continue;
            int in, o;
            lt_module_dims(&m->cfg, &mods[q], &in, &o);
            size_t n = (size_t)p.rank * in;
            float *h = realloc(host, n * sizeof *h);
            if (!h) { free(host); lt_adapter_free(a); return lt_fail(terr, LT_ERR_NOMEM, "out of memory"); }
            host = h;
            double bound = 1.0 / sqrt((double)in);
            for (size_t i = 0; i < n; i++)
                h[i] = p.init == LT_INIT_GAUSSIAN ? (float)(rng_normal(&rng) / p.rank)
                                                  : (float)((2.0 * rng_uniform(&rng) - 1.0) * bound);
            m->be->ops->upload(m->be, lo->A, h, n * sizeof *h);
        }
    free(host);
    if (p.use_dora) { /* m = ||W + s B A||_row = ||W||_row since B = 0 (PEFT's DoRA init) */
        for (int l = 0; l < m->cfg.num_hidden_layers; l++)
            for (int q = 0; q < P_COUNT; q++) {
                lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
                if (!lo) continue;
                int in, o;
                lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
                float *h = malloc((size_t)o * in * sizeof *h);
                if (!h) { lt_adapter_free(a); return lt_fail(terr, LT_ERR_NOMEM, "out of memory"); }
                lt_status st = lt_weight_download(m, &m->layers[l].w[q], h, o, in, terr); /* dequantized: QDoRA */
                if (st != LT_OK) { free(h); lt_adapter_free(a); return st; }
                for (int i = 0; i < o; i++) {
                    double ss = 0;
                    for (int j = 0; j < in; j++) ss += (double)h[(size_t)i * in + j] * h[(size_t)i * in + j];
                    h[i] = (float)sqrt(ss); /* row i is read before h[i] is written (i <= i * in) */
                }
                m->be->ops->upload(m->be, lo->mag, h, (size_t)o * sizeof *h);
                free(h);
            }
    }
    *out = a;
    return LT_OK;
}

LT_API void lt_adapter_free(lt_adapter *a) {
    if (!a) return;
    lt_backend *be = a->model->be;
    if (a->params) be->ops->free(be, a->params);
    if (a->grads) be->ops->free(be, a->grads);
    if (a->dora_gn) be->ops->free(be, a->dora_gn);
    if (a->dora_w) be->ops->free(be, a->dora_w);
    if (a->init0) be->ops->free(be, a->init0);
    if (a->norm_compute) be->ops->free(be, a->norm_compute);
    if (a->norm_ones) be->ops->free(be, a->norm_ones);
    free(a->full_layers);
    free(a->full_grads);
    free(a->ptensors);
    free(a->dora_merge_g);
    free(a->lora);
    free(a);
}

LT_API const char *lt_adapter_last_error(const lt_adapter *a) {
    return a ? a->err.msg : "lt_adapter_last_error: adapter is NULL";
}

LT_API lt_status lt_adapter_get_params(const lt_adapter *a, lt_adapter_params *p) {
    if (!a || !p || p->size < sizeof(size_t)) return LT_ERR_ARGUMENT;
    size_t n = p->size < sizeof a->p ? p->size : sizeof a->p;
    memcpy(p, &a->p, n);
    p->size = n;
    return LT_OK;
}

LT_API int64_t lt_adapter_n_params(const lt_adapter *a) { return a ? (int64_t)a->n_params : 0; }

/* ---- PEFT save ------------------------------------------------------------------------------------ */

static void key_of(char *buf, size_t len, int l, const lt_module *mod, char ab) {
    snprintf(buf, len, KEY_PREFIX "%d.%s.%s.lora_%c.weight", l, mod->parent, mod->name, ab);
}

/* Download all adapter parameters to a host buffer. */
static float *params_to_host(const lt_adapter *a) {
    float *h = malloc(a->n_params * sizeof(float));
    if (h) a->model->be->ops->download(a->model->be, h, a->params, a->n_params * sizeof(float));
    return h;
}

static lt_status write_adapter_config(const lt_adapter *a, const char *dir, lt_error *err) {
    json_t *o = json_object(), *t = json_array();
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&a->model->cfg, mods);
    for (int q = 0; q < n_mods; q++)
        if (a->p.targets & lt_module_mask(&mods[q])) json_array_append_new(t, json_string(mods[q].name));
    json_object_set_new(o, "peft_type", json_string("LORA"));
    json_object_set_new(o, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(o, "base_model_name_or_path", json_string(a->model->dir));
    /* PiSSA / OLoRA are saved converted to a plain LoRA of rank 2r for the original base, as PEFT's
     * save_pretrained(path_initial_model_for_weight_conversion=...): r doubled, lora_alpha doubled (times
     * sqrt 2 with rsLoRA) so the scaling is kept, init_lora_weights true */
    const int conv = a->init0 != NULL;
    json_object_set_new(o, "r", json_integer(conv ? 2 * a->p.rank : a->p.rank));
    json_object_set_new(o, "lora_alpha", json_real(!conv ? a->p.alpha : a->p.use_rslora ? a->p.alpha * sqrt(2.0)
                                                                                        : 2.0 * a->p.alpha));
    json_object_set_new(o, "target_modules", t);
    json_object_set_new(o, "lora_dropout", json_real(a->p.dropout));
    json_object_set_new(o, "bias", json_string("none"));
    json_object_set_new(o, "use_rslora", json_boolean(a->p.use_rslora));
    json_object_set_new(o, "use_dora", json_boolean(a->p.use_dora));
    json_object_set_new(o, "fan_in_fan_out", json_false());
    json_object_set_new(o, "init_lora_weights", a->p.init == LT_INIT_GAUSSIAN ? json_string("gaussian") : json_true());
    if (conv) { /* ours: what lt_adapter_load needs to split the rank-2r adapter back into A, B and A0, B0 */
        json_t *side = json_object();
        json_object_set_new(side, "format", json_string("libloratune-init-1"));
        json_object_set_new(side, "init_lora_weights", json_string(a->p.init == LT_INIT_PISSA ? "pissa" : "olora"));
        json_object_set_new(side, "r", json_integer(a->p.rank));
        json_object_set_new(side, "lora_alpha", json_real(a->p.alpha));
        char *ss = json_dumps(side, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
        json_decref(side);
        char sp[4200];
        lt_path_join(sp, sizeof sp, dir, INIT_SIDECAR);
        lt_status st = ss ? lt_write_file_atomic(sp, ss, strlen(ss), err) : lt_fail(err, LT_ERR_NOMEM, "out of memory");
        free(ss);
        if (st != LT_OK) { json_decref(o); return st; }
    } else { /* a plain adapter: a stale sidecar from an earlier save into this directory would mislead a load */
        char sp[4200];
        lt_path_join(sp, sizeof sp, dir, INIT_SIDECAR);
        remove(sp);
    }
    if (a->p.modules_to_save) { /* PEFT: the module names (ModulesToSaveWrapper) */
        json_t *mts = json_array();
        if (a->p.modules_to_save & LT_SAVE_EMBED_TOKENS) json_array_append_new(mts, json_string("embed_tokens"));
        if (a->p.modules_to_save & LT_SAVE_LM_HEAD) json_array_append_new(mts, json_string("lm_head"));
        json_object_set_new(o, "modules_to_save", mts);
    } else {
        json_object_set_new(o, "modules_to_save", json_null());
    }
    json_object_set_new(o, "rank_pattern", json_object());
    json_object_set_new(o, "alpha_pattern", json_object());
    json_object_set_new(o, "inference_mode", json_true());
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_config.json");
    lt_status st = lt_write_file_atomic(path, s, strlen(s), err);
    free(s);
    return st;
}

static lt_status adapter_save(lt_adapter *a, const char *dir, lt_error *err) {
    lt_status st = lt_mkdir_p(dir, err);
    if (st != LT_OK) return st;
    const int L = (int)a->model->cfg.num_hidden_layers;
    float *h = params_to_host(a);
    int n = 0;
    lt_st_entry *e = calloc((size_t)L * P_COUNT * 3 + 2, sizeof *e);
    char *names = calloc((size_t)L * P_COUNT * 3 + 2, 160);
    /* PiSSA / OLoRA: the converted rank-2r tensors A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r) */
    float *h0 = a->init0 ? malloc(a->n_init0 * sizeof(float)) : NULL, *cv = a->init0 ? malloc(2 * a->n_init0 * sizeof(float)) : NULL;
    if (!h || !e || !names || (a->init0 && (!h0 || !cv))) {
        free(h); free(e); free(names); free(h0); free(cv);
        return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    }
    if (h0) a->model->be->ops->download(a->model->be, h0, a->init0, a->n_init0 * sizeof(float));
    float *cvp = cv;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&a->model->cfg, mods);
    for (int l = 0; l < L; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
            if (!lo) continue;
            int in, o;
            lt_module_dims(&a->model->cfg, &mods[q], &in, &o);
            for (int k = 0; k < 2; k++) {
                char *nm = names + (size_t)n * 160;
                key_of(nm, 160, l, &mods[q], k ? 'B' : 'A');
                e[n].name = nm;
                e[n].dtype = LT_DT_F32;
                e[n].ndim = 2;
                e[n].shape[0] = k ? o : a->p.rank;
                e[n].shape[1] = k ? a->p.rank : in;
                e[n].data = h + ((k ? lo->B : lo->A) - a->params);
                if (h0) {
                    const int r = a->p.rank;
                    const float *t = e[n].data, *t0 = h0 + ((k ? lo->B : lo->A) - a->params);
                    if (!k) { /* rows: A then A0 */
                        memcpy(cvp, t, (size_t)r * in * sizeof(float));
                        memcpy(cvp + (size_t)r * in, t0, (size_t)r * in * sizeof(float));
                    } else { /* columns: B then -B0 */
                        for (int i = 0; i < o; i++)
                            for (int j = 0; j < r; j++) {
                                cvp[(size_t)i * 2 * r + j] = t[(size_t)i * r + j];
                                cvp[(size_t)i * 2 * r + r + j] = -t0[(size_t)i * r + j];
                            }
                    }
                    e[n].shape[k ? 1 : 0] = 2 * r;
                    e[n].data = cvp;
                    cvp += (size_t)2 * r * (k ? o : in);
                }
                n++;
            }
            if (lo->mag) { /* DoRA: PEFT's key has no ".weight" */
                char *nm = names + (size_t)n * 160;
                snprintf(nm, 160, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l, mods[q].parent, mods[q].name);
                e[n].name = nm;
                e[n].dtype = LT_DT_F32;
                e[n].ndim = 1;
                e[n].shape[0] = o;
                e[n].data = h + (lo->mag - a->params);
                n++;
            }
        }
    for (int i = 0; i < a->n_ptensors; i++) { /* modules_to_save: PEFT's keys, the wrapper's name left out */
        const lt_ptensor *t = &a->ptensors[i];
        char *nm = names + (size_t)n * 160;
        snprintf(nm, 160, "base_model.model.%s", t->name);
        e[n].name = nm;
        e[n].dtype = LT_DT_F32;
        e[n].ndim = 2;
        e[n].shape[0] = a->model->cfg.vocab_size;
        e[n].shape[1] = a->model->cfg.hidden_size;
        e[n].data = h + t->off;
        n++;
    }
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_model.safetensors");
    static const char *const meta[] = {"format", "pt", NULL};
    st = lt_st_write(path, e, n, meta, err);
    free(h); free(e); free(names); free(h0); free(cv);
    if (st != LT_OK) return st;
    return write_adapter_config(a, dir, err);
}

LT_API lt_status lt_adapter_save(lt_adapter *a, const char *dir) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!dir) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_save: dir is NULL");
    if (a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_save: the adapter is merged; unmerge it first");
    if (a->p.full_finetune) /* the trained model itself, as a Hugging Face directory */
        return lt_model_export(a->model, a, dir, 2ull << 30, &a->err);
    return adapter_save(a, dir, &a->err);
}

/* ---- PEFT load ------------------------------------------------------------------------------------ */

/* target_modules: a list of names, "all-linear", or a regex matched against full module names. */
static lt_status parse_targets(json_t *tm, const lt_model *m, unsigned *targets, const char *path, lt_error *err) {
    *targets = 0;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    if (json_is_array(tm)) {
        size_t i;
        json_t *v;
        json_array_foreach(tm, i, v) {
            if (!json_is_string(v)) return lt_fail(err, LT_ERR_JSON, "%s: target_modules[%zu] is not a string", path, i);
            const char *s = json_string_value(v);
            int q = 0;
            while (q < n_mods && strcmp(s, mods[q].name)) q++;
            if (q == n_mods) {
                char list[256] = "";
                for (int k = 0; k < n_mods; k++)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", mods[k].name);
                return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: target module \"%s\" is not one of %s", path, s, list);
            }
            *targets |= lt_module_mask(&mods[q]);
        }
    } else if (json_is_string(tm)) {
        const char *s = json_string_value(tm);
        if (!strcmp(s, "all-linear")) {
            *targets = LT_TARGET_ALL;
        } else {
            regex_t re;
            char pat[1024];
            snprintf(pat, sizeof pat, "^(%s)$", s); /* PEFT uses re.fullmatch */
            if (regcomp(&re, pat, REG_EXTENDED | REG_NOSUB))
                return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: target_modules regex \"%s\" is not a POSIX "
                               "extended regex this library can evaluate", path, s);
            char name[256];
            for (int q = 0; q < n_mods; q++) {
                unsigned hit = 0;
                for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
                    snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, mods[q].parent, mods[q].name);
                    if (!regexec(&re, name, 0, NULL, 0)) hit++;
                }
                if (hit && hit != (unsigned)m->cfg.num_hidden_layers) {
                    regfree(&re);
                    return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: target_modules regex \"%s\" selects %s in only "
                                   "some layers; per-layer targets are not supported", path, s, mods[q].name);
                }
                if (hit) *targets |= lt_module_mask(&mods[q]);
            }
            regfree(&re);
        }
    } else {
        return lt_fail(err, LT_ERR_JSON, "%s: target_modules must be a list of names or a string", path);
    }
    if (!*targets) return lt_fail(err, LT_ERR_FORMAT, "%s: target_modules selects no projection of this model", path);
    return LT_OK;
}

static lt_status read_adapter_config(const char *dir, const lt_model *m, lt_adapter_params *p, lt_error *err) {
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_config.json");
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) {
        FILE *f = fopen(path, "r");
        if (!f) return lt_fail(err, LT_ERR_MISSING, "%s: cannot open: not a PEFT adapter directory", path);
        fclose(f);
        return lt_fail(err, LT_ERR_JSON, "%s:%d: %s", path, je.line, je.text);
    }
    lt_status st = LT_OK;
    lt_adapter_params_init(p, sizeof *p);
    json_t *v;
    if (!json_is_object(o)) { st = lt_fail(err, LT_ERR_JSON, "%s: not a JSON object", path); goto out; }
    v = json_object_get(o, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA"))) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: peft_type %s is not LORA", path, json_is_string(v) ? json_string_value(v) : "?");
        goto out;
    }
    v = json_object_get(o, "r");
    if (v && !json_is_integer(v)) { st = lt_fail(err, LT_ERR_JSON, "%s: \"r\" is not an integer", path); goto out; }
    p->rank = v ? (int)json_integer_value(v) : 8;
    v = json_object_get(o, "lora_alpha");
    if (v && !json_is_number(v)) { st = lt_fail(err, LT_ERR_JSON, "%s: \"lora_alpha\" is not a number", path); goto out; }
    p->alpha = v ? (float)json_number_value(v) : 8.0f;
    v = json_object_get(o, "lora_dropout");
    if (v && !json_is_number(v)) { st = lt_fail(err, LT_ERR_JSON, "%s: \"lora_dropout\" is not a number", path); goto out; }
    p->dropout = v ? (float)json_number_value(v) : 0.0f;
    v = json_object_get(o, "use_rslora");
    p->use_rslora = v && json_is_true(v);
    v = json_object_get(o, "use_dora");
    p->use_dora = v && json_is_true(v);
    v = json_object_get(o, "bias");
    if (v && json_is_string(v) && strcmp(json_string_value(v), "none")) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: bias \"%s\" is not supported (only \"none\")", path, json_string_value(v));
        goto out;
    }
    v = json_object_get(o, "modules_to_save");
    if (v && !json_is_null(v)) {
        size_t i;
        json_t *s;
        if (!json_is_array(v)) { st = lt_fail(err, LT_ERR_JSON, "%s: modules_to_save is not a list", path); goto out; }
        json_array_foreach(v, i, s) {
            const char *nm = json_is_string(s) ? json_string_value(s) : "";
            if (!strcmp(nm, "embed_tokens")) p->modules_to_save |= LT_SAVE_EMBED_TOKENS;
            else if (!strcmp(nm, "lm_head")) p->modules_to_save |= LT_SAVE_LM_HEAD;
            else {
                st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: modules_to_save entry \"%s\" is not supported (only "
                             "embed_tokens and lm_head)", path, nm);
                goto out;
            }
        }
    }
    const char *pats[] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(o, pats[i]);
        if (v && json_is_object(v) && json_object_size(v) > 0) {
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: a non-empty %s is not supported", path, pats[i]);
            goto out;
        }
    }
    v = json_object_get(o, "layers_to_transform");
    if (v && !json_is_null(v)) { st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: layers_to_transform is not supported", path); goto out; }
    v = json_object_get(o, "target_modules");
    if (!v) { st = lt_fail(err, LT_ERR_MISSING, "%s: target_modules is missing", path); goto out; }
    st = parse_targets(v, m, &p->targets, path, err);
    v = json_object_get(o, "init_lora_weights");
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "gaussian")) p->init = LT_INIT_GAUSSIAN;
    /* PEFT's unconverted PiSSA / OLoRA save: its from_pretrained redoes the decomposition on the base (the base
     * becomes W - s B0 A0) and then loads A, B; lt_adapter_load does the same with A0, B0 frozen */
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "pissa")) p->init = LT_INIT_PISSA;
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "olora")) p->init = LT_INIT_OLORA;
    if (st == LT_OK && v && json_is_string(v) && !strncmp(json_string_value(v), "pissa_niter_", 12))
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: init_lora_weights \"%s\" (PiSSA with a randomized SVD) is not "
                     "supported: its A0, B0 cannot be reproduced; save the adapter with PEFT's "
                     "path_initial_model_for_weight_conversion instead", path, json_string_value(v));
out:
    json_decref(o);
    return st;
}

/* loratune_init.json next to a converted PiSSA / OLoRA adapter (written by adapter_save): the file holds
 * A' = [A; A0], B' = [B, -B0] of rank 2r; p becomes the trainable adapter's params (rank r, its alpha,
 * its init). Without the sidecar the directory is a plain LoRA and p is left alone. */
static lt_status read_init_sidecar(const char *dir, lt_adapter_params *p, int *converted, lt_error *err) {
    char path[4200];
    *converted = 0;
    lt_path_join(path, sizeof path, dir, INIT_SIDECAR);
    FILE *f = fopen(path, "r");
    if (!f) return LT_OK;
    fclose(f);
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) return lt_fail(err, LT_ERR_JSON, "%s:%d: %s", path, je.line, je.text);
    json_t *init = json_object_get(o, "init_lora_weights"), *r = json_object_get(o, "r");
    json_t *alpha = json_object_get(o, "lora_alpha");
    const char *is = json_is_string(init) ? json_string_value(init) : "";
    lt_status st = LT_OK;
    if (strcmp(is, "pissa") && strcmp(is, "olora"))
        st = lt_fail(err, LT_ERR_FORMAT, "%s: init_lora_weights must be \"pissa\" or \"olora\"", path);
    else if (!json_is_integer(r) || 2 * json_integer_value(r) != p->rank)
        st = lt_fail(err, LT_ERR_FORMAT, "%s: \"r\" must be half of adapter_config.json's r (%d)", path, p->rank);
    else if (!json_is_number(alpha) || !(json_number_value(alpha) > 0))
        st = lt_fail(err, LT_ERR_FORMAT, "%s: \"lora_alpha\" must be a positive number", path);
    if (st == LT_OK) {
        p->rank = (int)json_integer_value(r);
        p->alpha = (float)json_number_value(alpha);
        p->init = strcmp(is, "pissa") ? LT_INIT_OLORA : LT_INIT_PISSA;
        *converted = 1;
    }
    json_decref(o);
    return st;
}

LT_API lt_status lt_adapter_load(lt_model *m, const char *dir, lt_adapter **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_load: out is NULL");
    *out = NULL;
    if (!m || !dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_load: model and dir must not be NULL");
    char cfg_path[4200], acfg_path[4200];
    lt_path_join(cfg_path, sizeof cfg_path, dir, "config.json");
    lt_path_join(acfg_path, sizeof acfg_path, dir, "adapter_config.json");
    if (access(acfg_path, F_OK) != 0 && access(cfg_path, F_OK) == 0) /* a model saved by full fine-tuning */
        return lt_adapter_load_full(m, dir, out, err);
    lt_adapter_params p;
    lt_status st = read_adapter_config(dir, m, &p, err);
    int converted = 0; /* PiSSA / OLoRA saved by us: [A; A0], [B, -B0] of rank 2r */
    if (st == LT_OK) st = read_init_sidecar(dir, &p, &converted, err);
    if (st != LT_OK) return st;
    const int file_rank = converted ? 2 * p.rank : p.rank;
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_model.safetensors");
    lt_st_file *f = NULL;
    if ((st = lt_st_open(path, 1, &f, err)) != LT_OK) {
        if (st == LT_ERR_IO) {
            char bin[4200];
            lt_path_join(bin, sizeof bin, dir, "adapter_model.bin");
            FILE *bf = fopen(bin, "rb");
            if (bf) {
                fclose(bf);
                return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: only adapter_model.safetensors is supported, not the "
                               "pickle adapter_model.bin (re-save it with safe_serialization=True)", dir);
            }
        }
        return st;
    }
    lt_adapter *a = NULL;
    if ((st = lt_adapter_alloc(m, &p, &a, err)) != LT_OK) { lt_st_close(f); return st; }
    const int L = (int)m->cfg.num_hidden_layers;
    float *host = malloc(a->n_params * sizeof(float)), *host0 = NULL, *cvt = NULL;
    if (!host) { st = lt_fail(err, LT_ERR_NOMEM, "out of memory"); goto fail; }
    if (converted && (!(host0 = malloc(a->n_params * sizeof(float))) || !(cvt = malloc(2 * a->n_params * sizeof(float))))) {
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (a->init0 && !converted && (st = lt_lora_decompose_init(a, err)) != LT_OK) goto fail; /* PEFT's unconverted save */
    /* every key in the file must be one we expect ... */
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int i = 0; i < lt_st_count(f); i++) {
        const char *name = lt_st_tensors(f)[i].name;
        int l, q, matched = 0;
        char key[256];
        for (l = 0; l < L && !matched; l++)
            for (q = 0; q < n_mods && !matched; q++)
                for (int k = 0; k < 3 && !matched; k++) {
                    if (k == 2) snprintf(key, sizeof key, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l,
                                         mods[q].parent, mods[q].name);
                    else key_of(key, sizeof key, l, &mods[q], k ? 'B' : 'A');
                    const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
                    matched = !strcmp(key, name) && lo && (k < 2 || lo->mag);
                }
        for (int k = 0; k < a->n_ptensors && !matched; k++) {
            char key[256];
            snprintf(key, sizeof key, "base_model.model.%s", a->ptensors[k].name);
            matched = !strcmp(key, name);
        }
        if (!matched) {
            st = lt_fail(err, LT_ERR_FORMAT, "%s: unexpected tensor \"%s\" (not a LoRA weight of a targeted "
                         "projection of this %d-layer model; an adapter for another model?)", path, name, L);
            goto fail;
        }
    }
    /* ... and every expected key must be there with the right shape */
    for (int l = 0; l < L; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
            if (!lo) continue;
            int in, o;
            lt_module_dims(&m->cfg, &mods[q], &in, &o);
            for (int k = 0; k < (lo->mag ? 3 : 2); k++) {
                char key[256];
                if (k == 2) snprintf(key, sizeof key, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l, mods[q].parent,
                                     mods[q].name);
                else key_of(key, sizeof key, l, &mods[q], k ? 'B' : 'A');
                const lt_st_tensor *t = lt_st_find(f, key);
                if (!t) { st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" is missing", path, key); goto fail; }
                if (k == 2 && (t->ndim != 1 || t->shape[0] != o)) {
                    st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%d]", path, key, o);
                    goto fail;
                }
                int64_t d0 = k ? o : file_rank, d1 = k ? file_rank : in;
                if (k < 2 && (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)) {
                    st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" has shape [%lld, %lld], expected [%lld, %lld] "
                                 "(r = %d in adapter_config.json; an adapter for another model?)", path, key,
                                 (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : -1),
                                 (long long)d0, (long long)d1, file_rank);
                    goto fail;
                }
                float *dst = host + ((k == 2 ? lo->mag : k ? lo->B : lo->A) - a->params);
                if (lt_convert_to_f32(host0 ? cvt : dst, t->data, t->dtype, (size_t)t->numel) != 0) {
                    st = lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s (need F32, F16 or BF16)", path,
                                 key, lt_dtype_name(t->dtype));
                    goto fail;
                }
                if (host0) { /* split [A; A0] by rows, [B, -B0] by columns */
                    const int r = p.rank;
                    float *dst0 = host0 + (dst - host);
                    if (!k) {
                        memcpy(dst, cvt, (size_t)r * in * sizeof(float));
                        memcpy(dst0, cvt + (size_t)r * in, (size_t)r * in * sizeof(float));
                    } else {
                        for (int i = 0; i < o; i++)
                            for (int j = 0; j < r; j++) {
                                dst[(size_t)i * r + j] = cvt[(size_t)i * 2 * r + j];
                                dst0[(size_t)i * r + j] = -cvt[(size_t)i * 2 * r + r + j];
                            }
                    }
                }
            }
        }
    for (int k = 0; k < a->n_ptensors; k++) { /* modules_to_save copies */
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s", a->ptensors[k].name);
        const lt_st_tensor *t = lt_st_find(f, key);
        if (!t) { st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" (modules_to_save) is missing", path, key); goto fail; }
        if (t->ndim != 2 || t->shape[0] != m->cfg.vocab_size || t->shape[1] != m->cfg.hidden_size) {
            st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%lld, %lld]", path, key,
                         (long long)m->cfg.vocab_size, (long long)m->cfg.hidden_size);
            goto fail;
        }
        if (lt_convert_to_f32(host + a->ptensors[k].off, t->data, t->dtype, (size_t)t->numel) != 0) {
            st = lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s (need F32, F16 or BF16)", path, key,
                         lt_dtype_name(t->dtype));
            goto fail;
        }
    }
    for (size_t i = 0; i < a->n_params; i++)
        if (!isfinite(host[i])) { st = lt_fail(err, LT_ERR_NUMERIC, "%s: the adapter contains NaN or Inf", path); goto fail; }
    m->be->ops->upload(m->be, a->params, host, a->n_params * sizeof(float));
    if (host0) m->be->ops->upload(m->be, a->init0, host0, a->n_init0 * sizeof(float));
    if ((st = m->be->ops->sync(m->be)) != LT_OK) goto fail;
    free(host); free(host0); free(cvt);
    lt_st_close(f);
    *out = a;
    return LT_OK;
fail:
    free(host); free(host0); free(cvt);
    lt_st_close(f);
    lt_adapter_free(a);
    return st;
}

/* ---- merge ---------------------------------------------------------------------------------------- */

/* Make the model's copy of weight w writable (weights may point into a read-only file mapping). */
static lt_status weight_writable(lt_model *m, float **w, size_t n, lt_error *err) {
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == *w) return LT_OK;
    float *c = m->be->ops->alloc(m->be, n * sizeof(float));
    if (!c) return lt_fail(err, LT_ERR_NOMEM, "merge: out of memory copying a weight");
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) { m->be->ops->free(m->be, c); return lt_fail(err, LT_ERR_NOMEM, "out of memory"); }
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
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED, "merge: the base weights are quantized (%s); merging in "
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
                free(W); free(A); free(B); free(mg);
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
            free(W); free(A); free(B); free(mg);
            goff += (size_t)o;
        }
    return m->be->ops->sync(m->be);
}

/* W (out,in) += sign * s * B (out,r) @ A (r,in) for every targeted projection */
static lt_status merge_sign(lt_adapter *a, float sign) {
    lt_model *m = a->model;
    if (a->p.use_dora) return dora_merge_sign(a, sign);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int q = 0; q < P_COUNT; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
            if (!lo) continue;
            int in, o;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &o);
            lt_status st = projection_writable(a, l, (lt_proj)q, (size_t)in * o);
            if (st != LT_OK) return st;
            m->be->ops->gemm(m->be, 0, 0, o, in, a->p.rank, sign * a->scaling, lo->B, a->p.rank, lo->A, in,
                             1.0f, m->layers[l].w[q].f32, in);
            if (lo->B0) /* PiSSA / OLoRA: the delta is s (B A - B0 A0) */
                m->be->ops->gemm(m->be, 0, 0, o, in, a->p.rank, -sign * a->scaling, lo->B0, a->p.rank, lo->A0, in,
                                 1.0f, m->layers[l].w[q].f32, in);
        }
    return m->be->ops->sync(m->be);
}

LT_API lt_status lt_adapter_merge(lt_adapter *a) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_merge: already merged");
    if (a->p.full_finetune || a->p.modules_to_save)
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED, "lt_adapter_merge: the adapter holds trained copies of base "
                       "weights (%s); export the merged model instead (lt_adapter_export_merged)",
                       a->p.full_finetune ? "full fine-tuning" : "modules_to_save");
    if (a->model->base_dtype != LT_BASE_F32)
        return lt_fail(&a->err, LT_ERR_UNSUPPORTED, "lt_adapter_merge: the model keeps its base weights in "
                       "bf16; load it with base_dtype LT_BASE_F32 to merge");
    lt_status st = merge_sign(a, 1.0f);
    if (st == LT_OK) { a->merged = 1; a->model->n_merged++; }
    return st;
}

LT_API lt_status lt_adapter_unmerge(lt_adapter *a) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_unmerge: the adapter is not merged");
    lt_status st = merge_sign(a, -1.0f);
    if (st == LT_OK) { a->merged = 0; a->model->n_merged--; }
    return st;
}

/* ---- merged export -------------------------------------------------------------------------------- */

static const char *const copied_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                           "generation_config.json", "tokenizer.model"};

/* Weights are exported in f32 (the compute dtype); config.json says so. */
lt_status lt_model_export(lt_model *m, const lt_adapter *a, const char *dir, uint64_t max_shard_bytes,
                          lt_error *err) {
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "export: the model keeps its base weights in bf16; load it "
                       "with base_dtype LT_BASE_F32 to export");
    lt_status st = lt_mkdir_p(dir, err);
    if (st != LT_OK) return st;
    int cap = 3 + L * (6 + 2 * P_COUNT), n = 0;
    lt_st_entry *e = calloc((size_t)cap, sizeof *e);
    char *names = calloc((size_t)cap, 128);
    float **bufs = calloc((size_t)cap, sizeof *bufs);
    if (!e || !names || !bufs) { st = lt_fail(err, LT_ERR_NOMEM, "out of memory"); goto out; }
    /* host copies of every weight, merged where the adapter targets them */
#define ADD(nm_fmt, ptr, d0, d1, ...)                                                                  \
    do {                                                                                              \
        char *nm = names + (size_t)n * 128;                                                           \
        snprintf(nm, 128, nm_fmt, __VA_ARGS__);                                                      \
        size_t cnt = (size_t)(d0) * ((d1) > 0 ? (d1) : 1);                                            \
        bufs[n] = malloc(cnt * sizeof(float));                                                        \
        if (!bufs[n]) { st = lt_fail(err, LT_ERR_NOMEM, "out of memory exporting %s", nm); goto out; }\
        if (ptr) m->be->ops->download(m->be, bufs[n], ptr, cnt * sizeof(float));                      \
        e[n].name = nm; e[n].dtype = LT_DT_F32; e[n].ndim = (d1) > 0 ? 2 : 1;                         \
        e[n].shape[0] = d0; e[n].shape[1] = d1; e[n].data = bufs[n];                                  \
        n++;                                                                                          \
    } while (0)
    ADD("%s", lt_view_embed(m, a), V, H, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        const lt_layer *Ly = lt_view_layer(m, a, l); /* full fine-tuning: the trained weights */
        ADD("model.layers.%d.input_layernorm.weight", Ly->attn_norm_file ? Ly->attn_norm_file : Ly->attn_norm, H, 0, l);
        if (c->sandwich_norms) {
            ADD("model.layers.%d.pre_feedforward_layernorm.weight", Ly->mlp_norm_file, H, 0, l);
            ADD("model.layers.%d.post_attention_layernorm.weight", Ly->post_attn_norm_file, H, 0, l);
            ADD("model.layers.%d.post_feedforward_layernorm.weight", Ly->post_ff_norm_file, H, 0, l);
        } else {
            ADD("model.layers.%d.post_attention_layernorm.weight", Ly->mlp_norm_file ? Ly->mlp_norm_file : Ly->mlp_norm,
                H, 0, l);
        }
        if (Ly->q_norm) {
            ADD("model.layers.%d.self_attn.q_norm.weight", Ly->q_norm_file, c->head_dim, 0, l);
            ADD("model.layers.%d.self_attn.k_norm.weight", Ly->k_norm_file, c->head_dim, 0, l);
        }
        for (int q = 0; q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            if (Ly->bias[q]) ADD("model.layers.%d.%s.%s.bias", Ly->bias[q], o, 0, l, lt_proj_parent[q], lt_proj_names[q]);
        }
        lt_module mods[P_COUNT];
        const int n_mods = lt_model_modules(c, mods);
        for (int k = 0; k < n_mods; k++) {
            int min, mout;
            lt_module_dims(c, &mods[k], &min, &mout);
            char *nm = names + (size_t)n * 128;
            snprintf(nm, 128, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            float *W = bufs[n] = malloc((size_t)mout * min * sizeof(float));
            if (!W) { st = lt_fail(err, LT_ERR_NOMEM, "out of memory exporting %s", nm); goto out; }
            e[n].name = nm; e[n].dtype = LT_DT_F32; e[n].ndim = 2;
            e[n].shape[0] = mout; e[n].shape[1] = min; e[n].data = W;
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
                    float *A = malloc((size_t)a->p.rank * in * sizeof(float)), *B = malloc((size_t)o * a->p.rank * sizeof(float));
                    if (!A || !B) { free(A); free(B); st = lt_fail(err, LT_ERR_NOMEM, "out of memory"); goto out; }
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
                        if (!mg) { free(A); free(B); st = lt_fail(err, LT_ERR_NOMEM, "out of memory"); goto out; }
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
    const int untie = c->tie_word_embeddings && a && (a->embed || a->lm_head) &&
                      head_view.f32 != lt_view_embed(m, a);
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
