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
 *    versions, never reordered; a program built against an older header keeps working. Everything in
 *    this header exists since 0.1.0; what a later version appends will say "since X.Y".
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
typedef struct lt_comm lt_comm;           /* a communicator of data-parallel ranks       */

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
/* Quantized tensors (bitsandbytes NF4 / FP4 / int8 layouts, byte for byte)                      */

typedef enum lt_quant_format {
    LT_QUANT_NONE = 0,  /* not quantized (f32)                                                   */
    LT_QUANT_NF4 = 1,   /* 4-bit normal-float, blockwise absmax (QLoRA)                          */
    LT_QUANT_FP4 = 2,   /* 4-bit float (bitsandbytes fp4), blockwise absmax                      */
    LT_QUANT_INT8 = 3   /* int8 round(x * 127 / absmax), blockwise absmax (LLM.int8 when the     */
                        /* block is a row)                                                       */
} lt_quant_format;

typedef struct lt_qtensor lt_qtensor;     /* a quantized tensor in host memory           */

typedef struct lt_quant_params {
    size_t size;            /* sizeof(lt_quant_params)                                        */
    lt_quant_format format; /* default LT_QUANT_NF4                                            */
    int blocksize;          /* elements per absmax block: a power of two in 64..4096 (default 64) */
    int double_quant;       /* 4-bit only: quantize the absmax values to 8 bits in blocks of 256 */
                            /* around their mean (default 1)                                     */
} lt_quant_params;

typedef struct lt_qtensor_info {
    size_t size;            /* sizeof(lt_qtensor_info), set by the caller                      */
    lt_quant_format format;
    int blocksize;
    int double_quant;
    int ndim;
    int64_t shape[8];
    int64_t numel;
    int64_t n_blocks;       /* absmax blocks                                                   */
    int64_t bytes;          /* memory of the quantized representation (codes + statistics)     */
    float nested_offset;    /* double quantization: the mean of the absmax values              */
} lt_qtensor_info;

/* The parts of a quantized tensor, named as bitsandbytes serializes them. */
typedef enum lt_qpart {
    LT_QPART_DATA = 0,             /* packed 4-bit codes (uint8) or int8 values                 */
    LT_QPART_ABSMAX = 1,           /* f32 per block, or uint8 codes with double quantization    */
    LT_QPART_NESTED_ABSMAX = 2,    /* f32 per 256 blocks (double quantization only)             */
    LT_QPART_QUANT_MAP = 3,        /* the 16 f32 values of the 4-bit code (4-bit only)          */
    LT_QPART_NESTED_QUANT_MAP = 4  /* the 256 f32 values of the 8-bit dynamic map (double quant) */
} lt_qpart;

LT_API void lt_quant_params_init(lt_quant_params *params, size_t size);
/**
 * Quantize n = prod(shape) f32 values (row-major, ndim 1..8). NaN or Inf in data -> LT_ERR_NUMERIC.
 * The codes and statistics equal bitsandbytes' quantize_4bit (CPU) for the same input.
 */
LT_API lt_status lt_qtensor_quantize(const float *data, const int64_t *shape, int ndim,
                                     const lt_quant_params *params, lt_qtensor **out);
LT_API void lt_qtensor_free(lt_qtensor *q);
LT_API const char *lt_qtensor_last_error(const lt_qtensor *q);
LT_API lt_status lt_qtensor_get_info(const lt_qtensor *q, lt_qtensor_info *info);
/** Dequantize into out (count >= numel floats / bf16 values), row-major. */
LT_API lt_status lt_qtensor_dequantize(const lt_qtensor *q, float *out, size_t count);
LT_API lt_status lt_qtensor_dequantize_bf16(const lt_qtensor *q, uint16_t *out, size_t count);
/** Borrow one part (valid until lt_qtensor_free); LT_ERR_MISSING if the tensor has no such part. */
LT_API lt_status lt_qtensor_part(const lt_qtensor *q, lt_qpart part, const void **data, size_t *bytes);

/* ---------------------------------------------------------------------------------------------- */
/* Model                                                                                          */

/** How the frozen base weights of the 7 decoder projections (q,k,v,o,gate,up,down), the embedding table
 *  and the LM head are stored and multiplied. LT_BASE_BF16: stored in bf16 (half the memory; a tied
 *  head multiplies by the bf16 table), products with bf16-rounded inputs and fp32 accumulation
 *  (AVX512_BF16 on CPUs that have it), as torch.autocast(bfloat16) computes them; with NF4/FP4
 *  quantization the 4-bit projections are computed in bf16 (bnb_4bit_compute_dtype bfloat16). Norms,
 *  attention, activations, LoRA and the optimizer stay f32. A BF16 model cannot merge adapters or
 *  export weights (LT_ERR_UNSUPPORTED). */
typedef enum lt_base_dtype { LT_BASE_F32 = 0, LT_BASE_BF16 = 1 } lt_base_dtype;

