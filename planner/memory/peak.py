"""The peak of a training step: every memory line at each of the moments that compete for it.

Three moments compete (each checked against PyTorch's trackers by `planner verify`):
- `backward-start`: every activation saved, the loss's gradient just made, gradients not yet
  written (our torch engines zero them with set_to_none; DeepSpeed keeps its buffers);
- `experts-backward`: under expert parallelism with FSDP2 full/hybrid, the last block's experts going backward
  (`fsdp_experts_backward`);
- `layer-backward`: inside the layers' backward under FSDP2 full/hybrid (`fsdp_layer_backward`);
- `optimizer-step`: all gradients and optimizer states, no activations.
The per-GPU total is the largest; the estimate names that moment and lists the others too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.core.parallel import ParallelPlan
from planner.memory import activations, pipeline
from planner.memory import model_states as memory
from planner.memory.pipeline import StageShare
from planner.model.shapes import ModelShape

#: The moments of a step, in the order they happen.
MOMENTS = ("backward-start", "experts-backward", "layer-backward", "optimizer-step")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on one GPU, by line, at the peak of a training step.

    Three moments compete for the peak: the start of backward (every activation saved, the loss's
    gradient just made; gradients not yet written when each step is one micro-batch and the engine zeroes
    them with set_to_none, but held when DeepSpeed or DDP keeps them in its buffers or when earlier
    micro-batches of the step accumulated them: `gradients_held`), inside the layers' backward under
    FSDP2 (`fsdp_layer_backward`) and the
    optimizer step (all gradients, no activations). `total` is the largest; `lines()` are the lines
    at that moment. `activations` are the layers' saved tensors for one
    micro-batch plus one layer's recompute working set; `activations_fixed` is what the layers keep
    per micro-batch whatever its size (autocast's 16-bit weight copies); `logits` is the output
    layer's share, its backward transient included (`planner.memory.activations`).
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
    #: expert parallelism under FSDP2 full/hybrid only: the lines as the experts go backward (`fsdp_experts_backward`)
    experts_backward: dict[str, float] | None = None

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

    def _inside_backward_bytes(self, lines: dict[str, float]) -> float:
        s = self.states.gpu
        return s["master_weights"] + s["optimizer"] + sum(lines.values()) + self.comm_buffers + self.runtime

    @property
    def layer_backward_bytes(self) -> float:
        return 0.0 if self.layer_backward is None else self._inside_backward_bytes(self.layer_backward)

    def allocated_at(self) -> dict[str, float]:
        """Allocated bytes at each moment of the step (layer-backward only under FSDP2 full/hybrid, experts-backward
        only with expert parallelism there too)."""
        at = {"backward-start": self.fixed + self.per_batch, "optimizer-step": self.step_bytes}
        if self.layer_backward is not None:
            at["layer-backward"] = self.layer_backward_bytes
        if self.experts_backward is not None:
            at["experts-backward"] = self._inside_backward_bytes(self.experts_backward)
        return {m: at[m] for m in MOMENTS if m in at}

    @property
    def moment(self) -> str:
        """Which moment is the peak: backward-start, layer-backward or optimizer-step."""
        at = self.allocated_at()
        return max(at, key=at.get)

    @property
    def peak_at_step(self) -> bool:
        return self.moment == "optimizer-step"

    @property
    def allocated(self) -> float:
        return max(self.allocated_at().values())

    @property
    def fragmentation(self) -> float:
        return memory.fragmentation_bytes(self.allocated, self.fragmentation_fraction)

    @property
    def total(self) -> float:
        return self.allocated + self.fragmentation

    def lines(self) -> dict[str, float]:
        """The lines at the peak moment."""
        return self.lines_at(self.moment)

    def moments(self) -> dict[str, dict[str, float]]:
        """Every moment's lines, in step order; the peak is the one with the largest total."""
        return {m: self.lines_at(m) for m in self.allocated_at()}

    def lines_at(self, moment: str) -> dict[str, float]:
        gpu, gathered = self.states.gpu, self.states.gathered
        overhead = self.comm_buffers + self.runtime
        if moment in ("layer-backward", "experts-backward"):
            inside = self.layer_backward if moment == "layer-backward" else self.experts_backward
            lines = {**inside, "master_weights": gpu["master_weights"], "optimizer": gpu["optimizer"],
                     "logits": 0.0, "overhead": overhead}
        else:
            at_step = moment == "optimizer-step"
            lines = {
                "weights": gpu["weights"] + gathered.get("weights", 0.0),
                "gradients": self._gradients if at_step else self._gradients_at_backward,
                "master_weights": gpu["master_weights"],
                "optimizer": gpu["optimizer"],
                "activations": 0.0 if at_step else self.activations + self.activations_fixed,
                "logits": 0.0 if at_step else self.logits,
                "overhead": overhead,
            }
        allocated = self.allocated_at()[moment]
        fragmentation = memory.fragmentation_bytes(allocated, self.fragmentation_fraction)
        return {**lines, "fragmentation": fragmentation, "total": allocated + fragmentation}


