/*
 * ollama.c - an Ollama Modelfile for an exported GGUF: FROM, ADAPTER, the chat template as a Go template,
 * and PARAMETER stop for the end-of-generation tokens.
 *
 * defines: lt_tokenizer_ollama_modelfile
 *
 * The chat template is not translated statement by statement (Jinja and Go templates differ too much);
 * it is measured. Rendering probe conversations whose contents are unique markers gives the text the
 * template puts before and after each role's content (p_role, s_role), the generation prompt g and a
 * leading BOS. The Go template writes exactly those around each message. It is used only when it
 * reproduces the Jinja rendering of a full probe conversation (system, user, assistant, user +
 * generation prompt) byte for byte; a template with any other shape (the system prompt folded into the
 * first user turn, per-position special cases, ...) is written as comments with a warning, and Ollama
 * then picks its template from the GGUF's tokenizer.chat_template itself (docs/API.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loratune_experimental.h"
#include "text/chat_template.h"

#define MARK "\x01" /* a byte no template writes: content markers are MARK + letter + MARK */

typedef struct wrap {
    lt_buf pre[3], suf[3]; /* system, user, assistant */
    lt_buf gen, bos;
    int has_system;
} wrap;

static const char *const roles[3] = {"system", "user", "assistant"};

/* render [(role, MARK c MARK), ...] */
static lt_status render(lt_tokenizer *t, const char *spec, int agp, lt_buf *out) {
    json_t *msgs = json_array();
    for (const char *s = spec; *s; s++) {
        const int r = *s == 's' ? 0 : *s == 'u' ? 1 : 2;
        char content[8];
        snprintf(content, sizeof content, MARK "%c" MARK, 'A' + (int)(s - spec));
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string(roles[r]));
        json_object_set_new(m, "content", json_string(content));
        json_array_append_new(msgs, m);
    }
    out->n = 0;
    lt_status st = lt_tok_render(t, msgs, agp, out, NULL);
    json_decref(msgs);
    if (st == LT_OK && lt_buf_putc(out, 0)) st = lt_fail(lt_tok_error(t), LT_ERR_NOMEM, "out of memory");
    if (st == LT_OK) out->n--;
    return st;
}

/* the text between marker k-1 (or the start) and marker k (or the end when k == n) */
static int between(const lt_buf *b, int k, int n, lt_buf *out) {
    char m[8];
    const char *start = b->p, *end = b->p + b->n;
    if (k > 0) {
        snprintf(m, sizeof m, MARK "%c" MARK, 'A' + k - 1);
        const char *q = strstr(b->p, m);
        if (!q) return -1;
        start = q + 3;
    }
    if (k < n) {
        snprintf(m, sizeof m, MARK "%c" MARK, 'A' + k);
        const char *q = strstr(b->p, m);
        if (!q || q < start) return -1;
        end = q;
    }
    out->n = 0;
    return lt_buf_put(out, start, (size_t)(end - start)) || lt_buf_putc(out, 0) ? -1 : (out->n--, 0);
}

static int ends_with(const lt_buf *s, const lt_buf *suffix) {
    return s->n >= suffix->n && !memcmp(s->p + s->n - suffix->n, suffix->p, suffix->n);
}

