/*
 * cuda_impl.h - the CUDA backend's private state and the entry points of its kernels (C and C++).
 *
 * cuda_backend.c (C) owns creation, memory, sync and the dispatch table, cuda_errors.c the error
 * record; each cuda/<family>.cu file defines the ops of one family with exactly the signature of its
 * lt_backend_ops slot (backend.h), with C linkage, so the table can point at them directly.
 *
 * Errors: every op returns void. A launch or API failure is recorded with lt_cuda_record (the first
 * one since the calling thread's last sync wins) and that thread's sync() returns it: LT_ERR_BACKEND for
 * CUDA/cuBLAS failures (the message names the op and the CUDA error: error_message), LT_ERR_INTERNAL
 * for arguments no caller should pass (as the CPU backend does), LT_ERR_UNSUPPORTED for a shape this
 * backend has no kernel for. Errors are kept per host thread (lt_cuda_errslot): a thread's sync never
 * returns, nor clears, another thread's error. A fault inside a kernel (an illegal address) is sticky
 * in CUDA: from then on every sync of every thread reports it, and alloc records it rather than
 * passing for out of memory; only a new process recovers. With LT_CUDA_SYNC=1 every op synchronises,
 * so that an error inside a kernel is reported against the op that caused it. LT_CUDA_DEBUG=1 prints
 * every recorded error to stderr.
 *
 * Devices: the backend's device is bound to the calling thread at the entry of every op
 * (lt_cuda_enter), so that threads other than the creating one, or an application that switches its
 * current device, work on the right device.
 *
 * Streams: one non-blocking stream per backend; every copy, kernel and cuBLAS call goes on it, so
 * the ops are ordered exactly as they are called. Nothing here may be touched at library load time.
 *
 * Threads: several host threads may call the ops of one backend at once (threads sharing a model,
 * docs/API.md). Launching onto the shared stream is thread-safe; what is not (the cuBLAS handle, the
 * workspace, the reduction buffers) is used under `lock`, for the whole sequence of launches that
 * shares it.
 */
#ifndef LT_CUDA_IMPL_H
#define LT_CUDA_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/backend.h"

/* Device workspace owned by the backend (not per op): partial sums of column reductions and the
 * bounce buffer of overlapping copies. 1 Mi floats = 4 MiB. */
#define LT_CUDA_WS_FLOATS ((size_t)1 << 20)
/* Doubles for the partial sums of sumsq (one per block of its first pass) plus the result. */
#define LT_CUDA_RED_BLOCKS 1024

/* The error record of one host thread (created at its first error or sync; freed when it exits or with
 * the backend). */
typedef struct lt_cuda_errslot {
    int first_error;    /* lt_status since this thread's last sync */
    char msg[256];      /* its message */
    char reported[256]; /* the message of the error this thread's last sync returned */
    struct lt_cuda_impl *im;
    struct lt_cuda_errslot *next;
} lt_cuda_errslot;

/* cuBLAS, opened when a CUDA backend is created (cuda_backend.c: dlopen of libcublas.so.13), not linked: loading
 * libcublas and the libcublasLt it needs costs about 150 MiB of resident memory, which every process of a
 * CUDA-enabled build would pay, also one that never makes a CUDA backend (a CPU-only machine). The types are
 * cublas_v2.h's (checked against it where they are filled: C++ overloads cublasGemmEx, so no __typeof__ here). */
typedef struct lt_cublas_api {
    void *lib; /* the dlopen handle; NULL where cuBLAS is linked in (the CUDA emulation) */
    cublasStatus_t (*create)(cublasHandle_t *handle);
    cublasStatus_t (*destroy)(cublasHandle_t handle);
    cublasStatus_t (*set_stream)(cublasHandle_t handle, cudaStream_t stream);
    cublasStatus_t (*set_math_mode)(cublasHandle_t handle, cublasMath_t mode);
    cublasStatus_t (*set_pointer_mode)(cublasHandle_t handle, cublasPointerMode_t mode);
    const char *(*status_string)(cublasStatus_t status);
    cublasStatus_t (*sgemm)(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                            const float *beta, float *C, int ldc);
    cublasStatus_t (*gemm_ex)(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                              cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                              cublasComputeType_t computeType, cublasGemmAlgo_t algo);
} lt_cublas_api;

