/*
 * test_optim8.c - bitsandbytes' blockwise 8-bit AdamW (LT_OPT_ADAMW8BIT).
 *
 * - code books equal bitsandbytes' create_dynamic_map(signed=True / False), byte for byte;
 * - the backend op (reference and CPU backend) reproduces, bit for bit (tolerance 0), the parameters,
 *   codes and absmax of tests/python/make_optim8_goldens.py (the kernel's algorithm with bitsandbytes'
 *   code books; the script states why the bytes are not its CPU path's and checks it against it);
 * - lt_optimizer keeps per-tensor state (blocks start at each LoRA A / B, fp32 below 4096 elements);
 * - a short training run learns, and a checkpoint resumes bit for bit; state files and memory.
 */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "test_util.h"
#include "model.h"
#include "optimizer.h"
#include "quant.h"
#include "ref_ops.h"
#include "safetensors.h"

#define GOLDEN_DIR LT_TEST_DATA_DIR "/optim8"

static const lt_st_tensor *need(const lt_st_file *f, const char *name) {
    const lt_st_tensor *t = lt_st_find(f, name);
    ck_assert_msg(t != NULL, "%s: tensor %s missing", lt_st_path(f), name);
    return t;
}

static void expect_bytes(const char *cs, const char *what, const void *ours, const void *theirs, size_t n) {
    const uint8_t *a = ours, *b = theirs;
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(a[i] == b[i], "%s: %s differs from the golden at byte %zu (ours 0x%02x, golden 0x%02x)", cs,
                      what, i, a[i], b[i]);
}

static const char *cases[] = {"blocks_tail", "exact_blocks", "large", "nonfinite", "zero_block", "small_fp32"};

START_TEST(test_code_books) {
    char path[1024];
    snprintf(path, sizeof path, "%s/blocks_tail.safetensors", GOLDEN_DIR);
    lt_st_file *f;
    lt_error err;
    ck_assert_msg(lt_st_open(path, 0, &f, &err) == LT_OK, "%s", err.msg);
    expect_bytes("qmap", "signed dynamic map", lt_quant_code8(), need(f, "qmap1")->data, 256 * 4);
    expect_bytes("qmap", "unsigned dynamic map", lt_quant_code8u(), need(f, "qmap2")->data, 256 * 4);
    lt_st_close(f);
}
END_TEST

