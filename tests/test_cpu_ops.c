/*
 * test_cpu_ops.c - the CPU backend against the reference kernels, and the reference backward passes
 * against central finite differences.
 *
 * (a) every op of the fast backend (each instruction set this CPU has: auto, AVX-512, AVX2, generic)
 *     vs lt_ref_* on random inputs at several shapes, odd ones included; relative tolerance 1e-5
 *     (gemm 1e-4) with a floor of the same fraction of the reference's RMS (see close()).
 * (b) lt_ref_* backward vs central differences of a weighted sum of the forward outputs.
 * Plus: rope_backward inverts rope_forward, adamw vs a transcription in double, dropout determinism,
 * results independent of the thread count, and checks that the comparisons themselves can fail.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/ref_ops.h"

#define N_THREADS 3

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
    float *p = aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
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

/* Elementwise |got - want| <= rtol * (|want| + max(rms(want), floor)); NaN fails. `floor` is the
 * problem's scale where the expected values may all be ~0 (a gradient that cancels exactly). */
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

/* Backends under test: each ISA this CPU supports (auto first). */
static lt_backend *bes[4];
static int n_bes;
static void setup(void) {
    static const lt_cpu_isa isas[] = {LT_CPU_ISA_AUTO, LT_CPU_ISA_AVX512, LT_CPU_ISA_AVX2, LT_CPU_ISA_GENERIC};
    n_bes = 0;
    for (int i = 0; i < 4; i++) {
        char err[256] = "";
        lt_backend *be = NULL;
        lt_status st = lt_cpu_backend_create_isa(N_THREADS, isas[i], &be, err, sizeof err);
        if (st == LT_ERR_UNSUPPORTED) continue;
        ck_assert_msg(st == LT_OK && be, "create isa %d: %s", (int)isas[i], err);
        bes[n_bes++] = be;
    }
    rng_seed(1234);
}
static void teardown(void) {
    for (int i = 0; i < n_bes; i++) bes[i]->ops->destroy(bes[i]);
    n_bes = 0;
}
static const char *isa_name(lt_backend *be) { return ((const lt_cpu_kernels *const *)be->impl)[0]->isa; }
#define FOR_BE(be)                        \
    for (int bi_ = 0; bi_ < n_bes; bi_++) \
        for (lt_backend *be = bes[bi_]; be; be = NULL)

/* ---- the checks can fail ---------------------------------------------------------------------------- */

START_TEST(test_comparator_detects) {
    float want[5] = {1.0f, -2.0f, 3.0f, 0.5f, 0.0f}, got[5];
    char m[512];
    memcpy(got, want, sizeof got);
    ck_assert(close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
    got[2] = 3.0f * (1.0f + 1e-4f); /* 1e-4 relative: must fail at 1e-5 */
    ck_assert(!close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
    got[2] = want[2];
    got[4] = NAN;
    ck_assert(!close_msg(got, want, 5, 1e-5, 0.0, m, sizeof m));
}
END_TEST

START_TEST(test_backend_table) {
    ck_assert_int_gt(n_bes, 1); /* auto + at least the generic kernels */
    FOR_BE(be) {
        const lt_backend_ops *o = be->ops;
        ck_assert_str_eq(o->name, "cpu");
        ck_assert_int_eq(o->host_memory, 1);
        void *const *slots = (void *const *)&o->destroy;
        size_t nslots = (sizeof *o - offsetof(lt_backend_ops, destroy)) / sizeof(void *);
        for (size_t i = 0; i < nslots; i++) ck_assert_msg(slots[i] != NULL, "%s: NULL op slot %zu", isa_name(be), i);
        ck_assert_int_eq(be->n_threads, N_THREADS);
        float *p = o->alloc(be, 1000);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq((uintptr_t)p % 64, 0);
        o->zero(be, p, 1000);
        for (int i = 0; i < 250; i++) ck_assert(p[i] == 0.0f);
        float h[4] = {1, 2, 3, 4}, g[4] = {0};
        o->upload(be, p, h, sizeof h);
        o->copy(be, p + 4, p, sizeof h);
        o->download(be, g, p + 4, sizeof g);
        ck_assert(memcmp(g, h, sizeof h) == 0);
        o->free(be, p);
        ck_assert_ptr_null(o->alloc(be, SIZE_MAX - 8));
        ck_assert_int_eq(o->sync(be), LT_OK);
        o->set_threads(be, 0);
        ck_assert_int_ge(be->n_threads, 1);
        o->set_threads(be, N_THREADS);
    }
    lt_backend *be = NULL;
    ck_assert_int_eq(lt_cpu_backend_create(0, &be, NULL, 0), LT_OK);
    ck_assert_int_ge(be->n_threads, 1);
    be->ops->destroy(be);
}
END_TEST

/* ---- gemm ----------------------------------------------------------------------------------------- */

START_TEST(test_gemm) {
    static const int shapes[][3] = {{1, 1, 1},   {3, 5, 7},    {17, 33, 9},   {64, 48, 130},
                                    {5, 1, 100}, {1, 37, 300}, {129, 65, 257}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.25f, 0.3f}};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            for (int tr = 0; tr < 4; tr++) {
                int ta = tr & 1, tb = tr >> 1;
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                float *A = frand((size_t)(ta ? K : M) * lda, -1, 1), *Bm = frand((size_t)(tb ? N : K) * ldb, -1, 1);
                for (size_t c = 0; c < sizeof ab / sizeof ab[0]; c++) {
                    float alpha = ab[c][0], beta = ab[c][1];
                    float *C0 = frand((size_t)M * ldc, -1, 1);
                    float *Cf = fdup(C0, (size_t)M * ldc), *Cr = fdup(C0, (size_t)M * ldc);
                    if (beta == 0.0f) ffill(Cf, (size_t)M * ldc, NAN); /* beta 0 ignores C */
                    be->ops->gemm(be, ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cf, ldc);
                    lt_ref_gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, Cr, ldc);
                    for (int i = 0; i < M; i++) /* padding columns of C untouched (NaN there is fine for beta 0) */
                        if (beta != 0.0f)
                            for (int j = N; j < ldc; j++) ck_assert(Cf[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);
                    for (int i = 0; i < M; i++)
                        CLOSE(Cf + (size_t)i * ldc, Cr + (size_t)i * ldc, N, 1e-4,
                              "%s gemm %dx%dx%d ta%d tb%d a%g b%g row %d", isa_name(be), M, N, K, ta, tb, alpha, beta,
                              i);
                    free(C0);
                    free(Cf);
                    free(Cr);
                }
                free(A);
                free(Bm);
            }
        }
        /* K = 0: C = beta C */
        float C[6] = {1, 2, 3, 4, 5, 6}, dummy[1] = {0};
        be->ops->gemm(be, 0, 0, 2, 3, 0, 1.0f, dummy, 1, dummy, 3, 2.0f, C, 3);
        ck_assert(C[0] == 2.0f && C[5] == 12.0f);
        ck_assert_int_eq(be->ops->sync(be), LT_OK);
        /* a bad leading dimension is an error reported by sync, not a print */
        be->ops->gemm(be, 0, 0, 2, 3, 4, 1.0f, dummy, 1, dummy, 3, 0.0f, C, 3);
        ck_assert_int_ne(be->ops->sync(be), LT_OK);
        ck_assert_int_eq(be->ops->sync(be), LT_OK);
    }
}
END_TEST

/* ---- elementwise ---------------------------------------------------------------------------------- */

