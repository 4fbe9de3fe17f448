/* compare.c - `loratune eval --compare`: did fine-tuning help? Two sides, the base model and an adapter (or
 * two adapters), on the same inputs:
 *   held-out rows (--data)   loss and perplexity of each side, and per row which side has the lower loss
 *   expected answers         a greedy answer of each side to each prompt of --prompts, side by side,
 *   (--prompts)              scored by an exact or a contains match
 *   canaries                 the exposure of each canary (--canaries FILE, and the one `train --canary`
 *   (--canaries, --run)      inserted, from the run's training_args.json)
 *   the run (--run DIR)      its loss curve (metrics.jsonl) as an SVG, and its final and best losses
 * A markdown report (--report FILE.md, the SVG beside it), the same as JSON (--json), or a summary.
 *
 * Exposure (Carlini et al., "The Secret Sharer: Evaluating and Testing Unintended Memorization in Neural
 * Networks", USENIX Security 2019): a canary of a format (e.g. "The secret number is {d}x9") is ranked by
 * its log-likelihood among random candidates of the same format, rank 1 the most likely;
 * exposure = log2(#candidates) - log2(rank), #candidates counting the canary. It is 0 for a canary the model
 * finds no likelier than anything else of its format and log2(#candidates) for one it ranks first; with
 * 1000 candidates the largest measurable exposure is log2(1001) = 9.97 bits.
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/runrecord.h"
#include "cli/textdata.h"
#include "cli/textgen.h"

typedef struct side {
    const char *name;
    lt_adapter *ad; /* NULL: the base model */
} side;

/* Negative log-likelihood (summed over the labelled tokens) of each row, through lt_model_logits in
 * batches of at most ~64 MiB of logits: per-row sums that lt_model_loss (a batch sum) does not give. */
static int row_nll(lt_model *m, lt_adapter *ad, const row *rows, int n, int V, double *nll, long long *ntok) {
    int i = 0;
    while (i < n) {
        int T = 0, B = 0;
        while (i + B < n) {
            int t = rows[i + B].len > T ? rows[i + B].len : T;
            if (B > 0 && (size_t)(B + 1) * t * V * sizeof(float) > (64u << 20)) break;
            T = t;
            B++;
        }
        if (T < 2) T = 2;
        int32_t *ids = calloc((size_t)B * T, sizeof *ids);
        float *lg = malloc((size_t)B * T * V * sizeof *lg);
        if (!ids || !lg) {
            free(ids);
            free(lg);
            return -1;
        }
        for (int b = 0; b < B; b++) memcpy(ids + (size_t)b * T, rows[i + b].ids, (size_t)rows[i + b].len * sizeof *ids);
        lt_batch bt;
        lt_batch_init(&bt, sizeof bt);
        bt.n_rows = B;
        bt.seq_len = T;
        bt.input_ids = ids;
        lt_status st = lt_model_logits(m, ad, &bt, lg, (size_t)B * T * V);
        for (int b = 0; st == LT_OK && b < B; b++) {
            const row *r = &rows[i + b];
            double s = 0;
            long long k = 0;
            for (int t = 0; t + 1 < r->len; t++) { /* position t predicts labels[t + 1] */
                int32_t y = r->labels[t + 1];
                if (y < 0) continue;
                const float *z = lg + ((size_t)b * T + t) * V;
                double mx = z[0], se = 0;
                for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
                for (int v = 0; v < V; v++) se += exp(z[v] - mx);
                s += mx + log(se) - z[y];
                k++;
            }
            nll[i + b] = s;
            if (ntok) ntok[i + b] = k;
        }
        free(ids);
        free(lg);
        if (st != LT_OK) return -1;
        i += B;
    }
    return 0;
}

/* a {"text": s} row as train tokenizes it (BOS, EOS, every token with a loss) */
static int text_row(lt_tokenizer *tok, const char *s, row *r) {
    json_t *j = json_pack("{s:s}", "text", s);
    char *js = json_dumps(j, 0);
    json_decref(j);
    size_t n = 0;
    memset(r, 0, sizeof *r);
    int ok = js && lt_tokenizer_encode_row(tok, js, NULL, NULL, NULL, 0, &n) == LT_OK &&
             (r->ids = malloc((n + 1) * sizeof *r->ids)) && (r->labels = malloc((n + 1) * sizeof *r->labels)) &&
             lt_tokenizer_encode_row(tok, js, NULL, r->ids, r->labels, n, &n) == LT_OK;
    free(js);
    r->len = (int)n;
    return ok ? 0 : -1;
}