/* which = 0: the reference op; 1: the CPU backend's op */
static void run_goldens(int which) {
    lt_context *ctx = tu_context();
    lt_backend *be = ctx->be;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.safetensors", GOLDEN_DIR, cases[c]);
        lt_st_file *f;
        lt_error err;
        ck_assert_msg(lt_st_open(path, 0, &f, &err) == LT_OK, "%s", err.msg);
        lt_optimizer_params p;
        lt_optimizer_params_init(&p, sizeof p);
        p.lr = strtof(lt_st_metadata(f, "lr"), NULL);
        p.beta1 = strtof(lt_st_metadata(f, "beta1"), NULL);
        p.beta2 = strtof(lt_st_metadata(f, "beta2"), NULL);
        p.eps = strtof(lt_st_metadata(f, "eps"), NULL);
        p.weight_decay = strtof(lt_st_metadata(f, "weight_decay"), NULL);
        const int steps = atoi(lt_st_metadata(f, "steps"));
        const lt_st_tensor *p0 = need(f, "p0"), *g = need(f, "g");
        const size_t n = (size_t)p0->numel, nb = (n + 255) / 256;
        ck_assert_int_eq(g->numel, (int64_t)n * steps);
        const int q8 = n >= LT_OPT8_MIN_SIZE;
        float *par = malloc(n * 4), *s1f = calloc(n, 4), *s2f = calloc(n, 4);
        uint8_t *c1 = calloc(n, 1), *c2 = calloc(n, 1);
        float *a1 = calloc(nb, 4), *a2 = calloc(nb, 4);
        memcpy(par, p0->data, n * 4);
        for (int t = 1; t <= steps; t++) {
            float ss, ec, dec;
            lt_opt8_constants(&p, p.lr, t, &ss, &ec, &dec);
            const float *gt = (const float *)g->data + (size_t)(t - 1) * n;
            void *x1 = q8 ? (void *)c1 : (void *)s1f, *x2 = q8 ? (void *)c2 : (void *)s2f;
            float *m1 = q8 ? a1 : NULL, *m2 = q8 ? a2 : NULL;
            if (which == 0)
                lt_ref_adamw8bit_step(par, gt, x1, x2, m1, m2, n, lt_quant_code8(), lt_quant_code8u(), p.beta1,
                                      p.beta2, ec, ss, dec);
            else
                be->ops->adamw8bit_step(be, par, gt, x1, x2, m1, m2, n, lt_quant_code8(), lt_quant_code8u(),
                                        p.beta1, p.beta2, ec, ss, dec);
        }
        expect_bytes(cases[c], "parameters", par, need(f, "p")->data, n * 4);
        if (q8) {
            expect_bytes(cases[c], "state1 (m codes)", c1, need(f, "state1")->data, n);
            expect_bytes(cases[c], "state2 (v codes)", c2, need(f, "state2")->data, n);
            expect_bytes(cases[c], "absmax1", a1, need(f, "absmax1")->data, nb * 4);
            expect_bytes(cases[c], "absmax2", a2, need(f, "absmax2")->data, nb * 4);
        } else {
            expect_bytes(cases[c], "m", s1f, need(f, "m")->data, n * 4);
            expect_bytes(cases[c], "v", s2f, need(f, "v")->data, n * 4);
        }
        free(par); free(s1f); free(s2f); free(c1); free(c2); free(a1); free(a2);
        lt_st_close(f);
    }
    lt_context_free(ctx);
}

START_TEST(test_goldens_ref) { run_goldens(0); }
END_TEST

START_TEST(test_goldens_cpu_backend) { run_goldens(1); }
END_TEST

/* ---- the optimizer over an adapter ----------------------------------------------------------------- */

static lt_model *load_model(lt_context *ctx) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/llama-basic", LT_TEST_DATA_DIR);
    lt_model *m = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, NULL, &m) == LT_OK, "%s", lt_last_error());
    return m;
}

static lt_adapter *make_adapter(lt_model *m, int rank) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = rank;
    ap.alpha = 2.0f * rank;
    ap.targets = LT_TARGET_ALL;
    ap.seed = 7;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    return a;
}

static float lcg_gauss(uint64_t *s) {
    double u = 0;
    for (int k = 0; k < 4; k++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        u += (double)(*s >> 11) / 9007199254740992.0;
    }
    return (float)(u - 2.0);
}

/* rank 32 on llama-basic (H 64, I 160): q/k/v/o A and B and the gate/up A have 2048 elements (fp32 state),
 * gate/up B and down A 5120 (8-bit, 20 blocks each); every tensor must step as the reference op on it alone */
