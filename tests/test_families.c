/*
 * test_families.c - the non-Llama model families against transformers' own classes: logits and losses
 * (plain and packed), a PEFT adapter's logits and LoRA gradients (with and without checkpointing),
 * greedy generation equal to the full forward (sliding windows in the KV-cache path), our adapter and
 * merged export loading in PEFT / transformers, and unknown architectures.
 *
 * Goldens: tests/python/make_family_models.py writes LT_TEST_DATA_DIR/models/<name>/ (save_pretrained
 * checkpoints of Qwen2ForCausalLM, MistralForCausalLM, Qwen3ForCausalLM, GemmaForCausalLM, ...) with
 * golden.safetensors and lora/{adapter,grads.safetensors}. Tolerance 1e-4 relative (max abs error over
 * max abs reference), as for Llama in test_model.c / test_lora.c.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "decoder/decoder.h"
#include "test_util.h"

typedef struct family_case {
    const char *name;
    const char *architecture;
} family_case;

static const family_case cases[] = {
    {"qwen2-swa", "Qwen2ForCausalLM"},
    {"qwen2-tied", "Qwen2ForCausalLM"},
    {"mistral-swa", "MistralForCausalLM"},
    {"qwen3", "Qwen3ForCausalLM"},
    {"gemma", "GemmaForCausalLM"},
    {"gemma2", "Gemma2ForCausalLM"},
    {"phi3", "Phi3ForCausalLM"},
    {"phi3-longrope", "Phi3ForCausalLM"},
    {"gemma3", "Gemma3ForCausalLM"},
    {"smollm3", "SmolLM3ForCausalLM"},
    {"olmo2", "Olmo2ForCausalLM"},
    {"granite", "GraniteForCausalLM"},
    /* second shapes of families above: no PEFT / transformers round trip (the files are written by the
     * same code as the first shape's; each round trip starts a Python, which CI time pays for) */
    {"gemma3-nowin", "Gemma3ForCausalLM"},
    {"smollm3-swa", "SmolLM3ForCausalLM"},
    /* Phi-4-mini's shape of Phi-3 (partial rotary 0.75, tied, GQA): logits and LoRA gradients only; its
     * DoRA, generation and round trips would repeat phi3's / phi3-longrope's (rotary 0.75 too) */
    {"phi4-mini", "Phi3ForCausalLM"},
};
#define N_CASES ((int)(sizeof cases / sizeof *cases))
#define N_ROUNDTRIP (N_CASES - 3)

/* models with a DoRA golden (<model>/dora/): Llama, Qwen2 with biases and a window, Phi-3's fused modules,
 * and each family of issue 19's dense part (the last two: no round trip, as above) */
static const family_case dora_cases[] = {{"llama-dora", "LlamaForCausalLM"}, {"qwen2-swa", "Qwen2ForCausalLM"},
                                         {"phi3", "Phi3ForCausalLM"},        {"gemma3", "Gemma3ForCausalLM"},
                                         {"olmo2", "Olmo2ForCausalLM"},      {"smollm3", "SmolLM3ForCausalLM"},
                                         {"granite", "GraniteForCausalLM"}};
#define N_DORA ((int)(sizeof dora_cases / sizeof *dora_cases))
#define N_DORA_ROUNDTRIP (N_DORA - 2)

/* golden tensor <prefix><key> */
static const lt_st_tensor *need(const lt_st_file *f, const char *prefix, const char *key) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", prefix, key);
    return tu_st_need(f, k);
}

static void batch_of(lt_batch *b, const lt_st_file *g, const char *pre, int packed) {
    const lt_st_tensor *ids = need(g, pre, "input_ids");
    *b = tu_batch(ids->data, need(g, pre, "labels")->data, (int)ids->shape[0], (int)ids->shape[1]);
    b->position_ids = packed ? need(g, pre, "position_ids")->data : NULL;
}

/* ---- forward against transformers --------------------------------------------------------------- */

