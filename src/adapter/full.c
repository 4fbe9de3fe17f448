/*
 * full.c - trained copies of base weights inside an adapter: full fine-tuning (every weight)
 * and PEFT's modules_to_save (embed_tokens, lm_head, the routers of an MoE model next to a LoRA).
 *
 * defines: lt_adapter_full_check, lt_adapter_extra_count, lt_adapter_extra_bind, lt_adapter_model_tensor,
 *          lt_adapter_sync_weights
 *
 * The model stays read-only and shareable: the trained weights are fp32 tensors in the adapter's params
 * (after the LoRA tensors), their gradients at the same offsets in grads, so the optimizers, clipping,
 * accumulation, state files and checkpoints work on them unchanged. Passes read them through the
 * lt_view_* helpers of adapter.h.
 *
 * params order (Hugging Face Trainer's weight-decay groups, get_decay_parameter_names): every tensor
 * that takes weight decay first (LoRA A/B/magnitude, embeddings, lm_head, projections, routers, experts,
 * gpt-oss's sinks), then those that do not (biases, gpt-oss's router and expert biases included, norm
 * weights); adapter->n_decay is the boundary.
 *
 * Gemma norms: the checkpoint holds w and the forward multiplies by (1 + w). The trained parameter is w
 * (what is saved); the gradient is the same for both; lt_adapter_sync_weights rewrites the (1 + w) copies
 * after every change of params.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter_impl.h"
#include "formats/quant.h"

/* Walks the trained tensors in params order. Pass 0 (a->ptensors == NULL) counts them and their floats;
 * pass 1 fills a->ptensors and binds every view pointer. Returns the floats after `base`. */
typedef struct layout_state {
    lt_adapter *a;
    int bind;
    size_t off;  /* next params offset                  */
    size_t coff; /* next offset in norm_compute         */
    int n;       /* tensors so far                      */
} layout_state;

/* one tensor of shape (rows, cols), or (rows) when cols is 0: *param / *grad receive its place (when
 * binding); a norm also gets a compute pointer */
static void add(layout_state *s, const char *name, int64_t rows, int64_t cols, int decay, float **param, float **grad,
                float **compute) {
    lt_adapter *a = s->a;
    const size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    if (s->bind) {
        lt_ptensor *t = &a->ptensors[s->n];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->off = s->off;
        t->n = n;
        t->rows = rows;
        t->cols = cols;
        t->decay = decay;
        t->compute = NULL;
        t->order = (lt_torch_order){0};
        if (param) *param = a->params + s->off;
        if (grad) *grad = a->grads + s->off;
        if (compute) {
            if (a->norm_compute) {
                t->compute = a->norm_compute + s->coff;
                *compute = t->compute;
            } else {
                *compute = a->params + s->off;
            }
        }
    }
    if (compute) s->coff += n;
    s->off += n;
    s->n++;
}

#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

/* The trained router of MoE layer l, named `parent`.gate (gpt-oss: .router; PEFT's modules_to_save key: the
 * module "mlp"; a full fine-tuning: the checkpoint's name, lt_moe_parent). Its bias (gpt-oss) is a tensor of
 * its own among those without weight decay (add_router_bias), as Hugging Face's Trainer groups "bias". */
static void add_router(layout_state *s, const lt_model_config *c, int l, const char *parent) {
    lt_adapter *a = s->a;
    char nm[96];
    add(s, NAME("model.layers.%d.%s.%s.weight", l, parent, lt_moe_router_name(c)), c->num_experts, c->hidden_size, 1,
        s->bind ? &a->router[l] : NULL, s->bind ? &a->d_router[l] : NULL, NULL);
}
static void add_router_bias(layout_state *s, const lt_model_config *c, int l, const char *parent) {
    lt_adapter *a = s->a;
    char nm[96];
    if (c->moe_bias)
        add(s, NAME("model.layers.%d.%s.%s.bias", l, parent, lt_moe_router_name(c)), c->num_experts, 0, 0,
            s->bind ? &a->router_bias[l] : NULL, s->bind ? &a->d_router_bias[l] : NULL, NULL);
}

/* Full fine-tuning of MoE layer l: the router, then every expert's gate and up (expert-major: torch's one
 * parameter experts.gate_up_proj (E, 2 MI, H)), then every expert's down (experts.down_proj (E, H, MI)).
 * Each expert projection is a tensor of its own under its checkpoint name; `join` makes the optimizer
 * take each fused parameter as one tensor, as bitsandbytes does. */
