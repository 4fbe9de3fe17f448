"""libloratune through the ctypes layer of bindings/python, for the cross-check scripts: one CPU context,
models, adapters, logits (numpy)."""
import ctypes
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bindings", "python"))


class Lib:
    def __init__(self, path):
        os.environ["LORATUNE_LIBRARY"] = path
        from loratune import _lib as L
        self.L, self.lib = L, L.lib()
        cp = L.init_struct(self.lib.lt_context_params_init, L.lt_context_params)
        cp.backend = b"cpu"
        self.ctx = L.lt_context_p()
        assert self.lib.lt_context_create(ctypes.byref(cp), ctypes.byref(self.ctx)) == 0

    def err(self):
        return self.lib.lt_last_error().decode()

    def model(self, d, quant=False):
        """(model, vocab size); quant: NF4 with double quantization, blocksize 64 (what train --method qlora uses)"""
        L = self.L
        mp = L.init_struct(self.lib.lt_model_params_init, L.lt_model_params)
        if quant:
            mp.quantization = 1
        m = L.lt_model_p()
        assert self.lib.lt_model_load(self.ctx, d.encode(), ctypes.byref(mp), ctypes.byref(m)) == 0, self.err()
        info = L.lt_model_info()
        info.size = ctypes.sizeof(info)
        self.lib.lt_model_get_info(m, ctypes.byref(info))
        return m, info.vocab_size

    def adapter(self, m, d):
        ad = self.L.lt_adapter_p()
        assert self.lib.lt_adapter_load(m, d.encode(), ctypes.byref(ad)) == 0, self.err()
        return ad

    def logits(self, m, V, ad, ids):
        """(T, V) float32 logits of one row of ids, with the adapter (None: the base)"""
        L = self.L
        b = L.init_struct(self.lib.lt_batch_init, L.lt_batch)
        arr = (ctypes.c_int32 * len(ids))(*ids)
        b.n_rows, b.seq_len, b.input_ids = 1, len(ids), arr
        out = (ctypes.c_float * (len(ids) * V))()
        st = self.lib.lt_model_logits(m, ad, ctypes.byref(b), out, len(ids) * V)
        assert st == 0, self.lib.lt_model_last_error(m).decode()
        return np.frombuffer(out, dtype=np.float32).reshape(len(ids), V).copy()

    def status_name(self, st):
        return self.lib.lt_status_string(st).decode()
