"""What the trainer reports beside the loss: throughput, MFU, and the planner's predictions next to
what this run measures.

`predict` is the one function where the trainer asks the planner anything (model shape and FLOPs,
the memory model, the estimate's peak, the GPU catalog): when the planner's API moves, that is the
one function to adapt. `RunReport` holds its answer for the run and turns each step's timings and
torch's measurements into the metrics the loop logs. The metric names are a contract: `planner
fit`, the ladder, the tests and the dashboards read them.

Measured against predicted, once per run (the `*_measured`, `*_predicted`, `*_ratio` metrics):
- activations: the bytes the first forward saves for backward (`pretrain.memory_probe`);
- model states: what the engine holds at its first optimizer update (`Engine.measured_state_bytes`);
- GPU runs: the allocator's peak after step 1 against the planner's tensor peak.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from planner.core.errors import PlannerError
from planner.core.schema import RunConfig
from pretrain.distributed import DistInfo
from pretrain.memory_probe import LiveTensorCounter, SavedTensorCounter


@dataclass(frozen=True)
class Predicted:
    """The planner's figures for one run, made once before its first step."""

    n_params: int
    flops_per_token: float  # model FLOPs (PaLM's 6N + 12LHQT)
    model_state_bytes: dict[str, float]  # per rank at the optimizer step, GPU and offloaded CPU share together
    activation_bytes: float  # saved for backward by one micro-batch (layers and output layer)
    peak_bytes: float | None  # per-rank peak of tensors (no CUDA runtime, no fragmentation); GPU runs only
    peak_flops: float | None  # dense bf16 peak of this device; on a CPU, the probed peak when planned for it
    mfu: Callable[[float], float] | None  # tokens/s over all ranks -> MFU; None without a peak
    expert_state_bytes: float = 0.0  # of `model_state_bytes`, the routed experts' (an MoE model's), per rank


