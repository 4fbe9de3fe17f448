/*
 * test_pissa.c - PiSSA / OLoRA initialisation (LT_INIT_PISSA, LT_INIT_OLORA): the adapter is the identity
 * at init, merge / export / save / load of the frozen-initial-factor form, finite differences through
 * the frozen term (with dropout), an NF4 base equals the f32 model of its dequantized weights, the CLI
 * (--init, resume from a checkpoint bit for bit) and the refusals. PEFT itself is the oracle of
 * tests/python/crosscheck_pissa.py.
 */
#include "decoder/decoder.h"
#include "formats/quant.h"
#include "loratune_experimental.h"
#include "test_util.h"

static lt_adapter *make(lt_model *m, lt_lora_init init, int rank, float alpha, float dropout, int rslora) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = rank;
    ap.alpha = alpha;
    ap.dropout = dropout;
    ap.use_rslora = rslora;
    ap.init = init;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    return a;
}

/* ---- identity at init; merge, export, save / load (with and without the sidecar) ------------------ */

static const struct {
    const char *model;
    lt_lora_init init;
    int rslora;
} cases[] = {
    {"llama-gqa", LT_INIT_PISSA, 0},
    {"llama-tied", LT_INIT_OLORA, 1},
    {"phi3", LT_INIT_PISSA, 1},
    {"phi3", LT_INIT_OLORA, 0},
};

