/*
 * bench_sample.c - the cost of sampling one token (lt_sample_token, decoder/generate.c) against the
 * sort of the whole vocabulary that the method before it ran for every sampled token (its peer here is
 * that qsort alone, a lower bound of the old cost). Rows of logits:
 *   flat:   N(0, 0.5) over the vocabulary (what a random model gives: every token within the cut);
 *   peaked: N(0, 3) plus 8 tokens 12..26 above the mean (the shape of a trained model's logits).
 * Vocabularies of 32000 (Llama 2) and 151936 (Qwen2); temperature 1 with top_p 1, top_p 0.9 and
 * top_k 50. Alternating (sampler, sort) over the rows; microseconds per token, medians of 5 passes.
 *
 *   build/bench_sample        (built with the library: bench/CMakeLists.txt)
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"
#include "decoder/decoder.h"

static uint64_t rng = 88172645463325252ull;
static double uniform(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static double gauss(void) { return sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform()); }

static int cand_desc(const void *a, const void *b) {
    const lt_sample_cand *x = a, *y = b;
    return x->p != y->p ? (x->p < y->p ? 1 : -1) : x->id - y->id;
}

int main(void) {
    enum { ROWS = 24, PASSES = 5 };
    static const int vocab[] = {32000, 151936};
    static const struct {
        const char *name;
        int top_k;
        float top_p;
    } modes[] = {{"top_p 1", 0, 1.0f}, {"top_p 0.9", 0, 0.9f}, {"top_k 50", 50, 1.0f}};
    printf("%-8s %-7s %-10s %12s %12s %8s\n", "vocab", "rows", "sampling", "sampler us", "qsort us", "ratio");
    for (size_t vi = 0; vi < sizeof vocab / sizeof *vocab; vi++) {
        const int V = vocab[vi];
        float *lg = malloc(sizeof(float) * (size_t)ROWS * V);
        lt_sample_cand *c = malloc(sizeof *c * (size_t)V);
        for (int peaked = 0; peaked < 2; peaked++) {
            for (int r = 0; r < ROWS; r++) {
                float *row = lg + (size_t)r * V;
                for (int i = 0; i < V; i++) row[i] = (float)(gauss() * (peaked ? 3.0 : 0.5));
                for (int j = 0; peaked && j < 8; j++) row[(int)(uniform() * V)] = (float)(12 + 2 * j);
            }
            for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
                double ts[PASSES], tq[PASSES];
                volatile int32_t sink = 0;
                for (int p = 0; p < PASSES; p++) {
                    double t0 = bench_now();
                    for (int r = 0; r < ROWS; r++)
                        sink += lt_sample_token(lg + (size_t)r * V, V, 1.0f, modes[mi].top_k, modes[mi].top_p,
                                                uniform(), c);
                    double t1 = bench_now();
                    for (int r = 0; r < ROWS; r++) {
                        const float *row = lg + (size_t)r * V;
                        for (int i = 0; i < V; i++) c[i] = (lt_sample_cand){row[i], i};
                        qsort(c, (size_t)V, sizeof *c, cand_desc);
                        sink += c[0].id;
                    }
                    double t2 = bench_now();
                    ts[p] = (t1 - t0) / ROWS * 1e6;
                    tq[p] = (t2 - t1) / ROWS * 1e6;
                }
                const double s = bench_median(ts, PASSES), q = bench_median(tq, PASSES);
                printf("%-8d %-7s %-10s %12.1f %12.1f %7.1fx\n", V, peaked ? "peaked" : "flat", modes[mi].name, s, q,
                       q / s);
            }
        }
        free(lg);
        free(c);
    }
    return 0;
}
