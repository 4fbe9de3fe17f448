/*
 * distributed.c - data-parallel training: what a trainer with a communicator does beyond one process.
 *
 * defines: lt_dist_init, lt_dist_free, lt_dist_agree, lt_dist_bcast, lt_trainer_update,
 *          lt_dist_save_optimizer, lt_dist_load_optimizer
 *
 * The rule (docs/DISTRIBUTED.md): W ranks with their shares of a global batch compute what one process
 * computes with the whole batch.
 *   - Each step agrees first (lt_dist_agree): statuses, rows and the counts every normalisation needs (SFT:
 *     predicted tokens; preference objectives: examples; GRPO: sequences, tokens, reward sums) are summed
 *     over the ranks, so a loss is divided by the global count and a rank that fails makes the step fail on
 *     every rank, with nothing changed anywhere.
 *   - The update (lt_trainer_update): gradients summed over ranks (ZeRO-0: all-reduce; ZeRO-1: reduce-scatter,
 *     each rank keeping the sum of its shard), scaled, clipped by the global norm (ZeRO-1: the shards' sums of
 *     squares added), one optimizer step (ZeRO-1: of the own shard, then the parameters are all-gathered).
 *   - Reproducible: the engines add in a fixed order for a given world size, so runs with the same world size
 *     are bit-identical; another world size differs by the rounding of a different summation order.
 * One process (comm == NULL) goes through the same functions, which then do the plain thing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train/trainer.h"

/* ---- agreement ------------------------------------------------------------------------------------- */

lt_status lt_dist_agree(lt_trainer *t, lt_status st, int64_t rows, double *vals, int n, double *extra, const char *fn) {
    lt_dist *d = &t->dist;
    if (!d->comm) {
        d->row0 = 0;
        d->rows = rows;
        return st;
    }
    /* [status of each rank | rows of each rank | extra of each rank | vals]: each rank writes its own slots,
     * zeros elsewhere; the sum is every rank's values */
    const int W = d->world, r = d->rank;
    double *v = d->agree;
    memset(v, 0, (size_t)(3 * W + n) * sizeof *v);
    v[r] = (double)st;
    v[W + r] = (double)rows;
    if (extra) v[2 * W + r] = extra[r];
    if (n) memcpy(v + 3 * W, vals, (size_t)n * sizeof *v);
    lt_error e = {0};
    lt_status cst = lt_comm_sum(d->comm, v, (size_t)(3 * W + n), LT_COMM_F64, 1, &e);
    if (cst != LT_OK) return lt_fail(&t->err, cst, "%s: %s", fn, e.msg);
    d->row0 = 0;
    d->rows = 0;
    for (int q = 0; q < W; q++) {
        d->rank_rows[q] = (int64_t)v[W + q];
        if (q < r) d->row0 += (int64_t)v[W + q];
        d->rows += (int64_t)v[W + q];
        if (extra) extra[q] = v[2 * W + q];
    }
    if (n) memcpy(vals, v + 3 * W, (size_t)n * sizeof *v);
    if (st != LT_OK) return st; /* this rank's own message stays */
    for (int q = 0; q < W; q++)
        if (v[q] != 0)
            return lt_fail(&t->err, (lt_status)(int)v[q],
                           "%s: rank %d of %d failed this step (%s); it was discarded on every rank (the failing "
                           "rank's message names the problem)",
                           fn, q, W, lt_status_string((lt_status)(int)v[q]));
    return LT_OK;
}

lt_status lt_dist_bcast(lt_trainer *t, void *buf, size_t bytes, int root) {
    if (!t->dist.comm) return LT_OK;
    lt_error e = {0};
    lt_status st = lt_comm_bcast(t->dist.comm, buf, bytes, root, 1, &e);
    return st == LT_OK ? LT_OK : lt_fail(&t->err, st, "%s", e.msg);
}

/* ---- tensors: in the backend's memory, seen by the engine directly or through the host stage --------- */

enum { T_SUM, T_REDUCE_SCATTER, T_ALL_GATHER, T_BCAST };

