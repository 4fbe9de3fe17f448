/*
 * make_seeds.c - seed corpora for the harnesses of tests/fuzz, made from files the library writes:
 *   make_seeds OUT [TOKENIZER_GOLDENS_DIR]
 * writes OUT/<harness>/seed-<name> in each harness's input format (files joined by FZ_SEP, fuzz_util.h):
 *   model       random Llama / Qwen2 (biases) / Gemma models saved by lt_model_save, a sharded merged export
 *   bnb         NF4 and FP4 (with and without double quantization) checkpoints of lt_model_save_quantized
 *   adapter     LoRA, rsLoRA + DoRA, PiSSA (converted, with loratune_init.json), modules_to_save adapters
 *               and a full fine-tuning saved by lt_adapter_save, over fuzz_util.h's model
 *   checkpoint  lt_trainer_save_checkpoint of AdamW, 8-bit AdamW and SGD trainers over that model
 *   tokenizer   small tokenizer.json files in the layouts the loader reads (byte-level BPE, metaspace with
 *               byte fallback, added tokens, normalizer and pre-tokenizer sequences; the library writes
 *               none), and the tokenizers of TOKENIZER_GOLDENS_DIR (tests/python/make_tokenizer_goldens.py,
 *               written by Hugging Face tokenizers) when given
 *   chat_template  ChatML, Llama 3, Mistral, Gemma and Phi-3 style templates with conversations
 *   jsonl       rows of every shape lt_tokenizer_encode_row and the CLI's loader read
 *   gguf        GGUF files of the library's writer (formats/gguf.h): metadata of every type the export
 *               writes (strings, integers, floats, bools, arrays of strings and numbers) and F32 / F16 /
 *               BF16 / Q8_0 tensors of 1 to 4 dimensions; and lt_model_export_gguf of a random model
 *               with a byte-level tokenizer
 * The library calls are the public ones; every seed is a real output, so the fuzzer starts inside the
 * accepted language of each parser.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "loratune_experimental.h"

static const char *out_root;
static char work[512];

static void die(const char *what, const char *msg) {
    fprintf(stderr, "make_seeds: %s: %s\n", what, msg);
    exit(1);
}

static void mkdirs(const char *p) {
    char b[1024];
    snprintf(b, sizeof b, "%s", p);
    for (char *s = b + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(b, 0755);
            *s = '/';
        }
    mkdir(b, 0755);
}

/* bytes of a whole file; NULL with *n = 0 when absent */
static char *slurp(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    if (fread(b, 1, (size_t)len, f) != (size_t)len) die(path, "short read");
    fclose(f);
    b[len] = 0;
    *n = (size_t)len;
    return b;
}

/* Write OUT/harness/seed-name: the files dir/names[i] (absent: empty part) joined by FZ_SEP, then the
 * extra parts given as strings. */
static void seed(const char *harness, const char *name, const char *dir, const char *const *names, int n_names,
                 const char *const *extra, int n_extra) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", out_root, harness);
    mkdirs(p);
    snprintf(p, sizeof p, "%s/%s/seed-%s", out_root, harness, name);
    FILE *f = fopen(p, "wb");
    if (!f) die(p, strerror(errno));
    for (int i = 0; i < n_names + n_extra; i++) {
        if (i) fwrite(FZ_SEP, 1, FZ_SEP_LEN, f);
        if (i < n_names) {
            char fp[1200];
            size_t n;
            snprintf(fp, sizeof fp, "%s/%s", dir, names[i]);
            char *b = slurp(fp, &n);
            if (b) fwrite(b, 1, n, f);
            free(b);
        } else {
            fputs(extra[i - n_names], f);
        }
    }
    fclose(f);
}

static void check(lt_status st, const char *what) {
    if (st != LT_OK) die(what, lt_last_error());
}

static lt_context *ctx;

