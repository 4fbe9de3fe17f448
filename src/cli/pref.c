/* pref.c - `loratune train|eval --objective dpo|ipo|kto|orpo`: preference objectives on pre-tokenized JSONL. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

/* ---- data --------------------------------------------------------------------------------------- */

/* One example: prompt and chosen (KTO: the completion) and rejected (unused by KTO) ids. */
typedef struct pref_row {
    int32_t *p, *c, *r;
    int np, nc, nr, label;
} pref_row;

typedef struct pref_set {
    pref_row *rows;
    int n;
} pref_set;

static void pref_free(pref_set *s) {
    for (int i = 0; i < s->n; i++) { free(s->rows[i].p); free(s->rows[i].c); free(s->rows[i].r); }
    free(s->rows);
    memset(s, 0, sizeof *s);
}

static int read_arr(json_t *o, const char *key, int32_t **out, int *n, char *why, size_t wl) {
    json_t *a = json_object_get(o, key);
    if (!a) { snprintf(why, wl, "missing \"%s\"", key); return -1; }
    if (!json_is_array(a)) { snprintf(why, wl, "\"%s\" is not an array of token ids", key); return -1; }
    size_t k = json_array_size(a);
    int32_t *v = malloc((k + 1) * sizeof *v); /* +1: room for an appended EOS */
    if (!v) { snprintf(why, wl, "out of memory"); return -1; }
    for (size_t i = 0; i < k; i++) {
        json_t *x = json_array_get(a, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX) {
            snprintf(why, wl, "\"%s\"[%zu] is not a token id", key, i);
            free(v);
            return -1;
        }
        v[i] = (int32_t)json_integer_value(x);
    }
    *out = v;
    *n = (int)k;
    return 0;
}

/* KTO rows {"prompt_ids", "completion_ids", "label": bool}; others {"prompt_ids", "chosen_ids", "rejected_ids"}.
 * eos >= 0: appended to every completion that does not end with it (as TRL's tokenisation does). */
static int pref_load(const char *path, int kto, int32_t eos, pref_set *s, char *msg, size_t ml) {
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "r");
    if (!f) { snprintf(msg, ml, "%s: cannot open: %s", path, strerror(errno)); return -1; }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, capn = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        char *q = line;
        while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
        if (!*q) continue;
        json_error_t je;
        json_t *o = json_loads(q, 0, &je);
        char why[256] = "";
        pref_row r = {0};
        if (!o || !json_is_object(o)) snprintf(why, sizeof why, "not a JSON object%s%s", o ? "" : ": ", o ? "" : je.text);
        else if (read_arr(o, "prompt_ids", &r.p, &r.np, why, sizeof why) == 0) {
            if (kto) {
                json_t *lab = json_object_get(o, "label");
                if (read_arr(o, "completion_ids", &r.c, &r.nc, why, sizeof why) == 0) {
                    if (!json_is_boolean(lab)) snprintf(why, sizeof why, "\"label\" must be true or false (KTO rows)");
                    else r.label = json_is_true(lab);
                }
            } else if (read_arr(o, "chosen_ids", &r.c, &r.nc, why, sizeof why) == 0) {
                read_arr(o, "rejected_ids", &r.r, &r.nr, why, sizeof why);
            }
        }
        json_decref(o);
        if (!why[0] && eos >= 0) {
            if (r.nc == 0 || r.c[r.nc - 1] != eos) r.c[r.nc++] = eos;
            if (!kto && (r.nr == 0 || r.r[r.nr - 1] != eos)) r.r[r.nr++] = eos;
        }
        if (why[0]) {
            snprintf(msg, ml, "%s:%d: %s", path, lineno, why);
            free(r.p); free(r.c); free(r.r); free(line); fclose(f); pref_free(s);
            return -1;
        }
        if (s->n == capn) {
            capn = capn ? 2 * capn : 64;
            pref_row *nr = realloc(s->rows, (size_t)capn * sizeof *nr);
            if (!nr) { snprintf(msg, ml, "out of memory"); free(line); fclose(f); pref_free(s); return -1; }
            s->rows = nr;
        }
        s->rows[s->n++] = r;
    }
    free(line);
    fclose(f);
    if (s->n == 0) { snprintf(msg, ml, "%s: no rows (the file is empty)", path); return -1; }
    return 0;
}

