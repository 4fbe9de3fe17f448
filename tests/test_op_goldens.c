/*
 * test_op_goldens.c - every differentiable CPU op against PyTorch autograd.
 *
 * The goldens are written by tests/python/make_op_goldens.py into LT_TEST_DATA_DIR/ops (tests/run.sh does
 * this before ctest): float32 inputs, a random upstream gradient, and the forward outputs and gradients
 * computed by torch in float64 (stored as float32). Each check runs BOTH the reference kernels (lt_ref_*,
 * through a small ops table below) and the fast CPU backend (lt_cpu_backend_create) and requires
 * max|got - torch| / max|torch| <= 1e-4 for every output and gradient.
 *
 * The gradient conventions of backend.h are exercised too: outputs and assigned gradients are pre-filled
 * with NaN (an op that reads them instead of assigning fails); accumulating gradients (rmsnorm dinp and
 * dweight, LoRA dA/dB and dx with accumulate) start at zero and a second backward must give 2x.
 * The LoRA linear is composed from gemm calls exactly as src/decoder/decoder.c's lt_linear_forward and
 * linear_backward do (no dropout), so that composition is what is compared with torch.
 *
 * Missing goldens are a FAILURE (not a skip): run tests/python/make_op_goldens.py.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu_backend.h"
#include "cpu/ref_ops.h"
#include "formats/config.h"
#include "formats/safetensors.h"
#include "test_util.h"

#define RTOL 1e-4
#define GOLDEN_DIR LT_TEST_DATA_DIR "/ops"

/* ---- the reference kernels as an ops table ------------------------------------------------------ */

static void r_gemm(lt_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
    (void)be;
    lt_ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void r_rms_f(lt_backend *be, float *out, float *rstd, const float *inp, const float *w, int N, int C,
                    float eps) {
    (void)be;
    lt_ref_rmsnorm_forward(out, rstd, inp, w, N, C, eps);
}
static void r_rms_b(lt_backend *be, float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                    const float *rstd, int N, int C) {
    (void)be;
    lt_ref_rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
}
static void r_rope_f(lt_backend *be, float *x, const int32_t *pos, const float *inv, int N, int nh, int hd, int rd) {
    (void)be;
    lt_ref_rope_forward(x, pos, inv, N, nh, hd, rd);
}
static void r_rope_b(lt_backend *be, float *x, const int32_t *pos, const float *inv, int N, int nh, int hd, int rd) {
    (void)be;
    lt_ref_rope_backward(x, pos, inv, N, nh, hd, rd);
}
static void r_att_f(lt_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                    const int32_t *ks, int B, int T, int NH, int NKV, int HD, float scale) {
    (void)be;
    lt_ref_attention_forward(out, lse, q, k, v, ks, B, T, NH, NKV, HD, scale);
}
static size_t r_att_scr(lt_backend *be, int B, int T, int NH, int HD) {
    (void)be;
    return lt_ref_attention_backward_scratch(B, T, NH, HD);
}
static void r_att_b(lt_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                    const float *v, const float *out, const float *lse, const int32_t *ks, int B, int T, int NH,
                    int NKV, int HD, float scale, float *scratch) {
    (void)be;
    lt_ref_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, ks, B, T, NH, NKV, HD, scale, scratch);
}
static void r_swiglu_f(lt_backend *be, float *out, const float *g, const float *u, size_t n) {
    (void)be;
    lt_ref_swiglu_forward(out, g, u, n);
}
static void r_swiglu_b(lt_backend *be, float *dg, float *du, const float *dout, const float *g, const float *u,
                       size_t n) {
    (void)be;
    lt_ref_swiglu_backward(dg, du, dout, g, u, n);
}
static void r_ce(lt_backend *be, float *logits, float *losses, const int32_t *tg, int n, int V, float gs) {
    (void)be;
    lt_ref_cross_entropy(logits, losses, tg, n, V, gs);
}
static lt_status r_sync(lt_backend *be) {
    (void)be;
    return LT_OK;
}

