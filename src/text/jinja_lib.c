/*
 * jinja_lib.c - the Python and Jinja semantics of values in a chat template: str() / repr(),
 * json.dumps (transformers' tojson), truthiness, equality, ordering, arithmetic, printf-style %, and the
 * filters, tests, methods and global functions of jinja2's sandbox as transformers configures it.
 * Nothing here evaluates template nodes: the engine (jinja.c) evaluates the arguments and calls in.
 * Each function follows jinja2 3.1 (filters.py, tests.py, sandbox.py) and CPython's str / json; where a
 * Python call raises, this returns an error (the exact message only matters for raise_exception).
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "text/jinja.h"

/* ---- errors and tags ----------------------------------------------------------------------------- */

static json_t *verr(jctx *c, lt_status st, const char *fmt, va_list ap) {
    if (c->failed) return NULL;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    c->failed = 1;
    lt_fail(c->err, st, "chat template: %s", msg);
    return NULL;
}
json_t *jerr(jctx *c, lt_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    verr(c, st, fmt, ap);
    va_end(ap);
    return NULL;
}
int jerri(jctx *c, lt_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    verr(c, st, fmt, ap);
    va_end(ap);
    return -1;
}
#define TYPE_ERR(...) jerr(c, LT_ERR_DATA, __VA_ARGS__)

static size_t tag_slot(const jctx *c, const json_t *v) {
    uintptr_t h = (uintptr_t)v;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 7) & (c->tagcap - 1);
}

int jk_kind(const jctx *c, const json_t *v) {
    if (!v || !c->ntags) return JK_PLAIN;
    for (size_t i = tag_slot(c, v);; i = (i + 1) & (c->tagcap - 1)) {
        if (c->tags[i].v == v) return c->tags[i].kind;
        if (!c->tags[i].v) return JK_PLAIN;
    }
}
void *jk_payload(const jctx *c, const json_t *v) {
    if (!v || !c->ntags) return NULL;
    for (size_t i = tag_slot(c, v);; i = (i + 1) & (c->tagcap - 1)) {
        if (c->tags[i].v == v) return c->tags[i].payload;
        if (!c->tags[i].v) return NULL;
    }
}

/* drop the tags of values nothing but the table holds any more (their refcount is the table's 1) */
static void tag_sweep(jctx *c) {
    size_t live = 0;
    for (size_t i = 0; i < c->tagcap; i++) {
        jtag *t = &c->tags[i];
        if (!t->v) continue;
        if (t->v->refcount == 1) {
            if (c->free_payload && t->payload) c->free_payload(t->kind, t->payload);
            json_decref(t->v);
            t->v = NULL;
        } else live++;
    }
    /* reinsert the survivors (open addressing needs no holes in a probe chain) */
    jtag *old = c->tags;
    size_t cap = c->tagcap;
    c->tags = calloc(cap, sizeof *c->tags);
    if (!c->tags) { /* keep the old table; a later insert retries */
        c->tags = old;
        return;
    }
    for (size_t i = 0; i < cap; i++)
        if (old[i].v) {
            size_t s = tag_slot(c, old[i].v);
            while (c->tags[s].v) s = (s + 1) & (cap - 1);
            c->tags[s] = old[i];
        }
    free(old);
    c->ntags = live;
}

json_t *jk_tag(jctx *c, json_t *v, int kind, void *payload) {
    if (!v) return NULL;
    /* past a quarter full: first reclaim the dead, and grow when more than an eighth stays alive (so
     * at least cap/8 inserts pass between two sweeps: amortised O(1)) */
    int grow = 4 * (c->ntags + 1) > c->tagcap;
    if (grow && c->tagcap) {
        tag_sweep(c);
        grow = 8 * (c->ntags + 1) > c->tagcap;
    }
    if (grow) {
        size_t oldcap = c->tagcap, cap = oldcap ? oldcap * 2 : 64;
        jtag *old = c->tags, *nt = calloc(cap, sizeof *nt);
        if (!nt) {
            if (c->free_payload && payload) c->free_payload(kind, payload);
            json_decref(v);
            return jerr(c, LT_ERR_NOMEM, "out of memory");
        }
        c->tags = nt;
        c->tagcap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].v) {
                size_t s = tag_slot(c, old[i].v);
                while (c->tags[s].v) s = (s + 1) & (cap - 1);
                c->tags[s] = old[i];
            }
        free(old);
    }
    size_t s = tag_slot(c, v);
    while (c->tags[s].v && c->tags[s].v != v) s = (s + 1) & (c->tagcap - 1);
    if (!c->tags[s].v) {
        c->tags[s].v = json_incref(v);
        c->ntags++;
    } else if (c->free_payload && c->tags[s].payload) c->free_payload(c->tags[s].kind, c->tags[s].payload);
    c->tags[s].kind = kind;
    c->tags[s].payload = payload;
    return v;
}

void jk_clear(jctx *c) {
    for (size_t i = 0; i < c->tagcap; i++)
        if (c->tags[i].v) {
            if (c->free_payload && c->tags[i].payload) c->free_payload(c->tags[i].kind, c->tags[i].payload);
            json_decref(c->tags[i].v);
        }
    free(c->tags);
    c->tags = NULL;
    c->ntags = c->tagcap = 0;
}

json_t *j_string(jctx *c, const char *s, size_t n) {
    if (n > (size_t)LT_JINJA_MAX_BYTES)
        return jerr(c, LT_ERR_DATA, "a string of %zu bytes passes the limit of %ld MiB", n, LT_JINJA_MAX_BYTES >> 20);
    json_t *v = json_stringn_nocheck(s ? s : "", n);
    return v ? v : jerr(c, LT_ERR_NOMEM, "out of memory");
}
static json_t *buf_string(jctx *c, lt_buf *b) {
    json_t *v = j_string(c, b->p, b->n);
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    return v;
}
static json_t *markup(jctx *c, json_t *s) { return jk_tag(c, s, JK_MARKUP, NULL); }
static json_t *tuple(jctx *c, json_t *l) { return jk_tag(c, l, JK_TUPLE, NULL); }
static json_t *gen(jctx *c, json_t *l) { return jk_tag(c, l, JK_GEN, NULL); }
static json_t *pair(jctx *c, json_t *a, json_t *b) { /* (a, b), references stolen */
    json_t *t = json_array();
    json_array_append_new(t, a ? a : json_null());
    json_array_append_new(t, b ? b : json_null());
    return tuple(c, t);
}

/* ---- dict keys ----------------------------------------------------------------------------------------
 * Python dicts take any hashable key; jansson objects take strings. A key that is not a str is stored as
 * "\x02" + a type letter + its text (an int, a float, None; True and 1 are one key, as in Python), and a str
 * that starts with "\x02" as "\x02s" + itself. j_key encodes, j_unkey decodes. */
char *j_key(jctx *c, json_t *k) {
    char tmp[64];
    if (k && json_is_string(k)) {
        const char *s = json_string_value(k);
        if (s[0] != '\x02' && strlen(s) == json_string_length(k)) return strdup(s);
        char *e = malloc(json_string_length(k) + 3);
        if (e) {
            e[0] = '\x02';
            e[1] = 's';
            memcpy(e + 2, s, json_string_length(k) + 1);
        }
        return e;
    }
    if (k && (json_is_integer(k) || json_is_boolean(k)))
        snprintf(tmp, sizeof tmp, "\x02i%lld",
                 json_is_integer(k) ? (long long)json_integer_value(k) : (long long)json_is_true(k));
    else if (k && json_is_real(k)) {
        double d = json_real_value(k);
        if (d == floor(d) && fabs(d) < 9e18) snprintf(tmp, sizeof tmp, "\x02i%lld", (long long)d);
        else snprintf(tmp, sizeof tmp, "\x02f%.17g", d);
    } else if (k && json_is_null(k)) strcpy(tmp, "\x02n");
    else {
        jerr(c, LT_ERR_DATA, "unhashable type: '%s' (a dict key)", j_type(c, k));
        return NULL;
    }
    return strdup(tmp);
}
json_t *j_unkey(const char *k) {
    if (k[0] != '\x02') return json_string(k);
    if (k[1] == 'i') return json_integer(strtoll(k + 2, NULL, 10));
    if (k[1] == 'f') return json_real(strtod(k + 2, NULL));
    if (k[1] == 'n') return json_null();
    return json_string(k + 2);
}
/* d[k]: borrowed, NULL when absent */
static json_t *dict_get(jctx *c, json_t *d, json_t *k) {
    if (k && json_is_string(k) && json_string_value(k)[0] != '\x02') return json_object_get(d, json_string_value(k));
    char *e = j_key(c, k);
    json_t *v = e ? json_object_get(d, e) : NULL;
    free(e);
    return v;
}

/* ---- UTF-8 helpers ------------------------------------------------------------------------------ */

static size_t u8len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
static size_t u8off(const char *s, size_t n, size_t k) { /* byte offset of code point k */
    size_t i = 0;
    while (i < n && k) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}
static int u8next(const char *s, size_t n, size_t i, int32_t *cp) {
    utf8proc_int32_t c;
    utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    if (l <= 0) {
        *cp = (unsigned char)s[i];
        return 1;
    }
    *cp = c;
    return (int)l;
}
static void u8put(lt_buf *b, int32_t cp) {
    utf8proc_uint8_t tmp[4];
    utf8proc_ssize_t l = utf8proc_encode_char(cp, tmp);
    lt_buf_put(b, tmp, (size_t)l);
}
static int py_space(int32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
static int py_linebreak(int32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
}
static int is_alpha(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
static int is_numeric(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}
static int is_word(int32_t c) { return c == '_' || is_alpha(c) || is_numeric(c); }
/* Python's str.isprintable() for one code point (what repr() leaves unescaped) */
static int py_printable(int32_t c) {
    if (c == ' ') return 1;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return 0;
    default: return 1;
    }
}

/* str.upper / lower / title-case of one character; 'u', 'l', 't' */
static void case_put(lt_buf *b, int32_t cp, char how) {
    /* characters whose full mapping is several code points (ß -> SS, ŉ -> ʼN) as CPython does */
    if (how == 'u' && cp == 0xDF) {
        lt_buf_puts(b, "SS");
        return;
    }
    if (how == 't' && cp == 0xDF) {
        lt_buf_puts(b, "Ss");
        return;
    }
    u8put(b, how == 'u' ? utf8proc_toupper(cp) : how == 'l' ? utf8proc_tolower(cp) : utf8proc_totitle(cp));
}

/* ---- truthiness, types, equality ----------------------------------------------------------------- */

int j_truthy(const jctx *c, json_t *v) {
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    switch (jk_kind(c, v)) {
    case JK_GEN:
    case JK_NS:
    case JK_MACRO:
    case JK_FUNC:
    case JK_LOOP: return 1; /* objects without a length: always true (an empty generator too) */
    default: break;
    }
    if (json_is_true(v)) return 1;
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    if (json_is_real(v)) return json_real_value(v) != 0;
    if (json_is_string(v)) return json_string_length(v) != 0;
    if (json_is_array(v)) return json_array_size(v) != 0;
    if (json_is_object(v)) return json_object_size(v) != 0;
    return 1;
}

const char *j_type(const jctx *c, json_t *v) {
    if (!v) return "Undefined";
    switch (jk_kind(c, v)) {
    case JK_TUPLE: return "tuple";
    case JK_GEN: return "generator";
    case JK_MARKUP: return "Markup";
    case JK_NS: return "Namespace";
    case JK_MACRO: return "Macro";
    case JK_FUNC: return "function";
    case JK_LOOP: return "LoopContext";
    default: break;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "dict";
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "str";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    default: return "NoneType";
    }
}

static int is_num(json_t *v) { return v && (json_is_integer(v) || json_is_real(v) || json_is_boolean(v)); }
static int is_intlike(json_t *v) { return v && (json_is_integer(v) || json_is_boolean(v)); }
static double numval(json_t *v) {
    return json_is_integer(v) ? (double)json_integer_value(v) : json_is_real(v) ? json_real_value(v) : json_is_true(v);
}
static long long intval(json_t *v) { return json_is_integer(v) ? json_integer_value(v) : json_is_true(v); }

int j_equal(const jctx *c, json_t *a, json_t *b) {
    if (!a || !b) return !a && !b; /* Undefined equals only Undefined */
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return intval(a) == intval(b);
        return numval(a) == numval(b);
    }
    if (json_is_string(a) && json_is_string(b))
        return json_string_length(a) == json_string_length(b) &&
               !memcmp(json_string_value(a), json_string_value(b), json_string_length(a));
    if (json_is_null(a) || json_is_null(b)) return json_is_null(a) && json_is_null(b);
    if (json_is_array(a) && json_is_array(b)) {
        if ((jk_kind(c, a) == JK_TUPLE) != (jk_kind(c, b) == JK_TUPLE)) return 0;
        if (jk_kind(c, a) == JK_GEN || jk_kind(c, b) == JK_GEN) return a == b;
        size_t n = json_array_size(a);
        if (n != json_array_size(b)) return 0;
        for (size_t i = 0; i < n; i++)
            if (!j_equal(c, json_array_get(a, i), json_array_get(b, i))) return 0;
        return 1;
    }
    if (json_is_object(a) && json_is_object(b)) {
        if (jk_kind(c, a) != JK_PLAIN || jk_kind(c, b) != JK_PLAIN) return a == b;
        if (json_object_size(a) != json_object_size(b)) return 0;
        const char *k;
        json_t *x;
        json_object_foreach(a, k, x) {
            json_t *y = json_object_get(b, k);
            if (!y || !j_equal(c, x, y)) return 0;
        }
        return 1;
    }
    return 0;
}

/* ---- str() and repr() ------------------------------------------------------------------------------ */

