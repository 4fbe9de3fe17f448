//! Safe Rust bindings for libloratune, an embeddable C library for LoRA fine-tuning of LLMs.
//!
//! ```no_run
//! use loratune::{Adapter, AdapterParams, Batch, Context, Model, Optimizer, OptimizerParams, Trainer, TrainerParams};
//!
//! # fn main() -> loratune::Result<()> {
//! let ctx = Context::builder().backend("cpu").build()?;
//! let model = Model::load(&ctx, "path/to/hf-model")?;
//! let adapter = Adapter::create(&model, &AdapterParams { rank: 8, alpha: 16.0, ..Default::default() })?;
//! let opt = Optimizer::new(&adapter, &OptimizerParams { lr: 1e-3, ..Default::default() })?;
//! let mut trainer = Trainer::new(&model, &adapter, &opt, &TrainerParams::default())?;
//! let batch = Batch::from_rows(&[vec![1, 2, 3, 4], vec![5, 6, 7, 8]])?;
//! let r = trainer.step(&batch)?;
//! println!("loss {:.4}", r.loss);
//! adapter.save("out/adapter")?;
//! # Ok(())
//! # }
//! ```
//!
//! # Ownership
//! Every handle frees its C object on `Drop`. The borrow checker enforces the C API's lifetimes: a
//! [`Model`] borrows its [`Context`], an [`Adapter`] its model, an [`Optimizer`] its adapter, and a
//! [`Trainer`] all three, so no handle can outlive what it was made from.
//!
//! # Threads
//! libloratune lets one thread use a handle at a time, and every handle made from a context shares that
//! context's backend (its state is not synchronised). So [`Context`] is `Send` but not `Sync`, and the
//! handles made from it borrow it and are neither `Send` nor `Sync`: a context and everything made
//! from it live on one thread at a time. For parallel work, use one context per thread (move the
//! context into the thread, then load there).
//!
//! # Errors
//! Every fallible call returns [`Result`]; an [`Error`] carries the [`Status`] and the library's
//! message (`lt_*_last_error`, or `lt_last_error` for a failed create/load).
use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::{self, NonNull};

pub use loratune_sys as sys;

// ---- errors -----------------------------------------------------------------------------------------

/// The failure statuses of `lt_status` (LT_OK is not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    Argument,
    NoMem,
    Io,
    Truncated,
    Format,
    Json,
    Dtype,
    Shape,
    Missing,
    Arch,
    Backend,
    Numeric,
    Data,
    State,
    Unsupported,
    Internal,
    /// A status this crate does not know (a newer library).
    Unknown(i32),
}

impl Status {
    /// The status of a C return code; `None` for LT_OK.
    pub fn from_code(code: i32) -> Option<Status> {
        use Status::*;
        Some(match code {
            0 => return None,
            1 => Argument,
            2 => NoMem,
            3 => Io,
            4 => Truncated,
            5 => Format,
            6 => Json,
            7 => Dtype,
            8 => Shape,
            9 => Missing,
            10 => Arch,
            11 => Backend,
            12 => Numeric,
            13 => Data,
            14 => State,
            15 => Unsupported,
            16 => Internal,
            n => Unknown(n),
        })
    }

    /// The C value (LT_ERR_*).
    pub fn code(self) -> i32 {
        use Status::*;
        match self {
            Argument => 1,
            NoMem => 2,
            Io => 3,
            Truncated => 4,
            Format => 5,
            Json => 6,
            Dtype => 7,
            Shape => 8,
            Missing => 9,
            Arch => 10,
            Backend => 11,
            Numeric => 12,
            Data => 13,
            State => 14,
            Unsupported => 15,
            Internal => 16,
            Unknown(n) => n,
        }
    }

    /// `lt_status_string()`: "LT_ERR_FORMAT: malformed file".
    pub fn description(self) -> String {
        status_string(self.code())
    }
}

/// A failed libloratune call: its status and the library's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    pub fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The C status code.
    pub fn code(&self) -> i32 {
        self.status.code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = status_string(self.status.code());
        let name = name.split(':').next().unwrap_or("LT_ERR");
        if self.message.is_empty() {
            write!(f, "{}", name)
        } else {
            write!(f, "{}: {}", name, self.message)
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn string_from(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Turn a status into a Result, reading the message only on failure.
fn check(code: sys::lt_status, message: impl FnOnce() -> String) -> Result<()> {
    match Status::from_code(code) {
        None => Ok(()),
        Some(s) => Err(Error::new(s, message())),
    }
}

/// The per-thread message of a failed create/load.
fn thread_error(code: sys::lt_status) -> Error {
    let s = Status::from_code(code).unwrap_or(Status::Internal);
    Error::new(s, string_from(unsafe { sys::lt_last_error() }))
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(Status::Argument, format!("{} contains a NUL byte", what)))
}

fn gguf_params(dtype: GgufDtype) -> sys::lt_gguf_params {
    let mut p: sys::lt_gguf_params = unsafe { std::mem::zeroed() };
    unsafe { sys::lt_gguf_params_init(&mut p, size_of::<sys::lt_gguf_params>()) };
    p.dtype = dtype.raw();
    p
}

fn c_path(p: &Path) -> Result<CString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::new(Status::Argument, format!("path {:?} contains a NUL byte", p)))
    }
    #[cfg(not(unix))]
    {
        let s = p.to_str().ok_or_else(|| Error::new(Status::Argument, format!("path {:?} is not UTF-8", p)))?;
        c_string(s, "path")
    }
}

/// Fill a params struct through the library's `*_params_init(p, size)`: the library writes exactly
/// `size_of::<T>()` bytes (its defaults for the fields it knows, zeros beyond) and sets `size`.
unsafe fn init_params<T: Copy>(init: unsafe extern "C" fn(*mut T, usize)) -> T {
    let mut v = MaybeUninit::<T>::zeroed();
    init(v.as_mut_ptr(), size_of::<T>());
    v.assume_init()
}

// ---- library -----------------------------------------------------------------------------------------

/// `lt_version_string()` of the linked library ("MAJOR.MINOR.PATCH").
pub fn version() -> String {
    string_from(unsafe { sys::lt_version_string() })
}

/// `lt_version_number()` of the linked library (MAJOR*10000 + MINOR*100 + PATCH).
pub fn version_number() -> u32 {
    unsafe { sys::lt_version_number() }
}

/// `lt_status_string()` of a status code.
pub fn status_string(code: i32) -> String {
    string_from(unsafe { sys::lt_status_string(code) })
}

/// Whether a backend of that name ("cpu", "cuda", "auto") is compiled in and usable here.
pub fn backend_available(name: &str) -> bool {
    match CString::new(name) {
        Ok(n) => unsafe { sys::lt_backend_available(n.as_ptr()) != 0 },
        Err(_) => false,
    }
}

// ---- enums --------------------------------------------------------------------------------------------

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident = $c:path),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name { $($v),* }
        impl $name {
            /// The C value.
            pub fn raw(self) -> c_int { match self { $($name::$v => $c),* } }
            /// The variant of a C value.
            pub fn from_raw(v: c_int) -> Option<$name> {
                $(if v == $c { return Some($name::$v); })*
                None
            }
        }
    };
}

