/*
 * gemm_bf16.cu - products with frozen weights stored in bf16 (backend.h, "frozen weights stored in
 * bf16"): cuBLAS bf16 GEMM (cublasGemmEx, bf16 inputs, fp32 output, CUBLAS_COMPUTE_32F).
 *
 * Packed layout on CUDA: plain row-major bf16 (out,in), what cuBLAS reads directly. The activation
 * operand (x or dy, f32) is rounded to bf16 (the same rounding as the CPU: round to nearest even,
 * subnormals to zero, NaN kept) into a scratch buffer of up to BF16_SCRATCH bytes taken from the
 * backend's memory pool for the call, a slice of rows at a time: 256 MiB holds 9362 rows of K = 14336
 * (down_proj), so a 64K-token call is 8 GEMMs instead of the 450 that the 4 MiB backend workspace
 * allowed (docs/CUDA.md, R5). The call holds the backend lock (the cuBLAS handle; the work is on the
 * one stream anyway). Without a pool, or when the pool is out of memory, the workspace is the scratch.
 * Row-major to cuBLAS: as in gemm.cu, C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T.
 * 4-bit weights computed in bf16 (gemm_q4_*): a tile of rows of W is dequantized into bf16 in the
 * caller's tile (the same fp32 value as dequantize_rows, rounded as the activations are) and each tile
 * is one product of the bf16 kind.
 * The embedding table of a bf16 base is that row-major bf16 (V,C): a lookup converts its rows to f32.
 */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_bf16.h>

#include "backend/bf16.h" /* lt_bf16_round, on the host and on the device */
#include "backend/codebook.h"
#include "cuda/cuda_common.cuh"

/* the most bytes of bf16 activations one call takes from the pool (see above) */
#define BF16_SCRATCH ((size_t)256 << 20)

/* dst (rows, K) contiguous = bf16 of src (rows, K) with leading dimension ld */
__global__ void bf16_round_kernel(uint16_t *dst, const float *src, size_t rows, int K, int ld) {
    const size_t n = rows * (size_t)K;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = lt_bf16_round(src[(i / K) * (size_t)ld + i % K]); /* backend/bf16.h, on the device */
}

extern "C" size_t lt_cuda_bf16_weight_bytes(lt_backend *be, int out, int in) {
    (void)be;
    return out > 0 && in > 0 ? (size_t)out * in * sizeof(uint16_t) : 0;
}

/* dst (out,in) bf16 on the device <- W (out,in) f32 on the host (rounded on the host) */
extern "C" void lt_cuda_bf16_weight_pack(lt_backend *be, void *dst, const float *W, int out, int in) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    const size_t n = (size_t)out * in;
    uint16_t *h = (uint16_t *)malloc(n * sizeof *h);
    if (!h) {
        lt_cuda_record(be, LT_ERR_NOMEM, "bf16_weight_pack: out of host memory", 0);
        return;
    }
    for (size_t i = 0; i < n; i++) h[i] = lt_bf16_round(W[i]);
    cudaError_t e = cudaMemcpyAsync(dst, h, n * sizeof *h, cudaMemcpyHostToDevice, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream); /* h is freed below */
    free(h);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "bf16_weight_pack", (int)e);
}

/* C (M, cols) ldc = beta C + bf16(A) (M, K) lda B, B given by the cuBLAS call of `bwd` (W (out,in) row-major
 * bf16); slices of rows */
