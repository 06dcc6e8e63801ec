"""The numpy records the dedup passes hand each other on disk, and their atomic writer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from planner.core.io import atomic_write_bytes

#: One row per kept document of a task: its key, domain number, size, and where its shingles lie.
INDEX_DTYPE = np.dtype([("key", "<u8"), ("domain", "<u2"), ("chars", "<u8"), ("offset", "<u8"), ("count", "<u4")])
#: A signature (band hash or exact hash) and the key of the document that has it.
PAIR_DTYPE = np.dtype([("hash", "<u8"), ("key", "<u8")])
#: A candidate pair of document keys, a < b.
PAIRS_DTYPE = np.dtype([("a", "<u8"), ("b", "<u8")])


def sorted_pairs(rows: list[tuple[int, int]]) -> np.ndarray:
    """(hash, key) rows sorted by hash then key, the order the bucket pass merges."""
    arr = np.array(rows, dtype=PAIR_DTYPE)
    return arr[np.argsort(arr, order=("hash", "key"))]


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
