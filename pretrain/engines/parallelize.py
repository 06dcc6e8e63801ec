"""The parallel plan applied to the model, in one place (torchtitan's `parallelize_llama`).

`build_mesh` turns the plan's `mesh_dims` into a device mesh (and the views of it the layout
uses); `parallelize(model, plan, mesh)` applies the plan in torchtitan's order: tensor parallelism (DTensor
`parallelize_module`) -> expert parallelism -> activation checkpointing -> FSDP2 `fully_shard` per block and
the root, over the data-parallel part of the mesh.
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

Expert parallel layout (GShard, Lepikhin et al. 2020; torchtitan's): the `ep` ranks are taken from FSDP's shard
ranks (neighbours); each holds E / ep routed experts of every MoE layer (stacked weights sharded by expert as
DTensors) and sends each token to the rank of its expert and back with two all-to-alls per layer and pass. Every
other weight (attention, router, shared experts, embedding, head) is sharded over all the shard ranks; the experts
over the `shard / ep` ranks that hold the same ones, and their gradients averaged over every data-parallel rank.
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
    ep: DeviceMesh | None = None  # None without expert parallelism: the ranks one MoE layer's experts are split over
    experts_dp: DeviceMesh | None = None  # with ep: FSDP's mesh for the experts, the shard ranks holding the same ones


def build_mesh(plan: ParallelPlan, device_type: str) -> Mesh:
    """The plan's device mesh, dimensions of size one left out (a 1-D mesh is plain FSDP). With expert parallelism
    the shard dimension is laid out as (shard_mod_ep, ep), EP peers neighbours, and flattened back into `shard` for
    every weight but the experts (torchtitan's dp_shard_mod_ep x dp_shard_in_ep)."""
    dims = [(name, size) for name, size in plan.mesh_dims() if size > 1 or name == "shard"]
    if plan.ep > 1:
        at = next(i for i, (name, _) in enumerate(dims) if name == "shard")
        dims[at:at + 1] = [("shard_mod_ep", dims[at][1] // plan.ep), ("ep", plan.ep)]
    world = init_device_mesh(device_type, tuple(s for _, s in dims), mesh_dim_names=tuple(n for n, _ in dims))
    ep = experts_dp = None
    if plan.ep > 1:
        world["shard_mod_ep", "ep"]._flatten("shard")
        ep = world["ep"]
        experts_dp = world["replicate", "shard_mod_ep"] if plan.dp_replicate > 1 else world["shard_mod_ep"]
    dp = ["replicate", "shard"] if plan.dp_replicate > 1 else ["shard"]
    return Mesh(world, world[tuple(dp)] if len(dp) > 1 else world[dp[0]], world["tp"] if plan.tp > 1 else None,
                world["pp"] if plan.pp > 1 else None, ep, experts_dp)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, each an FSDP unit: a decoder's or an encoder's, an encoder-decoder's two stacks' in
    turn (`pretrain.encoder_decoder.EncoderDecoder.stacks`)."""
    stacks = model.stacks() if hasattr(model, "stacks") else [model]
    return [block for stack in stacks for block in stack.blocks.values()]


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE MLPs (`pretrain.model.MoE`), in block order."""
    from pretrain.model import MoE

    return [block.mlp for block in transformer_blocks(model) if isinstance(block.mlp, MoE)]


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> None:
    """Split every MoE layer's routed experts over the `ep` ranks: each stacked weight becomes a DTensor sharded by
    expert (E / ep on each rank), and the layer trades tokens with its EP peers (`pretrain.model.Experts`)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    for moe in moe_layers(model):
        for name, param in list(moe.experts.named_parameters(recurse=False)):
            split = distribute_tensor(param.data, ep_mesh, [Shard(0)], src_data_rank=None)  # no data moves (meta)
            moe.experts.register_parameter(name, nn.Parameter(split))
        moe.experts.group = ep_mesh.get_group()


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Megatron's column/row split of every block, sequence parallel norms, vocabulary-parallel embedding
    and head (the layout in the module docstring), for each architecture the trainer builds."""
    from torch.distributed.tensor.parallel import parallelize_module

    from pretrain.encoder import Encoder
    from pretrain.encoder_decoder import EncoderDecoder

    plans = _encoder_plans if isinstance(model, Encoder) else \
        _encoder_decoder_plans if isinstance(model, EncoderDecoder) else _decoder_plans
    root, blocks = plans(model)
    # a pipeline stage holds some of the root's modules (the first the embedding, the last the norm and the head)
    parallelize_module(model, tp_mesh, {name: style for name, style in root.items() if _has(model, name)})
    for block in blocks:
        parallelize_module(block, tp_mesh, {name: style for name, style in _block_plan(block).items()
                                            if _has(block, name)})
    if isinstance(model, Encoder) and model.head_bias is not None:  # the MLM head's bias, split as its logits are
        from torch.distributed.tensor import Shard, distribute_tensor

        model.head_bias = nn.Parameter(distribute_tensor(model.head_bias.data, tp_mesh, [Shard(0)],
                                                         src_data_rank=None))  # no data moves (meta)


def _has(module: nn.Module, name: str) -> bool:
    for part in name.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True


def _decoder_plans(model: nn.Module) -> tuple[dict, list[nn.Module]]:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    root = {"embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)}
    return root, list(model.blocks.values())


def _encoder_plans(model: nn.Module) -> tuple[dict, list[nn.Module]]:
    """BERT: the three embeddings split by rows (vocabulary, positions, types), each reduce-scattered to a sequence
    shard; the embeddings' LayerNorm sequence-parallel. The MLM head's transform and LayerNorm run whole on every TP
    rank (the sequence gathered first: h x h, the same on each), then the head and its bias split by vocabulary."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    lookup = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    root = {"embed": lookup, "positions": lookup, "token_types": lookup,
            "embed_norm": SequenceParallel(use_local_output=True),
            "transform": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                            use_local_output=True),
            "head": ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False)}
    return root, list(model.blocks.values())


def _encoder_decoder_plans(model: nn.Module) -> tuple[dict, list[nn.Module]]:
    """T5: the shared embedding split by vocabulary; each stack's relative position bias split by heads, as the
    attention's heads are (each rank looks up its own heads' bias); the encoder's final norm hands the decoder its
    output as a sequence shard, each cross-attention gathers it."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    heads = ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1))
    root = {"embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "encoder.relative_bias": heads, "decoder.relative_bias": heads,
            "encoder.norm": SequenceParallel(use_local_output=True),
            "decoder.norm": SequenceParallel(),
            "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)}
    return root, [block for stack in model.stacks() for block in stack.blocks.values()]


def _block_plan(block: nn.Module) -> dict:
    """One block's layout: q, k, v, gate, up column-wise, o and down row-wise back to a sequence shard, the norms
    sequence-parallel (a post-LN block's hand on local shards: they are its residual stream); cross-attention
    gathers the encoder's output for its K and V; an MoE MLP runs whole (TP for attention only)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleInputOutput,
        RowwiseParallel,
        SequenceParallel,
    )

    from pretrain.encoder import EncoderBlock as BertBlock
    from pretrain.encoder_decoder import DecoderBlock, EncoderBlock
    from pretrain.model import MoE

    # the attention's other inputs: the decoder's rotary tables, T5's bias (already this rank's heads), none in BERT
    others = {BertBlock: 0, EncoderBlock: 1, DecoderBlock: 1}.get(type(block), 2)
    post_norm = isinstance(block, BertBlock)
    plan = {
        "attn_norm": SequenceParallel(use_local_output=post_norm),
        "attn": PrepareModuleInput(input_layouts=(Shard(1), *[None] * others),
                                   desired_input_layouts=(Replicate(), *[None] * others)),
        "attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
        "attn.o": RowwiseParallel(output_layouts=Shard(1)),
        "mlp_norm": SequenceParallel(use_local_output=post_norm),
    }
    if isinstance(block, DecoderBlock):
        plan.update({"cross_norm": SequenceParallel(),
                     "cross": PrepareModuleInput(input_layouts=(Shard(1), None, Shard(1)),
                                                 desired_input_layouts=(Replicate(), None, Replicate())),
                     "cross.q": ColwiseParallel(), "cross.k": ColwiseParallel(), "cross.v": ColwiseParallel(),
                     "cross.o": RowwiseParallel(output_layouts=Shard(1))})
    if isinstance(block.mlp, MoE):  # TP for attention only: every TP rank routes the whole sequence alike
        plan["mlp"] = PrepareModuleInputOutput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_input=True,
            output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),), use_local_output=True)
    else:
        plan.update({"mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                     "mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(),
                     "mlp.down": RowwiseParallel(output_layouts=Shard(1))})
    return plan


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, *, bf16: bool, reshard_after_forward: bool,
               offload: bool, experts_mesh: DeviceMesh | None = None) -> None:
    """One FSDP2 unit per block, then the root; bf16 compute with fp32 reduction when `bf16`. Under expert
    parallelism (`experts_mesh`) each MoE layer's experts are a unit of their own, sharded over the ranks holding
    the same experts (torchtitan's dp_shard_mod_ep), by expert where those divide evenly, else by row."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import Shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    kw = {"mesh": dp_mesh, "mp_policy": mp, "reshard_after_forward": reshard_after_forward}
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    if experts_mesh is not None:
        shard_ranks = experts_mesh.size(experts_mesh.ndim - 1)
        data_parallel = dp_mesh.size()
        for moe in moe_layers(model):
            local = moe.experts.gate.to_local().shape[0]
            dim = 0 if local % shard_ranks == 0 else 1
            fully_shard(moe.experts, **{**kw, "mesh": experts_mesh}, shard_placement_fn=lambda _, d=dim: Shard(d))
            # each expert's gradient sums the tokens of the whole EP group: average it over all data-parallel
            # ranks as every other weight is, not only over the ranks FSDP reduces it across
            moe.experts.set_gradient_divide_factor(float(data_parallel))
            moe.experts.set_force_sum_reduction_for_comms(True)
    for block in transformer_blocks(model):  # one FSDP unit per block, then the root (embedding, norms, head)
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
    if mesh.ep is not None:
        apply_expert_parallel(model, mesh.ep)
    apply_activation_checkpointing(model, activation_checkpointing, checkpoint_every)
    apply_fsdp(model, mesh.dp, bf16=bf16, reshard_after_forward=plan.fsdp_mode != "shard-grad-op",
               offload=plan.offload != "none", experts_mesh=mesh.experts_dp)


def loss_context(plan: ParallelPlan):
    """Where the loss and its backward must run: on vocabulary shards under TP, plainly otherwise."""
    if plan.tp == 1:
        return contextlib.nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel

    return loss_parallel()