START_TEST(test_elementwise) {
    static const size_t sizes[] = {0, 1, 17, 100003, (1u << 20) + 5};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            float *x = frand(n, -3, 3), *y0 = frand(n, -3, 3);
            float *yf = fdup(y0, n), *yr = fdup(y0, n);
            be->ops->axpy(be, n, -0.37f, x, yf);
            lt_ref_axpy(n, -0.37f, x, yr);
            CLOSE(yf, yr, n, 1e-5, "%s axpy n=%zu", isa_name(be), n);
            be->ops->scale(be, n, 1.7f, yf);
            lt_ref_scale(n, 1.7f, yr);
            CLOSE(yf, yr, n, 1e-5, "%s scale n=%zu", isa_name(be), n);
            double sf = be->ops->sumsq(be, n, x), sr = lt_ref_sumsq(n, x);
            ck_assert_msg(fabs(sf - sr) <= 1e-6 * sr, "%s sumsq n=%zu: %.12g vs %.12g", isa_name(be), n, sf, sr);
            ck_assert_int_eq(be->ops->all_finite(be, n, x), 1);
            if (n) {
                size_t where[3] = {0, n / 2, n - 1};
                float bad[3] = {INFINITY, -INFINITY, NAN};
                for (int w = 0; w < 3; w++)
                    for (int b = 0; b < 3; b++) {
                        float keep = x[where[w]];
                        x[where[w]] = bad[b];
                        ck_assert_msg(be->ops->all_finite(be, n, x) == 0, "%s all_finite n=%zu at %zu", isa_name(be), n,
                                      where[w]);
                        ck_assert_int_eq(lt_ref_all_finite(n, x), 0);
                        x[where[w]] = keep;
                    }
                x[n - 1] = 3.4e38f; /* large but finite */
                ck_assert_int_eq(be->ops->all_finite(be, n, x), 1);
            }
            free(x);
            free(y0);
            free(yf);
            free(yr);
        }
    }
}
END_TEST

START_TEST(test_embedding) {
    FOR_BE(be) {
        int V = 50, C = 37, N = 23;
        float *table = frand((size_t)V * C, -1, 1);
        int32_t ids[23];
        for (int i = 0; i < N; i++) ids[i] = irand(V);
        ids[0] = V - 1;
        float *of = fnew((size_t)N * C), *orf = fnew((size_t)N * C);
        be->ops->embedding_forward(be, of, ids, table, N, C);
        lt_ref_embedding_forward(orf, ids, table, N, C);
        SAME(of, orf, (size_t)N * C, "%s embedding", isa_name(be));
        ck_assert(of[0] == table[(size_t)(V - 1) * C]);
        free(table);
        free(of);
        free(orf);
    }
}
END_TEST

/* scatter_rows: each source row lands at its index, every other row of dst is untouched */
START_TEST(test_scatter_rows) {
    FOR_BE(be) {
        int R = 40, C = 37, n = 23;
        float *dst = frand((size_t)R * C, -1, 1), *src = frand((size_t)n * C, -1, 1);
        float *want = fdup(dst, (size_t)R * C), *ref = fdup(dst, (size_t)R * C);
        int32_t idx[23], used[40] = {0};
        for (int i = 0; i < n; i++) { /* distinct rows, in no particular order */
            int r;
            do r = irand(R);
            while (used[r]);
            used[r] = 1;
            idx[i] = r;
            memcpy(want + (size_t)r * C, src + (size_t)i * C, (size_t)C * sizeof(float));
        }
        be->ops->scatter_rows(be, dst, idx, src, n, C);
        lt_ref_scatter_rows(ref, idx, src, n, C);
        SAME(dst, want, (size_t)R * C, "%s scatter_rows", isa_name(be));
        SAME(ref, want, (size_t)R * C, "reference scatter_rows");
        free(dst);
        free(src);
        free(want);
        free(ref);
    }
}
END_TEST

/* ---- RMSNorm -------------------------------------------------------------------------------------- */

START_TEST(test_rmsnorm) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {7, 100}, {64, 2048}, {5, 4099}, {33, 16}, {300, 64}};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int N = shapes[s][0], C = shapes[s][1];
            size_t NC = (size_t)N * C;
            float *x = frand(NC, -2, 2), *w = frand((size_t)C, 0.5f, 1.5f), *g = frand(NC, -1, 1);
            float *of = fnew(NC), *orf = fnew(NC), *rf = fnew((size_t)N), *rr = fnew((size_t)N);
            be->ops->rmsnorm_forward(be, of, rf, x, w, N, C, 1e-5f);
            lt_ref_rmsnorm_forward(orf, rr, x, w, N, C, 1e-5f);
            CLOSE(of, orf, NC, 1e-5, "%s rmsnorm out N=%d C=%d", isa_name(be), N, C);
            CLOSE(rf, rr, (size_t)N, 1e-5, "%s rmsnorm rstd N=%d C=%d", isa_name(be), N, C);
            /* backward accumulates into dinp and dweight */
            float *di0 = frand(NC, -1, 1), *dw0 = frand((size_t)C, -1, 1);
            float *dif = fdup(di0, NC), *dir = fdup(di0, NC), *dwf = fdup(dw0, (size_t)C), *dwr = fdup(dw0, (size_t)C);
            be->ops->rmsnorm_backward(be, dif, dwf, g, x, w, rr, N, C);
            lt_ref_rmsnorm_backward(dir, dwr, g, x, w, rr, N, C);
            CLOSE(dif, dir, NC, 1e-5, "%s rmsnorm dinp N=%d C=%d", isa_name(be), N, C);
            CLOSE(dwf, dwr, (size_t)C, 1e-5, "%s rmsnorm dweight N=%d C=%d", isa_name(be), N, C);
            /* frozen weight: dweight NULL, same dinp */
            float *din = fdup(di0, NC);
            be->ops->rmsnorm_backward(be, din, NULL, g, x, w, rr, N, C);
            SAME(din, dif, NC, "%s rmsnorm dinp with dweight NULL", isa_name(be));
            free(x);
            free(w);
            free(g);
            free(of);
            free(orf);
            free(rf);
            free(rr);
            free(di0);
            free(dw0);
            free(dif);
            free(dir);
            free(dwf);
            free(dwr);
            free(din);
        }
    }
}
END_TEST

/* ---- RoPE ----------------------------------------------------------------------------------------- */

static void rope_inv_freq(float *f, int rot, double theta) {
    for (int j = 0; j < rot / 2; j++) f[j] = (float)(1.0 / pow(theta, 2.0 * j / rot));
}

