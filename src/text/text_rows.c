/*
 * text_rows.c - one JSONL dataset row -> input ids + labels, as TRL's SFTTrainer prepares them:
 *   {"text"}                          labels = ids (BOS from the post-processor, EOS appended)
 *   {"prompt","completion"}           prompt and prompt+completion tokenized; completion-only loss masks
 *                                     their common prefix. Strings (EOS appended to the completion), or message lists
 *                                     (rendered with the chat template, the prompt with the generation prompt)
 *   {"messages"}                      chat template; assistant-only loss from the assistant mask
 *   {"prompt","chosen","rejected"}    SFT on prompt + chosen (the preferred answer)
 *   {"prompt","completion","label"}   label false: nothing to learn (every label -100)
 */
#include <stdlib.h>
#include <string.h>

#include "text/chat_template.h"

static const lt_text_params k_defaults = {
    .size = sizeof(lt_text_params),
    .max_len = 0,
    .completion_only = 1,
    .assistant_only = 1,
    .add_special = 1,
    .add_eos = 1,
};

LT_API void lt_text_params_init(lt_text_params *p, size_t size) {
    if (p) lt_fill_struct(p, size, &k_defaults, sizeof k_defaults);
}

/* text + EOS (when asked and not already there) */
static lt_status with_eos(lt_tokenizer *t, const char *s, size_t n, int add_eos, lt_buf *out) {
    const char *eos = lt_tok_special_str(t, "eos_token");
    size_t en = strlen(eos);
    if (lt_buf_put(out, s, n)) return LT_ERR_NOMEM;
    if (add_eos && en && !(n >= en && !memcmp(s + n - en, eos, en)) && lt_buf_put(out, eos, en)) return LT_ERR_NOMEM;
    if (!out->p) lt_buf_puts(out, "");
    return LT_OK;
}

/* prompt/completion pair: strings or message lists */
static lt_status encode_pair(lt_tokenizer *t, json_t *prompt, json_t *completion, const lt_text_params *p, lt_ivec *ids,
                             lt_ivec *labels) {
    lt_error *err = lt_tok_error(t);
    lt_ivec pids = {0};
    lt_status st = LT_OK;
    if (json_is_string(prompt) && json_is_string(completion)) {
        lt_buf full = {0};
        st = lt_tok_encode_into(t, json_string_value(prompt), json_string_length(prompt), p->add_special, &pids);
        if (!st && (lt_buf_put(&full, json_string_value(prompt), json_string_length(prompt)) ||
                    with_eos(t, json_string_value(completion), json_string_length(completion), p->add_eos, &full)))
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        if (!st) st = lt_tok_encode_into(t, full.p, full.n, p->add_special, ids);
        free(full.p);
    } else if (json_is_array(prompt) && json_is_array(completion)) {
        lt_buf text = {0};
        json_t *all = json_array();
        json_array_extend(all, prompt);
        json_array_extend(all, completion);
        st = lt_tok_render(t, prompt, 1, &text, NULL);
        if (!st) st = lt_tok_encode_into(t, text.p, text.n, 0, &pids);
        if (!st) st = lt_tok_render(t, all, 0, &text, NULL);
        if (!st) st = lt_tok_encode_into(t, text.p, text.n, 0, ids);
        json_decref(all);
        free(text.p);
    } else st = lt_fail(err, LT_ERR_DATA, "\"prompt\" and the answer must both be strings or both be message lists");
    /* the completion starts where the prompt's ids and the whole row's ids diverge (TRL's
     * common_prefix_length): tokens can merge across the boundary */
    size_t plen = 0;
    while (!st && plen < pids.n && plen < ids->n && pids.p[plen] == ids->p[plen]) plen++;
    if (!st && p->completion_only && (plen >= ids->n || ids->n < 2))
        st = lt_fail(err, LT_ERR_DATA, "nothing to learn: the completion adds no token to the prompt%s",
                     json_is_array(prompt) ? " (the chat template renders none of its text)" : "");
    for (size_t i = 0; !st && i < ids->n; i++)
        if (lt_ivec_push(labels, p->completion_only && i < plen ? -100 : ids->p[i]))
            st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    free(pids.p);
    return st;
}

/* An assistant-only row whose mask is empty would train on nothing (TRL does so silently): an error that
 * says why. */
