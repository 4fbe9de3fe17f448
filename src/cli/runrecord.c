/* runrecord.c - the run record (training_args.json), the model card (README.md) and the loss-curve SVG.
 *
 * The card follows what the Hugging Face Hub reads from a README's YAML front matter (base_model,
 * library_name, pipeline_tag, tags, datasets) and what PEFT writes for an adapter (library_name: peft,
 * tags lora and base_model:adapter:<base>), so an adapter published from here is listed as PEFT's and
 * loads as PEFT's; a merged or fully fine-tuned model is a transformers model (base_model:finetune:<base>).
 * Below it, the record in prose: method and hyperparameters, the data (sha256, rows, tokens, the data
 * check), the evaluation, compute, and sections for the author to complete (intended use, limitations),
 * the start of the documentation the EU AI Act asks of general-purpose models (training data summary,
 * compute).
 */
#include "cli/runrecord.h"
#include "loratune_experimental.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- sha256 (FIPS 180-4) ----------------------------------------------------------------------------- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

int sha256_file(const char *path, char hex[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char buf[65536 + 128];
    uint64_t total = 0;
    size_t n, carry = 0;
    while ((n = fread(buf + carry, 1, 65536, f)) > 0) {
        total += n;
        n += carry;
        size_t full = n / 64 * 64;
        for (size_t i = 0; i < full; i += 64) sha256_block(h, buf + i);
        carry = n - full;
        memmove(buf, buf + full, carry);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return -1;
    buf[carry++] = 0x80; /* padding: 1 bit, zeros, the length in bits */
    while (carry % 64 != 56) buf[carry++] = 0;
    for (int i = 7; i >= 0; i--) buf[carry++] = (unsigned char)((total * 8) >> (8 * i));
    for (size_t i = 0; i < carry; i += 64) sha256_block(h, buf + i);
    for (int i = 0; i < 8; i++) snprintf(hex + 8 * i, 9, "%08x", h[i]);
    return 0;
}

/* ---- the record --------------------------------------------------------------------------------------- */

json_t *record_new(const char *command) {
    char when[64];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_pack("{s:s,s:s,s:s,s:s,s:{},s:{},s:[],s:{},s:{}}", "format", "loratune-run-1", "loratune_version",
                     lt_version_string(), "command", command, "created", when, "args", "settings", "data", "results",
                     "compute");
}

void record_args(json_t *rec, const opt_spec *spec, int n_spec, const opts *o) {
    static const char *const skip[] = {"config", "resume", "json", "quiet", "help"};
    json_t *args = json_object_get(rec, "args");
    for (int k = 0; k < n_spec; k++) {
        if (!o->values[k]) continue;
        int s = 0;
        for (size_t q = 0; q < sizeof skip / sizeof *skip; q++) s |= !strcmp(spec[k].name, skip[q]);
        if (s) continue;
        json_object_set_new(args, spec[k].name, spec[k].takes_value ? json_string(o->values[k]) : json_true());
    }
}

void record_set(json_t *rec, const char *section, const char *key, json_t *value) {
    json_t *s = json_object_get(rec, section);
    if (!s) {
        json_object_set_new(rec, section, json_object());
        s = json_object_get(rec, section);
    }
    json_object_set_new(s, key, value ? value : json_null());
}

void record_data(json_t *rec, const char *role, const char *path, int rows, int dropped, long long tokens,
                 long long labelled, json_t *check) {
    char hex[65] = "";
    json_t *d = json_pack("{s:s,s:s,s:s,s:i,s:i,s:I,s:I}", "role", role, "path", path, "sha256",
                          sha256_file(path, hex) ? "unreadable" : hex, "rows", rows, "rows_left_out", dropped, "tokens",
                          (json_int_t)tokens, "tokens_with_loss", (json_int_t)labelled);
    if (check) json_object_set_new(d, "data_check", check);
    json_array_append_new(json_object_get(rec, "data"), d);
}

void cpu_model(char *buf, size_t len) {
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v++;
                while (*v == ' ' || *v == '\t') v++;
                v[strcspn(v, "\n")] = 0;
                snprintf(buf, len, "%s", v);
            }
            break;
        }
    fclose(f);
}

