"""Step time of our encoder-decoder (T5, `pretrain.encoder_decoder`) on a layout: the step-time model
(`planner.compute.step_time`, its constants and its layout terms) over two stacks of different blocks.

One micro-batch is b sequences of s input positions (the encoder's) and t targets (the decoder's). What differs
from a decoder's step:

- **Matmuls.** An encoder block's over b s tokens; a decoder block's self-attention, cross-attention queries and
  output, and MLP over b t tokens, its cross-attention keys and values over the b s encoder outputs; the head
  over b t. Three passes (forward, backward twice): recomputation is not planned for an encoder-decoder.
- **Self-attention, unfused.** Our T5 writes its scores out (the relative position bias needs their gradient):
  q kᵀ and the probabilities' product with v are batched matmuls over the whole square (the decoder's masked
  half too), 4 s q FLOPs per token per pass, at the matmul rate; the scale, the bias, the softmax and their
  gradients read and write every score (in the counted bytes below).
- **Cross-attention, fused.** SDPA over the encoder's s keys, no mask: flash attention's rate with every score
  computed, as an encoder's.
- **Memory-bound work**, counted op by op as eager PyTorch runs our blocks (`EAGER_T5`, the way `EAGER_BLOCK`
  counts the decoder's), plus what lies between blocks: each decoder block's gradient of the encoder's output
  and each block's gradient of its stack's relative position bias are added to the others' (read two, write
  one); before them the embeddings and the biases (`first_stage_bytes`), after them the head's fp32 loss as a
  decoder's.
- **Tensor parallelism** (sequence parallel, `pretrain.engines.parallelize`): an encoder block's two sub-layers
  gather and scatter b s h forward and again backward, a decoder block's three b t h, and each cross-attention
  gathers the encoder's output (b s h) forward and scatters its gradient backward.
- **Pipeline.** Stages split the encoder's blocks then the decoder's (`planner.memory.pipeline.shares_of`); the
  step runs at its slowest rank's pace, plus the schedule's fill and drain through the other ranks at theirs
  (`bubble_seconds`: at T5's lengths the encoder's ranks are the slowest); a stage sends what it carries
  (`p2p_elements`: in the encoder, the hidden state, the embedded targets and both biases).
- Data parallelism and the optimizer step as for any model (`data_parallel_time`, `optimizer_time`).

`tests/test_encoder_decoder_step_time.py` counts the bytes of our whole model, a block more and fewer, against
these terms.
"""

from __future__ import annotations

from planner.compute.flops import encoder_decoder_flops
from planner.compute.step_time import (
    Efficiency,
    Hardware,
    Kernels,
    StepTime,
    data_parallel_time,
    flash_attention_seconds,
    matmul_rate,
    optimizer_time,
    pipeline_p2p_time,
    ring_time,
    tensor_parallel_link,
)
from planner.core.errors import PlannerError
from planner.core.parallel import ParallelPlan
from planner.memory.pipeline import StageShare, bubble_seconds, shares_of
from planner.model.shapes import ModelShape

#: Our T5 blocks as eager PyTorch runs them (`EncoderBlock`, `DecoderBlock`), bytes per token of the block's
#: stack (input tokens for the encoder, targets for the decoder), (forward, backward), keyed by (activation
#: width, block, MLP); each the coefficients of (h, q, heads x keys, heads x keys / b, ffn, h x s / t): q the
#: attention width (heads x d_kv), keys the self-attention's (s or t), b the micro-batch (the bias is one table
#: for the micro-batch), the last term the decoder's gradient of the encoder's output (per target token). Least
#: squares over the bytes every non-matmul aten op reads and writes (`pretrain.memory_probe.MemoryTrafficCounter`)
#: at twelve shapes, micro-batch >= 2 (at 1 the attention's transposes are views, not copies: fewer bytes):
#: worst residual 0.37% (`benchmarks/count_eager_block.py --t5`; `tests/test_encoder_decoder_step_time.py` counts
#: again). Per score: the scale, the bias and the softmax each read and write it (6 w forward).
EAGER_T5 = {
    (4, "encoder", "relu"): ((80.2, 32.0, 23.9, 4.1, 8.0, 0.0), (200.2, 32.0, 23.8, 4.3, 12.0, 0.0)),
    (4, "encoder", "geglu"): ((80.2, 32.0, 23.9, 4.1, 20.0, 0.0), (212.2, 32.0, 23.8, 4.3, 36.0, 0.0)),
    (4, "decoder", "relu"): ((120.3, 32.0, 23.7, 4.4, 8.0, 0.1), (288.4, 31.9, 23.2, 5.1, 12.0, 12.1)),
    (4, "decoder", "geglu"): ((120.3, 32.0, 23.7, 4.4, 20.0, 0.1), (300.4, 31.9, 23.2, 5.1, 36.0, 12.1)),
    (2, "encoder", "relu"): ((92.1, 16.0, 12.0, 2.0, 4.0, 0.0), (212.2, 16.0, 11.7, 2.5, 6.0, 0.0)),
    (2, "encoder", "geglu"): ((92.1, 16.0, 12.0, 2.0, 10.0, 0.0), (218.2, 16.0, 11.7, 2.5, 18.0, 0.0)),
    (2, "decoder", "relu"): ((138.2, 16.0, 12.0, 2.1, 4.0, 0.0), (312.6, 15.9, 10.8, 3.7, 6.0, 6.1)),
    (2, "decoder", "geglu"): ((138.2, 16.0, 12.0, 2.1, 10.0, 0.0), (318.6, 15.9, 10.8, 3.7, 18.0, 6.1)),
}

