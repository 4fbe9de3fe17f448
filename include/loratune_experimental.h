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

/**
 * Text files written with the adapter by every later lt_adapter_save and lt_adapter_export_merged (a model
 * card README.md, the run record training_args.json, ...), into the same directory in the same save, so the
 * files and the weights they describe are written together. names are plain file names (no '/'); names
 * and texts are copied. n = 0 removes them.
 */
LT_API lt_status lt_adapter_set_save_files(lt_adapter *adapter, const char *const *names, const char *const *texts,
                                           int n);

/** Write the model's weights as a Hugging Face model directory (f32 safetensors + config.json). */
LT_API lt_status lt_model_save(lt_model *model, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
