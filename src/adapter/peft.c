/*
 * peft.c - the PEFT adapter directory format: save and load (adapter_config.json +
 * adapter_model.safetensors), and loading a saved full fine-tuning as an adapter.
 *
 * defines: lt_adapter_save, lt_adapter_load
 *
 * PEFT layout (docs/spec/formats.md): adapter_config.json + adapter_model.safetensors with keys
 *   base_model.model.model.layers.{l}.{self_attn|mlp}.{proj}.lora_A.weight  (r, in)
 *   base_model.model.model.layers.{l}.{self_attn|mlp}.{proj}.lora_B.weight  (out, r)
 * delta W = scaling * B @ A, scaling = alpha / r (rsLoRA: alpha / sqrt(r)).
 */
#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter/adapter_impl.h"
#include "formats/quant.h"

#define KEY_PREFIX "base_model.model.model.layers."
#define INIT_SIDECAR "loratune_init.json" /* PiSSA / OLoRA: method and trainable rank (ours, not PEFT's) */

/* ---- PEFT save ------------------------------------------------------------------------------------ */

static void key_of(char *buf, size_t len, int l, const lt_module *mod, char ab) {
    snprintf(buf, len, KEY_PREFIX "%d.%s.%s.lora_%c.weight", l, mod->parent, mod->name, ab);
}

/* PEFT's key of layer l's expert LoRA k (0: gate_up_proj, 1: down_proj), ab 'A' or 'B'. target_parameters
 * wrap the experts module once per parameter (ParamWrapper), the first listed innermost: with both
 * targeted, that one's tensors sit under "base_layer." (docs/spec/moe.md). inner: the k listed first. */
static void ekey_of(char *buf, size_t len, unsigned targets, int inner, int l, int k, char ab) {
    const int both = (targets & LT_TARGET_EXPERTS) == LT_TARGET_EXPERTS;
    snprintf(buf, len, KEY_PREFIX "%d.mlp.experts.%slora_%c.weight", l, both && k == inner ? "base_layer." : "", ab);
}

/* PEFT's lora_B of a 3-D expert parameter is (out, r * E) with expert e's column j at j * E + e; ours
 * is (E, out, r). to_peft 1: ours -> PEFT's. interleaved (gpt-oss's gate_up_proj, docs/spec/gpt_oss.md):
 * PEFT's output row o is the parameter's column o, gate row o / 2 for even o and up row o / 2 for odd o,
 * ours gate rows then up rows. */
static void expert_b_convert(float *dst, const float *src, int E, int out, int r, int to_peft, int interleaved) {
    for (int e = 0; e < E; e++)
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++) {
                const int oo = interleaved ? (o % 2) * (out / 2) + o / 2 : o;
                size_t ours = ((size_t)e * out + oo) * r + j, peft = (size_t)o * r * E + (size_t)j * E + e;
                if (to_peft) dst[peft] = src[ours];
                else dst[ours] = src[peft];
            }
}

/* expert LoRA k of this model has gate and up in alternate output rows (gpt-oss's gate_up_proj) */
static int gate_up_interleaved(const lt_model *m, int k) { return lt_elora_interleaved(&m->cfg, k); }

/* Download all adapter parameters to a host buffer. */
static float *params_to_host(const lt_adapter *a) {
    float *h = malloc(a->n_params * sizeof(float));
    if (h) a->model->be->ops->download(a->model->be, h, a->params, a->n_params * sizeof(float));
    return h;
}

