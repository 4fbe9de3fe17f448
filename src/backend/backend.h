/*
 * backend.h - the dispatch table every compute backend fills (internal; not part of the public ABI).
 *
 * The core (src/) never touches tensor memory directly: it holds "device pointers" (float * that may
 * live on a GPU), does pointer arithmetic on them, and calls these ops. The CPU backend (cpu/) is
 * always present and its reference kernels (cpu/ref_ops.c) are the oracle for every fast kernel and for
 * the CUDA backend (cuda/).
 *
 * Conventions for every op:
 *  - fp32, row-major, contiguous. N = number of tokens (B*T rows), C/H = channels.
 *  - Shapes are in the comment above each op, e.g. `out (N,C), inp (N,C), weight (C)`.
 *  - Forward and backward of an op sit side by side.
 *  - Gradients: parameter gradients ACCUMULATE (+=) so that gradient accumulation is free;
 *    activation gradients are ASSIGNED (=) unless the op says "accumulates".
 *  - Compute ops return void; a backend that can fail asynchronously (CUDA) records the first error
 *    and reports it from sync().
 *  - No op allocates memory: scratch is passed in by the caller (planned once per shape).
 */
#ifndef LT_BACKEND_H
#define LT_BACKEND_H

#include "backend/hostdev.h"
#include "loratune.h"
#include <stddef.h>
#include <stdint.h>

typedef struct lt_backend lt_backend;

/* ---- blockwise-quantized weights (bitsandbytes layouts; formats/quant.c makes them) ----------------
 * A (rows, cols) weight flattened row-major into numel = rows*cols elements, cut into blocks of
 * `blocksize` consecutive elements (the last may be partial). Element i belongs to block i/blocksize.
 *  NF4/FP4: data holds ceil(numel/2) bytes, element 2j in the HIGH nibble of byte j, 2j+1 in the low;
 *           value = code4[nibble] * absmax[block].
 *  INT8:    data holds numel int8 values; value = (q * absmax[block]) * (1/127) (bitsandbytes'
 *           LLM.int8 vector-wise layout when blocksize == cols).
 *  Double quantization (4-bit only): absmax[b] = code8[qabsmax[b]] * absmax2[b/256] + offset, each
 *  step rounded to fp32 in that order (no fused multiply-add), exactly as bitsandbytes decodes it. */
enum { LT_QF_NF4 = 1, LT_QF_FP4 = 2, LT_QF_INT8 = 3 }; /* == lt_quant_format */

typedef struct lt_qdesc {
    int format; /* LT_QF_*                                                         */
    int blocksize;
    int64_t rows, cols;
    const uint8_t *data;    /* see above                                                       */
    const float *absmax;    /* (n_blocks) f32, or NULL with double quantization               */
    const uint8_t *qabsmax; /* (n_blocks) 8-bit codes of absmax - offset (double quantization) */
    const float *absmax2;   /* (ceil(n_blocks/256)) scales of the codes                        */
    const float *code8;     /* (256) the signed dynamic map the codes index                    */
    float offset;           /* mean of the original absmax                                     */
} lt_qdesc;

#define LT_INT8_INV127 7.874015718698502e-3f /* bitsandbytes' 1/127 */

/* The decoded absmax of block b (host-readable descriptors only: the CPU backend and formats/quant.c). */
static inline float lt_qdesc_absmax(const lt_qdesc *q, int64_t b) {
    if (q->absmax) return q->absmax[b];
    volatile float s = q->code8[q->qabsmax[b]] * q->absmax2[b / 256]; /* volatile: no fma contraction */
    return s + q->offset;
}

