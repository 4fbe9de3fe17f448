/* trainer.h - the trainer handle (internal view), shared by trainer.c (SFT) and objectives.c. */
#ifndef LT_TRAINER_H
#define LT_TRAINER_H

#include "decoder/decoder.h"
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
} lt_objective_state;

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
    lt_objective_state obj; /* objectives.c */
};

/* objectives.c */
lt_status lt_objective_check_params(lt_model *m, lt_adapter *a, const lt_trainer_params *p, lt_error *err);
void lt_objective_free_state(lt_trainer *t);

#endif