c_enum!(
    /// `lt_log_level`
    LogLevel { Debug = sys::LT_LOG_DEBUG, Info = sys::LT_LOG_INFO, Warn = sys::LT_LOG_WARN, Error = sys::LT_LOG_ERROR }
);
c_enum!(
    /// `lt_lora_init`: kaiming-uniform A and zero B (Default), Gaussian A, or PiSSA / OLoRA (A and B from
    /// an SVD / QR of the base weight).
    LoraInit { Default = sys::LT_INIT_DEFAULT, Gaussian = sys::LT_INIT_GAUSSIAN, Pissa = sys::LT_INIT_PISSA, Olora = sys::LT_INIT_OLORA }
);
c_enum!(
    /// `lt_optimizer_kind`
    OptimizerKind { AdamW = sys::LT_OPT_ADAMW, Sgd = sys::LT_OPT_SGD, AdamW8bit = sys::LT_OPT_ADAMW8BIT }
);
c_enum!(
    /// `lt_schedule`: learning-rate schedule after warmup.
    Schedule { Constant = sys::LT_SCHED_CONSTANT, Linear = sys::LT_SCHED_LINEAR, Cosine = sys::LT_SCHED_COSINE }
);
c_enum!(
    /// `lt_gguf_dtype`: how GGUF export writes the 2-D weights (1-D tensors and norms stay F32).
    #[allow(non_camel_case_types)]
    GgufDtype { F32 = sys::LT_GGUF_DTYPE_F32, F16 = sys::LT_GGUF_DTYPE_F16, Bf16 = sys::LT_GGUF_DTYPE_BF16, Q8_0 = sys::LT_GGUF_DTYPE_Q8_0 }
);
c_enum!(
    /// `lt_objective`
    Objective { Sft = sys::LT_OBJ_SFT }
);

/// LT_TARGET_* bits: the projections that get a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Targets(pub u32);

impl Targets {
    pub const Q: Targets = Targets(sys::LT_TARGET_Q);
    pub const K: Targets = Targets(sys::LT_TARGET_K);
    pub const V: Targets = Targets(sys::LT_TARGET_V);
    pub const O: Targets = Targets(sys::LT_TARGET_O);
    pub const GATE: Targets = Targets(sys::LT_TARGET_GATE);
    pub const UP: Targets = Targets(sys::LT_TARGET_UP);
    pub const DOWN: Targets = Targets(sys::LT_TARGET_DOWN);
    pub const ALL: Targets = Targets(sys::LT_TARGET_ALL);

    /// "all", or comma-separated module names ("q_proj,v_proj"; "_proj" may be left out).
    pub fn from_names(names: &str) -> Result<Targets> {
        let mut bits = 0;
        for n in names.split(',') {
            let n = n.trim().to_ascii_lowercase();
            let n = n.strip_suffix("_proj").unwrap_or(&n);
            bits |= match n {
                "all" | "all-linear" => sys::LT_TARGET_ALL,
                "q" => sys::LT_TARGET_Q,
                "k" => sys::LT_TARGET_K,
                "v" => sys::LT_TARGET_V,
                "o" => sys::LT_TARGET_O,
                "gate" => sys::LT_TARGET_GATE,
                "up" => sys::LT_TARGET_UP,
                "down" => sys::LT_TARGET_DOWN,
                other => return Err(Error::new(Status::Argument, format!("unknown target module {:?}", other))),
            };
        }
        Ok(Targets(bits))
    }

    pub fn contains(self, other: Targets) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Targets {
    type Output = Targets;
    fn bitor(self, rhs: Targets) -> Targets {
        Targets(self.0 | rhs.0)
    }
}

// ---- parameters -----------------------------------------------------------------------------------------
// Plain structs with public fields; Default is the library's defaults (its *_params_init), so
// `AdapterParams { rank: 16, ..Default::default() }` changes only what it names.

/// `lt_model_params`
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    /// Map safetensors files and use f32 weights in place (default true).
    pub use_mmap: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        let r = unsafe { init_params(sys::lt_model_params_init) };
        ModelParams { use_mmap: r.use_mmap != 0 }
    }
}

impl ModelParams {
    fn to_raw(&self) -> sys::lt_model_params {
        let mut r = unsafe { init_params(sys::lt_model_params_init) };
        r.use_mmap = self.use_mmap as c_int;
        r
    }
}

/// `lt_adapter_params`
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterParams {
    pub rank: i32,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Targets,
    /// Scaling alpha/sqrt(r) instead of alpha/r.
    pub use_rslora: bool,
    pub init: LoraInit,
    pub seed: u64,
    /// DoRA (PEFT `use_dora`): a trainable magnitude per output row.
    pub use_dora: bool,
    /// Full fine-tuning: every base weight trainable (rank, alpha, targets are ignored).
    pub full_finetune: bool,
    /// Trainable copies of embed_tokens and/or lm_head next to a LoRA (PEFT `modules_to_save`).
    pub modules_to_save: ModulesToSave,
}

/// LT_SAVE_* bits: the modules a LoRA adapter trains in full (PEFT `modules_to_save`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModulesToSave(pub u32);

impl ModulesToSave {
    pub const NONE: ModulesToSave = ModulesToSave(0);
    pub const EMBED_TOKENS: ModulesToSave = ModulesToSave(sys::LT_SAVE_EMBED_TOKENS);
    pub const LM_HEAD: ModulesToSave = ModulesToSave(sys::LT_SAVE_LM_HEAD);
    /// "gate": the router of every mixture-of-experts layer (gpt-oss's "router": weight and bias)
    pub const ROUTER: ModulesToSave = ModulesToSave(sys::LT_SAVE_ROUTER);
}

impl std::ops::BitOr for ModulesToSave {
    type Output = ModulesToSave;
    fn bitor(self, rhs: ModulesToSave) -> ModulesToSave {
        ModulesToSave(self.0 | rhs.0)
    }
}

impl Default for AdapterParams {
    fn default() -> Self {
        Self::from_raw(&unsafe { init_params(sys::lt_adapter_params_init) })
    }
}

impl AdapterParams {
    fn from_raw(r: &sys::lt_adapter_params) -> Self {
        AdapterParams {
            rank: r.rank,
            alpha: r.alpha,
            dropout: r.dropout,
            targets: Targets(r.targets),
            use_rslora: r.use_rslora != 0,
            init: LoraInit::from_raw(r.init).unwrap_or(LoraInit::Default),
            seed: r.seed,
            use_dora: r.use_dora != 0,
            full_finetune: r.full_finetune != 0,
            modules_to_save: ModulesToSave(r.modules_to_save),
        }
    }
    fn to_raw(&self) -> sys::lt_adapter_params {
        let mut r = unsafe { init_params(sys::lt_adapter_params_init) };
        r.rank = self.rank;
        r.alpha = self.alpha;
        r.dropout = self.dropout;
        r.targets = self.targets.0;
        r.use_rslora = self.use_rslora as c_int;
        r.init = self.init.raw();
        r.seed = self.seed;
        r.use_dora = self.use_dora as c_int;
        r.full_finetune = self.full_finetune as c_int;
        r.modules_to_save = self.modules_to_save.0;
        r
    }
}