/* Python's float repr: the shortest digits that read back, exponent form below 1e-4 and from 1e16 */
static void float_repr(lt_buf *b, double d) {
    char tmp[64];
    if (isnan(d)) {
        lt_buf_puts(b, "nan");
        return;
    }
    if (isinf(d)) {
        lt_buf_puts(b, d > 0 ? "inf" : "-inf");
        return;
    }
    if (d == 0) {
        lt_buf_puts(b, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp = [-]D.DDDDe[+-]XX: the digits and the decimal exponent */
    char digits[32];
    int nd = 0, neg = tmp[0] == '-';
    const char *q = tmp + neg;
    for (; *q && *q != 'e'; q++)
        if (isdigit((unsigned char)*q)) digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    if (neg) lt_buf_putc(b, '-');
    if (exp < -4 || exp >= 16) {
        lt_buf_putc(b, digits[0]);
        if (nd > 1) {
            lt_buf_putc(b, '.');
            lt_buf_put(b, digits + 1, (size_t)nd - 1);
        }
        snprintf(tmp, sizeof tmp, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
        lt_buf_puts(b, tmp);
    } else if (exp < 0) {
        lt_buf_puts(b, "0.");
        for (int k = 0; k < -exp - 1; k++) lt_buf_putc(b, '0');
        lt_buf_put(b, digits, (size_t)nd);
    } else {
        for (int k = 0; k <= exp; k++) lt_buf_putc(b, k < nd ? digits[k] : '0');
        lt_buf_putc(b, '.');
        if (nd > exp + 1) lt_buf_put(b, digits + exp + 1, (size_t)(nd - exp - 1));
        else lt_buf_putc(b, '0');
    }
}

static void str_repr(lt_buf *b, const char *s, size_t n) {
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'', tmp[16];
    lt_buf_putc(b, q);
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = u8next(s, n, i, &cp);
        if (cp == q || cp == '\\') {
            lt_buf_putc(b, '\\');
            lt_buf_putc(b, (char)cp);
        } else if (cp == '\n') lt_buf_puts(b, "\\n");
        else if (cp == '\t') lt_buf_puts(b, "\\t");
        else if (cp == '\r') lt_buf_puts(b, "\\r");
        else if (cp < 0x7f && cp >= 0x20) lt_buf_putc(b, (char)cp);
        else if (py_printable(cp)) lt_buf_put(b, s + i, (size_t)l);
        else {
            snprintf(tmp, sizeof tmp, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", (unsigned)cp);
            lt_buf_puts(b, tmp);
        }
        i += (size_t)l;
    }
    lt_buf_putc(b, q);
}

static int repr_in(jctx *c, lt_buf *b, json_t *v, int depth) {
    if (depth > LT_JINJA_MAX_DEPTH)
        return jerri(c, LT_ERR_DATA, "a value nests deeper than %d levels", LT_JINJA_MAX_DEPTH);
    char tmp[64];
    int kind = jk_kind(c, v);
    if (!v) return 0; /* repr(Undefined) is '' as str() */
    if (kind == JK_GEN || kind == JK_FUNC || kind == JK_LOOP)
        return jerri(c, LT_ERR_UNSUPPORTED, "printing a %s (Python prints its memory address)", j_type(c, v));
    if (kind == JK_MACRO) {
        lt_buf_puts(b, "<Macro ");
        json_t *name = json_object_get(v, "name");
        str_repr(b, json_string_value(name), json_string_length(name));
        lt_buf_putc(b, '>');
        return 0;
    }
    if (json_is_null(v)) lt_buf_puts(b, "None");
    else if (json_is_true(v)) lt_buf_puts(b, "True");
    else if (json_is_false(v)) lt_buf_puts(b, "False");
    else if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        lt_buf_puts(b, tmp);
    } else if (json_is_real(v)) float_repr(b, json_real_value(v));
    else if (json_is_string(v)) {
        if (kind == JK_MARKUP) lt_buf_puts(b, "Markup(");
        str_repr(b, json_string_value(v), json_string_length(v));
        if (kind == JK_MARKUP) lt_buf_putc(b, ')');
    } else if (json_is_array(v)) {
        int tup = kind == JK_TUPLE;
        lt_buf_putc(b, tup ? '(' : '[');
        size_t i, n = json_array_size(v);
        json_t *x;
        json_array_foreach(v, i, x) {
            if (i) lt_buf_puts(b, ", ");
            if (repr_in(c, b, x, depth + 1)) return -1;
        }
        if (tup && n == 1) lt_buf_putc(b, ',');
        lt_buf_putc(b, tup ? ')' : ']');
    } else if (json_is_object(v)) {
        if (kind == JK_NS) lt_buf_puts(b, "<Namespace ");
        lt_buf_putc(b, '{');
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach(v, k, x) {
            if (!first) lt_buf_puts(b, ", ");
            first = 0;
            json_t *kv = j_unkey(k);
            int bad = repr_in(c, b, kv, depth + 1);
            json_decref(kv);
            lt_buf_puts(b, ": ");
            if (bad || repr_in(c, b, x, depth + 1)) return -1;
        }
        lt_buf_putc(b, '}');
        if (kind == JK_NS) lt_buf_putc(b, '>');
    }
    if (b->n > (size_t)LT_JINJA_MAX_BYTES)
        return jerri(c, LT_ERR_DATA, "a string passes the limit of %ld MiB", LT_JINJA_MAX_BYTES >> 20);
    return 0;
}
int j_repr(jctx *c, lt_buf *b, json_t *v) { return repr_in(c, b, v, 0); }

int j_str(jctx *c, lt_buf *b, json_t *v) {
    if (!v) return 0; /* Undefined prints nothing */
    if (json_is_string(v))
        return lt_buf_put(b, json_string_value(v), json_string_length(v)) ? jerri(c, LT_ERR_NOMEM, "out of memory") : 0;
    return j_repr(c, b, v);
}

json_t *j_to_str(jctx *c, json_t *v) {
    if (v && json_is_string(v)) return json_incref(v);
    lt_buf b = {0};
    if (j_str(c, &b, v)) {
        free(b.p);
        return NULL;
    }
    return buf_string(c, &b);
}

/* ---- json.dumps ----------------------------------------------------------------------------------- */

typedef struct jdump {
    const char *indent; /* NULL: no indentation */
    const char *item_sep, *key_sep;
    int sort_keys, ensure_ascii;
} jdump;

static void json_str(lt_buf *b, const char *s, size_t n, int ensure_ascii) {
    char tmp[16];
    lt_buf_putc(b, '"');
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = u8next(s, n, i, &cp);
        if (cp == '"') lt_buf_puts(b, "\\\"");
        else if (cp == '\\') lt_buf_puts(b, "\\\\");
        else if (cp == '\n') lt_buf_puts(b, "\\n");
        else if (cp == '\r') lt_buf_puts(b, "\\r");
        else if (cp == '\t') lt_buf_puts(b, "\\t");
        else if (cp == '\b') lt_buf_puts(b, "\\b");
        else if (cp == '\f') lt_buf_puts(b, "\\f");
        else if (cp < 0x20 || (ensure_ascii && cp >= 0x7f)) {
            if (cp >= 0x10000) {
                int32_t v = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)cp);
            lt_buf_puts(b, tmp);
        } else lt_buf_put(b, s + i, (size_t)l);
        i += (size_t)l;
    }
    lt_buf_putc(b, '"');
}

static int keycmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int dump(jctx *c, lt_buf *b, json_t *v, const jdump *o, int level) {
    if (level > LT_JINJA_MAX_DEPTH)
        return jerri(c, LT_ERR_DATA, "a value nests deeper than %d levels", LT_JINJA_MAX_DEPTH);
    int kind = jk_kind(c, v);
    char tmp[64];
    if (!v || (kind != JK_PLAIN && kind != JK_TUPLE && kind != JK_MARKUP))
        return jerri(c, LT_ERR_DATA, "tojson: Object of type %s is not JSON serializable", j_type(c, v));
    if (json_is_null(v)) lt_buf_puts(b, "null");
    else if (json_is_true(v)) lt_buf_puts(b, "true");
    else if (json_is_false(v)) lt_buf_puts(b, "false");
    else if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        lt_buf_puts(b, tmp);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isnan(d)) lt_buf_puts(b, "NaN");
        else if (isinf(d)) lt_buf_puts(b, d > 0 ? "Infinity" : "-Infinity");
        else float_repr(b, d);
    } else if (json_is_string(v)) json_str(b, json_string_value(v), json_string_length(v), o->ensure_ascii);
    else {
        int arr = json_is_array(v);
        size_t n = arr ? json_array_size(v) : json_object_size(v);
        lt_buf_putc(b, arr ? '[' : '{');
        if (!n) {
            lt_buf_putc(b, arr ? ']' : '}');
            return 0;
        }
        const char **keys = NULL;
        if (!arr) {
            if (!(keys = malloc(n * sizeof *keys))) return jerri(c, LT_ERR_NOMEM, "out of memory");
            size_t i = 0;
            const char *k;
            json_t *x;
            json_object_foreach(v, k, x) keys[i++] = k;
            if (o->sort_keys) qsort(keys, n, sizeof *keys, keycmp);
        }
        for (size_t i = 0; i < n; i++) {
            if (i) lt_buf_puts(b, o->item_sep);
            if (o->indent) {
                lt_buf_putc(b, '\n');
                for (int k = 0; k <= level; k++) lt_buf_puts(b, o->indent);
            }
            int bad;
            if (arr) bad = dump(c, b, json_array_get(v, i), o, level + 1);
            else {
                if (keys[i][0] == '\x02' &&
                    keys[i][1] != 's') { /* json.dumps: int and float keys as their text, None as null */
                    lt_buf kb = {0};
                    json_t *kv = j_unkey(keys[i]);
                    if (json_is_null(kv)) lt_buf_puts(&kb, "null");
                    else repr_in(c, &kb, kv, 0);
                    json_decref(kv);
                    json_str(b, kb.p ? kb.p : "", kb.n, o->ensure_ascii);
                    free(kb.p);
                } else
                    json_str(b, keys[i][0] == '\x02' ? keys[i] + 2 : keys[i],
                             strlen(keys[i]) - (keys[i][0] == '\x02' ? 2 : 0), o->ensure_ascii);
                lt_buf_puts(b, o->key_sep);
                bad = dump(c, b, json_object_get(v, keys[i]), o, level + 1);
            }
            if (bad) {
                free(keys);
                return -1;
            }
        }
        free(keys);
        if (o->indent) {
            lt_buf_putc(b, '\n');
            for (int k = 0; k < level; k++) lt_buf_puts(b, o->indent);
        }
        lt_buf_putc(b, arr ? ']' : '}');
    }
    if (b->n > (size_t)LT_JINJA_MAX_BYTES)
        return jerri(c, LT_ERR_DATA, "tojson: the text passes the limit of %ld MiB", LT_JINJA_MAX_BYTES >> 20);
    return 0;
}

/* ---- arguments ------------------------------------------------------------------------------------ */

json_t *j_arg(jargs *a, const char *name, int pos) {
    if (!a) return NULL;
    for (int i = 0; name && i < a->nkw; i++)
        if (!strcmp(a->kwn[i], name)) return a->kwv[i];
    return pos >= 0 && pos < a->npos ? a->pos[pos] : NULL;
}
static int n_args(jargs *a) { return a ? a->npos + a->nkw : 0; }
/* an argument's truthiness, with a default */
static int arg_bool(jctx *c, jargs *a, const char *name, int pos, int def) {
    json_t *v = j_arg(a, name, pos);
    return v ? j_truthy(c, v) : def;
}
static int arg_int(jctx *c, jargs *a, const char *name, int pos, long long def, long long *out) {
    json_t *v = j_arg(a, name, pos);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!is_intlike(v)) return jerri(c, LT_ERR_DATA, "line %d: %s must be an integer", a->line, name);
    *out = intval(v);
    return 0;
}
static const char *arg_str(jargs *a, const char *name, int pos, const char *def) {
    json_t *v = j_arg(a, name, pos);
    return v && json_is_string(v) ? json_string_value(v) : def;
}

/* ---- list(), attribute and item access, slices ---------------------------------------------------- */

json_t *j_list(jctx *c, json_t *v, int line) {
    json_t *l = json_array();
    if (!l) return jerr(c, LT_ERR_NOMEM, "out of memory");
    if (!v) return l; /* iterating Undefined gives nothing */
    int kind = jk_kind(c, v);
    if (json_is_array(v)) json_array_extend(l, v);
    else if (json_is_object(v) && (kind == JK_PLAIN)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) json_array_append_new(l, j_unkey(k));
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        for (size_t i = 0; i < n;) {
            size_t e = u8off(s + i, n - i, 1);
            json_array_append_new(l, json_stringn_nocheck(s + i, e));
            i += e;
        }
    } else {
        json_decref(l);
        return jerr(c, LT_ERR_DATA, "line %d: '%s' object is not iterable", line, j_type(c, v));
    }
    return l;
}

json_t *j_getattr(jctx *c, json_t *obj, const char *name) {
    if (!obj) return NULL;
    int kind = jk_kind(c, obj);
    if (json_is_object(obj) && (kind == JK_PLAIN || kind == JK_NS || kind == JK_LOOP || kind == JK_MACRO)) {
        if (kind == JK_LOOP && name[0] == '\x01') return NULL;
        json_t *v = json_object_get(obj, name);
        return v ? json_incref(v) : NULL;
    }
    return NULL; /* str / list attributes are methods: a call reaches them (jinja.c) */
}