START_TEST(test_family_logits) {
    const family_case *fc = &cases[_i];
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, fc->name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, fc->name, NULL);
    lt_model_info info = {.size = sizeof info};
    ck_assert_int_eq(lt_model_get_info(m, &info), LT_OK);
    ck_assert_str_eq(info.architecture, fc->architecture);
    snprintf(path, sizeof path, "%s/golden.safetensors", dir);
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(path, 1, &g, &err) == LT_OK, "%s", err.msg);
    const int V = (int)m->cfg.vocab_size;
    for (int packed = 0; packed < 2; packed++) {
        const char *pre = packed ? "packed_" : "";
        lt_batch b;
        batch_of(&b, g, pre, packed);
        const lt_st_tensor *ref = need(g, pre, "logits");
        size_t n = (size_t)b.n_rows * b.seq_len * V;
        ck_assert_int_eq((int64_t)n, ref->numel);
        float *out = malloc(n * sizeof *out);
        ck_assert_msg(lt_model_logits(m, NULL, &b, out, n) == LT_OK, "%s: %s", fc->name, lt_model_last_error(m));
        double rel = tu_max_rel_err(out, ref->data, n);
        ck_assert_msg(rel <= 1e-4, "%s %slogits: max error %.3g relative (tolerance 1e-4)", fc->name, pre, rel);
        free(out);
        double sum;
        int64_t tokens;
        ck_assert_int_eq(lt_model_loss(m, NULL, &b, &sum, &tokens), LT_OK);
        ck_assert_int_eq(tokens, *(const int32_t *)need(g, pre, "n_tokens")->data);
        double want = *(const float *)need(g, pre, "loss")->data, got = sum / (double)tokens;
        ck_assert_msg(fabs(got - want) <= 1e-4 * fabs(want), "%s %sloss %.8f vs transformers %.8f", fc->name, pre, got,
                      want);
    }
    lt_st_close(g);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- LoRA through PEFT: logits and gradients ------------------------------------------------------ */

static void compare_grads(const lt_adapter *a, const lt_st_file *f, const char *prefix, const char *what) {
    float *h = malloc(a->n_params * sizeof *h);
    a->model->be->ops->download(a->model->be, h, a->grads, a->n_params * sizeof *h);
    int n = 0;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&a->model->cfg, mods);
    for (int l = 0; l < a->model->cfg.num_hidden_layers; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first); /* a fused module: the whole A and B */
            if (!lo) continue;
            for (int isB = 0; isB < 2; isB++) {
                char key[256];
                snprintf(key, sizeof key, "%sbase_model.model.model.layers.%d.%s.%s.lora_%c.weight", prefix, l,
                         mods[q].parent, mods[q].name, isB ? 'B' : 'A');
                const lt_st_tensor *t = lt_st_find(f, key);
                ck_assert_msg(t, "%s: golden %s missing", what, key);
                const float *mine = h + ((isB ? lo->dB : lo->dA) - a->grads);
                double rel = tu_max_rel_err(mine, t->data, (size_t)t->numel);
                ck_assert_msg(rel <= 1e-4, "%s: %s differs by %.3g (tolerance 1e-4)", what, key, rel);
                n++;
            }
            if (lo->mag) { /* DoRA magnitude */
                char key[256];
                snprintf(key, sizeof key, "%sbase_model.model.model.layers.%d.%s.%s.lora_magnitude_vector", prefix, l,
                         mods[q].parent, mods[q].name);
                const lt_st_tensor *t = lt_st_find(f, key);
                ck_assert_msg(t, "%s: golden %s missing", what, key);
                double rel = tu_max_rel_err(h + (lo->dmag - a->grads), t->data, (size_t)t->numel);
                ck_assert_msg(rel <= 1e-4, "%s: %s differs by %.3g (tolerance 1e-4)", what, key, rel);
                n++;
            }
        }
    ck_assert_msg(n > 0, "%s: nothing compared", what);
    free(h);
}

/* the PEFT adapter in <model>/<sub>/adapter ("lora" or "dora") against <sub>/grads.safetensors */
static void check_adapter_gradients(const family_case *fc, const char *sub) {
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, fc->name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, fc->name, NULL);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/%s/adapter", dir, sub);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s: the adapter saved by peft: %s", fc->name,
                  lt_last_error());
    ck_assert_int_eq(a->p.use_dora, strcmp(sub, "dora") == 0);
    snprintf(path, sizeof path, "%s/%s/grads.safetensors", dir, sub);
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(path, 1, &g, &err) == LT_OK, "%s", err.msg);
    const int V = (int)m->cfg.vocab_size;
    for (int packed = 0; packed < 2; packed++) {
        const char *pre = packed ? "packed_" : "";
        lt_batch b;
        batch_of(&b, g, pre, packed);
        if (!packed) {
            const lt_st_tensor *ref = need(g, "", "logits");
            size_t n = (size_t)b.n_rows * b.seq_len * V;
            float *out = malloc(n * 4);
            ck_assert_int_eq(lt_model_logits(m, a, &b, out, n), LT_OK);
            double rel = tu_max_rel_err(out, ref->data, n);
            ck_assert_msg(rel <= 1e-4, "%s: logits with the PEFT %s adapter differ by %.3g", fc->name, sub, rel);
            free(out);
        }
        for (int ckpt = 0; ckpt < 2; ckpt++) {
            int64_t nv;
            lt_workspace *ws = NULL;
            ck_assert_int_eq(lt_workspace_create(m, b.n_rows, b.seq_len, a->p.rank, ckpt, &ws, &err), LT_OK);
            ck_assert_int_eq(lt_stage_batch(m, ws, &b, &nv, &err), LT_OK);
            m->be->ops->zero(m->be, a->grads, a->n_params * 4);
            double sum;
            ck_assert_msg(lt_forward_backward(m, a, ws, NULL, 1.0f / (float)nv, &sum, NULL, &err) == LT_OK, "%s",
                          err.msg);
            lt_workspace_free(ws);
            double want = *(const float *)need(g, pre, "loss")->data;
            ck_assert_msg(fabs(sum / nv - want) <= 1e-4 * fabs(want), "%s: %sloss %.8f vs torch %.8f", fc->name, pre,
                          sum / nv, want);
            char what[160];
            snprintf(what, sizeof what, "%s %s %sgradients (checkpointing %d)", fc->name, sub, pre, ckpt);
            compare_grads(a, g, packed ? "packed_grad." : "grad.", what);
        }
    }
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_family_lora_gradients) { check_adapter_gradients(&cases[_i], "lora"); }
END_TEST