/// `lt_optimizer_params`
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerParams {
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled (AdamW) or L2 (SGD).
    pub weight_decay: f32,
    /// SGD momentum.
    pub momentum: f32,
    pub schedule: Schedule,
    pub warmup_steps: i64,
    /// Used when warmup_steps == 0: ceil(total_steps * ratio).
    pub warmup_ratio: f32,
    /// Length of the schedule (linear and cosine need it).
    pub total_steps: i64,
    /// Global-norm clipping; 0 = off.
    pub max_grad_norm: f32,
}

impl Default for OptimizerParams {
    fn default() -> Self {
        let r = unsafe { init_params(sys::lt_optimizer_params_init) };
        OptimizerParams {
            kind: OptimizerKind::from_raw(r.kind).unwrap_or(OptimizerKind::AdamW),
            lr: r.lr,
            beta1: r.beta1,
            beta2: r.beta2,
            eps: r.eps,
            weight_decay: r.weight_decay,
            momentum: r.momentum,
            schedule: Schedule::from_raw(r.schedule).unwrap_or(Schedule::Constant),
            warmup_steps: r.warmup_steps,
            warmup_ratio: r.warmup_ratio,
            total_steps: r.total_steps,
            max_grad_norm: r.max_grad_norm,
        }
    }
}

impl OptimizerParams {
    fn to_raw(&self) -> sys::lt_optimizer_params {
        let mut r = unsafe { init_params(sys::lt_optimizer_params_init) };
        r.kind = self.kind.raw();
        r.lr = self.lr;
        r.beta1 = self.beta1;
        r.beta2 = self.beta2;
        r.eps = self.eps;
        r.weight_decay = self.weight_decay;
        r.momentum = self.momentum;
        r.schedule = self.schedule.raw();
        r.warmup_steps = self.warmup_steps;
        r.warmup_ratio = self.warmup_ratio;
        r.total_steps = self.total_steps;
        r.max_grad_norm = self.max_grad_norm;
        r
    }
}

/// `lt_trainer_params`
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerParams {
    pub objective: Objective,
    /// Micro-batches per optimizer update.
    pub grad_accum: i32,
    /// Keep layer inputs only and recompute in backward.
    pub gradient_checkpointing: bool,
    /// Dropout RNG seed.
    pub seed: u64,
    /// With a [`Comm`] ([`Trainer::new_with_comm`]): 0 every rank keeps the whole optimizer state, 1
    /// (ZeRO-1) each rank keeps its shard.
    pub zero_stage: i32,
}

impl Default for TrainerParams {
    fn default() -> Self {
        let r = unsafe { init_params(sys::lt_trainer_params_init) };
        TrainerParams {
            objective: Objective::from_raw(r.objective).unwrap_or(Objective::Sft),
            grad_accum: r.grad_accum,
            gradient_checkpointing: r.gradient_checkpointing != 0,
            seed: r.seed,
            zero_stage: r.zero_stage,
        }
    }
}

impl TrainerParams {
    fn to_raw(&self) -> sys::lt_trainer_params {
        let mut r = unsafe { init_params(sys::lt_trainer_params_init) };
        r.objective = self.objective.raw();
        r.grad_accum = self.grad_accum;
        r.gradient_checkpointing = self.gradient_checkpointing as c_int;
        r.seed = self.seed;
        r.zero_stage = self.zero_stage;
        r
    }
}

/// When generation stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eos {
    /// config.json's eos_token_id (LT_EOS_FROM_CONFIG).
    FromConfig,
    /// Never stop before max_new_tokens (-1).
    Never,
    Token(i32),
}

/// `lt_generate_params`
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: i32,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: i32,
    /// 1 = off.
    pub top_p: f32,
    pub seed: u64,
    pub eos: Eos,
}

impl Default for GenerateParams {
    fn default() -> Self {
        let r = unsafe { init_params(sys::lt_generate_params_init) };
        GenerateParams {
            max_new_tokens: r.max_new_tokens,
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p,
            seed: r.seed,
            eos: match r.eos_token_id {
                sys::LT_EOS_FROM_CONFIG => Eos::FromConfig,
                -1 => Eos::Never,
                t => Eos::Token(t),
            },
        }
    }
}

impl GenerateParams {
    fn to_raw(&self) -> sys::lt_generate_params {
        let mut r = unsafe { init_params(sys::lt_generate_params_init) };
        r.max_new_tokens = self.max_new_tokens;
        r.temperature = self.temperature;
        r.top_k = self.top_k;
        r.top_p = self.top_p;
        r.seed = self.seed;
        r.eos_token_id = match self.eos {
            Eos::FromConfig => sys::LT_EOS_FROM_CONFIG,
            Eos::Never => -1,
            Eos::Token(t) => t,
        };
        r
    }
}

// ---- results --------------------------------------------------------------------------------------------

/// A summed token loss and the number of predicted tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    pub loss_sum: f64,
    pub n_tokens: i64,
}

impl Loss {
    /// loss_sum / n_tokens (NaN when nothing is predicted).
    pub fn mean(&self) -> f64 {
        if self.n_tokens > 0 {
            self.loss_sum / self.n_tokens as f64
        } else {
            f64::NAN
        }
    }
}

/// `lt_step_result` of one [`Trainer::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    /// Mean token loss of the micro-batch(es) of this call.
    pub loss: f64,
    /// Pre-clip global gradient norm (when `updated`).
    pub grad_norm: f64,
    /// Learning rate used by the update.
    pub lr: f64,
    /// Predicted tokens in this call.
    pub tokens: i64,
    pub tokens_per_s: f64,
    /// Optimizer updates done so far.
    pub step: i64,
    /// Whether this call finished an accumulation and updated the adapter.
    pub updated: bool,
}

impl StepResult {
    fn from_raw(r: &sys::lt_step_result) -> Self {
        StepResult {
            loss: r.loss,
            grad_norm: r.grad_norm,
            lr: r.lr,
            tokens: r.tokens,
            tokens_per_s: r.tokens_per_s,
            step: r.step,
            updated: r.updated != 0,
        }
    }
}

/// `lt_model_info`
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub architecture: String,
    pub dtype: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub n_layers: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tied_embeddings: bool,
    pub n_params: i64,
    pub weight_bytes: i64,
}

fn fixed_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---- batches --------------------------------------------------------------------------------------------

/// Label that contributes no loss.
pub const IGNORE_INDEX: i32 = -100;

/// B rows of T token ids, row-major (`lt_batch`), with optional labels (-100 = no loss; default: the ids)
/// and position ids (packed rows restart at 0). Owns its buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    n_rows: usize,
    seq_len: usize,
    input_ids: Vec<i32>,
    labels: Option<Vec<i32>>,
    position_ids: Option<Vec<i32>>,
}

