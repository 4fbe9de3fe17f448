/*
 * ref_backend.h - the reference kernels (cpu/ref_ops.c, lt_ref_*) as a backend: every slot of
 * lt_backend_ops, host memory, one thread. tests/test_backend_ops.c runs each of its cases on this
 * backend too, so that the checks that do not need an oracle (aliasing, accumulation, NaN-filled
 * outputs, the goldens from PyTorch, definitions) hold for the oracle itself.
 *
 * Like the CPU backend, it records an error for arguments the kernels cannot take (a leading dimension
 * below the row length, NH not a multiple of NKV, len > S_cap) and reports it from sync.
 * Header-only, for one test program.
 */
#ifndef LT_REF_BACKEND_H
#define LT_REF_BACKEND_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/ref_ops.h"

typedef struct rb_impl {
    _Atomic int first_error; /* lt_status since the last sync */
    _Atomic int reported;    /* what the last sync returned */
} rb_impl;

static void rb_error(lt_backend *be, lt_status st) {
    int expected = LT_OK;
    atomic_compare_exchange_strong(&((rb_impl *)be->impl)->first_error, &expected, (int)st);
}

/* ---- lifetime and memory ---- */
static void rb_destroy(lt_backend *be) {
    if (!be) return;
    free(be->impl);
    free(be);
}
static void rb_set_threads(lt_backend *be, int n) { be->n_threads = n > 0 ? n : 1; }
static void *rb_alloc(lt_backend *be, size_t bytes) {
    (void)be;
    if (bytes > SIZE_MAX - 63) return NULL;
    return aligned_alloc(64, bytes ? (bytes + 63) & ~(size_t)63 : 64);
}
static void rb_free(lt_backend *be, void *p) {
    (void)be;
    free(p);
}
static void rb_upload(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void rb_download(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void rb_copy(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}
static void rb_zero(lt_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}
static lt_status rb_sync(lt_backend *be) {
    rb_impl *im = be->impl;
    lt_status st = (lt_status)atomic_exchange(&im->first_error, LT_OK);
    atomic_store(&im->reported, (int)st);
    return st;
}
static const char *rb_error_message(lt_backend *be) {
    return atomic_load(&((rb_impl *)be->impl)->reported) == LT_OK ? "" : "reference backend: bad arguments";
}

/* ---- dense linear algebra ---- */
static void rb_gemm(lt_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    const int ra = ta ? M : K, rb = tb ? K : N; /* row lengths of A and B as stored */
    if (M < 0 || N < 0 || K < 0 || ldc < (N > 1 ? N : 1) ||
        (K > 0 && (lda < (ra > 1 ? ra : 1) || ldb < (rb > 1 ? rb : 1)))) {
        rb_error(be, LT_ERR_INTERNAL);
        return;
    }
    lt_ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static size_t rb_bf16_weight_bytes(lt_backend *be, int out, int in) {
    (void)be;
    return lt_ref_bf16_weight_bytes(out, in);
}
static void rb_bf16_weight_pack(lt_backend *be, void *dst, const float *W, int out, int in) {
    (void)be;
    lt_ref_bf16_weight_pack(dst, W, out, in);
}
static void rb_gemm_bf16_forward(lt_backend *be, float *y, const float *x, const void *Wp, int N, int in, int out) {
    (void)be;
    lt_ref_gemm_bf16_forward(y, x, Wp, N, in, out);
}
static void rb_gemm_bf16_backward(lt_backend *be, float *dx, const float *dy, const void *Wp, int N, int in, int out,
                                  int accumulate) {
    (void)be;
    lt_ref_gemm_bf16_backward(dx, dy, Wp, N, in, out, accumulate);
}

/* ---- elementwise, embedding ---- */
static void rb_axpy(lt_backend *be, size_t n, float a, const float *x, float *y) {
    (void)be;
    lt_ref_axpy(n, a, x, y);
}
static void rb_scale(lt_backend *be, size_t n, float a, float *x) {
    (void)be;
    lt_ref_scale(n, a, x);
}
static double rb_sumsq(lt_backend *be, size_t n, const float *x) {
    (void)be;
    return lt_ref_sumsq(n, x);
}
static int rb_all_finite(lt_backend *be, size_t n, const float *x) {
    (void)be;
    return lt_ref_all_finite(n, x);
}
static void rb_embedding_forward(lt_backend *be, float *out, const int32_t *ids, const float *table, int N, int C) {
    (void)be;
    lt_ref_embedding_forward(out, ids, table, N, C);
}
static void rb_embedding_backward(lt_backend *be, float *dtable, const int32_t *ids, const float *dout, int N, int C) {
    (void)be;
    lt_ref_embedding_backward(dtable, ids, dout, N, C);
}
static void rb_scatter_rows(lt_backend *be, float *dst, const int32_t *idx, const float *src, int n, int C) {
    (void)be;
    lt_ref_scatter_rows(dst, idx, src, n, C);
}

/* ---- RMSNorm, RoPE ---- */
static void rb_rmsnorm_forward(lt_backend *be, float *out, float *rstd, const float *inp, const float *w, int N, int C,
                               float eps) {
    (void)be;
    lt_ref_rmsnorm_forward(out, rstd, inp, w, N, C, eps);
}
static void rb_rmsnorm_backward(lt_backend *be, float *dinp, float *dw, const float *dout, const float *inp,
                                const float *w, const float *rstd, int N, int C) {
    (void)be;
    lt_ref_rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
}
static void rb_rope_forward(lt_backend *be, float *x, const int32_t *pos, const float *inv, int N, int nh, int hd,
                            int rd) {
    (void)be;
    lt_ref_rope_forward(x, pos, inv, N, nh, hd, rd);
}
static void rb_rope_backward(lt_backend *be, float *dx, const int32_t *pos, const float *inv, int N, int nh, int hd,
                             int rd) {
    (void)be;
    lt_ref_rope_backward(dx, pos, inv, N, nh, hd, rd);
}
static void rb_rope_scale(lt_backend *be, float *x, int N, int nh, int hd, int rd, float a) {
    (void)be;
    lt_ref_rope_scale(x, N, nh, hd, rd, a);
}

/* ---- attention ---- */
/* 1 if the kernels can take these sizes (an empty problem is a no-op) */
static int rb_att_ok(lt_backend *be, int B, int T, int NH, int NKV, int HD) {
    if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return 0;
    if (NKV <= 0 || NH % NKV) {
        rb_error(be, LT_ERR_INTERNAL);
        return 0;
    }
    return 1;
}
static void rb_attention_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                                 const int32_t *ks, int B, int T, int NH, int NKV, int HD, float scale) {
    if (rb_att_ok(be, B, T, NH, NKV, HD)) lt_ref_attention_forward(out, lse, q, k, v, ks, B, T, NH, NKV, HD, scale);
}
static size_t rb_attention_backward_scratch(lt_backend *be, int B, int T, int NH, int HD) {
    (void)be;
    return lt_ref_attention_backward_scratch(B, T, NH, HD);
}
static void rb_attention_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                  const float *k, const float *v, const float *out, const float *lse, const int32_t *ks,
                                  int B, int T, int NH, int NKV, int HD, float scale, float *scratch) {
    if (rb_att_ok(be, B, T, NH, NKV, HD))
        lt_ref_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, ks, B, T, NH, NKV, HD, scale, scratch);
}
/* the decode ranges a caller keeps (backend.h): 0 <= kv_start[b], kv_len[b] <= S_cap */
static int rb_ranges_ok(lt_backend *be, const int32_t *ks, const int32_t *kl, int B, int S) {
    for (int b = 0; b < B; b++)
        if (ks[b] < 0 || kl[b] > S) {
            rb_error(be, LT_ERR_INTERNAL);
            return 0;
        }
    return 1;
}
static void rb_attention_decode(lt_backend *be, float *out, const float *q, const float *kc, const float *vc,
                                const int32_t *ks, const int32_t *kl, int B, int S, int NH, int NKV, int HD,
                                float scale) {
    if (rb_att_ok(be, B, 1, NH, NKV, HD) && rb_ranges_ok(be, ks, kl, B, S))
        lt_ref_attention_decode(out, q, kc, vc, ks, kl, B, S, NH, NKV, HD, scale);
}
static void rb_attention_sink_forward(lt_backend *be, float *out, float *lse, const float *sinks, int B, int T, int NH,
                                      int HD) {
    (void)be;
    lt_ref_attention_sink_forward(out, lse, sinks, B, T, NH, HD);
}
static void rb_attention_sink_backward(lt_backend *be, float *dsinks, float *dq, float *dk, const float *dout,
                                       const float *q, const float *k, const float *out, const float *lse,
                                       const float *sinks, const int32_t *ks, int B, int T, int NH, int NKV, int HD,
                                       float scale) {
    if (rb_att_ok(be, B, T, NH, NKV, HD))
        lt_ref_attention_sink_backward(dsinks, dq, dk, dout, q, k, out, lse, sinks, ks, B, T, NH, NKV, HD, scale);
}
static void rb_attention_sink_decode(lt_backend *be, float *out, const float *q, const float *kc, const float *vc,
                                     const int32_t *ks, const int32_t *kl, const float *sinks, int B, int S, int NH,
                                     int NKV, int HD, float scale) {
    if (rb_att_ok(be, B, 1, NH, NKV, HD) && rb_ranges_ok(be, ks, kl, B, S))
        lt_ref_attention_sink_decode(out, q, kc, vc, ks, kl, sinks, B, S, NH, NKV, HD, scale);
}
static void rb_attention_softcap_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                         const float *v, const int32_t *ks, int B, int T, int NH, int NKV, int HD,
                                         float scale, float cap) {
    if (rb_att_ok(be, B, T, NH, NKV, HD))
        lt_ref_attention_softcap_forward(out, lse, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
}
static void rb_attention_softcap_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                          const float *q, const float *k, const float *v, const float *out,
                                          const float *lse, const int32_t *ks, int B, int T, int NH, int NKV, int HD,
                                          float scale, float cap) {
    if (rb_att_ok(be, B, T, NH, NKV, HD))
        lt_ref_attention_softcap_backward(dq, dk, dv, dout, q, k, v, out, lse, ks, B, T, NH, NKV, HD, scale, cap);
}
static void rb_attention_softcap_decode(lt_backend *be, float *out, const float *q, const float *kc, const float *vc,
                                        const int32_t *ks, const int32_t *kl, int B, int S, int NH, int NKV, int HD,
                                        float scale, float cap) {
    if (rb_att_ok(be, B, 1, NH, NKV, HD) && rb_ranges_ok(be, ks, kl, B, S))
        lt_ref_attention_softcap_decode(out, q, kc, vc, ks, kl, B, S, NH, NKV, HD, scale, cap);
}

