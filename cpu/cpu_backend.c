/*
 * cpu_backend.c - the fast CPU backend: OpenBLAS sgemm, OpenMP threads, and the kernels of one
 * instruction set chosen when the backend is created (cpu_kernels.h: the table of the ISA,
 * cpu/cpu_isa.c).
 *
 * defines: lt_cpu_backend_create, lt_cpu_backend_create_isa.
 *
 * Threads: every parallel region names num_threads(be->n_threads) (or fewer for small work; one inside
 * run_groups, whose groups already occupy the threads: cpu_nt); nothing touches the global OpenMP
 * settings. OpenBLAS is asked for one thread (process-wide: OpenBLAS has no per-call setting) and
 * cpu_gemm splits each GEMM over our own threads: with one pool of workers instead of two, idle
 * spinning of one pool no longer starves the other (3.8x on bench-s).
 * Results do not depend on the thread count: reductions split work into fixed pieces summed in order.
 * Errors: the only failure an op can meet here is a bad gemm argument (which OpenBLAS would print
 * about); it is recorded and returned by sync().
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "backend/backend.h"
#include "backend/codebook.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/cpu_opt8.h"
#include "cpu/gemm_bf16.h"
#include "cpu/ref_ops.h"

void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void);

/* OpenBLAS picks its kernels once, when it loads, from its CPU detection or OPENBLAS_CORETYPE. Debian 12's
 * OpenBLAS 0.3.21 does not recognise the newest Xeons and falls back to its SSE3 kernels ("Prescott"): every
 * f32 GEMM 3x slower (docs/BENCHMARKS.md, moe-s). The library cannot change that for its host (it sets no
 * process-wide state, and the choice is made before any of its code runs); it tells the host which core to
 * ask for in a new process: the AVX-512 or AVX2 one this CPU runs (the detection of the backend's own
 * kernels), only when OpenBLAS reports a pre-AVX2 core and the host left OPENBLAS_CORETYPE unset. */
const char *lt_cpu_openblas_coretype_hint(void) {
    if (getenv("OPENBLAS_CORETYPE")) return NULL;
    static const char *const pre_avx2[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom"};
    const char *core = openblas_get_corename();
    int old = 0;
    for (size_t i = 0; core && i < sizeof pre_avx2 / sizeof *pre_avx2; i++) old |= !strcmp(core, pre_avx2[i]);
    if (!old) return NULL;
    if (lt_cpu_kernels_get(LT_CPU_ISA_AVX512, NULL, 0)) return "SkylakeX";
    if (lt_cpu_kernels_get(LT_CPU_ISA_AVX2, NULL, 0)) return "Haswell";
    return NULL;
}

/* ---- the backend ---------------------------------------------------------------------------------- */

typedef struct cpu_impl {
    const lt_cpu_kernels *k;
    _Atomic int first_error; /* lt_status since the last sync; atomic: threads sharing a model share it */
    _Atomic int reported;    /* what the last sync returned */
} cpu_impl;

static inline const lt_cpu_kernels *K(const lt_backend *be) { return ((const cpu_impl *)be->impl)->k; }

static void cpu_record_error(lt_backend *be, lt_status st) {
    cpu_impl *im = be->impl;
    int expected = LT_OK;
    atomic_compare_exchange_strong(&im->first_error, &expected, (int)st);
}

/* Online cores this process may run on. */
static int cpu_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0 && (n <= 0 || c < n)) n = c;
    }
#endif
    return n > 0 ? (int)n : 1;
}

/* The threads an op may use: all of the backend's, or only the calling one inside run_groups (or any
 * other active parallel region), whose groups already keep every thread busy. */
static inline int cpu_nt(const lt_backend *be) { return omp_in_parallel() ? 1 : be->n_threads; }

/* Threads worth using for `work` units when each thread should get at least `grain` of them. */
static int cpu_threads_for(const lt_backend *be, size_t work, size_t grain) {
    size_t t = grain ? work / grain : work;
    if (t < 1) t = 1;
    return t < (size_t)cpu_nt(be) ? (int)t : cpu_nt(be);
}

/* Slice i of nt over [0, n), boundaries on multiples of 16 elements (64 bytes). */
static inline void cpu_slice(size_t n, int i, int nt, size_t *lo, size_t *hi) {
    size_t per = (n + (size_t)nt - 1) / (size_t)nt;
    per = (per + 15) & ~(size_t)15;
    size_t a = per * (size_t)i, b = a + per;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* Run STMT over [lo, hi) slices of n elements on up to cpu_nt(be) threads. */
#define LT_GRAIN 16384
#define CPU_PAR_SLICES(be, n, STMT)                                                  \
    do {                                                                             \
        int nt_ = cpu_threads_for(be, n, LT_GRAIN);                                  \
        if (nt_ <= 1) {                                                              \
            size_t lo = 0, hi = (n);                                                 \
            STMT;                                                                    \
        } else {                                                                     \
            _Pragma("omp parallel num_threads(nt_)") {                               \
                size_t lo, hi;                                                       \
                cpu_slice(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi); \
                if (hi > lo) STMT;                                                   \
            }                                                                        \
        }                                                                            \
    } while (0)

static void cpu_destroy(lt_backend *be) {
    if (!be) return;
    free(be->impl);
    free(be);
}

static void cpu_set_threads(lt_backend *be, int n_threads) {
    be->n_threads = n_threads > 0 ? n_threads : cpu_default_threads();
    openblas_set_num_threads(1); /* cpu_gemm parallelises the GEMM itself */
}

static void *cpu_alloc(lt_backend *be, size_t bytes) {
    (void)be;
    if (bytes > SIZE_MAX - 63) return NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, n ? n : 64);
}

