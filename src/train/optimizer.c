/*
 * optimizer.c - AdamW and SGD with momentum over an adapter's parameters, learning-rate schedules,
 * global-norm clipping, and optimizer state files.
 *
 * defines: lt_optimizer_* (public), lt_optimizer_update, lt_schedule_lambda
 *
 * Semantics follow torch.optim and transformers' schedulers (docs/spec/algorithms.md):
 *   AdamW: t += 1; p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *          p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *   AdamW8bit (bitsandbytes' blockwise 8-bit AdamW, docs/spec/algorithms.md): m, v as uint8 codes with one fp32
 *          absmax per 256 elements of each tensor; update in fp32, then p *= 1 - lr wd (after the step);
 *          tensors below 4096 elements keep fp32 m, v (bitsandbytes' 32-bit Adam).
 *   SGD:   g += wd p; buf = mu buf + g (buf = g at the first step); p -= lr buf
 *   clip:  total = ||g||_2 over all parameters; g *= min(1, max_norm / (total + 1e-6))
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/codebook.h"
#include "train/optimizer.h"

LT_API void lt_optimizer_params_init(lt_optimizer_params *out, size_t size) {
    lt_optimizer_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->kind = LT_OPT_ADAMW;
    p->lr = 1e-4f;
    p->beta1 = 0.9f;
    p->beta2 = 0.999f;
    p->eps = 1e-8f;
    p->weight_decay = 0.0f;
    p->momentum = 0.9f;
    p->schedule = LT_SCHED_CONSTANT;
    p->max_grad_norm = 1.0f;
    lt_fill_struct(out, size, p, sizeof *p);
}

/* lambda(s) for s updates already taken; W warmup, T total */
double lt_schedule_lambda(const lt_optimizer_params *p, int64_t s) {
    int64_t T = p->total_steps;
    int64_t W = p->warmup_steps;
    if (W == 0 && p->warmup_ratio > 0 && T > 0) W = (int64_t)ceil((double)T * p->warmup_ratio);
    if (s < W) return (double)s / (double)(W > 1 ? W : 1);
    switch (p->schedule) {
    case LT_SCHED_CONSTANT: return 1.0;
    case LT_SCHED_LINEAR: {
        double r = (double)(T - s) / (double)(T - W > 1 ? T - W : 1);
        return r > 0 ? r : 0.0;
    }
    case LT_SCHED_COSINE: {
        double prog = (double)(s - W) / (double)(T - W > 1 ? T - W : 1);
        double r = 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * prog));
        return r > 0 ? r : 0.0;
    }
    }
    return 1.0;
}

/* ---- 8-bit AdamW state: one entry per LoRA tensor, in adapter->params order -------------------- */

static const char *kind_name(uint32_t k) {
    return k == LT_OPT_ADAMW ? "AdamW" : k == LT_OPT_SGD ? "SGD" : k == LT_OPT_ADAMW8BIT ? "AdamW8bit" : "unknown";
}

/* one parameter tensor params[off .. off+n): 8-bit state from LT_OPT8_MIN_SIZE elements, else fp32 */
static void opt8_add(lt_optimizer *o, size_t off, size_t n, int decay) {
    lt_opt8_tensor *t = &o->tensors[o->n_tensors++];
    t->off = off;
    t->n = n;
    t->decay = decay;
    t->q8 = t->n >= LT_OPT8_MIN_SIZE;
    if (t->q8) {
        t->qoff = o->n_q8;
        t->boff = o->n_blocks;
        o->n_q8 += t->n;
        o->n_blocks += (t->n + LT_OPT8_BLOCKSIZE - 1) / LT_OPT8_BLOCKSIZE;
    } else {
        t->foff = o->n_f32;
        o->n_f32 += t->n;
    }
}

