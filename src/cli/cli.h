/* cli.h - what the commands of the `loratune` tool share (cli.c), and the commands (one file each). */
#ifndef LT_TOOL_CLI_H
#define LT_TOOL_CLI_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "loratune.h"

/* Options: "--name value" pairs and "--flag" switches. */
typedef struct opt_spec {
    const char *name; /* without the dashes */
    int takes_value;
} opt_spec;

typedef struct opts {
    const opt_spec *spec;
    int n_spec;
    const char *values[64]; /* value, or "1" for a present flag, NULL if absent */
} opts;

/* Parses argv[1..]; prints a one-line error and returns -1 on an unknown or incomplete option. */
int opts_parse(opts *o, const opt_spec *spec, int n_spec, int argc, char **argv, const char *cmd);
const char *opt_str(const opts *o, const char *name, const char *def);
int opt_flag(const opts *o, const char *name);
/* Numeric options: print an error and return -1 if malformed. */
int opt_int(const opts *o, const char *name, long long def, long long lo, long long hi, long long *out);
int opt_double(const opts *o, const char *name, double def, double *out);

/* Monotonic seconds. */
double now_seconds(void);
/* mkdir -p; 0 on success, -1 with errno set. */
int mkdir_p(const char *dir);
/* A file replaced whole or never half-written: atomic_fopen opens PATH.tmp.PID (its name into tmp);
 * atomic_fclose flushes it to the disk and renames it over path, or removes it (-1) on any failure,
 * an earlier failed write on f included. */
FILE *atomic_fopen(const char *path, char *tmp, size_t len);
int atomic_fclose(FILE *f, const char *tmp, const char *path);

/* Print "loratune CMD: message" to stderr and return 1. */
int fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Create a context ("cpu" or $LORATUNE_BACKEND) and load a model; prints the error on failure. */
int open_model(const char *cmd, const char *dir, int threads, const char *backend, lt_context **ctx, lt_model **model);

/* --quant nf4|fp4|int8 (nf4), --double-quant / --no-double-quant (on), --quant-blocksize N (64) into *qp;
 * prints an error and returns -1 when malformed. */
int quant_options(const char *cmd, const opts *o, lt_quant_params *qp);
/* quantization.json, saved with a QLoRA adapter, records how the base was quantized for training (read
 * back by merge): its text into buf; returns its length */
int quant_note(const lt_quant_params *qp, char *buf, size_t len);
/* mp's quantization fields from qp (quantize while loading) */
void quant_model_params(const lt_quant_params *qp, lt_model_params *mp);
int read_quant_note(const char *dir, lt_quant_params *qp); /* 1 if found */

/* metrics.jsonl of a run directory OUT, one JSON object per optimizer step ({"step": N, ...}). A run
 * that starts at step `start` (a resume: the checkpoint's step; else 0) keeps the lines of steps
 * 1..start of the file there and replaces the rest, but only when its first line is written, i.e.
 * after its first step succeeded: a run that fails earlier leaves the file as it was, and a resumed
 * run never repeats a step. */
typedef struct metrics_log {
    char path[4200];
    long long start;
    FILE *f; /* open for appending once the first line is written */
} metrics_log;
void metrics_init(metrics_log *ml, const char *out, long long start);
int metrics_write(metrics_log *ml, const char *line); /* one line, '\n' included; -1 on an I/O error */
void metrics_close(metrics_log *ml);
/* Where a training run in OUT saves its result: OUT/adapter (LoRA methods) or OUT/model (full
 * fine-tuning). OUT itself is the run directory: metrics.jsonl, loss.svg, checkpoint-N/. Saves
 * replace only what a save wrote (lt_adapter_save), so the result is a directory of its own. */
void run_result_dir(char *buf, size_t len, const char *out, int full_finetune);
/* The order of n data rows in an epoch: a permutation that is a pure function of (seed, epoch), or
 * the file order without shuffle; SFT and preference training share it (resume is exact). */
void epoch_order(int *order, int n, uint64_t seed, long long epoch, int shuffle);
/* The optimizer options of every training command, into *op (lt_optimizer_params_init first;
 * total_steps is left to the caller): --optimizer adamw|adamw8bit|sgd, --scheduler
 * constant|linear|cosine, --lr (default lr), --weight-decay (0), --max-grad-norm (1), --momentum (SGD,
 * 0.9), --warmup N, --warmup-ratio F. Prints the error; returns 1 for a bad choice, 2 for a malformed
 * number, 0 otherwise. */
int optimizer_options(const char *cmd, const opts *o, double lr, lt_optimizer_params *op);
/* The options every training command takes (train, train --objective), as opt_spec entries its spec begins
 * with: the model, data, run directory, adapter, length, optimizer (optimizer_options), output and
 * data-parallel (dist_open, dist_zero_option) options. */
