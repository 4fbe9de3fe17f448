/*
 * elementwise.cu - axpy, scale, sumsq, all_finite, embedding, SwiGLU forward/backward, dropout.
 *
 * One thread per element in grid-stride loops (memory-bound; vectorised loads can come later).
 * sumsq is a two-pass reduction in double whose order depends only on n: deterministic.
 */
#include "cuda_common.cuh"

#define EW_THREADS 256

/* ---- axpy, scale ------------------------------------------------------------------------------ */

/* y (n) += a * x (n) */
__global__ void axpy_kernel(size_t n, float a, const float *x, float *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}

/* x (n) *= a */
__global__ void scale_kernel(size_t n, float a, float *x) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}

extern "C" void lt_cuda_axpy(lt_backend *be, size_t n, float a, const float *x, float *y) {
    if (!n) return;
    axpy_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(n, a, x, y);
    lt_cuda_check(be, "axpy");
}

extern "C" void lt_cuda_scale(lt_backend *be, size_t n, float a, float *x) {
    if (!n) return;
    scale_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(n, a, x);
    lt_cuda_check(be, "scale");
}

/* x (n,C): row i *= w[i]; grid-stride over all n*C elements */
__global__ void row_scale_kernel(float *x, const float *w, size_t total, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= w[i / (size_t)C];
}

extern "C" void lt_cuda_row_scale(lt_backend *be, float *x, const float *w, int n, int C) {
    const size_t total = (size_t)n * C;
    if (!total) return;
    row_scale_kernel<<<lt_grid_1d(total, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(x, w, total, C);
    lt_cuda_check(be, "row_scale");
}

/* ---- sumsq, all_finite ------------------------------------------------------------------------ */

/* x (n) -> part (gridDim.x): each block's share of sum x^2, in double */
__global__ void sumsq_partial_kernel(const float *x, size_t n, double *part) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = lt_block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* part (nb) -> *result = sum of part, one block, fixed order */
__global__ void sumsq_final_kernel(const double *part, int nb, double *result) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += part[i];
    s = lt_block_sum(s);
    if (threadIdx.x == 0) *result = s;
}

/* Synchronising; NaN if the device failed (the error is recorded for sync). */
extern "C" double lt_cuda_sumsq(lt_backend *be, size_t n, const float *x) {
    lt_cuda_impl *im = lt_cuda(be);
    size_t nb = (n + (size_t)EW_THREADS * 8 - 1) / ((size_t)EW_THREADS * 8);
    if (nb < 1) nb = 1;
    if (nb > LT_CUDA_RED_BLOCKS) nb = LT_CUDA_RED_BLOCKS;
    double *result = im->red + LT_CUDA_RED_BLOCKS;
    lt_cuda_lock(be); /* the reduction buffer, until the result is read */
    sumsq_partial_kernel<<<(unsigned)nb, EW_THREADS, 0, im->stream>>>(x, n, im->red);
    sumsq_final_kernel<<<1, 1024, 0, im->stream>>>(im->red, (int)nb, result);
    double s = NAN;
    cudaError_t e = cudaGetLastError(); /* a failed launch must not return a stale result */
    if (e == cudaSuccess) e = cudaMemcpyAsync(&s, result, sizeof s, cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    lt_cuda_unlock(be);
    if (e != cudaSuccess) {
        lt_cuda_record(be, LT_ERR_BACKEND, "sumsq", (int)e);
        return NAN;
    }
    return s;
}

/* x (n): *flag = 1 if some x[i] is not finite (flag zeroed before the launch) */
__global__ void all_finite_kernel(const float *x, size_t n, int *flag) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) *flag = 1;
}

/* Synchronising; 0 if the device failed (the error is recorded for sync). */
extern "C" int lt_cuda_all_finite(lt_backend *be, size_t n, const float *x) {
    lt_cuda_impl *im = lt_cuda(be);
    if (!n) return 1;
    int bad = 1;
    lt_cuda_lock(be); /* the flag, until it is read */
    cudaError_t e = cudaMemsetAsync(im->flag, 0, sizeof(int), im->stream);
    if (e == cudaSuccess) {
        all_finite_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, im->stream>>>(x, n, im->flag);
        e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaMemcpyAsync(&bad, im->flag, sizeof bad, cudaMemcpyDeviceToHost, im->stream);
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    lt_cuda_unlock(be);
    if (e != cudaSuccess) {
        lt_cuda_record(be, LT_ERR_BACKEND, "all_finite", (int)e);
        return 0;
    }
    return bad == 0;
}

/* ---- embedding -------------------------------------------------------------------------------- */

/* out (N,C) = table (vocab,C) [ids (N)]; one block per row */
__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table, int C) {
    const size_t n = blockIdx.x;
    const float *src = table + (size_t)ids[n] * C;
    float *dst = out + n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

extern "C" void lt_cuda_embedding_forward(lt_backend *be, float *out, const int32_t *ids,
                                          const float *table, int N, int C) {
    if (N <= 0 || C <= 0) return;
    embedding_forward_kernel<<<N, C < EW_THREADS ? 32 * ((C + 31) / 32) : EW_THREADS, 0, lt_cuda(be)->stream>>>(
        out, ids, table, C);
    lt_cuda_check(be, "embedding_forward");
}

/* ---- SwiGLU ----------------------------------------------------------------------------------- */

/* out, gate, up (n): out = silu(gate) up = gate sigmoid(gate) up */
__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * up[i];
    }
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up (each element is read before it is
 * written, by the same thread).  d silu(g)/dg = sig (1 + g (1 - sig)) */
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], go = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        dgate[i] = go * u * sig * (1.0f + g * (1.0f - sig));
        dup[i] = go * g * sig;
    }
}

extern "C" void lt_cuda_swiglu_forward(lt_backend *be, float *out, const float *gate, const float *up,
                                       size_t n) {
    if (!n) return;
    swiglu_forward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, gate, up, n);
    lt_cuda_check(be, "swiglu_forward");
}

extern "C" void lt_cuda_swiglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout,
                                        const float *gate, const float *up, size_t n) {
    if (!n) return;
    swiglu_backward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(
        dgate, dup, dout, gate, up, n);
    lt_cuda_check(be, "swiglu_backward");
}

/* ---- dropout ---------------------------------------------------------------------------------- */

/* out, inp (n); out may alias inp. keep(i) = hash(seed, offset + i) >= p (bit-identical to the CPU);
 * keep_scale = 1/(1-p) computed once on the host exactly as the reference does. */
__global__ void dropout_kernel(float *out, const float *inp, size_t n, float p, float keep_scale,
                               uint64_t seed, uint64_t offset) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        bool keep = p < 1.0f && lt_hash_uniform_dev(seed, offset + i) >= p;
        out[i] = keep ? inp[i] * keep_scale : 0.0f;
    }
}

extern "C" void lt_cuda_dropout(lt_backend *be, float *out, const float *inp, size_t n, float p,
                                uint64_t seed, uint64_t offset) {
    if (!n) return;
    float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    dropout_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, inp, n, p, keep_scale,
                                                                                       seed, offset);
    lt_cuda_check(be, "dropout");
}
