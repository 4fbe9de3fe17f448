/*
 * cuda_backend.c - the CUDA backend: device discovery, creation, memory, sync and the dispatch table.
 * The kernels live in cuda/<family>.cu (cuda_impl.h lists them).
 *
 * defines: lt_cuda_backend_available, lt_cuda_backend_create (errors: cuda_errors.c).
 *
 * The CUDA runtime is only touched inside these functions (never at load time), so a library built
 * with CUDA still loads and runs its CPU backend on a machine without a GPU or driver; asking for
 * "cuda" there is LT_ERR_BACKEND.
 *
 * Memory: device memory (host_memory = 0). alloc/free are stream-ordered (cudaMallocFromPoolAsync /
 * cudaFreeAsync on the backend's stream) from a memory pool of the backend's own where the device
 * supports pools, else cudaMalloc/cudaFree. The pool keeps what is freed (release threshold: no
 * limit) instead of handing it back to the driver at every synchronisation, so that the allocations
 * of a step cost nothing after the first; it is released with the backend. upload/copy/zero are
 * queued on the stream; download waits for it (the host reads the data right after).
 *
 * Environment (read at creation): LT_CUDA_DEVICE=<i> picks the device (default: the current one,
 * 0 unless the application chose another); LT_CUDA_SYNC=1 synchronises after every op (errors are
 * then reported against the op that caused them); LT_CUDA_DEBUG=1 prints recorded errors.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/backend.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_impl.h"

int lt_cuda_backend_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n > 0;
}

static int env_flag(const char *name) {
    const char *s = getenv(name);
    return s && *s && strcmp(s, "0") != 0;
}

/* ---- lifetime --------------------------------------------------------------------------------- */

static void cuda_release(lt_cuda_impl *im) {
    if (!im) return;
    int prev = -1;
    if (cudaGetDevice(&prev) == cudaSuccess && prev != im->device) cudaSetDevice(im->device);
    if (im->stream) cudaStreamSynchronize(im->stream);
    if (im->ws) cudaFree(im->ws);
    if (im->red) cudaFree(im->red);
    if (im->flag) cudaFree(im->flag);
    if (im->cublas) im->blas.destroy(im->cublas);
    if (im->stream) cudaStreamDestroy(im->stream);
    if (im->pool) cudaMemPoolDestroy(im->pool);
    cudaGetLastError();
    if (prev >= 0 && prev != im->device) cudaSetDevice(prev);
    lt_cuda_errors_release(im);
    if (im->blas.lib) dlclose(im->blas.lib);
    pthread_mutex_destroy(&im->lock);
    free(im);
}

static void cuda_destroy(lt_backend *be) {
    if (!be) return;
    cuda_release(lt_cuda(be));
    free(be);
}

/* The kernels pick their own parallelism; the host thread count has no meaning here. */
static void cuda_set_threads(lt_backend *be, int n_threads) { be->n_threads = n_threads > 0 ? n_threads : 1; }

/* ---- memory ----------------------------------------------------------------------------------- */

/* cudaMalloc memory is aligned to at least 256 bytes; pool allocations are checked. */
static void *cuda_alloc(lt_backend *be, size_t bytes) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (bytes > SIZE_MAX - 255) return NULL;
    size_t n = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    void *p = NULL;
    cudaError_t e = im->use_pool ? cudaMallocFromPoolAsync(&p, n, im->pool, im->stream) : cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky: clear it so the next op's check passes */
        /* anything else (a device that faulted earlier) is not out of memory: sync says what it was */
        if (e != cudaErrorMemoryAllocation) lt_cuda_record(be, LT_ERR_BACKEND, "alloc", (int)e);
        return NULL;
    }
    if ((uintptr_t)p % 64 != 0) { /* never seen; the contract promises 64 */
        if (im->use_pool) cudaFreeAsync(p, im->stream);
        else cudaFree(p);
        lt_cuda_record(be, LT_ERR_BACKEND, "alloc: the allocator returned memory aligned to less than 64 bytes", 0);
        return NULL;
    }
    return p;
}