impl Batch {
    /// `input_ids` holds n_rows * seq_len ids.
    pub fn new(input_ids: Vec<i32>, n_rows: usize, seq_len: usize) -> Result<Batch> {
        if n_rows.checked_mul(seq_len) != Some(input_ids.len()) {
            return Err(Error::new(
                Status::Shape,
                format!("{} ids for a batch of {} x {}", input_ids.len(), n_rows, seq_len),
            ));
        }
        if n_rows > i32::MAX as usize || seq_len > i32::MAX as usize {
            return Err(Error::new(Status::Shape, "batch dimensions exceed int32"));
        }
        Ok(Batch { n_rows, seq_len, input_ids, labels: None, position_ids: None })
    }

    /// Rows of equal length.
    pub fn from_rows<R: AsRef<[i32]>>(rows: &[R]) -> Result<Batch> {
        let t = rows.first().map(|r| r.as_ref().len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        for (i, r) in rows.iter().enumerate() {
            if r.as_ref().len() != t {
                return Err(Error::new(
                    Status::Shape,
                    format!("row {} has {} tokens, row 0 has {} (use Batch::padded)", i, r.as_ref().len(), t),
                ));
            }
            ids.extend_from_slice(r.as_ref());
        }
        Batch::new(ids, rows.len(), t)
    }

    /// Rows of any length, padded with `pad_id` (label -100) or truncated to `seq_len` (default: the
    /// longest row). `labels`, when given, has one row per id row, of the same length.
    pub fn padded<R: AsRef<[i32]>>(rows: &[R], labels: Option<&[R]>, seq_len: Option<usize>, pad_id: i32) -> Result<Batch> {
        let t = seq_len.unwrap_or_else(|| rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0));
        if let Some(l) = labels {
            if l.len() != rows.len() {
                return Err(Error::new(Status::Shape, "labels and input_ids have different row counts"));
            }
        }
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut lab = Vec::with_capacity(rows.len() * t);
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            let l = match labels {
                Some(ls) => ls[i].as_ref(),
                None => r,
            };
            if l.len() != r.len() {
                return Err(Error::new(Status::Shape, format!("row {}: {} ids, {} labels", i, r.len(), l.len())));
            }
            let n = r.len().min(t);
            ids.extend_from_slice(&r[..n]);
            lab.extend_from_slice(&l[..n]);
            ids.extend(std::iter::repeat(pad_id).take(t - n));
            lab.extend(std::iter::repeat(IGNORE_INDEX).take(t - n));
        }
        Batch::new(ids, rows.len(), t)?.with_labels(lab)
    }

    pub fn with_labels(mut self, labels: Vec<i32>) -> Result<Batch> {
        if labels.len() != self.input_ids.len() {
            return Err(Error::new(Status::Shape, format!("{} labels for {} ids", labels.len(), self.input_ids.len())));
        }
        self.labels = Some(labels);
        Ok(self)
    }

    pub fn with_position_ids(mut self, position_ids: Vec<i32>) -> Result<Batch> {
        if position_ids.len() != self.input_ids.len() {
            return Err(Error::new(
                Status::Shape,
                format!("{} position ids for {} ids", position_ids.len(), self.input_ids.len()),
            ));
        }
        self.position_ids = Some(position_ids);
        Ok(self)
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn input_ids(&self) -> &[i32] {
        &self.input_ids
    }
    pub fn labels(&self) -> Option<&[i32]> {
        self.labels.as_deref()
    }
    pub fn position_ids(&self) -> Option<&[i32]> {
        self.position_ids.as_deref()
    }

    /// The C view; valid while `self` is borrowed.
    fn raw(&self) -> sys::lt_batch {
        let mut b = unsafe { init_params(sys::lt_batch_init) };
        b.n_rows = self.n_rows as i32;
        b.seq_len = self.seq_len as i32;
        b.input_ids = self.input_ids.as_ptr();
        b.labels = self.labels.as_ref().map_or(ptr::null(), |v| v.as_ptr());
        b.position_ids = self.position_ids.as_ref().map_or(ptr::null(), |v| v.as_ptr());
        b
    }
}

// ---- context --------------------------------------------------------------------------------------------

type LogFn = Box<dyn Fn(LogLevel, &str) + Send + 'static>;

unsafe extern "C" fn log_trampoline(user: *mut c_void, level: sys::lt_log_level, message: *const c_char) {
    let f = &*(user as *const LogFn);
    let msg = string_from(message);
    let level = LogLevel::from_raw(level).unwrap_or(LogLevel::Info);
    // a panic must not unwind into C; the message is dropped instead
    let _ = catch_unwind(AssertUnwindSafe(|| f(level, &msg)));
}

/// Builds a [`Context`]; unset options take the library's defaults (backend "auto", all cores, silent).
#[derive(Default)]
pub struct ContextBuilder {
    backend: Option<String>,
    n_threads: Option<i32>,
    log_level: Option<LogLevel>,
    log: Option<LogFn>,
}

impl ContextBuilder {
    /// "cpu", "cuda" or "auto" (cuda if present).
    pub fn backend(mut self, name: &str) -> Self {
        self.backend = Some(name.to_string());
        self
    }
    /// CPU threads; 0 = all online cores.
    pub fn threads(mut self, n: i32) -> Self {
        self.n_threads = Some(n);
        self
    }
    /// Minimum level passed to the log callback (default Info).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = Some(level);
        self
    }
    /// Receive the library's log messages.
    pub fn log<F: Fn(LogLevel, &str) + Send + 'static>(mut self, f: F) -> Self {
        self.log = Some(Box::new(f));
        self
    }

    pub fn build(self) -> Result<Context> {
        let mut p = unsafe { init_params(sys::lt_context_params_init) };
        let backend = match &self.backend {
            Some(b) => Some(c_string(b, "backend")?),
            None => None,
        };
        if let Some(b) = &backend {
            p.backend = b.as_ptr();
        }
        if let Some(n) = self.n_threads {
            p.n_threads = n;
        }
        if let Some(l) = self.log_level {
            p.log_level = l.raw();
        }
        let log: Option<*mut LogFn> = self.log.map(|f| Box::into_raw(Box::new(f)));
        if let Some(l) = log {
            p.log_fn = Some(log_trampoline);
            p.log_user = l as *mut c_void;
        }
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_context_create(&p, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            if let Some(l) = log {
                drop(unsafe { Box::from_raw(l) });
            }
            return Err(thread_error(st));
        }
        Ok(Context { raw: NonNull::new(out).unwrap(), log })
    }
}

/// `lt_context`: a backend, its threads and the log callback.
pub struct Context {
    raw: NonNull<sys::lt_context>,
    log: Option<*mut LogFn>,
}

// A context has no affinity to the thread that made it, and its log callback is Send. It is not Sync:
// the handles made from it share its backend, whose state is not synchronised.
unsafe impl Send for Context {}

impl Context {
    /// A context with the library's defaults (backend "auto").
    pub fn new() -> Result<Context> {
        ContextBuilder::default().build()
    }

    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// The backend in use ("cpu", "cuda").
    pub fn backend(&self) -> String {
        string_from(unsafe { sys::lt_context_backend(self.raw.as_ptr()) })
    }

