"""One request in, one estimate out: memory, fit, compute and cost of a training run.

`estimate()` is a pure function of an `EstimateRequest` (planner.plan.request) and returns a typed
`Estimate` (planner.plan.result). Everything here is plain Python arithmetic so that a sweep of
10,000 configurations runs in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

from planner.compute import flops as compute
from planner.core.errors import PlannerError
from planner.core.parallel import FEWEST_GPUS_STRATEGIES, ParallelPlan
from planner.core.units import GB
from planner.memory import activations, pipeline
from planner.memory import finetune as finetune_mod
from planner.memory import model_states as memory
from planner.memory.peak import MemoryBreakdown, memory_breakdown
from planner.plan.request import EstimateRequest, ResolvedModel, gpu_of, resolve_model
from planner.plan.result import (
    Estimate,
    FitSummary,
    HardwareSummary,
    MemorySummary,
    ModelSummary,
    TrainingSummary,
)

#: The dtype whose peak MFU is measured against: fp8 runs are reported against the bf16 peak, as torchtitan does
#: (the step-time model runs their fp8 linears at the fp8 peak).
_COMPUTE_DTYPE = {"fp32": "fp32", "fp16-mixed": "fp16", "bf16-mixed": "bf16", "bf16": "bf16", "fp8": "bf16",
                  "int8": "bf16", "int4": "bf16"}


def finetune_breakdown(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan,
                       micro_batch: int) -> MemoryBreakdown:
    """LoRA, QLoRA or prompt tuning on each data-parallel replica (planner.memory.finetune)."""
    ft = req.finetune_spec
    if model.shape.arch != "decoder":
        raise PlannerError(f"--finetune {ft.method}: adapters are planned on decoder blocks, not an "
                           f"{model.shape.arch} (use --finetune full)")
    if model.shape.moe is not None:
        raise PlannerError(f"--finetune {ft.method}: adapters are planned on dense blocks; a mixture-of-experts "
                           "model's experts are not (use --finetune full)")
    if plan.engine not in ("single", "ddp") or plan.tp != 1:
        raise PlannerError(f"--finetune {ft.method}: adapters are planned on one GPU or DDP replicas; "
                           "drop --zero/--fsdp/--tp (the frozen base is small enough to replicate)")
    if req.checkpointing in ("selective", "op"):
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


def breakdown_for(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan,
                   micro_batch: int | None = None) -> MemoryBreakdown:
    """The step's memory per GPU for `req`'s model under `plan` (its micro-batch, unless `micro_batch` is
    given); under pipeline parallelism, the worst stage's."""
    micro_batch = plan.micro_batch if micro_batch is None else micro_batch
    if req.finetune not in (None, "full"):
        return finetune_breakdown(req, model, plan, micro_batch)
    if plan.pp > 1:
        return max(stage_breakdowns(req, model, plan, micro_batch).values(), key=lambda b: b.total)
    return memory_breakdown(
        model.params, model.shape, plan, precision=req.precision, optimizer=req.optimizer,
        convention=req.convention or memory.default_convention(plan), micro_batch=micro_batch,
        checkpointing=req.checkpointing, checkpoint_every=req.checkpointing_every,
        flash_attention=req.flash_attention, runtime_gib=req.runtime_gib, fragmentation=req.fragmentation)


def stage_breakdowns(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan,
                     micro_batch: int | None = None) -> dict[pipeline.StageShare, MemoryBreakdown]:
    """Each pipeline rank's memory: its layers, embedding or head, and the activations its schedule keeps."""
    micro_batch = plan.micro_batch if micro_batch is None else micro_batch
    scale = model.params / model.shape.param_count()  # --params with an inferred shape: sized by the count
    out = {}
    for share in pipeline.shares_of(model.shape, plan):
        shape = pipeline.stage_shape(model.shape, share)
        out[share] = memory_breakdown(
            pipeline.stage_params(model.shape, share) * scale, shape, plan, precision=req.precision,
            optimizer=req.optimizer, convention=req.convention or memory.default_convention(plan),
            micro_batch=micro_batch, checkpointing=req.checkpointing, checkpoint_every=req.checkpointing_every,
            flash_attention=req.flash_attention, runtime_gib=req.runtime_gib, fragmentation=req.fragmentation,
            share=share)
    return out