static lt_status opt8_alloc(lt_optimizer *o, lt_error *err) {
    lt_adapter *a = o->adapter;
    lt_model *m = a->model;
    lt_backend *be = m->be;
    const int L = (int)m->cfg.num_hidden_layers, r = a->p.rank;
    o->tensors = calloc((size_t)L * (P_COUNT * 2 + 4) + (size_t)a->n_ptensors, sizeof *o->tensors);
    if (!o->tensors) return lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
    for (int l = 0; l < L; l++)
        for (int q = 0; q < P_COUNT; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
            if (!lo) continue;
            int in, out;
            lt_proj_dims(&m->cfg, (lt_proj)q, &in, &out);
            const float *start[2] = {lo->A, lo->B};
            const size_t size[2] = {(size_t)r * in, (size_t)out * r};
            for (int k = 0; k < 2; k++) opt8_add(o, (size_t)(start[k] - a->params), size[k], 1);
        }
    /* expert LoRA: PEFT's lora_A and lora_B of each MoE layer are one parameter each (B's blocks are
     * taken in our (E, out, r) order, not PEFT's interleaved one: not bit for bit bitsandbytes' there) */
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 2; k++) {
            lt_lora *lo = lt_adapter_elora(a, l, k);
            if (!lo) continue;
            int in, out;
            lt_elora_dims(&m->cfg, k, &in, &out);
            const size_t E = (size_t)m->cfg.num_experts;
            opt8_add(o, (size_t)(lo->A - a->params), E * r * in, 1);
            opt8_add(o, (size_t)(lo->B - a->params), E * r * out, 1);
        }
    /* trained base weights (full fine-tuning, modules_to_save): one bitsandbytes tensor each */
    for (int i = 0; i < a->n_ptensors; i++) opt8_add(o, a->ptensors[i].off, a->ptensors[i].n, a->ptensors[i].decay);
    /* every buffer gets at least one element so that a model with no 8-bit (or no small) tensor still
     * has valid pointers; bitsandbytes starts from zero codes and zero absmax (m = v = 0) */
    const size_t nf = o->n_f32 ? o->n_f32 : 1, nq = o->n_q8 ? o->n_q8 : 1, nb = o->n_blocks ? o->n_blocks : 1;
    o->m = be->ops->alloc(be, nf * sizeof(float));
    o->v = be->ops->alloc(be, nf * sizeof(float));
    o->c1 = be->ops->alloc(be, nq);
    o->c2 = be->ops->alloc(be, nq);
    o->absmax1 = be->ops->alloc(be, nb * sizeof(float));
    o->absmax2 = be->ops->alloc(be, nb * sizeof(float));
    o->qmaps = be->ops->alloc(be, 512 * sizeof(float));
    if (!o->m || !o->v || !o->c1 || !o->c2 || !o->absmax1 || !o->absmax2 || !o->qmaps)
        return lt_fail(err, LT_ERR_NOMEM, "optimizer: cannot allocate 8-bit state for %zu parameters", a->n_params);
    be->ops->zero(be, o->m, nf * sizeof(float));
    be->ops->zero(be, o->v, nf * sizeof(float));
    be->ops->zero(be, o->c1, nq);
    be->ops->zero(be, o->c2, nq);
    be->ops->zero(be, o->absmax1, nb * sizeof(float));
    be->ops->zero(be, o->absmax2, nb * sizeof(float));
    be->ops->upload(be, o->qmaps, lt_quant_code8(), 256 * sizeof(float));
    be->ops->upload(be, o->qmaps + 256, lt_quant_code8u(), 256 * sizeof(float));
    return LT_OK;
}

/* bitsandbytes' kernel constants in fp32 for update t at learning rate lr: c1 = 1 - b1^t,
 * c2 = sqrt(1 - b2^t) (pow in double, rounded once), step_size = -lr c2 / c1, eps_c2 = c2 eps, decay = lr wd */
void lt_opt8_constants(const lt_optimizer_params *p, double lr, int64_t t, float *step_size, float *eps_c2,
                       float *decay) {
    const float lrf = (float)lr;
    const float c1 = (float)(1.0 - pow((double)p->beta1, (double)t));
    const float c2 = sqrtf((float)(1.0 - pow((double)p->beta2, (double)t)));
    *step_size = (-lrf * c2) / c1;
    *eps_c2 = c2 * p->eps;
    *decay = lrf * p->weight_decay;
}