static void cuda_free(lt_backend *be, void *ptr) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!ptr) return;
    cudaError_t e = im->use_pool ? cudaFreeAsync(ptr, im->stream) : cudaFree(ptr);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "free", (int)e);
}

/* The source may be reused as soon as this returns: a copy from pageable memory is staged before
 * cudaMemcpyAsync returns; from page-locked memory it is truly asynchronous, so then we wait. */
static void cuda_upload(lt_backend *be, void *dst, const void *src, size_t bytes) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!bytes) return;
    struct cudaPointerAttributes at;
    int pinned = 0;
    if (cudaPointerGetAttributes(&at, src) == cudaSuccess) pinned = at.type == cudaMemoryTypeHost;
    else cudaGetLastError();
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, im->stream);
    if (e == cudaSuccess && pinned) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "upload", (int)e);
    lt_cuda_check(be, "upload");
}

static void cuda_download(lt_backend *be, void *dst, const void *src, size_t bytes) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!bytes) return;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "download", (int)e);
}

/* memmove semantics: overlapping ranges go through the workspace, one chunk at a time, in the
 * direction that never reads a byte already overwritten. */
static void cuda_copy(lt_backend *be, void *dst, const void *src, size_t bytes) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!bytes || dst == src) return;
    char *d = dst;
    const char *s = src;
    cudaError_t e = cudaSuccess;
    if (d + bytes <= s || s + bytes <= d) {
        e = cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, im->stream);
    } else {
        const size_t chunk = LT_CUDA_WS_FLOATS * sizeof(float);
        size_t nchunk = (bytes + chunk - 1) / chunk;
        lt_cuda_lock(be); /* the workspace */
        for (size_t i = 0; i < nchunk && e == cudaSuccess; i++) {
            size_t c = d < s ? i : nchunk - 1 - i; /* forward when moving down, backward when up */
            size_t off = c * chunk, len = bytes - off < chunk ? bytes - off : chunk;
            e = cudaMemcpyAsync(im->ws, s + off, len, cudaMemcpyDeviceToDevice, im->stream);
            if (e == cudaSuccess) e = cudaMemcpyAsync(d + off, im->ws, len, cudaMemcpyDeviceToDevice, im->stream);
        }
        lt_cuda_unlock(be);
    }
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "copy", (int)e);
    lt_cuda_check(be, "copy");
}

static void cuda_zero(lt_backend *be, void *dst, size_t bytes) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!bytes) return;
    cudaError_t e = cudaMemsetAsync(dst, 0, bytes, im->stream);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "zero", (int)e);
    lt_cuda_check(be, "zero");
}

/* this thread's first error since its last sync; a device fault is reported to every thread, at every
 * sync, from the moment it happens */
static lt_status cuda_sync(lt_backend *be) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    cudaError_t e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "sync (an earlier op failed on the device)", (int)e);
    e = cudaGetLastError();
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, "sync", (int)e);
    return lt_cuda_take_error(be);
}

/* The groups in order: their ops queue on this thread's stream one after the other (grouping them
 * into one launch is the device's version of the CPU's one parallel region, not done yet). */
static void cuda_run_groups(lt_backend *be, int n, void (*fn)(void *ctx, int g), void *ctx) {
    (void)be;
    for (int g = 0; g < n; g++) fn(ctx, g);
}

/* ---- the table -------------------------------------------------------------------------------- */