START_TEST(test_rope) {
    static const int shapes[][4] = {{1, 1, 2, 2},     {5, 3, 8, 8}, {7, 2, 64, 64},  {4, 3, 80, 32},
                                    {9, 4, 128, 128}, {3, 5, 6, 4}, {2, 2, 256, 256}};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int N = shapes[s][0], NH = shapes[s][1], HD = shapes[s][2], rot = shapes[s][3];
            size_t n = (size_t)N * NH * HD;
            float inv[128];
            rope_inv_freq(inv, rot, s & 1 ? 500000.0 : 10000.0);
            int32_t pos[16];
            for (int i = 0; i < N; i++) pos[i] = irand(8192);
            pos[0] = 0;
            float *x = frand(n, -2, 2);
            float *xf = fdup(x, n), *xr = fdup(x, n);
            be->ops->rope_forward(be, xf, pos, inv, N, NH, HD, rot);
            lt_ref_rope_forward(xr, pos, inv, N, NH, HD, rot);
            CLOSE(xf, xr, n, 1e-5, "%s rope fwd N=%d NH=%d HD=%d rot=%d", isa_name(be), N, NH, HD, rot);
            for (int i = 0; i < N; i++) /* channels past rot_dim untouched */
                for (int h = 0; h < NH; h++)
                    for (int d = rot; d < HD; d++) {
                        size_t o = ((size_t)i * NH + h) * HD + d;
                        ck_assert(xf[o] == x[o]);
                    }
            float *gf = fdup(x, n), *gr = fdup(x, n);
            be->ops->rope_backward(be, gf, pos, inv, N, NH, HD, rot);
            lt_ref_rope_backward(gr, pos, inv, N, NH, HD, rot);
            CLOSE(gf, gr, n, 1e-5, "%s rope bwd N=%d NH=%d HD=%d rot=%d", isa_name(be), N, NH, HD, rot);
            /* backward inverts forward (the rotation is orthogonal) */
            be->ops->rope_backward(be, xf, pos, inv, N, NH, HD, rot);
            lt_ref_rope_backward(xr, pos, inv, N, NH, HD, rot);
            CLOSE(xf, x, n, 1e-5, "%s rope bwd(fwd(x)) == x", isa_name(be));
            CLOSE(xr, x, n, 1e-5, "ref rope bwd(fwd(x)) == x");
            free(x);
            free(xf);
            free(xr);
            free(gf);
            free(gr);
        }
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

static void att_compare(lt_backend *be, const att_case *c) {
    int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float scale = 1.0f / sqrtf((float)HD);
    float *q = frand(nq, -2, 2), *k = frand(nkv, -2, 2), *v = frand(nkv, -1, 1), *dout = frand(nq, -1, 1);
    int32_t *ks = malloc((size_t)B * T * sizeof(int32_t));
    make_kv_start(ks, B, T, c->mode);
    float *of = fnew(nq), *orf = fnew(nq), *lf = fnew(nl), *lr = fnew(nl);
    ffill(of, nq, NAN);
    ffill(lf, nl, NAN);
    be->ops->attention_forward(be, of, lf, q, k, v, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_forward(orf, lr, q, k, v, ks, B, T, NH, NKV, HD, scale);
    char what[160];
    snprintf(what, sizeof what, "%s attention B=%d T=%d NH=%d NKV=%d HD=%d mode=%d", isa_name(be), B, T, NH, NKV, HD,
             c->mode);
    CLOSE(of, orf, nq, 1e-5, "%s out", what);
    CLOSE(lf, lr, nl, 1e-5, "%s lse", what);
    /* backward from the reference forward's out/lse; outputs and scratch start as garbage */
    size_t ns = be->ops->attention_backward_scratch(be, B, T, NH, HD);
    float *scratch = be->ops->alloc(be, ns * sizeof(float));
    ck_assert_ptr_nonnull(scratch);
    ffill(scratch, ns, NAN);
    float *dqf = fnew(nq), *dkf = fnew(nkv), *dvf = fnew(nkv), *dqr = fnew(nq), *dkr = fnew(nkv), *dvr = fnew(nkv);
    ffill(dqf, nq, NAN);
    ffill(dkf, nkv, NAN);
    ffill(dvf, nkv, NAN);
    ffill(dqr, nq, NAN);
    ffill(dkr, nkv, NAN);
    ffill(dvr, nkv, NAN);
    be->ops->attention_backward(be, dqf, dkf, dvf, dout, q, k, v, orf, lr, ks, B, T, NH, NKV, HD, scale, scratch);
    lt_ref_attention_backward(dqr, dkr, dvr, dout, q, k, v, orf, lr, ks, B, T, NH, NKV, HD, scale, NULL);
    /* floor 1e-2: with a single key dq and dk cancel to exactly 0 in exact arithmetic */
    CLOSE_F(dqf, dqr, nq, 1e-5, 1e-2, "%s dq", what);
    CLOSE_F(dkf, dkr, nkv, 1e-5, 1e-2, "%s dk", what);
    CLOSE_F(dvf, dvr, nkv, 1e-5, 1e-2, "%s dv", what);
    ck_assert_int_eq(be->ops->sync(be), LT_OK);
    be->ops->free(be, scratch);
    free(q);
    free(k);
    free(v);
    free(dout);
    free(ks);
    free(of);
    free(orf);
    free(lf);
    free(lr);
    free(dqf);
    free(dkf);
    free(dvf);
    free(dqr);
    free(dkr);
    free(dvr);
}

static const att_case att_cases[] = {
    {1, 1, 1, 1, 8, 0},   {2, 17, 4, 2, 16, 0},  {1, 70, 4, 1, 64, 0},  {2, 45, 3, 3, 20, 0},  {1, 100, 2, 2, 128, 1},
    {1, 33, 6, 2, 5, 1},  {2, 130, 2, 1, 96, 1}, {1, 64, 2, 1, 8, 2},   {1, 97, 4, 4, 64, 2},  {1, 9, 2, 1, 260, 1},
    {3, 40, 2, 2, 80, 0}, {1, 2, 8, 2, 128, 0},  {1, 300, 2, 1, 64, 1}, {1, 290, 2, 2, 32, 2}, {2, 257, 2, 1, 48, 0},
};

START_TEST(test_attention) { FOR_BE(be) att_compare(be, &att_cases[_i]); }
END_TEST

/* kv_start semantics: a packed row gives, on each of its sequences, what that sequence gives alone */
START_TEST(test_attention_packed_semantics) {
    const int T = 50, NH = 4, NKV = 2, HD = 16, starts[] = {0, 13, 14, 40, 50};
    float scale = 0.25f;
    size_t nq = (size_t)T * NH * HD, nkv = (size_t)T * NKV * HD;
    float *q = frand(nq, -2, 2), *k = frand(nkv, -2, 2), *v = frand(nkv, -1, 1);
    int32_t ks[50];
    for (int s = 0; s < 4; s++)
        for (int t = starts[s]; t < starts[s + 1]; t++) ks[t] = starts[s];
    float *out = fnew(nq), *lse = fnew((size_t)NH * T), *o1 = fnew(nq), *l1 = fnew((size_t)NH * T);
    int32_t zero[50] = {0};
    for (int which = -1; which < n_bes; which++) {
        lt_backend *be = which < 0 ? NULL : bes[which];
        if (be) be->ops->attention_forward(be, out, lse, q, k, v, ks, 1, T, NH, NKV, HD, scale);
        else lt_ref_attention_forward(out, lse, q, k, v, ks, 1, T, NH, NKV, HD, scale);
        for (int s = 0; s < 4; s++) {
            int a = starts[s], L = starts[s + 1] - a;
            const float *qs = q + (size_t)a * NH * HD, *kk = k + (size_t)a * NKV * HD, *vv = v + (size_t)a * NKV * HD;
            lt_ref_attention_forward(o1, l1, qs, kk, vv, zero, 1, L, NH, NKV, HD, scale);
            CLOSE(out + (size_t)a * NH * HD, o1, (size_t)L * NH * HD, 1e-5, "%s packed segment %d out",
                  be ? isa_name(be) : "ref", s);
            for (int h = 0; h < NH; h++)
                CLOSE(lse + (size_t)h * T + a, l1 + (size_t)h * L, (size_t)L, 1e-5, "%s packed segment %d lse",
                      be ? isa_name(be) : "ref", s);
        }
    }
    free(q);
    free(k);
    free(v);
    free(out);
    free(lse);
    free(o1);
    free(l1);
}
END_TEST

/* The key ranges of a decode test: rows of different lengths, windows (start > 0), an empty row (b 3). */
static void decode_ranges(int B, int L, int32_t *ks, int32_t *kl) {
    for (int b = 0; b < B; b++) {
        kl[b] = b == 3 ? 0 : L - b % 3 > 0 ? L - b % 3 : 0;
        ks[b] = b % 2 && kl[b] > 2 ? 2 : 0;
    }
}

/* A cache (B,S,NKV,HD) of random keys (values) inside each row's range and 1e30 outside: reading past
 * a range gives inf / NaN. */
static float *decode_cache(int B, int S, int NKV, int HD, const int32_t *ks, const int32_t *kl, float lo, float hi) {
    const size_t row = (size_t)NKV * HD;
    float *c = frand((size_t)B * S * row, lo, hi);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++)
            if (j < ks[b] || j >= kl[b]) ffill(c + ((size_t)b * S + j) * row, row, 1e30f);
    return c;
}

