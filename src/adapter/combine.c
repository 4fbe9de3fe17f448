/*
 * combine.c - adapter arithmetic on delta weights and LoRA extraction, both refactored by truncated SVD.
 *
 * defines: lt_combine_params_init, lt_adapter_combine, lt_adapter_combine_into_base, lt_extract_params_init,
 *          lt_adapter_extract
 *
 * Everything works per linear module (a Phi-3 fused module is one matrix) on the delta weights
 * dW_i = s_i (B_i A_i - B0_i A0_i), each adapter's own scale applied exactly once (never on A and B
 * separately: PEFT's factor-wise add_weighted_adapter makes cross terms B_i A_j). The formulas are
 * mergekit's (docs/spec/merging.md):
 *   linear (task arithmetic)  sum_i w_i dW_i
 *   TIES         per adapter the top k = int(density * numel) magnitudes of dW_i (ties broken by index), then
 *                mergekit's sum consensus on the weighted deltas w_i dW_i: the elected sign of an element is
 *                + when their sum is >= 0; the kept entries whose sign agrees are summed and divided by the
 *                sum of their weights (mergekit's normalize, its TIES default);
 *   DARE         each element kept with probability density (a counter hash of seed, adapter, layer, module
 *                and index: reproducible) and rescaled by 1 / density; then linear (dare_linear) or the TIES
 *                consensus without the division (dare_ties, mergekit's defaults);
 *   magnitude prune  the TIES trimming, then linear (PEFT's magnitude_prune);
 *   SLERP        of the two flattened deltas with parameter t, linear when |cos| > 0.9995;
 *   cat          exact without any dense matrix: A = [w_i s_i A_i] stacked, B = [B_i] side by side.
 * The result is a plain LoRA with scaling 1 (alpha = rank): B = U_r diag(S_r), A = Vt_r from the thin SVD of
 * the combined delta (LAPACK), r the requested rank (0: the full rank of each module: exact); what the
 * truncation drops is reported as energy (sums of squared singular values). Extraction is the same SVD of
 * (W_tuned - W_base) per module, as mergekit-extract-lora.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter_impl.h"
#include "loratune_experimental.h"

static const lt_combine_params k_combine_defaults = {
    .size = sizeof(lt_combine_params), .method = LT_COMBINE_LINEAR, .density = 1.0f, .t = 0.5f};
static const lt_extract_params k_extract_defaults = {
    .size = sizeof(lt_extract_params), .rank = 16, .targets = LT_TARGET_ALL};

LT_API void lt_combine_params_init(lt_combine_params *p, size_t size) {
    if (p) lt_fill_struct(p, size, &k_combine_defaults, sizeof k_combine_defaults);
}
LT_API void lt_extract_params_init(lt_extract_params *p, size_t size) {
    if (p) lt_fill_struct(p, size, &k_extract_defaults, sizeof k_extract_defaults);
}

static const char *method_name(lt_combine_method m) {
    static const char *const names[] = {"cat",       "linear",          "ties", "dare_linear",
                                        "dare_ties", "magnitude_prune", "slerp"};
    return (unsigned)m < sizeof names / sizeof *names ? names[m] : "?";
}

/* ---- the combined delta of one module --------------------------------------------------------------- */

typedef struct combiner {
    lt_adapter *const *ads;
    int n;
    lt_combine_params p;
    float *w;       /* n weights */
    float *d;       /* n deltas of the largest module (scratch) */
    float *mag;     /* |x| scratch for the top-k threshold */
    size_t max_mn;  /* floats of the largest module */
    size_t max_dim; /* its largest side */
} combiner;

