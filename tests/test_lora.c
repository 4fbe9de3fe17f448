/*
 * test_lora.c - LoRA training: gradients (finite differences, PyTorch+PEFT goldens), N AdamW steps vs
 * PyTorch, PEFT adapter files both ways, merge/unmerge, resume, packing, generation, bad inputs.
 *
 * Goldens: tests/python/make_lora_goldens.py writes LT_TEST_DATA_DIR/models/<name>/lora/ with an
 * adapter saved by peft (nonzero A and B), grads.safetensors (loss, logits and d(mean loss)/d(LoRA) from
 * torch autograd through PeftModel) and train.safetensors + train.json (6 AdamW updates with
 * accumulation 2, linear warmup schedule and clipping, run by torch.optim). Tolerance 1e-4 relative.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decoder/decoder.h"
#include "test_util.h"
#include "train/optimizer.h"

static lt_adapter *make_adapter(lt_model *m, int rank, float alpha, float dropout, unsigned targets, int gaussian_b) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = rank;
    ap.alpha = alpha;
    ap.dropout = dropout;
    ap.targets = targets;
    ap.seed = 7;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    if (gaussian_b) tu_perturb(a, 99, 0.2); /* B = 0 at init would hide half of the gradient paths */
    return a;
}

/* ---- finite differences ------------------------------------------------------------------------- */

static void check_finite_differences(float dropout, int packed) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, dropout, LT_TARGET_ALL, 1);
    const int B = 2, T = 9, V = (int)m->cfg.vocab_size;
    int32_t ids[18], labels[18], pos[18];
    tu_fill_ids(ids, B * T, V, 3);
    memcpy(labels, ids, sizeof ids);
    labels[4] = -100;
    for (int i = 0; i < B * T; i++) pos[i] = packed ? (i % T < 4 ? i % T : i % T - 4) : i % T;
    lt_batch b = tu_batch(ids, labels, B, T);
    b.position_ids = packed ? pos : NULL;
    lt_dropout_state drop = {dropout, 1234, 0};
    char what[64];
    snprintf(what, sizeof what, "dropout %g%s", dropout, packed ? ", packed" : "");
    tu_check_finite_differences(m, a, &b, &drop, what);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_fd_plain) { check_finite_differences(0.0f, 0); }
END_TEST
START_TEST(test_fd_dropout) { check_finite_differences(0.3f, 0); }
END_TEST
START_TEST(test_fd_packed) { check_finite_differences(0.0f, 1); }
END_TEST

/* checkpointing must not change anything: same loss and gradients bit for bit */
START_TEST(test_checkpointing_identical) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0.1f, LT_TARGET_ALL, 1);
    int32_t ids[40];
    tu_fill_ids(ids, 40, 257, 5);
    lt_batch b = tu_batch(ids, NULL, 2, 20);
    lt_dropout_state drop = {0.1f, 77, 0};
    double l1 = tu_loss_and_grads(m, a, &b, LT_WS_CHECKPOINT, &drop, 1.0f, NULL);
    float *g1 = tu_adapter_host_copy(a, a->grads);
    double l2 = tu_loss_and_grads(m, a, &b, LT_WS_FULL, &drop, 1.0f, NULL);
    float *g2 = tu_adapter_host_copy(a, a->grads);
    ck_assert(l1 == l2);
    ck_assert_int_eq(memcmp(g1, g2, a->n_params * sizeof(float)), 0);
    free(g1);
    free(g2);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* a packed row gives the same loss and gradients as its sequences in separate rows */
START_TEST(test_packing_equals_unpacked) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1);
    const int T = 15, lens[3] = {6, 5, 4};
    int32_t packed[15], ppos[15], plab[15], rows[45], rlab[45];
    tu_fill_ids(packed, T, 300, 11);
    for (int s = 0, o = 0; s < 3; o += lens[s], s++)
        for (int t = 0; t < lens[s]; t++) {
            ppos[o + t] = t;
            plab[o + t] = packed[o + t];
        }
    for (int s = 0, o = 0; s < 3; o += lens[s], s++)
        for (int t = 0; t < T; t++) {
            rows[s * T + t] = t < lens[s] ? packed[o + t] : 0;
            rlab[s * T + t] = t < lens[s] ? packed[o + t] : -100;
        }
    lt_batch bp = tu_batch(packed, plab, 1, T), bu = tu_batch(rows, rlab, 3, T);
    bp.position_ids = ppos;
    int64_t n1, n2;
    double l1 = tu_loss_and_grads(m, a, &bp, LT_WS_CHECKPOINT, NULL, 1.0f, &n1);
    float *g1 = tu_adapter_host_copy(a, a->grads);
    double l2 = tu_loss_and_grads(m, a, &bu, LT_WS_CHECKPOINT, NULL, 1.0f, &n2);
    float *g2 = tu_adapter_host_copy(a, a->grads);
    ck_assert_int_eq(n1, 12);
    ck_assert_int_eq(n2, 12);
    ck_assert_msg(fabs(l1 - l2) <= 1e-5 * fabs(l2), "packed loss %.8f vs separate %.8f", l1, l2);
    double rel = tu_max_rel_err(g1, g2, a->n_params);
    ck_assert_msg(rel <= 1e-5, "packed gradients differ from separate rows by %.3g", rel);
    free(g1);
    free(g2);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- merge, save/load, resume --------------------------------------------------------------------- */

