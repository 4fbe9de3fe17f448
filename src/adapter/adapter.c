/*
 * adapter.c - creating an adapter: LoRA / DoRA tensors (and PiSSA / OLoRA decompositions, full
 * fine-tuning and modules_to_save copies through lora_init.c and full.c), their initialisation, free,
 * and the adapter's getters.
 *
 * defines: lt_adapter_params_init, lt_adapter_alloc, lt_adapter_create, lt_adapter_free,
 *          lt_adapter_last_error, lt_adapter_get_params, lt_adapter_n_params, lt_adapter_set_save_files
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter/adapter_impl.h"
#include "loratune_experimental.h"

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

/* Full fine-tuning: no LoRA; every base weight as an fp32 copy in params (adapter/full.c). */
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
        return lt_fail(err, LT_ERR_NOMEM,
                       "adapter: cannot allocate %zu trainable parameters (%.1f MiB each for "
                       "weights and gradients)",
                       n, (double)n * 4 / (1 << 20));
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
    if (st == LT_OK) st = lt_backend_sync(be, err, "creating the adapter");
    if (st != LT_OK) {
        lt_adapter_free(a);
        return st;
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
    if (p->rank <= 0 || p->rank > 4096)
        return lt_fail(err, LT_ERR_ARGUMENT, "adapter: rank %d is not in [1, 4096]", p->rank);
    if (!(p->alpha > 0) || !isfinite(p->alpha))
        return lt_fail(err, LT_ERR_ARGUMENT, "adapter: alpha %g must be positive", p->alpha);
    if (!(p->dropout >= 0 && p->dropout < 1))
        return lt_fail(err, LT_ERR_ARGUMENT, "adapter: dropout %g is not in [0, 1)", p->dropout);
    if (p->use_dora && p->dropout > 0)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "adapter: DoRA with lora_dropout %g is not supported (use 0)",
                       p->dropout);
    if (p->use_dora && m->base_dtype == LT_BASE_BF16)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: DoRA needs the base weights' row norms, which a bf16 base "
                       "(base_dtype LT_BASE_BF16) does not keep; load the model with LT_BASE_F32");
    if (lt_init_is_decomposed(p->init) && p->use_dora)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "adapter: DoRA with PiSSA / OLoRA initialisation is not supported");
    const unsigned known = (unsigned)LT_TARGET_ALL | (unsigned)LT_TARGET_EXPERTS;
    if (!(p->targets & known) || (p->targets & ~known))
        return lt_fail(err, LT_ERR_ARGUMENT, "adapter: target mask 0x%x names no known projection", p->targets);
    if (p->targets & LT_TARGET_EXPERTS) {
        if (m->cfg.n_moe_layers == 0)
            return lt_fail(err, LT_ERR_ARGUMENT, "adapter: %s has no experts to target", m->cfg.architecture);
        if (p->use_dora || lt_init_is_decomposed(p->init) || p->dropout > 0)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "adapter: a LoRA on experts supports neither DoRA, PiSSA / OLoRA nor lora_dropout "
                           "(PEFT's target_parameters neither)");
    }
    lt_adapter *a = calloc(1, sizeof *a);
    const int L = (int)m->cfg.num_hidden_layers;
    if (!a || !(a->lora = calloc((size_t)L * P_COUNT, sizeof *a->lora)) ||
        ((p->targets & LT_TARGET_EXPERTS) && !(a->elora = calloc((size_t)L * 2, sizeof *a->elora)))) {
        if (a) free(a->lora);
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
    size_t n = 0, n_mlp = 0, n_exp = 0, n_gn = 0, max_w = 0;
    const int n_moe = m->cfg.n_moe_layers;
    for (int k = 0; k < 2; k++) /* experts: E LoRAs of each targeted kind per MoE layer */
        if (p->targets & (LT_TARGET_EXPERTS_GATE_UP << k)) {
            int in, o;
            lt_elora_dims(&m->cfg, k, &in, &o);
            n_exp += (size_t)m->cfg.num_experts * p->rank * (in + o);
        }
    for (int k = 0; k < n_mods; k++) {
        if (!(p->targets & lt_module_mask(&mods[k]))) continue;
        int in, o;
        lt_module_dims(&m->cfg, &mods[k], &in, &o);
        if (mods[k].first >= P_GATE) n_mlp += (size_t)p->rank * (in + o) + (p->use_dora ? (size_t)o : 0);
        else n += (size_t)p->rank * (in + o) + (p->use_dora ? (size_t)o : 0);
        n_gn += 2 * (size_t)o;
        for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
            int pi, po;
            lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
            if ((size_t)pi * po > max_w) max_w = (size_t)pi * po;
        }
    }
    n = n * (size_t)L + n_mlp * (size_t)(L - n_moe) + n_exp * (size_t)n_moe; /* MoE layers: experts, no MLP */
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
        for (int k = 0; k < n_mods + 2; k++) {
            if (k >= n_mods) { /* the experts of an MoE layer: A (E, r, in), B (E, out, r) */
                if (!m->cfg.layer_moe[l] || !(p->targets & (LT_TARGET_EXPERTS_GATE_UP << (k - n_mods)))) continue;
                int in, o;
                lt_elora_dims(&m->cfg, k - n_mods, &in, &o);
                lt_lora *lo = &a->elora[2 * l + (k - n_mods)];
                const size_t nA = (size_t)m->cfg.num_experts * p->rank * in;
                lo->A = a->params + off;
                lo->dA = a->grads + off;
                lo->B = a->params + off + nA;
                lo->dB = a->grads + off + nA;
                off += nA + (size_t)m->cfg.num_experts * p->rank * o;
                continue;
            }
            if (!(p->targets & lt_module_mask(&mods[k]))) continue;
            if (m->cfg.layer_moe[l] && mods[k].first >= P_GATE) continue;
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
                if (a->init0) {
                    lo->A0 = a->init0 + a_off;
                    lo->B0 = a->init0 + b_off;
                }
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
    a->n_decay = n;      /* LoRA tensors and modules_to_save copies take weight decay, but gpt-oss's router bias */
    if (a->n_ptensors) { /* (extra_bind sets the boundary before it) */
        lt_status st = lt_adapter_extra_bind(a, n_lora, err);
        if (st != LT_OK) {
            lt_adapter_free(a);
            return st;
        }
    }
    *out = a;
    return LT_OK;
}