/* The eos_token_id of MODEL/config.json (first one when it is a list); -1 when absent. */
static int32_t config_eos(const char *mdir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", mdir);
    json_t *js = json_load_file(p, 0, NULL);
    if (!js) return -1;
    json_t *e = json_object_get(js, "eos_token_id");
    if (json_is_array(e)) e = json_array_get(e, 0);
    int32_t v = json_is_integer(e) ? (int32_t)json_integer_value(e) : -1;
    json_decref(js);
    return v;
}

/* A batch of n examples rows[idx[0..n)] as an lt_pref_batch; the arrays are owned by the caller's
 * buffers (grown as needed). */
typedef struct pref_buf {
    int32_t *pi, *pl, *ci, *cl, *ri, *rl, *lab;
    size_t cap_p, cap_c, cap_r;
    int cap_n;
} pref_buf;

static int grow(int32_t **a, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    int32_t *n = realloc(*a, need * sizeof *n);
    if (!n) return -1;
    *a = n;
    *cap = need;
    return 0;
}

static int make_batch(const pref_set *s, const int *idx, int n, pref_buf *b, lt_pref_batch *pb) {
    size_t np = 0, nc = 0, nr = 0;
    for (int i = 0; i < n; i++) { np += s->rows[idx[i]].np; nc += s->rows[idx[i]].nc; nr += s->rows[idx[i]].nr; }
    if (n > b->cap_n) {
        size_t c = 0;
        free(b->pl); free(b->cl); free(b->rl); free(b->lab);
        b->pl = malloc(n * sizeof(int32_t)); b->cl = malloc(n * sizeof(int32_t));
        b->rl = malloc(n * sizeof(int32_t)); b->lab = malloc(n * sizeof(int32_t));
        if (!b->pl || !b->cl || !b->rl || !b->lab) return -1;
        b->cap_n = n;
        (void)c;
    }
    if (grow(&b->pi, &b->cap_p, np + 1) || grow(&b->ci, &b->cap_c, nc + 1) || grow(&b->ri, &b->cap_r, nr + 1)) return -1;
    size_t op = 0, oc = 0, orr = 0;
    for (int i = 0; i < n; i++) {
        const pref_row *r = &s->rows[idx[i]];
        memcpy(b->pi + op, r->p, r->np * sizeof(int32_t)); op += r->np;
        memcpy(b->ci + oc, r->c, r->nc * sizeof(int32_t)); oc += r->nc;
        if (r->nr) memcpy(b->ri + orr, r->r, r->nr * sizeof(int32_t));
        orr += r->nr;
        b->pl[i] = r->np; b->cl[i] = r->nc; b->rl[i] = r->nr; b->lab[i] = r->label;
    }
    lt_pref_batch_init(pb, sizeof *pb);
    pb->n_rows = n;
    pb->prompt_ids = b->pi; pb->prompt_lens = b->pl;
    pb->chosen_ids = b->ci; pb->chosen_lens = b->cl;
    pb->rejected_ids = b->ri; pb->rejected_lens = b->rl;
    pb->labels = b->lab;
    return 0;
}

static void buf_free(pref_buf *b) {
    free(b->pi); free(b->pl); free(b->ci); free(b->cl); free(b->ri); free(b->rl); free(b->lab);
}

static int parse_objective(const char *s, lt_objective *o) {
    static const struct { const char *n; lt_objective o; } t[] = {
        {"dpo", LT_OBJ_DPO}, {"ipo", LT_OBJ_IPO}, {"kto", LT_OBJ_KTO}, {"orpo", LT_OBJ_ORPO}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(s, t[i].n)) { *o = t[i].o; return 0; }
    return -1;
}

/* A JSON number, or null for NaN (a metric that is not defined for the objective). */
static void jnum(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ", \"%s\": %.9g", key, v);
    else fprintf(f, ", \"%s\": null", key);
}

