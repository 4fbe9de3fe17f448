/*
 * jinja.h - the Jinja engine behind chat templates (used by chat_template.c; tests and fuzzers call
 * lt_jinja_render directly):
 *   jinja.c      lexer, parser, statements and expression evaluation (lt_jinja_render)
 *   jinja_lib.c  Python / Jinja value semantics: str() and repr(), json.dumps, comparison, arithmetic,
 *                the filters, tests, methods and global functions (no evaluation of template nodes)
 * Values are jansson values with Python's meaning (null = None, arrays = lists, objects = dicts with
 * string keys, in insertion order); NULL stands for Jinja's Undefined. Kinds Python has and JSON lacks
 * (tuples, generators, Markup strings, namespaces, macros, functions, loop objects) are tags kept per
 * render in a table that holds a reference to each tagged value, so a tag is never seen by a new value
 * at a reused address.
 */
#ifndef LT_JINJA_H
#define LT_JINJA_H

#include <jansson.h>
#include <time.h>

#include "core/core.h"
#include "text/textbuf.h"

/* Resource limits: ~100x what the real templates of the test set need (tests/python/check_chat_templates.py
 * --measure prints the figures; docs/API.md "Chat templates" records them). */
#define LT_JINJA_MAX_DEPTH 1000        /* nesting of expressions, statements, calls and values          */
#define LT_JINJA_BASE_STEPS 300000L    /* steps (statements run + expressions evaluated + loop items)... */
#define LT_JINJA_STEPS_PER_BYTE 100L   /* ... plus this many per byte of the variables (the conversation) */
#define LT_JINJA_MAX_BYTES (64L << 20) /* the rendered text, and any one string or list built           */

enum jkind { JK_PLAIN = 0, JK_TUPLE, JK_GEN, JK_MARKUP, JK_NS, JK_MACRO, JK_FUNC, JK_LOOP };

typedef struct jtag {
    json_t *v; /* a reference held by the table */
    int kind;
    void *payload;
} jtag;

/* What a render shares between the engine and the value library. */
typedef struct jctx {
    lt_error *err;
    int failed;
    jtag *tags; /* open addressing on the pointer */
    size_t ntags, tagcap;
    void (*free_payload)(int kind, void *payload);
    long steps, max_steps;
    time_t now; /* strftime_now: SOURCE_DATE_EPOCH when set, else the time the render began */
    int now_utc;
} jctx;

/* Evaluated call arguments: positional, then keyword (names borrowed from the AST). */
typedef struct jargs {
    json_t **pos;
    int npos;
    const char **kwn;
    json_t **kwv;
    int nkw;
    int line;
    json_t *hold; /* what the keyword names are borrowed from (a **kwargs mapping) */
} jargs;

/* errors: record the first one and return NULL (or -1) */
json_t *jerr(jctx *c, lt_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int jerri(jctx *c, lt_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* tags */
json_t *jk_tag(jctx *c, json_t *v, int kind, void *payload); /* returns v (its reference passes through) */
int jk_kind(const jctx *c, const json_t *v);
void *jk_payload(const jctx *c, const json_t *v);
void jk_clear(jctx *c);
json_t *j_string(jctx *c, const char *s, size_t n); /* a new str, NULL (and an error) past the size limit */

/* dict keys that are not str (jinja_lib.c) */
char *j_key(jctx *c, json_t *k); /* malloc'd, NULL (and an error) when unhashable */
json_t *j_unkey(const char *k);

/* Python semantics */
int j_truthy(const jctx *c, json_t *v);
int j_equal(const jctx *c, json_t *a, json_t *b);
const char *j_type(const jctx *c, json_t *v);
int j_str(jctx *c, lt_buf *b, json_t *v);     /* str(v) appended; -1 on error */
int j_repr(jctx *c, lt_buf *b, json_t *v);    /* repr(v) */
json_t *j_to_str(jctx *c, json_t *v);         /* str(v) as a value (Markup stays Markup) */
json_t *j_list(jctx *c, json_t *v, int line); /* list(v): a new list; NULL + error when not iterable */
json_t *j_getattr(jctx *c, json_t *obj, const char *name);
json_t *j_getitem(jctx *c, json_t *obj, json_t *key);
json_t *j_slice(jctx *c, json_t *obj, json_t *lo, json_t *hi, json_t *step, int line);
json_t *j_binop(jctx *c, const char *op, json_t *a, json_t *b, int line); /* + - * / // % ** ~ */
int j_compare(jctx *c, const char *op, json_t *a, json_t *b, int line);   /* == != < <= > >= in notin; -1 error */
json_t *j_neg(jctx *c, json_t *a, int line);

/* builtins: NULL with c->failed unset means Undefined */
json_t *j_filter(jctx *c, const char *name, json_t *v, jargs *a);
int j_test(jctx *c, const char *name, json_t *v, jargs *a, int *res); /* -1 on error */
int j_has_filter(const char *name);
int j_has_test(const char *name);
json_t *j_method(jctx *c, json_t *obj, const char *name, jargs *a); /* str / dict / list methods */
json_t *j_call_global(jctx *c, const char *name, jargs *a);         /* range, dict, namespace, ... */
int j_is_global(const char *name);
json_t *j_arg(jargs *a, const char *name, int pos); /* borrowed: the keyword name, else positional pos */

/* The step budget of a render with these variables: LT_JINJA_BASE_STEPS + LT_JINJA_STEPS_PER_BYTE per byte
 * of their text (strings, plus 8 per value), so a long conversation may take longer, a short one not. */
long lt_jinja_step_limit(json_t *ctx);

/* Render tmpl (n bytes) with the variables of ctx (an object). out receives the text; mask (optional)
 * one byte per output byte, 1 inside {% generation %} ... {% endgeneration %}. depth / steps (optional)
 * receive the deepest nesting and the steps the render took (the measure behind the limits). */
lt_status lt_jinja_render(const char *tmpl, size_t n, json_t *ctx, lt_buf *out, lt_buf *mask, lt_error *err, int *depth,
                          long *steps);

#endif /* LT_JINJA_H */
