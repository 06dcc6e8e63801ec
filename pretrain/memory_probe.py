"""Measuring memory without a GPU: the bytes autograd keeps for backward.

`SavedTensorCounter` wraps a forward pass in `torch.autograd.graph.saved_tensors_hooks` and adds
up each distinct storage it sees once, skipping parameters (and views of them, such as the
transposed weight a linear keeps) and buffers: what is left is the activation memory the
planner's `planner.memory.activations` predicts. Works on real tensors and under `FakeTensorMode`
(fake storages have sizes and identities, no data), so a LLaMA-7B layer is counted in
milliseconds.

`LiveTensorCounter` counts the storages created inside it that are still alive when read: after a
forward whose loss (and so graph) is held, what is kept for backward by anything, autograd's saved
tensors and selective checkpointing's cache alike (the latter never passes the hooks).

`MemoryTrafficCounter` adds up the bytes each memory-bound aten op reads and writes: what the step-time
model prices at HBM bandwidth for our eager block.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _real_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors holding `t`'s memory: itself, or for a wrapper subclass (a DTensor, whose local shard is what
    this rank holds; an AsyncCollectiveTensor) the plain tensors inside it (its own storage is a stand-in sized
    by the global shape)."""
    if not is_traceable_wrapper_subclass(t):
        return [t]
    inner = (getattr(t, name) for name in t.__tensor_flatten__()[0])
    return [real for x in inner if isinstance(x, torch.Tensor) for real in _real_tensors(x)]


class _Counting:
    """`with counter.count():` counts inside the block (`start` / `stop` for counting across hooks)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def keep(self, *tensors: torch.Tensor) -> None:
        """`tensors`, made before counting began, are kept by what is counted (a pipeline stage's received
        activations). The saved-tensor hooks see whatever is saved, whoever made it: nothing to do."""

    def leave_out(self, *tensors: torch.Tensor) -> None:
        """`tensors` are held by something other than the counted forward's backward (a pipeline stage's output,
        which the schedule keeps and the next stage counts as its input): nothing to do for the hooks."""

    @contextmanager
    def count(self) -> Iterator[_Counting]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class SavedTensorCounter(_Counting):
    """Bytes of the distinct non-parameter storages saved for backward inside `count()`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.bytes = 0
        self._seen: set[int] = set()

    def _excluded(self) -> set[int]:
        # Read at pack time: FSDP and ZeRO-3 swap gathered parameters in and out during forward.
        # Under tensor parallelism the gathered parameters are DTensors: their local shards are weights too.
        tensors = [t.to_local() if hasattr(t, "to_local") else t for t in (*self.model.parameters(), *self.model.buffers())]
        return {_storage_key(t) for t in tensors}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank holds its local shard
        key = _storage_key(local)
        if key not in self._seen and key not in self._excluded():
            self._seen.add(key)
            self.bytes += local.untyped_storage().nbytes()
        return t  # autograd gets back what it saved (a DTensor stays one)

    def start(self) -> None:
        """Begin counting (`count()` is the usual way; a pipeline starts and stops in module hooks)."""
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()

    def stop(self) -> None:
        self._hooks.__exit__(None, None, None)


class LiveTensorCounter(_Counting, TorchDispatchMode):
    """Bytes of the distinct storages the ops inside it create that are alive when `bytes` is read.
    Storages are held by weak reference (torch keeps one Python object per live storage), so the count is
    of what something else still holds; works on real and fake tensors. Under tensor parallelism the ops it sees
    are DTensors' (a dispatch mode runs before the subclass): a DTensor is counted by its local shard.
    `keep` adds tensors made before it (by their own bytes); `leave_out` takes away storages held elsewhere."""

    def __init__(self):
        super().__init__()
        self._storages: dict[int, weakref.ref] = {}
        self._kept: dict[int, tuple[weakref.ref, int]] = {}
        self._left_out: dict[int, weakref.ref] = {}
        self._frozen: int | None = None

    def keep(self, *tensors: torch.Tensor) -> None:
        for real in (real for t in tensors for real in _real_tensors(t)):
            storage = real.untyped_storage()
            self._kept[storage._cdata] = (weakref.ref(storage), real.numel() * real.element_size())

    def leave_out(self, *tensors: torch.Tensor) -> None:
        for real in (real for t in tensors for real in _real_tensors(t)):
            self._left_out[_storage_key(real)] = weakref.ref(real.untyped_storage())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(real) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
                  for real in _real_tensors(t)}
        for real in (real for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) for real in _real_tensors(t)):
            if _storage_key(real) not in inputs:  # views and in-place ops make none
                storage = real.untyped_storage()
                known = self._storages.get(storage._cdata)
                if known is None or known() is not storage:  # new, or a freed storage's address reused
                    self._storages[storage._cdata] = weakref.ref(storage)
        return out

    def _alive(self) -> int:
        # read now: FSDP and ZeRO-3 free a gathered parameter by resizing its storage to zero bytes
        alive = {key: s.nbytes() for key, s in ((key, ref()) for key, ref in self._storages.items()) if s is not None}
        for key, (ref, nbytes) in self._kept.items():
            if ref() is not None:
                alive.setdefault(key, nbytes)
        for key, ref in self._left_out.items():
            if ref() is not None:
                alive.pop(key, None)
        return sum(alive.values())

    @property
    def bytes(self) -> int:
        """Alive now, or, once `stop()` ran, when it ran (the end of the forward the trainer counts)."""
        return self._alive() if self._frozen is None else self._frozen

    def start(self) -> None:
        self._frozen = None
        self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)
        self._frozen = self._alive()


#: aten ops that move no bytes of their own (views and metadata) or that are matmuls (timed by their FLOPs).
_NOT_MEMORY_BOUND = {"mm", "addmm", "bmm", "matmul", "linear", "t", "transpose", "view", "_unsafe_view", "unsqueeze",
                     "squeeze", "expand", "detach", "unbind", "select", "slice", "split", "permute", "alias",
                     "reshape", "flatten", "unflatten", "as_strided", "_reshape_alias"}


class MemoryTrafficCounter(TorchDispatchMode):
    """Bytes the memory-bound aten ops inside it read and write (each distinct input and output tensor once
    per op), by op name: what `planner.compute.step_time.memory_bound_bytes` prices at HBM bandwidth. Matmuls,
    attention kernels and views are left out."""

    def __init__(self):
        super().__init__()
        self.by_op: dict[str, int] = {}

    @property
    def bytes(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in _NOT_MEMORY_BOUND or "attention" in name:
            return out
        seen, moved = set(), 0
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                moved += t.numel() * t.element_size()
        self.by_op[name] = self.by_op.get(name, 0) + moved
        return out