json_t *j_getitem(jctx *c, json_t *obj, json_t *key) {
    if (!obj || !key) return NULL;
    int kind = jk_kind(c, obj);
    if (json_is_object(obj)) {
        if (kind == JK_PLAIN &&
            (json_is_string(key) || json_is_number(key) || json_is_boolean(key) || json_is_null(key))) {
            json_t *v = dict_get(c, obj, key);
            return v ? json_incref(v) : NULL;
        }
        return json_is_string(key) ? j_getattr(c, obj, json_string_value(key)) : NULL;
    }
    if (json_is_array(obj) && kind != JK_GEN && is_intlike(key)) {
        long long i = intval(key), n = (long long)json_array_size(obj);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return NULL;
        return json_incref(json_array_get(obj, (size_t)i));
    }
    if (json_is_string(obj) && is_intlike(key)) {
        const char *s = json_string_value(obj);
        size_t bn = json_string_length(obj);
        long long i = intval(key), n = (long long)u8len(s, bn);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return NULL;
        size_t o = u8off(s, bn, (size_t)i), e = u8off(s, bn, (size_t)i + 1);
        return json_stringn_nocheck(s + o, e - o);
    }
    return NULL;
}

json_t *j_slice(jctx *c, json_t *obj, json_t *lo, json_t *hi, json_t *stepv, int line) {
    if (!obj || !(json_is_array(obj) || json_is_string(obj)) || jk_kind(c, obj) == JK_GEN)
        return TYPE_ERR("line %d: '%s' object is not subscriptable", line, j_type(c, obj));
    for (json_t *x = lo, *y = hi;; x = y, y = NULL) {
        if (x && !json_is_null(x) && !is_intlike(x)) return TYPE_ERR("line %d: slice indices must be integers", line);
        if (x == hi || !y) break;
    }
    if (hi && !json_is_null(hi) && !is_intlike(hi)) return TYPE_ERR("line %d: slice indices must be integers", line);
    if (stepv && !json_is_null(stepv) && !is_intlike(stepv))
        return TYPE_ERR("line %d: slice indices must be integers", line);
    long long step = stepv && !json_is_null(stepv) ? intval(stepv) : 1;
    if (step == 0) return TYPE_ERR("line %d: slice step cannot be zero", line);
    json_t *l = json_is_array(obj) ? json_incref(obj) : j_list(c, obj, line);
    if (!l) return NULL;
    long long len = (long long)json_array_size(l), i0, i1;
    int has_lo = lo && !json_is_null(lo), has_hi = hi && !json_is_null(hi);
    long long L = has_lo ? intval(lo) : (step > 0 ? 0 : len - 1), H = has_hi ? intval(hi) : (step > 0 ? len : -1);
    if (has_lo && L < 0) L += len;
    if (has_hi && H < 0) H += len;
    if (step > 0) {
        i0 = L < 0 ? 0 : L > len ? len : L;
        i1 = H < 0 ? 0 : H > len ? len : H;
    } else {
        i0 = L < -1 ? -1 : L > len - 1 ? len - 1 : L;
        i1 = H < -1 ? -1 : H > len - 1 ? len - 1 : H;
        if (!has_hi) i1 = -1;
    }
    json_t *out = json_array();
    for (long long i = i0; step > 0 ? i < i1 : i > i1; i += step) json_array_append(out, json_array_get(l, (size_t)i));
    json_decref(l);
    if (json_is_string(obj)) {
        lt_buf s = {0};
        size_t i;
        json_t *x;
        json_array_foreach(out, i, x) lt_buf_put(&s, json_string_value(x), json_string_length(x));
        json_decref(out);
        return buf_string(c, &s);
    }
    return jk_kind(c, obj) == JK_TUPLE ? tuple(c, out) : out;
}

/* ---- ordering ------------------------------------------------------------------------------------- */

/* Python's a < b ordering: -1, 0, 1, or 2 when the types cannot be ordered */
static int order(const jctx *c, json_t *a, json_t *b) {
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return intval(a) < intval(b) ? -1 : intval(a) > intval(b);
        double x = numval(a), y = numval(b);
        return x < y ? -1 : x > y;
    }
    if (a && b && json_is_string(a) && json_is_string(b)) {
        size_t n = json_string_length(a), m = json_string_length(b);
        int r = memcmp(json_string_value(a), json_string_value(b), n < m ? n : m); /* UTF-8 keeps code point order */
        return r ? (r < 0 ? -1 : 1) : n < m ? -1 : n > m;
    }
    if (a && b && json_is_array(a) && json_is_array(b) && (jk_kind(c, a) == JK_TUPLE) == (jk_kind(c, b) == JK_TUPLE) &&
        jk_kind(c, a) != JK_GEN) {
        size_t n = json_array_size(a), m = json_array_size(b);
        for (size_t i = 0; i < n && i < m; i++) {
            json_t *x = json_array_get(a, i), *y = json_array_get(b, i);
            if (j_equal(c, x, y)) continue;
            return order(c, x, y);
        }
        return n < m ? -1 : n > m;
    }
    return 2;
}

int j_compare(jctx *c, const char *op, json_t *a, json_t *b, int line) {
    if (!strcmp(op, "==")) return j_equal(c, a, b);
    if (!strcmp(op, "!=")) return !j_equal(c, a, b);
    if (!strcmp(op, "in") || !strcmp(op, "notin")) {
        int hit = 0;
        if (!b) hit = 0; /* `x in Undefined`: Undefined iterates as empty */
        else if (json_is_string(b)) {
            if (!a || !json_is_string(a))
                return jerri(c, LT_ERR_DATA, "line %d: 'in <string>' requires string as left operand, not %s", line,
                             j_type(c, a));
            hit = !json_string_length(a) || memmem(json_string_value(b), json_string_length(b), json_string_value(a),
                                                   json_string_length(a)) != NULL;
        } else if (json_is_array(b)) {
            size_t i;
            json_t *x;
            json_array_foreach(b, i, x) if (j_equal(c, a, x)) hit = 1;
        } else if (json_is_object(b) && jk_kind(c, b) == JK_PLAIN) {
            if (a && (json_is_array(a) || json_is_object(a)) && jk_kind(c, a) != JK_TUPLE)
                return jerri(c, LT_ERR_DATA, "line %d: unhashable type: '%s'", line, j_type(c, a));
            hit = a && dict_get(c, b, a) != NULL;
        } else return jerri(c, LT_ERR_DATA, "line %d: argument of type '%s' is not iterable", line, j_type(c, b));
        return op[0] == 'i' ? hit : !hit;
    }
    int r = order(c, a, b);
    if (r == 2)
        return jerri(c, LT_ERR_DATA, "line %d: '%s' not supported between instances of '%s' and '%s'", line, op,
                     j_type(c, a), j_type(c, b));
    if (!strcmp(op, "<")) return r < 0;
    if (!strcmp(op, "<=")) return r <= 0;
    if (!strcmp(op, ">")) return r > 0;
    return r >= 0;
}

/* ---- printf-style formatting (str % args, the format filter) --------------------------------------- */

static json_t *percent_format(jctx *c, json_t *fmtv, json_t *args, int line) {
    const char *f = json_string_value(fmtv);
    size_t n = json_string_length(fmtv), ai = 0;
    int is_tuple = args && json_is_array(args) && jk_kind(c, args) == JK_TUPLE;
    int is_map = args && json_is_object(args) && jk_kind(c, args) == JK_PLAIN;
    size_t nargs = is_tuple ? json_array_size(args) : 1;
    lt_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (f[i] != '%') {
            lt_buf_putc(&b, f[i]);
            continue;
        }
        if (++i >= n) goto bad;
        if (f[i] == '%') {
            lt_buf_putc(&b, '%');
            continue;
        }
        json_t *arg = NULL;
        if (f[i] == '(') { /* %(name)s */
            size_t e = i + 1;
            while (e < n && f[e] != ')') e++;
            if (e >= n || !is_map) goto bad;
            char *key = strndup(f + i + 1, e - i - 1);
            arg = json_object_get(args, key);
            free(key);
            if (!arg) {
                free(b.p);
                return TYPE_ERR("line %d: a format key is missing", line);
            }
            i = e + 1;
        }
        char spec[32] = "%";
        size_t sn = 1;
        while (i < n && strchr("-+ #0", f[i]) && sn < 8) spec[sn++] = f[i++];
        while (i < n && isdigit((unsigned char)f[i]) && sn < 16) spec[sn++] = f[i++];
        if (i < n && f[i] == '.') {
            spec[sn++] = f[i++];
            while (i < n && isdigit((unsigned char)f[i]) && sn < 24) spec[sn++] = f[i++];
        }
        if (i >= n) goto bad;
        char conv = f[i];
        if (!arg) {
            if (ai >= nargs) {
                free(b.p);
                return TYPE_ERR("line %d: not enough arguments for format string", line);
            }
            arg = is_tuple ? json_array_get(args, ai) : args;
            ai++;
        }
        char tmp[128];
        if (conv == 's' || conv == 'r' || conv == 'a') {
            lt_buf s = {0};
            if ((conv == 's' ? j_str(c, &s, arg) : j_repr(c, &s, arg))) {
                free(s.p);
                free(b.p);
                return NULL;
            }
            /* width / precision count code points */
            int width = 0, prec = -1, left = strchr(spec, '-') != NULL;
            const char *q = spec + 1;
            while (*q && strchr("-+ #0", *q)) q++;
            width = atoi(q);
            const char *dot = strchr(spec, '.');
            if (dot) prec = atoi(dot + 1);
            size_t len = s.n ? u8len(s.p, s.n) : 0, take = s.n;
            if (prec >= 0 && (size_t)prec < len) {
                take = u8off(s.p, s.n, (size_t)prec);
                len = (size_t)prec;
            }
            if (!left)
                for (size_t k = len; k < (size_t)width; k++) lt_buf_putc(&b, ' ');
            lt_buf_put(&b, s.p ? s.p : "", take);
            if (left)
                for (size_t k = len; k < (size_t)width; k++) lt_buf_putc(&b, ' ');
            free(s.p);
        } else if (strchr("dioxXeEfFgGc", conv)) {
            if (!is_num(arg)) {
                free(b.p);
                return TYPE_ERR("line %d: %%%c format: a real number is required, not %s", line, conv, j_type(c, arg));
            }
            if (strchr("dioxXc", conv)) {
                if (conv != 'd' && conv != 'i' && !is_intlike(arg)) {
                    free(b.p);
                    return TYPE_ERR("line %d: %%%c format: an integer is required", line, conv);
                }
                long long v = is_intlike(arg) ? intval(arg) : (long long)numval(arg);
                if (conv == 'c') {
                    u8put(&b, (int32_t)v);
                    continue;
                }
                spec[sn++] = 'l';
                spec[sn++] = 'l';
                spec[sn++] = conv == 'i' ? 'd' : conv;
                spec[sn] = 0;
                snprintf(tmp, sizeof tmp, spec, v);
            } else {
                spec[sn++] = conv;
                spec[sn] = 0;
                snprintf(tmp, sizeof tmp, spec, numval(arg));
            }
            lt_buf_puts(&b, tmp);
        } else goto bad;
    }
    if (is_tuple && ai < nargs) {
        free(b.p);
        return TYPE_ERR("line %d: not all arguments converted during string formatting", line);
    }
    return buf_string(c, &b);
bad:
    free(b.p);
    return TYPE_ERR("line %d: unsupported format string", line);
}

/* ---- arithmetic ----------------------------------------------------------------------------------- */

static json_t *html_escape(jctx *c, json_t *v) { /* markupsafe.escape: a Markup */
    if (jk_kind(c, v) == JK_MARKUP) return json_incref(v);
    json_t *s = j_to_str(c, v);
    if (!s) return NULL;
    lt_buf b = {0};
    const char *p = json_string_value(s);
    for (size_t i = 0, n = json_string_length(s); i < n; i++) switch (p[i]) {
        case '&': lt_buf_puts(&b, "&amp;"); break;
        case '<': lt_buf_puts(&b, "&lt;"); break;
        case '>': lt_buf_puts(&b, "&gt;"); break;
        case '"': lt_buf_puts(&b, "&#34;"); break;
        case '\'': lt_buf_puts(&b, "&#39;"); break;
        default: lt_buf_putc(&b, p[i]);
        }
    json_decref(s);
    return markup(c, buf_string(c, &b));
}

static json_t *concat2(jctx *c, json_t *a, json_t *b) {
    lt_buf s = {0};
    lt_buf_put(&s, json_string_value(a), json_string_length(a));
    lt_buf_put(&s, json_string_value(b), json_string_length(b));
    return buf_string(c, &s);
}

json_t *j_neg(jctx *c, json_t *a, int line) {
    if (a && is_intlike(a)) {
        long long v = intval(a);
        if (v == LLONG_MIN) return TYPE_ERR("line %d: integer overflow", line);
        return json_integer(-v);
    }
    if (a && json_is_real(a)) return json_real(-json_real_value(a));
    return TYPE_ERR("line %d: bad operand type for unary -: '%s'", line, j_type(c, a));
}