/* a random string of a canary's format: {d} a digit, {l} a lower-case letter, {L} upper-case, {a} either
 * or a digit; everything else as written */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static void fill_format(const char *fmt, uint64_t *rng, char *out, size_t len) {
    static const char *const sets[] = {"0123456789", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                       "abcdefghijklmnopqrstuvwxyz0123456789"};
    size_t k = 0;
    for (const char *p = fmt; *p && k + 1 < len; p++) {
        int which = -1;
        if (p[0] == '{' && p[1] && p[2] == '}')
            which = p[1] == 'd' ? 0 : p[1] == 'l' ? 1 : p[1] == 'L' ? 2 : p[1] == 'a' ? 3 : -1;
        if (which >= 0) {
            out[k++] = sets[which][rng_next(rng) % strlen(sets[which])];
            p += 2;
        } else out[k++] = *p;
    }
    out[k] = 0;
}
/* a format for a canary that has none: each of its digits random */
static void derive_format(const char *text, char *fmt, size_t len) {
    size_t k = 0;
    for (const char *p = text; *p && k + 4 < len; p++) {
        if (*p >= '0' && *p <= '9') {
            memcpy(fmt + k, "{d}", 3);
            k += 3;
        } else fmt[k++] = *p;
    }
    fmt[k] = 0;
}

/* canary exposure of each side: rank of the canary's NLL among n_cand random strings of its format */
static json_t *exposure(lt_model *m, lt_tokenizer *tok, const side *sides, int V, const char *text, const char *fmt,
                        int n_cand, uint64_t seed, char *err, size_t errlen) {
    row *rows = calloc((size_t)n_cand + 1, sizeof *rows);
    double *nll = malloc(((size_t)n_cand + 1) * sizeof *nll);
    char buf[1024];
    json_t *res = NULL;
    int made = 0;
    if (!rows || !nll) goto out;
    if (text_row(tok, text, &rows[0])) {
        snprintf(err, errlen, "canary \"%s\": cannot be tokenized", text);
        goto out;
    }
    made = 1;
    uint64_t rng = seed;
    for (int tries = 0; made <= n_cand && tries < 20 * n_cand; tries++) {
        fill_format(fmt, &rng, buf, sizeof buf);
        if (!strcmp(buf, text) || text_row(tok, buf, &rows[made])) continue; /* the canary itself is not a candidate */
        made++;
    }
    if (made < 2) {
        snprintf(err, errlen, "canary \"%s\": its format \"%s\" has nothing random in it", text, fmt);
        goto out;
    }
    res = json_pack("{s:s,s:s,s:i,s:f,s:[],s:[],s:[]}", "canary", text, "format", fmt, "candidates", made,
                    "max_exposure", log2((double)made), "rank", "exposure", "nll");
    for (int s = 0; s < 2; s++) {
        if (row_nll(m, sides[s].ad, rows, made, V, nll, NULL)) {
            snprintf(err, errlen, "%s", lt_model_last_error(m));
            json_decref(res);
            res = NULL;
            goto out;
        }
        int rank = 1; /* 1 + the candidates more likely than the canary */
        for (int i = 1; i < made; i++) rank += nll[i] < nll[0];
        json_array_append_new(json_object_get(res, "rank"), json_integer(rank));
        json_array_append_new(json_object_get(res, "exposure"), json_real(log2((double)made) - log2((double)rank)));
        json_array_append_new(json_object_get(res, "nll"), json_real(nll[0]));
    }
out:
    for (int i = 0; rows && i < made; i++) {
        free(rows[i].ids);
        free(rows[i].labels);
    }
    free(rows);
    free(nll);
    return res;
}

/* greedy answers to the prompts of a JSONL file: {"prompt": TEXT | "messages": [...], "expected": TEXT,
 * "match": "exact" | "contains"} */
