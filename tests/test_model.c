/*
 * test_model.c - model loading and the forward pass against transformers' goldens, malformed model
 * directories, and the `loratune eval` / `info` commands.
 *
 * Goldens: tests/python/make_models.py writes tiny random LlamaForCausalLM checkpoints with
 * save_pretrained into LT_TEST_DATA_DIR/models/<name>/ with golden.safetensors (logits and losses from
 * transformers itself), data.jsonl and data_golden.json. Tolerance: 1e-4 relative (max abs error over
 * max abs reference for logits; relative error for losses).
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/safetensors.h"
#include "loratune.h"
#include "test_util.h"

static const char *const models[] = {"llama-basic", "llama-gqa",     "llama-tied", "llama-headdim",
                                     "llama-bf16",  "llama-sharded", "llama3-rope"};
#define N_MODELS ((int)(sizeof models / sizeof *models))

static void check_model(const char *name) {
    char dir[1024], gpath[1100];
    snprintf(dir, sizeof dir, "%s/models/%s", LT_TEST_DATA_DIR, name);
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    lt_context *ctx = tu_context();
    lt_model *m = NULL;
    lt_status st = lt_model_load(ctx, dir, NULL, &m);
    ck_assert_msg(st == LT_OK, "%s: %s", name, lt_last_error());
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(gpath, 1, &g, &err) == LT_OK, "%s", err.msg);
    lt_model_info info = {.size = sizeof info};
    ck_assert_int_eq(lt_model_get_info(m, &info), LT_OK);
    const int V = (int)info.vocab_size;

    for (int packed = 0; packed < 2; packed++) {
        const char *pre = packed ? "packed_" : "";
        char k_ids[64], k_lab[64], k_log[64], k_loss[64], k_pos[64], k_n[64];
        snprintf(k_ids, sizeof k_ids, "%sinput_ids", pre);
        snprintf(k_lab, sizeof k_lab, "%slabels", pre);
        snprintf(k_log, sizeof k_log, "%slogits", pre);
        snprintf(k_loss, sizeof k_loss, "%sloss", pre);
        snprintf(k_pos, sizeof k_pos, "%sposition_ids", pre);
        snprintf(k_n, sizeof k_n, "%sn_tokens", pre);
        const lt_st_tensor *ids = lt_st_find(g, k_ids), *lab = lt_st_find(g, k_lab), *ref = lt_st_find(g, k_log);
        const lt_st_tensor *loss = lt_st_find(g, k_loss), *pos = lt_st_find(g, k_pos), *ntok = lt_st_find(g, k_n);
        ck_assert_msg(ids && lab && ref && loss && ntok, "%s: golden tensors missing", name);
        ck_assert_msg(!packed || pos, "%s: packed_position_ids missing", name);
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = (int)ids->shape[0];
        b.seq_len = (int)ids->shape[1];
        b.input_ids = ids->data;
        b.position_ids = packed ? pos->data : NULL;
        size_t n = (size_t)b.n_rows * b.seq_len * V;
        ck_assert_int_eq((int64_t)n, ref->numel);
        float *out = malloc(n * sizeof *out);
        st = lt_model_logits(m, NULL, &b, out, n);
        ck_assert_msg(st == LT_OK, "%s: %s", name, lt_model_last_error(m));
        double rel = tu_max_rel_err(out, ref->data, n);
        ck_assert_msg(rel <= 1e-4, "%s %slogits: max error %.3g relative to max |ref| (tolerance 1e-4)", name, pre,
                      rel);
        free(out);
        b.labels = lab->data;
        double sum;
        int64_t tokens;
        st = lt_model_loss(m, NULL, &b, &sum, &tokens);
        ck_assert_msg(st == LT_OK, "%s: %s", name, lt_model_last_error(m));
        ck_assert_int_eq(tokens, *(const int32_t *)ntok->data);
        double want = *(const float *)loss->data, got = sum / (double)tokens;
        ck_assert_msg(fabs(got - want) <= 1e-4 * fabs(want), "%s %sloss %.8f vs transformers %.8f", name, pre, got,
                      want);
    }
    lt_st_close(g);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_golden_models) { check_model(models[_i]); }
END_TEST

/* ---- malformed model directories ------------------------------------------------------------------ */