START_TEST(test_dora_gradients) { check_adapter_gradients(&dora_cases[_i], "dora"); }
END_TEST

/* ---- generation ------------------------------------------------------------------------------------ *
 * Generation runs the training layer: a prefill of all prompts in one (B, T) pass that fills the KV
 * cache, then one token per row per pass against it. Checked on every family, with a LoRA and a DoRA
 * adapter: the prefill's and each decode's logits against the full forward; greedy generation against
 * the full forward's argmax, against transformers' own generate, and batched against one prompt at a
 * time. */

/* every model of make_family_models.py but phi4-mini (logits and LoRA gradients only); each has a lora/
 * and a dora/ adapter */
static const char *const gen_models[] = {"llama-dora",   "qwen2-swa", "qwen2-tied",  "mistral-swa",   "qwen3",
                                         "gemma",        "gemma2",    "phi3",        "phi3-longrope", "gemma3",
                                         "gemma3-nowin", "smollm3",   "smollm3-swa", "olmo2",         "granite"};
#define N_GEN ((int)(sizeof gen_models / sizeof *gen_models))

static lt_adapter *load_adapter(lt_model *m, const char *name, const char *sub) {
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, name);
    snprintf(path, sizeof path, "%s/%s/adapter", dir, sub);
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s %s: %s", name, sub, lt_last_error());
    return a;
}

/* ids (B, T) = the first n[b] tokens of rows[b] (stride S), right-padded with token 0 */
static void pad_rows(int32_t *ids, const int32_t *rows, int S, const int32_t *n, int B, int T) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) ids[b * T + t] = t < n[b] ? rows[b * S + t] : 0;
}

/* logits (B*T, V) of the full forward (lt_model_logits) of those padded rows */
static float *full_logits(lt_model *m, const lt_adapter *a, const int32_t *ids, int B, int T) {
    const size_t n = (size_t)B * T * m->cfg.vocab_size;
    float *lg = malloc(n * sizeof *lg);
    lt_batch b = tu_batch(ids, NULL, B, T);
    ck_assert_msg(lt_model_logits(m, a, &b, lg, n) == LT_OK, "%s", lt_model_last_error(m));
    return lg;
}

/* Prefill in one pass == the full forward at every prompt position of every row (prompts of 14, 6 and
 * 9 tokens, right-padded); then 5 decode passes, each == the full forward of the rows so far at each
 * row's last position. Tolerance: max |error| / max |reference| <= 1e-5 (prefill: the same ops on the
 * same rows; decode: attention over the cache sums in another order). For phi3-longrope every pass is
 * past original_max_position_embeddings (12): the long factors throughout, as the full forward picks. */
