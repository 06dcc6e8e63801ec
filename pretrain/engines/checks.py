"""Refuse a checkpoint written for another model shape, with the differing keys named.

Engines whose checkpoint format has no room for it (DCP, DeepSpeed) keep the shape beside the states
in `model_config.json`; `write_model_config` / `check_model_config` are that file's two ends.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.core.io import atomic_write_json
from planner.core.schema import ConfigError, ModelConfig
from pretrain.model import SHAPE_KEYS, resolved_shape

MODEL_CONFIG = "model_config.json"


def check_model_state(saved: dict | None, current: ModelConfig, path: Path) -> None:
    if not saved:
        return
    before, now = resolved_shape(saved), resolved_shape(vars(current))
    diff = [f"model.{k}: checkpoint {saved.get(k)!r} vs config {getattr(current, k)!r}"
            for k in SHAPE_KEYS if k in saved and before[k] != now[k]]
    if diff:
        raise ConfigError(f"checkpoint {path} is for another model shape ({'; '.join(diff)})")


def write_model_config(path: Path, model: ModelConfig, is_main: bool) -> None:
    """Rank 0 records the model shape in the checkpoint folder `path`."""
    if is_main:
        atomic_write_json(Path(path) / MODEL_CONFIG, vars(model))


def check_model_config(path: Path, current: ModelConfig) -> None:
    """Refuse the checkpoint folder `path` if its recorded shape is not `current` (older ones have none)."""
    config_file = Path(path) / MODEL_CONFIG
    if config_file.is_file():
        check_model_state(json.loads(config_file.read_text()), current, path)
