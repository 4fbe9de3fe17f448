/*
 * test_backend_ops.c - every op of the dispatch table (src/backend/backend.h) on every backend this machine
 * has, against the reference kernels (cpu/ref_ops.c) and against PyTorch.
 *
 * The backends (`backends[]` below): the reference kernels themselves (tests/ref_backend.h), the CPU
 * backend once per instruction set this CPU supports (forced through lt_cpu_backend_create_isa:
 * generic, avx2, avx512, avx512bf16) and "cuda" when a device is present (skipped, saying so,
 * otherwise). Another backend is one more entry there. Each case runs on every one of them, on
 * buffers the backend allocated (inputs uploaded, results downloaded), and compares with lt_ref_* on
 * the host:
 *   - bit for bit where the contract is exact: embedding, scatter_rows, dropout, bias_add, mul_cols, rope_scale,
 *     row_scale, dequantize_rows, 8-bit AdamW, in-place vs out-of-place, repeated runs, run_groups (every
 *     group once, 1 thread vs several);
 *   - else a relative tolerance with a floor of the same fraction of the reference's RMS (tu_close_msg):
 *     1e-5 for plain elementwise ops and AdamW, 1e-4 for gemm, and for ops whose sums or libm calls may
 *     run in another order than the reference's `TOL(t)`: t on the host backends (1e-5 for norms, RoPE,
 *     attention, cross-entropy; 1e-6 for GeGLU, soft-capping, bias and DoRA norms) and 10 t on CUDA;
 *   - gemm_bf16 within a multiple of the fp32 summation bound (2 on the host, 4 on CUDA); sumsq within
 *     1e-9 of the reference's double sum (1e-6 on the CPU, which squares in float).
 * Outputs start as NaN, so an op that reads instead of assigning fails. Results must not depend on
 * the thread count, nor change when several host threads use one backend. The goldens of
 * tests/python/make_op_goldens.py (torch autograd in float64) are checked on every backend at 1e-4 of
 * the largest value.
 *
 * Coverage: every case names the slots of lt_backend_ops it covers (CASE in the suite at the end);
 * test_every_slot_has_a_case fails when a slot of the struct has none, so a new op, or a deleted case,
 * fails this program.
 *
 * Plus, once: the reference backward passes against central finite differences, the goldens'
 * discriminating power, and the comparator itself. With a CUDA device the program runs in Check's
 * no-fork mode (CUDA cannot be used in a child forked after the parent initialised it); LT_CUDA_SYNC=1
 * reports a kernel fault against the op that caused it.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/ref_ops.h"
#include "formats/config.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "ref_backend.h"
#include "test_util.h"

#define N_THREADS 3

/* The sanitizer build: a huge allocation is NULL (what alloc must return), not an abort. */
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ---- the backends under test ------------------------------------------------------------------------ */

typedef struct hb hb;
struct hb {
    const char *name; /* in messages */
    lt_status (*create)(const hb *h, int n_threads, lt_backend **out, char *err, size_t errlen);
    int isa;              /* create_cpu: the lt_cpu_isa; create_cuda_emu: the emulated device */
    const char *ops_name; /* the lt_backend_ops.name it reports (and its registry name for create_registry) */
    int host_memory;      /* the lt_backend_ops.host_memory it reports */
    double slack;         /* TOL(t) = slack t: ops whose sums or libm calls run in another order */
    double bf16_bound;    /* gemm_bf16: this many times the fp32 summation bound */
    double sumsq_rtol;    /* sumsq vs the reference's double sum (the CPU squares in float) */
    int partial;          /* 1: only the cases written with FOR_BE_ALL (attention, memory) run on it */
    int available;        /* set by main */
    lt_backend *be;       /* the instance of the running test (NULL where not available) */
};

static lt_status create_ref(const hb *h, int nt, lt_backend **out, char *err, size_t len) {
    (void)h;
    return lt_ref_backend_create(nt, out, err, len);
}
#ifndef LT_TEST_CUDA_EMU
static lt_status create_cpu(const hb *h, int nt, lt_backend **out, char *err, size_t len) {
    return lt_cpu_backend_create_isa(nt, (lt_cpu_isa)h->isa, out, err, len);
}
/* a backend of the library's registry (core.c); LT_ERR_UNSUPPORTED where lt_backend_available says it
 * cannot run here (any other failure fails the program) */
static lt_status create_registry(const hb *h, int nt, lt_backend **out, char *err, size_t len) {
    if (!lt_backend_available(h->ops_name)) {
        snprintf(err, len, "not available on this machine (no device, or not compiled in)");
        return LT_ERR_UNSUPPORTED;
    }
    return lt_backend_create(h->ops_name, nt, out, err, len);
}

static hb backends[] = {
    {"ref", create_ref, 0, "reference", 1, 1.0, 2.0, 1e-9, 0, 0, NULL},
    {"cpu-generic", create_cpu, LT_CPU_ISA_GENERIC, "cpu", 1, 1.0, 2.0, 1e-6, 0, 0, NULL},
    {"cpu-avx2", create_cpu, LT_CPU_ISA_AVX2, "cpu", 1, 1.0, 2.0, 1e-6, 0, 0, NULL},
    {"cpu-avx512", create_cpu, LT_CPU_ISA_AVX512, "cpu", 1, 1.0, 2.0, 1e-6, 0, 0, NULL},
    {"cpu-avx512bf16", create_cpu, LT_CPU_ISA_AVX512_BF16, "cpu", 1, 1.0, 2.0, 1e-6, 0, 0, NULL},
    /* device kernels: float sums in other orders (trees, tensor cores), fast intrinsics */
    {"cuda", create_registry, 0, "cuda", 0, 10.0, 4.0, 1e-9, 0, 0, NULL},
};
#else
/* The CUDA backend's real kernels under CPU emulation (tests/cuda_emu, docs/CUDA.md), on an emulated
 * device picked as on real hardware, through LT_CUDA_DEVICE: the H100 profile runs every case; the
 * 99 KiB part (the attention backward of head_dim 65-128 on the row-wise kernels) and the 48 KiB one
 * without memory pools (every attention op row-wise; cudaMalloc / cudaFree) run the attention and
 * memory cases. The tolerances are the real device's: the emulation must pass what the GPU will be
 * asked to. */
#include "cuda/cuda_backend.h"
#include "cuda_emu/cuda_emu_control.h"
static lt_status create_cuda_emu(const hb *h, int nt, lt_backend **out, char *err, size_t len) {
    char dev[16];
    snprintf(dev, sizeof dev, "%d", h->isa);
    setenv("LT_CUDA_DEVICE", dev, 1);
    lt_status st = lt_cuda_backend_create(nt, out, err, len);
    unsetenv("LT_CUDA_DEVICE");
    return st;
}

static hb backends[] = {
    {"ref", create_ref, 0, "reference", 1, 1.0, 2.0, 1e-9, 0, 0, NULL},
    {"cuda-emu", create_cuda_emu, 0, "cuda", 0, 10.0, 4.0, 1e-9, 0, 0, NULL},
    {"cuda-emu-99k", create_cuda_emu, 2, "cuda", 0, 10.0, 4.0, 1e-9, 1, 0, NULL},
    {"cuda-emu-rowwise", create_cuda_emu, 3, "cuda", 0, 10.0, 4.0, 1e-9, 1, 0, NULL},
};
#endif
#define N_BACKENDS ((int)(sizeof backends / sizeof *backends))

/* LT_TEST_QUICK=1 (the emulated CUDA backend's CI stage, where every thread is a fiber): the largest
 * shapes of a few cases are left to the full run (docs/CUDA.md) */
static int quick(void) {
    const char *q = getenv("LT_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

static hb *cur; /* the backend FOR_BE is at */
/* every backend of the list, except the partial ones; FOR_BE_ALL: every one */
#define FOR_BE                                 \
    for (int bi_ = 0; bi_ < N_BACKENDS; bi_++) \
        if ((cur = &backends[bi_])->be && !cur->partial)
#define FOR_BE_ALL                             \
    for (int bi_ = 0; bi_ < N_BACKENDS; bi_++) \
        if ((cur = &backends[bi_])->be)
#define BE (cur->be)
#define OPS (cur->be->ops)
#define NM (cur->name)
#define TOL(t) ((t)*cur->slack)

static void setup(void) {
    for (int i = 0; i < N_BACKENDS; i++) {
        hb *h = &backends[i];
        h->be = NULL;
        if (!h->available) continue;
        char err[256] = "";
        lt_status st = h->create(h, N_THREADS, &h->be, err, sizeof err);
        ck_assert_msg(st == LT_OK && h->be, "%s: create: %s", h->name, err);
    }
    tu_rng_seed(1234);
}
static void teardown(void) {
    for (int i = 0; i < N_BACKENDS; i++)
        if (backends[i].be) backends[i].be->ops->destroy(backends[i].be), backends[i].be = NULL;
}

/* ---- buffers of a backend ----------------------------------------------------------------------------- */

static void *balloc(lt_backend *be, size_t bytes) {
    void *p = be->ops->alloc(be, bytes ? bytes : 4);
    ck_assert_msg(p != NULL, "%s: alloc of %zu bytes failed", be->ops->name, bytes);
    return p;
}
/* a backend copy of n host floats */
static float *bput(lt_backend *be, const float *h, size_t n) {
    float *d = balloc(be, n * sizeof(float));
    if (n) be->ops->upload(be, d, h, n * sizeof(float));
    return d;
}
/* a host copy (malloc'd) of n backend floats */
static float *bget(lt_backend *be, const float *d, size_t n) {
    float *h = tu_fnew(n);
    if (n) be->ops->download(be, h, d, n * sizeof(float));
    return h;
}

/* the same on the backend FOR_BE is at */
#define dalloc(bytes) balloc(BE, bytes)
#define dput(h, n) bput(BE, h, n)
#define hget(d, n) bget(BE, d, n)
static int32_t *dputi(const int32_t *h, size_t n) {
    int32_t *d = dalloc(n * sizeof(int32_t));
    if (n) OPS->upload(BE, d, h, n * sizeof(int32_t));
    return d;
}
/* n floats, all NaN: outputs must be written, not assumed zero */
static float *dnan(size_t n) {
    float *h = tu_fconst(n, NAN);
    float *d = dput(h, n);
    free(h);
    return d;
}
static void dfree(void *d) { OPS->free(BE, d); }
#define SYNC_OK(what) ck_assert_msg(OPS->sync(BE) == LT_OK, "%s: %s: sync reported an error", NM, what)

/* comparisons naming the backend (fmt: a string literal) */
#define CLOSE_F(got, want, n, rtol, floor, fmt, ...) TU_CLOSE_F(got, want, n, rtol, floor, "%s " fmt, NM, ##__VA_ARGS__)
#define CLOSE(got, want, n, rtol, fmt, ...) TU_CLOSE_F(got, want, n, rtol, 0.0, "%s " fmt, NM, ##__VA_ARGS__)
#define SAME(got, want, n, fmt, ...) TU_SAME(got, want, n, "%s " fmt, NM, ##__VA_ARGS__)

/* ---- table and memory ------------------------------------------------------------------------------- */

START_TEST(test_table_and_memory) {
    ck_assert_msg(backends[0].be && backends[1].be, "the reference and the generic CPU kernels run everywhere");
    FOR_BE_ALL {
        const lt_backend_ops *o = OPS;
        ck_assert_str_eq(o->name, cur->ops_name);
        ck_assert_int_eq(o->host_memory, cur->host_memory);
        void *const *slots = (void *const *)&o->destroy;
        size_t nslots = (sizeof *o - offsetof(lt_backend_ops, destroy)) / sizeof(void *);
        for (size_t i = 0; i < nslots; i++) TU_EXPECT(slots[i] != NULL, "%s: NULL op slot %zu", NM, i);
        ck_assert_int_eq(BE->n_threads, N_THREADS);
        o->set_threads(BE, 0);
        ck_assert_int_ge(BE->n_threads, 1);
        o->set_threads(BE, N_THREADS);
        ck_assert_int_eq(BE->n_threads, N_THREADS);

        float *p = o->alloc(BE, 1000);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq((uintptr_t)p % 64, 0);
        float h[250], g[250];
        for (int i = 0; i < 250; i++) h[i] = (float)i + 0.5f;
        o->upload(BE, p, h, sizeof h);
        o->zero(BE, p, 100 * sizeof(float));
        o->download(BE, g, p, sizeof g);
        for (int i = 0; i < 250; i++) TU_EXPECT(g[i] == (i < 100 ? 0.0f : h[i]), "%s: zero [%d]", NM, i);
        o->zero(BE, p, 1000);
        o->download(BE, g, p, sizeof g);
        for (int i = 0; i < 250; i++) TU_EXPECT(g[i] == 0.0f, "%s: zero all", NM);
        o->upload(BE, p, h, 4 * sizeof(float));
        o->copy(BE, p + 4, p, 4 * sizeof(float));
        o->download(BE, g, p + 4, 4 * sizeof(float));
        ck_assert(memcmp(g, h, 4 * sizeof(float)) == 0);
        /* copy has memmove semantics: overlapping ranges, both directions */
        o->upload(BE, p, h, sizeof h);
        o->copy(BE, p + 3, p, 200 * sizeof(float));
        o->download(BE, g, p, sizeof g);
        for (int i = 0; i < 250; i++) TU_EXPECT(g[i] == (i < 3 ? h[i] : i < 203 ? h[i - 3] : h[i]), "%s: copy up", NM);
        o->upload(BE, p, h, sizeof h);
        o->copy(BE, p, p + 5, 200 * sizeof(float));
        o->download(BE, g, p, sizeof g);
        for (int i = 0; i < 250; i++) TU_EXPECT(g[i] == (i < 200 ? h[i + 5] : h[i]), "%s: copy down", NM);
        o->free(BE, p);
        /* a large overlapping copy (CUDA: through the workspace in several chunks) */
        size_t n = (3u << 20) + 77;
        float *big = tu_frand(n + 1, -1, 1), *back;
        float *d = dput(big, n + 1);
        o->copy(BE, d + 1, d, n * sizeof(float));
        back = hget(d, n + 1);
        ck_assert(back[0] == big[0]);
        SAME(back + 1, big, n, "large overlapping copy upwards");
        free(back);
        o->upload(BE, d, big, (n + 1) * sizeof(float));
        o->copy(BE, d, d + 1, n * sizeof(float));
        back = hget(d, n + 1);
        SAME(back, big + 1, n, "large overlapping copy downwards");
        dfree(d);
        free(big);
        free(back);
        /* allocation failure is NULL, not a pending error */
        ck_assert_ptr_null(o->alloc(BE, SIZE_MAX - 8));
        ck_assert_ptr_null(o->alloc(BE, (size_t)1 << 50)); /* 1 PiB */
        void *z = o->alloc(BE, 0);
        ck_assert_ptr_nonnull(z);
        o->free(BE, z);
        o->free(BE, NULL);
        SYNC_OK("memory ops");
        if (!o->host_memory) ck_assert_uint_ge(o->attention_backward_scratch(BE, 2, 10, 4, 64), 80);
        /* another instance with the default thread count; destroy */
        lt_backend *b0 = NULL;
        char err[256] = "";
        ck_assert_msg(cur->create(cur, 0, &b0, err, sizeof err) == LT_OK, "%s: %s", NM, err);
        ck_assert_int_ge(b0->n_threads, 1);
        b0->ops->destroy(b0);
    }
}
END_TEST

/* A failing op is reported once by sync, with a message (error_message) that names it on a device
 * backend, then sync is clean again and the message empty; empty problems are no-ops. */
START_TEST(test_errors) {
    FOR_BE_ALL {
        float *d = dalloc(64 * sizeof(float));
        OPS->gemm(BE, 0, 0, 2, 3, 4, 1.0f, d, 1, d, 3, 0.0f, d, 3); /* lda 1 < K 4 */
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: gemm with lda < K is not reported", NM);
        const char *msg = OPS->error_message(BE);
        ck_assert_msg(msg && *msg, "%s: no message for the failed gemm", NM);
        if (!cur->host_memory)
            ck_assert_msg(strstr(msg, "gemm") != NULL, "%s: the message \"%s\" names no op", NM, msg);
        ck_assert_int_eq(OPS->sync(BE), LT_OK);
        ck_assert_str_eq(OPS->error_message(BE), "");
        int32_t ks[4] = {0, 0, 0, 0};
        int32_t *dks = dputi(ks, 4);
        OPS->attention_forward(BE, d, d, d, d, d, dks, 1, 4, 3, 2, 2, 1.0f); /* NH 3 not a multiple of NKV 2 */
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: attention with NH %% NKV != 0 is not reported", NM);
        ck_assert_int_eq(OPS->sync(BE), LT_OK);
        OPS->attention_forward(BE, d, d, d, d, d, dks, 0, 4, 2, 2, 2, 1.0f);
        OPS->axpy(BE, 0, 1.0f, d, d);
        OPS->cross_entropy(BE, d, d, dks, 0, 10, 1.0f);
        OPS->rmsnorm_forward(BE, d, d, d, d, 0, 8, 1e-5f);
        SYNC_OK("empty ops");
        dfree(dks);
        dfree(d);
    }
}
END_TEST

/* ---- gemm --------------------------------------------------------------------------------------------- */

START_TEST(test_gemm) {
    static const int shapes[][3] = {{1, 1, 1},   {3, 5, 7},    {17, 33, 9},    {64, 48, 130},
                                    {5, 1, 100}, {1, 37, 300}, {129, 65, 257}, {300, 211, 1024}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.25f, 0.3f}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int tr = 0; tr < 4; tr++) {
            const int ta = tr & 1, tb = tr >> 1;
            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
            const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
            float *A = tu_frand(na, -1, 1), *Bm = tu_frand(nb, -1, 1);
            for (size_t c = 0; c < sizeof ab / sizeof ab[0]; c++) {
                const float alpha = ab[c][0], beta = ab[c][1];
                float *C0 = tu_frand(nc, -1, 1), *Cr = tu_fdup(C0, nc);
                lt_ref_gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cr, ldc);
                FOR_BE {
                    float *dA = dput(A, na), *dB = dput(Bm, nb);
                    float *dC = beta == 0.0f ? dnan(nc) : dput(C0, nc); /* beta 0 ignores C, NaN included */
                    OPS->gemm(BE, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc);
                    float *Cf = hget(dC, nc);
                    for (int i = 0; i < M; i++) /* padding columns of C untouched */
                        if (beta != 0.0f)
                            for (int j = N; j < ldc; j++)
                                TU_EXPECT(Cf[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j],
                                          "%s gemm wrote padding column %d", NM, j);
                    for (int i = 0; i < M; i++)
                        CLOSE(Cf + (size_t)i * ldc, Cr + (size_t)i * ldc, N, 1e-4,
                              "gemm %dx%dx%d ta%d tb%d a%g b%g row %d", M, N, K, ta, tb, alpha, beta, i);
                    SYNC_OK("gemm");
                    free(Cf);
                    dfree(dA);
                    dfree(dB);
                    dfree(dC);
                }
                free(C0);
                free(Cr);
            }
            free(A);
            free(Bm);
        }
    }
    FOR_BE { /* K = 0, and alpha = 0: C = beta C */
        float C[6] = {1, 2, 3, 4, 5, 6}, out[6];
        float *dC = dput(C, 6), *dummy = dalloc(64);
        OPS->gemm(BE, 0, 0, 2, 3, 0, 1.0f, dummy, 1, dummy, 3, 2.0f, dC, 3);
        OPS->download(BE, out, dC, sizeof out);
        ck_assert_msg(out[0] == 2.0f && out[5] == 12.0f, "%s: gemm with K = 0", NM);
        OPS->gemm(BE, 0, 0, 2, 3, 4, 0.0f, dummy, 4, dummy, 3, 0.0f, dC, 3);
        OPS->download(BE, out, dC, sizeof out);
        for (int i = 0; i < 6; i++) ck_assert_msg(out[i] == 0.0f, "%s: gemm with alpha = beta = 0", NM);
        SYNC_OK("gemm");
        dfree(dC);
        dfree(dummy);
    }
}
END_TEST

/* ---- frozen weights in bf16 ----------------------------------------------------------------------------- */

/* fp32 -> bf16 -> fp32, round to nearest even (finite inputs): the rounding the contract asks for,
 * written here again so that the bound below does not come from the code under test */
static double bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

/* gemm_bf16_forward / backward vs the reference (the fp64 sum of the bf16-rounded inputs): per element
 * |got - ref| <= bf16_bound (K + 2) 2^-24 (|acc| + sum |a_k w_k|), a multiple of the bound of an IEEE
 * fp32 summation of exact products (2 on the host: each result within it of the exact sum; 4 on CUDA:
 * tensor cores do not round every addition to nearest). Odd shapes, N = 1, and M beyond one CUDA
 * workspace slice. The packed layout is the backend's own: only the products are compared. */
START_TEST(test_gemm_bf16) {
    static const int shapes[][3] = {{1, 1, 1}, {1, 300, 17}, {37, 45, 53}, {130, 513, 260}, {5000, 600, 24}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], in = shapes[s][1], out = shapes[s][2], step = N > 300 ? 37 : 1;
        float *W = tu_frand((size_t)out * in, -1, 1), *x = tu_frand((size_t)N * in, -2, 2);
        float *dy = tu_frand((size_t)N * out, -1, 1), *acc = tu_frand((size_t)N * in, -1, 1);
        void *rW = malloc(lt_ref_bf16_weight_bytes(out, in));
        lt_ref_bf16_weight_pack(rW, W, out, in);
        /* the reference and the sums of |products| on the rows checked (every step-th): fwd (N,out), bwd (N,in) */
        float *yr = tu_fnew((size_t)N * out), *dxr[2] = {tu_fnew((size_t)N * in), tu_fdup(acc, (size_t)N * in)};
        double *sf = calloc((size_t)N * out, sizeof *sf), *sb = calloc((size_t)N * in, sizeof *sb);
        for (int n = 0; n < N; n += step) {
            lt_ref_gemm_bf16_forward(yr + (size_t)n * out, x + (size_t)n * in, rW, 1, in, out);
            for (int a = 0; a < 2; a++)
                lt_ref_gemm_bf16_backward(dxr[a] + (size_t)n * in, dy + (size_t)n * out, rW, 1, in, out, a);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    const double w = bf16_of(W[(size_t)o * in + i]);
                    sf[(size_t)n * out + o] += fabs(bf16_of(x[(size_t)n * in + i]) * w);
                    sb[(size_t)n * in + i] += fabs(bf16_of(dy[(size_t)n * out + o]) * w);
                }
        }
        FOR_BE {
            const size_t bytes = OPS->bf16_weight_bytes(BE, out, in);
            ck_assert_uint_ge(bytes, (size_t)out * in * 2);
            void *dW = dalloc(bytes);
            OPS->bf16_weight_pack(BE, dW, W, out, in);
            float *dx_ = dput(x, (size_t)N * in), *ddy = dput(dy, (size_t)N * out), *dyv = dnan((size_t)N * out);
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                float *ddx = accumulate ? dput(acc, (size_t)N * in) : dnan((size_t)N * in);
                OPS->gemm_bf16_forward(BE, dyv, dx_, dW, N, in, out);
                OPS->gemm_bf16_backward(BE, ddx, ddy, dW, N, in, out, accumulate);
                SYNC_OK("gemm_bf16");
                float *y = hget(dyv, (size_t)N * out), *dx = hget(ddx, (size_t)N * in);
                const float *xr = dxr[accumulate];
                for (int n = 0; n < N; n += step) {
                    for (int o = 0; o < out; o++) { /* the bound of the forward element (n, o) */
                        const size_t j = (size_t)n * out + o;
                        const double tol = cur->bf16_bound * (in + 2) * ldexp(1.0, -24) * sf[j] + 1e-30;
                        TU_EXPECT(fabs((double)y[j] - yr[j]) <= tol + 1e-7 * fabs(yr[j]),
                                  "%s gemm_bf16_forward %dx%dx%d [%d,%d]: %.9g vs %.9g", NM, N, in, out, n, o, y[j],
                                  yr[j]);
                    }
                    for (int i = 0; i < in; i++) {
                        const size_t j = (size_t)n * in + i;
                        const double sa = sb[j] + (accumulate ? fabs(acc[j]) : 0.0);
                        const double tol = cur->bf16_bound * (out + 3) * ldexp(1.0, -24) * sa + 1e-30;
                        TU_EXPECT(fabs((double)dx[j] - xr[j]) <= tol + 1e-7 * fabs(xr[j]),
                                  "%s gemm_bf16_backward %dx%dx%d acc %d [%d,%d]: %.9g vs %.9g", NM, N, in, out,
                                  accumulate, n, i, dx[j], xr[j]);
                    }
                }
                free(y);
                free(dx);
                dfree(ddx);
            }
            dfree(dW);
            dfree(dx_);
            dfree(ddy);
            dfree(dyv);
        }
        free(W);
        free(x);
        free(dy);
        free(acc);
        free(rW);
        free(yr);
        free(dxr[0]);
        free(dxr[1]);
        free(sf);
        free(sb);
    }
}
END_TEST