static int trim_eq(const char *a, const char *b, int contains) {
    while (*a == ' ' || *a == '\n' || *a == '\t') a++;
    while (*b == ' ' || *b == '\n' || *b == '\t') b++;
    size_t na = strlen(a), nb = strlen(b);
    while (na && (a[na - 1] == ' ' || a[na - 1] == '\n' || a[na - 1] == '\t')) na--;
    while (nb && (b[nb - 1] == ' ' || b[nb - 1] == '\n' || b[nb - 1] == '\t')) nb--;
    if (contains) return nb == 0 || memmem(a, na, b, nb) != NULL;
    return na == nb && !memcmp(a, b, na);
}

static json_t *answers(lt_model *m, lt_tokenizer *tok, const side *sides, const char *mdir, const char *file,
                       int max_new, char *err, size_t errlen) {
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", file);
        return NULL;
    }
    textgen g = {.model = m, .tok = tok};
    lt_generate_params_init(&g.gp, sizeof g.gp);
    g.gp.max_new_tokens = max_new;
    g.n_eos = textgen_eos_ids(mdir, tok, g.eos, TEXTGEN_MAX_EOS);
    json_t *res = json_pack("{s:s,s:[i,i],s:i,s:[]}", "file", file, "correct", 0, 0, "total", 0, "rows");
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0;
    for (char *s; (s = jsonl_next_line(f, &line, &cap, &lineno));) {
        json_t *o = json_loads(s, 0, NULL), *exp_ = json_object_get(o, "expected");
        const char *prompt = json_string_value(json_object_get(o, "prompt")),
                   *match = json_string_value(json_object_get(o, "match"));
        json_t *msgs = json_object_get(o, "messages");
        if (!json_is_string(exp_) || (!prompt && !json_is_array(msgs))) {
            snprintf(err, errlen, "%s:%d: a row needs \"expected\" and \"prompt\" (text) or \"messages\"", file,
                     lineno);
            json_decref(o);
            json_decref(res);
            res = NULL;
            break;
        }
        size_t n = 0;
        int32_t *ids = NULL;
        char *doc = msgs ? json_dumps(msgs, 0) : NULL;
        lt_status st = prompt ? lt_tokenizer_encode(tok, prompt, strlen(prompt), 1, NULL, 0, &n)
                              : lt_tokenizer_encode_chat(tok, doc, 1, NULL, NULL, 0, &n);
        if (st == LT_OK && (ids = malloc((n + 1) * sizeof *ids)))
            st = prompt ? lt_tokenizer_encode(tok, prompt, strlen(prompt), 1, ids, n, &n)
                        : lt_tokenizer_encode_chat(tok, doc, 1, ids, NULL, n, &n);
        free(doc);
        if (st != LT_OK || !ids || !n) {
            snprintf(err, errlen, "%s:%d: %s", file, lineno,
                     st != LT_OK ? lt_tokenizer_last_error(tok) : "an empty prompt");
            free(ids);
            json_decref(o);
            json_decref(res);
            res = NULL;
            break;
        }
        int contains = match && !strcmp(match, "contains");
        json_t *r = json_pack("{s:O,s:O,s:s,s:[],s:[]}", "prompt", prompt ? json_object_get(o, "prompt") : msgs,
                              "expected", exp_, "match", contains ? "contains" : "exact", "answers", "correct");
        for (int sd = 0; sd < 2; sd++) {
            g.adapter = sides[sd].ad;
            textgen_result tr;
            if (textgen_run("eval", &g, ids, (int)n, &tr)) {
                snprintf(err, errlen, "%s:%d: generation failed", file, lineno);
                json_decref(r);
                r = NULL;
                break;
            }
            int ok = trim_eq(tr.text, json_string_value(exp_), contains);
            json_array_append_new(json_object_get(r, "answers"), json_string(tr.text));
            json_array_append_new(json_object_get(r, "correct"), json_boolean(ok));
            json_t *c = json_array_get(json_object_get(res, "correct"), (size_t)sd);
            json_integer_set(c, json_integer_value(c) + ok);
            textgen_result_free(&tr);
        }
        free(ids);
        json_decref(o);
        if (!r) {
            json_decref(res);
            res = NULL;
            break;
        }
        json_array_append_new(json_object_get(res, "rows"), r);
        json_object_set_new(res, "total", json_integer(json_integer_value(json_object_get(res, "total")) + 1));
    }
    free(line);
    fclose(f);
    return res;
}

