/*
 * ref_ops.c - the reference kernels (see ref_ops.h). Plain loops, obviously correct, slow.
 * Every function opens with the shapes of its arguments; forward and backward sit side by side.
 */
#include "cpu/ref_ops.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "backend/backend.h" /* lt_hash_uniform */
#include "backend/bf16.h"    /* the packed bf16 weight layout */
#include "backend/codebook.h"

/* ---- dense linear algebra ----------------------------------------------------------------------- */

/* C (M,N) with leading dimension ldc; op(A) (M,K): A stored (M,K) lda, or (K,M) lda if transA;
 * op(B) (K,N): B stored (K,N) ldb, or (N,K) ldb if transB. */
void lt_ref_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double sum = 0.0;
            for (int p = 0; p < K; p++) {
                float a = transA ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                float b = transB ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                sum += (double)a * (double)b;
            }
            float *c = &C[(size_t)i * ldc + j];
            double r = (double)alpha * sum;
            if (beta != 0.0f) r += (double)beta * (double)*c;
            *c = (float)r;
        }
    }
}

/* ---- frozen weights in bf16 ---------------------------------------------------------------------- */

size_t lt_ref_bf16_weight_bytes(int out, int in) { return lt_bf16w_elems(out, in) * sizeof(uint16_t); }

/* dst: the packed layout of W (out,in) */
void lt_ref_bf16_weight_pack(void *dst, const float *W, int out, int in) { lt_bf16w_pack(dst, W, out, in); }

/* y (N,out) = bf16(x) (N,in) W^T */
void lt_ref_gemm_bf16_forward(float *y, const float *x, const void *Wp, int N, int in, int out) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double sum = 0.0;
            for (int i = 0; i < in; i++)
                sum += (double)lt_bf16_to_f32(lt_bf16_round(x[(size_t)n * in + i])) *
                       (double)lt_bf16w_get(Wp, out, in, o, i);
            y[(size_t)n * out + o] = (float)sum;
        }
}

/* dx (N,in) (+)= bf16(dy) (N,out) W */
void lt_ref_gemm_bf16_backward(float *dx, const float *dy, const void *Wp, int N, int in, int out, int accumulate) {
    for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) {
            double sum = accumulate ? (double)dx[(size_t)n * in + i] : 0.0;
            for (int o = 0; o < out; o++)
                sum += (double)lt_bf16_to_f32(lt_bf16_round(dy[(size_t)n * out + o])) *
                       (double)lt_bf16w_get(Wp, out, in, o, i);
            dx[(size_t)n * in + i] = (float)sum;
        }
}

/* ---- elementwise -------------------------------------------------------------------------------- */

/* y (n) += a * x (n) */
void lt_ref_axpy(size_t n, float a, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* x (n) *= a */
void lt_ref_scale(size_t n, float a, float *x) {
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

/* x (n,C), w (n) */
void lt_ref_row_scale(float *x, const float *w, int n, int C) {
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) x[(size_t)i * C + c] *= w[i];
}

/* x (n) */
double lt_ref_sumsq(size_t n, const float *x) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

/* x (n) */
int lt_ref_all_finite(size_t n, const float *x) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ---- embedding ---------------------------------------------------------------------------------- */

/* out (N,C), ids (N), table (vocab,C) */
void lt_ref_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof(float));
}

/* out (N,C) = rows ids of the packed bf16 table (vocab,C), as f32 */
void lt_ref_embedding_forward_bf16(float *out, const int32_t *ids, const void *table, int N, int C) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = lt_bf16w_get(table, 0, C, ids[n], c);
}

/* dtable (vocab,C) += scatter of dout (N,C) by ids (N), tokens in order */
void lt_ref_embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int C) {
    for (int n = 0; n < N; n++) {
        float *d = dtable + (size_t)ids[n] * C;
        const float *g = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

/* dst[idx[i]] (C) = src[i] (C), src (n,C) */
void lt_ref_scatter_rows(float *dst, const int32_t *idx, const float *src, int n, int C) {
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * C, src + (size_t)i * C, (size_t)C * sizeof(float));
}

/* ---- RMSNorm ------------------------------------------------------------------------------------ */

/* out (N,C), rstd (N), inp (N,C), weight (C) */
void lt_ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        double r = 1.0 / sqrt(ss / C + (double)eps);
        for (int c = 0; c < C; c++) o[c] = (float)((double)x[c] * r * weight[c]);
        rstd[n] = (float)r;
    }
}

/* dinp (N,C) accumulates, dweight (C) accumulates or NULL, dout (N,C), inp (N,C), weight (C), rstd (N)
 *   out_c = x_c r w_c, r = (mean(x^2) + eps)^-1/2, dr/dx_c = -r^3 x_c / C
 *   dx_c  = r w_c g_c - (r^3 / C) x_c sum_i(g_i w_i x_i);   dw_c = sum_n g_c x_c r */