/* ---- activations, bias, DoRA, soft-capping ---- */
static void rb_swiglu_clamp_forward(lt_backend *be, float *out, const float *g, const float *u, size_t n, float a,
                                    float lim) {
    (void)be;
    lt_ref_swiglu_clamp_forward(out, g, u, n, a, lim);
}
static void rb_swiglu_clamp_backward(lt_backend *be, float *dg, float *du, const float *dout, const float *g,
                                     const float *u, size_t n, float a, float lim) {
    (void)be;
    lt_ref_swiglu_clamp_backward(dg, du, dout, g, u, n, a, lim);
}
static void rb_swiglu_forward(lt_backend *be, float *out, const float *g, const float *u, size_t n) {
    (void)be;
    lt_ref_swiglu_forward(out, g, u, n);
}
static void rb_swiglu_backward(lt_backend *be, float *dg, float *du, const float *dout, const float *g, const float *u,
                               size_t n) {
    (void)be;
    lt_ref_swiglu_backward(dg, du, dout, g, u, n);
}
static void rb_geglu_forward(lt_backend *be, float *out, const float *g, const float *u, size_t n) {
    (void)be;
    lt_ref_geglu_forward(out, g, u, n);
}
static void rb_geglu_backward(lt_backend *be, float *dg, float *du, const float *dout, const float *g, const float *u,
                              size_t n) {
    (void)be;
    lt_ref_geglu_backward(dg, du, dout, g, u, n);
}
static void rb_bias_add(lt_backend *be, float *y, const float *b, int N, int C) {
    (void)be;
    lt_ref_bias_add(y, b, N, C);
}
static void rb_bias_backward(lt_backend *be, float *db, const float *dy, int N, int C) {
    (void)be;
    lt_ref_bias_backward(db, dy, N, C);
}
static void rb_dora_norm(lt_backend *be, float *g, float *inv, const float *m, const float *w, int rows, int cols) {
    (void)be;
    lt_ref_dora_norm(g, inv, m, w, rows, cols);
}
static void rb_mul_cols(lt_backend *be, float *y, const float *g, int N, int C) {
    (void)be;
    lt_ref_mul_cols(y, g, N, C);
}
static void rb_col_dot(lt_backend *be, float *out, const float *a, const float *b, const float *w, int N, int C) {
    (void)be;
    lt_ref_col_dot(out, a, b, w, N, C);
}
static void rb_softcap_forward(lt_backend *be, float *x, size_t n, float cap) {
    (void)be;
    lt_ref_softcap_forward(x, n, cap);
}
static void rb_softcap_backward(lt_backend *be, float *dx, const float *y, size_t n, float cap) {
    (void)be;
    lt_ref_softcap_backward(dx, y, n, cap);
}

