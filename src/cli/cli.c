/* cli.c - what every command shares: option parsing, error printing, opening a model or a tokenizer,
 * LoRA targets, quantization and optimizer options, the epoch order of training data. */
#include "cli/cli.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* "[rank r/W] " once a command runs as one of several ranks (dist_open) */
static char rank_prefix[48];

int fail(const char *cmd, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* the library names its operation too ("combine: ..."): say the command once */
    const size_t n = strlen(cmd);
    const char *m = strncmp(msg, cmd, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
    fprintf(stderr, "%sloratune %s: %s\n", rank_prefix, cmd, m);
    return 1;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

FILE *atomic_fopen(const char *path, char *tmp, size_t len) {
    if (snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid()) >= (int)len) return NULL;
    return fopen(tmp, "w");
}

int atomic_fclose(FILE *f, const char *tmp, const char *path) {
    int bad = ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0; /* ferror: a failed write before */
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int mkdir_p(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
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
    if (!s) {
        *out = def;
        return 0;
    }
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
    if (!s) {
        *out = def;
        return 0;
    }
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
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

int optimizer_options(const char *cmd, const opts *o, double lr, lt_optimizer_params *op) {
    lt_optimizer_params_init(op, sizeof *op);
    const char *oname = opt_str(o, "optimizer", "adamw"), *sname = opt_str(o, "scheduler", "constant");
    if (!strcmp(oname, "adamw")) op->kind = LT_OPT_ADAMW;
    else if (!strcmp(oname, "adamw8bit")) op->kind = LT_OPT_ADAMW8BIT;
    else if (!strcmp(oname, "sgd")) op->kind = LT_OPT_SGD;
    else return fail(cmd, "--optimizer must be adamw, adamw8bit or sgd"), 1;
    if (!strcmp(sname, "constant")) op->schedule = LT_SCHED_CONSTANT;
    else if (!strcmp(sname, "linear")) op->schedule = LT_SCHED_LINEAR;
    else if (!strcmp(sname, "cosine")) op->schedule = LT_SCHED_COSINE;
    else return fail(cmd, "--scheduler must be constant, linear or cosine"), 1;
    double wd, mgn, momentum, warmup_ratio;
    long long warmup;
    if (opt_double(o, "lr", lr, &lr) || opt_double(o, "weight-decay", 0, &wd) ||
        opt_double(o, "max-grad-norm", 1.0, &mgn) || opt_double(o, "momentum", op->momentum, &momentum) ||
        opt_int(o, "warmup", 0, 0, 1LL << 40, &warmup) || opt_double(o, "warmup-ratio", 0, &warmup_ratio))
        return 2;
    op->lr = (float)lr;
    op->weight_decay = (float)wd;
    op->max_grad_norm = (float)mgn;
    op->momentum = (float)momentum;
    op->warmup_steps = warmup;
    op->warmup_ratio = (float)warmup_ratio;
    return 0;
}

long long total_updates(long long steps, double epochs, long long units, long long batch, long long accum) {
    const long long micro_per_epoch = (units + batch - 1) / batch;
    const long long total = steps > 0 ? steps : (long long)ceil(epochs * (double)micro_per_epoch / (double)accum);
    return total < 1 ? 1 : total;
}

int opt_base_dtype(const opts *o, const char *cmd, int *out) {
    const char *s = opt_str(o, "base-dtype", "f32");
    if (!strcmp(s, "f32")) *out = LT_BASE_F32;
    else if (!strcmp(s, "bf16")) *out = LT_BASE_BF16;
    else return fail(cmd, "--base-dtype must be f32 or bf16, got \"%s\"", s);
    return 0;
}

int open_model(const char *cmd, const char *dir, int threads, const char *backend, lt_context **ctx, lt_model **model) {
    return open_model_dtype(cmd, dir, threads, backend, LT_BASE_F32, ctx, model);
}

int open_model_dtype(const char *cmd, const char *dir, int threads, const char *backend, int base_dtype,
                     lt_context **ctx, lt_model **model) {
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = base_dtype;
    return open_model_params(cmd, dir, threads, backend, &mp, ctx, model);
}

int open_model_params(const char *cmd, const char *dir, int threads, const char *backend, const lt_model_params *mp,
                      lt_context **ctx, lt_model **model) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = backend ? backend : (getenv("LORATUNE_BACKEND") ? getenv("LORATUNE_BACKEND") : "cpu");
    cp.n_threads = threads;
    lt_status st = lt_context_create(&cp, ctx);
    if (st != LT_OK) return fail(cmd, "%s", lt_last_error());
    st = lt_model_load(*ctx, dir, mp, model);
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
    else {
        fail(cmd, "quantization format \"%s\" is not nf4, fp4 or int8", f);
        return -1;
    }
    qp->double_quant = !opt_flag(o, "no-double-quant");
    long long bs;
    const char *bname = opt_str(o, "quant-blocksize", NULL) ? "quant-blocksize" : "blocksize";
    if (opt_int(o, bname, 64, 64, 4096, &bs)) return -1;
    qp->blocksize = (int)bs;
    return 0;
}

void quant_model_params(const lt_quant_params *qp, lt_model_params *mp) {
    mp->quantization = qp->format;
    mp->double_quant = qp->double_quant;
    mp->quant_blocksize = qp->blocksize;
}

int quant_note(const lt_quant_params *qp, char *buf, size_t len) {
    return snprintf(buf, len, "{\"format\": \"%s\", \"double_quant\": %s, \"blocksize\": %d}\n",
                    qp->format == LT_QUANT_FP4    ? "fp4"
                    : qp->format == LT_QUANT_INT8 ? "int8"
                                                  : "nf4",
                    qp->double_quant ? "true" : "false", qp->blocksize);
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

/* ---- LoRA targets ------------------------------------------------------------------------------- */

int parse_targets(const char *cmd, const char *s, unsigned *out) {
    static const char *names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    *out = 0;
    if (!strcmp(s, "all") || !strcmp(s, "all-linear")) {
        *out = LT_TARGET_ALL;
        return 0;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    int bad = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && !bad; tok = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < 7 && strcmp(tok, names[k])) k++;
        if (!strcmp(tok, "qkv_proj")) *out |= LT_TARGET_Q | LT_TARGET_K | LT_TARGET_V; /* Phi-3's fused modules */
        else if (!strcmp(tok, "gate_up_proj")) *out |= LT_TARGET_GATE | LT_TARGET_UP;
        else if (!strcmp(tok, "experts")) *out |= LT_TARGET_EXPERTS; /* MoE: PEFT's target_parameters */
        else if (!strcmp(tok, "experts.gate_up_proj")) *out |= LT_TARGET_EXPERTS_GATE_UP;
        else if (!strcmp(tok, "experts.down_proj")) *out |= LT_TARGET_EXPERTS_DOWN;
        else if (k == 7) bad = 1;
        else *out |= 1u << k;
    }
    if (bad || !*out) {
        fail(cmd, "--targets: expected all or a comma-separated list of q_proj,k_proj,v_proj,o_proj,gate_proj,"
                  "up_proj,down_proj (Phi-3: qkv_proj,o_proj,gate_up_proj,down_proj; mixture of experts: "
                  "experts, experts.gate_up_proj, experts.down_proj)");
        return -1;
    }
    return 0;
}

/* ---- tokenizer files ----------------------------------------------------------------------------- */

lt_tokenizer *open_tokenizer(const char *cmd, const char *dir) {
    lt_tokenizer *t = NULL;
    if (lt_tokenizer_load(dir, &t) != LT_OK) {
        fail(cmd, "%s", lt_last_error());
        return NULL;
    }
    return t;
}

char *read_all(const char *path, size_t *n) {
    FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len < 2) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                b = NULL;
            } else b = nb;
        }
    }
    if (f != stdin) fclose(f);
    if (b) b[len] = 0;
    *n = len;
    return b;
}

