/*
 * nccl.c - the NCCL engine of lt_comm (built with the CUDA backend when nccl.h is found: CMake option
 * LT_NCCL). Compiled in CI; never run there (no GPU).
 *
 * defines: lt_comm_create_nccl (public; LT_ERR_UNSUPPORTED in a build without NCCL)
 *
 * The host's ncclComm_t and stream are borrowed. Tensor buffers are GPU memory, used in place; host
 * buffers (the trainer's statistics, checkpoint names) go through a small device scratch. The trainer
 * synchronises the backend before a collective, so the data is complete; each collective is queued on
 * the stream and then polled (cudaStreamQuery, ncclCommGetAsyncError) until done or the timeout, which
 * aborts the communicator (ncclCommAbort) so that no rank waits forever on a dead peer.
 * Uneven segments (ZeRO-1 shards) are one ncclReduce / ncclBroadcast per rank inside a group; even ones
 * the in-place ncclReduceScatter / ncclAllGather.
 * NCCL is opened (dlopen of libnccl.so.2) when a communicator is made, not linked: a host such as PyTorch
 * brings its own NCCL, often newer than the toolkit's we build with, and a linked one would be loaded first
 * and break the host's (importing torch after the library failed with "undefined symbol: ncclCommResume").
 * dlopen by soname returns the copy already in the process: the one that made the host's ncclComm_t.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/comm.h"

#ifndef LT_HAVE_NCCL

LT_API lt_status lt_comm_create_nccl(void *nccl_comm, void *cuda_stream, lt_comm **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (out) *out = NULL;
    return lt_fail(err, LT_ERR_UNSUPPORTED,
                   "lt_comm_create_nccl: this build of libloratune has no NCCL (it needs the CUDA backend and nccl.h: "
                   "configure with -DLT_CUDA=ON -DLT_NCCL=ON)");
}

#else

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

#define SCRATCH_BYTES ((size_t)1 << 20)

/* the NCCL functions used, resolved from the opened library with the types nccl.h declares */
// clang-format off
#define NCCL_FUNCTIONS(X)                                                                               \
    X(ncclAllGather) X(ncclAllReduce) X(ncclBroadcast) X(ncclCommAbort) X(ncclCommCount)                \
    X(ncclCommGetAsyncError) X(ncclCommUserRank) X(ncclGetErrorString) X(ncclGroupEnd) X(ncclGroupStart) \
    X(ncclReduce) X(ncclReduceScatter)
// clang-format on

typedef struct nccl_api {
    void *lib; /* dlopen handle */
#define NCCL_POINTER(f) __typeof__(f) *f;
    NCCL_FUNCTIONS(NCCL_POINTER)
#undef NCCL_POINTER
} nccl_api;

/* open libnccl.so.2 and resolve every function; msg names what is missing */
static int nccl_api_open(nccl_api *api, char *msg, size_t cap) {
    api->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!api->lib) {
        snprintf(msg, cap, "cannot open libnccl.so.2: %s", dlerror());
        return -1;
    }
