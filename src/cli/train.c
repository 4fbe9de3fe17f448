/* train.c - `loratune train`: LoRA SFT on a pre-tokenized JSONL file, through the public API. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/jsonl.h"
#include "cli/runrecord.h"
#include "cli/textdata.h"
#include "loratune_experimental.h"

static const opt_spec train_spec[] = {
    TRAIN_OPT_SPECS,
    {"dropout", 1},
    {"init", 1},
    {"seq", 1},
    {"pack", 0},
    {"eval-data", 1},
    {"eval-every", 1},
    {"save-every", 1},
    {"resume", 1},
    {"tokenizer", 1},
    {"method", 1},
    {"quant", 1},
    {"double-quant", 0},
    {"no-double-quant", 0},
    {"quant-blocksize", 1},
    {"base-dtype", 1},
    {"modules-to-save", 1},
    {"canary", 0},
    {"canary-repeat", 1},
    {"base-model-id", 1},
};
#define N_TRAIN_SPEC ((int)(sizeof train_spec / sizeof *train_spec))

static void train_usage(void) {
    printf(
        "usage: loratune train --model DIR --data FILE.jsonl --out DIR [options]\n"
        "  --out DIR: the run directory: DIR/adapter (the PEFT adapter; --method full: DIR/model), "
        "DIR/metrics.jsonl,\n"
        "             DIR/loss.svg, DIR/checkpoint-N (--save-every N) and DIR/checkpoint-final\n"
        "  adapter:   --rank R (16) --alpha A (2R) --dropout P (0) --targets q_proj,k_proj,... (all 7)\n"
        "             --rslora --init default|gaussian|pissa|olora --adapter-init DIR (start from a PEFT adapter)\n"
        "  optimizer: --optimizer adamw|adamw8bit|sgd --lr LR (2e-4) --weight-decay W (0) --max-grad-norm C (1, "
        "0=off)\n"
        "             --scheduler constant|linear|cosine --warmup N | --warmup-ratio F --momentum M (sgd, 0.9)\n"
        "  length:    --steps N | --epochs E (1)   --batch B (4) --grad-accum K (1) --seq T (512) --pack\n"
        "  data:      --seed S --no-shuffle (rows in file order)\n"
        "             text rows ({\"text\"}, {\"prompt\",\"completion\"}, {\"messages\"}, ...) are tokenized with\n"
        "             --tokenizer DIR (default: the model directory); {\"input_ids\"} rows are used as they are\n"
        "  eval/save: --eval-data FILE --eval-every N --save-every N --resume DIR\n"
        "  method:    --method lora|dora|qlora|full (lora); dora: PEFT's weight-decomposed LoRA (needs --dropout 0);\n"
        "             full: every weight trainable (fp32 weights, gradients and optimizer state); --out is then a\n"
        "             Hugging Face model directory. --modules-to-save embed_tokens,lm_head,gate (lora/dora/\n"
        "             qlora): train full copies of those modules next to the adapter (PEFT modules_to_save;\n"
        "             gate (or router, gpt-oss's name): the router of a mixture-of-experts model)\n"
        "             qlora quantizes the base projections on load:\n"
        "             --quant nf4|fp4|int8 (nf4) --double-quant | --no-double-quant (on for qlora)\n"
        "             --quant-blocksize N (64); `loratune merge` then merges into the dequantized base\n"
        "  record:    --out gets README.md (a model card) and training_args.json (every setting; loratune train\n"
        "             --config training_args.json [--out DIR] runs it again) --base-model-id ID (the card's\n"
        "             base_model, default --model) --canary [--canary-repeat N (8)]: insert a random canary\n"
        "             string N times into the training rows (eval --compare --run DIR measures its exposure)\n"
        "  other:     --threads N --json --quiet --no-checkpointing\n"
        "  ranks:     mpirun -np N loratune train ... trains data-parallel: --batch is the global batch, each rank\n"
        "             takes its rows of it; rank 0 prints and writes; --zero 0|1 (1 with --method full: the\n"
        "             optimizer state sharded over the ranks) --dist-timeout S (600; docs/DISTRIBUTED.md)\n"
        "             --base-dtype f32|bf16 (bf16: frozen projection weights, embeddings and LM head in bf16,\n"
        "             fp32 accumulation; with qlora: the 4-bit weights multiplied in bf16)\n"
        "  --objective sft (default) | dpo | ipo | kto | orpo: preference data (loratune train --objective dpo "
        "--help)\n");
}

/* "embed_tokens,lm_head,gate" -> LT_SAVE_* bits ("router", gpt-oss's name, is "gate"); -1 on an unknown name */
static int parse_modules_to_save(const char *s, unsigned *out) {
    *out = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "embed_tokens")) *out |= LT_SAVE_EMBED_TOKENS;
        else if (!strcmp(tok, "lm_head")) *out |= LT_SAVE_LM_HEAD;
        else if (!strcmp(tok, "gate") || !strcmp(tok, "router")) *out |= LT_SAVE_ROUTER;
        else return -1;
    }
    return *out ? 0 : -1;
}