static void bf16_gemm(lt_backend *be, int bwd, float *C, int ldc, const float *A, int lda, const void *Wp, int M,
                      int in, int out, int accumulate) {
    lt_cuda_impl *im = lt_cuda(be);
    const int cols = bwd ? in : out, K = bwd ? out : in;
    if (M < 0 || in < 0 || out < 0) {
        lt_cuda_record(be, LT_ERR_INTERNAL, "gemm_bf16: negative dimension", 0);
        return;
    }
    if (M == 0 || cols == 0) return;
    if (K == 0) { /* an empty contraction: C = 0, or C as it is when accumulating (and no division by K) */
        if (!accumulate) {
            cudaError_t e = cudaMemset2DAsync(C, (size_t)ldc * sizeof(float), 0, (size_t)cols * sizeof(float),
                                              (size_t)M, im->stream);
            if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "gemm_bf16", (int)e);
        }
        lt_cuda_check(be, "gemm_bf16");
        return;
    }
    const size_t cap = LT_CUDA_WS_FLOATS * sizeof(float) / sizeof(uint16_t); /* bf16 in the workspace */
    if ((size_t)K > cap) {
        lt_cuda_record(be, LT_ERR_UNSUPPORTED, "gemm_bf16: rows longer than the workspace", 0);
        return;
    }
    /* the scratch: from the pool (up to BF16_SCRATCH bytes), else the workspace under the lock */
    size_t rows_fit = cap / (size_t)K;
    uint16_t *ab = NULL;
    if (im->use_pool) {
        size_t want = (size_t)M * K * sizeof(uint16_t);
        if (want > BF16_SCRATCH) want = BF16_SCRATCH / ((size_t)K * sizeof(uint16_t)) * K * sizeof(uint16_t);
        if (want >= cap * sizeof(uint16_t) &&
            cudaMallocFromPoolAsync((void **)&ab, want, im->pool, im->stream) == cudaSuccess)
            rows_fit = want / ((size_t)K * sizeof(uint16_t));
        else ab = NULL, cudaGetLastError(); /* out of memory is not sticky; the workspace will do */
    }
    const int own = ab != NULL;
    if (!own) ab = (uint16_t *)im->ws;
    lt_cuda_lock(be);
    const int rows_per = (int)(rows_fit < (size_t)M ? rows_fit : (size_t)M);
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    for (int r0 = 0; r0 < M; r0 += rows_per) {
        const int rows = M - r0 < rows_per ? M - r0 : rows_per;
        const size_t n = (size_t)rows * K;
        bf16_round_kernel<<<lt_grid_1d(n, 256), 256, 0, im->stream>>>(ab, A + (size_t)r0 * lda, (size_t)rows, K, lda);
        cublasStatus_t st;
        if (!bwd) /* y (rows,out) = x W^T: column-major y^T (out,rows) = W (out,in) x^T */
            st = im->blas.gemm_ex(im->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, Wp, CUDA_R_16BF, in, ab,
                                  CUDA_R_16BF, in, &beta, C + (size_t)r0 * ldc, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT);
        else /* dx (rows,in) = dy W: column-major dx^T (in,rows) = W^T (in,out) dy^T */
            st = im->blas.gemm_ex(im->cublas, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, &alpha, Wp, CUDA_R_16BF, in, ab,
                                  CUDA_R_16BF, out, &beta, C + (size_t)r0 * ldc, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
            char msg[96];
            snprintf(msg, sizeof msg, "gemm_bf16: cublasGemmEx failed (%s)", im->blas.status_string(st));
            lt_cuda_record(be, LT_ERR_BACKEND, msg, 0);
            break;
        }
    }
    lt_cuda_unlock(be);
    if (own) {
        cudaError_t e = cudaFreeAsync(ab, im->stream);
        if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "gemm_bf16: scratch free", (int)e);
    }
    lt_cuda_check(be, "gemm_bf16");
}

extern "C" void lt_cuda_gemm_bf16_forward(lt_backend *be, float *y, const float *x, const void *Wp, int N, int in,
                                          int out) {
    lt_cuda_enter(be);
    bf16_gemm(be, 0, y, out, x, in, Wp, N, in, out, 0);
}

extern "C" void lt_cuda_gemm_bf16_backward(lt_backend *be, float *dx, const float *dy, const void *Wp, int N, int in,
                                           int out, int accumulate) {
    lt_cuda_enter(be);
    bf16_gemm(be, 1, dx, in, dy, out, Wp, N, in, out, accumulate);
}

/* ---- the embedding table of a bf16 base ---------------------------------------------------------- */