static const lt_backend_ops ref_ops = {
    .name = "reference",
    .host_memory = 1,
    .sync = r_sync,
    .gemm = r_gemm,
    .rmsnorm_forward = r_rms_f,
    .rmsnorm_backward = r_rms_b,
    .rope_forward = r_rope_f,
    .rope_backward = r_rope_b,
    .attention_forward = r_att_f,
    .attention_backward_scratch = r_att_scr,
    .attention_backward = r_att_b,
    .swiglu_forward = r_swiglu_f,
    .swiglu_backward = r_swiglu_b,
    .cross_entropy = r_ce,
};
static lt_backend ref_be = {&ref_ops, NULL, 1};

/* Implementations under test: [0] the reference kernels, [1] the fast CPU backend. */
static lt_backend *impls[2];
static const char *impl_names[2] = {"reference (lt_ref_*)", "cpu backend"};
#define N_IMPL 2

static void setup(void) {
    char err[256] = "";
    lt_backend *be = NULL;
    lt_status st = lt_cpu_backend_create(3, &be, err, sizeof err);
    ck_assert_msg(st == LT_OK && be, "lt_cpu_backend_create: %s", err);
    impls[0] = &ref_be;
    impls[1] = be;
}
static void teardown(void) {
    if (impls[1]) impls[1]->ops->destroy(impls[1]);
    impls[1] = NULL;
}
#define FOR_IMPL(i, be)              \
    for (int i = 0; i < N_IMPL; i++) \
        for (lt_backend *be = impls[i]; be; be = NULL)
#define SYNC(be) ck_assert_msg((be)->ops->sync(be) == LT_OK, "%s: sync reported an error", (be)->ops->name)

/* ---- goldens -------------------------------------------------------------------------------------- */

static const char *golden_path(const char *op) {
    static char p[1024];
    snprintf(p, sizeof p, "%s/%s.safetensors", GOLDEN_DIR, op);
    return p;
}

