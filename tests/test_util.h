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

#define TU_MAIN(suite_fn)                            \
    int main(void) {                                 \
        SRunner *sr = srunner_create(suite_fn());    \
        srunner_run_all(sr, CK_NORMAL);              \
        int failed = srunner_ntests_failed(sr);      \
        srunner_free(sr);                            \
        return failed ? EXIT_FAILURE : EXIT_SUCCESS; \
    }

#endif
