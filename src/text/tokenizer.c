/*
 * tokenizer.c - Hugging Face tokenizer.json, encode and decode, identical to the `tokenizers` library
 * for the BPE families Llama-type models use:
 *   byte-level BPE (GPT-2, Llama 3, Qwen, Mistral tekken): Split(regex) / ByteLevel pre-tokenizers,
 *   SentencePiece-style BPE (Llama 2, Mistral): Metaspace or Prepend+Replace normalizers, byte fallback.
 *
 * The pipeline of `tokenizers` (TokenizerImpl::encode), step by step:
 *   1. split the raw text on added tokens that are not "normalized" (special tokens: <|eot_id|>, <s>);
 *   2. normalize each remaining piece (NFC, NFKC, Prepend, Replace, ...);
 *   3. split again on the "normalized" added tokens;
 *   4. pre-tokenize each piece (regex splits, byte-to-unicode mapping, metaspace);
 *   5. run BPE on each pre-token (merges by rank, byte fallback, unk);
 *   6. post-process (TemplateProcessing: BOS/EOS) when special tokens are asked for.
 * Decode maps ids to token strings and runs the decoder chain (ByteLevel, Replace, ByteFallback, Fuse,
 * Strip, Metaspace).
 * Regexes: PCRE2 (UTF + UCP, JIT); Unicode normalization: utf8proc.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "text/tokenizer.h"
#include "text/vocab.h"

/* ---- small containers ------------------------------------------------------------------------- */

static int buf_reserve(lt_buf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}
int lt_buf_put(lt_buf *b, const void *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}
int lt_buf_putc(lt_buf *b, char c) { return lt_buf_put(b, &c, 1); }
int lt_buf_puts(lt_buf *b, const char *s) { return lt_buf_put(b, s, strlen(s)); }
int lt_ivec_push(lt_ivec *v, int32_t x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return -1;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return 0;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------------- */

/* Length of the well-formed sequence at s (Unicode Table 3-7), or 0 with *sub = length of the maximal
 * ill-formed subpart (at least 1), which is what one U+FFFD replaces (Rust from_utf8_lossy). */
static int utf8_seq(const unsigned char *s, size_t n, int *sub) {
    unsigned c = s[0];
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *sub = 1;
        return 0;
    }
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= n) {
            *sub = k;
            return 0;
        }
        unsigned x = s[k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (x < l || x > h) {
            *sub = k;
            return 0;
        }
    }
    return len;
}

int lt_utf8_valid(const char *s, size_t n, size_t *bad) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int sub, k = utf8_seq(u + i, n - i, &sub);
        if (!k) {
            if (bad) *bad = i;
            return 0;
        }
        i += (size_t)k;
    }
    return 1;
}

int lt_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80 || n < 2) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0 || n < 4) {
        *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

static int utf8_put(lt_buf *b, uint32_t cp) {
    char t[4];
    int n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return lt_buf_put(b, t, (size_t)n);
}

/* Append bytes as text, each maximal ill-formed subpart replaced by U+FFFD (from_utf8_lossy). */
static int put_lossy(lt_buf *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int sub, k = u[i] < 0x80 ? 1 : utf8_seq(u + i, n - i, &sub);
        if (k) {
            if (lt_buf_put(b, u + i, (size_t)k)) return -1;
            i += (size_t)k;
        } else {
            if (lt_buf_put(b, "\xEF\xBF\xBD", 3)) return -1;
            i += (size_t)sub;
        }
    }
    return 0;
}

/* Rust char::is_whitespace (White_Space property). */
static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- hash maps ------------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}
static uint64_t hash_u64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* string -> id; keys point into storage owned elsewhere (token strings). */
typedef struct strmap {
    const char **key;
    uint32_t *klen;
    int32_t *val;
    size_t cap, n; /* cap: power of two */
} strmap;

static int strmap_init(strmap *m, size_t expect) {
    m->cap = 16;
    while (m->cap < expect * 2) m->cap *= 2;
    m->n = 0;
    m->key = calloc(m->cap, sizeof *m->key);
    m->klen = calloc(m->cap, sizeof *m->klen);
    m->val = malloc(m->cap * sizeof *m->val);
    return m->key && m->klen && m->val ? 0 : -1;
}
static void strmap_free(strmap *m) {
    free(m->key);
    free(m->klen);
    free(m->val);
}
static int32_t strmap_get(const strmap *m, const char *s, size_t n) {
    if (!m->cap) return -1;
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->key[i]) {
        if (m->klen[i] == n && !memcmp(m->key[i], s, n)) return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}
