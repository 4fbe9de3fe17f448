/*
 * adapter.h - an adapter: LoRA / DoRA / PiSSA tensors and the trained copies of base weights of a full
 * fine-tuning or modules_to_save, the views a pass reads weights through, merged export (internal).
 * What only the adapter folder uses is in adapter_impl.h.
 */
#ifndef LT_ADAPTER_H
#define LT_ADAPTER_H

#include "model/model.h"

typedef struct lt_lora {
    float *A, *B;   /* (r, in), (out, r)  inside adapter->params  */
    float *dA, *dB; /* gradients, same layout inside adapter->grads */
    /* DoRA (NULL otherwise): magnitude (out) in params, its gradient in grads; g = m / ||W + s B A||_row
     * and inv_n = 1 / ||W + s B A||_row (out each, the adapter's scratch) set by each forward */
    float *mag, *dmag, *dora_g, *dora_inv_n;
    /* PiSSA / OLoRA (NULL otherwise): the frozen initial A0 (r, in), B0 (out, r) in adapter->init0; the
     * projection is x W^T + s (x A^T) B^T - s (x A0^T) B0^T, PEFT's residual base without rewriting W */
    float *A0, *B0;
} lt_lora;

struct lt_adapter {
    lt_error err;
    lt_model *model;
    lt_adapter_params p;
    float scaling; /* alpha/r, or alpha/sqrt(r) with rsLoRA */
    lt_lora *lora; /* (L * P_COUNT); A == NULL when the projection is not targeted */
    /* LoRA on the experts of MoE layers (L * 2; A == NULL where none): [2l] on every expert's gate|up
     * (A (E, r, H), B (E, 2 MI, r): rows 0 .. MI-1 of B_e are gate's, MI .. 2MI-1 up's), [2l + 1] on
     * every expert's down (A (E, r, MI), B (E, H, r)). Expert e's A_e, B_e are contiguous; PEFT's
     * lora_B interleaves the experts (docs/spec/moe.md) and peft.c converts. */
    lt_lora *elora;
    float *params; /* every A and B, contiguous (device) */
    float *grads;  /* same layout (device) */
    size_t n_params;
    int merged;
    /* DoRA scratch: g and inv_n of every targeted projection, and one materialised W + s B A of the
     * largest one (device); the row factors applied by a merge, to undo it (host) */
    float *dora_gn, *dora_w;
    float *dora_merge_g;
    float *init0;   /* PiSSA / OLoRA: A0 and B0 at the offsets of A and B in params (device); NULL otherwise */
    size_t n_init0; /* its floats: the LoRA part of params (modules_to_save copies come after) */
    /* Trained copies of base weights (full fine-tuning: all of them; modules_to_save: embed_tokens
     * and/or lm_head), fp32 inside params after the LoRA tensors, gradients at the same offsets in
     * grads. The model stays read-only: each pass reads weights through the views below. */
    lt_layer *full_layers;      /* (L) full FT: weights in params (norms: *_file = the trained w, the  */
                                /* plain pointers = what the forward multiplies by, (1 + w) for Gemma) */
    lt_layer *full_grads;       /* (L) full FT: the same fields pointing into grads                  */
    float *embed, *d_embed;     /* (V,H) trained embed_tokens and its gradient (NULL: frozen)        */
    float *lm_head, *d_lm_head; /* (V,H) trained lm_head (== embed for a tied full FT)             */
    float *final_norm, *final_norm_file, *d_final_norm; /* full FT: model.norm                       */
    float **router, **d_router;           /* (L) trained routers (E,H) of the MoE layers (full FT, modules_to_save */
                                          /* "gate" / "router") and their gradients; NULL (or a NULL entry): frozen */
    float **router_bias, **d_router_bias; /* (L) gpt-oss: those routers' biases (E) and their gradients     */
    float *norm_compute;                  /* Gemma full FT: the (1 + w) copies of every norm (device), refreshed */
    float *norm_ones;                     /* after each update by lt_adapter_sync_weights; ones (max(H,HD))    */
    size_t n_decay;                       /* params [0, n_decay) take weight decay; the rest (biases, norms) not */
    struct lt_ptensor *ptensors;          /* the trained base-weight tensors, in params order               */
    int n_ptensors;
    /* text files every save writes beside the weights (a model card, the run record), into the same
     * directory in the same save: lt_adapter_set_save_files */
    char **save_names, **save_texts;
    int n_save_files;
};

