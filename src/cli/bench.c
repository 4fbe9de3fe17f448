/* bench.c - `loratune bench`: training steps of a benchmark model, with the memory they take
 * (docs/BENCHMARKS.md). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

/* ---- the benchmark models (random weights made by the library) ------------------------------------ */

/* bench-s (docs/spec/performance.md): Llama, vocab 32000, hidden 512, intermediate 1376, 8 layers,
 * 8 heads, 8 kv heads, rope_theta 500000, f32; LoRA r=16 alpha=32 on all 7 projections; AdamW;
 * batch 4 x 256. */
static const char bench_s_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32000,"
    " \"hidden_size\": 512, \"intermediate_size\": 1376, \"num_hidden_layers\": 8,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"rope_theta\": 500000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 2048, \"tie_word_embeddings\": false}";
/* bench-1b: the shapes of Llama-3.2-1B (tied embeddings, llama3 RoPE); batch 1 x 1024. */
static const char bench_1b_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 128256,"
    " \"hidden_size\": 2048, \"intermediate_size\": 8192, \"num_hidden_layers\": 16,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"head_dim\": 64, \"rope_theta\": 500000.0,"
    " \"rope_scaling\": {\"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 131072, \"tie_word_embeddings\": true}";
/* bench-8b: the shapes of Llama-3-8B (untied); batch 1 x 1024. */
static const char bench_8b_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 128256,"
    " \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"rope_theta\": 500000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 8192, \"tie_word_embeddings\": false}";

/* moe-s (docs/BENCHMARKS.md): Qwen3-MoE, vocab 32000, hidden 512, 8 layers, 8 heads of 64, 32 experts of
 * width 256, top-4 (renormalised); LoRA r=16 on q, k, v, o and every expert's gate|up and down. */
static const char moe_s_config[] =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"vocab_size\": 32000,"
    " \"hidden_size\": 512, \"intermediate_size\": 1376, \"moe_intermediate_size\": 256, \"num_hidden_layers\": 8,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"head_dim\": 64, \"num_experts\": 32,"
    " \"num_experts_per_tok\": 4, \"norm_topk_prob\": true, \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6,"
    " \"max_position_embeddings\": 2048, \"tie_word_embeddings\": false}";

typedef struct bench_config {
    const char *name, *json;
    int B, T, checkpointing; /* defaults */
} bench_config;
static const bench_config configs[] = {{"bench-s", bench_s_config, 4, 256, 0},
                                       {"bench-1b", bench_1b_config, 1, 1024, 1},
                                       {"bench-8b", bench_8b_config, 1, 1024, 1},
                                       {"moe-s", moe_s_config, 4, 256, 0}};

/* ---- measuring ---------------------------------------------------------------------------------- */

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

/* peak resident bytes of this process so far (getrusage: ru_maxrss is in KiB on Linux) */
static double peak_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0;
}

/* CPU seconds of this process (user + system, every thread): with one thread on a machine busy with
 * other jobs, tokens per CPU second is what the step costs, whatever share of a core it got. */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* The weight files of a model directory (*.safetensors) with the page cache dropped first (clean pages
 * of files this process reads: no privilege needed), so a timing starts from the disk; with `read`,
 * also reads them through and returns the seconds that took (0 with read = 0), -1 on error. */
static double weight_files(const char *dir, int read_them, double *bytes) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    static char buf[1 << 24];
    double t0 = now_seconds(), n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        const size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ssize_t r;
        while (read_them && (r = read(fd, buf, sizeof buf)) > 0) n += (double)r;
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    closedir(d);
    if (bytes) *bytes = n;
    return read_them ? now_seconds() - t0 : 0;
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
        resident_bytes(); /* trims the heap */
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

