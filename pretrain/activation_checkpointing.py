"""Activation checkpointing policies: which blocks recompute in backward, and what they recompute.

- `full`: a checkpointed block keeps only its input and recomputes its whole forward in backward
  (Chen et al. 2016; Korthikanti et al. 2022 §5).
- `op`: torchtitan's op-level selective checkpointing (`selective_ac_option: op`): inside a checkpointed
  block the outputs of the expensive ops are kept (attention's kernel, every other matmul, a
  reduce-scatter under sequence parallelism) and everything cheap (norms, RoPE, SiLU, casts) and the
  other matmuls are recomputed. Kept: block input, q, v, gate and down outputs, SDPA's output and
  log-sum-exp (`planner.memory.activations`).
- `every` > 1 applies the policy to every `every`-th block only (torchtitan's layer SAC,
  `selective_ac_option: "k"`): blocks whose 1-based index is a multiple of `every`.

Under tensor parallelism the policy sees DTensor ops: the matmuls it keeps are each rank's shards (down's a
partial sum over the whole sequence), and the sequence-parallel reduce-scatters after o and down are kept as
torchtitan's `_save_list` keeps them, while the all-gathers before q/k/v and gate/up run again in the recompute
(one more collective each in backward). A pipeline stage checkpoints its own blocks by their index in the whole
model, so `every` picks the same blocks at any split. MoE blocks are not run under `op` (refused at load).

The kept tensors live in autograd's saved tensors and, for `op`, in the selective-checkpoint cache;
`pretrain.memory_probe.LiveTensorCounter` counts both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

aten = torch.ops.aten
#: Ops whose outputs `op` keeps (besides every other matmul): the attention kernels (CUDA flash, efficient,
#: cuDNN, and the CPU flash kernel our tests run) and the sequence-parallel reduce-scatter.
KEPT_OPS = {
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}


def op_policy_contexts():
    """Fresh contexts for one checkpointed call: matmuls are numbered in the forward and again in the
    recompute, so both keep the same odd-numbered ones (the 1st, 3rd, ...: q, v, gate, down in our block)."""
    matmuls = {"forward": 0, "recompute": 0}

    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        if func == aten.mm.default:
            mode = "recompute" if ctx.is_recompute else "forward"
            matmuls[mode] += 1
            return CheckpointPolicy.MUST_SAVE if matmuls[mode] % 2 else CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.MUST_SAVE if func in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpointed(policy: str, every: int, index: int) -> str:
    """The policy block `index` (0-based, in the whole model) runs under."""
    return policy if policy != "none" and (index + 1) % every == 0 else "none"


def run_block(block: Callable, policy: str, *args: torch.Tensor) -> torch.Tensor:
    """Call `block(*args)` under `policy` (non-reentrant `torch.utils.checkpoint`)."""
    if policy == "full":
        return checkpoint(block, *args, use_reentrant=False)
    if policy == "op":
        return checkpoint(block, *args, use_reentrant=False, context_fn=op_policy_contexts)
    return block(*args)