def _pipeline_summary(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan) -> dict | None:
    if plan.pp == 1:
        return None
    stages = stage_breakdowns(req, model, plan)
    return {"pp": plan.pp, "schedule": plan.pp_schedule, "virtual_stages_per_rank": plan.pp_virtual,
            "microbatches": plan.grad_accum, "bubble_fraction": pipeline.bubble_fraction(plan),
            "layers_per_stage": pipeline.stage_layers(model.shape.n_blocks, plan),
            "stages": [{"rank": s.rank, "stages": list(s.stages), "layers": s.layers, "embedding": s.embedding,
                        "head": s.head, "microbatches_in_flight": s.in_flight, "peak_moment": b.moment,
                        "memory_bytes": b.lines()} for s, b in stages.items()]}


def sweep_memory(req: EstimateRequest, configs) -> list[tuple[float, bool]]:
    """Per-GPU total and fit for many (parallel plan, checkpointing) pairs at once.

    The model and GPU are resolved once; each configuration is then plain arithmetic.
    """
    model, gpu = resolve_model(req), gpu_of(req)
    capacity, out = gpu.memory_bytes, []
    for plan, checkpointing in configs:
        total = breakdown_for(replace(req, checkpointing=checkpointing), model, plan).total
        out.append((total, total <= capacity))
    return out


def max_micro_batch_for(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan, capacity: float) -> int:
    one = breakdown_for(req, model, plan, micro_batch=1)
    if one.step_bytes / (1 - req.fragmentation) > capacity:
        return 0  # the optimizer step alone does not fit
    b = memory.max_micro_batch(one.fixed, one.per_batch, capacity, req.fragmentation)  # backward-start moment
    while b > 0 and breakdown_for(req, model, plan, micro_batch=b).total > capacity:
        b -= 1  # another moment (FSDP2's layer backward) is the peak at this size
    return b


MAX_GPUS_SEARCHED = 1 << 20


def min_gpus_that_fit(req: EstimateRequest, model: ResolvedModel, capacity: float) -> dict[str, int | None]:
    """Smallest data-parallel GPU count (x tensor parallel) whose per-GPU total fits, per strategy.

    Per-GPU memory never grows with the GPU count, so a binary search finds the smallest one; with expert
    parallelism the data-parallel ranks come in multiples of `ep` (the EP group is taken from them).
    None: no count fits (the unsharded part alone is too big).
    """
    result: dict[str, int | None] = {}
    ep = req.layout.ep
    for name in FEWEST_GPUS_STRATEGIES:
        if req.finetune not in (None, "full") and name != "ddp":  # adapters are planned on DDP replicas only
            continue

        def fits(groups: int, name=name) -> bool:
            plan = ParallelPlan.for_strategy(name, groups * ep * req.tp * req.layout.pp, tp=req.tp,
                                             micro_batch=req.micro_batch, pipeline=req.layout, ep=ep)
            return breakdown_for(req, model, plan).total <= capacity
        most = MAX_GPUS_SEARCHED // ep
        if not fits(most):
            result[name] = None
            continue
        lo, hi = 1, most
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        result[name] = lo * ep * req.tp * req.layout.pp
    return result


def _peer_estimates(model: ResolvedModel, plan: ParallelPlan) -> dict[str, float]:
    """Other tools' figures for the same job, shown beside ours (their conventions differ)."""
    if plan.engine != "deepspeed":
        return {}
    ds = memory.deepspeed_estimator_gpu_bytes(model.params, model.shape.largest_layer_params(), plan.stage,
                                              plan.shard_degree, plan.offload)
    return {} if ds is None else {"deepspeed_estimator_model_states_gpu_bytes": ds}