START_TEST(test_prefill_decode_logits) {
    const char *name = gen_models[_i / 2], *sub = _i % 2 ? "dora" : "lora";
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = load_adapter(m, name, sub);
    enum { B = 3, T = 14, D = 5, S = T + D };
    const int V = (int)m->cfg.vocab_size, L = (int)m->cfg.num_hidden_layers;
    int32_t rows[B * S], n[B] = {14, 6, 9}, ids[B * S];
    tu_fill_ids(rows, B * S, V, 77);
    lt_error err;
    lt_workspace *ws = NULL;
    lt_kv_cache *kv = NULL;
    ck_assert_int_eq(lt_workspace_create(m, B, T, a->p.rank, LT_WS_FORWARD, &ws, &err), LT_OK);
    ck_assert_int_eq(lt_kv_cache_create(m, B, S, T, &kv, &err), LT_OK);
    for (int l = 0; a->p.use_dora && l < L; l++) /* as lt_generate: the adapter is fixed, g computed once */
        for (int p = 0; p < P_COUNT; p++) lt_dora_prepare(m, a, l, (lt_proj)p);
    kv->dora_ready = 1;
    const float *inv_freq = m->inv_freq_long ? m->inv_freq_long : m->inv_freq; /* 14 > 12: long */
    pad_rows(ids, rows, S, n, B, T);
    float *lg = malloc((size_t)B * T * V * sizeof *lg);
    ck_assert_int_eq(lt_stage_cached(m, ws, kv, LT_KV_FILL, ids, n, B, T, inv_freq, &err), LT_OK);
    ck_assert_msg(lt_forward_cached(m, a, ws, kv, 1, lg, &err) == LT_OK, "%s", err.msg);
    float *ref = full_logits(m, a, ids, B, T);
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * T * V, cnt = (size_t)n[b] * V; /* the row's real positions */
        double rel = tu_max_rel_err(lg + off, ref + off, cnt);
        ck_assert_msg(rel <= 1e-5, "%s %s: prefill logits of row %d (%d tokens) differ from the full forward by %.3g",
                      name, sub, b, n[b], rel);
    }
    free(ref);
    for (int d = 0; d < D; d++) {
        int32_t next[B], Tn = 0;
        for (int b = 0; b < B; b++) {
            next[b] = rows[b * S + n[b]];
            n[b]++;
            Tn = n[b] > Tn ? n[b] : Tn;
        }
        ck_assert_int_eq(lt_stage_cached(m, ws, kv, LT_KV_DECODE, next, n, B, 1, inv_freq, &err), LT_OK);
        ck_assert_msg(lt_forward_cached(m, a, ws, kv, 0, lg, &err) == LT_OK, "%s", err.msg);
        pad_rows(ids, rows, S, n, B, Tn);
        ref = full_logits(m, a, ids, B, Tn);
        for (int b = 0; b < B; b++) {
            double rel = tu_max_rel_err(lg + (size_t)b * V, ref + ((size_t)b * Tn + n[b] - 1) * V, (size_t)V);
            ck_assert_msg(rel <= 1e-5, "%s %s: decode %d, row %d (position %d) differs from the full forward by %.3g",
                          name, sub, d, b, n[b] - 1, rel);
        }
        free(ref);
    }
    free(lg);
    lt_kv_cache_free(m, kv);
    lt_workspace_free(ws);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* Greedy generation of two prompts (3 and 7 tokens, 9 new: past every window) == the argmax of the full
 * forward of both rows so far at each step (tu_check_greedy). For phi3-longrope the batch switches to the
 * long factors with the longer row's 13th token (the 3-token row's own length never passes 12), as the
 * full forward of the padded rows does. */
static void check_generate(const char *name, const char *sub) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = load_adapter(m, name, sub);
    int32_t prompts[10] = {5, 17, 33, 2, 200, 7, 8, 9, 10, 11}, lens[2] = {3, 7};
    char what[96];
    snprintf(what, sizeof what, "%s %s", name, sub);
    tu_check_greedy(m, a, prompts, lens, 2, 9, what);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_generate_matches_forward) { check_generate(gen_models[_i / 2], _i % 2 ? "dora" : "lora"); }
END_TEST

/* Greedy generation == transformers' PeftModel.generate(do_sample=False) (goldens: <sub>/generate.safetensors,
 * each prompt alone; prompts of 3 and 14 tokens, 9 new tokens, crossing every window while decoding and
 * within the prompt; phi3-longrope adds a 7-token prompt that crosses original_max_position_embeddings
 * while decoding). Token for token: the goldens' prompts keep transformers' path at least 1e-3 away from
 * a tie between the two best logits. */