void lt_ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *g = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        double r = rstd[n];
        double dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)g[c] * weight[c] * x[c];
        double k = r * r * r * dot / C;
        for (int c = 0; c < C; c++) dx[c] += (float)(r * weight[c] * g[c] - k * x[c]);
    }
    if (dweight) {
        for (int c = 0; c < C; c++) {
            double s = 0.0;
            for (int n = 0; n < N; n++) s += (double)dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
            dweight[c] += (float)s;
        }
    }
}

/* ---- RoPE --------------------------------------------------------------------------------------- */

/* x (N, n_heads, head_dim) in place; pos (N); inv_freq (rot_dim/2). dir = +1 rotates by +angle
 * (forward), -1 by -angle (the inverse = transpose, used by backward). */
static void ref_rope(float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim, int rot_dim,
                     int dir) {
    int half = rot_dim / 2;
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < half; j++) {
            float ang = (float)pos[n] * inv_freq[j];
            double c = cos((double)ang), s = dir * sin((double)ang);
            for (int h = 0; h < n_heads; h++) {
                float *xh = x + ((size_t)n * n_heads + h) * head_dim;
                double x1 = xh[j], x2 = xh[j + half];
                xh[j] = (float)(x1 * c - x2 * s);
                xh[j + half] = (float)(x2 * c + x1 * s);
            }
        }
    }
}

void lt_ref_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                         int rot_dim) {
    ref_rope(x, pos, inv_freq, N, n_heads, head_dim, rot_dim, +1);
}

/* dx (N, n_heads, head_dim) in place: the rotation is orthogonal, so its gradient is the inverse. */
void lt_ref_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                          int rot_dim) {
    ref_rope(dx, pos, inv_freq, N, n_heads, head_dim, rot_dim, -1);
}

/* ---- causal grouped-query attention ------------------------------------------------------------- */

static double ref_dot(const float *a, const float *b, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* q (B,T,NH,HD), k, v (B,T,NKV,HD), out (B,T,NH,HD), lse (B,NH,T), kv_start (B*T); one head (b,h). */
void lt_ref_attention_forward_head(float *out, float *lse, const float *q, const float *k, const float *v,
                                   const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale, int b,
                                   int h) {
    (void)B;
    int kvh = h / (NH / NKV);
    const int32_t *ks = kv_start + (size_t)b * T;
    for (int t = 0; t < T; t++) {
        const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
        int lo = lt_att_kv_lo(ks, t);
        /* pass 1: lse = log sum_j exp(scale q.k_j) */
        double mx = -INFINITY;
        for (int j = lo; j <= t; j++) {
            double s = scale * ref_dot(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD);
            if (s > mx) mx = s;
        }
        double sum = 0.0;
        for (int j = lo; j <= t; j++)
            sum += exp(scale * ref_dot(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD) - mx);
        double l = mx + log(sum);
        lse[((size_t)b * NH + h) * T + t] = (float)l;
        /* pass 2: out = sum_j p_j v_j */
        double acc[HD];
        for (int d = 0; d < HD; d++) acc[d] = 0.0;
        for (int j = lo; j <= t; j++) {
            double p = exp(scale * ref_dot(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD) - l);
            const float *vj = v + (((size_t)b * T + j) * NKV + kvh) * HD;
            for (int d = 0; d < HD; d++) acc[d] += p * vj[d];
        }
        float *ot = out + (((size_t)b * T + t) * NH + h) * HD;
        for (int d = 0; d < HD; d++) ot[d] = (float)acc[d];
    }
}

void lt_ref_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            lt_ref_attention_forward_head(out, lse, q, k, v, kv_start, B, T, NH, NKV, HD, scale, b, h);
}

size_t lt_ref_attention_backward_scratch(int B, int T, int NH, int HD) {
    (void)B;
    (void)T;
    (void)NH;
    (void)HD;
    return 0;
}

/* dq, dout, q, out (B,T,NH,HD); dk, dv, k, v (B,T,NKV,HD); lse (B,NH,T); kv_start (B*T).
 *   p_tj = exp(scale q_t.k_j - lse_t), D_t = dout_t.out_t, ds_tj = p_tj (dout_t.v_j - D_t)
 *   dv_j = sum_t p_tj dout_t;  dk_j = scale sum_t ds_tj q_t;  dq_t = scale sum_j ds_tj k_j */
