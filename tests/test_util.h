/* test_util.h - small helpers shared by the Check suites (header-only). */
#ifndef LT_TEST_UTIL_H
#define LT_TEST_UTIL_H

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loratune.h"

/* n deterministic pseudo-random token ids in [0, V) (an LCG seeded by seed). */
static inline void tu_fill_ids(int32_t *ids, int n, int V, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)V);
    }
}

/* A CPU context (threads from LT_TEST_THREADS, default 2). */
static inline lt_context *tu_context(void) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = getenv("LT_TEST_BACKEND") ? getenv("LT_TEST_BACKEND") : "cpu";
    cp.n_threads = getenv("LT_TEST_THREADS") ? atoi(getenv("LT_TEST_THREADS")) : 2;
    lt_context *ctx = NULL;
    lt_status st = lt_context_create(&cp, &ctx);
    ck_assert_msg(st == LT_OK, "context: %s", lt_last_error());
    return ctx;
}

/* max |a - b| / max |b| */
static inline double tu_max_rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= num)) num = d; /* NaN-propagating */
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0 ? num / den : num;
}

static inline void tu_tempdir(char *out, size_t len) {
    snprintf(out, len, "/tmp/lt-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(out));
}

static inline void tu_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static inline void tu_copy_file(const char *src, const char *dst) {
    FILE *a = fopen(src, "rb"), *b = fopen(dst, "wb");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) ck_assert_uint_eq(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

/* Run a shell command; returns its stdout (malloc'd); *status gets the exit status if non-NULL. */
static inline char *tu_run_capture(const char *cmd, int *status, int want_stderr) {
    char full[8192];
    snprintf(full, sizeof full, want_stderr ? "%s 2>&1 >/dev/null" : "%s 2>/dev/null", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (cap - n < 2) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}
static inline char *tu_run(const char *cmd, int *status) {
    int st;
    char *out = tu_run_capture(cmd, &st, 0);
    if (status) *status = st;
    else ck_assert_msg(st == 0, "command failed (%d): %s", st, cmd);
    return out;
}
static inline char *tu_run_stderr(const char *cmd, int *status) { return tu_run_capture(cmd, status, 1); }

/* The last non-empty line of a text (modifies it). */
static inline const char *tu_last_line(char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
    char *p = strrchr(s, '\n');
    return p ? p + 1 : s;
}

/*
 * Greedy generation (lt_generate, EOS off, new tokens each) of B prompts (lens[b] tokens each,
 * concatenated) == at every step the argmax of the full forward (lt_model_logits) of the rows so far,
 * right-padded to the longest as generation pads them (so that Phi-3 longrope switches where the batch
 * does). The KV-cache path (prefill, decode) against the training forward, token for token.
 */
static inline void tu_check_greedy(lt_model *m, const lt_adapter *a, const int32_t *prompts, const int32_t *lens, int B,
                                   int new_tokens, const char *what) {
    lt_model_info info = {.size = sizeof info};
    ck_assert_int_eq(lt_model_get_info(m, &info), LT_OK);
    const int V = (int)info.vocab_size;
    int S = 0;
    for (int b = 0; b < B; b++) S = lens[b] > S ? lens[b] : S;
    S += new_tokens;
    int32_t *out = malloc((size_t)B * new_tokens * 4), *out_lens = malloc((size_t)B * 4);
    int32_t *rows = malloc((size_t)B * S * 4), *ids = malloc((size_t)B * S * 4), *n = malloc((size_t)B * 4);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = new_tokens;
    gp.eos_token_id = -1;
    ck_assert_msg(lt_generate(m, a, prompts, lens, B, &gp, out, out_lens) == LT_OK, "%s: %s", what,
                  lt_model_last_error(m));
    for (int b = 0, off = 0; b < B; off += lens[b], b++) {
        ck_assert_int_eq(out_lens[b], new_tokens);
        memcpy(rows + (size_t)b * S, prompts + off, (size_t)lens[b] * 4);
        n[b] = lens[b];
    }
    for (int k = 0; k < new_tokens; k++) {
        int T = 0;
        for (int b = 0; b < B; b++) T = n[b] > T ? n[b] : T;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) ids[b * T + t] = t < n[b] ? rows[(size_t)b * S + t] : 0;
        lt_batch bt;
        lt_batch_init(&bt, sizeof bt);
        bt.n_rows = B;
        bt.seq_len = T;
        bt.input_ids = ids;
        float *lg = malloc((size_t)B * T * V * 4);
        ck_assert_msg(lt_model_logits(m, a, &bt, lg, (size_t)B * T * V) == LT_OK, "%s", lt_model_last_error(m));
        for (int b = 0; b < B; b++) {
            const float *row = lg + ((size_t)b * T + n[b] - 1) * V;
            int best = 0;
            for (int v = 1; v < V; v++)
                if (row[v] > row[best]) best = v;
            ck_assert_msg(out[b * new_tokens + k] == best, "%s: row %d token %d: generated %d, full forward argmax %d",
                          what, b, k, out[b * new_tokens + k], best);
            rows[(size_t)b * S + n[b]++] = best;
        }
        free(lg);
    }
    free(out);
    free(out_lens);
    free(rows);
    free(ids);
    free(n);
}

#define TU_MAIN(suite_fn)                            \
    int main(void) {                                 \
        SRunner *sr = srunner_create(suite_fn());    \
        srunner_run_all(sr, CK_NORMAL);              \
        int failed = srunner_ntests_failed(sr);      \
        srunner_free(sr);                            \
        return failed ? EXIT_FAILURE : EXIT_SUCCESS; \
    }

#endif
