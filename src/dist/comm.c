/*
 * comm.c - the communicator handle, the callbacks engine, and the collectives every engine shares.
 *
 * defines: lt_comm_* (public, except the MPI and NCCL constructors: dist/mpi.c, dist/nccl.c),
 *          lt_comm_new, lt_comm_poll, lt_comm_sum, lt_comm_bcast, lt_comm_reduce_scatter,
 *          lt_comm_all_gather, lt_comm_barrier
 *
 * What an engine may leave out is done here with all_reduce, exactly:
 *   reduce_scatter = all_reduce of the whole buffer (the own segment is the sum; the rest is not used);
 *   all_gather     = zero every segment but the own one, then all_reduce (x + 0 + ... + 0 = x bit for bit);
 *   barrier        = all_reduce of one value.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/comm.h"

static size_t dt_size(lt_comm_dtype dt) { return dt == LT_COMM_F64 ? sizeof(double) : sizeof(float); }

lt_comm *lt_comm_new(const lt_comm_engine *eng, void *impl, int rank, int size, int device) {
    lt_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->eng = eng;
    c->impl = impl;
    c->rank = rank;
    c->size = size;
    c->device = device;
    c->timeout_s = 600.0; /* torch.distributed's default */
    return c;
}

LT_API void lt_comm_free(lt_comm *c) {
    if (!c) return;
    if (c->eng && c->eng->destroy) c->eng->destroy(c);
    free(c);
}

LT_API const char *lt_comm_last_error(const lt_comm *c) { return c ? c->err.msg : "lt_comm_last_error: comm is NULL"; }

LT_API int lt_comm_available(const char *engine) {
    if (!engine) return 0;
    if (!strcmp(engine, "callbacks")) return 1;
#ifdef LT_HAVE_MPI
    if (!strcmp(engine, "mpi")) return 1;
#endif
#ifdef LT_HAVE_NCCL
    if (!strcmp(engine, "nccl")) return 1;
#endif
    return 0;
}

LT_API int lt_comm_rank(const lt_comm *c) { return c ? c->rank : -1; }
LT_API int lt_comm_world_size(const lt_comm *c) { return c ? c->size : 0; }

LT_API lt_status lt_comm_set_timeout(lt_comm *c, double seconds) {
    if (!c) return LT_ERR_ARGUMENT;
    lt_error_clear(&c->err);
    if (!(seconds > 0) || seconds > 1e9)
        return lt_fail(&c->err, LT_ERR_ARGUMENT, "lt_comm_set_timeout: %g s is not a positive time", seconds);
    c->timeout_s = seconds;
    return LT_OK;
}

LT_API lt_status lt_comm_all_reduce(lt_comm *c, double *values, size_t n) {
    if (!c) return LT_ERR_ARGUMENT;
    lt_error_clear(&c->err);
    if (!values && n) return lt_fail(&c->err, LT_ERR_ARGUMENT, "lt_comm_all_reduce: values is NULL");
    lt_error e = {0};
    lt_status st = lt_comm_sum(c, values, n, LT_COMM_F64, 1, &e);
    if (st != LT_OK) lt_fail(&c->err, st, "%s", e.msg);
    return st;
}

/* ---- the collectives ----------------------------------------------------------------------------- */

static lt_status refuse_broken(lt_comm *c, lt_error *err) {
    return lt_fail(err, LT_ERR_STATE, "rank %d: the communicator failed earlier and cannot be used: %s", c->rank,
                   c->err.msg);
}

/* after an engine call: a failure breaks the communicator and is reported on err */
static lt_status done(lt_comm *c, lt_status st, lt_error *err) {
    if (st == LT_OK) return LT_OK;
    c->broken = 1;
    return lt_fail(err, st, "rank %d of %d: %s", c->rank, c->size, c->err.msg);
}

lt_status lt_comm_sum(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host, lt_error *err) {
    if (c->broken) return refuse_broken(c, err);
    if (c->size == 1 || count == 0) return LT_OK;
    return done(c, c->eng->all_reduce(c, buf, count, dt, host), err);
}

lt_status lt_comm_bcast(lt_comm *c, void *buf, size_t bytes, int root, int host, lt_error *err) {
    if (c->broken) return refuse_broken(c, err);
    if (c->size == 1 || bytes == 0) return LT_OK;
    return done(c, c->eng->broadcast(c, buf, bytes, root, host), err);
}

lt_status lt_comm_reduce_scatter(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt, lt_error *err) {
    if (c->broken) return refuse_broken(c, err);
    if (c->size == 1) return LT_OK;
    if (c->eng->reduce_scatter) return done(c, c->eng->reduce_scatter(c, buf, counts, dt), err);
    size_t n = 0;
    for (int r = 0; r < c->size; r++) n += counts[r];
    return done(c, c->eng->all_reduce(c, buf, n, dt, 1), err);
}

lt_status lt_comm_all_gather(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt, lt_error *err) {
    if (c->broken) return refuse_broken(c, err);
    if (c->size == 1) return LT_OK;
    if (c->eng->all_gather) return done(c, c->eng->all_gather(c, buf, counts, dt), err);
    const size_t es = dt_size(dt);
    size_t off = 0, n = 0;
    for (int r = 0; r < c->size; r++) {
        if (r != c->rank) memset((char *)buf + off * es, 0, counts[r] * es);
        off += counts[r];
        n += counts[r];
    }
    return done(c, c->eng->all_reduce(c, buf, n, dt, 1), err);
}

