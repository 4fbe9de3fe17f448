/* combine.c - `loratune combine` (adapter arithmetic: cat, linear, TIES, DARE, magnitude prune, SLERP, into a
 * new adapter by truncated SVD or into the base) and `loratune extract` (a LoRA from a full fine-tune). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "loratune_experimental.h"

static int split_list(char *s, char **out, int cap) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < cap; tok = strtok(NULL, ",")) out[n++] = tok;
    return n;
}

int cmd_combine(int argc, char **argv) {
    static const opt_spec spec[] = {
        {"model", 1}, {"adapters", 1},       {"weights", 1}, {"method", 1},    {"density", 1}, {"t", 1},
        {"rank", 1},  {"seed", 1},           {"out", 1},     {"into-base", 0}, {"json", 0},    {"threads", 1},
        {"quant", 1}, {"no-double-quant", 0}};
    opts o;
    if (opts_parse(&o, spec, 14, argc, argv, "combine")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *alist = opt_str(&o, "adapters", NULL),
               *out = opt_str(&o, "out", NULL), *method = opt_str(&o, "method", "linear");
    if (!mdir || !alist || !out) return fail("combine", "--model DIR, --adapters A,B,... and --out DIR are required");
    static const char *const methods[] = {"cat",       "linear",          "ties", "dare_linear",
                                          "dare_ties", "magnitude_prune", "slerp"};
    lt_combine_params cp;
    lt_combine_params_init(&cp, sizeof cp);
    int mi = -1;
    for (int i = 0; i < 7; i++)
        if (!strcmp(method, methods[i])) mi = i;
    if (mi < 0)
        return fail("combine", "--method must be cat, linear, ties, dare_linear, dare_ties, magnitude_prune or slerp");
    cp.method = (lt_combine_method)mi;
    double density, t;
    long long rank, seed, threads;
    if (opt_double(&o, "density", 1.0, &density) || opt_double(&o, "t", 0.5, &t) ||
        opt_int(&o, "rank", 0, -1000000, 1000000, &rank) || opt_int(&o, "seed", 0, 0, (1ll << 62), &seed) ||
        opt_int(&o, "threads", 0, 0, 1024, &threads))
        return 2;
    cp.density = (float)density;
    cp.t = (float)t;
    cp.rank = (int)rank;
    cp.seed = (uint64_t)seed;
    char *adup = strdup(alist), *wdup = opt_str(&o, "weights", NULL) ? strdup(opt_str(&o, "weights", NULL)) : NULL;
    char *dirs[64], *ws[64];
    const int n = split_list(adup, dirs, 64), nw = wdup ? split_list(wdup, ws, 64) : 0;
    float weights[64];
    int rc = 0;
    if (wdup && nw != n) rc = fail("combine", "--weights has %d values for %d adapters", nw, n);
    for (int i = 0; i < nw && !rc; i++) {
        char *end;
        weights[i] = strtof(ws[i], &end);
        if (*end || !isfinite(weights[i])) rc = fail("combine", "--weights: \"%s\" is not a number", ws[i]);
    }
    cp.weights = wdup ? weights : NULL;
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ads[64] = {0}, *res = NULL;
    lt_quant_params qp;
    int quantize = 0;
    if (!rc && opt_str(&o, "quant", NULL)) {
        if (quant_options("combine", &o, &qp)) rc = 2;
        quantize = 1;
    } else if (!rc) {
        quantize = read_quant_note(dirs[0], &qp); /* QLoRA adapters: the base they were trained on */
    }
    if (!rc && open_model("combine", mdir, (int)threads, NULL, &ctx, &m)) rc = 1;
    if (!rc && quantize && lt_model_quantize(m, &qp) != LT_OK) rc = fail("combine", "%s", lt_model_last_error(m));
    for (int i = 0; i < n && !rc; i++)
        if (lt_adapter_load(m, dirs[i], &ads[i]) != LT_OK) rc = fail("combine", "%s: %s", dirs[i], lt_last_error());
    if (!rc && opt_flag(&o, "into-base")) {
        if (lt_adapter_combine_into_base(ads, n, &cp, out) != LT_OK) rc = fail("combine", "%s", lt_last_error());
        else printf("wrote %s: %s of %d adapters merged into %s (f32)\n", out, method, n, mdir);
    } else if (!rc) {
        lt_combine_report rep = {.size = sizeof rep};
        if (lt_adapter_combine(ads, n, &cp, &res, &rep) != LT_OK) rc = fail("combine", "%s", lt_last_error());
        else if (lt_adapter_save(res, out) != LT_OK) rc = fail("combine", "%s", lt_adapter_last_error(res));
        else if (opt_flag(&o, "json"))
            printf("{\"method\": \"%s\", \"rank\": %d, \"kept_energy\": %.9g, \"total_energy\": %.9g, "
                   "\"kept_share\": %.9g, \"max_module_error\": %.9g}\n",
                   method, rep.rank, rep.kept_energy, rep.total_energy,
                   rep.total_energy > 0 ? rep.kept_energy / rep.total_energy : 1.0, rep.max_module_error);
        else
            printf("wrote %s: %s of %d adapters, rank %d, %.6f of the delta's energy kept (worst module: "
                   "relative error %.3g)\n",
                   out, method, n, rep.rank, rep.total_energy > 0 ? rep.kept_energy / rep.total_energy : 1.0,
                   rep.max_module_error);
    }
    lt_adapter_free(res);
    for (int i = 0; i < n; i++) lt_adapter_free(ads[i]);
    lt_model_free(m);
    lt_context_free(ctx);
    free(adup);
    free(wdup);
    return rc;
}

