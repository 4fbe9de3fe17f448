/* pref.c - preference data for `loratune train|eval --objective dpo|ipo|kto|orpo` (train_pref.c, eval.c):
 * pre-tokenized JSONL rows, batches, the objective's options and metrics. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/jsonl.h"
#include "cli/pref.h"

/* ---- data --------------------------------------------------------------------------------------- */

void pref_free(pref_set *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->rows[i].p);
        free(s->rows[i].c);
        free(s->rows[i].r);
    }
    free(s->rows);
    memset(s, 0, sizeof *s);
}

static int read_arr(json_t *o, const char *key, int32_t **out, int *n, char *why, size_t wl) {
    json_t *a = json_object_get(o, key);
    if (!a) {
        snprintf(why, wl, "missing \"%s\"", key);
        return -1;
    }
    if (!json_is_array(a)) {
        snprintf(why, wl, "\"%s\" is not an array of token ids", key);
        return -1;
    }
    size_t k = json_array_size(a);
    int32_t *v = malloc((k + 1) * sizeof *v); /* +1: room for an appended EOS */
    if (!v) {
        snprintf(why, wl, "out of memory");
        return -1;
    }
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
int pref_load(const char *path, int kto, int32_t eos, pref_set *s, char *msg, size_t ml) {
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, ml, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, capn = 0;
    for (char *q; (q = jsonl_next_line(f, &line, &cap, &lineno));) {
        json_error_t je;
        json_t *o = json_loads(q, 0, &je);
        char why[256] = "";
        pref_row r = {0};
        if (!o || !json_is_object(o))
            snprintf(why, sizeof why, "not a JSON object%s%s", o ? "" : ": ", o ? "" : je.text);
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
            free(r.p);
            free(r.c);
            free(r.r);
            free(line);
            fclose(f);
            pref_free(s);
            return -1;
        }
        if (s->n == capn) {
            capn = capn ? 2 * capn : 64;
            pref_row *nr = realloc(s->rows, (size_t)capn * sizeof *nr);
            if (!nr) {
                snprintf(msg, ml, "out of memory");
                free(line);
                fclose(f);
                pref_free(s);
                return -1;
            }
            s->rows = nr;
        }
        s->rows[s->n++] = r;
    }
    free(line);
    fclose(f);
    if (s->n == 0) {
        snprintf(msg, ml, "%s: no rows (the file is empty)", path);
        return -1;
    }
    return 0;
}

/* The eos_token_id of MODEL/config.json (first one when it is a list); -1 when absent. */
int32_t pref_config_eos(const char *mdir) {
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

static int grow(int32_t **a, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    int32_t *n = realloc(*a, need * sizeof *n);
    if (!n) return -1;
    *a = n;
    *cap = need;
    return 0;
}

int pref_make_batch(const pref_set *s, const int *idx, int n, pref_buf *b, lt_pref_batch *pb) {
    size_t np = 0, nc = 0, nr = 0;
    for (int i = 0; i < n; i++) {
        np += s->rows[idx[i]].np;
        nc += s->rows[idx[i]].nc;
        nr += s->rows[idx[i]].nr;
    }
    if (n > b->cap_n) {
        size_t c = 0;
        free(b->pl);
        free(b->cl);
        free(b->rl);
        free(b->lab);
        b->pl = malloc(n * sizeof(int32_t));
        b->cl = malloc(n * sizeof(int32_t));
        b->rl = malloc(n * sizeof(int32_t));
        b->lab = malloc(n * sizeof(int32_t));
        if (!b->pl || !b->cl || !b->rl || !b->lab) return -1;
        b->cap_n = n;
        (void)c;
    }
    if (grow(&b->pi, &b->cap_p, np + 1) || grow(&b->ci, &b->cap_c, nc + 1) || grow(&b->ri, &b->cap_r, nr + 1))
        return -1;
    size_t op = 0, oc = 0, orr = 0;
    for (int i = 0; i < n; i++) {
        const pref_row *r = &s->rows[idx[i]];
        memcpy(b->pi + op, r->p, r->np * sizeof(int32_t));
        op += r->np;
        memcpy(b->ci + oc, r->c, r->nc * sizeof(int32_t));
        oc += r->nc;
        if (r->nr) memcpy(b->ri + orr, r->r, r->nr * sizeof(int32_t));
        orr += r->nr;
        b->pl[i] = r->np;
        b->cl[i] = r->nc;
        b->rl[i] = r->nr;
        b->lab[i] = r->label;
    }
    lt_pref_batch_init(pb, sizeof *pb);
    pb->n_rows = n;
    pb->prompt_ids = b->pi;
    pb->prompt_lens = b->pl;
    pb->chosen_ids = b->ci;
    pb->chosen_lens = b->cl;
    pb->rejected_ids = b->ri;
    pb->rejected_lens = b->rl;
    pb->labels = b->lab;
    return 0;
}

void pref_buf_free(pref_buf *b) {
    free(b->pi);
    free(b->pl);
    free(b->ci);
    free(b->cl);
    free(b->ri);
    free(b->rl);
    free(b->lab);
}

int pref_parse_objective(const char *s, lt_objective *o) {
    static const struct {
        const char *n;
        lt_objective o;
    } t[] = {{"dpo", LT_OBJ_DPO}, {"ipo", LT_OBJ_IPO}, {"kto", LT_OBJ_KTO}, {"orpo", LT_OBJ_ORPO}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(s, t[i].n)) {
            *o = t[i].o;
            return 0;
        }
    return -1;
}

/* A JSON number, or null for NaN (a metric that is not defined for the objective). */
static void jnum(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ", \"%s\": %.9g", key, v);
    else fprintf(f, ", \"%s\": null", key);
}

void pref_print_metrics(FILE *f, const lt_step_result *r) {
    jnum(f, "rewards/chosen", r->rewards_chosen);
    jnum(f, "rewards/rejected", r->rewards_rejected);
    jnum(f, "rewards/accuracies", r->rewards_accuracies);
    jnum(f, "rewards/margins", r->rewards_margins);
    if (isfinite(r->kl)) jnum(f, "kl", r->kl);
}

/* Common options of train and eval for the objective. */
int pref_trainer_params(const opts *o, lt_objective obj, lt_trainer_params *tp) {
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

int pref_open_trainer(const char *cmd, lt_model *m, const char *adir, const lt_adapter_params *ap, const char *rdir,
                      const lt_optimizer_params *op, lt_trainer_params *tp, lt_adapter **ad, lt_adapter **ref,
                      lt_optimizer **opt, lt_trainer **tr) {
    if ((adir ? lt_adapter_load(m, adir, ad) : lt_adapter_create(m, ap, ad)) != LT_OK ||
        (rdir && lt_adapter_load(m, rdir, ref) != LT_OK))
        return fail(cmd, "%s", lt_last_error());
    tp->ref_adapter = *ref;
    if (lt_optimizer_create(*ad, op, opt) != LT_OK || lt_trainer_create(m, *ad, *opt, tp, tr) != LT_OK)
        return fail(cmd, "%s", lt_last_error());
    return 0;
}

int wants_objective(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--objective")) return strcmp(argv[i + 1], "sft") != 0;
    return 0;
}
