"""`launch`: run a run config on this machine, across nodes, or through SLURM, after a preflight.

    launch local run.yaml --nproc 2 [-- train.steps=10]
    launch nodes run.yaml --hostfile hosts --node-rank 0 --master-addr 10.0.0.1
    launch slurm run.yaml --nodes 4 --gpus-per-node 8 [--submit]

Every launch first recomputes the plan for the actual world size and refuses a job that will not
fit (unless --force), checks the data and tokenizer paths, and prints the exact command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from launch.commands import (
    MAX_PROCS_PER_NODE,
    deepspeed_local,
    engine_launcher,
    parse_hostfile,
    torchrun_local,
    torchrun_node,
)
from launch.preflight import LaunchError, preflight
from planner.core import checks
from planner.emit.command import render


def _load(config: str, overrides: tuple[str, ...]):
    """The run config with its overrides (each refused where YAML would not read it as typed: it also reaches
    the command line or batch script as typed)."""
    from planner.core.schema import load_config

    return load_config(config, list(overrides))


def _run(cmd: list[str], dry_run: bool) -> int:
    click.echo(f"+ {render(cmd)}")
    if dry_run:
        return 0
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Start pretraining jobs from run configs (run.yaml from `planner emit`)."""


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it), so concurrent jobs never collide."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _common(f):
    f = click.option("--force", is_flag=True, help="Launch even if the planner says it will not fit.")(f)
    f = click.option("--verify", is_flag=True, help="Also dry-run the real model and engine at this world size "
                     "(`planner verify`, fake tensors) and refuse if its measured peak will not fit.")(f)
    f = click.option("--dry-run", is_flag=True, help="Check and print the command, start nothing.")(f)
    f = click.argument("overrides", nargs=-1)(f)
    return click.argument("config", type=click.Path())(f)


@cli.command()
@_common
@click.option("--nproc", type=click.IntRange(1, MAX_PROCS_PER_NODE), default=1, show_default=True, help="Processes (GPUs) on this machine.")
@click.option("--master-port", type=int, help="For the deepspeed launcher (default: a port free right now).")
def local(config, overrides, force, verify, dry_run, nproc, master_port):
    """Run on this machine with torchrun, or the deepspeed launcher when the engine is DeepSpeed."""
    if master_port is None:
        master_port = free_port()
    checks.port("--master-port", master_port)
    cfg = _load(config, overrides)
    check = preflight(cfg, nproc, nproc, force, verify)
    click.echo(f"preflight: {check.message}")
    if engine_launcher(cfg) == "deepspeed":
        cmd = deepspeed_local(config, nproc, master_port, list(overrides))
    else:
        cmd = torchrun_local(config, nproc, list(overrides))
    raise click.exceptions.Exit(_run(cmd, dry_run))


@cli.command()
@_common
@click.option("--hostfile", required=True, type=click.Path(), help="`hostname slots=N` per node.")
@click.option("--node-rank", type=int, required=True, help="This node's index in the hostfile.")
@click.option("--master-addr", required=True, help="Address of node 0 (the rendezvous endpoint).")
@click.option("--master-port", type=int, required=True, help="A port free on node 0, the same on every node.")
@click.option("--max-restarts", type=int, default=3, show_default=True, help="torchrun restarts on failure.")
def nodes(config, overrides, force, verify, dry_run, hostfile, node_rank, master_addr, master_port, max_restarts):
    """Run this node's share of a multi-node job (torchrun, c10d rendezvous)."""
    checks.host("--master-addr", master_addr)
    checks.port("--master-port", master_port)
    checks.integer("--max-restarts", max_restarts, 0, 1000)
    hosts = parse_hostfile(hostfile)
    per_node = hosts[0][1]
    if any(slots != per_node for _, slots in hosts):
        raise LaunchError(f"--hostfile: every node needs the same slots (found {sorted({s for _, s in hosts})})")
    cfg = _load(config, overrides)
    check = preflight(cfg, per_node * len(hosts), per_node, force, verify)
    click.echo(f"preflight: {check.message}")
    cmd = torchrun_node(config, len(hosts), per_node, node_rank, master_addr, master_port, cfg.name, max_restarts,
                        list(overrides))
    raise click.exceptions.Exit(_run(cmd, dry_run))


@cli.command()
@_common
@click.option("--nodes", "num_nodes", type=click.IntRange(1), required=True)
@click.option("--gpus-per-node", type=click.IntRange(1), default=8, show_default=True)
@click.option("--partition", help="SLURM partition.")
@click.option("--time", "time_limit", help="SLURM time limit (default: the plan's wall-clock with a margin).")
@click.option("--max-time", default="48:00:00", show_default=True,
              help="The partition's limit: a longer plan becomes a chain of dependent jobs (submit-launch.sh).")
