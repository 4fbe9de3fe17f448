/*
 * cuda_common.cuh - device helpers shared by the kernels of the CUDA backend (C++ only).
 *
 * Reductions are written so that every thread ends with bit-identical results and the summation
 * order depends only on the launch shape (never on timing): the backend is deterministic.
 */
#ifndef LT_CUDA_COMMON_CUH
#define LT_CUDA_COMMON_CUH

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/cuda_impl.h"

#define LT_FULL_MASK 0xffffffffu

/* Blocks for a grid-stride loop over n elements with `threads` per block (at least 1, capped:
 * the loop covers the rest). */
static inline unsigned lt_grid_1d(size_t n, int threads) {
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    if (b < 1) b = 1;
    if (b > 65536) b = 65536;
    return (unsigned)b;
}

/* Sum over the 32 lanes of a warp; every lane gets the same bits (xor butterfly: both partners of
 * each step add the same two numbers). */
template <typename T>
__device__ __forceinline__ T lt_warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(LT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float lt_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LT_FULL_MASK, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
 * Contains __syncthreads: call it from all threads. Safe to call repeatedly. */
template <typename T>
__device__ T lt_block_sum(T v) {
    __shared__ T part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = lt_warp_sum(v);
    __syncthreads(); /* a previous call may still be reading part[] */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    T r = lane < nwarps ? part[lane] : T(0);
    return lt_warp_sum(r);
}

/* First key a query attends to (ref_ops.h lt_att_kv_lo): kv_start clamped to [0, t]. */
__device__ __forceinline__ int lt_att_lo(const int32_t *kv_start_row, int t) {
    int lo = kv_start_row[t];
    return lo < 0 ? 0 : lo > t ? t : lo;
}

/* The shape rules of every attention op (backend.h), recorded as the CPU backend does: NH a multiple of
 * NKV is LT_ERR_INTERNAL (a caller's bug; a kernel would read outside k / v or divide by zero); an empty
 * problem is a no-op (false, nothing recorded); B or NH beyond a grid dimension is LT_ERR_UNSUPPORTED. */
static inline bool lt_cuda_att_args_ok(lt_backend *be, int B, int T, int NH, int NKV, int HD, const char *what) {
    if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return false;
    if (NKV <= 0 || NH % NKV != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s: NH %d is not a multiple of NKV %d", what, NH, NKV);
        lt_cuda_record(be, LT_ERR_INTERNAL, msg, 0);
        return false;
    }
    if (B > 65535 || NH > 65535) {
        lt_cuda_record(be, LT_ERR_UNSUPPORTED, "attention: B or NH above 65535", 0);
        return false;
    }
    return true;
}

/* The key ranges of a decode (backend.h: 0 <= kv_start[b], kv_len[b] <= S_cap), checked as the CPU
 * backend does: a range outside the cache row is LT_ERR_INTERNAL and nothing is launched. kv_start and
 * kv_len are device memory, so this copies their 2 B ints to the host and waits for the stream (one
 * small synchronous copy per decode call; the kernels also clamp, so a range is never read outside
 * the row either way). An empty range (kv_len <= kv_start) is valid: the kernels write out = 0. */
static inline bool lt_cuda_decode_ranges_ok(lt_backend *be, const int32_t *kv_start, const int32_t *kv_len, int B,
                                            int S_cap, const char *what) {
    lt_cuda_impl *im = lt_cuda(be);
    int32_t *h = (int32_t *)calloc((size_t)B * 2, sizeof(int32_t));
    if (!h) {
        lt_cuda_record(be, LT_ERR_NOMEM, what, 0);
        return false;
    }
    cudaError_t e = cudaMemcpyAsync(h, kv_start, (size_t)B * sizeof(int32_t), cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(h + B, kv_len, (size_t)B * sizeof(int32_t), cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess) {
        free(h);
        lt_cuda_record(be, LT_ERR_BACKEND, what, (int)e);
        return false;
    }
    for (int b = 0; b < B; b++) {
        if (h[b] < 0 || h[B + b] > S_cap) {
            char msg[128];
            snprintf(msg, sizeof msg, "%s: row %d keys %d .. %d outside the cache (S_cap %d)", what, b, (int)h[b],
                     (int)h[B + b] - 1, S_cap);
            free(h);
            lt_cuda_record(be, LT_ERR_INTERNAL, msg, 0);
            return false;
        }
    }
    free(h);
    return true;
}

#endif /* LT_CUDA_COMMON_CUH */