/* The edges of the review of the CUDA backend (docs/CUDA.md, B1-B3), on every backend:
 * B1 softcap decode of an empty key range writes out = 0 (it left it unwritten), kv_len > S_cap is an error;
 * B2 the softcap ops check NH % NKV (they read outside k / v);
 * B3 gemm_bf16 with an empty contraction gives y = 0, dx = 0 or dx unchanged (it divided by zero). */
START_TEST(test_review_edges) {
    FOR_BE_ALL {
        const int B = 1, T = 5, NH = 6, HD = 8, S = 16;
        float *big = tu_frand(4096, -1, 1);
        float *d = dput(big, 4096), *o = dnan(4096);
        int32_t ks[5] = {0, 0, 0, 0, 0};
        int32_t *dks = dputi(ks, 5);
        /* B2: NH 6 is not a multiple of NKV 4 (the buffers are large enough for any reading) */
        OPS->attention_softcap_forward(BE, o, o + 2048, d, d, d, dks, B, T, NH, 4, HD, 0.3f, 30.0f);
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: softcap forward with NH %% NKV != 0 is not reported", NM);
        OPS->attention_softcap_backward(BE, o, o + 1024, o + 2048, d, d, d, d, d, d, dks, B, T, NH, 4, HD, 0.3f, 30.0f);
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: softcap backward with NH %% NKV != 0 is not reported", NM);
        int32_t r3[2] = {0, 3}, rbad[2] = {0, S + 1}, rempty[4] = {0, 5, 0, 2}; /* {kv_start}, {kv_len} */
        int32_t *d3 = dputi(r3, 2), *dbad = dputi(rbad, 2), *dempty = dputi(rempty, 4);
        OPS->attention_softcap_decode(BE, o, d, d, d, d3, d3 + 1, B, S, NH, 4, HD, 0.3f, 30.0f);
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: softcap decode with NH %% NKV != 0 is not reported", NM);
        OPS->attention_softcap_decode(BE, o, d, d, d, dbad, dbad + 1, B, S, NH, 2, HD, 0.3f, 30.0f);
        ck_assert_msg(OPS->sync(BE) != LT_OK, "%s: softcap decode with kv_len > S_cap is not reported", NM);
        /* B1: no key (row 0: kv_len 0; row 1: kv_len < kv_start) */
        const int B2 = 2;
        float *od = dnan((size_t)B2 * NH * HD);
        OPS->attention_softcap_decode(BE, od, d, d, d, dempty, dempty + 2, B2, S, NH, 2, HD, 0.3f, 30.0f);
        SYNC_OK("softcap decode of empty ranges");
        float *h = hget(od, (size_t)B2 * NH * HD);
        for (int i = 0; i < B2 * NH * HD; i++)
            TU_EXPECT(h[i] == 0.0f, "%s softcap decode of an empty range: out[%d] = %g", NM, i, h[i]);
        free(h);
        dfree(d3);
        dfree(dbad);
        dfree(dempty);
        /* B3: in = 0 (forward), out = 0 (backward) */
        const int N = 4;
        void *dW = dalloc(OPS->bf16_weight_bytes(BE, 3, 1) + 64);
        float *y = dnan((size_t)N * 3);
        OPS->gemm_bf16_forward(BE, y, d, dW, N, 0, 3);
        SYNC_OK("gemm_bf16_forward in 0");
        h = hget(y, (size_t)N * 3);
        for (int i = 0; i < N * 3; i++) TU_EXPECT(h[i] == 0.0f, "%s gemm_bf16_forward in 0: y[%d] = %g", NM, i, h[i]);
        free(h);
        float *dx = dnan((size_t)N * 3);
        OPS->gemm_bf16_backward(BE, dx, d, dW, N, 3, 0, 0);
        SYNC_OK("gemm_bf16_backward out 0");
        h = hget(dx, (size_t)N * 3);
        for (int i = 0; i < N * 3; i++)
            TU_EXPECT(h[i] == 0.0f, "%s gemm_bf16_backward out 0: dx[%d] = %g", NM, i, h[i]);
        free(h);
        dfree(dx);
        dx = dput(big, (size_t)N * 3);
        OPS->gemm_bf16_backward(BE, dx, d, dW, N, 3, 0, 1);
        SYNC_OK("gemm_bf16_backward out 0 accumulate");
        h = hget(dx, (size_t)N * 3);
        SAME(h, big, (size_t)N * 3, "gemm_bf16_backward out 0 accumulate");
        free(h);
        dfree(dx);
        dfree(y);
        dfree(dW);
        dfree(od);
        dfree(dks);
        dfree(o);
        dfree(d);
        free(big);
    }
}
END_TEST

/* ---- elementwise ---------------------------------------------------------------------------------------- */

START_TEST(test_elementwise) {
    static const size_t sizes[] = {0, 1, 17, 100003, (1u << 20) + 5, (size_t)40000000 + 3};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        if (quick() && n > (2u << 20)) continue; /* 40M: the grid-stride loops' cap, in the full run */
        float *x = tu_frand(n, -3, 3), *y0 = tu_frand(n, -3, 3);
        float *yr = tu_fdup(y0, n), *zr;
        lt_ref_axpy(n, -0.37f, x, yr);
        zr = tu_fdup(yr, n);
        lt_ref_scale(n, 1.7f, zr);
        const double sr = lt_ref_sumsq(n, x);
        FOR_BE {
            float *dx = dput(x, n), *dy = dput(y0, n);
            OPS->axpy(BE, n, -0.37f, dx, dy);
            float *yf = hget(dy, n);
            CLOSE(yf, yr, n, 1e-5, "axpy n=%zu", n);
            free(yf);
            OPS->scale(BE, n, 1.7f, dy);
            yf = hget(dy, n);
            CLOSE(yf, zr, n, 1e-5, "scale n=%zu", n);
            free(yf);
            const double sf = OPS->sumsq(BE, n, dx);
            ck_assert_msg(fabs(sf - sr) <= cur->sumsq_rtol * sr, "%s sumsq n=%zu: %.12g vs %.12g", NM, n, sf, sr);
            ck_assert_msg(OPS->sumsq(BE, n, dx) == sf, "%s sumsq n=%zu is not deterministic", NM, n);
            ck_assert_int_eq(OPS->all_finite(BE, n, dx), 1);
            if (n) {
                const size_t where[3] = {0, n / 2, n - 1};
                const float bad[3] = {INFINITY, -INFINITY, NAN};
                for (int w = 0; w < 3; w++)
                    for (int b = 0; b < 3; b++) {
                        OPS->upload(BE, dx + where[w], &bad[b], sizeof(float));
                        ck_assert_msg(OPS->all_finite(BE, n, dx) == 0, "%s all_finite n=%zu at %zu", NM, n, where[w]);
                        OPS->upload(BE, dx + where[w], &x[where[w]], sizeof(float));
                    }
                const float big = 3.4e38f; /* large but finite */
                OPS->upload(BE, dx + n - 1, &big, sizeof big);
                ck_assert_int_eq(OPS->all_finite(BE, n, dx), 1);
            }
            SYNC_OK("elementwise");
            dfree(dx);
            dfree(dy);
        }
        if (n) { /* the reference's own all_finite */
            const size_t where[3] = {0, n / 2, n - 1};
            const float bad[3] = {INFINITY, -INFINITY, NAN};
            for (int w = 0; w < 3; w++)
                for (int b = 0; b < 3; b++) {
                    const float keep = x[where[w]];
                    x[where[w]] = bad[b];
                    ck_assert_int_eq(lt_ref_all_finite(n, x), 0);
                    x[where[w]] = keep;
                }
        }
        free(x);
        free(y0);
        free(yr);
        free(zr);
    }
}
END_TEST

/* row_scale (objectives.c's per-token CE weights): exact, one product per element */
START_TEST(test_row_scale) {
    static const int shapes[][2] = {{1, 1}, {7, 33}, {300, 1001}, {64, 32000}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int n = shapes[s][0], C = shapes[s][1];
        float *x = tu_frand((size_t)n * C, -3, 3), *w = tu_frand((size_t)n, -2, 2), *xr = tu_fdup(x, (size_t)n * C);
        w[0] = 0.0f;
        lt_ref_row_scale(xr, w, n, C);
        for (int i = 0; i < n; i++) /* the definition */
            TU_EXPECT(xr[(size_t)i * C + C - 1] == x[(size_t)i * C + C - 1] * w[i], "ref row_scale row %d", i);
        FOR_BE {
            float *dx = dput(x, (size_t)n * C), *dw = dput(w, (size_t)n);
            OPS->row_scale(BE, dx, dw, n, C);
            float *xf = hget(dx, (size_t)n * C);
            SAME(xf, xr, (size_t)n * C, "row_scale %d x %d", n, C);
            SYNC_OK("row_scale");
            free(xf);
            dfree(dx);
            dfree(dw);
        }
        free(x);
        free(w);
        free(xr);
    }
}
END_TEST

/* ---- embedding -------------------------------------------------------------------------------------------- */

START_TEST(test_embedding) {
    static const int shapes[][3] = {{50, 37, 23}, {1000, 4096, 70}, {3, 1, 5}, {9, 70, 37}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int V = shapes[s][0], C = shapes[s][1], N = shapes[s][2];
        float *table = tu_frand((size_t)V * C, -1, 1), *g = tu_frand((size_t)N * C, -1, 1);
        int32_t ids[70];
        for (int i = 0; i < N; i++) ids[i] = tu_irand(V);
        ids[0] = V - 1;
        ids[N - 1] = ids[0]; /* a repeated id: its rows sum in token order */
        float *orf = tu_fnew((size_t)N * C), *tr = tu_fdup(table, (size_t)V * C);
        lt_ref_embedding_forward(orf, ids, table, N, C);
        ck_assert(orf[0] == table[(size_t)(V - 1) * C]);
        lt_ref_embedding_backward(tr, ids, g, N, C);
        for (int c = 0; c < C; c++) { /* the reference against the definition, on row ids[0] */
            double direct = table[(size_t)ids[0] * C + c];
            for (int i = 0; i < N; i++)
                if (ids[i] == ids[0]) direct += g[(size_t)i * C + c];
            TU_EXPECT(fabs(tr[(size_t)ids[0] * C + c] - direct) <= 1e-5, "ref embedding_backward (%d, %d)", ids[0], c);
        }
        FOR_BE {
            float *dt = dput(table, (size_t)V * C), *dout = dnan((size_t)N * C), *dg = dput(g, (size_t)N * C);
            int32_t *dids = dputi(ids, (size_t)N);
            OPS->embedding_forward(BE, dout, dids, dt, N, C);
            float *of = hget(dout, (size_t)N * C);
            SAME(of, orf, (size_t)N * C, "embedding V=%d C=%d N=%d", V, C, N);
            /* backward: dtable += dout scattered by ids, in the reference's order: bit for bit */
            OPS->embedding_backward(BE, dt, dids, dg, N, C);
            float *bt = hget(dt, (size_t)V * C);
            SAME(bt, tr, (size_t)V * C, "embedding_backward V=%d C=%d N=%d", V, C, N);
            SYNC_OK("embedding");
            free(of);
            free(bt);
            dfree(dt);
            dfree(dout);
            dfree(dg);
            dfree(dids);
        }
        free(table);
        free(g);
        free(orf);
        free(tr);
    }
}
END_TEST

/* scatter_rows: each source row lands at its index (distinct rows, in no particular order), bit for bit;
 * every other row of dst is untouched */
