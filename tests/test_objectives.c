/*
 * test_objectives.c - preference and RL objectives (src/train/objectives.c).
 *
 *  - arithmetic: GRPO advantages / clipped loss / KL / aggregation, DPO/IPO/ORPO and KTO losses and
 *    their gradients against float64 PyTorch goldens (tests/python/make_objective_goldens.py writes
 *    LT_TEST_DATA_DIR/objectives/objectives.json), |diff| <= 1e-9 max(1, |x|);
 *  - the weighted backward (lt_backward_weighted) against finite differences, with a logit scale
 *    (GRPO's 1/temperature), on llama-gqa with a nonzero adapter;
 *  - preference steps: the policy equal to the reference gives the DPO loss log 2; precomputed
 *    reference log-probs give the same loss as computing them; SFT calls are refused on a DPO trainer;
 *  - bad inputs: empty completion or prompt, too long, G < 2, NaN reward, a step without generation;
 *  - end to end: examples/c/grpo_toy.c (included here) learns its task on a tiny random model.
 * The losses themselves, through the whole model, are cross-checked against PyTorch + TRL by
 * tests/python/crosscheck_pref.py.
 */
#include <jansson.h>

#include "cpu/ref_ops.h"
#include "decoder/decoder.h"
#include "test_util.h"
#include "train/objectives.h"

#define GRPO_TOY_NO_MAIN
#include "examples/c/grpo_toy.c"

static json_t *goldens(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/objectives/objectives.json", LT_TEST_DATA_DIR);
    json_error_t je;
    json_t *js = json_load_file(path, 0, &je);
    ck_assert_msg(js != NULL, "%s: %s (run tests/python/make_objective_goldens.py)", path, je.text);
    return js;
}

static double *dvec(json_t *a) {
    double *v = malloc((json_array_size(a) + 1) * sizeof *v);
    for (size_t i = 0; i < json_array_size(a); i++) v[i] = json_number_value(json_array_get(a, i));
    return v;
}
static float *fvec(json_t *a) {
    float *v = malloc((json_array_size(a) + 1) * sizeof *v);
    for (size_t i = 0; i < json_array_size(a); i++) v[i] = (float)json_number_value(json_array_get(a, i));
    return v;
}
static int32_t *ivec(json_t *a) {
    int32_t *v = malloc((json_array_size(a) + 1) * sizeof *v);
    for (size_t i = 0; i < json_array_size(a); i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}
static double num(json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }

#define CLOSE(a, b, what, i)                                                              \
    ck_assert_msg(fabs((double)(a) - (double)(b)) <= 1e-9 * fmax(1.0, fabs((double)(b))), \
                  "case %d %s: %.12g vs golden %.12g", (int)(i), what, (double)(a), (double)(b))

START_TEST(test_grpo_arithmetic) {
    json_t *js = goldens(), *cases = json_object_get(js, "grpo");
    ck_assert_int_ge((int)json_array_size(cases), 24);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *o = json_array_get(cases, c);
        const int np = (int)num(o, "n_prompts"), G = (int)num(o, "G"), S = np * G;
        const char *sc = json_string_value(json_object_get(o, "scale_rewards"));
        const char *lt = json_string_value(json_object_get(o, "loss_type"));
        lt_trainer_params p;
        lt_trainer_params_init(&p, sizeof p);
        p.epsilon = (float)num(o, "epsilon");
        p.epsilon_high = (float)num(o, "epsilon_high");
        p.kl_beta = (float)num(o, "kl_beta");
        p.scale_rewards = !strcmp(sc, "group")   ? LT_GRPO_SCALE_GROUP
                          : !strcmp(sc, "batch") ? LT_GRPO_SCALE_BATCH
                                                 : LT_GRPO_SCALE_NONE;
        p.loss_type = !strcmp(lt, "dapo")   ? LT_GRPO_LOSS_DAPO
                      : !strcmp(lt, "grpo") ? LT_GRPO_LOSS_GRPO
                      : !strcmp(lt, "bnpo") ? LT_GRPO_LOSS_BNPO
                                            : LT_GRPO_LOSS_DR_GRPO;
        float *rw = fvec(json_object_get(o, "rewards")), *lp = fvec(json_object_get(o, "lp"));
        float *old = fvec(json_object_get(o, "lp_old")), *ref = fvec(json_object_get(o, "ref"));
        int32_t *lens = ivec(json_object_get(o, "lens"));
        double *adv_g = dvec(json_object_get(o, "adv")), *dlp_g = dvec(json_object_get(o, "dlp"));
        double adv[64], mean = 0;
        for (int i = 0; i < S; i++) mean += rw[i];
        mean /= S;
        const double sd = sqrt(lt_obj_grpo_sq(rw, S, mean) / (S - 1));
        lt_obj_grpo_advantages(rw, np, G, p.scale_rewards, sd, adv);
        for (int i = 0; i < S; i++) CLOSE(adv[i], adv_g[i], "advantage", c);
        CLOSE(mean, num(o, "reward_mean"), "reward mean", c);
        CLOSE(sd, num(o, "reward_std"), "reward std", c);
        size_t ntok = json_array_size(json_object_get(o, "lp"));
        float *dlp = malloc(ntok * sizeof *dlp);
        lt_obj_grpo_metrics gm;
        lt_obj_grpo_loss(&p, S, lens, adv_g, lp, old, p.kl_beta > 0 ? ref : NULL, (int)num(o, "max_completion_length"),
                         S, (double)ntok, dlp, &gm);
        CLOSE(gm.loss, num(o, "loss"), "loss", c);
        CLOSE(p.kl_beta > 0 ? gm.kl_sum / (double)ntok : 0.0, num(o, "kl"), "kl", c);
        CLOSE(gm.clipped / (double)ntok, num(o, "clip_fraction"), "clip fraction", c);
        for (size_t k = 0; k < ntok; k++) /* dlp is float: compare at float precision */
            ck_assert_msg(fabs(dlp[k] - dlp_g[k]) <= 1e-6 * fmax(1e-3, fabs(dlp_g[k])),
                          "case %zu dlp[%zu] %.9g vs %.9g", c, k, dlp[k], dlp_g[k]);
        free(rw);
        free(lp);
        free(old);
        free(ref);
        free(lens);
        free(adv_g);
        free(dlp_g);
        free(dlp);
    }
    json_decref(js);
}
END_TEST

