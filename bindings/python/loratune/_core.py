"""The Pythonic layer: one class per handle of include/loratune.h.

Ownership follows the C API: a Model belongs to a Context, an Adapter to a Model, an Optimizer to an
Adapter, a Trainer to its Model, Adapter and Optimizer. Each object keeps its parents alive, and a
handle is freed only after every handle made from it (closing a parent closes its children first;
garbage collection in any order never frees a parent under a child).

Threads: libloratune lets one thread use a handle at a time, and every handle made from one context
shares that context's backend. Each call here therefore holds the context's lock (an RLock), so the
objects may be used from several Python threads; work on one context is serialised. Use one context
per thread for parallel work. ctypes releases the GIL during the calls.
"""
import ctypes
import enum
import json
import logging
import os
import threading
import weakref
from ctypes import POINTER, byref, c_double, c_float, c_int32, c_int64
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _lib as L
from ._errors import LoratuneError, Status

try:  # numpy is optional: token batches and logits use it when present
    import numpy as _np
except ImportError:  # pragma: no cover - exercised by the no-numpy test run
    _np = None

PathLike = Union[str, bytes, "os.PathLike[str]"]

#: lt_generate_params.eos_token_id: use config.json's eos_token_id (LT_EOS_FROM_CONFIG).
EOS_FROM_CONFIG = -2
#: Label value that contributes no loss.
IGNORE_INDEX = -100


# ---- enums ------------------------------------------------------------------------------------------

class _NamedEnum(enum.IntEnum):
    @classmethod
    def parse(cls, value):
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            try:
                return cls[key]
            except KeyError:
                raise ValueError(f"{cls.__name__}: unknown name {value!r} (known: "
                                 f"{', '.join(m.name.lower() for m in cls)})") from None
        return cls(value)