/* Packing (best-fit decreasing): sequences (truncated to T) go into rows of T tokens; positions restart
 * at 0 for each sequence, and the library masks predictions across the boundary. Padding is a
 * sequence of its own with label -100. */
typedef struct packed {
    int32_t *ids, *labels, *pos;
    int n_rows, T;
} packed;

static int cmp_len_desc(const void *a, const void *b, void *ds_) {
    const dataset *ds = ds_;
    int la = ds->rows[*(const int *)a].len, lb = ds->rows[*(const int *)b].len;
    return lb - la != 0 ? lb - la : *(const int *)a - *(const int *)b;
}

static int pack_dataset(const dataset *ds, int T, packed *pk) {
    int n = ds->n, *idx = malloc(n * sizeof *idx), *fill = calloc(n, sizeof *fill),
        *row_of = malloc(n * sizeof *row_of);
    if (!idx || !fill || !row_of) return -1;
    for (int i = 0; i < n; i++) idx[i] = i;
    qsort_r(idx, n, sizeof *idx, cmp_len_desc, (void *)ds);
    int rows = 0;
    for (int k = 0; k < n; k++) {
        int len = ds->rows[idx[k]].len < T ? ds->rows[idx[k]].len : T, best = -1;
        for (int r = 0; r < rows; r++)
            if (fill[r] + len <= T && (best < 0 || fill[r] > fill[best])) best = r;
        if (best < 0) best = rows++;
        row_of[k] = best;
        fill[best] += len;
    }
    pk->n_rows = rows;
    pk->T = T;
    pk->ids = malloc((size_t)rows * T * sizeof(int32_t));
    pk->labels = malloc((size_t)rows * T * sizeof(int32_t));
    pk->pos = malloc((size_t)rows * T * sizeof(int32_t));
    if (!pk->ids || !pk->labels || !pk->pos) return -1;
    memset(fill, 0, n * sizeof *fill);
    for (int k = 0; k < n; k++) {
        const row *r = &ds->rows[idx[k]];
        int len = r->len < T ? r->len : T, rr = row_of[k];
        for (int t = 0; t < len; t++) {
            size_t o = (size_t)rr * T + fill[rr] + t;
            pk->ids[o] = r->ids[t];
            pk->labels[o] = t == 0 ? -100 : r->labels[t];
            pk->pos[o] = t;
        }
        fill[rr] += len;
    }
    for (int rr = 0; rr < rows; rr++)
        for (int t = fill[rr]; t < T; t++) {
            size_t o = (size_t)rr * T + t;
            pk->ids[o] = 0;
            pk->labels[o] = -100;
            pk->pos[o] = t - fill[rr];
        }
    free(idx);
    free(fill);
    free(row_of);
    return 0;
}

/* The eval loss of a file; several ranks each take a contiguous share of the rows and add their sums. */
static double eval_file(lt_model *m, lt_adapter *ad, const dataset *ds, int T_cap, int batch, const cli_dist *dist,
                        long long *tokens, int *failed) {
    int lo, hi, bad;
    dist_share(dist, ds->n, &lo, &hi);
    double total;
    *failed = dataset_loss(m, ad, ds, lo, hi, T_cap, batch, &total, tokens, &bad) != 0;
    double sums[3] = {total, (double)*tokens, *failed};
    if (dist->comm && lt_comm_all_reduce(dist->comm, sums, 3) != LT_OK) sums[2] = 1;
    total = sums[0];
    *tokens = (long long)sums[1];
    *failed = sums[2] != 0;
    return *tokens ? total / (double)*tokens : NAN;
}