static lt_status empty_mask(lt_tokenizer *t, json_t *msgs) {
    size_t i;
    json_t *m;
    int has_assistant = 0;
    json_array_foreach(msgs, i, m) has_assistant |= json_is_string(json_object_get(m, "role")) &&
                                                    !strcmp(json_string_value(json_object_get(m, "role")), "assistant");
    if (!has_assistant)
        return lt_fail(lt_tok_error(t), LT_ERR_DATA,
                       "nothing to learn: the conversation has no assistant message (assistant-only loss)");
    return lt_fail(lt_tok_error(t), LT_ERR_DATA, "nothing to learn: the assistant mask is empty: the chat template %s",
                   strstr(lt_tok_chat_template(t), "endgeneration")
                       ? "has {% generation %} blocks but none of them rendered this row's assistant text"
                       : "renders no text for this row's assistant messages");
}

static lt_status encode_row(lt_tokenizer *t, json_t *row, const lt_text_params *p, lt_ivec *ids, lt_ivec *labels) {
    lt_error *err = lt_tok_error(t);
    json_t *text = json_object_get(row, "text"), *msgs = json_object_get(row, "messages"),
           *prompt = json_object_get(row, "prompt"), *completion = json_object_get(row, "completion"),
           *chosen = json_object_get(row, "chosen"), *label = json_object_get(row, "label");
    lt_status st;
    if (json_is_string(text)) {
        lt_buf b = {0};
        if (with_eos(t, json_string_value(text), json_string_length(text), p->add_eos, &b))
            return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        st = lt_tok_encode_into(t, b.p, b.n, p->add_special, ids);
        free(b.p);
        for (size_t i = 0; !st && i < ids->n; i++)
            if (lt_ivec_push(labels, ids->p[i])) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        return st;
    }
    if (msgs) {
        if (!json_is_array(msgs))
            return lt_fail(err, LT_ERR_DATA, "\"messages\" must be a list of {\"role\", \"content\"} objects");
        lt_buf txt = {0}, mask = {0};
        int32_t *tm = NULL;
        st = lt_tok_render(t, msgs, 0, &txt, &mask);
        if (!st) st = lt_tok_encode_into(t, txt.p, txt.n, 0, ids);
        if (!st && !(tm = malloc((ids->n + 1) * sizeof *tm))) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        if (!st) st = lt_tok_align_mask(t, txt.p, txt.n, mask.p, ids->p, ids->n, tm);
        int learn = 0;
        for (size_t i = 0; !st && i < ids->n; i++) {
            if (lt_ivec_push(labels, p->assistant_only && !tm[i] ? -100 : ids->p[i]))
                st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
            learn |= i > 0 && (!p->assistant_only || tm[i]); /* position 0 is never predicted */
        }
        free(txt.p);
        free(mask.p);
        free(tm);
        if (!st && !learn) st = empty_mask(t, msgs);
        return st;
    }
    if (prompt && completion) {
        if (label && !json_is_boolean(label)) return lt_fail(err, LT_ERR_DATA, "\"label\" must be true or false");
        st = encode_pair(t, prompt, completion, p, ids, labels);
        if (!st && label && json_is_false(label))
            for (size_t i = 0; i < labels->n; i++) labels->p[i] = -100; /* an undesirable answer: nothing to imitate */
        return st;
    }
    if (prompt && chosen) return encode_pair(t, prompt, chosen, p, ids, labels);
    return lt_fail(err, LT_ERR_DATA,
                   "the row has none of the dataset shapes {\"text\"}, {\"messages\"}, {\"prompt\", \"completion\"[, "
                   "\"label\"]}, {\"prompt\", \"chosen\", \"rejected\"}");
}

LT_API lt_status lt_tokenizer_encode_row(lt_tokenizer *t, const char *row_json, const lt_text_params *params,
                                         int32_t *ids, int32_t *labels, size_t capacity, size_t *n) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error *err = lt_tok_error(t);
    lt_error_clear(err);
    if (!row_json || !n) return lt_fail(err, LT_ERR_ARGUMENT, "lt_tokenizer_encode_row: NULL argument");
    lt_text_params p = k_defaults;
    if (params) {
        if (params->size < sizeof(size_t))
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_text_params: size not set (use lt_text_params_init)");
        memcpy(&p, params, params->size < sizeof p ? params->size : sizeof p);
    }
    if (p.max_len < 0) return lt_fail(err, LT_ERR_ARGUMENT, "lt_text_params.max_len must be >= 0");
    json_error_t je;
    json_t *row = json_loads(row_json, JSON_ALLOW_NUL, &je);
    if (!row) return lt_fail(err, LT_ERR_JSON, "row: %s", je.text);
    if (!json_is_object(row)) {
        json_decref(row);
        return lt_fail(err, LT_ERR_DATA, "a row must be a JSON object");
    }
    lt_ivec vi = {0}, vl = {0};
    lt_status st = encode_row(t, row, &p, &vi, &vl);
    json_decref(row);
    if (!st) {
        size_t m = vi.n;
        if (p.max_len > 0 && m > (size_t)p.max_len) m = (size_t)p.max_len; /* truncation keeps the start */
        *n = m;
        if (m > capacity) {
            if (ids || labels) st = lt_fail(err, LT_ERR_SHAPE, "%zu tokens do not fit in a buffer of %zu", m, capacity);
        } else {
            if (ids && m) memcpy(ids, vi.p, m * sizeof *ids);
            if (labels && m) memcpy(labels, vl.p, m * sizeof *labels);
        }
    }
    free(vi.p);
    free(vl.p);
    return st;
}

