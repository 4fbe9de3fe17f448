/*
 * optim.cu - the AdamW step (torch semantics, backend.h), elementwise in float exactly as the
 * reference writes it:
 *   p *= 1 - decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size m / (sqrt(v)/bc2_sqrt + eps)
 */
#include <cfloat>

#include "cuda/cuda_common.cuh"

/* param, grad, m, v (n) */
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n, float step_size,
                             float beta1, float beta2, float eps, float bc2_sqrt, float decay) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = grad[i];
        float p = param[i] * (1.0f - decay);
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
    }
}

extern "C" void lt_cuda_adamw_step(lt_backend *be, float *param, const float *grad, float *m, float *v, size_t n,
                                   float step_size, float beta1, float beta2, float eps, float bc2_sqrt, float decay) {
    lt_cuda_enter(be);
    if (!n) return;
    adamw_kernel<<<lt_grid_1d(n, 256), 256, 0, lt_cuda(be)->stream>>>(param, grad, m, v, n, step_size, beta1, beta2,
                                                                      eps, bc2_sqrt, decay);
    lt_cuda_check(be, "adamw_step");
}

/* ---- bitsandbytes' blockwise 8-bit AdamW (backend.h adamw8bit_step) ------------------------------
 * One CUDA block of 256 threads per 256-element state block, one element per thread: dequantize,
 * update in fp32, block max |m|, |v| through shared memory, re-quantize to the nearest code. The same
 * arithmetic, in the same order, as cpu/ref_ops.c (no fused multiply-adds: __fmul_rn / __fadd_rn). */
#define LT_OPT8_BLOCK 256

__device__ static unsigned char code_nearest(const float *code, float x) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (code[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    if (lo < 255 && fabsf(x - code[lo + 1]) < fabsf(x - code[lo])) lo++;
    return (unsigned char)lo;
}

/* param, grad, c1, c2 (n); absmax1, absmax2 (ceil(n/256)); qmap1, qmap2 (256) */
__global__ void adamw8bit_kernel(float *param, const float *grad, unsigned char *c1, unsigned char *c2, float *absmax1,
                                 float *absmax2, size_t n, const float *qmap1, const float *qmap2, float beta1,
                                 float beta2, float eps_c2, float step_size, float decay) {
    __shared__ float q1[256], q2[256], red1[LT_OPT8_BLOCK], red2[LT_OPT8_BLOCK];
    const size_t b = blockIdx.x;
    const size_t i = b * LT_OPT8_BLOCK + threadIdx.x;
    q1[threadIdx.x] = qmap1[threadIdx.x];
    q2[threadIdx.x] = qmap2[threadIdx.x];
    __syncthreads();
    float mi = 0.0f, vi = 0.0f;
    const bool live = i < n;
    if (live) {
        const float g = grad[i];
        if (isfinite(g)) {
            mi = __fmul_rn(q1[c1[i]], absmax1[b]);
            mi = __fadd_rn(__fmul_rn(mi, beta1), __fmul_rn(1.0f - beta1, g));
            vi = __fmul_rn(q2[c2[i]], absmax2[b]);
            vi = __fadd_rn(__fmul_rn(vi, beta2), __fmul_rn(__fmul_rn(1.0f - beta2, g), g));
            float p = __fadd_rn(param[i], __fmul_rn(step_size, __fdiv_rn(mi, __fadd_rn(sqrtf(vi), eps_c2))));
            if (decay > 0.0f) p = __fmul_rn(p, 1.0f - decay);
            param[i] = p;
        }
    }
    red1[threadIdx.x] = live ? fabsf(mi) : -FLT_MAX;
    red2[threadIdx.x] = live ? fabsf(vi) : -FLT_MAX;
    __syncthreads();
    for (int s = LT_OPT8_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            red1[threadIdx.x] = fmaxf(red1[threadIdx.x], red1[threadIdx.x + s]);
            red2[threadIdx.x] = fmaxf(red2[threadIdx.x], red2[threadIdx.x + s]);
        }
        __syncthreads();
    }
    const float am1 = red1[0], am2 = red2[0];
    if (threadIdx.x == 0) {
        absmax1[b] = am1;
        absmax2[b] = am2;
    }
    if (!live) return;
    const float x1 = am1 > 0.0f ? __fdiv_rn(mi, am1) : 0.0f;
    const float x2 = am2 > 0.0f ? __fdiv_rn(vi, am2) : 0.0f;
    int k1 = code_nearest(q1, x1);
    if (signbit(q1[k1]) != signbit(mi)) k1 += mi > 0.0f ? 1 : -1; /* m keeps its sign */
    c1[i] = (unsigned char)k1;
    c2[i] = code_nearest(q2, x2);
}

/* bitsandbytes' 32-bit Adam for small tensors: param, grad, m, v (n) */
__global__ void adamw32bnb_kernel(float *param, const float *grad, float *m, float *v, size_t n, float beta1,
                                  float beta2, float eps_c2, float step_size, float decay) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = grad[i];
        if (!isfinite(g)) continue;
        const float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(1.0f - beta1, g));
        const float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(1.0f - beta2, __fmul_rn(g, g)));
        float p = __fadd_rn(param[i], __fmul_rn(step_size, __fdiv_rn(mi, __fadd_rn(sqrtf(vi), eps_c2))));
        if (decay > 0.0f) p = __fmul_rn(p, 1.0f - decay);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
    }
}

extern "C" void lt_cuda_adamw8bit_step(lt_backend *be, float *param, const float *grad, void *s1, void *s2,
                                       float *absmax1, float *absmax2, size_t n, const float *qmap1, const float *qmap2,
                                       float beta1, float beta2, float eps_c2, float step_size, float decay) {
    lt_cuda_enter(be);
    if (!n) return;
    cudaStream_t st = lt_cuda(be)->stream;
    if (!absmax1) {
        adamw32bnb_kernel<<<lt_grid_1d(n, 256), 256, 0, st>>>(param, grad, (float *)s1, (float *)s2, n, beta1, beta2,
                                                              eps_c2, step_size, decay);
    } else {
        const size_t nb = (n + LT_OPT8_BLOCK - 1) / LT_OPT8_BLOCK;
        adamw8bit_kernel<<<(unsigned)nb, LT_OPT8_BLOCK, 0, st>>>(param, grad, (unsigned char *)s1, (unsigned char *)s2,
                                                                 absmax1, absmax2, n, qmap1, qmap2, beta1, beta2,
                                                                 eps_c2, step_size, decay);
    }
    lt_cuda_check(be, "adamw8bit_step");
}