/* A copy of llama-basic in a temp dir whose config.json is edited by `edit` (NULL: unchanged). */
static void copy_basic(char *out, size_t len, const char *config_edit_key, json_t *value) {
    char src[1024];
    snprintf(src, sizeof src, "%s/models/llama-basic", LT_TEST_DATA_DIR);
    tu_tempdir(out, len);
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    tu_copy_file(a, b);
    snprintf(a, sizeof a, "%s/config.json", src);
    json_t *cfg = json_load_file(a, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    if (config_edit_key) json_object_set_new(cfg, config_edit_key, value);
    snprintf(b, sizeof b, "%s/config.json", out);
    ck_assert_int_eq(json_dump_file(cfg, b, 0), 0);
    json_decref(cfg);
}

static lt_status load_status(const char *dir, char *msg, size_t len) {
    lt_context *ctx = tu_context();
    lt_model *m = NULL;
    lt_status st = lt_model_load(ctx, dir, NULL, &m);
    snprintf(msg, len, "%s", lt_last_error());
    if (st == LT_OK) ck_assert_ptr_nonnull(m);
    else ck_assert_ptr_null(m);
    lt_model_free(m);
    lt_context_free(ctx);
    return st;
}

START_TEST(test_unknown_architecture) {
    char dir[512], msg[1024];
    json_t *arch = json_array();
    json_array_append_new(arch, json_string("FalconForCausalLM"));
    copy_basic(dir, sizeof dir, "architectures", arch);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_ARCH);
    ck_assert_msg(strstr(msg, "FalconForCausalLM") && strstr(msg, "LlamaForCausalLM"), "message: %s", msg);
}
END_TEST

START_TEST(test_bad_config_json) {
    char dir[512], msg[1024], p[600];
    copy_basic(dir, sizeof dir, NULL, NULL);
    snprintf(p, sizeof p, "%s/config.json", dir);
    tu_write_text(p, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": ");
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_JSON);
    ck_assert_msg(strstr(msg, "config.json"), "message should name the file: %s", msg);
}
END_TEST

START_TEST(test_wrong_shape_from_config) {
    /* config says intermediate 192, the file holds 160 */
    char dir[512], msg[1024];
    copy_basic(dir, sizeof dir, "intermediate_size", json_integer(192));
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "gate_proj") || strstr(msg, "up_proj") || strstr(msg, "down_proj"), "message: %s", msg);
}
END_TEST

START_TEST(test_missing_tensor) {
    /* rewrite model.safetensors without layer 1's v_proj */
    char dir[512], msg[1024], p[600];
    copy_basic(dir, sizeof dir, NULL, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    lt_error err;
    lt_st_file *f = NULL;
    char src[1024];
    snprintf(src, sizeof src, "%s/models/llama-basic/model.safetensors", LT_TEST_DATA_DIR);
    ck_assert_int_eq(lt_st_open(src, 1, &f, &err), LT_OK);
    int n = lt_st_count(f), k = 0;
    lt_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        const lt_st_tensor *t = &lt_st_tensors(f)[i];
        if (!strcmp(t->name, "model.layers.1.self_attn.v_proj.weight")) continue;
        e[k].name = t->name;
        e[k].dtype = t->dtype;
        e[k].ndim = t->ndim;
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        e[k].data = t->data;
        k++;
    }
    ck_assert_int_eq(k, n - 1);
    ck_assert_int_eq(lt_st_write(p, e, k, NULL, &err), LT_OK);
    free(e);
    lt_st_close(f);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_MISSING);
    ck_assert_msg(strstr(msg, "model.layers.1.self_attn.v_proj.weight"), "message: %s", msg);
}
END_TEST

/* dir's model.safetensors loses its last 100 bytes: the load says LT_ERR_TRUNCATED */
static void check_truncated(const char *dir) {
    char msg[1024], p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    ck_assert_int_eq(truncate(p, sb.st_size - 100), 0);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_TRUNCATED);
}

START_TEST(test_truncated_weights) {
    char dir[512];
    copy_basic(dir, sizeof dir, NULL, NULL);
    check_truncated(dir);
}
END_TEST

START_TEST(test_no_weights) {
    char dir[512], msg[1024], p[600];
    copy_basic(dir, sizeof dir, NULL, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_MISSING);
}
END_TEST

/* gptoss-mxfp4 (make_moe_models.py: experts as MXFP4 blocks / scales) copied to a temp dir with layer 0's
 * gate_up_proj MXFP4 tensors altered: `drop` one of them left out, or `name` replaced by (dtype, shape, data),
 * or (scale_byte >= 0) its first scale set to that byte. */