START_TEST(test_scatter_rows) {
    static const int shapes[][3] = {{40, 37, 23}, {600, 4096, 70}, {3, 1, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int R = shapes[s][0], C = shapes[s][1], n = shapes[s][2];
        float *dst = tu_frand((size_t)R * C, -1, 1), *src = tu_frand((size_t)n * C, -1, 1);
        float *want = tu_fdup(dst, (size_t)R * C), *ref = tu_fdup(dst, (size_t)R * C);
        int32_t idx[70], *used = calloc((size_t)R, sizeof(int32_t));
        for (int i = 0; i < n; i++) {
            int r;
            do r = tu_irand(R);
            while (used[r]);
            used[r] = 1;
            idx[i] = r;
            memcpy(want + (size_t)r * C, src + (size_t)i * C, (size_t)C * sizeof(float));
        }
        lt_ref_scatter_rows(ref, idx, src, n, C);
        TU_SAME(ref, want, (size_t)R * C, "reference scatter_rows R=%d C=%d n=%d", R, C, n);
        FOR_BE {
            float *dd = dput(dst, (size_t)R * C), *ds = dput(src, (size_t)n * C);
            int32_t *di = dputi(idx, (size_t)n);
            OPS->scatter_rows(BE, dd, di, ds, n, C);
            float *got = hget(dd, (size_t)R * C);
            SAME(got, want, (size_t)R * C, "scatter_rows R=%d C=%d n=%d", R, C, n);
            SYNC_OK("scatter_rows");
            free(got);
            dfree(dd);
            dfree(ds);
            dfree(di);
        }
        free(dst);
        free(src);
        free(want);
        free(ref);
        free(used);
    }
}
END_TEST

/* ---- RMSNorm ------------------------------------------------------------------------------------------------ */

START_TEST(test_rmsnorm) {
    static const int shapes[][2] = {{1, 1},   {3, 17},   {7, 100},    {64, 2048}, {5, 4099},
                                    {33, 16}, {300, 64}, {2001, 515}, {40, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1];
        const size_t NC = (size_t)N * C;
        float *x = tu_frand(NC, -2, 2), *w = tu_frand((size_t)C, 0.5f, 1.5f), *g = tu_frand(NC, -1, 1);
        float *orf = tu_fnew(NC), *rr = tu_fnew((size_t)N);
        lt_ref_rmsnorm_forward(orf, rr, x, w, N, C, 1e-5f);
        /* backward accumulates into dinp and dweight (from the reference rstd) */
        float *di0 = tu_frand(NC, -1, 1), *dw0 = tu_frand((size_t)C, -1, 1);
        float *dir = tu_fdup(di0, NC), *dwr = tu_fdup(dw0, (size_t)C);
        lt_ref_rmsnorm_backward(dir, dwr, g, x, w, rr, N, C);
        FOR_BE {
            float *dx = dput(x, NC), *dw = dput(w, (size_t)C), *dg = dput(g, NC);
            float *dout = dnan(NC), *drs = dnan((size_t)N);
            OPS->rmsnorm_forward(BE, dout, drs, dx, dw, N, C, 1e-5f);
            float *of = hget(dout, NC), *rf = hget(drs, (size_t)N);
            CLOSE(of, orf, NC, TOL(1e-5), "rmsnorm out N=%d C=%d", N, C);
            CLOSE(rf, rr, (size_t)N, TOL(1e-5), "rmsnorm rstd N=%d C=%d", N, C);
            float *ddi = dput(di0, NC), *ddw = dput(dw0, (size_t)C), *drr = dput(rr, (size_t)N);
            OPS->rmsnorm_backward(BE, ddi, ddw, dg, dx, dw, drr, N, C);
            float *dif = hget(ddi, NC), *dwf = hget(ddw, (size_t)C);
            CLOSE(dif, dir, NC, TOL(1e-5), "rmsnorm dinp N=%d C=%d", N, C);
            CLOSE(dwf, dwr, (size_t)C, TOL(1e-5), "rmsnorm dweight N=%d C=%d", N, C);
            /* again from the same start: bit-identical (deterministic); dweight NULL gives the same dinp */
            OPS->upload(BE, ddi, di0, NC * sizeof(float));
            OPS->upload(BE, ddw, dw0, (size_t)C * sizeof(float));
            OPS->rmsnorm_backward(BE, ddi, ddw, dg, dx, dw, drr, N, C);
            float *dif2 = hget(ddi, NC), *dwf2 = hget(ddw, (size_t)C);
            SAME(dif2, dif, NC, "rmsnorm dinp twice N=%d C=%d", N, C);
            SAME(dwf2, dwf, (size_t)C, "rmsnorm dweight twice N=%d C=%d", N, C);
            OPS->upload(BE, ddi, di0, NC * sizeof(float));
            OPS->rmsnorm_backward(BE, ddi, NULL, dg, dx, dw, drr, N, C);
            float *din = hget(ddi, NC);
            SAME(din, dif, NC, "rmsnorm dinp with dweight NULL N=%d C=%d", N, C);
            SYNC_OK("rmsnorm");
            free(of);
            free(rf);
            free(dif);
            free(dwf);
            free(dif2);
            free(dwf2);
            free(din);
            dfree(dx);
            dfree(dw);
            dfree(dg);
            dfree(dout);
            dfree(drs);
            dfree(ddi);
            dfree(ddw);
            dfree(drr);
        }
        free(x);
        free(w);
        free(g);
        free(orf);
        free(rr);
        free(di0);
        free(dw0);
        free(dir);
        free(dwr);
    }
}
END_TEST

/* ---- RoPE --------------------------------------------------------------------------------------------------- */

static void rope_inv_freq(float *f, int rot, double theta) {
    for (int j = 0; j < rot / 2; j++) f[j] = (float)(1.0 / pow(theta, 2.0 * j / rot));
}

START_TEST(test_rope) {
    static const int shapes[][4] = {{1, 1, 2, 2},     {5, 3, 8, 8},       {7, 2, 64, 64},
                                    {4, 3, 80, 32},   {9, 4, 128, 128},   {3, 5, 6, 4},
                                    {2, 2, 256, 256}, {300, 8, 128, 128}, {16, 6, 128, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], NH = shapes[s][1], HD = shapes[s][2], rot = shapes[s][3];
        const size_t n = (size_t)N * NH * HD;
        float inv[128];
        rope_inv_freq(inv, rot, s & 1 ? 500000.0 : 10000.0);
        int32_t pos[300];
        for (int i = 0; i < N; i++) pos[i] = tu_irand(8192);
        pos[0] = 0;
        float *x = tu_frand(n, -2, 2), *xr = tu_fdup(x, n), *gr = tu_fdup(x, n), *back = tu_fdup(x, n);
        lt_ref_rope_forward(xr, pos, inv, N, NH, HD, rot);
        lt_ref_rope_backward(gr, pos, inv, N, NH, HD, rot);
        lt_ref_rope_forward(back, pos, inv, N, NH, HD, rot);
        lt_ref_rope_backward(back, pos, inv, N, NH, HD, rot);
        TU_CLOSE(back, x, n, 1e-5, "ref rope bwd(fwd(x)) == x N=%d HD=%d", N, HD);
        free(back);
        FOR_BE {
            float *dxv = dput(x, n), *dinv = dput(inv, (size_t)(rot / 2)), *dgv = dput(x, n);
            int32_t *dpos = dputi(pos, (size_t)N);
            OPS->rope_forward(BE, dxv, dpos, dinv, N, NH, HD, rot);
            float *xf = hget(dxv, n);
            CLOSE(xf, xr, n, TOL(1e-5), "rope fwd N=%d NH=%d HD=%d rot=%d", N, NH, HD, rot);
            for (int i = 0; i < N; i++) /* channels past rot_dim untouched */
                for (int h = 0; h < NH; h++)
                    for (int d = rot; d < HD; d++) {
                        size_t o = ((size_t)i * NH + h) * HD + d;
                        TU_EXPECT(xf[o] == x[o], "%s rope changed channel %d >= rot_dim %d", NM, d, rot);
                    }
            /* backward of x, and backward inverts forward (the rotation is orthogonal) */
            OPS->rope_backward(BE, dgv, dpos, dinv, N, NH, HD, rot);
            float *gf = hget(dgv, n);
            CLOSE(gf, gr, n, TOL(1e-5), "rope bwd N=%d NH=%d HD=%d rot=%d", N, NH, HD, rot);
            OPS->rope_backward(BE, dxv, dpos, dinv, N, NH, HD, rot);
            float *bf = hget(dxv, n);
            CLOSE(bf, x, n, TOL(1e-5), "rope bwd(fwd(x)) == x N=%d HD=%d", N, HD);
            SYNC_OK("rope");
            free(xf);
            free(gf);
            free(bf);
            dfree(dxv);
            dfree(dinv);
            dfree(dpos);
            dfree(dgv);
        }
        free(x);
        free(xr);
        free(gr);
    }
}
END_TEST

/* rope_scale (longrope's attention factor): the first rot_dim channels of each head times a, exactly */
START_TEST(test_rope_scale) {
    static const int shapes[][4] = {{29, 3, 8, 6}, {1, 1, 2, 2}, {70, 4, 96, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], NH = shapes[s][1], HD = shapes[s][2], RD = shapes[s][3];
        const size_t n = (size_t)N * NH * HD;
        float *x = tu_frand(n, -1, 1), *xr = tu_fdup(x, n);
        lt_ref_rope_scale(xr, N, NH, HD, RD, 1.5f);
        for (size_t i = 0; i < n; i++)
            TU_EXPECT(xr[i] == ((int)(i % HD) < RD ? x[i] * 1.5f : x[i]), "ref rope_scale [%zu]", i);
        FOR_BE {
            float *dx = dput(x, n);
            OPS->rope_scale(BE, dx, N, NH, HD, RD, 1.5f);
            float *xs = hget(dx, n);
            SAME(xs, xr, n, "rope_scale N=%d NH=%d HD=%d rot=%d", N, NH, HD, RD);
            SYNC_OK("rope_scale");
            free(xs);
            dfree(dx);
        }
        free(x);
        free(xr);
    }
}
END_TEST

/* ---- attention ------------------------------------------------------------------------------------------------ */

/* kv_start patterns: 0 causal, 1 packed segments, 2 sliding window of 11 */
static void make_kv_start(int32_t *ks, int B, int T, int mode) {
    for (int b = 0; b < B; b++) {
        int seg = 0;
        for (int t = 0; t < T; t++) {
            int v = 0;
            if (mode == 1) {
                if (t > 0 && (t * 7 + b * 3) % 23 == 0) seg = t; /* a new sequence starts here */
                v = seg;
            } else if (mode == 2) {
                v = t - 10 > 0 ? t - 10 : 0;
            }
            ks[(size_t)b * T + t] = v;
        }
    }
}

typedef struct att_case {
    int B, T, NH, NKV, HD, mode;
} att_case;

static const att_case att_cases[] = {
    /* small and odd */
    {1, 1, 1, 1, 8, 0},
    {2, 17, 4, 2, 16, 0},
    {1, 70, 4, 1, 64, 0},
    {2, 45, 3, 3, 20, 0},
    {1, 100, 2, 2, 128, 1},
    {1, 33, 6, 2, 5, 1},
    {2, 130, 2, 1, 96, 1},
    {1, 64, 2, 1, 8, 2},
    {1, 97, 4, 4, 64, 2},
    {3, 40, 2, 2, 80, 0},
    {1, 2, 8, 2, 128, 0},
    {2, 257, 2, 1, 48, 0},
    {1, 290, 2, 2, 32, 2},
    {4, 65, 2, 2, 65, 0},
    {1, 129, 4, 2, 127, 1},
    /* T = 1 (one token per row) */
    {3, 1, 4, 2, 64, 0},
    {2, 1, 8, 8, 128, 0},
    /* T = 300, HD 64 and 128: causal, packed, window, GQA */
    {1, 300, 2, 1, 64, 1},
    {2, 300, 4, 2, 64, 0},
    {1, 300, 4, 4, 128, 0},
    {2, 300, 8, 2, 128, 1},
    {1, 300, 4, 1, 128, 2},
    /* head_dim above 128 (CUDA: the row-wise kernels) */
    {1, 9, 2, 1, 260, 1},
    {1, 150, 4, 2, 160, 0},
    {2, 70, 2, 2, 256, 1},
};
#define N_ATT ((int)(sizeof att_cases / sizeof *att_cases))

START_TEST(test_attention) {
    const att_case *c = &att_cases[_i];
    const int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD;
    if (quick() && (double)B * NH * T * T * HD > 3e6) return; /* 14 of the 25 shapes; every kernel path */
    const size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    const float scale = 1.0f / sqrtf((float)HD);
    float *q = tu_frand(nq, -2, 2), *k = tu_frand(nkv, -2, 2), *v = tu_frand(nkv, -1, 1), *dout = tu_frand(nq, -1, 1);
    int32_t *ks = malloc((size_t)B * T * sizeof(int32_t));
    make_kv_start(ks, B, T, c->mode);
    char what[160];
    snprintf(what, sizeof what, "attention B=%d T=%d NH=%d NKV=%d HD=%d mode=%d", B, T, NH, NKV, HD, c->mode);
    float *orf = tu_fnew(nq), *lr = tu_fnew(nl), *dqr = tu_fnew(nq), *dkr = tu_fnew(nkv), *dvr = tu_fnew(nkv);
    lt_ref_attention_forward(orf, lr, q, k, v, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_backward(dqr, dkr, dvr, dout, q, k, v, orf, lr, ks, B, T, NH, NKV, HD, scale, NULL);
    FOR_BE_ALL {
        float *dq_ = dput(q, nq), *dk_ = dput(k, nkv), *dv_ = dput(v, nkv), *ddo = dput(dout, nq);
        int32_t *dks = dputi(ks, (size_t)B * T);
        float *dout_o = dnan(nq), *dlse = dnan(nl);
        OPS->attention_forward(BE, dout_o, dlse, dq_, dk_, dv_, dks, B, T, NH, NKV, HD, scale);
        float *of = hget(dout_o, nq), *lf = hget(dlse, nl);
        CLOSE(of, orf, nq, TOL(1e-5), "%s out", what);
        CLOSE(lf, lr, nl, TOL(1e-5), "%s lse", what);
        /* backward from the reference forward's out/lse; outputs and scratch start as NaN */
        const size_t ns = OPS->attention_backward_scratch(BE, B, T, NH, HD);
        float *scratch = dnan(ns), *ro = dput(orf, nq), *rl = dput(lr, nl);
        float *gq = dnan(nq), *gk = dnan(nkv), *gv = dnan(nkv);
        OPS->attention_backward(BE, gq, gk, gv, ddo, dq_, dk_, dv_, ro, rl, dks, B, T, NH, NKV, HD, scale, scratch);
        float *dqf = hget(gq, nq), *dkf = hget(gk, nkv), *dvf = hget(gv, nkv);
        /* floor 1e-2: with a single key dq and dk cancel to exactly 0 in exact arithmetic */
        CLOSE_F(dqf, dqr, nq, TOL(1e-5), 1e-2, "%s dq", what);
        CLOSE_F(dkf, dkr, nkv, TOL(1e-5), 1e-2, "%s dk", what);
        CLOSE_F(dvf, dvr, nkv, TOL(1e-5), 1e-2, "%s dv", what);
        /* a query that sees a single key contributes exactly 0 (backend.h): its dq row is 0, and with
         * T = 1 so is all of dk */
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                if (lt_att_kv_lo(ks + (size_t)b * T, t) == t)
                    for (size_t i = 0; i < (size_t)NH * HD; i++)
                        TU_EXPECT(dqf[((size_t)b * T + t) * NH * HD + i] == 0.0f,
                                  "%s %s: dq of single-key query b=%d t=%d is %g", NM, what, b, t,
                                  dqf[((size_t)b * T + t) * NH * HD + i]);
        if (T == 1)
            for (size_t i = 0; i < nkv; i++) TU_EXPECT(dkf[i] == 0.0f, "%s %s: dk with T = 1 is %g", NM, what, dkf[i]);
        /* deterministic: a second backward (over the previous results) is bit-identical */
        OPS->attention_backward(BE, gq, gk, gv, ddo, dq_, dk_, dv_, ro, rl, dks, B, T, NH, NKV, HD, scale, scratch);
        float *dqf2 = hget(gq, nq), *dkf2 = hget(gk, nkv), *dvf2 = hget(gv, nkv);
        SAME(dqf2, dqf, nq, "%s dq twice", what);
        SAME(dkf2, dkf, nkv, "%s dk twice", what);
        SAME(dvf2, dvf, nkv, "%s dv twice", what);
        SYNC_OK(what);
        free(of);
        free(lf);
        free(dqf);
        free(dkf);
        free(dvf);
        free(dqf2);
        free(dkf2);
        free(dvf2);
        dfree(dq_);
        dfree(dk_);
        dfree(dv_);
        dfree(ddo);
        dfree(dks);
        dfree(dout_o);
        dfree(dlse);
        dfree(scratch);
        dfree(ro);
        dfree(rl);
        dfree(gq);
        dfree(gk);
        dfree(gv);
    }
    free(q);
    free(k);
    free(v);
    free(dout);
    free(ks);
    free(orf);
    free(lr);
    free(dqr);
    free(dkr);
    free(dvr);
}
END_TEST

/* kv_start semantics: a packed row gives, on each of its sequences, what that sequence gives alone */
static void packed_semantics(int T, int NH, int NKV, int HD, const int starts[5], float scale) {
    const size_t nq = (size_t)T * NH * HD, nkv = (size_t)T * NKV * HD;
    float *q = tu_frand(nq, -2, 2), *k = tu_frand(nkv, -2, 2), *v = tu_frand(nkv, -1, 1);
    int32_t *ks = malloc((size_t)T * sizeof *ks), *zero = calloc((size_t)T, sizeof *zero);
    for (int s = 0; s < 4; s++)
        for (int t = starts[s]; t < starts[s + 1]; t++) ks[t] = starts[s];
    float *o1 = tu_fnew(nq), *l1 = tu_fnew((size_t)NH * T);
    FOR_BE_ALL {
        float *dq_ = dput(q, nq), *dk_ = dput(k, nkv), *dv_ = dput(v, nkv), *dout = dnan(nq),
              *dlse = dnan((size_t)NH * T);
        int32_t *dks = dputi(ks, (size_t)T);
        OPS->attention_forward(BE, dout, dlse, dq_, dk_, dv_, dks, 1, T, NH, NKV, HD, scale);
        float *out = hget(dout, nq), *lse = hget(dlse, (size_t)NH * T);
        for (int s = 0; s < 4; s++) {
            const int a = starts[s], L = starts[s + 1] - a;
            lt_ref_attention_forward(o1, l1, q + (size_t)a * NH * HD, k + (size_t)a * NKV * HD,
                                     v + (size_t)a * NKV * HD, zero, 1, L, NH, NKV, HD, scale);
            CLOSE(out + (size_t)a * NH * HD, o1, (size_t)L * NH * HD, TOL(1e-5), "T=%d packed segment %d out", T, s);
            for (int h = 0; h < NH; h++)
                CLOSE(lse + (size_t)h * T + a, l1 + (size_t)h * L, (size_t)L, TOL(1e-5), "T=%d packed segment %d lse",
                      T, s);
        }
        SYNC_OK("packed semantics");
        free(out);
        free(lse);
        dfree(dq_);
        dfree(dk_);
        dfree(dv_);
        dfree(dout);
        dfree(dlse);
        dfree(dks);
    }
    free(q);
    free(k);
    free(v);
    free(ks);
    free(zero);
    free(o1);
    free(l1);
}
START_TEST(test_attention_packed_semantics) {
    const int s50[5] = {0, 13, 14, 40, 50}, s150[5] = {0, 13, 14, 100, 150};
    packed_semantics(50, 4, 2, 16, s50, 0.25f);
    packed_semantics(150, 4, 2, 64, s150, 0.125f);
}
END_TEST

/* The key ranges of a decode case: rows of different lengths, windows (kv_start 2 on odd rows), an empty
 * row (b 3). */
static void decode_ranges(int B, int L, int32_t *ks, int32_t *kl) {
    for (int b = 0; b < B; b++) {
        kl[b] = b == 3 ? 0 : L - b % 3 > 0 ? L - b % 3 : 0;
        ks[b] = b % 2 && kl[b] > 2 ? 2 : 0;
    }
}

/* A cache (B,S,NKV,HD) of random keys (values) inside each row's range and 1e30 outside: a read past
 * a range gives inf / NaN. */
static float *decode_cache(int B, int S, int NKV, int HD, const int32_t *ks, const int32_t *kl, float lo, float hi) {
    const size_t row = (size_t)NKV * HD;
    float *c = tu_frand((size_t)B * S * row, lo, hi);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++)
            if (j < ks[b] || j >= kl[b]) tu_ffill(c + ((size_t)b * S + j) * row, row, 1e30f);
    return c;
}

/* want (NH,HD) for row b: the last row of a causal forward (soft-capped when cap > 0) over that row's
 * keys j0 .. j1-1 whose last query is row b of ql; 0 for an empty range */
static void decode_row_forward(float *want, const float *ql, const float *kc, const float *vc, int b, int S, int j0,
                               int j1, int NH, int NKV, int HD, float scale, float cap) {
    const int n = j1 - j0;
    const size_t row = (size_t)NKV * HD, qrow = (size_t)NH * HD;
    if (n <= 0) {
        tu_ffill(want, qrow, 0.0f);
        return;
    }
    float *q = tu_frand((size_t)n * qrow, -2, 2), *full = tu_fnew((size_t)n * qrow), *lse = tu_fnew((size_t)NH * n);
    memcpy(q + (size_t)(n - 1) * qrow, ql + (size_t)b * qrow, qrow * sizeof(float));
    int32_t *z = calloc((size_t)n, sizeof(int32_t));
    const float *k = kc + ((size_t)b * S + j0) * row, *v = vc + ((size_t)b * S + j0) * row;
    if (cap > 0) lt_ref_attention_softcap_forward(full, lse, q, k, v, z, 1, n, NH, NKV, HD, scale, cap);
    else lt_ref_attention_forward(full, lse, q, k, v, z, 1, n, NH, NKV, HD, scale);
    memcpy(want, full + (size_t)(n - 1) * qrow, qrow * sizeof(float));
    free(q);
    free(full);
    free(lse);
    free(z);
}

/* decode (plain and soft-capped, Gemma 2) with per-row key ranges kv_start[b] .. kv_len[b]-1: vs the
 * reference, and each row vs the last row of a causal forward over its own keys (S <= 300); an empty
 * range gives 0; on every backend a range past the cache is refused (LT_ERR_INTERNAL at sync). */
START_TEST(test_attention_decode) {
    static const int shapes[][6] = {{1, 1, 1, 1, 1, 8},         {2, 50, 37, 4, 2, 16}, {3, 100, 100, 6, 2, 64},
                                    {1, 300, 257, 8, 2, 128},   {2, 20, 5, 3, 3, 20},  {1, 10, 3, 2, 1, 260},
                                    {2, 4096, 3000, 8, 2, 128}, {1, 16, 0, 2, 1, 64},  {5, 40, 9, 4, 2, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], S = shapes[s][1], L = shapes[s][2], NH = shapes[s][3], NKV = shapes[s][4];
        const int HD = shapes[s][5];
        if (quick() && S > 300) continue; /* the 4096-slot cache: in the full run */
        const float scale = 1.0f / sqrtf((float)HD), cap = 1.5f;
        const size_t nq = (size_t)B * NH * HD, nc = (size_t)B * S * NKV * HD;
        int32_t ks[8], kl[8], bad[8];
        decode_ranges(B, L, ks, kl);
        memcpy(bad, kl, sizeof bad);
        bad[B - 1] = S + 1;
        float *kc = decode_cache(B, S, NKV, HD, ks, kl, -2, 2), *vc = decode_cache(B, S, NKV, HD, ks, kl, -1, 1);
        float *ql = tu_frand(nq, -2, 2), *orf = tu_fnew(nq), *orc = tu_fnew(nq), *full = NULL, *fullc = NULL;
        lt_ref_attention_decode(orf, ql, kc, vc, ks, kl, B, S, NH, NKV, HD, scale);
        lt_ref_attention_softcap_decode(orc, ql, kc, vc, ks, kl, B, S, NH, NKV, HD, scale, cap);
        if (S <= 300) {
            full = tu_fnew(nq);
            fullc = tu_fnew(nq);
            for (int b = 0; b < B; b++) {
                decode_row_forward(full + (size_t)b * NH * HD, ql, kc, vc, b, S, ks[b], kl[b], NH, NKV, HD, scale, 0);
                decode_row_forward(fullc + (size_t)b * NH * HD, ql, kc, vc, b, S, ks[b], kl[b], NH, NKV, HD, scale,
                                   cap);
            }
        }
        FOR_BE_ALL {
            float *dql = dput(ql, nq), *dkc = dput(kc, nc), *dvc = dput(vc, nc), *dof = dnan(nq);
            int32_t *dks = dputi(ks, (size_t)B), *dkl = dputi(kl, (size_t)B);
            for (int c = 0; c < 2; c++) {
                const char *op = c ? "softcap decode" : "decode";
                if (c) OPS->attention_softcap_decode(BE, dof, dql, dkc, dvc, dks, dkl, B, S, NH, NKV, HD, scale, cap);
                else OPS->attention_decode(BE, dof, dql, dkc, dvc, dks, dkl, B, S, NH, NKV, HD, scale);
                float *of = hget(dof, nq);
                CLOSE(of, c ? orc : orf, nq, TOL(1e-5), "%s B=%d S=%d len=%d NH=%d NKV=%d HD=%d", op, B, S, L, NH, NKV,
                      HD);
                for (int b = 0; b < B; b++) {
                    const float *ob = of + (size_t)b * NH * HD;
                    if (kl[b] <= ks[b])
                        for (int i = 0; i < NH * HD; i++)
                            TU_EXPECT(ob[i] == 0.0f, "%s %s: the empty row %d gives %g", NM, op, b, ob[i]);
                    if (full)
                        CLOSE(ob, (c ? fullc : full) + (size_t)b * NH * HD, (size_t)NH * HD, TOL(1e-5),
                              "%s == the last row of a forward over keys %d..%d, len=%d b=%d", op, ks[b], kl[b] - 1, L,
                              b);
                }
                SYNC_OK(op);
                free(of);
            }
            { /* a range past the cache is refused (the CUDA backend copies the ranges to the host to check) */
                int32_t *dbad = dputi(bad, (size_t)B);
                OPS->attention_decode(BE, dof, dql, dkc, dvc, dks, dbad, B, S, NH, NKV, HD, scale);
                TU_EXPECT(OPS->sync(BE) == LT_ERR_INTERNAL, "%s decode: a range past the cache is not refused", NM);
                OPS->attention_softcap_decode(BE, dof, dql, dkc, dvc, dks, dbad, B, S, NH, NKV, HD, scale, cap);
                TU_EXPECT(OPS->sync(BE) == LT_ERR_INTERNAL, "%s softcap decode: a range past the cache is not refused",
                          NM);
                dfree(dbad);
            }
            dfree(dql);
            dfree(dkc);
            dfree(dvc);
            dfree(dof);
            dfree(dks);
            dfree(dkl);
        }
        free(ql);
        free(kc);
        free(vc);
        free(orf);
        free(orc);
        free(full);
        free(fullc);
    }
}
END_TEST

/* soft-capped attention (Gemma 2): a huge cap is plain attention and the reference backward agrees with
 * finite differences of the reference forward; each backend agrees with the reference (windowed and
 * packed kv_start, GQA, single-key rows), and its decode with the last row of its forward */
static void softcap_attention(int B, int T, int NH, int NKV, int HD, const int32_t *ks, float scale, float cap) {
    const size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float *q = tu_frand(nq, -2, 2), *k = tu_frand(nk, -2, 2), *v = tu_frand(nk, -1, 1), *dout = tu_frand(nq, -1, 1);
    float *o1 = tu_fnew(nq), *o2 = tu_fnew(nq), *l1 = tu_fnew(nl), *l2 = tu_fnew(nl);
    float *dq = tu_fnew(nq), *dk = tu_fnew(nk), *dv = tu_fnew(nk), *dq0 = tu_fnew(nq), *dk0 = tu_fnew(nk),
          *dv0 = tu_fnew(nk);
    lt_ref_attention_forward(o1, l1, q, k, v, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_softcap_forward(o2, l2, q, k, v, ks, B, T, NH, NKV, HD, scale, 1e6f);
    TU_CLOSE_F(o2, o1, nq, 1e-5, 1e-6, "huge cap == plain attention");
    lt_ref_attention_backward(dq0, dk0, dv0, dout, q, k, v, o1, l1, ks, B, T, NH, NKV, HD, scale, NULL);
    lt_ref_attention_softcap_backward(dq, dk, dv, dout, q, k, v, o2, l2, ks, B, T, NH, NKV, HD, scale, 1e6f);
    TU_CLOSE_F(dq, dq0, nq, 1e-4, 1e-6, "huge cap backward dq");
    TU_CLOSE_F(dk, dk0, nk, 1e-4, 1e-6, "huge cap backward dk");
    TU_CLOSE_F(dv, dv0, nk, 1e-4, 1e-6, "huge cap backward dv");
    /* finite differences of L = sum(dout * out) with the cap */
    lt_ref_attention_softcap_forward(o2, l2, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
    lt_ref_attention_softcap_backward(dq, dk, dv, dout, q, k, v, o2, l2, ks, B, T, NH, NKV, HD, scale, cap);
    float *tmp = tu_fnew(nq), *tl = tu_fnew(nl);
    struct {
        float *x, *g;
        size_t n;
        const char *name;
    } probes[] = {{q, dq, nq, "dq"}, {k, dk, nk, "dk"}, {v, dv, nk, "dv"}};
    for (int pi = 0; pi < 3; pi++)
        for (size_t i = 0; i < probes[pi].n; i += 37) {
            const float orig = probes[pi].x[i], h = 1e-2f;
            double lp = 0, lm = 0;
            probes[pi].x[i] = orig + h;
            lt_ref_attention_softcap_forward(tmp, tl, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
            for (size_t j = 0; j < nq; j++) lp += (double)dout[j] * tmp[j];
            probes[pi].x[i] = orig - h;
            lt_ref_attention_softcap_forward(tmp, tl, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
            for (size_t j = 0; j < nq; j++) lm += (double)dout[j] * tmp[j];
            probes[pi].x[i] = orig;
            const double fd = (lp - lm) / (2.0 * h);
            ck_assert_msg(fabs(fd - probes[pi].g[i]) <= 2e-3 + 2e-2 * fabs(fd), "softcap %s[%zu]: %g vs fd %g",
                          probes[pi].name, i, probes[pi].g[i], fd);
        }
    /* decode of the last row over keys 0..T-1 == the last row of the forward with no window (kv_start 0) */
    int32_t *z = calloc((size_t)B * T, sizeof *z), *dz = calloc((size_t)B, sizeof *dz), *dT = malloc((size_t)B * 4);
    for (int b = 0; b < B; b++) dT[b] = T;
    float *oz = tu_fnew(nq), *lz = tu_fnew(nl), *ql = tu_fnew((size_t)B * NH * HD);
    lt_ref_attention_softcap_forward(oz, lz, q, k, v, z, B, T, NH, NKV, HD, scale, cap);
    for (int b = 0; b < B; b++)
        memcpy(ql + (size_t)b * NH * HD, q + ((size_t)b * T + T - 1) * NH * HD, (size_t)NH * HD * 4);
    FOR_BE_ALL {
        float *dq_ = dput(q, nq), *dk_ = dput(k, nk), *dv_ = dput(v, nk), *ddo = dput(dout, nq);
        int32_t *dks = dputi(ks, (size_t)B * T);
        float *dof = dnan(nq), *dlf = dnan(nl), *gq = dnan(nq), *gk = dnan(nk), *gv = dnan(nk);
        OPS->attention_softcap_forward(BE, dof, dlf, dq_, dk_, dv_, dks, B, T, NH, NKV, HD, scale, cap);
        float *of = hget(dof, nq), *lf = hget(dlf, nl);
        CLOSE(of, o2, nq, TOL(1e-5), "softcap attention out T=%d", T);
        CLOSE(lf, l2, nl, TOL(1e-5), "softcap attention lse T=%d", T);
        OPS->attention_softcap_backward(BE, gq, gk, gv, ddo, dq_, dk_, dv_, dof, dlf, dks, B, T, NH, NKV, HD, scale,
                                        cap);
        float *dqf = hget(gq, nq), *dkf = hget(gk, nk), *dvf = hget(gv, nk);
        CLOSE_F(dqf, dq, nq, TOL(1e-5), 1e-7, "softcap dq T=%d", T);
        CLOSE_F(dkf, dk, nk, TOL(1e-5), 1e-7, "softcap dk T=%d", T);
        CLOSE_F(dvf, dv, nk, TOL(1e-5), 1e-7, "softcap dv T=%d", T);
        float *dql = dput(ql, (size_t)B * NH * HD), *dod = dnan((size_t)B * NH * HD);
        int32_t *ddz = dputi(dz, (size_t)B), *ddT = dputi(dT, (size_t)B);
        OPS->attention_softcap_decode(BE, dod, dql, dk_, dv_, ddz, ddT, B, T, NH, NKV, HD, scale, cap);
        float *od = hget(dod, (size_t)B * NH * HD);
        for (int b = 0; b < B; b++)
            CLOSE(od + (size_t)b * NH * HD, oz + ((size_t)b * T + T - 1) * NH * HD, (size_t)NH * HD, TOL(1e-5),
                  "softcap decode T=%d b=%d", T, b);
        SYNC_OK("softcap attention");
        free(of);
        free(lf);
        free(dqf);
        free(dkf);
        free(dvf);
        free(od);
        dfree(dq_);
        dfree(dk_);
        dfree(dv_);
        dfree(ddo);
        dfree(dks);
        dfree(dof);
        dfree(dlf);
        dfree(gq);
        dfree(gk);
        dfree(gv);
        dfree(dql);
        dfree(dod);
        dfree(ddz);
        dfree(ddT);
    }
    free(q);
    free(k);
    free(v);
    free(dout);
    free(o1);
    free(o2);
    free(l1);
    free(l2);
    free(dq);
    free(dk);
    free(dv);
    free(dq0);
    free(dk0);
    free(dv0);
    free(tmp);
    free(tl);
    free(z);
    free(dz);
    free(dT);
    free(oz);
    free(lz);
    free(ql);
}
START_TEST(test_attention_softcap) {
    int32_t ks[14]; /* row 0: a window of 3; row 1: two packed sequences */
    for (int i = 0; i < 14; i++) ks[i] = i < 7 ? (i % 7 > 2 ? i % 7 - 2 : 0) : (i % 7 >= 4 ? 4 : 0);
    softcap_attention(2, 7, 4, 2, 8, ks, 0.4f, 1.5f);
    int32_t ks2[70];
    make_kv_start(ks2, 1, 70, 1);
    softcap_attention(1, 70, 4, 2, 64, ks2, 0.125f, 5.0f);
}
END_TEST

/* ---- SwiGLU, GeGLU, bias, soft-capping, DoRA ------------------------------------------------------------------ */

/* A gated activation out = act(gate) * up (SwiGLU, GeGLU: the same shapes and contract): forward,
 * backward, and backward in place (dgate, dup over gate, up) bit for bit the out-of-place one.
 * Tolerance rtol, times the backend's slack where `scaled`. */
typedef void glu_fwd_fn(float *out, const float *gate, const float *up, size_t n);
typedef void glu_bwd_fn(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
static void check_glu(const char *name, int geglu, const size_t *sizes, int n_sizes, float gmax, double rtol,
                      int scaled) {
    glu_fwd_fn *ref_fwd = geglu ? lt_ref_geglu_forward : lt_ref_swiglu_forward;
    glu_bwd_fn *ref_bwd = geglu ? lt_ref_geglu_backward : lt_ref_swiglu_backward;
    for (int s = 0; s < n_sizes; s++) {
        const size_t n = sizes[s];
        float *g = tu_frand(n, -gmax, gmax), *u = tu_frand(n, -3, 3), *go = tu_frand(n, -1, 1);
        if (n > 4) g[1] = -100.0f, g[2] = 100.0f, g[3] = 0.0f;
        float *orf = tu_fnew(n), *dgr = tu_fnew(n), *dur = tu_fnew(n);
        ref_fwd(orf, g, u, n);
        ref_bwd(dgr, dur, go, g, u, n);
        FOR_BE {
            const double tol = scaled ? TOL(rtol) : rtol;
            void (*fwd)(lt_backend *, float *, const float *, const float *, size_t) =
                geglu ? OPS->geglu_forward : OPS->swiglu_forward;
            void (*bwd)(lt_backend *, float *, float *, const float *, const float *, const float *, size_t) =
                geglu ? OPS->geglu_backward : OPS->swiglu_backward;
            float *dg = dput(g, n), *du = dput(u, n), *dgo = dput(go, n), *dout = dnan(n), *ddg = dnan(n);
            float *ddu = dnan(n);
            fwd(BE, dout, dg, du, n);
            float *of = hget(dout, n);
            CLOSE(of, orf, n, tol, "%s fwd n=%zu", name, n);
            bwd(BE, ddg, ddu, dgo, dg, du, n);
            float *dgf = hget(ddg, n), *duf = hget(ddu, n);
            CLOSE(dgf, dgr, n, tol, "%s dgate n=%zu", name, n);
            CLOSE(duf, dur, n, tol, "%s dup n=%zu", name, n);
            bwd(BE, dg, du, dgo, dg, du, n); /* in place */
            float *gi = hget(dg, n), *ui = hget(du, n);
            SAME(gi, dgf, n, "%s dgate in place n=%zu", name, n);
            SAME(ui, duf, n, "%s dup in place n=%zu", name, n);
            SYNC_OK(name);
            free(of);
            free(dgf);
            free(duf);
            free(gi);
            free(ui);
            dfree(dg);
            dfree(du);
            dfree(dgo);
            dfree(dout);
            dfree(ddg);
            dfree(ddu);
        }
        free(g);
        free(u);
        free(go);
        free(orf);
        free(dgr);
        free(dur);
    }
}

START_TEST(test_swiglu) {
    static const size_t sizes[] = {1, 15, 16, 1000, 65540, 3000001};
    check_glu("swiglu", 0, sizes, (int)(sizeof sizes / sizeof *sizes), 12, 1e-5, 0);
}
END_TEST

START_TEST(test_geglu) {
    /* fixed points of torch.nn.functional.gelu(x, approximate="tanh") */
    static const double xs[] = {-3.0, -1.0, 0.0, 0.5, 1.0, 2.0};
    static const double gelu_tanh[] = {-0.0036373920817729, -0.15880800939172324, 0.0,
                                       0.34571400982514394, 0.8411919906082768,   1.954597694087775};
    for (size_t i = 0; i < sizeof xs / sizeof *xs; i++) {
        float g = (float)xs[i], u = 1.0f, o;
        lt_ref_geglu_forward(&o, &g, &u, 1);
        ck_assert_msg(fabs(o - gelu_tanh[i]) <= 1e-6, "gelu_tanh(%g) = %.9g, torch %.9g", xs[i], o, gelu_tanh[i]);
    }
    /* the reference derivative against central differences of the reference forward */
    float g[64], u[64], go[64], dg[64], du[64];
    for (int i = 0; i < 64; i++) g[i] = tu_urand(-6, 6), u[i] = tu_urand(-3, 3), go[i] = tu_urand(-1, 1);
    lt_ref_geglu_backward(dg, du, go, g, u, 64);
    for (int i = 0; i < 64; i++) {
        const float h = 1e-2f;
        float gp = g[i] + h, gm = g[i] - h, yp, ym;
        lt_ref_geglu_forward(&yp, &gp, &u[i], 1);
        lt_ref_geglu_forward(&ym, &gm, &u[i], 1);
        const double fd = go[i] * ((double)yp - ym) / ((double)gp - gm);
        ck_assert_msg(fabs(fd - dg[i]) <= 2e-3 * (1 + fabs(fd)), "geglu dgate %g vs fd %g at g=%g", dg[i], fd, g[i]);
    }
    static const size_t sizes[] = {1, 15, 1000, 65540};
    check_glu("geglu", 1, sizes, (int)(sizeof sizes / sizeof *sizes), 6, 1e-6, 1);
}
END_TEST

START_TEST(test_bias) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {40, 96}, {129, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1];
        float *y = tu_frand((size_t)N * C, -2, 2), *b = tu_frand((size_t)C, -1, 1),
              *dy = tu_frand((size_t)N * C, -1, 1);
        float *yr = tu_fdup(y, (size_t)N * C);
        lt_ref_bias_add(yr, b, N, C);
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++) /* the definition, element by element */
                TU_EXPECT(yr[(size_t)i * C + c] == y[(size_t)i * C + c] + b[c], "ref bias_add (%d,%d)", i, c);
        /* backward accumulates the column sums */
        float *db0 = tu_frand((size_t)C, -1, 1), *dbr = tu_fdup(db0, (size_t)C), *want = tu_fnew((size_t)C);
        for (int c = 0; c < C; c++) {
            double acc = dbr[c];
            for (int i = 0; i < N; i++) acc += dy[(size_t)i * C + c];
            want[c] = (float)acc;
        }
        lt_ref_bias_backward(dbr, dy, N, C);
        TU_CLOSE(dbr, want, (size_t)C, 1e-6, "ref bias_backward N=%d C=%d", N, C);
        FOR_BE {
            float *dyv = dput(y, (size_t)N * C), *dbv = dput(b, (size_t)C), *ddy = dput(dy, (size_t)N * C);
            float *ddb = dput(db0, (size_t)C);
            OPS->bias_add(BE, dyv, dbv, N, C);
            float *yf = hget(dyv, (size_t)N * C);
            SAME(yf, yr, (size_t)N * C, "bias_add N=%d C=%d", N, C);
            OPS->bias_backward(BE, ddb, ddy, N, C);
            float *dbf = hget(ddb, (size_t)C);
            CLOSE(dbf, dbr, (size_t)C, TOL(1e-6), "bias_backward N=%d C=%d", N, C);
            SYNC_OK("bias");
            free(yf);
            free(dbf);
            dfree(dyv);
            dfree(dbv);
            dfree(ddy);
            dfree(ddb);
        }
        free(y);
        free(b);
        free(dy);
        free(yr);
        free(db0);
        free(dbr);
        free(want);
    }
}
END_TEST

START_TEST(test_softcap) {
    const float cap = 30.0f;
    const size_t n = 5000;
    float *x = tu_frand(n, -200, 200), *dy = tu_frand(n, -1, 1);
    float *yr = tu_fdup(x, n), *dr = tu_fdup(dy, n);
    lt_ref_softcap_forward(yr, n, cap);
    lt_ref_softcap_backward(dr, yr, n, cap);
    for (size_t i = 0; i < n; i++) {
        TU_EXPECT(fabsf(yr[i]) <= cap, "softcap(%g) beyond the cap", x[i]);
        TU_EXPECT(fabs(yr[i] - cap * tanh(x[i] / (double)cap)) <= 1e-5, "softcap(%g)", x[i]);
    }
    for (size_t i = 0; i < 64; i++) { /* d/dx cap tanh(x/cap) = 1 - tanh^2 */
        const double t = tanh(x[i] / (double)cap);
        TU_EXPECT(fabs(dr[i] - dy[i] * (1 - t * t)) <= 1e-6, "softcap grad at %g", x[i]);
    }
    FOR_BE {
        float *dx = dput(x, n), *ddy = dput(dy, n);
        OPS->softcap_forward(BE, dx, n, cap);
        float *yf = hget(dx, n);
        CLOSE(yf, yr, n, TOL(1e-6), "softcap fwd");
        OPS->softcap_backward(BE, ddy, dx, n, cap);
        float *df = hget(ddy, n);
        CLOSE(df, dr, n, TOL(1e-5), "softcap bwd");
        SYNC_OK("softcap");
        free(yf);
        free(df);
        dfree(dx);
        dfree(ddy);
    }
    free(x);
    free(dy);
    free(yr);
    free(dr);
}
END_TEST

/* DoRA: the row norms of the materialised weight, the column scale, the weighted column dots */
START_TEST(test_dora_ops) {
    const int R = 37, C = 53, N = 29;
    float *w = tu_frand((size_t)R * C, -1, 1), *m = tu_frand((size_t)R, 0.5f, 2), *g = tu_fnew(R), *inv = tu_fnew(R);
    lt_ref_dora_norm(g, inv, m, w, R, C);
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)w[(size_t)r * C + c] * w[(size_t)r * C + c];
        ck_assert_msg(fabs(inv[r] * sqrt(ss) - 1) <= 1e-6 && fabs(g[r] - m[r] / sqrt(ss)) <= 1e-6 * fabs(g[r]),
                      "dora_norm row %d", r);
    }
    float *y = tu_frand((size_t)N * R, -2, 2), *a = tu_frand((size_t)N * R, -1, 1), *acc0 = tu_frand((size_t)R, -1, 1);
    float *want = tu_fnew(R);
    for (int c = 0; c < R; c++) {
        double d = 0;
        for (int i = 0; i < N; i++) d += (double)a[(size_t)i * R + c] * y[(size_t)i * R + c];
        want[c] = (float)(acc0[c] + inv[c] * d);
    }
    FOR_BE {
        float *dw = dput(w, (size_t)R * C), *dm = dput(m, (size_t)R), *dg = dnan(R), *dinv = dnan(R);
        OPS->dora_norm(BE, dg, dinv, dm, dw, R, C);
        float *gf = hget(dg, R), *invf = hget(dinv, R);
        CLOSE(gf, g, (size_t)R, TOL(1e-6), "dora_norm g");
        CLOSE(invf, inv, (size_t)R, TOL(1e-6), "dora_norm inv_n");
        float *dy = dput(y, (size_t)N * R), *dgr = dput(g, (size_t)R);
        OPS->mul_cols(BE, dy, dgr, N, R);
        float *yf = hget(dy, (size_t)N * R);
        for (int i = 0; i < N; i++)
            for (int c = 0; c < R; c++)
                TU_EXPECT(yf[(size_t)i * R + c] == y[(size_t)i * R + c] * g[c], "%s mul_cols (%d,%d)", NM, i, c);
        float *dout = dput(acc0, (size_t)R), *da = dput(a, (size_t)N * R), *dy0 = dput(y, (size_t)N * R);
        float *dir = dput(inv, (size_t)R);
        OPS->col_dot(BE, dout, da, dy0, dir, N, R);
        float *out = hget(dout, (size_t)R);
        CLOSE(out, want, (size_t)R, TOL(1e-5), "col_dot (accumulates)");
        SYNC_OK("dora");
        free(gf);
        free(invf);
        free(yf);
        free(out);
        dfree(dw);
        dfree(dm);
        dfree(dg);
        dfree(dinv);
        dfree(dy);
        dfree(dgr);
        dfree(dout);
        dfree(da);
        dfree(dy0);
        dfree(dir);
    }
    free(w);
    free(m);
    free(g);
    free(inv);
    free(y);
    free(a);
    free(acc0);
    free(want);
}
END_TEST

/* ---- cross-entropy -------------------------------------------------------------------------------------------- */

START_TEST(test_cross_entropy) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {5, 1000}, {4, 32000}, {7, 33}, {40, 515}, {3, 128256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int n = shapes[s][0], V = shapes[s][1];
        const size_t nv = (size_t)n * V;
        float *x = tu_frand(nv, -10, 10);
        int32_t tg[40];
        int valid = 0;
        for (int i = 0; i < n; i++) {
            tg[i] = tu_irand(V);
            if (i % 3 == 2) tg[i] = -100;
            valid += tg[i] >= 0;
        }
        if (n >= 4) tg[1] = V;                        /* out of range: treated as ignored */
        if (V > 2) x[tg[0] == 1 ? 2 : 1] = -INFINITY; /* a masked logit (not row 0's target) */
        const float gs = valid ? 1.0f / valid : 0.5f;
        float lr0[40], lr[40], *xr = tu_fdup(x, nv), *x0 = tu_fdup(x, nv);
        lt_ref_cross_entropy(x0, lr0, tg, n, V, 0.0f);
        ck_assert_msg(memcmp(x0, x, nv * sizeof(float)) == 0, "ref cross_entropy grad_scale 0 wrote the logits");
        lt_ref_cross_entropy(xr, lr, tg, n, V, gs);
        FOR_BE {
            float *dx = dput(x, nv), *dl = dnan((size_t)n);
            int32_t *dtg = dputi(tg, (size_t)n);
            /* loss only: logits untouched */
            OPS->cross_entropy(BE, dx, dl, dtg, n, V, 0.0f);
            float *xf = hget(dx, nv), *lf = hget(dl, (size_t)n);
            SAME(xf, x, nv, "cross_entropy grad_scale 0 leaves logits n=%d V=%d", n, V);
            CLOSE(lf, lr0, (size_t)n, TOL(1e-5), "cross_entropy loss n=%d V=%d", n, V);
            for (int i = 0; i < n; i++)
                if (tg[i] < 0 || tg[i] >= V) TU_EXPECT(lf[i] == 0.0f, "%s ignored row %d has loss %g", NM, i, lf[i]);
            free(lf);
            /* with gradient */
            OPS->cross_entropy(BE, dx, dl, dtg, n, V, gs);
            float *gf = hget(dx, nv);
            lf = hget(dl, (size_t)n);
            CLOSE(lf, lr, (size_t)n, TOL(1e-5), "cross_entropy loss (grad) n=%d V=%d", n, V);
            CLOSE(gf, xr, nv, TOL(1e-5), "cross_entropy grad n=%d V=%d", n, V);
            for (int i = 0; i < n; i++)
                if (tg[i] < 0 || tg[i] >= V)
                    for (int c = 0; c < V; c++)
                        TU_EXPECT(gf[(size_t)i * V + c] == 0.0f, "%s ignored row %d grad", NM, i);
            SYNC_OK("cross_entropy");
            free(xf);
            free(lf);
            free(gf);
            dfree(dx);
            dfree(dl);
            dfree(dtg);
        }
        free(x);
        free(xr);
        free(x0);
    }
}
END_TEST