/* xoshiro256** seeded by splitmix64: the adapter's own generator (no global state). */
typedef struct {
    uint64_t s[4];
} rng_t;
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
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}
static double rng_uniform(rng_t *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static double rng_normal(rng_t *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* n values of a LoRA A (in columns) into dst, drawn in order from rng (*host: a reused host buffer) */
static lt_status init_A(lt_backend *be, const lt_adapter_params *p, rng_t *rng, float **host, float *dst, size_t n,
                        int in, lt_error *err) {
    float *h = realloc(*host, n * sizeof *h);
    if (!h) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    *host = h;
    const double bound = 1.0 / sqrt((double)in);
    for (size_t i = 0; i < n; i++)
        h[i] = p->init == LT_INIT_GAUSSIAN ? (float)(rng_normal(rng) / p->rank)
                                           : (float)((2.0 * rng_uniform(rng) - 1.0) * bound);
    be->ops->upload(be, dst, h, n * sizeof *h);
    return LT_OK;
}

LT_API lt_status lt_adapter_create(lt_model *m, const lt_adapter_params *params, lt_adapter **out) {
    lt_error *terr = lt_thread_error();
    lt_error_clear(terr);
    if (!out) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: out is NULL");
    *out = NULL;
    if (!m) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: model is NULL");
    lt_adapter_params p;
    lt_adapter_params_init(&p, sizeof p);
    lt_status st = lt_read_struct(&p, sizeof p, params, offsetof(lt_adapter_params, seed), "lt_adapter_create",
                                  "lt_adapter_params_init", terr);
    if (st) return st;
    if (p.init != LT_INIT_DEFAULT && p.init != LT_INIT_GAUSSIAN && !lt_init_is_decomposed(p.init))
        return lt_fail(terr, LT_ERR_ARGUMENT, "lt_adapter_create: unknown init %d", (int)p.init);
    lt_adapter *a;
    st = lt_adapter_alloc(m, &p, &a, terr);
    if (st != LT_OK) return st;
    if (lt_init_is_decomposed(p.init)) { /* PiSSA / OLoRA: A, B (and A0, B0) from the base weights */
        if ((st = lt_lora_decompose_init(a, terr)) != LT_OK) {
            lt_adapter_free(a);
            return st;
        }
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
    for (int l = 0; st == LT_OK && l < m->cfg.num_hidden_layers; l++)
        for (int q = 0; st == LT_OK && q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first); /* fused: one shared A */
            int in, o;
            lt_module_dims(&m->cfg, &mods[q], &in, &o);
            if (lo) st = init_A(m->be, &p, &rng, &host, lo->A, (size_t)p.rank * in, in, terr);
        }
    for (int l = 0; st == LT_OK && l < m->cfg.num_hidden_layers; l++) /* expert LoRA: every expert's A */
        for (int k = 0; st == LT_OK && k < 2; k++) {
            lt_lora *lo = lt_adapter_elora(a, l, k);
            int in, o;
            lt_elora_dims(&m->cfg, k, &in, &o);
            if (lo) st = init_A(m->be, &p, &rng, &host, lo->A, (size_t)m->cfg.num_experts * p.rank * in, in, terr);
        }
    if (st != LT_OK) {
        free(host);
        lt_adapter_free(a);
        return st;
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
                if (!h) {
                    lt_adapter_free(a);
                    return lt_fail(terr, LT_ERR_NOMEM, "out of memory");
                }
                lt_status st = lt_weight_download(m, &m->layers[l].w[q], h, o, in, terr); /* dequantized: QDoRA */
                if (st != LT_OK) {
                    free(h);
                    lt_adapter_free(a);
                    return st;
                }
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
    for (int l = 0; a->full_layers && l < a->model->cfg.num_hidden_layers; l++) { /* MoE full FT: adapter/full.c */
        free(a->full_layers[l].experts);
        if (a->full_grads) free(a->full_grads[l].experts);
    }
    free(a->full_layers);
    free(a->full_grads);
    free(a->router);
    free(a->d_router);
    free(a->router_bias);
    free(a->d_router_bias);
    free(a->ptensors);
    free(a->dora_merge_g);
    free(a->lora);
    free(a->elora);
    lt_adapter_set_save_files(a, NULL, NULL, 0);
    free(a);
}

/* A file name a save may hold: one plain component, not hidden (the save's marker .loratune-save is), with
 * no control character and short enough for a line of that marker, which lists the entries one a line. */
static int plain_file_name(const char *name) {
    if (!name || !name[0] || name[0] == '.') return 0;
    for (const char *c = name; *c; c++)
        if (*c == '/' || (unsigned char)*c < 0x20) return 0;
    return strlen(name) < 256;
}

LT_API lt_status lt_adapter_set_save_files(lt_adapter *a, const char *const *names, const char *const *texts, int n) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (n < 0 || (n > 0 && (!names || !texts)))
        return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_set_save_files: n must be >= 0 with names and texts");
    for (int i = 0; i < n; i++) {
        if (!plain_file_name(names[i]) || !texts[i])
            return lt_fail(&a->err, LT_ERR_ARGUMENT,
                           "lt_adapter_set_save_files: file %d: \"%.100s\" is not a plain file name (one path "
                           "component, no leading '.', no control character, under 256 bytes) with a text",
                           i, names[i] ? names[i] : "(NULL)");
        for (int j = 0; j < i; j++)
            if (!strcmp(names[i], names[j]))
                return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_set_save_files: \"%s\" is given twice", names[i]);
    }
    char **nn = n ? calloc((size_t)n, sizeof *nn) : NULL, **nt = n ? calloc((size_t)n, sizeof *nt) : NULL;
    int ok = !n || (nn && nt);
    for (int i = 0; ok && i < n; i++) ok = (nn[i] = strdup(names[i])) && (nt[i] = strdup(texts[i]));
    if (!ok) {
        for (int i = 0; nn && nt && i < n; i++) {
            free(nn[i]);
            free(nt[i]);
        }
        free(nn);
        free(nt);
        return lt_fail(&a->err, LT_ERR_NOMEM, "lt_adapter_set_save_files: out of memory");
    }
    for (int i = 0; i < a->n_save_files; i++) {
        free(a->save_names[i]);
        free(a->save_texts[i]);
    }
    free(a->save_names);
    free(a->save_texts);
    a->save_names = nn;
    a->save_texts = nt;
    a->n_save_files = n;
    return LT_OK;
}

lt_status lt_adapter_write_save_files(const lt_adapter *a, const char *dir, lt_error *err) {
    for (int i = 0; a && i < a->n_save_files; i++) {
        char path[4200];
        if (lt_path_join(path, sizeof path, dir, a->save_names[i]))
            return lt_fail(err, LT_ERR_ARGUMENT, "%s: path too long", dir);
        /* written last, into the directory the save is filling: a name taken is one of the save's own */
        if (access(path, F_OK) == 0)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_adapter_set_save_files: \"%s\" is a file the save itself writes; choose another name",
                           a->save_names[i]);
        lt_status st = lt_write_file_atomic(path, a->save_texts[i], strlen(a->save_texts[i]), err);
        if (st != LT_OK) return st;
    }
    return LT_OK;
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
