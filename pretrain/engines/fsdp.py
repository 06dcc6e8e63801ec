"""PyTorch FSDP2 (`fully_shard`): full shard, shard-grad-op and hybrid shard, bf16 mixed precision,
composed with tensor parallelism on a 2-D (or, hybrid, 3-D) device mesh (`pretrain.engines.parallelize`).

Each transformer block is its own FSDP unit, then the root (torchtitan's layout). Mixed precision:
bf16 compute, fp32 gradient reduction, fp32 sharded parameters as the master copy. Checkpoints
use torch.distributed.checkpoint, which reshards on load (another world size works).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain.engines.base import Engine, model_class, parameter_state_bytes
from pretrain.engines.checks import check_model_config, write_model_config
from pretrain.engines.parallelize import build_mesh, loss_context, parallelize
from pretrain.engines.torch_engine import make_adamw


class FSDPEngine(Engine):
    def build_model(self):
        with torch.device("meta"):  # laid out before any weight exists (torchtitan's order)
            return model_class(self.cfg.model)(self.cfg.model)

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        plan = self.plan = cfg.parallel
        mesh = build_mesh(plan, info.device.type)
        bf16 = cfg.train.precision == "bf16-mixed"
        parallelize(self.model, plan, mesh, bf16=bf16, activation_checkpointing=cfg.train.activation_checkpointing,
                    checkpoint_every=cfg.train.activation_checkpointing_every)
        self.materialize(self.model)  # each rank allocates and fills its own shards only
        self.optimizer = make_adamw(self.model.parameters(), cfg)
        # under bf16 the sharded fp32 parameters are the master copy of the gathered bf16 weights; in fp32
        # there is no other copy, so they are the weights (the planner's lines, by the same names)
        self.measure_states_at_first_update(self.optimizer, lambda: parameter_state_bytes(
            self.model, self.optimizer, params_are_master=bf16), lambda: bf16)

    def forward(self, x, y):
        with loss_context(self.plan):
            loss = self.model(x.to(self.info.device), y.to(self.info.device))
        return loss

    def backward(self, loss, poison=False):
        # FSDP's backward is collective: every rank runs it; a poisoned step is dropped in `step`
        with loss_context(self.plan):
            (loss / self.plan.grad_accum).backward()

    def step(self, skip):
        norm = None
        if not skip:
            norm = clip_grad_norm(list(self.model.parameters()), self.cfg.optim.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
        write_model_config(path, self.cfg.model, self.info.is_main)

    def load(self, path: Path) -> None:
        check_model_config(path, self.cfg.model)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` over DTensor gradients that may live on different meshes (`grad_norm`):
    every gradient is scaled by the same factor. Returns the total norm before clipping."""
    meshes = {getattr(p.grad, "device_mesh", None) for p in params if p.grad is not None}
    if len(meshes) <= 1:  # one mesh (a dense decoder): torch's own
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(total.full_tensor() if hasattr(total, "full_tensor") else total)
    total = grad_norm(params)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as clip_grads_with_norm_ computes it
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.grad.mul_(float(coef))
    return float(total)


def grad_norm(params: list[torch.nn.Parameter], foreach: bool | None = None) -> torch.Tensor:
    """The 2-norm of `params`' gradients, a plain tensor. DTensor gradients may live on different meshes (under
    expert parallelism the experts' on (shard_mod_ep, ep), the rest on the shard mesh; under TP an encoder's MLM
    transform, whole on each TP rank, on the shard mesh beside the TP-split weights): each mesh's norm is completed
    over its ranks, the total is their root sum of squares."""
    from torch.nn.utils import get_total_norm

    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
    norms = []
    for grads in groups.values():
        norm = get_total_norm(grads, foreach=foreach)
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return torch.linalg.vector_norm(torch.stack(norms))