    /// CPU threads; 0 = all online cores.
    pub fn set_threads(&self, n_threads: i32) -> Result<()> {
        check(unsafe { sys::lt_context_set_threads(self.raw.as_ptr(), n_threads) }, || self.last_error())
    }

    /// `lt_context_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_context_last_error(self.raw.as_ptr()) })
    }

    pub fn as_ptr(&self) -> *mut sys::lt_context {
        self.raw.as_ptr()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        unsafe { sys::lt_context_free(self.raw.as_ptr()) };
        if let Some(l) = self.log.take() {
            drop(unsafe { Box::from_raw(l) });
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").field("backend", &self.backend()).finish()
    }
}

// ---- model ----------------------------------------------------------------------------------------------

/// `lt_model`: a base model, read-only after load. Borrows its [`Context`].
pub struct Model<'c> {
    raw: NonNull<sys::lt_model>,
    _ctx: PhantomData<&'c Context>,
}

impl<'c> Model<'c> {
    /// Load a Hugging Face model directory (config.json + safetensors, sharded or not).
    pub fn load<P: AsRef<Path>>(ctx: &'c Context, dir: P) -> Result<Model<'c>> {
        Model::load_with(ctx, dir, &ModelParams::default())
    }

    pub fn load_with<P: AsRef<Path>>(ctx: &'c Context, dir: P, params: &ModelParams) -> Result<Model<'c>> {
        let dir = c_path(dir.as_ref())?;
        let p = params.to_raw();
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_model_load(ctx.as_ptr(), dir.as_ptr(), &p, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(unsafe { Model::from_raw(out) })
    }

    /// Take ownership of a model handle (freed on drop). The caller guarantees it is valid and made
    /// from a context that outlives 'c.
    pub unsafe fn from_raw(raw: *mut sys::lt_model) -> Model<'c> {
        Model { raw: NonNull::new(raw).expect("null lt_model"), _ctx: PhantomData }
    }

    pub fn as_ptr(&self) -> *mut sys::lt_model {
        self.raw.as_ptr()
    }

    /// `lt_model_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_model_last_error(self.raw.as_ptr()) })
    }

    fn check(&self, st: sys::lt_status) -> Result<()> {
        check(st, || self.last_error())
    }

    pub fn info(&self) -> Result<ModelInfo> {
        let mut i: sys::lt_model_info = unsafe { std::mem::zeroed() };
        i.size = size_of::<sys::lt_model_info>();
        let st = unsafe { sys::lt_model_get_info(self.raw.as_ptr(), &mut i) };
        check(st, || "lt_model_get_info failed".to_string())?;
        Ok(ModelInfo {
            architecture: fixed_string(&i.architecture),
            dtype: fixed_string(&i.dtype),
            vocab_size: i.vocab_size,
            hidden_size: i.hidden_size,
            intermediate_size: i.intermediate_size,
            n_layers: i.n_layers,
            n_heads: i.n_heads,
            n_kv_heads: i.n_kv_heads,
            head_dim: i.head_dim,
            max_position_embeddings: i.max_position_embeddings,
            rope_theta: i.rope_theta,
            rms_norm_eps: i.rms_norm_eps,
            tied_embeddings: i.tied_embeddings != 0,
            n_params: i.n_params,
            weight_bytes: i.weight_bytes,
        })
    }

    pub fn vocab_size(&self) -> Result<usize> {
        Ok(self.info()?.vocab_size as usize)
    }

    fn adapter_ptr(adapter: Option<&Adapter<'_>>) -> *const sys::lt_adapter {
        adapter.map_or(ptr::null(), |a| a.raw.as_ptr() as *const _)
    }

    /// Write the model (merged with `adapter` when given) as one GGUF v3 file for llama.cpp / Ollama
    /// (`lt_model_export_gguf`), with the tokenizer of the model's directory. `name`: general.name
    /// (None: the directory's name).
    pub fn export_gguf<P: AsRef<Path>>(
        &self,
        adapter: Option<&Adapter<'_>>,
        path: P,
        dtype: GgufDtype,
        name: Option<&str>,
    ) -> Result<()> {
        let path = c_path(path.as_ref())?;
        let name = name.map(|n| c_string(n, "name")).transpose()?;
        let mut p = gguf_params(dtype);
        p.name = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        self.check(unsafe { sys::lt_model_export_gguf(self.raw.as_ptr(), Self::adapter_ptr(adapter), path.as_ptr(), &p) })
    }

    /// Causal-LM loss of a batch: summed token cross-entropy and the number of predicted tokens.
    /// `adapter`: None = the base model.
    pub fn loss(&self, batch: &Batch, adapter: Option<&Adapter<'_>>) -> Result<Loss> {
        let b = batch.raw();
        let (mut s, mut n) = (0f64, 0i64);
        self.check(unsafe { sys::lt_model_loss(self.raw.as_ptr(), Self::adapter_ptr(adapter), &b, &mut s, &mut n) })?;
        Ok(Loss { loss_sum: s, n_tokens: n })
    }

    /// fp32 logits of every position, [B, T, V] row-major.
    pub fn logits(&self, batch: &Batch, adapter: Option<&Adapter<'_>>) -> Result<Vec<f32>> {
        let v = self.vocab_size()?;
        let count = batch.n_rows() * batch.seq_len() * v;
        let mut out = vec![0f32; count];
        let b = batch.raw();
        self.check(unsafe {
            sys::lt_model_logits(self.raw.as_ptr(), Self::adapter_ptr(adapter), &b, out.as_mut_ptr(), count)
        })?;
        Ok(out)
    }

    /// Continue each prompt (with a KV cache); returns the new tokens of each (an EOS ends and is
    /// included in its row). Greedy unless `params.temperature` > 0; deterministic for a seed.
    pub fn generate<P: AsRef<[i32]>>(
        &self,
        prompts: &[P],
        params: &GenerateParams,
        adapter: Option<&Adapter<'_>>,
    ) -> Result<Vec<Vec<i32>>> {
        let n = prompts.len();
        if n == 0 || n > c_int::MAX as usize {
            return Err(Error::new(Status::Argument, "generate: need at least one prompt"));
        }
        let mut flat = Vec::new();
        let mut lens = Vec::with_capacity(n);
        for p in prompts {
            let p = p.as_ref();
            if p.len() > i32::MAX as usize {
                return Err(Error::new(Status::Argument, "generate: prompt too long"));
            }
            flat.extend_from_slice(p);
            lens.push(p.len() as i32);
        }
        let raw = params.to_raw();
        let m = raw.max_new_tokens.max(0) as usize;
        let mut out = vec![0i32; n * m.max(1)];
        let mut out_lens = vec![0i32; n];
        self.check(unsafe {
            sys::lt_generate(
                self.raw.as_ptr(),
                Self::adapter_ptr(adapter),
                flat.as_ptr(),
                lens.as_ptr(),
                n as c_int,
                &raw,
                out.as_mut_ptr(),
                out_lens.as_mut_ptr(),
            )
        })?;
        Ok((0..n).map(|i| out[i * m..i * m + (out_lens[i].max(0) as usize).min(m)].to_vec()).collect())
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        unsafe { sys::lt_model_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("info", &self.info().ok()).finish()
    }
}

// ---- adapter --------------------------------------------------------------------------------------------

/// `lt_adapter`: LoRA weights for one model. Borrows its [`Model`].
pub struct Adapter<'m> {
    raw: NonNull<sys::lt_adapter>,
    _model: PhantomData<&'m Model<'m>>,
}

impl<'m> Adapter<'m> {
    /// A new adapter (A random, B zero: the model's output is unchanged until trained).
    pub fn create(model: &'m Model<'_>, params: &AdapterParams) -> Result<Adapter<'m>> {
        let p = params.to_raw();
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_adapter_create(model.as_ptr(), &p, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Adapter { raw: NonNull::new(out).unwrap(), _model: PhantomData })
    }