static void copy_mxfp4(char *out, size_t len, const char *drop, const lt_st_entry *repl, int scale_byte) {
    char src[1024], a[1200], b[1200];
    snprintf(src, sizeof src, "%s/models/gptoss-mxfp4", LT_TEST_DATA_DIR);
    tu_tempdir(out, len);
    snprintf(a, sizeof a, "%s/config.json", src);
    snprintf(b, sizeof b, "%s/config.json", out);
    tu_copy_file(a, b);
    snprintf(a, sizeof a, "%s/model.safetensors", src);
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    lt_error err;
    lt_st_file *f = NULL;
    ck_assert_int_eq(lt_st_open(a, 1, &f, &err), LT_OK);
    const int n = lt_st_count(f);
    lt_st_entry *e = calloc((size_t)n, sizeof *e);
    void *patched = NULL;
    int k = 0;
    for (int i = 0; i < n; i++) {
        const lt_st_tensor *t = &lt_st_tensors(f)[i];
        if (drop && !strcmp(t->name, drop)) continue;
        e[k] = (lt_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        if (repl && !strcmp(t->name, repl->name)) e[k] = *repl;
        if (scale_byte >= 0 && !strcmp(t->name, "model.layers.0.mlp.experts.gate_up_proj_scales")) {
            patched = malloc((size_t)t->nbytes);
            memcpy(patched, t->data, (size_t)t->nbytes);
            ((unsigned char *)patched)[0] = (unsigned char)scale_byte;
            e[k].data = patched;
        }
        k++;
    }
    ck_assert_int_eq(lt_st_write(b, e, k, NULL, &err), LT_OK);
    free(patched);
    free(e);
    lt_st_close(f);
}

/* Hostile MXFP4 expert tensors (gpt-oss) give a clear status naming the tensor: a missing half of a pair, a
 * wrong dtype or shape, a scale past the float range (Inf weights), a truncated file. The intact copy loads. */
START_TEST(test_malformed_mxfp4) {
    char dir[512], msg[1024];
    static const char *const blocks = "model.layers.0.mlp.experts.gate_up_proj_blocks";
    copy_mxfp4(dir, sizeof dir, NULL, NULL, -1);
    ck_assert_msg(load_status(dir, msg, sizeof msg) == LT_OK, "%s", msg);
    copy_mxfp4(dir, sizeof dir, "model.layers.0.mlp.experts.gate_up_proj_scales", NULL, -1);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_MISSING);
    ck_assert_msg(strstr(msg, "model.layers.0.mlp.experts.gate_up_proj") && strstr(msg, "_scales"), "%s", msg);
    static const float f[16] = {0};
    lt_st_entry wrong = {.name = blocks, .dtype = LT_DT_F32, .ndim = 1, .shape = {16}, .data = f};
    copy_mxfp4(dir, sizeof dir, NULL, &wrong, -1);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "gate_up_proj") && strstr(msg, "MXFP4"), "%s", msg);
    static const unsigned char u[3 * 64 * 2 * 8] = {0}; /* half the groups per row: (3, 64, 2, 8) for (3, 64, 2, 16) */
    lt_st_entry narrow = {.name = blocks, .dtype = LT_DT_U8, .ndim = 4, .shape = {3, 64, 2, 8}, .data = u};
    copy_mxfp4(dir, sizeof dir, NULL, &narrow, -1);
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "gate_up_proj_blocks"), "%s", msg);
    copy_mxfp4(dir, sizeof dir, NULL, NULL, 255); /* 2^128: Inf */
    ck_assert_int_eq(load_status(dir, msg, sizeof msg), LT_ERR_NUMERIC);
    ck_assert_msg(strstr(msg, "gate_up_proj"), "%s", msg);
    copy_mxfp4(dir, sizeof dir, NULL, NULL, -1);
    check_truncated(dir);
}
END_TEST

START_TEST(test_bad_token_ids) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/llama-basic", LT_TEST_DATA_DIR);
    lt_context *ctx = tu_context();
    lt_model *m = NULL;
    ck_assert_int_eq(lt_model_load(ctx, dir, NULL, &m), LT_OK);
    int32_t ids[4] = {1, 2, 257, 3}, labels[4] = {1, 2, 3, -7};
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = 1;
    b.seq_len = 4;
    b.input_ids = ids;
    double s;
    int64_t n;
    ck_assert_int_eq(lt_model_loss(m, NULL, &b, &s, &n), LT_ERR_DATA);
    ck_assert_msg(strstr(lt_model_last_error(m), "257"), "%s", lt_model_last_error(m));
    ids[2] = 5;
    b.labels = labels;
    ck_assert_int_eq(lt_model_loss(m, NULL, &b, &s, &n), LT_ERR_DATA);
    labels[3] = -100;
    ck_assert_int_eq(lt_model_loss(m, NULL, &b, &s, &n), LT_OK);
    ck_assert_int_eq(n, 2);
    b.seq_len = 0;
    ck_assert_int_eq(lt_model_loss(m, NULL, &b, &s, &n), LT_ERR_SHAPE);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_api_basics) {
    ck_assert_uint_eq(lt_version_number(), LT_VERSION_NUMBER);
    ck_assert_str_eq(lt_version_string(), LT_VERSION_STRING);
    ck_assert_ptr_nonnull(strstr(lt_status_string(LT_ERR_FORMAT), "LT_ERR_FORMAT"));
    ck_assert_ptr_nonnull(lt_status_string((lt_status)999));
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "tpu";
    lt_context *ctx = NULL;
    ck_assert_int_eq(lt_context_create(&cp, &ctx), LT_ERR_BACKEND);
    ck_assert_ptr_null(ctx);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "tpu"));
    cp.backend = "cuda";
    if (!lt_backend_available("cuda")) {
        ck_assert_int_eq(lt_context_create(&cp, &ctx), LT_ERR_BACKEND);
        ck_assert_ptr_nonnull(strstr(lt_last_error(), "cuda"));
    }
    cp.backend = "cpu";
    cp.size = 3; /* a size no version of the struct ever had */
    ck_assert_int_eq(lt_context_create(&cp, &ctx), LT_ERR_ARGUMENT);
    ck_assert_int_eq(lt_model_load(NULL, "x", NULL, NULL), LT_ERR_ARGUMENT);
    lt_model_free(NULL);
    lt_context_free(NULL);
    lt_adapter_free(NULL);
}
END_TEST