static int cmp_desc(const void *x, const void *y) {
    const float a = *(const float *)x, b = *(const float *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* keep the k = int(density * n) largest |x| (mergekit's magnitude(); ties at the threshold by index) */
static void trim_top_k(float *x, size_t n, float density, float *scratch) {
    const size_t k = (size_t)(density * (double)n);
    if (density >= 1.0f || k >= n) return;
    for (size_t j = 0; j < n; j++) scratch[j] = fabsf(x[j]);
    qsort(scratch, n, sizeof *scratch, cmp_desc);
    const float thr = scratch[k - 1];
    size_t above = 0;
    for (size_t j = 0; j < n; j++) above += fabsf(x[j]) > thr;
    size_t at_thr = k - above; /* how many of those equal to the threshold are kept, first by index */
    for (size_t j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        if (a > thr) continue;
        if (a == thr && at_thr) {
            at_thr--;
            continue;
        }
        x[j] = 0.0f;
    }
}

/* DARE's mask: element j of adapter i in module (l, q) survives when u(seed', j) < density */
static uint64_t dare_seed(uint64_t seed, int i, int l, int q) {
    return seed ^ ((uint64_t)(i + 1) << 48) ^ ((uint64_t)l << 24) ^ (uint64_t)q;
}

static void dare(float *x, size_t n, float density, uint64_t seed) {
    if (density >= 1.0f) return;
    const float inv = 1.0f / density;
    for (size_t j = 0; j < n; j++) x[j] = lt_hash_uniform(seed, j) < density ? x[j] * inv : 0.0f;
}

static float fsign(float x) { return (float)((x > 0) - (x < 0)); }

/* D (the module's out x in) = the combination of the adapters' deltas */
static lt_status module_combined(combiner *c, int l, const lt_module *mod, float *D, lt_error *err) {
    const lt_model_config *cfg = &c->ads[0]->model->cfg;
    int in, out;
    lt_module_dims(cfg, mod, &in, &out);
    const size_t mn = (size_t)out * in;
    for (int i = 0; i < c->n; i++) {
        float *di = c->d + (size_t)i * mn;
        memset(di, 0, mn * sizeof *di);
        lt_status st = lt_lora_module_delta(c->ads[i], l, mod, di, err);
        if (st != LT_OK) return st;
    }
    const lt_combine_method m = c->p.method;
    memset(D, 0, mn * sizeof *D);
    if (m == LT_COMBINE_SLERP) { /* mergekit's slerp() on the flattened deltas */
        const float *v0 = c->d, *v1 = c->d + mn;
        double n0 = 0, n1 = 0, dot = 0;
        for (size_t j = 0; j < mn; j++) n0 += (double)v0[j] * v0[j], n1 += (double)v1[j] * v1[j];
        n0 = sqrt(n0) > 1e-8 ? sqrt(n0) : 1.0;
        n1 = sqrt(n1) > 1e-8 ? sqrt(n1) : 1.0;
        for (size_t j = 0; j < mn; j++) dot += (v0[j] / n0) * (v1[j] / n1);
        const double t = c->p.t;
        double s0 = 1 - t, s1 = t;
        if (fabs(dot) <= 0.9995) {
            const double th = acos(dot), st = sin(th);
            s0 = sin(th - th * t) / st;
            s1 = sin(th * t) / st;
        }
        for (size_t j = 0; j < mn; j++) D[j] = (float)(s0 * v0[j] + s1 * v1[j]);
        return LT_OK;
    }
    for (int i = 0; i < c->n; i++) { /* sparsify each delta */
        float *di = c->d + (size_t)i * mn;
        if (m == LT_COMBINE_TIES || m == LT_COMBINE_MAGNITUDE_PRUNE) {
            if ((size_t)(c->p.density * (double)mn) == 0)
                return lt_fail(err, LT_ERR_ARGUMENT,
                               "combine: density %g keeps no element of layers.%d.%s (%zu values)", c->p.density, l,
                               mod->name, mn);
            trim_top_k(di, mn, c->p.density, c->mag);
        } else if (m == LT_COMBINE_DARE_LINEAR || m == LT_COMBINE_DARE_TIES) {
            dare(di, mn, c->p.density, dare_seed(c->p.seed, i, l, mod->first));
        }
    }
    if (m == LT_COMBINE_TIES || m == LT_COMBINE_DARE_TIES) { /* sign election on the weighted deltas */
        for (size_t j = 0; j < mn; j++) {
            float sum = 0.0f;
            for (int i = 0; i < c->n; i++) sum += c->w[i] * c->d[(size_t)i * mn + j];
            const float elected = sum >= 0.0f ? 1.0f : -1.0f;
            float mixed = 0.0f, divisor = 0.0f;
            for (int i = 0; i < c->n; i++) {
                const float wd = c->w[i] * c->d[(size_t)i * mn + j];
                if (fsign(wd) == elected) {
                    mixed += wd;
                    divisor += c->w[i];
                }
            }
            if (divisor == 0.0f) divisor = 1.0f;
            D[j] = m == LT_COMBINE_TIES ? mixed / divisor : mixed;
        }
        return LT_OK;
    }
    for (int i = 0; i < c->n; i++) /* linear, DARE linear, magnitude prune, cat as a delta */
        for (size_t j = 0; j < mn; j++) D[j] += c->w[i] * c->d[(size_t)i * mn + j];
    return LT_OK;
}

/* ---- checks ---------------------------------------------------------------------------------------- */

static lt_status check_inputs(lt_adapter *const *ads, int n, const lt_combine_params *p, lt_error *err) {
    if (!ads || n < 1) return lt_fail(err, LT_ERR_ARGUMENT, "combine: no adapters");
    if ((unsigned)p->method > LT_COMBINE_SLERP)
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: unknown method %d", p->method);
    if (p->rank < 0 || p->rank > 4096)
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: rank %d is not in [0, 4096]", p->rank);
    const int uses_density = p->method == LT_COMBINE_TIES || p->method == LT_COMBINE_DARE_LINEAR ||
                             p->method == LT_COMBINE_DARE_TIES || p->method == LT_COMBINE_MAGNITUDE_PRUNE;
    if (uses_density && !(p->density > 0.0f && p->density <= 1.0f))
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: density %g is not in (0, 1]", p->density);
    if (p->method == LT_COMBINE_SLERP && n != 2)
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: slerp takes exactly two adapters, not %d", n);
    if (p->method == LT_COMBINE_SLERP && !(p->t >= 0.0f && p->t <= 1.0f))
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: slerp's t = %g is not in [0, 1]", p->t);
    for (int i = 0; i < n && p->weights; i++)
        if (!isfinite(p->weights[i])) return lt_fail(err, LT_ERR_ARGUMENT, "combine: weight %d is not finite", i);
    for (int i = 0; i < n; i++) {
        const lt_adapter *a = ads[i];
        if (!a) return lt_fail(err, LT_ERR_ARGUMENT, "combine: adapter %d is NULL", i);
        if (a->model != ads[0]->model)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "combine: adapter %d belongs to another model than adapter 0 (mismatched bases): "
                           "load every adapter on one base model",
                           i);
        if (a->p.full_finetune || a->p.use_dora || a->p.modules_to_save)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "combine: adapter %d is %s; only LoRA adapters (also rsLoRA, PiSSA / OLoRA, QLoRA) combine",
                           i,
                           a->p.full_finetune ? "a full fine-tuning"
                           : a->p.use_dora    ? "a DoRA adapter"
                                              : "LoRA + modules_to_save");
        if (a->merged) return lt_fail(err, LT_ERR_STATE, "combine: adapter %d is merged into the model", i);
        if (a->p.targets != ads[0]->p.targets)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "combine: adapter %d targets the modules 0x%02x, adapter 0 the modules 0x%02x: the "
                           "target sets must be equal",
                           i, a->p.targets, ads[0]->p.targets);
    }
    return LT_OK;
}

