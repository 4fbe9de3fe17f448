/*
 * cuda_impl.h - the CUDA backend's private state and the entry points of its kernels (C and C++).
 *
 * cuda_backend.c (C) owns creation, memory, sync and the dispatch table, cuda_errors.c the error
 * record; each cuda/<family>.cu file defines the ops of one family with exactly the signature of its
 * lt_backend_ops slot (backend.h), with C linkage, so the table can point at them directly.
 *
 * Errors: every op returns void. A launch or API failure is recorded with lt_cuda_record (the first
 * one since the last sync wins) and sync() returns it: LT_ERR_BACKEND for CUDA/cuBLAS failures,
 * LT_ERR_INTERNAL for arguments no caller should pass (as the CPU backend does), LT_ERR_UNSUPPORTED
 * for a shape this backend has no kernel for. The message is kept in error_msg (and printed to
 * stderr when LT_CUDA_DEBUG is set). With LT_CUDA_SYNC=1 every op synchronises, so that an error
 * inside a kernel is reported against the op that caused it.
 *
 * Streams: one non-blocking stream per backend; every copy, kernel and cuBLAS call goes on it, so
 * the ops are ordered exactly as they are called. Nothing here may be touched at library load time.
 *
 * Threads: several host threads may call the ops of one backend at once (threads sharing a model,
 * docs/API.md). Launching onto the shared stream is thread-safe; what is not (the cuBLAS handle, the
 * workspace, the reduction buffers) is used under `lock`, for the whole sequence of launches that
 * shares it. The first error is kept with atomic operations.
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

typedef struct lt_cuda_impl {
    int device;
    int sm_count;
    size_t smem_optin; /* largest dynamic shared memory a block may opt in to (bytes) */
    int use_pool;      /* 1: cudaMallocAsync/cudaFreeAsync on the stream; 0: cudaMalloc/cudaFree */
    int debug_sync;    /* LT_CUDA_SYNC=1: synchronise after every op */
    int debug_print;   /* LT_CUDA_DEBUG=1: print recorded errors to stderr */
    cudaStream_t stream;
    cublasHandle_t cublas;
    float *ws;            /* LT_CUDA_WS_FLOATS floats */
    double *red;          /* LT_CUDA_RED_BLOCKS + 1 doubles */
    int *flag;            /* one int (all_finite) */
    pthread_mutex_t lock; /* guards cublas, ws, red, flag (see Threads above) */
    int first_error;      /* lt_status since the last sync; __atomic builtins only */
    char error_msg[256];  /* written by the thread that recorded first_error */
} lt_cuda_impl;

#ifdef __cplusplus
extern "C" {
#endif

static inline lt_cuda_impl *lt_cuda(const lt_backend *be) { return (lt_cuda_impl *)be->impl; }
static inline void lt_cuda_lock(const lt_backend *be) { pthread_mutex_lock(&lt_cuda(be)->lock); }
static inline void lt_cuda_unlock(const lt_backend *be) { pthread_mutex_unlock(&lt_cuda(be)->lock); }

/* ---- cuda_errors.c ---- */
/* Record st (with what and, when cuda_err != 0, the CUDA error string) unless an error is pending. */
void lt_cuda_record(lt_backend *be, lt_status st, const char *what, int cuda_err);
/* Call after queueing work: records a launch error (cudaGetLastError) and, with LT_CUDA_SYNC,
 * waits for the stream and records an execution error. */
void lt_cuda_check(lt_backend *be, const char *what);

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
                              const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV,
                              int HD, float scale);

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
