/*
 * trainer.c - the SFT trainer: micro-batch steps with gradient accumulation, evaluation and
 * checkpoints.
 *
 * defines: lt_trainer_* (public)
 *
 * Loss convention: each micro-batch accumulates the gradient of the SUM of its token losses; at the
 * update the gradients are divided by the number of predicted tokens of all micro-batches, which is
 * exactly the token-level mean over the whole accumulated batch (docs/spec/algorithms.md, SFT).
 * Safety: a micro-batch that fails (bad ids, NaN loss, NaN gradients) restores the gradients it found,
 * and an update happens only with finite gradients, so the adapter and optimizer stay as they were.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/trainer.h"

LT_API void lt_trainer_params_init(lt_trainer_params *out, size_t size) {
    lt_trainer_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->objective = LT_OBJ_SFT;
    p->grad_accum = 1;
    p->gradient_checkpointing = 1;
    p->beta = 0.1f;
    p->desirable_weight = 1.0f;
    p->undesirable_weight = 1.0f;
    p->num_generations = 8;
    p->epsilon = 0.2f;
    p->scale_rewards = LT_GRPO_SCALE_GROUP;
    p->loss_type = LT_GRPO_LOSS_DAPO;
    lt_fill_struct(out, size, p, sizeof *p);
}

LT_API lt_status lt_trainer_create(lt_model *m, lt_adapter *a, lt_optimizer *o, const lt_trainer_params *params,
                                   lt_trainer **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: out is NULL");
    *out = NULL;
    if (!m || !a || !o)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: model, adapter and optimizer are required");
    if (a->model != m || o->adapter != a)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_trainer_create: the adapter must belong to the model and the "
                       "optimizer to the adapter");
    lt_trainer_params p;
    lt_trainer_params_init(&p, sizeof p);
    lt_status st = lt_read_struct(&p, sizeof p, params, offsetof(lt_trainer_params, seed), "lt_trainer_create",
                                  "lt_trainer_params_init", err);
    if (st) return st;
    if ((int)p.objective < LT_OBJ_SFT || p.objective > LT_OBJ_GRPO)
        return lt_fail(err, LT_ERR_UNSUPPORTED, "lt_trainer_create: unknown objective %d", (int)p.objective);
    if (p.activation_memory < 0)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: activation_memory %lld is negative",
                       (long long)p.activation_memory);
    lt_status pst = lt_objective_check_params(m, a, &p, err);
    if (pst != LT_OK) return pst;
    if (p.grad_accum < 1) return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: grad_accum %d < 1", p.grad_accum);
    lt_trainer *t = calloc(1, sizeof *t);
    if (!t) return lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory");
    t->model = m;
    t->adapter = a;
    t->opt = o;
    t->p = p;
    t->p.size = sizeof t->p;
    /* the gradients found before a micro-batch, restored when it fails: needed only when an update
     * accumulates several micro-batches (otherwise they are zero); a full fine-tuning saves 4 B/param */
    if (p.grad_accum > 1) {
        t->grads_backup = m->be->ops->alloc(m->be, a->n_params * sizeof(float));
        if (!t->grads_backup) {
            free(t);
            return lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory");
        }
    }
    m->be->ops->zero(m->be, a->grads, a->n_params * sizeof(float));
    lt_status dst = lt_dist_init(t, err); /* data-parallel: collective */
    if (dst != LT_OK) {
        lt_trainer_free(t);
        return dst;
    }
    *out = t;
    return LT_OK;
}

LT_API void lt_trainer_free(lt_trainer *t) {
    if (!t) return;
    lt_trainer_drop_workspace(t);
    lt_objective_free_state(t);
    lt_dist_free(t);
    if (t->grads_backup) t->model->be->ops->free(t->model->be, t->grads_backup);
    free(t);
}

LT_API const char *lt_trainer_last_error(const lt_trainer *t) {
    return t ? t->err.msg : "lt_trainer_last_error: trainer is NULL";
}

LT_API void lt_trainer_set_progress(lt_trainer *t, lt_progress_fn fn, void *user) {
    if (!t) return;
    t->progress = fn;
    t->progress_user = user;
}

LT_API lt_status lt_trainer_frozen_gemm_stats(const lt_trainer *t, double *seconds, double *gflop) {
    if (!t || !seconds || !gflop) return LT_ERR_ARGUMENT;
    const uint64_t ns = t->frozen_ns + (t->ws ? atomic_load(&t->ws->frozen_ns) : 0);
    const uint64_t madds = t->frozen_madds + (t->ws ? atomic_load(&t->ws->frozen_madds) : 0);
    *seconds = (double)ns * 1e-9;
    *gflop = 2.0 * (double)madds * 1e-9;
    return LT_OK;
}

