"""The input cut into chunks that tasks share out, and read back as datatrove documents with their keys.

The input of every source is cut into chunks: a JSON-lines file into byte ranges of `chunk_bytes`
(a line belongs to the range holding its first byte), any other format one chunk per source. The
chunk list depends only on the files and `chunk_bytes`, never on the number of tasks; task r of N
takes a contiguous run of chunks, so the tasks' outputs, read in rank order, are the corpus in its
own order whatever N is. Every document carries a key, (input file number << 40) | byte offset (record
number for other formats): the global order that deduplication uses to decide which copy is first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document as DTDocument
from datatrove.pipeline.base import PipelineStep

from planner.core.io import atomic_write_json
from pretrain.data.documents import Document, Source, jsonl_files, jsonl_record, make_document, read_source
from pretrain.data.workdir import WorkDir

KEY_SHIFT = 40  # key = file << 40 | offset: offsets up to 1 TiB per file
#: Tasks when none are asked for: one per chunk, at most this many. Many small tasks, not one per
#: worker, are what balances real corpora: datatrove's local executor hands the next task to the first
#: free worker, so a costly chunk delays one worker by one chunk's time; with a task per worker, one
#: task held 70% of the work of a real corpus (8 tasks, 2 workers: 1.42x; 28 tasks: 1.99x).
MAX_DEFAULT_TASKS = 64


def file_of_key(key: int) -> int:
    """The input file number a document key names."""
    return key >> KEY_SHIFT


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


def default_tasks(sources: list[Source], chunk_bytes: int) -> int:
    """One task per chunk of the input, at most MAX_DEFAULT_TASKS."""
    return max(1, min(len(plan_chunks(sources, chunk_bytes)), MAX_DEFAULT_TASKS))


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


class ReadChunks(PipelineStep):
    """The task's chunks as datatrove documents (metadata: domain, key); skipped records are counted."""

    name, type = "read chunks", "📖 - READER"

    def __init__(self, sources: list[Source], chunk_bytes: int, wd: WorkDir):
        super().__init__()
        self.sources, self.chunk_bytes, self.wd = sources, chunk_bytes, wd

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
        atomic_write_json(self.wd.inputs(rank), {"sources": inputs, "skips": dict(skips)})
