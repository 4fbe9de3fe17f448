/*
 * jinja.c - the Jinja engine of chat templates, as transformers' apply_chat_template renders them:
 * jinja2 3.1's ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks, the loopcontrols
 * extension and {% generation %} blocks (transformers' AssistantTracker).
 *
 * Three stages: lex (text and tags, whitespace control, newlines normalised to "\n" and one trailing
 * newline dropped, as jinja2), parse (an AST; the grammar and precedence of jinja2's parser.py), run
 * (statements and expressions over jansson values; jinja_lib.c gives the values their Python meaning).
 *
 * Statements: if / elif / else, for (tuple targets, inline if, else, loop.*, loop.cycle / changed,
 * break / continue), set (names, tuples, namespace attributes, set blocks with filters), macro
 * (defaults, varargs, kwargs, caller), call blocks, filter blocks, with, raw, generation, comments.
 * Expressions: literals (strings with Python escapes, ints in any base, floats, lists, tuples, dicts),
 * names, attributes, items, slices, calls with keyword, *args and **kwargs arguments, filters, tests,
 * arithmetic, ~, chained comparisons, in / not in, and / or / not, conditional expressions.
 * Anything else (include, import, extends, recursive loops, an unknown filter) is LT_ERR_UNSUPPORTED
 * naming it: a template is never guessed.
 *
 * Limits (jinja.h): nesting depth (parser recursion, macro recursion), steps (statements, expressions and
 * loop items), bytes (the output, any one string); each failure names the limit.
 */
#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/jinja.h"

/* ---- lexer ------------------------------------------------------------------------------------------ */

enum { T_TEXT, T_VAR, T_BLOCK, T_EOF };
typedef struct jtok {
    int kind;
    const char *s; /* text, or the inside of a tag without its - / + marks */
    size_t n;
    int line;
} jtok;

typedef struct parser {
    const char *src; /* the normalised template */
    size_t srclen;
    jtok *toks;
    size_t nt, cap, pos;
    /* the tag being parsed */
    const char *p, *end;
    int line;
    int depth, max_depth;
    lt_error *err;
    int failed;
} parser;

static int perr(parser *ps, lt_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(parser *ps, lt_status st, const char *fmt, ...) {
    if (ps->failed) return -1;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ps->failed = 1;
    lt_fail(ps->err, st, "chat template: line %d: %s", ps->line, msg);
    return -1;
}
#define SYNTAX(...) perr(ps, LT_ERR_UNSUPPORTED, __VA_ARGS__)

static int push_tok(parser *ps, int kind, const char *s, size_t n, int line) {
    if (ps->nt == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        jtok *t = realloc(ps->toks, cap * sizeof *t);
        if (!t) return perr(ps, LT_ERR_NOMEM, "out of memory");
        ps->toks = t;
        ps->cap = cap;
    }
    ps->toks[ps->nt++] = (jtok){kind, s, n, line};
    return 0;
}

/* Python's \s (str.isspace) at s[i], as the length of the character, or 0 */
static int space_at(const char *s, size_t n, size_t i) {
    unsigned char c = (unsigned char)s[i];
    if (c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x1F)) return 1;
    if (c < 0x80) return 0;
    uint32_t cp;
    int l = lt_utf8_next((const unsigned char *)s + i, n - i, &cp);
    return (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
            cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
               ? l
               : 0;
}
static const char *rstrip_ws(const char *a, const char *b) { /* the end of [a, b) without trailing \s */
    while (b > a) {
        const char *q = b - 1;
        while (q > a && ((unsigned char)*q & 0xC0) == 0x80) q--;
        if (!space_at(q, (size_t)(b - q), 0)) break;
        b = q;
    }
    return b;
}
static const char *lstrip_ws(const char *a, const char *b) {
    int l;
    while (a < b && (l = space_at(a, (size_t)(b - a), 0))) a += l;
    return a;
}

static int line_at(parser *ps, const char *p) {
    int l = 1;
    for (const char *q = ps->src; q < p; q++) l += *q == '\n';
    return l;
}

/* The end of a tag opened at `inner`: the first `close` outside strings and brackets (jinja2 ends
 * {{ }} and {% %} only when its brackets balance). NULL when it never closes. */
static const char *tag_end(const char *inner, const char *end, char kind) {
    if (kind == '#') {
        const char *q = memmem(inner, (size_t)(end - inner), "#}", 2);
        return q && q > inner && (q[-1] == '-' || q[-1] == '+') ? q - 1 : q;
    }
    char want = kind == '{' ? '}' : '%';
    int depth = 0;
    for (const char *q = inner; q < end; q++) {
        char c = *q;
        if (depth == 0 && c == want && q + 1 < end && q[1] == '}') /* `-}}` / `+%}`: the mark belongs to the close */
            return q > inner && (q[-1] == '-' || q[-1] == '+') ? q - 1 : q;
        if (c == '\'' || c == '"') {
            for (q++; q < end && *q != c; q++)
                if (*q == '\\' && q + 1 < end) q++;
            if (q >= end) return NULL;
        } else if (c == '(' || c == '[' || c == '{') depth++;
        else if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
    }
    return NULL;
}

/* Split the template into text and tags with whitespace control: `-` strips all whitespace on its side,
 * `+` keeps it, lstrip_blocks drops spaces and tabs before a block or comment tag that starts a line,
 * trim_blocks drops the newline after one. {% raw %} ... {% endraw %} is text. */
static lt_status lex(parser *ps) {
    const char *s = ps->src, *end = ps->src + ps->srclen, *text = s;
    int trim_next = 0; /* strip the start of the next text: 1 = all whitespace ('-'), 2 = one newline */
    for (;;) {
        const char *o = s;
        for (; o && o < end; o++) {
            o = memchr(o, '{', (size_t)(end - o));
            if (!o || (o + 1 < end && (o[1] == '{' || o[1] == '%' || o[1] == '#'))) break;
        }
        if (o && o >= end) o = NULL;
        const char *a = text, *b = o ? o : end;
        if (trim_next == 1) a = lstrip_ws(a, b);
        else if (trim_next == 2 && a < b && *a == '\n') a++;
        trim_next = 0;
        if (!o) {
            if (b > a && push_tok(ps, T_TEXT, a, (size_t)(b - a), line_at(ps, a))) return ps->err->status;
            break;
        }
        char kind = o[1];
        const char *inner = o + 2;
        int lminus = inner < end && *inner == '-', lplus = inner < end && *inner == '+';
        if (lminus || lplus) inner++;
        if (lminus) b = rstrip_ws(a, b);
        else if (kind != '{' && !lplus) { /* lstrip_blocks: spaces and tabs back to the line start */ const char *q = b;
            while (q > a && (q[-1] == ' ' || q[-1] == '\t')) q--;
            if (q == ps->src || q[-1] == '\n') b = q;
        }
        if (b > a && push_tok(ps, T_TEXT, a, (size_t)(b - a), line_at(ps, a))) return ps->err->status;
        ps->line = line_at(ps, o);
        const char *c = tag_end(inner, end, kind);
        if (!c) return (lt_status)(perr(ps, LT_ERR_UNSUPPORTED, "\"{%c\" is never closed", kind), ps->err->status);
        int rminus = *c == '-', rplus = *c == '+';
        const char *after = c + (rminus || rplus) + 2;
        if (kind != '#' && push_tok(ps, kind == '{' ? T_VAR : T_BLOCK, inner, (size_t)(c - inner), ps->line))
            return ps->err->status;
        s = text = after;
        if (rminus) trim_next = 1;
        else if (kind != '{' && !rplus) trim_next = 2;
        /* {% raw %}: text up to {% endraw %} */
        if (kind == '%') {
            const char *w = lstrip_ws(inner, c);
            const char *we = rstrip_ws(w, c);
            if (we - w == 3 && !memcmp(w, "raw", 3)) {
                ps->nt--; /* not a statement */
                const char *q = after, *found = NULL, *rend = NULL;
                int emin = 0, eplus = 0, ermin = 0, erplus = 0;
                while ((q = memmem(q, (size_t)(end - q), "{%", 2))) {
                    const char *r = q + 2;
                    emin = r < end && *r == '-';
                    eplus = r < end && *r == '+';
                    r += emin || eplus;
                    r = lstrip_ws(r, end);
                    if ((size_t)(end - r) >= 6 && !memcmp(r, "endraw", 6)) {
                        r = lstrip_ws(r + 6, end);
                        ermin = r < end && *r == '-';
                        erplus = r < end && *r == '+';
                        r += ermin || erplus;
                        if (end - r >= 2 && r[0] == '%' && r[1] == '}') {
                            found = q;
                            rend = r + 2;
                            break;
                        }
                    }
                    q += 2;
                }
                if (!found) return (lt_status)(perr(ps, LT_ERR_UNSUPPORTED, "missing {%% endraw %%}"), ps->err->status);
                const char *ra = after, *rb = found;
                if (trim_next == 1) ra = lstrip_ws(ra, rb);
                else if (trim_next == 2 && ra < rb && *ra == '\n') ra++;
                if (emin) rb = rstrip_ws(ra, rb);
                else if (!eplus) {
                    const char *t = rb;
                    while (t > ra && (t[-1] == ' ' || t[-1] == '\t')) t--;
                    if (t == ps->src || t[-1] == '\n') rb = t;
                }
                if (rb > ra && push_tok(ps, T_TEXT, ra, (size_t)(rb - ra), line_at(ps, ra))) return ps->err->status;
                s = text = rend;
                trim_next = ermin ? 1 : erplus ? 0 : 2;
            }
        }
    }
    return push_tok(ps, T_EOF, "", 0, 0) ? ps->err->status : LT_OK;
}

/* ---- AST -------------------------------------------------------------------------------------------- */

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
    N_CALLBLOCK,
    N_FILTERBLOCK,
    N_WITH,
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
    E_POS,
    E_BIN,
    E_CMP,
    E_CONCAT,
    E_AND,
    E_OR,
    E_COND,
    E_LIST,
    E_TUPLE,
    E_DICT,
    E_HOLE /* the input of a filter block's filters */
};

