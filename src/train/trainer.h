/* trainer.h - the trainer handle (internal view), shared by trainer.c (SFT) and objectives.c. */
#ifndef LT_TRAINER_H
#define LT_TRAINER_H

#include "decoder/decoder.h"
#include "dist/comm.h"
#include "train/optimizer.h"

/* Host staging of the objectives other than SFT (objectives.c), grown when a bigger batch comes. */
typedef struct lt_objective_state {
    int32_t *ids, *labels; /* (rows, T) the rows built from prompts and completions   */
    float *w;              /* (rows * T) per-token CE-gradient weights                 */
    size_t tok_cap;
    double *seq;        /* per-sequence scratch: 8 doubles per row                  */
    int *ints;          /* per-sequence scratch: 4 ints per row                     */
    float *lp, *lp_ref; /* (tokens) per-token log-probs of the GRPO completions      */
    size_t seq_cap;
    /* GRPO: the generation kept between lt_grpo_generate and lt_grpo_step */
    int32_t *g_prompts, *g_plens, *g_comp, *g_clens;
    size_t g_prompt_cap, g_comp_cap;
    int g_np, g_G, g_max_new, g_pending;
    float g_logit_scale;
    /* KTO: the completion the first example's KL row pairs with (the previous example of the global batch) */
    int32_t *kl_prev;
    int kl_prev_len;
    size_t kl_prev_cap;
} lt_objective_state;

/* Data-parallel training (train/distributed.c); comm == NULL: one process, and nothing below is used. */
typedef struct lt_dist {
    lt_comm *comm;      /* borrowed */
    int rank, world;    /* the communicator's */
    int zero;           /* ZeRO stage: 0 replicated optimizer state, 1 sharded */
    size_t *bounds;     /* (world + 1) ZeRO-1: the parameters [bounds[r], bounds[r+1]) are rank r's shard */
    size_t *counts;     /* (world) their sizes */
    float *stage;       /* (n_params) host copy of gradients / parameters when the backend keeps them in memory
                           the engine cannot see (a GPU backend with MPI or callbacks); NULL otherwise */
    double *agree;      /* (3 * world + LT_DIST_VALUES) the vector of a step's agreement */
    double *wbuf;       /* (world) a value per rank (lt_dist_agree's extra) */
    int64_t *rank_rows; /* (world) each rank's rows in the current call */
    int64_t row0;       /* this rank's first row in the global batch of the current call */
    int64_t rows;       /* rows of the global batch of the current call */
} lt_dist;
#define LT_DIST_VALUES 16

struct lt_trainer {
    lt_error err;
    lt_model *model;
    lt_adapter *adapter;
    lt_optimizer *opt;
    lt_trainer_params p;
    lt_workspace *ws;
    float *grads_backup;  /* (n_params) gradients before the current micro-batch */
    int micro;            /* micro-batches accumulated towards the next update */
    int64_t accum_tokens; /* predicted tokens in them */
    double accum_loss;    /* summed token loss in them */
    uint64_t micro_total; /* micro-batches ever run: the dropout stream counter */
    lt_progress_fn progress;
    void *progress_user;
    lt_objective_state obj;           /* objectives.c */
    lt_dist dist;                     /* distributed.c */
    uint64_t frozen_ns, frozen_madds; /* the frozen-weight products of workspaces already dropped */
};

/* Free the workspace, keeping its frozen-weight product counts (lt_trainer_frozen_gemm_stats). */
static inline void lt_trainer_drop_workspace(lt_trainer *t) {
    if (!t->ws) return;
    t->frozen_ns += atomic_load(&t->ws->frozen_ns);
    t->frozen_madds += atomic_load(&t->ws->frozen_madds);
    lt_workspace_free(t->ws);
    t->ws = NULL;
}

/* ---- distributed.c: what a step of a data-parallel trainer adds; each is a no-op (or the plain single-process
 * action) when t->dist.comm is NULL, so the steps have one code path. */

/* At lt_trainer_create: check the communicator against the trainer, check that every rank has the same
 * adapter and options, start every rank from rank 0's parameters, shard the optimizer (ZeRO-1). Collective. */
lt_status lt_dist_init(lt_trainer *t, lt_error *err);
void lt_dist_free(lt_trainer *t);

/*
 * The agreement of a step: every rank passes its status so far (st), its rows and `n` values (n <=
 * LT_DIST_VALUES, summed over the ranks in place); every rank gets the same result: LT_OK, or the status of
 * the first rank that failed (that rank keeps its own message; the others get one naming it). Sets
 * t->dist.row0 and t->dist.rows. `extra` (may be NULL): world values, this rank's at [rank], every rank's
 * after. One process: returns st, rows0 = 0, rows = rows.
 */
lt_status lt_dist_agree(lt_trainer *t, lt_status st, int64_t rows, double *vals, int n, double *extra, const char *fn);

/* Bytes from rank root to every rank (host memory). One process: nothing. */
lt_status lt_dist_bcast(lt_trainer *t, void *buf, size_t bytes, int root);

/* The update that ends an accumulation: the gradients summed over the micro-batches of every rank, times
 * `scale`, clipped by the global norm, one optimizer step (ZeRO-1: each rank updates its shard, then the
 * parameters are gathered); the gradients are zero afterwards. On failure nothing changed (unless the
 * communicator broke while gathering the parameters, which the message says). */
lt_status lt_trainer_update(lt_trainer *t, double scale, lt_step_result *r);

/* Checkpoints (trainer.c): write this rank's optimizer state into the checkpoint directory dir that rank 0
 * prepared (st: rank 0's status so far; every rank returns the same status). Load into o (a fresh optimizer
 * of the checkpoint's adapter) the part of the state t->opt covers, from optimizer.bin (shards 0) or from the
 * `shards` files of a ZeRO-1 run. */
lt_status lt_dist_save_optimizer(lt_trainer *t, const char *dir, lt_status st);
lt_status lt_dist_load_optimizer(lt_trainer *t, lt_optimizer *o, const char *dir, int shards, lt_error *err);

/* objectives.c */
lt_status lt_objective_check_params(lt_model *m, lt_adapter *a, const lt_trainer_params *p, lt_error *err);
void lt_objective_free_state(lt_trainer *t);

#endif
