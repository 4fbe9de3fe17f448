/* optimizer.h - the optimizer handle (internal view). */
#ifndef LT_OPTIMIZER_H
#define LT_OPTIMIZER_H

#include "adapter/adapter.h"

/* bitsandbytes' 8-bit AdamW keeps its state per parameter tensor (each LoRA A and B): blocks of 256 start
 * at the tensor's first element, and tensors below min_8bit_size keep fp32 state. */
#define LT_OPT8_MIN_SIZE 4096
#define LT_OPT8_BLOCKSIZE 256

typedef struct lt_opt8_tensor {
    size_t off, n; /* the tensor (or its part inside the optimizer's range) inside adapter->params       */
    int q8;        /* 1: 8-bit codes at codes + qoff, absmax at absmax + boff; 0: fp32 at m/v + foff      */
                   /* (decided by the whole tensor's size, so a part of a big tensor is still 8-bit)       */
    int decay;     /* 0: no weight decay (a bias or norm of a full fine-tuning) */
    size_t qoff, boff, foff;
    lt_torch_order order; /* nd > 0 with q8: the 8-bit state runs in torch's order (blocks of 256 of torch's
                             flattened parameter, as bitsandbytes'), the tensor is one part (never cut) */
} lt_opt8_tensor;

/* elements a gathered 8-bit update takes at a time (a multiple of the block size) */
#define LT_OPT8_CHUNK ((size_t)1 << 16)

/*
 * The state covers the parameters [lo, hi) of the adapter: all of them, or this rank's shard under a
 * ZeRO-1 trainer (lt_optimizer_set_range). It is allocated at its first use (update, save, load), so a
 * sharded optimizer never holds the whole state. Its parts ("sections", the order of the state file) are
 * the moments m, v (AdamW, SGD: m only is used) or, for 8-bit AdamW, the fp32 m, v of small tensors,
 * absmax1, absmax2, codes1, codes2: each a run of values in parameter order, so the state of a range is
 * a slice of every section and the shards of the ranks, one after the other, are the whole state.
 */
#define LT_OPT_SECTIONS 6

struct lt_optimizer {
    lt_error err;
    lt_adapter *adapter;
    lt_optimizer_params p;
    size_t lo, hi; /* the parameters whose state this optimizer keeps and updates */
    int ready;     /* 1: the state below is allocated */
    float *m, *v;  /* AdamW moments (hi - lo); SGD uses m as its momentum buffer; 8-bit AdamW: the fp32
                      state of its small tensors (n_f32) */
    int64_t step;  /* updates taken */
    /* 8-bit AdamW only (backend memory except the tensor lists) */
    lt_opt8_tensor *all; /* every parameter tensor of the adapter, in params order (n_all) */
    int n_all;
    lt_opt8_tensor *tensors; /* their parts inside [lo, hi) */
    int n_tensors;
    size_t n_q8, n_blocks, n_f32; /* elements with 8-bit state, their 256-blocks, elements with fp32 state */
    uint8_t *c1, *c2;             /* codes of m (signed map) and v (unsigned map), n_q8 each */
    float *absmax1, *absmax2;     /* n_blocks each */
    float *qmaps;                 /* 512: the signed then the unsigned dynamic map */
    /* tensors in torch's order: one chunk of param / grad gathered in that order, and its places in ours */
    float *gather_p, *gather_g; /* LT_OPT8_CHUNK each (backend memory) */
    int32_t *gather_ids;        /* LT_OPT8_CHUNK (backend memory) */
    int32_t *host_ids;          /* LT_OPT8_CHUNK (host) */
};

/* Allocate the state (zeros) if it is not yet. */
lt_status lt_optimizer_ready(lt_optimizer *o, lt_error *err);

/* Keep and update only the parameters [lo, hi) (a ZeRO-1 shard; bounds from lt_optimizer_shards). State
 * already allocated keeps its values for the range. */
lt_status lt_optimizer_set_range(lt_optimizer *o, size_t lo, size_t hi, lt_error *err);

/* The ZeRO-1 shards of `world` ranks: bounds[0] = 0 <= bounds[1] <= ... <= bounds[world] = n_params,
 * about n_params / world each, cut where the state splits exactly (8-bit AdamW: at a multiple of 256
 * elements from a tensor's start, so every block of codes has one owner). */
void lt_optimizer_shards(const lt_optimizer *o, int world, size_t *bounds);

/* Load the state of [lo, hi) from state files that together cover every parameter (each file one range:
 * lt_optimizer_save of an optimizer or of one shard), whatever their number. */
lt_status lt_optimizer_load_files(lt_optimizer *o, const char *const *paths, int n_paths, lt_error *err);

/* The sum of squares of the gradients in [lo, hi). */
double lt_optimizer_grad_sumsq(lt_optimizer *o);

/* Clip the gradients of [lo, hi) with the global pre-clip norm `norm` and update those parameters
 * (the state must be ready; derived weights are not refreshed: lt_adapter_sync_weights). */
void lt_optimizer_step(lt_optimizer *o, double norm, double *lr_used);

/* 8-bit AdamW's fp32 constants for update t (1-based) at learning rate lr (see optimizer.c). */
void lt_opt8_constants(const lt_optimizer_params *p, double lr, int64_t t, float *step_size, float *eps_c2,
                       float *decay);

/* Copy src's state (moments, 8-bit codes and absmax, step count) into dst: same kind, adapter shape and
 * range, both ready. */
void lt_optimizer_copy_state(lt_optimizer *dst, const lt_optimizer *src);

/* Learning-rate multiplier after s updates (docs/spec/algorithms.md). */
double lt_schedule_lambda(const lt_optimizer_params *p, int64_t s);

/* One process: clip the adapter's gradients (already averaged) and update its parameters. grad_norm
 * receives the pre-clip norm. Fails with LT_ERR_NUMERIC, changing nothing, when the gradients are not
 * finite. */
lt_status lt_optimizer_update(lt_optimizer *o, double *grad_norm, double *lr_used, lt_error *err);

#endif
