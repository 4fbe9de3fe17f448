/*
 * test_gemm_bf16.c - frozen weights in bf16 (cpu/gemm_bf16.c, lt_model_params.base_dtype).
 *
 * (a) the kernels against an fp64 reference of the bf16-rounded inputs: both products, both code
 *     paths (the AVX512_BF16 kernels when this CPU has them, and the portable ones, each through its
 *     ISA's table, cpu_kernels.h), 1 and 3 threads, odd
 *     shapes (not multiples of the 8-row / 16-column / 256-k tiles, N = 1, in = 1, odd K).
 *     Tolerance, per element: |got - exact| <= (K + 2) 2^-24 (|acc| + sum_k |a_k b_k|), the bound of
 *     any fp32 summation order of exact products (products of two bf16 values are exact in fp32).
 *     Results do not depend on the thread count (bitwise).
 * (b) rounding: lt_bf16_round on ties, subnormals, NaN, inf; the AVX-512 conversion of the
 *     activations gives the same bits (a product with in = 1 and W = 1 returns bf16(x) exactly).
 * (c) the CPU backend's ops and the reference ops against the same bound.
 * (d) models: logits of a base_dtype BF16 model vs the F32 model (tolerance below), LoRA gradients
 *     flow, a short training run learns, memory of the projections and the LM head halves, merge and
 *     export refuse.
 * (e) 4-bit weights (NF4 / FP4, with and without double quantization) computed in bf16
 *     (lt_gemm_q4_*, the backend's gemm_q4_*): the same bound as (a) with W = the dequantized weight
 *     rounded to bf16, both code paths (and, on AVX-512, the fast B-block packers and the portable
 *     fallbacks their conditions select: rows of whole blocks, in % 16), 1 and 3 threads, odd shapes,
 *     and a weight that differs in one code is caught; the backend ops against the reference ops.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/context.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/gemm_bf16.h"
#include "cpu/ref_ops.h"
#include "formats/quant.h"
#include "loratune.h"
#include "loratune_experimental.h"
#include "test_util.h"

/* ---- helpers -------------------------------------------------------------------------------------- */

static uint16_t *pack(const float *W, int out, int in) {
    uint16_t *p = malloc((lt_bf16w_elems(out, in) + 32) * sizeof *p);
    ck_assert_ptr_nonnull(p);
    lt_bf16w_pack(p, W, out, in);
    return p;
}

static double r16(float x) { return (double)lt_bf16_to_f32(lt_bf16_round(x)); }

/* Max over elements of |got - exact| / bound (must be <= 1). bwd = 0: y = x W^T, K = in;
 * bwd = 1: dx = acc + dy W, K = out. acc (or NULL) is C before an accumulating call. */
static double err_ratio(int bwd, const float *got, const float *A, const float *acc, const float *W, int N, int in,
                        int out) {
    const int cols = bwd ? in : out, K = bwd ? out : in;
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < cols; j++) {
            double s = acc ? acc[(size_t)n * cols + j] : 0.0, sa = fabs(s);
            for (int k = 0; k < K; k++) {
                double w = bwd ? r16(W[(size_t)k * in + j]) : r16(W[(size_t)j * in + k]);
                double p = r16(A[(size_t)n * K + k]) * w;
                s += p;
                sa += fabs(p);
            }
            double bound = (K + 2) * ldexp(1.0, -24) * sa + 1e-30;
            double e = fabs((double)got[(size_t)n * cols + j] - s) / bound;
            if (!(e <= worst)) worst = e; /* NaN-propagating */
        }
    return worst;
}

/* ---- (a) kernels ---------------------------------------------------------------------------------- */

static const int shapes[][3] = {
    /* N, in, out */
    {1, 1, 1},      {1, 5, 3},      {1, 300, 17},  {3, 2, 16},     {7, 33, 47},
    {8, 16, 48},    {9, 17, 49},    {37, 45, 53},  {16, 257, 31},  {64, 256, 96},
    {65, 513, 193}, {130, 96, 260}, {5, 1376, 20}, {19, 40, 1376}, {200, 64, 400},
};
#define N_SHAPES ((int)(sizeof shapes / sizeof *shapes))

