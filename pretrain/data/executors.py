"""Curation at any scale on datatrove's executors: the same four passes locally, on Slurm, or on Ray.

    python -m pretrain.data.pipeline CONFIG curate --executor local|slurm|ray --tasks N --workers W

1. signatures (N tasks): read chunks, per-document steps, kept documents and dedup signatures;
2. buckets (one task per band + exact): candidate pairs;
3. clusters (1 task): Jaccard-verified duplicates in corpus order;
4. filter (N tasks): curated output per domain and task, and the exclusion list;
5. report (1 task): the funnel report merged over tasks and `exclusions.jsonl`, written where the
   jobs run (on Slurm, by the last job; a rerun after it finished returns the report).

Each pass is a datatrove executor run with its own logging folder (`work/logs/<pass>`): per-task
logs and progress, completion markers, and `skip_completed`, so a rerun does only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext, redirect_stderr
from functools import partial
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from planner.errors import PlannerError
from planner.io import atomic_open, atomic_write_json, atomic_write_text
from pretrain.data.documents import Source

NUM_PERM, MIN_RECALL = 100, 0.999


def recall_banding(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) with P(candidate | J = threshold) = 1 - (1 - J^rows)^bands >= MIN_RECALL, and as many
    rows as that allows (fewer false candidates). Every candidate is verified on its real Jaccard, so a
    false candidate costs only a check, while a missed one is a duplicate kept: banding is set for recall.
    For 0.8: 20 bands x 5 rows, P = 0.9996 (FineWeb's unverified 14 x 8 gives 0.92)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_RECALL:
            best = (bands, rows)
    return best


def work_dir(cfg) -> Path:
    return Path(cfg.out_dir) / "work"


def passes(cfg, tasks: int) -> list[tuple[str, list, int]]:
    from pretrain.data.global_dedup import ApplyExclusions, BucketBands, VerifyDuplicates
    from pretrain.data.pipeline import document_step, enabled_document_steps
    from pretrain.data.sharded import CurationStep, ReadChunks, WriteTaskOutput

    c, work = cfg.curate, str(work_dir(cfg))
    sources, domains = sources_of(cfg), domains_of(cfg)
    steps = enabled_document_steps(c)
    bands, rows = recall_banding(c.jaccard_threshold)
    first = [ReadChunks(sources, c.chunk_bytes, work),
             *[CurationStep(partial(document_step, c, name), name, work) for name in steps],
             WriteTaskOutput(work, domains, c.minhash_ngram, bands, rows)]
    return [("signatures", first, tasks),
            ("buckets", [BucketBands(work)], bands + 1),
            ("clusters", [VerifyDuplicates(work, domains, c.jaccard_threshold, c.exact_dedup, c.minhash_dedup)], 1),
            ("filter", [ApplyExclusions(work, cfg.out_dir, domains, steps)], tasks),
            ("report", [MergeReport(cfg, tasks)], 1)]


def domains_of(cfg) -> list[str]:
    return sorted({s.domain for s in cfg.sources})


def sources_of(cfg) -> list[Source]:
    return [Source(s.path, s.domain, s.format, s.text_field, s.id_field) for s in cfg.sources]


def make_executor(kind: str, pipeline: list, tasks: int, workers: int, logging_dir: Path, cfg, depends=None):
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
        try:
            import ray
        except ImportError:
            raise PlannerError("--executor ray: the ray package is not installed here (pip install -e '.[ray]' "
                               "-c constraints.txt); use --executor local or slurm") from None
        from datatrove.executor import RayPipelineExecutor

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)  # RAY_ADDRESS names a running cluster
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                                   skip_completed=True, depends=depends)
    from pretrain.data.pipeline import EXECUTORS

    raise PlannerError(f"--executor: {kind!r} is not one of {', '.join(EXECUTORS)}")


def slurm_job_name(cfg, pass_name: str) -> str:
    """`<curate.slurm.job_name>-<pass>-<tag of out_dir>`: this curation's jobs, told apart from others'."""
    tag = hashlib.sha256(str(Path(cfg.out_dir).resolve()).encode()).hexdigest()[:8]
    return f"{cfg.curate.slurm.job_name}-{pass_name}-{tag}"


def refuse_if_queued(cfg, pass_names: list[str]) -> None:
    """A rerun while this curation's jobs are queued or running would submit their tasks a second time."""
    names = ",".join(slurm_job_name(cfg, n) for n in pass_names)
    try:
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-n", names], capture_output=True, text=True,
                                timeout=60).stdout.split()
    except FileNotFoundError:
        raise PlannerError("--executor slurm: squeue is not on PATH; run this where Slurm's commands are") from None
    if queued:
        raise PlannerError(f"--executor slurm: jobs {', '.join(queued)} of this curation are still queued or "
                           "running; wait for them (squeue), or scancel them to submit again")