typedef struct node node;
typedef struct nodes {
    node **v;
    int n;
} nodes;
struct node {
    int kind, line;
    char *s;          /* name, attribute, operator, filter / test name */
    const char *text; /* N_TEXT: into the template */
    size_t slen;
    json_t *lit;
    node *a, *b, *c;    /* operands; N_FOR: a = iterable, b = inline if; N_CALLBLOCK: a = the call */
    node *target;       /* N_FOR / N_SET / N_SETBLOCK: what is assigned */
    nodes args;         /* call / filter / test arguments; list, tuple items; dict keys and values; E_CMP operands */
    char **kw;          /* keyword names of args (NULL: positional) */
    node *star, *dstar; /* *args, **kwargs of a call */
    char **ops;         /* E_CMP: the operators */
    nodes body, orelse; /* N_WITH: args = values, body; kw = names */
    char **pnames;      /* N_MACRO / N_CALLBLOCK: parameters and their defaults */
    node **pdefs;
    int np;
    int nops;                                   /* E_CMP: operators */
    int negate;                                 /* E_TEST: `is not` */
    int uses_varargs, uses_kwargs, uses_caller; /* N_MACRO / N_CALLBLOCK */
};

static void node_free(node *n);
static void nodes_free(nodes *v) {
    for (int i = 0; i < v->n; i++) node_free(v->v[i]);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}
static void node_free(node *n) {
    if (!n) return;
    free(n->s);
    if (n->lit) json_decref(n->lit);
    node_free(n->a);
    node_free(n->b);
    node_free(n->c);
    node_free(n->target);
    node_free(n->star);
    node_free(n->dstar);
    if (n->kw)
        for (int i = 0; i < n->args.n; i++) free(n->kw[i]);
    free(n->kw);
    if (n->ops)
        for (int i = 0; i < n->nops; i++) free(n->ops[i]);
    free(n->ops);
    nodes_free(&n->args);
    nodes_free(&n->body);
    nodes_free(&n->orelse);
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
        perr(ps, LT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = ps->line;
    return n;
}
/* append x to v (x is freed when that fails) */
static void add(parser *ps, nodes *v, node *x) {
    if (!x) return;
    node **nv = realloc(v->v, (size_t)(v->n + 1) * sizeof *nv);
    if (!nv) {
        perr(ps, LT_ERR_NOMEM, "out of memory");
        node_free(x);
        return;
    }
    v->v = nv;
    v->v[v->n++] = x;
}
/* an argument with a keyword name (or NULL) */
static void add_arg(parser *ps, node *call, char *kw, node *v) {
    if (!v) {
        free(kw);
        return;
    }
    char **nk = realloc(call->kw, (size_t)(call->args.n + 1) * sizeof *nk);
    if (!nk) {
        free(kw);
        node_free(v);
        perr(ps, LT_ERR_NOMEM, "out of memory");
        return;
    }
    call->kw = nk;
    call->kw[call->args.n] = kw;
    add(ps, &call->args, v);
    if (ps->failed) call->kw[call->args.n] = NULL;
}

/* ---- expression scanning ---------------------------------------------------------------------------- */

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p)) ps->p++;
}
static int is_ident_start(char c) { return isalpha((unsigned char)c) || c == '_'; }
static int is_ident(char c) { return isalnum((unsigned char)c) || c == '_'; }
/* the operator op next (and not the start of a longer one: `*` is not `**`, `/` not `//`, `=` not `==`) */
static int peek_op(parser *ps, const char *op) {
    skip_ws(ps);
    size_t n = strlen(op), left = (size_t)(ps->end - ps->p);
    if (left < n || memcmp(ps->p, op, n)) return 0;
    if (n == 1 && left > 1) {
        char c = ps->p[1];
        if ((op[0] == '*' && c == '*') || (op[0] == '/' && c == '/') || (op[0] == '=' && c == '=') ||
            (op[0] == '<' && c == '=') || (op[0] == '>' && c == '=') || (op[0] == '!' && c == '='))
            return 0;
    }
    return 1;
}
static int accept_op(parser *ps, const char *op) {
    if (!peek_op(ps, op)) return 0;
    ps->p += strlen(op);
    return 1;
}
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
        SYNTAX("expected a name at \"%.20s\"", ps->p);
        return NULL;
    }
    const char *s = ps->p;
    while (ps->p < ps->end && is_ident(*ps->p)) ps->p++;
    char *r = strndup(s, (size_t)(ps->p - s));
    if (!r) perr(ps, LT_ERR_NOMEM, "out of memory");
    return r;
}
static void expect(parser *ps, const char *op) {
    if (!ps->failed && !accept_op(ps, op)) SYNTAX("expected \"%s\" at \"%.20s\"", op, ps->p);
}
static int at_end(parser *ps) {
    skip_ws(ps);
    return ps->p >= ps->end;
}

/* nesting: every recursion of the parser passes here */
static int enter(parser *ps) {
    if (++ps->depth > ps->max_depth) ps->max_depth = ps->depth;
    if (ps->depth > LT_JINJA_MAX_DEPTH)
        return SYNTAX("the template nests deeper than %d levels (the limit; real templates nest far less)",
                      LT_JINJA_MAX_DEPTH);
    return 0;
}
static void leave(parser *ps) { ps->depth--; }

static node *parse_expr(parser *ps, int with_condexpr);
static node *parse_tuple(parser *ps, int with_condexpr, int explicit_parens, const char *end_kw);

/* a string literal: Python's unicode-escape (jinja2 decodes its literals so) */
static json_t *string_lit(parser *ps) {
    char q = *ps->p++;
    lt_buf b = {0};
    while (ps->p < ps->end && *ps->p != q) {
        char c = *ps->p++;
        if (c != '\\' || ps->p >= ps->end) {
            lt_buf_putc(&b, c);
            continue;
        }
        char e = *ps->p++;
        uint32_t v = 0;
        int nd = 0;
        switch (e) {
        case '\n': continue; /* a line continuation */
        case 'n': lt_buf_putc(&b, '\n'); continue;
        case 't': lt_buf_putc(&b, '\t'); continue;
        case 'r': lt_buf_putc(&b, '\r'); continue;
        case 'a': lt_buf_putc(&b, '\a'); continue;
        case 'b': lt_buf_putc(&b, '\b'); continue;
        case 'f': lt_buf_putc(&b, '\f'); continue;
        case 'v': lt_buf_putc(&b, '\v'); continue;
        case '\\':
        case '\'':
        case '"': lt_buf_putc(&b, e); continue;
        case 'x': nd = 2; break;
        case 'u': nd = 4; break;
        case 'U': nd = 8; break;
        default:
            if (e >= '0' && e <= '7') { /* up to three octal digits */
                v = (uint32_t)(e - '0');
                for (int k = 0; k < 2 && ps->p < ps->end && *ps->p >= '0' && *ps->p <= '7'; k++)
                    v = v * 8 + (uint32_t)(*ps->p++ - '0');
                nd = -1;
                break;
            }
            lt_buf_putc(&b, '\\'); /* Python keeps an unknown escape */
            lt_buf_putc(&b, e);
            continue;
        }
        for (int k = 0; k < nd; k++) {
            if (ps->p >= ps->end || !isxdigit((unsigned char)*ps->p)) {
                free(b.p);
                SYNTAX("truncated \\%c escape in a string", e);
                return NULL;
            }
            char h = *ps->p++;
            v = v * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : tolower((unsigned char)h) - 'a' + 10);
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
            free(b.p);
            SYNTAX("an escape in a string is not a Unicode character");
            return NULL;
        }
        char tmp[4];
        int n = v < 0x80 ? 1 : v < 0x800 ? 2 : v < 0x10000 ? 3 : 4;
        if (n == 1) tmp[0] = (char)v;
        else if (n == 2) tmp[0] = (char)(0xC0 | (v >> 6)), tmp[1] = (char)(0x80 | (v & 0x3F));
        else if (n == 3)
            tmp[0] = (char)(0xE0 | (v >> 12)), tmp[1] = (char)(0x80 | ((v >> 6) & 0x3F)),
            tmp[2] = (char)(0x80 | (v & 0x3F));
        else
            tmp[0] = (char)(0xF0 | (v >> 18)), tmp[1] = (char)(0x80 | ((v >> 12) & 0x3F)),
            tmp[2] = (char)(0x80 | ((v >> 6) & 0x3F)), tmp[3] = (char)(0x80 | (v & 0x3F));
        lt_buf_put(&b, tmp, (size_t)n);
    }
    if (ps->p >= ps->end) {
        free(b.p);
        SYNTAX("unterminated string");
        return NULL;
    }
    ps->p++;
    json_t *j = json_stringn_nocheck(b.p ? b.p : "", b.n);
    free(b.p);
    return j;
}

