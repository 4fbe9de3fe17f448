//! Raw FFI declarations of libloratune's public C API (`include/loratune.h`), written by hand and kept
//! in sync with the header by `tests/header_sync.rs` (function names and signatures, struct fields,
//! sizes and offsets measured with the C compiler, and constants).
//!
//! Everything here is `unsafe` and mirrors C exactly; the `loratune` crate is the safe layer.
//! Enums are plain integer type aliases with constants (a newer library may return values this crate
//! does not know, which a Rust `enum` could not hold).
//!
//! The functions of `include/loratune_experimental.h` are in [`experimental`]: they carry no ABI promise.
#![allow(non_camel_case_types)]
#![allow(clippy::upper_case_acronyms)]

use std::os::raw::{c_char, c_double, c_float, c_int, c_uint, c_void};

// ---- version ---------------------------------------------------------------------------------------

pub const LT_VERSION_MAJOR: u32 = 0;
pub const LT_VERSION_MINOR: u32 = 1;
pub const LT_VERSION_PATCH: u32 = 0;
pub const LT_VERSION_NUMBER: u32 = LT_VERSION_MAJOR * 10000 + LT_VERSION_MINOR * 100 + LT_VERSION_PATCH;
pub const LT_VERSION_STRING: &str = "0.1.0";

// ---- status ----------------------------------------------------------------------------------------

pub type lt_status = c_int;
pub const LT_OK: lt_status = 0;
pub const LT_ERR_ARGUMENT: lt_status = 1;
pub const LT_ERR_NOMEM: lt_status = 2;
pub const LT_ERR_IO: lt_status = 3;
pub const LT_ERR_TRUNCATED: lt_status = 4;
pub const LT_ERR_FORMAT: lt_status = 5;
pub const LT_ERR_JSON: lt_status = 6;
pub const LT_ERR_DTYPE: lt_status = 7;
pub const LT_ERR_SHAPE: lt_status = 8;
pub const LT_ERR_MISSING: lt_status = 9;
pub const LT_ERR_ARCH: lt_status = 10;
pub const LT_ERR_BACKEND: lt_status = 11;
pub const LT_ERR_NUMERIC: lt_status = 12;
pub const LT_ERR_DATA: lt_status = 13;
pub const LT_ERR_STATE: lt_status = 14;
pub const LT_ERR_UNSUPPORTED: lt_status = 15;
pub const LT_ERR_INTERNAL: lt_status = 16;

// ---- handles (opaque) ------------------------------------------------------------------------------

macro_rules! opaque {
    ($($name:ident),*) => {$(
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
            // not Send, not Sync, not Unpin: the safe crate decides what may cross threads
            _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
        }
    )*};
}
opaque!(lt_context, lt_model, lt_adapter, lt_optimizer, lt_trainer, lt_tokenizer, lt_qtensor, lt_comm);

// ---- context ---------------------------------------------------------------------------------------

pub type lt_log_level = c_int;
pub const LT_LOG_DEBUG: lt_log_level = 0;
pub const LT_LOG_INFO: lt_log_level = 1;
pub const LT_LOG_WARN: lt_log_level = 2;
pub const LT_LOG_ERROR: lt_log_level = 3;

pub type lt_log_fn = Option<unsafe extern "C" fn(user: *mut c_void, level: lt_log_level, message: *const c_char)>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_context_params {
    pub size: usize,
    pub backend: *const c_char,
    pub n_threads: c_int,
    pub log_fn: lt_log_fn,
    pub log_user: *mut c_void,
    pub log_level: lt_log_level,
}

// ---- quantized tensors -----------------------------------------------------------------------------

