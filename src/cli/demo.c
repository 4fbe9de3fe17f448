/*
 * demo.c - `loratune demo`: the README's main job, end to end on the CPU in a few minutes.
 *
 * No pretrained weights can be downloaded here, so the demo is honest about what it has: it creates a
 * small Llama-architecture model with RANDOM weights and a byte-level vocabulary (ids 0..255 are bytes,
 * 256 = BOS, 257 = EOS), saves it as a Hugging Face model directory, and fine-tunes a LoRA adapter
 * (the base stays frozen) on a small set of question/answer lines. It shows the loss falling on the
 * training lines, the loss on held-out lines that the adapter never saw, greedy generations before and
 * after, and where the PEFT adapter was written. A random base cannot generalise facts it was never
 * taught, so the held-out lines test the learned *format* ("Q: ... A: ...") and not the facts.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "loratune_experimental.h"

#define BOS 256
#define EOS 257

static const char *const facts[][2] = {
    {"France", "Paris"},    {"Japan", "Tokyo"},    {"Italy", "Rome"},       {"Spain", "Madrid"},
    {"Germany", "Berlin"},  {"Egypt", "Cairo"},    {"Peru", "Lima"},        {"Kenya", "Nairobi"},
    {"Norway", "Oslo"},     {"Chile", "Santiago"}, {"Cuba", "Havana"},      {"Greece", "Athens"},
    {"Poland", "Warsaw"},   {"Canada", "Ottawa"},  {"India", "New Delhi"},  {"Ireland", "Dublin"},
    {"Portugal", "Lisbon"}, {"Austria", "Vienna"}, {"Sweden", "Stockholm"}, {"Mexico", "Mexico City"},
};
#define N_FACTS ((int)(sizeof facts / sizeof *facts))
#define N_TRAIN 16 /* the last four are held out */

static const char demo_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 258,"
    " \"hidden_size\": 128, \"intermediate_size\": 344, \"num_hidden_layers\": 4,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"rope_theta\": 10000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 256, \"tie_word_embeddings\": false,"
    " \"bos_token_id\": 256, \"eos_token_id\": 257}";

/* "Q: What is the capital of X?\nA: Y" as BOS + bytes (+ EOS); returns the length. */
static int encode(int32_t *ids, const char *country, const char *capital, int with_answer) {
    char text[160];
    int n = 0;
    snprintf(text, sizeof text, "Q: What is the capital of %s?\nA:%s%s", country, with_answer ? " " : "",
             with_answer ? capital : "");
    ids[n++] = BOS;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) ids[n++] = *p;
    if (with_answer) ids[n++] = EOS;
    return n;
}

/* The demo model's tokenizer as a Hugging Face tokenizer.json: byte-level, id = the byte, 256 <s> (BOS,
 * added by the post-processor), 257 </s> (EOS); so `loratune generate --prompt`, `train` on text rows and
 * `eval --compare` speak text to the model, and transformers' tokenizer reads the same file. */