@click.option("--env-setup", help="Line that activates the environment (default: this virtual environment).")
@click.option("--out", "script_path", type=click.Path(),
              help="Where to write the script (default: slurm-launch.sbatch beside run.yaml; the emitted "
                   "slurm.sbatch is never overwritten).")
@click.option("--submit", is_flag=True, help="Submit with sbatch after writing.")
def slurm(config, overrides, force, verify, dry_run, num_nodes, gpus_per_node, partition, time_limit, max_time,
          env_setup, script_path, submit):
    """Write (and with --submit, submit) a SLURM batch script for the job; --dry-run writes nothing."""
    from planner.core.io import atomic_write_text
    from planner.emit import slurm as slurm_scripts

    if time_limit is not None:
        checks.slurm_time("--time", time_limit)
    if partition is not None:
        checks.partition("--partition", partition)
    cfg = _load(config, overrides)
    world = num_nodes * gpus_per_node
    check = preflight(cfg, world, gpus_per_node, force, verify)
    click.echo(f"preflight: {check.message}")
    job_dir = Path(config).resolve().parent
    hours = check.plan.compute.wall_days * 24 if check.plan else None  # the plan's wall-clock at this size
    time, jobs = slurm_scripts.job_layout(hours, max_time, time_limit)
    script = slurm_scripts.sbatch_script(job_dir=job_dir, name=cfg.name, nodes=num_nodes, per_node=gpus_per_node,
                                         time=time, partition=partition, max_restarts=3, overrides=list(overrides),
                                         env_setup=env_setup or slurm_scripts.default_env_setup())
    path = Path(script_path or job_dir / "slurm-launch.sbatch")
    chain = path.with_name(f"submit-{path.stem}.sh")
    _refuse_foreign(path, "#!/usr/bin/env bash\n#SBATCH", job_dir / "slurm.sbatch")
    _refuse_foreign(chain, "#!/usr/bin/env bash\n# Emitted by", job_dir / "submit.sh")
    if dry_run:
        click.echo(f"would write {path} (--time {time}, {jobs} chained job(s)) and {chain}; nothing written")
        click.echo(script, nl=False)
        return
    atomic_write_text(path, script).chmod(0o755)
    atomic_write_text(chain, slurm_scripts.submit_script(path.parent, jobs, path.name)).chmod(0o755)
    click.echo(f"wrote {path} (--time {time}) and {chain} ({jobs} chained job(s))")
    if submit:
        if shutil.which("sbatch") is None:
            raise LaunchError("--submit: sbatch is not on PATH (not a SLURM login node?); the script is written")
        raise click.exceptions.Exit(_run(["bash", str(chain)], False))


def _refuse_foreign(path: Path, ours: str, emitted: Path) -> None:
    """--out may replace a script an earlier `launch slurm` wrote (it starts with `ours`), never another file:
    the run config, a user's notes, or the scripts `planner emit` wrote beside run.yaml (`emitted`)."""
    if path.resolve() == emitted.resolve():
        raise LaunchError(f"--out: {path} is the script `planner emit` wrote; choose another name")
    if path.exists() and (not path.is_file() or not path.read_text(errors="replace").startswith(ours)):
        raise LaunchError(f"--out: {path} exists and is not a script `launch slurm` wrote; choose another name")


@cli.command()
@click.option("--out", "out_dir", default="demo", show_default=True, type=click.Path(), help="Folder for everything.")
@click.option("--engine", type=click.Choice(["deepspeed", "fsdp"]), default="deepspeed", show_default=True,
              help="The held-out run's engine: DeepSpeed ZeRO-2 or FSDP full shard, on 2 processes.")
@click.option("--quick", is_flag=True, help="A ladder at half the budget (the test suite's).")
@click.option("--sample", is_flag=True, help="The earlier small demo: the shipped templated sample alone (~1.5 min).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo(out_dir, engine, quick, sample, no_progress):
    """Curate real installed text, train a model ladder, predict a held-out run, train it, report, re-plan or
    refuse (CPU, ~5 min)."""
    from launch.demo import run_demo

    run_demo(out_dir, engine=engine, quick=quick, progress=not no_progress, sample=sample)


def main(argv: list[str] | None = None) -> int:
    from planner.cli import run_group

    return run_group(cli, "launch", argv)


if __name__ == "__main__":
    sys.exit(main())