static json_t *number_lit(parser *ps) {
    const char *s = ps->p;
    char buf[128];
    size_t k = 0;
    if (*s == '0' && s + 1 < ps->end && strchr("xXoObB", s[1])) { /* 0x.., 0o.., 0b.. */
        int base = tolower((unsigned char)s[1]) == 'x' ? 16 : tolower((unsigned char)s[1]) == 'o' ? 8 : 2;
        ps->p += 2;
        while (ps->p < ps->end && (isxdigit((unsigned char)*ps->p) || *ps->p == '_') && k < sizeof buf - 1)
            if (*ps->p++ != '_') buf[k++] = ps->p[-1];
        buf[k] = 0;
        return json_integer(strtoll(buf, NULL, base));
    }
    int isf = 0;
    while (ps->p < ps->end && k < sizeof buf - 2) {
        char c = *ps->p;
        if (isdigit((unsigned char)c) || c == '_') {
            if (c != '_') buf[k++] = c;
            ps->p++;
        } else if (c == '.' && !isf && ps->p + 1 < ps->end && isdigit((unsigned char)ps->p[1])) {
            isf = 1;
            buf[k++] = c;
            ps->p++;
        } else if ((c == 'e' || c == 'E') && ps->p + 1 < ps->end &&
                   (isdigit((unsigned char)ps->p[1]) || ((ps->p[1] == '+' || ps->p[1] == '-') && ps->p + 2 < ps->end &&
                                                         isdigit((unsigned char)ps->p[2])))) {
            isf = 1;
            buf[k++] = c;
            buf[k++] = ps->p[1];
            ps->p += 2;
        } else break;
    }
    buf[k] = 0;
    return isf ? json_real(strtod(buf, NULL)) : json_integer(strtoll(buf, NULL, 10));
}

/* (a, b=c, *d, **e) after the "(" */
static void parse_call_args(parser *ps, node *call) {
    int need_comma = 0;
    while (!ps->failed && !accept_op(ps, ")")) {
        if (need_comma) {
            expect(ps, ",");
            if (accept_op(ps, ")")) return;
        }
        if (ps->failed) return;
        if (accept_op(ps, "**")) {
            if (call->dstar) SYNTAX("invalid syntax for function call expression");
            call->dstar = parse_expr(ps, 1);
        } else if (accept_op(ps, "*")) {
            if (call->star || call->dstar) SYNTAX("invalid syntax for function call expression");
            call->star = parse_expr(ps, 1);
        } else {
            skip_ws(ps);
            const char *save = ps->p;
            char *kw = NULL;
            if (is_ident_start(*ps->p)) {
                kw = ident(ps);
                if (!accept_op(ps, "=")) {
                    free(kw);
                    kw = NULL;
                    ps->p = save;
                }
            }
            if (!kw && (call->dstar || call->star)) SYNTAX("invalid syntax for function call expression");
            if (!kw && call->kw)
                for (int i = 0; i < call->args.n; i++)
                    if (call->kw[i]) SYNTAX("positional argument follows keyword argument");
            add_arg(ps, call, kw, parse_expr(ps, 1));
        }
        need_comma = 1;
    }
}

static node *parse_primary(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end) {
        SYNTAX("an expression was expected");
        return NULL;
    }
    if (enter(ps)) return NULL;
    char c = *ps->p;
    node *n = NULL;
    if (c == '\'' || c == '"') {
        if ((n = mk(ps, E_LIT))) n->lit = string_lit(ps);
        /* adjacent string literals are one */
        while (n && n->lit && !ps->failed && (skip_ws(ps), ps->p < ps->end && (*ps->p == '\'' || *ps->p == '"'))) {
            json_t *more = string_lit(ps);
            if (!more) break;
            lt_buf b = {0};
            lt_buf_put(&b, json_string_value(n->lit), json_string_length(n->lit));
            lt_buf_put(&b, json_string_value(more), json_string_length(more));
            json_decref(more);
            json_decref(n->lit);
            n->lit = json_stringn_nocheck(b.p ? b.p : "", b.n);
            free(b.p);
        }
    } else if (isdigit((unsigned char)c)) {
        if ((n = mk(ps, E_LIT))) n->lit = number_lit(ps);
    } else if (c == '(') {
        ps->p++;
        n = parse_tuple(ps, 1, 1, NULL);
        expect(ps, ")");
    } else if (c == '[' || c == '{') {
        ps->p++;
        if ((n = mk(ps, c == '[' ? E_LIST : E_DICT))) {
            const char *close = c == '[' ? "]" : "}";
            while (!ps->failed && !accept_op(ps, close)) {
                if (n->args.n) {
                    expect(ps, ",");
                    if (accept_op(ps, close)) break;
                }
                add(ps, &n->args, parse_expr(ps, 1));
                if (c == '{') {
                    expect(ps, ":");
                    add(ps, &n->args, parse_expr(ps, 1));
                }
                if (ps->failed) break;
            }
        }
    } else if (is_ident_start(c)) {
        char *id = ident(ps);
        if (id && (!strcmp(id, "true") || !strcmp(id, "True") || !strcmp(id, "false") || !strcmp(id, "False") ||
                   !strcmp(id, "none") || !strcmp(id, "None"))) {
            if ((n = mk(ps, E_LIT)))
                n->lit = id[0] == 't' || id[0] == 'T'   ? json_true()
                         : id[0] == 'f' || id[0] == 'F' ? json_false()
                                                        : json_null();
            free(id);
        } else if (id && (n = mk(ps, E_NAME))) n->s = id;
        else free(id);
    } else SYNTAX("unexpected \"%.20s\"", ps->p);
    leave(ps);
    if (ps->failed) {
        node_free(n);
        return NULL;
    }
    return n;
}

/* n(args) after the "(": the call node that wraps n; NULL when out of memory (n left to the caller) */
static node *parse_call(parser *ps, node *n) {
    node *cl = mk(ps, E_CALL);
    if (!cl) return NULL;
    cl->a = n;
    parse_call_args(ps, cl);
    return cl;
}

/* .name, .0, [item], [a:b:c], (call) */
static node *parse_postfix(parser *ps, node *n) {
    while (n && !ps->failed) {
        if (peek_op(ps, ".") && !(ps->p + 1 < ps->end && ps->p[1] == '.')) {
            ps->p++;
            skip_ws(ps);
            node *x;
            if (ps->p < ps->end && isdigit((unsigned char)*ps->p)) { /* x.0 is x[0] */
                if (!(x = mk(ps, E_ITEM))) break;
                x->b = mk(ps, E_LIT);
                if (x->b) x->b->lit = number_lit(ps);
            } else {
                if (!(x = mk(ps, E_ATTR))) break;
                x->s = ident(ps);
            }
            x->a = n;
            n = x;
        } else if (accept_op(ps, "[")) {
            node *x = mk(ps, E_ITEM);
            if (!x) break;
            x->a = n;
            n = x;
            /* one subscript, a slice, or a tuple of them */
            node *lo = peek_op(ps, ":") ? NULL : parse_expr(ps, 1);
            if (accept_op(ps, ":")) {
                x->kind = E_SLICE;
                x->b = lo;
                x->c = peek_op(ps, "]") || peek_op(ps, ":") ? NULL : parse_expr(ps, 1);
                if (accept_op(ps, ":") && !peek_op(ps, "]")) add(ps, &x->args, parse_expr(ps, 1));
            } else if (peek_op(ps, ",")) {
                node *t = mk(ps, E_TUPLE);
                if (t) add(ps, &t->args, lo);
                while (t && !ps->failed && accept_op(ps, ",") && !peek_op(ps, "]"))
                    add(ps, &t->args, parse_expr(ps, 1));
                x->b = t;
            } else x->b = lo;
            expect(ps, "]");
        } else if (accept_op(ps, "(")) {
            node *cl = parse_call(ps, n);
            if (!cl) break;
            n = cl;
        } else break;
    }
    return n;
}

static char *dotted_name(parser *ps) { /* filter and test names may be dotted */
    char *nm = ident(ps);
    while (nm && !ps->failed && peek_op(ps, ".") && ps->p + 1 < ps->end && is_ident_start(ps->p[1])) {
        ps->p++;
        char *more = ident(ps);
        char *j = more ? malloc(strlen(nm) + strlen(more) + 2) : NULL;
        if (j) sprintf(j, "%s.%s", nm, more);
        free(nm);
        free(more);
        nm = j;
    }
    return nm;
}

/* | filter(args) ..., is [not] test args, (call) */
static node *parse_filter_expr(parser *ps, node *n) {
    while (n && !ps->failed) {
        if (peek_op(ps, "|") && !(ps->p + 1 < ps->end && ps->p[1] == '|')) {
            ps->p++;
            node *f = mk(ps, E_FILTER);
            if (!f) break;
            f->a = n;
            n = f;
            f->s = dotted_name(ps);
            if (accept_op(ps, "(")) parse_call_args(ps, f);
        } else if (peek_kw(ps, "is")) {
            accept_kw(ps, "is");
            node *t = mk(ps, E_TEST);
            if (!t) break;
            t->a = n;
            n = t;
            t->negate = accept_kw(ps, "not");
            t->s = dotted_name(ps);
            if (accept_op(ps, "(")) parse_call_args(ps, t);
            else { /* one bare argument: `is divisibleby 3`, `is sameas none`, `is in [..]` */ skip_ws(ps);
                if (ps->p < ps->end &&
                    (is_ident_start(*ps->p) || isdigit((unsigned char)*ps->p) || strchr("'\"([{", *ps->p)) &&
                    !peek_kw(ps, "else") && !peek_kw(ps, "or") && !peek_kw(ps, "and") && !peek_kw(ps, "if")) {
                    if (peek_kw(ps, "is")) SYNTAX("You cannot chain multiple tests with is");
                    add_arg(ps, t, NULL, parse_postfix(ps, parse_primary(ps)));
                }
            }
        } else if (accept_op(ps, "(")) {
            node *cl = parse_call(ps, n);
            if (!cl) break;
            n = cl;
        } else break;
    }
    return n;
}

static node *parse_unary(parser *ps, int with_filter) {
    node *n;
    if (enter(ps)) return NULL;
    if (peek_op(ps, "-") || peek_op(ps, "+")) {
        int neg = *ps->p == '-';
        ps->p++;
        if ((n = mk(ps, neg ? E_NEG : E_POS))) n->a = parse_unary(ps, 0);
    } else n = parse_primary(ps);
    n = parse_postfix(ps, n);
    if (with_filter) n = parse_filter_expr(ps, n);
    leave(ps);
    return n;
}