/* ---- loss, dropout, optimizers, per-row scale, quantized weights ---- */
static void rb_cross_entropy(lt_backend *be, float *logits, float *losses, const int32_t *tg, int n, int V, float gs) {
    (void)be;
    lt_ref_cross_entropy(logits, losses, tg, n, V, gs);
}
static void rb_dropout(lt_backend *be, float *out, const float *inp, size_t n, float p, uint64_t seed,
                       uint64_t offset) {
    (void)be;
    lt_ref_dropout(out, inp, n, p, seed, offset);
}
static void rb_adamw_step(lt_backend *be, float *p, const float *g, float *m, float *v, size_t n, float ss, float b1,
                          float b2, float eps, float bc2, float decay) {
    (void)be;
    lt_ref_adamw_step(p, g, m, v, n, ss, b1, b2, eps, bc2, decay);
}
static void rb_adamw8bit_step(lt_backend *be, float *p, const float *g, void *s1, void *s2, float *a1, float *a2,
                              size_t n, const float *q1, const float *q2, float b1, float b2, float eps_c2, float ss,
                              float decay) {
    (void)be;
    lt_ref_adamw8bit_step(p, g, s1, s2, a1, a2, n, q1, q2, b1, b2, eps_c2, ss, decay);
}
static void rb_row_scale(lt_backend *be, float *x, const float *w, int n, int C) {
    (void)be;
    lt_ref_row_scale(x, w, n, C);
}
static void rb_dequantize_rows(lt_backend *be, float *out, const lt_qdesc *q, int64_t r0, int64_t r1) {
    (void)be;
    lt_ref_dequantize_rows(out, q, r0, r1);
}
static void rb_run_groups(lt_backend *be, int n, void (*fn)(void *ctx, int g), void *ctx) {
    (void)be;
    lt_ref_run_groups(n, fn, ctx);
}
static void rb_embedding_forward_bf16(lt_backend *be, float *out, const int32_t *ids, const void *table, int N, int C) {
    (void)be;
    lt_ref_embedding_forward_bf16(out, ids, table, N, C);
}
static void rb_gemm_q4_forward(lt_backend *be, float *y, const float *x, const lt_qdesc *q, int N, int in, int out,
                               float *tile, int tile_rows) {
    (void)be, (void)tile, (void)tile_rows;
    lt_ref_gemm_q4_forward(y, x, q, N, in, out);
}
static void rb_gemm_q4_backward(lt_backend *be, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                                int accumulate, float *tile, int tile_rows) {
    (void)be, (void)tile, (void)tile_rows;
    lt_ref_gemm_q4_backward(dx, dy, q, N, in, out, accumulate);
}