/* Write the adapter's save files into dir (the directory a save is writing). */
lt_status lt_adapter_write_save_files(const lt_adapter *a, const char *dir, lt_error *err);

/* The order of a tensor's elements in the torch parameter it is, where it differs from ours (bitsandbytes'
 * 8-bit state runs in torch's order): element i of torch's flattened parameter,
 * i = ((i0 dim1 + i1) dim2 + i2) dim3 + i3 (torch's shape (dim0, ..., dim[nd-1]), the last fastest), is our
 * element i0 stride0 + i1 stride1 + ... from the tensor's start. nd = 0: the same order. */
typedef struct lt_torch_order {
    int nd;
    size_t dim[4], stride[4];
} lt_torch_order;

/* One trained base-weight tensor of an adapter: its checkpoint name and place inside params. */
typedef struct lt_ptensor {
    char name[96]; /* "model.layers.3.self_attn.q_proj.weight", "lm_head.weight"        */
    size_t off, n;
    int join;             /* 1: one optimizer tensor with the tensor before (an expert's share of torch's fused */
                          /* experts.gate_up_proj / down_proj parameter: bitsandbytes' blocks run across them)  */
    int decay;            /* 0: a bias or a norm (Hugging Face Trainer's no-decay group)       */
    float *compute;       /* Gemma norms: the (1 + w) copy the forward reads (NULL otherwise)  */
    int64_t rows, cols;   /* its shape as saved: (rows, cols), or (rows) when cols is 0 (a bias, sinks) */
    lt_torch_order order; /* torch's order of this tensor (with the tensors joined to it) where not ours */
} lt_ptensor;

/* ---- the weights a pass reads: the adapter's trained copies where it holds them, else the model's */
static inline const lt_layer *lt_view_layer(const lt_model *m, const lt_adapter *ad, int l) {
    return ad && ad->full_layers ? &ad->full_layers[l] : &m->layers[l];
}
/* the gradient fields of layer l (NULL: the layer's weights are frozen) */
static inline const lt_layer *lt_view_layer_grads(const lt_adapter *ad, int l) {
    return ad && ad->full_grads ? &ad->full_grads[l] : NULL;
}
static inline const float *lt_view_embed(const lt_model *m, const lt_adapter *ad) {
    return ad && ad->embed ? ad->embed : m->embed;
}
/* layer l's router (E,H); *grad its gradient (NULL: frozen) */
static inline const float *lt_view_router(const lt_model *m, const lt_adapter *ad, int l, float **grad) {
    const int trained = ad && ad->router && ad->router[l];
    *grad = trained ? ad->d_router[l] : NULL;
    return trained ? ad->router[l] : m->layers[l].router;
}
/* layer l's router bias (E) (NULL: none, not gpt-oss); *grad its gradient (NULL: frozen) */
static inline const float *lt_view_router_bias(const lt_model *m, const lt_adapter *ad, int l, float **grad) {
    const int trained = ad && ad->router_bias && ad->router_bias[l];
    *grad = trained ? ad->d_router_bias[l] : NULL;
    return trained ? ad->router_bias[l] : m->layers[l].router_bias;
}
static inline const float *lt_view_final_norm(const lt_model *m, const lt_adapter *ad) {
    return ad && ad->final_norm ? ad->final_norm : m->final_norm;
}
static inline lt_weight lt_view_lm_head(const lt_model *m, const lt_adapter *ad) {
    if (ad && ad->lm_head) {
        lt_weight w = {.format = LT_WEIGHT_F32, .f32 = ad->lm_head};
        return w;
    }
    return lt_model_lm_head(m);
}

/* After the adapter's params changed (update, load): refresh derived weights (Gemma's 1 + w norms);
 * adapter/full.c. */
void lt_adapter_sync_weights(const lt_adapter *a);

static inline lt_lora *lt_adapter_lora(const lt_adapter *a, int layer, lt_proj p) {
    lt_lora *l = &a->lora[layer * P_COUNT + p];
    return l->A ? l : NULL;
}

/* layer l's expert LoRA: k = 0 gate|up, 1 down (NULL: none) */
static inline lt_lora *lt_adapter_elora(const lt_adapter *a, int layer, int k) {
    lt_lora *l = a->elora ? &a->elora[2 * layer + k] : NULL;
    return l && l->A ? l : NULL;
}
/* in and out widths of the expert LoRA k (0: gate|up (H, 2 MI), 1: down (MI, H)) */
static inline void lt_elora_dims(const lt_model_config *c, int k, int *in, int *out) {
    *in = (int)(k ? c->moe_intermediate_size : c->hidden_size);
    *out = (int)(k ? c->hidden_size : 2 * c->moe_intermediate_size);
}

