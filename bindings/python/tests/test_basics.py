"""Version, errors, handles and their lifetimes, parameters."""
import ctypes
import gc
import os
import re
import subprocess
import sys
import threading

import pytest

import loratune as lt
from loratune import _lib as L

from conftest import include_dir, rows


def test_library_version_matches_c():
    lib = L.lib()
    assert lt.library_version() == lib.lt_version_string().decode()
    assert re.fullmatch(r"\d+\.\d+\.\d+", lt.library_version())
    major, minor, patch = map(int, lt.library_version().split("."))
    assert lt.library_version_number() == major * 10000 + minor * 100 + patch
    inc = include_dir()
    if inc:
        header = open(os.path.join(inc, "loratune.h")).read()
        assert f'#define LT_VERSION_STRING "{lt.library_version()}"' in header


def test_library_found_through_env():
    if "LORATUNE_LIBRARY" in os.environ:
        assert os.path.realpath(lt.library_path()) == os.path.realpath(os.environ["LORATUNE_LIBRARY"]) or \
            os.path.isdir(os.environ["LORATUNE_LIBRARY"])


def test_library_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LORATUNE_LIBRARY", str(tmp_path / "nowhere.so"))
    assert L._candidates() == [str(tmp_path / "nowhere.so")]  # set: that library or nothing
    monkeypatch.setenv("LORATUNE_LIBRARY", str(tmp_path))
    assert L._candidates()[0] == str(tmp_path / "libloratune.so.0")
    monkeypatch.delenv("LORATUNE_LIBRARY")
    assert "libloratune.so.0" in L._candidates()  # the system loader


def test_library_in_package_directory(tmp_path):
    """A copy of the package with the library inside it loads that library (no env, no system path)."""
    import shutil
    pkg = tmp_path / "loratune"
    shutil.copytree(os.path.dirname(lt.__file__), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(lt.library_path(), pkg / "libloratune.so.0")
    env = {k: v for k, v in os.environ.items() if k not in ("LORATUNE_LIBRARY", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import loratune; print(loratune.library_path()); "
                          "print(loratune.library_version())"], env=env, capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    path, version = out.stdout.split()
    assert path == str(pkg / "libloratune.so.0")
    assert version == lt.library_version()


def test_missing_library_message(tmp_path):
    env = dict(os.environ, LORATUNE_LIBRARY=str(tmp_path / "nowhere.so"),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(lt.__file__))))
    code = ("import loratune\n"
            "try:\n    loratune.library_version()\nexcept loratune.LibraryNotFoundError as e:\n"
            "    print('NOTFOUND', e)\nelse:\n    print('FOUND', loratune.library_path())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NOTFOUND"), out.stdout
    assert "LORATUNE_LIBRARY" in out.stdout and "nowhere.so" in out.stdout
    import loratune  # the import itself never needs the library
    assert loratune.__version__


def test_status_strings():
    assert lt.status_string(lt.Status.ERR_FORMAT).startswith("LT_ERR_FORMAT")
    for s in lt.Status:
        assert lt.status_string(s).startswith("LT_OK" if s == 0 else f"LT_{s.name}")


def test_backend_available():
    assert lt.backend_available("cpu")
    assert not lt.backend_available("no-such-backend")


def test_context(ctx):
    assert ctx.backend == "cpu"
    ctx.set_threads(1)
    ctx.set_threads(2)
    with pytest.raises(lt.LoratuneError) as e:
        ctx.set_threads(-1)
    assert e.value.status == lt.Status.ERR_ARGUMENT
    assert "n_threads" in e.value.message
    assert "n_threads" in ctx.last_error


def test_context_bad_backend():
    with pytest.raises(lt.LoratuneError) as e:
        lt.Context(backend="no-such-backend")
    assert e.value.status == lt.Status.ERR_BACKEND
    assert "no-such-backend" in e.value.message
    assert str(e.value).startswith("LT_ERR_BACKEND: ")


def test_log_callback():
    seen = []
    with lt.Context(backend="cpu", log=lambda level, msg: seen.append((level, msg)), log_level="debug"):
        pass
    assert any("libloratune" in m for _, m in seen)
    assert all(isinstance(level, lt.LogLevel) for level, _ in seen)


def test_model_load_errors(ctx, tmp_path):
    with pytest.raises(lt.LoratuneError) as e:
        lt.Model.load(ctx, tmp_path / "missing")
    assert e.value.status in (lt.Status.ERR_IO, lt.Status.ERR_MISSING)
    assert "missing" in e.value.message
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(lt.LoratuneError) as e:
        lt.Model.load(ctx, tmp_path / "bad")
    assert e.value.status in (lt.Status.ERR_JSON, lt.Status.ERR_MISSING, lt.Status.ERR_IO)
    assert e.value.message


def test_model_info(model):
    i = model.info
    cfg = lt.experimental.TINY_LLAMA
    assert i.architecture == "LlamaForCausalLM"
    assert (i.vocab_size, i.hidden_size, i.n_layers) == (cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"])
    assert (i.n_heads, i.n_kv_heads, i.head_dim) == (4, 2, 8)
    assert i.n_params > 0 and i.weight_bytes >= 4 * i.n_params
    assert not i.tied_embeddings
    assert "LlamaForCausalLM" in repr(model)


def test_adapter_defaults_mirror_library(model):
    """Arguments left at None take lt_adapter_params_init's defaults (the header says r=8, alpha=8)."""
    with lt.Adapter.create(model) as a:
        p = a.params
        assert (p.rank, p.alpha, p.dropout) == (8, 8.0, 0.0)
        assert p.targets == lt.Target.ALL
        assert p.init == lt.LoraInit.DEFAULT and not p.use_rslora
    with lt.Adapter.create(model, rank=4, alpha=16, targets="q_proj,v_proj", init="gaussian", seed=5) as a:
        p = a.params
        assert (p.rank, p.alpha, p.seed) == (4, 16.0, 5)
        assert p.targets == lt.Target.Q | lt.Target.V
        assert p.init == lt.LoraInit.GAUSSIAN
        # 2 layers x (q: A 4x32 + B 32x4) + (v: A 4x32 + B 16x4)
        assert a.n_params == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))


