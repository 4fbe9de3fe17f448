/*
 * cuda_backend.c - entry points of the CUDA backend: device discovery and creation.
 * The CUDA runtime is probed at run time, so a library built with CUDA still loads and runs its CPU
 * backend on a machine without a GPU or driver; asking for "cuda" there is LT_ERR_BACKEND.
 */
#include <cuda_runtime.h>
#include <stdio.h>

#include "backend.h"

int lt_cuda_backend_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n > 0;
}

lt_status lt_cuda_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen) {
    (void)n_threads;
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(err, errlen, "backend \"cuda\": no usable CUDA device (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        cudaGetLastError();
        return LT_ERR_BACKEND;
    }
    snprintf(err, errlen, "backend \"cuda\": the CUDA kernels are not part of this build yet (issue: CUDA backend); "
                          "use \"cpu\"");
    return LT_ERR_BACKEND;
}