static void print_metrics(FILE *f, const lt_step_result *r) {
    jnum(f, "rewards/chosen", r->rewards_chosen);
    jnum(f, "rewards/rejected", r->rewards_rejected);
    jnum(f, "rewards/accuracies", r->rewards_accuracies);
    jnum(f, "rewards/margins", r->rewards_margins);
    if (isfinite(r->kl)) jnum(f, "kl", r->kl);
}

/* Common options of train and eval for the objective. */
static int trainer_params(const opts *o, lt_objective obj, lt_trainer_params *tp) {
    double beta, ls, dw, uw;
    long long maxlen;
    if (opt_double(o, "beta", 0.1, &beta) || opt_double(o, "label-smoothing", 0, &ls) ||
        opt_double(o, "desirable-weight", 1, &dw) || opt_double(o, "undesirable-weight", 1, &uw) ||
        opt_int(o, "max-length", 0, 0, 1 << 30, &maxlen))
        return -1;
    lt_trainer_params_init(tp, sizeof *tp);
    tp->objective = obj;
    tp->beta = (float)beta;
    tp->label_smoothing = (float)ls;
    tp->desirable_weight = (float)dw;
    tp->undesirable_weight = (float)uw;
    tp->max_length = (int32_t)maxlen;
    return 0;
}

int wants_objective(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--objective")) return strcmp(argv[i + 1], "sft") != 0;
    return 0;
}

/* ---- eval ----------------------------------------------------------------------------------------- */

int cmd_eval_pref(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"data", 1}, {"adapter", 1}, {"json", 0}, {"threads", 1},
                                    {"batch", 1}, {"backend", 1}, {"objective", 1}, {"beta", 1},
                                    {"label-smoothing", 1}, {"desirable-weight", 1}, {"undesirable-weight", 1},
                                    {"max-length", 1}, {"ref-adapter", 1}, {"no-eos", 0}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "eval")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL);
    lt_objective obj;
    if (!mdir || !data) return fail("eval", "--model DIR and --data FILE.jsonl are required");
    if (parse_objective(opt_str(&o, "objective", ""), &obj)) return fail("eval", "--objective must be dpo, ipo, kto or orpo");
    long long threads, batch;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "batch", 8, 1, 1 << 20, &batch)) return 2;
    lt_trainer_params tp;
    if (trainer_params(&o, obj, &tp)) return 2;
    pref_set ds;
    char msg[1024];
    if (pref_load(data, obj == LT_OBJ_KTO, opt_flag(&o, "no-eos") ? -1 : config_eos(mdir), &ds, msg, sizeof msg))
        return fail("eval", "%s", msg);
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL, *ref = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    pref_buf buf = {0};
    int *idx = NULL, rc = 0;
    if (open_model("eval", mdir, (int)threads, opt_str(&o, "backend", NULL), &ctx, &m)) { rc = 1; goto done; }
    const char *adir = opt_str(&o, "adapter", NULL), *rdir = opt_str(&o, "ref-adapter", NULL);
    if (adir) {
        if (lt_adapter_load(m, adir, &ad) != LT_OK) { rc = fail("eval", "%s", lt_last_error()); goto done; }
    } else { /* no adapter: a fresh LoRA (B = 0), i.e. the base model */
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        if (lt_adapter_create(m, &ap, &ad) != LT_OK) { rc = fail("eval", "%s", lt_last_error()); goto done; }
    }
    if (rdir && lt_adapter_load(m, rdir, &ref) != LT_OK) { rc = fail("eval", "%s", lt_last_error()); goto done; }
    tp.ref_adapter = ref;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    if (lt_optimizer_create(ad, &op, &opt) != LT_OK || lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("eval", "%s", lt_last_error());
        goto done;
    }
    idx = malloc((size_t)batch * sizeof *idx);
    if (!idx) { rc = fail("eval", "out of memory"); goto done; }
    /* batches of --batch examples in file order; each metric is the example-weighted mean of the
     * batches' values (KTO's chosen/rejected rewards: weighted by the examples of each kind) */
    double sum[5] = {0}, wsum[5] = {0};
    for (int first = 0; first < ds.n; first += (int)batch) {
        int n = ds.n - first < batch ? ds.n - first : (int)batch;
        for (int i = 0; i < n; i++) idx[i] = first + i;
        lt_pref_batch pb;
        if (make_batch(&ds, idx, n, &buf, &pb)) { rc = fail("eval", "out of memory"); goto done; }
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
            if (isfinite(v[k]) && wt[k] > 0) { sum[k] += v[k] * wt[k]; wsum[k] += wt[k]; }
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
        print_metrics(stdout, &tot);
        printf(", \"examples\": %d}\n", ds.n);
    } else {
        printf("%s loss %.6f over %d examples; rewards: chosen %.4f rejected %.4f accuracy %.3f margin %.4f\n",
               opt_str(&o, "objective", ""), mean[0], ds.n, tot.rewards_chosen, tot.rewards_rejected,
               tot.rewards_accuracies, tot.rewards_margins);
    }