static node *bin(parser *ps, int kind, const char *op, node *a, node *b) {
    node *n = mk(ps, kind);
    if (!n || !a || !b || ps->failed) {
        node_free(n);
        node_free(a);
        node_free(b);
        return NULL;
    }
    n->s = op ? strdup(op) : NULL;
    n->a = a;
    n->b = b;
    return n;
}

/* binary operators by precedence (jinja2: or < and < not < compare < + - < ~ < * / // % < **) */
static node *parse_pow(parser *ps) {
    node *a = parse_unary(ps, 1);
    while (a && !ps->failed && accept_op(ps, "**")) a = bin(ps, E_BIN, "**", a, parse_unary(ps, 1));
    return a;
}
static node *parse_math2(parser *ps) {
    node *a = parse_pow(ps);
    for (;;) {
        if (!a || ps->failed) return a;
        const char *op = accept_op(ps, "//")  ? "//"
                         : accept_op(ps, "*") ? "*"
                         : accept_op(ps, "/") ? "/"
                         : accept_op(ps, "%") ? "%"
                                              : NULL;
        if (!op) return a;
        a = bin(ps, E_BIN, op, a, parse_pow(ps));
    }
}
static node *parse_concat(parser *ps) {
    node *a = parse_math2(ps);
    while (a && !ps->failed && accept_op(ps, "~")) a = bin(ps, E_BIN, "~", a, parse_math2(ps));
    return a;
}
static node *parse_math1(parser *ps) {
    node *a = parse_concat(ps);
    for (;;) {
        if (!a || ps->failed) return a;
        const char *op = accept_op(ps, "+") ? "+" : accept_op(ps, "-") ? "-" : NULL;
        if (!op) return a;
        a = bin(ps, E_BIN, op, a, parse_concat(ps));
    }
}
static node *parse_compare(parser *ps) {
    node *a = parse_math1(ps);
    node *cmp = NULL;
    static const char *ops[] = {"==", "!=", "<=", ">=", "<", ">"};
    while (a && !ps->failed) {
        const char *op = NULL;
        for (int k = 0; k < 6 && !op; k++)
            if (accept_op(ps, ops[k])) op = ops[k];
        if (!op && accept_kw(ps, "in")) op = "in";
        if (!op) {
            const char *save = ps->p;
            if (accept_kw(ps, "not") && accept_kw(ps, "in")) op = "notin";
            else ps->p = save;
        }
        if (!op) break;
        if (!cmp) { /* a < b < c is a chain: (a < b) and (b < c), b evaluated once */
            if (!(cmp = mk(ps, E_CMP))) break;
            add(ps, &cmp->args, a);
        }
        char **no = realloc(cmp->ops, (size_t)(cmp->nops + 1) * sizeof *no);
        if (!no) {
            perr(ps, LT_ERR_NOMEM, "out of memory");
            break;
        }
        cmp->ops = no;
        cmp->ops[cmp->nops++] = strdup(op);
        add(ps, &cmp->args, parse_math1(ps));
    }
    if (cmp && ps->failed) {
        node_free(cmp);
        return NULL;
    }
    return cmp ? cmp : a;
}
static node *parse_not(parser *ps) {
    if (accept_kw(ps, "not")) {
        if (enter(ps)) return NULL;
        node *n = mk(ps, E_NOT);
        if (n) n->a = parse_not(ps);
        leave(ps);
        if (n && !n->a) {
            node_free(n);
            return NULL;
        }
        return n;
    }
    return parse_compare(ps);
}
static node *parse_and(parser *ps) {
    node *a = parse_not(ps);
    while (a && !ps->failed && accept_kw(ps, "and")) a = bin(ps, E_AND, NULL, a, parse_not(ps));
    return a;
}
static node *parse_or(parser *ps) {
    node *a = parse_and(ps);
    while (a && !ps->failed && accept_kw(ps, "or")) a = bin(ps, E_OR, NULL, a, parse_and(ps));
    return a;
}
/* x if c else y (the else is optional: Undefined) */
static node *parse_expr(parser *ps, int with_condexpr) {
    if (enter(ps)) return NULL;
    node *a = parse_or(ps);
    while (with_condexpr && a && !ps->failed && accept_kw(ps, "if")) {
        node *n = mk(ps, E_COND);
        if (!n) break;
        n->a = a;
        n->b = parse_or(ps);
        if (accept_kw(ps, "else")) n->c = parse_expr(ps, 1);
        a = n;
    }
    leave(ps);
    if (ps->failed) {
        node_free(a);
        return NULL;
    }
    return a;
}
/* a, b, c (a tuple) or one expression; end_kw ends it too ("in" in a for target) */
static node *parse_tuple(parser *ps, int with_condexpr, int explicit_parens, const char *end_kw) {
    node *t = NULL, *first = NULL;
    for (;;) {
        if (first || t) {
            if (!accept_op(ps, ",")) break;
        }
        skip_ws(ps);
        if (ps->p >= ps->end || (explicit_parens && peek_op(ps, ")")) || (end_kw && peek_kw(ps, end_kw))) {
            if (!first && !t && !explicit_parens) SYNTAX("an expression was expected");
            if (!t && first) { /* `a,` is a one-tuple */
                if (!(t = mk(ps, E_TUPLE))) break;
                add(ps, &t->args, first);
                first = NULL;
            }
            if (!t && !first && explicit_parens) t = mk(ps, E_TUPLE); /* () */
            break;
        }
        node *x = parse_expr(ps, with_condexpr);
        if (!x) break;
        if (!first && !t) first = x;
        else {
            if (!t) {
                if (!(t = mk(ps, E_TUPLE))) break;
                add(ps, &t->args, first);
                first = NULL;
            }
            add(ps, &t->args, x);
        }
        skip_ws(ps);
        if (!peek_op(ps, ",")) break;
        if (!t) {
            if (!(t = mk(ps, E_TUPLE))) break;
            add(ps, &t->args, first);
            first = NULL;
        }
    }
    if (ps->failed) {
        node_free(t);
        node_free(first);
        return NULL;
    }
    return t ? t : first;
}

/* ---- statements ----------------------------------------------------------------------------------------- */

static void set_tag(parser *ps, const jtok *t) {
    ps->p = t->s;
    ps->end = t->s + t->n;
    ps->line = t->line;
}
static void expect_end(parser *ps) {
    skip_ws(ps);
    if (ps->p != ps->end && !ps->failed)
        SYNTAX("unexpected \"%.*s\"", (int)(ps->end - ps->p < 40 ? ps->end - ps->p : 40), ps->p);
}

static int parse_body(parser *ps, nodes *out, const char *const *stops, int nstops);

/* an assignment target: a name, a tuple of names, or (set only) namespace.attr */
static node *parse_target(parser *ps, const char *end_kw, int with_ns) {
    node *t = NULL;
    for (;;) {
        skip_ws(ps);
        int paren = accept_op(ps, "(");
        node *x;
        if (paren) {
            x = parse_target(ps, NULL, 0);
            expect(ps, ")");
        } else {
            char *id = ident(ps);
            if (!id || !(x = mk(ps, E_NAME))) {
                free(id);
                node_free(t);
                return NULL;
            }
            x->s = id;
            if (with_ns && peek_op(ps, ".")) {
                ps->p++;
                node *at = mk(ps, E_ATTR);
                if (at) {
                    at->a = x;
                    at->s = ident(ps);
                }
                x = at;
            }
        }
        if (!x || ps->failed) {
            node_free(x);
            node_free(t);
            return NULL;
        }
        if (!t && !peek_op(ps, ",")) return x;
        if (!t && !(t = mk(ps, E_TUPLE))) return x;
        add(ps, &t->args, x);
        if (!accept_op(ps, ",") || (end_kw && peek_kw(ps, end_kw)) || peek_op(ps, "=") || peek_op(ps, ")") ||
            at_end(ps))
            return t;
    }
}

/* macro / call-block parameters: (a, b=1) */
static void parse_signature(parser *ps, node *n) {
    expect(ps, "(");
    while (!ps->failed && !accept_op(ps, ")")) {
        if (n->np) expect(ps, ",");
        if (ps->failed || accept_op(ps, ")")) break;
        char *pn = ident(ps);
        node *def = accept_op(ps, "=") ? parse_expr(ps, 1) : NULL;
        if (!def && n->np && n->pdefs[n->np - 1]) SYNTAX("non-default argument follows default argument");
        char **np_ = realloc(n->pnames, (size_t)(n->np + 1) * sizeof *np_);
        if (np_) n->pnames = np_;
        node **nd = np_ ? realloc(n->pdefs, (size_t)(n->np + 1) * sizeof *nd) : NULL;
        if (nd) n->pdefs = nd;
        if (!np_ || !nd || !pn) {
            free(pn);
            node_free(def);
            if (!ps->failed) perr(ps, LT_ERR_NOMEM, "out of memory");
            break;
        }
        n->pnames[n->np] = pn;
        n->pdefs[n->np++] = def;
    }
}

/* does the body read `name` (varargs, kwargs, caller)? Macros nested inside keep their own. */
static int reads_name(node *n, const char *name, int depth) {
    if (!n || depth > 4 * LT_JINJA_MAX_DEPTH) return 0;
    if (n->kind == E_NAME && !strcmp(n->s, name)) return 1;
    if (n->kind == N_MACRO) return 0;
    node *kids[] = {n->a, n->b, n->c, n->target, n->star, n->dstar};
    for (int i = 0; i < 6; i++)
        if (reads_name(kids[i], name, depth + 1)) return 1;
    nodes *lists[] = {&n->args, &n->body, &n->orelse};
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < lists[l]->n; i++)
            if (reads_name(lists[l]->v[i], name, depth + 1)) return 1;
    for (int i = 0; i < n->np; i++)
        if (reads_name(n->pdefs[i], name, depth + 1)) return 1;
    return 0;
}
static void mark_reads(node *n) {
    for (int i = 0; i < n->body.n; i++) {
        n->uses_varargs |= reads_name(n->body.v[i], "varargs", 0);
        n->uses_kwargs |= reads_name(n->body.v[i], "kwargs", 0);
        n->uses_caller |= reads_name(n->body.v[i], "caller", 0);
    }
}

