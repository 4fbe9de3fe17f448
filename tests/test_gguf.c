/*
 * test_gguf.c - GGUF: f32 -> f16 rounding, the writer read back by the reader (every value type, F32 / F16 /
 * BF16 / Q8_0 tensors, alignment), hostile files (every truncation, huge counts, nested arrays, overlapping,
 * misaligned or out-of-file tensors) giving statuses, and lt_model_export_gguf / lt_adapter_export_gguf on
 * random models: llama.cpp's names and layouts (q/k rows permuted for Llama, Gemma norms as 1 + w, a
 * Qwen3-MoE's stacked experts and their LoRA), the tokenizer keys, the adapter's tensors and scale folding,
 * and the refusals. llama.cpp itself checks the files
 * in tests/python/crosscheck_gguf.py.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter.h"
#include "formats/gguf.h"
#include "loratune_experimental.h"
#include "test_util.h"

/* ---- f16 ------------------------------------------------------------------------------------------ */

START_TEST(test_f16_rounding) {
    const struct {
        float x;
        uint16_t h;
    } cases[] = {
        {1.0f, 0x3c00},
        {-2.5f, 0xc100},
        {65504.0f, 0x7bff},
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00},
        {1e30f, 0x7c00},
        {-INFINITY, 0xfc00},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {5.9604645e-8f, 0x0001},
        {2.9802322e-8f, 0x0000},
        {4.4703484e-8f, 0x0001},
        {6.1035156e-5f, 0x0400},
        {6.0975552e-5f, 0x03ff},
        {1.0f + 1.0f / 2048, 0x3c00}, /* tie to even */
        {1.0f + 3.0f / 2048, 0x3c02},
        {1.0f + 1.0f / 4096 + 1.0f / 2048, 0x3c01},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        ck_assert_msg(lt_f32_to_f16(cases[i].x) == cases[i].h, "f16(%.9g) = 0x%04x, want 0x%04x", cases[i].x,
                      lt_f32_to_f16(cases[i].x), cases[i].h);
    ck_assert_uint_eq(lt_f32_to_f16(NAN) & 0x7e00, 0x7e00);
    for (uint32_t h = 0; h < 65536; h++) { /* every finite f16 value round-trips */
        if ((h & 0x7c00) == 0x7c00) continue;
        ck_assert_uint_eq(lt_f32_to_f16(lt_f16_to_f32((uint16_t)h)), h);
    }
}
END_TEST

/* ---- writer and reader ---------------------------------------------------------------------------- */

static lt_status fill_ramp(void *user, int index, float *dst, size_t n, lt_error *err) {
    (void)user;
    (void)err;
    for (size_t i = 0; i < n; i++) dst[i] = (float)((double)(i % 97) * 0.013 - 0.6) * (float)(index + 1);
    return LT_OK;
}