/* the run's record: training_args.json in the directory train saved (DIR/adapter or DIR/model, the
 * run_result_dir), or in DIR itself when --run names that directory */
static void run_record_path(char *path, size_t len, const char *rundir) {
    static const char *const where[] = {"adapter/", "model/", ""};
    for (size_t i = 0; i < sizeof where / sizeof *where; i++) {
        snprintf(path, len, "%s/%straining_args.json", rundir, where[i]);
        if (access(path, F_OK) == 0) return;
    }
}

/* the run: metrics.jsonl as an SVG loss curve beside the report; the record's results */
static json_t *run_summary(const char *rundir, const char *svg_path) {
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", rundir);
    FILE *f = fopen(path, "r");
    json_t *res = json_pack("{s:s}", "dir", rundir);
    if (f) {
        size_t cap = 1024, n = 0, ne = 0;
        double *st = malloc(cap * sizeof *st), *lo = malloc(cap * sizeof *lo), *es = malloc(cap * sizeof *es),
               *el = malloc(cap * sizeof *el);
        char *line = NULL;
        size_t lc = 0;
        while (st && lo && es && el && getline(&line, &lc, f) >= 0) {
            json_t *o = json_loads(line, 0, NULL);
            if (json_is_object(o) && json_is_number(json_object_get(o, "loss"))) {
                if (n == cap || ne == cap) {
                    cap *= 2;
                    st = realloc(st, cap * sizeof *st), lo = realloc(lo, cap * sizeof *lo);
                    es = realloc(es, cap * sizeof *es), el = realloc(el, cap * sizeof *el);
                    if (!st || !lo || !es || !el) {
                        json_decref(o);
                        break;
                    }
                }
                double step = json_number_value(json_object_get(o, "step"));
                st[n] = step;
                lo[n++] = json_number_value(json_object_get(o, "loss"));
                if (json_is_number(json_object_get(o, "eval_loss"))) {
                    es[ne] = step;
                    el[ne++] = json_number_value(json_object_get(o, "eval_loss"));
                }
            }
            json_decref(o);
        }
        free(line);
        fclose(f);
        if (st && lo && es && el && n) {
            loss_svg(svg_path, st, lo, (long long)n, es, el, (int)ne);
            json_object_set_new(res, "loss_curve", json_string(svg_path));
            json_object_set_new(res, "steps", json_integer((json_int_t)st[n - 1]));
            json_object_set_new(res, "first_train_loss", json_real(lo[0]));
            json_object_set_new(res, "final_train_loss", json_real(lo[n - 1]));
        }
        free(st);
        free(lo);
        free(es);
        free(el);
    }
    run_record_path(path, sizeof path, rundir);
    json_t *rec = json_load_file(path, 0, NULL), *r = json_object_get(rec, "results");
    const char *k;
    json_t *v;
    json_object_foreach(r, k, v) if (strstr(k, "eval")) json_object_set(res, k, v);
    json_decref(rec);
    return res;
}

static void md_cell(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '|') fputs("\\|", f);
        else if (*s == '\n') fputs("\\n", f);
        else if (*s == '`') fputc('\'', f);
        else fputc(*s, f);
    }
}

