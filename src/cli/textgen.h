/* textgen.h - text generation for `generate --prompt/--messages` and `chat` (textgen.c): token ids in, text
 * out as it arrives, stopping at any of the model's EOS ids or at a stop string. */
#ifndef LT_TOOL_TEXTGEN_H
#define LT_TOOL_TEXTGEN_H

#include "cli/cli.h"

#define TEXTGEN_MAX_EOS 16
#define TEXTGEN_MAX_STOPS 16

typedef struct textgen {
    lt_model *model;
    const lt_adapter *adapter; /* NULL: the base model */
    lt_tokenizer *tok;
    lt_generate_params gp; /* sampling; gp.max_new_tokens is the budget of one reply */
    int32_t eos[TEXTGEN_MAX_EOS];
    int n_eos;
    const char *stops[TEXTGEN_MAX_STOPS];
    int n_stops;
    FILE *stream; /* where the text goes as it arrives; NULL: nowhere */
} textgen;

typedef struct textgen_result {
    char *text;   /* the reply: special tokens skipped, the EOS and a stop string left out (malloc'd) */
    int32_t *ids; /* the generated ids, the EOS included when one ended the reply (malloc'd) */
    int n_ids;
    const char *stop; /* "eos", "stop" (a stop string) or "length" */
} textgen_result;

/* The EOS ids of a model directory: generation_config.json's eos_token_id (an int or a list), else
 * config.json's, plus the tokenizer's EOS token; 0 or more, no duplicates. */
int textgen_eos_ids(const char *model_dir, lt_tokenizer *tok, int32_t *eos, int cap);

/* Generate a reply to prompt (n ids). Prints the error and returns 1 on failure. */
int textgen_run(const char *cmd, textgen *g, const int32_t *prompt, int n, textgen_result *res);
void textgen_result_free(textgen_result *res);

#endif