json_t *j_binop(jctx *c, const char *op, json_t *a, json_t *b, int line) {
    if (!strcmp(op, "~")) { /* str_join: str() of each side, Undefined as '' */
        lt_buf s = {0};
        if (j_str(c, &s, a) || j_str(c, &s, b)) {
            free(s.p);
            return NULL;
        }
        return buf_string(c, &s);
    }
    if (!a || !b)
        return TYPE_ERR("line %d: unsupported operand type(s) for %s: '%s' and '%s' (an undefined value)", line, op,
                        j_type(c, a), j_type(c, b));
    int ka = jk_kind(c, a), kb = jk_kind(c, b);
    if (!strcmp(op, "+")) {
        if (json_is_string(a) && json_is_string(b)) {
            if (ka != JK_MARKUP && kb != JK_MARKUP) return concat2(c, a, b);
            /* Markup + str escapes the str (and str + Markup) */
            json_t *x = html_escape(c, a), *y = html_escape(c, b), *r = x && y ? concat2(c, x, y) : NULL;
            json_decref(x);
            json_decref(y);
            return markup(c, r);
        }
        if (json_is_array(a) && json_is_array(b) && ka != JK_GEN && kb != JK_GEN &&
            (ka == JK_TUPLE) == (kb == JK_TUPLE)) {
            if (json_array_size(a) + json_array_size(b) > (size_t)LT_JINJA_MAX_BYTES)
                return TYPE_ERR("line %d: a list passes the size limit", line);
            json_t *l = json_copy(a);
            json_array_extend(l, b);
            return ka == JK_TUPLE ? tuple(c, l) : l;
        }
    }
    if (!strcmp(op, "%") && json_is_string(a)) {
        json_t *r = percent_format(c, a, b, line);
        return ka == JK_MARKUP ? markup(c, r) : r;
    }
    if (!strcmp(op, "*") && ((json_is_string(a) || json_is_array(a)) && is_intlike(b) ? 1 : 0) +
                                ((json_is_string(b) || json_is_array(b)) && is_intlike(a) ? 2 : 0)) {
        json_t *seq = is_intlike(b) && !is_intlike(a) ? a : b;
        long long k = intval(seq == a ? b : a);
        if (jk_kind(c, seq) == JK_GEN) return TYPE_ERR("line %d: can't multiply a generator", line);
        size_t unit = json_is_string(seq) ? json_string_length(seq) : json_array_size(seq);
        if (k > 0 && unit && (unsigned long long)k > (unsigned long long)LT_JINJA_MAX_BYTES / unit)
            return TYPE_ERR("line %d: a repetition passes the limit of %ld MiB", line, LT_JINJA_MAX_BYTES >> 20);
        if (json_is_string(seq)) {
            lt_buf s = {0};
            for (long long i = 0; i < k; i++) lt_buf_put(&s, json_string_value(seq), unit);
            return buf_string(c, &s);
        }
        json_t *l = json_array();
        for (long long i = 0; i < k; i++) json_array_extend(l, seq);
        return jk_kind(c, seq) == JK_TUPLE ? tuple(c, l) : l;
    }
    if (is_num(a) && is_num(b)) {
        int ints = is_intlike(a) && is_intlike(b);
        long long i = intval(a), j = intval(b), r;
        double x = numval(a), y = numval(b);
        if (!strcmp(op, "+")) {
            if (!ints) return json_real(x + y);
            return __builtin_add_overflow(i, j, &r) ? TYPE_ERR("line %d: integer overflow", line) : json_integer(r);
        }
        if (!strcmp(op, "-")) {
            if (!ints) return json_real(x - y);
            return __builtin_sub_overflow(i, j, &r) ? TYPE_ERR("line %d: integer overflow", line) : json_integer(r);
        }
        if (!strcmp(op, "*")) {
            if (!ints) return json_real(x * y);
            return __builtin_mul_overflow(i, j, &r) ? TYPE_ERR("line %d: integer overflow", line) : json_integer(r);
        }
        if (!strcmp(op, "/")) return y == 0 ? TYPE_ERR("line %d: division by zero", line) : json_real(x / y);
        if (!strcmp(op, "//")) {
            if (y == 0) return TYPE_ERR("line %d: integer division or modulo by zero", line);
            if (ints) {
                if (i == LLONG_MIN && j == -1) return TYPE_ERR("line %d: integer overflow", line);
                long long q = i / j;
                if ((i % j != 0) && ((i < 0) != (j < 0))) q--;
                return json_integer(q);
            }
            return json_real(floor(x / y));
        }
        if (!strcmp(op, "%")) {
            if (y == 0) return TYPE_ERR("line %d: integer division or modulo by zero", line);
            if (ints) {
                if (j == -1) return json_integer(0);
                long long m = i % j;
                if (m && ((m < 0) != (j < 0))) m += j;
                return json_integer(m);
            }
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return json_real(m);
        }
        if (!strcmp(op, "**")) {
            if (ints && j >= 0) {
                long long acc = 1;
                for (long long k = 0; k < j; k++) {
                    if (__builtin_mul_overflow(acc, i, &acc)) return TYPE_ERR("line %d: integer overflow", line);
                    if (acc == 0 || acc == 1) break;
                }
                return json_integer(acc);
            }
            return json_real(pow(x, y));
        }
    }
    return TYPE_ERR("line %d: unsupported operand type(s) for %s: '%s' and '%s'", line, op, j_type(c, a), j_type(c, b));
}

/* ---- string helpers ---------------------------------------------------------------------------------- */

/* str.strip([chars]) */
static json_t *strip(jctx *c, json_t *s, json_t *chars, int left, int right) {
    const char *u = json_string_value(s), *cs = chars && json_is_string(chars) ? json_string_value(chars) : NULL;
    size_t n = json_string_length(s), a = 0, b = n, cn = cs ? json_string_length(chars) : 0;
    while (left && a < b) {
        int32_t cp;
        int l = u8next(u, b, a, &cp);
        if (!(cs ? memmem(cs, cn, u + a, (size_t)l) != NULL : py_space(cp))) break;
        a += (size_t)l;
    }
    while (right && b > a) {
        size_t q = b - 1;
        while (q > a && ((unsigned char)u[q] & 0xC0) == 0x80) q--;
        int32_t cp;
        u8next(u, b, q, &cp);
        if (!(cs ? memmem(cs, cn, u + q, b - q) != NULL : py_space(cp))) break;
        b = q;
    }
    return j_string(c, u + a, b - a);
}

static json_t *recase(jctx *c, json_t *s, char how) { /* upper / lower / capitalize / title (jinja's) / swapcase */
    const char *p = json_string_value(s);
    size_t n = json_string_length(s);
    lt_buf b = {0};
    int start = 1;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int l = u8next(p, n, i, &cp);
        char h = how;
        if (how == 'c') h = i == 0 ? 't' : 'l';
        else if (how == 'T') { /* jinja's title: words begin after - whitespace ( { [ < */ h = start ? 't' : 'l';
            start = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_space(cp);
        } else if (how == 'P') { /* Python's str.title(): words are runs of cased letters */
            int cased = utf8proc_toupper(cp) != cp || utf8proc_tolower(cp) != cp;
            h = start ? 't' : 'l';
            start = !cased;
        } else if (how == 's') h = utf8proc_toupper(cp) != cp ? 'u' : 'l';
        case_put(&b, cp, h);
        i += (size_t)l;
    }
    return buf_string(c, &b);
}

static json_t *replace(jctx *c, json_t *s, json_t *old, json_t *with, long long count) {
    lt_buf b = {0};
    const char *p = json_string_value(s), *o = json_string_value(old), *w = json_string_value(with);
    size_t n = json_string_length(s), on = json_string_length(old), wn = json_string_length(with), i = 0;
    if (!on) { /* Python inserts `with` between every character (and at both ends) */
        long long k = 0;
        for (size_t q = 0; q <= n; k++) {
            if (count < 0 || k < count) lt_buf_put(&b, w, wn);
            if (q == n) break;
            size_t e = u8off(p + q, n - q, 1);
            lt_buf_put(&b, p + q, e);
            q += e;
            if (b.n > (size_t)LT_JINJA_MAX_BYTES) break;
        }
        return buf_string(c, &b);
    }
    for (long long k = 0; i <= n; k++) {
        const char *hit = count < 0 || k < count ? memmem(p + i, n - i, o, on) : NULL;
        if (!hit) {
            lt_buf_put(&b, p + i, n - i);
            break;
        }
        lt_buf_put(&b, p + i, (size_t)(hit - (p + i)));
        lt_buf_put(&b, w, wn);
        i = (size_t)(hit - p) + on;
        if (b.n > (size_t)LT_JINJA_MAX_BYTES) break;
    }
    return buf_string(c, &b);
}

/* str.split(sep=None, maxsplit=-1) / rsplit */
static json_t *split(jctx *c, json_t *s, json_t *sepv, long long maxsplit, int from_right) {
    const char *p = json_string_value(s);
    size_t n = json_string_length(s);
    json_t *res = json_array();
    if (sepv && json_is_string(sepv)) {
        const char *sep = json_string_value(sepv);
        size_t sn = json_string_length(sepv);
        if (!sn) {
            json_decref(res);
            return TYPE_ERR("split: empty separator");
        }
        if (!from_right) {
            size_t i = 0;
            for (long long k = 0;; k++) {
                const char *hit = maxsplit < 0 || k < maxsplit ? memmem(p + i, n - i, sep, sn) : NULL;
                size_t e = hit ? (size_t)(hit - p) : n;
                json_array_append_new(res, json_stringn_nocheck(p + i, e - i));
                if (!hit) break;
                i = e + sn;
            }
        } else {
            size_t e = n;
            for (long long k = 0;; k++) {
                const char *hit = NULL;
                if (maxsplit < 0 || k < maxsplit)
                    for (size_t q = e >= sn ? e - sn + 1 : 0; q-- > 0;)
                        if (!memcmp(p + q, sep, sn)) {
                            hit = p + q;
                            break;
                        }
                size_t a = hit ? (size_t)(hit - p) + sn : 0;
                json_array_insert_new(res, 0, json_stringn_nocheck(p + a, e - a));
                if (!hit) break;
                e = (size_t)(hit - p);
            }
        }
        return res;
    }
    /* whitespace runs; empty strings never appear */
    if (!from_right) {
        size_t i = 0;
        for (long long k = 0; i < n; k++) {
            int32_t cp;
            while (i < n && (u8next(p, n, i, &cp), py_space(cp))) i += (size_t)u8next(p, n, i, &cp);
            if (i >= n) break;
            size_t e = i;
            if (maxsplit >= 0 && k >= maxsplit) {
                size_t t = n;
                json_array_append_new(res, json_stringn_nocheck(p + i, t - i));
                break;
            }
            while (e < n && (u8next(p, n, e, &cp), !py_space(cp))) e += (size_t)u8next(p, n, e, &cp);
            json_array_append_new(res, json_stringn_nocheck(p + i, e - i));
            i = e;
        }
        return res;
    }
    /* rsplit on whitespace: split all, then join the leftmost pieces back when maxsplit is exceeded */
    json_t *all = split(c, s, NULL, -1, 0);
    size_t m = json_array_size(all);
    if (maxsplit < 0 || (size_t)maxsplit >= m) {
        json_decref(res);
        return all;
    }
    /* the head keeps its original spacing: cut the string after the (m - maxsplit)th word */
    size_t keep = m - (size_t)maxsplit, i = 0, words = 0;
    int32_t cp;
    while (i < n && (u8next(p, n, i, &cp), py_space(cp))) i += (size_t)u8next(p, n, i, &cp);
    size_t head0 = i, e = i;
    for (; e < n && words < keep;) {
        while (e < n && (u8next(p, n, e, &cp), !py_space(cp))) e += (size_t)u8next(p, n, e, &cp);
        words++;
        if (words < keep)
            while (e < n && (u8next(p, n, e, &cp), py_space(cp))) e += (size_t)u8next(p, n, e, &cp);
    }
    json_array_append_new(res, json_stringn_nocheck(p + head0, e - head0));
    for (size_t k = keep; k < m; k++) json_array_append(res, json_array_get(all, k));
    json_decref(all);
    return res;
}

static json_t *splitlines(jctx *c, json_t *s, int keepends) {
    const char *p = json_string_value(s);
    size_t n = json_string_length(s), i = 0, start = 0;
    json_t *res = json_array();
    (void)c;
    while (i < n) {
        int32_t cp;
        int l = u8next(p, n, i, &cp);
        if (py_linebreak(cp)) {
            size_t e = i + (size_t)l;
            if (cp == '\r' && e < n && p[e] == '\n') e++;
            json_array_append_new(res, json_stringn_nocheck(p + start, (keepends ? e : i) - start));
            start = i = e;
        } else i += (size_t)l;
    }
    if (start < n) json_array_append_new(res, json_stringn_nocheck(p + start, n - start));
    return res;
}

/* str.format(*args, **kwargs): {} {0} {name} {name.attr} {0[key]} with an optional !r/!s and :spec
 * (the spec supports fill, align, width and .precision for strings and numbers) */