/* ---- refactorization ------------------------------------------------------------------------------------- */

/* the top-r factors of D (out, in): B = U_r diag(S_r) (out, R) and A = Vt_r (R, in), zero past min(out, in);
 * kept / total energy added */
static lt_status refactor(const float *D, int out, int in, int r, int R, float *A, float *B, double *kept,
                          double *total, lt_error *err) {
    const int k = out < in ? out : in;
    float *S = malloc((size_t)k * sizeof *S), *U = malloc((size_t)out * k * sizeof *U),
          *Vt = malloc((size_t)k * in * sizeof *Vt);
    lt_status st = !S || !U || !Vt ? lt_fail(err, LT_ERR_NOMEM, "out of memory") : lt_svd(D, out, in, S, U, Vt, err);
    if (st == LT_OK) {
        memset(A, 0, (size_t)R * in * sizeof *A);
        memset(B, 0, (size_t)out * R * sizeof *B);
        const int rr = r < k ? r : k;
        for (int j = 0; j < k; j++) {
            const double e = (double)S[j] * S[j];
            *total += e;
            if (j < rr) *kept += e;
        }
        for (int j = 0; j < rr; j++) {
            memcpy(A + (size_t)j * in, Vt + (size_t)j * in, (size_t)in * sizeof *A);
            for (int i = 0; i < out; i++) B[(size_t)i * R + j] = U[(size_t)i * k + j] * S[j];
        }
    }
    free(S);
    free(U);
    free(Vt);
    return st;
}

