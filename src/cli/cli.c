/* cli.c - option parsing, error printing, and the info / eval commands. */
#include "cli/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/jsonl.h"
#include "cli/textdata.h"

int fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loratune %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int mkdir_p(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) { errno = ENAMETOOLONG; return -1; }
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

int opts_parse(opts *o, const opt_spec *spec, int n_spec, int argc, char **argv, const char *cmd) {
    memset(o, 0, sizeof *o);
    o->spec = spec;
    o->n_spec = n_spec;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "loratune %s: unexpected argument \"%s\"\n", cmd, a);
            return -1;
        }
        int k = 0;
        while (k < n_spec && strcmp(spec[k].name, a + 2)) k++;
        if (k == n_spec) {
            fprintf(stderr, "loratune %s: unknown option \"%s\"\n", cmd, a);
            return -1;
        }
        if (spec[k].takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loratune %s: option \"%s\" needs a value\n", cmd, a);
                return -1;
            }
            o->values[k] = argv[++i];
        } else {
            o->values[k] = "1";
        }
    }
    return 0;
}

static int find(const opts *o, const char *name) {
    for (int k = 0; k < o->n_spec; k++)
        if (!strcmp(o->spec[k].name, name)) return k;
    return -1;
}

const char *opt_str(const opts *o, const char *name, const char *def) {
    int k = find(o, name);
    return k >= 0 && o->values[k] ? o->values[k] : def;
}

int opt_flag(const opts *o, const char *name) { return opt_str(o, name, NULL) != NULL; }

