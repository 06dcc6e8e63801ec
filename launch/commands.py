"""This machine's launchers for a run config: torchrun and the deepspeed launcher of this environment,
through the one command builder (`planner.emit.command`); and the hostfile they read."""

from __future__ import annotations

import sys
from pathlib import Path

from launch.preflight import LaunchError
from planner.core.schema import RunConfig
from planner.emit.command import deepspeed_command, torchrun_command

#: torchrun of this interpreter's environment.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
#: Processes a node runs: one per GPU (8-16 a node today); CPU tests run a few.
MAX_PROCS_PER_NODE = 1024


def parse_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """DeepSpeed/MPI hostfile: one `hostname slots=N` per line; blank lines and # comments allowed."""
    hosts = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise LaunchError(f"--hostfile: cannot read {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = parts[1][len("slots="):] if len(parts) == 2 and parts[1].startswith("slots=") else ""
        if not slots.isdigit() or not 1 <= int(slots) <= MAX_PROCS_PER_NODE:
            raise LaunchError(f"--hostfile: line {number} {raw.strip()!r} is not `hostname slots=N` with N from 1 "
                              f"to {MAX_PROCS_PER_NODE}")
        hosts.append((parts[0], int(slots)))
    if not hosts:
        raise LaunchError(f"--hostfile: {path} lists no hosts")
    return hosts


def torchrun_local(config: str, nproc: int, overrides: list[str]) -> list[str]:
    return torchrun_command(TORCHRUN, config, nproc=nproc, overrides=overrides)


def deepspeed_local(config: str, nproc: int, port: int, overrides: list[str]) -> list[str]:
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    return deepspeed_command(launcher, config, nproc=nproc, master_port=port, overrides=overrides)


def torchrun_node(config: str, nnodes: int, nproc: int, node_rank: int, master_addr: str, port: int,
                  run_id: str, max_restarts: int, overrides: list[str]) -> list[str]:
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"--node-rank: {node_rank} is outside the {nnodes} node(s) of the hostfile (0..{nnodes - 1})")
    return torchrun_command(TORCHRUN, config, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                            rdzv_endpoint=f"{master_addr}:{port}", rdzv_id=run_id, max_restarts=max_restarts,
                            rdzv_timeout_s=300, overrides=overrides)


def engine_launcher(cfg: RunConfig) -> str:
    return "deepspeed" if cfg.parallel.engine == "deepspeed" else "torchrun"
