"""Refuse a checkpoint written for another model shape, with the differing keys named."""

from __future__ import annotations

from pathlib import Path

from pretrain.config import ConfigError, ModelConfig


def check_model_state(saved: dict | None, current: ModelConfig, path: Path) -> None:
    if not saved:
        return
    now = vars(current)
    diff = [f"model.{k}: checkpoint {saved[k]!r} vs config {now[k]!r}"
            for k in ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "tied_embeddings")
            if k in saved and saved[k] != now.get(k)]
    if diff:
        raise ConfigError(f"checkpoint {path} is for another model shape ({'; '.join(diff)})")
