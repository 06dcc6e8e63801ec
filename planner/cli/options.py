"""Options shared by the planner's commands: counts like 7B, the model and layout flags, and the one
translation of those flags into an `EstimateRequest` (the layout as one `ParallelPlan`)."""

from __future__ import annotations

import click

from planner.core import parallel
from planner.core.errors import PlannerError
from planner.core.units import parse_count
from planner.memory import model_states as memory


class CountType(click.ParamType):
    """A positive count written as 7e9, 7B, 70b, 1.3e9 or 1.4T."""

    name = "count"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_count(value, param.opts[0] if param else "value")
        except PlannerError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


COUNT = CountType()


def model_options(f):
    f = click.option("--params", type=COUNT, help="Total parameters: 7e9, 7B, 70b, 1.3e9.")(f)
    f = click.option("--model", "model", help="Named preset, e.g. llama2-7b, gpt3-175b, bloomberggpt-50b.")(f)
    f = click.option("--layers", type=int, help="Shape: transformer layers.")(f)
    f = click.option("--hidden", type=int, help="Shape: hidden size.")(f)
    f = click.option("--heads", type=int, help="Shape: attention heads.")(f)
    f = click.option("--kv-heads", type=int, help="Shape: key/value heads (grouped-query attention).")(f)
    f = click.option("--ffn", type=int, help="Shape: MLP hidden size (default 8h/3 rounded to 256, SwiGLU).")(f)
    f = click.option("--vocab", type=int, help="Shape: vocabulary size.")(f)
    f = click.option("--mlp", type=click.Choice(["swiglu", "gelu", "relu", "geglu"]),
                     help="Shape: MLP kind (default: the architecture's: swiglu; an encoder's gelu; an "
                          "encoder-decoder's relu, T5 v1.0; geglu: T5 v1.1).")(f)
    f = click.option("--tied-embeddings", is_flag=True, help="Shape: LM head shares the embedding matrix.")(f)
    f = click.option("--arch", type=click.Choice(["decoder", "encoder", "encoder-decoder"]),
                     help="Architecture (default: the model's; shape flags: decoder). encoder: BERT-style "
                          "bidirectional blocks with an MLM head; encoder-decoder: T5-style, --layers per stack.")(f)
    f = click.option("--objective", type=click.Choice(["clm", "mlm", "span-corruption"]),
                     help="Pretraining objective, checked against the architecture: clm (decoder), mlm (encoder), "
                          "span-corruption (encoder-decoder).")(f)
    f = click.option("--target-len", type=int, help="Encoder-decoder: decoder tokens per sequence (default: span "
                     "corruption's for --seq-len inputs, 114 for 512).")(f)
    f = click.option("--experts", type=int, help="Shape, mixture of experts: routed experts per MoE layer.")(f)
    f = click.option("--top-k", type=int, help="Shape, MoE: routed experts per token (default 2 with --experts).")(f)
    f = click.option("--expert-ffn", type=int, help="Shape, MoE: one expert's MLP width (default: --ffn's).")(f)
    f = click.option("--shared-experts", type=int, help="Shape, MoE: shared experts every token passes through.")(f)
    f = click.option("--shared-ffn", type=int, help="Shape, MoE: one shared expert's width (default --expert-ffn).")(f)
    f = click.option("--dense-layers", type=int, help="Shape, MoE: leading layers with a dense MLP "
                     "(DeepSeek's first_k_dense_replace).")(f)
    f = click.option("--capacity-factor", type=float, help="MoE routing: each expert's buffer as a multiple of "
                     "its mean share of tokens, overflow dropped (Switch's 1.25); default dropless.")(f)
    f = click.option("--seq-len", type=int, help="Sequence length (default: preset's, else 2048).")(f)
    f = click.option("--hf-config", type=click.Path(), help="A Hugging Face config.json on disk (Llama, Mistral, "
                     "Qwen2/3, Phi-3, Gemma, OLMo, GPT-NeoX, GPT-2; MoE: Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE; BERT, T5).")(f)
    f = click.option("--config", "run_config", type=click.Path(),
                     help="Estimate the job a run config (run.yaml from `planner emit`) describes.")(f)
    return f


MOE_FLAGS = ("experts", "top_k", "expert_ffn", "shared_experts", "shared_ffn", "dense_layers")