/* measure the wrappers; -1 when the template does not have the per-role shape */
static int measure(lt_tokenizer *t, wrap *w, lt_buf *tmp) {
    const char *bos = lt_tok_special_str(t, "bos_token");
    /* user alone: B + p_user | s_user; with the generation prompt: s_user + g */
    if (render(t, "u", 0, tmp) || between(tmp, 0, 1, &w->pre[1]) || between(tmp, 1, 1, &w->suf[1])) return -1;
    if (bos && *bos && !strncmp(w->pre[1].p, bos, strlen(bos))) { /* a BOS the template writes itself */
        lt_buf_puts(&w->bos, bos);
        memmove(w->pre[1].p, w->pre[1].p + w->bos.n, w->pre[1].n - w->bos.n + 1);
        w->pre[1].n -= w->bos.n;
    }
    lt_buf x = {0};
    int bad = render(t, "u", 1, tmp) || between(tmp, 1, 1, &x) || x.n < w->suf[1].n ||
              memcmp(x.p, w->suf[1].p, w->suf[1].n) || lt_buf_put(&w->gen, x.p + w->suf[1].n, x.n - w->suf[1].n);
    /* user, assistant: s_user + p_assistant | s_assistant */
    bad = bad || render(t, "ua", 0, tmp) || between(tmp, 1, 2, &x) || x.n < w->suf[1].n ||
          memcmp(x.p, w->suf[1].p, w->suf[1].n) || lt_buf_put(&w->pre[2], x.p + w->suf[1].n, x.n - w->suf[1].n) ||
          between(tmp, 2, 2, &w->suf[2]);
    /* system, user: B + p_system | s_system + p_user (a template may refuse a system role: none then) */
    lt_error keep = *lt_tok_error(t);
    if (!bad && render(t, "su", 0, tmp) == LT_OK) {
        lt_buf y = {0};
        w->has_system = 1;
        bad = between(tmp, 0, 2, &y) || y.n < w->bos.n || memcmp(y.p, w->bos.p, w->bos.n) ||
              lt_buf_put(&w->pre[0], y.p + w->bos.n, y.n - w->bos.n) || between(tmp, 1, 2, &y) ||
              !ends_with(&y, &w->pre[1]) || lt_buf_put(&w->suf[0], y.p, y.n - w->pre[1].n);
        free(y.p);
    } else {
        *lt_tok_error(t) = keep;
    }
    free(x.p);
    return bad ? -1 : 0;
}

/* what the wrappers give for the spec conversation, to compare with the template's own rendering */
static void compose(const wrap *w, const char *spec, int agp, lt_buf *out) {
    out->n = 0;
    lt_buf_put(out, w->bos.p, w->bos.n);
    for (const char *s = spec; *s; s++) {
        const int r = *s == 's' ? 0 : *s == 'u' ? 1 : 2;
        char content[8];
        snprintf(content, sizeof content, MARK "%c" MARK, 'A' + (int)(s - spec));
        lt_buf_put(out, w->pre[r].p, w->pre[r].n);
        lt_buf_puts(out, content);
        lt_buf_put(out, w->suf[r].p, w->suf[r].n);
    }
    if (agp) lt_buf_put(out, w->gen.p, w->gen.n);
    lt_buf_putc(out, 0);
    out->n--;
}

/* literal text inside a Go template: "{{" must not open an action */
static void go_literal(lt_buf *out, const lt_buf *s) {
    for (size_t i = 0; i < s->n; i++) {
        if (s->p[i] == '{' && i + 1 < s->n && s->p[i + 1] == '{') {
            lt_buf_puts(out, "{{ \"{{\" }}");
            i++;
        } else {
            lt_buf_putc(out, s->p[i]);
        }
    }
}

/* the special tokens an assistant turn ends with, and EOS: Ollama stops at these strings */
static void stops(lt_tokenizer *t, const wrap *w, int ok, lt_buf *out) {
    const char *eos = lt_tok_special_str(t, "eos_token");
    const char *seen[64];
    int n = 0;
    if (eos && *eos) seen[n++] = eos;
    const int32_t V = lt_tokenizer_vocab_size(t);
    for (int32_t id = 0; ok && id < V && n < 64; id++) {
        const char *s = lt_tokenizer_id_to_token(t, id);
        if (!s || !*s || !lt_tokenizer_is_special(t, id) || !strstr(w->suf[2].p ? w->suf[2].p : "", s)) continue;
        int dup = 0;
        for (int k = 0; k < n; k++) dup |= !strcmp(seen[k], s);
        if (!dup) seen[n++] = s;
    }
    for (int k = 0; k < n; k++) {
        lt_buf_puts(out, "PARAMETER stop \"");
        for (const char *c = seen[k]; *c; c++) {
            if (*c == '"' || *c == '\\') lt_buf_putc(out, '\\');
            lt_buf_putc(out, *c);
        }
        lt_buf_puts(out, "\"\n");
    }
}

