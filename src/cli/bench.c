/* bench.c - `loratune bench`: a training step of the bench-s model (docs/BENCHMARKS.md). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <unistd.h>

#include "cli/cli.h"
#include "loratune_experimental.h"

/* ---- bench -------------------------------------------------------------------------------------- */

/* bench-s (docs/spec/performance.md): Llama, vocab 32000, hidden 512, intermediate 1376, 8 layers,
 * 8 heads, 8 kv heads, rope_theta 500000, f32; LoRA r=16 alpha=32 on all 7 projections; AdamW;
 * batch 4 x 256. */
static const char bench_s_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32000,"
    " \"hidden_size\": 512, \"intermediate_size\": 1376, \"num_hidden_layers\": 8,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"rope_theta\": 500000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 2048, \"tie_word_embeddings\": false}";

/* moe-s (docs/BENCHMARKS.md): Qwen3-MoE, vocab 32000, hidden 512, 8 layers, 8 heads of 64, 32 experts of
 * width 256, top-4 (renormalised); LoRA r=16 on q, k, v, o and every expert's gate|up and down. */
static const char moe_s_config[] =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"vocab_size\": 32000,"
    " \"hidden_size\": 512, \"intermediate_size\": 1376, \"moe_intermediate_size\": 256, \"num_hidden_layers\": 8,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"head_dim\": 64, \"num_experts\": 32,"
    " \"num_experts_per_tok\": 4, \"norm_topk_prob\": true, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6,"
    " \"max_position_embeddings\": 2048, \"tie_word_embeddings\": false}";

/* resident bytes of this process now (/proc/self/statm), 0 where unknown; freed heap memory is handed
 * back to the system first so that it does not count */
static double resident_bytes(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    FILE *f = fopen("/proc/self/statm", "r");
    long long size = 0, res = 0;
    if (!f) return 0;
    if (fscanf(f, "%lld %lld", &size, &res) != 2) res = 0;
    fclose(f);
    return (double)res * (double)sysconf(_SC_PAGESIZE);
}

/* CPU seconds of this process (user + system, every thread): with one thread on a machine busy with
 * other jobs, tokens per CPU second is what the step costs, whatever share of a core it got. */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Full fine-tuning reads its own copies of the weights: measured like a real run, the base is a model
 * directory mapped from disk (its pages released once copied), not anonymous memory. The random model
 * is written to a temporary directory (a full adapter saves exactly that) and loaded back; the files
 * are unlinked at once (the mapping keeps them readable). */
