/*
 * fuzz_util.h - what the libFuzzer harnesses of tests/fuzz share (header-only).
 *
 * An input is a set of files: the bytes between separators FZ_SEP, in the order the harness names them
 * (an empty or missing part is an absent file). Parsers that take a directory read them from a private directory
 * in /dev/shm (tmpfs), rewritten for every input and removed at exit. tests/fuzz/make_seeds.c writes
 * seed inputs in this format from files the library itself writes.
 */
#ifndef LT_FUZZ_UTIL_H
#define LT_FUZZ_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loratune.h"

#define FZ_SEP "=#=LT=#="
#define FZ_SEP_LEN 8
#define FZ_MAX_PARTS 8

typedef struct fz_part {
    const uint8_t *p;
    size_t n;
} fz_part;

/* Split data at FZ_SEP into at most max parts; returns how many (>= 1). */
static inline int fz_split(const uint8_t *data, size_t size, fz_part *parts, int max) {
    int k = 0;
    size_t start = 0;
    for (size_t i = 0; i + FZ_SEP_LEN <= size && k < max - 1; i++)
        if (!memcmp(data + i, FZ_SEP, FZ_SEP_LEN)) {
            parts[k++] = (fz_part){data + start, i - start};
            start = i + FZ_SEP_LEN;
            i = start - 1;
        }
    parts[k++] = (fz_part){data + start, size - start};
    return k;
}

static char fz_dir_path[256];

static inline void fz_cleanup(void) {
    if (!fz_dir_path[0]) return;
    DIR *d = opendir(fz_dir_path);
    if (d) {
        struct dirent *e;
        char p[600];
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
            snprintf(p, sizeof p, "%s/%s", fz_dir_path, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(fz_dir_path);
}

/* The harness's private directory (created on first use, removed at exit). */
static inline const char *fz_dir(void) {
    if (!fz_dir_path[0]) {
        snprintf(fz_dir_path, sizeof fz_dir_path, "%s/lt-fuzz-XXXXXX",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(fz_dir_path)) abort();
        atexit(fz_cleanup);
    }
    return fz_dir_path;
}

/* Write part (or remove the file when part is NULL) as dir/name. */
static inline void fz_put(const char *name, const fz_part *part) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", fz_dir(), name);
    if (!part) {
        unlink(p);
        return;
    }
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (part->n && fwrite(part->p, 1, part->n, f) != part->n) abort();
    fclose(f);
}

/* Write the parts as the named files; an empty part, or a name beyond the parts, is an absent file. */
static inline void fz_put_files(const char *const *names, int n_names, const fz_part *parts, int n_parts) {
    for (int i = 0; i < n_names; i++) fz_put(names[i], i < n_parts && parts[i].n ? &parts[i] : NULL);
}

/* A NUL-terminated malloc'd copy of a part. */
static inline char *fz_str(const fz_part *part) {
    char *s = malloc(part->n + 1);
    if (!s) abort();
    memcpy(s, part->p, part->n);
    s[part->n] = 0;
    return s;
}

/* LT_FUZZ_VERBOSE=1: say what the parser answered (to check that the seeds are accepted). */
static inline lt_status fz_note(const char *what, lt_status st, const char *msg) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("LT_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "%s: %s%s%s\n", what, lt_status_string(st), st ? ": " : "", st ? msg : "");
    return st;
}

/* A one-thread CPU context, silent. */
static inline lt_context *fz_context(void) {
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    cp.n_threads = 1;
    lt_context *ctx = NULL;
    if (lt_context_create(&cp, &ctx) != LT_OK) abort();
    return ctx;
}

/* The small Llama model the adapter and checkpoint harnesses load against (and make_seeds saves). */
static const char fz_model_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 48,"
    " \"hidden_size\": 16, \"intermediate_size\": 24, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"rope_theta\": 10000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 64, \"tie_word_embeddings\": false,"
    " \"bos_token_id\": 1, \"eos_token_id\": 2}";

/* A loaded model's loss on a fixed 1 x 6 batch: runs the forward over whatever the parser accepted. */
static inline void fz_forward(lt_model *m, const lt_adapter *a) {
    lt_model_info info = {.size = sizeof info};
    if (lt_model_get_info(m, &info) != LT_OK || info.vocab_size < 1) return;
    /* bounded: a model whose file is large enough to hold big weights is still run once, on 6 tokens */
    if (info.n_params > (1 << 22)) return;
    int32_t ids[6];
    for (int i = 0; i < 6; i++) ids[i] = (int32_t)((i * 7 + 1) % info.vocab_size);
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = 1;
    b.seq_len = 6;
    b.input_ids = ids;
    b.labels = ids;
    double loss;
    int64_t n;
    (void)lt_model_loss(m, a, &b, &loss, &n);
}

#endif