/* ---- the command-line tool ------------------------------------------------------------------------ */

START_TEST(test_cli_eval_matches_golden) {
    char dir[1024], cmd[4096], gpath[1200];
    snprintf(dir, sizeof dir, "%s/models/%s", LT_TEST_DATA_DIR, models[_i]);
    snprintf(cmd, sizeof cmd, "%s eval --model %s --data %s/data.jsonl --json --batch 3", LT_CLI, dir, dir);
    char *out = tu_run(cmd, NULL);
    ck_assert_ptr_nonnull(out);
    const char *last = tu_last_line(out);
    json_t *got = json_loads(last, 0, NULL);
    ck_assert_msg(got, "last line is not JSON: %s", last);
    snprintf(gpath, sizeof gpath, "%s/data_golden.json", dir);
    json_t *want = json_load_file(gpath, 0, NULL);
    ck_assert_ptr_nonnull(want);
    double gl = json_number_value(json_object_get(got, "loss")), wl = json_number_value(json_object_get(want, "loss"));
    ck_assert_int_eq(json_integer_value(json_object_get(got, "tokens")),
                     json_integer_value(json_object_get(want, "tokens")));
    ck_assert_msg(fabs(gl - wl) <= 1e-4 * fabs(wl), "%s: eval loss %.8f vs %.8f", models[_i], gl, wl);
    json_decref(got);
    json_decref(want);
    free(out);
}
END_TEST

START_TEST(test_cli_errors) {
    char cmd[4096], dir[512], p[600];
    int status;
    snprintf(cmd, sizeof cmd, "%s eval --model /nonexistent --data /nonexistent.jsonl --json", LT_CLI);
    char *err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "/nonexistent.jsonl"), "stderr should name the file: %s", err);
    free(err);
    tu_tempdir(dir, sizeof dir);
    snprintf(p, sizeof p, "%s/bad.jsonl", dir);
    tu_write_text(p, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, \"x\"]}\n");
    snprintf(cmd, sizeof cmd, "%s eval --model %s/models/llama-basic --data %s", LT_CLI, LT_TEST_DATA_DIR, p);
    err = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(err, "bad.jsonl:2"), "stderr should name the file and line: %s", err);
    ck_assert_msg(strchr(err, '\n') == err + strlen(err) - 1, "one line expected: %s", err);
    free(err);
    snprintf(cmd, sizeof cmd, "%s info --model %s/models/llama-gqa --json", LT_CLI, LT_TEST_DATA_DIR);
    char *out = tu_run(cmd, NULL);
    json_t *j = json_loads(tu_last_line(out), 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "num_key_value_heads")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(j, "architecture")), "LlamaForCausalLM");
    json_decref(j);
    free(out);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("golden");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_golden_models, 0, N_MODELS);
    tcase_add_loop_test(tc, test_cli_eval_matches_golden, 0, N_MODELS);
    tcase_add_test(tc, test_cli_errors);
    suite_add_tcase(s, tc);
    TCase *bad = tcase_create("malformed");
    tcase_add_test(bad, test_unknown_architecture);
    tcase_add_test(bad, test_bad_config_json);
    tcase_add_test(bad, test_wrong_shape_from_config);
    tcase_add_test(bad, test_missing_tensor);
    tcase_add_test(bad, test_truncated_weights);
    tcase_add_test(bad, test_no_weights);
    tcase_add_test(bad, test_malformed_mxfp4);
    tcase_add_test(bad, test_bad_token_ids);
    tcase_add_test(bad, test_api_basics);
    suite_add_tcase(s, bad);
    return s;
}

TU_MAIN(suite)