/* the filters of {% filter a | b(x) %} and {% set x | f %}: applied to E_HOLE */
static node *parse_filter_chain(parser *ps) {
    node *n = mk(ps, E_HOLE);
    do {
        node *f = mk(ps, E_FILTER);
        if (!f) break;
        f->a = n;
        n = f;
        f->s = dotted_name(ps);
        if (accept_op(ps, "(")) parse_call_args(ps, f);
    } while (!ps->failed && accept_op(ps, "|"));
    return n;
}

static node *parse_stmt(parser *ps, const jtok *t) {
    set_tag(ps, t);
    if (enter(ps)) return NULL;
    node *n = NULL;
    if (accept_kw(ps, "if")) {
        static const char *const stops[] = {"endif", "elif", "else"};
        node *cur = n = mk(ps, N_IF);
        if (cur) cur->a = parse_tuple(ps, 0, 0, NULL);
        expect_end(ps);
        while (cur && !ps->failed) {
            int k = parse_body(ps, &cur->body, stops, 3);
            if (k < 0) break;
            if (k == 0) {
                expect_end(ps);
                break;
            }
            if (k == 1) { /* elif: an if in the else branch */
                node *e = mk(ps, N_IF);
                if (!e) break;
                e->a = parse_tuple(ps, 0, 0, NULL);
                expect_end(ps);
                add(ps, &cur->orelse, e);
                cur = e;
                continue;
            }
            expect_end(ps);
            static const char *const endonly[] = {"endif"};
            if (parse_body(ps, &cur->orelse, endonly, 1) >= 0) expect_end(ps);
            break;
        }
    } else if (accept_kw(ps, "for")) {
        if ((n = mk(ps, N_FOR))) {
            n->target = parse_target(ps, "in", 0);
            if (!ps->failed && !accept_kw(ps, "in")) SYNTAX("expected \"in\" in a for loop");
            if (!ps->failed) n->a = parse_tuple(ps, 0, 0, "recursive");
            if (!ps->failed && accept_kw(ps, "if")) n->b = parse_expr(ps, 1);
            if (!ps->failed && accept_kw(ps, "recursive"))
                perr(ps, LT_ERR_UNSUPPORTED, "recursive loops are not supported");
            expect_end(ps);
            static const char *const stops[] = {"endfor", "else"};
            int k = ps->failed ? -1 : parse_body(ps, &n->body, stops, 2);
            if (k == 1) {
                expect_end(ps);
                static const char *const endonly[] = {"endfor"};
                k = parse_body(ps, &n->orelse, endonly, 1);
            }
            if (k >= 0) expect_end(ps);
        }
    } else if (accept_kw(ps, "set")) {
        if ((n = mk(ps, N_SET))) {
            n->target = parse_target(ps, NULL, 1);
            if (!ps->failed && accept_op(ps, "=")) {
                n->a = parse_tuple(ps, 1, 0, NULL);
                expect_end(ps);
            } else if (!ps->failed) {
                n->kind = N_SETBLOCK;
                if (accept_op(ps, "|")) n->a = parse_filter_chain(ps);
                expect_end(ps);
                static const char *const stops[] = {"endset"};
                if (!ps->failed && parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
            }
        }
    } else if (accept_kw(ps, "generation")) {
        if ((n = mk(ps, N_GEN))) {
            expect_end(ps);
            static const char *const stops[] = {"endgeneration"};
            if (!ps->failed && parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        }
    } else if (peek_kw(ps, "macro") || peek_kw(ps, "call")) {
        int is_call = accept_kw(ps, "call");
        if (!is_call) accept_kw(ps, "macro");
        if ((n = mk(ps, is_call ? N_CALLBLOCK : N_MACRO))) {
            if (is_call) {
                skip_ws(ps);
                if (peek_op(ps, "(")) parse_signature(ps, n);
                if (!ps->failed) n->a = parse_expr(ps, 1);
                if (!ps->failed && (!n->a || n->a->kind != E_CALL)) SYNTAX("expected a call after {%% call %%}");
            } else {
                n->s = ident(ps);
                if (!ps->failed) parse_signature(ps, n);
            }
            expect_end(ps);
            static const char *const mstops[] = {"endmacro"}, *const cstops[] = {"endcall"};
            if (!ps->failed && parse_body(ps, &n->body, is_call ? cstops : mstops, 1) >= 0) expect_end(ps);
            if (!ps->failed) mark_reads(n);
        }
    } else if (accept_kw(ps, "filter")) {
        if ((n = mk(ps, N_FILTERBLOCK))) {
            n->a = parse_filter_chain(ps);
            expect_end(ps);
            static const char *const stops[] = {"endfilter"};
            if (!ps->failed && parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        }
    } else if (accept_kw(ps, "with")) {
        if ((n = mk(ps, N_WITH))) {
            while (!ps->failed && !at_end(ps)) {
                if (n->args.n) expect(ps, ",");
                char *nm = ident(ps);
                expect(ps, "=");
                add_arg(ps, n, nm, ps->failed ? NULL : parse_expr(ps, 1));
            }
            expect_end(ps);
            static const char *const stops[] = {"endwith"};
            if (!ps->failed && parse_body(ps, &n->body, stops, 1) >= 0) expect_end(ps);
        }
    } else if (accept_kw(ps, "break") || accept_kw(ps, "continue")) {
        n = mk(ps, ps->p[-1] == 'k' ? N_BREAK : N_CONTINUE);
        expect_end(ps);
    } else if (accept_kw(ps, "print")) {
        if ((n = mk(ps, N_OUT))) n->a = parse_tuple(ps, 1, 0, NULL);
        expect_end(ps);
    } else {
        skip_ws(ps);
        const char *w = ps->p;
        while (ps->p < ps->end && is_ident(*ps->p)) ps->p++;
        perr(ps, LT_ERR_UNSUPPORTED,
             "the tag \"%.*s\" is not supported (supported: if, for, set, macro, call, filter, with, raw, generation, "
             "break, continue, print)",
             (int)(ps->p - w), w);
    }
    leave(ps);
    if (ps->failed) {
        node_free(n);
        return NULL;
    }
    return n;
}

static int parse_body(parser *ps, nodes *out, const char *const *stops, int nstops) {
    static const char *const enders[] = {"endif",    "endfor",  "else",      "elif",    "endset", "endgeneration",
                                         "endmacro", "endcall", "endfilter", "endwith", "endraw"};
    while (!ps->failed) {
        const jtok *t = &ps->toks[ps->pos];
        if (t->kind == T_EOF) {
            if (nstops) {
                ps->line = t->line ? t->line : ps->line;
                SYNTAX("unexpected end of template, expected {%% %s %%}", stops[0]);
            }
            return -1;
        }
        ps->pos++;
        if (t->kind == T_TEXT) {
            node *n = mk(ps, N_TEXT);
            if (n) {
                n->text = t->s;
                n->slen = t->n;
                n->line = t->line;
            }
            add(ps, out, n);
        } else if (t->kind == T_VAR) {
            set_tag(ps, t);
            node *n = mk(ps, N_OUT);
            if (n) n->a = parse_tuple(ps, 1, 0, NULL);
            expect_end(ps);
            if (n && !n->a) {
                node_free(n);
                n = NULL;
            }
            add(ps, out, n);
        } else {
            set_tag(ps, t);
            for (int k = 0; k < nstops; k++)
                if (accept_kw(ps, stops[k])) return k;
            for (size_t k = 0; k < sizeof enders / sizeof *enders; k++)
                if (peek_kw(ps, enders[k])) {
                    SYNTAX("unexpected {%% %s %%}", enders[k]);
                    return -1;
                }
            add(ps, out, parse_stmt(ps, t));
        }
    }
    return -1;
}

/* ---- run ------------------------------------------------------------------------------------------------ */

typedef struct scope {
    json_t *vars;
    struct scope *up;
} scope;

typedef struct jmacro { /* the payload of a macro value */
    node *def;          /* N_MACRO or N_CALLBLOCK */
    json_t *closure;    /* the vars objects of the defining scopes, innermost first */
    json_t *caller;     /* a call block's caller, passed to the macro it calls */
} jmacro;

typedef struct render {
    jctx c;
    lt_buf *out, *mask;
    int gen; /* inside {% generation %} */
    int brk, cont;
    int depth, max_depth;
    scope *top;
} render;

#define RFAIL(...) jerr(&r->c, __VA_ARGS__)

static void free_payload(int kind, void *p) {
    if (kind != JK_MACRO || !p) return;
    jmacro *m = p;
    json_decref(m->closure);
    json_decref(m->caller);
    free(m);
}

static int step(render *r) {
    if (++r->c.steps > r->c.max_steps) {
        jerr(&r->c, LT_ERR_DATA,
             "rendering takes more than %ld steps (the limit for these messages: %ld + %ld per byte of them; a "
             "runaway loop?)",
             r->c.max_steps, LT_JINJA_BASE_STEPS, LT_JINJA_STEPS_PER_BYTE);
        return -1;
    }
    return 0;
}

static size_t value_bytes(json_t *v, int depth) {
    size_t n = 8;
    if (depth > LT_JINJA_MAX_DEPTH) return n;
    if (json_is_string(v)) n += json_string_length(v);
    else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) n += value_bytes(x, depth + 1);
    } else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) n += strlen(k) + value_bytes(x, depth + 1);
    }
    return n;
}

long lt_jinja_step_limit(json_t *ctx) {
    size_t b = value_bytes(ctx, 0), cap = (size_t)(LONG_MAX / 2 / LT_JINJA_STEPS_PER_BYTE);
    return LT_JINJA_BASE_STEPS + LT_JINJA_STEPS_PER_BYTE * (long)(b < cap ? b : cap);
}
/* Nesting at run time: a loop counts 1, a macro call 4 (its C frames take about four times the stack of a
 * level of the parser), against the same LT_JINJA_MAX_DEPTH. */