/* Inserts or overwrites. Keys must stay alive. The map never grows: sized at init. */
static void strmap_put(strmap *m, const char *s, size_t n, int32_t v) {
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->key[i]) {
        if (m->klen[i] == n && !memcmp(m->key[i], s, n)) {
            m->val[i] = v;
            return;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = s;
    m->klen[i] = (uint32_t)n;
    m->val[i] = v;
    m->n++;
}

/* (left id, right id) -> merge rank and merged id */
typedef struct mergemap {
    uint64_t *key; /* (a << 32 | b) + 1, 0 = empty */
    int32_t *rank, *id;
    size_t cap;
} mergemap;

static int merge_get(const mergemap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
    if (!m->cap) return 0;
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->key[i]) {
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *id = m->id[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}
static void merge_put(mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(k) & (m->cap - 1);
    while (m->key[i] && m->key[i] != k) i = (i + 1) & (m->cap - 1);
    if (m->key[i] == k) return; /* first (lowest) rank wins, as in tokenizers */
    m->key[i] = k;
    m->rank[i] = rank;
    m->id[i] = id;
}

/* ---- the tokenizer ---------------------------------------------------------------------------------- */

enum { NORM_NFC, NORM_NFKC, NORM_NFD, NORM_NFKD, NORM_LOWER, NORM_REPLACE, NORM_PREPEND, NORM_STRIP };
typedef struct normalizer {
    int kind;
    char *pattern, *content; /* Replace (string pattern), Prepend (content) */
    pcre2_code *re;          /* Replace with a regex pattern */
    int left, right;         /* Strip */
} normalizer;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS, PRE_WHITESPACE_SPLIT };
enum { BEH_ISOLATED, BEH_REMOVED, BEH_MERGED_PREV, BEH_MERGED_NEXT, BEH_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct pretok {
    int kind;
    pcre2_code *re; /* Split, ByteLevel(use_regex) */
    char *src;      /* the regex as written (GGUF export names it for llama.cpp) */
    char *literal;  /* Split with a String pattern */
    int behavior;
    int add_prefix_space; /* ByteLevel */
    char repl[8];         /* Metaspace replacement (UTF-8) */
    int prepend, split;   /* Metaspace */
    int individual;       /* Digits */
} pretok;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct decoder {
    int kind;
    char *pattern, *content; /* Replace; Strip content */
    int start, stop;         /* Strip */
    char repl[8];            /* Metaspace */
    int prepend;
} decoder;

typedef struct added_tok {
    char *content;
    size_t len;
    int32_t id;
    int special, normalized, lstrip, rstrip, single_word;
} added_tok;

/* cache of BPE results per pre-token */
typedef struct cache_ent {
    char *key;
    uint32_t klen, off, n;
} cache_ent;

struct lt_tokenizer {
    lt_error err;
    /* model */
    int32_t n_ids;  /* 1 + largest id */
    char **tok_str; /* id -> vocabulary string (NUL-terminated; NULL for holes) */
    uint32_t *tok_len;
    const char **name; /* id -> what decode prints: the added token's content, else the vocab string */
    uint32_t *name_len;
    strmap vocab; /* model vocabulary */
    mergemap merges;
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    int32_t byte_id[256]; /* <0xXX> ids for byte fallback, -1 if absent */
    /* added tokens */
    added_tok *added;
    int n_added;
    strmap added_map;            /* content -> id */
    int16_t *added_by_byte[256]; /* indices of the added tokens starting with each byte, -1 terminated */
    int n_added_kind[2];         /* added tokens matched on raw text [0] and on normalized text [1] */
    int can_split_metaspace;     /* no vocab token has "▁" after another character: words split before "▁" */
    unsigned char *is_special;   /* [n_ids] */
    /* pipeline */
    normalizer *norm;
    int n_norm;
    pretok *pre;
    int n_pre;
    decoder *dec;
    int n_dec;
    int32_t post_single[16]; /* TemplateProcessing "single": ids, with -1 marking the sequence */
    int n_post;
    int has_post;
    /* tokenizer_config.json */
    char *bos, *eos, *pad, *unk, *chat_template;
    /* byte-level tables */
    char b2u[256][3];
    unsigned char b2u_len[256];
    int16_t u2b[512];
    /* scratch (one thread at a time per handle) */
    pcre2_match_data *md;
    cache_ent *cache;
    size_t cache_cap, cache_n;
    lt_ivec cache_ids;
    lt_ivec out;
    lt_buf text;
    int32_t *sym_id, *sym_prev, *sym_next;
    size_t sym_cap;
    struct heap_ent {
        int32_t rank, pos, a, b;
    } * heap;
    size_t heap_cap;
};

lt_error *lt_tok_error(struct lt_tokenizer *t) { return &t->err; }
lt_buf *lt_tok_text_buf(struct lt_tokenizer *t) { return &t->text; }
const char *lt_tok_chat_template(const struct lt_tokenizer *t) { return t->chat_template; }
const char *lt_tok_special_str(const struct lt_tokenizer *t, const char *name) {
    const char *s = !strcmp(name, "bos_token")   ? t->bos
                    : !strcmp(name, "eos_token") ? t->eos
                    : !strcmp(name, "pad_token") ? t->pad
                    : !strcmp(name, "unk_token") ? t->unk
                                                 : NULL;
    return s ? s : "";
}

/* ---- regexes ----------------------------------------------------------------------------------- */

/* `tokenizers` matches with Oniguruma, where \s is Unicode White_Space; PCRE2's UCP \s lacks U+0085
 * (NEL). Rewrite \s and \S so both agree: inside a class \s -> \s\x{85}; outside \s -> [\s\x{85}],
 * \S -> [^\s\x{85}]. */
static char *translate_regex(const char *p) {
    lt_buf b = {0};
    int in_class = 0, bad = 0; /* bad: out of memory (a half-translated pattern must not be compiled) */
    for (size_t i = 0; p[i]; i++) {
        if (p[i] == '\\' && p[i + 1]) {
            char c = p[i + 1];
            if (c == 's') bad |= lt_buf_puts(&b, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]");
            else if (c == 'S' && !in_class) bad |= lt_buf_puts(&b, "[^\\s\\x{85}]");
            else bad |= lt_buf_put(&b, p + i, 2);
            i++;
            continue;
        }
        if (p[i] == '[' && !in_class) in_class = 1;
        else if (p[i] == ']' && in_class) in_class = 0;
        bad |= lt_buf_putc(&b, p[i]);
    }
    if (!b.p) bad |= lt_buf_puts(&b, "");
    if (bad) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static pcre2_code *compile_regex(const char *pattern, lt_error *err) {
    char *tp = translate_regex(pattern);
    if (!tp) {
        lt_fail(err, LT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)tp, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK,
                                   &ec, &eo, NULL);
    free(tp);
    if (!re) {
        PCRE2_UCHAR m[256];
        pcre2_get_error_message(ec, m, sizeof m);
        lt_fail(err, LT_ERR_FORMAT, "regex \"%.200s\" does not compile (offset %zu): %s", pattern, (size_t)eo,
                (char *)m);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter is the fallback */
    return re;
}

/* ---- loading ----------------------------------------------------------------------------------- */

static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static void byte_tables(lt_tokenizer *t) {
    /* GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n */
    int n = 0;
    for (int i = 0; i < 512; i++) t->u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        uint32_t cp = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        if (cp < 0x80) { /* UTF-8 of cp < 512, written here: nothing to allocate, nothing to fail */
            t->b2u[b][0] = (char)cp;
            t->b2u_len[b] = 1;
        } else {
            t->b2u[b][0] = (char)(0xC0 | (cp >> 6));
            t->b2u[b][1] = (char)(0x80 | (cp & 0x3F));
            t->b2u_len[b] = 2;
        }
        t->u2b[cp] = (int16_t)b;
    }
}

static const char *jstr(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}
static int jbool(json_t *o, const char *k, int def) {
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* pattern: {"String": "..."} or {"Regex": "..."} */
static lt_status read_pattern(json_t *o, const char *where, char **lit, pcre2_code **re, lt_error *err) {
    json_t *p = json_object_get(o, "pattern");
    const char *s;
    if (json_is_object(p) && (s = jstr(p, "String"))) {
        *lit = strdup(s);
        return *lit ? LT_OK : lt_fail(err, LT_ERR_NOMEM, "out of memory");
    }
    if (json_is_object(p) && (s = jstr(p, "Regex"))) {
        *re = compile_regex(s, err);
        return *re ? LT_OK : lt_fail_prefix(err, "%s", where);
    }
    return lt_fail(err, LT_ERR_FORMAT, "%s: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}", where);
}

/* tokenizer.json's normalizer, pre_tokenizer, decoder and post_processor are each one component or a
 * {"type": "Sequence", "<list>": [...]} of them. Reads n's "type" into *type; for a Sequence it loads
 * every element of the list in order with `load` (a Sequence may nest) and sets *type to NULL. */
typedef lt_status (*component_loader)(lt_tokenizer *t, json_t *n, lt_error *err);
static lt_status component_type(lt_tokenizer *t, json_t *n, const char *what, const char *list, component_loader load,
                                const char **type, lt_error *err) {
    *type = jstr(n, "type");
    if (!*type) return lt_fail(err, LT_ERR_FORMAT, "%s without a \"type\"", what);
    if (strcmp(*type, "Sequence")) return LT_OK;
    *type = NULL;
    json_t *arr = json_object_get(n, list), *x;
    size_t i;
    if (!json_is_array(arr)) return lt_fail(err, LT_ERR_FORMAT, "%s Sequence without \"%s\"", what, list);
    json_array_foreach(arr, i, x) {
        lt_status st = load(t, x, err);
        if (st) return st;
    }
    return LT_OK;
}

/* Grows the array a of n elements of `size` bytes by one zeroed element at its end; NULL when out of
 * memory (a unchanged). The caller counts the element once it owns what must be freed with it. */
static void *grow_by_one(void *a, int n, size_t size) {
    char *g = realloc(a, (size_t)(n + 1) * size);
    if (g) memset(g + (size_t)n * size, 0, size);
    return g;
}

static lt_status load_normalizer(lt_tokenizer *t, json_t *n, lt_error *err) {
    if (!n || json_is_null(n)) return LT_OK;
    const char *type;
    lt_status st = component_type(t, n, "normalizer", "normalizers", load_normalizer, &type, err);
    if (st || !type) return st;
    normalizer *nn = grow_by_one(t->norm, t->n_norm, sizeof *nn);
    if (!nn) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    t->norm = nn;
    normalizer *z = &t->norm[t->n_norm];
    if (!strcmp(type, "NFC")) z->kind = NORM_NFC;
    else if (!strcmp(type, "NFKC")) z->kind = NORM_NFKC;
    else if (!strcmp(type, "NFD")) z->kind = NORM_NFD;
    else if (!strcmp(type, "NFKD")) z->kind = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) z->kind = NORM_LOWER;
    else if (!strcmp(type, "Strip")) {
        z->kind = NORM_STRIP;
        z->left = jbool(n, "strip_left", 1);
        z->right = jbool(n, "strip_right", 1);
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return lt_fail(err, LT_ERR_FORMAT, "normalizer Prepend without \"prepend\"");
        z->kind = NORM_PREPEND;
        if (!(z->content = strdup(p))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        if (!c) return lt_fail(err, LT_ERR_FORMAT, "normalizer Replace without \"content\"");
        z->kind = NORM_REPLACE;
        t->n_norm++; /* owned from here: freed with the tokenizer */
        if (!(z->content = strdup(c))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        return read_pattern(n, "normalizer Replace", &z->pattern, &z->re, err);
    } else
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "normalizer \"%s\" is not supported (supported: NFC, NFKC, NFD, NFKD, "
                       "Lowercase, Strip, Prepend, Replace, Sequence)",
                       type);
    t->n_norm++;
    return LT_OK;
}

static int parse_behavior(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "Isolated")) return BEH_ISOLATED;
    if (!strcmp(s, "Removed")) return BEH_REMOVED;
    if (!strcmp(s, "MergedWithPrevious")) return BEH_MERGED_PREV;
    if (!strcmp(s, "MergedWithNext")) return BEH_MERGED_NEXT;
    if (!strcmp(s, "Contiguous")) return BEH_CONTIGUOUS;
    return -1;
}

static int parse_prepend(json_t *o) {
    const char *s = jstr(o, "prepend_scheme");
    if (s) return !strcmp(s, "first") ? PREPEND_FIRST : !strcmp(s, "never") ? PREPEND_NEVER : PREPEND_ALWAYS;
    return jbool(o, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER; /* older files */
}

static lt_status load_pretok(lt_tokenizer *t, json_t *n, lt_error *err) {
    if (!n || json_is_null(n)) return LT_OK;
    const char *type;
    lt_status st = component_type(t, n, "pre_tokenizer", "pretokenizers", load_pretok, &type, err);
    if (st || !type) return st;
    pretok *np = grow_by_one(t->pre, t->n_pre, sizeof *np);
    if (!np) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    t->pre = np;
    pretok *z = &t->pre[t->n_pre];
    if (!strcmp(type, "Split")) {
        z->kind = PRE_SPLIT;
        t->n_pre++;
        if (jbool(n, "invert", 0))
            return lt_fail(err, LT_ERR_UNSUPPORTED, "pre_tokenizer Split with \"invert\": true is not supported");
        if ((z->behavior = parse_behavior(jstr(n, "behavior"))) < 0)
            return lt_fail(err, LT_ERR_FORMAT, "pre_tokenizer Split: unknown \"behavior\"");
        const char *rs = jstr(json_object_get(n, "pattern"), "Regex");
        if (rs && !(z->src = strdup(rs))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        return read_pattern(n, "pre_tokenizer Split", &z->literal, &z->re, err);
    } else if (!strcmp(type, "ByteLevel")) {
        z->kind = PRE_BYTELEVEL;
        z->add_prefix_space = jbool(n, "add_prefix_space", 1);
        t->n_pre++;
        if (jbool(n, "use_regex", 1) &&
            (!(z->re = compile_regex(GPT2_PATTERN, err)) || !(z->src = strdup(GPT2_PATTERN))))
            return err->status ? err->status : lt_fail(err, LT_ERR_NOMEM, "out of memory");
        return LT_OK;
    } else if (!strcmp(type, "Metaspace")) {
        z->kind = PRE_METASPACE;
        const char *r = jstr(n, "replacement");
        snprintf(z->repl, sizeof z->repl, "%s", r ? r : "\xE2\x96\x81");
        z->prepend = parse_prepend(n);
        z->split = jbool(n, "split", 1);
    } else if (!strcmp(type, "Digits")) {
        z->kind = PRE_DIGITS;
        z->individual = jbool(n, "individual_digits", 0);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        z->kind = PRE_WHITESPACE_SPLIT;
    } else
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "pre_tokenizer \"%s\" is not supported (supported: Split, ByteLevel, "
                       "Metaspace, Digits, WhitespaceSplit, Sequence)",
                       type);
    t->n_pre++;
    return LT_OK;
}

static lt_status load_decoder(lt_tokenizer *t, json_t *n, lt_error *err) {
    if (!n || json_is_null(n)) return LT_OK;
    const char *type;
    lt_status st = component_type(t, n, "decoder", "decoders", load_decoder, &type, err);
    if (st || !type) return st;
    decoder *nd = grow_by_one(t->dec, t->n_dec, sizeof *nd);
    if (!nd) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    t->dec = nd;
    decoder *z = &t->dec[t->n_dec];
    if (!strcmp(type, "ByteLevel")) z->kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) z->kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) z->kind = DEC_FUSE;
    else if (!strcmp(type, "Strip")) {
        z->kind = DEC_STRIP;
        const char *c = jstr(n, "content");
        if (!(z->content = strdup(c ? c : " "))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        z->start = (int)json_integer_value(json_object_get(n, "start"));
        z->stop = (int)json_integer_value(json_object_get(n, "stop"));
    } else if (!strcmp(type, "Replace")) {
        z->kind = DEC_REPLACE;
        const char *c = jstr(n, "content");
        json_t *p = json_object_get(n, "pattern");
        const char *s = json_is_object(p) ? jstr(p, "String") : NULL;
        if (!c || !s)
            return lt_fail(err, LT_ERR_UNSUPPORTED, "decoder Replace: only {\"String\": ...} patterns are supported");
        z->pattern = strdup(s);
        z->content = strdup(c);
        if (!z->pattern || !z->content) {
            t->n_dec++; /* freed with the tokenizer */
            return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        }
    } else if (!strcmp(type, "Metaspace")) {
        z->kind = DEC_METASPACE;
        const char *r = jstr(n, "replacement");
        snprintf(z->repl, sizeof z->repl, "%s", r ? r : "\xE2\x96\x81");
        z->prepend = parse_prepend(n);
    } else
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "decoder \"%s\" is not supported (supported: ByteLevel, ByteFallback, "
                       "Fuse, Strip, Replace, Metaspace, Sequence)",
                       type);
    t->n_dec++;
    return LT_OK;
}

static int32_t token_to_id(const lt_tokenizer *t, const char *s) {
    int32_t id = strmap_get(&t->added_map, s, strlen(s));
    return id >= 0 ? id : strmap_get(&t->vocab, s, strlen(s));
}

static lt_status load_post(lt_tokenizer *t, json_t *n, lt_error *err) {
    if (!n || json_is_null(n)) return LT_OK;
    const char *type;
    lt_status st = component_type(t, n, "post_processor", "processors", load_post, &type, err);
    if (st || !type) return st;
    if (!strcmp(type, "ByteLevel")) return LT_OK; /* only moves offsets */
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(n, "single"), *sp = json_object_get(n, "special_tokens"), *x;
        size_t i;
        if (!json_is_array(single))
            return lt_fail(err, LT_ERR_FORMAT, "post_processor TemplateProcessing without \"single\"");
        t->n_post = 0;
        t->has_post = 1;
        json_array_foreach(single, i, x) {
            json_t *s = json_object_get(x, "SpecialToken"), *q = json_object_get(x, "Sequence");
            if (q) {
                if (t->n_post < 16) t->post_single[t->n_post++] = -1;
                continue;
            }
            const char *name = s ? jstr(s, "id") : NULL;
            json_t *def = name ? json_object_get(sp, name) : NULL, *ids = json_object_get(def, "ids"), *y;
            if (!json_is_array(ids))
                return lt_fail(err, LT_ERR_FORMAT, "post_processor: special token \"%s\" has no \"ids\"",
                               name ? name : "?");
            size_t k;
            json_array_foreach(ids, k, y) if (t->n_post < 16) t->post_single[t->n_post++] =
                (int32_t)json_integer_value(y);
        }
        return LT_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        json_t *cls = json_object_get(n, "cls"), *sep = json_object_get(n, "sep");
        if (!json_is_array(cls) || !json_is_array(sep))
            return lt_fail(err, LT_ERR_FORMAT, "post_processor %s without cls/sep", type);
        t->has_post = 1;
        t->n_post = 3;
        t->post_single[0] = (int32_t)json_integer_value(json_array_get(cls, 1));
        t->post_single[1] = -1;
        t->post_single[2] = (int32_t)json_integer_value(json_array_get(sep, 1));
        return LT_OK;
    }
    return lt_fail(err, LT_ERR_UNSUPPORTED,
                   "post_processor \"%s\" is not supported (supported: TemplateProcessing, "
                   "ByteLevel, RobertaProcessing, BertProcessing, Sequence)",
                   type);
}

