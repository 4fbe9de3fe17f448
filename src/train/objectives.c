/*
 * objectives.c - preference (DPO, IPO, KTO, ORPO) and RL (GRPO) objectives on top of the LoRA trainer.
 *
 * defines: lt_obj_* (the arithmetic, objectives.h), lt_pref_batch_init, lt_trainer_step_preference,
 *          lt_trainer_evaluate_preference, lt_trainer_reference_logps, lt_grpo_generate, lt_grpo_step
 *
 * Every objective here is a function of per-token log-probs of completion tokens, so one scheme
 * serves them all (docs/spec/algorithms.md has the definitions, matching TRL):
 *   1. build rows prompt ++ completion (right-padded), labels = the tokens whose log-prob counts;
 *   2. reference forward (adapter disabled, or the frozen reference adapter) unless precomputed;
 *   3. policy forward (lt_forward_logp): -log p of every labelled token, activations kept;
 *   4. on the host: the loss, d loss / d lp per sequence (or token) -> per-token weights
 *      w_t = -d loss / d lp_t (the weight of that token's cross-entropy);
 *   5. lt_backward_weighted: the gradient of sum_t w_t CE_t, i.e. of the loss.
 * Gradient accumulation averages the micro-batch losses (each is already a mean over its examples).
 * Dropout is off for these objectives (TRL's preference trainers disable it by default).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/objectives.h"
#include "train/trainer.h"

/* ---- arithmetic ---------------------------------------------------------------------------------- */

static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }
/* log(1 - e^x) for x < 0, accurate on both sides of -ln 2 */
static double log1mexp(double x) { return x < -M_LN2 ? log1p(-exp(x)) : log(-expm1(x)); }

void lt_obj_pairs(lt_objective obj, const lt_trainer_params *p, int B, double n_total, const double *lp_c,
                  const double *lp_r, const double *ref_c, const double *ref_r, const int *n_c, const int *n_r,
                  double *g_c, double *g_r, lt_obj_sums *s) {
    const double beta = p->beta, eps = p->label_smoothing;
    memset(s, 0, sizeof *s);
    for (int i = 0; i < B; i++) {
        double l, dc, dr, rew_c, rew_r;
        if (obj == LT_OBJ_ORPO) {
            /* mean per-token log-probs; log_odds = (lc - lr) - (log1mexp(lc) - log1mexp(lr)) */
            const double lc = lp_c[i] / n_c[i], lr = lp_r[i] / n_r[i];
            const double lo = (lc - lr) - (log1mexp(lc) - log1mexp(lr));
            l = -beta * log_sigmoid(lo);
            const double dl_dlo = -beta * sigmoid(-lo);
            /* d log_odds / d lc = 1 - d log1mexp(lc)/d lc = 1 + e^lc / (1 - e^lc) = -1 / expm1(lc) */
            dc = dl_dlo * (-1.0 / expm1(lc)) / n_c[i];
            dr = dl_dlo * (1.0 / expm1(lr)) / n_r[i];
            rew_c = beta * lc;
            rew_r = beta * lr;
        } else {
            const double c = lp_c[i] - ref_c[i], r = lp_r[i] - ref_r[i];
            rew_c = beta * c;
            rew_r = beta * r;
            if (obj == LT_OBJ_IPO) {
                const double h = c / n_c[i] - r / n_r[i] - 1.0 / (2.0 * beta);
                l = h * h;
                dc = 2 * h / n_c[i];
                dr = -2 * h / n_r[i];
            } else { /* DPO sigmoid with conservative label smoothing eps */
                const double z = beta * (c - r);
                l = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                const double dz = -(1 - eps) * sigmoid(-z) + eps * sigmoid(z);
                dc = dz * beta;
                dr = -dz * beta;
            }
        }
        s->loss += l;
        g_c[i] = dc / n_total;
        g_r[i] = dr / n_total;
        s->chosen += rew_c;
        s->rejected += rew_r;
        s->correct += rew_c > rew_r;
        s->margin += rew_c - rew_r;
    }
    s->n = s->n_chosen = s->n_rejected = B;
}

void lt_obj_kto(const lt_trainer_params *p, int B, double n_total, double kl, const double *lp, const double *ref,
                const int32_t *label, double *g, lt_obj_sums *s) {
    const double beta = p->beta;
    memset(s, 0, sizeof *s);
    for (int i = 0; i < B; i++) {
        const double lr = lp[i] - ref[i];
        if (label[i]) { /* 1 - sigma(beta (lr - kl)) */
            const double sg = sigmoid(beta * (lr - kl));
            s->loss += p->desirable_weight * (1 - sg);
            g[i] = -p->desirable_weight * sg * (1 - sg) * beta / n_total;
            s->chosen += beta * lr;
            s->n_chosen++;
        } else { /* 1 - sigma(beta (kl - lr)) */
            const double sg = sigmoid(beta * (kl - lr));
            s->loss += p->undesirable_weight * (1 - sg);
            g[i] = p->undesirable_weight * sg * (1 - sg) * beta / n_total;
            s->rejected += beta * lr;
            s->n_rejected++;
        }
    }
    s->n = B;
}

double lt_obj_kto_kl_sum(int B, const double *lp_kl, const double *ref_kl) {
    double s = 0;
    for (int i = 0; i < B; i++) s += lp_kl[i] - ref_kl[i];
    return s;
}

double lt_obj_kto_kl(double kl_sum, double n_total) {
    const double kl = kl_sum / n_total;
    return kl < 0 ? 0.0 : kl; /* clamp(min=0); detached */
}

void lt_obj_finish(lt_objective obj, const lt_obj_sums *s, double kl, double nll, lt_obj_metrics *out) {
    out->loss = s->loss / s->n + nll;
    out->rewards_chosen = s->n_chosen ? s->chosen / s->n_chosen : NAN;
    out->rewards_rejected = s->n_rejected ? s->rejected / s->n_rejected : NAN;
    if (obj == LT_OBJ_KTO) {
        out->margins = s->n_chosen && s->n_rejected ? out->rewards_chosen - out->rewards_rejected : NAN;
        out->accuracies = NAN;
        out->kl = kl;
    } else {
        out->accuracies = s->correct / s->n;
        out->margins = s->margin / s->n;
        out->kl = NAN;
    }
}

void lt_obj_grpo_advantages(const float *rewards, int n_prompts, int G, lt_grpo_scale scale, double batch_std,
                            double *adv) {
    for (int q = 0; q < n_prompts; q++) {
        const float *r = rewards + (size_t)q * G;
        double m = 0, v = 0;
        for (int g = 0; g < G; g++) m += r[g];
        m /= G;
        for (int g = 0; g < G; g++) v += (r[g] - m) * (r[g] - m);
        const double sd = G > 1 ? sqrt(v / (G - 1)) : NAN;
        for (int g = 0; g < G; g++) {
            double a = r[g] - m;
            if (scale == LT_GRPO_SCALE_GROUP) a /= sd + 1e-4;
            else if (scale == LT_GRPO_SCALE_BATCH) a /= batch_std + 1e-4;
            adv[(size_t)q * G + g] = isnan(a) ? 0.0 : a;
        }
    }
}