def predict(cfg: RunConfig, gpu_name: str | None, rank: int = 0) -> Predicted:
    """Every planner prediction the trainer reports, for `cfg` as launched (`cfg.parallel` holds the world
    size) on global rank `rank` (its pipeline stages, under PP). `gpu_name`: torch's name for this rank's
    GPU, None on a CPU."""
    from planner.compute import flops as compute
    from planner.memory import activations, pipeline
    from planner.memory import model_states as memory
    from planner.model.hardware import BUILTIN_GPUS
    from planner.model.shapes import shape_of

    plan, whole, b = cfg.parallel, shape_of(cfg.model), cfg.parallel.micro_batch
    flops_per_token = compute.model_flops_per_token(whole.param_count(), whole)
    shape, params, share = whole, whole.params_per_tp_rank(plan.tp), None
    if plan.pp > 1:  # this rank's pipeline stages: their layers, the embedding or the output layer
        share = pipeline.shares_of(whole, plan)[plan.pp_rank(rank)]
        shape = pipeline.stage_shape(whole, share)
        params = pipeline.stage_params_per_tp_rank(whole, share, plan.tp)
    # model states: torch autocast keeps fp32 weights, fp32 gradients and fp32 Adam states (the fp32 layout);
    # the trainer counts live tensors wherever they are, gathered buffers excluded
    convention = {"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(plan.engine, "zero-paper")
    precision = "fp32" if plan.engine in ("single", "ddp") or cfg.train.precision == "fp32" else "bf16-mixed"
    terms = memory.state_terms(precision, "adamw", convention, shape)
    states = memory.model_states(params, terms, plan, shape, convention, at_step=True)
    # activations of this engine, precision and checkpointing: what SavedTensorCounter sees on the first forward
    regime = activations.regime_for(cfg.train.precision, {"single": "ddp"}.get(plan.engine, plan.engine))
    activation_bytes = activations.stored_bytes(shape, b, regime=regime, checkpointing=cfg.train.activation_checkpointing,
                                                every=cfg.train.activation_checkpointing_every, tp=plan.tp,
                                                sequence_parallel=plan.tp > 1, share=share) \
        + activations.head_bytes(shape, b, regime, plan.tp, share)
    peak_bytes = peak_flops = None
    if gpu_name is not None:
        from planner.plan.estimate import estimate
        from planner.plan.request import request_from_run

        with contextlib.suppress(PlannerError):  # a layout the estimate cannot price: no peak reported
            peak_bytes = estimate(request_from_run(cfg)).tracked_lines()["allocated"]
        # the catalog entry matching the GPU's name, else the plan's figure for a GPU
        gpu = next((g for key, g in BUILTIN_GPUS.items() if key.split("-")[0] in gpu_name.lower()), None)
        if gpu is not None:
            peak_flops = gpu.peak_flops("bf16" if "bf16" in gpu.peak_tflops else "fp16")
        elif cfg.plan.get("peak_flops_per_gpu"):
            peak_flops = float(cfg.plan["peak_flops_per_gpu"])
    elif planned_on_this_cpu(cfg):  # a machine `planner probe` measured: its peak for the run's precision
        spec = cfg.planning.gpu_spec
        peak_flops = spec.peak_tflops.get("fp32" if cfg.train.precision == "fp32" else "bf16", 0.0) * 1e12 or None
    mfu = functools.partial(compute.mfu, flops_per_token=flops_per_token, peak_flops=peak_flops,
                            gpus=plan.world) if peak_flops else None
    return Predicted(whole.param_count(), flops_per_token, {k: states.gpu[k] + states.cpu[k] for k in states.gpu},
                     activation_bytes, peak_bytes, peak_flops, mfu, states.experts_gpu)


def planned_on_this_cpu(cfg) -> bool:
    """The plan's "GPU" is a CPU entry `planner probe` measured: a CPU run is then on the planned hardware."""
    spec = cfg.planning.gpu_spec if cfg.planning is not None else None
    return spec is not None and spec.device == "cpu"


def gpu_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def memory_in_use(device: torch.device) -> float:
    """The run's peak so far: the CUDA allocator's on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # peak RSS on Linux


class RunReport:
    """Throughput, MFU and predicted-vs-measured memory for one run (one process's view)."""

    def __init__(self, cfg: RunConfig, info: DistInfo):
        self.cfg, self.device, self.rank = cfg, info.device, info.rank
        self.predicted = predict(cfg, gpu_name(info.device), info.rank)
        self.tokens_per_step = cfg.parallel.batch * cfg.model.seq_len
        self.once: dict[str, float] = {}  # first-step comparisons, also written into summary.json
        self._activations: dict[str, float] = {}
        self._states_reported = False

    def run_params(self, world: int) -> dict[str, float]:
        """What `planner fit nd mlflow:EXPERIMENT --n-col params.n_params --d-col params.train_tokens` reads."""
        plan = self.cfg.parallel
        return {"n_params": self.predicted.n_params, "train_tokens": self.tokens_per_step * self.cfg.train.steps,
                "world_size": world, "tp": plan.tp, "data_parallel": plan.dp}

    def activation_counter(self, model: nn.Module) -> SavedTensorCounter | LiveTensorCounter:
        """A counter for what the first micro-batch keeps for backward (the engine runs it): autograd's saved
        tensors, or, under the op-level policy, whose cache the hooks never see, what its forward leaves alive."""
        if self.cfg.train.activation_checkpointing == "op":
            return LiveTensorCounter()
        return SavedTensorCounter(model)

    def record_activations(self, counter: SavedTensorCounter | LiveTensorCounter | None) -> None:
        """The first micro-batch's saved bytes against the planner's activations (this rank's stages under PP)."""
        if counter is None:
            return
        predicted = self.predicted.activation_bytes
        self._activations = {"activation_bytes_measured": counter.bytes, "activation_bytes_predicted": predicted,
                             "activation_bytes_ratio": predicted / max(counter.bytes, 1)}

    def step_metrics(self, step: int, tokens_seen: int, elapsed: float,
                     measured_states: dict[str, float] | None) -> dict[str, float | None]:
        """Throughput and memory of the step just done, with each comparison once, as soon as it can be made."""
        p = self.predicted
        tokens_per_s = self.tokens_per_step / elapsed
        metrics = {"tokens_seen": tokens_seen, "flops_seen": tokens_seen * p.flops_per_token,
                   "tokens_per_s": tokens_per_s, "step_time_s": elapsed, "memory_bytes": memory_in_use(self.device),
                   "mfu": p.mfu(tokens_per_s) if p.mfu else None}
        if measured_states is not None and not self._states_reported:
            self._states_reported = True
            measured, predicted = sum(measured_states.values()), sum(p.model_state_bytes.values())
            metrics.update({"model_state_bytes_measured": measured, "model_state_bytes_predicted": predicted,
                            "model_state_bytes_ratio": measured / predicted})
            if self.cfg.plan.get("tokens_per_s") and p.peak_flops:  # on the planned GPU: the plan's figures
                metrics["tokens_per_s_predicted"] = float(self.cfg.plan["tokens_per_s"])
                if self.cfg.plan.get("step_time_s"):
                    metrics["step_time_s_predicted"] = float(self.cfg.plan["step_time_s"])
        if step == 1:
            self.once.update(self._activations)
            self.once.update(self._peak())
            metrics.update(self.once)
        return metrics

    def _peak(self) -> dict[str, float]:
        """The allocator's peak through step 1 against the planner's tensor peak (GPU runs only)."""
        if self.device.type != "cuda":
            return {}
        out = {"peak_bytes_measured": float(torch.cuda.max_memory_allocated(self.device)),
               "peak_reserved_bytes_measured": float(torch.cuda.max_memory_reserved(self.device))}
        if self.predicted.peak_bytes:
            out["peak_bytes_predicted"] = self.predicted.peak_bytes
            out["peak_bytes_ratio"] = self.predicted.peak_bytes / out["peak_bytes_measured"]
        return out

    def summary(self, measured_states: dict[str, float] | None,
                measured_expert_states: dict[str, float] | None = None) -> dict:
        """The report's part of summary.json (collective under pipeline parallelism: every stage's figures); an
        MoE model's routed experts' states besides (`measured_expert_states`, when the engine counts them)."""
        out = {"model_state_bytes_measured": measured_states,
               "model_state_bytes_predicted": self.predicted.model_state_bytes, **self.once}
        if measured_expert_states is not None:
            out["expert_state_bytes_measured"] = measured_expert_states
            out["expert_state_bytes_predicted"] = self.predicted.expert_state_bytes
            out["expert_state_bytes_per_rank"] = self.every_rank(float(sum(measured_expert_states.values())))
        if self.cfg.parallel.pp > 1:
            out["stages"] = self.stage_figures(measured_states)
        return out

    def every_rank(self, value: float) -> list[float]:
        """`value` from every rank, rank 0 first (collective when there are several)."""
        import torch.distributed as dist

        if not dist.is_initialized() or self.cfg.parallel.world == 1:
            return [value]
        everyone: list[float | None] = [None] * self.cfg.parallel.world
        dist.all_gather_object(everyone, value)
        return everyone

    def stage_figures(self, measured_states: dict[str, float] | None) -> list[dict]:
        """Each pipeline rank's measured and predicted model states and first-micro-batch activations, first
        stage to last (collective; from the first rank of each pipeline rank, the others hold the same)."""
        import torch.distributed as dist

        plan = self.cfg.parallel
        mine = {"pp_rank": plan.pp_rank(self.rank), "model_state_bytes_measured": measured_states,
                "model_state_bytes_predicted": self.predicted.model_state_bytes, **self._activations}
        everyone: list[dict | None] = [None] * plan.world
        dist.all_gather_object(everyone, mine)
        stages: dict[int, dict] = {}
        for figures in everyone:
            stages.setdefault(figures["pp_rank"], figures)
        return [stages[r] for r in sorted(stages)]

    @staticmethod
    def stage_metrics(stages: list[dict] | None) -> dict[str, float]:
        """The stages' figures as flat MLflow metrics: `pp1_model_state_bytes_measured`, ..."""
        out: dict[str, float] = {}
        for figures in stages or []:
            prefix = f"pp{figures['pp_rank']}_"
            for kind in ("measured", "predicted"):
                states = figures[f"model_state_bytes_{kind}"]
                if states is not None:
                    out[f"{prefix}model_state_bytes_{kind}"] = float(sum(states.values()))
                if f"activation_bytes_{kind}" in figures:
                    out[f"{prefix}activation_bytes_{kind}"] = float(figures[f"activation_bytes_{kind}"])
        return out
