/*
 * test_optim8.c - bitsandbytes' blockwise 8-bit AdamW (LT_OPT_ADAMW8BIT).
 *
 * - code books equal bitsandbytes' create_dynamic_map(signed=True / False), byte for byte;
 * - the backend op (reference and CPU backend) reproduces, bit for bit (tolerance 0), the parameters,
 *   codes and absmax of tests/python/make_optim8_goldens.py (the kernel's algorithm with bitsandbytes'
 *   code books; the script states why the bytes are not its CPU path's and checks it against it);
 * - the CPU backend's fast kernel (cpu/opt8_simd.h, every ISA this CPU has, 1 and 3 threads) gives the
 *   reference op's bytes (tolerance 0) on large random inputs and on the edge cases: every threshold
 *   between two codes and the floats beside it, codes, zeros of both signs, the sign rule, all-zero
 *   blocks, non-finite gradients and states, partial last blocks, decay on and off;
 * - lt_optimizer keeps per-tensor state (blocks start at each LoRA A / B, fp32 below 4096 elements);
 * - a short training run learns, and a checkpoint resumes bit for bit; state files and memory.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "cpu/cpu_kernels.h"
#include "cpu/cpu_opt8.h"
#include "cpu/ref_ops.h"
#include "decoder/decoder.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train/optimizer.h"

#define GOLDEN_DIR LT_TEST_DATA_DIR "/optim8"

static const char *cases[] = {"blocks_tail", "exact_blocks", "large", "nonfinite", "zero_block", "small_fp32"};

START_TEST(test_code_books) {
    char path[1024];
    snprintf(path, sizeof path, "%s/blocks_tail.safetensors", GOLDEN_DIR);
    lt_st_file *f;
    lt_error err;
    ck_assert_msg(lt_st_open(path, 0, &f, &err) == LT_OK, "%s", err.msg);
    tu_expect_bytes("qmap", "signed dynamic map", lt_quant_code8(), tu_st_need(f, "qmap1")->data, 256 * 4);
    tu_expect_bytes("qmap", "unsigned dynamic map", lt_quant_code8u(), tu_st_need(f, "qmap2")->data, 256 * 4);
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
        const lt_st_tensor *p0 = tu_st_need(f, "p0"), *g = tu_st_need(f, "g");
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
                lt_ref_adamw8bit_step(par, gt, x1, x2, m1, m2, n, lt_quant_code8(), lt_quant_code8u(), p.beta1, p.beta2,
                                      ec, ss, dec);
            else
                be->ops->adamw8bit_step(be, par, gt, x1, x2, m1, m2, n, lt_quant_code8(), lt_quant_code8u(), p.beta1,
                                        p.beta2, ec, ss, dec);
        }
        tu_expect_bytes(cases[c], "parameters", par, tu_st_need(f, "p")->data, n * 4);
        if (q8) {
            tu_expect_bytes(cases[c], "state1 (m codes)", c1, tu_st_need(f, "state1")->data, n);
            tu_expect_bytes(cases[c], "state2 (v codes)", c2, tu_st_need(f, "state2")->data, n);
            tu_expect_bytes(cases[c], "absmax1", a1, tu_st_need(f, "absmax1")->data, nb * 4);
            tu_expect_bytes(cases[c], "absmax2", a2, tu_st_need(f, "absmax2")->data, nb * 4);
        } else {
            tu_expect_bytes(cases[c], "m", s1f, tu_st_need(f, "m")->data, n * 4);
            tu_expect_bytes(cases[c], "v", s2f, tu_st_need(f, "v")->data, n * 4);
        }
        free(par);
        free(s1f);
        free(s2f);
        free(c1);
        free(c2);
        free(a1);
        free(a2);
        lt_st_close(f);
    }
    lt_context_free(ctx);
}

START_TEST(test_goldens_ref) { run_goldens(0); }
END_TEST

START_TEST(test_goldens_cpu_backend) { run_goldens(1); }
END_TEST

/* ---- the fast CPU kernel against the reference ------------------------------------------------------ */

