/* chat.c - `loratune chat`: an interactive conversation with a model (and an adapter) in its chat template.
 * Each line is a user message; the reply streams as it is generated and joins the history. Commands:
 * /system TEXT (set the system prompt), /reset (forget the conversation, keep the system prompt),
 * /history (the conversation as JSON), /quit. The prompt "> " is shown when stdin is a terminal. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/textgen.h"

static void set_system(json_t *msgs, const char *text) {
    json_t *first = json_array_get(msgs, 0);
    if (first && !strcmp(json_string_value(json_object_get(first, "role")), "system")) json_array_remove(msgs, 0);
    if (text && *text) json_array_insert_new(msgs, 0, json_pack("{s:s,s:s}", "role", "system", "content", text));
}

int cmd_chat(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"adapter", 1},        {"tokenizer", 1},   {"system", 1},
                                    {"stop", 1},  {"max-new-tokens", 1}, {"temperature", 1}, {"top-k", 1},
                                    {"top-p", 1}, {"seed", 1},           {"threads", 1}};
    opts o;
    if (opts_parse(&o, spec, sizeof spec / sizeof *spec, argc, argv, "chat")) return 2;
    const char *mdir = opt_str(&o, "model", NULL);
    if (!mdir) return fail("chat", "--model DIR is required (and --adapter DIR to talk to a fine-tuned model)");
    long long maxnew, topk, seed, threads;
    double temp, topp;
    if (opt_int(&o, "max-new-tokens", 256, 1, 1 << 20, &maxnew) || opt_int(&o, "top-k", 0, 0, 1 << 30, &topk) ||
        opt_int(&o, "seed", 0, 0, 1LL << 62, &seed) || opt_int(&o, "threads", 0, 0, 1024, &threads) ||
        opt_double(&o, "temperature", 0, &temp) || opt_double(&o, "top-p", 1, &topp))
        return 2;
    lt_tokenizer *tok = open_tokenizer("chat", opt_str(&o, "tokenizer", mdir));
    if (!tok) return 1;
    lt_context *ctx;
    lt_model *m;
    if (open_model("chat", mdir, (int)threads, NULL, &ctx, &m)) {
        lt_tokenizer_free(tok);
        return 1;
    }
    lt_adapter *ad = NULL;
    const char *adir = opt_str(&o, "adapter", NULL);
    if (adir && lt_adapter_load(m, adir, &ad) != LT_OK) {
        int rc = fail("chat", "%s", lt_last_error());
        lt_model_free(m);
        lt_context_free(ctx);
        lt_tokenizer_free(tok);
        return rc;
    }
    textgen g = {.model = m, .adapter = ad, .tok = tok, .stream = stdout};
    lt_generate_params_init(&g.gp, sizeof g.gp);
    g.gp.max_new_tokens = (int)maxnew;
    g.gp.temperature = (float)temp;
    g.gp.top_k = (int)topk;
    g.gp.top_p = (float)topp;
    g.gp.seed = (uint64_t)seed;
    g.n_eos = textgen_eos_ids(mdir, tok, g.eos, TEXTGEN_MAX_EOS);
    for (int i = 1; i + 1 < argc && g.n_stops < TEXTGEN_MAX_STOPS; i++)
        if (!strcmp(argv[i], "--stop") && *argv[i + 1]) g.stops[g.n_stops++] = argv[++i];

    int tty = isatty(0);
    json_t *msgs = json_array();
    set_system(msgs, opt_str(&o, "system", NULL));
    if (tty)
        printf("loratune chat: %s%s%s. /system TEXT, /reset, /history, /quit\n", mdir, ad ? " + " : "", ad ? adir : "");
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, turns = 0;
    for (;;) {
        if (tty) {
            printf("> ");
            fflush(stdout);
        }
        ssize_t len = getline(&line, &cap, stdin);
        if (len < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/reset")) {
            json_t *first = json_incref(json_array_get(msgs, 0));
            json_array_clear(msgs);
            if (first && !strcmp(json_string_value(json_object_get(first, "role")), "system"))
                json_array_append(msgs, first);
            json_decref(first);
            printf("(the conversation is reset)\n");
            continue;
        }
        if (!strncmp(line, "/system", 7) && (line[7] == ' ' || !line[7])) {
            set_system(msgs, line[7] ? line + 8 : NULL);
            printf("(system prompt %s)\n", line[7] && line[8] ? "set" : "removed");
            continue;
        }
        if (!strcmp(line, "/history")) {
            char *s = json_dumps(msgs, JSON_INDENT(1));
            printf("%s\n", s);
            free(s);
            continue;
        }
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", line));
        char *doc = json_dumps(msgs, JSON_COMPACT);
        size_t n = 0;
        int32_t *ids = NULL;
        lt_status st = lt_tokenizer_encode_chat(tok, doc, 1, NULL, NULL, 0, &n);
        if (st == LT_OK && !(ids = malloc((n + 1) * sizeof *ids))) st = LT_ERR_NOMEM;
        if (st == LT_OK) st = lt_tokenizer_encode_chat(tok, doc, 1, ids, NULL, n, &n);
        free(doc);
        if (st != LT_OK) { /* the template refuses this conversation: say why, drop the message */
            fail("chat", "%s", lt_tokenizer_last_error(tok));
            json_array_remove(msgs, json_array_size(msgs) - 1);
            free(ids);
            continue;
        }
        textgen_result res;
        if (textgen_run("chat", &g, ids, (int)n, &res)) {
            free(ids);
            rc = 1;
            break;
        }
        printf("\n");
        fflush(stdout);
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "assistant", "content", res.text));
        textgen_result_free(&res);
        free(ids);
        turns++;
    }
    free(line);
    json_decref(msgs);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    lt_tokenizer_free(tok);
    (void)turns;
    return rc;
}