static lt_status new_adapter(lt_model *m, unsigned targets, int rank, lt_adapter **out, lt_error *err) {
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = rank;
    ap.alpha = (float)rank; /* scaling 1: the factors hold the whole delta */
    ap.targets = targets;
    return lt_adapter_alloc(m, &ap, out, err);
}

static void upload(const lt_adapter *a, const lt_lora *lo, const float *A, const float *B, int in, int out) {
    const lt_backend *be = a->model->be;
    be->ops->upload((lt_backend *)be, lo->A, A, (size_t)a->p.rank * in * sizeof *A);
    be->ops->upload((lt_backend *)be, lo->B, B, (size_t)out * a->p.rank * sizeof *B);
}

static void fill_combiner(combiner *c, lt_adapter *const *ads, int n, const lt_combine_params *params) {
    memset(c, 0, sizeof *c);
    c->p = k_combine_defaults;
    if (params) memcpy(&c->p, params, params->size < sizeof c->p ? params->size : sizeof c->p);
    c->ads = ads;
    c->n = n;
}

static lt_status alloc_combiner(combiner *c, lt_error *err) {
    const lt_model_config *cfg = &c->ads[0]->model->cfg;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(cfg, mods);
    for (int q = 0; q < n_mods; q++) {
        int in, out;
        lt_module_dims(cfg, &mods[q], &in, &out);
        if ((size_t)in * out > c->max_mn) c->max_mn = (size_t)in * out;
        if ((size_t)(in > out ? in : out) > c->max_dim) c->max_dim = (size_t)(in > out ? in : out);
    }
    c->w = malloc((size_t)c->n * sizeof *c->w);
    c->d = malloc((size_t)c->n * c->max_mn * sizeof *c->d);
    c->mag = malloc(c->max_mn * sizeof *c->mag);
    if (!c->w || !c->d || !c->mag) return lt_fail(err, LT_ERR_NOMEM, "combine: out of memory");
    for (int i = 0; i < c->n; i++) c->w[i] = c->p.weights ? c->p.weights[i] : 1.0f;
    return LT_OK;
}

static void free_combiner(combiner *c) {
    free(c->w);
    free(c->d);
    free(c->mag);
}

/* cat without a dense matrix: A = [w_i s_i A_i'] by rows, B = [B_i'] by columns (PiSSA: A' = [A; A0], B' = [B, -B0]) */
static lt_status cat_module(const combiner *c, int l, const lt_module *mod, float *A, float *B, int R) {
    const lt_model *m = c->ads[0]->model;
    int in, out;
    lt_module_dims(&m->cfg, mod, &in, &out);
    int col = 0, rmax = 0;
    for (int i = 0; i < c->n; i++) rmax = c->ads[i]->p.rank > rmax ? c->ads[i]->p.rank : rmax;
    float *tmp = malloc((size_t)rmax * (in + out) * sizeof *tmp);
    if (!tmp) return LT_ERR_NOMEM;
    for (int i = 0; i < c->n; i++) {
        const lt_adapter *a = c->ads[i];
        const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mod->first);
        const int r = a->p.rank;
        for (int part = 0; part < (lo->A0 ? 2 : 1); part++) {
            float *tA = tmp, *tB = tmp + (size_t)r * in;
            m->be->ops->download(m->be, tA, part ? lo->A0 : lo->A, (size_t)r * in * sizeof *tA);
            m->be->ops->download(m->be, tB, part ? lo->B0 : lo->B, (size_t)out * r * sizeof *tB);
            const float sA = c->w[i] * a->scaling, sB = part ? -1.0f : 1.0f;
            for (int j = 0; j < r; j++) {
                for (int p = 0; p < in; p++) A[(size_t)(col + j) * in + p] = sA * tA[(size_t)j * in + p];
                for (int o = 0; o < out; o++) B[(size_t)o * R + col + j] = sB * tB[(size_t)o * r + j];
            }
            col += r;
        }
    }
    free(tmp);
    return LT_OK;
}