static json_t *str_format(jctx *c, json_t *fmt, jargs *a) {
    const char *f = json_string_value(fmt);
    size_t n = json_string_length(fmt);
    int auto_i = 0;
    lt_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (f[i] == '}' && i + 1 < n && f[i + 1] == '}') {
            lt_buf_putc(&b, '}');
            i++;
            continue;
        }
        if (f[i] != '{') {
            lt_buf_putc(&b, f[i]);
            continue;
        }
        if (i + 1 < n && f[i + 1] == '{') {
            lt_buf_putc(&b, '{');
            i++;
            continue;
        }
        size_t e = i + 1;
        while (e < n && f[e] != '}') e++;
        if (e >= n) {
            free(b.p);
            return TYPE_ERR("format: single '{' encountered in format string");
        }
        char *field = strndup(f + i + 1, e - i - 1), *spec = strchr(field, ':'), *conv = strchr(field, '!');
        if (spec) *spec++ = 0;
        if (conv && (!spec || conv < spec)) *conv++ = 0;
        else conv = NULL;
        /* the argument: index or name, then .attr / [key] parts */
        size_t k = strcspn(field, ".[");
        json_t *v;
        if (k == 0) v = auto_i < a->npos ? json_incref(a->pos[auto_i++]) : NULL;
        else if (isdigit((unsigned char)field[0])) {
            int idx = atoi(field);
            v = idx < a->npos ? json_incref(a->pos[idx]) : NULL;
        } else {
            char save = field[k];
            field[k] = 0;
            json_t *x = j_arg(a, field, -1);
            field[k] = save;
            v = x ? json_incref(x) : NULL;
        }
        for (char *q = field + k; v && *q;) {
            json_t *nv = NULL;
            if (*q == '.') {
                size_t l = strcspn(q + 1, ".[");
                json_t *name = json_stringn(q + 1, l);
                nv = j_getitem(c, v, name);
                json_decref(name);
                q += 1 + l;
            } else {
                char *cl = strchr(q, ']');
                if (!cl) break;
                char *key = strndup(q + 1, (size_t)(cl - q - 1));
                json_t *kv = isdigit((unsigned char)key[0]) ? json_integer(atoll(key)) : json_string(key);
                nv = j_getitem(c, v, kv);
                json_decref(kv);
                free(key);
                q = cl + 1;
            }
            json_decref(v);
            v = nv;
        }
        if (!v) {
            free(field);
            free(b.p);
            return TYPE_ERR("format: a replacement field names a missing argument");
        }
        lt_buf s = {0};
        int bad = conv && *conv == 'r' ? j_repr(c, &s, v) : 0;
        if (!(conv && *conv == 'r') && spec && *spec && is_num(v)) {
            /* a numeric spec: Python's mini-language maps onto printf for [fill][align][sign][0][width][.prec][type] */
            char pf[32] = "%", t = spec[strlen(spec) - 1];
            const char *sp = spec;
            int pn = 1;
            if (strchr("<>^=", sp[0]) == NULL && sp[1] && strchr("<>^=", sp[1])) sp += 2; /* fill+align: ignored */
            else if (strchr("<>^=", sp[0])) sp++;
            while (*sp && strchr("+- 0", *sp) && pn < 8) pf[pn++] = *sp++;
            while (*sp && (isdigit((unsigned char)*sp) || *sp == '.') && pn < 24) pf[pn++] = *sp++;
            char tmp[128];
            if (strchr("dxXob", t) && is_intlike(v)) {
                pf[pn++] = 'l';
                pf[pn++] = 'l';
                pf[pn++] = t == 'b' ? 'd' : t;
                pf[pn] = 0;
                snprintf(tmp, sizeof tmp, pf, intval(v));
            } else {
                pf[pn++] = strchr("eEfFgG%", t) ? (t == '%' ? 'f' : t) : 'g';
                pf[pn] = 0;
                snprintf(tmp, sizeof tmp, pf, numval(v) * (t == '%' ? 100 : 1));
                if (t == '%') strcat(tmp, "%");
            }
            lt_buf_puts(&s, tmp);
        } else if (!(conv && *conv == 'r')) bad = j_str(c, &s, v);
        if (!bad && spec && *spec && !is_num(v)) { /* [[fill]align][width][.precision] on text */
            char fill = ' ', align = '<';
            const char *sp = spec;
            if (sp[0] && sp[1] && strchr("<>^", sp[1])) {
                fill = sp[0];
                align = sp[1];
                sp += 2;
            } else if (strchr("<>^", sp[0])) align = *sp++;
            size_t width = (size_t)atoi(sp), len = u8len(s.p ? s.p : "", s.n);
            const char *dot = strchr(sp, '.');
            if (dot) {
                size_t prec = (size_t)atoi(dot + 1);
                if (prec < len) {
                    s.n = u8off(s.p, s.n, prec);
                    len = prec;
                }
            }
            size_t pad = width > len ? width - len : 0, lp = align == '>' ? pad : align == '^' ? pad / 2 : 0;
            for (size_t q = 0; q < lp; q++) lt_buf_putc(&b, fill);
            lt_buf_put(&b, s.p ? s.p : "", s.n);
            for (size_t q = lp; q < pad; q++) lt_buf_putc(&b, fill);
        } else if (!bad) lt_buf_put(&b, s.p ? s.p : "", s.n);
        free(s.p);
        json_decref(v);
        free(field);
        if (bad) {
            free(b.p);
            return NULL;
        }
        i = e;
    }
    return buf_string(c, &b);
}

static long long find(json_t *s, json_t *sub, int from_right) {
    const char *p = json_string_value(s), *q = json_string_value(sub);
    size_t n = json_string_length(s), m = json_string_length(sub);
    if (m > n) return -1;
    if (!from_right) {
        const char *hit = m ? memmem(p, n, q, m) : p;
        return hit ? (long long)u8len(p, (size_t)(hit - p)) : -1;
    }
    for (size_t i = n - m + 1; i-- > 0;)
        if (!memcmp(p + i, q, m)) return (long long)u8len(p, i);
    return -1;
}

/* ---- sorting (sort, dictsort, unique, min, max, groupby) ---------------------------------------------- */

typedef struct sortitem {
    json_t *key, *val;
    size_t idx;
} sortitem;
typedef struct sortctx {
    const jctx *c;
    int bad, reverse;
} sortctx;

static int item_cmp(sortctx *s, const sortitem *a, const sortitem *b) {
    int r = order(s->c, a->key, b->key);
    if (r == 2) {
        s->bad = 1;
        r = 0;
    }
    if (s->reverse) r = -r;
    return r ? r : (a->idx < b->idx ? -1 : a->idx > b->idx); /* stable */
}
static void merge_sort(sortctx *s, sortitem *v, sortitem *tmp, size_t n) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort(s, v, tmp, h);
    merge_sort(s, v + h, tmp, n - h);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = item_cmp(s, &v[i], &v[j]) <= 0 ? v[i++] : v[j++];
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

/* key of an item for sorting: the attribute(s) (dotted paths, comma-separated) and lower() for strings
 * when not case sensitive */
static json_t *attr_path(jctx *c, json_t *item, const char *path, json_t *deflt) {
    json_t *v = json_incref(item);
    const char *p = path;
    while (v && *p) {
        size_t l = strcspn(p, ".");
        char *part = strndup(p, l);
        json_t *k = isdigit((unsigned char)part[0]) ? json_integer(atoll(part)) : json_string(part);
        json_t *nv = j_getitem(c, v, k);
        json_decref(k);
        free(part);
        json_decref(v);
        v = nv;
        p += l + (p[l] == '.');
    }
    if (!v && deflt) v = json_incref(deflt);
    return v;
}
static json_t *sort_key(jctx *c, json_t *item, json_t *attr, int case_sensitive) {
    json_t *k;
    if (attr && json_is_string(attr) && strchr(json_string_value(attr), ',')) {
        k = json_array();
        char *all = strdup(json_string_value(attr)), *save = NULL;
        for (char *t = strtok_r(all, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            json_t *x = attr_path(c, item, t, NULL);
            if (x && json_is_string(x) && !case_sensitive) {
                json_t *l = recase(c, x, 'l');
                json_decref(x);
                x = l;
            }
            json_array_append_new(k, x ? x : json_null());
        }
        free(all);
        return k;
    }
    k = attr ? (is_intlike(attr)       ? j_getitem(c, item, attr)
                : json_is_string(attr) ? attr_path(c, item, json_string_value(attr), NULL)
                                       : NULL)
             : json_incref(item);
    if (k && json_is_string(k) && !case_sensitive) {
        json_t *l = recase(c, k, 'l');
        json_decref(k);
        k = l;
    }
    return k;
}

/* the items of seq sorted by key; out: a new list (pairs for dictsort) */
static json_t *sorted(jctx *c, json_t *items, json_t *keys, int reverse, int line) {
    size_t n = json_array_size(items);
    sortitem *v = calloc(n + 1, sizeof *v), *tmp = calloc(n + 1, sizeof *tmp);
    if (!v || !tmp) {
        free(v);
        free(tmp);
        return jerr(c, LT_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) v[i] = (sortitem){json_array_get(keys, i), json_array_get(items, i), i};
    sortctx s = {c, 0, reverse};
    merge_sort(&s, v, tmp, n);
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++) json_array_append(out, v[i].val);
    free(v);
    free(tmp);
    if (s.bad) {
        json_decref(out);
        return TYPE_ERR("line %d: sort: these values cannot be ordered", line);
    }
    return out;
}

/* ---- filters ---------------------------------------------------------------------------------------- */

static const char *const k_filters[] = {
    "abs",      "attr",       "batch",  "capitalize", "center",    "count",       "d",      "default",
    "dictsort", "e",          "escape", "first",      "float",     "forceescape", "format", "indent",
    "int",      "items",      "join",   "last",       "length",    "list",        "lower",  "map",
    "max",      "min",        "reject", "rejectattr", "replace",   "reverse",     "round",  "safe",
    "select",   "selectattr", "slice",  "sort",       "string",    "sum",         "title",  "tojson",
    "trim",     "truncate",   "unique", "upper",      "wordcount", "groupby",     NULL};
int j_has_filter(const char *name) {
    for (int i = 0; k_filters[i]; i++)
        if (!strcmp(k_filters[i], name)) return 1;
    return 0;
}

static json_t *soft_str(jctx *c, json_t *v) { /* jinja's soft_str: str(), Markup kept, Undefined -> '' */
    if (!v) return json_string("");
    return j_to_str(c, v);
}
static json_t *keep_markup(jctx *c, json_t *src, json_t *res) { /* a str method on Markup returns Markup */
    return res && jk_kind(c, src) == JK_MARKUP ? markup(c, res) : res;
}

/* select / reject / selectattr / rejectattr / map(filter) over a sequence: a generator */
static json_t *select_like(jctx *c, const char *name, json_t *v, jargs *a) {
    int is_map = !strcmp(name, "map"), attr = strstr(name, "attr") != NULL, want = name[0] == 's';
    json_t *l = j_truthy(c, v) ? j_list(c, v, a->line) : json_array(); /* jinja2: `if value:` guards the loop */
    if (!l) return NULL;
    json_t *res = json_array(), *x;
    size_t i;
    int first = 0;
    json_t *attrv = NULL, *deflt = NULL;
    const char *fname = NULL;
    if (is_map) {
        attrv = j_arg(a, "attribute", -1);
        deflt = j_arg(a, "default", -1);
        if (!attrv) {
            if (a->npos < 1 || !json_is_string(a->pos[0])) {
                json_decref(l);
                json_decref(res);
                return TYPE_ERR("line %d: map needs a filter name or attribute=", a->line);
            }
            fname = json_string_value(a->pos[0]);
            first = 1;
        }
    } else if (attr) {
        if (a->npos < 1) {
            json_decref(l);
            json_decref(res);
            return TYPE_ERR("line %d: %s needs an attribute", a->line, name);
        }
        attrv = a->pos[0];
        first = 1;
    }
    const char *tname = NULL;
    if (!is_map && a->npos > first) {
        if (!json_is_string(a->pos[first])) {
            json_decref(l);
            json_decref(res);
            return TYPE_ERR("line %d: %s: the test name must be a string", a->line, name);
        }
        tname = json_string_value(a->pos[first]);
        first++;
    }
    if (tname && !j_has_test(tname)) {
        json_decref(l);
        json_decref(res);
        return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the test \"%s\" is not supported", a->line, tname);
    }
    if (fname && !j_has_filter(fname)) {
        json_decref(l);
        json_decref(res);
        return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the filter \"%s\" is not supported", a->line, fname);
    }
    /* the remaining arguments go to the test or filter */
    jargs rest = {a->pos + first,
                  a->npos - first,
                  is_map && fname ? a->kwn : NULL,
                  is_map && fname ? a->kwv : NULL,
                  is_map && fname ? a->nkw : 0,
                  a->line,
                  NULL};
    json_array_foreach(l, i, x) {
        if (c->failed) break;
        json_t *val =
            attrv ? (json_is_string(attrv) ? attr_path(c, x, json_string_value(attrv), deflt) : j_getitem(c, x, attrv))
                  : json_incref(x);
        if (is_map) {
            json_t *r = fname ? j_filter(c, fname, val, &rest) : json_incref(val);
            if (!c->failed) json_array_append_new(res, r ? r : json_null());
            json_decref(val);
            continue;
        }
        int t = 0;
        if (tname) {
            if (j_test(c, tname, val, &rest, &t)) {
                json_decref(val);
                break;
            }
        } else t = j_truthy(c, val);
        if (t == want) json_array_append(res, x);
        json_decref(val);
    }
    json_decref(l);
    if (c->failed) {
        json_decref(res);
        return NULL;
    }
    return gen(c, res);
}

static json_t *indent(jctx *c, json_t *v, jargs *a) {
    json_t *s = soft_str(c, v), *w = j_arg(a, "width", 0);
    if (!s) return NULL;
    lt_buf ind = {0};
    if (w && json_is_string(w)) lt_buf_put(&ind, json_string_value(w), json_string_length(w));
    else {
        long long k = w && is_intlike(w) ? intval(w) : 4;
        for (long long i = 0; i < k && i < 4096; i++) lt_buf_putc(&ind, ' ');
    }
    if (!ind.p) lt_buf_puts(&ind, "");
    int first = arg_bool(c, a, "first", 1, 0), blank = arg_bool(c, a, "blank", 2, 0);
    /* s += "\n"; lines = s.splitlines() */
    json_t *nl = json_string("\n"), *s2 = j_binop(c, "~", s, nl, a->line);
    json_decref(nl);
    json_decref(s);
    if (!s2) {
        free(ind.p);
        return NULL;
    }
    json_t *lines = splitlines(c, s2, 0), *x;
    json_decref(s2);
    lt_buf b = {0};
    size_t i;
    if (first) lt_buf_put(&b, ind.p, ind.n);
    json_array_foreach(lines, i, x) {
        if (i) {
            lt_buf_putc(&b, '\n');
            if (blank || json_string_length(x)) lt_buf_put(&b, ind.p, ind.n);
        }
        lt_buf_put(&b, json_string_value(x), json_string_length(x));
    }
    json_decref(lines);
    free(ind.p);
    return keep_markup(c, v, buf_string(c, &b));
}

