/*
 * chat_template.c - chat templates as transformers' apply_chat_template uses them: the variables a template
 * sees (messages normalised as transformers does, tools, documents, special tokens, extra keyword
 * arguments), rendering through the Jinja engine (jinja.c), and the assistant mask of a conversation
 * ({% generation %} blocks, else what each assistant message adds to the rendering).
 */
#include <stdlib.h>
#include <string.h>

#include "text/chat_template.h"
#include "text/jinja.h"

/* ---- chat API ----------------------------------------------------------------------------------- */

/* The variables transformers gives a chat template: messages (keys whose value is None dropped, the
 * reasoning fields aliased, as apply_chat_template normalises them), tools and documents (None unless
 * given), add_generation_prompt, the special tokens of tokenizer_config.json, and any other variable of
 * doc (an object {"messages": [...], "tools": [...], ...}: apply_chat_template's keyword arguments). */
static json_t *normalize_messages(json_t *messages) {
    static const char *reasoning[] = {"reasoning_content", "thinking", "reasoning"};
    json_t *out = json_array(), *m;
    size_t i;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m)) {
            json_array_append(out, m);
            continue;
        }
        json_t *c = json_object(), *v, *r = NULL;
        const char *k;
        for (int q = 0; q < 3 && !r; q++) {
            json_t *x = json_object_get(m, reasoning[q]);
            if (x && !json_is_null(x)) r = x;
        }
        if (r) json_object_set(c, "thinking", r); /* {"thinking": r, **message, "reasoning_content": r} */
        json_object_foreach(m, k, v) if (!json_is_null(v)) json_object_set(c, k, v);
        if (r) json_object_set(c, "reasoning_content", r);
        json_array_append_new(out, c);
    }
    return out;
}

static json_t *chat_context(struct lt_tokenizer *t, json_t *doc, int add_generation_prompt) {
    json_t *ctx = json_object();
    static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int i = 0; i < 4; i++) {
        const char *s = lt_tok_special_str(t, names[i]);
        if (*s) json_object_set_new(ctx, names[i], json_string(s));
    }
    json_object_set_new(ctx, "tools", json_null());
    json_object_set_new(ctx, "documents", json_null());
    if (json_is_object(doc)) json_object_update(ctx, doc);
    json_object_set_new(ctx, "messages",
                        normalize_messages(json_is_object(doc) ? json_object_get(doc, "messages") : doc));
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    return ctx;
}

static lt_status render_once(struct lt_tokenizer *t, json_t *doc, int agp, lt_buf *text, lt_buf *mask) {
    json_t *ctx = chat_context(t, doc, agp);
    text->n = 0;
    if (mask) mask->n = 0;
    const char *tmpl = lt_tok_chat_template(t);
    lt_status st = lt_jinja_render(tmpl, strlen(tmpl), ctx, text, mask, lt_tok_error(t), NULL, NULL);
    json_decref(ctx);
    return st;
}

/* doc with its messages replaced by the first n of them */
static json_t *doc_prefix(json_t *doc, json_t *messages, size_t n) {
    json_t *m = json_array();
    for (size_t k = 0; k < n; k++) json_array_append(m, json_array_get(messages, k));
    if (!json_is_object(doc)) return m;
    json_t *d = json_copy(doc);
    json_object_set_new(d, "messages", m);
    return d;
}

lt_status lt_tok_render(struct lt_tokenizer *t, json_t *doc, int add_generation_prompt, lt_buf *text, lt_buf *mask) {
    lt_error *err = lt_tok_error(t);
    const char *tmpl = lt_tok_chat_template(t);
    if (!tmpl) return lt_fail(err, LT_ERR_MISSING, "the tokenizer has no chat_template (tokenizer_config.json)");
    json_t *messages = json_is_object(doc) ? json_object_get(doc, "messages") : doc;
    if (!json_is_array(messages))
        return lt_fail(err, LT_ERR_DATA, "messages must be a JSON array (or an object with a \"messages\" array)");
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role")))
            return lt_fail(err, LT_ERR_DATA, "messages[%zu] must be an object with a string \"role\"", i);
    }
    lt_status st = render_once(t, doc, add_generation_prompt, text, mask);
    if (st || !mask || strstr(tmpl, "endgeneration")) return st;
    /* No generation blocks: an assistant message's text is what it adds to the rendering of the
     * conversation before it with the generation prompt. */
    memset(mask->p, 0, mask->n);
    lt_buf pre = {0}, upto = {0};
    json_array_foreach(messages, i, m) {
        if (strcmp(json_string_value(json_object_get(m, "role")), "assistant")) continue;
        json_t *a = doc_prefix(doc, messages, i), *b = doc_prefix(doc, messages, i + 1);
        st = render_once(t, a, 1, &pre, NULL);
        if (!st) st = render_once(t, b, 0, &upto, NULL);
        json_decref(a);
        json_decref(b);
        if (st) break;
        if (pre.n > upto.n || memcmp(pre.p, upto.p, pre.n) || upto.n > text->n || memcmp(upto.p, text->p, upto.n)) {
            st = lt_fail(err, LT_ERR_UNSUPPORTED,
                         "assistant mask: the template renders messages[%zu] differently in a "
                         "shorter conversation; use a template with {%% generation %%} blocks",
                         i);
            break;
        }
        memset(mask->p + pre.n, 1, upto.n - pre.n);
    }
    free(pre.p);
    free(upto.p);
    return st;
}