/* out (N,C) = f32 of table (vocab,C) bf16 [ids (N)]; one block per row */
__global__ void embedding_bf16_kernel(float *out, const int32_t *ids, const uint16_t *table, int C) {
    const size_t n = blockIdx.x;
    const uint16_t *src = table + (size_t)ids[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = lt_bf16_to_f32(src[c]);
}

extern "C" void lt_cuda_embedding_forward_bf16(lt_backend *be, float *out, const int32_t *ids, const void *table, int N,
                                               int C) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    const int threads = C < 256 ? 32 * ((C + 31) / 32) : 256;
    embedding_bf16_kernel<<<N, threads, 0, im->stream>>>(out, ids, (const uint16_t *)table, C);
    lt_cuda_check(be, "embedding_forward_bf16");
}

/* ---- 4-bit weights computed in bf16 --------------------------------------------------------------- */

__constant__ float q4_nf4_dev[16] = LT_NF4_CODE_INIT;
__constant__ float q4_fp4_dev[16] = LT_FP4_CODE_INIT;

/* dst (n) bf16 = elements i0 .. i0+n-1 of a 4-bit weight, dequantized as dequantize_rows (no fused
 * multiply-add) and rounded */
__global__ void q4_bf16_kernel(uint16_t *dst, lt_qdesc q, int64_t i0, int64_t n) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = i0 + k, b = i / q.blocksize;
        const float am =
            q.absmax ? q.absmax[b] : __fadd_rn(__fmul_rn(q.code8[q.qabsmax[b]], q.absmax2[b / 256]), q.offset);
        const uint8_t byte = q.data[i >> 1];
        const int nib = (i & 1) ? (byte & 15) : (byte >> 4);
        dst[k] = lt_bf16_round(__fmul_rn(q.format == LT_QF_NF4 ? q4_nf4_dev[nib] : q4_fp4_dev[nib], am));
    }
}

/* rows [r0, r0+rows) of W into the tile as row-major bf16 (the bf16 product's layout); the tile holds
 * tile_rows * in floats, twice as many bf16 values */
static int q4_tile(lt_backend *be, const lt_qdesc *q, float *tile, int tile_rows, int r0, int out) {
    const int in = (int)q->cols, tr = 2 * tile_rows, rows = out - r0 < tr ? out - r0 : tr;
    const int64_t n = (int64_t)rows * in;
    q4_bf16_kernel<<<lt_grid_1d((size_t)n, 256), 256, 0, lt_cuda(be)->stream>>>((uint16_t *)tile, *q, (int64_t)r0 * in,
                                                                                n);
    lt_cuda_check(be, "gemm_q4: dequantize");
    return rows;
}

extern "C" void lt_cuda_gemm_q4_forward(lt_backend *be, float *y, const float *x, const lt_qdesc *q, int N, int in,
                                        int out, float *tile, int tile_rows) {
    lt_cuda_enter(be);
    if (!tile || tile_rows < 1 || q->rows != out || q->cols != in) {
        lt_cuda_record(be, LT_ERR_INTERNAL, "gemm_q4_forward: no tile or a weight of another shape", 0);
        return;
    }
    for (int r0 = 0; r0 < out;) { /* y[:, r0 : r0 + rows] = x W[r0 : r0 + rows]^T */
        const int rows = q4_tile(be, q, tile, tile_rows, r0, out);
        bf16_gemm(be, 0, y + r0, out, x, in, tile, N, in, rows, 0);
        r0 += rows;
    }
}

extern "C" void lt_cuda_gemm_q4_backward(lt_backend *be, float *dx, const float *dy, const lt_qdesc *q, int N, int in,
                                         int out, int accumulate, float *tile, int tile_rows) {
    lt_cuda_enter(be);
    if (!tile || tile_rows < 1 || q->rows != out || q->cols != in) {
        lt_cuda_record(be, LT_ERR_INTERNAL, "gemm_q4_backward: no tile or a weight of another shape", 0);
        return;
    }
    if (out == 0) { /* no rows of W: an empty contraction, dx = 0 unless accumulating */
        bf16_gemm(be, 1, dx, in, dy, out, tile, N, in, 0, accumulate);
        return;
    }
    for (int r0 = 0; r0 < out;) { /* dx (+)= dy[:, r0 : r0 + rows] W[r0 : r0 + rows] */
        const int rows = q4_tile(be, q, tile, tile_rows, r0, out);
        bf16_gemm(be, 1, dx, in, dy + r0, out, tile, N, in, rows, accumulate || r0 > 0);
        r0 += rows;
    }
}
