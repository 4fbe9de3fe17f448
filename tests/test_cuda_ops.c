/*
 * test_cuda_ops.c - the CUDA backend against the reference kernels (cpu/ref_ops.c).
 *
 * Every op of the "cuda" backend runs on device buffers filled from random host inputs at several
 * shapes (odd sizes, grouped-query attention, packed kv_start, T = 1, head_dim 5 .. 260) and is
 * compared with lt_ref_* on the host: relative tolerance 1e-4 (1e-5 for plain elementwise ops) with a
 * floor of the same fraction of the reference's RMS (see close_msg); dropout and embedding bit for
 * bit. Plus: the memory ops (alignment, memmove semantics of copy), errors reported by sync and
 * cleared by it, determinism of the reductions and of the attention backward, and several host
 * threads using one backend at once (threads sharing a model do).
 *
 * Without a CUDA device (or in a build without CUDA) it prints one line and passes. Runs in Check's
 * no-fork mode: CUDA cannot be used in a child forked after the parent initialised it.
 * Set LT_CUDA_SYNC=1 to have a kernel fault reported against the op that caused it.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/bf16.h" /* lt_bf16_round */
#include "core/context.h"
#include "cpu/ref_ops.h"
#include "formats/quant.h"

/* ---- helpers -------------------------------------------------------------------------------------- */

static uint64_t rng_s = 88172645463325252ull;
static void rng_seed(uint64_t s) { rng_s = s * 2654435761ull + 0x9E3779B97F4A7C15ull; }
static uint64_t rng_u64(void) { /* xorshift64* */
    rng_s ^= rng_s >> 12;
    rng_s ^= rng_s << 25;
    rng_s ^= rng_s >> 27;
    return rng_s * 2685821657736338717ull;
}
static float urand(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * (1.0 / 16777216.0)); }
static int irand(int n) { return (int)(rng_u64() % (uint64_t)n); }

static float *fnew(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(p);
    return p;
}
static float *frand(size_t n, float lo, float hi) {
    float *p = fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = urand(lo, hi);
    return p;
}
static float *fdup(const float *x, size_t n) {
    float *p = fnew(n);
    memcpy(p, x, (n ? n : 1) * sizeof(float));
    return p;
}
static void ffill(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; i++) p[i] = v;
}

/* Elementwise |got - want| <= rtol * (|want| + max(rms(want), floor)); NaN fails. */
static int close_msg(const float *got, const float *want, size_t n, double rtol, double floor, char *msg, size_t len) {
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)want[i] * want[i];
    double rms = n ? sqrt(ss / n) : 0.0;
    if (rms < floor) rms = floor;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]), tol = rtol * (fabs(want[i]) + rms);
        if (!(e <= tol)) {
            snprintf(msg, len, "[%zu] got %.9g want %.9g (err %.3g > tol %.3g, n %zu)", i, got[i], want[i], e, tol, n);
            return 0;
        }
    }
    return 1;
}
#define CLOSE_F(got, want, n, rtol, floor, ...)                                               \
    do {                                                                                      \
        char m_[512], w_[256];                                                                \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                 \
        ck_assert_msg(close_msg(got, want, n, rtol, floor, m_, sizeof m_), "%s: %s", w_, m_); \
    } while (0)
#define CLOSE(got, want, n, rtol, ...) CLOSE_F(got, want, n, rtol, 0.0, __VA_ARGS__)
#define SAME(got, want, n, ...)                                                                  \
    do {                                                                                         \
        char w_[256];                                                                            \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                    \
        ck_assert_msg(memcmp(got, want, (n) * sizeof(float)) == 0, "%s: not bit-identical", w_); \
    } while (0)

#define RTOL 1e-4    /* reductions, gemm, attention: float sums in another order than the reference's doubles */
#define RTOL_EW 1e-5 /* elementwise */

/* The backend under test (created once in main: no-fork mode). */
static lt_backend *be;
#define OPS (be->ops)

static void *dalloc(size_t bytes) {
    void *p = OPS->alloc(be, bytes ? bytes : 4);
    ck_assert_ptr_nonnull(p);
    return p;
}
/* device copy of host floats / ints */
static float *dput(const float *h, size_t n) {
    float *d = dalloc(n * sizeof(float));
    if (n) OPS->upload(be, d, h, n * sizeof(float));
    return d;
}
static int32_t *dputi(const int32_t *h, size_t n) {
    int32_t *d = dalloc(n * sizeof(int32_t));
    if (n) OPS->upload(be, d, h, n * sizeof(int32_t));
    return d;
}
/* device buffer of n floats, all NaN (outputs must be written, not assumed zero) */
static float *dnan(size_t n) {
    float *h = fnew(n);
    ffill(h, n, NAN);
    float *d = dput(h, n);
    free(h);
    return d;
}
/* host copy of device floats (malloc'd) */
static float *hget(const float *d, size_t n) {
    float *h = fnew(n);
    if (n) OPS->download(be, h, d, n * sizeof(float));
    return h;
}
static void dfree(void *d) { OPS->free(be, d); }
#define SYNC_OK(what) \
    ck_assert_msg(OPS->sync(be) == LT_OK, "%s: sync reported an error (LT_CUDA_DEBUG=1 prints it)", what)

/* ---- table and memory ----------------------------------------------------------------------------- */

START_TEST(test_backend_table) {
    const lt_backend_ops *o = OPS;
    ck_assert_str_eq(o->name, "cuda");
    ck_assert_int_eq(o->host_memory, 0);
    void *const *slots = (void *const *)&o->destroy;
    size_t nslots = (sizeof *o - offsetof(lt_backend_ops, destroy)) / sizeof(void *);
    for (size_t i = 0; i < nslots; i++) ck_assert_msg(slots[i] != NULL, "NULL op slot %zu", i);
    ck_assert_int_ge(be->n_threads, 1);
    o->set_threads(be, 0);
    ck_assert_int_ge(be->n_threads, 1);

    float *p = o->alloc(be, 1000);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq((uintptr_t)p % 64, 0);
    float h[250], g[250];
    for (int i = 0; i < 250; i++) h[i] = (float)i + 0.5f;
    o->upload(be, p, h, sizeof h);
    o->zero(be, p, 100 * sizeof(float));
    o->download(be, g, p, sizeof g);
    for (int i = 0; i < 250; i++) ck_assert(g[i] == (i < 100 ? 0.0f : h[i]));
    o->upload(be, p, h, 4 * sizeof(float));
    o->copy(be, p + 4, p, 4 * sizeof(float));
    o->download(be, g, p + 4, 4 * sizeof(float));
    ck_assert(memcmp(g, h, 4 * sizeof(float)) == 0);
    /* copy has memmove semantics: overlapping ranges, both directions */
    o->upload(be, p, h, sizeof h);
    o->copy(be, p + 3, p, 200 * sizeof(float));
    o->download(be, g, p, sizeof g);
    for (int i = 0; i < 250; i++) ck_assert(g[i] == (i < 3 ? h[i] : i < 203 ? h[i - 3] : h[i]));
    o->upload(be, p, h, sizeof h);
    o->copy(be, p, p + 5, 200 * sizeof(float));
    o->download(be, g, p, sizeof g);
    for (int i = 0; i < 250; i++) ck_assert(g[i] == (i < 200 ? h[i + 5] : h[i]));
    o->free(be, p);
    /* a large overlapping copy goes through the workspace in several chunks */
    size_t n = (3u << 20) + 77;
    float *big = frand(n + 1, -1, 1), *back = fnew(n + 1);
    float *d = dput(big, n + 1);
    o->copy(be, d + 1, d, n * sizeof(float));
    o->download(be, back, d, (n + 1) * sizeof(float));
    ck_assert(back[0] == big[0]);
    SAME(back + 1, big, n, "large overlapping copy upwards");
    o->upload(be, d, big, (n + 1) * sizeof(float));
    o->copy(be, d, d + 1, n * sizeof(float));
    o->download(be, back, d, (n + 1) * sizeof(float));
    SAME(back, big + 1, n, "large overlapping copy downwards");
    dfree(d);
    free(big);
    free(back);
    /* allocation failure is NULL, not a pending error */
    ck_assert_ptr_null(o->alloc(be, SIZE_MAX - 8));
    ck_assert_ptr_null(o->alloc(be, (size_t)1 << 50)); /* 1 PiB */
    void *z = o->alloc(be, 0);
    ck_assert_ptr_nonnull(z);
    o->free(be, z);
    o->free(be, NULL);
    SYNC_OK("memory ops");
    ck_assert_uint_ge(o->attention_backward_scratch(be, 2, 10, 4, 64), 80);
}
END_TEST

