/*
 * test_train_cli.c - schedules and SGD against their formulas, and `loratune train` end to end:
 * outputs, resume from a CLI checkpoint equal to a straight run, packing, bad data.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "train/optimizer.h"

/* transformers' schedule lambdas, transcribed from docs/spec/algorithms.md in double */
static double ref_lambda(int kind, long s, long W, long T) {
    if (s < W) return (double)s / (double)(W > 1 ? W : 1);
    if (kind == LT_SCHED_CONSTANT) return 1.0;
    if (kind == LT_SCHED_LINEAR) return fmax(0.0, (double)(T - s) / (double)(T - W > 1 ? T - W : 1));
    double prog = (double)(s - W) / (double)(T - W > 1 ? T - W : 1);
    return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 2.0 * 0.5 * prog)));
}

START_TEST(test_schedules) {
    const int kinds[] = {LT_SCHED_CONSTANT, LT_SCHED_LINEAR, LT_SCHED_COSINE};
    for (int k = 0; k < 3; k++)
        for (long W = 0; W <= 7; W += 7)
            for (long s = 0; s <= 40; s++) {
                lt_optimizer_params p;
                lt_optimizer_params_init(&p, sizeof p);
                p.schedule = (lt_schedule)kinds[k];
                p.warmup_steps = W;
                p.total_steps = 40;
                ck_assert_msg(fabs(lt_schedule_lambda(&p, s) - ref_lambda(kinds[k], s, W, 40)) < 1e-12,
                              "kind %d W %ld s %ld", kinds[k], W, s);
            }
    /* warmup_ratio: W = ceil(T * ratio) */
    lt_optimizer_params p;
    lt_optimizer_params_init(&p, sizeof p);
    p.schedule = LT_SCHED_LINEAR;
    p.total_steps = 10;
    p.warmup_ratio = 0.25f; /* ceil(2.5) = 3 */
    ck_assert(fabs(lt_schedule_lambda(&p, 2) - 2.0 / 3.0) < 1e-12);
    ck_assert(fabs(lt_schedule_lambda(&p, 3) - 1.0) < 1e-12);
}
END_TEST

/* SGD with momentum and weight decay against torch.optim.SGD's update written out by hand */
START_TEST(test_sgd_momentum) {
    lt_context *ctx = tu_context();
    char dir[1024];
    tu_model_dir(dir, sizeof dir, "llama-basic");
    lt_model *m = NULL;
    ck_assert_int_eq(lt_model_load(ctx, dir, NULL, &m), LT_OK);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 2;
    ap.targets = LT_TARGET_Q;
    lt_adapter *a = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_SGD;
    op.lr = 0.1f;
    op.momentum = 0.9f;
    op.weight_decay = 0.01f;
    op.max_grad_norm = 0;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    const size_t n = a->n_params;
    double *p = malloc(n * sizeof *p), *buf = calloc(n, sizeof *buf);
    float *h = malloc(n * 4), *g = malloc(n * 4);
    m->be->ops->download(m->be, h, a->params, n * 4);
    for (size_t i = 0; i < n; i++) p[i] = h[i];
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < n; i++) g[i] = (float)sin(0.37 * (double)i + step);
        m->be->ops->upload(m->be, a->grads, g, n * 4);
        double gn, lr;
        lt_error err;
        ck_assert_int_eq(lt_optimizer_update(o, &gn, &lr, &err), LT_OK);
        for (size_t i = 0; i < n; i++) { /* torch: d = g + wd p; buf = mu buf + d (buf = d first); p -= lr buf */
            double d = g[i] + 0.01 * p[i];
            buf[i] = step == 0 ? d : 0.9 * buf[i] + d;
            p[i] -= 0.1 * buf[i];
        }
    }
    m->be->ops->download(m->be, h, a->params, n * 4);
    for (size_t i = 0; i < n; i++) ck_assert_msg(fabs(h[i] - p[i]) <= 1e-5 * (1 + fabs(p[i])), "param %zu", i);
    /* optimizer state round trip, and a mismatched state file is refused */
    char tmp[512], path[600];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(path, sizeof path, "%s/opt.bin", tmp);
    ck_assert_int_eq(lt_optimizer_save(o, path), LT_OK);
    lt_optimizer *o2 = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o2), LT_OK);
    ck_assert_int_eq(lt_optimizer_load(o2, path), LT_OK);
    ck_assert_int_eq(lt_optimizer_step_count(o2), 3);
    op.kind = LT_OPT_ADAMW;
    lt_optimizer *o3 = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o3), LT_OK);
    ck_assert_int_eq(lt_optimizer_load(o3, path), LT_ERR_SHAPE);
    ck_assert_int_eq(truncate(path, 40), 0);
    ck_assert_int_eq(lt_optimizer_load(o2, path), LT_ERR_TRUNCATED);
    lt_optimizer_free(o3);
    lt_optimizer_free(o2);
    free(p);
    free(buf);
    free(h);
    free(g);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- the CLI ------------------------------------------------------------------------------------- */