#: Our RMSNorm (`pretrain.model.RMSNorm`, fp32 inside) run eagerly, bytes per element over forward and backward,
#: by activation width, counted as `EAGER_T5` (fp32: 28 forward + 76 backward; bf16 adds the casts).
EAGER_RMSNORM = {4: 104.0, 2: 134.0}


def block_bytes(shape: ModelShape, block: str, width: int, micro_batch: int, tp: int = 1) -> float:
    """Memory-bound bytes one block of `block`'s stack moves per token of its stack over a step (forward and
    backward, `EAGER_T5`), on one TP rank (sequence parallel: every term split), with the additions between
    blocks (module docstring)."""
    s, t = shape.seq_len, shape.n_target_len
    keys = s if block == "encoder" else t  # self-attention attends over the block's own stack
    terms = (shape.hidden, shape.q_dim, shape.heads * keys, shape.heads * keys / micro_batch, shape.ffn,
             shape.hidden * s / t)
    fwd, bwd = (sum(c * x for c, x in zip(coefs, terms, strict=True))
                for coefs in EAGER_T5[(width, block, shape.mlp)])
    between = 3 * width * shape.heads * keys / micro_batch  # this block's bias gradient added to the others'
    if block == "decoder":
        between += 3 * width * shape.hidden * s / t  # its gradient of the encoder's output, likewise
    return (fwd + bwd + between) / tp


def first_stage_bytes(shape: ModelShape, width: int, micro_batch: int) -> float:
    """Memory-bound bytes of one micro-batch before the first block: the shared embedding of the inputs and of the
    shifted targets (each gather reads and writes its rows; backward, each writes the table's dense gradient and
    the two are added: 5 tables), and each stack's relative position bias over its n x n offsets (the gather reads
    n^2 int64 buckets and writes heads n^2, laid out whole by a copy; the decoder's masked with the causal mask;
    backward, the gather's gradient reads heads n^2 and the buckets again)."""
    s, t, h, heads = shape.seq_len, shape.n_target_len, shape.hidden, shape.heads
    embedding = 2 * width * micro_batch * (s + t) * h + 5 * width * shape.vocab * h
    bias = sum(n * n * (16 + 4 * heads * width) for n in (s, t)) + t * t * (2 * heads * width + 1)
    return embedding + bias