static const lt_backend_ops cuda_ops = {
    .name = "cuda",
    .host_memory = 0,
    .destroy = cuda_destroy,
    .set_threads = cuda_set_threads,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .sync = cuda_sync,
    .error_message = lt_cuda_error_message,
    .gemm = lt_cuda_gemm,
    .bf16_weight_bytes = lt_cuda_bf16_weight_bytes,
    .bf16_weight_pack = lt_cuda_bf16_weight_pack,
    .gemm_bf16_forward = lt_cuda_gemm_bf16_forward,
    .gemm_bf16_backward = lt_cuda_gemm_bf16_backward,
    .embedding_forward_bf16 = lt_cuda_embedding_forward_bf16,
    .gemm_q4_forward = lt_cuda_gemm_q4_forward,
    .gemm_q4_backward = lt_cuda_gemm_q4_backward,
    .axpy = lt_cuda_axpy,
    .scale = lt_cuda_scale,
    .sumsq = lt_cuda_sumsq,
    .all_finite = lt_cuda_all_finite,
    .embedding_forward = lt_cuda_embedding_forward,
    .embedding_backward = lt_cuda_embedding_backward,
    .scatter_rows = lt_cuda_scatter_rows,
    .rmsnorm_forward = lt_cuda_rmsnorm_forward,
    .rmsnorm_backward = lt_cuda_rmsnorm_backward,
    .rope_forward = lt_cuda_rope_forward,
    .rope_backward = lt_cuda_rope_backward,
    .attention_forward = lt_cuda_attention_forward,
    .attention_backward_scratch = lt_cuda_attention_backward_scratch,
    .attention_backward = lt_cuda_attention_backward,
    .attention_decode = lt_cuda_attention_decode,
    .attention_sink_forward = lt_cuda_attention_sink_forward,
    .attention_sink_backward = lt_cuda_attention_sink_backward,
    .attention_sink_decode = lt_cuda_attention_sink_decode,
    .swiglu_forward = lt_cuda_swiglu_forward,
    .swiglu_backward = lt_cuda_swiglu_backward,
    .swiglu_clamp_forward = lt_cuda_swiglu_clamp_forward,
    .swiglu_clamp_backward = lt_cuda_swiglu_clamp_backward,
    .attention_softcap_forward = lt_cuda_attention_softcap_forward,
    .attention_softcap_backward = lt_cuda_attention_softcap_backward,
    .attention_softcap_decode = lt_cuda_attention_softcap_decode,
    .rope_scale = lt_cuda_rope_scale,
    .dora_norm = lt_cuda_dora_norm,
    .mul_cols = lt_cuda_mul_cols,
    .col_dot = lt_cuda_col_dot,
    .bias_add = lt_cuda_bias_add,
    .bias_backward = lt_cuda_bias_backward,
    .geglu_forward = lt_cuda_geglu_forward,
    .geglu_backward = lt_cuda_geglu_backward,
    .softcap_forward = lt_cuda_softcap_forward,
    .softcap_backward = lt_cuda_softcap_backward,
    .cross_entropy = lt_cuda_cross_entropy,
    .dropout = lt_cuda_dropout,
    .adamw_step = lt_cuda_adamw_step,
    .adamw8bit_step = lt_cuda_adamw8bit_step,
    .row_scale = lt_cuda_row_scale,
    .dequantize_rows = lt_cuda_dequantize_rows,
    .run_groups = cuda_run_groups,
};

/* *api = cuBLAS's functions (lt_cublas_api): LT_CUBLAS_SONAME (libcublas.so.<the toolkit's major version>) opened and
 * each resolved by its exported name (the cublas_v2.h spelling expanded: cublasCreate is cublasCreate_v2), or, where
 * cuBLAS is linked in (the CUDA emulation's cublas_v2.h defines LT_CUBLAS_LINKED), their addresses. 0, or -1 with msg
 * naming what is missing. A process that already holds it (a host such as PyTorch) gets that copy. */
// clang-format off
#define CUBLAS_FUNCTIONS(X)                                                                              \
    X(create, cublasCreate) X(destroy, cublasDestroy) X(set_stream, cublasSetStream)                     \
    X(set_math_mode, cublasSetMathMode) X(set_pointer_mode, cublasSetPointerMode)                        \
    X(status_string, cublasGetStatusString) X(sgemm, cublasSgemm) X(gemm_ex, cublasGemmEx)