static void layout_experts(layout_state *s, const lt_model_config *c, int l) {
    lt_adapter *a = s->a;
    const size_t E = (size_t)c->num_experts, H = (size_t)c->hidden_size, MI = (size_t)c->moe_intermediate_size;
    char nm[96];
    add_router(s, c, l, lt_moe_parent(c));
    if (s->bind) a->full_layers[l].router = a->router[l];
    if (s->bind) a->full_grads[l].router = a->d_router[l];
    for (int fused = 0; fused < 2; fused++)
        for (int e = 0; e < c->num_experts; e++)
            for (int k = fused ? 2 : 0; k < (fused ? 3 : 2); k++) {
                float *wp = NULL, *gp = NULL;
                add(s, NAME("model.layers.%d.%s.experts.%d.%s.weight", l, lt_moe_parent(c), e, lt_moe_proj_name(c, k)),
                    k == 2 ? H : MI, k == 2 ? MI : H, 1, &wp, &gp, NULL);
                if (!s->bind) continue;
                a->ptensors[s->n - 1].join = e > 0 || k == 1;
                if (c->arch == LT_ARCH_GPT_OSS && e == 0 && k != 1) /* torch: (E, H, MI, 2) / (E, MI, H) */
                    a->ptensors[s->n - 1].order = k == 0
                                                      ? (lt_torch_order){4, {E, H, MI, 2}, {2 * MI * H, 1, H, MI * H}}
                                                      : (lt_torch_order){3, {E, MI, H}, {H * MI, 1, MI}};
                a->full_layers[l].experts[3 * e + k] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = wp};
                a->full_grads[l].experts[3 * e + k] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = gp};
            }
}

static void layout(layout_state *s, const lt_model *m) {
    lt_adapter *a = s->a;
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers;
    const size_t V = (size_t)c->vocab_size, H = (size_t)c->hidden_size;
    char nm[96];
    if (!a->p.full_finetune) { /* modules_to_save: separate copies even when tied (PEFT deep-copies) */
        if (a->p.modules_to_save & LT_SAVE_EMBED_TOKENS)
            add(s, "model.embed_tokens.weight", V, H, 1, &a->embed, &a->d_embed, NULL);
        if (a->p.modules_to_save & LT_SAVE_LM_HEAD) add(s, "lm_head.weight", V, H, 1, &a->lm_head, &a->d_lm_head, NULL);
        for (int l = 0; l < L && (a->p.modules_to_save & LT_SAVE_ROUTER); l++)
            if (c->layer_moe[l]) add_router(s, c, l, "mlp");
        for (int l = 0; l < L && (a->p.modules_to_save & LT_SAVE_ROUTER); l++) /* after: no weight decay */
            if (c->layer_moe[l]) add_router_bias(s, c, l, "mlp");
        return;
    }
    lt_layer *W = a->full_layers, *G = a->full_grads;
    add(s, "model.embed_tokens.weight", V, H, 1, &a->embed, &a->d_embed, NULL);
    if (c->tie_word_embeddings) { /* one tensor, both gradients */
        a->lm_head = a->embed;
        a->d_lm_head = a->d_embed;
    } else {
        add(s, "lm_head.weight", V, H, 1, &a->lm_head, &a->d_lm_head, NULL);
    }
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(c, mods);
    for (int l = 0; l < L; l++) {
        if (c->layer_moe[l]) layout_experts(s, c, l);
        if (m->layers[l].sinks) /* gpt-oss: one logit per head; weight decay (no "bias" or "norm" in its name) */
            add(s, NAME("model.layers.%d.self_attn.sinks", l), c->num_attention_heads, 0, 1, &W[l].sinks, &G[l].sinks,
                NULL);
        for (int k = 0; k < n_mods; k++) { /* a fused module is one tensor: its projections' row blocks */
            if (c->layer_moe[l] && mods[k].first >= P_GATE) continue; /* the experts replace the MLP */
            int in, out;
            lt_module_dims(c, &mods[k], &in, &out);
            float *wp = NULL, *gp = NULL;
            add(s, NAME("model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name), out, in, 1, &wp, &gp, NULL);
            if (!s->bind) continue;
            for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
                int pi, po;
                lt_proj_dims(c, (lt_proj)q, &pi, &po);
                W[l].w[q] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = wp};
                G[l].w[q] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = gp};
                wp += (size_t)pi * po;
                gp += (size_t)pi * po;
            }
        }
    }
    for (int l = 0; l < L; l++) {
        const lt_layer *Ml = &m->layers[l];
        for (int q = 0; q < P_COUNT; q++)
            if (Ml->bias[q]) {
                int in, out;
                lt_proj_dims(c, (lt_proj)q, &in, &out);
                add(s, NAME("model.layers.%d.%s.%s.bias", l, lt_proj_parent[q], lt_proj_names[q]), out, 0, 0,
                    &W[l].bias[q], &G[l].bias[q], NULL);
            }
        if (c->layer_moe[l] && c->moe_bias) { /* gpt-oss: the router's bias, the experts' (one allocation: */
            const int64_t E = c->num_experts, MI = c->moe_intermediate_size; /* gate|up of every expert, then down) */
            add_router_bias(s, c, l, lt_moe_parent(c));
            if (s->bind) W[l].router_bias = a->router_bias[l], G[l].router_bias = a->d_router_bias[l];
            add(s, NAME("model.layers.%d.mlp.experts.gate_up_proj_bias", l), E, 2 * MI, 0, &W[l].expert_bias,
                &G[l].expert_bias, NULL);
            if (s->bind) /* torch (E, MI, 2): gate / up alternate; ours gate then up per expert */
                a->ptensors[s->n - 1].order =
                    (lt_torch_order){3, {(size_t)E, (size_t)MI, 2}, {2 * (size_t)MI, 1, (size_t)MI}};
            add(s, NAME("model.layers.%d.mlp.experts.down_proj_bias", l), E, H, 0, NULL, NULL, NULL);
        }
        lt_layer_norm norms[LT_MAX_LAYER_NORMS];
        const int n_norms = lt_layer_norms(c, norms);
        for (int k = 0; k < n_norms; k++) /* params hold the checkpoint's values, compute the (1 + w) copy */
            add(s, NAME("model.layers.%d.%s.weight", l, norms[k].name), norms[k].dim, 0, 0,
                lt_layer_norm_at(&W[l], norms[k].file), lt_layer_norm_at(&G[l], norms[k].compute),
                lt_layer_norm_at(&W[l], norms[k].compute));
    }
    add(s, "model.norm.weight", H, 0, 0, &a->final_norm_file, &a->d_final_norm, &a->final_norm);
}

