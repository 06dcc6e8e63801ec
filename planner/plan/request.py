"""The estimate's typed input, and its round trip through run.yaml.

`EstimateRequest` is what every front end builds (the CLI flags, `planner emit`, the launch
preflight, the trainer's prediction): the model, the layout (one `ParallelPlan`, nothing else
describes it) and every planning assumption. `planning_of` writes those assumptions into the run
schema's `planning:` section; `request_from_run` reads a run config back into the same request, so
`planner estimate --config run.yaml` reproduces the plan `emit` made, for any flags.
"""

from __future__ import annotations

import math
from copy import copy
from dataclasses import dataclass, field, fields, replace

from planner.compute import flops as compute
from planner.core import checks
from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.core.schema import GPUSpec, PlanningConfig, RunConfig, parallel_refusal, tensor_parallel_refusal
from planner.memory import finetune as finetune_mod
from planner.memory import model_states as memory
from planner.model.hardware import BUILTIN_GPUS, GPU
from planner.model.presets import get_preset
from planner.model.shapes import ModelShape, infer_shape, shape_of, snap_to_family

#: Parameter counts the planner accepts: from a toy model to 100x today's largest dense ones.
PARAMS_RANGE = (1e5, 1e14)


def _default_layout() -> ParallelPlan:
    return ParallelPlan.from_flags(8)


@dataclass(frozen=True)
class EstimateRequest:
    # the model: exactly one of params, model (a preset) and shape
    params: float | None = None
    model: str | None = None
    shape: ModelShape | None = None
    seq_len: int | None = None  # overrides the preset's / inferred shape's sequence length
    # the layout, whole (world size, engine, sharding, tp, micro-batch, ...)
    layout: ParallelPlan = field(default_factory=_default_layout)
    # hardware
    gpu: str = "a100-80gb"
    gpus_per_node: int = 8
    catalog: dict[str, GPU] | None = field(default=None, compare=False, repr=False)
    # training
    precision: str = "bf16-mixed"
    optimizer: str = "adamw"
    checkpointing: str = "none"
    checkpointing_every: int = 1  # the checkpointing applies to every k-th layer (torchtitan's layer SAC)
    tokens: float | None = None  # None: Chinchilla's 20 tokens per parameter
    # planning assumptions
    convention: str | None = None  # None: the engine's own (memory.default_convention)
    flash_attention: bool = True
    mfu: float | None = None  # None: the step-time model's predicted MFU (planner.compute.step_time)
    price: float | None = None  # USD per GPU-hour; None: the catalog's
    runtime_gib: float = memory.DEFAULT_RUNTIME_GIB
    fragmentation: float = memory.DEFAULT_FRAGMENTATION
    finetune: str | None = None  # None: pretraining; full | lora | qlora | prompt (planner.memory.finetune)
    lora_rank: int = 8
    lora_modules: tuple[str, ...] = finetune_mod.DEFAULT_LORA_MODULES
    soft_tokens: int = 20
    capacity_factor: float | None = None  # MoE routing: None dropless, else each expert's buffer (planner.model.shapes.MoE)
    arch: str | None = None  # None: the model's; else checked against it (planner.model.shapes.ARCHS)
    objective: str | None = None  # None: the architecture's (OBJECTIVES); else checked against it
    target_len: int | None = None  # encoder-decoder: the decoder's length (None: span corruption's for seq_len)

    @classmethod
    def from_flags(cls, *, gpus: int = 8, zero: int | None = None, fsdp: str | None = None,
                   sharding_factor: int | None = None, offload: str = "none", tp: int = 1, micro_batch: int = 1,
                   pp: int = 1, pp_schedule: str = "1f1b", pp_virtual: int = 1, microbatches: int | None = None,
                   ep: int = 1, **rest) -> EstimateRequest:
        """A request from the planner's flags (`--gpus --zero --fsdp ...`): the layout flags become one
        `ParallelPlan` (`ParallelPlan.from_flags`, checked with the flags' names); the rest are fields."""
        layout = ParallelPlan.from_flags(gpus, zero=zero, fsdp=fsdp, sharding_factor=sharding_factor,
                                         offload=offload, tp=tp, micro_batch=micro_batch, pp=pp,
                                         pp_schedule=pp_schedule, pp_virtual=pp_virtual, microbatches=microbatches,
                                         ep=ep)
        return cls(layout=layout, **rest)

    # read-only views of the layout, for the arithmetic that needs them
    @property
    def gpus(self) -> int:
        return self.layout.world

    @property
    def tp(self) -> int:
        return self.layout.tp

    @property
    def micro_batch(self) -> int:
        return self.layout.micro_batch

    @property
    def finetune_spec(self) -> finetune_mod.FineTune | None:
        if self.finetune is None:
            return None
        return finetune_mod.FineTune(self.finetune, self.lora_rank, tuple(self.lora_modules), self.soft_tokens)

    def on(self, world: int | None = None, gpus_per_node: int | None = None) -> EstimateRequest:
        """The same job on `world` ranks (the batch rule re-checked), `gpus_per_node` per node."""
        layout = self.layout if world is None else self.layout.with_world(world)
        return replace(self, layout=layout, gpus_per_node=gpus_per_node or self.gpus_per_node)

    def validate(self) -> EstimateRequest:
        checks.integer("--gpus-per-node", self.gpus_per_node, 1, 1 << 10)
        checks.integer("--gpus", self.gpus, 1, 1 << 24)
        if self.mfu is not None:
            compute.validate_mfu(self.mfu)
        checks.number("--fragmentation", self.fragmentation, 0.0, 0.5)
        checks.number("--runtime-gib", self.runtime_gib, 0.0, 64.0)
        if self.price is not None:
            checks.number("--price", self.price, 0.0, 1000.0)
        if self.tokens is not None:
            checks.number("--tokens", self.tokens, 1e3, 1e17)
        return self


