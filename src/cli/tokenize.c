/* tokenize.c - `loratune tokenize` and `loratune detokenize`, through the public API. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"

int cmd_tokenize(int argc, char **argv) {
    static const opt_spec spec[] = {{"tokenizer", 1}, {"text-file", 1}, {"text", 1}, {"add-special", 0}, {"bench", 0}};
    opts o;
    if (opts_parse(&o, spec, 5, argc, argv, "tokenize")) return 2;
    const char *dir = opt_str(&o, "tokenizer", NULL), *file = opt_str(&o, "text-file", NULL),
               *text = opt_str(&o, "text", NULL);
    if (!dir || (!file && !text))
        return fail(
            "tokenize",
            "--tokenizer DIR and --text-file FILE (one text per line; - = stdin) or --text STRING are required");
    lt_tokenizer *t = open_tokenizer("tokenize", dir);
    if (!t) return 1;
    size_t n = 0;
    char *data = text ? strdup(text) : read_all(file, &n);
    if (!data) {
        lt_tokenizer_free(t);
        return fail("tokenize", "%s: cannot read", file);
    }
    if (text) n = strlen(data);
    int rc = 0, add = opt_flag(&o, "add-special"), line = 0, bench = opt_flag(&o, "bench");
    size_t cap = 1 << 12, total_ids = 0;
    double t0 = now_seconds(), c0 = (double)clock() / CLOCKS_PER_SEC;
    int32_t *ids = malloc(cap * sizeof *ids);
    /* each line is one text (without its \n); --text is one text as given */
    for (size_t s = 0; s < n || (text && s == 0 && n == 0);) {
        size_t e = s;
        if (!text)
            while (e < n && data[e] != '\n') e++;
        else e = n;
        line++;
        size_t k = 0;
        lt_status st = lt_tokenizer_encode(t, data + s, e - s, add, ids, cap, &k);
        if (st == LT_ERR_SHAPE) {
            free(ids);
            ids = malloc((cap = k) * sizeof *ids);
            st = ids ? lt_tokenizer_encode(t, data + s, e - s, add, ids, cap, &k) : LT_ERR_NOMEM;
        }
        if (st != LT_OK) {
            rc = fail("tokenize", "line %d: %s", line, lt_tokenizer_last_error(t));
            break;
        }
        total_ids += k;
        if (!bench) {
            putchar('[');
            for (size_t i = 0; i < k; i++) printf(i ? ", %d" : "%d", ids[i]);
            puts("]");
        }
        s = e + 1;
        if (text) break;
    }
    if (bench && !rc) { /* --bench: encode only, report the speed (one thread) */
        /* CPU time of this single-threaded process: the speed of one core, even on a busy machine */
        double dt = now_seconds() - t0, ct = (double)clock() / CLOCKS_PER_SEC - c0;
        printf("{\"bytes\": %zu, \"lines\": %d, \"tokens\": %zu, \"wall_s\": %.3f, \"cpu_s\": %.3f, \"MB_per_cpu_s\": "
               "%.2f, "
               "\"bytes_per_token\": %.2f}\n",
               n, line, total_ids, dt, ct, n / ct / 1e6, total_ids ? (double)n / total_ids : 0.0);
    }
    free(ids);
    free(data);
    lt_tokenizer_free(t);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    static const opt_spec spec[] = {{"tokenizer", 1}, {"ids-file", 1}, {"ids", 1}, {"skip-special", 0}, {"raw", 0}};
    opts o;
    if (opts_parse(&o, spec, 5, argc, argv, "detokenize")) return 2;
    const char *dir = opt_str(&o, "tokenizer", NULL), *file = opt_str(&o, "ids-file", NULL),
               *ids_s = opt_str(&o, "ids", NULL);
    if (!dir || (!file && !ids_s))
        return fail(
            "detokenize",
            "--tokenizer DIR and --ids-file FILE (one JSON array of ids per line) or --ids '[1,2,3]' are required");
    lt_tokenizer *t = open_tokenizer("detokenize", dir);
    if (!t) return 1;
    size_t n = 0;
    char *data = ids_s ? strdup(ids_s) : read_all(file, &n);
    if (!data) {
        lt_tokenizer_free(t);
        return fail("detokenize", "%s: cannot read", file);
    }
    if (ids_s) n = strlen(data);
    int rc = 0, line = 0;
    for (size_t s = 0; s < n;) {
        size_t e = s;
        while (e < n && data[e] != '\n') e++;
        line++;
        data[e] = 0;
        char *p = data + s;
        s = e + 1;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (!*p) continue;
        json_error_t je;
        json_t *arr = json_loads(p, 0, &je);
        if (!json_is_array(arr)) {
            json_decref(arr);
            rc = fail("detokenize", "line %d: not a JSON array of token ids", line);
            break;
        }
        size_t k = json_array_size(arr);
        int32_t *ids = malloc((k + 1) * sizeof *ids);
        int ok = ids != NULL;
        for (size_t i = 0; ok && i < k; i++) {
            json_t *x = json_array_get(arr, i);
            ok = json_is_integer(x) && json_integer_value(x) >= INT32_MIN && json_integer_value(x) <= INT32_MAX;
            if (ok) ids[i] = (int32_t)json_integer_value(x);
        }
        json_decref(arr);
        size_t len = 0;
        if (!ok) rc = fail("detokenize", "line %d: not a JSON array of token ids", line);
        else if (lt_tokenizer_decode(t, ids, k, opt_flag(&o, "skip-special"), NULL, 0, &len) != LT_OK)
            rc = fail("detokenize", "line %d: %s", line, lt_tokenizer_last_error(t));
        else {
            char *text = malloc(len + 1);
            if (!text || lt_tokenizer_decode(t, ids, k, opt_flag(&o, "skip-special"), text, len + 1, &len) != LT_OK)
                rc = fail("detokenize", "out of memory");
            else if (opt_flag(&o, "raw")) {
                fwrite(text, 1, len, stdout);
                putchar('\n');
            } else { /* one JSON string per line: texts may hold newlines */
                json_t *js = json_stringn(text, len);
                char *out = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
                puts(out ? out : "\"\"");
                free(out);
                json_decref(js);
            }
            free(text);
        }
        free(ids);
        if (rc) break;
    }
    free(data);
    lt_tokenizer_free(t);
    return rc;
}