/* ---- the card ------------------------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;
static void sput(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sput(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = (b->cap + (size_t)k + 1) * 2;
        char *np = realloc(b->p, cap);
        if (!np) return;
        b->p = np;
        b->cap = cap;
    }
}
/* a YAML scalar: a JSON string is a valid YAML double-quoted scalar */
static void syaml(sbuf *b, const char *s) {
    json_t *j = json_string(s ? s : "");
    char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    sput(b, "%s", t ? t : "\"\"");
    free(t);
    json_decref(j);
}
/* markdown table cell: | and newlines escaped */
static void scell(sbuf *b, const char *s) {
    for (; s && *s; s++) {
        if (*s == '|') sput(b, "\\|");
        else if (*s == '\n') sput(b, " ");
        else sput(b, "%c", *s);
    }
}
static const char *jstr(const json_t *o, const char *k, const char *def) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : def;
}
static void sval(sbuf *b, const json_t *v) {
    if (json_is_string(v)) scell(b, json_string_value(v));
    else if (json_is_integer(v)) sput(b, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) sput(b, "%.6g", json_real_value(v));
    else if (json_is_true(v)) sput(b, "yes");
    else if (json_is_false(v)) sput(b, "no");
    else sput(b, "-");
}

char *record_card(const json_t *rec, const char *kind) {
    const json_t *set = json_object_get(rec, "settings"), *res = json_object_get(rec, "results"),
                 *cmp = json_object_get(rec, "compute"), *data = json_object_get(rec, "data");
    const char *base = jstr(set, "base_model", "unknown"), *method = jstr(set, "method", "lora");
    int adapter = !strcmp(kind, "adapter");
    sbuf b = {0};
    /* front matter */
    sput(&b, "---\nbase_model: ");
    syaml(&b, base);
    sput(&b, "\nlibrary_name: %s\npipeline_tag: text-generation\ntags:\n", adapter ? "peft" : "transformers");
    char tag[4200];
    snprintf(tag, sizeof tag, "base_model:%s:%s", adapter ? "adapter" : "finetune", base);
    sput(&b, "- ");
    syaml(&b, tag);
    sput(&b, "\n- loratune\n- %s\n", !strcmp(method, "full") ? "full-fine-tuning" : method);
    if (adapter && strcmp(method, "lora")) sput(&b, "- lora\n");
    sput(&b, "- transformers\n");
    size_t i;
    json_t *d;
    int any = 0;
    json_array_foreach(data, i, d) if (!strcmp(jstr(d, "role", ""), "train")) {
        if (!any++) sput(&b, "datasets:\n");
        const char *p = jstr(d, "dataset", jstr(d, "path", "")), *slash = strrchr(p, '/');
        sput(&b, "- ");
        syaml(&b, json_object_get(d, "dataset") ? p : slash ? slash + 1 : p);
        sput(&b, "\n");
    }
    sput(&b, "---\n\n");
    /* what it is */
    const char *out = jstr(json_object_get(rec, "args"), "out", "model"), *nm = strrchr(out, '/');
    sput(&b, "# %s\n\n", nm && nm[1] ? nm + 1 : out);
    if (adapter)
        sput(&b,
             "A %s adapter in the PEFT format (`adapter_config.json` + `adapter_model.safetensors`) for the base model "
             "`%s`, trained with libloratune %s (`loratune %s`). Load it with "
             "`peft.PeftModel.from_pretrained(base_model, this_directory)`.\n\n",
             !strcmp(method, "qlora")  ? "QLoRA"
             : !strcmp(method, "dora") ? "DoRA"
                                       : "LoRA",
             base, jstr(rec, "loratune_version", "?"), jstr(rec, "command", "train"));
    else
        sput(&b,
             "A Hugging Face model directory (`config.json` + safetensors): `%s` %s with libloratune %s. Load it with "
             "`transformers.AutoModelForCausalLM.from_pretrained(this_directory)`.\n\n",
             base, !strcmp(kind, "full") ? "fine-tuned in full" : "with a fine-tuned adapter merged into it",
             jstr(rec, "loratune_version", "?"));
    /* method */
    sput(&b, "## Method and hyperparameters\n\n| setting | value |\n|---|---|\n");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)set, k, v) {
        if (!strcmp(k, "base_model")) continue;
        sput(&b, "| %s | ", k);
        sval(&b, v);
        sput(&b, " |\n");
    }
    sput(&b, "\nEvery setting is in `training_args.json`; `loratune train --config training_args.json` runs the "
             "same training again (bit for bit on the same CPU, thread count and data files).\n\n");
    /* data */
    sput(&b, "## Training data\n\n| role | file | sha256 | rows | rows left out | tokens | tokens with loss |\n"
             "|---|---|---|---|---|---|---|\n");
    json_array_foreach(data, i, d) {
        sput(&b, "| %s | `", jstr(d, "role", ""));
        scell(&b, jstr(d, "path", ""));
        sput(&b, "` | `%s` | ", jstr(d, "sha256", ""));
        sval(&b, json_object_get(d, "rows"));
        sput(&b, " | ");
        sval(&b, json_object_get(d, "rows_left_out"));
        sput(&b, " | ");
        sval(&b, json_object_get(d, "tokens"));
        sput(&b, " | ");
        sval(&b, json_object_get(d, "tokens_with_loss"));
        sput(&b, " |\n");
    }
    json_array_foreach(data, i, d) {
        json_t *c = json_object_get(d, "data_check");
        if (!c) continue;
        sput(&b, "\n`loratune data check` of `");
        scell(&b, jstr(d, "path", ""));
        sput(&b, "`: %lld rows, %lld exact duplicates, %lld near-duplicate pairs",
             (long long)json_integer_value(json_object_get(c, "rows")),
             (long long)json_integer_value(json_object_get(c, "exact_duplicates")),
             (long long)json_integer_value(json_object_get(c, "near_duplicate_pairs")));
        if (json_object_get(c, "eval_overlap_rows"))
            sput(&b, ", %lld rows sharing a %lld-word n-gram with the eval data",
                 (long long)json_integer_value(json_object_get(c, "eval_overlap_rows")),
                 (long long)json_integer_value(json_object_get(c, "ngram")));
        if (json_object_get(c, "rows_over_seq"))
            sput(&b, ", %lld rows longer than %lld tokens (truncated)",
                 (long long)json_integer_value(json_object_get(c, "rows_over_seq")),
                 (long long)json_integer_value(json_object_get(c, "seq")));
        json_t *pl = json_object_get(c, "problems");
        sput(&b, ", %zu template or schema problems", json_array_size(pl));
        sput(&b, json_array_size(pl) ? ":\n\n" : ".\n");
        for (size_t q = 0; q < json_array_size(pl) && q < 10; q++) {
            sput(&b, "- ");
            scell(&b, json_string_value(json_array_get(pl, q)));
            sput(&b, "\n");
        }
        if (json_array_size(pl) > 10) sput(&b, "- ... (%zu more)\n", json_array_size(pl) - 10);
    }
    json_t *canary = json_object_get(rec, "canary");
    if (canary)
        sput(&b,
             "\nA random canary string (format `%s`) was inserted %lld times into the training rows, to measure "
             "memorisation: `loratune eval --compare --run DIR` reports its exposure. The string itself is in "
             "`training_args.json`.\n",
             jstr(canary, "format", ""), (long long)json_integer_value(json_object_get(canary, "repeat")));
    /* evaluation */
    sput(&b, "\n## Evaluation\n\n| metric | value |\n|---|---|\n");
    json_object_foreach((json_t *)res, k, v) {
        if (!strcmp(k, "loss_curve")) continue;
        sput(&b, "| %s | ", k);
        sval(&b, v);
        sput(&b, " |\n");
    }
    /* train's card is in the run's result directory (DIR/adapter, DIR/model); loss.svg is in DIR */
    if (json_is_true(json_object_get(res, "loss_curve")) && strcmp(kind, "merged"))
        sput(&b, "\n![loss curve](../loss.svg)\n");
    /* compute */
    sput(&b, "\n## Compute\n\n| | |\n|---|---|\n");
    json_object_foreach((json_t *)cmp, k, v) {
        sput(&b, "| %s | ", k);
        sval(&b, v);
        sput(&b, " |\n");
    }
    /* for the author */
    sput(&b, "\n## Intended use\n\n_To be completed by the author: what this model is for, and what it is not for._\n"
             "\n## Limitations\n\n_To be completed by the author: known failure modes, languages and domains it was "
             "not trained on, evaluation gaps._\n"
             "\n## Bias, risks and licence\n\n_To be completed by the author: risks of the training data and of the "
             "use, the licence of the base model and of the data._\n");
    sput(&b, "\n## Software\n\nlibloratune %s, `loratune %s`. Record: `training_args.json` (format %s).\n",
         jstr(rec, "loratune_version", "?"), jstr(rec, "command", "train"), jstr(rec, "format", "?"));
    return b.p;
}