static void write_markdown(FILE *f, json_t *j) {
    json_t *names = json_object_get(j, "sides"), *h = json_object_get(j, "heldout"), *p = json_object_get(j, "prompts"),
           *c = json_object_get(j, "canaries"), *run = json_object_get(j, "run");
    const char *a = json_string_value(json_array_get(names, 0)), *b = json_string_value(json_array_get(names, 1));
    fprintf(f, "# Did fine-tuning help? `%s` vs `%s`\n\nModel: `%s`. Sides: **%s** and **%s**.\n", a, b,
            json_string_value(json_object_get(j, "model")), a, b);
    if (h) {
        json_t *l = json_object_get(h, "loss"), *pp = json_object_get(h, "perplexity");
        fprintf(
            f,
            "\n## Held-out data\n\n`%s`: %lld rows, %lld predicted tokens.\n\n| | %s | %s |\n|---|---|---|\n"
            "| loss | %.4f | %.4f |\n| perplexity | %.3f | %.3f |\n\nPer row, **%s** has the lower loss on %lld rows, "
            "**%s** on %lld, %lld ties (within 1e-6).\n",
            json_string_value(json_object_get(h, "file")), json_integer_value(json_object_get(h, "rows")),
            json_integer_value(json_object_get(h, "tokens")), a, b, json_real_value(json_array_get(l, 0)),
            json_real_value(json_array_get(l, 1)), json_real_value(json_array_get(pp, 0)),
            json_real_value(json_array_get(pp, 1)), b, json_integer_value(json_object_get(h, "wins")), a,
            json_integer_value(json_object_get(h, "losses")), json_integer_value(json_object_get(h, "ties")));
    }
    if (p) {
        json_t *cc = json_object_get(p, "correct");
        long long tot = json_integer_value(json_object_get(p, "total"));
        fprintf(f,
                "\n## Expected answers (greedy)\n\n`%s`: **%s** %lld/%lld correct, **%s** %lld/%lld.\n\n"
                "| prompt | expected | match | %s | %s |\n|---|---|---|---|---|\n",
                json_string_value(json_object_get(p, "file")), a, json_integer_value(json_array_get(cc, 0)), tot, b,
                json_integer_value(json_array_get(cc, 1)), tot, a, b);
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(p, "rows"), i, r) {
            json_t *pr = json_object_get(r, "prompt");
            char *ps = json_is_string(pr) ? strdup(json_string_value(pr)) : json_dumps(pr, JSON_COMPACT);
            fputs("| ", f);
            md_cell(f, ps);
            free(ps);
            fputs(" | ", f);
            md_cell(f, json_string_value(json_object_get(r, "expected")));
            fprintf(f, " | %s", json_string_value(json_object_get(r, "match")));
            for (int s = 0; s < 2; s++) {
                fputs(" | ", f);
                md_cell(f, json_string_value(json_array_get(json_object_get(r, "answers"), (size_t)s)));
                fputs(json_is_true(json_array_get(json_object_get(r, "correct"), (size_t)s)) ? " ✓" : " ✗", f);
            }
            fputs(" |\n", f);
        }
    }
    if (c && json_array_size(c)) {
        fprintf(f,
                "\n## Canaries (memorisation)\n\nExposure = log2(#candidates) - log2(rank of the canary's "
                "likelihood among random strings of its format) (Carlini et al. 2019, The Secret Sharer); about 1 "
                "for a canary the model has not seen, up to log2(#candidates) for one it ranks first.\n\n"
                "| canary | candidates | %s rank | %s exposure | %s rank | %s exposure | max |\n"
                "|---|---|---|---|---|---|---|\n",
                a, a, b, b);
        size_t i;
        json_t *r;
        json_array_foreach(c, i, r) {
            fputs("| ", f);
            md_cell(f, json_string_value(json_object_get(r, "canary")));
            json_t *rk = json_object_get(r, "rank"), *ex = json_object_get(r, "exposure");
            fprintf(f, " | %lld | %lld | %.2f | %lld | %.2f | %.2f |\n",
                    json_integer_value(json_object_get(r, "candidates")), json_integer_value(json_array_get(rk, 0)),
                    json_real_value(json_array_get(ex, 0)), json_integer_value(json_array_get(rk, 1)),
                    json_real_value(json_array_get(ex, 1)), json_real_value(json_object_get(r, "max_exposure")));
        }
    }
    if (run) {
        fprintf(f, "\n## The training run\n\n`%s`", json_string_value(json_object_get(run, "dir")));
        if (json_object_get(run, "steps"))
            fprintf(f, ": %lld steps, train loss %.4f -> %.4f", json_integer_value(json_object_get(run, "steps")),
                    json_real_value(json_object_get(run, "first_train_loss")),
                    json_real_value(json_object_get(run, "final_train_loss")));
        if (json_object_get(run, "best_eval_loss"))
            fprintf(f, "; eval loss final %.4f, best %.4f (step %lld)",
                    json_real_value(json_object_get(run, "final_eval_loss")),
                    json_real_value(json_object_get(run, "best_eval_loss")),
                    json_integer_value(json_object_get(run, "best_eval_step")));
        fputs(".\n", f);
        const char *svg = json_string_value(json_object_get(run, "loss_curve"));
        if (svg) {
            const char *base = strrchr(svg, '/');
            fprintf(f, "\n![loss curve](%s)\n", base ? base + 1 : svg);
        }
    }
}

