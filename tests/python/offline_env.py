"""Imported first (before torch, transformers, peft, bitsandbytes) by the reference scripts: they work
on local files only, and their output should show real warnings, not the same notices on every run.

- HF_HUB_OFFLINE=1: nothing here may reach the Hugging Face hub (CI cannot), and no library waits for it.
- HF_HUB_DISABLE_PROGRESS_BARS=1: transformers' "Loading weights" / "Writing model shards" bars.
- On a CPU with AVX512-BF16, `import bitsandbytes` (also reached through `import peft`) asks the
  `kernels` package (a dependency of transformers) for a gemm_4bit kernel from the hub repository
  kernels-community/quantization-bitsandbytes. Offline that fails, kernels logs "Skipping publisher
  trust check ..." and bitsandbytes "Failed to load CPU gemm_4bit_forward from kernels-community ...",
  in every process; bitsandbytes then keeps its own CPU code, the oracle the tests want anyway. No
  setting turns the attempt off, so a filter drops exactly those two records from exactly those two
  loggers; every other record of theirs still prints.
"""
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

_HUB_KERNEL_NOTICES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
}


def _drop_prefix(prefix):
    return lambda record: not record.getMessage().startswith(prefix)


for _name, _prefix in _HUB_KERNEL_NOTICES.items():
    logging.getLogger(_name).addFilter(_drop_prefix(_prefix))
