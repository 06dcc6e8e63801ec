"""Packed token shards: fixed-length rows of seq_len + 1 tokens in memory-mapped files.

Layout of a shard folder:
    manifest.json        seq_len, dtype, vocab_size, eos_id, max_token_id, shards [{file, rows}], per-domain
                         tokens, tokenizer hash: written last, atomically, so a folder with a manifest is complete
    shard_00000.bin ...  raw little-endian tokens, rows x (seq_len + 1)

Reading is typed (`ShardManifest.parse`, issue 22): dtype only uint16 or uint32, counts whole numbers >= 0
that agree with each other and with the files' sizes, shard files plain names inside the folder, and
every token id below vocab_size: from the recorded max_token_id, or, for a manifest written before it was
recorded, from one pass over the memory-mapped shards at open. The trainer then refuses shards whose
vocab_size exceeds model.vocab (`pretrain.train.check_data`), and each batch is checked once more (cheap)
so a shard changed after its manifest was written stops with one line, never an IndexError.

Rows hold documents joined by EOS and cut at row boundaries (the usual packing: GPT-2/3,
LLaMA). The dtype is uint16 when every id fits (vocab <= 65,536), else uint32; a vocabulary
that does not fit the requested dtype is refused, not silently wrapped (datatrove#118, dolma#142).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import atomic_write_bytes, atomic_write_json, read_json

MANIFEST = "manifest.json"
UINT16_LIMIT = 2**16
DTYPES = ("uint16", "uint32")
#: Largest vocabulary a manifest may state (uint32 ids); rows and lengths are held below these too.
MAX_VOCAB, MAX_SEQ_LEN, MAX_ROWS = 2**32, 1 << 24, 1 << 48
#: A manifest lists shards and per-domain counts: megabytes at most, never the tokens themselves.
MAX_MANIFEST_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        self.max_token_id = -1  # recorded in the manifest: the trainer checks it against model.vocab

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
            self.max_token_id = max(self.max_token_id, int(wide.max()))
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
        self.max_token_id = max(self.max_token_id, int(row.max()))
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
            "max_token_id": self.max_token_id if self.shards else None, "shards": self.shards, "rows": sum(s["rows"] for s in self.shards),
            "tokens": sum(s["rows"] for s in self.shards) * self.row_len, "dropped_tail_tokens": len(self._buffer),
            "documents": self.documents, "domain_tokens": self.domain_tokens,
            "tokenizer_sha256": self.tokenizer_hash, **(extra or {}),
        }
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest


def _count(where: str, value, lo: int, hi: int) -> int:
    return checks.integer(where, value, lo, hi)


@dataclass(frozen=True)
class ShardManifest:
    """manifest.json, typed: what the trainer relies on, each value checked where it is read."""

    seq_len: int
    dtype: str  # uint16 | uint32
    vocab_size: int
    eos_id: int | None
    shards: tuple[tuple[str, int], ...]  # (file name inside the folder, rows)
    max_token_id: int | None  # None: a manifest from before it was recorded (the shards are scanned at open)
    tokenizer_sha256: str | None

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.shards)

    @classmethod
    def parse(cls, data, where: str) -> ShardManifest:
        """`data` (the manifest's JSON); `where` (the manifest's path) starts every message, with the key."""
        if not isinstance(data, dict):
            raise PlannerError(f"{where}: holds a {type(data).__name__}, not a mapping of keys to values")
        missing = [k for k in ("seq_len", "dtype", "vocab_size", "shards") if k not in data]
        if missing:
            raise PlannerError(f"{where}: missing key(s) {', '.join(missing)} (not a shard manifest of ours)")
        seq_len = _count(f"{where}: seq_len", data["seq_len"], 1, MAX_SEQ_LEN)
        if data["dtype"] not in DTYPES:
            raise PlannerError(f"{where}: dtype {str(data['dtype'])[:40]!r} is not one of {', '.join(DTYPES)} "
                               "(token ids are unsigned integers)")
        vocab = _count(f"{where}: vocab_size", data["vocab_size"], 1, MAX_VOCAB)
        if data["dtype"] == "uint16" and vocab > UINT16_LIMIT:
            raise PlannerError(f"{where}: vocab_size {vocab:,} does not fit dtype uint16 (max {UINT16_LIMIT:,})")
        eos = data.get("eos_id")
        if eos is not None:
            eos = _count(f"{where}: eos_id", eos, 0, vocab - 1)
        top = data.get("max_token_id")
        if top is not None:
            top = _count(f"{where}: max_token_id", top, 0, MAX_VOCAB)
            if top >= vocab:
                raise PlannerError(f"{where}: max_token_id {top:,} is not below vocab_size {vocab:,}")
        sha = data.get("tokenizer_sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise PlannerError(f"{where}: tokenizer_sha256 {str(sha)[:80]!r} is not a sha256 hex digest")
        if not isinstance(data["shards"], list):
            raise PlannerError(f"{where}: shards must be a list of {{file, rows}}, not {type(data['shards']).__name__}")
        shards, seen = [], set()
        for i, entry in enumerate(data["shards"]):
            if not isinstance(entry, dict) or not {"file", "rows"} <= entry.keys():
                raise PlannerError(f"{where}: shards[{i}] must be a mapping with file and rows")
            name = entry["file"]
            if not isinstance(name, str) or "/" in name or "\\" in name or name in (".", ".."):
                raise PlannerError(f"{where}: shards[{i}].file {str(name)[:80]!r} must be a file name inside the "
                                   "shard folder (no path)")
            checks.name(f"{where}: shards[{i}].file", name)
            if name in seen or name == MANIFEST:
                raise PlannerError(f"{where}: shards[{i}].file {name!r} is listed twice or is the manifest")
            seen.add(name)
            shards.append((name, _count(f"{where}: shards[{i}].rows", entry["rows"], 0, MAX_ROWS)))
        rows = sum(r for _, r in shards)
        if "rows" in data and _count(f"{where}: rows", data["rows"], 0, MAX_ROWS) != rows:
            raise PlannerError(f"{where}: rows {data['rows']:,} is not the sum of the shards' rows ({rows:,})")
        if "tokens" in data and _count(f"{where}: tokens", data["tokens"], 0, MAX_ROWS * (MAX_SEQ_LEN + 1)) \
                != rows * (seq_len + 1):
            raise PlannerError(f"{where}: tokens {data['tokens']:,} is not rows x (seq_len + 1) "
                               f"= {rows * (seq_len + 1):,}")
        return cls(seq_len, data["dtype"], vocab, eos, tuple(shards), top, sha)


def read_manifest(path: str | Path) -> ShardManifest:
    """The typed manifest of the shard folder `path` (read through `read_input`: no FIFO, size-capped)."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        raise PlannerError(f"data: {path} has no {MANIFEST} (not a finished shard folder)")
    return ShardManifest.parse(_json(manifest_path), str(manifest_path))