void lt_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *kv_start, int B,
                               int T, int NH, int NKV, int HD, float scale, float *scratch) {
    (void)scratch;
    memset(dk, 0, (size_t)B * T * NKV * HD * sizeof(float));
    memset(dv, 0, (size_t)B * T * NKV * HD * sizeof(float));
    double acc_k[HD], acc_v[HD];
    for (int b = 0; b < B; b++) {
        const int32_t *ks = kv_start + (size_t)b * T;
        for (int h = 0; h < NH; h++) {
            int kvh = h / (NH / NKV);
#define Q_(t) (q + (((size_t)b * T + (t)) * NH + h) * HD)
#define DO_(t) (dout + (((size_t)b * T + (t)) * NH + h) * HD)
#define O_(t) (out + (((size_t)b * T + (t)) * NH + h) * HD)
#define K_(j) (k + (((size_t)b * T + (j)) * NKV + kvh) * HD)
#define V_(j) (v + (((size_t)b * T + (j)) * NKV + kvh) * HD)
#define LSE_(t) ((double)lse[((size_t)b * NH + h) * T + (t)])
            /* key-major: dk_j, dv_j (this head's share, added to the kv head's gradient) */
            for (int j = 0; j < T; j++) {
                for (int d = 0; d < HD; d++) acc_k[d] = acc_v[d] = 0.0;
                for (int t = j; t < T; t++) {
                    if (lt_att_kv_lo(ks, t) > j) continue;
                    double p = exp(scale * ref_dot(Q_(t), K_(j), HD) - LSE_(t));
                    double D = ref_dot(DO_(t), O_(t), HD);
                    double ds = lt_att_kv_lo(ks, t) == t ? 0.0 /* one key: constant softmax */
                                                         : p * (ref_dot(DO_(t), V_(j), HD) - D);
                    for (int d = 0; d < HD; d++) {
                        acc_v[d] += p * DO_(t)[d];
                        acc_k[d] += scale * ds * Q_(t)[d];
                    }
                }
                float *dkj = dk + (((size_t)b * T + j) * NKV + kvh) * HD;
                float *dvj = dv + (((size_t)b * T + j) * NKV + kvh) * HD;
                for (int d = 0; d < HD; d++) {
                    dkj[d] += (float)acc_k[d];
                    dvj[d] += (float)acc_v[d];
                }
            }
            /* query-major: dq_t */
            for (int t = 0; t < T; t++) {
                double D = ref_dot(DO_(t), O_(t), HD);
                for (int d = 0; d < HD; d++) acc_k[d] = 0.0;
                for (int j = lt_att_kv_lo(ks, t); j <= t; j++) {
                    double p = exp(scale * ref_dot(Q_(t), K_(j), HD) - LSE_(t));
                    double ds = lt_att_kv_lo(ks, t) == t ? 0.0 /* one key: constant softmax */
                                                         : p * (ref_dot(DO_(t), V_(j), HD) - D);
                    for (int d = 0; d < HD; d++) acc_k[d] += scale * ds * K_(j)[d];
                }
                float *dqt = dq + (((size_t)b * T + t) * NH + h) * HD;
                for (int d = 0; d < HD; d++) dqt[d] = (float)acc_k[d];
            }
#undef Q_
#undef DO_
#undef O_
#undef K_
#undef V_
#undef LSE_
        }
    }
}

/* out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD); row b: keys kv_start[b] .. kv_len[b]-1; sinks (NH)
 * or NULL: one more logit per head in the denominator (gpt-oss) */
void lt_ref_attention_sink_decode(float *out, const float *q, const float *kcache, const float *vcache,
                                  const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int B, int S_cap,
                                  int NH, int NKV, int HD, float scale) {
    for (int b = 0; b < B; b++) {
        const int j0 = kv_start[b], len = kv_len[b];
        for (int h = 0; h < NH; h++) {
            int kvh = h / (NH / NKV);
            const float *qh = q + ((size_t)b * NH + h) * HD;
            float *oh = out + ((size_t)b * NH + h) * HD;
#define KC_(j) (kcache + (((size_t)b * S_cap + (j)) * NKV + kvh) * HD)
#define VC_(j) (vcache + (((size_t)b * S_cap + (j)) * NKV + kvh) * HD)
            double mx = sinks && j0 < len ? sinks[h] : -INFINITY, sum = 0.0;
            for (int j = j0; j < len; j++) {
                double s = scale * ref_dot(qh, KC_(j), HD);
                if (s > mx) mx = s;
            }
            for (int j = j0; j < len; j++) sum += exp(scale * ref_dot(qh, KC_(j), HD) - mx);
            if (sinks && j0 < len) sum += exp(sinks[h] - mx);
            double acc[HD];
            for (int d = 0; d < HD; d++) acc[d] = 0.0;
            for (int j = j0; j < len; j++) {
                double p = exp(scale * ref_dot(qh, KC_(j), HD) - mx) / sum;
                for (int d = 0; d < HD; d++) acc[d] += p * VC_(j)[d];
            }
            for (int d = 0; d < HD; d++) oh[d] = (float)acc[d];
#undef KC_
#undef VC_
        }
    }
}

void lt_ref_attention_decode(float *out, const float *q, const float *kcache, const float *vcache,
                             const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV, int HD,
                             float scale) {
    lt_ref_attention_sink_decode(out, q, kcache, vcache, kv_start, kv_len, NULL, B, S_cap, NH, NKV, HD, scale);
}