#define MACRO_DEPTH 4
static int r_enter(render *r, int units, int line) {
    r->depth += units;
    if (r->depth > r->max_depth) r->max_depth = r->depth;
    if (r->depth > LT_JINJA_MAX_DEPTH) {
        r->depth -= units;
        jerr(&r->c, LT_ERR_DATA,
             "line %d: calls and loops nest deeper than %d levels (the limit; a runaway recursion?)", line,
             LT_JINJA_MAX_DEPTH);
        return -1;
    }
    return 0;
}

static json_t *eval(render *r, scope *sc, node *n);
static void exec_nodes(render *r, scope *sc, nodes *v);
static json_t *tuple_of(render *r, json_t *l) { return jk_tag(&r->c, l, JK_TUPLE, NULL); }

static json_t *lookup(scope *sc, const char *name, int *found) {
    for (; sc; sc = sc->up) {
        json_t *v = json_object_get(sc->vars, name);
        if (v) {
            *found = 1;
            return json_incref(v);
        }
    }
    *found = 0;
    return NULL;
}

static void set_var(scope *sc, const char *name, json_t *v) { /* v stolen; NULL (Undefined) removes */
    if (v) json_object_set_new(sc->vars, name, v);
    else json_object_del(sc->vars, name);
}

/* bind a value to a target (a name or a tuple of targets) */
static int assign(render *r, scope *sc, node *t, json_t *v) {
    if (t->kind == E_NAME) {
        set_var(sc, t->s, v ? json_incref(v) : NULL);
        return 0;
    }
    if (t->kind == E_ATTR) { /* namespace.attr */
        int found;
        json_t *ns = lookup(sc, t->a->s, &found);
        int ok = ns && jk_kind(&r->c, ns) == JK_NS;
        if (ok) json_object_set(ns, t->s, v ? v : json_null());
        json_decref(ns);
        if (!ok) return jerri(&r->c, LT_ERR_DATA, "line %d: cannot assign attribute on non-namespace object", t->line);
        return 0;
    }
    /* a tuple: unpack a list, tuple or string of exactly that length */
    json_t *l = v && (json_is_array(v) || json_is_string(v) || json_is_object(v)) ? j_list(&r->c, v, t->line) : NULL;
    if (!l || json_array_size(l) != (size_t)t->args.n) {
        json_decref(l);
        return jerri(&r->c, LT_ERR_DATA, "line %d: cannot unpack %s into %d names", t->line, j_type(&r->c, v),
                     t->args.n);
    }
    for (int i = 0; i < t->args.n; i++)
        if (assign(r, sc, t->args.v[i], json_array_get(l, (size_t)i))) {
            json_decref(l);
            return -1;
        }
    json_decref(l);
    return 0;
}

static void args_free(jargs *a) {
    for (int i = 0; i < a->npos; i++) json_decref(a->pos[i]);
    for (int i = 0; i < a->nkw; i++) json_decref(a->kwv[i]);
    free(a->pos);
    free(a->kwn);
    free(a->kwv);
    json_decref(a->hold);
    memset(a, 0, sizeof *a);
}

/* evaluate the arguments of a call, filter or test (skip the first `skip` positional ones) */
static int eval_args(render *r, scope *sc, node *call, jargs *a) {
    memset(a, 0, sizeof *a);
    a->line = call->line;
    json_t *star = call->star ? eval(r, sc, call->star) : NULL, *dstar = call->dstar ? eval(r, sc, call->dstar) : NULL;
    json_t *sl = NULL;
    if (!r->c.failed && call->star) {
        if (!star || !(sl = j_list(&r->c, star, call->line))) {
            if (!r->c.failed) RFAIL(LT_ERR_DATA, "line %d: *args must be iterable", call->line);
        }
    }
    if (!r->c.failed && call->dstar && (!dstar || !json_is_object(dstar) || jk_kind(&r->c, dstar) != JK_PLAIN))
        RFAIL(LT_ERR_DATA, "line %d: **kwargs must be a mapping", call->line);
    size_t cap = (size_t)call->args.n + (sl ? json_array_size(sl) : 0) +
                 (dstar && json_is_object(dstar) ? json_object_size(dstar) : 0) + 1;
    a->pos = calloc(cap, sizeof *a->pos);
    a->kwn = calloc(cap, sizeof *a->kwn);
    a->kwv = calloc(cap, sizeof *a->kwv);
    if (!a->pos || !a->kwn || !a->kwv) RFAIL(LT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < call->args.n && !r->c.failed; i++) {
        json_t *v = eval(r, sc, call->args.v[i]);
        if (call->kw && call->kw[i]) {
            a->kwn[a->nkw] = call->kw[i];
            a->kwv[a->nkw++] = v;
        } else a->pos[a->npos++] = v;
    }
    if (sl && !r->c.failed) {
        size_t i;
        json_t *x;
        json_array_foreach(sl, i, x) a->pos[a->npos++] = json_incref(x);
    }
    if (dstar && !r->c.failed && json_is_object(dstar)) {
        const char *k;
        json_t *x;
        json_object_foreach(dstar, k, x) {
            a->kwn[a->nkw] = k; /* borrowed from dstar, which the arguments hold */
            a->kwv[a->nkw++] = json_incref(x);
        }
        a->hold = dstar;
        dstar = NULL;
    }
    json_decref(star);
    json_decref(sl);
    json_decref(dstar);
    if (r->c.failed) {
        args_free(a);
        return -1;
    }
    return 0;
}

/* a macro value: an object {"name": ...} tagged as a macro, closing over the scopes of sc */
static json_t *make_macro(render *r, scope *sc, node *def, json_t *caller) {
    jmacro *m = calloc(1, sizeof *m);
    json_t *v = json_pack("{s:s}", "name", def->kind == N_CALLBLOCK ? "caller" : def->s);
    if (!m || !v) {
        free(m);
        json_decref(v);
        return RFAIL(LT_ERR_NOMEM, "out of memory");
    }
    m->def = def;
    m->closure = json_array();
    for (scope *s = sc; s; s = s->up) json_array_append(m->closure, s->vars);
    m->caller = caller ? json_incref(caller) : NULL;
    jk_tag(&r->c, v, JK_MACRO, m);
    return v;
}