// clang-format on
#define CUBLAS_TYPE_CHECK(m, f) /* lt_cublas_api's hand-written types are the header's */ \
    _Static_assert(__builtin_types_compatible_p(__typeof__(&f), __typeof__(((lt_cublas_api *)0)->m)), #f);
CUBLAS_FUNCTIONS(CUBLAS_TYPE_CHECK)
#undef CUBLAS_TYPE_CHECK
#define CUBLAS_NAME(f) #f
#define CUBLAS_SYMBOL(f) CUBLAS_NAME(f) /* expands cublas_v2.h's macros first */
static int cublas_open(lt_cublas_api *api, char *msg, size_t cap) {
#ifdef LT_CUBLAS_LINKED
    (void)msg;
    (void)cap;
    api->lib = NULL;
#define CUBLAS_TAKE(m, f) api->m = f;
    CUBLAS_FUNCTIONS(CUBLAS_TAKE)
#undef CUBLAS_TAKE
    return 0;
#else
    api->lib = dlopen(LT_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!api->lib) /* the toolkit the library was built with, where the loader's path does not name it */
        api->lib = dlopen(LT_CUDA_LIBDIR "/" LT_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!api->lib) {
        snprintf(msg, cap, "cannot open %s (cuBLAS): %s", LT_CUBLAS_SONAME, dlerror());
        return -1;
    }
#define CUBLAS_RESOLVE(m, f)                                                                     \
    if (!(*(void **)&api->m = dlsym(api->lib, CUBLAS_SYMBOL(f)))) {                              \
        snprintf(msg, cap, "%s has no %s (cuBLAS too old)", LT_CUBLAS_SONAME, CUBLAS_SYMBOL(f)); \
        dlclose(api->lib);                                                                       \
        api->lib = NULL;                                                                         \
        return -1;                                                                               \
    }
    CUBLAS_FUNCTIONS(CUBLAS_RESOLVE)
#undef CUBLAS_RESOLVE
    return 0;
#endif
}

int lt_cuda_cublas_probe(char *msg, size_t cap) {
    lt_cublas_api api;
    if (cublas_open(&api, msg, cap) != 0) return -1;
    if (api.lib) dlclose(api.lib);
    return 0;
}

static lt_status create_fail(lt_cuda_impl *im, lt_backend *be, char *err, size_t errlen, const char *what,
                             cudaError_t e) {
    if (err && errlen)
        snprintf(err, errlen, "backend \"cuda\": %s%s%s", what, e != cudaSuccess ? ": " : "",
                 e != cudaSuccess ? cudaGetErrorString(e) : "");
    cuda_release(im);
    free(be);
    cudaGetLastError();
    return e == cudaErrorMemoryAllocation ? LT_ERR_NOMEM : LT_ERR_BACKEND;
}

static lt_status cuda_create(int n_threads, lt_backend **out, char *err, size_t errlen) {
    if (!out) {
        if (err && errlen) snprintf(err, errlen, "backend \"cuda\": NULL output pointer");
        return LT_ERR_ARGUMENT;
    }
    *out = NULL;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (err && errlen)
            snprintf(err, errlen, "backend \"cuda\": no usable CUDA device (%s)",
                     e != cudaSuccess ? cudaGetErrorString(e) : "no device found");
        cudaGetLastError();
        return LT_ERR_BACKEND;
    }
    lt_backend *be = calloc(1, sizeof *be);
    lt_cuda_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        if (err && errlen) snprintf(err, errlen, "backend \"cuda\": out of memory");
        return LT_ERR_NOMEM;
    }
    be->impl = im;
    be->ops = &cuda_ops;
    pthread_mutex_init(&im->lock, NULL);
    if (lt_cuda_errors_init(im) != 0) return create_fail(im, be, err, errlen, "pthread_key_create", cudaSuccess);
    im->debug_sync = env_flag("LT_CUDA_SYNC");
    im->debug_print = env_flag("LT_CUDA_DEBUG");

    int dev = 0;
    const char *ds = getenv("LT_CUDA_DEVICE");
    if (ds && *ds) {
        dev = atoi(ds);
        if (dev < 0 || dev >= n)
            return create_fail(im, be, err, errlen, "LT_CUDA_DEVICE is not a device index", cudaSuccess);
    } else if ((e = cudaGetDevice(&dev)) != cudaSuccess) {
        return create_fail(im, be, err, errlen, "cudaGetDevice", e);
    }
    if ((e = cudaSetDevice(dev)) != cudaSuccess) return create_fail(im, be, err, errlen, "cudaSetDevice", e);
    im->device = dev;
    int v = 0;
    if ((e = cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
        return create_fail(im, be, err, errlen, "device attributes", e);
    im->sm_count = v;
    if ((e = cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
        return create_fail(im, be, err, errlen, "device attributes", e);
    im->smem_optin = (size_t)v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess) {
        cudaGetLastError();
        v = 0;
    }
    im->use_pool = v != 0;

    if ((e = cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return create_fail(im, be, err, errlen, "cudaStreamCreate", e);
    if (im->use_pool) { /* the backend's own pool, keeping what is freed (see Memory above) */
        struct cudaMemPoolProps pp;
        memset(&pp, 0, sizeof pp);
        pp.allocType = cudaMemAllocationTypePinned;
        pp.handleTypes = cudaMemHandleTypeNone;
        pp.location.type = cudaMemLocationTypeDevice;
        pp.location.id = dev;
        unsigned long long keep = UINT64_MAX;
        if ((e = cudaMemPoolCreate(&im->pool, &pp)) != cudaSuccess) {
            im->pool = NULL;
            return create_fail(im, be, err, errlen, "cudaMemPoolCreate", e);
        }
        if ((e = cudaMemPoolSetAttribute(im->pool, cudaMemPoolAttrReleaseThreshold, &keep)) != cudaSuccess)
            return create_fail(im, be, err, errlen, "cudaMemPoolSetAttribute", e);
    }
    char msg[300];
    if (cublas_open(&im->blas, msg, sizeof msg) != 0) return create_fail(im, be, err, errlen, msg, cudaSuccess);
    cublasStatus_t cs = im->blas.create(&im->cublas);
    if (cs != CUBLAS_STATUS_SUCCESS) {
        im->cublas = NULL;
        return create_fail(im, be, err, errlen, "cublasCreate failed", cudaSuccess);
    }
    /* plain fp32 (no TF32) so that results agree with the CPU oracle */
    if (im->blas.set_stream(im->cublas, im->stream) != CUBLAS_STATUS_SUCCESS ||
        im->blas.set_math_mode(im->cublas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS ||
        im->blas.set_pointer_mode(im->cublas, CUBLAS_POINTER_MODE_HOST) != CUBLAS_STATUS_SUCCESS)
        return create_fail(im, be, err, errlen, "cuBLAS setup failed", cudaSuccess);
    if ((e = cudaMalloc((void **)&im->ws, LT_CUDA_WS_FLOATS * sizeof(float))) != cudaSuccess ||
        (e = cudaMalloc((void **)&im->red, (LT_CUDA_RED_BLOCKS + 1) * sizeof(double))) != cudaSuccess ||
        (e = cudaMalloc((void **)&im->flag, sizeof(int))) != cudaSuccess)
        return create_fail(im, be, err, errlen, "workspace", e);
    if ((e = lt_cuda_attention_setup(be)) != cudaSuccess)
        return create_fail(im, be, err, errlen, "attention kernel setup", e);
    cudaGetLastError();
    cuda_set_threads(be, n_threads);
    *out = be;
    return LT_OK;
}

/* The caller's current device is left as it was (the ops bind the backend's device themselves). */
lt_status lt_cuda_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen) {
    int caller = -1;
    if (cudaGetDevice(&caller) != cudaSuccess) caller = -1;
    cudaGetLastError();
    lt_status st = cuda_create(n_threads, out, err, errlen);
    if (caller >= 0) cudaSetDevice(caller);
    cudaGetLastError();
    return st;
}
