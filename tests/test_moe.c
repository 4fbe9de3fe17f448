/*
 * test_moe.c - mixture-of-experts families (Qwen3-MoE, Mixtral) against transformers' and peft's own classes:
 * logits, loss and the load-balancing loss; LoRA gradients on attention and on the experts (PEFT's
 * target_parameters), with and without checkpointing (and with the first layers' activations kept); greedy
 * generation; our adapter loading in PeftModel; QLoRA on experts, in f32 and in bf16 (a bf16 base).
 *
 * Goldens: tests/python/make_moe_models.py writes LT_TEST_DATA_DIR/models/<name>/ (random checkpoints saved
 * by transformers: 5 / 7 / 9 experts, top-2 / top-1 / top-4, norm_topk_prob off and on, dense layers by
 * mlp_only_layers and decoder_sparse_step, skewed routers leaving experts without a token; gpt-oss with
 * attention sinks, alternating sliding / full layers, YaRN, biased router and experts, clamped SwiGLU).
 * Tolerance 1e-4 relative (max abs error over max abs reference), as in test_families.c.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"
#include "loratune_experimental.h"
#include "test_util.h"
#include "train/optimizer.h"

static const char *const models[] = {"qwen3moe-e5k2", "qwen3moe-e7k1", "qwen3moe-e9k4", "mixtral-e3k2",
                                     "mixtral-e6k1",  "gptoss-e5k2",   "gptoss-e3k1",   "gptoss-e7k4"};
#define N_MODELS ((int)(sizeof models / sizeof *models))
/* the models before this index are Qwen3-MoE and Mixtral (tcase "qwen3moe"), the others gpt-oss ("gptoss") */
#define N_QWEN_MIXTRAL 5

static lt_model *load_model(lt_context *ctx, const char *name, char *dir, size_t len) {
    snprintf(dir, len, "%s/models/%s", LT_TEST_DATA_DIR, name);
    lt_model *m = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, NULL, &m) == LT_OK, "%s: %s", name, lt_last_error());
    return m;
}

static lt_st_file *open_golden(const char *dir, const char *file) {
    char path[1600];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    lt_error err;
    lt_st_file *g = NULL;
    ck_assert_msg(lt_st_open(path, 1, &g, &err) == LT_OK, "%s", err.msg);
    return g;
}

static const lt_st_tensor *need(const lt_st_file *f, const char *key) {
    const lt_st_tensor *t = lt_st_find(f, key);
    ck_assert_msg(t, "golden tensor %s missing", key);
    return t;
}

static void batch_of(lt_batch *b, const lt_st_file *g) {
    const lt_st_tensor *ids = need(g, "input_ids");
    lt_batch_init(b, sizeof *b);
    b->n_rows = (int)ids->shape[0];
    b->seq_len = (int)ids->shape[1];
    b->input_ids = ids->data;
    b->labels = need(g, "labels")->data;
}

/* one forward (and backward with grad_scale != 0) of the golden batch; returns loss_sum / n, *aux the
 * workspace's load-balancing loss. ckpt 0: every layer keeps its activations; 1: checkpointing (every
 * layer recomputed in the backward); 2: checkpointing with the first layer's activations kept
 * (activation_memory), the others recomputed. */
static double run(lt_model *m, lt_adapter *a, const lt_batch *b, int ckpt, int backward, double *aux) {
    lt_error err;
    lt_workspace *ws = NULL;
    int64_t nv;
    const int L = (int)m->cfg.num_hidden_layers;
    ck_assert_int_eq(lt_workspace_create_kept(m, b->n_rows, b->seq_len, a ? a->p.rank : 0,
                                              ckpt ? LT_WS_CHECKPOINT : LT_WS_FULL,
                                              ckpt == 0   ? L
                                              : ckpt == 2 ? 1
                                                          : 0,
                                              &ws, &err),
                     LT_OK);
    ck_assert_int_eq(ws->n_kept, ckpt == 0 ? L : ckpt == 2 ? 1 : 0);
    ck_assert_int_eq(lt_stage_batch(m, ws, b, &nv, &err), LT_OK);
    double sum;
    ck_assert_msg(lt_forward_backward(m, a, ws, NULL, backward ? 1.0f / (float)nv : 0.0f, &sum, NULL, &err) == LT_OK,
                  "%s", err.msg);
    *aux = ws->aux_loss;
    lt_workspace_free(ws);
    return sum / (double)nv;
}

/* Base model: logits, loss (CE + router_aux_loss_coef * aux with output_router_logits) and aux. */
START_TEST(test_moe_logits_loss_aux) {
    char dir[1024];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, models[_i], dir, sizeof dir);
    ck_assert_int_gt(m->cfg.n_moe_layers, 0);
    lt_st_file *g = open_golden(dir, "golden.safetensors");
    lt_batch b;
    batch_of(&b, g);
    const int V = (int)m->cfg.vocab_size;
    const lt_st_tensor *ref = need(g, "logits");
    size_t n = (size_t)b.n_rows * b.seq_len * V;
    float *out = malloc(n * sizeof *out);
    ck_assert_msg(lt_model_logits(m, NULL, &b, out, n) == LT_OK, "%s", lt_model_last_error(m));
    double rel = tu_max_rel_err(out, ref->data, n);
    ck_assert_msg(rel <= 1e-4, "%s logits: max error %.3g relative (tolerance 1e-4)", models[_i], rel);
    free(out);
    double aux, loss = run(m, NULL, &b, 0, 0, &aux);
    double want = *(const float *)need(g, "loss")->data, want_aux = *(const float *)need(g, "aux_loss")->data;
    ck_assert_msg(fabs(loss - want) <= 1e-4 * fabs(want), "%s loss %.8f vs transformers %.8f", models[_i], loss, want);
    ck_assert_msg(fabs(aux - want_aux) <= 1e-4 * fabs(want_aux), "%s aux_loss %.8f vs transformers %.8f", models[_i],
                  aux, want_aux);
    /* the RoPE table (YaRN for gpt-oss) as transformers computes it in float32, and the factor on cos / sin */
    const lt_st_tensor *inv = need(g, "inv_freq");
    ck_assert_int_eq(inv->numel, m->rot_dim / 2);
    float *mine = malloc((size_t)inv->numel * sizeof *mine);
    m->be->ops->download(m->be, mine, m->inv_freq, (size_t)inv->numel * sizeof *mine);
    const double rel_f = tu_max_rel_err(mine, inv->data, (size_t)inv->numel);
    ck_assert_msg(rel_f <= 1e-6, "%s inv_freq differs from transformers' by %.3g relative", models[_i], rel_f);
    const float want_s = *(const float *)need(g, "attention_scaling")->data;
    ck_assert_msg(fabsf(m->rope_mscale - want_s) <= 1e-6f * want_s, "%s attention scaling %.8f vs transformers %.8f",
                  models[_i], m->rope_mscale, want_s);
    free(mine);
    lt_st_close(g);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ours (E, out, r) -> PEFT's (out, r * E), expert e's column j at j * E + e (written independently of
 * peft.c's conversion); interleaved (gpt-oss's gate_up): PEFT's row 2i is our gate row i, 2i + 1 our up row i */