/* A failing op is reported once by sync, then sync is clean again. */
START_TEST(test_errors) {
    float *d = dalloc(64 * sizeof(float));
    OPS->gemm(be, 0, 0, 2, 3, 4, 1.0f, d, 1, d, 3, 0.0f, d, 3); /* lda 1 < K 4 */
    ck_assert_int_ne(OPS->sync(be), LT_OK);
    ck_assert_int_eq(OPS->sync(be), LT_OK);
    int32_t ks[4] = {0, 0, 0, 0};
    int32_t *dks = dputi(ks, 4);
    OPS->attention_forward(be, d, d, d, d, d, dks, 1, 4, 3, 2, 2, 1.0f); /* NH 3 not a multiple of NKV 2 */
    ck_assert_int_ne(OPS->sync(be), LT_OK);
    ck_assert_int_eq(OPS->sync(be), LT_OK);
    /* empty problems are no-ops */
    OPS->attention_forward(be, d, d, d, d, d, dks, 0, 4, 2, 2, 2, 1.0f);
    OPS->axpy(be, 0, 1.0f, d, d);
    OPS->cross_entropy(be, d, d, dks, 0, 10, 1.0f);
    OPS->rmsnorm_forward(be, d, d, d, d, 0, 8, 1e-5f);
    SYNC_OK("empty ops");
    dfree(dks);
    dfree(d);
}
END_TEST

/* ---- gemm ----------------------------------------------------------------------------------------- */

START_TEST(test_gemm) {
    static const int shapes[][3] = {{1, 1, 1},   {3, 5, 7},    {17, 33, 9},    {64, 48, 130},
                                    {5, 1, 100}, {1, 37, 300}, {129, 65, 257}, {300, 211, 1024}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.25f, 0.3f}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (int tr = 0; tr < 4; tr++) {
            int ta = tr & 1, tb = tr >> 1;
            int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
            size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
            float *A = frand(na, -1, 1), *Bm = frand(nb, -1, 1);
            float *dA = dput(A, na), *dB = dput(Bm, nb);
            for (size_t c = 0; c < sizeof ab / sizeof ab[0]; c++) {
                float alpha = ab[c][0], beta = ab[c][1];
                float *C0 = frand(nc, -1, 1), *Cr = fdup(C0, nc);
                float *dC;
                if (beta == 0.0f) dC = dnan(nc); /* beta 0 ignores C, NaN included */
                else dC = dput(C0, nc);
                OPS->gemm(be, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc);
                lt_ref_gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cr, ldc);
                float *Cf = hget(dC, nc);
                for (int i = 0; i < M; i++) /* padding columns of C untouched */
                    if (beta != 0.0f)
                        for (int j = N; j < ldc; j++) ck_assert(Cf[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);
                for (int i = 0; i < M; i++)
                    CLOSE(Cf + (size_t)i * ldc, Cr + (size_t)i * ldc, N, RTOL, "gemm %dx%dx%d ta%d tb%d a%g b%g row %d",
                          M, N, K, ta, tb, alpha, beta, i);
                free(C0);
                free(Cr);
                free(Cf);
                dfree(dC);
            }
            free(A);
            free(Bm);
            dfree(dA);
            dfree(dB);
        }
    }
    /* K = 0 and alpha = 0: C = beta C */
    float C[6] = {1, 2, 3, 4, 5, 6}, out[6];
    float *dC = dput(C, 6), *dummy = dalloc(64);
    OPS->gemm(be, 0, 0, 2, 3, 0, 1.0f, dummy, 1, dummy, 3, 2.0f, dC, 3);
    OPS->download(be, out, dC, sizeof out);
    ck_assert(out[0] == 2.0f && out[5] == 12.0f);
    OPS->gemm(be, 0, 0, 2, 3, 4, 0.0f, dummy, 4, dummy, 3, 0.0f, dC, 3);
    OPS->download(be, out, dC, sizeof out);
    for (int i = 0; i < 6; i++) ck_assert(out[i] == 0.0f);
    SYNC_OK("gemm");
    dfree(dC);
    dfree(dummy);
}
END_TEST

/* ---- frozen weights in bf16 ----------------------------------------------------------------------- */

/* gemm_bf16_forward / backward vs the fp64 sum of the bf16-rounded inputs (lt_ref_* on the CPU's
 * packed layout). Tolerance per element: 4 (K + 2) 2^-24 (|acc| + sum |a_k w_k|), four times the
 * bound of an IEEE fp32 summation of exact products (tensor cores do not round every addition to
 * nearest). Odd shapes, N = 1, and M beyond one workspace slice (rows rounded a slice at a time). */
START_TEST(test_gemm_bf16) {
    static const int shapes[][3] = {{1, 1, 1}, {1, 300, 17}, {37, 45, 53}, {130, 513, 260}, {5000, 600, 24}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *W = frand((size_t)out * in, -1, 1), *x = frand((size_t)N * in, -2, 2),
              *dy = frand((size_t)N * out, -1, 1);
        float *acc = frand((size_t)N * in, -1, 1);
        size_t bytes = OPS->bf16_weight_bytes(be, out, in);
        ck_assert_uint_ge(bytes, (size_t)out * in * 2);
        void *dW = dalloc(bytes), *rW = malloc(lt_ref_bf16_weight_bytes(out, in));
        OPS->bf16_weight_pack(be, dW, W, out, in);
        lt_ref_bf16_weight_pack(rW, W, out, in);
        float *dx_ = dput(x, (size_t)N * in), *ddy = dput(dy, (size_t)N * out), *dyv = dnan((size_t)N * out);
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            float *ddx = accumulate ? dput(acc, (size_t)N * in) : dnan((size_t)N * in);
            OPS->gemm_bf16_forward(be, dyv, dx_, dW, N, in, out);
            OPS->gemm_bf16_backward(be, ddx, ddy, dW, N, in, out, accumulate);
            SYNC_OK("gemm_bf16");
            float *y = hget(dyv, (size_t)N * out), *dx = hget(ddx, (size_t)N * in);
            float *yr = fnew((size_t)N * out), *dxr = fdup(acc, (size_t)N * in);
            lt_ref_gemm_bf16_forward(yr, x, rW, N, in, out);
            lt_ref_gemm_bf16_backward(dxr, dy, rW, N, in, out, accumulate);
            for (int n = 0; n < N; n += (N > 300 ? 37 : 1)) {
                for (int o = 0; o < out; o++) { /* bound of the forward element (n, o) */
                    double sa = 0;
                    for (int i = 0; i < in; i++)
                        sa += fabs((double)lt_bf16_to_f32(lt_bf16_round(x[(size_t)n * in + i])) *
                                   lt_bf16_to_f32(lt_bf16_round(W[(size_t)o * in + i])));
                    double tol = 4.0 * (in + 2) * ldexp(1.0, -24) * sa + 1e-30;
                    ck_assert_msg(fabs((double)y[(size_t)n * out + o] - yr[(size_t)n * out + o]) <=
                                      tol + 1e-7 * fabs(yr[(size_t)n * out + o]),
                                  "gemm_bf16_forward %dx%dx%d [%d,%d]: %.9g vs %.9g", N, in, out, n, o,
                                  y[(size_t)n * out + o], yr[(size_t)n * out + o]);
                }
                for (int i = 0; i < in; i++) {
                    double sa = accumulate ? fabs(acc[(size_t)n * in + i]) : 0.0;
                    for (int o = 0; o < out; o++)
                        sa += fabs((double)lt_bf16_to_f32(lt_bf16_round(dy[(size_t)n * out + o])) *
                                   lt_bf16_to_f32(lt_bf16_round(W[(size_t)o * in + i])));
                    double tol = 4.0 * (out + 3) * ldexp(1.0, -24) * sa + 1e-30;
                    ck_assert_msg(fabs((double)dx[(size_t)n * in + i] - dxr[(size_t)n * in + i]) <=
                                      tol + 1e-7 * fabs(dxr[(size_t)n * in + i]),
                                  "gemm_bf16_backward %dx%dx%d acc %d [%d,%d]: %.9g vs %.9g", N, in, out, accumulate, n,
                                  i, dx[(size_t)n * in + i], dxr[(size_t)n * in + i]);
                }
            }
            free(y);
            free(dx);
            free(yr);
            free(dxr);
            dfree(ddx);
        }
        free(W);
        free(x);
        free(dy);
        free(acc);
        free(rW);
        dfree(dW);
        dfree(dx_);
        dfree(ddy);
        dfree(dyv);
    }
}
END_TEST