def encoder_decoder_step_time(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency, *,
                              kernels: Kernels, grad_bytes: int = 4, overlap_dp: bool = False) -> StepTime:
    """One optimizer step of our T5 on `plan` (module docstring); `kernels`: the activation width, flash
    attention for the cross-attention, the optimizer and the engine's reductions (our trainer's, eager)."""
    if kernels.fp8_linears:
        raise PlannerError("--precision fp8: planned for decoders; an encoder-decoder's is not modelled")
    rate, w = matmul_rate(hw, eff, shape.hidden / plan.tp), kernels.activation_bytes
    tp_link = tensor_parallel_link(plan, hw, eff)
    # the step runs at the pace of the pipeline rank with the most work; the fill and drain at the others'
    busy = {share: (tuple(plan.grad_accum * x for x in _stage_seconds(shape, plan, hw, eff, kernels, share, rate)),
                    plan.grad_accum * _stage_tensor_parallel(shape, plan, share, w, tp_link))
            for share in shares_of(shape, plan)}
    slowest = max(busy, key=lambda share: sum(busy[share][0]) + busy[share][1])
    (matmul, attention, memory), tp_comm = busy[slowest]
    compute = matmul + attention + memory
    bubble = bubble_seconds([sum(seconds) + tp for share, (seconds, tp) in busy.items() if share != slowest], plan)
    pp_comm = pipeline_p2p_time(shape, plan, hw, eff, w)
    dp_comm, dp_bytes = data_parallel_time(shape, plan, hw, eff, kernels, grad_bytes, compute,
                                           3.0 if overlap_dp else None)
    optimizer = optimizer_time(shape, plan, hw, eff, kernels)
    model_flops = plan.batch * shape.seq_len * sum(encoder_decoder_flops(shape))
    return StepTime(matmul, attention, memory, tp_comm, bubble, pp_comm, dp_comm, optimizer, model_flops,
                    dp_bytes=dp_bytes)


def _stage_tensor_parallel(shape: ModelShape, plan: ParallelPlan, share: StageShare, width: int,
                           link: float) -> float:
    """Seconds of one micro-batch's TP collectives on a pipeline rank holding `share`: all-reduce equivalents (a
    gather and a scatter), 2 per sub-layer forward and backward, and each cross-attention's gather of the
    encoder's output (forward) and scatter of its gradient (backward)."""
    b, s, t, h = plan.micro_batch, shape.seq_len, shape.n_target_len, shape.hidden
    inputs, targets = (ring_time(width * b * n * h, plan.tp, link) for n in (s, t))
    return (share.layers - share.decoder_layers) * 4 * inputs + share.decoder_layers * (6 * targets + inputs)


def _stage_seconds(shape: ModelShape, plan: ParallelPlan, hw: Hardware, eff: Efficiency, kernels: Kernels,
                   share: StageShare, matmul_rate: float) -> tuple[float, float, float]:
    """(matmul, attention, memory-bound) seconds of one micro-batch on a pipeline rank holding `share`."""
    b, s, t, h, tp = plan.micro_batch, shape.seq_len, shape.n_target_len, shape.hidden, plan.tp
    q, kv = shape.q_dim, shape.n_kv_heads * shape.head_dim
    enc, dec = share.layers - share.decoder_layers, share.decoder_layers
    self_attention = shape.attention_params()
    decoder_on_targets = self_attention + 2 * h * q + shape.mlp_params()  # cross-attention's q and o
    # 2 FLOPs per weight per token a pass, 3 passes; the unfused self-attention's 4 x keys x q a token a pass
    flops = 6 * (enc * b * s * (self_attention + shape.mlp_params()) + dec * (b * t * decoder_on_targets
                                                                            + b * s * 2 * h * kv))
    flops += 12 * (enc * b * s * s * q + dec * b * t * t * q)
    if share.head:
        flops += 6 * b * t * shape.vocab * h
    matmul = flops / tp / matmul_rate
    cross_flops = dec * 12 * b * t * s * q / tp  # three passes of 4 s q per target, every score (no mask)
    w = kernels.activation_bytes
    moved = b * (enc * s * block_bytes(shape, "encoder", w, b, tp) + dec * t * block_bytes(shape, "decoder", w, b, tp))
    if kernels.flash_attention:
        attention = flash_attention_seconds(cross_flops, shape.head_dim, 3, hw, eff)
    else:  # SDPA's math path: the scores as matmuls, the softmax (2 w) and its gradient (3 w) through memory
        attention = cross_flops / matmul_rate
        moved += dec * b * t * 5 * w * shape.heads * s / tp
    if share.embedding:
        moved += first_stage_bytes(shape, w, b) / tp
    if share.encoder_end:  # the encoder's final norm
        moved += b * s * h * EAGER_RMSNORM[w] / tp
    if share.head:  # the decoder's final norm, a tied head's scaled input, the fp32 loss (as a decoder's)
        moved += b * t * (h * (EAGER_RMSNORM[w] + (4 * w if shape.tied_embeddings else 0)) + 16 * shape.vocab) / tp
    return matmul, attention, moved / (hw.hbm_bytes_per_s * eff.memory)