static lt_status write_adapter_config(const lt_adapter *a, const char *dir, lt_error *err) {
    json_t *o = json_object(), *t = json_array();
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&a->model->cfg, mods);
    for (int q = 0; q < n_mods; q++)
        if (a->p.targets & lt_module_mask(&mods[q])) json_array_append_new(t, json_string(mods[q].name));
    json_object_set_new(o, "peft_type", json_string("LORA"));
    json_object_set_new(o, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(o, "base_model_name_or_path", json_string(a->model->dir));
    /* PiSSA / OLoRA are saved converted to a plain LoRA of rank 2r for the original base, as PEFT's
     * save_pretrained(path_initial_model_for_weight_conversion=...): r doubled, lora_alpha doubled (times
     * sqrt 2 with rsLoRA) so the scaling is kept, init_lora_weights true */
    const int conv = a->init0 != NULL;
    json_object_set_new(o, "r", json_integer(conv ? 2 * a->p.rank : a->p.rank));
    json_object_set_new(o, "lora_alpha",
                        json_real(!conv             ? a->p.alpha
                                  : a->p.use_rslora ? a->p.alpha * sqrt(2.0)
                                                    : 2.0 * a->p.alpha));
    json_object_set_new(o, "target_modules", t);
    if (a->p.targets & LT_TARGET_EXPERTS) { /* PEFT >= 0.17: fused 3-D expert tensors */
        json_t *tp = json_array();
        if (a->p.targets & LT_TARGET_EXPERTS_GATE_UP)
            json_array_append_new(tp, json_string("mlp.experts.gate_up_proj"));
        if (a->p.targets & LT_TARGET_EXPERTS_DOWN) json_array_append_new(tp, json_string("mlp.experts.down_proj"));
        json_object_set_new(o, "target_parameters", tp);
    }
    json_object_set_new(o, "lora_dropout", json_real(a->p.dropout));
    json_object_set_new(o, "bias", json_string("none"));
    json_object_set_new(o, "use_rslora", json_boolean(a->p.use_rslora));
    json_object_set_new(o, "use_dora", json_boolean(a->p.use_dora));
    json_object_set_new(o, "fan_in_fan_out", json_false());
    json_object_set_new(o, "init_lora_weights", a->p.init == LT_INIT_GAUSSIAN ? json_string("gaussian") : json_true());
    if (conv) { /* ours: what lt_adapter_load needs to split the rank-2r adapter back into A, B and A0, B0 */
        json_t *side = json_object();
        json_object_set_new(side, "format", json_string("libloratune-init-1"));
        json_object_set_new(side, "init_lora_weights", json_string(a->p.init == LT_INIT_PISSA ? "pissa" : "olora"));
        json_object_set_new(side, "r", json_integer(a->p.rank));
        json_object_set_new(side, "lora_alpha", json_real(a->p.alpha));
        char *ss = json_dumps(side, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
        json_decref(side);
        char sp[4200];
        lt_path_join(sp, sizeof sp, dir, INIT_SIDECAR);
        lt_status st = ss ? lt_write_file_atomic(sp, ss, strlen(ss), err) : lt_fail(err, LT_ERR_NOMEM, "out of memory");
        free(ss);
        if (st != LT_OK) {
            json_decref(o);
            return st;
        }
    }
    if (a->p.modules_to_save) { /* PEFT: the module names (ModulesToSaveWrapper) */
        json_t *mts = json_array();
        if (a->p.modules_to_save & LT_SAVE_EMBED_TOKENS) json_array_append_new(mts, json_string("embed_tokens"));
        if (a->p.modules_to_save & LT_SAVE_LM_HEAD) json_array_append_new(mts, json_string("lm_head"));
        if (a->p.modules_to_save & LT_SAVE_ROUTER)
            json_array_append_new(mts, json_string(lt_moe_router_name(&a->model->cfg)));
        json_object_set_new(o, "modules_to_save", mts);
    } else {
        json_object_set_new(o, "modules_to_save", json_null());
    }
    json_object_set_new(o, "rank_pattern", json_object());
    json_object_set_new(o, "alpha_pattern", json_object());
    json_object_set_new(o, "inference_mode", json_true());
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_config.json");
    lt_status st = lt_write_file_atomic(path, s, strlen(s), err);
    free(s);
    return st;
}

/* The PEFT files of a (not full fine-tuning) adapter into the existing directory dir. */
static lt_status adapter_write_peft(lt_adapter *a, const char *dir, lt_error *err) {
    lt_status st;
    const int L = (int)a->model->cfg.num_hidden_layers;
    float *h = params_to_host(a);
    int n = 0;
    lt_st_entry *e = calloc((size_t)L * (P_COUNT * 3 + 6) + 2, sizeof *e);
    char *names = calloc((size_t)L * (P_COUNT * 3 + 6) + 2, 160);
    /* expert LoRA: lora_B in PEFT's interleaved layout (expert_b_convert) */
    float *eb = a->elora ? malloc(a->n_params * sizeof(float)) : NULL, *ebp = eb;
    /* PiSSA / OLoRA: the converted rank-2r tensors A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r) */
    float *h0 = a->init0 ? malloc(a->n_init0 * sizeof(float)) : NULL,
          *cv = a->init0 ? malloc(2 * a->n_init0 * sizeof(float)) : NULL;
    if (!h || !e || !names || (a->init0 && (!h0 || !cv)) || (a->elora && !eb)) {
        free(eb);
        free(h);
        free(e);
        free(names);
        free(h0);
        free(cv);
        return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    }
    if (h0) a->model->be->ops->download(a->model->be, h0, a->init0, a->n_init0 * sizeof(float));
    float *cvp = cv;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&a->model->cfg, mods);
    for (int l = 0; l < L; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
            if (!lo) continue;
            int in, o;
            lt_module_dims(&a->model->cfg, &mods[q], &in, &o);
            for (int k = 0; k < 2; k++) {
                char *nm = names + (size_t)n * 160;
                key_of(nm, 160, l, &mods[q], k ? 'B' : 'A');
                e[n].name = nm;
                e[n].dtype = LT_DT_F32;
                e[n].ndim = 2;
                e[n].shape[0] = k ? o : a->p.rank;
                e[n].shape[1] = k ? a->p.rank : in;
                e[n].data = h + ((k ? lo->B : lo->A) - a->params);
                if (h0) {
                    const int r = a->p.rank;
                    const float *t = e[n].data, *t0 = h0 + ((k ? lo->B : lo->A) - a->params);
                    if (!k) { /* rows: A then A0 */
                        memcpy(cvp, t, (size_t)r * in * sizeof(float));
                        memcpy(cvp + (size_t)r * in, t0, (size_t)r * in * sizeof(float));
                    } else { /* columns: B then -B0 */
                        for (int i = 0; i < o; i++)
                            for (int j = 0; j < r; j++) {
                                cvp[(size_t)i * 2 * r + j] = t[(size_t)i * r + j];
                                cvp[(size_t)i * 2 * r + r + j] = -t0[(size_t)i * r + j];
                            }
                    }
                    e[n].shape[k ? 1 : 0] = 2 * r;
                    e[n].data = cvp;
                    cvp += (size_t)2 * r * (k ? o : in);
                }
                n++;
            }
            if (lo->mag) { /* DoRA: PEFT's key has no ".weight" */
                char *nm = names + (size_t)n * 160;
                snprintf(nm, 160, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l, mods[q].parent, mods[q].name);
                e[n].name = nm;
                e[n].dtype = LT_DT_F32;
                e[n].ndim = 1;
                e[n].shape[0] = o;
                e[n].data = h + (lo->mag - a->params);
                n++;
            }
        }
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 2; k++) {
            const lt_lora *lo = lt_adapter_elora(a, l, k);
            if (!lo) continue;
            int in, o;
            const int E = (int)a->model->cfg.num_experts, r = a->p.rank;
            lt_elora_dims(&a->model->cfg, k, &in, &o);
            for (int ab = 0; ab < 2; ab++) {
                char *nm = names + (size_t)n * 160;
                ekey_of(nm, 160, a->p.targets, 0, l, k, ab ? 'B' : 'A');
                e[n].name = nm;
                e[n].dtype = LT_DT_F32;
                e[n].ndim = 2;
                e[n].shape[0] = ab ? o : (int64_t)E * r; /* A (E*r, in): ours, row for row */
                e[n].shape[1] = ab ? (int64_t)r * E : in;
                e[n].data = h + (lo->A - a->params);
                if (ab) {
                    expert_b_convert(ebp, h + (lo->B - a->params), E, o, r, 1, gate_up_interleaved(a->model, k));
                    e[n].data = ebp;
                    ebp += (size_t)E * o * r;
                }
                n++;
            }
        }
    for (int i = 0; i < a->n_ptensors; i++) { /* modules_to_save: PEFT's keys, the wrapper's name left out */
        const lt_ptensor *t = &a->ptensors[i];
        char *nm = names + (size_t)n * 160;
        snprintf(nm, 160, "base_model.model.%s", t->name);
        e[n].name = nm;
        e[n].dtype = LT_DT_F32;
        e[n].ndim = t->cols ? 2 : 1; /* (V,H) embed_tokens / lm_head, (E,H) a router, (E) gpt-oss's router bias */
        e[n].shape[0] = t->rows;
        e[n].shape[1] = t->cols;
        e[n].data = h + t->off;
        n++;
    }
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_model.safetensors");
    static const char *const meta[] = {"format", "pt", NULL};
    st = lt_st_write(path, e, n, meta, err);
    free(eb);
    free(h);
    free(e);
    free(names);
    free(h0);
    free(cv);
    if (st != LT_OK) return st;
    st = write_adapter_config(a, dir, err);
    return st != LT_OK ? st : lt_adapter_write_save_files(a, dir, err);
}