lt_status lt_comm_barrier(lt_comm *c, lt_error *err) {
    if (c->broken) return refuse_broken(c, err);
    if (c->size == 1) return LT_OK;
    if (c->eng->barrier) return done(c, c->eng->barrier(c), err);
    double one = 1.0;
    return done(c, c->eng->all_reduce(c, &one, 1, LT_COMM_F64, 1), err);
}

lt_status lt_comm_poll(lt_comm *c, int (*ready)(lt_comm *c, void *arg), void *arg, const char *what) {
    const double t0 = lt_now_seconds();
    long sleep_ns = 0;
    for (;;) {
        const int r = ready(c, arg);
        if (r > 0) return LT_OK;
        if (r < 0) return c->err.status != LT_OK ? c->err.status : LT_ERR_BACKEND;
        const double waited = lt_now_seconds() - t0;
        if (waited > c->timeout_s)
            return lt_fail(&c->err, LT_ERR_BACKEND,
                           "%s did not complete within %g s (lt_comm_set_timeout): another rank died, hangs, or "
                           "called a different sequence of collectives",
                           what, c->timeout_s);
        /* collectives that finish fast are polled at once; a long wait (another rank still computing)
         * sleeps up to 1 ms between polls instead of burning a core */
        if (waited > 0.01) {
            sleep_ns = sleep_ns ? (sleep_ns * 2 > 1000000 ? 1000000 : sleep_ns * 2) : 10000;
            struct timespec ts = {0, sleep_ns};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
        }
    }
}

/* ---- the callbacks engine ------------------------------------------------------------------------ */

typedef struct cb_impl {
    lt_comm_callbacks cb;
} cb_impl;

static lt_status cb_result(lt_comm *c, int rc, const char *what) {
    if (rc == 0) return LT_OK;
    return lt_fail(&c->err, LT_ERR_BACKEND, "the host's %s callback failed (returned %d)", what, rc);
}

static lt_status cb_all_reduce(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host) {
    const cb_impl *im = c->impl;
    return cb_result(c, im->cb.all_reduce(im->cb.user, buf, count, dt), "all_reduce");
}

static lt_status cb_broadcast(lt_comm *c, void *buf, size_t bytes, int root, int host) {
    const cb_impl *im = c->impl;
    return cb_result(c, im->cb.broadcast(im->cb.user, buf, bytes, root), "broadcast");
}

static lt_status cb_reduce_scatter(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    const cb_impl *im = c->impl;
    return cb_result(c, im->cb.reduce_scatter(im->cb.user, buf, counts, dt), "reduce_scatter");
}

static lt_status cb_all_gather(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    const cb_impl *im = c->impl;
    return cb_result(c, im->cb.all_gather(im->cb.user, buf, counts, dt), "all_gather");
}

static lt_status cb_barrier(lt_comm *c) {
    const cb_impl *im = c->impl;
    return cb_result(c, im->cb.barrier(im->cb.user), "barrier");
}

static void cb_destroy(lt_comm *c) { free(c->impl); }

/* one table per combination of optional callbacks: the NULL ones fall back to all_reduce (above) */
static const lt_comm_engine cb_engines[8] = {
#define CB_ENGINE(rs, ag, ba)                                                                               \
    {                                                                                                       \
        "callbacks", cb_all_reduce, cb_broadcast, rs ? cb_reduce_scatter : NULL, ag ? cb_all_gather : NULL, \
            ba ? cb_barrier : NULL, cb_destroy                                                              \
    }
    CB_ENGINE(0, 0, 0), CB_ENGINE(1, 0, 0), CB_ENGINE(0, 1, 0), CB_ENGINE(1, 1, 0),
    CB_ENGINE(0, 0, 1), CB_ENGINE(1, 0, 1), CB_ENGINE(0, 1, 1), CB_ENGINE(1, 1, 1),
#undef CB_ENGINE
};

LT_API void lt_comm_callbacks_init(lt_comm_callbacks *out, size_t size) {
    lt_comm_callbacks d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.world_size = 1;
    lt_fill_struct(out, size, &d, sizeof d);
}

LT_API lt_status lt_comm_create(const lt_comm_callbacks *cb, lt_comm **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create: out is NULL");
    *out = NULL;
    if (!cb) return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create: callbacks is NULL");
    cb_impl *im = calloc(1, sizeof *im);
    if (!im) return lt_fail(err, LT_ERR_NOMEM, "lt_comm_create: out of memory");
    lt_comm_callbacks_init(&im->cb, sizeof im->cb);
    if (cb->size < offsetof(lt_comm_callbacks, barrier) + sizeof cb->barrier || cb->size > sizeof im->cb) {
        free(im);
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_comm_create: callbacks->size %zu is not a size this library knows (call "
                       "lt_comm_callbacks_init)",
                       cb->size);
    }
    memcpy(&im->cb, cb, cb->size);
    if (cb->world_size < 1 || cb->rank < 0 || cb->rank >= cb->world_size) {
        free(im);
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create: rank %d is not in [0, world_size %d)", cb->rank,
                       cb->world_size);
    }
    if (!cb->all_reduce || !cb->broadcast) {
        free(im);
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create: the all_reduce and broadcast callbacks are required");
    }
    const int k = (cb->reduce_scatter ? 1 : 0) | (cb->all_gather ? 2 : 0) | (cb->barrier ? 4 : 0);
    lt_comm *c = lt_comm_new(&cb_engines[k], im, cb->rank, cb->world_size, 0);
    if (!c) {
        free(im);
        return lt_fail(err, LT_ERR_NOMEM, "lt_comm_create: out of memory");
    }
    *out = c;
    return LT_OK;
}
