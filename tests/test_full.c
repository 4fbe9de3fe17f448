/*
 * test_full.c - full fine-tuning and modules_to_save: weight gradients against finite differences
 * (embeddings with Gemma's scale, every kind of norm incl. (1 + w) ones, biases, lm_head tied and untied,
 * projections), bad requests, a failed step leaving the weights as they were, save/load and checkpoint
 * resume bit for bit.
 *
 * The models are make_models.py / make_family_models.py's (LT_TEST_DATA_DIR/models). The comparison with
 * PyTorch (N AdamW steps, decay groups, every tensor) is tests/python/crosscheck_full.py.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu/ref_ops.h"
#include "decoder/decoder.h"
#include "test_util.h"
#include "train/optimizer.h"

static lt_adapter *full_adapter(lt_model *m) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    return a;
}

static const lt_ptensor *find_tensor(const lt_adapter *a, const char *name) {
    for (int i = 0; i < a->n_ptensors; i++)
        if (!strcmp(a->ptensors[i].name, name)) return &a->ptensors[i];
    return NULL;
}

/* Central differences on a few elements of each named tensor (params perturbed, derived weights synced). */
static void check_fd(const char *model, const char *const *names, int mts) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, model, NULL);
    lt_adapter *a;
    if (mts) {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = 2;
        ap.targets = LT_TARGET_Q | LT_TARGET_V;
        ap.modules_to_save = LT_SAVE_EMBED_TOKENS | LT_SAVE_LM_HEAD;
        ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    } else {
        a = full_adapter(m);
    }
    const int B = 2, T = 7, V = (int)m->cfg.vocab_size, H = (int)m->cfg.hidden_size;
    int32_t ids[14];
    tu_fill_ids(ids, B * T, V, 11);
    lt_batch b = tu_batch(ids, NULL, B, T);
    tu_loss_and_grads(m, a, &b, LT_WS_CHECKPOINT, NULL, 1.0f, NULL);
    float *g = tu_adapter_host_copy(a, a->grads), *p = tu_adapter_host_copy(a, a->params);
    int visible = 0, probes = 0;
    for (int k = 0; names[k]; k++) {
        const lt_ptensor *t = find_tensor(a, names[k]);
        ck_assert_msg(t != NULL, "%s: no trained tensor %s", model, names[k]);
        for (int j = 0; j < 3; j++) {
            size_t e = (size_t)(j * 7919 + 13) % t->n;
            if (strstr(names[k], "embed_tokens")) e = (size_t)ids[3 * j + 1] * H + (size_t)(j * 5) % H; /* a used row */
            const size_t i = t->off + e;
            /* the embedding enters times embed_scale (Gemma: sqrt(hidden)): a step of the same effect */
            const double h = strstr(names[k], "embed_tokens") ? 1e-2 / m->cfg.embed_scale : 1e-2;
            const double fd = tu_central_difference(m, a, &b, NULL, p, i, h), tol = 2e-2 * fabs(fd) + 2e-3;
            ck_assert_msg(fabs(fd - g[i]) <= tol, "%s %s[%zu]: analytic %.6g vs finite difference %.6g", model,
                          names[k], e, g[i], fd);
            visible += fabs(fd) > 1e-2;
            probes++;
        }
    }
    ck_assert_msg(2 * visible >= probes, "%s: too few probes with a visible gradient (%d of %d)", model, visible,
                  probes);
    free(g);
    free(p);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_fd_llama_untied) {
    static const char *const n[] = {"model.embed_tokens.weight",
                                    "lm_head.weight",
                                    "model.norm.weight",
                                    "model.layers.0.input_layernorm.weight",
                                    "model.layers.1.post_attention_layernorm.weight",
                                    "model.layers.0.self_attn.k_proj.weight",
                                    "model.layers.1.mlp.down_proj.weight",
                                    NULL};
    check_fd("llama-basic", n, 0);
}
END_TEST

START_TEST(test_fd_qwen2_biases) {
    static const char *const n[] = {"model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias",
                                    "model.layers.0.self_attn.v_proj.bias", "model.embed_tokens.weight", NULL};
    check_fd("qwen2-tied", n, 0); /* tied: the embedding's gradient has the LM head's part too */
}
END_TEST

START_TEST(test_fd_qwen3_qk_norms) {
    static const char *const n[] = {"model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight",
                                    NULL};
    check_fd("qwen3", n, 0);
}
END_TEST

START_TEST(test_fd_gemma2) { /* (1 + w) norms incl. the sandwich ones, embedding scale, tied, soft-capping */
    static const char *const n[] = {"model.embed_tokens.weight",
                                    "model.norm.weight",
                                    "model.layers.0.input_layernorm.weight",
                                    "model.layers.0.pre_feedforward_layernorm.weight",
                                    "model.layers.1.post_attention_layernorm.weight",
                                    "model.layers.1.post_feedforward_layernorm.weight",
                                    NULL};
    check_fd("gemma2", n, 0);
}
END_TEST

