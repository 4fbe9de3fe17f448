/*
 * bench_objectives.c - DPO step vs SFT step on the same tokens, and GRPO generation throughput, on
 * the bench-s model (random weights; docs/spec/performance.md). Indicative: run on a shared machine.
 *
 *   build/bench_objectives [THREADS] [REPEATS]      (built with the library: bench/CMakeLists.txt)
 *
 * SFT: 4 rows x 256 tokens, every token labelled. DPO: 2 pairs whose prompt (128 tokens) + chosen or
 * rejected completion (128 tokens) make the same 4 rows x 256 tokens; the reference is the base model
 * with the adapter disabled (computed in the step). Both with gradient checkpointing (the default) and
 * without. Steps alternate (SFT, DPO, SFT, DPO, ...) so that background load hits both; medians.
 * GRPO: 4 prompts of 32 tokens x G = 8, 64 new tokens each, temperature 1 (lt_grpo_generate).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "loratune.h"
#include "loratune_experimental.h"

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, reps = argc > 2 ? atoi(argv[2]) : 3;
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
    const int B = 4, T = 256, P = 128, C = 128;
    int32_t *ids = malloc(sizeof(int32_t) * B * T), *pi = malloc(sizeof(int32_t) * 2 * P);
    int32_t *ci = malloc(sizeof(int32_t) * 2 * C), *ri = malloc(sizeof(int32_t) * 2 * C);
    for (int i = 0; i < B * T; i++) ids[i] = 3 + (i * 7919) % 31000;
    for (int i = 0; i < 2 * P; i++) pi[i] = ids[i];
    for (int i = 0; i < 2 * C; i++) {
        ci[i] = ids[300 + i];
        ri[i] = ids[700 + i];
    }
    int32_t pl[2] = {P, P}, cl[2] = {C, C}, rl[2] = {C, C};
    for (int ck = 1; ck >= 0; ck--) {
        lt_adapter *a1, *a2;
        lt_optimizer *o1, *o2;
        lt_trainer *sft, *dpo;
        lt_optimizer_params op;
        lt_optimizer_params_init(&op, sizeof op);
        CHECK(lt_adapter_create(m, &ap, &a1), lt_last_error());
        CHECK(lt_adapter_create(m, &ap, &a2), lt_last_error());
        CHECK(lt_optimizer_create(a1, &op, &o1), lt_last_error());
        CHECK(lt_optimizer_create(a2, &op, &o2), lt_last_error());
        lt_trainer_params tp;
        lt_trainer_params_init(&tp, sizeof tp);
        tp.gradient_checkpointing = ck;
        CHECK(lt_trainer_create(m, a1, o1, &tp, &sft), lt_last_error());
        tp.objective = LT_OBJ_DPO;
        CHECK(lt_trainer_create(m, a2, o2, &tp, &dpo), lt_last_error());
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = B;
        b.seq_len = T;
        b.input_ids = ids;
        lt_pref_batch pb;
        lt_pref_batch_init(&pb, sizeof pb);
        pb.n_rows = 2;
        pb.prompt_ids = pi;
        pb.prompt_lens = pl;
        pb.chosen_ids = ci;
        pb.chosen_lens = cl;
        pb.rejected_ids = ri;
        pb.rejected_lens = rl;
        double ts[16], td[16];
        for (int r = -1; r < reps && r < 16; r++) { /* r = -1: warm-up */
            lt_step_result res = {.size = sizeof res};
            double t0 = bench_now();
            CHECK(lt_trainer_step(sft, &b, &res), lt_trainer_last_error(sft));
            double t1 = bench_now();
            CHECK(lt_trainer_step_preference(dpo, &pb, &res), lt_trainer_last_error(dpo));
            double t2 = bench_now();
            if (r >= 0) {
                ts[r] = t1 - t0;
                td[r] = t2 - t1;
            }
        }
        qsort(ts, reps, sizeof *ts, bench_cmp);
        qsort(td, reps, sizeof *td, bench_cmp);
        printf("{\"bench\": \"dpo-vs-sft\", \"checkpointing\": %d, \"threads\": %d, \"tokens\": %d, \"sft_s\": %.3f, "
               "\"dpo_s\": %.3f, \"ratio\": %.2f}\n",
               ck, threads, B * T, ts[reps / 2], td[reps / 2], td[reps / 2] / ts[reps / 2]);
        fflush(stdout);
        lt_trainer_free(sft);
        lt_trainer_free(dpo);
        lt_optimizer_free(o1);
        lt_optimizer_free(o2);
        lt_adapter_free(a1);
        lt_adapter_free(a2);
    }
    /* GRPO generation throughput */
    lt_adapter *a;
    lt_optimizer *o;
    lt_trainer *g;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    CHECK(lt_adapter_create(m, &ap, &a), lt_last_error());
    CHECK(lt_optimizer_create(a, &op, &o), lt_last_error());
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.objective = LT_OBJ_GRPO;
    CHECK(lt_trainer_create(m, a, o, &tp, &g), lt_last_error());
    const int NP = 4, G = 8, PL = 32, NEW = 64;
    int32_t prompts[4 * 32], plens[4], *comp = malloc(sizeof(int32_t) * NP * G * NEW), clens[32];
    for (int i = 0; i < NP * PL; i++) prompts[i] = ids[i];
    for (int i = 0; i < NP; i++) plens[i] = PL;
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = NEW;
    gp.temperature = 1.0f;
    gp.eos_token_id = -1;
    double t0 = bench_now();
    CHECK(lt_grpo_generate(g, prompts, plens, NP, &gp, comp, clens), lt_trainer_last_error(g));
    double t1 = bench_now();
    float rewards[32];
    for (int i = 0; i < NP * G; i++) rewards[i] = (float)(i % 3);
    lt_step_result res = {.size = sizeof res};
    CHECK(lt_grpo_step(g, rewards, &res), lt_trainer_last_error(g));
    double t2 = bench_now();
    long gen = 0;
    for (int i = 0; i < NP * G; i++) gen += clens[i];
    printf("{\"bench\": \"grpo\", \"threads\": %d, \"rows\": %d, \"new_tokens\": %ld, \"generate_s\": %.3f, "
           "\"generated_tokens_per_s\": %.1f, \"step_s\": %.3f}\n",
           threads, NP * G, gen, t1 - t0, gen / (t1 - t0), t2 - t1);
    lt_trainer_free(g);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
    free(ids);
    free(pi);
    free(ci);
    free(ri);
    free(comp);
    return 0;
}
