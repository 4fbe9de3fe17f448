"""Bindings for include/loratune_experimental.h: NO stability promise (docs/ABI.md).

These may change or disappear in any release of the library, and so may this module.
"""
import json
from ctypes import byref, c_char_p
from typing import Mapping, Union

from . import _lib as L
from ._core import Adapter, Context, Model, PathLike, _path, _thread_error


def create_random_model(ctx: Context, config: Union[str, Mapping], seed: int = 0, init_std: float = 0.02) -> Model:
    """A model with random weights from a config.json text or dict (lt_model_create_random): linear and
    embedding weights ~ N(0, init_std^2), norm weights 1. Deterministic for a seed."""
    text = config if isinstance(config, str) else json.dumps(dict(config))
    out = L.lt_model_p()
    with ctx._lock:
        st = L.lib().lt_model_create_random(ctx._h, text.encode(), int(seed), float(init_std), byref(out))
        if st != 0:
            raise _thread_error(st)
    return Model(out, ctx)


def save_model(model: Model, path: PathLike) -> None:
    """Write the model's weights as a Hugging Face model directory (lt_model_save)."""
    with model._lock:
        model._check(L.lib().lt_model_save(model._h, _path(path)))


def set_save_files(adapter: Adapter, files: Mapping[str, str]) -> None:
    """Text files (plain name -> text) written with the adapter by every later save and merged export, in the
    same save as the weights (lt_adapter_set_save_files): a model card, a run record. {} removes them."""
    items = list(files.items())
    names = (c_char_p * max(len(items), 1))(*[k.encode() for k, _ in items])
    texts = (c_char_p * max(len(items), 1))(*[v.encode() for _, v in items])
    with adapter._lock:
        adapter._check(L.lib().lt_adapter_set_save_files(adapter._h, names, texts, len(items)))


#: A tiny Llama configuration (vocab 128, hidden 32, 2 layers) for demos and tests.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
