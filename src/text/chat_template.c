/*
 * chat_template.c - a Jinja subset for the chat_template strings of tokenizer_config.json, rendered
 * as transformers' apply_chat_template does (jinja2 sandbox, trim_blocks + lstrip_blocks, the
 * loopcontrols extension, {% generation %} blocks for assistant masks, raise_exception,
 * strftime_now, namespace, a tojson that keeps non-ASCII).
 *
 * Supported: {{ }}, {% if/elif/else %}, {% for x in y [if c] %} with loop.* and {% else %},
 * {% set x = ... %}, {% set ns.x = ... %}, {% set x %}...{% endset %}, {% generation %},
 * {% break %}/{% continue %}, comments, whitespace control (-, +); expressions with literals
 * (strings, numbers, lists, dicts, tuples), attribute / item / slice access, calls, filters, tests,
 * arithmetic, comparison, `in`, `~`, `and/or/not`, `x if c else y`. Anything else (macros, includes,
 * an unknown filter) fails with LT_ERR_UNSUPPORTED naming it: a template is never guessed.
 * Values are jansson values; NULL stands for Jinja's Undefined.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/chat_template.h"

/* ---- lexer ------------------------------------------------------------------------------------- */

enum { T_TEXT, T_VAR, T_BLOCK, T_EOF };
typedef struct jtok {
    int kind;
    const char *s;
    size_t n;
    int line;
} jtok;

typedef struct parser {
    const char *src;
    jtok *toks;
    size_t nt, cap, pos;
    /* expression scanning inside one tag */
    const char *p, *end;
    int line;
    lt_error *err;
    int failed;
} parser;

static int push_tok(parser *ps, int kind, const char *s, size_t n, int line) {
    if (ps->nt == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 64;
        jtok *t = realloc(ps->toks, ps->cap * sizeof *t);
        if (!t) return -1;
        ps->toks = t;
    }
    ps->toks[ps->nt++] = (jtok){kind, s, n, line};
    return 0;
}

static int line_of(const char *src, const char *p) {
    int l = 1;
    for (const char *q = src; q < p; q++) l += *q == '\n';
    return l;
}

/* Split the template into text and tags, applying -/+ and trim_blocks / lstrip_blocks. */
static lt_status lex(parser *ps) {
    const char *s = ps->src, *text = s;
    int trim_next = 0; /* strip leading whitespace of the next text: 1 = all ('-'), 2 = one newline (trim_blocks) */
    for (;;) {
        const char *o = strstr(s, "{");
        while (o && o[1] != '{' && o[1] != '%' && o[1] != '#') o = strchr(o + 1, '{');
        const char *tend = o ? o : s + strlen(s);
        /* text [text, tend) */
        const char *a = text, *b = tend;
        if (trim_next == 1)
            while (a < b && isspace((unsigned char)*a)) a++;
        else if (trim_next == 2 && a < b && *a == '\n') a++;
        else if (trim_next == 2 && a + 1 < b && a[0] == '\r' && a[1] == '\n') a += 2;
        trim_next = 0;
        if (!o) {
            if (b > a && push_tok(ps, T_TEXT, a, (size_t)(b - a), line_of(ps->src, a))) return LT_ERR_NOMEM;
            break;
        }
        char kind = o[1];
        const char *inner = o + 2;
        int lminus = *inner == '-', lplus = *inner == '+';
        if (lminus || lplus) inner++;
        if (lminus)
            while (b > a && isspace((unsigned char)b[-1])) b--;
        else if (kind != '{' && !lplus) {
            /* lstrip_blocks: spaces/tabs from the line start */
            const char *q = b;
            while (q > a && (q[-1] == ' ' || q[-1] == '\t')) q--;
            if (q == ps->src || q[-1] == '\n') b = q; /* only whitespace since the line start */
        }
        if (b > a && push_tok(ps, T_TEXT, a, (size_t)(b - a), line_of(ps->src, a))) return LT_ERR_NOMEM;
        const char *close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        const char *c = strstr(inner, close);
        if (!c)
            return lt_fail(ps->err, LT_ERR_UNSUPPORTED, "chat template: line %d: unclosed \"{%c\"", line_of(ps->src, o),
                           kind);
        const char *ie = c;
        int rminus = ie > inner && ie[-1] == '-', rplus = ie > inner && ie[-1] == '+';
        if (rminus || rplus) ie--;
        if (kind != '#' &&
            push_tok(ps, kind == '{' ? T_VAR : T_BLOCK, inner, (size_t)(ie - inner), line_of(ps->src, o)))
            return LT_ERR_NOMEM;
        s = text = c + 2;
        if (rminus) trim_next = 1;
        else if (kind != '{' && !rplus) trim_next = 2; /* trim_blocks */
    }
    return push_tok(ps, T_EOF, "", 0, 0) ? LT_ERR_NOMEM : LT_OK;
}

/* lstrip_blocks needs "only whitespace since the line start"; the text before the tag may begin
 * mid-line (after another tag), in which case jinja2 still strips when the whitespace run reaches a
 * newline or the template start, which the check above does. */

/* ---- AST --------------------------------------------------------------------------------------- */

enum {
    N_TEXT,
    N_OUT,
    N_IF,
    N_FOR,
    N_SET,
    N_SETBLOCK,
    N_GEN,
    N_BREAK,
    N_CONTINUE,
    N_MACRO,
    E_LIT,
    E_NAME,
    E_ATTR,
    E_ITEM,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_NOT,
    E_NEG,
    E_BIN,
    E_AND,
    E_OR,
    E_COND,
    E_LIST,
    E_DICT
};

typedef struct node node;
typedef struct nodes {
    node **v;
    int n;
} nodes;
struct node {
    int kind, line;
    char *s;          /* name, attribute, operator, filter/test name, set attribute */
    size_t slen;      /* text length */
    const char *text; /* N_TEXT: points into the template */
    json_t *lit;
    node *a, *b, *c; /* operands */
    nodes args;      /* call/filter/test positional args; list items; dict keys/values interleaved */
    char **kw;       /* keyword names of args (NULL for positional) */
    nodes body, orelse;
    char *targets[4]; /* for-loop targets */
    int ntargets;
    int negate;    /* `is not` */
    char **pnames; /* N_MACRO parameters and their default expressions (NULL: none) */
    node **pdefs;
    int np;
};

static void node_free(node *n);
static void nodes_free(nodes *v) {
    for (int i = 0; i < v->n; i++) node_free(v->v[i]);
    free(v->v);
}
static void node_free(node *n) {
    if (!n) return;
    free(n->s);
    if (n->lit) json_decref(n->lit);
    node_free(n->a);
    node_free(n->b);
    node_free(n->c);
    if (n->kw)
        for (int i = 0; i < n->args.n; i++) free(n->kw[i]);
    free(n->kw);
    nodes_free(&n->args);
    nodes_free(&n->body);
    nodes_free(&n->orelse);
    for (int i = 0; i < n->ntargets; i++) free(n->targets[i]);
    for (int i = 0; i < n->np; i++) {
        free(n->pnames[i]);
        node_free(n->pdefs[i]);
    }
    free(n->pnames);
    free(n->pdefs);
    free(n);
}

static node *mk(parser *ps, int kind) {
    node *n = calloc(1, sizeof *n);
    if (!n) {
        ps->failed = 1;
        lt_fail(ps->err, LT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = ps->line;
    return n;
}
static void add(parser *ps, nodes *v, node *x) {
    if (!x) return;
    node **nv = realloc(v->v, (size_t)(v->n + 1) * sizeof *nv);
    if (!nv) {
        ps->failed = 1;
        node_free(x);
        return;
    }
    v->v = nv;
    v->v[v->n++] = x;
}

#define PERR(...)                                              \
    do {                                                       \
        if (!ps->failed) {                                     \
            ps->failed = 1;                                    \
            lt_fail(ps->err, LT_ERR_UNSUPPORTED, __VA_ARGS__); \
        }                                                      \
    } while (0)

/* ---- expression parser (recursive descent over the characters of one tag) ---------------------- */

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p)) ps->p++;
}
static int peek_op(parser *ps, const char *op) {
    skip_ws(ps);
    size_t n = strlen(op);
    return (size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, op, n);
}
static int accept_op(parser *ps, const char *op) {
    if (!peek_op(ps, op)) return 0;
    ps->p += strlen(op);
    return 1;
}
static int is_ident_start(char c) { return isalpha((unsigned char)c) || c == '_'; }
static int is_ident(char c) { return isalnum((unsigned char)c) || c == '_'; }
/* a keyword (whole word) */
static int peek_kw(parser *ps, const char *kw) {
    skip_ws(ps);
    size_t n = strlen(kw);
    return (size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, kw, n) && (ps->p + n == ps->end || !is_ident(ps->p[n]));
}
static int accept_kw(parser *ps, const char *kw) {
    if (!peek_kw(ps, kw)) return 0;
    ps->p += strlen(kw);
    return 1;
}
static char *ident(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end || !is_ident_start(*ps->p)) {
        PERR("chat template: line %d: expected a name at \"%.20s\"", ps->line, ps->p);
        return NULL;
    }
    const char *s = ps->p;
    while (ps->p < ps->end && is_ident(*ps->p)) ps->p++;
    return strndup(s, (size_t)(ps->p - s));
}
static void expect(parser *ps, const char *op) {
    if (!accept_op(ps, op)) PERR("chat template: line %d: expected \"%s\" at \"%.20s\"", ps->line, op, ps->p);
}

static node *parse_expr(parser *ps);
static node *parse_or(parser *ps);