static void to_peft_b(float *dst, const float *src, int E, int out, int r, int interleaved) {
    for (int e = 0; e < E; e++)
        for (int o = 0; o < out; o++) {
            const int po = interleaved ? (o < out / 2 ? 2 * o : 2 * (o - out / 2) + 1) : o;
            for (int j = 0; j < r; j++)
                dst[(size_t)po * r * E + (size_t)j * E + e] = src[((size_t)e * out + o) * r + j];
        }
}

static int compare_grads(const lt_adapter *a, const lt_st_file *f, const char *what) {
    const lt_model_config *c = &a->model->cfg;
    float *h = malloc(a->n_params * sizeof *h), *tmp = malloc(a->n_params * sizeof *h);
    a->model->be->ops->download(a->model->be, h, a->grads, a->n_params * sizeof *h);
    int n = 0;
    char key[256];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        for (int q = 0; q < P_COUNT; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)q);
            if (!lo) continue;
            for (int isB = 0; isB < 2; isB++) {
                snprintf(key, sizeof key, "grad.base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l,
                         lt_proj_parent[q], lt_proj_names[q], isB ? 'B' : 'A');
                const lt_st_tensor *t = need(f, key);
                double rel = tu_max_rel_err(h + ((isB ? lo->dB : lo->dA) - a->grads), t->data, (size_t)t->numel);
                ck_assert_msg(rel <= 1e-4, "%s: %s differs by %.3g (tolerance 1e-4)", what, key, rel);
                n++;
            }
        }
        const int both = (a->p.targets & LT_TARGET_EXPERTS) == LT_TARGET_EXPERTS;
        for (int k = 0; k < 2; k++) {
            lt_lora *lo = lt_adapter_elora(a, l, k);
            if (!lo) continue;
            int in, o;
            lt_elora_dims(c, k, &in, &o);
            for (int isB = 0; isB < 2; isB++) {
                snprintf(key, sizeof key, "grad.base_model.model.model.layers.%d.mlp.experts.%slora_%c.weight", l,
                         both && k == 0 ? "base_layer." : "", isB ? 'B' : 'A');
                const lt_st_tensor *t = need(f, key);
                const float *mine = h + (lo->dA - a->grads);
                if (isB) {
                    to_peft_b(tmp, h + (lo->dB - a->grads), (int)c->num_experts, o, a->p.rank,
                              k == 0 && c->arch == LT_ARCH_GPT_OSS);
                    mine = tmp;
                }
                ck_assert_int_eq(t->numel, (int64_t)c->num_experts * a->p.rank * (isB ? o : in));
                double rel = tu_max_rel_err(mine, t->data, (size_t)t->numel);
                ck_assert_msg(rel <= 1e-4, "%s: %s differs by %.3g (tolerance 1e-4)", what, key, rel);
                n++;
            }
        }
    }
    free(h);
    free(tmp);
    return n;
}

/* The adapter saved by peft (attention target_modules, expert target_parameters): logits, loss, aux and
 * every LoRA gradient, without checkpointing, with it, and with it keeping the first layer's activations. */
START_TEST(test_moe_lora_gradients) {
    char dir[1024], path[1200];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, models[_i], dir, sizeof dir);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s: the adapter saved by peft: %s", models[_i],
                  lt_last_error());
    ck_assert_msg(a->p.targets & LT_TARGET_EXPERTS, "%s: no expert LoRA loaded", models[_i]);
    snprintf(path, sizeof path, "%s/lora", dir);
    lt_st_file *g = open_golden(path, "grads.safetensors");
    lt_batch b;
    batch_of(&b, g);
    const int V = (int)m->cfg.vocab_size;
    size_t n = (size_t)b.n_rows * b.seq_len * V;
    float *out = malloc(n * 4);
    ck_assert_int_eq(lt_model_logits(m, a, &b, out, n), LT_OK);
    double rel = tu_max_rel_err(out, need(g, "logits")->data, n);
    ck_assert_msg(rel <= 1e-4, "%s: logits with the PEFT adapter differ by %.3g", models[_i], rel);
    free(out);
    ck_assert_int_gt(m->cfg.num_hidden_layers, 1); /* ckpt 2 keeps some layers and recomputes others */
    for (int ckpt = 0; ckpt < 3; ckpt++) {
        m->be->ops->zero(m->be, a->grads, a->n_params * 4);
        double aux, loss = run(m, a, &b, ckpt, 1, &aux);
        double want = *(const float *)need(g, "loss")->data, want_aux = *(const float *)need(g, "aux_loss")->data;
        ck_assert_msg(fabs(loss - want) <= 1e-4 * fabs(want), "%s: loss %.8f vs torch %.8f", models[_i], loss, want);
        ck_assert_msg(fabs(aux - want_aux) <= 1e-4 * fabs(want_aux), "%s: aux %.8f vs torch %.8f", models[_i], aux,
                      want_aux);
        char what[160];
        snprintf(what, sizeof what, "%s gradients (checkpointing %d)", models[_i], ckpt);
        ck_assert_int_gt(compare_grads(a, g, what), 0);
    }
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* The router trained on request (PEFT modules_to_save ["gate"], gpt-oss ["router"], next to the LoRA): the
 * adapter saved by peft (its router copies differ from the base's) gives PEFT's logits, loss and aux loss, and
 * every gradient, the routers' included (softmax, top-k, renormalisation and, with output_router_logits, the
 * aux loss; gpt-oss: the router's bias too), within 1e-4, with and without checkpointing. Models e5k2 (top-2,
 * no renormalisation), Mixtral e3k2 and gpt-oss e5k2 (top-2 renormalised, biased router), each with the aux
 * loss in the loss (their config) and without (output_router_logits off: grads_noaux). */
static const int router_models[] = {0, 3, 5};

