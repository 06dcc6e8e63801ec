"""Refuse a checkpoint written for another model shape, with the differing keys named.

Engines whose checkpoint format has no room for it (DCP, DeepSpeed) keep the shape beside the states
in `model_config.json`; `write_model_config` / `check_model_config` are that file's two ends.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from planner.core.io import atomic_write_json
from planner.core.schema import ConfigError, ModelConfig
from planner.model.shapes import shape_of

MODEL_CONFIG = "model_config.json"


SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "tied_embeddings", "experts", "top_k",
              "expert_ffn", "shared_experts", "shared_ffn", "dense_layers", "arch", "mlp", "max_positions",
              "token_types", "decoder_layers", "head_dim", "relative_buckets")


def resolved_shape(model: dict) -> dict:
    """`SHAPE_KEYS` of a model section with each None default resolved to what the trainer builds (kv_heads None
    is heads; ffn_hidden None is the architecture's width, ...): a config that spells a default out is the same
    shape as one that leaves it to the default."""
    known = {f.name for f in fields(ModelConfig)}
    m = ModelConfig(**{k: v for k, v in model.items() if k in known})
    shape = shape_of(m)
    out = {k: getattr(m, k) for k in SHAPE_KEYS}
    out.update(kv_heads=shape.n_kv_heads, ffn_hidden=shape.ffn, mlp=shape.mlp, head_dim=shape.head_dim,
               max_positions=m.max_positions or (m.seq_len if m.arch == "encoder" else None),
               decoder_layers=m.decoder_layers or (m.layers if m.arch == "encoder-decoder" else None))
    if m.experts:
        out.update(expert_ffn=shape.moe.expert_ffn, shared_ffn=shape.moe.shared_width)
    return out


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
