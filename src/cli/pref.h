/* pref.h - preference data shared by `loratune train --objective` (train_pref.c) and `eval --objective`
 * (eval.c): rows of prompt / chosen / rejected ids (KTO: completion and label), batches, options. */
#ifndef LT_CLI_PREF_H
#define LT_CLI_PREF_H

#include <stdio.h>

#include "cli/cli.h"

/* One example: prompt and chosen (KTO: the completion) and rejected (unused by KTO) ids. */
typedef struct pref_row {
    int32_t *p, *c, *r;
    int np, nc, nr, label;
} pref_row;

typedef struct pref_set {
    pref_row *rows;
    int n;
} pref_set;

/* Buffers behind the lt_pref_batch of pref_make_batch (grown as needed; pref_buf_free). */
typedef struct pref_buf {
    int32_t *pi, *pl, *ci, *cl, *ri, *rl, *lab;
    size_t cap_p, cap_c, cap_r;
    int cap_n;
} pref_buf;

/* Rows of a JSONL file; eos (>= 0) is appended to every completion. Returns -1 with msg filled. */
int pref_load(const char *path, int kto, int32_t eos, pref_set *s, char *msg, size_t ml);
void pref_free(pref_set *s);
/* The eos_token_id of MODEL/config.json (the first one when it is a list); -1 when absent. */
int32_t pref_config_eos(const char *mdir);
/* The examples rows[idx[0..n)] as an lt_pref_batch over b's buffers; -1 when out of memory. */
int pref_make_batch(const pref_set *s, const int *idx, int n, pref_buf *b, lt_pref_batch *pb);
void pref_buf_free(pref_buf *b);
/* "dpo", "ipo", "kto", "orpo" -> *o; -1 otherwise. */
int pref_parse_objective(const char *s, lt_objective *o);
/* The reward metrics of r as JSON members (", \"rewards/chosen\": ...") */
void pref_print_metrics(FILE *f, const lt_step_result *r);
/* --beta, --label-smoothing, --desirable-weight, --undesirable-weight, --max-length into tp (train and eval). */
int pref_trainer_params(const opts *o, lt_objective obj, lt_trainer_params *tp);
/* The options of train and eval --objective that pref_trainer_params, pref_open_trainer (--ref-adapter) and
 * pref_config_eos (--no-eos) serve, as opt_spec entries. */
// clang-format off
#define PREF_OPT_SPECS                                                                                                 \
    {"beta", 1}, {"label-smoothing", 1}, {"desirable-weight", 1}, {"undesirable-weight", 1}, {"max-length", 1},        \
    {"ref-adapter", 1}, {"no-eos", 0}
// clang-format on
/* The trainer of train and eval --objective: the policy adapter *ad loaded from adir or, without one, created
 * from ap; the frozen reference *ref loaded from rdir when given (else the reference is the policy with its
 * adapter disabled; tp->ref_adapter is set here); the optimizer from op. Prints the error as cmd and returns
 * 1; what was created is in the outputs either way, for the caller to free. */
int pref_open_trainer(const char *cmd, lt_model *m, const char *adir, const lt_adapter_params *ap, const char *rdir,
                      const lt_optimizer_params *op, lt_trainer_params *tp, lt_adapter **ad, lt_adapter **ref,
                      lt_optimizer **opt, lt_trainer **tr);

#endif