START_TEST(test_pair_and_kto_arithmetic) {
    json_t *js = goldens(), *pairs = json_object_get(js, "pairs"), *kto = json_object_get(js, "kto");
    for (size_t c = 0; c < json_array_size(pairs); c++) {
        json_t *o = json_array_get(pairs, c);
        const char *on = json_string_value(json_object_get(o, "obj"));
        lt_objective obj = !strcmp(on, "dpo") ? LT_OBJ_DPO : !strcmp(on, "ipo") ? LT_OBJ_IPO : LT_OBJ_ORPO;
        lt_trainer_params p;
        lt_trainer_params_init(&p, sizeof p);
        p.beta = (float)num(o, "beta");
        p.label_smoothing = (float)num(o, "label_smoothing");
        const int B = (int)num(o, "B");
        double *pc = dvec(json_object_get(o, "lp_c")), *pr = dvec(json_object_get(o, "lp_r"));
        double *rc = dvec(json_object_get(o, "ref_c")), *rr = dvec(json_object_get(o, "ref_r"));
        double *gc_g = dvec(json_object_get(o, "g_c")), *gr_g = dvec(json_object_get(o, "g_r"));
        int32_t *nc32 = ivec(json_object_get(o, "n_c")), *nr32 = ivec(json_object_get(o, "n_r"));
        int nc[16], nr[16];
        for (int i = 0; i < B; i++) {
            nc[i] = nc32[i];
            nr[i] = nr32[i];
        }
        double gc[16], gr[16];
        lt_obj_sums sums;
        lt_obj_metrics met;
        lt_obj_pairs(obj, &p, B, B, pc, pr, rc, rr, nc, nr, gc, gr, &sums);
        lt_obj_finish(obj, &sums, NAN, 0.0, &met);
        CLOSE(met.loss, num(o, "loss"), on, c);
        for (int i = 0; i < B; i++) {
            CLOSE(gc[i], gc_g[i], "d/d lp_c", c);
            CLOSE(gr[i], gr_g[i], "d/d lp_r", c);
        }
        CLOSE(met.rewards_chosen, num(o, "rewards_chosen"), "rewards/chosen", c);
        CLOSE(met.rewards_rejected, num(o, "rewards_rejected"), "rewards/rejected", c);
        CLOSE(met.accuracies, num(o, "accuracies"), "rewards/accuracies", c);
        CLOSE(met.margins, num(o, "margins"), "rewards/margins", c);
        free(pc);
        free(pr);
        free(rc);
        free(rr);
        free(gc_g);
        free(gr_g);
        free(nc32);
        free(nr32);
    }
    for (size_t c = 0; c < json_array_size(kto); c++) {
        json_t *o = json_array_get(kto, c);
        lt_trainer_params p;
        lt_trainer_params_init(&p, sizeof p);
        p.beta = (float)num(o, "beta");
        p.desirable_weight = (float)num(o, "desirable_weight");
        p.undesirable_weight = (float)num(o, "undesirable_weight");
        const int B = (int)num(o, "B");
        double *lp = dvec(json_object_get(o, "lp")), *ref = dvec(json_object_get(o, "ref"));
        double *lk = dvec(json_object_get(o, "lp_kl")), *rk = dvec(json_object_get(o, "ref_kl"));
        double *g_g = dvec(json_object_get(o, "g")), g[16];
        int32_t *lab = ivec(json_object_get(o, "label"));
        lt_obj_sums sums;
        lt_obj_metrics met;
        const double kl = lt_obj_kto_kl(lt_obj_kto_kl_sum(B, lk, rk), B);
        lt_obj_kto(&p, B, B, kl, lp, ref, lab, g, &sums);
        lt_obj_finish(LT_OBJ_KTO, &sums, kl, 0.0, &met);
        CLOSE(met.loss, num(o, "loss"), "kto loss", c);
        CLOSE(met.kl, num(o, "kl"), "kto kl", c);
        for (int i = 0; i < B; i++) CLOSE(g[i], g_g[i], "kto d/d lp", c);
        CLOSE(met.rewards_chosen, num(o, "rewards_chosen"), "kto rewards/chosen", c);
        CLOSE(met.rewards_rejected, num(o, "rewards_rejected"), "kto rewards/rejected", c);
        CLOSE(met.margins, num(o, "margins"), "kto rewards/margins", c);
        free(lp);
        free(ref);
        free(lk);
        free(rk);
        free(g_g);
        free(lab);
    }
    json_decref(js);
}
END_TEST

