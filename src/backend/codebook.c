/*
 * codebook.c - bitsandbytes' 8-bit dynamic maps, built once per process (see codebook.h).
 * Every value is computed in fp32 in the order bitsandbytes computes it (this file is built with
 * -ffp-contract=off: no fused multiply-adds besides the explicit fmaf of torch.linspace).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "backend/codebook.h"

static float code8_table[256];
static pthread_once_t code8_once = PTHREAD_ONCE_INIT;
static float code8u_table[256];
static pthread_once_t code8u_once = PTHREAD_ONCE_INIT;

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* torch.linspace(start, end, steps) in fp32 as its CPU kernel computes it: the first half counts up
 * from start, the second half down from end, each value one fused multiply-add of the fp32 step
 * (checked against torch through the nested quant map goldens). */
static void linspace_f32(float start, float end, int steps, float *out) {
    const float step = (end - start) / (float)(steps - 1);
    const int halfway = steps / 2;
    for (int i = 0; i < steps; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

/* create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for i in 0..6, the midpoints of
 * linspace(0.1, 1, k + 1) times 10^(i-6), with k = 2^i and both signs (signed: entry 0 is -0.99297), or
 * k = 2^(i+1) and positive only (unsigned, bitsandbytes' map for Adam's second moment); then 0 and 1;
 * sorted. */
static void dynamic_map_init(float *table, int is_signed) {
    int n = 0;
    float b[129];
    for (int i = 0; i < 7; i++) {
        const int k = (is_signed ? (1 << i) : (1 << (i + 1))) + 1;
        linspace_f32(0.1f, 1.0f, k, b);
        const float scale = (float)pow(10.0, (double)(i - 6));
        for (int j = 0; j + 1 < k; j++) {
            const float mean = (b[j] + b[j + 1]) / 2.0f;
            table[n++] = scale * mean;
            if (is_signed) table[n++] = -scale * mean;
        }
    }
    table[n++] = 0.0f;
    table[n++] = 1.0f;
    qsort(table, (size_t)n, sizeof(float), cmp_float);
}

static void code8_init(void) { dynamic_map_init(code8_table, 1); }
static void code8u_init(void) { dynamic_map_init(code8u_table, 0); }

const float *lt_quant_code8(void) {
    pthread_once(&code8_once, code8_init);
    return code8_table;
}

const float *lt_quant_code8u(void) {
    pthread_once(&code8u_once, code8u_init);
    return code8u_table;
}

const float *lt_quant_code4(lt_quant_format f) {
    return f == LT_QUANT_NF4 ? lt_nf4_code : f == LT_QUANT_FP4 ? lt_fp4_code : NULL;
}
