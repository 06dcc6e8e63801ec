"""One request in, one estimate out: memory, fit, compute and cost of a training run.

`EstimateRequest` is the typed input every front end builds (the CLI, `planner emit`, the
trainer's preflight); `estimate()` is a pure function of it. Everything here is plain Python
arithmetic so that a sweep of 10,000 configurations runs in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from planner import activations, checks, compute, memory
from planner import finetune as finetune_mod
from planner.errors import PlannerError
from planner.hardware import GPU, get_gpu
from planner.parallel import ParallelPlan
from planner.shapes import ModelShape, get_preset, infer_shape, snap_to_family
from planner.units import GB

_COMPUTE_DTYPE = {"fp32": "fp32", "fp16-mixed": "fp16", "bf16-mixed": "bf16", "bf16": "bf16",
                  "int8": "bf16", "int4": "bf16"}


@dataclass(frozen=True)
class EstimateRequest:
    params: float | None = None
    model: str | None = None  # preset name
    shape: ModelShape | None = None
    seq_len: int | None = None  # overrides the preset's / inferred shape's sequence length
    gpu: str = "a100-80gb"
    gpus: int = 8
    gpus_per_node: int = 8
    precision: str = "bf16-mixed"
    optimizer: str = "adamw"
    zero: int | None = None
    fsdp: str | None = None
    sharding_factor: int | None = None
    offload: str = "none"
    convention: str | None = None  # None: the engine's own (memory.default_convention)
    micro_batch: int = 1
    checkpointing: str = "none"
    flash_attention: bool = True
    tp: int = 1
    tokens: float | None = None  # None: Chinchilla's 20 tokens per parameter
    mfu: float = compute.DEFAULT_MFU
    price: float | None = None  # USD per GPU-hour; None: the catalog's
    runtime_gib: float = memory.DEFAULT_RUNTIME_GIB
    fragmentation: float = memory.DEFAULT_FRAGMENTATION
    finetune: str | None = None  # None: pretraining; full | lora | qlora | prompt (planner.finetune)
    lora_rank: int = 8
    lora_modules: tuple[str, ...] = finetune_mod.DEFAULT_LORA_MODULES
    soft_tokens: int = 20
    catalog: dict[str, GPU] | None = field(default=None, compare=False, repr=False)

    @property
    def parallel(self) -> ParallelPlan:
        """This request's layout as the one parallel plan the trainer and launchers read (flags checked)."""
        return ParallelPlan.from_flags(self.gpus, zero=self.zero, fsdp=self.fsdp, sharding_factor=self.sharding_factor,
                                       offload=self.offload, tp=self.tp, micro_batch=self.micro_batch)

    @property
    def finetune_spec(self) -> finetune_mod.FineTune | None:
        if self.finetune is None:
            return None
        return finetune_mod.FineTune(self.finetune, self.lora_rank, tuple(self.lora_modules), self.soft_tokens)


#: Parameter counts the planner accepts: from a toy model to 100x today's largest dense ones.
PARAMS_RANGE = (1e5, 1e14)


@dataclass(frozen=True)
class ResolvedModel:
    params: float
    shape: ModelShape
    source: str  # 'params' (shape inferred) | 'preset:<name>' | 'shape'
    shape_inferred: bool


def resolve_model(req: EstimateRequest) -> ResolvedModel:
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
        return ResolvedModel(req.shape.param_count(), req.shape, "shape", False)
    if not (req.params and math.isfinite(req.params) and PARAMS_RANGE[0] <= req.params <= PARAMS_RANGE[1]):
        raise PlannerError(f"--params: {req.params!r} is outside the plausible range {PARAMS_RANGE[0]:.0e}-"
                           f"{PARAMS_RANGE[1]:.0e} parameters, e.g. 7e9 or 7B")
    seq_len = req.seq_len or 2048
    snapped = snap_to_family(req.params, seq_len)
    if snapped is not None:
        return ResolvedModel(req.params, snapped[1], f"params (shape of {snapped[0]})", True)
    return ResolvedModel(req.params, infer_shape(req.params, seq_len, tp=req.tp), "params", True)