/* ---- dropout ------------------------------------------------------------------------------------------------- */

START_TEST(test_dropout) {
    const size_t n = 200003;
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    /* streams far apart (the core spaces them by 2^40): the counter is 64-bit */
    const uint64_t far = (5ull << 40) + 3;
    float *x = tu_frand(n, 0.5f, 2.0f), *rf = tu_fnew(n), *r = tu_fnew(n);
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        const float p = ps[pi];
        lt_ref_dropout(rf, x, n, p, 0x9E3779B97F4A7C15ull, far);
        lt_ref_dropout(r, x, n, p, 42, 1000);
        size_t dropped = 0;
        for (size_t i = 0; i < n; i++) {
            if (r[i] == 0.0f) dropped++;
            else TU_EXPECT(fabsf(r[i] - x[i] / (1.0f - p)) <= 1e-6f * fabsf(r[i]), "ref dropout p=%g kept [%zu]", p, i);
        }
        const double frac = (double)dropped / n, sd = sqrt(p * (1 - p) / n);
        ck_assert_msg(fabs(frac - p) <= 6 * sd + 1e-9, "ref dropout p=%g dropped %g", p, frac);
        FOR_BE {
            float *dx = dput(x, n), *da = dnan(n), *db = dnan(n);
            OPS->dropout(BE, da, dx, n, p, 0x9E3779B97F4A7C15ull, far);
            float *a = hget(da, n);
            SAME(a, rf, n, "dropout p=%g vs reference at offset 2^40", p);
            free(a);
            OPS->dropout(BE, da, dx, n, p, 42, 1000);
            a = hget(da, n);
            SAME(a, r, n, "dropout p=%g vs reference", p);
            OPS->dropout(BE, db, dx, n, p, 42, 1000);
            float *b = hget(db, n);
            SAME(b, a, n, "dropout p=%g same seed and offset", p);
            free(b);
            if (p > 0.0f && p < 1.0f) {
                OPS->dropout(BE, db, dx, n, p, 43, 1000);
                b = hget(db, n);
                ck_assert_msg(memcmp(a, b, n * sizeof(float)) != 0, "%s dropout: another seed, the same mask", NM);
                free(b);
                /* the mask is a function of offset + i: a shifted call sees the same elements */
                OPS->dropout(BE, db, dx + 777, n - 777, p, 42, 1000 + 777);
                b = hget(db, n - 777);
                SAME(b, a + 777, n - 777, "dropout p=%g offset shift", p);
                free(b);
                /* in place */
                float *dc = dput(x, n);
                OPS->dropout(BE, dc, dc, n, p, 42, 1000);
                float *c = hget(dc, n);
                SAME(c, a, n, "dropout p=%g in place", p);
                free(c);
                dfree(dc);
            }
            SYNC_OK("dropout");
            free(a);
            dfree(dx);
            dfree(da);
            dfree(db);
        }
    }
    free(x);
    free(rf);
    free(r);
}
END_TEST

/* ---- optimizers ----------------------------------------------------------------------------------------------- */

/* AdamW: 3 steps vs the reference kernel at sizes 1, 1037 and 1e6+3, and at 1037 vs a transcription
 * of backend.h's formula in double (the reference kernel included) */
START_TEST(test_adamw) {
    static const size_t sizes[] = {1, 1037, 1000003};
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        float *p0 = tu_frand(n, -1, 1), *g[3];
        for (int t = 0; t < 3; t++) {
            g[t] = tu_frand(n, -1, 1);
            g[t][0] = 0.0f;
        }
        float *pr = tu_fdup(p0, n), *mr = tu_fconst(n, 0.0f), *vr = tu_fconst(n, 0.0f);
        for (int t = 1; t <= 3; t++) {
            const float ss = (float)(lr / (1 - pow(b1, t))), bc2 = (float)sqrt(1 - pow(b2, t)), dec = (float)(lr * wd);
            lt_ref_adamw_step(pr, g[t - 1], mr, vr, n, ss, (float)b1, (float)b2, (float)eps, bc2, dec);
        }
        float *pe = NULL, *me = NULL, *ve = NULL;
        if (n == 1037) { /* the formula in double */
            pe = tu_fnew(n), me = tu_fnew(n), ve = tu_fnew(n);
            for (size_t i = 0; i < n; i++) {
                double P = p0[i], M = 0, V = 0;
                for (int t = 1; t <= 3; t++) {
                    const double gi = g[t - 1][i];
                    P *= 1.0 - lr * wd;
                    M = b1 * M + (1 - b1) * gi;
                    V = b2 * V + (1 - b2) * gi * gi;
                    P -= lr / (1 - pow(b1, t)) * M / (sqrt(V) / sqrt(1 - pow(b2, t)) + eps);
                }
                pe[i] = (float)P, me[i] = (float)M, ve[i] = (float)V;
            }
            TU_CLOSE(pr, pe, n, 1e-5, "ref adamw param vs the formula in double");
            TU_CLOSE(mr, me, n, 1e-5, "ref adamw m vs the formula in double");
            TU_CLOSE(vr, ve, n, 1e-5, "ref adamw v vs the formula in double");
            /* the update is not negligible next to the tolerance: 3 steps of ~lr each */
            double moved = 0;
            for (size_t i = 0; i < n; i++) moved += fabs((double)pr[i] - p0[i]);
            ck_assert_msg(moved / n > 1e-2, "adamw barely moved the parameters (%g)", moved / n);
        }
        FOR_BE {
            float *dp = dput(p0, n), *dm = dalloc(n * sizeof(float)), *dv = dalloc(n * sizeof(float));
            OPS->zero(BE, dm, n * sizeof(float));
            OPS->zero(BE, dv, n * sizeof(float));
            for (int t = 1; t <= 3; t++) {
                const float ss = (float)(lr / (1 - pow(b1, t))), bc2 = (float)sqrt(1 - pow(b2, t)),
                            dec = (float)(lr * wd);
                float *dg = dput(g[t - 1], n);
                OPS->adamw_step(BE, dp, dg, dm, dv, n, ss, (float)b1, (float)b2, (float)eps, bc2, dec);
                dfree(dg);
            }
            float *pf = hget(dp, n), *mf = hget(dm, n), *vf = hget(dv, n);
            CLOSE(pf, pr, n, 1e-5, "adamw param n=%zu", n);
            CLOSE(mf, mr, n, 1e-5, "adamw m n=%zu", n);
            CLOSE(vf, vr, n, 1e-5, "adamw v n=%zu", n);
            if (pe) {
                CLOSE(pf, pe, n, 1e-5, "adamw param vs the formula in double");
                CLOSE(mf, me, n, 1e-5, "adamw m vs the formula in double");
                CLOSE(vf, ve, n, 1e-5, "adamw v vs the formula in double");
            }
            SYNC_OK("adamw");
            free(pf);
            free(mf);
            free(vf);
            dfree(dp);
            dfree(dm);
            dfree(dv);
        }
        for (int t = 0; t < 3; t++) free(g[t]);
        free(p0);
        free(pr);
        free(mr);
        free(vr);
        free(pe);
        free(me);
        free(ve);
    }
}
END_TEST

/* 8-bit AdamW (bitsandbytes blockwise): every backend does the reference's IEEE operations in its order
 * (CUDA: __fmul_rn / __fadd_rn / __fdiv_rn and a correctly rounded sqrtf), so codes, absmax and
 * parameters must be bit for bit the reference's; sizes with a partial last block, the 32-bit path of a
 * small tensor, non-finite gradients and an all-zero block. */
