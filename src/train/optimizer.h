/* optimizer.h - the optimizer handle (internal view). */
#ifndef LT_OPTIMIZER_H
#define LT_OPTIMIZER_H

#include "adapter/adapter.h"

/* bitsandbytes' 8-bit AdamW keeps its state per parameter tensor (each LoRA A and B): blocks of 256 start
 * at the tensor's first element, and tensors below min_8bit_size keep fp32 state. */
#define LT_OPT8_MIN_SIZE 4096
#define LT_OPT8_BLOCKSIZE 256

typedef struct lt_opt8_tensor {
    size_t off, n; /* the tensor inside adapter->params                                        */
    int q8;        /* 1: 8-bit codes at codes + qoff, absmax at absmax + boff; 0: fp32 at m/v + foff */
    int decay;     /* 0: no weight decay (a bias or norm of a full fine-tuning) */
    size_t qoff, boff, foff;
} lt_opt8_tensor;

struct lt_optimizer {
    lt_error err;
    lt_adapter *adapter;
    lt_optimizer_params p;
    float *m, *v; /* AdamW moments (n_params); SGD uses m as its momentum buffer; 8-bit AdamW: the fp32
                     state of its small tensors (n_f32) */
    int64_t step; /* updates taken */
    /* 8-bit AdamW only (backend memory except tensors) */
    lt_opt8_tensor *tensors;
    int n_tensors;
    size_t n_q8, n_blocks, n_f32; /* elements with 8-bit state, their 256-blocks, elements with fp32 state */
    uint8_t *c1, *c2;             /* codes of m (signed map) and v (unsigned map), n_q8 each */
    float *absmax1, *absmax2;     /* n_blocks each */
    float *qmaps;                 /* 512: the signed then the unsigned dynamic map */
};

/* 8-bit AdamW's fp32 constants for update t (1-based) at learning rate lr (see optimizer.c). */
void lt_opt8_constants(const lt_optimizer_params *p, double lr, int64_t t, float *step_size, float *eps_c2,
                       float *decay);

/* Copy src's state (moments, 8-bit codes and absmax, step count) into dst: same kind, same adapter shape. */
void lt_optimizer_copy_state(lt_optimizer *dst, const lt_optimizer *src);

/* Learning-rate multiplier after s updates (docs/spec/algorithms.md). */
double lt_schedule_lambda(const lt_optimizer_params *p, int64_t s);

/* Clip the adapter's gradients (already averaged) and update its parameters. grad_norm receives the
 * pre-clip norm. Fails with LT_ERR_NUMERIC, changing nothing, when the gradients are not finite. */
lt_status lt_optimizer_update(lt_optimizer *o, double *grad_norm, double *lr_used, lt_error *err);

#endif