static json_t *parse_string_lit(parser *ps) {
    char q = *ps->p++;
    lt_buf b = {0};
    while (ps->p < ps->end && *ps->p != q) {
        char c = *ps->p++;
        if (c == '\\' && ps->p < ps->end) {
            char e = *ps->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '0': c = '\0'; break;
            case '\\':
            case '\'':
            case '"': c = e; break;
            case 'u':
            case 'x': {
                int nd = e == 'u' ? 4 : 2;
                unsigned v = 0;
                for (int k = 0; k < nd && ps->p < ps->end && isxdigit((unsigned char)*ps->p); k++, ps->p++)
                    v = v * 16 + (unsigned)(isdigit((unsigned char)*ps->p)
                                                ? *ps->p - '0'
                                                : (tolower((unsigned char)*ps->p) - 'a' + 10));
                char tmp[4];
                int n = v < 0x80 ? 1 : v < 0x800 ? 2 : 3;
                if (n == 1) tmp[0] = (char)v;
                else if (n == 2) {
                    tmp[0] = (char)(0xC0 | (v >> 6));
                    tmp[1] = (char)(0x80 | (v & 0x3F));
                } else {
                    tmp[0] = (char)(0xE0 | (v >> 12));
                    tmp[1] = (char)(0x80 | ((v >> 6) & 0x3F));
                    tmp[2] = (char)(0x80 | (v & 0x3F));
                }
                lt_buf_put(&b, tmp, (size_t)n);
                continue;
            }
            default:
                lt_buf_putc(&b, '\\');
                c = e;
                break; /* Python keeps unknown escapes */
            }
        }
        lt_buf_putc(&b, c);
    }
    if (ps->p >= ps->end) {
        free(b.p);
        PERR("chat template: line %d: unterminated string", ps->line);
        return NULL;
    }
    ps->p++;
    json_t *j = json_stringn_nocheck(b.p ? b.p : "", b.n);
    free(b.p);
    return j;
}

/* call arguments: (a, b, key=value) */
static void parse_args(parser *ps, node *n) {
    if (accept_op(ps, ")")) return;
    for (;;) {
        char *kw = NULL;
        skip_ws(ps);
        const char *save = ps->p;
        if (ps->p < ps->end && is_ident_start(*ps->p)) {
            char *id = ident(ps);
            if (accept_op(ps, "=") && !peek_op(ps, "=")) kw = id;
            else {
                free(id);
                ps->p = save;
            }
        }
        node *v = parse_expr(ps);
        if (!v) {
            free(kw);
            return;
        }
        add(ps, &n->args, v);
        char **nk = realloc(n->kw, (size_t)n->args.n * sizeof *nk);
        if (!nk) {
            free(kw);
            ps->failed = 1;
            return;
        }
        n->kw = nk;
        n->kw[n->args.n - 1] = kw;
        if (accept_op(ps, ")")) return;
        expect(ps, ",");
        if (ps->failed) return;
        if (accept_op(ps, ")")) return;
    }
}

static node *parse_primary(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end) {
        PERR("chat template: line %d: expression expected", ps->line);
        return NULL;
    }
    char c = *ps->p;
    node *n;
    if (c == '\'' || c == '"') {
        if (!(n = mk(ps, E_LIT))) return NULL;
        n->lit = parse_string_lit(ps);
        /* adjacent string literals concatenate */
        while (!ps->failed && (skip_ws(ps), ps->p < ps->end && (*ps->p == '\'' || *ps->p == '"'))) {
            json_t *more = parse_string_lit(ps);
            if (!more) break;
            lt_buf b = {0};
            lt_buf_put(&b, json_string_value(n->lit), json_string_length(n->lit));
            lt_buf_put(&b, json_string_value(more), json_string_length(more));
            json_decref(more);
            json_decref(n->lit);
            n->lit = json_stringn_nocheck(b.p, b.n);
            free(b.p);
        }
        return n;
    }
    if (isdigit((unsigned char)c)) {
        if (!(n = mk(ps, E_LIT))) return NULL;
        const char *s = ps->p;
        int isf = 0;
        while (ps->p < ps->end && (isdigit((unsigned char)*ps->p) || *ps->p == '.' || *ps->p == '_')) {
            if (*ps->p == '.') {
                if (ps->p + 1 < ps->end && !isdigit((unsigned char)ps->p[1])) break;
                isf = 1;
            }
            ps->p++;
        }
        char *tmp = strndup(s, (size_t)(ps->p - s));
        n->lit = isf ? json_real(strtod(tmp, NULL)) : json_integer(strtoll(tmp, NULL, 10));
        free(tmp);
        return n;
    }
    if (c == '(') {
        ps->p++;
        node *e = parse_expr(ps);
        if (accept_op(ps, ",")) { /* tuple -> list */
            node *l = mk(ps, E_LIST);
            if (!l) {
                node_free(e);
                return NULL;
            }
            add(ps, &l->args, e);
            while (!ps->failed && !peek_op(ps, ")")) {
                add(ps, &l->args, parse_expr(ps));
                if (!accept_op(ps, ",")) break;
            }
            e = l;
        }
        expect(ps, ")");
        return e;
    }
    if (c == '[') {
        ps->p++;
        if (!(n = mk(ps, E_LIST))) return NULL;
        while (!ps->failed && !peek_op(ps, "]")) {
            add(ps, &n->args, parse_expr(ps));
            if (!accept_op(ps, ",")) break;
        }
        expect(ps, "]");
        return n;
    }
    if (c == '{') {
        ps->p++;
        if (!(n = mk(ps, E_DICT))) return NULL;
        while (!ps->failed && !peek_op(ps, "}")) {
            add(ps, &n->args, parse_expr(ps));
            expect(ps, ":");
            add(ps, &n->args, parse_expr(ps));
            if (!accept_op(ps, ",")) break;
        }
        expect(ps, "}");
        return n;
    }
    if (is_ident_start(c)) {
        char *id = ident(ps);
        if (!id) return NULL;
        if (!strcmp(id, "true") || !strcmp(id, "True") || !strcmp(id, "false") || !strcmp(id, "False") ||
            !strcmp(id, "none") || !strcmp(id, "None")) {
            if (!(n = mk(ps, E_LIT))) {
                free(id);
                return NULL;
            }
            n->lit = id[0] == 't' || id[0] == 'T'   ? json_true()
                     : id[0] == 'f' || id[0] == 'F' ? json_false()
                                                    : json_null();
            free(id);
            return n;
        }
        if (!(n = mk(ps, E_NAME))) {
            free(id);
            return NULL;
        }
        n->s = id;
        return n;
    }
    PERR("chat template: line %d: unexpected \"%.20s\"", ps->line, ps->p);
    return NULL;
}

static node *parse_postfix(parser *ps, node *n) {
    while (n && !ps->failed) {
        if (accept_op(ps, ".")) {
            node *a = mk(ps, E_ATTR);
            if (!a) break;
            a->a = n;
            a->s = ident(ps);
            n = a;
        } else if (peek_op(ps, "[")) {
            ps->p++;
            node *x = mk(ps, E_ITEM);
            if (!x) break;
            x->a = n;
            n = x;
            /* slice a[b:c:d] or item a[b] */
            node *lo = peek_op(ps, ":") ? NULL : parse_expr(ps);
            if (accept_op(ps, ":")) {
                x->kind = E_SLICE;
                x->b = lo;
                x->c = peek_op(ps, "]") || peek_op(ps, ":") ? NULL : parse_expr(ps);
                if (accept_op(ps, ":") && !peek_op(ps, "]")) {
                    node *st = parse_expr(ps);
                    add(ps, &x->args, st);
                }
            } else x->b = lo;
            expect(ps, "]");
        } else if (peek_op(ps, "(")) {
            ps->p++;
            node *cl = mk(ps, E_CALL);
            if (!cl) break;
            cl->a = n;
            n = cl;
            parse_args(ps, cl);
        } else break;
    }
    return n;
}

static node *parse_filters(parser *ps, node *n) {
    while (n && !ps->failed && peek_op(ps, "|") && !peek_op(ps, "||")) {
        ps->p++;
        node *f = mk(ps, E_FILTER);
        if (!f) break;
        f->a = n;
        f->s = ident(ps);
        n = f;
        if (accept_op(ps, "(")) parse_args(ps, f);
    }
    return n;
}

static node *parse_unary(parser *ps) {
    if (accept_op(ps, "-")) {
        node *n = mk(ps, E_NEG);
        if (n) n->a = parse_unary(ps);
        return n;
    }
    if (accept_op(ps, "+")) return parse_unary(ps);
    node *n = parse_primary(ps);
    n = parse_postfix(ps, n);
    return parse_filters(ps, n);
}