START_TEST(test_generate_matches_transformers) {
    const char *name = gen_models[_i / 2], *sub = _i % 2 ? "dora" : "lora";
    char dir[1024], path[1200];
    tu_model_dir(dir, sizeof dir, name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = load_adapter(m, name, sub);
    snprintf(path, sizeof path, "%s/%s/generate.safetensors", dir, sub);
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(path, 1, &g, &err) == LT_OK, "%s", err.msg);
    const lt_st_tensor *pl = need(g, "", "prompt_lens"), *want = need(g, "", "new_ids");
    const int32_t *prompt = need(g, "", "prompt_ids")->data, *lens = pl->data, *ref = want->data;
    const int n = (int)pl->numel, NEW = (int)want->shape[1];
    ck_assert_int_gt(n, 0);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = NEW;
    gp.eos_token_id = -1;
    int32_t *out = malloc((size_t)NEW * sizeof *out), out_len;
    for (int i = 0; i < n; prompt += lens[i], i++) {
        ck_assert_msg(lt_generate(m, a, prompt, &lens[i], 1, &gp, out, &out_len) == LT_OK, "%s",
                      lt_model_last_error(m));
        ck_assert_int_eq(out_len, NEW);
        for (int k = 0; k < NEW; k++)
            ck_assert_msg(out[k] == ref[i * NEW + k], "%s %s prompt of %d tokens, new token %d: %d, transformers %d",
                          name, sub, lens[i], k, out[k], ref[i * NEW + k]);
    }
    free(out);
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* A batch of prompts of different lengths (1, 3, 5 and 7 tokens; phi3-longrope: 13 to 16, all past
 * original_max_position_embeddings, where the long factors apply to each row alone as to the batch)
 * generates, row for row, the tokens each prompt generates alone. */
START_TEST(test_generate_batched_equals_single) {
    const char *name = gen_models[_i / 2], *sub = _i % 2 ? "dora" : "lora";
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, name, NULL);
    lt_adapter *a = load_adapter(m, name, sub);
    enum { B = 4, NEW = 9 };
    const int longrope = m->inv_freq_long != NULL;
    int32_t lens[B] = {3, 7, 1, 5}, prompts[64], out[B * NEW], out_lens[B], one[NEW], one_len;
    int total = 0;
    for (int b = 0; b < B; b++) total += lens[b] += longrope ? 12 : 0;
    tu_fill_ids(prompts, total, (int)m->cfg.vocab_size, 5);
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = NEW;
    gp.eos_token_id = -1;
    ck_assert_msg(lt_generate(m, a, prompts, lens, B, &gp, out, out_lens) == LT_OK, "%s", lt_model_last_error(m));
    for (int b = 0, off = 0; b < B; off += lens[b], b++) {
        ck_assert_int_eq(lt_generate(m, a, prompts + off, &lens[b], 1, &gp, one, &one_len), LT_OK);
        ck_assert_int_eq(out_lens[b], one_len);
        for (int k = 0; k < NEW; k++)
            ck_assert_msg(out[b * NEW + k] == one[k], "%s %s row %d (%d tokens) token %d: batched %d, alone %d", name,
                          sub, b, lens[b], k, out[b * NEW + k], one[k]);
    }
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- our files in PEFT / transformers ------------------------------------------------------------- */

static void check_roundtrip(const family_case *fc, const char *sub) {
    const char *py = tu_ref_python();
    char base[1024], path[1200];
    tu_model_dir(base, sizeof base, fc->name);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, fc->name, NULL);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/%s/adapter", base, sub);
    ck_assert_int_eq(lt_adapter_load(m, path, &a), LT_OK);
    char root[512], adir[600], mdir[600], lpath[600], cmd[4096];
    tu_tempdir(root, sizeof root);
    snprintf(adir, sizeof adir, "%s/adapter", root);
    snprintf(mdir, sizeof mdir, "%s/merged", root);
    snprintf(lpath, sizeof lpath, "%s/logits.safetensors", root);
    enum { B = 2, T = 12 };
    const int V = (int)m->cfg.vocab_size;
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    lt_batch b = tu_batch(ids, NULL, B, T);
    /* train it a little first: the files are those of an adapter trained here (every tensor moves) */
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.lr = 1e-2f;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    lt_trainer *tr = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &tr), LT_OK);
    float *before = malloc(a->n_params * 4), *after = malloc(a->n_params * 4);
    m->be->ops->download(m->be, before, a->params, a->n_params * 4);
    for (int k = 0; k < 2; k++) {
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(tr, &b, &r) == LT_OK, "%s", lt_trainer_last_error(tr));
    }
    m->be->ops->download(m->be, after, a->params, a->n_params * 4);
    size_t moved = 0;
    for (size_t i = 0; i < a->n_params; i++) moved += before[i] != after[i];
    ck_assert_msg(moved > a->n_params / 2, "%s %s: training moved only %zu of %zu parameters", fc->name, sub, moved,
                  a->n_params);
    free(before);
    free(after);
    lt_trainer_free(tr);
    lt_optimizer_free(o);
    ck_assert_int_eq(lt_adapter_save(a, adir), LT_OK);
    ck_assert_msg(lt_adapter_export_merged(a, mdir, 0) == LT_OK, "%s", lt_adapter_last_error(a));
    float *lg = malloc((size_t)B * T * V * 4);
    ck_assert_int_eq(lt_model_logits(m, a, &b, lg, (size_t)B * T * V), LT_OK);
    lt_st_entry e[2] = {{.name = "input_ids", .dtype = LT_DT_I32, .ndim = 2, .shape = {B, T}, .data = ids},
                        {.name = "logits", .dtype = LT_DT_F32, .ndim = 3, .shape = {B, T, V}, .data = lg}};
    lt_error err;
    ck_assert_int_eq(lt_st_write(lpath, e, 2, NULL, &err), LT_OK);
    free(lg);
    snprintf(cmd, sizeof cmd,
             "%s %s/tests/python/check_peft_roundtrip.py --model %s --adapter %s --logits %s "
             "--merged %s --tol 1e-4 2>&1",
             py, LT_SOURCE_DIR, base, adir, lpath, mdir);
    int status;
    char *out = tu_run_capture(cmd, &status, 0);
    ck_assert_msg(status == 0, "%s %s: PEFT/transformers rejected our files:\n%s", fc->name, sub, out);
    free(out);
    /* merge / unmerge in place: the merged base alone gives the adapter's logits, unmerge restores */
    float *lm = malloc((size_t)B * T * V * 4), *lb = malloc((size_t)B * T * V * 4),
          *lb2 = malloc((size_t)B * T * V * 4);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, lb, (size_t)B * T * V), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a, &b, lg = malloc((size_t)B * T * V * 4), (size_t)B * T * V), LT_OK);
    ck_assert_msg(lt_adapter_merge(a) == LT_OK, "%s", lt_adapter_last_error(a));
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, lm, (size_t)B * T * V), LT_OK);
    double rel = tu_max_rel_err(lm, lg, (size_t)B * T * V);
    ck_assert_msg(rel <= 1e-4, "%s %s: merged logits differ from the adapter's by %.3g", fc->name, sub, rel);
    ck_assert_int_eq(lt_adapter_unmerge(a), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, lb2, (size_t)B * T * V), LT_OK);
    rel = tu_max_rel_err(lb2, lb, (size_t)B * T * V);
    ck_assert_msg(rel <= 1e-4, "%s %s: unmerge does not restore the base (%.3g)", fc->name, sub, rel);
    free(lm);
    free(lb);
    free(lb2);
    free(lg);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_family_peft_roundtrip) { check_roundtrip(&cases[_i], "lora"); }