static json_t *to_int(jctx *c, json_t *v, jargs *a) {
    json_t *d = j_arg(a, "default", 0);
    long long base;
    if (arg_int(c, a, "base", 1, 10, &base)) return NULL;
    if (v && is_intlike(v)) return json_integer(intval(v));
    if (v && json_is_real(v)) {
        double x = json_real_value(v);
        if (isfinite(x) && fabs(x) < 9.2e18) return json_integer((long long)x);
    }
    if (v && json_is_string(v)) {
        /* int(s, base): whitespace around, a sign, underscores between digits; else int(float(s)) */
        char *s = strndup(json_string_value(v), json_string_length(v)), *t = s, *e;
        while (*t && isspace((unsigned char)*t)) t++;
        char *clean = calloc(strlen(t) + 1, 1);
        size_t k = 0;
        for (char *q = t; *q; q++)
            if (*q != '_') clean[k++] = *q;
        while (k && isspace((unsigned char)clean[k - 1])) clean[--k] = 0;
        errno = 0;
        long long r = strtoll(clean, &e, (int)base);
        int ok = k && *e == 0 && errno == 0 && (base != 10 || !strpbrk(clean, "xXoObB"));
        if (!ok) {
            double f = strtod(clean, &e);
            if (k && *e == 0 && isfinite(f) && fabs(f) < 9.2e18) {
                r = (long long)f;
                ok = 1;
            }
        }
        free(clean);
        free(s);
        if (ok) return json_integer(r);
    }
    return d ? json_incref(d) : json_integer(0);
}

static json_t *to_float(jctx *c, json_t *v, jargs *a) {
    json_t *d = j_arg(a, "default", 0);
    (void)c;
    if (v && is_num(v)) return json_real(numval(v));
    if (v && json_is_string(v)) {
        char *s = strndup(json_string_value(v), json_string_length(v)), *e;
        double f = strtod(s, &e);
        while (*e && isspace((unsigned char)*e)) e++;
        int ok = e != s && *e == 0 && !strpbrk(s, "xX");
        free(s);
        if (ok) return json_real(f);
    }
    return d ? json_incref(d) : json_real(0.0);
}

static json_t *round_filter(jctx *c, json_t *v, jargs *a) {
    long long prec;
    if (arg_int(c, a, "precision", 0, 0, &prec)) return NULL;
    const char *method = arg_str(a, "method", 1, "common");
    if (!v || !is_num(v)) return TYPE_ERR("line %d: round: a number is required", a->line);
    if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
        return TYPE_ERR("line %d: method must be common, ceil or floor", a->line);
    if (!strcmp(method, "common")) {
        if (is_intlike(v) && prec >= 0) return json_integer(intval(v)); /* round(int, n) is the int */
        double x = numval(v);
        if (prec == 0) return json_real(nearbyint(x));
        if (prec > 0 && prec < 30) { /* the correctly rounded decimal, half to even, as CPython */
            char tmp[400];
            snprintf(tmp, sizeof tmp, "%.*f", (int)prec, x);
            return json_real(strtod(tmp, NULL));
        }
        double p = pow(10, (double)-prec);
        return json_real(nearbyint(x / p) * p);
    }
    double p = pow(10, (double)prec), x = numval(v) * p;
    return json_real((method[0] == 'c' ? ceil(x) : floor(x)) / p);
}

static json_t *truncate_filter(jctx *c, json_t *v, jargs *a) {
    long long length, leeway;
    if (arg_int(c, a, "length", 0, 255, &length) || arg_int(c, a, "leeway", 3, 5, &leeway)) return NULL;
    int kill = arg_bool(c, a, "killwords", 1, 0);
    json_t *endv = j_arg(a, "end", 2);
    json_t *s = soft_str(c, v);
    if (!s) return NULL;
    const char *end = endv && json_is_string(endv) ? json_string_value(endv) : "...";
    size_t elen = u8len(end, strlen(end)), n = json_string_length(s), len = u8len(json_string_value(s), n);
    if (length < (long long)elen || leeway < 0) {
        json_decref(s);
        return TYPE_ERR("line %d: truncate: length must be at least len(end), leeway at least 0", a->line);
    }
    if ((long long)len <= length + leeway) return s;
    const char *p = json_string_value(s);
    size_t cut = u8off(p, n, (size_t)(length - (long long)elen));
    lt_buf b = {0};
    if (kill) lt_buf_put(&b, p, cut);
    else { /* rsplit(" ", 1)[0] */ size_t sp = cut;
        while (sp > 0 && p[sp - 1] != ' ') sp--;
        lt_buf_put(&b, p, sp ? sp - 1 : cut);
    }
    lt_buf_puts(&b, end);
    json_decref(s);
    return buf_string(c, &b);
}

static json_t *minmax(jctx *c, json_t *v, jargs *a, int want_max) {
    json_t *l = j_list(c, v, a->line);
    if (!l) return NULL;
    int cs = arg_bool(c, a, "case_sensitive", 0, 0);
    json_t *attr = j_arg(a, "attribute", 1), *best = NULL, *bestk = NULL, *x;
    size_t i;
    json_array_foreach(l, i, x) {
        json_t *k = sort_key(c, x, attr, cs);
        int r = bestk ? order(c, k, bestk) : want_max ? 1 : -1;
        if (r == 2) {
            json_decref(k);
            json_decref(bestk);
            json_decref(l);
            return TYPE_ERR("line %d: %s: these values cannot be compared", a->line, want_max ? "max" : "min");
        }
        if (want_max ? r > 0 : r < 0) {
            json_decref(bestk);
            bestk = k;
            best = x;
        } else json_decref(k);
    }
    json_decref(bestk);
    json_t *res = best ? json_incref(best) : NULL; /* an empty sequence: Undefined */
    json_decref(l);
    return res;
}

json_t *j_filter(jctx *c, const char *name, json_t *v, jargs *a) {
    jargs none = {0};
    if (!a) a = &none;
    int kv = jk_kind(c, v);
    if (!strcmp(name, "safe")) return markup(c, soft_str(c, v));
    if (!strcmp(name, "e") || !strcmp(name, "escape")) return html_escape(c, v ? v : json_string(""));
    if (!strcmp(name, "forceescape")) {
        json_t *s = soft_str(c, v), *r = NULL;
        if (s) r = html_escape(c, json_string_value(s) ? s : s);
        json_decref(s);
        return r;
    }
    if (!strcmp(name, "trim")) {
        json_t *s = soft_str(c, v), *r = s ? strip(c, s, j_arg(a, "chars", 0), 1, 1) : NULL;
        r = keep_markup(c, s, r);
        json_decref(s);
        return r;
    }
    if (!strcmp(name, "tojson")) { /* transformers: json.dumps(x, ensure_ascii, indent, separators, sort_keys) */
        json_t *ind = j_arg(a, "indent", 1), *seps = j_arg(a, "separators", 2);
        jdump o = {NULL, ", ", ": ", arg_bool(c, a, "sort_keys", 3, 0), arg_bool(c, a, "ensure_ascii", 0, 0)};
        lt_buf ib = {0};
        if (ind && !json_is_null(ind)) {
            if (json_is_string(ind)) lt_buf_put(&ib, json_string_value(ind), json_string_length(ind));
            else if (is_intlike(ind))
                for (long long k = 0; k < intval(ind) && k < 4096; k++) lt_buf_putc(&ib, ' ');
            if (!ib.p) lt_buf_puts(&ib, "");
            o.indent = ib.p;
            o.item_sep = ",";
        }
        if (seps && !json_is_null(seps)) {
            json_t *s0 = json_array_get(seps, 0), *s1 = json_array_get(seps, 1);
            if (!json_is_array(seps) || json_array_size(seps) != 2 || !json_is_string(s0) || !json_is_string(s1)) {
                free(ib.p);
                return TYPE_ERR("line %d: tojson: separators must be two strings", a->line);
            }
            o.item_sep = json_string_value(s0);
            o.key_sep = json_string_value(s1);
        }
        lt_buf b = {0};
        int bad = dump(c, &b, v, &o, 0);
        free(ib.p);
        if (bad) {
            free(b.p);
            return NULL;
        }
        return buf_string(c, &b);
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (!v) return json_integer(0);
        if (json_is_string(v)) return json_integer((json_int_t)u8len(json_string_value(v), json_string_length(v)));
        if (json_is_array(v) && kv != JK_GEN) return json_integer((json_int_t)json_array_size(v));
        if (json_is_object(v) && kv == JK_PLAIN) return json_integer((json_int_t)json_object_size(v));
        return TYPE_ERR("line %d: object of type '%s' has no len()", a->line, j_type(c, v));
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") || !strcmp(name, "title")) {
        json_t *s = soft_str(c, v), *r = s ? recase(c, s,
                                                    name[0] == 'u'   ? 'u'
                                                    : name[0] == 'l' ? 'l'
                                                    : name[0] == 'c' ? 'c'
                                                                     : 'T')
                                           : NULL;
        r = keep_markup(c, s, r);
        json_decref(s);
        return r;
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        json_t *dv = j_arg(a, "default_value", 0);
        if (!v || (arg_bool(c, a, "boolean", 1, 0) && !j_truthy(c, v))) return dv ? json_incref(dv) : json_string("");
        return json_incref(v);
    }
    if (!strcmp(name, "join")) {
        json_t *sep = j_arg(a, "d", 0), *attr = j_arg(a, "attribute", 1);
        json_t *l = j_list(c, v, a->line), *x;
        if (!l) return NULL;
        lt_buf b = {0};
        size_t i;
        int any_markup = sep && jk_kind(c, sep) == JK_MARKUP;
        json_array_foreach(l, i, x) {
            json_t *item =
                attr ? attr_path(c, x, json_is_string(attr) ? json_string_value(attr) : "", NULL) : json_incref(x);
            if (i && sep && j_str(c, &b, sep)) {
                json_decref(item);
                break;
            }
            any_markup |= jk_kind(c, item) == JK_MARKUP;
            int bad = j_str(c, &b, item);
            json_decref(item);
            if (bad) break;
        }
        json_decref(l);
        if (c->failed) {
            free(b.p);
            return NULL;
        }
        json_t *r = buf_string(c, &b);
        return any_markup ? markup(c, r) : r;
    }
    if (!strcmp(name, "first")) {
        if (v && json_is_array(v)) return json_array_size(v) ? json_incref(json_array_get(v, 0)) : NULL;
        json_t *l = j_list(c, v, a->line), *r = l && json_array_size(l) ? json_incref(json_array_get(l, 0)) : NULL;
        json_decref(l);
        return r;
    }
    if (!strcmp(name, "last")) {
        if (kv == JK_GEN) return TYPE_ERR("line %d: 'generator' object is not reversible", a->line);
        json_t *l = j_list(c, v, a->line), *r = NULL;
        size_t n = l ? json_array_size(l) : 0;
        if (n) r = json_incref(json_array_get(l, n - 1));
        json_decref(l);
        return r;
    }
    if (!strcmp(name, "string")) return soft_str(c, v);
    if (!strcmp(name, "list")) return j_list(c, v, a->line);
    if (!strcmp(name, "int")) return to_int(c, v, a);
    if (!strcmp(name, "float")) return to_float(c, v, a);
    if (!strcmp(name, "abs")) {
        if (v && is_intlike(v))
            return intval(v) == LLONG_MIN ? TYPE_ERR("integer overflow") : json_integer(llabs(intval(v)));
        if (v && json_is_real(v)) return json_real(fabs(json_real_value(v)));
        return TYPE_ERR("line %d: bad operand type for abs(): '%s'", a->line, j_type(c, v));
    }
    if (!strcmp(name, "replace")) {
        json_t *o = j_arg(a, "old", 0), *n = j_arg(a, "new", 1);
        long long count;
        if (arg_int(c, a, "count", 2, -1, &count)) return NULL;
        json_t *s = soft_str(c, v);
        if (!s) return NULL;
        json_t *os = o ? j_to_str(c, o) : NULL, *ns = n ? j_to_str(c, n) : NULL, *r = NULL;
        if (!os || !ns) TYPE_ERR("line %d: replace needs the old and the new string", a->line);
        else if (kv == JK_MARKUP) { /* Markup.replace escapes its arguments */
            json_t *eo = html_escape(c, os), *en = html_escape(c, ns);
            r = eo && en ? markup(c, replace(c, s, eo, en, count)) : NULL;
            json_decref(eo);
            json_decref(en);
        } else r = replace(c, s, os, ns, count);
        json_decref(os);
        json_decref(ns);
        json_decref(s);
        return r;
    }
    if (!strcmp(name, "reverse")) {
        if (v && json_is_string(v)) {
            json_t *l = j_list(c, v, a->line), *x;
            lt_buf b = {0};
            for (size_t i = json_array_size(l); i > 0; i--) {
                x = json_array_get(l, i - 1);
                lt_buf_put(&b, json_string_value(x), json_string_length(x));
            }
            json_decref(l);
            return keep_markup(c, v, buf_string(c, &b));
        }
        json_t *l = j_list(c, v, a->line);
        if (!l) return NULL;
        json_t *r = json_array();
        for (size_t i = json_array_size(l); i > 0; i--) json_array_append(r, json_array_get(l, i - 1));
        json_decref(l);
        return kv == JK_GEN ? r : gen(c, r); /* reversed(seq) is an iterator; a generator becomes a list */
    }
    if (!strcmp(name, "items")) {
        if (!v) return gen(c, json_array());
        if (!json_is_object(v) || kv != JK_PLAIN)
            return TYPE_ERR("line %d: Can only get item pairs from a mapping.", a->line);
        json_t *r = json_array(), *x;
        const char *k;
        json_object_foreach(v, k, x) json_array_append_new(r, pair(c, j_unkey(k), json_incref(x)));
        return gen(c, r);
    }
    if (!strcmp(name, "dictsort")) {
        if (!v || !json_is_object(v) || kv != JK_PLAIN)
            return TYPE_ERR("line %d: dictsort: a mapping is required", a->line);
        int cs = arg_bool(c, a, "case_sensitive", 0, 0), rev = arg_bool(c, a, "reverse", 2, 0);
        const char *by = arg_str(a, "by", 1, "key");
        if (strcmp(by, "key") && strcmp(by, "value"))
            return TYPE_ERR("line %d: You can only sort by either \"key\" or \"value\"", a->line);
        json_t *items = json_array(), *keys = json_array(), *x;
        const char *k;
        json_object_foreach(v, k, x) {
            json_t *p = pair(c, j_unkey(k), json_incref(x));
            json_array_append_new(items, p);
            json_array_append_new(keys, sort_key(c, by[0] == 'k' ? json_array_get(p, 0) : x, NULL, cs));
        }
        json_t *r = sorted(c, items, keys, rev, a->line);
        json_decref(items);
        json_decref(keys);
        return r;
    }
    if (!strcmp(name, "sort") || !strcmp(name, "unique")) {
        int uniq = name[0] == 'u';
        json_t *l = j_list(c, v, a->line), *x;
        if (!l) return NULL;
        int rev = uniq ? 0 : arg_bool(c, a, "reverse", 0, 0), cs = arg_bool(c, a, "case_sensitive", uniq ? 0 : 1, 0);
        json_t *attr = j_arg(a, "attribute", uniq ? 1 : 2), *keys = json_array();
        size_t i;
        json_array_foreach(l, i, x) json_array_append_new(keys, sort_key(c, x, attr, cs));
        json_t *r;
        if (uniq) { /* first occurrence of each key, in order: a generator */
            r = json_array();
            json_array_foreach(l, i, x) {
                int seen = 0;
                for (size_t k = 0; k < i && !seen; k++)
                    seen = j_equal(c, json_array_get(keys, k), json_array_get(keys, i));
                if (!seen) json_array_append(r, x);
            }
            r = gen(c, r);
        } else r = sorted(c, l, keys, rev, a->line);
        json_decref(l);
        json_decref(keys);
        return r;
    }
    if (!strcmp(name, "max") || !strcmp(name, "min")) return minmax(c, v, a, name[1] == 'a');
    if (!strcmp(name, "sum")) {
        json_t *attr = j_arg(a, "attribute", 0), *start = j_arg(a, "start", 1);
        json_t *l = j_list(c, v, a->line), *x, *acc = start ? json_incref(start) : json_integer(0);
        size_t i;
        json_array_foreach(l, i, x) {
            json_t *item = attr ? sort_key(c, x, attr, 1) : json_incref(x), *nacc = j_binop(c, "+", acc, item, a->line);
            json_decref(item);
            json_decref(acc);
            acc = nacc;
            if (!acc) break;
        }
        json_decref(l);
        return acc;
    }
    if (!strcmp(name, "map") || !strcmp(name, "select") || !strcmp(name, "reject") || !strcmp(name, "selectattr") ||
        !strcmp(name, "rejectattr"))
        return select_like(c, name, v, a);
    if (!strcmp(name, "indent")) return indent(c, v, a);
    if (!strcmp(name, "center")) {
        long long w;
        if (arg_int(c, a, "width", 0, 80, &w)) return NULL;
        json_t *s = soft_str(c, v);
        size_t len = u8len(json_string_value(s), json_string_length(s));
        if (w <= (long long)len || w > LT_JINJA_MAX_BYTES) return s;
        long long marg = w - (long long)len, left = marg / 2 + (marg & w & 1);
        lt_buf b = {0};
        for (long long k = 0; k < left; k++) lt_buf_putc(&b, ' ');
        lt_buf_put(&b, json_string_value(s), json_string_length(s));
        for (long long k = left; k < marg; k++) lt_buf_putc(&b, ' ');
        json_decref(s);
        return buf_string(c, &b);
    }
    if (!strcmp(name, "format")) {
        json_t *s = soft_str(c, v);
        if (!s) return NULL;
        json_t *args;
        if (a->nkw) {
            if (a->npos) {
                json_decref(s);
                return TYPE_ERR("line %d: format: positional and keyword arguments cannot be mixed", a->line);
            }
            args = json_object();
            for (int i = 0; i < a->nkw; i++) json_object_set(args, a->kwn[i], a->kwv[i]);
        } else {
            args = json_array();
            for (int i = 0; i < a->npos; i++) json_array_append(args, a->pos[i]);
            args = tuple(c, args);
        }
        json_t *r = percent_format(c, s, args, a->line);
        json_decref(args);
        json_decref(s);
        return r;
    }
    if (!strcmp(name, "truncate")) return truncate_filter(c, v, a);
    if (!strcmp(name, "round")) return round_filter(c, v, a);
    if (!strcmp(name, "wordcount")) {
        json_t *s = soft_str(c, v);
        const char *p = json_string_value(s);
        size_t n = json_string_length(s), words = 0;
        int in = 0;
        for (size_t i = 0; i < n;) {
            int32_t cp;
            i += (size_t)u8next(p, n, i, &cp);
            int w = is_word(cp);
            words += w && !in;
            in = w;
        }
        json_decref(s);
        return json_integer((json_int_t)words);
    }
    if (!strcmp(name, "attr")) {
        json_t *nm = j_arg(a, "name", 0);
        if (!nm || !json_is_string(nm)) return TYPE_ERR("line %d: attr needs a name", a->line);
        return kv == JK_PLAIN ? NULL
                              : j_getattr(c, v, json_string_value(nm)); /* a dict's keys are items, not attributes */
    }
    if (!strcmp(name, "batch") || !strcmp(name, "slice")) {
        long long k;
        if (arg_int(c, a, name[0] == 'b' ? "linecount" : "slices", 0, 1, &k)) return NULL;
        json_t *fill = j_arg(a, "fill_with", 1), *l = j_list(c, v, a->line);
        if (!l) return NULL;
        if (k <= 0) {
            json_decref(l);
            return TYPE_ERR("line %d: %s needs a positive count", a->line, name);
        }
        json_t *r = json_array();
        size_t n = json_array_size(l);
        if (name[0] == 'b') {
            for (size_t i = 0; i < n; i += (size_t)k) {
                json_t *row = json_array();
                for (size_t j = i; j < i + (size_t)k; j++) {
                    if (j < n) json_array_append(row, json_array_get(l, j));
                    else if (fill) json_array_append(row, fill);
                }
                json_array_append_new(r, row);
            }
        } else { /* jinja's do_slice: k columns, the first `n % k` one longer */
            size_t per = n / (size_t)k, extra = n % (size_t)k, off = 0;
            for (size_t s = 0; s < (size_t)k; s++) {
                size_t start = off, end = off + per + (s < extra);
                json_t *col = json_array();
                for (size_t j = start; j < end; j++) json_array_append(col, json_array_get(l, j));
                if (fill && s >= extra && extra) json_array_append(col, fill);
                off = end;
                json_array_append_new(r, col);
            }
        }
        json_decref(l);
        return gen(c, r);
    }
    if (!strcmp(name, "groupby")) { /* list of (grouper, list) sorted by the grouper */
        json_t *attr = j_arg(a, "attribute", 0), *deflt = j_arg(a, "default", 1);
        int cs = arg_bool(c, a, "case_sensitive", 2, 0);
        json_t *l = j_list(c, v, a->line), *x, *keys = json_array();
        if (!l || !attr) {
            json_decref(l);
            json_decref(keys);
            return l ? TYPE_ERR("line %d: groupby needs an attribute", a->line) : NULL;
        }
        size_t i;
        json_array_foreach(l, i, x) {
            json_t *k = json_is_string(attr) ? attr_path(c, x, json_string_value(attr), deflt) : j_getitem(c, x, attr);
            if (k && json_is_string(k) && !cs) {
                json_t *lk = recase(c, k, 'l');
                json_decref(k);
                k = lk;
            }
            json_array_append_new(keys, k ? k : json_null());
        }
        json_t *idx = json_array();
        json_array_foreach(l, i, x) json_array_append_new(idx, json_integer((json_int_t)i));
        json_t *order_ = sorted(c, idx, keys, 0, a->line), *r = json_array();
        if (order_) {
            json_t *cur = NULL, *grp = NULL;
            json_array_foreach(order_, i, x) {
                size_t k = (size_t)json_integer_value(x);
                json_t *key = json_array_get(keys, k);
                if (!grp || !j_equal(c, cur, key)) {
                    grp = json_array();
                    cur = key;
                    json_array_append_new(r, pair(c, json_incref(key), grp));
                }
                json_array_append(grp, json_array_get(l, k));
            }
        }
        json_decref(order_);
        json_decref(idx);
        json_decref(keys);
        json_decref(l);
        if (c->failed) {
            json_decref(r);
            return NULL;
        }
        return r;
    }
    return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the filter \"%s\" is not supported", a->line, name);
}

