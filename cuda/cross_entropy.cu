/*
 * cross_entropy.cu - softmax cross-entropy over one chunk of rows, loss and (in place) gradient.
 *
 *   lse = log sum_c exp(x_c);  loss = lse - x[target];  grad_c = grad_scale (exp(x_c - lse) - [c == target])
 * Targets outside [0, V) (-100 in particular) are ignored rows: loss 0 and, when a gradient is
 * asked for, a zero row. One block per row: an online (max, sum) pass, then the gradient pass.
 */
#include "cuda/cuda_common.cuh"

#define CE_THREADS 512

/* Merge the running softmax statistics (m, s) with (m2, s2): s = sum exp(x - m). Products are
 * rounded separately (__fmul_rn) so that both partners of a shuffle get the same bits. */
__device__ __forceinline__ void ce_merge(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return; /* both empty */
    s = __fmul_rn(s, expf(m - mn)) + __fmul_rn(s2, expf(m2 - mn));
    m = mn;
}

/* logits (n,V) in place, losses (n), targets (n); grid n, one block per row */
__global__ void cross_entropy_kernel(float *logits, float *losses, const int32_t *targets, int V, float grad_scale) {
    __shared__ float sh_m[32], sh_s[32], sh_lse;
    const size_t row = blockIdx.x;
    float *x = logits + row * V;
    const int tgt = targets[row];
    if (tgt < 0 || tgt >= V) { /* ignored row (uniform over the block) */
        if (threadIdx.x == 0) losses[row] = 0.0f;
        if (grad_scale != 0.0f)
            for (int c = threadIdx.x; c < V; c += blockDim.x) x[c] = 0.0f;
        return;
    }
    /* x[target] is read before the barriers below, so before any thread overwrites the row */
    const float xt = x[tgt];
    float m = -INFINITY, s = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        const float v = x[c];
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else if (v != -INFINITY) { /* (-inf adds 0; skipping it avoids -inf - -inf) */
            s += expf(v - m);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(LT_FULL_MASK, m, o), s2 = __shfl_xor_sync(LT_FULL_MASK, s, o);
        ce_merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        sh_m[warp] = m;
        sh_s[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) { /* one thread merges the warps in order and publishes lse */
        float M = sh_m[0], S = sh_s[0];
        for (int w = 1; w < nwarps; w++) ce_merge(M, S, sh_m[w], sh_s[w]);
        const float lse = M + logf(S);
        sh_lse = lse;
        losses[row] = lse - xt;
    }
    __syncthreads();
    if (grad_scale == 0.0f) return;
    const float lse = sh_lse;
    for (int c = threadIdx.x; c < V; c += blockDim.x) x[c] = grad_scale * (expf(x[c] - lse) - (c == tgt ? 1.0f : 0.0f));
}

extern "C" void lt_cuda_cross_entropy(lt_backend *be, float *logits, float *losses, const int32_t *targets, int n,
                                      int V, float grad_scale) {
    lt_cuda_enter(be);
    if (n <= 0 || V <= 0) return;
    const int threads = V >= CE_THREADS ? CE_THREADS : 32 * ((V + 31) / 32);
    cross_entropy_kernel<<<n, threads, 0, lt_cuda(be)->stream>>>(logits, losses, targets, V, grad_scale);
    lt_cuda_check(be, "cross_entropy");
}
