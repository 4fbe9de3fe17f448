/*
 * finetune.c - fine-tune a LoRA adapter with libloratune's C API and save it in the PEFT layout.
 *
 *   usage: finetune MODEL_DIR OUT_DIR [DATA.jsonl]        (DATA defaults to MODEL_DIR/data.jsonl)
 *
 * DATA has one {"input_ids": [...], "labels": [...]} object per line ("labels" optional, -100 = no
 * loss); without it the example learns counting sequences. Build: see Makefile / CMakeLists.txt here.
 */
#include <loratune.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROWS 1024
#define MAX_LEN 512

typedef struct {
    int32_t ids[MAX_LEN], labels[MAX_LEN];
    int len;
} row;

/* The integers of the array after "key": in one JSON line; returns how many (-1 if absent). */
static int int_array(const char *line, const char *key, int32_t *out, int cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p || !(p = strchr(p, '['))) return -1;
    int n = 0;
    for (p++; *p && *p != ']' && n < cap;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        out[n++] = (int32_t)v;
        p = end;
    }
    return n;
}

static int load_rows(const char *path, row *rows, int64_t vocab) {
    FILE *f = fopen(path, "r");
    int n = 0;
    if (f) {
        static char line[1 << 16];
        while (n < MAX_ROWS && fgets(line, sizeof line, f)) {
            row *r = &rows[n];
            if ((r->len = int_array(line, "input_ids", r->ids, MAX_LEN)) <= 0) continue;
            if (int_array(line, "labels", r->labels, MAX_LEN) != r->len) memcpy(r->labels, r->ids, sizeof r->ids);
            n++;
        }
        fclose(f);
        return n;
    }
    for (; n < 8; n++) { /* no data: counting sequences */
        rows[n].len = 16;
        for (int t = 0; t < 16; t++) rows[n].ids[t] = rows[n].labels[t] = (int32_t)((n + t) % vocab);
    }
    return n;
}

/* Pad rows [first, first + count) into ids/labels of count x T (T = the longest row). */
static lt_batch make_batch(const row *rows, int first, int count, int32_t *ids, int32_t *labels) {
    int T = 1;
    for (int i = 0; i < count; i++)
        if (rows[first + i].len > T) T = rows[first + i].len;
    for (int i = 0; i < count; i++)
        for (int t = 0; t < T; t++) {
            const row *r = &rows[first + i];
            ids[i * T + t] = t < r->len ? r->ids[t] : 0;
            labels[i * T + t] = t < r->len ? r->labels[t] : -100;
        }
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = count;
    b.seq_len = T;
    b.input_ids = ids;
    b.labels = labels;
    return b;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR OUT_DIR [DATA.jsonl]\n", argv[0]);
        return 2;
    }
    if (lt_version_number() / 10000 != LT_VERSION_MAJOR) {
        fprintf(stderr, "libloratune %s does not match the header %s\n", lt_version_string(), LT_VERSION_STRING);
        return 1;
    }
    lt_context *ctx = NULL;
    lt_model *model = NULL;
    lt_adapter *adapter = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *trainer = NULL;
    int rc = 1;

    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    if (lt_context_create(&cp, &ctx) != LT_OK || lt_model_load(ctx, argv[1], NULL, &model) != LT_OK) {
        fprintf(stderr, "error: %s\n", lt_last_error()); /* creation failures: per-thread message */
        goto done;
    }
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(model, &info);

    static row rows[MAX_ROWS];
    char data[4096];
    snprintf(data, sizeof data, "%s/data.jsonl", argv[1]);
    int n_rows = load_rows(argc > 3 ? argv[3] : data, rows, info.vocab_size);

    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 8;
    ap.alpha = 16;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 2e-3f;
    op.schedule = LT_SCHED_COSINE;
    op.total_steps = 40;
    if (lt_adapter_create(model, &ap, &adapter) != LT_OK || lt_optimizer_create(adapter, &op, &opt) != LT_OK ||
        lt_trainer_create(model, adapter, opt, NULL, &trainer) != LT_OK) {
        fprintf(stderr, "error: %s\n", lt_last_error());
        goto done;
    }

    static int32_t ids[MAX_ROWS * MAX_LEN], labels[MAX_ROWS * MAX_LEN];
    for (int step = 0; step < 40; step++) {
        int first = (step * 4) % n_rows, count = n_rows - first < 4 ? n_rows - first : 4;
        lt_batch b = make_batch(rows, first, count, ids, labels);
        lt_step_result r = {.size = sizeof r};
        if (lt_trainer_step(trainer, &b, &r) != LT_OK) { /* handle failures: the handle's message */
            fprintf(stderr, "step %d: %s\n", step, lt_trainer_last_error(trainer));
            goto done;
        }
        if (r.step % 10 == 0) printf("step %3lld  loss %.4f  lr %.2e\n", (long long)r.step, r.loss, r.lr);
    }
    lt_batch all = make_batch(rows, 0, n_rows, ids, labels);
    double loss_sum;
    int64_t n_tokens;
    if (lt_trainer_evaluate(trainer, &all, &loss_sum, &n_tokens) != LT_OK ||
        lt_adapter_save(adapter, argv[2]) != LT_OK) {
        fprintf(stderr, "error: %s %s\n", lt_trainer_last_error(trainer), lt_adapter_last_error(adapter));
        goto done;
    }
    printf("eval loss %.4f\n", loss_sum / (double)n_tokens);
    printf("saved %lld LoRA parameters to %s\n", (long long)lt_adapter_n_params(adapter), argv[2]);
    rc = 0;
done: /* every *_free accepts NULL; free children before parents */
    lt_trainer_free(trainer);
    lt_optimizer_free(opt);
    lt_adapter_free(adapter);
    lt_model_free(model);
    lt_context_free(ctx);
    return rc;
}