lt_status lt_adapter_write(lt_adapter *a, const char *dir, lt_error *err) {
    if (a->merged) return lt_fail(err, LT_ERR_STATE, "the adapter is merged; unmerge it first");
    if (a->p.full_finetune) /* the trained model itself, as a Hugging Face directory */
        return lt_model_export_into(a->model, a, NULL, NULL, dir, 2ull << 30, err);
    return adapter_write_peft(a, dir, err);
}

LT_API lt_status lt_adapter_save(lt_adapter *a, const char *dir) {
    if (!a) return LT_ERR_ARGUMENT;
    lt_error_clear(&a->err);
    if (!dir) return lt_fail(&a->err, LT_ERR_ARGUMENT, "lt_adapter_save: dir is NULL");
    if (a->merged) return lt_fail(&a->err, LT_ERR_STATE, "lt_adapter_save: the adapter is merged; unmerge it first");
    lt_save sv;
    lt_status st = lt_save_begin(&sv, dir, &a->err);
    if (st != LT_OK) return st;
    /* the weights and the files attached by lt_adapter_set_save_files, into the one staging directory */
    if ((st = lt_adapter_write(a, sv.stage, &a->err)) != LT_OK) {
        lt_fail_prefix(&a->err, "%s", dir);
        lt_save_abort(&sv);
        return st;
    }
    return lt_save_commit(&sv, &a->err);
}

/* ---- a saved full fine-tuning ---------------------------------------------------------------------- */

/* A Hugging Face model directory (config.json, no adapter_config.json) saved from a full fine-tuning
 * adapter: its weights become a full adapter of model m (same architecture and shapes). */
