"""Training memory per GPU: model states, activations, buffers; "does it fit?" and "largest micro-batch".

Sources
- Model states (Rajbhandari et al. 2019, ZeRO, §3 and Figure 1): mixed-precision Adam holds 16-bit
  weights (2 B/param), 16-bit gradients (2) and K = 12 bytes of fp32 optimizer state (master
  weights 4, momentum 4, variance 4). With data-parallel degree Nd: DDP (2+2+K)Ψ; stage 1
  2Ψ+2Ψ+KΨ/Nd; stage 2 2Ψ+(2+K)Ψ/Nd; stage 3 (2+2+K)Ψ/Nd.
- DeepSpeed's estimators (`estimate_zero2_model_states_mem_needs`, `..._zero3_...`) add an fp32
  gradient copy partitioned with the optimizer states (18 B/param: 2 + 4 + 4 + 8 on top of the
  16-bit weights' 2, so 20 B/param in all), and for stage 3 the gathered 16-bit weights and
  gradients of the largest module (4 B x largest module).
- FSDP2 with a bf16 MixedPrecisionPolicy keeps sharded fp32 parameters (they are the master
  weights), fp32 gradients and fp32 Adam states: 16 B/param, all sharded; in full shard the bf16
  compute copy exists only for the layers being gathered.
- Activations: `planner.memory.activations`, term by term per architecture, checked against what our
  model saves for backward.
- Mixture of experts: the routed experts' states are split over the `ep` expert-parallel ranks, and where a
  state is partitioned, over the `dp_shard / ep` ranks holding the same experts (torchtitan: FSDP within the
  expert group), so a partitioned state is total / shard degree either way, an unpartitioned one expert / ep;
  every other parameter is partitioned as a dense model's. FSDP gathers one block with only its EP rank's
  experts. Each EP rank's all-to-alls add send and receive buffers (`all_to_all_buffer_bytes`) while a layer
  runs; none outlives its layer (the receiving side's gather into expert order makes the tensor that is saved),
  so they are not on the peak's books (FSDPMemTracker: Mixtral-8x7B and OLMoE-1B-7B at EP 8 under verify).
- Fragmentation: PyTorch's caching allocator holds memory it cannot hand out. GMLake (Guo et al.,
  ASPLOS 2024, §6) measured 15% of reserved memory on average (up to 33%) over eight LLM training
  setups on A100-80GB with the default allocator; `DEFAULT_FRAGMENTATION` is that average, as a
  fraction of reserved memory. `expandable_segments:True` lowers it; set `--fragmentation` to what
  `torch.cuda.memory_reserved()` vs `max_memory_allocated()` shows on your own run.

Conventions (the sources disagree, so the choice is explicit)
- `deepspeed` (default with --zero): what DeepSpeed allocates at its peak (20 B/param: 16-bit weights 2,
  16-bit gradients 2, fp32 gradients 4, fp32 master weights 4, Adam 8).
- `fsdp` (default with --fsdp): what torch FSDP2 allocates (16 B/param + gathered layers).
- `torch-amp` (default for DDP): what torch DDP under bf16 autocast allocates (our single/DDP
  engine): fp32 weights 4, fp32 gradients 4, AdamW 8; the 16-bit weight copies autocast makes
  are activations (`planner.memory.activations`).
- `zero-paper`: the ZeRO paper's 16 B/param accounting, partitioned states only; reproduces
  Figure 1 (120 / 31.4 / 16.6 / 1.875 GB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.memory.activations import CHECKPOINTING  # noqa: F401 (re-exported for the CLI)
from planner.model.shapes import ModelShape

#: fp8: torchao's Float8 training as torchtitan runs it: bf16 mixed precision (fp32 master, bf16 weights and
#: gradients), with the blocks' large linears computed in fp8 (`planner.compute.step_time.fp8_linear`); it
#: saves the same bf16 tensors for backward (its casts are recomputed) and gathers bf16 weights (FSDP's float8
#: all-gather off, torchtitan's default), so its memory is bf16-mixed's.
PRECISIONS = ("fp32", "fp16-mixed", "bf16-mixed", "bf16", "fp8", "int8", "int4")
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "adam8bit")
CONVENTIONS = ("deepspeed", "fsdp", "torch-amp", "zero-paper")

#: Bytes of the 16-bit weights each precision keeps on the GPU for compute.
_WEIGHT_BYTES = {"fp32": 4, "fp16-mixed": 2, "bf16-mixed": 2, "bf16": 2, "fp8": 2, "int8": 1, "int4": 0.5}

#: CUDA context, kernels and library workspaces (cuBLAS, NCCL) before any tensor: PyTorch reports
#: 0.3-0.6 GiB of context on Ampere/Hopper; 0.5 GiB plus NCCL's default channel buffers.
DEFAULT_RUNTIME_GIB = 0.75
#: Share of reserved GPU memory the caching allocator cannot use: GMLake's measured average (above).
DEFAULT_FRAGMENTATION = 0.15
#: DeepSpeed ZeRO-1/2 default reduce_bucket_size and allgather_bucket_size (elements).
DS_BUCKET_ELEMENTS = 5e8
#: DeepSpeed ZeRO-3 default stage3_prefetch_bucket_size (elements).
DS_PREFETCH_ELEMENTS = 5e7


@dataclass(frozen=True)
class StateTerm:
    """One kind of per-parameter state and where it lives.

    `sharded_from`: the ZeRO stage from which it is partitioned; `offload`: which offload flag
    moves it to CPU (only once it is partitioned); `cpu_bytes`: its size on CPU when moved there
    (DeepSpeed streams 16-bit gradients into the fp32 gradient buffer, so they take none);
    `transient_when_sharded`: a compute copy that exists only for the layers being gathered;
    `freed_before_step`: released before the optimizer step (DeepSpeed turns the 16-bit gradient
    partition into the fp32 one under ZeRO 1-3, its stage-0 wrapper keeps both; FSDP shard-grad-op
    drops its unsharded bf16 copy after backward),
    so it counts toward the instantaneous peak that DeepSpeed's estimator reports but not toward
    what is alive during the step itself.
    """

    category: str  # weights | gradients | master_weights | optimizer
    label: str
    bytes_per_param: float
    sharded_from: int
    offload: str  # 'params' | 'optimizer'
    cpu_bytes: float | None = None
    transient_when_sharded: bool = False
    freed_before_step: bool = False
    min_stage: int = 0  # exists only from this ZeRO stage (DeepSpeed's ZeRO optimizer's own copies)


def optimizer_state_bytes(optimizer: str, state_bytes: int, shape: ModelShape | None) -> float:
    """Bytes of optimizer state per parameter, for states stored `state_bytes` wide.

    Adam/AdamW: momentum and variance (Kingma & Ba 2015). SGD: one momentum buffer. Adafactor
    (Shazeer & Stern 2018, default as in T5: no momentum, factored second moment) keeps a row and
    a column vector per matrix: (r + c)/(r·c) states per weight. 8-bit Adam (Dettmers et al.
    2022): two 1-byte states (block-wise quantisation constants are < 0.2% more).
    """
    if optimizer in ("adam", "adamw"):
        return 2 * state_bytes
    if optimizer == "sgd":
        return state_bytes
    if optimizer == "adam8bit":
        return 2.0
    if optimizer == "adafactor":
        if shape is None:
            return 0.0
        return state_bytes * (1 / shape.hidden + 1 / shape.ffn)
    raise PlannerError(f"--optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")


def state_terms(precision: str, optimizer: str, convention: str,
                shape: ModelShape | None = None) -> tuple[StateTerm, ...]:
    """The per-parameter states a precision/optimizer/convention keeps, before partitioning."""
    if precision not in PRECISIONS:
        raise PlannerError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if convention not in CONVENTIONS:
        raise PlannerError(f"--convention: {convention!r} is not one of {', '.join(CONVENTIONS)}")
    if precision in ("int8", "int4"):  # frozen quantised weights: nothing is trained
        return (StateTerm("weights", f"{precision} weights (frozen)", _WEIGHT_BYTES[precision], 3, "params"),)
    if precision == "fp32" or precision == "bf16" or (convention == "torch-amp" and precision.endswith("-mixed")):
        if precision.endswith("-mixed"):
            precision = "fp32"  # autocast keeps the fp32 weights, gradients and optimizer states
        width = 4 if precision == "fp32" else 2
        optim = optimizer_state_bytes(optimizer, width, shape)
        terms = [
            StateTerm("weights", f"{precision} weights", width, 3, "params"),
            StateTerm("gradients", f"{precision} gradients", width, 2, "optimizer"),
            StateTerm("optimizer", f"{optimizer} states ({precision})", optim, 1, "optimizer"),
        ]
        if convention == "deepspeed" and precision == "fp32":  # its ZeRO optimizer clones the fp32 partition
            terms.append(StateTerm("master_weights", "fp32 partition copy", 4, 1, "optimizer", min_stage=1))
        return tuple(terms)
    optim = optimizer_state_bytes(optimizer, 4, shape)
    adam = StateTerm("optimizer", f"{optimizer} states (fp32)", optim, 1, "optimizer")
    if convention == "fsdp":
        return (
            StateTerm("weights", "bf16 compute copy", 2, 3, "params", transient_when_sharded=True,
                      freed_before_step=True),
            StateTerm("master_weights", "fp32 sharded parameters", 4, 2, "params"),
            StateTerm("gradients", "fp32 gradients", 4, 2, "params"),
            StateTerm("optimizer", adam.label, optim, 2, "params"),
        )
    terms = [
        StateTerm("weights", "16-bit weights", 2, 3, "params"),
        StateTerm("gradients", "16-bit gradients", 2, 2, "optimizer",
                  cpu_bytes=0 if convention == "deepspeed" else 2, freed_before_step=convention == "deepspeed"),
    ]
    if convention == "deepspeed":
        terms.append(StateTerm("gradients", "fp32 gradient partition", 4, 1, "optimizer"))
    terms += [StateTerm("master_weights", "fp32 master weights", 4, 1, "optimizer"), adam]
    return tuple(terms)


def default_convention(plan: ParallelPlan) -> str:
    """The accounting of the engine that runs `plan`: what that engine allocates."""
    return {"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(plan.engine, "torch-amp")


@dataclass(frozen=True)
class ModelStates:
    """Model-state bytes on one GPU (and on the CPU of its node share, when offloaded)."""

    gpu: dict[str, float]  # category -> bytes per GPU
    cpu: dict[str, float]  # category -> bytes per GPU's share of host memory
    gathered: dict[str, float]  # transient gathered weights/gradients (ZeRO-3, FSDP), per GPU
    experts_gpu: float = 0.0  # of `gpu`, the routed experts' states (MoE), per GPU

    @property
    def gpu_total(self) -> float:
        return sum(self.gpu.values()) + sum(self.gathered.values())

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())


def model_states(params: float, terms: tuple[StateTerm, ...], plan: ParallelPlan,
                 shape: ModelShape | None = None, convention: str = "zero-paper", *,
                 at_step: bool = False) -> ModelStates:
    """Partition and offload each state term over `plan`'s shard degree; add the gathered buffers of stage 3.

    `at_step`: the states alive while the optimizer steps (what a trainer can measure from its live
    tensors then), instead of the instantaneous peak that includes terms freed just before it.
    """
    gpu = dict.fromkeys(("weights", "gradients", "master_weights", "optimizer"), 0.0)
    cpu = dict(gpu)
    experts = min(params, shape.routed_expert_params()) if shape is not None else 0.0  # whole on each TP rank
    experts_gpu = 0.0
    for term in terms:
        sharded = plan.stage >= term.sharded_from
        # sharded engines free these before the step; DeepSpeed's unsharded (stage 0) wrapper does not
        freed = at_step and term.freed_before_step and plan.stage >= 1
        if (sharded and term.transient_when_sharded) or freed or plan.stage < term.min_stage:
            continue
        dense = term.bytes_per_param * (params - experts) / (plan.shard_degree if sharded else 1)
        expert = term.bytes_per_param * experts / plan.ep / (plan.expert_shard_degree if sharded else 1)
        moved = sharded and (plan.offload_params if term.offload == "params" else plan.offload_optimizer)
        if moved:
            cpu_bytes = term.bytes_per_param if term.cpu_bytes is None else term.cpu_bytes
            cpu[term.category] += (dense + expert) * cpu_bytes / term.bytes_per_param
        else:
            gpu[term.category] += dense + expert
            experts_gpu += expert
    return ModelStates(gpu, cpu, _gathered(terms, plan, shape, convention), experts_gpu)


def _gathered(terms, plan: ParallelPlan, shape: ModelShape | None, convention: str) -> dict[str, float]:
    """Full-size weights and gradients of the modules being computed when parameters are sharded.

    DeepSpeed's estimator counts 16-bit weights and gradients of the largest module (4 B x
    largest module params). FSDP2 at the peak (checked by `planner verify` against
    FSDPMemTracker): the unsharded root parameters plus one block's all-gather.
    """
    if plan.stage < 3 or shape is None or convention == "zero-paper":
        return {}  # the ZeRO paper's Figure 1 counts the partitioned states only
    weight_bytes = terms[0].bytes_per_param if terms[0].category == "weights" else 2
    if convention == "fsdp" or plan.engine == "fsdp":
        # At the start of backward (the peak): the root's parameters (embedding, head, final norm),
        # which FSDP2 does not reshard after forward, and the last block being gathered again.
        # Gradients are reduce-scattered block by block after that, when activations are freed.
        # Under TP each rank gathers only its tensor-parallel slice (measured by `planner verify --tp`).
        # An MoE block is gathered with its EP rank's experts only (FSDP shards them within the expert group).
        # Under expert parallelism the experts are a unit of their own, gathered later (`experts_unit_params`).
        block = shape.layer_params_per_tp_rank(plan.ep, plan.tp) - experts_unit_params(shape, plan)
        return {"weights": (shape.root_params() / plan.tp + block) * weight_bytes, "gradients": 0.0}
    grad16 = next((t.bytes_per_param for t in terms if t.category == "gradients"), 0)
    largest = shape.largest_layer_params()
    return {"weights": largest * weight_bytes, "gradients": largest * grad16}


def experts_unit_params(shape: ModelShape, plan: ParallelPlan) -> int:
    """One MoE layer's routed experts on this EP rank when they are an FSDP unit of their own (expert parallelism,
    `pretrain.engines.parallelize.apply_fsdp`); 0 otherwise (they are gathered with their block)."""
    if plan.ep <= 1 or shape.moe is None or shape.moe_layers == 0:
        return 0
    return (shape.moe.experts // plan.ep) * shape.expert_params()


def comm_buffer_bytes(params: float, plan: ParallelPlan) -> float:
    """Communication buffers each engine allocates on top of the model states.

    DDP (torch): our engine sets gradient_as_bucket_view=True, so the gradients are views into
    DDP's buckets and there is no second copy (torch DDP docs); nothing extra. DeepSpeed ZeRO-1/2: reduce and all-gather buckets, 5e8 elements each by
    default, in 16-bit. ZeRO-3: the prefetch bucket (5e7 elements). FSDP: counted in `gathered`.
    """
    if plan.engine == "deepspeed":
        if plan.stage in (1, 2):
            return 2 * 2 * min(params, DS_BUCKET_ELEMENTS)
        if plan.stage == 3:
            return 2 * min(params, DS_PREFETCH_ELEMENTS)
    return 0.0


def all_to_all_buffer_bytes(shape: ModelShape, plan: ParallelPlan, micro_batch: int, width: int) -> float:
    """An EP rank's all-to-all buffers for one MoE layer, a transient of the layer: the tokens it sends and receives,
    s b x top_k x h each at the busiest expert's load (`MoE.load_factor`), in the activations' width. None
    without expert parallelism (the permutation is then a local copy, counted as an activation)."""
    m = shape.moe
    if m is None or plan.ep <= 1:
        return 0.0
    return 2 * micro_batch * shape.seq_len * m.top_k * m.load_factor * shape.hidden * width


def fragmentation_bytes(allocated_bytes: float, fragmentation: float) -> float:
    """Reserved but unusable bytes when `fragmentation` is their share of reserved memory."""
    return allocated_bytes * fragmentation / (1 - fragmentation)


def max_micro_batch(fixed_bytes: float, per_sample_bytes: float, capacity_bytes: float,
                    fragmentation: float) -> int:
    """Largest b with (fixed + b·per_sample) / (1 - fragmentation) <= capacity; 0 if none."""
    room = capacity_bytes * (1 - fragmentation) - fixed_bytes
    if room < per_sample_bytes or per_sample_bytes <= 0:
        return 0
    return int(math.floor(room / per_sample_bytes + 1e-9))


def deepspeed_estimator_gpu_bytes(params: float, largest_layer_params: float, stage: int, gpus: int,
                                  offload: str) -> float | None:
    """What DeepSpeed's own estimator prints for GPU model states, shown beside ours.

    ZeRO-2: 2N + 18N/gpus (offload: 2N). ZeRO-3: 4·largest + 18N/gpus (optimizer offload:
    4·largest + 2N/gpus; with parameters too: 4·largest). Ours differs in one place on purpose:
    ZeRO-3 without offload holds the 16-bit parameter shard too (2N/gpus, which DeepSpeed's own
    offload branch counts), so we count 20N/gpus.
    """
    if stage == 2:
        return 2 * params if offload != "none" else 2 * params + 18 * params / gpus
    if stage == 3:
        gathered = 4 * largest_layer_params
        if offload == "none":
            return gathered + 18 * params / gpus
        return gathered + (0 if offload in ("params", "all") else 2 * params / gpus)
    return None
