/* data.c - `loratune data check`: dataset hygiene (schema, lengths, duplicates, train/eval overlap). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/jsonl.h"

/* ---- data check ---------------------------------------------------------------------------------------
 * The hygiene fine-tuning guides ask for, in one pass:
 *   exact duplicates      rows whose text content is identical (after whitespace normalisation)
 *   near duplicates       MinHash (64 hashes over word 5-gram shingles, 16 bands of 4) candidates
 *                         confirmed by an estimated Jaccard similarity >= --near (0.8)
 *   train/eval overlap    rows of --data sharing a word --ngram-gram (13, as GPT-3's decontamination)
 *                         with a row of --eval
 *   lengths               token-length histogram (powers of two) and rows longer than --seq
 *   template problems     rows of no known shape, unknown roles, empty messages, no assistant turn,
 *                         roles that do not alternate, chat templates that fail, special tokens written
 *                         in the text, rows with nothing to learn */

typedef struct drow {
    int line;
    char *text;    /* the row's words, lower-cased, single-spaced */
    uint64_t hash; /* of text */
    uint32_t mh[64];
    int tokens; /* -1 when not tokenized */
} drow;

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* all string content of a row, in order */
static void row_text(json_t *v, json_t *row_obj, char **buf, size_t *len, size_t *cap) {
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (*len + n + 2 > *cap) {
            *cap = (*len + n + 2) * 2;
            *buf = realloc(*buf, *cap);
        }
        memcpy(*buf + *len, json_string_value(v), n);
        *len += n;
        (*buf)[(*len)++] = ' ';
        (*buf)[*len] = 0;
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) row_text(x, row_obj, buf, len, cap);
    } else if (json_is_object(v)) {
        row_text(json_object_get(v, "content"), row_obj, buf, len, cap);
    }
}

/* words (alnum runs, lower-cased ASCII; other bytes kept) */
static int split_words(const char *s, const char ***starts, int **lens) {
    int n = 0, cap = 64;
    *starts = malloc(cap * sizeof **starts);
    *lens = malloc(cap * sizeof **lens);
    for (const char *p = s; *p;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        const char *b = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') p++;
        if (n == cap) {
            cap *= 2;
            *starts = realloc(*starts, cap * sizeof **starts);
            *lens = realloc(*lens, cap * sizeof **lens);
        }
        (*starts)[n] = b;
        (*lens)[n++] = (int)(p - b);
    }
    return n;
}

static uint64_t ngram_hash(const char **w, const int *l, int k) {
    uint64_t h = 0;
    for (int i = 0; i < k; i++) h = mix64(h ^ fnv(w[i], (size_t)l[i]));
    return h;
}

typedef struct u64set {
    uint64_t *v;
    size_t cap, n;
} u64set;
static void set_add(u64set *s, uint64_t x) {
    if (!x) x = 1;
    if (s->n * 2 >= s->cap) {
        u64set ns = {calloc(s->cap ? s->cap * 2 : 1024, sizeof(uint64_t)), s->cap ? s->cap * 2 : 1024, 0};
        for (size_t i = 0; i < s->cap; i++)
            if (s->v[i]) set_add(&ns, s->v[i]);
        free(s->v);
        *s = ns;
    }
    size_t i = mix64(x) & (s->cap - 1);
    while (s->v[i] && s->v[i] != x) i = (i + 1) & (s->cap - 1);
    if (!s->v[i]) {
        s->v[i] = x;
        s->n++;
    }
}
static int set_has(const u64set *s, uint64_t x) {
    if (!x) x = 1;
    if (!s->cap) return 0;
    size_t i = mix64(x) & (s->cap - 1);
    while (s->v[i]) {
        if (s->v[i] == x) return 1;
        i = (i + 1) & (s->cap - 1);
    }
    return 0;
}

typedef struct problems {
    int n;
    char (*msg)[256];
    int cap;
} problems;
static void problem(problems *p, int line, const char *fmt, const char *detail) {
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->msg = realloc(p->msg, (size_t)p->cap * sizeof *p->msg);
    }
    snprintf(p->msg[p->n], sizeof p->msg[0], "line %d: ", line);
    size_t l = strlen(p->msg[p->n]);
    snprintf(p->msg[p->n] + l, sizeof p->msg[0] - l, fmt, detail);
    p->n++;
}