@dataclass(frozen=True)
class ResolvedModel:
    params: float
    shape: ModelShape
    source: str  # 'params' (shape inferred) | 'preset:<name>' | 'shape'
    shape_inferred: bool

    @property
    def active_params(self) -> float:
        """Parameters one token passes through (`params` less the routed experts it skips; all for dense)."""
        return self.params - (self.shape.param_count() - self.shape.active_param_count())


#: The pretraining objective each architecture trains with: causal LM (GPT), masked LM (BERT, Devlin et al.
#: 2019), span corruption (T5, Raffel et al. 2020).
OBJECTIVES = {"decoder": "clm", "encoder": "mlm", "encoder-decoder": "span-corruption"}


def _an(arch: str) -> str:
    return f"an {arch}" if arch.startswith("e") else f"a {arch}"


def check_arch(req: EstimateRequest, model: ResolvedModel) -> ResolvedModel:
    """The model's architecture against --arch and --objective, and --target-len applied (one line where they
    disagree); the model parallelism the trainer does not run for the architecture refused (`parallel_refusal`)."""
    arch = model.shape.arch
    if req.arch is not None and req.arch != arch:
        raise PlannerError(f"--arch {req.arch}: {model.source} is {_an(arch)} model")
    if req.objective is not None and req.objective != OBJECTIVES[arch]:
        raise PlannerError(f"--objective {req.objective}: {_an(arch)} model trains with {OBJECTIVES[arch]}, "
                           f"not {req.objective}")
    if req.target_len is not None:
        if arch != "encoder-decoder":
            raise PlannerError(f"--target-len: only an encoder-decoder has targets apart from its inputs; "
                               f"{model.source} is {arch}-only")
        model = replace(model, shape=replace(model.shape, target_len=req.target_len))
    split = tensor_parallel_refusal(req.layout.tp, model.shape.heads, model.shape.kv_heads)
    if split is not None:
        raise PlannerError(f"--tp: {split} of {model.source}")
    refusal = parallel_refusal(arch, req.layout.tp, req.layout.pp, req.layout.ep)
    if refusal is not None:  # the trainer's rule (the run schema's too): what is not run is not planned
        name, degree, why = refusal
        raise PlannerError(f"--{name}: {degree}: {why}; {model.source} is {_an(arch)} model")
    return model


def resolve_model(req: EstimateRequest) -> ResolvedModel:
    """The model of `req` (preset, shape or count), with the request's MoE routing applied."""
    model = check_arch(req, _resolve(req))
    moe, ep = model.shape.moe, req.layout.ep
    if ep > 1 and moe is None:
        raise PlannerError(f"--ep: {ep} expert-parallel ranks need a mixture-of-experts model (--experts, or an "
                           f"MoE preset or config); {model.source} is dense")
    if moe is not None and moe.dense_layers >= model.shape.layers:  # (a pipeline stage's shape may be all dense)
        raise PlannerError(f"--dense-layers: {moe.dense_layers} leaves none of the {model.shape.layers} layers "
                           f"(--layers) a mixture-of-experts layer; use at most {model.shape.layers - 1}")
    if moe is not None and moe.experts % ep:
        raise PlannerError(f"--ep: {ep} does not divide the model's {moe.experts} experts")
    if req.capacity_factor is None:
        if moe is None or ep > 1:
            return model
        # dropless on one EP rank: it holds every expert and runs exactly k copies of each token
        return replace(model, shape=replace(model.shape, moe=replace(moe, dropless_load=1.0)))
    if model.shape.moe is None:
        raise PlannerError(f"--capacity-factor: {req.capacity_factor} applies to a mixture-of-experts model; "
                           f"{model.source} is dense")
    shape = replace(model.shape, moe=replace(model.shape.moe, capacity_factor=req.capacity_factor))
    return replace(model, shape=shape)