START_TEST(test_cli_train_resume_equals_straight) {
    char root[512], a[1024], model[1024];
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-basic");
    const char *common = "--batch 3 --grad-accum 2 --lr 5e-3 --scheduler cosine --warmup 2 --rank 4 --dropout 0.1 "
                         "--seed 9 --steps 6 --threads 2 --quiet";
    tu_cli_resume_equals_straight(root, model, common, 3);
    /* the outputs a user expects */
    const char *files[] = {"adapter/adapter_config.json", "metrics.jsonl", "loss.svg", "checkpoint-3/optimizer.bin",
                           "checkpoint-final/trainer_state.json"};
    for (int i = 0; i < 5; i++) {
        snprintf(a, sizeof a, "%s/straight/%s", root, files[i]);
        ck_assert_msg(access(a, R_OK) == 0, "missing %s", a);
    }
    snprintf(a, sizeof a, "%s/straight/metrics.jsonl", root);
    char *metrics = tu_slurp(a, NULL), *line = metrics;
    int lines = 0;
    for (char *nl; (nl = strchr(line, '\n')); line = nl + 1, lines++) {
        *nl = 0;
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(j && json_is_number(json_object_get(j, "loss")), "metrics line %d: %s", lines, line);
        json_decref(j);
    }
    ck_assert_int_eq(lines, 6);
    free(metrics);
    snprintf(a, sizeof a, "%s/straight/loss.svg", root);
    char *svg = tu_slurp(a, NULL);
    ck_assert_ptr_nonnull(strstr(svg, "<svg"));
    ck_assert_ptr_nonnull(strstr(svg, "<polyline"));
    free(svg);
}
END_TEST

/* --optimizer adamw8bit: rank 64 puts every LoRA tensor of llama-basic above bitsandbytes' 4096-element
 * threshold (8-bit state); the checkpoint carries the codes, so resuming is bit for bit */
START_TEST(test_cli_train_adamw8bit_resume) {
    char root[512], cmd[4096], model[1024];
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-basic");
    const char *common = "--optimizer adamw8bit --batch 3 --lr 5e-3 --weight-decay 0.01 --scheduler cosine "
                         "--warmup 1 --rank 64 --seed 9 --steps 4 --threads 2 --quiet";
    tu_cli_resume_equals_straight(root, model, common, 2);
    int status;
    /* resuming an 8-bit checkpoint with the fp32 optimizer is refused */
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/wrong --batch 3 --rank 64 --steps 4 "
             "--quiet --resume %s/straight/checkpoint-2",
             LT_CLI, model, model, root, root);
    char *out = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(out, "AdamW8bit") != NULL, "%s", out);
    free(out);
}
END_TEST

/* --method full (with 8-bit AdamW too): --out is a Hugging Face model directory that loads as a model,
 * the checkpoint (a model directory + optimizer state) resumes bit for bit; --modules-to-save writes PEFT's
 * keys next to the LoRA; bad combinations are refused */