static void cpu_free(lt_backend *be, void *ptr) {
    (void)be;
    free(ptr);
}

static void cpu_upload(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_download(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_copy(lt_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}
static void cpu_zero(lt_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

static lt_status cpu_sync(lt_backend *be) {
    cpu_impl *im = be->impl;
    lt_status st = (lt_status)atomic_exchange(&im->first_error, LT_OK);
    atomic_store(&im->reported, (int)st);
    return st;
}

/* The CPU backend keeps statuses only: its one error is an op called with arguments it cannot take. */
static const char *cpu_error_message(lt_backend *be) {
    return atomic_load(&((cpu_impl *)be->impl)->reported) == LT_OK
               ? ""
               : "cpu backend: an op was called with arguments it cannot take (a dimension or leading dimension out "
                 "of range, NH not a multiple of NKV, len > S_cap)";
}

/* ---- gemm ----------------------------------------------------------------------------------------- */

/* C (M,N) = alpha op(A) (M,K) op(B) (K,N) + beta C; see backend.h */
static void cpu_gemm(lt_backend *be, int transA, int transB, int M, int N, int K_, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    if (M < 0 || N < 0 || K_ < 0 || ldc < (N > 1 ? N : 1) ||
        (K_ > 0 && (lda < ((transA ? M : K_) > 1 ? (transA ? M : K_) : 1) ||
                    ldb < ((transB ? K_ : N) > 1 ? (transB ? K_ : N) : 1)))) {
        cpu_record_error(be, LT_ERR_INTERNAL); /* OpenBLAS would print and return */
        return;
    }
    if (M == 0 || N == 0) return;
    if (K_ == 0 || alpha == 0.0f) { /* C = beta C (BLAS: beta == 0 clears C, NaN included) */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            if (beta == 0.0f) memset(c, 0, (size_t)N * sizeof(float));
            else if (beta != 1.0f)
                for (int j = 0; j < N; j++) c[j] *= beta;
        }
        return;
    }
    /* OpenBLAS runs single-threaded (see cpu_set_threads): the GEMM is split here into one block of C
     * per thread, along its longer side, so our OpenMP team is the only pool of worker threads. Two
     * pools (OpenBLAS pthreads + OpenMP) spin against each other on a small machine. */
    const CBLAS_TRANSPOSE ta = transA ? CblasTrans : CblasNoTrans, tb = transB ? CblasTrans : CblasNoTrans;
    int nt = cpu_nt(be);
    const double work = (double)M * N * K_;
    if (nt > 1 && work < 2.0e6) nt = 1;
    if (nt <= 1) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K_, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const int split_rows = M >= N;
    const int len = split_rows ? M : N;
    if (nt > (len + 15) / 16) nt = (len + 15) / 16;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        /* blocks of whole 16s, so every block but the last starts aligned */
        const int units = (len + 15) / 16, u0 = (int)((long)units * t / n), u1 = (int)((long)units * (t + 1) / n);
        const int lo = u0 * 16, hi = u1 * 16 < len ? u1 * 16 : len;
        if (hi > lo) {
            if (split_rows) /* rows lo..hi of C and of op(A) */
                cblas_sgemm(CblasRowMajor, ta, tb, hi - lo, N, K_, alpha, transA ? A + lo : A + (size_t)lo * lda, lda,
                            B, ldb, beta, C + (size_t)lo * ldc, ldc);
            else /* columns lo..hi of C and of op(B) */
                cblas_sgemm(CblasRowMajor, ta, tb, M, hi - lo, K_, alpha, A, lda,
                            transB ? B + (size_t)lo * ldb : B + lo, ldb, beta, C + lo, ldc);
        }
    }
}

/* ---- frozen weights in bf16 (cpu/gemm_bf16.c with the ISA's micro-kernel: AVX512_BF16 or portable) ---- */

static size_t cpu_bf16_weight_bytes(lt_backend *be, int out, int in) {
    (void)be;
    return lt_bf16w_elems(out, in) * sizeof(uint16_t);
}

/* dst (packed) <- W (out,in) f32 */
static void cpu_bf16_weight_pack(lt_backend *be, void *dst, const float *W, int out, int in) {
    lt_bf16_pack(K(be), dst, W, out, in);
}

/* y (N,out) = x (N,in) W^T */
static void cpu_gemm_bf16_forward(lt_backend *be, float *y, const float *x, const void *Wp, int N, int in, int out) {
    if (N < 0 || in < 0 || out < 0) {
        cpu_record_error(be, LT_ERR_INTERNAL);
        return;
    }
    lt_gemm_bf16_forward(K(be), cpu_nt(be), y, x, Wp, N, in, out);
}

/* dx (N,in) (+)= dy (N,out) W */
static void cpu_gemm_bf16_backward(lt_backend *be, float *dx, const float *dy, const void *Wp, int N, int in, int out,
                                   int accumulate) {
    if (N < 0 || in < 0 || out < 0) {
        cpu_record_error(be, LT_ERR_INTERNAL);
        return;
    }
    lt_gemm_bf16_backward(K(be), cpu_nt(be), dx, dy, Wp, N, in, out, accumulate);
}

/* out (N,C) = rows ids of the packed bf16 table (vocab,C): row o of the layout is lane o % 16 of its
 * block of 16 rows, one (c, c+1) pair per 64-byte vector */
static void cpu_embedding_forward_bf16(lt_backend *be, float *out, const int32_t *ids, const void *table, int N,
                                       int C) {
    const uint16_t *Wp = table;
    const int P = lt_bf16w_pairs(C);
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int n = 0; n < N; n++) {
        const uint16_t *row = Wp + (size_t)(ids[n] / 16) * P * 32 + (ids[n] % 16) * 2;
        float *o = out + (size_t)n * C;
        for (int p = 0; p < P; p++) {
            o[2 * p] = lt_bf16_to_f32(row[(size_t)p * 32]);
            if (2 * p + 1 < C) o[2 * p + 1] = lt_bf16_to_f32(row[(size_t)p * 32 + 1]);
        }
    }
}