START_TEST(test_moe_router_gradients) {
    char dir[1024], path[1200], key[256];
    lt_context *ctx = tu_context();
    const char *name = models[router_models[_i / 2]];
    const int with_aux = _i % 2 == 0;
    lt_model *m = load_model(ctx, name, dir, sizeof dir);
    lt_model_config *c = &m->cfg;
    ck_assert(c->output_router_logits && c->router_aux_loss_coef > 0);
    c->output_router_logits = with_aux;
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/router/adapter", dir);
    ck_assert_msg(lt_adapter_load(m, path, &a) == LT_OK, "%s: %s", name, lt_last_error());
    ck_assert_uint_eq(a->p.modules_to_save, LT_SAVE_ROUTER);
    snprintf(path, sizeof path, "%s/router", dir);
    lt_st_file *g = open_golden(path, with_aux ? "grads.safetensors" : "grads_noaux.safetensors");
    lt_batch b;
    batch_of(&b, g);
    const size_t n = (size_t)b.n_rows * b.seq_len * c->vocab_size;
    float *out = malloc(n * 4);
    ck_assert_int_eq(lt_model_logits(m, a, &b, out, n), LT_OK);
    double rel = tu_max_rel_err(out, need(g, "logits")->data, n);
    ck_assert_msg(rel <= 1e-4, "%s: logits with the trained routers differ by %.3g", name, rel);
    free(out);
    float *h = malloc((size_t)c->num_experts * c->hidden_size * 4);
    ck_assert((a->router_bias != NULL) == (c->arch == LT_ARCH_GPT_OSS));
    for (int ckpt = 0; ckpt < 3; ckpt++) {
        m->be->ops->zero(m->be, a->grads, a->n_params * 4);
        double aux, loss = run(m, a, &b, ckpt, 1, &aux);
        double want = *(const float *)need(g, "loss")->data, want_aux = *(const float *)need(g, "aux_loss")->data;
        ck_assert_msg(fabs(loss - want) <= 1e-4 * fabs(want), "%s: loss %.8f vs torch %.8f", name, loss, want);
        ck_assert_msg(fabs(aux - want_aux) <= 1e-4 * fabs(want_aux), "%s: aux %.8f vs torch %.8f", name, aux, want_aux);
        char what[160];
        snprintf(what, sizeof what, "%s gradients (%s aux loss, checkpointing %d)", name, with_aux ? "with" : "without",
                 ckpt);
        ck_assert_int_gt(compare_grads(a, g, what), 0);
        int n_router = 0;
        for (int l = 0; l < c->num_hidden_layers; l++) {
            if (!c->layer_moe[l]) {
                ck_assert_ptr_null(a->router[l]);
                continue;
            }
            for (int bias = 0; bias < (a->router_bias ? 2 : 1); bias++) { /* the weight; gpt-oss: its bias */
                snprintf(key, sizeof key, "grad.base_model.model.model.layers.%d.mlp.%s.%s", l, lt_moe_router_name(c),
                         bias ? "bias" : "weight");
                const lt_st_tensor *t = need(g, key);
                ck_assert_int_eq(t->numel, (int64_t)c->num_experts * (bias ? 1 : c->hidden_size));
                m->be->ops->download(m->be, h, bias ? a->d_router_bias[l] : a->d_router[l], (size_t)t->numel * 4);
                rel = tu_max_rel_err(h, t->data, (size_t)t->numel);
                ck_assert_msg(rel <= 1e-4, "%s: %s differs by %.3g (tolerance 1e-4)", what, key, rel);
                n_router++;
            }
        }
        ck_assert_int_eq(n_router, (a->router_bias ? 2 : 1) * c->n_moe_layers);
    }
    free(h);
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* Greedy generation (KV cache, one token per row per pass, each pass routed) == PeftModel.generate. */
START_TEST(test_moe_generate_matches_transformers) {
    char dir[1024], path[1200];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, models[_i], dir, sizeof dir);
    lt_adapter *a = NULL;
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_int_eq(lt_adapter_load(m, path, &a), LT_OK);
    snprintf(path, sizeof path, "%s/lora", dir);
    lt_st_file *g = open_golden(path, "generate.safetensors");
    const lt_st_tensor *pl = need(g, "prompt_lens"), *want = need(g, "new_ids");
    const int32_t *prompt = need(g, "prompt_ids")->data, *lens = pl->data, *ref = want->data;
    const int np = (int)pl->numel, NEW = (int)want->shape[1];
    lt_generate_params gp;
    lt_generate_params_init(&gp, sizeof gp);
    gp.max_new_tokens = NEW;
    gp.eos_token_id = -1;
    int32_t *out = malloc((size_t)NEW * sizeof *out), out_len;
    for (int i = 0; i < np; prompt += lens[i], i++) {
        ck_assert_msg(lt_generate(m, a, prompt, &lens[i], 1, &gp, out, &out_len) == LT_OK, "%s",
                      lt_model_last_error(m));
        ck_assert_int_eq(out_len, NEW);
        for (int k = 0; k < NEW; k++)
            ck_assert_msg(out[k] == ref[i * NEW + k], "%s prompt of %d tokens, new token %d: %d, transformers %d",
                          models[_i], lens[i], k, out[k], ref[i * NEW + k]);
    }
    free(out);
    lt_st_close(g);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* b = rows x T tokens ids (filled: (i * 7919 + 13) mod V) */
static void id_batch(lt_batch *b, int32_t *ids, int rows, int T, int V) {
    for (int i = 0; i < rows * T; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    lt_batch_init(b, sizeof *b);
    b->n_rows = rows;
    b->seq_len = T;
    b->input_ids = ids;
}

/* `steps` SFT updates of a on b with an optimizer of `kind` (lr 1e-2); returns the optimizer (its state). */
static lt_optimizer *train_steps(lt_model *m, lt_adapter *a, lt_optimizer_kind kind, const lt_batch *b, int steps) {
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = kind;
    op.lr = 1e-2f;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    lt_trainer *tr = NULL;
    ck_assert_int_eq(lt_trainer_create(m, a, o, &tp, &tr), LT_OK);
    for (int k = 0; k < steps; k++) {
        lt_step_result r = {.size = sizeof r};
        ck_assert_msg(lt_trainer_step(tr, b, &r) == LT_OK, "%s", lt_trainer_last_error(tr));
        ck_assert(r.updated);
    }
    lt_trainer_free(tr);
    return o;
}

/* A LoRA we create on attention and experts, trained two steps, saved: PeftModel loads it and gives our
 * logits, and the merged export loads in transformers with the same logits
 * (tests/python/check_peft_roundtrip.py, 1e-4); the adapter loads back here bit for bit. */
/* one Python round trip per case (the CI budget): Qwen3-MoE both expert kinds, down only; Mixtral both;
 * gpt-oss both (fused (in, out) experts in the merged export, gate / up alternating) */
static const int roundtrip_models[] = {0, 1, 3, 5};

START_TEST(test_moe_peft_roundtrip) {
    const char *py = getenv("LORATUNE_REF_PYTHON");
    if (!py || !*py) {
        fprintf(stderr, "test_moe_peft_roundtrip: skipped (LORATUNE_REF_PYTHON not set)\n");
        return;
    }
    char dir[1024], root[512], adir[700], mdir[700], lpath[700], cmd[4096];
    lt_context *ctx = tu_context();
    const int i = roundtrip_models[_i];
    lt_model *m = load_model(ctx, models[i], dir, sizeof dir);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.alpha = 8;
    ap.targets = LT_TARGET_Q | LT_TARGET_V | LT_TARGET_O | (i == 1 ? LT_TARGET_EXPERTS_DOWN : LT_TARGET_EXPERTS);
    /* the routers trained too (PEFT modules_to_save "gate", gpt-oss "router": weight and bias) */
    ap.modules_to_save = i == 1 ? 0 : LT_SAVE_ROUTER;
    ap.seed = 7;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    tu_tempdir(root, sizeof root);
    snprintf(adir, sizeof adir, "%s/adapter", root);
    snprintf(lpath, sizeof lpath, "%s/logits.safetensors", root);
    snprintf(mdir, sizeof mdir, "%s/merged", root);
    enum { B = 2, T = 12 };
    const int V = (int)m->cfg.vocab_size;
    int32_t ids[B * T];
    lt_batch b;
    id_batch(&b, ids, B, T, V);
    lt_optimizer_free(train_steps(m, a, LT_OPT_ADAMW, &b, 2));
    ck_assert_int_eq(lt_adapter_save(a, adir), LT_OK);
    ck_assert_msg(lt_adapter_export_merged(a, mdir, 0) == LT_OK, "%s", lt_adapter_last_error(a));
    float *lg = malloc((size_t)B * T * V * 4);
    ck_assert_int_eq(lt_model_logits(m, a, &b, lg, (size_t)B * T * V), LT_OK);
    if (!ap.modules_to_save) { /* merged in place (experts too), the model alone gives the adapter's logits */
        ck_assert_msg(lt_adapter_merge(a) == LT_OK, "%s", lt_adapter_last_error(a));
        float *lm = malloc((size_t)B * T * V * 4);
        ck_assert_int_eq(lt_model_logits(m, NULL, &b, lm, (size_t)B * T * V), LT_OK);
        double rel = tu_max_rel_err(lm, lg, (size_t)B * T * V);
        ck_assert_msg(rel <= 1e-5, "%s: logits of the model merged in place differ by %.3g", models[i], rel);
        free(lm);
        ck_assert_int_eq(lt_adapter_unmerge(a), LT_OK);
    } else {
        ck_assert_int_eq(lt_adapter_merge(a), LT_ERR_UNSUPPORTED); /* a trained router: export instead */
    }
    lt_st_entry e[2] = {{.name = "input_ids", .dtype = LT_DT_I32, .ndim = 2, .shape = {B, T}, .data = ids},
                        {.name = "logits", .dtype = LT_DT_F32, .ndim = 3, .shape = {B, T, V}, .data = lg}};
    lt_error err;
    ck_assert_int_eq(lt_st_write(lpath, e, 2, NULL, &err), LT_OK);
    free(lg);
    snprintf(
        cmd, sizeof cmd,
        "%s %s/tests/python/check_peft_roundtrip.py --model %s --adapter %s --logits %s --merged %s --tol 1e-4 2>&1",
        py, LT_SOURCE_DIR, dir, adir, lpath, mdir);
    int status;
    char *outs = tu_run_capture(cmd, &status, 0);
    ck_assert_msg(status == 0, "%s: PEFT rejected our adapter:\n%s", models[i], outs);
    free(outs);
    /* and it loads back here with the same tensors */
    lt_adapter *a2 = NULL;
    ck_assert_msg(lt_adapter_load(m, adir, &a2) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(a2->p.targets, a->p.targets);
    ck_assert_int_eq((int64_t)a2->n_params, (int64_t)a->n_params);
    float *p1 = malloc(a->n_params * 4), *p2 = malloc(a->n_params * 4);
    m->be->ops->download(m->be, p1, a->params, a->n_params * 4);
    m->be->ops->download(m->be, p2, a2->params, a->n_params * 4);
    ck_assert_int_eq(memcmp(p1, p2, a->n_params * 4), 0);
    free(p1);
    free(p2);
    lt_adapter_free(a2);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* The adapter saved by peft in dir/lora/adapter loaded onto m0 and m1, and its golden batch; returns the goldens
 * (dir/lora/grads.safetensors, which the batch points into). */
static lt_st_file *adapters_and_batch(const char *dir, lt_model *m0, lt_adapter **a0, lt_model *m1, lt_adapter **a1,
                                      lt_batch *b) {
    char path[1200];
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_int_eq(lt_adapter_load(m0, path, a0), LT_OK);
    ck_assert_int_eq(lt_adapter_load(m1, path, a1), LT_OK);
    snprintf(path, sizeof path, "%s/lora", dir);
    lt_st_file *g = open_golden(path, "grads.safetensors");
    batch_of(b, g);
    return g;
}

/* QLoRA on experts: loaded with NF4 + double quantization, every expert (and attention projection) is
 * quantized and multiplied through dequantized tiles; its logits and LoRA gradients equal those of the
 * f32 model made of the dequantized weights (lt_model_save writes them), within 1e-4. */
START_TEST(test_moe_qlora_experts) {
    char dir[1024], root[512], fdir[700];
    lt_context *ctx = tu_context();
    snprintf(dir, sizeof dir, "%s/models/%s", LT_TEST_DATA_DIR, models[_i]);
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = LT_QUANT_NF4;
    mp.double_quant = 1;
    lt_model *mq = NULL, *mf = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, &mp, &mq) == LT_OK, "%s", lt_last_error());
    const lt_model_config *c = &mq->cfg;
    lt_model_info info = {.size = sizeof info};
    ck_assert_int_eq(lt_model_get_info(mq, &info), LT_OK);
    int64_t want = 0; /* every projection's and expert's elements */
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int q = 0; q < P_COUNT; q++) {
            int in, o;
            lt_proj_dims(c, (lt_proj)q, &in, &o);
            want += c->layer_moe[l] && q >= P_GATE ? 0 : (int64_t)in * o;
        }
    want += (int64_t)c->n_moe_layers * c->num_experts * 3 * c->moe_intermediate_size * c->hidden_size;
    ck_assert_int_eq(info.quantized_params, want);
    tu_tempdir(root, sizeof root);
    snprintf(fdir, sizeof fdir, "%s/dequantized", root);
    ck_assert_msg(lt_model_save(mq, fdir) == LT_OK, "%s", lt_model_last_error(mq));
    ck_assert_msg(lt_model_load(ctx, fdir, NULL, &mf) == LT_OK, "%s", lt_last_error());
    lt_adapter *aq = NULL, *af = NULL;
    lt_batch b;
    lt_st_file *g = adapters_and_batch(dir, mq, &aq, mf, &af, &b);
    double aux, lq = run(mq, aq, &b, 0, 1, &aux), lf = run(mf, af, &b, 0, 1, &aux);
    ck_assert_msg(fabs(lq - lf) <= 1e-4 * fabs(lf), "%s: QLoRA loss %.8f vs its dequantized f32 model %.8f", models[_i],
                  lq, lf);
    float *gq = malloc(aq->n_params * 4), *gf = malloc(af->n_params * 4);
    mq->be->ops->download(mq->be, gq, aq->grads, aq->n_params * 4);
    mf->be->ops->download(mf->be, gf, af->grads, af->n_params * 4);
    double rel = tu_max_rel_err(gq, gf, aq->n_params);
    ck_assert_msg(rel <= 1e-4, "%s: QLoRA gradients differ from the dequantized f32 model's by %.3g", models[_i], rel);
    free(gq);
    free(gf);
    lt_st_close(g);
    lt_adapter_free(aq);
    lt_adapter_free(af);
    lt_model_free(mq);
    lt_model_free(mf);
    lt_context_free(ctx);
}
END_TEST

/* ||a - b|| / ||b|| over n values */
static double rel_l2(const float *a, const float *b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(d / r);
}

/* A LoRA step on a bf16 base (attention, experts, embedding and LM head in bf16; the experts' bf16 products
 * run side by side in run_groups, each on one thread) against the f32 step of the same checkpoint (which is
 * PEFT's: test_moe_lora_gradients): the loss within 5e-3 relative and all the LoRA gradients together within
 * 0.1 relative in the L2 norm. Measured: loss at most 3.6e-4, gradients at most 5.0e-2 (qwen3moe-e5k2, whose
 * skewed router has near ties; the others at most 1.8e-2): the bf16 rounding of weights and activations, 2^-8
 * each, through the layers. Element-wise it is larger (up to 0.2 of a tensor's largest value): a token whose
 * top-k flips under the rounding moves its experts' gradients by O(1). A lost accumulation in the bf16
 * backward gives 0.18-0.55. And the same bits whatever thread runs which
 * expert: the bf16 step repeated on 2 threads, and on 1 thread, gives the identical loss and gradients (an
 * expert's products never split over threads; the dense products split by whole columns). */
START_TEST(test_moe_bf16_step) {
    char dir[1024];
    lt_context *ctx = tu_context();
    ck_assert_int_eq(lt_context_set_threads(ctx, 2), LT_OK);
    snprintf(dir, sizeof dir, "%s/models/%s", LT_TEST_DATA_DIR, models[_i]);
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.base_dtype = LT_BASE_BF16;
    lt_model *m = NULL, *m32 = load_model(ctx, models[_i], dir, sizeof dir);
    ck_assert_msg(lt_model_load(ctx, dir, &mp, &m) == LT_OK, "%s", lt_last_error());
    int l0 = 0;
    while (!m->cfg.layer_moe[l0]) l0++;
    ck_assert_int_eq(lt_expert_w(&m->layers[l0], 0, P_UP)->format, LT_WEIGHT_BF16);
    lt_adapter *a = NULL, *a32 = NULL;
    lt_batch b;
    lt_st_file *g = adapters_and_batch(dir, m, &a, m32, &a32, &b);
    const size_t n = a->n_params;
    ck_assert_int_eq(a32->n_params, n);
    float *g32 = malloc(n * 4), *g0 = malloc(n * 4), *g1 = malloc(n * 4);
    double aux;
    const double l32 = run(m32, a32, &b, 0, 1, &aux);
    m32->be->ops->download(m32->be, g32, a32->grads, n * 4);
    double loss0 = 0;
    for (int k = 0; k < 3; k++) { /* 2 threads, 2 threads again, 1 thread */
        if (k == 2) ck_assert_int_eq(lt_context_set_threads(ctx, 1), LT_OK);
        m->be->ops->zero(m->be, a->grads, n * 4);
        const double loss = run(m, a, &b, 0, 1, &aux);
        m->be->ops->download(m->be, k ? g1 : g0, a->grads, n * 4);
        if (k == 0) {
            const double rel = rel_l2(g0, g32, n);
            fprintf(stderr, "test_moe: %s: bf16 base vs f32 step: loss rel err %.3g, gradients %.3g (L2)\n", models[_i],
                    fabs(loss - l32) / fabs(l32), rel);
            ck_assert_msg(fabs(loss - l32) <= 5e-3 * fabs(l32), "%s: bf16 base: loss %.6f vs f32 %.6f", models[_i],
                          loss, l32);
            ck_assert_msg(rel <= 0.1, "%s: bf16 base: LoRA gradients differ from the f32 step's by %.3g (L2)",
                          models[_i], rel);
            loss0 = loss;
            continue;
        }
        ck_assert_msg(loss == loss0, "%s: bf16 base: loss %.9g, then %.9g (%d threads)", models[_i], loss0, loss,
                      k == 1 ? 2 : 1);
        ck_assert_msg(!memcmp(g0, g1, n * 4),
                      "%s: bf16 base: the gradients change from one run to the next (%d threads)", models[_i],
                      k == 1 ? 2 : 1);
    }
    free(g32);
    free(g0);
    free(g1);
    lt_st_close(g);
    lt_adapter_free(a);
    lt_adapter_free(a32);
    lt_model_free(m);
    lt_model_free(m32);
    lt_context_free(ctx);
}
END_TEST

/* A bf16 base (base_dtype LT_BASE_BF16): the experts are stored in bf16 like the projections, and with
 * NF4 (QLoRA computed in bf16) the 4-bit experts are multiplied in bf16 (gemm_q4). (1) The NF4 + bf16
 * model is the bf16-base model of its dequantized weights: the same bf16 values of every weight, the
 * same f32 router and so the same routing; loss within 1e-5 and LoRA gradients within 1e-4 relative
 * (summation order of different kernels), as test_qlora's test_qlora_bf16_compute. (2) The bf16 cost,
 * which is bf16 rounding of weights and activations (2^-8 relative each): the bf16 base of the original
 * weights against the fp32 transformers + PEFT loss, and the NF4 model computed in bf16 against the same
 * NF4 model computed in f32 (the goldens are of the unquantized model: NF4 itself moves the loss by ~1%).
 * Measured: at most 3.6e-4 relative; tolerance 5e-3, as test_qlora (a transposed or unrounded expert
 * gives O(1)). */
START_TEST(test_moe_bf16_base) {
    char dir[1024], path[1200], root[512], ddir[700];
    lt_context *ctx = tu_context();
    snprintf(dir, sizeof dir, "%s/models/%s", LT_TEST_DATA_DIR, models[_i]);
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = LT_QUANT_NF4;
    mp.double_quant = 0;
    lt_model *mq32 = NULL, *mq = NULL, *mb = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, &mp, &mq32) == LT_OK, "%s", lt_last_error());
    tu_tempdir(root, sizeof root);
    snprintf(ddir, sizeof ddir, "%s/dequantized", root);
    ck_assert_msg(lt_model_save(mq32, ddir) == LT_OK, "%s", lt_model_last_error(mq32));
    mp.base_dtype = LT_BASE_BF16;
    ck_assert_msg(lt_model_load(ctx, dir, &mp, &mq) == LT_OK, "%s", lt_last_error());
    lt_model_params bp;
    lt_model_params_init(&bp, sizeof bp);
    bp.base_dtype = LT_BASE_BF16;
    ck_assert_msg(lt_model_load(ctx, ddir, &bp, &mb) == LT_OK, "%s", lt_last_error());
    int l0 = 0;
    while (!mq->cfg.layer_moe[l0]) l0++;
    ck_assert_int_eq(lt_expert_w(&mq->layers[l0], 0, P_DOWN)->format, LT_WEIGHT_QUANT);
    ck_assert_int_eq(lt_expert_w(&mb->layers[l0], 0, P_DOWN)->format, LT_WEIGHT_BF16);
    lt_adapter *aq = NULL, *ab = NULL;
    lt_batch b;
    lt_st_file *g = adapters_and_batch(dir, mq, &aq, mb, &ab, &b);
    double aux, lq = run(mq, aq, &b, 0, 1, &aux), lb = run(mb, ab, &b, 0, 1, &aux);
    const double ref = *(const float *)need(g, "loss")->data;
    ck_assert_msg(fabs(lq - lb) <= 1e-5 * fabs(lb), "%s: NF4 in bf16: loss %.8f vs the bf16 dequantized model %.8f",
                  models[_i], lq, lb);
    float *gq = malloc(aq->n_params * 4), *gb = malloc(ab->n_params * 4);
    mq->be->ops->download(mq->be, gq, aq->grads, aq->n_params * 4);
    mb->be->ops->download(mb->be, gb, ab->grads, ab->n_params * 4);
    double rel = tu_max_rel_err(gq, gb, aq->n_params);
    ck_assert_msg(rel <= 1e-4, "%s: NF4 in bf16: gradients differ from the bf16 dequantized model's by %.3g",
                  models[_i], rel);
    lt_model *m16 = NULL; /* (2) */
    lt_adapter *a16 = NULL, *a32 = NULL;
    ck_assert_msg(lt_model_load(ctx, dir, &bp, &m16) == LT_OK, "%s", lt_last_error());
    ck_assert_int_eq(lt_expert_w(&m16->layers[l0], 0, P_GATE)->format, LT_WEIGHT_BF16);
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    ck_assert_int_eq(lt_adapter_load(m16, path, &a16), LT_OK);
    ck_assert_int_eq(lt_adapter_load(mq32, path, &a32), LT_OK);
    const double l16 = run(m16, a16, &b, 0, 1, &aux), lq32 = run(mq32, a32, &b, 0, 1, &aux);
    fprintf(stderr,
            "test_moe: %s: bf16 base vs fp32 transformers + PEFT: loss rel err %.3g; NF4 in bf16 vs in f32: %.3g\n",
            models[_i], fabs(l16 - ref) / fabs(ref), fabs(lq - lq32) / fabs(lq32));
    ck_assert_msg(fabs(l16 - ref) <= 5e-3 * fabs(ref), "%s: bf16 base: loss %.6f vs torch %.6f", models[_i], l16, ref);
    ck_assert_msg(fabs(lq - lq32) <= 5e-3 * fabs(lq32), "%s: NF4 in bf16: loss %.6f vs in f32 %.6f", models[_i], lq,
                  lq32);
    lt_adapter_free(a16);
    lt_adapter_free(a32);
    lt_model_free(m16);
    lt_model_free(mq32);
    free(gq);
    free(gb);
    lt_st_close(g);
    lt_adapter_free(aq);
    lt_adapter_free(ab);
    lt_model_free(mq);
    lt_model_free(mb);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    ck_assert_int_eq(system(cmd), 0);
    lt_context_free(ctx);
}
END_TEST