/* The workspace is planned once per batch shape; a new shape re-plans (outside the steady state). */
static lt_status ensure_workspace(lt_trainer *t, const lt_batch *b) {
    if (t->ws && b->n_rows <= t->ws->B_cap && b->seq_len == t->ws->T) return LT_OK;
    lt_trainer_drop_workspace(t);
    int B = b->n_rows > 0 ? b->n_rows : 1, T = b->seq_len > 0 ? b->seq_len : 1;
    return lt_workspace_create_train(t->model, B, T, t->adapter->p.rank, t->p.gradient_checkpointing,
                                     t->p.activation_memory, &t->ws, &t->err);
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

LT_API lt_status lt_trainer_step(lt_trainer *t, const lt_batch *b, lt_step_result *res) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    if (res && res->size < sizeof(size_t))
        return lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_step: result->size not set");
    lt_model *m = t->model;
    lt_backend *be = m->be;
    lt_adapter *a = t->adapter;
    const double t0 = lt_now_seconds();
    const char *fn = "lt_trainer_step";
    /* checks and staging; on a data-parallel trainer a rank may have no rows of the global batch */
    const int dist = t->dist.comm != NULL, rows = b ? b->n_rows : 0;
    int64_t valid = 0;
    lt_status st = LT_OK;
    if (!b) st = lt_fail(&t->err, LT_ERR_ARGUMENT, "%s: batch is NULL", fn);
    else if (t->adapter->merged) st = lt_fail(&t->err, LT_ERR_STATE, "%s: the adapter is merged; unmerge it first", fn);
    else if (t->p.objective != LT_OBJ_SFT)
        st = lt_fail(&t->err, LT_ERR_STATE,
                     "%s: the trainer's objective is not SFT; use "
                     "lt_trainer_step_preference (DPO, IPO, KTO, ORPO) or lt_grpo_step (GRPO)",
                     fn);
    else if (rows < 0 || (rows == 0 && !dist) || (rows > 0 && (b->seq_len <= 0 || !b->input_ids)))
        st = lt_fail(&t->err, LT_ERR_SHAPE, "%s: empty batch (%d rows x %d tokens)", fn, b->n_rows, b->seq_len);
    else if (rows > 0 && (st = ensure_workspace(t, b)) == LT_OK) st = lt_stage_batch(m, t->ws, b, &valid, &t->err);
    if (!dist && st != LT_OK) return st;
    /* every rank: its status, rows and predicted tokens (the loss is normalised by the global count) */
    double tok = (double)valid;
    if ((st = lt_dist_agree(t, st, rows, &tok, 1, NULL, fn)) != LT_OK) return st;
    const int64_t valid_all = (int64_t)tok;
    if (valid_all == 0 && t->p.grad_accum == 1)
        return lt_fail(&t->err, LT_ERR_DATA, "%s: every label of the batch is masked (-100): nothing to learn", fn);
    double loss_sum = 0;
    if (valid > 0) { /* a fully masked micro-batch of an accumulation adds nothing: no compute */
        if (t->micro > 0) be->ops->copy(be, t->grads_backup, a->grads, a->n_params * sizeof(float));
        /* dropout masks follow the token's place in the global batch: the same as one process */
        lt_dropout_state drop = {a->p.dropout, mix64(t->p.seed ^ mix64(t->micro_total + 1)), t->dist.row0 * b->seq_len};
        st = lt_forward_backward(m, a, t->ws, &drop, 1.0f, &loss_sum, NULL, &t->err);
        if (st == LT_OK && !be->ops->all_finite(be, a->n_params, a->grads))
            st = lt_fail(&t->err, LT_ERR_NUMERIC, "%s: the gradients are not finite; the step was discarded", fn);
    }
    /* every rank: did the micro-batch succeed everywhere, and the loss summed over the ranks */
    st = lt_dist_agree(t, st, rows, &loss_sum, 1, NULL, fn);
    if (st != LT_OK) {
        if (valid > 0 && t->micro > 0) be->ops->copy(be, a->grads, t->grads_backup, a->n_params * sizeof(float));
        else if (valid > 0) be->ops->zero(be, a->grads, a->n_params * sizeof(float));
        return st;
    }
    t->micro_total++;
    t->micro++;
    t->accum_tokens += valid_all;
    t->accum_loss += loss_sum;

    lt_step_result r;
    memset(&r, 0, sizeof r);
    r.size = sizeof r;
    r.loss = t->accum_tokens > 0 ? t->accum_loss / (double)t->accum_tokens : 0.0;
    r.tokens = valid_all;
    r.lr = lt_optimizer_lr(t->opt);
    if (t->micro == t->p.grad_accum && t->accum_tokens == 0) {
        t->micro = 0;
        t->accum_loss = 0;
        return lt_fail(&t->err, LT_ERR_DATA,
                       "%s: every label of the %d accumulated micro-batches is "
                       "masked (-100): nothing to learn; no update was made",
                       fn, t->p.grad_accum);
    }
    if (t->micro == t->p.grad_accum) {
        st = lt_trainer_update(t, 1.0 / (double)t->accum_tokens, &r);
        t->micro = 0;
        t->accum_tokens = 0;
        t->accum_loss = 0;
        if (st != LT_OK) return st;
        r.updated = 1;
    }
    r.step = t->opt->step;
    double dt = lt_now_seconds() - t0;
    r.tokens_per_s = dt > 0 ? (double)rows * (b->seq_len > 0 ? b->seq_len : 0) / dt : 0;
    if (res) {
        size_t n = res->size < sizeof r ? res->size : sizeof r;
        memcpy(res, &r, n);
        res->size = n;
    }
    if (t->progress) t->progress(t->progress_user, &r);
    return LT_OK;
}

