/* textdata.h - text JSONL datasets tokenized for the command-line tool (see textdata.c). */
#ifndef LT_TOOL_TEXTDATA_H
#define LT_TOOL_TEXTDATA_H
#include "cli/cli.h"
#include "cli/jsonl.h"

/* Load FILE: pre-tokenized rows ({"input_ids"}) as dataset_load does, or text rows ({"text"},
 * {"prompt","completion"[,"label"]}, {"messages"}, {"prompt","chosen","rejected"}) tokenized with the
 * tokenizer in tokdir (lt_tokenizer_encode_row defaults: completion-only / assistant-only loss, EOS
 * appended). Rows with nothing to learn are dropped and counted in *dropped. */
int dataset_load_any(const char *path, const char *tokdir, dataset *ds, int *dropped, char *msg, size_t msglen);
#endif