END_TEST

START_TEST(test_dora_peft_roundtrip) { check_roundtrip(&dora_cases[_i], "dora"); }
END_TEST

/* a new DoRA adapter: magnitude = row norms of W, so it starts as the identity; it trains */
START_TEST(test_dora_create_identity) {
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "phi3", NULL);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.alpha = 8;
    ap.use_dora = 1;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    enum { B = 1, T = 9 };
    const int V = (int)m->cfg.vocab_size;
    int32_t ids[B * T];
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)((i * 31 + 7) % V);
    lt_batch b = tu_batch(ids, NULL, B, T);
    float *l0 = malloc((size_t)T * V * 4), *l1 = malloc((size_t)T * V * 4);
    ck_assert_int_eq(lt_model_logits(m, NULL, &b, l0, (size_t)T * V), LT_OK);
    ck_assert_int_eq(lt_model_logits(m, a, &b, l1, (size_t)T * V), LT_OK);
    ck_assert_msg(tu_max_rel_err(l1, l0, (size_t)T * V) <= 1e-5, "a fresh DoRA adapter changes the logits");
    free(l0);
    free(l1);
    lt_adapter_free(a);
    ap.dropout = 0.1f; /* DoRA needs dropout 0 */
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ap.dropout = 0;
    ap.targets = LT_TARGET_Q | LT_TARGET_O; /* q alone is a third of qkv_proj */
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- the command line: info names the family, train --method dora writes a DoRA adapter ----------- */