static node *bin(parser *ps, const char *op, node *a, node *b) {
    node *n = mk(ps, E_BIN);
    if (!n) {
        node_free(a);
        node_free(b);
        return NULL;
    }
    n->s = strdup(op);
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *ps) {
    node *a = parse_unary(ps);
    while (a && !ps->failed && accept_op(ps, "**")) a = bin(ps, "**", a, parse_unary(ps));
    return a;
}
static node *parse_math2(parser *ps) {
    node *a = parse_pow(ps);
    for (;;) {
        if (!a || ps->failed) return a;
        if (peek_op(ps, "**")) return a;
        if (accept_op(ps, "//")) a = bin(ps, "//", a, parse_pow(ps));
        else if (accept_op(ps, "*")) a = bin(ps, "*", a, parse_pow(ps));
        else if (accept_op(ps, "/")) a = bin(ps, "/", a, parse_pow(ps));
        else if (accept_op(ps, "%")) a = bin(ps, "%", a, parse_pow(ps));
        else return a;
    }
}
static node *parse_concat(parser *ps) {
    node *a = parse_math2(ps);
    while (a && !ps->failed && accept_op(ps, "~")) a = bin(ps, "~", a, parse_math2(ps));
    return a;
}
static node *parse_math1(parser *ps) {
    node *a = parse_concat(ps);
    for (;;) {
        if (!a || ps->failed) return a;
        if (accept_op(ps, "+")) a = bin(ps, "+", a, parse_concat(ps));
        else if (accept_op(ps, "-")) a = bin(ps, "-", a, parse_concat(ps));
        else return a;
    }
}
static node *parse_compare(parser *ps) {
    node *a = parse_math1(ps);
    for (;;) {
        if (!a || ps->failed) return a;
        static const char *ops[] = {"==", "!=", "<=", ">=", "<", ">"};
        int hit = 0;
        for (int k = 0; k < 6 && !hit; k++)
            if (accept_op(ps, ops[k])) {
                a = bin(ps, ops[k], a, parse_math1(ps));
                hit = 1;
            }
        if (hit) continue;
        if (accept_kw(ps, "in")) {
            a = bin(ps, "in", a, parse_math1(ps));
            continue;
        }
        const char *save = ps->p;
        if (accept_kw(ps, "not")) {
            if (accept_kw(ps, "in")) {
                a = bin(ps, "notin", a, parse_math1(ps));
                continue;
            }
            ps->p = save;
            return a;
        }
        if (accept_kw(ps, "is")) {
            node *t = mk(ps, E_TEST);
            if (!t) return a;
            t->a = a;
            t->negate = accept_kw(ps, "not");
            t->s = ident(ps);
            a = t;
            if (accept_op(ps, "(")) parse_args(ps, t);
            else {
                /* one bare argument: `is divisibleby 3`, `is equalto x` */
                skip_ws(ps);
                if (ps->p < ps->end && (isdigit((unsigned char)*ps->p) || *ps->p == '\'' || *ps->p == '"'))
                    add(ps, &t->args, parse_primary(ps));
            }
            continue;
        }
        return a;
    }
}
static node *parse_not(parser *ps) {
    if (accept_kw(ps, "not")) {
        node *n = mk(ps, E_NOT);
        if (n) n->a = parse_not(ps);
        return n;
    }
    return parse_compare(ps);
}
static node *parse_and(parser *ps) {
    node *a = parse_not(ps);
    while (a && !ps->failed && accept_kw(ps, "and")) {
        node *n = mk(ps, E_AND);
        if (!n) return a;
        n->a = a;
        n->b = parse_not(ps);
        a = n;
    }
    return a;
}
static node *parse_or(parser *ps) {
    node *a = parse_and(ps);
    while (a && !ps->failed && accept_kw(ps, "or")) {
        node *n = mk(ps, E_OR);
        if (!n) return a;
        n->a = a;
        n->b = parse_and(ps);
        a = n;
    }
    return a;
}
static node *parse_expr(parser *ps) {
    node *a = parse_or(ps);
    if (a && !ps->failed && accept_kw(ps, "if")) {
        node *n = mk(ps, E_COND);
        if (!n) return a;
        n->a = a;
        n->b = parse_or(ps);
        if (accept_kw(ps, "else")) n->c = parse_expr(ps);
        return n;
    }
    return a;
}

/* ---- statement parser -------------------------------------------------------------------------- */

static void set_tag(parser *ps, const jtok *t) {
    ps->p = t->s;
    ps->end = t->s + t->n;
    ps->line = t->line;
}
static void expect_end(parser *ps) {
    skip_ws(ps);
    if (ps->p != ps->end && !ps->failed)
        PERR("chat template: line %d: unexpected \"%.*s\"", ps->line, (int)(ps->end - ps->p), ps->p);
}

/* Parse nodes until a block tag whose keyword is in `stops` ("endif elif else"); returns that keyword
 * index, with ps->p after the keyword. */
static int parse_body(parser *ps, nodes *out, const char *const *stops, int nstops);

static node *parse_stmt(parser *ps, const jtok *t) {
    set_tag(ps, t);
    if (accept_kw(ps, "if")) {
        node *n = mk(ps, N_IF);
        if (!n) return NULL;
        n->a = parse_expr(ps);
        expect_end(ps);
        static const char *const stops[] = {"endif", "elif", "else"};
        node *cur = n;
        for (;;) {
            int k = parse_body(ps, &cur->body, stops, 3);
            if (k < 0 || ps->failed) return n;
            if (k == 0) {
                expect_end(ps);
                return n;
            }
            if (k == 1) { /* elif: a nested if in the else branch */
                node *e = mk(ps, N_IF);
                if (!e) return n;
                e->a = parse_expr(ps);
                expect_end(ps);
                add(ps, &cur->orelse, e);
                cur = e;
                continue;
            }
            expect_end(ps);
            static const char *const endonly[] = {"endif"};
            if (parse_body(ps, &cur->orelse, endonly, 1) >= 0) expect_end(ps);
            return n;
        }
    }
    if (accept_kw(ps, "for")) {
        node *n = mk(ps, N_FOR);
        if (!n) return NULL;
        do {
            if (n->ntargets == 4) {
                PERR("chat template: line %d: too many loop variables", ps->line);
                return n;
            }
            n->targets[n->ntargets++] = ident(ps);
        } while (!ps->failed && accept_op(ps, ","));
        if (!accept_kw(ps, "in")) PERR("chat template: line %d: expected \"in\" in for", ps->line);
        n->a = parse_or(ps); /* `if` after the iterable filters, it is not a conditional expression */
        if (accept_kw(ps, "if")) n->b = parse_or(ps);
        if (accept_kw(ps, "recursive")) PERR("chat template: line %d: recursive loops are not supported", ps->line);
        expect_end(ps);
        static const char *const stops[] = {"endfor", "else"};
        int k = parse_body(ps, &n->body, stops, 2);
        if (k == 1) {
            expect_end(ps);
            static const char *const endonly[] = {"endfor"};
            k = parse_body(ps, &n->orelse, endonly, 1);
        }
        if (k >= 0) expect_end(ps);
        return n;
    }
    if (accept_kw(ps, "set")) {
        node *n = mk(ps, N_SET);
        if (!n) return NULL;
        n->targets[0] = ident(ps);
        n->ntargets = 1;
        if (accept_op(ps, ".")) n->s = ident(ps); /* ns.attr */
        else if (peek_op(ps, ",")) {
            PERR("chat template: line %d: tuple assignment in set is not supported", ps->line);
            return n;
        }
        if (accept_op(ps, "=")) {
            n->a = parse_expr(ps);
            expect_end(ps);
            return n;
        }
        expect_end(ps);
        n->kind = N_SETBLOCK;
        static const char *const stops[] = {"endset"};
        if (parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        return n;
    }
    if (accept_kw(ps, "generation")) {
        node *n = mk(ps, N_GEN);
        if (!n) return NULL;
        expect_end(ps);
        static const char *const stops[] = {"endgeneration"};
        if (parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        return n;
    }
    if (accept_kw(ps, "macro")) {
        node *n = mk(ps, N_MACRO);
        if (!n) return NULL;
        n->s = ident(ps);
        expect(ps, "(");
        while (!ps->failed && !accept_op(ps, ")")) {
            char *pn = ident(ps);
            node *def = accept_op(ps, "=") ? parse_expr(ps) : NULL;
            char **np_ = realloc(n->pnames, (size_t)(n->np + 1) * sizeof *np_);
            node **nd = np_ ? realloc(n->pdefs, (size_t)(n->np + 1) * sizeof *nd) : NULL;
            if (np_) n->pnames = np_;
            if (nd) n->pdefs = nd;
            if (!np_ || !nd) {
                free(pn);
                node_free(def);
                ps->failed = 1;
                break;
            }
            n->pnames[n->np] = pn;
            n->pdefs[n->np++] = def;
            if (!accept_op(ps, ",")) {
                expect(ps, ")");
                break;
            }
        }
        expect_end(ps);
        static const char *const stops[] = {"endmacro"};
        if (parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        return n;
    }
    if (accept_kw(ps, "break")) {
        expect_end(ps);
        return mk(ps, N_BREAK);
    }
    if (accept_kw(ps, "continue")) {
        expect_end(ps);
        return mk(ps, N_CONTINUE);
    }
    skip_ws(ps);
    const char *w = ps->p;
    while (ps->p < ps->end && is_ident(*ps->p)) ps->p++;
    PERR("chat template: line %d: the tag \"%.*s\" is not supported (supported: if, for, set, macro, generation, "
         "break, continue)",
         ps->line, (int)(ps->p - w), w);
    return NULL;
}

static int parse_body(parser *ps, nodes *out, const char *const *stops, int nstops) {
    while (!ps->failed) {
        const jtok *t = &ps->toks[ps->pos];
        if (t->kind == T_EOF) {
            if (nstops) PERR("chat template: missing {%% %s %%}", stops[0]);
            return -1;
        }
        ps->pos++;
        if (t->kind == T_TEXT) {
            node *n = mk(ps, N_TEXT);
            if (n) {
                n->text = t->s;
                n->slen = t->n;
            }
            add(ps, out, n);
        } else if (t->kind == T_VAR) {
            set_tag(ps, t);
            node *n = mk(ps, N_OUT);
            if (n) n->a = parse_expr(ps);
            expect_end(ps);
            add(ps, out, n);
        } else {
            set_tag(ps, t);
            for (int k = 0; k < nstops; k++)
                if (accept_kw(ps, stops[k])) return k;
            if (peek_kw(ps, "endif") || peek_kw(ps, "endfor") || peek_kw(ps, "else") || peek_kw(ps, "elif") ||
                peek_kw(ps, "endset") || peek_kw(ps, "endgeneration") || peek_kw(ps, "endmacro")) {
                PERR("chat template: line %d: unexpected {%% %.*s %%}", ps->line, (int)t->n, t->s);
                return -1;
            }
            add(ps, out, parse_stmt(ps, t));
        }
    }
    return -1;
}

/* ---- values ----------------------------------------------------------------------------------- */

typedef struct scope {
    json_t *vars;
    struct scope *up;
} scope;

typedef struct render {
    lt_buf *out, *mask;
    int gen; /* inside {% generation %} */
    lt_error *err;
    int failed;
    int brk, cont;      /* loop control */
    json_t *namespaces; /* array of namespace objects (identity marks them) */
    long steps;
    struct scope *top; /* the template's globals: what a macro body sees besides its arguments */
    node *macros[32];
    int n_macros, depth;
} render;

#define RERR(st, ...) (r->failed ? NULL : (r->failed = 1, lt_fail(r->err, st, __VA_ARGS__), (json_t *)NULL))

static int is_namespace(render *r, json_t *v) {
    size_t i;
    json_t *x;
    json_array_foreach(r->namespaces, i, x) if (x == v) return 1;
    return 0;
}

static int truthy(json_t *v) {
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    if (json_is_true(v)) return 1;
    if (json_is_integer(v)) return json_integer_value(v) != 0;
    if (json_is_real(v)) return json_real_value(v) != 0;
    if (json_is_string(v)) return json_string_length(v) != 0;
    if (json_is_array(v)) return json_array_size(v) != 0;
    if (json_is_object(v)) return json_object_size(v) != 0;
    return 1;
}

static void py_repr(lt_buf *b, json_t *v, int top);
/* Python str(): what {{ }} prints */
static void py_str(lt_buf *b, json_t *v) {
    if (!v) return; /* Undefined prints nothing */
    if (json_is_string(v)) lt_buf_put(b, json_string_value(v), json_string_length(v));
    else py_repr(b, v, 1);
}
static void py_repr(lt_buf *b, json_t *v, int top) {
    char tmp[64];
    if (!v || json_is_null(v)) lt_buf_puts(b, "None");
    else if (json_is_true(v)) lt_buf_puts(b, "True");
    else if (json_is_false(v)) lt_buf_puts(b, "False");
    else if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        lt_buf_puts(b, tmp);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        /* Python repr: shortest round-trip, always with a '.' or exponent */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(tmp, sizeof tmp, "%.*g", prec, d);
            if (strtod(tmp, NULL) == d) break;
        }
        if (!strpbrk(tmp, ".enia")) strcat(tmp, ".0");
        lt_buf_puts(b, tmp);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
        lt_buf_putc(b, q);
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == (unsigned char)q || c == '\\') {
                lt_buf_putc(b, '\\');
                lt_buf_putc(b, (char)c);
            } else if (c == '\n') lt_buf_puts(b, "\\n");
            else if (c == '\t') lt_buf_puts(b, "\\t");
            else if (c == '\r') lt_buf_puts(b, "\\r");
            else if (c < 0x20 || c == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\x%02x", c);
                lt_buf_puts(b, tmp);
            } else lt_buf_putc(b, (char)c);
        }
        lt_buf_putc(b, q);
    } else if (json_is_array(v)) {
        lt_buf_putc(b, '[');
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            if (i) lt_buf_puts(b, ", ");
            py_repr(b, x, 0);
        }
        lt_buf_putc(b, ']');
    } else if (json_is_object(v)) {
        lt_buf_putc(b, '{');
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach(v, k, x) {
            if (!first) lt_buf_puts(b, ", ");
            first = 0;
            json_t *ks = json_string(k);
            py_repr(b, ks, 0);
            json_decref(ks);
            lt_buf_puts(b, ": ");
            py_repr(b, x, 0);
        }
        lt_buf_putc(b, '}');
    }
    (void)top;
}