def _moe_summary(req: EstimateRequest, model: ResolvedModel, breakdown: MemoryBreakdown,
                 time: dict | None) -> dict | None:
    """A mixture-of-experts model's own figures: active parameters, the routing's load factor, the expert and
    other model states per GPU, the all-to-all buffers and the all-to-alls' time."""
    m, plan = model.shape.moe, req.layout
    if m is None:
        return None
    from planner.model.shapes import DROPLESS_LOAD_FACTOR

    width = 4 if req.precision == "fp32" else 2
    states = breakdown.states
    return {"experts": m.experts, "top_k": m.top_k, "ep": plan.ep, "experts_per_rank": m.experts // plan.ep,
            "active_params": model.active_params, "total_params": model.params,
            "routing": f"capacity factor {m.capacity_factor:g}" if m.capacity_factor else "dropless",
            "load_factor": m.load_factor,
            "load_factor_source": "--capacity-factor" if m.capacity_factor else
            "dropless on one EP rank: it runs every routed copy, however they spread" if plan.ep == 1 else
            f"dropless margin {DROPLESS_LOAD_FACTOR:g}, Switch's capacity factor: planner.model.shapes",
            "expert_states_per_gpu_bytes": states.experts_gpu,
            "other_states_per_gpu_bytes": sum(states.gpu.values()) - states.experts_gpu,
            "all_to_all_buffer_bytes": memory.all_to_all_buffer_bytes(model.shape, plan, plan.micro_batch, width),
            "expert_parallel_s": (time or {}).get("breakdown_s", {}).get("expert_parallel")}


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


def _request_dict(req: EstimateRequest) -> dict:
    out = {f.name: getattr(req, f.name) for f in fields(req) if f.name not in ("catalog", "shape", "layout")}
    return {**out, "layout": req.layout.to_dict(), "lora_modules": list(req.lora_modules)}


def compute_dtype(req: EstimateRequest, gpu) -> str:
    dtype = _COMPUTE_DTYPE.get(req.precision)
    if dtype is None:
        raise PlannerError(f"--precision: {req.precision!r} is not one of {', '.join(memory.PRECISIONS)}")
    if dtype not in gpu.peak_tflops:
        raise PlannerError(f"--precision: {gpu.name} has no {dtype} tensor cores; "
                           f"use one of: {', '.join(p for p, d in _COMPUTE_DTYPE.items() if d in gpu.peak_tflops)}")
    return dtype


def fits(req: EstimateRequest) -> bool:
    """Whether the request's step fits its GPU's memory (the estimate's memory part only: fast)."""
    req.validate()
    return breakdown_for(req, resolve_model(req), req.layout.validate()).total <= gpu_of(req).memory_bytes