int opt_int(const opts *o, const char *name, long long def, long long lo, long long hi, long long *out) {
    const char *s = opt_str(o, name, NULL);
    if (!s) { *out = def; return 0; }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "loratune: --%s expects an integer in [%lld, %lld], got \"%s\"\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int opt_double(const opts *o, const char *name, double def, double *out) {
    const char *s = opt_str(o, name, NULL);
    if (!s) { *out = def; return 0; }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) {
        fprintf(stderr, "loratune: --%s expects a number, got \"%s\"\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* xorshift-based generator for data order; state is a pure function of (seed, epoch) */
static uint64_t mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void epoch_order(int *order, int n, uint64_t seed, long long epoch, int shuffle) {
    for (int i = 0; i < n; i++) order[i] = i;
    if (!shuffle) return;
    uint64_t s = mix(seed ^ mix((uint64_t)epoch + 1));
    for (int i = n - 1; i > 0; i--) {
        s = mix(s);
        int j = (int)(s % (uint64_t)(i + 1));
        int t = order[i]; order[i] = order[j]; order[j] = t;
    }
}

int optimizer_choice(const char *cmd, const opts *o, lt_optimizer_params *op) {
    const char *oname = opt_str(o, "optimizer", "adamw"), *sname = opt_str(o, "scheduler", "constant");
    if (!strcmp(oname, "adamw")) op->kind = LT_OPT_ADAMW;
    else if (!strcmp(oname, "adamw8bit")) op->kind = LT_OPT_ADAMW8BIT;
    else if (!strcmp(oname, "sgd")) op->kind = LT_OPT_SGD;
    else return fail(cmd, "--optimizer must be adamw, adamw8bit or sgd"), 1;
    if (!strcmp(sname, "constant")) op->schedule = LT_SCHED_CONSTANT;
    else if (!strcmp(sname, "linear")) op->schedule = LT_SCHED_LINEAR;
    else if (!strcmp(sname, "cosine")) op->schedule = LT_SCHED_COSINE;
    else return fail(cmd, "--scheduler must be constant, linear or cosine"), 1;
    return 0;
}

int opt_base_dtype(const opts *o, const char *cmd, int *out) {
    const char *s = opt_str(o, "base-dtype", "f32");
    if (!strcmp(s, "f32")) *out = LT_BASE_F32;
    else if (!strcmp(s, "bf16")) *out = LT_BASE_BF16;
    else return fail(cmd, "--base-dtype must be f32 or bf16, got \"%s\"", s);
    return 0;
}

int open_model(const char *cmd, const char *dir, int threads, const char *backend, lt_context **ctx,
               lt_model **model) {
    return open_model_dtype(cmd, dir, threads, backend, LT_BASE_F32, ctx, model);
}

int open_model_dtype(const char *cmd, const char *dir, int threads, const char *backend, int base_dtype,
                     lt_context **ctx, lt_model **model) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = backend ? backend : (getenv("LORATUNE_BACKEND") ? getenv("LORATUNE_BACKEND") : "cpu");
    cp.n_threads = threads;
    lt_status st = lt_context_create(&cp, ctx);
    if (st != LT_OK) return fail(cmd, "%s", lt_last_error());
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = base_dtype;
    st = lt_model_load(*ctx, dir, &mp, model);
    if (st != LT_OK) {
        fail(cmd, "%s", lt_last_error());
        lt_context_free(*ctx);
        *ctx = NULL;
        return 1;
    }
    return 0;
}

/* ---- quantization options ------------------------------------------------------------------------ */

int quant_options(const char *cmd, const opts *o, lt_quant_params *qp) {
    lt_quant_params_init(qp, sizeof *qp);
    const char *f = opt_str(o, "quant", opt_str(o, "format", "nf4"));
    if (!strcmp(f, "nf4")) qp->format = LT_QUANT_NF4;
    else if (!strcmp(f, "fp4")) qp->format = LT_QUANT_FP4;
    else if (!strcmp(f, "int8")) qp->format = LT_QUANT_INT8;
    else { fail(cmd, "quantization format \"%s\" is not nf4, fp4 or int8", f); return -1; }
    qp->double_quant = !opt_flag(o, "no-double-quant");
    long long bs;
    const char *bname = opt_str(o, "quant-blocksize", NULL) ? "quant-blocksize" : "blocksize";
    if (opt_int(o, bname, 64, 64, 4096, &bs)) return -1;
    qp->blocksize = (int)bs;
    return 0;
}

void write_quant_note(const char *dir, const lt_quant_params *qp) {
    char path[4200];
    snprintf(path, sizeof path, "%s/quantization.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "{\"format\": \"%s\", \"double_quant\": %s, \"blocksize\": %d}\n",
            qp->format == LT_QUANT_FP4 ? "fp4" : qp->format == LT_QUANT_INT8 ? "int8" : "nf4",
            qp->double_quant ? "true" : "false", qp->blocksize);
    fclose(f);
}

int read_quant_note(const char *dir, lt_quant_params *qp) {
    char path[4200], buf[512];
    snprintf(path, sizeof path, "%s/quantization.json", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    lt_quant_params_init(qp, sizeof *qp);
    qp->format = strstr(buf, "\"fp4\"") ? LT_QUANT_FP4 : strstr(buf, "\"int8\"") ? LT_QUANT_INT8 : LT_QUANT_NF4;
    qp->double_quant = strstr(buf, "\"double_quant\": false") == NULL;
    const char *b = strstr(buf, "\"blocksize\":");
    if (b) qp->blocksize = atoi(b + 12);
    return 1;
}

/* ---- info ------------------------------------------------------------------------------------- */

int cmd_info(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"threads", 1}, {"json", 0}};
    opts o;
    if (opts_parse(&o, spec, 3, argc, argv, "info")) return 2;
    const char *dir = opt_str(&o, "model", NULL);
    if (!dir) return fail("info", "--model DIR is required");
    lt_context *ctx;
    lt_model *m;
    if (open_model("info", dir, 1, NULL, &ctx, &m)) return 1;
    lt_model_info in = {.size = sizeof in};
    lt_model_get_info(m, &in);
    if (opt_flag(&o, "json")) {
        printf("{\"architecture\": \"%s\", \"dtype\": \"%s\", \"vocab_size\": %lld, \"hidden_size\": %lld, "
               "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
               "\"num_key_value_heads\": %lld, \"head_dim\": %lld, \"tie_word_embeddings\": %s, "
               "\"parameters\": %lld, \"weight_bytes\": %lld, \"family\": \"%s\", \"sliding_window\": %lld, "
               "\"sliding_layers\": %d}\n",
               in.architecture, in.dtype, (long long)in.vocab_size, (long long)in.hidden_size,
               (long long)in.intermediate_size, (long long)in.n_layers, (long long)in.n_heads,
               (long long)in.n_kv_heads, (long long)in.head_dim, in.tied_embeddings ? "true" : "false",
               (long long)in.n_params, (long long)in.weight_bytes, in.family, (long long)in.sliding_window,
               (int)in.n_sliding_layers);
    } else {
        printf("model          %s\n", dir);
        printf("architecture   %s (%s family)\n", in.architecture, in.family);
        printf("stored dtype   %s (computed in f32)\n", in.dtype);
        printf("vocabulary     %lld\n", (long long)in.vocab_size);
        printf("hidden         %lld   intermediate %lld\n", (long long)in.hidden_size, (long long)in.intermediate_size);
        printf("layers         %lld\n", (long long)in.n_layers);
        printf("heads          %lld query, %lld key/value (head_dim %lld)%s\n", (long long)in.n_heads,
               (long long)in.n_kv_heads, (long long)in.head_dim, in.n_kv_heads < in.n_heads ? " GQA" : "");
        printf("rope_theta     %g   rms_norm_eps %g\n", in.rope_theta, in.rms_norm_eps);
        printf("embeddings     %s\n", in.tied_embeddings ? "tied (lm_head = embed_tokens)" : "separate lm_head");
        if (in.sliding_window > 0)
            printf("attention      sliding window %lld in %d of %lld layers\n", (long long)in.sliding_window,
                   (int)in.n_sliding_layers, (long long)in.n_layers);
        printf("parameters     %lld (%.2f M)\n", (long long)in.n_params, in.n_params / 1e6);
        printf("memory         %.1f MiB of f32 weights\n", in.weight_bytes / 1048576.0);
    }
    lt_model_free(m);
    lt_context_free(ctx);
    return 0;
}

/* ---- eval ------------------------------------------------------------------------------------- */

int cmd_eval(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"data", 1}, {"adapter", 1}, {"json", 0},
                                    {"threads", 1}, {"batch", 1}, {"backend", 1}, {"objective", 1},
                                    {"tokenizer", 1}, {"base-dtype", 1}};
    if (wants_objective(argc, argv)) return cmd_eval_pref(argc, argv);
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
    if (dataset_load_any(data, opt_str(&o, "tokenizer", dir), &ds, NULL, msg, sizeof msg)) return fail("eval", "%s", msg);
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
    int32_t *ids = malloc((size_t)batch * ds.max_len * sizeof *ids);
    int32_t *labels = malloc((size_t)batch * ds.max_len * sizeof *labels);
    if (!ids || !labels) { rc = fail("eval", "out of memory"); free(ids); free(labels); goto done; }
    /* Rows are batched in file order and padded (label -100) to the batch's longest row; padding
     * at the end of a row cannot influence the real tokens under causal attention. */
    double total = 0;
    long long tokens = 0;
    for (int first = 0; first < ds.n; first += (int)batch) {
        int n = ds.n - first < batch ? ds.n - first : (int)batch;
        int T = dataset_batch(&ds, NULL, first, n, 0, ids, labels);
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = n;
        b.seq_len = T;
        b.input_ids = ids;
        b.labels = labels;
        double s;
        int64_t k;
        if (lt_model_loss(m, ad, &b, &s, &k) != LT_OK) {
            rc = fail("eval", "%s: rows %d..%d: %s", data, first + 1, first + n, lt_model_last_error(m));
            break;
        }
        total += s;
        tokens += k;
    }
    free(ids);
    free(labels);
    if (rc == 0) {
        if (tokens == 0) {
            rc = fail("eval", "%s: every label is masked (-100): there is no token to evaluate", data);
        } else if (opt_flag(&o, "json")) {
            printf("{\"loss\": %.9g, \"tokens\": %lld}\n", total / tokens, tokens);
        } else {
            printf("loss %.6f over %lld predicted tokens (%d rows), perplexity %.3f\n", total / tokens, tokens,
                   ds.n, exp(total / tokens));
        }
    }
done:
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    dataset_free(&ds);
    return rc;
}