START_TEST(test_adamw8bit) {
    static const size_t sizes[] = {300, 4096, 5000, 70001};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s], nb = (n + 255) / 256;
        const int q8 = n >= 4096;
        float *p0 = tu_frand(n, -0.1f, 0.1f), *g[4];
        for (int t = 0; t < 4; t++) {
            g[t] = tu_frand(n, -1e-2f, 1e-2f);
            g[t][1] = NAN;
            g[t][n / 2] = INFINITY;
            if (n > 600)
                for (size_t i = 256; i < 512; i++) g[t][i] = 0.0f;
        }
        /* the reference: 4 steps */
        float *p = tu_fdup(p0, n), *m = tu_fconst(n, 0), *v = tu_fconst(n, 0), *a1 = tu_fconst(nb, 0),
              *a2 = tu_fconst(nb, 0);
        uint8_t *c1 = calloc(n, 1), *c2 = calloc(n, 1);
        float ss[4], ec[4];
        const float dec = 1e-3f * 0.01f;
        for (int t = 1; t <= 4; t++) {
            const float k2 = sqrtf((float)(1.0 - pow(0.999, t))), k1 = (float)(1.0 - pow(0.9, t));
            ss[t - 1] = (-1e-3f * k2) / k1, ec[t - 1] = k2 * 1e-8f;
            if (q8)
                lt_ref_adamw8bit_step(p, g[t - 1], c1, c2, a1, a2, n, lt_quant_code8(), lt_quant_code8u(), 0.9f, 0.999f,
                                      ec[t - 1], ss[t - 1], dec);
            else
                lt_ref_adamw8bit_step(p, g[t - 1], m, v, NULL, NULL, n, NULL, NULL, 0.9f, 0.999f, ec[t - 1], ss[t - 1],
                                      dec);
        }
        FOR_BE {
            float *dp = dput(p0, n), *da1 = dalloc(nb * 4), *da2 = dalloc(nb * 4), *dq = dalloc(512 * sizeof(float));
            void *ds1 = dalloc(q8 ? n : n * 4), *ds2 = dalloc(q8 ? n : n * 4);
            OPS->zero(BE, ds1, q8 ? n : n * 4);
            OPS->zero(BE, ds2, q8 ? n : n * 4);
            OPS->zero(BE, da1, nb * 4);
            OPS->zero(BE, da2, nb * 4);
            OPS->upload(BE, dq, lt_quant_code8(), 256 * sizeof(float));
            OPS->upload(BE, dq + 256, lt_quant_code8u(), 256 * sizeof(float));
            for (int t = 0; t < 4; t++) {
                float *dg = dput(g[t], n);
                if (q8)
                    OPS->adamw8bit_step(BE, dp, dg, ds1, ds2, da1, da2, n, dq, dq + 256, 0.9f, 0.999f, ec[t], ss[t],
                                        dec);
                else
                    OPS->adamw8bit_step(BE, dp, dg, ds1, ds2, NULL, NULL, n, NULL, NULL, 0.9f, 0.999f, ec[t], ss[t],
                                        dec);
                dfree(dg);
            }
            float *pf = hget(dp, n);
            SAME(pf, p, n, "adamw8bit n=%zu parameters", n);
            if (q8) {
                uint8_t *hc = malloc(n);
                OPS->download(BE, hc, ds1, n);
                ck_assert_msg(memcmp(hc, c1, n) == 0, "%s adamw8bit n=%zu: m codes differ", NM, n);
                OPS->download(BE, hc, ds2, n);
                ck_assert_msg(memcmp(hc, c2, n) == 0, "%s adamw8bit n=%zu: v codes differ", NM, n);
                free(hc);
                float *h1 = hget(da1, nb), *h2 = hget(da2, nb);
                SAME(h1, a1, nb, "adamw8bit n=%zu absmax1", n);
                SAME(h2, a2, nb, "adamw8bit n=%zu absmax2", n);
                free(h1);
                free(h2);
            } else {
                float *hm = hget(ds1, n), *hv = hget(ds2, n);
                SAME(hm, m, n, "adamw8bit (32-bit path) n=%zu m", n);
                SAME(hv, v, n, "adamw8bit (32-bit path) n=%zu v", n);
                free(hm);
                free(hv);
            }
            SYNC_OK("adamw8bit");
            free(pf);
            dfree(dp);
            dfree(da1);
            dfree(da2);
            dfree(dq);
            dfree(ds1);
            dfree(ds2);
        }
        for (int t = 0; t < 4; t++) free(g[t]);
        free(p0);
        free(p);
        free(m);
        free(v);
        free(a1);
        free(a2);
        free(c1);
        free(c2);
    }
}
END_TEST

/* ---- quantized weights ---------------------------------------------------------------------------------------- */

/* a backend descriptor of host tensor q (free with q_free) */
static lt_qdesc q_upload(const lt_qtensor *q) {
    lt_qdesc d = lt_qtensor_desc(q);
    const size_t nd = lt_qtensor_data_bytes(q);
    d.data = dalloc(nd);
    OPS->upload(BE, (void *)d.data, q->data, nd);
    if (q->double_quant) {
        d.qabsmax = dalloc((size_t)q->n_blocks);
        OPS->upload(BE, (void *)d.qabsmax, q->qabsmax, (size_t)q->n_blocks);
        d.absmax2 = dput(q->absmax2, (size_t)q->n_blocks2);
        d.code8 = dput(lt_quant_code8(), 256);
    } else {
        d.absmax = dput(q->absmax, (size_t)q->n_blocks);
    }
    return d;
}
static void q_free(const lt_qdesc *d) {
    dfree((void *)d->data);
    if (d->qabsmax) dfree((void *)d->qabsmax), dfree((void *)d->absmax2), dfree((void *)d->code8);
    else dfree((void *)d->absmax);
}

/* dequantize_rows: bit for bit the reference (NF4/FP4/int8, with and without double quantization,
 * blocksizes 64 and 128, uniform inputs and inputs with a wide range of block maxima; row ranges: all,
 * one row, the middle, the last row) */
START_TEST(test_dequantize_rows) {
    const int rows = 37, cols = 192, ranges[][2] = {{0, 37}, {3, 4}, {5, 30}, {36, 37}, {3, 31}};
    const size_t n = (size_t)rows * cols;
    float *xs[2] = {tu_frand(n, -2, 2), tu_fnew(n)};
    for (size_t i = 0; i < n; i++) xs[1][i] = sinf((float)i * 0.37f) * (1.0f + (float)(i % 97));
    const lt_quant_format fmts[] = {LT_QUANT_NF4, LT_QUANT_FP4, LT_QUANT_INT8};
    for (int in = 0; in < 2; in++)
        for (int f = 0; f < 3; f++)
            for (int dq = 0; dq < 2; dq++) {
                lt_quant_params p = {
                    .size = sizeof p, .format = fmts[f], .blocksize = in ? 128 : 64, .double_quant = dq};
                const int64_t shape[2] = {rows, cols};
                lt_qtensor *q;
                lt_error e = {0};
                ck_assert_int_eq(lt_qtensor_quantize_ex(xs[in], shape, 2, &p, NULL, &q, &e), LT_OK);
                const lt_qdesc h = lt_qtensor_desc(q);
                float *ref = tu_fnew(n);
                FOR_BE {
                    const lt_qdesc d = q_upload(q);
                    for (size_t r = 0; r < sizeof ranges / sizeof *ranges; r++) {
                        const int r0 = ranges[r][0], r1 = ranges[r][1];
                        const size_t nout = (size_t)(r1 - r0) * cols;
                        lt_ref_dequantize_rows(ref, &h, r0, r1);
                        float *dout = dnan(nout);
                        OPS->dequantize_rows(BE, dout, &d, r0, r1);
                        float *got = hget(dout, nout);
                        SAME(got, ref, nout, "dequantize_rows format %d dq %d blocksize %d rows %d..%d", (int)fmts[f],
                             dq, p.blocksize, r0, r1);
                        free(got);
                        dfree(dout);
                    }
                    SYNC_OK("dequantize_rows");
                    q_free(&d);
                }
                free(ref);
                lt_qtensor_free(q);
            }
    free(xs[0]);
    free(xs[1]);
}
END_TEST

/* gemm_q4_forward / backward (4-bit weights computed in bf16) vs the reference: test_gemm_bf16's bound
 * with W = the dequantized weight rounded to bf16. Odd shapes, M beyond one tile of rows, rows that are
 * not whole blocks (the CPU's portable packer) and rows that are (its AVX-512 one), NF4 and FP4 with and
 * without double quantization. */
START_TEST(test_gemm_q4) {
    static const int shapes[][3] = {{1, 64, 1}, {37, 192, 53}, {300, 128, 260}, {9, 200, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int v = 0; v < 4; v++) {
            const int N = shapes[s][0], in = shapes[s][1], out = shapes[s][2], step = N > 100 ? 13 : 1;
            float *W = tu_frand((size_t)out * in, -1, 1), *x = tu_frand((size_t)N * in, -2, 2);
            float *dy = tu_frand((size_t)N * out, -1, 1), *acc = tu_frand((size_t)N * in, -1, 1);
            lt_quant_params p = {.size = sizeof p,
                                 .format = v & 1 ? LT_QUANT_FP4 : LT_QUANT_NF4,
                                 .blocksize = 64,
                                 .double_quant = v >> 1};
            const int64_t shape[2] = {out, in};
            lt_qtensor *q;
            lt_error e = {0};
            ck_assert_int_eq(lt_qtensor_quantize_ex(W, shape, 2, &p, NULL, &q, &e), LT_OK);
            const lt_qdesc h = lt_qtensor_desc(q);
            float *Wd = tu_fnew((size_t)out * in);
            lt_qdesc_dequantize_range(&h, Wd, 0, (int64_t)out * in);
            /* the reference and the sums of |products| of the rows checked: fwd (N,out), bwd (N,in) */
            float *yr = tu_fnew((size_t)N * out), *dxr[2] = {tu_fnew((size_t)N * in), tu_fdup(acc, (size_t)N * in)};
            double *sf = calloc((size_t)N * out, sizeof *sf), *sb = calloc((size_t)N * in, sizeof *sb);
            lt_ref_gemm_q4_forward(yr, x, &h, N, in, out);
            for (int a = 0; a < 2; a++) lt_ref_gemm_q4_backward(dxr[a], dy, &h, N, in, out, a);
            for (int n = 0; n < N; n += step)
                for (int o = 0; o < out; o++)
                    for (int i = 0; i < in; i++) {
                        const double w = bf16_of(Wd[(size_t)o * in + i]);
                        sf[(size_t)n * out + o] += fabs(bf16_of(x[(size_t)n * in + i]) * w);
                        sb[(size_t)n * in + i] += fabs(bf16_of(dy[(size_t)n * out + o]) * w);
                    }
            FOR_BE {
                const lt_qdesc d = q_upload(q);
                const int tile_rows = 7; /* several tiles per weight, a partial last one */
                float *tile = dnan((size_t)tile_rows * in);
                float *dx_ = dput(x, (size_t)N * in), *ddy = dput(dy, (size_t)N * out), *dyv = dnan((size_t)N * out);
                for (int accumulate = 0; accumulate < 2; accumulate++) {
                    float *ddx = accumulate ? dput(acc, (size_t)N * in) : dnan((size_t)N * in);
                    OPS->gemm_q4_forward(BE, dyv, dx_, &d, N, in, out, tile, tile_rows);
                    OPS->gemm_q4_backward(BE, ddx, ddy, &d, N, in, out, accumulate, tile, tile_rows);
                    SYNC_OK("gemm_q4");
                    float *y = hget(dyv, (size_t)N * out), *dx = hget(ddx, (size_t)N * in);
                    const float *xr = dxr[accumulate];
                    for (int n = 0; n < N; n += step) {
                        for (int o = 0; o < out; o++) {
                            const size_t j = (size_t)n * out + o;
                            const double tol = cur->bf16_bound * (in + 2) * ldexp(1.0, -24) * sf[j] + 1e-30;
                            TU_EXPECT(fabs((double)y[j] - yr[j]) <= tol + 1e-7 * fabs(yr[j]),
                                      "%s gemm_q4_forward v%d %dx%dx%d [%d,%d]: %.9g vs %.9g", NM, v, N, in, out, n, o,
                                      y[j], yr[j]);
                        }
                        for (int i = 0; i < in; i++) {
                            const size_t j = (size_t)n * in + i;
                            const double sa = sb[j] + (accumulate ? fabs(acc[j]) : 0.0);
                            const double tol = cur->bf16_bound * (out + 3) * ldexp(1.0, -24) * sa + 1e-30;
                            TU_EXPECT(fabs((double)dx[j] - xr[j]) <= tol + 1e-7 * fabs(xr[j]),
                                      "%s gemm_q4_backward v%d %dx%dx%d acc %d [%d,%d]: %.9g vs %.9g", NM, v, N, in,
                                      out, accumulate, n, i, dx[j], xr[j]);
                        }
                    }
                    free(y);
                    free(dx);
                    dfree(ddx);
                }
                dfree(tile);
                dfree(dx_);
                dfree(ddy);
                dfree(dyv);
                q_free(&d);
            }
            lt_qtensor_free(q);
            free(Wd);
            free(W);
            free(x);
            free(dy);
            free(acc);
            free(yr);
            free(dxr[0]);
            free(dxr[1]);
            free(sf);
            free(sb);
        }
}
END_TEST

/* embedding_forward_bf16: rows of a table packed by the backend's bf16_weight_pack, as f32: bit for bit
 * the reference's reading of its own packing of the same table (a row in the last, partial block) */
START_TEST(test_embedding_bf16) {
    const int V = 70, C = 45, N = 33;
    float *table = tu_frand((size_t)V * C, -3, 3), *ref = tu_fnew((size_t)N * C);
    void *rt = malloc(lt_ref_bf16_weight_bytes(V, C));
    lt_ref_bf16_weight_pack(rt, table, V, C);
    int32_t ids[33];
    for (int i = 0; i < N; i++) ids[i] = tu_irand(V);
    ids[0] = V - 1;
    lt_ref_embedding_forward_bf16(ref, ids, rt, N, C);
    FOR_BE {
        void *dt = dalloc(OPS->bf16_weight_bytes(BE, V, C));
        OPS->bf16_weight_pack(BE, dt, table, V, C);
        int32_t *did = dputi(ids, (size_t)N);
        float *dout = dnan((size_t)N * C);
        OPS->embedding_forward_bf16(BE, dout, did, dt, N, C);
        float *got = hget(dout, (size_t)N * C);
        SYNC_OK("embedding_forward_bf16");
        SAME(got, ref, (size_t)N * C, "embedding_forward_bf16");
        free(got);
        dfree(dt);
        dfree(did);
        dfree(dout);
    }
    free(table);
    free(ref);
    free(rt);
}
END_TEST

/* ---- ops in sequence, several host threads, thread counts ------------------------------------------------------ */

/* an op sequence in stream order: results visible to the next op without a sync; freed memory reused */
START_TEST(test_stream_order) {
    const size_t n = 1u << 22;
    float *x = tu_frand(n, -1, 1);
    FOR_BE_ALL {
        float *d = dput(x, n), *e = dalloc(n * sizeof(float));
        for (int i = 0; i < 20; i++) { /* allocate, use and free in a loop */
            float *t = dalloc(n * sizeof(float));
            OPS->copy(BE, t, d, n * sizeof(float));
            OPS->scale(BE, n, 2.0f, t);
            OPS->copy(BE, e, t, n * sizeof(float));
            OPS->free(BE, t);
        }
        float *h = hget(e, n);
        for (size_t i = 0; i < n; i++) TU_EXPECT(h[i] == 2.0f * x[i], "%s stream order [%zu]", NM, i);
        SYNC_OK("stream order");
        free(h);
        dfree(d);
        dfree(e);
    }
    free(x);
}
END_TEST

/* Each worker repeats, on its own inputs and outputs, ops that use the backend's shared state (CUDA:
 * cuBLAS handle, workspace, reduction buffers; CPU: OpenMP teams from several threads); every result
 * must equal what the same calls give with one thread, bit for bit. Inputs differ per worker (worker 0
 * has a NaN in y) so that a result computed from another worker's data would show. */
#define CONC_THREADS 4
#define CONC_ITERS 25
#define CONC_N 257
#define CONC_C 1030
typedef struct {
    lt_backend *be;
    const float *g, *w, *rs; /* shared inputs (backend memory) */
    float *x, *y;            /* this worker's inputs */
    float *dinp, *dw, *C;    /* this worker's outputs */
    double want_ss;
    int want_finite, bad;
} conc_arg;

static void conc_step(conc_arg *a) {
    lt_backend *be = a->be;
    be->ops->zero(be, a->dinp, (size_t)CONC_N * CONC_C * sizeof(float));
    be->ops->zero(be, a->dw, CONC_C * sizeof(float));
    be->ops->rmsnorm_backward(be, a->dinp, a->dw, a->g, a->x, a->w, a->rs, CONC_N, CONC_C);
    be->ops->gemm(be, 0, 1, 64, 64, CONC_C, 1.0f, a->g, CONC_C, a->x, CONC_C, 0.0f, a->C, 64);
}
static void *conc_worker(void *p) {
    conc_arg *a = p;
    for (int it = 0; it < CONC_ITERS; it++) {
        conc_step(a);
        if (a->be->ops->sumsq(a->be, (size_t)CONC_N * CONC_C, a->x) != a->want_ss) a->bad++;
        if (a->be->ops->all_finite(a->be, CONC_C, a->y) != a->want_finite) a->bad++;
    }
    return NULL;
}

START_TEST(test_concurrent_threads) {
    const size_t nc = (size_t)CONC_N * CONC_C;
    float *g = tu_frand(nc, -1, 1), *w = tu_frand(CONC_C, 0.5f, 1.5f), *rs = tu_frand(CONC_N, 0.5f, 2);
    float *xs[CONC_THREADS], *ys[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        xs[i] = tu_frand(nc, -1, 1), ys[i] = tu_frand(CONC_C, -1, 1);
        if (i == 0) ys[i][CONC_C / 2] = NAN;
    }
    FOR_BE {
        float *dg = dput(g, nc), *dw = dput(w, CONC_C), *drs = dput(rs, CONC_N);
        conc_arg args[CONC_THREADS];
        float *want_di[CONC_THREADS], *want_dw[CONC_THREADS], *want_c[CONC_THREADS];
        for (int i = 0; i < CONC_THREADS; i++) {
            args[i] = (conc_arg){BE,
                                 dg,
                                 dw,
                                 drs,
                                 dput(xs[i], nc),
                                 dput(ys[i], CONC_C),
                                 dalloc(nc * sizeof(float)),
                                 dalloc(CONC_C * sizeof(float)),
                                 dalloc(64 * 64 * sizeof(float)),
                                 0.0,
                                 0,
                                 0};
            conc_step(&args[i]); /* one thread alone */
            args[i].want_ss = OPS->sumsq(BE, nc, args[i].x);
            args[i].want_finite = OPS->all_finite(BE, CONC_C, args[i].y);
            ck_assert_int_eq(args[i].want_finite, i != 0);
            want_di[i] = hget(args[i].dinp, nc);
            want_dw[i] = hget(args[i].dw, CONC_C);
            want_c[i] = hget(args[i].C, 64 * 64);
        }
        pthread_t th[CONC_THREADS];
        for (int i = 0; i < CONC_THREADS; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, conc_worker, &args[i]), 0);
        for (int i = 0; i < CONC_THREADS; i++) pthread_join(th[i], NULL);
        SYNC_OK("concurrent threads");
        for (int i = 0; i < CONC_THREADS; i++) {
            ck_assert_msg(args[i].bad == 0, "%s thread %d: %d sumsq/all_finite results differ from one thread alone",
                          NM, i, args[i].bad);
            float *di = hget(args[i].dinp, nc), *dwv = hget(args[i].dw, CONC_C), *c = hget(args[i].C, 64 * 64);
            SAME(di, want_di[i], nc, "thread %d rmsnorm dinp", i);
            SAME(dwv, want_dw[i], (size_t)CONC_C, "thread %d rmsnorm dweight", i);
            SAME(c, want_c[i], 64 * 64, "thread %d gemm", i);
            free(di);
            free(dwv);
            free(c);
            free(want_di[i]);
            free(want_dw[i]);
            free(want_c[i]);
            dfree(args[i].x);
            dfree(args[i].y);
            dfree(args[i].dinp);
            dfree(args[i].dw);
            dfree(args[i].C);
        }
        dfree(dg);
        dfree(dw);
        dfree(drs);
    }
    for (int i = 0; i < CONC_THREADS; i++) free(xs[i]), free(ys[i]);
    free(g);
    free(w);
    free(rs);
}
END_TEST

/* The thread count of a backend does not change its results: an instance with 1 thread and one with 5,
 * bit for bit (the reductions: sumsq, rmsnorm dweight, attention backward with grouped heads). */
START_TEST(test_thread_invariance) {
    const size_t n = 3000017;
    const int N = 257, C = 1030, B = 2, T = 77, NH = 4, NKV = 2, HD = 32;
    const size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float *x = tu_frand(n, -1, 1);
    float *in = tu_frand((size_t)N * C, -1, 1), *g = tu_frand((size_t)N * C, -1, 1), *w = tu_frand(C, 0.5f, 1.5f);
    float *rs = tu_frand(N, 0.5f, 2);
    float *q = tu_frand(nq, -1, 1), *k = tu_frand(nkv, -1, 1), *v = tu_frand(nkv, -1, 1), *dout = tu_frand(nq, -1, 1);
    int32_t ks[154];
    make_kv_start(ks, B, T, 1);
    FOR_BE_ALL {
        lt_backend *bs[2] = {NULL, NULL};
        const int nts[2] = {1, 5};
        float *r[2][8]; /* per instance: dinp, dweight, out, lse, dq, dk, dv */
        double ss[2];
        for (int j = 0; j < 2; j++) {
            char err[256] = "";
            ck_assert_msg(cur->create(cur, nts[j], &bs[j], err, sizeof err) == LT_OK, "%s: %s", NM, err);
            lt_backend *b = bs[j];
            float *dx = bput(b, x, n);
            ss[j] = b->ops->sumsq(b, n, dx);
            float *din = bput(b, in, (size_t)N * C), *dg = bput(b, g, (size_t)N * C), *dw = bput(b, w, C);
            float *drs = bput(b, rs, N), *di = balloc(b, (size_t)N * C * 4), *dwt = balloc(b, (size_t)C * 4);
            b->ops->zero(b, di, (size_t)N * C * 4);
            b->ops->zero(b, dwt, (size_t)C * 4);
            b->ops->rmsnorm_backward(b, di, dwt, dg, din, dw, drs, N, C);
            r[j][0] = bget(b, di, (size_t)N * C), r[j][1] = bget(b, dwt, C);
            float *dq_ = bput(b, q, nq), *dk_ = bput(b, k, nkv), *dv_ = bput(b, v, nkv), *ddo = bput(b, dout, nq);
            int32_t *dks = balloc(b, sizeof ks);
            b->ops->upload(b, dks, ks, sizeof ks);
            float *o = balloc(b, nq * 4), *l = balloc(b, nl * 4), *gq = balloc(b, nq * 4), *gk = balloc(b, nkv * 4);
            float *gv = balloc(b, nkv * 4), *scr = balloc(b, b->ops->attention_backward_scratch(b, B, T, NH, HD) * 4);
            b->ops->attention_forward(b, o, l, dq_, dk_, dv_, dks, B, T, NH, NKV, HD, 0.17f);
            b->ops->attention_backward(b, gq, gk, gv, ddo, dq_, dk_, dv_, o, l, dks, B, T, NH, NKV, HD, 0.17f, scr);
            r[j][2] = bget(b, o, nq), r[j][3] = bget(b, l, nl), r[j][4] = bget(b, gq, nq);
            r[j][5] = bget(b, gk, nkv), r[j][6] = bget(b, gv, nkv);
            ck_assert_msg(b->ops->sync(b) == LT_OK, "%s (%d threads): sync", NM, nts[j]);
            void *bufs[] = {dx, din, dg, dw, drs, di, dwt, dq_, dk_, dv_, ddo, dks, o, l, gq, gk, gv, scr};
            for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) b->ops->free(b, bufs[i]);
        }
        ck_assert_msg(ss[0] == ss[1], "%s sumsq 1 vs 5 threads", NM);
        SAME(r[1][0], r[0][0], (size_t)N * C, "rmsnorm dinp 1 vs 5 threads");
        SAME(r[1][1], r[0][1], (size_t)C, "rmsnorm dweight 1 vs 5 threads");
        SAME(r[1][2], r[0][2], nq, "attention out 1 vs 5 threads");
        SAME(r[1][3], r[0][3], nl, "attention lse 1 vs 5 threads");
        SAME(r[1][4], r[0][4], nq, "attention dq 1 vs 5 threads");
        SAME(r[1][5], r[0][5], nkv, "attention dk 1 vs 5 threads");
        SAME(r[1][6], r[0][6], nkv, "attention dv 1 vs 5 threads");
        for (int j = 0; j < 2; j++) {
            for (int i = 0; i < 7; i++) free(r[j][i]);
            bs[j]->ops->destroy(bs[j]);
        }
    }
    free(x);
    free(in);
    free(g);
    free(w);
    free(rs);
    free(q);
    free(k);
    free(v);
    free(dout);
}
END_TEST