int cmd_eval_compare(int argc, char **argv) {
    static const opt_spec spec[] = {{"compare", 0},        {"model", 1},      {"adapter", 1},  {"adapter-b", 1},
                                    {"data", 1},           {"prompts", 1},    {"canaries", 1}, {"run", 1},
                                    {"tokenizer", 1},      {"report", 1},     {"json", 0},     {"threads", 1},
                                    {"max-new-tokens", 1}, {"candidates", 1}, {"seed", 1}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "eval --compare")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *adir = opt_str(&o, "adapter", NULL),
               *bdir = opt_str(&o, "adapter-b", NULL), *data = opt_str(&o, "data", NULL),
               *pfile = opt_str(&o, "prompts", NULL), *cfile = opt_str(&o, "canaries", NULL),
               *rundir = opt_str(&o, "run", NULL), *report = opt_str(&o, "report", NULL);
    if (!mdir || !adir || (!data && !pfile && !cfile && !rundir))
        return fail("eval --compare",
                    "--model DIR --adapter DIR [--adapter-b DIR] and at least one of --data FILE (held-out rows), "
                    "--prompts FILE (expected answers), --canaries FILE, --run DIR (a training run) are required");
    long long threads, max_new, n_cand, seed;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "max-new-tokens", 32, 1, 1 << 16, &max_new) ||
        opt_int(&o, "candidates", 1000, 1, 1 << 24, &n_cand) || opt_int(&o, "seed", 1, 0, 1LL << 62, &seed))
        return 2;
    const char *tdir = opt_str(&o, "tokenizer", mdir);
    lt_tokenizer *tok = open_tokenizer("eval --compare", tdir);
    if (!tok) return 1;
    lt_context *ctx;
    lt_model *m;
    if (open_model("eval --compare", mdir, (int)threads, NULL, &ctx, &m)) {
        lt_tokenizer_free(tok);
        return 1;
    }
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(m, &info);
    const int V = (int)info.vocab_size;
    side sides[2] = {{bdir ? adir : "base", NULL}, {bdir ? bdir : adir, NULL}};
    int rc = 0;
    char err[1024] = "";
    json_t *j = json_pack("{s:[s,s],s:s}", "sides", sides[0].name, sides[1].name, "model", mdir);
    if (lt_adapter_load(m, adir, bdir ? &sides[0].ad : &sides[1].ad) != LT_OK ||
        (bdir && lt_adapter_load(m, bdir, &sides[1].ad) != LT_OK)) {
        rc = fail("eval --compare", "%s", lt_last_error());
        goto done;
    }
    if (data) { /* held-out rows: loss, perplexity, per-row wins */
        dataset ds;
        char msg[1024];
        if (dataset_load_any(data, tdir, &ds, NULL, msg, sizeof msg)) {
            rc = fail("eval --compare", "%s", msg);
            goto done;
        }
        double *nll[2] = {calloc((size_t)ds.n + 1, sizeof(double)), calloc((size_t)ds.n + 1, sizeof(double))};
        long long *nt = calloc((size_t)ds.n + 1, sizeof *nt);
        for (int s = 0; s < 2 && !rc; s++)
            if (!nll[s] || !nt || row_nll(m, sides[s].ad, ds.rows, ds.n, V, nll[s], nt))
                rc = fail("eval --compare", "%s: %s", data, lt_model_last_error(m));
        if (!rc) {
            double tot[2] = {0, 0};
            long long tokens = 0, wins = 0, losses = 0, ties = 0;
            json_t *per = json_array();
            for (int i = 0; i < ds.n; i++) {
                tokens += nt[i];
                tot[0] += nll[0][i];
                tot[1] += nll[1][i];
                if (!nt[i]) continue;
                double a = nll[0][i] / (double)nt[i], b = nll[1][i] / (double)nt[i];
                if (fabs(a - b) <= 1e-6 * fmax(1.0, fabs(a))) ties++;
                else if (b < a) wins++;
                else losses++;
                json_array_append_new(
                    per, json_pack("{s:i,s:I,s:[f,f]}", "row", i + 1, "tokens", (json_int_t)nt[i], "loss", a, b));
            }
            double l0 = tokens ? tot[0] / (double)tokens : NAN, l1 = tokens ? tot[1] / (double)tokens : NAN;
            json_object_set_new(j, "heldout",
                                json_pack("{s:s,s:i,s:I,s:[f,f],s:[f,f],s:I,s:I,s:I,s:o}", "file", data, "rows", ds.n,
                                          "tokens", (json_int_t)tokens, "loss", l0, l1, "perplexity", exp(l0), exp(l1),
                                          "wins", (json_int_t)wins, "losses", (json_int_t)losses, "ties",
                                          (json_int_t)ties, "per_row", per));
        }
        free(nll[0]);
        free(nll[1]);
        free(nt);
        dataset_free(&ds);
        if (rc) goto done;
    }
    if (pfile) {
        json_t *p = answers(m, tok, sides, mdir, pfile, (int)max_new, err, sizeof err);
        if (!p) {
            rc = fail("eval --compare", "%s", err);
            goto done;
        }
        json_object_set_new(j, "prompts", p);
    }
    /* canaries: the run's (train --canary) and a file's */
    json_t *canaries = json_array();
    json_object_set_new(j, "canaries", canaries);
    if (rundir) {
        char path[4200];
        run_record_path(path, sizeof path, rundir);
        json_t *rec = json_load_file(path, 0, NULL), *cn = json_object_get(rec, "canary");
        if (cn) {
            json_t *e = exposure(m, tok, sides, V, json_string_value(json_object_get(cn, "text")),
                                 json_string_value(json_object_get(cn, "format")), (int)n_cand, (uint64_t)seed, err,
                                 sizeof err);
            if (!e) rc = fail("eval --compare", "%s", err);
            else json_array_append_new(canaries, e);
        }
        json_decref(rec);
        if (rc) goto done;
    }
    if (cfile) {
        FILE *f = fopen(cfile, "r");
        if (!f) {
            rc = fail("eval --compare", "%s: cannot open", cfile);
            goto done;
        }
        char *line = NULL;
        size_t cap = 0;
        int lineno = 0;
        while (!rc && getline(&line, &cap, f) >= 0) {
            lineno++;
            json_t *o2 = json_loads(line, 0, NULL);
            const char *text = json_string_value(json_object_get(o2, "text")),
                       *fmt = json_string_value(json_object_get(o2, "format"));
            char derived[1024];
            if (!o2) {
                json_decref(o2);
                continue;
            }
            if (!text)
                rc = fail("eval --compare", "%s:%d: a canary row needs \"text\" (and \"format\")", cfile, lineno);
            else {
                if (!fmt) {
                    derive_format(text, derived, sizeof derived);
                    fmt = derived;
                }
                json_t *e = exposure(m, tok, sides, V, text, fmt, (int)n_cand, (uint64_t)seed + (uint64_t)lineno, err,
                                     sizeof err);
                if (!e) rc = fail("eval --compare", "%s:%d: %s", cfile, lineno, err);
                else json_array_append_new(canaries, e);
            }
            json_decref(o2);
        }
        free(line);
        fclose(f);
        if (rc) goto done;
    }
    if (rundir) {
        char svg[4200];
        if (report) {
            const char *slash = strrchr(report, '/');
            snprintf(svg, sizeof svg, "%.*s%sloss-curve.svg", slash ? (int)(slash - report + 1) : 0, report, "");
        } else snprintf(svg, sizeof svg, "%s/loss.svg", rundir);
        json_object_set_new(j, "run", run_summary(rundir, svg));
    }
    if (report) {
        char tmp[4300];
        FILE *f = atomic_fopen(report, tmp, sizeof tmp);
        if (!f) {
            rc = fail("eval --compare", "%s: cannot write", report);
            goto done;
        }
        write_markdown(f, j);
        if (atomic_fclose(f, tmp, report)) {
            rc = fail("eval --compare", "%s: cannot write", report);
            goto done;
        }
    }
    if (opt_flag(&o, "json")) {
        char *s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_INDENT(1));
        printf("%s\n", s);
        free(s);
    } else if (!report) write_markdown(stdout, j);
    else printf("report written to %s\n", report);
done:
    json_decref(j);
    lt_adapter_free(sides[0].ad);
    lt_adapter_free(sides[1].ad);
    lt_model_free(m);
    lt_context_free(ctx);
    lt_tokenizer_free(tok);
    return rc;
}