START_TEST(test_cli_train_full) {
    char root[512], cmd[4096], a[1024], b[1024], model[1024];
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-basic");
    for (int k = 0; k < 2; k++) {
        char common[512];
        snprintf(common, sizeof common,
                 "--method full %s --batch 3 --lr 1e-3 --weight-decay 0.1 --seed 9 --steps 4 "
                 "--threads 2 --quiet",
                 k ? "--optimizer adamw8bit" : "");
        int status;
        snprintf(cmd, sizeof cmd, "%s train --model %s --data %s/data.jsonl --out %s/straight%d %s --save-every 2",
                 LT_CLI, model, model, root, k, common);
        free(tu_run(cmd, &status));
        ck_assert_int_eq(status, 0);
        snprintf(cmd, sizeof cmd,
                 "%s train --model %s --data %s/data.jsonl --out %s/resumed%d %s --resume "
                 "%s/straight%d/checkpoint-2",
                 LT_CLI, model, model, root, k, common, root, k);
        free(tu_run(cmd, &status));
        ck_assert_int_eq(status, 0);
        snprintf(a, sizeof a, "%s/straight%d/model/model.safetensors", root, k);
        snprintf(b, sizeof b, "%s/resumed%d/model/model.safetensors", root, k);
        ck_assert_msg(tu_same_file(a, b),
                      "full fine-tuning (%d): resuming from checkpoint-2 did not reproduce the "
                      "straight run",
                      k);
        snprintf(a, sizeof a, "%s/straight%d/model/config.json", root, k);
        ck_assert_msg(access(a, R_OK) == 0, "missing %s", a);
        snprintf(a, sizeof a, "%s/straight%d/checkpoint-2/optimizer.bin", root, k);
        ck_assert_msg(access(a, R_OK) == 0, "missing %s", a);
    }
    /* the trained directory is a model: eval on it differs from the base */
    int status;
    snprintf(cmd, sizeof cmd, "%s eval --model %s/straight0/model --data %s/data.jsonl --json", LT_CLI, root, model);
    char *o1 = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    snprintf(cmd, sizeof cmd, "%s eval --model %s --data %s/data.jsonl --json", LT_CLI, model, model);
    char *o2 = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    ck_assert_msg(strcmp(o1, o2) != 0, "the fine-tuned model evaluates like the base: %s", o1);
    free(o1);
    free(o2);
    /* modules_to_save */
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/mts --rank 4 --steps 2 --quiet "
             "--modules-to-save lm_head,embed_tokens",
             LT_CLI, model, model, root);
    free(tu_run(cmd, &status));
    ck_assert_int_eq(status, 0);
    snprintf(a, sizeof a, "%s/mts/adapter/adapter_config.json", root);
    char *cfg = tu_slurp(a, NULL);
    ck_assert_msg(strstr(cfg, "\"lm_head\"") && strstr(cfg, "\"embed_tokens\""), "%s", cfg);
    free(cfg);
    /* refused */
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/bad --method full "
             "--modules-to-save lm_head --steps 1 --quiet",
             LT_CLI, model, model, root);
    char *err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "modules-to-save") != NULL, "%s", err);
    free(err);
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/bad --modules-to-save norm "
             "--steps 1 --quiet",
             LT_CLI, model, model, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "embed_tokens,lm_head") != NULL, "%s", err);
    free(err);
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/bad --method full --quant nf4 "
             "--steps 1 --quiet",
             LT_CLI, model, model, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    free(err);
    tu_rm_rf(root);
}
END_TEST

START_TEST(test_cli_train_learns_packed_and_json) {
    char root[512], cmd[4096], model[1024];
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-gqa");
    for (int pack = 0; pack < 2; pack++) {
        snprintf(cmd, sizeof cmd,
                 "%s train --model %s --data %s/data.jsonl --eval-data %s/data.jsonl --out %s/run%d "
                 "--batch 2 --seq 64 --lr 1e-2 --epochs 6 --rank 8 --json %s",
                 LT_CLI, model, model, model, root, pack, pack ? "--pack" : "");
        char *out = tu_run(cmd, NULL);
        json_t *j = json_loads(tu_last_line(out), 0, NULL);
        ck_assert_msg(j, "last line is not JSON: %s", out);
        double eval_loss = json_number_value(json_object_get(j, "eval_loss"));
        json_decref(j);
        free(out);
        /* base loss on this data is ~7 (data_golden.json); training on it must bring it well down */
        snprintf(cmd, sizeof cmd, "%s eval --model %s --data %s/data.jsonl --json", LT_CLI, model, model);
        out = tu_run(cmd, NULL);
        j = json_loads(tu_last_line(out), 0, NULL);
        double base = json_number_value(json_object_get(j, "loss"));
        json_decref(j);
        free(out);
        ck_assert_msg(eval_loss < 0.5 * base, "pack=%d: eval loss %.3f did not fall well below the base %.3f", pack,
                      eval_loss, base);
        snprintf(cmd, sizeof cmd, "%s eval --model %s --data %s/data.jsonl --adapter %s/run%d/adapter --json", LT_CLI,
                 model, model, root, pack);
        out = tu_run(cmd, NULL);
        j = json_loads(tu_last_line(out), 0, NULL);
        ck_assert_msg(fabs(json_number_value(json_object_get(j, "loss")) - eval_loss) <= 1e-5 * eval_loss,
                      "eval --adapter disagrees with the trainer's eval");
        json_decref(j);
        free(out);
    }
}
END_TEST