/* tokenizer_config.json: a token is "text" or {"content": "text", ...}; *out NULL when absent */
static lt_status config_token(json_t *cfg, const char *key, char **out, lt_error *err) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    *out = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
    return json_is_string(v) && !*out ? lt_fail(err, LT_ERR_NOMEM, "out of memory") : LT_OK;
}

static lt_status set_token(lt_tokenizer *t, int32_t id, const char *s, size_t n, lt_error *err) {
    if (id < 0 || id >= t->n_ids) return lt_fail(err, LT_ERR_FORMAT, "token id %d out of range", id);
    if (!(t->tok_str[id] = malloc(n + 1))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    memcpy(t->tok_str[id], s, n);
    t->tok_str[id][n] = 0;
    t->tok_len[id] = (uint32_t)n;
    return LT_OK;
}

static lt_status load_model(lt_tokenizer *t, json_t *root, lt_error *err) {
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab"),
           *merges = json_object_get(model, "merges"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model)) return lt_fail(err, LT_ERR_FORMAT, "no \"model\" object");
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE"))
        return lt_fail(err, LT_ERR_UNSUPPORTED, "model type \"%s\" is not supported (only BPE)", type);
    if (!json_is_object(vocab)) return lt_fail(err, LT_ERR_FORMAT, "model has no \"vocab\" object");
    if (merges && !json_is_array(merges)) return lt_fail(err, LT_ERR_FORMAT, "model \"merges\" is not an array");
    const char *csp = jstr(model, "continuing_subword_prefix"), *eow = jstr(model, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "BPE with continuing_subword_prefix / end_of_word_suffix is not supported");
    if (json_is_number(json_object_get(model, "dropout")) && json_number_value(json_object_get(model, "dropout")) > 0)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "BPE dropout is not supported (a training-time option)");
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    /* ids: the largest of vocab and added tokens */
    int32_t maxid = -1;
    const char *k;
    json_t *v, *x;
    size_t i;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= LT_TOK_MAX_IDS)
            return lt_fail(err, LT_ERR_FORMAT, "vocab entry \"%.100s\" has no valid id (0 <= id < %d)", k,
                           LT_TOK_MAX_IDS);
        if (json_integer_value(v) > maxid) maxid = (int32_t)json_integer_value(v);
    }
    if (added && !json_is_array(added)) return lt_fail(err, LT_ERR_FORMAT, "\"added_tokens\" is not an array");
    /* the matcher indexes added tokens with int16 (added_by_byte); real tokenizers have a few thousand */
    if (json_array_size(added) > LT_TOK_MAX_ADDED)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "%zu added tokens: more than the %d this tokenizer supports",
                       json_array_size(added), LT_TOK_MAX_ADDED);
    json_array_foreach(added, i, x) {
        json_t *id = json_object_get(x, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= LT_TOK_MAX_IDS ||
            !jstr(x, "content"))
            return lt_fail(err, LT_ERR_FORMAT,
                           "added_tokens[%zu] needs an integer \"id\" (0 <= id < %d) and a string \"content\"", i,
                           LT_TOK_MAX_IDS);
        if (json_integer_value(id) > maxid) maxid = (int32_t)json_integer_value(id);
    }
    if (maxid < 0) return lt_fail(err, LT_ERR_FORMAT, "empty vocabulary");
    /* ids index tables of maxid + 1 entries: a few entries with huge ids would make a tiny file allocate
     * gigabytes. Real vocabularies are dense (every id below the largest is used). */
    const size_t n_entries = json_object_size(vocab) + json_array_size(added);
    if ((size_t)maxid + 1 > 4 * n_entries + 65536)
        return lt_fail(err, LT_ERR_FORMAT,
                       "the largest token id %d is far beyond the %zu tokens: the ids are not dense", maxid, n_entries);
    if (json_array_size(merges) > (size_t)LT_TOK_MAX_IDS)
        return lt_fail(err, LT_ERR_FORMAT, "%zu merges: more than %d", json_array_size(merges), LT_TOK_MAX_IDS);
    t->n_ids = maxid + 1;
    t->tok_str = calloc((size_t)t->n_ids, sizeof *t->tok_str);
    t->tok_len = calloc((size_t)t->n_ids, sizeof *t->tok_len);
    t->is_special = calloc((size_t)t->n_ids, 1);
    t->name = calloc((size_t)t->n_ids, sizeof *t->name);
    t->name_len = calloc((size_t)t->n_ids, sizeof *t->name_len);
    if (!t->name || !t->name_len || !t->tok_str || !t->tok_len || !t->is_special ||
        strmap_init(&t->vocab, json_object_size(vocab)))
        return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    json_object_foreach(vocab, k, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t n = strlen(k); /* jansson keys cannot hold NUL; a vocab entry never does */
        if (t->tok_str[id]) return lt_fail(err, LT_ERR_FORMAT, "vocab: id %d is used twice", id);
        lt_status st = set_token(t, id, k, n, err);
        if (st) return st;
        strmap_put(&t->vocab, t->tok_str[id], n, id);
        t->name[id] = t->tok_str[id];
        t->name_len[id] = (uint32_t)n;
    }
    const char *unk = jstr(model, "unk_token");
    t->unk_id = unk ? strmap_get(&t->vocab, unk, strlen(unk)) : -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vocab, name, 6);
    }
    /* merges: "a b" strings (older files) or ["a", "b"] pairs */
    size_t nm = json_array_size(merges);
    t->merges.cap = 16;
    while (t->merges.cap < nm * 2) t->merges.cap *= 2;
    t->merges.key = calloc(t->merges.cap, sizeof *t->merges.key);
    t->merges.rank = malloc(t->merges.cap * sizeof *t->merges.rank);
    t->merges.id = malloc(t->merges.cap * sizeof *t->merges.id);
    if (!t->merges.key || !t->merges.rank || !t->merges.id) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    lt_buf cat = {0};
    json_array_foreach(merges, i, x) {
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(x)) {
            a = json_string_value(x);
            const char *sp = strchr(a, ' ');
            if (!sp) {
                free(cat.p);
                return lt_fail(err, LT_ERR_FORMAT, "merges[%zu] \"%.100s\" is not \"a b\"", i, a);
            }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (json_is_array(x) && json_array_size(x) == 2 && json_is_string(json_array_get(x, 0)) &&
                   json_is_string(json_array_get(x, 1))) {
            a = json_string_value(json_array_get(x, 0));
            b = json_string_value(json_array_get(x, 1));
            la = strlen(a);
            lb = strlen(b);
        } else {
            free(cat.p);
            return lt_fail(err, LT_ERR_FORMAT, "merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
        cat.n = 0;
        if (lt_buf_put(&cat, a, la) || lt_buf_put(&cat, b, lb)) {
            free(cat.p);
            return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        }
        int32_t ia = strmap_get(&t->vocab, a, la), ib = strmap_get(&t->vocab, b, lb),
                iab = strmap_get(&t->vocab, cat.p, cat.n);
        if (ia < 0 || ib < 0 || iab < 0) {
            lt_status st = lt_fail(err, LT_ERR_FORMAT,
                                   "merges[%zu] (\"%.*s\" + \"%.*s\"): a part or the result is not in the vocab", i,
                                   (int)(la > 100 ? 100 : la), a, (int)(lb > 100 ? 100 : lb), b);
            free(cat.p);
            return st;
        }
        merge_put(&t->merges, ia, ib, (int32_t)i, iab);
    }
    free(cat.p);
    /* added tokens */
    t->n_added = (int)json_array_size(added);
    t->added = calloc((size_t)t->n_added + 1, sizeof *t->added);
    if (!t->added || strmap_init(&t->added_map, (size_t)t->n_added + 1))
        return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    json_array_foreach(added, i, x) {
        added_tok *a = &t->added[i];
        const char *c = jstr(x, "content");
        a->id = (int32_t)json_integer_value(json_object_get(x, "id"));
        a->len = strlen(c);
        if (!a->len) return lt_fail(err, LT_ERR_FORMAT, "added_tokens[%zu] has empty content", i);
        if (!(a->content = strdup(c))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        a->special = jbool(x, "special", 0);
        a->normalized = jbool(x, "normalized", !a->special);
        a->lstrip = jbool(x, "lstrip", 0);
        a->rstrip = jbool(x, "rstrip", 0);
        a->single_word = jbool(x, "single_word", 0);
        /* the added token's string is what decode prints for its id */
        t->name[a->id] = a->content;
        t->name_len[a->id] = (uint32_t)a->len;
        strmap_put(&t->added_map, a->content, a->len, a->id);
        if (a->special) t->is_special[a->id] = 1;
        t->n_added_kind[a->normalized != 0]++;
    }
    for (int b = 0; b < 256; b++) {
        int cnt = 0;
        for (int k = 0; k < t->n_added; k++) cnt += (unsigned char)t->added[k].content[0] == b;
        if (!cnt) continue;
        if (!(t->added_by_byte[b] = malloc((size_t)(cnt + 1) * sizeof(int16_t))))
            return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        cnt = 0;
        for (int k = 0; k < t->n_added; k++) /* n_added <= LT_TOK_MAX_ADDED fits int16 */
            if ((unsigned char)t->added[k].content[0] == b) t->added_by_byte[b][cnt++] = (int16_t)k;
        t->added_by_byte[b][cnt] = -1;
    }
    /* SentencePiece vocabularies keep "▁" at the start of pieces (or in runs of "▁"); then no merge can
     * join a character to a following "▁", and a long word may be cut before each such "▁" without
     * changing the result. Checked here on the whole vocabulary, not assumed. */
    t->can_split_metaspace = 1;
    for (int32_t id = 0; id < t->n_ids && t->can_split_metaspace; id++) {
        const char *v = t->tok_str[id];
        if (!v) continue;
        for (const char *q = strstr(v, "\xE2\x96\x81"); q; q = strstr(q + 3, "\xE2\x96\x81"))
            if (q > v && !(q - v >= 3 && !memcmp(q - 3, "\xE2\x96\x81", 3))) {
                t->can_split_metaspace = 0;
                break;
            }
    }
    return LT_OK;
}

static void tokenizer_free_parts(lt_tokenizer *t) {
    if (t->tok_str)
        for (int32_t i = 0; i < t->n_ids; i++) free(t->tok_str[i]);
    free(t->tok_str);
    free(t->tok_len);
    free(t->name);
    free(t->name_len);
    free(t->is_special);
    strmap_free(&t->vocab);
    strmap_free(&t->added_map);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.id);
    for (int i = 0; t->added && i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    for (int b = 0; b < 256; b++) free(t->added_by_byte[b]);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].pattern);
        free(t->norm[i].content);
        if (t->norm[i].re) pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (int i = 0; i < t->n_pre; i++) {
        free(t->pre[i].literal);
        free(t->pre[i].src);
        if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    }
    free(t->pre);
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].pattern);
        free(t->dec[i].content);
    }
    free(t->dec);
    free(t->bos);
    free(t->eos);
    free(t->pad);
    free(t->unk);
    free(t->chat_template);
    if (t->md) pcre2_match_data_free(t->md);
    for (size_t i = 0; i < t->cache_cap; i++) free(t->cache ? t->cache[i].key : NULL);
    free(t->cache);
    free(t->cache_ids.p);
    free(t->out.p);
    free(t->text.p);
    free(t->sym_id);
    free(t->sym_prev);
    free(t->sym_next);
    free(t->heap);
}

