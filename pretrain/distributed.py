"""Process-group set-up from the launcher's environment (torchrun, the deepspeed launcher, srun + torchrun)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from planner.core.errors import PlannerError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: The engines that build on a process group (a device mesh, DeepSpeed's comm) even on one process.
GROUP_ENGINES = ("fsdp", "deepspeed")


def _env_int(name: str, default: int, lo: int) -> int:
    """A launcher's integer variable, or one line naming it."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if value < lo:
        raise PlannerError(f"{name}: {raw!r} in the environment must be an integer of at least {lo} (as torchrun sets it)")
    return value


def _single_process_rendezvous() -> None:
    """Run without a launcher as torchrun would run one process: rank 0 of 1 on a free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(port))):
        os.environ.setdefault(name, value)


def init_distributed(engine: str, backend: str | None = None, timeout_s: int = 600) -> DistInfo:
    """Start the process group when WORLD_SIZE > 1 (gloo on CPU, nccl on GPU), or for an engine that needs one
    (`GROUP_ENGINES`) on one process; a single process started without a launcher gets torchrun's variables."""
    if engine in GROUP_ENGINES and "WORLD_SIZE" not in os.environ:
        _single_process_rendezvous()
    world = _env_int("WORLD_SIZE", 1, 1)
    rank, local_rank = _env_int("RANK", 0, 0), _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise PlannerError(f"RANK: {rank} in the environment must be below WORLD_SIZE {world}")
    if world > 1 and not {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        raise PlannerError(f"WORLD_SIZE: {world} processes need MASTER_ADDR and MASTER_PORT in the environment: "
                           "start them with `launch local run.yaml --nproc N` or torchrun")
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if engine == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
        if not cuda:  # the shared-memory comm op compiles C++ on first use; gloo needs none of it
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if cuda else "gloo")
        timeout = datetime.timedelta(seconds=timeout_s)
        if engine == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    return DistInfo(rank, local_rank, world, device)


def all_reduce_max(value: float, info: DistInfo) -> float:
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if info.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()