static lt_status load_full(lt_model *m, const char *dir, lt_adapter **out, lt_error *err) {
    lt_context *ctx = m->ctx;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    lt_model *src = NULL;
    lt_status st = lt_model_load(ctx, dir, &mp, &src);
    if (st != LT_OK) { /* err may be the thread's record lt_last_error() reads: copy the message first */
        char why[512];
        snprintf(why, sizeof why, "%s", lt_last_error());
        return lt_fail(err, st, "%s: not a PEFT adapter, and as a full fine-tuning model: %s", dir, why);
    }
    const lt_model_config *a = &m->cfg, *b = &src->cfg;
    if (strcmp(a->architecture, b->architecture) || a->num_hidden_layers != b->num_hidden_layers ||
        a->hidden_size != b->hidden_size || a->intermediate_size != b->intermediate_size ||
        a->vocab_size != b->vocab_size || a->num_attention_heads != b->num_attention_heads ||
        a->num_key_value_heads != b->num_key_value_heads || a->head_dim != b->head_dim ||
        a->tie_word_embeddings != b->tie_word_embeddings || a->bias_mask != b->bias_mask ||
        a->num_experts != b->num_experts || a->moe_intermediate_size != b->moe_intermediate_size ||
        a->n_moe_layers != b->n_moe_layers || memcmp(a->layer_moe, b->layer_moe, sizeof a->layer_moe)) {
        lt_fail(err, LT_ERR_SHAPE,
                "%s: a %s with %lld layers, hidden %lld, vocab %lld is not a fine-tuned copy of "
                "this %s (%lld layers, hidden %lld, vocab %lld)",
                dir, b->architecture, (long long)b->num_hidden_layers, (long long)b->hidden_size,
                (long long)b->vocab_size, a->architecture, (long long)a->num_hidden_layers, (long long)a->hidden_size,
                (long long)a->vocab_size);
        lt_model_free(src); /* after the message: it reads src's config */
        return LT_ERR_SHAPE;
    }
    lt_adapter_params p;
    lt_adapter_params_init(&p, sizeof p);
    p.full_finetune = 1;
    lt_adapter *ad = NULL;
    if ((st = lt_adapter_alloc(m, &p, &ad, err)) != LT_OK) {
        lt_model_free(src);
        return st;
    }
    for (int i = 0; i < ad->n_ptensors; i++) { /* the same layout over the same shapes: copy tensor by tensor */
        const lt_ptensor *t = &ad->ptensors[i];
        const float *s = lt_adapter_model_tensor(src, t);
        if (!s) {
            lt_model_free(src);
            lt_adapter_free(ad);
            return lt_fail(err, LT_ERR_MISSING, "%s: tensor %s is missing", dir, t->name);
        }
        m->be->ops->copy(m->be, ad->params + t->off, s, t->n * sizeof(float));
    }
    lt_adapter_sync_weights(ad);
    st = lt_backend_sync(m->be, err, "loading the adapter");
    lt_model_free(src);
    if (st != LT_OK) {
        lt_adapter_free(ad);
        return lt_fail(err, st, "%s: backend failed copying weights", dir);
    }
    *out = ad;
    return LT_OK;
}

/* ---- PEFT load ------------------------------------------------------------------------------------ */

/* target_modules: a list of names, "all-linear", or a regex matched against full module names. */
static lt_status parse_targets(json_t *tm, const lt_model *m, unsigned *targets, const char *path, lt_error *err) {
    *targets = 0;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    if (json_is_array(tm)) {
        size_t i;
        json_t *v;
        json_array_foreach(tm, i, v) {
            if (!json_is_string(v))
                return lt_fail(err, LT_ERR_JSON, "%s: target_modules[%zu] is not a string", path, i);
            const char *s = json_string_value(v);
            int q = 0;
            while (q < n_mods && strcmp(s, mods[q].name)) q++;
            if (q == n_mods) {
                char list[256] = "";
                for (int k = 0; k < n_mods; k++)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", mods[k].name);
                return lt_fail(err, LT_ERR_UNSUPPORTED, "%s: target module \"%s\" is not one of %s", path, s, list);
            }
            *targets |= lt_module_mask(&mods[q]);
        }
    } else if (json_is_string(tm)) {
        const char *s = json_string_value(tm);
        if (!strcmp(s, "all-linear")) {
            *targets = LT_TARGET_ALL;
        } else {
            regex_t re;
            char pat[1024];
            snprintf(pat, sizeof pat, "^(%s)$", s); /* PEFT uses re.fullmatch */
            if (regcomp(&re, pat, REG_EXTENDED | REG_NOSUB))
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "%s: target_modules regex \"%s\" is not a POSIX "
                               "extended regex this library can evaluate",
                               path, s);
            char name[256];
            for (int q = 0; q < n_mods; q++) {
                unsigned hit = 0;
                for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
                    snprintf(name, sizeof name, "model.layers.%d.%s.%s", l, mods[q].parent, mods[q].name);
                    if (!regexec(&re, name, 0, NULL, 0)) hit++;
                }
                if (hit && hit != (unsigned)m->cfg.num_hidden_layers) {
                    regfree(&re);
                    return lt_fail(err, LT_ERR_UNSUPPORTED,
                                   "%s: target_modules regex \"%s\" selects %s in only "
                                   "some layers; per-layer targets are not supported",
                                   path, s, mods[q].name);
                }
                if (hit) *targets |= lt_module_mask(&mods[q]);
            }
            regfree(&re);
        }
    } else {
        return lt_fail(err, LT_ERR_JSON, "%s: target_modules must be a list of names or a string", path);
    }
    if (!*targets) return lt_fail(err, LT_ERR_FORMAT, "%s: target_modules selects no projection of this model", path);
    return LT_OK;
}