typedef struct lt_backend_ops {
    const char *name;
    /* 1 if pointers returned by alloc are host pointers (CPU): the core may then use memory-mapped
     * f32 weights in place and read results without download. */
    int host_memory;

    /* ---- lifetime and memory ---------------------------------------------------------------- */
    void (*destroy)(lt_backend *be);
    void (*set_threads)(lt_backend *be, int n_threads);
    /* Returns NULL on failure. Alignment >= 64 bytes. */
    void *(*alloc)(lt_backend *be, size_t bytes);
    void (*free)(lt_backend *be, void *ptr);
    void (*upload)(lt_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(lt_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(lt_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(lt_backend *be, void *dst, size_t bytes);
    /* Waits for queued work; returns the first error since the last sync, LT_OK if none. */
    lt_status (*sync)(lt_backend *be);
    /* What the error the calling thread's last sync returned was ("" if it returned LT_OK): the op and
     * the cause, for the message of the handle that reports it (a CUDA backend names the CUDA error). */
    const char *(*error_message)(lt_backend *be);

    /* ---- dense linear algebra ---------------------------------------------------------------- */
    /* C (M,N) = alpha * op(A) @ op(B) + beta * C, row-major; op(A) is (M,K), op(B) is (K,N).
     * transA: A is stored (K,M) with leading dimension lda; likewise transB: B stored (N,K). */
    void (*gemm)(lt_backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- frozen weights stored in bf16 (lt_model_params.base_dtype = LT_BASE_BF16) ------------- */
    /* A frozen weight W (out,in) lives in a backend-specific packed bf16 layout, prepared once at
     * load: bf16_weight_bytes gives its size, bf16_weight_pack fills dst (allocated with alloc) from
     * the host f32 W, each value rounded to bf16 (round to nearest even). The two products round
     * their activation input to bf16 the same way and accumulate in fp32:
     *   forward   y  (N,out) = x (N,in) W^T                  (assigned)
     *   backward  dx (N,in)  = (accumulate ? dx : 0) + dy (N,out) W */
    size_t (*bf16_weight_bytes)(lt_backend *be, int out, int in);
    void (*bf16_weight_pack)(lt_backend *be, void *dst, const float *W_host, int out, int in);
    void (*gemm_bf16_forward)(lt_backend *be, float *y, const float *x, const void *Wp, int N, int in, int out);
    void (*gemm_bf16_backward)(lt_backend *be, float *dx, const float *dy, const void *Wp, int N, int in, int out,
                               int accumulate);
    /* The embedding table (V,C) of a bf16 base in that packed layout (what a tied LM head multiplies by):
     * out (N,C) f32 = table[ids[n]] (ids already validated by the core). */
    void (*embedding_forward_bf16)(lt_backend *be, float *out, const int32_t *ids, const void *table, int N, int C);

    /* ---- frozen 4-bit weights computed in bf16 (NF4 / FP4 with base_dtype LT_BASE_BF16: QLoRA with
     * bitsandbytes' bnb_4bit_compute_dtype = bfloat16) ---------------------------------------------
     * q (rows = out, cols = in) as for dequantize_rows. Each weight value is the fp32 value
     * dequantize_rows gives, rounded to bf16 as bf16_weight_pack rounds; the activation input is rounded
     * the same way and products accumulate in fp32, as gemm_bf16_*:
     *   forward   y  (N,out) = x (N,in) W^T                  (assigned)
     *   backward  dx (N,in)  = (accumulate ? dx : 0) + dy (N,out) W
     * tile: scratch of tile_rows * in floats (>= 1 row), for a backend that dequantizes rows of W first;
     * the CPU dequantizes straight into the panels of its kernel and does not touch it. */
    void (*gemm_q4_forward)(lt_backend *be, float *y, const float *x, const lt_qdesc *q, int N, int in, int out,
                            float *tile, int tile_rows);
    void (*gemm_q4_backward)(lt_backend *be, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                             int accumulate, float *tile, int tile_rows);

    /* ---- elementwise ------------------------------------------------------------------------- */
    /* y (n) += a * x (n) */
    void (*axpy)(lt_backend *be, size_t n, float a, const float *x, float *y);
    /* x (n) *= a */
    void (*scale)(lt_backend *be, size_t n, float a, float *x);
    /* returns sum of x[i]^2 in double (synchronising) */
    double (*sumsq)(lt_backend *be, size_t n, const float *x);
    /* returns 1 if every x[i] is finite (synchronising) */
    int (*all_finite)(lt_backend *be, size_t n, const float *x);

    /* ---- embedding: out (N,C) = table[ids[i]] (ids already validated by the core) ------------- */
    void (*embedding_forward)(lt_backend *be, float *out, const int32_t *ids, const float *table, int N, int C);
    /* dtable (vocab,C) ACCUMULATES dout (N,C): dtable[ids[i]] += dout[i], in token order for every row
     * of the table (deterministic: a repeated id sums its rows in the same order every run). */
    void (*embedding_backward)(lt_backend *be, float *dtable, const int32_t *ids, const float *dout, int N, int C);
    /* rows to given places, the mirror of embedding_forward's gather (the KV cache of generation):
     * dst[idx[i]] (C) = src[i] (C) for i < n; src (n,C), idx (n) distinct row indices of dst. */
    void (*scatter_rows)(lt_backend *be, float *dst, const int32_t *idx, const float *src, int n, int C);

    /* ---- RMSNorm: out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps) ------------------ */
    /* out (N,C), rstd (N) saved for backward, inp (N,C), weight (C) */
    void (*rmsnorm_forward)(lt_backend *be, float *out, float *rstd, const float *inp, const float *weight, int N,
                            int C, float eps);
    /* dinp (N,C) ACCUMULATES (it is always a residual-stream gradient); dweight (C) accumulates and
     * may be NULL (frozen norm); dout (N,C); inp, weight, rstd as saved by forward. */
    void (*rmsnorm_backward)(lt_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, int N, int C);

    /* ---- RoPE (Hugging Face rotate_half convention), in place --------------------------------- */
    /* x (N, n_heads, head_dim); pos (N) position ids; inv_freq (rot_dim/2); only the first rot_dim
     * channels of each head rotate, pairing channel j with j + rot_dim/2:
     *   x'[j]          = x[j] cos(p f_j) - x[j+d/2] sin(p f_j)
     *   x'[j+d/2]      = x[j+d/2] cos(p f_j) + x[j] sin(p f_j)
     * backward applies the inverse rotation to the gradient in place. */
    void (*rope_forward)(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                         int head_dim, int rot_dim);
    void (*rope_backward)(lt_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                          int head_dim, int rot_dim);

    /* x (N, n_heads, head_dim): the first rot_dim channels of each head *= a, in place. RoPE whose cos
     * and sin carry a factor (longrope's attention factor) is rope_forward then this; its backward is
     * this then rope_backward. */
    void (*rope_scale)(lt_backend *be, float *x, int N, int n_heads, int head_dim, int rot_dim, float a);

    /* ---- causal grouped-query attention ------------------------------------------------------- */
    /* q (B,T,NH,HD), k and v (B,T,NKV,HD), out (B,T,NH,HD), lse (B,NH,T) log-sum-exp of the scaled
     * scores, saved for backward. kv_start (B*T): token t of a row attends to keys
     * kv_start[t] .. t of the same row (causal; kv_start > 0 for packed sequences or a window).
     * Query head h uses kv head h / (NH/NKV). scale = 1/sqrt(HD). */
    void (*attention_forward)(lt_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale);
    /* dq (B,T,NH,HD), dk and dv (B,T,NKV,HD) assigned; dout, out, lse from forward.
     * A query that sees a single key (kv_start[t] == t) contributes exactly 0 to dq and dk (its
     * softmax is constant); backends must not leave rounding noise there.
     * scratch: at least attention_backward_scratch(B,T,NH,HD) floats. */
    size_t (*attention_backward_scratch)(lt_backend *be, int B, int T, int NH, int HD);
    void (*attention_backward)(lt_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                               float *scratch);

    /* ---- attention of one new token per row against a KV cache (generation) ------------------ */
    /* out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD) hold the keys and values of every row, the new
     * token's already stored (scatter_rows). kv_start, kv_len (B): row b attends to the keys
     * kv_start[b] .. kv_len[b]-1 of its own cache row (kv_start > 0: a sliding window); an empty range
     * gives out 0. The caller keeps 0 <= kv_start[b] and kv_len[b] <= S_cap. */
    void (*attention_decode)(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                             const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV, int HD,
                             float scale);

    /* ---- attention with soft-capped scores (Gemma 2) ------------------------------------------- */
    /* The three attention ops above with each scaled score s replaced by softcap * tanh(s / softcap)
     * before the mask and softmax (transformers' attn_logit_softcapping); the same shapes, kv_start
     * rule and single-key convention. lse is of the capped scores. softcap > 0. No scratch. */
    void (*attention_softcap_forward)(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                      const float *v, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                      float scale, float softcap);
    void (*attention_softcap_backward)(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                       const float *q, const float *k, const float *v, const float *out,
                                       const float *lse, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                       float scale, float softcap);
    void (*attention_softcap_decode)(lt_backend *be, float *out, const float *q, const float *kcache,
                                     const float *vcache, const int32_t *kv_start, const int32_t *kv_len, int B,
                                     int S_cap, int NH, int NKV, int HD, float scale, float softcap);

    /* ---- attention sinks (gpt-oss) ------------------------------------------------------------- */
    /* A sink is one learned logit per head that joins the softmax denominator and is attended to by
     * nothing: p_tj = exp(s_tj) / (sum_i exp(s_ti) + exp(sinks[h])). It is applied to a finished
     * attention_forward, in place: lse' = log(exp(lse) + exp(sinks[h])), out *= exp(lse - lse'), lse = lse'.
     * out (B,T,NH,HD), lse (B,NH,T), sinks (NH). */
    void (*attention_sink_forward)(lt_backend *be, float *out, float *lse, const float *sinks, int B, int T, int NH,
                                   int HD);
    /* attention_backward given out', lse' of attention_sink_forward is the gradient of the sink attention
     * for every query that sees two keys or more (its p and D come from them); this op runs after it and
     * adds the rest. With w_t = exp(sinks[h] - lse'_t) (dout_t . out'_t) per query t and head h:
     * dsinks[h] ACCUMULATES -sum_{b,t} w_t (NULL: not wanted); a query that sees a single key (to which
     * attention_backward gave exactly 0) gets its score gradient ds = w_t: dq_t += scale w_t k_t,
     * dk_t += scale w_t q_t (its kv head). dq, dout, q, out (B,T,NH,HD); dk, k (B,T,NKV,HD). */
    void (*attention_sink_backward)(lt_backend *be, float *dsinks, float *dq, float *dk, const float *dout,
                                    const float *q, const float *k, const float *out, const float *lse,
                                    const float *sinks, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                    float scale);
    /* attention_decode with sinks[h] in each head's denominator (the same shapes and ranges; an empty
     * range gives out 0). */
    void (*attention_sink_decode)(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                                  const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int B, int S_cap,
                                  int NH, int NKV, int HD, float scale);

    /* ---- SwiGLU: out = silu(gate) * up -------------------------------------------------------- */
    /* out, gate, up (N,I) */
    void (*swiglu_forward)(lt_backend *be, float *out, const float *gate, const float *up, size_t n);
    /* dgate, dup (N,I) assigned; dout (N,I). dgate/dup may alias gate/up (in place). */
    void (*swiglu_backward)(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, size_t n);

    /* ---- gpt-oss's clamped SwiGLU: out = (u + 1) g sigmoid(alpha g), g = min(gate, limit), u = up
     * clamped to [-limit, limit] (transformers' GptOssExperts._apply_gate); the gradient passes a clamp
     * where its input lies inside the bounds, ends included (torch.clamp). Shapes and aliasing as SwiGLU. */
    void (*swiglu_clamp_forward)(lt_backend *be, float *out, const float *gate, const float *up, size_t n, float alpha,
                                 float limit);
    void (*swiglu_clamp_backward)(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                  const float *up, size_t n, float alpha, float limit);

    /* ---- bias of a linear layer (Qwen2 q/k/v, attention_bias / mlp_bias) ----------------------- */
    /* y (N,C) += b (C) broadcast over rows */
    void (*bias_add)(lt_backend *be, float *y, const float *b, int N, int C);
    /* db (C) ACCUMULATES the column sums of dy (N,C) (the input gradient of a bias add is dy itself) */
    void (*bias_backward)(lt_backend *be, float *db, const float *dy, int N, int C);

    /* ---- DoRA (weight-decomposed LoRA, PEFT) ----------------------------------------------------- */
    /* w (rows,cols) = W + s B A materialised; n_r = ||w_r||_2 (per output row, PEFT's detached weight
     * norm); g (rows) = m / n, inv_n (rows) = 1 / n. m (rows) the magnitude vector. */
    void (*dora_norm)(lt_backend *be, float *g, float *inv_n, const float *m, const float *w, int rows, int cols);
    /* y (N,C) *= g (C) broadcast over rows (column scale) */
    void (*mul_cols)(lt_backend *be, float *y, const float *g, int N, int C);
    /* out (C) ACCUMULATES w[c] * sum_i a[i,c] b[i,c] ; a, b (N,C), w (C) */
    void (*col_dot)(lt_backend *be, float *out, const float *a, const float *b, const float *w, int N, int C);

    /* ---- GeGLU (Gemma): out = gelu_tanh(gate) * up ---------------------------------------------- */
    /* gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) (PyTorch approximate="tanh").
     * out, gate, up (n); backward like swiglu_backward: dgate, dup (n) assigned, may alias gate/up. */
    void (*geglu_forward)(lt_backend *be, float *out, const float *gate, const float *up, size_t n);
    void (*geglu_backward)(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, size_t n);

    /* ---- soft-capping (Gemma 2 final logits): x = cap * tanh(x / cap), in place ----------------- */
    /* x (n). backward: dx (n) *= 1 - (y / cap)^2 in place, y (n) the capped forward output. */
    void (*softcap_forward)(lt_backend *be, float *x, size_t n, float cap);
    void (*softcap_backward)(lt_backend *be, float *dx, const float *y, size_t n, float cap);

    /* ---- cross-entropy over one chunk of rows ------------------------------------------------- */
    /* logits (n,V) in; targets (n) with -100 = ignored. losses (n) receives -log softmax[target]
     * (0 for ignored rows). If grad_scale != 0, logits is overwritten with
     * grad_scale * (softmax - onehot(target)) (a zero row for ignored rows). */
    void (*cross_entropy)(lt_backend *be, float *logits, float *losses, const int32_t *targets, int n, int V,
                          float grad_scale);

    /* ---- dropout with a counter-based mask (recomputable in backward, nothing stored) --------- */
    /* out (n) = inp * keep(i) / (1-p), keep(i) = hash(seed, offset + i) >= p. out may alias inp. */
    void (*dropout)(lt_backend *be, float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);

    /* ---- optimizers (torch semantics, docs/spec/algorithms.md) ----------------------------------------- */
    /* param, grad, m, v (n). step_size = lr / (1 - b1^t); bc2_sqrt = sqrt(1 - b2^t). decay = lr*wd
     *   p *= 1 - decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size * m / (sqrt(v)/bc2_sqrt + eps) */
    void (*adamw_step)(lt_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float step_size,
                       float beta1, float beta2, float eps, float bc2_sqrt, float decay);
    /* bitsandbytes' blockwise 8-bit AdamW over ONE tensor of n elements (docs/spec/algorithms.md, bitsandbytes'
     * CUDA kernel kOptimizerStatic8bit2StateBlockwise). s1, s2: uint8 codes (n) of m and v under the
     * signed / unsigned dynamic maps qmap1, qmap2 (256 floats each, backend memory), absmax1, absmax2
     * (ceil(n/256)), blocks of 256 from the tensor's start. With absmax1 == NULL (bitsandbytes' 32-bit
     * path for tensors below min_8bit_size) s1, s2 are fp32 m, v (n) and nothing is quantized.
     * step_size = -lr sqrt(1-b2^t)/(1-b1^t), eps_c2 = eps sqrt(1-b2^t), decay = lr wd. Per element with
     * a finite g: m = m b1 + (1-b1) g; v = v b2 + ((1-b2) g) g; p += step_size m / (sqrt(v) + eps_c2);
     * p *= 1 - decay. A non-finite g: m = v = 0, p untouched. Then per block absmax = max|m|, max|v|,
     * codes = nearest code to m / absmax (ties to the lower code; an m whose code has the other sign moves
     * one code towards its sign), v / absmax. */
    void (*adamw8bit_step)(lt_backend *be, float *param, const float *grad, void *s1, void *s2, float *absmax1,
                           float *absmax2, size_t n, const float *qmap1, const float *qmap2, float beta1, float beta2,
                           float eps_c2, float step_size, float decay);

    /* ---- per-row scaling (objectives other than SFT weight each token's CE gradient) ---------- */
    /* x (n,C): row i *= w[i]; w (n) on the device. */
    void (*row_scale)(lt_backend *be, float *x, const float *w, int n, int C);
    /* ---- quantized weights ------------------------------------------------------------------- */
    /* out (r1-r0, cols) = the dequantized rows r0 .. r1-1 of q (lt_qdesc above), bit for bit the
     * values bitsandbytes' dequantization gives. q is a host struct holding backend pointers. */
    void (*dequantize_rows)(lt_backend *be, float *out, const lt_qdesc *q, int64_t r0, int64_t r1);

    /* ---- groups of independent work (the experts of an MoE layer) ------------------------------- */
    /* fn(ctx, g) once for every g in [0, n). The calls issue ops of this backend on disjoint memory and
     * share no scratch, so they may run in any order and at the same time: the CPU spreads the groups
     * over its threads (one parallel region instead of one per op: hundreds of small GEMMs per layer)
     * and runs every op a call issues on the calling thread alone; a device backend runs them in order
     * on its stream. Each call's results are the ones it gives when run alone (deterministic). */
    void (*run_groups)(lt_backend *be, int n, void (*fn)(void *ctx, int g), void *ctx);
} lt_backend_ops;

struct lt_backend {
    const lt_backend_ops *ops;
    void *impl; /* backend-private state */
    int n_threads;
};

/* The counter-based hash behind dropout (splitmix64 of seed ^ index); shared by every backend (the
 * CUDA kernels call it on the device) so that masks agree bit for bit. Returns a uniform float in [0,1). */
static inline LT_HOST_DEVICE float lt_hash_uniform(uint64_t seed, uint64_t index) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

#endif /* LT_BACKEND_H */