static void models(void) {
    static const char *const names[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    static const char *const flags_f32[] = {"\x01"}, *const flags_bf16[] = {"\x03"}, *const flags_copy[] = {"\x00"};
    static const struct {
        const char *name, *config;
    } cfgs[] = {
        {"llama", fz_model_config},
        {"qwen2",
         "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"vocab_size\": 40, \"hidden_size\": "
         "16,"
         " \"intermediate_size\": 24, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,"
         " \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6, \"max_position_embeddings\": 64,"
         " \"tie_word_embeddings\": true, \"sliding_window\": 8, \"use_sliding_window\": false}"},
        {"mistral",
         "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"vocab_size\": 40,"
         " \"hidden_size\": 16, \"intermediate_size\": 24, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
         " \"num_key_value_heads\": 1, \"head_dim\": 8, \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-5,"
         " \"max_position_embeddings\": 64, \"sliding_window\": 4, \"tie_word_embeddings\": false}"},
    };
    char dir[700];
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        lt_model *m = NULL;
        check(lt_model_create_random(ctx, cfgs[i].config, 3 + i, 0.05f, &m), cfgs[i].name);
        snprintf(dir, sizeof dir, "%s/model-%s", work, cfgs[i].name);
        check(lt_model_save(m, dir), cfgs[i].name);
        char nm[64];
        snprintf(nm, sizeof nm, "%s-mmap", cfgs[i].name);
        seed("model", nm, dir, names, 5, flags_f32, 1);
        snprintf(nm, sizeof nm, "%s-bf16", cfgs[i].name);
        seed("model", nm, dir, names, 5, flags_bf16, 1);
        snprintf(nm, sizeof nm, "%s-copy", cfgs[i].name);
        seed("model", nm, dir, names, 5, flags_copy, 1);
        if (i == 0) { /* a sharded directory: a merged export with small shards */
            lt_adapter *a = NULL;
            lt_adapter_params ap;
            lt_adapter_params_init(&ap, sizeof ap);
            ap.rank = 2;
            check(lt_adapter_create(m, &ap, &a), "adapter");
            snprintf(dir, sizeof dir, "%s/model-sharded", work);
            check(lt_adapter_export_merged(a, dir, 12 << 10), "sharded"); /* two shards of the ~22 KB */
            lt_adapter_free(a);
            /* the shards have other names than two: take the index and the first two */
            seed("model", "sharded", dir, names, 5, flags_f32, 1);
        }
        /* bitsandbytes checkpoints (Llama only: the layout lt_model_save_quantized writes) */
        for (int q = 0; i == 0 && q < 4; q++) {
            lt_model *mq = NULL;
            lt_model_params mp;
            lt_model_params_init(&mp, sizeof mp);
            snprintf(dir, sizeof dir, "%s/model-%s", work, cfgs[i].name);
            check(lt_model_load(ctx, dir, &mp, &mq), "reload");
            lt_quant_params qp;
            lt_quant_params_init(&qp, sizeof qp);
            qp.format = q & 1 ? LT_QUANT_FP4 : LT_QUANT_NF4;
            qp.double_quant = q < 2;
            check(lt_model_quantize(mq, &qp), "quantize");
            snprintf(dir, sizeof dir, "%s/bnb-%d", work, q);
            if (lt_model_save_quantized(mq, dir) != LT_OK) die("save_quantized", lt_model_last_error(mq));
            snprintf(nm, sizeof nm, "%s%s", q & 1 ? "fp4" : "nf4", q < 2 ? "-dq" : "");
            seed("bnb", nm, dir, names, 5, flags_f32, 1);
            snprintf(nm, sizeof nm, "%s%s-bf16", q & 1 ? "fp4" : "nf4", q < 2 ? "-dq" : "");
            seed("bnb", nm, dir, names, 5, flags_bf16, 1);
            lt_model_free(mq);
        }
        lt_model_free(m);
    }
}