double lt_obj_grpo_sq(const float *rewards, int n, double mean) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (rewards[i] - mean) * (rewards[i] - mean);
    return s;
}

void lt_obj_grpo_loss(const lt_trainer_params *p, int S, const int32_t *lens, const double *adv, const float *lp,
                      const float *lp_old, const float *ref, int max_completion_length, double S_total,
                      double tokens_total, float *dlp, lt_obj_grpo_metrics *out) {
    const double eps_lo = p->epsilon, eps_hi = p->epsilon_high > 0 ? p->epsilon_high : p->epsilon;
    const double kb = p->kl_beta;
    double loss = 0, kl_sum = 0, clipped = 0;
    size_t o = 0;
    for (int i = 0; i < S; i++) {
        /* the weight of sequence i's tokens in the aggregate (over the whole batch) */
        double agg;
        switch (p->loss_type) {
        case LT_GRPO_LOSS_GRPO: agg = 1.0 / (S_total * (lens[i] > 1 ? lens[i] : 1)); break;
        case LT_GRPO_LOSS_DR_GRPO: agg = 1.0 / (S_total * max_completion_length); break;
        default: agg = 1.0 / (tokens_total > 1 ? tokens_total : 1); break; /* bnpo, dapo: the batch's tokens */
        }
        const double A = adv[i];
        for (int t = 0; t < lens[i]; t++, o++) {
            const double rho = exp((double)lp[o] - (double)lp_old[o]);
            const double cl = rho < 1 - eps_lo ? 1 - eps_lo : rho > 1 + eps_hi ? 1 + eps_hi : rho;
            const double u1 = rho * A, u2 = cl * A;
            double l, d;
            if (u1 <= u2) {
                l = -u1;
                d = -u1;
            } /* d(rho)/d lp = rho */
            else {
                l = -u2;
                d = (rho == cl) ? -u1 : 0.0;
            } /* clamped: no gradient */
            if ((rho < 1 - eps_lo && A < 0) || (rho > 1 + eps_hi && A > 0)) clipped += 1;
            if (kb > 0) { /* k3 = exp(ref - lp) - (ref - lp) - 1 */
                const double x = (double)ref[o] - (double)lp[o];
                const double k3 = exp(x) - x - 1;
                l += kb * k3;
                d += kb * (1 - exp(x));
                kl_sum += k3;
            }
            loss += l * agg;
            dlp[o] = (float)(d * agg);
        }
    }
    out->loss = loss;
    out->kl_sum = kl_sum;
    out->clipped = clipped;
}

/* ---- trainer glue --------------------------------------------------------------------------------- */

lt_status lt_objective_check_params(lt_model *m, lt_adapter *a, const lt_trainer_params *p, lt_error *err) {
    if (p->objective == LT_OBJ_SFT) return LT_OK;
    if (!(p->beta > 0) || !isfinite(p->beta))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: beta %g must be positive", p->beta);
    if (!(p->label_smoothing >= 0 && p->label_smoothing < 0.5f))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: label_smoothing %g must be in [0, 0.5)",
                       p->label_smoothing);
    if (!(p->desirable_weight >= 0) || !(p->undesirable_weight >= 0))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: KTO desirable/undesirable weights must be >= 0");
    if (p->max_length < 0) return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: max_length %d < 0", p->max_length);
    if (p->ref_adapter && (p->ref_adapter->model != m || p->ref_adapter == a))
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_trainer_create: ref_adapter must be another adapter of the same model");
    if (p->objective == LT_OBJ_GRPO) {
        if (p->num_generations < 2)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_trainer_create: GRPO needs num_generations >= 2 (got %d): "
                           "advantages are relative to the group",
                           p->num_generations);
        if (!(p->epsilon >= 0 && p->epsilon < 1) || !(p->epsilon_high >= 0) || !(p->kl_beta >= 0))
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_trainer_create: need 0 <= epsilon < 1, epsilon_high >= 0, kl_beta >= 0");
        if ((int)p->scale_rewards < 0 || p->scale_rewards > LT_GRPO_SCALE_NONE || (int)p->loss_type < 0 ||
            p->loss_type > LT_GRPO_LOSS_DR_GRPO)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: unknown GRPO scale_rewards %d or loss_type %d",
                           (int)p->scale_rewards, (int)p->loss_type);
    }
    return LT_OK;
}

void lt_objective_free_state(lt_trainer *t) {
    lt_objective_state *s = &t->obj;
    free(s->ids);
    free(s->labels);
    free(s->w);
    free(s->seq);
    free(s->ints);
    free(s->lp);
    free(s->lp_ref);
    free(s->g_prompts);
    free(s->g_plens);
    free(s->g_comp);
    free(s->g_clens);
    free(s->kl_prev);
    memset(s, 0, sizeof *s);
}

/* Grow the staging for `rows` rows of T tokens and `seqs` sequences (only when it does not fit). */
static lt_status reserve(lt_trainer *t, int rows, int T, int seqs, size_t tokens) {
    lt_objective_state *s = &t->obj;
    const size_t n = (size_t)rows * T;
    if (n > s->tok_cap) {
        free(s->ids);
        free(s->labels);
        free(s->w);
        s->ids = malloc(n * sizeof *s->ids);
        s->labels = malloc(n * sizeof *s->labels);
        s->w = malloc(n * sizeof *s->w);
        s->tok_cap = s->ids && s->labels && s->w ? n : 0;
        if (!s->tok_cap)
            return lt_fail(&t->err, LT_ERR_NOMEM, "objective: out of memory staging %d x %d tokens", rows, T);
    }
    size_t need = (size_t)seqs > tokens ? (size_t)seqs : tokens;
    if (need > s->seq_cap) {
        free(s->seq);
        free(s->ints);
        free(s->lp);
        free(s->lp_ref);
        s->seq = malloc(need * 8 * sizeof *s->seq);
        s->ints = malloc(need * 4 * sizeof *s->ints);
        s->lp = malloc(2 * need * sizeof *s->lp); /* second half: GRPO's d loss / d lp */
        s->lp_ref = malloc(need * sizeof *s->lp_ref);
        s->seq_cap = s->seq && s->ints && s->lp && s->lp_ref ? need : 0;
        if (!s->seq_cap) return lt_fail(&t->err, LT_ERR_NOMEM, "objective: out of memory");
    }
    return LT_OK;
}

