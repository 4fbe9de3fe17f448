/*
 * cuda_backend.h - what the CUDA backend offers the floors above it: its constructor and a device
 * probe, for the registry (core/registry.c). Everything else goes through the dispatch table.
 */
#ifndef LT_CUDA_BACKEND_H
#define LT_CUDA_BACKEND_H

#include "backend/backend.h"

lt_status lt_cuda_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen);
int lt_cuda_backend_available(void);
/* cuBLAS opened and every function the backend calls resolved, as a backend's creation does (no device needed),
 * then closed: 0, or -1 with msg naming what is missing (the tests: the library does not link cuBLAS). */
int lt_cuda_cublas_probe(char *msg, size_t cap);

#endif /* LT_CUDA_BACKEND_H */
