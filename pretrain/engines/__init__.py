"""Training engines behind one small interface (`Engine`); the train loop never branches on which.

- `single` / `ddp`: plain PyTorch (DDP when WORLD_SIZE > 1), bf16 autocast over fp32 weights.
- `deepspeed`: DeepSpeed ZeRO 0-3 with bf16, optional CPU offload, from an emitted ds_config.json.
- `fsdp`: PyTorch FSDP2 `fully_shard` (full, shard-grad-op, hybrid) with a bf16 mixed-precision policy;
  with `pp > 1`, a `torch.distributed.pipelining` schedule over stages that are each FSDP2 (+ TP) inside.
"""

from __future__ import annotations

from planner.core.schema import RunConfig
from pretrain.distributed import DistInfo
from pretrain.engines.base import Engine


def build_engine(cfg: RunConfig, info: DistInfo) -> Engine:
    name = cfg.parallel.engine  # the plan's engine, resolved for this world size by `ParallelPlan.with_world`
    if name in ("single", "ddp"):
        from pretrain.engines.torch_engine import TorchEngine

        return TorchEngine(cfg, info)
    if name == "fsdp" and cfg.parallel.pp > 1:
        from pretrain.engines.pipeline import PipelineEngine

        return PipelineEngine(cfg, info)
    if name == "fsdp":
        from pretrain.engines.fsdp import FSDPEngine

        return FSDPEngine(cfg, info)
    from pretrain.engines.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(cfg, info)