START_TEST(test_cli_train_bad_inputs) {
    char root[512], cmd[4096], p[600], model[1024];
    int status;
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "llama-basic");
    snprintf(p, sizeof p, "%s/empty.jsonl", root);
    tu_write_text(p, "\n\n");
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s --out %s/o", LT_CLI, model, p, root);
    char *err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "empty.jsonl") && strstr(err, "no rows"), "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/masked.jsonl", root);
    tu_write_text(p, "{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, -100]}\n");
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s --out %s/o --steps 2", LT_CLI, model, p, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "masked"), "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/range.jsonl", root);
    tu_write_text(p, "{\"input_ids\": [1, 2, 99999]}\n");
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s --out %s/o --steps 2", LT_CLI, model, p, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "99999"), "%s", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s/data.jsonl --out %s/o --scheduler weird", LT_CLI, model,
             model, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "--scheduler"), "%s", err);
    free(err);
    /* --adapter-init with another model's adapter is refused */
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s/data.jsonl --out %s/o --steps 1 --quiet", LT_CLI, model,
             model, root);
    free(tu_run(cmd, NULL));
    snprintf(cmd, sizeof cmd,
             "%s train --model %s/models/llama-gqa --data %s/data.jsonl --out %s/o2 --adapter-init %s/o/adapter",
             LT_CLI, LT_TEST_DATA_DIR, model, root, root);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "adapter_model.safetensors"), "%s", err);
    free(err);
}
END_TEST

/* --targets is parsed by one function for every command that creates a LoRA: Phi-3's fused module
 * names (qkv_proj, gate_up_proj) are accepted by SFT and by the preference objectives alike (DPO once
 * rejected them: each command had its own copy of the parser), the adapter targets exactly those
 * modules, and an unknown name is refused with the same message everywhere. */
START_TEST(test_cli_targets_every_objective) {
    char root[512], cmd[4096], sft[600], pref[600], model[1024], path[700];
    int status;
    tu_tempdir(root, sizeof root);
    tu_model_dir(model, sizeof model, "phi3");
    snprintf(sft, sizeof sft, "%s/sft.jsonl", root);
    tu_write_text(sft, "{\"input_ids\": [5, 9, 40, 41, 12]}\n{\"input_ids\": [3, 7, 2, 60]}\n");
    snprintf(pref, sizeof pref, "%s/pref.jsonl", root);
    tu_write_text(pref, "{\"prompt_ids\": [5, 9], \"chosen_ids\": [40, 41], \"rejected_ids\": [12]}\n"
                        "{\"prompt_ids\": [3], \"chosen_ids\": [7, 2], \"rejected_ids\": [60, 61, 62]}\n");
    static const char *const objectives[] = {"sft", "dpo"};
    for (int i = 0; i < 2; i++) {
        const char *data = i == 0 ? sft : pref;
        snprintf(cmd, sizeof cmd,
                 "%s train --objective %s --model %s --data %s --out %s/%s --targets qkv_proj "
                 "--rank 2 --steps 1 --batch 2 --quiet",
                 LT_CLI, objectives[i], model, data, root, objectives[i]);
        char *err = tu_run_stderr(cmd, &status);
        ck_assert_msg(status == 0, "%s: %s", cmd, err);
        free(err);
        snprintf(path, sizeof path, "%s/%s/adapter/adapter_config.json", root, objectives[i]);
        char *conf = tu_slurp(path, NULL);
        ck_assert_msg(strstr(conf, "\"qkv_proj\"") && !strstr(conf, "\"o_proj\"") && !strstr(conf, "gate_up_proj"),
                      "%s", conf);
        free(conf);
        snprintf(cmd, sizeof cmd,
                 "%s train --objective %s --model %s --data %s --out %s/bad --targets qkv_proj,wq "
                 "--steps 1 --quiet",
                 LT_CLI, objectives[i], model, data, root);
        err = tu_run_stderr(cmd, &status);
        ck_assert_int_eq(status, 1);
        ck_assert_msg(strstr(err, "--targets") && strstr(err, "qkv_proj,o_proj,gate_up_proj"), "%s", err);
        free(err);
    }
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_schedules);
    tcase_add_test(tc, test_sgd_momentum);
    tcase_add_test(tc, test_cli_train_resume_equals_straight);
    tcase_add_test(tc, test_cli_train_adamw8bit_resume);
    tcase_add_test(tc, test_cli_train_full);
    tcase_add_test(tc, test_cli_train_learns_packed_and_json);
    tcase_add_test(tc, test_cli_train_bad_inputs);
    tcase_add_test(tc, test_cli_targets_every_objective);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(suite)
