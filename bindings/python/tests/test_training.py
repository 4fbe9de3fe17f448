"""Training, evaluation, checkpoints, merging, generation and token batches."""
import json
import math
import os
import subprocess
import sys

import pytest

import loratune as lt
from loratune import _core

from conftest import rows

try:
    import numpy as np
except ImportError:
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")


def make_trainer(model, lr=1e-2, **kw):
    a = lt.Adapter.create(model, rank=4, alpha=8, seed=1)
    o = lt.Optimizer(a, lr=lr, **kw)
    return lt.Trainer(model, a, o), a, o


def test_training_lowers_the_loss(model):
    t, a, o = make_trainer(model)
    batch = lt.Batch(rows())
    before = t.evaluate(batch).mean
    results = [t.step(batch) for _ in range(20)]
    after = t.evaluate(batch).mean
    assert after < before - 0.05
    assert results[-1].loss < results[0].loss
    assert [r.step for r in results] == list(range(1, 21))
    assert all(r.updated and r.tokens == 4 * 15 and r.grad_norm > 0 for r in results)
    assert o.step_count == 20
    assert abs(o.lr - 1e-2) < 1e-8


def test_step_result_and_grad_accum(model):
    a = lt.Adapter.create(model, rank=2)
    t = lt.Trainer(model, a, lt.Optimizer(a), grad_accum=2)
    r1, r2 = t.step(rows()), t.step(rows())
    assert not r1.updated and r2.updated and r2.step == 1
    assert isinstance(r1, lt.StepResult) and r1.tokens_per_s >= 0


def test_schedule(model):
    t, a, o = make_trainer(model, lr=1e-2, schedule="linear", total_steps=10, warmup_steps=2)
    lrs = [t.step(rows()).lr for _ in range(10)]
    assert max(lrs) == pytest.approx(1e-2, rel=1e-5)
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[2]


def test_model_loss_with_and_without_adapter(model):
    t, a, o = make_trainer(model)
    base = model.loss(rows())
    assert base.n_tokens == 4 * 15 and math.isfinite(base.mean)
    assert model.loss(rows(), adapter=a).loss_sum == pytest.approx(base.loss_sum, rel=1e-6)  # B = 0 at init
    for _ in range(5):
        t.step(rows())
    assert model.loss(rows(), adapter=a).loss_sum != pytest.approx(base.loss_sum, rel=1e-6)
    ev = t.evaluate(rows())
    assert ev.loss_sum == pytest.approx(model.loss(rows(), adapter=a).loss_sum, rel=1e-6)


def test_labels_mask(model):
    ids = rows()
    labels = [[-100] * 8 + r[8:] for r in ids]
    r = model.loss(ids, labels=labels)
    assert r.n_tokens == 4 * 8  # labels[8:] are predicted from positions 7..14
    with pytest.raises(lt.LoratuneError) as e:
        t, a, o = make_trainer(model)
        t.step(ids, labels=[[-100] * 16] * 4)
    assert e.value.status == lt.Status.ERR_DATA


def test_bad_token_id(model):
    with pytest.raises(lt.LoratuneError) as e:
        model.loss([[1, 2, 500, 3]])
    assert e.value.status in (lt.Status.ERR_DATA, lt.Status.ERR_ARGUMENT)
    assert "500" in e.value.message
    assert "500" in model.last_error


def test_batch_shapes():
    b = lt.Batch([1, 2, 3])
    assert (b.n_rows, b.seq_len) == (1, 3)
    with pytest.raises(ValueError):
        lt.Batch([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError):
        lt.Batch([[1, 2, 3]], labels=[[1, 2]])
    with pytest.raises(OverflowError):
        lt.Batch([[1, 2**40]])
    b = lt.Batch.from_rows([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}, [6]], pad_id=0)
    assert (b.n_rows, b.seq_len) == (3, 3)
    b = lt.Batch.from_rows([[1, 2, 3, 4, 5]], seq_len=3)
    assert b.seq_len == 3


def test_position_ids_packing(model):
    """Two sequences packed in one row with restarting positions equal the two run separately."""
    s1, s2 = [5, 9, 13, 17, 21], [3, 6, 9, 12]
    packed = model.loss([s1 + s2], labels=[s1 + [-100] + s2[1:]], position_ids=[list(range(5)) + list(range(4))])
    sep = model.loss([s1]).loss_sum + model.loss([s2]).loss_sum
    assert packed.n_tokens == 4 + 3
    assert packed.loss_sum == pytest.approx(sep, rel=1e-4)