/* call a macro: bind the arguments as jinja2's Macro.__call__, render the body into a string */
static json_t *call_macro(render *r, json_t *mv, jargs *a, json_t *caller, int line) {
    jmacro *m = jk_payload(&r->c, mv);
    node *def = m->def;
    const char *name = def->kind == N_CALLBLOCK ? "caller" : def->s;
    if (r_enter(r, MACRO_DEPTH, line)) return NULL;
    /* the scope chain: the closure's scopes, then a fresh one for the arguments */
    size_t nc = json_array_size(m->closure);
    scope *chain = calloc(nc + 1, sizeof *chain);
    if (!chain) {
        r->depth -= MACRO_DEPTH;
        return RFAIL(LT_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < nc; i++) {
        chain[i + 1].vars = json_array_get(m->closure, i);
        chain[i + 1].up = i + 1 < nc ? &chain[i + 2] : NULL;
    }
    chain[0].vars = json_object();
    chain[0].up = nc ? &chain[1] : NULL;
    json_t *vars = chain[0].vars, *varargs = json_array(), *kwargs = json_object(), *res = NULL;
    for (int i = 0; i < a->npos; i++) {
        if (i < def->np) json_object_set(vars, def->pnames[i], a->pos[i]);
        else if (def->uses_varargs) json_array_append(varargs, a->pos[i]);
        else {
            RFAIL(LT_ERR_DATA, "line %d: macro '%s' takes not more than %d argument(s)", line, name, def->np);
            goto done;
        }
    }
    for (int i = 0; i < a->nkw; i++) {
        int k = -1;
        for (int q = 0; q < def->np; q++)
            if (!strcmp(def->pnames[q], a->kwn[i])) k = q;
        if (k >= 0 && k < a->npos) {
            RFAIL(LT_ERR_DATA, "line %d: macro '%s' got multiple values for argument '%s'", line, name, a->kwn[i]);
            goto done;
        }
        if (k >= 0) json_object_set(vars, def->pnames[k], a->kwv[i]);
        else if (!strcmp(a->kwn[i], "caller") && def->uses_caller) caller = a->kwv[i];
        else if (def->uses_kwargs) json_object_set(kwargs, a->kwn[i], a->kwv[i]);
        else {
            RFAIL(LT_ERR_DATA, "line %d: macro '%s' takes no keyword argument '%s'", line, name, a->kwn[i]);
            goto done;
        }
    }
    for (int q = 0; q < def->np && !r->c.failed; q++) /* defaults, evaluated in the macro's scope */
        if (!json_object_get(vars, def->pnames[q]) && def->pdefs[q]) {
            json_t *v = eval(r, &chain[0], def->pdefs[q]);
            if (v) json_object_set_new(vars, def->pnames[q], v);
        }
    if (def->uses_varargs) json_object_set_new(vars, "varargs", tuple_of(r, json_incref(varargs)));
    if (def->uses_kwargs) json_object_set(vars, "kwargs", kwargs);
    if (def->uses_caller && caller) json_object_set(vars, "caller", caller);
    if (r->c.failed) goto done;
    lt_buf tmp = {0}, *save = r->out, *savem = r->mask;
    r->out = &tmp;
    r->mask = NULL;
    int sb = r->brk, scn = r->cont;
    r->brk = r->cont = 0;
    exec_nodes(r, &chain[0], &def->body);
    r->brk = sb;
    r->cont = scn;
    r->out = save;
    r->mask = savem;
    res = r->c.failed ? NULL : j_string(&r->c, tmp.p, tmp.n);
    free(tmp.p);
done:
    json_decref(vars);
    json_decref(varargs);
    json_decref(kwargs);
    free(chain);
    r->depth -= MACRO_DEPTH;
    return res;
}

/* loop.cycle(...) / loop.changed(...) */
static json_t *loop_method(render *r, json_t *loop, const char *m, jargs *a) {
    if (!strcmp(m, "cycle")) {
        if (!a->npos) return RFAIL(LT_ERR_DATA, "line %d: no items for cycling given", a->line);
        long long i = json_integer_value(json_object_get(loop, "index0"));
        return json_incref(a->pos[i % a->npos]);
    }
    if (!strcmp(m, "changed")) {
        json_t *now = json_array();
        for (int i = 0; i < a->npos; i++) json_array_append(now, a->pos[i]);
        json_t *last = json_object_get(loop, "\x01last");
        int changed = !last || !j_equal(&r->c, last, now);
        json_object_set_new(loop, "\x01last", now);
        return json_boolean(changed);
    }
    return RFAIL(LT_ERR_UNSUPPORTED, "line %d: loop.%s() is not supported", a->line, m);
}

static json_t *call(render *r, scope *sc, node *n) {
    node *fn = n->a;
    jargs a;
    json_t *res = NULL;
    if (fn->kind == E_ATTR) { /* obj.method(...), or an attribute holding a macro */
        json_t *obj = eval(r, sc, fn->a);
        if (r->c.failed) return NULL;
        json_t *attr = j_getattr(&r->c, obj, fn->s);
        int ak = jk_kind(&r->c, attr);
        if (!eval_args(r, sc, n, &a)) {
            if (ak == JK_MACRO) res = call_macro(r, attr, &a, NULL, n->line);
            else if (jk_kind(&r->c, obj) == JK_LOOP) res = loop_method(r, obj, fn->s, &a);
            else if (!obj)
                RFAIL(LT_ERR_DATA, "line %d: '%s' is undefined", n->line, fn->a->kind == E_NAME ? fn->a->s : "value");
            else res = j_method(&r->c, obj, fn->s, &a);
            args_free(&a);
        }
        json_decref(attr);
        json_decref(obj);
        return res;
    }
    json_t *f = eval(r, sc, fn);
    if (r->c.failed) return NULL;
    int k = jk_kind(&r->c, f);
    if (k != JK_MACRO && k != JK_FUNC) {
        if (!f) RFAIL(LT_ERR_DATA, "line %d: '%s' is undefined", n->line, fn->kind == E_NAME ? fn->s : "value");
        else RFAIL(LT_ERR_DATA, "line %d: '%s' object is not callable", n->line, j_type(&r->c, f));
        json_decref(f);
        return NULL;
    }
    if (!eval_args(r, sc, n, &a)) {
        res = k == JK_MACRO ? call_macro(r, f, &a, NULL, n->line) : j_call_global(&r->c, json_string_value(f), &a);
        args_free(&a);
    }
    json_decref(f);
    return res;
}

static json_t *filter(render *r, scope *sc, node *n, json_t *v) {
    if (!j_has_filter(n->s))
        return RFAIL(LT_ERR_UNSUPPORTED, "line %d: the filter \"%s\" is not supported", n->line, n->s);
    jargs a;
    if (eval_args(r, sc, n, &a)) return NULL;
    json_t *res = j_filter(&r->c, n->s, v, &a);
    args_free(&a);
    return res;
}

static json_t *eval_in(render *r, scope *sc, node *n, json_t *hole);
static json_t *eval(render *r, scope *sc, node *n) { return eval_in(r, sc, n, NULL); }

static json_t *eval_in(render *r, scope *sc, node *n, json_t *hole) {
    if (r->c.failed || !n || step(r)) return NULL;
    json_t *a, *b, *res = NULL;
    switch (n->kind) {
    case E_HOLE: return hole ? json_incref(hole) : NULL;
    case E_LIT: return json_incref(n->lit);
    case E_NAME: {
        int found;
        json_t *v = lookup(sc, n->s, &found);
        if (!found && j_is_global(n->s)) v = jk_tag(&r->c, json_string(n->s), JK_FUNC, NULL);
        return v;
    }
    case E_ATTR:
    case E_ITEM:
        a = eval_in(r, sc, n->a, hole);
        if (r->c.failed) return NULL;
        if (!a)
            return RFAIL(LT_ERR_DATA, "line %d: '%s' is undefined", n->line,
                         n->a->kind == E_NAME || n->a->kind == E_ATTR ? n->a->s : "value");
        if (n->kind == E_ATTR) res = j_getattr(&r->c, a, n->s); /* a missing key: Undefined */
        else {
            b = eval_in(r, sc, n->b, hole);
            res = r->c.failed ? NULL : j_getitem(&r->c, a, b);
            json_decref(b);
        }
        json_decref(a);
        return res;
    case E_SLICE: {
        a = eval_in(r, sc, n->a, hole);
        json_t *lo = eval_in(r, sc, n->b, hole), *hi = eval_in(r, sc, n->c, hole),
               *st = n->args.n ? eval_in(r, sc, n->args.v[0], hole) : NULL;
        if (!r->c.failed) res = j_slice(&r->c, a, lo, hi, st, n->line);
        json_decref(a);
        json_decref(lo);
        json_decref(hi);
        json_decref(st);
        return res;
    }
    case E_CALL: return call(r, sc, n);
    case E_FILTER:
        a = eval_in(r, sc, n->a, hole);
        if (!r->c.failed) res = filter(r, sc, n, a);
        json_decref(a);
        return res;
    case E_TEST: {
        if (!j_has_test(n->s))
            return RFAIL(LT_ERR_UNSUPPORTED, "line %d: the test \"is %s\" is not supported", n->line, n->s);
        a = eval_in(r, sc, n->a, hole);
        jargs args;
        int t = 0;
        if (!r->c.failed && !eval_args(r, sc, n, &args)) {
            j_test(&r->c, n->s, a, &args, &t);
            args_free(&args);
        }
        json_decref(a);
        return r->c.failed ? NULL : json_boolean(n->negate ? !t : t);
    }
    case E_NOT:
        a = eval_in(r, sc, n->a, hole);
        res = r->c.failed ? NULL : json_boolean(!j_truthy(&r->c, a));
        json_decref(a);
        return res;
    case E_NEG:
    case E_POS:
        a = eval_in(r, sc, n->a, hole);
        if (!r->c.failed) {
            if (n->kind == E_NEG) res = j_neg(&r->c, a, n->line);
            else if (a && (json_is_integer(a) || json_is_real(a) || json_is_boolean(a)))
                res = json_is_boolean(a) ? json_integer(json_is_true(a)) : json_incref(a);
            else RFAIL(LT_ERR_DATA, "line %d: bad operand type for unary +: '%s'", n->line, j_type(&r->c, a));
        }
        json_decref(a);
        return res;
    case E_AND:
    case E_OR:
        a = eval_in(r, sc, n->a, hole);
        if (r->c.failed) return NULL;
        if ((n->kind == E_AND) != j_truthy(&r->c, a)) return a; /* the deciding operand itself */
        json_decref(a);
        return eval_in(r, sc, n->b, hole);
    case E_COND:
        b = eval_in(r, sc, n->b, hole);
        if (r->c.failed) return NULL;
        {
            int t = j_truthy(&r->c, b);
            json_decref(b);
            return t ? eval_in(r, sc, n->a, hole) : n->c ? eval_in(r, sc, n->c, hole) : NULL;
        }
    case E_BIN:
        a = eval_in(r, sc, n->a, hole);
        b = r->c.failed ? NULL : eval_in(r, sc, n->b, hole);
        if (!r->c.failed) res = j_binop(&r->c, n->s, a, b, n->line);
        json_decref(a);
        json_decref(b);
        return res;
    case E_CMP: {
        a = eval_in(r, sc, n->args.v[0], hole);
        int t = 1;
        for (int i = 1; i < n->args.n && t && !r->c.failed; i++) {
            b = eval_in(r, sc, n->args.v[i], hole);
            if (!r->c.failed) t = j_compare(&r->c, n->ops[i - 1], a, b, n->line);
            json_decref(a);
            a = b;
        }
        json_decref(a);
        return r->c.failed || t < 0 ? NULL : json_boolean(t);
    }
    case E_LIST:
    case E_TUPLE:
        res = json_array();
        for (int i = 0; i < n->args.n && !r->c.failed; i++) {
            a = eval_in(r, sc, n->args.v[i], hole);
            if (!a && !r->c.failed)
                a = json_null(); /* an Undefined item: a list cannot hold it, None prints alike in checks */
            if (a) json_array_append_new(res, a);
        }
        if (r->c.failed) {
            json_decref(res);
            return NULL;
        }
        return n->kind == E_TUPLE ? tuple_of(r, res) : res;
    case E_DICT:
        res = json_object();
        for (int i = 0; i + 1 < n->args.n && !r->c.failed; i += 2) {
            a = eval_in(r, sc, n->args.v[i], hole);
            b = eval_in(r, sc, n->args.v[i + 1], hole);
            char *key = r->c.failed ? NULL : j_key(&r->c, a);
            if (key) json_object_set_new(res, key, b ? b : json_null());
            else json_decref(b);
            free(key);
            json_decref(a);
        }
        if (r->c.failed) {
            json_decref(res);
            return NULL;
        }
        return res;
    }
    return RFAIL(LT_ERR_INTERNAL, "line %d: unknown expression node %d", n->line, n->kind);
}

static void emit(render *r, const char *s, size_t n) {
    if (r->out->n + n > (size_t)LT_JINJA_MAX_BYTES) {
        RFAIL(LT_ERR_DATA, "the rendered text passes the limit of %ld MiB", LT_JINJA_MAX_BYTES >> 20);
        return;
    }
    if (lt_buf_put(r->out, s, n)) {
        RFAIL(LT_ERR_NOMEM, "out of memory");
        return;
    }
    if (r->mask)
        for (size_t i = 0; i < n; i++)
            if (lt_buf_putc(r->mask, (char)(r->gen > 0))) {
                RFAIL(LT_ERR_NOMEM, "out of memory");
                return;
            }
}

/* run body into a string (set blocks, filter blocks) */
static json_t *capture(render *r, scope *sc, nodes *body) {
    lt_buf tmp = {0}, *save = r->out, *savem = r->mask;
    r->out = &tmp;
    r->mask = NULL;
    exec_nodes(r, sc, body);
    r->out = save;
    r->mask = savem;
    json_t *s = r->c.failed ? NULL : j_string(&r->c, tmp.p, tmp.n);
    free(tmp.p);
    return s;
}

static void exec_for(render *r, scope *sc, node *n) {
    json_t *it = eval(r, sc, n->a);
    if (r->c.failed) {
        json_decref(it);
        return;
    }
    json_t *l = j_list(&r->c, it, n->line);
    json_decref(it);
    if (!l) return;
    if (n->b) { /* the inline `if` filters the items before loop.* is counted */
        json_t *kept = json_array(), *x;
        size_t i;
        json_array_foreach(l, i, x) {
            if (r->c.failed || step(r)) break;
            scope s2 = {json_object(), sc};
            if (!assign(r, &s2, n->target, x)) {
                json_t *c = eval(r, &s2, n->b);
                if (j_truthy(&r->c, c)) json_array_append(kept, x);
                json_decref(c);
            }
            json_decref(s2.vars);
        }
        json_decref(l);
        l = kept;
    }
    size_t len = json_array_size(l);
    for (size_t i = 0; i < len && !r->c.failed; i++) {
        if (step(r)) break;
        scope s2 = {json_object(), sc};
        json_t *x = json_array_get(l, i);
        if (!assign(r, &s2, n->target, x)) {
            json_t *loop = json_pack("{s:I,s:I,s:I,s:I,s:b,s:b,s:I,s:I,s:I}", "index", (json_int_t)i + 1, "index0",
                                     (json_int_t)i, "revindex", (json_int_t)(len - i), "revindex0",
                                     (json_int_t)(len - i - 1), "first", i == 0, "last", i + 1 == len, "length",
                                     (json_int_t)len, "depth", (json_int_t)1, "depth0", (json_int_t)0);
            if (i > 0) json_object_set(loop, "previtem", json_array_get(l, i - 1));
            if (i + 1 < len) json_object_set(loop, "nextitem", json_array_get(l, i + 1));
            json_object_set_new(s2.vars, "loop", jk_tag(&r->c, loop, JK_LOOP, NULL));
            exec_nodes(r, &s2, &n->body);
        }
        json_decref(s2.vars);
        r->cont = 0;
        if (r->brk) {
            r->brk = 0;
            break;
        }
    }
    if (len == 0 && !r->c.failed) exec_nodes(r, sc, &n->orelse);
    json_decref(l);
}

static void exec_node(render *r, scope *sc, node *n) {
    if (r->c.failed || r->brk || r->cont || step(r)) return;
    switch (n->kind) {
    case N_TEXT: emit(r, n->text, n->slen); return;
    case N_OUT: {
        json_t *v = eval(r, sc, n->a);
        lt_buf b = {0};
        if (!r->c.failed && !j_str(&r->c, &b, v)) emit(r, b.p ? b.p : "", b.n);
        free(b.p);
        json_decref(v);
        return;
    }
    case N_IF: {
        json_t *c = eval(r, sc, n->a);
        int t = j_truthy(&r->c, c);
        json_decref(c);
        if (!r->c.failed) exec_nodes(r, sc, t ? &n->body : &n->orelse);
        return;
    }
    case N_FOR:
        if (r_enter(r, 1, n->line)) return;
        exec_for(r, sc, n);
        r->depth--;
        return;
    case N_SET: {
        json_t *v = eval(r, sc, n->a);
        if (!r->c.failed) assign(r, sc, n->target, v);
        json_decref(v);
        return;
    }
    case N_SETBLOCK:
    case N_FILTERBLOCK: {
        scope inner = {json_object(), sc}; /* a filter block's assignments stay inside it */
        json_t *s = capture(r, n->kind == N_SETBLOCK ? sc : &inner, &n->body);
        json_decref(inner.vars);
        if (s && n->a) { /* the filters, applied to the captured text */
            json_t *f = eval_in(r, sc, n->a, s);
            json_decref(s);
            s = f;
        }
        if (r->c.failed) {
            json_decref(s);
            return;
        }
        if (n->kind == N_SETBLOCK) assign(r, sc, n->target, s);
        else {
            lt_buf b = {0};
            if (!j_str(&r->c, &b, s)) emit(r, b.p ? b.p : "", b.n);
            free(b.p);
        }
        json_decref(s);
        return;
    }
    case N_GEN:
        r->gen++;
        exec_nodes(r, sc, &n->body);
        r->gen--;
        return;
    case N_MACRO: {
        json_t *m = make_macro(r, sc, n, NULL);
        if (m) set_var(sc, n->s, m);
        return;
    }
    case N_CALLBLOCK: { /* the called macro gets `caller`: this block's body as a macro */
        json_t *caller = make_macro(r, sc, n, NULL), *f = NULL;
        node *cl = n->a;
        if (!caller) return;
        if (cl->a->kind == E_ATTR) {
            json_t *obj = eval(r, sc, cl->a->a);
            f = j_getattr(&r->c, obj, cl->a->s);
            json_decref(obj);
        } else f = eval(r, sc, cl->a);
        jargs a;
        if (!r->c.failed && jk_kind(&r->c, f) != JK_MACRO)
            RFAIL(LT_ERR_DATA, "line %d: {%% call %%} needs a macro", n->line);
        else if (!r->c.failed && !eval_args(r, sc, cl, &a)) {
            json_t *s = call_macro(r, f, &a, caller, n->line);
            lt_buf b = {0};
            if (s && !j_str(&r->c, &b, s)) emit(r, b.p ? b.p : "", b.n);
            free(b.p);
            json_decref(s);
            args_free(&a);
        }
        json_decref(f);
        json_decref(caller);
        return;
    }
    case N_WITH: {
        scope inner = {json_object(), sc};
        for (int i = 0; i < n->args.n && !r->c.failed; i++) {
            json_t *v = eval(r, sc, n->args.v[i]);
            set_var(&inner, n->kw[i], v);
        }
        if (!r->c.failed) exec_nodes(r, &inner, &n->body);
        json_decref(inner.vars);
        return;
    }
    case N_BREAK: r->brk = 1; return;
    case N_CONTINUE: r->cont = 1; return;
    default: RFAIL(LT_ERR_INTERNAL, "line %d: unknown statement node %d", n->line, n->kind);
    }
}

static void exec_nodes(render *r, scope *sc, nodes *v) {
    for (int i = 0; i < v->n && !r->c.failed && !r->brk && !r->cont; i++) exec_node(r, sc, v->v[i]);
}

/* ---- entry ------------------------------------------------------------------------------------------------ */

/* jinja2 reads the source with every \r\n and \r as \n, and drops one trailing newline */
static char *normalise(const char *s, size_t n, size_t *out_n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r') {
            d[k++] = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else d[k++] = s[i];
    }
    if (k && d[k - 1] == '\n') k--;
    d[k] = 0;
    *out_n = k;
    return d;
}

