/*
 * oracle.c - llama.cpp itself as the oracle of our GGUF files (tests/python/crosscheck_gguf.py).
 * Built against the pinned llama.cpp by tools/llamacpp.sh (not by the project's CMake: it links libllama).
 *
 *   lt-llama-oracle MODEL.gguf [--lora ADAPTER.gguf] [--ctx N] [--ids 1,2,3 --logits-out FILE]
 *                   [--tokenize-file TEXT_FILE] [--prompt-file TEXT_FILE --max-new N]
 *
 * Loads the model (and the adapter at scale 1, as llama-cli --lora does), then:
 *   --ids/--logits-out  one batch of those token ids, the logits of every position written to FILE as
 *                       T * n_vocab little-endian f32 (f32 KV cache, no flash attention: nothing rounded
 *                       to f16 on the way);
 *   --tokenize-file     llama.cpp's tokenization of the file's text (special tokens parsed, none added);
 *   --prompt-file       greedy generation from that text (tokenized the same way) until an end-of-generation
 *                       token (llama_vocab_is_eog) or N new tokens.
 * Prints one JSON object: n_vocab, eos, eot, tokenized, prompt_ids, generated, stopped ("eog" | "length").
 * Exit status 0, or 1 with a message on stderr (a model or adapter llama.cpp refuses, a failed decode).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llama.h>

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static char *read_text(const char *path, int *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    if (s) s[n] = 0;
    *len = (int)n;
    return s;
}

static int tokenize(const struct llama_vocab *vocab, const char *text, int len, llama_token *out, int cap) {
    return llama_tokenize(vocab, text, len, out, cap, /*add_special*/ false, /*parse_special*/ true);
}

static void print_ids(const char *key, const llama_token *ids, int n) {
    printf("\"%s\": [", key);
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    printf("]");
}

/* decode ids[0..n) at positions pos0.. in one batch; logits for all of them or only the last */
static int decode(struct llama_context *ctx, const llama_token *ids, int n, int pos0, int all_logits) {
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = pos0 + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i == n - 1;
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *lora = NULL, *ids_arg = NULL, *logits_out = NULL, *tok_file = NULL,
               *prompt_file = NULL;
    int n_ctx = 64, max_new = 16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--lora") && v) lora = argv[++i];
        else if (!strcmp(a, "--ctx") && v) n_ctx = atoi(argv[++i]);
        else if (!strcmp(a, "--ids") && v) ids_arg = argv[++i];
        else if (!strcmp(a, "--logits-out") && v) logits_out = argv[++i];
        else if (!strcmp(a, "--tokenize-file") && v) tok_file = argv[++i];
        else if (!strcmp(a, "--prompt-file") && v) prompt_file = argv[++i];
        else if (!strcmp(a, "--max-new") && v) max_new = atoi(argv[++i]);
        else if (!model_path && a[0] != '-') model_path = a;
        else {
            fprintf(stderr, "lt-llama-oracle: bad argument %s\n", a);
            return 2;
        }
    }
    if (!model_path) {
        fprintf(stderr, "usage: lt-llama-oracle MODEL.gguf [--lora A.gguf] [--ids ... --logits-out F] ...\n");
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) {
        fprintf(stderr, "lt-llama-oracle: llama.cpp could not load %s\n", model_path);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = cp.n_ubatch = (uint32_t)n_ctx;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "lt-llama-oracle: could not create a context\n");
        return 1;
    }
    if (lora) {
        struct llama_adapter_lora *ad = llama_adapter_lora_init(model, lora);
        float scale = 1.0f;
        if (!ad || llama_set_adapters_lora(ctx, &ad, 1, &scale) != 0) {
            fprintf(stderr, "lt-llama-oracle: llama.cpp could not load the adapter %s\n", lora);
            return 1;
        }
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    printf("{\"n_vocab\": %d, \"eos\": %d, \"eot\": %d", n_vocab, llama_vocab_eos(vocab), llama_vocab_eot(vocab));

    if (ids_arg && logits_out) {
        llama_token ids[4096];
        int n = 0;
        for (const char *p = ids_arg; *p && n < 4096;) {
            ids[n++] = (llama_token)strtol(p, (char **)&p, 10);
            if (*p == ',') p++;
        }
        if (decode(ctx, ids, n, 0, 1) != 0) {
            fprintf(stderr, "lt-llama-oracle: llama_decode failed\n");
            return 1;
        }
        FILE *f = fopen(logits_out, "wb");
        if (!f) return 1;
        for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t)n_vocab, f);
        fclose(f);
        llama_memory_clear(llama_get_memory(ctx), true);
    }
    if (tok_file) {
        int len;
        char *text = read_text(tok_file, &len);
        llama_token ids[4096];
        int n = text ? tokenize(vocab, text, len, ids, 4096) : -1;
        printf(", ");
        print_ids("tokenized", ids, n > 0 ? n : 0);
        free(text);
    }
    if (prompt_file) {
        int len;
        char *text = read_text(prompt_file, &len);
        llama_token ids[4096], gen[4096];
        int n = text ? tokenize(vocab, text, len, ids, 4096) : -1, n_gen = 0, stopped_eog = 0;
        if (n <= 0 || decode(ctx, ids, n, 0, 0) != 0) {
            fprintf(stderr, "lt-llama-oracle: the prompt did not tokenize or decode\n");
            return 1;
        }
        while (n_gen < max_new) {
            const float *lg = llama_get_logits_ith(ctx, -1);
            llama_token best = 0;
            for (int v = 1; v < n_vocab; v++)
                if (lg[v] > lg[best]) best = v;
            gen[n_gen++] = best;
            if (llama_vocab_is_eog(vocab, best)) {
                stopped_eog = 1;
                break;
            }
            if (decode(ctx, &best, 1, n + n_gen - 1, 0) != 0) {
                fprintf(stderr, "lt-llama-oracle: llama_decode failed while generating\n");
                return 1;
            }
        }
        printf(", ");
        print_ids("prompt_ids", ids, n);
        printf(", ");
        print_ids("generated", gen, n_gen);
        printf(", \"stopped\": \"%s\"", stopped_eog ? "eog" : "length");
        free(text);
    }
    printf("}\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