/* ---- run_groups: groups of independent work (the experts of an MoE layer) ------------------------------------
 * Group g owns rows off[g] .. off[g+1] of x (rows, C) and its own weight W_g (C, C) and gradient dW_g, as an
 * expert does: y_g = x_g W_g^T (assigned), y_g += 0.5 x_g, dW_g += y_g^T x_g (accumulated). Some groups are
 * empty, some large enough that a GEMM alone would be split over the threads (work > 2e6). Every group must
 * run exactly once; results within gemm's 1e-4 of the reference, and bit for bit the same with 1 thread as
 * with N_THREADS (a group's ops run on one thread whichever it is). */
#define RG_G 29
typedef struct rg_ctx {
    lt_backend *be;
    const int *off;
    int C;
    const float *x, *W;
    float *y, *dW;
    int calls[RG_G]; /* counted atomically: groups may run at the same time */
} rg_ctx;

static void rg_group(void *ctx, int g) {
    rg_ctx *c = ctx;
    if (g < 0 || g >= RG_G) return; /* counted as missing below */
    __atomic_fetch_add(&c->calls[g], 1, __ATOMIC_RELAXED);
    lt_backend *be = c->be;
    const int C = c->C, o = c->off[g], n = c->off[g + 1] - o;
    if (n == 0) return;
    const float *xg = c->x + (size_t)o * C, *Wg = c->W + (size_t)g * C * C;
    float *yg = c->y + (size_t)o * C, *dWg = c->dW + (size_t)g * C * C;
    be->ops->gemm(be, 0, 1, n, C, C, 1.0f, xg, C, Wg, C, 0.0f, yg, C);
    be->ops->axpy(be, (size_t)n * C, 0.5f, xg, yg);
    be->ops->gemm(be, 1, 0, C, C, n, 1.0f, yg, C, xg, C, 1.0f, dWg, C);
}

START_TEST(test_run_groups) {
    const int C = quick() ? 48 : 128;
    int off[RG_G + 1] = {0};
    for (int g = 0; g < RG_G; g++) off[g + 1] = off[g] + (g % 5 == 3 ? 0 : 1 + (g * 53) % 300);
    const int rows = off[RG_G];
    const size_t nx = (size_t)rows * C, nw = (size_t)RG_G * C * C;
    float *x = tu_frand(nx, -1, 1), *W = tu_frand(nw, -0.2f, 0.2f), *dW0 = tu_frand(nw, -1, 1);
    float *yr = tu_fnew(nx), *dWr = tu_fdup(dW0, nw);
    for (int g = 0; g < RG_G; g++) { /* the reference, group by group */
        const int o = off[g], n = off[g + 1] - o;
        float *yg = yr + (size_t)o * C;
        const float *xg = x + (size_t)o * C;
        lt_ref_gemm(0, 1, n, C, C, 1.0f, xg, C, W + (size_t)g * C * C, C, 0.0f, yg, C);
        for (size_t i = 0; i < (size_t)n * C; i++) yg[i] += 0.5f * xg[i];
        lt_ref_gemm(1, 0, C, C, n, 1.0f, yg, C, xg, C, 1.0f, dWr + (size_t)g * C * C, C);
    }
    FOR_BE {
        float *got[2][2];
        const int nts[2] = {N_THREADS, 1};
        for (int j = 0; j < 2; j++) {
            lt_backend *b = BE;
            char err[256] = "";
            if (j == 1) ck_assert_msg(cur->create(cur, 1, &b, err, sizeof err) == LT_OK, "%s: %s", NM, err);
            rg_ctx c = {b, off, C, bput(b, x, nx), bput(b, W, nw), NULL, bput(b, dW0, nw), {0}};
            float *nan = tu_fconst(nx, NAN);
            c.y = bput(b, nan, nx);
            free(nan);
            b->ops->run_groups(b, 0, rg_group, &c); /* no group: nothing runs */
            for (int g = 0; g < RG_G; g++) ck_assert_msg(c.calls[g] == 0, "%s: run_groups of 0 ran group %d", NM, g);
            b->ops->run_groups(b, RG_G, rg_group, &c);
            for (int g = 0; g < RG_G; g++)
                ck_assert_msg(c.calls[g] == 1, "%s (%d threads): group %d ran %d times", NM, nts[j], g, c.calls[g]);
            got[j][0] = bget(b, c.y, nx);
            got[j][1] = bget(b, c.dW, nw);
            ck_assert_msg(b->ops->sync(b) == LT_OK, "%s (%d threads): run_groups: sync", NM, nts[j]);
            b->ops->free(b, (void *)c.x);
            b->ops->free(b, (void *)c.W);
            b->ops->free(b, c.y);
            b->ops->free(b, c.dW);
            if (j == 1) b->ops->destroy(b);
        }
        for (int i = 0; i < rows; i++)
            CLOSE(got[0][0] + (size_t)i * C, yr + (size_t)i * C, C, 1e-4, "run_groups y row %d", i);
        for (int i = 0; i < RG_G * C; i++)
            CLOSE(got[0][1] + (size_t)i * C, dWr + (size_t)i * C, C, 1e-4, "run_groups dW row %d", i);
        SAME(got[1][0], got[0][0], nx, "run_groups y 1 vs %d threads", N_THREADS);
        SAME(got[1][1], got[0][1], nw, "run_groups dW 1 vs %d threads", N_THREADS);
        for (int j = 0; j < 2; j++) free(got[j][0]), free(got[j][1]);
    }
    free(x);
    free(W);
    free(dW0);
    free(yr);
    free(dWr);
}
END_TEST

/* ---- against PyTorch (goldens from tests/python/make_op_goldens.py) ------------------------------------------
 * float32 inputs, a random upstream gradient, forward outputs and gradients from torch autograd in float64
 * (stored as float32); every backend must give max|got - torch| / max|torch| <= 1e-4 for each output and
 * gradient. Outputs and assigned gradients start as NaN; accumulating gradients start at zero and a
 * second backward must give 2x. Missing goldens are a FAILURE (not a skip). */

#define GOLDEN_RTOL 1e-4
#define GOLDEN_DIR LT_TEST_DATA_DIR "/ops"

static lt_st_file *golden_open(const char *op) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", GOLDEN_DIR, op);
    ck_assert_msg(access(path, R_OK) == 0,
                  "golden %s is missing: run `python tests/python/make_op_goldens.py %s` with the reference venv's "
                  "python (tests/run.sh does this before ctest)",
                  path, GOLDEN_DIR);
    lt_error err = {0};
    lt_st_file *f = NULL;
    lt_status st = lt_st_open(path, 0, &f, &err);
    ck_assert_msg(st == LT_OK && f, "golden %s: %s (regenerate with tests/python/make_op_goldens.py %s)", path, err.msg,
                  GOLDEN_DIR);
    return f;
}

/* Tensor `name` of dtype dt with exactly the dims given (ndim of them); the file must have it. */
static const void *gget(lt_st_file *f, const char *name, lt_dtype dt, const int64_t *dims, int ndim) {
    const lt_st_tensor *t = tu_st_need(f, name);
    ck_assert_msg(t->dtype == dt, "%s: '%s' has dtype %s, want %s", lt_st_path(f), name, lt_dtype_name(t->dtype),
                  lt_dtype_name(dt));
    ck_assert_msg(t->ndim == ndim, "%s: '%s' has %d dims, want %d", lt_st_path(f), name, t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        ck_assert_msg(t->shape[i] == dims[i], "%s: '%s' dim %d is %lld, want %lld", lt_st_path(f), name, i,
                      (long long)t->shape[i], (long long)dims[i]);
    return t->data;
}
#define DIMS(...) ((const int64_t[]){__VA_ARGS__}), (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
#define GF(f, name, ...) ((const float *)gget(f, name, LT_DT_F32, DIMS(__VA_ARGS__)))
#define GI(f, name, ...) ((const int32_t *)gget(f, name, LT_DT_I32, DIMS(__VA_ARGS__)))
static float gscalar(lt_st_file *f, const char *name) { return *(const float *)gget(f, name, LT_DT_F32, NULL, 0); }

static float *fscaled(const float *x, size_t n, float a) {
    float *p = tu_fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = a * x[i];
    return p;
}

/* the backend result d (n floats) against torch: max|got - want| / max|want| <= GOLDEN_RTOL (NaN fails) */
static void expect_torch(const char *what, const float *d, const float *want, size_t n) {
    float *got = hget(d, n);
    const double e = tu_max_rel_err(got, want, n);
    if (getenv("LT_TEST_VERBOSE")) fprintf(stderr, "  %-16s %-34s rel err %.3g\n", NM, what, e);
    ck_assert_msg(e <= GOLDEN_RTOL, "%s: %s differs from torch: max|diff|/max|torch| = %.3g > %.0e", NM, what, e,
                  GOLDEN_RTOL);
    free(got);
}
static float *dzero(size_t n) {
    float *d = dalloc(n * sizeof(float));
    OPS->zero(BE, d, n * sizeof(float));
    return d;
}

static const char *const golden_ops[] = {"rmsnorm", "rope", "attention", "swiglu", "cross_entropy", "lora_linear"};

START_TEST(test_goldens_present) {
    for (size_t i = 0; i < sizeof golden_ops / sizeof golden_ops[0]; i++) lt_st_close(golden_open(golden_ops[i]));
}
END_TEST

START_TEST(test_golden_rmsnorm) {
    lt_st_file *f = golden_open("rmsnorm");
    enum { N = 7, C = 96 };
    const float *inp = GF(f, "inp", N, C), *w = GF(f, "weight", C), *dout = GF(f, "dout", N, C);
    const float *g_out = GF(f, "out", N, C), *g_rstd = GF(f, "rstd", N), *g_dinp = GF(f, "dinp", N, C);
    const float *g_dw = GF(f, "dweight", C);
    const float eps = gscalar(f, "eps");
    float *g_dinp2 = fscaled(g_dinp, N * C, 2.0f), *g_dw2 = fscaled(g_dw, C, 2.0f);
    FOR_BE {
        float *di = dput(inp, N * C), *dw = dput(w, C), *ddo = dput(dout, N * C);
        float *out = dnan(N * C), *rstd = dnan(N), *dinp = dzero(N * C), *dwt = dzero(C);
        OPS->rmsnorm_forward(BE, out, rstd, di, dw, N, C, eps);
        expect_torch("rmsnorm out", out, g_out, N * C);
        expect_torch("rmsnorm rstd", rstd, g_rstd, N);
        /* dinp and dweight accumulate: from zero, then a second backward doubles them */
        OPS->rmsnorm_backward(BE, dinp, dwt, ddo, di, dw, rstd, N, C);
        expect_torch("rmsnorm dinp", dinp, g_dinp, N * C);
        expect_torch("rmsnorm dweight", dwt, g_dw, C);
        OPS->rmsnorm_backward(BE, dinp, dwt, ddo, di, dw, rstd, N, C);
        expect_torch("rmsnorm dinp (accumulated x2)", dinp, g_dinp2, N * C);
        expect_torch("rmsnorm dweight (accumulated x2)", dwt, g_dw2, C);
        /* frozen norm: dweight NULL */
        OPS->zero(BE, dinp, N * C * sizeof(float));
        OPS->rmsnorm_backward(BE, dinp, NULL, ddo, di, dw, rstd, N, C);
        expect_torch("rmsnorm dinp (dweight NULL)", dinp, g_dinp, N * C);
        SYNC_OK("golden rmsnorm");
        dfree(di);
        dfree(dw);
        dfree(ddo);
        dfree(out);
        dfree(rstd);
        dfree(dinp);
        dfree(dwt);
    }
    free(g_dinp2);
    free(g_dw2);
    lt_st_close(f);
}
END_TEST

START_TEST(test_golden_rope) {
    lt_st_file *f = golden_open("rope");
    enum { N = 9, NHd = 3, HD = 16, n = N * NHd * HD };
    const float *x = GF(f, "x", N, NHd, HD), *dout = GF(f, "dout", N, NHd, HD);
    const int32_t *pos = GI(f, "pos", N);
    static const int rots[] = {16, 8};
    for (int c = 0; c < 2; c++) {
        const int rot = rots[c];
        char nm[3][32], what[2][64];
        snprintf(nm[0], 32, "r%d.inv_freq", rot);
        snprintf(nm[1], 32, "r%d.out", rot);
        snprintf(nm[2], 32, "r%d.dx", rot);
        const float *inv = GF(f, nm[0], rot / 2), *g_out = GF(f, nm[1], N, NHd, HD), *g_dx = GF(f, nm[2], N, NHd, HD);
        /* the library's own inv_freq (config.c) is transformers' float32 one, bit for bit */
        lt_model_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.head_dim = HD;
        cfg.partial_rotary_factor = (double)rot / HD;
        cfg.rope_theta = gscalar(f, "theta");
        cfg.rope_type = LT_ROPE_DEFAULT;
        float lib_inv[8];
        ck_assert_int_eq(lt_rope_inv_freq(&cfg, lib_inv, 8), rot / 2);
        for (int j = 0; j < rot / 2; j++)
            ck_assert_msg(lib_inv[j] == inv[j], "lt_rope_inv_freq (rot_dim %d)[%d] = %.9g, transformers %.9g", rot, j,
                          lib_inv[j], inv[j]);
        snprintf(what[0], 64, "rope out (rot_dim %d)", rot);
        snprintf(what[1], 64, "rope dx (rot_dim %d)", rot);
        FOR_BE {
            float *y = dput(x, n), *dx = dput(dout, n), *dinv = dput(inv, rot / 2);
            int32_t *dpos = dputi(pos, N);
            OPS->rope_forward(BE, y, dpos, dinv, N, NHd, HD, rot);
            OPS->rope_backward(BE, dx, dpos, dinv, N, NHd, HD, rot);
            expect_torch(what[0], y, g_out, n);
            expect_torch(what[1], dx, g_dx, n);
            SYNC_OK("golden rope");
            dfree(y);
            dfree(dx);
            dfree(dinv);
            dfree(dpos);
        }
    }
    lt_st_close(f);
}
END_TEST

enum { AB = 2, AT = 11, ANH = 4, ANKV = 2, AHD = 16 };

START_TEST(test_golden_attention) {
    lt_st_file *f = golden_open("attention");
    const size_t nq = (size_t)AB * AT * ANH * AHD, nk = (size_t)AB * AT * ANKV * AHD, nl = (size_t)AB * ANH * AT;
    const float *q = GF(f, "q", AB, AT, ANH, AHD), *k = GF(f, "k", AB, AT, ANKV, AHD),
                *v = GF(f, "v", AB, AT, ANKV, AHD);
    const float *dout = GF(f, "dout", AB, AT, ANH, AHD);
    const int32_t *ks = GI(f, "kv_start", AB * AT);
    const float *g_out = GF(f, "out", AB, AT, ANH, AHD), *g_lse = GF(f, "lse", AB, ANH, AT);
    const float *g_dq = GF(f, "dq", AB, AT, ANH, AHD), *g_dk = GF(f, "dk", AB, AT, ANKV, AHD);
    const float *g_dv = GF(f, "dv", AB, AT, ANKV, AHD);
    const float scale = gscalar(f, "scale");
    ck_assert_float_eq(scale, 1.0f / sqrtf((float)AHD));
    int packed = 0;
    for (int i = 0; i < AB * AT; i++) packed |= ks[i] > 0;
    ck_assert_msg(packed, "attention golden has no packed boundary (kv_start all 0)");
    FOR_BE_ALL {
        float *dq_ = dput(q, nq), *dk_ = dput(k, nk), *dv_ = dput(v, nk), *ddo = dput(dout, nq);
        int32_t *dks = dputi(ks, AB * AT);
        float *out = dnan(nq), *lse = dnan(nl), *dq = dnan(nq), *dk = dnan(nk), *dv = dnan(nk);
        OPS->attention_forward(BE, out, lse, dq_, dk_, dv_, dks, AB, AT, ANH, ANKV, AHD, scale);
        expect_torch("attention out", out, g_out, nq);
        expect_torch("attention lse", lse, g_lse, nl);
        float *scratch = dnan(OPS->attention_backward_scratch(BE, AB, AT, ANH, AHD));
        OPS->attention_backward(BE, dq, dk, dv, ddo, dq_, dk_, dv_, out, lse, dks, AB, AT, ANH, ANKV, AHD, scale,
                                scratch);
        expect_torch("attention dq", dq, g_dq, nq);
        expect_torch("attention dk", dk, g_dk, nk);
        expect_torch("attention dv", dv, g_dv, nk);
        SYNC_OK("golden attention");
        dfree(dq_);
        dfree(dk_);
        dfree(dv_);
        dfree(ddo);
        dfree(dks);
        dfree(out);
        dfree(lse);
        dfree(dq);
        dfree(dk);
        dfree(dv);
        dfree(scratch);
    }
    lt_st_close(f);
}
END_TEST

START_TEST(test_golden_swiglu) {
    lt_st_file *f = golden_open("swiglu");
    enum { n = 300 };
    const float *gate = GF(f, "gate", n), *up = GF(f, "up", n), *dout = GF(f, "dout", n);
    const float *g_out = GF(f, "out", n), *g_dg = GF(f, "dgate", n), *g_du = GF(f, "dup", n);
    FOR_BE {
        float *dgate = dput(gate, n), *dup_ = dput(up, n), *ddo = dput(dout, n);
        float *out = dnan(n), *dg = dnan(n), *du = dnan(n);
        OPS->swiglu_forward(BE, out, dgate, dup_, n);
        OPS->swiglu_backward(BE, dg, du, ddo, dgate, dup_, n);
        expect_torch("swiglu out", out, g_out, n);
        expect_torch("swiglu dgate", dg, g_dg, n);
        expect_torch("swiglu dup", du, g_du, n);
        /* in place: dgate/dup alias gate/up (allowed by backend.h) */
        OPS->swiglu_backward(BE, dgate, dup_, ddo, dgate, dup_, n);
        expect_torch("swiglu dgate (in place)", dgate, g_dg, n);
        expect_torch("swiglu dup (in place)", dup_, g_du, n);
        SYNC_OK("golden swiglu");
        dfree(dgate);
        dfree(dup_);
        dfree(ddo);
        dfree(out);
        dfree(dg);
        dfree(du);
    }
    lt_st_close(f);
}
END_TEST

START_TEST(test_golden_cross_entropy) {
    lt_st_file *f = golden_open("cross_entropy");
    enum { n = 6, V = 50 };
    const float *logits = GF(f, "logits", n, V), *g_loss = GF(f, "losses", n), *g_dl = GF(f, "dlogits", n, V);
    const int32_t *tg = GI(f, "targets", n);
    int ignored = -1;
    for (int i = 0; i < n; i++)
        if (tg[i] == -100) ignored = i;
    ck_assert_msg(ignored >= 0, "cross_entropy golden has no ignored (-100) row");
    float *g_dl_q = fscaled(g_dl, n * V, 0.25f);
    FOR_BE {
        float *lg = dput(logits, n * V), *loss = dnan(n);
        int32_t *dtg = dputi(tg, n);
        OPS->cross_entropy(BE, lg, loss, dtg, n, V, 1.0f);
        expect_torch("cross_entropy losses", loss, g_loss, n);
        expect_torch("cross_entropy dlogits", lg, g_dl, n * V);
        float *hl = hget(loss, n), *hg = hget(lg, n * V);
        ck_assert_msg(hl[ignored] == 0.0f, "%s: ignored row's loss %g != 0", NM, hl[ignored]);
        for (int j = 0; j < V; j++)
            ck_assert_msg(hg[ignored * V + j] == 0.0f, "%s: ignored row's gradient is not zero", NM);
        free(hl);
        free(hg);
        /* grad_scale scales the gradient; 0 leaves the logits alone */
        OPS->upload(BE, lg, logits, n * V * sizeof(float));
        OPS->cross_entropy(BE, lg, loss, dtg, n, V, 0.25f);
        expect_torch("cross_entropy dlogits (grad_scale 0.25)", lg, g_dl_q, n * V);
        OPS->upload(BE, lg, logits, n * V * sizeof(float));
        dfree(loss);
        loss = dnan(n);
        OPS->cross_entropy(BE, lg, loss, dtg, n, V, 0.0f);
        expect_torch("cross_entropy losses (grad_scale 0)", loss, g_loss, n);
        hg = hget(lg, n * V);
        ck_assert_msg(memcmp(hg, logits, n * V * sizeof(float)) == 0, "%s: grad_scale 0 modified the logits", NM);
        free(hg);
        SYNC_OK("golden cross_entropy");
        dfree(lg);
        dfree(loss);
        dfree(dtg);
    }
    free(g_dl_q);
    lt_st_close(f);
}
END_TEST

/* lt_linear_forward without dropout, composed from gemm calls as the decoder does:
 * y = x W^T + s (x A^T) B^T; xa (N,r) = x A^T kept for backward. */
static void lora_forward(lt_backend *be, float *y, float *xa, const float *x, const float *W, const float *A,
                         const float *Bm, float s, int N, int in, int out, int r) {
    be->ops->gemm(be, 0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    be->ops->gemm(be, 0, 1, N, r, in, 1.0f, x, in, A, in, 0.0f, xa, r);
    be->ops->gemm(be, 0, 1, N, out, r, s, xa, r, Bm, r, 1.0f, y, out);
}

/* its backward without dropout: dx = (accumulate ? dx : 0) + dy W + s (dy B) A; dB += s dy^T xa;
 * dA += s (dy B)^T x. dr (N,r) is scratch. */
static void lora_backward(lt_backend *be, float *dx, int accumulate, const float *dy, const float *x, const float *W,
                          const float *A, const float *Bm, const float *xa, float *dA, float *dB, float *dr, float s,
                          int N, int in, int out, int r) {
    be->ops->gemm(be, 0, 0, N, in, out, 1.0f, dy, out, W, in, accumulate ? 1.0f : 0.0f, dx, in);
    be->ops->gemm(be, 0, 0, N, r, out, 1.0f, dy, out, Bm, r, 0.0f, dr, r); /* dr = dy B */
    be->ops->gemm(be, 1, 0, out, r, N, s, dy, out, xa, r, 1.0f, dB, r);    /* dB */
    be->ops->gemm(be, 0, 0, N, in, r, s, dr, r, A, in, 1.0f, dx, in);      /* dx += s dr A */
    be->ops->gemm(be, 1, 0, r, in, N, s, dr, r, x, in, 1.0f, dA, in);      /* dA */
}

START_TEST(test_golden_lora_linear) {
    lt_st_file *f = golden_open("lora_linear");
    enum { N = 5, IN = 12, OUT = 10, R = 3 };
    const float *x = GF(f, "x", N, IN), *W = GF(f, "W", OUT, IN), *A = GF(f, "A", R, IN), *Bm = GF(f, "B", OUT, R);
    const float *dy = GF(f, "dy", N, OUT), *g_y = GF(f, "y", N, OUT), *g_dx = GF(f, "dx", N, IN);
    const float *g_dA = GF(f, "dA", R, IN), *g_dB = GF(f, "dB", OUT, R);
    const float s = gscalar(f, "scaling");
    float *g_dx2 = fscaled(g_dx, N * IN, 2.0f), *g_dA2 = fscaled(g_dA, R * IN, 2.0f),
          *g_dB2 = fscaled(g_dB, OUT * R, 2.0f);
    FOR_BE {
        float *dx_ = dput(x, N * IN), *dW = dput(W, OUT * IN), *dA_ = dput(A, R * IN), *dB_ = dput(Bm, OUT * R);
        float *ddy = dput(dy, N * OUT);
        float *y = dnan(N * OUT), *xa = dnan(N * R), *dx = dnan(N * IN), *dr = dnan(N * R);
        float *dA = dzero(R * IN), *dB = dzero(OUT * R);
        lora_forward(BE, y, xa, dx_, dW, dA_, dB_, s, N, IN, OUT, R);
        expect_torch("lora linear y", y, g_y, N * OUT);
        lora_backward(BE, dx, 0, ddy, dx_, dW, dA_, dB_, xa, dA, dB, dr, s, N, IN, OUT, R);
        expect_torch("lora linear dx", dx, g_dx, N * IN);
        expect_torch("lora linear dA", dA, g_dA, R * IN);
        expect_torch("lora linear dB", dB, g_dB, OUT * R);
        /* second pass with accumulate: dx (residual-stream style), dA and dB double */
        lora_backward(BE, dx, 1, ddy, dx_, dW, dA_, dB_, xa, dA, dB, dr, s, N, IN, OUT, R);
        expect_torch("lora linear dx (accumulated x2)", dx, g_dx2, N * IN);
        expect_torch("lora linear dA (accumulated x2)", dA, g_dA2, R * IN);
        expect_torch("lora linear dB (accumulated x2)", dB, g_dB2, OUT * R);
        SYNC_OK("golden lora linear");
        dfree(dx_);
        dfree(dW);
        dfree(dA_);
        dfree(dB_);
        dfree(ddy);
        dfree(y);
        dfree(xa);
        dfree(dx);
        dfree(dr);
        dfree(dA);
        dfree(dB);
    }
    free(g_dx2);
    free(g_dA2);
    free(g_dB2);
    lt_st_close(f);
}
END_TEST

/* Plausible bugs must fail the 1e-4 comparison: the goldens are not too weak to notice them. */
START_TEST(test_goldens_discriminate) {
    { /* attention that ignores the packed boundary */
        lt_st_file *f = golden_open("attention");
        const size_t nq = (size_t)AB * AT * ANH * AHD, nl = (size_t)AB * ANH * AT;
        int32_t ks0[AB * AT] = {0};
        float *out = tu_fnew(nq), *lse = tu_fnew(nl);
        lt_ref_attention_forward(out, lse, GF(f, "q", AB, AT, ANH, AHD), GF(f, "k", AB, AT, ANKV, AHD),
                                 GF(f, "v", AB, AT, ANKV, AHD), ks0, AB, AT, ANH, ANKV, AHD, gscalar(f, "scale"));
        ck_assert(tu_max_rel_err(out, GF(f, "out", AB, AT, ANH, AHD), nq) > 10 * GOLDEN_RTOL);
        /* GQA mapping h % NKV instead of h / (NH/NKV): swap the kv heads of query heads 1 and 2 */
        const int32_t *ks = GI(f, "kv_start", AB * AT);
        float *qs = tu_fdup(GF(f, "q", AB, AT, ANH, AHD), nq);
        for (int t = 0; t < AB * AT; t++)
            for (int d = 0; d < AHD; d++) {
                float a = qs[((size_t)t * ANH + 1) * AHD + d];
                qs[((size_t)t * ANH + 1) * AHD + d] = qs[((size_t)t * ANH + 2) * AHD + d];
                qs[((size_t)t * ANH + 2) * AHD + d] = a;
            }
        lt_ref_attention_forward(out, lse, qs, GF(f, "k", AB, AT, ANKV, AHD), GF(f, "v", AB, AT, ANKV, AHD), ks, AB, AT,
                                 ANH, ANKV, AHD, gscalar(f, "scale"));
        /* undo the swap on the output; it matches only if heads 1 and 2 used the same kv head */
        for (int t = 0; t < AB * AT; t++)
            for (int d = 0; d < AHD; d++) {
                float a = out[((size_t)t * ANH + 1) * AHD + d];
                out[((size_t)t * ANH + 1) * AHD + d] = out[((size_t)t * ANH + 2) * AHD + d];
                out[((size_t)t * ANH + 2) * AHD + d] = a;
            }
        ck_assert(tu_max_rel_err(out, GF(f, "out", AB, AT, ANH, AHD), nq) > 10 * GOLDEN_RTOL);
        free(out);
        free(lse);
        free(qs);
        lt_st_close(f);
    }
    { /* rope with positions off by one, the angle in double, or the interleaved (GPT-J) pairing */
        lt_st_file *f = golden_open("rope");
        enum { N = 9, NHd = 3, HD = 16, n = N * NHd * HD };
        const float *x = GF(f, "x", N, NHd, HD), *g = GF(f, "r16.out", N, NHd, HD), *inv = GF(f, "r16.inv_freq", 8);
        const int32_t *pos = GI(f, "pos", N);
        int32_t pos1[N];
        for (int i = 0; i < N; i++) pos1[i] = pos[i] + 1;
        float *y = tu_fdup(x, n);
        lt_ref_rope_forward(y, pos1, inv, N, NHd, HD, 16);
        ck_assert(tu_max_rel_err(y, g, n) > 10 * GOLDEN_RTOL);
        /* the angle in double instead of HF's float32 (pos * inv_freq rounded to float) */
        for (int t = 0; t < N; t++)
            for (int h = 0; h < NHd; h++)
                for (int j = 0; j < HD / 2; j++) {
                    const float *xh = x + ((size_t)t * NHd + h) * HD;
                    double a = (double)pos[t] * (double)inv[j], x1 = xh[j], x2 = xh[j + HD / 2];
                    y[((size_t)t * NHd + h) * HD + j] = (float)(x1 * cos(a) - x2 * sin(a));
                    y[((size_t)t * NHd + h) * HD + j + HD / 2] = (float)(x2 * cos(a) + x1 * sin(a));
                }
        ck_assert(tu_max_rel_err(y, g, n) > GOLDEN_RTOL);
        /* interleaved pairing = HF pairing applied to channels permuted (0,2,4,..,1,3,5,..) */
        float *xp = tu_fnew(n);
        for (int t = 0; t < N * NHd; t++)
            for (int j = 0; j < HD / 2; j++) {
                xp[t * HD + j] = x[t * HD + 2 * j];
                xp[t * HD + HD / 2 + j] = x[t * HD + 2 * j + 1];
            }
        lt_ref_rope_forward(xp, pos, inv, N, NHd, HD, 16);
        for (int t = 0; t < N * NHd; t++)
            for (int j = 0; j < HD / 2; j++) {
                y[t * HD + 2 * j] = xp[t * HD + j];
                y[t * HD + 2 * j + 1] = xp[t * HD + HD / 2 + j];
            }
        ck_assert(tu_max_rel_err(y, g, n) > 10 * GOLDEN_RTOL);
        free(y);
        free(xp);
        lt_st_close(f);
    }
}
END_TEST

/* ---- the reference backward passes vs central finite differences ------------------------------------------------ */

/* L(x) = sum_i w_i f(x)_i, evaluated by `loss`; the analytic gradient `grad` is checked at every
 * element of x: |grad - fd| <= rtol max(|grad|, |fd|) + atol. Returns the number of mismatches. */
typedef double (*loss_fn)(void *ctx);
#define FD_H 1e-3f
#define FD_RTOL 1e-2
#define FD_ATOL 1e-3
static int fd_mismatches(float *x, size_t n, const float *grad, loss_fn loss, void *ctx, const char *what, int report) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float x0 = x[i], xp = x0 + FD_H, xm = x0 - FD_H;
        x[i] = xp;
        const double lp = loss(ctx);
        x[i] = xm;
        const double lm = loss(ctx);
        x[i] = x0;
        const double fd = (lp - lm) / ((double)xp - (double)xm);
        if (!(fabs(grad[i] - fd) <= FD_RTOL * fmax(fabs(grad[i]), fabs(fd)) + FD_ATOL)) {
            if (report && bad == 0)
                fprintf(stderr, "%s[%zu]: analytic %.7g, finite difference %.7g\n", what, i, grad[i], fd);
            bad++;
        }
    }
    return bad;
}
static double wsum(const float *w, const float *y, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)w[i] * y[i];
    return s;
}
#define FD_CHECK(x, n, grad, loss, ctx, what)                                                                        \
    ck_assert_msg(fd_mismatches(x, n, grad, loss, ctx, what, 1) == 0, "%s: analytic gradient != finite differences", \
                  what)