static const char bench_usage[] =
    "usage: loratune bench [--config bench-s|bench-1b|bench-8b|moe-s] [--method lora|qlora|full] [options]\n"
    "  A training step of a Llama model of the config's shapes with random weights made by the library\n"
    "  (or --model DIR: a checkpoint of those shapes, with the time to load it against the time to read\n"
    "  its files), LoRA r=16 alpha=32 on all 7 projections, AdamW. Reports tokens/s and the memory it\n"
    "  took: peak RSS, the weights, the adapter with its optimizer state, the step (activations, workspace).\n"
    "  moe-s: a Qwen3-MoE (32 experts, top-4), LoRA or QLoRA on q, k, v, o and the experts (their frozen\n"
    "  weights in f32, bf16 or 4-bit like the projections).\n"
    "  --threads N (all cores) --steps N (5; 0: load and memory only) --warmup N (2) --json\n"
    "  --seq T --batch B            tokens per row, rows (bench-s 4 x 256; bench-1b, bench-8b 1 x 1024)\n"
    "  --checkpointing on|off       gradient checkpointing (bench-s off; bench-1b, bench-8b on)\n"
    "  --activation-memory MiB|all  with checkpointing: keep whole layers' activations within this budget\n"
    "                               instead of recomputing them (all: every layer; default 0)\n"
    "  --base-dtype f32|bf16        frozen weights (bf16: projections, experts, embeddings, LM head; with\n"
    "                               qlora, the 4-bit projections and experts multiplied in bf16)\n"
    "  --quant nf4|fp4|int8 --no-double-quant --quant-lm-head   (qlora: NF4 + double quantization)\n"
    "  --optimizer adamw|adamw8bit --backend cpu|cuda\n";

