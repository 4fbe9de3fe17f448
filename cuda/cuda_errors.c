/*
 * cuda_errors.c - the CUDA backend's error record: the first failure since the last sync wins and
 * sync() reports it (cuda_impl.h). Every kernel file and cuda_backend.c call these two; they call
 * nothing of the backend's, so the backend's files have no cycle.
 *
 * defines: lt_cuda_record, lt_cuda_check
 */
#include <stdio.h>

#include <cuda_runtime.h>

#include "cuda/cuda_impl.h"

void lt_cuda_record(lt_backend *be, lt_status st, const char *what, int cuda_err) {
    lt_cuda_impl *im = lt_cuda(be);
    int expected = LT_OK;
    if (!__atomic_compare_exchange_n(&im->first_error, &expected, (int)st, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        return; /* an earlier error is pending */
    if (cuda_err)
        snprintf(im->error_msg, sizeof im->error_msg, "cuda backend: %s: %s (%d)", what,
                 cudaGetErrorString((cudaError_t)cuda_err), cuda_err);
    else snprintf(im->error_msg, sizeof im->error_msg, "cuda backend: %s", what);
    if (im->debug_print) fprintf(stderr, "libloratune: %s\n", im->error_msg);
}

void lt_cuda_check(lt_backend *be, const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, what, (int)e);
    if (lt_cuda(be)->debug_sync) {
        e = cudaStreamSynchronize(lt_cuda(be)->stream);
        if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, what, (int)e);
    }
}