typedef struct {
    int N, C;
    float *x, *w, *wout, *out, *rstd;
} rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    lt_ref_rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return wsum(c->wout, c->out, (size_t)c->N * c->C);
}
START_TEST(test_fd_rmsnorm) {
    rms_ctx c = {3, 7, tu_frand(21, -2, 2), tu_frand(7, 0.5f, 1.5f), tu_frand(21, -1, 1), tu_fnew(21), tu_fnew(3)};
    float *dx = tu_fconst(21, 0.0f), *dw = tu_fconst(7, 0.0f);
    rms_loss(&c);
    lt_ref_rmsnorm_backward(dx, dw, c.wout, c.x, c.w, c.rstd, c.N, c.C);
    FD_CHECK(c.x, 21, dx, rms_loss, &c, "rmsnorm dinp");
    FD_CHECK(c.w, 7, dw, rms_loss, &c, "rmsnorm dweight");
    /* the check can fail: a gradient off by 5% is caught */
    for (int i = 0; i < 21; i++) dx[i] *= 1.05f;
    ck_assert_int_gt(fd_mismatches(c.x, 21, dx, rms_loss, &c, "", 0), 0);
    free(c.x);
    free(c.w);
    free(c.wout);
    free(c.out);
    free(c.rstd);
    free(dx);
    free(dw);
}
END_TEST

typedef struct {
    int N, NH, HD, rot;
    float *x, *y, *wout, *inv;
    int32_t *pos;
} rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->N * c->NH * c->HD;
    memcpy(c->y, c->x, n * sizeof(float));
    lt_ref_rope_forward(c->y, c->pos, c->inv, c->N, c->NH, c->HD, c->rot);
    return wsum(c->wout, c->y, n);
}
START_TEST(test_fd_rope) {
    int32_t pos[3] = {0, 5, 1234};
    float inv[2];
    rope_inv_freq(inv, 4, 10000.0);
    const size_t n = 3 * 2 * 6;
    rope_ctx c = {3, 2, 6, 4, tu_frand(n, -2, 2), tu_fnew(n), tu_frand(n, -1, 1), inv, pos};
    float *dx = tu_fdup(c.wout, n);
    lt_ref_rope_backward(dx, pos, inv, 3, 2, 6, 4);
    FD_CHECK(c.x, n, dx, rope_loss, &c, "rope dx");
    free(c.x);
    free(c.y);
    free(c.wout);
    free(dx);
}
END_TEST

typedef struct {
    int B, T, NH, NKV, HD;
    float *q, *k, *v, *out, *lse, *wout;
    int32_t *ks;
} att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    lt_ref_attention_forward(c->out, c->lse, c->q, c->k, c->v, c->ks, c->B, c->T, c->NH, c->NKV, c->HD,
                             1.0f / sqrtf((float)c->HD));
    return wsum(c->wout, c->out, (size_t)c->B * c->T * c->NH * c->HD);
}
static void fd_attention(int B, int T, int NH, int NKV, int HD, const int32_t *kv_start) {
    const size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD;
    int32_t ks[64];
    memcpy(ks, kv_start, (size_t)B * T * sizeof(int32_t));
    att_ctx c = {B,
                 T,
                 NH,
                 NKV,
                 HD,
                 tu_frand(nq, -1.5f, 1.5f),
                 tu_frand(nkv, -1.5f, 1.5f),
                 tu_frand(nkv, -1, 1),
                 tu_fnew(nq),
                 tu_fnew((size_t)B * NH * T),
                 tu_frand(nq, -1, 1),
                 ks};
    att_loss(&c);
    float *dq = tu_fnew(nq), *dk = tu_fnew(nkv), *dv = tu_fnew(nkv);
    lt_ref_attention_backward(dq, dk, dv, c.wout, c.q, c.k, c.v, c.out, c.lse, ks, B, T, NH, NKV, HD,
                              1.0f / sqrtf((float)HD), NULL);
    char what[96];
    snprintf(what, sizeof what, "attention B=%d T=%d NH=%d NKV=%d HD=%d", B, T, NH, NKV, HD);
    ck_assert_msg(fd_mismatches(c.q, nq, dq, att_loss, &c, what, 1) == 0, "%s dq", what);
    ck_assert_msg(fd_mismatches(c.k, nkv, dk, att_loss, &c, what, 1) == 0, "%s dk", what);
    ck_assert_msg(fd_mismatches(c.v, nkv, dv, att_loss, &c, what, 1) == 0, "%s dv", what);
    /* the check can fail: dk with the kv heads' shares swapped or dropped is caught */
    for (size_t i = 0; i < nkv; i++) dk[i] *= 0.9f;
    ck_assert_int_gt(fd_mismatches(c.k, nkv, dk, att_loss, &c, "", 0), 0);
    free(c.q);
    free(c.k);
    free(c.v);
    free(c.out);
    free(c.lse);
    free(c.wout);
    free(dq);
    free(dk);
    free(dv);
}
START_TEST(test_fd_attention) {
    const int32_t packed[6] = {0, 0, 0, 3, 3, 3}; /* two packed sequences */
    fd_attention(1, 6, 4, 2, 4, packed);          /* grouped-query */
    const int32_t causal[10] = {0};
    fd_attention(2, 5, 2, 2, 3, causal);
    const int32_t window[7] = {0, 0, 0, 1, 2, 3, 4}; /* sliding window of 3 */
    fd_attention(1, 7, 3, 1, 5, window);
}
END_TEST

typedef struct {
    size_t n;
    float *g, *u, *out, *wout;
} swi_ctx;
static double swi_loss(void *p) {
    swi_ctx *c = p;
    lt_ref_swiglu_forward(c->out, c->g, c->u, c->n);
    return wsum(c->wout, c->out, c->n);
}
START_TEST(test_fd_swiglu) {
    const size_t n = 24;
    swi_ctx c = {n, tu_frand(n, -5, 5), tu_frand(n, -2, 2), tu_fnew(n), tu_frand(n, -1, 1)};
    float *dg = tu_fnew(n), *du = tu_fnew(n);
    lt_ref_swiglu_backward(dg, du, c.wout, c.g, c.u, n);
    FD_CHECK(c.g, n, dg, swi_loss, &c, "swiglu dgate");
    FD_CHECK(c.u, n, du, swi_loss, &c, "swiglu dup");
    free(c.g);
    free(c.u);
    free(c.out);
    free(c.wout);
    free(dg);
    free(du);
}
END_TEST

/* cross-entropy: gradient of the summed loss with respect to the logits */
typedef struct {
    int n, V;
    float *x, *tmp;
    int32_t *tg;
} ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = p;
    float loss[8];
    memcpy(c->tmp, c->x, (size_t)c->n * c->V * sizeof(float));
    lt_ref_cross_entropy(c->tmp, loss, c->tg, c->n, c->V, 0.0f);
    double s = 0.0;
    for (int i = 0; i < c->n; i++) s += loss[i];
    return s;
}
START_TEST(test_fd_cross_entropy) {
    int32_t tg[4] = {3, -100, 10, 0};
    const int n = 4, V = 11;
    ce_ctx c = {n, V, tu_frand((size_t)n * V, -3, 3), tu_fnew((size_t)n * V), tg};
    float *grad = tu_fdup(c.x, (size_t)n * V), loss[4];
    lt_ref_cross_entropy(grad, loss, tg, n, V, 1.0f);
    FD_CHECK(c.x, (size_t)n * V, grad, ce_loss, &c, "cross_entropy dlogits");
    free(c.x);
    free(c.tmp);
    free(grad);
}
END_TEST