/* out (NH,HD) of row b == the last row of a causal forward (capped when cap > 0) over that row's keys */
static void check_decode_row(const float *out, const float *ql, const float *kc, const float *vc, int b, int S, int j0,
                             int j1, int NH, int NKV, int HD, float scale, float cap, const char *what) {
    const int n = j1 - j0;
    const size_t row = (size_t)NKV * HD, qrow = (size_t)NH * HD;
    if (n <= 0) {
        for (size_t i = 0; i < qrow; i++) ck_assert_msg(out[i] == 0.0f, "%s: an empty range gives %g", what, out[i]);
        return;
    }
    float *q = frand((size_t)n * qrow, -2, 2), *full = fnew((size_t)n * qrow), *lse = fnew((size_t)NH * n);
    memcpy(q + (size_t)(n - 1) * qrow, ql + (size_t)b * qrow, qrow * sizeof(float));
    int32_t *z = calloc((size_t)n, sizeof(int32_t));
    const float *k = kc + ((size_t)b * S + j0) * row, *v = vc + ((size_t)b * S + j0) * row;
    if (cap > 0) lt_ref_attention_softcap_forward(full, lse, q, k, v, z, 1, n, NH, NKV, HD, scale, cap);
    else lt_ref_attention_forward(full, lse, q, k, v, z, 1, n, NH, NKV, HD, scale);
    CLOSE(out, full + (size_t)(n - 1) * qrow, qrow, 1e-5, "%s == the last row of a forward over keys %d..%d", what, j0,
          j1 - 1);
    free(q);
    free(full);
    free(lse);
    free(z);
}

/* decode with per-row key ranges: vs the reference, and each row vs the last row of a causal forward
 * over its own keys */
START_TEST(test_attention_decode) {
    static const int shapes[][6] = {{1, 1, 1, 1, 1, 8},       {2, 50, 37, 4, 2, 16}, {3, 100, 100, 6, 2, 64},
                                    {1, 300, 257, 8, 2, 128}, {2, 20, 5, 3, 3, 20},  {1, 10, 3, 2, 1, 260},
                                    {5, 40, 9, 4, 2, 16}};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int B = shapes[s][0], S = shapes[s][1], L = shapes[s][2], NH = shapes[s][3], NKV = shapes[s][4],
                HD = shapes[s][5];
            float scale = 1.0f / sqrtf((float)HD);
            int32_t ks[8], kl[8];
            decode_ranges(B, L, ks, kl);
            float *kc = decode_cache(B, S, NKV, HD, ks, kl, -2, 2), *vc = decode_cache(B, S, NKV, HD, ks, kl, -1, 1);
            const size_t nq = (size_t)B * NH * HD;
            float *ql = frand(nq, -2, 2), *of = fnew(nq), *orf = fnew(nq);
            ffill(of, nq, NAN);
            be->ops->attention_decode(be, of, ql, kc, vc, ks, kl, B, S, NH, NKV, HD, scale);
            lt_ref_attention_decode(orf, ql, kc, vc, ks, kl, B, S, NH, NKV, HD, scale);
            CLOSE(of, orf, nq, 1e-5, "%s decode B=%d S=%d len=%d NH=%d NKV=%d HD=%d", isa_name(be), B, S, L, NH, NKV,
                  HD);
            char what[96];
            for (int b = 0; b < B; b++) {
                snprintf(what, sizeof what, "%s decode B=%d L=%d HD=%d row %d", isa_name(be), B, L, HD, b);
                check_decode_row(of + (size_t)b * NH * HD, ql, kc, vc, b, S, ks[b], kl[b], NH, NKV, HD, scale, 0, what);
            }
            /* a range past the cache is refused */
            int32_t bad[8];
            memcpy(bad, kl, sizeof bad);
            bad[B - 1] = S + 1;
            be->ops->attention_decode(be, of, ql, kc, vc, ks, bad, B, S, NH, NKV, HD, scale);
            ck_assert_int_eq(be->ops->sync(be), LT_ERR_INTERNAL);
            free(kc);
            free(vc);
            free(ql);
            free(of);
            free(orf);
        }
    }
}
END_TEST

/* ---- SwiGLU --------------------------------------------------------------------------------------- */

START_TEST(test_swiglu) {
    static const size_t sizes[] = {1, 15, 16, 1000, 65540};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            float *g = frand(n, -12, 12), *u = frand(n, -3, 3), *go = frand(n, -1, 1);
            if (n > 4) {
                g[1] = -100.0f;
                g[2] = 100.0f;
                g[3] = 0.0f;
            }
            float *of = fnew(n), *orf = fnew(n);
            be->ops->swiglu_forward(be, of, g, u, n);
            lt_ref_swiglu_forward(orf, g, u, n);
            CLOSE(of, orf, n, 1e-5, "%s swiglu fwd n=%zu", isa_name(be), n);
            float *dgf = fnew(n), *duf = fnew(n), *dgr = fnew(n), *dur = fnew(n);
            be->ops->swiglu_backward(be, dgf, duf, go, g, u, n);
            lt_ref_swiglu_backward(dgr, dur, go, g, u, n);
            CLOSE(dgf, dgr, n, 1e-5, "%s swiglu dgate n=%zu", isa_name(be), n);
            CLOSE(duf, dur, n, 1e-5, "%s swiglu dup n=%zu", isa_name(be), n);
            /* in place: dgate, dup overwrite gate, up */
            float *gi = fdup(g, n), *ui = fdup(u, n);
            be->ops->swiglu_backward(be, gi, ui, go, gi, ui, n);
            SAME(gi, dgf, n, "%s swiglu dgate in place", isa_name(be));
            SAME(ui, duf, n, "%s swiglu dup in place", isa_name(be));
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
        }
    }
}
END_TEST

/* ---- bias add, GeGLU, soft-capping (the family ops) ----------------------------------------------- */

