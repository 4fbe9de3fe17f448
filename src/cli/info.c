/* info.c - `loratune info`: architecture, shapes and parameters of a model. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

int cmd_info(int argc, char **argv) {
    static const opt_spec spec[] = {{"model", 1}, {"threads", 1}, {"json", 0}};
    opts o;
    if (opts_parse(&o, spec, 3, argc, argv, "info")) return 2;
    const char *dir = opt_str(&o, "model", NULL);
    if (!dir) return fail("info", "--model DIR is required");
    lt_context *ctx;
    lt_model *m;
    if (open_model("info", dir, 1, NULL, &ctx, &m)) return 1;
    lt_model_info in = {.size = sizeof in};
    lt_model_get_info(m, &in);
    if (opt_flag(&o, "json")) {
        printf("{\"architecture\": \"%s\", \"dtype\": \"%s\", \"vocab_size\": %lld, \"hidden_size\": %lld, "
               "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
               "\"num_key_value_heads\": %lld, \"head_dim\": %lld, \"tie_word_embeddings\": %s, "
               "\"parameters\": %lld, \"weight_bytes\": %lld, \"family\": \"%s\", \"sliding_window\": %lld, "
               "\"sliding_layers\": %d}\n",
               in.architecture, in.dtype, (long long)in.vocab_size, (long long)in.hidden_size,
               (long long)in.intermediate_size, (long long)in.n_layers, (long long)in.n_heads, (long long)in.n_kv_heads,
               (long long)in.head_dim, in.tied_embeddings ? "true" : "false", (long long)in.n_params,
               (long long)in.weight_bytes, in.family, (long long)in.sliding_window, (int)in.n_sliding_layers);
    } else {
        printf("model          %s\n", dir);
        printf("architecture   %s (%s family)\n", in.architecture, in.family);
        printf("stored dtype   %s (computed in f32)\n", in.dtype);
        printf("vocabulary     %lld\n", (long long)in.vocab_size);
        printf("hidden         %lld   intermediate %lld\n", (long long)in.hidden_size, (long long)in.intermediate_size);
        printf("layers         %lld\n", (long long)in.n_layers);
        printf("heads          %lld query, %lld key/value (head_dim %lld)%s\n", (long long)in.n_heads,
               (long long)in.n_kv_heads, (long long)in.head_dim, in.n_kv_heads < in.n_heads ? " GQA" : "");
        printf("rope_theta     %g   rms_norm_eps %g\n", in.rope_theta, in.rms_norm_eps);
        printf("embeddings     %s\n", in.tied_embeddings ? "tied (lm_head = embed_tokens)" : "separate lm_head");
        if (in.sliding_window > 0)
            printf("attention      sliding window %lld in %d of %lld layers\n", (long long)in.sliding_window,
                   (int)in.n_sliding_layers, (long long)in.n_layers);
        printf("parameters     %lld (%.2f M)\n", (long long)in.n_params, in.n_params / 1e6);
        printf("memory         %.1f MiB of f32 weights\n", in.weight_bytes / 1048576.0);
    }
    lt_model_free(m);
    lt_context_free(ctx);
    return 0;
}
