"""Atomic checkpoints: write `step_N.tmp/`, rename to `step_N/`, then point `latest` at it.

A crash during a save leaves at most a `.tmp` folder, which the next save removes; `latest`
always names a complete checkpoint. Besides the engine's model and optimizer states, each rank
stores its RNG states and data-loader position, and rank 0 the loop's counters and MLflow run id.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from planner.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from planner.core.schema import ConfigError
from pretrain.distributed import DistInfo, barrier

LATEST = "latest"


def rng_state() -> dict:
    """RNG states as tensors and plain values only, so that `torch.load(weights_only=True)` reads them
    back: a checkpoint never needs pickle's code execution (issue 11)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, root: str | Path, info: DistInfo, keep_last: int = 3):
        self.root, self.info, self.keep_last = Path(root), info, keep_last

    def latest(self) -> Path | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / "meta.json").is_file():
            raise ConfigError(f"checkpoint: {pointer} names {path.name}, which is missing or incomplete")
        return path

    def save(self, step: int, engine, loader_state: dict, meta: dict) -> Path:
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f"step_{step:08d}.tmp"
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob("*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        barrier(self.info)
        engine.save(tmp)
        buf = io.BytesIO()
        torch.save({"rng": rng_state(), "loader": loader_state}, buf)
        atomic_write_bytes(tmp / f"rank_{self.info.rank:05d}.pt", buf.getvalue())
        barrier(self.info)
        if self.info.is_main:
            atomic_write_json(tmp / "meta.json", {**meta, "step": step, "world": self.info.world})
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            atomic_write_text(self.root / LATEST, final.name + "\n")
            self.prune(keep=final)
        barrier(self.info)
        return final

    def prune(self, keep: Path) -> None:
        """Delete complete checkpoints older than the newest `keep_last`; never `keep` (what `latest` names)
        and never a `.tmp` folder (a save in progress)."""
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-self.keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, engine) -> tuple[dict, dict]:
        """Restore engine states and this rank's RNG; returns (meta, loader state)."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            engine.load(path)
            rank_file = path / f"rank_{self.info.rank:05d}.pt"
            same_world = meta.get("world") == self.info.world and rank_file.is_file()
            state = torch.load(rank_file if same_world else path / "rank_00000.pt", weights_only=True)
            if same_world:
                set_rng_state(state["rng"])
            return meta, state["loader"]
        except ConfigError:
            raise
        except Exception as exc:  # torch/DeepSpeed raise many types on a damaged or crafted checkpoint
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"checkpoint {path} is unreadable, corrupted or not ours (only tensors and plain "
                              f"values are loaded): {first}") from None