static void check_shape(const lt_cpu_kernels *impl, int N, int in, int out) {
    tu_rng_seed((uint64_t)(N * 1000003 + in * 1009 + out));
    float *W = tu_frand((size_t)out * in, -1.0f, 1.0f), *x = tu_frand((size_t)N * in, -2.0f, 2.0f);
    float *dy = tu_frand((size_t)N * out, -0.5f, 0.5f);
    float *acc = tu_frand((size_t)N * in, -3.0f, 3.0f);
    uint16_t *Wp = pack(W, out, in);
    float *y1 = malloc((size_t)N * out * sizeof *y1), *y3 = malloc((size_t)N * out * sizeof *y3);
    float *d1 = malloc((size_t)N * in * sizeof *d1), *d3 = malloc((size_t)N * in * sizeof *d3);
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        for (size_t i = 0; i < (size_t)N * out; i++) y1[i] = y3[i] = NAN; /* assigned, never read */
        for (size_t i = 0; i < (size_t)N * in; i++) d1[i] = d3[i] = accumulate ? acc[i] : NAN;
        lt_gemm_bf16_forward(impl, 1, y1, x, Wp, N, in, out);
        lt_gemm_bf16_forward(impl, 3, y3, x, Wp, N, in, out);
        lt_gemm_bf16_backward(impl, 1, d1, dy, Wp, N, in, out, accumulate);
        lt_gemm_bf16_backward(impl, 3, d3, dy, Wp, N, in, out, accumulate);
        double ef = err_ratio(0, y1, x, NULL, W, N, in, out);
        double eb = err_ratio(1, d1, dy, accumulate ? acc : NULL, W, N, in, out);
        ck_assert_msg(ef <= 1.0, "%s forward N=%d in=%d out=%d: error %.3g x the bound", impl->isa, N, in, out, ef);
        ck_assert_msg(eb <= 1.0, "%s backward N=%d in=%d out=%d accumulate=%d: error %.3g x the bound", impl->isa, N,
                      in, out, accumulate, eb);
        ck_assert_msg(!memcmp(y1, y3, (size_t)N * out * sizeof *y1), "forward depends on the thread count");
        ck_assert_msg(!memcmp(d1, d3, (size_t)N * in * sizeof *d1), "backward depends on the thread count");
    }
    /* the check can fail: an error of 3 bounds in one element is caught */
    double sa = 0;
    for (int k = 0; k < in; k++) sa += fabs(r16(x[k]) * r16(W[k]));
    y1[0] += (float)(3 * (in + 2) * ldexp(1.0, -24) * sa + 1e-6 * fabs(y1[0]) + 1e-30);
    ck_assert_msg(err_ratio(0, y1, x, NULL, W, N, in, out) > 1.0, "a wrong result passed the check");
    free(W);
    free(x);
    free(dy);
    free(acc);
    free(Wp);
    free(y1);
    free(y3);
    free(d1);
    free(d3);
}

/* the portable kernels: the generic ISA's table (the AVX2 and AVX512 tables name the same ones) */
START_TEST(test_kernel_portable) {
    check_shape(lt_cpu_kernels_get(LT_CPU_ISA_GENERIC, NULL, 0), shapes[_i][0], shapes[_i][1], shapes[_i][2]);
}
END_TEST

START_TEST(test_kernel_avx512) {
    const lt_cpu_kernels *k = lt_cpu_kernels_get(LT_CPU_ISA_AVX512_BF16, NULL, 0);
    if (!k) {
        fprintf(stderr, "test_gemm_bf16: no AVX512_BF16 on this CPU; the AUTO path is the portable one\n");
        return;
    }
    check_shape(k, shapes[_i][0], shapes[_i][1], shapes[_i][2]);
}
END_TEST

/* The two implementations give the same bits: both sum the exact products of a pair of k in the same
 * order, (c + a[2p] b[2p]) + a[2p+1] b[2p+1] (cpu_kernels.h), whatever instructions they use. */
START_TEST(test_paths_agree) {
    const int N = 33, in = 700, out = 90;
    tu_rng_seed(7);
    float *W = tu_frand((size_t)out * in, -1.0f, 1.0f), *x = tu_frand((size_t)N * in, -1.0f, 1.0f);
    float *dy = tu_frand((size_t)N * out, -1.0f, 1.0f);
    uint16_t *Wp = pack(W, out, in);
    float *a = malloc((size_t)N * out * sizeof *a), *b = malloc((size_t)N * out * sizeof *b);
    float *da = malloc((size_t)N * in * sizeof *da), *db = malloc((size_t)N * in * sizeof *db);
    const lt_cpu_kernels *fast = lt_cpu_kernels_get(LT_CPU_ISA_AUTO, NULL, 0);
    const lt_cpu_kernels *portable = lt_cpu_kernels_get(LT_CPU_ISA_GENERIC, NULL, 0);
    lt_gemm_bf16_forward(fast, 2, a, x, Wp, N, in, out);
    lt_gemm_bf16_forward(portable, 2, b, x, Wp, N, in, out);
    lt_gemm_bf16_backward(fast, 2, da, dy, Wp, N, in, out, 0);
    lt_gemm_bf16_backward(portable, 2, db, dy, Wp, N, in, out, 0);
    ck_assert_double_le(err_ratio(0, a, x, NULL, W, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(0, b, x, NULL, W, N, in, out), 1.0);
    ck_assert_msg(!memcmp(a, b, (size_t)N * out * sizeof *a), "%s and portable forward differ by %.3g relative",
                  fast->isa, tu_max_rel_err(a, b, (size_t)N * out));
    ck_assert_msg(!memcmp(da, db, (size_t)N * in * sizeof *da), "%s and portable backward differ by %.3g relative",
                  fast->isa, tu_max_rel_err(da, db, (size_t)N * in));
    free(W);
    free(x);
    free(dy);
    free(Wp);
    free(a);
    free(b);
    free(da);
    free(db);
}
END_TEST

/* ---- (b) rounding ------------------------------------------------------------------------------- */

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

START_TEST(test_rounding) {
    ck_assert_uint_eq(lt_bf16_round(1.0f), 0x3f80);
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x3f808000u)), 0x3f80); /* tie to even (down) */
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x3f818000u)), 0x3f82); /* tie to even (up)   */
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x3f808001u)), 0x3f81); /* above the tie      */
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x7f7fffffu)), 0x7f80); /* FLT_MAX -> inf     */
    ck_assert_uint_eq(lt_bf16_round(-INFINITY), 0xff80);
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x00400000u)), 0x0000); /* subnormal -> +0    */
    ck_assert_uint_eq(lt_bf16_round(from_bits(0x80000001u)), 0x8000); /* subnormal -> -0    */
    ck_assert(isnan(lt_bf16_to_f32(lt_bf16_round(NAN))));
    ck_assert(isnan(lt_bf16_to_f32(lt_bf16_round(from_bits(0x7f800001u))))); /* NaN with low bits only */
    /* the activations of both paths round like lt_bf16_round: y = bf16(x) * 1 exactly */
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu, 0x00400000u, 0x80000001u,
                                0x007fffffu, 0x00800000u, 0xc0490fdbu, 0x7f800000u, 0x33d6bf95u, 0x4b7fffffu};
    const int N = 80;
    float x[80], W[16], y[80 * 16];
    for (int i = 0; i < N; i++) x[i] = i < 12 ? from_bits(special[i]) : tu_urand(-100.0f, 100.0f);
    for (int o = 0; o < 16; o++) W[o] = 1.0f;
    uint16_t *Wp = pack(W, 16, 1);
    const lt_cpu_isa isas[2] = {LT_CPU_ISA_AVX512_BF16, LT_CPU_ISA_GENERIC};
    for (int ii = 0; ii < 2; ii++) {
        const lt_cpu_kernels *impl = lt_cpu_kernels_get(isas[ii], NULL, 0);
        if (!impl) continue; /* no AVX512_BF16 on this CPU */
        lt_gemm_bf16_forward(impl, 1, y, x, Wp, N, 1, 16);
        for (int i = 0; i < N; i++)
            for (int o = 0; o < 16; o++) {
                float want = lt_bf16_to_f32(lt_bf16_round(x[i]));
                /* == : the sum starts from +0, so bf16(-tiny) = -0 comes out as +0 */
                ck_assert_msg(y[i * 16 + o] == want || (isnan(want) && isnan(y[i * 16 + o])),
                              "%s: x = %a (0x%08x) gave %a, bf16 rounding gives %a", impl->isa, x[i],
                              i < 12 ? special[i] : 0u, y[i * 16 + o], want);
            }
    }
    free(Wp);
}
END_TEST

/* lt_bf16_pack (the CPU backend's bf16_weight_pack) gives lt_bf16w_pack's bytes: whole 16 x 16 blocks
 * transposed in AVX-512 registers, the edges in C; special values round alike */
START_TEST(test_pack) {
    static const int shapes_p[][2] = {{16, 32}, {1, 1}, {33, 70}, {130, 77}, {48, 512}, {17, 33}, {64, 2048}};
    for (size_t k = 0; k < sizeof shapes_p / sizeof *shapes_p; k++) {
        const int out = shapes_p[k][0], in = shapes_p[k][1];
        tu_rng_seed((uint64_t)k + 100);
        float *W = tu_frand((size_t)out * in, -3.0f, 3.0f);
        const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x00400000u,
                                    0x80000001u, 0x7fc00001u, 0xff800000u};
        for (size_t i = 0; i < 7 && i < (size_t)out * in; i++)
            W[(i * 7919) % ((size_t)out * in)] = from_bits(special[i]);
        const size_t n = lt_bf16w_elems(out, in);
        uint16_t *want = malloc(n * 2), *got = malloc(n * 2);
        lt_bf16w_pack(want, W, out, in);
        const lt_cpu_isa isas[2] = {LT_CPU_ISA_AVX512_BF16, LT_CPU_ISA_GENERIC};
        for (int ii = 0; ii < 2; ii++) {
            const lt_cpu_kernels *impl = lt_cpu_kernels_get(isas[ii], NULL, 0);
            if (!impl) continue; /* no AVX512_BF16 on this CPU */
            memset(got, 0xab, n * 2);
            lt_bf16_pack(impl, got, W, out, in);
            ck_assert_msg(!memcmp(got, want, n * 2), "%s pack %d x %d differs from lt_bf16w_pack", impl->isa, out, in);
        }
        free(W);
        free(want);
        free(got);
    }
}
END_TEST

/* ---- (c) backend ops ---------------------------------------------------------------------------- */

START_TEST(test_backend_ops) {
    lt_backend *be = NULL;
    char msg[256];
    ck_assert_int_eq(lt_cpu_backend_create(3, &be, msg, sizeof msg), LT_OK);
    const int N = 45, in = 77, out = 130;
    tu_rng_seed(11);
    float *W = tu_frand((size_t)out * in, -1.0f, 1.0f), *x = tu_frand((size_t)N * in, -1.0f, 1.0f);
    float *dy = tu_frand((size_t)N * out, -1.0f, 1.0f);
    size_t bytes = be->ops->bf16_weight_bytes(be, out, in);
    ck_assert_uint_eq(bytes, lt_ref_bf16_weight_bytes(out, in));
    ck_assert_uint_le(bytes, (size_t)(out + 15) * (in + 1) * 2);
    void *Wp = be->ops->alloc(be, bytes), *Wr = malloc(bytes);
    be->ops->bf16_weight_pack(be, Wp, W, out, in);
    lt_ref_bf16_weight_pack(Wr, W, out, in);
    ck_assert_msg(!memcmp(Wp, Wr, bytes), "backend and reference packing differ");
    float *y = malloc((size_t)N * out * 4), *yr = malloc((size_t)N * out * 4);
    float *dx = tu_frand((size_t)N * in, -1.0f, 1.0f), *dxr = malloc((size_t)N * in * 4),
          *acc = malloc((size_t)N * in * 4);
    memcpy(dxr, dx, (size_t)N * in * 4);
    memcpy(acc, dx, (size_t)N * in * 4);
    be->ops->gemm_bf16_forward(be, y, x, Wp, N, in, out);
    lt_ref_gemm_bf16_forward(yr, x, Wr, N, in, out);
    be->ops->gemm_bf16_backward(be, dx, dy, Wp, N, in, out, 1);
    lt_ref_gemm_bf16_backward(dxr, dy, Wr, N, in, out, 1);
    ck_assert_int_eq(be->ops->sync(be), LT_OK);
    ck_assert_double_le(err_ratio(0, y, x, NULL, W, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(0, yr, x, NULL, W, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(1, dx, dy, acc, W, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(1, dxr, dy, acc, W, N, in, out), 1.0);
    be->ops->free(be, Wp);
    free(Wr);
    free(W);
    free(x);
    free(dy);
    free(y);
    free(yr);
    free(dx);
    free(dxr);
    free(acc);
    lt_backend_destroy(be);
}
END_TEST

/* ---- (e) 4-bit weights computed in bf16 ----------------------------------------------------------- */

/* W (out,in) random, quantized: *q (free with lt_qtensor_free), *Wd its dequantized f32 values */
static lt_qtensor *quant_w(int out, int in, lt_quant_format f, int bs, int dq, float **Wd) {
    float *W = tu_frand((size_t)out * in, -1.0f, 1.0f);
    for (int o = 0; o < out; o++) /* rows of different scales: the absmax of each block matters */
        for (int i = 0; i < in; i++) W[(size_t)o * in + i] *= 0.01f + (float)((o * 7 + i / 64) % 11);
    lt_quant_params p = {.size = sizeof p, .format = f, .blocksize = bs, .double_quant = dq};
    const int64_t shape[2] = {out, in};
    lt_qtensor *q = NULL;
    lt_error err = {0};
    ck_assert_msg(lt_qtensor_quantize_ex(W, shape, 2, &p, NULL, &q, &err) == LT_OK, "%s", err.msg);
    *Wd = malloc((size_t)out * in * sizeof **Wd);
    ck_assert_int_eq(lt_qtensor_dequantize(q, *Wd, (size_t)out * in), LT_OK);
    free(W);
    return q;
}

static const int q4_shapes[][4] = {
    /* N, in, out, blocksize: in % blocksize == 0 and in % 16 == 0 take the AVX-512 packers */
    {1, 64, 1, 64},    {3, 64, 17, 64}, {9, 128, 49, 64},  {37, 256, 53, 128}, {65, 512, 193, 64},
    {16, 320, 31, 64}, {8, 96, 48, 64}, {5, 1376, 20, 64}, {19, 64, 1376, 64}, {7, 48, 33, 64},
    {4, 2, 3, 64},     {6, 33, 47, 64}, {3, 80, 21, 128},  {2, 4096, 3, 4096}, {130, 192, 260, 64},
};
#define N_Q4 ((int)(sizeof q4_shapes / sizeof *q4_shapes))

static void check_q4(const lt_cpu_kernels *impl, int N, int in, int out, int bs) {
    for (int v = 0; v < 4; v++) { /* NF4 / FP4, with and without double quantization */
        tu_rng_seed((uint64_t)(N * 1000003 + in * 1009 + out * 7 + v));
        float *Wd;
        lt_qtensor *qt = quant_w(out, in, v & 1 ? LT_QUANT_FP4 : LT_QUANT_NF4, bs, v >> 1, &Wd);
        const lt_qdesc q = lt_qtensor_desc(qt);
        float *x = tu_frand((size_t)N * in, -2.0f, 2.0f), *dy = tu_frand((size_t)N * out, -0.5f, 0.5f),
              *acc = tu_frand((size_t)N * in, -3.0f, 3.0f);
        float *y1 = malloc((size_t)N * out * sizeof *y1), *y3 = malloc((size_t)N * out * sizeof *y3);
        float *d1 = malloc((size_t)N * in * sizeof *d1), *d3 = malloc((size_t)N * in * sizeof *d3);
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            for (size_t i = 0; i < (size_t)N * out; i++) y1[i] = y3[i] = NAN;
            for (size_t i = 0; i < (size_t)N * in; i++) d1[i] = d3[i] = accumulate ? acc[i] : NAN;
            lt_gemm_q4_forward(impl, 1, y1, x, &q, N, in, out);
            lt_gemm_q4_forward(impl, 3, y3, x, &q, N, in, out);
            lt_gemm_q4_backward(impl, 1, d1, dy, &q, N, in, out, accumulate);
            lt_gemm_q4_backward(impl, 3, d3, dy, &q, N, in, out, accumulate);
            double ef = err_ratio(0, y1, x, NULL, Wd, N, in, out);
            double eb = err_ratio(1, d1, dy, accumulate ? acc : NULL, Wd, N, in, out);
            ck_assert_msg(ef <= 1.0, "%s q4 variant %d forward N=%d in=%d out=%d bs=%d: error %.3g x the bound",
                          impl->isa, v, N, in, out, bs, ef);
            ck_assert_msg(eb <= 1.0, "%s q4 variant %d backward N=%d in=%d out=%d bs=%d acc=%d: %.3g x the bound",
                          impl->isa, v, N, in, out, bs, accumulate, eb);
            ck_assert_msg(!memcmp(y1, y3, (size_t)N * out * sizeof *y1), "q4 forward depends on the thread count");
            ck_assert_msg(!memcmp(d1, d3, (size_t)N * in * sizeof *d1), "q4 backward depends on the thread count");
        }
        /* the check can fail: one code changed (the last element of the first row) is caught */
        qt->data[(in - 1) / 2] ^= (in - 1) % 2 ? 0x03 : 0x30;
        lt_gemm_q4_forward(impl, 1, y1, x, &q, N, in, out);
        lt_gemm_q4_backward(impl, 1, d1, dy, &q, N, in, out, 0);
        ck_assert_msg(err_ratio(0, y1, x, NULL, Wd, N, in, out) > 1.0 ||
                          err_ratio(1, d1, dy, NULL, Wd, N, in, out) > 1.0,
                      "a weight with a changed code passed the check");
        lt_qtensor_free(qt);
        free(Wd);
        free(x);
        free(dy);
        free(acc);
        free(y1);
        free(y3);
        free(d1);
        free(d3);
    }
}

START_TEST(test_q4_portable) {
    check_q4(lt_cpu_kernels_get(LT_CPU_ISA_GENERIC, NULL, 0), q4_shapes[_i][0], q4_shapes[_i][1], q4_shapes[_i][2],
             q4_shapes[_i][3]);
}
END_TEST

START_TEST(test_q4_avx512) {
    const lt_cpu_kernels *k = lt_cpu_kernels_get(LT_CPU_ISA_AVX512_BF16, NULL, 0);
    if (!k) return; /* no AVX512_BF16 on this CPU */
    check_q4(k, q4_shapes[_i][0], q4_shapes[_i][1], q4_shapes[_i][2], q4_shapes[_i][3]);
}
END_TEST

/* the backend's ops (gemm_q4_*, embedding_forward_bf16) against the reference ops */
START_TEST(test_q4_backend_ops) {
    lt_backend *be = NULL;
    char msg[256];
    ck_assert_int_eq(lt_cpu_backend_create(3, &be, msg, sizeof msg), LT_OK);
    const int N = 21, in = 192, out = 70;
    tu_rng_seed(5);
    float *Wd;
    lt_qtensor *qt = quant_w(out, in, LT_QUANT_NF4, 64, 1, &Wd);
    const lt_qdesc q = lt_qtensor_desc(qt);
    float *x = tu_frand((size_t)N * in, -1.0f, 1.0f), *dy = tu_frand((size_t)N * out, -1.0f, 1.0f),
          *acc = tu_frand((size_t)N * in, -1.0f, 1.0f);
    float *y = malloc((size_t)N * out * 4), *yr = malloc((size_t)N * out * 4);
    float *dx = malloc((size_t)N * in * 4), *dxr = malloc((size_t)N * in * 4);
    memcpy(dx, acc, (size_t)N * in * 4);
    memcpy(dxr, acc, (size_t)N * in * 4);
    be->ops->gemm_q4_forward(be, y, x, &q, N, in, out, NULL, 0);
    be->ops->gemm_q4_backward(be, dx, dy, &q, N, in, out, 1, NULL, 0);
    lt_ref_gemm_q4_forward(yr, x, &q, N, in, out);
    lt_ref_gemm_q4_backward(dxr, dy, &q, N, in, out, 1);
    ck_assert_int_eq(be->ops->sync(be), LT_OK);
    ck_assert_double_le(err_ratio(0, y, x, NULL, Wd, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(0, yr, x, NULL, Wd, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(1, dx, dy, acc, Wd, N, in, out), 1.0);
    ck_assert_double_le(err_ratio(1, dxr, dy, acc, Wd, N, in, out), 1.0);
    /* a weight of another shape is an internal error reported by sync, nothing written */
    be->ops->gemm_q4_forward(be, y, x, &q, N, in, out + 1, NULL, 0);
    ck_assert_int_eq(be->ops->sync(be), LT_ERR_INTERNAL);
    /* the bf16 embedding table: rows of the packed layout, as the reference reads them */
    const int V = 37, C = 45;
    float *table = tu_frand((size_t)V * C, -1.0f, 1.0f), *e = malloc((size_t)N * C * 4),
          *er = malloc((size_t)N * C * 4);
    void *tp = be->ops->alloc(be, be->ops->bf16_weight_bytes(be, V, C));
    be->ops->bf16_weight_pack(be, tp, table, V, C);
    int32_t ids[21];
    for (int i = 0; i < N; i++) ids[i] = (i * 11 + 3) % V;
    ids[0] = V - 1;
    be->ops->embedding_forward_bf16(be, e, ids, tp, N, C);
    lt_ref_embedding_forward_bf16(er, ids, tp, N, C);
    ck_assert_int_eq(be->ops->sync(be), LT_OK);
    ck_assert_mem_eq(e, er, (size_t)N * C * 4);
    for (int c = 0; c < C; c++) ck_assert(e[c] == r16(table[(size_t)(V - 1) * C + c]));
    be->ops->free(be, tp);
    free(table);
    free(e);
    free(er);
    lt_qtensor_free(qt);
    free(Wd);
    free(x);
    free(dy);
    free(acc);
    free(y);
    free(yr);
    free(dx);
    free(dxr);
    lt_backend_destroy(be);
}
END_TEST

/* ---- (d) models ---------------------------------------------------------------------------------- */

static lt_model *load(lt_context *ctx, const char *name, int base_dtype) {
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = base_dtype;
    return tu_load_model(ctx, name, &mp);
}

static const char *const models[] = {"llama-basic", "llama-gqa", "llama-tied", "llama-headdim", "llama-bf16"};

/*
 * Logits of the bf16-base model vs the f32 model, same adapter (B non-zero, so LoRA contributes).
 * Tolerance: RMS of the difference <= 2^-6 x RMS of the f32 logits, max <= 2^-4 x max |logit|.
 * Every projection input and weight carries a relative rounding error up to 2^-9 (RMS ~2^-9/sqrt(3)
 * each), 7 projections per layer and the layers compound it. Measured on these models: RMS ratios
 * 0.007-0.009, max ratios ~0.01; a wrong kernel (a transposed or unrounded weight) gives O(1).
 */
START_TEST(test_logits_vs_f32) {
    lt_context *ctx = tu_context();
    lt_model *mf = load(ctx, models[_i], LT_BASE_F32), *mb = load(ctx, models[_i], LT_BASE_BF16);
    lt_model_info fi = {.size = sizeof fi}, bi = {.size = sizeof bi};
    ck_assert_int_eq(lt_model_get_info(mf, &fi), LT_OK);
    ck_assert_int_eq(lt_model_get_info(mb, &bi), LT_OK);
    ck_assert_int_eq(fi.n_params, bi.n_params);
    /* the 7 projections, the embedding table and an untied LM head take half the bytes (up to the padding
     * of the packed layout); a tied head is the bf16 table itself */
    int64_t proj = 0, head = fi.vocab_size * fi.hidden_size;
    {
        const int64_t H = fi.hidden_size, I = fi.intermediate_size, QD = fi.n_heads * fi.head_dim,
                      KD = fi.n_kv_heads * fi.head_dim;
        proj = fi.n_layers * (H * QD + 2 * H * KD + QD * H + 3 * H * I);
    }
    const int64_t expect = fi.weight_bytes - proj * 2 - 2 * head - (fi.tied_embeddings ? 0 : 2 * head);
    ck_assert_int_le(bi.weight_bytes, expect + (fi.n_layers * 7 + 2) * 16 * 1024);
    ck_assert_int_ge(bi.weight_bytes, expect);

    const int B = 2, T = 24, V = (int)fi.vocab_size;
    int32_t ids[2 * 24];
    tu_fill_ids(ids, B * T, V, 42 + (uint64_t)_i);
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = B;
    b.seq_len = T;
    b.input_ids = ids;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.alpha = 8;
    ap.targets = LT_TARGET_ALL;
    ap.init = LT_INIT_GAUSSIAN; /* B != 0 */
    for (int with_adapter = 0; with_adapter < 2; with_adapter++) {
        lt_adapter *af = NULL, *ab = NULL;
        if (with_adapter) {
            ap.seed = 3;
            ck_assert_int_eq(lt_adapter_create(mf, &ap, &af), LT_OK);
            ck_assert_int_eq(lt_adapter_create(mb, &ap, &ab), LT_OK);
        }
        size_t n = (size_t)B * T * V;
        float *lf = malloc(n * 4), *lb = malloc(n * 4);
        ck_assert_msg(lt_model_logits(mf, af, &b, lf, n) == LT_OK, "%s", lt_model_last_error(mf));
        ck_assert_msg(lt_model_logits(mb, ab, &b, lb, n) == LT_OK, "%s", lt_model_last_error(mb));
        double se = 0, sr = 0, emax = 0, rmax = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)lb[i] - lf[i]);
            se += d * d;
            sr += (double)lf[i] * lf[i];
            if (!(d <= emax)) emax = d;
            if (fabs(lf[i]) > rmax) rmax = fabs(lf[i]);
        }
        double rms_ratio = sqrt(se / sr), max_ratio = emax / rmax;
        ck_assert_msg(rms_ratio <= 1.0 / 64 && max_ratio <= 1.0 / 16,
                      "%s (adapter %d): bf16 vs f32 logits: RMS ratio %.3g (tol %.3g), max ratio %.3g (tol %.3g)",
                      models[_i], with_adapter, rms_ratio, 1.0 / 64, max_ratio, 1.0 / 16);
        /* and bf16 is really used: the logits are not those of f32 */
        ck_assert_msg(rms_ratio > 1e-6, "%s: bf16 logits identical to f32 (%.3g)", models[_i], rms_ratio);
        if (with_adapter)
            fprintf(stderr, "test_gemm_bf16: %s bf16 vs f32 logits: RMS ratio %.3g, max ratio %.3g\n", models[_i],
                    rms_ratio, max_ratio);
        int32_t gl[2] = {3, 7}; /* generation multiplies by the same bf16 weights as the forward */
        tu_check_greedy(mb, ab, ids, gl, 2, 5, models[_i]);
        free(lf);
        free(lb);
        lt_adapter_free(af);
        lt_adapter_free(ab);
    }
    lt_model_free(mf);
    lt_model_free(mb);
    lt_context_free(ctx);
}
END_TEST

/* Train the same adapter on the same data with each base: bf16 learns (loss falls) and follows f32. */
static double train_losses(lt_context *ctx, int base_dtype, double *first) {
    lt_model *m = load(ctx, "llama-basic", base_dtype);
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(m, &info);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 8;
    ap.alpha = 16;
    ap.targets = LT_TARGET_ALL;
    ap.seed = 9;
    lt_adapter *a = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 1e-2f;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    int32_t ids[4 * 32];
    tu_fill_ids(ids, 4 * 32, (int)info.vocab_size, 77);
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = 4;
    b.seq_len = 32;
    b.input_ids = ids;
    double last = 0;
    for (int step = 0; step < 30; step++) {
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
        if (step == 0) *first = r.loss;
        last = r.loss;
    }
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    return last;
}

START_TEST(test_training_learns) {
    lt_context *ctx = tu_context();
    double f0, b0;
    double f = train_losses(ctx, LT_BASE_F32, &f0), bl = train_losses(ctx, LT_BASE_BF16, &b0);
    fprintf(stderr, "test_gemm_bf16: 30 steps on one batch: f32 loss %.4f -> %.4f, bf16 %.4f -> %.4f\n", f0, f, b0, bl);
    ck_assert_msg(fabs(b0 - f0) <= 0.01 * f0, "first loss: bf16 %.5f vs f32 %.5f (tol 1%%)", b0, f0);
    ck_assert_msg(bl < 0.5 * b0, "bf16 training did not learn: %.4f -> %.4f (want < half)", b0, bl);
    ck_assert_msg(fabs(bl - f) <= 0.05 * f0, "after 30 steps: bf16 %.4f vs f32 %.4f (tol 5%% of the first loss)", bl,
                  f);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_refusals) {
    lt_context *ctx = tu_context();
    lt_model *m = load(ctx, "llama-basic", LT_BASE_BF16);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 2;
    lt_adapter *a = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    ck_assert_int_eq(lt_adapter_merge(a), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_adapter_last_error(a), "bf16"));
    char dir[256];
    tu_tempdir(dir, sizeof dir);
    ck_assert_int_eq(lt_adapter_export_merged(a, dir, 0), LT_ERR_UNSUPPORTED);
    ck_assert_int_eq(lt_model_save(m, dir), LT_ERR_UNSUPPORTED);
    rmdir(dir);
    lt_adapter_free(a);
    lt_model_free(m);
    /* a base_dtype this library does not know */
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    ck_assert_int_eq(mp.base_dtype, LT_BASE_F32);
    mp.base_dtype = 7;
    char mdir[1024];
    snprintf(mdir, sizeof mdir, "%s/models/llama-basic", LT_TEST_DATA_DIR);
    lt_model *bad = NULL;
    ck_assert_int_eq(lt_model_load(ctx, mdir, &mp, &bad), LT_ERR_ARGUMENT);
    ck_assert_ptr_null(bad);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "base_dtype"));
    lt_context_free(ctx);
}
END_TEST

