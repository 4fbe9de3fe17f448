/* jinja_stats.c - the nesting depth and the steps libloratune's Jinja engine takes on templates: the
 * figures behind the limits of src/text/jinja.h (tests/python/check_chat_templates.py --measure).
 * Reads JSON lines {"template": "...", "context": {...}} on stdin; writes one line per input:
 * {"status": 0, "depth": D, "steps": S, "bytes": N, "step_limit": L}. White-box: calls lt_jinja_render directly. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/jinja.h"

int main(void) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t je;
        json_t *in = json_loadb(line, (size_t)n, 0, &je);
        json_t *t = in ? json_object_get(in, "template") : NULL, *ctx = in ? json_object_get(in, "context") : NULL;
        if (!json_is_string(t) || !json_is_object(ctx)) {
            fprintf(stderr, "jinja_stats: bad input line: %s\n", in ? "needs template and context" : je.text);
            return 2;
        }
        lt_buf out = {0};
        lt_error err = {0};
        int depth = 0;
        long steps = 0;
        lt_status st =
            lt_jinja_render(json_string_value(t), json_string_length(t), ctx, &out, NULL, &err, &depth, &steps);
        printf("{\"status\": %d, \"depth\": %d, \"steps\": %ld, \"bytes\": %zu, \"step_limit\": %ld}\n", (int)st, depth,
               steps, out.n, lt_jinja_step_limit(ctx));
        fflush(stdout);
        free(out.p);
        json_decref(in);
    }
    free(line);
    return 0;
}