/* ---- attention sinks (gpt-oss) ------------------------------------------------------------------ *
 * With a sink logit z_h per head, lse' = log(exp(lse) + exp(z_h)) and every p_tj = exp(s_tj - lse'), so
 * the sink attention is the plain one scaled by exp(lse - lse') per query; its backward is the plain
 * backward of (out', lse') (p_tj and D_t = dout_t.out'_t are the sink softmax's) except that the sink
 * is one more softmax entry with no value: its gradient is p_sink (0 - D_t) = -w_t, and a single-key
 * query is no longer a constant softmax: ds = p (dP - D) = D (1 - p) = w_t. */

/* out (B,T,NH,HD), lse (B,NH,T) in place; sinks (NH) */
void lt_ref_attention_sink_forward(float *out, float *lse, const float *sinks, int B, int T, int NH, int HD) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                float *l = lse + ((size_t)b * NH + h) * T + t;
                const double z = sinks[h], mx = *l > z ? *l : z;
                const double l2 = mx + log(exp(*l - mx) + exp(z - mx));
                const double f = exp(*l - l2);
                float *o = out + (((size_t)b * T + t) * NH + h) * HD;
                for (int d = 0; d < HD; d++) o[d] = (float)(o[d] * f);
                *l = (float)l2;
            }
}

/* dsinks (NH) accumulates (may be NULL); dq (B,T,NH,HD), dk (B,T,NKV,HD) accumulate the single-key
 * queries' score gradients; dout, q, out (B,T,NH,HD); k (B,T,NKV,HD); lse (B,NH,T) of the sink forward */
void lt_ref_attention_sink_backward(float *dsinks, float *dq, float *dk, const float *dout, const float *q,
                                    const float *k, const float *out, const float *lse, const float *sinks,
                                    const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale) {
    for (int h = 0; h < NH; h++) {
        const int kvh = h / (NH / NKV);
        double ds_sink = 0.0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const size_t qi = (((size_t)b * T + t) * NH + h) * HD, ki = (((size_t)b * T + t) * NKV + kvh) * HD;
                const double w =
                    exp(sinks[h] - (double)lse[((size_t)b * NH + h) * T + t]) * ref_dot(dout + qi, out + qi, HD);
                ds_sink -= w;
                if (lt_att_kv_lo(kv_start + (size_t)b * T, t) != t) continue;
                for (int d = 0; d < HD; d++) {
                    dq[qi + d] += (float)(scale * w * k[ki + d]);
                    dk[ki + d] += (float)(scale * w * q[qi + d]);
                }
            }
        if (dsinks) dsinks[h] += (float)ds_sink;
    }
}

/* ---- attention with soft-capped scores (Gemma 2) ----------------------------------------------- */

/* c = softcap tanh(scale q.k / softcap); *dc = dc / d(scale q.k) = 1 - (c / softcap)^2 */
static double capped_score(const float *qt, const float *kj, int HD, float scale, float softcap, double *dc) {
    double th = tanh(scale * ref_dot(qt, kj, HD) / softcap);
    if (dc) *dc = 1.0 - th * th;
    return softcap * th;
}

void lt_ref_attention_softcap_forward_head(float *out, float *lse, const float *q, const float *k, const float *v,
                                           const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale,
                                           float softcap, int b, int h) {
    int kvh = h / (NH / NKV);
    const int32_t *ks = kv_start + (size_t)b * T;
    double acc[HD];
    for (int t = 0; t < T; t++) {
        const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
        int lo = lt_att_kv_lo(ks, t);
        double mx = -INFINITY, sum = 0.0;
        for (int j = lo; j <= t; j++) {
            double s = capped_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, softcap, NULL);
            if (s > mx) mx = s;
        }
        for (int j = lo; j <= t; j++)
            sum += exp(capped_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, softcap, NULL) - mx);
        double l = mx + log(sum);
        lse[((size_t)b * NH + h) * T + t] = (float)l;
        for (int d = 0; d < HD; d++) acc[d] = 0.0;
        for (int j = lo; j <= t; j++) {
            double p = exp(capped_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, softcap, NULL) - l);
            const float *vj = v + (((size_t)b * T + j) * NKV + kvh) * HD;
            for (int d = 0; d < HD; d++) acc[d] += p * vj[d];
        }
        float *ot = out + (((size_t)b * T + t) * NH + h) * HD;
        for (int d = 0; d < HD; d++) ot[d] = (float)acc[d];
    }
}

void lt_ref_attention_softcap_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                      float softcap) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            lt_ref_attention_softcap_forward_head(out, lse, q, k, v, kv_start, T, NH, NKV, HD, scale, softcap, b, h);
}

