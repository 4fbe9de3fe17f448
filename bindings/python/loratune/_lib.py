"""Low-level ctypes layer: finding libloratune, the struct mirrors and one declaration per C function.

Every struct here mirrors include/loratune.h field by field (the leading `size_t size` included);
every function is declared once, with the C declaration as a comment above it. tests/test_abi_sync.py
checks both against the header (function names, and sizes/offsets via a C compiler when there is one).

Finding the library, in this order:
  1. $LORATUNE_LIBRARY: a path to the shared library (or to a directory holding libloratune.so.0);
     when it is set, no other place is tried;
  2. the package directory (a wheel built with LORATUNE_BUNDLE_LIBRARY carries the library there);
  3. the system loader: libloratune.so.0, then ctypes.util.find_library("loratune").
The library is loaded on first use, so `import loratune` works without it. OpenBLAS chooses its kernels
when it loads with the library: when OPENBLAS_CORETYPE is unset and it would run pre-AVX2 kernels on an AVX2
CPU, the load sets the core the library suggests for its duration (_load; docs/API.md).
"""
import ctypes
import ctypes.util
import os
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int, c_int32,
                    c_int64, c_size_t, c_uint, c_uint16, c_uint64, c_void_p)
from typing import Callable, List, Optional

#: The library version these bindings were written against (LT_VERSION_NUMBER of the header).
BINDING_VERSION_NUMBER = 100  # 0.1.0
BINDING_VERSION_MAJOR = 0

# ---- opaque handles ---------------------------------------------------------------------------------


class lt_context(Structure):
    """Opaque `struct lt_context`."""


class lt_model(Structure):
    """Opaque `struct lt_model`."""


class lt_adapter(Structure):
    """Opaque `struct lt_adapter`."""


class lt_optimizer(Structure):
    """Opaque `struct lt_optimizer`."""


class lt_trainer(Structure):
    """Opaque `struct lt_trainer`."""


class lt_tokenizer(Structure):
    """Opaque `struct lt_tokenizer`."""


class lt_qtensor(Structure):
    """Opaque `struct lt_qtensor`."""


class lt_comm(Structure):
    """Opaque `struct lt_comm`."""


lt_context_p = POINTER(lt_context)
lt_qtensor_p = POINTER(lt_qtensor)
lt_model_p = POINTER(lt_model)
lt_adapter_p = POINTER(lt_adapter)
lt_optimizer_p = POINTER(lt_optimizer)
lt_trainer_p = POINTER(lt_trainer)
lt_tokenizer_p = POINTER(lt_tokenizer)
lt_comm_p = POINTER(lt_comm)

lt_status = c_int  # typedef enum lt_status
lt_log_level = c_int
lt_lora_init = c_int
lt_base_dtype = c_int
LT_BASE_F32, LT_BASE_BF16 = 0, 1
lt_optimizer_kind = c_int
lt_schedule = c_int
lt_objective = c_int
lt_grpo_scale = c_int
lt_grpo_loss = c_int
lt_special_token = c_int
lt_quant_format = c_int
lt_qpart = c_int
lt_comm_dtype = c_int
LT_COMM_F32, LT_COMM_F64 = 0, 1

# typedef int (*lt_comm_all_reduce_fn)(void *user, void *buf, size_t count, lt_comm_dtype dtype);
lt_comm_all_reduce_fn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, lt_comm_dtype)
# typedef int (*lt_comm_broadcast_fn)(void *user, void *buf, size_t bytes, int root);
lt_comm_broadcast_fn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, c_int)
# typedef int (*lt_comm_segments_fn)(void *user, void *buf, const size_t *counts, lt_comm_dtype dtype);
lt_comm_segments_fn = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(c_size_t), lt_comm_dtype)
# typedef int (*lt_comm_barrier_fn)(void *user);
lt_comm_barrier_fn = CFUNCTYPE(c_int, c_void_p)
lt_gguf_dtype = c_int
LT_GGUF_DTYPE_F32, LT_GGUF_DTYPE_F16, LT_GGUF_DTYPE_BF16, LT_GGUF_DTYPE_Q8_0 = 0, 1, 2, 3

# typedef void (*lt_log_fn)(void *user, lt_log_level level, const char *message);
lt_log_fn = CFUNCTYPE(None, c_void_p, lt_log_level, c_char_p)

# ---- parameter and result structs (mirrors of include/loratune.h) -------------------------------------


class lt_context_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("backend", c_char_p),
        ("n_threads", c_int),
        ("log_fn", lt_log_fn),
        ("log_user", c_void_p),
        ("log_level", lt_log_level),
    ]


class lt_quant_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("format", lt_quant_format),
        ("blocksize", c_int),
        ("double_quant", c_int),
    ]


class lt_qtensor_info(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("format", lt_quant_format),
        ("blocksize", c_int),
        ("double_quant", c_int),
        ("ndim", c_int),
        ("shape", c_int64 * 8),
        ("numel", c_int64),
        ("n_blocks", c_int64),
        ("bytes", c_int64),
        ("nested_offset", c_float),
    ]


