"""The curation report: the tasks' counts merged into one funnel, the exclusion list in corpus order,
the funnel rendered as Markdown, and the report logged to MLflow.

The last curation pass (`MergeReport`) writes them beside the curated output; `curation_report.json`
is written last, so its presence means the curation is done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from planner.core.io import atomic_open, atomic_write_json, atomic_write_text
from pretrain.data.chunks import plan_chunks, source_of_file
from pretrain.data.config import DataPipelineConfig, domains_of, sources_of
from pretrain.data.steps.base import StepStats
from pretrain.data.steps.registry import DOCUMENT_STEPS, enabled_document_steps
from pretrain.data.workdir import WorkDir, load_array


class MergeReport(PipelineStep):
    """The last pass: the funnel report merged over tasks, and the exclusion list in corpus order."""

    name, type = "merge report", "📊 - STATS"

    def __init__(self, cfg: DataPipelineConfig, tasks: int):
        super().__init__()
        self.cfg, self.tasks = cfg, tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        report = merge_report(self.cfg, self.tasks)
        wd = WorkDir.of(self.cfg)
        write_exclusions(self.cfg, self.tasks)
        atomic_write_text(wd.report_md, render_funnel(report))
        atomic_write_json(wd.report_json, report)  # last: its presence means "done"
        return iter(())


def _merge_counter(into: dict, add: dict) -> None:
    for k, v in add.items():
        into[k] = into.get(k, 0) + v


def _merge_stats(into: dict, part: dict) -> None:
    for step, domains in part.items():
        for domain, s in domains.items():
            cur = into.setdefault(step, {}).setdefault(domain, {"docs_in": 0, "docs_out": 0, "chars_in": 0,
                                                                "chars_out": 0, "dropped": {}, "changed": {}})
            for k in ("docs_in", "docs_out", "chars_in", "chars_out"):
                cur[k] += s[k]
            _merge_counter(cur["dropped"], s["dropped"])
            _merge_counter(cur["changed"], s["changed"])


def _domain_totals(sources: list[dict]) -> dict:
    totals: dict[str, dict] = {}
    for s in sources:
        t = totals.setdefault(s["domain"], {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0})
        for k in t:
            t[k] += s[k]
    return totals


def merge_report(cfg: DataPipelineConfig, tasks: int) -> dict:
    """The funnel over all tasks: per step and domain, per source, and per domain in total."""
    wd, domains = WorkDir.of(cfg), domains_of(cfg)
    steps: dict = {}
    for name in enabled_document_steps(cfg.curate):
        for r in range(tasks):
            _merge_stats(steps, {name: json.loads(wd.stats(name, r).read_text())["stats"]})
    sources = [{"path": s.path, "domain": s.domain, "docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0}
               for s in cfg.sources]
    skipped: dict = {}
    for r in range(tasks):
        inputs = json.loads(wd.inputs(r).read_text())
        for index, row in inputs["sources"].items():
            for k in ("docs_in", "chars_in"):
                sources[int(index)][k] += row[k]
        _merge_counter(skipped, inputs["skips"])
    steps.update(_dedup_stats(cfg, wd, tasks, domains))
    source_of = source_of_file(plan_chunks(sources_of(cfg), cfg.curate.chunk_bytes))
    for r in range(tasks):  # what the filter pass kept, counted per input file as it wrote it
        for file, (docs, chars) in json.loads(wd.final(r).read_text())["kept_per_file"].items():
            src = sources[source_of[int(file)]]
            src["docs_out"] += docs
            src["chars_out"] += chars
    return {"sources": sources, "steps": steps, "skipped_records": skipped, "domains": _domain_totals(sources),
            "executor_tasks": tasks}


def _dedup_stats(cfg: DataPipelineConfig, wd: WorkDir, tasks: int, domains: list[str]) -> dict:
    """exact_dedup and minhash_dedup rows per domain, in the funnel beside the per-document steps."""

    into = {d: {"docs": 0, "chars": 0} for d in domains}
    for r in range(tasks):
        index = load_array(wd.index(r))
        for i, d in enumerate(domains):
            mine = index["domain"] == i
            into[d]["docs"] += int(mine.sum())
            into[d]["chars"] += int(index["chars"][mine].sum())
    drops = [d for r in range(tasks) for d in json.loads(wd.final(r).read_text())["dedup"]]
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


def write_exclusions(cfg: DataPipelineConfig, tasks: int) -> Path:
    """`exclusions.jsonl`: every dropped document in corpus order (the tasks' lists, in rank order)."""
    wd = WorkDir.of(cfg)
    with atomic_open(wd.exclusions) as out:
        for r in range(tasks):
            with open(wd.task_exclusions(r)) as f:
                shutil.copyfileobj(f, out)
    return wd.exclusions


def render_funnel(report: dict) -> str:
    """The report as Markdown: one row per step and domain in pipeline order, then the totals."""
    from tabulate import tabulate

    rows = []
    order = [*DOCUMENT_STEPS, "exact_dedup", "minhash_dedup"]  # the funnel in pipeline order (JSON sorts keys)
    for step, domains in sorted(report["steps"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        for domain, s in sorted(domains.items()):
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items(), key=lambda x: -x[1]))
            changed = ", ".join(f"{r} {n}" for r, n in s["changed"].items() if n)
            rows.append([step, domain, s["docs_in"], s["docs_out"], f"{s['docs_out'] / max(1, s['docs_in']):.1%}",
                         reasons or "-", changed or "-"])
    totals = [[d, t["docs_in"], t["docs_out"], f"{t['chars_out'] / max(1, t['chars_in']):.1%}"]
              for d, t in report["domains"].items()]
    skipped = ", ".join(f"{r} {n}" for r, n in report["skipped_records"].items()) or "none"
    return "\n\n".join([
        "# Curation report",
        "```\n" + tabulate(rows, headers=["step", "domain", "docs in", "docs out", "kept", "dropped (reason n)",
                                          "changed"], tablefmt="simple", disable_numparse=True) + "\n```",
        "```\n" + tabulate(totals, headers=["domain", "docs in", "docs out", "chars kept"], tablefmt="simple",
                           disable_numparse=True) + "\n```",
        f"Unusable records skipped: {skipped}", ""])


def log_report_to_mlflow(cfg: DataPipelineConfig, report: dict) -> str:
    """One MLflow run holding the funnel (documents and characters kept per domain as metrics) and the reports."""
    from mlflow.tracking import MlflowClient

    from pretrain.tracking import experiment_id

    wd = WorkDir.of(cfg)
    client = MlflowClient(cfg.tracking.tracking_uri)
    exp_id = experiment_id(client, cfg.tracking.experiment, cfg.tracking.tracking_uri)
    run = client.create_run(exp_id, run_name=f"curate:{Path(cfg.out_dir).name}")
    for domain, t in report["domains"].items():
        for key, value in t.items():
            client.log_metric(run.info.run_id, f"{domain}.{key}", value)
    for path in (wd.report_json, wd.report_md):
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
