/*
 * test_util.h - the helpers shared by the Check suites (header-only): the backend the model suites run
 * on (LT_TEST_BACKEND) and their main, model loading, batches, the decoder's training pass and finite
 * differences, resume tests, random inputs, float buffers, the comparators, temporary files, shell commands
 * and the CLI. The suites are white-box tests: this header includes the library's decoder.h (models,
 * adapters, backends, workspaces) and safetensors reader for the helpers that need them.
 */
#ifndef LT_TEST_UTIL_H
#define LT_TEST_UTIL_H

#include <check.h>
#include <errno.h> /* program_invocation_short_name */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapter/adapter.h"
#include "core/context.h"
#include "decoder/decoder.h"
#include "formats/safetensors.h"
#include "loratune.h"

/* ---- the backend of the model suites ------------------------------------------------------------- */

/* LT_TEST_BACKEND, default "cpu" (tests/run.sh runs the model suites again with "cuda" on a machine
 * with a CUDA device). */
static inline const char *tu_backend(void) {
    const char *b = getenv("LT_TEST_BACKEND");
    return b && *b ? b : "cpu";
}

/* n deterministic pseudo-random token ids in [0, V) (an LCG seeded by seed). */
static inline void tu_fill_ids(int32_t *ids, int n, int V, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)V);
    }
}

/* A context on tu_backend() (threads from LT_TEST_THREADS, default 2). */
static inline lt_context *tu_context(void) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = tu_backend();
    cp.n_threads = getenv("LT_TEST_THREADS") ? atoi(getenv("LT_TEST_THREADS")) : 2;
    lt_context *ctx = NULL;
    lt_status st = lt_context_create(&cp, &ctx);
    ck_assert_msg(st == LT_OK, "context: %s", lt_last_error());
    return ctx;
}

/* ---- models ------------------------------------------------------------------------------------- */

/* LT_TEST_DATA_DIR/models/<name> (tests/python/make_models.py and make_family_models.py write them) */
static inline void tu_model_dir(char *buf, size_t len, const char *name) {
    snprintf(buf, len, "%s/models/%s", LT_TEST_DATA_DIR, name);
}

/* The test model <name>, loaded with mp (NULL: defaults); a failure fails the test. */
static inline lt_model *tu_load_model(lt_context *ctx, const char *name, const lt_model_params *mp) {
    char dir[1024];
    tu_model_dir(dir, sizeof dir, name);
    lt_model *m = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, mp, &m) == LT_OK, "%s: %s", dir, lt_last_error());
    return m;
}

/* A host copy (malloc'd) of `bytes` of backend memory at dev: the suites never read backend pointers
 * directly, so that they run on a device backend too (LT_TEST_BACKEND=cuda). */
static inline void *tu_dev_copy(lt_backend *be, const void *dev, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(h);
    if (bytes) be->ops->download(be, h, dev, bytes);
    return h;
}

/* A host copy (malloc'd) of n_params floats of adapter a at dev (its params, grads, ...), any backend. */
static inline float *tu_adapter_host_copy(const lt_adapter *a, const float *dev) {
    return tu_dev_copy(a->model->be, dev, a->n_params * sizeof(float));
}

/* As if trained: every parameter of a moved by amp * (u - 0.5), u uniform in [0, 1) from an LCG seeded by
 * seed (a B of zeros at init would hide half of the gradient paths). */
static inline void tu_perturb(lt_adapter *a, uint64_t seed, double amp) {
    float *h = tu_adapter_host_copy(a, a->params);
    for (size_t i = 0; i < a->n_params; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        h[i] += (float)(((double)(seed >> 40) / 16777216.0 - 0.5) * amp);
    }
    a->model->be->ops->upload(a->model->be, a->params, h, a->n_params * sizeof *h);
    free(h);
}