def fsdp_layer_backward(shape: ModelShape, plan: ParallelPlan, precision: str, stored_activations: float,
                        freed_by_one_block: float = 0.0, weight_grads: float = 0.0,
                        accumulated: float = 0.0) -> dict[str, float] | None:
    """FSDP2 (full or hybrid shard) inside the layers' backward, which is the peak when the loss's
    gradients are small next to a block (small micro-batch x vocabulary): checked by `planner verify`
    against FSDPMemTracker (LLaMA-7B, seq 2048, micro-batch 1: every line within 10%).

    weights: the unsharded root, the block in backward and the next block prefetched, 16-bit;
    gradients: the previous block's reduce-scatter input in the fp32 reduce dtype, and its shard; with gradient
    accumulation, the sharded gradients earlier micro-batches left (`accumulated`), which the shard is added into;
    activations: the layers' saved tensors less the block's own (`freed_by_one_block`, freed by its backward),
    the block's weight gradients in the parameters' dtype (`weight_grads`: FSDP copies them into the
    reduce-scatter input, so both are alive at that moment) and the head's unsharded weight gradient, which
    waits for the root's reduce-scatter. Where a block's weights outweigh what it saved (a short sequence, a
    micro-batch of 1, a wide model) the gradients are most of the line: h 3072, seq 256 under FSDPMemTracker
    holds 267 MiB where the saved tensors alone are 108. An MoE block's backward runs its experts one at a
    time, so its temporaries are one expert's: its saved tensors are counted out with no weight-gradient term
    (Mixtral-8x7B at EP 8 under `planner verify`: the tracker's peak is then the experts' backward,
    `fsdp_experts_backward`, as here).
    """
    if plan.engine != "fsdp" or plan.stage < 3:
        return None
    tp = plan.tp
    w = 4 if precision == "fp32" else 2
    block = shape.layer_params_per_tp_rank(plan.ep, tp)  # an MoE block with its EP rank's experts
    root = shape.root_params() / tp
    # under EP a block's experts are a unit of their own: the next block's other unit is prefetched, not all of it
    gathered = block + (block - memory.experts_unit_params(shape, plan))
    return {"weights": (root + gathered) * w,
            # accumulating, the block's reduce-scatter output is added into its shard and freed
            "gradients": 4 * block + (accumulated if accumulated else 4 * block / plan.shard_degree),
            "activations": stored_activations - freed_by_one_block + weight_grads
            + shape.vocab * shape.hidden * w / tp}


def fsdp_experts_backward(shape: ModelShape, plan: ParallelPlan, precision: str,
                          activations_then: float, accumulated: float = 0.0) -> dict[str, float] | None:
    """Expert parallelism under FSDP2 full or hybrid: the last block's experts, an FSDP unit of their own and the
    first of the block to go backward, gathered, with the previous block's other unit their pre-backward hook
    prefetches. FSDP2's order, from its unshard and reshard calls logged under `planner verify`: the root's
    pre-backward prefetches block N (without its experts: `backward-start`); block N's pre-backward prefetches its
    experts, and theirs block N-1's other unit. No saved activation is freed yet: of the loss's gradients, the
    log-probabilities' is (`activations_then`, from `memory_breakdown`), and the head's unsharded weight gradient
    waits for the root's reduce-scatter. Which of the two moments is the peak depends on the vocabulary against
    the experts (FSDPMemTracker: Mixtral-8x7B at EP 8 x FSDP 8 this one, by 0.13 GiB; OLMoE-1B-7B backward-start)."""
    experts = memory.experts_unit_params(shape, plan)
    if plan.engine != "fsdp" or plan.stage < 3 or experts == 0:
        return None
    w = 4 if precision == "fp32" else 2
    other_unit = shape.layer_params_per_tp_rank(plan.ep, plan.tp) - experts
    return {"weights": (shape.root_params() / plan.tp + 2 * other_unit + experts) * w, "gradients": accumulated,
            "activations": activations_then + shape.vocab * shape.hidden * w / plan.tp}