/* The workspace for B rows of T tokens, planned for the larger of the policy and reference ranks. */
static lt_status ensure_ws(lt_trainer *t, int B, int T) {
    int rank = t->adapter->p.rank;
    if (t->p.ref_adapter && t->p.ref_adapter->p.rank > rank) rank = t->p.ref_adapter->p.rank;
    if (t->ws && B <= t->ws->B_cap && T == t->ws->T && t->ws->rank >= rank) return LT_OK;
    lt_trainer_drop_workspace(t);
    return lt_workspace_create_train(t->model, B, T, rank, t->p.gradient_checkpointing, t->p.activation_memory, &t->ws,
                                     &t->err);
}

/* One row: prompt ++ completion, right-padded with id 0 to T; labels on the completion (and, with
 * label_prompt, on the prompt too: ORPO's NLL), -100 elsewhere. */
static void build_row(int32_t *ids, int32_t *labels, int T, const int32_t *prompt, int P, const int32_t *comp, int C,
                      int label_prompt) {
    for (int t = 0; t < T; t++) {
        int32_t id = t < P ? prompt[t] : t < P + C ? comp[t - P] : 0;
        ids[t] = id;
        labels[t] = (t < P && label_prompt) || (t >= P && t < P + C) ? id : -100;
    }
}

/* Sum of log p over positions [P-1, P+C-1) of row r (position t predicts token t+1). */
static double seq_logp(const lt_workspace *ws, int r, int P, int C) {
    double s = 0;
    for (int t = P - 1; t < P + C - 1; t++) s -= ws->host_losses[(size_t)r * ws->T + t];
    return s;
}

/* Per-example offsets into the concatenated arrays. */
typedef struct {
    int P, C, R, p_off, c_off, r_off;
} pref_item;

/* Checks of a batch; *Tmax_out = its longest row (KTO: the KL rows of every example but the first, whose
 * partner is known after the agreement). A rank of a data-parallel trainer may have no examples. */
static lt_status check_pref(lt_trainer *t, const lt_pref_batch *b, const char *fn, int *Tmax_out) {
    const int kto = t->p.objective == LT_OBJ_KTO, V = (int)t->model->cfg.vocab_size, dist = t->dist.comm != NULL;
    if (t->p.objective < LT_OBJ_DPO || t->p.objective > LT_OBJ_ORPO)
        return lt_fail(&t->err, LT_ERR_STATE, "%s: the trainer's objective is not DPO, IPO, KTO or ORPO", fn);
    if (!b || b->size < sizeof(size_t))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: batch is NULL or its size is unset (call lt_pref_batch_init)",
                       fn);
    if (b->n_rows < 0 || (b->n_rows == 0 && !dist))
        return lt_fail(&t->err, LT_ERR_SHAPE, "%s: the batch has %d examples", fn, b->n_rows);
    if (b->n_rows > 0 && (!b->prompt_ids || !b->prompt_lens || !b->chosen_ids || !b->chosen_lens ||
                          (!kto && (!b->rejected_ids || !b->rejected_lens)) || (kto && !b->labels)))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: prompt_*, chosen_* and %s are required", fn,
                       kto ? "labels (KTO)" : "rejected_*");
    if (kto && b->n_rows < 2 && !dist) /* data-parallel: the global batch's count, after the agreement */
        return lt_fail(&t->err, LT_ERR_SHAPE,
                       "%s: KTO needs at least 2 examples per batch (the KL estimate pairs "
                       "each prompt with another example's completion)",
                       fn);
    int Tmax = 0;
    int64_t po = 0, co = 0, ro = 0;
    for (int i = 0; i < b->n_rows; i++) {
        const int P = b->prompt_lens[i], C = b->chosen_lens[i], R = kto ? 0 : b->rejected_lens[i];
        if (P <= 0) return lt_fail(&t->err, LT_ERR_DATA, "%s: the prompt of example %d is empty", fn, i);
        if (C <= 0 || (!kto && R <= 0))
            return lt_fail(&t->err, LT_ERR_DATA, "%s: example %d has an empty %s completion", fn, i,
                           C <= 0 ? (kto ? "" : "chosen") : "rejected");
        const int L = P + (C > R ? C : R);
        if (t->p.max_length > 0 && L > t->p.max_length)
            return lt_fail(&t->err, LT_ERR_DATA,
                           "%s: example %d has %d prompt + completion tokens, more than "
                           "max_length %d",
                           fn, i, L, t->p.max_length);
        for (int k = 0; k < P; k++)
            if (b->prompt_ids[po + k] < 0 || b->prompt_ids[po + k] >= V)
                return lt_fail(&t->err, LT_ERR_DATA, "%s: prompt %d token %d is %d, outside [0, %d)", fn, i, k,
                               b->prompt_ids[po + k], V);
        for (int k = 0; k < C; k++)
            if (b->chosen_ids[co + k] < 0 || b->chosen_ids[co + k] >= V)
                return lt_fail(&t->err, LT_ERR_DATA, "%s: completion %d token %d is %d, outside [0, %d)", fn, i, k,
                               b->chosen_ids[co + k], V);
        for (int k = 0; k < R; k++)
            if (b->rejected_ids[ro + k] < 0 || b->rejected_ids[ro + k] >= V)
                return lt_fail(&t->err, LT_ERR_DATA, "%s: rejected completion %d token %d is %d, outside [0, %d)", fn,
                               i, k, b->rejected_ids[ro + k], V);
        if (kto && b->labels[i] != 0 && b->labels[i] != 1)
            return lt_fail(&t->err, LT_ERR_DATA, "%s: KTO label %d of example %d is neither 0 nor 1", fn, b->labels[i],
                           i);
        if (L > Tmax) Tmax = L;
        if (kto && i > 0 && P + b->chosen_lens[i - 1] > Tmax) Tmax = P + b->chosen_lens[i - 1]; /* the KL row */
        po += P;
        co += C;
        ro += R;
    }
    const double *refs[3] = {b->ref_chosen_logps, kto ? NULL : b->ref_rejected_logps, kto ? b->ref_kl_logps : NULL};
    for (int k = 0; k < 3; k++)
        for (int i = 0; refs[k] && i < b->n_rows; i++)
            if (!isfinite(refs[k][i]))
                return lt_fail(&t->err, LT_ERR_NUMERIC, "%s: reference log-prob %d is not finite", fn, i);
    *Tmax_out = Tmax;
    return LT_OK;
}

/* KTO: the completion example i's KL row pairs with its prompt: example i-1's; the first example's is the
 * previous example of the global batch (t->obj.kl_prev: this batch's last in one process). */
static const int32_t *kl_completion(const lt_trainer *t, const lt_pref_batch *b, const pref_item *it, int i, int *len) {
    if (i == 0) {
        *len = t->obj.kl_prev_len;
        return t->obj.kl_prev;
    }
    *len = it[i - 1].C;
    return b->chosen_ids + it[i - 1].c_off;
}

