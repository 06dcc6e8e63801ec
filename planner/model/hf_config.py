"""A model as people hold it: a Hugging Face `config.json` on disk -> ModelShape (no hub, no transformers).

Field names by family (the `model_type` key):
- llama, mistral, qwen2, gemma, gemma2, olmo, olmo2: `num_hidden_layers`, `hidden_size`,
  `num_attention_heads`, `num_key_value_heads` (GQA), `intermediate_size` (a gated MLP: SwiGLU, or
  GeGLU for Gemma: three matrices either way), `head_dim` (Gemma), `tie_word_embeddings`, RMSNorm,
  rotary positions, no biases;
- gpt_neox (Pythia): the same names, a 4h GeLU MLP, LayerNorm and biases everywhere, rotary positions;
- gpt2: `n_layer`, `n_embd`, `n_head`, `n_inner` (None: 4h), `n_positions` learned positions, LayerNorm,
  biases, tied head.

Left out on purpose (each < 0.01% of the count in the shipped configs): Qwen2's q/k/v biases, OLMo 2's
q/k norms, Gemma 2's extra post-norms. `planner/model/hf_configs/` ships the published configs of current
families; they are also the presets (`--model llama3-8b`).
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import read_input
from planner.model.shapes import ModelShape

GATED = ("llama", "mistral", "qwen2", "gemma", "gemma2", "olmo", "olmo2")
SHIPPED = Path(__file__).parent / "hf_configs"
#: Sequence length planned when none is given: the model's context, capped at this.
MAX_DEFAULT_SEQ = 4096


def _get(cfg: dict, path: Path, *names: str, default=None):
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    if default is not None:
        return default
    raise PlannerError(f"--hf-config: {path} has none of {', '.join(names)}")


def _int(cfg: dict, path: Path, *names: str, default=None) -> int:
    value = _get(cfg, path, *names, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlannerError(f"--hf-config: {path}: {names[0]} must be a positive integer, not {value!r}")
    return value


def _bool(cfg: dict, path: Path, name: str, default: bool) -> bool:
    value = cfg.get(name, default)
    if not isinstance(value, bool):
        raise PlannerError(f"--hf-config: {path}: {name} must be true or false, not {value!r}")
    return value


def shape_from_hf(path: str | Path, seq_len: int | None = None) -> ModelShape:
    path = Path(path)
    try:
        cfg = json.loads(read_input(path, max_bytes=4 << 20).decode("utf-8"))
    except OSError as exc:
        raise PlannerError(f"--hf-config: cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlannerError(f"--hf-config: {path} is not a JSON config: {exc}") from None
    except RecursionError:
        raise PlannerError(f"--hf-config: {path} is nested too deeply to be a model config") from None
    if not isinstance(cfg, dict):
        raise PlannerError(f"--hf-config: {path} holds a {type(cfg).__name__}, not a config object")
    kind = cfg.get("model_type")
    if kind == "gpt2":
        hidden = _int(cfg, path, "n_embd", "hidden_size")
        positions = _int(cfg, path, "n_positions", "max_position_embeddings")
        return ModelShape(_int(cfg, path, "n_layer", "num_hidden_layers"), hidden, _int(cfg, path, "n_head"),
                          _int(cfg, path, "vocab_size"), positions,
                          ffn_hidden=_int(cfg, path, "n_inner", default=4 * hidden), mlp="gelu", norm="layernorm",
                          position="learned", tied_embeddings=_bool(cfg, path, "tie_word_embeddings", True), bias=True)
    if kind not in (*GATED, "gpt_neox"):
        raise PlannerError(f"--hf-config: {path}: model_type {kind!r} is not one of "
                           f"{', '.join((*GATED, 'gpt_neox', 'gpt2'))}")
    context = _int(cfg, path, "max_position_embeddings", default=2048)
    heads = _int(cfg, path, "num_attention_heads")
    common = {"kv_heads": _int(cfg, path, "num_key_value_heads", default=heads),
              "ffn_hidden": _int(cfg, path, "intermediate_size"),
              "tied_embeddings": _bool(cfg, path, "tie_word_embeddings", kind in ("gemma", "gemma2"))}
    if cfg.get("head_dim") is not None:
        common["head_dim_override"] = _int(cfg, path, "head_dim")
    if kind == "gpt_neox":
        common.update(mlp="gelu", norm="layernorm", bias=True, kv_heads=None)
    return ModelShape(_int(cfg, path, "num_hidden_layers"), _int(cfg, path, "hidden_size"), heads,
                      _int(cfg, path, "vocab_size"), seq_len or min(context, MAX_DEFAULT_SEQ), **common)


def shipped_presets() -> dict[str, Path]:
    """The published configs in `planner/model/hf_configs/`, by preset name."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.json"))}