static void check_messages(json_t *msgs, int line, problems *pb) {
    if (!json_is_array(msgs)) {
        problem(pb, line, "\"messages\" is not a list%s", "");
        return;
    }
    size_t i;
    json_t *m;
    int has_assistant = 0;
    const char *prev = NULL;
    json_array_foreach(msgs, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (!role) {
            problem(pb, line, "a message has no \"role\"%s", "");
            continue;
        }
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "tool"))
            problem(pb, line, "unknown role \"%s\"", role);
        if (!strcmp(role, "system") && i > 0) problem(pb, line, "a system message that is not first%s", "");
        if (!content || (json_is_string(content) && json_string_length(content) == 0))
            problem(pb, line, "an empty \"%s\" message", role);
        if (prev && !strcmp(prev, role) && strcmp(role, "tool"))
            problem(pb, line, "two \"%s\" messages in a row (roles do not alternate)", role);
        has_assistant |= !strcmp(role, "assistant");
        prev = role;
    }
    if (!has_assistant) problem(pb, line, "no assistant message: nothing to learn%s", "");
}

static int load_rows(const char *path, lt_tokenizer *tok, long long seq, drow **rows, int *nrows, problems *pb,
                     int *too_long, int **long_lines, int *n_long) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, cr = 0;
    *nrows = 0;
    *rows = NULL;
    for (char *s; (s = jsonl_next_line(f, &line, &cap, &lineno));) {
        json_error_t je;
        json_t *o = json_loads(s, 0, &je);
        if (!json_is_object(o)) {
            problem(pb, lineno, "not a JSON object: %s", o ? "" : je.text);
            json_decref(o);
            continue;
        }
        int shape =
            json_is_string(json_object_get(o, "text")) || json_object_get(o, "messages") ||
            (json_object_get(o, "prompt") && (json_object_get(o, "completion") || json_object_get(o, "chosen"))) ||
            json_object_get(o, "input_ids");
        if (!shape)
            problem(pb, lineno,
                    "no known dataset shape (text / messages / prompt+completion / prompt+chosen+rejected)%s", "");
        if (json_object_get(o, "messages")) check_messages(json_object_get(o, "messages"), lineno, pb);
        if (json_object_get(o, "prompt") && json_is_array(json_object_get(o, "prompt"))) {
            json_t *c =
                json_object_get(o, "completion") ? json_object_get(o, "completion") : json_object_get(o, "chosen");
            json_t *all = json_array();
            json_array_extend(all, json_object_get(o, "prompt"));
            if (json_is_array(c)) json_array_extend(all, c);
            check_messages(all, lineno, pb);
            json_decref(all);
        }
        if (json_object_get(o, "label") && !json_is_boolean(json_object_get(o, "label")))
            problem(pb, lineno, "\"label\" is not true/false%s", "");
        char *buf = NULL;
        size_t len = 0, bcap = 0;
        const char *keys[] = {"text", "prompt", "completion", "chosen", "messages"};
        for (int k = 0; k < 5; k++) row_text(json_object_get(o, keys[k]), o, &buf, &len, &bcap);
        json_decref(o);
        if (*nrows == cr) {
            cr = cr ? cr * 2 : 256;
            *rows = realloc(*rows, (size_t)cr * sizeof **rows);
        }
        drow *r = &(*rows)[(*nrows)++];
        memset(r, 0, sizeof *r);
        r->line = lineno;
        /* normalise: lower-case ASCII, single spaces */
        char *norm = malloc(len + 1);
        size_t m = 0;
        int sp = 1;
        for (size_t i = 0; i < len; i++) {
            char c = buf[i];
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                if (!sp) norm[m++] = ' ';
                sp = 1;
                continue;
            }
            norm[m++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
            sp = 0;
        }
        while (m && norm[m - 1] == ' ') m--;
        norm[m] = 0;
        r->text = norm;
        r->hash = fnv(norm, m);
        /* special tokens written into the content are read as control tokens */
        if (tok && buf) {
            static const char *markers[] = {"<|eot_id|>",          "<|im_start|>",  "<|im_end|>", "<|endoftext|>",
                                            "<start_of_turn>",     "<end_of_turn>", "[INST]",     "[/INST]",
                                            "<|start_header_id|>", "<s>",           "</s>",       "<|end|>"};
            for (int k = 0; k < 12; k++)
                if (strstr(buf, markers[k]) && lt_tokenizer_token_to_id(tok, markers[k]) >= 0 &&
                    lt_tokenizer_is_special(tok, lt_tokenizer_token_to_id(tok, markers[k]))) {
                    problem(pb, lineno, "the special token %s is written in the text (it is read as a control token)",
                            markers[k]);
                    break;
                }
        }
        free(buf);
        /* tokens */
        r->tokens = -1;
        if (tok) {
            size_t n = 0;
            if (lt_tokenizer_encode_row(tok, s, NULL, NULL, NULL, 0, &n) == LT_OK) {
                r->tokens = (int)n;
                int32_t *ids = malloc((n + 1) * sizeof *ids), *lab = malloc((n + 1) * sizeof *lab);
                if (lt_tokenizer_encode_row(tok, s, NULL, ids, lab, n, &n) == LT_OK) {
                    int learn = 0;
                    for (size_t k = 1; k < n; k++) learn |= lab[k] != -100;
                    if (!learn) problem(pb, lineno, "nothing to learn: every label is masked%s", "");
                }
                free(ids);
                free(lab);
                if (seq > 0 && (long long)n > seq) {
                    (*too_long)++;
                    *long_lines = realloc(*long_lines, (size_t)(*n_long + 1) * sizeof **long_lines);
                    (*long_lines)[(*n_long)++] = lineno;
                }
            } else if (shape) /* an empty assistant / completion mask: `train` stops on this row */
                problem(pb, lineno,
                        strstr(lt_tokenizer_last_error(tok), "nothing to learn") ? "%s (train stops here)"
                                                                                 : "cannot be tokenized: %s",
                        lt_tokenizer_last_error(tok));
        }
    }
    free(line);
    fclose(f);
    return 0;
}