typedef struct lt_cuda_impl {
    int device;
    int sm_count;
    size_t smem_optin; /* largest dynamic shared memory a block may opt in to (bytes) */
    int use_pool;      /* 1: cudaMallocAsync/cudaFreeAsync on the stream; 0: cudaMalloc/cudaFree */
    int debug_sync;    /* LT_CUDA_SYNC=1: synchronise after every op */
    int debug_print;   /* LT_CUDA_DEBUG=1: print recorded errors to stderr */
    cudaStream_t stream;
    cudaMemPool_t pool; /* use_pool: the backend's own (release threshold: keep everything) */
    lt_cublas_api blas; /* the functions; blas.lib closed with the backend */
    cublasHandle_t cublas;
    float *ws;             /* LT_CUDA_WS_FLOATS floats */
    double *red;           /* LT_CUDA_RED_BLOCKS + 1 doubles */
    int *flag;             /* one int (all_finite) */
    pthread_mutex_t lock;  /* guards cublas, ws, red, flag (see Threads above) and `slots` */
    pthread_key_t err_key; /* this thread's lt_cuda_errslot */
    int err_key_made;
    lt_cuda_errslot *slots;   /* every thread's, to free them with the backend */
    lt_cuda_errslot fallback; /* shared by threads whose own could not be allocated */
} lt_cuda_impl;

#ifdef __cplusplus
extern "C" {
#endif

static inline lt_cuda_impl *lt_cuda(const lt_backend *be) { return (lt_cuda_impl *)be->impl; }
static inline void lt_cuda_lock(const lt_backend *be) { pthread_mutex_lock(&lt_cuda(be)->lock); }
static inline void lt_cuda_unlock(const lt_backend *be) { pthread_mutex_unlock(&lt_cuda(be)->lock); }

/* Bind this backend's device to the calling thread (a no-op when it is current); every op starts so. */
static inline lt_cuda_impl *lt_cuda_enter(lt_backend *be) {
    lt_cuda_impl *im = lt_cuda(be);
    int d = -1;
    if (cudaGetDevice(&d) != cudaSuccess || d != im->device) cudaSetDevice(im->device);
    return im;
}

/* ---- cuda_errors.c ---------------------------------------------------------------------------- */
/* Make the per-thread records (at creation); -1 on failure. */
int lt_cuda_errors_init(lt_cuda_impl *im);
/* Record st (with what and, when cuda_err != 0, the CUDA error string) unless an error of this thread
 * is pending. */
void lt_cuda_record(lt_backend *be, lt_status st, const char *what, int cuda_err);
/* Call after queueing work: records a launch error (cudaGetLastError) and, with LT_CUDA_SYNC,
 * waits for the stream and records an execution error. */
void lt_cuda_check(lt_backend *be, const char *what);
/* sync's end: this thread's first error since its last sync (LT_OK if none), cleared; its message is
 * kept for lt_cuda_error_message. */
lt_status lt_cuda_take_error(lt_backend *be);
const char *lt_cuda_error_message(lt_backend *be);
/* Free every thread's record (at destroy). */
void lt_cuda_errors_release(lt_cuda_impl *im);

/* ---- attention.cu: raise the dynamic shared memory limits of the tiled kernels (at creation) -- */
cudaError_t lt_cuda_attention_setup(lt_backend *be);

/* ---- attention_softcap.cu ------------------------------------------------------------------------ */
void lt_cuda_attention_softcap_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                       const float *v, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                       float scale, float softcap);
void lt_cuda_attention_softcap_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v, const float *out,
                                        const float *lse, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                        int HD, float scale, float softcap);
void lt_cuda_attention_softcap_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                      const float *vcache, const int32_t *kv_start, const int32_t *kv_len, int B,
                                      int S_cap, int NH, int NKV, int HD, float scale, float softcap);

/* ---- gemm.cu ---------------------------------------------------------------------------------- */
void lt_cuda_gemm(lt_backend *be, int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);

/* ---- gemm_bf16.cu ----------------------------------------------------------------------------- */
size_t lt_cuda_bf16_weight_bytes(lt_backend *be, int out, int in);
void lt_cuda_bf16_weight_pack(lt_backend *be, void *dst, const float *W_host, int out, int in);
void lt_cuda_gemm_bf16_forward(lt_backend *be, float *y, const float *x, const void *Wp, int N, int in, int out);
void lt_cuda_gemm_bf16_backward(lt_backend *be, float *dx, const float *dy, const void *Wp, int N, int in, int out,
                                int accumulate);
void lt_cuda_embedding_forward_bf16(lt_backend *be, float *out, const int32_t *ids, const void *table, int N, int C);
void lt_cuda_gemm_q4_forward(lt_backend *be, float *y, const float *x, const lt_qdesc *q, int N, int in, int out,
                             float *tile, int tile_rows);
void lt_cuda_gemm_q4_backward(lt_backend *be, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                              int accumulate, float *tile, int tile_rows);