def _json(path: Path):
    return read_json(path, MAX_MANIFEST_BYTES)


@dataclass
class TokenShards:
    """Read-only, memory-mapped view of a shard folder: row i as an array of seq_len + 1 tokens."""

    path: Path
    manifest: dict  # the manifest as written (extra keys: mixture, entropy rate, ...)
    _maps: list
    _offsets: np.ndarray
    typed: ShardManifest | None = None  # what `open` checked: the values the trainer uses

    @classmethod
    def open(cls, path: str | Path) -> TokenShards:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise PlannerError(f"data: {path} has no {MANIFEST} (not a finished shard folder)")
        raw = _json(manifest_path)  # read_input: a FIFO or device there is refused unread
        typed = ShardManifest.parse(raw, str(manifest_path))
        row_len, dtype = typed.seq_len + 1, np.dtype(typed.dtype).newbyteorder("<")
        folder = path.resolve()
        maps = []
        for name, rows in typed.shards:
            file = path / name
            expected = rows * row_len * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise PlannerError(f"data: {file} is missing or not {expected} bytes (corrupt shard folder)")
            if not file.resolve().is_relative_to(folder):
                raise PlannerError(f"{manifest_path}: shard {name} resolves to {file.resolve()}, outside {folder}")
            if rows:
                maps.append(np.memmap(file, dtype=dtype, mode="r", shape=(rows, row_len)))
        offsets = np.cumsum([0] + [rows for _, rows in typed.shards if rows])
        if offsets[-1] == 0:
            raise PlannerError(f"data: {path} holds no complete row of {row_len} tokens")
        top = typed.max_token_id
        if top is None:  # a manifest from before max_token_id was recorded: one pass over the shards, once
            top = max(int(m.max()) for m in maps)
            if top >= typed.vocab_size:
                raise PlannerError(f"{manifest_path}: vocab_size {typed.vocab_size:,} but the shards hold token id "
                                   f"{top:,} (ids must be below vocab_size)")
            typed = replace(typed, max_token_id=top)
        return cls(path, raw, maps, offsets, typed)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def seq_len(self) -> int:
        return self.typed.seq_len

    @property
    def vocab_size(self) -> int:
        return self.typed.vocab_size

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
        rows = np.stack([self.shards.row(int(i)).astype(np.int64) for i in idx])
        if int(rows.max()) >= self.shards.vocab_size:  # one pass over a micro-batch: a shard changed after its manifest
            raise PlannerError(f"data: {self.shards.path} holds token id {int(rows.max()):,}, not below its manifest's "
                               f"vocab_size {self.shards.vocab_size:,} (a shard changed after the manifest was written)")
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world": self.world,
                "micro_batch": self.micro_batch, "rows": len(self.shards),
                "tokenizer_sha256": self.shards.typed.tokenizer_sha256}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off: the same order (seed, corpus), the rows of this epoch consumed so far
        kept whole under another world size or micro-batch; what would skip or repeat data is refused."""
        self._check_same_order(state)
        # rows of this epoch consumed: a whole number of the new global micro-batches, or data would skip
        consumed = int(state["position"]) * int(state.get("micro_batch", self.micro_batch)) * \
            int(state.get("world", self.world))
        per_step = self.micro_batch * self.world
        if consumed % per_step:
            raise PlannerError(f"data: the checkpoint consumed {consumed:,} rows of epoch {state['epoch']}, not a "
                               f"whole number of micro-batches of {self.micro_batch} x {self.world} ranks; resume "
                               "with the checkpoint's parallel.micro_batch and world size")
        self.epoch, self.position = int(state["epoch"]), consumed // per_step
        self._order = self._permutation()

    def _check_same_order(self, state: dict) -> None:
        """The checkpoint's data order is this one's: its seed, and (where recorded) its corpus's rows and tokenizer."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise PlannerError(f"data.seed: {self.seed}, but the checkpoint's data order was drawn with seed "
                               f"{state['seed']}; resume with data.seed={state['seed']} or start a new out_dir")
        if "rows" in state and int(state["rows"]) != len(self.shards):
            raise PlannerError(f"data.train: {self.shards.path} holds {len(self.shards):,} rows, the checkpoint "
                               f"was trained on {int(state['rows']):,}: another corpus; start a new out_dir")
        saved, now = state.get("tokenizer_sha256"), self.shards.typed.tokenizer_sha256
        if saved and now and saved != now:
            raise PlannerError(f"data.train: {self.shards.path} was tokenized with another tokenizer than the "
                               "checkpoint's data; start a new out_dir")