/* ---- model-level checks ------------------------------------------------------------------------- */

/* an adapter with nonzero A and B (the policy differs from the base) */
static lt_adapter *nonzero_adapter(lt_model *m, uint64_t seed) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.alpha = 8;
    ap.seed = seed;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    tu_perturb(a, seed * 7 + 1, 0.2);
    return a;
}

/* sum_t w_t CE_t(logits * scale) through lt_forward_logp; its gradient from lt_backward_weighted */
static double weighted_loss(lt_model *m, lt_adapter *a, lt_workspace *ws, const float *w, float scale, int grad) {
    lt_error err;
    ck_assert_msg(lt_forward_logp(m, a, ws, NULL, scale, &err) == LT_OK, "%s", err.msg);
    double s = 0;
    for (int i = 0; i < ws->N; i++) s += (double)w[i] * ws->host_losses[i];
    if (grad) {
        m->be->ops->zero(m->be, a->grads, a->n_params * sizeof(float));
        ck_assert_msg(lt_backward_weighted(m, a, ws, NULL, scale, w, &err) == LT_OK, "%s", err.msg);
    }
    return s;
}

START_TEST(test_weighted_backward_fd) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = nonzero_adapter(m, 3);
    const int B = 2, T = 8, V = (int)m->cfg.vocab_size, N = B * T;
    int32_t ids[16];
    float w[16];
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)((i * 37 + 11) % V);
        w[i] = (i % T == T - 1) ? 0.0f : (float)((i % 5) - 2) * 0.7f; /* signed weights, like -d loss / d lp */
    }
    lt_batch b = tu_batch(ids, NULL, B, T);
    lt_workspace *ws = NULL;
    lt_error err;
    for (int ckpt = 0; ckpt < 2; ckpt++) {
        ck_assert_int_eq(lt_workspace_create(m, B, T, a->p.rank, ckpt, &ws, &err), LT_OK);
        int64_t nv;
        ck_assert_int_eq(lt_stage_batch(m, ws, &b, &nv, &err), LT_OK);
        const float scale = 1.0f / 0.7f; /* GRPO with temperature 0.7 */
        weighted_loss(m, a, ws, w, scale, 1);
        float *g = malloc(a->n_params * sizeof *g), *p = malloc(a->n_params * sizeof *p);
        m->be->ops->download(m->be, g, a->grads, a->n_params * sizeof *g);
        m->be->ops->download(m->be, p, a->params, a->n_params * sizeof *p);
        int checked = 0;
        for (size_t k = 0; k < 24; k++) {
            size_t i = (k * 7919 * 13 + 17) % a->n_params;
            const double h = 1e-2;
            const float orig = p[i];
            p[i] = orig + (float)h;
            m->be->ops->upload(m->be, a->params, p, a->n_params * sizeof *p);
            double lp = weighted_loss(m, a, ws, w, scale, 0);
            p[i] = orig - (float)h;
            m->be->ops->upload(m->be, a->params, p, a->n_params * sizeof *p);
            double lm = weighted_loss(m, a, ws, w, scale, 0);
            p[i] = orig;
            m->be->ops->upload(m->be, a->params, p, a->n_params * sizeof *p);
            double fd = (lp - lm) / (2 * h);
            ck_assert_msg(fabs(fd - g[i]) <= 2e-2 * fabs(fd) + 2e-3, "param %zu: analytic %.6g vs fd %.6g (ckpt %d)", i,
                          g[i], fd, ckpt);
            checked += fabs(fd) > 1e-3;
        }
        ck_assert_msg(checked >= 8, "too few probes with a visible gradient (%d)", checked);
        free(g);
        free(p);
        lt_workspace_free(ws);
    }
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* a small preference batch on llama-basic: 3 examples */
static const int32_t P_IDS[] = {5, 9, 14, 3, 77, 8}, P_LENS[] = {2, 3, 1};
static const int32_t C_IDS[] = {40, 41, 42, 7, 2, 99, 100}, C_LENS[] = {3, 2, 2};
static const int32_t R_IDS[] = {12, 2, 60, 61, 62, 63}, R_LENS[] = {2, 3, 1};
static const int32_t KTO_LAB[] = {1, 0, 1};

