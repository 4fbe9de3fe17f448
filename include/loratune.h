/*
 * loratune.h - the stable public API of libloratune.
 *
 * Conventions (stated once, see docs/API.md for the long form):
 *  - Every function that can fail returns an lt_status. LT_OK is 0.
 *  - Handles are opaque. Every lt_*_create / lt_*_load has a matching lt_*_free, which accepts NULL.
 *  - After a failure the handle the call was made on keeps a message: lt_*_last_error(handle).
 *    A create/load that fails has no handle yet; its message is kept per thread: lt_last_error().
 *    Messages stay valid until the next call on the same handle (or thread, for lt_last_error).
 *  - Parameter structs are passed by pointer, start with a `size` field, and are filled with defaults
 *    by lt_*_params_init(&p, sizeof p): the library writes exactly sizeof p bytes (its defaults for
 *    the fields it knows, zeros beyond) and sets p.size. Fields may be appended in later minor
 *    versions, never reordered; a program built against an older header keeps working.
 *  - Threads: one handle is used by one thread at a time. A loaded lt_model is read-only after load
 *    and may be shared by several trainers/threads as long as no adapter is merged into it.
 *  - The library never aborts, exits or prints; messages go to the optional log callback.
 *  - Token ids are int32; labels use -100 for "no loss here". Labels are given aligned with the
 *    input ids and shifted inside (position t predicts labels[t+1]), as in Hugging Face transformers.
 */
#ifndef LORATUNE_H
#define LORATUNE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(LT_BUILDING_LIBRARY)
#  define LT_API __declspec(dllexport)
#elif defined(_WIN32)
#  define LT_API __declspec(dllimport)
#elif defined(__GNUC__)
#  define LT_API __attribute__((visibility("default")))
#else
#  define LT_API
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Version                                                                                        */

#define LT_VERSION_MAJOR 0
#define LT_VERSION_MINOR 1
#define LT_VERSION_PATCH 0
#define LT_VERSION_NUMBER (LT_VERSION_MAJOR * 10000 + LT_VERSION_MINOR * 100 + LT_VERSION_PATCH)
#define LT_VERSION_STRING "0.1.0"

/** Run-time version as MAJOR*10000 + MINOR*100 + PATCH; compare with LT_VERSION_NUMBER. */
LT_API unsigned lt_version_number(void);
/** Run-time version as "MAJOR.MINOR.PATCH". Static storage. */
LT_API const char *lt_version_string(void);

/* ---------------------------------------------------------------------------------------------- */
/* Status                                                                                         */

typedef enum lt_status {
    LT_OK = 0,
    LT_ERR_ARGUMENT = 1,     /* a bad argument: NULL handle, out-of-range value, bad option   */
    LT_ERR_NOMEM = 2,        /* an allocation failed                                           */
    LT_ERR_IO = 3,           /* a file could not be opened, read, written or renamed           */
    LT_ERR_TRUNCATED = 4,    /* a file ends before its header says it should                   */
    LT_ERR_FORMAT = 5,       /* a file is malformed (bad header, offsets with holes/overlaps)  */
    LT_ERR_JSON = 6,         /* a JSON document does not parse or has a field of the wrong type */
    LT_ERR_DTYPE = 7,        /* a tensor dtype that is unknown or unsupported here             */
    LT_ERR_SHAPE = 8,        /* a tensor or batch has the wrong shape or byte count            */
    LT_ERR_MISSING = 9,      /* a required tensor, key or file is absent                       */
    LT_ERR_ARCH = 10,        /* an unknown or unsupported model architecture                   */
    LT_ERR_BACKEND = 11,     /* the requested backend is not available (or failed)             */
    LT_ERR_NUMERIC = 12,     /* NaN or Inf in a loss, gradient or input                        */
    LT_ERR_DATA = 13,        /* bad training data: token id out of range, nothing to learn     */
    LT_ERR_STATE = 14,       /* a call that is not valid in the handle's current state         */
    LT_ERR_UNSUPPORTED = 15, /* a valid request this build does not support                    */
    LT_ERR_INTERNAL = 16     /* a bug in libloratune; please report it                         */
} lt_status;

/** A short constant name for a status ("LT_ERR_FORMAT: malformed file"). Never NULL. */
LT_API const char *lt_status_string(lt_status status);

/** The message of the last failed create/load on this thread (creation has no handle yet). */
LT_API const char *lt_last_error(void);

/* ---------------------------------------------------------------------------------------------- */
/* Handles                                                                                        */

typedef struct lt_context lt_context;     /* backend, threads, logging                   */
typedef struct lt_model lt_model;         /* a loaded base model (read-only)             */
typedef struct lt_adapter lt_adapter;     /* a set of LoRA weights for one model         */
typedef struct lt_optimizer lt_optimizer; /* AdamW / SGD state for an adapter            */
typedef struct lt_trainer lt_trainer;     /* model + adapter + optimizer + objective     */

