"""Data-parallel training: Comm, the communicator of one rank (lt_comm; docs/DISTRIBUTED.md).

Every rank builds the same model, adapter, optimizer and Trainer(..., comm=comm), and steps on its share
of each global batch; the result is one process's with the whole batch. A Comm comes from

  - Comm.from_torch(group=None): a torch.distributed process group (Gloo on the CPU), through callbacks;
  - Comm.from_callbacks(rank, world_size, all_reduce, broadcast, ...): any other engine;
  - Comm.mpi(comm=None): MPI, an mpi4py communicator (None: MPI_COMM_WORLD), when the library has MPI;
  - Comm.nccl(comm_ptr, stream_ptr=None): a borrowed ncclComm_t (an int address), when it has NCCL.

Callbacks receive ctypes arrays (writable buffers: numpy.frombuffer / torch.frombuffer see the memory
itself): all_reduce(buf) sums buf over the ranks in place; broadcast(buf, root) copies root's bytes;
reduce_scatter(buf, counts) and all_gather(buf, counts) (optional) work on len(counts) segments; barrier()
(optional). They must sum in a fixed order and leave the same bits on every rank. An exception in a
callback fails the library's call (LoratuneError naming the callback); it is kept in Comm.callback_error.
"""
import ctypes
import logging
import threading
from ctypes import byref, c_double, c_float, c_ubyte
from typing import Callable, List, Optional, Sequence

from . import _lib as L
from ._core import _Handle, _thread_error
from ._errors import LoratuneError, Status


def comm_available(engine: str) -> bool:
    """True if the engine ("mpi", "nccl", "callbacks") is compiled into the loaded library."""
    return bool(L.lib().lt_comm_available(engine.encode()))


def _values(buf: int, count: int, dtype: int):
    return ((c_double if dtype == L.LT_COMM_F64 else c_float) * count).from_address(buf)


class Comm(_Handle):
    """lt_comm: the communicator of one data-parallel rank. Pass it to Trainer(..., comm=comm); it must
    outlive the trainer (closing it closes the trainers that use it first)."""

    _free = "lt_comm_free"
    _last_error = "lt_comm_last_error"

    def __init__(self, ptr, keep=None):
        super().__init__(ptr, threading.RLock())
        self._keep = keep  # the ctypes callbacks (and what they refer to) live as long as the handle
        self.callback_error = None  # type: Optional[BaseException]

    @property
    def rank(self) -> int:
        return int(L.lib().lt_comm_rank(self._h))

    @property
    def world_size(self) -> int:
        return int(L.lib().lt_comm_world_size(self._h))

    def set_timeout(self, seconds: float) -> None:
        """MPI and NCCL: the deadline of one collective (default 600 s)."""
        with self._lock:
            self._check(L.lib().lt_comm_set_timeout(self._h, float(seconds)))

    def all_reduce(self, values: Sequence[float]) -> List[float]:
        """The sums over the ranks of `values` (doubles; a collective): for the host's own statistics."""
        arr = (c_double * max(1, len(values)))(*values)
        with self._lock:
            self._check(L.lib().lt_comm_all_reduce(self._h, arr, len(values)))
        return list(arr[:len(values)])

    # ---- constructors ----

    @classmethod
    def from_callbacks(cls, rank: int, world_size: int, all_reduce: Callable, broadcast: Callable,
                       reduce_scatter: Optional[Callable] = None, all_gather: Optional[Callable] = None,
                       barrier: Optional[Callable] = None) -> "Comm":
        """A communicator over the host's collectives (see the module's docstring)."""
        holder = {}

        def guard(fn):
            def call(*args):
                try:
                    fn(*args)
                    return 0
                except BaseException as e:  # noqa: B902 - nothing may cross the C frames
                    comm = holder.get("comm")
                    if comm is not None:
                        comm.callback_error = e
                    logging.getLogger("loratune").exception("loratune communicator callback failed")
                    return -1
            return call

        cb = L.init_struct(L.lib().lt_comm_callbacks_init, L.lt_comm_callbacks)
        cb.rank, cb.world_size = int(rank), int(world_size)
        fns = {
            "all_reduce": L.lt_comm_all_reduce_fn(
                guard(lambda u, buf, n, dt: all_reduce(_values(buf, n, dt)))),
            "broadcast": L.lt_comm_broadcast_fn(
                guard(lambda u, buf, n, root: broadcast((c_ubyte * n).from_address(buf), root))),
        }
        for name, fn in (("reduce_scatter", reduce_scatter), ("all_gather", all_gather)):
            if fn is not None:
                def seg(u, buf, counts, dt, fn=fn):
                    c = [int(counts[i]) for i in range(int(world_size))]
                    fn(_values(buf, sum(c), dt), c)
                fns[name] = L.lt_comm_segments_fn(guard(seg))
        if barrier is not None:
            fns["barrier"] = L.lt_comm_barrier_fn(guard(lambda u: barrier()))
        for name, fn in fns.items():
            setattr(cb, name, fn)
        out = L.lt_comm_p()
        st = L.lib().lt_comm_create(byref(cb), byref(out))
        if st != 0:
            raise _thread_error(st)
        comm = cls(out, keep=fns)
        holder["comm"] = comm
        return comm

    @classmethod
    def from_torch(cls, group=None) -> "Comm":
        """A communicator over a torch.distributed process group (default: the world), on host memory:
        Gloo, or any backend whose collectives take CPU tensors. Collectives the group lacks (Gloo has no
        reduce_scatter) are done with all_reduce by the library."""
        import torch
        import torch.distributed as dist

        def tensor(buf):
            kind = {ctypes.c_float: torch.float32, ctypes.c_double: torch.float64}.get(buf._type_, torch.uint8)
            return torch.frombuffer(buf, dtype=kind)

        def all_reduce(buf):
            dist.all_reduce(tensor(buf), op=dist.ReduceOp.SUM, group=group)

        def broadcast(buf, root):
            src = root if group is None else dist.get_global_rank(group, root)
            dist.broadcast(tensor(buf), src=src, group=group)

        def barrier():
            dist.barrier(group=group)

        return cls.from_callbacks(dist.get_rank(group), dist.get_world_size(group), all_reduce, broadcast,
                                  barrier=barrier)

    @classmethod
    def mpi(cls, comm=None) -> "Comm":
        """A communicator over MPI: an mpi4py communicator (its MPI_Comm is duplicated), or None for
        MPI_COMM_WORLD (initialising MPI if nobody has). The library and mpi4py must use the same MPI."""
        ptr = None
        if comm is not None:
            from mpi4py import MPI
            ptr = ctypes.c_void_p(MPI._addressof(comm))
        out = L.lt_comm_p()
        st = L.lib().lt_comm_create_mpi(ptr, byref(out))
        if st != 0:
            raise _thread_error(st)
        return cls(out, keep=comm)

    @classmethod
    def nccl(cls, comm_ptr: int, stream_ptr: Optional[int] = None) -> "Comm":
        """A communicator over a borrowed ncclComm_t (its address) and cudaStream_t (None: the default
        stream); the trainer's context must use the cuda backend."""
        out = L.lt_comm_p()
        st = L.lib().lt_comm_create_nccl(ctypes.c_void_p(int(comm_ptr)),
                                         ctypes.c_void_p(int(stream_ptr)) if stream_ptr else None, byref(out))
        if st != 0:
            raise _thread_error(st)
        return cls(out)


__all__ = ["Comm", "comm_available", "LoratuneError", "Status"]
