"""The parallel plan applied to the model, in one place (torchtitan's `parallelize_llama`).

Order: tensor parallelism (DTensor `parallelize_module`) -> FSDP2 `fully_shard` per block and the
root, over the data-parallel part of one device mesh. The model (`pretrain.model`) stays a plain
`nn.Module`; activation checkpointing is the model's own flag.

Tensor parallel layout (Megatron-LM, Shoeybi et al. 2019; sequence parallel, Korthikanti et al. 2022):
- q, k, v, gate, up: column-wise (each rank computes heads / tp heads and ffn / tp features);
  o, down: row-wise, reduce-scattered back to a sequence shard;
- the residual stream and the norms run sequence-parallel: each rank holds seq / tp positions;
- the embedding is split by vocabulary, the head column-wise with its logits left sharded by
  vocabulary, and the loss is computed on those shards (`loss_parallel`), so no rank ever holds
  the full logits.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.parallel import ParallelPlan


def build_mesh(plan: ParallelPlan, device_type: str) -> DeviceMesh:
    """The plan's device mesh, dimensions of size one left out (a 1-D mesh is plain FSDP or plain TP)."""
    dims = [(name, size) for name, size in plan.mesh_dims() if size > 1 or name == "shard"]
    return init_device_mesh(device_type, tuple(s for _, s in dims), mesh_dim_names=tuple(n for n, _ in dims))


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    names = [n for n in mesh.mesh_dim_names if n in ("replicate", "shard")]
    return mesh[tuple(names)] if len(names) > 1 else mesh[names[0]]


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    parallelize_module(model, tp_mesh, {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    })
    for block in model.blocks:
        parallelize_module(block, tp_mesh, {
            "attn_norm": SequenceParallel(),
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                       desired_input_layouts=(Replicate(), None, None)),
            "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(),
            "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(),
            "mlp.down": RowwiseParallel(output_layouts=Shard(1)),
        })


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, *, bf16: bool, reshard_after_forward: bool,
               offload: bool) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    kw = {"mesh": dp_mesh, "mp_policy": mp, "reshard_after_forward": reshard_after_forward}
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in model.blocks:  # one FSDP unit per block, then the root (embedding, final norm, head)
        fully_shard(block, **kw)
    fully_shard(model, **kw)


def loss_context(plan: ParallelPlan):
    """Where the loss and its backward must run: on vocabulary shards under TP, plainly otherwise."""
    if plan.tp == 1:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()