/* ---- elementwise ---------------------------------------------------------------------------------- */

START_TEST(test_elementwise) {
    static const size_t sizes[] = {0, 1, 17, 100003, (1u << 20) + 5, (size_t)40000000 + 3};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *x = frand(n, -3, 3), *y0 = frand(n, -3, 3), *yr = fdup(y0, n);
        float *dx = dput(x, n), *dy = dput(y0, n);
        OPS->axpy(be, n, -0.37f, dx, dy);
        lt_ref_axpy(n, -0.37f, x, yr);
        float *yf = hget(dy, n);
        CLOSE(yf, yr, n, RTOL_EW, "axpy n=%zu", n);
        free(yf);
        OPS->scale(be, n, 1.7f, dy);
        lt_ref_scale(n, 1.7f, yr);
        yf = hget(dy, n);
        CLOSE(yf, yr, n, RTOL_EW, "scale n=%zu", n);
        double sf = OPS->sumsq(be, n, dx), sr = lt_ref_sumsq(n, x);
        ck_assert_msg(fabs(sf - sr) <= 1e-9 * sr, "sumsq n=%zu: %.12g vs %.12g", n, sf, sr);
        ck_assert_msg(OPS->sumsq(be, n, dx) == sf, "sumsq n=%zu is not deterministic", n);
        ck_assert_int_eq(OPS->all_finite(be, n, dx), 1);
        if (n) {
            size_t where[3] = {0, n / 2, n - 1};
            float bad[3] = {INFINITY, -INFINITY, NAN};
            for (int w = 0; w < 3; w++)
                for (int b = 0; b < 3; b++) {
                    OPS->upload(be, dx + where[w], &bad[b], sizeof(float));
                    ck_assert_msg(OPS->all_finite(be, n, dx) == 0, "all_finite n=%zu at %zu", n, where[w]);
                    OPS->upload(be, dx + where[w], &x[where[w]], sizeof(float));
                }
            float big = 3.4e38f; /* large but finite */
            OPS->upload(be, dx + n - 1, &big, sizeof big);
            ck_assert_int_eq(OPS->all_finite(be, n, dx), 1);
        }
        SYNC_OK("elementwise");
        free(x);
        free(y0);
        free(yr);
        free(yf);
        dfree(dx);
        dfree(dy);
    }
    /* row_scale (objectives.c's per-token CE weights): exact, a product per element */
    static const int rs[][2] = {{1, 1}, {7, 33}, {300, 1001}, {64, 32000}};
    for (size_t s = 0; s < sizeof rs / sizeof rs[0]; s++) {
        const int n = rs[s][0], C = rs[s][1];
        float *x = frand((size_t)n * C, -3, 3), *w = frand((size_t)n, -2, 2), *xr = fdup(x, (size_t)n * C);
        w[0] = 0.0f;
        float *dx = dput(x, (size_t)n * C), *dw = dput(w, (size_t)n);
        OPS->row_scale(be, dx, dw, n, C);
        lt_ref_row_scale(xr, w, n, C);
        float *xf = hget(dx, (size_t)n * C);
        ck_assert_msg(memcmp(xf, xr, (size_t)n * C * sizeof(float)) == 0, "row_scale %d x %d differs", n, C);
        SYNC_OK("row_scale");
        free(x);
        free(w);
        free(xr);
        free(xf);
        dfree(dx);
        dfree(dw);
    }
}
END_TEST

