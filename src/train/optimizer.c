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
#include <errno.h>
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

/* ---- the state's layout ---------------------------------------------------------------------------
 * 8-bit AdamW keeps its state per parameter tensor, as bitsandbytes does per torch parameter: each LoRA
 * A, B (a fused module's B is one tensor) and DoRA magnitude, and each trained base weight; blocks of 256
 * start at the tensor's first element, and tensors below 4096 elements keep fp32 state. Where torch's
 * parameter orders its elements otherwise than ours (PEFT's lora_B of experts, gpt-oss's fused experts:
 * lt_torch_order), the 8-bit state runs in torch's order, so that each block holds bitsandbytes' elements. */

static const char *kind_name(uint32_t k) {
    return k == LT_OPT_ADAMW ? "AdamW" : k == LT_OPT_SGD ? "SGD" : k == LT_OPT_ADAMW8BIT ? "AdamW8bit" : "unknown";
}

static void add_tensor(lt_optimizer *o, size_t off, size_t n, int decay, lt_torch_order order) {
    o->all[o->n_all++] =
        (lt_opt8_tensor){.off = off, .n = n, .q8 = n >= LT_OPT8_MIN_SIZE, .decay = decay, .order = order};
}

/* 1: tensor t's 8-bit state runs in torch's order (a gathered update; never cut by a range) */
static int torch_ordered(const lt_opt8_tensor *t) { return t->q8 && t->order.nd > 0; }

/* PEFT's lora_B (out, r E) of expert LoRA k, element [o, j E + e] = our (E, out, r) B[e, o, j]; its out rows
 * alternate gate and up where torch's parameter does (gpt-oss), ours are gate rows then up rows */
static lt_torch_order elora_b_order(const lt_model_config *c, int k, size_t r) {
    int in, out;
    lt_elora_dims(c, k, &in, &out);
    const size_t E = (size_t)c->num_experts, O = (size_t)out, half = O / 2;
    if (lt_elora_interleaved(c, k)) return (lt_torch_order){4, {half, 2, r, E}, {r, half * r, 1, O * r}};
    return (lt_torch_order){3, {O, r, E}, {r, 1, O * r}};
}

/* o->all: every tensor of the adapter, in params order; they tile [0, n_params) */
static lt_status opt8_tensors(lt_optimizer *o, lt_error *err) {
    lt_adapter *a = o->adapter;
    const lt_model_config *c = &a->model->cfg;
    const int L = (int)c->num_hidden_layers, r = a->p.rank;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(c, mods);
    o->all = calloc((size_t)L * (n_mods * 3 + 4) + (size_t)a->n_ptensors, sizeof *o->all);
    o->tensors = calloc((size_t)L * (n_mods * 3 + 4) + (size_t)a->n_ptensors, sizeof *o->tensors);
    if (!o->all || !o->tensors) return lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
    for (int l = 0; l < L && !a->p.full_finetune; l++) {
        for (int k = 0; k < n_mods; k++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[k].first);
            if (!lo) continue;
            int in, out;
            lt_module_dims(c, &mods[k], &in, &out);
            add_tensor(o, (size_t)(lo->A - a->params), (size_t)r * in, 1, (lt_torch_order){0});
            add_tensor(o, (size_t)(lo->B - a->params), (size_t)out * r, 1, (lt_torch_order){0});
            if (lo->mag) add_tensor(o, (size_t)(lo->mag - a->params), (size_t)out, 1, (lt_torch_order){0});
        }
        /* expert LoRA (after the layer's modules in params): PEFT's lora_A (E r, in) and lora_B (out, r E) are
         * one parameter each; A's order is ours, B's interleaves the experts */
        for (int k = 0; k < 2; k++) {
            lt_lora *lo = lt_adapter_elora(a, l, k);
            if (!lo) continue;
            int in, out;
            lt_elora_dims(c, k, &in, &out);
            add_tensor(o, (size_t)(lo->A - a->params), (size_t)c->num_experts * r * in, 1, (lt_torch_order){0});
            add_tensor(o, (size_t)(lo->B - a->params), (size_t)c->num_experts * r * out, 1,
                       elora_b_order(c, k, (size_t)r));
        }
    }
    /* trained base weights (full fine-tuning, modules_to_save): one bitsandbytes tensor each, or with the one
     * before when it joins it (the experts of torch's fused gate_up_proj / down_proj parameters; the first
     * one's order is the fused parameter's) */
    for (int i = 0; i < a->n_ptensors; i++) {
        const lt_ptensor *t = &a->ptensors[i];
        if (t->join && o->n_all > 0) {
            const lt_opt8_tensor prev = o->all[--o->n_all];
            add_tensor(o, prev.off, prev.n + t->n, t->decay, prev.order);
        } else {
            add_tensor(o, t->off, t->n, t->decay, t->order);
        }
    }
    size_t end = 0;
    for (int i = 0; i < o->n_all; i++) {
        const lt_opt8_tensor *t = &o->all[i];
        if (t->off != end)
            return lt_fail(err, LT_ERR_INTERNAL, "optimizer: tensor %d starts at %zu, not at %zu", i, t->off, end);
        end += t->n;
        size_t span = 1; /* a torch order must be a permutation of the tensor: its shape's size, in range */
        for (int d = 0; d < t->order.nd; d++) span *= t->order.dim[d];
        if (t->order.nd < 0 || t->order.nd > 4 || (t->order.nd > 0 && span != t->n))
            return lt_fail(err, LT_ERR_INTERNAL, "optimizer: tensor %d's torch order covers %zu of %zu elements", i,
                           span, t->n);
        if (torch_ordered(t) && t->n > (size_t)INT32_MAX)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "optimizer: 8-bit AdamW gathers a tensor of %zu elements in torch's order; at most %d", t->n,
                           INT32_MAX);
    }
    if (end != a->n_params)
        return lt_fail(err, LT_ERR_INTERNAL, "optimizer: the tensors end at %zu, not at %zu", end, a->n_params);
    return LT_OK;
}