LT_API lt_status lt_trainer_evaluate(lt_trainer *t, const lt_batch *b, double *loss_sum, int64_t *n_tokens) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    lt_status st = lt_model_loss(t->model, t->adapter, b, loss_sum, n_tokens);
    if (st != LT_OK) lt_fail(&t->err, st, "%s", lt_model_last_error(t->model));
    return st;
}

/* ---- checkpoints --------------------------------------------------------------------------------
 * DIR/adapter_config.json + adapter_model.safetensors (a PEFT adapter; a full fine-tuning: its model
 * directory), DIR/optimizer.bin (ZeRO-1: a shard per rank, train/distributed.c), DIR/trainer_state.json:
 * one save of DIR (core.h lt_save), so DIR is always the previous checkpoint or the new one, and a DIR
 * that is not ours is refused untouched. */

LT_API lt_status lt_trainer_save_checkpoint(lt_trainer *t, const char *dir) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    if (!dir) return lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_save_checkpoint: dir is NULL");
    if (t->micro != 0)
        return lt_fail(&t->err, LT_ERR_STATE,
                       "lt_trainer_save_checkpoint: %d micro-batches of an accumulation are "
                       "pending; save after an update",
                       t->micro);
    /* data-parallel: rank 0 begins the save and writes the adapter and trainer state into its staging
     * directory, every rank its optimizer shard (ZeRO-1) into the same one, then rank 0 commits it */
    const int writer = t->dist.rank == 0;
    char stage[4300] = "";
    lt_save sv;
    int begun = 0;
    lt_status st = LT_OK;
    if (writer && (st = lt_save_begin(&sv, dir, &t->err)) == LT_OK) {
        begun = 1;
        snprintf(stage, sizeof stage, "%s", sv.stage);
        st = lt_adapter_write(t->adapter, sv.stage, &t->err);
        if (st == LT_OK) {
            char js[640], p[4300];
            int n =
                snprintf(js, sizeof js,
                         "{\n  \"format\": \"libloratune-checkpoint-1\",\n  \"step\": %lld,\n  \"micro_steps\": %llu,\n"
                         "  \"seed\": %llu,\n  \"grad_accum\": %d,\n  \"world_size\": %d,\n"
                         "  \"optimizer_shards\": %d\n}\n",
                         (long long)t->opt->step, (unsigned long long)t->micro_total, (unsigned long long)t->p.seed,
                         t->p.grad_accum, t->dist.comm ? t->dist.world : 1, t->dist.zero ? t->dist.world : 0);
            lt_path_join(p, sizeof p, sv.stage, "trainer_state.json");
            st = lt_write_file_atomic(p, js, (size_t)n, &t->err);
        }
        if (st != LT_OK) lt_fail_prefix(&t->err, "%s", dir);
    }
    lt_status bst = lt_dist_bcast(t, stage, sizeof stage, 0);
    if (st == LT_OK) st = bst;
    st = lt_dist_save_optimizer(t, stage, st);
    if (begun) {
        if (st == LT_OK) st = lt_save_commit(&sv, &t->err);
        else lt_save_abort(&sv);
    }
    return lt_dist_agree(t, st, 0, NULL, 0, NULL, "lt_trainer_save_checkpoint");
}

