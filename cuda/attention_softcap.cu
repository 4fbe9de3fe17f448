/*
 * attention_softcap.cu - attention with soft-capped scores (Gemma 2's attn_logit_softcapping):
 * forward, backward and decode (backend.h attention_softcap_*).
 *
 * Simple kernels, one thread per query (forward, decode, dq) or per key (dk, dv), dot products over
 * head_dim in registers-free loops reading global memory: correct and deterministic (every output
 * element is written by one thread in a fixed order), not tuned. The tiled kernels of attention.cu
 * keep the uncapped path. Score: c = cap tanh(scale q.k / cap); dc/ds = 1 - (c / cap)^2.
 */
#include "cuda/cuda_common.cuh"

#define SC_THREADS 128

__device__ __forceinline__ float sc_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

__device__ __forceinline__ float sc_score(const float *q, const float *k, int HD, float scale, float cap, float *dc) {
    float th = tanhf(scale * sc_dot(q, k, HD) / cap);
    if (dc) *dc = 1.0f - th * th;
    return cap * th;
}

/* one thread per (b, t, h): lse and out (assigned) */
__global__ void att_softcap_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                       const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                       float cap) {
    long it = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (it >= (long)B * T * NH) return;
    int h = (int)(it % NH), t = (int)((it / NH) % T), b = (int)(it / ((long)NH * T));
    int kvh = h / (NH / NKV), lo = lt_att_lo(kv_start + (size_t)b * T, t);
    const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
    float mx = -INFINITY, sum = 0.0f;
    for (int j = lo; j <= t; j++)
        mx = fmaxf(mx, sc_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, cap, 0));
    for (int j = lo; j <= t; j++)
        sum += expf(sc_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, cap, 0) - mx);
    float l = mx + logf(sum);
    lse[((size_t)b * NH + h) * T + t] = l;
    float *ot = out + (((size_t)b * T + t) * NH + h) * HD;
    for (int d = 0; d < HD; d++) ot[d] = 0.0f;
    for (int j = lo; j <= t; j++) {
        float p = expf(sc_score(qt, k + (((size_t)b * T + j) * NKV + kvh) * HD, HD, scale, cap, 0) - l);
        const float *vj = v + (((size_t)b * T + j) * NKV + kvh) * HD;
        for (int d = 0; d < HD; d++) ot[d] += p * vj[d];
    }
}

/* one thread per (b, t, h): dq (assigned) */
__global__ void att_softcap_dq_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v,
                                      const float *out, const float *lse, const int32_t *kv_start, int B, int T, int NH,
                                      int NKV, int HD, float scale, float cap) {
    long it = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (it >= (long)B * T * NH) return;
    int h = (int)(it % NH), t = (int)((it / NH) % T), b = (int)(it / ((long)NH * T));
    int kvh = h / (NH / NKV), lo = lt_att_lo(kv_start + (size_t)b * T, t);
    size_t qo = (((size_t)b * T + t) * NH + h) * HD;
    float *dqt = dq + qo;
    for (int d = 0; d < HD; d++) dqt[d] = 0.0f;
    if (lo == t) return; /* a single key: constant softmax, exactly 0 */
    float D = sc_dot(dout + qo, out + qo, HD), l = lse[((size_t)b * NH + h) * T + t];
    for (int j = lo; j <= t; j++) {
        const float *kj = k + (((size_t)b * T + j) * NKV + kvh) * HD, *vj = v + (((size_t)b * T + j) * NKV + kvh) * HD;
        float dc, p = expf(sc_score(q + qo, kj, HD, scale, cap, &dc) - l);
        float ds = p * (sc_dot(dout + qo, vj, HD) - D) * dc;
        for (int d = 0; d < HD; d++) dqt[d] += scale * ds * kj[d];
    }
}

/* one thread per (b, j, kvh): dk, dv (assigned) over the query heads of the group */
__global__ void att_softcap_dkv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k,
                                       const float *v, const float *out, const float *lse, const int32_t *kv_start,
                                       int B, int T, int NH, int NKV, int HD, float scale, float cap) {
    long it = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (it >= (long)B * T * NKV) return;
    int kvh = (int)(it % NKV), j = (int)((it / NKV) % T), b = (int)(it / ((long)NKV * T));
    const int G = NH / NKV;
    size_t ko = (((size_t)b * T + j) * NKV + kvh) * HD;
    float *dkj = dk + ko, *dvj = dv + ko;
    for (int d = 0; d < HD; d++) dkj[d] = dvj[d] = 0.0f;
    const int32_t *ks = kv_start + (size_t)b * T;
    for (int h = kvh * G; h < (kvh + 1) * G; h++)
        for (int t = j; t < T; t++) {
            int lo = lt_att_lo(ks, t);
            if (lo > j) continue;
            size_t qo = (((size_t)b * T + t) * NH + h) * HD;
            float dc, p = expf(sc_score(q + qo, k + ko, HD, scale, cap, &dc) - lse[((size_t)b * NH + h) * T + t]);
            float ds = lo == t ? 0.0f : p * (sc_dot(dout + qo, v + ko, HD) - sc_dot(dout + qo, out + qo, HD)) * dc;
            for (int d = 0; d < HD; d++) {
                dvj[d] += p * dout[qo + d];
                dkj[d] += scale * ds * q[qo + d];
            }
        }
}

