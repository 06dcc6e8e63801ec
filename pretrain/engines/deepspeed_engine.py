"""DeepSpeed ZeRO 0-3 with bf16 and optional CPU offload, driven by an emitted ds_config.json.

The config's batch sizes must agree with the run config (micro-batch x accumulation x data
parallel = train_batch_size); DeepSpeed's own config class checks that at start-up. On CPU the
optimizer is torch's AdamW (DeepSpeed's fused/cpu Adam would compile C++ ops first).
"""

from __future__ import annotations

from pathlib import Path

import torch

from planner.core.schema import DS_BATCH_KEYS, ConfigError, load_ds_config
from planner.emit.deepspeed import deepspeed_config
from pretrain.engines.base import Engine, optimizer_state_tensors, tensor_bytes
from pretrain.engines.checks import check_model_config, write_model_config
from pretrain.engines.torch_engine import make_adamw


def ds_config_for(cfg) -> dict:
    """The DeepSpeed config this run needs: the same function `planner emit` writes ds_config.json with."""
    return deepspeed_config(cfg.parallel, bf16=cfg.train.precision == "bf16-mixed", grad_clip=cfg.optim.grad_clip,
                            cpu=not torch.cuda.is_available())


def _flat(value) -> list:
    """Tensors in a tensor, a list of tensors, or a list of lists (DeepSpeed keeps all three)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat(item)]
    return []


class DeepSpeedEngine(Engine):
    def __init__(self, cfg, info):
        import deepspeed

        super().__init__(cfg, info)
        ds_config = ds_config_for(cfg)
        if cfg.engine.ds_config:
            given = load_ds_config(cfg.engine.ds_config)
            for key in DS_BATCH_KEYS:
                if key in given and given[key] != ds_config[key]:
                    raise ConfigError(f"engine.ds_config: {key} = {given[key]} disagrees with the run config "
                                      f"({ds_config[key]}: parallel.micro_batch x parallel.grad_accum x {info.world} ranks)")
            ds_config = {**given, "zero_allow_untested_optimizer": True}
            if not torch.cuda.is_available():  # an emitted GPU config asks for pinned memory and overlap
                ds_config["zero_optimization"] = {**ds_config.get("zero_optimization", {}), "overlap_comm": False}
        optimizer = make_adamw(self.model.parameters(), cfg)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=ds_config)
        self.inner = optimizer  # DeepSpeed calls this torch AdamW on its fp32 partitions
        self.measure_states_at_first_update(self.inner, self._state_bytes)

    def _state_bytes(self) -> dict[str, float]:
        zero = self.optimizer
        fp32 = [t for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat",
                               "fp32_groups_flat_partition", "fp32_groups") for t in _flat(getattr(zero, name, None))]
        params16 = [getattr(p, "ds_tensor", p) for p in self.ds.module.parameters()]
        grads = [p.grad for p in self.ds.module.parameters()] + [t.grad for t in fp32]
        grads += [g for g in (getattr(zero, "averaged_gradients", None) or {}).values() if isinstance(g, torch.Tensor)]
        grads += [t for t in getattr(zero, "fp32_groups_gradients_flat", []) or []]
        return {"weights": tensor_bytes(params16), "master_weights": tensor_bytes(fp32),
                "gradients": tensor_bytes(grads), "optimizer": tensor_bytes(optimizer_state_tensors(self.inner))}

    def forward(self, x, y):
        return self.ds(x.to(self.info.device), y.to(self.info.device))

    def backward(self, loss, poison=False):
        if poison:  # DeepSpeed skips an update whose gradients are non-finite (bf16 check_grad_overflow)
            loss = loss * float("nan")
        self.ds.backward(loss)
        self.ds.step()  # updates only at the accumulation boundary (the step's last micro-batch)

    def step(self, skip):
        norm = self.ds.get_global_grad_norm()
        return None if skip or norm is None else float(norm)

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def save(self, path: Path) -> None:
        path = Path(path)
        self.ds.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)
        write_model_config(path, self.cfg.model, self.info.is_main)

    def load(self, path: Path) -> None:
        path = Path(path)
        check_model_config(path, self.cfg.model)
        loaded, _ = self.ds.load_checkpoint(str(path.parent), tag=path.name)
        if loaded is None:
            raise ConfigError(f"checkpoint {path}: DeepSpeed could not load it")