static void adapters_and_checkpoints(void) {
    lt_model *m = NULL;
    check(lt_model_create_random(ctx, fz_model_config, 11, 0.05f, &m), "model");
    static const char *const names[] = {"adapter_config.json", "adapter_model.safetensors", "loratune_init.json",
                                        "config.json", "model.safetensors"};
    char dir[700];
    for (int k = 0; k < 5; k++) {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = 2 + k;
        ap.alpha = 4.0f + (float)k;
        ap.seed = (uint64_t)k;
        ap.init = LT_INIT_GAUSSIAN;
        const char *what[] = {"lora", "dora-rslora", "pissa", "modules-to-save", "full"};
        if (k == 1) ap.use_dora = ap.use_rslora = 1;
        if (k == 2) ap.init = LT_INIT_PISSA;
        if (k == 3) ap.modules_to_save = LT_SAVE_LM_HEAD, ap.targets = LT_TARGET_Q | LT_TARGET_V;
        if (k == 4) ap.full_finetune = 1;
        lt_adapter *a = NULL;
        check(lt_adapter_create(m, &ap, &a), what[k]);
        snprintf(dir, sizeof dir, "%s/adapter-%s", work, what[k]);
        if (lt_adapter_save(a, dir) != LT_OK) die(what[k], lt_adapter_last_error(a));
        seed("adapter", what[k], dir, names, 5, NULL, 0);
        lt_adapter_free(a);
    }
    /* checkpoints of the three trainers fuzz_checkpoint makes (rank 2 AdamW, rank 8 AdamW8bit, rank 2 SGD) */
    static const char *const cnames[] = {"trainer_state.json", "optimizer.bin", "adapter_config.json",
                                         "adapter_model.safetensors"};
    static const lt_optimizer_kind kinds[3] = {LT_OPT_ADAMW, LT_OPT_ADAMW8BIT, LT_OPT_SGD};
    static const char *const flags[3][1] = {{"\x00"}, {"\x01"}, {"\x02"}};
    for (int k = 0; k < 3; k++) {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = k == 1 ? 8 : 2;
        lt_optimizer_params op;
        lt_optimizer_params_init(&op, sizeof op);
        op.kind = kinds[k];
        lt_adapter *a = NULL;
        lt_optimizer *o = NULL;
        lt_trainer *t = NULL;
        check(lt_adapter_create(m, &ap, &a), "adapter");
        check(lt_optimizer_create(a, &op, &o), "optimizer");
        check(lt_trainer_create(m, a, o, NULL, &t), "trainer");
        int32_t ids[8] = {1, 5, 9, 13, 17, 21, 25, 29};
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = 1;
        b.seq_len = 8;
        b.input_ids = ids;
        b.labels = ids;
        lt_step_result r = {.size = sizeof r};
        for (int s = 0; s < 2; s++)
            if (lt_trainer_step(t, &b, &r) != LT_OK) die("step", lt_trainer_last_error(t));
        snprintf(dir, sizeof dir, "%s/checkpoint-%d", work, k);
        if (lt_trainer_save_checkpoint(t, dir) != LT_OK) die("checkpoint", lt_trainer_last_error(t));
        static const char *const cn[3] = {"adamw", "adamw8bit", "sgd"};
        seed("checkpoint", cn[k], dir, cnames, 4, flags[k], 1);
        lt_trainer_free(t);
        lt_optimizer_free(o);
        lt_adapter_free(a);
    }
    lt_model_free(m);
}

/* write text as dir/name */
static void put(const char *dir, const char *name, const char *text) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) die(p, strerror(errno));
    fputs(text, f);
    fclose(f);
}

static const char k_bytelevel[] =
    "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": "
    "true}, \"decoder\": {\"type\": \"ByteLevel\"}, \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
    "[{\"SpecialToken\": {\"id\": \"<s>\"}}, {\"Sequence\": {\"id\": \"A\"}}], \"special_tokens\": {\"<s>\": {\"ids\": "
    "[7]}}}, \"added_tokens\": [{\"id\": 7, \"content\": \"<s>\", \"special\": true}, {\"id\": 8, \"content\": "
    "\"<|eot|>\", \"special\": true, \"lstrip\": true}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"H\": 0, \"e\": "
    "1, "
    "\"l\": 2, \"o\": 3, \"\\u0120\": 4, \"He\": 5, \"ll\": 6, \"Hell\": 9, \"Hello\": 10, \"\\u0120w\": 11, \"w\": "
    "12, "
    "\"r\": 13, \"d\": 14, \",\": 15, \"!\": 16}, \"merges\": [\"H e\", \"l l\", \"He ll\", \"Hell o\", \"\\u0120 "
    "w\"]}}";