int record_attach(const char *cmd, lt_adapter *ad, json_t *rec, const char *kind, const char *extra_name,
                  const char *extra_text) {
    char *card = record_card(rec, kind), *args = json_dumps(rec, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    int rc = 0;
    if (!card || !args) rc = fail(cmd, "out of memory");
    else {
        size_t n = strlen(args);
        char *a2 = realloc(args, n + 2);
        if (a2) {
            args = a2;
            strcat(args, "\n");
        }
        const char *names[] = {"README.md", "training_args.json", extra_name}, *texts[] = {card, args, extra_text};
        if (lt_adapter_set_save_files(ad, names, texts, extra_name ? 3 : 2) != LT_OK)
            rc = fail(cmd, "%s", lt_adapter_last_error(ad));
    }
    free(card);
    free(args);
    return rc;
}

/* ---- --config ------------------------------------------------------------------------------------------- */

void config_argv_free(int argc, char **argv) {
    if (!argv) return;
    for (int i = 0; i < argc; i++) free(argv[i]);
    free(argv);
}

int config_argv(const char *cmd, int argc, char **argv, int *new_argc, char ***new_argv) {
    *new_argv = NULL;
    *new_argc = 0;
    const char *file = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) file = argv[i + 1];
    if (!file) return 0;
    json_error_t je;
    json_t *rec = json_load_file(file, 0, &je), *args = rec ? json_object_get(rec, "args") : NULL;
    if (!json_is_object(args)) {
        json_decref(rec);
        return fail(cmd, "--config %s: %s", file,
                    rec ? "no \"args\" object (a training_args.json is expected)" : je.text);
    }
    size_t cap = 2 * json_object_size(args) + (size_t)argc + 2;
    char **nv = calloc(cap, sizeof *nv);
    int n = 0;
    if (!nv) {
        json_decref(rec);
        return fail(cmd, "out of memory");
    }
    nv[n++] = strdup(argv[0]);
    const char *k;
    json_t *v;
    json_object_foreach(args, k, v) {
        char opt[256];
        snprintf(opt, sizeof opt, "--%s", k);
        if (json_is_true(v)) nv[n++] = strdup(opt);
        else if (json_is_string(v)) {
            nv[n++] = strdup(opt);
            nv[n++] = strdup(json_string_value(v));
        } else if (!json_is_false(v)) {
            config_argv_free(n, nv);
            json_decref(rec);
            return fail(cmd, "--config %s: \"args\".%s must be a string or true", file, k);
        }
    }
    for (int i = 1; i < argc; i++) { /* the command line after: its values win */
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        nv[n++] = strdup(argv[i]);
    }
    json_decref(rec);
    *new_argc = n;
    *new_argv = nv;
    return 0;
}