START_TEST(test_merge_unmerge_export) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-tied", NULL);
    lt_adapter *a = make_adapter(m, 4, 16, 0, LT_TARGET_ALL, 1);
    const int T = 12, V = (int)m->cfg.vocab_size;
    int32_t ids[24];
    tu_fill_ids(ids, 24, V, 21);
    lt_batch b = tu_batch(ids, NULL, 2, T);
    size_t n = (size_t)2 * T * V;
    float *base = malloc(n * 4), *with = malloc(n * 4), *merged = malloc(n * 4), *after = malloc(n * 4);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, base, n), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a, &b, with, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(base, with, n) > 1e-3, "the adapter should change the logits");
    char dir[512];
    tu_tempdir(dir, sizeof dir);
    strcat(dir, "/merged");
    ck_assert_msg(lt_adapter_export_merged(a, dir, 0) == LT_OK, "%s", lt_adapter_last_error(a));
    ck_assert_int_eq(lt_adapter_merge(a), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, merged, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(merged, with, n) <= 1e-5, "merged logits differ: %g", tu_max_rel_err(merged, with, n));
    ck_assert_int_eq(lt_adapter_merge(a), LT_ERR_STATE);
    ck_assert_int_eq(lt_model_logits(m, a, &b, after, n), LT_ERR_STATE); /* merged adapter cannot be applied twice */
    ck_assert_int_eq(lt_adapter_unmerge(a), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, after, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(after, base, n) <= 1e-5, "unmerge did not restore the base: %g",
                  tu_max_rel_err(after, base, n));
    /* the exported directory is a plain HF model with the merged weights */
    lt_model *mm = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, NULL, &mm) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(lt_model_logits(mm, NULL, &b, merged, n), LT_OK);
    ck_assert_msg(tu_max_rel_err(merged, with, n) <= 1e-5, "exported model differs: %g",
                  tu_max_rel_err(merged, with, n));
    lt_model_free(mm);
    free(base);
    free(with);
    free(merged);
    free(after);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_save_load_roundtrip) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-headdim", NULL);
    lt_adapter *a = make_adapter(m, 3, 6, 0.05f, LT_TARGET_Q | LT_TARGET_V | LT_TARGET_DOWN, 1);
    char dir[512];
    tu_tempdir(dir, sizeof dir);
    ck_assert_int_eq(lt_adapter_save(a, dir), LT_OK);
    lt_adapter *b = NULL;
    ck_assert_msg(lt_adapter_load(m, dir, &b) == LT_OK, "%s", lt_last_error());
    lt_adapter_params pa = {.size = sizeof pa}, pb = {.size = sizeof pb};
    lt_adapter_get_params(a, &pa);
    lt_adapter_get_params(b, &pb);
    ck_assert_int_eq(pa.rank, pb.rank);
    ck_assert_uint_eq(pa.targets, pb.targets);
    ck_assert(fabsf(pa.alpha - pb.alpha) < 1e-6f && fabsf(pa.dropout - pb.dropout) < 1e-6f);
    ck_assert_uint_eq(a->n_params, b->n_params);
    float *ha = tu_adapter_host_copy(a, a->params), *hb = tu_adapter_host_copy(b, b->params);
    ck_assert_int_eq(memcmp(ha, hb, a->n_params * sizeof(float)), 0);
    free(ha);
    free(hb);
    lt_adapter_free(b);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* training 6 updates straight equals 3 + checkpoint + a fresh trainer resuming for 3, bit for bit */
static float *train_run(lt_context *ctx, const char *ckpt_dir, int phase) {
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0.2f, LT_TARGET_ALL, 0);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 5e-3f;
    op.weight_decay = 0.01f;
    op.schedule = LT_SCHED_COSINE;
    op.warmup_steps = 2;
    op.total_steps = 6;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.grad_accum = 2;
    tp.seed = 5;
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    int first, last;
    tu_resume_begin(t, o, ckpt_dir, phase, 6, &first, &last);
    int32_t ids[3 * 16];
    for (int step = first; step < last; step++)
        for (int k = 0; k < 2; k++) {
            tu_fill_ids(ids, 3 * 16, 257, (uint64_t)(100 + step * 2 + k));
            lt_batch b = tu_batch(ids, NULL, 3, 16);
            lt_step_result r = {.size = sizeof r};
            ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
            ck_assert_int_eq(r.updated, k == 1);
        }
    tu_resume_end(t, ckpt_dir, phase);
    float *p = tu_adapter_host_copy(a, a->params);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    return p;
}

START_TEST(test_resume_bit_exact) {
    lt_context *ctx = tu_context();
    char dir[512];
    tu_tempdir(dir, sizeof dir);
    strcat(dir, "/ckpt");
    float *straight = train_run(ctx, NULL, 0);
    float *first = train_run(ctx, dir, 1);
    float *resumed = train_run(ctx, dir, 2);
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0.2f, LT_TARGET_ALL, 0);
    size_t n = a->n_params;
    ck_assert_msg(memcmp(straight, first, n * 4) != 0, "the first half should differ from the full run");
    ck_assert_msg(memcmp(straight, resumed, n * 4) == 0, "resume is not bit-exact (max diff %g)",
                  tu_max_rel_err(resumed, straight, n));
    lt_adapter_free(a);
    lt_model_free(m);
    free(straight);
    free(first);
    free(resumed);
    lt_context_free(ctx);
}
END_TEST

/* ---- bad inputs leave everything as it was --------------------------------------------------------- */