/* KTO: t->obj.kl_prev = the last completion of the previous rank that has examples (cyclically; this rank's
 * own last one in one process or when it is the only one). Every rank with examples broadcasts its last
 * completion; the lengths are in t->dist.wbuf and the ranks' rows in t->dist.rank_rows (the agreement). */
static lt_status kl_partner(lt_trainer *t, const lt_pref_batch *b, const pref_item *it) {
    lt_objective_state *s = &t->obj;
    lt_dist *d = &t->dist;
    const int B = it ? b->n_rows : 0, W = d->comm ? d->world : 1, me = d->comm ? d->rank : 0;
    size_t cap = B > 0 ? (size_t)it[B - 1].C : 0;
    for (int q = 0; d->comm && q < W; q++)
        if ((size_t)d->wbuf[q] > cap) cap = (size_t)d->wbuf[q];
    if (2 * cap > s->kl_prev_cap) { /* the kept completion, then a broadcast buffer */
        free(s->kl_prev);
        s->kl_prev = malloc(2 * cap * sizeof *s->kl_prev);
        s->kl_prev_cap = s->kl_prev ? 2 * cap : 0;
        if (!s->kl_prev) return lt_fail(&t->err, LT_ERR_NOMEM, "KTO: out of memory");
    }
    if (!d->comm) {
        memcpy(s->kl_prev, b->chosen_ids + it[B - 1].c_off, (size_t)it[B - 1].C * sizeof *s->kl_prev);
        s->kl_prev_len = it[B - 1].C;
        return LT_OK;
    }
    int prev = -1;
    for (int k = 1; k <= W && prev < 0; k++)
        if (d->rank_rows[(me - k + W) % W] > 0) prev = (me - k + W) % W;
    int32_t *buf = s->kl_prev + cap;
    for (int q = 0; q < W; q++) {
        if (d->rank_rows[q] <= 0) continue;
        const int len = (int)d->wbuf[q];
        if (q == me) memcpy(buf, b->chosen_ids + it[B - 1].c_off, (size_t)len * sizeof *buf);
        lt_status st = lt_dist_bcast(t, buf, (size_t)len * sizeof *buf, q);
        if (st != LT_OK) return st;
        if (q == prev) {
            memcpy(s->kl_prev, buf, (size_t)len * sizeof *buf);
            s->kl_prev_len = len;
        }
    }
    return LT_OK;
}

/* Build the 2B rows of a preference batch into t->obj and stage them. DPO/IPO/ORPO: chosen rows 0..B-1,
 * rejected rows B..2B-1. KTO: completion rows 0..B-1, KL rows B..2B-1 (prompt i + kl_completion(i)). */
static lt_status build_pref_rows(lt_trainer *t, const lt_pref_batch *b, int T, const pref_item *it) {
    const int B = b->n_rows, kto = t->p.objective == LT_OBJ_KTO, orpo = t->p.objective == LT_OBJ_ORPO;
    lt_objective_state *s = &t->obj;
    for (int i = 0; i < B; i++) {
        const int32_t *prompt = b->prompt_ids + it[i].p_off;
        build_row(s->ids + (size_t)i * T, s->labels + (size_t)i * T, T, prompt, it[i].P, b->chosen_ids + it[i].c_off,
                  it[i].C, orpo);
        int C2 = it[i].R;
        const int32_t *comp2 = kto ? kl_completion(t, b, it, i, &C2) : b->rejected_ids + it[i].r_off;
        build_row(s->ids + (size_t)(B + i) * T, s->labels + (size_t)(B + i) * T, T, prompt, it[i].P, comp2, C2, 0);
    }
    lt_batch lb;
    lt_batch_init(&lb, sizeof lb);
    lb.n_rows = 2 * B;
    lb.seq_len = T;
    lb.input_ids = s->ids;
    lb.labels = s->labels;
    int64_t valid;
    return lt_stage_batch(t->model, t->ws, &lb, &valid, &t->err);
}

/* The weight of an MoE model's load-balancing loss in an objective's loss, as TRL 1.16 adds it (loss +
 * router_aux_loss_coef * aux_loss of the policy forward; docs/spec/moe.md): DPOTrainer (DPO, IPO),
 * KTOTrainer and GRPOTrainer whenever the config has a nonzero router_aux_loss_coef, trl.experimental's
 * ORPOTrainer only with output_router_logits true; 0: none (a dense model). */
static double obj_aux_coef(const lt_model_config *c, lt_objective obj) {
    if (!c->n_moe_layers || (obj == LT_OBJ_ORPO && !c->output_router_logits)) return 0.0;
    return c->router_aux_loss_coef;
}

/* Staged row i's first n tokens are the ones the load-balancing statistics count: those under TRL's
 * attention mask in its policy forward (prompt + completion), not the padding. */
static void aux_mask_row(lt_workspace *ws, int i, int n) {
    for (int tt = 0; tt < ws->T; tt++) ws->aux_mask[(size_t)i * ws->T + tt] = tt < n;
    ws->aux_masked = 1;
}

/* The preference rows' mask: the chosen and the rejected rows (KTO: the completion rows; its KL rows are a
 * separate forward there, without the term). */
static void pref_aux_mask(lt_trainer *t, const pref_item *it, int B) {
    const int kto = t->p.objective == LT_OBJ_KTO;
    for (int i = 0; i < 2 * B; i++) {
        const pref_item *x = &it[i % B];
        aux_mask_row(t->ws, i, i < B ? x->P + x->C : kto ? 0 : x->P + x->R);
    }
}

/* Completion log-probs of the 2B staged rows from the last forward: out[0..B) and out[B..2B). */
static void pref_logps(lt_trainer *t, const lt_pref_batch *b, const pref_item *it, double *out) {
    const int B = b->n_rows, kto = t->p.objective == LT_OBJ_KTO;
    for (int i = 0; i < B; i++) {
        out[i] = seq_logp(t->ws, i, it[i].P, it[i].C);
        int C2 = it[i].R;
        if (kto) kl_completion(t, b, it, i, &C2);
        out[B + i] = seq_logp(t->ws, B + i, it[i].P, C2);
    }
}

/*
 * The shared body of step / evaluate / reference: mode 0 train, 1 evaluate, 2 reference only. On a
 * data-parallel trainer each rank has its share of the examples and three agreements make the result the
 * global batch's: (1) statuses and example counts (KTO: the last completion lengths, then the broadcasts of
 * kl_partner), (2) after the forwards: KTO's KL sum, ORPO's NLL sum and token count, (3) after the backward:
 * the sums of the metrics. *tokens receives the scored completion tokens of the global batch.
 */
