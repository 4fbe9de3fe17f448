/*
 * norm.cu - RMSNorm forward and backward.
 *
 *   out_c = x_c r w_c, r = (mean(x^2) + eps)^-1/2
 *   dx_c += r w_c g_c - (r^3 / C) x_c sum_i(g_i w_i x_i)        (dinp ACCUMULATES)
 *   dw_c += sum_n g_c x_c r                                      (dweight accumulates, may be NULL)
 *
 * Rows: one block per row, block reductions in float. dweight is a column reduction over all rows:
 * partial sums of fixed row chunks go to the backend workspace, then one thread per column adds
 * them in chunk order. The chunking depends only on (N, C): deterministic.
 */
#include "cuda/cuda_common.cuh"

/* Threads for a row of C channels: a multiple of 32, at most 256. */
static inline int row_threads(int C) { return C >= 256 ? 256 : 32 * ((C + 31) / 32); }

/* out (N,C), rstd (N), inp (N,C), weight (C); grid N, one block per row */
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight, int C,
                                       float eps) {
    const size_t n = blockIdx.x;
    const float *x = inp + n * C;
    float *o = out + n * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += x[c] * x[c];
    ss = lt_block_sum(ss);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = x[c] * r * weight[c];
    if (threadIdx.x == 0) rstd[n] = r;
}

/* dinp (N,C) +=, dout, inp (N,C), weight (C), rstd (N); grid N, one block per row */
__global__ void rmsnorm_backward_dinp_kernel(float *dinp, const float *dout, const float *inp, const float *weight,
                                             const float *rstd, int C) {
    const size_t n = blockIdx.x;
    const float *x = inp + n * C, *g = dout + n * C;
    float *dx = dinp + n * C;
    float dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += g[c] * weight[c] * x[c];
    dot = lt_block_sum(dot);
    const float r = rstd[n], k = r * r * r * dot / (float)C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * weight[c] * g[c] - k * x[c];
}

/* part (R,C): part[y][c] = sum over the rows n of chunk y (rows_per rows) of dout[n,c] inp[n,c] rstd[n].
 * With accumulate, part is dweight itself (R == 1) and the sum is added to it.
 * block (32, 8): 32 columns x 8 row lanes; grid (ceil(C/32), R). */
__global__ void rmsnorm_dweight_partial_kernel(float *part, int accumulate, const float *dout, const float *inp,
                                               const float *rstd, int N, int C, int rows_per) {
    __shared__ float sh[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int n0 = blockIdx.y * rows_per, n1 = min(N, n0 + rows_per);
    float s = 0.0f;
    if (c < C)
        for (int n = n0 + threadIdx.y; n < n1; n += 8) s += dout[(size_t)n * C + c] * inp[(size_t)n * C + c] * rstd[n];
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float t = 0.0f;
        for (int i = 0; i < 8; i++) t += sh[i][threadIdx.x];
        float *dst = part + (size_t)blockIdx.y * C + c;
        *dst = accumulate ? *dst + t : t;
    }
}

/* dweight (C) += sum over y of part (R,C)[y] in order; one thread per column */
__global__ void rmsnorm_dweight_final_kernel(float *dweight, const float *part, int R, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int y = 0; y < R; y++) s += part[(size_t)y * C + c];
    dweight[c] += s;
}

extern "C" void lt_cuda_rmsnorm_forward(lt_backend *be, float *out, float *rstd, const float *inp, const float *weight,
                                        int N, int C, float eps) {
    lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<N, row_threads(C), 0, lt_cuda(be)->stream>>>(out, rstd, inp, weight, C, eps);
    lt_cuda_check(be, "rmsnorm_forward");
}

extern "C" void lt_cuda_rmsnorm_backward(lt_backend *be, float *dinp, float *dweight, const float *dout,
                                         const float *inp, const float *weight, const float *rstd, int N, int C) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    rmsnorm_backward_dinp_kernel<<<N, row_threads(C), 0, im->stream>>>(dinp, dout, inp, weight, rstd, C);
    lt_cuda_check(be, "rmsnorm_backward (dinp)");
    if (!dweight) return;
    /* R chunks of rows_per rows: at least 32 rows per chunk, at most 256 chunks, R*C in the workspace */
    long R = (N + 31) / 32;
    if (R > 256) R = 256;
    if (R > (long)(LT_CUDA_WS_FLOATS / (size_t)C)) R = (long)(LT_CUDA_WS_FLOATS / (size_t)C);
    if (R < 1) R = 1;
    int rows_per = (int)((N + R - 1) / R);
    R = (N + rows_per - 1) / rows_per; /* no empty chunk */
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)R), block(32, 8);
    if (R == 1) {
        rmsnorm_dweight_partial_kernel<<<grid, block, 0, im->stream>>>(dweight, 1, dout, inp, rstd, N, C, rows_per);
    } else {
        lt_cuda_lock(be); /* the workspace, until both kernels are queued */
        rmsnorm_dweight_partial_kernel<<<grid, block, 0, im->stream>>>(im->ws, 0, dout, inp, rstd, N, C, rows_per);
        rmsnorm_dweight_final_kernel<<<(C + 255) / 256, 256, 0, im->stream>>>(dweight, im->ws, (int)R, C);
        lt_cuda_unlock(be);
    }
    lt_cuda_check(be, "rmsnorm_backward (dweight)");
}
