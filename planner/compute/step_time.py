"""Step time of a Megatron-style layout (TP x PP x DP, full recomputation), from the hardware's specs.

It reads the planner's own types: the model's `ModelShape` and the layout's `ParallelPlan`.

A first slice of issue 24: the planner's own prediction of how long an iteration takes, so MFU can
become an output instead of a guess. Torch-free and closed-form (microseconds per layout).

One iteration, per GPU (derivation; Narayanan et al. 2021, SC21, §3 and §5, for the terms):

- **Compute.** Model FLOPs with full recomputation (the paper's eq. 3, 4 passes of every matmul):
  `F = 96 B s L h^2 (1 + s/(6h) + V/(16 L h))`, divided evenly over the `n` GPUs. A matmul runs at
  `peak x eff(k)`, where `k = h / t` is the narrowest dimension of a rank's GEMM: small per-rank
  matrices use the tensor cores less well. `eff(k) = e_max k / (k + k_half)`: two constants, the
  same for every row.
- **Tensor-parallel all-reduces.** Per layer and micro-batch, 2 in the forward, 2 in the backward,
  2 in the recomputed forward (Megatron's f/g operators), each of the `b s h` activations in 2-byte
  precision, as a ring: `2 (t - 1) / t x bytes / (link_eff x NVLink bandwidth)`; not overlapped.
- **Pipeline.** Every micro-batch's compute and TP time is stretched by the bubble,
  `(m + (p - 1) / v) / m` for `m` micro-batches and `v` stages per rank (1F1B / interleaved), and
  each micro-batch sends its activations to the next stage and its gradient back (`2 b s h` bytes
  each way per stage boundary crossed, `v` times with interleaving) over the network.
- **Data-parallel all-reduce** of the rank's fp32 gradients (`4 x params / (t p)` bytes) as a ring
  over the network after the backward (Megatron 2021's local DDP does not overlap it).
- **Optimizer step**: memory-bound, 32 bytes of fp32 states and gradients moved per parameter of
  the rank at HBM bandwidth.

`link_eff` (the achieved fraction of a link's bandwidth) is the third fitted constant. The
constants are fitted on a named calibration table and judged on others
(`benchmarks/bench_step_time.py`); no row has its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.memory.pipeline import bubble_fraction
from planner.model.hardware import BUILTIN_GPUS, GPU
from planner.model.shapes import ModelShape


@dataclass(frozen=True)
class Hardware:
    """What the step time needs of a machine: dense peak, HBM, NVLink and network per GPU."""

    peak_flops: float  # dense, in the compute dtype
    hbm_bytes_per_s: float
    nvlink_bytes_per_s: float  # per GPU, one direction
    network_bytes_per_s: float  # per GPU, one direction (the node's NICs shared by its GPUs)
    gpus_per_node: int


def hardware_of(gpu: GPU, dtype: str, gpus_per_node: int) -> Hardware:
    """The step time's view of a catalog GPU (`planner.model.hardware`, each figure from its data
    sheet): NVLink one way is half the catalog's both-directions figure."""
    if gpu.hbm_gbps <= 0:
        raise PlannerError(f"--gpu: {gpu.name} has no hbm_gbps in the catalog; set it to predict step time")
    return Hardware(gpu.peak_flops(dtype), gpu.hbm_gbps * 1e9, gpu.interconnect_gbps / 2 * 1e9,
                    gpu.network_gbps * 1e9, gpus_per_node)


#: A100 SXM 80GB in a DGX A100 (Selene, where Megatron's tables were measured): 312 TFLOP/s bf16,
#: 2,039 GB/s HBM, 300 GB/s NVLink each way, one 200 Gb/s HDR NIC per GPU.
A100_80GB_DGX = hardware_of(BUILTIN_GPUS["a100-80gb"], "bf16", 8)


@dataclass(frozen=True)
class Efficiency:
    """The model's fitted constants (see the module docstring)."""

    matmul_max: float = 0.8  # the fraction of peak a large GEMM reaches
    matmul_half_k: float = 256.0  # the per-rank width at which a GEMM reaches half of matmul_max
    link: float = 0.7  # the fraction of a link's bandwidth a collective achieves


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    tp_comm_s: float
    bubble_s: float
    pp_comm_s: float
    dp_comm_s: float
    optimizer_s: float
    model_flops: float  # per iteration, all GPUs, with recomputation (the paper's counting)

    @property
    def total_s(self) -> float:
        return self.compute_s + self.tp_comm_s + self.bubble_s + self.pp_comm_s + self.dp_comm_s + self.optimizer_s


def megatron_flops(shape: ModelShape, batch: int) -> float:
    """Narayanan et al. 2021, eq. 3: FLOPs of one iteration of `batch` sequences with full activation
    recomputation (GPT blocks: 12 h^2 parameters per layer)."""
    s, layers, h, v = shape.seq_len, shape.layers, shape.hidden, shape.vocab
    return 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))


