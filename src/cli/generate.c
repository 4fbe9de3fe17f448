/* generate.c - `loratune generate`: text in, text out (--prompt, --messages with the chat template), or
 * token ids in, token ids out (--prompt-ids); greedy or sampled. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/textgen.h"

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

/* --prompt-ids "1,2,3;4,5": ids out, one line per prompt */
static int generate_ids(const opts *o, const char *ps, lt_model *m, lt_adapter *ad, const lt_generate_params *gp) {
    int n_prompts = 0, total = 0, rc = 0;
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
    int maxnew = gp->max_new_tokens;
    int32_t *out = malloc((size_t)n_prompts * maxnew * sizeof *out),
            *out_lens = malloc((size_t)n_prompts * sizeof *out_lens);
    if (!out || !out_lens) rc = fail("generate", "out of memory");
    else if (lt_generate(m, ad, all, lens, n_prompts, gp, out, out_lens) != LT_OK)
        rc = fail("generate", "%s", lt_model_last_error(m));
    else {
        for (int b = 0; b < n_prompts; b++) {
            if (opt_flag(o, "json")) printf("{\"prompt\": %d, \"ids\": [", b);
            for (int i = 0; i < out_lens[b]; i++) printf(i ? ",%d" : "%d", out[(size_t)b * maxnew + i]);
            printf(opt_flag(o, "json") ? "]}\n" : "\n");
        }
    }
    free(out);
    free(out_lens);
    free(all);
    free(lens);
    return rc;
}

/* --prompt TEXT / --messages FILE.json: the reply as text, printed as it arrives */
static int generate_text(const opts *o, const char *mdir, lt_model *m, lt_adapter *ad, const lt_generate_params *gp,
                         const char **stops, int n_stops) {
    const char *prompt = opt_str(o, "prompt", NULL), *file = opt_str(o, "messages", NULL);
    const char *tdir = opt_str(o, "tokenizer", mdir);
    lt_tokenizer *tok = open_tokenizer("generate", tdir);
    if (!tok) return 1;
    int rc = 0, json = opt_flag(o, "json");
    size_t n = 0;
    int32_t *ids = NULL;
    lt_status st;
    if (prompt) { /* the tokenizer's own special tokens (BOS), as tokenizer(text) adds them */
        st = lt_tokenizer_encode(tok, prompt, strlen(prompt), 1, NULL, 0, &n);
        if (st == LT_OK && !(ids = malloc((n + 1) * sizeof *ids))) st = LT_ERR_NOMEM;
        if (st == LT_OK) st = lt_tokenizer_encode(tok, prompt, strlen(prompt), 1, ids, n, &n);
    } else { /* apply_chat_template(messages, add_generation_prompt=True): the template's special tokens only */
        size_t len;
        char *doc = read_all(file, &len);
        if (!doc) {
            lt_tokenizer_free(tok);
            return fail("generate", "%s: cannot read", file);
        }
        st = lt_tokenizer_encode_chat(tok, doc, 1, NULL, NULL, 0, &n);
        if (st == LT_OK && !(ids = malloc((n + 1) * sizeof *ids))) st = LT_ERR_NOMEM;
        if (st == LT_OK) st = lt_tokenizer_encode_chat(tok, doc, 1, ids, NULL, n, &n);
        free(doc);
    }
    if (st != LT_OK) rc = fail("generate", "%s: %s", prompt ? "--prompt" : file, lt_tokenizer_last_error(tok));
    else if (n == 0) rc = fail("generate", "the prompt encodes to no token");
    else {
        textgen g = {.model = m, .adapter = ad, .tok = tok, .gp = *gp, .stream = json ? NULL : stdout};
        g.n_eos = opt_flag(o, "no-eos") ? 0 : textgen_eos_ids(mdir, tok, g.eos, TEXTGEN_MAX_EOS);
        for (int i = 0; i < n_stops; i++) g.stops[g.n_stops++] = stops[i];
        textgen_result res;
        rc = textgen_run("generate", &g, ids, (int)n, &res);
        if (!rc && json) {
            json_t *ja = json_array();
            for (int i = 0; i < res.n_ids; i++) json_array_append_new(ja, json_integer(res.ids[i]));
            json_t *j =
                json_pack("{s:s,s:o,s:s,s:i}", "text", res.text, "ids", ja, "stop", res.stop, "prompt_tokens", (int)n);
            char *s = json_dumps(j, JSON_ENSURE_ASCII | JSON_COMPACT);
            printf("%s\n", s);
            free(s);
            json_decref(j);
        } else if (!rc) printf("\n");
        if (!rc) textgen_result_free(&res);
    }
    free(ids);
    lt_tokenizer_free(tok);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1},       {"adapter", 1},   {"prompt-ids", 1}, {"prompt", 1},
                                    {"messages", 1},    {"tokenizer", 1}, {"stop", 1},       {"max-new-tokens", 1},
                                    {"temperature", 1}, {"top-k", 1},     {"top-p", 1},      {"seed", 1},
                                    {"threads", 1},     {"json", 0},      {"no-eos", 0}};
    opts o;
    if (opts_parse(&o, spec, sizeof spec / sizeof *spec, argc, argv, "generate")) return 2;
    const char *stops[TEXTGEN_MAX_STOPS];
    int n_stops = 0;
    for (int i = 1; i + 1 < argc; i++) /* --stop may be given several times */
        if (!strcmp(argv[i], "--stop")) {
            if (n_stops == TEXTGEN_MAX_STOPS) return fail("generate", "at most %d --stop strings", TEXTGEN_MAX_STOPS);
            if (!*argv[i + 1]) return fail("generate", "--stop needs a non-empty string");
            stops[n_stops++] = argv[++i];
        }
    const char *mdir = opt_str(&o, "model", NULL), *ps = opt_str(&o, "prompt-ids", NULL);
    int inputs = (ps != NULL) + (opt_str(&o, "prompt", NULL) != NULL) + (opt_str(&o, "messages", NULL) != NULL);
    if (!mdir || inputs != 1)
        return fail("generate", "--model DIR and one of --prompt TEXT, --messages FILE.json (a chat: a JSON list of "
                                "{\"role\", \"content\"}, or {\"messages\": [...], \"tools\": [...]}) or --prompt-ids "
                                "1,2,3 (several prompts: separate with ';') are required");
    long long maxnew, topk, seed, threads;
    double temp, topp;
    if (opt_int(&o, "max-new-tokens", ps ? 32 : 256, 1, 1 << 20, &maxnew) ||
        opt_int(&o, "top-k", 0, 0, 1 << 30, &topk) || opt_int(&o, "seed", 0, 0, 1LL << 62, &seed) ||
        opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_double(&o, "temperature", 0, &temp) ||
        opt_double(&o, "top-p", 1, &topp))
        return 2;
    lt_context *ctx;
    lt_model *m;
    if (open_model("generate", mdir, (int)threads, NULL, &ctx, &m)) return 1;
    lt_adapter *ad = NULL;
    int rc = 0;
    const char *adir = opt_str(&o, "adapter", NULL);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = (int)maxnew;
    gp.temperature = (float)temp;
    gp.top_k = (int)topk;
    gp.top_p = (float)topp;
    gp.seed = (uint64_t)seed;
    if (opt_flag(&o, "no-eos")) gp.eos_token_id = -1;
    if (adir && lt_adapter_load(m, adir, &ad) != LT_OK) rc = fail("generate", "%s", lt_last_error());
    else if (ps) rc = generate_ids(&o, ps, m, ad, &gp);
    else rc = generate_text(&o, mdir, m, ad, &gp, stops, n_stops);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