LT_API void lt_tokenizer_free(lt_tokenizer *t) {
    if (!t) return;
    tokenizer_free_parts(t);
    free(t);
}

static lt_status load_config(lt_tokenizer *t, const char *path, lt_error *err) {
    char *data;
    size_t n;
    lt_error quiet;
    const lt_status rst = lt_read_file(path, &data, &n, &quiet);
    if (rst == LT_ERR_NOMEM) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
    if (rst != LT_OK) return LT_OK; /* an optional file */
    json_error_t je;
    json_t *cfg = json_loadb(data, n, 0, &je);
    free(data);
    if (!cfg) return lt_fail(err, LT_ERR_JSON, "%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return lt_fail(err, LT_ERR_JSON, "%s: not a JSON object", path);
    }
    lt_status st = config_token(cfg, "bos_token", &t->bos, err);
    if (!st) st = config_token(cfg, "eos_token", &t->eos, err);
    if (!st) st = config_token(cfg, "pad_token", &t->pad, err);
    if (!st) st = config_token(cfg, "unk_token", &t->unk, err);
    json_t *ct = json_object_get(cfg, "chat_template"), *x;
    const char *tmpl = json_is_string(ct) ? json_string_value(ct) : NULL;
    size_t i;
    if (json_is_array(ct)) /* [{"name": "default", "template": ...}, ...]: the first "default" */
        json_array_foreach(ct, i, x) if (!tmpl && !strcmp(jstr(x, "name") ? jstr(x, "name") : "", "default")) tmpl =
            jstr(x, "template");
    if (!st && tmpl && !(t->chat_template = strdup(tmpl))) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    json_decref(cfg);
    return st;
}

LT_API lt_status lt_tokenizer_load(const char *path, lt_tokenizer **out) {
    lt_error *terr = lt_thread_error();
    lt_error_clear(terr);
    if (!path || !out) return lt_fail(terr, LT_ERR_ARGUMENT, "lt_tokenizer_load: NULL argument");
    *out = NULL;
    /* a directory with tokenizer.json (+ tokenizer_config.json), or the tokenizer.json file itself */
    char file[4096], cfgpath[4096], dir[4096];
    size_t pl = strlen(path);
    if (pl >= 5 && !strcmp(path + pl - 5, ".json")) {
        snprintf(file, sizeof file, "%s", path);
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    } else {
        snprintf(dir, sizeof dir, "%s", path);
        if (lt_path_join(file, sizeof file, path, "tokenizer.json"))
            return lt_fail(terr, LT_ERR_ARGUMENT, "path too long");
    }
    if (lt_path_join(cfgpath, sizeof cfgpath, dir, "tokenizer_config.json"))
        return lt_fail(terr, LT_ERR_ARGUMENT, "path too long");
    char *data;
    size_t n;
    lt_status st = lt_read_file(file, &data, &n, terr);
    if (st) return st;
    json_error_t je;
    json_t *root = json_loadb(data, n, 0, &je);
    free(data);
    if (!root) return lt_fail(terr, LT_ERR_JSON, "%s: line %d: %s", file, je.line, je.text);
    lt_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(root);
        return lt_fail(terr, LT_ERR_NOMEM, "out of memory");
    }
    byte_tables(t);
    if (!json_is_object(root)) st = lt_fail(terr, LT_ERR_FORMAT, "not a JSON object");
    if (!st) st = load_model(t, root, terr);
    if (!st) st = load_normalizer(t, json_object_get(root, "normalizer"), terr);
    if (!st) st = load_pretok(t, json_object_get(root, "pre_tokenizer"), terr);
    if (!st) st = load_decoder(t, json_object_get(root, "decoder"), terr);
    if (!st) st = load_post(t, json_object_get(root, "post_processor"), terr);
    json_decref(root);
    if (!st) st = load_config(t, cfgpath, terr);
    if (!st && !(t->md = pcre2_match_data_create(4, NULL))) st = lt_fail(terr, LT_ERR_NOMEM, "out of memory");
    if (!st) {
        t->cache_cap = 1 << 15;
        if (!(t->cache = calloc(t->cache_cap, sizeof *t->cache))) st = lt_fail(terr, LT_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; !st && i < t->n_post; i++)
        if (t->post_single[i] >= t->n_ids)
            st =
                lt_fail(terr, LT_ERR_FORMAT, "post_processor: token id %d is not in the vocabulary", t->post_single[i]);
    if (st) {
        lt_fail_prefix(terr, "%s", file);
        lt_tokenizer_free(t);
        return st;
    }
    *out = t;
    return LT_OK;
}

/* ---- BPE --------------------------------------------------------------------------------------- */

static int sym_reserve(lt_tokenizer *t, size_t n) {
    if (n <= t->sym_cap) return 0;
    size_t cap = t->sym_cap ? t->sym_cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(t->sym_id, cap * sizeof *a);
    if (a) t->sym_id = a;
    int32_t *b = realloc(t->sym_prev, cap * sizeof *b);
    if (b) t->sym_prev = b;
    int32_t *c = realloc(t->sym_next, cap * sizeof *c);
    if (c) t->sym_next = c;
    struct heap_ent *h = realloc(t->heap, cap * sizeof *h);
    if (h) t->heap = h;
    if (!a || !b || !c || !h) return -1;
    t->sym_cap = t->heap_cap = cap;
    return 0;
}

/* min-heap on (rank, pos): the lowest rank merges first, the leftmost among equal ranks */
static int heap_less(const struct heap_ent *x, const struct heap_ent *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}
static void heap_push(struct heap_ent *h, size_t *n, struct heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}
static struct heap_ent heap_pop(struct heap_ent *h, size_t *n) {
    struct heap_ent top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct heap_ent *best = &last;
        if (l < *n && heap_less(&h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (r < *n && heap_less(&h[r], best)) {
            m = r;
            best = &h[r];
        }
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = last;
    return top;
}

/* BPE of one pre-token (its final string: byte-level mapped or metaspaced), ids appended to out. */
static lt_status bpe_word(lt_tokenizer *t, const char *w, size_t n, lt_ivec *out) {
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vocab, w, n);
        if (id >= 0) return lt_ivec_push(out, id) ? lt_fail(&t->err, LT_ERR_NOMEM, "out of memory") : LT_OK;
    }
    /* symbols: one per character (or per byte with byte fallback) */
    if (sym_reserve(t, n + 1)) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    int32_t ns = 0;
    const unsigned char *u = (const unsigned char *)w;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int k = lt_utf8_next(u + i, n - i, &cp);
        int32_t id = strmap_get(&t->vocab, w + i, (size_t)k);
        if (id >= 0) t->sym_id[ns++] = id;
        else {
            int ok = t->byte_fallback;
            for (int j = 0; ok && j < k; j++) ok = t->byte_id[u[i + j]] >= 0;
            if (ok)
                for (int j = 0; j < k; j++) t->sym_id[ns++] = t->byte_id[u[i + j]];
            else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && ns > 0 && t->sym_id[ns - 1] == t->unk_id)) t->sym_id[ns++] = t->unk_id;
            } /* no unk token: the character is dropped, as tokenizers does */
        }
        i += (size_t)k;
    }
    for (int32_t i = 0; i < ns; i++) {
        t->sym_prev[i] = i - 1;
        t->sym_next[i] = i + 1 < ns ? i + 1 : -1;
    }
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++) {
        int32_t r, id;
        if (merge_get(&t->merges, t->sym_id[i], t->sym_id[i + 1], &r, &id))
            heap_push(t->heap, &hn, (struct heap_ent){r, i, t->sym_id[i], t->sym_id[i + 1]});
    }
    while (hn) {
        struct heap_ent e = heap_pop(t->heap, &hn);
        int32_t p = e.pos, q = t->sym_next[p];
        /* stale entries: the left symbol was merged away or changed, or its right neighbour changed */
        if (t->sym_id[p] != e.a || q < 0 || t->sym_id[q] != e.b) continue;
        int32_t r = 0, id = -1;
        merge_get(&t->merges, e.a, e.b, &r, &id);
        t->sym_id[p] = id;
        t->sym_id[q] = -1; /* dead */
        t->sym_next[p] = t->sym_next[q];
        if (t->sym_next[q] >= 0) t->sym_prev[t->sym_next[q]] = p;
        int32_t pp = t->sym_prev[p], nn = t->sym_next[p];
        if (pp >= 0 && merge_get(&t->merges, t->sym_id[pp], id, &r, &e.b))
            heap_push(t->heap, &hn, (struct heap_ent){r, pp, t->sym_id[pp], id});
        if (nn >= 0 && merge_get(&t->merges, id, t->sym_id[nn], &r, &e.b))
            heap_push(t->heap, &hn, (struct heap_ent){r, p, id, t->sym_id[nn]});
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = t->sym_next[i])
        if (lt_ivec_push(out, t->sym_id[i])) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    return LT_OK;
}