def test_targets_parse():
    assert lt.Target.parse("all") == lt.Target.ALL
    assert lt.Target.parse(["gate_proj", "up", "down_proj"]) == lt.Target.GATE | lt.Target.UP | lt.Target.DOWN
    assert lt.Target.parse(3) == lt.Target.Q | lt.Target.K
    with pytest.raises(ValueError):
        lt.Target.parse("qq_proj")


def test_params_struct_init_sets_size():
    for fn, cls in ((L.lib().lt_context_params_init, L.lt_context_params),
                    (L.lib().lt_optimizer_params_init, L.lt_optimizer_params),
                    (L.lib().lt_generate_params_init, L.lt_generate_params)):
        p = L.init_struct(fn, cls)
        assert p.size == ctypes.sizeof(cls)
    g = L.init_struct(L.lib().lt_generate_params_init, L.lt_generate_params)
    assert (g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.eos_token_id) == (32, 0.0, 0, 1.0, lt.EOS_FROM_CONFIG)
    o = L.init_struct(L.lib().lt_optimizer_params_init, L.lt_optimizer_params)
    assert o.kind == lt.OptimizerKind.ADAMW and abs(o.lr - 1e-4) < 1e-9 and abs(o.max_grad_norm - 1.0) < 1e-9


def test_closed_handle_raises(ctx):
    m = lt.experimental.create_random_model(ctx, lt.experimental.TINY_LLAMA)
    m.close()
    m.close()  # idempotent
    assert m.closed
    with pytest.raises(lt.LoratuneError) as e:
        m.loss(rows())
    assert e.value.status == lt.Status.ERR_STATE


def test_close_parent_closes_children():
    c = lt.Context(backend="cpu")
    m = lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA)
    a = lt.Adapter.create(m, rank=2)
    o = lt.Optimizer(a)
    t = lt.Trainer(m, a, o)
    c.close()
    assert all(h.closed for h in (m, a, o, t))
    assert all(h._ptr is None for h in (c, m, a, o, t))


def test_garbage_collection_in_any_order():
    """Dropping every reference at once (a cycle) frees children before parents."""
    for _ in range(3):
        c = lt.Context(backend="cpu")
        m = lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA)
        a = lt.Adapter.create(m, rank=2)
        t = lt.Trainer(m, a, lt.Optimizer(a))
        bag = [c, m, a, t]
        bag.append(bag)  # a reference cycle: the collector finalizes these in an unspecified order
        c._cycle = bag
        del c, m, a, t, bag
        gc.collect()


def test_handles_from_different_threads():
    """One context per thread: fine in parallel."""
    errors, losses = [], []

    def work(seed):
        try:
            with lt.Context(backend="cpu", n_threads=1) as c:
                m = lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA, seed=seed)
                a = lt.Adapter.create(m, rank=2)
                t = lt.Trainer(m, a, lt.Optimizer(a, lr=1e-2))
                for _ in range(3):
                    losses.append(t.step(rows()).loss)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    th = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    assert not errors and len(losses) == 9


def test_shared_context_from_threads_is_serialised(ctx):
    """Several threads on handles of one context: the binding serialises the calls (the context's lock)."""
    m = lt.experimental.create_random_model(ctx, lt.experimental.TINY_LLAMA, seed=11)
    want = m.loss(rows()).loss_sum
    got, errors = [], []

    def work():
        try:
            for _ in range(5):
                got.append(m.loss(rows()).loss_sum)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    th = [threading.Thread(target=work) for _ in range(3)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    assert not errors and got == [want] * 15


def test_export_gguf(ctx, model, tmp_path):
    """lt_model_export_gguf / lt_adapter_export_gguf through the wrappers: the files start with GGUF v3; a model
    without a tokenizer and an unknown dtype are refused with the library's status and message."""
    import json
    import struct
    with pytest.raises(lt.LoratuneError) as e:
        model.export_gguf(tmp_path / "x.gguf")
    assert "tokenizer" in e.value.message
    with pytest.raises(lt.LoratuneError) as e:
        model.export_gguf(tmp_path / "x.gguf", dtype="q4")
    assert e.value.status == lt.Status.ERR_ARGUMENT
    # a byte-level tokenizer of single bytes (GPT-2's byte -> unicode map) makes the model exportable
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    V = lt.experimental.TINY_LLAMA["vocab_size"]
    vocab = {chr(c): b for b, c in zip(bs, cs) if b < V - 1}
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "added_tokens": [{"id": V - 1, "content": "<|end|>", "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}}))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    with lt.Tokenizer.load(d) as tok:
        model.export_gguf(tmp_path / "m.gguf", dtype="f32", tokenizer=tok, name="tiny")
    head = (tmp_path / "m.gguf").read_bytes()[:8]
    assert head[:4] == b"GGUF" and struct.unpack("<I", head[4:])[0] == 3
    with lt.Adapter.create(model, rank=4) as a:
        a.export_gguf(tmp_path / "a.gguf", dtype="f16")
    assert (tmp_path / "a.gguf").read_bytes()[:4] == b"GGUF"