typedef struct lt_model_params {
    size_t size;         /* sizeof(lt_model_params)                                       */
    int use_mmap;        /* 1 (default): f32 weights of an f32 file used in place from   */
                         /* the mapping; 0: copied. Files are read a tensor at a time.    */
    /* quantization on load (QLoRA): the 7 linear projections of every block, one tensor at a time;
     * embeddings and norms stay unquantized. A pre-quantized bitsandbytes checkpoint is read as it is
     * stored whatever these say. */
    lt_quant_format quantization; /* default LT_QUANT_NONE                                  */
    int double_quant;    /* 4-bit: also quantize the absmax values (default 1)            */
    int quant_blocksize; /* default 64                                                     */
    int quantize_lm_head;/* 1: quantize lm_head too (untied models only; default 0)       */
    int base_dtype;      /* lt_base_dtype (default LT_BASE_F32)                           */
    /* since 0.2 (hardening) */
    int skip_finite_check; /* 0 (default): a NaN or Inf weight fails the load with LT_ERR_NUMERIC naming
                            * the tensor (checked as each chunk is converted, packed or quantized, or
                            * read once when mapped in place); 1: load without looking (a weight
                            * quantized while loading must still be finite)                      */
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
    lt_quant_format quantization; /* format of the quantized projections (NONE: all f32)    */
    int64_t quantized_params;  /* parameters stored quantized                               */
    int64_t quantized_bytes;   /* their bytes (codes + statistics): 8 * bytes / params bits */
    /* model families */
    char family[32];           /* "Llama", "Qwen2", "Qwen3", "Mistral", "Gemma", ...        */
    int64_t sliding_window;    /* attention window of the windowed layers; 0 = none         */
    int32_t n_sliding_layers;  /* how many layers use that window                           */
} lt_model_info;

LT_API void lt_model_params_init(lt_model_params *params, size_t size);
/** Load a Hugging Face model directory (config.json + safetensors, sharded or not). */
LT_API lt_status lt_model_load(lt_context *ctx, const char *dir, const lt_model_params *params,
                               lt_model **out);
LT_API void lt_model_free(lt_model *model);
LT_API const char *lt_model_last_error(const lt_model *model);
LT_API lt_status lt_model_get_info(const lt_model *model, lt_model_info *info);

/**
 * Quantize the 7 linear projections of every block of a loaded model in place (those still f32), as
 * lt_model_params.quantization does on load. Not while an adapter is merged into the model.
 */
LT_API lt_status lt_model_quantize(lt_model *model, const lt_quant_params *params);
/**
 * Write the model as a Hugging Face directory in the bitsandbytes 4-bit layout transformers reads
 * (config.json with a quantization_config block; per quantized weight `<name>` packed uint8,
 * `.absmax`, `.quant_map`, `.nested_absmax`, `.nested_quant_map`, `.quant_state.bitsandbytes__nf4|fp4`);
 * embeddings, norms and lm_head in f32. The projections must be NF4 or FP4 (LT_ERR_UNSUPPORTED for int8).
 */
LT_API lt_status lt_model_save_quantized(lt_model *model, const char *dir);

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
    LT_TARGET_ALL = 0x7f,
    /* mixture-of-experts layers (PEFT target_parameters "mlp.experts.gate_up_proj" / "mlp.experts.down_proj"):
     * a LoRA per expert on its gate|up and on its down projections; not part of LT_TARGET_ALL */
    LT_TARGET_EXPERTS_GATE_UP = 1 << 7, LT_TARGET_EXPERTS_DOWN = 1 << 8,
    LT_TARGET_EXPERTS = 0x180 /* both */
};

/* LoRA initialisation (PEFT's init_lora_weights). PISSA and OLORA decompose each targeted base
 * weight W (out, in), dequantized when quantized, in fp32 at lt_adapter_create:
 *   LT_INIT_PISSA  (init_lora_weights="pissa"): SVD W = U S Vh; A = diag(sqrt(S_r / s)) Vh_r, B = U_r diag(sqrt(S_r / s))
 *   LT_INIT_OLORA  (init_lora_weights="olora"): QR W = Q R;     A = R[:r], B = Q[:, :r]
 * (s = the adapter's scaling). PEFT then rewrites the base as W - s B A; libloratune keeps the shared base
 * untouched and subtracts the frozen initial product instead: y = x W^T + s (x A^T) B^T - s (x A0^T) B0^T
 * (A0, B0 = the initial A, B; not trainable), which is the same function. lt_adapter_save writes what
 * PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) writes: a plain rank-2r LoRA for
 * the ORIGINAL base (A' = [A; A0], B' = [B, -B0], r and lora_alpha doubled; alpha times sqrt 2 with
 * rsLoRA) plus loratune_init.json, from which lt_adapter_load restores the trainable / frozen split.
 * Needs r <= min(out, in), an f32 or quantized base (not LT_BASE_BF16), and no DoRA. */