def test_adapter_save_load_roundtrip(model, tmp_path):
    t, a, o = make_trainer(model)
    for _ in range(5):
        t.step(rows())
    a.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4
    with lt.Adapter.load(model, tmp_path / "adapter") as b:
        assert b.params.rank == 4
        assert model.loss(rows(), adapter=b).loss_sum == pytest.approx(model.loss(rows(), adapter=a).loss_sum, rel=1e-6)
    with pytest.raises(lt.LoratuneError) as e:
        lt.Adapter.load(model, tmp_path / "nope")
    assert e.value.message
    # files saved with the adapter, in the same directory; a save never replaces what it did not write
    lt.experimental.set_save_files(a, {"README.md": "# card\n"})
    a.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "README.md").read_bytes() == b"# card\n"
    with pytest.raises(lt.LoratuneError) as e:
        lt.experimental.set_save_files(a, {".hidden": ""})
    assert ".hidden" in e.value.message
    lt.experimental.set_save_files(a, {})
    a.save(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "README.md").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(lt.LoratuneError) as e:
        a.save(tmp_path / "mine")
    assert "notes.txt" in e.value.message and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_merge_unmerge_export(model, ctx, tmp_path):
    t, a, o = make_trainer(model)
    for _ in range(5):
        t.step(rows())
    with_adapter = model.loss(rows(), adapter=a).loss_sum
    base = model.loss(rows()).loss_sum
    with a.merged():
        assert model.loss(rows()).loss_sum == pytest.approx(with_adapter, rel=1e-5)
        with pytest.raises(lt.LoratuneError) as e:
            t.step(rows())
        assert e.value.status == lt.Status.ERR_STATE
        with pytest.raises(lt.LoratuneError) as e:
            a.merge()
        assert e.value.status == lt.Status.ERR_STATE
    assert model.loss(rows()).loss_sum == pytest.approx(base, rel=1e-5)
    a.export_merged(tmp_path / "merged")
    with lt.Model.load(ctx, tmp_path / "merged") as merged:
        assert merged.loss(rows()).loss_sum == pytest.approx(with_adapter, rel=1e-5)


def test_checkpoint_resume_is_exact(model, tmp_path):
    t, a, o = make_trainer(model)
    for _ in range(3):
        t.step(rows())
    t.save_checkpoint(tmp_path / "ckpt")
    cont = [t.step(rows(start=s)).loss for s in range(3)]
    t2, a2, o2 = make_trainer(model)
    t2.load_checkpoint(tmp_path / "ckpt")
    assert o2.step_count == 3
    resumed = [t2.step(rows(start=s)).loss for s in range(3)]
    assert resumed == pytest.approx(cont, rel=1e-6)
    o.save(tmp_path / "opt.bin")
    o2.load(tmp_path / "opt.bin")
    assert o2.step_count == o.step_count


def test_progress_callback(model):
    t, a, o = make_trainer(model)
    seen = []
    t.set_progress(seen.append)
    t.step(rows())
    t.step(rows())
    t.set_progress(None)
    t.step(rows())
    assert [r.step for r in seen] == [1, 2]
    assert isinstance(seen[0], lt.StepResult)


def test_generate(model):
    t, a, o = make_trainer(model)
    out = model.generate([1, 2, 3], max_new_tokens=6, eos_token_id=-1)
    assert len(out) == 6 and all(0 <= x < 128 for x in out)
    assert model.generate([1, 2, 3], max_new_tokens=6, eos_token_id=-1) == out  # greedy is deterministic
    two = model.generate([[1, 2, 3], [4, 5]], max_new_tokens=4, eos_token_id=-1)
    assert len(two) == 2 and two[0] == out[:4] and len(two[1]) == 4
    s1 = model.generate([1, 2, 3], max_new_tokens=8, temperature=1.0, top_k=20, seed=42, eos_token_id=-1)
    s2 = model.generate([1, 2, 3], max_new_tokens=8, temperature=1.0, top_k=20, seed=42, eos_token_id=-1)
    assert s1 == s2
    assert model.generate([1, 2, 3], max_new_tokens=4, adapter=a, eos_token_id=-1) == out[:4]  # B = 0
    with pytest.raises(lt.LoratuneError) as e:
        model.generate([1, 2, 3], max_new_tokens=0)
    assert e.value.status == lt.Status.ERR_ARGUMENT