START_TEST(test_embedding) {
    static const int shapes[][3] = {{50, 37, 23}, {1000, 4096, 70}, {3, 1, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int V = shapes[s][0], C = shapes[s][1], N = shapes[s][2];
        float *table = frand((size_t)V * C, -1, 1);
        int32_t ids[70];
        for (int i = 0; i < N; i++) ids[i] = irand(V);
        ids[0] = V - 1;
        float *dt = dput(table, (size_t)V * C), *dout = dnan((size_t)N * C);
        int32_t *dids = dputi(ids, (size_t)N);
        OPS->embedding_forward(be, dout, dids, dt, N, C);
        float *of = hget(dout, (size_t)N * C), *orf = fnew((size_t)N * C);
        lt_ref_embedding_forward(orf, ids, table, N, C);
        SAME(of, orf, (size_t)N * C, "embedding V=%d C=%d N=%d", V, C, N);
        SYNC_OK("embedding");
        /* backward: dtable += scatter of dout by ids (repeated ids), the reference's order: bit for bit */
        ids[N - 1] = ids[0];
        OPS->upload(be, dids, ids, (size_t)N * sizeof(int32_t));
        float *g = frand((size_t)N * C, -1, 1);
        float *dg = dput(g, (size_t)N * C);
        OPS->embedding_backward(be, dt, dids, dg, N, C);
        float *bt = hget(dt, (size_t)V * C);
        lt_ref_embedding_backward(table, ids, g, N, C);
        SAME(bt, table, (size_t)V * C, "embedding_backward V=%d C=%d N=%d", V, C, N);
        SYNC_OK("embedding_backward");
        free(g);
        free(bt);
        dfree(dg);
        free(table);
        free(of);
        free(orf);
        dfree(dt);
        dfree(dout);
        dfree(dids);
    }
}
END_TEST

/* ---- RMSNorm -------------------------------------------------------------------------------------- */

START_TEST(test_rmsnorm) {
    static const int shapes[][2] = {{1, 1},   {3, 17},   {7, 100},    {64, 2048}, {5, 4099},
                                    {33, 16}, {300, 64}, {2001, 515}, {40, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], C = shapes[s][1];
        size_t NC = (size_t)N * C;
        float *x = frand(NC, -2, 2), *w = frand((size_t)C, 0.5f, 1.5f), *g = frand(NC, -1, 1);
        float *orf = fnew(NC), *rr = fnew((size_t)N);
        float *dx = dput(x, NC), *dw = dput(w, (size_t)C), *dg = dput(g, NC);
        float *dout = dnan(NC), *drs = dnan((size_t)N);
        OPS->rmsnorm_forward(be, dout, drs, dx, dw, N, C, 1e-5f);
        lt_ref_rmsnorm_forward(orf, rr, x, w, N, C, 1e-5f);
        float *of = hget(dout, NC), *rf = hget(drs, (size_t)N);
        CLOSE(of, orf, NC, RTOL, "rmsnorm out N=%d C=%d", N, C);
        CLOSE(rf, rr, (size_t)N, RTOL, "rmsnorm rstd N=%d C=%d", N, C);
        /* backward accumulates into dinp and dweight (from the reference rstd) */
        float *di0 = frand(NC, -1, 1), *dw0 = frand((size_t)C, -1, 1);
        float *dir = fdup(di0, NC), *dwr = fdup(dw0, (size_t)C);
        float *ddi = dput(di0, NC), *ddw = dput(dw0, (size_t)C), *drr = dput(rr, (size_t)N);
        OPS->rmsnorm_backward(be, ddi, ddw, dg, dx, dw, drr, N, C);
        lt_ref_rmsnorm_backward(dir, dwr, g, x, w, rr, N, C);
        float *dif = hget(ddi, NC), *dwf = hget(ddw, (size_t)C);
        CLOSE(dif, dir, NC, RTOL, "rmsnorm dinp N=%d C=%d", N, C);
        CLOSE(dwf, dwr, (size_t)C, RTOL, "rmsnorm dweight N=%d C=%d", N, C);
        /* again from the same start: bit-identical (deterministic); dweight NULL gives the same dinp */
        OPS->upload(be, ddi, di0, NC * sizeof(float));
        OPS->upload(be, ddw, dw0, (size_t)C * sizeof(float));
        OPS->rmsnorm_backward(be, ddi, ddw, dg, dx, dw, drr, N, C);
        float *dif2 = hget(ddi, NC), *dwf2 = hget(ddw, (size_t)C);
        SAME(dif2, dif, NC, "rmsnorm dinp twice N=%d C=%d", N, C);
        SAME(dwf2, dwf, (size_t)C, "rmsnorm dweight twice N=%d C=%d", N, C);
        OPS->upload(be, ddi, di0, NC * sizeof(float));
        OPS->rmsnorm_backward(be, ddi, NULL, dg, dx, dw, drr, N, C);
        float *din = hget(ddi, NC);
        SAME(din, dif, NC, "rmsnorm dinp with dweight NULL N=%d C=%d", N, C);
        SYNC_OK("rmsnorm");
        free(x);
        free(w);
        free(g);
        free(orf);
        free(rr);
        free(of);
        free(rf);
        free(di0);
        free(dw0);
        free(dir);
        free(dwr);
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
}
END_TEST

/* ---- RoPE ----------------------------------------------------------------------------------------- */

static void rope_inv_freq(float *f, int rot, double theta) {
    for (int j = 0; j < rot / 2; j++) f[j] = (float)(1.0 / pow(theta, 2.0 * j / rot));
}

START_TEST(test_rope) {
    static const int shapes[][4] = {{1, 1, 2, 2},     {5, 3, 8, 8},       {7, 2, 64, 64},
                                    {4, 3, 80, 32},   {9, 4, 128, 128},   {3, 5, 6, 4},
                                    {2, 2, 256, 256}, {300, 8, 128, 128}, {16, 6, 128, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], NH = shapes[s][1], HD = shapes[s][2], rot = shapes[s][3];
        size_t n = (size_t)N * NH * HD;
        float inv[128];
        rope_inv_freq(inv, rot, s & 1 ? 500000.0 : 10000.0);
        int32_t pos[300];
        for (int i = 0; i < N; i++) pos[i] = irand(8192);
        pos[0] = 0;
        float *x = frand(n, -2, 2), *xr = fdup(x, n);
        float *dxv = dput(x, n), *dinv = dput(inv, (size_t)(rot / 2));
        int32_t *dpos = dputi(pos, (size_t)N);
        OPS->rope_forward(be, dxv, dpos, dinv, N, NH, HD, rot);
        lt_ref_rope_forward(xr, pos, inv, N, NH, HD, rot);
        float *xf = hget(dxv, n);
        CLOSE(xf, xr, n, RTOL, "rope fwd N=%d NH=%d HD=%d rot=%d", N, NH, HD, rot);
        for (int i = 0; i < N; i++) /* channels past rot_dim untouched */
            for (int h = 0; h < NH; h++)
                for (int d = rot; d < HD; d++) {
                    size_t o = ((size_t)i * NH + h) * HD + d;
                    ck_assert(xf[o] == x[o]);
                }
        /* backward of x, and backward inverts forward */
        float *gr = fdup(x, n), *dgv = dput(x, n);
        OPS->rope_backward(be, dgv, dpos, dinv, N, NH, HD, rot);
        lt_ref_rope_backward(gr, pos, inv, N, NH, HD, rot);
        float *gf = hget(dgv, n);
        CLOSE(gf, gr, n, RTOL, "rope bwd N=%d NH=%d HD=%d rot=%d", N, NH, HD, rot);
        OPS->rope_backward(be, dxv, dpos, dinv, N, NH, HD, rot);
        float *back = hget(dxv, n);
        CLOSE(back, x, n, RTOL, "rope bwd(fwd(x)) == x N=%d HD=%d", N, HD);
        SYNC_OK("rope");
        free(x);
        free(xr);
        free(xf);
        free(gr);
        free(gf);
        free(back);
        dfree(dxv);
        dfree(dinv);
        dfree(dpos);
        dfree(dgv);
    }
}
END_TEST

/* ---- attention ------------------------------------------------------------------------------------ */

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

static void att_compare(const att_case *c) {
    int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float scale = 1.0f / sqrtf((float)HD);
    float *q = frand(nq, -2, 2), *k = frand(nkv, -2, 2), *v = frand(nkv, -1, 1), *dout = frand(nq, -1, 1);
    int32_t *ks = malloc((size_t)B * T * sizeof(int32_t));
    make_kv_start(ks, B, T, c->mode);
    char what[160];
    snprintf(what, sizeof what, "attention B=%d T=%d NH=%d NKV=%d HD=%d mode=%d", B, T, NH, NKV, HD, c->mode);

    float *dq_ = dput(q, nq), *dk_ = dput(k, nkv), *dv_ = dput(v, nkv), *ddo = dput(dout, nq);
    int32_t *dks = dputi(ks, (size_t)B * T);
    float *dout_o = dnan(nq), *dlse = dnan(nl);
    OPS->attention_forward(be, dout_o, dlse, dq_, dk_, dv_, dks, B, T, NH, NKV, HD, scale);
    float *orf = fnew(nq), *lr = fnew(nl);
    lt_ref_attention_forward(orf, lr, q, k, v, ks, B, T, NH, NKV, HD, scale);
    float *of = hget(dout_o, nq), *lf = hget(dlse, nl);
    CLOSE(of, orf, nq, RTOL, "%s out", what);
    CLOSE(lf, lr, nl, RTOL, "%s lse", what);

    /* backward from the reference forward's out/lse; outputs and scratch start as NaN */
    size_t ns = OPS->attention_backward_scratch(be, B, T, NH, HD);
    float *scratch = dnan(ns);
    float *ro = dput(orf, nq), *rl = dput(lr, nl);
    float *gq = dnan(nq), *gk = dnan(nkv), *gv = dnan(nkv);
    OPS->attention_backward(be, gq, gk, gv, ddo, dq_, dk_, dv_, ro, rl, dks, B, T, NH, NKV, HD, scale, scratch);
    float *dqr = fnew(nq), *dkr = fnew(nkv), *dvr = fnew(nkv);
    lt_ref_attention_backward(dqr, dkr, dvr, dout, q, k, v, orf, lr, ks, B, T, NH, NKV, HD, scale, NULL);
    float *dqf = hget(gq, nq), *dkf = hget(gk, nkv), *dvf = hget(gv, nkv);
    /* floor 1e-2: with a single key dq and dk cancel to exactly 0 in exact arithmetic */
    CLOSE_F(dqf, dqr, nq, RTOL, 1e-2, "%s dq", what);
    CLOSE_F(dkf, dkr, nkv, RTOL, 1e-2, "%s dk", what);
    CLOSE_F(dvf, dvr, nkv, RTOL, 1e-2, "%s dv", what);
    /* a query that sees a single key contributes exactly 0 (backend.h): its dq row is 0, and with
     * T = 1 so is all of dk */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            if (lt_att_kv_lo(ks + (size_t)b * T, t) == t)
                for (size_t i = 0; i < (size_t)NH * HD; i++)
                    ck_assert_msg(dqf[((size_t)b * T + t) * NH * HD + i] == 0.0f,
                                  "%s: dq of single-key query b=%d t=%d is %g", what, b, t,
                                  dqf[((size_t)b * T + t) * NH * HD + i]);
    if (T == 1)
        for (size_t i = 0; i < nkv; i++) ck_assert_msg(dkf[i] == 0.0f, "%s: dk with T = 1 is %g", what, dkf[i]);

    /* deterministic: a second backward (over the previous results) is bit-identical */
    OPS->attention_backward(be, gq, gk, gv, ddo, dq_, dk_, dv_, ro, rl, dks, B, T, NH, NKV, HD, scale, scratch);
    float *dqf2 = hget(gq, nq), *dkf2 = hget(gk, nkv), *dvf2 = hget(gv, nkv);
    SAME(dqf2, dqf, nq, "%s dq twice", what);
    SAME(dkf2, dkf, nkv, "%s dk twice", what);
    SAME(dvf2, dvf, nkv, "%s dv twice", what);
    SYNC_OK(what);

    free(q);
    free(k);
    free(v);
    free(dout);
    free(ks);
    free(orf);
    free(lr);
    free(of);
    free(lf);
    free(dqr);
    free(dkr);
    free(dvr);
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
    /* head_dim above 128: the row-wise kernels */
    {1, 9, 2, 1, 260, 1},
    {1, 150, 4, 2, 160, 0},
    {2, 70, 2, 2, 256, 1},
};

START_TEST(test_attention) { att_compare(&att_cases[_i]); }
END_TEST

/* kv_start semantics: a packed row gives, on each of its sequences, what that sequence gives alone */
START_TEST(test_attention_packed_semantics) {
    const int T = 150, NH = 4, NKV = 2, HD = 64, starts[] = {0, 13, 14, 100, 150};
    float scale = 0.125f;
    size_t nq = (size_t)T * NH * HD, nkv = (size_t)T * NKV * HD;
    float *q = frand(nq, -2, 2), *k = frand(nkv, -2, 2), *v = frand(nkv, -1, 1);
    int32_t ks[150];
    for (int s = 0; s < 4; s++)
        for (int t = starts[s]; t < starts[s + 1]; t++) ks[t] = starts[s];
    float *dq_ = dput(q, nq), *dk_ = dput(k, nkv), *dv_ = dput(v, nkv), *dout = dnan(nq), *dlse = dnan((size_t)NH * T);
    int32_t *dks = dputi(ks, T);
    OPS->attention_forward(be, dout, dlse, dq_, dk_, dv_, dks, 1, T, NH, NKV, HD, scale);
    float *out = hget(dout, nq), *lse = hget(dlse, (size_t)NH * T);
    float *o1 = fnew(nq), *l1 = fnew((size_t)NH * T);
    int32_t zero[150] = {0};
    for (int s = 0; s < 4; s++) {
        int a = starts[s], L = starts[s + 1] - a;
        lt_ref_attention_forward(o1, l1, q + (size_t)a * NH * HD, k + (size_t)a * NKV * HD, v + (size_t)a * NKV * HD,
                                 zero, 1, L, NH, NKV, HD, scale);
        CLOSE(out + (size_t)a * NH * HD, o1, (size_t)L * NH * HD, RTOL, "packed segment %d out", s);
        for (int h = 0; h < NH; h++)
            CLOSE(lse + (size_t)h * T + a, l1 + (size_t)h * L, (size_t)L, RTOL, "packed segment %d lse", s);
    }
    SYNC_OK("packed semantics");
    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
    free(o1);
    free(l1);
    dfree(dq_);
    dfree(dk_);
    dfree(dv_);
    dfree(dout);
    dfree(dlse);
    dfree(dks);
}
END_TEST

/* decode: vs the reference, and vs the last row of a causal forward over the same keys */
START_TEST(test_attention_decode) {
    static const int shapes[][6] = {{1, 1, 1, 1, 1, 8},         {2, 50, 37, 4, 2, 16}, {3, 100, 100, 6, 2, 64},
                                    {1, 300, 257, 8, 2, 128},   {2, 20, 5, 3, 3, 20},  {1, 10, 3, 2, 1, 260},
                                    {2, 4096, 3000, 8, 2, 128}, {1, 16, 0, 2, 1, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int B = shapes[s][0], S = shapes[s][1], L = shapes[s][2], NH = shapes[s][3], NKV = shapes[s][4],
            HD = shapes[s][5];
        float scale = 1.0f / sqrtf((float)HD);
        size_t nq = (size_t)B * NH * HD, nc = (size_t)B * S * NKV * HD;
        float *ql = frand(nq, -2, 2);
        float *kc = frand(nc, -2, 2), *vc = frand(nc, -1, 1);
        for (size_t i = 0; i < nc; i++) /* junk past len must not be read */
            if ((i / ((size_t)NKV * HD)) % S >= (size_t)L) kc[i] = vc[i] = 1e30f;
        float *dql = dput(ql, nq), *dkc = dput(kc, nc), *dvc = dput(vc, nc), *dof = dnan(nq);
        OPS->attention_decode(be, dof, dql, dkc, dvc, B, S, L, NH, NKV, HD, scale);
        float *of = hget(dof, nq), *orf = fnew(nq);
        lt_ref_attention_decode(orf, ql, kc, vc, B, S, L, NH, NKV, HD, scale);
        CLOSE(of, orf, nq, RTOL, "decode B=%d S=%d len=%d NH=%d NKV=%d HD=%d", B, S, L, NH, NKV, HD);
        if (L == 0)
            for (size_t i = 0; i < nq; i++) ck_assert(of[i] == 0.0f);
        if (L > 0 && S <= 300) { /* == the last row of a causal forward over keys 0..L-1 */
            size_t nqf = (size_t)B * L * NH * HD, nkv = (size_t)B * L * NKV * HD;
            float *q = frand(nqf, -2, 2), *k = fnew(nkv), *v = fnew(nkv);
            for (int b = 0; b < B; b++) {
                memcpy(k + (size_t)b * L * NKV * HD, kc + (size_t)b * S * NKV * HD,
                       (size_t)L * NKV * HD * sizeof(float));
                memcpy(v + (size_t)b * L * NKV * HD, vc + (size_t)b * S * NKV * HD,
                       (size_t)L * NKV * HD * sizeof(float));
                memcpy(q + ((size_t)b * L + L - 1) * NH * HD, ql + (size_t)b * NH * HD,
                       (size_t)NH * HD * sizeof(float));
            }
            int32_t *ks = calloc((size_t)B * L, sizeof(int32_t));
            float *full = fnew(nqf), *lse = fnew((size_t)B * NH * L);
            lt_ref_attention_forward(full, lse, q, k, v, ks, B, L, NH, NKV, HD, scale);
            for (int b = 0; b < B; b++)
                CLOSE(of + (size_t)b * NH * HD, full + ((size_t)b * L + L - 1) * NH * HD, (size_t)NH * HD, RTOL,
                      "decode == last row of forward, b=%d", b);
            free(q);
            free(k);
            free(v);
            free(ks);
            free(full);
            free(lse);
        }
        SYNC_OK("decode");
        free(ql);
        free(kc);
        free(vc);
        free(of);
        free(orf);
        dfree(dql);
        dfree(dkc);
        dfree(dvc);
        dfree(dof);
    }
}
END_TEST

/* ---- SwiGLU --------------------------------------------------------------------------------------- */

START_TEST(test_swiglu) {
    static const size_t sizes[] = {1, 15, 16, 1000, 65540, 3000001};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *g = frand(n, -12, 12), *u = frand(n, -3, 3), *go = frand(n, -1, 1);
        if (n > 4) {
            g[1] = -100.0f;
            g[2] = 100.0f;
            g[3] = 0.0f;
        }
        float *dg = dput(g, n), *du = dput(u, n), *dgo = dput(go, n), *dout = dnan(n);
        OPS->swiglu_forward(be, dout, dg, du, n);
        float *of = hget(dout, n), *orf = fnew(n);
        lt_ref_swiglu_forward(orf, g, u, n);
        CLOSE(of, orf, n, RTOL_EW, "swiglu fwd n=%zu", n);
        float *ddg = dnan(n), *ddu = dnan(n);
        OPS->swiglu_backward(be, ddg, ddu, dgo, dg, du, n);
        float *dgf = hget(ddg, n), *duf = hget(ddu, n), *dgr = fnew(n), *dur = fnew(n);
        lt_ref_swiglu_backward(dgr, dur, go, g, u, n);
        CLOSE(dgf, dgr, n, RTOL_EW, "swiglu dgate n=%zu", n);
        CLOSE(duf, dur, n, RTOL_EW, "swiglu dup n=%zu", n);
        /* in place: dgate, dup overwrite gate, up */
        OPS->swiglu_backward(be, dg, du, dgo, dg, du, n);
        float *gi = hget(dg, n), *ui = hget(du, n);
        SAME(gi, dgf, n, "swiglu dgate in place n=%zu", n);
        SAME(ui, duf, n, "swiglu dup in place n=%zu", n);
        SYNC_OK("swiglu");
        free(g);
        free(u);
        free(go);
        free(of);
        free(orf);
        free(dgf);
        free(duf);
        free(dgr);
        free(dur);
        free(gi);
        free(ui);
        dfree(dg);
        dfree(du);
        dfree(dgo);
        dfree(dout);
        dfree(ddg);
        dfree(ddu);
    }
}
END_TEST

/* ---- quantized weights ---------------------------------------------------------------------------- */

/* a device descriptor of host tensor q (free with q_free) */
static lt_qdesc q_upload(const lt_qtensor *q) {
    lt_qdesc d = lt_qtensor_desc(q);
    const size_t nd = lt_qtensor_data_bytes(q);
    d.data = dalloc(nd);
    OPS->upload(be, (void *)d.data, q->data, nd);
    if (q->double_quant) {
        d.qabsmax = dalloc((size_t)q->n_blocks);
        OPS->upload(be, (void *)d.qabsmax, q->qabsmax, (size_t)q->n_blocks);
        d.absmax2 = dput(q->absmax2, (size_t)q->n_blocks2);
        d.code8 = dput(lt_quant_code8(), 256);
    } else {
        d.absmax = dput(q->absmax, (size_t)q->n_blocks);
    }
    return d;
}
static void q_free(const lt_qdesc *d) {
    dfree((void *)d->data);
    if (d->qabsmax) {
        dfree((void *)d->qabsmax);
        dfree((void *)d->absmax2);
        dfree((void *)d->code8);
    } else dfree((void *)d->absmax);
}

/* dequantize_rows: bit for bit the reference (NF4/FP4/int8, with and without double quantization) */
START_TEST(test_dequantize_rows) {
    const int rows = 37, cols = 192;
    const size_t n = (size_t)rows * cols;
    float *x = frand(n, -2, 2);
    const lt_quant_format fmts[] = {LT_QUANT_NF4, LT_QUANT_FP4, LT_QUANT_INT8};
    for (int f = 0; f < 3; f++)
        for (int dq = 0; dq < 2; dq++) {
            lt_quant_params p = {.size = sizeof p, .format = fmts[f], .blocksize = 64, .double_quant = dq};
            const int64_t shape[2] = {rows, cols};
            lt_qtensor *q;
            lt_error e = {0};
            ck_assert_int_eq(lt_qtensor_quantize_ex(x, shape, 2, &p, NULL, &q, &e), LT_OK);
            lt_qdesc h = lt_qtensor_desc(q), d = q_upload(q);
            const int r0 = 3, r1 = 31;
            float *dout = dnan((size_t)(r1 - r0) * cols), *ref = fnew((size_t)(r1 - r0) * cols);
            OPS->dequantize_rows(be, dout, &d, r0, r1);
            lt_ref_dequantize_rows(ref, &h, r0, r1);
            float *got = hget(dout, (size_t)(r1 - r0) * cols);
            SAME(got, ref, (size_t)(r1 - r0) * cols, "dequantize_rows format %d dq %d", (int)fmts[f], dq);
            SYNC_OK("dequantize_rows");
            free(got);
            free(ref);
            dfree(dout);
            q_free(&d);
            lt_qtensor_free(q);
        }
    free(x);
}
END_TEST

/* gemm_q4_forward / backward (4-bit weights computed in bf16) vs the reference: the same bound as
 * test_gemm_bf16 with W = the dequantized weight rounded to bf16; M beyond one tile of rows, odd
 * shapes, NF4 and FP4 with and without double quantization. */
START_TEST(test_gemm_q4) {
    static const int shapes[][3] = {{1, 64, 1}, {37, 192, 53}, {300, 128, 260}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int v = 0; v < 4; v++) {
            const int N = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
            float *W = frand((size_t)out * in, -1, 1), *x = frand((size_t)N * in, -2, 2),
                  *dy = frand((size_t)N * out, -1, 1), *acc = frand((size_t)N * in, -1, 1);
            lt_quant_params p = {.size = sizeof p,
                                 .format = v & 1 ? LT_QUANT_FP4 : LT_QUANT_NF4,
                                 .blocksize = 64,
                                 .double_quant = v >> 1};
            const int64_t shape[2] = {out, in};
            lt_qtensor *q;
            lt_error e = {0};
            ck_assert_int_eq(lt_qtensor_quantize_ex(W, shape, 2, &p, NULL, &q, &e), LT_OK);
            float *Wd = fnew((size_t)out * in);
            lt_qdesc h = lt_qtensor_desc(q), d = q_upload(q);
            lt_qdesc_dequantize_range(&h, Wd, 0, (int64_t)out * in);
            const int tile_rows = 7; /* several tiles per weight, a partial last one */
            float *tile = dnan((size_t)tile_rows * in);
            float *dx_ = dput(x, (size_t)N * in), *ddy = dput(dy, (size_t)N * out), *dyv = dnan((size_t)N * out);
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                float *ddx = accumulate ? dput(acc, (size_t)N * in) : dnan((size_t)N * in);
                OPS->gemm_q4_forward(be, dyv, dx_, &d, N, in, out, tile, tile_rows);
                OPS->gemm_q4_backward(be, ddx, ddy, &d, N, in, out, accumulate, tile, tile_rows);
                SYNC_OK("gemm_q4");
                float *y = hget(dyv, (size_t)N * out), *dx = hget(ddx, (size_t)N * in);
                float *yr = fnew((size_t)N * out), *dxr = fdup(acc, (size_t)N * in);
                lt_ref_gemm_q4_forward(yr, x, &h, N, in, out);
                lt_ref_gemm_q4_backward(dxr, dy, &h, N, in, out, accumulate);
                for (int n = 0; n < N; n += (N > 100 ? 13 : 1)) {
                    for (int o = 0; o < out; o++) {
                        double sa = 0;
                        for (int i = 0; i < in; i++)
                            sa += fabs((double)lt_bf16_to_f32(lt_bf16_round(x[(size_t)n * in + i])) *
                                       lt_bf16_to_f32(lt_bf16_round(Wd[(size_t)o * in + i])));
                        double tol = 4.0 * (in + 2) * ldexp(1.0, -24) * sa + 1e-30;
                        ck_assert_msg(fabs((double)y[(size_t)n * out + o] - yr[(size_t)n * out + o]) <= tol,
                                      "gemm_q4_forward v%d %dx%dx%d [%d,%d]: %.9g vs %.9g", v, N, in, out, n, o,
                                      y[(size_t)n * out + o], yr[(size_t)n * out + o]);
                    }
                    for (int i = 0; i < in; i++) {
                        double sa = accumulate ? fabs(acc[(size_t)n * in + i]) : 0.0;
                        for (int o = 0; o < out; o++)
                            sa += fabs((double)lt_bf16_to_f32(lt_bf16_round(dy[(size_t)n * out + o])) *
                                       lt_bf16_to_f32(lt_bf16_round(Wd[(size_t)o * in + i])));
                        double tol = 4.0 * (out + 3) * ldexp(1.0, -24) * sa + 1e-30;
                        ck_assert_msg(fabs((double)dx[(size_t)n * in + i] - dxr[(size_t)n * in + i]) <= tol,
                                      "gemm_q4_backward v%d %dx%dx%d acc %d [%d,%d]: %.9g vs %.9g", v, N, in, out,
                                      accumulate, n, i, dx[(size_t)n * in + i], dxr[(size_t)n * in + i]);
                    }
                }
                free(y);
                free(dx);
                free(yr);
                free(dxr);
                dfree(ddx);
            }
            dfree(tile);
            dfree(dx_);
            dfree(ddy);
            dfree(dyv);
            q_free(&d);
            lt_qtensor_free(q);
            free(Wd);
            free(W);
            free(x);
            free(dy);
            free(acc);
        }
}
END_TEST

/* embedding_forward_bf16: rows of a table packed by bf16_weight_pack, as f32, bit for bit the
 * reference's reading of the CPU layout of the same table */
START_TEST(test_embedding_bf16) {
    const int V = 70, C = 45, N = 33;
    float *table = frand((size_t)V * C, -3, 3);
    void *dt = dalloc(OPS->bf16_weight_bytes(be, V, C)), *rt = malloc(lt_ref_bf16_weight_bytes(V, C));
    OPS->bf16_weight_pack(be, dt, table, V, C);
    lt_ref_bf16_weight_pack(rt, table, V, C);
    int32_t ids[33];
    for (int i = 0; i < N; i++) ids[i] = irand(V);
    ids[0] = V - 1;
    int32_t *did = dputi(ids, (size_t)N);
    float *dout = dnan((size_t)N * C), *ref = fnew((size_t)N * C);
    OPS->embedding_forward_bf16(be, dout, did, dt, N, C);
    lt_ref_embedding_forward_bf16(ref, ids, rt, N, C);
    float *got = hget(dout, (size_t)N * C);
    SYNC_OK("embedding_forward_bf16");
    SAME(got, ref, (size_t)N * C, "embedding_forward_bf16");
    free(got);
    free(ref);
    free(table);
    free(rt);
    dfree(dt);
    dfree(did);
    dfree(dout);
}
END_TEST

/* ---- cross-entropy -------------------------------------------------------------------------------- */

START_TEST(test_cross_entropy) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {5, 1000}, {4, 32000}, {7, 33}, {40, 515}, {3, 128256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], V = shapes[s][1];
        size_t nv = (size_t)n * V;
        float *x = frand(nv, -10, 10);
        int32_t tg[40];
        int valid = 0;
        for (int i = 0; i < n; i++) {
            tg[i] = irand(V);
            if (i % 3 == 2) tg[i] = -100;
            valid += tg[i] >= 0;
        }
        if (n >= 4) tg[1] = V;                        /* out of range: treated as ignored */
        if (V > 2) x[tg[0] == 1 ? 2 : 1] = -INFINITY; /* a masked logit (not row 0's target) */
        float lr[40];
        float *dx = dput(x, nv), *dl = dnan((size_t)n);
        int32_t *dtg = dputi(tg, (size_t)n);
        /* loss only: logits untouched */
        OPS->cross_entropy(be, dx, dl, dtg, n, V, 0.0f);
        lt_ref_cross_entropy(x, lr, tg, n, V, 0.0f);
        float *xf = hget(dx, nv), *lf = hget(dl, (size_t)n);
        SAME(xf, x, nv, "cross_entropy grad_scale 0 leaves logits n=%d V=%d", n, V);
        CLOSE(lf, lr, (size_t)n, RTOL, "cross_entropy loss n=%d V=%d", n, V);
        for (int i = 0; i < n; i++)
            if (tg[i] < 0 || tg[i] >= V) ck_assert(lf[i] == 0.0f);
        free(lf);
        /* with gradient */
        float gs = valid ? 1.0f / valid : 0.5f;
        float *xr = fdup(x, nv);
        OPS->cross_entropy(be, dx, dl, dtg, n, V, gs);
        lt_ref_cross_entropy(xr, lr, tg, n, V, gs);
        float *gf = hget(dx, nv);
        lf = hget(dl, (size_t)n);
        CLOSE(lf, lr, (size_t)n, RTOL, "cross_entropy loss (grad) n=%d V=%d", n, V);
        CLOSE(gf, xr, nv, RTOL, "cross_entropy grad n=%d V=%d", n, V);
        for (int i = 0; i < n; i++)
            if (tg[i] < 0 || tg[i] >= V)
                for (int c = 0; c < V; c++) ck_assert(gf[(size_t)i * V + c] == 0.0f);
        SYNC_OK("cross_entropy");
        free(x);
        free(xf);
        free(lf);
        free(xr);
        free(gf);
        dfree(dx);
        dfree(dl);
        dfree(dtg);
    }
}
END_TEST

