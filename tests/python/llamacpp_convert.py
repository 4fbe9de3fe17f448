#!/usr/bin/env python3
"""Run llama.cpp's own converter (convert_hf_to_gguf.py of the pinned sdist) on several model directories in
one process, as the reference of our GGUF export (crosscheck_gguf.py compares every key and tensor).

usage: llamacpp_convert.py LLAMA_CPP_SRC  DIR OUT.gguf TYPE PRE  [DIR OUT.gguf TYPE PRE ...]

PRE: the tokenizer.ggml.pre to write. The converter names a byte-level BPE pre-tokenizer from the hash of
a test string's token ids, which exists only for published vocabularies; our test tokenizers are trained
here, so the hash is replaced by the name (that our export picks from the regex and llama.cpp runs).
PRE "-": skip the tokenizer (SentencePiece-style families: the converter reads only tokenizer.model, which
a tokenizer.json-only directory does not have); the caller then compares everything but tokenizer.*.
"""
import os
import sys

import offline_env  # noqa: F401

src = sys.argv[1]
sys.path.insert(0, src)
sys.path.insert(1, os.path.join(src, "gguf-py"))
os.environ.setdefault("NO_LOCAL_GGUF", "")  # the converter's own gguf-py, put first on the path above
import logging  # noqa: E402

import convert_hf_to_gguf as conv  # noqa: E402
from conversion import base  # noqa: E402

logging.disable(logging.WARNING)
jobs = sys.argv[2:]
assert len(jobs) % 4 == 0, __doc__
get_model_class = conv.get_model_class
for i in range(0, len(jobs), 4):
    d, out, typ, pre = jobs[i:i + 4]
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=pre: pre

    def model_class(name, mmproj=False, skip=pre == "-"):
        cls = get_model_class(name, mmproj)
        return type(cls.__name__, (cls,), {"set_vocab": lambda self: None, "model_arch": cls.model_arch}) if skip else cls
    conv.get_model_class = model_class  # the converter's main() looks it up in its own namespace
    sys.argv = ["convert_hf_to_gguf.py", d, "--outfile", out, "--outtype", typ]
    conv.main()
    print(f"converted {d} -> {out}")