/* ---- tests ---------------------------------------------------------------------------------------------- */

static const char *const k_tests[] = {
    "boolean",  "callable", "defined",  "divisibleby", "eq",          "equalto", "escaped", "even",
    "false",    "filter",   "float",    "ge",          "greaterthan", "gt",      "in",      "integer",
    "iterable", "le",       "lessthan", "lower",       "lt",          "mapping", "ne",      "none",
    "number",   "odd",      "sameas",   "sequence",    "string",      "test",    "true",    "undefined",
    "upper",    "==",       "!=",       "<",           "<=",          ">",       ">=",      NULL};
int j_has_test(const char *name) {
    for (int i = 0; k_tests[i]; i++)
        if (!strcmp(k_tests[i], name)) return 1;
    return 0;
}

static int all_cased(json_t *v, int upper) { /* str.isupper / islower */
    const char *p = json_string_value(v);
    size_t n = json_string_length(v);
    int cased = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += (size_t)u8next(p, n, i, &cp);
        int up = utf8proc_tolower(cp) != cp, lo = utf8proc_toupper(cp) != cp;
        if (upper ? lo : up) return 0;
        cased |= up | lo;
    }
    return cased;
}

int j_test(jctx *c, const char *name, json_t *v, jargs *a, int *res) {
    jargs none = {0};
    if (!a) a = &none;
    json_t *arg = a->npos ? a->pos[0] : a->nkw ? a->kwv[0] : NULL;
    int k = jk_kind(c, v);
    if (!strcmp(name, "defined")) *res = v != NULL;
    else if (!strcmp(name, "undefined")) *res = v == NULL;
    else if (!strcmp(name, "none")) *res = v && json_is_null(v);
    else if (!strcmp(name, "string")) *res = v && json_is_string(v);
    else if (!strcmp(name, "number")) *res = v && is_num(v);
    else if (!strcmp(name, "integer")) *res = v && json_is_integer(v);
    else if (!strcmp(name, "float")) *res = v && json_is_real(v);
    else if (!strcmp(name, "boolean")) *res = v && json_is_boolean(v);
    else if (!strcmp(name, "true")) *res = v && json_is_true(v);
    else if (!strcmp(name, "false")) *res = v && json_is_false(v);
    else if (!strcmp(name, "mapping")) *res = v && json_is_object(v) && k == JK_PLAIN;
    else if (!strcmp(name, "sequence"))
        *res = v && (json_is_string(v) || (json_is_array(v) && k != JK_GEN) || (json_is_object(v) && k == JK_PLAIN));
    else if (!strcmp(name, "iterable"))
        *res = v && (json_is_string(v) || json_is_array(v) || (json_is_object(v) && k == JK_PLAIN));
    else if (!strcmp(name, "callable")) *res = k == JK_MACRO || k == JK_FUNC;
    else if (!strcmp(name, "escaped")) *res = k == JK_MARKUP;
    else if (!strcmp(name, "lower") || !strcmp(name, "upper"))
        *res = v && json_is_string(v) && all_cased(v, name[0] == 'u');
    else if (!strcmp(name, "filter")) *res = v && json_is_string(v) && j_has_filter(json_string_value(v));
    else if (!strcmp(name, "test")) *res = v && json_is_string(v) && j_has_test(json_string_value(v));
    else if (!strcmp(name, "sameas")) /* Python `is`: the same object (None, True and False are singletons) */
        *res = v == arg || (v && arg && json_is_null(v) && json_is_null(arg)) ||
               (v && arg && json_is_boolean(v) && json_typeof(v) == json_typeof(arg));
    else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!v || !is_intlike(v)) return jerri(c, LT_ERR_DATA, "line %d: \"is %s\" needs an integer", a->line, name);
        *res = (intval(v) % 2 != 0) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        if (!v || !is_num(v) || !arg || !is_num(arg)) return jerri(c, LT_ERR_DATA, "line %d: bad divisibleby", a->line);
        json_t *m = j_binop(c, "%", v, arg, a->line);
        if (!m) return -1;
        *res = numval(m) == 0;
        json_decref(m);
    } else {
        const char *op = !strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")      ? "=="
                         : !strcmp(name, "ne") || !strcmp(name, "!=")                                ? "!="
                         : !strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "<")    ? "<"
                         : !strcmp(name, "le") || !strcmp(name, "<=")                                ? "<="
                         : !strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, ">") ? ">"
                         : !strcmp(name, "ge") || !strcmp(name, ">=")                                ? ">="
                         : !strcmp(name, "in")                                                       ? "in"
                                                                                                     : NULL;
        if (!op) return jerri(c, LT_ERR_UNSUPPORTED, "line %d: the test \"is %s\" is not supported", a->line, name);
        if (!n_args(a)) return jerri(c, LT_ERR_DATA, "line %d: the test \"is %s\" needs an argument", a->line, name);
        int r = j_compare(c, op, v, arg, a->line);
        if (r < 0) return -1;
        *res = r;
    }
    return 0;
}

/* ---- methods ------------------------------------------------------------------------------------------ */