/* The summed loss of batch b, and grad_scale times its gradient in a's gradients (zeroed first): the decoder's
 * training pass alone, in a workspace of mode ws_mode (LT_WS_FULL, LT_WS_CHECKPOINT); drop NULL: no dropout.
 * *n_valid, when not NULL: the tokens predicted. */
static inline double tu_loss_and_grads(lt_model *m, lt_adapter *a, const lt_batch *b, int ws_mode,
                                       const lt_dropout_state *drop, float grad_scale, int64_t *n_valid) {
    lt_workspace *ws = NULL;
    lt_error err;
    ck_assert_int_eq(lt_workspace_create(m, b->n_rows, b->seq_len, a->p.rank, ws_mode, &ws, &err), LT_OK);
    int64_t nv;
    ck_assert_msg(lt_stage_batch(m, ws, b, &nv, &err) == LT_OK, "%s", err.msg);
    m->be->ops->zero(m->be, a->grads, a->n_params * sizeof(float));
    double loss;
    ck_assert_msg(lt_forward_backward(m, a, ws, drop, grad_scale, &loss, NULL, &err) == LT_OK, "%s", err.msg);
    lt_workspace_free(ws);
    if (n_valid) *n_valid = nv;
    return loss;
}

/* The central difference (L(p_i + h) - L(p_i - h)) / 2h of the summed loss L of batch b (tu_loss_and_grads,
 * checkpointed) in parameter i of a; p is the host copy of a's parameters, left as it was (and so is a). */
static inline double tu_central_difference(lt_model *m, lt_adapter *a, const lt_batch *b, const lt_dropout_state *drop,
                                           float *p, size_t i, double h) {
    const float orig = p[i];
    double l[2];
    for (int s = 0; s < 3; s++) {
        p[i] = s == 0 ? orig + (float)h : s == 1 ? orig - (float)h : orig;
        m->be->ops->upload(m->be, a->params, p, a->n_params * sizeof *p);
        lt_adapter_sync_weights(a); /* the (1 + w) copies of full fine-tuning's norms */
        if (s < 2) l[s] = tu_loss_and_grads(m, a, b, LT_WS_CHECKPOINT, drop, 0.0f, NULL);
    }
    return (l[0] - l[1]) / (2 * h);
}

/* The gradient of the summed loss of batch b in a's parameters against central differences (step 1e-2) at 24
 * parameters spread over the buffer (A and B of several layers and projections): |fd - g| <= 2e-2 |fd| + 2e-3
 * (the step's truncation error and fp32 rounding of the loss), and at least 8 probes with a visible gradient
 * (|fd| > 1e-3), so that a gradient of zeros cannot pass. */
static inline void tu_check_finite_differences(lt_model *m, lt_adapter *a, const lt_batch *b,
                                               const lt_dropout_state *drop, const char *what) {
    tu_loss_and_grads(m, a, b, LT_WS_CHECKPOINT, drop, 1.0f, NULL);
    float *g = tu_adapter_host_copy(a, a->grads), *p = tu_adapter_host_copy(a, a->params);
    int checked = 0;
    for (size_t k = 0; k < 24; k++) {
        const size_t i = (k * 7919 * 13 + 17) % a->n_params;
        const double fd = tu_central_difference(m, a, b, drop, p, i, 1e-2);
        ck_assert_msg(fabs(fd - g[i]) <= 2e-2 * fabs(fd) + 2e-3,
                      "%s: param %zu: analytic %.6g vs finite difference %.6g", what, i, g[i], fd);
        checked += fabs(fd) > 1e-3;
    }
    ck_assert_msg(checked >= 8, "%s: too few probes with a visible gradient (%d)", what, checked);
    free(g);
    free(p);
}

/* Resume tests: a run of `total` updates straight (phase 0) equals its first half (phase 1, which ends with a
 * checkpoint into ckpt_dir: tu_resume_end) and a fresh trainer that loads that checkpoint and runs the second
 * half (phase 2). tu_resume_begin: the updates [*first, *last) of the phase; phase 2 loads the checkpoint into
 * t, whose optimizer o must then count the first half's updates. */