static int write_tokenizer(const char *dir) {
    json_t *vocab = json_object();
    /* GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others for 256 + n */
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : 256 + n++;
        char u[4];
        if (cp < 0x80) u[0] = (char)cp, u[1] = 0;
        else u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3F)), u[2] = 0;
        json_object_set_new(vocab, u, json_integer(b));
    }
    json_t *tok = json_pack(
        "{s:s,s:n,s:n,s:[{s:i,s:s,s:b,s:b,s:b,s:b,s:b},{s:i,s:s,s:b,s:b,s:b,s:b,s:b}],s:n,"
        "s:{s:s,s:b,s:b,s:b},s:{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],"
        "s:{s:{s:s,s:[i],s:[s]}}},s:{s:s,s:b,s:b,s:b},"
        "s:{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:[]}}",
        "version", "1.0", "truncation", "padding", "added_tokens", "id", BOS, "content", "<s>", "single_word", 0,
        "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1, "id", EOS, "content", "</s>", "single_word", 0,
        "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1, "normalizer", "pre_tokenizer", "type", "ByteLevel",
        "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0, "post_processor", "type", "TemplateProcessing",
        "single", "SpecialToken", "id", "<s>", "type_id", 0, "Sequence", "id", "A", "type_id", 0, "pair",
        "SpecialToken", "id", "<s>", "type_id", 0, "Sequence", "id", "A", "type_id", 0, "special_tokens", "<s>", "id",
        "<s>", "ids", BOS, "tokens", "<s>", "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
        "use_regex", 0, "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",
        "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab, "merges");
    json_t *cfg = json_pack("{s:s,s:s,s:s,s:b}", "bos_token", "<s>", "eos_token", "</s>", "tokenizer_class",
                            "PreTrainedTokenizerFast", "add_bos_token", 1);
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int bad = !tok || json_dump_file(tok, path, JSON_INDENT(1) | JSON_ENSURE_ASCII);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    bad |= !cfg || json_dump_file(cfg, path, JSON_INDENT(1));
    json_decref(tok);
    json_decref(cfg);
    return bad ? -1 : 0;
}

/* The demo's data as files for `loratune train` and `eval --compare`: the taught lines, the held-out lines,
 * and every question with its expected answer. */
static int write_data(const char *out) {
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/data", out);
    if (mkdir_p(dir) != 0) return -1;
    static const char *const files[] = {"train.jsonl", "heldout.jsonl", "prompts.jsonl"};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        FILE *f = fopen(path, "w");
        if (!f) return -1;
        for (int i = k == 1 ? N_TRAIN : 0; i < (k == 0 ? N_TRAIN : N_FACTS); i++) {
            char q[128], a[64];
            snprintf(q, sizeof q, "Q: What is the capital of %s?\nA:", facts[i][0]);
            snprintf(a, sizeof a, " %s", facts[i][1]);
            json_t *row = k == 2 ? json_pack("{s:s,s:s,s:s,s:b}", "prompt", q, "expected", a, "match", "exact",
                                             "taught", i < N_TRAIN)
                                 : json_pack("{s:s+}", "text", q, a);
            char *js = json_dumps(row, JSON_COMPACT);
            fprintf(f, "%s\n", js);
            free(js);
            json_decref(row);
        }
        if (fclose(f) != 0) return -1;
    }
    return 0;
}

static void print_generation(const int32_t *ids, int n) {
    putchar('"');
    for (int i = 0; i < n; i++) {
        if (ids[i] == EOS) {
            printf("<eos>");
            break;
        }
        int c = ids[i];
        if (c == '\n') printf("\\n");
        else if (c >= 32 && c < 127) putchar(c);
        else printf("\\x%02x", c & 0xff);
    }
    putchar('"');
}

static void generate_all(lt_model *m, lt_adapter *ad, const char *title) {
    const int picks[] = {0, 5, 12, 17, 19}; /* three taught, two held out */
    int32_t prompts[5 * 64], lens[5], out[5 * 24], out_lens[5];
    int off = 0;
    for (int i = 0; i < 5; i++) {
        lens[i] = encode(prompts + off, facts[picks[i]][0], NULL, 0);
        off += lens[i];
    }
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = 24;
    if (lt_generate(m, ad, prompts, lens, 5, &gp, out, out_lens) != LT_OK) {
        fprintf(stderr, "loratune demo: generation failed: %s\n", lt_model_last_error(m));
        return;
    }
    printf("\n%s (greedy):\n", title);
    for (int i = 0; i < 5; i++) {
        printf("  %-9s %-8s -> ", facts[picks[i]][0], picks[i] < N_TRAIN ? "(taught)" : "(unseen)");
        print_generation(out + i * 24, out_lens[i]);
        putchar('\n');
    }
}