static const char k_metaspace[] =
    "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, "
    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}, {\"type\": \"NFKC\"}]}, "
    "\"pre_tokenizer\": null, \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", "
    "\"pattern\": "
    "{\"String\": \"\\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": "
    "\"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}, \"added_tokens\": [{\"id\": 0, \"content\": "
    "\"<unk>\", "
    "\"special\": true}, {\"id\": 1, \"content\": \"<s>\", \"special\": true}, {\"id\": 2, \"content\": \"</s>\", "
    "\"special\": true}], \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"fuse_unk\": true, \"unk_token\": "
    "\"<unk>\", \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"<0x0A>\": 3, \"<0x41>\": 4, \"\\u2581\": 5, "
    "\"a\": 6, "
    "\"b\": 7, \"\\u2581a\": 8, \"ab\": 9, \"\\u2581ab\": 10}, \"merges\": [\"\\u2581 a\", \"a b\", \"\\u2581a b\"]}}";
static const char k_split[] =
    "{\"normalizer\": {\"type\": \"Lowercase\"}, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": "
    "[{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+|\\\\s+\"}, "
    "\"behavior\": "
    "\"Isolated\", \"invert\": false}, {\"type\": \"Digits\", \"individual_digits\": true}, {\"type\": \"ByteLevel\", "
    "\"add_prefix_space\": false, \"use_regex\": false}]}, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": "
    "{\"type\": "
    "\"BPE\", \"ignore_merges\": true, \"vocab\": {\"1\": 0, \"2\": 1, \"a\": 2, \"b\": 3, \"ab\": 4}, \"merges\": "
    "[[\"a\", \"b\"]]}}";

static void tokenizers(const char *goldens) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    static const char *const texts[][1] = {{"Hello, world! <|eot|> 123 \xC3\xA9\xE2\x80\x94 ab\n\tA"},
                                           {"a ab b  <s>ab</s> \xF0\x9F\x98\x80"}};
    const char *const jsons[] = {k_bytelevel, k_metaspace, k_split};
    char dir[700];
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/tok-%d", work, i);
        mkdirs(dir);
        put(dir, "tokenizer.json", jsons[i]);
        put(dir, "tokenizer_config.json", "{\"bos_token\": \"<s>\", \"eos_token\": {\"content\": \"</s>\"}}");
        char nm[32];
        snprintf(nm, sizeof nm, "handmade-%d", i);
        seed("tokenizer", nm, dir, names, 2, texts[i & 1], 1);
    }
    /* the golden tokenizers written by Hugging Face tokenizers, when the goldens exist */
    DIR *d = goldens ? opendir(goldens) : NULL;
    if (!d) return;
    struct dirent *e;
    int k = 0;
    while ((e = readdir(d)) != NULL && k < 24) {
        if (e->d_name[0] == '.') continue;
        snprintf(dir, sizeof dir, "%s/%s/tokenizer.json", goldens, e->d_name);
        struct stat sb;
        if (stat(dir, &sb) != 0 || sb.st_size > (1 << 20)) continue; /* small ones: the fuzzer mutates them */
        snprintf(dir, sizeof dir, "%s/%s", goldens, e->d_name);
        seed("tokenizer", e->d_name, dir, names, 2, texts[k & 1], 1);
        k++;
    }
    closedir(d);
}

static void templates(void) {
    static const struct {
        const char *name, *tmpl;
    } t[] = {
        {"chatml", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}"},
        {"llama3", "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
                   "messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message "
                   "= \"\" %}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- system_message "
                   "}}{{- \"<|eot_id|>\" }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
                   "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"},
        {"mistral",
         "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % "
         "2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') "
         "}}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
         "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ "
         "raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"},
        {"gemma",
         "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
         "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set "
         "role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + "
         "'\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
         "{{'<start_of_turn>model\\n'}}{% endif %}"},
        {"generation",
         "{% for m in messages %}<|{{ m.role }}|>\\n{% if m.role == 'assistant' %}{% generation %}"
         "{{ m.content }}<|end|>{% endgeneration %}{% else %}{{ m.content }}<|end|>{% endif %}\\n{% endfor "
         "%}{% if add_generation_prompt %}<|assistant|>\\n{% endif %}"},
    };
    static const char *const conv[] = {
        "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi \\u00e9!\"}, "
        "{\"role\": \"assistant\", \"content\": \" Hello. \"}, {\"role\": \"user\", \"content\": \"\"}]",
        "[{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]",
    };
    char dir[700];
    snprintf(dir, sizeof dir, "%s/tmpl", work);
    mkdirs(dir);
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        for (int c = 0; c < 2; c++) {
            put(dir, "template", t[i].tmpl);
            put(dir, "messages", conv[c]);
            static const char *const names[] = {"template", "messages"};
            static const char *const gen[2][1] = {{"\x00"}, {"\x01"}};
            char nm[64];
            snprintf(nm, sizeof nm, "%s-%d", t[i].name, c);
            seed("chat_template", nm, dir, names, 2, gen[c], 1);
        }
}

static void rows(void) {
    static const char *const r[] = {
        "{\"input_ids\": [1, 5, 9, 13], \"labels\": [-100, 5, 9, 13]}\n{\"input_ids\": [2, 3]}\n",
        "{\"text\": \"ab abc\\nA\"}\n",
        "{\"prompt\": \"ab\", \"completion\": \" abc\"}\n",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"ab\"}, {\"role\": \"assistant\", \"content\": \"c\"}]}\n",
        ("{\"prompt\": [{\"role\": \"user\", \"content\": \"a\"}], \"completion\": [{\"role\": \"assistant\", "
         "\"content\": \"b\"}]}\n"),
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n",
        "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": false}\n",
    };
    static const char *const prm[][1] = {{"\x08\x0f\x10\x03"}, {"\x00\x0b\x05\x01"}};
    char dir[700];
    snprintf(dir, sizeof dir, "%s/rows", work);
    mkdirs(dir);
    for (size_t i = 0; i < sizeof r / sizeof *r; i++) {
        put(dir, "row", r[i]);
        static const char *const names[] = {"row"};
        char nm[32];
        snprintf(nm, sizeof nm, "row-%zu", i);
        seed("jsonl", nm, dir, names, 1, prm[i & 1], 1);
    }
}