/* the shapes a 4-bit product may take: q (out,in), NF4 or FP4 */
static int q4_args_ok(lt_backend *be, const lt_qdesc *q, int N, int in, int out) {
    if (N >= 0 && in >= 0 && out >= 0 && q->rows == out && q->cols == in &&
        (q->format == LT_QF_NF4 || q->format == LT_QF_FP4))
        return 1;
    cpu_record_error(be, LT_ERR_INTERNAL);
    return 0;
}

/* y (N,out) = x (N,in) W^T, W a 4-bit weight dequantized into the bf16 kernel's panels (no tile) */
static void cpu_gemm_q4_forward(lt_backend *be, float *y, const float *x, const lt_qdesc *q, int N, int in, int out,
                                float *tile, int tile_rows) {
    (void)tile;
    (void)tile_rows;
    if (q4_args_ok(be, q, N, in, out)) lt_gemm_q4_forward(K(be), cpu_nt(be), y, x, q, N, in, out);
}

/* dx (N,in) (+)= dy (N,out) W */
static void cpu_gemm_q4_backward(lt_backend *be, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                                 int accumulate, float *tile, int tile_rows) {
    (void)tile;
    (void)tile_rows;
    if (q4_args_ok(be, q, N, in, out)) lt_gemm_q4_backward(K(be), cpu_nt(be), dx, dy, q, N, in, out, accumulate);
}

/* ---- elementwise ---------------------------------------------------------------------------------- */

/* y (n) += a x (n) */
static void cpu_axpy(lt_backend *be, size_t n, float a, const float *x, float *y) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(be, n, k->axpy(hi - lo, a, x + lo, y + lo));
}

/* x (n) *= a */
static void cpu_scale(lt_backend *be, size_t n, float a, float *x) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(be, n, k->scale(hi - lo, a, x + lo));
}

/* x (n,C): row i *= w[i]; rows are independent, so any split is exact */
static void cpu_row_scale(lt_backend *be, float *x, const float *w, int n, int C) {
    const lt_cpu_kernels *k = K(be);
    for (int i = 0; i < n; i++)
        if (w[i] != 1.0f) k->scale((size_t)C, w[i], x + (size_t)i * C);
}

/* Fixed pieces (independent of the thread count) summed in order: deterministic. */
#define LT_SUM_PIECES 64
static double cpu_sumsq(lt_backend *be, size_t n, const float *x) {
    const lt_cpu_kernels *k = K(be);
    if (n < 4 * (size_t)LT_GRAIN) return k->sumsq(n, x);
    double part[LT_SUM_PIECES];
    int nt = cpu_threads_for(be, n, LT_GRAIN);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int i = 0; i < LT_SUM_PIECES; i++) {
        size_t lo, hi;
        cpu_slice(n, i, LT_SUM_PIECES, &lo, &hi);
        part[i] = hi > lo ? k->sumsq(hi - lo, x + lo) : 0.0;
    }
    double s = 0.0;
    for (int i = 0; i < LT_SUM_PIECES; i++) s += part[i];
    return s;
}

static int cpu_all_finite(lt_backend *be, size_t n, const float *x) {
    const lt_cpu_kernels *k = K(be);
    int ok = 1;
    int nt = cpu_threads_for(be, n, LT_GRAIN);
    if (nt <= 1) return k->all_finite(n, x);
#pragma omp parallel num_threads(nt) reduction(&& : ok)
    {
        size_t lo, hi;
        cpu_slice(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        ok = hi > lo ? k->all_finite(hi - lo, x + lo) : 1;
    }
    return ok;
}

/* ---- embedding ------------------------------------------------------------------------------------ */

/* out (N,C), ids (N), table (vocab,C) */
static void cpu_embedding_forward(lt_backend *be, float *out, const int32_t *ids, const float *table, int N, int C) {
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof(float));
}

/* dst[idx[i]] = src[i]: rows are distinct, so threads take rows */
static void cpu_scatter_rows(lt_backend *be, float *dst, const int32_t *idx, const float *src, int n, int C) {
    int nt = cpu_threads_for(be, (size_t)n * C, LT_GRAIN);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * C, src + (size_t)i * C, (size_t)C * sizeof(float));
}

/* dtable (vocab,C) += dout (N,C) scattered by ids: threads own column slices, so two tokens with the
 * same id never race and every element sums its tokens in order (deterministic, like the reference) */