static void minhash(drow *r) {
    const char **w;
    int *l;
    int n = split_words(r->text, &w, &l), k = n < 5 ? n : 5;
    for (int j = 0; j < 64; j++) r->mh[j] = UINT32_MAX;
    for (int i = 0; i + k <= n && k > 0; i++) {
        uint64_t h = ngram_hash(w + i, l + i, k);
        for (int j = 0; j < 64; j++) {
            uint32_t v = (uint32_t)mix64(h ^ (0x9E3779B97F4A7C15ull * (uint64_t)(j + 1)));
            if (v < r->mh[j]) r->mh[j] = v;
        }
    }
    free(w);
    free(l);
}

typedef struct {
    uint64_t h;
    int i;
} bh;
static int cmp_bh(const void *x, const void *y) {
    uint64_t a = ((const bh *)x)->h, c = ((const bh *)y)->h;
    return a < c ? -1 : a > c;
}
static int cmpi(const void *x, const void *y) { return *(const int *)x - *(const int *)y; }

/* The data check of one file (and an eval file), as a JSON summary: rows, exact duplicates, near-duplicate
 * pairs, eval overlap, token lengths (with a tokenizer), problems; up to `show` example lines of each.
 * NULL when a file cannot be opened (msg says which). `train` records it in the model card. */