/* BPE with a per-handle cache of recent pre-tokens (most English words repeat). */
static lt_status bpe_cached(lt_tokenizer *t, const char *w, size_t n, lt_ivec *out) {
    if (n == 0) return LT_OK;
    if (n > 64 && t->can_split_metaspace) { /* cut before each "▁" that follows another character */
        size_t s = 0;
        for (size_t i = 3; i + 3 <= n; i++)
            if (!memcmp(w + i, "\xE2\x96\x81", 3) && memcmp(w + i - 3, "\xE2\x96\x81", 3) && (i - s) > 0) {
                size_t q = i - 1; /* the character before must not itself be part of a "▁" */
                while (q > s && ((unsigned char)w[q] & 0xC0) == 0x80) q--;
                if (q + 3 == i && !memcmp(w + q, "\xE2\x96\x81", 3)) continue;
                lt_status st = bpe_cached(t, w + s, i - s, out);
                if (st) return st;
                s = i;
            }
        if (s > 0) return bpe_cached(t, w + s, n - s, out);
    }
    if (n > 64) return bpe_word(t, w, n, out);
    size_t i = hash_bytes(w, n) & (t->cache_cap - 1);
    for (size_t probe = 0; probe < 8; probe++, i = (i + 1) & (t->cache_cap - 1)) {
        cache_ent *c = &t->cache[i];
        if (!c->key) break;
        if (c->klen == n && !memcmp(c->key, w, n)) {
            for (uint32_t k = 0; k < c->n; k++)
                if (lt_ivec_push(out, t->cache_ids.p[c->off + k]))
                    return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
            return LT_OK;
        }
    }
    size_t before = out->n;
    lt_status st = bpe_word(t, w, n, out);
    if (st) return st;
    if (t->cache_n * 2 >= t->cache_cap || t->cache_ids.n > (1u << 22)) { /* full: start over */
        for (size_t k = 0; k < t->cache_cap; k++) {
            free(t->cache[k].key);
            t->cache[k].key = NULL;
        }
        t->cache_n = 0;
        t->cache_ids.n = 0;
    }
    i = hash_bytes(w, n) & (t->cache_cap - 1);
    for (size_t probe = 0; probe < 8; probe++, i = (i + 1) & (t->cache_cap - 1)) {
        cache_ent *c = &t->cache[i];
        if (c->key) continue;
        if (!(c->key = malloc(n))) return LT_OK; /* the cache is only an optimisation */
        memcpy(c->key, w, n);
        c->klen = (uint32_t)n;
        c->off = (uint32_t)t->cache_ids.n;
        c->n = (uint32_t)(out->n - before);
        for (size_t k = before; k < out->n; k++)
            if (lt_ivec_push(&t->cache_ids, out->p[k])) {
                free(c->key);
                c->key = NULL;
                return LT_OK;
            }
        t->cache_n++;
        break;
    }
    return LT_OK;
}

/* Rust char::is_numeric: Nd, Nl, No */
static int is_numeric(uint32_t cp) {
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* ---- normalization ------------------------------------------------------------------------------ */

/* *lead_removed: a normalizer deleted the first characters, so the result no longer starts at
 * offset 0 of the original text (Metaspace prepend_scheme "first" then does not prepend). */
static lt_status normalize(lt_tokenizer *t, const char *s, size_t n, lt_buf *out, int *lead_removed) {
    lt_buf cur = {0}, nxt = {0};
    if (lt_buf_put(&cur, s, n)) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    lt_status st = LT_OK;
    for (int k = 0; k < t->n_norm && !st; k++) {
        const normalizer *z = &t->norm[k];
        nxt.n = 0;
        if (z->kind <= NORM_NFKD) {
            utf8proc_uint8_t *r = NULL;
            utf8proc_option_t opt = UTF8PROC_STABLE | (z->kind == NORM_NFC    ? UTF8PROC_COMPOSE
                                                       : z->kind == NORM_NFKC ? UTF8PROC_COMPOSE | UTF8PROC_COMPAT
                                                       : z->kind == NORM_NFD  ? UTF8PROC_DECOMPOSE
                                                                              : UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
            utf8proc_ssize_t rn = utf8proc_map((const utf8proc_uint8_t *)cur.p, (utf8proc_ssize_t)cur.n, &r, opt);
            if (rn < 0) st = lt_fail(&t->err, LT_ERR_ARGUMENT, "normalization failed: %s", utf8proc_errmsg(rn));
            else if (lt_buf_put(&nxt, r, (size_t)rn)) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
            free(r);
        } else if (z->kind == NORM_LOWER) {
            const unsigned char *u = (const unsigned char *)cur.p;
            for (size_t i = 0; i < cur.n && !st;) {
                uint32_t cp;
                i += (size_t)lt_utf8_next(u + i, cur.n - i, &cp);
                /* Rust char::to_lowercase: U+0130 is the one code point with a two-character lower case */
                if (cp == 0x130 ? lt_buf_put(&nxt, "i\xCC\x87", 3)
                                : utf8_put(&nxt, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp)))
                    st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
            }
        } else if (z->kind == NORM_PREPEND) {
            if (cur.n && (lt_buf_puts(&nxt, z->content) || lt_buf_put(&nxt, cur.p, cur.n)))
                st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
        } else if (z->kind == NORM_STRIP) {
            size_t a = 0, b = cur.n;
            const unsigned char *u = (const unsigned char *)cur.p;
            while (z->left && a < b) {
                uint32_t cp;
                int l = lt_utf8_next(u + a, b - a, &cp);
                if (!is_ws(cp)) break;
                a += (size_t)l;
            }
            while (z->right && b > a) {
                size_t q = b - 1;
                while (q > a && (u[q] & 0xC0) == 0x80) q--;
                uint32_t cp;
                lt_utf8_next(u + q, b - q, &cp);
                if (!is_ws(cp)) break;
                b = q;
            }
            if (lt_buf_put(&nxt, cur.p + a, b - a)) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
            if (a > 0) *lead_removed = 1;
        } else if (z->kind == NORM_REPLACE) {
            size_t i = 0;
            if (!*z->content && cur.n) { /* deleting matches: is there one at the very start? */
                if (z->pattern) *lead_removed |= *z->pattern && !strncmp(cur.p, z->pattern, strlen(z->pattern));
                else if (pcre2_match(z->re, (PCRE2_SPTR)cur.p, cur.n, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED, t->md,
                                     NULL) >= 0)
                    *lead_removed |= pcre2_get_ovector_pointer(t->md)[1] > 0;
            }
            if (z->pattern) {
                size_t pl = strlen(z->pattern);
                while (i < cur.n && !st) {
                    const char *hit = pl ? memmem(cur.p + i, cur.n - i, z->pattern, pl) : NULL;
                    size_t end = hit ? (size_t)(hit - cur.p) : cur.n;
                    if (lt_buf_put(&nxt, cur.p + i, end - i) || (hit && lt_buf_puts(&nxt, z->content)))
                        st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
                    i = hit ? end + pl : cur.n;
                }
            } else {
                while (i <= cur.n && !st) {
                    int rc = pcre2_match(z->re, (PCRE2_SPTR)cur.p, cur.n, i, PCRE2_NO_UTF_CHECK, t->md, NULL);
                    if (rc < 0) {
                        lt_buf_put(&nxt, cur.p + i, cur.n - i);
                        break;
                    }
                    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
                    lt_buf_put(&nxt, cur.p + i, ov[0] - i);
                    lt_buf_puts(&nxt, z->content);
                    if (ov[1] == ov[0]) { /* empty match: copy one character and move on */
                        if (ov[1] >= cur.n) break;
                        uint32_t cp;
                        int l = lt_utf8_next((const unsigned char *)cur.p + ov[1], cur.n - ov[1], &cp);
                        lt_buf_put(&nxt, cur.p + ov[1], (size_t)l);
                        i = ov[1] + (size_t)l;
                    } else i = ov[1];
                }
            }
        }
        lt_buf tmp = cur;
        cur = nxt;
        nxt = tmp;
        if (!cur.p) lt_buf_puts(&cur, "");
    }
    free(nxt.p);
    if (!st && lt_buf_put(out, cur.p, cur.n)) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    free(cur.p);
    return st;
}

/* ---- pre-tokenization ---------------------------------------------------------------------------
 * Pieces live in an arena as (offset, length, at_start); at_start marks a piece that begins at
 * offset 0 of the original text (Metaspace prepend_scheme "first"). */
typedef struct piece {
    size_t off, len;
    int at_start;
} piece;
typedef struct pieces {
    lt_buf arena;
    piece *p;
    size_t n, cap;
} pieces;

static int pieces_add(pieces *ps, const char *s, size_t n, int at_start) {
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        piece *np = realloc(ps->p, cap * sizeof *np);
        if (!np) return -1;
        ps->p = np;
        ps->cap = cap;
    }
    ps->p[ps->n++] = (piece){ps->arena.n, n, at_start};
    return lt_buf_put(&ps->arena, s, n);
}
/* extend the last piece */
static int pieces_extend(pieces *ps, const char *s, size_t n) {
    ps->p[ps->n - 1].len += n;
    return lt_buf_put(&ps->arena, s, n);
}

/* Split s by match spans [ms[i], me[i]) with a SplitDelimiterBehavior. */
static int split_spans(pieces *out, const char *s, size_t n, int at_start, const size_t *ms, const size_t *me,
                       size_t nm, int beh) {
    size_t prev = 0;
    int first = at_start, rc = 0;
    int last_was_match = 0;
#define ADD(a, b)                                                                        \
    do {                                                                                 \
        if ((b) > (a)) { rc |= pieces_add(out, s + (a), (b) - (a), first && (a) == 0); } \
    } while (0)
    for (size_t k = 0; k < nm; k++) {
        size_t a = ms[k], b = me[k];
        switch (beh) {
        case BEH_ISOLATED:
            ADD(prev, a);
            ADD(a, b);
            prev = b;
            break;
        case BEH_REMOVED:
            ADD(prev, a);
            prev = b;
            break;
        case BEH_MERGED_PREV:
            ADD(prev, b);
            prev = b;
            break;
        case BEH_MERGED_NEXT:
            ADD(prev, a);
            prev = a;
            break;
        case BEH_CONTIGUOUS:
            if (a > prev) {
                ADD(prev, a);
                last_was_match = 0;
            }
            if (last_was_match && a == prev && out->n) rc |= pieces_extend(out, s + a, b - a);
            else ADD(a, b);
            last_was_match = 1;
            prev = b;
            break;
        }
    }
    ADD(prev, n);
#undef ADD
    return rc;
}

/* Appends the span [a, b) to the list ms/me of *nm spans (room for *cap); 1 when out of memory, the list
 * as it was. ms and me grow together, so one realloc that fails leaves both usable and freeable. */
static int spans_add(size_t **ms, size_t **me, size_t *nm, size_t *cap, size_t a, size_t b) {
    if (*nm == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        size_t *x = realloc(*ms, c * sizeof *x);
        if (!x) return 1;
        *ms = x;
        size_t *y = realloc(*me, c * sizeof *y);
        if (!y) return 1;
        *me = y;
        *cap = c;
    }
    (*ms)[*nm] = a;
    (*me)[*nm] = b;
    (*nm)++;
    return 0;
}