class lt_model_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("use_mmap", c_int),
        ("quantization", lt_quant_format),
        ("double_quant", c_int),
        ("quant_blocksize", c_int),
        ("quantize_lm_head", c_int),
        ("base_dtype", c_int),
        ("skip_finite_check", c_int),
    ]


class lt_model_info(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("architecture", c_char * 64),
        ("dtype", c_char * 16),
        ("vocab_size", c_int64),
        ("hidden_size", c_int64),
        ("intermediate_size", c_int64),
        ("n_layers", c_int64),
        ("n_heads", c_int64),
        ("n_kv_heads", c_int64),
        ("head_dim", c_int64),
        ("max_position_embeddings", c_int64),
        ("rope_theta", c_double),
        ("rms_norm_eps", c_double),
        ("tied_embeddings", c_int),
        ("n_params", c_int64),
        ("weight_bytes", c_int64),
        ("quantization", lt_quant_format),
        ("quantized_params", c_int64),
        ("quantized_bytes", c_int64),
        ("family", c_char * 32),
        ("sliding_window", c_int64),
        ("n_sliding_layers", c_int32),
    ]


class lt_batch(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("n_rows", c_int32),
        ("seq_len", c_int32),
        ("input_ids", POINTER(c_int32)),
        ("labels", POINTER(c_int32)),
        ("position_ids", POINTER(c_int32)),
    ]


class lt_adapter_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("rank", c_int),
        ("alpha", c_float),
        ("dropout", c_float),
        ("targets", c_uint),
        ("use_rslora", c_int),
        ("init", lt_lora_init),
        ("seed", c_uint64),
        ("use_dora", c_int),
        ("full_finetune", c_int),
        ("modules_to_save", c_uint),
    ]


class lt_optimizer_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("kind", lt_optimizer_kind),
        ("lr", c_float),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
        ("momentum", c_float),
        ("schedule", lt_schedule),
        ("warmup_steps", c_int64),
        ("warmup_ratio", c_float),
        ("total_steps", c_int64),
        ("max_grad_norm", c_float),
    ]


class lt_trainer_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("objective", lt_objective),
        ("grad_accum", c_int),
        ("gradient_checkpointing", c_int),
        ("seed", c_uint64),
        ("beta", c_float),
        ("label_smoothing", c_float),
        ("desirable_weight", c_float),
        ("undesirable_weight", c_float),
        ("ref_adapter", lt_adapter_p),
        ("max_length", c_int32),
        ("num_generations", c_int32),
        ("epsilon", c_float),
        ("epsilon_high", c_float),
        ("kl_beta", c_float),
        ("scale_rewards", lt_grpo_scale),
        ("loss_type", lt_grpo_loss),
        ("comm", lt_comm_p),
        ("zero_stage", c_int),
        ("activation_memory", c_int64),
    ]


class lt_comm_callbacks(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("rank", c_int),
        ("world_size", c_int),
        ("user", c_void_p),
        ("all_reduce", lt_comm_all_reduce_fn),
        ("broadcast", lt_comm_broadcast_fn),
        ("reduce_scatter", lt_comm_segments_fn),
        ("all_gather", lt_comm_segments_fn),
        ("barrier", lt_comm_barrier_fn),
    ]


class lt_pref_batch(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("n_rows", c_int32),
        ("prompt_ids", POINTER(c_int32)),
        ("prompt_lens", POINTER(c_int32)),
        ("chosen_ids", POINTER(c_int32)),
        ("chosen_lens", POINTER(c_int32)),
        ("rejected_ids", POINTER(c_int32)),
        ("rejected_lens", POINTER(c_int32)),
        ("labels", POINTER(c_int32)),
        ("ref_chosen_logps", POINTER(c_double)),
        ("ref_rejected_logps", POINTER(c_double)),
        ("ref_kl_logps", POINTER(c_double)),
    ]


class lt_step_result(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("loss", c_double),
        ("grad_norm", c_double),
        ("lr", c_double),
        ("tokens", c_int64),
        ("tokens_per_s", c_double),
        ("step", c_int64),
        ("updated", c_int),
        ("rewards_chosen", c_double),
        ("rewards_rejected", c_double),
        ("rewards_accuracies", c_double),
        ("rewards_margins", c_double),
        ("kl", c_double),
        ("reward_mean", c_double),
        ("reward_std", c_double),
        ("clip_fraction", c_double),
        ("completion_length", c_double),
    ]


class lt_generate_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("max_new_tokens", c_int),
        ("temperature", c_float),
        ("top_k", c_int),
        ("top_p", c_float),
        ("seed", c_uint64),
        ("eos_token_id", c_int32),
    ]


class lt_text_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("max_len", c_int32),
        ("completion_only", c_int),
        ("assistant_only", c_int),
        ("add_special", c_int),
        ("add_eos", c_int),
    ]