/* What a LoRA on experts refuses: a model without experts, DoRA, dropout (PEFT's target_parameters neither);
 * modules_to_save gate (the router) on a model without experts. */
START_TEST(test_moe_adapter_rules) {
    char dir[1024];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, models[0], dir, sizeof dir);
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.targets = LT_TARGET_EXPERTS;
    ap.use_dora = 1;
    lt_adapter *a = NULL;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ap.use_dora = 0;
    ap.dropout = 0.1f;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_UNSUPPORTED);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(lt_last_error(), "DoRA") || strstr(lt_last_error(), "dropout"), "%s", lt_last_error());
    lt_model_free(m);
    /* a dense model has no router to train */
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    char path[1200];
    snprintf(path, sizeof path, "%s/models/llama-basic", LT_TEST_DATA_DIR);
    ck_assert_msg(lt_model_load(ctx, path, &mp, &m) == LT_OK, "%s", lt_last_error());
    lt_adapter_params_init(&ap, sizeof ap);
    ap.modules_to_save = LT_SAVE_ROUTER;
    ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_ERR_ARGUMENT);
    ck_assert_msg(strstr(lt_last_error(), "gate"), "%s", lt_last_error());
    ck_assert_ptr_null(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* Full fine-tuning of an MoE model (router and every expert trained; PyTorch: tests/python/crosscheck_full.py):
 * the trained tensors are named as the checkpoint names them, and 8-bit AdamW takes each layer's experts as
 * bitsandbytes takes torch's fused parameters: one tensor of E x 2 MI x H (gate_up_proj, expert-major) and
 * one of E x H x MI (down_proj), blocks of 256 running across the experts; the router (E x H) its own. */
START_TEST(test_moe_full_finetune_layout) {
    char dir[1024];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, models[0], dir, sizeof dir);
    const lt_model_config *c = &m->cfg;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    int32_t ids[2 * 8];
    lt_batch b;
    id_batch(&b, ids, 2, 8, (int)c->vocab_size);
    lt_optimizer *o = train_steps(m, a, LT_OPT_ADAMW8BIT, &b, 1); /* the 8-bit state exists after an update */
    const size_t E = (size_t)c->num_experts, H = (size_t)c->hidden_size, MI = (size_t)c->moe_intermediate_size;
    int n_checked = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (!c->layer_moe[l]) continue;
        char nm[3][96];
        snprintf(nm[0], sizeof nm[0], "model.layers.%d.mlp.gate.weight", l);
        snprintf(nm[1], sizeof nm[1], "model.layers.%d.mlp.experts.0.gate_proj.weight", l);
        snprintf(nm[2], sizeof nm[2], "model.layers.%d.mlp.experts.0.down_proj.weight", l);
        const size_t want[3] = {E * H, E * 2 * MI * H, E * H * MI};
        for (int k = 0; k < 3; k++) {
            const lt_ptensor *t = NULL;
            for (int i = 0; i < a->n_ptensors && !t; i++)
                if (!strcmp(a->ptensors[i].name, nm[k])) t = &a->ptensors[i];
            ck_assert_msg(t, "no trained tensor %s", nm[k]);
            const lt_opt8_tensor *q = NULL;
            for (int i = 0; i < o->n_all && !q; i++)
                if (o->all[i].off == t->off) q = &o->all[i];
            ck_assert_msg(q, "%s starts no optimizer tensor", nm[k]);
            ck_assert_msg(q->n == want[k], "%s: optimizer tensor of %zu elements, torch's parameter has %zu", nm[k],
                          q->n, want[k]);
            ck_assert_int_eq(q->q8, want[k] >= 4096);
            n_checked++;
        }
    }
    ck_assert_int_eq(n_checked, 3 * c->n_moe_layers);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* ---- 8-bit AdamW in bitsandbytes' blocks: tests/python/make_moe_models.py (optim8_goldens) steps each torch
 * parameter (PEFT's lora_A / lora_B of the experts, gpt-oss's fused gate_up_proj (E, H, 2I) and down_proj
 * (E, I, H) and their biases) with its float32 reference of bitsandbytes' kernel over the parameter's
 * flattened storage. We load the same start, take each step's gradient saved as that start is saved (a PEFT
 * adapter, a model directory: read into our layout by the loaders), step, and must land on the saved result
 * bit for bit (tolerance 0, as the dense goldens of test_optim8.c): each 256-block holds bitsandbytes'
 * elements only when our state runs in torch's order. */
