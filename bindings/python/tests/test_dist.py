"""Data-parallel training through the binding: a Comm over Python callbacks (threads as ranks), over a
torch.distributed Gloo group (two processes), and the MPI / NCCL constructors. Each run is compared with one
process training on the global batch: every tensor within 1e-5 (relative L2)."""
import json
import os
import struct
import subprocess
import sys
import threading
from array import array

import pytest

import loratune as lt

from conftest import rows

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-5


def tensors(path):
    """{name: array('f')} of a safetensors file of F32 tensors (no numpy needed)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        a = array("f")
        a.frombytes(data[v["data_offsets"][0]:v["data_offsets"][1]])
        out[k] = a
    return out


def max_rel(a_dir, b_dir):
    a = tensors(os.path.join(a_dir, "adapter_model.safetensors"))
    b = tensors(os.path.join(b_dir, "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        d = sum((x - y) ** 2 for x, y in zip(a[k], b[k]))
        n = sum(y * y for y in b[k])
        worst = max(worst, (d / n) ** 0.5 if n > 0 else d ** 0.5)
    return worst


def train(model, out, comm=None, rank=0, world=1, steps=3, batch=4, zero_stage=0):
    """`steps` AdamW updates on global batches of `batch` rows; this rank's rows [r B / W, (r + 1) B / W)."""
    a = lt.Adapter.create(model, rank=4, alpha=8, seed=1)
    o = lt.Optimizer(a, lr=1e-2, max_grad_norm=0.5)
    t = lt.Trainer(model, a, o, comm=comm, zero_stage=zero_stage)
    lo, hi = batch * rank // world, batch * (rank + 1) // world
    for s in range(steps):
        r = t.step(rows(batch, start=10 * s)[lo:hi])
        assert r.updated
    if rank == 0:
        a.save(out)
    t.close()
    o.close()
    a.close()


class FakeGroup:
    """Ranks as threads: the last to arrive does the collective on every rank's buffer, in rank order."""

    def __init__(self, world):
        self.world = world
        self.slots = [None] * world
        self.barrier = threading.Barrier(world, action=self._run)

    def _run(self):
        op, _, arg = self.slots[0]
        bufs = [s[1] for s in self.slots]
        if op == "sum":
            for i in range(len(bufs[0])):
                v = sum(b[i] for b in bufs)
                for b in bufs:
                    b[i] = v
        elif op == "bcast":
            for b in bufs:
                b[:] = bufs[arg][:]

    def collective(self, rank, op, buf, arg=None):
        self.slots[rank] = (op, buf, arg)
        self.barrier.wait(timeout=60)

    def comm(self, rank):
        return lt.Comm.from_callbacks(rank, self.world,
                                      lambda buf: self.collective(rank, "sum", buf),
                                      lambda buf, root: self.collective(rank, "bcast", buf, root))


def test_comm_api():
    assert lt.comm_available("callbacks")
    assert not lt.comm_available("gloo")
    if not lt.comm_available("nccl"):
        with pytest.raises(lt.LoratuneError) as e:
            lt.Comm.nccl(1)
        assert e.value.status == lt.Status.ERR_UNSUPPORTED
    g = FakeGroup(1)
    with g.comm(0) as c:
        assert (c.rank, c.world_size) == (0, 1)
        assert c.all_reduce([1.5, 2.0]) == [1.5, 2.0]
        c.set_timeout(30)
        with pytest.raises(lt.LoratuneError):
            c.set_timeout(-1)


def test_callbacks_two_ranks_equal_one_process(model, tmp_path):
    train(model, str(tmp_path / "one"))
    g = FakeGroup(2)
    comms = [g.comm(r) for r in range(2)]
    errors = []

    def rank_main(r):  # a context and model per rank: the binding serialises the calls on one model
        try:
            with lt.Context(backend="cpu", n_threads=1) as c, \
                    lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA, seed=7, init_std=0.05) as m:
                train(m, str(tmp_path / "two"), comm=comms[r], rank=r, world=2)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    rel = max_rel(str(tmp_path / "two"), str(tmp_path / "one"))
    print(f"callbacks, 2 ranks: max relative L2 difference per tensor {rel:.2e}")
    assert rel <= TOL
    for c in comms:
        c.close()


def test_callback_exception_fails_the_step(model):
    def boom(buf):
        raise RuntimeError("the engine is down")

    with lt.Comm.from_callbacks(0, 2, boom, lambda buf, root: None) as c:
        a = lt.Adapter.create(model, rank=2)
        o = lt.Optimizer(a)
        with pytest.raises(lt.LoratuneError) as e:
            lt.Trainer(model, a, o, comm=c)
        assert "all_reduce callback failed" in str(e.value)
        assert isinstance(c.callback_error, RuntimeError)


TORCH_RANK = r"""
import os, sys
import torch.distributed as dist
sys.path.insert(0, sys.argv[4])
import loratune as lt
from conftest import rows
from test_dist import train
rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[5]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
with lt.Context(backend="cpu", n_threads=1) as ctx, \
        lt.experimental.create_random_model(ctx, lt.experimental.TINY_LLAMA, seed=7, init_std=0.05) as m, \
        lt.Comm.from_torch() as comm:
    train(m, out, comm=comm, rank=rank, world=world, zero_stage=1)
dist.destroy_process_group()
"""


def run_python(code):
    """(returncode, output) of a fresh interpreter running code, with this binding on its path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    p = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=300)
    return p.returncode, p.stdout


def test_torch_imports_after_the_library():
    """A host that loads the library first can still import torch: the library must not bring its own NCCL (or
    anything else torch also ships) into the process, or torch's newer one fails to load ("undefined symbol:
    ncclCommResume"). Judged in fresh interpreters: this one has loaded the library already."""
    if run_python("import torch")[0] != 0:
        pytest.skip("torch does not import here even alone")
    rc, out = run_python("import loratune as lt\n"
                         "with lt.Context(backend='cpu', n_threads=1):\n"
                         "    import torch\n"
                         "    print(torch.ones(2).sum().item())")
    assert rc == 0, out
    assert out.strip().endswith("2.0"), out


def test_torch_gloo_two_processes(model, tmp_path):
    pytest.importorskip("torch")  # this process loaded the library first: the test above covers that case
    train(model, str(tmp_path / "one"))
    script = tmp_path / "rank.py"
    script.write_text(TORCH_RANK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / "store"), HERE,
                               str(tmp_path / "gloo")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    rel = max_rel(str(tmp_path / "gloo"), str(tmp_path / "one"))
    print(f"torch.distributed Gloo, 2 processes, ZeRO-1: max relative L2 difference per tensor {rel:.2e}")
    assert rel <= TOL


def test_mpi4py():
    MPI = pytest.importorskip("mpi4py.MPI")
    if not lt.comm_available("mpi"):
        pytest.skip("this libloratune has no MPI")
    with lt.Comm.mpi(MPI.COMM_WORLD) as c:  # one process: a world of one rank
        assert c.world_size == MPI.COMM_WORLD.Get_size()
        assert c.all_reduce([2.0]) == [2.0 * c.world_size]