typedef enum lt_lora_init {
    LT_INIT_DEFAULT = 0 /* kaiming-uniform A, zero B */, LT_INIT_GAUSSIAN = 1 /* N(0, 1/r) A, zero B */,
    LT_INIT_PISSA = 2, LT_INIT_OLORA = 3
} lt_lora_init;

typedef struct lt_adapter_params {
    size_t size;         /* sizeof(lt_adapter_params)                                     */
    int rank;            /* r (default 8)                                                  */
    float alpha;         /* lora_alpha (default 8)                                         */
    float dropout;       /* lora_dropout (default 0)                                       */
    unsigned targets;    /* LT_TARGET_* bits (default q,k,v,o,gate,up,down)                */
    int use_rslora;      /* scaling alpha/sqrt(r) instead of alpha/r                       */
    lt_lora_init init;
    uint64_t seed;       /* initialisation seed (default 0)                                */
    /* DoRA */
    int use_dora;        /* DoRA (PEFT use_dora): a trainable magnitude per output row;    */
                         /* saved as lora_magnitude_vector. Needs dropout 0.               */
    /* full fine-tuning, modules_to_save */
    int full_finetune;   /* 1: every base weight is trainable (embeddings, projections,    */
                         /* biases, norms, lm_head) as fp32 copies held by the adapter;    */
                         /* rank, alpha, targets, use_rslora, use_dora, init are ignored.  */
                         /* Needs an f32 base (no quantization, base_dtype LT_BASE_F32)    */
                         /* and dropout 0. Saved as a Hugging Face model directory.         */
    unsigned modules_to_save; /* LT_SAVE_* bits: fp32 trainable copies of these modules   */
                         /* next to a LoRA (PEFT modules_to_save; default 0)               */
} lt_adapter_params;

/* modules_to_save bits (PEFT's module names "embed_tokens", "lm_head", "gate": the router (E, H) of every
 * mixture-of-experts layer (gpt-oss: "router", its weight and bias (E)), frozen unless named here; a full
 * fine-tuning always trains it) */
enum { LT_SAVE_EMBED_TOKENS = 1 << 0, LT_SAVE_LM_HEAD = 1 << 1, LT_SAVE_ROUTER = 1 << 2 };

LT_API void lt_adapter_params_init(lt_adapter_params *params, size_t size);
LT_API lt_status lt_adapter_create(lt_model *model, const lt_adapter_params *params, lt_adapter **out);
/** Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors). As
 *  lt_trainer_load_checkpoint, it finds the data of a save interrupted between the two renames of the
 *  fallback (see lt_adapter_save) and logs which directory it used. */
LT_API lt_status lt_adapter_load(lt_model *model, const char *dir, lt_adapter **out);
/**
 * Save as a PEFT adapter directory (a full fine-tuning: a Hugging Face model directory).
 * Every save of the library (adapter, checkpoint, merged or quantized model) is one directory written
 * whole: the files go into a staging directory beside dir, which then replaces dir in one atomic step
 * (renameat2 RENAME_EXCHANGE), so a reader or a killed process sees the previous save or the new one,
 * never a mix and never nothing. dir must be absent, an empty directory, or an earlier save of this
 * library holding only what that save wrote (its marker file .loratune-save lists it); anything else
 * (a file, a link, a directory with other entries) is refused with LT_ERR_IO and left untouched.
 * Files attached with lt_adapter_set_save_files (experimental: a model card, a run record) are written
 * into the same directory and published with it.
 */
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

typedef enum lt_optimizer_kind {
    LT_OPT_ADAMW = 0,
    LT_OPT_SGD = 1,
    LT_OPT_ADAMW8BIT = 2 /* bitsandbytes' blockwise 8-bit AdamW (AdamW8bit): m, v as 8-bit codes, fp32 below 4096 elements */
} lt_optimizer_kind;
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
/* Data-parallel training across processes, GPUs and machines (docs/DISTRIBUTED.md)               */
/*
 * The host owns launch and rendezvous; libloratune takes a communicator of world_size ranks. Every
 * rank creates the same model, adapter, optimizer and trainer options, passes its communicator in
 * lt_trainer_params.comm, and calls the same sequence of steps, each with its own share of the rows of
 * the global batch (a rank may have none). The result is that of one process with the global batch:
 * gradients summed over ranks, the loss normalised by the global number of predicted tokens (SFT) or
 * examples (preference objectives, GRPO), clipping by the global norm, metrics over the global batch,
 * KTO's KL and GRPO's batch statistics over the global batch. Every step, lt_trainer_create and the
 * checkpoint calls are collective on a distributed trainer: all ranks return the same status (a rank
 * that fails a step makes it fail everywhere, and nothing changes on any rank).
 *
 * Engines: MPI (host memory), NCCL (GPU memory, with the cuda backend), or a table of callbacks that
 * any other engine implements (Gloo through the Python binding, Ray, oneCCL). The callbacks get host
 * memory, must be called in the same order on every rank, sum in a fixed order (a run is then
 * bit-reproducible for a given world size), and must leave the same bits on every rank. Return 0 on
 * success. reduce_scatter, all_gather and barrier may be NULL (done with all_reduce / broadcast).
 */