def _validate(req: EstimateRequest) -> None:
    for flag, value in (("--gpus", req.gpus), ("--gpus-per-node", req.gpus_per_node),
                        ("--micro-batch", req.micro_batch), ("--tp", req.tp)):
        if not isinstance(value, int) or value < 1:
            raise PlannerError(f"{flag}: {value!r} must be a positive integer")
    compute.validate_mfu(req.mfu)
    checks.number("--fragmentation", req.fragmentation, 0.0, 0.5)
    checks.number("--runtime-gib", req.runtime_gib, 0.0, 64.0)
    if req.price is not None:
        checks.number("--price", req.price, 0.0, 1000.0)
    if req.tokens is not None:
        checks.number("--tokens", req.tokens, 1e3, 1e17)
    checks.integer("--gpus", req.gpus, 1, 1 << 24)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU, by line, at the peak of a training step.

    Three moments compete for the peak: the start of backward (every activation saved, the loss's
    gradient just made, gradients not yet written: our engines zero them with set_to_none, DeepSpeed
    keeps its buffers), inside the layers' backward under FSDP2 (`fsdp_layer_backward`) and the
    optimizer step (all gradients, no activations). `total` is the largest; `lines()` are the lines
    at that moment. `activations` are the layers' saved tensors for one
    micro-batch plus one layer's recompute working set; `activations_fixed` is what the layers keep
    per micro-batch whatever its size (autocast's 16-bit weight copies); `logits` is the output
    layer's share, its backward transient included (`planner.activations`).
    """

    states: memory.ModelStates
    activations: float
    activations_fixed: float
    logits: float
    comm_buffers: float
    runtime: float
    fragmentation_fraction: float
    gradients_kept_through_forward: bool = True
    #: FSDP2 full/hybrid only: the lines inside the layers' backward (see `fsdp_layer_backward`)
    layer_backward: dict[str, float] | None = None

    @property
    def _gradients(self) -> float:
        return self.states.gpu["gradients"] + self.states.gathered.get("gradients", 0.0)

    @property
    def _gradients_at_backward(self) -> float:
        return self._gradients if self.gradients_kept_through_forward else 0.0

    @property
    def fixed(self) -> float:
        """Backward-start bytes that do not grow with the micro-batch."""
        return (self.states.gpu_total - self._gradients + self._gradients_at_backward + self.activations_fixed
                + self.comm_buffers + self.runtime)

    @property
    def per_batch(self) -> float:
        return self.activations + self.logits

    @property
    def step_bytes(self) -> float:
        """Bytes while the optimizer steps: all states, no activations."""
        return self.states.gpu_total + self.comm_buffers + self.runtime

    @property
    def layer_backward_bytes(self) -> float:
        if self.layer_backward is None:
            return 0.0
        s = self.states.gpu
        return s["master_weights"] + s["optimizer"] + sum(self.layer_backward.values()) + self.comm_buffers \
            + self.runtime

    @property
    def moment(self) -> str:
        """Which moment is the peak: backward-start, layer-backward or optimizer-step."""
        moments = {"backward-start": self.fixed + self.per_batch, "layer-backward": self.layer_backward_bytes,
                   "optimizer-step": self.step_bytes}
        return max(moments, key=moments.get)

    @property
    def peak_at_step(self) -> bool:
        return self.moment == "optimizer-step"

    @property
    def allocated(self) -> float:
        return max(self.fixed + self.per_batch, self.step_bytes, self.layer_backward_bytes)

    @property
    def fragmentation(self) -> float:
        return memory.fragmentation_bytes(self.allocated, self.fragmentation_fraction)

    @property
    def total(self) -> float:
        return self.allocated + self.fragmentation

    def lines(self) -> dict[str, float]:
        gpu, gathered, at_step = self.states.gpu, self.states.gathered, self.peak_at_step
        if self.moment == "layer-backward":
            return {**self.layer_backward, "master_weights": gpu["master_weights"], "optimizer": gpu["optimizer"],
                    "logits": 0.0, "overhead": self.comm_buffers + self.runtime,
                    "fragmentation": self.fragmentation, "total": self.total}
        return {
            "weights": gpu["weights"] + gathered.get("weights", 0.0),
            "gradients": self._gradients if at_step else self._gradients_at_backward,
            "master_weights": gpu["master_weights"],
            "optimizer": gpu["optimizer"],
            "activations": 0.0 if at_step else self.activations + self.activations_fixed,
            "logits": 0.0 if at_step else self.logits,
            "overhead": self.comm_buffers + self.runtime,
            "fragmentation": self.fragmentation,
            "total": self.total,
        }


def fsdp_layer_backward(shape: ModelShape, strategy: memory.Strategy, precision: str, tp: int,
                        stored_activations: float) -> dict[str, float] | None:
    """FSDP2 (full or hybrid shard) inside the layers' backward, which is the peak when the loss's
    gradients are small next to a block (small micro-batch x vocabulary): checked by `planner verify`
    against FSDPMemTracker (LLaMA-7B, seq 2048, micro-batch 1: every line within 10%).

    weights: the unsharded root, the block in backward and the next block prefetched, 16-bit;
    gradients: the previous block's reduce-scatter input in the fp32 reduce dtype, and its shard;
    activations: the layers' saved tensors (those already freed are replaced by the backward's
    temporaries) and the head's unsharded weight gradient, which waits for the root's reduce-scatter.
    """
    if strategy.engine != "fsdp" or strategy.stage < 3:
        return None
    w = 4 if precision == "fp32" else 2
    block = shape.layer_params() / tp
    root = (shape.param_count() - shape.layers * shape.layer_params()) / tp
    return {"weights": (root + 2 * block) * w,
            "gradients": 4 * block * (1 + 1 / strategy.shard_degree),
            "activations": stored_activations + shape.vocab * shape.hidden * w / tp}


def memory_breakdown(params: float, shape: ModelShape, strategy: memory.Strategy, *, precision: str,
                     optimizer: str, convention: str, micro_batch: int, checkpointing: str,
                     flash_attention: bool, tp: int, runtime_gib: float, fragmentation: float) -> MemoryBreakdown:
    terms = memory.state_terms(precision, optimizer, convention, shape)
    states = memory.model_states(params / tp, terms, strategy, shape, convention)
    regime = activations.regime_for(precision, strategy.engine)
    act_kw = {"regime": regime, "checkpointing": checkpointing, "tp": tp, "sequence_parallel": tp > 1,
              "flash_attention": flash_attention}
    layers_fixed = activations.stored_bytes(shape, 0, **act_kw)
    head_fixed = activations.head_fixed_bytes(shape, regime, tp)
    # Backward first holds the loss's gradients, then (once they are freed) one layer recomputed:
    # the larger of the two sits on top of the saved activations at the peak.
    loss_grads = activations.loss_backward_bytes_per_token(shape, tp) * shape.seq_len * micro_batch
    recompute = activations.recompute_bytes(shape, micro_batch, **act_kw)
    stored = activations.stored_bytes(shape, micro_batch, **act_kw)
    return MemoryBreakdown(
        states=states,
        activations=stored - layers_fixed
        + (recompute if recompute > loss_grads else 0.0),
        activations_fixed=layers_fixed + head_fixed,
        logits=activations.head_bytes(shape, micro_batch, regime, tp) - head_fixed
        + (loss_grads if loss_grads >= recompute else 0.0),
        comm_buffers=memory.comm_buffer_bytes(params / tp, strategy),
        runtime=runtime_gib * 2**30,
        fragmentation_fraction=fragmentation,
        # torch engines (DDP, FSDP) free gradients with zero_grad(set_to_none=True); DeepSpeed keeps them
        gradients_kept_through_forward=strategy.engine == "deepspeed",
        layer_backward=fsdp_layer_backward(shape, strategy, precision, tp, stored),
    )


def finetune_breakdown(req: EstimateRequest, model: ResolvedModel, strategy: memory.Strategy,
                       micro_batch: int) -> MemoryBreakdown:
    """LoRA, QLoRA or prompt tuning on each data-parallel replica (planner.finetune)."""
    ft = req.finetune_spec
    if strategy.engine != "ddp" or req.tp != 1:
        raise PlannerError(f"--finetune {ft.method}: adapters are planned on one GPU or DDP replicas; "
                           "drop --zero/--fsdp/--tp (the frozen base is small enough to replicate)")
    if req.checkpointing == "selective":
        raise PlannerError(f"--finetune {ft.method}: use --checkpointing none or full with adapters")
    lines = finetune_mod.state_lines(model.shape, ft)
    states = memory.ModelStates(lines, dict.fromkeys(lines, 0.0), {})
    tokens = micro_batch * (model.shape.seq_len + (ft.soft_tokens if ft.method == "prompt" else 0))
    return MemoryBreakdown(
        states=states, activations_fixed=0.0,
        activations=finetune_mod.activation_bytes(model.shape, ft, micro_batch, req.checkpointing)
        + finetune_mod.recompute_bytes(model.shape, ft, micro_batch, req.checkpointing),
        logits=activations.loss_backward_bytes_per_token(model.shape) * tokens, comm_buffers=0.0,
        runtime=req.runtime_gib * 2**30, fragmentation_fraction=req.fragmentation,
        gradients_kept_through_forward=False)


def _breakdown_for(req: EstimateRequest, model: ResolvedModel, strategy: memory.Strategy,
                   micro_batch: int | None = None) -> MemoryBreakdown:
    if req.finetune not in (None, "full"):
        return finetune_breakdown(req, model, strategy, req.micro_batch if micro_batch is None else micro_batch)
    return memory_breakdown(
        model.params, model.shape, strategy, precision=req.precision, optimizer=req.optimizer,
        convention=req.convention or memory.default_convention(strategy),
        micro_batch=req.micro_batch if micro_batch is None else micro_batch,
        checkpointing=req.checkpointing, flash_attention=req.flash_attention, tp=req.tp,
        runtime_gib=req.runtime_gib, fragmentation=req.fragmentation)


def sweep_memory(req: EstimateRequest, configs) -> list[tuple[float, bool]]:
    """Per-GPU total and fit for many (strategy kwargs, gpus, micro_batch, checkpointing) at once.

    The model and GPU are resolved once; each configuration is then plain arithmetic.
    """
    model, gpu = resolve_model(req), get_gpu(req.gpu, req.catalog)
    capacity, out = gpu.memory_bytes, []
    for strategy_kw, gpus, micro_batch, checkpointing in configs:
        strategy = memory.make_strategy(gpus, **strategy_kw)
        total = _breakdown_for(replace(req, checkpointing=checkpointing), model, strategy, micro_batch).total
        out.append((total, total <= capacity))
    return out


def max_micro_batch_for(req: EstimateRequest, model: ResolvedModel, strategy: memory.Strategy,
                        capacity: float) -> int:
    one = _breakdown_for(req, model, strategy, micro_batch=1)
    if one.step_bytes / (1 - req.fragmentation) > capacity:
        return 0  # the optimizer step alone does not fit
    b = memory.max_micro_batch(one.fixed, one.per_batch, capacity, req.fragmentation)  # backward-start moment
    while b > 0 and _breakdown_for(req, model, strategy, micro_batch=b).total > capacity:
        b -= 1  # another moment (FSDP2's layer backward) is the peak at this size
    return b


#: Strategies compared in the "smallest GPU count that fits" table.
COMPARED_STRATEGIES = (("ddp", {}), ("zero1", {"zero": 1}), ("zero2", {"zero": 2}), ("zero3", {"zero": 3}),
                       ("fsdp-shard-grad-op", {"fsdp": "shard-grad-op"}), ("fsdp-full", {"fsdp": "full"}))
MAX_GPUS_SEARCHED = 1 << 20


def min_gpus_that_fit(req: EstimateRequest, model: ResolvedModel, capacity: float) -> dict[str, int | None]:
    """Smallest data-parallel GPU count (x tensor parallel) whose per-GPU total fits, per strategy.

    Per-GPU memory never grows with the GPU count, so a binary search finds the smallest one.
    None: no count fits (the unsharded part alone is too big).
    """
    result: dict[str, int | None] = {}
    for name, kw in COMPARED_STRATEGIES:
        if req.finetune not in (None, "full") and kw:  # adapters are planned on DDP replicas only
            continue

        def fits(dp: int, kw=kw) -> bool:
            strategy = memory.make_strategy(dp, offload="none", **kw)
            return _breakdown_for(req, model, strategy).total <= capacity
        if not fits(MAX_GPUS_SEARCHED):
            result[name] = None
            continue
        lo, hi = 1, MAX_GPUS_SEARCHED
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        result[name] = lo * req.tp
    return result


def _peer_estimates(model: ResolvedModel, strategy: memory.Strategy) -> dict[str, float]:
    """Other tools' figures for the same job, shown beside ours (their conventions differ)."""
    if strategy.engine != "deepspeed":
        return {}
    ds = memory.deepspeed_estimator_gpu_bytes(model.params, model.shape.largest_layer_params(), strategy.stage,
                                              strategy.shard_degree, strategy.offload)
    return {} if ds is None else {"deepspeed_estimator_model_states_gpu_bytes": ds}