done:
    free(idx);
    buf_free(&buf);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ref);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    pref_free(&ds);
    return rc;
}

/* ---- train ---------------------------------------------------------------------------------------- */


static int parse_targets(const char *s, unsigned *out) {
    static const char *names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    *out = 0;
    if (!strcmp(s, "all") || !strcmp(s, "all-linear")) { *out = LT_TARGET_ALL; return 0; }
    char b[256];
    snprintf(b, sizeof b, "%s", s);
    for (char *tok = strtok(b, ","); tok; tok = strtok(NULL, ",")) {
        int k = 0;
        while (k < 7 && strcmp(tok, names[k])) k++;
        if (k == 7) return -1;
        *out |= 1u << k;
    }
    return *out ? 0 : -1;
}

int cmd_train_pref(int argc, char **argv) {
    static const opt_spec spec[] = {
        {"model", 1}, {"data", 1}, {"out", 1}, {"adapter-init", 1}, {"rank", 1}, {"alpha", 1}, {"targets", 1},
        {"rslora", 0}, {"lr", 1}, {"scheduler", 1}, {"warmup", 1}, {"warmup-ratio", 1}, {"steps", 1}, {"epochs", 1},
        {"batch", 1}, {"grad-accum", 1}, {"max-grad-norm", 1}, {"weight-decay", 1}, {"optimizer", 1}, {"momentum", 1},
        {"seed", 1}, {"no-shuffle", 0}, {"threads", 1}, {"json", 0}, {"quiet", 0}, {"no-checkpointing", 0},
        {"backend", 1}, {"objective", 1}, {"beta", 1}, {"label-smoothing", 1}, {"desirable-weight", 1},
        {"undesirable-weight", 1}, {"max-length", 1}, {"ref-adapter", 1}, {"precompute-ref", 0}, {"no-eos", 0},
        {"help", 0}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "train")) return 2;
    if (opt_flag(&o, "help")) {
        printf("usage: loratune train --objective dpo|ipo|kto|orpo --model DIR --data FILE.jsonl --out DIR [options]\n"
               "  data: {\"prompt_ids\":[..],\"chosen_ids\":[..],\"rejected_ids\":[..]} per line (KTO: \"completion_ids\"\n"
               "        and \"label\": true|false); EOS (config.json) appended to completions unless --no-eos\n"
               "  objective: --beta B (0.1) --label-smoothing E (DPO, 0) --desirable-weight W --undesirable-weight W\n"
               "             --max-length N --ref-adapter DIR (frozen reference; default: adapter disabled)\n"
               "             --precompute-ref (reference log-probs once for the dataset)\n"
               "  as SFT:    --rank --alpha --targets --rslora --adapter-init --optimizer adamw|adamw8bit|sgd --momentum M --lr\n"
               "             --scheduler --warmup --warmup-ratio --steps --epochs --batch --grad-accum\n"
               "             --max-grad-norm --weight-decay --seed --no-shuffle --threads --json --quiet\n");
        return 0;
    }
    const char *mdir = opt_str(&o, "model", NULL), *data = opt_str(&o, "data", NULL), *out = opt_str(&o, "out", NULL);
    if (!mdir || !data || !out) return fail("train", "--model DIR, --data FILE.jsonl and --out DIR are required (see --help)");
    lt_objective obj;
    if (parse_objective(opt_str(&o, "objective", ""), &obj)) return fail("train", "--objective must be sft, dpo, ipo, kto or orpo");
    long long rank, steps, batch, accum, warmup, seed, threads;
    double alpha, lr, epochs, mgn, wd, warmup_ratio, momentum;
    if (opt_int(&o, "rank", 16, 1, 4096, &rank) || opt_double(&o, "alpha", 2.0 * rank, &alpha) ||
        opt_double(&o, "lr", 5e-6, &lr) || opt_int(&o, "steps", 0, 0, 1LL << 40, &steps) ||
        opt_double(&o, "epochs", 1, &epochs) || opt_int(&o, "batch", 4, 1, 1 << 20, &batch) ||
        opt_int(&o, "grad-accum", 1, 1, 1 << 20, &accum) || opt_int(&o, "warmup", 0, 0, 1LL << 40, &warmup) ||
        opt_double(&o, "warmup-ratio", 0, &warmup_ratio) || opt_double(&o, "max-grad-norm", 1.0, &mgn) ||
        opt_double(&o, "weight-decay", 0, &wd) || opt_int(&o, "seed", 42, 0, 1LL << 62, &seed) ||
        opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_double(&o, "momentum", 0.9, &momentum))
        return 2;
    lt_trainer_params tp;
    if (trainer_params(&o, obj, &tp)) return 2;
    tp.grad_accum = (int)accum;
    tp.seed = (uint64_t)seed;
    tp.gradient_checkpointing = !opt_flag(&o, "no-checkpointing");
    const int json = opt_flag(&o, "json"), quiet = opt_flag(&o, "quiet") || json;
    FILE *log = json ? stderr : stdout;
    pref_set ds;
    char msg[1024];
    if (pref_load(data, obj == LT_OBJ_KTO, opt_flag(&o, "no-eos") ? -1 : config_eos(mdir), &ds, msg, sizeof msg))
        return fail("train", "%s", msg);
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL, *ref = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    pref_buf buf = {0};
    int *order = NULL, *idx = NULL, rc = 0;
    double *ref_c = NULL, *ref_r = NULL, *rb_c = NULL, *rb_r = NULL;
    FILE *metrics = NULL;
    if (open_model("train", mdir, (int)threads, opt_str(&o, "backend", NULL), &ctx, &m)) { rc = 1; goto done; }
    const char *init_dir = opt_str(&o, "adapter-init", NULL), *rdir = opt_str(&o, "ref-adapter", NULL);
    if (init_dir) {
        if (lt_adapter_load(m, init_dir, &ad) != LT_OK) { rc = fail("train", "%s", lt_last_error()); goto done; }
    } else {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = (int)rank;
        ap.alpha = (float)alpha;
        ap.use_rslora = opt_flag(&o, "rslora");
        ap.seed = (uint64_t)seed;
        if (parse_targets(opt_str(&o, "targets", "all"), &ap.targets)) { rc = fail("train", "--targets: bad list"); goto done; }
        if (lt_adapter_create(m, &ap, &ad) != LT_OK) { rc = fail("train", "%s", lt_last_error()); goto done; }
    }
    if (rdir && lt_adapter_load(m, rdir, &ref) != LT_OK) { rc = fail("train", "%s", lt_last_error()); goto done; }
    tp.ref_adapter = ref;
    const long long micro_per_epoch = (ds.n + batch - 1) / batch;
    long long total = steps > 0 ? steps : (long long)ceil(epochs * (double)micro_per_epoch / (double)accum);
    if (total < 1) total = 1;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    if (optimizer_choice("train", &o, &op)) { rc = 1; goto done; }
    op.lr = (float)lr;
    op.weight_decay = (float)wd;
    op.max_grad_norm = (float)mgn;
    op.momentum = (float)momentum;
    op.warmup_steps = warmup;
    op.warmup_ratio = (float)warmup_ratio;
    op.total_steps = total;
    if (lt_optimizer_create(ad, &op, &opt) != LT_OK || lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("train", "%s", lt_last_error());
        goto done;
    }
    order = malloc((size_t)ds.n * sizeof *order);
    idx = malloc((size_t)(batch > ds.n ? batch : ds.n) * sizeof *idx);
    rb_c = malloc((size_t)batch * sizeof *rb_c);
    rb_r = malloc((size_t)batch * sizeof *rb_r);
    if (!order || !idx || !rb_c || !rb_r) { rc = fail("train", "out of memory"); goto done; }
    /* --precompute-ref: DPO and IPO (KTO's KL pairs depend on the batch; ORPO has no reference) */
    const int kto = obj == LT_OBJ_KTO, precompute = opt_flag(&o, "precompute-ref") && (obj == LT_OBJ_DPO || obj == LT_OBJ_IPO);
    if (precompute) {
        /* reference log-probs once per example, batched in file order */
        ref_c = malloc((size_t)ds.n * sizeof *ref_c);
        ref_r = malloc((size_t)ds.n * sizeof *ref_r);
        if (!ref_c || !ref_r) { rc = fail("train", "out of memory"); goto done; }
        for (int first = 0; first < ds.n; first += (int)batch) {
            int n = ds.n - first < batch ? ds.n - first : (int)batch;
            for (int i = 0; i < n; i++) idx[i] = first + i;
            lt_pref_batch pb;
            if (make_batch(&ds, idx, n, &buf, &pb)) { rc = fail("train", "out of memory"); goto done; }
            if (lt_trainer_reference_logps(tr, &pb, ref_c + first, ref_r + first, NULL) != LT_OK) {
                rc = fail("train", "reference log-probs: %s", lt_trainer_last_error(tr));
                goto done;
            }
        }
    }
    char path[4200];
    if (mkdir_p(out) != 0) { rc = fail("train", "%s: cannot create: %s", out, strerror(errno)); goto done; }
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    if (!(metrics = fopen(path, "w"))) { rc = fail("train", "%s: cannot write: %s", path, strerror(errno)); goto done; }
    if (!quiet)
        fprintf(log, "training %s with %s: %lld updates of %lld x %lld examples, %lld trainable parameters\n", mdir,
                opt_str(&o, "objective", ""), total, batch, accum, (long long)lt_adapter_n_params(ad));
    const int shuffle = !opt_flag(&o, "no-shuffle");
    long long micro = 0, cur_epoch = -1;
    lt_step_result r = {.size = sizeof r};
    for (long long step = 0; step < total; step++) {
        for (long long k = 0; k < accum; k++, micro++) {
            /* micro-batch j holds examples (j*B + i) mod n of the epoch's order, as in SFT */
            for (int i = 0; i < batch; i++) {
                long long g = micro * batch + i, ep = g / ds.n;
                if (ep != cur_epoch) { epoch_order(order, ds.n, (uint64_t)seed, ep, shuffle); cur_epoch = ep; }
                idx[i] = order[g % ds.n];
            }
            lt_pref_batch pb;
            if (make_batch(&ds, idx, (int)batch, &buf, &pb)) { rc = fail("train", "out of memory"); goto done; }
            if (precompute && !kto) {
                for (int i = 0; i < batch; i++) { rb_c[i] = ref_c[idx[i]]; rb_r[i] = ref_r[idx[i]]; }
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
            fprintf(log, "step %5lld/%lld  loss %.4f  lr %.3e  grad_norm %.3f  rewards: chosen %.4f rejected %.4f "
                    "acc %.2f margin %.4f\n", step + 1, total, r.loss, r.lr, r.grad_norm, r.rewards_chosen,
                    r.rewards_rejected, r.rewards_accuracies, r.rewards_margins);
            fflush(log);
        }
        fprintf(metrics, "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g", step + 1, r.loss, r.lr,
                r.grad_norm);
        print_metrics(metrics, &r);
        fprintf(metrics, "}\n");
        fflush(metrics);
    }
    if (lt_adapter_save(ad, out) != LT_OK) { rc = fail("train", "%s", lt_adapter_last_error(ad)); goto done; }
    if (json) {
        printf("{\"loss\": %.9g", r.loss);
        print_metrics(stdout, &r);
        printf(", \"steps\": %lld, \"adapter\": \"%s\"}\n", total, out);
    } else if (!quiet) {
        fprintf(log, "adapter written to %s; metrics.jsonl beside it\n", out);
    }
done:
    if (metrics) fclose(metrics);
    free(order); free(idx); free(ref_c); free(ref_r); free(rb_c); free(rb_r);
    buf_free(&buf);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ref);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    pref_free(&ds);
    return rc;
}