json_t *data_check(const char *data, const char *eval, lt_tokenizer *tok, long long seq, long long ngram, double near,
                   long long show, char *msg, size_t msglen) {
    problems pb = {0};
    drow *rows = NULL, *erows = NULL;
    int nrows = 0, nerows = 0, too_long = 0, n_long = 0, *long_lines = NULL, dummy = 0, *dl = NULL, dn = 0;
    if (load_rows(data, tok, seq, &rows, &nrows, &pb, &too_long, &long_lines, &n_long)) {
        snprintf(msg, msglen, "%s: cannot open", data);
        return NULL;
    }
    problems epb = {0};
    if (eval && load_rows(eval, NULL, 0, &erows, &nerows, &epb, &dummy, &dl, &dn)) {
        for (int i = 0; i < nrows; i++) free(rows[i].text);
        free(rows);
        free(pb.msg);
        free(long_lines);
        snprintf(msg, msglen, "%s: cannot open", eval);
        return NULL;
    }
    /* exact duplicates: rows whose normalised text hash was seen before */
    u64set seen = {0};
    int exact = 0, *exact_lines = malloc((size_t)(nrows + 1) * sizeof *exact_lines);
    for (int i = 0; i < nrows; i++) {
        if (set_has(&seen, rows[i].hash)) exact_lines[exact++] = rows[i].line;
        else set_add(&seen, rows[i].hash);
    }
    /* near duplicates: MinHash LSH */
    for (int i = 0; i < nrows; i++) minhash(&rows[i]);
    int near_pairs = 0, (*near_ex)[2] = malloc(sizeof(int[2]) * (size_t)(show + 1));
    {
        /* bucket by band: sort (band hash, row) pairs and compare within equal hashes */
        bh *b = malloc((size_t)nrows * sizeof *b);
        u64set done = {0};
        for (int band = 0; band < 16; band++) {
            for (int i = 0; i < nrows; i++) {
                uint64_t h = (uint64_t)band + 1;
                for (int j = 0; j < 4; j++) h = mix64(h ^ rows[i].mh[band * 4 + j]);
                b[i] = (bh){h, i};
            }
            qsort(b, (size_t)nrows, sizeof *b, cmp_bh);
            for (int s = 0; s < nrows;) {
                int e = s;
                while (e < nrows && b[e].h == b[s].h) e++;
                for (int x = s; x < e && e - s < 200; x++)
                    for (int y = x + 1; y < e; y++) {
                        int i = b[x].i < b[y].i ? b[x].i : b[y].i, j = b[x].i < b[y].i ? b[y].i : b[x].i;
                        if (rows[i].hash == rows[j].hash) continue; /* exact duplicates are counted above */
                        uint64_t key = mix64(((uint64_t)i << 32) | (uint64_t)j);
                        if (set_has(&done, key)) continue;
                        set_add(&done, key);
                        int same = 0;
                        for (int k = 0; k < 64; k++) same += rows[i].mh[k] == rows[j].mh[k];
                        if (same / 64.0 >= near) {
                            if (near_pairs < show) {
                                near_ex[near_pairs][0] = rows[i].line;
                                near_ex[near_pairs][1] = rows[j].line;
                            }
                            near_pairs++;
                        }
                    }
                s = e;
            }
        }
        free(b);
        free(done.v);
    }
    /* train/eval overlap: word n-grams of the eval rows */
    int overlap = 0, *overlap_lines = malloc((size_t)(nrows + 1) * sizeof *overlap_lines);
    if (eval) {
        u64set grams = {0};
        for (int i = 0; i < nerows; i++) {
            const char **w;
            int *l, n = split_words(erows[i].text, &w, &l);
            int k = n < ngram ? n : (int)ngram; /* a row shorter than n words counts as one gram */
            for (int s = 0; s + k <= n && k > 0; s++) set_add(&grams, ngram_hash(w + s, l + s, k));
            free(w);
            free(l);
        }
        for (int i = 0; i < nrows; i++) {
            const char **w;
            int *l, n = split_words(rows[i].text, &w, &l), hit = 0;
            for (int k = (int)ngram; k >= 1 && !hit; k = (k == ngram && n < ngram) ? n : 0)
                for (int s = 0; s + k <= n && !hit; s++) hit = set_has(&grams, ngram_hash(w + s, l + s, k));
            if (hit) overlap_lines[overlap++] = rows[i].line;
            free(w);
            free(l);
        }
        free(grams.v);
    }
    /* lengths */
    long long hist[32] = {0}, total = 0, mx = 0, mn = -1;
    int counted = 0;
    int *lens = malloc((size_t)(nrows + 1) * sizeof *lens);
    for (int i = 0; i < nrows; i++) {
        if (rows[i].tokens < 0) continue;
        int t = rows[i].tokens, b = 0;
        while ((1 << b) < t && b < 31) b++;
        hist[b]++;
        total += t;
        if (t > mx) mx = t;
        if (mn < 0 || t < mn) mn = t;
        lens[counted++] = t;
    }
    qsort(lens, (size_t)counted, sizeof *lens, cmpi);
    json_t *j = json_object();
    json_object_set_new(j, "file", json_string(data));
    json_object_set_new(j, "rows", json_integer(nrows));
    json_object_set_new(j, "exact_duplicates", json_integer(exact));
    json_t *ex = json_array();
    for (int i = 0; i < exact && i < show; i++) json_array_append_new(ex, json_integer(exact_lines[i]));
    json_object_set_new(j, "exact_duplicate_lines", ex);
    json_object_set_new(j, "near_duplicate_pairs", json_integer(near_pairs));
    json_object_set_new(j, "near_threshold", json_real(near));
    json_t *nx = json_array();
    for (int i = 0; i < near_pairs && i < show; i++)
        json_array_append_new(nx, json_pack("[i,i]", near_ex[i][0], near_ex[i][1]));
    json_object_set_new(j, "near_duplicate_examples", nx);
    if (eval) {
        json_object_set_new(j, "eval_file", json_string(eval));
        json_object_set_new(j, "eval_overlap_rows", json_integer(overlap));
        json_object_set_new(j, "ngram", json_integer(ngram));
        json_t *ol = json_array();
        for (int i = 0; i < overlap && i < show; i++) json_array_append_new(ol, json_integer(overlap_lines[i]));
        json_object_set_new(j, "eval_overlap_lines", ol);
    }
    json_t *pl = json_array();
    for (int i = 0; i < pb.n; i++) json_array_append_new(pl, json_string(pb.msg[i]));
    json_object_set_new(j, "problems", pl);
    if (tok) {
        json_object_set_new(j, "seq", json_integer(seq));
        json_object_set_new(j, "rows_over_seq", json_integer(too_long));
        json_t *ll = json_array();
        for (int i = 0; i < n_long && i < show; i++) json_array_append_new(ll, json_integer(long_lines[i]));
        json_object_set_new(j, "rows_over_seq_lines", ll);
        json_object_set_new(j, "tokens_total", json_integer(total));
        json_object_set_new(j, "tokens_min", json_integer(mn < 0 ? 0 : mn));
        json_object_set_new(j, "tokens_max", json_integer(mx));
        json_object_set_new(j, "tokens_p50", json_integer(counted ? lens[counted / 2] : 0));
        json_object_set_new(
            j, "tokens_p95",
            json_integer(counted ? lens[(int)(counted * 0.95) < counted ? (int)(counted * 0.95) : counted - 1] : 0));
        json_t *h = json_object();
        for (int b = 0; b < 32; b++)
            if (hist[b]) {
                char k[32];
                snprintf(k, sizeof k, "<=%lld", 1LL << b);
                json_object_set_new(h, k, json_integer(hist[b]));
            }
        json_object_set_new(j, "length_histogram", h);
    }
    for (int i = 0; i < nrows; i++) free(rows[i].text);
    for (int i = 0; i < nerows; i++) free(erows[i].text);
    free(rows);
    free(erows);
    free(pb.msg);
    free(epb.msg);
    free(seen.v);
    free(exact_lines);
    free(near_ex);
    free(overlap_lines);
    free(lens);
    free(long_lines);
    free(dl);
    return j;
}