static const lt_backend_ops rb_ops = {
    .name = "reference",
    .host_memory = 1,
    .destroy = rb_destroy,
    .set_threads = rb_set_threads,
    .alloc = rb_alloc,
    .free = rb_free,
    .upload = rb_upload,
    .download = rb_download,
    .copy = rb_copy,
    .zero = rb_zero,
    .sync = rb_sync,
    .error_message = rb_error_message,
    .gemm = rb_gemm,
    .bf16_weight_bytes = rb_bf16_weight_bytes,
    .bf16_weight_pack = rb_bf16_weight_pack,
    .gemm_bf16_forward = rb_gemm_bf16_forward,
    .gemm_bf16_backward = rb_gemm_bf16_backward,
    .embedding_forward_bf16 = rb_embedding_forward_bf16,
    .gemm_q4_forward = rb_gemm_q4_forward,
    .gemm_q4_backward = rb_gemm_q4_backward,
    .axpy = rb_axpy,
    .scale = rb_scale,
    .sumsq = rb_sumsq,
    .all_finite = rb_all_finite,
    .embedding_forward = rb_embedding_forward,
    .embedding_backward = rb_embedding_backward,
    .scatter_rows = rb_scatter_rows,
    .rmsnorm_forward = rb_rmsnorm_forward,
    .rmsnorm_backward = rb_rmsnorm_backward,
    .rope_forward = rb_rope_forward,
    .rope_backward = rb_rope_backward,
    .rope_scale = rb_rope_scale,
    .attention_forward = rb_attention_forward,
    .attention_backward_scratch = rb_attention_backward_scratch,
    .attention_backward = rb_attention_backward,
    .attention_decode = rb_attention_decode,
    .attention_softcap_forward = rb_attention_softcap_forward,
    .attention_softcap_backward = rb_attention_softcap_backward,
    .attention_softcap_decode = rb_attention_softcap_decode,
    .attention_sink_forward = rb_attention_sink_forward,
    .attention_sink_backward = rb_attention_sink_backward,
    .attention_sink_decode = rb_attention_sink_decode,
    .swiglu_forward = rb_swiglu_forward,
    .swiglu_backward = rb_swiglu_backward,
    .swiglu_clamp_forward = rb_swiglu_clamp_forward,
    .swiglu_clamp_backward = rb_swiglu_clamp_backward,
    .bias_add = rb_bias_add,
    .bias_backward = rb_bias_backward,
    .dora_norm = rb_dora_norm,
    .mul_cols = rb_mul_cols,
    .col_dot = rb_col_dot,
    .geglu_forward = rb_geglu_forward,
    .geglu_backward = rb_geglu_backward,
    .softcap_forward = rb_softcap_forward,
    .softcap_backward = rb_softcap_backward,
    .cross_entropy = rb_cross_entropy,
    .dropout = rb_dropout,
    .adamw_step = rb_adamw_step,
    .adamw8bit_step = rb_adamw8bit_step,
    .row_scale = rb_row_scale,
    .dequantize_rows = rb_dequantize_rows,
    .run_groups = rb_run_groups,
};

/* The reference backend (n_threads is recorded, the kernels run on the calling thread). */
static lt_status lt_ref_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen) {
    lt_backend *be = calloc(1, sizeof *be);
    rb_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        if (err && errlen) snprintf(err, errlen, "reference backend: out of memory");
        return LT_ERR_NOMEM;
    }
    be->ops = &rb_ops;
    be->impl = im;
    rb_set_threads(be, n_threads);
    *out = be;
    return LT_OK;
}

#endif /* LT_REF_BACKEND_H */
