/* merge.c - `loratune merge`: an adapter merged into its base model, written as a Hugging Face model. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/runrecord.h"

/* The merged model's card and record: the adapter's run record (training_args.json) when it has one, with
 * the merge noted; written with the weights. */
static int merge_record(lt_adapter *ad, const char *mdir, const char *adir, int dequantized) {
    char path[4200];
    snprintf(path, sizeof path, "%s/training_args.json", adir);
    json_t *rec = json_load_file(path, 0, NULL);
    if (!json_is_object(rec)) {
        json_decref(rec);
        rec = record_new("merge");
        record_set(rec, "settings", "base_model", json_string(mdir));
        record_set(rec, "settings", "method", json_string("lora"));
    }
    record_set(rec, "merge", "adapter", json_string(adir));
    record_set(rec, "merge", "base_model_directory", json_string(mdir));
    record_set(rec, "merge", "dtype", json_string("float32"));
    record_set(rec, "merge", "into_dequantized_base", json_boolean(dequantized));
    int rc = record_attach("merge", ad, rec, "merged", NULL, NULL);
    json_decref(rec);
    return rc;
}

int cmd_merge(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1},        {"adapter", 1},         {"out", 1},
                                    {"max-shard-mb", 1}, {"threads", 1},         {"quant", 1},
                                    {"double-quant", 0}, {"no-double-quant", 0}, {"quant-blocksize", 1}};
    opts o;
    if (opts_parse(&o, spec, 9, argc, argv, "merge")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *adir = opt_str(&o, "adapter", NULL),
               *out = opt_str(&o, "out", NULL);
    if (!mdir || !adir || !out) return fail("merge", "--model DIR, --adapter DIR and --out DIR are required");
    long long shard_mb, threads;
    if (opt_int(&o, "max-shard-mb", 2048, 1, 1 << 30, &shard_mb) || opt_int(&o, "threads", 0, 0, 1024, &threads))
        return 2;
    lt_context *ctx;
    lt_model *m;
    /* a QLoRA adapter was trained on the quantized base: merge into the same dequantized weights.
     * --quant says how; without it the adapter's quantization.json (written by train) does. */
    lt_quant_params qp;
    int quantize = 0;
    if (opt_str(&o, "quant", NULL)) {
        if (quant_options("merge", &o, &qp)) return 2;
        quantize = 1;
    } else {
        quantize = read_quant_note(adir, &qp);
    }
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    if (quantize) quant_model_params(&qp, &mp);
    if (open_model_params("merge", mdir, (int)threads, NULL, &mp, &ctx, &m)) return 1;
    lt_adapter *ad = NULL;
    int rc = 0;
    if (lt_adapter_load(m, adir, &ad) != LT_OK) rc = fail("merge", "%s", lt_last_error());
    else if (merge_record(ad, mdir, adir, quantize)) rc = 1;
    else if (lt_adapter_export_merged(ad, out, shard_mb << 20) != LT_OK)
        rc = fail("merge", "%s", lt_adapter_last_error(ad));
    else printf("merged %s%s + %s -> %s (f32)\n", mdir, quantize ? " (dequantized)" : "", adir, out);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