/* The number of values each section holds for the parameters [0, x) (x a valid cut, see shards). */
static void prefix(const lt_optimizer *o, size_t x, size_t pre[LT_OPT_SECTIONS]) {
    memset(pre, 0, LT_OPT_SECTIONS * sizeof *pre);
    if (o->p.kind != LT_OPT_ADAMW8BIT) {
        pre[0] = pre[1] = x;
        return;
    }
    for (int i = 0; i < o->n_all && o->all[i].off < x; i++) {
        const lt_opt8_tensor *t = &o->all[i];
        const size_t len = x - t->off < t->n ? x - t->off : t->n;
        if (t->q8) {
            pre[2] += (len + LT_OPT8_BLOCKSIZE - 1) / LT_OPT8_BLOCKSIZE;
            pre[4] += len;
        } else {
            pre[0] += len;
        }
    }
    pre[1] = pre[0];
    pre[3] = pre[2];
    pre[5] = pre[4];
}

/* bytes of one value of each section */
static const size_t section_bytes[2][LT_OPT_SECTIONS] = {{4, 4, 0, 0, 0, 0}, {4, 4, 4, 4, 1, 1}};

/* 1 when x splits the state exactly: anywhere for AdamW / SGD, at a block start inside an 8-bit tensor in
 * our order (a block of one in torch's order holds elements from all over the tensor: never inside) */
static int valid_cut(const lt_optimizer *o, size_t x) {
    if (o->p.kind != LT_OPT_ADAMW8BIT) return 1;
    for (int i = 0; i < o->n_all; i++) {
        const lt_opt8_tensor *t = &o->all[i];
        if (x > t->off && x < t->off + t->n)
            return !t->q8 || (!torch_ordered(t) && (x - t->off) % LT_OPT8_BLOCKSIZE == 0);
    }
    return 1;
}

void lt_optimizer_shards(const lt_optimizer *o, int world, size_t *bounds) {
    const size_t n = o->adapter->n_params;
    bounds[0] = 0;
    for (int r = 1; r < world; r++) {
        size_t x = (size_t)((double)n * r / world);
        x -= x % 16; /* 64-byte aligned shards */
        for (int i = 0; o->p.kind == LT_OPT_ADAMW8BIT && i < o->n_all; i++) {
            const lt_opt8_tensor *t = &o->all[i];
            if (t->q8 && x > t->off && x < t->off + t->n)
                x = torch_ordered(t) ? t->off : t->off + (x - t->off) / LT_OPT8_BLOCKSIZE * LT_OPT8_BLOCKSIZE;
        }
        bounds[r] = x > bounds[r - 1] ? x : bounds[r - 1];
    }
    bounds[world] = n;
}

/* o->tensors: the parts of the tensors inside [lo, hi), with their offsets in the sections */
static void opt8_parts(lt_optimizer *o) {
    o->n_tensors = 0;
    o->n_q8 = o->n_blocks = o->n_f32 = 0;
    for (int i = 0; i < o->n_all; i++) {
        const lt_opt8_tensor *t = &o->all[i];
        const size_t a = t->off > o->lo ? t->off : o->lo, b = t->off + t->n < o->hi ? t->off + t->n : o->hi;
        if (a >= b) continue;
        lt_opt8_tensor *p = &o->tensors[o->n_tensors++];
        *p = *t;
        p->off = a;
        p->n = b - a;
        if (p->q8) {
            p->qoff = o->n_q8;
            p->boff = o->n_blocks;
            o->n_q8 += p->n;
            o->n_blocks += (p->n + LT_OPT8_BLOCKSIZE - 1) / LT_OPT8_BLOCKSIZE;
        } else {
            p->foff = o->n_f32;
            o->n_f32 += p->n;
        }
    }
}