/* ---- dropout -------------------------------------------------------------------------------------- */

START_TEST(test_dropout) {
    size_t n = 200003;
    float *x = frand(n, 0.5f, 2.0f), *r = fnew(n);
    float *dx = dput(x, n), *da = dnan(n), *db = dnan(n);
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        float p = ps[pi];
        /* streams far apart (the core spaces them by 2^40): the counter is 64-bit */
        uint64_t far = (5ull << 40) + 3;
        OPS->dropout(be, da, dx, n, p, 0x9E3779B97F4A7C15ull, far);
        lt_ref_dropout(r, x, n, p, 0x9E3779B97F4A7C15ull, far);
        float *a = hget(da, n);
        SAME(a, r, n, "dropout p=%g vs reference at offset 2^40", p);
        free(a);
        OPS->dropout(be, da, dx, n, p, 42, 1000);
        lt_ref_dropout(r, x, n, p, 42, 1000);
        a = hget(da, n);
        SAME(a, r, n, "dropout p=%g vs reference", p);
        if (p > 0.0f && p < 1.0f) {
            /* the mask is a function of offset + i: a shifted call sees the same elements */
            OPS->dropout(be, db, dx + 777, n - 777, p, 42, 1000 + 777);
            float *b = hget(db, n - 777);
            SAME(b, a + 777, n - 777, "dropout p=%g offset shift", p);
            free(b);
            /* in place */
            float *dc = dput(x, n);
            OPS->dropout(be, dc, dc, n, p, 42, 1000);
            float *c = hget(dc, n);
            SAME(c, a, n, "dropout p=%g in place", p);
            free(c);
            dfree(dc);
        }
        free(a);
    }
    SYNC_OK("dropout");
    free(x);
    free(r);
    dfree(dx);
    dfree(da);
    dfree(db);
}
END_TEST