static void cpu_embedding_backward(lt_backend *be, float *dtable, const int32_t *ids, const float *dout, int N, int C) {
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
    const int nblk = (C + 63) / 64;
    if (nt > nblk) nt = nblk;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int blk = 0; blk < nblk; blk++) {
        const int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int n = 0; n < N; n++) {
            float *d = dtable + (size_t)ids[n] * C;
            const float *g = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

/* ---- RMSNorm -------------------------------------------------------------------------------------- */

/* Rows [lo, hi) of slice i of nt over N rows. */
static inline void cpu_rows(int N, int i, int nt, int *lo, int *hi) {
    long per = ((long)N + nt - 1) / nt, a = per * i, b = a + per;
    *lo = (int)(a < N ? a : N);
    *hi = (int)(b < N ? b : N);
}

/* out (N,C), rstd (N), inp (N,C), weight (C) */
static void cpu_rmsnorm_forward(lt_backend *be, float *out, float *rstd, const float *inp, const float *weight, int N,
                                int C, float eps) {
    const lt_cpu_kernels *k = K(be);
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
    if (nt > N) nt = N > 0 ? N : 1;
    if (nt <= 1) {
        k->rmsnorm_fwd(out, rstd, inp, weight, 0, N, C, eps);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        cpu_rows(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        k->rmsnorm_fwd(out, rstd, inp, weight, lo, hi, C, eps);
    }
}

/* dinp (N,C) accumulates, dweight (C) accumulates or NULL, dout, inp (N,C), weight (C), rstd (N) */
static void cpu_rmsnorm_backward(lt_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                                 const float *weight, const float *rstd, int N, int C) {
    const lt_cpu_kernels *k = K(be);
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
    if (nt <= 1) {
        k->rmsnorm_bwd(dinp, dout, inp, weight, rstd, 0, N, C);
        if (dweight) k->rmsnorm_dw(dweight, dout, inp, rstd, N, C, 0, C);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        cpu_rows(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        k->rmsnorm_bwd(dinp, dout, inp, weight, rstd, lo, hi, C);
        if (dweight) {
            /* dweight by column blocks of 64 (each summing every row in order) */
            int nblk = (C + 63) / 64;
#pragma omp for schedule(static)
            for (int blk = 0; blk < nblk; blk++) {
                int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
                k->rmsnorm_dw(dweight, dout, inp, rstd, N, C, c0, c1);
            }
        }
    }
}

/* ---- RoPE ----------------------------------------------------------------------------------------- */

static void cpu_rope(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                     int head_dim, int rot_dim, int inverse) {
    const lt_cpu_kernels *k = K(be);
    int nt = cpu_threads_for(be, (size_t)N * n_heads * rot_dim, LT_GRAIN / 2);
    if (nt > N) nt = N > 0 ? N : 1;
    if (nt <= 1) {
        k->rope(x, pos, inv_freq, 0, N, n_heads, head_dim, rot_dim, inverse);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        cpu_rows(N, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        k->rope(x, pos, inv_freq, lo, hi, n_heads, head_dim, rot_dim, inverse);
    }
}

/* x (N, n_heads, head_dim) in place, pos (N), inv_freq (rot_dim/2) */
static void cpu_rope_forward(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                             int head_dim, int rot_dim) {
    cpu_rope(be, x, pos, inv_freq, N, n_heads, head_dim, rot_dim, 0);
}
static void cpu_rope_backward(lt_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int N, int n_heads,
                              int head_dim, int rot_dim) {
    cpu_rope(be, dx, pos, inv_freq, N, n_heads, head_dim, rot_dim, 1);
}

/* ---- attention ------------------------------------------------------------------------------------ */

static int cpu_att_args_ok(lt_backend *be, int B, int T, int NH, int NKV, int HD) {
    if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return 0;
    if (NKV <= 0 || NH % NKV != 0) {
        cpu_record_error(be, LT_ERR_INTERNAL);
        return 0;
    }
    return 1;
}

/* out (B,T,NH,HD), lse (B,NH,T), q (B,T,NH,HD), k, v (B,T,NKV,HD), kv_start (B*T).
 * Work items: (query tile, b, h), the longest (last) tiles first. */
static void cpu_attention_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                  const float *v, const int32_t *kv_start, int B, int T, int NH, int NKV, int HD,
                                  float scale) {
    if (!cpu_att_args_ok(be, B, T, NH, NKV, HD)) return;
    const lt_cpu_kernels *kk = K(be);
    long nbh = (long)B * NH;
    if (HD > LT_ATT_MAX_HD) {
        int nt = nbh < cpu_nt(be) ? (int)nbh : cpu_nt(be);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (long it = 0; it < nbh; it++)
            lt_ref_attention_forward_head(out, lse, q, k, v, kv_start, B, T, NH, NKV, HD, scale, (int)(it / NH),
                                          (int)(it % NH));
        return;
    }
    long ntile = (T + LT_ATT_QT_FWD - 1) / LT_ATT_QT_FWD, items = nbh * ntile;
    int nt = items < cpu_nt(be) ? (int)items : cpu_nt(be);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (long it = 0; it < items; it++) {
        long tile = ntile - 1 - it / nbh, bh = it % nbh;
        int t0 = (int)tile * LT_ATT_QT_FWD, t1 = t0 + LT_ATT_QT_FWD < T ? t0 + LT_ATT_QT_FWD : T;
        kk->att_fwd_tile(out, lse, q, k, v, kv_start, T, NH, NKV, HD, scale, (int)(bh / NH), (int)(bh % NH), t0, t1);
    }
}

/* B*NH * lt_cpu_att_item_floats(T, HD) floats: per (b, h) the D term, key/value tiles and, for
 * grouped-query attention, the head's share of dk and dv (backend.h does not pass NKV here, so the
 * size always allows for it). */
static size_t cpu_attention_backward_scratch(lt_backend *be, int B, int T, int NH, int HD) {
    (void)be;
    if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return 0;
    return (size_t)B * NH * lt_cpu_att_item_floats(T, HD);
}

/* dq (B,T,NH,HD), dk, dv (B,T,NKV,HD) assigned; dout, q, out (B,T,NH,HD); k, v (B,T,NKV,HD);
 * lse (B,NH,T); scratch: cpu_attention_backward_scratch floats.
 * Work items: (b, h); with NKV < NH the heads of a group are summed into dk, dv at the end. */
static void cpu_attention_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const float *out, const float *lse,
                                   const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale,
                                   float *scratch) {
    if (!cpu_att_args_ok(be, B, T, NH, NKV, HD)) return;
    const lt_cpu_kernels *kk = K(be);
    const size_t item = lt_cpu_att_item_floats(T, HD);
    const int gqa = NKV != NH;
    long nbh = (long)B * NH;
    int nt = nbh < cpu_nt(be) ? (int)nbh : cpu_nt(be);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (long it = 0; it < nbh; it++) {
        int b = (int)(it / NH), h = (int)(it % NH);
        float *ws = scratch + (size_t)it * item;
        float *dkh, *dvh;
        size_t ld;
        if (gqa) {
            dkh = ws + LT_ATT_OFF_DK(T, HD);
            dvh = ws + LT_ATT_OFF_DV(T, HD);
            ld = (size_t)HD;
        } else {
            dkh = dk + ((size_t)b * T * NKV + h) * HD;
            dvh = dv + ((size_t)b * T * NKV + h) * HD;
            ld = (size_t)NKV * HD;
        }
        kk->att_bwd_head(dq, dkh, dvh, ld, dout, q, k, v, out, lse, kv_start, T, NH, NKV, HD, scale, b, h, ws);
    }
    if (!gqa) return;
    /* dk[b,t,g] = sum over the heads h of group g of their shares (in head order) */
    const int G = NH / NKV;
    long rows = (long)B * T;
    int nt2 = cpu_threads_for(be, (size_t)rows * NH * HD, LT_GRAIN);
#pragma omp parallel for num_threads(nt2) schedule(static) if (nt2 > 1)
    for (long r = 0; r < rows; r++) {
        int b = (int)(r / T), t = (int)(r % T);
        for (int g = 0; g < NKV; g++) {
            float *dkr = dk + (((size_t)b * T + t) * NKV + g) * HD;
            float *dvr = dv + (((size_t)b * T + t) * NKV + g) * HD;
            for (int x = 0; x < G; x++) {
                const float *ws = scratch + ((size_t)b * NH + (size_t)g * G + x) * item;
                const float *pk = ws + LT_ATT_OFF_DK(T, HD) + (size_t)t * HD;
                const float *pv = ws + LT_ATT_OFF_DV(T, HD) + (size_t)t * HD;
                if (x == 0) {
                    memcpy(dkr, pk, (size_t)HD * sizeof(float));
                    memcpy(dvr, pv, (size_t)HD * sizeof(float));
                } else {
                    for (int d = 0; d < HD; d++) {
                        dkr[d] += pk[d];
                        dvr[d] += pv[d];
                    }
                }
            }
        }
    }
}

/* The key ranges of a decode, checked (host memory): 0 <= kv_start[b], kv_len[b] <= S_cap; returns the
 * longest range (work estimate), -1 on a bad one. */
static long cpu_decode_ranges_ok(lt_backend *be, const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap) {
    long most = 0;
    for (int b = 0; b < B; b++) {
        if (kv_start[b] < 0 || kv_len[b] > S_cap) {
            cpu_record_error(be, LT_ERR_INTERNAL);
            return -1;
        }
        if (kv_len[b] - kv_start[b] > most) most = kv_len[b] - kv_start[b];
    }
    return most;
}

/* out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD); row b: keys kv_start[b] .. kv_len[b]-1 (the kernel
 * sees the row's cache from kv_start on). Work items: (b, h). */
static void cpu_attention_decode(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                                 const int32_t *kv_start, const int32_t *kv_len, int B, int S_cap, int NH, int NKV,
                                 int HD, float scale) {
    if (!cpu_att_args_ok(be, B, 1, NH, NKV, HD)) return;
    long most = cpu_decode_ranges_ok(be, kv_start, kv_len, B, S_cap);
    if (most < 0) return;
    const lt_cpu_kernels *kk = K(be);
    long nbh = (long)B * NH;
    int nt = cpu_threads_for(be, (size_t)nbh * (most > 0 ? most : 1) * HD, LT_GRAIN);
    if (nt > nbh) nt = (int)nbh;
    const size_t skv = (size_t)NKV * HD;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (long it = 0; it < nbh; it++) {
        const int b = (int)(it / NH), j0 = kv_start[b];
        kk->att_decode_head(out, q, kcache + j0 * skv, vcache + j0 * skv, S_cap, kv_len[b] - j0, NH, NKV, HD, scale, b,
                            (int)(it % NH));
    }
}

/* gpt-oss's clamped SwiGLU: the reference loops in parallel slices (elementwise, memory-bound) */
static void cpu_swiglu_clamp_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n,
                                     float alpha, float limit) {
    CPU_PAR_SLICES(be, n, lt_ref_swiglu_clamp_forward(out + lo, gate + lo, up + lo, hi - lo, alpha, limit));
}

static void cpu_swiglu_clamp_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                      const float *up, size_t n, float alpha, float limit) {
    CPU_PAR_SLICES(
        be, n,
        lt_ref_swiglu_clamp_backward(dgate + lo, dup + lo, dout + lo, gate + lo, up + lo, hi - lo, alpha, limit));
}