static inline void tu_resume_begin(lt_trainer *t, const lt_optimizer *o, const char *ckpt_dir, int phase, int total,
                                   int *first, int *last) {
    *first = phase == 2 ? total / 2 : 0;
    *last = phase == 1 ? total / 2 : total;
    if (phase != 2) return;
    ck_assert_msg(lt_trainer_load_checkpoint(t, ckpt_dir) == LT_OK, "%s", lt_trainer_last_error(t));
    ck_assert_int_eq(lt_optimizer_step_count(o), total / 2);
}
static inline void tu_resume_end(lt_trainer *t, const char *ckpt_dir, int phase) {
    if (phase == 1) ck_assert_msg(lt_trainer_save_checkpoint(t, ckpt_dir) == LT_OK, "%s", lt_trainer_last_error(t));
}

/* Projection p of layer l is an f32 weight of the same bytes in models m1 and m2 (two exports of a merge). */
static inline void tu_expect_same_weight(const lt_model *m1, const lt_model *m2, int l, lt_proj p) {
    ck_assert_int_eq(m1->layers[l].w[p].format, LT_WEIGHT_F32);
    ck_assert_int_eq(m2->layers[l].w[p].format, LT_WEIGHT_F32);
    int in, out;
    lt_proj_dims(&m1->cfg, p, &in, &out);
    const size_t bytes = (size_t)in * out * sizeof(float);
    float *w1 = tu_dev_copy(m1->be, m1->layers[l].w[p].f32, bytes),
          *w2 = tu_dev_copy(m2->be, m2->layers[l].w[p].f32, bytes);
    ck_assert_mem_eq(w1, w2, bytes);
    free(w1);
    free(w2);
}

/* Tensor `name` of a golden file; missing is a failure. */
static inline const lt_st_tensor *tu_st_need(const lt_st_file *f, const char *name) {
    const lt_st_tensor *t = lt_st_find(f, name);
    ck_assert_msg(t != NULL, "%s: tensor %s missing", lt_st_path(f), name);
    return t;
}

/* n bytes equal, or a failure naming the first byte that differs */
static inline void tu_expect_bytes(const char *cs, const char *what, const void *ours, const void *golden, size_t n) {
    const uint8_t *a = ours, *b = golden;
    if (!memcmp(a, b, n)) return; /* (one ck_assert per byte is one write to Check's pipe per byte) */
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(a[i] == b[i], "%s: %s differs from the golden at byte %zu (ours 0x%02x, golden 0x%02x)", cs, what,
                      i, a[i], b[i]);
}

/* A batch of n_rows rows of seq_len tokens: ids and labels (NULL: the ids; -100 = no loss). */
static inline lt_batch tu_batch(const int32_t *ids, const int32_t *labels, int n_rows, int seq_len) {
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = n_rows;
    b.seq_len = seq_len;
    b.input_ids = ids;
    b.labels = labels;
    return b;
}

/* ---- random inputs ------------------------------------------------------------------------------- */

/* xorshift64* (one stream per process; tu_rng_seed makes a test's inputs reproducible) */
static uint64_t tu_rng_state = 88172645463325252ull;
static inline void tu_rng_seed(uint64_t s) { tu_rng_state = s * 2654435761ull + 0x9E3779B97F4A7C15ull; }
static inline uint64_t tu_rng_u64(void) {
    tu_rng_state ^= tu_rng_state >> 12;
    tu_rng_state ^= tu_rng_state << 25;
    tu_rng_state ^= tu_rng_state >> 27;
    return tu_rng_state * 2685821657736338717ull;
}
/* uniform in [lo, hi) */
static inline float tu_urand(float lo, float hi) {
    return lo + (hi - lo) * (float)((tu_rng_u64() >> 40) * (1.0 / 16777216.0));
}
/* uniform in [0, n) */
static inline int tu_irand(int n) { return (int)(tu_rng_u64() % (uint64_t)n); }