/* json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...) as transformers' tojson */
static void py_json(lt_buf *b, json_t *v, int indent, int level, const char *item_sep, const char *key_sep, int sort) {
    char tmp[64];
    if (!v || json_is_null(v)) lt_buf_puts(b, "null");
    else if (json_is_true(v)) lt_buf_puts(b, "true");
    else if (json_is_false(v)) lt_buf_puts(b, "false");
    else if (json_is_integer(v)) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
        lt_buf_puts(b, tmp);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (isnan(d)) lt_buf_puts(b, "NaN");
        else if (isinf(d)) lt_buf_puts(b, d > 0 ? "Infinity" : "-Infinity");
        else py_repr(b, v, 0);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        lt_buf_putc(b, '"');
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '"') lt_buf_puts(b, "\\\"");
            else if (c == '\\') lt_buf_puts(b, "\\\\");
            else if (c == '\n') lt_buf_puts(b, "\\n");
            else if (c == '\r') lt_buf_puts(b, "\\r");
            else if (c == '\t') lt_buf_puts(b, "\\t");
            else if (c == '\b') lt_buf_puts(b, "\\b");
            else if (c == '\f') lt_buf_puts(b, "\\f");
            else if (c < 0x20 || c == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                lt_buf_puts(b, tmp);
            } else lt_buf_putc(b, (char)c);
        }
        lt_buf_putc(b, '"');
    } else if (json_is_array(v) || json_is_object(v)) {
        int arr = json_is_array(v);
        size_t cnt = arr ? json_array_size(v) : json_object_size(v);
        lt_buf_putc(b, arr ? '[' : '{');
        if (cnt == 0) {
            lt_buf_putc(b, arr ? ']' : '}');
            return;
        }
        const char **keys = NULL;
        if (!arr) {
            keys = malloc(cnt * sizeof *keys);
            size_t i = 0;
            const char *k;
            json_t *x;
            json_object_foreach(v, k, x) keys[i++] = k;
            if (sort)
                for (size_t a = 1; a < cnt; a++)
                    for (size_t c = a; c > 0 && strcmp(keys[c - 1], keys[c]) > 0; c--) {
                        const char *t = keys[c];
                        keys[c] = keys[c - 1];
                        keys[c - 1] = t;
                    }
        }
        for (size_t i = 0; i < cnt; i++) {
            if (i) lt_buf_puts(b, indent >= 0 ? "," : item_sep);
            if (indent >= 0) {
                lt_buf_putc(b, '\n');
                for (int k = 0; k < indent * (level + 1); k++) lt_buf_putc(b, ' ');
            }
            if (arr) py_json(b, json_array_get(v, i), indent, level + 1, item_sep, key_sep, sort);
            else {
                json_t *ks = json_string(keys[i]);
                py_json(b, ks, indent, level + 1, item_sep, key_sep, sort);
                json_decref(ks);
                lt_buf_puts(b, key_sep);
                py_json(b, json_object_get(v, keys[i]), indent, level + 1, item_sep, key_sep, sort);
            }
        }
        free(keys);
        if (indent >= 0) {
            lt_buf_putc(b, '\n');
            for (int k = 0; k < indent * level; k++) lt_buf_putc(b, ' ');
        }
        lt_buf_putc(b, arr ? ']' : '}');
    }
}

static int py_isspace(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.strip([chars]) */
static json_t *py_strip(json_t *s, json_t *chars, int left, int right) {
    const unsigned char *u = (const unsigned char *)json_string_value(s);
    size_t n = json_string_length(s), a = 0, b = n;
    const char *cs = chars && json_is_string(chars) ? json_string_value(chars) : NULL;
    while (left && a < b) {
        uint32_t cp;
        int l = lt_utf8_next(u + a, b - a, &cp);
        int hit = cs ? memmem(cs, strlen(cs), u + a, (size_t)l) != NULL : py_isspace(cp);
        if (!hit) break;
        a += (size_t)l;
    }
    while (right && b > a) {
        size_t q = b - 1;
        while (q > a && (u[q] & 0xC0) == 0x80) q--;
        uint32_t cp;
        lt_utf8_next(u + q, b - q, &cp);
        int hit = cs ? memmem(cs, strlen(cs), u + q, b - q) != NULL : py_isspace(cp);
        if (!hit) break;
        b = q;
    }
    return json_stringn_nocheck((const char *)u + a, b - a);
}

static size_t utf8_count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}
/* byte offset of the k-th code point */
static size_t utf8_offset(const char *s, size_t n, size_t k) {
    size_t i = 0;
    while (i < n && k) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        k--;
    }
    return i;
}

static json_t *eval(render *r, scope *sc, node *n);
static void exec_nodes(render *r, scope *sc, nodes *v);

static json_t *lookup(scope *sc, const char *name) {
    for (; sc; sc = sc->up) {
        json_t *v = json_object_get(sc->vars, name);
        if (v) return json_incref(v);
    }
    return NULL;
}

static int num(json_t *v, double *d) {
    if (json_is_integer(v)) {
        *d = (double)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        *d = json_real_value(v);
        return 1;
    }
    if (json_is_boolean(v)) {
        *d = json_is_true(v);
        return 1;
    }
    return 0;
}

static int equal(json_t *a, json_t *b) {
    if (!a || !b) return !a && !b;
    double x, y;
    if ((json_is_number(a) || json_is_boolean(a)) && (json_is_number(b) || json_is_boolean(b)) && num(a, &x) &&
        num(b, &y))
        return x == y;
    return json_equal(a, b);
}

static const char *type_name(json_t *v) {
    if (!v) return "undefined";
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

/* a[k] / a.k */
static json_t *get_item(json_t *a, json_t *k) {
    if (!a || !k) return NULL;
    if (json_is_object(a) && json_is_string(k)) {
        json_t *v = json_object_get(a, json_string_value(k));
        return v ? json_incref(v) : NULL;
    }
    if (json_is_array(a) && json_is_integer(k)) {
        long long i = json_integer_value(k), n = (long long)json_array_size(a);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return NULL;
        return json_incref(json_array_get(a, (size_t)i));
    }
    if (json_is_string(a) && json_is_integer(k)) {
        const char *s = json_string_value(a);
        size_t bn = json_string_length(a);
        long long i = json_integer_value(k), n = (long long)utf8_count(s, bn);
        if (i < 0) i += n;
        if (i < 0 || i >= n) return NULL;
        size_t o = utf8_offset(s, bn, (size_t)i), e = utf8_offset(s, bn, (size_t)i + 1);
        return json_stringn_nocheck(s + o, e - o);
    }
    return NULL;
}

static json_t *make_list_from(json_t *v) {
    /* list(x): lists, dict keys, string characters */
    json_t *l = json_array();
    if (json_is_array(v)) json_array_extend(l, v);
    else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) json_array_append_new(l, json_string(k));
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        for (size_t i = 0; i < n;) {
            size_t e = utf8_offset(s + i, n - i, 1);
            json_array_append_new(l, json_stringn_nocheck(s + i, e));
            i += e;
        }
    }
    return l;
}

