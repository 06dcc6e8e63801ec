"""The engine interface the train loop drives, and measurement of live model-state bytes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from pretrain.config import RunConfig
from pretrain.distributed import DistInfo
from pretrain.model import Transformer


class Engine(ABC):
    """One strategy for holding and updating a model's states across ranks."""

    def __init__(self, cfg: RunConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = Transformer(cfg.model, cfg.train.activation_checkpointing)
        self.measured_state_bytes: dict[str, float] | None = None

    @property
    def autocast(self):
        enabled = self.cfg.train.precision == "bf16-mixed"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)

    @abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of one micro-batch."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, poison: bool = False) -> None:
        """Backpropagate one micro-batch (scaled for accumulation). `poison`: this step is being
        skipped; the engine must make sure it does not update the weights."""

    @abstractmethod
    def step(self, skip: bool) -> float | None:
        """End of a step: clip, update (unless `skip`), zero the gradients; returns the gradient norm."""

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @abstractmethod
    def save(self, path: Path) -> None:
        """Collective: write model and optimizer states under `path`."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Collective: read what `save` wrote (checking the model shape)."""

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct local storages behind `tensors` (DTensors count their local shard)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "to_local"):
            t = t.to_local()
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                yield value
