"""What a curation runs: five passes, each a datatrove pipeline of our steps and a number of tasks.

1. signatures (N tasks): read chunks, per-document steps, kept documents and dedup signatures;
2. buckets (a task per `SHORT_TASK_SHARE` bands, the exact hashes counted as one): candidate pairs;
3. clusters (1 task): Jaccard-verified duplicates in corpus order;
4. filter (a task per `SHORT_TASK_SHARE` first-pass tasks): curated output per domain and first-pass task, and
   the exclusion list;
5. report (1 task): the funnel report merged over tasks and `exclusions.jsonl`, written where the
   jobs run (on Slurm, by the last job; a rerun after it finished returns the report).

Where they run is `executors`' business; the passes hand each other only files (`workdir`).
"""

from __future__ import annotations

import math
from functools import partial

from pretrain.data.chunks import ReadChunks
from pretrain.data.config import DataPipelineConfig, domains_of, sources_of
from pretrain.data.dedup.global_dedup import ApplyExclusions, BucketBands, VerifyDuplicates
from pretrain.data.dedup.minhash import MinHashConfig
from pretrain.data.dedup.write import WriteTaskOutput
from pretrain.data.report import MergeReport
from pretrain.data.steps.adapter import CurationStep
from pretrain.data.steps.registry import document_step, enabled_document_steps
from pretrain.data.workdir import WorkDir

#: The bucket and filter passes do about a hundredth of the first pass's work per document (on 51.5 MB of real
#: text, `benchmarks/bench_curate_real.py`: 0.23 and 0.2 s of work against 24 s), while datatrove's executor costs
#: 15-40 ms a task whatever the task does (its task log, stats, completion marker, and the worker pool's queue):
#: one task per band and per first-pass task made those two passes ~60% overhead (21 and 27 tasks: 0.6 and 0.7 s).
#: So each of their tasks takes this many bands, or first-pass tasks' outputs; the outputs are the same whatever it is.
SHORT_TASK_SHARE = 8


def short_tasks(items: int) -> int:
    """Tasks of a short pass over `items` bands or first-pass tasks."""
    return math.ceil(items / SHORT_TASK_SHARE)


def passes(cfg: DataPipelineConfig, tasks: int) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of each pass, in the order they must run."""
    c, wd = cfg.curate, WorkDir.of(cfg)
    domains, steps, minhash = domains_of(cfg), enabled_document_steps(c), MinHashConfig.of(c)
    first = [ReadChunks(sources_of(cfg), c.chunk_bytes, wd),
             *[CurationStep(partial(document_step, c, name), name, wd) for name in steps],
             WriteTaskOutput(wd, domains, minhash)]
    return [("signatures", first, tasks),
            ("buckets", [BucketBands(wd)], short_tasks(minhash.bands + 1)),
            ("clusters", [VerifyDuplicates(wd, domains, minhash.threshold, c.exact_dedup, c.minhash_dedup)], 1),
            ("filter", [ApplyExclusions(wd, domains, steps)], short_tasks(tasks)),
            ("report", [MergeReport(cfg, tasks)], 1)]