START_TEST(test_bad_steps_leave_adapter) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 1e-2f;
    lt_optimizer *o = NULL;
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    float *before = tu_adapter_host_copy(a, a->params);
    int32_t ids[16], labels[16];
    tu_fill_ids(ids, 16, 257, 1);
    for (int i = 0; i < 16; i++) labels[i] = -100;
    lt_batch b = tu_batch(ids, labels, 2, 8);
    lt_step_result r = {.size = sizeof r};
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_ERR_DATA); /* all labels masked */
    ck_assert_ptr_nonnull(strstr(lt_trainer_last_error(t), "masked"));
    /* with accumulation, a masked micro-batch contributes nothing; an update with no token fails */
    {
        lt_optimizer *o2 = NULL;
        lt_trainer *t2 = NULL;
        lt_trainer_params tp2;
        lt_trainer_params_init(&tp2, sizeof tp2);
        tp2.grad_accum = 2;
        ck_assert_int_eq(lt_optimizer_create(a, &op, &o2), LT_OK);
        ck_assert_int_eq(lt_trainer_create(m, a, o2, &tp2, &t2), LT_OK);
        ck_assert_int_eq(lt_trainer_step(t2, &b, &r), LT_OK);       /* masked: accepted */
        ck_assert_int_eq(lt_trainer_step(t2, &b, &r), LT_ERR_DATA); /* the whole update is masked */
        float *mid = tu_adapter_host_copy(a, a->params);
        ck_assert_int_eq(memcmp(mid, before, a->n_params * 4), 0);
        ck_assert_int_eq(lt_optimizer_step_count(o2), 0);
        b.labels = NULL;
        ck_assert_int_eq(lt_trainer_step(t2, &b, &r), LT_OK); /* real tokens ... */
        b.labels = labels;
        ck_assert_int_eq(lt_trainer_step(t2, &b, &r), LT_OK); /* ... plus a masked one: update */
        ck_assert_int_eq(r.updated, 1);
        ck_assert_int_eq(lt_optimizer_step_count(o2), 1);
        m->be->ops->upload(m->be, a->params, before, a->n_params * 4); /* undo for the checks below */
        free(mid);
        lt_trainer_free(t2);
        lt_optimizer_free(o2);
    }
    b.labels = NULL;
    ids[3] = 9999;
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_ERR_DATA); /* id out of range */
    ids[3] = 3;
    b.n_rows = 0;
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_ERR_SHAPE); /* empty batch */
    b.n_rows = 2;
    /* a NaN in the adapter makes the loss NaN: the step fails and nothing is updated */
    float *poisoned = tu_adapter_host_copy(a, a->params);
    poisoned[5] = NAN;
    m->be->ops->upload(m->be, a->params, poisoned, a->n_params * 4);
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_ERR_NUMERIC);
    float *after = tu_adapter_host_copy(a, a->params);
    ck_assert_int_eq(memcmp(after, poisoned, a->n_params * 4), 0);
    ck_assert_int_eq(lt_optimizer_step_count(o), 0);
    m->be->ops->upload(m->be, a->params, before, a->n_params * 4);
    free(after);
    free(poisoned);
    after = tu_adapter_host_copy(a, a->params);
    ck_assert_int_eq(memcmp(after, before, a->n_params * 4), 0);
    ck_assert_int_eq(lt_trainer_step(t, &b, &r), LT_OK); /* and training goes on */
    ck_assert_int_eq(lt_optimizer_step_count(o), 1);
    free(after);
    free(before);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* write an adapter dir by hand: tensors of `src` minus/plus some, with the given config r */
static void tamper_adapter(const char *src, const char *dst, const char *drop_key, int add_extra, int config_r) {
    char a[1200], b[1200];
    mkdir(dst, 0755);
    snprintf(a, sizeof a, "%s/adapter_config.json", src);
    json_t *cfg = json_load_file(a, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    if (config_r > 0) json_object_set_new(cfg, "r", json_integer(config_r));
    snprintf(b, sizeof b, "%s/adapter_config.json", dst);
    ck_assert_int_eq(json_dump_file(cfg, b, 0), 0);
    json_decref(cfg);
    snprintf(a, sizeof a, "%s/adapter_model.safetensors", src);
    snprintf(b, sizeof b, "%s/adapter_model.safetensors", dst);
    lt_error err;
    lt_st_file *f = NULL;
    ck_assert_int_eq(lt_st_open(a, 1, &f, &err), LT_OK);
    int n = lt_st_count(f), k = 0;
    lt_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    for (int i = 0; i < n; i++) {
        const lt_st_tensor *t = &lt_st_tensors(f)[i];
        if (drop_key && !strcmp(t->name, drop_key)) continue;
        e[k].name = t->name;
        e[k].dtype = t->dtype;
        e[k].ndim = t->ndim;
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        e[k].data = t->data;
        k++;
    }
    if (add_extra) {
        e[k] = e[0];
        e[k].name = "base_model.model.lm_head.lora_A.weight";
        k++;
    }
    ck_assert_int_eq(lt_st_write(b, e, k, NULL, &err), LT_OK);
    free(e);
    lt_st_close(f);
}

START_TEST(test_bad_adapters) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL), *other = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1), *x = NULL;
    char root[512], good[600], bad[600];
    tu_tempdir(root, sizeof root);
    snprintf(good, sizeof good, "%s/good", root);
    ck_assert_int_eq(lt_adapter_save(a, good), LT_OK);
    /* an adapter for another model */
    lt_status st = lt_adapter_load(other, good, &x);
    ck_assert_msg(st == LT_ERR_SHAPE || st == LT_ERR_FORMAT, "got %s", lt_status_string(st));
    ck_assert_ptr_null(x);
    /* missing key */
    snprintf(bad, sizeof bad, "%s/missing", root);
    tamper_adapter(good, bad, "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight", 0, 0);
    ck_assert_int_eq(lt_adapter_load(m, bad, &x), LT_ERR_MISSING);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "layers.1.mlp.up_proj.lora_B"));
    /* extra key */
    snprintf(bad, sizeof bad, "%s/extra", root);
    tamper_adapter(good, bad, NULL, 1, 0);
    ck_assert_int_eq(lt_adapter_load(m, bad, &x), LT_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "lm_head"));
    /* rank mismatch between config and tensors */
    snprintf(bad, sizeof bad, "%s/rank", root);
    tamper_adapter(good, bad, NULL, 0, 8);
    ck_assert_int_eq(lt_adapter_load(m, bad, &x), LT_ERR_SHAPE);
    /* no adapter at all, bad JSON */
    ck_assert_int_eq(lt_adapter_load(m, root, &x), LT_ERR_MISSING);
    snprintf(bad, sizeof bad, "%s/rank/adapter_config.json", root);
    tu_write_text(bad, "{\"r\": 4,");
    snprintf(bad, sizeof bad, "%s/rank", root);
    ck_assert_int_eq(lt_adapter_load(m, bad, &x), LT_ERR_JSON);
    ck_assert_ptr_null(x);
    /* bad parameters */
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 0;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &x), LT_ERR_ARGUMENT);
    ap.rank = 4;
    ap.dropout = 1.0f;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &x), LT_ERR_ARGUMENT);
    lt_adapter_free(a);
    lt_model_free(other);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- generation --------------------------------------------------------------------------------- */