/* ---- packing ------------------------------------------------------------------------------------- */

typedef struct pack_item {
    int32_t len;
    int32_t idx;
} pack_item;
static int cmp_pack(const void *a, const void *b) {
    const pack_item *x = a, *y = b;
    return x->len != y->len ? (x->len > y->len ? -1 : 1) : (x->idx > y->idx) - (x->idx < y->idx);
}

LT_API lt_status lt_pack_sequences(const int32_t *ids, const int32_t *labels, const int32_t *lens, int32_t n_seqs,
                                   int32_t seq_len, int32_t pad_id, int32_t *out_ids, int32_t *out_labels,
                                   int32_t *out_pos, int32_t capacity_rows, int32_t *n_rows) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!lens || !n_rows || (n_seqs > 0 && !ids))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_pack_sequences: NULL argument");
    if (n_seqs < 0 || seq_len < 1)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_pack_sequences: n_seqs must be >= 0 and seq_len >= 1");
    if (capacity_rows > 0 && (!out_ids || !out_labels || !out_pos))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_pack_sequences: output arrays are NULL");
    pack_item *it = malloc(((size_t)n_seqs + 1) * sizeof *it);
    int64_t *start = malloc(((size_t)n_seqs + 1) * sizeof *start);
    int32_t *fill = calloc((size_t)n_seqs + 1, sizeof *fill), *row_of = malloc(((size_t)n_seqs + 1) * sizeof *row_of);
    lt_status st = LT_OK;
    if (!it || !start || !fill || !row_of) {
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t off = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        if (lens[i] < 0) {
            st = lt_fail(err, LT_ERR_ARGUMENT, "lt_pack_sequences: lens[%d] = %d is negative", i, lens[i]);
            goto done;
        }
        start[i] = off;
        off += lens[i];
        it[i] = (pack_item){lens[i] < seq_len ? lens[i] : seq_len, i};
    }
    qsort(it, (size_t)n_seqs, sizeof *it, cmp_pack);
    /* best fit: the fullest row with room (linear scan; rows are few next to the tokens they hold) */
    int32_t rows = 0;
    for (int32_t k = 0; k < n_seqs; k++) {
        if (it[k].len == 0) {
            row_of[k] = -1;
            continue;
        }
        int32_t best = -1;
        for (int32_t r = 0; r < rows; r++)
            if (fill[r] + it[k].len <= seq_len && (best < 0 || fill[r] > fill[best])) best = r;
        if (best < 0) best = rows++;
        row_of[k] = best;
        fill[best] += it[k].len;
    }
    *n_rows = rows;
    if (!out_ids && capacity_rows == 0) goto done;
    if (rows > capacity_rows) {
        st = lt_fail(err, LT_ERR_SHAPE, "%d packed rows do not fit in %d", rows, capacity_rows);
        goto done;
    }
    memset(fill, 0, (size_t)(rows + 1) * sizeof *fill);
    for (int32_t k = 0; k < n_seqs; k++) {
        if (row_of[k] < 0) continue;
        int32_t r = row_of[k], len = it[k].len;
        const int32_t *src = ids + start[it[k].idx], *lab = (labels ? labels : ids) + start[it[k].idx];
        for (int32_t t = 0; t < len; t++) {
            size_t o = (size_t)r * seq_len + fill[r] + t;
            out_ids[o] = src[t];
            out_labels[o] = t == 0 ? -100 : lab[t];
            out_pos[o] = t;
        }
        fill[r] += len;
    }
    for (int32_t r = 0; r < rows; r++)
        for (int32_t t = fill[r]; t < seq_len; t++) {
            size_t o = (size_t)r * seq_len + t;
            out_ids[o] = pad_id;
            out_labels[o] = -100;
            out_pos[o] = t - fill[r];
        }
done:
    free(it);
    free(start);
    free(fill);
    free(row_of);
    return st;
}