/* ---- metrics.jsonl of a run directory ------------------------------------------------------------ */

void metrics_init(metrics_log *ml, const char *out, long long start) {
    memset(ml, 0, sizeof *ml);
    snprintf(ml->path, sizeof ml->path, "%s/metrics.jsonl", out);
    ml->start = start;
}

/* The first line of this run: the new file is the earlier run's lines of steps 1..start (a resumed run
 * continues them; any later step was written by a run that died after that checkpoint, and is run
 * again now) and this line, written to a temporary file and renamed over the old one; then the file
 * is kept open for appending. */
static int metrics_begin(metrics_log *ml, const char *line) {
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", ml->path, (long)getpid());
    FILE *out = fopen(tmp, "w");
    if (!out) return -1;
    FILE *in = ml->start > 0 ? fopen(ml->path, "r") : NULL;
    if (in) {
        char *buf = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&buf, &cap, in)) > 0) {
            json_t *js = json_loadb(buf, (size_t)n, 0, NULL);
            json_t *step = json_object_get(js, "step");
            /* a line cut short by a kill does not parse, and goes */
            if (json_is_integer(step) && json_integer_value(step) >= 1 && json_integer_value(step) <= ml->start &&
                buf[n - 1] == '\n')
                fwrite(buf, 1, (size_t)n, out);
            json_decref(js);
        }
        free(buf);
        fclose(in);
    }
    fputs(line, out);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0) {
        fclose(out);
        unlink(tmp);
        return -1;
    }
    if (fclose(out) != 0 || rename(tmp, ml->path) != 0) {
        unlink(tmp);
        return -1;
    }
    ml->f = fopen(ml->path, "a");
    return ml->f ? 0 : -1;
}

