/*
 * cuda_backend.h - what the CUDA backend offers the floors above it: its constructor and a device
 * probe, for the registry (core/registry.c). Everything else goes through the dispatch table.
 */
#ifndef LT_CUDA_BACKEND_H
#define LT_CUDA_BACKEND_H

#include "backend/backend.h"

lt_status lt_cuda_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen);
int lt_cuda_backend_available(void);

#endif /* LT_CUDA_BACKEND_H */
