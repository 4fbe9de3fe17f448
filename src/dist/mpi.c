/*
 * mpi.c - the MPI engine of lt_comm (built when MPI is found: CMake option LT_MPI).
 *
 * defines: lt_comm_create_mpi (public; LT_ERR_UNSUPPORTED in a build without MPI)
 *
 * The host's communicator is duplicated (MPI_Comm_dup), so the library's collectives never match the
 * host's, and its error handler is MPI_ERRORS_RETURN: a failure is a status, not an abort. Every
 * collective is the nonblocking one (MPI-3) polled with MPI_Test until done or the communicator's
 * timeout: a rank that died or hangs cannot block the others forever. (A rank killed under mpirun makes
 * mpirun itself end the job within seconds; the timeout covers a rank that hangs.)
 * Host memory only (the trainer stages GPU buffers). Counts above INT_MAX are cut into pieces.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"

#ifndef LT_HAVE_MPI

LT_API lt_status lt_comm_create_mpi(const void *mpi_comm, lt_comm **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (out) *out = NULL;
    return lt_fail(err, LT_ERR_UNSUPPORTED,
                   "lt_comm_create_mpi: this build of libloratune has no MPI (configure with -DLT_MPI=ON and an MPI "
                   "development package, e.g. Debian's libopenmpi-dev)");
}

#else

#include <mpi.h>

typedef struct mpi_impl {
    MPI_Comm comm;
    int finalize;          /* 1: this handle initialised MPI and finalizes it when freed */
    int *icounts, *idispl; /* (size) scratch for the v-collectives */
} mpi_impl;

#define MPI_PIECE ((size_t)1 << 30) /* values per call: below INT_MAX for any datatype */

static MPI_Datatype mpi_type(lt_comm_dtype dt) { return dt == LT_COMM_F64 ? MPI_DOUBLE : MPI_FLOAT; }
static size_t dt_size(lt_comm_dtype dt) { return dt == LT_COMM_F64 ? sizeof(double) : sizeof(float); }

static lt_status mpi_fail(lt_comm *c, int code, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error %d", code);
    return lt_fail(&c->err, LT_ERR_BACKEND, "MPI %s failed: %s", what, s);
}

typedef struct wait_arg {
    MPI_Request *req;
    const char *what;
} wait_arg;

static int test_req(lt_comm *c, void *arg) {
    wait_arg *w = arg;
    int flag = 0, rc = MPI_Test(w->req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, w->what), -1;
    return flag;
}

/* the nonblocking call just started (rc) -> its completion within the timeout */
static lt_status finish(lt_comm *c, int rc, MPI_Request *req, const char *what) {
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what);
    wait_arg w = {req, what};
    return lt_comm_poll(c, test_req, &w, what);
}

static lt_status mpi_all_reduce(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host) {
    const mpi_impl *im = c->impl;
    const size_t es = dt_size(dt);
    for (size_t off = 0; off < count; off += MPI_PIECE) {
        const size_t n = count - off < MPI_PIECE ? count - off : MPI_PIECE;
        MPI_Request req;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * es, (int)n, mpi_type(dt), MPI_SUM, im->comm, &req);
        lt_status st = finish(c, rc, &req, "all-reduce");
        if (st != LT_OK) return st;
    }
    return LT_OK;
}

static lt_status mpi_broadcast(lt_comm *c, void *buf, size_t bytes, int root, int host) {
    const mpi_impl *im = c->impl;
    for (size_t off = 0; off < bytes; off += MPI_PIECE) {
        const size_t n = bytes - off < MPI_PIECE ? bytes - off : MPI_PIECE;
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + off, (int)n, MPI_BYTE, root, im->comm, &req);
        lt_status st = finish(c, rc, &req, "broadcast");
        if (st != LT_OK) return st;
    }
    return LT_OK;
}

/* counts (and their offsets) as ints for the v-collectives; 0 when any does not fit */
static int int_layout(lt_comm *c, const size_t *counts) {
    mpi_impl *im = c->impl;
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
        if (counts[r] > INT_MAX || off > INT_MAX) return 0;
        im->icounts[r] = (int)counts[r];
        im->idispl[r] = (int)off;
        off += counts[r];
    }
    return 1;
}