/* ---- AdamW ---------------------------------------------------------------------------------------- */

START_TEST(test_adamw) {
    static const size_t sizes[] = {1, 1037, 1000003};
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *p = frand(n, -1, 1), *m = fnew(n), *v = fnew(n);
        memset(m, 0, n * sizeof(float));
        memset(v, 0, n * sizeof(float));
        float *dp = dput(p, n), *dm = dput(m, n), *dvv = dput(v, n);
        for (int t = 1; t <= 3; t++) {
            float *g = frand(n, -1, 1);
            g[0] = 0.0f;
            float *dg = dput(g, n);
            float ss = (float)(lr / (1 - pow(b1, t))), bc2 = (float)sqrt(1 - pow(b2, t)), dec = (float)(lr * wd);
            lt_ref_adamw_step(p, g, m, v, n, ss, (float)b1, (float)b2, (float)eps, bc2, dec);
            OPS->adamw_step(be, dp, dg, dm, dvv, n, ss, (float)b1, (float)b2, (float)eps, bc2, dec);
            free(g);
            dfree(dg);
        }
        float *pf = hget(dp, n), *mf = hget(dm, n), *vf = hget(dvv, n);
        CLOSE(pf, p, n, RTOL_EW, "adamw param n=%zu", n);
        CLOSE(mf, m, n, RTOL_EW, "adamw m n=%zu", n);
        CLOSE(vf, v, n, RTOL_EW, "adamw v n=%zu", n);
        SYNC_OK("adamw");
        free(p);
        free(m);
        free(v);
        free(pf);
        free(mf);
        free(vf);
        dfree(dp);
        dfree(dm);
        dfree(dvv);
    }
}
END_TEST