/* As lt_ref_attention_backward with ds_tj = p_tj (dout_t.v_j - D_t) (1 - (c_tj / softcap)^2). */
void lt_ref_attention_softcap_backward_group(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                             const float *k, const float *v, const float *out, const float *lse,
                                             const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale,
                                             float softcap, int b, int kvh) {
    const int32_t *ks = kv_start + (size_t)b * T;
    const int G = NH / NKV;
    double acc_k[HD], acc_v[HD];
#define Q_(t, h) (q + (((size_t)b * T + (t)) * NH + (h)) * HD)
#define DO_(t, h) (dout + (((size_t)b * T + (t)) * NH + (h)) * HD)
#define O_(t, h) (out + (((size_t)b * T + (t)) * NH + (h)) * HD)
#define K_(j) (k + (((size_t)b * T + (j)) * NKV + kvh) * HD)
#define V_(j) (v + (((size_t)b * T + (j)) * NKV + kvh) * HD)
#define LSE_(t, h) ((double)lse[((size_t)b * NH + (h)) * T + (t)])
    for (int j = 0; j < T; j++) {
        for (int d = 0; d < HD; d++) acc_k[d] = acc_v[d] = 0.0;
        for (int h = kvh * G; h < (kvh + 1) * G; h++)
            for (int t = j; t < T; t++) {
                if (lt_att_kv_lo(ks, t) > j) continue;
                double dc, p = exp(capped_score(Q_(t, h), K_(j), HD, scale, softcap, &dc) - LSE_(t, h));
                double D = ref_dot(DO_(t, h), O_(t, h), HD);
                double ds = lt_att_kv_lo(ks, t) == t ? 0.0 : p * (ref_dot(DO_(t, h), V_(j), HD) - D) * dc;
                for (int d = 0; d < HD; d++) {
                    acc_v[d] += p * DO_(t, h)[d];
                    acc_k[d] += scale * ds * Q_(t, h)[d];
                }
            }
        float *dkj = dk + (((size_t)b * T + j) * NKV + kvh) * HD, *dvj = dv + (((size_t)b * T + j) * NKV + kvh) * HD;
        for (int d = 0; d < HD; d++) {
            dkj[d] = (float)acc_k[d];
            dvj[d] = (float)acc_v[d];
        }
    }
    for (int h = kvh * G; h < (kvh + 1) * G; h++)
        for (int t = 0; t < T; t++) {
            double D = ref_dot(DO_(t, h), O_(t, h), HD);
            for (int d = 0; d < HD; d++) acc_k[d] = 0.0;
            for (int j = lt_att_kv_lo(ks, t); j <= t; j++) {
                double dc, p = exp(capped_score(Q_(t, h), K_(j), HD, scale, softcap, &dc) - LSE_(t, h));
                double ds = lt_att_kv_lo(ks, t) == t ? 0.0 : p * (ref_dot(DO_(t, h), V_(j), HD) - D) * dc;
                for (int d = 0; d < HD; d++) acc_k[d] += scale * ds * K_(j)[d];
            }
            float *dqt = dq + (((size_t)b * T + t) * NH + h) * HD;
            for (int d = 0; d < HD; d++) dqt[d] = (float)acc_k[d];
        }
#undef Q_
#undef DO_
#undef O_
#undef K_
#undef V_
#undef LSE_
}

void lt_ref_attention_softcap_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                       float softcap) {
    for (int b = 0; b < B; b++)
        for (int g = 0; g < NKV; g++)
            lt_ref_attention_softcap_backward_group(dq, dk, dv, dout, q, k, v, out, lse, kv_start, T, NH, NKV, HD,
                                                    scale, softcap, b, g);
}

void lt_ref_attention_softcap_decode(float *out, const float *q, const float *kcache, const float *vcache,
                                     const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV,
                                     int HD, float scale, float softcap) {
    double acc[HD];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const int j0 = kv_start[b], len = kv_len[b];
            int kvh = h / (NH / NKV);
            const float *qh = q + ((size_t)b * NH + h) * HD;
#define KC_(j) (kcache + (((size_t)b * S_cap + (j)) * NKV + kvh) * HD)
#define VC_(j) (vcache + (((size_t)b * S_cap + (j)) * NKV + kvh) * HD)
            double mx = -INFINITY, sum = 0.0;
            for (int j = j0; j < len; j++) {
                double s = capped_score(qh, KC_(j), HD, scale, softcap, NULL);
                if (s > mx) mx = s;
            }
            for (int j = j0; j < len; j++) sum += exp(capped_score(qh, KC_(j), HD, scale, softcap, NULL) - mx);
            for (int d = 0; d < HD; d++) acc[d] = 0.0;
            for (int j = j0; j < len; j++) {
                double p = exp(capped_score(qh, KC_(j), HD, scale, softcap, NULL) - mx) / sum;
                for (int d = 0; d < HD; d++) acc[d] += p * VC_(j)[d];
            }
            float *oh = out + ((size_t)b * NH + h) * HD;
            for (int d = 0; d < HD; d++) oh[d] = (float)acc[d];
#undef KC_
#undef VC_
        }
}

/* ---- SwiGLU ------------------------------------------------------------------------------------- */

