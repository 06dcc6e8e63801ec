"""Command lines for each way of starting a job (lists of arguments, printed shell-quoted)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from launch.preflight import LaunchError
from pretrain.config import RunConfig

TRAIN_MODULE = ["-m", "pretrain.train"]


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
        if not slots.isdigit() or int(slots) < 1:
            raise LaunchError(f"--hostfile: line {number} {raw.strip()!r} is not `hostname slots=N` with N >= 1")
        hosts.append((parts[0], int(slots)))
    if not hosts:
        raise LaunchError(f"--hostfile: {path} lists no hosts")
    return hosts


def torchrun_local(config: str, nproc: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *TRAIN_MODULE, "--config", config, *overrides]


def deepspeed_local(config: str, nproc: int, port: int, overrides: list[str]) -> list[str]:
    launcher = str(Path(sys.executable).with_name("deepspeed"))
    return [launcher, "--num_gpus", str(nproc), "--master_port", str(port), "--module", "pretrain.train",
            "--config", config, *overrides]


def torchrun_node(config: str, nnodes: int, nproc: int, node_rank: int, master_addr: str, port: int,
                  run_id: str, max_restarts: int, overrides: list[str]) -> list[str]:
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"--node-rank: {node_rank} is outside the {nnodes} node(s) of the hostfile (0..{nnodes - 1})")
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={master_addr}:{port}",
            f"--rdzv_id={run_id}", f"--max_restarts={max_restarts}", "--rdzv_conf=timeout=300",
            *TRAIN_MODULE, "--config", config, *overrides]


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def engine_launcher(cfg: RunConfig) -> str:
    return "deepspeed" if cfg.parallel.engine == "deepspeed" else "torchrun"