/* ---- 8-bit AdamW (bitsandbytes blockwise): the kernel does the reference's IEEE ops in its order
 * (__fmul_rn / __fadd_rn / __fdiv_rn, correctly rounded sqrtf), so codes, absmax and parameters must
 * be bit for bit the reference's (tolerance 0); sizes with a partial last block, the 32-bit path for a
 * small tensor, non-finite gradients and an all-zero block. ------------------------------------------ */
START_TEST(test_adamw8bit) {
    static const size_t sizes[] = {300, 4096, 5000, 70001};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s], nb = (n + 255) / 256;
        const int q8 = n >= 4096;
        float *p = frand(n, -0.1f, 0.1f), *m = fnew(n), *v = fnew(n), *a1 = fnew(nb), *a2 = fnew(nb);
        uint8_t *c1 = calloc(n, 1), *c2 = calloc(n, 1);
        memset(m, 0, n * 4);
        memset(v, 0, n * 4);
        memset(a1, 0, nb * 4);
        memset(a2, 0, nb * 4);
        float *dp = dput(p, n), *dm = dput(m, n), *dv = dput(v, n), *da1 = dput(a1, nb), *da2 = dput(a2, nb);
        uint8_t *dc1 = dalloc(n), *dc2 = dalloc(n);
        OPS->zero(be, dc1, n);
        OPS->zero(be, dc2, n);
        float *dq = dalloc(512 * sizeof(float));
        OPS->upload(be, dq, lt_quant_code8(), 256 * sizeof(float));
        OPS->upload(be, dq + 256, lt_quant_code8u(), 256 * sizeof(float));
        for (int t = 1; t <= 4; t++) {
            float *g = frand(n, -1e-2f, 1e-2f);
            g[1] = NAN;
            g[n / 2] = INFINITY;
            if (n > 600)
                for (size_t i = 256; i < 512; i++) g[i] = 0.0f;
            float *dg = dput(g, n);
            const float k2 = sqrtf((float)(1.0 - pow(0.999, t))), k1 = (float)(1.0 - pow(0.9, t));
            const float ss = (-1e-3f * k2) / k1, ec = k2 * 1e-8f, dec = 1e-3f * 0.01f;
            if (q8) {
                lt_ref_adamw8bit_step(p, g, c1, c2, a1, a2, n, lt_quant_code8(), lt_quant_code8u(), 0.9f, 0.999f, ec,
                                      ss, dec);
                OPS->adamw8bit_step(be, dp, dg, dc1, dc2, da1, da2, n, dq, dq + 256, 0.9f, 0.999f, ec, ss, dec);
            } else {
                lt_ref_adamw8bit_step(p, g, m, v, NULL, NULL, n, NULL, NULL, 0.9f, 0.999f, ec, ss, dec);
                OPS->adamw8bit_step(be, dp, dg, dm, dv, NULL, NULL, n, NULL, NULL, 0.9f, 0.999f, ec, ss, dec);
            }
            free(g);
            dfree(dg);
        }
        float *pf = hget(dp, n);
        ck_assert_msg(memcmp(pf, p, n * 4) == 0, "adamw8bit n=%zu: parameters differ from the reference", n);
        if (q8) {
            uint8_t *hc = malloc(n);
            OPS->download(be, hc, dc1, n);
            ck_assert_msg(memcmp(hc, c1, n) == 0, "adamw8bit n=%zu: m codes differ", n);
            OPS->download(be, hc, dc2, n);
            ck_assert_msg(memcmp(hc, c2, n) == 0, "adamw8bit n=%zu: v codes differ", n);
            free(hc);
            float *h1 = hget(da1, nb), *h2 = hget(da2, nb);
            ck_assert(memcmp(h1, a1, nb * 4) == 0 && memcmp(h2, a2, nb * 4) == 0);
            free(h1);
            free(h2);
        } else {
            float *hm = hget(dm, n), *hv = hget(dv, n);
            ck_assert(memcmp(hm, m, n * 4) == 0 && memcmp(hv, v, n * 4) == 0);
            free(hm);
            free(hv);
        }
        SYNC_OK("adamw8bit");
        free(p);
        free(m);
        free(v);
        free(a1);
        free(a2);
        free(c1);
        free(c2);
        free(pf);
        dfree(dp);
        dfree(dm);
        dfree(dv);
        dfree(da1);
        dfree(da2);
        dfree(dc1);
        dfree(dc2);
        dfree(dq);
    }
}
END_TEST

