"""What the trainer runs of what the planner can plan, by model: the checks `emit`, `verify` and `compare --search`
share, each refusal one line naming the flag (the layout's own rule is `ParallelPlan.check_runnable`)."""

from __future__ import annotations

from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.plan.request import ResolvedModel


def check_moe_trainable(model: ResolvedModel, plan: ParallelPlan) -> None:
    """What the trainer's MoE layer (`pretrain.model.MoE`) runs: dropless top-k routing, routed and shared SwiGLU
    experts, expert parallelism under FSDP2 with TP for attention; the rest is refused in one line, naming the flag."""
    m = model.shape.moe
    if m is None:
        return
    if m.shared_gate:
        raise PlannerError(f"--model: {model.source} gates its shared expert (Qwen2-MoE's sigmoid gate), which the "
                           "trainer's MoE layer does not build; give the shape with --experts instead")
    if m.capacity_factor is not None:
        raise PlannerError(f"--capacity-factor: {m.capacity_factor}: the trainer routes dropless (no token dropping); "
                           "leave it out to emit")
    if plan.engine == "deepspeed":
        raise PlannerError("--zero: the trainer runs an MoE model under FSDP2 (--fsdp), not DeepSpeed")
    if plan.pp > 1:
        raise PlannerError(f"--pp: {plan.pp}: pipeline stages of an MoE model are not run yet; use --ep")


def check_arch_trainable(model: ResolvedModel) -> None:
    """The trainer builds decoders only (issue 28: encoder and encoder-decoder models are planned, not trained)."""
    if model.shape.arch != "decoder":
        raise PlannerError(f"--arch: the trainer builds decoder-only models; {model.source} is "
                           f"{model.shape.arch} (planned by `planner estimate`, not trained yet)")