START_TEST(test_cli_family_and_dora) {
    char model[1024], data[1100], root[512], cmd[4096], path[700];
    tu_model_dir(model, sizeof model, "phi3");
    tu_tempdir(root, sizeof root);
    int status;
    snprintf(cmd, sizeof cmd, "%s info --model %s --json", LT_CLI, model);
    char *out = tu_run_capture(cmd, &status, 0);
    ck_assert_msg(status == 0 && strstr(out, "\"family\": \"Phi3\""), "info: %s", out);
    free(out);
    /* a small JSONL of token ids inside the vocabulary */
    snprintf(data, sizeof data, "%s/data.jsonl", root);
    FILE *f = fopen(data, "w");
    ck_assert_ptr_nonnull(f);
    for (int r = 0; r < 6; r++) {
        fprintf(f, "{\"input_ids\": [");
        for (int t = 0; t < 10; t++) fprintf(f, "%s%d", t ? ", " : "", (r * 37 + t * 11) % 250);
        fprintf(f, "]}\n");
    }
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s --out %s/dora --method dora --targets qkv_proj,gate_up_proj "
             "--rank 4 --steps 2 --batch 2 --lr 1e-2 --quiet",
             LT_CLI, model, data, root);
    out = tu_run_capture(cmd, &status, 1);
    ck_assert_msg(status == 0, "train --method dora: %s", out);
    free(out);
    lt_context *ctx = tu_context();
    lt_model *m = tu_load_model(ctx, "phi3", NULL);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/dora/adapter", root);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(a->p.use_dora, 1);
    ck_assert_ptr_nonnull(lt_adapter_lora(a, 0, P_V)->mag);
    ck_assert_ptr_null(lt_adapter_lora(a, 0, P_O));
    lt_adapter_free(a);
    snprintf(cmd, sizeof cmd,
             "%s train --model %s --data %s --out %s/bad --method dora --dropout 0.1 --steps 1 --quiet", LT_CLI, model,
             data, root);
    out = tu_run_capture(cmd, &status, 1);
    ck_assert_msg(status != 0 && strstr(out, "DoRA"), "DoRA with dropout must be refused: %s", out);
    free(out);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- configuration ---------------------------------------------------------------------------------- */

START_TEST(test_unknown_architecture) {
    const char *cfg = "{\"architectures\": [\"FalconForCausalLM\"], \"vocab_size\": 10, \"hidden_size\": 8, "
                      "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2}";
    lt_model_config c;
    lt_error err;
    lt_error_clear(&err);
    ck_assert_int_eq(lt_config_parse(cfg, strlen(cfg), "config.json", &c, &err), LT_ERR_ARCH);
    ck_assert_msg(strstr(err.msg, "FalconForCausalLM") != NULL, "%s", err.msg);
    const char *fams[] = {"LlamaForCausalLM",   "Qwen2ForCausalLM",  "Qwen3ForCausalLM",  "MistralForCausalLM",
                          "GemmaForCausalLM",   "Gemma2ForCausalLM", "Phi3ForCausalLM",   "Gemma3ForCausalLM",
                          "SmolLM3ForCausalLM", "Olmo2ForCausalLM",  "GraniteForCausalLM"};
    for (size_t i = 0; i < sizeof fams / sizeof *fams; i++)
        ck_assert_msg(strstr(err.msg, fams[i]) != NULL, "the message does not list %s: %s", fams[i], err.msg);
}
END_TEST

