"""A model as people hold it: a Hugging Face `config.json` on disk -> ModelShape (no hub, no transformers).

Field names by family (the `model_type` key):
- llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, olmo, olmo2: `num_hidden_layers`, `hidden_size`,
  `num_attention_heads`, `num_key_value_heads` (GQA), `intermediate_size` (a gated MLP: SwiGLU, or
  GeGLU for Gemma: three matrices either way), `head_dim` (Gemma), `tie_word_embeddings`, RMSNorm,
  rotary positions, no biases;
- gpt_neox (Pythia): the same names, a 4h GeLU MLP, LayerNorm and biases everywhere, rotary positions;
- gpt2: `n_layer`, `n_embd`, `n_head`, `n_inner` (None: 4h), `n_positions` learned positions, LayerNorm,
  biases, tied head;
- phi3 fuses q, k, v into one `qkv_proj` and gate and up into one `gate_up_proj`: the same matrices side by
  side, so the same count as Llama's names;
- mixture of experts (`MOE_FIELDS`), Llama-shaped attention otherwise: mixtral (`num_local_experts`,
  `num_experts_per_tok`, `intermediate_size` is one expert's width), olmoe (`num_experts`,
  `intermediate_size` per expert), qwen2_moe (`moe_intermediate_size` per expert, one shared expert of
  `shared_expert_intermediate_size` with its sigmoid gate: the Qwen blog's "4 shared experts" of 1408 are this one
  of 5632, the same count), qwen3_moe (`moe_intermediate_size`, `head_dim`).
  Qwen's `mlp_only_layers` are dense layers (at the front only) and `decoder_sparse_step` must be 1.
  deepseek_v2 / deepseek_v3 are refused: their multi-head latent attention (low-rank q and kv) is not a
  shape the planner has yet.
- bert (encoder-only, `modeling_bert`): `num_hidden_layers`, `hidden_size`, `num_attention_heads`,
  `intermediate_size` (GeLU), `max_position_embeddings` learned positions, `type_vocab_size` token types,
  LayerNorm after the embedding and after each sub-layer (post-LN), biases; the head from `architectures`
  (`BERT_HEADS`: BertForMaskedLM, the published file's, is the MLM head tied to the embedding, no pooler);
- t5 (encoder-decoder, `modeling_t5`): `num_layers` and `num_decoder_layers`, `d_model`, `num_heads`, `d_kv`,
  `d_ff`, `feed_forward_proj` (relu: t5 v1.0; gated-gelu: t5 v1.1, flan-t5), `relative_attention_num_buckets`,
  `tie_word_embeddings` (default true), RMSNorm without bias, no biases.

Left out on purpose (each < 0.01% of the count in the shipped configs): Qwen2's (and Qwen2-MoE's) q/k/v
biases, the q/k norms of OLMo 2, OLMoE and Qwen3, Gemma 2's extra post-norms. `planner/model/hf_configs/` ships the published configs of current
families; they are also the presets (`--model llama3-8b`).
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.core.errors import PlannerError
from planner.core.io import read_input
from planner.model.shapes import ModelShape, MoE

GATED = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "olmo", "olmo2")
#: Mixture-of-experts families: (routed experts, one expert's width, shared expert's width or None) field names.
MOE_FIELDS = {"mixtral": ("num_local_experts", "intermediate_size", None),
              "olmoe": ("num_experts", "intermediate_size", None),
              "qwen2_moe": ("num_experts", "moe_intermediate_size", "shared_expert_intermediate_size"),
              "qwen3_moe": ("num_experts", "moe_intermediate_size", None)}
#: Families named so the refusal says why.
REFUSED = {"deepseek_v2": "multi-head latent attention", "deepseek_v3": "multi-head latent attention"}
#: BERT's classes by what they put on the encoder (`ModelShape.encoder_head`); a config naming none is planned
#: as BertForMaskedLM, what masked-language-model pretraining trains.
BERT_HEADS = {"BertForMaskedLM": "mlm", "BertModel": "pooler", "BertForPreTraining": "pretraining"}
#: T5's `feed_forward_proj` -> the MLP kind.
T5_MLPS = {"relu": "relu", "gated-gelu": "geglu"}
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
    if kind == "bert":
        return _bert(cfg, path, seq_len)
    if kind == "t5":
        return _t5(cfg, path, seq_len)
    if kind == "gpt2":
        hidden = _int(cfg, path, "n_embd", "hidden_size")
        positions = _int(cfg, path, "n_positions", "max_position_embeddings")
        return ModelShape(_int(cfg, path, "n_layer", "num_hidden_layers"), hidden, _int(cfg, path, "n_head"),
                          _int(cfg, path, "vocab_size"), positions,
                          ffn_hidden=_int(cfg, path, "n_inner", default=4 * hidden), mlp="gelu", norm="layernorm",
                          position="learned", tied_embeddings=_bool(cfg, path, "tie_word_embeddings", True), bias=True)
    if kind in REFUSED:
        raise PlannerError(f"--hf-config: {path}: model_type {kind!r} uses {REFUSED[kind]} (low-rank q and kv), "
                           f"which the planner does not model yet; planned MoE families: {', '.join(MOE_FIELDS)}")
    if kind not in (*GATED, *MOE_FIELDS, "gpt_neox"):
        raise PlannerError(f"--hf-config: {path}: model_type {kind!r} is not one of "
                           f"{', '.join((*GATED, *MOE_FIELDS, 'gpt_neox', 'gpt2', 'bert', 't5'))}")
    context = _int(cfg, path, "max_position_embeddings", default=2048)
    heads = _int(cfg, path, "num_attention_heads")
    common = {"kv_heads": _int(cfg, path, "num_key_value_heads", default=heads),
              "ffn_hidden": _int(cfg, path, "intermediate_size"),
              "tied_embeddings": _bool(cfg, path, "tie_word_embeddings", kind in ("gemma", "gemma2"))}
    if cfg.get("head_dim") is not None:
        common["head_dim_override"] = _int(cfg, path, "head_dim")
    if kind == "gpt_neox":
        common.update(mlp="gelu", norm="layernorm", bias=True, kv_heads=None)
    if kind in MOE_FIELDS:
        common["moe"] = _moe_from_hf(cfg, path, kind, _int(cfg, path, "num_hidden_layers"))
    return ModelShape(_int(cfg, path, "num_hidden_layers"), _int(cfg, path, "hidden_size"), heads,
                      _int(cfg, path, "vocab_size"), seq_len or min(context, MAX_DEFAULT_SEQ), **common)


def _bert(cfg: dict, path: Path, seq_len: int | None) -> ModelShape:
    """A BERT config (Devlin et al. 2019) as `transformers.BertForMaskedLM` (or the class it names) builds it."""
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise PlannerError(f"--hf-config: {path}: position_embedding_type {cfg['position_embedding_type']!r}; "
                           "the planner models BERT's absolute learned positions only")
    names = cfg.get("architectures") or ["BertForMaskedLM"]
    if not isinstance(names, list) or names[0] not in BERT_HEADS:
        raise PlannerError(f"--hf-config: {path}: architectures {names!r}: planned BERT classes are "
                           f"{', '.join(BERT_HEADS)}")
    positions = _int(cfg, path, "max_position_embeddings", default=512)
    hidden = _int(cfg, path, "hidden_size")
    return ModelShape(_int(cfg, path, "num_hidden_layers"), hidden, _int(cfg, path, "num_attention_heads"),
                      _int(cfg, path, "vocab_size"), seq_len or positions,
                      ffn_hidden=_int(cfg, path, "intermediate_size", default=4 * hidden), mlp="gelu",
                      norm="layernorm", position="learned", tied_embeddings=_bool(cfg, path, "tie_word_embeddings", True),
                      bias=True, embedding_norm=True, arch="encoder", max_positions=positions,
                      token_types=_int(cfg, path, "type_vocab_size", default=2), post_norm=True,
                      encoder_head=BERT_HEADS[names[0]])


def _t5(cfg: dict, path: Path, seq_len: int | None) -> ModelShape:
    """A T5 config (Raffel et al. 2020) as `transformers.T5ForConditionalGeneration` builds it; `seq_len` is the
    encoder's input length (default 512, T5's), the targets span corruption's for it."""
    proj = cfg.get("feed_forward_proj", "relu")
    if proj not in T5_MLPS:
        raise PlannerError(f"--hf-config: {path}: feed_forward_proj {proj!r} is not one of {', '.join(T5_MLPS)}")
    heads, layers = _int(cfg, path, "num_heads"), _int(cfg, path, "num_layers")
    return ModelShape(layers, _int(cfg, path, "d_model"), heads, _int(cfg, path, "vocab_size"),
                      seq_len or _int(cfg, path, "n_positions", default=512), ffn_hidden=_int(cfg, path, "d_ff"),
                      mlp=T5_MLPS[proj], norm="rmsnorm", position="relative",
                      tied_embeddings=_bool(cfg, path, "tie_word_embeddings", True),
                      head_dim_override=_int(cfg, path, "d_kv"), arch="encoder-decoder",
                      decoder_layers=_int(cfg, path, "num_decoder_layers", default=layers),
                      relative_buckets=_int(cfg, path, "relative_attention_num_buckets", default=32))


def _moe_from_hf(cfg: dict, path: Path, kind: str, layers: int) -> MoE:
    experts, width, shared = MOE_FIELDS[kind]
    step = cfg.get("decoder_sparse_step", 1)
    if step != 1:
        raise PlannerError(f"--hf-config: {path}: decoder_sparse_step {step!r} interleaves dense and MoE layers; "
                           "the planner models dense layers at the front only (decoder_sparse_step 1)")
    dense = cfg.get("mlp_only_layers") or []
    if not isinstance(dense, list) or dense != list(range(len(dense))) or len(dense) >= layers:
        raise PlannerError(f"--hf-config: {path}: mlp_only_layers {dense!r} must be the first layers "
                           f"(0, 1, ...), fewer than {layers}")
    shared_ffn = _int(cfg, path, shared) if shared else None
    return MoE(_int(cfg, path, experts), _int(cfg, path, "num_experts_per_tok"), _int(cfg, path, width),
               shared_experts=1 if shared_ffn else 0, shared_ffn=shared_ffn, dense_layers=len(dense),
               shared_gate=kind == "qwen2_moe")


def shipped_presets() -> dict[str, Path]:
    """The published configs in `planner/model/hf_configs/`, by preset name."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.json"))}