static lt_status pref_run(lt_trainer *t, const lt_pref_batch *b, int mode, lt_status pre, lt_obj_metrics *met,
                          double *ref_out, int64_t *tokens) {
    static const char *const fns[] = {"lt_trainer_step_preference", "lt_trainer_evaluate_preference",
                                      "lt_trainer_reference_logps"};
    const char *fn = fns[mode];
    lt_model *m = t->model;
    lt_backend *be = m->be;
    lt_adapter *a = t->adapter;
    const lt_objective obj = t->p.objective;
    const int kto = obj == LT_OBJ_KTO, orpo = obj == LT_OBJ_ORPO, dist = t->dist.comm != NULL;
    int Tmax = 0;
    lt_status st = pre; /* the caller's checks */
    if (st == LT_OK && a->merged)
        st = lt_fail(&t->err, LT_ERR_STATE, "%s: the adapter is merged; unmerge it first", fn);
    else if (st == LT_OK && mode == 2 && orpo)
        st = lt_fail(&t->err, LT_ERR_STATE, "%s: ORPO has no reference model", fn);
    else if (st == LT_OK) st = check_pref(t, b, fn, &Tmax);
    if (!dist && st != LT_OK) return st;
    const int B = st == LT_OK ? b->n_rows : 0;
    lt_objective_state *s = &t->obj;
    pref_item *it = NULL; /* in the int scratch: 6 ints per example, then 2B completion lengths */
    _Static_assert(sizeof(pref_item) == 6 * sizeof(int), "pref_item fits the scratch");
    if (B > 0 && (st = reserve(t, 0, 0, 2 * B, 0)) == LT_OK) {
        it = (pref_item *)s->ints;
        int64_t po = 0, co = 0, ro = 0;
        for (int i = 0; i < B; i++) {
            it[i] = (pref_item){b->prompt_lens[i], b->chosen_lens[i], kto ? 0 : b->rejected_lens[i],
                                (int)po,           (int)co,           (int)ro};
            po += it[i].P;
            co += it[i].C;
            ro += it[i].R;
        }
    }
    /* (1) */
    if (kto && dist) {
        memset(t->dist.wbuf, 0, (size_t)t->dist.world * sizeof *t->dist.wbuf);
        t->dist.wbuf[t->dist.rank] = it ? it[B - 1].C : 0;
    }
    if ((st = lt_dist_agree(t, st, it ? B : 0, NULL, 0, kto && dist ? t->dist.wbuf : NULL, fn)) != LT_OK) return st;
    const double B_all = (double)t->dist.rows;
    if (t->dist.rows == 0) return lt_fail(&t->err, LT_ERR_SHAPE, "%s: no rank has examples in this batch", fn);
    if (kto && t->dist.rows < 2)
        return lt_fail(&t->err, LT_ERR_SHAPE,
                       "%s: KTO needs at least 2 examples per batch (the KL estimate pairs each prompt with another "
                       "example's completion); the global batch has %lld",
                       fn, (long long)t->dist.rows);
    if (kto && (st = kl_partner(t, b, it)) != LT_OK) return st;

    double *pol = NULL, *ref = NULL, *g = NULL;
    double mid[3] = {0, 0, 0}; /* KTO: sum of lp_KL - ref_KL; ORPO: NLL sum, token count */
    const double aux_coef = obj_aux_coef(&m->cfg, obj);
    double aux = 0; /* the policy forward's load-balancing loss (with aux_coef) */
    lt_status lst = LT_OK;
    if (B > 0) {
        int T = Tmax;
        if (kto && it[0].P + s->kl_prev_len > T) T = it[0].P + s->kl_prev_len;
        T = (T + 15) / 16 * 16; /* a few shapes only: the workspace is planned per shape */
        if ((lst = ensure_ws(t, 2 * B, T)) == LT_OK && (lst = reserve(t, 2 * B, T, 2 * B, 0)) == LT_OK)
            lst = build_pref_rows(t, b, T, it);
        if (lst == LT_OK && aux_coef != 0) pref_aux_mask(t, it, B);
        pol = s->seq, ref = s->seq + 2 * B, g = s->seq + 4 * B;
        /* reference log-probs: given, or a forward of the base (adapter disabled) / the reference adapter */
        const int have_ref =
            orpo || (b->ref_chosen_logps && (kto ? b->ref_kl_logps != NULL : b->ref_rejected_logps != NULL));
        if (lst == LT_OK && (!have_ref || mode == 2)) {
            if ((lst = lt_forward_logp(m, t->p.ref_adapter, t->ws, NULL, 1.0f, &t->err)) == LT_OK)
                pref_logps(t, b, it, ref);
        } else if (lst == LT_OK && !orpo) {
            memcpy(ref, b->ref_chosen_logps, (size_t)B * sizeof *ref);
            memcpy(ref + B, kto ? b->ref_kl_logps : b->ref_rejected_logps, (size_t)B * sizeof *ref);
        }
        /* policy forward */
        if (lst == LT_OK && mode != 2 && (lst = lt_forward_logp(m, a, t->ws, NULL, 1.0f, &t->err)) == LT_OK) {
            pref_logps(t, b, it, pol);
            if (aux_coef != 0) aux = t->ws->aux_loss;
        }
        if (lst == LT_OK && kto && mode != 2) mid[0] = lt_obj_kto_kl_sum(B, pol + B, ref + B);
        if (lst == LT_OK && orpo) /* NLL over prompt + chosen (every non-pad token) */
            for (int i = 0; i < B; i++) {
                const int L = it[i].P + it[i].C;
                for (int tt = 0; tt < L - 1; tt++) mid[1] += t->ws->host_losses[(size_t)i * t->ws->T + tt];
                mid[2] += L - 1;
            }
    }
    /* (2) */
    if ((st = lt_dist_agree(t, lst, B, mid, 3, NULL, fn)) != LT_OK) return st;
    if (mode == 2) {
        if (B > 0) memcpy(ref_out, ref, 2 * (size_t)B * sizeof *ref);
        return LT_OK;
    }

    /* the loss over the global batch and d loss / d (sequence log-prob) of this rank's examples */
    double kl = NAN, nll = 0;
    lt_obj_sums sums;
    memset(&sums, 0, sizeof sums);
    float *w = s->w;
    int touched = 0; /* the gradients were changed (restored if the step fails) */
    if (kto) kl = lt_obj_kto_kl(mid[0], B_all);
    if (orpo) nll = mid[1] / mid[2];
    if (B > 0) {
        memset(w, 0, (size_t)2 * B * t->ws->T * sizeof *w);
        if (kto) {
            lt_obj_kto(&t->p, B, B_all, kl, pol, ref, b->labels, g, &sums);
            for (int i = 0; i < B; i++) g[B + i] = 0; /* the KL estimate is detached */
        } else {
            int *cc = s->ints + 6 * B, *rc = cc + B; /* completion lengths as ints, after the items */
            for (int i = 0; i < B; i++) {
                cc[i] = it[i].C;
                rc[i] = it[i].R;
            }
            lt_obj_pairs(obj, &t->p, B, B_all, pol, pol + B, orpo ? NULL : ref, orpo ? NULL : ref + B, cc, rc, g, g + B,
                         &sums);
            if (orpo) /* the NLL's gradient: a token-level mean over the global batch */
                for (int i = 0; i < B; i++)
                    for (int tt = 0; tt < it[i].P + it[i].C - 1; tt++)
                        w[(size_t)i * t->ws->T + tt] = (float)(1.0 / mid[2]);
        }
        if (!isfinite(sums.loss / B + nll + aux_coef * aux))
            lst = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: the loss is not finite (%g)", fn,
                          sums.loss / B + nll + aux_coef * aux);
        if (lst == LT_OK && mode == 0) {
            const int T = t->ws->T;
            /* per-token weights: w_t = -d loss / d lp_t = -g(sequence) on the sequence's completion tokens */
            for (int i = 0; i < 2 * B; i++) {
                const pref_item *x = &it[i % B];
                int C = i < B ? x->C : x->R;
                if (kto && i >= B) kl_completion(t, b, it, i - B, &C);
                for (int tt = x->P - 1; tt < x->P + C - 1; tt++) w[(size_t)i * T + tt] += (float)(-g[i]);
            }
            /* fail-safe accumulation as in the SFT step: a failed micro-batch leaves the gradients as they were */
            if (t->micro > 0) be->ops->copy(be, t->grads_backup, a->grads, a->n_params * sizeof(float));
            touched = 1;
            /* the aux loss of this rank's rows, weighted by their share of the global batch (one process: coef) */
            t->ws->aux_weight = aux_coef * B / B_all;
            lst = lt_backward_weighted(m, a, t->ws, NULL, 1.0f, w, &t->err);
            if (lst == LT_OK && !be->ops->all_finite(be, a->n_params, a->grads))
                lst = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: the gradients are not finite; the step was discarded", fn);
        }
    }
    /* (3) */
    double v[LT_OBJ_SUMS + 2];
    memcpy(v, &sums, sizeof sums);
    v[LT_OBJ_SUMS] = 0;
    v[LT_OBJ_SUMS + 1] = aux_coef * aux * B; /* the ranks' aux losses, weighted as in the backward */
    for (int i = 0; i < B; i++) v[LT_OBJ_SUMS] += it[i].C + (kto ? 0 : it[i].R);
    if ((st = lt_dist_agree(t, lst, B, v, LT_OBJ_SUMS + 2, NULL, fn)) != LT_OK) {
        if (touched && t->micro > 0) be->ops->copy(be, a->grads, t->grads_backup, a->n_params * sizeof(float));
        else if (touched) be->ops->zero(be, a->grads, a->n_params * sizeof(float));
        return st;
    }
    memcpy(&sums, v, sizeof sums);
    lt_obj_finish(obj, &sums, kl, nll, met);
    met->loss += v[LT_OBJ_SUMS + 1] / B_all;
    *tokens = (int64_t)v[LT_OBJ_SUMS];
    return LT_OK;
}