/* out, gate, up (n): out = gate sigmoid(gate) up */
void lt_ref_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], sig = 1.0 / (1.0 + exp(-g));
        out[i] = (float)(g * sig * up[i]);
    }
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up.
 *   d silu(g)/dg = sig (1 + g (1 - sig)) */
void lt_ref_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], u = up[i], go = dout[i];
        double sig = 1.0 / (1.0 + exp(-g));
        dgate[i] = (float)(go * u * sig * (1.0 + g * (1.0 - sig)));
        dup[i] = (float)(go * g * sig);
    }
}

/* gpt-oss: out = (u + 1) g sigmoid(alpha g), g = min(gate, limit), u = clamp(up, -limit, limit) */
void lt_ref_swiglu_clamp_forward(float *out, const float *gate, const float *up, size_t n, float alpha, float limit) {
    for (size_t i = 0; i < n; i++) {
        const double g = gate[i] < limit ? gate[i] : limit;
        const double u = up[i] < -limit ? -limit : up[i] > limit ? limit : up[i];
        out[i] = (float)((u + 1.0) * g / (1.0 + exp(-(double)alpha * g)));
    }
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up.
 *   d (g sig(a g)) / dg = sig (1 + a g (1 - sig)); a clamp passes the gradient inside its bounds */
void lt_ref_swiglu_clamp_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                  size_t n, float alpha, float limit) {
    for (size_t i = 0; i < n; i++) {
        const double g = gate[i] < limit ? gate[i] : limit, go = dout[i];
        const double u = up[i] < -limit ? -limit : up[i] > limit ? limit : up[i];
        const double sig = 1.0 / (1.0 + exp(-(double)alpha * g));
        const int g_in = gate[i] <= limit, u_in = up[i] >= -limit && up[i] <= limit;
        dgate[i] = g_in ? (float)(go * (u + 1.0) * sig * (1.0 + alpha * g * (1.0 - sig))) : 0.0f;
        dup[i] = u_in ? (float)(go * g * sig) : 0.0f;
    }
}

/* ---- DoRA ---------------------------------------------------------------------------------------- */

/* n_r = sqrt(sum_c w[r,c]^2) in double; g = m / n, inv_n = 1 / n (in float, as PEFT's fp32 division) */
void lt_ref_dora_norm(float *g, float *inv_n, const float *m, const float *w, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        const float *wr = w + (size_t)r * cols;
        for (int c = 0; c < cols; c++) ss += (double)wr[c] * wr[c];
        float n = (float)sqrt(ss);
        g[r] = m[r] / n;
        inv_n[r] = 1.0f / n;
    }
}

/* y (N,C) *= g (C) */
void lt_ref_mul_cols(float *y, const float *g, int N, int C) {
    for (size_t i = 0; i < (size_t)N; i++)
        for (int c = 0; c < C; c++) y[i * C + c] *= g[c];
}

/* out (C) += w[c] sum_i a[i,c] b[i,c], summed in double */
void lt_ref_col_dot(float *out, const float *a, const float *b, const float *w, int N, int C) {
    for (int c = 0; c < C; c++) {
        double acc = 0;
        for (size_t i = 0; i < (size_t)N; i++) acc += (double)a[i * C + c] * b[i * C + c];
        out[c] = (float)(out[c] + w[c] * acc);
    }
}

/* ---- RoPE channel scale -------------------------------------------------------------------------- */

/* x (N, n_heads, head_dim): channels 0..rot_dim-1 of every head times a */
void lt_ref_rope_scale(float *x, int N, int n_heads, int head_dim, int rot_dim, float a) {
    for (size_t r = 0; r < (size_t)N * n_heads; r++)
        for (int d = 0; d < rot_dim; d++) x[r * head_dim + d] *= a;
}

/* ---- bias add ----------------------------------------------------------------------------------- */

/* y (N,C) += b (C) */
void lt_ref_bias_add(float *y, const float *b, int N, int C) {
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) y[(size_t)i * C + c] += b[c];
}

/* db (C) += sum over rows of dy (N,C), summed in double */
void lt_ref_bias_backward(float *db, const float *dy, int N, int C) {
    for (int c = 0; c < C; c++) {
        double acc = 0;
        for (int i = 0; i < N; i++) acc += dy[(size_t)i * C + c];
        db[c] = (float)(db[c] + acc);
    }
}

/* ---- GeGLU (tanh-approximated GELU gate) -------------------------------------------------------- */

#define LT_GELU_K0 0.7978845608028654 /* sqrt(2/pi) */
#define LT_GELU_K1 0.044715

/* out, gate, up (n): out = 0.5 g (1 + tanh(k0 (g + k1 g^3))) up */
void lt_ref_geglu_forward(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], t = tanh(LT_GELU_K0 * (g + LT_GELU_K1 * g * g * g));
        out[i] = (float)(0.5 * g * (1.0 + t) * up[i]);
    }
}