static void pref_batch(lt_pref_batch *b) {
    lt_pref_batch_init(b, sizeof *b);
    b->n_rows = 3;
    b->prompt_ids = P_IDS;
    b->prompt_lens = P_LENS;
    b->chosen_ids = C_IDS;
    b->chosen_lens = C_LENS;
    b->rejected_ids = R_IDS;
    b->rejected_lens = R_LENS;
    b->labels = KTO_LAB;
}

static lt_trainer *make_trainer(lt_model *m, lt_adapter *a, lt_optimizer **o, lt_objective obj, int G) {
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    ck_assert_int_eq(lt_optimizer_create(a, &op, o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.objective = obj;
    tp.num_generations = G;
    lt_trainer *t = NULL;
    ck_assert_msg(lt_trainer_create(m, a, *o, &tp, &t) == LT_OK, "%s", lt_last_error());
    return t;
}

START_TEST(test_preference_steps) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    lt_adapter *fresh = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &fresh), LT_OK);
    lt_optimizer *o = NULL;
    lt_trainer *t = make_trainer(m, fresh, &o, LT_OBJ_DPO, 8);
    lt_pref_batch b;
    pref_batch(&b);
    /* B = 0: the policy is the reference, Delta = 0, loss = log 2, rewards 0 */
    lt_step_result r = {.size = sizeof r};
    ck_assert_msg(lt_trainer_evaluate_preference(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert_msg(fabs(r.loss - log(2.0)) < 1e-7, "loss %.9g", r.loss);
    ck_assert(r.rewards_chosen == 0 && r.rewards_rejected == 0 && r.rewards_margins == 0);
    /* an SFT batch is refused */
    lt_batch sb = tu_batch(P_IDS, NULL, 1, 2);
    ck_assert_int_eq(lt_trainer_step(t, &sb, &r), LT_ERR_STATE);
    /* a step moves the rewards apart; precomputed reference log-probs give the same loss */
    ck_assert_msg(lt_trainer_step_preference(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert_int_eq(r.updated, 1);
    double rc[3], rr[3];
    ck_assert_int_eq(lt_trainer_reference_logps(t, &b, rc, rr, NULL), LT_OK);
    lt_step_result e1 = {.size = sizeof e1}, e2 = {.size = sizeof e2};
    ck_assert_int_eq(lt_trainer_evaluate_preference(t, &b, &e1), LT_OK);
    b.ref_chosen_logps = rc;
    b.ref_rejected_logps = rr;
    ck_assert_int_eq(lt_trainer_evaluate_preference(t, &b, &e2), LT_OK);
    ck_assert_msg(e1.loss == e2.loss, "%.9g vs %.9g", e1.loss, e2.loss);
    ck_assert_msg(e1.loss < log(2.0) && e1.rewards_margins > 0, "one DPO step did not lower the loss: %.9g", e1.loss);
    /* bad inputs */
    int32_t bad_lens[3] = {3, 0, 2};
    b.chosen_lens = bad_lens;
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_DATA);
    ck_assert_msg(strstr(lt_trainer_last_error(t), "empty"), "%s", lt_trainer_last_error(t));
    b.chosen_lens = C_LENS;
    int32_t bad_p[3] = {2, 0, 4};
    b.prompt_lens = bad_p;
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_DATA);
    b.prompt_lens = P_LENS;
    double nan_ref[3] = {NAN, 0, 0};
    b.ref_chosen_logps = nan_ref;
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_NUMERIC);
    ck_assert_int_eq(lt_grpo_step(t, (float[3]){0}, &r), LT_ERR_STATE);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    /* KTO and ORPO run and report their metrics; max_length is enforced */
    lt_adapter *a = nonzero_adapter(m, 5);
    t = make_trainer(m, a, &o, LT_OBJ_KTO, 8);
    pref_batch(&b);
    ck_assert_msg(lt_trainer_step_preference(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert(isfinite(r.loss) && isfinite(r.kl) && isfinite(r.rewards_chosen) && isnan(r.rewards_accuracies));
    b.n_rows = 1;
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_SHAPE);
    b.n_rows = 3;
    int32_t lab2[3] = {1, 2, 0};
    b.labels = lab2;
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_DATA);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.objective = LT_OBJ_ORPO;
    tp.max_length = 4;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    pref_batch(&b);
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_DATA); /* 3 + 2 > 4 */
    ck_assert_msg(strstr(lt_trainer_last_error(t), "max_length"), "%s", lt_trainer_last_error(t));
    lt_trainer_free(t);
    tp.max_length = 0;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    ck_assert_msg(lt_trainer_step_preference(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert(isfinite(r.loss) && r.loss > 0 && isfinite(r.rewards_accuracies));
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_adapter_free(fresh);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_grpo_bad_inputs) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = nonzero_adapter(m, 9);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.objective = LT_OBJ_GRPO;
    tp.num_generations = 1;
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_ERR_ARGUMENT); /* G < 2 */
    ck_assert_msg(strstr(lt_last_error(), "num_generations"), "%s", lt_last_error());
    tp.num_generations = 2;
    tp.max_length = 5;
    tp.kl_beta = 0.04f;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    float rewards[4] = {1, 0, 0.5f, 0.25f};
    lt_step_result r = {.size = sizeof r};
    ck_assert_int_eq(lt_grpo_step(t, rewards, &r), LT_ERR_STATE); /* no generation yet */
    int32_t prompts[8] = {3, 4, 5, 6, 7, 8, 9, 10}, lens[2] = {2, 0}, comp[4 * 3], clens[4];
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = 3;
    gp.temperature = 0.8f;
    ck_assert_int_eq(lt_grpo_generate(t, prompts, lens, 2, &gp, comp, clens), LT_ERR_DATA); /* empty prompt */
    lens[1] = 6;
    ck_assert_int_eq(lt_grpo_generate(t, prompts, lens, 2, &gp, comp, clens), LT_ERR_DATA); /* >= max_length */
    ck_assert_msg(strstr(lt_trainer_last_error(t), "max_length"), "%s", lt_trainer_last_error(t));
    lens[1] = 2;
    ck_assert_msg(lt_grpo_generate(t, prompts, lens, 2, &gp, comp, clens) == LT_OK, "%s", lt_trainer_last_error(t));
    for (int i = 0; i < 4; i++) ck_assert(clens[i] >= 1 && clens[i] <= 3);
    rewards[2] = NAN;
    ck_assert_int_eq(lt_grpo_step(t, rewards, &r), LT_ERR_NUMERIC);
    ck_assert_msg(strstr(lt_trainer_last_error(t), "reward 2"), "%s", lt_trainer_last_error(t));
    rewards[2] = 0.5f;
    ck_assert_msg(lt_grpo_step(t, rewards, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert(r.updated == 1 && isfinite(r.loss) && r.kl >= 0 && r.clip_fraction == 0);
    ck_assert(fabs(r.reward_mean - 0.4375) < 1e-9);
    ck_assert_int_eq(lt_grpo_step(t, rewards, &r), LT_ERR_STATE); /* the generation was consumed */
    lt_pref_batch b;
    pref_batch(&b);
    ck_assert_int_eq(lt_trainer_step_preference(t, &b, &r), LT_ERR_STATE);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_grpo_toy_learns) {
    double first = 0, last = 0;
    ck_assert_int_eq(grpo_toy_run(NULL, 20, 0, &first, &last), 0);
    ck_assert_msg(last >= first + 0.2, "mean reward did not rise: first 5 steps %.3f, last 5 steps %.3f", first, last);
}
END_TEST

/* the CLI: --objective on train and eval; JSON last line; bad rows name their problem */
START_TEST(test_cli_objectives) {
    char dir[256], path[512], cmd[4096], mdir[1024];
    tu_tempdir(dir, sizeof dir);
    tu_model_dir(mdir, sizeof mdir, "llama-basic");
    snprintf(path, sizeof path, "%s/pref.jsonl", dir);
    tu_write_text(path, "{\"prompt_ids\": [5, 9], \"chosen_ids\": [40, 41], \"rejected_ids\": [12]}\n"
                        "{\"prompt_ids\": [3], \"chosen_ids\": [7, 2], \"rejected_ids\": [60, 61, 62]}\n");
    snprintf(cmd, sizeof cmd, "%s eval --objective dpo --beta 0.5 --model %s --data %s --batch 2 --json", LT_CLI, mdir,
             path);
    int st;
    char *out = tu_run(cmd, &st);
    ck_assert_msg(st == 0, "%s", cmd);
    json_t *js = json_loads(tu_last_line(out), 0, NULL);
    ck_assert_msg(js && json_is_real(json_object_get(js, "loss")), "not a JSON last line: %s", out);
    /* no adapter: the policy is the base model, the reference too: loss log 2, margins 0 */
    ck_assert(fabs(json_real_value(json_object_get(js, "loss")) - log(2.0)) < 1e-6);
    ck_assert(json_object_get(js, "rewards/margins") && json_object_get(js, "rewards/accuracies"));
    json_decref(js);
    free(out);
    snprintf(cmd, sizeof cmd, "%s train --objective orpo --model %s --data %s --out %s/o --steps 2 --batch 2 --quiet",
             LT_CLI, mdir, path, dir);
    free(tu_run(cmd, &st));
    ck_assert_msg(st == 0, "%s", cmd);
    snprintf(path, sizeof path, "%s/o/metrics.jsonl", dir);
    ck_assert_int_eq(access(path, R_OK), 0);
    /* bad rows */
    snprintf(path, sizeof path, "%s/bad.jsonl", dir);
    tu_write_text(path, "{\"prompt_ids\": [5, 9], \"chosen_ids\": [40, 41]}\n");
    snprintf(cmd, sizeof cmd, "%s eval --objective ipo --model %s --data %s", LT_CLI, mdir, path);
    char *err = tu_run_stderr(cmd, &st);
    ck_assert_int_eq(st, 1);
    ck_assert_msg(strstr(err, "bad.jsonl:1") && strstr(err, "rejected_ids"), "%s", err);
    free(err);
    tu_write_text(path, "{\"prompt_ids\": [5], \"completion_ids\": [40, 41], \"label\": 1}\n");
    snprintf(cmd, sizeof cmd, "%s train --objective kto --model %s --data %s --out %s/k", LT_CLI, mdir, path, dir);
    err = tu_run_stderr(cmd, &st);
    ck_assert_int_eq(st, 1);
    ck_assert_msg(strstr(err, "label"), "%s", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s train --objective xpo --model %s --data %s --out %s/k", LT_CLI, mdir, path, dir);
    err = tu_run_stderr(cmd, &st);
    ck_assert_int_eq(st, 1);
    ck_assert_msg(strstr(err, "--objective"), "%s", err);
    free(err);
    tu_rm_rf(dir);
}
END_TEST

Suite *objectives_suite(void);

Suite *objectives_suite(void) {
    Suite *s = suite_create("objectives");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_grpo_arithmetic);
    tcase_add_test(tc, test_pair_and_kto_arithmetic);
    tcase_add_test(tc, test_weighted_backward_fd);
    tcase_add_test(tc, test_preference_steps);
    tcase_add_test(tc, test_grpo_bad_inputs);
    tcase_add_test(tc, test_grpo_toy_learns);
    tcase_add_test(tc, test_cli_objectives);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(objectives_suite)
