/*
 * comm.h - a communicator of data-parallel ranks (internal view of the public lt_comm): one handle over
 * one of three engines, the collectives the trainer uses, and their failure rules.
 *
 * Engines (each file defines its public constructor, so nothing here names them):
 *   dist/comm.c   the host's callbacks (lt_comm_create), host memory
 *   dist/mpi.c    MPI (lt_comm_create_mpi), host memory, nonblocking collectives polled with a deadline
 *   dist/nccl.c   NCCL (lt_comm_create_nccl), GPU memory (host buffers are staged through a device scratch)
 *
 * Every collective is SUM over ranks (or a copy). A collective that fails or times out leaves the
 * communicator broken: every later call fails at once with the first failure's message, because the
 * ranks no longer agree on where they are in the sequence of collectives.
 */
#ifndef LT_DIST_COMM_H
#define LT_DIST_COMM_H

#include "core/core.h"

typedef struct lt_comm_engine lt_comm_engine;

struct lt_comm {
    lt_error err;
    int rank, size;
    int device;       /* 1: tensor buffers are backend (GPU) memory (NCCL); 0: host memory */
    double timeout_s; /* MPI and NCCL: the deadline of one collective */
    int broken;       /* a collective failed: the ranks are out of step */
    const lt_comm_engine *eng;
    void *impl;
};

/* What an engine implements. `host` says whether buf is host memory (always, except tensor buffers of a
 * device engine). counts: world_size segment lengths in values, laid out one after the other in buf.
 * NULL reduce_scatter / all_gather / barrier: comm.c does them with all_reduce (host memory only). */
struct lt_comm_engine {
    const char *name;
    lt_status (*all_reduce)(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host);
    lt_status (*broadcast)(lt_comm *c, void *buf, size_t bytes, int root, int host);
    lt_status (*reduce_scatter)(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt);
    lt_status (*all_gather)(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt);
    lt_status (*barrier)(lt_comm *c);
    void (*destroy)(lt_comm *c);
};

/* A new handle for an engine (the constructors of the engines); NULL when out of memory. */
lt_comm *lt_comm_new(const lt_comm_engine *eng, void *impl, int rank, int size, int device);

/* Wait until done(arg) returns 1 (0: not yet, < 0: failed, with c->err set) or the timeout passes:
 * spins briefly, then sleeps up to 1 ms between polls. `what` names the operation in the message. */
lt_status lt_comm_poll(lt_comm *c, int (*done)(lt_comm *c, void *arg), void *arg, const char *what);

/* The collectives (sum over ranks, in place). On failure the communicator is broken and err gets
 * "rank R: <engine's message>". host: buf is host memory (see the engine). */
lt_status lt_comm_sum(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host, lt_error *err);
lt_status lt_comm_bcast(lt_comm *c, void *buf, size_t bytes, int root, int host, lt_error *err);
lt_status lt_comm_reduce_scatter(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt, lt_error *err);
lt_status lt_comm_all_gather(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt, lt_error *err);
lt_status lt_comm_barrier(lt_comm *c, lt_error *err);

#endif /* LT_DIST_COMM_H */