#define OPTIM8_STEPS 3 /* make_moe_models.py OPTIM8_STEPS: lr 2e-3, betas (0.9, 0.999), eps 1e-8, decay 0.01 */

/* the trainable values of directory dir read into our layout: a PEFT adapter, or (full) a model directory
 * as a full fine-tuning takes it; n floats into host */
static void optim8_read(lt_context *ctx, lt_model *m, const char *dir, int full, float *host, size_t n) {
    lt_model *gm = m;
    lt_adapter *ga = NULL;
    if (full) {
        ck_assert_msg(lt_model_load(ctx, dir, NULL, &gm) == LT_OK, "%s: %s", dir, lt_last_error());
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.full_finetune = 1;
        ck_assert_msg(lt_adapter_create(gm, &ap, &ga) == LT_OK, "%s", lt_last_error());
    } else {
        ck_assert_msg(lt_adapter_load(m, dir, &ga) == LT_OK, "%s: %s", dir, lt_last_error());
    }
    ck_assert_uint_eq(ga->n_params, n);
    gm->be->ops->download(gm->be, host, ga->params, n * sizeof(float));
    lt_adapter_free(ga);
    if (gm != m) lt_model_free(gm);
}

static void optim8_case(const char *model, int full) {
    char dir[1024], sub[1400];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, model, dir, sizeof dir);
    lt_adapter *a = NULL;
    if (full) {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.full_finetune = 1;
        ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    } else {
        snprintf(sub, sizeof sub, "%s/optim8/lora/p0", dir);
        ck_assert_msg(lt_adapter_load(m, sub, &a) == LT_OK, "%s: %s", sub, lt_last_error());
        ck_assert(a->p.targets & LT_TARGET_EXPERTS);
    }
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    op.kind = LT_OPT_ADAMW8BIT;
    op.lr = 2e-3f;
    op.weight_decay = 0.01f;
    op.max_grad_norm = 0;
    lt_optimizer *o = NULL;
    ck_assert_int_eq(lt_optimizer_create(a, &op, &o), LT_OK);
    int n_torch_order = 0; /* the case must have 8-bit tensors whose order is not ours */
    for (int i = 0; i < o->n_all; i++) n_torch_order += o->all[i].q8 && o->all[i].order.nd > 0;
    ck_assert_int_gt(n_torch_order, 0);
    const size_t n = a->n_params;
    float *host = malloc(n * sizeof *host), *want = malloc(n * sizeof *want);
    lt_backend *be = m->be;
    for (int t = 1; t <= OPTIM8_STEPS; t++) {
        snprintf(sub, sizeof sub, "%s/optim8/%s/g%d", dir, full ? "full" : "lora", t);
        optim8_read(ctx, m, sub, full, host, n);
        be->ops->upload(be, a->grads, host, n * sizeof(float));
        double gn, lr;
        lt_error err;
        ck_assert_msg(lt_optimizer_update(o, &gn, &lr, &err) == LT_OK, "%s", err.msg);
    }
    snprintf(sub, sizeof sub, "%s/optim8/%s/want", dir, full ? "full" : "lora");
    optim8_read(ctx, m, sub, full, want, n);
    be->ops->download(be, host, a->params, n * sizeof(float));
    size_t n_bad = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&host[i], &want[i], sizeof(float)) != 0 && n_bad++ == 0) worst = i;
    ck_assert_msg(n_bad == 0,
                  "%s %s: %zu of %zu parameters differ from bitsandbytes' after %d steps (first: %zu, %.9g, "
                  "want %.9g)",
                  model, full ? "full" : "lora", n_bad, n, OPTIM8_STEPS, worst, (double)host[worst],
                  (double)want[worst]);
    /* its state file says the order: it loads back byte for byte; the same file marked as written before
     * (flags 0: the state in our order) is refused, naming why, and leaves the state as it was */
    char tmp[512], path[600];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(path, sizeof path, "%s/opt8.bin", tmp);
    ck_assert_int_eq(lt_optimizer_save(o, path), LT_OK);
    uint8_t *c1 = malloc(o->n_q8), *c1_back = malloc(o->n_q8);
    be->ops->download(be, c1, o->c1, o->n_q8);
    ck_assert_int_eq(lt_optimizer_load(o, path), LT_OK);
    be->ops->download(be, c1_back, o->c1, o->n_q8);
    ck_assert(memcmp(c1, c1_back, o->n_q8) == 0);
    FILE *f = fopen(path, "r+b");
    const uint32_t zero = 0;
    ck_assert(f && fseek(f, 12, SEEK_SET) == 0 && fwrite(&zero, 4, 1, f) == 1);
    fclose(f);
    ck_assert_int_eq(lt_optimizer_load(o, path), LT_ERR_FORMAT);
    ck_assert_msg(strstr(lt_optimizer_last_error(o), "older libloratune"), "%s", lt_optimizer_last_error(o));
    be->ops->download(be, c1_back, o->c1, o->n_q8);
    ck_assert(memcmp(c1, c1_back, o->n_q8) == 0);
    tu_rm_rf(tmp);
    free(c1);
    free(c1_back);
    free(host);
    free(want);
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}