START_TEST(test_bias_add) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {40, 96}, {129, 33}};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int N = shapes[s][0], C = shapes[s][1];
            float *y = frand((size_t)N * C, -2, 2), *b = frand((size_t)C, -1, 1), *dy = frand((size_t)N * C, -1, 1);
            float *yf = fdup(y, (size_t)N * C), *yr = fdup(y, (size_t)N * C);
            be->ops->bias_add(be, yf, b, N, C);
            lt_ref_bias_add(yr, b, N, C);
            for (int i = 0; i < N; i++)
                for (int c = 0; c < C; c++) /* the definition, element by element */
                    ck_assert_msg(yr[(size_t)i * C + c] == y[(size_t)i * C + c] + b[c], "ref bias_add (%d,%d)", i, c);
            SAME(yf, yr, (size_t)N * C, "%s bias_add N=%d C=%d", isa_name(be), N, C);
            /* backward accumulates the column sums */
            float *dbf = frand((size_t)C, -1, 1), *dbr = fdup(dbf, (size_t)C), *want = fnew((size_t)C);
            for (int c = 0; c < C; c++) {
                double acc = dbr[c];
                for (int i = 0; i < N; i++) acc += dy[(size_t)i * C + c];
                want[c] = (float)acc;
            }
            be->ops->bias_backward(be, dbf, dy, N, C);
            lt_ref_bias_backward(dbr, dy, N, C);
            CLOSE(dbr, want, (size_t)C, 1e-6, "ref bias_backward N=%d C=%d", N, C);
            CLOSE(dbf, dbr, (size_t)C, 1e-6, "%s bias_backward N=%d C=%d", isa_name(be), N, C);
            free(y);
            free(b);
            free(dy);
            free(yf);
            free(yr);
            free(dbf);
            free(dbr);
            free(want);
        }
    }
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
    static const size_t sizes[] = {1, 15, 1000, 65540};
    FOR_BE(be) {
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            float *g = frand(n, -6, 6), *u = frand(n, -3, 3), *go = frand(n, -1, 1);
            float *of = fnew(n), *orf = fnew(n);
            be->ops->geglu_forward(be, of, g, u, n);
            lt_ref_geglu_forward(orf, g, u, n);
            CLOSE(of, orf, n, 1e-6, "%s geglu fwd n=%zu", isa_name(be), n);
            float *dgf = fnew(n), *duf = fnew(n), *dgr = fnew(n), *dur = fnew(n);
            be->ops->geglu_backward(be, dgf, duf, go, g, u, n);
            lt_ref_geglu_backward(dgr, dur, go, g, u, n);
            CLOSE(dgf, dgr, n, 1e-6, "%s geglu dgate n=%zu", isa_name(be), n);
            CLOSE(duf, dur, n, 1e-6, "%s geglu dup n=%zu", isa_name(be), n);
            /* the reference derivative against central differences of the reference forward */
            for (size_t i = 0; i < n && i < 64; i++) {
                const float h = 1e-2f;
                float gp = g[i] + h, gm = g[i] - h, yp, ym;
                lt_ref_geglu_forward(&yp, &gp, &u[i], 1);
                lt_ref_geglu_forward(&ym, &gm, &u[i], 1);
                double fd = go[i] * ((double)yp - ym) / ((double)gp - gm);
                ck_assert_msg(fabs(fd - dgr[i]) <= 2e-3 * (1 + fabs(fd)), "geglu dgate %g vs fd %g at g=%g", dgr[i], fd,
                              g[i]);
            }
            float *gi = fdup(g, n), *ui = fdup(u, n);
            be->ops->geglu_backward(be, gi, ui, go, gi, ui, n);
            SAME(gi, dgf, n, "%s geglu dgate in place", isa_name(be));
            SAME(ui, duf, n, "%s geglu dup in place", isa_name(be));
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
        }
    }
}
END_TEST

START_TEST(test_softcap) {
    const float cap = 30.0f;
    FOR_BE(be) {
        size_t n = 5000;
        float *x = frand(n, -200, 200), *dy = frand(n, -1, 1);
        float *yf = fdup(x, n), *yr = fdup(x, n);
        be->ops->softcap_forward(be, yf, n, cap);
        lt_ref_softcap_forward(yr, n, cap);
        CLOSE(yf, yr, n, 1e-6, "%s softcap fwd", isa_name(be));
        for (size_t i = 0; i < n; i++) {
            ck_assert(fabsf(yr[i]) <= cap);
            ck_assert_msg(fabs(yr[i] - cap * tanh(x[i] / (double)cap)) <= 1e-5, "softcap(%g)", x[i]);
        }
        float *df = fdup(dy, n), *dr = fdup(dy, n);
        be->ops->softcap_backward(be, df, yf, n, cap);
        lt_ref_softcap_backward(dr, yr, n, cap);
        CLOSE(df, dr, n, 1e-5, "%s softcap bwd", isa_name(be));
        for (size_t i = 0; i < 64; i++) { /* d/dx cap tanh(x/cap) = 1 - tanh^2 */
            double t = tanh(x[i] / (double)cap);
            ck_assert_msg(fabs(dr[i] - dy[i] * (1 - t * t)) <= 1e-6, "softcap grad at %g", x[i]);
        }
        free(x);
        free(dy);
        free(yf);
        free(yr);
        free(df);
        free(dr);
    }
}
END_TEST

/* soft-capped attention: a huge cap is plain attention; the backward agrees with finite differences of
 * the forward; the backend agrees with the reference (windowed kv_start, GQA, single-key rows) */