/* family defaults and sliding-window derivation follow the transformers config classes */
START_TEST(test_family_config_rules) {
    lt_model_config c;
    lt_error err;
    const char *base = "\"vocab_size\": 10, \"hidden_size\": 64, \"intermediate_size\": 16, "
                       "\"num_hidden_layers\": 4, \"num_attention_heads\": 2";
    char buf[1024];
    /* Qwen2: biases on q, k, v; no window unless use_sliding_window; then layers >= max_window_layers */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"Qwen2ForCausalLM\"], %s, \"sliding_window\": 8}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_uint_eq(c.bias_mask, 0x7u);
    ck_assert_int_eq(c.sliding_window, 0);
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"Qwen2ForCausalLM\"], %s, \"sliding_window\": 8, "
             "\"use_sliding_window\": true, \"max_window_layers\": 2}",
             base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.sliding_window, 8);
    ck_assert_int_eq(c.layer_sliding[1], 0);
    ck_assert_int_eq(c.layer_sliding[2], 1);
    ck_assert_int_eq(c.n_sliding_layers, 2);
    /* Mistral: absent sliding_window is MistralConfig's 4096, null is none */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"MistralForCausalLM\"], %s}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.sliding_window, 4096);
    ck_assert_int_eq(c.n_sliding_layers, 4);
    snprintf(buf, sizeof buf, "{\"architectures\": [\"MistralForCausalLM\"], %s, \"sliding_window\": null}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.sliding_window, 0);
    /* Qwen3: head_dim defaults to 128, q/k norms */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"Qwen3ForCausalLM\"], %s}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.qk_norm, 1);
    /* Gemma: legacy "gelu" means tanh; tied by default; sqrt(hidden) scale; (1 + w) norms */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"GemmaForCausalLM\"], %s, \"hidden_act\": \"gelu\"}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.activation, LT_ACT_GELU_TANH);
    ck_assert_int_eq(c.tie_word_embeddings, 1);
    ck_assert(c.embed_scale == 8.0);
    ck_assert(c.norm_offset == 1.0f);
    /* Gemma 3: Gemma3TextConfig's defaults: sliding_window_pattern 6 (the 6th layer is global), global theta
     * 1e6 and local 1e4, rope_scaling for the global layers only, no soft-capping, per-head (1 + w) q/k norms */
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"Gemma3ForCausalLM\"], \"vocab_size\": 10, \"hidden_size\": 64, "
             "\"intermediate_size\": 16, \"num_hidden_layers\": 7, \"num_attention_heads\": 2, "
             "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8.0}}");
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.sliding_window, 4096);
    ck_assert_int_eq(c.layer_sliding[4], 1);
    ck_assert_int_eq(c.layer_sliding[5], 0);
    ck_assert_int_eq(c.layer_sliding[6], 1);
    ck_assert_int_eq(c.layer_rope[5], LT_LAYER_ROPE_GLOBAL);
    ck_assert_int_eq(c.layer_rope[6], LT_LAYER_ROPE_LOCAL);
    ck_assert(c.rope_theta == 1e6 && c.rope_local_theta == 1e4);
    ck_assert_int_eq(c.rope_type, LT_ROPE_LINEAR);
    ck_assert(c.rope_factor == 8.0);
    ck_assert(c.attn_logit_softcapping == 0 && c.final_logit_softcapping == 0);
    ck_assert(c.query_pre_attn_scalar == 256 && c.sandwich_norms == 1 && c.qk_norm == LT_QK_NORM_HEAD);
    ck_assert_int_eq(c.head_dim, 256);
    /* SmolLM3: every 4th layer is NoPE; theta 2e6; tied; mlp_bias read */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"SmolLM3ForCausalLM\"], %s, \"mlp_bias\": true}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert_int_eq(c.layer_rope[2], LT_LAYER_ROPE_GLOBAL);
    ck_assert_int_eq(c.layer_rope[3], LT_LAYER_ROPE_NONE);
    ck_assert(c.rope_theta == 2e6);
    ck_assert_int_eq(c.tie_word_embeddings, 1);
    ck_assert_uint_eq(c.bias_mask, 0x70u);
    ck_assert_int_eq(c.sliding_window, 0);
    /* OLMo 2: eps 1e-5, post-norms only, q/k norms over the projection */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"Olmo2ForCausalLM\"], %s}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert(c.rms_norm_eps == 1e-5 && c.no_pre_norms == 1 && c.sandwich_norms == 1);
    ck_assert_int_eq(c.qk_norm, LT_QK_NORM_FULL);
    /* Granite: the multipliers default to 1 and must be positive */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"GraniteForCausalLM\"], %s}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_OK);
    ck_assert(c.embed_scale == 1 && c.residual_multiplier == 1 && c.attention_multiplier == 1 && c.logits_scaling == 1);
    snprintf(buf, sizeof buf, "{\"architectures\": [\"GraniteForCausalLM\"], %s, \"logits_scaling\": 0}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "logits_scaling") != NULL, "%s", err.msg);
    /* Llama keeps silu only */
    snprintf(buf, sizeof buf, "{\"architectures\": [\"LlamaForCausalLM\"], %s, \"hidden_act\": \"gelu\"}", base);
    ck_assert_int_eq(lt_config_parse(buf, strlen(buf), "c", &c, &err), LT_ERR_UNSUPPORTED);
}
END_TEST

Suite *families_suite(void);

Suite *families_suite(void) {
    Suite *s = suite_create("families");
    TCase *tc = tcase_create("transformers");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_family_logits, 0, N_CASES);
    tcase_add_loop_test(tc, test_family_lora_gradients, 0, N_CASES);
    tcase_add_loop_test(tc, test_prefill_decode_logits, 0, 2 * N_GEN);
    tcase_add_loop_test(tc, test_generate_matches_transformers, 0, 2 * N_GEN);
    tcase_add_loop_test(tc, test_generate_batched_equals_single, 0, 2 * N_GEN);
    tcase_add_loop_test(tc, test_family_peft_roundtrip, 0, N_ROUNDTRIP);
    tcase_add_loop_test(tc, test_dora_gradients, 0, N_DORA);
    tcase_add_loop_test(tc, test_dora_peft_roundtrip, 0, N_DORA_ROUNDTRIP);
    tcase_add_test(tc, test_dora_create_identity);
    tcase_add_test(tc, test_cli_family_and_dora);
    tcase_add_test(tc, test_unknown_architecture);
    tcase_add_test(tc, test_family_config_rules);
    suite_add_tcase(s, tc);
    /* generation: also run under ThreadSanitizer (tests/tsan.sh runs CK_RUN_CASE=generate) */
    tc = tcase_create("generate");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_generate_matches_forward, 0, 2 * N_GEN);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(families_suite)