START_TEST(test_optimizer_per_tensor) {
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx);
    lt_adapter *a = make_adapter(m, 32);
    lt_backend *be = m->be;
    const size_t n = a->n_params;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_ADAMW8BIT;
    op.lr = 1e-3f;
    op.weight_decay = 0.01f;
    op.max_grad_norm = 0;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    ck_assert_int_gt((long)o->n_q8, 0);
    ck_assert_int_gt((long)o->n_f32, 0);
    ck_assert_uint_eq(o->n_q8 + o->n_f32, n);
    float *ref = malloc(n * 4), *g = malloc(n * 4), *mine = malloc(n * 4);
    be->ops->download(be, ref, a->params, n * 4);
    /* reference state, per tensor, in the same order */
    uint8_t *c1 = calloc(n, 1), *c2 = calloc(n, 1);
    float *am1 = calloc(n, 4), *am2 = calloc(n, 4), *fm = calloc(n, 4), *fv = calloc(n, 4);
    uint64_t seed = 3;
    for (int t = 1; t <= 4; t++) {
        for (size_t i = 0; i < n; i++) g[i] = lcg_gauss(&seed) * (i % 3 ? 1e-3f : 3e-2f);
        be->ops->upload(be, a->grads, g, n * 4);
        double gn, lr;
        lt_error err;
        ck_assert_msg(lt_optimizer_update(o, &gn, &lr, &err) == LT_OK, "%s", err.msg);
        float ss, ec, dec;
        lt_opt8_constants(&op, op.lr, t, &ss, &ec, &dec);
        for (int k = 0; k < o->n_tensors; k++) {
            const lt_opt8_tensor *tn = &o->tensors[k];
            if (tn->q8) /* absmax is indexed by the tensor's first element (one per 256) */
                lt_ref_adamw8bit_step(ref + tn->off, g + tn->off, c1 + tn->off, c2 + tn->off, am1 + tn->off,
                                      am2 + tn->off, tn->n, lt_quant_code8(), lt_quant_code8u(), op.beta1, op.beta2,
                                      ec, ss, dec);
            else
                lt_ref_adamw8bit_step(ref + tn->off, g + tn->off, fm + tn->off, fv + tn->off, NULL, NULL, tn->n, NULL,
                                      NULL, op.beta1, op.beta2, ec, ss, dec);
        }
        be->ops->download(be, mine, a->params, n * 4);
        ck_assert_msg(memcmp(mine, ref, n * 4) == 0, "step %d: parameters differ from the per-tensor reference", t);
    }
    /* the optimizer's codes are the reference's, tensor by tensor */
    uint8_t *oc = malloc(o->n_q8 ? o->n_q8 : 1);
    be->ops->download(be, oc, o->c1, o->n_q8);
    for (int k = 0; k < o->n_tensors; k++) {
        const lt_opt8_tensor *tn = &o->tensors[k];
        if (tn->q8) ck_assert(memcmp(oc + tn->qoff, c1 + tn->off, tn->n) == 0);
    }
    free(oc);
    free(ref); free(g); free(mine); free(c1); free(c2); free(am1); free(am2); free(fm); free(fv);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- training: learns, and resumes bit for bit ---------------------------------------------------- */

static void fill_ids(int32_t *ids, int n, int V, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)V);
    }
}

/* phase 0: 8 updates straight; 1: 4 updates then a checkpoint; 2: resume from it for 4.
 * losses (optional) receives the loss of each update (the same batch every step: it must fall). */
static float *train_run(lt_context *ctx, const char *ckpt_dir, int phase, double *losses) {
    lt_model *m = load_model(ctx);
    lt_adapter *a = make_adapter(m, 64); /* every tensor 8-bit at rank 64 */
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_ADAMW8BIT;
    op.lr = 1e-2f;
    op.weight_decay = 0.01f;
    op.schedule = LT_SCHED_COSINE;
    op.warmup_steps = 1;
    op.total_steps = 8;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    ck_assert_uint_eq(o->n_f32, 0);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.seed = 5;
    lt_trainer *t = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &t), LT_OK);
    int first = 0, last = 8;
    if (phase == 1) last = 4;
    if (phase == 2) {
        first = 4;
        ck_assert_msg(lt_trainer_load_checkpoint(t, ckpt_dir) == LT_OK, "%s", lt_trainer_last_error(t));
        ck_assert_int_eq(lt_optimizer_step_count(o), 4);
    }
    int32_t ids[4 * 16];
    fill_ids(ids, 4 * 16, 257, 11);
    for (int step = first; step < last; step++) {
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = 4; b.seq_len = 16; b.input_ids = ids;
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
        if (losses) losses[step] = r.loss;
    }
    if (phase == 1) ck_assert_msg(lt_trainer_save_checkpoint(t, ckpt_dir) == LT_OK, "%s", lt_trainer_last_error(t));
    float *p = malloc(a->n_params * 4);
    m->be->ops->download(m->be, p, a->params, a->n_params * 4);
    lt_trainer_free(t);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    return p;
}

