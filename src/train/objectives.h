/*
 * objectives.h - the arithmetic of the preference and RL objectives (internal; docs/spec/algorithms.md, TRL).
 *
 * Each function maps per-sequence (or per-token) log-probs to the batch loss, its gradient with
 * respect to those log-probs, and the metrics. The model never appears here: objectives.c turns the
 * gradients into per-token CE weights for lt_backward_weighted. Everything is in double.
 */
#ifndef LT_OBJECTIVES_H
#define LT_OBJECTIVES_H

#include "loratune.h"

typedef struct lt_obj_metrics {
    double loss, rewards_chosen, rewards_rejected, accuracies, margins, kl;
} lt_obj_metrics;

/*
 * DPO, IPO, ORPO over B pairs. lp_c, lp_r: policy log-probs SUMMED over each completion; ref_c,
 * ref_r: the reference's (unused by ORPO, may be NULL); n_c, n_r: completion token counts (>= 1).
 * g_c, g_r (B) receive d loss / d lp_c, d loss / d lp_r with loss = the mean over the pairs.
 * ORPO here is only the odds-ratio term -mean(beta log sigma(log_odds)); its NLL is added by the caller.
 */
void lt_obj_pairs(lt_objective obj, const lt_trainer_params *p, int B, const double *lp_c, const double *lp_r,
                  const double *ref_c, const double *ref_r, const int *n_c, const int *n_r, double *g_c, double *g_r,
                  lt_obj_metrics *out);

/*
 * KTO over B examples: lp, ref summed log-probs; label 1 desirable / 0 undesirable; lp_kl, ref_kl the
 * mismatched pairs (prompt i + completion i-1). g (B) receives d loss / d lp (the KL term is detached).
 */
void lt_obj_kto(const lt_trainer_params *p, int B, const double *lp, const double *ref, const int32_t *label,
                const double *lp_kl, const double *ref_kl, double *g, lt_obj_metrics *out);

/* GRPO advantages of n_prompts groups of G rewards (group-major): A = (r - mean_group) / (std + 1e-4),
 * std with Bessel's correction over the group (SCALE_GROUP) or the whole batch (SCALE_BATCH), or no
 * division (SCALE_NONE); a NaN becomes 0. reward_mean, reward_std: over all the rewards (Bessel). */
void lt_obj_grpo_advantages(const float *rewards, int n_prompts, int G, lt_grpo_scale scale, double *adv,
                            double *reward_mean, double *reward_std);

typedef struct lt_obj_grpo_metrics {
    double loss, kl, clip_fraction;
} lt_obj_grpo_metrics;

/*
 * GRPO loss over S sequences whose completion tokens are concatenated (lens[i] tokens each, >= 1;
 * every token is in the mask, EOS included): lp, lp_old, ref (NULL when kl_beta == 0) per token.
 * dlp (tokens) receives d loss / d lp. max_completion_length is for dr_grpo.
 */
void lt_obj_grpo_loss(const lt_trainer_params *p, int S, const int32_t *lens, const double *adv, const float *lp,
                      const float *lp_old, const float *ref, int max_completion_length, float *dlp,
                      lt_obj_grpo_metrics *out);

#endif
