/*
 * context.c - version, status strings, the context handle, logging, lt_batch_init.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"

LT_API unsigned lt_version_number(void) { return LT_VERSION_NUMBER; }
LT_API const char *lt_version_string(void) { return LT_VERSION_STRING; }

LT_API const char *lt_status_string(lt_status s) {
    switch (s) {
    case LT_OK: return "LT_OK: success";
    case LT_ERR_ARGUMENT: return "LT_ERR_ARGUMENT: bad argument";
    case LT_ERR_NOMEM: return "LT_ERR_NOMEM: out of memory";
    case LT_ERR_IO: return "LT_ERR_IO: input/output error";
    case LT_ERR_TRUNCATED: return "LT_ERR_TRUNCATED: file is truncated";
    case LT_ERR_FORMAT: return "LT_ERR_FORMAT: malformed file";
    case LT_ERR_JSON: return "LT_ERR_JSON: bad JSON";
    case LT_ERR_DTYPE: return "LT_ERR_DTYPE: unknown or unsupported dtype";
    case LT_ERR_SHAPE: return "LT_ERR_SHAPE: wrong shape";
    case LT_ERR_MISSING: return "LT_ERR_MISSING: required item is missing";
    case LT_ERR_ARCH: return "LT_ERR_ARCH: unsupported model architecture";
    case LT_ERR_BACKEND: return "LT_ERR_BACKEND: backend unavailable";
    case LT_ERR_NUMERIC: return "LT_ERR_NUMERIC: NaN or Inf";
    case LT_ERR_DATA: return "LT_ERR_DATA: bad training data";
    case LT_ERR_STATE: return "LT_ERR_STATE: call not valid in this state";
    case LT_ERR_UNSUPPORTED: return "LT_ERR_UNSUPPORTED: not supported";
    case LT_ERR_INTERNAL: return "LT_ERR_INTERNAL: internal error";
    }
    return "LT_ERR_UNKNOWN: unknown status";
}

LT_API const char *lt_last_error(void) { return lt_thread_error()->msg; }

/* ---- logging -------------------------------------------------------------------------------- */

void lt_log(const lt_context *ctx, lt_log_level level, const char *fmt, ...) {
    if (!ctx || !ctx->log_fn || level < ctx->log_level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ctx->log_fn(ctx->log_user, level, buf);
}

/* ---- context -------------------------------------------------------------------------------- */

LT_API void lt_context_params_init(lt_context_params *out, size_t size) {
    lt_context_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->backend = "auto";
    p->n_threads = 0;
    p->log_level = LT_LOG_INFO;
    lt_fill_struct(out, size, p, sizeof *p);
}

LT_API lt_status lt_context_create(const lt_context_params *params, lt_context **out) {
    lt_error *terr = lt_thread_error();
    lt_error_clear(terr);
    if (!out) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_context_create: out is NULL");
    *out = NULL;
    lt_context_params p;
    lt_context_params_init(&p, sizeof p);
    lt_status st = lt_read_struct(&p, sizeof p, params, offsetof(lt_context_params, log_level), "lt_context_create",
                                  "lt_context_params_init", terr);
    if (st) return st;
    if (p.n_threads < 0) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_context_create: n_threads %d < 0", p.n_threads);
    lt_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return lt_fail(terr, LT_ERR_NOMEM, "lt_context_create: out of memory");
    char msg[512] = "";
    st = lt_backend_create(p.backend, p.n_threads, &ctx->be, msg, sizeof msg);
    if (st != LT_OK) {
        free(ctx);
        return lt_fail(terr, st, "%s", msg);
    }
    ctx->log_fn = p.log_fn;
    ctx->log_user = p.log_user;
    ctx->log_level = p.log_level;
    *out = ctx;
    lt_log(ctx, LT_LOG_INFO, "libloratune %s: backend %s, %d threads", LT_VERSION_STRING, ctx->be->ops->name,
           ctx->be->n_threads);
    return LT_OK;
}

LT_API void lt_context_free(lt_context *ctx) {
    if (!ctx) return;
    lt_backend_destroy(ctx->be);
    free(ctx);
}

LT_API const char *lt_context_last_error(const lt_context *ctx) {
    return ctx ? ctx->err.msg : "lt_context_last_error: ctx is NULL";
}

LT_API const char *lt_context_backend(const lt_context *ctx) { return ctx ? ctx->be->ops->name : NULL; }

LT_API lt_status lt_context_set_threads(lt_context *ctx, int n) {
    if (!ctx) return LT_ERR_ARGUMENT;
    lt_error_clear(&ctx->err);
    if (n < 0) return lt_fail(&ctx->err, LT_ERR_ARGUMENT, "lt_context_set_threads: n_threads %d < 0", n);
    ctx->be->ops->set_threads(ctx->be, n);
    return LT_OK;
}

LT_API void lt_batch_init(lt_batch *out, size_t size) {
    lt_batch d, *b = &d;
    memset(b, 0, sizeof *b);
    b->size = sizeof *b;
    lt_fill_struct(out, size, b, sizeof *b);
}