static json_t *kwarg(render *r, scope *sc, node *call, const char *name, int pos) {
    for (int i = 0; i < call->args.n; i++)
        if (call->kw && call->kw[i] && !strcmp(call->kw[i], name)) return eval(r, sc, call->args.v[i]);
    int p = 0;
    for (int i = 0; i < call->args.n; i++) {
        if (call->kw && call->kw[i]) continue;
        if (p++ == pos) return eval(r, sc, call->args.v[i]);
    }
    return NULL;
}

static int apply_test(render *r, const char *name, json_t *v, json_t *arg, int *res) {
    if (!strcmp(name, "defined")) *res = v != NULL;
    else if (!strcmp(name, "undefined")) *res = v == NULL;
    else if (!strcmp(name, "none")) *res = v && json_is_null(v);
    else if (!strcmp(name, "string")) *res = v && json_is_string(v);
    else if (!strcmp(name, "number")) *res = v && json_is_number(v);
    else if (!strcmp(name, "integer")) *res = v && json_is_integer(v);
    else if (!strcmp(name, "float")) *res = v && json_is_real(v);
    else if (!strcmp(name, "boolean")) *res = v && json_is_boolean(v);
    else if (!strcmp(name, "true")) *res = v && json_is_true(v);
    else if (!strcmp(name, "false")) *res = v && json_is_false(v);
    else if (!strcmp(name, "mapping")) *res = v && json_is_object(v);
    else if (!strcmp(name, "sequence")) *res = v && (json_is_array(v) || json_is_string(v) || json_is_object(v));
    else if (!strcmp(name, "iterable")) *res = v && (json_is_array(v) || json_is_string(v) || json_is_object(v));
    else if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "sameas")) *res = equal(v, arg);
    else if (!strcmp(name, "ne")) *res = !equal(v, arg);
    else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (!v || !json_is_integer(v)) {
            RERR(LT_ERR_DATA, "chat template: \"is %s\" needs an integer", name);
            return -1;
        }
        *res = (json_integer_value(v) % 2 != 0) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        if (!v || !json_is_integer(v) || !arg || !json_is_integer(arg) || !json_integer_value(arg)) {
            RERR(LT_ERR_DATA, "chat template: bad divisibleby");
            return -1;
        }
        *res = json_integer_value(v) % json_integer_value(arg) == 0;
    } else {
        RERR(LT_ERR_UNSUPPORTED, "chat template: the test \"is %s\" is not supported", name);
        return -1;
    }
    return 0;
}

static json_t *to_string(json_t *v) {
    lt_buf b = {0};
    py_str(&b, v);
    json_t *s = json_stringn_nocheck(b.p ? b.p : "", b.n);
    free(b.p);
    return s;
}

static json_t *replace_str(json_t *s, json_t *old, json_t *with) {
    lt_buf b = {0};
    const char *p = json_string_value(s), *o = json_string_value(old), *w = json_string_value(with);
    size_t n = json_string_length(s), on = json_string_length(old), wn = json_string_length(with), i = 0;
    while (i <= n) {
        const char *hit = on ? memmem(p + i, n - i, o, on) : NULL;
        if (!hit) {
            lt_buf_put(&b, p + i, n - i);
            break;
        }
        lt_buf_put(&b, p + i, (size_t)(hit - (p + i)));
        lt_buf_put(&b, w, wn);
        i = (size_t)(hit - p) + on;
    }
    json_t *res = json_stringn_nocheck(b.p ? b.p : "", b.n);
    free(b.p);
    return res;
}

static json_t *apply_filter(render *r, scope *sc, node *f, json_t *v) {
    const char *name = f->s;
    json_t *res = NULL;
    if (!strcmp(name, "trim") || !strcmp(name, "strip")) {
        if (!v) return json_string("");
        json_t *s = json_is_string(v) ? json_incref(v) : to_string(v);
        json_t *chars = kwarg(r, sc, f, "chars", 0);
        res = py_strip(s, chars, 1, 1);
        json_decref(s);
        json_decref(chars);
    } else if (!strcmp(name, "tojson")) {
        json_t *ind = kwarg(r, sc, f, "indent", 0), *sk = kwarg(r, sc, f, "sort_keys", 99),
               *seps = kwarg(r, sc, f, "separators", 99);
        int indent = ind && json_is_integer(ind) ? (int)json_integer_value(ind) : -1;
        const char *is = indent >= 0 ? "," : ", ", *ks = ": ";
        if (seps && json_is_array(seps) && json_array_size(seps) == 2) {
            is = json_string_value(json_array_get(seps, 0));
            ks = json_string_value(json_array_get(seps, 1));
        }
        lt_buf b = {0};
        py_json(&b, v, indent, 0, is ? is : ", ", ks ? ks : ": ", truthy(sk));
        res = json_stringn_nocheck(b.p ? b.p : "", b.n);
        free(b.p);
        json_decref(ind);
        json_decref(sk);
        json_decref(seps);
    } else if (!strcmp(name, "length") || !strcmp(name, "count")) {
        size_t n = !v                  ? 0
                   : json_is_array(v)  ? json_array_size(v)
                   : json_is_object(v) ? json_object_size(v)
                   : json_is_string(v) ? utf8_count(json_string_value(v), json_string_length(v))
                                       : (size_t)-1;
        if (n == (size_t)-1)
            return RERR(LT_ERR_DATA, "chat template: line %d: object of type %s has no length", f->line, type_name(v));
        res = json_integer((json_int_t)n);
    } else if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
               !strcmp(name, "title")) {
        json_t *s = v && json_is_string(v) ? json_incref(v) : to_string(v);
        char *c = strndup(json_string_value(s), json_string_length(s));
        size_t n = json_string_length(s);
        int start = 1;
        for (size_t i = 0; i < n; i++) { /* ASCII case mapping; other letters are left as they are */
            int up = name[0] == 'u' || ((name[0] == 'c' && i == 0) || (name[0] == 't' && start));
            if (name[0] == 'l' || (!up && name[0] != 'u')) c[i] = (char)tolower((unsigned char)c[i]);
            if (up) c[i] = (char)toupper((unsigned char)c[i]);
            start = !isalnum((unsigned char)c[i]);
        }
        res = json_stringn_nocheck(c, n);
        free(c);
        json_decref(s);
    } else if (!strcmp(name, "default") || !strcmp(name, "d")) {
        json_t *dv = kwarg(r, sc, f, "default_value", 0), *bo = kwarg(r, sc, f, "boolean", 1);
        if (!v || (truthy(bo) && !truthy(v))) res = dv ? dv : json_string("");
        else {
            res = json_incref(v);
            json_decref(dv);
        }
        json_decref(bo);
    } else if (!strcmp(name, "join")) {
        json_t *sep = kwarg(r, sc, f, "d", 0);
        lt_buf b = {0};
        size_t i;
        json_t *x;
        json_t *l = v ? make_list_from(v) : json_array();
        json_array_foreach(l, i, x) {
            if (i && sep) py_str(&b, sep);
            py_str(&b, x);
        }
        json_decref(l);
        json_decref(sep);
        res = json_stringn_nocheck(b.p ? b.p : "", b.n);
        free(b.p);
    } else if (!strcmp(name, "first") || !strcmp(name, "last")) {
        json_t *l = v ? make_list_from(v) : json_array();
        size_t n = json_array_size(l);
        res = n ? json_incref(json_array_get(l, name[0] == 'f' ? 0 : n - 1)) : NULL;
        json_decref(l);
    } else if (!strcmp(name, "string")) res = to_string(v);
    else if (!strcmp(name, "list")) res = v ? make_list_from(v) : json_array();
    else if (!strcmp(name, "int")) {
        double d;
        if (v && json_is_string(v)) res = json_integer(strtoll(json_string_value(v), NULL, 10));
        else res = json_integer(v && num(v, &d) ? (json_int_t)d : 0);
    } else if (!strcmp(name, "float")) {
        double d;
        res = json_real(v && json_is_string(v) ? strtod(json_string_value(v), NULL) : v && num(v, &d) ? d : 0.0);
    } else if (!strcmp(name, "replace")) {
        json_t *a = kwarg(r, sc, f, "old", 0), *b = kwarg(r, sc, f, "new", 1);
        json_t *s = v && json_is_string(v) ? json_incref(v) : to_string(v);
        if (!a || !b || !json_is_string(a) || !json_is_string(b))
            res = RERR(LT_ERR_DATA, "chat template: replace needs two strings");
        else res = replace_str(s, a, b);
        json_decref(a);
        json_decref(b);
        json_decref(s);
    } else if (!strcmp(name, "reverse")) {
        json_t *l = v ? make_list_from(v) : json_array();
        res = json_array();
        for (size_t i = json_array_size(l); i > 0; i--) json_array_append(res, json_array_get(l, i - 1));
        json_decref(l);
        if (v && json_is_string(v)) {
            json_t *j = json_array();
            json_array_append_new(j, res);
            lt_buf b = {0};
            size_t i;
            json_t *x;
            json_array_foreach(res, i, x) py_str(&b, x);
            res = json_stringn_nocheck(b.p ? b.p : "", b.n);
            free(b.p);
            json_decref(j);
        }
    } else if (!strcmp(name, "items")) {
        res = json_array();
        const char *k;
        json_t *x;
        if (v && json_is_object(v)) json_object_foreach(v, k, x) {
                json_t *p = json_array();
                json_array_append_new(p, json_string(k));
                json_array_append(p, x);
                json_array_append_new(res, p);
            }
    } else if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr") || !strcmp(name, "select") ||
               !strcmp(name, "reject") || !strcmp(name, "map")) {
        int is_map = !strcmp(name, "map"), attr = strstr(name, "attr") != NULL, want = name[0] == 's';
        res = json_array();
        json_t *l = v ? make_list_from(v) : json_array(), *x;
        size_t i;
        json_t *a0 = NULL, *test = NULL, *targ = NULL;
        if (is_map) a0 = kwarg(r, sc, f, "attribute", 99);
        if (is_map && !a0) {
            json_decref(l);
            json_decref(res);
            return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: map() is supported with attribute= only", f->line);
        }
        if (!is_map) {
            int p = 0;
            if (attr) a0 = kwarg(r, sc, f, "", p++);
            test = kwarg(r, sc, f, "", p++);
            targ = kwarg(r, sc, f, "", p++);
        }
        json_array_foreach(l, i, x) {
            json_t *val = a0 ? get_item(x, a0) : json_incref(x);
            if (is_map) {
                if (val) json_array_append(res, val);
                else json_array_append_new(res, json_null());
                json_decref(val);
                continue;
            }
            int t;
            if (test) {
                if (apply_test(r, json_string_value(test), val, targ, &t)) {
                    json_decref(val);
                    break;
                }
            } else t = truthy(val);
            if (t == want) json_array_append(res, x);
            json_decref(val);
        }
        json_decref(l);
        json_decref(a0);
        json_decref(test);
        json_decref(targ);
    } else if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape")) {
        if (name[0] != 's') return RERR(LT_ERR_UNSUPPORTED, "chat template: the filter \"%s\" is not supported", name);
        res = v ? json_incref(v) : json_string("");
    } else return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: the filter \"%s\" is not supported", f->line, name);
    return res;
}

