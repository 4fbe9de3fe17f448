/*
 * bench_generate.c - generation speed (lt_generate) on the bench-s model (random weights, LoRA r=16 on
 * all 7 projections; docs/spec/performance.md): prefill and decode tokens/s. Public API only, so the
 * same file builds against another version of the library for a before / after comparison
 * (docs/BENCHMARKS.md, "Generation").
 *
 *   build/bench_generate [THREADS] [REPEATS]      (built with the library: bench/CMakeLists.txt)
 *
 * Two shapes: one row (a 128-token prompt, 64 new tokens, greedy) and a GRPO-like batch (4 prompts of
 * 32 tokens x 8 rows each = 32 rows, 64 new tokens, temperature 1). EOS is off, so every row makes
 * every token. Prefill: a call with max_new_tokens 1 (the prompt pass and one sampled token); decode:
 * (rows x 63 tokens) / (the full call - the prefill call). Calls alternate (prefill, full, prefill, ...);
 * medians of REPEATS.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "loratune.h"
#include "loratune_experimental.h" /* lt_model_create_random */

static double timed_generate(lt_model *m, lt_adapter *a, const int32_t *prompts, const int32_t *lens, int rows,
                             int new_tokens, float temperature, int32_t *out, int32_t *out_lens) {
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = new_tokens;
    gp.temperature = temperature;
    gp.eos_token_id = -1;
    gp.seed = 7;
    double t0 = bench_now();
    CHECK(lt_generate(m, a, prompts, lens, rows, &gp, out, out_lens), lt_model_last_error(m));
    return bench_now() - t0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 2 ? atoi(argv[2]) : 3;
    if (reps < 1 || reps > 64) reps = 3;
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    cp.n_threads = threads;
    lt_context *ctx;
    lt_model *m;
    CHECK(lt_context_create(&cp, &ctx), lt_last_error());
    CHECK(lt_model_create_random(ctx, bench_s_config, 1, 0.02f, &m), lt_last_error());
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 16;
    ap.alpha = 32;
    ap.init = LT_INIT_GAUSSIAN;
    lt_adapter *a;
    CHECK(lt_adapter_create(m, &ap, &a), lt_last_error());
    static const struct {
        const char *name;
        int prompts, group, prompt_len, new_tokens;
        float temperature;
    } shapes[] = {{"one row, prompt 128, greedy", 1, 1, 128, 64, 0.0f},
                  {"GRPO-like, 4 prompts x 8, prompt 32, temperature 1", 4, 8, 32, 64, 1.0f}};
    printf("lt_generate on bench-s (LoRA r=16), %d threads, medians of %d; library %s\n", threads, reps,
           lt_version_string());
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const int rows = shapes[s].prompts * shapes[s].group, P = shapes[s].prompt_len, NEW = shapes[s].new_tokens;
        int32_t *prompts = malloc(sizeof(int32_t) * rows * P), *lens = malloc(sizeof(int32_t) * rows);
        int32_t *out = malloc(sizeof(int32_t) * rows * NEW), *out_lens = malloc(sizeof(int32_t) * rows);
        for (int r = 0; r < rows; r++) {
            lens[r] = P;
            for (int t = 0; t < P; t++) prompts[r * P + t] = 3 + ((r / shapes[s].group) * 7919 + t * 104729) % 31000;
        }
        double *tp = malloc(sizeof(double) * reps), *tf = malloc(sizeof(double) * reps);
        timed_generate(m, a, prompts, lens, rows, 2, shapes[s].temperature, out, out_lens); /* warm-up */
        for (int k = 0; k < reps; k++) {
            tp[k] = timed_generate(m, a, prompts, lens, rows, 1, shapes[s].temperature, out, out_lens);
            tf[k] = timed_generate(m, a, prompts, lens, rows, NEW, shapes[s].temperature, out, out_lens);
        }
        const double pre = bench_median(tp, reps), full = bench_median(tf, reps);
        printf("%-52s prefill %8.1f tokens/s (%.3f s)   decode %7.1f tokens/s (%.3f s for %d x %d)   total %.3f s\n",
               shapes[s].name, rows * P / pre, pre, rows * (NEW - 1) / (full - pre), full - pre, rows, NEW - 1, full);
        fflush(stdout);
        free(prompts);
        free(lens);
        free(out);
        free(out_lens);
        free(tp);
        free(tf);
    }
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
    return 0;
}