/* ---- attention sinks (gpt-oss): the reference kernels, O(B T NH HD) beside the attention's O(T^2) ----- */

static void cpu_attention_sink_forward(lt_backend *be, float *out, float *lse, const float *sinks, int B, int T, int NH,
                                       int HD) {
    if (!cpu_att_args_ok(be, B, T, NH, NH, HD)) return;
    lt_ref_attention_sink_forward(out, lse, sinks, B, T, NH, HD);
}

static void cpu_attention_sink_backward(lt_backend *be, float *dsinks, float *dq, float *dk, const float *dout,
                                        const float *q, const float *k, const float *out, const float *lse,
                                        const float *sinks, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                        int HD, float scale) {
    if (!cpu_att_args_ok(be, B, T, NH, NKV, HD)) return;
    lt_ref_attention_sink_backward(dsinks, dq, dk, dout, q, k, out, lse, sinks, kv_start, B, T, NH, NKV, HD, scale);
}

static void cpu_attention_sink_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                      const float *vcache, const int32_t *kv_start, const int32_t *kv_len,
                                      const float *sinks, int B, int S_cap, int NH, int NKV, int HD, float scale) {
    if (!cpu_att_args_ok(be, B, 1, NH, NKV, HD) || cpu_decode_ranges_ok(be, kv_start, kv_len, B, S_cap) < 0) return;
    lt_ref_attention_sink_decode(out, q, kcache, vcache, kv_start, kv_len, sinks, B, S_cap, NH, NKV, HD, scale);
}