START_TEST(test_attention_softcap) {
    const int B = 2, T = 7, NH = 4, NKV = 2, HD = 8;
    const float scale = 0.4f, cap = 1.5f;
    const size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD, nl = (size_t)B * NH * T;
    float *q = frand(nq, -2, 2), *k = frand(nk, -2, 2), *v = frand(nk, -1, 1), *dout = frand(nq, -1, 1);
    int32_t ks[14];
    for (int i = 0; i < B * T; i++) ks[i] = i < T ? (i % T > 2 ? i % T - 2 : 0) : (i % T >= 4 ? 4 : 0);
    float *o1 = fnew(nq), *o2 = fnew(nq), *l1 = fnew(nl), *l2 = fnew(nl);
    lt_ref_attention_forward(o1, l1, q, k, v, ks, B, T, NH, NKV, HD, scale);
    lt_ref_attention_softcap_forward(o2, l2, q, k, v, ks, B, T, NH, NKV, HD, scale, 1e6f);
    CLOSE_F(o2, o1, nq, 1e-5, 1e-6, "huge cap == plain attention");
    float *dq = fnew(nq), *dk = fnew(nk), *dv = fnew(nk), *dq0 = fnew(nq), *dk0 = fnew(nk), *dv0 = fnew(nk);
    lt_ref_attention_backward(dq0, dk0, dv0, dout, q, k, v, o1, l1, ks, B, T, NH, NKV, HD, scale, NULL);
    lt_ref_attention_softcap_backward(dq, dk, dv, dout, q, k, v, o2, l2, ks, B, T, NH, NKV, HD, scale, 1e6f);
    CLOSE_F(dq, dq0, nq, 1e-4, 1e-6, "huge cap backward dq");
    CLOSE_F(dk, dk0, nk, 1e-4, 1e-6, "huge cap backward dk");
    CLOSE_F(dv, dv0, nk, 1e-4, 1e-6, "huge cap backward dv");
    /* finite differences of L = sum(dout * out) with a small cap */
    lt_ref_attention_softcap_forward(o2, l2, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
    lt_ref_attention_softcap_backward(dq, dk, dv, dout, q, k, v, o2, l2, ks, B, T, NH, NKV, HD, scale, cap);
    float *tmp = fnew(nq), *tl = fnew(nl);
    struct {
        float *x, *g;
        size_t n;
        const char *name;
    } probes[] = {{q, dq, nq, "dq"}, {k, dk, nk, "dk"}, {v, dv, nk, "dv"}};
    for (int pi = 0; pi < 3; pi++)
        for (size_t i = 0; i < probes[pi].n; i += 37) {
            float orig = probes[pi].x[i];
            const float h = 1e-2f;
            double lp = 0, lm = 0;
            probes[pi].x[i] = orig + h;
            lt_ref_attention_softcap_forward(tmp, tl, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
            for (size_t j = 0; j < nq; j++) lp += (double)dout[j] * tmp[j];
            probes[pi].x[i] = orig - h;
            lt_ref_attention_softcap_forward(tmp, tl, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
            for (size_t j = 0; j < nq; j++) lm += (double)dout[j] * tmp[j];
            probes[pi].x[i] = orig;
            double fd = (lp - lm) / (2.0 * h);
            ck_assert_msg(fabs(fd - probes[pi].g[i]) <= 2e-3 + 2e-2 * fabs(fd), "softcap %s[%zu]: %g vs fd %g",
                          probes[pi].name, i, probes[pi].g[i], fd);
        }
    FOR_BE(be) {
        float *of = fnew(nq), *lf = fnew(nl), *dqf = fnew(nq), *dkf = fnew(nk), *dvf = fnew(nk);
        be->ops->attention_softcap_forward(be, of, lf, q, k, v, ks, B, T, NH, NKV, HD, scale, cap);
        CLOSE(of, o2, nq, 1e-5, "%s softcap attention out", isa_name(be));
        CLOSE(lf, l2, nl, 1e-5, "%s softcap attention lse", isa_name(be));
        be->ops->attention_softcap_backward(be, dqf, dkf, dvf, dout, q, k, v, of, lf, ks, B, T, NH, NKV, HD, scale,
                                            cap);
        CLOSE_F(dqf, dq, nq, 1e-5, 1e-7, "%s softcap dq", isa_name(be));
        CLOSE_F(dkf, dk, nk, 1e-5, 1e-7, "%s softcap dk", isa_name(be));
        CLOSE_F(dvf, dv, nk, 1e-5, 1e-7, "%s softcap dv", isa_name(be));
        /* decode with per-row key ranges: vs the reference, and each row vs the last row of a forward */
        enum { DB = 5, DS = 9 };
        int32_t dks[DB], dkl[DB];
        decode_ranges(DB, DS - 1, dks, dkl);
        float *kc = decode_cache(DB, DS, NKV, HD, dks, dkl, -2, 2),
              *vc = decode_cache(DB, DS, NKV, HD, dks, dkl, -1, 1);
        float *ql = frand((size_t)DB * NH * HD, -2, 2), *od = fnew((size_t)DB * NH * HD);
        float *odr = fnew((size_t)DB * NH * HD);
        be->ops->attention_softcap_decode(be, od, ql, kc, vc, dks, dkl, DB, DS, NH, NKV, HD, scale, cap);
        lt_ref_attention_softcap_decode(odr, ql, kc, vc, dks, dkl, DB, DS, NH, NKV, HD, scale, cap);
        CLOSE(od, odr, (size_t)DB * NH * HD, 1e-5, "%s softcap decode", isa_name(be));
        for (int b = 0; b < DB; b++) {
            char what[64];
            snprintf(what, sizeof what, "%s softcap decode row %d", isa_name(be), b);
            check_decode_row(od + (size_t)b * NH * HD, ql, kc, vc, b, DS, dks[b], dkl[b], NH, NKV, HD, scale, cap,
                             what);
        }
        free(kc);
        free(vc);
        free(odr);
        free(of);
        free(lf);
        free(dqf);
        free(dkf);
        free(dvf);
        free(ql);
        free(od);
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
}
END_TEST

/* DoRA helper ops and the RoPE channel scale against their definitions */
START_TEST(test_dora_ops) {
    const int R = 37, C = 53, N = 29;
    float *w = frand((size_t)R * C, -1, 1), *m = frand((size_t)R, 0.5f, 2), *g = fnew(R), *inv = fnew(R);
    lt_ref_dora_norm(g, inv, m, w, R, C);
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)w[(size_t)r * C + c] * w[(size_t)r * C + c];
        ck_assert_msg(fabs(inv[r] * sqrt(ss) - 1) <= 1e-6 && fabs(g[r] - m[r] / sqrt(ss)) <= 1e-6 * fabs(g[r]),
                      "dora_norm row %d", r);
    }
    float *y = frand((size_t)N * R, -2, 2), *a = frand((size_t)N * R, -1, 1), *acc0 = frand((size_t)R, -1, 1);
    FOR_BE(be) {
        float *gf = fnew(R), *invf = fnew(R);
        be->ops->dora_norm(be, gf, invf, m, w, R, C);
        CLOSE(gf, g, (size_t)R, 1e-6, "%s dora_norm g", isa_name(be));
        CLOSE(invf, inv, (size_t)R, 1e-6, "%s dora_norm inv_n", isa_name(be));
        float *yf = fdup(y, (size_t)N * R);
        be->ops->mul_cols(be, yf, g, N, R);
        for (int i = 0; i < N; i++)
            for (int c = 0; c < R; c++)
                ck_assert_msg(yf[(size_t)i * R + c] == y[(size_t)i * R + c] * g[c], "%s mul_cols", isa_name(be));
        float *out = fdup(acc0, (size_t)R), *want = fnew(R);
        for (int c = 0; c < R; c++) {
            double d = 0;
            for (int i = 0; i < N; i++) d += (double)a[(size_t)i * R + c] * y[(size_t)i * R + c];
            want[c] = (float)(acc0[c] + inv[c] * d);
        }
        be->ops->col_dot(be, out, a, y, inv, N, R);
        CLOSE(out, want, (size_t)R, 1e-5, "%s col_dot (accumulates)", isa_name(be));
        /* rope_scale: only the first rot_dim channels of each head */
        const int NH = 3, HD = 8, RD = 6;
        float *x = frand((size_t)N * NH * HD, -1, 1), *xs = fdup(x, (size_t)N * NH * HD);
        be->ops->rope_scale(be, xs, N, NH, HD, RD, 1.5f);
        for (size_t i = 0; i < (size_t)N * NH * HD; i++)
            ck_assert_msg(xs[i] == ((int)(i % HD) < RD ? x[i] * 1.5f : x[i]), "%s rope_scale [%zu]", isa_name(be), i);
        free(gf);
        free(invf);
        free(yf);
        free(out);
        free(want);
        free(x);
        free(xs);
    }
    free(w);
    free(m);
    free(g);
    free(inv);
    free(y);
    free(a);
    free(acc0);
}
END_TEST

/* ---- cross-entropy -------------------------------------------------------------------------------- */

START_TEST(test_cross_entropy) {
    static const int shapes[][2] = {{1, 1}, {3, 17}, {5, 1000}, {4, 32000}, {7, 33}, {40, 515}};
    FOR_BE(be) {
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
            if (n >= 4) tg[1] = V; /* out of range: treated as ignored */
            float lf[40], lr[40];
            /* loss only: logits untouched */
            float *xf = fdup(x, nv);
            be->ops->cross_entropy(be, xf, lf, tg, n, V, 0.0f);
            lt_ref_cross_entropy(x, lr, tg, n, V, 0.0f); /* (the reference does not write either) */
            SAME(xf, x, nv, "%s cross_entropy grad_scale 0 leaves logits", isa_name(be));
            CLOSE(lf, lr, (size_t)n, 1e-5, "%s cross_entropy loss n=%d V=%d", isa_name(be), n, V);
            for (int i = 0; i < n; i++)
                if (tg[i] < 0 || tg[i] >= V) ck_assert(lf[i] == 0.0f);
            /* with gradient */
            float gs = valid ? 1.0f / valid : 0.5f;
            float *xr = fdup(x, nv);
            be->ops->cross_entropy(be, xf, lf, tg, n, V, gs);
            lt_ref_cross_entropy(xr, lr, tg, n, V, gs);
            CLOSE(lf, lr, (size_t)n, 1e-5, "%s cross_entropy loss (grad) n=%d V=%d", isa_name(be), n, V);
            CLOSE(xf, xr, nv, 1e-5, "%s cross_entropy grad n=%d V=%d", isa_name(be), n, V);
            for (int i = 0; i < n; i++)
                if (tg[i] < 0 || tg[i] >= V)
                    for (int c = 0; c < V; c++) ck_assert(xf[(size_t)i * V + c] == 0.0f);
            free(x);
            free(xf);
            free(xr);
        }
    }
}
END_TEST

/* ---- dropout -------------------------------------------------------------------------------------- */

START_TEST(test_dropout) {
    size_t n = 200003;
    float *x = frand(n, 0.5f, 2.0f);
    float *a = fnew(n), *b = fnew(n), *r = fnew(n);
    static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    FOR_BE(be) {
        for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
            float p = ps[pi];
            /* streams far apart (the core spaces them by 2^40): the counter is 64-bit */
            uint64_t far = (5ull << 40) + 3;
            be->ops->dropout(be, a, x, n, p, 0x9E3779B97F4A7C15ull, far);
            lt_ref_dropout(r, x, n, p, 0x9E3779B97F4A7C15ull, far);
            SAME(a, r, n, "%s dropout p=%g vs reference at offset 2^40", isa_name(be), p);
            be->ops->dropout(be, a, x, n, p, 42, 1000);
            lt_ref_dropout(r, x, n, p, 42, 1000);
            SAME(a, r, n, "%s dropout p=%g vs reference", isa_name(be), p);
            be->ops->dropout(be, b, x, n, p, 42, 1000);
            SAME(a, b, n, "%s dropout p=%g same seed/offset", isa_name(be), p);
            size_t dropped = 0;
            for (size_t i = 0; i < n; i++) {
                if (a[i] == 0.0f) dropped++;
                else ck_assert(fabsf(a[i] - x[i] / (1.0f - p)) <= 1e-6f * fabsf(a[i]));
            }
            double frac = (double)dropped / n, sd = sqrt(p * (1 - p) / n);
            ck_assert_msg(fabs(frac - p) <= 6 * sd + 1e-9, "%s dropout p=%g dropped %g", isa_name(be), p, frac);
            if (p > 0.0f && p < 1.0f) {
                be->ops->dropout(be, b, x, n, p, 43, 1000);
                ck_assert_msg(memcmp(a, b, n * sizeof(float)) != 0, "another seed, the same mask");
                /* the mask is a function of offset + i: a shifted call sees the same elements */
                be->ops->dropout(be, b, x + 777, n - 777, p, 42, 1000 + 777);
                SAME(b, a + 777, n - 777, "%s dropout offset shift", isa_name(be));
                /* in place */
                float *c = fdup(x, n);
                be->ops->dropout(be, c, c, n, p, 42, 1000);
                SAME(c, a, n, "%s dropout in place", isa_name(be));
                free(c);
            }
        }
    }
    free(x);
    free(a);
    free(b);
    free(r);
}
END_TEST