    /// Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    pub fn load<P: AsRef<Path>>(model: &'m Model<'_>, dir: P) -> Result<Adapter<'m>> {
        let dir = c_path(dir.as_ref())?;
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_adapter_load(model.as_ptr(), dir.as_ptr(), &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Adapter { raw: NonNull::new(out).unwrap(), _model: PhantomData })
    }

    pub fn as_ptr(&self) -> *mut sys::lt_adapter {
        self.raw.as_ptr()
    }

    /// `lt_adapter_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_adapter_last_error(self.raw.as_ptr()) })
    }

    fn check(&self, st: sys::lt_status) -> Result<()> {
        check(st, || self.last_error())
    }

    /// Save as a PEFT adapter directory (written atomically).
    pub fn save<P: AsRef<Path>>(&self, dir: P) -> Result<()> {
        let dir = c_path(dir.as_ref())?;
        self.check(unsafe { sys::lt_adapter_save(self.raw.as_ptr(), dir.as_ptr()) })
    }

    pub fn params(&self) -> Result<AdapterParams> {
        let mut p: sys::lt_adapter_params = unsafe { std::mem::zeroed() };
        p.size = size_of::<sys::lt_adapter_params>();
        self.check(unsafe { sys::lt_adapter_get_params(self.raw.as_ptr(), &mut p) })?;
        Ok(AdapterParams::from_raw(&p))
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> i64 {
        unsafe { sys::lt_adapter_n_params(self.raw.as_ptr()) }
    }

    /// Write a merged Hugging Face model directory (F32, sharded past max_shard_bytes; 0 = 2 GiB).
    pub fn export_merged<P: AsRef<Path>>(&self, dir: P, max_shard_bytes: i64) -> Result<()> {
        let dir = c_path(dir.as_ref())?;
        self.check(unsafe { sys::lt_adapter_export_merged(self.raw.as_ptr(), dir.as_ptr(), max_shard_bytes) })
    }

    /// Write a LoRA adapter as a GGUF LoRA for llama.cpp's `--lora` (`lt_adapter_export_gguf`); DoRA,
    /// modules_to_save and full fine-tuning are refused (export the merged model instead).
    pub fn export_gguf<P: AsRef<Path>>(&self, path: P, dtype: GgufDtype) -> Result<()> {
        let path = c_path(path.as_ref())?;
        let p = gguf_params(dtype);
        self.check(unsafe { sys::lt_adapter_export_gguf(self.raw.as_ptr(), path.as_ptr(), &p) })
    }

    /// Merge into the model's weights in place (W += s B A). See also [`Adapter::merged`].
    pub fn merge(&self) -> Result<()> {
        self.check(unsafe { sys::lt_adapter_merge(self.raw.as_ptr()) })
    }

    pub fn unmerge(&self) -> Result<()> {
        self.check(unsafe { sys::lt_adapter_unmerge(self.raw.as_ptr()) })
    }

    /// Merge now and unmerge when the guard is dropped.
    pub fn merged(&self) -> Result<Merged<'_, 'm>> {
        self.merge()?;
        Ok(Merged { adapter: self })
    }
}

impl Drop for Adapter<'_> {
    fn drop(&mut self) {
        unsafe { sys::lt_adapter_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Adapter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter").field("params", &self.params().ok()).field("n_params", &self.n_params()).finish()
    }
}

/// A merged adapter; unmerged on drop (see [`Adapter::merged`]).
pub struct Merged<'a, 'm> {
    adapter: &'a Adapter<'m>,
}

impl Merged<'_, '_> {
    /// Unmerge now and report a failure (drop ignores it).
    pub fn unmerge(self) -> Result<()> {
        let r = self.adapter.unmerge();
        std::mem::forget(self);
        r
    }
}

impl Drop for Merged<'_, '_> {
    fn drop(&mut self) {
        let _ = self.adapter.unmerge();
    }
}

// ---- optimizer ------------------------------------------------------------------------------------------

/// `lt_optimizer`: AdamW or SGD state for an adapter, with a learning-rate schedule.
pub struct Optimizer<'a> {
    raw: NonNull<sys::lt_optimizer>,
    _adapter: PhantomData<&'a Adapter<'a>>,
}

impl<'a> Optimizer<'a> {
    pub fn new(adapter: &'a Adapter<'_>, params: &OptimizerParams) -> Result<Optimizer<'a>> {
        let p = params.to_raw();
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_optimizer_create(adapter.as_ptr(), &p, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Optimizer { raw: NonNull::new(out).unwrap(), _adapter: PhantomData })
    }

    pub fn as_ptr(&self) -> *mut sys::lt_optimizer {
        self.raw.as_ptr()
    }

    /// `lt_optimizer_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_optimizer_last_error(self.raw.as_ptr()) })
    }

    /// The learning rate the next update will use.
    pub fn lr(&self) -> f64 {
        unsafe { sys::lt_optimizer_lr(self.raw.as_ptr()) }
    }

    pub fn step_count(&self) -> i64 {
        unsafe { sys::lt_optimizer_step_count(self.raw.as_ptr()) }
    }

    pub fn save<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let path = c_path(path.as_ref())?;
        check(unsafe { sys::lt_optimizer_save(self.raw.as_ptr(), path.as_ptr()) }, || self.last_error())
    }

    pub fn load<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let path = c_path(path.as_ref())?;
        check(unsafe { sys::lt_optimizer_load(self.raw.as_ptr(), path.as_ptr()) }, || self.last_error())
    }
}

impl Drop for Optimizer<'_> {
    fn drop(&mut self) {
        unsafe { sys::lt_optimizer_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Optimizer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer").field("lr", &self.lr()).field("step_count", &self.step_count()).finish()
    }
}

// ---- trainer --------------------------------------------------------------------------------------------

struct Progress {
    f: Box<dyn FnMut(&StepResult) + 'static>,
    panic: Cell<Option<Box<dyn std::any::Any + Send + 'static>>>,
}

unsafe extern "C" fn progress_trampoline(user: *mut c_void, result: *const sys::lt_step_result) {
    let p = &mut *(user as *mut Progress);
    if result.is_null() {
        return;
    }
    let r = StepResult::from_raw(&*result);
    let f = &mut p.f;
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&r))) {
        p.panic.set(Some(e)); // re-raised by Trainer::step once the C call has returned
    }
}

