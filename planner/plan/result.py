"""The estimate's typed result, and its one JSON writer.

`Estimate` is what `planner.plan.estimate.estimate` returns: the model, the hardware, the layout,
memory per GPU at every moment of a step with the peak moment named, fit, compute and cost.
Front ends read its attributes; `to_dict` is the only place its JSON (`planner estimate --json`,
plan.json) is written, and the table renders that JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from planner.compute.flops import ComputeEstimate


@dataclass(frozen=True)
class ModelSummary:
    params: float  # the count weights, gradients and optimizer states are sized by
    source: str
    shape_inferred: bool
    shape: dict[str, Any]
    shape_params: float
    active_params: float  # what one token passes through: `params` for a dense model, the top-k experts' for MoE


@dataclass(frozen=True)
class HardwareSummary:
    gpu: str
    description: str
    gpus: int
    gpus_per_node: int
    nodes: int
    memory_gib: float
    peak_tflops: float
    compute_dtype: str
    price_per_gpu_hour: float


@dataclass(frozen=True)
class TrainingSummary:
    precision: str
    optimizer: str
    strategy: str
    shard_degree: int
    data_parallel: int
    tp: int
    offload: str
    convention: str
    micro_batch: int
    seq_len: int
    checkpointing: str
    flash_attention: bool


@dataclass(frozen=True)
class MemorySummary:
    """Bytes per GPU by line at each moment of a step; `peak_moment` is the one with the largest total."""

    peak_moment: str
    moments: dict[str, dict[str, float]]
    cpu_per_gpu: dict[str, float]
    model_states_per_gpu: float  # all model states, whichever moment is the peak
    bytes_per_param: dict[str, float]

    @property
    def lines(self) -> dict[str, float]:
        return self.moments[self.peak_moment]

    @property
    def total(self) -> float:
        return self.lines["total"]


@dataclass(frozen=True)
class FitSummary:
    gpu_memory_bytes: float
    fits: bool
    headroom_bytes: float
    max_micro_batch: int
    min_gpus_to_fit: dict[str, int | None]
    min_nodes_to_fit: dict[str, int | None]


@dataclass(frozen=True)
class Estimate:
    model: ModelSummary
    hardware: HardwareSummary
    training: TrainingSummary
    layout: dict[str, Any]  # the parallel plan estimated (planner.core.parallel.ParallelPlan)
    memory: MemorySummary
    fit: FitSummary
    compute: ComputeEstimate
    peer_estimates: dict[str, float]
    rule_of_thumb: dict[str, float]
    finetune: dict | None
    pipeline: dict | None  # per pipeline rank: layers, in-flight micro-batches, memory; the bubble
    request: dict[str, Any]
    time: dict | None = None  # the step-time model's step, its breakdown, tokens/s per GPU, MFU and HFU
    mfu_source: str = "--mfu"  # which MFU prices the days: --mfu (given), predicted, or default (no model)
    moe: dict | None = None  # a mixture-of-experts model's figures (planner.plan.estimate._moe_summary)

    @property
    def params(self) -> float:
        return self.model.params

    def tracked_lines(self) -> dict[str, float]:
        """The peak's lines as a tensor tracker sees them (`planner verify`, the trainer's measurement):
        tensors only, logits counted as activations, the CUDA runtime and fragmentation left out.
        The names are the measured lines' names."""
        return tracked(self.memory.lines, self.request["runtime_gib"] * 2**30)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of `planner estimate --json` and plan.json."""
        m, f, c = self.memory, self.fit, self.compute
        lines = m.lines
        return {
            "params": self.model.params,
            "model": {"source": self.model.source, "shape_inferred": self.model.shape_inferred, **self.model.shape,
                      "shape_params": self.model.shape_params, "active_params": self.model.active_params},
            "hardware": asdict(self.hardware),
            "training": asdict(self.training),
            "layout": self.layout,
            "bytes_per_param": {**m.bytes_per_param, "model_states_per_gpu": m.model_states_per_gpu / self.params},
            "model_states_per_gpu_bytes": m.model_states_per_gpu,
            "peak_moment": m.peak_moment,
            "memory_per_gpu_bytes": lines,
            "memory_per_gpu_gib": {k: v / 2**30 for k, v in lines.items()},
            "memory_per_moment_bytes": m.moments,
            "cpu_memory_per_gpu_bytes": m.cpu_per_gpu,
            "peer_estimates": self.peer_estimates,
            "gpu_memory_bytes": f.gpu_memory_bytes,
            "fits": f.fits,
            "headroom_bytes": f.headroom_bytes,
            "max_micro_batch": f.max_micro_batch,
            "min_gpus_to_fit": f.min_gpus_to_fit,
            "min_nodes_to_fit": f.min_nodes_to_fit,
            **{k: getattr(c, k) for k in ("flops", "flops_6nd", "pf_days", "gpu_hours", "wall_days", "cost_usd")},
            "compute": c.to_dict(),
            "rule_of_thumb": self.rule_of_thumb,
            "finetune": self.finetune,
            "pipeline": self.pipeline,
            "moe": self.moe,
            "time": self.time,
            **{k: (self.time or {}).get(k) for k in ("step_time_s", "tokens_per_s_per_gpu", "mfu_predicted")},
            "mfu_used": c.mfu,
            "mfu_source": self.mfu_source,
            "request": self.request,
        }


def tracked(mem: dict[str, float], runtime: float) -> dict[str, float]:
    """A peak's memory lines (a whole plan's, or one pipeline stage's) as a tensor tracker sees them:
    logits counted as activations, the CUDA runtime (`runtime` bytes) and fragmentation left out."""
    lines = {k: mem.get(k, 0.0) for k in ("weights", "master_weights", "gradients", "optimizer")}
    lines["activations"] = mem.get("activations", 0.0) + mem["logits"]
    lines["overhead"] = mem["overhead"] - runtime
    lines["allocated"] = mem["total"] - mem["fragmentation"] - runtime
    return lines