static double mean_loss(lt_model *m, lt_adapter *ad, int first, int last) {
    double sum = 0;
    long long n = 0;
    for (int i = first; i < last; i++) {
        int32_t ids[160];
        int len = encode(ids, facts[i][0], facts[i][1], 1);
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = 1;
        b.seq_len = len;
        b.input_ids = ids;
        double s;
        int64_t k;
        if (lt_model_loss(m, ad, &b, &s, &k) != LT_OK) return NAN;
        sum += s;
        n += k;
    }
    return sum / (double)n;
}

int cmd_demo(int argc, char **argv) {
    static const opt_spec spec[] = {{"out", 1}, {"steps", 1}, {"threads", 1}, {"seed", 1}};
    opts o;
    if (opts_parse(&o, spec, 4, argc, argv, "demo")) return 2;
    const char *out = opt_str(&o, "out", "demo-out");
    long long steps, threads, seed;
    if (opt_int(&o, "steps", 300, 1, 1000000, &steps) || opt_int(&o, "threads", 0, 0, 1024, &threads) ||
        opt_int(&o, "seed", 1, 0, 1LL << 62, &seed))
        return 2;
    char base_dir[4096], adapter_dir[4096], merged_dir[4096];
    snprintf(base_dir, sizeof base_dir, "%s/base-model", out);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", out);
    snprintf(merged_dir, sizeof merged_dir, "%s/merged-model", out);
    if (mkdir_p(out) != 0) return fail("demo", "%s: cannot create the output directory", out);

    lt_context_params cp;
    lt_context_params_init(&cp, sizeof cp);
    cp.backend = "cpu";
    cp.n_threads = (int)threads;
    lt_context *ctx = NULL;
    lt_model *m = NULL;
    lt_adapter *ad = NULL;
    lt_optimizer *opt = NULL;
    lt_trainer *tr = NULL;
    int rc = 0;
    if (lt_context_create(&cp, &ctx) != LT_OK) return fail("demo", "%s", lt_last_error());
    printf("libloratune %s demo: LoRA fine-tuning on the CPU backend\n\n", lt_version_string());
    printf("1. A base model to fine-tune. Nothing can be downloaded here, so this is a small Llama-architecture\n"
           "   model (4 layers, hidden 128, GQA 4/2 heads, byte-level vocabulary) with RANDOM weights,\n"
           "   saved as a Hugging Face model directory: %s\n",
           base_dir);
    if (lt_model_create_random(ctx, demo_config, (uint64_t)seed, 0.08f, &m) != LT_OK ||
        lt_model_save(m, base_dir) != LT_OK) {
        rc = fail("demo", "%s", m ? lt_model_last_error(m) : lt_last_error());
        goto done;
    }
    if (write_tokenizer(base_dir) || write_data(out)) {
        rc = fail("demo", "%s: cannot write the tokenizer and the data files", out);
        goto done;
    }
    lt_model_free(m);
    m = NULL;
    if (lt_model_load(ctx, base_dir, NULL, &m) != LT_OK) {
        rc = fail("demo", "%s", lt_last_error());
        goto done;
    }

    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 16;
    ap.alpha = 32;
    ap.targets = LT_TARGET_ALL;
    ap.seed = (uint64_t)seed;
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 3e-3f;
    op.schedule = LT_SCHED_COSINE;
    op.warmup_steps = 20;
    op.total_steps = steps;
    op.weight_decay = 0.0f;
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    tp.seed = (uint64_t)seed;
    if (lt_adapter_create(m, &ap, &ad) != LT_OK || lt_optimizer_create(ad, &op, &opt) != LT_OK ||
        lt_trainer_create(m, ad, opt, &tp, &tr) != LT_OK) {
        rc = fail("demo", "%s", lt_last_error());
        goto done;
    }
    printf("\n2. The data: %d lines \"Q: What is the capital of X?\\nA: Y\" (bytes + EOS); the last %d are held out.\n",
           N_FACTS, N_FACTS - N_TRAIN);
    printf("\n3. A LoRA adapter: rank 16, alpha 32 on q,k,v,o,gate,up,down of every layer: %lld trainable\n"
           "   parameters; the base stays frozen. AdamW, lr 3e-3 with cosine decay, %lld steps.\n",
           (long long)lt_adapter_n_params(ad), steps);
    generate_all(m, ad, "Before fine-tuning: the random model babbles");
    printf("\n   loss on the taught lines %.3f, on the held-out lines %.3f (uniform guessing: %.3f)\n",
           mean_loss(m, ad, 0, N_TRAIN), mean_loss(m, ad, N_TRAIN, N_FACTS), log(258.0));

    printf("\n4. Training (each step: 8 lines, padded; loss = mean over the answer and question bytes):\n");
    const int B = 8, T = 48;
    int32_t ids[8 * 48], labels[8 * 48];
    double t0 = now_seconds();
    for (long long step = 0; step < steps; step++) {
        for (int r = 0; r < B; r++) {
            int k = (int)((step * B + r) % N_TRAIN);
            int32_t row[160];
            int len = encode(row, facts[k][0], facts[k][1], 1);
            for (int t = 0; t < T; t++) {
                ids[r * T + t] = t < len ? row[t] : EOS;
                labels[r * T + t] = t < len ? row[t] : -100;
            }
        }
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = B;
        b.seq_len = T;
        b.input_ids = ids;
        b.labels = labels;
        lt_step_result res = {.size = sizeof res};
        if (lt_trainer_step(tr, &b, &res) != LT_OK) {
            rc = fail("demo", "%s", lt_trainer_last_error(tr));
            goto done;
        }
        if (step == 0 || (step + 1) % (steps >= 10 ? steps / 10 : 1) == 0) {
            int bar = (int)(res.loss * 8 + 0.5);
            if (bar > 48) bar = 48;
            printf("   step %4lld  loss %6.3f  lr %.2e  grad_norm %6.3f  %6.0f tok/s  %.*s\n", step + 1, res.loss,
                   res.lr, res.grad_norm, res.tokens_per_s, bar, "################################################");
            fflush(stdout);
        }
    }
    printf("   (%.1f s)\n", now_seconds() - t0);
    generate_all(m, ad, "After fine-tuning");
    printf("\n   loss on the taught lines %.3f, on the held-out lines %.3f\n", mean_loss(m, ad, 0, N_TRAIN),
           mean_loss(m, ad, N_TRAIN, N_FACTS));
    printf("   The adapter learned the taught answers and the answer format. The unseen countries get a\n"
           "   well-formed but made-up answer: a random base model knows no facts for LoRA to unlock.\n");

    if (lt_adapter_save(ad, adapter_dir) != LT_OK || lt_adapter_export_merged(ad, merged_dir, 0) != LT_OK) {
        rc = fail("demo", "%s", lt_adapter_last_error(ad));
        goto done;
    }
    printf("\n5. Written:\n   %s  PEFT adapter (adapter_config.json + adapter_model.safetensors;\n"
           "   loads with peft.PeftModel.from_pretrained on the base model)\n   %s  merged model (plain Hugging Face "
           "directory)\n   %s  the base model (with a byte-level tokenizer.json)\n   %s/data  the lines as JSONL "
           "(train.jsonl, heldout.jsonl, prompts.jsonl)\n"
           "\n6. The same through the tool, with a model card, a canary and a report:\n"
           "   loratune train --model %s --data %s/data/train.jsonl --eval-data %s/data/heldout.jsonl --out %s/run \\\n"
           "     --rank 16 --lr 3e-3 --scheduler cosine --warmup 20 --steps %lld --batch 8 --canary\n"
           "   loratune eval --compare --model %s --adapter %s/run/adapter --run %s/run --data %s/data/heldout.jsonl \\\n"
           "     --prompts %s/data/prompts.jsonl --report %s/report.md\n"
           "   loratune chat --model %s --adapter %s/run/adapter\n",
           adapter_dir, merged_dir, base_dir, out, base_dir, out, out, out, steps, base_dir, out, out, out, out, out,
           base_dir, out);
done:
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
    return rc;
}