#define NCCL_RESOLVE(f)                                                  \
    if (!(*(void **)&api->f = dlsym(api->lib, #f))) {                    \
        snprintf(msg, cap, "libnccl.so.2 has no %s (NCCL too old)", #f); \
        dlclose(api->lib);                                               \
        api->lib = NULL;                                                 \
        return -1;                                                       \
    }
    NCCL_FUNCTIONS(NCCL_RESOLVE)
#undef NCCL_RESOLVE
    return 0;
}

typedef struct nccl_impl {
    nccl_api nccl;
    ncclComm_t comm;
    cudaStream_t stream;
    char *scratch; /* SCRATCH_BYTES of device memory for host buffers */
    int aborted;
} nccl_impl;

static ncclDataType_t nccl_type(lt_comm_dtype dt) { return dt == LT_COMM_F64 ? ncclFloat64 : ncclFloat32; }
static size_t dt_size(lt_comm_dtype dt) { return dt == LT_COMM_F64 ? sizeof(double) : sizeof(float); }

static lt_status nccl_fail(lt_comm *c, ncclResult_t r, const char *what) {
    nccl_impl *im = c->impl;
    return lt_fail(&c->err, LT_ERR_BACKEND, "NCCL %s failed: %s", what, im->nccl.ncclGetErrorString(r));
}

static void nccl_abort(lt_comm *c) {
    nccl_impl *im = c->impl;
    if (!im->aborted) im->nccl.ncclCommAbort(im->comm);
    im->aborted = 1;
}

static int stream_done(lt_comm *c, void *arg) {
    nccl_impl *im = c->impl;
    ncclResult_t async = ncclSuccess;
    if (im->nccl.ncclCommGetAsyncError(im->comm, &async) == ncclSuccess && async != ncclSuccess &&
        async != ncclInProgress) {
        nccl_fail(c, async, (const char *)arg);
        return -1;
    }
    cudaError_t e = cudaStreamQuery(im->stream);
    if (e == cudaSuccess) return 1;
    if (e == cudaErrorNotReady) return 0;
    lt_fail(&c->err, LT_ERR_BACKEND, "NCCL %s: CUDA error %s", (const char *)arg, cudaGetErrorString(e));
    return -1;
}

/* the collective just queued (r) -> done on the stream, or the communicator aborted */
static lt_status finish(lt_comm *c, ncclResult_t r, const char *what) {
    if (r != ncclSuccess) {
        nccl_abort(c);
        return nccl_fail(c, r, what);
    }
    lt_status st = lt_comm_poll(c, stream_done, (void *)what, what);
    if (st != LT_OK) nccl_abort(c);
    return st;
}

static lt_status copy(lt_comm *c, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    nccl_impl *im = c->impl;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess)
        return lt_fail(&c->err, LT_ERR_BACKEND, "NCCL staging copy failed: %s", cudaGetErrorString(e));
    return LT_OK;
}

static lt_status nccl_all_reduce(lt_comm *c, void *buf, size_t count, lt_comm_dtype dt, int host) {
    nccl_impl *im = c->impl;
    if (!host)
        return finish(c, im->nccl.ncclAllReduce(buf, buf, count, nccl_type(dt), ncclSum, im->comm, im->stream),
                      "all-reduce");
    const size_t es = dt_size(dt), per = SCRATCH_BYTES / es;
    for (size_t off = 0; off < count; off += per) { /* host values through the scratch */
        const size_t n = count - off < per ? count - off : per;
        char *h = (char *)buf + off * es;
        lt_status st = copy(c, im->scratch, h, n * es, cudaMemcpyHostToDevice);
        if (st == LT_OK)
            st = finish(
                c, im->nccl.ncclAllReduce(im->scratch, im->scratch, n, nccl_type(dt), ncclSum, im->comm, im->stream),
                "all-reduce");
        if (st == LT_OK) st = copy(c, h, im->scratch, n * es, cudaMemcpyDeviceToHost);
        if (st != LT_OK) return st;
    }
    return LT_OK;
}

static lt_status nccl_broadcast(lt_comm *c, void *buf, size_t bytes, int root, int host) {
    nccl_impl *im = c->impl;
    if (!host)
        return finish(c, im->nccl.ncclBroadcast(buf, buf, bytes, ncclUint8, root, im->comm, im->stream), "broadcast");
    for (size_t off = 0; off < bytes; off += SCRATCH_BYTES) {
        const size_t n = bytes - off < SCRATCH_BYTES ? bytes - off : SCRATCH_BYTES;
        char *h = (char *)buf + off;
        lt_status st = c->rank == root ? copy(c, im->scratch, h, n, cudaMemcpyHostToDevice) : LT_OK;
        if (st == LT_OK)
            st = finish(c, im->nccl.ncclBroadcast(im->scratch, im->scratch, n, ncclUint8, root, im->comm, im->stream),
                        "broadcast");
        if (st == LT_OK) st = copy(c, h, im->scratch, n, cudaMemcpyDeviceToHost);
        if (st != LT_OK) return st;
    }
    return LT_OK;
}

static int even(const lt_comm *c, const size_t *counts) {
    for (int r = 1; r < c->size; r++)
        if (counts[r] != counts[0]) return 0;
    return 1;
}

static lt_status nccl_reduce_scatter(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    nccl_impl *im = c->impl;
    const size_t es = dt_size(dt);
    char *b = buf;
    if (even(c, counts)) /* in place: the result lands at buf + rank * count */
        return finish(c,
                      im->nccl.ncclReduceScatter(b, b + (size_t)c->rank * counts[0] * es, counts[0], nccl_type(dt),
                                                 ncclSum, im->comm, im->stream),
                      "reduce-scatter");
    ncclResult_t r = im->nccl.ncclGroupStart();
    size_t off = 0;
    for (int q = 0; q < c->size && r == ncclSuccess; q++) {
        r = im->nccl.ncclReduce(b + off * es, b + off * es, counts[q], nccl_type(dt), ncclSum, q, im->comm, im->stream);
        off += counts[q];
    }
    ncclResult_t r2 = im->nccl.ncclGroupEnd();
    return finish(c, r != ncclSuccess ? r : r2, "reduce-scatter (one reduce per rank)");
}

static lt_status nccl_all_gather(lt_comm *c, void *buf, const size_t *counts, lt_comm_dtype dt) {
    nccl_impl *im = c->impl;
    const size_t es = dt_size(dt);
    char *b = buf;
    if (even(c, counts)) /* in place: this rank's part is at buf + rank * count */
        return finish(c,
                      im->nccl.ncclAllGather(b + (size_t)c->rank * counts[0] * es, b, counts[0], nccl_type(dt),
                                             im->comm, im->stream),
                      "all-gather");
    ncclResult_t r = im->nccl.ncclGroupStart();
    size_t off = 0;
    for (int q = 0; q < c->size && r == ncclSuccess; q++) {
        r = im->nccl.ncclBroadcast(b + off * es, b + off * es, counts[q], nccl_type(dt), q, im->comm, im->stream);
        off += counts[q];
    }
    ncclResult_t r2 = im->nccl.ncclGroupEnd();
    return finish(c, r != ncclSuccess ? r : r2, "all-gather (one broadcast per rank)");
}

static lt_status nccl_barrier(lt_comm *c) {
    double one = 1.0;
    return nccl_all_reduce(c, &one, 1, LT_COMM_F64, 1);
}

/* frees what lt_comm_create_nccl made; the communicator and the stream are the host's */
static void nccl_impl_free(nccl_impl *im) {
    if (!im) return;
    if (im->scratch) cudaFree(im->scratch);
    if (im->nccl.lib) dlclose(im->nccl.lib);
    free(im);
}

static void nccl_destroy(lt_comm *c) { nccl_impl_free(c->impl); }

static const lt_comm_engine nccl_engine = {"nccl",          nccl_all_reduce, nccl_broadcast, nccl_reduce_scatter,
                                           nccl_all_gather, nccl_barrier,    nccl_destroy};

LT_API lt_status lt_comm_create_nccl(void *nccl_comm, void *cuda_stream, lt_comm **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create_nccl: out is NULL");
    *out = NULL;
    if (!nccl_comm) return lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create_nccl: nccl_comm is NULL");
    nccl_impl *im = calloc(1, sizeof *im);
    if (!im) return lt_fail(err, LT_ERR_NOMEM, "lt_comm_create_nccl: out of memory");
    im->comm = (ncclComm_t)nccl_comm;
    im->stream = (cudaStream_t)cuda_stream;
    char why[256];
    if (nccl_api_open(&im->nccl, why, sizeof why) != 0) {
        nccl_impl_free(im);
        return lt_fail(err, LT_ERR_UNSUPPORTED, "lt_comm_create_nccl: %s", why);
    }
    lt_status st = LT_OK;
    int rank = 0, size = 0;
    ncclResult_t r = im->nccl.ncclCommUserRank(im->comm, &rank);
    if (r == ncclSuccess) r = im->nccl.ncclCommCount(im->comm, &size);
    cudaError_t e = cudaSuccess;
    if (r != ncclSuccess)
        st = lt_fail(err, LT_ERR_ARGUMENT, "lt_comm_create_nccl: not a usable NCCL communicator: %s",
                     im->nccl.ncclGetErrorString(r));
    else if ((e = cudaMalloc((void **)&im->scratch, SCRATCH_BYTES)) != cudaSuccess)
        st = lt_fail(err, LT_ERR_BACKEND, "lt_comm_create_nccl: cannot allocate %zu bytes on the GPU: %s",
                     SCRATCH_BYTES, cudaGetErrorString(e));
    lt_comm *c = st == LT_OK ? lt_comm_new(&nccl_engine, im, rank, size, 1) : NULL;
    if (st == LT_OK && !c) st = lt_fail(err, LT_ERR_NOMEM, "lt_comm_create_nccl: out of memory");
    if (st != LT_OK) {
        nccl_impl_free(im);
        return st;
    }
    *out = c;
    return LT_OK;
}

#endif /* LT_HAVE_NCCL */
