/*
 * optim.cu - the AdamW step (torch semantics, backend.h), elementwise in float exactly as the
 * reference writes it:
 *   p *= 1 - decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size m / (sqrt(v)/bc2_sqrt + eps)
 */
#include "cuda_common.cuh"

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
                                   float step_size, float beta1, float beta2, float eps, float bc2_sqrt,
                                   float decay) {
    if (!n) return;
    adamw_kernel<<<lt_grid_1d(n, 256), 256, 0, lt_cuda(be)->stream>>>(param, grad, m, v, n, step_size, beta1, beta2,
                                                                     eps, bc2_sqrt, decay);
    lt_cuda_check(be, "adamw_step");
}
