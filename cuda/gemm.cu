/*
 * gemm.cu - C (M,N) = alpha op(A) op(B) + beta C, row-major, through cuBLAS (fp32, no TF32).
 *
 * cuBLAS is column-major. A row-major (R,S) matrix with leading dimension ld is, read column-major,
 * its transpose (S,R) with the same ld. So the row-major product C = op(A) op(B) is computed as the
 * column-major product C^T = op(B)^T op(A)^T: swap the operands (B first), keep each one's
 * transpose flag, and swap M and N.
 */
#include <stdio.h>

#include "cuda/cuda_common.cuh"

/* C (M,N) row-major, ldc: C = beta C (beta == 0 writes zeros, NaN included, as BLAS does).
 * One thread per element, grid-stride. */
__global__ void gemm_scale_c_kernel(float *C, int M, int N, int ldc, float beta) {
    size_t total = (size_t)M * N;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / N, j = idx % N;
        float *c = C + i * ldc + j;
        *c = beta == 0.0f ? 0.0f : *c * beta;
    }
}

extern "C" void lt_cuda_gemm(lt_backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A,
                             int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    /* the argument checks of the CPU backend (BLAS rules for row-major storage) */
    int rowsA = transA ? M : K, rowsB = transB ? K : N; /* minimum leading dimensions */
    if (M < 0 || N < 0 || K < 0 || ldc < (N > 1 ? N : 1) ||
        (K > 0 && (lda < (rowsA > 1 ? rowsA : 1) || ldb < (rowsB > 1 ? rowsB : 1)))) {
        lt_cuda_record(be, LT_ERR_INTERNAL, "gemm: bad dimensions or leading dimensions", 0);
        return;
    }
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) {
        if (beta == 1.0f) return;
        gemm_scale_c_kernel<<<lt_grid_1d((size_t)M * N, 256), 256, 0, im->stream>>>(C, M, N, ldc, beta);
        lt_cuda_check(be, "gemm (C = beta C)");
        return;
    }
    lt_cuda_lock(be); /* a cuBLAS handle is not for concurrent use */
    cublasStatus_t st =
        im->blas.sgemm(im->cublas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                       &alpha, B, ldb, A, lda, &beta, C, ldc);
    lt_cuda_unlock(be);
    if (st != CUBLAS_STATUS_SUCCESS) {
        char msg[96];
        snprintf(msg, sizeof msg, "gemm: cublasSgemm failed (%s)", im->blas.status_string(st));
        lt_cuda_record(be, LT_ERR_BACKEND, msg, 0);
    }
    lt_cuda_check(be, "gemm");
}