/* After a micro-batch's backward: count it, update every grad_accum micro-batches (the loss of an
 * update is the mean of its micro-batch losses, so the summed gradients are divided by grad_accum). */
static lt_status finish_micro(lt_trainer *t, lt_step_result *r) {
    t->micro_total++;
    t->micro++;
    r->lr = lt_optimizer_lr(t->opt);
    if (t->micro == t->p.grad_accum) {
        lt_status st = lt_trainer_update(t, 1.0 / t->p.grad_accum, r);
        t->micro = 0;
        if (st != LT_OK) return st;
        r->updated = 1;
    }
    r->step = t->opt->step;
    return LT_OK;
}

static void result_init(lt_step_result *r) {
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->rewards_chosen = r->rewards_rejected = r->rewards_accuracies = r->rewards_margins = r->kl = NAN;
    r->reward_mean = r->reward_std = r->clip_fraction = r->completion_length = NAN;
}

static void result_out(lt_trainer *t, lt_step_result *r, lt_step_result *res, int progress) {
    if (res) {
        size_t n = res->size < sizeof *r ? res->size : sizeof *r;
        memcpy(res, r, n);
        res->size = n;
    }
    if (progress && t->progress) t->progress(t->progress_user, r);
}

LT_API void lt_pref_batch_init(lt_pref_batch *b, size_t size) {
    lt_pref_batch d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    lt_fill_struct(b, size, &d, sizeof d);
}

static void pref_result(lt_step_result *r, const lt_obj_metrics *met, int64_t tokens) {
    result_init(r);
    r->loss = met->loss;
    r->rewards_chosen = met->rewards_chosen;
    r->rewards_rejected = met->rewards_rejected;
    r->rewards_accuracies = met->accuracies;
    r->rewards_margins = met->margins;
    r->kl = met->kl;
    r->tokens = tokens;
}

LT_API lt_status lt_trainer_step_preference(lt_trainer *t, const lt_pref_batch *b, lt_step_result *res) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    lt_status st = res && res->size < sizeof(size_t)
                       ? lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_step_preference: result->size not set")
                       : LT_OK;
    const double t0 = lt_now_seconds();
    lt_obj_metrics met;
    int64_t tokens = 0;
    if ((st = pref_run(t, b, 0, st, &met, NULL, &tokens)) != LT_OK) return st;
    lt_step_result r;
    pref_result(&r, &met, tokens);
    if ((st = finish_micro(t, &r)) != LT_OK) return st;
    const double dt = lt_now_seconds() - t0;
    r.tokens_per_s = dt > 0 && t->ws ? (double)2 * b->n_rows * t->ws->T / dt : 0;
    result_out(t, &r, res, 1);
    return LT_OK;
}

LT_API lt_status lt_trainer_evaluate_preference(lt_trainer *t, const lt_pref_batch *b, lt_step_result *res) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    lt_status st =
        !res || res->size < sizeof(size_t)
            ? lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_evaluate_preference: result is NULL or its size is unset")
            : LT_OK;
    lt_obj_metrics met;
    int64_t tokens = 0;
    if ((st = pref_run(t, b, 1, st, &met, NULL, &tokens)) != LT_OK) return st;
    lt_step_result r;
    pref_result(&r, &met, tokens);
    r.step = t->opt->step;
    result_out(t, &r, res, 0);
    return LT_OK;
}