def build_moe(experts, top_k, expert_ffn, shared_experts, shared_ffn, dense_layers, ffn):
    """The MoE part of a shape from its flags, or None when --experts is not given."""
    from planner.model.shapes import MoE

    if experts is None:
        rest = (top_k, expert_ffn, shared_experts, shared_ffn, dense_layers)
        given = [f"--{k.replace('_', '-')}" for k, v in zip(MOE_FLAGS[1:], rest, strict=True) if v is not None]
        if given:
            raise PlannerError(f"{given[0]}: a mixture-of-experts flag needs --experts (routed experts per layer)")
        return None
    width = expert_ffn or ffn
    if width is None:
        raise PlannerError("--experts: also give --expert-ffn (one expert's MLP width) or --ffn")
    return MoE(experts, 2 if top_k is None else top_k, width, shared_experts=shared_experts or 0,
               shared_ffn=shared_ffn, dense_layers=dense_layers or 0)


def build_shape(layers, hidden, heads, kv_heads, ffn, vocab, seq_len, mlp, tied_embeddings, moe=None, arch=None):
    """A ModelShape from shape flags, or None when no shape flag is given. `arch`: a decoder (None) as before;
    an encoder of the same block with an MLM head; an encoder-decoder of `layers` blocks per stack with T5's
    relative position bias."""
    from planner.model.shapes import ModelShape

    flags = {"--layers": layers, "--hidden": hidden, "--heads": heads, "--vocab": vocab}
    if all(v is None for v in (*flags.values(), kv_heads, ffn)) and moe is None:
        return None
    missing = [k for k, v in flags.items() if v is None]
    if missing:
        raise PlannerError(f"shape: also give {' '.join(missing)} (a shape needs --layers --hidden --heads --vocab)")
    from planner.core.schema import ARCH_MLPS

    mlp = mlp or ARCH_MLPS[arch or "decoder"][0]
    arch_fields = {} if arch in (None, "decoder") else {"arch": arch}
    if arch == "encoder-decoder":
        arch_fields["position"] = "relative"
    elif arch == "encoder":  # BERT's block, as the trainer builds it (`planner.model.shapes.shape_of`)
        arch_fields.update(position="learned", bias=True, embedding_norm=True, post_norm=True, encoder_head="mlm")
    return ModelShape(layers, hidden, heads, vocab, seq_len or 2048, kv_heads=kv_heads, ffn_hidden=ffn,
                      mlp=mlp, norm="layernorm" if mlp == "gelu" else "rmsnorm", tied_embeddings=tied_embeddings,
                      moe=moe, **arch_fields)