/* greedy generation with the KV cache equals argmax over full forward passes */
START_TEST(test_generate_greedy_matches_forward) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a = make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1);
    enum { NEW = 6 };
    int32_t prompts[9] = {5, 17, 33, 2, 250, 7, 8, 9, 10}, lens[2] = {3, 6};
    int32_t out[2 * NEW], out_lens[2];
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = NEW;
    gp.eos_token_id = -1;
    tu_check_greedy(m, a, prompts, lens, 2, NEW, "llama-gqa");
    /* sampling is deterministic for a seed (the sampler itself: test_sampler_matches_full_sort) */
    gp.temperature = 0.8f;
    gp.top_k = 5;
    gp.top_p = 0.9f;
    gp.seed = 3;
    int32_t o2[2 * NEW], l2[2];
    ck_assert_int_eq(lt_generate(m, a, prompts, lens, 2, &gp, out, out_lens), LT_OK);
    ck_assert_int_eq(lt_generate(m, a, prompts, lens, 2, &gp, o2, l2), LT_OK);
    ck_assert_int_eq(memcmp(out, o2, sizeof out), 0);
    gp.top_p = 0.0f;
    ck_assert_int_eq(lt_generate(m, a, prompts, lens, 2, &gp, out, out_lens), LT_ERR_ARGUMENT);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- the sampler: the selection gives the token of the plain full sort ------------------------------- */

typedef struct {
    float p;
    int32_t id;
} plain_cand;
static int plain_desc(const void *a, const void *b) {
    float x = ((const plain_cand *)a)->p, y = ((const plain_cand *)b)->p;
    if (x != y) return x < y ? 1 : -1;
    return ((const plain_cand *)a)->id - ((const plain_cand *)b)->id;
}

/* The method lt_sample_token replaces, as generate.c had it: every logit / temperature sorted by
 * decreasing probability (ties: lower id), top_k, the top_p prefix, u walking that order. */
static int32_t plain_sample(const float *logits, int V, float temperature, int top_k, float top_p, double u) {
    plain_cand *c = malloc((size_t)V * sizeof *c);
    for (int i = 0; i < V; i++) c[i] = (plain_cand){logits[i] / temperature, i};
    qsort(c, (size_t)V, sizeof *c, plain_desc);
    int n = top_k > 0 && top_k < V ? top_k : V;
    double mx = c[0].p, sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].p = (float)exp(c[i].p - mx);
        sum += c[i].p;
    }
    if (top_p > 0 && top_p < 1) {
        double cum = 0;
        int keep = 0;
        while (keep < n) {
            cum += c[keep].p / sum;
            keep++;
            if (cum >= top_p) break;
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].p;
    }
    double acc = 0;
    int32_t id = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u * sum < acc) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}

