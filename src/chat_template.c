#include "tokenizer.h"
lt_status lt_jinja_render(const char *tmpl, json_t *ctx, lt_buf *out, lt_buf *mask, lt_error *err) {
    return lt_fail(err, LT_ERR_UNSUPPORTED, "todo");
}
