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
 * files and the weights they describe are written together (lt_trainer_save_checkpoint writes them too).
 * A name is one plain path component with no leading '.', no control character, under 256 bytes, given
 * once (else LT_ERR_ARGUMENT, nothing changed); a name the save itself writes (adapter_config.json, ...)
 * makes that save fail with LT_ERR_ARGUMENT, leaving DIR as it was. Names and texts are copied and
 * replace those of an earlier call; n = 0 removes them.
 */
LT_API lt_status lt_adapter_set_save_files(lt_adapter *adapter, const char *const *names, const char *const *texts,
                                           int n);

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

/* ---- adapter arithmetic and LoRA extraction (docs/API.md "Combining adapters") ---------------------- */

typedef enum lt_combine_method {
    LT_COMBINE_CAT = 0,            /* exact: A = [w_i s_i A_i] stacked, B = [B_i]; rank = sum of ranks       */
    LT_COMBINE_LINEAR = 1,         /* task arithmetic: sum_i w_i dW_i (dW_i = s_i B_i A_i, scaled once)        */
    LT_COMBINE_TIES = 2,           /* top-density magnitudes, sign election, mean of the agreeing (mergekit)   */
    LT_COMBINE_DARE_LINEAR = 3,    /* random keep with probability density, / density, then linear           */
    LT_COMBINE_DARE_TIES = 4,      /* the same, then TIES' sign election (no division, mergekit's default)     */
    LT_COMBINE_MAGNITUDE_PRUNE = 5,/* top-density magnitudes, then linear                                     */
    LT_COMBINE_SLERP = 6           /* two adapters: spherical interpolation of their deltas with t            */
} lt_combine_method;

typedef struct lt_combine_params {
    size_t size;              /* sizeof(lt_combine_params)                                              */
    lt_combine_method method; /* default LT_COMBINE_LINEAR                                              */
    const float *weights;     /* one per adapter; NULL (default): 1 each (SLERP: unused)                */
    float density;            /* TIES, DARE, magnitude prune: the share kept, in (0, 1] (default 1)    */
    float t;                  /* SLERP: 0 the first adapter's delta, 1 the second's (default 0.5)        */
    int rank;                 /* the result's rank; 0 (default): exact (cat: the sum of the ranks; the   */
                              /* others: the full rank of the largest module)                            */
    uint64_t seed;            /* DARE's masks (default 0)                                                */
} lt_combine_params;

typedef struct lt_combine_report {
    size_t size;             /* sizeof(lt_combine_report), set by the caller                           */
    int rank;                /* of the result                                                           */
    double kept_energy;      /* sum over modules of the kept squared singular values of the combined   */
    double total_energy;     /* delta, and of all of them (cat: 1 and 1, exact)                         */
    double max_module_error; /* max over modules of ||delta - B A||_F / ||delta||_F                      */
} lt_combine_report;

LT_API void lt_combine_params_init(lt_combine_params *params, size_t size);
/**
 * Combine n LoRA adapters of one model into a new LoRA adapter (scaling 1: alpha = rank) by truncated SVD of
 * the combined delta of every targeted module. The adapters must share the model and the target set and be
 * plain LoRA (rsLoRA, PiSSA / OLoRA and QLoRA adapters are; DoRA, modules_to_save and full fine-tuning are
 * LT_ERR_UNSUPPORTED). Errors (LT_ERR_ARGUMENT: mismatched models or targets, density outside (0, 1], a rank
 * below 0, SLERP of other than two adapters) go to lt_last_error(). report may be NULL.
 */
LT_API lt_status lt_adapter_combine(lt_adapter **adapters, int n, const lt_combine_params *params,
                                    lt_adapter **out, lt_combine_report *report);
/** The combination (params->rank is not used: no SVD) added to the base: a Hugging Face model directory in f32. */
LT_API lt_status lt_adapter_combine_into_base(lt_adapter **adapters, int n, const lt_combine_params *params,
                                              const char *dir);

typedef struct lt_extract_params {
    size_t size;      /* sizeof(lt_extract_params)                                                       */
    int rank;         /* of the extracted LoRA (default 16)                                              */
    unsigned targets; /* LT_TARGET_* (default all)                                                       */
} lt_extract_params;

typedef struct lt_extract_report {
    size_t size;          /* sizeof(lt_extract_report), set by the caller                                */
    int n_modules;
    double kept_energy;   /* sum over modules of the top-rank squared singular values of tuned - base    */
    double total_energy;  /* and of all of them (= ||tuned - base||_F^2 over the targeted modules)        */
    double *module_kept;  /* optional caller arrays of n_layers * 7 entries: entry l * 7 + p of the module */
    double *module_total; /* whose first projection is p (q 0, k 1, v 2, o 3, gate 4, up 5, down 6)      */
    double others_max_diff; /* max |tuned - base| over tensors no LoRA holds (embeddings, norms, lm_head) */
    char others_name[128];  /* the tensor where it is ("" when every such tensor is equal)                */
} lt_extract_report;

LT_API void lt_extract_params_init(lt_extract_params *params, size_t size);
/**
 * A LoRA adapter of `base` (scaling 1) from the truncated SVD of (tuned - base) per targeted module, as
 * mergekit-extract-lora: B = U_r diag(S_r), A = Vt_r. The two models must have the same architecture and
 * shapes (LT_ERR_SHAPE naming the first difference). Errors go to lt_last_error(). report may be NULL.
 */
LT_API lt_status lt_adapter_extract(lt_model *base, lt_model *tuned, const lt_extract_params *params,
                                    lt_adapter **out, lt_extract_report *report);

/* ---- profiling ---------------------------------------------------------------------------------------- */

/**
 * The products with frozen weights (the projections' x W^T and dy W, the LM head's, recomputation included)
 * of every step and evaluation this trainer has run: their wall time in seconds (summed over the threads
 * that call at once where the experts of an MoE layer run side by side) and their GFLOP (2 multiply-adds
 * each). Benchmarks divide one by the other for the GEMM rate inside a step. Counted on host-memory backends
 * (the CPU) only: 0 on a device. LT_ERR_ARGUMENT on a NULL argument.
 */
LT_API lt_status lt_trainer_frozen_gemm_stats(const lt_trainer *trainer, double *seconds, double *gflop);

/* ---- the host process ----------------------------------------------------------------------------------- */

/**
 * The OPENBLAS_CORETYPE value a host should start with: "SkylakeX" (AVX-512) or "Haswell" (AVX2 + FMA) when
 * the OpenBLAS loaded in this process runs pre-AVX2 kernels on a CPU that has them (Debian 12's OpenBLAS
 * 0.3.21 does not know the newest Xeons: f32 GEMMs about 3x slower) and OPENBLAS_CORETYPE is unset; NULL
 * otherwise (also off x86). It changes nothing: OpenBLAS reads the variable only when it loads, so the
 * value is for a new process (the loratune CLI runs itself again with it; the Python binding asks a child
 * process before it loads the library). A static string.
 */
LT_API const char *lt_openblas_coretype_hint(void);

#ifdef __cplusplus
}
#endif
#endif