def check_layout(cfg, tasks: int) -> None:
    """A work folder made with other tasks, inputs or curation settings cannot be continued: its markers
    would mean other things (a source that changed size since is another input)."""
    from dataclasses import asdict

    settings = {k: v for k, v in asdict(cfg.curate).items() if k != "slurm"}  # where jobs run changes nothing
    layout = {"tasks": tasks, "sources": [s.path for s in cfg.sources],
              "source_bytes": [_size(s.path) for s in cfg.sources], "curate": settings}
    path = work_dir(cfg) / "layout.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != layout:
            diff = ", ".join(_differences(before, layout))
            raise PlannerError(f"--tasks/curate: {work_dir(cfg)} was made with other settings ({diff}); "
                               "rerun with the same settings, or delete that folder to start again")
    atomic_write_json(path, layout)


def _differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a} -> {b}")
    return out


def _size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None  # reading it will say what is wrong


def curate_sharded(cfg, executor: str = "local", tasks: int = 1, workers: int = 1, quiet: bool = False) -> dict:
    """Run the five passes (each skips its finished tasks); returns the merged report, or where it will
    appear once the Slurm jobs are submitted.

    Local: one pass after the other in this process and its workers. Ray: the last pass runs its
    dependencies first, each waiting for the one before, on the cluster `ray.init()` finds
    (`RAY_ADDRESS`, or a local one it starts). Slurm: the passes are submitted as array jobs chained
    by `afterok` dependencies, and this returns at once.

    datatrove's console log (pipeline, per-task progress and stats) goes to stdout, or nowhere when
    `quiet`, so that stderr holds only our one-line errors; each task's full log stays in
    `work/logs/<pass>/logs/task_NNNNN.log` either way."""
    if tasks < 1 or workers < 1:
        raise PlannerError(f"--tasks/--workers: {tasks}/{workers} must be at least 1")
    check_layout(cfg, tasks)
    previous, chain = None, passes(cfg, tasks)
    for name, pipeline, n in chain:
        ex = make_executor(executor, pipeline, n, workers, work_dir(cfg) / "logs" / name, cfg, depends=previous)
        if executor == "local":
            _run(ex, cfg, name, quiet)
        previous = ex
    if executor == "ray":
        _run(previous, cfg, "all", quiet)
    elif executor == "slurm" and previous.get_incomplete_ranks():
        refuse_if_queued(cfg, [name for name, _, _ in chain])
        previous.run()  # submitting the last pass submits the unfinished ones before it, chained
        return {"submitted": True, "logs": str(work_dir(cfg) / "logs"),
                "report": str(Path(cfg.out_dir) / "curation_report.json")}
    return json.loads((Path(cfg.out_dir) / "curation_report.json").read_text())


def _run(ex, cfg, name: str, quiet: bool) -> None:
    with open(os.devnull, "w") if quiet else nullcontext(sys.stdout) as sink, redirect_stderr(sink):
        try:
            ex.run()
        except OSError as e:  # datatrove's own writes (task logs, markers) name no file
            if e.filename:
                raise
            raise PlannerError(f"curate: {e.strerror or e} while writing under {cfg.out_dir} (pass {name})") from None


