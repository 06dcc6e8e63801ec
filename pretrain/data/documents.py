"""Documents and where they come from: local jsonl, parquet, text folders, `datasets` saved to disk.

Every reader streams (one document at a time; parquet by record batch), tags documents with the
source's domain, and counts what it cannot use (bad JSON, a missing text field, undecodable bytes,
empty text) instead of failing or skipping silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import file_kind


@dataclass
class Document:
    id: str
    text: str
    domain: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    path: str
    domain: str
    format: str = "auto"  # auto | jsonl | parquet | text | arrow (datasets.save_to_disk)
    text_field: str = "text"
    id_field: str | None = "id"


def _format(source: Source) -> str:
    if source.format != "auto":
        return source.format
    path = Path(source.path)
    if path.is_dir():
        return "arrow" if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() else "text"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    raise PlannerError(f"source {source.path}: cannot tell its format; set format to jsonl, parquet, text or arrow")


def read_source(source: Source, skips: Counter) -> Iterator[Document]:
    """Documents of one source in a fixed order; unusable records are counted in `skips` by reason."""
    path = Path(source.path)
    if not path.exists():
        raise PlannerError(f"source {source.path}: does not exist")
    kind = _format(source)
    reader = {"jsonl": _jsonl, "parquet": _parquet, "text": _text, "arrow": _arrow}.get(kind)
    if reader is None:
        raise PlannerError(f"source {source.path}: format {kind!r} is not one of jsonl, parquet, text, arrow")
    for i, (record_id, text) in enumerate(reader(source, skips)):
        doc = make_document(record_id, text, source, f"{path.name}:{i}", skips)
        if doc is not None:
            yield doc


def make_document(record_id, text, source: Source, fallback_id: str, skips: Counter) -> Document | None:
    """The document of one record, or None (counted in `skips`) when its text is missing or empty."""
    if not isinstance(text, str):
        skips[f"{source.domain}: missing or non-text '{source.text_field}'"] += 1
        return None
    if not text.strip():
        skips[f"{source.domain}: empty document"] += 1
        return None
    return Document(str(record_id if record_id is not None else fallback_id), text, source.domain,
                    {"source": str(source.path)})


def jsonl_record(raw: bytes, source: Source, line_id: str, skips: Counter) -> tuple[object, object] | None:
    """(id, text) of one JSON line, or None (counted in `skips`) when the line is unusable."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        skips[f"{source.domain}: undecodable UTF-8"] += 1
        return None
    except json.JSONDecodeError:
        skips[f"{source.domain}: bad JSON line"] += 1
        return None
    if not isinstance(record, dict):
        skips[f"{source.domain}: JSON line is not an object"] += 1
        return None
    return record.get(source.id_field) if source.id_field else line_id, record.get(source.text_field)


def jsonl_files(source: Source) -> list[Path]:
    return sorted(Path(source.path).glob("*.jsonl")) if Path(source.path).is_dir() else [Path(source.path)]


def refuse_special_source(path: str | Path) -> None:
    """A source, or an entry of a source folder, that is a FIFO, device or socket is refused when
    the config loads, before anything is written: reading one would block or never end."""
    path = Path(path)
    entries = [path, *(path.iterdir() if path.is_dir() else ())]
    for entry in entries:
        if entry.exists() and not entry.is_dir() and (kind := file_kind(entry.stat().st_mode)):
            raise PlannerError(f"source {entry}: is {kind}, not a file or folder of documents")


def _jsonl(source: Source, skips: Counter):
    for file in jsonl_files(source):
        with file.open("rb") as f:
            for n, raw in enumerate(f, 1):
                record = jsonl_record(raw, source, f"{file.name}:{n}", skips)
                if record is not None:
                    yield record


def _parquet_file(pq, file: Path):
    """A parquet file opened, or one line: a truncated or foreign file is bad input, not a crash."""
    import pyarrow as pa

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise PlannerError(f"source {file}: not a readable parquet file ({' '.join(str(exc).split())[:200]})") from None


def _parquet(source: Source, skips: Counter):
    import pyarrow.parquet as pq

    files = sorted(Path(source.path).glob("*.parquet")) if Path(source.path).is_dir() else [Path(source.path)]
    for file in files:
        table = _parquet_file(pq, file)
        if source.text_field not in table.schema_arrow.names:
            raise PlannerError(f"source {file}: no column {source.text_field!r} (columns: {', '.join(table.schema_arrow.names)})")
        for batch in table.iter_batches(batch_size=1024):
            rows = batch.to_pydict()
            ids = rows.get(source.id_field) if source.id_field else None
            for i, text in enumerate(rows[source.text_field]):
                yield (ids[i] if ids else None), text


def _text(source: Source, skips: Counter):
    """Each file one document: a folder's files (their paths the ids), or the one file the source names."""
    root = Path(source.path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        try:
            yield (file.name if file == root else str(file.relative_to(root))), file.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skips[f"{source.domain}: undecodable UTF-8"] += 1


def _arrow(source: Source, skips: Counter):
    import datasets

    data = datasets.load_from_disk(source.path)
    if isinstance(data, datasets.DatasetDict):
        data = data["train"] if "train" in data else next(iter(data.values()))
    if source.text_field not in data.column_names:
        raise PlannerError(f"source {source.path}: no column {source.text_field!r} (columns: {', '.join(data.column_names)})")
    for i, row in enumerate(data):
        yield row.get(source.id_field, i) if source.id_field else i, row[source.text_field]
