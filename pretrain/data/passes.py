"""What a curation runs: five passes, each a datatrove pipeline of our steps and a number of tasks.

1. signatures (N tasks): read chunks, per-document steps, kept documents and dedup signatures;
2. buckets (one task per band + exact): candidate pairs;
3. clusters (1 task): Jaccard-verified duplicates in corpus order;
4. filter (N tasks): curated output per domain and task, and the exclusion list;
5. report (1 task): the funnel report merged over tasks and `exclusions.jsonl`, written where the
   jobs run (on Slurm, by the last job; a rerun after it finished returns the report).

Where they run is `executors`' business; the passes hand each other only files (`workdir`).
"""

from __future__ import annotations

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


def passes(cfg: DataPipelineConfig, tasks: int) -> list[tuple[str, list, int]]:
    """(name, pipeline, tasks) of each pass, in the order they must run."""
    c, wd = cfg.curate, WorkDir.of(cfg)
    domains, steps, minhash = domains_of(cfg), enabled_document_steps(c), MinHashConfig.of(c)
    first = [ReadChunks(sources_of(cfg), c.chunk_bytes, wd),
             *[CurationStep(partial(document_step, c, name), name, wd) for name in steps],
             WriteTaskOutput(wd, domains, minhash)]
    return [("signatures", first, tasks),
            ("buckets", [BucketBands(wd)], minhash.bands + 1),
            ("clusters", [VerifyDuplicates(wd, domains, minhash.threshold, c.exact_dedup, c.minhash_dedup)], 1),
            ("filter", [ApplyExclusions(wd, domains, steps)], tasks),
            ("report", [MergeReport(cfg, tasks)], 1)]