def estimate_options(f):
    options = [
        click.option("--gpu", default="a100-80gb", show_default=True, help="GPU from the catalog (see `planner gpus`)."),
        click.option("--gpu-catalog", type=click.Path(), help="YAML file adding or overriding catalog entries."),
        click.option("--gpus", type=int, default=8, show_default=True, help="Total GPUs."),
        click.option("--gpus-per-node", type=int, default=8, show_default=True),
        click.option("--precision", type=click.Choice(memory.PRECISIONS), default="bf16-mixed", show_default=True),
        click.option("--optimizer", type=click.Choice(memory.OPTIMIZERS), default="adamw", show_default=True),
        click.option("--zero", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (0-3)."),
        click.option("--fsdp", type=click.Choice(parallel.FSDP_MODES), help="PyTorch FSDP sharding strategy."),
        click.option("--sharding-factor", type=int, help="GPUs per shard group for --fsdp hybrid (default: all)."),
        click.option("--offload", type=click.Choice(parallel.OFFLOAD), default="none", show_default=True,
                     help="CPU offload of optimizer states, parameters, or both."),
        click.option("--convention", type=click.Choice(memory.CONVENTIONS),
                     help="Model-state accounting (default: the engine's own; zero-paper: 16 B/param)."),
        click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per GPU per step."),
        click.option("--checkpointing", type=click.Choice(memory.CHECKPOINTING), default="none", show_default=True,
                     help="Activation checkpointing: selective and full as Korthikanti et al. 2022; op: "
                          "torchtitan's op-level policy (keeps every other matmul's output and attention's)."),
        click.option("--checkpointing-every", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Checkpoint every k-th layer only (torchtitan's layer SAC)."),
        click.option("--no-flash-attention", is_flag=True, help="Count the a*s^2 attention scores as stored."),
        click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree (sequence parallel on)."),
        click.option("--ep", type=int, default=1, show_default=True, help="Expert-parallel degree (MoE): ranks each "
                     "layer's routed experts are split over, taken from the data-parallel ranks (torchtitan)."),
        click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel degree (ranks per pipeline)."),
        click.option("--pp-schedule", type=click.Choice(parallel.PP_SCHEDULES), default="1f1b", show_default=True,
                     help="Pipeline schedule (torch.distributed.pipelining)."),
        click.option("--pp-virtual", type=int, default=1, show_default=True,
                     help="Pipeline stages per rank (interleaved schedules)."),
        click.option("--microbatches", type=int, help="Micro-batches per optimizer step (the pipeline's m; "
                     "default 2 x --pp with a pipeline, else 1)."),
        click.option("--tokens", type=COUNT, help="Training tokens (default: 20 per parameter, Chinchilla)."),
        click.option("--mfu", type=float, help="Model FLOPs utilisation (0.001-1] you measured (default: the "
                     "step-time model's prediction for this layout and GPU)."),
        click.option("--price", type=float, help="USD per GPU-hour (default: the catalog's)."),
        click.option("--runtime-gib", type=float, default=memory.DEFAULT_RUNTIME_GIB, show_default=True,
                     help="CUDA context and library workspaces per GPU."),
        click.option("--fragmentation", type=float, default=memory.DEFAULT_FRAGMENTATION, show_default=True,
                     help="Share of reserved GPU memory the allocator cannot use (GMLake's measured average)."),
        click.option("--finetune", type=click.Choice(["full", "lora", "qlora", "prompt"]),
                     help="Fine-tune instead of pretraining: all weights, LoRA, QLoRA (4-bit NF4 base) or prompt tuning."),
        click.option("--lora-rank", type=int, default=8, show_default=True, help="LoRA/QLoRA rank r."),
        click.option("--lora-modules", default="q,v", show_default=True,
                     help="Adapted matrices: q,k,v,o,gate,up,down (or q_proj,... names)."),
        click.option("--soft-tokens", type=int, default=20, show_default=True, help="Prompt tuning: soft tokens k."),
    ]
    for option in reversed(options):
        f = option(f)
    return model_options(f)


def _given_flags(kw: dict) -> list[str]:
    """The flags among `kw` the user typed (not their defaults), as typed: what a run config would override."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    return [flags.get(name, name) for name in kw if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


def build_request(kw: dict):
    """An EstimateRequest from the shared estimate/emit options (consumes them from `kw`)."""
    from planner.model.hardware import load_catalog
    from planner.plan.request import EstimateRequest

    run_config, hf_config = kw.pop("run_config"), kw.pop("hf_config")
    moe = build_moe(*(kw.pop(k) for k in MOE_FLAGS), kw["ffn"])
    shape = build_shape(*(kw.pop(k) for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")),
                        kw["seq_len"], kw.pop("mlp"), kw.pop("tied_embeddings"), moe, kw["arch"])
    if run_config is not None:
        if shape is not None or hf_config or kw["params"] or kw["model"]:
            raise PlannerError("--config: the run config names the model; drop --params/--model/--hf-config/shape flags")
        if kw["arch"] not in (None, "decoder") or kw["objective"] not in (None, "clm") or kw["target_len"]:
            raise PlannerError("--config: a run config describes a decoder trained with clm; drop --arch/--objective/"
                               "--target-len")
        ignored = _given_flags(kw)
        if ignored:
            raise PlannerError(f"--config: the run config sets the layout, batch and GPU; drop {', '.join(ignored)} "
                               "(or change them in the run config)")
        from planner.core.schema import load_config
        from planner.plan.request import request_from_run

        return request_from_run(load_config(run_config))
    if hf_config is not None:
        if shape is not None:
            raise PlannerError("--hf-config: give the config or shape flags, not both")
        from planner.model.hf_config import shape_from_hf

        shape = shape_from_hf(hf_config, kw["seq_len"])
    catalog = kw.pop("gpu_catalog")
    kw["flash_attention"] = not kw.pop("no_flash_attention")
    from planner.memory.finetune import parse_modules

    kw["lora_modules"] = parse_modules(kw["lora_modules"])
    return EstimateRequest.from_flags(shape=shape, catalog=load_catalog(catalog) if catalog else None, **kw)