START_TEST(test_train_learns_and_resumes) {
    lt_context *ctx = tu_context();
    char dir[512];
    tu_tempdir(dir, sizeof dir);
    strcat(dir, "/ckpt");
    double losses[8];
    float *straight = train_run(ctx, NULL, 0, losses);
    ck_assert_msg(losses[7] < 0.8 * losses[0], "8-bit AdamW does not learn: loss %g -> %g", losses[0], losses[7]);
    float *half = train_run(ctx, dir, 1, NULL);
    float *resumed = train_run(ctx, dir, 2, NULL);
    lt_model *m = load_model(ctx);
    lt_adapter *a = make_adapter(m, 64);
    const size_t n = a->n_params;
    ck_assert_msg(memcmp(straight, half, n * 4) != 0, "the first half should differ from the full run");
    ck_assert_msg(memcmp(straight, resumed, n * 4) == 0, "8-bit resume is not bit-exact (max diff %g)",
                  tu_max_rel_err(resumed, straight, n));
    lt_adapter_free(a);
    lt_model_free(m);
    free(straight); free(half); free(resumed);
    lt_context_free(ctx);
}
END_TEST

/* state files: size is the 8-bit layout; a state of another kind or a truncated file is refused */
START_TEST(test_state_files) {
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx);
    lt_adapter *a = make_adapter(m, 32);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_ADAMW8BIT;
    lt_optimizer *o8 = NULL, *o32 = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o8), LT_OK);
    op.kind = LT_OPT_ADAMW;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o32), LT_OK);
    char dir[512], p8[600], p32[600];
    tu_tempdir(dir, sizeof dir);
    snprintf(p8, sizeof p8, "%s/o8.bin", dir);
    snprintf(p32, sizeof p32, "%s/o32.bin", dir);
    ck_assert_int_eq(lt_optimizer_save(o8, p8), LT_OK);
    ck_assert_int_eq(lt_optimizer_save(o32, p32), LT_OK);
    FILE *fp = fopen(p8, "rb");
    fseek(fp, 0, SEEK_END);
    const long sz = ftell(fp);
    fclose(fp);
    ck_assert_int_eq(sz, (long)(32 + 8 * o8->n_f32 + 8 * o8->n_blocks + 2 * o8->n_q8));
    /* state per parameter: fp32 AdamW 8 B; 8-bit 2 B + 8 B / 256 where 8-bit, 8 B in the small tensors */
    ck_assert_int_lt(sz, (long)(32 + 8 * a->n_params));
    ck_assert_int_eq(lt_optimizer_load(o8, p8), LT_OK);
    ck_assert_int_eq(lt_optimizer_load(o8, p32), LT_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(lt_optimizer_last_error(o8), "AdamW8bit"));
    ck_assert_int_eq(lt_optimizer_load(o32, p8), LT_ERR_SHAPE);
    fp = fopen(p8, "r+b");
    ck_assert_int_eq(ftruncate(fileno(fp), sz - 1), 0);
    fclose(fp);
    ck_assert_int_eq(lt_optimizer_load(o8, p8), LT_ERR_TRUNCATED);
    lt_optimizer_free(o8);
    lt_optimizer_free(o32);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim8");
    TCase *tc = tcase_create("optim8");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_code_books);
    tcase_add_test(tc, test_goldens_ref);
    tcase_add_test(tc, test_goldens_cpu_backend);
    tcase_add_test(tc, test_optimizer_per_tensor);
    tcase_add_test(tc, test_train_learns_and_resumes);
    tcase_add_test(tc, test_state_files);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
