/* train_pref.c - `loratune train --objective dpo|ipo|kto|orpo`: preference training on pre-tokenized
 * JSONL (the data: pref.c). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/pref.h"
#include "cli/runrecord.h"
#include "loratune_experimental.h"

int cmd_train_pref(int argc, char **argv) {
    static const opt_spec spec[] = {TRAIN_OPT_SPECS, PREF_OPT_SPECS, {"precompute-ref", 0}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "train")) return 2;
    if (opt_flag(&o, "help")) {
        printf("usage: loratune train --objective dpo|ipo|kto|orpo --model DIR --data FILE.jsonl --out DIR [options]\n"
               "  data: {\"prompt_ids\":[..],\"chosen_ids\":[..],\"rejected_ids\":[..]} per line (KTO: "
               "\"completion_ids\"\n"
               "        and \"label\": true|false); EOS (config.json) appended to completions unless --no-eos\n"
               "  objective: --beta B (0.1) --label-smoothing E (DPO, 0) --desirable-weight W --undesirable-weight W\n"
               "             --max-length N --ref-adapter DIR (frozen reference; default: adapter disabled)\n"
               "             --precompute-ref (reference log-probs once for the dataset)\n"
               "  as SFT:    --rank --alpha --targets --rslora --adapter-init --optimizer adamw|adamw8bit|sgd "
               "--momentum M --lr\n"
               "             --scheduler --warmup --warmup-ratio --steps --epochs --batch --grad-accum\n"
               "             --max-grad-norm --weight-decay --seed --no-shuffle --threads --json --quiet\n"
               "  ranks:     mpirun -np N loratune train --objective ...: --batch is the global batch (loratune train "
               "--help)\n"
               "             --zero 0|1 --dist-timeout S\n");
        return 0;
    }
    const char *mdir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL), *out = opt_str(&o, "out", NULL);
    if (!mdir || !data || !out)
        return fail("train", "--model DIR, --data FILE.jsonl and --out DIR are required (see --help)");
    lt_objective obj;
    if (pref_parse_objective(opt_str(&o, "objective", ""), &obj))
        return fail("train", "--objective must be sft, dpo, ipo, kto or orpo");
    long long rank, steps, batch, accum, seed, threads;
    double alpha, epochs;
    if (opt_int(&o, "rank", 16, 1, 4096, &rank) || opt_double(&o, "alpha", 2.0 * rank, &alpha) ||
        opt_int(&o, "steps", 0, 0, 1LL << 40, &steps) || opt_double(&o, "epochs", 1, &epochs) ||
        opt_int(&o, "batch", 4, 1, 1 << 20, &batch) || opt_int(&o, "grad-accum", 1, 1, 1 << 20, &accum) ||
        opt_int(&o, "seed", 42, 0, 1LL << 62, &seed) || opt_int(&o, "threads", 0, 0, 1024, &threads))
        return 2;
    lt_optimizer_params op;
    int orc = optimizer_options("train", &o, 5e-6, &op);
    if (orc) return orc;
    lt_trainer_params tp;
    if (pref_trainer_params(&o, obj, &tp)) return 2;
    tp.grad_accum = (int)accum;
    tp.seed = (uint64_t)seed;
    tp.gradient_checkpointing = !opt_flag(&o, "no-checkpointing");
    if (dist_zero_option("train", &o, 0, &tp.zero_stage)) return 2;
    cli_dist dist;
    if (dist_open("train", &o, opt_str(&o, "backend", getenv("LORATUNE_BACKEND")), &dist)) return 1;
    tp.comm = dist.comm;
    const int writer = dist.rank == 0; /* rank 0 prints and writes; every rank trains on its examples */
    const int json = opt_flag(&o, "json") && writer, quiet = opt_flag(&o, "quiet") || opt_flag(&o, "json") || !writer;
    FILE *log = opt_flag(&o, "json") ? stderr : stdout;
    pref_set ds;
    char msg[1024];
    if (pref_load(data, obj == LT_OBJ_KTO, opt_flag(&o, "no-eos") ? -1 : pref_config_eos(mdir), &ds, msg, sizeof msg)) {
        dist_close(&dist, 1);
        return fail("train", "%s", msg);
    }
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL, *ref = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    pref_buf buf = {0};
    int *order = NULL, *idx = NULL, rc = 0;
    double *ref_c = NULL, *ref_r = NULL, *rb_c = NULL, *rb_r = NULL;
    metrics_log metrics = {.f = NULL};
    if (open_model("train", mdir, (int)threads, opt_str(&o, "backend", NULL), &ctx, &m)) {
        rc = 1;
        goto done;
    }
    const char *init_dir = opt_str(&o, "adapter-init", NULL);
    lt_adapter_params ap; /* without --adapter-init */
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = (int)rank;
    ap.alpha = (float)alpha;
    ap.use_rslora = opt_flag(&o, "rslora");
    ap.seed = (uint64_t)seed;
    if (!init_dir && parse_targets("train", opt_str(&o, "targets", "all"), &ap.targets)) {
        rc = 1;
        goto done;
    }
    const long long total = total_updates(steps, epochs, ds.n, batch, accum);
    op.total_steps = total;
    if (pref_open_trainer("train", m, init_dir, &ap, opt_str(&o, "ref-adapter", NULL), &op, &tp, &ad, &ref, &opt,
                          &tr)) {
        rc = 1;
        goto done;
    }
    order = malloc((size_t)ds.n * sizeof *order);
    idx = malloc((size_t)(batch > ds.n ? batch : ds.n) * sizeof *idx);
    rb_c = malloc((size_t)batch * sizeof *rb_c);
    rb_r = malloc((size_t)batch * sizeof *rb_r);
    if (!order || !idx || !rb_c || !rb_r) {
        rc = fail("train", "out of memory");
        goto done;
    }
    /* --precompute-ref: DPO and IPO (KTO's KL pairs depend on the batch; ORPO has no reference) */
    const int kto = obj == LT_OBJ_KTO,
              precompute = opt_flag(&o, "precompute-ref") && (obj == LT_OBJ_DPO || obj == LT_OBJ_IPO);
    if (precompute) {
        /* reference log-probs once per example, batched in file order */
        ref_c = malloc((size_t)ds.n * sizeof *ref_c);
        ref_r = malloc((size_t)ds.n * sizeof *ref_r);
        if (!ref_c || !ref_r) {
            rc = fail("train", "out of memory");
            goto done;
        }
        /* several ranks: each computes its rows of every batch, and the sums over the ranks (zeros elsewhere)
         * give every rank all of them */
        memset(ref_c, 0, (size_t)ds.n * sizeof *ref_c);
        memset(ref_r, 0, (size_t)ds.n * sizeof *ref_r);
        for (int first = 0; first < ds.n; first += (int)batch) {
            int n = ds.n - first < batch ? ds.n - first : (int)batch, lo, hi;
            dist_share(&dist, n, &lo, &hi);
            for (int i = lo; i < hi; i++) idx[i - lo] = first + i;
            lt_pref_batch pb;
            if (pref_make_batch(&ds, idx, hi - lo, &buf, &pb)) {
                rc = fail("train", "out of memory");
                goto done;
            }
            if (lt_trainer_reference_logps(tr, &pb, ref_c + first + lo, ref_r + first + lo, NULL) != LT_OK) {
                rc = fail("train", "reference log-probs: %s", lt_trainer_last_error(tr));
                goto done;
            }
        }
        if (dist.comm && (lt_comm_all_reduce(dist.comm, ref_c, (size_t)ds.n) != LT_OK ||
                          lt_comm_all_reduce(dist.comm, ref_r, (size_t)ds.n) != LT_OK)) {
            rc = fail("train", "reference log-probs: %s", lt_comm_last_error(dist.comm));
            goto done;
        }
    }
    char path[4200];
    if (mkdir_p(out) != 0) {
        rc = fail("train", "%s: cannot create: %s", out, strerror(errno));
        goto done;
    }
    metrics_init(&metrics, out, 0);
    if (!quiet)
        fprintf(log, "training %s with %s: %lld updates of %lld x %lld examples, %lld trainable parameters\n", mdir,
                opt_str(&o, "objective", ""), total, batch, accum, (long long)lt_adapter_n_params(ad));
    const int shuffle = !opt_flag(&o, "no-shuffle");
    long long micro = 0, cur_epoch = -1;
    lt_step_result r = {.size = sizeof r};
    int row_lo, row_hi; /* this rank's examples of every batch */
    dist_share(&dist, (int)batch, &row_lo, &row_hi);
    for (long long step = 0; step < total; step++) {
        for (long long k = 0; k < accum; k++, micro++) {
            /* micro-batch j holds examples (j*B + i) mod n of the epoch's order, as in SFT; this rank's i: row_lo.. */
            for (int i = 0; i < row_hi - row_lo; i++) {
                long long g = micro * batch + row_lo + i, ep = g / ds.n;
                if (ep != cur_epoch) {
                    epoch_order(order, ds.n, (uint64_t)seed, ep, shuffle);
                    cur_epoch = ep;
                }
                idx[i] = order[g % ds.n];
            }
            lt_pref_batch pb;
            if (pref_make_batch(&ds, idx, row_hi - row_lo, &buf, &pb)) {
                rc = fail("train", "out of memory");
                goto done;
            }
            if (precompute && !kto) {
                for (int i = 0; i < row_hi - row_lo; i++) {
                    rb_c[i] = ref_c[idx[i]];
                    rb_r[i] = ref_r[idx[i]];
                }
                pb.ref_chosen_logps = rb_c;
                pb.ref_rejected_logps = rb_r;
            }
            r.size = sizeof r;
            if (lt_trainer_step_preference(tr, &pb, &r) != LT_OK) {
                rc = fail("train", "step %lld: %s", step + 1, lt_trainer_last_error(tr));
                goto done;
            }
        }
        if (!quiet) {
            fprintf(log,
                    "step %5lld/%lld  loss %.4f  lr %.3e  grad_norm %.3f  rewards: chosen %.4f rejected %.4f "
                    "acc %.2f margin %.4f\n",
                    step + 1, total, r.loss, r.lr, r.grad_norm, r.rewards_chosen, r.rewards_rejected,
                    r.rewards_accuracies, r.rewards_margins);
            fflush(log);
        }
        char line[1024];
        FILE *mem = fmemopen(line, sizeof line, "w");
        if (!mem) {
            rc = fail("train", "out of memory");
            goto done;
        }
        fprintf(mem, "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g", step + 1, r.loss, r.lr,
                r.grad_norm);
        pref_print_metrics(mem, &r);
        fprintf(mem, "}\n");
        fclose(mem);
        if (writer && metrics_write(&metrics, line) != 0) {
            rc = fail("train", "%s: cannot write: %s", metrics.path, strerror(errno));
            goto done;
        }
    }
    {
        /* the run record and the model card, written with the adapter */
        json_t *rec = record_new("train --objective");
        record_args(rec, spec, (int)(sizeof spec / sizeof *spec), &o);
        record_set(rec, "settings", "base_model", json_string(mdir));
        record_set(rec, "settings", "method", json_string("lora"));
        record_set(rec, "settings", "objective", json_string(opt_str(&o, "objective", "")));
        record_set(rec, "settings", "beta", json_real(tp.beta));
        record_set(rec, "settings", "rank", json_integer(rank));
        record_set(rec, "settings", "lora_alpha", json_real(alpha));
        record_set(rec, "settings", "learning_rate", json_real(op.lr));
        record_set(rec, "settings", "optimizer_steps", json_integer(total));
        record_set(rec, "settings", "batch_size", json_integer(batch));
        record_set(rec, "settings", "gradient_accumulation", json_integer(accum));
        record_set(rec, "settings", "seed", json_integer(seed));
        record_data(rec, "train", data, ds.n, 0, 0, 0, NULL);
        record_set(rec, "results", "steps", json_integer(total));
        record_set(rec, "results", "final_loss", json_real(r.loss));
        record_set(rec, "compute", "device", json_string(lt_context_backend(ctx)));
        record_set(rec, "compute", "threads", json_integer(threads));
        int bad = record_attach("train", ad, rec, "adapter", NULL, NULL);
        json_decref(rec);
        if (bad) {
            rc = 1;
            goto done;
        }
    }
    run_result_dir(path, sizeof path, out, 0);
    if (writer && lt_adapter_save(ad, path) != LT_OK) {
        rc = fail("train", "%s", lt_adapter_last_error(ad));
        goto done;
    }
    if (json) {
        printf("{\"loss\": %.9g", r.loss);
        pref_print_metrics(stdout, &r);
        printf(", \"steps\": %lld, \"adapter\": \"%s\"}\n", total, path);
    } else if (!quiet) {
        fprintf(log, "adapter written to %s; metrics.jsonl in %s\n", path, out);
    }
done:
    metrics_close(&metrics);
    free(order);
    free(idx);
    free(ref_c);
    free(ref_r);
    free(rb_c);
    free(rb_r);
    pref_buf_free(&buf);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ref);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    pref_free(&ds);
    dist_close(&dist, rc);
    return rc;
}