/* ---- SwiGLU --------------------------------------------------------------------------------------- */

/* out, gate, up (n) */
static void cpu_swiglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(be, n, k->swiglu_fwd(out + lo, gate + lo, up + lo, hi - lo));
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up */
static void cpu_swiglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, size_t n) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(be, n, k->swiglu_bwd(dgate + lo, dup + lo, dout + lo, gate + lo, up + lo, hi - lo));
}

/* ---- attention with soft-capped scores: the reference kernels, parallel over heads ------------------ */

static void cpu_attention_softcap_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                          const float *v, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                          int HD, float scale, float softcap) {
    if (!cpu_att_args_ok(be, B, T, NH, NKV, HD)) return;
    long nbh = (long)B * NH;
    int nt = cpu_threads_for(be, (size_t)nbh * T * T * HD, LT_GRAIN);
    if (nt > nbh) nt = (int)nbh;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (long it = 0; it < nbh; it++)
        lt_ref_attention_softcap_forward_head(out, lse, q, k, v, kv_start, T, NH, NKV, HD, scale, softcap,
                                              (int)(it / NH), (int)(it % NH));
}

static void cpu_attention_softcap_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                           const float *q, const float *k, const float *v, const float *out,
                                           const float *lse, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                           int HD, float scale, float softcap) {
    if (!cpu_att_args_ok(be, B, T, NH, NKV, HD)) return;
    long ng = (long)B * NKV; /* each (b, kv head) owns its dk, dv and its query heads' dq */
    int nt = cpu_threads_for(be, (size_t)ng * T * T * HD, LT_GRAIN);
    if (nt > ng) nt = (int)ng;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (long it = 0; it < ng; it++)
        lt_ref_attention_softcap_backward_group(dq, dk, dv, dout, q, k, v, out, lse, kv_start, T, NH, NKV, HD, scale,
                                                softcap, (int)(it / NKV), (int)(it % NKV));
}

static void cpu_attention_softcap_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                         const float *vcache, const int32_t *kv_start, const int32_t *kv_len, int B,
                                         int S_cap, int NH, int NKV, int HD, float scale, float softcap) {
    if (!cpu_att_args_ok(be, B, 1, NH, NKV, HD)) return;
    if (cpu_decode_ranges_ok(be, kv_start, kv_len, B, S_cap) < 0) return;
    lt_ref_attention_softcap_decode(out, q, kcache, vcache, kv_start, kv_len, B, S_cap, NH, NKV, HD, scale, softcap);
}

/* ---- bias add, GeGLU, soft-capping (plain loops; memory-bound and off the Llama path) ---------- */

/* DoRA: rows of a materialised weight are independent */
static void cpu_dora_norm(lt_backend *be, float *g, float *inv_n, const float *m, const float *w, int rows, int cols) {
    int nt = cpu_threads_for(be, (size_t)rows * cols, LT_GRAIN);
    if (nt > rows) nt = rows;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int r = 0; r < rows; r++) lt_ref_dora_norm(g + r, inv_n + r, m + r, w + (size_t)r * cols, 1, cols);
}

static void cpu_mul_cols(lt_backend *be, float *y, const float *g, int N, int C) {
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
    if (nt > N) nt = N;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int i = 0; i < N; i++) lt_ref_mul_cols(y + (size_t)i * C, g, 1, C);
}

static void cpu_col_dot(lt_backend *be, float *out, const float *a, const float *b, const float *w, int N, int C) {
    (void)be;
    lt_ref_col_dot(out, a, b, w, N, C);
}

static void cpu_rope_scale(lt_backend *be, float *x, int N, int n_heads, int head_dim, int rot_dim, float a) {
    (void)be;
    lt_ref_rope_scale(x, N, n_heads, head_dim, rot_dim, a);
}

/* y (N,C) += b (C) */
static void cpu_bias_add(lt_backend *be, float *y, const float *b, int N, int C) {
    int nt = cpu_threads_for(be, (size_t)N * C, LT_GRAIN);
    if (nt > N) nt = N;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int i = 0; i < N; i++) {
        float *yi = y + (size_t)i * C;
        for (int c = 0; c < C; c++) yi[c] += b[c];
    }
}

/* db (C) += column sums of dy (N,C) */
static void cpu_bias_backward(lt_backend *be, float *db, const float *dy, int N, int C) {
    (void)be;
    lt_ref_bias_backward(db, dy, N, C);
}

static void cpu_geglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n) {
    CPU_PAR_SLICES(be, n, lt_ref_geglu_forward(out + lo, gate + lo, up + lo, hi - lo));
}

static void cpu_geglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                               const float *up, size_t n) {
    CPU_PAR_SLICES(be, n, lt_ref_geglu_backward(dgate + lo, dup + lo, dout + lo, gate + lo, up + lo, hi - lo));
}