def _finetune_summary(req: EstimateRequest, model: ResolvedModel) -> dict | None:
    ft = req.finetune_spec
    if ft is None:
        return None
    trainable = finetune_mod.trainable_params(model.shape, ft)
    return {"method": ft.method, "trainable_params": trainable, "trainable_share": trainable / model.shape.param_count(),
            "rank": ft.rank if ft.adapters else None, "modules": list(ft.modules) if ft.adapters else None,
            "soft_tokens": ft.soft_tokens if ft.method == "prompt" else None,
            "source": {"full": "all parameters trained (as pretraining)", "lora": "Hu et al. 2021",
                       "qlora": "Dettmers et al. 2023 (NF4 + double quantisation)",
                       "prompt": "Lester et al. 2021"}[ft.method]}


def teaching_view(params: float) -> dict[str, float]:
    """The seeds' rule of thumb, in decimal GB: 4 B/param fp32 weights, x6 to train with Adam.

    4 weights + 8 Adam + 4 gradients + ~8 activations and temporaries = 24 B/param (a rough
    teaching figure, not the planner's estimate); 2 B/param in 16-bit; 1 B/param in int8.
    """
    return {
        "fp32_weights_gb": 4 * params / GB,
        "fp32_adam_training_gb": (4 + 8 + 4 + 8) * params / GB,
        "training_to_weights_ratio": 24 / 4,
        "fp16_weights_gb": 2 * params / GB,
        "int8_weights_gb": 1 * params / GB,
    }


