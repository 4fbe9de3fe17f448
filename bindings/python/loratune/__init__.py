"""loratune: Python bindings for libloratune (LoRA fine-tuning of LLMs in C), on ctypes.

    import loratune as lt
    with lt.Context(backend="cpu") as ctx:
        model = lt.Model.load(ctx, "path/to/hf-model")
        adapter = lt.Adapter.create(model, rank=8, alpha=16)
        opt = lt.Optimizer(adapter, lr=1e-3)
        trainer = lt.Trainer(model, adapter, opt)
        r = trainer.step(lt.Batch.from_rows(lt.read_jsonl("data.jsonl")))
        adapter.save("out/adapter")

The shared library is found through $LORATUNE_LIBRARY, the package directory, or the system loader
(see loratune._lib). numpy is optional: with it, token batches may be numpy arrays and logits come
back as arrays. Failures raise LoratuneError(status, message).
"""
__version__ = "0.1.0"

from ._errors import LoratuneError, Status
from ._lib import LibraryNotFoundError
from ._core import (EOS_FROM_CONFIG, IGNORE_INDEX, Adapter, AdapterParams, Batch, Context, LogLevel, LoraInit,
                    LossResult, Model, ModelInfo, Objective, Optimizer, OptimizerKind, Schedule, StepResult,
                    Target, Tokenizer, Trainer, backend_available, library_path, library_version, library_version_number,
                    pack_sequences, read_jsonl, status_string)
from ._dist import Comm, comm_available
from . import experimental

__all__ = [
    "__version__", "LoratuneError", "Status", "LibraryNotFoundError", "EOS_FROM_CONFIG", "IGNORE_INDEX",
    "Adapter", "AdapterParams", "Batch", "Context", "LogLevel", "LoraInit", "LossResult", "Model", "ModelInfo",
    "Objective", "Optimizer", "OptimizerKind", "Schedule", "StepResult", "Target", "Tokenizer", "Trainer",
    "backend_available", "library_path", "library_version", "library_version_number", "pack_sequences", "read_jsonl",
    "status_string", "experimental", "Comm", "comm_available",
]
