/* runrecord.h - what a training run leaves beside its adapter or model (runrecord.c): the run record
 * training_args.json (every setting, the data with sha256, results, compute; `train --config` re-runs it)
 * and the model card README.md (YAML front matter the Hugging Face Hub reads, then markdown); and the
 * loss-curve SVG that train and eval --compare draw. */
#ifndef LT_TOOL_RUNRECORD_H
#define LT_TOOL_RUNRECORD_H

#include "cli/cli.h"

/* sha256 of a file as 64 hex digits; -1 when it cannot be read */
int sha256_file(const char *path, char hex[65]);

/* A new run record of `command` (train, train --objective ...). */
json_t *record_new(const char *command);
/* "args": every option of the command line (after --config expansion) but the ones that do not change
 * the result (--config, --resume, --json, --quiet, --help) */
void record_args(json_t *rec, const opt_spec *spec, int n_spec, const opts *o);
/* rec[section][key] = value (value stolen) */
void record_set(json_t *rec, const char *section, const char *key, json_t *value);
/* one data file: its role ("train", "eval"), path, sha256, rows used and left out, tokens and tokens with
 * a loss, and the data check summary (check stolen; may be NULL) */
void record_data(json_t *rec, const char *role, const char *path, int rows, int dropped, long long tokens,
                 long long labelled, json_t *check);
/* the CPU model (Linux /proc/cpuinfo), "unknown" elsewhere */
void cpu_model(char *buf, size_t len);

/* The model card of a record: kind "adapter" (PEFT LoRA / DoRA / QLoRA), "full" (a fully fine-tuned model)
 * or "merged" (an adapter merged into its base). malloc'd. */
char *record_card(const json_t *rec, const char *kind);
/* Attach README.md and training_args.json, and extra_name holding extra_text when extra_name is not NULL
 * (quantization.json of a QLoRA run), to the adapter's next save (lt_adapter_set_save_files): they are
 * written with the weights, in the same save. Prints the error and returns 1 on failure. */
int record_attach(const char *cmd, lt_adapter *ad, json_t *rec, const char *kind, const char *extra_name,
                  const char *extra_text);

/* train --config FILE: a new argv whose options are the record's "args" followed by those of argv (given
 * later, they win). *new_argv is malloc'd (free it with its strings: config_argv_free). Returns 0, or
 * prints the error and returns 1. Without --config in argv, *new_argv = NULL. */
int config_argv(const char *cmd, int argc, char **argv, int *new_argc, char ***new_argv);
void config_argv_free(int argc, char **argv);

/* A loss curve as a standalone SVG: train loss per step (steps[i], loss[i]), eval loss as dots. */
void loss_svg(const char *path, const double *steps, const double *loss, long long n, const double *eval_step,
              const double *eval_loss, int n_eval);

#endif