static void cpu_softcap_forward(lt_backend *be, float *x, size_t n, float cap) {
    CPU_PAR_SLICES(be, n, lt_ref_softcap_forward(x + lo, hi - lo, cap));
}

static void cpu_softcap_backward(lt_backend *be, float *dx, const float *y, size_t n, float cap) {
    CPU_PAR_SLICES(be, n, lt_ref_softcap_backward(dx + lo, y + lo, hi - lo, cap));
}

/* ---- cross-entropy -------------------------------------------------------------------------------- */

/* logits (n,V), losses (n), targets (n) */
static void cpu_cross_entropy(lt_backend *be, float *logits, float *losses, const int32_t *targets, int n, int V,
                              float grad_scale) {
    const lt_cpu_kernels *k = K(be);
    if (n <= 0 || V <= 0) return;
    int nt = cpu_threads_for(be, (size_t)n * V, LT_GRAIN);
    if (nt > n) nt = n;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int i = 0; i < n; i++) k->ce_row(logits + (size_t)i * V, losses + i, targets[i], V, grad_scale);
}

/* ---- dropout -------------------------------------------------------------------------------------- */

/* out, inp (n); out may alias inp */
static void cpu_dropout(lt_backend *be, float *out, const float *inp, size_t n, float p, uint64_t seed,
                        uint64_t offset) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(be, n, k->dropout(out + lo, inp + lo, hi - lo, p, seed, offset + lo));
}

/* ---- AdamW ---------------------------------------------------------------------------------------- */

/* param, grad, m, v (n) */
static void cpu_adamw_step(lt_backend *be, float *param, const float *grad, float *m, float *v, size_t n,
                           float step_size, float beta1, float beta2, float eps, float bc2_sqrt, float decay) {
    const lt_cpu_kernels *k = K(be);
    CPU_PAR_SLICES(
        be, n, k->adamw(param + lo, grad + lo, m + lo, v + lo, hi - lo, step_size, beta1, beta2, eps, bc2_sqrt, decay));
}

/* bitsandbytes' 8-bit AdamW over one tensor: blocks of 256 are independent, so threads take whole blocks.
 * The fast kernel (cpu/opt8_simd.h) gives the reference's bytes; the code-book tables of the library's
 * books are built once per process, those of any other books per call (on the stack). */
static void cpu_adamw8bit_step(lt_backend *be, float *param, const float *grad, void *s1, void *s2, float *absmax1,
                               float *absmax2, size_t n, const float *qmap1, const float *qmap2, float beta1,
                               float beta2, float eps_c2, float step_size, float decay) {
    if (!absmax1) {
        CPU_PAR_SLICES(be, n,
                       lt_ref_adamw32bnb_step(param + lo, grad + lo, (float *)s1 + lo, (float *)s2 + lo, hi - lo, beta1,
                                              beta2, eps_c2, step_size, decay));
        return;
    }
    const size_t nb = (n + LT_OPT8_BLOCK - 1) / LT_OPT8_BLOCK;
    lt_opt8_lut scratch[2];
    const lt_opt8_lut *lut1, *lut2;
    lt_opt8_blocks_fn *const fn = K(be)->opt8_blocks;
    if (!lt_opt8_luts(qmap1, qmap2, scratch, &lut1, &lut2)) {
        /* a code book that is not strictly increasing: the reference (binary search) */
        CPU_PAR_SLICES(
            be, nb, for (size_t b = lo; b < hi; b++) {
                const size_t i0 = b * LT_OPT8_BLOCK;
                const size_t i1 = i0 + LT_OPT8_BLOCK < n ? i0 + LT_OPT8_BLOCK : n;
                lt_ref_adamw8bit_block(param, grad, s1, s2, absmax1, absmax2, b, i0, i1, qmap1, qmap2, beta1, beta2,
                                       eps_c2, step_size, decay);
            });
        return;
    }
    /* threads by elements (the grain is in elements), each a contiguous run of blocks */
    const int nt = cpu_threads_for(be, n, LT_GRAIN);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const size_t b0 = nb * (size_t)t / (size_t)T, b1 = nb * (size_t)(t + 1) / (size_t)T;
        if (b1 > b0)
            fn(param, grad, s1, s2, absmax1, absmax2, n, b0, b1, qmap1, qmap2, lut1, lut2, beta1, beta2, eps_c2,
               step_size, decay);
    }
}

/* ---- groups of independent work --------------------------------------------------------------------- */

/* fn(ctx, g) for g < n: one parallel region, groups handed out one at a time (experts differ in size);
 * the ops a call issues see omp_in_parallel() and run on its thread alone (cpu_nt), so every result is
 * the one a single thread computes, whichever thread it lands on. */
static void cpu_run_groups(lt_backend *be, int n, void (*fn)(void *ctx, int g), void *ctx) {
    const int nt = n < cpu_nt(be) ? n : cpu_nt(be);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int g = 0; g < n; g++) fn(ctx, g);
}

/* ---- quantized weights ------------------------------------------------------------------------------ */

/* out (r1-r0, cols): rows split over the threads; per block the 16 codes are scaled once (the same
 * fp32 product code * absmax the reference forms per element) and looked up per nibble. */