lt_status lt_jinja_render(const char *tmpl, size_t n, json_t *ctx, lt_buf *out, lt_buf *mask, lt_error *err, int *depth,
                          long *steps) {
    if (n > (size_t)LT_JINJA_MAX_BYTES)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "chat template: %zu bytes passes the limit of %ld MiB", n,
                       LT_JINJA_MAX_BYTES >> 20);
    size_t sn;
    char *src = normalise(tmpl, n, &sn);
    if (!src) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    if (memchr(src, 0, sn)) {
        free(src);
        return lt_fail(err, LT_ERR_UNSUPPORTED, "chat template: a NUL byte in the template");
    }
    parser ps = {.src = src, .srclen = sn, .err = err, .line = 1};
    lt_status st = lex(&ps);
    nodes root = {0};
    if (!st) {
        parse_body(&ps, &root, NULL, 0);
        if (ps.failed) st = err->status ? err->status : LT_ERR_UNSUPPORTED;
    }
    int max_depth = ps.max_depth;
    long nsteps = 0;
    if (!st) {
        render r = {.out = out, .mask = mask};
        r.c.err = err;
        r.c.free_payload = free_payload;
        r.c.max_steps = lt_jinja_step_limit(ctx);
        const char *sde = getenv("SOURCE_DATE_EPOCH"); /* reproducible renders: strftime_now at that time (UTC) */
        char *e = NULL;
        long long epoch = sde ? strtoll(sde, &e, 10) : 0;
        if (sde && *sde && e && !*e) {
            r.c.now = (time_t)epoch;
            r.c.now_utc = 1;
        } else r.c.now = time(NULL);
        scope top = {json_deep_copy(ctx), NULL};
        if (!top.vars) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        else {
            r.top = &top;
            exec_nodes(&r, &top, &root);
            if (r.c.failed) st = err->status ? err->status : LT_ERR_DATA;
        }
        json_decref(top.vars);
        jk_clear(&r.c);
        nsteps = r.c.steps;
        if (r.max_depth + 0 > 0 && r.max_depth > max_depth) max_depth = r.max_depth;
    }
    nodes_free(&root);
    free(ps.toks);
    free(src);
    if (depth) *depth = max_depth;
    if (steps) *steps = nsteps;
    if (!st && !out->p) lt_buf_puts(out, "");
    if (!st && mask && !mask->p) lt_buf_puts(mask, "");
    return st;
}