static int32_t argmax_of(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Random rows, flat to peaked, with ties (logits on a grid), V from 1 to 32000, top_k 0 to past V, top_p
 * tiny to 1, u anywhere in [0, 1) and at its ends: the same token as the plain method every time. */
START_TEST(test_sampler_matches_full_sort) {
    static const int Vs[] = {1, 2, 7, 300, 5000, 32000};
    static const int ks[] = {0, 1, 2, 5, 40, 100000};
    static const float ps[] = {1.0f, 0.9f, 0.5f, 0.05f, 1e-6f};
    static const float spreads[] = {0.01f, 1.0f, 4.0f, 30.0f};
    uint64_t seed = 99;
    int cases = 0, differ_from_argmax = 0;
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        const int V = Vs[vi];
        float *lg = malloc((size_t)V * sizeof *lg);
        lt_sample_cand *scratch = malloc((size_t)V * sizeof *scratch);
        const int reps = V >= 5000 ? 2 : 6;
        for (int rep = 0; rep < reps; rep++)
            for (size_t si = 0; si < sizeof spreads / sizeof *spreads; si++) {
                int32_t raw[1];
                for (int i = 0; i < V; i++) { /* a Gaussian-ish logit; every third row on a grid of 0.25 (ties) */
                    double g = 0;
                    for (int j = 0; j < 4; j++) {
                        tu_fill_ids(raw, 1, 1 << 20, seed++);
                        g += raw[0] / (double)(1 << 20) - 0.5;
                    }
                    lg[i] = (float)(spreads[si] * g);
                    if (rep % 3 == 2) lg[i] = roundf(lg[i] * 4) / 4;
                }
                for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
                    for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++) {
                        tu_fill_ids(raw, 1, 1 << 30, seed++);
                        double us[3] = {raw[0] / (double)(1 << 30), 0.0, 1.0 - 0x1p-53};
                        for (int ui = 0; ui < 3; ui++) {
                            const float temp = ui == 1 ? 0.7f : 1.0f;
                            int32_t got = lt_sample_token(lg, V, temp, ks[ki], ps[pi], us[ui], scratch);
                            int32_t want = plain_sample(lg, V, temp, ks[ki], ps[pi], us[ui]);
                            ck_assert_msg(got == want,
                                          "V %d spread %g top_k %d top_p %g u %.17g: sampled %d, the full sort %d", V,
                                          spreads[si], ks[ki], ps[pi], us[ui], got, want);
                            differ_from_argmax += got != lt_sample_token(lg, V, 0.0f, 0, 1.0f, 0.0, scratch);
                            cases++;
                        }
                    }
            }
        /* greedy is the first argmax; a non-finite logit is refused */
        ck_assert_int_eq(lt_sample_token(lg, V, 0.0f, 0, 1.0f, 0.5, scratch), argmax_of(lg, V));
        lg[V / 2] = NAN;
        ck_assert_int_eq(lt_sample_token(lg, V, 1.0f, 0, 1.0f, 0.5, scratch), -1);
        free(lg);
        free(scratch);
    }
    ck_assert_int_gt(differ_from_argmax, cases / 8); /* the rows do sample, not just take the argmax */
}
END_TEST

/* several adapters on one loaded base: each call picks one (or none), nothing is reloaded */
static int progress_calls, progress_updates;
static void on_progress(void *user, const lt_step_result *r) {
    (void)user;
    progress_calls++;
    progress_updates += r->updated;
}

START_TEST(test_hot_swap_and_progress) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a1 = make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1),
               *a2 = make_adapter(m, 2, 4, 0, LT_TARGET_Q | LT_TARGET_V, 1);
    const int T = 9, V = (int)m->cfg.vocab_size;
    int32_t ids[9];
    tu_fill_ids(ids, T, V, 4);
    lt_batch b = tu_batch(ids, NULL, 1, T);
    size_t n = (size_t)T * V;
    float *l0 = malloc(n * 4), *l1 = malloc(n * 4), *l2 = malloc(n * 4), *again = malloc(n * 4);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, l0, n), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a1, &b, l1, n), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a2, &b, l2, n), LT_OK);
    ck_assert(tu_max_rel_err(l1, l0, n) > 1e-3 && tu_max_rel_err(l2, l0, n) > 1e-3 && tu_max_rel_err(l1, l2, n) > 1e-3);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, again, n), LT_OK);
    ck_assert_int_eq(memcmp(again, l0, n * 4), 0); /* disabling is exact: the base is untouched */
    /* training a1 leaves a2 and the base as they were; the progress callback sees every call */
    lt_optimizer *o = NULL;
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_optimizer_create(a1, NULL, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.grad_accum = 2;
    ck_assert_int_eq(lt_trainer_create(m, a1, o, &tp, &t), LT_OK);
    lt_trainer_set_progress(t, on_progress, NULL);
    progress_calls = progress_updates = 0;
    for (int k = 0; k < 4; k++) ck_assert_int_eq(lt_trainer_step(t, &b, NULL), LT_OK);
    ck_assert_int_eq(progress_calls, 4);
    ck_assert_int_eq(progress_updates, 2);
    ck_assert_int_eq(lt_model_logits(m, a2, &b, again, n), LT_OK);
    ck_assert_int_eq(memcmp(again, l2, n * 4), 0);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, again, n), LT_OK);
    ck_assert_int_eq(memcmp(again, l0, n * 4), 0);
    ck_assert_int_eq(lt_model_logits(m, a1, &b, again, n), LT_OK);
    ck_assert(tu_max_rel_err(again, l1, n) > 0); /* a1 did train */
    free(l0);
    free(l1);
    free(l2);
    free(again);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a2);
    lt_adapter_free(a1);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* two threads train their own adapters on ONE shared model at the same time: each result equals the
 * same training run alone (docs/API.md: a loaded model may be shared read-only) */
typedef struct {
    lt_model *m;
    int seed;
    float *result;
    lt_status st;
} share_job;

