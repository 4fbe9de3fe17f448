/*
 * weight.c - the weight seam: products with a frozen base weight in any storage format.
 *
 * defines: lt_weight_tile_floats, lt_weight_uses_tile, lt_weight_forward, lt_weight_backward, lt_weight_download
 *
 * f32 weights are one GEMM. Quantized weights (NF4 / FP4 / int8) are dequantized a tile of output rows
 * at a time into a small scratch planned with the workspace (about 1 MiB, never a whole layer) and
 * each tile is one GEMM:
 *   forward   y[:, r0:r1]  = x W[r0:r1, :]^T          (N, r1-r0) = (N, in) (r1-r0, in)^T
 *   backward  dx          += dy[:, r0:r1] W[r0:r1, :]  (N, in)    = (N, r1-r0) (r1-r0, in)
 * The dequantized values are exactly bitsandbytes' (backend.h dequantize_rows), so the products, and
 * the LoRA gradients that flow through them, are those of the dequantized weight.
 * A 4-bit weight of a bf16 base (QLoRA with bitsandbytes' compute dtype bfloat16) instead goes to the
 * backend's gemm_q4_* in one call: the CPU dequantizes it straight into the panels of its bf16 kernel
 * (cpu/gemm_bf16.c), each value rounded to bf16, so it runs at the speed of a bf16 weight.
 */
#include <stdlib.h>

#include "model/model.h"

#define LT_TILE_FLOATS ((size_t)1 << 18) /* 1 MiB of f32 per tile */

/* rows of a tile for a weight with `in` columns: at least one row, at most `out` */
static int tile_rows(const lt_model *m, int in, int out) {
    size_t r = (m->tile_floats ? m->tile_floats : LT_TILE_FLOATS) / (size_t)in;
    if (r < 1) r = 1;
    return r > (size_t)out ? out : (int)r;
}

size_t lt_weight_tile_floats(const lt_model *m) {
    size_t need = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int p = 0; p < P_COUNT; p++) {
            const lt_weight *W = &m->layers[l].w[p];
            if (W->format != LT_WEIGHT_QUANT) continue;
            size_t t = (size_t)tile_rows(m, (int)W->q.cols, (int)W->q.rows) * (size_t)W->q.cols;
            if (t > need) need = t;
        }
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) /* quantized experts (QLoRA on an MoE model) */
        for (int i = 0; m->layers[l].experts && i < 3 * m->cfg.num_experts; i++) {
            const lt_weight *W = &m->layers[l].experts[i];
            if (W->format != LT_WEIGHT_QUANT) continue;
            size_t t = (size_t)tile_rows(m, (int)W->q.cols, (int)W->q.rows) * (size_t)W->q.cols;
            if (t > need) need = t;
        }
    const lt_weight *h = &m->lm_head_q;
    if (h->format == LT_WEIGHT_QUANT) {
        size_t t = (size_t)tile_rows(m, (int)h->q.cols, (int)h->q.rows) * (size_t)h->q.cols;
        if (t > need) need = t;
    }
    return need;
}

/* a 4-bit weight multiplied in bf16 (base_dtype BF16), not through f32 tiles */
static int q4_in_bf16(const lt_model *m, const lt_weight *W) {
    return m->base_dtype == LT_BASE_BF16 && (W->q.format == LT_QF_NF4 || W->q.format == LT_QF_FP4);
}

int lt_weight_uses_tile(const lt_model *m, const lt_weight *W) {
    return W->format == LT_WEIGHT_QUANT && !q4_in_bf16(m, W);
}