/* the device buffer and value count of each section for the current range */
static void sections(const lt_optimizer *o, void *dev[LT_OPT_SECTIONS], size_t count[LT_OPT_SECTIONS]) {
    memset(dev, 0, LT_OPT_SECTIONS * sizeof *dev);
    memset(count, 0, LT_OPT_SECTIONS * sizeof *count);
    if (o->p.kind != LT_OPT_ADAMW8BIT) {
        dev[0] = o->m;
        dev[1] = o->v;
        count[0] = count[1] = o->hi - o->lo;
        return;
    }
    void *d[LT_OPT_SECTIONS] = {o->m, o->v, o->absmax1, o->absmax2, o->c1, o->c2};
    const size_t c[LT_OPT_SECTIONS] = {o->n_f32, o->n_f32, o->n_blocks, o->n_blocks, o->n_q8, o->n_q8};
    memcpy(dev, d, sizeof d);
    memcpy(count, c, sizeof c);
}

static void free_state(lt_optimizer *o) {
    lt_backend *be = o->adapter->model->be;
    void *bufs[] = {o->m,       o->v,     o->c1,       o->c2,       o->absmax1,
                    o->absmax2, o->qmaps, o->gather_p, o->gather_g, o->gather_ids};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) be->ops->free(be, bufs[i]);
    free(o->host_ids);
    o->m = o->v = o->absmax1 = o->absmax2 = o->qmaps = o->gather_p = o->gather_g = NULL;
    o->c1 = o->c2 = NULL;
    o->gather_ids = o->host_ids = NULL;
    o->ready = 0;
}

lt_status lt_optimizer_ready(lt_optimizer *o, lt_error *err) {
    if (o->ready) return LT_OK;
    lt_backend *be = o->adapter->model->be;
    const int q = o->p.kind == LT_OPT_ADAMW8BIT;
    size_t count[LT_OPT_SECTIONS];
    void *unused[LT_OPT_SECTIONS];
    sections(o, unused, count);
    /* every buffer gets at least one value so that a range with no 8-bit (or no small) tensor still has
     * valid pointers; bitsandbytes starts from zero codes and zero absmax (m = v = 0) */
    void **dst[LT_OPT_SECTIONS] = {(void **)&o->m,       (void **)&o->v,  (void **)&o->absmax1,
                                   (void **)&o->absmax2, (void **)&o->c1, (void **)&o->c2};
    for (int s = 0; s < (q ? LT_OPT_SECTIONS : 2); s++) {
        const size_t bytes = (count[s] ? count[s] : 1) * section_bytes[q][s];
        if (!(*dst[s] = be->ops->alloc(be, bytes))) {
            free_state(o);
            return lt_fail(err, LT_ERR_NOMEM, "optimizer: cannot allocate the %s state of %zu parameters",
                           kind_name(o->p.kind), o->hi - o->lo);
        }
        be->ops->zero(be, *dst[s], bytes);
    }
    if (q) {
        if (!(o->qmaps = be->ops->alloc(be, 512 * sizeof(float)))) {
            free_state(o);
            return lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
        }
        be->ops->upload(be, o->qmaps, lt_quant_code8(), 256 * sizeof(float));
        be->ops->upload(be, o->qmaps + 256, lt_quant_code8u(), 256 * sizeof(float));
        int gathered = 0;
        for (int i = 0; i < o->n_tensors; i++) gathered |= torch_ordered(&o->tensors[i]);
        if (gathered && (!(o->gather_p = be->ops->alloc(be, LT_OPT8_CHUNK * sizeof(float))) ||
                         !(o->gather_g = be->ops->alloc(be, LT_OPT8_CHUNK * sizeof(float))) ||
                         !(o->gather_ids = be->ops->alloc(be, LT_OPT8_CHUNK * sizeof(int32_t))) ||
                         !(o->host_ids = malloc(LT_OPT8_CHUNK * sizeof(int32_t))))) {
            free_state(o);
            return lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
        }
    }
    o->ready = 1;
    return LT_OK;
}

