/*
 * registry.c - the backend registry: the only place in the library that names its backends (cpu/,
 * cuda/). Everything else reaches a backend through the dispatch table of backend/backend.h.
 * defines: lt_backend_available, lt_backend_create, lt_backend_destroy, lt_openblas_coretype_hint
 */
#include <stdio.h>
#include <string.h>

#include "core/context.h"
#include "cpu/cpu_backend.h"
#ifdef LT_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

LT_API int lt_backend_available(const char *name) {
    if (!name) return 0;
    if (!strcmp(name, "cpu") || !strcmp(name, "auto")) return 1;
#ifdef LT_HAVE_CUDA
    if (!strcmp(name, "cuda")) return lt_cuda_backend_available();
#endif
    return 0;
}

lt_status lt_backend_create(const char *name, int n_threads, lt_backend **out, char *err, size_t errlen) {
    if (!name || !strcmp(name, "auto")) {
#ifdef LT_HAVE_CUDA
        if (lt_cuda_backend_available() && lt_cuda_backend_create(n_threads, out, err, errlen) == LT_OK) return LT_OK;
#endif
        return lt_cpu_backend_create(n_threads, out, err, errlen);
    }
    if (!strcmp(name, "cpu")) return lt_cpu_backend_create(n_threads, out, err, errlen);
    if (!strcmp(name, "cuda")) {
#ifdef LT_HAVE_CUDA
        return lt_cuda_backend_create(n_threads, out, err, errlen);
#else
        snprintf(err, errlen,
                 "backend \"cuda\" is not compiled into this build of libloratune "
                 "(configure with -DLT_CUDA=ON and the CUDA toolkit)");
        return LT_ERR_BACKEND;
#endif
    }
    snprintf(err, errlen, "unknown backend \"%s\" (known: cpu, cuda, auto)", name);
    return LT_ERR_BACKEND;
}

LT_API const char *lt_openblas_coretype_hint(void) { return lt_cpu_openblas_coretype_hint(); }

void lt_backend_destroy(lt_backend *be) {
    if (be) be->ops->destroy(be);
}