int cmd_bench(int argc, char **argv) {
    static const opt_spec spec[] = {
        {"config", 1},        {"threads", 1},       {"json", 0},   {"steps", 1}, {"warmup", 1},
        {"checkpointing", 1}, {"backend", 1},       {"method", 1}, {"quant", 1}, {"no-double-quant", 0},
        {"base-dtype", 1},    {"optimizer", 1},     {"seq", 1},    {"batch", 1}, {"activation-memory", 1},
        {"model", 1},         {"quant-lm-head", 0}, {"help", 0}};
    opts o;
    if (opts_parse(&o, spec, (int)(sizeof spec / sizeof *spec), argc, argv, "bench")) return 2;
    if (opt_flag(&o, "help")) {
        fputs(bench_usage, stdout);
        return 0;
    }
    const char *method = opt_str(&o, "method", "lora");
    if (strcmp(method, "lora") && strcmp(method, "qlora") && strcmp(method, "full"))
        return fail("bench", "--method must be lora, qlora or full");
    const int full = !strcmp(method, "full");
    const int qlora = !strcmp(method, "qlora");
    lt_quant_params qp;
    if (quant_options("bench", &o, &qp)) return 2;
    int base_dtype;
    if (opt_base_dtype(&o, "bench", &base_dtype)) return 2;
    const char *cfgname = opt_str(&o, "config", "bench-s");
    const bench_config *cfg = NULL;
    for (size_t i = 0; i < sizeof configs / sizeof *configs; i++)
        if (!strcmp(cfgname, configs[i].name)) cfg = &configs[i];
    if (!cfg) return fail("bench", "unknown --config \"%s\" (bench-s, bench-1b, bench-8b, moe-s)", cfgname);
    long long threads, steps, warm, B, T;
    if (opt_int(&o, "threads", 0, 0, 1024, &threads) || opt_int(&o, "steps", 5, 0, 100000, &steps) ||
        opt_int(&o, "warmup", 2, 0, 1000, &warm) || opt_int(&o, "batch", cfg->B, 1, 1 << 16, &B) ||
        opt_int(&o, "seq", cfg->T, 2, 1 << 20, &T))
        return 2;
    const int moe = !strcmp(cfg->name, "moe-s");
    if (moe && full) return fail("bench", "--config moe-s runs LoRA or QLoRA (--method full: bench-s, bench-1b)");
    const char *ck = opt_str(&o, "checkpointing", cfg->checkpointing ? "on" : "off");
    if (strcmp(ck, "on") && strcmp(ck, "off")) return fail("bench", "--checkpointing must be on or off");
    const char *am = opt_str(&o, "activation-memory", "0");
    long long keep_mb = 0;
    if (!strcmp(am, "all")) keep_mb = 1LL << 40;
    else if (opt_int(&o, "activation-memory", 0, 0, 1LL << 40, &keep_mb)) return 2;
    const char *mdir = opt_str(&o, "model", NULL);

    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = opt_str(&o, "backend", "cpu");
    cp.n_threads = (int)threads;
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    int32_t *ids = NULL;
    int rc = 0;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = base_dtype;
    if (qlora) { /* quantized while it is made or loaded, one tensor at a time */
        mp.quantization = qp.format;
        mp.double_quant = qp.double_quant;
        mp.quant_blocksize = qp.blocksize;
        mp.quantize_lm_head = opt_flag(&o, "quant-lm-head");
    } else if (opt_flag(&o, "quant-lm-head")) {
        return fail("bench", "--quant-lm-head goes with --method qlora");
    }
    if (lt_context_create(&cp, &ctx) != LT_OK) {
        rc = fail("bench", "%s", lt_last_error());
        goto done;
    }
    /* memory: the process before the model, the model, the adapter with its optimizer state, the step */
    const double r0 = resident_bytes();
    double read_s = 0, file_bytes = 0;
    if (mdir && weight_files(mdir, 0, NULL) < 0) {
        rc = fail("bench", "%s: cannot list the weight files", mdir);
        goto done;
    }
    if (mdir) { /* the time to read the files from the disk, then their pages dropped again for the load */
        read_s = weight_files(mdir, 1, &file_bytes);
        weight_files(mdir, 0, NULL);
    }
    const double t_load = now_seconds();
    lt_status st =
        mdir ? lt_model_load(ctx, mdir, &mp, &m) : lt_model_create_random_params(ctx, cfg->json, 1, 0.02f, &mp, &m);
    const double load_s = now_seconds() - t_load;
    if (st != LT_OK) {
        rc = fail("bench", "%s", lt_last_error());
        goto done;
    }
    const double load_peak = peak_bytes();
    if (full && base_dtype == LT_BASE_F32 && !mdir && (rc = reload_from_disk(ctx, &m)) != 0) goto done;
    lt_model_info info = {.size = sizeof info};
    lt_model_get_info(m, &info);
    if (info.vocab_size <= 0) {
        rc = fail("bench", "no model");
        goto done;
    }
    const double r1 = resident_bytes();
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
    tp.activation_memory = keep_mb * 1048576LL;
    if (lt_adapter_create(m, &ap, &ad) != LT_OK || lt_optimizer_create(ad, &op, &opt) != LT_OK ||
        lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("bench", "%s", lt_last_error());
        goto done;
    }
    const double r2 = resident_bytes();
    const double n_train = (double)lt_adapter_n_params(ad);
    const int V = (int)info.vocab_size;
    if (!(ids = malloc((size_t)B * T * sizeof *ids))) {
        rc = fail("bench", "out of memory");
        goto done;
    }
    uint64_t s = 12345;
    for (long long i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)V);
    }
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = (int)B;
    b.seq_len = (int)T;
    b.input_ids = ids;
    double t0 = now_seconds(), c0 = cpu_seconds(), loss = 0, g0_s = 0, g0_gflop = 0, g1_s = 0, g1_gflop = 0;
    if (!steps) warm = 0; /* --steps 0 measures the load and the memory before any step: no warm-up either */
    for (long long i = 0; i < warm + steps; i++) {
        if (i == warm) {
            t0 = now_seconds();
            c0 = cpu_seconds();
            lt_trainer_frozen_gemm_stats(tr, &g0_s, &g0_gflop);
        }
        lt_step_result r = {.size = sizeof r};
        if (lt_trainer_step(tr, &b, &r) != LT_OK) {
            rc = fail("bench", "%s", lt_trainer_last_error(tr));
            goto done;
        }
        loss = r.loss;
    }
    /* the frozen-weight products as the library timed them inside the timed steps (recomputation included):
     * their share of the step's time and their rate while they run (the kernel's rate in the step) */
    lt_trainer_frozen_gemm_stats(tr, &g1_s, &g1_gflop);
    const double gemm_s = g1_s - g0_s, gemm_gflop = g1_gflop - g0_gflop;
    /* --steps 0: the load (or the making) and the memory of the model, adapter and optimizer only */
    const double dt = steps ? now_seconds() - t0 : 1, dc = steps ? cpu_seconds() - c0 : 1,
                 tok = (double)steps * (double)(B * T);
    const double peak = peak_bytes(), MiB = 1048576.0;
    /* the parts of the peak: the process before the model, the weights (resident), the adapter's
     * parameters, gradients and optimizer state (resident after creating them), and what the steps
     * added on top (activations, the workspace, the LM head's chunk buffers, thread stacks) */
    const double w = r1 - r0, state = r2 - r1, step = peak - r2;
    /* multiply-adds with the frozen weights per step (projections and LM head, y = x W^T and dx = dy W;
     * the recomputation of checkpointed layers not counted): the work of the bf16 / 4-bit kernel */
    /* moe-s: each token passes through its K = 4 experts of width 256 (the router's 32 x H not counted) */
    const double H = (double)info.hidden_size, I = moe ? 4.0 * 256.0 : (double)info.intermediate_size;
    const double QD = (double)(info.n_heads * info.head_dim), KD = (double)(info.n_kv_heads * info.head_dim);
    const double proj = (double)info.n_layers * (2 * H * QD + 2 * H * KD + 3 * H * I);
    const double frozen_gflop = 2.0 * 2.0 * (proj + (double)info.vocab_size * H) * (double)(B * T) / 1e9;
    if (opt_flag(&o, "json"))
        printf("{\"config\": \"%s\", \"method\": \"%s\", \"threads\": %d, \"checkpointing\": \"%s\", "
               "\"activation_memory_mb\": %lld, \"base_dtype\": \"%s\", \"batch\": %lld, \"seq\": %lld, "
               "\"steps\": %lld, \"loss\": %.6f, \"tokens_per_s\": %.2f, \"tokens_per_cpu_s\": %.2f, "
               "\"peak_rss_mb\": %.1f, \"load_peak_rss_mb\": %.1f, \"base_rss_mb\": %.1f, \"weights_rss_mb\": %.1f, "
               "\"weight_bytes_mb\": %.1f, \"adapter_state_rss_mb\": %.1f, \"step_rss_mb\": %.1f, "
               "\"load_s\": %.2f, \"read_s\": %.2f, \"file_mb\": %.1f, \"weight_bytes\": %lld, "
               "\"projection_bits_per_param\": %.4f, \"optimizer\": \"%s\", \"trainable_params\": %.0f, "
               "\"bytes_per_trainable_param\": %.2f, \"frozen_gemm_gflop_per_step\": %.1f, "
               "\"frozen_gemm_gflop_per_s\": %.1f, \"gemm_time_share\": %.3f, \"gemm_gflop_per_s_in_gemm\": %.1f}\n",
               cfg->name, method, (int)threads, ck, keep_mb >= 1LL << 40 ? -1LL : keep_mb,
               base_dtype == LT_BASE_BF16 ? "bf16" : "f32", B, T, steps, loss, tok / dt, tok / dc, peak / MiB,
               load_peak / MiB, r0 / MiB, w / MiB, (double)info.weight_bytes / MiB, state / MiB, step / MiB, load_s,
               read_s, file_bytes / MiB, (long long)info.weight_bytes, qbits, optname, n_train, state / n_train,
               frozen_gflop, steps ? frozen_gflop * (double)steps / dt : 0.0, steps ? gemm_s / dt : 0.0,
               gemm_s > 0 ? gemm_gflop / gemm_s : 0.0);
    else
        printf("%s (%s, base %s, %lld x %lld tokens, checkpointing %s): %.2f training tokens/s (%.2f s/step)\n"
               "  peak RSS %.1f MiB = process %.1f + weights %.1f (the library counts %.1f) + adapter and "
               "optimizer state %.1f + step %.1f; loading peaked at %.1f MiB\n"
               "  %s %.2f s; projections %.3f bits/param; %.0f trainable parameters at %.2f bytes each (%s)\n",
               cfg->name, method, base_dtype == LT_BASE_BF16 ? "bf16" : "f32", B, T, ck, tok / dt,
               steps ? dt / steps : 0.0, peak / MiB, r0 / MiB, w / MiB, (double)info.weight_bytes / MiB, state / MiB,
               step / MiB, load_peak / MiB, mdir ? "loaded in" : "made in", load_s, qbits, n_train, state / n_train,
               optname);
    if (steps && gemm_s > 0 && !opt_flag(&o, "json"))
        printf("  products with frozen weights: %.0f%% of the step's time, at %.1f GFLOP/s while they run\n",
               100.0 * gemm_s / dt, gemm_gflop / gemm_s);
    if (mdir && !opt_flag(&o, "json"))
        printf("  reading the %.1f MiB of weight files took %.2f s: loading took %.2fx that\n", file_bytes / MiB,
               read_s, load_s / read_s);
done:
    free(ids);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