/* one thread per (b, h); row b: keys kv_start[b] .. kv_len[b]-1 (clamped to the row) */
__global__ void att_softcap_decode_kernel(float *out, const float *q, const float *kc, const float *vc,
                                          const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH,
                                          int NKV, int HD, float scale, float cap) {
    long it = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (it >= (long)B * NH) return;
    int h = (int)(it % NH), b = (int)(it / NH), kvh = h / (NH / NKV);
    const int j0 = max(0, kv_start[b]), len = min(kv_len[b], S_cap);
    const float *qh = q + ((size_t)b * NH + h) * HD;
    float mx = -INFINITY, sum = 0.0f;
    for (int j = j0; j < len; j++)
        mx = fmaxf(mx, sc_score(qh, kc + (((size_t)b * S_cap + j) * NKV + kvh) * HD, HD, scale, cap, 0));
    for (int j = j0; j < len; j++)
        sum += expf(sc_score(qh, kc + (((size_t)b * S_cap + j) * NKV + kvh) * HD, HD, scale, cap, 0) - mx);
    float *oh = out + ((size_t)b * NH + h) * HD;
    for (int d = 0; d < HD; d++) oh[d] = 0.0f;
    for (int j = j0; j < len; j++) {
        float p = expf(sc_score(qh, kc + (((size_t)b * S_cap + j) * NKV + kvh) * HD, HD, scale, cap, 0) - mx) / sum;
        const float *vj = vc + (((size_t)b * S_cap + j) * NKV + kvh) * HD;
        for (int d = 0; d < HD; d++) oh[d] += p * vj[d];
    }
}

static unsigned sc_blocks(long n) { return (unsigned)((n + SC_THREADS - 1) / SC_THREADS); }

extern "C" void lt_cuda_attention_softcap_forward(lt_backend *be, float *out, float *lse, const float *q,
                                                  const float *k, const float *v, const int32_t *kv_start, int B, int T,
                                                  int NH, int NKV, int HD, float scale, float softcap) {
    lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NKV, HD, "attention_softcap_forward")) return;
    long n = (long)B * T * NH;
    att_softcap_fwd_kernel<<<sc_blocks(n), SC_THREADS, 0, lt_cuda(be)->stream>>>(out, lse, q, k, v, kv_start, B, T, NH,
                                                                                 NKV, HD, scale, softcap);
    lt_cuda_check(be, "attention_softcap_forward");
}

extern "C" void lt_cuda_attention_softcap_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                                   const float *q, const float *k, const float *v, const float *out,
                                                   const float *lse, const int32_t *kv_start, int B, int T, int NH,
                                                   int NKV, int HD, float scale, float softcap) {
    lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NKV, HD, "attention_softcap_backward")) return;
    long n = (long)B * T * NH, nk = (long)B * T * NKV;
    att_softcap_dq_kernel<<<sc_blocks(n), SC_THREADS, 0, lt_cuda(be)->stream>>>(dq, dout, q, k, v, out, lse, kv_start,
                                                                                B, T, NH, NKV, HD, scale, softcap);
    att_softcap_dkv_kernel<<<sc_blocks(nk), SC_THREADS, 0, lt_cuda(be)->stream>>>(
        dk, dv, dout, q, k, v, out, lse, kv_start, B, T, NH, NKV, HD, scale, softcap);
    lt_cuda_check(be, "attention_softcap_backward");
}

extern "C" void lt_cuda_attention_softcap_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                                 const float *vcache, const int32_t *kv_start, const int32_t *kv_len,
                                                 int B, int S_cap, int NH, int NKV, int HD, float scale,
                                                 float softcap) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, 1, NH, NKV, HD, "attention_softcap_decode")) return;
    if (!lt_cuda_decode_ranges_ok(be, kv_start, kv_len, B, S_cap, "attention_softcap_decode")) return;
    /* an empty range of a row gives out = 0 there (the kernel zeroes before accumulating) */
    const long n = (long)B * NH;
    att_softcap_decode_kernel<<<sc_blocks(n), SC_THREADS, 0, im->stream>>>(out, q, kcache, vcache, kv_start, kv_len, B,
                                                                           S_cap, NH, NKV, HD, scale, softcap);
    lt_cuda_check(be, "attention_softcap_decode");
}