/* The source of tensor `name` in model m (the checkpoint's values: Gemma norms as w, not 1 + w). */
const float *lt_adapter_model_tensor(const lt_model *m, const lt_ptensor *t) {
    const lt_model_config *c = &m->cfg;
    if (!strcmp(t->name, "model.embed_tokens.weight")) return m->embed;
    if (!strcmp(t->name, "lm_head.weight")) return m->lm_head; /* NULL when quantized: dequantized by the caller */
    if (!strcmp(t->name, "model.norm.weight")) return m->final_norm_file ? m->final_norm_file : m->final_norm;
    int l;
    char rest[96];
    if (sscanf(t->name, "model.layers.%d.%95s", &l, rest) != 2 || l < 0 || l >= c->num_hidden_layers) return NULL;
    const lt_layer *Ly = &m->layers[l];
    lt_layer_norm norms[LT_MAX_LAYER_NORMS];
    const int n_norms = lt_layer_norms(c, norms);
    for (int k = 0; k < n_norms; k++) {
        char b[96];
        snprintf(b, sizeof b, "%s.weight", norms[k].name);
        if (strcmp(rest, b)) continue;
        const float *f = *lt_layer_norm_at(Ly, norms[k].file);
        return f ? f : *lt_layer_norm_at(Ly, norms[k].compute);
    }
    for (int q = 0; q < P_COUNT; q++) {
        char b[96];
        snprintf(b, sizeof b, "%s.%s.bias", lt_proj_parent[q], lt_proj_names[q]);
        if (!strcmp(rest, b)) return Ly->bias[q];
    }
    if (!strcmp(rest, "self_attn.sinks")) return Ly->sinks;
    if (c->layer_moe[l]) { /* the router (either parent: add_router) and the experts, by checkpoint name */
        const char *parent = lt_moe_parent(c);
        const size_t np = strlen(parent);
        for (int bias = 0; bias < 2; bias++) {
            char b[64];
            snprintf(b, sizeof b, ".%s.%s", lt_moe_router_name(c), bias ? "bias" : "weight");
            if ((!strncmp(rest, "mlp", 3) && !strcmp(rest + 3, b)) ||
                (!strncmp(rest, parent, np) && !strcmp(rest + np, b)))
                return bias ? Ly->router_bias : Ly->router;
        }
        /* gpt-oss's expert biases: ours (lt_expert_bias), gate_up_proj_bias in our order (gate, up per expert) */
        if (Ly->expert_bias && !strcmp(rest, "mlp.experts.gate_up_proj_bias")) return Ly->expert_bias;
        if (Ly->expert_bias && !strcmp(rest, "mlp.experts.down_proj_bias"))
            return Ly->expert_bias + (size_t)c->num_experts * 2 * c->moe_intermediate_size;
        char proj[32];
        int e, used = 0;
        if (!strncmp(rest, parent, np) && sscanf(rest + np, ".experts.%d.%31[^.].weight%n", &e, proj, &used) == 2 &&
            !rest[np + used] && e >= 0 && e < c->num_experts)
            for (int k = 0; k < 3; k++)
                if (!strcmp(proj, lt_moe_proj_name(c, k))) return Ly->experts[3 * e + k].f32;
    }
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(c, mods);
    for (int k = 0; k < n_mods; k++) {
        char b[96];
        snprintf(b, sizeof b, "%s.%s.weight", mods[k].parent, mods[k].name);
        /* the projections of a fused module are consecutive row blocks of one allocation (split_module) */
        if (!strcmp(rest, b)) return Ly->w[mods[k].first].f32;
    }
    return NULL;
}