/* ---- AdamW ---------------------------------------------------------------------------------------- */

START_TEST(test_adamw) {
    const size_t n = 1037;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    float *p0 = frand(n, -1, 1);
    float *grads[3];
    for (int t = 0; t < 3; t++) {
        grads[t] = frand(n, -1, 1);
        grads[t][5] = 0.0f;
    }
    /* transcription in double of backend.h / docs/spec/algorithms.md */
    double *P = malloc(n * sizeof(double)), *M = calloc(n, sizeof(double)), *Vv = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) P[i] = p0[i];
    for (int t = 1; t <= 3; t++)
        for (size_t i = 0; i < n; i++) {
            double g = grads[t - 1][i];
            P[i] *= 1.0 - lr * wd;
            M[i] = b1 * M[i] + (1 - b1) * g;
            Vv[i] = b2 * Vv[i] + (1 - b2) * g * g;
            P[i] -= lr / (1 - pow(b1, t)) * M[i] / (sqrt(Vv[i]) / sqrt(1 - pow(b2, t)) + eps);
        }
    float *pe = fnew(n), *me = fnew(n), *ve = fnew(n);
    for (size_t i = 0; i < n; i++) {
        pe[i] = (float)P[i];
        me[i] = (float)M[i];
        ve[i] = (float)Vv[i];
    }
    for (int which = -1; which < n_bes; which++) { /* -1: the reference kernel */
        float *p = fdup(p0, n), *m = fnew(n), *v = fnew(n);
        memset(m, 0, n * sizeof(float));
        memset(v, 0, n * sizeof(float));
        for (int t = 1; t <= 3; t++) {
            float ss = (float)(lr / (1 - pow(b1, t))), bc2 = (float)sqrt(1 - pow(b2, t)), dec = (float)(lr * wd);
            if (which < 0) lt_ref_adamw_step(p, grads[t - 1], m, v, n, ss, (float)b1, (float)b2, (float)eps, bc2, dec);
            else
                bes[which]->ops->adamw_step(bes[which], p, grads[t - 1], m, v, n, ss, (float)b1, (float)b2, (float)eps,
                                            bc2, dec);
        }
        const char *nm = which < 0 ? "ref" : isa_name(bes[which]);
        CLOSE(p, pe, n, 1e-5, "%s adamw param", nm);
        CLOSE(m, me, n, 1e-5, "%s adamw m", nm);
        CLOSE(v, ve, n, 1e-5, "%s adamw v", nm);
        /* the update is not negligible next to the tolerance: 3 steps of ~lr each */
        double moved = 0;
        for (size_t i = 0; i < n; i++) moved += fabs((double)p[i] - p0[i]);
        ck_assert_msg(moved / n > 1e-2, "adamw barely moved the parameters (%g)", moved / n);
        free(p);
        free(m);
        free(v);
    }
    for (int t = 0; t < 3; t++) free(grads[t]);
    free(p0);
    free(P);
    free(M);
    free(Vv);
    free(pe);
    free(me);
    free(ve);
}
END_TEST

/* ---- thread count does not change results --------------------------------------------------------- */

