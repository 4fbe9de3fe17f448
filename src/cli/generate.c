/* generate.c - `loratune generate`: token ids in, token ids out (greedy or sampled). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static int parse_ids(const char *s, int32_t **out, int *n) {
    int cap = 16;
    *n = 0;
    *out = malloc(cap * sizeof **out);
    while (*out && *s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX) return -1;
        if (*n == cap && !(*out = realloc(*out, (cap *= 2) * sizeof **out))) return -1;
        (*out)[(*n)++] = (int32_t)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return *out && *n > 0 ? 0 : -1;
}

int cmd_generate(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1},       {"adapter", 1}, {"prompt-ids", 1}, {"max-new-tokens", 1},
                                    {"temperature", 1}, {"top-k", 1},   {"top-p", 1},      {"seed", 1},
                                    {"threads", 1},     {"json", 0},    {"no-eos", 0}};
    opts o;
    if (opts_parse(&o, spec, 11, argc, argv, "generate")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *ps = opt_str(&o, "prompt-ids", NULL);
    if (!mdir || !ps)
        return fail("generate", "--model DIR and --prompt-ids 1,2,3 are required (several prompts: separate with ';')");
    long long maxnew, topk, seed, threads;
    double temp, topp;
    if (opt_int(&o, "max-new-tokens", 32, 1, 1 << 20, &maxnew) || opt_int(&o, "top-k", 0, 0, 1 << 30, &topk) ||
        opt_int(&o, "seed", 0, 0, 1LL << 62, &seed) || opt_int(&o, "threads", 0, 0, 1024, &threads) ||
        opt_double(&o, "temperature", 0, &temp) || opt_double(&o, "top-p", 1, &topp))
        return 2;
    /* prompts: "1,2,3;4,5" */
    int n_prompts = 0, total = 0, *lens_i = NULL;
    int32_t *all = NULL, *lens = NULL;
    char *copy = strdup(ps), *save = NULL;
    for (char *tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
        int32_t *ids;
        int n;
        if (parse_ids(tok, &ids, &n)) {
            free(copy);
            free(all);
            free(lens);
            return fail("generate", "--prompt-ids: \"%s\" is not a comma-separated list of token ids", tok);
        }
        all = realloc(all, (size_t)(total + n) * sizeof *all);
        lens = realloc(lens, (size_t)(n_prompts + 1) * sizeof *lens);
        memcpy(all + total, ids, (size_t)n * sizeof *ids);
        lens[n_prompts++] = n;
        total += n;
        free(ids);
    }
    free(copy);
    (void)lens_i;
    lt_context *ctx;
    lt_model *m;
    if (open_model("generate", mdir, (int)threads, NULL, &ctx, &m)) {
        free(all);
        free(lens);
        return 1;
    }
    lt_adapter *ad = NULL;
    int rc = 0;
    const char *adir = opt_str(&o, "adapter", NULL);
    int32_t *out = malloc((size_t)n_prompts * maxnew * sizeof *out),
            *out_lens = malloc((size_t)n_prompts * sizeof *out_lens);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = (int)maxnew;
    gp.temperature = (float)temp;
    gp.top_k = (int)topk;
    gp.top_p = (float)topp;
    gp.seed = (uint64_t)seed;
    if (opt_flag(&o, "no-eos")) gp.eos_token_id = -1;
    if (adir && lt_adapter_load(m, adir, &ad) != LT_OK) rc = fail("generate", "%s", lt_last_error());
    else if (!out || !out_lens) rc = fail("generate", "out of memory");
    else if (lt_generate(m, ad, all, lens, n_prompts, &gp, out, out_lens) != LT_OK)
        rc = fail("generate", "%s", lt_model_last_error(m));
    else {
        for (int b = 0; b < n_prompts; b++) {
            if (opt_flag(&o, "json")) printf("{\"prompt\": %d, \"ids\": [", b);
            for (int i = 0; i < out_lens[b]; i++) printf(i ? ",%d" : "%d", out[(size_t)b * maxnew + i]);
            printf(opt_flag(&o, "json") ? "]}\n" : "\n");
        }
    }
    free(out);
    free(out_lens);
    free(all);
    free(lens);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