// ---- data-parallel training (docs/DISTRIBUTED.md) -----------------------------------------------------

/// The values a collective works on, in place.
pub enum CommData<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// A host's collectives for [`Comm::from_callbacks`] (Gloo, Ray, oneCCL, ...). Every rank calls them in the
/// same order; `all_reduce` must add in a fixed order and leave the same bits on every rank. An `Err` (or a
/// panic) fails the library's call, naming the collective.
pub trait Collectives {
    /// `data` = the sum over the ranks of every rank's `data`.
    fn all_reduce(&mut self, data: CommData<'_>) -> std::result::Result<(), String>;
    /// `data` of rank `root` copied to every rank.
    fn broadcast(&mut self, data: &mut [u8], root: usize) -> std::result::Result<(), String>;
}

struct CommUser {
    c: Box<dyn Collectives>,
    error: Option<String>,
}

unsafe extern "C" fn comm_all_reduce(user: *mut c_void, buf: *mut c_void, n: usize, dt: sys::lt_comm_dtype) -> c_int {
    let u = &mut *(user as *mut CommUser);
    let data = if dt == sys::LT_COMM_F64 {
        CommData::F64(std::slice::from_raw_parts_mut(buf as *mut f64, n))
    } else {
        CommData::F32(std::slice::from_raw_parts_mut(buf as *mut f32, n))
    };
    match catch_unwind(AssertUnwindSafe(|| u.c.all_reduce(data))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            u.error = Some(e);
            -1
        }
        Err(_) => {
            u.error = Some("all_reduce panicked".to_string());
            -2
        }
    }
}

unsafe extern "C" fn comm_broadcast(user: *mut c_void, buf: *mut c_void, n: usize, root: c_int) -> c_int {
    let u = &mut *(user as *mut CommUser);
    let data = std::slice::from_raw_parts_mut(buf as *mut u8, n);
    match catch_unwind(AssertUnwindSafe(|| u.c.broadcast(data, root as usize))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            u.error = Some(e);
            -1
        }
        Err(_) => {
            u.error = Some("broadcast panicked".to_string());
            -2
        }
    }
}

/// `lt_comm`: the communicator of one data-parallel rank. Give it to [`Trainer::new_with_comm`] on every
/// rank; each rank then steps on its share of each global batch, and the result is one process's with the
/// whole batch.
pub struct Comm {
    raw: NonNull<sys::lt_comm>,
    user: Option<*mut CommUser>,
}

impl Comm {
    /// Over a host's collectives (`reduce_scatter` and `all_gather` are done with `all_reduce`).
    pub fn from_callbacks(rank: usize, world_size: usize, collectives: Box<dyn Collectives>) -> Result<Comm> {
        let user = Box::into_raw(Box::new(CommUser { c: collectives, error: None }));
        let mut cb = unsafe { init_params(sys::lt_comm_callbacks_init) };
        cb.rank = rank as c_int;
        cb.world_size = world_size as c_int;
        cb.user = user as *mut c_void;
        cb.all_reduce = Some(comm_all_reduce);
        cb.broadcast = Some(comm_broadcast);
        let mut out = ptr::null_mut();
        let st = unsafe { sys::lt_comm_create(&cb, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            drop(unsafe { Box::from_raw(user) });
            return Err(thread_error(st));
        }
        Ok(Comm { raw: NonNull::new(out).unwrap(), user: Some(user) })
    }

    /// Over MPI_COMM_WORLD (MPI is initialised if nobody has, and finalized when this is dropped).
    pub fn mpi_world() -> Result<Comm> {
        unsafe { Comm::from_mpi(ptr::null()) }
    }

    /// Over a host's MPI communicator (duplicated by the library).
    ///
    /// # Safety
    /// `mpi_comm` points to a valid `MPI_Comm` of the MPI the library was built with.
    pub unsafe fn from_mpi(mpi_comm: *const c_void) -> Result<Comm> {
        let mut out = ptr::null_mut();
        let st = sys::lt_comm_create_mpi(mpi_comm, &mut out);
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Comm { raw: NonNull::new(out).unwrap(), user: None })
    }

    /// Over a borrowed NCCL communicator and CUDA stream (null: the default stream); GPU memory, so the
    /// trainer's context must use the cuda backend.
    ///
    /// # Safety
    /// `nccl_comm` is a valid `ncclComm_t` and `cuda_stream` a `cudaStream_t` (or null) that outlive this.
    pub unsafe fn from_nccl(nccl_comm: *mut c_void, cuda_stream: *mut c_void) -> Result<Comm> {
        let mut out = ptr::null_mut();
        let st = sys::lt_comm_create_nccl(nccl_comm, cuda_stream, &mut out);
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Comm { raw: NonNull::new(out).unwrap(), user: None })
    }

    /// `lt_comm_available()`: "mpi", "nccl" or "callbacks" compiled in.
    pub fn available(engine: &str) -> bool {
        match CString::new(engine) {
            Ok(e) => unsafe { sys::lt_comm_available(e.as_ptr()) != 0 },
            Err(_) => false,
        }
    }

    pub fn rank(&self) -> usize {
        unsafe { sys::lt_comm_rank(self.raw.as_ptr()) as usize }
    }

    pub fn world_size(&self) -> usize {
        unsafe { sys::lt_comm_world_size(self.raw.as_ptr()) as usize }
    }

    pub fn as_ptr(&self) -> *mut sys::lt_comm {
        self.raw.as_ptr()
    }

    /// `lt_comm_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_comm_last_error(self.raw.as_ptr()) })
    }

    /// The message of the last failed callback of a [`Comm::from_callbacks`].
    pub fn callback_error(&self) -> Option<String> {
        self.user.and_then(|u| unsafe { (*u).error.clone() })
    }

    /// MPI and NCCL: the deadline of one collective (default 600 s).
    pub fn set_timeout(&mut self, seconds: f64) -> Result<()> {
        check(unsafe { sys::lt_comm_set_timeout(self.raw.as_ptr(), seconds) }, || self.last_error())
    }

    /// `values` = their sums over the ranks (collective): for the host's own statistics.
    pub fn all_reduce(&mut self, values: &mut [f64]) -> Result<()> {
        check(unsafe { sys::lt_comm_all_reduce(self.raw.as_ptr(), values.as_mut_ptr(), values.len()) }, || {
            self.last_error()
        })
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        unsafe { sys::lt_comm_free(self.raw.as_ptr()) };
        if let Some(u) = self.user.take() {
            drop(unsafe { Box::from_raw(u) });
        }
    }
}

/// `lt_trainer`: model + adapter + optimizer + objective. Borrows all three (and a [`Comm`]).
pub struct Trainer<'t> {
    raw: NonNull<sys::lt_trainer>,
    progress: Option<*mut Progress>,
    _parts: PhantomData<(&'t Model<'t>, &'t Adapter<'t>, &'t Optimizer<'t>, &'t Comm)>,
}