/* One collective over the n_params floats at dev (the adapter's params or grads). */
static lt_status tensor_op(lt_trainer *t, int op, float *dev, lt_error *err) {
    lt_dist *d = &t->dist;
    lt_backend *be = t->model->be;
    const size_t n = t->adapter->n_params, own = d->bounds ? d->bounds[d->rank] : 0;
    const size_t own_n = d->counts ? d->counts[d->rank] : 0;
    lt_status st = be->ops->sync(be); /* the backend's work on dev is complete (a GPU queues it) */
    if (st != LT_OK) return lt_fail(err, st, "backend %s failed before a collective", be->ops->name);
    const int host = !d->comm->device;
    float *buf = dev;
    if (host && d->stage) { /* what the engine works on: a host copy */
        buf = d->stage;
        if (op == T_ALL_GATHER) be->ops->download(be, buf + own, dev + own, own_n * sizeof(float));
        else if (op != T_BCAST || d->rank == 0) be->ops->download(be, buf, dev, n * sizeof(float));
    }
    lt_comm *c = d->comm;
    switch (op) {
    case T_SUM: st = lt_comm_sum(c, buf, n, LT_COMM_F32, host, err); break;
    case T_REDUCE_SCATTER: st = lt_comm_reduce_scatter(c, buf, d->counts, LT_COMM_F32, err); break;
    case T_ALL_GATHER: st = lt_comm_all_gather(c, buf, d->counts, LT_COMM_F32, err); break;
    default: st = lt_comm_bcast(c, buf, n * sizeof(float), 0, host, err); break;
    }
    if (st == LT_OK && buf != dev) {
        if (op == T_REDUCE_SCATTER) be->ops->upload(be, dev + own, buf + own, own_n * sizeof(float));
        else be->ops->upload(be, dev, buf, n * sizeof(float));
    }
    return st;
}

/* ---- create / free ----------------------------------------------------------------------------------- */

/* What every rank must have alike, checked at create: a mismatch would make the collectives disagree. */
enum { KP_PARAMS, KP_ACCUM, KP_ZERO, KP_OBJECTIVE, KP_OPTIMIZER, KP_WORLD, KP_COUNT };
static const char *const fpr_names[KP_COUNT] = {"trainable parameters", "grad_accum", "zero_stage", "objective",
                                                "optimizer kind",       "world size"};

lt_status lt_dist_init(lt_trainer *t, lt_error *err) {
    lt_dist *d = &t->dist;
    lt_comm *c = t->p.comm;
    if (t->p.zero_stage != 0 && t->p.zero_stage != 1)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_trainer_create: zero_stage %d is not 0 or 1", t->p.zero_stage);
    if (!c) return LT_OK;
    lt_backend *be = t->model->be;
    if (c->device && be->ops->host_memory)
        return lt_fail(err, LT_ERR_ARGUMENT,
                       "lt_trainer_create: the %s communicator works on GPU memory, but the context's backend is %s "
                       "(create the context with the cuda backend)",
                       c->eng->name, be->ops->name);
    d->comm = c;
    d->rank = c->rank;
    d->world = c->size;
    d->zero = t->p.zero_stage;
    const int W = d->world;
    d->agree = calloc((size_t)3 * W + LT_DIST_VALUES, sizeof *d->agree);
    d->wbuf = calloc((size_t)W, sizeof *d->wbuf);
    d->rank_rows = calloc((size_t)W, sizeof *d->rank_rows);
    lt_status st =
        d->agree && d->wbuf && d->rank_rows ? LT_OK : lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory");
    if (st == LT_OK && !c->device && !be->ops->host_memory &&
        !(d->stage = malloc(t->adapter->n_params * sizeof(float))))
        st = lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory for the host copy of %zu gradients",
                     t->adapter->n_params);
    if (st == LT_OK && d->zero == 1) {
        d->bounds = malloc((size_t)(W + 1) * sizeof *d->bounds);
        d->counts = malloc((size_t)W * sizeof *d->counts);
        if (!d->bounds || !d->counts) st = lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory");
    }
    if (st == LT_OK && d->zero == 1) { /* ZeRO-1: this rank keeps the optimizer state of its shard only */
        lt_optimizer_shards(t->opt, W, d->bounds);
        for (int r = 0; r < W; r++) d->counts[r] = d->bounds[r + 1] - d->bounds[r];
        st = lt_optimizer_set_range(t->opt, d->bounds[d->rank], d->bounds[d->rank + 1], err);
    }
    /* every rank must have the same adapter and options: compare each rank's fingerprint with rank 0's */
    const double mine[KP_COUNT] = {
        (double)t->adapter->n_params, t->p.grad_accum, d->zero, t->p.objective, t->opt->p.kind, W};
    double *fp = calloc((size_t)W * KP_COUNT, sizeof *fp);
    if (!fp) return lt_fail(err, LT_ERR_NOMEM, "lt_trainer_create: out of memory");
    memcpy(fp + (size_t)d->rank * KP_COUNT, mine, sizeof mine);
    fp[(size_t)d->rank * KP_COUNT + KP_WORLD] = st == LT_OK ? W : -1; /* -1: this rank failed */
    lt_status ast = lt_comm_sum(c, fp, (size_t)W * KP_COUNT, LT_COMM_F64, 1, err);
    for (int r = 0; r < W && ast == LT_OK && st == LT_OK; r++)
        for (int k = 0; k < KP_COUNT && st == LT_OK; k++) {
            const double v = fp[(size_t)r * KP_COUNT + k], v0 = k == KP_WORLD ? W : fp[k];
            if (k == KP_WORLD && v < 0)
                st = lt_fail(err, LT_ERR_STATE, "lt_trainer_create: rank %d of %d failed to create its trainer", r, W);
            else if (v != v0)
                st = lt_fail(err, LT_ERR_ARGUMENT,
                             "lt_trainer_create: rank %d has %s %.0f, rank 0 has %.0f: every rank needs the same "
                             "model, adapter and options",
                             r, fpr_names[k], v, v0);
        }
    free(fp);
    if (st == LT_OK) st = ast;
    /* start every rank from rank 0's parameters, as DDP does at construction */
    if (st == LT_OK) st = tensor_op(t, T_BCAST, t->adapter->params, err);
    if (st == LT_OK) {
        lt_adapter_sync_weights(t->adapter);
        st = be->ops->sync(be);
    }
    return st;
}