START_TEST(test_moe_adamw8bit_lora_experts) { optim8_case(_i == 0 ? "qwen3moe-e5k2" : "gptoss-e5k2", 0); }
END_TEST

START_TEST(test_gptoss_adamw8bit_full) { optim8_case("gptoss-e5k2", 1); }
END_TEST

/* Full fine-tuning of gpt-oss (its training against PyTorch: tests/python/crosscheck_full.py): every weight of the
 * model is a trained tensor (their sizes add up to the model's parameter count), the sinks, the router's bias and
 * the experts' biases among them, in Hugging Face Trainer's weight-decay groups (get_decay_parameter_names: a name
 * with "bias" or a norm takes none; the sinks, the router's and the experts' weights do), the decayed first;
 * 8-bit AdamW's state per torch parameter (its size, 8-bit or not). */
START_TEST(test_gptoss_full_finetune_layout) {
    char dir[1024];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, "gptoss-e5k2", dir, sizeof dir);
    const int L = (int)m->cfg.num_hidden_layers;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.full_finetune = 1;
    lt_adapter *a = NULL;
    ck_assert_msg(lt_adapter_create(m, &ap, &a) == LT_OK, "%s", lt_last_error());
    int64_t total = 0;
    int n_sinks = 0, n_router_bias = 0, n_expert_bias = 0;
    for (int i = 0; i < a->n_ptensors; i++) {
        const lt_ptensor *t = &a->ptensors[i];
        const int decay = !strstr(t->name, "bias") && !strstr(t->name, "norm");
        ck_assert_msg(t->decay == decay, "%s: weight decay %d, Hugging Face's Trainer: %d", t->name, t->decay, decay);
        ck_assert_msg(decay ? t->off + t->n <= a->n_decay : t->off >= a->n_decay, "%s on the wrong side of n_decay",
                      t->name);
        n_sinks += strstr(t->name, "self_attn.sinks") != NULL;
        n_router_bias += strstr(t->name, "mlp.router.bias") != NULL;
        n_expert_bias +=
            strstr(t->name, "mlp.experts.gate_up_proj_bias") || strstr(t->name, "mlp.experts.down_proj_bias");
        total += (int64_t)t->n;
    }
    ck_assert_int_eq(n_sinks, L);
    ck_assert_int_eq(n_router_bias, L);
    ck_assert_int_eq(n_expert_bias, 2 * L);
    ck_assert_int_eq(total, m->n_params);
    /* 8-bit AdamW keeps one state per torch parameter of layer 0's MLP: its size, 8-bit from 4096 elements
     * (bitsandbytes' min_8bit_size) (their order, torch's, is test_gptoss_adamw8bit_full's) */
    int32_t ids[2 * 8];
    lt_batch b;
    id_batch(&b, ids, 2, 8, (int)m->cfg.vocab_size);
    lt_optimizer *o = train_steps(m, a, LT_OPT_ADAMW8BIT, &b, 1);
    const size_t E = (size_t)m->cfg.num_experts, H = (size_t)m->cfg.hidden_size,
                 MI = (size_t)m->cfg.moe_intermediate_size;
    static const char *const names[] = {"mlp.router.weight",
                                        "mlp.router.bias",
                                        "mlp.experts.0.gate_proj.weight",
                                        "mlp.experts.0.down_proj.weight",
                                        "mlp.experts.gate_up_proj_bias",
                                        "mlp.experts.down_proj_bias",
                                        "self_attn.sinks"};
    const size_t want[] = {E * H, E, E * 2 * MI * H, E * MI * H, E * 2 * MI, E * H, (size_t)m->cfg.num_attention_heads};
    for (int k = 0; k < 7; k++) {
        char nm[96];
        snprintf(nm, sizeof nm, "model.layers.0.%s", names[k]);
        const lt_ptensor *t = NULL;
        for (int i = 0; i < a->n_ptensors && !t; i++)
            if (!strcmp(a->ptensors[i].name, nm)) t = &a->ptensors[i];
        ck_assert_msg(t, "no trained tensor %s", nm);
        const lt_opt8_tensor *q = NULL;
        for (int i = 0; i < o->n_all && !q; i++)
            if (o->all[i].off == t->off) q = &o->all[i];
        ck_assert_msg(q && q->n == want[k], "%s: optimizer tensor of %zu elements, torch's parameter has %zu", nm,
                      q ? q->n : 0, want[k]);
        ck_assert_int_eq(q->q8, want[k] >= 4096);
    }
    lt_optimizer_free(o);
    lt_adapter_free(a);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* gpt-oss with MXFP4 experts (the release checkpoints' layout), dequantized on load: logits and loss of
 * transformers loading the same file with Mxfp4Config(dequantize=True), 1e-4. */
START_TEST(test_gptoss_mxfp4) {
    char dir[1024];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, "gptoss-mxfp4", dir, sizeof dir);
    lt_st_file *g = open_golden(dir, "golden.safetensors");
    lt_batch b;
    batch_of(&b, g);
    const size_t n = (size_t)b.n_rows * b.seq_len * m->cfg.vocab_size;
    float *out = malloc(n * sizeof *out);
    ck_assert_msg(lt_model_logits(m, NULL, &b, out, n) == LT_OK, "%s", lt_model_last_error(m));
    const double rel = tu_max_rel_err(out, need(g, "logits")->data, n);
    ck_assert_msg(rel <= 1e-4, "gptoss-mxfp4 logits: max error %.3g relative (tolerance 1e-4)", rel);
    free(out);
    double aux, loss = run(m, NULL, &b, 0, 0, &aux), want = *(const float *)need(g, "loss")->data;
    ck_assert_msg(fabs(loss - want) <= 1e-4 * fabs(want), "gptoss-mxfp4 loss %.8f vs transformers %.8f", loss, want);
    lt_st_close(g);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

/* GptOssConfig's defaults (configuration_gpt_oss.py) from a config.json that gives only the sizes */
START_TEST(test_gptoss_config_defaults) {
    static const char cfg[] = "{\"architectures\": [\"GptOssForCausalLM\"], \"vocab_size\": 10, \"hidden_size\": 64, "
                              "\"intermediate_size\": 16, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
                              "\"num_key_value_heads\": 2}";
    lt_model_config c;
    lt_error err;
    lt_error_clear(&err);
    ck_assert_msg(lt_config_parse(cfg, sizeof cfg - 1, "config.json", &c, &err) == LT_OK, "%s", err.msg);
    ck_assert_int_eq(c.arch, LT_ARCH_GPT_OSS);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert(c.attn_sinks && c.moe_bias && c.num_experts == 128 && c.num_experts_per_tok == 4 && c.norm_topk_prob);
    ck_assert_int_eq(c.moe_intermediate_size, 16);
    ck_assert_int_eq(c.n_moe_layers, 4);
    ck_assert_uint_eq(c.bias_mask, 0xFu); /* attention_bias true: q, k, v, o */
    ck_assert(c.swiglu_alpha == 1.702 && c.swiglu_limit == 7.0 && c.rms_norm_eps == 1e-5);
    ck_assert(c.rope_theta == 150000.0 && c.rope_type == LT_ROPE_YARN && c.rope_factor == 32.0);
    ck_assert(c.rope_beta_fast == 32.0 && c.rope_beta_slow == 1.0 && !c.rope_truncate);
    ck_assert_int_eq(c.rope_original_max_position_embeddings, 4096);
    ck_assert(fabs(c.rope_attention_factor - (0.1 * log(32.0) + 1.0)) < 1e-12);
    ck_assert_int_eq(c.sliding_window, 128);
    for (int l = 0; l < 4; l++) ck_assert_int_eq(c.layer_sliding[l], l % 2 == 0); /* sliding, full, ... */
}
END_TEST

/* gpt-oss: the GGUF export of a model whose clamped SwiGLU differs from llama.cpp's hard-coded one is refused
 * naming it (test_gguf and crosscheck_gguf cover the export itself); rope_type yarn is refused on another family. */
START_TEST(test_gptoss_refusals) {
    char dir[1024], root[512], out[700];
    lt_context *ctx = tu_context();
    lt_model *m = load_model(ctx, "gptoss-e5k2", dir, sizeof dir);
    ck_assert_int_eq(m->cfg.arch, LT_ARCH_GPT_OSS);
    tu_tempdir(root, sizeof root);
    snprintf(out, sizeof out, "%s/model.gguf", root);
    lt_gguf_params gp;
    lt_gguf_params_init(&gp, sizeof gp);
    ck_assert_int_eq(lt_model_export_gguf(m, NULL, out, &gp), LT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(lt_model_last_error(m), "swiglu_limit 7"), "%s", lt_model_last_error(m));
    lt_model_free(m);
    static const char cfg[] = "{\"architectures\": [\"LlamaForCausalLM\"], \"rope_scaling\": {\"rope_type\": \"yarn\", "
                              "\"factor\": 4, \"original_max_position_embeddings\": 64}}";
    lt_model_config c;
    lt_error err;
    lt_error_clear(&err);
    ck_assert_int_eq(lt_config_parse(cfg, sizeof cfg - 1, "config.json", &c, &err), LT_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "yarn"), "%s", err.msg);
    lt_context_free(ctx);
}
END_TEST