static lt_status collect_matches(lt_tokenizer *t, const pretok *z, const char *s, size_t n, size_t **ms, size_t **me,
                                 size_t *nm, size_t *cap) {
    *nm = 0;
    size_t i = 0;
    while (i < n) {
        size_t a, b;
        if (z->re) {
            int rc = pcre2_jit_match(z->re, (PCRE2_SPTR)s, n, i, PCRE2_NO_UTF_CHECK, t->md, NULL);
            if (rc == PCRE2_ERROR_JIT_BADOPTION)
                rc = pcre2_match(z->re, (PCRE2_SPTR)s, n, i, PCRE2_NO_UTF_CHECK, t->md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) return lt_fail(&t->err, LT_ERR_INTERNAL, "regex match failed (PCRE2 error %d)", rc);
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            a = ov[0];
            b = ov[1];
        } else {
            size_t pl = strlen(z->literal);
            const char *hit = pl ? memmem(s + i, n - i, z->literal, pl) : NULL;
            if (!hit) break;
            a = (size_t)(hit - s);
            b = a + pl;
        }
        if (b == a) { /* empty match: step over one character */
            if (a >= n) break;
            uint32_t cp;
            i = a + (size_t)lt_utf8_next((const unsigned char *)s + a, n - a, &cp);
            continue;
        }
        if (spans_add(ms, me, nm, cap, a, b)) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
        i = b;
    }
    return LT_OK;
}

static lt_status pre_tokenize(lt_tokenizer *t, const char *s, size_t n, int at_start, pieces *res) {
    pieces a = {0}, b = {0};
    pieces *cur = &a, *nxt = &b;
    size_t *ms = NULL, *me = NULL, nm = 0, mcap = 0;
    lt_status st = LT_OK;
    lt_buf tmp = {0};
    if (pieces_add(cur, s, n, at_start)) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    for (int k = 0; k < t->n_pre && !st; k++) {
        const pretok *z = &t->pre[k];
        nxt->n = 0;
        nxt->arena.n = 0;
        for (size_t i = 0; i < cur->n && !st; i++) {
            const char *ps = cur->arena.p + cur->p[i].off;
            size_t pn = cur->p[i].len;
            int pst = cur->p[i].at_start, rc = 0;
            switch (z->kind) {
            case PRE_SPLIT:
                st = collect_matches(t, z, ps, pn, &ms, &me, &nm, &mcap);
                if (!st) rc = split_spans(nxt, ps, pn, pst, ms, me, nm, z->behavior);
                break;
            case PRE_BYTELEVEL: {
                tmp.n = 0;
                if (z->add_prefix_space && (pn == 0 || ps[0] != ' ')) rc |= lt_buf_putc(&tmp, ' ');
                rc |= lt_buf_put(&tmp, ps, pn);
                size_t start = nxt->n;
                if (z->re) {
                    st = collect_matches(t, z, tmp.p, tmp.n, &ms, &me, &nm, &mcap);
                    if (!st) rc |= split_spans(nxt, tmp.p, tmp.n, pst, ms, me, nm, BEH_ISOLATED);
                } else if (tmp.n) rc |= pieces_add(nxt, tmp.p, tmp.n, pst);
                /* map every byte of the new pieces to its printable stand-in */
                for (size_t j = start; j < nxt->n && !rc; j++) {
                    lt_buf m = {0};
                    const unsigned char *u = (const unsigned char *)nxt->arena.p + nxt->p[j].off;
                    for (size_t q = 0; q < nxt->p[j].len; q++) rc |= lt_buf_put(&m, t->b2u[u[q]], t->b2u_len[u[q]]);
                    /* rewrite: append the mapped string and repoint the piece */
                    nxt->p[j].off = nxt->arena.n;
                    nxt->p[j].len = m.n;
                    rc |= lt_buf_put(&nxt->arena, m.p ? m.p : "", m.n);
                    free(m.p);
                }
                break;
            }
            case PRE_METASPACE: {
                tmp.n = 0;
                size_t rl = strlen(z->repl);
                int starts = pn >= 1 && (ps[0] == ' ' || (pn >= rl && !memcmp(ps, z->repl, rl)));
                if (!starts && (z->prepend == PREPEND_ALWAYS || (z->prepend == PREPEND_FIRST && pst)))
                    rc |= lt_buf_puts(&tmp, z->repl);
                for (size_t q = 0; q < pn; q++)
                    rc |= ps[q] == ' ' ? lt_buf_puts(&tmp, z->repl) : lt_buf_putc(&tmp, ps[q]);
                if (z->split) {
                    nm = 0;
                    for (size_t q = 0; q + rl <= tmp.n;) {
                        if (!memcmp(tmp.p + q, z->repl, rl)) {
                            if (spans_add(&ms, &me, &nm, &mcap, q, q + rl)) {
                                rc = -1;
                                break;
                            }
                            q += rl;
                        } else q++;
                    }
                    if (!rc) rc |= split_spans(nxt, tmp.p, tmp.n, pst, ms, me, nm, BEH_MERGED_NEXT);
                } else if (tmp.n) rc |= pieces_add(nxt, tmp.p, tmp.n, pst);
                break;
            }
            case PRE_DIGITS: { /* numeric characters (Unicode N*) one by one, or in runs */
                nm = 0;
                const unsigned char *u = (const unsigned char *)ps;
                for (size_t q = 0; q < pn && !rc;) {
                    uint32_t cp;
                    int l = lt_utf8_next(u + q, pn - q, &cp);
                    if (!is_numeric(cp)) {
                        q += (size_t)l;
                        continue;
                    }
                    size_t e = q + (size_t)l;
                    while (!z->individual && e < pn) {
                        int l2 = lt_utf8_next(u + e, pn - e, &cp);
                        if (!is_numeric(cp)) break;
                        e += (size_t)l2;
                    }
                    if (spans_add(&ms, &me, &nm, &mcap, q, e)) {
                        rc = -1;
                        break;
                    }
                    q = e;
                }
                if (!rc) rc |= split_spans(nxt, ps, pn, pst, ms, me, nm, BEH_ISOLATED);
                break;
            }
            case PRE_WHITESPACE_SPLIT: {
                const unsigned char *u = (const unsigned char *)ps;
                for (size_t q = 0; q < pn;) {
                    uint32_t cp;
                    int l = lt_utf8_next(u + q, pn - q, &cp);
                    if (is_ws(cp)) {
                        q += (size_t)l;
                        continue;
                    }
                    size_t e = q;
                    while (e < pn) {
                        int l2 = lt_utf8_next(u + e, pn - e, &cp);
                        if (is_ws(cp)) break;
                        e += (size_t)l2;
                    }
                    rc |= pieces_add(nxt, ps + q, e - q, pst && q == 0);
                    q = e;
                }
                break;
            }
            }
            if (rc && !st) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
        }
        pieces *sw = cur;
        cur = nxt;
        nxt = sw;
    }
    if (!st) {
        *res = *cur;
        memset(cur, 0, sizeof *cur);
    }
    free(a.arena.p);
    free(a.p);
    free(b.arena.p);
    free(b.p);
    free(ms);
    free(me);
    free(tmp.p);
    return st;
}

/* ---- added tokens --------------------------------------------------------------------------------
 * Leftmost-longest match among the added tokens of one kind (normalized or not), as the Aho-Corasick
 * automaton of tokenizers finds them, then lstrip / rstrip widen the match over whitespace and
 * single_word rejects matches inside a word. Calls fn(text span) and fn(token) in order. */
typedef lt_status (*seg_fn)(lt_tokenizer *t, const char *s, size_t n, int32_t id, int at_start, void *user);

/* A word character as the Unicode \w of Rust's regex crate, which tokenizers uses to decide whether a
 * single_word added token stands alone: Alphabetic (letters, letter numbers, and the Other_Alphabetic
 * circled/squared letters), marks, decimal digits, connector punctuation, ZWNJ/ZWJ. */
static int is_word_char(uint32_t cp) {
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ME) || c == UTF8PROC_CATEGORY_ND ||
           c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_PC || cp == 0x200C || cp == 0x200D ||
           (cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
           (cp >= 0x1F170 && cp <= 0x1F189);
}

static lt_status split_added(lt_tokenizer *t, const char *s, size_t n, int normalized, int at_start, seg_fn fn,
                             void *user) {
    size_t prev = 0, i = 0;
    const unsigned char *u = (const unsigned char *)s;
    int any = t->n_added_kind[normalized != 0];
    while (any && i < n) {
        /* the leftmost-longest match; a single_word token that sits inside a word is skipped whole,
         * and the search goes on after it (Aho-Corasick find_iter does not retry inside a match) */
        const added_tok *best = NULL;
        const int16_t *cand = t->added_by_byte[u[i]];
        for (int c = 0; cand && cand[c] >= 0; c++) {
            const added_tok *a = &t->added[cand[c]];
            if (a->normalized != normalized || a->len > n - i) continue;
            if (memcmp(s + i, a->content, a->len)) continue;
            if (!best || a->len > best->len) best = a;
        }
        if (!best) {
            i++;
            continue;
        }
        if (best->single_word) {
            uint32_t cp;
            int inside = 0;
            if (i > 0) {
                size_t q = i - 1;
                while (q > 0 && (u[q] & 0xC0) == 0x80) q--;
                lt_utf8_next(u + q, n - q, &cp);
                inside |= is_word_char(cp);
            }
            if (i + best->len < n) {
                lt_utf8_next(u + i + best->len, n - i - best->len, &cp);
                inside |= is_word_char(cp);
            }
            if (inside) {
                i += best->len;
                continue;
            }
        }
        size_t a0 = i, a1 = i + best->len;
        if (best->lstrip)
            while (a0 > prev) {
                size_t q = a0 - 1;
                while (q > prev && (u[q] & 0xC0) == 0x80) q--;
                uint32_t cp;
                lt_utf8_next(u + q, n - q, &cp);
                if (!is_ws(cp)) break;
                a0 = q;
            }
        if (best->rstrip)
            while (a1 < n) {
                uint32_t cp;
                int l = lt_utf8_next(u + a1, n - a1, &cp);
                if (!is_ws(cp)) break;
                a1 += (size_t)l;
            }
        lt_status st;
        if (a0 > prev && (st = fn(t, s + prev, a0 - prev, -1, at_start && prev == 0, user))) return st;
        if ((st = fn(t, s + a0, a1 - a0, best->id, 0, user))) return st;
        prev = i = a1;
    }
    if (n > prev) return fn(t, s + prev, n - prev, -1, at_start && prev == 0, user);
    return LT_OK;
}

/* a normalized piece between the normalized added tokens */
static lt_status model_piece(lt_tokenizer *t, const char *s, size_t n, int32_t id, int at_start, void *user) {
    lt_ivec *out = user;
    if (id >= 0) return lt_ivec_push(out, id) ? lt_fail(&t->err, LT_ERR_NOMEM, "out of memory") : LT_OK;
    pieces ps = {0};
    lt_status st = pre_tokenize(t, s, n, at_start, &ps);
    for (size_t i = 0; !st && i < ps.n; i++) st = bpe_cached(t, ps.arena.p + ps.p[i].off, ps.p[i].len, out);
    free(ps.arena.p);
    free(ps.p);
    return st;
}