/* target_parameters (PEFT's LoRA on 3-D parameters): the experts' gate_up_proj and down_proj of the MoE
 * layers, named with or without their parents ("mlp.experts.gate_up_proj", "experts.gate_up_proj", ...);
 * *inner: the kind listed first (0 gate_up, 1 down), whose tensors PEFT keeps under "base_layer." */
static lt_status parse_target_parameters(json_t *tp, const lt_model *m, lt_adapter_params *p, int *inner,
                                         const char *path, lt_error *err) {
    *inner = 0;
    if (!tp || json_is_null(tp)) return LT_OK;
    if (!json_is_array(tp)) return lt_fail(err, LT_ERR_JSON, "%s: target_parameters must be a list", path);
    size_t i;
    json_t *v;
    int first = -1;
    json_array_foreach(tp, i, v) {
        const char *s = json_is_string(v) ? json_string_value(v) : "";
        size_t n = strlen(s);
        int k = -1;
        static const char *const tails[2] = {"experts.gate_up_proj", "experts.down_proj"};
        for (int j = 0; j < 2; j++) {
            size_t t = strlen(tails[j]);
            if (n >= t && !strcmp(s + n - t, tails[j]) && (n == t || s[n - t - 1] == '.')) k = j;
        }
        if (k < 0 || m->cfg.n_moe_layers == 0)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "%s: target parameter \"%s\" is not supported (only the experts' gate_up_proj and "
                           "down_proj of a mixture-of-experts model)",
                           path, s);
        if (first < 0) first = k;
        p->targets |= (unsigned)LT_TARGET_EXPERTS_GATE_UP << k;
    }
    *inner = first < 0 ? 0 : first;
    return LT_OK;
}

static lt_status read_adapter_config(const char *dir, const lt_model *m, lt_adapter_params *p, int *inner,
                                     lt_error *err) {
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_config.json");
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) {
        FILE *f = fopen(path, "r");
        if (!f) return lt_fail(err, LT_ERR_MISSING, "%s: cannot open: not a PEFT adapter directory", path);
        fclose(f);
        return lt_fail(err, LT_ERR_JSON, "%s:%d: %s", path, je.line, je.text);
    }
    lt_status st = LT_OK;
    lt_adapter_params_init(p, sizeof *p);
    json_t *v;
    if (!json_is_object(o)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: not a JSON object", path);
        goto out;
    }
    v = json_object_get(o, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA"))) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: peft_type %s is not LORA", path,
                     json_is_string(v) ? json_string_value(v) : "?");
        goto out;
    }
    v = json_object_get(o, "r");
    if (v && !json_is_integer(v)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: \"r\" is not an integer", path);
        goto out;
    }
    p->rank = v ? (int)json_integer_value(v) : 8;
    v = json_object_get(o, "lora_alpha");
    if (v && !json_is_number(v)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: \"lora_alpha\" is not a number", path);
        goto out;
    }
    p->alpha = v ? (float)json_number_value(v) : 8.0f;
    v = json_object_get(o, "lora_dropout");
    if (v && !json_is_number(v)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: \"lora_dropout\" is not a number", path);
        goto out;
    }
    p->dropout = v ? (float)json_number_value(v) : 0.0f;
    v = json_object_get(o, "use_rslora");
    p->use_rslora = v && json_is_true(v);
    v = json_object_get(o, "use_dora");
    p->use_dora = v && json_is_true(v);
    v = json_object_get(o, "bias");
    if (v && json_is_string(v) && strcmp(json_string_value(v), "none")) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: bias \"%s\" is not supported (only \"none\")", path,
                     json_string_value(v));
        goto out;
    }
    v = json_object_get(o, "modules_to_save");
    if (v && !json_is_null(v)) {
        size_t i;
        json_t *s;
        if (!json_is_array(v)) {
            st = lt_fail(err, LT_ERR_JSON, "%s: modules_to_save is not a list", path);
            goto out;
        }
        json_array_foreach(v, i, s) {
            const char *nm = json_is_string(s) ? json_string_value(s) : "";
            if (!strcmp(nm, "embed_tokens")) p->modules_to_save |= LT_SAVE_EMBED_TOKENS;
            else if (!strcmp(nm, "lm_head")) p->modules_to_save |= LT_SAVE_LM_HEAD;
            else if (m->cfg.n_moe_layers && !strcmp(nm, lt_moe_router_name(&m->cfg)))
                p->modules_to_save |= LT_SAVE_ROUTER;
            else {
                st = lt_fail(err, LT_ERR_UNSUPPORTED,
                             "%s: modules_to_save entry \"%s\" is not supported (only "
                             "embed_tokens, lm_head and, on a mixture-of-experts model, the router: gate, "
                             "gpt-oss's router)",
                             path, nm);
                goto out;
            }
        }
    }
    const char *pats[] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(o, pats[i]);
        if (v && json_is_object(v) && json_object_size(v) > 0) {
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: a non-empty %s is not supported", path, pats[i]);
            goto out;
        }
    }
    v = json_object_get(o, "layers_to_transform");
    if (v && !json_is_null(v)) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: layers_to_transform is not supported", path);
        goto out;
    }
    v = json_object_get(o, "target_modules");
    if (!v) {
        st = lt_fail(err, LT_ERR_MISSING, "%s: target_modules is missing", path);
        goto out;
    }
    json_t *tpar = json_object_get(o, "target_parameters");
    if (json_is_null(v) && tpar && json_is_array(tpar) && json_array_size(tpar)) st = LT_OK; /* experts only */
    else st = parse_targets(v, m, &p->targets, path, err);
    if (st == LT_ERR_FORMAT && tpar && json_is_array(tpar) && json_array_size(tpar)) st = LT_OK; /* [] */
    if (st == LT_OK) st = parse_target_parameters(tpar, m, p, inner, path, err);
    v = json_object_get(o, "init_lora_weights");
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "gaussian")) p->init = LT_INIT_GAUSSIAN;
    /* PEFT's unconverted PiSSA / OLoRA save: its from_pretrained redoes the decomposition on the base (the base
     * becomes W - s B0 A0) and then loads A, B; lt_adapter_load does the same with A0, B0 frozen */
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "pissa")) p->init = LT_INIT_PISSA;
    if (v && json_is_string(v) && !strcmp(json_string_value(v), "olora")) p->init = LT_INIT_OLORA;
    if (st == LT_OK && v && json_is_string(v) && !strncmp(json_string_value(v), "pissa_niter_", 12))
        st = lt_fail(err, LT_ERR_UNSUPPORTED,
                     "%s: init_lora_weights \"%s\" (PiSSA with a randomized SVD) is not "
                     "supported: its A0, B0 cannot be reproduced; save the adapter with PEFT's "
                     "path_initial_model_for_weight_conversion instead",
                     path, json_string_value(v));