LT_API lt_status lt_adapter_combine(lt_adapter **ads, int n, const lt_combine_params *params, lt_adapter **out,
                                    lt_combine_report *report) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_combine: out is NULL");
    *out = NULL;
    combiner c;
    fill_combiner(&c, ads, n, params);
    lt_status st = check_inputs(ads, n, &c.p, err);
    if (st != LT_OK) return st;
    lt_model *m = ads[0]->model;
    const lt_model_config *cfg = &m->cfg;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(cfg, mods), L = (int)cfg->num_hidden_layers;
    /* the rank of the result: cat's sum of ranks, else the full rank of the largest module, unless given */
    int cat_rank = 0, full = 0;
    for (int i = 0; i < n; i++) cat_rank += ads[i]->init0 ? 2 * ads[i]->p.rank : ads[i]->p.rank;
    for (int q = 0; q < n_mods; q++) {
        int in, o;
        lt_module_dims(cfg, &mods[q], &in, &o);
        if ((ads[0]->p.targets & lt_module_mask(&mods[q])) && (in < o ? in : o) > full) full = in < o ? in : o;
    }
    const int exact_cat = c.p.method == LT_COMBINE_CAT && (c.p.rank == 0 || c.p.rank >= cat_rank);
    const int R = exact_cat ? cat_rank : c.p.rank > 0 ? c.p.rank : full;
    if (R > 4096)
        return lt_fail(err, LT_ERR_ARGUMENT, "combine: the result would have rank %d (more than 4096): give a rank", R);
    lt_adapter *res = NULL;
    double kept = 0, total = 0, worst = 0;
    if ((st = alloc_combiner(&c, err)) == LT_OK) st = new_adapter(m, ads[0]->p.targets, R, &res, err);
    float *D = malloc(c.max_mn * sizeof *D + 1), *A = malloc((size_t)R * c.max_dim * sizeof *A + 1),
          *B = malloc((size_t)R * c.max_dim * sizeof *B + 1);
    if (st == LT_OK && (!D || !A || !B)) st = lt_fail(err, LT_ERR_NOMEM, "combine: out of memory");
    for (int l = 0; l < L && st == LT_OK; l++)
        for (int q = 0; q < n_mods && st == LT_OK; q++) {
            const lt_lora *lo = lt_adapter_lora(res, l, (lt_proj)mods[q].first);
            if (!lo) continue;
            int in, o;
            lt_module_dims(cfg, &mods[q], &in, &o);
            if (exact_cat) {
                if (cat_module(&c, l, &mods[q], A, B, R) != LT_OK) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
            } else {
                double mk = 0, mt = 0;
                st = module_combined(&c, l, &mods[q], D, err);
                if (st == LT_OK) st = refactor(D, o, in, R, R, A, B, &mk, &mt, err);
                kept += mk;
                total += mt;
                if (mt > 0 && sqrt((mt - mk) / mt) > worst) worst = sqrt((mt - mk) / mt);
            }
            if (st == LT_OK) upload(res, lo, A, B, in, o);
        }
    if (st == LT_OK) st = lt_backend_sync(m->be, err, "combining adapters");
    free(D);
    free(A);
    free(B);
    free_combiner(&c);
    if (st != LT_OK) {
        lt_adapter_free(res);
        return lt_fail_prefix(err, "lt_adapter_combine (%s)", method_name(c.p.method));
    }
    if (report) {
        lt_combine_report r = {.size = sizeof r,
                               .rank = R,
                               .kept_energy = exact_cat ? 1.0 : kept,
                               .total_energy = exact_cat ? 1.0 : total,
                               .max_module_error = exact_cat ? 0.0 : worst};
        const size_t nb = report->size < sizeof r ? report->size : sizeof r;
        memcpy(report, &r, nb);
        report->size = nb;
    }
    *out = res;
    return LT_OK;
}