/* 1: expert LoRA k's output rows alternate gate and up in torch (gpt-oss's gate_up_proj), ours are gate rows
 * then up rows */
static inline int lt_elora_interleaved(const lt_model_config *c, int k) { return k == 0 && c->arch == LT_ARCH_GPT_OSS; }

static inline int lt_init_is_decomposed(lt_lora_init init) { return init == LT_INIT_PISSA || init == LT_INIT_OLORA; }

/* ---- the tensors of a model as exported (adapter/export.c) ----------------------------------------
 * In checkpoint order, with Hugging Face names: embed_tokens, per layer the norms (as stored: Gemma's w,
 * not 1 + w), biases and linear modules (a fused module is one tensor), the final norm, lm_head unless
 * tied. The data of each, on the host in f32, comes from lt_export_tensor_data: the adapter's trained
 * copies where it holds them; a linear module dequantized, then merged with `delta` (when not NULL) or
 * with the adapter's own LoRA / DoRA (when not merged already). */
/* LT_XT_FUSED (gpt-oss): the experts' gate_up_proj (E, H, 2I) / down_proj (E, I, H) as transformers stores
 * them, (in, out) with gate / up in alternate columns, made of the LT_XT_EXPERT weights; LT_XT_FUSED_BIAS:
 * gate_up_proj_bias (E, 2I) alternating likewise. Their shape here is (E, in * out) / (E, 2I); dims3 is the
 * stored 3-D shape. */
typedef enum lt_xt_kind {
    LT_XT_PLAIN,
    LT_XT_MODULE,
    LT_XT_HEAD,
    LT_XT_EXPERT,
    LT_XT_FUSED,
    LT_XT_FUSED_BIAS
} lt_xt_kind;
typedef struct lt_xtensor {
    char name[96];   /* "model.layers.3.self_attn.q_proj.weight"                   */
    lt_xt_kind kind; /* PLAIN: a device f32 tensor; MODULE: a linear module; HEAD  */
    const float *src;
    int layer, proj; /* MODULE and biases: the layer and (first) projection       */
    lt_module mod;
    int ndim;
    int64_t shape[2]; /* (out, in), or (n, 1) when ndim is 1                      */
    int norm;         /* a norm weight                                            */
    int expert;       /* EXPERT: expert e's projection proj (P_GATE, P_UP, P_DOWN) of an MoE layer */
    int64_t dims3[3]; /* FUSED: (E, in, out) as stored (ndim 3)                    */
} lt_xtensor;

/* What is added to a linear module's weight W (out, in), row-major, when it is exported. */
typedef lt_status (*lt_delta_fn)(void *user, int layer, const lt_module *mod, float *W, lt_error *err);

lt_status lt_export_tensors(const lt_model *m, const lt_adapter *a, lt_xtensor **out, int *n, int *untie,
                            lt_error *err);
lt_status lt_export_tensor_data(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const lt_xtensor *t,
                                float *dst, lt_error *err);
/* W (the module's out x in) += s (B A - B0 A0) of a LoRA adapter (no DoRA rescaling) */
lt_status lt_lora_module_delta(const lt_adapter *a, int l, const lt_module *mod, float *W, lt_error *err);
/* Write the files of a Hugging Face model directory of those tensors (f32), config.json and the tokenizer
 * files into dir, an existing directory (a save's staging directory: core.h lt_save). */
lt_status lt_model_export_into(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *dir,
                               uint64_t max_shard_bytes, lt_error *err);
/* The same as one save of dir (core.h lt_save: refuses a dir that is not ours, replaces ours atomically). */
lt_status lt_model_export(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *dir,
                          uint64_t max_shard_bytes, lt_error *err);
/* Write the adapter's files into dir, an existing directory (a save's staging directory): PEFT's
 * adapter_config.json + adapter_model.safetensors (+ loratune_init.json for PiSSA / OLoRA), or a full
 * fine-tuning's model directory. (adapter/peft.c) */
lt_status lt_adapter_write(lt_adapter *a, const char *dir, lt_error *err);

/* A model as a GGUF file (adapter/gguf_export.c): merged with `delta` when not NULL, else with `a`. */
lt_status lt_gguf_export_model(lt_model *m, const lt_adapter *a, lt_delta_fn delta, void *user, const char *path,
                               const lt_gguf_params *params, lt_error *err);

#endif /* LT_ADAPTER_H */