START_TEST(test_fd_modules_to_save) { /* separate embed_tokens and lm_head copies next to a LoRA, tied model */
    static const char *const n[] = {"model.embed_tokens.weight", "lm_head.weight", NULL};
    check_fd("llama-tied", n, 1);
}
END_TEST

START_TEST(test_bad_requests) {
    lt_context *ctx = tu_context();
    lt_adapter_params ap;
    lt_adapter *a = NULL;
    /* quantized base */
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_quant_params qp;
    lt_quant_params_init(&qp, sizeof qp);
    lt_model *mq = tu_load_model(ctx, "llama-basic", NULL);
    ck_assert_int_eq(lt_model_quantize(mq, &qp), LT_OK);
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    ck_assert_int_eq(lt_adapter_create(mq, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(lt_last_error(), "quantized") != NULL, "%s", lt_last_error());
    ck_assert_ptr_null(a);
    /* modules_to_save works on a quantized base (the copies are f32) */
    lt_adapter_params_init(&ap, sizeof ap);
    ap.modules_to_save = LT_SAVE_LM_HEAD;
    ck_assert_msg(lt_adapter_create(mq, &ap, &a) == LT_OK, "%s", lt_last_error());
    lt_adapter_free(a);
    a = NULL;
    lt_model_free(mq);
    /* bf16 base */
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = LT_BASE_BF16;
    lt_model *mb = tu_load_model(ctx, "llama-basic", &mp);
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    ck_assert_int_eq(lt_adapter_create(mb, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(lt_last_error(), "bf16") != NULL, "%s", lt_last_error());
    lt_model_free(mb);
    /* unknown module, both at once, dropout, DoRA */
    lt_adapter_params_init(&ap, sizeof ap);
    ap.modules_to_save = 1u << 4;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    ck_assert_msg(strstr(lt_last_error(), "modules_to_save") != NULL, "%s", lt_last_error());
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    ap.modules_to_save = LT_SAVE_LM_HEAD;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    ap.modules_to_save = 0;
    ap.dropout = 0.1f;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(lt_last_error(), "dropout") != NULL, "%s", lt_last_error());
    ap.dropout = 0;
    ap.use_dora = 1;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    /* a full adapter is not merged in place; rank etc. are ignored */
    ap.use_dora = 0;
    ap.rank = -3;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(lt_adapter_merge(a), LT_ERR_UNSUPPORTED);
    ck_assert_int_eq(lt_adapter_n_params(a), m->n_params);
    /* a saved full model of another shape does not load as this model's adapter */
    char tmp[256], dir[512];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(dir, sizeof dir, "%s/full", tmp);
    ck_assert_msg(lt_adapter_save(a, dir) == LT_OK, "%s", lt_adapter_last_error(a));
    lt_model *other = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *b = NULL;
    ck_assert_int_eq(lt_adapter_load(other, dir, &b), LT_ERR_SHAPE);
    ck_assert_ptr_null(b);
    tu_rm_rf(tmp);
    lt_model_free(other);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* a NaN weight makes the step fail: nothing changes; the trained model survives save/load and a
 * checkpoint resumes bit for bit (Gemma: the (1 + w) norms are rebuilt from the loaded w) */
START_TEST(test_failed_step_and_resume) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "gemma", NULL);
    lt_adapter *a = full_adapter(m);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 1e-3f;
    op.weight_decay = 0.1f;
    lt_optimizer *o = NULL;
    lt_trainer *t = NULL;
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    const int V = (int)m->cfg.vocab_size;
    int32_t ids[16];
    tu_fill_ids(ids, 16, V, 2);
    lt_batch b = tu_batch(ids, NULL, 2, 8);
    lt_step_result r = {.size = sizeof r};
    float *poisoned = tu_adapter_host_copy(a, a->params);
    const float keep = poisoned[a->n_params - 3];
    poisoned[a->n_params - 3] = NAN; /* the final norm */
    m->be->ops->upload(m->be, a->params, poisoned, a->n_params * 4);
    lt_adapter_sync_weights(a);
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_ERR_NUMERIC);
    float *after = tu_adapter_host_copy(a, a->params);
    ck_assert_int_eq(memcmp(after, poisoned, a->n_params * 4), 0);
    ck_assert_int_eq(lt_optimizer_step_count(o), 0);
    poisoned[a->n_params - 3] = keep;
    m->be->ops->upload(m->be, a->params, poisoned, a->n_params * 4);
    lt_adapter_sync_weights(a);
    for (int s = 0; s < 2; s++) ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert_int_eq(lt_optimizer_step_count(o), 2);
    char tmp[256], ckpt[512];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt", tmp);
    ck_assert_msg(lt_trainer_save_checkpoint(t, ckpt) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert_msg(lt_trainer_save_checkpoint(t, ckpt) == LT_OK, "%s", lt_trainer_last_error(t)); /* replaces it */
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_OK);
    float *third = tu_adapter_host_copy(a, a->params);
    double loss3 = r.loss;
    /* a fresh adapter + trainer resumed from the checkpoint takes the same third step */
    lt_adapter *a2 = full_adapter(m);
    lt_optimizer *o2 = NULL;
    lt_trainer *t2 = NULL;
    ck_assert_int_eq(lt_optimizer_create(a2, &op, &o2), LT_OK);
    ck_assert_int_eq(lt_trainer_create(m, a2, o2, &tp, &t2), LT_OK);
    ck_assert_msg(lt_trainer_load_checkpoint(t2, ckpt) == LT_OK, "%s", lt_trainer_last_error(t2));
    ck_assert_int_eq(lt_trainer_step(t2, &b, &r), LT_OK);
    ck_assert(r.loss == loss3);
    float *resumed = tu_adapter_host_copy(a2, a2->params);
    ck_assert_int_eq(memcmp(resumed, third, a->n_params * 4), 0);
    /* generation reads the trained weights as every pass does (lt_view_*) */
    int32_t gl[2] = {3, 6};
    tu_check_greedy(m, a, ids, gl, 2, 5, "gemma, full fine-tuning");
    /* the saved directory is the trained model: its loss equals the adapter's */
    char out[512];
    snprintf(out, sizeof out, "%s/model", tmp);
    ck_assert_msg(lt_adapter_save(a, out) == LT_OK, "%s", lt_adapter_last_error(a));
    double l_ad, l_saved, l_base;
    int64_t n;
    ck_assert_int_eq(lt_model_loss(m, a, &b, &l_ad, &n), LT_OK);
    ck_assert_int_eq(lt_model_loss(m, NULL, &b, &l_base, &n), LT_OK);
    lt_model *ms = NULL;
    ck_assert_msg(lt_model_load(ctx, out, NULL, &ms) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(lt_model_loss(ms, NULL, &b, &l_saved, &n), LT_OK);
    ck_assert_msg(fabs(l_saved - l_ad) <= 1e-5 * fabs(l_ad), "saved %.9g vs adapter %.9g", l_saved, l_ad);
    ck_assert_msg(fabs(l_base - l_ad) > 1e-4 * fabs(l_ad), "training did not change the loss");
    lt_model_free(ms);
    tu_rm_rf(tmp);
    free(resumed);
    free(third);
    free(after);
    free(poisoned);
    lt_trainer_free(t2);
    lt_optimizer_free(o2);
    lt_adapter_free(a2);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* modules_to_save: generation reads the adapter's embedding and LM head (moved from the base's) */