static lt_st_file *golden_open(const char *op) {
    const char *path = golden_path(op);
    ck_assert_msg(access(path, R_OK) == 0,
                  "golden %s is missing: run `python tests/python/make_op_goldens.py %s` (the reference venv "
                  "python, e.g. /opt/ltref/bin/python; tests/run.sh does this before ctest)",
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
    const lt_st_tensor *t = lt_st_find(f, name);
    ck_assert_msg(t != NULL, "%s: no tensor '%s' (regenerate with tests/python/make_op_goldens.py)", lt_st_path(f),
                  name);
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

/* ---- buffers and comparison ----------------------------------------------------------------------- */

static float *fnew(size_t n) {
    float *p = aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    ck_assert_ptr_nonnull(p);
    return p;
}
static float *fdup(const float *x, size_t n) {
    float *p = fnew(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}
static float *fnan(size_t n) {
    float *p = fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}
static float *fzero(size_t n) {
    float *p = fnew(n);
    memset(p, 0, n * sizeof(float));
    return p;
}
static float *fscaled(const float *x, size_t n, float a) {
    float *p = fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = a * x[i];
    return p;
}

/* max|got - want| / max|want| <= RTOL (NaN fails). */
static void expect_close(int impl, const char *what, const float *got, const float *want, size_t n) {
    double e = tu_max_rel_err(got, want, n);
    if (getenv("LT_TEST_VERBOSE")) fprintf(stderr, "  %-22s %-32s rel err %.3g\n", impl_names[impl], what, e);
    ck_assert_msg(e <= RTOL, "%s: %s differs from torch: max|diff|/max|torch| = %.3g > %.0e", impl_names[impl], what, e,
                  RTOL);
}

/* ---- goldens present ------------------------------------------------------------------------------ */

static const char *const ops_all[] = {"rmsnorm", "rope", "attention", "swiglu", "cross_entropy", "lora_linear"};

START_TEST(test_goldens_present) {
    for (size_t i = 0; i < sizeof ops_all / sizeof ops_all[0]; i++) lt_st_close(golden_open(ops_all[i]));
}
END_TEST

/* ---- rmsnorm -------------------------------------------------------------------------------------- */

START_TEST(test_rmsnorm) {
    lt_st_file *f = golden_open("rmsnorm");
    enum { N = 7, C = 96 };
    const float *inp = GF(f, "inp", N, C), *w = GF(f, "weight", C), *dout = GF(f, "dout", N, C);
    const float *g_out = GF(f, "out", N, C), *g_rstd = GF(f, "rstd", N), *g_dinp = GF(f, "dinp", N, C);
    const float *g_dw = GF(f, "dweight", C);
    float eps = gscalar(f, "eps");
    float *g_dinp2 = fscaled(g_dinp, N * C, 2.0f), *g_dw2 = fscaled(g_dw, C, 2.0f);
    FOR_IMPL(ii, be) {
        float *out = fnan(N * C), *rstd = fnan(N), *dinp = fzero(N * C), *dw = fzero(C);
        be->ops->rmsnorm_forward(be, out, rstd, inp, w, N, C, eps);
        SYNC(be);
        expect_close(ii, "rmsnorm out", out, g_out, N * C);
        expect_close(ii, "rmsnorm rstd", rstd, g_rstd, N);
        /* dinp accumulates: start from zero; dweight accumulates: start from zero */
        be->ops->rmsnorm_backward(be, dinp, dw, dout, inp, w, rstd, N, C);
        SYNC(be);
        expect_close(ii, "rmsnorm dinp", dinp, g_dinp, N * C);
        expect_close(ii, "rmsnorm dweight", dw, g_dw, C);
        /* both accumulate: a second backward doubles them */
        be->ops->rmsnorm_backward(be, dinp, dw, dout, inp, w, rstd, N, C);
        SYNC(be);
        expect_close(ii, "rmsnorm dinp (accumulated x2)", dinp, g_dinp2, N * C);
        expect_close(ii, "rmsnorm dweight (accumulated x2)", dw, g_dw2, C);
        /* frozen norm: dweight NULL */
        memset(dinp, 0, N * C * sizeof(float));
        be->ops->rmsnorm_backward(be, dinp, NULL, dout, inp, w, rstd, N, C);
        SYNC(be);
        expect_close(ii, "rmsnorm dinp (dweight NULL)", dinp, g_dinp, N * C);
        free(out);
        free(rstd);
        free(dinp);
        free(dw);
    }
    free(g_dinp2);
    free(g_dw2);
    lt_st_close(f);
}
END_TEST

/* ---- rope ----------------------------------------------------------------------------------------- */

START_TEST(test_rope) {
    lt_st_file *f = golden_open("rope");
    enum { N = 9, NHd = 3, HD = 16, n = N * NHd * HD };
    const float *x = GF(f, "x", N, NHd, HD), *dout = GF(f, "dout", N, NHd, HD);
    const int32_t *pos = GI(f, "pos", N);
    static const int rots[] = {16, 8};
    for (int c = 0; c < 2; c++) {
        int rot = rots[c];
        char nm[3][32], what[3][64];
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
        FOR_IMPL(ii, be) {
            float *y = fdup(x, n), *dx = fdup(dout, n);
            be->ops->rope_forward(be, y, pos, inv, N, NHd, HD, rot);
            be->ops->rope_backward(be, dx, pos, inv, N, NHd, HD, rot);
            SYNC(be);
            expect_close(ii, what[0], y, g_out, n);
            expect_close(ii, what[1], dx, g_dx, n);
            free(y);
            free(dx);
        }
    }
    lt_st_close(f);
}
END_TEST

/* ---- attention ------------------------------------------------------------------------------------ */

enum { AB = 2, AT = 11, ANH = 4, ANKV = 2, AHD = 16 };

START_TEST(test_attention) {
    lt_st_file *f = golden_open("attention");
    const size_t nq = (size_t)AB * AT * ANH * AHD, nk = (size_t)AB * AT * ANKV * AHD, nl = (size_t)AB * ANH * AT;
    const float *q = GF(f, "q", AB, AT, ANH, AHD), *k = GF(f, "k", AB, AT, ANKV, AHD),
                *v = GF(f, "v", AB, AT, ANKV, AHD);
    const float *dout = GF(f, "dout", AB, AT, ANH, AHD);
    const int32_t *ks = GI(f, "kv_start", AB * AT);
    const float *g_out = GF(f, "out", AB, AT, ANH, AHD), *g_lse = GF(f, "lse", AB, ANH, AT);
    const float *g_dq = GF(f, "dq", AB, AT, ANH, AHD), *g_dk = GF(f, "dk", AB, AT, ANKV, AHD);
    const float *g_dv = GF(f, "dv", AB, AT, ANKV, AHD);
    float scale = gscalar(f, "scale");
    ck_assert_float_eq(scale, 1.0f / sqrtf((float)AHD));
    int packed = 0;
    for (int i = 0; i < AB * AT; i++) packed |= ks[i] > 0;
    ck_assert_msg(packed, "attention golden has no packed boundary (kv_start all 0)");
    FOR_IMPL(ii, be) {
        float *out = fnan(nq), *lse = fnan(nl), *dq = fnan(nq), *dk = fnan(nk), *dv = fnan(nk);
        be->ops->attention_forward(be, out, lse, q, k, v, ks, AB, AT, ANH, ANKV, AHD, scale);
        SYNC(be);
        expect_close(ii, "attention out", out, g_out, nq);
        expect_close(ii, "attention lse", lse, g_lse, nl);
        size_t ns = be->ops->attention_backward_scratch(be, AB, AT, ANH, AHD);
        float *scratch = fnan(ns ? ns : 1);
        be->ops->attention_backward(be, dq, dk, dv, dout, q, k, v, out, lse, ks, AB, AT, ANH, ANKV, AHD, scale,
                                    scratch);
        SYNC(be);
        expect_close(ii, "attention dq", dq, g_dq, nq);
        expect_close(ii, "attention dk", dk, g_dk, nk);
        expect_close(ii, "attention dv", dv, g_dv, nk);
        free(out);
        free(lse);
        free(dq);
        free(dk);
        free(dv);
        free(scratch);
    }
    lt_st_close(f);
}
END_TEST

/* ---- swiglu --------------------------------------------------------------------------------------- */

START_TEST(test_swiglu) {
    lt_st_file *f = golden_open("swiglu");
    enum { n = 300 };
    const float *gate = GF(f, "gate", n), *up = GF(f, "up", n), *dout = GF(f, "dout", n);
    const float *g_out = GF(f, "out", n), *g_dg = GF(f, "dgate", n), *g_du = GF(f, "dup", n);
    FOR_IMPL(ii, be) {
        float *out = fnan(n), *dg = fnan(n), *du = fnan(n);
        be->ops->swiglu_forward(be, out, gate, up, n);
        be->ops->swiglu_backward(be, dg, du, dout, gate, up, n);
        SYNC(be);
        expect_close(ii, "swiglu out", out, g_out, n);
        expect_close(ii, "swiglu dgate", dg, g_dg, n);
        expect_close(ii, "swiglu dup", du, g_du, n);
        /* in place: dgate/dup alias gate/up (allowed by backend.h) */
        float *gi = fdup(gate, n), *ui = fdup(up, n);
        be->ops->swiglu_backward(be, gi, ui, dout, gi, ui, n);
        SYNC(be);
        expect_close(ii, "swiglu dgate (in place)", gi, g_dg, n);
        expect_close(ii, "swiglu dup (in place)", ui, g_du, n);
        free(out);
        free(dg);
        free(du);
        free(gi);
        free(ui);
    }
    lt_st_close(f);
}
END_TEST

/* ---- cross-entropy -------------------------------------------------------------------------------- */

START_TEST(test_cross_entropy) {
    lt_st_file *f = golden_open("cross_entropy");
    enum { n = 6, V = 50 };
    const float *logits = GF(f, "logits", n, V), *g_loss = GF(f, "losses", n), *g_dl = GF(f, "dlogits", n, V);
    const int32_t *tg = GI(f, "targets", n);
    int ignored = -1;
    for (int i = 0; i < n; i++)
        if (tg[i] == -100) ignored = i;
    ck_assert_msg(ignored >= 0, "cross_entropy golden has no ignored (-100) row");
    float *g_dl_q = fscaled(g_dl, n * V, 0.25f);
    FOR_IMPL(ii, be) {
        float *lg = fdup(logits, n * V), *loss = fnan(n);
        be->ops->cross_entropy(be, lg, loss, tg, n, V, 1.0f);
        SYNC(be);
        expect_close(ii, "cross_entropy losses", loss, g_loss, n);
        expect_close(ii, "cross_entropy dlogits", lg, g_dl, n * V);
        ck_assert_msg(loss[ignored] == 0.0f, "%s: ignored row's loss %g != 0", impl_names[ii], loss[ignored]);
        for (int j = 0; j < V; j++)
            ck_assert_msg(lg[ignored * V + j] == 0.0f, "%s: ignored row's gradient is not zero", impl_names[ii]);
        /* grad_scale scales the gradient; 0 leaves the logits alone */
        memcpy(lg, logits, n * V * sizeof(float));
        be->ops->cross_entropy(be, lg, loss, tg, n, V, 0.25f);
        SYNC(be);
        expect_close(ii, "cross_entropy dlogits (grad_scale 0.25)", lg, g_dl_q, n * V);
        memcpy(lg, logits, n * V * sizeof(float));
        for (int i = 0; i < n; i++) loss[i] = NAN;
        be->ops->cross_entropy(be, lg, loss, tg, n, V, 0.0f);
        SYNC(be);
        expect_close(ii, "cross_entropy losses (grad_scale 0)", loss, g_loss, n);
        ck_assert_msg(memcmp(lg, logits, n * V * sizeof(float)) == 0, "%s: grad_scale 0 modified the logits",
                      impl_names[ii]);
        free(lg);
        free(loss);
    }
    free(g_dl_q);
    lt_st_close(f);
}
END_TEST

/* ---- LoRA linear, composed as decoder.c does ------------------------------------------------------- */

/* lt_linear_forward without dropout: y = x W^T + s (x A^T) B^T; xa (N,r) = x A^T kept for backward. */
static void lora_forward(lt_backend *be, float *y, float *xa, const float *x, const float *W, const float *A,
                         const float *Bm, float s, int N, int in, int out, int r) {
    be->ops->gemm(be, 0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    be->ops->gemm(be, 0, 1, N, r, in, 1.0f, x, in, A, in, 0.0f, xa, r);
    be->ops->gemm(be, 0, 1, N, out, r, s, xa, r, Bm, r, 1.0f, y, out);
}

/* linear_backward without dropout: dx = (accumulate ? dx : 0) + dy W + s (dy B) A; dB += s dy^T xa;
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

START_TEST(test_lora_linear) {
    lt_st_file *f = golden_open("lora_linear");
    enum { N = 5, IN = 12, OUT = 10, R = 3 };
    const float *x = GF(f, "x", N, IN), *W = GF(f, "W", OUT, IN), *A = GF(f, "A", R, IN), *Bm = GF(f, "B", OUT, R);
    const float *dy = GF(f, "dy", N, OUT), *g_y = GF(f, "y", N, OUT), *g_dx = GF(f, "dx", N, IN);
    const float *g_dA = GF(f, "dA", R, IN), *g_dB = GF(f, "dB", OUT, R);
    float s = gscalar(f, "scaling");
    float *g_dx2 = fscaled(g_dx, N * IN, 2.0f), *g_dA2 = fscaled(g_dA, R * IN, 2.0f),
          *g_dB2 = fscaled(g_dB, OUT * R, 2.0f);
    FOR_IMPL(ii, be) {
        float *y = fnan(N * OUT), *xa = fnan(N * R), *dx = fnan(N * IN), *dr = fnan(N * R);
        float *dA = fzero(R * IN), *dB = fzero(OUT * R);
        lora_forward(be, y, xa, x, W, A, Bm, s, N, IN, OUT, R);
        SYNC(be);
        expect_close(ii, "lora linear y", y, g_y, N * OUT);
        lora_backward(be, dx, 0, dy, x, W, A, Bm, xa, dA, dB, dr, s, N, IN, OUT, R);
        SYNC(be);
        expect_close(ii, "lora linear dx", dx, g_dx, N * IN);
        expect_close(ii, "lora linear dA", dA, g_dA, R * IN);
        expect_close(ii, "lora linear dB", dB, g_dB, OUT * R);
        /* second pass with accumulate: dx (residual-stream style), dA and dB double */
        lora_backward(be, dx, 1, dy, x, W, A, Bm, xa, dA, dB, dr, s, N, IN, OUT, R);
        SYNC(be);
        expect_close(ii, "lora linear dx (accumulated x2)", dx, g_dx2, N * IN);
        expect_close(ii, "lora linear dA (accumulated x2)", dA, g_dA2, R * IN);
        expect_close(ii, "lora linear dB (accumulated x2)", dB, g_dB2, OUT * R);
        free(y);
        free(xa);
        free(dx);
        free(dr);
        free(dA);
        free(dB);
    }
    free(g_dx2);
    free(g_dA2);
    free(g_dB2);
    lt_st_close(f);
}
END_TEST

/* ---- the goldens discriminate ---------------------------------------------------------------------- */

/* Plausible bugs must fail the 1e-4 comparison: the goldens are not too weak to notice them. */
START_TEST(test_goldens_discriminate) {
    { /* attention that ignores the packed boundary */
        lt_st_file *f = golden_open("attention");
        const size_t nq = (size_t)AB * AT * ANH * AHD, nl = (size_t)AB * ANH * AT;
        int32_t ks0[AB * AT] = {0};
        float *out = fnew(nq), *lse = fnew(nl);
        lt_ref_attention_forward(out, lse, GF(f, "q", AB, AT, ANH, AHD), GF(f, "k", AB, AT, ANKV, AHD),
                                 GF(f, "v", AB, AT, ANKV, AHD), ks0, AB, AT, ANH, ANKV, AHD, gscalar(f, "scale"));
        ck_assert(tu_max_rel_err(out, GF(f, "out", AB, AT, ANH, AHD), nq) > 10 * RTOL);
        /* GQA mapping h % NKV instead of h / (NH/NKV): swap the kv heads of query heads 1 and 2 */
        const int32_t *ks = GI(f, "kv_start", AB * AT);
        float *qs = fdup(GF(f, "q", AB, AT, ANH, AHD), nq);
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
        ck_assert(tu_max_rel_err(out, GF(f, "out", AB, AT, ANH, AHD), nq) > 10 * RTOL);
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
        float *y = fdup(x, n);
        lt_ref_rope_forward(y, pos1, inv, N, NHd, HD, 16);
        ck_assert(tu_max_rel_err(y, g, n) > 10 * RTOL);
        /* the angle in double instead of HF's float32 (pos * inv_freq rounded to float) */
        for (int t = 0; t < N; t++)
            for (int h = 0; h < NHd; h++)
                for (int j = 0; j < HD / 2; j++) {
                    const float *xh = x + ((size_t)t * NHd + h) * HD;
                    double a = (double)pos[t] * (double)inv[j], x1 = xh[j], x2 = xh[j + HD / 2];
                    y[((size_t)t * NHd + h) * HD + j] = (float)(x1 * cos(a) - x2 * sin(a));
                    y[((size_t)t * NHd + h) * HD + j + HD / 2] = (float)(x2 * cos(a) + x1 * sin(a));
                }
        ck_assert(tu_max_rel_err(y, g, n) > RTOL);
        /* interleaved pairing = HF pairing applied to channels permuted (0,2,4,..,1,3,5,..) */
        float *xp = fnew(n);
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
        ck_assert(tu_max_rel_err(y, g, n) > 10 * RTOL);
        free(y);
        free(xp);
        lt_st_close(f);
    }
}
END_TEST

static Suite *op_goldens_suite(void) {
    Suite *s = suite_create("op_goldens");
    TCase *tc = tcase_create("torch_autograd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_goldens_present);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_lora_linear);
    tcase_add_test(tc, test_goldens_discriminate);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(op_goldens_suite)
