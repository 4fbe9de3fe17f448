/*
 * opt_memory.c - resident memory per trainable parameter of each optimizer (docs/BENCHMARKS.md).
 *
 *   build/opt_memory MODEL_DIR [RANK] [adamw|adamw8bit|sgd]      (built with the library: bench/CMakeLists.txt)
 *
 * Loads the model, then measures the resident set (/proc/self/statm) before the adapter exists, after
 * the adapter (parameters + gradients), and after the optimizer has been created and has taken two
 * updates (its state touched), for AdamW, AdamW8bit and SGD; prints bytes per trainable parameter.
 * The training workspace is created before the first measurement so that it is not counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loratune.h"

static double rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &res) != 2) return -1;
    fclose(f);
    return (double)res * (double)sysconf(_SC_PAGESIZE);
}

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, lt_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: opt_memory MODEL_DIR [RANK] [adamw|adamw8bit|sgd]\n");
        return 2;
    }
    const int rank = argc > 2 ? atoi(argv[2]) : 256;
    lt_context *ctx = NULL;
    if (lt_context_create(NULL, &ctx) != LT_OK) die("context");
    lt_model *m = NULL;
    if (lt_model_load(ctx, argv[1], NULL, &m) != LT_OK) die("model");
    const lt_optimizer_kind kinds[3] = {LT_OPT_ADAMW, LT_OPT_ADAMW8BIT, LT_OPT_SGD};
    const char *names[3] = {"adamw", "adamw8bit", "sgd"};
    const char *only = argc > 3 ? argv[3] : NULL; /* one kind per process: freed memory is not reused */
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = (int32_t)((i * 37 + 11) % 200);
    for (int k = 0; k < 3; k++) {
        if (only && strcmp(only, names[k])) continue;
        const double r0 = rss_bytes();
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = rank;
        ap.alpha = 2.0f * rank;
        lt_adapter *a = NULL;
        if (lt_adapter_create(m, &ap, &a) != LT_OK) die("adapter");
        const double n = (double)lt_adapter_n_params(a);
        const double r1 = rss_bytes();
        lt_optimizer_params op;
        lt_optimizer_params_init(&op, sizeof op);
        op.kind = kinds[k];
        lt_optimizer *o = NULL;
        if (lt_optimizer_create(a, &op, &o) != LT_OK) die("optimizer");
        /* the state is allocated (zeroed, resident) at its first use: saving it is one */
        char tmp[64];
        snprintf(tmp, sizeof tmp, "/tmp/opt_memory-%ld.bin", (long)getpid());
        if (lt_optimizer_save(o, tmp) != LT_OK) die("optimizer state");
        unlink(tmp);
        const double r2 = rss_bytes();
        lt_trainer_params tp;
        lt_trainer_params_init(&tp, sizeof tp);
        lt_trainer *t = NULL;
        if (lt_trainer_create(m, a, o, &tp, &t) != LT_OK) die("trainer");
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = 2;
        b.seq_len = 32;
        b.input_ids = ids;
        lt_step_result res = {.size = sizeof res};
        for (int s = 0; s < 2; s++)
            if (lt_trainer_step(t, &b, &res) != LT_OK) die("step"); /* workspace planned, two updates */
        const double r3 = rss_bytes();
        printf("%-10s rank %d, %.0f trainable parameters: params+grads %.2f B/param, optimizer state %.2f B/param, "
               "params+grads+state %.2f B/param; after two updates (with the rank-sized workspace) %.2f B/param\n",
               names[k], rank, n, (r1 - r0) / n, (r2 - r1) / n, (r2 - r0) / n, (r3 - r0) / n);
        lt_trainer_free(t);
        lt_optimizer_free(o);
        lt_adapter_free(a);
    }
    lt_model_free(m);
    lt_context_free(ctx);
    return 0;
}