typedef enum lt_comm_dtype { LT_COMM_F32 = 0, LT_COMM_F64 = 1 } lt_comm_dtype;

/* buf (count values) = the sum over ranks of every rank's buf, in place */
typedef int (*lt_comm_all_reduce_fn)(void *user, void *buf, size_t count, lt_comm_dtype dtype);
/* bytes of buf on rank root copied to every rank */
typedef int (*lt_comm_broadcast_fn)(void *user, void *buf, size_t bytes, int root);
/* buf = world_size segments of counts[r] values, one after the other. reduce_scatter: segment `rank` =
 * the sum over ranks of that segment, in place (the other segments are left undefined); all_gather:
 * segment r of every rank = rank r's. */
typedef int (*lt_comm_segments_fn)(void *user, void *buf, const size_t *counts, lt_comm_dtype dtype);
typedef int (*lt_comm_barrier_fn)(void *user);

typedef struct lt_comm_callbacks {
    size_t size;                          /* sizeof(lt_comm_callbacks)                          */
    int rank;                             /* this rank, 0 .. world_size - 1                     */
    int world_size;                       /* number of ranks (>= 1)                             */
    void *user;                           /* passed to every callback                           */
    lt_comm_all_reduce_fn all_reduce;     /* required                                           */
    lt_comm_broadcast_fn broadcast;       /* required                                           */
    lt_comm_segments_fn reduce_scatter;   /* optional                                           */
    lt_comm_segments_fn all_gather;       /* optional                                           */
    lt_comm_barrier_fn barrier;           /* optional                                           */
} lt_comm_callbacks;

LT_API void lt_comm_callbacks_init(lt_comm_callbacks *callbacks, size_t size);
/** A communicator over a host's own collectives. */
LT_API lt_status lt_comm_create(const lt_comm_callbacks *callbacks, lt_comm **out);
/**
 * A communicator over MPI: mpi_comm points to an MPI_Comm of the host (duplicated, so the library's
 * traffic never mixes with the host's; errors return instead of aborting). NULL = MPI_COMM_WORLD,
 * and MPI is initialised if nobody has (then lt_comm_free finalizes it: make one such per process).
 * LT_ERR_UNSUPPORTED when this build has no MPI (lt_comm_available("mpi")).
 */
LT_API lt_status lt_comm_create_mpi(const void *mpi_comm, lt_comm **out);
/**
 * A communicator over a host's NCCL communicator (an ncclComm_t) and a CUDA stream (a cudaStream_t;
 * NULL = the default stream), both borrowed: never destroyed by the library. Buffers are GPU memory:
 * the trainer's context must use the cuda backend, on the communicator's device. A collective that does
 * not complete within the timeout aborts the communicator (ncclCommAbort): the host must not use or
 * destroy it afterwards. LT_ERR_UNSUPPORTED when this build has no NCCL (lt_comm_available("nccl")).
 */
LT_API lt_status lt_comm_create_nccl(void *nccl_comm, void *cuda_stream, lt_comm **out);
LT_API void lt_comm_free(lt_comm *comm);
LT_API const char *lt_comm_last_error(const lt_comm *comm);
/** 1 if the engine ("mpi", "nccl", "callbacks") is compiled into this build, else 0. */
LT_API int lt_comm_available(const char *engine);
LT_API int lt_comm_rank(const lt_comm *comm);
LT_API int lt_comm_world_size(const lt_comm *comm);
/**
 * MPI and NCCL: a collective that has not completed after `seconds` (default 600) fails with
 * LT_ERR_BACKEND naming the rank and the operation (a peer died or hangs), and the communicator is
 * unusable from then on. Callbacks time out only as the host's engine does.
 */
LT_API lt_status lt_comm_set_timeout(lt_comm *comm, double seconds);
/** values (n doubles, host memory) = their sum over the ranks, in place: for a host's own statistics
 *  (an evaluation loss, a token count). Collective. */
LT_API lt_status lt_comm_all_reduce(lt_comm *comm, double *values, size_t n);

/* ---------------------------------------------------------------------------------------------- */
/* Trainer                                                                                        */

/* Objectives (definitions as TRL's: docs/API.md). SFT takes lt_batch (lt_trainer_step); DPO, IPO, KTO
 * and ORPO take lt_pref_batch (lt_trainer_step_preference); GRPO uses lt_grpo_generate + lt_grpo_step. */
typedef enum lt_objective {
    LT_OBJ_SFT = 0, LT_OBJ_DPO = 1, LT_OBJ_IPO = 2, LT_OBJ_KTO = 3, LT_OBJ_ORPO = 4, LT_OBJ_GRPO = 5
} lt_objective;

