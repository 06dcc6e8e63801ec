"""Named model presets: shapes from the papers' tables, and the shipped Hugging Face configs.

Each preset carries the published parameter count and where it is published, so tests can hold
`ModelShape.param_count()` against it (within 0.01% for the shipped configs).

Two shipped configs are not decoders: `bert-base-uncased` (encoder-only, planned as BertForMaskedLM, its
config's class: 109,514,298 parameters, the MLM head tied to the word embedding, no pooler; BertModel with the
pooler, the published 110M, is 109,482,240) and `t5-base` (encoder-decoder, T5ForConditionalGeneration with the
LM head tied to the shared embedding: 222,903,552).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.core.errors import PlannerError
from planner.model.hf_config import shape_from_hf, shipped_presets
from planner.model.shapes import ModelShape


def _llama(layers, hidden, heads, ffn, seq, kv=None, vocab=32000) -> ModelShape:
    return ModelShape(layers, hidden, heads, vocab, seq, kv_heads=kv, ffn_hidden=ffn)


def _gpt(layers, hidden, heads, vocab=50257, seq=2048) -> ModelShape:
    return ModelShape(layers, hidden, heads, vocab, seq, mlp="gelu", norm="layernorm",
                      position="learned", tied_embeddings=True, bias=True)


@dataclass(frozen=True)
class Preset:
    shape: ModelShape
    published_params: float
    source: str


PRESETS: dict[str, Preset] = {
    "gpt3-175b": Preset(_gpt(96, 12288, 96), 175e9, "Brown et al. 2020, Table 2.1"),
    # Table 2.1 prints d_model 5140, but 40 heads x 128 = 5120, which Table D.1's FLOPs imply.
    "gpt3-13b": Preset(_gpt(40, 5120, 40), 13e9, "Brown et al. 2020, Table 2.1"),
    "gpt3-6.7b": Preset(_gpt(32, 4096, 32), 6.7e9, "Brown et al. 2020, Table 2.1"),
    "gpt3-2.7b": Preset(_gpt(32, 2560, 32), 2.7e9, "Brown et al. 2020, Table 2.1"),
    "gpt3-1.3b": Preset(_gpt(24, 2048, 16), 1.3e9, "Brown et al. 2020, Table 2.1"),
    # Chinchilla: kv size 128, ffn 4h, relative positions (no position parameters), 32k vocab.
    "chinchilla-70b": Preset(
        ModelShape(80, 8192, 64, 32000, 2048, mlp="gelu", norm="rmsnorm", position="rope"),
        70e9, "Hoffmann et al. 2022, Table 4 (published count includes terms not modelled here)"),
    "llama-7b": Preset(_llama(32, 4096, 32, 11008, 2048), 6.7e9, "Touvron et al. 2023, Table 2"),
    "llama-13b": Preset(_llama(40, 5120, 40, 13824, 2048), 13.0e9, "Touvron et al. 2023, Table 2"),
    "llama-65b": Preset(_llama(80, 8192, 64, 22016, 2048), 65.2e9, "Touvron et al. 2023, Table 2"),
    "llama2-7b": Preset(_llama(32, 4096, 32, 11008, 4096), 6.7e9, "Touvron et al. 2023b, Table 1"),
    "llama2-13b": Preset(_llama(40, 5120, 40, 13824, 4096), 13.0e9, "Touvron et al. 2023b, Table 1"),
    "llama2-70b": Preset(_llama(80, 8192, 64, 28672, 4096, kv=8), 69.0e9, "Touvron et al. 2023b, Table 1"),
    # BloombergGPT: 70 layers, 40 heads x 192, ALiBi, LayerNorm after the embedding, tied head.
    "bloomberggpt-50b": Preset(
        ModelShape(70, 7680, 40, 131072, 2048, mlp="gelu", norm="layernorm", position="alibi",
                   tied_embeddings=True, bias=True, embedding_norm=True),
        50.6e9, "Wu et al. 2023, Section 3"),
}

_PRESET_ALIASES = {"gpt3": "gpt3-175b", "chinchilla": "chinchilla-70b", "bloomberggpt": "bloomberggpt-50b",
                   "llama2": "llama2-7b", "llama": "llama-7b"}


def get_preset(name: str) -> Preset:
    """A named preset: the paper tables above, or a shipped Hugging Face config (`planner/model/hf_configs/`)."""
    key = _PRESET_ALIASES.get(name.lower(), name.lower())
    if key in PRESETS:
        return PRESETS[key]
    shipped = shipped_presets()
    if key in shipped:
        shape = shape_from_hf(shipped[key])
        return Preset(shape, shape.param_count(), f"config.json as published (planner/model/hf_configs/{key}.json)")
    raise PlannerError(f"--model: unknown preset {name!r}; known: {', '.join([*PRESETS, *shipped])}")