class MergeReport(PipelineStep):
    """The last pass: the funnel report merged over tasks, and the exclusion list in corpus order."""

    name, type = "merge report", "📊 - STATS"

    def __init__(self, cfg, tasks: int):
        super().__init__()
        self.cfg, self.tasks = cfg, tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from pretrain.data.pipeline import render_funnel

        report = merge_report(self.cfg, self.tasks)
        out = Path(self.cfg.out_dir)
        write_exclusions(self.cfg, self.tasks)
        atomic_write_text(out / "curation_report.md", render_funnel(report))
        atomic_write_json(out / "curation_report.json", report)  # last: its presence means "done"
        return iter(())


def merge_report(cfg, tasks: int) -> dict:
    from pretrain.data.pipeline import _domain_totals, _merge_counter, _merge_stats, enabled_document_steps
    from pretrain.data.sharded import plan_chunks, source_of_file

    work, domains = work_dir(cfg), domains_of(cfg)
    ranks = [f"{r:05d}" for r in range(tasks)]
    steps: dict = {}
    for name in enabled_document_steps(cfg.curate):
        for r in ranks:
            _merge_stats(steps, {name: json.loads((work / "stats" / name / f"{r}.json").read_text())["stats"]})
    sources = [{"path": s.path, "domain": s.domain, "docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0}
               for s in cfg.sources]
    skipped: dict = {}
    for r in ranks:
        inputs = json.loads((work / "inputs" / f"{r}.json").read_text())
        for index, row in inputs["sources"].items():
            for k in ("docs_in", "chars_in"):
                sources[int(index)][k] += row[k]
        _merge_counter(skipped, inputs["skips"])
    dedup = _dedup_stats(cfg, work, ranks, domains)
    steps.update(dedup)
    source_of = source_of_file(plan_chunks(sources_of(cfg), cfg.curate.chunk_bytes))
    for r in ranks:  # what the filter pass kept, counted per input file as it wrote it
        for file, (docs, chars) in json.loads((work / "final" / f"{r}.json").read_text())["kept_per_file"].items():
            src = sources[source_of[int(file)]]
            src["docs_out"] += docs
            src["chars_out"] += chars
    return {"sources": sources, "steps": steps, "skipped_records": skipped, "domains": _domain_totals(sources),
            "executor_tasks": tasks}


def _dedup_stats(cfg, work: Path, ranks: list[str], domains: list[str]) -> dict:
    """exact_dedup and minhash_dedup rows per domain, in the funnel beside the per-document steps."""
    import numpy as np

    from pretrain.data.filters import StepStats

    into = {d: {"docs": 0, "chars": 0} for d in domains}
    for r in ranks:
        index = np.load(work / "index" / f"{r}.npy")
        for i, d in enumerate(domains):
            mine = index["domain"] == i
            into[d]["docs"] += int(mine.sum())
            into[d]["chars"] += int(index["chars"][mine].sum())
    drops = [d for r in ranks for d in json.loads((work / "final" / f"{r}.json").read_text())["dedup"]]
    out: dict = {}
    for step, reason in (("exact_dedup", "exact duplicate"), ("minhash_dedup", "near duplicate")):
        if not getattr(cfg.curate, step):
            continue
        rows = out[step] = {}
        for d in domains:
            mine = [x for x in drops if x["domain"] == d and x["step"] == step]
            row = StepStats().to_dict()
            row.update(docs_in=into[d]["docs"], chars_in=into[d]["chars"], docs_out=into[d]["docs"] - len(mine),
                       chars_out=into[d]["chars"] - sum(x["chars"] for x in mine))
            if mine:
                row["dropped"] = {reason: len(mine)}
            rows[d] = row
            into[d] = {"docs": row["docs_out"], "chars": row["chars_out"]}
    return out


def write_exclusions(cfg, tasks: int) -> Path:
    """`exclusions.jsonl`: every dropped document in corpus order (the tasks' lists, in rank order)."""
    work, path = work_dir(cfg), Path(cfg.out_dir) / "exclusions.jsonl"
    with atomic_open(path) as out:
        for r in range(tasks):
            with open(work / "exclusions" / f"{r:05d}.jsonl") as f:
                shutil.copyfileobj(f, out)
    return path
