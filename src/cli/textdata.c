/* textdata.c - JSONL datasets of text ({"text"}, {"prompt","completion"}, {"messages"}, ...) tokenized
 * through the public tokenizer API into the rows of jsonl.h. Pre-tokenized files ({"input_ids"}) go to
 * dataset_load unchanged. */
#include "cli/textdata.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* 1 if the first non-blank line of the file is an object with "input_ids" */
static int is_pretokenized(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 1; /* let dataset_load report it */
    char *line = NULL;
    size_t cap = 0;
    int res = 1;
    for (char *s; (s = jsonl_next_line(f, &line, &cap, NULL));) {
        json_t *o = json_loads(s, 0, NULL);
        res = !o || json_object_get(o, "input_ids") != NULL;
        json_decref(o);
        break;
    }
    free(line);
    fclose(f);
    return res;
}

int dataset_load_any(const char *path, const char *tokdir, dataset *ds, int *dropped, char *msg, size_t msglen) {
    if (dropped) *dropped = 0;
    if (is_pretokenized(path)) return dataset_load(path, ds, msg, msglen);
    memset(ds, 0, sizeof *ds);
    if (!tokdir) {
        snprintf(msg, msglen,
                 "%s: rows are text, not input_ids: a tokenizer is needed (--tokenizer DIR, or a model directory with "
                 "tokenizer.json)",
                 path);
        return -1;
    }
    lt_tokenizer *tok = NULL;
    if (lt_tokenizer_load(tokdir, &tok) != LT_OK) {
        snprintf(msg, msglen, "%s", lt_last_error());
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, msglen, "%s: cannot open: %m", path);
        lt_tokenizer_free(tok);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, bufcap = 0;
    int32_t *ids = NULL, *labels = NULL;
    int lineno = 0, capn = 0, rc = 0;
    for (char *s; (s = jsonl_next_line(f, &line, &cap, &lineno));) {
        size_t n = 0;
        lt_status st = lt_tokenizer_encode_row(tok, s, NULL, NULL, NULL, 0, &n);
        if (st == LT_OK && n > bufcap) {
            bufcap = n;
            free(ids);
            free(labels);
            ids = malloc(n * sizeof *ids);
            labels = malloc(n * sizeof *labels);
            if (!ids || !labels) {
                snprintf(msg, msglen, "%s: out of memory", path);
                rc = -1;
                break;
            }
        }
        if (st == LT_OK) st = lt_tokenizer_encode_row(tok, s, NULL, ids, labels, bufcap, &n);
        if (st != LT_OK) { /* the row and the template that made it */
            snprintf(msg, msglen, "%s:%d: %s (chat template and tokenizer: %s)", path, lineno,
                     lt_tokenizer_last_error(tok), tokdir);
            rc = -1;
            break;
        }
        int learn = 0;
        for (size_t k = 1; k < n; k++) learn |= labels[k] != -100; /* position 0 is never predicted */
        if (!learn) {
            if (dropped) (*dropped)++;
            continue;
        }
        row r = {malloc(n * sizeof *r.ids), malloc(n * sizeof *r.labels), (int)n};
        if (!r.ids || !r.labels) {
            free(r.ids);
            free(r.labels);
            snprintf(msg, msglen, "%s: out of memory", path);
            rc = -1;
            break;
        }
        memcpy(r.ids, ids, n * sizeof *ids);
        memcpy(r.labels, labels, n * sizeof *labels);
        if (ds->n == capn) {
            capn = capn ? capn * 2 : 64;
            row *nr = realloc(ds->rows, (size_t)capn * sizeof *nr);
            if (!nr) {
                free(r.ids);
                free(r.labels);
                snprintf(msg, msglen, "%s: out of memory", path);
                rc = -1;
                break;
            }
            ds->rows = nr;
        }
        ds->rows[ds->n++] = r;
        if (r.len > ds->max_len) ds->max_len = r.len;
    }
    free(line);
    free(ids);
    free(labels);
    fclose(f);
    lt_tokenizer_free(tok);
    if (rc == 0 && ds->n == 0) {
        snprintf(msg, msglen, "%s: no row has a token to learn from", path);
        rc = -1;
    }
    if (rc) dataset_free(ds);
    return rc;
}
