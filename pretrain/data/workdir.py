"""The one owner of the pipeline's folder layout (`out_dir`): every path a stage writes or reads is named
here, and the settings a work folder was made with are recorded here (`check_layout`).

    out_dir/
      curated/<domain>/task-NNNNN.jsonl   kept documents, per domain and task (read in rank order)
      exclusions.jsonl                    every dropped document, in corpus order
      curation_report.json, .md           the funnel; the JSON is written last and means "curation done"
      tokenizer.json                      (`tokenizer.path`), shards/<split>/, pack_report.json
      work/                               per-task state of the curation passes
        layout.json                       tasks, inputs and settings the folder was made with
        logs/<pass>/                      datatrove's logs, stats and completion markers per pass
        inputs/ stats/<step>/ kept/ index/ ids/ shingles/ bands/<band>/ pairs/ dedup/ final/ exclusions/

Every work file is named by its task (`task_name`, five digits), so a task's outputs are found, and
skipped on a rerun, without a listing. The objects are plain paths, so datatrove pickles them to
its workers as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import atomic_write_json
from pretrain.data.config import DataPipelineConfig
from pretrain.data.documents import Document

#: The band folder of the exact hashes, beside the MinHash bands `000`, `001`, ...
EXACT = "exact"


def task_name(rank: int) -> str:
    return f"{rank:05d}"


def band_name(band: int) -> str:
    return f"{band:03d}"


def load_array(path: Path, mmap: bool = False):
    """A pass's .npy state, written by an earlier pass (numpy refuses pickled arrays by default); a truncated or
    foreign file is one line saying how to recover, not numpy's ValueError."""
    import numpy as np

    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (ValueError, EOFError) as exc:
        raise PlannerError(f"{path}: a damaged curation work file ({' '.join(str(exc).split())[:120]}); remove "
                           "the curation's work folder (out_dir/work) and run curate again: it redoes every pass") from None


@dataclass(frozen=True)
class WorkDir:
    """The paths under one `out_dir`: the stages' outputs, and the curation passes' state in `work/`."""

    out: Path

    @classmethod
    def of(cls, cfg: DataPipelineConfig) -> WorkDir:
        return cls(Path(cfg.out_dir))

    # ------------------------------------------------------------------ outputs
    def curated(self, domain: str, rank: int) -> Path:
        return self.out / "curated" / domain / f"task-{task_name(rank)}.jsonl"

    @property
    def exclusions(self) -> Path:
        return self.out / "exclusions.jsonl"

    @property
    def report_json(self) -> Path:
        return self.out / "curation_report.json"

    @property
    def report_md(self) -> Path:
        return self.out / "curation_report.md"

    def tokenizer(self, cfg: DataPipelineConfig) -> Path:
        return self.out / cfg.tokenizer.path

    def shards(self, split: str) -> Path:
        return self.out / "shards" / split

    @property
    def pack_report(self) -> Path:
        return self.out / "pack_report.json"

    # ------------------------------------------------------------------ the passes' state
    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def layout_file(self) -> Path:
        return self.work / "layout.json"

    def logs(self, pass_name: str | None = None) -> Path:
        return self.work / "logs" / pass_name if pass_name else self.work / "logs"

    def inputs(self, rank: int) -> Path:
        return self.work / "inputs" / f"{task_name(rank)}.json"

    def stats(self, step: str, rank: int) -> Path:
        return self.work / "stats" / step / f"{task_name(rank)}.json"

    def kept(self, rank: int) -> Path:
        return self.work / "kept" / f"{task_name(rank)}.jsonl"

    def index(self, rank: int) -> Path:
        return self.work / "index" / f"{task_name(rank)}.npy"

    def ids(self, rank: int) -> Path:
        return self.work / "ids" / f"{task_name(rank)}.json"

    def shingles(self, rank: int) -> Path:
        return self.work / "shingles" / f"{task_name(rank)}.npy"

    def band(self, band: str, rank: int) -> Path:
        return self.work / "bands" / band / f"{task_name(rank)}.npy"

    def band_names(self) -> list[str]:
        return sorted(p.name for p in (self.work / "bands").iterdir() if p.is_dir())

    def band_files(self, band: str) -> list[Path]:
        return sorted((self.work / "bands" / band).glob("*.npy"))

    def pairs(self, band: str) -> Path:
        return self.work / "pairs" / f"{band}.npy"

    def near_pair_files(self) -> list[Path]:
        """The candidate pairs of the MinHash bands (not of the exact hashes)."""
        return [p for p in sorted((self.work / "pairs").glob("*.npy")) if p.stem != EXACT]

    def dedup(self, rank: int) -> Path:
        return self.work / "dedup" / f"{task_name(rank)}.json"

    def final(self, rank: int) -> Path:
        return self.work / "final" / f"{task_name(rank)}.json"

    def task_exclusions(self, rank: int) -> Path:
        return self.work / "exclusions" / f"{task_name(rank)}.jsonl"

    def check_bands(self, band: str) -> None:
        """Every first-pass task wrote this band's file (each writes all, empty or not): a missing one would
        silently drop its documents' duplicates."""
        tasks = json.loads(self.layout_file.read_text())["tasks"]
        missing = [r for r in range(tasks) if not self.band(band, r).is_file()]
        if missing:
            raise PlannerError(f"{self.work / 'bands' / band}: no band file of task(s) {missing[:5]}; remove "
                               f"{self.work} and run curate again: it redoes every pass")

    def tasks(self) -> list[int]:
        """The ranks of the first pass's tasks, from the index files they wrote."""
        return sorted(int(p.stem) for p in (self.work / "index").glob("*.npy"))


def check_layout(cfg: DataPipelineConfig, tasks: int) -> None:
    """A work folder made with other tasks, inputs or curation settings cannot be continued: its markers
    would mean other things (a source that changed size since is another input)."""
    settings = {k: v for k, v in asdict(cfg.curate).items() if k != "slurm"}  # where jobs run changes nothing
    layout = {"tasks": tasks, "sources": [s.path for s in cfg.sources],
              "source_bytes": [_size(s.path) for s in cfg.sources], "curate": settings}
    wd = WorkDir.of(cfg)
    if wd.layout_file.is_file():
        before = json.loads(wd.layout_file.read_text())
        if before != layout:
            diff = ", ".join(_differences(before, layout))
            raise PlannerError(f"--tasks/curate: {wd.work} was made with other settings ({diff}); "
                               "rerun with the same settings, or delete that folder to start again")
    atomic_write_json(wd.layout_file, layout)


def _differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a} -> {b}")
    return out


def _size(path: str) -> int | list | None:
    """What a source is, cheaply: a file's size; a folder's files and their sizes (a file added, removed or grown
    is another input; a folder's own size says nothing)."""
    root = Path(path)
    try:
        if root.is_dir():
            return sorted([str(p.relative_to(root)), p.stat().st_size] for p in root.rglob("*") if p.is_file())
        return root.stat().st_size
    except OSError:
        return None  # reading it will say what is wrong


def curated_documents(cfg: DataPipelineConfig, domain: str) -> Iterator[Document]:
    """The domain's kept documents in corpus order: the tasks' files in rank order."""
    wd = WorkDir.of(cfg)
    tasks = json.loads(wd.report_json.read_text()).get("executor_tasks") if wd.report_json.is_file() else None
    if not tasks:
        raise PlannerError(f"data: {wd.report_json} is missing or from an older version; run the curate stage first")
    for rank in range(tasks):
        yield from _read_curated(wd.curated(domain, rank), domain)


def _read_curated(path: Path, domain: str) -> Iterator[Document]:
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            yield Document(rec["id"], rec["text"], domain)