lt_status lt_adapter_full_check(const lt_model *m, const lt_adapter_params *p, lt_error *err) {
    if (p->modules_to_save & ~(unsigned)(LT_SAVE_EMBED_TOKENS | LT_SAVE_LM_HEAD | LT_SAVE_ROUTER))
        return lt_fail(
            err, LT_ERR_ARGUMENT,
            "adapter: modules_to_save 0x%x names a module other than embed_tokens "
            "(LT_SAVE_EMBED_TOKENS), lm_head (LT_SAVE_LM_HEAD) and the router (LT_SAVE_ROUTER: gate, gpt-oss's "
            "router)",
            p->modules_to_save);
    if ((p->modules_to_save & LT_SAVE_ROUTER) && m->cfg.n_moe_layers == 0)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "adapter: modules_to_save gate (LT_SAVE_ROUTER) trains the router of "
                       "mixture-of-experts layers; %s has none",
                       m->cfg.architecture);
    if ((p->modules_to_save & LT_SAVE_EMBED_TOKENS) && !m->embed)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: modules_to_save embed_tokens needs the embeddings in f32; this model "
                       "keeps them in bf16 (base_dtype LT_BASE_BF16; load it with LT_BASE_F32)");
    if ((p->modules_to_save & LT_SAVE_LM_HEAD) && !m->lm_head && m->lm_head_q.format == LT_WEIGHT_BF16)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: modules_to_save lm_head needs the LM head in f32; this model "
                       "keeps it in bf16 (base_dtype LT_BASE_BF16; load it with LT_BASE_F32)");
    if (!p->full_finetune) return LT_OK;
    if (p->modules_to_save)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "adapter: modules_to_save is for a LoRA; full fine-tuning already "
                       "trains every module");
    if (p->use_dora) return lt_fail(err, LT_ERR_ARGUMENT, "adapter: use_dora and full_finetune exclude each other");
    if (!(p->dropout == 0.0f))
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: full fine-tuning has no LoRA dropout; set dropout 0 "
                       "(it is %g)",
                       p->dropout);
    if (m->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: full fine-tuning needs f32 base weights; this model keeps "
                       "them in bf16 (load it with base_dtype LT_BASE_F32)");
    if (m->quant != LT_QUANT_NONE || m->lm_head_q.format != LT_WEIGHT_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "adapter: full fine-tuning needs f32 base weights; this model's "
                       "projections are quantized (%s); load it without quantization",
                       lt_quant_format_name(m->quant != LT_QUANT_NONE ? m->quant : LT_QUANT_NF4));
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int q = 0; q < P_COUNT; q++)
            if (m->layers[l].w[q].format != LT_WEIGHT_F32)
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "adapter: full fine-tuning needs f32 base weights; layer %d's "
                               "%s is stored quantized",
                               l, lt_proj_names[q]);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int i = 0; m->layers[l].experts && i < 3 * m->cfg.num_experts; i++)
            if (m->layers[l].experts[i].format != LT_WEIGHT_F32)
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "adapter: full fine-tuning needs f32 base weights; layer %d's expert %d "
                               "is stored quantized",
                               l, i / 3);
    if (m->n_merged)
        return lt_fail(err, LT_ERR_STATE,
                       "adapter: %d adapter(s) are merged into the model; unmerge them before "
                       "creating a full fine-tuning adapter",
                       m->n_merged);
    return LT_OK;
}

