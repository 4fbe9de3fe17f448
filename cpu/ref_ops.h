/*
 * ref_ops.h - the reference kernels: plain loops, one function per backend op, the oracle for the
 * fast CPU kernels (cpu_backend.c) and for the CUDA backend.
 *
 * defines: lt_ref_<op> for every op of lt_backend_ops (backend.h), with the op's arguments minus the
 * `lt_backend *be`. Semantics, shapes and gradient conventions are those written in backend.h;
 * the comments here only add what the reference decides where backend.h is silent.
 *
 * Favour clarity over speed: single-threaded, sums of many terms in double, no allocation (a few
 * small variable-length arrays of head_dim doubles on the stack).
 */
#ifndef LT_REF_OPS_H
#define LT_REF_OPS_H

#include <stddef.h>
#include <stdint.h>

/* First key a query attends to, shared by every attention kernel: kv_start clamped to [0, t], so
 * that a bad kv_start can never index outside the row or leave a query with no key at all. */
static inline int lt_att_kv_lo(const int32_t *kv_start_row, int t) {
    int lo = kv_start_row[t];
    if (lo < 0) lo = 0;
    if (lo > t) lo = t;
    return lo;
}

/* ---- dense linear algebra ---- */
/* C (M,N) = alpha op(A) op(B) + beta C (sums in double). beta == 0 ignores C's old contents (BLAS). */
void lt_ref_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);

/* ---- frozen weights in bf16 ---- */
/* The packed layout of backend/bf16.h; sums of the exact products of the bf16-rounded inputs
 * in double. */
size_t lt_ref_bf16_weight_bytes(int out, int in);
void lt_ref_bf16_weight_pack(void *dst, const float *W, int out, int in);
void lt_ref_gemm_bf16_forward(float *y, const float *x, const void *Wp, int N, int in, int out);
void lt_ref_gemm_bf16_backward(float *dx, const float *dy, const void *Wp, int N, int in, int out, int accumulate);

/* ---- elementwise ---- */
void lt_ref_axpy(size_t n, float a, const float *x, float *y);
void lt_ref_scale(size_t n, float a, float *x);
/* x (n,C): row i *= w[i] */
void lt_ref_row_scale(float *x, const float *w, int n, int C);
double lt_ref_sumsq(size_t n, const float *x);
int lt_ref_all_finite(size_t n, const float *x);

/* ---- embedding ---- */
void lt_ref_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
void lt_ref_embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int C);
/* dst[idx[i]] (C) = src[i] (C) for i < n: src (n,C), idx (n) distinct rows of dst */
void lt_ref_scatter_rows(float *dst, const int32_t *idx, const float *src, int n, int C);
/* out (N,C) = rows of a table (vocab,C) in the packed bf16 layout of backend/bf16.h */
void lt_ref_embedding_forward_bf16(float *out, const int32_t *ids, const void *table, int N, int C);

/* ---- RMSNorm ---- */
void lt_ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void lt_ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C);

/* ---- RoPE ---- */
/* The angle is computed in float as Hugging Face does, (float)pos * inv_freq[j]; cos and sin of it
 * in double. */
void lt_ref_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                         int rot_dim);
void lt_ref_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                          int rot_dim);

/* ---- causal grouped-query attention ---- */
/* Two passes per query: (1) max and sum of exp of the scaled scores -> lse; (2) out = sum_j
 * exp(s_j - lse) v_j. No score row is stored. kv_start is clamped by lt_att_kv_lo. */
void lt_ref_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale);
/* One (b, h) of the above (out and lse rows of that head only); used by the fast backend as its
 * fallback for very large head_dim. */
void lt_ref_attention_forward_head(float *out, float *lse, const float *q, const float *k, const float *v,
                                   const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale, int b,
                                   int h);
/* The reference backward needs no scratch: returns 0; the scratch argument is unused (may be NULL). */
size_t lt_ref_attention_backward_scratch(int B, int T, int NH, int HD);
/* Recomputes p = exp(s - lse) from q, k and the saved lse. Key-major pass for dk, dv (sums over
 * queries in double), then query-major pass for dq (sums over keys in double). */
void lt_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *kv_start, int B,
                               int T, int NH, int NKV, int HD, float scale, float *scratch);

/* One new token per row against a KV cache: out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD); row b
 * attends to its keys kv_start[b] .. kv_len[b]-1. Two passes per (b, h) like the forward. An empty
 * range gives out = 0. */
void lt_ref_attention_decode(float *out, const float *q, const float *kcache, const float *vcache,
                             const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV, int HD,
                             float scale);

/* ---- attention sinks (gpt-oss; backend.h) ---- */
/* The sink applied to a finished forward (lse, out in place), the rest of the backward after
 * lt_ref_attention_backward of that out and lse, and the decode with the sink in the denominator
 * (lt_ref_attention_decode is this with sinks NULL). */
void lt_ref_attention_sink_forward(float *out, float *lse, const float *sinks, int B, int T, int NH, int HD);
void lt_ref_attention_sink_backward(float *dsinks, float *dq, float *dk, const float *dout, const float *q,
                                    const float *k, const float *out, const float *lse, const float *sinks,
                                    const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale);
