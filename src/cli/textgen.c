/* textgen.c - token ids in, text out as it arrives (generate --prompt / --messages, chat).
 *
 * The public generation API (lt_generate) returns a finished row of ids and stops at one EOS id. A reply
 * here is generated in chunks of 1, 2, 4, ... 32 tokens, each chunk a call of lt_generate on the prompt and
 * the reply so far, so text reaches the terminal while the reply grows and any of the model's EOS ids or a
 * stop string ends it within the chunk it appears in (no token after it is kept). Greedy decoding gives the
 * ids one long call gives; sampling draws each chunk with seed + reply length (deterministic for a seed).
 * Each chunk re-reads the conversation (no KV cache kept between calls): a callback per token in
 * lt_generate_params would remove that cost.
 *
 * Text is decoded from all the reply's ids each time (lt_tokenizer_decode, special tokens skipped) and
 * printed from where the last print ended, holding back a trailing U+FFFD (a UTF-8 character whose bytes
 * are split across tokens: it is never printed half) and any ending that could be the start of a stop
 * string (a stop string is never printed, even partly).
 */
#include "cli/textgen.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static void add_eos(int32_t *eos, int *n, int cap, long long id) {
    if (id < 0 || id > INT32_MAX) return;
    for (int i = 0; i < *n; i++)
        if (eos[i] == (int32_t)id) return;
    if (*n < cap) eos[(*n)++] = (int32_t)id;
}

/* eos_token_id of a JSON file: an int or a list; 1 if the file gave any */
static int eos_from(const char *dir, const char *file, int32_t *eos, int *n, int cap) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_t *j = json_load_file(path, 0, NULL), *e = j ? json_object_get(j, "eos_token_id") : NULL;
    int before = *n;
    if (json_is_integer(e)) add_eos(eos, n, cap, json_integer_value(e));
    else if (json_is_array(e)) {
        size_t i;
        json_t *x;
        json_array_foreach(e, i, x) if (json_is_integer(x)) add_eos(eos, n, cap, json_integer_value(x));
    }
    json_decref(j);
    return *n > before;
}

int textgen_eos_ids(const char *model_dir, lt_tokenizer *tok, int32_t *eos, int cap) {
    int n = 0;
    /* transformers' generate stops at generation_config.eos_token_id, which from_pretrained takes from
     * generation_config.json, else from config.json */
    if (!eos_from(model_dir, "generation_config.json", eos, &n, cap)) eos_from(model_dir, "config.json", eos, &n, cap);
    if (tok) add_eos(eos, &n, cap, lt_tokenizer_special_id(tok, LT_SPECIAL_EOS));
    return n;
}

void textgen_result_free(textgen_result *res) {
    free(res->text);
    free(res->ids);
    memset(res, 0, sizeof *res);
}

/* bytes of text that may be printed now: not a trailing U+FFFD, not a possible start of a stop string */
static size_t printable(const textgen *g, const char *t, size_t n) {
    while (n >= 3 && !memcmp(t + n - 3, "\xEF\xBF\xBD", 3)) n -= 3;
    size_t hold = 0;
    for (int s = 0; s < g->n_stops; s++) {
        size_t sl = strlen(g->stops[s]);
        for (size_t k = sl > 1 ? sl - 1 : 0; k > hold; k--) /* the longest suffix of t that begins stop s */
            if (k <= n && !memcmp(t + n - k, g->stops[s], k)) {
                hold = k;
                break;
            }
    }
    return n - hold;
}

int textgen_run(const char *cmd, textgen *g, const int32_t *prompt, int n, textgen_result *res) {
    memset(res, 0, sizeof *res);
    const int max_new = g->gp.max_new_tokens;
    int32_t *buf = malloc(((size_t)n + (size_t)max_new + 1) * sizeof *buf), *out = malloc(64 * sizeof *out);
    char *text = NULL;
    size_t text_cap = 0, text_len = 0, printed = 0;
    int rc = 0, gen = 0, chunk = 1, stopped = 0;
    if (!buf || !out) {
        free(buf);
        free(out);
        return fail(cmd, "out of memory");
    }
    memcpy(buf, prompt, (size_t)n * sizeof *buf);
    res->stop = "length";
    while (gen < max_new && !stopped) {
        lt_generate_params p = g->gp;
        p.max_new_tokens = chunk < max_new - gen ? chunk : max_new - gen;
        p.eos_token_id = g->n_eos ? g->eos[0] : -1; /* the others are checked here */
        p.seed = g->gp.seed + (uint64_t)gen;
        int32_t len = n + gen, got = 0;
        if (lt_generate(g->model, g->adapter, buf, &len, 1, &p, out, &got) != LT_OK) {
            rc = fail(cmd, "%s", lt_model_last_error(g->model));
            break;
        }
        for (int i = 0; i < got && !stopped; i++) {
            buf[n + gen++] = out[i];
            for (int e = 0; e < g->n_eos; e++)
                if (out[i] == g->eos[e]) {
                    stopped = 1;
                    res->stop = "eos";
                }
            /* the reply's text without the EOS */
            size_t need = 0;
            int nt = gen - (stopped ? 1 : 0);
            if (lt_tokenizer_decode(g->tok, buf + n, (size_t)nt, 1, NULL, 0, &need) != LT_OK) {
                rc = fail(cmd, "%s", lt_tokenizer_last_error(g->tok));
                stopped = 1;
                break;
            }
            if (need + 1 > text_cap) {
                text_cap = 2 * (need + 1);
                char *nt2 = realloc(text, text_cap);
                if (!nt2) {
                    rc = fail(cmd, "out of memory");
                    stopped = 1;
                    break;
                }
                text = nt2;
            }
            if (lt_tokenizer_decode(g->tok, buf + n, (size_t)nt, 1, text, text_cap, &text_len) != LT_OK) {
                rc = fail(cmd, "%s", lt_tokenizer_last_error(g->tok));
                stopped = 1;
                break;
            }
            /* a stop string ends the reply where it begins */
            for (int s = 0; s < g->n_stops; s++) {
                const char *hit = strstr(text, g->stops[s]);
                if (hit && (size_t)(hit - text) < text_len) {
                    text_len = (size_t)(hit - text);
                    text[text_len] = 0;
                    stopped = 1;
                    res->stop = "stop";
                }
            }
            size_t upto = stopped ? text_len : printable(g, text, text_len);
            if (g->stream && upto > printed) {
                fwrite(text + printed, 1, upto - printed, g->stream);
                fflush(g->stream);
                printed = upto;
            }
        }
        if (chunk < 32) chunk *= 2;
    }
    if (!rc && g->stream && text_len > printed) { /* the end of a reply that ran out of tokens */
        fwrite(text + printed, 1, text_len - printed, g->stream);
        fflush(g->stream);
    }
    free(out);
    if (rc) {
        free(buf);
        free(text);
        return rc;
    }
    res->text = text ? text : strdup("");
    res->n_ids = gen;
    res->ids = malloc(((size_t)gen + 1) * sizeof *res->ids);
    if (res->ids) memcpy(res->ids, buf + n, (size_t)gen * sizeof *res->ids);
    free(buf);
    if (!res->text || !res->ids) {
        textgen_result_free(res);
        return fail(cmd, "out of memory");
    }
    return 0;
}
