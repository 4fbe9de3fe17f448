/* export.c - `loratune export`: a model (merged with an adapter or not) or a LoRA adapter as a GGUF file for
 * llama.cpp and Ollama, and with --ollama a Modelfile beside it. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "loratune_experimental.h"

static int parse_type(const char *s, lt_gguf_dtype *out) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8_0"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *out = (lt_gguf_dtype)i;
            return 0;
        }
    return -1;
}

/* the Modelfile goes next to the GGUF: FROM names the GGUF by its file name (Ollama resolves it there) */
static int write_modelfile(const lt_tokenizer *tok, const char *from, const char *adapter, const char *gguf_path) {
    const char *text = NULL, *warning = NULL;
    if (lt_tokenizer_ollama_modelfile((lt_tokenizer *)tok, from, adapter, &text, &warning) != LT_OK)
        return fail("export", "Modelfile: %s", lt_tokenizer_last_error(tok));
    char path[4200];
    const char *slash = strrchr(gguf_path, '/');
    snprintf(path, sizeof path, "%.*sModelfile", slash ? (int)(slash - gguf_path + 1) : 0, gguf_path);
    char tmp[4300];
    FILE *f = atomic_fopen(path, tmp, sizeof tmp);
    if (!f) return fail("export", "cannot write %s", path);
    fputs(text, f); /* a failed write shows in atomic_fclose */
    if (atomic_fclose(f, tmp, path)) return fail("export", "cannot write %s", path);
    if (warning) fprintf(stderr, "loratune export: warning: %s\n", warning);
    printf("wrote %s\n", path);
    return 0;
}

int cmd_export(int argc, char **argv) {
    static const opt_spec spec[] = {{"format", 1},
                                    {"model", 1},
                                    {"adapter", 1},
                                    {"out", 1},
                                    {"type", 1},
                                    {"tokenizer", 1},
                                    {"name", 1},
                                    {"ollama", 0},
                                    {"threads", 1},
                                    {"quant", 1},
                                    {"double-quant", 0},
                                    {"no-double-quant", 0},
                                    {"quant-blocksize", 1},
                                    {"base-gguf", 1},
                                    {"allow-approximate", 0}};
    opts o;
    if (opts_parse(&o, spec, 15, argc, argv, "export")) return 2;
    const char *format = opt_str(&o, "format", "gguf"), *mdir = opt_str(&o, "model", NULL),
               *adir = opt_str(&o, "adapter", NULL), *out = opt_str(&o, "out", NULL);
    const int lora = !strcmp(format, "gguf-lora");
    if (!lora && strcmp(format, "gguf")) return fail("export", "--format must be gguf or gguf-lora, not %s", format);
    if (!mdir || !out || (lora && !adir))
        return fail("export", "--model DIR and --out FILE.gguf are required (gguf-lora: and --adapter DIR)");
    lt_gguf_params gp;
    lt_gguf_params_init(&gp, sizeof gp);
    if (parse_type(opt_str(&o, "type", lora ? "f32" : "f16"), &gp.dtype))
        return fail("export", "--type must be f32, f16, bf16 or q8_0");
    gp.name = opt_str(&o, "name", NULL);
    gp.allow_approximate = opt_flag(&o, "allow-approximate");
    long long threads;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads)) return 2;
    /* a QLoRA adapter was trained on the quantized base: export the same dequantized weights (see merge) */
    lt_quant_params qp;
    int quantize = 0;
    if (opt_str(&o, "quant", NULL)) {
        if (quant_options("export", &o, &qp)) return 2;
        quantize = 1;
    } else if (adir) {
        quantize = read_quant_note(adir, &qp);
    }
    lt_context *ctx;
    lt_model *m;
    if (open_model("export", mdir, (int)threads, NULL, &ctx, &m)) return 1;
    lt_tokenizer *tok = NULL;
    lt_adapter *ad = NULL;
    int rc = 0;
    const char *tdir = opt_str(&o, "tokenizer", NULL);
    if (tdir || opt_flag(&o, "ollama")) {
        if (!(tok = open_tokenizer("export", tdir ? tdir : mdir))) rc = 1;
        gp.tokenizer = tok;
    }
    if (!rc && quantize && lt_model_quantize(m, &qp) != LT_OK) rc = fail("export", "%s", lt_model_last_error(m));
    if (!rc && adir && lt_adapter_load(m, adir, &ad) != LT_OK) rc = fail("export", "%s", lt_last_error());
    if (!rc && lora) {
        if (lt_adapter_export_gguf(ad, out, &gp) != LT_OK) rc = fail("export", "%s", lt_adapter_last_error(ad));
        else
            printf("wrote %s (GGUF LoRA of %s for the GGUF of %s%s)\n", out, adir, mdir,
                   quantize ? ", dequantized: export it with the same --quant" : "");
    } else if (!rc) {
        if (lt_model_export_gguf(m, ad, out, &gp) != LT_OK) rc = fail("export", "%s", lt_model_last_error(m));
        else
            printf("wrote %s (GGUF %s%s%s%s)\n", out, opt_str(&o, "type", "f16"), adir ? ", merged with " : "",
                   adir ? adir : "", quantize ? ", base dequantized" : "");
    }
    if (!rc && opt_flag(&o, "ollama")) {
        /* FROM: the GGUF written (a merged or base model), or for an adapter the base model's GGUF, which
         * --base-gguf names (export it first with --format gguf) */
        const char *slash = strrchr(out, '/');
        const char *base = lora ? opt_str(&o, "base-gguf", NULL) : NULL;
        char from[4200], adapter[4200];
        if (lora && !base) rc = fail("export", "--ollama with gguf-lora needs --base-gguf FILE (the base's GGUF)");
        else {
            snprintf(from, sizeof from, "./%s", lora ? base : (slash ? slash + 1 : out));
            snprintf(adapter, sizeof adapter, "./%s", slash ? slash + 1 : out);
            rc = write_modelfile(tok, from, lora ? adapter : NULL, out);
        }
    }
    lt_adapter_free(ad);
    lt_tokenizer_free(tok);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