/* ---- elementwise.cu --------------------------------------------------------------------------- */
void lt_cuda_axpy(lt_backend *be, size_t n, float a, const float *x, float *y);
void lt_cuda_scale(lt_backend *be, size_t n, float a, float *x);
void lt_cuda_row_scale(lt_backend *be, float *x, const float *w, int n, int C);
double lt_cuda_sumsq(lt_backend *be, size_t n, const float *x);
int lt_cuda_all_finite(lt_backend *be, size_t n, const float *x);
void lt_cuda_embedding_backward(lt_backend *be, float *dtable, const int32_t *ids, const float *dout, int N, int C);
void lt_cuda_embedding_forward(lt_backend *be, float *out, const int32_t *ids, const float *table, int N, int C);
void lt_cuda_scatter_rows(lt_backend *be, float *dst, const int32_t *idx, const float *src, int n, int C);
void lt_cuda_swiglu_clamp_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n, float alpha,
                                  float limit);
void lt_cuda_swiglu_clamp_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                   const float *up, size_t n, float alpha, float limit);
void lt_cuda_swiglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n);
void lt_cuda_swiglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, size_t n);
void lt_cuda_dora_norm(lt_backend *be, float *g, float *inv_n, const float *m, const float *w, int rows, int cols);
void lt_cuda_mul_cols(lt_backend *be, float *y, const float *g, int N, int C);
void lt_cuda_col_dot(lt_backend *be, float *out, const float *a, const float *b, const float *w, int N, int C);
void lt_cuda_rope_scale(lt_backend *be, float *x, int N, int n_heads, int head_dim, int rot_dim, float a);
void lt_cuda_bias_add(lt_backend *be, float *y, const float *b, int N, int C);
void lt_cuda_bias_backward(lt_backend *be, float *db, const float *dy, int N, int C);
void lt_cuda_geglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n);
void lt_cuda_geglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, size_t n);
void lt_cuda_softcap_forward(lt_backend *be, float *x, size_t n, float cap);
void lt_cuda_softcap_backward(lt_backend *be, float *dx, const float *y, size_t n, float cap);
void lt_cuda_dropout(lt_backend *be, float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);

/* ---- norm.cu ---------------------------------------------------------------------------------- */
void lt_cuda_rmsnorm_forward(lt_backend *be, float *out, float *rstd, const float *inp, const float *weight, int N,
                             int C, float eps);
void lt_cuda_rmsnorm_backward(lt_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                              const float *weight, const float *rstd, int N, int C);

/* ---- rope.cu ---------------------------------------------------------------------------------- */
void lt_cuda_rope_forward(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                          int head_dim, int rot_dim);
void lt_cuda_rope_backward(lt_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                           int head_dim, int rot_dim);

/* ---- attention.cu ----------------------------------------------------------------------------- */
void lt_cuda_attention_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                               const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale);
size_t lt_cuda_attention_backward_scratch(lt_backend *be, int B, int T, int NH, int HD);
void lt_cuda_attention_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *out, const float *lse,
                                const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                float *scratch);
void lt_cuda_attention_decode(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                              const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV, int HD,
                              float scale);
void lt_cuda_attention_sink_forward(lt_backend *be, float *out, float *lse, const float *sinks, int B, int T, int NH,
                                    int HD);
void lt_cuda_attention_sink_backward(lt_backend *be, float *dsinks, float *dq, float *dk, const float *dout,
                                     const float *q, const float *k, const float *out, const float *lse,
                                     const float *sinks, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                     float scale);
void lt_cuda_attention_sink_decode(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                                   const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int B, int S_cap,
                                   int NH, int NKV, int HD, float scale);

/* ---- cross_entropy.cu ------------------------------------------------------------------------- */
void lt_cuda_cross_entropy(lt_backend *be, float *logits, float *losses, const int32_t *targets, int n, int V,
                           float grad_scale);

/* ---- optim.cu --------------------------------------------------------------------------------- */
void lt_cuda_dequantize_rows(lt_backend *be, float *out, const lt_qdesc *q, int64_t r0, int64_t r1);
void lt_cuda_adamw_step(lt_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float step_size,
                        float beta1, float beta2, float eps, float bc2_sqrt, float decay);
void lt_cuda_adamw8bit_step(lt_backend *be, float *param, const float *grad, void *s1, void *s2, float *absmax1,
                            float *absmax2, size_t n, const float *qmap1, const float *qmap2, float beta1, float beta2,
                            float eps_c2, float step_size, float decay);

#ifdef __cplusplus
}
#endif

#endif /* LT_CUDA_IMPL_H */