START_TEST(test_identity_merge_save_load) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, cases[_i].model, NULL);
    lt_adapter *a = make(m, cases[_i].init, 4, 8, 0, cases[_i].rslora);
    const int T = 10, V = (int)m->cfg.vocab_size;
    int32_t ids[20];
    tu_fill_ids(ids, 20, V, 5);
    lt_batch b = tu_batch(ids, NULL, 2, T);
    size_t n = (size_t)2 * T * V;
    float *base = malloc(n * 4), *with = malloc(n * 4), *got = malloc(n * 4);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, base, n), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a, &b, with, n), LT_OK);
    /* A = A0, B = B0: the adapter is the identity (up to the rounding of x W^T - t + t) */
    ck_assert_msg(tu_max_rel_err(with, base, n) <= 1e-5, "init is not the identity: %g", tu_max_rel_err(with, base, n));
    /* the trainable factors are not zero (unlike the default init) */
    float *hp = tu_adapter_host_copy(a, a->params), *h0 = tu_adapter_host_copy(a, a->init0);
    ck_assert_int_eq(memcmp(hp, h0, a->n_params * 4), 0);
    double mx = 0;
    for (size_t i = 0; i < a->n_params; i++) mx = fmax(mx, fabs(hp[i]));
    ck_assert_msg(mx > 1e-2, "PiSSA/OLoRA factors are ~0 (%g)", mx);
    free(hp);
    free(h0);

    tu_perturb(a, 12345, 0.05);
    ck_assert_int_eq(lt_model_logits(m, a, &b, with, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(with, base, n) > 1e-3, "the perturbed adapter should change the logits");
    /* generation runs the same projections (the residual base W - s B0 A0 included) */
    int32_t gl[2] = {4, 7};
    tu_check_greedy(m, a, ids, gl, 2, 5, cases[_i].model);

    char tmp[512], dir[700];
    tu_tempdir(tmp, sizeof tmp);
    /* merged export: W + s (B A - B0 A0) */
    snprintf(dir, sizeof dir, "%s/merged", tmp);
    ck_assert_msg(lt_adapter_export_merged(a, dir, 0) == LT_OK, "%s", lt_adapter_last_error(a));
    lt_model *mm = NULL;
    ck_assert_int_eq(lt_model_load(ctx, dir, NULL, &mm), LT_OK);
    ck_assert_int_eq(lt_model_logits(mm, NULL, &b, got, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(got, with, n) <= 1e-5, "exported model differs: %g", tu_max_rel_err(got, with, n));
    lt_model_free(mm);
    /* merge in place and back */
    ck_assert_int_eq(lt_adapter_merge(a), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, got, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(got, with, n) <= 1e-5, "merged logits differ: %g", tu_max_rel_err(got, with, n));
    ck_assert_int_eq(lt_adapter_unmerge(a), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, got, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(got, base, n) <= 1e-5, "unmerge did not restore the base: %g",
                  tu_max_rel_err(got, base, n));

    /* save + load: the same trainable / frozen split, bit for bit */
    snprintf(dir, sizeof dir, "%s/adapter", tmp);
    ck_assert_int_eq(lt_adapter_save(a, dir), LT_OK);
    lt_adapter *c = NULL;
    ck_assert_msg(lt_adapter_load(m, dir, &c) == LT_OK, "%s", lt_last_error());
    lt_adapter_params pc = {.size = sizeof pc};
    lt_adapter_get_params(c, &pc);
    ck_assert_int_eq(pc.rank, 4);
    ck_assert_int_eq(pc.init, cases[_i].init);
    ck_assert_int_eq(pc.use_rslora, cases[_i].rslora);
    ck_assert(pc.alpha == 8.0f);
    ck_assert_uint_eq(c->n_params, a->n_params);
    ck_assert_int_eq(lt_adapter_n_params(c), lt_adapter_n_params(a));
    float *pa = tu_adapter_host_copy(a, a->params), *pb = tu_adapter_host_copy(c, c->params);
    float *qa = tu_adapter_host_copy(a, a->init0), *qb = tu_adapter_host_copy(c, c->init0);
    ck_assert_int_eq(memcmp(pa, pb, a->n_params * 4), 0);
    ck_assert_int_eq(memcmp(qa, qb, a->n_params * 4), 0);
    free(pa);
    free(pb);
    free(qa);
    free(qb);
    lt_adapter_free(c);
    /* without the sidecar the directory is a plain rank-2r LoRA with the same function */
    char side[800];
    snprintf(side, sizeof side, "%s/loratune_init.json", dir);
    ck_assert_int_eq(remove(side), 0);
    ck_assert_msg(lt_adapter_load(m, dir, &c) == LT_OK, "%s", lt_last_error());
    lt_adapter_get_params(c, &pc);
    ck_assert_int_eq(pc.rank, 8);
    ck_assert_int_eq(pc.init, LT_INIT_DEFAULT);
    ck_assert_ptr_null(c->init0);
    ck_assert_int_eq(lt_model_logits(m, c, &b, got, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(got, with, n) <= 1e-5, "the rank-2r LoRA differs: %g", tu_max_rel_err(got, with, n));
    /* saving that plain adapter into a directory with a stale sidecar removes the sidecar */
    ck_assert_int_eq(lt_adapter_save(a, dir), LT_OK);
    lt_adapter_free(c);
    ck_assert_int_eq(lt_adapter_load(m, dir, &c), LT_OK);
    lt_adapter_free(c);
    /* a sidecar that does not fit the config is refused */
    tu_write_text(
        side, "{\"format\": \"libloratune-init-1\", \"init_lora_weights\": \"pissa\", \"r\": 3, \"lora_alpha\": 8}");
    ck_assert_int_eq(lt_adapter_load(m, dir, &c), LT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "half"));
    tu_rm_rf(tmp);
    free(base);
    free(with);
    free(got);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- gradients through the frozen term ----------------------------------------------------------- */

/* central differences of the summed loss against the analytic gradient of A and B (A0, B0 fixed); the
 * second layer's frozen term carries the first layer's gradient (dx), and dropout only masks the
 * trainable path */
START_TEST(test_finite_differences) {
    const float dropout = _i ? 0.3f : 0.0f;
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = make(m, _i ? LT_INIT_OLORA : LT_INIT_PISSA, 4, 8, dropout, 0);
    tu_perturb(a, 12345, 0.1);
    const int B = 2, T = 9, V = (int)m->cfg.vocab_size;
    int32_t ids[18];
    tu_fill_ids(ids, B * T, V, 3);
    lt_batch b = tu_batch(ids, ids, B, T);
    lt_dropout_state drop = {dropout, 77, 0};
    tu_check_finite_differences(m, a, &b, &drop, _i ? "OLoRA" : "PiSSA");
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- NF4 base: the decomposition of the dequantized weights ---------------------------------------- */

START_TEST(test_nf4_equals_f32_of_dequantized) {
    lt_context *ctx = tu_context();
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = LT_QUANT_NF4;
    mp.double_quant = 1;
    lt_model *mq = tu_load_model(ctx, "llama-gqa", &mp);
    char tmp[512], path[600];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(path, sizeof path, "%s/deq", tmp);
    ck_assert_int_eq(lt_model_save(mq, path), LT_OK); /* the f32 model of the dequantized weights */
    lt_model *mf = NULL;
    ck_assert_int_eq(lt_model_load(ctx, path, NULL, &mf), LT_OK);
    for (int k = 0; k < 2; k++) {
        lt_lora_init init = k ? LT_INIT_OLORA : LT_INIT_PISSA;
        lt_adapter *aq = make(mq, init, 4, 8, 0, 0), *af = make(mf, init, 4, 8, 0, 0);
        float *hq = tu_adapter_host_copy(aq, aq->params), *hf = tu_adapter_host_copy(af, af->params);
        ck_assert_msg(tu_max_rel_err(hq, hf, aq->n_params) <= 1e-6, "init %d: factors differ by %g", k,
                      tu_max_rel_err(hq, hf, aq->n_params));
        free(hq);
        free(hf);
        tu_perturb(aq, 12345, 0.05);
        tu_perturb(af, 12345, 0.05);
        const int B = 2, T = 9, V = (int)mq->cfg.vocab_size;
        int32_t ids[18];
        tu_fill_ids(ids, B * T, V, 11);
        lt_batch b = tu_batch(ids, ids, B, T);
        double lq = tu_loss_and_grads(mq, aq, &b, LT_WS_CHECKPOINT, NULL, 1.0f, NULL),
               lf = tu_loss_and_grads(mf, af, &b, LT_WS_CHECKPOINT, NULL, 1.0f, NULL);
        ck_assert_msg(fabs(lq - lf) <= 1e-5 * fabs(lf), "init %d: loss %.9g vs %.9g", k, lq, lf);
        float *gq = tu_adapter_host_copy(aq, aq->grads), *gf = tu_adapter_host_copy(af, af->grads);
        ck_assert_msg(tu_max_rel_err(gq, gf, aq->n_params) <= 1e-4, "init %d: grads differ by %g", k,
                      tu_max_rel_err(gq, gf, aq->n_params));
        free(gq);
        free(gf);
        /* merged export from the quantized base = from the f32 twin */
        char e1[700], e2[700];
        snprintf(e1, sizeof e1, "%s/mq%d", tmp, k);
        snprintf(e2, sizeof e2, "%s/mf%d", tmp, k);
        ck_assert_int_eq(lt_adapter_export_merged(aq, e1, 0), LT_OK);
        ck_assert_int_eq(lt_adapter_export_merged(af, e2, 0), LT_OK);
        lt_model *m1, *m2;
        ck_assert_int_eq(lt_model_load(ctx, e1, NULL, &m1), LT_OK);
        ck_assert_int_eq(lt_model_load(ctx, e2, NULL, &m2), LT_OK);
        tu_expect_same_weight(m1, m2, 1, P_DOWN);
        lt_model_free(m1);
        lt_model_free(m2);
        lt_adapter_free(aq);
        lt_adapter_free(af);
    }
    lt_model_free(mq);
    lt_model_free(mf);
    tu_rm_rf(tmp);
    lt_context_free(ctx);
}
END_TEST

/* ---- refusals -------------------------------------------------------------------------------------- */

START_TEST(test_refusals) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter_params ap;
    lt_adapter *a = NULL;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.init = LT_INIT_PISSA;
    ap.use_dora = 1;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "DoRA"));
    ap.use_dora = 0;
    ap.rank = (int)m->cfg.hidden_size + 1; /* more than min(out, in) of some projection */
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "min(out, in)"));
    ap.rank = 4;
    ap.init = (lt_lora_init)4;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    ck_assert_ptr_null(a);
    /* PEFT's fast-SVD PiSSA cannot be reproduced: refused by name */
    ap.init = LT_INIT_DEFAULT;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    char tmp[512], cfg[700];
    tu_tempdir(tmp, sizeof tmp);
    ck_assert_int_eq(lt_adapter_save(a, tmp), LT_OK);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", tmp);
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "sed -i 's/\"init_lora_weights\": true/\"init_lora_weights\": \"pissa_niter_4\"/' %s",
             cfg);
    ck_assert_int_eq(system(cmd), 0);
    lt_adapter *c = NULL;
    ck_assert_int_eq(lt_adapter_load(m, tmp, &c), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "pissa_niter_4"));
    tu_rm_rf(tmp);
    lt_adapter_free(a);
    lt_model_free(m);
    /* a bf16 base is not read back: refused with the way out */
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = LT_BASE_BF16;
    m = tu_load_model(ctx, "llama-gqa", &mp);
    ap.init = LT_INIT_OLORA;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "LT_BASE_F32"));
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- CLI ------------------------------------------------------------------------------------------- */

