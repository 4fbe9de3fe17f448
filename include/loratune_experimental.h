/*
 * loratune_experimental.h - API with NO stability promise: it may change or go in any release,
 * within the same SONAME (docs/ABI.md). Include it only if you accept that.
 */
#ifndef LORATUNE_EXPERIMENTAL_H
#define LORATUNE_EXPERIMENTAL_H

#include "loratune.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Create a model with random weights from a config.json text (benchmarks, demos, tests):
 * linear and embedding weights ~ N(0, init_std^2), norm weights 1. Deterministic for a seed.
 */
LT_API lt_status lt_model_create_random(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
                                        lt_model **out);

/** lt_model_create_random with model params (base_dtype; use_mmap is ignored). params may be NULL. */
LT_API lt_status lt_model_create_random_params(lt_context *ctx, const char *config_json, uint64_t seed,
                                               float init_std, const lt_model_params *params, lt_model **out);

/** Write the model's weights as a Hugging Face model directory (f32 safetensors + config.json). */
LT_API lt_status lt_model_save(lt_model *model, const char *dir);

/**
 * An Ollama Modelfile for a GGUF exported with this tokenizer (lt_model_export_gguf): "FROM <from>",
 * "ADAPTER <adapter>" when adapter is not NULL, the chat template as a Go TEMPLATE and "PARAMETER stop"
 * for EOS and the special tokens that end an assistant turn. The TEMPLATE is derived by rendering probe
 * conversations and is written only when it reproduces the Jinja template's rendering byte for byte
 * (templates that wrap each message in fixed text per role: ChatML, Llama 3, Gemma, Phi-3, ...); otherwise
 * the Jinja template is written as comments and *warning says so (Ollama then picks a template from the
 * GGUF's tokenizer.chat_template). *text (and *warning, NULL when there is none) stay valid until the
 * next call on the tokenizer.
 */
LT_API lt_status lt_tokenizer_ollama_modelfile(lt_tokenizer *tok, const char *from, const char *adapter,
                                               const char **text, const char **warning);

#ifdef __cplusplus
}
#endif
#endif