/* d gelu/dg = 0.5 (1 + t) + 0.5 g (1 - t^2) k0 (1 + 3 k1 g^2); dgate/dup may alias gate/up */
void lt_ref_geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], u = up[i], go = dout[i];
        double t = tanh(LT_GELU_K0 * (g + LT_GELU_K1 * g * g * g));
        double gelu = 0.5 * g * (1.0 + t);
        double dgelu = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * LT_GELU_K0 * (1.0 + 3.0 * LT_GELU_K1 * g * g);
        dgate[i] = (float)(go * u * dgelu);
        dup[i] = (float)(go * gelu);
    }
}

/* ---- soft-capping -------------------------------------------------------------------------------- */

/* x (n) = cap tanh(x / cap) */
void lt_ref_softcap_forward(float *x, size_t n, float cap) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(cap * tanh((double)x[i] / cap));
}

/* dx (n) *= 1 - (y / cap)^2, y the capped output */
void lt_ref_softcap_backward(float *dx, const float *y, size_t n, float cap) {
    for (size_t i = 0; i < n; i++) {
        double t = (double)y[i] / cap;
        dx[i] = (float)(dx[i] * (1.0 - t * t));
    }
}

/* ---- cross-entropy ------------------------------------------------------------------------------ */

/* logits (n,V) (overwritten by the gradient if grad_scale != 0), losses (n), targets (n) */
void lt_ref_cross_entropy(float *logits, float *losses, const int32_t *targets, int n, int V, float grad_scale) {
    for (int i = 0; i < n; i++) {
        float *x = logits + (size_t)i * V;
        int tgt = targets[i];
        if (tgt < 0 || tgt >= V) {
            losses[i] = 0.0f;
            if (grad_scale != 0.0f) memset(x, 0, (size_t)V * sizeof(float));
            continue;
        }
        double mx = -INFINITY;
        for (int c = 0; c < V; c++)
            if (x[c] > mx) mx = x[c];
        double sum = 0.0;
        for (int c = 0; c < V; c++) sum += exp((double)x[c] - mx);
        double lse = mx + log(sum);
        losses[i] = (float)(lse - x[tgt]);
        if (grad_scale != 0.0f)
            for (int c = 0; c < V; c++) x[c] = (float)(grad_scale * (exp((double)x[c] - lse) - (c == tgt ? 1.0 : 0.0)));
    }
}

/* ---- dropout ------------------------------------------------------------------------------------ */

/* out, inp (n); out may alias inp */
void lt_ref_dropout(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset) {
    float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    for (size_t i = 0; i < n; i++) {
        int keep = p < 1.0f && lt_hash_uniform(seed, offset + i) >= p;
        out[i] = keep ? inp[i] * keep_scale : 0.0f;
    }
}

/* ---- AdamW -------------------------------------------------------------------------------------- */