/* One bitsandbytes AdamW8bit step over every tensor (o->step already counts it). */
static void opt8_update(lt_optimizer *o, double lr) {
    lt_adapter *a = o->adapter;
    lt_backend *be = a->model->be;
    float step_size, eps_c2, decay;
    lt_opt8_constants(&o->p, lr, o->step, &step_size, &eps_c2, &decay);
    for (int i = 0; i < o->n_tensors; i++) {
        const lt_opt8_tensor *tn = &o->tensors[i];
        const float d = tn->decay ? decay : 0.0f;
        if (tn->q8)
            be->ops->adamw8bit_step(be, a->params + tn->off, a->grads + tn->off, o->c1 + tn->qoff, o->c2 + tn->qoff,
                                    o->absmax1 + tn->boff, o->absmax2 + tn->boff, tn->n, o->qmaps, o->qmaps + 256,
                                    o->p.beta1, o->p.beta2, eps_c2, step_size, d);
        else
            be->ops->adamw8bit_step(be, a->params + tn->off, a->grads + tn->off, o->m + tn->foff, o->v + tn->foff, NULL,
                                    NULL, tn->n, NULL, NULL, o->p.beta1, o->p.beta2, eps_c2, step_size, d);
    }
}

LT_API lt_status lt_optimizer_create(lt_adapter *a, const lt_optimizer_params *params, lt_optimizer **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_optimizer_create: out is NULL");
    *out = NULL;
    if (!a) return lt_fail(err, LT_ERR_ARGUMENT, "lt_optimizer_create: adapter is NULL");
    lt_optimizer_params p;
    lt_optimizer_params_init(&p, sizeof p);
    if (params) {
        if (params->size < offsetof(lt_optimizer_params, max_grad_norm) || params->size > sizeof p)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_optimizer_create: params->size %zu is not a size this library "
                           "knows (call lt_optimizer_params_init)",
                           params->size);
        memcpy(&p, params, params->size);
    }
    if (p.kind != LT_OPT_ADAMW && p.kind != LT_OPT_SGD && p.kind != LT_OPT_ADAMW8BIT)
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: unknown kind %d", (int)p.kind);
    if (!(p.lr >= 0) || !isfinite(p.lr)) return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: lr %g must be >= 0", p.lr);
    if (!(p.beta1 >= 0 && p.beta1 < 1) || !(p.beta2 >= 0 && p.beta2 < 1))
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: betas (%g, %g) must be in [0, 1)", p.beta1, p.beta2);
    if (!(p.eps >= 0) || !(p.weight_decay >= 0) || !(p.max_grad_norm >= 0) || !(p.momentum >= 0))
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: eps, weight_decay, momentum and max_grad_norm must be >= 0");
    if (p.schedule != LT_SCHED_CONSTANT && p.schedule != LT_SCHED_LINEAR && p.schedule != LT_SCHED_COSINE)
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: unknown schedule %d", (int)p.schedule);
    if (p.schedule != LT_SCHED_CONSTANT && p.total_steps <= 0)
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: linear and cosine schedules need total_steps > 0");
    if (p.warmup_steps < 0 || !(p.warmup_ratio >= 0 && p.warmup_ratio <= 1))
        return lt_fail(err, LT_ERR_ARGUMENT, "optimizer: warmup_steps must be >= 0 and warmup_ratio in [0, 1]");
    lt_optimizer *o = calloc(1, sizeof *o);
    if (!o) return lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
    o->adapter = a;
    o->p = p;
    o->p.size = sizeof o->p;
    lt_backend *be = a->model->be;
    if (p.kind == LT_OPT_ADAMW8BIT) {
        lt_status st = opt8_alloc(o, err);
        if (st != LT_OK) {
            lt_optimizer_free(o);
            return st;
        }
        *out = o;
        return LT_OK;
    }
    size_t bytes = a->n_params * sizeof(float);
    o->m = be->ops->alloc(be, bytes);
    o->v = be->ops->alloc(be, bytes);
    if (!o->m || !o->v) {
        lt_optimizer_free(o);
        return lt_fail(err, LT_ERR_NOMEM, "optimizer: cannot allocate state for %zu parameters", a->n_params);
    }
    be->ops->zero(be, o->m, bytes);
    be->ops->zero(be, o->v, bytes);
    *out = o;
    return LT_OK;
}

LT_API void lt_optimizer_free(lt_optimizer *o) {
    if (!o) return;
    lt_backend *be = o->adapter->model->be;
    if (o->m) be->ops->free(be, o->m);
    if (o->v) be->ops->free(be, o->v);
    void *bufs[] = {o->c1, o->c2, o->absmax1, o->absmax2, o->qmaps};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) be->ops->free(be, bufs[i]);
    free(o->tensors);
    free(o);
}

