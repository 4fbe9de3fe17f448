/*
 * cpu_backend.h - what the CPU backend offers the floors above it: its constructor and the OpenBLAS core
 * hint, for the registry (core/registry.c). Everything else goes through the dispatch table
 * (backend/backend.h).
 */
#ifndef LT_CPU_BACKEND_H
#define LT_CPU_BACKEND_H

#include "backend/backend.h"

lt_status lt_cpu_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen);

/* lt_openblas_coretype_hint (include/loratune_experimental.h). */
const char *lt_cpu_openblas_coretype_hint(void);

#endif /* LT_CPU_BACKEND_H */