/* the comparator can fail */
START_TEST(test_comparator_detects) {
    float want[5] = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f}, got[5];
    char m[512];
    memcpy(got, want, sizeof got);
    ck_assert(tu_close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
    got[2] = 3.0f * (1.0f + 1e-4f); /* 1e-4 relative: must fail at 1e-5 */
    ck_assert(!tu_close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
    got[2] = want[2];
    got[4] = NAN;
    ck_assert(!tu_close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
}
END_TEST

/* ---- every slot of the dispatch table has a case ---------------------------------------------------------------- */

/* gpt-oss's clamped SwiGLU: the reference against finite differences away from the clamps' corners, and
 * with values on both sides of each bound (and on them) every backend against the reference, in place too */
typedef struct {
    size_t n;
    float *g, *u, *out, *wout;
} swc_ctx;
static double swc_loss(void *p) {
    swc_ctx *c = p;
    lt_ref_swiglu_clamp_forward(c->out, c->g, c->u, c->n, 1.702f, 2.5f);
    return wsum(c->wout, c->out, c->n);
}
START_TEST(test_swiglu_clamp) {
    const size_t nf = 24;
    swc_ctx c = {nf, tu_frand(nf, -5, 5), tu_frand(nf, -4, 4), tu_fnew(nf), tu_frand(nf, -1, 1)};
    for (size_t i = 0; i < nf; i++) { /* keep 0.05 away from the kinks, where a difference quotient straddles them */
        if (fabsf(c.g[i] - 2.5f) < 0.05f) c.g[i] += 0.1f;
        if (fabsf(fabsf(c.u[i]) - 2.5f) < 0.05f) c.u[i] += 0.1f;
    }
    float *dg = tu_fnew(nf), *du = tu_fnew(nf);
    lt_ref_swiglu_clamp_backward(dg, du, c.wout, c.g, c.u, nf, 1.702f, 2.5f);
    FD_CHECK(c.g, nf, dg, swc_loss, &c, "swiglu_clamp dgate");
    FD_CHECK(c.u, nf, du, swc_loss, &c, "swiglu_clamp dup");
    static const size_t sizes[] = {1, 17, 1000, 65540};
    for (int s = 0; s < 4; s++) {
        const size_t n = sizes[s];
        float *g = tu_frand(n, -12, 12), *u = tu_frand(n, -12, 12), *go = tu_frand(n, -1, 1);
        if (n > 4) g[1] = 7.0f, u[2] = -7.0f, u[3] = 7.0f; /* on the bounds: the gradient passes */
        float *orf = tu_fnew(n), *dgr = tu_fnew(n), *dur = tu_fnew(n);
        lt_ref_swiglu_clamp_forward(orf, g, u, n, 1.702f, 7.0f);
        lt_ref_swiglu_clamp_backward(dgr, dur, go, g, u, n, 1.702f, 7.0f);
        FOR_BE {
            float *dgd = dput(g, n), *dud = dput(u, n), *dgo = dput(go, n), *dout = dnan(n), *ddg = dnan(n);
            float *ddu = dnan(n);
            OPS->swiglu_clamp_forward(BE, dout, dgd, dud, n, 1.702f, 7.0f);
            float *of = hget(dout, n);
            CLOSE_F(of, orf, n, 1e-5, 1e-7, "swiglu_clamp fwd n=%zu", n);
            OPS->swiglu_clamp_backward(BE, ddg, ddu, dgo, dgd, dud, n, 1.702f, 7.0f);
            float *dgf = hget(ddg, n), *duf = hget(ddu, n);
            CLOSE_F(dgf, dgr, n, 1e-5, 1e-7, "swiglu_clamp dgate n=%zu", n);
            CLOSE_F(duf, dur, n, 1e-5, 1e-7, "swiglu_clamp dup n=%zu", n);
            OPS->swiglu_clamp_backward(BE, dgd, dud, dgo, dgd, dud, n, 1.702f, 7.0f); /* in place */
            float *gi = hget(dgd, n), *ui = hget(dud, n);
            SAME(gi, dgf, n, "swiglu_clamp dgate in place n=%zu", n);
            SAME(ui, duf, n, "swiglu_clamp dup in place n=%zu", n);
            SYNC_OK("swiglu_clamp");
            float *hp[] = {of, dgf, duf, gi, ui};
            for (int i = 0; i < 5; i++) free(hp[i]);
            float *dp[] = {dgd, dud, dgo, dout, ddg, ddu};
            for (int i = 0; i < 6; i++) dfree(dp[i]);
        }
        float *hp[] = {g, u, go, orf, dgr, dur};
        for (int i = 0; i < 6; i++) free(hp[i]);
    }
    float *hp[] = {c.g, c.u, c.out, c.wout, dg, du};
    for (int i = 0; i < 6; i++) free(hp[i]);
}
END_TEST

/* attention sinks (gpt-oss): out_t = sum_j p_tj v_j with p_tj = exp(s_tj) / (sum_i exp(s_ti) + exp(z_h)),
 * written here from that definition (double, no lse) as the oracle of the reference composition
 * attention_forward + attention_sink_forward (out, lse) and of its decode. */
static void naive_sink_attention(float *out, const float *q, const float *k, const float *v, const float *z,
                                 const int32_t *ks, int B, int T, int NH, int NKV, int HD, float scale) {
    double *s = malloc((size_t)T * sizeof *s);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const int kvh = h / (NH / NKV), lo = lt_att_kv_lo(ks + (size_t)b * T, t);
                const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
                double mx = z[h], den = 0.0;
                for (int j = lo; j <= t; j++) {
                    const float *kj = k + (((size_t)b * T + j) * NKV + kvh) * HD;
                    s[j] = 0.0;
                    for (int d = 0; d < HD; d++) s[j] += (double)qt[d] * kj[d];
                    s[j] *= scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = lo; j <= t; j++) den += exp(s[j] - mx);
                den += exp(z[h] - mx);
                float *ot = out + (((size_t)b * T + t) * NH + h) * HD;
                for (int d = 0; d < HD; d++) {
                    double a = 0.0;
                    for (int j = lo; j <= t; j++)
                        a += exp(s[j] - mx) / den * v[(((size_t)b * T + j) * NKV + kvh) * HD + d];
                    ot[d] = (float)a;
                }
            }
    free(s);
}

/* the oracle's L = sum(dout * out) */
static double sink_loss(const float *dout, const float *q, const float *k, const float *v, const float *z,
                        const int32_t *ks, int B, int T, int NH, int NKV, int HD, float scale, float *tmp) {
    naive_sink_attention(tmp, q, k, v, z, ks, B, T, NH, NKV, HD, scale);
    double L = 0.0;
    for (size_t j = 0; j < (size_t)B * T * NH * HD; j++) L += (double)dout[j] * tmp[j];
    return L;
}

/* The reference sink ops against the oracle (forward; finite differences of the backward for q, k, v and
 * every sink, the single-key first queries of each row included; the decode of each row's last token),
 * then every backend against the reference. */
static void sink_attention(int B, int T, int NH, int NKV, int HD, const int32_t *ks, float scale) {
    const size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float *q = tu_frand(nq, -2, 2), *k = tu_frand(nk, -2, 2), *v = tu_frand(nk, -1, 1), *dout = tu_frand(nq, -1, 1);
    float *z = tu_frand((size_t)NH, -1, 3); /* sinks of the scores' size: each takes a real share */
    float *want = tu_fnew(nq), *o = tu_fnew(nq), *l = tu_fnew(nl), *tmp = tu_fnew(nq);
    float *dq = tu_fnew(nq), *dk = tu_fnew(nk), *dv = tu_fnew(nk), *dz = tu_fconst((size_t)NH, 0.0f);
    naive_sink_attention(want, q, k, v, z, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_forward(o, l, q, k, v, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_sink_forward(o, l, z, B, T, NH, HD);
    TU_CLOSE_F(o, want, nq, 1e-5, 1e-7, "reference sink attention vs its definition");
    lt_ref_attention_backward(dq, dk, dv, dout, q, k, v, o, l, ks, B, T, NH, NKV, HD, scale, NULL);
    lt_ref_attention_sink_backward(dz, dq, dk, dout, q, k, o, l, z, ks, B, T, NH, NKV, HD, scale);
    struct {
        float *x, *g;
        size_t n, stride;
        const char *name;
    } probes[] = {{q, dq, nq, 37, "dq"},
                  {k, dk, nk, 37, "dk"},
                  {v, dv, nk, 37, "dv"},
                  {z, dz, (size_t)NH, 1, "dsinks"},
                  /* row 0, token 0 sees one key: its dq and dk come from the sink alone */
                  {q, dq, (size_t)NH * HD, 3, "dq (single key)"},
                  {k, dk, (size_t)NKV * HD, 3, "dk (single key)"}};
    for (int pi = 0; pi < 6; pi++)
        for (size_t i = 0; i < probes[pi].n; i += probes[pi].stride) {
            const float orig = probes[pi].x[i], h = 1e-2f;
            probes[pi].x[i] = orig + h;
            const double lp = sink_loss(dout, q, k, v, z, ks, B, T, NH, NKV, HD, scale, tmp);
            probes[pi].x[i] = orig - h;
            const double lm = sink_loss(dout, q, k, v, z, ks, B, T, NH, NKV, HD, scale, tmp);
            probes[pi].x[i] = orig;
            const double fd = (lp - lm) / (2.0 * h);
            ck_assert_msg(fabs(fd - probes[pi].g[i]) <= 2e-3 + 2e-2 * fabs(fd), "sink %s[%zu]: %g vs fd %g",
                          probes[pi].name, i, probes[pi].g[i], fd);
        }
    /* decode of each row's last token over its keys kv_start .. T-1 == that row of the forward */
    const size_t nd = (size_t)B * NH * HD;
    int32_t *d0 = malloc((size_t)B * sizeof *d0), *dT = malloc((size_t)B * sizeof *dT);
    float *ql = tu_fnew(nd), *od = tu_fnew(nd), *wl = tu_fnew(nd);
    for (int b = 0; b < B; b++) {
        d0[b] = lt_att_kv_lo(ks + (size_t)b * T, T - 1);
        dT[b] = T;
        memcpy(ql + (size_t)b * NH * HD, q + ((size_t)b * T + T - 1) * NH * HD, (size_t)NH * HD * 4);
        memcpy(wl + (size_t)b * NH * HD, want + ((size_t)b * T + T - 1) * NH * HD, (size_t)NH * HD * 4);
    }
    lt_ref_attention_sink_decode(od, ql, k, v, d0, dT, z, B, T, NH, NKV, HD, scale);
    TU_CLOSE_F(od, wl, nd, 1e-5, 1e-7, "reference sink decode vs its definition");
    FOR_BE_ALL {
        float *dq_ = dput(q, nq), *dk_ = dput(k, nk), *dv_ = dput(v, nk), *ddo = dput(dout, nq), *dzs = dput(z, NH);
        int32_t *dks = dputi(ks, (size_t)B * T);
        float *dof = dnan(nq), *dlf = dnan(nl), *gq = dnan(nq), *gk = dnan(nk), *gv = dnan(nk);
        float *gz = dput(dz, NH); /* accumulates: starts from the reference's value, so doubles it */
        float *scr = dnan(OPS->attention_backward_scratch(BE, B, T, NH, HD) + 1);
        OPS->attention_forward(BE, dof, dlf, dq_, dk_, dv_, dks, B, T, NH, NKV, HD, scale);
        OPS->attention_sink_forward(BE, dof, dlf, dzs, B, T, NH, HD);
        float *of = hget(dof, nq), *lf = hget(dlf, nl);
        CLOSE(of, o, nq, TOL(1e-5), "sink attention out T=%d", T);
        CLOSE(lf, l, nl, TOL(1e-5), "sink attention lse T=%d", T);
        OPS->attention_backward(BE, gq, gk, gv, ddo, dq_, dk_, dv_, dof, dlf, dks, B, T, NH, NKV, HD, scale, scr);
        OPS->attention_sink_backward(BE, gz, gq, gk, ddo, dq_, dk_, dof, dlf, dzs, dks, B, T, NH, NKV, HD, scale);
        float *dqf = hget(gq, nq), *dkf = hget(gk, nk), *dvf = hget(gv, nk), *dzf = hget(gz, NH);
        for (int h = 0; h < NH; h++) dzf[h] *= 0.5f;
        CLOSE_F(dqf, dq, nq, TOL(1e-5), 1e-6, "sink dq T=%d", T);
        CLOSE_F(dkf, dk, nk, TOL(1e-5), 1e-6, "sink dk T=%d", T);
        CLOSE_F(dvf, dv, nk, TOL(1e-5), 1e-6, "sink dv T=%d", T);
        CLOSE_F(dzf, dz, NH, TOL(1e-5), 1e-6, "sink dsinks T=%d", T);
        float *dql = dput(ql, nd), *dod = dnan(nd);
        int32_t *dd0 = dputi(d0, (size_t)B), *ddT = dputi(dT, (size_t)B);
        OPS->attention_sink_decode(BE, dod, dql, dk_, dv_, dd0, ddT, dzs, B, T, NH, NKV, HD, scale);
        float *odf = hget(dod, nd);
        CLOSE(odf, od, nd, TOL(1e-5), "sink decode T=%d", T);
        SYNC_OK("sink attention");
        free(of);
        free(lf);
        free(dqf);
        free(dkf);
        free(dvf);
        free(dzf);
        free(odf);
        float *dp[] = {dq_, dk_, dv_, ddo, dzs, dof, dlf, gq, gk, gv, gz, scr, dql, dod};
        for (size_t i = 0; i < sizeof dp / sizeof *dp; i++) dfree(dp[i]);
        dfree(dks);
        dfree(dd0);
        dfree(ddT);
    }
    float *hp[] = {q, k, v, dout, z, want, o, l, tmp, dq, dk, dv, dz, ql, od, wl};
    for (size_t i = 0; i < sizeof hp / sizeof *hp; i++) free(hp[i]);
    free(d0);
    free(dT);
}
START_TEST(test_attention_sink) {
    int32_t ks[14]; /* row 0: a window of 3; row 1: two packed sequences */
    for (int i = 0; i < 14; i++) ks[i] = i < 7 ? (i % 7 > 2 ? i % 7 - 2 : 0) : (i % 7 >= 4 ? 4 : 0);
    sink_attention(2, 7, 4, 2, 8, ks, 0.4f);
    int32_t ks2[40];
    make_kv_start(ks2, 1, 40, 2);
    sink_attention(1, 40, 4, 1, 64, ks2, 0.125f);
}
END_TEST

/* The function-pointer slots of lt_backend_ops, in declaration order. The static assertion fails the
 * build when backend.h gains or loses a slot and this list does not; test_every_slot_has_a_case then
 * fails until a case covers the new slot. */
#define SLOT(x) \
    { #x, offsetof(lt_backend_ops, x) }
static const struct {
    const char *name;
    size_t offset;
} slots[] = {
    SLOT(destroy),
    SLOT(set_threads),
    SLOT(alloc),
    SLOT(free),
    SLOT(upload),
    SLOT(download),
    SLOT(copy),
    SLOT(zero),
    SLOT(sync),
    SLOT(error_message),
    SLOT(gemm),
    SLOT(bf16_weight_bytes),
    SLOT(bf16_weight_pack),
    SLOT(gemm_bf16_forward),
    SLOT(gemm_bf16_backward),
    SLOT(embedding_forward_bf16),
    SLOT(gemm_q4_forward),
    SLOT(gemm_q4_backward),
    SLOT(axpy),
    SLOT(scale),
    SLOT(sumsq),
    SLOT(all_finite),
    SLOT(embedding_forward),
    SLOT(embedding_backward),
    SLOT(scatter_rows),
    SLOT(rmsnorm_forward),
    SLOT(rmsnorm_backward),
    SLOT(rope_forward),
    SLOT(rope_backward),
    SLOT(rope_scale),
    SLOT(attention_forward),
    SLOT(attention_backward_scratch),
    SLOT(attention_backward),
    SLOT(attention_decode),
    SLOT(attention_softcap_forward),
    SLOT(attention_softcap_backward),
    SLOT(attention_softcap_decode),
    SLOT(attention_sink_forward),
    SLOT(attention_sink_backward),
    SLOT(attention_sink_decode),
    SLOT(swiglu_forward),
    SLOT(swiglu_backward),
    SLOT(swiglu_clamp_forward),
    SLOT(swiglu_clamp_backward),
    SLOT(bias_add),
    SLOT(bias_backward),
    SLOT(dora_norm),
    SLOT(mul_cols),
    SLOT(col_dot),
    SLOT(geglu_forward),
    SLOT(geglu_backward),
    SLOT(softcap_forward),
    SLOT(softcap_backward),
    SLOT(cross_entropy),
    SLOT(dropout),
    SLOT(adamw_step),
    SLOT(adamw8bit_step),
    SLOT(row_scale),
    SLOT(dequantize_rows),
    SLOT(run_groups),
};
#define N_SLOTS ((int)(sizeof slots / sizeof *slots))
_Static_assert(sizeof slots / sizeof *slots ==
                   (sizeof(lt_backend_ops) - offsetof(lt_backend_ops, destroy)) / sizeof(void (*)(void)),
               "lt_backend_ops (src/backend/backend.h) has a slot that `slots` in test_backend_ops.c does not list");

/* The cases of the suite and the slots each covers (filled by CASE in backend_ops_suite). */
#define MAX_CASES 64
static struct {
    const char *name;
    size_t covers[8];
} cases[MAX_CASES];
static int n_cases;

static void add_case(TCase *tc, const TTest *t, int loops, const size_t *covers) {
    int i = 0;
    if (n_cases < MAX_CASES)
        for (cases[n_cases].name = t->name; covers[i] && i < 8; i++) cases[n_cases].covers[i] = covers[i];
    if (n_cases == MAX_CASES || covers[i]) {
        fprintf(stderr, "test_backend_ops: more than %d cases or more than 8 slots in %s\n", MAX_CASES, t->name);
        exit(EXIT_FAILURE);
    }
    n_cases++;
    /* LT_TEST_CASES=test_a,test_b runs only those (the slot coverage check still sees every case) */
    const char *only = getenv("LT_TEST_CASES");
    if (only && *only) {
        size_t n = strlen(t->name);
        const char *p = only;
        while ((p = strstr(p, t->name)) && ((p != only && p[-1] != ',') || (p[n] && p[n] != ','))) p += n;
        if (!p) return;
    }
    tcase_add_loop_test(tc, t, 0, loops);
}
/* CASE(tcase, test, loops, S(slot), ...): the test runs every backend through these slots */
#define S(slot) offsetof(lt_backend_ops, slot)
#define CASE(tc, test, loops, ...) add_case(tc, test, loops, (const size_t[]){__VA_ARGS__, 0})

START_TEST(test_every_slot_has_a_case) {
    int missing = 0;
    for (int s = 0; s < N_SLOTS; s++) {
        /* the list is the struct: consecutive pointer-sized slots from destroy to the end */
        ck_assert_msg(slots[s].offset == offsetof(lt_backend_ops, destroy) + (size_t)s * sizeof(void (*)(void)),
                      "slots[%d] (%s) is out of the declaration order of lt_backend_ops", s, slots[s].name);
        int covered = 0;
        for (int c = 0; c < n_cases && !covered; c++)
            for (int i = 0; i < 8 && cases[c].covers[i]; i++) covered |= cases[c].covers[i] == slots[s].offset;
        if (!covered) {
            fprintf(stderr, "test_backend_ops: slot %s of lt_backend_ops (src/backend/backend.h) has no case\n",
                    slots[s].name);
            missing++;
        }
    }
    ck_assert_msg(missing == 0, "%d slot(s) of lt_backend_ops have no case in test_backend_ops.c (listed above)",
                  missing);
}
END_TEST

#ifdef LT_TEST_CUDA_EMU
#include "loratune_experimental.h"
/* R2 end to end: a device fault met during a forward pass reaches the model handle as LT_ERR_BACKEND with
 * the CUDA error text (not as out of memory, not as a bare status). */
START_TEST(test_fault_reaches_handle) {
    static const char cfg[] =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64, "
        "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, "
        "\"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, \"rope_theta\": "
        "10000.0}";
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cuda";
    cp.n_threads = 1;
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    ck_assert_msg(lt_context_create(&cp, &ctx) == LT_OK, "%s", lt_last_error());
    ck_assert_msg(lt_model_create_random(ctx, cfg, 3, 0.05f, &m) == LT_OK, "%s", lt_last_error());
    int32_t ids[8] = {1, 5, 9, 3, 7, 2, 4, 6};
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = 1;
    b.seq_len = 8;
    b.input_ids = ids;
    double loss = 0;
    int64_t n = 0;
    ck_assert_msg(lt_model_loss(m, NULL, &b, &loss, &n) == LT_OK, "%s", lt_model_last_error(m));
    lt_cuda_emu_inject_fault(lt_cuda_emu_get_device());
    const lt_status st = lt_model_loss(m, NULL, &b, &loss, &n);
    const char *msg = lt_model_last_error(m);
    ck_assert_msg(st == LT_ERR_BACKEND, "a device fault gave %s: %s", lt_status_string(st), msg);
    ck_assert_msg(strstr(msg, "illegal memory access") != NULL, "the CUDA error text is not in \"%s\"", msg);
    lt_cuda_emu_reset_device(lt_cuda_emu_get_device());
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST
#endif

/* ---- suite ------------------------------------------------------------------------------------------------------ */

#ifndef LT_TEST_CUDA_EMU
#ifdef LT_TEST_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif
/* cuBLAS is opened when a CUDA backend is made, not when the library is loaded: a process of a CUDA-enabled
 * build that only uses the CPU backend does not map libcublas (with the libcublasLt it loads: about 150 MiB
 * resident); in a CUDA build, the probe resolves every cuBLAS function the backend calls (their exported
 * names: cublasCreate_v2 ...) from the toolkit's libcublas, no device needed. Linked as before, libcublas is
 * in the map and this fails. */
START_TEST(test_cublas_on_demand) {
    lt_backend *be = NULL;
    char err[256] = "";
    ck_assert_msg(lt_backend_create("cpu", 1, &be, err, sizeof err) == LT_OK, "%s", err);
    be->ops->destroy(be);
    FILE *maps = fopen("/proc/self/maps", "r");
    ck_assert_ptr_nonnull(maps);
    char line[1024];
    int mapped = 0;
    while (fgets(line, sizeof line, maps)) mapped |= strstr(line, "libcublas") != NULL;
    fclose(maps);
    ck_assert_msg(!mapped, "libcublas is mapped in a process that made no CUDA backend");
#ifdef LT_TEST_HAVE_CUDA
    char msg[300] = "";
    ck_assert_msg(lt_cuda_cublas_probe(msg, sizeof msg) == 0, "%s", msg);
#endif
}
END_TEST
#endif

static Suite *backend_ops_suite(void) {
    Suite *s = suite_create("backend_ops");
    TCase *ops = tcase_create("every_backend_vs_reference");
    tcase_add_checked_fixture(ops, setup, teardown);
    tcase_set_timeout(ops, 900);
    CASE(ops, test_table_and_memory, 1, S(destroy), S(set_threads), S(alloc), S(free), S(upload), S(download), S(copy),
         S(zero));
    CASE(ops, test_errors, 1, S(sync), S(error_message));
    CASE(ops, test_gemm, 1, S(gemm));
    CASE(ops, test_review_edges, 1, S(attention_softcap_forward), S(attention_softcap_backward),
         S(attention_softcap_decode), S(gemm_bf16_forward), S(gemm_bf16_backward));
    CASE(ops, test_gemm_bf16, 1, S(bf16_weight_bytes), S(bf16_weight_pack), S(gemm_bf16_forward),
         S(gemm_bf16_backward));
    CASE(ops, test_embedding_bf16, 1, S(bf16_weight_bytes), S(bf16_weight_pack), S(embedding_forward_bf16));
    CASE(ops, test_gemm_q4, 1, S(gemm_q4_forward), S(gemm_q4_backward));
    CASE(ops, test_elementwise, 1, S(axpy), S(scale), S(sumsq), S(all_finite));
    CASE(ops, test_row_scale, 1, S(row_scale));
    CASE(ops, test_embedding, 1, S(embedding_forward), S(embedding_backward));
    CASE(ops, test_scatter_rows, 1, S(scatter_rows));
    CASE(ops, test_rmsnorm, 1, S(rmsnorm_forward), S(rmsnorm_backward));
    CASE(ops, test_rope, 1, S(rope_forward), S(rope_backward));
    CASE(ops, test_rope_scale, 1, S(rope_scale));
    CASE(ops, test_attention, N_ATT, S(attention_forward), S(attention_backward_scratch), S(attention_backward));
    CASE(ops, test_attention_packed_semantics, 1, S(attention_forward));
    CASE(ops, test_attention_decode, 1, S(attention_decode), S(attention_softcap_decode));
    CASE(ops, test_attention_softcap, 1, S(attention_softcap_forward), S(attention_softcap_backward),
         S(attention_softcap_decode));
    CASE(ops, test_attention_sink, 1, S(attention_sink_forward), S(attention_sink_backward), S(attention_sink_decode),
         S(attention_forward), S(attention_backward));
    CASE(ops, test_swiglu, 1, S(swiglu_forward), S(swiglu_backward));
    CASE(ops, test_swiglu_clamp, 1, S(swiglu_clamp_forward), S(swiglu_clamp_backward));
    CASE(ops, test_geglu, 1, S(geglu_forward), S(geglu_backward));
    CASE(ops, test_bias, 1, S(bias_add), S(bias_backward));
    CASE(ops, test_softcap, 1, S(softcap_forward), S(softcap_backward));
    CASE(ops, test_dora_ops, 1, S(dora_norm), S(mul_cols), S(col_dot));
    CASE(ops, test_cross_entropy, 1, S(cross_entropy));
    CASE(ops, test_dropout, 1, S(dropout));
    CASE(ops, test_adamw, 1, S(adamw_step));
    CASE(ops, test_adamw8bit, 1, S(adamw8bit_step));
    CASE(ops, test_dequantize_rows, 1, S(dequantize_rows));
    CASE(ops, test_stream_order, 1, S(copy), S(scale));
    /* against PyTorch */
    tcase_add_test(ops, test_goldens_present);
    CASE(ops, test_golden_rmsnorm, 1, S(rmsnorm_forward), S(rmsnorm_backward));
    CASE(ops, test_golden_rope, 1, S(rope_forward), S(rope_backward));
    CASE(ops, test_golden_attention, 1, S(attention_forward), S(attention_backward));
    CASE(ops, test_golden_swiglu, 1, S(swiglu_forward), S(swiglu_backward));
    CASE(ops, test_golden_cross_entropy, 1, S(cross_entropy));
    CASE(ops, test_golden_lora_linear, 1, S(gemm));
    suite_add_tcase(s, ops);

    /* threads: also run under ThreadSanitizer (tests/tsan.sh runs CK_RUN_CASE=threads) */
    TCase *th = tcase_create("threads");
    tcase_add_checked_fixture(th, setup, teardown);
    tcase_set_timeout(th, 900);
    CASE(th, test_concurrent_threads, 1, S(rmsnorm_backward), S(gemm), S(sumsq), S(all_finite));
    CASE(th, test_thread_invariance, 1, S(sumsq), S(rmsnorm_backward), S(attention_forward), S(attention_backward));
    CASE(th, test_run_groups, 1, S(run_groups), S(gemm), S(axpy));
    suite_add_tcase(s, th);

    TCase *ref = tcase_create("reference");
    tcase_set_timeout(ref, 300);
    tcase_add_test(ref, test_comparator_detects);
    tcase_add_test(ref, test_goldens_discriminate);
    tcase_add_test(ref, test_fd_rmsnorm);
    tcase_add_test(ref, test_fd_rope);
    tcase_add_test(ref, test_fd_attention);
    tcase_add_test(ref, test_fd_swiglu);
    tcase_add_test(ref, test_fd_cross_entropy);
    tcase_add_test(ref, test_every_slot_has_a_case);
#ifndef LT_TEST_CUDA_EMU
    tcase_add_test(ref, test_cublas_on_demand);
#endif
    suite_add_tcase(s, ref);
#ifdef LT_TEST_CUDA_EMU
    TCase *fault = tcase_create("device_faults");
    tcase_set_timeout(fault, 300);
    tcase_add_test(fault, test_fault_reaches_handle);
    suite_add_tcase(s, fault);
#endif
    return s;
}

int main(void) {
    setenv("LT_CUDA_DEBUG", "1", 0); /* a recorded CUDA error is printed to stderr */
    /* which backends run here: created once now, again by each test's fixture */
    int device = 0;
    for (int i = 0; i < N_BACKENDS; i++) {
        hb *h = &backends[i];
        char err[256] = "";
        lt_backend *be = NULL;
        lt_status st = h->create(h, N_THREADS, &be, err, sizeof err);
        h->available = st == LT_OK && be;
        if (h->available) {
            device |= !be->ops->host_memory;
            be->ops->destroy(be);
            printf("test_backend_ops: backend %s\n", h->name);
        } else if (st == LT_ERR_UNSUPPORTED) {
            printf("test_backend_ops: backend %s skipped: %s\n", h->name, err);
        } else {
            fprintf(stderr, "test_backend_ops: backend %s cannot be created: %s\n", h->name, err);
            return EXIT_FAILURE;
        }
    }
    SRunner *sr = srunner_create(backend_ops_suite());
    if (device) srunner_set_fork_status(sr, CK_NOFORK); /* CUDA is initialised in this process */
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
