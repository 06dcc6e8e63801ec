"""Measuring memory without a GPU: the bytes autograd keeps for backward.

`SavedTensorCounter` wraps a forward pass in `torch.autograd.graph.saved_tensors_hooks` and adds
up each distinct storage it sees once, skipping parameters (and views of them, such as the
transposed weight a linear keeps) and buffers: what is left is the activation memory the
planner's `planner.memory.activations` predicts. Works on real tensors and under `FakeTensorMode`
(fake storages have sizes and identities, no data), so a LLaMA-7B layer is counted in
milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class SavedTensorCounter:
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

    @contextmanager
    def count(self) -> Iterator[SavedTensorCounter]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> None:
        """Begin counting (`count()` is the usual way; a pipeline starts and stops in module hooks)."""
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()

    def stop(self) -> None:
        self._hooks.__exit__(None, None, None)