/* Pass 0: count (returns the floats, sets a->n_ptensors). Needs a->p. */
size_t lt_adapter_extra_count(lt_adapter *a, size_t *norm_floats) {
    layout_state s = {.a = a, .bind = 0};
    if (!a->p.full_finetune && !a->p.modules_to_save) {
        *norm_floats = 0;
        return 0;
    }
    layout(&s, a->model);
    a->n_ptensors = s.n;
    *norm_floats = s.coff;
    return s.off;
}

/* Pass 1: bind every view pointer for the tensors at params[base ..) and copy the model's values there. */
lt_status lt_adapter_extra_bind(lt_adapter *a, size_t base, lt_error *err) {
    lt_model *m = a->model;
    const lt_model_config *c = &m->cfg;
    const int L = (int)c->num_hidden_layers;
    if (c->n_moe_layers && (a->p.full_finetune || (a->p.modules_to_save & LT_SAVE_ROUTER))) {
        /* the trained routers; a full fine-tuning's layers also get their experts' weight fields */
        if (!(a->router = calloc((size_t)L, sizeof *a->router)) ||
            !(a->d_router = calloc((size_t)L, sizeof *a->d_router)))
            return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
        if (c->moe_bias && (!(a->router_bias = calloc((size_t)L, sizeof *a->router_bias)) ||
                            !(a->d_router_bias = calloc((size_t)L, sizeof *a->d_router_bias))))
            return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
        for (int l = 0; l < L && a->p.full_finetune; l++)
            if (c->layer_moe[l] &&
                (!(a->full_layers[l].experts = calloc((size_t)3 * c->num_experts, sizeof(lt_weight))) ||
                 !(a->full_grads[l].experts = calloc((size_t)3 * c->num_experts, sizeof(lt_weight)))))
                return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory");
    }
    layout_state s = {.a = a, .bind = 1, .off = base};
    layout(&s, m);
    for (int i = 0; i < a->n_ptensors; i++) {
        const lt_ptensor *t = &a->ptensors[i];
        const float *src = lt_adapter_model_tensor(m, t);
        if (src) {
            m->be->ops->copy(m->be, a->params + t->off, src, t->n * sizeof(float));
        } else if (!strcmp(t->name, "lm_head.weight")) { /* a quantized LM head: its dequantized values */
            const size_t V = (size_t)m->cfg.vocab_size, H = (size_t)m->cfg.hidden_size;
            float *h = malloc(V * H * sizeof *h);
            if (!h) return lt_fail(err, LT_ERR_NOMEM, "adapter: out of memory copying lm_head");
            const lt_weight head = lt_model_lm_head(m);
            lt_status st = lt_weight_download(m, &head, h, (int)V, (int)H, err);
            if (st == LT_OK) m->be->ops->upload(m->be, a->params + t->off, h, V * H * sizeof *h);
            free(h);
            if (st != LT_OK) return st;
        } else {
            return lt_fail(err, LT_ERR_INTERNAL, "adapter: no model tensor for %s", t->name);
        }
    }
    a->n_decay = base;
    for (int i = 0; i < a->n_ptensors; i++)
        if (a->ptensors[i].decay) a->n_decay = a->ptensors[i].off + a->ptensors[i].n;
    lt_adapter_sync_weights(a);
    return LT_OK;
}

void lt_adapter_sync_weights(const lt_adapter *a) {
    if (!a || !a->norm_compute) return;
    lt_backend *be = a->model->be;
    const float off = a->model->cfg.norm_offset;
    for (int i = 0; i < a->n_ptensors; i++) {
        const lt_ptensor *t = &a->ptensors[i];
        if (!t->compute) continue;
        be->ops->copy(be, t->compute, a->params + t->off, t->n * sizeof(float)); /* (1 + w) in fp32, as */
        be->ops->axpy(be, t->n, off, a->norm_ones, t->compute);                  /* transformers computes */
    }
}