pub type lt_quant_format = c_int;
pub const LT_QUANT_NONE: lt_quant_format = 0;
pub const LT_QUANT_NF4: lt_quant_format = 1;
pub const LT_QUANT_FP4: lt_quant_format = 2;
pub const LT_QUANT_INT8: lt_quant_format = 3;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_quant_params {
    pub size: usize,
    pub format: lt_quant_format,
    pub blocksize: c_int,
    pub double_quant: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_qtensor_info {
    pub size: usize,
    pub format: lt_quant_format,
    pub blocksize: c_int,
    pub double_quant: c_int,
    pub ndim: c_int,
    pub shape: [i64; 8],
    pub numel: i64,
    pub n_blocks: i64,
    pub bytes: i64,
    pub nested_offset: c_float,
}

pub type lt_qpart = c_int;
pub const LT_QPART_DATA: lt_qpart = 0;
pub const LT_QPART_ABSMAX: lt_qpart = 1;
pub const LT_QPART_NESTED_ABSMAX: lt_qpart = 2;
pub const LT_QPART_QUANT_MAP: lt_qpart = 3;
pub const LT_QPART_NESTED_QUANT_MAP: lt_qpart = 4;

// ---- model -----------------------------------------------------------------------------------------

pub type lt_base_dtype = c_int;
pub const LT_BASE_F32: lt_base_dtype = 0;
pub const LT_BASE_BF16: lt_base_dtype = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_model_params {
    pub size: usize,
    pub use_mmap: c_int,
    pub quantization: lt_quant_format,
    pub double_quant: c_int,
    pub quant_blocksize: c_int,
    pub quantize_lm_head: c_int,
    pub base_dtype: c_int,
    pub skip_finite_check: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_model_info {
    pub size: usize,
    pub architecture: [c_char; 64],
    pub dtype: [c_char; 16],
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub n_layers: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rope_theta: c_double,
    pub rms_norm_eps: c_double,
    pub tied_embeddings: c_int,
    pub n_params: i64,
    pub weight_bytes: i64,
    pub quantization: lt_quant_format,
    pub quantized_params: i64,
    pub quantized_bytes: i64,
    pub family: [c_char; 32],
    pub sliding_window: i64,
    pub n_sliding_layers: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_batch {
    pub size: usize,
    pub n_rows: i32,
    pub seq_len: i32,
    pub input_ids: *const i32,
    pub labels: *const i32,
    pub position_ids: *const i32,
}

// ---- adapters --------------------------------------------------------------------------------------

pub const LT_TARGET_Q: c_uint = 1 << 0;
pub const LT_TARGET_K: c_uint = 1 << 1;
pub const LT_TARGET_V: c_uint = 1 << 2;
pub const LT_TARGET_O: c_uint = 1 << 3;
pub const LT_TARGET_GATE: c_uint = 1 << 4;
pub const LT_TARGET_UP: c_uint = 1 << 5;
pub const LT_TARGET_DOWN: c_uint = 1 << 6;
pub const LT_TARGET_ALL: c_uint = 0x7f;
pub const LT_TARGET_EXPERTS_GATE_UP: c_uint = 1 << 7;
pub const LT_TARGET_EXPERTS_DOWN: c_uint = 1 << 8;
pub const LT_TARGET_EXPERTS: c_uint = 0x180;

pub type lt_lora_init = c_int;
pub const LT_INIT_DEFAULT: lt_lora_init = 0;
pub const LT_INIT_GAUSSIAN: lt_lora_init = 1;
pub const LT_INIT_PISSA: lt_lora_init = 2;
pub const LT_INIT_OLORA: lt_lora_init = 3;

pub const LT_SAVE_EMBED_TOKENS: c_uint = 1 << 0;
pub const LT_SAVE_LM_HEAD: c_uint = 1 << 1;
pub const LT_SAVE_ROUTER: c_uint = 1 << 2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_adapter_params {
    pub size: usize,
    pub rank: c_int,
    pub alpha: c_float,
    pub dropout: c_float,
    pub targets: c_uint,
    pub use_rslora: c_int,
    pub init: lt_lora_init,
    pub seed: u64,
    pub use_dora: c_int,
    pub full_finetune: c_int,
    pub modules_to_save: c_uint,
}

// ---- optimizers ------------------------------------------------------------------------------------

pub type lt_optimizer_kind = c_int;
pub const LT_OPT_ADAMW: lt_optimizer_kind = 0;
pub const LT_OPT_SGD: lt_optimizer_kind = 1;
pub const LT_OPT_ADAMW8BIT: lt_optimizer_kind = 2;

pub type lt_schedule = c_int;
pub const LT_SCHED_CONSTANT: lt_schedule = 0;
pub const LT_SCHED_LINEAR: lt_schedule = 1;
pub const LT_SCHED_COSINE: lt_schedule = 2;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_optimizer_params {
    pub size: usize,
    pub kind: lt_optimizer_kind,
    pub lr: c_float,
    pub beta1: c_float,
    pub beta2: c_float,
    pub eps: c_float,
    pub weight_decay: c_float,
    pub momentum: c_float,
    pub schedule: lt_schedule,
    pub warmup_steps: i64,
    pub warmup_ratio: c_float,
    pub total_steps: i64,
    pub max_grad_norm: c_float,
}

// ---- trainer ---------------------------------------------------------------------------------------

pub type lt_objective = c_int;
pub const LT_OBJ_SFT: lt_objective = 0;
pub const LT_OBJ_DPO: lt_objective = 1;
pub const LT_OBJ_IPO: lt_objective = 2;
pub const LT_OBJ_KTO: lt_objective = 3;
pub const LT_OBJ_ORPO: lt_objective = 4;
pub const LT_OBJ_GRPO: lt_objective = 5;

pub type lt_grpo_scale = c_int;
pub const LT_GRPO_SCALE_GROUP: lt_grpo_scale = 0;
pub const LT_GRPO_SCALE_BATCH: lt_grpo_scale = 1;
pub const LT_GRPO_SCALE_NONE: lt_grpo_scale = 2;
pub type lt_grpo_loss = c_int;
pub const LT_GRPO_LOSS_DAPO: lt_grpo_loss = 0;
pub const LT_GRPO_LOSS_GRPO: lt_grpo_loss = 1;
pub const LT_GRPO_LOSS_BNPO: lt_grpo_loss = 2;
pub const LT_GRPO_LOSS_DR_GRPO: lt_grpo_loss = 3;

// ---- data-parallel training ------------------------------------------------------------------------

pub type lt_comm_dtype = c_int;
pub const LT_COMM_F32: lt_comm_dtype = 0;
pub const LT_COMM_F64: lt_comm_dtype = 1;

pub type lt_comm_all_reduce_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, buf: *mut c_void, count: usize, dtype: lt_comm_dtype) -> c_int>;
pub type lt_comm_broadcast_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, buf: *mut c_void, bytes: usize, root: c_int) -> c_int>;
pub type lt_comm_segments_fn = Option<
    unsafe extern "C" fn(user: *mut c_void, buf: *mut c_void, counts: *const usize, dtype: lt_comm_dtype) -> c_int,
>;
pub type lt_comm_barrier_fn = Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_comm_callbacks {
    pub size: usize,
    pub rank: c_int,
    pub world_size: c_int,
    pub user: *mut c_void,
    pub all_reduce: lt_comm_all_reduce_fn,
    pub broadcast: lt_comm_broadcast_fn,
    pub reduce_scatter: lt_comm_segments_fn,
    pub all_gather: lt_comm_segments_fn,
    pub barrier: lt_comm_barrier_fn,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_trainer_params {
    pub size: usize,
    pub objective: lt_objective,
    pub grad_accum: c_int,
    pub gradient_checkpointing: c_int,
    pub seed: u64,
    pub beta: c_float,
    pub label_smoothing: c_float,
    pub desirable_weight: c_float,
    pub undesirable_weight: c_float,
    pub ref_adapter: *const lt_adapter,
    pub max_length: i32,
    pub num_generations: i32,
    pub epsilon: c_float,
    pub epsilon_high: c_float,
    pub kl_beta: c_float,
    pub scale_rewards: lt_grpo_scale,
    pub loss_type: lt_grpo_loss,
    pub comm: *mut lt_comm,
    pub zero_stage: c_int,
    pub activation_memory: i64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_pref_batch {
    pub size: usize,
    pub n_rows: i32,
    pub prompt_ids: *const i32,
    pub prompt_lens: *const i32,
    pub chosen_ids: *const i32,
    pub chosen_lens: *const i32,
    pub rejected_ids: *const i32,
    pub rejected_lens: *const i32,
    pub labels: *const i32,
    pub ref_chosen_logps: *const c_double,
    pub ref_rejected_logps: *const c_double,
    pub ref_kl_logps: *const c_double,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_step_result {
    pub size: usize,
    pub loss: c_double,
    pub grad_norm: c_double,
    pub lr: c_double,
    pub tokens: i64,
    pub tokens_per_s: c_double,
    pub step: i64,
    pub updated: c_int,
    pub rewards_chosen: c_double,
    pub rewards_rejected: c_double,
    pub rewards_accuracies: c_double,
    pub rewards_margins: c_double,
    pub kl: c_double,
    pub reward_mean: c_double,
    pub reward_std: c_double,
    pub clip_fraction: c_double,
    pub completion_length: c_double,
}

pub type lt_progress_fn = Option<unsafe extern "C" fn(user: *mut c_void, result: *const lt_step_result)>;

// ---- generation ------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_generate_params {
    pub size: usize,
    pub max_new_tokens: c_int,
    pub temperature: c_float,
    pub top_k: c_int,
    pub top_p: c_float,
    pub seed: u64,
    pub eos_token_id: i32,
}

pub const LT_EOS_FROM_CONFIG: i32 = -2;

// ---- tokenizer -------------------------------------------------------------------------------------

pub type lt_special_token = c_int;
pub const LT_SPECIAL_BOS: lt_special_token = 0;
pub const LT_SPECIAL_EOS: lt_special_token = 1;
pub const LT_SPECIAL_PAD: lt_special_token = 2;
pub const LT_SPECIAL_UNK: lt_special_token = 3;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_text_params {
    pub size: usize,
    pub max_len: i32,
    pub completion_only: c_int,
    pub assistant_only: c_int,
    pub add_special: c_int,
    pub add_eos: c_int,
}

// ---- GGUF export -----------------------------------------------------------------------------------

pub type lt_gguf_dtype = c_int;
pub const LT_GGUF_DTYPE_F32: lt_gguf_dtype = 0;
pub const LT_GGUF_DTYPE_F16: lt_gguf_dtype = 1;
pub const LT_GGUF_DTYPE_BF16: lt_gguf_dtype = 2;
pub const LT_GGUF_DTYPE_Q8_0: lt_gguf_dtype = 3;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lt_gguf_params {
    pub size: usize,
    pub dtype: lt_gguf_dtype,
    pub tokenizer: *const lt_tokenizer,
    pub name: *const c_char,
    pub allow_approximate: c_int,
}

// ---- functions -------------------------------------------------------------------------------------

extern "C" {
    pub fn lt_version_number() -> c_uint;
    pub fn lt_version_string() -> *const c_char;
    pub fn lt_status_string(status: lt_status) -> *const c_char;
    pub fn lt_last_error() -> *const c_char;

    pub fn lt_context_params_init(params: *mut lt_context_params, size: usize);
    pub fn lt_context_create(params: *const lt_context_params, out: *mut *mut lt_context) -> lt_status;
    pub fn lt_context_free(ctx: *mut lt_context);
    pub fn lt_context_last_error(ctx: *const lt_context) -> *const c_char;
    pub fn lt_context_backend(ctx: *const lt_context) -> *const c_char;
    pub fn lt_context_set_threads(ctx: *mut lt_context, n_threads: c_int) -> lt_status;
    pub fn lt_backend_available(name: *const c_char) -> c_int;

    pub fn lt_quant_params_init(params: *mut lt_quant_params, size: usize);
    pub fn lt_qtensor_quantize(
        data: *const c_float,
        shape: *const i64,
        ndim: c_int,
        params: *const lt_quant_params,
        out: *mut *mut lt_qtensor,
    ) -> lt_status;
    pub fn lt_qtensor_free(q: *mut lt_qtensor);
    pub fn lt_qtensor_last_error(q: *const lt_qtensor) -> *const c_char;
    pub fn lt_qtensor_get_info(q: *const lt_qtensor, info: *mut lt_qtensor_info) -> lt_status;
    pub fn lt_qtensor_dequantize(q: *const lt_qtensor, out: *mut c_float, count: usize) -> lt_status;
    pub fn lt_qtensor_dequantize_bf16(q: *const lt_qtensor, out: *mut u16, count: usize) -> lt_status;
    pub fn lt_qtensor_part(q: *const lt_qtensor, part: lt_qpart, data: *mut *const c_void, bytes: *mut usize) -> lt_status;

    pub fn lt_model_params_init(params: *mut lt_model_params, size: usize);
    pub fn lt_model_load(
        ctx: *mut lt_context,
        dir: *const c_char,
        params: *const lt_model_params,
        out: *mut *mut lt_model,
    ) -> lt_status;
    pub fn lt_model_free(model: *mut lt_model);
    pub fn lt_model_last_error(model: *const lt_model) -> *const c_char;
    pub fn lt_model_get_info(model: *const lt_model, info: *mut lt_model_info) -> lt_status;
    pub fn lt_model_quantize(model: *mut lt_model, params: *const lt_quant_params) -> lt_status;
    pub fn lt_model_save_quantized(model: *mut lt_model, dir: *const c_char) -> lt_status;
    pub fn lt_batch_init(batch: *mut lt_batch, size: usize);
    pub fn lt_model_loss(
        model: *mut lt_model,
        adapter: *const lt_adapter,
        batch: *const lt_batch,
        loss_sum: *mut c_double,
        n_tokens: *mut i64,
    ) -> lt_status;
    pub fn lt_model_logits(
        model: *mut lt_model,
        adapter: *const lt_adapter,
        batch: *const lt_batch,
        out: *mut c_float,
        out_count: usize,
    ) -> lt_status;

    pub fn lt_adapter_params_init(params: *mut lt_adapter_params, size: usize);
    pub fn lt_adapter_create(model: *mut lt_model, params: *const lt_adapter_params, out: *mut *mut lt_adapter)
        -> lt_status;
    pub fn lt_adapter_load(model: *mut lt_model, dir: *const c_char, out: *mut *mut lt_adapter) -> lt_status;
    pub fn lt_adapter_save(adapter: *mut lt_adapter, dir: *const c_char) -> lt_status;
    pub fn lt_adapter_free(adapter: *mut lt_adapter);
    pub fn lt_adapter_last_error(adapter: *const lt_adapter) -> *const c_char;
    pub fn lt_adapter_get_params(adapter: *const lt_adapter, params: *mut lt_adapter_params) -> lt_status;
    pub fn lt_adapter_n_params(adapter: *const lt_adapter) -> i64;
    pub fn lt_adapter_export_merged(adapter: *mut lt_adapter, dir: *const c_char, max_shard_bytes: i64) -> lt_status;
    pub fn lt_adapter_merge(adapter: *mut lt_adapter) -> lt_status;
    pub fn lt_adapter_unmerge(adapter: *mut lt_adapter) -> lt_status;

    pub fn lt_optimizer_params_init(params: *mut lt_optimizer_params, size: usize);
    pub fn lt_optimizer_create(
        adapter: *mut lt_adapter,
        params: *const lt_optimizer_params,
        out: *mut *mut lt_optimizer,
    ) -> lt_status;
    pub fn lt_optimizer_free(opt: *mut lt_optimizer);
    pub fn lt_optimizer_last_error(opt: *const lt_optimizer) -> *const c_char;
    pub fn lt_optimizer_lr(opt: *const lt_optimizer) -> c_double;
    pub fn lt_optimizer_step_count(opt: *const lt_optimizer) -> i64;
    pub fn lt_optimizer_save(opt: *mut lt_optimizer, path: *const c_char) -> lt_status;
    pub fn lt_optimizer_load(opt: *mut lt_optimizer, path: *const c_char) -> lt_status;

    pub fn lt_comm_callbacks_init(callbacks: *mut lt_comm_callbacks, size: usize);
    pub fn lt_comm_create(callbacks: *const lt_comm_callbacks, out: *mut *mut lt_comm) -> lt_status;
    pub fn lt_comm_create_mpi(mpi_comm: *const c_void, out: *mut *mut lt_comm) -> lt_status;
    pub fn lt_comm_create_nccl(nccl_comm: *mut c_void, cuda_stream: *mut c_void, out: *mut *mut lt_comm) -> lt_status;
    pub fn lt_comm_free(comm: *mut lt_comm);
    pub fn lt_comm_last_error(comm: *const lt_comm) -> *const c_char;
    pub fn lt_comm_available(engine: *const c_char) -> c_int;
    pub fn lt_comm_rank(comm: *const lt_comm) -> c_int;
    pub fn lt_comm_world_size(comm: *const lt_comm) -> c_int;
    pub fn lt_comm_set_timeout(comm: *mut lt_comm, seconds: c_double) -> lt_status;
    pub fn lt_comm_all_reduce(comm: *mut lt_comm, values: *mut c_double, n: usize) -> lt_status;

    pub fn lt_trainer_params_init(params: *mut lt_trainer_params, size: usize);
    pub fn lt_trainer_create(
        model: *mut lt_model,
        adapter: *mut lt_adapter,
        opt: *mut lt_optimizer,
        params: *const lt_trainer_params,
        out: *mut *mut lt_trainer,
    ) -> lt_status;
    pub fn lt_trainer_free(trainer: *mut lt_trainer);
    pub fn lt_trainer_last_error(trainer: *const lt_trainer) -> *const c_char;
    pub fn lt_trainer_set_progress(trainer: *mut lt_trainer, fn_: lt_progress_fn, user: *mut c_void);
    pub fn lt_trainer_step(trainer: *mut lt_trainer, batch: *const lt_batch, result: *mut lt_step_result) -> lt_status;
    pub fn lt_trainer_evaluate(
        trainer: *mut lt_trainer,
        batch: *const lt_batch,
        loss_sum: *mut c_double,
        n_tokens: *mut i64,
    ) -> lt_status;
    pub fn lt_pref_batch_init(batch: *mut lt_pref_batch, size: usize);
    pub fn lt_trainer_step_preference(
        trainer: *mut lt_trainer,
        batch: *const lt_pref_batch,
        result: *mut lt_step_result,
    ) -> lt_status;
    pub fn lt_trainer_evaluate_preference(
        trainer: *mut lt_trainer,
        batch: *const lt_pref_batch,
        result: *mut lt_step_result,
    ) -> lt_status;
    pub fn lt_trainer_reference_logps(
        trainer: *mut lt_trainer,
        batch: *const lt_pref_batch,
        chosen: *mut c_double,
        rejected: *mut c_double,
        kl: *mut c_double,
    ) -> lt_status;
    pub fn lt_trainer_save_checkpoint(trainer: *mut lt_trainer, dir: *const c_char) -> lt_status;
    pub fn lt_trainer_load_checkpoint(trainer: *mut lt_trainer, dir: *const c_char) -> lt_status;

    pub fn lt_generate_params_init(params: *mut lt_generate_params, size: usize);
    pub fn lt_generate(
        model: *mut lt_model,
        adapter: *const lt_adapter,
        prompts: *const i32,
        prompt_lens: *const i32,
        n_prompts: c_int,
        params: *const lt_generate_params,
        out: *mut i32,
        out_lens: *mut i32,
    ) -> lt_status;

    pub fn lt_grpo_generate(
        trainer: *mut lt_trainer,
        prompts: *const i32,
        prompt_lens: *const i32,
        n_prompts: c_int,
        gen: *const lt_generate_params,
        completions: *mut i32,
        completion_lens: *mut i32,
    ) -> lt_status;
    pub fn lt_grpo_step(trainer: *mut lt_trainer, rewards: *const c_float, result: *mut lt_step_result) -> lt_status;
    pub fn lt_tokenizer_load(path: *const c_char, out: *mut *mut lt_tokenizer) -> lt_status;
    pub fn lt_tokenizer_free(tok: *mut lt_tokenizer);
    pub fn lt_tokenizer_last_error(tok: *const lt_tokenizer) -> *const c_char;
    pub fn lt_tokenizer_vocab_size(tok: *const lt_tokenizer) -> i32;
    pub fn lt_tokenizer_encode(
        tok: *mut lt_tokenizer,
        text: *const c_char,
        len: usize,
        add_special: c_int,
        ids: *mut i32,
        capacity: usize,
        n_ids: *mut usize,
    ) -> lt_status;
    pub fn lt_tokenizer_decode(
        tok: *mut lt_tokenizer,
        ids: *const i32,
        n: usize,
        skip_special: c_int,
        text: *mut c_char,
        capacity: usize,
        len: *mut usize,
    ) -> lt_status;
    pub fn lt_tokenizer_token_to_id(tok: *const lt_tokenizer, token: *const c_char) -> i32;
    pub fn lt_tokenizer_id_to_token(tok: *const lt_tokenizer, id: i32) -> *const c_char;
    pub fn lt_tokenizer_special_id(tok: *const lt_tokenizer, which: lt_special_token) -> i32;
    pub fn lt_tokenizer_is_special(tok: *const lt_tokenizer, id: i32) -> c_int;
    pub fn lt_tokenizer_render_chat(
        tok: *mut lt_tokenizer,
        messages_json: *const c_char,
        add_generation_prompt: c_int,
        text: *mut *const c_char,
        len: *mut usize,
    ) -> lt_status;
    pub fn lt_tokenizer_encode_chat(
        tok: *mut lt_tokenizer,
        messages_json: *const c_char,
        add_generation_prompt: c_int,
        ids: *mut i32,
        mask: *mut i32,
        capacity: usize,
        n_ids: *mut usize,
    ) -> lt_status;
    pub fn lt_text_params_init(params: *mut lt_text_params, size: usize);
    pub fn lt_tokenizer_encode_row(
        tok: *mut lt_tokenizer,
        row_json: *const c_char,
        params: *const lt_text_params,
        ids: *mut i32,
        labels: *mut i32,
        capacity: usize,
        n: *mut usize,
    ) -> lt_status;
    pub fn lt_pack_sequences(
        ids: *const i32,
        labels: *const i32,
        lens: *const i32,
        n_seqs: i32,
        seq_len: i32,
        pad_id: i32,
        out_ids: *mut i32,
        out_labels: *mut i32,
        out_position_ids: *mut i32,
        capacity_rows: i32,
        n_rows: *mut i32,
    ) -> lt_status;
    pub fn lt_gguf_params_init(params: *mut lt_gguf_params, size: usize);
    pub fn lt_model_export_gguf(
        model: *mut lt_model,
        adapter: *const lt_adapter,
        path: *const c_char,
        params: *const lt_gguf_params,
    ) -> lt_status;
    pub fn lt_adapter_export_gguf(adapter: *mut lt_adapter, path: *const c_char, params: *const lt_gguf_params)
        -> lt_status;
}

/// `include/loratune_experimental.h`: no stability promise (docs/ABI.md).
pub mod experimental {
    use super::*;

    pub type lt_combine_method = c_int;
    pub const LT_COMBINE_CAT: lt_combine_method = 0;
    pub const LT_COMBINE_LINEAR: lt_combine_method = 1;
    pub const LT_COMBINE_TIES: lt_combine_method = 2;
    pub const LT_COMBINE_DARE_LINEAR: lt_combine_method = 3;
    pub const LT_COMBINE_DARE_TIES: lt_combine_method = 4;
    pub const LT_COMBINE_MAGNITUDE_PRUNE: lt_combine_method = 5;
    pub const LT_COMBINE_SLERP: lt_combine_method = 6;

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct lt_combine_params {
        pub size: usize,
        pub method: lt_combine_method,
        pub weights: *const c_float,
        pub density: c_float,
        pub t: c_float,
        pub rank: c_int,
        pub seed: u64,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct lt_combine_report {
        pub size: usize,
        pub rank: c_int,
        pub kept_energy: c_double,
        pub total_energy: c_double,
        pub max_module_error: c_double,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct lt_extract_params {
        pub size: usize,
        pub rank: c_int,
        pub targets: c_uint,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct lt_extract_report {
        pub size: usize,
        pub n_modules: c_int,
        pub kept_energy: c_double,
        pub total_energy: c_double,
        pub module_kept: *mut c_double,
        pub module_total: *mut c_double,
        pub others_max_diff: c_double,
        pub others_name: [c_char; 128],
    }

    extern "C" {
        pub fn lt_tokenizer_ollama_modelfile(
            tok: *mut lt_tokenizer,
            from: *const c_char,
            adapter: *const c_char,
            text: *mut *const c_char,
            warning: *mut *const c_char,
        ) -> lt_status;
        pub fn lt_combine_params_init(params: *mut lt_combine_params, size: usize);
        pub fn lt_adapter_combine(
            adapters: *mut *mut lt_adapter,
            n: c_int,
            params: *const lt_combine_params,
            out: *mut *mut lt_adapter,
            report: *mut lt_combine_report,
        ) -> lt_status;
        pub fn lt_adapter_combine_into_base(
            adapters: *mut *mut lt_adapter,
            n: c_int,
            params: *const lt_combine_params,
            dir: *const c_char,
        ) -> lt_status;
        pub fn lt_extract_params_init(params: *mut lt_extract_params, size: usize);
        pub fn lt_adapter_extract(
            base: *mut lt_model,
            tuned: *mut lt_model,
            params: *const lt_extract_params,
            out: *mut *mut lt_adapter,
            report: *mut lt_extract_report,
        ) -> lt_status;
        pub fn lt_trainer_frozen_gemm_stats(trainer: *const lt_trainer, seconds: *mut c_double, gflop: *mut c_double)
            -> lt_status;
        pub fn lt_model_create_random(
            ctx: *mut lt_context,
            config_json: *const c_char,
            seed: u64,
            init_std: c_float,
            out: *mut *mut lt_model,
        ) -> lt_status;
        pub fn lt_model_create_random_params(
            ctx: *mut lt_context,
            config_json: *const c_char,
            seed: u64,
            init_std: c_float,
            params: *const lt_model_params,
            out: *mut *mut lt_model,
        ) -> lt_status;
        pub fn lt_adapter_set_save_files(
            adapter: *mut lt_adapter,
            names: *const *const c_char,
            texts: *const *const c_char,
            n: c_int,
        ) -> lt_status;
        pub fn lt_model_save(model: *mut lt_model, dir: *const c_char) -> lt_status;
        pub fn lt_openblas_coretype_hint() -> *const c_char;
    }
}