/* ---- an op sequence in stream order: results visible to the next op without a sync ------------------ */

START_TEST(test_stream_order) {
    size_t n = 1u << 22;
    float *x = frand(n, -1, 1);
    float *d = dput(x, n), *e = dalloc(n * sizeof(float));
    for (int i = 0; i < 20; i++) { /* allocate, use and free in a loop: freed memory is reused in order */
        float *t = dalloc(n * sizeof(float));
        OPS->copy(be, t, d, n * sizeof(float));
        OPS->scale(be, n, 2.0f, t);
        OPS->copy(be, e, t, n * sizeof(float));
        OPS->free(be, t);
    }
    float *h = hget(e, n);
    for (size_t i = 0; i < n; i++) ck_assert(h[i] == 2.0f * x[i]);
    SYNC_OK("stream order");
    free(x);
    free(h);
    dfree(d);
    dfree(e);
}
END_TEST

/* ---- several host threads on one backend ---------------------------------------------------------- */

/* Each worker repeats, on its own inputs and outputs, ops that use the backend's shared state (cuBLAS
 * handle, workspace, reduction buffers); every result must equal what the same calls give with one
 * thread, bit for bit. Inputs differ per worker (worker 0 has a NaN in y) so that a result computed
 * from another worker's data would show. */
#define CONC_THREADS 4
#define CONC_ITERS 25
#define CONC_N 257
#define CONC_C 1030
typedef struct {
    const float *g, *w, *rs; /* shared inputs (device) */
    float *x, *y;            /* this worker's inputs (device) */
    float *dinp, *dw, *C;    /* this worker's outputs (device) */
    double want_ss;
    int want_finite, bad;
} conc_arg;

static void conc_step(conc_arg *a) {
    OPS->zero(be, a->dinp, (size_t)CONC_N * CONC_C * sizeof(float));
    OPS->zero(be, a->dw, CONC_C * sizeof(float));
    OPS->rmsnorm_backward(be, a->dinp, a->dw, a->g, a->x, a->w, a->rs, CONC_N, CONC_C);
    OPS->gemm(be, 0, 1, 64, 64, CONC_C, 1.0f, a->g, CONC_C, a->x, CONC_C, 0.0f, a->C, 64);
}
static void *conc_worker(void *p) {
    conc_arg *a = p;
    for (int it = 0; it < CONC_ITERS; it++) {
        conc_step(a);
        if (OPS->sumsq(be, (size_t)CONC_N * CONC_C, a->x) != a->want_ss) a->bad++;
        if (OPS->all_finite(be, CONC_C, a->y) != a->want_finite) a->bad++;
    }
    return NULL;
}

START_TEST(test_concurrent_threads) {
    size_t nc = (size_t)CONC_N * CONC_C;
    float *g = frand(nc, -1, 1), *w = frand(CONC_C, 0.5f, 1.5f), *rs = frand(CONC_N, 0.5f, 2);
    float *dg = dput(g, nc), *dw = dput(w, CONC_C), *drs = dput(rs, CONC_N);
    conc_arg args[CONC_THREADS];
    float *want_di[CONC_THREADS], *want_dw[CONC_THREADS], *want_c[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        float *x = frand(nc, -1, 1), *y = frand(CONC_C, -1, 1);
        if (i == 0) y[CONC_C / 2] = NAN;
        args[i] = (conc_arg){dg,
                             dw,
                             drs,
                             dput(x, nc),
                             dput(y, CONC_C),
                             dalloc(nc * sizeof(float)),
                             dalloc(CONC_C * sizeof(float)),
                             dalloc(64 * 64 * sizeof(float)),
                             0.0,
                             0,
                             0};
        free(x);
        free(y);
        /* one thread alone */
        conc_step(&args[i]);
        args[i].want_ss = OPS->sumsq(be, nc, args[i].x);
        args[i].want_finite = OPS->all_finite(be, CONC_C, args[i].y);
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
        ck_assert_msg(args[i].bad == 0, "thread %d: %d sumsq/all_finite results differ from one thread alone", i,
                      args[i].bad);
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
    free(g);
    free(w);
    free(rs);
    dfree(dg);
    dfree(dw);
    dfree(drs);
}
END_TEST

/* ---- suite ---------------------------------------------------------------------------------------- */

static void setup(void) { rng_seed(1234); }

static Suite *cuda_suite(void) {
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_backend_table);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_gemm_bf16);
    tcase_add_test(tc, test_elementwise);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_loop_test(tc, test_attention, 0, (int)(sizeof att_cases / sizeof att_cases[0]));
    tcase_add_test(tc, test_attention_packed_semantics);
    tcase_add_test(tc, test_attention_decode);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_dequantize_rows);
    tcase_add_test(tc, test_gemm_q4);
    tcase_add_test(tc, test_embedding_bf16);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_dropout);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_adamw8bit);
    tcase_add_test(tc, test_stream_order);
    tcase_add_test(tc, test_concurrent_threads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    if (!lt_backend_available("cuda")) {
        printf("test_cuda_ops: no CUDA device, skipped\n");
        return 0;
    }
    setenv("LT_CUDA_DEBUG", "1", 0); /* recorded errors are printed to stderr */
    char err[512] = "";
    if (lt_backend_create("cuda", 0, &be, err, sizeof err) != LT_OK || !be) {
        fprintf(stderr, "test_cuda_ops: a CUDA device is present but the backend cannot be created: %s\n", err);
        return 1;
    }
    SRunner *sr = srunner_create(cuda_suite());
    srunner_set_fork_status(sr, CK_NOFORK); /* CUDA is already initialised in this process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lt_backend_destroy(be);
    return failed ? 1 : 0;
}