/* x.method(args) for strings and dicts */
static json_t *call_method(render *r, scope *sc, node *call, json_t *obj, const char *m) {
    if (obj && json_is_string(obj)) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            json_t *chars = kwarg(r, sc, call, "chars", 0);
            json_t *res = py_strip(obj, chars, m[0] != 'r', m[0] != 'l');
            json_decref(chars);
            return res;
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            json_t *a = kwarg(r, sc, call, "prefix", 0);
            int hit = 0;
            json_t *list = a && json_is_array(a) ? json_incref(a) : json_array();
            if (a && json_is_string(a)) json_array_append(list, a);
            size_t i;
            json_t *x;
            const char *s = json_string_value(obj);
            size_t n = json_string_length(obj);
            json_array_foreach(list, i, x) {
                if (!json_is_string(x)) continue;
                size_t k = json_string_length(x);
                if (k <= n && !memcmp(m[0] == 's' ? s : s + n - k, json_string_value(x), k)) hit = 1;
            }
            json_decref(list);
            json_decref(a);
            return json_boolean(hit);
        }
        if (!strcmp(m, "split")) {
            json_t *sep = kwarg(r, sc, call, "sep", 0), *res = json_array();
            const char *s = json_string_value(obj);
            size_t n = json_string_length(obj);
            if (sep && json_is_string(sep) && json_string_length(sep)) {
                const char *p = json_string_value(sep);
                size_t pn = json_string_length(sep), i = 0;
                for (;;) {
                    const char *hit = memmem(s + i, n - i, p, pn);
                    size_t e = hit ? (size_t)(hit - s) : n;
                    json_array_append_new(res, json_stringn_nocheck(s + i, e - i));
                    if (!hit) break;
                    i = e + pn;
                }
            } else { /* whitespace split */
                size_t i = 0;
                while (i < n) {
                    while (i < n && isspace((unsigned char)s[i])) i++;
                    size_t e = i;
                    while (e < n && !isspace((unsigned char)s[e])) e++;
                    if (e > i) json_array_append_new(res, json_stringn_nocheck(s + i, e - i));
                    i = e;
                }
            }
            json_decref(sep);
            return res;
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") || !strcmp(m, "capitalize")) {
            node f = {.kind = E_FILTER, .s = (char *)m, .line = call->line};
            return apply_filter(r, sc, &f, obj);
        }
        if (!strcmp(m, "replace")) {
            json_t *a = kwarg(r, sc, call, "old", 0), *b = kwarg(r, sc, call, "new", 1), *res;
            if (!a || !b || !json_is_string(a) || !json_is_string(b))
                res = RERR(LT_ERR_DATA, "chat template: replace needs two strings");
            else res = replace_str(obj, a, b);
            json_decref(a);
            json_decref(b);
            return res;
        }
        if (!strcmp(m, "find")) {
            json_t *a = kwarg(r, sc, call, "sub", 0);
            const char *s = json_string_value(obj);
            const char *hit = a && json_is_string(a)
                                  ? memmem(s, json_string_length(obj), json_string_value(a), json_string_length(a))
                                  : NULL;
            json_decref(a);
            return json_integer(hit ? (json_int_t)utf8_count(s, (size_t)(hit - s)) : -1);
        }
    }
    if (obj && json_is_object(obj) && !is_namespace(r, obj)) {
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            json_t *res = json_array(), *x;
            const char *k;
            json_object_foreach(obj, k, x) {
                if (m[0] == 'k') json_array_append_new(res, json_string(k));
                else if (m[0] == 'v') json_array_append(res, x);
                else {
                    json_t *p = json_array();
                    json_array_append_new(p, json_string(k));
                    json_array_append(p, x);
                    json_array_append_new(res, p);
                }
            }
            return res;
        }
        if (!strcmp(m, "get")) {
            json_t *k = kwarg(r, sc, call, "key", 0), *d = kwarg(r, sc, call, "default", 1);
            json_t *v = k && json_is_string(k) ? json_object_get(obj, json_string_value(k)) : NULL;
            json_decref(k);
            if (v) {
                json_decref(d);
                return json_incref(v);
            }
            return d ? d : json_null();
        }
    }
    return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: the method %s.%s() is not supported", call->line,
                type_name(obj), m);
}

static json_t *call_fn(render *r, scope *sc, node *call) {
    node *fn = call->a;
    if (fn->kind == E_ATTR) {
        json_t *obj = eval(r, sc, fn->a);
        if (r->failed) {
            json_decref(obj);
            return NULL;
        }
        json_t *res = call_method(r, sc, call, obj, fn->s);
        json_decref(obj);
        return res;
    }
    if (fn->kind != E_NAME)
        return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: this call is not supported", call->line);
    const char *name = fn->s;
    for (int m = r->n_macros - 1; m >= 0; m--) {
        node *mac = r->macros[m];
        if (strcmp(mac->s, name)) continue;
        if (r->depth > 50) return RERR(LT_ERR_DATA, "chat template: macro %s recurses too deep", name);
        scope ms = {json_object(), r->top};
        int pos = 0;
        for (int i = 0; i < call->args.n && !r->failed; i++) {
            int k = -1;
            if (call->kw && call->kw[i]) {
                for (int q = 0; q < mac->np; q++)
                    if (!strcmp(mac->pnames[q], call->kw[i])) k = q;
            } else k = pos++ < mac->np ? pos - 1 : -1;
            if (k < 0) {
                json_decref(ms.vars);
                return RERR(LT_ERR_DATA, "chat template: line %d: macro %s got an unexpected argument", call->line,
                            name);
            }
            json_t *v = eval(r, sc, call->args.v[i]);
            if (v) json_object_set_new(ms.vars, mac->pnames[k], v);
        }
        for (int q = 0; q < mac->np && !r->failed; q++)
            if (!json_object_get(ms.vars, mac->pnames[q]) && mac->pdefs[q]) {
                json_t *v = eval(r, &ms, mac->pdefs[q]);
                if (v) json_object_set_new(ms.vars, mac->pnames[q], v);
            }
        lt_buf tmp = {0}, *save = r->out, *savem = r->mask;
        r->out = &tmp;
        r->mask = NULL;
        r->depth++;
        exec_nodes(r, &ms, &mac->body);
        r->depth--;
        r->out = save;
        r->mask = savem;
        json_decref(ms.vars);
        json_t *res = r->failed ? NULL : json_stringn_nocheck(tmp.p ? tmp.p : "", tmp.n);
        free(tmp.p);
        return res;
    }
    if (!strcmp(name, "raise_exception")) {
        json_t *m = kwarg(r, sc, call, "message", 0);
        lt_buf b = {0};
        py_str(&b, m);
        json_decref(m);
        RERR(LT_ERR_DATA, "chat template raised an exception: %s", b.p ? b.p : "");
        free(b.p);
        return NULL;
    }
    if (!strcmp(name, "strftime_now")) {
        json_t *f = kwarg(r, sc, call, "format", 0);
        char out[256] = "";
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        if (f && json_is_string(f)) strftime(out, sizeof out, json_string_value(f), &tm);
        json_decref(f);
        return json_string(out);
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        json_t *o = json_object();
        for (int i = 0; i < call->args.n; i++) {
            if (!call->kw || !call->kw[i]) {
                json_decref(o);
                return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: %s() takes keyword arguments only here",
                            call->line, name);
            }
            json_t *v = eval(r, sc, call->args.v[i]);
            json_object_set_new(o, call->kw[i], v ? v : json_null());
        }
        if (name[0] == 'n') json_array_append(r->namespaces, o);
        return o;
    }
    if (!strcmp(name, "range")) {
        json_t *a = kwarg(r, sc, call, "", 0), *b = kwarg(r, sc, call, "", 1), *c = kwarg(r, sc, call, "", 2);
        long long lo = 0, hi, st = 1;
        if (b) {
            lo = json_integer_value(a);
            hi = json_integer_value(b);
        } else hi = json_integer_value(a);
        if (c) st = json_integer_value(c);
        json_decref(a);
        json_decref(b);
        json_decref(c);
        if (st == 0 || (hi - lo) / st > 1000000) return RERR(LT_ERR_DATA, "chat template: bad range()");
        json_t *l = json_array();
        for (long long i = lo; st > 0 ? i < hi : i > hi; i += st) json_array_append_new(l, json_integer(i));
        return l;
    }
    return RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: the function %s() is not supported", call->line, name);
}