def test_generate_bad_token_id():
    """Run in a child process, so that a crash is reported as a failure rather than ending pytest."""
    code = ("import loratune as lt\n"
            "with lt.Context(backend='cpu') as c:\n"
            "    m = lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA)\n"
            "    try:\n        m.generate([1, 2, 999])\n"
            "    except lt.LoratuneError as e:\n        print(e.status.name, e.message)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"the child died with {out.returncode}: {out.stderr[-500:]}"
    assert out.stdout.startswith("ERR_DATA") and "999" in out.stdout


def test_logits_match_loss(model):
    ids = rows(n=2, T=6)
    logits = model.logits(ids)
    if np is not None:
        assert logits.shape == (2, 6, 128) and logits.dtype == np.float32
        logits = logits.tolist()
    total = 0.0
    for b in range(2):
        for t in range(5):
            row = logits[b][t]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            total += lse - row[ids[b][t + 1]]
    assert total == pytest.approx(model.loss(ids).loss_sum, rel=1e-4)


def test_logits_without_numpy(model, monkeypatch):
    monkeypatch.setattr(_core, "_np", None)
    out = model.logits([[1, 2, 3]])
    assert isinstance(out, list) and len(out) == 1 and len(out[0]) == 3 and len(out[0][0]) == 128
    assert model.loss([[1, 2, 3]]).n_tokens == 2


@needs_numpy
def test_numpy_batches(model):
    ids = np.array(rows(), dtype=np.int64)
    r64 = model.loss(ids)
    r32 = model.loss(ids.astype(np.int32))
    assert r64 == r32 == model.loss(rows())
    labels = ids.copy()
    labels[:, :8] = -100
    assert model.loss(ids, labels=labels).n_tokens == 4 * 8
    b = lt.Batch(np.asfortranarray(ids))  # non-contiguous input is copied
    assert model.loss(b) == r64
    with pytest.raises(TypeError):
        lt.Batch(ids.astype(np.float32))
    out = model.generate(np.array([[1, 2, 3]]), max_new_tokens=3, eos_token_id=-1)
    assert len(out) == 1 and len(out[0]) == 3
    t, a, o = make_trainer(model)
    assert t.step(ids).tokens == 60


def test_golden_loss_of_reference_model(ctx):
    """With LORATUNE_TEST_MODEL (from tests/python/make_models.py), the loss of data.jsonl matches PyTorch."""
    d = os.environ.get("LORATUNE_TEST_MODEL")
    if not d or not os.path.exists(os.path.join(d, "data_golden.json")):
        pytest.skip("LORATUNE_TEST_MODEL with data_golden.json not set")
    golden = json.load(open(os.path.join(d, "data_golden.json")))
    data = lt.read_jsonl(os.path.join(d, "data.jsonl"))
    with lt.Model.load(ctx, d) as m:
        for row, g in zip(data, golden["per_line"]):
            r = m.loss(lt.Batch.from_rows([row]))
            assert r.n_tokens == g["tokens"]
            assert r.loss_sum == pytest.approx(g["loss_sum"], rel=2e-4, abs=1e-4)


def test_model_dir_fine_tune(ctx, model_dir, tmp_path):
    """Load from disk, fine-tune, save, reload: the saved adapter reproduces the trained loss."""
    with lt.Model.load(ctx, model_dir) as m:
        V = m.vocab_size
        data = rows(vocab=V)
        a = m.create_adapter(rank=4, alpha=8)
        t = lt.Trainer(m, a, lt.Optimizer(a, lr=5e-3))
        first = t.step(data).loss
        for _ in range(10):
            last = t.step(data).loss
        assert last < first
        a.save(tmp_path / "ad")
        trained = m.loss(data, adapter=a).loss_sum
        with m.load_adapter(tmp_path / "ad") as b:
            assert m.loss(data, adapter=b).loss_sum == pytest.approx(trained, rel=1e-6)


def test_example_runs(model_dir, tmp_path):
    ex = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "finetune.py")
    out = subprocess.run([sys.executable, ex, model_dir, str(tmp_path / "adapter")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "saved" in out.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
