"""The parallel plan applied to the model, in one place (torchtitan's `parallelize_llama`).

`build_mesh` turns the plan's `mesh_dims` into a device mesh (and the two views of it the layout
uses); `parallelize(model, plan, mesh)` applies the plan in torchtitan's order: tensor parallelism (DTensor `parallelize_module`) -> activation
checkpointing -> FSDP2 `fully_shard` per block and the root, over the data-parallel part of the mesh.
The FSDP engine (`pretrain.engines.fsdp`) and `planner verify` (`pretrain.verify`) both call these two
and nothing else, so what verify measures is the layout the trainer runs. The model (`pretrain.model`)
stays a plain `nn.Module`; activation checkpointing is its own per-block flag.

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
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from planner.core.parallel import ParallelPlan


@dataclass(frozen=True)
class Mesh:
    """The plan's device mesh and its two views the layout needs, sliced once, up front (slicing builds
    sub-meshes, which cannot happen under verify's FakeTensorMode)."""

    world: DeviceMesh
    dp: DeviceMesh  # FSDP's: the 1-D shard mesh, or hybrid sharding's (replicate, shard)
    tp: DeviceMesh | None  # None without tensor parallelism
    pp: DeviceMesh | None = None  # None without pipeline parallelism: this rank's pipeline (its pp peers)


def build_mesh(plan: ParallelPlan, device_type: str) -> Mesh:
    """The plan's device mesh, dimensions of size one left out (a 1-D mesh is plain FSDP)."""
    dims = [(name, size) for name, size in plan.mesh_dims() if size > 1 or name == "shard"]
    world = init_device_mesh(device_type, tuple(s for _, s in dims), mesh_dim_names=tuple(n for n, _ in dims))
    dp = [n for n, _ in dims if n in ("replicate", "shard")]
    return Mesh(world, world[tuple(dp)] if len(dp) > 1 else world[dp[0]], world["tp"] if plan.tp > 1 else None,
                world["pp"] if plan.pp > 1 else None)


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Megatron's column/row split of every block, sequence parallel norms, vocabulary-parallel embedding
    and head (the layout in the module docstring)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    root = {
        "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    }  # a pipeline stage holds some of these (the first the embedding, the last the norm and the head)
    parallelize_module(model, tp_mesh, {name: style for name, style in root.items() if getattr(model, name) is not None})
    for block in model.blocks.values():
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
    """One FSDP2 unit per block, then the root; bf16 compute with fp32 reduction when `bf16`."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    kw = {"mesh": dp_mesh, "mp_policy": mp, "reshard_after_forward": reshard_after_forward}
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in model.blocks.values():  # one FSDP unit per block, then the root (embedding, final norm, head)
        fully_shard(block, **kw)
    fully_shard(model, **kw)


def apply_activation_checkpointing(model: nn.Module, policy: str, every: int) -> None:
    """Recompute in backward what `policy` says, in every `every`-th block (`pretrain.activation_checkpointing`).
    The model checkpoints its blocks itself (non-reentrant `torch.utils.checkpoint` around each call), so
    the policy is all there is to set; it is set here so the order of the layout reads in one place."""
    model.activation_checkpointing, model.checkpoint_every = policy, every


def parallelize(model: nn.Module, plan: ParallelPlan, mesh: Mesh, *, bf16: bool,
                activation_checkpointing: str, checkpoint_every: int = 1) -> None:
    """Apply the plan to `model` in place (torchtitan's `parallelize_llama`): TP over the mesh's `tp`
    dimension, then activation checkpointing, then FSDP2 over its data-parallel dimensions."""
    if mesh.tp is not None:
        apply_tensor_parallel(model, mesh.tp)
    apply_activation_checkpointing(model, activation_checkpointing, checkpoint_every)
    apply_fsdp(model, mesh.dp, bf16=bf16, reshard_after_forward=plan.fsdp_mode != "shard-grad-op",
               offload=plan.offload != "none")


def loss_context(plan: ParallelPlan):
    """Where the loss and its backward must run: on vocabulary shards under TP, plainly otherwise."""
    if plan.tp == 1:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()
