"""Curation split into tasks: the input cut into byte ranges, our steps as datatrove pipeline steps.

The input of every source is cut into chunks: a JSON-lines file into byte ranges of `chunk_bytes`
(a line belongs to the range holding its first byte), any other format one chunk per source. The
chunk list depends only on the files and `chunk_bytes`, never on the number of tasks; task r of N
takes a contiguous run of chunks, so the tasks' outputs, read in rank order, are the corpus in its
own order whatever N is. Every document carries a key, (input file number << 40) | byte offset (record
number for other formats): the global order that deduplication uses to decide which copy is first.

A task of the first pass (`executors.passes`) reads its chunks (`ReadChunks`), runs the per-document
steps (`CurationStep`, one per filter, each with its per-domain, per-reason stats), and writes
(`WriteTaskOutput`) its kept documents, their dedup signatures (one file per LSH band and one for
exact hashes, each sorted), their shingle hashes for Jaccard checks, its stats and its exclusions.
Every file is written atomically (`planner.io`: complete or absent); the executor writes the
task's completion marker after that, so a rerun skips finished tasks and redoes killed ones whole.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document as DTDocument
from datatrove.pipeline.base import PipelineStep

from planner.io import atomic_open, atomic_write_bytes, atomic_write_json
from pretrain.data.documents import Document, Source, jsonl_files, jsonl_record, make_document, read_source

KEY_SHIFT = 40  # key = file << 40 | offset: offsets up to 1 TiB per file
INDEX_DTYPE = np.dtype([("key", "<u8"), ("domain", "<u2"), ("chars", "<u8"), ("offset", "<u8"), ("count", "<u4")])
PAIR_DTYPE = np.dtype([("hash", "<u8"), ("key", "<u8")])
EXACT = "exact"


@dataclass(frozen=True)
class Chunk:
    source: int  # index in the config's sources
    file: int  # input file number, over all sources in order
    path: str
    start: int  # byte range [start, end) of a JSON-lines file; (0, -1): the whole source, read as a stream
    end: int


def plan_chunks(sources: list[Source], chunk_bytes: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    files = 0
    for index, src in enumerate(sources):
        paths = jsonl_files(src) if _is_jsonl(src) else []
        if not paths:
            chunks.append(Chunk(index, files, src.path, 0, -1))
            files += 1
        for path in paths:
            size = path.stat().st_size
            chunks += [Chunk(index, files, str(path), start, min(start + chunk_bytes, size))
                       for start in range(0, max(size, 1), chunk_bytes)]
            files += 1
    return chunks


def source_of_file(chunks: list[Chunk]) -> dict[int, int]:
    return {c.file: c.source for c in chunks}


def _is_jsonl(src: Source) -> bool:
    return src.format == "jsonl" or (src.format == "auto" and (Path(src.path).suffix == ".jsonl" or (
        Path(src.path).is_dir() and any(Path(src.path).glob("*.jsonl")))))


def task_chunks(n_chunks: int, rank: int, world: int) -> range:
    """The contiguous run of chunks task `rank` of `world` reads."""
    return range(n_chunks * rank // world, n_chunks * (rank + 1) // world)


def read_chunk(chunk: Chunk, source: Source, skips: Counter) -> Iterator[tuple[int, Document]]:
    """(key, document) for every usable record of the chunk, in file order."""
    base = chunk.file << KEY_SHIFT
    if chunk.end < 0:
        for i, doc in enumerate(read_source(source, skips)):
            yield base | i, doc
        return
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        if chunk.start:  # a line that began in the previous range belongs to it
            f.seek(chunk.start - 1)
            if f.read(1) != b"\n":
                f.readline()
        while (offset := f.tell()) < chunk.end:
            raw = f.readline()
            if not raw:
                break
            record = jsonl_record(raw, source, f"{Path(chunk.path).name}@{offset}", skips)
            if record is not None:
                doc = make_document(*record, source, f"{Path(chunk.path).name}@{offset}", skips)
                if doc is not None:
                    yield base | offset, doc


# ---------------------------------------------------------------------------------- datatrove steps


def _to_ours(d: DTDocument) -> Document:
    return Document(d.id, d.text, d.metadata["domain"], {"key": d.metadata["key"]})


class ReadChunks(PipelineStep):
    """The task's chunks as datatrove documents (metadata: domain, key); skipped records are counted."""

    name, type = "read chunks", "📖 - READER"

    def __init__(self, sources: list[Source], chunk_bytes: int, work_dir: str):
        super().__init__()
        self.sources, self.chunk_bytes, self.work_dir = sources, chunk_bytes, work_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        chunks = plan_chunks(self.sources, self.chunk_bytes)
        skips: Counter = Counter()
        inputs: dict[str, dict] = {}
        for i in task_chunks(len(chunks), rank, world_size):
            chunk = chunks[i]
            for key, doc in read_chunk(chunk, self.sources[chunk.source], skips):
                row = inputs.setdefault(str(chunk.source), {"docs_in": 0, "chars_in": 0})
                row["docs_in"] += 1
                row["chars_in"] += len(doc.text)
                self.stat_update("documents")
                yield DTDocument(doc.text, doc.id, metadata={"domain": doc.domain, "key": key})
        atomic_write_json(Path(self.work_dir) / "inputs" / f"{rank:05d}.json", {"sources": inputs, "skips": dict(skips)})