out:
    json_decref(o);
    return st;
}

/* loratune_init.json next to a converted PiSSA / OLoRA adapter (written by adapter_save): the file holds
 * A' = [A; A0], B' = [B, -B0] of rank 2r; p becomes the trainable adapter's params (rank r, its alpha,
 * its init). Without the sidecar the directory is a plain LoRA and p is left alone. */
static lt_status read_init_sidecar(const char *dir, lt_adapter_params *p, int *converted, lt_error *err) {
    char path[4200];
    *converted = 0;
    lt_path_join(path, sizeof path, dir, INIT_SIDECAR);
    FILE *f = fopen(path, "r");
    if (!f) return LT_OK;
    fclose(f);
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) return lt_fail(err, LT_ERR_JSON, "%s:%d: %s", path, je.line, je.text);
    json_t *init = json_object_get(o, "init_lora_weights"), *r = json_object_get(o, "r");
    json_t *alpha = json_object_get(o, "lora_alpha");
    const char *is = json_is_string(init) ? json_string_value(init) : "";
    lt_status st = LT_OK;
    if (strcmp(is, "pissa") && strcmp(is, "olora"))
        st = lt_fail(err, LT_ERR_FORMAT, "%s: init_lora_weights must be \"pissa\" or \"olora\"", path);
    else if (!json_is_integer(r) || 2 * json_integer_value(r) != p->rank)
        st = lt_fail(err, LT_ERR_FORMAT, "%s: \"r\" must be half of adapter_config.json's r (%d)", path, p->rank);
    else if (!json_is_number(alpha) || !(json_number_value(alpha) > 0))
        st = lt_fail(err, LT_ERR_FORMAT, "%s: \"lora_alpha\" must be a positive number", path);
    if (st == LT_OK) {
        p->rank = (int)json_integer_value(r);
        p->alpha = (float)json_number_value(alpha);
        p->init = strcmp(is, "pissa") ? LT_INIT_OLORA : LT_INIT_PISSA;
        *converted = 1;
    }
    json_decref(o);
    return st;
}