int cmd_extract(int argc, char **argv) {
    static const opt_spec spec[] = {{"base", 1}, {"tuned", 1}, {"rank", 1},   {"targets", 1},
                                    {"out", 1},  {"json", 0},  {"threads", 1}};
    opts o;
    if (opts_parse(&o, spec, 7, argc, argv, "extract")) return 2;
    const char *bdir = opt_str(&o, "base", NULL), *tdir = opt_str(&o, "tuned", NULL), *out = opt_str(&o, "out", NULL);
    if (!bdir || !tdir || !out) return fail("extract", "--base DIR, --tuned DIR and --out DIR are required");
    lt_extract_params ep;
    lt_extract_params_init(&ep, sizeof ep);
    long long rank, threads;
    if (opt_int(&o, "rank", 16, -1000000, 1000000, &rank) || opt_int(&o, "threads", 0, 0, 1024, &threads)) return 2;
    ep.rank = (int)rank;
    if (opt_str(&o, "targets", NULL) && parse_targets("extract", opt_str(&o, "targets", NULL), &ep.targets)) return 2;
    lt_context *ctx = NULL, *ctx2 = NULL;
    lt_model *base = NULL, *tuned = NULL;
    lt_adapter *ad = NULL;
    int rc = open_model("extract", bdir, (int)threads, NULL, &ctx, &base) ||
             open_model("extract", tdir, (int)threads, NULL, &ctx2, &tuned);
    lt_model_info info = {.size = sizeof info};
    if (!rc) lt_model_get_info(base, &info);
    const size_t slots = (size_t)info.n_layers * 7;
    double *kept = calloc(slots + 1, sizeof *kept), *total = calloc(slots + 1, sizeof *total);
    lt_extract_report rep = {.size = sizeof rep, .module_kept = kept, .module_total = total};
    if (!rc && lt_adapter_extract(base, tuned, &ep, &ad, &rep) != LT_OK) rc = fail("extract", "%s", lt_last_error());
    if (!rc && lt_adapter_save(ad, out) != LT_OK) rc = fail("extract", "%s", lt_adapter_last_error(ad));
    if (!rc) {
        static const char *const names[7] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
        const int json = opt_flag(&o, "json");
        if (json)
            printf("{\"rank\": %d, \"kept_energy\": %.9g, \"total_energy\": %.9g, \"modules\": [", ep.rank,
                   rep.kept_energy, rep.total_energy);
        int first = 1;
        for (size_t s = 0; s < slots; s++) {
            if (!(total[s] > 0) && !(kept[s] > 0)) continue;
            if (json)
                printf("%s{\"layer\": %zu, \"module\": \"%s\", \"kept\": %.9g, \"total\": %.9g}", first ? "" : ", ",
                       s / 7, names[s % 7], kept[s], total[s]);
            else
                printf("layers.%zu.%-9s captured %.6f of ||tuned - base||^2\n", s / 7, names[s % 7],
                       total[s] > 0 ? kept[s] / total[s] : 1.0);
            first = 0;
        }
        if (json)
            printf("], \"others_max_diff\": %.9g, \"others_name\": \"%s\"}\n", rep.others_max_diff, rep.others_name);
        else {
            printf("wrote %s: rank %d LoRA of %d modules, %.6f of the delta's energy captured\n", out, ep.rank,
                   rep.n_modules, rep.total_energy > 0 ? rep.kept_energy / rep.total_energy : 1.0);
            if (rep.others_max_diff > 0)
                fprintf(stderr,
                        "loratune extract: warning: %s differs by up to %g between the models; a LoRA cannot hold "
                        "it (only the linear modules are extracted)\n",
                        rep.others_name, rep.others_max_diff);
        }
    }
    free(kept);
    free(total);
    lt_adapter_free(ad);
    lt_model_free(tuned);
    lt_model_free(base);
    lt_context_free(ctx2);
    lt_context_free(ctx);
    return rc;
}