/* GRPO advantage scaling and loss aggregation (TRL's scale_rewards and loss_type). */
typedef enum lt_grpo_scale { LT_GRPO_SCALE_GROUP = 0, LT_GRPO_SCALE_BATCH = 1, LT_GRPO_SCALE_NONE = 2 } lt_grpo_scale;
typedef enum lt_grpo_loss { LT_GRPO_LOSS_DAPO = 0, LT_GRPO_LOSS_GRPO = 1, LT_GRPO_LOSS_BNPO = 2, LT_GRPO_LOSS_DR_GRPO = 3 } lt_grpo_loss;

typedef struct lt_trainer_params {
    size_t size;                 /* sizeof(lt_trainer_params)                              */
    lt_objective objective;      /* default SFT                                            */
    int grad_accum;              /* micro-batches per optimizer update (default 1)         */
    int gradient_checkpointing;  /* 1 (default): keep layer inputs, recompute in backward  */
    uint64_t seed;               /* dropout RNG seed (default 0)                           */
    /* ---- preference objectives ---- */
    float beta;                  /* DPO/IPO/KTO beta, ORPO lambda (default 0.1)            */
    float label_smoothing;       /* DPO: conservative-DPO eps in [0, 0.5) (default 0)      */
    float desirable_weight;      /* KTO (default 1)                                        */
    float undesirable_weight;    /* KTO (default 1)                                        */
    const lt_adapter *ref_adapter; /* frozen reference adapter of the same model; NULL     */
                                 /* (default): the base model with the adapter disabled    */
    int32_t max_length;          /* longest prompt + completion accepted; 0 = no limit     */
    /* ---- GRPO ---- */
    int32_t num_generations;     /* G completions per prompt (default 8, >= 2)             */
    float epsilon;               /* lower clip (default 0.2)                               */
    float epsilon_high;          /* upper clip; 0 (default) = epsilon                      */
    float kl_beta;               /* k3 KL coefficient against the reference (default 0)    */
    lt_grpo_scale scale_rewards; /* default group                                          */
    lt_grpo_loss loss_type;      /* default dapo                                           */
    /* ---- data-parallel training (0.1 additions; docs/DISTRIBUTED.md) ---- */
    lt_comm *comm;               /* NULL (default): one process. Else this rank's communicator */
                                 /* (borrowed: it must outlive the trainer)                */
    int zero_stage;              /* 0 (default): every rank keeps the whole optimizer state; */
                                 /* 1: ZeRO-1, each rank keeps 1/world_size of it            */
    /* ---- memory (0.1 additions) ---- */
    int64_t activation_memory;   /* with gradient_checkpointing: bytes the step may spend   */
                                 /* keeping whole layers' activations instead of recomputing */
                                 /* them (the first layers that fit; 0, the default: none)   */
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
    /* ---- preference objectives; NaN where not defined ---- */
    double rewards_chosen;       /* mean beta (lp_c - ref_c) (ORPO: beta * mean-token lp_c) */
    double rewards_rejected;     /* the same for the rejected (KTO: undesirable) completions */
    double rewards_accuracies;   /* mean(chosen > rejected); NaN for KTO                    */
    double rewards_margins;      /* mean(chosen - rejected) (KTO: difference of the means)  */
    double kl;                   /* KTO: the batch KL estimate; GRPO: mean k3 KL per token  */
    /* ---- GRPO ---- */
    double reward_mean, reward_std; /* of the host's rewards over the generation batch      */
    double clip_fraction;        /* fraction of completion tokens whose ratio was clipped   */
    double completion_length;    /* mean completion tokens                                  */
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
/*
 * Preference data: n_rows examples; each has a prompt and a chosen and a rejected completion (DPO,
 * IPO, ORPO), or a prompt, one completion (in chosen_*) and a label (KTO). Token ids of each kind are
 * concatenated: example i's prompt is prompt_lens[i] ids in prompt_ids after those of examples < i.
 * Completions are used as given (append EOS yourself if you want it scored; the CLI does). Prompts
 * and completions must not be empty. The reference log-probs (summed over the completion) may be
 * given, e.g. from lt_trainer_reference_logps once per dataset; NULL = computed in the step.
 */
typedef struct lt_pref_batch {
    size_t size;                      /* sizeof(lt_pref_batch)                              */
    int32_t n_rows;
    const int32_t *prompt_ids;        /* sum(prompt_lens) ids                               */
    const int32_t *prompt_lens;       /* (n_rows)                                           */
    const int32_t *chosen_ids;        /* KTO: the completions                               */
    const int32_t *chosen_lens;       /* (n_rows)                                           */
    const int32_t *rejected_ids;      /* unused by KTO                                      */
    const int32_t *rejected_lens;     /* (n_rows)                                           */
    const int32_t *labels;            /* KTO: 1 desirable, 0 undesirable (n_rows)           */
    const double *ref_chosen_logps;   /* optional (n_rows)                                  */
    const double *ref_rejected_logps; /* optional (n_rows); unused by KTO                   */
    const double *ref_kl_logps;       /* KTO, optional (n_rows): prompt i + completion i-1  */
} lt_pref_batch;

LT_API void lt_pref_batch_init(lt_pref_batch *batch, size_t size);
/**
 * One micro-batch of a preference objective (DPO, IPO, KTO, ORPO): reference and policy forward,
 * the loss (mean over the examples), backward, and every grad_accum calls an update (gradients
 * averaged over the micro-batches). result->loss and the rewards_* metrics describe this call.
 */
LT_API lt_status lt_trainer_step_preference(lt_trainer *trainer, const lt_pref_batch *batch,
                                            lt_step_result *result);
/** The objective's loss and metrics on held-out preference data (no gradients, no update). */
LT_API lt_status lt_trainer_evaluate_preference(lt_trainer *trainer, const lt_pref_batch *batch,
                                                lt_step_result *result);
/**
 * Reference log-probs of a batch, summed over each completion: chosen (n_rows), rejected (n_rows;
 * DPO/IPO) and, for KTO, kl (n_rows: prompt i with completion i-1, cyclic). Unused outputs may be NULL.
 */
LT_API lt_status lt_trainer_reference_logps(lt_trainer *trainer, const lt_pref_batch *batch, double *chosen,
                                            double *rejected, double *kl);

/**
 * Checkpoint: adapter (PEFT layout) + optimizer + trainer state, one save of dir (see lt_adapter_save).
 * Loading checks every state for NaN / Inf (adapter tensors, optimizer moments, scheduler step) and
 * changes nothing on failure. When dir is absent because a save on a file system without atomic
 * exchange was killed between its two renames, the load uses the newest complete save of this library
 * beside it (dir.tmp-* / dir.old-*) and says so through the log callback (LT_LOG_WARN).
 */
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
 * top-p; temperature 0 is greedy. Deterministic for a given seed. The prompts are run in one pass,
 * then one token per row per step. Greedy rows are those each prompt gives alone, except that
 * Phi-3 longrope switches the whole batch to its long factors when the longest row passes
 * original_max_position_embeddings (as transformers does with a padded batch). LT_ERR_NUMERIC when
 * the logits of a row are not finite.
 */
LT_API lt_status lt_generate(lt_model *model, const lt_adapter *adapter, const int32_t *prompts,
                             const int32_t *prompt_lens, int n_prompts, const lt_generate_params *params,
                             int32_t *out, int32_t *out_lens);

/* ---------------------------------------------------------------------------------------------- */
/* GRPO (reinforcement learning with rewards computed by the host)                                */

/*
 * GRPO with host rewards, in two phases. lt_grpo_generate samples num_generations completions for
 * each prompt with the current adapter (KV cache; gen->temperature, top_k, top_p, seed, eos;
 * gen->max_new_tokens is max_completion_length) and keeps them: completions holds
 * n_prompts * G rows of max_new_tokens ids (row p*G + g), completion_lens their lengths. The host
 * scores them and calls lt_grpo_step with one reward per completion (same order): advantages, the
 * clipped-ratio loss (one update per generation: the old log-probs are the current ones), optional
 * KL, an optimizer update. Errors: G < 2, an empty prompt, a prompt of max_length or more tokens,
 * a NaN reward, a step without a generation.
 */
LT_API lt_status lt_grpo_generate(lt_trainer *trainer, const int32_t *prompts, const int32_t *prompt_lens,
                                  int n_prompts, const lt_generate_params *gen, int32_t *completions,
                                  int32_t *completion_lens);
LT_API lt_status lt_grpo_step(lt_trainer *trainer, const float *rewards, lt_step_result *result);

/* ---------------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                      */
/*
 * A Hugging Face tokenizer.json (+ tokenizer_config.json beside it): BPE with byte-level
 * pre-tokenization (GPT-2, Llama 3, Qwen, Mistral tekken) or SentencePiece-style BPE (Llama 2,
 * Mistral: metaspace, byte fallback). Encode and decode give the ids and text of the `tokenizers`
 * library. Special tokens written in the text (e.g. "<|eot_id|>") are recognised as single tokens.
 * Text must be valid UTF-8 (else LT_ERR_ARGUMENT).
 */

typedef struct lt_tokenizer lt_tokenizer;

typedef enum lt_special_token {
    LT_SPECIAL_BOS = 0, LT_SPECIAL_EOS = 1, LT_SPECIAL_PAD = 2, LT_SPECIAL_UNK = 3
} lt_special_token;

/** Load from a directory holding tokenizer.json (and optionally tokenizer_config.json, which gives
 *  the BOS/EOS/PAD tokens and the chat template), or from a path to a tokenizer.json file. */
LT_API lt_status lt_tokenizer_load(const char *path, lt_tokenizer **out);
LT_API void lt_tokenizer_free(lt_tokenizer *tok);
LT_API const char *lt_tokenizer_last_error(const lt_tokenizer *tok);
/** 1 + the largest token id (vocabulary and added tokens). */
LT_API int32_t lt_tokenizer_vocab_size(const lt_tokenizer *tok);
/**
 * Encode len bytes of UTF-8 text. add_special = 1 adds what the post-processor adds (BOS/EOS), as
 * tokenizers' add_special_tokens=True. *n_ids receives the number of ids; they are written to ids
 * when they fit in capacity (else LT_ERR_SHAPE). ids = NULL with capacity 0 only counts.
 */
LT_API lt_status lt_tokenizer_encode(lt_tokenizer *tok, const char *text, size_t len, int add_special,
                                     int32_t *ids, size_t capacity, size_t *n_ids);
/**
 * Decode ids to UTF-8 text (the decoder chain of tokenizer.json; invalid byte sequences become
 * U+FFFD). skip_special = 1 drops special tokens. *len receives the text length without the NUL;
 * text (NUL-terminated) is written when len + 1 <= capacity (else LT_ERR_SHAPE). text = NULL with
 * capacity 0 only measures.
 */
LT_API lt_status lt_tokenizer_decode(lt_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                                     char *text, size_t capacity, size_t *len);
/** Id of a token string (added tokens first, then the vocabulary); -1 if absent. */
LT_API int32_t lt_tokenizer_token_to_id(const lt_tokenizer *tok, const char *token);
/** Token string of an id (valid while the tokenizer lives); NULL if absent. */
LT_API const char *lt_tokenizer_id_to_token(const lt_tokenizer *tok, int32_t id);
/** Id of the BOS/EOS/PAD/UNK token named in tokenizer_config.json; -1 when it names none. */
LT_API int32_t lt_tokenizer_special_id(const lt_tokenizer *tok, lt_special_token which);
/** 1 if the id is a special added token (skipped by decode with skip_special), else 0. */
LT_API int lt_tokenizer_is_special(const lt_tokenizer *tok, int32_t id);

/**
 * Render a conversation with the chat_template of tokenizer_config.json, as transformers'
 * apply_chat_template renders it (jinja2's sandbox; docs/API.md lists the Jinja the engine covers: the
 * real templates of llama.cpp, TRL and mistral-common render identically). A template that uses anything
 * else fails with LT_ERR_UNSUPPORTED naming it; a raise_exception() in the template or a template error
 * with LT_ERR_DATA; a template past the engine's nesting or step limits with a status naming the limit.
 * messages_json: a JSON array of {"role": ..., "content": ...} objects (other keys are passed on), or an
 * object {"messages": [...], "tools": [...], ...} whose other keys are template variables.
 * strftime_now() reads SOURCE_DATE_EPOCH (UTC) when it is set. *text points to the rendered
 * NUL-terminated text, *len its length; valid until the next call on the tokenizer.
 */
LT_API lt_status lt_tokenizer_render_chat(lt_tokenizer *tok, const char *messages_json, int add_generation_prompt,
                                          const char **text, size_t *len);
/**
 * Render and encode a conversation (no special tokens added beyond the template's own), with an
 * assistant mask: mask[i] = 1 when token i belongs to an assistant turn (the {% generation %}
 * blocks of the template when it has them, else the text each assistant message adds to the
 * rendering). ids/mask as in lt_tokenizer_encode; mask may be NULL, and then no mask is computed (a
 * prompt for generation needs none).
 */
LT_API lt_status lt_tokenizer_encode_chat(lt_tokenizer *tok, const char *messages_json, int add_generation_prompt,
                                          int32_t *ids, int32_t *mask, size_t capacity, size_t *n_ids);

/* Text datasets: one JSONL row -> input ids + labels (-100 = no loss). */
typedef struct lt_text_params {
    size_t size;          /* sizeof(lt_text_params)                                             */
    int32_t max_len;      /* truncate to this many tokens, keeping the start; 0 = no limit       */
    int completion_only;  /* {"prompt","completion"}: loss on the completion only (default 1)    */
    int assistant_only;   /* {"messages"}: loss on assistant turns only (default 1)              */
    int add_special;      /* plain text: add the post-processor's BOS/EOS (default 1)            */
    int add_eos;          /* plain text / completions: end with the EOS token if absent (default 1) */
} lt_text_params;

LT_API void lt_text_params_init(lt_text_params *params, size_t size);
/**
 * Tokenize one dataset row given as a JSON object: {"text"}, {"prompt","completion"} (strings or
 * message lists), {"messages"}, {"prompt","chosen","rejected"} (SFT on the chosen answer), or
 * {"prompt","completion","label"} (label false: every label is -100, nothing to learn).
 * Writes *n ids and labels (capacity as in lt_tokenizer_encode; ids/labels NULL with capacity 0
 * only counts). A row of none of these shapes is LT_ERR_DATA; so is a row that would train on nothing
 * by accident: an assistant-only {"messages"} row whose assistant mask is empty (no assistant message,
 * or a template that renders no assistant text), a completion that adds no token to its prompt.
 */
LT_API lt_status lt_tokenizer_encode_row(lt_tokenizer *tok, const char *row_json, const lt_text_params *params,
                                         int32_t *ids, int32_t *labels, size_t capacity, size_t *n);

/**
 * Pack n_seqs sequences (lens[i] tokens each, concatenated in ids and labels; labels may be NULL =
 * ids) into rows of seq_len tokens, best-fit decreasing (longest first, each into the fullest row it
 * fits). A sequence longer than seq_len is truncated, keeping its start. In the output, position ids
 * restart at 0 for every sequence (an lt_batch never attends or predicts across that boundary), the
 * first token of every sequence has label -100, and the padding at the end of a row has id pad_id
 * and label -100. *n_rows receives the row count; rows are written when n_rows <= capacity_rows
 * (outputs of capacity_rows * seq_len entries each, else LT_ERR_SHAPE); NULL outputs with
 * capacity_rows 0 only count. Deterministic. Errors: lt_last_error().
 */
LT_API lt_status lt_pack_sequences(const int32_t *ids, const int32_t *labels, const int32_t *lens, int32_t n_seqs,
                                   int32_t seq_len, int32_t pad_id, int32_t *out_ids, int32_t *out_labels,
                                   int32_t *out_position_ids, int32_t capacity_rows, int32_t *n_rows);

/* ---------------------------------------------------------------------------------------------- */
/* GGUF export (llama.cpp, Ollama)                                                                */
/*
 * A model (base, or merged with an adapter) or a LoRA adapter written as one GGUF v3 file that llama.cpp
 * loads as its own converter's output: the architecture's metadata keys, llama.cpp's tensor names and
 * layouts (Llama / Mistral q, k rows permuted for its RoPE; Gemma norms as 1 + w; Llama 3 and Phi-3
 * RoPE factor tensors) and the tokenizer (tokens, types, merges or scores, BOS / EOS / PAD, the
 * pre-tokenizer name, the chat template), so that it generates and stops at EOS. docs/API.md has the
 * details and the limits (tokenizers llama.cpp cannot reproduce, Gemma with an untied head, ...).
 */
typedef enum lt_gguf_dtype {
    LT_GGUF_DTYPE_F32 = 0, LT_GGUF_DTYPE_F16 = 1, LT_GGUF_DTYPE_BF16 = 2,
    LT_GGUF_DTYPE_Q8_0 = 3 /* ggml's Q8_0: blocks of 32 values, an f16 scale and 32 int8 (rows that are not a
                            * multiple of 32 values stay F16) */
} lt_gguf_dtype;

typedef struct lt_gguf_params {
    size_t size;                   /* sizeof(lt_gguf_params)                                         */
    lt_gguf_dtype dtype;           /* the 2-D weights (1-D tensors and norms stay F32); default F16    */
    const lt_tokenizer *tokenizer; /* NULL (default): tokenizer.json (+ tokenizer_config.json) of the  */
                                   /* model's directory                                              */
    const char *name;              /* general.name; NULL (default): the model directory's name        */
    /* appended in 0.1 (after name): 1 also writes a model that llama.cpp computes only approximately, as
     * llama.cpp's converter writes it. Today one case: YaRN with rope_parameters truncate false (gpt-oss's
     * released checkpoints), whose correction range llama.cpp rounds to whole dimensions (gpt-oss-20b: 9 of
     * its 32 RoPE frequencies differ from transformers', as in llama.cpp's own GGUF of it). 0 (default):
     * LT_ERR_UNSUPPORTED naming it. */
    int allow_approximate;
} lt_gguf_params;

LT_API void lt_gguf_params_init(lt_gguf_params *params, size_t size);
/**
 * Write the model as a GGUF file (written atomically). adapter: NULL for the base model, or an adapter of
 * this model to merge (LoRA, DoRA, PiSSA/OLoRA, full fine-tuning, modules_to_save: the weights of
 * lt_adapter_export_merged). A quantized base is written dequantized. Errors: lt_model_last_error.
 */
LT_API lt_status lt_model_export_gguf(lt_model *model, const lt_adapter *adapter, const char *path,
                                      const lt_gguf_params *params);
/**
 * Write a LoRA adapter as a GGUF LoRA (general.type "adapter", adapter.lora.alpha, <tensor>.lora_a/.lora_b)
 * for llama.cpp's --lora on the GGUF of the base model (for a QLoRA adapter: the GGUF of the dequantized
 * base, which lt_model_export_gguf writes). rsLoRA's scaling is folded into lora_b so that llama.cpp's
 * alpha / rank is right; PiSSA / OLoRA adapters are written as the plain rank-2r LoRA of lt_adapter_save.
 * DoRA, modules_to_save and full fine-tuning cannot be expressed (LT_ERR_UNSUPPORTED: export the merged
 * model). params->tokenizer is not used. Errors: lt_adapter_last_error.
 */
LT_API lt_status lt_adapter_export_gguf(lt_adapter *adapter, const char *path, const lt_gguf_params *params);

#ifdef __cplusplus
}
#endif
#endif /* LORATUNE_H */
