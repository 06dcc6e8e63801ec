"""Where the curation passes (`passes`) run: datatrove's executors, locally, on Slurm, or on Ray.

    python -m pretrain.data.pipeline CONFIG curate --executor local|slurm|ray --tasks N --workers W

Each pass is a datatrove executor run with its own logging folder (`work/logs/<pass>`): per-task
logs and progress, completion markers, and `skip_completed`, so a rerun does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import nullcontext, redirect_stderr
from pathlib import Path

from planner.core import checks
from planner.core.errors import PlannerError
from pretrain.data.chunks import default_tasks
from pretrain.data.config import DataPipelineConfig, sources_of
from pretrain.data.passes import passes
from pretrain.data.workdir import WorkDir, check_layout

#: datatrove's executors that `curate` runs on
EXECUTORS = ("local", "slurm", "ray")
#: Bounds on the split: each task leaves a completion marker and a log file, and Slurm's array
#: size (MaxArraySize) defaults to 1001; far beyond these a typo, not a plan, is the likely cause.
MAX_TASKS, MAX_WORKERS = 100_000, 4096


def curate(cfg: DataPipelineConfig, executor: str = "local", tasks: int | None = None, workers: int = 1,
           quiet: bool = False) -> dict:
    """Run the five passes (each skips its finished tasks); returns the merged funnel report (also
    written beside the output), or {"submitted": ...} and where the report will appear once Slurm has
    the jobs.

    Local: one pass after the other in this process and its workers. Ray: the last pass runs its
    dependencies first, each waiting for the one before, on the cluster `ray.init()` finds
    (`RAY_ADDRESS`, or a local one it starts). Slurm: the passes are submitted as array jobs chained
    by `afterok` dependencies, and this returns at once.

    datatrove's console log (pipeline, per-task progress and stats) goes to stdout, or nowhere when
    `quiet`, so that stderr holds only our one-line errors; each task's full log stays in
    `work/logs/<pass>/logs/task_NNNNN.log` either way. `tasks`: by default one per input chunk
    (`chunks.default_tasks`)."""
    if tasks is None:
        tasks = default_tasks(sources_of(cfg), cfg.curate.chunk_bytes)
    checks.integer("--tasks", tasks, 1, MAX_TASKS)
    checks.integer("--workers", workers, 1, MAX_WORKERS)
    if executor == "slurm":  # datatrove pastes the logging folders (under out_dir) unquoted into its job scripts
        checks.shell_word("out_dir (with --executor slurm)", str(Path(cfg.out_dir).resolve()))
    check_layout(cfg, tasks)
    wd = WorkDir.of(cfg)
    previous, chain = None, passes(cfg, tasks)
    for name, pipeline, n in chain:
        ex = make_executor(executor, pipeline, n, workers, wd.logs(name), cfg, depends=previous)
        if executor == "local":
            _run(ex, cfg, name, quiet)
        previous = ex
    if executor == "ray":
        _run(previous, cfg, "all", quiet)
    elif executor == "slurm" and previous.get_incomplete_ranks():
        refuse_if_queued(cfg, [name for name, _, _ in chain])
        try:
            previous.run()  # submitting the last pass submits the unfinished ones before it, chained
        except (subprocess.CalledProcessError, IndexError, ValueError) as exc:  # sbatch refused, or said nothing
            detail = getattr(exc, "stderr", None) or exc
            raise PlannerError(f"--executor slurm: sbatch did not submit the curation "
                               f"({' '.join(str(detail).split())[:200]}); passes already submitted stay queued") from None
        return {"submitted": True, "logs": str(wd.logs()), "report": str(wd.report_json)}
    return json.loads(wd.report_json.read_text())


def make_executor(kind: str, pipeline: list, tasks: int, workers: int, logging_dir: Path, cfg: DataPipelineConfig,
                  depends=None):
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(logging_dir),
                                     skip_completed=True, start_method="fork", depends=depends)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        s = cfg.curate.slurm
        return SlurmPipelineExecutor(pipeline, tasks=tasks, time=s.time, partition=s.partition,
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
                                     workers=workers, job_name=slurm_job_name(cfg, logging_dir.name),
                                     logging_dir=str(logging_dir), venv_path=s.venv_activate or None,
                                     sbatch_args=dict(s.sbatch_args or {}), depends=depends, skip_completed=True)
    if kind == "ray":
        return _ray_executor(pipeline, tasks, workers, logging_dir, depends)
    raise PlannerError(f"--executor: {kind!r} is not one of {', '.join(EXECUTORS)}")


def _ray_executor(pipeline: list, tasks: int, workers: int, logging_dir: Path, depends):
    """Ray is an optional extra: without it, say how to get it instead of a traceback."""
    try:
        import ray
    except ImportError:
        raise PlannerError("--executor ray: the ray package is not installed here (pip install -e '.[ray]' "
                           "-c constraints.txt); use --executor local or slurm") from None
    from datatrove.executor import RayPipelineExecutor

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        try:  # RAY_ADDRESS names a running cluster
            ray.init(include_dashboard=False, log_to_driver=False)
        except (ValueError, ConnectionError, TimeoutError) as exc:
            raise PlannerError(f"--executor ray: cannot join the Ray cluster at RAY_ADDRESS={address!r} "
                               f"({' '.join(str(exc).split())[:160]})") from None
    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                               skip_completed=True, depends=depends)


def slurm_job_name(cfg: DataPipelineConfig, pass_name: str) -> str:
    """`<curate.slurm.job_name>-<pass>-<tag of out_dir>`: this curation's jobs, told apart from others'."""
    tag = hashlib.sha256(str(Path(cfg.out_dir).resolve()).encode()).hexdigest()[:8]
    return f"{cfg.curate.slurm.job_name}-{pass_name}-{tag}"


def refuse_if_queued(cfg: DataPipelineConfig, pass_names: list[str]) -> None:
    """A rerun while this curation's jobs are queued or running would submit their tasks a second time."""
    names = ",".join(slurm_job_name(cfg, n) for n in pass_names)
    try:
        done = subprocess.run(["squeue", "-h", "-o", "%i", "-n", names], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PlannerError("--executor slurm: squeue is not on PATH; run this where Slurm's commands are") from None
    except subprocess.TimeoutExpired:
        raise PlannerError("--executor slurm: squeue did not answer in 60 s; nothing submitted, try again") from None
    if done.returncode:  # not knowing what is queued, submitting could run every task twice
        raise PlannerError(f"--executor slurm: squeue failed ({' '.join(done.stderr.split())[:200]}); nothing "
                           "submitted")
    queued = done.stdout.split()
    if queued:
        raise PlannerError(f"--executor slurm: jobs {', '.join(queued)} of this curation are still queued or "
                           "running; wait for them (squeue), or scancel them to submit again")


def _run(ex, cfg: DataPipelineConfig, name: str, quiet: bool) -> None:
    from datatrove.utils.logging import setup_default_logger

    with open(os.devnull, "w") if quiet else nullcontext(sys.stdout) as sink, redirect_stderr(sink):
        # loguru keeps the stderr it was given at import: hand it the sink too, or the main process's own
        # lines (skipped tasks, the merged stats of a rerun) reach the real stderr despite --quiet
        setup_default_logger()
        try:
            ex.run()
        except OSError as e:  # datatrove's own writes (task logs, markers) name no file
            if e.filename:
                raise
            raise PlannerError(f"curate: {e.strerror or e} while writing under {cfg.out_dir} (pass {name})") from None
        finally:
            sys.stderr.flush()
    setup_default_logger()  # back to the real stderr