LT_API const char *lt_optimizer_last_error(const lt_optimizer *o) {
    return o ? o->err.msg : "lt_optimizer_last_error: optimizer is NULL";
}

LT_API double lt_optimizer_lr(const lt_optimizer *o) { return o ? o->p.lr * lt_schedule_lambda(&o->p, o->step) : 0.0; }

LT_API int64_t lt_optimizer_step_count(const lt_optimizer *o) { return o ? o->step : 0; }

lt_status lt_optimizer_update(lt_optimizer *o, double *grad_norm, double *lr_used, lt_error *err) {
    lt_adapter *a = o->adapter;
    lt_backend *be = a->model->be;
    const size_t n = a->n_params;
    double norm = sqrt(be->ops->sumsq(be, n, a->grads));
    if (!isfinite(norm))
        return lt_fail(err, LT_ERR_NUMERIC, "the gradient norm is not finite (%g); no update made", norm);
    if (o->p.max_grad_norm > 0) {
        double coef = o->p.max_grad_norm / (norm + 1e-6);
        if (coef < 1.0) be->ops->scale(be, n, (float)coef, a->grads);
    }
    const double lr = o->p.lr * lt_schedule_lambda(&o->p, o->step);
    o->step++;
    if (o->p.kind == LT_OPT_ADAMW8BIT) {
        opt8_update(o, lr);
    } else if (o->p.kind == LT_OPT_ADAMW) {
        /* params [0, n_decay) take weight decay, the rest (biases, norms of a full fine-tuning) not */
        const double t = (double)o->step;
        const double bc1 = 1.0 - pow(o->p.beta1, t), bc2 = 1.0 - pow(o->p.beta2, t);
        const size_t nd = a->n_decay;
        be->ops->adamw_step(be, a->params, a->grads, o->m, o->v, nd, (float)(lr / bc1), o->p.beta1, o->p.beta2,
                            o->p.eps, (float)sqrt(bc2), (float)(lr * o->p.weight_decay));
        if (n > nd)
            be->ops->adamw_step(be, a->params + nd, a->grads + nd, o->m + nd, o->v + nd, n - nd, (float)(lr / bc1),
                                o->p.beta1, o->p.beta2, o->p.eps, (float)sqrt(bc2), 0.0f);
    } else {
        if (o->p.weight_decay > 0) be->ops->axpy(be, a->n_decay, o->p.weight_decay, a->params, a->grads);
        if (o->p.momentum > 0) {
            be->ops->scale(be, n, o->p.momentum, o->m);
            be->ops->axpy(be, n, 1.0f, a->grads, o->m); /* buf = g on the first step: m starts at 0 */
            be->ops->axpy(be, n, (float)-lr, o->m, a->params);
        } else {
            be->ops->axpy(be, n, (float)-lr, a->grads, a->params);
        }
    }
    lt_adapter_sync_weights(a); /* Gemma full fine-tuning: the (1 + w) norms follow w */
    *grad_norm = norm;
    *lr_used = lr;
    return be->ops->sync(be);
}

/* ---- state files ----------------------------------------------------------------------------------
 * "LTOPT\0\0\1" | u32 kind | u32 reserved | i64 step | u64 n | sections, little-endian:
 *   AdamW, SGD: f32 m[n] | f32 v[n]
 *   AdamW8bit:  f32 m[n_f32] | f32 v[n_f32] (the tensors below 4096 elements, in parameter order) |
 *               f32 absmax1[n_blocks] | f32 absmax2[n_blocks] | u8 codes1[n_q8] | u8 codes2[n_q8]
 *               (the 8-bit tensors in parameter order; bitsandbytes' state1/state2/absmax1/absmax2). */

static const char opt_magic[8] = {'L', 'T', 'O', 'P', 'T', 0, 0, 1};

typedef struct opt_section {
    void *dev;
    size_t bytes;
} opt_section;

/* the sections of o's state file, in file order; returns their count */
static int opt_sections(const lt_optimizer *o, opt_section sec[6]) {
    if (o->p.kind != LT_OPT_ADAMW8BIT) {
        const size_t b = o->adapter->n_params * sizeof(float);
        sec[0] = (opt_section){o->m, b};
        sec[1] = (opt_section){o->v, b};
        return 2;
    }
    sec[0] = (opt_section){o->m, o->n_f32 * sizeof(float)};
    sec[1] = (opt_section){o->v, o->n_f32 * sizeof(float)};
    sec[2] = (opt_section){o->absmax1, o->n_blocks * sizeof(float)};
    sec[3] = (opt_section){o->absmax2, o->n_blocks * sizeof(float)};
    sec[4] = (opt_section){o->c1, o->n_q8};
    sec[5] = (opt_section){o->c2, o->n_q8};
    return 6;
}