/* the JSON of data_check as text */
static void print_lines(json_t *a, long long total, long long show) {
    size_t i;
    json_t *x;
    json_array_foreach(a, i, x) {
        if (json_is_array(x))
            printf(i ? ", %lld~%lld" : "  (lines %lld~%lld", (long long)json_integer_value(json_array_get(x, 0)),
                   (long long)json_integer_value(json_array_get(x, 1)));
        else printf(i ? ", %lld" : "  (lines %lld", (long long)json_integer_value(x));
    }
    printf(total ? (total > show ? ", ...)\n" : ")\n") : "\n");
}
#define JI(key) ((long long)json_integer_value(json_object_get(j, key)))

int cmd_data(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "check"))
        return fail("data", "usage: loratune data check --data FILE.jsonl [--eval FILE.jsonl] [--tokenizer DIR | "
                            "--model DIR] [--seq N] [--ngram N] [--near J] [--json]");
    static const opt_spec spec[] = {{"data", 1},  {"eval", 1}, {"tokenizer", 1}, {"model", 1}, {"seq", 1},
                                    {"ngram", 1}, {"near", 1}, {"json", 0},      {"show", 1}};
    opts o;
    if (opts_parse(&o, spec, 9, argc - 1, argv + 1, "data check")) return 2;
    const char *data = opt_str(&o, "data", NULL), *eval = opt_str(&o, "eval", NULL);
    const char *tokdir = opt_str(&o, "tokenizer", opt_str(&o, "model", NULL));
    long long seq, ngram, show;
    double near;
    if (!data) return fail("data check", "--data FILE.jsonl is required");
    if (opt_int(&o, "seq", 2048, 0, 1 << 30, &seq) || opt_int(&o, "ngram", 13, 1, 1000, &ngram) ||
        opt_double(&o, "near", 0.8, &near) || opt_int(&o, "show", 5, 0, 1000000, &show))
        return 2;
    lt_tokenizer *tok = NULL;
    if (tokdir && !(tok = open_tokenizer("data check", tokdir))) return 1;
    char msg[512];
    json_t *j = data_check(data, eval, tok, seq, ngram, near, show, msg, sizeof msg);
    lt_tokenizer_free(tok);
    if (!j) return fail("data check", "%s", msg);
    if (opt_flag(&o, "json")) {
        char *s = json_dumps(j, JSON_PRESERVE_ORDER);
        puts(s);
        free(s);
    } else {
        printf("%s: %lld rows\n", data, JI("rows"));
        printf("exact duplicates      %lld", JI("exact_duplicates"));
        print_lines(json_object_get(j, "exact_duplicate_lines"), JI("exact_duplicates"), show);
        printf("near duplicates       %lld pairs (MinHash Jaccard >= %.2f)", JI("near_duplicate_pairs"), near);
        print_lines(json_object_get(j, "near_duplicate_examples"), JI("near_duplicate_pairs"), show);
        if (eval) {
            printf("eval overlap          %lld rows share a %lld-word n-gram with %s", JI("eval_overlap_rows"), ngram,
                   eval);
            print_lines(json_object_get(j, "eval_overlap_lines"), JI("eval_overlap_rows"), show);
        }
        if (json_object_get(j, "tokens_total")) {
            printf("tokens                %lld in all; per row min %lld, median %lld, p95 %lld, max %lld\n",
                   JI("tokens_total"), JI("tokens_min"), JI("tokens_p50"), JI("tokens_p95"), JI("tokens_max"));
            printf("rows longer than %lld   %lld", seq, JI("rows_over_seq"));
            print_lines(json_object_get(j, "rows_over_seq_lines"), JI("rows_over_seq"), show);
            printf("length histogram (tokens):\n");
            long long hmax = 1;
            const char *k;
            json_t *x, *h = json_object_get(j, "length_histogram");
            json_object_foreach(h, k, x) if (json_integer_value(x) > hmax) hmax = json_integer_value(x);
            json_object_foreach(h, k, x) {
                printf("  <= %-8s %7lld  ", k + 2, (long long)json_integer_value(x));
                for (int q = 0; q < (int)(40.0 * (double)json_integer_value(x) / (double)hmax + 0.5); q++) putchar('#');
                putchar('\n');
            }
        } else printf("(no --tokenizer / --model: token lengths not measured)\n");
        json_t *pl = json_object_get(j, "problems");
        printf("template problems     %zu\n", json_array_size(pl));
        for (size_t i = 0; i < json_array_size(pl) && i < (size_t)show * 4; i++)
            printf("  %s\n", json_string_value(json_array_get(pl, i)));
        if (json_array_size(pl) > (size_t)show * 4)
            printf("  ... (%zu more; --show N)\n", json_array_size(pl) - (size_t)show * 4);
    }
    json_decref(j);
    return 0;
}
