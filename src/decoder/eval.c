/*
 * eval.c - the evaluation entry points: loss and logits of a batch through one forward pass.
 *
 * defines: lt_model_loss, lt_model_logits
 */
#include "decoder/decoder.h"

static lt_status eval_batch(lt_model *m, const lt_adapter *ad, const lt_batch *b, double *loss_sum, int64_t *n_tokens,
                            float *logits, size_t logits_count) {
    lt_error *err = lt_model_error(m);
    if (!b) return lt_fail(err, LT_ERR_ARGUMENT, "batch is NULL");
    if (ad && ad->model != m) return lt_fail(err, LT_ERR_ARGUMENT, "the adapter belongs to another model");
    if (logits && logits_count < (size_t)b->n_rows * b->seq_len * m->cfg.vocab_size)
        return lt_fail(err, LT_ERR_ARGUMENT, "logits buffer holds %zu floats, need %lld", logits_count,
                       (long long)b->n_rows * b->seq_len * m->cfg.vocab_size);
    lt_workspace *ws = NULL;
    lt_status st = lt_workspace_create(m, b->n_rows > 0 ? b->n_rows : 1, b->seq_len > 0 ? b->seq_len : 1,
                                       ad ? ad->p.rank : 0, LT_WS_FORWARD, &ws, err);
    if (st != LT_OK) return st;
    int64_t valid = 0;
    double sum = 0;
    st = lt_stage_batch(m, ws, b, &valid, err);
    if (st == LT_OK) st = lt_forward_backward(m, ad, ws, NULL, 0.0f, &sum, logits, err);
    lt_workspace_free(ws);
    if (st != LT_OK) return st;
    if (loss_sum) *loss_sum = sum;
    if (n_tokens) *n_tokens = valid;
    return LT_OK;
}

LT_API lt_status lt_model_loss(lt_model *m, const lt_adapter *ad, const lt_batch *b, double *loss_sum,
                               int64_t *n_tokens) {
    if (!m) return LT_ERR_ARGUMENT;
    if (!loss_sum || !n_tokens) return lt_fail(lt_model_error(m), LT_ERR_ARGUMENT, "lt_model_loss: NULL output");
    return eval_batch(m, ad, b, loss_sum, n_tokens, NULL, 0);
}

LT_API lt_status lt_model_logits(lt_model *m, const lt_adapter *ad, const lt_batch *b, float *out, size_t count) {
    if (!m) return LT_ERR_ARGUMENT;
    if (!out) return lt_fail(lt_model_error(m), LT_ERR_ARGUMENT, "lt_model_logits: out is NULL");
    return eval_batch(m, ad, b, NULL, NULL, out, count);
}