LT_API lt_status lt_trainer_reference_logps(lt_trainer *t, const lt_pref_batch *b, double *chosen, double *rejected,
                                            double *kl) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    const int B = b && b->n_rows > 0 ? b->n_rows : 0;
    lt_status st = LT_OK;
    if (!chosen && !rejected && !kl)
        st = lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_reference_logps: no output given");
    else if (!b || (b->n_rows <= 0 && !t->dist.comm))
        st = lt_fail(&t->err, LT_ERR_SHAPE, "lt_trainer_reference_logps: empty batch");
    lt_obj_metrics met;
    double *tmp = malloc((2 * (size_t)B + 1) * sizeof *tmp); /* outside the step: an allocation is fine */
    if (!tmp && st == LT_OK) st = lt_fail(&t->err, LT_ERR_NOMEM, "lt_trainer_reference_logps: out of memory");
    int64_t tokens = 0;
    st = pref_run(t, b, 2, st, &met, tmp, &tokens);
    if (st == LT_OK) {
        const int kto = t->p.objective == LT_OBJ_KTO;
        if (chosen) memcpy(chosen, tmp, (size_t)B * sizeof *tmp);
        if (!kto && rejected) memcpy(rejected, tmp + B, (size_t)B * sizeof *tmp);
        if (kto && kl) memcpy(kl, tmp + B, (size_t)B * sizeof *tmp);
    }
    free(tmp);
    return st;
}

/* ---- GRPO ------------------------------------------------------------------------------------------ */

LT_API lt_status lt_grpo_generate(lt_trainer *t, const int32_t *prompts, const int32_t *prompt_lens, int n_prompts,
                                  const lt_generate_params *gen, int32_t *completions, int32_t *completion_lens) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    const char *fn = "lt_grpo_generate";
    if (t->p.objective != LT_OBJ_GRPO)
        return lt_fail(&t->err, LT_ERR_STATE, "%s: the trainer's objective is not GRPO", fn);
    lt_objective_state *s = &t->obj;
    if (n_prompts == 0 && t->dist.comm) { /* a rank with no prompts in this global batch: takes part in the step */
        s->g_np = 0;
        s->g_G = t->p.num_generations;
        s->g_max_new = 1; /* used only with completions */
        s->g_pending = 1;
        return LT_OK;
    }
    if (!prompts || !prompt_lens || n_prompts <= 0 || !completions || !completion_lens)
        return lt_fail(&t->err, LT_ERR_ARGUMENT,
                       "%s: prompts, prompt_lens, completions and completion_lens are required "
                       "and n_prompts must be positive",
                       fn);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    if (gen) {
        if (gen->size < sizeof(size_t) || gen->size > sizeof gp)
            return lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: gen->size %zu unknown (call lt_generate_params_init)", fn,
                           gen->size);
        memcpy(&gp, gen, gen->size);
    }
    if (gp.max_new_tokens <= 0)
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: max_new_tokens %d must be positive", fn, gp.max_new_tokens);
    const int G = t->p.num_generations, V = (int)t->model->cfg.vocab_size;
    int64_t total = 0;
    for (int i = 0; i < n_prompts; i++) {
        if (prompt_lens[i] <= 0) return lt_fail(&t->err, LT_ERR_DATA, "%s: prompt %d is empty", fn, i);
        if (t->p.max_length > 0 && prompt_lens[i] >= t->p.max_length)
            return lt_fail(&t->err, LT_ERR_DATA, "%s: prompt %d has %d tokens, not below max_length %d", fn, i,
                           prompt_lens[i], t->p.max_length);
        total += prompt_lens[i];
    }
    for (int64_t k = 0; k < total; k++)
        if (prompts[k] < 0 || prompts[k] >= V)
            return lt_fail(&t->err, LT_ERR_DATA, "%s: prompt token %lld is %d, outside [0, %d)", fn, (long long)k,
                           prompts[k], V);
    const size_t rows = (size_t)n_prompts * G;
    if ((size_t)total * G > s->g_prompt_cap || rows > s->g_comp_cap / (size_t)gp.max_new_tokens || !s->g_plens) {
        free(s->g_prompts);
        free(s->g_plens);
        free(s->g_comp);
        free(s->g_clens);
        s->g_prompts = malloc((size_t)total * G * sizeof(int32_t));
        s->g_plens = malloc(rows * sizeof(int32_t));
        s->g_comp = malloc(rows * gp.max_new_tokens * sizeof(int32_t));
        s->g_clens = malloc(rows * sizeof(int32_t));
        if (!s->g_prompts || !s->g_plens || !s->g_comp || !s->g_clens) {
            s->g_prompt_cap = s->g_comp_cap = 0;
            return lt_fail(&t->err, LT_ERR_NOMEM, "%s: out of memory", fn);
        }
        s->g_prompt_cap = (size_t)total * G;
        s->g_comp_cap = rows * gp.max_new_tokens;
    }
    /* each prompt repeated G times (row p*G + g); one batched sampling call */
    int64_t o = 0, src = 0;
    for (int i = 0; i < n_prompts; i++) {
        for (int g = 0; g < G; g++) {
            memcpy(s->g_prompts + o, prompts + src, (size_t)prompt_lens[i] * sizeof(int32_t));
            s->g_plens[(size_t)i * G + g] = prompt_lens[i];
            o += prompt_lens[i];
        }
        src += prompt_lens[i];
    }
    s->g_pending = 0;
    lt_status st = lt_generate(t->model, t->adapter, s->g_prompts, s->g_plens, (int)rows, &gp, s->g_comp, s->g_clens);
    if (st != LT_OK) return lt_fail(&t->err, st, "%s: %s", fn, lt_model_last_error(t->model));
    for (size_t r = 0; r < rows; r++)
        if (s->g_clens[r] <= 0) return lt_fail(&t->err, LT_ERR_DATA, "%s: completion %zu is empty", fn, r);
    memcpy(completions, s->g_comp, rows * gp.max_new_tokens * sizeof(int32_t));
    memcpy(completion_lens, s->g_clens, rows * sizeof(int32_t));
    s->g_np = n_prompts;
    s->g_G = G;
    s->g_max_new = gp.max_new_tokens;
    s->g_logit_scale = gp.temperature > 0 ? 1.0f / gp.temperature : 1.0f; /* lp from logits / temperature */
    s->g_pending = 1;
    return LT_OK;
}

