/*
 * context.h - the context handle and the backend registry (core/context.c, core/registry.c).
 */
#ifndef LT_CONTEXT_H
#define LT_CONTEXT_H

#include "backend/backend.h"
#include "core/core.h"

struct lt_context {
    lt_error err;
    lt_backend *be;
    lt_log_fn log_fn;
    void *log_user;
    lt_log_level log_level;
};

/* Registry (core/registry.c). name: "cpu", "cuda" or "auto". Writes a message into err on failure. */
lt_status lt_backend_create(const char *name, int n_threads, lt_backend **out, char *err, size_t errlen);
void lt_backend_destroy(lt_backend *be);

#endif /* LT_CONTEXT_H */
