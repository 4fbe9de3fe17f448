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

/* Sums over a set of examples (one rank's share of a batch): the ranks add them, lt_obj_finish makes the
 * means. All doubles, so that the whole struct is summed as one vector (LT_OBJ_SUMS values). */
typedef struct lt_obj_sums {
    double n;                    /* examples                                                      */
    double loss;                 /* sum of the per-example losses                                 */
    double chosen, rejected;     /* sums of the rewards (KTO: of desirable / undesirable examples) */
    double n_chosen, n_rejected; /* how many rewards each sum has                                 */
    double correct, margin;      /* pairs: how many chosen > rejected; sum of chosen - rejected    */
} lt_obj_sums;
#define LT_OBJ_SUMS ((int)(sizeof(lt_obj_sums) / sizeof(double)))

/*
 * DPO, IPO, ORPO over B pairs of a batch of n_total pairs (this rank's B; one process: n_total = B).
 * lp_c, lp_r: policy log-probs SUMMED over each completion; ref_c, ref_r: the reference's (unused by
 * ORPO, may be NULL); n_c, n_r: completion token counts (>= 1). g_c, g_r (B) receive d loss / d lp_c,
 * d loss / d lp_r with loss = the mean over the n_total pairs; s receives the sums of the B pairs.
 * ORPO here is only the odds-ratio term -mean(beta log sigma(log_odds)); its NLL is added by the caller.
 */
void lt_obj_pairs(lt_objective obj, const lt_trainer_params *p, int B, double n_total, const double *lp_c,
                  const double *lp_r, const double *ref_c, const double *ref_r, const int *n_c, const int *n_r,
                  double *g_c, double *g_r, lt_obj_sums *s);

/*
 * KTO over B examples of a batch of n_total: lp, ref summed log-probs; label 1 desirable / 0 undesirable;
 * kl the batch's KL estimate, clamp(mean over the batch of lp_KL - ref_KL, 0) of the mismatched pairs
 * (prompt i + completion i-1), detached. g (B) receives d loss / d lp; s the sums of the B examples.
 */
void lt_obj_kto(const lt_trainer_params *p, int B, double n_total, double kl, const double *lp, const double *ref,
                const int32_t *label, double *g, lt_obj_sums *s);

/* KTO's KL estimate of a batch of n_total examples: clamp(kl_sum / n_total, 0), with kl_sum the sum over its
 * examples (the ranks' sums added) of lt_obj_kto_kl_sum: lp_KL - ref_KL of the mismatched pairs. */
double lt_obj_kto_kl_sum(int B, const double *lp_kl, const double *ref_kl);
double lt_obj_kto_kl(double kl_sum, double n_total);

/* The metrics of an objective from the sums over the whole batch; kl: KTO's estimate (NaN otherwise);
 * nll: ORPO's NLL term (a token mean), added to the loss (0 otherwise). */
void lt_obj_finish(lt_objective obj, const lt_obj_sums *s, double kl, double nll, lt_obj_metrics *out);

/* GRPO advantages of n_prompts groups of G rewards (group-major): A = (r - mean_group) / (std + 1e-4),
 * std with Bessel's correction over the group (SCALE_GROUP), or batch_std, the Bessel std of every reward
 * of the whole batch (SCALE_BATCH), or no division (SCALE_NONE); a NaN becomes 0. */
void lt_obj_grpo_advantages(const float *rewards, int n_prompts, int G, lt_grpo_scale scale, double batch_std,
                            double *adv);

/* GRPO's batch statistics: mean = the sum of the rewards / their count n; the Bessel std = sqrt(sq / (n - 1)),
 * sq = the sum over the rewards (the ranks' sums added) of lt_obj_grpo_sq: (r - mean)^2. */
double lt_obj_grpo_sq(const float *rewards, int n, double mean);

/* Sums over the tokens of a GRPO step: the loss (each token already weighted by its share of the
 * aggregate, so the sums of the ranks add up to the loss), the k3 KL, the clipped tokens. */
typedef struct lt_obj_grpo_metrics {
    double loss, kl_sum, clipped;
} lt_obj_grpo_metrics;

/*
 * GRPO loss over S sequences (of a batch of S_total sequences and tokens_total completion tokens) whose
 * completion tokens are concatenated (lens[i] tokens each, >= 1; every token is in the mask, EOS
 * included): lp, lp_old, ref (NULL when kl_beta == 0) per token. dlp (tokens) receives d loss / d lp.
 * max_completion_length is for dr_grpo.
 */
void lt_obj_grpo_loss(const lt_trainer_params *p, int S, const int32_t *lens, const double *adv, const float *lp,
                      const float *lp_old, const float *ref, int max_completion_length, double S_total,
                      double tokens_total, float *dlp, lt_obj_grpo_metrics *out);

#endif