static json_t *str_method(jctx *c, json_t *s, const char *m, jargs *a) {
    const char *p = json_string_value(s);
    size_t n = json_string_length(s);
    json_t *a0 = j_arg(a, NULL, 0);
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
        return keep_markup(c, s, strip(c, s, j_arg(a, "chars", 0), m[0] != 'r', m[0] != 'l'));
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        json_t *list = a0 && json_is_array(a0) ? json_incref(a0) : json_array(), *x;
        if (a0 && json_is_string(a0)) json_array_append(list, a0);
        else if (!a0 || !json_is_array(a0)) {
            json_decref(list);
            return TYPE_ERR("line %d: %s arg must be str or a tuple of str", a->line, m);
        }
        size_t i;
        int hit = 0;
        json_array_foreach(list, i, x) {
            if (!json_is_string(x)) continue;
            size_t k = json_string_length(x);
            if (k <= n && !memcmp(m[0] == 's' ? p : p + n - k, json_string_value(x), k)) hit = 1;
        }
        json_decref(list);
        return json_boolean(hit);
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        long long maxsplit;
        if (arg_int(c, a, "maxsplit", 1, -1, &maxsplit)) return NULL;
        json_t *sep = j_arg(a, "sep", 0);
        if (sep && json_is_null(sep)) sep = NULL;
        if (sep && !json_is_string(sep)) return TYPE_ERR("line %d: must be str or None", a->line);
        return split(c, s, sep, maxsplit, m[0] == 'r');
    }
    if (!strcmp(m, "splitlines")) return splitlines(c, s, arg_bool(c, a, "keepends", 0, 0));
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") || !strcmp(m, "capitalize") ||
        !strcmp(m, "swapcase") || !strcmp(m, "casefold"))
        return keep_markup(c, s,
                           recase(c, s,
                                  !strcmp(m, "upper")                             ? 'u'
                                  : !strcmp(m, "lower") || !strcmp(m, "casefold") ? 'l'
                                  : !strcmp(m, "title")                           ? 'P'
                                  : !strcmp(m, "capitalize")                      ? 'c'
                                                                                  : 's'));
    if (!strcmp(m, "replace")) {
        json_t *o = j_arg(a, "old", 0), *w = j_arg(a, "new", 1);
        long long count;
        if (arg_int(c, a, "count", 2, -1, &count)) return NULL;
        if (!o || !w || !json_is_string(o) || !json_is_string(w))
            return TYPE_ERR("line %d: replace needs two strings", a->line);
        return keep_markup(c, s, replace(c, s, o, w, count));
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex")) {
        if (!a0 || !json_is_string(a0)) return TYPE_ERR("line %d: %s needs a string", a->line, m);
        long long r = find(s, a0, m[0] == 'r');
        if (r < 0 && strstr(m, "index")) return TYPE_ERR("line %d: substring not found", a->line);
        return json_integer(r);
    }
    if (!strcmp(m, "count")) {
        if (!a0 || !json_is_string(a0)) return TYPE_ERR("line %d: count needs a string", a->line);
        size_t k = json_string_length(a0), cnt = 0;
        if (!k) return json_integer((json_int_t)u8len(p, n) + 1);
        for (const char *q = p; (q = memmem(q, n - (size_t)(q - p), json_string_value(a0), k)); q += k) cnt++;
        return json_integer((json_int_t)cnt);
    }
    if (!strcmp(m, "format")) return keep_markup(c, s, str_format(c, s, a));
    if (!strcmp(m, "join")) {
        json_t *l = j_list(c, a0, a->line), *x;
        if (!l) return NULL;
        lt_buf b = {0};
        size_t i;
        json_array_foreach(l, i, x) {
            if (!json_is_string(x)) {
                json_decref(l);
                free(b.p);
                return TYPE_ERR("line %d: sequence item %zu: expected str instance, %s found", a->line, i,
                                j_type(c, x));
            }
            if (i) lt_buf_put(&b, p, n);
            lt_buf_put(&b, json_string_value(x), json_string_length(x));
        }
        json_decref(l);
        return keep_markup(c, s, buf_string(c, &b));
    }
    if (!strcmp(m, "isdigit") || !strcmp(m, "isdecimal") || !strcmp(m, "isnumeric") || !strcmp(m, "isalpha") ||
        !strcmp(m, "isalnum") || !strcmp(m, "isspace")) {
        int ok = n > 0;
        for (size_t i = 0; i < n && ok;) {
            int32_t cp;
            i += (size_t)u8next(p, n, i, &cp);
            utf8proc_category_t k = utf8proc_category(cp);
            ok = m[2] == 'd' || m[3] == 'c' ? k == UTF8PROC_CATEGORY_ND
                 : m[2] == 'n'              ? is_numeric(cp)
                 : m[2] == 's'              ? py_space(cp)
                 : m[4] == 'p'              ? is_alpha(cp)
                                            : is_alpha(cp) || is_numeric(cp);
        }
        return json_boolean(ok);
    }
    if (!strcmp(m, "isupper") || !strcmp(m, "islower")) return json_boolean(all_cased(s, m[2] == 'u'));
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        if (!a0 || !json_is_string(a0)) return TYPE_ERR("line %d: %s needs a string", a->line, m);
        size_t k = json_string_length(a0);
        if (k <= n && !memcmp(m[6] == 'p' ? p : p + n - k, json_string_value(a0), k))
            return keep_markup(c, s, j_string(c, m[6] == 'p' ? p + k : p, n - k));
        return json_incref(s);
    }
    if (!strcmp(m, "ljust") || !strcmp(m, "rjust") || !strcmp(m, "center") || !strcmp(m, "zfill")) {
        long long w;
        if (arg_int(c, a, "width", 0, 0, &w)) return NULL;
        json_t *fc = j_arg(a, "fillchar", 1);
        const char *fill = fc && json_is_string(fc) ? json_string_value(fc) : m[0] == 'z' ? "0" : " ";
        size_t len = u8len(p, n);
        if (w <= (long long)len || w > LT_JINJA_MAX_BYTES) return json_incref(s);
        long long marg = w - (long long)len, left = m[0] == 'r' || m[0] == 'z' ? marg
                                                    : m[0] == 'l'              ? 0
                                                                               : marg / 2 + (marg & w & 1);
        lt_buf b = {0};
        size_t start = 0;
        if (m[0] == 'z' && n && (p[0] == '-' || p[0] == '+')) {
            lt_buf_putc(&b, p[0]);
            start = 1;
        }
        for (long long k = 0; k < left; k++) lt_buf_puts(&b, fill);
        lt_buf_put(&b, p + start, n - start);
        for (long long k = left; k < marg; k++) lt_buf_puts(&b, fill);
        return buf_string(c, &b);
    }
    if (!strcmp(m, "partition") || !strcmp(m, "rpartition")) {
        if (!a0 || !json_is_string(a0) || !json_string_length(a0)) return TYPE_ERR("line %d: bad separator", a->line);
        long long at = find(s, a0, m[0] == 'r');
        json_t *t = json_array();
        if (at < 0) {
            json_array_append_new(t, m[0] == 'r' ? json_string("") : json_incref(s));
            json_array_append_new(t, json_string(""));
            json_array_append_new(t, m[0] == 'r' ? json_incref(s) : json_string(""));
        } else {
            size_t o = u8off(p, n, (size_t)at), k = json_string_length(a0);
            json_array_append_new(t, json_stringn_nocheck(p, o));
            json_array_append(t, a0);
            json_array_append_new(t, json_stringn_nocheck(p + o + k, n - o - k));
        }
        return tuple(c, t);
    }
    return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the method str.%s() is not supported", a->line, m);
}

json_t *j_method(jctx *c, json_t *obj, const char *m, jargs *a) {
    int k = jk_kind(c, obj);
    if (obj && json_is_string(obj)) return str_method(c, obj, m, a);
    if (obj && json_is_object(obj) && k == JK_PLAIN) {
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            json_t *res = json_array(), *x;
            const char *key;
            json_object_foreach(obj, key, x) {
                if (m[0] == 'k') json_array_append_new(res, j_unkey(key));
                else if (m[0] == 'v') json_array_append(res, x);
                else json_array_append_new(res, pair(c, j_unkey(key), json_incref(x)));
            }
            return res;
        }
        if (!strcmp(m, "get")) {
            json_t *key = j_arg(a, "key", 0), *d = j_arg(a, "default", 1);
            json_t *v = key ? dict_get(c, obj, key) : NULL;
            if (c->failed) return NULL;
            return v ? json_incref(v) : d ? json_incref(d) : json_null();
        }
        if (!strcmp(m, "copy")) return json_copy(obj);
    }
    if (obj && json_is_array(obj) && k != JK_GEN) {
        if (!strcmp(m, "index") || !strcmp(m, "count")) {
            json_t *x, *a0 = j_arg(a, NULL, 0);
            size_t i, cnt = 0;
            json_array_foreach(obj, i, x) if (j_equal(c, x, a0)) {
                if (m[0] == 'i') return json_integer((json_int_t)i);
                cnt++;
            }
            return m[0] == 'i' ? TYPE_ERR("line %d: x not in list", a->line) : json_integer((json_int_t)cnt);
        }
        if (!strcmp(m, "copy") && k == JK_PLAIN) return json_copy(obj);
    }
    if (obj && (json_is_array(obj) || json_is_object(obj)) &&
        (!strcmp(m, "append") || !strcmp(m, "extend") || !strcmp(m, "insert") || !strcmp(m, "pop") ||
         !strcmp(m, "remove") || !strcmp(m, "clear") || !strcmp(m, "update") || !strcmp(m, "setdefault") ||
         !strcmp(m, "popitem") || !strcmp(m, "sort") || !strcmp(m, "reverse")))
        return jerr(c, LT_ERR_DATA, "line %d: %s.%s() modifies a value: the sandbox of transformers forbids it",
                    a->line, j_type(c, obj), m);
    if (!obj) return jerr(c, LT_ERR_DATA, "line %d: '%s' is undefined (calling %s())", a->line, m, m);
    return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the method %s.%s() is not supported", a->line, j_type(c, obj), m);
}

/* ---- global functions ----------------------------------------------------------------------------------- */

static const char *const k_globals[] = {"raise_exception", "strftime_now", "namespace", "range", "dict", NULL};
int j_is_global(const char *name) {
    for (int i = 0; k_globals[i]; i++)
        if (!strcmp(k_globals[i], name)) return 1;
    return 0;
}

json_t *j_call_global(jctx *c, const char *name, jargs *a) {
    if (!strcmp(name, "raise_exception")) {
        lt_buf b = {0};
        json_t *m = j_arg(a, "message", 0);
        if (!j_str(c, &b, m) && !c->failed) {
            c->failed = 1;
            lt_fail(c->err, LT_ERR_DATA, "chat template raised an exception: %.*s", (int)b.n, b.p ? b.p : "");
        }
        free(b.p);
        return NULL;
    }
    if (!strcmp(name, "strftime_now")) {
        json_t *f = j_arg(a, "format", 0);
        if (!f || !json_is_string(f)) return TYPE_ERR("line %d: strftime_now needs a format string", a->line);
        struct tm tm;
        if (c->now_utc) gmtime_r(&c->now, &tm);
        else localtime_r(&c->now, &tm);
        char out[512] = "";
        locale_t cl = newlocale(LC_ALL_MASK, "C", (locale_t)0); /* the names of the C locale, as Python's */
        size_t n = cl ? strftime_l(out, sizeof out, json_string_value(f), &tm, cl)
                      : strftime(out, sizeof out, json_string_value(f), &tm);
        if (cl) freelocale(cl);
        return j_string(c, out, n);
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        json_t *o = json_object();
        for (int i = 0; i < a->npos; i++) { /* dict(mapping) / dict(pairs), then the keywords */
            json_t *x = a->pos[i];
            if (i > 0) {
                json_decref(o);
                return TYPE_ERR("line %d: %s expected at most 1 positional argument", a->line, name);
            }
            if (json_is_object(x) && jk_kind(c, x) != JK_GEN) json_object_update(o, x);
            else if (json_is_array(x)) {
                size_t q;
                json_t *p;
                json_array_foreach(x, q, p) {
                    char *key = json_is_array(p) && json_array_size(p) == 2 ? j_key(c, json_array_get(p, 0)) : NULL;
                    if (!key) {
                        json_decref(o);
                        return c->failed
                                   ? NULL
                                   : TYPE_ERR("line %d: %s: each item must be a (key, value) pair", a->line, name);
                    }
                    json_object_set(o, key, json_array_get(p, 1));
                    free(key);
                }
            } else {
                json_decref(o);
                return TYPE_ERR("line %d: %s: '%s' object is not iterable", a->line, name, j_type(c, x));
            }
        }
        for (int i = 0; i < a->nkw; i++) {
            if (name[0] == 'n' && a->kwn[i][0] == '_') {
                json_decref(o);
                return TYPE_ERR("line %d: Chat templates cannot store underscore-prefixed attributes on a namespace",
                                a->line);
            }
            json_object_set(o, a->kwn[i], a->kwv[i]);
        }
        return name[0] == 'n' ? jk_tag(c, o, JK_NS, NULL) : o;
    }
    if (!strcmp(name, "range")) {
        long long lo = 0, hi, st = 1;
        if (a->nkw || a->npos < 1 || a->npos > 3) return TYPE_ERR("line %d: range takes 1 to 3 integers", a->line);
        for (int i = 0; i < a->npos; i++)
            if (!is_intlike(a->pos[i]))
                return TYPE_ERR("line %d: range: '%s' object cannot be interpreted as an integer", a->line,
                                j_type(c, a->pos[i]));
        if (a->npos == 1) hi = intval(a->pos[0]);
        else {
            lo = intval(a->pos[0]);
            hi = intval(a->pos[1]);
            if (a->npos == 3) st = intval(a->pos[2]);
        }
        if (st == 0) return TYPE_ERR("line %d: range() arg 3 must not be zero", a->line);
        long double cnt = st > 0 ? ((long double)hi - lo) / st : ((long double)lo - hi) / -st;
        if (cnt > 100000) /* jinja2's sandbox: MAX_RANGE */
            return TYPE_ERR("line %d: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).",
                            a->line);
        json_t *l = json_array();
        for (long long i = lo; st > 0 ? i < hi : i > hi; i += st) json_array_append_new(l, json_integer(i));
        return l;
    }
    return jerr(c, LT_ERR_UNSUPPORTED, "line %d: the function %s() is not supported", a->line, name);
}