impl<'t> Trainer<'t> {
    pub fn new(
        model: &'t Model<'_>,
        adapter: &'t Adapter<'_>,
        optimizer: &'t Optimizer<'_>,
        params: &TrainerParams,
    ) -> Result<Trainer<'t>> {
        Trainer::create(model, adapter, optimizer, params, None)
    }

    /// A data-parallel trainer: every rank of `comm` creates one (collective) and steps on its rows.
    pub fn new_with_comm(
        model: &'t Model<'_>,
        adapter: &'t Adapter<'_>,
        optimizer: &'t Optimizer<'_>,
        params: &TrainerParams,
        comm: &'t Comm,
    ) -> Result<Trainer<'t>> {
        Trainer::create(model, adapter, optimizer, params, Some(comm))
    }

    fn create(
        model: &'t Model<'_>,
        adapter: &'t Adapter<'_>,
        optimizer: &'t Optimizer<'_>,
        params: &TrainerParams,
        comm: Option<&'t Comm>,
    ) -> Result<Trainer<'t>> {
        let mut p = params.to_raw();
        if let Some(c) = comm {
            p.comm = c.as_ptr();
        }
        let mut out = ptr::null_mut();
        let st =
            unsafe { sys::lt_trainer_create(model.as_ptr(), adapter.as_ptr(), optimizer.as_ptr(), &p, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(Trainer { raw: NonNull::new(out).unwrap(), progress: None, _parts: PhantomData })
    }

    pub fn as_ptr(&self) -> *mut sys::lt_trainer {
        self.raw.as_ptr()
    }

    /// `lt_trainer_last_error()`
    pub fn last_error(&self) -> String {
        string_from(unsafe { sys::lt_trainer_last_error(self.raw.as_ptr()) })
    }

    fn check(&self, st: sys::lt_status) -> Result<()> {
        check(st, || self.last_error())
    }

    /// One micro-batch: forward, backward, and (every grad_accum calls) clipping + the optimizer update.
    /// On failure (NaN loss, bad ids) the adapter and optimizer are left as they were.
    pub fn step(&mut self, batch: &Batch) -> Result<StepResult> {
        let b = batch.raw();
        let mut r: sys::lt_step_result = unsafe { std::mem::zeroed() };
        r.size = size_of::<sys::lt_step_result>();
        let st = unsafe { sys::lt_trainer_step(self.raw.as_ptr(), &b, &mut r) };
        if let Some(p) = self.progress {
            if let Some(e) = unsafe { (*p).panic.take() } {
                resume_unwind(e);
            }
        }
        self.check(st)?;
        Ok(StepResult::from_raw(&r))
    }

    /// Loss on held-out data with the trainer's adapter (no dropout, no gradients).
    pub fn evaluate(&self, batch: &Batch) -> Result<Loss> {
        let b = batch.raw();
        let (mut s, mut n) = (0f64, 0i64);
        self.check(unsafe { sys::lt_trainer_evaluate(self.raw.as_ptr(), &b, &mut s, &mut n) })?;
        Ok(Loss { loss_sum: s, n_tokens: n })
    }

    /// Adapter (PEFT layout) + optimizer + trainer state, written atomically into `dir`.
    pub fn save_checkpoint<P: AsRef<Path>>(&self, dir: P) -> Result<()> {
        let dir = c_path(dir.as_ref())?;
        self.check(unsafe { sys::lt_trainer_save_checkpoint(self.raw.as_ptr(), dir.as_ptr()) })
    }

    pub fn load_checkpoint<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let dir = c_path(dir.as_ref())?;
        self.check(unsafe { sys::lt_trainer_load_checkpoint(self.raw.as_ptr(), dir.as_ptr()) })
    }

    /// Call `f` after every step (a panic in `f` is re-raised from `step`).
    pub fn set_progress<F: FnMut(&StepResult) + 'static>(&mut self, f: F) {
        let p = Box::into_raw(Box::new(Progress { f: Box::new(f), panic: Cell::new(None) }));
        unsafe { sys::lt_trainer_set_progress(self.raw.as_ptr(), Some(progress_trampoline), p as *mut c_void) };
        self.drop_progress();
        self.progress = Some(p);
    }

    /// Stop calling the progress callback.
    pub fn clear_progress(&mut self) {
        unsafe { sys::lt_trainer_set_progress(self.raw.as_ptr(), None, ptr::null_mut()) };
        self.drop_progress();
    }

    fn drop_progress(&mut self) {
        if let Some(p) = self.progress.take() {
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl Drop for Trainer<'_> {
    fn drop(&mut self) {
        unsafe { sys::lt_trainer_free(self.raw.as_ptr()) };
        self.drop_progress();
    }
}

impl fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trainer").field("raw", &self.raw).finish()
    }
}

// ---- experimental ---------------------------------------------------------------------------------------

/// `include/loratune_experimental.h`: NO stability promise (docs/ABI.md); may change in any release.
pub mod experimental {
    use super::*;

    /// A tiny Llama config.json (vocab 128, hidden 32, 2 layers) for demos and tests.
    pub const TINY_LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2}"#;

    /// A model with random weights from a config.json text: linear and embedding weights
    /// ~ N(0, init_std^2), norm weights 1. Deterministic for a seed.
    pub fn create_random_model<'c>(ctx: &'c Context, config_json: &str, seed: u64, init_std: f32) -> Result<Model<'c>> {
        let cfg = c_string(config_json, "config_json")?;
        let mut out = ptr::null_mut();
        let st = unsafe { sys::experimental::lt_model_create_random(ctx.as_ptr(), cfg.as_ptr(), seed, init_std, &mut out) };
        if st != sys::LT_OK || out.is_null() {
            return Err(thread_error(st));
        }
        Ok(unsafe { Model::from_raw(out) })
    }

    /// Text files (plain name, text) written with the adapter by every later save and merged export, in the
    /// same save as the weights: a model card, a run record. An empty slice removes them.
    pub fn set_save_files(adapter: &Adapter<'_>, files: &[(&str, &str)]) -> Result<()> {
        let mut owned = Vec::with_capacity(files.len() * 2);
        for (name, text) in files {
            owned.push(c_string(name, "file name")?);
            owned.push(c_string(text, "file text")?);
        }
        let names: Vec<*const c_char> = owned.iter().step_by(2).map(|s| s.as_ptr()).collect();
        let texts: Vec<*const c_char> = owned.iter().skip(1).step_by(2).map(|s| s.as_ptr()).collect();
        adapter.check(unsafe {
            sys::experimental::lt_adapter_set_save_files(
                adapter.as_ptr(),
                names.as_ptr(),
                texts.as_ptr(),
                files.len() as c_int,
            )
        })
    }

    /// Write the model's weights as a Hugging Face model directory (f32 safetensors + config.json).
    pub fn save_model<P: AsRef<Path>>(model: &Model<'_>, dir: P) -> Result<()> {
        let dir = c_path(dir.as_ref())?;
        model.check(unsafe { sys::experimental::lt_model_save(model.as_ptr(), dir.as_ptr()) })
    }
}