/* a raw piece between the special (non-normalized) added tokens */
static lt_status raw_piece(lt_tokenizer *t, const char *s, size_t n, int32_t id, int at_start, void *user) {
    lt_ivec *out = user;
    if (id >= 0) return lt_ivec_push(out, id) ? lt_fail(&t->err, LT_ERR_NOMEM, "out of memory") : LT_OK;
    if (!t->n_norm) return split_added(t, s, n, 1, at_start, model_piece, out);
    lt_buf nb = {0};
    int lead_removed = 0;
    lt_status st = normalize(t, s, n, &nb, &lead_removed);
    if (!st) st = split_added(t, nb.p ? nb.p : "", nb.n, 1, at_start && !lead_removed, model_piece, out);
    free(nb.p);
    return st;
}

lt_status lt_tok_encode_into(lt_tokenizer *t, const char *text, size_t len, int add_special, lt_ivec *out) {
    size_t bad;
    if (!lt_utf8_valid(text, len, &bad))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "text is not valid UTF-8 (byte %zu)", bad);
    size_t start = out->n;
    lt_status st = split_added(t, text, len, 0, 1, raw_piece, out);
    if (st || !add_special || !t->has_post) return st;
    /* TemplateProcessing "single": the specials around the sequence (marked -1) */
    size_t n = out->n - start;
    int32_t *seq = malloc((n ? n : 1) * sizeof *seq);
    if (!seq) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    if (n) memcpy(seq, out->p + start, n * sizeof *seq);
    out->n = start;
    for (int i = 0; i < t->n_post && !st; i++) {
        if (t->post_single[i] >= 0) {
            if (lt_ivec_push(out, t->post_single[i])) st = LT_ERR_NOMEM;
        } else
            for (size_t k = 0; k < n && !st; k++)
                if (lt_ivec_push(out, seq[k])) st = LT_ERR_NOMEM;
    }
    free(seq);
    return st ? lt_fail(&t->err, LT_ERR_NOMEM, "out of memory") : LT_OK;
}

/* ---- decode ---------------------------------------------------------------------------------------- */

typedef struct toklist {
    lt_buf *s;
    size_t n;
} toklist;

static void toklist_free(toklist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->s[i].p);
    free(l->s);
    l->s = NULL;
    l->n = 0;
}

static int replace_all(lt_buf *dst, const char *s, size_t n, const char *pat, const char *with) {
    size_t pl = strlen(pat), i = 0;
    int rc = 0;
    while (i < n) {
        const char *hit = pl ? memmem(s + i, n - i, pat, pl) : NULL;
        size_t end = hit ? (size_t)(hit - s) : n;
        rc |= lt_buf_put(dst, s + i, end - i);
        if (hit) rc |= lt_buf_puts(dst, with);
        i = hit ? end + pl : n;
    }
    return rc;
}

static lt_status run_decoders(lt_tokenizer *t, toklist *l) {
    int rc = 0;
    for (int k = 0; k < t->n_dec && !rc; k++) {
        const decoder *d = &t->dec[k];
        switch (d->kind) {
        case DEC_BYTELEVEL:
        case DEC_FUSE: {
            lt_buf all = {0}, res = {0};
            for (size_t i = 0; i < l->n; i++) rc |= lt_buf_put(&all, l->s[i].p ? l->s[i].p : "", l->s[i].n);
            if (d->kind == DEC_BYTELEVEL) {
                lt_buf bytes = {0};
                const unsigned char *u = (const unsigned char *)all.p;
                for (size_t i = 0; i < all.n;) {
                    uint32_t cp;
                    int len = lt_utf8_next(u + i, all.n - i, &cp);
                    if (cp < 512 && t->u2b[cp] >= 0) rc |= lt_buf_putc(&bytes, (char)t->u2b[cp]);
                    else rc |= lt_buf_put(&bytes, u + i, (size_t)len);
                    i += (size_t)len;
                }
                rc |= put_lossy(&res, bytes.p ? bytes.p : "", bytes.n);
                free(bytes.p);
                free(all.p);
            } else res = all;
            toklist_free(l);
            l->s = calloc(1, sizeof *l->s);
            if (!l->s) {
                free(res.p);
                rc = -1;
                break;
            }
            l->s[0] = res;
            l->n = 1;
            break;
        }
        case DEC_REPLACE:
        case DEC_METASPACE:
            for (size_t i = 0; i < l->n; i++) {
                lt_buf nb = {0};
                rc |= replace_all(&nb, l->s[i].p ? l->s[i].p : "", l->s[i].n,
                                  d->kind == DEC_REPLACE ? d->pattern : d->repl,
                                  d->kind == DEC_REPLACE ? d->content : " ");
                if (d->kind == DEC_METASPACE && i == 0 && d->prepend != PREPEND_NEVER && nb.n && nb.p[0] == ' ') {
                    memmove(nb.p, nb.p + 1, nb.n);
                    nb.n--;
                }
                free(l->s[i].p);
                l->s[i] = nb;
            }
            break;
        case DEC_BYTEFALLBACK: {
            lt_buf *ns = calloc(l->n + 1, sizeof *ns);
            size_t nn = 0;
            lt_buf run = {0};
            size_t run_n = 0;
            if (!ns) {
                rc = -1;
                break;
            }
            for (size_t i = 0; i <= l->n; i++) {
                const char *p = i < l->n ? l->s[i].p : NULL;
                unsigned v;
                if (p && l->s[i].n == 6 && !memcmp(p, "<0x", 3) && p[5] == '>' && sscanf(p + 3, "%2x", &v) == 1 &&
                    strchr("0123456789ABCDEFabcdef", p[3]) && strchr("0123456789ABCDEFabcdef", p[4])) {
                    rc |= lt_buf_putc(&run, (char)v);
                    run_n++;
                    continue;
                }
                if (run_n) {
                    lt_buf piece = {0};
                    if (lt_utf8_valid(run.p, run.n, NULL)) rc |= lt_buf_put(&piece, run.p, run.n);
                    else
                        for (size_t q = 0; q < run_n; q++) rc |= lt_buf_put(&piece, "\xEF\xBF\xBD", 3);
                    /* one token per byte token in tokenizers; joined here, which only matters to Strip */
                    ns[nn++] = piece;
                    run.n = 0;
                    run_n = 0;
                }
                if (i < l->n) {
                    ns[nn++] = l->s[i];
                    l->s[i].p = NULL;
                }
            }
            free(run.p);
            toklist_free(l);
            l->s = ns;
            l->n = nn;
            break;
        }
        case DEC_STRIP:
            for (size_t i = 0; i < l->n; i++) {
                lt_buf *b = &l->s[i];
                size_t cl = strlen(d->content), a = 0, e = b->n;
                for (int q = 0; q < d->start && cl && a + cl <= e && !memcmp(b->p + a, d->content, cl); q++) a += cl;
                for (int q = 0; q < d->stop && cl && e >= a + cl && !memcmp(b->p + e - cl, d->content, cl); q++)
                    e -= cl;
                if (b->p) {
                    memmove(b->p, b->p + a, e - a);
                    b->n = e - a;
                    b->p[b->n] = 0;
                }
            }
            break;
        }
    }
    return rc ? lt_fail(&t->err, LT_ERR_NOMEM, "out of memory") : LT_OK;
}

static lt_status decode_into(lt_tokenizer *t, const int32_t *ids, size_t n, int skip_special, lt_buf *out) {
    toklist l = {calloc(n + 1, sizeof(lt_buf)), 0};
    if (!l.s) return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id >= 0 && id < t->n_ids && !t->name[id]) continue; /* a hole in the id space: tokenizers skips it */
        if (id < 0 || id >= t->n_ids) {
            toklist_free(&l);
            return lt_fail(&t->err, LT_ERR_ARGUMENT, "token id %d (position %zu) is not in the vocabulary (size %d)",
                           id, i, t->n_ids);
        }
        if (skip_special && t->is_special[id]) continue;
        if (lt_buf_put(&l.s[l.n++], t->name[id], t->name_len[id])) {
            toklist_free(&l);
            return lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
        }
    }
    lt_status st = run_decoders(t, &l);
    int rc = 0;
    if (t->n_dec == 0) /* no decoder: tokens joined with spaces, as tokenizers does */
        for (size_t i = 0; !st && i < l.n; i++)
            rc |= (i ? lt_buf_putc(out, ' ') : 0) | lt_buf_put(out, l.s[i].p ? l.s[i].p : "", l.s[i].n);
    else
        for (size_t i = 0; !st && i < l.n; i++) rc |= lt_buf_put(out, l.s[i].p ? l.s[i].p : "", l.s[i].n);
    toklist_free(&l);
    if (!st && rc) st = lt_fail(&t->err, LT_ERR_NOMEM, "out of memory");
    if (!st && !out->p) lt_buf_puts(out, "");
    return st;
}

/* ---- public API ---------------------------------------------------------------------------------- */

LT_API const char *lt_tokenizer_last_error(const lt_tokenizer *t) { return t ? t->err.msg : "NULL tokenizer"; }

LT_API int32_t lt_tokenizer_vocab_size(const lt_tokenizer *t) { return t ? t->n_ids : 0; }

LT_API lt_status lt_tokenizer_encode(lt_tokenizer *t, const char *text, size_t len, int add_special, int32_t *ids,
                                     size_t capacity, size_t *n_ids) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    if ((!text && len) || !n_ids || (!ids && capacity))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_tokenizer_encode: NULL argument");
    t->out.n = 0;
    lt_status st = lt_tok_encode_into(t, text ? text : "", len, add_special, &t->out);
    if (st) return st;
    *n_ids = t->out.n;
    if (t->out.n > capacity)
        return ids ? lt_fail(&t->err, LT_ERR_SHAPE, "%zu token ids do not fit in a buffer of %zu", t->out.n, capacity)
                   : LT_OK;
    if (t->out.n) memcpy(ids, t->out.p, t->out.n * sizeof *ids);
    return LT_OK;
}

LT_API lt_status lt_tokenizer_decode(lt_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char *text,
                                     size_t capacity, size_t *len) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    if ((!ids && n) || !len || (!text && capacity))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_tokenizer_decode: NULL argument");
    t->text.n = 0;
    lt_status st = decode_into(t, ids, n, skip_special, &t->text);
    if (st) return st;
    *len = t->text.n;
    if (!text) return LT_OK;
    if (t->text.n + 1 > capacity)
        return lt_fail(&t->err, LT_ERR_SHAPE, "%zu bytes of text (+ NUL) do not fit in a buffer of %zu", t->text.n,
                       capacity);
    memcpy(text, t->text.p, t->text.n + 1);
    return LT_OK;
}

LT_API int32_t lt_tokenizer_token_to_id(const lt_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    return token_to_id(t, token);
}

LT_API const char *lt_tokenizer_id_to_token(const lt_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return NULL;
    return t->name[id];
}

