/* quantize.c - `loratune quantize`: a model saved in the bitsandbytes 4-bit layout. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int cmd_quantize(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1},        {"out", 1},       {"format", 1},
                                    {"double-quant", 0}, {"blocksize", 1}, {"threads", 1}};
    opts o;
    if (opts_parse(&o, spec, 6, argc, argv, "quantize")) return 2;
    const char *mdir = opt_str(&o, "model", NULL), *out = opt_str(&o, "out", NULL);
    if (!mdir || !out) return fail("quantize", "--model DIR and --out DIR are required");
    lt_quant_params qp;
    if (quant_options("quantize", &o, &qp)) return 2;
    qp.double_quant = opt_flag(&o, "double-quant"); /* as bitsandbytes: off unless asked */
    long long threads;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads)) return 2;
    lt_context *ctx;
    lt_model *m;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    quant_model_params(&qp, &mp); /* quantized while loading, one tensor at a time */
    if (open_model_params("quantize", mdir, (int)threads, NULL, &mp, &ctx, &m)) return 1;
    int rc = 0;
    lt_model_info info = {.size = sizeof info};
    if (lt_model_save_quantized(m, out) != LT_OK) {
        rc = fail("quantize", "%s", lt_model_last_error(m));
    } else {
        lt_model_get_info(m, &info);
        printf("quantized %s -> %s: %lld projection parameters in %s%s, %.3f bits/parameter\n", mdir, out,
               (long long)info.quantized_params, opt_str(&o, "format", "nf4"), qp.double_quant ? " + double quant" : "",
               8.0 * (double)info.quantized_bytes / (double)info.quantized_params);
    }
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
