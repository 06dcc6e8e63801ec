"""Atomic checkpoints: write `step_N.tmp/`, rename to `step_N/`, then point `latest` at it.

A crash during a save leaves at most a `.tmp` folder, which the next save removes; `latest`
always names a complete checkpoint. Besides the engine's model and optimizer states, each rank
stores its RNG states and data-loader position, and rank 0 the loop's counters and MLflow run id.

What is read back is typed at the edge (issue 22): `latest` must name a folder inside the checkpoint
folder (a symlink loop, an absolute path, `..` or a link that leaves it is refused in one line, never
taken for "no checkpoint", so nothing is retrained over), no link inside the checkpoint may leave it,
`meta.json` becomes a `CheckpointMeta` (step in [0, train.steps], counters >= 0, run id a name,
history and evals increasing (step, finite loss) pairs) and the loader position whole numbers >= 0.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_input, read_json
from planner.core.schema import ConfigError
from pretrain.distributed import DistInfo, barrier

LATEST = "latest"
META = "meta.json"
#: meta.json carries one (step, loss) pair per step: ~40 bytes each, so this is millions of steps.
MAX_META_BYTES = 256 << 20
#: Counters (tokens, steps, loader positions) held below 2^62: any real run is, and int64 holds them.
MAX_COUNT = 1 << 62


def _typed(where: str, check, *args):
    """Run a `planner.core.checks` check, re-raised as a ConfigError (the checkpoint's error type)."""
    try:
        return check(where, *args)
    except ConfigError:
        raise
    except PlannerError as exc:
        raise ConfigError(str(exc)) from None


def _pairs(where: str, value, last_step: int) -> tuple[tuple[int, float], ...]:
    """[[step, loss], ...] with whole steps in [1, last_step], strictly increasing, and finite losses."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list of [step, loss] pairs, not {type(value).__name__}")
    out, previous = [], 0
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConfigError(f"{where}[{i}]: {str(pair)[:60]} is not a [step, loss] pair")
        step = _typed(f"{where}[{i}] step", checks.integer, pair[0], 1, max(1, last_step))
        if step <= previous or step > last_step:
            raise ConfigError(f"{where}[{i}] step: {step} must come after step {previous} and by the checkpoint's "
                              f"step {last_step}")
        loss = pair[1]
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise ConfigError(f"{where}[{i}] loss: {loss!r} must be a finite number")
        out.append((step, float(loss)))
        previous = step
    return tuple(out)


@dataclass(frozen=True)
class CheckpointMeta:
    """What rank 0 writes in a checkpoint's meta.json, typed: where the loop was and what it had logged."""

    step: int
    world: int
    tokens_seen: int = 0
    skipped_total: int = 0
    run_id: str | None = None  # the MLflow run to keep logging into
    history: tuple[tuple[int, float], ...] = ()  # (step, train loss), skipped steps left out
    evals: tuple[tuple[int, float], ...] = ()  # (step, eval loss)
    aux_losses: tuple[tuple[int, float], ...] = ()  # (step, MoE load-balancing loss); none for a dense model

    @classmethod
    def parse(cls, data, where: str, max_step: int) -> CheckpointMeta:
        """`data` (meta.json's JSON) checked key by key; `where` names the file in every message; a step past
        `max_step` (train.steps) is refused, as is anything that would make the loop run backwards."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: holds a {type(data).__name__}, not a mapping of keys to values")
        missing = [k for k in ("step", "world", "tokens_seen", "skipped_total", "history", "evals") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)} (not a complete checkpoint of ours)")
        step = _typed(f"{where}: step", checks.integer, data["step"], 0, None)
        if step > max_step:  # a sound checkpoint of a longer run: the config is what to change, not the file
            raise ConfigError(f"{where}: step {step} is past train.steps {max_step}: raise train.steps to go on, or "
                              "give a new out_dir (or train.resume=false) to start over")
        world = _typed(f"{where}: world", checks.integer, data["world"], 1, 1 << 24)
        tokens = _typed(f"{where}: tokens_seen", checks.integer, data["tokens_seen"], 0, MAX_COUNT)
        skipped = _typed(f"{where}: skipped_total", checks.integer, data["skipped_total"], 0, step)
        run_id = data.get("mlflow_run_id")
        if run_id is not None:
            _typed(f"{where}: mlflow_run_id", checks.name, run_id)
        history = _pairs(f"{where}: history", data["history"], step)
        if len(history) + skipped > step:
            raise ConfigError(f"{where}: history has {len(history)} steps and skipped_total is {skipped}, more than "
                              f"the {step} steps run")
        return cls(step, world, tokens, skipped, run_id, history, _pairs(f"{where}: evals", data["evals"], step),
                   _pairs(f"{where}: aux_losses", data.get("aux_losses", []), step))


def loader_state(state, where: str) -> dict:
    """The data loader's position from a rank file: whole numbers, epoch and position >= 0, world >= 1."""
    if not isinstance(state, dict):
        raise ConfigError(f"{where}: loader state is a {type(state).__name__}, not a mapping")
    out = dict(state)
    for key, lo in (("epoch", 0), ("position", 0), ("world", 1), ("micro_batch", 1), ("rows", 1), ("seed", 0)):
        if key in state:
            out[key] = _typed(f"{where}: loader.{key}", checks.integer, state[key], lo, MAX_COUNT)
    if state.get("tokenizer_sha256") is not None:
        _typed(f"{where}: loader.tokenizer_sha256", checks.sha256, state["tokenizer_sha256"])
    for key in ("epoch", "position"):
        if key not in state:
            raise ConfigError(f"{where}: loader state lacks {key!r}")
    return out


def _resolved(path: Path, what: str) -> Path:
    """`path` with every link followed; a symlink loop or a dangling link is one ConfigError naming `what`."""
    try:
        return path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise ConfigError(f"checkpoint: {what} is a symlink loop; remove it (or point it at a step_* folder "
                          "inside the checkpoint folder)") from None
    except FileNotFoundError:
        raise ConfigError(f"checkpoint: {what} names something that does not exist (a dangling link or a missing "
                          "folder)") from None
    except OSError as exc:  # ELOOP on 3.13+, EACCES, ...
        raise ConfigError(f"checkpoint: {what} cannot be resolved: {exc.strerror or exc}") from None


def _inside(path: Path, root: Path, what: str) -> Path:
    """`path` resolved, which must lie inside the (resolved) checkpoint folder `root`."""
    real = _resolved(path, what)
    if not real.is_relative_to(root):
        raise ConfigError(f"checkpoint: {what} resolves to {real}, outside the checkpoint folder {root}; "
                          "only checkpoints inside it are resumed from")
    return real


def _links_stay_inside(folder: Path, root: Path) -> None:
    """Every link anywhere under a checkpoint folder must resolve inside the checkpoint folder `root`."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for entry in (*dirnames, *filenames):
            path = Path(dirpath) / entry
            if path.is_symlink():
                _inside(path, root, str(path))


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
        """The checkpoint `latest` names, or None when there is no `latest` at all (a fresh run). A `latest`
        that is there but unusable (a symlink loop, a dangling link, a name with a path in it, a folder
        outside this one, an incomplete checkpoint) is refused: training from scratch would overwrite the
        checkpoints it failed to name."""
        pointer = self.root / LATEST
        if not os.path.lexists(pointer):
            return None
        root = _resolved(self.root, str(self.root))
        _inside(pointer, root, str(pointer))
        try:
            name = read_input(pointer, max_bytes=4096).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"checkpoint: {pointer} is not text (it holds the name of a step_* folder)") from None
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"checkpoint: {pointer} holds {name[:80]!r}, not the name of a step_* folder beside it")
        _typed(f"checkpoint: {pointer}", checks.name, name)
        path = self.root / name
        real = _inside(path, root, f"{pointer} -> {name}")
        if not real.is_dir() or not (path / META).is_file():
            raise ConfigError(f"checkpoint: {pointer} names {name}, which is missing or incomplete")
        _links_stay_inside(path, root)
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
            atomic_write_json(tmp / META, {**meta, "step": step, "world": self.info.world})
            if final.is_symlink():  # a link planted here: drop the link, never what it points at
                final.unlink()
            elif final.exists():
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

    def read_meta(self, path: Path, max_step: int) -> CheckpointMeta:
        """`path`/meta.json, typed (`CheckpointMeta.parse`); read through `read_input` (no FIFO, capped)."""
        where = str(path / META)
        return CheckpointMeta.parse(read_json(path / META, MAX_META_BYTES), where, max_step)

    def load(self, path: Path, engine, max_step: int) -> tuple[CheckpointMeta, dict]:
        """Restore engine states and this rank's RNG; returns (meta, loader state). `max_step` is train.steps:
        a checkpoint past it (or with a negative step) is refused before anything is loaded."""
        meta = self.read_meta(path, max_step)
        try:
            engine.load(path)
            rank_file = path / f"rank_{self.info.rank:05d}.pt"
            same_world = meta.world == self.info.world and rank_file.is_file()
            source = rank_file if same_world else path / "rank_00000.pt"
            state = torch.load(source, weights_only=True)
            if same_world:
                set_rng_state(state["rng"])
            return meta, loader_state(state["loader"], str(source))
        except ConfigError:
            raise
        except Exception as exc:  # torch/DeepSpeed raise many types on a damaged or crafted checkpoint
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"checkpoint {path} is unreadable, corrupted or not ours (only tensors and plain "
                              f"values are loaded): {first}") from None