class CurationStep(PipelineStep):
    """One of our per-document steps (pretrain.data.filters) inside a datatrove pipeline: same decisions,
    same per-domain, per-reason stats (written per task), and every drop listed with its reason."""

    type = "🔻 - FILTER"

    def __init__(self, build, step_name: str, work_dir: str):
        super().__init__()
        self.build, self.name, self.work_dir = build, step_name, work_dir  # build(domain) -> Step

    def run(self, data, rank: int = 0, world_size: int = 1):
        steps, excluded = {}, []
        for d in data:
            doc = _to_ours(d)
            step = steps.get(doc.domain) or steps.setdefault(doc.domain, self.build(doc.domain))
            kept = step.apply(doc)
            if kept is None:
                excluded.append({"key": doc.meta["key"], "id": doc.id, "domain": doc.domain, "step": self.name,
                                 "reason": step.last_reason})
                continue
            d.text = kept.text
            yield d
        stats = {domain: s.stats[domain].to_dict() for domain, s in steps.items() if domain in s.stats}
        atomic_write_json(Path(self.work_dir) / "stats" / self.name / f"{rank:05d}.json",
                    {"stats": stats, "excluded": excluded})


class WriteTaskOutput(PipelineStep):
    """Kept documents, their dedup signatures per band and exact hash, and their shingle hashes."""

    name, type = "write task output", "💽 - WRITER"

    def __init__(self, work_dir: str, domains: list[str], ngram: int, bands: int, rows: int, seed: int = 1):
        super().__init__()
        self.work_dir, self.domains = work_dir, domains
        self.ngram, self.bands, self.rows, self.seed = ngram, bands, rows, seed

    def run(self, data, rank: int = 0, world_size: int = 1):
        from pretrain.data.signatures import MinHasher, exact_hash, normalise, shingle_hashes

        hasher = MinHasher(self.bands * self.rows, self.seed)
        root, name = Path(self.work_dir), f"{rank:05d}"
        index, ids, shingles, band_rows, exact_rows = [], [], [], [[] for _ in range(self.bands)], []
        offset = 0
        with atomic_open(root / "kept" / f"{name}.jsonl") as sink:
            for d in data:
                key = d.metadata["key"]
                sink.write(json.dumps({"key": key, "id": d.id, "domain": d.metadata["domain"], "text": d.text}) + "\n")
                text = normalise(d.text)  # once, for the shingles and the exact hash
                sh = shingle_hashes(text, self.ngram)
                shingles.append(sh)
                index.append((key, self.domains.index(d.metadata["domain"]), len(d.text), offset, sh.size))
                ids.append(d.id)
                offset += sh.size
                exact_rows.append((exact_hash(text), key))
                for b, h in enumerate(hasher.band_hashes(sh, self.bands)):
                    band_rows[b].append((h, key))
                self.stat_update("kept")
        save_array(root / "index" / f"{name}.npy", np.array(index, dtype=INDEX_DTYPE))
        atomic_write_json(root / "ids" / f"{name}.json", ids)
        save_array(root / "shingles" / f"{name}.npy", np.concatenate(shingles) if shingles else np.zeros(0, np.uint32))
        save_array(root / "bands" / EXACT / f"{name}.npy", _sorted_pairs(exact_rows))
        for b, rows in enumerate(band_rows):
            save_array(root / "bands" / f"{b:03d}" / f"{name}.npy", _sorted_pairs(rows))
        return iter(())


def _sorted_pairs(rows: list[tuple[int, int]]) -> np.ndarray:
    arr = np.array(rows, dtype=PAIR_DTYPE)
    return arr[np.argsort(arr, order=("hash", "key"))]


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
