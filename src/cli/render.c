/* render.c - `loratune render`: a chat rendered with the tokenizer's chat template. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int cmd_render(int argc, char **argv) {
    static const opt_spec spec[] = {{"tokenizer", 1}, {"messages", 1}, {"add-generation-prompt", 0}, {"ids", 0}};
    opts o;
    if (opts_parse(&o, spec, 4, argc, argv, "render")) return 2;
    const char *dir = opt_str(&o, "tokenizer", NULL), *file = opt_str(&o, "messages", NULL);
    if (!dir || !file)
        return fail("render",
                    "--tokenizer DIR and --messages FILE.json (a JSON list of {\"role\", \"content\"}) are required");
    lt_tokenizer *t = open_tokenizer("render", dir);
    if (!t) return 1;
    size_t n;
    char *msgs = read_all(file, &n);
    int rc = 0, agp = opt_flag(&o, "add-generation-prompt");
    if (!msgs) {
        lt_tokenizer_free(t);
        return fail("render", "%s: cannot read", file);
    }
    if (opt_flag(&o, "ids")) { /* {"ids": [...], "assistant_mask": [...]} */
        size_t k = 0;
        lt_status st = lt_tokenizer_encode_chat(t, msgs, agp, NULL, NULL, 0, &k);
        int32_t *ids = malloc((k + 1) * sizeof *ids), *mask = malloc((k + 1) * sizeof *mask);
        if (st == LT_OK) st = lt_tokenizer_encode_chat(t, msgs, agp, ids, mask, k, &k);
        if (st != LT_OK) rc = fail("render", "%s: %s", file, lt_tokenizer_last_error(t));
        else {
            printf("{\"ids\": [");
            for (size_t i = 0; i < k; i++) printf(i ? ", %d" : "%d", ids[i]);
            printf("], \"assistant_mask\": [");
            for (size_t i = 0; i < k; i++) printf(i ? ", %d" : "%d", mask[i]);
            printf("]}\n");
        }
        free(ids);
        free(mask);
    } else {
        const char *text;
        size_t len;
        if (lt_tokenizer_render_chat(t, msgs, agp, &text, &len) != LT_OK)
            rc = fail("render", "%s: %s", file, lt_tokenizer_last_error(t));
        else fwrite(text, 1, len, stdout);
    }
    free(msgs);
    lt_tokenizer_free(t);
    return rc;
}