class LogLevel(_NamedEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3


class LoraInit(_NamedEnum):
    DEFAULT = 0   # kaiming-uniform A, zero B
    GAUSSIAN = 1
    PISSA = 2     # SVD of the base weight (PEFT init_lora_weights="pissa")
    OLORA = 3     # QR of the base weight (PEFT init_lora_weights="olora")


class OptimizerKind(_NamedEnum):
    ADAMW = 0
    SGD = 1
    ADAMW8BIT = 2  # bitsandbytes' blockwise 8-bit AdamW


class Schedule(_NamedEnum):
    CONSTANT = 0
    LINEAR = 1
    COSINE = 2


class Objective(_NamedEnum):
    SFT = 0


class Target(enum.IntFlag):
    """LT_TARGET_* bits: the projections that get a LoRA adapter."""

    Q = 1 << 0
    K = 1 << 1
    V = 1 << 2
    O = 1 << 3  # noqa: E741
    GATE = 1 << 4
    UP = 1 << 5
    DOWN = 1 << 6
    ALL = 0x7F
    EXPERTS_GATE_UP = 1 << 7  # mixture of experts: every expert's gate|up (PEFT target_parameters)
    EXPERTS_DOWN = 1 << 8
    EXPERTS = (1 << 7) | (1 << 8)

    @classmethod
    def parse(cls, value) -> "Target":
        """Bits, or "all", or projection names ("q_proj,v_proj" or ["q_proj", "v_proj"])."""
        if isinstance(value, int):
            return cls(value)
        names = value.split(",") if isinstance(value, str) else list(value)
        out = cls(0)
        for n in names:
            n = n.strip().lower()
            if n in ("all", "all-linear", "all_linear"):
                out |= cls.ALL
                continue
            key = n[:-5] if n.endswith("_proj") else n
            try:
                out |= cls[key.upper()]
            except KeyError:
                raise ValueError(f"unknown target module {n!r} (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                 "up_proj, down_proj, all)") from None
        return out


# ---- module-level functions ---------------------------------------------------------------------------

def library_version() -> str:
    """The library's lt_version_string() ("MAJOR.MINOR.PATCH")."""
    return L.decode(L.lib().lt_version_string())


def library_version_number() -> int:
    """The library's lt_version_number() (MAJOR*10000 + MINOR*100 + PATCH)."""
    return int(L.lib().lt_version_number())


def library_path() -> str:
    """Path of the loaded shared library."""
    return L.path()


def status_string(status: int) -> str:
    """lt_status_string(): "LT_ERR_FORMAT: malformed file"."""
    return L.decode(L.lib().lt_status_string(int(status)))


def backend_available(name: str) -> bool:
    """True if a backend of that name ("cpu", "cuda", "auto") is compiled in and usable here."""
    return bool(L.lib().lt_backend_available(name.encode()))


def _thread_error(status: int) -> LoratuneError:
    return LoratuneError(status, L.decode(L.lib().lt_last_error()))


def _path(p: PathLike) -> bytes:
    return os.fsencode(p)


# ---- results ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossResult:
    """A summed token loss and the number of predicted tokens (lt_model_loss, lt_trainer_evaluate)."""

    loss_sum: float
    n_tokens: int

    @property
    def mean(self) -> float:
        """loss_sum / n_tokens (nan when no token is predicted)."""
        return self.loss_sum / self.n_tokens if self.n_tokens else float("nan")


@dataclass(frozen=True)
class StepResult:
    """lt_step_result of one Trainer.step()."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    tokens_per_s: float
    step: int
    updated: bool

    @classmethod
    def _from_c(cls, r: L.lt_step_result) -> "StepResult":
        return cls(loss=r.loss, grad_norm=r.grad_norm, lr=r.lr, tokens=int(r.tokens), tokens_per_s=r.tokens_per_s,
                   step=int(r.step), updated=bool(r.updated))


@dataclass(frozen=True)
class ModelInfo:
    """lt_model_info."""

    architecture: str
    dtype: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tied_embeddings: bool
    n_params: int
    weight_bytes: int


@dataclass(frozen=True)
class AdapterParams:
    """lt_adapter_params of an adapter."""

    rank: int
    alpha: float
    dropout: float
    targets: Target
    use_rslora: bool
    init: LoraInit
    seed: int


# ---- token batches -------------------------------------------------------------------------------------

def _int32_matrix(x, what: str) -> Tuple[Any, int, int, Any]:
    """(pointer, rows, cols, keep-alive) for a 1-D or 2-D array-like of token ids."""
    if _np is not None and (isinstance(x, _np.ndarray) or hasattr(x, "__array__")):
        arr = _np.asarray(x)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise ValueError(f"{what}: expected a 1-D or 2-D array, got {arr.ndim}-D")
        if arr.dtype != _np.int32:
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{what}: expected integer token ids, got dtype {arr.dtype}")
            if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                raise OverflowError(f"{what}: a value does not fit in int32")
        arr = _np.ascontiguousarray(arr, dtype=_np.int32)
        return arr.ctypes.data_as(POINTER(c_int32)), arr.shape[0], arr.shape[1], arr
    rows = list(x)
    if rows and not isinstance(rows[0], (list, tuple)) and not hasattr(rows[0], "__len__"):
        rows = [rows]
    rows = [list(r) for r in rows]
    T = len(rows[0]) if rows else 0
    for i, r in enumerate(rows):
        if len(r) != T:
            raise ValueError(f"{what}: row {i} has {len(r)} tokens, row 0 has {T} (pad the rows, e.g. Batch.from_rows)")
    flat = [int(v) for r in rows for v in r]
    for v in flat:
        if not -(2**31) <= v < 2**31:
            raise OverflowError(f"{what}: {v} does not fit in int32")
    buf = (c_int32 * len(flat))(*flat)
    return ctypes.cast(buf, POINTER(c_int32)), len(rows), T, buf


class Batch:
    """B rows of T token ids (lt_batch): input_ids, optional labels (-100 = no loss; default: the ids),
    optional position_ids (packed rows restart at 0).

    Each argument may be a list of rows, a single row, or (with numpy) a 1-D/2-D integer array; numpy
    int32 C-contiguous arrays are passed without a copy. The buffers stay alive as long as the Batch.
    """

    def __init__(self, input_ids, labels=None, position_ids=None):
        ptr, B, T, keep = _int32_matrix(input_ids, "input_ids")
        self._keep = [keep]
        c = L.init_struct(L.lib().lt_batch_init, L.lt_batch)
        c.n_rows, c.seq_len, c.input_ids = B, T, ptr
        for name, value in (("labels", labels), ("position_ids", position_ids)):
            if value is None:
                continue
            p, b, t, k = _int32_matrix(value, name)
            if (b, t) != (B, T):
                raise ValueError(f"{name} has shape ({b}, {t}), input_ids ({B}, {T})")
            setattr(c, name, p)
            self._keep.append(k)
        self._c = c

    @property
    def n_rows(self) -> int:
        return int(self._c.n_rows)

    @property
    def seq_len(self) -> int:
        return int(self._c.seq_len)

    @classmethod
    def from_rows(cls, rows: Iterable[Union[Sequence[int], Mapping[str, Sequence[int]]]],
                  seq_len: Optional[int] = None, pad_id: int = 0) -> "Batch":
        """Pad variable-length rows into one batch. A row is a list of ids or a dict with "input_ids"
        and optionally "labels" (as in the JSONL files of `loratune train`). Rows are truncated to
        seq_len (default: the longest row); padding gets label -100."""
        ids_rows, lab_rows = [], []
        for r in rows:
            if isinstance(r, Mapping):
                ids = list(r["input_ids"])
                lab = list(r["labels"]) if r.get("labels") is not None else list(ids)
            else:
                ids = list(r)
                lab = list(ids)
            if len(lab) != len(ids):
                raise ValueError(f"a row has {len(ids)} input_ids and {len(lab)} labels")
            ids_rows.append(ids)
            lab_rows.append(lab)
        if not ids_rows:
            raise ValueError("Batch.from_rows: no rows")
        T = seq_len or max(len(r) for r in ids_rows)
        pad = lambda r, v: r[:T] + [v] * (T - len(r[:T]))  # noqa: E731
        return cls([pad(r, pad_id) for r in ids_rows], [pad(r, IGNORE_INDEX) for r in lab_rows])


BatchLike = Union[Batch, Any]


def _batch(batch: BatchLike, labels=None, position_ids=None) -> Batch:
    if isinstance(batch, Batch):
        if labels is not None or position_ids is not None:
            raise TypeError("labels/position_ids go into the Batch, not next to it")
        return batch
    return Batch(batch, labels, position_ids)


def read_jsonl(path: PathLike) -> List[dict]:
    """Rows of a pre-tokenized JSONL file ({"input_ids": [...], "labels": [...]} per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- handles -------------------------------------------------------------------------------------------

class _Handle:
    """An owned C handle. Subclasses set _free / _last_error (names of the C functions)."""

    _free = ""
    _last_error = ""

    def __init__(self, ptr, lock: threading.RLock, parents: Sequence["_Handle"] = ()):
        self._ptr = ptr
        self._lock = lock
        self._parents = tuple(parents)
        self._children = weakref.WeakSet()  # live handles made from this one (closed first)
        self._n_children = 0                # handles made from this one and not yet freed
        self._closing = False
        for p in self._parents:
            p._children.add(self)
            p._n_children += 1

    # -- lifetime
    @property
    def closed(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Free the handle (and first every handle made from it). Idempotent."""
        if self._closing:
            return
        self._closing = True
        for child in list(self._children):
            child.close()
        self._release()

    def _release(self) -> None:
        if self._n_children > 0 or self._ptr is None:
            return  # freed when the last child is (garbage collection may finalize a parent first)
        ptr, self._ptr = self._ptr, None
        with self._lock:
            getattr(L.lib(), self._free)(ptr)
        parents, self._parents = self._parents, ()
        for p in parents:
            p._n_children -= 1
            if p._closing:
                p._release()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls
    @property
    def _h(self):
        if self._closing or self._ptr is None:
            raise LoratuneError(Status.ERR_STATE, f"{type(self).__name__} is closed")
        return self._ptr

    def _check(self, status: int) -> None:
        if status != 0:
            raise LoratuneError(status, self.last_error)

    @property
    def last_error(self) -> str:
        """The handle's message of its last failed call (lt_*_last_error)."""
        if self._ptr is None:
            return ""
        return L.decode(getattr(L.lib(), self._last_error)(self._ptr))


LogFn = Callable[[LogLevel, str], None]


class Context(_Handle):
    """lt_context: a backend ("cpu", "cuda", "auto"), its threads and an optional log callback.

    log: None (silent), a callable(level, message), or True to send the messages to the
    `logging` logger "loratune"."""

    _free = "lt_context_free"
    _last_error = "lt_context_last_error"

    def __init__(self, backend: Optional[str] = None, n_threads: Optional[int] = None,
                 log: Union[None, bool, LogFn] = None, log_level: Union[LogLevel, str, None] = None):
        lib = L.lib()
        p = L.init_struct(lib.lt_context_params_init, L.lt_context_params)
        if backend is not None:
            p.backend = backend.encode()
        if n_threads is not None:
            p.n_threads = int(n_threads)
        if log_level is not None:
            p.log_level = LogLevel.parse(log_level)
        self._log_cb = None
        if log:
            fn = _python_logger if log is True else log

            def trampoline(user, level, message):
                try:
                    fn(LogLevel.parse(level), L.decode(message))
                except Exception:  # an exception must not cross into C
                    logging.getLogger("loratune").exception("loratune log callback failed")

            self._log_cb = L.lt_log_fn(trampoline)
            p.log_fn = self._log_cb
        out = L.lt_context_p()
        st = lib.lt_context_create(byref(p), byref(out))
        if st != 0:
            raise _thread_error(st)
        super().__init__(out, threading.RLock())

    @property
    def backend(self) -> str:
        """The backend in use ("cpu" or "cuda")."""
        with self._lock:
            return L.decode(L.lib().lt_context_backend(self._h))

    def set_threads(self, n_threads: int) -> None:
        """CPU threads (0 = all online cores)."""
        with self._lock:
            self._check(L.lib().lt_context_set_threads(self._h, int(n_threads)))

    def load_model(self, path: PathLike, use_mmap: Optional[bool] = None) -> "Model":
        """Model.load(self, path)."""
        return Model.load(self, path, use_mmap=use_mmap)

    def __repr__(self) -> str:
        return f"<loratune.Context backend={self.backend!r}>" if not self.closed else "<loratune.Context closed>"


def _python_logger(level: LogLevel, message: str) -> None:
    py = {LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO, LogLevel.WARN: logging.WARNING,
          LogLevel.ERROR: logging.ERROR}.get(level, logging.INFO)
    logging.getLogger("loratune").log(py, "%s", message)


def _gguf_params(dtype: str, tokenizer, name: Optional[str], allow_approximate: bool = False):
    types = {"f32": L.LT_GGUF_DTYPE_F32, "f16": L.LT_GGUF_DTYPE_F16, "bf16": L.LT_GGUF_DTYPE_BF16,
             "q8_0": L.LT_GGUF_DTYPE_Q8_0}
    if dtype not in types:
        raise LoratuneError(Status.ERR_ARGUMENT, f"dtype must be one of {sorted(types)}, not {dtype!r}")
    p = L.init_struct(L.lib().lt_gguf_params_init, L.lt_gguf_params)
    p.dtype = types[dtype]
    if tokenizer is not None:
        p.tokenizer = tokenizer._h
    if name is not None:
        p.name = name.encode()
    p.allow_approximate = int(allow_approximate)
    return p


class Model(_Handle):
    """lt_model: a base model (read-only after load). Create with Model.load(ctx, dir)."""

    _free = "lt_model_free"
    _last_error = "lt_model_last_error"

    def __init__(self, ptr, ctx: Context):
        super().__init__(ptr, ctx._lock, (ctx,))
        self.context = ctx
        self._info = None  # type: Optional[ModelInfo]

    @classmethod
    def load(cls, ctx: Context, path: PathLike, use_mmap: Optional[bool] = None) -> "Model":
        """Load a Hugging Face model directory (config.json + safetensors, sharded or not)."""
        lib = L.lib()
        p = L.init_struct(lib.lt_model_params_init, L.lt_model_params)
        if use_mmap is not None:
            p.use_mmap = int(bool(use_mmap))
        out = L.lt_model_p()
        with ctx._lock:
            st = lib.lt_model_load(ctx._h, _path(path), byref(p), byref(out))
            if st != 0:
                raise _thread_error(st)
        return cls(out, ctx)

    @property
    def info(self) -> ModelInfo:
        """lt_model_get_info()."""
        if self._info is None:
            c = L.lt_model_info()
            c.size = ctypes.sizeof(c)
            with self._lock:
                st = L.lib().lt_model_get_info(self._h, byref(c))
            if st != 0:
                raise LoratuneError(st, "lt_model_get_info failed")
            self._info = ModelInfo(
                architecture=L.decode(c.architecture), dtype=L.decode(c.dtype), vocab_size=c.vocab_size,
                hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, n_layers=c.n_layers,
                n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
                max_position_embeddings=c.max_position_embeddings, rope_theta=c.rope_theta,
                rms_norm_eps=c.rms_norm_eps, tied_embeddings=bool(c.tied_embeddings), n_params=c.n_params,
                weight_bytes=c.weight_bytes)
        return self._info

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    def export_gguf(self, path: PathLike, adapter: Optional["Adapter"] = None, dtype: str = "f16",
                    tokenizer: Optional["Tokenizer"] = None, name: Optional[str] = None,
                    allow_approximate: bool = False) -> None:
        """Write the model (merged with adapter when given) as a GGUF file for llama.cpp / Ollama
        (lt_model_export_gguf); dtype f32, f16, bf16 or q8_0; tokenizer None: the model directory's;
        allow_approximate: also a model llama.cpp computes approximately (gpt-oss's YaRN, docs/API.md)."""
        p = _gguf_params(dtype, tokenizer, name, allow_approximate)
        with self._lock:
            self._check(L.lib().lt_model_export_gguf(self._h, self._adapter(adapter), _path(path), byref(p)))

    def _adapter(self, adapter: Optional["Adapter"]):
        if adapter is None:
            return None
        if adapter.model is not self:
            raise LoratuneError(Status.ERR_ARGUMENT, "the adapter belongs to another model")
        return adapter._h

    def loss(self, batch: BatchLike, labels=None, position_ids=None,
             adapter: Optional["Adapter"] = None) -> LossResult:
        """Causal-LM loss: the summed token cross-entropy and the number of predicted tokens."""
        b = _batch(batch, labels, position_ids)
        s, n = c_double(), c_int64()
        with self._lock:
            self._check(L.lib().lt_model_loss(self._h, self._adapter(adapter), byref(b._c), byref(s), byref(n)))
        return LossResult(s.value, n.value)

    def logits(self, batch: BatchLike, position_ids=None, adapter: Optional["Adapter"] = None):
        """fp32 logits of every position, shape (B, T, V): a numpy array when numpy is installed,
        else nested lists."""
        b = _batch(batch, None, position_ids)
        V = self.vocab_size
        count = b.n_rows * b.seq_len * V
        if _np is not None:
            out = _np.empty((b.n_rows, b.seq_len, V), dtype=_np.float32)
            ptr = out.ctypes.data_as(POINTER(c_float))
        else:
            out = (c_float * count)()
            ptr = ctypes.cast(out, POINTER(c_float))
        with self._lock:
            self._check(L.lib().lt_model_logits(self._h, self._adapter(adapter), byref(b._c), ptr, count))
        if _np is not None:
            return out
        flat = list(out)
        return [[flat[(i * b.seq_len + t) * V:(i * b.seq_len + t + 1) * V] for t in range(b.seq_len)]
                for i in range(b.n_rows)]

    def generate(self, prompts, max_new_tokens: Optional[int] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 eos_token_id: Optional[int] = None, adapter: Optional["Adapter"] = None):
        """Continue each prompt (greedy by default; temperature/top-k/top-p sampling, deterministic per
        seed). `prompts` is one list of ids (returns one list) or a list of them (returns a list of lists).
        eos_token_id: None = from config.json, -1 = never stop early. An EOS token ends its row and is
        included."""
        single = False
        if _np is not None and isinstance(prompts, _np.ndarray):
            prompts = prompts.tolist()
        prompts = list(prompts)
        if prompts and not hasattr(prompts[0], "__len__"):
            prompts, single = [prompts], True
        lib = L.lib()
        p = L.init_struct(lib.lt_generate_params_init, L.lt_generate_params)
        for name, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_k", top_k),
                            ("top_p", top_p), ("seed", seed), ("eos_token_id", eos_token_id)):
            if value is not None:
                setattr(p, name, value)
        n = len(prompts)
        flat = [int(t) for pr in prompts for t in pr]
        lens = (c_int32 * n)(*[len(pr) for pr in prompts])
        ids = (c_int32 * max(1, len(flat)))(*flat)
        out = (c_int32 * (n * max(1, p.max_new_tokens)))()
        out_lens = (c_int32 * n)()
        with self._lock:
            self._check(lib.lt_generate(self._h, self._adapter(adapter), ids, lens, n, byref(p), out, out_lens))
        M = p.max_new_tokens
        rows = [list(out[i * M:i * M + out_lens[i]]) for i in range(n)]
        return rows[0] if single else rows

    def create_adapter(self, **kwargs) -> "Adapter":
        """Adapter.create(self, **kwargs)."""
        return Adapter.create(self, **kwargs)

    def load_adapter(self, path: PathLike) -> "Adapter":
        """Adapter.load(self, path)."""
        return Adapter.load(self, path)

    def __repr__(self) -> str:
        if self.closed:
            return "<loratune.Model closed>"
        i = self.info
        return f"<loratune.Model {i.architecture} {i.n_layers} layers, {i.n_params} parameters>"


class Adapter(_Handle):
    """lt_adapter: LoRA weights for one model. Adapter.create(model, rank=...) or Adapter.load(model, dir)."""

    _free = "lt_adapter_free"
    _last_error = "lt_adapter_last_error"

    def __init__(self, ptr, model: Model):
        super().__init__(ptr, model._lock, (model,))
        self.model = model

    @classmethod
    def create(cls, model: Model, rank: Optional[int] = None, alpha: Optional[float] = None,
               dropout: Optional[float] = None, targets: Union[None, int, str, Iterable[str]] = None,
               use_rslora: Optional[bool] = None, init: Union[None, LoraInit, str] = None,
               seed: Optional[int] = None, full_finetune: bool = False,
               modules_to_save: Iterable[str] = ()) -> "Adapter":
        """A new adapter; arguments left at None take the library's defaults (lt_adapter_params_init).
        full_finetune=True trains every base weight (a Hugging Face model directory on save);
        modules_to_save: trainable copies of "embed_tokens", "lm_head" and/or "gate" (the routers of an MoE model;
        "router", gpt-oss's name for it, is the same) next to the LoRA (PEFT)."""
        lib = L.lib()
        p = L.init_struct(lib.lt_adapter_params_init, L.lt_adapter_params)
        if rank is not None:
            p.rank = int(rank)
        if alpha is not None:
            p.alpha = float(alpha)
        if dropout is not None:
            p.dropout = float(dropout)
        if targets is not None:
            p.targets = int(Target.parse(targets))
        if use_rslora is not None:
            p.use_rslora = int(bool(use_rslora))
        if init is not None:
            p.init = LoraInit.parse(init)
        if seed is not None:
            p.seed = int(seed)
        p.full_finetune = int(bool(full_finetune))
        # LT_SAVE_EMBED_TOKENS, LT_SAVE_LM_HEAD, LT_SAVE_ROUTER (PEFT's module name: gate; gpt-oss: router)
        bits = {"embed_tokens": 1, "lm_head": 2, "gate": 4, "router": 4}
        for name in modules_to_save:
            if name not in bits:
                raise ValueError(f"modules_to_save: {name!r} is not one of {sorted(bits)}")
            p.modules_to_save |= bits[name]
        out = L.lt_adapter_p()
        with model._lock:
            st = lib.lt_adapter_create(model._h, byref(p), byref(out))
            if st != 0:
                raise _thread_error(st)
        return cls(out, model)

    @classmethod
    def load(cls, model: Model, path: PathLike) -> "Adapter":
        """Load a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
        out = L.lt_adapter_p()
        with model._lock:
            st = L.lib().lt_adapter_load(model._h, _path(path), byref(out))
            if st != 0:
                raise _thread_error(st)
        return cls(out, model)

    def save(self, path: PathLike) -> None:
        """Save as a PEFT adapter directory, one directory replaced atomically (lt_adapter_save), with the
        files attached by loratune.experimental.set_save_files (a model card, a run record)."""
        with self._lock:
            self._check(L.lib().lt_adapter_save(self._h, _path(path)))

    @property
    def params(self) -> AdapterParams:
        c = L.lt_adapter_params()
        c.size = ctypes.sizeof(c)
        with self._lock:
            self._check(L.lib().lt_adapter_get_params(self._h, byref(c)))
        return AdapterParams(rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=Target(c.targets),
                             use_rslora=bool(c.use_rslora), init=LoraInit(c.init), seed=c.seed)

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        with self._lock:
            return int(L.lib().lt_adapter_n_params(self._h))

    def export_merged(self, path: PathLike, max_shard_bytes: int = 0) -> None:
        """Write a merged Hugging Face model directory (F32; shards past max_shard_bytes, 0 = 2 GiB)."""
        with self._lock:
            self._check(L.lib().lt_adapter_export_merged(self._h, _path(path), int(max_shard_bytes)))

    def export_gguf(self, path: PathLike, dtype: str = "f32") -> None:
        """Write the adapter as a GGUF LoRA for llama.cpp (lt_adapter_export_gguf); dtype f32, f16, bf16 or q8_0."""
        p = _gguf_params(dtype, None, None)
        with self._lock:
            self._check(L.lib().lt_adapter_export_gguf(self._h, _path(path), byref(p)))

    def merge(self) -> None:
        """Merge into the model's weights in place (W += s B A). Undo with unmerge()."""
        with self._lock:
            self._check(L.lib().lt_adapter_merge(self._h))

    def unmerge(self) -> None:
        with self._lock:
            self._check(L.lib().lt_adapter_unmerge(self._h))

    def merged(self) -> "_Merged":
        """Context manager: `with adapter.merged(): model.loss(...)` merges, then unmerges."""
        return _Merged(self)

    def __repr__(self) -> str:
        if self.closed:
            return "<loratune.Adapter closed>"
        p = self.params
        return f"<loratune.Adapter rank={p.rank} alpha={p.alpha:g} targets={p.targets!r} n_params={self.n_params}>"


class _Merged:
    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    def __enter__(self) -> Adapter:
        self.adapter.merge()
        return self.adapter

    def __exit__(self, *exc) -> None:
        self.adapter.unmerge()


class Optimizer(_Handle):
    """lt_optimizer: AdamW or SGD state for an adapter, with a learning-rate schedule.
    Arguments left at None take the library's defaults (lt_optimizer_params_init)."""

    _free = "lt_optimizer_free"
    _last_error = "lt_optimizer_last_error"

    def __init__(self, adapter: Adapter, kind: Union[None, OptimizerKind, str] = None, lr: Optional[float] = None,
                 beta1: Optional[float] = None, beta2: Optional[float] = None, eps: Optional[float] = None,
                 weight_decay: Optional[float] = None, momentum: Optional[float] = None,
                 schedule: Union[None, Schedule, str] = None, warmup_steps: Optional[int] = None,
                 warmup_ratio: Optional[float] = None, total_steps: Optional[int] = None,
                 max_grad_norm: Optional[float] = None):
        lib = L.lib()
        p = L.init_struct(lib.lt_optimizer_params_init, L.lt_optimizer_params)
        if kind is not None:
            p.kind = OptimizerKind.parse(kind)
        if schedule is not None:
            p.schedule = Schedule.parse(schedule)
        for name, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                            ("weight_decay", weight_decay), ("momentum", momentum), ("warmup_ratio", warmup_ratio),
                            ("max_grad_norm", max_grad_norm)):
            if value is not None:
                setattr(p, name, float(value))
        if warmup_steps is not None:
            p.warmup_steps = int(warmup_steps)
        if total_steps is not None:
            p.total_steps = int(total_steps)
        out = L.lt_optimizer_p()
        with adapter._lock:
            st = lib.lt_optimizer_create(adapter._h, byref(p), byref(out))
            if st != 0:
                raise _thread_error(st)
        super().__init__(out, adapter._lock, (adapter,))
        self.adapter = adapter

    @property
    def lr(self) -> float:
        """Learning rate the next update will use."""
        with self._lock:
            return float(L.lib().lt_optimizer_lr(self._h))

    @property
    def step_count(self) -> int:
        with self._lock:
            return int(L.lib().lt_optimizer_step_count(self._h))

    def save(self, path: PathLike) -> None:
        with self._lock:
            self._check(L.lib().lt_optimizer_save(self._h, _path(path)))

    def load(self, path: PathLike) -> None:
        with self._lock:
            self._check(L.lib().lt_optimizer_load(self._h, _path(path)))


class Trainer(_Handle):
    """lt_trainer: model + adapter + optimizer + objective. step() runs one micro-batch.
    Arguments left at None take the library's defaults (lt_trainer_params_init).
    comm: a loratune.Comm to train data-parallel (each rank steps on its rows of the global batch);
    zero_stage 1 shards the optimizer state over the ranks (ZeRO-1)."""

    _free = "lt_trainer_free"
    _last_error = "lt_trainer_last_error"

    def __init__(self, model: Model, adapter: Adapter, optimizer: Optimizer, grad_accum: Optional[int] = None,
                 gradient_checkpointing: Optional[bool] = None, seed: Optional[int] = None,
                 objective: Union[None, Objective, str] = None, comm: Optional["_Handle"] = None,
                 zero_stage: Optional[int] = None):
        lib = L.lib()
        p = L.init_struct(lib.lt_trainer_params_init, L.lt_trainer_params)
        if comm is not None:
            p.comm = comm._h
        if zero_stage is not None:
            p.zero_stage = int(zero_stage)
        if objective is not None:
            p.objective = Objective.parse(objective)
        if grad_accum is not None:
            p.grad_accum = int(grad_accum)
        if gradient_checkpointing is not None:
            p.gradient_checkpointing = int(bool(gradient_checkpointing))
        if seed is not None:
            p.seed = int(seed)
        if adapter.model is not model or optimizer.adapter is not adapter:
            raise LoratuneError(Status.ERR_ARGUMENT, "Trainer: the adapter must belong to the model and the "
                                "optimizer to the adapter")
        out = L.lt_trainer_p()
        with model._lock:
            st = lib.lt_trainer_create(model._h, adapter._h, optimizer._h, byref(p), byref(out))
            if st != 0:
                raise _thread_error(st)
        super().__init__(out, model._lock, (model, adapter, optimizer) + ((comm,) if comm is not None else ()))
        self.model, self.adapter, self.optimizer, self.comm = model, adapter, optimizer, comm
        self._progress_cb = None

    def step(self, batch: BatchLike, labels=None, position_ids=None) -> StepResult:
        """One micro-batch: forward, backward and (every grad_accum calls) the optimizer update."""
        b = _batch(batch, labels, position_ids)
        r = L.lt_step_result()
        r.size = ctypes.sizeof(r)
        with self._lock:
            self._check(L.lib().lt_trainer_step(self._h, byref(b._c), byref(r)))
        return StepResult._from_c(r)

    def evaluate(self, batch: BatchLike, labels=None, position_ids=None) -> LossResult:
        """Loss on held-out data with the trainer's adapter (no dropout, no gradients)."""
        b = _batch(batch, labels, position_ids)
        s, n = c_double(), c_int64()
        with self._lock:
            self._check(L.lib().lt_trainer_evaluate(self._h, byref(b._c), byref(s), byref(n)))
        return LossResult(s.value, n.value)

    def save_checkpoint(self, path: PathLike) -> None:
        """Adapter (PEFT layout) + optimizer + trainer state, written atomically into path."""
        with self._lock:
            self._check(L.lib().lt_trainer_save_checkpoint(self._h, _path(path)))

    def load_checkpoint(self, path: PathLike) -> None:
        with self._lock:
            self._check(L.lib().lt_trainer_load_checkpoint(self._h, _path(path)))

    def set_progress(self, fn: Optional[Callable[[StepResult], None]]) -> None:
        """Call fn(StepResult) after every step (None: stop). Exceptions in fn are logged, not raised."""
        if fn is None:
            cb = L.lt_progress_fn()
        else:
            def trampoline(user, result):
                try:
                    fn(StepResult._from_c(result.contents))
                except Exception:
                    logging.getLogger("loratune").exception("loratune progress callback failed")
            cb = L.lt_progress_fn(trampoline)
        with self._lock:
            L.lib().lt_trainer_set_progress(self._h, cb, None)
        self._progress_cb = cb if fn is not None else None


class Tokenizer(_Handle):
    """A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) with chat templates and the
    dataset-row preparation of libloratune (lt_tokenizer_*)."""

    _free = "lt_tokenizer_free"
    _last_error = "lt_tokenizer_last_error"

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        out = L.lt_tokenizer_p()
        st = L.lib().lt_tokenizer_load(_path(path), byref(out))
        if st != 0:
            raise _thread_error(st)
        return cls(out, threading.RLock())

    @property
    def vocab_size(self) -> int:
        return int(L.lib().lt_tokenizer_vocab_size(self._h))

    def encode(self, text: str, add_special: bool = False) -> List[int]:
        data = text.encode("utf-8")
        with self._lock:
            n = ctypes.c_size_t()
            self._check(L.lib().lt_tokenizer_encode(self._h, data, len(data), int(add_special), None, 0, byref(n)))
            ids = (c_int32 * max(1, n.value))()
            self._check(L.lib().lt_tokenizer_encode(self._h, data, len(data), int(add_special), ids, n.value, byref(n)))
            return list(ids[:n.value])

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        arr = (c_int32 * max(1, len(ids)))(*ids)
        with self._lock:
            n = ctypes.c_size_t()
            self._check(L.lib().lt_tokenizer_decode(self._h, arr, len(ids), int(skip_special), None, 0, byref(n)))
            buf = ctypes.create_string_buffer(n.value + 1)
            self._check(L.lib().lt_tokenizer_decode(self._h, arr, len(ids), int(skip_special), buf, n.value + 1, byref(n)))
            return buf.raw[:n.value].decode("utf-8")

    def token_to_id(self, token: str) -> int:
        return int(L.lib().lt_tokenizer_token_to_id(self._h, token.encode("utf-8")))

    def id_to_token(self, id: int) -> Optional[str]:
        s = L.lib().lt_tokenizer_id_to_token(self._h, int(id))
        return None if s is None else s.decode("utf-8")

    def special_id(self, which: str) -> int:
        """'bos', 'eos', 'pad' or 'unk': the id named in tokenizer_config.json, or -1."""
        return int(L.lib().lt_tokenizer_special_id(self._h, ["bos", "eos", "pad", "unk"].index(which)))

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        text, n = ctypes.c_void_p(), ctypes.c_size_t()
        with self._lock:
            self._check(L.lib().lt_tokenizer_render_chat(self._h, json.dumps(list(messages)).encode("utf-8"),
                                                         int(add_generation_prompt), byref(text), byref(n)))
            return ctypes.string_at(text, n.value).decode("utf-8")

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> Tuple[List[int], List[int]]:
        """(ids, assistant mask) of the rendered conversation."""
        js = json.dumps(list(messages)).encode("utf-8")
        with self._lock:
            n = ctypes.c_size_t()
            self._check(L.lib().lt_tokenizer_encode_chat(self._h, js, int(add_generation_prompt), None, None, 0, byref(n)))
            ids, mask = (c_int32 * max(1, n.value))(), (c_int32 * max(1, n.value))()
            self._check(L.lib().lt_tokenizer_encode_chat(self._h, js, int(add_generation_prompt), ids, mask, n.value, byref(n)))
            return list(ids[:n.value]), list(mask[:n.value])

    def encode_row(self, row: Mapping[str, Any], max_len: int = 0, completion_only: bool = True,
                   assistant_only: bool = True, add_special: bool = True, add_eos: bool = True) -> Tuple[List[int], List[int]]:
        """(input ids, labels) of one dataset row ({"text"}, {"prompt","completion"}, {"messages"}, ...)."""
        p = L.lt_text_params()
        L.lib().lt_text_params_init(byref(p), ctypes.sizeof(p))
        p.max_len, p.completion_only, p.assistant_only = int(max_len), int(completion_only), int(assistant_only)
        p.add_special, p.add_eos = int(add_special), int(add_eos)
        js = json.dumps(dict(row)).encode("utf-8")
        with self._lock:
            n = ctypes.c_size_t()
            self._check(L.lib().lt_tokenizer_encode_row(self._h, js, byref(p), None, None, 0, byref(n)))
            ids, labels = (c_int32 * max(1, n.value))(), (c_int32 * max(1, n.value))()
            self._check(L.lib().lt_tokenizer_encode_row(self._h, js, byref(p), ids, labels, n.value, byref(n)))
            return list(ids[:n.value]), list(labels[:n.value])


def pack_sequences(rows: Sequence[Tuple[Sequence[int], Sequence[int]]], seq_len: int, pad_id: int = 0
                   ) -> Tuple[List[List[int]], List[List[int]], List[List[int]]]:
    """Pack (ids, labels) rows into rows of seq_len tokens (lt_pack_sequences): (ids, labels, position_ids)."""
    lens = [len(r[0]) for r in rows]
    flat_i = [int(x) for r in rows for x in r[0]]
    flat_l = [int(x) for r in rows for x in r[1]]
    n = len(rows)
    ai, al, an = (c_int32 * max(1, len(flat_i)))(*flat_i), (c_int32 * max(1, len(flat_l)))(*flat_l), (c_int32 * max(1, n))(*lens)
    count = c_int32()
    st = L.lib().lt_pack_sequences(ai, al, an, n, int(seq_len), int(pad_id), None, None, None, 0, byref(count))
    if st != 0:
        raise _thread_error(st)
    size = max(1, count.value * int(seq_len))
    oi, ol, op = (c_int32 * size)(), (c_int32 * size)(), (c_int32 * size)()
    st = L.lib().lt_pack_sequences(ai, al, an, n, int(seq_len), int(pad_id), oi, ol, op, count.value, byref(count))
    if st != 0:
        raise _thread_error(st)
    T = int(seq_len)
    cut = lambda a: [list(a[r * T:(r + 1) * T]) for r in range(count.value)]
    return cut(oi), cut(ol), cut(op)