static json_t *binop(render *r, node *n, json_t *a, json_t *b) {
    const char *op = n->s;
    double x, y;
    if (!strcmp(op, "~")) {
        lt_buf s = {0};
        py_str(&s, a);
        py_str(&s, b);
        json_t *res = json_stringn_nocheck(s.p ? s.p : "", s.n);
        free(s.p);
        return res;
    }
    if (!strcmp(op, "==")) return json_boolean(equal(a, b));
    if (!strcmp(op, "!=")) return json_boolean(!equal(a, b));
    if (!strcmp(op, "in") || !strcmp(op, "notin")) {
        int hit = 0;
        if (b && json_is_string(b) && a && json_is_string(a))
            hit = memmem(json_string_value(b), json_string_length(b), json_string_value(a), json_string_length(a)) !=
                      NULL ||
                  !json_string_length(a);
        else if (b && json_is_array(b)) {
            size_t i;
            json_t *x;
            json_array_foreach(b, i, x) if (equal(a, x)) hit = 1;
        } else if (b && json_is_object(b) && a && json_is_string(a))
            hit = json_object_get(b, json_string_value(a)) != NULL;
        else if (!b || !(json_is_object(b) || json_is_array(b) || json_is_string(b)))
            return RERR(LT_ERR_DATA, "chat template: line %d: argument of type %s is not iterable", n->line,
                        type_name(b));
        return json_boolean(op[0] == 'i' ? hit : !hit);
    }
    if (op[0] == '<' || op[0] == '>') {
        int c;
        if (a && b && json_is_string(a) && json_is_string(b)) c = strcmp(json_string_value(a), json_string_value(b));
        else if (a && b && num(a, &x) && num(b, &y)) c = x < y ? -1 : x > y;
        else
            return RERR(LT_ERR_DATA, "chat template: line %d: cannot compare %s and %s", n->line, type_name(a),
                        type_name(b));
        int res = !strcmp(op, "<") ? c < 0 : !strcmp(op, "<=") ? c <= 0 : !strcmp(op, ">") ? c > 0 : c >= 0;
        return json_boolean(res);
    }
    if (!strcmp(op, "+")) {
        if (a && b && json_is_string(a) && json_is_string(b)) {
            lt_buf s = {0};
            lt_buf_put(&s, json_string_value(a), json_string_length(a));
            lt_buf_put(&s, json_string_value(b), json_string_length(b));
            json_t *res = json_stringn_nocheck(s.p ? s.p : "", s.n);
            free(s.p);
            return res;
        }
        if (a && b && json_is_array(a) && json_is_array(b)) {
            json_t *l = json_copy(a);
            json_array_extend(l, b);
            return l;
        }
    }
    if (a && b && num(a, &x) && num(b, &y) && !json_is_string(a) && !json_is_string(b)) {
        int ints = (json_is_integer(a) || json_is_boolean(a)) && (json_is_integer(b) || json_is_boolean(b));
        long long i = (long long)x, j = (long long)y;
        if (!strcmp(op, "+")) return ints ? json_integer(i + j) : json_real(x + y);
        if (!strcmp(op, "-")) return ints ? json_integer(i - j) : json_real(x - y);
        if (!strcmp(op, "*")) return ints ? json_integer(i * j) : json_real(x * y);
        if (!strcmp(op, "/")) {
            if (y == 0) return RERR(LT_ERR_DATA, "chat template: division by zero");
            return json_real(x / y);
        }
        if (!strcmp(op, "//")) {
            if (y == 0) return RERR(LT_ERR_DATA, "chat template: division by zero");
            return ints ? json_integer((long long)floor(x / y)) : json_real(floor(x / y));
        }
        if (!strcmp(op, "%")) {
            if (y == 0) return RERR(LT_ERR_DATA, "chat template: modulo by zero");
            if (ints) {
                long long m = i % j;
                if (m && ((m < 0) != (j < 0))) m += j;
                return json_integer(m);
            }
            return json_real(x - y * floor(x / y));
        }
        if (!strcmp(op, "**")) return ints && j >= 0 ? json_integer((long long)pow(x, y)) : json_real(pow(x, y));
    }
    if (!strcmp(op, "*") && a && b && json_is_string(a) && json_is_integer(b)) {
        lt_buf s = {0};
        for (long long k = 0; k < json_integer_value(b); k++)
            lt_buf_put(&s, json_string_value(a), json_string_length(a));
        json_t *res = json_stringn_nocheck(s.p ? s.p : "", s.n);
        free(s.p);
        return res;
    }
    return RERR(LT_ERR_DATA, "chat template: line %d: unsupported operand types for %s: %s and %s", n->line, op,
                type_name(a), type_name(b));
}

static json_t *eval(render *r, scope *sc, node *n) {
    if (r->failed || !n) return NULL;
    json_t *a, *b, *res;
    switch (n->kind) {
    case E_LIT: return json_incref(n->lit);
    case E_NAME: {
        json_t *v = lookup(sc, n->s);
        static const char *builtins[] = {"raise_exception", "strftime_now", "namespace", "range", "dict"};
        for (int k = 0; !v && k < 5; k++) /* functions are defined values (`strftime_now is defined`) */
            if (!strcmp(n->s, builtins[k])) v = json_sprintf("<function %s>", n->s);
        return v;
    }
    case E_ATTR:
    case E_ITEM: {
        a = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(a);
            return NULL;
        }
        if (!a)
            return RERR(LT_ERR_DATA, "chat template: line %d: '%s' is undefined", n->line,
                        n->a->kind == E_NAME   ? n->a->s
                        : n->a->kind == E_ATTR ? n->a->s
                                               : "value");
        b = n->kind == E_ATTR ? json_string(n->s) : eval(r, sc, n->b);
        res = get_item(a, b);
        json_decref(a);
        json_decref(b);
        return res;
    }
    case E_SLICE: {
        a = eval(r, sc, n->a);
        json_t *lo = eval(r, sc, n->b), *hi = eval(r, sc, n->c), *st = n->args.n ? eval(r, sc, n->args.v[0]) : NULL;
        long long step = st && json_is_integer(st) ? json_integer_value(st) : 1;
        res = NULL;
        if (!r->failed && a && (json_is_array(a) || json_is_string(a)) && step != 0) {
            json_t *l = json_is_array(a) ? json_incref(a) : make_list_from(a);
            long long len = (long long)json_array_size(l), i0, i1;
            long long L = lo && json_is_integer(lo) ? json_integer_value(lo) : (step > 0 ? 0 : len - 1);
            long long H = hi && json_is_integer(hi) ? json_integer_value(hi) : (step > 0 ? len : -len - 1);
            if (lo && json_is_integer(lo) && L < 0) L += len;
            if (hi && json_is_integer(hi) && H < 0) H += len;
            if (step > 0) {
                i0 = L < 0 ? 0 : L > len ? len : L;
                i1 = H < 0 ? 0 : H > len ? len : H;
            } else {
                i0 = L < -1 ? -1 : L > len - 1 ? len - 1 : L;
                i1 = H < -1 ? -1 : H > len - 1 ? len - 1 : H;
            }
            json_t *out = json_array();
            for (long long i = i0; step > 0 ? i < i1 : i > i1; i += step)
                json_array_append(out, json_array_get(l, (size_t)i));
            if (json_is_string(a)) {
                lt_buf s = {0};
                size_t i;
                json_t *x;
                json_array_foreach(out, i, x) lt_buf_put(&s, json_string_value(x), json_string_length(x));
                json_decref(out);
                out = json_stringn_nocheck(s.p ? s.p : "", s.n);
                free(s.p);
            }
            json_decref(l);
            res = out;
        } else if (!r->failed) RERR(LT_ERR_DATA, "chat template: line %d: cannot slice %s", n->line, type_name(a));
        json_decref(a);
        json_decref(lo);
        json_decref(hi);
        json_decref(st);
        return res;
    }
    case E_CALL: return call_fn(r, sc, n);
    case E_FILTER:
        a = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(a);
            return NULL;
        }
        res = apply_filter(r, sc, n, a);
        json_decref(a);
        return res;
    case E_TEST: {
        a = eval(r, sc, n->a);
        b = n->args.n ? eval(r, sc, n->args.v[0]) : NULL;
        int t = 0;
        if (!r->failed) apply_test(r, n->s, a, b, &t);
        json_decref(a);
        json_decref(b);
        return r->failed ? NULL : json_boolean(n->negate ? !t : t);
    }
    case E_NOT:
        a = eval(r, sc, n->a);
        res = json_boolean(!truthy(a));
        json_decref(a);
        return r->failed ? (json_decref(res), NULL) : res;
    case E_NEG: {
        a = eval(r, sc, n->a);
        double d;
        res = a && json_is_integer(a) ? json_integer(-json_integer_value(a))
              : a && num(a, &d)       ? json_real(-d)
                                      : RERR(LT_ERR_DATA, "chat template: line %d: bad operand for unary -", n->line);
        json_decref(a);
        return res;
    }
    case E_AND:
    case E_OR:
        a = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(a);
            return NULL;
        }
        if ((n->kind == E_AND) != truthy(a)) return a ? a : NULL; /* short circuit returns the operand */
        json_decref(a);
        return eval(r, sc, n->b);
    case E_COND:
        b = eval(r, sc, n->b);
        if (r->failed) {
            json_decref(b);
            return NULL;
        }
        {
            int t = truthy(b);
            json_decref(b);
            return t ? eval(r, sc, n->a) : n->c ? eval(r, sc, n->c) : NULL;
        }
    case E_BIN:
        a = eval(r, sc, n->a);
        b = eval(r, sc, n->b);
        res = r->failed ? NULL : binop(r, n, a, b);
        json_decref(a);
        json_decref(b);
        return res;
    case E_LIST:
        res = json_array();
        for (int i = 0; i < n->args.n; i++) {
            a = eval(r, sc, n->args.v[i]);
            json_array_append_new(res, a ? a : json_null());
        }
        return res;
    case E_DICT:
        res = json_object();
        for (int i = 0; i + 1 < n->args.n; i += 2) {
            a = eval(r, sc, n->args.v[i]);
            b = eval(r, sc, n->args.v[i + 1]);
            if (a && json_is_string(a)) json_object_set_new(res, json_string_value(a), b ? b : json_null());
            else {
                json_decref(b);
                if (!r->failed)
                    RERR(LT_ERR_UNSUPPORTED, "chat template: line %d: dict keys must be strings here", n->line);
            }
            json_decref(a);
        }
        return res;
    }
    return RERR(LT_ERR_INTERNAL, "chat template: unknown node");
}

