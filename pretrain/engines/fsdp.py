"""PyTorch FSDP2 (`fully_shard`): full shard, shard-grad-op and hybrid shard, bf16 mixed precision.

Each transformer block is its own FSDP unit, then the root (torchtitan's layout). Mixed precision:
bf16 compute, fp32 gradient reduction, fp32 sharded parameters as the master copy. Checkpoints
use torch.distributed.checkpoint, which reshards on load (another world size works).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from planner.io import atomic_write_json
from pretrain.config import ConfigError
from pretrain.engines.base import Engine, optimizer_state_tensors, tensor_bytes
from pretrain.engines.checks import check_model_state
from pretrain.engines.torch_engine import make_adamw


class FSDPEngine(Engine):
    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        e = cfg.engine
        if e.fsdp_mode == "no-shard":
            raise ConfigError("engine.fsdp_mode: no-shard is plain data parallelism; use engine.name=ddp")
        mesh = self._mesh(e.fsdp_mode, e.sharding_factor)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if cfg.train.precision == "bf16-mixed" else MixedPrecisionPolicy()
        kw = {"mesh": mesh, "mp_policy": mp, "reshard_after_forward": e.fsdp_mode != "shard-grad-op"}
        if e.offload != "none":
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        self.model.to(info.device)
        for block in self.model.blocks:
            fully_shard(block, **kw)
        fully_shard(self.model, **kw)
        self.optimizer = make_adamw(self.model.parameters(), cfg)
        self.optimizer.register_step_pre_hook(self._measure)

    def _mesh(self, mode: str, factor: int | None):
        world, device = self.info.world, self.info.device.type
        if mode != "hybrid":
            return init_device_mesh(device, (world,), mesh_dim_names=("shard",))
        factor = factor or world
        if world % factor:
            raise ConfigError(f"engine.sharding_factor: {factor} does not divide the world size {world}")
        return init_device_mesh(device, (world // factor, factor), mesh_dim_names=("replicate", "shard"))

    def _measure(self, *_):
        if self.measured_state_bytes is None and self.optimizer.state:
            params = list(self.model.parameters())
            self.measured_state_bytes = {
                "weights": 0, "master_weights": tensor_bytes(params), "gradients": tensor_bytes(p.grad for p in params),
                "optimizer": tensor_bytes(optimizer_state_tensors(self.optimizer))}

    def forward(self, x, y):
        return self.model(x.to(self.info.device), y.to(self.info.device))

    def backward(self, loss, poison=False):
        # FSDP's backward is collective: every rank runs it; a poisoned step is dropped in `step`
        (loss / self.cfg.train.grad_accum).backward()

    def step(self, skip):
        norm = None
        if not skip:
            total = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save(self, path: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
        if self.info.is_main:
            atomic_write_json(Path(path) / "model_config.json", vars(self.cfg.model))

    def load(self, path: Path) -> None:
        import json

        config_file = Path(path) / "model_config.json"
        if config_file.is_file():
            check_model_state(json.loads(config_file.read_text()), self.cfg.model, path)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