def estimate(req: EstimateRequest, fewest_gpus: bool = True) -> Estimate:
    """The full estimate of one request (`planner estimate`; `.to_dict()` is its `--json`). `fewest_gpus`:
    also search the fewest GPUs each strategy fits on (compare, which asks per row, leaves it out)."""
    req.validate()
    plan = req.layout.validate()
    model, gpu = resolve_model(req), gpu_of(req)
    dtype = compute_dtype(req, gpu)
    tokens = req.tokens if req.tokens is not None else default_tokens(model)  # the laws' refusal before memory's
    convention = req.convention or memory.default_convention(plan)
    breakdown = breakdown_for(req, model, plan)
    capacity = gpu.memory_bytes
    terms = memory.state_terms(req.precision, req.optimizer, convention, model.shape)
    price = gpu.price_per_hour if req.price is None else req.price
    time = predicted_time(req, model, plan, gpu, dtype)
    source = "--mfu" if req.mfu is not None else "predicted" if time else "default"
    mfu = {"--mfu": req.mfu, "predicted": time and time["mfu_predicted"], "default": compute.DEFAULT_MFU}[source]
    comp = compute.estimate_compute(model.params, tokens, model.shape, peak_flops=gpu.peak_flops(dtype),
                                    gpus=req.gpus, mfu=mfu, price_per_gpu_hour=price,
                                    checkpointing=req.checkpointing, checkpointed_fraction=_checkpointed(req, model))
    fewest = min_gpus_that_fit(req, model, capacity) if fewest_gpus else {}
    return Estimate(
        model=ModelSummary(model.params, model.source, model.shape_inferred, model.shape.to_dict(),
                           model.shape.param_count(), model.active_params),
        hardware=HardwareSummary(gpu.name, gpu.description, req.gpus, req.gpus_per_node,
                                 math.ceil(req.gpus / req.gpus_per_node), gpu.memory_gib, gpu.peak_tflops[dtype],
                                 dtype, price),
        training=TrainingSummary(req.precision, req.optimizer, plan.strategy, plan.shard_degree, plan.dp, plan.tp,
                                 plan.offload, convention, plan.micro_batch, model.shape.seq_len, req.checkpointing,
                                 req.flash_attention),
        layout=plan.to_dict(),
        memory=MemorySummary(
            peak_moment=breakdown.moment, moments=breakdown.moments(),
            cpu_per_gpu={**breakdown.states.cpu, "total": breakdown.states.cpu_total},
            model_states_per_gpu=breakdown.states.gpu_total,
            bytes_per_param={**{t.label: t.bytes_per_param for t in terms},
                             "total": sum(t.bytes_per_param for t in terms)}),
        fit=FitSummary(capacity, breakdown.total <= capacity, capacity - breakdown.total,
                       max_micro_batch_for(req, model, plan, capacity), fewest,
                       {k: None if v is None else math.ceil(v / req.gpus_per_node) for k, v in fewest.items()}),
        compute=comp,
        peer_estimates=_peer_estimates(model, plan),
        rule_of_thumb=teaching_view(model.params),
        finetune=_finetune_summary(req, model),
        pipeline=_pipeline_summary(req, model, plan),
        request=_request_dict(req),
        time=time,
        mfu_source=source,
        moe=_moe_summary(req, model, breakdown, time),
    )


def default_tokens(model: ResolvedModel) -> float:
    """Training tokens when none are given: Chinchilla's 20 per parameter, a law fitted on dense decoder-only
    models only."""
    if model.shape.arch != "decoder":
        raise PlannerError(f"--tokens: needed for an {model.shape.arch} model; the default (Chinchilla's 20 tokens "
                           "per parameter) was fitted on decoder-only models")
    if model.shape.moe is not None:
        raise PlannerError("--tokens: needed for a mixture-of-experts model; the default (Chinchilla's 20 tokens per "
                           "parameter) was fitted on dense models and says nothing about total vs active parameters")
    return compute.TOKENS_PER_PARAM * model.params


def _checkpointed(req: EstimateRequest, model: ResolvedModel) -> float:
    return activations.checkpointed_fraction(model.shape.layers, req.checkpointing, req.checkpointing_every)


#: The engines' gradient width on the data-parallel wire: our torch DDP (autocast over fp32 weights) and
#: FSDP2 (fp32 reduce dtype) reduce fp32 gradients; DeepSpeed bf16 reduces 16-bit ones.
GRAD_BYTES = {"single": 4, "ddp": 4, "fsdp": 4, "deepspeed": 2}