def gradients_held(plan: ParallelPlan, share: StageShare | None = None) -> bool:
    """Whether the gradients are in memory when a micro-batch's backward starts.

    DeepSpeed keeps its gradient buffers from step to step. Torch DDP, as our engine builds it
    (gradient_as_bucket_view=True), holds the gradients in its buckets, which `zero_grad(set_to_none=True)`
    does not free (a gloo DDP run's resident memory keeps them: `tests/test_memory.py`). Single-process and
    FSDP engines free them at every step, so they are held only when the step accumulates micro-batches:
    the second one's forward and backward run over the first one's gradients. A pipeline's schedule is
    measured stage by stage instead (`pipeline_fsdp_backward`, `planner.memory.pipeline`)."""
    if plan.engine == "deepspeed":
        return True
    if share is not None:
        return False
    return plan.grad_accum > 1 or ddp_buckets(plan)


def ddp_buckets(plan: ParallelPlan) -> bool:
    """Whether the trainer wraps the model in torch DDP, whose gradient buckets outlive `zero_grad`."""
    return plan.engine == "ddp" and (plan.world or 1) > 1


def memory_breakdown(params: float, shape: ModelShape, plan: ParallelPlan, *, precision: str,
                     optimizer: str, convention: str, micro_batch: int, checkpointing: str,
                     flash_attention: bool, runtime_gib: float, fragmentation: float,
                     share: StageShare | None = None, checkpoint_every: int = 1) -> MemoryBreakdown:
    """The bytes of every line at each moment of a training step of `plan` (tensor parallel divides
    the weights first; the data-parallel ranks partition what the engine shards).

    `share`: one pipeline rank's part (`planner.memory.pipeline`): `params` and `shape.layers` are then
    that rank's, its saved activations are multiplied by the micro-batches its schedule keeps in flight,
    the output layer and loss are counted on the last stage only, and the P2P buffers are added."""
    tp = plan.tp
    in_flight, head = (1.0, True) if share is None else (share.in_flight, share.head)
    terms = memory.state_terms(precision, optimizer, convention, shape)
    whole = shape.tp_replicated_params()  # an MoE MLP (an encoder's MLM transform) is whole on each TP rank
    per_tp_rank = (params - whole) / tp + whole
    states = memory.model_states(per_tp_rank, terms, plan, shape, convention)
    regime = activations.regime_for(precision, plan.engine)
    act_kw = {"regime": regime, "checkpointing": checkpointing, "every": checkpoint_every, "tp": tp,
              "sequence_parallel": tp > 1, "flash_attention": flash_attention}
    layers_fixed = activations.stored_bytes(shape, 0, share=share, **act_kw)
    head_fixed = activations.head_fixed_bytes(shape, regime, tp) if head else 0.0
    # Backward first holds the loss's gradients, then (once they are freed) one layer recomputed:
    # the larger of the two sits on top of the saved activations at the peak.
    positions = activations.loss_positions(shape) * micro_batch  # the logits' positions (an encoder-decoder's targets)
    loss_grads = activations.loss_backward_bytes_per_token(shape, tp) * positions if head else 0.0
    recompute = activations.recompute_bytes(shape, micro_batch, indices=() if share is None else share.layer_indices,
                                            **act_kw)
    stored = activations.stored_bytes(shape, micro_batch, share=share, **act_kw)
    logits = activations.head_bytes(shape, micro_batch, regime, tp, share) - head_fixed
    if share is not None:  # a stage's part of the inputs' (an encoder's, an encoder-decoder's) is held per micro-batch
        carried = activations.head_bytes(shape, micro_batch, regime, tp, replace(share, head=False))
        stored, logits = stored + carried, logits - carried
    log_probs_grad = 4 * shape.vocab / tp * positions if head else 0.0  # fp32, freed first
    p2p = pipeline.p2p_buffer_bytes(plan, shape, micro_batch, 4 if precision == "fp32" else 2)
    width = 4 if precision == "fp32" else 2  # the parameters' (and their gradients') bytes as the layers use them
    held = gradients_held(plan, share)
    accumulated = states.gpu["gradients"] if held else 0.0  # FSDP: the shards, the layers' backward adds to
    return MemoryBreakdown(
        states=states,
        activations=(stored - layers_fixed) * in_flight
        + (recompute if recompute > loss_grads else 0.0),
        activations_fixed=layers_fixed + head_fixed,
        logits=logits + (loss_grads if loss_grads >= recompute else 0.0),
        comm_buffers=memory.comm_buffer_bytes(per_tp_rank, plan) + p2p,
        runtime=runtime_gib * 2**30,
        fragmentation_fraction=fragmentation,
        gradients_kept_through_forward=held,
        layer_backward=fsdp_layer_backward(shape, plan, precision, stored, (stored - layers_fixed) / shape.layers,
                                           0.0 if shape.moe else shape.layer_params_per_tp_rank(plan.ep, tp) * width,
                                           accumulated)
        if share is None else
        pipeline_fsdp_backward(params, shape, plan, precision,
                               (stored - layers_fixed) * in_flight + layers_fixed + head_fixed + recompute,
                               embedding=share.embedding),
        experts_backward=fsdp_experts_backward(shape, plan, precision,
                                               stored + logits + max(recompute, loss_grads - log_probs_grad),
                                               accumulated)
        if share is None else None,
    )