void lt_dist_free(lt_trainer *t) {
    lt_dist *d = &t->dist;
    free(d->bounds);
    free(d->counts);
    free(d->stage);
    free(d->agree);
    free(d->wbuf);
    free(d->rank_rows);
    memset(d, 0, sizeof *d);
}

/* ---- the update ------------------------------------------------------------------------------------- */

lt_status lt_trainer_update(lt_trainer *t, double scale, lt_step_result *r) {
    lt_adapter *a = t->adapter;
    lt_backend *be = t->model->be;
    lt_optimizer *o = t->opt;
    lt_dist *d = &t->dist;
    lt_status st = lt_optimizer_ready(o, &t->err);
    if (st == LT_OK && !d->comm) { /* one process */
        if (scale != 1.0) be->ops->scale(be, a->n_params, (float)scale, a->grads);
        st = lt_optimizer_update(o, &r->grad_norm, &r->lr, &t->err);
    } else if (st == LT_OK) {
        /* the sum over ranks: everywhere (ZeRO-0), or of this rank's shard, where its optimizer works (ZeRO-1) */
        st = tensor_op(t, d->zero ? T_REDUCE_SCATTER : T_SUM, a->grads, &t->err);
        double ss = 0;
        if (st == LT_OK) {
            if (scale != 1.0) be->ops->scale(be, o->hi - o->lo, (float)scale, a->grads + o->lo);
            ss = lt_optimizer_grad_sumsq(o);
            if (d->zero) st = lt_comm_sum(d->comm, &ss, 1, LT_COMM_F64, 1, &t->err); /* the global norm */
        }
        const double norm = sqrt(ss);
        if (st == LT_OK && !isfinite(norm))
            st = lt_fail(&t->err, LT_ERR_NUMERIC, "the gradient norm is not finite (%g); no update made", norm);
        if (st == LT_OK) {
            lt_optimizer_step(o, norm, &r->lr);
            r->grad_norm = norm;
            if (d->zero && (st = tensor_op(t, T_ALL_GATHER, a->params, &t->err)) != LT_OK)
                lt_fail_prefix(&t->err, "the parameters are no longer the same on every rank; reload the last "
                                        "checkpoint");
            lt_adapter_sync_weights(a); /* Gemma full fine-tuning: the (1 + w) norms follow w */
            lt_status sst = be->ops->sync(be);
            if (st == LT_OK && sst != LT_OK)
                st = lt_fail(&t->err, sst, "backend %s failed in the update", be->ops->name);
        }
    }
    be->ops->zero(be, a->grads, a->n_params * sizeof(float));
    return st;
}