/* code_nearest of cpu/ref_ops.c (static there): the largest code <= x, then up on a strictly nearer one */
static int oracle_nearest(const float *code, float x) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (code[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    if (lo < 255 && fabsf(x - code[lo + 1]) < fabsf(x - code[lo])) lo++;
    return lo;
}

static float from_key(int32_t k) {
    const int32_t i = k ^ ((k >> 31) & 0x7fffffff);
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* the scalar search of the prepared code books: every float within 300 ulps of each code and each
 * threshold, every 4099th float of [-2, 2], specials */
START_TEST(test_fast_nearest) {
    const float *books[2] = {lt_quant_code8(), lt_quant_code8u()};
    static lt_opt8_lut lut;
    for (int k = 0; k < 2; k++) {
        const float *code = books[k];
        ck_assert_int_eq(lt_opt8_lut_build(&lut, code), 1);
        ck_assert_int_le(lut.maxfix, 4); /* the kernels loop maxfix times per element */
        size_t checked = 0;
        for (int i = 0; i < 511; i++) {
            const float c = i < 256 ? code[i] : lut.thr[i - 256];
            if (i < 256 && i > 0) ck_assert(!(lut.thr[i - 1] > c)); /* thresholds interleave with codes */
            for (int32_t d = -300; d <= 300; d++) {
                const float x = from_key(lt_opt8_key(c) + d);
                if (lt_opt8_nearest(&lut, x) != oracle_nearest(code, x))
                    ck_abort_msg("book %d: x = %a: %d, reference %d", k, (double)x, lt_opt8_nearest(&lut, x),
                                 oracle_nearest(code, x));
                checked++;
            }
        }
        for (int64_t key = lt_opt8_key(-2.0f); key <= lt_opt8_key(2.0f); key += 4099, checked++) {
            const float x = from_key((int32_t)key);
            if (lt_opt8_nearest(&lut, x) != oracle_nearest(code, x)) ck_abort_msg("book %d: x = %a", k, (double)x);
        }
        const float sp[] = {0.0f, -0.0f, NAN, -NAN, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, FLT_MIN, -FLT_MIN, 1e-45f};
        for (size_t i = 0; i < sizeof sp / sizeof *sp; i++)
            ck_assert_int_eq(lt_opt8_nearest(&lut, sp[i]), oracle_nearest(code, sp[i]));
        ck_assert_uint_gt(checked, 800000);
    }
    /* a code book that is not strictly increasing is refused (the backend then runs the reference) */
    float bad[256];
    memcpy(bad, books[0], sizeof bad);
    bad[10] = bad[11];
    ck_assert_int_eq(lt_opt8_lut_build(&lut, bad), 0);
}
END_TEST

static uint64_t xs = 0x9e3779b97f4a7c15ull;
static uint64_t xnext(void) {
    xs ^= xs << 13, xs ^= xs >> 7, xs ^= xs << 17;
    return xs;
}
static float xunif(void) { return (float)((double)(xnext() >> 11) / 9007199254740992.0); } /* [0, 1) */

typedef struct opt8_case {
    size_t n;
    float p[5]; /* beta1, beta2, eps_c2, step_size, decay */
} opt8_case;

/* inputs for one case. kind 0: random state (codes, absmax over decades incl. 0, inf, NaN), gradients over
 * decades with zeros of both signs and non-finite ones, whole blocks of zeros and of non-finite values.
 * kind 1 (beta1 = 0: m = g, and every block holds a 1, so m / absmax = g exactly): the gradients are the
 * thresholds and codes of the signed book, the floats beside them, zeros, tiny and negative values. */
static void make_inputs(int kind, size_t n, float *par, float *g, uint8_t *c1, uint8_t *c2, float *a1, float *a2,
                        const lt_opt8_lut *lut) {
    const float *code = lt_quant_code8();
    const size_t nb = (n + 255) / 256;
    for (size_t i = 0; i < n; i++) {
        par[i] = (xunif() - 0.5f) * 0.2f;
        c1[i] = (uint8_t)xnext();
        c2[i] = (uint8_t)xnext();
        if (kind == 0) {
            const uint64_t r = xnext() % 1000;
            const float mag = powf(10.0f, -8.0f * xunif()) * (xnext() & 1 ? 1.0f : -1.0f);
            g[i] = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r < 10 ? 0.0f : r < 20 ? -0.0f : mag;
        } else {
            const uint64_t r = xnext() % 8, j = xnext() % 511;
            const float base = j < 256 ? code[j] : lut->thr[j - 256];
            const int32_t d = (int32_t)(xnext() % 5) - 2;
            float x = from_key(lt_opt8_key(base) + d);
            if (!(x >= -1.0f && x <= 1.0f)) x = base;
            g[i] = r == 0 ? 0.0f : r == 1 ? -0.0f : r == 2 ? -x : x;
        }
    }
    for (size_t b = 0; b < nb; b++) {
        const uint64_t r = xnext() % 64;
        a1[b] = r == 0 ? 0.0f : r == 1 ? INFINITY : r == 2 ? NAN : powf(10.0f, -6.0f * xunif());
        a2[b] = r == 3 ? 0.0f : r == 4 ? INFINITY : powf(10.0f, -12.0f * xunif());
        const size_t i0 = b * 256, i1 = i0 + 256 < n ? i0 + 256 : n;
        if (kind == 1) g[i0 + xnext() % (i1 - i0)] = xnext() & 1 ? 1.0f : -1.0f;
        if (kind == 0 && r == 5)
            for (size_t i = i0; i < i1; i++) g[i] = 0.0f; /* an all-zero block */
        if (kind == 0 && r == 6)
            for (size_t i = i0; i < i1; i++) g[i] = NAN; /* all skipped */
        if (kind == 0 && r == 7) {
            a1[b] = a2[b] = 0.0f;
            for (size_t i = i0; i < i1; i++) g[i] = 0.0f;
        }
    }
}

/* qm1, qm2: the code books (NULL: the library's) */
static void check_fast_op(lt_backend *be, const char *what, int kind, const opt8_case *cs, int steps, const float *qm1,
                          const float *qm2) {
    if (!qm1) qm1 = lt_quant_code8();
    if (!qm2) qm2 = lt_quant_code8u();
    static lt_opt8_lut lut;
    ck_assert_int_eq(lt_opt8_lut_build(&lut, lt_quant_code8()), 1);
    const size_t n = cs->n, nb = (n + 255) / 256;
    float *par = malloc(n * 4), *g = malloc(n * 4), *a1 = malloc(nb * 4), *a2 = malloc(nb * 4);
    uint8_t *c1 = malloc(n), *c2 = malloc(n);
    float *rpar = malloc(n * 4), *ra1 = malloc(nb * 4), *ra2 = malloc(nb * 4);
    uint8_t *rc1 = malloc(n), *rc2 = malloc(n);
    make_inputs(kind, n, par, g, c1, c2, a1, a2, &lut);
    memcpy(rpar, par, n * 4), memcpy(ra1, a1, nb * 4), memcpy(ra2, a2, nb * 4), memcpy(rc1, c1, n), memcpy(rc2, c2, n);
    const float *p = cs->p;
    for (int s = 0; s < steps; s++) {
        lt_ref_adamw8bit_step(rpar, g, rc1, rc2, ra1, ra2, n, qm1, qm2, p[0], p[1], p[2], p[3], p[4]);
        be->ops->adamw8bit_step(be, par, g, c1, c2, a1, a2, n, qm1, qm2, p[0], p[1], p[2], p[3], p[4]);
        char cs_name[128];
        snprintf(cs_name, sizeof cs_name, "%s, kind %d, n %zu, decay %g, step %d", what, kind, n, p[4], s);
        tu_expect_bytes(cs_name, "parameters", par, rpar, n * 4);
        tu_expect_bytes(cs_name, "m codes", c1, rc1, n);
        tu_expect_bytes(cs_name, "v codes", c2, rc2, n);
        tu_expect_bytes(cs_name, "absmax1", a1, ra1, nb * 4);
        tu_expect_bytes(cs_name, "absmax2", a2, ra2, nb * 4);
        for (size_t i = 0; i < n; i++) /* the next step's gradients */
            if (isfinite(g[i]) && kind == 0) g[i] = g[i] * -0.5f + (xunif() - 0.5f) * 1e-4f;
    }
    free(par);
    free(g);
    free(a1);
    free(a2);
    free(c1);
    free(c2);
    free(rpar);
    free(ra1);
    free(ra2);
    free(rc1);
    free(rc2);
}

START_TEST(test_fast_op_matches_reference) {
    const opt8_case cases8[] = {
        {300007, {0.9f, 0.999f, 1e-8f * 0.0316f, -1e-3f, 0.0f}}, /* 3 threads get blocks; 7-element tail */
        {262144, {0.9f, 0.999f, 1e-8f, -1e-4f, 1e-4f}},          /* whole blocks, decay on */
        {4103, {0.8f, 0.95f, 1e-6f, -2e-2f, 1e-2f}},             /* a partial last block of 7 */
        {4096 + 250, {0.0f, 0.0f, 1e-8f, -1e-3f, 0.0f}},         /* beta = 0: m = g, v = g^2 */
        {12, {0.9f, 0.999f, 1e-8f, -1e-3f, 0.0f}},               /* less than a vector */
    };
    const lt_cpu_isa isas[4] = {LT_CPU_ISA_AVX512_BF16, LT_CPU_ISA_AVX512, LT_CPU_ISA_AVX2, LT_CPU_ISA_GENERIC};
    int ran = 0;
    for (int ia = 0; ia < 4; ia++) {
        if (!lt_cpu_kernels_get(isas[ia], NULL, 0)) continue; /* this CPU lacks the ISA */
        for (int th = 1; th <= 3; th += 2) {
            lt_backend *be = NULL;
            char err[256];
            ck_assert_int_eq(lt_cpu_backend_create_isa(th, isas[ia], &be, err, sizeof err), LT_OK);
            char what[64];
            snprintf(what, sizeof what, "%s, %d thread(s)", lt_cpu_kernels_get(isas[ia], NULL, 0)->isa, th);
            for (size_t c = 0; c < sizeof cases8 / sizeof *cases8; c++)
                check_fast_op(be, what, 0, &cases8[c], 3, NULL, NULL);
            /* kind 1: beta1 = 0 puts m / absmax on the thresholds and codes themselves */
            const opt8_case ties[] = {{300007, {0.0f, 0.999f, 1e-8f, -1e-3f, 0.0f}},
                                      {5000, {0.0f, 0.0f, 1e-8f, -1e-3f, 1e-3f}}};
            for (size_t c = 0; c < 2; c++) check_fast_op(be, what, 1, &ties[c], 1, NULL, NULL);
            /* other code books: strictly increasing ones get their tables per call; a book with a repeated
             * code is left to the reference */
            float other1[256], other2[256], flat[256];
            for (int i = 0; i < 256; i++) {
                other1[i] = lt_quant_code8()[i] * 0.75f;
                other2[i] = (float)i / 255.0f * ((float)i / 255.0f);
            }
            memcpy(flat, lt_quant_code8(), sizeof flat);
            flat[100] = flat[101];
            check_fast_op(be, what, 0, &cases8[0], 2, other1, other2);
            check_fast_op(be, what, 0, &cases8[2], 2, flat, NULL);
            be->ops->destroy(be);
            ran++;
        }
    }
    ck_assert_int_ge(ran, 2);
}
END_TEST

/* ---- the optimizer over an adapter ----------------------------------------------------------------- */

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
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
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
                                      am2 + tn->off, tn->n, lt_quant_code8(), lt_quant_code8u(), op.beta1, op.beta2, ec,
                                      ss, dec);
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
    free(ref);
    free(g);
    free(mine);
    free(c1);
    free(c2);
    free(am1);
    free(am2);
    free(fm);
    free(fv);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- training: learns, and resumes bit for bit ---------------------------------------------------- */

/* phase 0: 8 updates straight; 1: 4 updates then a checkpoint; 2: resume from it for 4.
 * losses (optional) receives the loss of each update (the same batch every step: it must fall). */
static float *train_run(lt_context *ctx, const char *ckpt_dir, int phase, double *losses) {
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
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
    int first, last;
    tu_resume_begin(t, o, ckpt_dir, phase, 8, &first, &last);
    int32_t ids[4 * 16];
    tu_fill_ids(ids, 4 * 16, 257, 11);
    for (int step = first; step < last; step++) {
        lt_batch b = tu_batch(ids, NULL, 4, 16);
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(t, &b, &r) == LT_OK, "%s", lt_trainer_last_error(t));
        if (losses) losses[step] = r.loss;
    }
    tu_resume_end(t, ckpt_dir, phase);
    float *p = tu_adapter_host_copy(a, a->params);
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
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
    lt_adapter *a = make_adapter(m, 64);
    const size_t n = a->n_params;
    ck_assert_msg(memcmp(straight, half, n * 4) != 0, "the first half should differ from the full run");
    ck_assert_msg(memcmp(straight, resumed, n * 4) == 0, "8-bit resume is not bit-exact (max diff %g)",
                  tu_max_rel_err(resumed, straight, n));
    lt_adapter_free(a);
    lt_model_free(m);
    free(straight);
    free(half);
    free(resumed);
    lt_context_free(ctx);
}
END_TEST

/* state files: size is the 8-bit layout; a state of another kind or a truncated file is refused */
START_TEST(test_state_files) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "llama-basic", NULL);
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
    /* a file of the version before the flags (0: no tensor in torch's order here) loads as before */
    fp = fopen(p8, "r+b");
    const uint32_t flags0 = 0;
    ck_assert(fp && fseek(fp, 12, SEEK_SET) == 0 && fwrite(&flags0, 4, 1, fp) == 1);
    fclose(fp);
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
    TCase *fast = tcase_create("fast"); /* CK_RUN_CASE=fast: the fast CPU kernel against the reference */
    tcase_set_timeout(fast, 600);
    tcase_add_test(fast, test_fast_nearest);
    tcase_add_test(fast, test_fast_op_matches_reference);
    suite_add_tcase(s, fast);
    return tu_run_suite(s);
}