/* --init pissa: the output is the converted adapter + sidecar; 4 updates straight == 2 + resume + 2 */
START_TEST(test_cli_init_and_resume) {
    char root[512], cmd[4096], a[1024], model[1024];
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-basic");
    const char *common = "--init pissa --batch 2 --lr 5e-3 --rank 4 --alpha 8 --dropout 0.1 --seed 3 --steps 4 "
                         "--threads 2 --quiet";
    tu_cli_resume_equals_straight(root, model, common, 2);
    snprintf(a, sizeof a, "%s/straight/adapter/loratune_init.json", root);
    FILE *f = fopen(a, "r");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(a, sizeof a, "%s/straight/adapter/adapter_config.json", root);
    snprintf(cmd, sizeof cmd, "grep -q '\"r\": 8' %s", a);
    ck_assert_int_eq(system(cmd), 0);
    int st;
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s/data.jsonl --out %s/bad --init svd --steps 1", LT_CLI,
             model, model, root);
    char *err = tu_run_stderr(cmd, &st);
    ck_assert_int_ne(st, 0);
    ck_assert_ptr_nonnull(strstr(err, "pissa"));
    free(err);
    tu_rm_rf(root);
}
END_TEST

static Suite *pissa_suite(void) {
    Suite *s = suite_create("pissa");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_identity_merge_save_load, 0, (int)(sizeof cases / sizeof *cases));
    tcase_add_loop_test(tc, test_finite_differences, 0, 2);
    tcase_add_test(tc, test_nf4_equals_f32_of_dequantized);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_cli_init_and_resume);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(pissa_suite)