def pipeline_fsdp_backward(params: float, shape: ModelShape, plan: ParallelPlan, precision: str,
                           activations_in_flight: float,
                           embedding: bool = False) -> dict[str, float] | None:
    """One pipeline rank under FSDP2 once its first micro-batch has gone backward (the steady state of 1F1B):
    torch's `PipelineStage` runs every backward but the step's last with gradient reduction off, so the
    stage's gradients accumulate unsharded in FSDP's fp32 reduce dtype until the last backward
    reduce-scatters them, while the schedule's in-flight micro-batches hold their activations; the
    moment is the end of a steady backward: the schedule turns FSDP's resharding after backward off until
    the step's last backward, so every block that has gone backward stays gathered, the whole stage by the
    last block; the output layer's logits and the loss's gradients are freed by then, and the backward's
    temporaries take the place of the activations it freed (measured, `planner verify --pp`, on an 8 x 1024
    model: 0.99-1.0 of the tracker per rank; "root and two blocks gathered, with the loss's buffers alive" was
    0.94 and 1.06, once the block's activations got leaner).
    Checked by `planner verify --pp`, which runs the stage in that order under FSDPMemTracker (which files
    the accumulated gradients under activations).

    Under TP the first stage's embedding gradient is not split by vocabulary: DTensor has no vocabulary-sharded
    strategy for `embedding_dense_backward` (torch/distributed/tensor/_ops/_embedding_ops.py: column-, batch-
    or partial-sharded only), so it computes the whole vocab x hidden gradient as a Partial on every TP rank,
    and FSDP accumulates that whole tensor in fp32 until the last backward reduce-scatters it (measured on
    Llama-2-70B, TP 8: 1,000 MiB against the 125 MiB of its shard)."""
    if plan.engine != "fsdp" or plan.stage < 2:
        return None
    tp, w = plan.tp, 4 if precision == "fp32" else 2
    other_experts = shape.routed_expert_params() * (1 - 1 / plan.ep)  # held by the other EP ranks
    # the stage's blocks (an encoder-decoder's stage keeps the whole model's shape: its `params` are the stage's)
    blocks = 0.0 if shape.arch == "encoder-decoder" else shape.layers * shape.layer_params(plan.ep) / tp
    root = max(0.0, (params - other_experts) / tp - blocks)
    whole_embedding_grad = shape.embedding_params() * (1 - 1 / tp) if embedding else 0.0
    return {"weights": (root + blocks) * w,  # the whole stage
            "gradients": 4 * ((params - other_experts) / tp + whole_embedding_grad),
            "activations": activations_in_flight}