LT_API lt_status lt_adapter_load(lt_model *m, const char *dir, lt_adapter **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_load: out is NULL");
    *out = NULL;
    if (!m || !dir) return lt_fail(err, LT_ERR_ARGUMENT, "lt_adapter_load: model and dir must not be NULL");
    /* a save killed between the two renames of the fallback (core.h lt_save) leaves no dir: its data is in
     * the newest complete save beside it */
    char found[4200];
    if (lt_save_resolve(m->ctx, dir, found, sizeof found) != LT_OK)
        return lt_fail(err, LT_ERR_NOMEM, "lt_adapter_load: out of memory");
    dir = found;
    char cfg_path[4200], acfg_path[4200];
    lt_path_join(cfg_path, sizeof cfg_path, dir, "config.json");
    lt_path_join(acfg_path, sizeof acfg_path, dir, "adapter_config.json");
    if (access(acfg_path, F_OK) != 0 && access(cfg_path, F_OK) == 0) /* a model saved by full fine-tuning */
        return load_full(m, dir, out, err);
    lt_adapter_params p;
    int inner = 0; /* the expert LoRA PEFT nests innermost (ekey_of) */
    lt_status st = read_adapter_config(dir, m, &p, &inner, err);
    int converted = 0; /* PiSSA / OLoRA saved by us: [A; A0], [B, -B0] of rank 2r */
    if (st == LT_OK) st = read_init_sidecar(dir, &p, &converted, err);
    if (st != LT_OK) return st;
    const int file_rank = converted ? 2 * p.rank : p.rank;
    char path[4200];
    lt_path_join(path, sizeof path, dir, "adapter_model.safetensors");
    lt_st_file *f = NULL;
    if ((st = lt_st_open(path, 1, &f, err)) != LT_OK) {
        if (st == LT_ERR_IO) {
            char bin[4200];
            lt_path_join(bin, sizeof bin, dir, "adapter_model.bin");
            FILE *bf = fopen(bin, "rb");
            if (bf) {
                fclose(bf);
                return lt_fail(err, LT_ERR_UNSUPPORTED,
                               "%s: only adapter_model.safetensors is supported, not the "
                               "pickle adapter_model.bin (re-save it with safe_serialization=True)",
                               dir);
            }
        }
        return st;
    }
    lt_adapter *a = NULL;
    if ((st = lt_adapter_alloc(m, &p, &a, err)) != LT_OK) {
        lt_st_close(f);
        return st;
    }
    const int L = (int)m->cfg.num_hidden_layers;
    float *host = malloc(a->n_params * sizeof(float)), *host0 = NULL, *cvt = NULL;
    if (!host) {
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (converted &&
        (!(host0 = malloc(a->n_params * sizeof(float))) || !(cvt = malloc(2 * a->n_params * sizeof(float))))) {
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (a->init0 && !converted && (st = lt_lora_decompose_init(a, err)) != LT_OK)
        goto fail; /* PEFT's unconverted save */
    if ((p.targets & LT_TARGET_EXPERTS) == LT_TARGET_EXPERTS) {
        /* which expert LoRA PEFT nested innermost ("base_layer."): the saved target_parameters list need not
         * be in wrapping order, the shapes tell (gate_up: A (E r, H), B (2 MI, r E); down: A (E r, MI), B (H, r E)) */
        for (int l = 0; l < L; l++) {
            if (!m->cfg.layer_moe[l]) continue;
            char ka[256], kb[256];
            ekey_of(ka, sizeof ka, p.targets, 0, l, 0, 'A');
            ekey_of(kb, sizeof kb, p.targets, 0, l, 0, 'B');
            const lt_st_tensor *ta = lt_st_find(f, ka), *tb = lt_st_find(f, kb);
            if (ta && tb && ta->ndim == 2 && tb->ndim == 2)
                inner = ta->shape[1] == m->cfg.moe_intermediate_size && tb->shape[0] == m->cfg.hidden_size ? 1 : 0;
            break;
        }
    }
    /* every key in the file must be one we expect ... */
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int i = 0; i < lt_st_count(f); i++) {
        const char *name = lt_st_tensors(f)[i].name;
        int l, q, matched = 0;
        char key[256];
        for (l = 0; l < L && !matched; l++)
            for (q = 0; q < n_mods && !matched; q++)
                for (int k = 0; k < 3 && !matched; k++) {
                    if (k == 2)
                        snprintf(key, sizeof key, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l, mods[q].parent,
                                 mods[q].name);
                    else key_of(key, sizeof key, l, &mods[q], k ? 'B' : 'A');
                    const lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
                    matched = !strcmp(key, name) && lo && (k < 2 || lo->mag);
                }
        for (l = 0; l < L && !matched; l++)
            for (int k = 0; k < 4 && !matched; k++) {
                ekey_of(key, sizeof key, a->p.targets, inner, l, k / 2, k % 2 ? 'B' : 'A');
                matched = !strcmp(key, name) && lt_adapter_elora(a, l, k / 2);
            }
        for (int k = 0; k < a->n_ptensors && !matched; k++) {
            char key[256];
            snprintf(key, sizeof key, "base_model.model.%s", a->ptensors[k].name);
            matched = !strcmp(key, name);
        }
        if (!matched) {
            st = lt_fail(err, LT_ERR_FORMAT,
                         "%s: unexpected tensor \"%s\" (not a LoRA weight of a targeted "
                         "projection of this %d-layer model; an adapter for another model?)",
                         path, name, L);
            goto fail;
        }
    }
    /* ... and every expected key must be there with the right shape */
    for (int l = 0; l < L; l++)
        for (int q = 0; q < n_mods; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first);
            if (!lo) continue;
            int in, o;
            lt_module_dims(&m->cfg, &mods[q], &in, &o);
            for (int k = 0; k < (lo->mag ? 3 : 2); k++) {
                char key[256];
                if (k == 2)
                    snprintf(key, sizeof key, KEY_PREFIX "%d.%s.%s.lora_magnitude_vector", l, mods[q].parent,
                             mods[q].name);
                else key_of(key, sizeof key, l, &mods[q], k ? 'B' : 'A');
                const lt_st_tensor *t = lt_st_find(f, key);
                if (!t) {
                    st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" is missing", path, key);
                    goto fail;
                }
                if (k == 2 && (t->ndim != 1 || t->shape[0] != o)) {
                    st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%d]", path, key, o);
                    goto fail;
                }
                int64_t d0 = k ? o : file_rank, d1 = k ? file_rank : in;
                if (k < 2 && (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)) {
                    st = lt_fail(err, LT_ERR_SHAPE,
                                 "%s: tensor \"%s\" has shape [%lld, %lld], expected [%lld, %lld] "
                                 "(r = %d in adapter_config.json; an adapter for another model?)",
                                 path, key, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : -1),
                                 (long long)d0, (long long)d1, file_rank);
                    goto fail;
                }
                float *dst = host + ((k == 2 ? lo->mag : k ? lo->B : lo->A) - a->params);
                if (lt_convert_to_f32(host0 ? cvt : dst, t->data, t->dtype, (size_t)t->numel) != 0) {
                    st = lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s (need F32, F16 or BF16)", path, key,
                                 lt_dtype_name(t->dtype));
                    goto fail;
                }
                if (host0) { /* split [A; A0] by rows, [B, -B0] by columns */
                    const int r = p.rank;
                    float *dst0 = host0 + (dst - host);
                    if (!k) {
                        memcpy(dst, cvt, (size_t)r * in * sizeof(float));
                        memcpy(dst0, cvt + (size_t)r * in, (size_t)r * in * sizeof(float));
                    } else {
                        for (int i = 0; i < o; i++)
                            for (int j = 0; j < r; j++) {
                                dst[(size_t)i * r + j] = cvt[(size_t)i * 2 * r + j];
                                dst0[(size_t)i * r + j] = -cvt[(size_t)i * 2 * r + r + j];
                            }
                    }
                }
            }
        }
    for (int l = 0; l < L; l++) /* expert LoRA: A row for row, B from PEFT's interleaved layout */
        for (int k = 0; k < 4; k++) {
            lt_lora *lo = lt_adapter_elora(a, l, k / 2);
            if (!lo) continue;
            int in, o;
            const int E = (int)m->cfg.num_experts, r = p.rank, isB = k % 2;
            lt_elora_dims(&m->cfg, k / 2, &in, &o);
            char key[256];
            ekey_of(key, sizeof key, a->p.targets, inner, l, k / 2, isB ? 'B' : 'A');
            const lt_st_tensor *t = lt_st_find(f, key);
            const int64_t d0 = isB ? o : (int64_t)E * r, d1 = isB ? (int64_t)r * E : in;
            if (!t) {
                st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" is missing", path, key);
                goto fail;
            }
            if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
                st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%lld, %lld] (%d experts, r = %d)",
                             path, key, (long long)d0, (long long)d1, E, r);
                goto fail;
            }
            float *dst = host + ((isB ? lo->B : lo->A) - a->params), *tmp = NULL;
            if (isB && !(tmp = malloc((size_t)t->numel * sizeof(float)))) {
                st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
                goto fail;
            }
            if (lt_convert_to_f32(isB ? tmp : dst, t->data, t->dtype, (size_t)t->numel) != 0) {
                free(tmp);
                st = lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s (need F32, F16 or BF16)", path, key,
                             lt_dtype_name(t->dtype));
                goto fail;
            }
            if (isB) expert_b_convert(dst, tmp, E, o, r, 0, gate_up_interleaved(m, k / 2));
            free(tmp);
        }
    for (int k = 0; k < a->n_ptensors; k++) { /* modules_to_save copies */
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s", a->ptensors[k].name);
        const lt_st_tensor *t = lt_st_find(f, key);
        if (!t) {
            st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" (modules_to_save) is missing", path, key);
            goto fail;
        }
        const lt_ptensor *pt = &a->ptensors[k]; /* (V,H), (E,H) a router, (E) its bias */
        if (t->ndim != (pt->cols ? 2 : 1) || t->shape[0] != pt->rows || (pt->cols && t->shape[1] != pt->cols)) {
            st = pt->cols ? lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%lld, %lld]", path, key,
                                    (long long)pt->rows, (long long)pt->cols)
                          : lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" must have shape [%lld]", path, key,
                                    (long long)pt->rows);
            goto fail;
        }
        if (lt_convert_to_f32(host + a->ptensors[k].off, t->data, t->dtype, (size_t)t->numel) != 0) {
            st = lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s (need F32, F16 or BF16)", path, key,
                         lt_dtype_name(t->dtype));
            goto fail;
        }
    }
    for (size_t i = 0; i < a->n_params; i++)
        if (!isfinite(host[i])) {
            st = lt_fail(err, LT_ERR_NUMERIC, "%s: the adapter contains NaN or Inf", path);
            goto fail;
        }
    m->be->ops->upload(m->be, a->params, host, a->n_params * sizeof(float));
    if (host0) m->be->ops->upload(m->be, a->init0, host0, a->n_init0 * sizeof(float));
    if ((st = lt_backend_sync(m->be, err, "loading the adapter")) != LT_OK) goto fail;
    free(host);
    free(host0);
    free(cvt);
    lt_st_close(f);
    *out = a;
    return LT_OK;
fail:
    free(host);
    free(host0);
    free(cvt);
    lt_st_close(f);
    lt_adapter_free(a);
    return st;
}