void lt_weight_forward(lt_model *m, float *tile, const lt_weight *W, float *y, const float *x, int N, int in, int out,
                       float beta) {
    const lt_backend_ops *ops = m->be->ops;
    if (W->format == LT_WEIGHT_QUANT && q4_in_bf16(m, W)) { /* every caller assigns y (beta 0), as for bf16 */
        ops->gemm_q4_forward(m->be, y, x, &W->q, N, in, out, tile, tile_rows(m, in, out));
        return;
    }
    switch (W->format) {
    case LT_WEIGHT_F32: ops->gemm(m->be, 0, 1, N, out, in, 1.0f, x, in, W->f32, in, beta, y, out); return;
    case LT_WEIGHT_BF16: /* x rounded to bf16, fp32 accumulation (cpu/gemm_bf16.c); every caller assigns y
                          * (beta 0), which is all the bf16 product offers */
        ops->gemm_bf16_forward(m->be, y, x, W->bf16, N, in, out);
        return;
    case LT_WEIGHT_QUANT: {
        const int tr = tile_rows(m, in, out);
        for (int r0 = 0; r0 < out; r0 += tr) {
            const int nr = out - r0 < tr ? out - r0 : tr;
            ops->dequantize_rows(m->be, tile, &W->q, r0, r0 + nr);
            ops->gemm(m->be, 0, 1, N, nr, in, 1.0f, x, in, tile, in, beta, y + r0, out);
        }
        return;
    }
    }
}

void lt_weight_backward(lt_model *m, float *tile, const lt_weight *W, float *dx, const float *dy, int N, int in,
                        int out, float beta) {
    const lt_backend_ops *ops = m->be->ops;
    if (W->format == LT_WEIGHT_QUANT && q4_in_bf16(m, W)) {
        ops->gemm_q4_backward(m->be, dx, dy, &W->q, N, in, out, beta != 0.0f, tile, tile_rows(m, in, out));
        return;
    }
    switch (W->format) {
    case LT_WEIGHT_F32: ops->gemm(m->be, 0, 0, N, in, out, 1.0f, dy, out, W->f32, in, beta, dx, in); return;
    case LT_WEIGHT_BF16: /* dy rounded to bf16; beta is 0 (assign) or 1 (accumulate) */
        ops->gemm_bf16_backward(m->be, dx, dy, W->bf16, N, in, out, beta != 0.0f);
        return;
    case LT_WEIGHT_QUANT: {
        const int tr = tile_rows(m, in, out);
        for (int r0 = 0; r0 < out; r0 += tr) {
            const int nr = out - r0 < tr ? out - r0 : tr;
            ops->dequantize_rows(m->be, tile, &W->q, r0, r0 + nr);
            /* the first tile applies beta, the others accumulate */
            ops->gemm(m->be, 0, 0, N, in, nr, 1.0f, dy + r0, out, tile, in, r0 == 0 ? beta : 1.0f, dx, in);
        }
        return;
    }
    }
}

lt_status lt_weight_download(lt_model *m, const lt_weight *W, float *host, int out, int in, lt_error *err) {
    const lt_backend_ops *ops = m->be->ops;
    const size_t bytes = (size_t)out * in * sizeof(float);
    if (W->format == LT_WEIGHT_F32) {
        ops->download(m->be, host, W->f32, bytes);
        return lt_backend_sync(m->be, err, "reading a weight back");
    }
    if (W->format == LT_WEIGHT_BF16)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "the base weights are kept in bf16 (base_dtype LT_BASE_BF16) and "
                       "are not read back; load the model with LT_BASE_F32 to merge or export");
    if (ops->host_memory) {
        ops->dequantize_rows(m->be, host, &W->q, 0, out);
        return lt_backend_sync(m->be, err, "reading a weight back");
    }
    float *dev = ops->alloc(m->be, bytes);
    if (!dev) return lt_fail(err, LT_ERR_NOMEM, "cannot allocate %zu bytes to dequantize a weight", bytes);
    ops->dequantize_rows(m->be, dev, &W->q, 0, out);
    ops->download(m->be, host, dev, bytes);
    lt_status st = lt_backend_sync(m->be, err, "reading a weight back");
    ops->free(m->be, dev);
    return st;
}