static void *share_train(void *arg) {
    share_job *j = arg;
    lt_adapter *a = NULL;
    lt_optimizer *o = NULL;
    lt_trainer *t = NULL;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.seed = (uint64_t)j->seed;
    j->st = lt_adapter_create(j->m, &ap, &a);
    if (j->st == LT_OK) j->st = lt_optimizer_create(a, NULL, &o);
    if (j->st == LT_OK) j->st = lt_trainer_create(j->m, a, o, NULL, &t);
    int32_t ids[2 * 12];
    for (int step = 0; j->st == LT_OK && step < 4; step++) {
        tu_fill_ids(ids, 24, 257, (uint64_t)(j->seed * 100 + step));
        lt_batch b = tu_batch(ids, NULL, 2, 12);
        j->st = lt_trainer_step(t, &b, NULL);
        double s;
        int64_t n;
        if (j->st == LT_OK) j->st = lt_model_loss(j->m, a, &b, &s, &n); /* concurrent reads of the model */
    }
    if (j->st == LT_OK) j->result = tu_adapter_host_copy(a, a->params);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    return NULL;
}

START_TEST(test_shared_model_two_threads) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    cp.n_threads = 1;
    lt_context *ctx = NULL;
    ck_assert_int_eq(lt_context_create(&cp, &ctx), LT_OK);
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    share_job alone[2] = {{m, 1, NULL, LT_OK}, {m, 2, NULL, LT_OK}},
              both[2] = {{m, 1, NULL, LT_OK}, {m, 2, NULL, LT_OK}};
    share_train(&alone[0]);
    share_train(&alone[1]);
    pthread_t th[2];
    for (int k = 0; k < 2; k++) ck_assert_int_eq(pthread_create(&th[k], NULL, share_train, &both[k]), 0);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    lt_adapter *probe = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &probe), LT_OK);
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(alone[k].st == LT_OK && both[k].st == LT_OK, "%s", lt_status_string(both[k].st));
        ck_assert_msg(memcmp(alone[k].result, both[k].result, probe->n_params * 4) == 0,
                      "thread %d: concurrent training differs from the same run alone", k);
        free(alone[k].result);
        free(both[k].result);
    }
    lt_adapter_free(probe);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* two threads generate with their own adapters from ONE shared model (and a 2-thread context: the
 * kernels' OpenMP teams inside each call) at the same time: each result equals the same call alone */
typedef struct {
    lt_model *m;
    lt_adapter *a;
    int32_t out[2 * 8], lens[2];
    lt_status st;
} gen_job;

static void *gen_run(void *arg) {
    gen_job *j = arg;
    static const int32_t prompts[7] = {5, 17, 33, 2, 250, 7, 8}, plens[2] = {3, 4};
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = 8;
    gp.eos_token_id = -1;
    gp.temperature = 0.7f;
    gp.top_k = 20;
    gp.seed = 11;
    j->st = lt_generate(j->m, j->a, prompts, plens, 2, &gp, j->out, j->lens);
    return NULL;
}

START_TEST(test_shared_model_generate_threads) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-gqa", NULL);
    lt_adapter *a[2] = {make_adapter(m, 4, 8, 0, LT_TARGET_ALL, 1), make_adapter(m, 2, 4, 0, LT_TARGET_Q, 1)};
    gen_job alone[2] = {{.m = m, .a = a[0]}, {.m = m, .a = a[1]}}, both[2] = {{.m = m, .a = a[0]}, {.m = m, .a = a[1]}};
    gen_run(&alone[0]);
    gen_run(&alone[1]);
    pthread_t th[2];
    for (int k = 0; k < 2; k++) ck_assert_int_eq(pthread_create(&th[k], NULL, gen_run, &both[k]), 0);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(alone[k].st == LT_OK && both[k].st == LT_OK, "%s", lt_status_string(both[k].st));
        ck_assert_msg(!memcmp(alone[k].out, both[k].out, sizeof alone[k].out) &&
                          !memcmp(alone[k].lens, both[k].lens, sizeof alone[k].lens),
                      "thread %d: concurrent generation differs from the same call alone", k);
    }
    lt_adapter_free(a[0]);
    lt_adapter_free(a[1]);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- against PyTorch + PEFT (goldens from tests/python/make_lora_goldens.py) ------------------------ */

static const char *const golden_models[] = {"llama-basic", "llama-gqa", "llama-headdim", "llama-tied"};
#define N_GOLDEN 4

/* host pointer into `h` (a host copy of a->params or a->grads) for the PEFT key of (l, q, A/B) */
static const float *peft_slot(const lt_adapter *a, const float *h, const float *dev_base, int l, int q, int isB) {
    lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
    if (!lo) return NULL;
    const float *p = dev_base == a->params ? (isB ? lo->B : lo->A) : (isB ? lo->dB : lo->dA);
    return h + (p - dev_base);
}

/* compare every LoRA tensor of the adapter (params or grads) with "<prefix><peft key>" in f */
static void compare_lora_tensors(const lt_adapter *a, const float *dev_base, const lt_st_file *f, const char *prefix,
                                 double tol, const char *what) {
    float *h = tu_adapter_host_copy(a, dev_base);
    int n = 0;
    for (int l = 0; l < a->model->cfg.num_hidden_layers; l++)
        for (int q = 0; q < P_COUNT; q++)
            for (int isB = 0; isB < 2; isB++) {
                const float *mine = peft_slot(a, h, dev_base, l, q, isB);
                if (!mine) continue;
                char key[256];
                snprintf(key, sizeof key, "%sbase_model.model.model.layers.%d.%s.%s.lora_%c.weight", prefix, l,
                         lt_proj_parent[q], lt_proj_names[q], isB ? 'B' : 'A');
                const lt_st_tensor *t = lt_st_find(f, key);
                ck_assert_msg(t, "%s: golden %s missing", what, key);
                double rel = tu_max_rel_err(mine, t->data, (size_t)t->numel);
                ck_assert_msg(rel <= tol, "%s: %s differs by %.3g (tolerance %g)", what, key, rel, tol);
                n++;
            }
    ck_assert_msg(n > 0, "%s: nothing compared", what);
    free(h);
}