lt_status lt_tok_align_mask(struct lt_tokenizer *t, const char *text, size_t n, const char *bytemask,
                            const int32_t *ids, size_t n_ids, int32_t *tokmask) {
    lt_buf b = {0};
    size_t pos = 0;
    lt_status st = LT_OK;
    for (size_t i = 0; i < n_ids && !st; i++) {
        b.n = 0;
        if ((st = lt_tok_token_bytes(t, ids[i], &b))) break;
        size_t s = pos, e;
        if (b.n && pos + b.n <= n && !memcmp(text + pos, b.p, b.n)) e = pos + b.n;
        else if (b.n && b.p[0] == ' ' && pos + b.n - 1 <= n && !memcmp(text + pos, b.p + 1, b.n - 1))
            e = pos + b.n - 1; /* prepended ▁ */
        else if (b.n == 0) e = pos;
        else {
            /* characters the vocabulary cannot encode were dropped, or the normalizer changed a few:
             * resynchronise on the token's bytes a little further on; an unknown token (<unk>) covers
             * nothing and takes the mask of where it stands */
            size_t win = n - pos < 64 ? n - pos : 64;
            const char *q = memmem(text + pos, win, b.p, b.n);
            if (q) {
                s = (size_t)(q - text);
                e = s + b.n;
            } else {
                e = pos;
                tokmask[i] = pos < n ? bytemask[pos] != 0 : 0;
                continue;
            }
        }
        int hit = 0;
        for (size_t k = s; k < e; k++) hit |= bytemask[k] != 0;
        tokmask[i] = hit;
        pos = e;
    }
    free(b.p);
    return st;
}

LT_API lt_status lt_tokenizer_render_chat(lt_tokenizer *t, const char *messages_json, int add_generation_prompt,
                                          const char **text, size_t *len) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error *err = lt_tok_error(t);
    lt_error_clear(err);
    if (!messages_json || !text) return lt_fail(err, LT_ERR_ARGUMENT, "lt_tokenizer_render_chat: NULL argument");
    json_error_t je;
    json_t *msgs = json_loads(messages_json, 0, &je);
    if (!msgs) return lt_fail(err, LT_ERR_JSON, "messages: %s", je.text);
    lt_buf *out = lt_tok_text_buf(t);
    lt_status st = lt_tok_render(t, msgs, add_generation_prompt, out, NULL);
    json_decref(msgs);
    if (st) return st;
    *text = out->p;
    if (len) *len = out->n;
    return LT_OK;
}

LT_API lt_status lt_tokenizer_encode_chat(lt_tokenizer *t, const char *messages_json, int add_generation_prompt,
                                          int32_t *ids, int32_t *mask, size_t capacity, size_t *n_ids) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error *err = lt_tok_error(t);
    lt_error_clear(err);
    if (!messages_json || !n_ids) return lt_fail(err, LT_ERR_ARGUMENT, "lt_tokenizer_encode_chat: NULL argument");
    json_error_t je;
    json_t *msgs = json_loads(messages_json, 0, &je);
    if (!msgs) return lt_fail(err, LT_ERR_JSON, "messages: %s", je.text);
    lt_buf text = {0}, bmask = {0};
    lt_ivec v = {0};
    int32_t *tm = NULL;
    /* the assistant mask only when asked for (a template may render a conversation that no mask fits) */
    lt_status st = lt_tok_render(t, msgs, add_generation_prompt, &text, mask ? &bmask : NULL);
    json_decref(msgs);
    if (!st) st = lt_tok_encode_into(t, text.p, text.n, 0, &v);
    if (!st && mask && !(tm = malloc((v.n + 1) * sizeof *tm))) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    if (!st && mask) st = lt_tok_align_mask(t, text.p, text.n, bmask.p, v.p, v.n, tm);
    if (!st) {
        *n_ids = v.n;
        if (v.n > capacity) {
            if (ids || mask)
                st = lt_fail(err, LT_ERR_SHAPE, "%zu token ids do not fit in a buffer of %zu", v.n, capacity);
        } else {
            if (ids && v.n) memcpy(ids, v.p, v.n * sizeof *ids);
            if (mask && v.n) memcpy(mask, tm, v.n * sizeof *mask);
        }
    }
    free(text.p);
    free(bmask.p);
    free(v.p);
    free(tm);
    return st;
}