LT_API lt_status lt_tokenizer_ollama_modelfile(lt_tokenizer *t, const char *from, const char *adapter,
                                               const char **text, const char **warning) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error *err = lt_tok_error(t);
    lt_error_clear(err);
    if (!from || !text) return lt_fail(err, LT_ERR_ARGUMENT, "lt_tokenizer_ollama_modelfile: NULL argument");
    if (warning) *warning = NULL;
    const char *tmpl = lt_tok_chat_template(t);
    wrap w = {0};
    lt_buf tmp = {0}, got = {0}, want = {0}, go = {0};
    int ok = tmpl && measure(t, &w, &tmp) == 0;
    const char *conv = w.has_system ? "suau" : "uau";
    ok = ok && render(t, conv, 1, &got) == LT_OK;
    if (ok) compose(&w, conv, 1, &want);
    ok = ok && got.n == want.n && !memcmp(got.p, want.p, got.n);
    lt_error_clear(err);
    static const char *const warn_none = "the tokenizer has no chat template: the Modelfile has no TEMPLATE";
    static const char *const warn_shape =
        "the chat template does not have the per-role shape that converts reliably to a Go template (it is "
        "written as comments); Ollama will pick a template from the GGUF's tokenizer.chat_template";
    lt_buf *out = lt_tok_text_buf(t);
    out->n = 0;
    lt_buf_puts(out, "# written by libloratune (lt_tokenizer_ollama_modelfile)\nFROM ");
    lt_buf_puts(out, from);
    lt_buf_putc(out, '\n');
    if (adapter) {
        lt_buf_puts(out, "ADAPTER ");
        lt_buf_puts(out, adapter);
        lt_buf_putc(out, '\n');
    }
    if (ok) {
        /* {{ range }} over the messages; the generation prompt after the last one unless it is the assistant's */
        lt_buf_puts(&go, "{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}");
        for (int r = w.has_system ? 0 : 1; r < 3; r++) {
            lt_buf_puts(&go, r == (w.has_system ? 0 : 1) ? "{{ if eq .Role \"" : "{{ else if eq .Role \"");
            lt_buf_puts(&go, roles[r]);
            lt_buf_puts(&go, "\" }}");
            go_literal(&go, &w.pre[r]);
            lt_buf_puts(&go, "{{ .Content }}");
            go_literal(&go, &w.suf[r]);
        }
        lt_buf_puts(&go, "{{ end }}{{ if and $last (ne .Role \"assistant\") }}");
        go_literal(&go, &w.gen);
        lt_buf_puts(&go, "{{ end }}{{ end }}");
        if (strstr(go.p ? go.p : "", "\"\"\"")) ok = 0;
    }
    if (ok) {
        lt_buf_puts(out, "TEMPLATE \"\"\"");
        if (w.bos.n) { /* a BOS the template writes: kept unless the tokenizer adds it (it would be doubled) */
            lt_ivec v = {0};
            const char *bos = lt_tok_special_str(t, "bos_token");
            const int32_t bos_id = lt_tokenizer_token_to_id(t, bos);
            const int adds = lt_tok_encode_into(t, "", 0, 1, &v) == LT_OK && v.n && v.p[0] == bos_id;
            free(v.p);
            lt_error_clear(err);
            if (!adds) go_literal(out, &w.bos);
        }
        lt_buf_put(out, go.p, go.n);
        lt_buf_puts(out, "\"\"\"\n");
        if (!w.has_system && warning)
            *warning = "the chat template has no system role: system messages are not part of the TEMPLATE";
    } else {
        if (warning) *warning = tmpl ? warn_shape : warn_none;
        if (tmpl) {
            lt_buf_puts(out, "# TEMPLATE not converted: ");
            lt_buf_puts(out, warn_shape);
            lt_buf_puts(out, ". The Jinja chat template:\n# ");
            for (const char *c = tmpl; *c; c++) {
                lt_buf_putc(out, *c);
                if (*c == '\n') lt_buf_puts(out, "# ");
            }
            lt_buf_putc(out, '\n');
        }
    }
    stops(t, &w, ok, out);
    const int fail_mem = lt_buf_putc(out, 0);
    out->n--;
    for (int r = 0; r < 3; r++) {
        free(w.pre[r].p);
        free(w.suf[r].p);
    }
    free(w.gen.p);
    free(w.bos.p);
    free(tmp.p);
    free(got.p);
    free(want.p);
    free(go.p);
    if (fail_mem) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    *text = out->p;
    return LT_OK;
}
