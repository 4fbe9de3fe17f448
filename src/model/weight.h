/*
 * weight.h - the weight seam: a frozen (out, in) base weight in one of several storage formats, and
 * the products with it (model/weight.c). Every product with a base projection goes through here.
 */
#ifndef LT_WEIGHT_H
#define LT_WEIGHT_H

#include "backend/backend.h"
#include "core/core.h"

/* ---- the weight seam: a frozen (out, in) base weight in one of several storage formats ---------
 * Every product with a base projection goes through lt_weight_forward / lt_weight_backward
 * (model/weight.c), which switch on the format. Quantized weights are dequantized a tile of output rows
 * at a time into the workspace's scratch (ws->wtile), never as a whole layer. */
typedef enum lt_weight_format {
    LT_WEIGHT_F32 = 0,   /* f32: a backend pointer                                            */
    LT_WEIGHT_QUANT = 1, /* blockwise NF4 / FP4 / int8 (bitsandbytes layout): q                */
    LT_WEIGHT_BF16 = 2   /* bf16 in the backend's packed layout (base_dtype LT_BASE_BF16): bf16  */
} lt_weight_format;

typedef struct lt_weight {
    lt_weight_format format;
    float *f32;       /* (out, in), LT_WEIGHT_F32                                            */
    lt_qdesc q;       /* LT_WEIGHT_QUANT: backend pointers, rows = out, cols = in            */
    int double_quant; /* LT_WEIGHT_QUANT: q.absmax == NULL                                   */
    void *bf16;       /* LT_WEIGHT_BF16: packed by the backend's bf16_weight_pack            */
} lt_weight;

/* Floats of dequantization scratch a workspace must plan for this model (0: nothing quantized). */
size_t lt_weight_tile_floats(const lt_model *m);
/* 1 if products with W go through the dequantization tile (a quantized weight computed in f32): two
 * threads must not run them at once with the same tile. */
int lt_weight_uses_tile(const lt_model *m, const lt_weight *W);
/* y (N,out) = x (N,in) W^T + beta * y.  tile: ws->wtile (unused for f32 weights). */
void lt_weight_forward(lt_model *m, float *tile, const lt_weight *W, float *y, const float *x, int N, int in, int out,
                       float beta);
/* dx (N,in) = dy (N,out) W + beta * dx. */
void lt_weight_backward(lt_model *m, float *tile, const lt_weight *W, float *dx, const float *dy, int N, int in,
                        int out, float beta);
/* The weight as f32 (out, in) in host memory (dequantized when quantized). */
lt_status lt_weight_download(lt_model *m, const lt_weight *W, float *host, int out, int in, lt_error *err);

#endif /* LT_WEIGHT_H */