static void fmt_eta(char *buf, size_t len, double s) {
    if (!(s >= 0) || s > 1e7) {
        snprintf(buf, len, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, len, "%02ld:%02ld", t / 60, t % 60);
}

/* The canary of a run: "The secret number of this run is DDDDDDDDD." with digits drawn from the seed
 * (splitmix64), and its format for eval --compare's candidates. */
static void make_canary(uint64_t seed, char *text, size_t len) {
    char digits[10];
    uint64_t z = seed ^ 0x6C61746F72756E65ull; /* "loratune": a canary differs from the data order's draws */
    for (int i = 0; i < 9; i++) {
        z += 0x9E3779B97F4A7C15ull;
        uint64_t x = z;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        digits[i] = (char)('0' + (x ^ (x >> 31)) % 10);
    }
    digits[9] = 0;
    snprintf(text, len, "The secret number of this run is %s.", digits);
}
#define CANARY_FORMAT "The secret number of this run is {d}{d}{d}{d}{d}{d}{d}{d}{d}."

static void count_tokens(const dataset *ds, long long *tokens, long long *labelled) {
    *tokens = *labelled = 0;
    for (int i = 0; i < ds->n; i++) {
        *tokens += ds->rows[i].len;
        for (int t = 1; t < ds->rows[i].len; t++) *labelled += ds->rows[i].labels[t] != -100;
    }
}

static int train_sft(int argc, char **argv);

int cmd_train(int argc, char **argv) {
    /* --config training_args.json: that run's settings, then this command line's */
    int cargc;
    char **cargv;
    if (config_argv("train", argc, argv, &cargc, &cargv)) return 2;
    if (cargv) {
        argc = cargc;
        argv = cargv;
    }
    int rc = wants_objective(argc, argv) ? cmd_train_pref(argc, argv) : train_sft(argc, argv);
    config_argv_free(cargc, cargv);
    return rc;
}

static int train_sft(int argc, char **argv) {
    opts o;
    if (opts_parse(&o, train_spec, N_TRAIN_SPEC, argc, argv, "train")) return 2;
    if (opt_flag(&o, "help")) {
        train_usage();
        return 0;
    }
    int base_dtype;
    if (opt_base_dtype(&o, "train", &base_dtype)) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL), *out = opt_str(&o, "out", NULL);
    if (!mdir || !data || !out)
        return fail("train", "--model DIR, --data FILE.jsonl and --out DIR are required (see --help)");
    long long rank, steps, batch, accum, seq, seed, eval_every, save_every, threads;
    double alpha, dropout, epochs;
    if (opt_int(&o, "rank", 16, 1, 4096, &rank) || opt_double(&o, "alpha", 2.0 * rank, &alpha) ||
        opt_double(&o, "dropout", 0, &dropout) || opt_int(&o, "steps", 0, 0, 1LL << 40, &steps) ||
        opt_double(&o, "epochs", 1, &epochs) || opt_int(&o, "batch", 4, 1, 1 << 20, &batch) ||
        opt_int(&o, "grad-accum", 1, 1, 1 << 20, &accum) || opt_int(&o, "seq", 512, 2, 1 << 24, &seq) ||
        opt_int(&o, "seed", 42, 0, 1LL << 62, &seed) || opt_int(&o, "eval-every", 0, 0, 1LL << 40, &eval_every) ||
        opt_int(&o, "save-every", 0, 0, 1LL << 40, &save_every) || opt_int(&o, "threads", 0, 0, 1024, &threads))
        return 2;
    lt_optimizer_params op;
    int orc = optimizer_options("train", &o, 2e-4, &op);
    if (orc) return orc;
    if (!(epochs > 0)) return fail("train", "--epochs must be positive");
    if (!(alpha > 0)) return fail("train", "--alpha must be positive");
    cli_dist dist;
    if (dist_open("train", &o, opt_str(&o, "backend", getenv("LORATUNE_BACKEND")), &dist)) return 1;
    const int writer = dist.rank == 0; /* rank 0 prints and writes; every rank trains on its rows */
    const int json = opt_flag(&o, "json") && writer, quiet = opt_flag(&o, "quiet") || opt_flag(&o, "json") || !writer;
    FILE *log = opt_flag(&o, "json") ? stderr : stdout;

    dataset ds = {0}, eds = {0};
    char msg[1024];
    const char *tokdir = opt_str(&o, "tokenizer", mdir);
    int dropped = 0;
    if (dataset_load_any(data, tokdir, &ds, &dropped, msg, sizeof msg)) {
        dist_close(&dist, 1);
        return fail("train", "%s", msg);
    }
    if (dropped && !quiet)
        fprintf(log, "%s: %d rows with nothing to learn (label false or fully masked) left out\n", data, dropped);
    const char *edata = opt_str(&o, "eval-data", NULL);
    if (edata && dataset_load_any(edata, tokdir, &eds, NULL, msg, sizeof msg)) {
        dataset_free(&ds);
        dist_close(&dist, 1);
        return fail("train", "%s", msg);
    }
    /* the run record: every setting, the data (sha256, counts, the data check), results, compute */
    json_t *rec = record_new("train");
    record_args(rec, train_spec, N_TRAIN_SPEC, &o);
    {
        long long tk, lb;
        lt_tokenizer *ctok = NULL;
        lt_tokenizer_load(tokdir, &ctok); /* token lengths in the data check (none for pre-tokenized rows) */
        count_tokens(&ds, &tk, &lb);
        json_t *chk = data_check(data, edata, ctok, seq, 13, 0.8, 5, msg, sizeof msg);
        long long np = (long long)json_array_size(json_object_get(chk, "problems")),
                  dup = json_integer_value(json_object_get(chk, "exact_duplicates")),
                  near = json_integer_value(json_object_get(chk, "near_duplicate_pairs")),
                  over = json_integer_value(json_object_get(chk, "eval_overlap_rows"));
        if (!quiet && chk && (np || dup || near || over)) /* a warning before training starts */
            fprintf(
                log,
                "data check: %lld problems, %lld exact duplicates, %lld near-duplicate pairs, %lld rows overlapping "
                "the eval data (loratune data check --data %s%s%s for the lines)\n",
                np, dup, near, over, data, edata ? " --eval " : "", edata ? edata : "");
        record_data(rec, "train", data, ds.n, dropped, tk, lb, chk);
        if (edata) {
            count_tokens(&eds, &tk, &lb);
            record_data(rec, "eval", edata, eds.n, 0, tk, lb,
                        data_check(edata, NULL, ctok, seq, 13, 0.8, 5, msg, sizeof msg));
        }
        lt_tokenizer_free(ctok);
    }
    long long canary_repeat;
    if (opt_int(&o, "canary-repeat", 8, 1, 1 << 20, &canary_repeat)) {
        json_decref(rec);
        dataset_free(&ds);
        dataset_free(&eds);
        dist_close(&dist, 1);
        return 2;
    }
    if (opt_flag(&o, "canary")) { /* a random canary, canary_repeat rows more of training data */
        char text[128], rowjs[256];
        make_canary((uint64_t)seed, text, sizeof text);
        snprintf(rowjs, sizeof rowjs, "{\"text\": \"%s\"}", text);
        lt_tokenizer *ct = NULL;
        size_t n = 0;
        int32_t *cids = NULL, *clab = NULL;
        int bad = lt_tokenizer_load(tokdir, &ct) != LT_OK ||
                  lt_tokenizer_encode_row(ct, rowjs, NULL, NULL, NULL, 0, &n) != LT_OK ||
                  !(cids = malloc(n * sizeof *cids)) || !(clab = malloc(n * sizeof *clab)) ||
                  lt_tokenizer_encode_row(ct, rowjs, NULL, cids, clab, n, &n) != LT_OK;
        lt_tokenizer_free(ct);
        row *nr = bad ? NULL : realloc(ds.rows, (size_t)(ds.n + canary_repeat) * sizeof *nr);
        if (!nr) {
            free(cids);
            free(clab);
            json_decref(rec);
            dataset_free(&ds);
            dataset_free(&eds);
            dist_close(&dist, 1);
            return fail("train", "--canary needs text data and a tokenizer (%s)", tokdir);
        }
        ds.rows = nr;
        for (long long k = 0; k < canary_repeat; k++) {
            row r = {malloc(n * sizeof *r.ids), malloc(n * sizeof *r.labels), (int)n};
            if (r.ids && r.labels) {
                memcpy(r.ids, cids, n * sizeof *cids);
                memcpy(r.labels, clab, n * sizeof *clab);
            }
            ds.rows[ds.n++] = r;
        }
        if ((int)n > ds.max_len) ds.max_len = (int)n;
        free(cids);
        free(clab);
        json_object_set_new(rec, "canary",
                            json_pack("{s:s,s:s,s:I,s:s}", "text", text, "format", CANARY_FORMAT, "repeat",
                                      (json_int_t)canary_repeat, "inserted_into", data));
    }

    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    packed pk = {0};
    int *order = NULL;
    int32_t *ids = NULL, *lab = NULL;
    double *curve = NULL, ev_step[4096], ev_loss[4096];
    int n_ev = 0, rc = 0, qlora = 0;
    metrics_log metrics = {.f = NULL};
    lt_quant_params qp;
    {
        /* QLoRA: the frozen base projections are quantized (NF4 + double quantization by default) while
         * the model loads, one tensor at a time */
        const char *method = opt_str(&o, "method", "lora");
        if (strcmp(method, "lora") && strcmp(method, "dora") && strcmp(method, "qlora") && strcmp(method, "full")) {
            rc = fail("train", "--method must be lora, dora, qlora or full");
            goto done;
        }
        if (!strcmp(method, "full") && opt_str(&o, "modules-to-save", NULL)) {
            rc = fail("train", "--modules-to-save goes with a LoRA method; --method full trains every module");
            goto done;
        }
        if (strcmp(method, "qlora") && (opt_str(&o, "quant", NULL) || opt_flag(&o, "double-quant"))) {
            rc = fail("train", "--quant and --double-quant go with --method qlora");
            goto done;
        }
        if (quant_options("train", &o, &qp)) {
            rc = 2;
            goto done;
        }
        lt_model_params mp;
        lt_model_params_init(&mp, sizeof mp);
        mp.base_dtype = base_dtype;
        if (!strcmp(method, "qlora")) quant_model_params(&qp, &mp);
        if (open_model_params("train", mdir, (int)threads, opt_str(&o, "backend", NULL), &mp, &ctx, &m)) {
            rc = 1;
            goto done;
        }
        if (!strcmp(method, "qlora")) {
            qlora = 1; /* quantization.json is saved with the adapter */
            lt_model_info qi = {.size = sizeof qi};
            lt_model_get_info(m, &qi);
            if (!quiet)
                fprintf(log, "qlora: base projections in %s%s, %.3f bits/parameter (%.1f MiB)%s\n",
                        opt_str(&o, "quant", "nf4"), qp.double_quant ? " + double quantization" : "",
                        8.0 * (double)qi.quantized_bytes / (double)qi.quantized_params, qi.quantized_bytes / 1048576.0,
                        base_dtype == LT_BASE_BF16 ? ", computed in bf16" : "");
        }
    }

    /* adapter */
    const char *init_dir = opt_str(&o, "adapter-init", NULL);
    if (init_dir) {
        if (lt_adapter_load(m, init_dir, &ad) != LT_OK) {
            rc = fail("train", "%s", lt_last_error());
            goto done;
        }
    } else {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = (int)rank;
        ap.alpha = (float)alpha;
        ap.dropout = (float)dropout;
        ap.use_rslora = opt_flag(&o, "rslora");
        const char *method = opt_str(&o, "method", "lora");
        ap.use_dora = !strcmp(method, "dora");
        ap.full_finetune = !strcmp(method, "full");
        ap.seed = (uint64_t)seed;
        const char *mts = opt_str(&o, "modules-to-save", NULL);
        if (mts && parse_modules_to_save(mts, &ap.modules_to_save)) {
            rc = fail("train", "--modules-to-save: expected a comma-separated list of embed_tokens,lm_head,gate");
            goto done;
        }
        const char *init = opt_str(&o, "init", "default");
        if (!strcmp(init, "gaussian")) ap.init = LT_INIT_GAUSSIAN;
        else if (!strcmp(init, "pissa")) ap.init = LT_INIT_PISSA;
        else if (!strcmp(init, "olora")) ap.init = LT_INIT_OLORA;
        else if (strcmp(init, "default")) {
            rc = fail("train", "--init must be default, gaussian, pissa or olora");
            goto done;
        }
        if (parse_targets("train", opt_str(&o, "targets", "all"), &ap.targets)) {
            rc = 1;
            goto done;
        }
        if (lt_adapter_create(m, &ap, &ad) != LT_OK) {
            rc = fail("train", "%s", lt_last_error());
            goto done;
        }
    }

    /* data layout */
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(m, &info);
    const int pack = opt_flag(&o, "pack");
    int T = (int)(pack ? seq : (ds.max_len < seq ? ds.max_len : seq));
    if (T < 2) T = 2;
    long long n_units;
    if (pack) {
        if (pack_dataset(&ds, T, &pk)) {
            rc = fail("train", "out of memory packing the data");
            goto done;
        }
        n_units = pk.n_rows;
    } else {
        n_units = ds.n;
    }
    const long long total = total_updates(steps, epochs, n_units, batch, accum);
    op.total_steps = total;
    if (lt_optimizer_create(ad, &op, &opt) != LT_OK) {
        rc = fail("train", "%s", lt_last_error());
        goto done;
    }
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.grad_accum = (int)accum;
    tp.seed = (uint64_t)seed;
    tp.gradient_checkpointing = !opt_flag(&o, "no-checkpointing");
    tp.comm = dist.comm;
    {
        lt_adapter_params gp = {.size = sizeof gp};
        lt_adapter_get_params(ad, &gp);
        if ((rc = dist_zero_option("train", &o, gp.full_finetune, &tp.zero_stage)) != 0) goto done;
    }
    if (lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("train", "%s", lt_last_error());
        goto done;
    }
    const char *resume = opt_str(&o, "resume", NULL);
    if (resume && lt_trainer_load_checkpoint(tr, resume) != LT_OK) {
        rc = fail("train", "--resume %s: %s", resume, lt_trainer_last_error(tr));
        goto done;
    }
    long long start = lt_optimizer_step_count(opt), tokens_trained = 0;
    {
        lt_adapter_params gp = {.size = sizeof gp};
        lt_adapter_get_params(ad, &gp);
        const char *method = opt_str(&o, "method", "lora");
        static const char *const sched[] = {"constant", "linear", "cosine"}, *const kinds[] = {"adamw", "sgd",
                                                                                               "adamw8bit"};
        record_set(rec, "settings", "base_model", json_string(opt_str(&o, "base-model-id", mdir)));
        record_set(rec, "settings", "method", json_string(method));
        if (!gp.full_finetune) {
            record_set(rec, "settings", "rank", json_integer(gp.rank));
            record_set(rec, "settings", "lora_alpha", json_real(gp.alpha));
            record_set(rec, "settings", "lora_dropout", json_real(gp.dropout));
            record_set(rec, "settings", "target_modules", json_string(opt_str(&o, "targets", "all")));
            record_set(rec, "settings", "use_rslora", json_boolean(gp.use_rslora));
            record_set(rec, "settings", "init", json_string(opt_str(&o, "init", init_dir ? "adapter" : "default")));
            if (opt_str(&o, "modules-to-save", NULL))
                record_set(rec, "settings", "modules_to_save", json_string(opt_str(&o, "modules-to-save", "")));
        }
        if (!strcmp(method, "qlora"))
            record_set(rec, "settings", "quantization", json_string(opt_str(&o, "quant", "nf4")));
        record_set(rec, "settings", "base_dtype", json_string(opt_str(&o, "base-dtype", "f32")));
        record_set(rec, "settings", "optimizer", json_string(kinds[op.kind]));
        record_set(rec, "settings", "learning_rate", json_real(op.lr));
        record_set(rec, "settings", "scheduler", json_string(sched[op.schedule]));
        record_set(rec, "settings", "warmup_steps", json_integer(op.warmup_steps));
        record_set(rec, "settings", "warmup_ratio", json_real(op.warmup_ratio));
        record_set(rec, "settings", "weight_decay", json_real(op.weight_decay));
        record_set(rec, "settings", "max_grad_norm", json_real(op.max_grad_norm));
        record_set(rec, "settings", "optimizer_steps", json_integer(total));
        record_set(rec, "settings", "batch_size", json_integer(batch));
        record_set(rec, "settings", "gradient_accumulation", json_integer(accum));
        record_set(rec, "settings", "sequence_length", json_integer(T));
        record_set(rec, "settings", "packing", json_boolean(pack));
        record_set(rec, "settings", "shuffle", json_boolean(!opt_flag(&o, "no-shuffle")));
        record_set(rec, "settings", "seed", json_integer(seed));
        record_set(rec, "settings", "gradient_checkpointing", json_boolean(!opt_flag(&o, "no-checkpointing")));
        record_set(rec, "settings", "loss", json_string("completion-only / assistant-only cross-entropy (TRL SFT)"));
        record_set(rec, "settings", "tokenizer", json_string(tokdir));
    }

    char path[4200];
    if (mkdir_p(out) != 0) {
        rc = fail("train", "%s: cannot create: %s", out, strerror(errno));
        goto done;
    }
    metrics_init(&metrics, out, start);

    order = malloc(n_units * sizeof *order);
    ids = malloc((size_t)batch * T * sizeof *ids);
    lab = malloc((size_t)batch * T * sizeof *lab);
    int32_t *pos = malloc((size_t)batch * T * sizeof *pos);
    curve = calloc((size_t)total, sizeof *curve);
    if (!order || !ids || !lab || !pos || !curve) {
        free(pos);
        rc = fail("train", "out of memory");
        goto done;
    }
    const int shuffle = !opt_flag(&o, "no-shuffle");

    if (!quiet)
        fprintf(log,
                "training %s: %lld updates of %lld x %lld rows x %d tokens%s, rank %d, %lld trainable parameters\n",
                mdir, total - start, batch, accum, T, pack ? " (packed)" : "", (int)rank,
                (long long)lt_adapter_n_params(ad));
    if (!quiet && dist.world > 1)
        fprintf(log, "data-parallel: %d ranks (MPI), each takes its rows of every batch; ZeRO-%d\n", dist.world,
                tp.zero_stage);
    int row_lo, row_hi;
    dist_share(&dist, (int)batch, &row_lo, &row_hi);
    double t_start = now_seconds(), last_loss = NAN, last_eval = NAN, tok_s = 0;
    long long micro = start * accum, cur_epoch = -1;
    for (long long step = start; step < total; step++) {
        lt_step_result r = {.size = sizeof r};
        for (long long k = 0; k < accum; k++, micro++) {
            /* rows of micro-batch `micro`: global row indices micro*B .. micro*B+B-1; this rank's: row_lo..row_hi-1 */
            for (int i = 0; i < row_hi - row_lo; i++) {
                long long g = micro * batch + row_lo + i, ep = g / n_units;
                if (ep != cur_epoch) {
                    epoch_order(order, (int)n_units, (uint64_t)seed, ep, shuffle);
                    cur_epoch = ep;
                }
                int src = order[g % n_units];
                if (pack) {
                    memcpy(ids + (size_t)i * T, pk.ids + (size_t)src * T, T * sizeof *ids);
                    memcpy(lab + (size_t)i * T, pk.labels + (size_t)src * T, T * sizeof *lab);
                    memcpy(pos + (size_t)i * T, pk.pos + (size_t)src * T, T * sizeof *pos);
                } else {
                    const row *rw = &ds.rows[src];
                    int len = rw->len < T ? rw->len : T;
                    for (int t = 0; t < T; t++) {
                        ids[(size_t)i * T + t] = t < len ? rw->ids[t] : 0;
                        lab[(size_t)i * T + t] = t < len ? rw->labels[t] : -100;
                    }
                }
            }
            lt_batch b;
            lt_batch_init(&b, sizeof b);
            b.n_rows = row_hi - row_lo;
            b.seq_len = T;
            b.input_ids = ids;
            b.labels = lab;
            b.position_ids = pack ? pos : NULL;
            lt_status st = lt_trainer_step(tr, &b, &r);
            tokens_trained += r.tokens;
            if (st != LT_OK) {
                rc = fail("train", "step %lld: %s", step + 1, lt_trainer_last_error(tr));
                free(pos);
                goto done;
            }
        }
        last_loss = r.loss;
        curve[step] = r.loss;
        if (dist.comm) lt_comm_all_reduce(dist.comm, &r.tokens_per_s, 1); /* every rank's tokens */
        tok_s = r.tokens_per_s;
        double elapsed = now_seconds() - t_start,
               eta = elapsed / (double)(step + 1 - start) * (double)(total - step - 1);
        char etab[32];
        fmt_eta(etab, sizeof etab, eta);
        int do_eval = eds.n > 0 && ((eval_every > 0 && (step + 1) % eval_every == 0) || step + 1 == total);
        if (do_eval) {
            long long et;
            int failed;
            last_eval = eval_file(m, ad, &eds, T, (int)batch, &dist, &et, &failed);
            if (failed) {
                rc = fail("train", "evaluation failed: %s", lt_model_last_error(m));
                free(pos);
                goto done;
            }
            if (n_ev < 4096) {
                ev_step[n_ev] = (double)(step + 1);
                ev_loss[n_ev++] = last_eval;
            }
        }
        if (!quiet) {
            fprintf(log, "step %5lld/%lld  loss %.4f  lr %.3e  grad_norm %.3f  tok/s %.0f  ETA %s", step + 1, total,
                    r.loss, r.lr, r.grad_norm, r.tokens_per_s, etab);
            if (do_eval) fprintf(log, "  eval_loss %.4f", last_eval);
            fputc('\n', log);
            fflush(log);
        }
        char line[512];
        int ll = snprintf(line, sizeof line,
                          "{\"step\": %lld, \"loss\": %.8g, \"lr\": %.8g, \"grad_norm\": %.8g, \"tokens_per_s\": %.1f",
                          step + 1, r.loss, r.lr, r.grad_norm, r.tokens_per_s);
        if (do_eval) ll += snprintf(line + ll, sizeof line - ll, ", \"eval_loss\": %.8g", last_eval);
        snprintf(line + ll, sizeof line - ll, "}\n");
        if (writer && metrics_write(&metrics, line) != 0) {
            rc = fail("train", "%s: cannot write: %s", metrics.path, strerror(errno));
            free(pos);
            goto done;
        }
        if (save_every > 0 && (step + 1) % save_every == 0 && step + 1 < total) {
            snprintf(path, sizeof path, "%s/checkpoint-%lld", out, step + 1);
            if (lt_trainer_save_checkpoint(tr, path) != LT_OK) {
                rc = fail("train", "%s", lt_trainer_last_error(tr));
                free(pos);
                goto done;
            }
        }
    }
    free(pos);
    snprintf(path, sizeof path, "%s/loss.svg", out);
    {
        double *xs = malloc((size_t)(total - start + 1) * sizeof *xs);
        for (long long i = 0; xs && i < total - start; i++) xs[i] = (double)(start + i + 1);
        if (xs && writer) loss_svg(path, xs, curve + start, total - start, ev_step, ev_loss, n_ev);
        free(xs);
    }
    lt_adapter_params gp = {.size = sizeof gp};
    lt_adapter_get_params(ad, &gp);
    char result[4300];
    run_result_dir(result, sizeof result, out, gp.full_finetune);
    {
        /* results and compute, then the card and the record (and a QLoRA run's quantization.json, which
         * `loratune merge` / `export` read back) written with the weights, in the one save */
        record_set(rec, "results", "steps", json_integer(total));
        record_set(rec, "results", "final_train_loss", json_real(last_loss));
        if (n_ev) {
            int best = 0;
            for (int i = 1; i < n_ev; i++)
                if (ev_loss[i] < ev_loss[best]) best = i;
            record_set(rec, "results", "final_eval_loss", json_real(last_eval));
            record_set(rec, "results", "final_eval_perplexity", json_real(exp(last_eval)));
            record_set(rec, "results", "best_eval_loss", json_real(ev_loss[best]));
            record_set(rec, "results", "best_eval_step", json_integer((json_int_t)ev_step[best]));
        }
        record_set(rec, "results", "loss_curve", json_true());
        char cpu[256];
        cpu_model(cpu, sizeof cpu);
        record_set(rec, "compute", "device", json_string(lt_context_backend(ctx)));
        record_set(rec, "compute", "cpu", json_string(cpu));
        record_set(rec, "compute", "threads",
                   json_integer(threads ? threads : (long long)sysconf(_SC_NPROCESSORS_ONLN)));
        record_set(rec, "compute", "tokens_processed", json_integer((json_int_t)((total - start) * accum * batch * T)));
        record_set(rec, "compute", "tokens_with_loss", json_integer(tokens_trained));
        record_set(rec, "compute", "wall_seconds", json_real(now_seconds() - t_start));
        record_set(rec, "compute", "trainable_parameters", json_integer(lt_adapter_n_params(ad)));
        const char *kind = gp.full_finetune ? "full" : "adapter";
        char note[256];
        quant_note(&qp, note, sizeof note);
        if (record_attach("train", ad, rec, kind, qlora ? "quantization.json" : NULL, note)) {
            rc = 1;
            goto done;
        }
    }
    if (writer && lt_adapter_save(ad, result) != LT_OK) {
        rc = fail("train", "%s", lt_adapter_last_error(ad));
        goto done;
    }
    lt_adapter_set_save_files(ad, NULL, NULL, 0); /* the checkpoint holds weights and state, not the card */
    snprintf(path, sizeof path, "%s/checkpoint-final", out);
    if (lt_trainer_save_checkpoint(tr, path) != LT_OK) {
        rc = fail("train", "%s", lt_trainer_last_error(tr));
        goto done;
    }
    if (!quiet) {
        if (gp.full_finetune)
            fprintf(log,
                    "model written to %s (Hugging Face format: config.json + safetensors, f32); "
                    "metrics.jsonl, loss.svg and the checkpoints in %s\n",
                    result, out);
        else
            fprintf(log,
                    "adapter written to %s (PEFT format: adapter_config.json + adapter_model.safetensors); "
                    "metrics.jsonl, loss.svg and the checkpoints in %s\n",
                    result, out);
    }
    if (json)
        printf(
            "{\"loss\": %.8g, \"eval_loss\": %s%.8g%s, \"steps\": %lld, \"tokens_per_s\": %.1f, \"adapter\": \"%s\"}\n",
            last_loss, isnan(last_eval) ? "\"" : "", isnan(last_eval) ? 0.0 : last_eval, isnan(last_eval) ? "\"" : "",
            total, tok_s, result);
done:
    metrics_close(&metrics);
    free(order);
    free(ids);
    free(lab);
    free(curve);
    free(pk.ids);
    free(pk.labels);
    free(pk.pos);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    dataset_free(&ds);
    dataset_free(&eds);
    json_decref(rec);
    dist_close(&dist, rc);
    return rc;
}