Suite *moe_suite(void) {
    Suite *s = suite_create("moe");
    TCase *tc = tcase_create("qwen3moe"); /* Qwen3-MoE and Mixtral */
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_moe_logits_loss_aux, 0, N_QWEN_MIXTRAL);
    tcase_add_loop_test(tc, test_moe_lora_gradients, 0, N_QWEN_MIXTRAL);
    tcase_add_loop_test(tc, test_moe_router_gradients, 0, 4); /* router_models 0, 1: Qwen3-MoE, Mixtral */
    tcase_add_loop_test(tc, test_moe_generate_matches_transformers, 0, N_QWEN_MIXTRAL);
    tcase_add_loop_test(tc, test_moe_peft_roundtrip, 0, 3);
    tcase_add_loop_test(tc, test_moe_qlora_experts, 0, N_QWEN_MIXTRAL);
    tcase_add_loop_test(tc, test_moe_bf16_base, 0, N_QWEN_MIXTRAL);
    tcase_add_loop_test(tc, test_moe_bf16_step, 0, N_QWEN_MIXTRAL);
    tcase_add_test(tc, test_moe_adapter_rules);
    tcase_add_test(tc, test_moe_full_finetune_layout);
    tcase_add_loop_test(tc, test_moe_adamw8bit_lora_experts, 0, 1);
    suite_add_tcase(s, tc);
    TCase *go = tcase_create("gptoss"); /* gpt-oss (CK_RUN_CASE=gptoss runs these alone) */
    tcase_set_timeout(go, 600);
    tcase_add_loop_test(go, test_moe_logits_loss_aux, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_loop_test(go, test_moe_lora_gradients, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_loop_test(go, test_moe_generate_matches_transformers, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_loop_test(go, test_moe_peft_roundtrip, 3, 4);
    tcase_add_loop_test(go, test_moe_router_gradients, 4, 6); /* router_models 2: gpt-oss */
    tcase_add_loop_test(go, test_moe_qlora_experts, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_loop_test(go, test_moe_bf16_base, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_loop_test(go, test_moe_bf16_step, N_QWEN_MIXTRAL, N_MODELS);
    tcase_add_test(go, test_gptoss_mxfp4);
    tcase_add_test(go, test_gptoss_refusals);
    tcase_add_test(go, test_gptoss_full_finetune_layout);
    tcase_add_loop_test(go, test_moe_adamw8bit_lora_experts, 1, 2);
    tcase_add_test(go, test_gptoss_adamw8bit_full);
    tcase_add_test(go, test_gptoss_config_defaults);
    suite_add_tcase(s, go);
    return s;
}

TU_MAIN(moe_suite)
