/* jsonl.h - pre-tokenized JSONL datasets for the command-line tool. */
#ifndef LT_TOOL_JSONL_H
#define LT_TOOL_JSONL_H
#include <stdint.h>
#include <stdio.h>

#include "loratune.h"

/* One row: input ids and labels (labels == ids when the line has none; -100 = no loss). */
typedef struct row {
    int32_t *ids, *labels;
    int len;
} row;

typedef struct dataset {
    row *rows;
    int n;
    int max_len;
} dataset;

/* The next line of f that is not blank, from its first non-blank character (in getline's buffer *line of *cap
 * bytes, which the caller frees); *lineno (when not NULL) counts every line read, blank or not. NULL at the
 * end of the file. */
char *jsonl_next_line(FILE *f, char **line, size_t *cap, int *lineno);

/* Reads FILE: each line {"input_ids":[...], "labels":[...]} (labels optional). Blank lines skipped.
 * On failure prints nothing, fills msg ("FILE:LINE: problem") and returns -1. */
int dataset_load(const char *path, dataset *ds, char *msg, size_t msglen);
void dataset_free(dataset *ds);

/* Fill a padded batch of rows [first, first+n) (wrapping around the dataset) into ids/labels
 * (n x T, padded with id 0 and label -100). T is the longest row, capped at max_T (rows are
 * truncated, keeping their start). Returns T. */
int dataset_batch(const dataset *ds, const int *order, int first, int n, int max_T, int32_t *ids, int32_t *labels);

/* The summed loss (*sum) and predicted tokens (*tokens) of rows [lo, hi) of ds under model m with adapter ad
 * (NULL: the base), in batches of `batch` rows in file order built by dataset_batch (max_T as there). Returns
 * 0; -1 when out of memory; 1 when lt_model_loss fails, *bad the first row of that batch (the error is on m).
 * The sums then hold the batches before it. */
int dataset_loss(lt_model *m, lt_adapter *ad, const dataset *ds, int lo, int hi, int max_T, int batch, double *sum,
                 long long *tokens, int *bad);
#endif