class lt_gguf_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("dtype", lt_gguf_dtype),
        ("tokenizer", lt_tokenizer_p),
        ("name", c_char_p),
        ("allow_approximate", c_int),
    ]


# ---- include/loratune_experimental.h (no ABI promise) ----
class lt_combine_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("method", c_int),
        ("weights", POINTER(c_float)),
        ("density", c_float),
        ("t", c_float),
        ("rank", c_int),
        ("seed", c_uint64),
    ]


class lt_combine_report(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("rank", c_int),
        ("kept_energy", c_double),
        ("total_energy", c_double),
        ("max_module_error", c_double),
    ]


class lt_extract_params(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("rank", c_int),
        ("targets", c_uint),
    ]


class lt_extract_report(Structure):
    _fields_ = [
        ("size", c_size_t),
        ("n_modules", c_int),
        ("kept_energy", c_double),
        ("total_energy", c_double),
        ("module_kept", POINTER(c_double)),
        ("module_total", POINTER(c_double)),
        ("others_max_diff", c_double),
        ("others_name", c_char * 128),
    ]


# typedef void (*lt_progress_fn)(void *user, const lt_step_result *result);
lt_progress_fn = CFUNCTYPE(None, c_void_p, POINTER(lt_step_result))

#: Every struct of the stable header, by C name (used by the sync test).
STRUCTS = {cls.__name__: cls for cls in (lt_context_params, lt_quant_params, lt_qtensor_info,
                                         lt_model_params, lt_model_info, lt_batch,
                                         lt_adapter_params, lt_optimizer_params, lt_trainer_params,
                                         lt_pref_batch, lt_step_result, lt_generate_params, lt_text_params,
                                         lt_comm_callbacks, lt_gguf_params)}

# ---- function declarations ------------------------------------------------------------------------------
# (name, restype, argtypes). The C declaration is the comment above each entry.