// clang-format off
#define TRAIN_OPT_SPECS                                                                                                \
    {"model", 1}, {"data", 1}, {"out", 1}, {"adapter-init", 1}, {"rank", 1}, {"alpha", 1}, {"targets", 1},             \
    {"rslora", 0}, {"lr", 1}, {"scheduler", 1}, {"warmup", 1}, {"warmup-ratio", 1}, {"steps", 1}, {"epochs", 1},       \
    {"batch", 1}, {"grad-accum", 1}, {"max-grad-norm", 1}, {"weight-decay", 1}, {"optimizer", 1}, {"momentum", 1},     \
    {"seed", 1}, {"no-shuffle", 0}, {"threads", 1}, {"json", 0}, {"quiet", 0}, {"no-checkpointing", 0},                \
    {"backend", 1}, {"objective", 1}, {"zero", 1}, {"dist-timeout", 1}, {"help", 0}
// clang-format on
/* Updates of a run: steps when > 0, else ceil(epochs * ceil(units / batch) / accum); at least 1. */
long long total_updates(long long steps, double epochs, long long units, long long batch, long long accum);
/* The same with lt_model_params.base_dtype. */
int open_model_dtype(const char *cmd, const char *dir, int threads, const char *backend, int base_dtype,
                     lt_context **ctx, lt_model **model);
/* The same with every lt_model_params field (quantization on load: the streamed loader quantizes one
 * tensor at a time, so the f32 model never exists). */
int open_model_params(const char *cmd, const char *dir, int threads, const char *backend, const lt_model_params *mp,
                      lt_context **ctx, lt_model **model);
/* --base-dtype f32|bf16 (default f32) -> LT_BASE_*; prints the error and returns 1 if malformed. */
int opt_base_dtype(const opts *o, const char *cmd, int *out);

/* --targets all|q_proj,k_proj,...|qkv_proj,gate_up_proj (Phi-3's fused modules) -> LT_TARGET_* bits;
 * prints the error and returns -1 when malformed. Every command that creates a LoRA uses it. */
int parse_targets(const char *cmd, const char *s, unsigned *out);
/* ---- data-parallel training (docs/DISTRIBUTED.md) ----
 * `mpirun -np N loratune train ...`: when the environment says the process is one of several ranks
 * (OMPI_COMM_WORLD_SIZE, PMI_SIZE, MV2_COMM_WORLD_SIZE; srun with PMIx: SLURM_NTASKS), dist_open makes an MPI
 * communicator over every rank (--dist-timeout S: the deadline of one collective); otherwise one process.
 * From then on fail() prefixes messages with the rank. Prints and returns 1 on error. */
typedef struct cli_dist {
    lt_comm *comm; /* NULL: one process */
    int rank, world;
} cli_dist;
int dist_open(const char *cmd, const opts *o, const char *backend, cli_dist *d);
/* The end of a command with status rc. After a failure of one of several ranks, MPI is not finalized: the
 * process exits at once and mpirun ends the other ranks (finalizing would wait for them). */
void dist_close(cli_dist *d, int rc);
/* This rank's rows [lo, hi) of a global batch of B rows: contiguous blocks in rank order. */
void dist_share(const cli_dist *d, int B, int *lo, int *hi);
/* --zero 0|1 (default: 1 for a full fine-tuning, else 0) into *zero; prints and returns 2 when malformed. */
int dist_zero_option(const char *cmd, const opts *o, int full, int *zero);

/* lt_tokenizer_load(dir), printing the error; NULL on failure. */
lt_tokenizer *open_tokenizer(const char *cmd, const char *dir);
/* A whole file ("-": stdin) NUL-terminated, malloc'd; NULL when it cannot be read. */
char *read_all(const char *path, size_t *n);

/* The commands: main.c dispatches argv[1] to them. */
int cmd_info(int argc, char **argv);     /* info.c */
int cmd_quantize(int argc, char **argv); /* quantize.c */
int cmd_eval(int argc, char **argv);     /* eval.c (--objective: cmd_eval_pref) */
int cmd_eval_pref(int argc, char **argv);
int cmd_eval_compare(int argc, char **argv); /* compare.c: eval --compare */
int cmd_train(int argc, char **argv);        /* train.c (--objective: train_pref.c) */
int cmd_train_pref(int argc, char **argv);
/* 1 when argv holds --objective with a value other than sft (pref.c) */
int wants_objective(int argc, char **argv);
int cmd_merge(int argc, char **argv);   /* merge.c */
int cmd_export(int argc, char **argv);  /* export.c */
int cmd_combine(int argc, char **argv); /* combine.c (and extract) */
int cmd_extract(int argc, char **argv);
int cmd_generate(int argc, char **argv); /* generate.c */
int cmd_chat(int argc, char **argv);     /* chat.c */
int cmd_bench(int argc, char **argv);    /* bench.c */
int cmd_demo(int argc, char **argv);     /* demo.c */
int cmd_tokenize(int argc, char **argv); /* tokenize.c */
int cmd_detokenize(int argc, char **argv);
int cmd_render(int argc, char **argv); /* render.c */
int cmd_data(int argc, char **argv);   /* data.c: data check */
/* The data check of a file as JSON (data.c): rows, duplicates, eval overlap, token lengths, problems; NULL
 * with msg when a file cannot be opened. tok may be NULL (no token lengths). */
json_t *data_check(const char *data, const char *eval, lt_tokenizer *tok, long long seq, long long ngram, double near,
                   long long show, char *msg, size_t msglen);

#endif