/* ---------------------------------------------------------------------------------------------- */
/* Context                                                                                        */

typedef enum lt_log_level { LT_LOG_DEBUG = 0, LT_LOG_INFO = 1, LT_LOG_WARN = 2, LT_LOG_ERROR = 3 } lt_log_level;
typedef void (*lt_log_fn)(void *user, lt_log_level level, const char *message);

typedef struct lt_context_params {
    size_t size;         /* sizeof(lt_context_params)                                     */
    const char *backend; /* "cpu", "cuda" or "auto" (default "auto": cuda if present)      */
    int n_threads;       /* CPU threads; 0 = all online cores (default)                  */
    lt_log_fn log_fn;    /* optional; NULL = silent                                       */
    void *log_user;
    lt_log_level log_level; /* minimum level passed to log_fn (default LT_LOG_INFO)         */
} lt_context_params;

LT_API void lt_context_params_init(lt_context_params *params, size_t size);
LT_API lt_status lt_context_create(const lt_context_params *params, lt_context **out);
LT_API void lt_context_free(lt_context *ctx);
LT_API const char *lt_context_last_error(const lt_context *ctx);
/** Name of the backend in use ("cpu", "cuda"). */
LT_API const char *lt_context_backend(const lt_context *ctx);
LT_API lt_status lt_context_set_threads(lt_context *ctx, int n_threads);
/** 1 if a backend of that name is compiled in and usable on this machine, else 0. */
LT_API int lt_backend_available(const char *name);

/* ---------------------------------------------------------------------------------------------- */
/* Model                                                                                          */

/** How the frozen base weights of the 7 decoder projections (q,k,v,o,gate,up,down) are stored and
 *  multiplied. LT_BASE_BF16: stored in bf16 (half the memory), products with bf16-rounded inputs and
 *  fp32 accumulation (AVX512_BF16 on CPUs that have it); embeddings, norms, LM head, LoRA and the
 *  optimizer stay f32. A BF16 model cannot merge adapters or export weights (LT_ERR_UNSUPPORTED). */
typedef enum lt_base_dtype { LT_BASE_F32 = 0, LT_BASE_BF16 = 1 } lt_base_dtype;

typedef struct lt_model_params {
    size_t size;         /* sizeof(lt_model_params)                                       */
    int use_mmap;        /* 1 (default): map safetensors files, use f32 weights in place  */
    int base_dtype;      /* lt_base_dtype (default LT_BASE_F32)                           */
} lt_model_params;

typedef struct lt_model_info {
    size_t size;               /* sizeof(lt_model_info), set by the caller                  */
    char architecture[64];     /* "LlamaForCausalLM"                                        */
    char dtype[16];            /* dtype of the stored weights ("F32", "BF16", "F16")        */
    int64_t vocab_size, hidden_size, intermediate_size;
    int64_t n_layers, n_heads, n_kv_heads, head_dim;
    int64_t max_position_embeddings;
    double rope_theta, rms_norm_eps;
    int tied_embeddings;
    int64_t n_params;          /* parameters of the base model                              */
    int64_t weight_bytes;      /* bytes the weights occupy in the backend                   */
} lt_model_info;

LT_API void lt_model_params_init(lt_model_params *params, size_t size);
/** Load a Hugging Face model directory (config.json + safetensors, sharded or not). */
LT_API lt_status lt_model_load(lt_context *ctx, const char *dir, const lt_model_params *params,
                               lt_model **out);
LT_API void lt_model_free(lt_model *model);
LT_API const char *lt_model_last_error(const lt_model *model);
LT_API lt_status lt_model_get_info(const lt_model *model, lt_model_info *info);

/* A batch of B rows of T tokens, row-major [B*T]. */
typedef struct lt_batch {
    size_t size;                 /* sizeof(lt_batch)                                        */
    int32_t n_rows;              /* B                                                       */
    int32_t seq_len;             /* T                                                       */
    const int32_t *input_ids;    /* [B*T]                                                   */
    const int32_t *labels;       /* [B*T] or NULL (= input_ids); -100 = no loss             */
    const int32_t *position_ids; /* [B*T] or NULL (= 0..T-1). Packed rows restart at 0: a   */
                                 /* restart begins a new sequence that attention never     */
                                 /* crosses, and no token is predicted across it.          */
} lt_batch;

LT_API void lt_batch_init(lt_batch *batch, size_t size);

/**
 * Causal-LM loss of a batch: the SUM of token cross-entropies over predicted tokens and their count
 * (mean = loss_sum / n_tokens). `adapter` may be NULL (base model only).
 */