START_TEST(test_thread_invariance) {
    lt_backend *b1 = NULL, *b5 = NULL;
    ck_assert_int_eq(lt_cpu_backend_create(1, &b1, NULL, 0), LT_OK);
    ck_assert_int_eq(lt_cpu_backend_create(5, &b5, NULL, 0), LT_OK);
    /* sumsq */
    size_t n = 3000017;
    float *x = frand(n, -1, 1);
    ck_assert(b1->ops->sumsq(b1, n, x) == b5->ops->sumsq(b5, n, x));
    free(x);
    /* rmsnorm backward (dweight sums over rows) */
    int N = 257, C = 1030;
    float *in = frand((size_t)N * C, -1, 1), *g = frand((size_t)N * C, -1, 1), *w = frand(C, 0.5f, 1.5f),
          *rs = frand(N, 0.5f, 2);
    float *d1 = fnew((size_t)N * C), *d5 = fnew((size_t)N * C), *w1 = fnew(C), *w5 = fnew(C);
    memset(d1, 0, (size_t)N * C * 4);
    memset(d5, 0, (size_t)N * C * 4);
    memset(w1, 0, C * 4);
    memset(w5, 0, C * 4);
    b1->ops->rmsnorm_backward(b1, d1, w1, g, in, w, rs, N, C);
    b5->ops->rmsnorm_backward(b5, d5, w5, g, in, w, rs, N, C);
    SAME(d5, d1, (size_t)N * C, "rmsnorm dinp 1 vs 5 threads");
    SAME(w5, w1, (size_t)C, "rmsnorm dweight 1 vs 5 threads");
    free(in);
    free(g);
    free(w);
    free(rs);
    free(d1);
    free(d5);
    free(w1);
    free(w5);
    /* attention backward with grouped heads */
    int B = 2, T = 77, NH = 4, NKV = 2, HD = 32;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD;
    float *q = frand(nq, -1, 1), *k = frand(nkv, -1, 1), *v = frand(nkv, -1, 1), *dout = frand(nq, -1, 1);
    float *o = fnew(nq), *l = fnew((size_t)B * NH * T);
    int32_t ks[154];
    make_kv_start(ks, B, T, 1);
    b1->ops->attention_forward(b1, o, l, q, k, v, ks, B, T, NH, NKV, HD, 0.17f);
    float *o5 = fnew(nq), *l5 = fnew((size_t)B * NH * T);
    b5->ops->attention_forward(b5, o5, l5, q, k, v, ks, B, T, NH, NKV, HD, 0.17f);
    SAME(o5, o, nq, "attention out 1 vs 5 threads");
    size_t ns = b1->ops->attention_backward_scratch(b1, B, T, NH, HD);
    float *s1 = fnew(ns), *s5 = fnew(ns);
    float *g1[3] = {fnew(nq), fnew(nkv), fnew(nkv)}, *g5[3] = {fnew(nq), fnew(nkv), fnew(nkv)};
    b1->ops->attention_backward(b1, g1[0], g1[1], g1[2], dout, q, k, v, o, l, ks, B, T, NH, NKV, HD, 0.17f, s1);
    b5->ops->attention_backward(b5, g5[0], g5[1], g5[2], dout, q, k, v, o, l, ks, B, T, NH, NKV, HD, 0.17f, s5);
    SAME(g5[0], g1[0], nq, "attention dq 1 vs 5 threads");
    SAME(g5[1], g1[1], nkv, "attention dk 1 vs 5 threads");
    SAME(g5[2], g1[2], nkv, "attention dv 1 vs 5 threads");
    for (int i = 0; i < 3; i++) {
        free(g1[i]);
        free(g5[i]);
    }
    free(q);
    free(k);
    free(v);
    free(dout);
    free(o);
    free(l);
    free(o5);
    free(l5);
    free(s1);
    free(s5);
    b1->ops->destroy(b1);
    b5->ops->destroy(b5);
}
END_TEST

/* ---- reference backward vs central finite differences --------------------------------------------- */

/* L(x) = sum_i w_i f(x)_i, evaluated by `loss`; the analytic gradient `grad` is checked at every
 * element of x: |grad - fd| <= rtol max(|grad|, |fd|) + atol. Returns the number of mismatches. */
typedef double (*loss_fn)(void *ctx);
#define FD_H 1e-3f
#define FD_RTOL 1e-2
#define FD_ATOL 1e-3
static int fd_mismatches(float *x, size_t n, const float *grad, loss_fn loss, void *ctx, const char *what, int report) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i], xp = x0 + FD_H, xm = x0 - FD_H;
        x[i] = xp;
        double lp = loss(ctx);
        x[i] = xm;
        double lm = loss(ctx);
        x[i] = x0;
        double fd = (lp - lm) / ((double)xp - (double)xm);
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

/* rmsnorm */
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
    rms_ctx c = {3, 7, frand(21, -2, 2), frand(7, 0.5f, 1.5f), frand(21, -1, 1), fnew(21), fnew(3)};
    float *dx = fnew(21), *dw = fnew(7);
    memset(dx, 0, 21 * 4);
    memset(dw, 0, 7 * 4);
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

/* rope */
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
    size_t n = 3 * 2 * 6;
    rope_ctx c = {3, 2, 6, 4, frand(n, -2, 2), fnew(n), frand(n, -1, 1), inv, pos};
    float *dx = fdup(c.wout, n);
    lt_ref_rope_backward(dx, pos, inv, 3, 2, 6, 4);
    FD_CHECK(c.x, n, dx, rope_loss, &c, "rope dx");
    free(c.x);
    free(c.y);
    free(c.wout);
    free(dx);
}
END_TEST

/* attention */
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
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD;
    int32_t ks[64];
    memcpy(ks, kv_start, (size_t)B * T * sizeof(int32_t));
    att_ctx c = {B,
                 T,
                 NH,
                 NKV,
                 HD,
                 frand(nq, -1.5f, 1.5f),
                 frand(nkv, -1.5f, 1.5f),
                 frand(nkv, -1, 1),
                 fnew(nq),
                 fnew((size_t)B * NH * T),
                 frand(nq, -1, 1),
                 ks};
    att_loss(&c);
    float *dq = fnew(nq), *dk = fnew(nkv), *dv = fnew(nkv);
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

/* swiglu */
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
    size_t n = 24;
    swi_ctx c = {n, frand(n, -5, 5), frand(n, -2, 2), fnew(n), frand(n, -1, 1)};
    float *dg = fnew(n), *du = fnew(n);
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
    int n = 4, V = 11;
    ce_ctx c = {n, V, frand((size_t)n * V, -3, 3), fnew((size_t)n * V), tg};
    float *grad = fdup(c.x, (size_t)n * V), loss[4];
    lt_ref_cross_entropy(grad, loss, tg, n, V, 1.0f);
    FD_CHECK(c.x, (size_t)n * V, grad, ce_loss, &c, "cross_entropy dlogits");
    free(c.x);
    free(c.tmp);
    free(grad);
}
END_TEST

/* ---- suite ---------------------------------------------------------------------------------------- */

static Suite *cpu_ops_suite(void) {
    Suite *s = suite_create("cpu_ops");
    TCase *tc = tcase_create("fast_vs_reference");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_comparator_detects);
    tcase_add_test(tc, test_backend_table);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_elementwise);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_scatter_rows);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_loop_test(tc, test_attention, 0, (int)(sizeof att_cases / sizeof att_cases[0]));
    tcase_add_test(tc, test_attention_packed_semantics);
    tcase_add_test(tc, test_attention_decode);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_bias_add);
    tcase_add_test(tc, test_geglu);
    tcase_add_test(tc, test_softcap);
    tcase_add_test(tc, test_attention_softcap);
    tcase_add_test(tc, test_dora_ops);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_dropout);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_thread_invariance);
    suite_add_tcase(s, tc);
    TCase *fd = tcase_create("reference_vs_finite_differences");
    tcase_add_checked_fixture(fd, setup, teardown);
    tcase_set_timeout(fd, 600);
    tcase_add_test(fd, test_fd_rmsnorm);
    tcase_add_test(fd, test_fd_rope);
    tcase_add_test(fd, test_fd_attention);
    tcase_add_test(fd, test_fd_swiglu);
    tcase_add_test(fd, test_fd_cross_entropy);
    suite_add_tcase(s, fd);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(cpu_ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