/* ---- float buffers (64-byte aligned, never NULL: a failed allocation fails the test) ---------------- */

static inline float *tu_fnew(size_t n) {
    float *p = aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
    ck_assert_ptr_nonnull(p);
    return p;
}
static inline float *tu_frand(size_t n, float lo, float hi) {
    float *p = tu_fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = tu_urand(lo, hi);
    return p;
}
static inline float *tu_fdup(const float *x, size_t n) {
    float *p = tu_fnew(n);
    if (n) memcpy(p, x, n * sizeof(float));
    return p;
}
static inline void tu_ffill(float *p, size_t n, float v) {
    for (size_t i = 0; i < n; i++) p[i] = v;
}
static inline float *tu_fconst(size_t n, float v) {
    float *p = tu_fnew(n);
    tu_ffill(p, n, v);
    return p;
}

/* ---- comparators --------------------------------------------------------------------------------- */

/* Elementwise |got - want| <= rtol * (|want| + max(rms(want), floor)); NaN fails. `floor` is the
 * problem's scale where the expected values may all be ~0 (a gradient that cancels exactly). On a
 * failure msg names the first element that fails. */
static inline int tu_close_msg(const float *got, const float *want, size_t n, double rtol, double floor, char *msg,
                               size_t len) {
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)want[i] * want[i];
    double rms = n ? sqrt(ss / n) : 0.0;
    if (rms < floor) rms = floor;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]), tol = rtol * (fabs(want[i]) + rms);
        if (!(e <= tol)) {
            snprintf(msg, len, "[%zu] got %.9g want %.9g (err %.3g > tol %.3g, n %zu)", i, got[i], want[i], e, tol, n);
            return 0;
        }
    }
    return 1;
}
/* TU_CLOSE(got, want, n, rtol, printf-style description...), TU_CLOSE_F with a floor, TU_SAME bitwise */
#define TU_CLOSE_F(got, want, n, rtol, floor, ...)                                               \
    do {                                                                                         \
        char m_[512], w_[256];                                                                   \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                    \
        ck_assert_msg(tu_close_msg(got, want, n, rtol, floor, m_, sizeof m_), "%s: %s", w_, m_); \
    } while (0)
#define TU_CLOSE(got, want, n, rtol, ...) TU_CLOSE_F(got, want, n, rtol, 0.0, __VA_ARGS__)
#define TU_SAME(got, want, n, ...)                                                               \
    do {                                                                                         \
        char w_[256];                                                                            \
        snprintf(w_, sizeof w_, __VA_ARGS__);                                                    \
        ck_assert_msg(memcmp(got, want, (n) * sizeof(float)) == 0, "%s: not bit-identical", w_); \
    } while (0)

/* A check inside a loop over many elements: Check hears of it only when it fails (ck_assert reports
 * every passing check to the parent process, one write per element). */
#define TU_EXPECT(cond, ...)                    \
    do {                                        \
        if (!(cond)) ck_abort_msg(__VA_ARGS__); \
    } while (0)

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

/* The reference python (transformers, peft, ...): LORATUNE_REF_PYTHON as tests/run.sh sets it, else the
 * venv of tests/python/requirements.lock as tests/ref-venv.sh finds it (building it when missing). */
static inline const char *tu_ref_python(void) {
    static char path[1024];
    const char *py = getenv("LORATUNE_REF_PYTHON");
    if (py) return py;
    FILE *p = popen("bash " LT_SOURCE_DIR "/tests/ref-venv.sh", "r");
    ck_assert_msg(p != NULL, "cannot run tests/ref-venv.sh (set LORATUNE_REF_PYTHON)");
    const int got = fgets(path, sizeof path, p) != NULL;
    const int rc = pclose(p);
    ck_assert_msg(got && rc == 0, "tests/ref-venv.sh found no reference python (set LORATUNE_REF_PYTHON)");
    path[strcspn(path, "\n")] = 0;
    ck_assert_msg(access(path, X_OK) == 0, "the reference python %s is missing (set LORATUNE_REF_PYTHON)", path);
    return path;
}