LT_API lt_status lt_model_loss(lt_model *model, const lt_adapter *adapter, const lt_batch *batch,
                               double *loss_sum, int64_t *n_tokens);

/** Logits (fp32) of every position: out holds out_count >= B*T*V floats, [B, T, V] row-major. */
LT_API lt_status lt_model_logits(lt_model *model, const lt_adapter *adapter, const lt_batch *batch,
                                 float *out, size_t out_count);

/* ---------------------------------------------------------------------------------------------- */
/* Adapters (LoRA)                                                                                */

/* Target module bits. */
enum {
    LT_TARGET_Q = 1 << 0, LT_TARGET_K = 1 << 1, LT_TARGET_V = 1 << 2, LT_TARGET_O = 1 << 3,
    LT_TARGET_GATE = 1 << 4, LT_TARGET_UP = 1 << 5, LT_TARGET_DOWN = 1 << 6,
    LT_TARGET_ALL = 0x7f
};

typedef enum lt_lora_init { LT_INIT_DEFAULT = 0 /* kaiming-uniform A, zero B */, LT_INIT_GAUSSIAN = 1 } lt_lora_init;

typedef struct lt_adapter_params {
    size_t size;         /* sizeof(lt_adapter_params)                                     */
    int rank;            /* r (default 8)                                                  */
    float alpha;         /* lora_alpha (default 8)                                         */
    float dropout;       /* lora_dropout (default 0)                                       */
    unsigned targets;    /* LT_TARGET_* bits (default q,k,v,o,gate,up,down)                */
    int use_rslora;      /* scaling alpha/sqrt(r) instead of alpha/r                       */
    lt_lora_init init;
    uint64_t seed;       /* initialisation seed (default 0)                                */
} lt_adapter_params;

LT_API void lt_adapter_params_init(lt_adapter_params *params, size_t size);
LT_API lt_status lt_adapter_create(lt_model *model, const lt_adapter_params *params, lt_adapter **out);
/** Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors). */
LT_API lt_status lt_adapter_load(lt_model *model, const char *dir, lt_adapter **out);
/** Save as a PEFT adapter directory (written atomically: temp files + rename). */
LT_API lt_status lt_adapter_save(lt_adapter *adapter, const char *dir);
LT_API void lt_adapter_free(lt_adapter *adapter);
LT_API const char *lt_adapter_last_error(const lt_adapter *adapter);
LT_API lt_status lt_adapter_get_params(const lt_adapter *adapter, lt_adapter_params *params);
/** Number of trainable parameters. */
LT_API int64_t lt_adapter_n_params(const lt_adapter *adapter);
/**
 * Write a merged Hugging Face model directory (config.json + safetensors, F32, sharded past
 * max_shard_bytes; 0 = 2 GiB). The loaded model itself is not changed.
 */
LT_API lt_status lt_adapter_export_merged(lt_adapter *adapter, const char *dir, int64_t max_shard_bytes);
/** Merge the adapter into the model's weights in place (W += s B A), and undo it. */
LT_API lt_status lt_adapter_merge(lt_adapter *adapter);
LT_API lt_status lt_adapter_unmerge(lt_adapter *adapter);

/* ---------------------------------------------------------------------------------------------- */
/* Optimizers and schedules                                                                       */

typedef enum lt_optimizer_kind { LT_OPT_ADAMW = 0, LT_OPT_SGD = 1 } lt_optimizer_kind;
typedef enum lt_schedule { LT_SCHED_CONSTANT = 0, LT_SCHED_LINEAR = 1, LT_SCHED_COSINE = 2 } lt_schedule;

typedef struct lt_optimizer_params {
    size_t size;           /* sizeof(lt_optimizer_params)                                    */
    lt_optimizer_kind kind;/* default AdamW                                                  */
    float lr;              /* peak learning rate (default 1e-4)                              */
    float beta1, beta2;    /* AdamW (default 0.9, 0.999)                                     */
    float eps;             /* AdamW (default 1e-8)                                           */
    float weight_decay;    /* decoupled (AdamW) / L2 (SGD); default 0                        */
    float momentum;        /* SGD (default 0.9)                                              */
    lt_schedule schedule;  /* default constant                                               */
    int64_t warmup_steps;  /* warmup steps (default 0)                                       */
    float warmup_ratio;    /* used when warmup_steps == 0: ceil(total_steps * ratio)         */
    int64_t total_steps;   /* length of the schedule, needed by linear and cosine            */
    float max_grad_norm;   /* global-norm clipping; 0 = off (default 1.0)                    */
} lt_optimizer_params;

LT_API void lt_optimizer_params_init(lt_optimizer_params *params, size_t size);
LT_API lt_status lt_optimizer_create(lt_adapter *adapter, const lt_optimizer_params *params,
                                     lt_optimizer **out);