def _resolve(req: EstimateRequest) -> ResolvedModel:
    given = [x is not None for x in (req.params, req.model, req.shape)]
    if sum(given) != 1:
        raise PlannerError("model: give exactly one of --params, --model or a shape (--layers --hidden --heads --vocab)")
    if req.seq_len is not None and req.seq_len <= 0:
        raise PlannerError(f"--seq-len: {req.seq_len!r} must be a positive integer")
    if req.model is not None:
        shape = get_preset(req.model).shape
        if req.seq_len:
            shape = replace(shape, seq_len=req.seq_len)
        return ResolvedModel(shape.param_count(), shape, f"preset:{req.model}", False)
    if req.shape is not None:
        count = req.shape.param_count()
        if count > PARAMS_RANGE[1]:  # no lower bound: our CPU tests and ladders train shapes of a few thousand
            raise PlannerError(f"shape: {count:.3g} parameters is above the plausible {PARAMS_RANGE[1]:.0e}; "
                               "check --layers, --hidden and --vocab")
        return ResolvedModel(count, req.shape, "shape", False)
    if not (req.params and math.isfinite(req.params) and PARAMS_RANGE[0] <= req.params <= PARAMS_RANGE[1]):
        raise PlannerError(f"--params: {req.params!r} is outside the plausible range {PARAMS_RANGE[0]:.0e}-"
                           f"{PARAMS_RANGE[1]:.0e} parameters, e.g. 7e9 or 7B")
    if req.arch not in (None, "decoder"):
        raise PlannerError(f"--params: the shape it infers is a decoder's; for --arch {req.arch} give --model, "
                           "--hf-config or shape flags")
    seq_len = req.seq_len or 2048
    snapped = snap_to_family(req.params, seq_len)
    if snapped is not None:
        return ResolvedModel(req.params, snapped[1], f"params (shape of {snapped[0]})", True)
    return ResolvedModel(req.params, infer_shape(req.params, seq_len, tp=req.tp), "params", True)


# ---- run.yaml <-> request ------------------------------------------------------------------------
def gpu_of(req: EstimateRequest) -> GPU:
    from planner.model.hardware import get_gpu

    return get_gpu(req.gpu, req.catalog)


def planning_of(req: EstimateRequest, model: ResolvedModel) -> PlanningConfig:
    """Every assumption of `req` that run.yaml's other sections (model, parallel, train) do not hold.

    A GPU that is not a built-in one (or overrides one) is written in whole, so the file needs no
    catalog to be re-estimated.
    """
    gpu = gpu_of(req)
    spec = None if BUILTIN_GPUS.get(gpu.name) == gpu else GPUSpec(**{
        f.name: copy(getattr(gpu, f.name)) for f in fields(GPUSpec)})  # every catalog field but the name
    return PlanningConfig(
        params=model.params if req.params is not None else None, gpu=gpu.name, gpu_spec=spec,
        gpus_per_node=req.gpus_per_node, tokens=req.tokens, convention=req.convention,
        flash_attention=req.flash_attention, mfu=req.mfu, price=req.price, runtime_gib=req.runtime_gib,
        fragmentation=req.fragmentation, finetune=req.finetune)


def request_from_run(cfg: RunConfig) -> EstimateRequest:
    """The job a run config describes: its model, layout and precision, under its planning assumptions
    (the defaults, 8 GPUs where the layout leaves the world open, when nothing planned it)."""
    p = cfg.planning or PlanningConfig()
    layout = cfg.parallel if cfg.parallel.world is not None else cfg.parallel.with_world(8)
    catalog = None
    if p.gpu_spec is not None:
        g = p.gpu_spec
        catalog = {p.gpu: GPU(p.gpu, **{f.name: copy(getattr(g, f.name)) for f in fields(GPUSpec)})}
    shape = shape_of(cfg.model)
    return EstimateRequest(
        params=p.params, shape=None if p.params is not None else shape, seq_len=cfg.model.seq_len,
        layout=layout, gpu=p.gpu, gpus_per_node=p.gpus_per_node, catalog=catalog,
        precision=cfg.train.precision, optimizer="adamw",  # the trainer's optimizer
        checkpointing=cfg.train.activation_checkpointing,
        checkpointing_every=cfg.train.activation_checkpointing_every, tokens=p.tokens,
        convention=p.convention, flash_attention=p.flash_attention, mfu=p.mfu, price=p.price,
        runtime_gib=p.runtime_gib, fragmentation=p.fragmentation, finetune=p.finetune)
