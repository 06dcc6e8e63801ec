"""SLURM batch scripts that work as submitted: absolute paths, logs in the job folder, a time limit from
the plan, and a chain of dependent jobs when the plan is longer than the cluster allows.

- `--chdir` and `--output`/`--error` point into the job folder, which exists (the script lives
  there): Slurm opens the log files before the script runs and does not create folders.
- `--time` is the plan's wall-clock with a margin (`TIME_MARGIN`, plus start-up), capped by
  `max_time` (48 h, a common partition limit). When the plan needs more, `submit.sh` submits
  ceil(plan / cap) jobs, each `--dependency=afterany` on the one before; every job resumes from the
  run's `latest` checkpoint (the trainer does this by itself), and a job that finds the run
  finished exits at once.
- The environment is activated by one line the user sets once (`env_setup`, default: the virtual
  environment `planner emit` ran from).
- NCCL: `TORCH_NCCL_ASYNC_ERROR_HANDLING` (the old `NCCL_ASYNC_ERROR_HANDLING` is deprecated).
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

from planner.core import checks
from planner.core.errors import PlannerError
from planner.emit.command import ShellExpr, render, torchrun_command

#: Extra wall-clock on top of the plan: MFU rarely holds from the first step, and evals/checkpoints cost.
TIME_MARGIN = 1.10
#: Start-up per job: scheduling, environment, rendezvous, loading the checkpoint.
STARTUP_HOURS = 0.25
#: A job id derived port: distinct for concurrent jobs on a node, no fixed port.
SLURM_PORT_SH = "$((20000 + SLURM_JOB_ID % 20000))"
MAX_CHAIN = 1000


def parse_time_hours(text: str) -> float:
    """Hours in a Slurm time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)."""
    checks.slurm_time("--max-time", text)
    if text in ("UNLIMITED", "INFINITE"):
        return math.inf
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    else:  # M, M:S, H:M:S
        h, m, s = parts if len(parts) == 3 else (0, *parts, 0)[:3]  # M -> 0:M:0, M:S -> 0:M:S
    return int(days or 0) * 24 + h + m / 60 + s / 3600


def format_time(hours: float) -> str:
    """Hours -> D-HH:MM:SS, rounded up to the minute."""
    minutes = math.ceil(hours * 60)
    d, rem = divmod(minutes, 24 * 60)
    return f"{d}-{rem // 60:02d}:{rem % 60:02d}:00"


def job_layout(plan_hours: float | None, max_time: str, time: str | None) -> tuple[str, int]:
    """(--time per job, number of chained jobs)."""
    if time is not None:
        checks.slurm_time("--time", time)
        return time, 1
    cap = parse_time_hours(max_time)
    if plan_hours is None:
        return max_time, 1
    need = plan_hours * TIME_MARGIN + STARTUP_HOURS
    if need <= cap:
        return format_time(need), 1
    per_job = cap - STARTUP_HOURS
    if per_job <= 0:
        raise PlannerError(f"--max-time: {max_time} leaves no time to train after start-up ({STARTUP_HOURS} h)")
    jobs = math.ceil(plan_hours * TIME_MARGIN / per_job)
    if jobs > MAX_CHAIN:
        raise PlannerError(f"--max-time: the plan needs {jobs} chained jobs of {max_time}; raise --max-time or GPUs")
    return max_time, jobs


def default_env_setup() -> str:
    """`source <venv>/bin/activate` for the environment this runs in, or a placeholder to edit."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {shlex.quote(str(activate))}"
    return ": # set up your environment here (module load ...; source .../bin/activate)"


def log_pattern(job_dir: Path, kind: str) -> str:
    """sbatch's --output / --error filename pattern in `job_dir`: a % of the folder's own name doubled, as the
    pattern syntax writes a literal one (%j would otherwise become the job id)."""
    return str(job_dir).replace("%", "%%") + f"/slurm-%x-%j.{kind}"


def sbatch_script(*, job_dir: Path, name: str, nodes: int, per_node: int, time: str, partition: str | None,
                  env_setup: str, max_restarts: int, overrides: list[str] | None = None) -> str:
    q = shlex.quote
    job_dir = job_dir.resolve()
    checks.no_control("--env-setup", env_setup)
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={q(name)}",
        f"#SBATCH --chdir={q(str(job_dir))}",
        f"#SBATCH --output={q(log_pattern(job_dir, 'out'))}",
        f"#SBATCH --error={q(log_pattern(job_dir, 'err'))}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={per_node}",
        f"#SBATCH --cpus-per-task={max(8, per_node * 8)}",
        f"#SBATCH --time={q(time)}",
        *([f"#SBATCH --partition={q(partition)}"] if partition else []),
        "# Emitted by `planner emit`; every value is validated and shell-quoted. Resumes from `latest`.",
        "set -euo pipefail",
        env_setup,
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
        render(["srun", *torchrun_command(
            ["torchrun"], str(job_dir / "run.yaml"), nproc=per_node, nnodes=ShellExpr('"$SLURM_NNODES"'),
            rdzv_endpoint=ShellExpr(f'"$head_node:${{MASTER_PORT:-{SLURM_PORT_SH}}}"'),
            rdzv_id=ShellExpr('"$SLURM_JOB_ID"'), max_restarts=max_restarts, overrides=overrides or [])]),
    ]
    return "\n".join(lines) + "\n"


def submit_script(job_dir: Path, jobs: int, sbatch_name: str = "slurm.sbatch") -> str:
    """Submit `jobs` copies of the batch script, each starting after the previous one ends."""
    script = shlex.quote(str(job_dir.resolve() / sbatch_name))
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Emitted by `planner emit`: {jobs} chained job(s); each resumes the run from its latest checkpoint.",
        "set -euo pipefail",
        f"prev=$(sbatch --parsable {script})",
        'echo "submitted $prev"',
        f"for _ in $(seq 2 {jobs}); do",
        f'  prev=$(sbatch --parsable --dependency=afterany:"$prev" {script})',
        '  echo "submitted $prev (after the previous job)"',
        "done",
    ]) + "\n"