LT_API int32_t lt_tokenizer_special_id(const lt_tokenizer *t, lt_special_token which) {
    if (!t) return -1;
    const char *s = which == LT_SPECIAL_BOS   ? t->bos
                    : which == LT_SPECIAL_EOS ? t->eos
                    : which == LT_SPECIAL_PAD ? t->pad
                    : which == LT_SPECIAL_UNK ? t->unk
                                              : NULL;
    return s ? token_to_id(t, s) : -1;
}

LT_API int lt_tokenizer_is_special(const lt_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->is_special[id];
}

/* The text bytes one token stands for, for aligning tokens with rendered text (assistant masks):
 * byte-level vocabularies map back through the byte table; SentencePiece ones turn the metaspace
 * into a space and <0xXX> into its byte. Added tokens are their content. */
lt_status lt_tok_token_bytes(const lt_tokenizer *t, int32_t id, lt_buf *out) {
    if (id < 0 || id >= t->n_ids || !t->name[id]) return LT_ERR_ARGUMENT;
    const char *s = t->name[id];
    size_t n = t->name_len[id];
    if (strmap_get(&t->added_map, s, n) == id) return lt_buf_put(out, s, n) ? LT_ERR_NOMEM : LT_OK;
    int bytelevel = 0;
    for (int k = 0; k < t->n_dec; k++) bytelevel |= t->dec[k].kind == DEC_BYTELEVEL;
    int rc = 0;
    if (bytelevel) {
        const unsigned char *u = (const unsigned char *)s;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int len = lt_utf8_next(u + i, n - i, &cp);
            if (cp < 512 && t->u2b[cp] >= 0) rc |= lt_buf_putc(out, (char)t->u2b[cp]);
            else rc |= lt_buf_put(out, u + i, (size_t)len);
            i += (size_t)len;
        }
    } else if (n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && t->byte_fallback) {
        unsigned v = 0;
        sscanf(s + 3, "%2x", &v);
        rc |= lt_buf_putc(out, (char)v);
    } else rc |= replace_all(out, s, n, "\xE2\x96\x81", " ");
    return rc ? LT_ERR_NOMEM : LT_OK;
}

/* ---- the tokenizer as GGUF describes it (text/vocab.h) ---------------------------------------------- */

/* llama.cpp's pre-tokenizers (src/llama-vocab.cpp) by the regex of tokenizer.json that each replaces */
static const char LLAMA3_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* o200k (gpt-oss, GPT-4o): llama.cpp's "gpt-4o" (LLAMA_VOCAB_PRE_TYPE_GPT4O, the same regex) */
static const char GPT4O_PATTERN[] = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}"
                                    "\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
                                    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}"
                                    "\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
                                    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int cmp_rank(const void *x, const void *y, void *ranks) {
    const int32_t *r = ranks, a = r[*(const size_t *)x], b = r[*(const size_t *)y];
    return a < b ? -1 : a > b;
}

void lt_vocab_desc_free(lt_vocab_desc *d) {
    if (!d) return;
    for (int32_t i = 0; d->tokens && i < d->n_tokens; i++) free(d->tokens[i]);
    for (int32_t i = 0; d->merges && i < d->n_merges; i++) free(d->merges[i]);
    free(d->tokens);
    free(d->types);
    free(d->scores);
    free(d->merges);
    memset(d, 0, sizeof *d);
}

lt_status lt_tok_vocab_describe(const lt_tokenizer *t, lt_vocab_desc *d, lt_error *err) {
    memset(d, 0, sizeof *d);
    int bytelevel = 0, metaspace_first = 0, prepend = 0, replace_space = 0;
    const char *regex = NULL;
    for (int i = 0; i < t->n_pre; i++) {
        const pretok *z = &t->pre[i];
        if (z->kind == PRE_BYTELEVEL) {
            bytelevel = 1;
            if (z->add_prefix_space)
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "GGUF: a ByteLevel pre-tokenizer with add_prefix_space has no llama.cpp equivalent");
            if (z->src) regex = z->src;
        } else if (z->kind == PRE_SPLIT && z->src && !regex && z->behavior == BEH_ISOLATED) {
            regex = z->src;
        } else if (z->kind == PRE_METASPACE) {
            metaspace_first = z->prepend != PREPEND_NEVER;
        } else {
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: the pre-tokenizer sequence of this tokenizer has no llama.cpp equivalent "
                           "(supported: [Split(regex, Isolated), ByteLevel] or ByteLevel, and Metaspace)");
        }
    }
    for (int i = 0; i < t->n_norm; i++) {
        const normalizer *z = &t->norm[i];
        if (z->kind == NORM_PREPEND && z->content && !strcmp(z->content, "\xE2\x96\x81")) prepend = 1;
        else if (z->kind == NORM_REPLACE && z->pattern && z->content && !strcmp(z->pattern, " ") &&
                 !strcmp(z->content, "\xE2\x96\x81"))
            replace_space = 1;
        else if (!(z->kind == NORM_NFC && bytelevel)) /* Qwen2's NFC: llama.cpp skips it, as its converter does */
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: normalizer %d of this tokenizer has no llama.cpp equivalent (supported: NFC for "
                           "byte-level BPE; Prepend(\"\\u2581\") and Replace(\" \", \"\\u2581\") for SentencePiece)",
                           i);
    }
    if (bytelevel) {
        snprintf(d->model, sizeof d->model, "gpt2");
        if (regex && !strcmp(regex, GPT2_PATTERN)) snprintf(d->pre, sizeof d->pre, "gpt-2");
        else if (regex && !strcmp(regex, LLAMA3_PATTERN)) /* llama-bpe implies ignore_merges in llama.cpp */
            snprintf(d->pre, sizeof d->pre, "%s", t->ignore_merges ? "llama-bpe" : "smaug-bpe");
        else if (regex && !strcmp(regex, QWEN2_PATTERN) && !t->ignore_merges) snprintf(d->pre, sizeof d->pre, "qwen2");
        else if (regex && !strcmp(regex, GPT4O_PATTERN) && !t->ignore_merges) snprintf(d->pre, sizeof d->pre, "gpt-4o");
        else
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "GGUF: llama.cpp has no pre-tokenizer for the regex %.300s%s (supported: the GPT-2, "
                           "Llama 3, Qwen2 and o200k regexes)",
                           regex ? regex : "(none)", t->ignore_merges ? " with ignore_merges" : "");
    } else if (t->byte_fallback && (replace_space || metaspace_first || t->n_pre)) {
        snprintf(d->model, sizeof d->model, "llama");
        snprintf(d->pre, sizeof d->pre, "default");
        d->add_space_prefix = prepend || metaspace_first;
    } else {
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "GGUF: only byte-level BPE (tokenizer.ggml.model gpt2) and SentencePiece-style BPE with "
                       "byte fallback (llama) tokenizers can be exported");
    }
    const int spm = d->model[0] == 'l';
    d->n_tokens = t->n_ids;
    d->tokens = calloc((size_t)t->n_ids, sizeof *d->tokens);
    d->types = calloc((size_t)t->n_ids, sizeof *d->types);
    d->scores = spm ? calloc((size_t)t->n_ids, sizeof *d->scores) : NULL;
    size_t n_m = 0, *order = NULL;
    for (size_t i = 0; i < t->merges.cap; i++) n_m += t->merges.key[i] != 0;
    order = malloc((n_m + 1) * sizeof *order);
    if (!d->tokens || !d->types || (spm && !d->scores) || !order) goto nomem;
    for (int32_t id = 0; id < t->n_ids; id++) {
        char pad[32];
        const char *s = t->tok_str[id];
        d->types[id] = LT_TOKTYPE_NORMAL;
        if (!s && !t->name[id]) { /* a hole in the id space */
            snprintf(pad, sizeof pad, "[PAD%d]", id);
            s = pad;
            d->types[id] = LT_TOKTYPE_UNUSED;
        } else if (!s) {
            s = t->name[id]; /* an added token outside the model vocabulary */
        }
        if (spm && t->tok_len[id] == 6 && !strncmp(s, "<0x", 3) && s[5] == '>') d->types[id] = LT_TOKTYPE_BYTE;
        if (id == t->unk_id) d->types[id] = LT_TOKTYPE_UNKNOWN;
        if (spm) d->scores[id] = 0.0f;
        if (!(d->tokens[id] = strdup(s))) goto nomem;
    }
    for (int k = 0; k < t->n_added; k++) { /* as convert_hf_to_gguf: special (or "<|...|>") -> control */
        const added_tok *a = &t->added[k];
        const int looks = a->len >= 4 && !strncmp(a->content, "<|", 2) && !strcmp(a->content + a->len - 2, "|>");
        d->types[a->id] = a->special || looks ? LT_TOKTYPE_CONTROL : LT_TOKTYPE_USER_DEFINED;
        free(d->tokens[a->id]);
        if (!(d->tokens[a->id] = strdup(a->content))) goto nomem;
    }
    /* merges in rank order: "a b" (gpt2), or scores for llama.cpp's SentencePiece merge loop, which joins
     * the adjacent pair whose joined token scores highest: score = -rank reproduces the BPE order */
    n_m = 0;
    for (size_t i = 0; i < t->merges.cap; i++)
        if (t->merges.key[i]) order[n_m++] = i;
    qsort_r(order, n_m, sizeof *order, cmp_rank, t->merges.rank);
    if (!spm && !(d->merges = calloc(n_m + 1, sizeof *d->merges))) goto nomem;
    if (spm)
        for (int32_t id = 0; id < t->n_ids; id++)
            if (d->types[id] == LT_TOKTYPE_NORMAL) d->scores[id] = -1e9f; /* no merge makes it: never joined */
    for (size_t j = 0; j < n_m; j++) {
        const size_t i = order[j];
        const int32_t a = (int32_t)((t->merges.key[i] - 1) >> 32), b = (int32_t)((t->merges.key[i] - 1) & 0xffffffffu);
        if (spm) {
            const int32_t id = t->merges.id[i];
            if (d->scores[id] < -(float)t->merges.rank[i]) d->scores[id] = -(float)t->merges.rank[i];
            continue;
        }
        const size_t la = t->tok_len[a], lb = t->tok_len[b];
        char *m = malloc(la + lb + 2);
        if (!m) goto nomem;
        memcpy(m, t->tok_str[a], la);
        m[la] = ' ';
        memcpy(m + la + 1, t->tok_str[b], lb);
        m[la + 1 + lb] = 0;
        d->merges[d->n_merges++] = m;
    }
    free(order);
    d->bos = t->bos ? token_to_id(t, t->bos) : -1;
    d->eos = t->eos ? token_to_id(t, t->eos) : -1;
    d->pad = t->pad ? token_to_id(t, t->pad) : -1;
    d->unk = t->unk ? token_to_id(t, t->unk) : t->unk_id;
    if (t->has_post && t->n_post > 0) {
        d->add_bos = t->post_single[0] >= 0 && t->post_single[0] == d->bos;
        d->add_eos = t->post_single[t->n_post - 1] >= 0 && t->post_single[t->n_post - 1] == d->eos;
    }
    d->chat_template = t->chat_template;
    return LT_OK;
nomem:
    free(order);
    lt_vocab_desc_free(d);
    return lt_fail(err, LT_ERR_NOMEM, "GGUF: out of memory describing the tokenizer");
}