static inline void tu_tempdir(char *out, size_t len) {
    snprintf(out, len, "/tmp/lt-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(out));
}

/* rm -rf dir (a tu_tempdir when a test is done with it) */
static inline void tu_rm_rf(const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* A whole file, NUL-terminated (malloc'd; its length into *n when n is not NULL); NULL when it cannot
 * be opened. */
static inline char *tu_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    b[len] = 0;
    fclose(f);
    if (n) *n = (size_t)len;
    return b;
}
/* tu_read_file of a file that must be there */
static inline char *tu_slurp(const char *path, size_t *n) {
    char *b = tu_read_file(path, n);
    ck_assert_msg(b != NULL, "cannot open %s", path);
    return b;
}

static inline void tu_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* 1 if the two files have the same bytes */
static inline int tu_same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    ck_assert_msg(fa && fb, "cannot open %s or %s", a, b);
    int same = 1, ca, cb;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) same = 0;
    } while (same && ca != EOF);
    fclose(fa);
    fclose(fb);
    return same;
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

#ifdef LT_CLI
/* `loratune train` on the model directory mdir (its data.jsonl) with the options `common`, straight into
 * ROOT/straight (a checkpoint every k updates), and again from ROOT/straight/checkpoint-k into ROOT/resumed:
 * the two adapters must be the same bytes (a resume is exact). */
static inline void tu_cli_resume_equals_straight(const char *root, const char *mdir, const char *common, int k) {
    char cmd[4096], a[1024], b[1024];
    snprintf(cmd, sizeof cmd, "%s train --model %s --data %s/data.jsonl --out %s/straight %s --save-every %d", LT_CLI,
             mdir, mdir, root, common, k);
    free(tu_run(cmd, NULL));
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s/data.jsonl --out %s/resumed %s --resume %s/straight/checkpoint-%d", LT_CLI,
             mdir, mdir, root, common, root, k);
    free(tu_run(cmd, NULL));
    snprintf(a, sizeof a, "%s/straight/adapter/adapter_model.safetensors", root);
    snprintf(b, sizeof b, "%s/resumed/adapter/adapter_model.safetensors", root);
    ck_assert_msg(tu_same_file(a, b), "%s: resuming from checkpoint-%d did not reproduce the straight run bit for bit",
                  common, k);
}
#endif

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

/* ---- main -------------------------------------------------------------------------------------- */

/* Runs suite s as a test program's main does: the exit status is 0 when every test passed. With
 * LT_TEST_BACKEND=cuda on a machine without a device, or in a build without CUDA, the suite is skipped
 * with a line saying so (exit 0); a name the library does not know fails. On a device backend the
 * tests run in Check's no-fork mode: CUDA cannot be used in a child forked after the parent
 * initialised it (and lt_backend_available does). */
static inline int tu_run_suite(Suite *s) {
    const char *b = tu_backend();
    SRunner *sr = srunner_create(s);
    if (strcmp(b, "cpu") != 0) {
        if (!lt_backend_available(b)) {
            const int cuda = !strcmp(b, "cuda");
            printf("%s: backend \"%s\" (LT_TEST_BACKEND) %s\n", program_invocation_short_name, b,
                   cuda ? "is not available on this machine (no device, or not built): skipped"
                        : "is not a backend of this library (cpu, cuda): failed");
            srunner_free(sr);
            return cuda ? EXIT_SUCCESS : EXIT_FAILURE;
        }
        srunner_set_fork_status(sr, CK_NOFORK);
    }
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
#define TU_MAIN(suite_fn) \
    int main(void) { return tu_run_suite(suite_fn()); }

#endif
