"""The DeepSpeed JSON for a parallel plan: batch sizes from the batch rule, ZeRO stage, bf16, offload.

The trainer builds it from `run.yaml`'s plan and `planner emit` writes the same dict as ds_config.json.
"""

from __future__ import annotations

from planner.core.parallel import ParallelPlan


def deepspeed_config(plan: ParallelPlan, *, bf16: bool, grad_clip: float, cpu: bool = False) -> dict:
    """The DeepSpeed JSON for a plan: batch sizes from the batch rule, ZeRO stage, bf16, offload, clipping.

    `cpu`: the optimizer is torch's AdamW passed by the trainer (DeepSpeed's fused and CPU Adam
    compile C++ ops first); on GPUs DeepSpeed's own fused Adam is used with offload to CPU Adam.
    """
    zero: dict = {"stage": plan.zero_stage}
    if plan.zero_stage in (1, 2):
        zero.update({"overlap_comm": not cpu, "contiguous_gradients": True})
    if plan.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
    if plan.offload in ("params", "all"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    return {
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.batch,
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }
