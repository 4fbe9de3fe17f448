/*
 * test_quant.c - quantized tensors: bit-exact against bitsandbytes (goldens from
 * tests/python/make_quant_goldens.py), the public lt_qtensor API, bad inputs.
 */
#include <float.h>
#include <stdint.h>

#include "formats/quant.h"
#include "formats/safetensors.h"
#include "test_util.h"

#define GOLDEN_DIR LT_TEST_DATA_DIR "/quant"

/* the f32 absmax of 4-bit block b of x as bitsandbytes computes it (before double quantization) */
static float raw_absmax(const lt_st_tensor *x, const lt_qtensor *q, int64_t b) {
    const float *v = x->data;
    int64_t s = b * q->blocksize, e = s + q->blocksize < q->numel ? s + q->blocksize : q->numel;
    float am = 0;
    for (int64_t i = s; i < e; i++) am = fmaxf(am, fabsf(v[i]));
    return e - s == q->blocksize ? am : fmaxf(am, 1e-38f);
}

static int n_cases;
static char cases[128][64];

static void load_cases(void) {
    FILE *f = fopen(GOLDEN_DIR "/cases.txt", "r");
    ck_assert_msg(f != NULL, "missing %s/cases.txt: run tests/python/make_quant_goldens.py", GOLDEN_DIR);
    n_cases = 0;
    while (n_cases < 128 && fscanf(f, "%63s", cases[n_cases]) == 1) n_cases++;
    fclose(f);
    ck_assert_int_gt(n_cases, 40);
}

/* every golden case: same codes, statistics, maps and dequantized values (f32 and bf16) */
START_TEST(test_goldens_bit_exact) {
    load_cases();
    int offset_exact = 0, n_dq = 0;
    int64_t n_search_diff = 0, n_codes = 0;
    for (int c = 0; c < n_cases; c++) {
        char path[8400];
        snprintf(path, sizeof path, "%s/%s.safetensors", GOLDEN_DIR, cases[c]);
        lt_st_file *f;
        lt_error err = {0};
        ck_assert_msg(lt_st_open(path, 0, &f, &err) == LT_OK, "%s", err.msg);
        lt_quant_params p;
        lt_quant_params_init(&p, sizeof p);
        ck_assert_int_eq(lt_quant_format_from_name(lt_st_metadata(f, "format"), &p.format), 0);
        p.blocksize = atoi(lt_st_metadata(f, "blocksize"));
        p.double_quant = atoi(lt_st_metadata(f, "double_quant"));
        const lt_st_tensor *x = tu_st_need(f, "x");
        const lt_st_tensor *offt = lt_st_find(f, "offset");
        const float *forced = offt ? (const float *)offt->data : NULL;
        lt_qtensor *q;
        ck_assert_msg(lt_qtensor_quantize_ex(x->data, x->shape, x->ndim, &p, forced, &q, &err) == LT_OK, "%s: %s",
                      cases[c], err.msg);
        const lt_st_tensor *data = tu_st_need(f, "data"), *absmax = tu_st_need(f, "absmax");
        ck_assert_uint_eq(lt_qtensor_data_bytes(q), data->nbytes);
        tu_expect_bytes(cases[c], "packed codes", q->data, data->data, data->nbytes);
        if (q->double_quant) {
            n_dq++;
            ck_assert_uint_eq((uint64_t)q->n_blocks, absmax->nbytes);
            /* bitsandbytes' CPU 8-bit kernel finds the code with an approximate search (BinSearch
             * "Direct2") that now and then returns the neighbour of the nearest entry; its reference
             * and CUDA kernels return the nearest, as we do. Every other code must be equal, and
             * where one differs ours must be the nearest and theirs adjacent. */
            const uint8_t *their_codes = absmax->data;
            const float *map = lt_quant_code8();
            for (int64_t b = 0; b < q->n_blocks; b++) {
                if (q->qabsmax[b] == their_codes[b]) continue;
                n_search_diff++;
                ck_assert_msg(abs((int)q->qabsmax[b] - (int)their_codes[b]) == 1,
                              "%s: absmax code %lld: ours %d, theirs %d", cases[c], (long long)b, q->qabsmax[b],
                              their_codes[b]);
                /* the value that was coded: the raw absmax minus the offset, scaled by the block's scale */
                float v = (raw_absmax(x, q, b) - q->offset) * (1.0f / q->absmax2[b / 256]);
                ck_assert_msg(fabsf(v - map[q->qabsmax[b]]) <= fabsf(v - map[their_codes[b]]),
                              "%s: absmax code %lld: ours %d is not nearer than theirs %d to %.9g", cases[c],
                              (long long)b, q->qabsmax[b], their_codes[b], v);
            }
            n_codes += q->n_blocks;
            memcpy(q->qabsmax, their_codes, (size_t)q->n_blocks); /* dequantization is checked on their codes */
            const lt_st_tensor *a2 = tu_st_need(f, "nested_absmax"), *map8 = tu_st_need(f, "nested_quant_map");
            ck_assert_uint_eq((uint64_t)q->n_blocks2 * 4, a2->nbytes);
            tu_expect_bytes(cases[c], "nested absmax", q->absmax2, a2->data, a2->nbytes);
            tu_expect_bytes(cases[c], "nested quant map", lt_quant_code8(), map8->data, 1024);
            /* our own offset: torch's fp32 cascade mean, bit for bit below 32768 blocks */
            lt_qtensor *q2;
            ck_assert(lt_qtensor_quantize_ex(x->data, x->shape, x->ndim, &p, NULL, &q2, &err) == LT_OK);
            float theirs = *forced;
            ck_assert_msg(q2->offset == theirs || q->n_blocks >= 32768, "%s: offset %.9g vs bitsandbytes %.9g",
                          cases[c], q2->offset, theirs);
            offset_exact += q2->offset == theirs;
            lt_qtensor_free(q2);
        } else {
            ck_assert_uint_eq((uint64_t)q->n_blocks * 4, absmax->nbytes);
            tu_expect_bytes(cases[c], "absmax", q->absmax, absmax->data, absmax->nbytes);
        }
        if (q->format != LT_QUANT_INT8)
            tu_expect_bytes(cases[c], "quant map", lt_quant_code4(q->format), tu_st_need(f, "quant_map")->data, 64);

        const lt_st_tensor *deq = tu_st_need(f, "deq");
        float *out = malloc((size_t)q->numel * sizeof *out);
        ck_assert_int_eq(lt_qtensor_dequantize(q, out, (size_t)q->numel), LT_OK);
        tu_expect_bytes(cases[c], "dequantized f32", out, deq->data, deq->nbytes);
        const lt_st_tensor *deq16 = lt_st_find(f, "deq_bf16");
        if (deq16) {
            uint16_t *o16 = malloc((size_t)q->numel * 2);
            ck_assert_int_eq(lt_qtensor_dequantize_bf16(q, o16, (size_t)q->numel), LT_OK);
            tu_expect_bytes(cases[c], "dequantized bf16", o16, deq16->data, deq16->nbytes);
            free(o16);
        }
        /* the row-range dequantizer of the backends agrees with the whole-tensor one */
        lt_qdesc d = lt_qtensor_desc(q);
        if (d.rows > 2) {
            float *part = malloc((size_t)d.cols * 2 * sizeof *part);
            lt_qdesc_dequantize_range(&d, part, d.cols, 3 * d.cols);
            tu_expect_bytes(cases[c], "row range", part, out + d.cols, (size_t)d.cols * 2 * 4);
            free(part);
        }
        free(out);
        lt_qtensor_free(q);
        lt_st_close(f);
    }
    fprintf(stderr,
            "test_quant: %d cases bit-exact; our mean offset equals torch's in %d of %d double-quant cases; "
            "%lld of %lld nested codes are bitsandbytes-CPU search misses (ours nearest)\n",
            n_cases, offset_exact, n_dq, (long long)n_search_diff, (long long)n_codes);
    ck_assert_msg(n_search_diff * 200 <= n_codes, "too many nested code differences");
}
END_TEST

/* the public API: info, parts, memory per parameter, and a round trip error bound */
START_TEST(test_public_api) {
    const int64_t shape[2] = {256, 512};
    const size_t n = 256 * 512;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = ((float)(s >> 40) / 16777216.0f - 0.5f) * 0.1f;
    }
    lt_quant_params p;
    lt_quant_params_init(&p, sizeof p);
    ck_assert_int_eq(p.format, LT_QUANT_NF4);
    ck_assert_int_eq(p.blocksize, 64);
    ck_assert_int_eq(p.double_quant, 1);
    lt_qtensor *q;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 2, &p, &q), LT_OK);
    lt_qtensor_info info = {.size = sizeof info};
    ck_assert_int_eq(lt_qtensor_get_info(q, &info), LT_OK);
    ck_assert_int_eq(info.numel, (int64_t)n);
    ck_assert_int_eq(info.shape[1], 512);
    ck_assert_int_eq(info.n_blocks, (int64_t)n / 64);
    double bits = 8.0 * (double)info.bytes / (double)n;
    ck_assert_msg(bits > 4.12 && bits < 4.14, "NF4+DQ bits/param %.4f, expected ~4.127", bits);
    const void *part;
    size_t bytes;
    ck_assert_int_eq(lt_qtensor_part(q, LT_QPART_DATA, &part, &bytes), LT_OK);
    ck_assert_uint_eq(bytes, n / 2);
    ck_assert_int_eq(lt_qtensor_part(q, LT_QPART_NESTED_QUANT_MAP, &part, &bytes), LT_OK);
    ck_assert_uint_eq(bytes, 1024);
    ck_assert_int_eq(lt_qtensor_dequantize(q, y, n), LT_OK);
    /* NF4 error: at most half the largest code gap (0.303, between 0.72 and 1) of the block absmax
     * (<= 0.05), plus the 8-bit absmax error */
    for (size_t i = 0; i < n; i++) ck_assert_float_le(fabsf(x[i] - y[i]), 0.05f * 0.152f + 1e-4f);
    ck_assert_int_eq(lt_qtensor_dequantize(q, y, n - 1), LT_ERR_ARGUMENT);
    ck_assert_str_ne(lt_qtensor_last_error(q), "");
    lt_qtensor_free(q);

    p.double_quant = 0;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 2, &p, &q), LT_OK);
    ck_assert_int_eq(lt_qtensor_part(q, LT_QPART_NESTED_ABSMAX, &part, &bytes), LT_ERR_MISSING);
    ck_assert_int_eq(lt_qtensor_get_info(q, &info), LT_OK);
    ck_assert_int_eq(info.bytes, (int64_t)(n / 2 + n / 64 * 4));
    lt_qtensor_free(q);
    free(x);
    free(y);
}
END_TEST

START_TEST(test_bad_inputs) {
    float x[130];
    for (int i = 0; i < 130; i++) x[i] = (float)i;
    int64_t shape[1] = {130};
    lt_qtensor *q = (lt_qtensor *)1;
    lt_quant_params p;
    lt_quant_params_init(&p, sizeof p);
    x[77] = NAN;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_NUMERIC);
    ck_assert_ptr_null(q);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "NaN"));
    x[77] = INFINITY;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "infinite"));
    x[77] = 1;
    p.blocksize = 96;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "blocksize"));
    p.blocksize = 8192;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_ARGUMENT);
    p.blocksize = 64;
    p.format = (lt_quant_format)9;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_ARGUMENT);
    p.format = LT_QUANT_NF4;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 0, &p, &q), LT_ERR_SHAPE);
    shape[0] = 0;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_SHAPE);
    shape[0] = 130;
    ck_assert_int_eq(lt_qtensor_quantize(NULL, shape, 1, &p, &q), LT_ERR_ARGUMENT);
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, NULL), LT_ERR_ARGUMENT);
    lt_qtensor_free(NULL);
    /* an older, smaller params struct is accepted; a larger unknown one is not */
    p.size = sizeof(size_t) + sizeof(lt_quant_format);
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_OK);
    lt_qtensor_free(q);
    p.size = sizeof p + 8;
    ck_assert_int_eq(lt_qtensor_quantize(x, shape, 1, &p, &q), LT_ERR_ARGUMENT);
}
END_TEST

int main(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("quant");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_goldens_bit_exact);
    tcase_add_test(tc, test_public_api);
    tcase_add_test(tc, test_bad_inputs);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