static void write_sample(const char *path) {
    lt_error err = {0};
    lt_gguf_writer *w = lt_gguf_writer_new();
    const char *strs[] = {"a", "", "ünïcode"};
    const int32_t ints[] = {-1, 2, 2147483647};
    const float fl[] = {0.5f, -3.25f};
    ck_assert_int_eq(lt_gguf_set_str(w, "general.architecture", "llama", &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_u32(w, "llama.block_count", 7, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_i32(w, "x.i32", -5, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_f32(w, "x.f32", 1.5f, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_bool(w, "x.bool", 1, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_arr_str(w, "x.strs", strs, 3, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_arr(w, "x.ints", LT_GGUF_I32, ints, 3, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_arr(w, "x.floats", LT_GGUF_F32, fl, 2, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_set_u32(w, "llama.block_count", 8, &err), LT_ERR_ARGUMENT); /* keys are unique */
    const int64_t s1[1] = {5}, s2[2] = {3, 64}, s3[2] = {2, 33};
    ck_assert_int_eq(lt_gguf_add_tensor(w, "a.f32", 1, s1, LT_GGML_F32, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_add_tensor(w, "b.f16", 2, s2, LT_GGML_F16, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_add_tensor(w, "c.bf16", 2, s3, LT_GGML_BF16, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_add_tensor(w, "d.q8", 2, s2, LT_GGML_Q8_0, &err), LT_OK);
    ck_assert_int_eq(lt_gguf_add_tensor(w, "e.q8", 2, s3, LT_GGML_Q8_0, &err), LT_ERR_SHAPE); /* 33 % 32 */
    ck_assert_int_eq(lt_gguf_add_tensor(w, "a.f32", 1, s1, LT_GGML_F32, &err), LT_ERR_ARGUMENT);
    ck_assert_int_eq(lt_gguf_write(w, path, fill_ramp, NULL, &err), LT_OK);
    lt_gguf_writer_free(w);
}

/* the sample file's bytes (written into a new temporary directory) */
static char *sample_bytes(size_t *n) {
    char dir[64], path[128];
    tu_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.gguf", dir);
    write_sample(path);
    return tu_slurp(path, n);
}

START_TEST(test_write_read) {
    size_t n;
    char *buf = sample_bytes(&n);
    lt_gguf_file *f = NULL;
    lt_error err = {0};
    ck_assert_msg(lt_gguf_parse(buf, n, &f, &err) == LT_OK, "%s", err.msg);
    ck_assert_uint_eq(f->version, 3);
    ck_assert_int_eq(f->n_kv, 8);
    ck_assert_int_eq(f->n_tensors, 4);
    const lt_gguf_kv *kv = lt_gguf_find_kv(f, "general.architecture");
    ck_assert_str_eq(kv->strs[0], "llama");
    uint32_t u;
    memcpy(&u, lt_gguf_find_kv(f, "llama.block_count")->data, 4);
    ck_assert_uint_eq(u, 7);
    kv = lt_gguf_find_kv(f, "x.strs");
    ck_assert_int_eq(kv->type, LT_GGUF_ARRAY);
    ck_assert_int_eq(kv->elem, LT_GGUF_STRING);
    ck_assert_str_eq(kv->strs[2], "ünïcode");
    ck_assert_str_eq(kv->strs[1], "");
    kv = lt_gguf_find_kv(f, "x.ints");
    int32_t ints[3];
    memcpy(ints, kv->data, sizeof ints);
    ck_assert_int_eq(ints[2], 2147483647);
    ck_assert_int_eq(*(const uint8_t *)lt_gguf_find_kv(f, "x.bool")->data, 1);
    const char *names[] = {"a.f32", "b.f16", "c.bf16", "d.q8"};
    const double tol[] = {0, 1e-3, 1e-2, 1.0 / 127}; /* relative to the block / value scale */
    for (int i = 0; i < 4; i++) {
        const lt_gguf_tensor *t = lt_gguf_find_tensor(f, names[i]);
        ck_assert_ptr_nonnull(t);
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_eq(((const char *)t->data - buf) % 32, 0);
        const size_t m = (size_t)(t->ne[0] * t->ne[1]);
        float *got = malloc(m * sizeof *got), *want = malloc(m * sizeof *want);
        ck_assert_int_eq(lt_ggml_to_f32(t->type, t->data, got, m), 0);
        fill_ramp(NULL, i, want, m, &err);
        ck_assert_msg(tu_max_rel_err(got, want, m) <= tol[i], "%s: %g", names[i], tu_max_rel_err(got, want, m));
        free(got);
        free(want);
    }
    ck_assert_int_eq(lt_gguf_find_tensor(f, "b.f16")->ne[0], 64); /* ne[0] = PyTorch's last dimension */
    ck_assert_int_eq(lt_gguf_find_tensor(f, "b.f16")->ne[1], 3);
    lt_gguf_file_free(f);
    free(buf);
}
END_TEST

START_TEST(test_q8_0_block) { /* ggml's quantize_row_q8_0_ref: d = amax / 127 as f16, q = roundf(x / d) */
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (i - 16) * 0.1f;
    uint8_t q[34];
    lt_ggml_from_f32(LT_GGML_Q8_0, x, q, 32);
    uint16_t d;
    memcpy(&d, q, 2);
    ck_assert_uint_eq(d, lt_f32_to_f16(1.6f / 127.0f));
    const float id = 127.0f / 1.6f;
    for (int i = 0; i < 32; i++) ck_assert_int_eq((int8_t)q[2 + i], (int)roundf(x[i] * (1.0f / (1.6f / 127.0f))));
    (void)id;
}
END_TEST

/* ---- hostile input -------------------------------------------------------------------------------- */

static lt_status parse(const void *b, size_t n) {
    lt_gguf_file *f = NULL;
    lt_error err = {0};
    lt_status st = lt_gguf_parse(b, n, &f, &err);
    if (st == LT_OK) ck_assert_ptr_nonnull(f);
    else ck_assert_msg(strstr(err.msg, "gguf:") != NULL, "message without context: %s", err.msg);
    lt_gguf_file_free(f);
    return st;
}

START_TEST(test_hostile) {
    size_t n;
    char *buf = sample_bytes(&n);
    ck_assert_int_eq(parse(buf, n), LT_OK);
    lt_gguf_file *whole = NULL;
    lt_error e0 = {0};
    ck_assert_int_eq(lt_gguf_parse(buf, n, &whole, &e0), LT_OK);
    size_t data_end = 0; /* past it only the padding of the last tensor */
    for (int64_t i = 0; i < whole->n_tensors; i++) {
        const size_t e = (size_t)((const char *)whole->tensors[i].data - buf) + whole->tensors[i].nbytes;
        if (e > data_end) data_end = e;
    }
    lt_gguf_file_free(whole);
    for (size_t k = 0; k < data_end; k++) { /* every truncation before the end of the data fails */
        char *c = malloc(k + 1);
        memcpy(c, buf, k);
        lt_status st = parse(c, k);
        ck_assert_msg(st == LT_ERR_TRUNCATED || st == LT_ERR_FORMAT, "truncated at %zu: %d", k, st);
        free(c);
    }
    char *c = malloc(n);
    memcpy(c, buf, n);
    c[0] = 'X';
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT); /* magic */
    memcpy(c, buf, n);
    c[4] = 9;
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT); /* version */
    memcpy(c, buf, n);
    memset(c + 16, 0xff, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_TRUNCATED); /* 2^64 - 1 metadata entries */
    memcpy(c, buf, n);
    memset(c + 8, 0x7f, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_TRUNCATED); /* a huge tensor count */
    /* the first key's string length made huge */
    memcpy(c, buf, n);
    memset(c + 24, 0xff, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_TRUNCATED);
    /* a value type out of range; a nested array (x.strs's element type made ARRAY) */
    memcpy(c, buf, n);
    size_t at = 24 + 8 + strlen("general.architecture");
    c[at] = 77;
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    memcpy(c, buf, n);
    char *p = memmem(c, n, "x.strs", 6);
    ck_assert_ptr_nonnull(p);
    p[6 + 4] = LT_GGUF_ARRAY; /* after the key: u32 type ARRAY, then the element type */
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    /* tensor infos: b.f16's offset misaligned, then made to overlap a.f32, then past the end */
    p = memmem(buf, n, "b.f16", 5);
    ck_assert_ptr_nonnull(p);
    const size_t off_at = (size_t)(p - buf) + 5 + 4 + 2 * 8 + 4;
    uint64_t off;
    memcpy(c, buf, n);
    memcpy(&off, c + off_at, 8);
    off += 4;
    memcpy(c + off_at, &off, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    memcpy(c, buf, n);
    off = 0;
    memcpy(c + off_at, &off, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    memcpy(c, buf, n);
    off = (uint64_t)1 << 40;
    memcpy(c + off_at, &off, 8);
    ck_assert_int_eq(parse(c, n), LT_ERR_TRUNCATED);
    /* n_dims 0 and 5; a duplicate tensor name */
    memcpy(c, buf, n);
    c[(size_t)(p - buf) + 5] = 0;
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    c[(size_t)(p - buf) + 5] = 5;
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    memcpy(c, buf, n);
    memcpy(c + (p - buf), "a.f32", 5);
    ck_assert_int_eq(parse(c, n), LT_ERR_FORMAT);
    /* random byte flips never crash (statuses or OK) */
    uint64_t s = 12345;
    for (int it = 0; it < 3000; it++) {
        memcpy(c, buf, n);
        for (int k = 0; k < 3; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            c[(s >> 33) % n] ^= (char)(1 + (s >> 20) % 255);
        }
        parse(c, n);
    }
    free(c);
    free(buf);
}
END_TEST

/* ---- model export --------------------------------------------------------------------------------- */

static const char *const LLAMA_CFG = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 260, "
                                     "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 2, "
                                     "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                                     "\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, "
                                     "\"bos_token_id\": 256, \"eos_token_id\": 257}";
/* a Gemma checkpoint has a Llama's tensor names: made as a tied Llama, then its config.json says Gemma */
static const char *const GEMMA_AS_LLAMA = "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 260, "
                                          "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 1, "
                                          "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 16, "
                                          "\"max_position_embeddings\": 64, \"tie_word_embeddings\": true, "
                                          "\"bos_token_id\": 256, \"eos_token_id\": 257}";
static const char *const GEMMA_CFG = "{\"architectures\": [\"GemmaForCausalLM\"], \"vocab_size\": 260, "
                                     "\"hidden_size\": 32, \"intermediate_size\": 48, \"num_hidden_layers\": 1, "
                                     "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 16, "
                                     "\"max_position_embeddings\": 64, \"hidden_act\": \"gelu_pytorch_tanh\", "
                                     "\"bos_token_id\": 256, \"eos_token_id\": 257}";

/* a byte-level BPE tokenizer (GPT-2's byte -> unicode map, Llama 3's regex, no merges) and its config */
static void write_tokenizer(const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"version\": \"1.0\", \"added_tokens\": [{\"id\": 256, \"content\": \"<|begin|>\", \"special\": true},"
          "{\"id\": 257, \"content\": \"<|end|>\", \"special\": true}], \"normalizer\": null, \"pre_tokenizer\": "
          "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": "
          "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
          "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": "
          "\"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": "
          "false}]}, \"post_processor\": null, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
          "\"ignore_merges\": true, \"merges\": [], \"vocab\": {",
          f);
    int n = 0;
    for (int b = 0; b < 256; b++) { /* bytes_to_unicode */
        int cp = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255) ? b : 256 + n++;
        char u[8];
        if (cp < 0x80) snprintf(u, sizeof u, "%c", cp);
        else snprintf(u, sizeof u, "%c%c", 0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
        fprintf(f, "%s\"%s%s\": %d", b ? ", " : "", cp == '"' || cp == '\\' ? "\\" : "", u, b);
    }
    fputs("}}}", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    tu_write_text(path, "{\"bos_token\": \"<|begin|>\", \"eos_token\": \"<|end|>\", \"chat_template\": \"{% for m "
                        "in messages %}{{ m['content'] }}<|end|>{% endfor %}\"}");
}

static lt_model *random_model(lt_context *ctx, const char *cfg, const char *dir) {
    lt_model *m = NULL;
    const int gemma = strstr(cfg, "Gemma") != NULL;
    ck_assert_msg(lt_model_create_random(ctx, gemma ? GEMMA_AS_LLAMA : cfg, 7, 0.1f, &m) == LT_OK, "%s",
                  lt_last_error());
    ck_assert_int_eq(lt_model_save(m, dir), LT_OK);
    lt_model_free(m);
    if (gemma) {
        char path[256];
        snprintf(path, sizeof path, "%s/config.json", dir);
        tu_write_text(path, cfg);
    }
    write_tokenizer(dir);
    ck_assert_msg(lt_model_load(ctx, dir, NULL, &m) == LT_OK, "%s", lt_last_error());
    return m;
}

static lt_gguf_file *read_gguf(const char *path, char **buf) {
    size_t n;
    *buf = tu_slurp(path, &n);
    lt_gguf_file *f = NULL;
    lt_error err = {0};
    ck_assert_msg(lt_gguf_parse(*buf, n, &f, &err) == LT_OK, "%s", err.msg);
    return f;
}

/* m exported as a GGUF of dtype at path, read back */
static lt_gguf_file *export_read(lt_model *m, lt_gguf_dtype dtype, const char *path, char **buf) {
    lt_gguf_params gp;
    lt_gguf_params_init(&gp, sizeof gp);
    gp.dtype = dtype;
    ck_assert_msg(lt_model_export_gguf(m, NULL, path, &gp) == LT_OK, "%s", lt_model_last_error(m));
    return read_gguf(path, buf);
}

START_TEST(test_export_llama) {
    lt_context *ctx = tu_context();
    char dir[64], path[128];
    tu_tempdir(dir, sizeof dir);
    lt_model *m = random_model(ctx, LLAMA_CFG, dir);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.alpha = 8;
    ap.use_rslora = 1;
    ap.init = LT_INIT_GAUSSIAN;
    lt_adapter *a = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    /* B nonzero: a few steps would do; the values are set directly through the seam */
    const lt_lora *lo = lt_adapter_lora(a, 1, P_Q);
    float B[32 * 4];
    for (int i = 0; i < 32 * 4; i++) B[i] = (float)(i % 11) * 0.01f - 0.05f;
    m->be->ops->upload(m->be, lo->B, B, sizeof B);
    lt_gguf_params gp;
    lt_gguf_params_init(&gp, sizeof gp);
    ck_assert_int_eq(gp.dtype, LT_GGUF_DTYPE_F16);
    gp.dtype = LT_GGUF_DTYPE_F32;
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    ck_assert_msg(lt_model_export_gguf(m, NULL, path, &gp) == LT_OK, "%s", lt_model_last_error(m));
    char *buf;
    lt_gguf_file *f = read_gguf(path, &buf);
    ck_assert_str_eq(lt_gguf_find_kv(f, "general.architecture")->strs[0], "llama");
    ck_assert_str_eq(lt_gguf_find_kv(f, "tokenizer.ggml.model")->strs[0], "gpt2");
    ck_assert_str_eq(lt_gguf_find_kv(f, "tokenizer.ggml.pre")->strs[0], "llama-bpe");
    ck_assert_int_eq(lt_gguf_find_kv(f, "tokenizer.ggml.tokens")->n, 260); /* 258 ids + [PAD258], [PAD259] */
    ck_assert_str_eq(lt_gguf_find_kv(f, "tokenizer.ggml.tokens")->strs[259], "[PAD259]");
    uint32_t eos;
    memcpy(&eos, lt_gguf_find_kv(f, "tokenizer.ggml.eos_token_id")->data, 4);
    ck_assert_uint_eq(eos, 257);
    ck_assert_ptr_nonnull(lt_gguf_find_kv(f, "tokenizer.chat_template"));
    /* q rows permuted: GGUF row h*d + 2i + j = checkpoint row h*d + j*d/2 + i (d = 8 rows per head) */
    const lt_gguf_tensor *t = lt_gguf_find_tensor(f, "blk.1.attn_q.weight");
    ck_assert_ptr_nonnull(t);
    float W[32 * 32];
    lt_error err = {0};
    ck_assert_int_eq(lt_weight_download(m, &m->layers[1].w[P_Q], W, 32, 32, &err), LT_OK);
    const float *G = t->data;
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                ck_assert(!memcmp(G + (h * 8 + 2 * i + j) * 32, W + (h * 8 + j * 4 + i) * 32, 32 * sizeof(float)));
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.attn_norm.weight")->type, LT_GGML_F32);
    ck_assert_ptr_nonnull(lt_gguf_find_tensor(f, "output.weight"));
    lt_gguf_file_free(f);
    free(buf);
    /* the adapter: rsLoRA's alpha / sqrt(r) written as alpha / r with sqrt(r) folded into lora_b */
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    ck_assert_msg(lt_adapter_export_gguf(a, path, &gp) == LT_OK, "%s", lt_adapter_last_error(a));
    f = read_gguf(path, &buf);
    ck_assert_str_eq(lt_gguf_find_kv(f, "general.type")->strs[0], "adapter");
    float alpha;
    memcpy(&alpha, lt_gguf_find_kv(f, "adapter.lora.alpha")->data, 4);
    ck_assert(alpha == 8.0f);
    t = lt_gguf_find_tensor(f, "blk.1.attn_q.weight.lora_b");
    ck_assert_int_eq(t->ne[0], 4);
    ck_assert_int_eq(t->ne[1], 32);
    G = t->data;
    for (int h = 0; h < 4; h++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++)
                for (int k = 0; k < 4; k++)
                    ck_assert(fabsf(G[(h * 8 + 2 * i + j) * 4 + k] - 2.0f * B[(h * 8 + j * 4 + i) * 4 + k]) < 1e-7f);
    ck_assert_int_eq(f->n_tensors, 2 * 7 * 2);
    lt_gguf_file_free(f);
    free(buf);
    /* refusals */
    gp.dtype = (lt_gguf_dtype)9;
    ck_assert_int_eq(lt_model_export_gguf(m, NULL, path, &gp), LT_ERR_ARGUMENT);
    ck_assert_int_eq(lt_model_export_gguf(m, NULL, NULL, NULL), LT_ERR_ARGUMENT);
    lt_adapter_free(a);
    ap.use_dora = 1;
    ap.use_rslora = 0;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
    ck_assert_int_eq(lt_adapter_export_gguf(a, path, NULL), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_adapter_last_error(a), "merged"));
    char odir[96]; /* a save of its own: dir holds the tokenizer and GGUF files beside m's save */
    snprintf(odir, sizeof odir, "%s/other", dir);
    lt_model *other = random_model(ctx, LLAMA_CFG, odir);
    ck_assert_int_eq(lt_model_export_gguf(other, a, path, NULL), LT_ERR_ARGUMENT);
    lt_adapter_free(a);
    lt_model_free(other);
    lt_model_free(m);
    /* no tokenizer: a GGUF would not generate */
    lt_model *bare = NULL;
    ck_assert_int_eq(lt_model_create_random(ctx, LLAMA_CFG, 1, 0.1f, &bare), LT_OK);
    ck_assert_int_ne(lt_model_export_gguf(bare, NULL, path, NULL), LT_OK);
    ck_assert_ptr_nonnull(strstr(lt_model_last_error(bare), "tokenizer"));
    lt_model_free(bare);
    lt_context_free(ctx);
}
END_TEST

START_TEST(test_export_gemma_norms) {
    lt_context *ctx = tu_context();
    char dir[64], path[128];
    tu_tempdir(dir, sizeof dir);
    lt_model *m = random_model(ctx, GEMMA_CFG, dir);
    snprintf(path, sizeof path, "%s/g.gguf", dir);
    char *buf;
    lt_gguf_file *f = export_read(m, LT_GGUF_DTYPE_Q8_0, path, &buf);
    const lt_gguf_tensor *t = lt_gguf_find_tensor(f, "blk.0.attn_norm.weight");
    ck_assert_int_eq(t->type, LT_GGML_F32);
    float w[32];
    m->be->ops->download(m->be, w, m->layers[0].attn_norm_file, sizeof w);
    for (int i = 0; i < 32; i++) ck_assert(((const float *)t->data)[i] == w[i] + 1.0f); /* llama.cpp: x * weight */
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.attn_q.weight")->type, LT_GGML_Q8_0);
    ck_assert_ptr_null(lt_gguf_find_tensor(f, "output.weight")); /* tied */
    lt_gguf_file_free(f);
    free(buf);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

static uint32_t kv_u32(const lt_gguf_file *f, const char *key) {
    const lt_gguf_kv *kv = lt_gguf_find_kv(f, key);
    ck_assert_msg(kv != NULL, "%s missing", key);
    uint32_t v;
    memcpy(&v, kv->data, 4);
    return v;
}

/* cfg with the first `from` replaced by `to` */
static void cfg_with(char *out, size_t len, const char *cfg, const char *from, const char *to) {
    const char *at = strstr(cfg, from);
    ck_assert_ptr_nonnull(at);
    snprintf(out, len, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
}

/* Qwen3-MoE: each projection of all experts stacked as ffn_*_exps (E, out, in), the router in F32, the
 * expert LoRA as 3-D lora_a / lora_b (gate_up_proj's A twice, its B split), and the refused layouts. */
static const char *const QWEN3MOE_CFG =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"vocab_size\": 260, \"hidden_size\": 32, "
    "\"intermediate_size\": 48, \"moe_intermediate_size\": 16, \"num_experts\": 3, \"num_experts_per_tok\": 2, "
    "\"norm_topk_prob\": true, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
    "\"head_dim\": 8, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"bos_token_id\": 256, "
    "\"eos_token_id\": 257}";

START_TEST(test_export_moe) {
    lt_context *ctx = tu_context();
    char dir[64], path[128];
    tu_tempdir(dir, sizeof dir);
    lt_model *m = random_model(ctx, QWEN3MOE_CFG, dir);
    enum { E = 3, H = 32, MI = 16, R = 2 };
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    char *buf;
    lt_gguf_file *f = export_read(m, LT_GGUF_DTYPE_F32, path, &buf);
    ck_assert_str_eq(lt_gguf_find_kv(f, "general.architecture")->strs[0], "qwen3moe");
    ck_assert_uint_eq(kv_u32(f, "qwen3moe.expert_count"), E);
    ck_assert_uint_eq(kv_u32(f, "qwen3moe.expert_used_count"), 2);
    ck_assert_uint_eq(kv_u32(f, "qwen3moe.expert_feed_forward_length"), MI);
    const lt_gguf_tensor *t = lt_gguf_find_tensor(f, "blk.1.ffn_up_exps.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->n_dims, 3);
    ck_assert(t->ne[0] == H && t->ne[1] == MI && t->ne[2] == E);
    float W[MI * H];
    lt_error err = {0};
    for (int e = 0; e < E; e++) { /* expert e's (out, in) matrix at index e of ne[2] */
        ck_assert_int_eq(lt_weight_download(m, lt_expert_w(&m->layers[1], e, P_UP), W, MI, H, &err), LT_OK);
        ck_assert(!memcmp((const float *)t->data + (size_t)e * MI * H, W, sizeof W));
    }
    t = lt_gguf_find_tensor(f, "blk.0.ffn_down_exps.weight");
    ck_assert(t && t->ne[0] == MI && t->ne[1] == H && t->ne[2] == E);
    t = lt_gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight");
    ck_assert(t && t->ne[0] == H && t->ne[1] == E);
    ck_assert_ptr_null(lt_gguf_find_tensor(f, "blk.0.ffn_gate.weight")); /* no dense MLP */
    lt_gguf_file_free(f);
    free(buf);
    /* q8_0: the router stays F32, rows of 16 values (down) fall back to F16 */
    f = export_read(m, LT_GGUF_DTYPE_Q8_0, path, &buf);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight")->type, LT_GGML_F32);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight")->type, LT_GGML_Q8_0);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_down_exps.weight")->type, LT_GGML_F16);
    lt_gguf_file_free(f);
    free(buf);
    /* the adapter: q and every expert; B of layer 1's gate|up set through the seam */
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = R;
    ap.alpha = 4;
    ap.targets = LT_TARGET_Q | LT_TARGET_EXPERTS;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_model_last_error(m));
    const lt_lora *lo = lt_adapter_elora(a, 1, 0);
    ck_assert_ptr_nonnull(lo);
    float B[E * 2 * MI * R], A[E * R * H];
    for (int i = 0; i < E * 2 * MI * R; i++) B[i] = (float)(i % 13) * 0.01f - 0.06f;
    m->be->ops->upload(m->be, lo->B, B, sizeof B);
    m->be->ops->download(m->be, A, lo->A, sizeof A);
    lt_gguf_params gp;
    lt_gguf_params_init(&gp, sizeof gp);
    gp.dtype = LT_GGUF_DTYPE_F32;
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    ck_assert_msg(lt_adapter_export_gguf(a, path, &gp) == LT_OK, "%s", lt_adapter_last_error(a));
    f = read_gguf(path, &buf);
    ck_assert_int_eq(f->n_tensors, 2 * 2 * 4); /* per layer: q, gate, up, down */
    for (int p = 0; p < 2; p++) {              /* gate and up: the shared A */
        t = lt_gguf_find_tensor(f, p ? "blk.1.ffn_up_exps.weight.lora_a" : "blk.1.ffn_gate_exps.weight.lora_a");
        ck_assert(t && t->n_dims == 3 && t->ne[0] == H && t->ne[1] == R && t->ne[2] == E);
        ck_assert(!memcmp(t->data, A, sizeof A));
    }
    t = lt_gguf_find_tensor(f, "blk.1.ffn_up_exps.weight.lora_b");
    ck_assert(t && t->ne[0] == R && t->ne[1] == MI && t->ne[2] == E);
    for (int e = 0; e < E; e++) /* expert e's up rows: B rows MI..2MI (alpha / r: nothing folded) */
        for (int i = 0; i < MI; i++)
            for (int j = 0; j < R; j++)
                ck_assert(((const float *)t->data)[(e * MI + i) * R + j] == B[(e * 2 * MI + MI + i) * R + j]);
    t = lt_gguf_find_tensor(f, "blk.0.ffn_down_exps.weight.lora_b");
    ck_assert(t && t->ne[0] == R && t->ne[1] == H && t->ne[2] == E);
    lt_gguf_file_free(f);
    free(buf);
    lt_adapter_free(a);
    lt_model_free(m);
    /* llama.cpp's qwen3moe: experts in every layer, top-k renormalised */
    const char *bad[][2] = {{"\"norm_topk_prob\": true", "\"norm_topk_prob\": true, \"mlp_only_layers\": [1]"},
                            {"\"norm_topk_prob\": true", "\"norm_topk_prob\": false"}};
    for (int i = 0; i < 2; i++) {
        char cfg[1024], d2[96];
        cfg_with(cfg, sizeof cfg, QWEN3MOE_CFG, bad[i][0], bad[i][1]);
        snprintf(d2, sizeof d2, "%s/bad%d", dir, i);
        m = random_model(ctx, cfg, d2);
        ck_assert_int_eq(lt_model_export_gguf(m, NULL, path, NULL), LT_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(lt_model_last_error(m), i ? "norm_topk_prob" : "every layer"));
        lt_model_free(m);
    }
    lt_context_free(ctx);
}
END_TEST

/* gpt-oss: the fused (in, out) gate_up_proj as ffn_gate_exps / ffn_up_exps (E, I, H) of each expert's gate and up
 * rows, its bias split likewise (the converter's even / odd columns), the sinks, the biases in F32, the YaRN and
 * sliding-window keys; the refused constants and the refused expert LoRA. */
static const char *const GPTOSS_CFG =
    "{\"architectures\": [\"GptOssForCausalLM\"], \"vocab_size\": 260, \"hidden_size\": 32, "
    "\"intermediate_size\": 16, \"num_local_experts\": 3, \"num_experts_per_tok\": 2, \"num_hidden_layers\": 3, "
    "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8, \"sliding_window\": 4, "
    "\"max_position_embeddings\": 64, \"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0, "
    "\"factor\": 4.0, \"beta_fast\": 32.0, \"beta_slow\": 1.0, \"truncate\": true, "
    "\"original_max_position_embeddings\": 16}, \"bos_token_id\": 256, \"eos_token_id\": 257}";

START_TEST(test_export_gptoss) {
    lt_context *ctx = tu_context();
    char dir[64], path[128];
    tu_tempdir(dir, sizeof dir);
    lt_model *m = random_model(ctx, GPTOSS_CFG, dir);
    enum { E = 3, H = 32, MI = 16, NH = 4 };
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    char *buf;
    lt_gguf_file *f = export_read(m, LT_GGUF_DTYPE_F32, path, &buf);
    ck_assert_str_eq(lt_gguf_find_kv(f, "general.architecture")->strs[0], "gpt-oss");
    ck_assert_uint_eq(kv_u32(f, "gpt-oss.expert_count"), E);
    ck_assert_uint_eq(kv_u32(f, "gpt-oss.expert_feed_forward_length"), MI);
    ck_assert_uint_eq(kv_u32(f, "gpt-oss.attention.sliding_window"), 4);
    ck_assert_uint_eq(kv_u32(f, "gpt-oss.rope.scaling.original_context_length"), 16);
    ck_assert_str_eq(lt_gguf_find_kv(f, "gpt-oss.rope.scaling.type")->strs[0], "yarn");
    ck_assert_ptr_null(lt_gguf_find_kv(f, "gpt-oss.attention.sliding_window_pattern")); /* sliding, full, sliding */
    ck_assert_ptr_null(lt_gguf_find_kv(f, "gpt-oss.rope.scaling.attn_factor"));         /* the default */
    float W[MI * H], bias[E * 2 * MI + E * H];
    lt_error err = {0};
    m->be->ops->download(m->be, bias, m->layers[2].expert_bias, sizeof bias);
    for (int p = P_GATE; p <= P_DOWN; p++) {
        static const char *const names[] = {"blk.2.ffn_gate_exps", "blk.2.ffn_up_exps", "blk.2.ffn_down_exps"};
        char tn[64];
        snprintf(tn, sizeof tn, "%s.weight", names[p - P_GATE]);
        const lt_gguf_tensor *t = lt_gguf_find_tensor(f, tn);
        const int out = p == P_DOWN ? H : MI, in = p == P_DOWN ? MI : H;
        ck_assert_msg(t && t->n_dims == 3 && t->ne[0] == in && t->ne[1] == out && t->ne[2] == E, "%s", tn);
        for (int e = 0; e < E; e++) { /* expert e's (out, in) matrix at index e of ne[2] */
            ck_assert_int_eq(lt_weight_download(m, lt_expert_w(&m->layers[2], e, (lt_proj)p), W, out, in, &err), LT_OK);
            ck_assert(!memcmp((const float *)t->data + (size_t)e * out * in, W, (size_t)out * in * sizeof *W));
        }
        snprintf(tn, sizeof tn, "%s.bias", names[p - P_GATE]);
        t = lt_gguf_find_tensor(f, tn);
        ck_assert_msg(t && t->n_dims == 2 && t->ne[0] == out && t->ne[1] == E && t->type == LT_GGML_F32, "%s", tn);
        for (int e = 0; e < E; e++) {
            const float *want =
                bias + (lt_expert_bias(&m->cfg, &m->layers[2], e, (lt_proj)p) - m->layers[2].expert_bias);
            ck_assert(!memcmp((const float *)t->data + (size_t)e * out, want, (size_t)out * sizeof(float)));
        }
    }
    const lt_gguf_tensor *t = lt_gguf_find_tensor(f, "blk.1.attn_sinks.weight");
    ck_assert(t && t->n_dims == 1 && t->ne[0] == NH);
    float sinks[NH];
    m->be->ops->download(m->be, sinks, m->layers[1].sinks, sizeof sinks);
    ck_assert(!memcmp(t->data, sinks, sizeof sinks));
    static const char *const present[] = {"blk.0.attn_output.bias",           "blk.0.attn_q.bias",
                                          "blk.0.ffn_gate_inp.bias",          "blk.0.ffn_gate_inp.weight",
                                          "blk.0.post_attention_norm.weight", "output.weight"};
    for (size_t i = 0; i < sizeof present / sizeof *present; i++)
        ck_assert_msg(lt_gguf_find_tensor(f, present[i]) != NULL, "%s", present[i]);
    ck_assert_ptr_null(lt_gguf_find_tensor(f, "blk.0.ffn_norm.weight"));
    lt_gguf_file_free(f);
    free(buf);
    /* f16: biases (2-D too), sinks, the router stay F32 */
    f = export_read(m, LT_GGUF_DTYPE_F16, path, &buf);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_up_exps.bias")->type, LT_GGML_F32);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight")->type, LT_GGML_F32);
    ck_assert_int_eq(lt_gguf_find_tensor(f, "blk.0.ffn_up_exps.weight")->type, LT_GGML_F16);
    lt_gguf_file_free(f);
    free(buf);
    /* the adapter: attention only is written, a LoRA on the experts refused (no llama.cpp converter for it) */
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 2;
    ap.alpha = 4;
    ap.targets = LT_TARGET_Q | LT_TARGET_V;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_model_last_error(m));
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    ck_assert_msg(lt_adapter_export_gguf(a, path, NULL) == LT_OK, "%s", lt_adapter_last_error(a));
    f = read_gguf(path, &buf);
    ck_assert_int_eq(f->n_tensors, 3 * 2 * 2);
    ck_assert_ptr_nonnull(lt_gguf_find_tensor(f, "blk.2.attn_v.weight.lora_b"));
    lt_gguf_file_free(f);
    free(buf);
    lt_adapter_free(a);
    ap.targets = LT_TARGET_Q | LT_TARGET_EXPERTS;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_model_last_error(m));
    ck_assert_int_eq(lt_adapter_export_gguf(a, path, NULL), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(lt_adapter_last_error(a), "convert_lora_to_gguf"));
    lt_adapter_free(a);
    lt_model_free(m);
    /* layer types other than llama.cpp's default: the bool array */
    char cfg[1024], d2[96];
    cfg_with(cfg, sizeof cfg, GPTOSS_CFG, "\"sliding_window\": 4, ",
             "\"sliding_window\": 4, \"layer_types\": [\"full_attention\", \"sliding_attention\", "
             "\"sliding_attention\"], ");
    snprintf(d2, sizeof d2, "%s/layout", dir);
    m = random_model(ctx, cfg, d2);
    f = export_read(m, LT_GGUF_DTYPE_F32, path, &buf);
    const lt_gguf_kv *kv = lt_gguf_find_kv(f, "gpt-oss.attention.sliding_window_pattern");
    ck_assert(kv && kv->n == 3 && !memcmp(kv->data, "\0\1\1", 3));
    lt_gguf_file_free(f);
    free(buf);
    lt_model_free(m);
    /* what llama.cpp hard-codes */
    const char *bad[][3] = {
        {"\"sliding_window\": 4, ", "\"sliding_window\": 4, \"swiglu_limit\": 0.5, ", "swiglu_limit 7"},
        {"\"truncate\": true", "\"truncate\": false", "truncate false"},
        {"\"beta_fast\": 32.0", "\"beta_fast\": 8.0", "beta_fast 32"}};
    for (int i = 0; i < 3; i++) {
        cfg_with(cfg, sizeof cfg, GPTOSS_CFG, bad[i][0], bad[i][1]);
        snprintf(d2, sizeof d2, "%s/bad%d", dir, i);
        m = random_model(ctx, cfg, d2);
        ck_assert_int_eq(lt_model_export_gguf(m, NULL, path, NULL), LT_ERR_UNSUPPORTED);
        ck_assert_msg(strstr(lt_model_last_error(m), bad[i][2]) != NULL, "%s", lt_model_last_error(m));
        /* allow_approximate writes only what llama.cpp computes approximately: YaRN's rounded range */
        lt_gguf_params gp;
        lt_gguf_params_init(&gp, sizeof gp);
        gp.allow_approximate = 1;
        ck_assert_int_eq(lt_model_export_gguf(m, NULL, path, &gp), i == 1 ? LT_OK : LT_ERR_UNSUPPORTED);
        if (i == 1) {
            buf = NULL;
            f = read_gguf(path, &buf);
            const lt_gguf_kv *y = lt_gguf_find_kv(f, "gpt-oss.rope.scaling.type");
            ck_assert(y && y->strs && !strcmp(y->strs[0], "yarn"));
            lt_gguf_file_free(f);
            free(buf);
        }
        lt_model_free(m);
    }
    lt_context_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_f16_rounding);
    tcase_add_test(tc, test_write_read);
    tcase_add_test(tc, test_q8_0_block);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_export_llama);
    tcase_add_test(tc, test_export_gemma_norms);
    tcase_add_test(tc, test_export_moe);
    tcase_add_test(tc, test_export_gptoss);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