static int reload_from_disk(lt_context *ctx, lt_model **m) {
    char dir[] = "/tmp/loratune-bench-XXXXXX";
    if (!mkdtemp(dir)) return fail("bench", "cannot create a temporary directory: %s", strerror(errno));
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    lt_adapter *a = NULL;
    int rc = 0;
    if (lt_adapter_create(*m, &ap, &a) != LT_OK) rc = fail("bench", "%s", lt_last_error());
    else if (lt_adapter_save(a, dir) != LT_OK) rc = fail("bench", "%s", lt_adapter_last_error(a));
    lt_adapter_free(a);
    if (rc == 0) {
        lt_model_free(*m);
        *m = NULL;
        malloc_trim(0);
        if (lt_model_load(ctx, dir, NULL, m) != LT_OK) rc = fail("bench", "%s", lt_last_error());
    }
    static const char *const files[] = {"config.json", "model.safetensors", "model.safetensors.index.json"};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    static const opt_spec spec[] = {{"config", 1}, {"threads", 1},         {"json", 0},       {"steps", 1},
                                    {"warmup", 1}, {"checkpointing", 1},   {"backend", 1},    {"method", 1},
                                    {"quant", 1},  {"no-double-quant", 0}, {"base-dtype", 1}, {"optimizer", 1}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "bench")) return 2;
    const char *method = opt_str(&o, "method", "lora");
    if (strcmp(method, "lora") && strcmp(method, "qlora") && strcmp(method, "full"))
        return fail("bench", "--method must be lora, qlora or full");
    const int full = !strcmp(method, "full");
    const int qlora = !strcmp(method, "qlora");
    lt_quant_params qp;
    if (quant_options("bench", &o, &qp)) return 2;
    int base_dtype;
    if (opt_base_dtype(&o, "bench", &base_dtype)) return 2;
    const char *cfg = opt_str(&o, "config", "bench-s");
    const int moe = !strcmp(cfg, "moe-s");
    if (strcmp(cfg, "bench-s") && !moe)
        return fail("bench", "unknown --config \"%s\" (this build knows bench-s, moe-s)", cfg);
    if (moe && (full || qlora || base_dtype != LT_BASE_F32))
        return fail("bench", "--config moe-s runs LoRA on an f32 base only");
    long long threads, steps, warm;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "steps", 5, 1, 100000, &steps) ||
        opt_int(&o, "warmup", 2, 0, 1000, &warm))
        return 2;
    const char *ck = opt_str(&o, "checkpointing", "off");
    if (strcmp(ck, "on") && strcmp(ck, "off")) return fail("bench", "--checkpointing must be on or off");
    const int B = 4, T = 256, V = 32000;
    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = opt_str(&o, "backend", "cpu");
    cp.n_threads = (int)threads;
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    int rc = 0;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = base_dtype;
    if (lt_context_create(&cp, &ctx) != LT_OK ||
        lt_model_create_random_params(ctx, moe ? moe_s_config : bench_s_config, 1, 0.02f, &mp, &m) != LT_OK) {
        rc = fail("bench", "%s", lt_last_error());
        goto done;
    }
    if (full && base_dtype == LT_BASE_F32 && (rc = reload_from_disk(ctx, &m)) != 0) goto done;
    /* QLoRA: the same random model with its projections quantized (NF4 + double quant by default).
     * The memory of the quantized weights is measured: resident memory after quantizing minus before,
     * plus the f32 projections quantizing released (large blocks go back to the system). */
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(m, &info);
    double measured_bits = 32.0;
    if (qlora) {
        const double r0 = resident_bytes();
        if (lt_model_quantize(m, &qp) != LT_OK) {
            rc = fail("bench", "%s", lt_model_last_error(m));
            goto done;
        }
        const double r1 = resident_bytes();
        lt_model_get_info(m, &info);
        const double n_q = (double)info.quantized_params; /* their f32 copies (4 bytes each) were released */
        measured_bits = 8.0 * (r1 - r0 + 4.0 * n_q) / n_q;
    }
    const double qbits =
        info.quantized_params ? 8.0 * (double)info.quantized_bytes / (double)info.quantized_params : 32.0;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 16;
    ap.alpha = 32;
    ap.targets = moe ? LT_TARGET_Q | LT_TARGET_K | LT_TARGET_V | LT_TARGET_O | LT_TARGET_EXPERTS : LT_TARGET_ALL;
    ap.full_finetune = full; /* every weight trainable: fp32 copies, gradients, optimizer state */
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 1e-4f;
    const char *optname = opt_str(&o, "optimizer", "adamw");
    if (!strcmp(optname, "adamw8bit")) op.kind = LT_OPT_ADAMW8BIT;
    else if (strcmp(optname, "adamw")) {
        rc = fail("bench", "--optimizer must be adamw or adamw8bit");
        goto done;
    }
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.gradient_checkpointing = !strcmp(ck, "on");
    /* memory per trainable parameter: resident growth from creating the adapter (weights, gradients),
     * the optimizer (its state) and the trainer, over the trainable parameter count */
    const double r_ad0 = resident_bytes();
    if (lt_adapter_create(m, &ap, &ad) != LT_OK || lt_optimizer_create(ad, &op, &opt) != LT_OK ||
        lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("bench", "%s", lt_last_error());
        goto done;
    }
    const double n_train = (double)lt_adapter_n_params(ad);
    const double bytes_per_param = (resident_bytes() - r_ad0) / n_train;
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    uint64_t s = 12345;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % V);
    }
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = B;
    b.seq_len = T;
    b.input_ids = ids;
    double t0 = 0, c0 = 0, loss = 0;
    for (long long i = 0; i < warm + steps; i++) {
        if (i == warm) {
            t0 = now_seconds();
            c0 = cpu_seconds();
        }
        lt_step_result r = {.size = sizeof r};
        if (lt_trainer_step(tr, &b, &r) != LT_OK) {
            rc = fail("bench", "%s", lt_trainer_last_error(tr));
            break;
        }
        loss = r.loss;
    }
    double dt = now_seconds() - t0, dc = cpu_seconds() - c0;
    free(ids);
    if (rc == 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double tps = (double)steps * B * T / dt, rss = ru.ru_maxrss / 1024.0;
        if (opt_flag(&o, "json"))
            printf("{\"config\": \"%s\", \"method\": \"%s\", \"threads\": %d, \"checkpointing\": \"%s\", "
                   "\"base_dtype\": \"%s\", \"steps\": %lld, \"loss\": %.6f, \"tokens_per_s\": %.1f, "
                   "\"tokens_per_cpu_s\": %.1f, \"peak_rss_mb\": %.1f, \"weight_bytes\": %lld, "
                   "\"projection_bits_per_param\": %.4f, \"measured_projection_bits_per_param\": %.4f, "
                   "\"optimizer\": \"%s\", \"trainable_params\": %.0f, \"bytes_per_trainable_param\": %.2f}\n",
                   cfg, method, (int)threads, ck, base_dtype == LT_BASE_BF16 ? "bf16" : "f32", steps, loss, tps,
                   (double)steps * B * T / dc, rss, (long long)info.weight_bytes, qbits, measured_bits, optname,
                   n_train, bytes_per_param);
        else
            printf(
                "bench-s (%s, base %s): %.1f training tokens/s (%lld steps of %d tokens, %.3f s/step), peak RSS "
                "%.1f MiB, checkpointing %s, weights %.1f MiB, projections %.3f bits/param (measured resident: %.3f), "
                "%.0f trainable parameters at %.2f bytes each (%s)\n",
                method, base_dtype == LT_BASE_BF16 ? "bf16" : "f32", tps, steps, B * T, dt / steps, rss, ck,
                info.weight_bytes / 1048576.0, qbits, measured_bits, n_train, bytes_per_param, optname);
    }
done:
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