/* `loratune eval --base-dtype bf16` runs and reports a loss close to f32's. */
START_TEST(test_cli) {
    char cmd[2048];
    int st;
    snprintf(cmd, sizeof cmd, "%s eval --model %s/models/llama-basic --data %s/models/llama-basic/data.jsonl --json",
             LT_CLI, LT_TEST_DATA_DIR, LT_TEST_DATA_DIR);
    char *f = tu_run(cmd, &st);
    ck_assert_msg(st == 0, "%s", cmd);
    strcat(cmd, " --base-dtype bf16");
    char *b = tu_run(cmd, &st);
    ck_assert_msg(st == 0, "%s", cmd);
    const char *pf = strstr(f, "\"loss\""), *pb = strstr(b, "\"loss\"");
    ck_assert_msg(pf && pb, "no loss in: %s / %s", f, b);
    double lf = atof(strchr(pf, ':') + 1), lb = atof(strchr(pb, ':') + 1);
    ck_assert_msg(lf > 0 && fabs(lb - lf) <= 0.01 * lf, "eval loss bf16 %.6f vs f32 %.6f (tol 1%%)", lb, lf);
    ck_assert_msg(lb != lf, "bf16 eval loss identical to f32: was bf16 used?");
    free(f);
    free(b);
    snprintf(cmd, sizeof cmd, "%s eval --model %s/models/llama-basic --data x.jsonl --base-dtype f16", LT_CLI,
             LT_TEST_DATA_DIR);
    free(tu_run(cmd, &st));
    ck_assert_int_eq(st, 2);
    snprintf(cmd, sizeof cmd, "%s train --model x --data y --out z --base-dtype fp8", LT_CLI);
    free(tu_run(cmd, &st));
    ck_assert_int_eq(st, 2);
    /* a short `loratune train --base-dtype bf16` writes an adapter */
    char dir[256], path[512];
    tu_tempdir(dir, sizeof dir);
    snprintf(cmd, sizeof cmd,
             "%s train --model %s/models/llama-basic --data %s/models/llama-basic/data.jsonl "
             "--out %s/ad --steps 3 --batch 2 --seq 32 --threads 2 --quiet --base-dtype bf16",
             LT_CLI, LT_TEST_DATA_DIR, LT_TEST_DATA_DIR, dir);
    free(tu_run(cmd, &st));
    ck_assert_msg(st == 0, "%s", cmd);
    snprintf(path, sizeof path, "%s/ad/adapter/adapter_model.safetensors", dir);
    ck_assert_msg(access(path, F_OK) == 0, "%s missing", path);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

Suite *bf16_suite(void) {
    Suite *s = suite_create("gemm_bf16");
    TCase *k = tcase_create("kernels");
    tcase_set_timeout(k, 600);
    tcase_add_loop_test(k, test_kernel_portable, 0, N_SHAPES);
    tcase_add_loop_test(k, test_kernel_avx512, 0, N_SHAPES);
    tcase_add_test(k, test_paths_agree);
    tcase_add_test(k, test_rounding);
    tcase_add_test(k, test_pack);
    tcase_add_test(k, test_backend_ops);
    tcase_add_loop_test(k, test_q4_portable, 0, N_Q4);
    tcase_add_loop_test(k, test_q4_avx512, 0, N_Q4);
    tcase_add_test(k, test_q4_backend_ops);
    suite_add_tcase(s, k);
    TCase *m = tcase_create("models");
    tcase_set_timeout(m, 600);
    tcase_add_loop_test(m, test_logits_vs_f32, 0, (int)(sizeof models / sizeof *models));
    tcase_add_test(m, test_training_learns);
    tcase_add_test(m, test_refusals);
    tcase_add_test(m, test_cli);
    suite_add_tcase(s, m);
    return s;
}

TU_MAIN(bf16_suite)