_DECLS = [
    # unsigned lt_version_number(void);
    ("lt_version_number", c_uint, []),
    # const char *lt_version_string(void);
    ("lt_version_string", c_char_p, []),
    # const char *lt_status_string(lt_status status);
    ("lt_status_string", c_char_p, [lt_status]),
    # const char *lt_last_error(void);
    ("lt_last_error", c_char_p, []),

    # void lt_context_params_init(lt_context_params *params, size_t size);
    ("lt_context_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_context_create(const lt_context_params *params, lt_context **out);
    ("lt_context_create", lt_status, [POINTER(lt_context_params), POINTER(lt_context_p)]),
    # void lt_context_free(lt_context *ctx);
    ("lt_context_free", None, [lt_context_p]),
    # const char *lt_context_last_error(const lt_context *ctx);
    ("lt_context_last_error", c_char_p, [lt_context_p]),
    # const char *lt_context_backend(const lt_context *ctx);
    ("lt_context_backend", c_char_p, [lt_context_p]),
    # lt_status lt_context_set_threads(lt_context *ctx, int n_threads);
    ("lt_context_set_threads", lt_status, [lt_context_p, c_int]),
    # int lt_backend_available(const char *name);
    ("lt_backend_available", c_int, [c_char_p]),

    # void lt_quant_params_init(lt_quant_params *params, size_t size);
    ("lt_quant_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_qtensor_quantize(const float *data, const int64_t *shape, int ndim,
    #                               const lt_quant_params *params, lt_qtensor **out);
    ("lt_qtensor_quantize", lt_status, [POINTER(c_float), POINTER(c_int64), c_int, POINTER(lt_quant_params),
                                        POINTER(lt_qtensor_p)]),
    # void lt_qtensor_free(lt_qtensor *q);
    ("lt_qtensor_free", None, [lt_qtensor_p]),
    # const char *lt_qtensor_last_error(const lt_qtensor *q);
    ("lt_qtensor_last_error", c_char_p, [lt_qtensor_p]),
    # lt_status lt_qtensor_get_info(const lt_qtensor *q, lt_qtensor_info *info);
    ("lt_qtensor_get_info", lt_status, [lt_qtensor_p, POINTER(lt_qtensor_info)]),
    # lt_status lt_qtensor_dequantize(const lt_qtensor *q, float *out, size_t count);
    ("lt_qtensor_dequantize", lt_status, [lt_qtensor_p, POINTER(c_float), c_size_t]),
    # lt_status lt_qtensor_dequantize_bf16(const lt_qtensor *q, uint16_t *out, size_t count);
    ("lt_qtensor_dequantize_bf16", lt_status, [lt_qtensor_p, POINTER(c_uint16), c_size_t]),
    # lt_status lt_qtensor_part(const lt_qtensor *q, lt_qpart part, const void **data, size_t *bytes);
    ("lt_qtensor_part", lt_status, [lt_qtensor_p, lt_qpart, POINTER(c_void_p), POINTER(c_size_t)]),

    # void lt_model_params_init(lt_model_params *params, size_t size);
    ("lt_model_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_model_load(lt_context *ctx, const char *dir, const lt_model_params *params, lt_model **out);
    ("lt_model_load", lt_status, [lt_context_p, c_char_p, POINTER(lt_model_params), POINTER(lt_model_p)]),
    # void lt_model_free(lt_model *model);
    ("lt_model_free", None, [lt_model_p]),
    # const char *lt_model_last_error(const lt_model *model);
    ("lt_model_last_error", c_char_p, [lt_model_p]),
    # lt_status lt_model_get_info(const lt_model *model, lt_model_info *info);
    ("lt_model_get_info", lt_status, [lt_model_p, POINTER(lt_model_info)]),
    # lt_status lt_model_quantize(lt_model *model, const lt_quant_params *params);
    ("lt_model_quantize", lt_status, [lt_model_p, POINTER(lt_quant_params)]),
    # lt_status lt_model_save_quantized(lt_model *model, const char *dir);
    ("lt_model_save_quantized", lt_status, [lt_model_p, c_char_p]),
    # void lt_batch_init(lt_batch *batch, size_t size);
    ("lt_batch_init", None, [c_void_p, c_size_t]),
    # lt_status lt_model_loss(lt_model *model, const lt_adapter *adapter, const lt_batch *batch,
    #                         double *loss_sum, int64_t *n_tokens);
    ("lt_model_loss", lt_status, [lt_model_p, lt_adapter_p, POINTER(lt_batch), POINTER(c_double),
                                  POINTER(c_int64)]),
    # lt_status lt_model_logits(lt_model *model, const lt_adapter *adapter, const lt_batch *batch,
    #                           float *out, size_t out_count);
    ("lt_model_logits", lt_status, [lt_model_p, lt_adapter_p, POINTER(lt_batch), POINTER(c_float), c_size_t]),

    # void lt_adapter_params_init(lt_adapter_params *params, size_t size);
    ("lt_adapter_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_adapter_create(lt_model *model, const lt_adapter_params *params, lt_adapter **out);
    ("lt_adapter_create", lt_status, [lt_model_p, POINTER(lt_adapter_params), POINTER(lt_adapter_p)]),
    # lt_status lt_adapter_load(lt_model *model, const char *dir, lt_adapter **out);
    ("lt_adapter_load", lt_status, [lt_model_p, c_char_p, POINTER(lt_adapter_p)]),
    # lt_status lt_adapter_save(lt_adapter *adapter, const char *dir);
    ("lt_adapter_save", lt_status, [lt_adapter_p, c_char_p]),
    # void lt_adapter_free(lt_adapter *adapter);
    ("lt_adapter_free", None, [lt_adapter_p]),
    # const char *lt_adapter_last_error(const lt_adapter *adapter);
    ("lt_adapter_last_error", c_char_p, [lt_adapter_p]),
    # lt_status lt_adapter_get_params(const lt_adapter *adapter, lt_adapter_params *params);
    ("lt_adapter_get_params", lt_status, [lt_adapter_p, POINTER(lt_adapter_params)]),
    # int64_t lt_adapter_n_params(const lt_adapter *adapter);
    ("lt_adapter_n_params", c_int64, [lt_adapter_p]),
    # lt_status lt_adapter_export_merged(lt_adapter *adapter, const char *dir, int64_t max_shard_bytes);
    ("lt_adapter_export_merged", lt_status, [lt_adapter_p, c_char_p, c_int64]),
    # lt_status lt_adapter_merge(lt_adapter *adapter);
    ("lt_adapter_merge", lt_status, [lt_adapter_p]),
    # lt_status lt_adapter_unmerge(lt_adapter *adapter);
    ("lt_adapter_unmerge", lt_status, [lt_adapter_p]),

    # void lt_optimizer_params_init(lt_optimizer_params *params, size_t size);
    ("lt_optimizer_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_optimizer_create(lt_adapter *adapter, const lt_optimizer_params *params, lt_optimizer **out);
    ("lt_optimizer_create", lt_status, [lt_adapter_p, POINTER(lt_optimizer_params), POINTER(lt_optimizer_p)]),
    # void lt_optimizer_free(lt_optimizer *opt);
    ("lt_optimizer_free", None, [lt_optimizer_p]),
    # const char *lt_optimizer_last_error(const lt_optimizer *opt);
    ("lt_optimizer_last_error", c_char_p, [lt_optimizer_p]),
    # double lt_optimizer_lr(const lt_optimizer *opt);
    ("lt_optimizer_lr", c_double, [lt_optimizer_p]),
    # int64_t lt_optimizer_step_count(const lt_optimizer *opt);
    ("lt_optimizer_step_count", c_int64, [lt_optimizer_p]),
    # lt_status lt_optimizer_save(lt_optimizer *opt, const char *path);
    ("lt_optimizer_save", lt_status, [lt_optimizer_p, c_char_p]),
    # lt_status lt_optimizer_load(lt_optimizer *opt, const char *path);
    ("lt_optimizer_load", lt_status, [lt_optimizer_p, c_char_p]),

    # void lt_comm_callbacks_init(lt_comm_callbacks *callbacks, size_t size);
    ("lt_comm_callbacks_init", None, [c_void_p, c_size_t]),
    # lt_status lt_comm_create(const lt_comm_callbacks *callbacks, lt_comm **out);
    ("lt_comm_create", lt_status, [POINTER(lt_comm_callbacks), POINTER(lt_comm_p)]),
    # lt_status lt_comm_create_mpi(const void *mpi_comm, lt_comm **out);
    ("lt_comm_create_mpi", lt_status, [c_void_p, POINTER(lt_comm_p)]),
    # lt_status lt_comm_create_nccl(void *nccl_comm, void *cuda_stream, lt_comm **out);
    ("lt_comm_create_nccl", lt_status, [c_void_p, c_void_p, POINTER(lt_comm_p)]),
    # void lt_comm_free(lt_comm *comm);
    ("lt_comm_free", None, [lt_comm_p]),
    # const char *lt_comm_last_error(const lt_comm *comm);
    ("lt_comm_last_error", c_char_p, [lt_comm_p]),
    # int lt_comm_available(const char *engine);
    ("lt_comm_available", c_int, [c_char_p]),
    # int lt_comm_rank(const lt_comm *comm);
    ("lt_comm_rank", c_int, [lt_comm_p]),
    # int lt_comm_world_size(const lt_comm *comm);
    ("lt_comm_world_size", c_int, [lt_comm_p]),
    # lt_status lt_comm_set_timeout(lt_comm *comm, double seconds);
    ("lt_comm_set_timeout", lt_status, [lt_comm_p, c_double]),
    # lt_status lt_comm_all_reduce(lt_comm *comm, double *values, size_t n);
    ("lt_comm_all_reduce", lt_status, [lt_comm_p, POINTER(c_double), c_size_t]),

    # void lt_trainer_params_init(lt_trainer_params *params, size_t size);
    ("lt_trainer_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_trainer_create(lt_model *model, lt_adapter *adapter, lt_optimizer *opt,
    #                             const lt_trainer_params *params, lt_trainer **out);
    ("lt_trainer_create", lt_status, [lt_model_p, lt_adapter_p, lt_optimizer_p, POINTER(lt_trainer_params),
                                      POINTER(lt_trainer_p)]),
    # void lt_trainer_free(lt_trainer *trainer);
    ("lt_trainer_free", None, [lt_trainer_p]),
    # const char *lt_trainer_last_error(const lt_trainer *trainer);
    ("lt_trainer_last_error", c_char_p, [lt_trainer_p]),
    # void lt_trainer_set_progress(lt_trainer *trainer, lt_progress_fn fn, void *user);
    ("lt_trainer_set_progress", None, [lt_trainer_p, lt_progress_fn, c_void_p]),
    # lt_status lt_trainer_step(lt_trainer *trainer, const lt_batch *batch, lt_step_result *result);
    ("lt_trainer_step", lt_status, [lt_trainer_p, POINTER(lt_batch), POINTER(lt_step_result)]),
    # lt_status lt_trainer_evaluate(lt_trainer *trainer, const lt_batch *batch, double *loss_sum,
    #                               int64_t *n_tokens);
    ("lt_trainer_evaluate", lt_status, [lt_trainer_p, POINTER(lt_batch), POINTER(c_double), POINTER(c_int64)]),
    # void lt_pref_batch_init(lt_pref_batch *batch, size_t size);
    ("lt_pref_batch_init", None, [c_void_p, c_size_t]),
    # lt_status lt_trainer_step_preference(lt_trainer *trainer, const lt_pref_batch *batch,
    #                                      lt_step_result *result);
    ("lt_trainer_step_preference", lt_status, [lt_trainer_p, POINTER(lt_pref_batch), POINTER(lt_step_result)]),
    # lt_status lt_trainer_evaluate_preference(lt_trainer *trainer, const lt_pref_batch *batch,
    #                                          lt_step_result *result);
    ("lt_trainer_evaluate_preference", lt_status, [lt_trainer_p, POINTER(lt_pref_batch), POINTER(lt_step_result)]),
    # lt_status lt_trainer_reference_logps(lt_trainer *trainer, const lt_pref_batch *batch, double *chosen,
    #                                      double *rejected, double *kl);
    ("lt_trainer_reference_logps", lt_status, [lt_trainer_p, POINTER(lt_pref_batch), POINTER(c_double),
                                               POINTER(c_double), POINTER(c_double)]),
    # lt_status lt_trainer_save_checkpoint(lt_trainer *trainer, const char *dir);
    ("lt_trainer_save_checkpoint", lt_status, [lt_trainer_p, c_char_p]),
    # lt_status lt_trainer_load_checkpoint(lt_trainer *trainer, const char *dir);
    ("lt_trainer_load_checkpoint", lt_status, [lt_trainer_p, c_char_p]),

    # void lt_generate_params_init(lt_generate_params *params, size_t size);
    ("lt_generate_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_generate(lt_model *model, const lt_adapter *adapter, const int32_t *prompts,
    #                       const int32_t *prompt_lens, int n_prompts, const lt_generate_params *params,
    #                       int32_t *out, int32_t *out_lens);
    ("lt_generate", lt_status, [lt_model_p, lt_adapter_p, POINTER(c_int32), POINTER(c_int32), c_int,
                                POINTER(lt_generate_params), POINTER(c_int32), POINTER(c_int32)]),

    # lt_status lt_grpo_generate(lt_trainer *trainer, const int32_t *prompts, const int32_t *prompt_lens,
    #                            int n_prompts, const lt_generate_params *gen, int32_t *completions,
    #                            int32_t *completion_lens);
    ("lt_grpo_generate", lt_status, [lt_trainer_p, POINTER(c_int32), POINTER(c_int32), c_int,
                                     POINTER(lt_generate_params), POINTER(c_int32), POINTER(c_int32)]),
    # lt_status lt_grpo_step(lt_trainer *trainer, const float *rewards, lt_step_result *result);
    ("lt_grpo_step", lt_status, [lt_trainer_p, POINTER(c_float), POINTER(lt_step_result)]),
    # lt_status lt_tokenizer_load(const char *path, lt_tokenizer **out);
    ("lt_tokenizer_load", lt_status, [c_char_p, POINTER(lt_tokenizer_p)]),
    # void lt_tokenizer_free(lt_tokenizer *tok);
    ("lt_tokenizer_free", None, [lt_tokenizer_p]),
    # const char *lt_tokenizer_last_error(const lt_tokenizer *tok);
    ("lt_tokenizer_last_error", c_char_p, [lt_tokenizer_p]),
    # int32_t lt_tokenizer_vocab_size(const lt_tokenizer *tok);
    ("lt_tokenizer_vocab_size", c_int32, [lt_tokenizer_p]),
    # lt_status lt_tokenizer_encode(lt_tokenizer *tok, const char *text, size_t len, int add_special,
    #                               int32_t *ids, size_t capacity, size_t *n_ids);
    ("lt_tokenizer_encode", lt_status, [lt_tokenizer_p, c_char_p, c_size_t, c_int, POINTER(c_int32), c_size_t,
                                        POINTER(c_size_t)]),
    # lt_status lt_tokenizer_decode(lt_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
    #                               char *text, size_t capacity, size_t *len);
    ("lt_tokenizer_decode", lt_status, [lt_tokenizer_p, POINTER(c_int32), c_size_t, c_int, c_void_p, c_size_t,
                                        POINTER(c_size_t)]),
    # int32_t lt_tokenizer_token_to_id(const lt_tokenizer *tok, const char *token);
    ("lt_tokenizer_token_to_id", c_int32, [lt_tokenizer_p, c_char_p]),
    # const char *lt_tokenizer_id_to_token(const lt_tokenizer *tok, int32_t id);
    ("lt_tokenizer_id_to_token", c_char_p, [lt_tokenizer_p, c_int32]),
    # int32_t lt_tokenizer_special_id(const lt_tokenizer *tok, lt_special_token which);
    ("lt_tokenizer_special_id", c_int32, [lt_tokenizer_p, lt_special_token]),
    # int lt_tokenizer_is_special(const lt_tokenizer *tok, int32_t id);
    ("lt_tokenizer_is_special", c_int, [lt_tokenizer_p, c_int32]),
    # lt_status lt_tokenizer_render_chat(lt_tokenizer *tok, const char *messages_json, int add_generation_prompt,
    #                                    const char **text, size_t *len);
    ("lt_tokenizer_render_chat", lt_status, [lt_tokenizer_p, c_char_p, c_int, POINTER(c_void_p), POINTER(c_size_t)]),
    # lt_status lt_tokenizer_encode_chat(lt_tokenizer *tok, const char *messages_json, int add_generation_prompt,
    #                                    int32_t *ids, int32_t *mask, size_t capacity, size_t *n_ids);
    ("lt_tokenizer_encode_chat", lt_status, [lt_tokenizer_p, c_char_p, c_int, POINTER(c_int32), POINTER(c_int32),
                                             c_size_t, POINTER(c_size_t)]),
    # void lt_text_params_init(lt_text_params *params, size_t size);
    ("lt_text_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_tokenizer_encode_row(lt_tokenizer *tok, const char *row_json, const lt_text_params *params,
    #                                   int32_t *ids, int32_t *labels, size_t capacity, size_t *n);
    ("lt_tokenizer_encode_row", lt_status, [lt_tokenizer_p, c_char_p, POINTER(lt_text_params), POINTER(c_int32),
                                            POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
    # lt_status lt_pack_sequences(const int32_t *ids, const int32_t *labels, const int32_t *lens, int32_t n_seqs,
    #                             int32_t seq_len, int32_t pad_id, int32_t *out_ids, int32_t *out_labels,
    #                             int32_t *out_position_ids, int32_t capacity_rows, int32_t *n_rows);
    ("lt_pack_sequences", lt_status, [POINTER(c_int32), POINTER(c_int32), POINTER(c_int32), c_int32, c_int32, c_int32,
                                      POINTER(c_int32), POINTER(c_int32), POINTER(c_int32), c_int32, POINTER(c_int32)]),
    # void lt_gguf_params_init(lt_gguf_params *params, size_t size);
    ("lt_gguf_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_model_export_gguf(lt_model *model, const lt_adapter *adapter, const char *path,
    #                                const lt_gguf_params *params);
    ("lt_model_export_gguf", lt_status, [lt_model_p, lt_adapter_p, c_char_p, POINTER(lt_gguf_params)]),
    # lt_status lt_adapter_export_gguf(lt_adapter *adapter, const char *path, const lt_gguf_params *params);
    ("lt_adapter_export_gguf", lt_status, [lt_adapter_p, c_char_p, POINTER(lt_gguf_params)]),
]

# include/loratune_experimental.h: no ABI promise (docs/ABI.md).
_EXPERIMENTAL_DECLS = [
    # lt_status lt_model_create_random(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
    #                                  lt_model **out);
    ("lt_model_create_random", lt_status, [lt_context_p, c_char_p, c_uint64, c_float, POINTER(lt_model_p)]),
    # lt_status lt_model_create_random_params(lt_context *ctx, const char *config_json, uint64_t seed,
    #                                         float init_std, const lt_model_params *params, lt_model **out);
    ("lt_model_create_random_params", lt_status,
     [lt_context_p, c_char_p, c_uint64, c_float, POINTER(lt_model_params), POINTER(lt_model_p)]),
    # lt_status lt_adapter_set_save_files(lt_adapter *adapter, const char *const *names, const char *const *texts,
    #                                     int n);
    ("lt_adapter_set_save_files", lt_status, [lt_adapter_p, POINTER(c_char_p), POINTER(c_char_p), c_int]),
    # lt_status lt_model_save(lt_model *model, const char *dir);
    ("lt_model_save", lt_status, [lt_model_p, c_char_p]),
    # lt_status lt_tokenizer_ollama_modelfile(lt_tokenizer *tok, const char *from, const char *adapter,
    #                                         const char **text, const char **warning);
    ("lt_tokenizer_ollama_modelfile", lt_status,
     [lt_tokenizer_p, c_char_p, c_char_p, POINTER(c_char_p), POINTER(c_char_p)]),
    # void lt_combine_params_init(lt_combine_params *params, size_t size);
    ("lt_combine_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_adapter_combine(lt_adapter **adapters, int n, const lt_combine_params *params,
    #                              lt_adapter **out, lt_combine_report *report);
    ("lt_adapter_combine", lt_status, [POINTER(lt_adapter_p), c_int, POINTER(lt_combine_params),
                                       POINTER(lt_adapter_p), POINTER(lt_combine_report)]),
    # lt_status lt_adapter_combine_into_base(lt_adapter **adapters, int n, const lt_combine_params *params,
    #                                        const char *dir);
    ("lt_adapter_combine_into_base", lt_status, [POINTER(lt_adapter_p), c_int, POINTER(lt_combine_params), c_char_p]),
    # void lt_extract_params_init(lt_extract_params *params, size_t size);
    ("lt_extract_params_init", None, [c_void_p, c_size_t]),
    # lt_status lt_adapter_extract(lt_model *base, lt_model *tuned, const lt_extract_params *params,
    #                              lt_adapter **out, lt_extract_report *report);
    ("lt_adapter_extract", lt_status, [lt_model_p, lt_model_p, POINTER(lt_extract_params), POINTER(lt_adapter_p),
                                       POINTER(lt_extract_report)]),
    # lt_status lt_trainer_frozen_gemm_stats(const lt_trainer *trainer, double *seconds, double *gflop);
    ("lt_trainer_frozen_gemm_stats", lt_status, [lt_trainer_p, POINTER(c_double), POINTER(c_double)]),
    # const char *lt_openblas_coretype_hint(void);
    ("lt_openblas_coretype_hint", c_char_p, []),
]

#: Names of the declared functions (used by the sync test).
DECLARED = [d[0] for d in _DECLS]
DECLARED_EXPERIMENTAL = [d[0] for d in _EXPERIMENTAL_DECLS]


class LibraryNotFoundError(OSError):
    """libloratune could not be found or loaded."""


def _candidates() -> List[str]:
    env = os.environ.get("LORATUNE_LIBRARY")
    if env:  # an explicit choice: that library or nothing (never silently another one)
        if os.path.isdir(env):
            return [os.path.join(env, n) for n in _lib_names()]
        return [env]
    out = []
    here = os.path.dirname(os.path.abspath(__file__))
    out += [os.path.join(here, n) for n in _lib_names() if os.path.exists(os.path.join(here, n))]
    out += _lib_names()  # the system loader (LD_LIBRARY_PATH, ld.so.cache, rpath of the interpreter)
    found = ctypes.util.find_library("loratune")
    if found:
        out.append(found)
    return out


def _lib_names() -> List[str]:
    if sys.platform == "darwin":
        return ["libloratune.0.dylib", "libloratune.dylib"]
    if sys.platform == "win32":
        return ["loratune.dll", "libloratune.dll"]
    return ["libloratune.so.0", "libloratune.so"]


class _Missing:
    """Stands in for a function the loaded library lacks (an older library than these bindings)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args):
        raise _unsupported(self.name)


def _unsupported(name):
    from ._errors import LoratuneError, Status
    return LoratuneError(Status.ERR_UNSUPPORTED, f"{name} is not in the loaded libloratune ({path()})")


class _Lib:
    """The loaded library: one attribute per declared function."""

    def __init__(self, cdll: ctypes.CDLL, path: str):
        self.cdll = cdll
        self.path = path
        self.missing = []  # type: List[str]
        for name, restype, argtypes in _DECLS + _EXPERIMENTAL_DECLS:
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.append(name)
                setattr(self, name, _Missing(name))
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)


# A child interpreter loads the library and prints lt_openblas_coretype_hint() ("" for none).
_HINT_PROBE = ("import ctypes, sys\n"
               "f = ctypes.CDLL(sys.argv[1]).lt_openblas_coretype_hint\n"
               "f.restype = ctypes.c_char_p\n"
               "sys.stdout.write((f() or b'').decode())\n")


def _openblas_hint(cand: str) -> Optional[str]:
    """The OPENBLAS_CORETYPE to load `cand` with, or None to leave OpenBLAS's own choice.

    OpenBLAS picks its kernels when it loads, which here is when the library loads; the library knows
    which core to ask for (lt_openblas_coretype_hint: a pre-AVX2 core on an AVX2 CPU, as the loratune CLI
    runs itself again with), but only once OpenBLAS has loaded: so a child interpreter loads the library
    and asks. Only on Linux x86-64 and when OPENBLAS_CORETYPE is unset (a user's value is never replaced,
    and setting it skips this child); any failure of the child leaves OpenBLAS's choice."""
    if "OPENBLAS_CORETYPE" in os.environ or not sys.platform.startswith("linux") or not sys.executable:
        return None
    import platform
    if platform.machine() not in ("x86_64", "AMD64") or (os.sep in cand and not os.path.exists(cand)):
        return None  # (a path that is not there: the load fails anyway)
    import subprocess
    try:
        p = subprocess.run([sys.executable, "-I", "-S", "-c", _HINT_PROBE, cand], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    want = p.stdout.strip()
    return want if p.returncode == 0 and want.isalnum() else None


def _load(cand: str) -> ctypes.CDLL:
    """ctypes.CDLL(cand), with OPENBLAS_CORETYPE set for the load only when _openblas_hint says so."""
    want = _openblas_hint(cand)
    if not want:
        return ctypes.CDLL(cand)
    os.environ["OPENBLAS_CORETYPE"] = want  # read by OpenBLAS's constructor, during the load
    try:
        return ctypes.CDLL(cand)
    finally:
        del os.environ["OPENBLAS_CORETYPE"]  # the user's environment as it was


_loaded = None  # type: Optional[_Lib]
_load_lock = threading.Lock()


def lib() -> _Lib:
    """The loaded library (loaded on first call). Raises LibraryNotFoundError."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _load_lock:
        if _loaded is not None:
            return _loaded
        errors = []
        for cand in _candidates():
            try:
                cdll = _load(cand)
            except OSError as e:
                errors.append(f"  {cand}: {e}")
                continue
            if not hasattr(cdll, "lt_version_number"):
                errors.append(f"  {cand}: not libloratune (no lt_version_number)")
                continue
            number = cdll.lt_version_number
            number.restype = c_uint
            number.argtypes = []
            major = number() // 10000
            if major != BINDING_VERSION_MAJOR:
                errors.append(f"  {cand}: libloratune major version {major}, these bindings need "
                              f"{BINDING_VERSION_MAJOR}")
                continue
            _loaded = _Lib(cdll, cand)
            return _loaded
        raise LibraryNotFoundError(
            "libloratune not found; set LORATUNE_LIBRARY to the path of libloratune.so.0, put the library "
            "in the package directory, or install it where the system loader finds it. Tried:\n"
            + "\n".join(errors))


def path() -> str:
    """The path of the loaded library."""
    return lib().path


def init_struct(init_fn: Callable, cls):
    """Fill a params struct with the library's defaults: *_params_init(p, sizeof p) writes exactly
    sizeof(cls) bytes (defaults for the fields the library knows, zeros beyond) and sets `size`."""
    obj = cls()
    init_fn(ctypes.addressof(obj), ctypes.sizeof(cls))
    return obj


def decode(s: Optional[bytes]) -> str:
    return s.decode("utf-8", "replace") if s is not None else ""


__all__ = ["lib", "path", "init_struct", "LibraryNotFoundError", "STRUCTS", "DECLARED", "DECLARED_EXPERIMENTAL"]