/* ---- checkpoints -------------------------------------------------------------------------------------
 * One process, or ZeRO-0 (every rank has the whole state): rank 0 writes DIR/optimizer.bin. ZeRO-1: rank r
 * writes its shard, DIR/optimizer-rank-RRRRR-of-WWWWW.bin (trainer_state.json: "optimizer_shards": W).
 * Loading reads from every file the part this rank's optimizer covers (lt_optimizer_load_files), so a
 * checkpoint resumes on any world size and either ZeRO stage (re-sharded as it is read). */

static void shard_name(char *buf, size_t len, const char *dir, int r, int w) {
    char name[64];
    snprintf(name, sizeof name, "optimizer-rank-%05d-of-%05d.bin", r, w);
    lt_path_join(buf, len, dir, name);
}

/* 52 bits of an FNV-1a hash of the parameters (exact in a double) */
static double params_hash(const lt_trainer *t) {
    const unsigned char *p = (const unsigned char *)t->adapter->params;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0, n = t->adapter->n_params * sizeof(float); i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return (double)(h >> 12);
}

lt_status lt_dist_save_optimizer(lt_trainer *t, const char *dir, lt_status st) {
    lt_dist *d = &t->dist;
    char p[4300];
    lt_optimizer *o = t->opt;
    if (!d->comm) {
        lt_path_join(p, sizeof p, dir, "optimizer.bin");
        if (st == LT_OK && (st = lt_optimizer_save(o, p)) != LT_OK) lt_fail(&t->err, st, "%s", o->err.msg);
        return st;
    }
    /* rank 0 has written the rest of the checkpoint into dir (or failed: then everyone stops here) */
    st = lt_dist_agree(t, st, 0, NULL, 0, NULL, "lt_trainer_save_checkpoint");
    if (st != LT_OK) return st;
    if (d->zero) shard_name(p, sizeof p, dir, d->rank, d->world);
    else lt_path_join(p, sizeof p, dir, "optimizer.bin");
    if ((d->zero || d->rank == 0) && (st = lt_optimizer_save(o, p)) != LT_OK) lt_fail(&t->err, st, "%s", o->err.msg);
    /* every rank must hold the same parameters (a check that costs one pass over them; a GPU backend's
     * parameters are not on the host and are not checked) */
    double *hash = calloc((size_t)d->world, sizeof *hash);
    if (!hash)
        return lt_dist_agree(t, lt_fail(&t->err, LT_ERR_NOMEM, "out of memory"), 0, NULL, 0, NULL,
                             "lt_trainer_save_checkpoint");
    if (t->model->be->ops->host_memory) hash[d->rank] = params_hash(t);
    st = lt_dist_agree(t, st, 0, NULL, 0, hash, "lt_trainer_save_checkpoint");
    for (int r = 1; r < d->world && st == LT_OK; r++)
        if (hash[r] != hash[0])
            st = lt_fail(&t->err, LT_ERR_INTERNAL,
                         "lt_trainer_save_checkpoint: rank %d holds other parameters than rank 0: the ranks "
                         "diverged (a bug, or an engine whose sums differ between ranks)",
                         r);
    free(hash);
    return st;
}

lt_status lt_dist_load_optimizer(lt_trainer *t, lt_optimizer *o, const char *dir, int shards, lt_error *err) {
    lt_status st = lt_optimizer_set_range(o, t->opt->lo, t->opt->hi, err);
    if (st != LT_OK) return st;
    const int k = shards > 0 ? shards : 1;
    char **paths = calloc((size_t)k, sizeof *paths);
    st = paths ? LT_OK : lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int r = 0; r < k && st == LT_OK; r++) {
        if (!(paths[r] = malloc(4300))) st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
        else if (shards > 0) shard_name(paths[r], 4300, dir, r, shards);
        else lt_path_join(paths[r], 4300, dir, "optimizer.bin");
    }
    if (st == LT_OK) st = lt_optimizer_load_files(o, (const char *const *)paths, k, err);
    for (int r = 0; paths && r < k; r++) free(paths[r]);
    free(paths);
    return st;
}
