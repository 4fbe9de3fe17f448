/*
 * grpo_toy.c - GRPO with a reward computed by the host, on a verifiable toy task.
 *
 * Task ("exact output format"): whatever the prompt, answer with digits only. The vocabulary's
 * "digits" are the token ids TOY_DIGIT_LO .. TOY_DIGIT_LO+9; the reward of a completion is the fraction of
 * its tokens that are digits (a verifier, no reward model). The loop is the two-phase GRPO API:
 *   lt_grpo_generate (G completions per prompt, sampled with the KV cache)
 *   -> the host scores every completion -> lt_grpo_step (advantages, clipped loss, update).
 *
 * usage: grpo_toy [MODEL_DIR] [STEPS]
 * Without MODEL_DIR a tiny random Llama is created in memory (lt_model_create_random, experimental
 * API), so the program runs anywhere in a few seconds. Prints the mean reward per step; exits 0 when
 * the mean reward of the last 5 steps beats that of the first 5 by at least 0.2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loratune.h"
#include "loratune_experimental.h"

#define TOY_DIGIT_LO 10
#define TOY_PROMPTS 4
#define TOY_G 8
#define TOY_MAX_NEW 6

/* the verifier: fraction of the completion's tokens that are digits */
static float reward_of(const int32_t *completion, int len) {
    int digits = 0;
    for (int i = 0; i < len; i++) digits += completion[i] >= TOY_DIGIT_LO && completion[i] < TOY_DIGIT_LO + 10;
    return len > 0 ? (float)digits / (float)len : 0.0f;
}

static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64,"
    " \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"bos_token_id\": 1, \"eos_token_id\": 2, \"tie_word_embeddings\": false}";

/* Runs the toy task; first_mean / last_mean receive the mean reward of the first and last 5 steps.
 * Returns 0 on success (whatever the rewards), 1 on an API error (printed). */
static int grpo_toy_run(const char *model_dir, int steps, int verbose, double *first_mean, double *last_mean) {
    lt_context *ctx = NULL;
    lt_model *model = NULL;
    lt_adapter *adapter = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *trainer = NULL;
    int rc = 1;
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    if (lt_context_create(&cp, &ctx) != LT_OK) {
        fprintf(stderr, "context: %s\n", lt_last_error());
        return 1;
    }
    lt_status st = model_dir ? lt_model_load(ctx, model_dir, NULL, &model)
                             : lt_model_create_random(ctx, TINY_CONFIG, 7, 0.2f, &model);
    if (st != LT_OK) {
        fprintf(stderr, "model: %s\n", lt_last_error());
        goto done;
    }

    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 8;
    ap.alpha = 16;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 2e-2f;
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.objective = LT_OBJ_GRPO;
    tp.num_generations = TOY_G; /* epsilon 0.2, scale_rewards group, loss dapo: the defaults */
    if (lt_adapter_create(model, &ap, &adapter) != LT_OK || lt_optimizer_create(adapter, &op, &opt) != LT_OK ||
        lt_trainer_create(model, adapter, opt, &tp, &trainer) != LT_OK) {
        fprintf(stderr, "setup: %s\n", lt_last_error());
        goto done;
    }
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = TOY_MAX_NEW;
    gp.temperature = 1.0f;
    gp.eos_token_id = -1; /* fixed-length completions */

    int32_t prompts[TOY_PROMPTS * 3], prompt_lens[TOY_PROMPTS];
    int32_t completions[TOY_PROMPTS * TOY_G * TOY_MAX_NEW], lens[TOY_PROMPTS * TOY_G];
    float rewards[TOY_PROMPTS * TOY_G];
    double first = 0, last = 0;
    for (int step = 0; step < steps; step++) {
        for (int p = 0; p < TOY_PROMPTS; p++) { /* prompts: three "letters" (ids 30..59) */
            prompt_lens[p] = 3;
            for (int k = 0; k < 3; k++) prompts[p * 3 + k] = 30 + (step * 7 + p * 5 + k * 3) % 30;
        }
        gp.seed = (uint64_t)step + 1;
        if (lt_grpo_generate(trainer, prompts, prompt_lens, TOY_PROMPTS, &gp, completions, lens) != LT_OK) {
            fprintf(stderr, "generate: %s\n", lt_trainer_last_error(trainer));
            goto done;
        }
        double mean = 0;
        for (int i = 0; i < TOY_PROMPTS * TOY_G; i++) {
            rewards[i] = reward_of(completions + (size_t)i * TOY_MAX_NEW, lens[i]);
            mean += rewards[i];
        }
        mean /= TOY_PROMPTS * TOY_G;
        lt_step_result r = {.size = sizeof r};
        if (lt_grpo_step(trainer, rewards, &r) != LT_OK) {
            fprintf(stderr, "step: %s\n", lt_trainer_last_error(trainer));
            goto done;
        }
        if (step < 5) first += mean / 5;
        if (step >= steps - 5) last += mean / 5;
        if (verbose)
            printf("step %3d  reward %.3f (std %.3f)  loss %+.4f  completion length %.1f\n", step + 1, r.reward_mean,
                   r.reward_std, r.loss, r.completion_length);
    }
    *first_mean = first;
    *last_mean = last;
    rc = 0;
done:
    lt_trainer_free(trainer);
    lt_optimizer_free(opt);
    lt_adapter_free(adapter);
    lt_model_free(model);
    lt_context_free(ctx);
    return rc;
}

#ifndef GRPO_TOY_NO_MAIN
int main(int argc, char **argv) {
    const char *dir = argc > 1 && strcmp(argv[1], "-") ? argv[1] : NULL;
    int steps = argc > 2 ? atoi(argv[2]) : 40;
    if (steps < 10) steps = 10;
    double first, last;
    if (grpo_toy_run(dir, steps, 1, &first, &last)) return 1;
    printf("mean reward: first 5 steps %.3f, last 5 steps %.3f -> %s\n", first, last,
           last >= first + 0.2 ? "learned" : "did not learn");
    return last >= first + 0.2 ? 0 : 1;
}
#endif
