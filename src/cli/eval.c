/* eval.c - `loratune eval`: the loss of a model (with an adapter) over a JSONL file; with --objective,
 * the preference loss and reward metrics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/pref.h"
#include "cli/textdata.h"

int cmd_eval(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1},     {"data", 1},      {"adapter", 1}, {"json", 0},
                                    {"threads", 1},   {"batch", 1},     {"backend", 1}, {"objective", 1},
                                    {"tokenizer", 1}, {"base-dtype", 1}};
    if (wants_objective(argc, argv)) return cmd_eval_pref(argc, argv);
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--compare")) return cmd_eval_compare(argc, argv);
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "eval")) return 2;
    int base_dtype;
    if (opt_base_dtype(&o, "eval", &base_dtype)) return 2;
    const char *dir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL);
    if (!dir || !data) return fail("eval", "--model DIR and --data FILE.jsonl are required");
    long long threads, batch;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "batch", 8, 1, 4096, &batch)) return 2;
    dataset ds;
    char msg[512];
    if (dataset_load_any(data, opt_str(&o, "tokenizer", dir), &ds, NULL, msg, sizeof msg))
        return fail("eval", "%s", msg);
    lt_context *ctx;
    lt_model *m;
    if (open_model_dtype("eval", dir, (int)threads, opt_str(&o, "backend", NULL), base_dtype, &ctx, &m)) {
        dataset_free(&ds);
        return 1;
    }
    lt_adapter *ad = NULL;
    int rc = 0;
    const char *adir = opt_str(&o, "adapter", NULL);
    if (adir && lt_adapter_load(m, adir, &ad) != LT_OK) {
        rc = fail("eval", "%s", lt_last_error());
        goto done;
    }
    /* Rows are batched in file order and padded (label -100) to the batch's longest row; padding
     * at the end of a row cannot influence the real tokens under causal attention. */
    double total;
    long long tokens;
    int bad, lrc = dataset_loss(m, ad, &ds, 0, ds.n, 0, (int)batch, &total, &tokens, &bad);
    if (lrc < 0) rc = fail("eval", "out of memory");
    else if (lrc)
        rc = fail("eval", "%s: rows %d..%d: %s", data, bad + 1, ds.n - bad < batch ? ds.n : bad + (int)batch,
                  lt_model_last_error(m));
    if (rc == 0) {
        if (tokens == 0) {
            rc = fail("eval", "%s: every label is masked (-100): there is no token to evaluate", data);
        } else if (opt_flag(&o, "json")) {
            printf("{\"loss\": %.9g, \"tokens\": %lld}\n", total / tokens, tokens);
        } else {
            printf("loss %.6f over %lld predicted tokens (%d rows), perplexity %.3f\n", total / tokens, tokens, ds.n,
                   exp(total / tokens));
        }
    }
done:
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    dataset_free(&ds);
    return rc;
}

/* ---- eval --objective dpo|ipo|kto|orpo ----------------------------------------------------------- */

int cmd_eval_pref(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"data", 1},    {"adapter", 1},   {"json", 0},   {"threads", 1},
                                    {"batch", 1}, {"backend", 1}, {"objective", 1}, PREF_OPT_SPECS};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "eval")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL);
    lt_objective obj;
    if (!mdir || !data) return fail("eval", "--model DIR and --data FILE.jsonl are required");
    if (pref_parse_objective(opt_str(&o, "objective", ""), &obj))
        return fail("eval", "--objective must be dpo, ipo, kto or orpo");
    long long threads, batch;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "batch", 8, 1, 1 << 20, &batch)) return 2;
    lt_trainer_params tp;
    if (pref_trainer_params(&o, obj, &tp)) return 2;
    pref_set ds;
    char msg[1024];
    if (pref_load(data, obj == LT_OBJ_KTO, opt_flag(&o, "no-eos") ? -1 : pref_config_eos(mdir), &ds, msg, sizeof msg))
        return fail("eval", "%s", msg);
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL, *ref = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    pref_buf buf = {0};
    int *idx = NULL, rc = 0;
    if (open_model("eval", mdir, (int)threads, opt_str(&o, "backend", NULL), &ctx, &m)) {
        rc = 1;
        goto done;
    }
    lt_adapter_params ap; /* no --adapter: a fresh LoRA (B = 0), i.e. the base model */
    lt_adapter_params_init(&ap, sizeof ap);
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    if (pref_open_trainer("eval", m, opt_str(&o, "adapter", NULL), &ap, opt_str(&o, "ref-adapter", NULL), &op, &tp, &ad,
                          &ref, &opt, &tr)) {
        rc = 1;
        goto done;
    }
    idx = malloc((size_t)batch * sizeof *idx);
    if (!idx) {
        rc = fail("eval", "out of memory");
        goto done;
    }
    /* batches of --batch examples in file order; each metric is the example-weighted mean of the
     * batches' values (KTO's chosen/rejected rewards: weighted by the examples of each kind) */
    double sum[5] = {0}, wsum[5] = {0};
    for (int first = 0; first < ds.n; first += (int)batch) {
        int n = ds.n - first < batch ? ds.n - first : (int)batch;
        for (int i = 0; i < n; i++) idx[i] = first + i;
        lt_pref_batch pb;
        if (pref_make_batch(&ds, idx, n, &buf, &pb)) {
            rc = fail("eval", "out of memory");
            goto done;
        }
        lt_step_result r = {.size = sizeof r};
        if (lt_trainer_evaluate_preference(tr, &pb, &r) != LT_OK) {
            rc = fail("eval", "%s: rows %d..%d: %s", data, first + 1, first + n, lt_trainer_last_error(tr));
            goto done;
        }
        int nc = n, nr = n;
        if (obj == LT_OBJ_KTO) {
            nc = 0;
            for (int i = 0; i < n; i++) nc += ds.rows[first + i].label;
            nr = n - nc;
        }
        const double v[5] = {r.loss, r.rewards_chosen, r.rewards_rejected, r.rewards_accuracies, r.kl};
        const double wt[5] = {n, nc, nr, n, n};
        for (int k = 0; k < 5; k++)
            if (isfinite(v[k]) && wt[k] > 0) {
                sum[k] += v[k] * wt[k];
                wsum[k] += wt[k];
            }
    }
    double mean[5];
    for (int k = 0; k < 5; k++) mean[k] = wsum[k] > 0 ? sum[k] / wsum[k] : NAN;
    lt_step_result tot;
    memset(&tot, 0, sizeof tot);
    tot.rewards_chosen = mean[1];
    tot.rewards_rejected = mean[2];
    tot.rewards_accuracies = mean[3];
    tot.rewards_margins = mean[1] - mean[2];
    tot.kl = mean[4];
    if (opt_flag(&o, "json")) {
        printf("{\"loss\": %.9g", mean[0]);
        pref_print_metrics(stdout, &tot);
        printf(", \"examples\": %d}\n", ds.n);
    } else {
        printf("%s loss %.6f over %d examples; rewards: chosen %.4f rejected %.4f accuracy %.3f margin %.4f\n",
               opt_str(&o, "objective", ""), mean[0], ds.n, tot.rewards_chosen, tot.rewards_rejected,
               tot.rewards_accuracies, tot.rewards_margins);
    }
done:
    free(idx);
    pref_buf_free(&buf);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ref);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    pref_free(&ds);
    return rc;
}