static lt_status mpi_reduce_scatter(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    mpi_impl *im = c->impl;
    if (!int_layout(c, counts)) { /* a segment past INT_MAX values: the whole buffer, in pieces */
        size_t n = 0;
        for (int r = 0; r < c->size; r++) n += counts[r];
        return mpi_all_reduce(c, buf, n, dt, 1);
    }
    MPI_Request req;
    int rc = MPI_Ireduce_scatter(MPI_IN_PLACE, buf, im->icounts, mpi_type(dt), MPI_SUM, im->comm, &req);
    lt_status st = finish(c, rc, &req, "reduce-scatter");
    if (st != LT_OK) return st;
    /* in place, MPI leaves this rank's segment at the start of the buffer: move it to its offset */
    const size_t es = dt_size(dt);
    memmove((char *)buf + (size_t)im->idispl[c->rank] * es, buf, counts[c->rank] * es);
    return LT_OK;
}

static lt_status mpi_all_gather(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    mpi_impl *im = c->impl;
    if (!int_layout(c, counts)) { /* one broadcast per rank, in pieces */
        const size_t es = dt_size(dt);
        size_t off = 0;
        for (int r = 0; r < c->size; r++) {
            lt_status st = mpi_broadcast(c, (char *)buf + off * es, counts[r] * es, r, 1);
            if (st != LT_OK) return st;
            off += counts[r];
        }
        return LT_OK;
    }
    MPI_Request req;
    int rc =
        MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, im->icounts, im->idispl, mpi_type(dt), im->comm, &req);
    return finish(c, rc, &req, "all-gather");
}

static lt_status mpi_barrier(lt_comm *c) {
    const mpi_impl *im = c->impl;
    MPI_Request req;
    return finish(c, MPI_Ibarrier(im->comm, &req), &req, "barrier");
}

static void mpi_destroy(lt_comm *c) {
    mpi_impl *im = c->impl;
    if (!im) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (im->comm != MPI_COMM_NULL) MPI_Comm_free(&im->comm);
        if (im->finalize) MPI_Finalize();
    }
    free(im->icounts);
    free(im->idispl);
    free(im);
}

static const lt_comm_engine mpi_engine = {"mpi",          mpi_all_reduce, mpi_broadcast, mpi_reduce_scatter,
                                          mpi_all_gather, mpi_barrier,    mpi_destroy};

LT_API lt_status lt_comm_create_mpi(const void *mpi_comm, lt_comm **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create_mpi: out is NULL");
    *out = NULL;
    int inited = 0, finalized = 0, finalize = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized) return lt_fail(err, LT_ERR_STATE, "lt_comm_create_mpi: MPI has been finalized in this process");
    MPI_Comm base = MPI_COMM_WORLD;
    if (mpi_comm) {
        if (!inited)
            return lt_fail(err, LT_ERR_STATE,
                           "lt_comm_create_mpi: MPI is not initialised, yet a communicator was given");
        base = *(const MPI_Comm *)mpi_comm;
    } else if (!inited) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
            return lt_fail(err, LT_ERR_BACKEND, "lt_comm_create_mpi: MPI_Init_thread failed");
        /* ours to configure: a failure of MPI_COMM_WORLD returns an error instead of aborting the job */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        finalize = 1;
    }
    mpi_impl *im = calloc(1, sizeof *im);
    if (!im) {
        if (finalize) MPI_Finalize();
        return lt_fail(err, LT_ERR_NOMEM, "lt_comm_create_mpi: out of memory");
    }
    im->comm = MPI_COMM_NULL;
    im->finalize = finalize;
    int rank = 0, size = 0, rc = MPI_Comm_dup(base, &im->comm);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(im->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(im->comm, &rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(im->comm, &size);
    lt_comm *c = NULL;
    if (rc == MPI_SUCCESS) {
        im->icounts = malloc((size_t)size * sizeof *im->icounts);
        im->idispl = malloc((size_t)size * sizeof *im->idispl);
        c = im->icounts && im->idispl ? lt_comm_new(&mpi_engine, im, rank, size, 0) : NULL;
    }
    if (!c) {
        lt_comm tmp = {.impl = im};
        mpi_destroy(&tmp);
        if (rc != MPI_SUCCESS) return lt_fail(err, LT_ERR_BACKEND, "lt_comm_create_mpi: MPI_Comm_dup failed");
        return lt_fail(err, LT_ERR_NOMEM, "lt_comm_create_mpi: out of memory");
    }
    *out = c;
    return LT_OK;
}

#endif /* LT_HAVE_MPI */