/* tensor data: a ramp with a sign change, so that every converted type holds varied values */
static lt_status ramp(void *user, int index, float *dst, size_t n, lt_error *err) {
    (void)user;
    (void)err;
    for (size_t i = 0; i < n; i++) dst[i] = ((float)i - (float)n / 2) * 0.01f * (float)(index + 1);
    return LT_OK;
}

static void gguf(void) {
    static const char *const names[] = {"f.gguf"};
    char dir[700], path[800];
    for (int k = 0; k < 3; k++) {
        lt_error err = {0};
        lt_gguf_writer *w = lt_gguf_writer_new();
        if (!w) die("gguf", "out of memory");
        static const char *const toks[] = {"a", "b", "\xc4\xa0\x63", "<s>"};
        const int32_t types[] = {1, 1, 1, 3};
        const float scores[] = {0.f, -1.f, -2.5f, 0.f};
        lt_status st = lt_gguf_set_str(w, "general.architecture", "llama", &err);
        if (st == LT_OK) st = lt_gguf_set_u32(w, "general.quantization_version", 2, &err);
        if (st == LT_OK) st = lt_gguf_set_i32(w, "llama.block_count", -3 + k, &err);
        if (st == LT_OK) st = lt_gguf_set_f32(w, "llama.rope.freq_base", 10000.f, &err);
        if (st == LT_OK) st = lt_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", k & 1, &err);
        if (st == LT_OK) st = lt_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, 4, &err);
        if (st == LT_OK) st = lt_gguf_set_arr(w, "tokenizer.ggml.token_type", LT_GGUF_I32, types, 4, &err);
        if (st == LT_OK) st = lt_gguf_set_arr(w, "tokenizer.ggml.scores", LT_GGUF_F32, scores, 4, &err);
        static const lt_ggml_type tt[] = {LT_GGML_F32, LT_GGML_F16, LT_GGML_BF16, LT_GGML_Q8_0};
        for (int t = 0; t < 4 && st == LT_OK; t++) {
            char nm[64];
            snprintf(nm, sizeof nm, "blk.%d.weight", t);
            const int64_t shape[4] = {2, 3, 2, 64};
            const int ndim = 1 + (t + k) % 4;
            st = lt_gguf_add_tensor(w, nm, ndim, shape + 4 - ndim, tt[t], &err);
        }
        snprintf(dir, sizeof dir, "%s/gguf-%d", work, k);
        mkdirs(dir);
        snprintf(path, sizeof path, "%s/f.gguf", dir);
        if (st == LT_OK) st = lt_gguf_write(w, path, ramp, NULL, &err);
        lt_gguf_writer_free(w);
        if (st != LT_OK) die("gguf", err.msg);
        char nm[32];
        snprintf(nm, sizeof nm, "writer-%d", k);
        seed("gguf", nm, dir, names, 1, NULL, 0);
    }
    /* a whole model as the export writes it: the llama model of models() with a byte-level tokenizer */
    snprintf(dir, sizeof dir, "%s/model-llama", work);
    put(dir, "tokenizer.json", k_bytelevel);
    lt_model *m = NULL;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    check(lt_model_load(ctx, dir, &mp, &m), "gguf model");
    snprintf(path, sizeof path, "%s/f.gguf", dir);
    if (lt_model_export_gguf(m, NULL, path, NULL) != LT_OK) die("gguf export", lt_model_last_error(m));
    seed("gguf", "export-llama", dir, names, 1, NULL, 0);
    lt_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: make_seeds OUT [TOKENIZER_GOLDENS_DIR]\n");
        return 2;
    }
    out_root = argv[1];
    mkdirs(out_root);
    snprintf(work, sizeof work, "%s/.work", out_root);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    if (system(cmd) != 0) return 1;
    mkdirs(work);
    ctx = fz_context();
    models();
    adapters_and_checkpoints();
    tokenizers(argc > 2 ? argv[2] : NULL);
    templates();
    rows();
    gguf();
    lt_context_free(ctx);
    if (system(cmd) != 0) return 1;
    printf("make_seeds: seeds in %s\n", out_root);
    return 0;
}
