"""The training command, built in one place for every launcher and script.

Every way a job starts goes through here: one process (`python -m pretrain.train`), torchrun on one
node (`--standalone`) or many (c10d rendezvous, also under `srun` in the sbatch script), and the
deepspeed launcher (one node, or a hostfile). `launch` runs the lists; `planner emit` and the ladder
write them into scripts with `render`, where a `ShellExpr` (a variable the script's shell expands,
like `"$NODE_RANK"`) is written as is and every other value is shell-quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

TRAIN_MODULE = "pretrain.train"


class ShellExpr(str):
    """A value the script's shell expands when it runs (`"$SLURM_NNODES"`); never quoted by `render`."""


def _train(config: str, overrides: Sequence[str]) -> list[str]:
    return ["-m", TRAIN_MODULE, "--config", config, *overrides]


def python_command(python: str, config: str, overrides: Sequence[str] = ()) -> list[str]:
    """One process: the trainer itself."""
    return [python, *_train(config, overrides)]


def torchrun_command(launcher: Sequence[str], config: str, *, nproc: int | str, nnodes: int | str = 1,
                     node_rank: int | str | None = None, rdzv_endpoint: str | None = None,
                     rdzv_id: str | None = None, max_restarts: int | None = None, rdzv_timeout_s: int | None = None,
                     overrides: Sequence[str] = ()) -> list[str]:
    """torchrun: `--standalone` on one node without an endpoint, else a c10d rendezvous at `rdzv_endpoint`."""
    if rdzv_endpoint is None:
        args = ["--standalone", flag("nproc_per_node", nproc)]
    else:
        args = [flag("nnodes", nnodes), flag("nproc_per_node", nproc),
                *([flag("node_rank", node_rank)] if node_rank is not None else []),
                "--rdzv_backend=c10d", flag("rdzv_endpoint", rdzv_endpoint), flag("rdzv_id", rdzv_id)]
    if max_restarts is not None:
        args.append(flag("max_restarts", max_restarts))
    if rdzv_timeout_s is not None:
        args.append(f"--rdzv_conf=timeout={rdzv_timeout_s}")
    return [*launcher, *args, *_train(config, overrides)]


def deepspeed_command(launcher: str, config: str, *, nproc: int, master_port: int | str, nnodes: int = 1,
                      hostfile: str | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """The deepspeed launcher: this node's GPUs, or every node of `hostfile` (reached over ssh)."""
    hosts = ["--hostfile", hostfile, "--num_nodes", str(nnodes)] if hostfile else []
    port = master_port if isinstance(master_port, ShellExpr) else str(master_port)
    return [launcher, *hosts, "--num_gpus", str(nproc), "--master_port", port, "--module", TRAIN_MODULE,
            "--config", config, *overrides]


def render(cmd: Sequence[str]) -> str:
    """`cmd` as one shell line: every value quoted, except the shell expressions."""
    return " ".join(arg if isinstance(arg, ShellExpr) else shlex.quote(str(arg)) for arg in cmd)


def flag(name: str, value: str | int) -> str:
    """`--name=value`, unquoted when `value` is a shell expression (the whole argument then is one)."""
    text = f"--{name}={value}"
    return ShellExpr(text) if isinstance(value, ShellExpr) else text