/* param, grad, m, v (n) */
void lt_ref_adamw_step(float *param, const float *grad, float *m, float *v, size_t n, float step_size, float beta1,
                       float beta2, float eps, float bc2_sqrt, float decay) {
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        param[i] *= 1.0f - decay;
        m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        param[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}

/* ---- 8-bit blockwise AdamW (bitsandbytes) ----------------------------------------------------------- */

/* The nearest entry of a sorted 256-entry code book to x (ties to the lower index; NaN gives 0). */
static uint8_t code_nearest(const float *code, float x) {
    int lo = 0, hi = 255; /* the largest idx with code[idx] <= x, or 0 below code[0] */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (code[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    if (lo < 255 && fabsf(x - code[lo + 1]) < fabsf(x - code[lo])) lo++;
    return (uint8_t)lo;
}

/* One block [i0, i1) of the backend.h adamw8bit_step (b = the block's index). */
void lt_ref_adamw8bit_block(float *param, const float *grad, uint8_t *c1, uint8_t *c2, float *absmax1, float *absmax2,
                            size_t b, size_t i0, size_t i1, const float *qmap1, const float *qmap2, float beta1,
                            float beta2, float eps_c2, float step_size, float decay) {
    float m[LT_OPT8_BLOCK], v[LT_OPT8_BLOCK];
    float am1 = -FLT_MAX, am2 = -FLT_MAX;
    for (size_t i = i0; i < i1; i++) {
        const float g = grad[i];
        float mi = 0.0f, vi = 0.0f;
        if (isfinite(g)) {
            mi = qmap1[c1[i]] * absmax1[b];
            mi = mi * beta1 + (1.0f - beta1) * g;
            vi = qmap2[c2[i]] * absmax2[b];
            vi = vi * beta2 + (1.0f - beta2) * g * g;
            param[i] = param[i] + step_size * (mi / (sqrtf(vi) + eps_c2));
            if (decay > 0.0f) param[i] = param[i] * (1.0f - decay);
        }
        m[i - i0] = mi;
        v[i - i0] = vi;
        am1 = fmaxf(am1, fabsf(mi));
        am2 = fmaxf(am2, fabsf(vi));
    }
    absmax1[b] = am1;
    absmax2[b] = am2;
    for (size_t i = i0; i < i1; i++) {
        /* an all-zero block stores m = v = 0 (0 / 0 would be NaN) */
        const float mi = m[i - i0], x1 = am1 > 0.0f ? mi / am1 : 0.0f;
        const float x2 = am2 > 0.0f ? v[i - i0] / am2 : 0.0f;
        int q1 = code_nearest(qmap1, x1);
        /* m keeps its sign: bitsandbytes moves a code of the other sign one step towards m's sign */
        if (signbit(qmap1[q1]) != signbit(mi)) q1 += mi > 0.0f ? 1 : -1;
        c1[i] = (uint8_t)q1;
        c2[i] = code_nearest(qmap2, x2);
    }
}

/* bitsandbytes' 32-bit Adam (kOptimizer32bit2State) for tensors below min_8bit_size: the same update
 * with fp32 m, v; weight decay after the step as in its kernel. */
void lt_ref_adamw32bnb_step(float *param, const float *grad, float *m, float *v, size_t n, float beta1, float beta2,
                            float eps_c2, float step_size, float decay) {
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i];
        if (isfinite(g)) {
            m[i] = m[i] * beta1 + (1.0f - beta1) * g;
            v[i] = v[i] * beta2 + (1.0f - beta2) * (g * g);
            param[i] = param[i] + step_size * (m[i] / (sqrtf(v[i]) + eps_c2));
            if (decay > 0.0f) param[i] = param[i] * (1.0f - decay);
        }
    }
}

void lt_ref_adamw8bit_step(float *param, const float *grad, void *s1, void *s2, float *absmax1, float *absmax2,
                           size_t n, const float *qmap1, const float *qmap2, float beta1, float beta2, float eps_c2,
                           float step_size, float decay) {
    if (!absmax1) {
        lt_ref_adamw32bnb_step(param, grad, s1, s2, n, beta1, beta2, eps_c2, step_size, decay);
        return;
    }
    for (size_t b = 0; b * LT_OPT8_BLOCK < n; b++) {
        const size_t i0 = b * LT_OPT8_BLOCK, i1 = i0 + LT_OPT8_BLOCK < n ? i0 + LT_OPT8_BLOCK : n;
        lt_ref_adamw8bit_block(param, grad, s1, s2, absmax1, absmax2, b, i0, i1, qmap1, qmap2, beta1, beta2, eps_c2,
                               step_size, decay);
    }
}

/* ---- quantized weights ---------------------------------------------------------------------------- */

/* element i (row-major) of a quantized weight, dequantized */
static float ref_dequant(const lt_qdesc *q, int64_t i) {
    const float am = lt_qdesc_absmax(q, i / q->blocksize);
    if (q->format == LT_QF_INT8) return ((float)(int8_t)q->data[i] * am) * LT_INT8_INV127;
    const float *code = q->format == LT_QF_NF4 ? lt_nf4_code : lt_fp4_code;
    const int nibble = (i % 2 == 0) ? q->data[i / 2] >> 4 : q->data[i / 2] & 0x0f;
    return code[nibble] * am;
}

void lt_ref_dequantize_rows(float *out, const lt_qdesc *q, int64_t r0, int64_t r1) {
    for (int64_t i = r0 * q->cols; i < r1 * q->cols; i++) out[i - r0 * q->cols] = ref_dequant(q, i);
}

/* y (N,out) = bf16(x) (N,in) bf16(W)^T, W (out,in) the dequantized 4-bit weight */
void lt_ref_gemm_q4_forward(float *y, const float *x, const lt_qdesc *q, int N, int in, int out) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double sum = 0.0;
            for (int i = 0; i < in; i++)
                sum += (double)lt_bf16_to_f32(lt_bf16_round(x[(size_t)n * in + i])) *
                       (double)lt_bf16_to_f32(lt_bf16_round(ref_dequant(q, (int64_t)o * in + i)));
            y[(size_t)n * out + o] = (float)sum;
        }
}

/* dx (N,in) (+)= bf16(dy) (N,out) bf16(W) */
void lt_ref_gemm_q4_backward(float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out, int accumulate) {
    for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) {
            double sum = accumulate ? (double)dx[(size_t)n * in + i] : 0.0;
            for (int o = 0; o < out; o++)
                sum += (double)lt_bf16_to_f32(lt_bf16_round(dy[(size_t)n * out + o])) *
                       (double)lt_bf16_to_f32(lt_bf16_round(ref_dequant(q, (int64_t)o * in + i)));
            dx[(size_t)n * in + i] = (float)sum;
        }
}

/* ---- groups of independent work ---------------------------------------------------------------- */

void lt_ref_run_groups(int n, void (*fn)(void *ctx, int g), void *ctx) {
    for (int g = 0; g < n; g++) fn(ctx, g);
}
