/* optimizer.h - the optimizer handle (internal view). */
#ifndef LT_OPTIMIZER_H
#define LT_OPTIMIZER_H

#include "model.h"

struct lt_optimizer {
    lt_error err;
    lt_adapter *adapter;
    lt_optimizer_params p;
    float *m, *v;   /* AdamW moments (n_params); SGD uses m as its momentum buffer */
    int64_t step;   /* updates taken */
};

/* Learning-rate multiplier after s updates (algorithms.md). */
double lt_schedule_lambda(const lt_optimizer_params *p, int64_t s);

/* Clip the adapter's gradients (already averaged) and update its parameters. grad_norm receives the
 * pre-clip norm. Fails with LT_ERR_NUMERIC, changing nothing, when the gradients are not finite. */
lt_status lt_optimizer_update(lt_optimizer *o, double *grad_norm, double *lr_used, lt_error *err);

#endif
