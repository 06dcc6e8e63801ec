"""Packed token shards: fixed-length rows of seq_len + 1 tokens in memory-mapped files.

Layout of a shard folder:
    manifest.json        seq_len, dtype, vocab_size, eos_id, shards [{file, rows}], per-domain tokens,
                         tokenizer hash: written last, atomically, so a folder with a manifest is complete
    shard_00000.bin ...  raw little-endian tokens, rows x (seq_len + 1)

Rows hold documents joined by EOS and cut at row boundaries (the usual packing: GPT-2/3,
LLaMA). The dtype is uint16 when every id fits (vocab <= 65,536), else uint32; a vocabulary
that does not fit the requested dtype is refused, not silently wrapped (datatrove#118, dolma#142).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.core.errors import PlannerError
from planner.core.io import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
UINT16_LIMIT = 2**16


def token_dtype(vocab_size: int, requested: str | None = None) -> np.dtype:
    if requested == "uint16" and vocab_size > UINT16_LIMIT:
        raise PlannerError(f"dtype: vocabulary of {vocab_size:,} ids does not fit uint16 (max {UINT16_LIMIT:,}); "
                           "use uint32")
    if requested not in (None, "uint16", "uint32"):
        raise PlannerError(f"dtype: {requested!r} is not one of uint16, uint32")
    return np.dtype(requested or ("uint16" if vocab_size <= UINT16_LIMIT else "uint32"))


class ShardWriter:
    """Pack documents into rows and write shards; `close()` writes the manifest."""

    def __init__(self, out_dir: str | Path, seq_len: int, vocab_size: int, eos_id: int, *,
                 rows_per_shard: int = 4096, dtype: str | None = None, tokenizer_hash: str | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.row_len, self.vocab_size, self.eos_id = seq_len + 1, vocab_size, eos_id
        self.seq_len, self.rows_per_shard = seq_len, rows_per_shard
        self.dtype = token_dtype(vocab_size, dtype)
        self.tokenizer_hash = tokenizer_hash
        self._buffer: list[int] = []
        self._rows: list[np.ndarray] = []
        self.shards: list[dict] = []
        self.domain_tokens: dict[str, int] = {}
        self.documents = 0

    def add(self, token_ids, domain: str = "default") -> None:
        before = len(self._buffer)
        self._buffer.extend(token_ids)
        self._buffer.append(self.eos_id)
        self.domain_tokens[domain] = self.domain_tokens.get(domain, 0) + len(self._buffer) - before
        self.documents += 1
        complete = len(self._buffer) // self.row_len
        if complete:  # cut every complete row at once: one conversion, one list trim
            cut = complete * self.row_len
            wide = np.asarray(self._buffer[:cut], dtype=np.int64)
            if wide.min() < 0 or wide.max() >= self.vocab_size:  # checked before narrowing: never wrap
                raise PlannerError(f"tokens: id {int(wide.max())} is outside the vocabulary of {self.vocab_size}")
            rows = wide.astype(self.dtype).reshape(complete, self.row_len)
            del self._buffer[:cut]
            for row in rows:
                self._rows.append(row)
                if len(self._rows) == self.rows_per_shard:
                    self._flush()

    def add_row(self, token_ids, domain: str = "default") -> None:
        """One whole row of seq_len + 1 tokens, as is (no EOS): sources that generate rows directly."""
        row = np.asarray(token_ids, dtype=np.int64)
        if row.shape != (self.row_len,) or row.min() < 0 or row.max() >= self.vocab_size:
            raise PlannerError(f"tokens: a row must be {self.row_len} ids below {self.vocab_size}")
        self.domain_tokens[domain] = self.domain_tokens.get(domain, 0) + self.row_len
        self.documents += 1
        self._rows.append(row.astype(self.dtype))
        if len(self._rows) == self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"shard_{len(self.shards):05d}.bin"
        atomic_write_bytes(self.out_dir / name, np.stack(self._rows).astype(self.dtype.newbyteorder("<")).tobytes())
        self.shards.append({"file": name, "rows": len(self._rows)})
        self._rows = []

    def close(self, extra: dict | None = None) -> dict:
        """Write the last shard and the manifest; the partial last row is dropped (and counted)."""
        self._flush()
        manifest = {
            "seq_len": self.seq_len, "dtype": self.dtype.name, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
            "shards": self.shards, "rows": sum(s["rows"] for s in self.shards),
            "tokens": sum(s["rows"] for s in self.shards) * self.row_len, "dropped_tail_tokens": len(self._buffer),
            "documents": self.documents, "domain_tokens": self.domain_tokens,
            "tokenizer_sha256": self.tokenizer_hash, **(extra or {}),
        }
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest


@dataclass
class TokenShards:
    """Read-only, memory-mapped view of a shard folder: row i as an array of seq_len + 1 tokens."""

    path: Path
    manifest: dict
    _maps: list
    _offsets: np.ndarray

    @classmethod
    def open(cls, path: str | Path) -> TokenShards:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise PlannerError(f"data: {path} has no {MANIFEST} (not a finished shard folder)")
        manifest = json.loads(manifest_path.read_text())
        row_len, dtype = manifest["seq_len"] + 1, np.dtype(manifest["dtype"]).newbyteorder("<")
        maps = []
        for shard in manifest["shards"]:
            file = path / shard["file"]
            expected = shard["rows"] * row_len * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise PlannerError(f"data: {file} is missing or not {expected} bytes (corrupt shard folder)")
            maps.append(np.memmap(file, dtype=dtype, mode="r", shape=(shard["rows"], row_len)))
        offsets = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])
        if offsets[-1] == 0:
            raise PlannerError(f"data: {path} holds no complete row of {row_len} tokens")
        return cls(path, manifest, maps, offsets)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    def row(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self._maps[shard][i - self._offsets[shard]]


class PackedBatches:
    """Deterministic, rank-sharded, resumable batches of (inputs, targets) from token shards.

    Each epoch visits every row once in an order fixed by (seed, epoch); rank r of w takes
    positions r, r + w, r + 2w, ... of that order. The state is (epoch, position): restoring it
    continues with exactly the batch that would have come next.
    """

    def __init__(self, shards: TokenShards, micro_batch: int, rank: int = 0, world: int = 1, seed: int = 0):
        if len(shards) < micro_batch * world:
            raise PlannerError(f"data: {shards.path} has {len(shards)} rows, fewer than one global micro-batch "
                               f"({micro_batch} x {world} ranks)")
        self.shards, self.micro_batch, self.rank, self.world, self.seed = shards, micro_batch, rank, world, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))

    @property
    def steps_per_epoch(self) -> int:
        return len(self.shards) // (self.micro_batch * self.world)

    def next(self):
        import torch

        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.position * self.micro_batch * self.world
        idx = self._order[start + self.rank: start + self.micro_batch * self.world: self.world]
        self.position += 1
        rows = torch.from_numpy(np.stack([self.shards.row(int(i)).astype(np.int64) for i in idx]))
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world", self.world) != self.world:
            # another world size: keep the global position (micro-batches x ranks consumed)
            consumed = state["position"] * state["world"]
            state = {**state, "position": consumed // self.world}
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