def estimate(req: EstimateRequest) -> dict:
    """The full estimate as a JSON-ready dict (the `--json` output of `planner estimate`)."""
    _validate(req)
    model = resolve_model(req)
    gpu = get_gpu(req.gpu, req.catalog)
    dtype = _COMPUTE_DTYPE.get(req.precision)
    if dtype is None:
        raise PlannerError(f"--precision: {req.precision!r} is not one of {', '.join(memory.PRECISIONS)}")
    if dtype not in gpu.peak_tflops:
        raise PlannerError(f"--precision: {gpu.name} has no {dtype} tensor cores; "
                           f"use one of: {', '.join(p for p, d in _COMPUTE_DTYPE.items() if d in gpu.peak_tflops)}")
    layout = req.parallel
    dp, strategy = layout.dp, memory.Strategy.of(layout)
    convention = req.convention or memory.default_convention(strategy)
    breakdown = _breakdown_for(req, model, strategy)
    capacity = gpu.memory_bytes
    terms = memory.state_terms(req.precision, req.optimizer, convention, model.shape)
    tokens = req.tokens if req.tokens is not None else compute.TOKENS_PER_PARAM * model.params
    price = gpu.price_per_hour if req.price is None else req.price
    comp = compute.estimate_compute(model.params, tokens, model.shape, peak_flops=gpu.peak_flops(dtype),
                                    gpus=req.gpus, mfu=req.mfu, price_per_gpu_hour=price,
                                    checkpointing=req.checkpointing)
    lines = breakdown.lines()
    states_per_gpu = breakdown.states.gpu_total  # all model states, whichever moment is the peak
    return {
        "params": model.params,
        "model": {"source": model.source, "shape_inferred": model.shape_inferred, **model.shape.to_dict(),
                  "shape_params": model.shape.param_count()},
        "hardware": {"gpu": gpu.name, "description": gpu.description, "gpus": req.gpus,
                     "gpus_per_node": req.gpus_per_node, "nodes": math.ceil(req.gpus / req.gpus_per_node),
                     "memory_gib": gpu.memory_gib, "peak_tflops": gpu.peak_tflops[dtype], "compute_dtype": dtype,
                     "price_per_gpu_hour": price},
        "training": {"precision": req.precision, "optimizer": req.optimizer, "strategy": strategy.name,
                     "shard_degree": strategy.shard_degree, "data_parallel": dp, "tp": req.tp,
                     "offload": req.offload, "convention": convention, "micro_batch": req.micro_batch,
                     "seq_len": model.shape.seq_len, "checkpointing": req.checkpointing,
                     "flash_attention": req.flash_attention},
        "bytes_per_param": {
            **{t.label: t.bytes_per_param for t in terms},
            "total": sum(t.bytes_per_param for t in terms),
            "model_states_per_gpu": states_per_gpu / model.params,
        },
        "model_states_per_gpu_bytes": states_per_gpu,
        "memory_per_gpu_bytes": lines,
        "memory_per_gpu_gib": {k: v / 2**30 for k, v in lines.items()},
        "cpu_memory_per_gpu_bytes": {**breakdown.states.cpu, "total": breakdown.states.cpu_total},
        "peer_estimates": _peer_estimates(model, strategy),
        "gpu_memory_bytes": capacity,
        "fits": breakdown.total <= capacity,
        "headroom_bytes": capacity - breakdown.total,
        "max_micro_batch": max_micro_batch_for(req, model, strategy, capacity),
        "min_gpus_to_fit": (fewest := min_gpus_that_fit(req, model, capacity)),
        "min_nodes_to_fit": {k: None if v is None else math.ceil(v / req.gpus_per_node) for k, v in fewest.items()},
        **{k: getattr(comp, k) for k in ("flops", "flops_6nd", "pf_days", "gpu_hours", "wall_days", "cost_usd")},
        "compute": comp.to_dict(),
        "rule_of_thumb": teaching_view(model.params),
        "finetune": _finetune_summary(req, model),
        "request": {f.name: getattr(req, f.name) for f in fields(req) if f.name not in ("catalog", "shape")},
    }