void lt_ref_attention_sink_decode(float *out, const float *q, const float *kcache, const float *vcache,
                                  const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int B, int S_cap,
                                  int NH, int NKV, int HD, float scale);

/* ---- SwiGLU ---- */
void lt_ref_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void lt_ref_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);

void lt_ref_swiglu_clamp_forward(float *out, const float *gate, const float *up, size_t n, float alpha, float limit);
void lt_ref_swiglu_clamp_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                  size_t n, float alpha, float limit);

/* ---- cross-entropy ---- */

/* ---- attention with soft-capped scores (Gemma 2) ---- */
/* Kept apart from the kernels above so that the uncapped path stays exactly as it is. _head: one
 * query head (b,h); _group: dk, dv of kv head (b,kvh) and dq of its query heads (assigned). */
void lt_ref_attention_softcap_forward_head(float *out, float *lse, const float *q, const float *k, const float *v,
                                           const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale,
                                           float softcap, int b, int h);
void lt_ref_attention_softcap_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                      float softcap);
void lt_ref_attention_softcap_backward_group(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                             const float *k, const float *v, const float *out, const float *lse,
                                             const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale,
                                             float softcap, int b, int kvh);
void lt_ref_attention_softcap_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                       float softcap);
void lt_ref_attention_softcap_decode(float *out, const float *q, const float *kcache, const float *vcache,
                                     const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV,
                                     int HD, float scale, float softcap);

/* ---- DoRA ---- */
void lt_ref_dora_norm(float *g, float *inv_n, const float *m, const float *w, int rows, int cols);
void lt_ref_mul_cols(float *y, const float *g, int N, int C);
void lt_ref_col_dot(float *out, const float *a, const float *b, const float *w, int N, int C);

/* ---- bias, GeGLU, soft-capping, RoPE channel scale ---- */
void lt_ref_rope_scale(float *x, int N, int n_heads, int head_dim, int rot_dim, float a);
void lt_ref_bias_add(float *y, const float *b, int N, int C);
void lt_ref_bias_backward(float *db, const float *dy, int N, int C);
void lt_ref_geglu_forward(float *out, const float *gate, const float *up, size_t n);
void lt_ref_geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void lt_ref_softcap_forward(float *x, size_t n, float cap);
void lt_ref_softcap_backward(float *dx, const float *y, size_t n, float cap);

/* Targets outside [0, V) (-100 in particular) are ignored rows. */
void lt_ref_cross_entropy(float *logits, float *losses, const int32_t *targets, int n, int V, float grad_scale);

/* ---- dropout ---- */
/* keep(i) = lt_hash_uniform(seed, offset + i) >= p; kept values are multiplied by 1/(1-p) (computed
 * once in float). p >= 1 drops everything (out = 0). */
void lt_ref_dropout(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);

/* ---- AdamW ---- */
/* In float, exactly the formula of backend.h. */
void lt_ref_adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float step_size, float beta1,
                       float beta2, float eps, float bc2_sqrt, float decay);

/* ---- 8-bit blockwise AdamW (backend.h adamw8bit_step) ---- */
#define LT_OPT8_BLOCK 256
void lt_ref_adamw8bit_step(float *param, const float *grad, void *s1, void *s2, float *absmax1, float *absmax2,
                           size_t n, const float *qmap1, const float *qmap2, float beta1, float beta2, float eps_c2,
                           float step_size, float decay);
/* one block [i0, i1) with index b (the CPU backend runs blocks in parallel) */
void lt_ref_adamw8bit_block(float *param, const float *grad, uint8_t *c1, uint8_t *c2, float *absmax1, float *absmax2,
                            size_t b, size_t i0, size_t i1, const float *qmap1, const float *qmap2, float beta1,
                            float beta2, float eps_c2, float step_size, float decay);
void lt_ref_adamw32bnb_step(float *param, const float *grad, float *m, float *v, size_t n, float beta1, float beta2,
                            float eps_c2, float step_size, float decay);

/* ---- quantized weights ---- */
/* out (r1-r0, q->cols): element by element, absmax decoded for every element (backend.h lt_qdesc). */
struct lt_qdesc;
void lt_ref_dequantize_rows(float *out, const struct lt_qdesc *q, int64_t r0, int64_t r1);
/* products with a 4-bit weight computed in bf16 (backend.h gemm_q4_*): the dequantized values and the
 * activations rounded to bf16 (lt_bf16_round), sums in fp64 */
void lt_ref_gemm_q4_forward(float *y, const float *x, const struct lt_qdesc *q, int N, int in, int out);
void lt_ref_gemm_q4_backward(float *dx, const float *dy, const struct lt_qdesc *q, int N, int in, int out,
                             int accumulate);

/* ---- groups of independent work ---- */
/* fn(ctx, g) for g = 0, 1, ..., n-1 in order, on the calling thread */
void lt_ref_run_groups(int n, void (*fn)(void *ctx, int g), void *ctx);

#endif /* LT_REF_OPS_H */
