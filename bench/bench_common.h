/*
 * bench_common.h - what the public-API C benchmarks share: the bench-s model (docs/spec/performance.md),
 * a monotonic clock, medians, and CHECK (print the message and exit on a failed call). Header-only.
 */
#ifndef LT_BENCH_COMMON_H
#define LT_BENCH_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "loratune.h"

/* bench-s: Llama, vocab 32000, hidden 512, intermediate 1376, 8 layers, 8 heads / 8 kv heads */
static const char bench_s_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32000,"
    " \"hidden_size\": 512, \"intermediate_size\": 1376, \"num_hidden_layers\": 8,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"rope_theta\": 500000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 2048, \"tie_word_embeddings\": false,"
    " \"eos_token_id\": 2}";

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int bench_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the median of n values (sorts them) */
static inline double bench_median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, bench_cmp);
    return x[n / 2];
}

#define CHECK(call, h)                             \
    do {                                           \
        if ((call) != LT_OK) {                     \
            fprintf(stderr, "%s: %s\n", #call, h); \
            exit(1);                               \
        }                                          \
    } while (0)

#endif