static void cpu_dequantize_rows(lt_backend *be, float *out, const lt_qdesc *q, int64_t r0, int64_t r1) {
    const int64_t i0 = r0 * q->cols, n = (r1 - r0) * q->cols;
    if (n <= 0) return;
    const int bs = q->blocksize;
    const float *code = q->format == LT_QF_NF4 ? lt_nf4_code : lt_fp4_code;
    int nt = cpu_threads_for(be, (size_t)n, LT_GRAIN);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        size_t lo, hi;
        cpu_slice((size_t)n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        for (int64_t i = i0 + (int64_t)lo, end = i0 + (int64_t)hi; i < end;) {
            const int64_t b = i / bs, e = (b + 1) * bs < end ? (b + 1) * bs : end;
            const float am = lt_qdesc_absmax(q, b);
            float *o = out - i0;
            if (q->format == LT_QF_INT8) {
                const int8_t *d = (const int8_t *)q->data;
                for (; i < e; i++) o[i] = ((float)d[i] * am) * LT_INT8_INV127;
                continue;
            }
            float s[16];
            for (int k = 0; k < 16; k++) s[k] = code[k] * am;
            if (i & 1) {
                o[i] = s[q->data[i >> 1] & 15];
                i++;
            }
            for (; i + 1 < e; i += 2) {
                const uint8_t byte = q->data[i >> 1];
                o[i] = s[byte >> 4];
                o[i + 1] = s[byte & 15];
            }
            if (i < e) {
                o[i] = s[q->data[i >> 1] >> 4];
                i++;
            }
        }
    }
}

/* ---- the table ------------------------------------------------------------------------------------ */

static const lt_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .destroy = cpu_destroy,
    .set_threads = cpu_set_threads,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .error_message = cpu_error_message,
    .gemm = cpu_gemm,
    .bf16_weight_bytes = cpu_bf16_weight_bytes,
    .bf16_weight_pack = cpu_bf16_weight_pack,
    .gemm_bf16_forward = cpu_gemm_bf16_forward,
    .gemm_bf16_backward = cpu_gemm_bf16_backward,
    .embedding_forward_bf16 = cpu_embedding_forward_bf16,
    .gemm_q4_forward = cpu_gemm_q4_forward,
    .gemm_q4_backward = cpu_gemm_q4_backward,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .sumsq = cpu_sumsq,
    .all_finite = cpu_all_finite,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .scatter_rows = cpu_scatter_rows,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward_scratch = cpu_attention_backward_scratch,
    .attention_backward = cpu_attention_backward,
    .attention_decode = cpu_attention_decode,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .swiglu_clamp_forward = cpu_swiglu_clamp_forward,   /* reference, parallel slices */
    .swiglu_clamp_backward = cpu_swiglu_clamp_backward, /* reference, parallel slices */
    /* The slots below run the reference kernels (cpu/ref_ops.c) on purpose, split over threads where
     * the work splits: they serve one family or method each (Gemma 2, Phi-3 longrope, DoRA, Qwen2
     * biases, Gemma), and are plain O(n) loops except the soft-capped attention (O(T^2) per head, no
     * tiling) and dora_norm (a pass over the materialised weight). */
    .attention_softcap_forward = cpu_attention_softcap_forward,   /* reference, parallel over heads      */
    .attention_softcap_backward = cpu_attention_softcap_backward, /* reference, parallel over kv heads   */
    .attention_softcap_decode = cpu_attention_softcap_decode,     /* reference, one thread               */
    .attention_sink_forward = cpu_attention_sink_forward,         /* reference, one thread               */
    .attention_sink_backward = cpu_attention_sink_backward,       /* reference, one thread               */
    .attention_sink_decode = cpu_attention_sink_decode,           /* reference, one thread               */
    .rope_scale = cpu_rope_scale,                                 /* reference, one thread               */
    .dora_norm = cpu_dora_norm,                                   /* reference, parallel over rows       */
    .mul_cols = cpu_mul_cols,                                     /* reference, parallel over rows       */
    .col_dot = cpu_col_dot,                                       /* reference, one thread               */
    .bias_add = cpu_bias_add,
    .bias_backward = cpu_bias_backward,       /* reference, one thread               */
    .geglu_forward = cpu_geglu_forward,       /* reference, parallel over slices     */
    .geglu_backward = cpu_geglu_backward,     /* reference, parallel over slices     */
    .softcap_forward = cpu_softcap_forward,   /* reference, parallel over slices     */
    .softcap_backward = cpu_softcap_backward, /* reference, parallel over slices     */
    .cross_entropy = cpu_cross_entropy,
    .dropout = cpu_dropout,
    .adamw_step = cpu_adamw_step,
    .adamw8bit_step = cpu_adamw8bit_step,
    .row_scale = cpu_row_scale,
    .dequantize_rows = cpu_dequantize_rows,
    .run_groups = cpu_run_groups,
};

static void cpu_set_err(char *err, size_t errlen, const char *msg) {
    if (err && errlen) snprintf(err, errlen, "%s", msg);
}

lt_status lt_cpu_backend_create_isa(int n_threads, lt_cpu_isa isa, lt_backend **out, char *err, size_t errlen) {
    if (!out) {
        cpu_set_err(err, errlen, "cpu backend: NULL output pointer");
        return LT_ERR_ARGUMENT;
    }
    *out = NULL;
    const lt_cpu_kernels *k = lt_cpu_kernels_get(isa, err, errlen);
    if (!k) return LT_ERR_UNSUPPORTED;
    lt_backend *be = calloc(1, sizeof *be);
    cpu_impl *im = calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        cpu_set_err(err, errlen, "cpu backend: out of memory");
        return LT_ERR_NOMEM;
    }
    im->k = k;
    atomic_init(&im->first_error, LT_OK);
    be->ops = &cpu_ops;
    be->impl = im;
    cpu_set_threads(be, n_threads);
    *out = be;
    return LT_OK;
}

lt_status lt_cpu_backend_create(int n_threads, lt_backend **out, char *err, size_t errlen) {
    return lt_cpu_backend_create_isa(n_threads, LT_CPU_ISA_AUTO, out, err, errlen);
}
