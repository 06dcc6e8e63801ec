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
    """What the trainer builds beyond decoders: BERT's encoder (`pretrain.encoder`: post-LN LayerNorm blocks with
    biases, GeLU, learned positions, the MLM head) and T5's encoder-decoder (`pretrain.encoder_decoder`: pre-RMSNorm
    blocks without biases, ReLU or gated-GeLU, relative position bias, span corruption's targets), under DDP, FSDP2
    or DeepSpeed, with tensor and pipeline parallelism (`planner.core.schema.parallel_refusal`, which the model's
    resolution applies: `planner.plan.request.check_arch`); the rest is refused in one line, naming the flag."""
    s = model.shape
    if s.arch == "decoder":
        return
    if s.arch == "encoder":
        ours = (s.mlp == "gelu" and s.norm == "layernorm" and s.position == "learned" and s.bias and s.embedding_norm
                and s.post_norm and s.encoder_head == "mlm")
        block = "BERT's (post-LN LayerNorm, biases, GeLU, learned positions, the MLM head: BertForMaskedLM)"
    else:
        from planner.model.shapes import span_corruption_lengths

        ours = (s.mlp in ("relu", "geglu") and s.norm == "rmsnorm" and s.position == "relative" and not s.bias
                and not s.embedding_norm and not s.post_norm)
        block = "T5's (RMSNorm, no biases, ReLU or gated-GeLU, relative position bias)"
        if ours and s.target_len is not None and s.target_len != span_corruption_lengths(s.seq_len)[1]:
            raise PlannerError(f"--target-len: {s.target_len}: the trainer's span corruption of {s.seq_len} inputs "
                               f"gives {span_corruption_lengths(s.seq_len)[1]} targets; leave it out to emit")
    if not ours or s.n_kv_heads != s.heads or s.moe is not None:
        raise PlannerError(f"--model: the trainer builds an {s.arch} of {block} blocks; {model.source} is "
                           f"{s.norm}/{s.mlp}/{s.position}: give a Hugging Face config of that family (--hf-config)")
