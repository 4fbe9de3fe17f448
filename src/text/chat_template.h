/*
 * chat_template.h - chat templates (text/chat_template.c): a Jinja subset rendering chat_template
 * strings as transformers does, and assistant masks. Private to src/text/.
 */
#ifndef LT_CHAT_TEMPLATE_H
#define LT_CHAT_TEMPLATE_H

#include "text/tokenizer.h"

/* Render the tokenizer's chat template for doc: a JSON array of messages, or an object {"messages": [...],
 * "tools": [...], ...} whose other keys are template variables; mask: 1 per byte of assistant text
 * (generation blocks, else per-message prefix differences). */
lt_status lt_tok_render(struct lt_tokenizer *t, json_t *doc, int add_generation_prompt, lt_buf *text, lt_buf *mask);
/* Token-level mask from a byte mask of text: 1 where a token covers a masked byte. */
lt_status lt_tok_align_mask(struct lt_tokenizer *t, const char *text, size_t n, const char *bytemask,
                            const int32_t *ids, size_t n_ids, int32_t *tokmask);

#endif /* LT_CHAT_TEMPLATE_H */