/* ---- the loss curve ---------------------------------------------------------------------------------- */

void loss_svg(const char *path, const double *steps, const double *loss, long long n, const double *eval_step,
              const double *eval_loss, int n_eval) {
    if (n < 1 && n_eval < 1) return;
    double lo = INFINITY, hi = -INFINITY, s0 = INFINITY, s1 = -INFINITY;
    for (long long i = 0; i < n; i++) {
        if (isfinite(loss[i])) lo = fmin(lo, loss[i]), hi = fmax(hi, loss[i]);
        s0 = fmin(s0, steps[i]), s1 = fmax(s1, steps[i]);
    }
    for (int i = 0; i < n_eval; i++) {
        if (isfinite(eval_loss[i])) lo = fmin(lo, eval_loss[i]), hi = fmax(hi, eval_loss[i]);
        s0 = fmin(s0, eval_step[i]), s1 = fmax(s1, eval_step[i]);
    }
    if (!isfinite(lo)) return;
    if (hi - lo < 1e-9) hi += 0.5, lo -= 0.5;
    if (s1 - s0 < 1e-9) s1 = s0 + 1;
    char tmp[4300];
    FILE *f = atomic_fopen(path, tmp, sizeof tmp);
    if (!f) return;
    const double W = 640, Hh = 360, x0 = 60, y0 = 20, pw = 560, ph = 290;
#define PX(s) (x0 + pw * (((s)-s0) / (s1 - s0)))
#define PY(v) (y0 + ph * (1.0 - ((v)-lo) / (hi - lo)))
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, Hh);
    fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#999\"/>\n", x0, y0, pw, ph);
    for (int k = 0; k <= 4; k++) {
        double v = lo + (hi - lo) * k / 4.0;
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3f</text>\n", x0 - 4, PY(v) + 4, v);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">optimizer step (%g..%g)</text>\n", x0 + pw / 2, Hh - 10,
            s0, s1);
    if (n > 0) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
        for (long long i = 0; i < n; i++)
            if (isfinite(loss[i])) fprintf(f, "%.1f,%.1f ", PX(steps[i]), PY(loss[i]));
        fprintf(f, "\"/>\n");
    }
    for (int i = 0; i < n_eval; i++)
        if (isfinite(eval_loss[i]))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/>\n", PX(eval_step[i]),
                    PY(eval_loss[i]));
    fprintf(f,
            "<text x=\"%g\" y=\"14\" fill=\"#1f77b4\">train loss</text><text x=\"%g\" y=\"14\" fill=\"#d62728\">"
            "eval loss</text>\n</svg>\n",
            x0, x0 + 90);
#undef PX
#undef PY
    (void)atomic_fclose(f, tmp, path); /* the plot is a convenience: a run goes on without it */
}
