"""Plain PyTorch: one process, or DDP across ranks; bf16 autocast over fp32 weights and AdamW."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from planner.core.io import atomic_write_bytes
from pretrain.engines.base import Engine, parameter_state_bytes
from pretrain.engines.checks import check_model_state


def make_adamw(params, cfg) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
                             foreach=False)


class TorchEngine(Engine):
    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.model.to(info.device)
        self.wrapped = self.model
        if info.world > 1:
            self.wrapped = DistributedDataParallel(self.model, gradient_as_bucket_view=True)
        self.optimizer = make_adamw(self.model.parameters(), cfg)
        self.measure_states_at_first_update(self.optimizer, lambda: parameter_state_bytes(
            self.model, self.optimizer, params_are_master=False))

    def forward(self, x, y):
        with self.autocast:
            return self.wrapped(x.to(self.info.device), y.to(self.info.device))

    def backward(self, loss, poison=False):
        if not poison:  # the decision is agreed across ranks, so DDP's collective backward stays in step
            (loss / self.cfg.parallel.grad_accum).backward()

    def step(self, skip):
        norm = None
        if not skip:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        if self.info.is_main:
            import io

            buf = io.BytesIO()
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "model_config": vars(self.cfg.model)}, buf)
            atomic_write_bytes(Path(path) / "model_optim.pt", buf.getvalue())

    def load(self, path: Path) -> None:
        state = torch.load(Path(path) / "model_optim.pt", map_location=self.info.device, weights_only=True)
        check_model_state(state.get("model_config"), self.cfg.model, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