START_TEST(test_golden_peft_gradients) {
    const char *name = golden_models[_i];
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s: loading the adapter saved by peft: %s", name,
                  lt_last_error());
    snprintf(path, sizeof path, "%s/lora/grads.safetensors", dir);
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(path, 1, &g, &err) == LT_OK, "%s", err.msg);
    const int V = (int)m->cfg.vocab_size;
    for (int packed = 0; packed < 2; packed++) {
        const char *pre = packed ? "packed_" : "";
        char k[64];
        snprintf(k, sizeof k, "%sinput_ids", pre);
        const lt_st_tensor *ids = lt_st_find(g, k);
        snprintf(k, sizeof k, "%slabels", pre);
        const lt_st_tensor *lab = lt_st_find(g, k);
        snprintf(k, sizeof k, "%sposition_ids", pre);
        const lt_st_tensor *pos = lt_st_find(g, k);
        snprintf(k, sizeof k, "%sloss", pre);
        const lt_st_tensor *loss = lt_st_find(g, k);
        ck_assert(ids && lab && loss && (!packed || pos));
        lt_batch b = tu_batch(ids->data, NULL, (int)ids->shape[0], (int)ids->shape[1]);
        b.position_ids = packed ? pos->data : NULL;
        if (!packed) {
            const lt_st_tensor *ref = lt_st_find(g, "logits");
            size_t n = (size_t)b.n_rows * b.seq_len * V;
            float *out = malloc(n * 4);
            ck_assert_int_eq(lt_model_logits(m, a, &b, out, n), LT_OK);
            double rel = tu_max_rel_err(out, ref->data, n);
            ck_assert_msg(rel <= 1e-4, "%s: logits with the PEFT adapter differ by %.3g", name, rel);
            free(out);
        }
        b.labels = lab->data;
        for (int ckpt = 0; ckpt < 2; ckpt++) {
            int64_t nv;
            lt_workspace *ws = NULL;
            ck_assert_int_eq(lt_workspace_create(m, b.n_rows, b.seq_len, a->p.rank, ckpt, &ws, &err), LT_OK);
            ck_assert_int_eq(lt_stage_batch(m, ws, &b, &nv, &err), LT_OK);
            m->be->ops->zero(m->be, a->grads, a->n_params * 4);
            double sum;
            ck_assert_int_eq(lt_forward_backward(m, a, ws, NULL, 1.0f / (float)nv, &sum, NULL, &err), LT_OK);
            lt_workspace_free(ws);
            double want = *(const float *)loss->data;
            ck_assert_msg(fabs(sum / nv - want) <= 1e-4 * fabs(want), "%s: %sloss %.8f vs torch %.8f", name, pre,
                          sum / nv, want);
            char what[128];
            snprintf(what, sizeof what, "%s %sgradients (checkpointing %d)", name, pre, ckpt);
            compare_lora_tensors(a, a->grads, g, packed ? "packed_grad." : "grad.", 1e-4, what);
        }
    }
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_golden_adamw_training) {
    const char *name = golden_models[_i];
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s", lt_last_error());
    snprintf(path, sizeof path, "%s/lora/train.json", dir);
    json_t *js = json_load_file(path, 0, NULL);
    ck_assert_ptr_nonnull(js);
    json_t *oj = json_object_get(js, "optimizer");
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = (float)json_number_value(json_object_get(oj, "lr"));
    op.beta1 = (float)json_number_value(json_array_get(json_object_get(oj, "betas"), 0));
    op.beta2 = (float)json_number_value(json_array_get(json_object_get(oj, "betas"), 1));
    op.eps = (float)json_number_value(json_object_get(oj, "eps"));
    op.weight_decay = (float)json_number_value(json_object_get(oj, "weight_decay"));
    op.schedule = LT_SCHED_LINEAR;
    ck_assert_str_eq(json_string_value(json_object_get(oj, "schedule")), "linear");
    op.warmup_steps = json_integer_value(json_object_get(oj, "warmup_steps"));
    op.total_steps = json_integer_value(json_object_get(oj, "total_steps"));
    op.max_grad_norm = (float)json_number_value(json_object_get(oj, "max_grad_norm"));
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.grad_accum = (int)json_integer_value(json_object_get(js, "grad_accum"));
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    snprintf(path, sizeof path, "%s/lora/train.safetensors", dir);
    lt_error err;
    lt_st_file *f = NULL;
    ck_assert_int_eq(lt_st_open(path, 1, &f, &err), LT_OK);
    const lt_st_tensor *mi = lt_st_find(f, "micro_input_ids"), *ml = lt_st_find(f, "micro_labels");
    const int n_micro = (int)mi->shape[0], B = (int)mi->shape[1], T = (int)mi->shape[2];
    int upd = 0;
    for (int k = 0; k < n_micro; k++) {
        lt_batch b = tu_batch((const int32_t *)mi->data + (size_t)k * B * T,
                              (const int32_t *)ml->data + (size_t)k * B * T, B, T);
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
        if (!r.updated) continue;
        double lr = json_number_value(json_array_get(json_object_get(js, "lr"), upd));
        double loss = json_number_value(json_array_get(json_object_get(js, "loss"), upd));
        double gn = json_number_value(json_array_get(json_object_get(js, "grad_norm"), upd));
        ck_assert_msg(fabs(r.lr - lr) <= 1e-7 + 1e-6 * lr, "%s update %d: lr %g vs torch %g", name, upd, r.lr, lr);
        ck_assert_msg(fabs(r.loss - loss) <= 1e-4 * loss, "%s update %d: loss %.8f vs torch %.8f", name, upd, r.loss,
                      loss);
        ck_assert_msg(fabs(r.grad_norm - gn) <= 1e-4 * gn, "%s update %d: grad norm %.8f vs torch %.8f", name, upd,
                      r.grad_norm, gn);
        upd++;
    }
    ck_assert_int_eq(upd, (int)json_integer_value(json_object_get(js, "steps")));
    compare_lora_tensors(a, a->params, f, "final.", 1e-4, "weights after AdamW training");
    lt_st_close(f);
    json_decref(js);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* our adapter directory loads in PeftModel.from_pretrained with the same logits, and our merged export
 * loads in LlamaForCausalLM with the same logits (tests/python/check_peft_roundtrip.py) */
START_TEST(test_peft_loads_our_adapter) {
    const char *py = tu_ref_python();
    lt_context *ctx = tu_context();
    const char *names[] = {"llama-gqa", "llama-tied"};
    for (int k = 0; k < 2; k++) {
        lt_model *m = tu_load_model(ctx, names[k], NULL);
        lt_adapter *a = make_adapter(m, 4, 16, 0, k ? (LT_TARGET_Q | LT_TARGET_O | LT_TARGET_UP) : LT_TARGET_ALL, 1);
        if (k) a->p.use_rslora = 1, a->scaling = 16.0f / 2.0f;
        char root[512], adir[600], mdir[600], lpath[600], cmd[4096], base[1024];
        tu_tempdir(root, sizeof root);
        snprintf(adir, sizeof adir, "%s/adapter", root);
        snprintf(mdir, sizeof mdir, "%s/merged", root);
        snprintf(lpath, sizeof lpath, "%s/logits.safetensors", root);
        ck_assert_int_eq(lt_adapter_save(a, adir), LT_OK);
        ck_assert_int_eq(lt_adapter_export_merged(a, mdir, 0), LT_OK);
        const int B = 2, T = 10, V = (int)m->cfg.vocab_size;
        int32_t ids[20];
        tu_fill_ids(ids, B * T, V, 77);
        lt_batch b = tu_batch(ids, NULL, B, T);
        float *lg = malloc((size_t)B * T * V * 4);
        ck_assert_int_eq(lt_model_logits(m, a, &b, lg, (size_t)B * T * V), LT_OK);
        lt_st_entry e[2] = {{.name = "input_ids", .dtype = LT_DT_I32, .ndim = 2, .shape = {B, T}, .data = ids},
                            {.name = "logits", .dtype = LT_DT_F32, .ndim = 3, .shape = {B, T, V}, .data = lg}};
        lt_error err;
        ck_assert_int_eq(lt_st_write(lpath, e, 2, NULL, &err), LT_OK);
        free(lg);
        tu_model_dir(base, sizeof base, names[k]);
        snprintf(cmd, sizeof cmd,
                 "%s %s/tests/python/check_peft_roundtrip.py --model %s --adapter %s --logits %s "
                 "--merged %s --tol 1e-4 2>&1",
                 py, LT_SOURCE_DIR, base, adir, lpath, mdir);
        int status;
        char *out = tu_run_capture(cmd, &status, 0);
        ck_assert_msg(status == 0, "%s: PEFT/transformers rejected our files:\n%s", names[k], out);
        free(out);
        lt_adapter_free(a);
        lt_model_free(m);
    }
    lt_context_free(ctx);
}
END_TEST

Suite *lora_suite(void);

Suite *lora_suite(void) {
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_fd_plain);
    tcase_add_test(tc, test_fd_dropout);
    tcase_add_test(tc, test_fd_packed);
    tcase_add_test(tc, test_checkpointing_identical);
    tcase_add_test(tc, test_packing_equals_unpacked);
    tcase_add_test(tc, test_merge_unmerge_export);
    tcase_add_test(tc, test_save_load_roundtrip);
    tcase_add_test(tc, test_resume_bit_exact);
    tcase_add_test(tc, test_bad_steps_leave_adapter);
    tcase_add_test(tc, test_bad_adapters);
    tcase_add_test(tc, test_sampler_matches_full_sort);
    tcase_add_test(tc, test_hot_swap_and_progress);
    suite_add_tcase(s, tc);
    /* generation and threads: also run under ThreadSanitizer (tests/tsan.sh runs CK_RUN_CASE=threads) */
    tc = tcase_create("threads");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_generate_greedy_matches_forward);
    tcase_add_test(tc, test_shared_model_two_threads);
    tcase_add_test(tc, test_shared_model_generate_threads);
    suite_add_tcase(s, tc);
    TCase *gold = tcase_create("pytorch");
    tcase_set_timeout(gold, 600);
    tcase_add_loop_test(gold, test_golden_peft_gradients, 0, N_GOLDEN);
    tcase_add_loop_test(gold, test_golden_adamw_training, 0, N_GOLDEN);
    tcase_add_test(gold, test_peft_loads_our_adapter);
    suite_add_tcase(s, gold);
    return s;
}

TU_MAIN(lora_suite)
