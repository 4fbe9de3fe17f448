/* jsonl.c - pre-tokenized JSONL datasets, parsed with jansson. */
#include "cli/jsonl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int read_ids(json_t *arr, const char *key, int32_t **out, int *len, int allow_masked, char *why, size_t whylen) {
    if (!json_is_array(arr)) {
        snprintf(why, whylen, "\"%s\" is not an array of integers", key);
        return -1;
    }
    size_t n = json_array_size(arr);
    int32_t *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(arr, i);
        if (!json_is_integer(x)) {
            snprintf(why, whylen, "\"%s\"[%zu] is not an integer", key, i);
            free(v);
            return -1;
        }
        json_int_t k = json_integer_value(x);
        if (k < (allow_masked ? -100 : 0) || k > INT32_MAX || (k < 0 && k != -100)) {
            snprintf(why, whylen, "\"%s\"[%zu] = %lld is not a valid %s", key, i, (long long)k,
                     allow_masked ? "label (token id or -100)" : "token id");
            free(v);
            return -1;
        }
        v[i] = (int32_t)k;
    }
    *out = v;
    *len = (int)n;
    return 0;
}

char *jsonl_next_line(FILE *f, char **line, size_t *cap, int *lineno) {
    while (getline(line, cap, f) >= 0) {
        if (lineno) ++*lineno;
        char *s = *line;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
        if (*s) return s;
    }
    return NULL;
}

int dataset_load(const char *path, dataset *ds, char *msg, size_t msglen) {
    memset(ds, 0, sizeof *ds);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, msglen, "%s: cannot open: %m", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, capn = 0;
    for (char *s; (s = jsonl_next_line(f, &line, &cap, &lineno));) {
        json_error_t je;
        json_t *o = json_loads(s, 0, &je);
        char why[256] = "";
        row r = {0};
        if (!o) snprintf(why, sizeof why, "bad JSON: %s", je.text);
        else if (!json_is_object(o)) snprintf(why, sizeof why, "line is not a JSON object");
        else if (!json_object_get(o, "input_ids")) snprintf(why, sizeof why, "missing \"input_ids\"");
        else if (read_ids(json_object_get(o, "input_ids"), "input_ids", &r.ids, &r.len, 0, why, sizeof why) == 0) {
            json_t *lab = json_object_get(o, "labels");
            int llen = 0;
            if (lab && !json_is_null(lab)) {
                if (read_ids(lab, "labels", &r.labels, &llen, 1, why, sizeof why) == 0 && llen != r.len)
                    snprintf(why, sizeof why, "\"labels\" has %d entries but \"input_ids\" has %d", llen, r.len);
            } else {
                r.labels = malloc((r.len ? r.len : 1) * sizeof *r.labels);
                if (r.labels) memcpy(r.labels, r.ids, (size_t)r.len * sizeof *r.labels);
                else snprintf(why, sizeof why, "out of memory");
            }
            if (!why[0] && r.len == 0) snprintf(why, sizeof why, "\"input_ids\" is empty");
        }
        json_decref(o);
        if (why[0]) {
            snprintf(msg, msglen, "%s:%d: %s", path, lineno, why);
            free(r.ids);
            free(r.labels);
            free(line);
            fclose(f);
            dataset_free(ds);
            return -1;
        }
        if (ds->n == capn) {
            capn = capn ? capn * 2 : 64;
            row *nr = realloc(ds->rows, (size_t)capn * sizeof *nr);
            if (!nr) {
                snprintf(msg, msglen, "%s: out of memory", path);
                free(line);
                fclose(f);
                dataset_free(ds);
                return -1;
            }
            ds->rows = nr;
        }
        ds->rows[ds->n++] = r;
        if (r.len > ds->max_len) ds->max_len = r.len;
    }
    free(line);
    fclose(f);
    if (ds->n == 0) {
        snprintf(msg, msglen, "%s: no rows (the file is empty)", path);
        return -1;
    }
    return 0;
}

void dataset_free(dataset *ds) {
    for (int i = 0; i < ds->n; i++) {
        free(ds->rows[i].ids);
        free(ds->rows[i].labels);
    }
    free(ds->rows);
    memset(ds, 0, sizeof *ds);
}

int dataset_batch(const dataset *ds, const int *order, int first, int n, int max_T, int32_t *ids, int32_t *labels) {
    int T = 1;
    for (int i = 0; i < n; i++) {
        int k = (first + i) % ds->n;
        const row *r = &ds->rows[order ? order[k] : k];
        if (r->len > T) T = r->len;
    }
    if (max_T > 0 && T > max_T) T = max_T;
    for (int i = 0; i < n; i++) {
        int k = (first + i) % ds->n;
        const row *r = &ds->rows[order ? order[k] : k];
        int len = r->len < T ? r->len : T;
        for (int t = 0; t < T; t++) {
            ids[i * T + t] = t < len ? r->ids[t] : 0;
            labels[i * T + t] = t < len ? r->labels[t] : -100;
        }
    }
    return T;
}

int dataset_loss(lt_model *m, lt_adapter *ad, const dataset *ds, int lo, int hi, int max_T, int batch, double *sum,
                 long long *tokens, int *bad) {
    *sum = 0;
    *tokens = 0;
    int32_t *ids = malloc((size_t)batch * ds->max_len * sizeof *ids),
            *labels = malloc((size_t)batch * ds->max_len * sizeof *labels);
    int rc = !ids || !labels ? -1 : 0;
    for (int first = lo; !rc && first < hi; first += batch) {
        int n = hi - first < batch ? hi - first : batch;
        int T = dataset_batch(ds, NULL, first, n, max_T, ids, labels);
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = n;
        b.seq_len = T;
        b.input_ids = ids;
        b.labels = labels;
        double s;
        int64_t k;
        if (lt_model_loss(m, ad, &b, &s, &k) != LT_OK) {
            *bad = first;
            rc = 1;
            break;
        }
        *sum += s;
        *tokens += k;
    }
    free(ids);
    free(labels);
    return rc;
}