static void emit(render *r, const char *s, size_t n) {
    if (lt_buf_put(r->out, s, n)) {
        RERR(LT_ERR_NOMEM, "out of memory");
        return;
    }
    if (r->mask)
        for (size_t i = 0; i < n; i++) lt_buf_putc(r->mask, (char)(r->gen > 0));
}

static void exec_nodes(render *r, scope *sc, nodes *v);

static void set_var(scope *sc, const char *name, json_t *v) {
    json_object_set_new(sc->vars, name, v ? v : json_null());
}

static void exec_node(render *r, scope *sc, node *n) {
    if (r->failed || r->brk || r->cont) return;
    if (++r->steps > 50000000) {
        RERR(LT_ERR_DATA, "chat template: too many steps (a runaway loop?)");
        return;
    }
    switch (n->kind) {
    case N_TEXT: emit(r, n->text, n->slen); return;
    case N_OUT: {
        json_t *v = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(v);
            return;
        }
        lt_buf b = {0};
        py_str(&b, v);
        emit(r, b.p ? b.p : "", b.n);
        free(b.p);
        json_decref(v);
        return;
    }
    case N_IF: {
        json_t *c = eval(r, sc, n->a);
        int t = truthy(c);
        json_decref(c);
        if (!r->failed) exec_nodes(r, sc, t ? &n->body : &n->orelse);
        return;
    }
    case N_SET: {
        json_t *v = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(v);
            return;
        }
        if (n->s) { /* ns.attr = v */
            json_t *ns = lookup(sc, n->targets[0]);
            if (!ns || !is_namespace(r, ns)) {
                json_decref(ns);
                json_decref(v);
                RERR(LT_ERR_DATA, "chat template: line %d: \"%s\" is not a namespace", n->line, n->targets[0]);
                return;
            }
            json_object_set_new(ns, n->s, v ? v : json_null());
            json_decref(ns);
        } else if (v) set_var(sc, n->targets[0], v);
        else json_object_del(sc->vars, n->targets[0]), (void)0; /* set x = undefined */
        return;
    }
    case N_SETBLOCK: {
        lt_buf tmp = {0}, *save = r->out, *savem = r->mask;
        r->out = &tmp;
        r->mask = NULL;
        exec_nodes(r, sc, &n->body);
        r->out = save;
        r->mask = savem;
        set_var(sc, n->targets[0], json_stringn_nocheck(tmp.p ? tmp.p : "", tmp.n));
        free(tmp.p);
        return;
    }
    case N_GEN:
        r->gen++;
        exec_nodes(r, sc, &n->body);
        r->gen--;
        return;
    case N_MACRO:
        if (r->n_macros == 32) {
            RERR(LT_ERR_UNSUPPORTED, "chat template: more than 32 macros");
            return;
        }
        r->macros[r->n_macros++] = n;
        set_var(sc, n->s, json_sprintf("<macro %s>", n->s));
        return;
    case N_BREAK: r->brk = 1; return;
    case N_CONTINUE: r->cont = 1; return;
    case N_FOR: {
        json_t *it = eval(r, sc, n->a);
        if (r->failed) {
            json_decref(it);
            return;
        }
        if (it && !json_is_array(it) && !json_is_object(it) && !json_is_string(it)) {
            RERR(LT_ERR_DATA, "chat template: line %d: %s is not iterable", n->line, type_name(it));
            json_decref(it);
            return;
        }
        json_t *l = it ? make_list_from(it) : json_array();
        if (it && json_is_object(it) && n->ntargets == 1) { /* iterating a dict gives its keys */
        }
        json_decref(it);
        /* the inline `if` filters items before loop.* is computed */
        if (n->b) {
            json_t *kept = json_array();
            size_t i;
            json_t *x;
            json_array_foreach(l, i, x) {
                scope s2 = {json_object(), sc};
                if (n->ntargets == 1) set_var(&s2, n->targets[0], json_incref(x));
                else
                    for (int k = 0; k < n->ntargets; k++)
                        set_var(&s2, n->targets[k], json_incref(json_array_get(x, (size_t)k)));
                json_t *c = eval(r, &s2, n->b);
                if (truthy(c)) json_array_append(kept, x);
                json_decref(c);
                json_decref(s2.vars);
            }
            json_decref(l);
            l = kept;
        }
        size_t len = json_array_size(l);
        for (size_t i = 0; i < len && !r->failed; i++) {
            scope s2 = {json_object(), sc};
            json_t *x = json_array_get(l, i);
            if (n->ntargets == 1) set_var(&s2, n->targets[0], json_incref(x));
            else {
                if (!json_is_array(x) || json_array_size(x) != (size_t)n->ntargets) {
                    RERR(LT_ERR_DATA, "chat template: line %d: cannot unpack a loop item into %d names", n->line,
                         n->ntargets);
                    json_decref(s2.vars);
                    break;
                }
                for (int k = 0; k < n->ntargets; k++)
                    set_var(&s2, n->targets[k], json_incref(json_array_get(x, (size_t)k)));
            }
            json_t *loop = json_pack("{s:I,s:I,s:b,s:b,s:I,s:I,s:I}", "index", (json_int_t)i + 1, "index0",
                                     (json_int_t)i, "first", i == 0, "last", i + 1 == len, "length", (json_int_t)len,
                                     "revindex", (json_int_t)(len - i), "revindex0", (json_int_t)(len - i - 1));
            if (i > 0) json_object_set(loop, "previtem", json_array_get(l, i - 1));
            if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(l, i + 1));
            set_var(&s2, "loop", loop);
            exec_nodes(r, &s2, &n->body);
            json_decref(s2.vars);
            r->cont = 0;
            if (r->brk) {
                r->brk = 0;
                break;
            }
        }
        if (len == 0 && !r->failed) exec_nodes(r, sc, &n->orelse);
        json_decref(l);
        return;
    }
    }
}

static void exec_nodes(render *r, scope *sc, nodes *v) {
    for (int i = 0; i < v->n && !r->failed && !r->brk && !r->cont; i++) exec_node(r, sc, v->v[i]);
}

lt_status lt_jinja_render(const char *tmpl, json_t *ctx, lt_buf *out, lt_buf *mask, lt_error *err) {
    parser ps = {.src = tmpl, .err = err};
    lt_status st = lex(&ps);
    nodes root = {0};
    if (!st) {
        parse_body(&ps, &root, NULL, 0);
        if (ps.failed) st = err->status ? err->status : LT_ERR_UNSUPPORTED;
    }
    if (!st) {
        render r = {.out = out, .mask = mask, .err = err, .namespaces = json_array()};
        scope top = {json_deep_copy(ctx), NULL};
        r.top = &top;
        exec_nodes(&r, &top, &root);
        json_decref(top.vars);
        json_decref(r.namespaces);
        if (r.failed) st = err->status;
    }
    nodes_free(&root);
    free(ps.toks);
    if (!st && !out->p) lt_buf_puts(out, "");
    if (!st && mask && !mask->p) lt_buf_puts(mask, "");
    return st;
}

/* ---- chat API ----------------------------------------------------------------------------------- */

/* The variables transformers gives a chat template: messages, tools and documents (None here),
 * add_generation_prompt, and the special tokens of tokenizer_config.json. */
static json_t *chat_context(struct lt_tokenizer *t, json_t *messages, int add_generation_prompt) {
    json_t *ctx = json_object();
    json_object_set(ctx, "messages", messages);
    json_object_set_new(ctx, "tools", json_null());
    json_object_set_new(ctx, "documents", json_null());
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    static const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int i = 0; i < 4; i++) {
        const char *s = lt_tok_special_str(t, names[i]);
        if (*s) json_object_set_new(ctx, names[i], json_string(s));
    }
    return ctx;
}

static lt_status render_once(struct lt_tokenizer *t, json_t *messages, int agp, lt_buf *text, lt_buf *mask) {
    json_t *ctx = chat_context(t, messages, agp);
    text->n = 0;
    if (mask) mask->n = 0;
    lt_status st = lt_jinja_render(lt_tok_chat_template(t), ctx, text, mask, lt_tok_error(t));
    json_decref(ctx);
    return st;
}

lt_status lt_tok_render(struct lt_tokenizer *t, json_t *messages, int add_generation_prompt, lt_buf *text,
                        lt_buf *mask) {
    lt_error *err = lt_tok_error(t);
    const char *tmpl = lt_tok_chat_template(t);
    if (!tmpl) return lt_fail(err, LT_ERR_MISSING, "the tokenizer has no chat_template (tokenizer_config.json)");
    if (!json_is_array(messages)) return lt_fail(err, LT_ERR_DATA, "messages must be a JSON array");
    size_t i;
    json_t *m;
    json_array_foreach(messages, i,
                       m) if (!json_is_object(m) ||
                              !json_is_string(json_object_get(
                                  m, "role"))) return lt_fail(err, LT_ERR_DATA,
                                                              "messages[%zu] must be an object with a string \"role\"",
                                                              i);
    lt_status st = render_once(t, messages, add_generation_prompt, text, mask);
    if (st || !mask || strstr(tmpl, "endgeneration")) return st;
    /* No generation blocks: an assistant message's text is what it adds to the rendering of the
     * conversation before it with the generation prompt. */
    memset(mask->p, 0, mask->n);
    lt_buf pre = {0}, upto = {0};
    json_array_foreach(messages, i, m) {
        if (strcmp(json_string_value(json_object_get(m, "role")), "assistant")) continue;
        json_t *a = json_array(), *b = json_array();
        for (size_t k = 0; k < i; k++) json_array_append(a, json_array_get(messages, k));
        json_array_extend(b, a);
        json_array_append(b, m);
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
    lt_status st = lt_tok_render(t, msgs, add_generation_prompt, &text, &bmask);
    json_decref(msgs);
    if (!st) st = lt_tok_encode_into(t, text.p, text.n, 0, &v);
    if (!st && !(tm = malloc((v.n + 1) * sizeof *tm))) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    if (!st) st = lt_tok_align_mask(t, text.p, text.n, bmask.p, v.p, v.n, tm);
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