LT_API lt_status lt_grpo_step(lt_trainer *t, const float *rewards, lt_step_result *res) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    const char *fn = "lt_grpo_step";
    lt_objective_state *s = &t->obj;
    lt_status st = LT_OK;
    if (t->p.objective != LT_OBJ_GRPO)
        st = lt_fail(&t->err, LT_ERR_STATE, "%s: the trainer's objective is not GRPO", fn);
    else if (!s->g_pending)
        st = lt_fail(&t->err, LT_ERR_STATE, "%s: no generation is pending (call lt_grpo_generate first)", fn);
    else if (!rewards && s->g_np > 0) st = lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: rewards is NULL", fn);
    else if (res && res->size < sizeof(size_t)) st = lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: result->size not set", fn);
    else if (t->adapter->merged) st = lt_fail(&t->err, LT_ERR_STATE, "%s: the adapter is merged; unmerge it first", fn);
    const int S = st == LT_OK ? s->g_np * s->g_G : 0, Mx = s->g_max_new;
    for (int i = 0; i < S && st == LT_OK; i++)
        if (!isfinite(rewards[i]))
            st = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: reward %d (prompt %d, generation %d) is not finite (%g)", fn, i,
                         i / s->g_G, i % s->g_G, (double)rewards[i]);
    if (!t->dist.comm && st != LT_OK) return st;
    const double t0 = lt_now_seconds();
    lt_model *m = t->model;
    lt_backend *be = m->be;
    lt_adapter *a = t->adapter;
    int Pmax = 0;
    int64_t ntok = 0;
    double v[2] = {0, 0}; /* the sum of the rewards, the completion tokens */
    for (int i = 0; i < S && st == LT_OK; i++) {
        if (s->g_plens[i] > Pmax) Pmax = s->g_plens[i];
        ntok += s->g_clens[i];
        v[0] += rewards[i];
    }
    v[1] = (double)ntok;
    /* the global batch: its sequences, tokens and mean reward (advantages scaled by the batch's std, the
     * loss aggregated over its sequences or tokens) */
    if ((st = lt_dist_agree(t, st, S, v, 2, NULL, fn)) != LT_OK) return st;
    if (t->dist.rows == 0) return lt_fail(&t->err, LT_ERR_DATA, "%s: no rank has completions in this batch", fn);
    const double S_all = (double)t->dist.rows, tokens_all = v[1], mean = v[0] / S_all;
    double ss = lt_obj_grpo_sq(rewards, S, mean);
    lt_status lst = LT_OK;
    const int T = (Pmax + Mx + 15) / 16 * 16;
    const double aux_coef = obj_aux_coef(&m->cfg, LT_OBJ_GRPO);
    double aux = 0; /* the policy forward's load-balancing loss (with aux_coef) */
    float *lp = s->lp, *lp_ref = s->lp_ref;
    const float ls = s->g_logit_scale;
    if (S > 0) {
        if ((lst = ensure_ws(t, S, T)) == LT_OK) lst = reserve(t, S, T, S, (size_t)ntok);
        int64_t po = 0;
        for (int i = 0; i < S && lst == LT_OK; i++) {
            build_row(s->ids + (size_t)i * T, s->labels + (size_t)i * T, T, s->g_prompts + po, s->g_plens[i],
                      s->g_comp + (size_t)i * Mx, s->g_clens[i], 0);
            po += s->g_plens[i];
        }
        lt_batch lb;
        lt_batch_init(&lb, sizeof lb);
        lb.n_rows = S;
        lb.seq_len = T;
        lb.input_ids = s->ids;
        lb.labels = s->labels;
        int64_t valid;
        if (lst == LT_OK) lst = lt_stage_batch(m, t->ws, &lb, &valid, &t->err);
        for (int i = 0; i < S && lst == LT_OK && aux_coef != 0; i++)
            aux_mask_row(t->ws, i, s->g_plens[i] + s->g_clens[i]);
        lp = s->lp, lp_ref = s->lp_ref;
        /* per-token log-probs (from logits / temperature) of the reference (only with KL) and the policy */
        if (lst == LT_OK && t->p.kl_beta > 0 &&
            (lst = lt_forward_logp(m, t->p.ref_adapter, t->ws, NULL, ls, &t->err)) == LT_OK)
            for (int i = 0, o = 0; i < S; i++)
                for (int k = 0; k < s->g_clens[i]; k++)
                    lp_ref[o++] = -t->ws->host_losses[(size_t)i * T + s->g_plens[i] - 1 + k];
        if (lst == LT_OK && (lst = lt_forward_logp(m, a, t->ws, NULL, ls, &t->err)) == LT_OK) {
            for (int i = 0, o = 0; i < S; i++)
                for (int k = 0; k < s->g_clens[i]; k++)
                    lp[o++] = -t->ws->host_losses[(size_t)i * T + s->g_plens[i] - 1 + k];
            if (aux_coef != 0) aux = t->ws->aux_loss;
        }
    }
    if ((st = lt_dist_agree(t, lst, S, &ss, 1, NULL, fn)) != LT_OK) return st;
    const double std_all = S_all > 1 ? sqrt(ss / (S_all - 1)) : NAN; /* TRL logs the std of all rewards */
    lt_obj_grpo_metrics gm = {0, 0, 0};
    int touched = 0;
    if (S > 0) {
        double *adv = s->seq;
        lt_obj_grpo_advantages(rewards, s->g_np, s->g_G, t->p.scale_rewards, std_all, adv);
        /* one update per generation: lp_old = lp (detached), so rho = 1 */
        float *dlp = s->w, *dl = s->lp + s->seq_cap; /* d loss / d lp per completion token, then per row position */
        lt_obj_grpo_loss(&t->p, S, s->g_clens, adv, lp, lp, t->p.kl_beta > 0 ? lp_ref : NULL, Mx, S_all, tokens_all, dl,
                         &gm);
        memset(dlp, 0, (size_t)S * T * sizeof *dlp);
        for (int i = 0, o = 0; i < S; i++)
            for (int k = 0; k < s->g_clens[i]; k++) dlp[(size_t)i * T + s->g_plens[i] - 1 + k] = -dl[o++];
        gm.loss += aux_coef * aux * S / S_all; /* this rank's share of the aux term (one process: coef * aux) */
        if (!isfinite(gm.loss)) lst = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: the loss is not finite", fn);
        if (lst == LT_OK) {
            if (t->micro > 0) be->ops->copy(be, t->grads_backup, a->grads, a->n_params * sizeof(float));
            touched = 1;
            t->ws->aux_weight = aux_coef * S / S_all;
            lst = lt_backward_weighted(m, a, t->ws, NULL, ls, dlp, &t->err);
            if (lst == LT_OK && !be->ops->all_finite(be, a->n_params, a->grads))
                lst = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: the gradients are not finite; the step was discarded", fn);
        }
    }
    double sums[3] = {gm.loss, gm.kl_sum, gm.clipped};
    if ((st = lt_dist_agree(t, lst, S, sums, 3, NULL, fn)) != LT_OK) {
        if (touched && t->micro > 0) be->ops->copy(be, a->grads, t->grads_backup, a->n_params * sizeof(float));
        else if (touched) be->ops->zero(be, a->grads, a->n_params * sizeof(float));
        return st;
    }
    s->g_pending = 0;
    lt_step_result r;
    result_init(&r);
    const double tok = tokens_all > 0 ? tokens_all : 1;
    r.loss = sums[0];
    r.kl = t->p.kl_beta > 0 ? sums[1] / tok : 0.0;
    r.clip_fraction = sums[2] / tok;
    r.reward_mean = mean;
    r.reward_std = std_all;
    r.completion_length = tokens_all / S_all;
    r.tokens = (int64_t)tokens_all;
    if ((st = finish_micro(t, &r)) != LT_OK) return st;
    const double dt = lt_now_seconds() - t0;
    r.tokens_per_s = dt > 0 ? (double)S * T / dt : 0;
    result_out(t, &r, res, 1);
    return LT_OK;
}