def ring_time(nbytes: float, ranks: int, bandwidth: float) -> float:
    """A ring all-reduce of `nbytes` over `ranks`: each rank sends and receives 2 (n - 1) / n of it."""
    return 0.0 if ranks <= 1 else 2 * (ranks - 1) / ranks * nbytes / bandwidth


#: Fitted by `benchmarks/bench_step_time.py` on Narayanan et al. 2021, Table 1 (and nothing else); the
#: estimate uses these (`tests/test_step_time.py` re-fits and holds them equal).
CALIBRATED = Efficiency(matmul_max=0.599, matmul_half_k=1.0, link=0.852)
#: Forward-equivalent passes of every layer matmul per step: forward + backward (2x), plus the recomputed
#: forward under full checkpointing. Selective recomputes only attention's softmax-side ops (memory-bound).
PASSES = {"none": 3, "selective": 3, "full": 4}


def layer_flops(shape: ModelShape, batch: int, passes: int) -> float:
    """FLOPs of `batch` sequences: every layer's matmuls (2 per parameter per token per pass, plus the
    4 s h of attention's scores and values, as Megatron counts it) `passes` times, and the output layer
    forward and backward. Equals `megatron_flops` for GPT blocks with full recomputation."""
    s, h = shape.seq_len, shape.hidden
    matmul_params = shape.attention_params() + shape.mlp_params()
    per_token_layer = 2 * matmul_params + 4 * s * h
    return batch * s * (shape.layers * per_token_layer * passes + 6 * shape.vocab * h)


def data_parallel_bytes(plan: ParallelPlan, rank_params: float, grad_bytes: int) -> float:
    """Bytes each data-parallel rank sends per step (all-reduce as a ring counts 2 (n-1)/n of its input):
    DDP all-reduces the gradients; ZeRO 1-2 / FSDP shard-grad-op reduce-scatter them and all-gather the
    updated 16-bit parameters; ZeRO-3 / FSDP full also all-gather the parameters again for backward."""
    n = plan.shard_degree if plan.stage else plan.dp
    if n <= 1:
        return 0.0
    half = (n - 1) / n * rank_params  # one reduce-scatter or all-gather of the rank's parameters, in elements
    if plan.stage == 0:
        return 2 * half * grad_bytes
    gathers = 2 if plan.stage == 3 else 1
    return half * grad_bytes + gathers * half * 2


def step_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency = Efficiency(), *,
              checkpointing: str = "full", overlap_dp: bool = False, grad_bytes: int = 4) -> StepTime:
    """One optimizer step of `plan` (its world set; `grad_accum` micro-batches per pipeline).

    The defaults are Megatron-LM 2021's runs (full recomputation, a data-parallel all-reduce of fp32
    gradients after the backward); the planner's estimate passes the plan's checkpointing, overlaps the
    data-parallel traffic with the backward as torch DDP, FSDP2 and DeepSpeed do (only what outlasts it
    is exposed) and the engine's gradient width."""
    micro_batches = plan.grad_accum
    passes = PASSES[checkpointing]
    flops = layer_flops(shape, plan.batch, passes)
    k = shape.hidden / plan.tp
    matmul_rate = hw.peak_flops * eff.matmul_max * k / (k + eff.matmul_half_k)
    compute = flops / (plan.tp * plan.pp * plan.dp) / matmul_rate
    tp_link = (hw.nvlink_bytes_per_s if plan.tp <= hw.gpus_per_node else hw.network_bytes_per_s) * eff.link
    activation_bytes = 2 * plan.micro_batch * shape.seq_len * shape.hidden
    tp_comm = 2 * passes * (shape.layers / plan.pp) * micro_batches * ring_time(activation_bytes, plan.tp, tp_link)
    bubble = (compute + tp_comm) * bubble_fraction(plan)
    net = hw.network_bytes_per_s * eff.link
    pp_comm = 0.0 if plan.pp == 1 else micro_batches * plan.pp_virtual * 2 * activation_bytes / plan.tp / net
    params = shape.layers * (shape.attention_params() + shape.mlp_params()) + shape.vocab * shape.hidden
    rank_params = params / (plan.tp * plan.pp)
    dp_ranks = plan.shard_degree if plan.stage else plan.dp
    dp_link = hw.nvlink_bytes_per_s * eff.link if dp_ranks * plan.tp <= hw.gpus_per_node else net
    dp_comm = data_parallel_bytes(plan, rank_params, grad_bytes) / dp_link
    if plan.engine == "fsdp" and plan.stage and plan.dp_replicate > 1:  # hybrid sharding: the shards' gradients all-reduced across copies
        dp_comm += ring_time(grad_bytes * rank_params / plan.shard_degree, plan.dp_replicate, net)
    if overlap_dp:  # hidden behind the last micro-batch's backward (the whole step's under ZeRO-3 / FSDP full)
        hidden_behind = compute * ((passes - 1) / passes if plan.stage == 3 else (2 / passes) / micro_batches)
        dp_comm = max(0.0, dp_comm - hidden_behind)
    optimizer = 32 * rank_params / hw.hbm_bytes_per_s
    return StepTime(compute, tp_comm, bubble, pp_comm, dp_comm, optimizer, flops)