lt_status lt_optimizer_set_range(lt_optimizer *o, size_t lo, size_t hi, lt_error *err) {
    if (lo > hi || hi > o->adapter->n_params || !valid_cut(o, lo) || !valid_cut(o, hi))
        return lt_fail(err, LT_ERR_INTERNAL, "optimizer: [%zu, %zu) is not a range of its state", lo, hi);
    if (o->ready && (lo < o->lo || hi > o->hi))
        return lt_fail(err, LT_ERR_STATE, "optimizer: its state covers [%zu, %zu), not [%zu, %zu)", o->lo, o->hi, lo,
                       hi);
    const lt_optimizer old = *o; /* its buffers and section sizes */
    o->lo = lo;
    o->hi = hi;
    if (o->p.kind == LT_OPT_ADAMW8BIT) opt8_parts(o);
    if (!old.ready) return LT_OK;
    /* keep the values of the new range: a slice of every old section */
    o->ready = 0;
    o->m = o->v = o->absmax1 = o->absmax2 = o->qmaps = o->gather_p = o->gather_g = NULL;
    o->c1 = o->c2 = NULL;
    o->gather_ids = o->host_ids = NULL;
    lt_status st = lt_optimizer_ready(o, err);
    if (st != LT_OK) { /* as it was */
        *o = old;
        if (o->p.kind == LT_OPT_ADAMW8BIT) opt8_parts(o);
        return st;
    }
    lt_backend *be = o->adapter->model->be;
    const int q = o->p.kind == LT_OPT_ADAMW8BIT;
    size_t p_old[LT_OPT_SECTIONS], p_new[LT_OPT_SECTIONS], cnt[LT_OPT_SECTIONS], unused[LT_OPT_SECTIONS];
    void *d_old[LT_OPT_SECTIONS], *d_new[LT_OPT_SECTIONS];
    prefix(o, old.lo, p_old);
    prefix(o, lo, p_new);
    sections(&old, d_old, unused);
    sections(o, d_new, cnt);
    for (int s = 0; s < (q ? LT_OPT_SECTIONS : 2); s++)
        if (cnt[s])
            be->ops->copy(be, d_new[s], (char *)d_old[s] + (p_new[s] - p_old[s]) * section_bytes[q][s],
                          cnt[s] * section_bytes[q][s]);
    lt_optimizer gone = old;
    free_state(&gone);
    return lt_backend_sync(be, err, "moving the optimizer state");
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

/* ids[k] = our place of element s + k of torch's flattened order (an odometer over torch's shape) */
static void torch_order_ids(const lt_torch_order *t, size_t s, size_t len, int32_t *ids) {
    size_t idx[4] = {0}, off = 0, rem = s;
    for (int d = t->nd - 1; d >= 0; d--) {
        idx[d] = rem % t->dim[d];
        rem /= t->dim[d];
        off += idx[d] * t->stride[d];
    }
    for (size_t k = 0; k < len; k++) {
        ids[k] = (int32_t)off;
        for (int d = t->nd - 1; d >= 0; d--) {
            off += t->stride[d];
            if (++idx[d] < t->dim[d]) break;
            off -= t->dim[d] * t->stride[d];
            idx[d] = 0;
        }
    }
}

/* The 8-bit step of a tensor in torch's order: chunk by chunk (whole blocks), its param and grad gathered in
 * that order, stepped with the codes and absmax of those blocks, the param scattered back. */
static void opt8_update_gathered(lt_optimizer *o, const lt_opt8_tensor *tn, float step_size, float eps_c2,
                                 float decay) {
    lt_adapter *a = o->adapter;
    lt_backend *be = a->model->be;
    float *P = a->params + tn->off;
    const float *G = a->grads + tn->off;
    for (size_t s = 0; s < tn->n; s += LT_OPT8_CHUNK) {
        const size_t len = tn->n - s < LT_OPT8_CHUNK ? tn->n - s : LT_OPT8_CHUNK;
        torch_order_ids(&tn->order, s, len, o->host_ids);
        be->ops->upload(be, o->gather_ids, o->host_ids, len * sizeof(int32_t));
        be->ops->embedding_forward(be, o->gather_p, o->gather_ids, P, (int)len, 1);
        be->ops->embedding_forward(be, o->gather_g, o->gather_ids, G, (int)len, 1);
        be->ops->adamw8bit_step(be, o->gather_p, o->gather_g, o->c1 + tn->qoff + s, o->c2 + tn->qoff + s,
                                o->absmax1 + tn->boff + s / LT_OPT8_BLOCKSIZE,
                                o->absmax2 + tn->boff + s / LT_OPT8_BLOCKSIZE, len, o->qmaps, o->qmaps + 256,
                                o->p.beta1, o->p.beta2, eps_c2, step_size, decay);
        be->ops->scatter_rows(be, P, o->gather_ids, o->gather_p, (int)len, 1);
    }
}

/* One bitsandbytes AdamW8bit step over every tensor part (o->step already counts it). */
static void opt8_update(lt_optimizer *o, double lr) {
    lt_adapter *a = o->adapter;
    lt_backend *be = a->model->be;
    float step_size, eps_c2, decay;
    lt_opt8_constants(&o->p, lr, o->step, &step_size, &eps_c2, &decay);
    for (int i = 0; i < o->n_tensors; i++) {
        const lt_opt8_tensor *tn = &o->tensors[i];
        const float d = tn->decay ? decay : 0.0f;
        if (torch_ordered(tn)) opt8_update_gathered(o, tn, step_size, eps_c2, d);
        else if (tn->q8)
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
    lt_status st = lt_read_struct(&p, sizeof p, params, offsetof(lt_optimizer_params, max_grad_norm),
                                  "lt_optimizer_create", "lt_optimizer_params_init", err);
    if (st) return st;
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
    o->lo = 0;
    o->hi = a->n_params;
    /* the state itself is allocated at its first use, so that a ZeRO-1 trainer (lt_optimizer_set_range at
     * lt_trainer_create) never holds more than its shard */
    st = LT_OK;
    if (p.kind == LT_OPT_ADAMW8BIT && (st = opt8_tensors(o, err)) == LT_OK) opt8_parts(o);
    if (st != LT_OK) {
        lt_optimizer_free(o);
        return st;
    }
    *out = o;
    return LT_OK;
}

LT_API void lt_optimizer_free(lt_optimizer *o) {
    if (!o) return;
    free_state(o);
    free(o->all);
    free(o->tensors);
    free(o);
}

LT_API const char *lt_optimizer_last_error(const lt_optimizer *o) {
    return o ? o->err.msg : "lt_optimizer_last_error: optimizer is NULL";
}

LT_API double lt_optimizer_lr(const lt_optimizer *o) { return o ? o->p.lr * lt_schedule_lambda(&o->p, o->step) : 0.0; }

LT_API int64_t lt_optimizer_step_count(const lt_optimizer *o) { return o ? o->step : 0; }

double lt_optimizer_grad_sumsq(lt_optimizer *o) {
    lt_backend *be = o->adapter->model->be;
    return be->ops->sumsq(be, o->hi - o->lo, o->adapter->grads + o->lo);
}

void lt_optimizer_step(lt_optimizer *o, double norm, double *lr_used) {
    lt_adapter *a = o->adapter;
    lt_backend *be = a->model->be;
    const size_t lo = o->lo, hi = o->hi, n = hi - lo;
    float *P = a->params + lo, *G = a->grads + lo;
    if (o->p.max_grad_norm > 0) {
        double coef = o->p.max_grad_norm / (norm + 1e-6);
        if (coef < 1.0) be->ops->scale(be, n, (float)coef, G);
    }
    const double lr = o->p.lr * lt_schedule_lambda(&o->p, o->step);
    o->step++;
    /* params [0, n_decay) take weight decay, the rest (biases, norms of a full fine-tuning) not */
    const size_t nd = a->n_decay < lo ? 0 : a->n_decay > hi ? n : a->n_decay - lo;
    if (o->p.kind == LT_OPT_ADAMW8BIT) {
        opt8_update(o, lr);
    } else if (o->p.kind == LT_OPT_ADAMW) {
        const double t = (double)o->step;
        const double bc1 = 1.0 - pow(o->p.beta1, t), bc2 = 1.0 - pow(o->p.beta2, t);
        if (nd)
            be->ops->adamw_step(be, P, G, o->m, o->v, nd, (float)(lr / bc1), o->p.beta1, o->p.beta2, o->p.eps,
                                (float)sqrt(bc2), (float)(lr * o->p.weight_decay));
        if (n > nd)
            be->ops->adamw_step(be, P + nd, G + nd, o->m + nd, o->v + nd, n - nd, (float)(lr / bc1), o->p.beta1,
                                o->p.beta2, o->p.eps, (float)sqrt(bc2), 0.0f);
    } else {
        if (o->p.weight_decay > 0 && nd) be->ops->axpy(be, nd, o->p.weight_decay, P, G);
        if (o->p.momentum > 0) {
            be->ops->scale(be, n, o->p.momentum, o->m);
            be->ops->axpy(be, n, 1.0f, G, o->m); /* buf = g on the first step: m starts at 0 */
            be->ops->axpy(be, n, (float)-lr, o->m, P);
        } else {
            be->ops->axpy(be, n, (float)-lr, G, P);
        }
    }
    *lr_used = lr;
}

lt_status lt_optimizer_update(lt_optimizer *o, double *grad_norm, double *lr_used, lt_error *err) {
    lt_status st = lt_optimizer_ready(o, err);
    if (st != LT_OK) return st;
    double norm = sqrt(lt_optimizer_grad_sumsq(o));
    if (!isfinite(norm))
        return lt_fail(err, LT_ERR_NUMERIC, "the gradient norm is not finite (%g); no update made", norm);
    lt_optimizer_step(o, norm, lr_used);
    lt_adapter_sync_weights(o->adapter); /* Gemma full fine-tuning: the (1 + w) norms follow w */
    *grad_norm = norm;
    lt_backend *be = o->adapter->model->be;
    return lt_backend_sync(be, err, "in the optimizer step");
}

/* ---- state files ----------------------------------------------------------------------------------
 * "LTOPT\0\0\1" | u32 kind | u32 flags | i64 step | u64 n | sections of every parameter, or
 * "LTOPT\0\0\2" | u32 kind | u32 flags | i64 step | u64 n | u64 lo | u64 hi | sections of [lo, hi)
 * (one ZeRO-1 shard), little-endian. The sections:
 *   AdamW, SGD: f32 m | f32 v
 *   AdamW8bit:  f32 m | f32 v (tensors below 4096 elements, in parameter order) | f32 absmax1 |
 *               f32 absmax2 | u8 codes1 | u8 codes2 (the 8-bit tensors in parameter order;
 *               bitsandbytes' state1/state2/absmax1/absmax2).
 * flags bit 0 (STATE_TORCH_ORDER, every file this version writes): the 8-bit state of a tensor with a torch
 * order runs in that order. Files without it (flags 0, written before) hold such tensors' state in our order,
 * in blocks bitsandbytes does not have: refused for an optimizer that has such a tensor, loaded as before
 * otherwise. */
#define STATE_TORCH_ORDER 1u

static const char opt_magic[7] = {'L', 'T', 'O', 'P', 'T', 0, 0};
#define STAGE_BYTES ((size_t)64 << 20)

void lt_optimizer_copy_state(lt_optimizer *dst, const lt_optimizer *src) {
    lt_backend *be = dst->adapter->model->be;
    const int q = dst->p.kind == LT_OPT_ADAMW8BIT;
    void *d[LT_OPT_SECTIONS], *s[LT_OPT_SECTIONS];
    size_t cnt[LT_OPT_SECTIONS];
    sections(src, s, cnt);
    sections(dst, d, cnt);
    for (int i = 0; i < LT_OPT_SECTIONS; i++)
        if (cnt[i]) be->ops->copy(be, d[i], s[i], cnt[i] * section_bytes[q][i]);
    dst->step = src->step;
}

LT_API lt_status lt_optimizer_save(lt_optimizer *o, const char *path) {
    if (!o) return LT_ERR_ARGUMENT;
    lt_error_clear(&o->err);
    if (!path) return lt_fail(&o->err, LT_ERR_ARGUMENT, "lt_optimizer_save: path is NULL");
    lt_status st = lt_optimizer_ready(o, &o->err);
    if (st != LT_OK) return st;
    lt_backend *be = o->adapter->model->be;
    const int q = o->p.kind == LT_OPT_ADAMW8BIT, shard = o->lo != 0 || o->hi != o->adapter->n_params;
    char hdr[48];
    const uint32_t kind = (uint32_t)o->p.kind, flags = STATE_TORCH_ORDER;
    const uint64_t n64 = o->adapter->n_params, lo = o->lo, hi = o->hi;
    memcpy(hdr, opt_magic, 7);
    hdr[7] = shard ? 2 : 1;
    memcpy(hdr + 8, &kind, 4);
    memcpy(hdr + 12, &flags, 4);
    memcpy(hdr + 16, &o->step, 8);
    memcpy(hdr + 24, &n64, 8);
    memcpy(hdr + 32, &lo, 8);
    memcpy(hdr + 40, &hi, 8);
    void *dev[LT_OPT_SECTIONS];
    size_t cnt[LT_OPT_SECTIONS];
    sections(o, dev, cnt);
    char *stage = malloc(STAGE_BYTES);
    if (!stage) return lt_fail(&o->err, LT_ERR_NOMEM, "lt_optimizer_save: out of memory");
    lt_atomic_file f;
    if ((st = lt_atomic_open(&f, path, &o->err)) == LT_OK) st = lt_atomic_write(&f, hdr, shard ? 48 : 32, &o->err);
    for (int s = 0; s < LT_OPT_SECTIONS && st == LT_OK; s++) /* streamed through a host buffer */
        for (size_t off = 0, bytes = cnt[s] * section_bytes[q][s]; off < bytes && st == LT_OK; off += STAGE_BYTES) {
            const size_t k = bytes - off < STAGE_BYTES ? bytes - off : STAGE_BYTES;
            be->ops->download(be, stage, (const char *)dev[s] + off, k);
            st = lt_atomic_write(&f, stage, k, &o->err);
        }
    if (st == LT_OK) st = lt_atomic_commit(&f, &o->err);
    free(stage);
    return st;
}

/* One state file's header, checked against o. */
typedef struct state_file {
    const char *path;
    FILE *f;
    size_t lo, hi, hdr;
    int64_t step;
} state_file;

static lt_status open_state(lt_optimizer *o, state_file *sf, lt_error *err) {
    if (!(sf->f = fopen(sf->path, "rb")))
        return lt_fail(err, LT_ERR_IO, "%s: cannot open the optimizer state: %s", sf->path, strerror(errno));
    char h[48];
    const size_t got = fread(h, 1, sizeof h, sf->f);
    if (got < 32 || memcmp(h, opt_magic, 7) || (h[7] != 1 && h[7] != 2) || (h[7] == 2 && got < 48))
        return lt_fail(err, LT_ERR_FORMAT, "%s: not a libloratune optimizer state file", sf->path);
    uint32_t kind, flags;
    uint64_t n64, lo = 0, hi;
    memcpy(&kind, h + 8, 4);
    memcpy(&flags, h + 12, 4);
    memcpy(&sf->step, h + 16, 8);
    memcpy(&n64, h + 24, 8);
    hi = n64;
    sf->hdr = 32;
    if (h[7] == 2) {
        memcpy(&lo, h + 32, 8);
        memcpy(&hi, h + 40, 8);
        sf->hdr = 48;
    }
    const size_t n = o->adapter->n_params;
    if (kind != (uint32_t)o->p.kind || n64 != n || sf->step < 0)
        return lt_fail(err, LT_ERR_SHAPE,
                       "%s: state for %s with %llu parameters does not match this %s "
                       "optimizer of %zu parameters",
                       sf->path, kind_name(kind), (unsigned long long)n64, kind_name((uint32_t)o->p.kind), n);
    for (int i = 0; i < o->n_all && !(flags & STATE_TORCH_ORDER); i++)
        if (torch_ordered(&o->all[i]))
            return lt_fail(err, LT_ERR_FORMAT,
                           "%s: 8-bit AdamW state saved by an older libloratune, which kept the expert tensors' "
                           "state in its own order, not bitsandbytes' (torch's); it cannot be resumed exactly: "
                           "start the optimizer afresh",
                           sf->path);
    if (lo > hi || hi > n || !valid_cut(o, lo) || !valid_cut(o, hi))
        return lt_fail(err, LT_ERR_FORMAT, "%s: the range [%llu, %llu) does not split the state", sf->path,
                       (unsigned long long)lo, (unsigned long long)hi);
    sf->lo = lo;
    sf->hi = hi;
    /* the size the range implies */
    const int q = o->p.kind == LT_OPT_ADAMW8BIT;
    size_t pl[LT_OPT_SECTIONS], ph[LT_OPT_SECTIONS], expect = sf->hdr;
    prefix(o, lo, pl);
    prefix(o, hi, ph);
    for (int s = 0; s < LT_OPT_SECTIONS; s++) expect += (ph[s] - pl[s]) * section_bytes[q][s];
    if (fseeko(sf->f, 0, SEEK_END) != 0 || (size_t)ftello(sf->f) != expect)
        return lt_fail(err, LT_ERR_TRUNCATED, "%s: %lld bytes, expected %zu", sf->path, (long long)ftello(sf->f),
                       expect);
    return LT_OK;
}

lt_status lt_optimizer_load_files(lt_optimizer *o, const char *const *paths, int n_paths, lt_error *err) {
    if (n_paths < 1) return lt_fail(err, LT_ERR_MISSING, "optimizer: no state file");
    state_file *sf = calloc((size_t)n_paths, sizeof *sf);
    char *stage = malloc(STAGE_BYTES);
    lt_status st = sf && stage ? LT_OK : lt_fail(err, LT_ERR_NOMEM, "optimizer: out of memory");
    /* the files, in the order given, must cover [0, n_params) one after the other with one step count */
    size_t end = 0;
    for (int i = 0; i < n_paths && st == LT_OK; i++) {
        sf[i].path = paths[i];
        if ((st = open_state(o, &sf[i], err)) != LT_OK) break;
        if (sf[i].lo != end || sf[i].step != sf[0].step)
            st = lt_fail(err, LT_ERR_FORMAT,
                         "%s: covers [%zu, %zu) at step %lld; the files before it end at %zu at step %lld", paths[i],
                         sf[i].lo, sf[i].hi, (long long)sf[i].step, end, (long long)sf[0].step);
        end = sf[i].hi;
    }
    if (st == LT_OK && end != o->adapter->n_params)
        st = lt_fail(err, LT_ERR_FORMAT, "%s: the state files cover [0, %zu) of %zu parameters", paths[n_paths - 1],
                     end, o->adapter->n_params);
    if (st == LT_OK) st = lt_optimizer_ready(o, err);
    /* this optimizer's range [lo, hi): from each file the slice of every section it holds */
    lt_backend *be = o->adapter->model->be;
    const int q = o->p.kind == LT_OPT_ADAMW8BIT;
    void *dev[LT_OPT_SECTIONS];
    size_t cnt[LT_OPT_SECTIONS], p_me[LT_OPT_SECTIONS];
    sections(o, dev, cnt);
    prefix(o, o->lo, p_me);
    /* pass 0 checks that the state is one an optimizer can reach (finite moments, v >= 0 as a square,
     * absmax >= 0; the 8-bit codes index a 256-entry map, so any byte is valid), pass 1 uploads it: a
     * rejected file leaves the optimizer as it was */
    static const char *const sec_name[LT_OPT_SECTIONS] = {"m (first moment)", "v (second moment)", "absmax of m",
                                                          "absmax of v",      "codes of m",        "codes of v"};
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n_paths && st == LT_OK; i++) {
            const size_t a = sf[i].lo > o->lo ? sf[i].lo : o->lo, b = sf[i].hi < o->hi ? sf[i].hi : o->hi;
            if (a >= b) continue;
            size_t p_f[LT_OPT_SECTIONS], p_f_end[LT_OPT_SECTIONS], p_a[LT_OPT_SECTIONS], p_b[LT_OPT_SECTIONS];
            prefix(o, sf[i].lo, p_f);
            prefix(o, sf[i].hi, p_f_end);
            prefix(o, a, p_a);
            prefix(o, b, p_b);
            size_t sec_start = sf[i].hdr; /* where section s starts in the file */
            for (int s = 0; s < LT_OPT_SECTIONS && st == LT_OK; s++) {
                const size_t vb = section_bytes[q][s], bytes = (p_b[s] - p_a[s]) * vb;
                const size_t from = sec_start + (p_a[s] - p_f[s]) * vb, to = (p_a[s] - p_me[s]) * vb;
                for (size_t off = 0; off < bytes && st == LT_OK; off += STAGE_BYTES) {
                    const size_t k = bytes - off < STAGE_BYTES ? bytes - off : STAGE_BYTES;
                    if (fseeko(sf[i].f, (off_t)(from + off), SEEK_SET) != 0 || fread(stage, 1, k, sf[i].f) != k)
                        st = lt_fail(err, LT_ERR_IO, "%s: cannot read the optimizer state", paths[i]);
                    else if (pass == 1) be->ops->upload(be, (char *)dev[s] + to + off, stage, k);
                    else if (vb == sizeof(float)) {
                        const int nonneg = s >= 2 || (s == 1 && o->p.kind != LT_OPT_SGD);
                        for (size_t j = 0; j < k / sizeof(float); j++) {
                            float x;
                            memcpy(&x, stage + j * sizeof(float), sizeof x);
                            if (!isfinite(x) || (nonneg && x < 0)) {
                                st = lt_fail(err, LT_ERR_NUMERIC, "%s: %s[%zu] = %g: %s; the state was not loaded",
                                             paths[i], sec_name[s], p_a[s] + (off / sizeof(float)) + j, (double)x,
                                             isfinite(x) ? "must not be negative" : "not finite");
                                break;
                            }
                        }
                    }
                }
                sec_start += (p_f_end[s] - p_f[s]) * vb;
            }
        }
    if (st == LT_OK) o->step = sf[0].step;
    for (int i = 0; sf && i < n_paths; i++)
        if (sf[i].f) fclose(sf[i].f);
    free(sf);
    free(stage);
    if (st != LT_OK) return st;
    return lt_backend_sync(be, err, "loading the optimizer state");
}

LT_API lt_status lt_optimizer_load(lt_optimizer *o, const char *path) {
    if (!o) return LT_ERR_ARGUMENT;
    lt_error_clear(&o->err);
    if (!path) return lt_fail(&o->err, LT_ERR_ARGUMENT, "lt_optimizer_load: path is NULL");
    return lt_optimizer_load_files(o, &path, 1, &o->err);
}