START_TEST(test_generate_modules_to_save) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "qwen2-swa", NULL);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 2;
    ap.targets = LT_TARGET_Q | LT_TARGET_V;
    ap.modules_to_save = LT_SAVE_EMBED_TOKENS | LT_SAVE_LM_HEAD;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    float *p = tu_adapter_host_copy(a, a->params);
    uint64_t s = 7;
    for (size_t i = 0; i < a->n_params; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] += (float)((double)(s >> 40) / 16777216.0 - 0.5) * 0.2f;
    }
    m->be->ops->upload(m->be, a->params, p, a->n_params * sizeof *p);
    lt_adapter_sync_weights(a);
    int32_t ids[12], gl[2] = {5, 7};
    tu_fill_ids(ids, 12, (int)m->cfg.vocab_size, 4);
    tu_check_greedy(m, a, ids, gl, 2, 6, "qwen2-swa, modules_to_save");
    free(p);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* 8-bit AdamW over a full fine-tuning: one state tensor per weight, no decay on norms/biases */
START_TEST(test_adamw8bit_full) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "qwen2-tied", NULL);
    lt_adapter *a = full_adapter(m);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_ADAMW8BIT;
    op.lr = 1e-3f;
    op.weight_decay = 0.5f;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    ck_assert_int_eq(o->n_tensors, a->n_ptensors);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    float *before = tu_adapter_host_copy(a, a->params);
    /* zero gradients: the update is decay only, so the no-decay tensors do not move at all */
    m->be->ops->zero(m->be, a->grads, a->n_params * 4);
    double gn, lr;
    lt_error err;
    ck_assert_int_eq(lt_optimizer_update(o, &gn, &lr, &err), LT_OK);
    float *after = tu_adapter_host_copy(a, a->params);
    for (int i = 0; i < a->n_ptensors; i++) {
        const lt_ptensor *pt = &a->ptensors[i];
        int same = !memcmp(before + pt->off, after + pt->off, pt->n * 4);
        ck_assert_msg(same == !pt->decay, "%s: decay %d but %s", pt->name, pt->decay, same ? "unchanged" : "changed");
    }
    free(before);
    free(after);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

Suite *full_suite(void);

Suite *full_suite(void) {
    Suite *s = suite_create("full");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_fd_llama_untied);
    tcase_add_test(tc, test_fd_qwen2_biases);
    tcase_add_test(tc, test_fd_qwen3_qk_norms);
    tcase_add_test(tc, test_fd_gemma2);
    tcase_add_test(tc, test_fd_modules_to_save);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_failed_step_and_resume);
    tcase_add_test(tc, test_generate_modules_to_save);
    tcase_add_test(tc, test_adamw8bit_full);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(full_suite)