def predicted_time(req: EstimateRequest, model: ResolvedModel, plan: ParallelPlan, gpu, dtype: str) -> dict | None:
    """The step-time model's view of one optimizer step of `plan` (`planner.compute.step_time`, constants
    `CALIBRATED`; an encoder-decoder's by `planner.compute.encoder_decoder_step_time`), or None when the GPU's
    catalog entry lacks what it needs (HBM, network or, for more than one GPU a node, interconnect bandwidth)."""
    from planner.compute.encoder_decoder_step_time import encoder_decoder_step_time
    from planner.compute.step_time import (
        CALIBRATED,
        PROBED,
        UNFUSED_ADAMW_BYTES,
        Kernels,
        hardware_of,
        step_time,
    )

    try:
        hw = hardware_of(gpu, dtype, req.gpus_per_node)
    except PlannerError:
        return None
    if hw.network_bytes_per_s <= 0:
        return None
    grad_bytes = 4 if req.precision == "fp32" else GRAD_BYTES[plan.engine]
    # our trainer's kernels: eager PyTorch, SDPA's flash attention where the plan has it; the residual stream
    # is fp32 under autocast over fp32 weights (one process, DDP), else 16-bit
    fp32 = req.precision == "fp32"
    autocast = plan.engine in ("single", "ddp") and not fp32
    # torch's AdamW with clipping on every engine; no `no_sync`: torch DDP and FSDP2 reduce every micro-batch's
    # gradients, DeepSpeed from ZeRO-2 on (ZeRO-1 at the accumulation boundary)
    every = plan.engine in ("ddp", "fsdp") or (plan.engine == "deepspeed" and plan.stage >= 2)
    kernels = Kernels(flash_attention=req.flash_attention, fused=False, residual_bytes=4 if autocast or fp32 else 2,
                      fp8_linears=req.precision == "fp8", activation_bytes=4 if fp32 else 2,
                      optimizer_bytes=UNFUSED_ADAMW_BYTES, reduce_every_micro_batch=every)
    # A machine `planner probe` measured: its figures are achieved rates; and with one thread per process on
    # every core, gloo's collectives take the cores the compute runs on, so nothing overlaps.
    probed = gpu.device == "cpu"
    fraction = _checkpointed(req, model)
    eff = PROBED if probed else CALIBRATED
    model_name = "planner.compute.step_time"
    if model.shape.arch == "encoder-decoder":  # its checkpointing is none (`hardware_flops_per_token` refuses others)
        model_name = "planner.compute.encoder_decoder_step_time"
        t = encoder_decoder_step_time(model.shape, plan, hw, eff, kernels=kernels, grad_bytes=grad_bytes,
                                      overlap_dp=not probed)
    else:
        t = step_time(model.shape, plan, hw, eff, checkpointing=req.checkpointing, overlap_dp=not probed,
                      grad_bytes=grad_bytes, kernels=kernels, checkpointed_fraction=fraction)
    tokens = plan.batch * model.shape.seq_len
    busy = t.total_s * hw.peak_flops * req.gpus  # FLOPs the GPUs could have done in the step
    return {"step_time_s": t.total_s, "tokens_per_step": tokens, "tokens_per_s_per_gpu": tokens / t.total_s / req.gpus,
            "mfu_predicted": compute.model_flops_per_token(model.params, model.shape) * tokens / busy,
            "hfu_predicted": compute.hardware_flops_per_token(model.params, model.shape, req.checkpointing, fraction)
            * tokens / busy,
            "breakdown_s": {"matmul": t.matmul_s, "attention": t.attention_s, "memory_bound": t.memory_s,
                            "tensor_parallel": t.tp_comm_s, "expert_parallel": t.ep_comm_s, "bubble": t.bubble_s,
                            "pipeline_p2p": t.pp_comm_s, "data_parallel_exposed": t.dp_comm_s,
                            "optimizer": t.optimizer_s},
            "data_parallel_bytes_per_step": t.dp_bytes,
            # what the kernels were priced at (the catalog's published rates; a probed machine's measured ones)
            "kernel_tflops": {"matmul": hw.matmul_ceiling / 1e12,
                              "flash_attention": (hw.attention_flops or hw.flash_attention_flops) / 1e12},
            "model": f"{model_name} at the rates `planner probe` measured" if probed else
                     f"{model_name}, CALIBRATED on Narayanan et al. 2021 Table 1 and llm-foundry's MPT on H100 (BF16)"}