/* Read a checkpoint into a new adapter and optimizer (*tmp, *o): nothing of the trainer changes yet. */
static lt_status load_checkpoint(lt_trainer *t, const char *dir, lt_adapter **tmp, lt_optimizer **o,
                                 uint64_t *micro_total) {
    if (!dir) return lt_fail(&t->err, LT_ERR_ARGUMENT, "lt_trainer_load_checkpoint: dir is NULL");
    /* a save killed between the two renames of the fallback (core.h lt_save) leaves no dir: its data is in
     * the newest complete save beside it */
    char found[4200];
    if (lt_save_resolve(t->model->ctx, dir, found, sizeof found) != LT_OK)
        return lt_fail(&t->err, LT_ERR_NOMEM, "lt_trainer_load_checkpoint: out of memory");
    dir = found;
    char p[4300];
    lt_path_join(p, sizeof p, dir, "trainer_state.json");
    json_error_t je;
    json_t *js = json_load_file(p, 0, &je);
    if (!js) return lt_fail(&t->err, LT_ERR_MISSING, "%s: cannot read the checkpoint state: %s", p, je.text);
    json_t *step = json_object_get(js, "step"), *micro = json_object_get(js, "micro_steps");
    if (!json_is_integer(step) || !json_is_integer(micro) || json_integer_value(step) < 0 ||
        json_integer_value(micro) < 0) {
        json_decref(js);
        return lt_fail(&t->err, LT_ERR_FORMAT, "%s: \"step\" and \"micro_steps\" must be integers >= 0", p);
    }
    const int64_t state_step = (int64_t)json_integer_value(step);
    *micro_total = (uint64_t)json_integer_value(micro);
    json_t *shards_js = json_object_get(js, "optimizer_shards"); /* ZeRO-1: one optimizer file per rank */
    const json_int_t shards = json_is_integer(shards_js) ? json_integer_value(shards_js) : 0;
    json_decref(js);
    if (shards < 0 || shards > 1 << 20)
        return lt_fail(&t->err, LT_ERR_JSON, "%s: \"optimizer_shards\" %lld is not a count of files", p,
                       (long long)shards);
    lt_status st = lt_adapter_load(t->model, dir, tmp);
    if (st != LT_OK) return lt_fail(&t->err, st, "%s", lt_last_error());
    lt_adapter *a = t->adapter, *b = *tmp;
    if (b->p.rank != a->p.rank || b->p.targets != a->p.targets || b->n_params != a->n_params ||
        !b->init0 != !a->init0 || /* PiSSA / OLoRA: both or neither */
        b->p.full_finetune != a->p.full_finetune || b->p.modules_to_save != a->p.modules_to_save)
        return lt_fail(&t->err, LT_ERR_SHAPE, "%s: the checkpoint's adapter (r=%d) does not match the trainer's (r=%d)",
                       dir, b->p.rank, a->p.rank);
    lt_optimizer_params op = t->opt->p;
    if ((st = lt_optimizer_create(b, &op, o)) != LT_OK) return lt_fail(&t->err, st, "%s", lt_last_error());
    /* this rank's part of the state (its shard under ZeRO-1), from the files whatever world size wrote them */
    if ((st = lt_dist_load_optimizer(t, *o, dir, (int)shards, &t->err)) != LT_OK) return st;
    if ((*o)->step != state_step)
        return lt_fail(&t->err, LT_ERR_FORMAT, "%s: trainer_state.json says step %lld, the optimizer state step %lld",
                       dir, (long long)state_step, (long long)(*o)->step);
    return lt_optimizer_ready(t->opt, &t->err);
}

LT_API lt_status lt_trainer_load_checkpoint(lt_trainer *t, const char *dir) {
    if (!t) return LT_ERR_ARGUMENT;
    lt_error_clear(&t->err);
    /* read into a temporary adapter and optimizer first, so a bad checkpoint changes nothing; data-parallel:
     * every rank reads (a shared file system), and all of them take the checkpoint or none */
    lt_adapter *tmp = NULL;
    lt_optimizer *o = NULL;
    uint64_t micro_total = 0;
    lt_status st = load_checkpoint(t, dir, &tmp, &o, &micro_total);
    st = lt_dist_agree(t, st, 0, NULL, 0, NULL, "lt_trainer_load_checkpoint");
    if (st == LT_OK) {
        lt_adapter *a = t->adapter;
        lt_backend *be = t->model->be;
        const size_t bytes = a->n_params * sizeof(float);
        be->ops->copy(be, a->params, tmp->params, bytes);
        if (a->init0) be->ops->copy(be, a->init0, tmp->init0, a->n_init0 * sizeof(float)); /* PiSSA / OLoRA: A0, B0 */
        lt_adapter_sync_weights(a);
        lt_optimizer_copy_state(t->opt, o);
        be->ops->zero(be, a->grads, bytes);
        t->micro_total = micro_total;
        t->micro = 0;
        t->accum_tokens = 0;
        t->accum_loss = 0;
        st = lt_backend_sync(be, &t->err, "restoring the checkpoint");
    }
    lt_optimizer_free(o);
    lt_adapter_free(tmp);
    return st;
}