/* merge-into-base: the combined delta added to every targeted module of the exported model (no SVD) */
static lt_status combined_delta(void *user, int l, const lt_module *mod, float *W, lt_error *err) {
    combiner *c = user;
    if (!(c->ads[0]->p.targets & lt_module_mask(mod))) return LT_OK;
    int in, out;
    lt_module_dims(&c->ads[0]->model->cfg, mod, &in, &out);
    float *D = malloc((size_t)in * out * sizeof *D);
    if (!D) return lt_fail(err, LT_ERR_NOMEM, "combine: out of memory");
    lt_status st = module_combined(c, l, mod, D, err);
    for (size_t j = 0; st == LT_OK && j < (size_t)in * out; j++) W[j] += D[j];
    free(D);
    return st;
}

LT_API lt_status lt_adapter_combine_into_base(lt_adapter **ads, int n, const lt_combine_params *params,
                                              const char *dir) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_combine_into_base: dir is NULL");
    combiner c;
    fill_combiner(&c, ads, n, params);
    lt_status st = check_inputs(ads, n, &c.p, err);
    if (st == LT_OK) st = alloc_combiner(&c, err);
    if (st == LT_OK) st = lt_model_export(ads[0]->model, NULL, combined_delta, &c, dir, 2ull << 30, err);
    free_combiner(&c);
    return st;
}

/* ---- extraction ----------------------------------------------------------------------------------------- */

static lt_status same_shapes(const lt_model_config *a, const lt_model_config *b, lt_error *err) {
    const struct {
        const char *name;
        int64_t x, y;
    } f[] = {{"vocab_size", a->vocab_size, b->vocab_size},
             {"hidden_size", a->hidden_size, b->hidden_size},
             {"intermediate_size", a->intermediate_size, b->intermediate_size},
             {"num_hidden_layers", a->num_hidden_layers, b->num_hidden_layers},
             {"num_attention_heads", a->num_attention_heads, b->num_attention_heads},
             {"num_key_value_heads", a->num_key_value_heads, b->num_key_value_heads},
             {"head_dim", a->head_dim, b->head_dim}};
    if (a->arch != b->arch)
        return lt_fail(err, LT_ERR_SHAPE, "extract: the tuned model is a %s, the base a %s", b->architecture,
                       a->architecture);
    for (size_t i = 0; i < sizeof f / sizeof *f; i++)
        if (f[i].x != f[i].y)
            return lt_fail(err, LT_ERR_SHAPE, "extract: %s is %lld in the base and %lld in the tuned model", f[i].name,
                           (long long)f[i].x, (long long)f[i].y);
    return LT_OK;
}