LT_API void lt_optimizer_free(lt_optimizer *opt);
LT_API const char *lt_optimizer_last_error(const lt_optimizer *opt);
/** Learning rate the next update will use. */
LT_API double lt_optimizer_lr(const lt_optimizer *opt);
LT_API int64_t lt_optimizer_step_count(const lt_optimizer *opt);
LT_API lt_status lt_optimizer_save(lt_optimizer *opt, const char *path);
LT_API lt_status lt_optimizer_load(lt_optimizer *opt, const char *path);

/* ---------------------------------------------------------------------------------------------- */
/* Trainer                                                                                        */

typedef enum lt_objective { LT_OBJ_SFT = 0 } lt_objective;

typedef struct lt_trainer_params {
    size_t size;                 /* sizeof(lt_trainer_params)                              */
    lt_objective objective;      /* default SFT                                            */
    int grad_accum;              /* micro-batches per optimizer update (default 1)         */
    int gradient_checkpointing;  /* 1 (default): keep layer inputs, recompute in backward  */
    uint64_t seed;               /* dropout RNG seed (default 0)                           */
} lt_trainer_params;

typedef struct lt_step_result {
    size_t size;                 /* sizeof(lt_step_result), set by the caller              */
    double loss;                 /* mean token loss of the micro-batch(es) of this call     */
    double grad_norm;            /* pre-clip global norm (only when updated = 1)           */
    double lr;                   /* learning rate used by the update                        */
    int64_t tokens;              /* predicted tokens in this call                           */
    double tokens_per_s;         /* input tokens / wall time of this call                   */
    int64_t step;                /* optimizer updates done so far                           */
    int updated;                 /* 1 if this call finished an accumulation and updated     */
} lt_step_result;

typedef void (*lt_progress_fn)(void *user, const lt_step_result *result);

LT_API void lt_trainer_params_init(lt_trainer_params *params, size_t size);
LT_API lt_status lt_trainer_create(lt_model *model, lt_adapter *adapter, lt_optimizer *opt,
                                   const lt_trainer_params *params, lt_trainer **out);
LT_API void lt_trainer_free(lt_trainer *trainer);
LT_API const char *lt_trainer_last_error(const lt_trainer *trainer);
LT_API void lt_trainer_set_progress(lt_trainer *trainer, lt_progress_fn fn, void *user);
/**
 * One micro-batch: forward, backward, and (every grad_accum calls) clip + optimizer update.
 * The loss of an accumulated update is the token-level mean over all its micro-batches.
 * On failure (NaN loss, bad ids) the adapter and optimizer are left as they were.
 */
LT_API lt_status lt_trainer_step(lt_trainer *trainer, const lt_batch *batch, lt_step_result *result);
/** Loss on held-out data with the trainer's adapter (no dropout, no gradients). */
LT_API lt_status lt_trainer_evaluate(lt_trainer *trainer, const lt_batch *batch, double *loss_sum,
                                     int64_t *n_tokens);
/** Checkpoint: adapter (PEFT layout) + optimizer + trainer state, written atomically into dir. */
LT_API lt_status lt_trainer_save_checkpoint(lt_trainer *trainer, const char *dir);
LT_API lt_status lt_trainer_load_checkpoint(lt_trainer *trainer, const char *dir);

/* ---------------------------------------------------------------------------------------------- */
/* Generation                                                                                     */

typedef struct lt_generate_params {
    size_t size;            /* sizeof(lt_generate_params)                                   */
    int max_new_tokens;     /* default 32                                                   */
    float temperature;      /* 0 = greedy (default)                                         */
    int top_k;              /* 0 = off                                                      */
    float top_p;            /* 1 = off                                                      */
    uint64_t seed;
    int32_t eos_token_id;   /* stop when produced; -1 = never; LT_EOS_FROM_CONFIG (default) */
} lt_generate_params;

#define LT_EOS_FROM_CONFIG (-2) /* use config.json's eos_token_id */

LT_API void lt_generate_params_init(lt_generate_params *params, size_t size);
/**
 * Generate continuations for n_prompts prompts (each prompt_lens[i] ids, concatenated in prompts),
 * with a KV cache; `adapter` may be NULL (base model). out receives n_prompts rows of
 * max_new_tokens ids (row i at out + i * max_new_tokens); out_lens[i] is how many were produced
 * (an EOS token is included and ends the row). Sampling: logits / temperature, then top-k, then
 * top-p; temperature 0 is greedy. Deterministic for a given seed.
 */
LT_API lt_status lt_generate(lt_model *model, const lt_adapter *adapter, const int32_t *prompts,
                             const int32_t *prompt_lens, int n_prompts, const lt_generate_params *params,
                             int32_t *out, int32_t *out_lens);

#ifdef __cplusplus
}
#endif
#endif /* LORATUNE_H */