int metrics_write(metrics_log *ml, const char *line) {
    if (!ml->f) return metrics_begin(ml, line);
    if (fputs(line, ml->f) < 0 || fflush(ml->f) != 0) return -1;
    return 0;
}

void metrics_close(metrics_log *ml) {
    if (ml->f) fclose(ml->f);
    ml->f = NULL;
}

void run_result_dir(char *buf, size_t len, const char *out, int full_finetune) {
    snprintf(buf, len, "%s/%s", out, full_finetune ? "model" : "adapter");
}

/* ---- data-parallel training ----------------------------------------------------------------------- */

/* the number of ranks the launcher started, from its environment (1 when none) */
static long launched_ranks(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i])) return atol(getenv(vars[i]));
    if (getenv("PMIX_RANK") && getenv("SLURM_NTASKS")) return atol(getenv("SLURM_NTASKS"));
    return 1;
}

int dist_open(const char *cmd, const opts *o, const char *backend, cli_dist *d) {
    memset(d, 0, sizeof *d);
    d->world = 1;
    double timeout;
    if (opt_double(o, "dist-timeout", 600, &timeout)) return 1;
    const long n = launched_ranks();
    if (n <= 1) return 0;
    if (!lt_comm_available("mpi"))
        return fail(cmd,
                    "started as one of %ld ranks, but this libloratune was built without MPI (configure with "
                    "-DLT_MPI=ON and libopenmpi-dev)",
                    n);
    /* one GPU per rank on a machine: the launcher's local rank picks the device unless the user did */
    const char *local =
        getenv("OMPI_COMM_WORLD_LOCAL_RANK") ? getenv("OMPI_COMM_WORLD_LOCAL_RANK") : getenv("SLURM_LOCALID");
    if (local && backend && !strcmp(backend, "cuda") && !getenv("LT_CUDA_DEVICE") && !getenv("CUDA_VISIBLE_DEVICES"))
        setenv("LT_CUDA_DEVICE", local, 0);
    if (lt_comm_create_mpi(NULL, &d->comm) != LT_OK) return fail(cmd, "%s", lt_last_error());
    if (lt_comm_set_timeout(d->comm, timeout) != LT_OK) {
        fail(cmd, "--dist-timeout: %s", lt_comm_last_error(d->comm));
        d->world = n;
        dist_close(d, 1);
        return 1;
    }
    d->rank = lt_comm_rank(d->comm);
    d->world = lt_comm_world_size(d->comm);
    snprintf(rank_prefix, sizeof rank_prefix, "[rank %d/%d] ", d->rank, d->world);
    return 0;
}

void dist_close(cli_dist *d, int rc) {
    if (rc != 0 && d->world > 1) return;
    lt_comm_free(d->comm); /* finalizes MPI (lt_comm_create_mpi initialised it) */
    d->comm = NULL;
}

void dist_share(const cli_dist *d, int B, int *lo, int *hi) {
    *lo = (int)((long long)B * d->rank / d->world);
    *hi = (int)((long long)B * (d->rank + 1) / d->world);
}

int dist_zero_option(const char *cmd, const opts *o, int full, int *zero) {
    long long z;
    if (opt_int(o, "zero", full ? 1 : 0, 0, 1, &z)) return 2;
    *zero = (int)z;
    return 0;
}