LT_API lt_status lt_adapter_extract(lt_model *base, lt_model *tuned, const lt_extract_params *params, lt_adapter **out,
                                    lt_extract_report *report) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!base || !tuned || !out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_extract: NULL argument");
    *out = NULL;
    lt_extract_params p = k_extract_defaults;
    if (params) memcpy(&p, params, params->size < sizeof p ? params->size : sizeof p);
    if (p.rank < 1 || p.rank > 4096)
        return lt_fail(err, LT_ERR_ARGUMENT, "extract: rank %d is not in [1, 4096]", p.rank);
    lt_status st = same_shapes(&base->cfg, &tuned->cfg, err);
    if (st != LT_OK) return st;
    if (base->base_dtype != LT_BASE_F32 || tuned->base_dtype != LT_BASE_F32)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "extract: load both models with base_dtype LT_BASE_F32");
    lt_adapter *res = NULL;
    if ((st = new_adapter(base, p.targets, p.rank, &res, err)) != LT_OK) return st;
    lt_xtensor *xb = NULL, *xt = NULL;
    int nb = 0, nt = 0, untie = 0;
    st = lt_export_tensors(base, NULL, &xb, &nb, &untie, err);
    if (st == LT_OK) st = lt_export_tensors(tuned, NULL, &xt, &nt, &untie, err);
    if (st == LT_OK && nb != nt) st = lt_fail(err, LT_ERR_SHAPE, "extract: the models have different tensors");
    size_t maxn = 0, maxd = 0;
    for (int i = 0; i < nb && st == LT_OK; i++) {
        if ((size_t)(xb[i].shape[0] * xb[i].shape[1]) > maxn) maxn = (size_t)(xb[i].shape[0] * xb[i].shape[1]);
        if (xb[i].kind != LT_XT_MODULE) continue; /* A, B: only modules are refactored */
        if ((size_t)xb[i].shape[0] > maxd) maxd = (size_t)xb[i].shape[0];
        if ((size_t)xb[i].shape[1] > maxd) maxd = (size_t)xb[i].shape[1];
    }
    float *W0 = malloc(maxn * sizeof *W0 + 1), *W1 = malloc(maxn * sizeof *W1 + 1),
          *A = malloc((size_t)p.rank * maxd * sizeof *A + 1), *B = malloc((size_t)p.rank * maxd * sizeof *B + 1);
    if (st == LT_OK && (!W0 || !W1 || !A || !B)) st = lt_fail(err, LT_ERR_NOMEM, "extract: out of memory");
    lt_extract_report r = {.size = sizeof r};
    for (int i = 0; i < nb && st == LT_OK; i++) {
        const size_t n = (size_t)(xb[i].shape[0] * xb[i].shape[1]);
        st = lt_export_tensor_data(base, NULL, NULL, NULL, &xb[i], W0, err);
        if (st == LT_OK) st = lt_export_tensor_data(tuned, NULL, NULL, NULL, &xt[i], W1, err);
        if (st != LT_OK) break;
        for (size_t j = 0; j < n; j++) W1[j] -= W0[j];
        const lt_lora *lo =
            xb[i].kind == LT_XT_MODULE ? lt_adapter_lora(res, xb[i].layer, (lt_proj)xb[i].mod.first) : NULL;
        if (!lo) { /* a tensor the adapter cannot hold: say how far it moved */
            for (size_t j = 0; j < n; j++)
                if (fabs(W1[j]) > r.others_max_diff) {
                    r.others_max_diff = fabs(W1[j]);
                    snprintf(r.others_name, sizeof r.others_name, "%s", xb[i].name);
                }
            continue;
        }
        double mk = 0, mt = 0;
        st = refactor(W1, (int)xb[i].shape[0], (int)xb[i].shape[1], p.rank, p.rank, A, B, &mk, &mt, err);
        if (st != LT_OK) break;
        upload(res, lo, A, B, (int)xb[i].shape[1], (int)xb[i].shape[0]);
        const size_t slot = (size_t)xb[i].layer * P_COUNT + (size_t)xb[i].mod.first;
        if (report && report->size >= sizeof r && report->module_kept) report->module_kept[slot] = mk;
        if (report && report->size >= sizeof r && report->module_total) report->module_total[slot] = mt;
        r.kept_energy += mk;
        r.total_energy += mt;
        r.n_modules++;
    }
    if (st == LT_OK) st = lt_backend_sync(base->be, err, "extracting a LoRA");
    free(W0);
    free(W1);
    free(A);
    free(B);
    free(xb);
    free(xt);
    if (st != LT_OK) {
        lt_adapter_free(res);
        return st;
    }
    if (report) {
        double *mk = report->size >= sizeof r ? report->module_kept : NULL,
               *mt = report->size >= sizeof r ? report->module_total : NULL;
        const size_t n = report->size < sizeof r ? report->size : sizeof r;
        r.module_kept = mk;
        r.module_total = mt;
        memcpy(report, &r, n);
        report->size = n;
    }
    *out = res;
    return LT_OK;
}