void lt_optimizer_copy_state(lt_optimizer *dst, const lt_optimizer *src) {
    lt_backend *be = dst->adapter->model->be;
    opt_section d[6], s[6];
    const int ns = opt_sections(dst, d);
    opt_sections(src, s);
    for (int i = 0; i < ns; i++)
        if (d[i].bytes) be->ops->copy(be, d[i].dev, s[i].dev, d[i].bytes);
    dst->step = src->step;
}

LT_API lt_status lt_optimizer_save(lt_optimizer *o, const char *path) {
    if (!o) return LT_ERR_ARGUMENT;
    lt_error_clear(&o->err);
    if (!path) return lt_fail(&o->err, LT_ERR_ARGUMENT, "lt_optimizer_save: path is NULL");
    lt_backend *be = o->adapter->model->be;
    const size_t n = o->adapter->n_params, hdr = 32;
    opt_section sec[6];
    const int ns = opt_sections(o, sec);
    size_t bytes = hdr;
    for (int i = 0; i < ns; i++) bytes += sec[i].bytes;
    char *buf = malloc(bytes);
    if (!buf) return lt_fail(&o->err, LT_ERR_NOMEM, "lt_optimizer_save: out of memory");
    uint32_t kind = (uint32_t)o->p.kind, zero = 0;
    uint64_t n64 = n;
    memcpy(buf, opt_magic, 8);
    memcpy(buf + 8, &kind, 4);
    memcpy(buf + 12, &zero, 4);
    memcpy(buf + 16, &o->step, 8);
    memcpy(buf + 24, &n64, 8);
    size_t off = hdr;
    for (int i = 0; i < ns; i++) {
        if (sec[i].bytes) be->ops->download(be, buf + off, sec[i].dev, sec[i].bytes);
        off += sec[i].bytes;
    }
    lt_status st = lt_write_file_atomic(path, buf, bytes, &o->err);
    free(buf);
    return st;
}

LT_API lt_status lt_optimizer_load(lt_optimizer *o, const char *path) {
    if (!o) return LT_ERR_ARGUMENT;
    lt_error_clear(&o->err);
    if (!path) return lt_fail(&o->err, LT_ERR_ARGUMENT, "lt_optimizer_load: path is NULL");
    char *buf;
    size_t len;
    lt_status st = lt_read_file(path, &buf, &len, &o->err);
    if (st != LT_OK) return st;
    const size_t n = o->adapter->n_params, hdr = 32;
    uint32_t kind;
    int64_t step;
    uint64_t n64;
    if (len < hdr || memcmp(buf, opt_magic, 8)) {
        free(buf);
        return lt_fail(&o->err, LT_ERR_FORMAT, "%s: not a libloratune optimizer state file", path);
    }
    memcpy(&kind, buf + 8, 4);
    memcpy(&step, buf + 16, 8);
    memcpy(&n64, buf + 24, 8);
    if (kind != (uint32_t)o->p.kind || n64 != n || step < 0) {
        free(buf);
        return lt_fail(&o->err, LT_ERR_SHAPE,
                       "%s: state for %s with %llu parameters does not match this %s "
                       "optimizer of %zu parameters",
                       path, kind_name(kind), (unsigned long long)n64, kind_name((uint32_t)o->p.kind), n);
    }
    opt_section sec[6];
    const int ns = opt_sections(o, sec);
    size_t expect = hdr;
    for (int i = 0; i < ns; i++) expect += sec[i].bytes;
    if (len != expect) {
        free(buf);
        return lt_fail(&o->err, LT_ERR_TRUNCATED, "%s: %zu bytes, expected %zu", path, len, expect);
    }
    lt_backend *be = o->adapter->model->be;
    size_t off = hdr;
    for (int i = 0; i < ns; i++) {
        if (sec[i].bytes) be->ops->upload(be, sec[i].dev, buf + off, sec[i].bytes);
        off += sec[i].bytes;
    }
    o->step = step;
    free(buf);
    return be->ops->sync(be);
}
